// Sandbox launch and exec.
//
// Invariants of the launch (Runtime::CreateSandbox -> ChildMain):
//   - Everything the child needs is computed in the parent into a
//     LaunchPlan before clone(); the child only makes syscalls on that data
//     (the parent may be multi-threaded: no allocation, no locks after
//     clone).
//   - The child starts as real root in new pid/mount/net/ipc/uts
//     namespaces owned by the host's user namespace, so sandbox root never
//     holds privilege over them. It joins its cgroup, builds the rootfs
//     (tmpfs upper + overlay, host binds, /proc, /dev), pivots, enters the
//     cgroup namespace and then the shared sandbox user namespace, becomes
//     uid 0 there (an unprivileged host uid), drops every capability, sets
//     no_new_privs, leaves fds of its writable layer and root at fixed
//     numbers for dsec-init (which hands them to the host on request; the
//     host keeps none), reports ready, installs seccomp last and execs
//     dsec-init as PID 1.
//   - Any failing step writes {step, errno} to the control socket and
//     exits; the parent turns it into a Status naming the step.
#include "sandbox/sandbox.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/errno_status.h"
#include "common/logging.h"
#include "common/scope_guard.h"
#include "common/status_macros.h"
#include "sandbox/init_protocol.h"
#include "sandbox/netns_pool.h"
#include "sandbox/rootfs.h"

