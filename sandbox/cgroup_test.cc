#include "sandbox/cgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "common/unique_fd.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sandbox/cgroup_internal.h"
#include "sandbox/cgroup_parse.h"

namespace dsec::sandbox {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace cgroup_internal;  // NOLINT: the parsers under test

constexpr int64_t kMiB = 1 << 20;

// ---- parsing, with fixtures from real hosts
// -----------------------------------

// This host: v1 with cpu and cpuacct mounted apart, memory nested.
constexpr absl::string_view kMountInfoV1 =
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup "
    "rw,cpuacct\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup "
    "rw,memory\n"
    "37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup "
    "rw,freezer\n"
    "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
    "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup "
    "rw,name=systemd\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

constexpr absl::string_view kProcCgroupV1 =
    "9:name=systemd:/\n8:pids:/\n6:freezer:/\n"
    "4:memory:/process_api/fb50\n2:cpuacct:/\n1:cpu:/\n0::/\n";

// A systemd v1 host: cpu,cpuacct co-mounted (with optional fields).
constexpr absl::string_view kMountInfoCoMounted =
    "25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup "
    "cgroup rw,cpu,cpuacct\n"
    "26 24 0:23 / /sys/fs/cgroup/memory rw,nosuid shared:10 - cgroup cgroup "
    "rw,memory\n"
    "27 24 0:24 / /sys/fs/cgroup/pids rw,nosuid shared:11 - cgroup cgroup "
    "rw,pids\n"
    "28 24 0:25 / /sys/fs/cgroup/freezer rw,nosuid shared:12 - cgroup cgroup "
    "rw,freezer\n";

constexpr absl::string_view kProcCgroupCoMounted =
    "5:freezer:/\n4:pids:/system.slice/agent.service\n"
    "3:memory:/system.slice/agent.service\n"
    "2:cpu,cpuacct:/system.slice/agent.service\n";

// A pure v2 host.
constexpr absl::string_view kMountInfoV2 =
    "22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
    "30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - "
    "cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";

TEST(CgroupParse, MountInfoFields) {
  ASSERT_OK_AND_ASSIGN(auto mounts, ParseMountInfo(kMountInfoCoMounted));
  ASSERT_EQ(mounts.size(), 4u);
  EXPECT_EQ(mounts[0].root, "/");
  EXPECT_EQ(mounts[0].mount_point, "/sys/fs/cgroup/cpu,cpuacct");
  EXPECT_EQ(mounts[0].fs_type, "cgroup");
  EXPECT_THAT(mounts[0].super_options, ElementsAre("rw", "cpu", "cpuacct"));
}

TEST(CgroupParse, MountInfoDecodesOctalEscapes) {
  ASSERT_OK_AND_ASSIGN(
      auto mounts,
      ParseMountInfo("40 1 0:5 /a\\040b /mnt/x\\134y\\011z rw - cgroup2 none "
                     "rw\n"));
  ASSERT_EQ(mounts.size(), 1u);
  EXPECT_EQ(mounts[0].root, "/a b");
  EXPECT_EQ(mounts[0].mount_point, "/mnt/x\\y\tz");
}

TEST(CgroupParse, MountInfoRejectsTruncatedLine) {
  EXPECT_THAT(
      ParseMountInfo("31 23 0:28 / /sys/fs/cgroup rw\n"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("malformed")));
}

TEST(CgroupParse, ProcCgroupLines) {
  ASSERT_OK_AND_ASSIGN(
      auto cgroups,
      ParseProcCgroup("2:cpu,cpuacct:/a:b\n1:name=systemd:/\n0::/x/y\n"));
  ASSERT_EQ(cgroups.size(), 3u);
  EXPECT_EQ(cgroups[0].hierarchy_id, 2);
  EXPECT_THAT(cgroups[0].controllers, ElementsAre("cpu", "cpuacct"));
  EXPECT_EQ(cgroups[0].path, "/a:b");
  EXPECT_EQ(cgroups[2].hierarchy_id, 0);
  EXPECT_TRUE(cgroups[2].controllers.empty());
  EXPECT_EQ(cgroups[2].path, "/x/y");
  EXPECT_FALSE(ParseProcCgroup("garbage\n").ok());
}

const std::vector<std::string> kWantedV1 = {"freezer", "memory", "pids", "cpu",
                                            "cpuacct"};

TEST(CgroupParse, PlanV1SeparateMountsNestsUnderOwnCgroup) {
  ASSERT_OK_AND_ASSIGN(auto mounts, ParseMountInfo(kMountInfoV1));
  ASSERT_OK_AND_ASSIGN(auto cgroups, ParseProcCgroup(kProcCgroupV1));
  ASSERT_OK_AND_ASSIGN(auto plans, PlanV1(mounts, cgroups, kWantedV1, ""));
  ASSERT_EQ(plans.size(), 5u);
  EXPECT_EQ(plans[0].parent_path, "/sys/fs/cgroup/freezer");
  EXPECT_EQ(plans[1].parent_path, "/sys/fs/cgroup/memory/process_api/fb50");
  EXPECT_EQ(plans[2].parent_path, "/sys/fs/cgroup/pids");
  EXPECT_EQ(plans[3].parent_path, "/sys/fs/cgroup/cpu");
  EXPECT_EQ(plans[4].parent_path, "/sys/fs/cgroup/cpuacct");
}

TEST(CgroupParse, PlanV1MergesCoMountedControllers) {
  ASSERT_OK_AND_ASSIGN(auto mounts, ParseMountInfo(kMountInfoCoMounted));
  ASSERT_OK_AND_ASSIGN(auto cgroups, ParseProcCgroup(kProcCgroupCoMounted));
  ASSERT_OK_AND_ASSIGN(auto plans, PlanV1(mounts, cgroups, kWantedV1, ""));
  ASSERT_EQ(plans.size(), 4u);
  EXPECT_EQ(plans[0].parent_path, "/sys/fs/cgroup/freezer");
  EXPECT_EQ(plans[3].parent_path,
            "/sys/fs/cgroup/cpu,cpuacct/system.slice/agent.service");
  EXPECT_THAT(plans[3].controllers, ElementsAre("cpu", "cpuacct"));
}

TEST(CgroupParse, PlanV1ParentOverride) {
  ASSERT_OK_AND_ASSIGN(auto mounts, ParseMountInfo(kMountInfoCoMounted));
  ASSERT_OK_AND_ASSIGN(auto cgroups, ParseProcCgroup(kProcCgroupCoMounted));
  ASSERT_OK_AND_ASSIGN(auto plans,
                       PlanV1(mounts, cgroups, kWantedV1, "/dsec.slice"));
  EXPECT_EQ(plans[1].parent_path, "/sys/fs/cgroup/memory/dsec.slice");
  EXPECT_FALSE(PlanV1(mounts, cgroups, kWantedV1, "relative").ok());
  EXPECT_FALSE(PlanV1(mounts, cgroups, kWantedV1, "/a/../b").ok());
}

TEST(CgroupParse, PlanV1NamesMissingHierarchy) {
  ASSERT_OK_AND_ASSIGN(auto mounts, ParseMountInfo(kMountInfoCoMounted));
  ASSERT_OK_AND_ASSIGN(auto cgroups, ParseProcCgroup(kProcCgroupCoMounted));
  std::vector<std::string> wanted = {"memory", "blkio"};
  EXPECT_THAT(PlanV1(mounts, cgroups, wanted, ""),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("cgroup v1 'blkio' hierarchy not mounted")));
}

