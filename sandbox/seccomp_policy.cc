// Invariants of this file:
// - The filter is built by libseccomp from one table (kDenied) plus three
//   argument-checked rules (clone, personality, ioctl) and clone3 -> ENOSYS;
//   every decision about what is denied lives in BuildDenySet.
// - libseccomp keeps unsynchronized global state (API level, kernel feature
//   probes), so filter building runs under g_libseccomp_mu; only the pure
//   name lookup (seccomp_syscall_resolve_name) runs outside it.
// - A compiled program is immutable; Install() reads it without locks and
//   allocates nothing, so it may run between fork and execve.
#include "sandbox/seccomp_policy.h"

#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/const_init.h"
#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/errno_status.h"
#include "common/status_macros.h"
#include "common/unique_fd.h"

namespace dsec::sandbox {
namespace {

// Denied unconditionally unless named in SeccompOptions::allow. Names this
// architecture or libseccomp lacks are skipped.
constexpr const char* kDenied[] = {
    // Mounts and the root directory.
    "mount", "umount2", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount",
    "open_tree", "open_tree_attr", "mount_setattr", "pivot_root", "chroot",
    // Other processes: their memory and file descriptors.
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    // Kernel attack surface.
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "open_by_handle_at", "name_to_handle_at",
    "fanotify_init", "lookup_dcookie",
    // Keyrings.
    "add_key", "request_key", "keyctl",
    // Namespaces (clone's CLONE_NEW* flags are checked separately).
    "unshare", "setns",
    // Modules and kexec.
    "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "create_module", "get_kernel_syms", "query_module",
    // Host-wide state: power, swap, clocks, accounting, quotas, log.
    "reboot", "swapon", "swapoff", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "acct", "quotactl", "quotactl_fd", "syslog",
    "vhangup",
    // Port I/O.
    "iopl", "ioperm",
    // Obsolete interfaces.
    "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl",
    // NUMA placement and page migration, which override the host's policy.
    "mbind", "set_mempolicy", "set_mempolicy_home_node", "migrate_pages",
    "move_pages"};

// clone flags that create namespaces. CLONE_NEWTIME (0x80) sits in clone's
// exit-signal byte, where the kernel rejects it anyway; checking it costs
// nothing and keeps the list equal to unshare's.
constexpr uint64_t kNamespaceFlags[] = {
    CLONE_NEWNS,   CLONE_NEWUSER, CLONE_NEWPID,    CLONE_NEWNET,
    CLONE_NEWIPC,  CLONE_NEWUTS,  CLONE_NEWCGROUP,
#ifdef CLONE_NEWTIME
    CLONE_NEWTIME,
#else
    0x00000080,
#endif
};

// ioctl requests denied: both inject input into a terminal other processes
// read from.
constexpr uint64_t kDeniedIoctls[] = {TIOCSTI, TIOCLINUX};

// The kernel reads ioctl's request and personality's persona as 32 bits.
constexpr uint64_t kLow32 = 0xffffffffu;

enum class DenyKind {
  kAlways,            // every call
  kCloneNamespaces,   // clone with any of kNamespaceFlags
  kPersonalityOther,  // personality other than 0 and 0xffffffff
  kTerminalIoctls,    // ioctl with a request in kDeniedIoctls
};

// Serializes libseccomp (see the top of the file).
ABSL_CONST_INIT absl::Mutex g_libseccomp_mu(absl::kConstInit);

struct ContextDeleter {
  void operator()(void* ctx) const { seccomp_release(ctx); }
};
using ScmpContext = std::unique_ptr<void, ContextDeleter>;

// The options with sorted, de-duplicated name lists: equal keys compile to
// the same filter.
struct NormalizedOptions {
  bool enabled;
  SeccompAction action;
  std::vector<std::string> extra_deny;
  std::vector<std::string> allow;