namespace dsec::sandbox {

namespace proto = init_protocol;

const char* ExecOutcomeName(ExecOutcome outcome) {
  switch (outcome) {
    case ExecOutcome::kExited:
      return "exited";
    case ExecOutcome::kSignaled:
      return "signaled";
    case ExecOutcome::kTimedOut:
      return "timed_out";
    case ExecOutcome::kOomKilled:
      return "oom_killed";
    case ExecOutcome::kCpuLimit:
      return "cpu_limit";
    case ExecOutcome::kSeccompKilled:
      return "seccomp_killed";
    case ExecOutcome::kInfraFailure:
      return "infra_failure";
  }
  return "unknown";
}

struct Runtime::Shared {
  UniqueFd userns_fd;
  UniqueFd init_fd;
  std::string image_dir;   // default image skeleton
  std::string dev_dir;     // /dev template (mounted)
  std::string mnt_dir;     // empty dir each sandbox mounts its tmpfs on
  std::string layers_dir;  // sealed layers (snapshots)
  std::vector<HostBind> host_binds;
  std::unique_ptr<NetnsPool> netns_pool;
  std::atomic<uint64_t> next_id{1};
  uint64_t id_salt = 0;
};

namespace {

enum class Step : uint32_t {
  kCgroup = 1,
  kNetns,
  kMountPrivate,
  kMountTmpfs,
  kMkdirLayer,
  kMountOverlay,
  kBindMount,
  kMountProc,
  kMountDev,
  kHostname,
  kLoopback,
  kPivotRoot,
  kCgroupNs,
  kUserNs,
  kSetIds,
  kRlimits,
  kCapabilities,
  kReport,
  kSeccomp,
  kExecInit,
};

const char* StepName(uint32_t step) {
  switch (static_cast<Step>(step)) {
    case Step::kCgroup:
      return "join cgroup";
    case Step::kNetns:
      return "join pooled network namespace";
    case Step::kMountPrivate:
      return "make mounts private";
    case Step::kMountTmpfs:
      return "mount writable-layer tmpfs";
    case Step::kMkdirLayer:
      return "create upper/work dirs";
    case Step::kMountOverlay:
      return "mount overlay rootfs";
    case Step::kBindMount:
      return "bind mount";
    case Step::kMountProc:
      return "mount /proc";
    case Step::kMountDev:
      return "mount /dev";
    case Step::kHostname:
      return "set hostname";
    case Step::kLoopback:
      return "bring up lo";
    case Step::kPivotRoot:
      return "pivot_root";
    case Step::kCgroupNs:
      return "enter cgroup namespace";
    case Step::kUserNs:
      return "enter user namespace";
    case Step::kSetIds:
      return "set uid/gid";
    case Step::kRlimits:
      return "set rlimits";
    case Step::kCapabilities:
      return "drop capabilities";
    case Step::kReport:
      return "report ready";
    case Step::kSeccomp:
      return "install seccomp filter";
    case Step::kExecInit:
      return "exec dsec-init";
  }
  return "unknown step";
}

struct ChildReport {
  uint32_t magic;
  uint32_t step;  // 0: ready
  int32_t err;
};

struct PlannedBind {
  std::string source;
  std::string target;  // host path under the new root
  bool read_only;
  bool make_dir = false;  // create the target directory if missing
};

// Everything the child does, precomputed.
struct LaunchPlan {
  std::string mnt_dir;
  std::string tmpfs_opts;
  std::string upper, work, root;
  std::string shm;  // /dev/shm's directory on the writable-layer tmpfs
  std::string overlay_opts;
  std::vector<PlannedBind> binds;
  std::string proc, dev, dev_pts, dev_shm, dev_mqueue, dev_template;
  std::string hostname;
  uid_t owner = 0;  // host uid of root inside
  int userns_fd = -1;
  int netns_fd = -1;  // a pooled namespace to join, or -1
  int init_fd = -1;
  int control_fd = -1;  // child's end
  std::vector<int> cgroup_fds;
  struct rlimit nofile, stack, fsize, core;
  bool isolate_network = true;
  const SeccompProgram* seccomp = nullptr;
};

// Reports `step` failed (with errno) on `control_fd` and exits.
[[noreturn]] void ChildFailOn(int control_fd, Step step) {
  ChildReport report{proto::kMagic, static_cast<uint32_t>(step), errno};
  (void)!send(control_fd, &report, sizeof(report), MSG_NOSIGNAL);
  _exit(1);
}

[[noreturn]] void ChildFail(const LaunchPlan& p, Step step) {
  ChildFailOn(p.control_fd, step);
}

int CapSet0() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  return static_cast<int>(syscall(SYS_capset, &hdr, data));
}

// Sends the ready report. Returns 0 or -1.
int SendReady(int control_fd) {
  ChildReport ready{proto::kMagic, 0, 0};
  return send(control_fd, &ready, sizeof(ready), MSG_NOSIGNAL) == sizeof(ready)
             ? 0
             : -1;
}

// The child after clone(). One line per step, in order; no allocation, no
// locks, and no libc wrapper that assumes the parent's threads exist.
[[noreturn]] void ChildMain(const LaunchPlan& p) {
  for (int fd : p.cgroup_fds) {
    if (write(fd, "0", 1) != 1) ChildFail(p, Step::kCgroup);
  }
  if (p.netns_fd >= 0 && setns(p.netns_fd, CLONE_NEWNET) != 0)
    ChildFail(p, Step::kNetns);
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
    ChildFail(p, Step::kMountPrivate);
  if (mount("dsec-disk", p.mnt_dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV,
            p.tmpfs_opts.c_str()) != 0)
    ChildFail(p, Step::kMountTmpfs);
  if (mkdir(p.upper.c_str(), 0755) != 0 || mkdir(p.work.c_str(), 0755) != 0 ||
      mkdir(p.root.c_str(), 0755) != 0 || mkdir(p.shm.c_str(), 0) != 0 ||
      chmod(p.shm.c_str(), 01777) != 0)
    ChildFail(p, Step::kMkdirLayer);
  if (chown(p.upper.c_str(), p.owner, p.owner) != 0)
    ChildFail(p, Step::kMkdirLayer);  // the merged "/" takes the upper's owner
  if (mount("dsec-root", p.root.c_str(), "overlay", MS_NOSUID | MS_NODEV,
            p.overlay_opts.c_str()) != 0)
    ChildFail(p, Step::kMountOverlay);
  const int layer_fds[2] = {
      open(p.mnt_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC),
      open(p.root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC)};
  if (layer_fds[0] < 0 || layer_fds[1] < 0) ChildFail(p, Step::kMountOverlay);
  for (const PlannedBind& b : p.binds) {
    if (b.make_dir) mkdir(b.target.c_str(), 0755);
    if (mount(b.source.c_str(), b.target.c_str(), nullptr, MS_BIND | MS_REC,
              nullptr) != 0)
      ChildFail(p, Step::kBindMount);
    unsigned long flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV |
                          (b.read_only ? MS_RDONLY : 0);
    if (mount(nullptr, b.target.c_str(), nullptr, flags, nullptr) != 0)
      ChildFail(p, Step::kBindMount);
  }
  if (mount("proc", p.proc.c_str(), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
            nullptr) != 0)
    ChildFail(p, Step::kMountProc);
  if (mount(p.dev_template.c_str(), p.dev.c_str(), nullptr, MS_BIND | MS_REC,
            nullptr) != 0)
    ChildFail(p, Step::kMountDev);
  if (mount("devpts", p.dev_pts.c_str(), "devpts", MS_NOSUID | MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620") != 0)
    ChildFail(p, Step::kMountDev);
  // /dev/shm: a directory of the writable-layer tmpfs, not a tmpfs of its
  // own. Every superblock costs each memory cgroup on the host a shrinker
  // slot (see cgroup.h); this keeps a sandbox at five. Its files count
  // against disk_bytes.
  if (mount(p.shm.c_str(), p.dev_shm.c_str(), nullptr, MS_BIND, nullptr) != 0 ||
      mount(nullptr, p.dev_shm.c_str(), nullptr,
            MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV, nullptr) != 0)
    ChildFail(p, Step::kMountDev);
  if (mount("mqueue", p.dev_mqueue.c_str(), "mqueue",
            MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0)
    ChildFail(p, Step::kMountDev);
  if (sethostname(p.hostname.data(), p.hostname.size()) != 0)
    ChildFail(p, Step::kHostname);
  if (p.isolate_network && p.netns_fd < 0) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr = {};
    memcpy(ifr.ifr_name, "lo", 3);
    ifr.ifr_flags = IFF_UP | IFF_RUNNING;
    if (s < 0 || ioctl(s, SIOCSIFFLAGS, &ifr) != 0)
      ChildFail(p, Step::kLoopback);
    close(s);
  }
  if (chdir(p.root.c_str()) != 0 || syscall(SYS_pivot_root, ".", ".") != 0 ||
      umount2(".", MNT_DETACH) != 0 || chdir("/") != 0)
    ChildFail(p, Step::kPivotRoot);
  if (unshare(CLONE_NEWCGROUP) != 0) ChildFail(p, Step::kCgroupNs);
  // Raw syscalls: glibc's set*id wrappers broadcast to every thread the
  // parent had (setxid), and would wait forever for threads that do not
  // exist in this child.
  if (syscall(SYS_setgroups, 0, nullptr) != 0 ||
      setns(p.userns_fd, CLONE_NEWUSER) != 0)
    ChildFail(p, Step::kUserNs);
  if (syscall(SYS_setresgid, 0, 0, 0) != 0 ||
      syscall(SYS_setresuid, 0, 0, 0) != 0)
    ChildFail(p, Step::kSetIds);
  for (int cap = 0; cap <= CAP_LAST_CAP; ++cap) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL)
      ChildFail(p, Step::kCapabilities);
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
    ChildFail(p, Step::kCapabilities);
  if (prctl(PR_SET_SECUREBITS,
            SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
                SECBIT_NO_CAP_AMBIENT_RAISE |
                SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED,
            0, 0, 0) != 0)
    ChildFail(p, Step::kCapabilities);
  if (CapSet0() != 0) ChildFail(p, Step::kCapabilities);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    ChildFail(p, Step::kCapabilities);
  // fds before rlimits: the parent may hold more fds than the sandbox's
  // RLIMIT_NOFILE allows, and a dup would then fail. Copies above init's
  // fixed fds first, so the dup2s below cannot clobber a source; failures
  // after the first dup2 are reported on kControlFd.
  const int init_fd = fcntl(p.init_fd, F_DUPFD_CLOEXEC, proto::kFirstFreeFd);
  const int disk_fd = fcntl(layer_fds[0], F_DUPFD_CLOEXEC, proto::kFirstFreeFd);
  const int root_fd = fcntl(layer_fds[1], F_DUPFD_CLOEXEC, proto::kFirstFreeFd);
  if (init_fd < 0 || disk_fd < 0 || root_fd < 0 ||
      dup2(p.control_fd, proto::kControlFd) != proto::kControlFd)
    ChildFail(p, Step::kReport);
  if (dup2(disk_fd, proto::kDiskFd) != proto::kDiskFd ||
      dup2(root_fd, proto::kRootFd) != proto::kRootFd ||
      syscall(SYS_close_range, proto::kFirstFreeFd, ~0U, CLOSE_RANGE_CLOEXEC) !=
          0)
    ChildFailOn(proto::kControlFd, Step::kReport);
  if (setrlimit(RLIMIT_NOFILE, &p.nofile) != 0 ||
      setrlimit(RLIMIT_STACK, &p.stack) != 0 ||
      setrlimit(RLIMIT_FSIZE, &p.fsize) != 0 ||
      setrlimit(RLIMIT_CORE, &p.core) != 0)
    ChildFailOn(proto::kControlFd, Step::kRlimits);
  // Ready goes last but for seccomp and exec, so nearly every failure is
  // reported with its step.
  if (SendReady(proto::kControlFd) != 0)
    ChildFailOn(proto::kControlFd, Step::kReport);
  if (p.seccomp != nullptr && p.seccomp->Install() != 0)
    ChildFailOn(proto::kControlFd, Step::kSeccomp);
  static char* const kArgv[] = {const_cast<char*>("dsec-init"), nullptr};
  static char* const kEnvp[] = {nullptr};
  syscall(SYS_execveat, init_fd, "", kArgv, kEnvp, AT_EMPTY_PATH);
  ChildFailOn(proto::kControlFd, Step::kExecInit);
}

int ChildEntry(void* arg) { ChildMain(*static_cast<const LaunchPlan*>(arg)); }

// Starts ChildMain in new namespaces the way posix_spawn starts a program:
// CLONE_VM | CLONE_VFORK on a stack of its own, so no page tables are copied
// (the cost of a plain fork grows with the agent's size) and this thread
// resumes once the child has exec'd dsec-init or died. All signals are
// blocked around the clone so no handler of ours runs on the child's stack;
// dsec-init sets its own mask.
absl::StatusOr<pid_t> SpawnChild(unsigned long ns_flags,
                                 const LaunchPlan& plan) {
  constexpr size_t kStackSize = 256 * 1024;
  std::unique_ptr<char[]> stack(new char[kStackSize]);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid =
      clone(ChildEntry, stack.get() + kStackSize,
            ns_flags | CLONE_VM | CLONE_VFORK, const_cast<LaunchPlan*>(&plan));
  int saved = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) {
    return dsec::ErrnoToStatus(saved, "clone sandbox namespaces");
  }
  return pid;
}

}  // namespace

