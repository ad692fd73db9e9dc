// Plain option structs for the sandbox library: what a sandbox looks like
// (SandboxSpec), what to run in it (ExecRequest) and what happened
// (ExecResult). No logic; the agent converts dsec.v1 protos to these.
#ifndef DSEC_SANDBOX_SPEC_H_
#define DSEC_SANDBOX_SPEC_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "sandbox/cgroup.h"
#include "sandbox/seccomp_policy.h"

namespace dsec::sandbox {

struct BindMount {
  std::string source;  // host path
  std::string target;  // path inside the sandbox
  bool read_only = true;
};

struct SandboxSpec {
  // Read-only image layers (plain directories), topmost first. Empty: the
  // built-in default image (host /usr, /bin, /lib*, /sbin bound read-only
  // plus a generated minimal /etc).
  std::vector<std::string> layers;
  // Bind host /usr, /bin, /lib*, /sbin read-only over the layers. On by
  // default so `bash`, `python3`, `gcc` of the host work inside.
  bool host_binds = true;
  std::vector<BindMount> binds;

  CgroupLimits limits{
      .memory_bytes = 1LL << 30, .pids = 256, .cpu_millicores = 0};
  // Size cap of the writable layer (tmpfs upper, which also holds /tmp and
  // /dev/shm).
  int64_t disk_bytes = 512LL << 20;
  int64_t disk_inodes = 65536;

  // A new network namespace with only `lo` up. false shares the host's
  // network (trusted use only).
  bool isolate_network = true;
  std::string hostname = "sandbox";
  // Default environment of every exec (an exec's env is added on top).
  std::vector<std::string> env = {
      "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      "HOME=/root", "LANG=C.UTF-8", "TERM=dumb"};
  std::string workdir = "/root";

  // Resource limits per process (RLIMIT_*); 0 keeps the default.
  int64_t max_open_files = 1024;
  int64_t max_stack_bytes = 8LL << 20;
  int64_t max_file_size_bytes = 0;  // 0: unlimited (disk_bytes caps)

  SeccompOptions seccomp;
};

struct ExecRequest {
  // argv[0] is looked up in PATH of the exec's environment.
  std::vector<std::string> argv;
  std::string stdin_data;
  std::vector<std::string> env;  // KEY=VALUE, added to the spec's env
  std::string cwd;               // empty: the spec's workdir
  absl::Duration timeout = absl::Seconds(30);
  absl::Duration cpu_time_limit = absl::ZeroDuration();  // 0: none
  int64_t max_stdout_bytes = 1 << 20;
  int64_t max_stderr_bytes = 1 << 20;
  // Polled about every 100 ms while the exec runs (may be empty). When it
  // returns true the exec's whole process tree is killed, as on a timeout,
  // and the result says `cancelled` (e.g. the RPC's client went away).
  std::function<bool()> cancelled;
};

// How an exec ended. Exactly one applies; the most specific cause wins.
enum class ExecOutcome {
  kExited,         // exit_code holds the status
  kSignaled,       // killed by `signal` for another reason
  kTimedOut,       // wall-clock timeout: the whole tree was killed
  kOomKilled,      // the sandbox's memory limit killed it
  kCpuLimit,       // RLIMIT_CPU (SIGXCPU / SIGKILL after the limit)
  kSeccompKilled,  // a denied syscall in kill mode (SIGSYS)
  kInfraFailure,   // dsec itself failed; see `infra_error`
};

const char* ExecOutcomeName(ExecOutcome outcome);

struct ExecResult {
  ExecOutcome outcome = ExecOutcome::kInfraFailure;
  int exit_code = -1;           // for kExited
  int signal = 0;               // for signal-caused outcomes
  bool pids_limit_hit = false;  // a fork was refused by the pids limit
  bool cancelled = false;       // killed because request.cancelled() said so
  std::string stdout_data;
  std::string stderr_data;
  bool stdout_truncated = false;
  bool stderr_truncated = false;
  int64_t stdout_total_bytes = 0;  // produced, including what was dropped
  int64_t stderr_total_bytes = 0;
  absl::Duration wall_time;
  absl::Duration cpu_time;
  // Peak memory of this exec: the larger of the biggest resident set of
  // one of its waited-for processes (rusage ru_maxrss) and, on cgroup v2,
  // the high-water mark of the exec's slot cgroup (all its processes, page
  // cache included). cgroup v1 has no memory cgroup per exec (see
  // cgroup.h), so there it is the rusage figure; the sandbox-wide peak is
  // SandboxCgroup::Stats().
  int64_t peak_memory_bytes = 0;
  std::string infra_error;
};

}  // namespace dsec::sandbox

#endif  // DSEC_SANDBOX_SPEC_H_
