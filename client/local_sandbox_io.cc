#include "client/local_sandbox_io.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/status_macros.h"

namespace dsec::client {

absl::StatusOr<ExecOutcome> ToExecOutcome(sandbox::ExecResult r) {
  using sandbox::ExecOutcome;
  client::ExecOutcome o;
  switch (r.outcome) {
    case ExecOutcome::kExited:
      o.kind = ExitKind::kExited;
      break;
    case ExecOutcome::kSignaled:
      o.kind = ExitKind::kSignaled;
      break;
    case ExecOutcome::kTimedOut:
      o.kind = ExitKind::kTimedOut;
      break;
    case ExecOutcome::kOomKilled:
      o.kind = ExitKind::kOomKilled;
      break;
    case ExecOutcome::kCpuLimit:
      o.kind = ExitKind::kCpuLimit;
      break;
    case ExecOutcome::kSeccompKilled:
      o.kind = ExitKind::kSeccompViolation;
      break;
    case ExecOutcome::kInfraFailure:
      return absl::UnavailableError(
          absl::StrCat("sandbox exec failed: ", r.infra_error));
  }
  if (r.pids_limit_hit &&
      (o.kind == ExitKind::kExited || o.kind == ExitKind::kSignaled)) {
    o.kind = ExitKind::kPidsLimit;
  }
  o.exit_code = r.outcome == ExecOutcome::kExited ? r.exit_code : -1;
  o.signal = r.signal;
  o.stdout_data = std::move(r.stdout_data);
  o.stderr_data = std::move(r.stderr_data);
  o.stdout_truncated = r.stdout_truncated;
  o.stderr_truncated = r.stderr_truncated;
  o.wall_time = r.wall_time;
  o.cpu_time = r.cpu_time;
  o.peak_memory_bytes = r.peak_memory_bytes;
  return o;
}

LocalSandboxIo::LocalSandboxIo(std::shared_ptr<sandbox::Sandbox> sandbox)
    : sandbox_(std::move(sandbox)) {}

std::string LocalSandboxIo::Resolve(absl::string_view path) const {
  if (absl::StartsWith(path, "/")) return std::string(path);
  const std::string& workdir = sandbox_->spec().workdir;
  return absl::StrCat(workdir.empty() ? "/root" : workdir, "/", path);
}

absl::StatusOr<ExecOutcome> LocalSandboxIo::Run(const Command& command) {
  if (command.argv.empty() == command.shell.empty()) {
    return absl::InvalidArgumentError("exactly one of argv and shell");
  }
  sandbox::ExecRequest req;
  req.argv = command.argv.empty()
                 ? std::vector<std::string>{"/bin/sh", "-c", command.shell}
                 : command.argv;
  req.stdin_data = command.stdin_data;
  for (const auto& [k, v] : command.env) req.env.push_back(k + "=" + v);
  req.cwd = command.cwd.empty() ? "" : Resolve(command.cwd);
  req.timeout = command.timeout;
  req.max_stdout_bytes = command.max_output_bytes;
  req.max_stderr_bytes = command.max_output_bytes;
  ASSIGN_OR_RETURN(sandbox::ExecResult r, sandbox_->Exec(req));
  return ToExecOutcome(std::move(r));
}

absl::Status LocalSandboxIo::WriteFile(absl::string_view path,
                                       absl::string_view data, uint32_t mode) {
  if (path.empty()) return absl::InvalidArgumentError("path is empty");
  ASSIGN_OR_RETURN(std::unique_ptr<sandbox::SafeRoot> files,
                   sandbox_->OpenFiles());
  sandbox::WriteOptions wo;
  wo.mode = mode & 07777;
  wo.create_parents = true;
  wo.uid = sandbox_->host_uid();
  wo.gid = sandbox_->host_uid();
  return files->WriteFile(Resolve(path), data, wo);
}

absl::StatusOr<std::string> LocalSandboxIo::ReadFile(absl::string_view path,
                                                     int64_t max_bytes,
                                                     bool* truncated) {
  if (path.empty()) return absl::InvalidArgumentError("path is empty");
  const std::string full = Resolve(path);
  ASSIGN_OR_RETURN(std::unique_ptr<sandbox::SafeRoot> files,
                   sandbox_->OpenFiles());
  ASSIGN_OR_RETURN(sandbox::FileInfo info, files->Stat(full));
  if (info.type == sandbox::FileType::kDirectory) {
    return absl::FailedPreconditionError(absl::StrCat(path, " is a directory"));
  }
  ASSIGN_OR_RETURN(UniqueFd fd, files->OpenForRead(full));
  std::string data;
  const size_t max = static_cast<size_t>(std::max<int64_t>(0, max_bytes));
  char buf[64 << 10];
  while (data.size() < max) {
    ssize_t n = pread(fd.get(), buf, std::min(sizeof(buf), max - data.size()),
                      static_cast<off_t>(data.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoToStatus(errno, absl::StrCat("read ", path));
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  if (truncated != nullptr) {
    char probe;
    *truncated =
        pread(fd.get(), &probe, 1, static_cast<off_t>(data.size())) == 1;
  }
  return data;
}

}  // namespace dsec::client
