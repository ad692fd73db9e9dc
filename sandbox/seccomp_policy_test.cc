// Two kinds of tests:
// - Black-box, as nsjail does: fork, Install() in the child, try a hostile
//   syscall, and report its errno as the exit code (or die by SIGSYS).
//   Installing needs no root (no_new_privs), so these run anywhere.
// - The exported BPF run through a small classic-BPF interpreter, which
//   checks every deny-list entry and argument rule without making calls
//   (reboot, vhangup, kexec...) that would be harmful if a rule were missing.
#include "sandbox/seccomp_policy.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

extern char** environ;

namespace dsec::sandbox {
namespace {

using ::dsec::testing::StatusIs;
using ::testing::HasSubstr;

// ---- running code in a filtered child ------------------------------------

constexpr int kInstallFailed = 200;
constexpr int kUnexpected = 201;

// errno of a libc call that returns -1 on failure; 0 when it worked.
int Errno(long rc) { return rc == -1 ? errno : 0; }

std::string DescribeWaitStatus(int ws) {
  if (WIFEXITED(ws)) {
    int code = WEXITSTATUS(ws);
    return absl::StrCat("exited ", code, " (", strerror(code), ")");
  }
  if (WIFSIGNALED(ws)) {
    return absl::StrCat("killed by signal ", WTERMSIG(ws), " (",
                        strsignal(WTERMSIG(ws)), ")");
  }
  return absl::StrCat("wait status ", ws);
}

::testing::AssertionResult ExitedWith(int ws, int code) {
  if (WIFEXITED(ws) && WEXITSTATUS(ws) == code) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << DescribeWaitStatus(ws) << ", want exit " << code << " ("
         << strerror(code) << ")";
}

::testing::AssertionResult KilledBy(int ws, int sig) {
  if (WIFSIGNALED(ws) && WTERMSIG(ws) == sig) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << DescribeWaitStatus(ws) << ", want signal " << sig << " ("
         << strsignal(sig) << ")";
}

int WaitFor(pid_t pid) {
  int ws = 0;
  while (waitpid(pid, &ws, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return ws;
}

// Forks a child that installs `program` (none: unfiltered) and exits with
// body()'s result, the errno of the call it tried. Returns the wait status.
template <typename Body>
int RunInChild(const SeccompProgram* program, Body body) {
  pid_t pid = fork();
  if (pid < 0) {
    ADD_FAILURE() << "fork: " << strerror(errno);
    return -1;
  }
  if (pid == 0) {
    if (program != nullptr && program->Install() != 0) _exit(kInstallFailed);
    _exit(body());
  }
  return WaitFor(pid);
}

std::shared_ptr<const SeccompProgram> MustCompile(
    const SeccompOptions& options) {
  auto program = SeccompProgram::Compile(options);
  EXPECT_TRUE(program.ok()) << program.status();
  return program.ok() ? *program : nullptr;
}

std::shared_ptr<const SeccompProgram> DefaultProgram() {
  static auto* program =
      new std::shared_ptr<const SeccompProgram>(MustCompile(SeccompOptions{}));
  return *program;
}

// Raw clone (fork-like, no new stack): errno, or 0 when a child was made.
int RawClone(uint64_t flags) {
  long rc = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
  if (rc == 0) _exit(0);
  if (rc < 0) return errno;
  return WaitFor(static_cast<pid_t>(rc)) == 0 ? 0 : kUnexpected;
}

// Raw clone3 with struct clone_args v0 (64 bytes).
int RawClone3(uint64_t flags) {
  uint64_t args[8] = {};
  args[0] = flags;
  args[4] = SIGCHLD;  // exit_signal
  long rc = syscall(__NR_clone3, args, sizeof(args));
  if (rc == 0) _exit(0);
  if (rc < 0) return errno;
  return WaitFor(static_cast<pid_t>(rc)) == 0 ? 0 : kUnexpected;
}

constexpr long kOpenTreeAttrNr = 467;  // Linux 6.15, not in libc headers yet

int IoctlOnPipe(uint64_t request) {
  int fds[2];
  if (pipe(fds) != 0) return kUnexpected;
  char c = 'x';
  return Errno(syscall(SYS_ioctl, fds[0], request, &c));
}

// ---- the deny list, black-box --------------------------------------------

struct HostileCall {
  const char* what;
  int (*call)();
  // Unfiltered, the call fails some other way (or works) on any host, so
  // EPERM under the filter is the filter's doing.
  bool check_unfiltered;
};

const HostileCall kHostileCalls[] = {
    {"mount",
     [] { return Errno(mount("none", "/nonexistent-dsec", "tmpfs", 0, 0)); },
     true},
    {"umount2", [] { return Errno(umount2("/nonexistent-dsec", 0)); }, true},
#if defined(__x86_64__) || defined(__aarch64__)
    // Newer than libseccomp 2.5, denied by number (unfiltered: ENOENT, or
    // ENOSYS before Linux 6.15).
    {"open_tree_attr",
     [] {
       return Errno(syscall(kOpenTreeAttrNr, -1, "", 0, nullptr, size_t{0}));
     },
     true},
#endif
    {"chroot", [] { return Errno(chroot("/nonexistent-dsec")); }, true},
    {"unshare(CLONE_NEWUSER)", [] { return Errno(unshare(CLONE_NEWUSER)); },
     false},
    {"unshare(0)", [] { return Errno(unshare(0)); }, true},
    {"setns", [] { return Errno(setns(-1, 0)); }, true},
    {"ptrace(PTRACE_TRACEME)",
     [] { return Errno(ptrace(PTRACE_TRACEME, 0, nullptr, nullptr)); }, false},
    {"process_vm_readv",
     [] {
       return Errno(
           syscall(SYS_process_vm_readv, getpid(), nullptr, 0, nullptr, 0, 0));
     },
     false},
    {"bpf(BPF_PROG_LOAD)",
     [] { return Errno(syscall(SYS_bpf, 5, nullptr, 0)); }, false},
    {"keyctl(KEYCTL_GET_KEYRING_ID)",
     [] { return Errno(syscall(SYS_keyctl, 0, -3, 0)); }, false},
    {"io_uring_setup",
     [] { return Errno(syscall(SYS_io_uring_setup, 1, nullptr)); }, false},
    {"userfaultfd", [] { return Errno(syscall(SYS_userfaultfd, O_CLOEXEC)); },
     false},
    {"perf_event_open",
     [] { return Errno(syscall(SYS_perf_event_open, nullptr, 0, -1, -1, 0)); },
     false},
    {"personality(PER_LINUX32)", [] { return Errno(personality(PER_LINUX32)); },
     true},
    {"personality(READ_IMPLIES_EXEC)",
     [] { return Errno(personality(READ_IMPLIES_EXEC)); }, true},
    {"personality(READ_IMPLIES_EXEC | 1 << 32), raw",
     [] {
       return Errno(
           syscall(SYS_personality, (uint64_t{1} << 32) | READ_IMPLIES_EXEC));
     },
     true},
    {"ioctl(TIOCSTI)", [] { return IoctlOnPipe(TIOCSTI); }, true},
    {"ioctl(TIOCLINUX)", [] { return IoctlOnPipe(TIOCLINUX); }, true},
    {"ioctl(TIOCSTI | 1 << 32)",
     [] { return IoctlOnPipe((uint64_t{1} << 32) | TIOCSTI); }, true},
    {"clone(CLONE_NEWNS)", [] { return RawClone(CLONE_NEWNS); }, false},
    {"clone(CLONE_NEWUSER)", [] { return RawClone(CLONE_NEWUSER); }, false},
    {"clone(CLONE_NEWPID)", [] { return RawClone(CLONE_NEWPID); }, false},
    {"clone(CLONE_NEWNET)", [] { return RawClone(CLONE_NEWNET); }, false},
    {"clone(CLONE_NEWIPC)", [] { return RawClone(CLONE_NEWIPC); }, false},
    {"clone(CLONE_NEWUTS)", [] { return RawClone(CLONE_NEWUTS); }, false},
    {"clone(CLONE_NEWCGROUP)", [] { return RawClone(CLONE_NEWCGROUP); }, false},
    {"clone(CLONE_NEWNS | CLONE_NEWPID | 1 << 40)",
     [] { return RawClone(CLONE_NEWNS | CLONE_NEWPID | (uint64_t{1} << 40)); },
     false},
};

TEST(SeccompPolicy, HostileCallsFailWithEperm) {
  auto program = DefaultProgram();
  ASSERT_NE(program, nullptr);
  for (const HostileCall& hostile : kHostileCalls) {
    SCOPED_TRACE(hostile.what);
    EXPECT_TRUE(ExitedWith(RunInChild(program.get(), hostile.call), EPERM));
    if (hostile.check_unfiltered) {
      int ws = RunInChild(nullptr, hostile.call);
      EXPECT_FALSE(WIFEXITED(ws) && WEXITSTATUS(ws) == EPERM)
          << "unfiltered " << DescribeWaitStatus(ws);
    }
  }
}

TEST(SeccompPolicy, HostileCallsKillWithKillAction) {
  SeccompOptions options;
  options.action = SeccompAction::kKill;
  auto program = MustCompile(options);
  ASSERT_NE(program, nullptr);
  for (const HostileCall& hostile : kHostileCalls) {
    SCOPED_TRACE(hostile.what);
    int ws = RunInChild(program.get(), hostile.call);
    EXPECT_TRUE(KilledBy(ws, SIGSYS));
    EXPECT_TRUE(IsSeccompKill(ws));
  }
}

TEST(SeccompPolicy, Clone3FailsWithEnosysUnderBothActions) {
  for (SeccompAction action : {SeccompAction::kErrno, SeccompAction::kKill}) {
    SeccompOptions options;
    options.action = action;
    auto program = MustCompile(options);
    ASSERT_NE(program, nullptr);
    EXPECT_TRUE(ExitedWith(
        RunInChild(program.get(), [] { return RawClone3(0); }), ENOSYS));
    EXPECT_TRUE(ExitedWith(
        RunInChild(program.get(), [] { return RawClone3(CLONE_NEWUSER); }),
        ENOSYS));
  }
}

// ---- what must keep working ----------------------------------------------

int ForkAndWait() {
  pid_t pid = fork();
  if (pid < 0) return errno;
  if (pid == 0) _exit(7);
  int ws = WaitFor(pid);
  return WIFEXITED(ws) && WEXITSTATUS(ws) == 7 ? 0 : kUnexpected;
}

int StartThread() {
  // glibc tries clone3 first and falls back to clone on ENOSYS.
  int value = 0;
  std::thread thread([&value] { value = 42; });
  thread.join();
  return value == 42 ? 0 : kUnexpected;
}

int SpawnTrue() {
  pid_t pid;
  char arg0[] = "true";
  char* argv[] = {arg0, nullptr};
  int rc = posix_spawn(&pid, "/bin/true", nullptr, nullptr, argv, environ);
  if (rc != 0) return rc;
  return WaitFor(pid) == 0 ? 0 : kUnexpected;
}

TEST(SeccompPolicy, OrdinaryProcessAndThreadCreationWorks) {
  for (SeccompAction action : {SeccompAction::kErrno, SeccompAction::kKill}) {
    SeccompOptions options;
    options.action = action;
    auto program = MustCompile(options);
    ASSERT_NE(program, nullptr);
    EXPECT_TRUE(ExitedWith(RunInChild(program.get(), ForkAndWait), 0));
    EXPECT_TRUE(
        ExitedWith(RunInChild(program.get(), [] { return RawClone(0); }), 0));
    EXPECT_TRUE(ExitedWith(RunInChild(program.get(), StartThread), 0));
    EXPECT_TRUE(ExitedWith(RunInChild(program.get(), SpawnTrue), 0));
  }
}

TEST(SeccompPolicy, DefaultPersonaAndQueryWork) {
  auto program = DefaultProgram();
  ASSERT_NE(program, nullptr);
  EXPECT_TRUE(ExitedWith(
      RunInChild(program.get(),
                 [] { return personality(0xffffffff) == PER_LINUX ? 0 : 99; }),
      0));
  EXPECT_TRUE(ExitedWith(
      RunInChild(program.get(), [] { return Errno(personality(PER_LINUX)); }),
      0));
}

TEST(SeccompPolicy, OtherIoctlsWork) {
  auto program = DefaultProgram();
  ASSERT_NE(program, nullptr);
  EXPECT_TRUE(ExitedWith(RunInChild(program.get(),
                                    [] {
                                      int fds[2];
                                      if (pipe(fds) != 0) return kUnexpected;
                                      int n = -1;
                                      return Errno(ioctl(fds[0], FIONREAD, &n));
                                    }),
                         0));
}

TEST(SeccompPolicy, ExecOfTrueWorksAfterInstall) {
  auto program = DefaultProgram();
  ASSERT_NE(program, nullptr);
  EXPECT_TRUE(ExitedWith(RunInChild(program.get(),
                                    [] {
                                      execl("/bin/true", "true", nullptr);
                                      return errno;
                                    }),
                         0));
}

TEST(SeccompPolicy, ShellRunsAndFilterSurvivesExec) {
  auto program = DefaultProgram();
  ASSERT_NE(program, nullptr);
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (dup2(fds[1], STDOUT_FILENO) < 0) _exit(kUnexpected);
    if (program->Install() != 0) _exit(kInstallFailed);
    // A pipeline makes the shell fork; cat reports the filter it inherited.
    execl("/bin/sh", "sh", "-c", "echo hi | cat && exec cat /proc/self/status",
          nullptr);
    _exit(errno);
  }
  close(fds[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0) out.append(buf, n);
  close(fds[0]);
  EXPECT_TRUE(ExitedWith(WaitFor(pid), 0));
  EXPECT_EQ(out.substr(0, 3), "hi\n");
  EXPECT_THAT(out, HasSubstr("NoNewPrivs:\t1"));
  EXPECT_THAT(out, HasSubstr("Seccomp:\t2"));
}

// ---- other ABIs ----------------------------------------------------------

#if defined(__x86_64__)
// getpid (i386 number 20) through the 32-bit int 0x80 entry.
int Int80Getpid() {
  long ret;
  asm volatile("int $0x80"
               : "=a"(ret)
               : "0"(20L)
               : "memory", "cc", "r8", "r9", "r10", "r11");
  return ret > 0 ? 0 : static_cast<int>(-ret);
}

TEST(SeccompPolicy, I386SyscallKillsProcess) {
  auto program = DefaultProgram();
  ASSERT_NE(program, nullptr);
  int unfiltered = RunInChild(nullptr, Int80Getpid);
  int filtered = RunInChild(program.get(), Int80Getpid);
  if (KilledBy(unfiltered, SIGSEGV)) {
    // Kernel without (or with disabled) IA32 emulation: the ABI is not
    // reachable at all, filter or not.
    std::printf("note: int 0x80 unavailable on this kernel\n");
    EXPECT_TRUE(KilledBy(filtered, SIGSEGV));
    return;
  }
  EXPECT_TRUE(ExitedWith(unfiltered, 0));
  EXPECT_TRUE(KilledBy(filtered, SIGSYS));
  EXPECT_TRUE(IsSeccompKill(filtered));
}

TEST(SeccompPolicy, X32SyscallKillsProcess) {
  auto program = DefaultProgram();
  ASSERT_NE(program, nullptr);
  constexpr long kX32SyscallBit = 0x40000000;
  int ws = RunInChild(program.get(), [] {
    return Errno(syscall(kX32SyscallBit | __NR_getpid));
  });
  EXPECT_TRUE(KilledBy(ws, SIGSYS));
}
#endif  // __x86_64__

// ---- options ---------------------------------------------------------------

TEST(SeccompPolicy, ExtraDenyDeniesUname) {
  SeccompOptions options;
  options.extra_deny = {"uname"};
  auto program = MustCompile(options);
  ASSERT_NE(program, nullptr);
  auto call_uname = [] {
    struct utsname u;
    return Errno(uname(&u));
  };
  EXPECT_TRUE(ExitedWith(RunInChild(program.get(), call_uname), EPERM));
  EXPECT_TRUE(ExitedWith(RunInChild(DefaultProgram().get(), call_uname), 0));
}

TEST(SeccompPolicy, AllowReenablesPtrace) {
  SeccompOptions options;
  options.allow = {"ptrace"};
  auto program = MustCompile(options);
  ASSERT_NE(program, nullptr);
  EXPECT_TRUE(ExitedWith(
      RunInChild(
          program.get(),
          [] { return Errno(ptrace(PTRACE_TRACEME, 0, nullptr, nullptr)); }),
      0));
  EXPECT_TRUE(ExitedWith(
      RunInChild(program.get(), [] { return Errno(unshare(CLONE_NEWUSER)); }),
      EPERM));
}

TEST(SeccompPolicy, DisabledProgramInstallsNothing) {
  SeccompOptions options;
  options.enabled = false;
  auto program = MustCompile(options);
  ASSERT_NE(program, nullptr);
  EXPECT_EQ(program->size(), 0u);
  EXPECT_TRUE(ExitedWith(
      RunInChild(
          program.get(),
          [] { return Errno(ptrace(PTRACE_TRACEME, 0, nullptr, nullptr)); }),
      0));
}

TEST(SeccompPolicy, BadNamesAreInvalidArgument) {
  auto compile_error = [](std::vector<std::string> deny,
                          std::vector<std::string> allow, bool enabled = true) {
    SeccompOptions options;
    options.enabled = enabled;
    options.extra_deny = std::move(deny);
    options.allow = std::move(allow);
    return SeccompProgram::Compile(options).status();
  };
  EXPECT_THAT(compile_error({"uname", "no_such_syscall"}, {}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("\"no_such_syscall\" in extra_deny")));
  EXPECT_THAT(compile_error({}, {"bogus_call"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("\"bogus_call\" in allow")));
  EXPECT_THAT(compile_error({""}, {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(compile_error({std::string("uname\0x", 7)}, {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(compile_error({}, {"clone"}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("clone")));
  EXPECT_THAT(
      compile_error({}, {"clone3"}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("clone3")));
  EXPECT_THAT(compile_error({"kcmp"}, {"kcmp"}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("both allow and extra_deny")));
  EXPECT_THAT(compile_error({"no_such_syscall"}, {}, /*enabled=*/false),
              StatusIs(absl::StatusCode::kInvalidArgument));
  SeccompOptions options;
  options.allow = {"not_a_syscall"};
  EXPECT_THAT(
      CompiledSeccompProgram(options).status(),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not_a_syscall")));
}

TEST(SeccompPolicy, NamesOfOtherArchitecturesAreAccepted) {
  // socketcall is an i386 multiplexer; libseccomp knows it everywhere.
  if (seccomp_syscall_resolve_name("socketcall") >= 0) return;  // native
  SeccompOptions options;
  options.extra_deny = {"socketcall"};
  options.allow = {"umount"};
  auto program = SeccompProgram::Compile(options);
  ASSERT_TRUE(program.ok()) << program.status();
  EXPECT_EQ((*program)->size(), DefaultProgram()->size());
}

// ---- cache -----------------------------------------------------------------

TEST(SeccompPolicy, CacheReturnsSameProgramForEqualOptions) {
  SeccompOptions a;
  a.extra_deny = {"uname", "kcmp"};
  a.allow = {"ptrace"};
  SeccompOptions b;
  b.extra_deny = {"kcmp", "uname", "uname"};
  b.allow = {"ptrace", "ptrace"};
  SeccompOptions c = a;
  c.action = SeccompAction::kKill;

  ASSERT_OK_AND_ASSIGN(auto pa, CompiledSeccompProgram(a));
  ASSERT_OK_AND_ASSIGN(auto pb, CompiledSeccompProgram(b));
  ASSERT_OK_AND_ASSIGN(auto pc, CompiledSeccompProgram(c));
  ASSERT_OK_AND_ASSIGN(auto pa2, CompiledSeccompProgram(a));
  EXPECT_EQ(pa.get(), pb.get());
  EXPECT_EQ(pa.get(), pa2.get());
  EXPECT_NE(pa.get(), pc.get());
  // The cached program is the one Compile would build.
  ASSERT_OK_AND_ASSIGN(auto fresh, SeccompProgram::Compile(b));
  ASSERT_EQ(fresh->size(), pa->size());
  EXPECT_EQ(0, std::memcmp(fresh->filter().data(), pa->filter().data(),
                           pa->size() * sizeof(sock_filter)));
}

TEST(SeccompPolicy, CacheIsThreadSafe) {
  SeccompOptions options;
  options.action = SeccompAction::kKill;
  options.extra_deny = {"uname", "sethostname"};
  constexpr int kThreads = 4;
  std::vector<const SeccompProgram*> seen(kThreads * 100);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        auto program = CompiledSeccompProgram(options);
        seen[t * 100 + i] = program.ok() ? program->get() : nullptr;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  ASSERT_NE(seen[0], nullptr);
  for (const SeccompProgram* p : seen) EXPECT_EQ(p, seen[0]);
}

TEST(SeccompPolicy, IsSeccompKill) {
  int ws = RunInChild(nullptr, [] {
    raise(SIGSYS);
    return 0;
  });
  EXPECT_TRUE(IsSeccompKill(ws));
  EXPECT_FALSE(IsSeccompKill(RunInChild(nullptr, [] { return 0; })));
  EXPECT_FALSE(IsSeccompKill(RunInChild(nullptr, [] {
    raise(SIGKILL);
    return 0;
  })));
  EXPECT_FALSE(IsSeccompKill(RunInChild(nullptr, [] { return SIGSYS; })));
}

// ---- the filter itself, interpreted --------------------------------------

// Runs a classic-BPF seccomp filter on `data`; returns the SECCOMP_RET_*.
uint32_t RunFilter(absl::Span<const sock_filter> filter,
                   const seccomp_data& data) {
  uint32_t a = 0;
  uint32_t x = 0;
  uint32_t mem[BPF_MEMWORDS] = {};
  for (size_t pc = 0; pc < filter.size(); ++pc) {
    const sock_filter& in = filter[pc];
    switch (in.code) {
      case BPF_LD | BPF_W | BPF_ABS:
        if (in.k % 4 != 0 || in.k + 4 > sizeof(data)) {
          ADD_FAILURE() << "bad load offset " << in.k;
          return 0xdead;
        }
        std::memcpy(&a, reinterpret_cast<const char*>(&data) + in.k, 4);
        break;
      case BPF_LD | BPF_IMM:
        a = in.k;
        break;
      case BPF_LDX | BPF_IMM:
        x = in.k;
        break;
      case BPF_LD | BPF_MEM:
        a = mem[in.k % BPF_MEMWORDS];
        break;
      case BPF_LDX | BPF_MEM:
        x = mem[in.k % BPF_MEMWORDS];
        break;
      case BPF_ST:
        mem[in.k % BPF_MEMWORDS] = a;
        break;
      case BPF_STX:
        mem[in.k % BPF_MEMWORDS] = x;
        break;
      case BPF_ALU | BPF_AND | BPF_K:
        a &= in.k;
        break;
      case BPF_ALU | BPF_OR | BPF_K:
        a |= in.k;
        break;
      case BPF_MISC | BPF_TAX:
        x = a;
        break;
      case BPF_MISC | BPF_TXA:
        a = x;
        break;
      case BPF_JMP | BPF_JA:
        pc += in.k;
        break;
      case BPF_JMP | BPF_JEQ | BPF_K:
        pc += a == in.k ? in.jt : in.jf;
        break;
      case BPF_JMP | BPF_JGT | BPF_K:
        pc += a > in.k ? in.jt : in.jf;
        break;
      case BPF_JMP | BPF_JGE | BPF_K:
        pc += a >= in.k ? in.jt : in.jf;
        break;
      case BPF_JMP | BPF_JSET | BPF_K:
        pc += (a & in.k) != 0 ? in.jt : in.jf;
        break;
      case BPF_RET | BPF_K:
        return in.k;
      default:
        ADD_FAILURE() << "unsupported BPF opcode 0x" << std::hex << in.code;
        return 0xdead;
    }
  }
  ADD_FAILURE() << "filter ran off its end";
  return 0xdead;
}

constexpr uint32_t kAllow = SECCOMP_RET_ALLOW;
constexpr uint32_t kEperm = SECCOMP_RET_ERRNO | EPERM;
constexpr uint32_t kEnosys = SECCOMP_RET_ERRNO | ENOSYS;
constexpr uint32_t kKill = SECCOMP_RET_KILL_PROCESS;

uint32_t Verdict(const SeccompProgram& program, int nr,
                 std::initializer_list<uint64_t> args = {},
                 uint32_t arch = seccomp_arch_native()) {
  seccomp_data data{};
  data.nr = nr;
  data.arch = arch;
  int i = 0;
  for (uint64_t arg : args) data.args[i++] = arg;
  return RunFilter(program.filter(), data);
}

int Nr(const char* name) { return seccomp_syscall_resolve_name(name); }

// The default deny list, copied from the header's comment.
constexpr const char* kHeaderDenyList[] = {"mount",
                                           "umount2",
                                           "fsopen",
                                           "fsconfig",
                                           "fsmount",
                                           "fspick",
                                           "move_mount",
                                           "open_tree",
                                           "mount_setattr",
                                           "pivot_root",
                                           "chroot",
                                           "ptrace",
                                           "process_vm_readv",
                                           "process_vm_writev",
                                           "bpf",
                                           "perf_event_open",
                                           "kexec_load",
                                           "kexec_file_load",
                                           "init_module",
                                           "finit_module",
                                           "delete_module",
                                           "add_key",
                                           "request_key",
                                           "keyctl",
                                           "unshare",
                                           "setns",
                                           "userfaultfd",
                                           "open_by_handle_at",
                                           "name_to_handle_at",
                                           "io_uring_setup",
                                           "io_uring_enter",
                                           "io_uring_register",
                                           "reboot",
                                           "swapon",
                                           "swapoff",
                                           "settimeofday",
                                           "clock_settime",
                                           "clock_adjtime",
                                           "adjtimex",
                                           "iopl",
                                           "ioperm",
                                           "acct",
                                           "quotactl",
                                           "quotactl_fd",
                                           "lookup_dcookie",
                                           "vhangup",
                                           "nfsservctl",
                                           "syslog",
                                           "uselib",
                                           "ustat",
                                           "sysfs",
                                           "_sysctl",
                                           "fanotify_init",
                                           "kcmp",
                                           "pidfd_getfd",
                                           "create_module",
                                           "get_kernel_syms",
                                           "query_module",
                                           "mbind",
                                           "set_mempolicy",
                                           "set_mempolicy_home_node",
                                           "migrate_pages",
                                           "move_pages"};

constexpr const char* kMustAllow[] = {
    "read",   "write",  "openat",      "close",      "mmap",
    "munmap", "brk",    "execve",      "exit_group", "getpid",
    "wait4",  "socket", "connect",     "futex",      "rt_sigaction",
    "fcntl",  "uname",  "sethostname", "prctl",      "seccomp"};

TEST(SeccompFilter, DeniesEveryListedSyscall) {
  SeccompOptions kill_options;
  kill_options.action = SeccompAction::kKill;
  auto errno_program = DefaultProgram();
  auto kill_program = MustCompile(kill_options);
  ASSERT_NE(errno_program, nullptr);
  ASSERT_NE(kill_program, nullptr);
  int checked = 0;
  for (const char* name : kHeaderDenyList) {
    int nr = Nr(name);
    if (nr < 0) continue;  // not on this architecture
    SCOPED_TRACE(name);
    EXPECT_EQ(Verdict(*errno_program, nr), kEperm);
    EXPECT_EQ(Verdict(*kill_program, nr), kKill);
    ++checked;
  }
  EXPECT_GT(checked, 50);
#if defined(__x86_64__) || defined(__aarch64__)
  EXPECT_EQ(Verdict(*errno_program, kOpenTreeAttrNr), kEperm);
  EXPECT_EQ(Verdict(*kill_program, kOpenTreeAttrNr), kKill);
#endif
  for (const char* name : kMustAllow) {
    SCOPED_TRACE(name);
    EXPECT_EQ(Verdict(*errno_program, Nr(name)), kAllow);
    EXPECT_EQ(Verdict(*kill_program, Nr(name)), kAllow);
  }
}

TEST(SeccompFilter, PersonalityAllowsOnlyDefaultAndQueryOnLow32Bits) {
  auto program = DefaultProgram();
  ASSERT_NE(program, nullptr);
  const int nr = Nr("personality");
  auto verdict = [&](uint64_t arg) { return Verdict(*program, nr, {arg}); };
  EXPECT_EQ(verdict(0), kAllow);
  EXPECT_EQ(verdict(0xffffffff), kAllow);
  // The kernel reads the persona as 32 bits: high bits change nothing.
  EXPECT_EQ(verdict(uint64_t{1} << 32), kAllow);
  EXPECT_EQ(verdict(0xdeadbeef00000000 | 0xffffffff), kAllow);
  EXPECT_EQ(verdict((uint64_t{1} << 32) | READ_IMPLIES_EXEC), kEperm);
  for (int i = 0; i < 32; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(verdict(uint64_t{1} << i), kEperm);
    EXPECT_EQ(verdict(0xffffffff & ~(uint64_t{1} << i)), kEperm);
  }
  std::mt19937_64 rng(42);
  for (int i = 0; i < 20000; ++i) {
    uint64_t arg = rng();
    uint32_t low = static_cast<uint32_t>(arg);
    uint32_t want = low == 0 || low == 0xffffffff ? kAllow : kEperm;
    ASSERT_EQ(verdict(arg), want) << std::hex << arg;
  }
}

TEST(SeccompFilter, IoctlDeniesTerminalInjectionOnly) {
  auto program = DefaultProgram();
  ASSERT_NE(program, nullptr);
  const int nr = Nr("ioctl");
  EXPECT_EQ(Verdict(*program, nr, {0, TIOCSTI}), kEperm);
  EXPECT_EQ(Verdict(*program, nr, {0, TIOCLINUX}), kEperm);
  EXPECT_EQ(Verdict(*program, nr, {0, (uint64_t{7} << 32) | TIOCSTI}), kEperm);
  EXPECT_EQ(Verdict(*program, nr, {0, TCGETS}), kAllow);
  EXPECT_EQ(Verdict(*program, nr, {0, FIONREAD}), kAllow);
}

TEST(SeccompFilter, CloneDeniesEveryNamespaceFlag) {
  auto program = DefaultProgram();
  ASSERT_NE(program, nullptr);
  const int nr = Nr("clone");
  for (uint64_t flag :
       {CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWIPC,
        CLONE_NEWUTS, CLONE_NEWCGROUP, 0x80 /* CLONE_NEWTIME */}) {
    SCOPED_TRACE(flag);
    EXPECT_EQ(Verdict(*program, nr, {flag}), kEperm);
    EXPECT_EQ(Verdict(*program, nr,
                      {flag | SIGCHLD | CLONE_VM | (uint64_t{1} << 40)}),
              kEperm);
  }
  constexpr uint64_t kThreadFlags =
      CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
      CLONE_SYSVSEM | CLONE_SETTLS | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID;
  EXPECT_EQ(Verdict(*program, nr, {kThreadFlags}), kAllow);
  EXPECT_EQ(Verdict(*program, nr, {CLONE_CHILD_SETTID | SIGCHLD}), kAllow);
  EXPECT_EQ(Verdict(*program, Nr("clone3")), kEnosys);
}

TEST(SeccompFilter, OtherArchitecturesAreKilled) {
  auto program = DefaultProgram();
  ASSERT_NE(program, nullptr);
  for (uint32_t arch : {uint32_t{SCMP_ARCH_X86}, uint32_t{SCMP_ARCH_X86_64},
                        uint32_t{SCMP_ARCH_AARCH64}, uint32_t{SCMP_ARCH_ARM}}) {
    if (arch == seccomp_arch_native()) continue;
    SCOPED_TRACE(arch);
    EXPECT_EQ(Verdict(*program, 20, {}, arch), kKill);
    EXPECT_EQ(Verdict(*program, 0, {}, arch), kKill);
  }
}

TEST(SeccompFilter, OptionsAdjustTheRules) {
  SeccompOptions options;
  options.allow = {"personality", "ioctl", "mount", "open_tree_attr"};
  options.extra_deny = {"clone", "clone3", "sethostname"};
  auto program = MustCompile(options);
  ASSERT_NE(program, nullptr);
  EXPECT_EQ(Verdict(*program, Nr("personality"), {READ_IMPLIES_EXEC}), kAllow);
  EXPECT_EQ(Verdict(*program, Nr("ioctl"), {0, TIOCSTI}), kAllow);
  EXPECT_EQ(Verdict(*program, Nr("mount")), kAllow);
  EXPECT_EQ(Verdict(*program, Nr("umount2")), kEperm);
#if defined(__x86_64__) || defined(__aarch64__)
  EXPECT_EQ(Verdict(*program, kOpenTreeAttrNr), kAllow);
#endif
  EXPECT_EQ(Verdict(*program, Nr("clone"), {SIGCHLD}), kEperm);
  EXPECT_EQ(Verdict(*program, Nr("clone3")), kEnosys);
  EXPECT_EQ(Verdict(*program, Nr("sethostname")), kEperm);

  SeccompOptions deny_ioctl;
  deny_ioctl.extra_deny = {"ioctl", "personality"};
  program = MustCompile(deny_ioctl);
  ASSERT_NE(program, nullptr);
  EXPECT_EQ(Verdict(*program, Nr("ioctl"), {0, TCGETS}), kEperm);
  EXPECT_EQ(Verdict(*program, Nr("personality"), {0}), kEperm);
}

// ---- timings (printed, not asserted) -------------------------------------

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

int64_t Median(std::vector<int64_t> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

TEST(SeccompPolicyTiming, PrintsCompileLookupAndInstallTimes) {
  SeccompOptions options;
  std::vector<int64_t> compile_ns;
  for (int i = 0; i < 30; ++i) {
    int64_t start = NowNs();
    auto program = SeccompProgram::Compile(options);
    compile_ns.push_back(NowNs() - start);
    ASSERT_TRUE(program.ok());
  }

  ASSERT_TRUE(CompiledSeccompProgram(options).ok());
  constexpr int kLookups = 20000;
  int64_t start = NowNs();
  for (int i = 0; i < kLookups; ++i) {
    auto program = CompiledSeccompProgram(options);
    ASSERT_TRUE(program.ok());
  }
  int64_t lookup_ns = (NowNs() - start) / kLookups;

  auto program = DefaultProgram();
  ASSERT_NE(program, nullptr);
  std::vector<int64_t> install_ns;
  for (int i = 0; i < 30; ++i) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      int64_t t0 = NowNs();
      int rc = program->Install();
      int64_t elapsed = NowNs() - t0;
      if (rc != 0) _exit(kInstallFailed);
      _exit(write(fds[1], &elapsed, sizeof(elapsed)) == sizeof(elapsed) ? 0
                                                                        : 1);
    }
    close(fds[1]);
    int64_t elapsed = 0;
    ASSERT_EQ(read(fds[0], &elapsed, sizeof(elapsed)), sizeof(elapsed));
    close(fds[0]);
    ASSERT_TRUE(ExitedWith(WaitFor(pid), 0));
    install_ns.push_back(elapsed);
  }
  std::printf(
      "seccomp default filter: %zu BPF instructions\n"
      "  Compile:                 median %.1f us (30 runs)\n"
      "  CompiledSeccompProgram:  %.3f us per cached lookup\n"
      "  Install (in a child):    median %.1f us (30 runs)\n",
      program->size(), Median(compile_ns) / 1e3, lookup_ns / 1e3,
      Median(install_ns) / 1e3);
}

}  // namespace
}  // namespace dsec::sandbox
