// Black-box tests of the sandbox: hostile programs, each met by the precise
// denial (nsjail-style), plus lifecycle, files, park, snapshot and leaks.
// Needs root, namespaces, cgroups: skips locally without them, fails in CI.
#include "sandbox/sandbox.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "common/unique_fd.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::sandbox {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

bool HostCanSandbox() { return geteuid() == 0 && CgroupsAvailable(); }

class SandboxTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!HostCanSandbox()) return;
    state_dir_ = new dsec::testing::TempDir();
    RuntimeOptions options;
    options.state_dir = state_dir_->Join("state");
    options.init_path = dsec::testing::BinDir() + "/dsec-init";
    auto runtime = Runtime::Create(options);
    if (!runtime.ok()) {
      setup_error_ = new absl::Status(runtime.status());
      return;
    }
    runtime_ = runtime->release();
  }
  static void TearDownTestSuite() {
    delete runtime_;
    runtime_ = nullptr;
    delete state_dir_;
    state_dir_ = nullptr;
  }

  void SetUp() override {
    DSEC_REQUIRE_HOST_FEATURE(HostCanSandbox(), "root with cgroups");
    ASSERT_EQ(setup_error_, nullptr) << *setup_error_;
    ASSERT_NE(runtime_, nullptr);
  }

  std::unique_ptr<Sandbox> NewSandbox(SandboxSpec spec = {}) {
    auto sb = runtime_->CreateSandbox(spec);
    EXPECT_THAT(sb, IsOk());
    return sb.ok() ? std::move(*sb) : nullptr;
  }

  static ExecResult Sh(Sandbox& sb, const std::string& script,
                       absl::Duration timeout = absl::Seconds(20)) {
    ExecRequest req;
    req.argv = {"/bin/sh", "-c", script};
    req.timeout = timeout;
    auto r = sb.Exec(req);
    EXPECT_THAT(r, IsOk());
    return r.ok() ? *r : ExecResult{};
  }

  static Runtime* runtime_;
  static dsec::testing::TempDir* state_dir_;
  static absl::Status* setup_error_;
};

Runtime* SandboxTest::runtime_ = nullptr;
dsec::testing::TempDir* SandboxTest::state_dir_ = nullptr;
absl::Status* SandboxTest::setup_error_ = nullptr;

// ---- basics ---------------------------------------------------------------

TEST_F(SandboxTest, RunsHostToolsAsRootInsideWithOwnHostname) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  ExecResult r = Sh(*sb, "id -u; hostname; python3 -c 'print(6*7)'; pwd");
  EXPECT_EQ(r.outcome, ExecOutcome::kExited) << r.stderr_data;
  EXPECT_EQ(r.exit_code, 0) << r.stderr_data;
  EXPECT_EQ(r.stdout_data, "0\nsandbox\n42\n/root\n");
}

TEST_F(SandboxTest, ReportsExitCodeStdinEnvAndCwd) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  ExecRequest req;
  req.argv = {"sh", "-c", "cat; echo \"$GREETING\" >&2; pwd; exit 3"};
  req.stdin_data = "from stdin\n";
  req.env = {"GREETING=hi"};
  req.cwd = "/tmp";
  ASSERT_OK_AND_ASSIGN(ExecResult r, sb->Exec(req));
  EXPECT_EQ(r.outcome, ExecOutcome::kExited);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.stdout_data, "from stdin\n/tmp\n");
  EXPECT_EQ(r.stderr_data, "hi\n");
  EXPECT_GT(r.wall_time, absl::ZeroDuration());
}

TEST_F(SandboxTest, MissingProgramIs127WithMessage) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  ASSERT_OK_AND_ASSIGN(ExecResult r, sb->Exec({.argv = {"no-such-tool"}}));
  EXPECT_EQ(r.outcome, ExecOutcome::kExited);
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_THAT(r.stderr_data, HasSubstr("no-such-tool"));
}

