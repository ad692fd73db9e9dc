// The wire between a Sandbox (host side) and dsec-init (PID 1 inside it).
//
// Transport: an AF_UNIX SOCK_SEQPACKET socketpair, one message per request,
// fds passed with SCM_RIGHTS. dsec-init is a static binary with no
// dependencies beyond libc, so this header is plain C++ (no Abseil).
//
// Exec: the host sends InitRequest{kExec} followed (in the same message) by
// `payload_len` bytes: cwd '\0' argv[0] '\0' ... argv[argc-1] '\0' env[0]
// '\0' ... env[envc-1] '\0', and the fds, in order:
//   reply socket, stdin, stdout, stderr, then `slot_fd_count` cgroup.procs
//   fds the child joins (writes "0" to) before execve.
// Init answers on the reply socket (never on the control socket) with
// InitReply{kStarted, pid} or InitReply{kExecFailed, err}, later
// InitReply{kExited, wait status, rusage}, then closes it. Many execs may be
// in flight at once; each has its own reply socket.
//
// Signal: InitRequest{kSignal, target_pid, signal}; no reply. target_pid -1
// means every process but init.
//
// Layer fds: InitRequest{kLayerFds} with one fd, a reply socket. Init
// answers on it with InitReply{kLayerFds} carrying, with SCM_RIGHTS,
// duplicates of its kDiskFd and kRootFd (in that order), then closes it.
// Init is the only holder of those two fds (it got them from the launcher
// at fixed numbers and keeps them close-on-exec): the host asks for them
// when it needs them (file API, snapshot) and closes them after, so an idle
// sandbox costs the host one fd, its control socket. Init is not dumpable,
// so code in the sandbox (no capabilities) cannot reach them through
// /proc/1/fd. A frozen (parked) init cannot answer.
//
// When the control socket reaches EOF (the host closed it or died), init
// exits and the kernel kills everything left in the pid namespace.
#ifndef DSEC_SANDBOX_INIT_PROTOCOL_H_
#define DSEC_SANDBOX_INIT_PROTOCOL_H_

#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

namespace dsec::sandbox::init_protocol {

inline constexpr uint32_t kMagic = 0x64736931;  // "dsi1"
inline constexpr int kControlFd = 3;            // init's control socket
inline constexpr int kDiskFd = 4;  // O_PATH: tmpfs holding upper/ and work/
inline constexpr int kRootFd = 5;  // O_PATH: the sandbox's root (overlay)
inline constexpr int kFirstFreeFd = 6;
inline constexpr uint32_t kMaxPayload = 160 * 1024;
inline constexpr uint32_t kMaxSlotFds = 8;
inline constexpr uint32_t kMaxArgs = 8192;

enum class RequestType : uint32_t { kExec = 1, kSignal = 2, kLayerFds = 3 };
enum class ReplyType : uint32_t {
  kStarted = 1,
  kExecFailed = 2,
  kExited = 3,
  kLayerFds = 4,
};

struct InitRequest {
  uint32_t magic;
  RequestType type;
  uint32_t argc;
  uint32_t envc;
  uint32_t payload_len;
  uint32_t slot_fd_count;
  int32_t target_pid;         // kSignal
  int32_t signal;             // kSignal
  int64_t cpu_limit_seconds;  // RLIMIT_CPU for the exec, 0: none
};

struct InitReply {
  ReplyType type;
  int32_t pid;
  int32_t err;          // kExecFailed: errno of the failed step
  int32_t wait_status;  // kExited
  int64_t utime_us;     // kExited: the process and its waited-for children
  int64_t stime_us;
  int64_t maxrss_kb;
  uint32_t failed_step;  // kExecFailed: which step (see ExecStep)
  uint32_t reserved;
};

// sendmsg of `iov` with `fds` attached as SCM_RIGHTS (none when nfds is 0),
// MSG_NOSIGNAL, retried on EINTR. No allocation: dsec-init uses it too.
// Returns sendmsg's result (-1 with EINVAL for more than kMaxFds fds).
inline constexpr int kMaxFds = 4 + kMaxSlotFds;  // an exec's
inline ssize_t SendWithFds(int sock, const iovec* iov, int iovcnt,
                           const int* fds, int nfds) {
  if (nfds < 0 || nfds > kMaxFds) {
    errno = EINVAL;
    return -1;
  }
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov);
  msg.msg_iovlen = static_cast<size_t>(iovcnt);
  if (nfds > 0) {
    msg.msg_control = cbuf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  ssize_t n;
  do {
    n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return n;
}

// Step of the exec child that failed, for precise errors.
enum class ExecStep : uint32_t {
  kNone = 0,
  kJoinCgroup = 1,
  kStdio = 2,
  kChdir = 3,
  kRlimit = 4,
  kExecve = 5,
  kFork = 6,
};

}  // namespace dsec::sandbox::init_protocol

#endif  // DSEC_SANDBOX_INIT_PROTOCOL_H_
