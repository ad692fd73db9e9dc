// dsec-run: run one command in a fresh sandbox, in the spirit of bwrap and
// nsjail.
//
//   dsec-run --memory 512M --timeout 5s -- python3 -c 'print(1)'
//   dsec-run --json --pids 32 -- bash -c ':(){ :|:& };:'
//
// Exit status: the command's own, 128+N when killed by signal N, 124 on
// timeout, 125 when dsec itself failed (like `timeout` and `env`).
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/units.h"
#include "nlohmann/json.hpp"
#include "sandbox/sandbox.h"

ABSL_FLAG(std::string, memory, "1G", "memory limit (no swap), e.g. 512M");
ABSL_FLAG(int64_t, pids, 256, "max processes/threads in the sandbox");
ABSL_FLAG(std::string, cpu, "0", "CPU quota, e.g. 500m or 2 (0: none)");
ABSL_FLAG(std::string, disk, "512M", "size cap of the writable layer");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(30), "wall-clock limit");
ABSL_FLAG(absl::Duration, cpu_time, absl::ZeroDuration(), "CPU-time limit");
ABSL_FLAG(std::string, max_output, "1M", "cap per output stream");
ABSL_FLAG(bool, share_net, false, "share the host network (trusted only)");
ABSL_FLAG(std::string, hostname, "sandbox", "hostname inside");
ABSL_FLAG(std::vector<std::string>, env, {}, "extra KEY=VALUE,... variables");
ABSL_FLAG(std::string, cwd, "", "working directory inside (default /root)");
ABSL_FLAG(std::vector<std::string>, bind, {},
          "host binds SRC:DST[:rw],... (read-only unless :rw)");
ABSL_FLAG(std::vector<std::string>, layer, {},
          "image layer directories, topmost first");
ABSL_FLAG(bool, host_binds, true, "bind the host /usr, /bin, /lib* read-only");
ABSL_FLAG(bool, seccomp_kill, false, "kill (not EPERM) on denied syscalls");
ABSL_FLAG(std::vector<std::string>, seccomp_allow, {},
          "syscalls to remove from the deny list");
ABSL_FLAG(std::vector<std::string>, seccomp_deny, {}, "extra syscalls to deny");
ABSL_FLAG(bool, stdin, false, "pass this process's stdin to the command");
ABSL_FLAG(bool, json, false, "print a JSON result instead of the output");
ABSL_FLAG(std::string, state_dir, "", "runtime state directory");

namespace {

using dsec::sandbox::ExecOutcome;

[[noreturn]] void Die(const absl::Status& status) {
  std::cerr << "dsec-run: " << status << "\n";
  std::exit(125);
}

template <typename T>
T OrDie(absl::StatusOr<T> v) {
  if (!v.ok()) Die(v.status());
  return *std::move(v);
}

int ExitCodeFor(const dsec::sandbox::ExecResult& r) {
  switch (r.outcome) {
    case ExecOutcome::kExited:
      return r.exit_code;
    case ExecOutcome::kTimedOut:
      return 124;
    case ExecOutcome::kInfraFailure:
      return 125;
    default:
      return 128 + r.signal;
  }
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "dsec-run [flags] -- COMMAND [ARGS...]: run a command in a sandbox");
  (void)dsec::sandbox::EnterPrivateMountNamespace();
  std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  // A CLI: the command's own output only, unless something is wrong.
  const char* level = getenv("DSEC_LOG_LEVEL");
  (void)dsec::InitLogging(
      {.level = level ? level : "warn", .component = "dsec-run"});
  if (rest.size() < 2) {
    std::cerr << "usage: dsec-run [flags] -- COMMAND [ARGS...]\n";
    return 125;
  }
  dsec::sandbox::SandboxSpec spec;
  spec.limits.memory_bytes =
      OrDie(dsec::ParseByteSize(absl::GetFlag(FLAGS_memory)));
  spec.limits.pids = absl::GetFlag(FLAGS_pids);
  spec.limits.cpu_millicores =
      OrDie(dsec::ParseMillicores(absl::GetFlag(FLAGS_cpu)));
  spec.disk_bytes = OrDie(dsec::ParseByteSize(absl::GetFlag(FLAGS_disk)));
  spec.isolate_network = !absl::GetFlag(FLAGS_share_net);
  spec.hostname = absl::GetFlag(FLAGS_hostname);
  spec.layers = absl::GetFlag(FLAGS_layer);
  spec.host_binds = absl::GetFlag(FLAGS_host_binds);
  for (const std::string& b : absl::GetFlag(FLAGS_bind)) {
    std::vector<std::string> parts = absl::StrSplit(b, ':');
    if (parts.size() < 2 || parts.size() > 3 ||
        (parts.size() == 3 && parts[2] != "rw" && parts[2] != "ro")) {
      Die(absl::InvalidArgumentError("--bind wants SRC:DST[:rw|:ro], got '" +
                                     b + "'"));
    }
    spec.binds.push_back(
        {parts[0], parts[1], parts.size() < 3 || parts[2] != "rw"});
  }
  spec.seccomp.action = absl::GetFlag(FLAGS_seccomp_kill)
                            ? dsec::sandbox::SeccompAction::kKill
                            : dsec::sandbox::SeccompAction::kErrno;
  spec.seccomp.allow = absl::GetFlag(FLAGS_seccomp_allow);
  spec.seccomp.extra_deny = absl::GetFlag(FLAGS_seccomp_deny);