TEST_F(SandboxTest, MalformedExecRequestsAreInvalidArgument) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  EXPECT_THAT(sb->Exec({}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(sb->Exec({.argv = {std::string("a\0b", 3)}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(sb->Exec({.argv = {"true"}, .env = {"NOEQUALS"}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(sb->Exec({.argv = {"true"}, .cwd = "relative"}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(sb->Exec({.argv = {std::string(200 * 1024, 'x')}}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // The sandbox is still fine afterwards.
  EXPECT_EQ(Sh(*sb, "echo ok").stdout_data, "ok\n");
}

TEST_F(SandboxTest, BadSpecsAreInvalidArgument) {
  SandboxSpec spec;
  spec.layers = {"/does/not/exist"};
  EXPECT_THAT(runtime_->CreateSandbox(spec),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("layer")));
  spec = {};
  spec.binds = {{"/tmp", "relative", true}};
  EXPECT_THAT(runtime_->CreateSandbox(spec),
              StatusIs(absl::StatusCode::kInvalidArgument));
  spec = {};
  spec.seccomp.extra_deny = {"not_a_syscall"};
  EXPECT_THAT(runtime_->CreateSandbox(spec),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(SandboxTest, FilesAndBackgroundProcessesSurviveBetweenExecs) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  // A daemon that keeps our stdout open must not hold the exec open.
  ExecResult r = Sh(*sb, "echo state > /root/f; sleep 1000 & echo started");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.stdout_data, "started\n");
  EXPECT_LT(r.wall_time, absl::Seconds(5));
  r = Sh(*sb, "cat /root/f; pgrep -x sleep >/dev/null && echo alive");
  EXPECT_EQ(r.stdout_data, "state\nalive\n");
}

TEST_F(SandboxTest, ManyConcurrentExecsInOneSandbox) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      ExecRequest req;
      req.argv = {"sh", "-c", absl::StrCat("sleep 0.2; echo ", i)};
      auto r = sb->Exec(req);
      if (r.ok() && r->stdout_data == absl::StrCat(i, "\n")) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 8);
}

// ---- hostile programs -----------------------------------------------------

TEST_F(SandboxTest, ForkBombHitsPidsLimit) {
  SandboxSpec spec;
  spec.limits.pids = 32;
  auto sb = NewSandbox(spec);
  ASSERT_NE(sb, nullptr);
  ExecResult r =
      Sh(*sb, "bomb() { bomb | bomb & }; bomb; sleep 2", absl::Seconds(5));
  EXPECT_TRUE(r.pids_limit_hit);
  // The sandbox (and the host) still work once the bomb is gone.
  ASSERT_THAT(sb->Signal(-1, SIGKILL), IsOk());
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(Sh(*sb, "echo alive").stdout_data, "alive\n");
}

TEST_F(SandboxTest, MemoryBombIsReportedAsOom) {
  SandboxSpec spec;
  spec.limits.memory_bytes = 64 << 20;
  auto sb = NewSandbox(spec);
  ASSERT_NE(sb, nullptr);
  ExecResult r =
      Sh(*sb, "python3 -c 'a=[]\nwhile True: a.append(bytearray(1<<20))'");
  EXPECT_EQ(r.outcome, ExecOutcome::kOomKilled)
      << ExecOutcomeName(r.outcome) << " " << r.stderr_data;
  EXPECT_GT(r.peak_memory_bytes, 32 << 20);
}

TEST_F(SandboxTest, PeakMemoryIsPerExec) {
  SandboxSpec spec;
  spec.limits.memory_bytes = 512 << 20;
  auto sb = NewSandbox(spec);
  ASSERT_NE(sb, nullptr);
  // The first exec of a sandbox (its slot, and on cgroup v1 its memory
  // cgroup, are made for it) touches 64 MiB.
  ExecResult big =
      Sh(*sb,
         "python3 -c 'b = bytearray(64 << 20); b[::4096] = b\"x\" * "
         "len(b[::4096])'");
  EXPECT_EQ(big.outcome, ExecOutcome::kExited) << big.stderr_data;
  EXPECT_EQ(big.exit_code, 0) << big.stderr_data;
  EXPECT_GE(big.peak_memory_bytes, 60 << 20);
  EXPECT_LT(big.peak_memory_bytes, 256 << 20);
  // A small exec afterwards reports its own peak, not the sandbox's.
  ExecResult small = Sh(*sb, "true");
  EXPECT_GT(small.peak_memory_bytes, 0);
  EXPECT_LT(small.peak_memory_bytes, 32 << 20);
}

TEST_F(SandboxTest, FirstExecOfFreshSandboxTimesOutAndKillsDaemons) {
  // Nothing ran in the sandbox before: the exec slot is made for this exec.
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  ExecResult r = Sh(*sb,
                    "setsid sleep 300 & setsid sh -c 'sleep 300 &'; "
                    "sleep 300",
                    absl::Milliseconds(500));
  EXPECT_EQ(r.outcome, ExecOutcome::kTimedOut);
  EXPECT_LT(r.wall_time, absl::Seconds(5));
  ExecResult ps = Sh(*sb,
                     "for p in /proc/[0-9]*; do [ $p = /proc/1 ] || "
                     "[ $p = /proc/$$ ] || echo $p; done");
  EXPECT_EQ(ps.stdout_data, "") << "processes left after timeout";
}

TEST_F(SandboxTest, CpuSpinTimesOutAndWholeTreeIsKilled) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  // A double-forked, setsid'd daemon plus a foreground spinner.
  ExecResult r = Sh(*sb,
                    "setsid sh -c 'sh -c \"while :; do :; done\" &' ; "
                    "while :; do :; done",
                    absl::Milliseconds(500));
  EXPECT_EQ(r.outcome, ExecOutcome::kTimedOut);
  EXPECT_LT(r.wall_time, absl::Seconds(5));
  // Only init (pid 1) and the checking shell itself are left; the loop is a
  // shell builtin, so it forks nothing that could race with the listing.
  ExecResult ps =
      Sh(*sb,
         "for p in /proc/[0-9]*; do [ $p = /proc/1 ] || "
         "[ $p = /proc/$$ ] || echo $p $(cat $p/cmdline | tr '\\0' ' '); done");
  EXPECT_EQ(ps.stdout_data, "") << "processes left after timeout";
}

TEST_F(SandboxTest, CancelledExecKillsItsTree) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  const absl::Time cancel_at = absl::Now() + absl::Milliseconds(300);
  ExecRequest req;
  req.argv = {"/bin/sh", "-c", "setsid sleep 300 & sleep 300"};
  req.cancelled = [&] { return absl::Now() >= cancel_at; };
  auto r = sb->Exec(req);
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(r->cancelled);
  EXPECT_EQ(r->outcome, ExecOutcome::kSignaled);
  EXPECT_LT(r->wall_time, absl::Seconds(10));
  ExecResult ps = Sh(*sb,
                     "for p in /proc/[0-9]*; do [ $p = /proc/1 ] || "
                     "[ $p = /proc/$$ ] || echo $p; done");
  EXPECT_EQ(ps.stdout_data, "") << "processes left after cancel";
}

TEST_F(SandboxTest, CpuTimeLimitIsReportedAsSuch) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  ExecRequest req;
  req.argv = {"sh", "-c", "while :; do :; done"};
  req.cpu_time_limit = absl::Seconds(1);
  req.timeout = absl::Seconds(20);
  ASSERT_OK_AND_ASSIGN(ExecResult r, sb->Exec(req));
  EXPECT_EQ(r.outcome, ExecOutcome::kCpuLimit) << ExecOutcomeName(r.outcome);
}

TEST_F(SandboxTest, OutputFloodIsCappedAndFlagged) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  ExecRequest req;
  req.argv = {"sh", "-c", "head -c 5000000 /dev/zero; echo err >&2"};
  req.max_stdout_bytes = 1000;
  ASSERT_OK_AND_ASSIGN(ExecResult r, sb->Exec(req));
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.stdout_data.size(), 1000u);
  EXPECT_TRUE(r.stdout_truncated);
  EXPECT_EQ(r.stdout_total_bytes, 5000000);
  EXPECT_FALSE(r.stderr_truncated);
  EXPECT_EQ(r.stderr_data, "err\n");
}

TEST_F(SandboxTest, DiskFillStopsAtWritableLayerCap) {
  SandboxSpec spec;
  spec.disk_bytes = 16 << 20;
  auto sb = NewSandbox(spec);
  ASSERT_NE(sb, nullptr);
  ExecResult r = Sh(*sb,
                    "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1; "
                    "du -m /tmp/fill | cut -f1");
  EXPECT_THAT(r.stdout_data, HasSubstr("No space left on device"));
  int mb = 0;
  std::vector<std::string> lines =
      absl::StrSplit(r.stdout_data, '\n', absl::SkipEmpty());
  ASSERT_FALSE(lines.empty());
  ASSERT_TRUE(absl::SimpleAtoi(lines.back(), &mb));
  EXPECT_LE(mb, 16);
}

TEST_F(SandboxTest, DevShmIsWritablePrivateAndCappedByDisk) {
  SandboxSpec spec;
  spec.disk_bytes = 8 << 20;
  auto a = NewSandbox(spec);
  auto b = NewSandbox(spec);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ExecResult w = Sh(*a,
                    "stat -c %a /dev/shm && echo hi > /dev/shm/x && "
                    "python3 -c 'import mmap,os; "
                    "f=os.open(\"/dev/shm/y\", os.O_CREAT|os.O_RDWR); "
                    "os.ftruncate(f, 4096); m=mmap.mmap(f, 4096); "
                    "m[:2]=b\"ok\"; print(m[:2].decode())'");
  EXPECT_EQ(w.stdout_data, "1777\nok\n") << w.stderr_data;
  EXPECT_EQ(Sh(*b, "ls -A /dev/shm").stdout_data, "");
  // Shared memory comes out of the writable layer's cap.
  ExecResult fill =
      Sh(*a, "dd if=/dev/zero of=/dev/shm/big bs=1M count=32 2>&1; echo $?");
  EXPECT_THAT(fill.stdout_data, HasSubstr("No space left on device"));
}

TEST_F(SandboxTest, HostDirectoriesAreReadOnly) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  ExecResult r =
      Sh(*sb, "touch /usr/evil 2>&1; echo x > /usr/bin/python3 2>&1");
  EXPECT_THAT(r.stdout_data, HasSubstr("Read-only file system"));
  struct stat st;
  EXPECT_NE(stat("/usr/evil", &st), 0);
}

TEST_F(SandboxTest, HostOnlyFilesAreInvisible) {
  dsec::testing::TempDir secret_dir;
  std::string secret = secret_dir.Join("secret");
  std::ofstream(secret) << "host secret";
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  ExecResult r =
      Sh(*sb, absl::StrCat("cat ", secret,
                           " 2>&1; cat /etc/shadow 2>&1;"
                           " ls /root /home; test -e /run/dsec && echo leak"));
  EXPECT_THAT(r.stdout_data, Not(HasSubstr("host secret")));
  EXPECT_THAT(r.stdout_data, HasSubstr("No such file"));
  EXPECT_THAT(r.stdout_data, Not(HasSubstr("leak")));
}

TEST_F(SandboxTest, NetworkHasOnlyLoopbackAndHostListenerIsUnreachable) {
  UniqueFd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(
      bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)),
      0);
  ASSERT_EQ(listen(listener.get(), 4), 0);
  socklen_t len = sizeof(addr);
  getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);

  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  ExecResult r = Sh(
      *sb, absl::StrCat("cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' '; "
                        "python3 -c 'import socket\ntry:\n "
                        "socket.create_connection((\"127.0.0.1\",",
                        port,
                        "),timeout=2); print(\"connected\")\nexcept OSError as "
                        "e: print(\"refused\")'"));
  EXPECT_EQ(r.stdout_data, "lo\nrefused\n") << r.stderr_data;
  // Loopback inside works for the sandbox's own servers.
  r = Sh(*sb,
         "python3 -c 'import socket\ns=socket.socket(); "
         "s.bind((\"127.0.0.1\",0)); "
         "s.listen(); c=socket.create_connection(s.getsockname()); "
         "print(\"ok\")'");
  EXPECT_EQ(r.stdout_data, "ok\n") << r.stderr_data;
}