// ---------------------------------------------------------------------------
// Runtime

struct Sandbox::State {
  absl::Mutex send_mu;  // serializes requests on the control socket
  // Host end of the control socket: the only fd an idle sandbox holds (its
  // root and writable-layer fds live in init; see RequestLayerFds).
  UniqueFd control;
  std::unique_ptr<SandboxCgroup> cgroup;
  std::vector<std::string> lower_layers;  // spec layers (not the skeleton)
  std::vector<std::string> base_env;
  mutable absl::Mutex mu;
  bool parked ABSL_GUARDED_BY(mu) = false;
  bool destroyed ABSL_GUARDED_BY(mu) = false;
  bool reaped ABSL_GUARDED_BY(mu) = false;
};

Runtime::Runtime(RuntimeOptions options) : options_(std::move(options)) {}

Runtime::~Runtime() {
  if (shared_ != nullptr && !shared_->dev_dir.empty()) {
    UnmountTree(shared_->dev_dir).IgnoreError();
  }
}

std::string Runtime::LayersDir() const { return shared_->layers_dir; }

absl::Status EnterPrivateMountNamespace() {
  static absl::Mutex mu(absl::kConstInit);
  static bool done = false;
  absl::MutexLock lock(&mu);
  if (done) return absl::OkStatus();
  if (unshare(CLONE_NEWNS) != 0) {
    if (errno == EINVAL) {
      return absl::FailedPreconditionError(
          "cannot enter a private mount namespace: the process already has "
          "threads (call EnterPrivateMountNamespace first in main)");
    }
    return dsec::ErrnoStatus("unshare(CLONE_NEWNS)");
  }
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return dsec::ErrnoStatus("make / private");
  }
  done = true;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Runtime>> Runtime::Create(
    const RuntimeOptions& options) {
  // Best effort here; binaries call it first thing in main().
  if (absl::Status s = EnterPrivateMountNamespace(); !s.ok()) {
    DSEC_LOG_DEBUG("runtime: host mount namespace kept: {}", s.ToString());
  }
  std::unique_ptr<Runtime> runtime(new Runtime(options));
  RETURN_IF_ERROR(runtime->Init());
  return runtime;
}

