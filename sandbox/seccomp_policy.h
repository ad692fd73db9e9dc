// Seccomp-bpf policy for sandboxed processes, built with libseccomp.
//
// The filter is compiled once in the parent (SeccompProgram::Compile, which
// allocates) and installed in the child between fork and execve by
// Install(), which is async-signal-safe: no allocation, no locks, just
// prctl(PR_SET_NO_NEW_PRIVS) and seccomp(SECCOMP_SET_MODE_FILTER). Compiled
// programs are immutable and may be shared by any number of threads and
// children.
//
// Default policy: allow everything except a deny list of syscalls a sandbox
// never needs and that widen the kernel attack surface or break isolation:
//   mount family (mount, umount2, fsopen, fsconfig, fsmount, fspick,
//   move_mount, open_tree, open_tree_attr, mount_setattr), pivot_root,
//   chroot, ptrace,
//   process_vm_readv/writev, bpf, perf_event_open, kexec_load,
//   kexec_file_load, init_module, finit_module, delete_module, add_key,
//   request_key, keyctl, unshare, setns, clone with any CLONE_NEW* flag,
//   userfaultfd, open_by_handle_at, name_to_handle_at, io_uring_setup,
//   io_uring_enter, io_uring_register, reboot, swapon, swapoff,
//   settimeofday, clock_settime, clock_adjtime, adjtimex, iopl, ioperm,
//   personality (except the default persona), acct, quotactl, lookup_dcookie,
//   vhangup, nfsservctl, syslog, uselib, ustat, sysfs, _sysctl,
//   fanotify_init, kcmp, pidfd_getfd, create_module, get_kernel_syms,
//   query_module, quotactl_fd, mbind/set_mempolicy/set_mempolicy_home_node/
//   migrate_pages/move_pages, and ioctl TIOCSTI/TIOCLINUX (terminal input
//   injection; the request is compared on its low 32 bits, as the kernel
//   reads it). personality is allowed only for 0 (PER_LINUX) and 0xffffffff
//   (query), also on the low 32 bits.
// Names that the running architecture or libseccomp does not know (removed
// legacy syscalls) are skipped. Syscalls newer than libseccomp's table cannot
// be named and stay allowed, except open_tree_attr (Linux 6.15; a variant of
// open_tree), which is denied by number on x86_64, aarch64 and riscv.
// clone3 always returns ENOSYS (its flags live in memory BPF cannot read, so
// libc falls back to clone, which is filtered). Syscalls of non-native ABIs
// (x32, i386 on x86_64) are killed.
//
// Thread-safety: Compile and CompiledSeccompProgram may be called from any
// thread; CompiledSeccompProgram caches programs by options.
#ifndef DSEC_SANDBOX_SECCOMP_POLICY_H_
#define DSEC_SANDBOX_SECCOMP_POLICY_H_

#include <linux/filter.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace dsec::sandbox {

enum class SeccompAction {
  kErrno,  // denied syscalls fail with EPERM
  kKill,   // denied syscalls kill the whole process (SIGSYS)
};

struct SeccompOptions {
  // false: Compile returns an empty program whose Install() does nothing
  // (the lists below are still validated).
  bool enabled = true;
  SeccompAction action = SeccompAction::kErrno;
  // Syscall names added to the deny list (unconditionally: "ioctl" denies
  // every ioctl). "clone3" keeps its ENOSYS.
  std::vector<std::string> extra_deny;
  // Syscall names removed from the default deny list (e.g. "ptrace" for a
  // debugging image). clone's namespace-flag check and the clone3 -> ENOSYS
  // rule cannot be removed: "clone" or "clone3" here is INVALID_ARGUMENT, as
  // is a name that is also in extra_deny. A name libseccomp knows but this
  // architecture lacks is accepted in either list and ignored.
  std::vector<std::string> allow;
};

class SeccompProgram {
 public:
  // Compiles the policy (0.2-1 ms; see CompiledSeccompProgram).
  // INVALID_ARGUMENT names an unknown syscall.
  static absl::StatusOr<std::shared_ptr<const SeccompProgram>> Compile(
      const SeccompOptions& options);

  // Sets no_new_privs and installs the filter on the calling thread
  // (SECCOMP_FILTER_FLAG_TSYNC is not used: call it in a single-threaded
  // child). Async-signal-safe. Returns 0 or -errno.
  int Install() const noexcept;

  // Number of BPF instructions (for tests and benchmarks).
  size_t size() const { return filter_.size(); }

  // The BPF program itself, for tests and inspection.
  absl::Span<const sock_filter> filter() const { return filter_; }

 private:
  std::vector<sock_filter> filter_;
};

// Compile(options), memoized: options equal after sorting and de-duplicating
// the name lists return the same program, so a launch with a repeated spec
// does no compiling. Errors are not cached. Thread-safe.
absl::StatusOr<std::shared_ptr<const SeccompProgram>> CompiledSeccompProgram(
    const SeccompOptions& options);

// A process's exit was a seccomp kill: signaled with SIGSYS.
bool IsSeccompKill(int wait_status);

}  // namespace dsec::sandbox

#endif  // DSEC_SANDBOX_SECCOMP_POLICY_H_