TEST_F(SandboxTest, MountPtraceUnshareAreDenied) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  ExecResult r =
      Sh(*sb,
         "mount -t tmpfs none /mnt 2>/dev/null && echo mounted; "
         "unshare -U true 2>/dev/null && echo unshared; "
         "unshare -n true 2>/dev/null && echo netns; "
         "python3 -c 'import ctypes,os\nlibc=ctypes.CDLL(None,use_errno=True)\n"
         "r=libc.ptrace(0,0,0,0)\nprint(\"ptrace\",r,os.strerror(ctypes.get_"
         "errno()))'");
  EXPECT_EQ(r.stdout_data, "ptrace -1 Operation not permitted\n")
      << r.stderr_data;
}

TEST_F(SandboxTest, SeccompKillModeReportsViolation) {
  SandboxSpec spec;
  spec.seccomp.action = SeccompAction::kKill;
  auto sb = NewSandbox(spec);
  ASSERT_NE(sb, nullptr);
  ExecRequest req;
  req.argv = {"python3", "-c",
              "import ctypes\nctypes.CDLL(None).syscall(165, 0, 0, 0, 0, 0)"};
  ASSERT_OK_AND_ASSIGN(ExecResult r, sb->Exec(req));
  EXPECT_EQ(r.outcome, ExecOutcome::kSeccompKilled)
      << ExecOutcomeName(r.outcome);
  EXPECT_EQ(r.signal, SIGSYS);
}