TEST(CgroupParse, PlanV1ContainerMountRoot) {
  // Docker on v1 without a cgroup namespace: the mount's root is the
  // container's own cgroup, which /proc/self/cgroup names in full.
  ASSERT_OK_AND_ASSIGN(
      auto mounts,
      ParseMountInfo("50 40 0:32 /docker/abc /sys/fs/cgroup/memory ro - "
                     "cgroup cgroup rw,memory\n"
                     "51 40 0:33 /other /mnt/memory rw - cgroup cgroup "
                     "rw,memory\n"));
  ASSERT_OK_AND_ASSIGN(auto cgroups,
                       ParseProcCgroup("4:memory:/docker/abc/sub\n"));
  std::vector<std::string> wanted = {"memory"};
  ASSERT_OK_AND_ASSIGN(auto plans, PlanV1(mounts, cgroups, wanted, ""));
  EXPECT_EQ(plans[0].parent_path, "/sys/fs/cgroup/memory/sub");
  ASSERT_OK_AND_ASSIGN(auto outside,
                       ParseProcCgroup("4:memory:/docker/abcdef\n"));
  EXPECT_THAT(PlanV1(mounts, outside, wanted, ""),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("not visible")));
}

TEST(CgroupParse, PlanV2PureHostAndHybrid) {
  ASSERT_OK_AND_ASSIGN(auto mounts, ParseMountInfo(kMountInfoV2));
  ASSERT_OK_AND_ASSIGN(
      auto cgroups, ParseProcCgroup("0::/system.slice/dsec-agent.service\n"));
  ASSERT_OK_AND_ASSIGN(auto plan, PlanV2(mounts, cgroups, ""));
  EXPECT_EQ(plan.parent_path, "/sys/fs/cgroup/system.slice/dsec-agent.service");
  ASSERT_OK_AND_ASSIGN(auto root_plan,
                       PlanV2(mounts, *ParseProcCgroup("0::/\n"), ""));
  EXPECT_EQ(root_plan.parent_path, "/sys/fs/cgroup");

  ASSERT_OK_AND_ASSIGN(auto hybrid, ParseMountInfo(kMountInfoV1));
  ASSERT_OK_AND_ASSIGN(auto hybrid_cgroups, ParseProcCgroup(kProcCgroupV1));
  ASSERT_OK_AND_ASSIGN(auto unified, PlanV2(hybrid, hybrid_cgroups, ""));
  EXPECT_EQ(unified.parent_path, "/sys/fs/cgroup/unified");

  ASSERT_OK_AND_ASSIGN(auto v1_only, ParseMountInfo(kMountInfoCoMounted));
  EXPECT_THAT(PlanV2(v1_only, cgroups, ""),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("v2 hierarchy not mounted")));
}

TEST(CgroupParse, PlanV2CgroupNamespaceRoot) {
  // Inside a container with its own cgroup namespace the mount root and
  // the process path are both relative to the namespace.
  ASSERT_OK_AND_ASSIGN(
      auto mounts, ParseMountInfo("600 500 0:26 / /sys/fs/cgroup rw - cgroup2 "
                                  "cgroup2 rw\n"));
  ASSERT_OK_AND_ASSIGN(auto cgroups, ParseProcCgroup("0::/init\n"));
  ASSERT_OK_AND_ASSIGN(auto plan, PlanV2(mounts, cgroups, ""));
  EXPECT_EQ(plan.parent_path, "/sys/fs/cgroup/init");
  ASSERT_OK_AND_ASSIGN(auto over, PlanV2(mounts, cgroups, "/dsec"));
  EXPECT_EQ(over.parent_path, "/sys/fs/cgroup/dsec");
}

TEST(CgroupParse, KeyedValues) {
  constexpr absl::string_view kOomControl =
      "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
  EXPECT_EQ(FindKeyedValue(kOomControl, "oom_kill"), 3);
  EXPECT_EQ(FindKeyedValue(kOomControl, "oom_kill_disable"), 0);
  EXPECT_EQ(FindKeyedValue(kOomControl, "oom"), absl::nullopt);

  constexpr absl::string_view kMemoryEvents =
      "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
  EXPECT_EQ(FindKeyedValue(kMemoryEvents, "oom_kill"), 2);
  EXPECT_EQ(FindKeyedValue(kMemoryEvents, "max"), 12);

  constexpr absl::string_view kCpuStat =
      "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n"
      "nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n";
  EXPECT_EQ(FindKeyedValue(kCpuStat, "usage_usec"), 123456);
  EXPECT_EQ(FindKeyedValue("max 7\n", "max"), 7);
  EXPECT_EQ(FindKeyedValue("max 7", "max"), 7);  // no trailing newline
  EXPECT_EQ(FindKeyedValue("populated 1\nfrozen 0\n", "frozen"), 0);
  EXPECT_EQ(FindKeyedValue("max x\n", "max"), absl::nullopt);
  EXPECT_EQ(FindKeyedValue("", "max"), absl::nullopt);
}