namespace {

absl::StatusOr<std::string> FindInit(const std::string& configured) {
  if (!configured.empty()) return configured;
  if (const char* env = getenv("DSEC_INIT"); env != nullptr && *env) {
    return std::string(env);
  }
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return dsec::ErrnoStatus("readlink /proc/self/exe");
  std::string dir(exe, n);
  dir.resize(dir.rfind('/'));
  for (const std::string& candidate :
       {absl::StrCat(dir, "/dsec-init"), absl::StrCat(dir, "/../bin/dsec-init"),
        absl::StrCat(dir, "/../../bin/dsec-init")}) {
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return absl::NotFoundError(
      absl::StrCat("dsec-init not found next to ", std::string(exe, n),
                   "; set RuntimeOptions::init_path or $DSEC_INIT"));
}

absl::Status MkdirP(const std::string& path, mode_t mode) {
  std::string cur;
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      cur = path.substr(0, i);
      if (mkdir(cur.c_str(), mode) != 0 && errno != EEXIST) {
        return dsec::ErrnoStatus(absl::StrCat("mkdir ", cur));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Runtime::Init() {
  if (geteuid() != 0) {
    return absl::FailedPreconditionError(
        "the sandbox runtime needs root (namespaces, mounts, cgroups)");
  }
  shared_ = std::make_unique<Shared>();
  if (options_.state_dir.empty()) {
    options_.state_dir = absl::StrCat("/run/dsec/", getpid());
  }
  RETURN_IF_ERROR(MkdirP(options_.state_dir, 0711));
  ASSIGN_OR_RETURN(std::string init_path, FindInit(options_.init_path));
  options_.init_path = init_path;
  shared_->init_fd.Reset(open(init_path.c_str(), O_PATH | O_CLOEXEC));
  if (!shared_->init_fd) {
    return dsec::ErrnoStatus(absl::StrCat("open dsec-init ", init_path));
  }
  ASSIGN_OR_RETURN(shared_->userns_fd,
                   CreateUserNamespace(options_.uid_base, options_.id_count));
  shared_->host_binds = DefaultHostBinds();
  shared_->image_dir = absl::StrCat(options_.state_dir, "/image-default");
  shared_->dev_dir = absl::StrCat(options_.state_dir, "/dev");
  shared_->mnt_dir = absl::StrCat(options_.state_dir, "/mnt");
  shared_->layers_dir = absl::StrCat(options_.state_dir, "/layers");
  UnmountTree(shared_->dev_dir).IgnoreError();  // a previous crashed run
  RETURN_IF_ERROR(MkdirP(shared_->mnt_dir, 0700));
  RETURN_IF_ERROR(MkdirP(shared_->layers_dir, 0711));
  struct stat st;
  if (stat(shared_->image_dir.c_str(), &st) != 0) {
    std::string tmp = absl::StrCat(shared_->image_dir, ".tmp");
    RETURN_IF_ERROR(WriteDefaultImage(tmp, options_.uid_base));
    if (rename(tmp.c_str(), shared_->image_dir.c_str()) != 0) {
      return dsec::ErrnoStatus("rename default image");
    }
  }
  RETURN_IF_ERROR(MountDevTemplate(shared_->dev_dir));
  ASSIGN_OR_RETURN(cgroups_, CgroupManager::Create(options_.cgroups));
  ASSIGN_OR_RETURN(shared_->netns_pool,
                   NetnsPool::Create(options_.netns_pool_target));
  std::random_device rd;
  shared_->id_salt = (static_cast<uint64_t>(rd()) << 32) | rd();
  return absl::OkStatus();
}

namespace {

absl::Status ValidateSpec(const SandboxSpec& spec) {
  for (const std::string& layer : spec.layers) {
    struct stat st;
    if (layer.empty() || layer[0] != '/' || stat(layer.c_str(), &st) != 0 ||
        !S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "image layer '", layer, "' is not an existing absolute directory"));
    }
    if (layer.find_first_of(",:\\") != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "image layer path '", layer, "' contains ',', ':' or '\\'"));
    }
  }
  if (spec.layers.empty() && !spec.host_binds) {
    return absl::InvalidArgumentError(
        "a spec with no image layers needs host_binds (the default image)");
  }
  for (const BindMount& b : spec.binds) {
    if (b.target.empty() || b.target[0] != '/' ||
        b.target.find("..") != std::string::npos || b.target == "/") {
      return absl::InvalidArgumentError(absl::StrCat(
          "bind target '", b.target, "' must be an absolute path below /"));
    }
    if (access(b.source.c_str(), F_OK) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("bind source '", b.source, "' does not exist"));
    }
  }
  if (spec.disk_bytes < (1 << 20)) {
    return absl::InvalidArgumentError("disk_bytes must be at least 1 MiB");
  }
  if (spec.limits.memory_bytes < 0 || spec.limits.pids < 0 ||
      spec.limits.cpu_millicores < 0) {
    return absl::InvalidArgumentError("limits must not be negative");
  }
  if (spec.limits.memory_bytes != 0 && spec.limits.memory_bytes < (4 << 20)) {
    return absl::InvalidArgumentError("memory limit must be at least 4 MiB");
  }
  if (spec.hostname.empty() || spec.hostname.size() > 63) {
    return absl::InvalidArgumentError("hostname must be 1-63 characters");
  }
  return absl::OkStatus();
}