  dsec::sandbox::ExecRequest req;
  req.argv.assign(rest.begin() + 1, rest.end());
  req.env = absl::GetFlag(FLAGS_env);
  req.cwd = absl::GetFlag(FLAGS_cwd);
  req.timeout = absl::GetFlag(FLAGS_timeout);
  req.cpu_time_limit = absl::GetFlag(FLAGS_cpu_time);
  req.max_stdout_bytes = req.max_stderr_bytes =
      OrDie(dsec::ParseByteSize(absl::GetFlag(FLAGS_max_output)));
  if (absl::GetFlag(FLAGS_stdin)) {
    req.stdin_data.assign(std::istreambuf_iterator<char>(std::cin), {});
  }

  dsec::sandbox::RuntimeOptions options;
  options.state_dir = absl::GetFlag(FLAGS_state_dir);
  auto runtime = OrDie(dsec::sandbox::Runtime::Create(options));
  auto sandbox = OrDie(runtime->CreateSandbox(spec));
  const bool json = absl::GetFlag(FLAGS_json);
  dsec::sandbox::OutputCallback stream_out;
  if (!json) {
    stream_out = [](int stream, absl::string_view data) {
      std::fwrite(data.data(), 1, data.size(), stream == 1 ? stdout : stderr);
      std::fflush(stream == 1 ? stdout : stderr);
    };
  }
  auto result = OrDie(sandbox->Exec(req, stream_out));
  if (json) {
    nlohmann::json j = {
        {"outcome", dsec::sandbox::ExecOutcomeName(result.outcome)},
        {"exit_code", result.exit_code},
        {"signal", result.signal},
        {"pids_limit_hit", result.pids_limit_hit},
        {"stdout", result.stdout_data},
        {"stderr", result.stderr_data},
        {"stdout_truncated", result.stdout_truncated},
        {"stderr_truncated", result.stderr_truncated},
        {"stdout_total_bytes", result.stdout_total_bytes},
        {"stderr_total_bytes", result.stderr_total_bytes},
        {"wall_time_ms", absl::ToDoubleMilliseconds(result.wall_time)},
        {"cpu_time_ms", absl::ToDoubleMilliseconds(result.cpu_time)},
        {"peak_memory_bytes", result.peak_memory_bytes},
        {"infra_error", result.infra_error},
    };
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
              << "\n";
  } else if (result.outcome != ExecOutcome::kExited) {
    std::cerr << "dsec-run: " << dsec::sandbox::ExecOutcomeName(result.outcome)
              << (result.pids_limit_hit ? " (pids limit hit)" : "")
              << (result.infra_error.empty() ? "" : ": " + result.infra_error)
              << "\n";
  }
  sandbox.reset();
  return ExitCodeFor(result);
}
