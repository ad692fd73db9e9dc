// Sandboxes: long-lived isolated process trees that run many execs.
//
//   ASSIGN_OR_RETURN(auto runtime, Runtime::Create(RuntimeOptions{}));
//   ASSIGN_OR_RETURN(auto sb, runtime->CreateSandbox(SandboxSpec{}));
//   ASSIGN_OR_RETURN(ExecResult r, sb->Exec({.argv = {"python3", "-V"}}));
//   sb.reset();  // destroys: kills every process, unmounts, frees cgroups
//
// A Runtime holds what all sandboxes of a node share: the cgroup manager,
// the user namespace every sandbox's root maps through (root inside = an
// unprivileged host uid), the default image skeleton, a /dev template and
// the dsec-init binary. A Sandbox is PID 1 (dsec-init) in fresh pid, mount,
// net, ipc, uts and cgroup namespaces, on an overlay rootfs whose writable
// layer is a size-capped tmpfs, with cgroup limits and a seccomp filter.
//
// Fds: an idle Sandbox holds one host fd, the control socket to its init;
// cgroup files are opened per access and the root and writable-layer fds
// are fetched from init when needed (OpenFiles, Snapshot).
//
// Thread-safety: Runtime and Sandbox are thread-safe; any number of Exec
// calls may run concurrently on one sandbox. Destroying a Sandbox while
// calls on it are in flight is not allowed (the agent holds a shared_ptr).
#ifndef DSEC_SANDBOX_SANDBOX_H_
#define DSEC_SANDBOX_SANDBOX_H_

#include <sys/types.h>
#include <sys/uio.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/unique_fd.h"
#include "sandbox/cgroup.h"
#include "sandbox/safe_fs.h"
#include "sandbox/spec.h"

namespace dsec::sandbox {

struct RuntimeOptions {
  // Where the runtime keeps its state (dev template, default image,
  // snapshots). Created if missing. Empty: /run/dsec/<pid>.
  std::string state_dir;
  // The dsec-init binary. Empty: $DSEC_INIT, else "dsec-init" next to
  // /proc/self/exe.
  std::string init_path;
  // Root inside every sandbox maps to host uid/gid `uid_base`, and ids
  // 0..id_count-1 inside to uid_base.. on the host.
  uid_t uid_base = 200000;
  uint32_t id_count = 65536;
  CgroupManagerOptions cgroups;
  // Empty network namespaces kept ready off the launch path (0: none; each
  // sandbox then creates its own in clone()).
  int netns_pool_target = 16;
};

class Sandbox;

// Called with each chunk of output as it is produced (stream 1 = stdout,
// 2 = stderr), from the exec's thread.
using OutputCallback = std::function<void(int stream, absl::string_view data)>;

// Moves the calling process into a private copy of its mount namespace
// (propagation private), so the mounts a Runtime makes on the host side (the
// /dev template, layer mounts) vanish with the process even when it is
// killed with SIGKILL, instead of piling up in the host's mount table (every
// later CLONE_NEWNS copies that table). Must run while the process has one
// thread: call it first thing in main(). FAILED_PRECONDITION when threads
// already exist. Idempotent per process.
absl::Status EnterPrivateMountNamespace();

class Runtime {
 public:
  static absl::StatusOr<std::unique_ptr<Runtime>> Create(
      const RuntimeOptions& options);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Starts a sandbox. INVALID_ARGUMENT for a bad spec (missing layer dir,
  // relative bind target, unknown seccomp syscall); RESOURCE_EXHAUSTED when
  // the kernel refuses (pids, memory); INTERNAL naming the setup step that
  // failed otherwise.
  absl::StatusOr<std::unique_ptr<Sandbox>> CreateSandbox(
      const SandboxSpec& spec);

  const RuntimeOptions& options() const { return options_; }
  CgroupManager& cgroups() { return *cgroups_; }
  // Directory for sealed layers (snapshots).
  std::string LayersDir() const;

  struct Shared;  // internal: what sandboxes of this runtime share

 private:
  explicit Runtime(RuntimeOptions options);
  absl::Status Init();

  RuntimeOptions options_;
  std::unique_ptr<CgroupManager> cgroups_;
  std::unique_ptr<Shared> shared_;
  friend class Sandbox;
};

class Sandbox {
 public:
  ~Sandbox();  // Destroy(), ignoring errors
  Sandbox(const Sandbox&) = delete;
  Sandbox& operator=(const Sandbox&) = delete;

  const std::string& id() const { return id_; }
  const SandboxSpec& spec() const { return spec_; }
  // Host pid of the sandbox's init (PID 1 inside).
  pid_t init_pid() const { return init_pid_; }

  // Runs a command to completion. Program failures (non-zero exit, signal,
  // timeout, OOM...) are an OK status with the ExecResult saying what
  // happened; a non-OK status means the request was bad (INVALID_ARGUMENT),
  // the sandbox is parked or gone (FAILED_PRECONDITION) or dsec failed
  // (INTERNAL / UNAVAILABLE).
  absl::StatusOr<ExecResult> Exec(const ExecRequest& request,
                                  const OutputCallback& on_output = nullptr);

  // Freezes every process (no CPU used) / thaws them.
  absl::Status Park();
  absl::Status Unpark();
  bool parked() const;

  // Freezes, copies the writable layer into a new immutable layer directory
  // under runtime.LayersDir(), thaws. Returns the full layer stack (new
  // layer first) for SandboxSpec::layers of a fork.
  absl::StatusOr<std::vector<std::string>> Snapshot();

  // Sends `signal` to a process (pid inside the sandbox), or to every
  // process but init with pid -1.
  absl::Status Signal(pid_t pid, int signal);

  // The sandbox's root as seen from the host, for the file API. Paths are
  // confined to it (see safe_fs.h). Each call asks init for an fd of the
  // root (a round trip on the control socket), which the returned SafeRoot
  // owns: open it per operation and drop it after, so an idle sandbox
  // holds no fd but its control socket. FAILED_PRECONDITION when parked
  // (init is frozen and cannot answer) or destroyed; UNAVAILABLE when init
  // does not answer.
  absl::StatusOr<std::unique_ptr<SafeRoot>> OpenFiles() const;
  // Host uid/gid owning files created by the sandbox's root.
  uid_t host_uid() const;

  // Kills every process, unmounts, returns the cgroup. Idempotent.
  absl::Status Destroy();

  // True once init has died (destroyed, or killed from outside).
  bool dead() const;

 private:
  friend class Runtime;
  struct State;
  Sandbox() = default;

  // Duplicates of init's fds of the writable-layer tmpfs and of the root.
  struct LayerFds {
    UniqueFd disk;  // O_PATH: tmpfs holding upper/ and work/
    UniqueFd root;  // O_PATH: the sandbox's root
  };
  // Asks init for them. REQUIRES: init is not frozen.
  absl::StatusOr<LayerFds> RequestLayerFds() const;
  // One request message to init with `fds` attached (serialized with other
  // requests); UNAVAILABLE when init does not take it.
  absl::Status SendToInit(const iovec* iov, int iovcnt, const int* fds,
                          int nfds) const;

  std::string id_;
  SandboxSpec spec_;
  pid_t init_pid_ = -1;
  Runtime* runtime_ = nullptr;
  std::unique_ptr<State> state_;
};

}  // namespace dsec::sandbox

#endif  // DSEC_SANDBOX_SANDBOX_H_