absl::StatusOr<ChildReport> ReadChildReport(int fd, absl::Duration timeout) {
  pollfd pfd{fd, POLLIN, 0};
  int r;
  do {
    r = poll(&pfd, 1, absl::ToInt64Milliseconds(timeout));
  } while (r < 0 && errno == EINTR);
  if (r == 0) return absl::DeadlineExceededError("sandbox setup timed out");
  ChildReport report{};
  ssize_t n;
  do {
    n = recv(fd, &report, sizeof(report), 0);
  } while (n < 0 && errno == EINTR);
  if (n != sizeof(report) || report.magic != proto::kMagic) {
    return absl::InternalError("sandbox setup died without a report");
  }
  return report;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Sandbox>> Runtime::CreateSandbox(
    const SandboxSpec& spec) {
  RETURN_IF_ERROR(ValidateSpec(spec));
  ASSIGN_OR_RETURN(auto program, CompiledSeccompProgram(spec.seccomp));
  ASSIGN_OR_RETURN(auto cgroup, cgroups_->Acquire(spec.limits));
  auto release_cgroup = MakeScopeGuard([&] {
    if (cgroup != nullptr) cgroups_->Release(std::move(cgroup));
  });

  std::unique_ptr<Sandbox> sb(new Sandbox());
  sb->runtime_ = this;
  sb->spec_ = spec;
  sb->id_ = absl::StrCat(
      "sb-", absl::Hex(shared_->id_salt ^ (shared_->next_id.fetch_add(1) *
                                           0x9E3779B97F4A7C15ULL),
                       absl::kZeroPad16));
  sb->state_ = std::make_unique<Sandbox::State>();
  Sandbox::State& st = *sb->state_;
  st.lower_layers = spec.layers;
  st.base_env = spec.env;

  LaunchPlan plan;
  const uid_t owner = options_.uid_base;
  plan.mnt_dir = shared_->mnt_dir;
  plan.owner = owner;
  plan.tmpfs_opts =
      absl::StrCat("size=", spec.disk_bytes, ",nr_inodes=", spec.disk_inodes,
                   ",mode=0755,uid=", owner, ",gid=", owner);
  plan.upper = plan.mnt_dir + "/upper";
  plan.work = plan.mnt_dir + "/work";
  plan.root = plan.mnt_dir + "/root";
  plan.shm = plan.mnt_dir + "/shm";
  std::vector<std::string> lowers = spec.layers;
  if (spec.host_binds) lowers.push_back(shared_->image_dir);
  plan.overlay_opts =
      absl::StrCat("lowerdir=", absl::StrJoin(lowers, ":"),
                   ",upperdir=", plan.upper, ",workdir=", plan.work);
  if (plan.overlay_opts.size() > 4000) {
    return absl::InvalidArgumentError(
        "too many or too long image layer paths (overlay options > 4000 B)");
  }
  if (spec.host_binds) {
    for (const HostBind& b : shared_->host_binds) {
      if (!b.is_symlink)
        plan.binds.push_back({b.path, plan.root + b.path, true});
    }
  }
  for (const BindMount& b : spec.binds) {
    struct stat src_st;
    bool is_dir =
        stat(b.source.c_str(), &src_st) == 0 && S_ISDIR(src_st.st_mode);
    plan.binds.push_back({b.source, plan.root + b.target, b.read_only, is_dir});
  }
  plan.proc = plan.root + "/proc";
  plan.dev = plan.root + "/dev";
  plan.dev_pts = plan.dev + "/pts";
  plan.dev_shm = plan.dev + "/shm";
  plan.dev_mqueue = plan.dev + "/mqueue";
  plan.dev_template = shared_->dev_dir;
  plan.hostname = spec.hostname;
  plan.userns_fd = shared_->userns_fd.get();
  plan.init_fd = shared_->init_fd.get();
  // Opened for this launch only; the child joins through them before it
  // execs dsec-init, and they are closed once SpawnChild returns.
  ASSIGN_OR_RETURN(std::vector<UniqueFd> cgroup_fds,
                   cgroup->OpenInitProcsFds());
  for (const UniqueFd& fd : cgroup_fds) plan.cgroup_fds.push_back(fd.get());
  auto lim = [](int64_t v) {
    rlim_t r = v > 0 ? static_cast<rlim_t>(v) : RLIM_INFINITY;
    return rlimit{r, r};
  };
  plan.nofile = lim(spec.max_open_files);
  plan.stack = lim(spec.max_stack_bytes);
  plan.fsize = lim(spec.max_file_size_bytes);
  plan.core = rlimit{0, 0};
  plan.isolate_network = spec.isolate_network;
  plan.seccomp = spec.seccomp.enabled ? program.get() : nullptr;

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    return dsec::ErrnoStatus("socketpair");
  }
  st.control.Reset(sv[0]);
  UniqueFd child_end(sv[1]);
  plan.control_fd = child_end.get();

  UniqueFd netns;
  if (spec.isolate_network) netns = shared_->netns_pool->Take();
  plan.netns_fd = netns.get();
  unsigned long flags =
      CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | SIGCHLD;
  if (spec.isolate_network && !netns) flags |= CLONE_NEWNET;
  ASSIGN_OR_RETURN(pid_t pid, SpawnChild(flags, plan));
  sb->init_pid_ = pid;
  child_end.Reset();
  cgroup_fds.clear();
  netns.Reset();  // the child holds it now
  auto kill_child = MakeScopeGuard([pid] {
    kill(pid, SIGKILL);
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  });
  auto report_or = ReadChildReport(st.control.get(), absl::Seconds(30));
  if (!report_or.ok()) {
    // Say where the child was stuck: it is the first thing to look at.
    std::string wchan;
    std::ifstream(absl::StrCat("/proc/", pid, "/wchan")) >> wchan;
    std::string syscall_line;
    std::getline(std::ifstream(absl::StrCat("/proc/", pid, "/syscall")),
                 syscall_line);
    return absl::Status(
        report_or.status().code(),
        absl::StrCat(report_or.status().message(), " (child wchan=", wchan,
                     ", syscall=", syscall_line, ")"));
  }
  ChildReport report = *report_or;
  if (report.step != 0) {
    absl::Status cause = dsec::ErrnoToStatus(
        report.err, absl::StrCat("sandbox setup step '", StepName(report.step),
                                 "' failed"));
    if (cause.code() == absl::StatusCode::kResourceExhausted) return cause;
    return absl::InternalError(cause.message());
  }
  std::move(kill_child).Cancel();
  std::move(release_cgroup).Cancel();
  st.cgroup = std::move(cgroup);
  return sb;
}

// ---------------------------------------------------------------------------
// Sandbox

Sandbox::~Sandbox() { Destroy().IgnoreError(); }

uid_t Sandbox::host_uid() const { return runtime_->options().uid_base; }

bool Sandbox::parked() const {
  absl::MutexLock lock(&state_->mu);
  return state_->parked;
}

bool Sandbox::dead() const {
  absl::MutexLock lock(&state_->mu);
  if (state_->destroyed || state_->reaped) return true;
  return kill(init_pid_, 0) != 0;
}