TEST(CgroupParse, CountersPidsAndTokens) {
  EXPECT_EQ(ParseCounter("4096\n"), 4096);
  EXPECT_EQ(ParseCounter("max\n"), INT64_MAX);
  EXPECT_EQ(ParseCounter("-1\n"), -1);
  EXPECT_EQ(ParseCounter("FROZEN\n"), absl::nullopt);
  EXPECT_THAT(ParsePidList("30\n10\n20\n10\n\n"), ElementsAre(10, 20, 30));
  EXPECT_TRUE(ParsePidList("").empty());
  std::vector<std::string> want = {"memory", "pids", "cpu"};
  EXPECT_TRUE(HasAllTokens("cpuset cpu io memory hugetlb pids rdma\n", want));
  EXPECT_FALSE(HasAllTokens("cpuset io memory pids\n", want));
  EXPECT_FALSE(HasAllTokens("hugetlb\n", want));
}

// ---- behaviour on this host (root)
// -----------------------------------------------

// Forks a child that joins the cgroup through `fds`, then runs `body` and
// exits with its result. Returns once the child is in the cgroup.
// `fds`: from OpenProcsFds(); closed by the caller's temporary afterwards.
pid_t SpawnJoined(const absl::StatusOr<std::vector<UniqueFd>>& fds,
                  absl::FunctionRef<int()> body) {
  if (!fds.ok()) {
    ADD_FAILURE() << "opening procs fds: " << fds.status();
    return -1;
  }
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    close(ready[0]);
    for (const UniqueFd& fd : *fds) {
      if (write(fd.get(), "0", 1) != 1) _exit(120);
    }
    char c = 1;
    if (write(ready[1], &c, 1) != 1) _exit(121);
    close(ready[1]);
    _exit(body());
  }
  close(ready[1]);
  char c;
  while (read(ready[0], &c, 1) < 0 && errno == EINTR) {
  }
  close(ready[0]);
  return pid;
}

int WaitStatus(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

// Reaps whatever children are left (orphans come to us: subreaper).
void ReapAll() {
  while (waitpid(-1, nullptr, WNOHANG) > 0) {
  }
}

int Spin() {
  volatile uint64_t i = 0;
  while (true) i = i + 1;
}

int TouchMemory(int64_t bytes) {
  void* p = mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 2;
  memset(p, 0x5a, static_cast<size_t>(bytes));
  return 0;
}

std::string Slurp(const std::string& path) {
  std::string out;
  if (FILE* f = fopen(path.c_str(), "r")) {
    char buf[256];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
    fclose(f);
  }
  return out;
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

int CountSubdirs(const std::string& path) {
  DIR* d = opendir(path.c_str());
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_type == DT_DIR && strcmp(e->d_name, ".") != 0 &&
        strcmp(e->d_name, "..") != 0) {
      ++n;
    }
  }
  closedir(d);
  return n;
}

std::string Parent(const std::string& path) {
  return path.substr(0, path.rfind('/'));
}

class CgroupTest : public ::testing::Test {
 protected:
  // Orphaned grandchildren (daemons) are re-parented to this process.
  void SetUp() override { prctl(PR_SET_CHILD_SUBREAPER, 1); }
  void TearDown() override { ReapAll(); }

  static CgroupManagerOptions Options() {
    CgroupManagerOptions o;
    o.name = absl::StrCat("dsec-test-", getpid());
    return o;
  }
};

int CountFds() {
  DIR* d = opendir("/proc/self/fd");
  int n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n - 1;  // the DIR's own fd
}

// True when the group's directory for `controller` is made by the first
// AcquireSlot: v1, outside the freezer's hierarchy.
bool IsLazy(const CgroupManager& manager, const SandboxCgroup& group,
            const char* controller) {
  return manager.version() == CgroupVersion::kV1 &&
         group.PathFor(controller) != group.PathFor("freezer");
}

TEST_F(CgroupTest, CreatesTreeInEveryHierarchy) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
  ASSERT_OK_AND_ASSIGN(auto group, manager->Acquire({}));
  if (manager->version() == CgroupVersion::kV1) {
    for (const char* c : {"memory", "pids", "cpu", "cpuacct", "freezer"}) {
      EXPECT_EQ(Exists(group->PathFor(c)), !IsLazy(*manager, *group, c)) << c;
    }
    // One per hierarchy: 5 here, 4 where cpu,cpuacct are co-mounted.
    EXPECT_GE(group->OpenInitProcsFds()->size(), 4u);
    // Slots: none until the first exec, then only where an exec's tree is
    // found, counted and timed (freezer, pids, cpuacct).
    EXPECT_FALSE(Exists(group->PathFor("freezer") + "/e0"));
    ASSERT_OK_AND_ASSIGN(ExecSlot * slot, group->AcquireSlot());
    for (const char* c : {"memory", "pids", "cpu", "cpuacct", "freezer"}) {
      EXPECT_TRUE(Exists(group->PathFor(c))) << c;
    }
    for (const char* c : {"pids", "cpuacct", "freezer"}) {
      EXPECT_TRUE(Exists(group->PathFor(c) + "/e0")) << c;
    }
    if (IsLazy(*manager, *group, "memory")) {
      EXPECT_FALSE(Exists(group->PathFor("memory") + "/e0"));
    }
    EXPECT_EQ(slot->OpenProcsFds()->size(), group->OpenInitProcsFds()->size());
  } else {
    EXPECT_TRUE(Exists(group->PathFor("memory") + "/init"));
    EXPECT_FALSE(Exists(group->PathFor("memory") + "/e0"));
    EXPECT_EQ(group->OpenInitProcsFds()->size(), 1u);
    ASSERT_OK_AND_ASSIGN(ExecSlot * slot, group->AcquireSlot());
    EXPECT_TRUE(Exists(group->PathFor("memory") + "/e0"));
    EXPECT_EQ(slot->OpenProcsFds()->size(), 1u);
  }
  EXPECT_EQ(group->PathFor("no-such-controller").empty(),
            manager->version() == CgroupVersion::kV1);
}