TEST_F(SandboxTest, KillAllInsideKillsOnlyTheSandbox) {
  auto other = NewSandbox();
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  ASSERT_NE(other, nullptr);
  Sh(*other, "sleep 1000 &");
  // kill(-1) reaches every process the shell may signal except itself and
  // init: the sandbox's other processes die, nothing outside does.
  ExecResult r = Sh(*sb,
                    "sleep 1000 & kill -9 -1; sleep 0.2; "
                    "pgrep -x sleep || echo sleep-gone");
  EXPECT_EQ(r.stdout_data, "sleep-gone\n");
  EXPECT_EQ(Sh(*sb, "echo still usable").stdout_data, "still usable\n");
  EXPECT_EQ(Sh(*other, "pgrep -x sleep >/dev/null && echo ok").stdout_data,
            "ok\n");
}

TEST_F(SandboxTest, SetuidBinaryGivesNoElevation) {
  // A layer with a setuid copy of `cat` owned by uid 1000 inside and one
  // owned by host root: neither changes ids or grants capabilities.
  dsec::testing::TempDir layer;
  ASSERT_EQ(mkdir(layer.Join("opt").c_str(), 0755), 0);
  for (const auto& [name, owner] : std::vector<std::pair<std::string, uid_t>>{
           {"suid-user", runtime_->options().uid_base + 1000},
           {"suid-root", 0}}) {
    std::string dst = layer.Join("opt/" + name);
    std::ifstream in("/usr/bin/cat", std::ios::binary);
    std::ofstream(dst, std::ios::binary) << in.rdbuf();
    ASSERT_EQ(chown(dst.c_str(), owner, owner), 0);
    ASSERT_EQ(chmod(dst.c_str(), 04755), 0);
  }
  SandboxSpec spec;
  spec.layers = {layer.path()};
  auto sb = NewSandbox(spec);
  ASSERT_NE(sb, nullptr);
  ExecResult r =
      Sh(*sb,
         "/opt/suid-user /proc/self/status | grep -E '^(Uid|CapEff|CapPrm)'; "
         "/opt/suid-root /proc/self/status | grep -E '^(Uid|CapEff)'");
  EXPECT_EQ(
      r.stdout_data,
      "Uid:\t0\t0\t0\t0\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n"
      "Uid:\t0\t0\t0\t0\nCapEff:\t0000000000000000\n")
      << r.stderr_data;
}

