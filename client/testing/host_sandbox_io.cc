#include "client/testing/host_sandbox_io.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/unique_fd.h"

namespace dsec::client::testing {
namespace {

absl::Status Errno(absl::string_view what) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(errno)));
}

}  // namespace

HostSandboxIo::HostSandboxIo(std::string root) : root_(std::move(root)) {}

std::string HostSandboxIo::HostPath(absl::string_view path) const {
  while (!path.empty() && path.front() == '/') path.remove_prefix(1);
  return path.empty() ? root_ : absl::StrCat(root_, "/", path);
}

absl::StatusOr<ExecOutcome> HostSandboxIo::Run(const Command& command) {
  if (command.argv.empty() == command.shell.empty()) {
    return absl::InvalidArgumentError("exactly one of argv and shell");
  }
  std::vector<std::string> args =
      command.argv.empty()
          ? std::vector<std::string>{"/bin/sh", "-c", command.shell}
          : command.argv;
  std::vector<std::string> env_strings = {absl::StrCat("HOME=", root_),
                                          "PATH=/usr/local/bin:/usr/bin:/bin",
                                          "LANG=C.UTF-8"};
  for (const auto& [k, v] : command.env) env_strings.push_back(k + "=" + v);
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string cwd = command.cwd.empty() ? root_ : HostPath(command.cwd);

  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 ||
      pipe2(err, O_CLOEXEC) != 0) {
    return Errno("pipe2");
  }
  absl::Time start = absl::Now();
  pid_t pid = fork();
  if (pid < 0) return Errno("fork");
  if (pid == 0) {
    setpgid(0, 0);
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    if (chdir(cwd.c_str()) != 0) _exit(126);
    environ = envp.data();  // execvpe searches the caller's PATH, not envp's
    execvpe(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  setpgid(pid, pid);
  runs_.fetch_add(1);
  close(in[0]);
  close(out[1]);
  close(err[1]);
  UniqueFd stdin_fd(in[1]), stdout_fd(out[0]), stderr_fd(err[0]);
  fcntl(stdin_fd.get(), F_SETFL, O_NONBLOCK);
  size_t stdin_off = 0;
  if (command.stdin_data.empty()) stdin_fd.Reset();

  ExecOutcome outcome;
  bool timed_out = false;
  absl::Time deadline = start + command.timeout;
  std::string* sinks[2] = {&outcome.stdout_data, &outcome.stderr_data};
  bool* truncs[2] = {&outcome.stdout_truncated, &outcome.stderr_truncated};
  while (stdout_fd.valid() || stderr_fd.valid()) {
    pollfd fds[3];
    int n = 0;
    UniqueFd* owners[3];
    for (UniqueFd* fd : {&stdout_fd, &stderr_fd}) {
      if (fd->valid()) {
        owners[n] = fd;
        fds[n++] = {fd->get(), POLLIN, 0};
      }
    }
    if (stdin_fd.valid()) {
      owners[n] = &stdin_fd;
      fds[n++] = {stdin_fd.get(), POLLOUT, 0};
    }
    int64_t wait_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (wait_ms <= 0) {
      timed_out = true;
      kill(-pid, SIGKILL);
      break;
    }
    int r = poll(fds, n, static_cast<int>(std::min<int64_t>(wait_ms, 100)));
    if (r < 0 && errno != EINTR) return Errno("poll");
    for (int i = 0; i < n && r > 0; ++i) {
      if (fds[i].revents == 0) continue;
      if (owners[i] == &stdin_fd) {
        ssize_t w = write(stdin_fd.get(), command.stdin_data.data() + stdin_off,
                          command.stdin_data.size() - stdin_off);
        if (w > 0) stdin_off += w;
        if (w < 0 && errno != EAGAIN) stdin_fd.Reset();
        if (stdin_off == command.stdin_data.size()) stdin_fd.Reset();
        continue;
      }
      char buf[65536];
      ssize_t got = read(owners[i]->get(), buf, sizeof buf);
      if (got <= 0) {
        if (got < 0 && errno == EINTR) continue;
        owners[i]->Reset();
        continue;
      }
      int s = owners[i] == &stdout_fd ? 0 : 1;
      int64_t room =
          command.max_output_bytes - static_cast<int64_t>(sinks[s]->size());
      if (room < got) *truncs[s] = true;
      sinks[s]->append(buf, static_cast<size_t>(std::max<int64_t>(
                                0, std::min<int64_t>(room, got))));
    }
  }
  stdin_fd.Reset();
  int status = 0;
  rusage usage{};
  while (wait4(pid, &status, 0, &usage) < 0 && errno == EINTR) {
  }
  kill(-pid, SIGKILL);  // daemons left behind die with the exec
  outcome.wall_time = absl::Now() - start;
  outcome.cpu_time = absl::DurationFromTimeval(usage.ru_utime) +
                     absl::DurationFromTimeval(usage.ru_stime);
  outcome.peak_memory_bytes = int64_t{usage.ru_maxrss} * 1024;
  if (timed_out) {
    outcome.kind = ExitKind::kTimedOut;
    outcome.signal = SIGKILL;
  } else if (WIFSIGNALED(status)) {
    outcome.kind = ExitKind::kSignaled;
    outcome.signal = WTERMSIG(status);
  } else {
    outcome.kind = ExitKind::kExited;
    outcome.exit_code = WEXITSTATUS(status);
  }
  return outcome;
}

absl::Status HostSandboxIo::WriteFile(absl::string_view path,
                                      absl::string_view data, uint32_t mode) {
  std::filesystem::path p = HostPath(path);
  std::error_code ec;
  std::filesystem::create_directories(p.parent_path(), ec);
  if (ec) return absl::InternalError(ec.message());
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot write ", path));
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  f.close();
  chmod(p.c_str(), mode);
  return absl::OkStatus();
}

absl::StatusOr<std::string> HostSandboxIo::ReadFile(absl::string_view path,
                                                    int64_t max_bytes,
                                                    bool* truncated) {
  std::string p = HostPath(path);
  struct stat st;
  if (stat(p.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  }
  if (S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(path, " is a directory"));
  }
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  std::string data = ss.str();
  if (truncated != nullptr)
    *truncated = static_cast<int64_t>(data.size()) > max_bytes;
  if (static_cast<int64_t>(data.size()) > max_bytes) data.resize(max_bytes);
  return data;
}

}  // namespace dsec::client::testing