TEST_F(CgroupTest, MemoryLimitOomKillsAndCounts) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
  ASSERT_OK_AND_ASSIGN(auto group,
                       manager->Acquire({.memory_bytes = 32 * kMiB}));
  ASSERT_OK_AND_ASSIGN(ExecSlot * slot, group->AcquireSlot());
  pid_t pid =
      SpawnJoined(slot->OpenProcsFds(), [] { return TouchMemory(256 * kMiB); });
  int status = WaitStatus(pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit status " << status;
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  ASSERT_OK_AND_ASSIGN(CgroupStats slot_stats, slot->Stats());
  // v1 slots have no memory cgroup of their own: the group counts.
  if (manager->version() == CgroupVersion::kV2) {
    EXPECT_GE(slot_stats.oom_kills, 1);
  }
  EXPECT_LE(slot_stats.memory_peak_bytes, 33 * kMiB);
  ASSERT_OK_AND_ASSIGN(CgroupStats stats, group->Stats());
  EXPECT_GE(stats.oom_kills, 1);
  EXPECT_LE(stats.memory_peak_bytes, 33 * kMiB);
  group->ReleaseSlot(slot);
  // Counters start again from zero for the next user of the group.
  manager->Release(std::move(group));
  ASSERT_OK_AND_ASSIGN(group, manager->Acquire({}));
  ASSERT_OK_AND_ASSIGN(stats, group->Stats());
  EXPECT_EQ(stats.oom_kills, 0);
  ASSERT_OK_AND_ASSIGN(slot, group->AcquireSlot());
  ASSERT_OK_AND_ASSIGN(slot_stats, slot->Stats());
  EXPECT_EQ(slot_stats.oom_kills, 0);
}

TEST_F(CgroupTest, PidsLimitRefusesForkWithEagain) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
  ASSERT_OK_AND_ASSIGN(auto group, manager->Acquire({.pids = 4}));
  ASSERT_OK_AND_ASSIGN(ExecSlot * slot, group->AcquireSlot());
  // Exits with the errno of the first refused fork (0: none refused).
  pid_t pid = SpawnJoined(slot->OpenProcsFds(), [] {
    for (int i = 0; i < 16; ++i) {
      pid_t c = fork();
      if (c < 0) return errno;
      if (c == 0) {
        pause();
        _exit(0);
      }
    }
    return 0;
  });
  int status = WaitStatus(pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), EAGAIN);
  ASSERT_OK_AND_ASSIGN(CgroupStats slot_stats, slot->Stats());
  EXPECT_GE(slot_stats.pids_max_events, 1);
  ASSERT_OK_AND_ASSIGN(CgroupStats stats, group->Stats());
  EXPECT_GE(stats.pids_max_events, 1);
  EXPECT_GE(stats.pids_current, 1);  // the paused children
  EXPECT_OK(slot->KillAll());
  ASSERT_OK_AND_ASSIGN(int left, slot->CountProcesses());
  EXPECT_EQ(left, 0);
}

// The cgroup of `pid` in the v1 hierarchy of `controller`, as a path below
// the hierarchy's mount ("" if not found).
std::string CgroupOf(pid_t pid, const std::string& controller) {
  std::string text = Slurp(absl::StrCat("/proc/", pid, "/cgroup"));
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::vector<std::string> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (f.size() != 3) continue;
    for (absl::string_view c : absl::StrSplit(f[1], ',')) {
      if (c == controller) return f[2];
    }
  }
  return "";
}

TEST_F(CgroupTest, V1GroupIsMadeForTheFirstExecAndInitStaysOut) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
  ASSERT_OK_AND_ASSIGN(
      auto group, manager->Acquire({.memory_bytes = 32 * kMiB, .pids = 64}));
  if (!IsLazy(*manager, *group, "memory")) {
    GTEST_SKIP() << "memory is not a v1 hierarchy apart from the freezer";
  }
  const std::string mem_path = group->PathFor("memory");
  EXPECT_FALSE(Exists(mem_path));
  pid_t init = SpawnJoined(group->OpenInitProcsFds(), [] {
    pause();
    return 0;
  });
  // Init is in the group's freezer cgroup, and in the manager root in the
  // lazy hierarchies.
  EXPECT_TRUE(
      absl::EndsWith(group->PathFor("freezer"), CgroupOf(init, "freezer")));
  EXPECT_TRUE(absl::EndsWith(Parent(mem_path), CgroupOf(init, "memory")))
      << CgroupOf(init, "memory");

  ASSERT_OK_AND_ASSIGN(ExecSlot * slot, group->AcquireSlot());
  ASSERT_TRUE(Exists(mem_path));
  EXPECT_EQ(Slurp(mem_path + "/memory.limit_in_bytes"),
            absl::StrCat(32 * kMiB, "\n"));
  if (IsLazy(*manager, *group, "pids")) {
    EXPECT_EQ(Slurp(group->PathFor("pids") + "/pids.max"), "64\n");
  }
  pid_t exec = SpawnJoined(slot->OpenProcsFds(), [] {
    pause();
    return 0;
  });
  // The exec: in the slot where slots are, in the group's memory cgroup.
  EXPECT_TRUE(absl::EndsWith(mem_path, CgroupOf(exec, "memory")))
      << CgroupOf(exec, "memory");
  EXPECT_TRUE(absl::EndsWith(group->PathFor("freezer") + "/e0",
                             CgroupOf(exec, "freezer")))
      << CgroupOf(exec, "freezer");
  EXPECT_EQ(*slot->CountProcesses(), 1);
  ASSERT_OK_AND_ASSIGN(CgroupStats stats, group->Stats());
  // The exec (and init where pids shares the freezer's hierarchy).
  EXPECT_EQ(stats.pids_current, IsLazy(*manager, *group, "pids") ? 1 : 2);
  EXPECT_GT(stats.memory_current_bytes, 0);

  ASSERT_OK(group->KillAll());
  EXPECT_TRUE(WIFSIGNALED(WaitStatus(exec)));
  EXPECT_TRUE(WIFSIGNALED(WaitStatus(init)));
  group->ReleaseSlot(slot);
  // Pooled with its memory cgroup, which the next user finds in place.
  manager->Release(std::move(group));
  ASSERT_OK_AND_ASSIGN(group, manager->Acquire({.memory_bytes = 48 * kMiB}));
  EXPECT_EQ(group->PathFor("memory"), mem_path);
  EXPECT_EQ(Slurp(mem_path + "/memory.limit_in_bytes"),
            absl::StrCat(48 * kMiB, "\n"));
  group.reset();
  manager.reset();
  EXPECT_FALSE(Exists(mem_path));
}