  auto operator<=>(const NormalizedOptions&) const = default;
};

std::vector<std::string> SortedUnique(std::vector<std::string> names) {
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

NormalizedOptions Normalize(const SeccompOptions& options) {
  return NormalizedOptions{options.enabled, options.action,
                           SortedUnique(options.extra_deny),
                           SortedUnique(options.allow)};
}

// Denied syscalls newer than libseccomp 2.5's table, by number. Since Linux
// 5.1 a new syscall has one number on every architecture but alpha (and
// x86_64 shares it), so the table holds where that numbering is native.
struct NumberedSyscall {
  const char* name;
  int nr;
};
constexpr NumberedSyscall kNewerSyscalls[] = {
    // Linux 6.15: open_tree and mount_setattr in one call; could clone a
    // read-only bind mount as a writable detached mount.
    {"open_tree_attr", 467},
};
#if defined(__x86_64__) || defined(__aarch64__) || defined(__riscv)
constexpr bool kUnifiedSyscallNumbers = true;
#else
constexpr bool kUnifiedSyscallNumbers = false;
#endif

// ResolveNative's answers besides a syscall number.
constexpr int kUnknownSyscall = __NR_SCMP_ERROR;
constexpr int kNotOnThisArch = __NR_SCMP_ERROR - 1;

// The native syscall number of `name`, kNotOnThisArch when libseccomp knows
// the name but this architecture lacks the syscall, kUnknownSyscall when
// neither libseccomp nor kNewerSyscalls knows it.
int ResolveNative(const std::string& name) {
  if (name.empty() || name.find('\0') != std::string::npos) {
    return kUnknownSyscall;
  }
  int nr = seccomp_syscall_resolve_name(name.c_str());
  if (nr == __NR_SCMP_ERROR) {
    for (const NumberedSyscall& newer : kNewerSyscalls) {
      if (kUnifiedSyscallNumbers && name == newer.name) return newer.nr;
    }
    return kUnknownSyscall;
  }
  // Other negative numbers are libseccomp's pseudo-syscalls: names of
  // syscalls that exist on other architectures only.
  return nr < 0 ? kNotOnThisArch : nr;
}

absl::Status CheckNames(const std::vector<std::string>& names,
                        absl::string_view list) {
  for (const std::string& name : names) {
    if (ResolveNative(name) == kUnknownSyscall) {
      return absl::InvalidArgumentError(
          absl::StrCat("seccomp: unknown syscall \"", name, "\" in ", list));
    }
  }
  return absl::OkStatus();
}

absl::Status Validate(const NormalizedOptions& options) {
  RETURN_IF_ERROR(CheckNames(options.extra_deny, "extra_deny"));
  RETURN_IF_ERROR(CheckNames(options.allow, "allow"));
  for (const std::string& name : options.allow) {
    if (name == "clone" || name == "clone3") {
      return absl::InvalidArgumentError(absl::StrCat(
          "seccomp: \"", name, "\" cannot be allowed: its rule is fixed"));
    }
    if (std::binary_search(options.extra_deny.begin(), options.extra_deny.end(),
                           name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "seccomp: \"", name, "\" is in both allow and extra_deny"));
    }
  }
  return absl::OkStatus();
}

// What is denied, by syscall name. clone3 is not here: it always gets ENOSYS.
std::map<std::string, DenyKind> BuildDenySet(const NormalizedOptions& options) {
  std::map<std::string, DenyKind> deny;
  for (const char* name : kDenied) deny.emplace(name, DenyKind::kAlways);
  deny.emplace("clone", DenyKind::kCloneNamespaces);
  deny.emplace("personality", DenyKind::kPersonalityOther);
  deny.emplace("ioctl", DenyKind::kTerminalIoctls);
  for (const std::string& name : options.allow) deny.erase(name);
  for (const std::string& name : options.extra_deny) {
    if (name != "clone3") deny.insert_or_assign(name, DenyKind::kAlways);
  }
  return deny;
}

absl::Status RuleError(int rc, absl::string_view name) {
  return dsec::ErrnoToStatus(-rc, absl::StrCat("seccomp_rule_add(", name, ")"));
}

// Adds one rule: `action` for syscall `nr` when `cmps` (zero or one
// comparison) hold.
absl::Status AddRule(void* ctx, uint32_t action, int nr, absl::string_view name,
                     absl::Span<const scmp_arg_cmp> cmps) {
  int rc = seccomp_rule_add_array(ctx, action, nr,
                                  static_cast<unsigned int>(cmps.size()),
                                  cmps.empty() ? nullptr : cmps.data());
  if (rc != 0) return RuleError(rc, name);
  return absl::OkStatus();
}

absl::Status AddDenyRules(void* ctx, uint32_t deny, int nr,
                          const std::string& name, DenyKind kind) {
  switch (kind) {
    case DenyKind::kAlways:
      return AddRule(ctx, deny, nr, name, {});
    case DenyKind::kCloneNamespaces:
      // libseccomp allows one comparison per argument and rule, so "any
      // flag set" is one rule per flag.
      for (uint64_t flag : kNamespaceFlags) {
        scmp_arg_cmp cmp = SCMP_A0(SCMP_CMP_MASKED_EQ, flag, flag);
        RETURN_IF_ERROR(AddRule(ctx, deny, nr, name, {&cmp, 1}));
      }
      return absl::OkStatus();
    case DenyKind::kPersonalityOther:
      // Deny unless the low 32 bits are all 0 or all 1. A 32-bit value that
      // is neither has, going round the bits cyclically, some bit i set with
      // bit i+1 clear: one masked comparison per i covers exactly that set
      // (32 rules is the minimum with one comparison per rule).
      for (int i = 0; i < 32; ++i) {
        uint64_t bit = uint64_t{1} << i;
        uint64_t next = uint64_t{1} << ((i + 1) % 32);
        scmp_arg_cmp cmp = SCMP_A0(SCMP_CMP_MASKED_EQ, bit | next, bit);
        RETURN_IF_ERROR(AddRule(ctx, deny, nr, name, {&cmp, 1}));
      }
      return absl::OkStatus();
    case DenyKind::kTerminalIoctls:
      for (uint64_t request : kDeniedIoctls) {
        scmp_arg_cmp cmp = SCMP_A1(SCMP_CMP_MASKED_EQ, kLow32, request);
        RETURN_IF_ERROR(AddRule(ctx, deny, nr, name, {&cmp, 1}));
      }
      return absl::OkStatus();
  }
  return absl::InternalError("seccomp: unknown DenyKind");
}

// Reads back what seccomp_export_bpf wrote to `fd`.
absl::StatusOr<std::vector<sock_filter>> ReadFilter(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return dsec::ErrnoStatus("fstat(seccomp memfd)");
  size_t bytes = static_cast<size_t>(st.st_size);
  if (bytes == 0 || bytes % sizeof(sock_filter) != 0 ||
      bytes / sizeof(sock_filter) > BPF_MAXINSNS) {
    return absl::InternalError(
        absl::StrCat("seccomp: exported filter has ", bytes, " bytes"));
  }
  std::vector<sock_filter> filter(bytes / sizeof(sock_filter));
  auto* out = reinterpret_cast<char*>(filter.data());
  size_t done = 0;
  while (done < bytes) {
    ssize_t n = ::pread(fd, out + done, bytes - done, done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return dsec::ErrnoStatus("pread(seccomp memfd)");
    if (n == 0) return absl::InternalError("seccomp: short filter read");
    done += static_cast<size_t>(n);
  }
  return filter;
}

absl::StatusOr<std::vector<sock_filter>> BuildFilter(
    const NormalizedOptions& options) ABSL_LOCKS_EXCLUDED(g_libseccomp_mu) {
  const std::map<std::string, DenyKind> deny = BuildDenySet(options);
  const uint32_t deny_action = options.action == SeccompAction::kKill
                                   ? SCMP_ACT_KILL_PROCESS
                                   : SCMP_ACT_ERRNO(EPERM);

  UniqueFd memfd(::memfd_create("dsec-seccomp", MFD_CLOEXEC));
  if (!memfd) return dsec::ErrnoStatus("memfd_create(seccomp)");

  absl::MutexLock lock(&g_libseccomp_mu);
  ScmpContext ctx(seccomp_init(SCMP_ACT_ALLOW));
  if (ctx == nullptr) return absl::InternalError("seccomp_init failed");
  void* c = ctx.get();
  // Only the native architecture is in the filter; everything else (i386
  // via int 0x80, x32) takes the bad-arch action.
  if (int rc =
          seccomp_attr_set(c, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS);
      rc != 0) {
    return dsec::ErrnoToStatus(-rc, "seccomp_attr_set(ACT_BADARCH)");
  }
  // Binary-tree layout: loads faster (PERF-NOTES). Optional; older
  // libseccomp builds a linear filter instead.
  (void)seccomp_attr_set(c, SCMP_FLTATR_CTL_OPTIMIZE, 2);

  for (const auto& [name, kind] : deny) {
    int nr = ResolveNative(name);
    if (nr < 0) continue;  // not on this architecture
    RETURN_IF_ERROR(AddDenyRules(c, deny_action, nr, name, kind));
  }
  // clone3's flags are in memory BPF cannot read: report it missing so libc
  // falls back to clone, whose flags are checked. Never the kill action.
  if (int nr = ResolveNative("clone3"); nr >= 0) {
    RETURN_IF_ERROR(AddRule(c, SCMP_ACT_ERRNO(ENOSYS), nr, "clone3", {}));
  }

  if (int rc = seccomp_export_bpf(c, memfd.get()); rc != 0) {
    return dsec::ErrnoToStatus(-rc, "seccomp_export_bpf");
  }
  return ReadFilter(memfd.get());
}

}  // namespace

absl::StatusOr<std::shared_ptr<const SeccompProgram>> SeccompProgram::Compile(
    const SeccompOptions& options) {
  NormalizedOptions normalized = Normalize(options);
  RETURN_IF_ERROR(Validate(normalized));
  auto program = std::make_shared<SeccompProgram>();
  if (normalized.enabled) {
    ASSIGN_OR_RETURN(program->filter_, BuildFilter(normalized));
  }
  return std::shared_ptr<const SeccompProgram>(std::move(program));
}

int SeccompProgram::Install() const noexcept {
  if (filter_.empty()) return 0;  // seccomp disabled
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -errno;
  sock_fprog prog{};
  prog.len = static_cast<unsigned short>(filter_.size());
  prog.filter = const_cast<sock_filter*>(filter_.data());
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
    return -errno;
  }
  return 0;
}

absl::StatusOr<std::shared_ptr<const SeccompProgram>> CompiledSeccompProgram(
    const SeccompOptions& options) {
  // Launch specs come from a few templates; the bound only keeps a flood of
  // distinct specs from growing the map without limit (later ones are
  // compiled each time).
  constexpr size_t kMaxEntries = 64;
  ABSL_CONST_INIT static absl::Mutex mu(absl::kConstInit);
  static auto* cache ABSL_PT_GUARDED_BY(mu) =
      new std::map<NormalizedOptions, std::shared_ptr<const SeccompProgram>>;

  NormalizedOptions key = Normalize(options);
  {
    absl::MutexLock lock(&mu);
    auto it = cache->find(key);
    if (it != cache->end()) return it->second;
  }
  // Compile outside the lock; if another thread won the race, return its
  // program so equal options always share one.
  ASSIGN_OR_RETURN(std::shared_ptr<const SeccompProgram> program,
                   SeccompProgram::Compile(options));
  absl::MutexLock lock(&mu);
  if (auto it = cache->find(key); it != cache->end()) return it->second;
  if (cache->size() < kMaxEntries) cache->emplace(std::move(key), program);
  return program;
}

bool IsSeccompKill(int wait_status) {
  return WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGSYS;
}

}  // namespace dsec::sandbox
