// dsec-init: PID 1 of every sandbox. A static binary with no allocation in
// its loop. It
//   - reaps every zombie in the pid namespace (orphans re-parent to it);
//   - starts execs on request from the host (see init_protocol.h): fork,
//     join the exec's cgroup slot, set up stdio, rlimit, cwd, execve;
//   - reports start, exec failure and exit status with rusage per exec;
//   - holds the fds of the sandbox's root and writable-layer tmpfs and hands
//     duplicates to the host on request (the host keeps none while idle);
//   - exits when the host closes the control socket, which makes the kernel
//     kill everything else in the namespace.
// It runs with no capabilities, no_new_privs and the sandbox's seccomp
// filter already installed by the launcher, and is not dumpable, so code in
// the sandbox can neither ptrace it nor read its memory. SIGKILL from inside
// the namespace cannot reach it (the kernel protects a namespace's init).
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sandbox/init_protocol.h"

namespace dsec::sandbox::init_protocol {
namespace {

constexpr int kMaxExecs = 4096;

struct Running {
  pid_t pid;
  int reply_fd;
};

Running g_running[kMaxExecs];
int g_running_count = 0;

alignas(8) char g_message[sizeof(InitRequest) + kMaxPayload];
char* g_argv[kMaxArgs + 1];
char* g_envp[kMaxArgs + 1];

void SendReply(int fd, const InitReply& reply) {
  // Best effort: the host may have given up on this exec.
  while (send(fd, &reply, sizeof(reply), MSG_NOSIGNAL) < 0 && errno == EINTR) {
  }
}

void CloseFds(const int* fds, int count) {
  for (int i = 0; i < count; ++i) {
    if (fds[i] >= 0) close(fds[i]);
  }
}

// What a vfork()ed child reports back to init when a step fails. The child
// shares init's memory until it execs or exits, so plain stores suffice.
struct ChildError {
  uint32_t step;
  int32_t err;
};
volatile ChildError g_child_error;

// Runs in the vfork()ed child; never returns. Only async-signal-safe calls,
// no allocation: it borrows init's memory until execve.
[[noreturn]] void ExecChild(const InitRequest& req, const int* fds) {
  auto fail = [](ExecStep s) {
    g_child_error.err = errno;
    g_child_error.step = static_cast<uint32_t>(s);
    _exit(127);
  };
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  signal(SIGPIPE, SIG_DFL);
  setsid();
  // 1. Join the exec's cgroup slot before anything else can fork.
  for (uint32_t i = 0; i < req.slot_fd_count; ++i) {
    if (write(fds[4 + i], "0", 1) != 1) fail(ExecStep::kJoinCgroup);
  }
  // 2. stdio: fds[1..3] (stdin, stdout, stderr).
  for (int target = 0; target < 3; ++target) {
    if (dup2(fds[1 + target], target) < 0) fail(ExecStep::kStdio);
  }
  // 3. Everything else closes at execve (control and reply sockets, slot
  // fds, whatever init holds).
  if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) fail(ExecStep::kStdio);
  // 4. rlimits that are per exec.
  if (req.cpu_limit_seconds > 0) {
    struct rlimit rl;
    rl.rlim_cur = static_cast<rlim_t>(req.cpu_limit_seconds);
    rl.rlim_max = static_cast<rlim_t>(req.cpu_limit_seconds) + 1;
    if (setrlimit(RLIMIT_CPU, &rl) != 0) fail(ExecStep::kRlimit);
  }
  // 5. cwd, then execve with PATH taken from the request's environment.
  const char* cwd = g_message + sizeof(InitRequest);
  if (cwd[0] != '\0' && chdir(cwd) != 0) fail(ExecStep::kChdir);
  environ = g_envp;  // execvpe searches the PATH of `environ`
  execvpe(g_argv[0], g_argv, g_envp);
  fail(ExecStep::kExecve);
  __builtin_unreachable();
}

// vfork: init is suspended until the child execs or exits, so the child's
// failure (if any) is known when this returns. Kept out of line so no local
// of the caller lives across vfork.
__attribute__((noinline)) pid_t SpawnChild(const InitRequest& req,
                                           const int* fds) {
  pid_t pid = vfork();
  if (pid == 0) ExecChild(req, fds);
  return pid;
}

// Splits the payload into cwd, argv and envp. False if malformed.
bool ParsePayload(const InitRequest& req) {
  if (req.argc == 0 || req.argc > kMaxArgs || req.envc > kMaxArgs ||
      req.payload_len > kMaxPayload) {
    return false;
  }
  char* p = g_message + sizeof(InitRequest);
  char* end = p + req.payload_len;
  auto next = [&](char** out) -> bool {
    char* nul = static_cast<char*>(memchr(p, '\0', end - p));
    if (nul == nullptr) return false;
    if (out) *out = p;
    p = nul + 1;
    return true;
  };
  if (!next(nullptr)) return false;  // cwd
  for (uint32_t i = 0; i < req.argc; ++i) {
    if (!next(&g_argv[i])) return false;
  }
  g_argv[req.argc] = nullptr;
  for (uint32_t i = 0; i < req.envc; ++i) {
    if (!next(&g_envp[i])) return false;
  }
  g_envp[req.envc] = nullptr;
  return true;
}

void StartExec(const InitRequest& req, int* fds, int nfds) {
  const int reply_fd = fds[0];
  InitReply reply{};
  if (nfds != static_cast<int>(4 + req.slot_fd_count) || !ParsePayload(req) ||
      g_running_count >= kMaxExecs) {
    reply.type = ReplyType::kExecFailed;
    reply.err = g_running_count >= kMaxExecs ? EAGAIN : EINVAL;
    reply.failed_step = static_cast<uint32_t>(ExecStep::kFork);
    SendReply(reply_fd, reply);
    CloseFds(fds, nfds);
    return;
  }
  g_child_error.step = 0;
  g_child_error.err = 0;
  pid_t pid = SpawnChild(req, fds);
  CloseFds(fds + 1, nfds - 1);  // the child has its copies
  if (pid < 0) {
    reply.type = ReplyType::kExecFailed;
    reply.err = errno;
    reply.failed_step = static_cast<uint32_t>(ExecStep::kFork);
    SendReply(reply_fd, reply);
    close(reply_fd);
    return;
  }
  if (g_child_error.step != 0) {
    // The child exits 127 right away; it is reaped in the SIGCHLD path.
    reply.type = ReplyType::kExecFailed;
    reply.pid = pid;
    reply.failed_step = g_child_error.step;
    reply.err = g_child_error.err;
  } else {
    reply.type = ReplyType::kStarted;
    reply.pid = pid;
  }
  SendReply(reply_fd, reply);
  int keep_fd = reply_fd;
  if (reply.type == ReplyType::kExecFailed) {
    close(reply_fd);
    keep_fd = -1;
  }
  g_running[g_running_count++] = Running{pid, keep_fd};
}

void ReapChildren() {
  for (;;) {
    int status = 0;
    struct rusage ru;
    pid_t pid = wait4(-1, &status, WNOHANG, &ru);
    if (pid <= 0) return;
    for (int i = 0; i < g_running_count; ++i) {
      if (g_running[i].pid != pid) continue;
      if (g_running[i].reply_fd >= 0) {
        InitReply reply{};
        reply.type = ReplyType::kExited;
        reply.pid = pid;
        reply.wait_status = status;
        reply.utime_us = ru.ru_utime.tv_sec * 1000000LL + ru.ru_utime.tv_usec;
        reply.stime_us = ru.ru_stime.tv_sec * 1000000LL + ru.ru_stime.tv_usec;
        reply.maxrss_kb = ru.ru_maxrss;
        SendReply(g_running[i].reply_fd, reply);
        close(g_running[i].reply_fd);
      }
      g_running[i] = g_running[--g_running_count];
      break;
    }
  }
}

// Sends duplicates of the layer fds over `reply_fd` (best effort).
void SendLayerFds(int reply_fd) {
  InitReply reply{};
  reply.type = ReplyType::kLayerFds;
  const int fds[2] = {kDiskFd, kRootFd};
  iovec iov{&reply, sizeof(reply)};
  (void)SendWithFds(reply_fd, &iov, 1, fds, 2);
}

// Reads one request; false when the host has gone.
bool HandleControl() {
  int fds[4 + kMaxSlotFds];
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(fds))];
  iovec iov{g_message, sizeof(g_message)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof(cbuf);
  ssize_t n = recvmsg(kControlFd, &msg, MSG_CMSG_CLOEXEC);
  if (n < 0) return errno == EINTR || errno == EAGAIN;
  if (n == 0) return false;
  int nfds = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr;
       c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      memcpy(fds + nfds, CMSG_DATA(c), count * sizeof(int));
      nfds += count;
    }
  }
  InitRequest req;
  if (static_cast<size_t>(n) < sizeof(req)) {
    CloseFds(fds, nfds);
    return true;
  }
  memcpy(&req, g_message, sizeof(req));
  if (req.magic != kMagic) {
    CloseFds(fds, nfds);
    return true;
  }
  if (req.type == RequestType::kSignal) {
    CloseFds(fds, nfds);
    if (req.target_pid == -1 || req.target_pid > 1) {
      kill(req.target_pid, req.signal);
    }
    return true;
  }
  if (req.type == RequestType::kLayerFds) {
    if (nfds == 1) SendLayerFds(fds[0]);
    CloseFds(fds, nfds);
    return true;
  }
  if (req.type != RequestType::kExec || nfds < 4 ||
      static_cast<size_t>(n) != sizeof(req) + req.payload_len ||
      req.slot_fd_count > kMaxSlotFds) {
    if (nfds > 0) {
      InitReply reply{};
      reply.type = ReplyType::kExecFailed;
      reply.err = EINVAL;
      SendReply(fds[0], reply);
    }
    CloseFds(fds, nfds);
    return true;
  }
  StartExec(req, fds, nfds);
  return true;
}