TEST_F(CgroupTest, SlotKillAllKillsDoubleForkedDaemon) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
  ASSERT_OK_AND_ASSIGN(auto group, manager->Acquire({}));
  ASSERT_OK_AND_ASSIGN(ExecSlot * slot, group->AcquireSlot());
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  pid_t pid = SpawnJoined(slot->OpenProcsFds(), [&] {
    if (fork() == 0) {
      setsid();
      if (fork() == 0) {
        pid_t self = getpid();
        (void)!write(pipefd[1], &self, sizeof(self));
        while (true) pause();
      }
      _exit(0);
    }
    return 0;
  });
  close(pipefd[1]);
  pid_t daemon = 0;
  ASSERT_EQ(read(pipefd[0], &daemon, sizeof(daemon)),
            static_cast<ssize_t>(sizeof(daemon)));
  close(pipefd[0]);
  EXPECT_TRUE(WIFEXITED(WaitStatus(pid)));
  ASSERT_OK_AND_ASSIGN(int count, slot->CountProcesses());
  EXPECT_GE(count, 1);  // the daemon (its parent may still be exiting)
  EXPECT_EQ(kill(daemon, 0), 0);

  EXPECT_OK(slot->KillAll());
  ASSERT_OK_AND_ASSIGN(count, slot->CountProcesses());
  EXPECT_EQ(count, 0);
  // Orphans come to us (subreaper): the daemon died of SIGKILL.
  int status = WaitStatus(daemon);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
}

TEST_F(CgroupTest, GroupKillAllKillsInitAndEverySlot) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
  ASSERT_OK_AND_ASSIGN(auto group, manager->Acquire({}));
  ASSERT_OK_AND_ASSIGN(ExecSlot * a, group->AcquireSlot());
  ASSERT_OK_AND_ASSIGN(ExecSlot * b, group->AcquireSlot());
  EXPECT_NE(a, b);
  pid_t init = SpawnJoined(group->OpenInitProcsFds(), [] { return Spin(); });
  pid_t pa = SpawnJoined(a->OpenProcsFds(), [] { return Spin(); });
  pid_t pb = SpawnJoined(b->OpenProcsFds(), [] { return Spin(); });
  // Wait until all have joined.
  for (int i = 0; i < 1000; ++i) {
    if (*a->CountProcesses() == 1 && *b->CountProcesses() == 1) break;
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_OK(group->KillAll());
  for (pid_t p : {init, pa, pb}) {
    int status = WaitStatus(p);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << status;
  }
  EXPECT_EQ(*a->CountProcesses(), 0);
  EXPECT_EQ(*b->CountProcesses(), 0);
}

TEST_F(CgroupTest, FreezeStopsProgressAndThawResumes) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
  ASSERT_OK_AND_ASSIGN(auto group, manager->Acquire({}));
  ASSERT_OK_AND_ASSIGN(ExecSlot * slot, group->AcquireSlot());
  auto* counter = static_cast<std::atomic<uint64_t>*>(
      mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
           -1, 0));
  ASSERT_NE(counter, MAP_FAILED);
  counter->store(0);
  pid_t pid = SpawnJoined(slot->OpenProcsFds(), [&] {
    while (true) counter->fetch_add(1, std::memory_order_relaxed);
    return 0;
  });
  while (counter->load() == 0) absl::SleepFor(absl::Milliseconds(1));

  ASSERT_OK(group->Freeze());
  uint64_t frozen_at = counter->load();
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(counter->load(), frozen_at);

  ASSERT_OK(group->Thaw());
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_GT(counter->load(), frozen_at);

  EXPECT_OK(slot->KillAll());
  EXPECT_TRUE(WIFSIGNALED(WaitStatus(pid)));
  munmap(counter, 4096);
}

TEST_F(CgroupTest, KillAllOfFrozenGroupKillsAndThaws) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
  ASSERT_OK_AND_ASSIGN(auto group, manager->Acquire({}));
  ASSERT_OK_AND_ASSIGN(ExecSlot * slot, group->AcquireSlot());
  pid_t pid = SpawnJoined(slot->OpenProcsFds(), [] { return Spin(); });
  while (*slot->CountProcesses() == 0) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_OK(group->Freeze());
  ASSERT_OK(group->KillAll());
  EXPECT_TRUE(WIFSIGNALED(WaitStatus(pid)));
  // Thawed again: a new process runs.
  pid = SpawnJoined(slot->OpenProcsFds(), [] { return 7; });
  int status = WaitStatus(pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 7);
}

