// The small seam between "what to do in a sandbox" (built-in tools, reward
// evaluation, replay) and "how it gets there" (the gRPC client, an in-process
// runtime, a fake in tests).
//
// Error split, the one contract every user relies on:
//   - a non-OK absl::Status means the INFRASTRUCTURE failed (node lost,
//     controller unreachable, token expired, bad request). The command may
//     not have run; a trainer masks such samples instead of scoring them 0.
//   - an ExecOutcome means the command ran and ended somehow: exit code,
//     signal, timeout, OOM, pids limit, seccomp kill. "The program failed"
//     is always an ExecOutcome, never a Status.
//
// Implementations are thread-safe unless they say otherwise.
#ifndef DSEC_CLIENT_SANDBOX_IO_H_
#define DSEC_CLIENT_SANDBOX_IO_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dsec::client {

// What to run. Exactly one of argv / shell is set (shell runs under
// /bin/sh -c).
struct Command {
  std::vector<std::string> argv;
  std::string shell;
  // Fed to stdin, then EOF. Empty: /dev/null.
  std::string stdin_data;
  std::map<std::string, std::string> env;
  // Empty: the sandbox's workdir.
  std::string cwd;
  absl::Duration timeout = absl::Seconds(30);
  // Per-stream output cap; bytes past it are dropped and flagged.
  int64_t max_output_bytes = int64_t{1} << 20;
  // Idempotency key: the same id twice never runs twice (the recorded
  // outcome comes back with replayed = true). Empty: no idempotency.
  std::string action_id;

  static Command Shell(std::string script) {
    Command c;
    c.shell = std::move(script);
    return c;
  }
  static Command Argv(std::vector<std::string> args) {
    Command c;
    c.argv = std::move(args);
    return c;
  }
};

// How a command that ran ended. Mirrors dsec.v1.ExecStatus; when several
// causes coincide the first of TimedOut, OomKilled, SeccompViolation,
// CpuLimit, PidsLimit, Signaled, Exited wins.
enum class ExitKind {
  kExited,
  kSignaled,
  kTimedOut,
  kOomKilled,
  kPidsLimit,
  kSeccompViolation,
  kCpuLimit,
};

absl::string_view ExitKindName(ExitKind kind);

struct ExecOutcome {
  ExitKind kind = ExitKind::kExited;
  // Meaningful when the command exited; else -1.
  int exit_code = -1;
  // Terminating signal when killed; else 0.
  int signal = 0;
  std::string stdout_data;
  std::string stderr_data;
  bool stdout_truncated = false;
  bool stderr_truncated = false;
  absl::Duration wall_time = absl::ZeroDuration();
  absl::Duration cpu_time = absl::ZeroDuration();
  int64_t peak_memory_bytes = 0;
  // Served from an idempotency record or a trajectory log: did not run now.
  bool replayed = false;

  bool ok() const { return kind == ExitKind::kExited && exit_code == 0; }
};

// A running sandbox, as the tools and the reward evaluator see it. Paths
// are absolute inside the sandbox (or relative to its workdir).
class SandboxIo {
 public:
  virtual ~SandboxIo() = default;

  virtual absl::StatusOr<ExecOutcome> Run(const Command& command) = 0;
  // Creates or replaces `path` (parent directories included).
  virtual absl::Status WriteFile(absl::string_view path, absl::string_view data,
                                 uint32_t mode = 0644) = 0;
  // NOT_FOUND when missing; FAILED_PRECONDITION for a directory. Reads at
  // most `max_bytes`; *truncated (optional) says whether more was there.
  virtual absl::StatusOr<std::string> ReadFile(absl::string_view path,
                                               int64_t max_bytes,
                                               bool* truncated = nullptr) = 0;
};

}  // namespace dsec::client

#endif  // DSEC_CLIENT_SANDBOX_IO_H_