int Main() {
  // Not dumpable: sandboxed code (same uid, no capabilities) can then
  // neither ptrace init nor open its fds (kDiskFd, kRootFd) via /proc/1/fd.
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return 1;
  // The launcher passes the layer fds inheritable; no exec may get them.
  if (fcntl(kDiskFd, F_SETFD, FD_CLOEXEC) != 0 ||
      fcntl(kRootFd, F_SETFD, FD_CLOEXEC) != 0) {
    return 1;
  }
  // Start from default dispositions whatever the launcher had ignored, so
  // user code sees a normal process environment.
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
  }
  signal(SIGPIPE, SIG_IGN);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigprocmask(SIG_SETMASK, &mask, nullptr);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) return 1;
  // Zombies that appeared before the signalfd existed.
  ReapChildren();
  pollfd pfds[2] = {{kControlFd, POLLIN, 0}, {sfd, POLLIN, 0}};
  for (;;) {
    int r = poll(pfds, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (pfds[1].revents & POLLIN) {
      signalfd_siginfo info;
      while (read(sfd, &info, sizeof(info)) > 0) {
      }
      ReapChildren();
    }
    if (pfds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      if (!HandleControl()) return 0;
    }
  }
}

}  // namespace
}  // namespace dsec::sandbox::init_protocol

int main() { return dsec::sandbox::init_protocol::Main(); }