TEST_F(CgroupTest, CpuQuotaThrottlesSpinner) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
  ASSERT_OK_AND_ASSIGN(auto group, manager->Acquire({.cpu_millicores = 100}));
  ASSERT_OK_AND_ASSIGN(ExecSlot * slot, group->AcquireSlot());
  pid_t pid = SpawnJoined(slot->OpenProcsFds(), [] { return Spin(); });
  absl::SleepFor(absl::Seconds(1));
  ASSERT_OK_AND_ASSIGN(CgroupStats slot_stats, slot->Stats());
  ASSERT_OK_AND_ASSIGN(CgroupStats stats, group->Stats());
  EXPECT_OK(slot->KillAll());
  WaitStatus(pid);
  // 100 millicores: ~0.1 s of CPU per wall second; bound loosely.
  EXPECT_GT(slot_stats.cpu_usage_ns, 0);
  EXPECT_LT(slot_stats.cpu_usage_ns, 500'000'000);
  EXPECT_GE(stats.cpu_usage_ns, slot_stats.cpu_usage_ns);
  EXPECT_LT(stats.cpu_usage_ns, 500'000'000);
  std::printf("[   INFO   ] 100 millicores: %.3f s CPU in 1 s wall\n",
              slot_stats.cpu_usage_ns / 1e9);
}

TEST_F(CgroupTest, SlotPeakReflectsTouchedMemoryAndResets) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
  ASSERT_OK_AND_ASSIGN(auto group,
                       manager->Acquire({.memory_bytes = 512 * kMiB}));
  ASSERT_OK_AND_ASSIGN(ExecSlot * slot, group->AcquireSlot());
  pid_t pid =
      SpawnJoined(slot->OpenProcsFds(), [] { return TouchMemory(64 * kMiB); });
  int status = WaitStatus(pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  ASSERT_OK_AND_ASSIGN(CgroupStats stats, slot->Stats());
  if (manager->version() == CgroupVersion::kV1) {
    EXPECT_EQ(stats.memory_peak_bytes, 0);  // no memory cgroup per slot
  } else {
    EXPECT_GE(stats.memory_peak_bytes, 60 * kMiB);
    EXPECT_LT(stats.memory_peak_bytes, 256 * kMiB);
  }
  ASSERT_OK_AND_ASSIGN(CgroupStats group_stats, group->Stats());
  EXPECT_GE(group_stats.memory_peak_bytes, 60 * kMiB);
  EXPECT_LT(group_stats.memory_peak_bytes, 256 * kMiB);
  group->ReleaseSlot(slot);

  // The same slot again: its peak starts over (v2; v1 has none).
  ASSERT_OK_AND_ASSIGN(ExecSlot * again, group->AcquireSlot());
  EXPECT_EQ(again, slot);
  ASSERT_OK_AND_ASSIGN(stats, again->Stats());
  EXPECT_LT(stats.memory_peak_bytes, 16 * kMiB);
}

TEST_F(CgroupTest, AcquireSlotSkipsSlotWithDaemonUntilItEmpties) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
  ASSERT_OK_AND_ASSIGN(auto group, manager->Acquire({}));
  ASSERT_OK_AND_ASSIGN(ExecSlot * first, group->AcquireSlot());
  pid_t daemon = SpawnJoined(first->OpenProcsFds(), [] { return Spin(); });
  while (*first->CountProcesses() == 0) absl::SleepFor(absl::Milliseconds(1));
  group->ReleaseSlot(first);  // still holds the daemon

  ASSERT_OK_AND_ASSIGN(ExecSlot * second, group->AcquireSlot());
  EXPECT_NE(second, first);
  group->ReleaseSlot(second);
  ASSERT_OK_AND_ASSIGN(ExecSlot * third, group->AcquireSlot());
  EXPECT_EQ(third, second);  // the free empty slot, no new directory
  group->ReleaseSlot(third);
  EXPECT_EQ(CountSubdirs(group->PathFor("freezer")),
            manager->version() == CgroupVersion::kV1 ? 2 : 3);

  ASSERT_OK(first->KillAll());
  WaitStatus(daemon);
  ASSERT_OK_AND_ASSIGN(ExecSlot * fourth, group->AcquireSlot());
  EXPECT_EQ(fourth, first);  // drained, reclaimed in index order
}

TEST_F(CgroupTest, ReleaseThenAcquireReusesPooledGroup) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
  ASSERT_OK_AND_ASSIGN(auto group, manager->Acquire({.memory_bytes = 64 * kMiB,
                                                     .pids = 10,
                                                     .cpu_millicores = 500}));
  const std::string path = group->PathFor("freezer");
  const std::string root = Parent(path);
  ASSERT_OK_AND_ASSIGN(ExecSlot * s0, group->AcquireSlot());
  ASSERT_OK_AND_ASSIGN(ExecSlot * s1, group->AcquireSlot());
  pid_t pid = SpawnJoined(s1->OpenProcsFds(), [] { return Spin(); });
  (void)s0;
  EXPECT_EQ(manager->PooledForTesting(), 0);

  manager->Release(std::move(group));  // kills pid, trims e1
  EXPECT_TRUE(WIFSIGNALED(WaitStatus(pid)));
  EXPECT_EQ(manager->PooledForTesting(), 1);
  const int dirs = CountSubdirs(root);
  const int group_dirs = CountSubdirs(path);

  ASSERT_OK_AND_ASSIGN(group, manager->Acquire({.memory_bytes = 128 * kMiB}));
  EXPECT_EQ(manager->PooledForTesting(), 0);
  EXPECT_EQ(group->PathFor("freezer"), path);
  EXPECT_TRUE(Exists(group->PathFor("memory")));  // kept from the first use
  EXPECT_EQ(CountSubdirs(root), dirs);
  EXPECT_EQ(CountSubdirs(path), group_dirs);
  ASSERT_OK_AND_ASSIGN(ExecSlot * again, group->AcquireSlot());
  EXPECT_NE(again, nullptr);
  EXPECT_EQ(CountSubdirs(path), group_dirs);  // e0 reused
}

