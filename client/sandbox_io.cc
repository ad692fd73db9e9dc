#include "client/sandbox_io.h"

namespace dsec::client {

absl::string_view ExitKindName(ExitKind kind) {
  switch (kind) {
    case ExitKind::kExited:
      return "exited";
    case ExitKind::kSignaled:
      return "signaled";
    case ExitKind::kTimedOut:
      return "timed_out";
    case ExitKind::kOomKilled:
      return "oom_killed";
    case ExitKind::kPidsLimit:
      return "pids_limit";
    case ExitKind::kSeccompViolation:
      return "seccomp_violation";
    case ExitKind::kCpuLimit:
      return "cpu_limit";
  }
  return "unknown";
}

}  // namespace dsec::client