TEST_F(SandboxTest, ProcShowsOnlySandboxProcesses) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  ExecResult r =
      Sh(*sb, "ls /proc | grep '^[0-9]' | sort -n | head -1; cat /proc/1/comm");
  EXPECT_EQ(r.stdout_data, "1\ndsec-init\n");
  // Exactly init and this shell (the loop forks nothing).
  r = Sh(*sb, "n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo $n");
  EXPECT_EQ(r.stdout_data, "2\n");
}

TEST_F(SandboxTest, ZombiesAreReaped) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  // 20 orphans whose parent exits at once: they re-parent to init.
  Sh(*sb, "for i in $(seq 20); do (sh -c 'sleep 0.1' &) ; done");
  absl::SleepFor(absl::Milliseconds(600));
  ExecResult r =
      Sh(*sb, "cat /proc/[0-9]*/stat 2>/dev/null | awk '$3==\"Z\"' | wc -l");
  EXPECT_EQ(r.stdout_data, "0\n");
}

TEST_F(SandboxTest, FileApiCannotEscapeThroughPlantedSymlinks) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  Sh(*sb,
     "ln -s /etc /root/escape; ln -s / /root/hostroot; "
     "ln -s ../../../../../../tmp /root/up");
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafeRoot> files, sb->OpenFiles());
  // Reads resolve inside the sandbox: its generated passwd, not the host's.
  ASSERT_OK_AND_ASSIGN(std::string passwd,
                       files->ReadFile("/root/escape/passwd"));
  EXPECT_THAT(passwd, HasSubstr("root:x:0:0"));
  std::string host_passwd;
  std::ifstream("/etc/passwd") >> host_passwd;
  std::ifstream host_in("/etc/passwd");
  std::string host_all((std::istreambuf_iterator<char>(host_in)), {});
  EXPECT_NE(passwd, host_all);
  // Writes through links land inside the sandbox.
  dsec::testing::TempDir outside;
  std::string marker = absl::StrCat("dsec-escape-", getpid());
  EXPECT_THAT(
      files->WriteFile(absl::StrCat("/root/hostroot", outside.path(), "/x"),
                       "evil", {.create_parents = true}),
      IsOk());
  struct stat st;
  EXPECT_NE(stat(outside.Join("x").c_str(), &st), 0)
      << "wrote outside the sandbox";
  EXPECT_THAT(files->WriteFile("/root/up/" + marker, "evil"), IsOk());
  EXPECT_NE(stat(("/tmp/" + marker).c_str(), &st), 0) << "wrote to host /tmp";
  EXPECT_EQ(Sh(*sb, "cat /tmp/" + marker).stdout_data, "evil");
}