TEST_F(CgroupTest, PrewarmFillsPoolInBackground) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  CgroupManagerOptions options = Options();
  options.pool_target = 2;
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(options));
  for (int i = 0; i < 2000 && manager->PooledForTesting() < 2; ++i) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(manager->PooledForTesting(), 2);
  ASSERT_OK_AND_ASSIGN(auto group, manager->Acquire({}));
  for (int i = 0; i < 2000 && manager->PooledForTesting() < 2; ++i) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_EQ(manager->PooledForTesting(), 2);  // refilled
  EXPECT_OK(manager->Prewarm(3));
  EXPECT_EQ(manager->PooledForTesting(), 3);
}

TEST_F(CgroupTest, DestructorRemovesAllDirectories) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  std::vector<std::string> roots;
  pid_t pid;
  {
    ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
    ASSERT_OK(manager->Prewarm(2));
    ASSERT_OK_AND_ASSIGN(auto kept, manager->Acquire({.pids = 100}));
    ASSERT_OK_AND_ASSIGN(auto released, manager->Acquire({}));
    for (const char* c : {"memory", "pids", "cpu", "cpuacct", "freezer"}) {
      std::string p = kept->PathFor(c);
      if (!p.empty()) roots.push_back(Parent(p));
    }
    ASSERT_FALSE(roots.empty());
    ASSERT_OK_AND_ASSIGN(ExecSlot * slot, kept->AcquireSlot());
    ASSERT_OK_AND_ASSIGN(ExecSlot * slot2, kept->AcquireSlot());
    (void)slot2;
    pid = SpawnJoined(slot->OpenProcsFds(), [] { return Spin(); });
    manager->Release(std::move(released));
    // `kept` is destroyed with its running process, then the manager.
  }
  EXPECT_TRUE(WIFSIGNALED(WaitStatus(pid)));
  for (const std::string& r : roots) EXPECT_FALSE(Exists(r)) << r;
}

TEST_F(CgroupTest, StaleTreeOfADeadRuntimeIsReclaimed) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  // Where a default-named manager would put its tree.
  std::string parent;
  {
    ASSERT_OK_AND_ASSIGN(auto probe, CgroupManager::Create(Options()));
    ASSERT_OK_AND_ASSIGN(auto g, probe->Acquire({}));
    parent = Parent(Parent(g->PathFor("freezer")));
  }
  // A pid that is certainly gone.
  pid_t dead = fork();
  if (dead == 0) _exit(0);
  WaitStatus(dead);
  const std::string stale = absl::StrCat(parent, "/dsec-", dead);
  ASSERT_EQ(mkdir(stale.c_str(), 0755), 0);
  ASSERT_EQ(mkdir((stale + "/sb-0").c_str(), 0755), 0);
  // A leftover sandbox process inside it.
  pid_t orphan = fork();
  if (orphan == 0) {
    FILE* f = fopen((stale + "/sb-0/cgroup.procs").c_str(), "w");
    if (f == nullptr) _exit(1);
    fprintf(f, "0");
    fclose(f);
    Spin();
  }
  for (int i = 0; i < 1000 && Slurp(stale + "/sb-0/cgroup.procs").empty();
       ++i) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create({}));
  EXPECT_TRUE(WIFSIGNALED(WaitStatus(orphan)));
  EXPECT_FALSE(Exists(stale)) << stale;
}

TEST_F(CgroupTest, GroupOutlivingManagerStillCleansUp) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  std::unique_ptr<SandboxCgroup> group;
  std::string root;
  {
    ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
    ASSERT_OK_AND_ASSIGN(group, manager->Acquire({}));
    root = Parent(group->PathFor("memory"));
  }
  EXPECT_TRUE(Exists(root));
  ASSERT_OK_AND_ASSIGN(ExecSlot * slot, group->AcquireSlot());
  ASSERT_OK_AND_ASSIGN(std::vector<UniqueFd> fds, slot->OpenProcsFds());
  EXPECT_FALSE(fds.empty());
  fds.clear();
  group.reset();
  EXPECT_FALSE(Exists(root));
}

TEST_F(CgroupTest, AcquireReleaseCyclesLeakNoFds) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
  auto cycle = [&](int i) {
    auto group = manager->Acquire({.memory_bytes = (64 + i % 3) * kMiB,
                                   .pids = 50,
                                   .cpu_millicores = 1000});
    ASSERT_OK(group);
    auto slot = (*group)->AcquireSlot();
    ASSERT_OK(slot);
    if (i % 10 == 0) {
      auto extra = (*group)->AcquireSlot();  // a second slot, trimmed later
      ASSERT_OK(extra);
    }
    ASSERT_OK((*group)->Stats());
    ASSERT_OK((*slot)->Stats());
    (*group)->ReleaseSlot(*slot);
    manager->Release(std::move(*group));
  };
  cycle(0);  // the pool now caches one group
  const int before = CountFds();
  for (int i = 1; i <= 200; ++i) cycle(i);
  EXPECT_EQ(CountFds(), before);
  EXPECT_EQ(manager->PooledForTesting(), 1);
}

// Groups and slots open their files per access: a process holding
// thousands of idle sandboxes must not hold a descriptor per cgroup file
// (RLIMIT_NOFILE, and clone() copying the fd table).
TEST_F(CgroupTest, IdleGroupsHoldNoFds) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
  const int before = CountFds();
  std::vector<std::unique_ptr<SandboxCgroup>> groups;
  for (int i = 0; i < 20; ++i) {
    ASSERT_OK_AND_ASSIGN(
        auto group, manager->Acquire({.memory_bytes = 64 * kMiB, .pids = 50}));
    ASSERT_OK_AND_ASSIGN(ExecSlot * slot, group->AcquireSlot());
    ASSERT_OK(slot->Stats());
    group->ReleaseSlot(slot);
    ASSERT_OK(group->Stats());
    groups.push_back(std::move(group));
  }
  EXPECT_EQ(CountFds(), before);
  for (auto& g : groups) manager->Release(std::move(g));
  EXPECT_EQ(CountFds(), before);
  EXPECT_EQ(manager->PooledForTesting(), 20);
}