absl::Status Sandbox::Destroy() {
  {
    absl::MutexLock lock(&state_->mu);
    if (state_->destroyed) return absl::OkStatus();
    state_->destroyed = true;
  }
  // Killing PID 1 makes the kernel kill every process in the namespace;
  // waitpid on it returns once they are all gone.
  kill(init_pid_, SIGKILL);
  while (waitpid(init_pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  // The mounts went with init's mount namespace (unless a caller of
  // OpenFiles still holds the root, which keeps them until it lets go).
  state_->control.Reset();
  if (state_->cgroup != nullptr) {
    runtime_->cgroups().Release(std::move(state_->cgroup));
  }
  return absl::OkStatus();
}

absl::Status Sandbox::Park() {
  absl::MutexLock lock(&state_->mu);
  if (state_->destroyed)
    return absl::FailedPreconditionError("sandbox destroyed");
  if (state_->parked) return absl::OkStatus();
  RETURN_IF_ERROR(state_->cgroup->Freeze());
  state_->parked = true;
  return absl::OkStatus();
}

absl::Status Sandbox::Unpark() {
  absl::MutexLock lock(&state_->mu);
  if (state_->destroyed)
    return absl::FailedPreconditionError("sandbox destroyed");
  if (!state_->parked) return absl::OkStatus();
  RETURN_IF_ERROR(state_->cgroup->Thaw());
  state_->parked = false;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> Sandbox::Snapshot() {
  absl::MutexLock lock(&state_->mu);
  if (state_->destroyed)
    return absl::FailedPreconditionError("sandbox destroyed");
  const bool was_parked = state_->parked;
  // The disk fd comes from init, which answers only while thawed: a parked
  // sandbox is thawed for that round trip, then everything is frozen for
  // the copy (and stays frozen if it was parked).
  if (was_parked) RETURN_IF_ERROR(state_->cgroup->Thaw());
  absl::StatusOr<LayerFds> layer = RequestLayerFds();
  absl::Status frozen = state_->cgroup->Freeze();
  auto thaw = MakeScopeGuard([&] {
    if (!was_parked) state_->cgroup->Thaw().IgnoreError();
  });
  RETURN_IF_ERROR(frozen);
  RETURN_IF_ERROR(layer.status());
  layer->root.Reset();
  UniqueFd upper(openat(layer->disk.get(), "upper",
                        O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!upper) return dsec::ErrnoStatus("open writable layer");
  std::string name = absl::StrCat(id_, "-", absl::ToUnixMicros(absl::Now()));
  std::string dst = absl::StrCat(runtime_->LayersDir(), "/", name);
  std::string tmp = dst + ".tmp";
  absl::Status copied = CopyLayerTree(upper.get(), tmp);
  if (!copied.ok()) {
    return absl::Status(copied.code(),
                        absl::StrCat("snapshot copy: ", copied.message()));
  }
  if (rename(tmp.c_str(), dst.c_str()) != 0) {
    return dsec::ErrnoStatus("seal snapshot layer");
  }
  // Sealed: read-only for everyone, immutable from here on.
  chmod(dst.c_str(), 0555);
  std::vector<std::string> layers = {dst};
  layers.insert(layers.end(), state_->lower_layers.begin(),
                state_->lower_layers.end());
  return layers;
}

absl::Status Sandbox::SendToInit(const iovec* iov, int iovcnt, const int* fds,
                                 int nfds) const {
  absl::MutexLock lock(&state_->send_mu);
  if (proto::SendWithFds(state_->control.get(), iov, iovcnt, fds, nfds) < 0) {
    return absl::UnavailableError(absl::StrCat(
        "sandbox ", id_, " init is not accepting requests: ", strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<Sandbox::LayerFds> Sandbox::RequestLayerFds() const {
  constexpr absl::Duration kTimeout = absl::Seconds(5);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    return dsec::ErrnoStatus("socketpair");
  }
  UniqueFd reply(sv[0]), reply_child(sv[1]);
  proto::InitRequest req{};
  req.magic = proto::kMagic;
  req.type = proto::RequestType::kLayerFds;
  {
    const int fd = reply_child.get();
    iovec iov{&req, sizeof(req)};
    RETURN_IF_ERROR(SendToInit(&iov, 1, &fd, 1));
  }
  reply_child.Reset();
  pollfd pfd{reply.get(), POLLIN, 0};
  int r;
  do {
    r = poll(&pfd, 1, absl::ToInt64Milliseconds(kTimeout));
  } while (r < 0 && errno == EINTR);
  if (r == 0) {
    return absl::UnavailableError(absl::StrCat(
        "sandbox ", id_, " init did not hand over its layer fds in ",
        absl::FormatDuration(kTimeout)));
  }
  proto::InitReply rep{};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(2 * sizeof(int))];
  iovec iov{&rep, sizeof(rep)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof(cbuf);
  ssize_t n;
  do {
    n = recvmsg(reply.get(), &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  LayerFds out;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr;
       c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int got[2] = {-1, -1};
    memcpy(got, CMSG_DATA(c), std::min<size_t>(count, 2) * sizeof(int));
    // Own whatever arrived before judging it, so nothing leaks.
    out.disk.Reset(got[0]);
    out.root.Reset(got[1]);
  }
  if (n != sizeof(rep) || rep.type != proto::ReplyType::kLayerFds ||
      !out.disk || !out.root) {
    return absl::UnavailableError(
        absl::StrCat("sandbox ", id_, " init sent no layer fds"));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<SafeRoot>> Sandbox::OpenFiles() const {
  // Under mu: Park and Destroy wait, so init stays thawed and alive.
  absl::MutexLock lock(&state_->mu);
  if (state_->destroyed) {
    return absl::FailedPreconditionError("sandbox was destroyed");
  }
  if (state_->parked) {
    return absl::FailedPreconditionError(
        "sandbox is parked; unpark it before file operations");
  }
  ASSIGN_OR_RETURN(LayerFds layer, RequestLayerFds());
  return SafeRoot::Adopt(std::move(layer.root));
}

absl::Status Sandbox::Signal(pid_t pid, int signal) {
  if (pid == 0 || pid == 1 || pid < -1) {
    return absl::InvalidArgumentError(
        "pid must be a sandbox process other than init, or -1 for all");
  }
  if (signal <= 0 || signal >= NSIG) {
    return absl::InvalidArgumentError(absl::StrCat("bad signal ", signal));
  }
  proto::InitRequest req{};
  req.magic = proto::kMagic;
  req.type = proto::RequestType::kSignal;
  req.target_pid = pid;
  req.signal = signal;
  absl::MutexLock lock(&state_->send_mu);
  if (send(state_->control.get(), &req, sizeof(req), MSG_NOSIGNAL) !=
      sizeof(req)) {
    return absl::FailedPreconditionError("sandbox init is gone");
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Exec
//
// Host side of one exec: pick a cgroup slot, make the stdio pipes and a reply
// socket, send the request to init, then one poll loop feeds stdin, reads
// stdout/stderr (capped), watches the reply socket and the deadline. On
// timeout the slot's whole process tree is killed through the cgroup. After
// the process exits, output still buffered in the pipes is drained without
// waiting for EOF (a daemon started with `&` may hold the pipe open).

namespace {

struct OutputStream {
  UniqueFd fd;
  std::string* data;
  int64_t cap;
  int64_t* total;
  bool* truncated;
  int stream;

  // Reads what is available; false at EOF or error.
  bool ReadSome(const OutputCallback& cb) {
    char buf[65536];
    for (;;) {
      ssize_t n = read(fd.get(), buf, sizeof(buf));
      if (n > 0) {
        *total += n;
        int64_t room = cap - static_cast<int64_t>(data->size());
        int64_t keep = std::min<int64_t>(room > 0 ? room : 0, n);
        if (keep > 0) {
          data->append(buf, keep);
          if (cb) cb(stream, absl::string_view(buf, keep));
        }
        if (keep < n) *truncated = true;
        if (n < static_cast<ssize_t>(sizeof(buf))) return true;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return true;
      return false;
    }
  }
};

absl::Status ValidateExec(const ExecRequest& r) {
  if (r.argv.empty() || r.argv[0].empty()) {
    return absl::InvalidArgumentError("argv must name a program");
  }
  auto has_nul = [](const std::string& s) {
    return s.find('\0') != std::string::npos;
  };
  for (const auto& a : r.argv) {
    if (has_nul(a))
      return absl::InvalidArgumentError("argv contains a NUL byte");
  }
  for (const auto& e : r.env) {
    if (has_nul(e) || e.find('=') == std::string::npos || e[0] == '=') {
      return absl::InvalidArgumentError(
          absl::StrCat("env entry '", e.substr(0, 64), "' is not KEY=VALUE"));
    }
  }
  if (has_nul(r.cwd))
    return absl::InvalidArgumentError("cwd contains a NUL byte");
  if (!r.cwd.empty() && r.cwd[0] != '/') {
    return absl::InvalidArgumentError("cwd must be an absolute path");
  }
  if (r.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("timeout must be positive");
  }
  if (r.max_stdout_bytes < 0 || r.max_stderr_bytes < 0) {
    return absl::InvalidArgumentError("output caps must not be negative");
  }
  return absl::OkStatus();
}

// env: the spec's defaults overridden by the request's, by key.
std::vector<std::string> MergeEnv(const std::vector<std::string>& base,
                                  const std::vector<std::string>& over) {
  std::vector<std::string> out;
  auto key = [](const std::string& kv) { return kv.substr(0, kv.find('=')); };
  for (const auto& b : base) {
    bool replaced = false;
    for (const auto& o : over) replaced |= key(o) == key(b);
    if (!replaced) out.push_back(b);
  }
  out.insert(out.end(), over.begin(), over.end());
  return out;
}

const char* ExecStepName(uint32_t step) {
  switch (static_cast<proto::ExecStep>(step)) {
    case proto::ExecStep::kJoinCgroup:
      return "join exec cgroup";
    case proto::ExecStep::kStdio:
      return "set up stdio";
    case proto::ExecStep::kChdir:
      return "chdir";
    case proto::ExecStep::kRlimit:
      return "set rlimit";
    case proto::ExecStep::kExecve:
      return "execve";
    case proto::ExecStep::kFork:
      return "fork";
    default:
      return "start";
  }
}

}  // namespace

absl::StatusOr<ExecResult> Sandbox::Exec(const ExecRequest& request,
                                         const OutputCallback& on_output) {
  RETURN_IF_ERROR(ValidateExec(request));
  {
    absl::MutexLock lock(&state_->mu);
    if (state_->destroyed) {
      return absl::FailedPreconditionError("sandbox was destroyed");
    }
    if (state_->parked) {
      return absl::FailedPreconditionError(
          "sandbox is parked; unpark it before exec");
    }
  }
  // Request payload: cwd, argv, env, NUL-separated.
  std::vector<std::string> env = MergeEnv(state_->base_env, request.env);
  std::string payload = request.cwd.empty() ? spec_.workdir : request.cwd;
  payload.push_back('\0');
  for (const auto& a : request.argv) payload.append(a).push_back('\0');
  for (const auto& e : env) payload.append(e).push_back('\0');
  if (payload.size() > proto::kMaxPayload ||
      request.argv.size() > proto::kMaxArgs || env.size() > proto::kMaxArgs) {
    return absl::InvalidArgumentError(
        absl::StrCat("argv + env are ", payload.size(), " bytes; the limit is ",
                     proto::kMaxPayload));
  }

  ASSIGN_OR_RETURN(ExecSlot * slot, state_->cgroup->AcquireSlot());
  auto release_slot =
      MakeScopeGuard([&] { state_->cgroup->ReleaseSlot(slot); });
  CgroupStats before;
  if (auto s = state_->cgroup->EventStats(); s.ok()) before = *s;

  int reply_sv[2], out_p[2], err_p[2], in_p[2] = {-1, -1};
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, reply_sv) != 0) {
    return dsec::ErrnoStatus("socketpair");
  }
  UniqueFd reply(reply_sv[0]), reply_child(reply_sv[1]);
  if (pipe2(out_p, O_CLOEXEC | O_NONBLOCK) != 0)
    return dsec::ErrnoStatus("pipe");
  UniqueFd out_r(out_p[0]), out_w(out_p[1]);
  if (pipe2(err_p, O_CLOEXEC | O_NONBLOCK) != 0)
    return dsec::ErrnoStatus("pipe");
  UniqueFd err_r(err_p[0]), err_w(err_p[1]);
  // The child's ends must be blocking.
  fcntl(out_w.get(), F_SETFL, 0);
  fcntl(err_w.get(), F_SETFL, 0);
  UniqueFd in_r, in_w;
  if (!request.stdin_data.empty()) {
    if (pipe2(in_p, O_CLOEXEC) != 0) return dsec::ErrnoStatus("pipe");
    in_r.Reset(in_p[0]);
    in_w.Reset(in_p[1]);
    fcntl(in_w.get(), F_SETFL, O_NONBLOCK);
  }

  proto::InitRequest req{};
  req.magic = proto::kMagic;
  req.type = proto::RequestType::kExec;
  req.argc = request.argv.size();
  req.envc = env.size();
  req.payload_len = payload.size();
  // Opened for this exec only; init passes them to the child, which joins.
  ASSIGN_OR_RETURN(std::vector<UniqueFd> slot_fds, slot->OpenProcsFds());
  req.slot_fd_count = slot_fds.size();
  req.cpu_limit_seconds =
      request.cpu_time_limit > absl::ZeroDuration()
          ? std::max<int64_t>(1, absl::ToInt64Seconds(request.cpu_time_limit))
          : 0;
  std::vector<int> fds = {reply_child.get(), in_r ? in_r.get() : -1,
                          out_w.get(), err_w.get()};
  for (const UniqueFd& fd : slot_fds) fds.push_back(fd.get());
  // SCM_RIGHTS cannot carry -1: send /dev/null's place as the reply fd
  // duplicate and let init treat a missing stdin by position.
  UniqueFd devnull;
  if (fds[1] < 0) {
    devnull.Reset(open("/dev/null", O_RDONLY | O_CLOEXEC));
    fds[1] = devnull.get();
  }

  const absl::Time start = absl::Now();
  {
    iovec iov[2] = {{&req, sizeof(req)}, {payload.data(), payload.size()}};
    RETURN_IF_ERROR(
        SendToInit(iov, 2, fds.data(), static_cast<int>(fds.size())));
  }
  reply_child.Reset();
  out_w.Reset();
  err_w.Reset();
  in_r.Reset();
  devnull.Reset();
  slot_fds.clear();

  ExecResult result;
  OutputStream streams[2] = {
      {std::move(out_r), &result.stdout_data, request.max_stdout_bytes,
       &result.stdout_total_bytes, &result.stdout_truncated, 1},
      {std::move(err_r), &result.stderr_data, request.max_stderr_bytes,
       &result.stderr_total_bytes, &result.stderr_truncated, 2}};
  size_t stdin_off = 0;
  bool started = false, exited = false, timed_out = false, cancelled = false;
  proto::InitReply exit_reply{};
  const absl::Time deadline = start + request.timeout;
  absl::Time kill_deadline = absl::InfiniteFuture();
  while (!exited) {
    pollfd pfds[4];
    int n = 0;
    int idx_reply = n;
    pfds[n++] = {reply.get(), POLLIN, 0};
    int idx_out[2] = {-1, -1};
    for (int i = 0; i < 2; ++i) {
      if (streams[i].fd) {
        idx_out[i] = n;
        pfds[n++] = {streams[i].fd.get(), POLLIN, 0};
      }
    }
    int idx_in = -1;
    if (in_w) {
      idx_in = n;
      pfds[n++] = {in_w.get(), POLLOUT, 0};
    }
    absl::Time now = absl::Now();
    absl::Time wake = std::min(deadline, kill_deadline);
    if (request.cancelled && !cancelled) {
      wake = std::min(wake, now + absl::Milliseconds(100));
    }
    int timeout_ms = wake == absl::InfiniteFuture()
                         ? -1
                         : static_cast<int>(std::max<int64_t>(
                               0, absl::ToInt64Milliseconds(wake - now) + 1));
    int r = poll(pfds, n, timeout_ms);
    if (r < 0 && errno != EINTR) return dsec::ErrnoStatus("poll");
    now = absl::Now();
    if (!timed_out && now >= deadline) {
      timed_out = true;
      slot->KillAll().IgnoreError();
      kill_deadline = now + absl::Seconds(10);
    } else if (!timed_out && !cancelled && request.cancelled &&
               request.cancelled()) {
      cancelled = true;
      slot->KillAll().IgnoreError();
      kill_deadline = now + absl::Seconds(10);
    } else if (now >= kill_deadline) {
      result.outcome = ExecOutcome::kInfraFailure;
      result.infra_error = "exec did not end 10 s after its tree was killed";
      return result;
    }
    if (r <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (idx_out[i] >= 0 && pfds[idx_out[i]].revents) {
        if (!streams[i].ReadSome(on_output)) streams[i].fd.Reset();
      }
    }
    if (idx_in >= 0 && pfds[idx_in].revents) {
      if (pfds[idx_in].revents & (POLLERR | POLLHUP)) {
        in_w.Reset();
      } else {
        ssize_t w = write(in_w.get(), request.stdin_data.data() + stdin_off,
                          request.stdin_data.size() - stdin_off);
        if (w > 0) stdin_off += w;
        if ((w < 0 && errno != EAGAIN && errno != EINTR) ||
            stdin_off == request.stdin_data.size()) {
          in_w.Reset();  // EOF for the child
        }
      }
    }
    if (pfds[idx_reply].revents) {
      proto::InitReply rep{};
      ssize_t got = recv(reply.get(), &rep, sizeof(rep), 0);
      if (got == sizeof(rep) && rep.type == proto::ReplyType::kStarted) {
        started = true;
      } else if (got == sizeof(rep) &&
                 rep.type == proto::ReplyType::kExecFailed) {
        // Like a shell: 127 and a message on stderr.
        std::string msg = absl::StrCat("dsec: cannot run '", request.argv[0],
                                       "': ", ExecStepName(rep.failed_step),
                                       ": ", strerror(rep.err), "\n");
        result.stderr_data += msg;
        result.stderr_total_bytes += msg.size();
        result.outcome = ExecOutcome::kExited;
        result.exit_code = rep.err == ENOENT ? 127 : 126;
        result.wall_time = absl::Now() - start;
        return result;
      } else if (got == sizeof(rep) && rep.type == proto::ReplyType::kExited) {
        exit_reply = rep;
        exited = true;
      } else if (got <= 0 && (got == 0 || errno != EINTR)) {
        result.outcome = ExecOutcome::kInfraFailure;
        result.infra_error = started ? "sandbox init died during the exec"
                                     : "sandbox init died before the exec";
        result.wall_time = absl::Now() - start;
        return result;
      }
    }
  }
  // Drain what the process wrote before it exited.
  for (auto& s : streams) {
    if (s.fd) s.ReadSome(on_output);
  }
  result.wall_time = absl::Now() - start;
  result.cpu_time =
      absl::Microseconds(exit_reply.utime_us + exit_reply.stime_us);
  result.peak_memory_bytes = exit_reply.maxrss_kb * 1024;
  if (auto s = slot->Stats(); s.ok()) {
    result.peak_memory_bytes =
        std::max(result.peak_memory_bytes, s->memory_peak_bytes);
    result.cpu_time =
        std::max(result.cpu_time, absl::Nanoseconds(s->cpu_usage_ns));
  }
  CgroupStats after;
  if (auto s = state_->cgroup->EventStats(); s.ok()) after = *s;
  const bool oom = after.oom_kills > before.oom_kills;
  result.pids_limit_hit = after.pids_max_events > before.pids_max_events;
  const int ws = exit_reply.wait_status;
  if (WIFSIGNALED(ws)) result.signal = WTERMSIG(ws);
  if (WIFEXITED(ws)) result.exit_code = WEXITSTATUS(ws);
  result.cancelled = cancelled;
  if (timed_out) {
    result.outcome = ExecOutcome::kTimedOut;
  } else if (cancelled) {
    result.outcome = ExecOutcome::kSignaled;
    result.signal = SIGKILL;
  } else if (oom) {
    result.outcome = ExecOutcome::kOomKilled;
  } else if (WIFSIGNALED(ws) && WTERMSIG(ws) == SIGSYS) {
    result.outcome = ExecOutcome::kSeccompKilled;
  } else if (WIFSIGNALED(ws) &&
             (WTERMSIG(ws) == SIGXCPU ||
              (WTERMSIG(ws) == SIGKILL && req.cpu_limit_seconds > 0 &&
               result.cpu_time >= absl::Seconds(req.cpu_limit_seconds)))) {
    result.outcome = ExecOutcome::kCpuLimit;
  } else if (WIFSIGNALED(ws)) {
    result.outcome = ExecOutcome::kSignaled;
  } else {
    result.outcome = ExecOutcome::kExited;
  }
  return result;
}

}  // namespace dsec::sandbox