TEST_F(SandboxTest, ParkFreezesAndUnparkResumes) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  // Append-only progress file: its size only grows while the loop runs.
  Sh(*sb, "sh -c 'while :; do echo x >> /tmp/n; done' >/dev/null 2>&1 &");
  absl::SleepFor(absl::Milliseconds(200));
  // Opened before parking: a frozen init cannot hand out its root fd.
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafeRoot> files, sb->OpenFiles());
  ASSERT_THAT(sb->Park(), IsOk());
  EXPECT_TRUE(sb->parked());
  EXPECT_THAT(
      sb->Exec({.argv = {"true"}}),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("parked")));
  EXPECT_THAT(sb->OpenFiles(), StatusIs(absl::StatusCode::kFailedPrecondition,
                                        HasSubstr("parked")));
  auto a = files->Stat("/tmp/n");
  absl::SleepFor(absl::Milliseconds(300));
  auto b = files->Stat("/tmp/n");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_GT(a->size, 0);
  EXPECT_EQ(a->size, b->size) << "loop advanced while parked";
  ASSERT_THAT(sb->Unpark(), IsOk());
  absl::SleepFor(absl::Milliseconds(300));
  auto c = files->Stat("/tmp/n");
  ASSERT_TRUE(c.ok());
  EXPECT_GT(c->size, b->size) << "loop did not resume";
}

TEST_F(SandboxTest, SnapshotAndForkShareStateButNotChanges) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  Sh(*sb,
     "echo prefix > /root/state; mkdir -p /work/d; echo x > /work/d/f; rm -f "
     "/etc/hostname");
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> layers, sb->Snapshot());
  ASSERT_EQ(layers.size(), 1u);
  // The original keeps running and can change without affecting forks.
  Sh(*sb, "echo changed > /root/state");
  std::vector<std::unique_ptr<Sandbox>> forks;
  for (int i = 0; i < 3; ++i) {
    SandboxSpec spec;
    spec.layers = layers;
    forks.push_back(NewSandbox(spec));
    ASSERT_NE(forks.back(), nullptr);
  }
  for (int i = 0; i < 3; ++i) {
    ExecResult r = Sh(
        *forks[i],
        absl::StrCat(
            "cat /root/state /work/d/f; test -e /etc/hostname || echo deleted; "
            "echo fork",
            i, " > /root/state"));
    EXPECT_EQ(r.stdout_data, "prefix\nx\ndeleted\n") << r.stderr_data;
  }
  EXPECT_EQ(Sh(*forks[0], "cat /root/state").stdout_data, "fork0\n");
  EXPECT_EQ(Sh(*sb, "cat /root/state").stdout_data, "changed\n");
}