TEST_F(CgroupTest, AcquireReleaseTiming) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  ASSERT_OK_AND_ASSIGN(auto manager, CgroupManager::Create(Options()));
  constexpr int kRounds = 200;
  const CgroupLimits limits{
      .memory_bytes = 256 * kMiB, .pids = 64, .cpu_millicores = 1000};
  absl::Duration create, first_slot, acquire, slot_acquire, slot_release, stats,
      release;
  {
    absl::Time t0 = absl::Now();
    ASSERT_OK(manager->Prewarm(1));
    create = absl::Now() - t0;
    // The first exec of a new group makes its slot (and on v1 its lazy
    // directories, memory cgroup included) once.
    ASSERT_OK_AND_ASSIGN(auto group, manager->Acquire(limits));
    t0 = absl::Now();
    ASSERT_OK_AND_ASSIGN(ExecSlot * slot, group->AcquireSlot());
    first_slot = absl::Now() - t0;
    group->ReleaseSlot(slot);
    manager->Release(std::move(group));
  }
  for (int i = 0; i < kRounds; ++i) {
    absl::Time t0 = absl::Now();
    auto group = manager->Acquire(limits);
    absl::Time t1 = absl::Now();
    ASSERT_OK(group);
    auto slot = (*group)->AcquireSlot();
    absl::Time t2 = absl::Now();
    ASSERT_OK(slot);
    auto st = (*slot)->Stats();
    absl::Time t3 = absl::Now();
    ASSERT_OK(st);
    (*group)->ReleaseSlot(*slot);
    absl::Time t4 = absl::Now();
    manager->Release(std::move(*group));
    absl::Time t5 = absl::Now();
    acquire += t1 - t0;
    slot_acquire += t2 - t1;
    stats += t3 - t2;
    slot_release += t4 - t3;
    release += t5 - t4;
  }
  auto us = [](absl::Duration d) {
    return absl::ToDoubleMicroseconds(d) / kRounds;
  };
  std::printf(
      "[   INFO   ] cgroup %s: new group (mkdir) %.0f us; its first "
      "AcquireSlot %.0f us; pooled Acquire+limits %.1f us; AcquireSlot %.1f "
      "us; slot Stats %.1f us; ReleaseSlot %.1f us; Release %.1f us (avg of "
      "%d)\n",
      manager->version() == CgroupVersion::kV1 ? "v1" : "v2",
      absl::ToDoubleMicroseconds(create),
      absl::ToDoubleMicroseconds(first_slot), us(acquire), us(slot_acquire),
      us(stats), us(slot_release), us(release), kRounds);
}

// The v2 code on this host's controller-less cgroup2 mount: tree with the
// init leaf, cgroup.kill, cgroup.freeze and the populated/frozen waits.
TEST_F(CgroupTest, V2CoreOnControllerlessHierarchy) {
  DSEC_REQUIRE_HOST_FEATURE(CgroupsAvailable(), "cgroups (root)");
  CgroupManagerOptions options = Options();
  options.version = CgroupVersion::kV2;
  auto created =
      CreateCgroupManager(options, {.allow_missing_controllers = true});
  if (!created.ok()) {
    GTEST_SKIP() << "no writable cgroup2 mount: " << created.status();
  }
  auto manager = std::move(created).value();
  ASSERT_EQ(manager->version(), CgroupVersion::kV2);
  ASSERT_OK_AND_ASSIGN(auto group, manager->Acquire({}));
  const std::string path = group->PathFor("memory");
  const std::string root = Parent(path);
  EXPECT_TRUE(Exists(path + "/init"));
  EXPECT_FALSE(Exists(path + "/e0"));  // made by the first AcquireSlot
  ASSERT_EQ(group->OpenInitProcsFds()->size(), 1u);

  // Freeze and thaw through cgroup.freeze.
  auto* counter = static_cast<std::atomic<uint64_t>*>(
      mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
           -1, 0));
  ASSERT_NE(counter, MAP_FAILED);
  counter->store(0);
  pid_t init = SpawnJoined(group->OpenInitProcsFds(), [&] {
    while (true) counter->fetch_add(1, std::memory_order_relaxed);
    return 0;
  });
  while (counter->load() == 0) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_OK(group->Freeze());
  uint64_t frozen_at = counter->load();
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_EQ(counter->load(), frozen_at);
  ASSERT_OK(group->Thaw());

  // A double-forked daemon in a slot dies by cgroup.kill.
  ASSERT_OK_AND_ASSIGN(ExecSlot * slot, group->AcquireSlot());
  pid_t pid = SpawnJoined(slot->OpenProcsFds(), [] {
    if (fork() == 0) {
      setsid();
      if (fork() == 0) Spin();
      _exit(0);
    }
    return 0;
  });
  WaitStatus(pid);
  while (*slot->CountProcesses() == 0) absl::SleepFor(absl::Milliseconds(1));
  ASSERT_OK(slot->KillAll());
  EXPECT_EQ(*slot->CountProcesses(), 0);
  ASSERT_OK_AND_ASSIGN(CgroupStats stats, slot->Stats());
  EXPECT_GT(stats.cpu_usage_ns, 0);  // cpu.stat is core in v2
  group->ReleaseSlot(slot);

  // Release kills init; the group is pooled and reused without mkdir.
  manager->Release(std::move(group));
  EXPECT_TRUE(WIFSIGNALED(WaitStatus(init)));
  EXPECT_EQ(manager->PooledForTesting(), 1);
  const int dirs = CountSubdirs(root);
  ASSERT_OK_AND_ASSIGN(group, manager->Acquire({}));
  EXPECT_EQ(CountSubdirs(root), dirs);
  group.reset();
  manager.reset();
  EXPECT_FALSE(Exists(root));
  munmap(counter, 4096);
}

}  // namespace
}  // namespace dsec::sandbox