TEST_F(SandboxTest, FiftySandboxesAtOnce) {
  std::vector<std::unique_ptr<Sandbox>> sbs(50);
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  absl::Mutex mu;
  std::vector<std::string> errors;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < 50; i += 2) {
        auto sb = runtime_->CreateSandbox({});
        if (!sb.ok()) {
          absl::MutexLock lock(&mu);
          errors.push_back(sb.status().ToString());
          continue;
        }
        sbs[i] = std::move(*sb);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_THAT(errors, ::testing::IsEmpty());
  threads.clear();
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < 50; i += 4) {
        if (sbs[i] == nullptr) continue;
        auto r = sbs[i]->Exec({.argv = {"sh", "-c", absl::StrCat("echo ", i)}});
        if (r.ok() && r->stdout_data == absl::StrCat(i, "\n")) {
          ++ok;
        } else {
          absl::MutexLock lock(&mu);
          errors.push_back(r.ok()
                               ? absl::StrCat(ExecOutcomeName(r->outcome), " ",
                                              r->infra_error, r->stderr_data)
                               : r.status().ToString());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 50);
  EXPECT_THAT(errors, ::testing::IsEmpty());
}

TEST_F(SandboxTest, DestroyKillsEverythingAndIsIdempotent) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  Sh(*sb, "setsid sh -c 'sleep 1000 &' ; sleep 1000 > /dev/null 2>&1 &");
  pid_t init = sb->init_pid();
  EXPECT_THAT(sb->Destroy(), IsOk());
  EXPECT_THAT(sb->Destroy(), IsOk());
  EXPECT_TRUE(sb->dead());
  EXPECT_NE(kill(init, 0), 0);
  EXPECT_THAT(sb->Exec({.argv = {"true"}}),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

// ---- leaks ----------------------------------------------------------------

int CountDir(const std::string& path) {
  int n = 0;
  if (DIR* d = opendir(path.c_str())) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

// Our open fds once the count holds still for 100 ms: the netns pool's
// thread holds a few while it makes a namespace (it refills after every
// launch).
int SettledFdCount() {
  int last = CountDir("/proc/self/fd"), same = 0;
  for (int i = 0; i < 500 && same < 10; ++i) {
    absl::SleepFor(absl::Milliseconds(10));
    const int n = CountDir("/proc/self/fd");
    same = n == last ? same + 1 : 0;
    last = n;
  }
  return last;
}

// Our child processes (sandbox inits), live or zombie.
int CountChildren() {
  int n = 0;
  const std::string me = absl::StrCat(getpid());
  if (DIR* d = opendir("/proc")) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
      std::ifstream in(absl::StrCat("/proc/", e->d_name, "/stat"));
      std::string line;
      std::getline(in, line);
      size_t close = line.rfind(')');
      if (close == std::string::npos) continue;
      std::vector<std::string> f = absl::StrSplit(line.substr(close + 2), ' ');
      if (f.size() > 1 && f[1] == me) ++n;
    }
    closedir(d);
  }
  return n;
}

// An idle sandbox holds one host fd, its control socket to init: its cgroup
// files are opened per access and its root and writable-layer fds live in
// init (fetched per file operation). A process can then hold ~RLIMIT_NOFILE
// idle sandboxes, and clone() has a short fd table to copy. The slack covers
// the network-namespace pool refilling in the background.
TEST_F(SandboxTest, IdleSandboxesHoldAtMostOneFdEach) {
  constexpr int kSandboxes = 20;
  const int slack = runtime_->options().netns_pool_target + 4;
  auto warm = NewSandbox();  // pools and lazily created state settle
  ASSERT_NE(warm, nullptr);
  const int before = CountDir("/proc/self/fd");
  std::vector<std::unique_ptr<Sandbox>> idle;
  for (int i = 0; i < kSandboxes; ++i) {
    idle.push_back(NewSandbox());
    ASSERT_NE(idle.back(), nullptr);
    EXPECT_EQ(Sh(*idle.back(), "echo hi > /tmp/x").exit_code, 0);
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafeRoot> files,
                         idle.back()->OpenFiles());
    ASSERT_OK_AND_ASSIGN(std::string text, files->ReadFile("/tmp/x"));
    EXPECT_EQ(text, "hi\n");
  }
  const int after = CountDir("/proc/self/fd");
  EXPECT_LE(after - before, kSandboxes + slack)
      << before << " fds before, " << after << " with " << kSandboxes
      << " idle sandboxes";
}

// dsec-init holds the sandbox's only fds of its root and writable layer
// (kDiskFd, kRootFd). It is not dumpable, so code in the sandbox (same uid,
// no capabilities) cannot reach them, or init's root, through /proc/1.
TEST_F(SandboxTest, InitLayerFdsAreUnreachableFromInside) {
  auto sb = NewSandbox();
  ASSERT_NE(sb, nullptr);
  char target[PATH_MAX];
  for (int fd : {4, 5}) {  // init_protocol::kDiskFd, kRootFd
    EXPECT_GT(
        readlink(absl::StrCat("/proc/", sb->init_pid(), "/fd/", fd).c_str(),
                 target, sizeof(target)),
        0)
        << "init does not hold fd " << fd;
  }
  // The fd numbers may be listed (the directory belongs to the sandbox's
  // root user); following or reading the links needs ptrace access.
  ExecResult r = Sh(*sb,
                    "for p in /proc/1/fd/4/ /proc/1/fd/5/ /proc/1/root/; do "
                    "ls $p >/dev/null 2>&1 && echo reached $p; done; "
                    "readlink /proc/1/fd/4 >/dev/null 2>&1 && echo readlink; "
                    "cat /proc/1/fd/4/upper >/dev/null 2>&1 && echo opened; "
                    "grep -c '^Name:.dsec-init' /proc/1/status");
  EXPECT_EQ(r.stdout_data, "1\n") << r.stderr_data;
  EXPECT_THAT(Sh(*sb, "ls /proc/1/fd/4/").stderr_data,
              HasSubstr("Permission denied"));
}

TEST_F(SandboxTest, ThousandCyclesLeaveNothingBehind) {
  const int cycles =
      getenv("DSEC_LEAK_CYCLES") ? atoi(getenv("DSEC_LEAK_CYCLES")) : 1000;
  // Warm up pools so steady-state counts are comparable.
  for (int i = 0; i < 3; ++i) {
    auto sb = NewSandbox();
    ASSERT_NE(sb, nullptr);
  }
  // Host mounts the runtime makes live under its state dir; count only
  // those (other tests may run beside this one and mount their own).
  const std::string state = state_dir_->path();
  auto our_mounts = [&] {
    std::ifstream in("/proc/self/mountinfo");
    std::string line;
    int n = 0;
    while (std::getline(in, line)) n += line.find(state) != std::string::npos;
    return n;
  };
  const int mounts = our_mounts();
  EXPECT_GT(mounts, 0) << "the runtime's host mounts are no longer under "
                       << state << "; update this count";
  const int fds = SettledFdCount();
  const int children = CountChildren();
  const int pooled = runtime_->cgroups().PooledForTesting();
  for (int i = 0; i < cycles; ++i) {
    auto sb = runtime_->CreateSandbox({});
    ASSERT_THAT(sb, IsOk()) << "cycle " << i;
    auto r = (*sb)->Exec({.argv = {"sh", "-c", "echo hi; sleep 1000 &"}});
    ASSERT_THAT(r, IsOk());
    ASSERT_EQ(r->stdout_data, "hi\n");
  }
  EXPECT_EQ(our_mounts(), mounts);
  EXPECT_EQ(SettledFdCount(), fds);
  EXPECT_EQ(CountChildren(), children);
  EXPECT_EQ(runtime_->cgroups().PooledForTesting(), pooled);
}

}  // namespace
}  // namespace dsec::sandbox
