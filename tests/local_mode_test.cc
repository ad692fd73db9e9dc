// `dsecctl local up` as a user runs it: ready in seconds, usable by the CLI
// (tables and JSON), the demo rollout, and a clean stop on Ctrl-C that
// leaves no mount or process behind.
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/testing/subprocess.h"
#include "common/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "sandbox/cgroup.h"

namespace dsec {
namespace {

using ::testing::HasSubstr;

using CmdResult = dsec::testing::CommandResult;

CmdResult Sh(const std::string& cmd) { return dsec::testing::RunCommand(cmd); }

int CountMountsUnder(const std::string& dir) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  int n = 0;
  while (std::getline(in, line)) n += line.find(dir) != std::string::npos;
  return n;
}

class LocalModeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DSEC_REQUIRE_HOST_FEATURE(geteuid() == 0 && sandbox::CgroupsAvailable(),
                              "root with cgroups");
    ctl_ = dsec::testing::BinDir() + "/dsecctl";
  }
  std::string ctl_;
  dsec::testing::TempDir dir_;
};

TEST_F(LocalModeTest, UpServesTheCliAndStopsCleanlyOnCtrlC) {
  const std::string data = dir_.Join("data");
  auto up = dsec::testing::Subprocess::Start(
      {ctl_, "local", "up", "--port", "0", "--data_dir", data},
      dir_.Join("up.log"));
  ASSERT_TRUE(up.ok());
  std::string address;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  std::smatch m;
  while (absl::Now() < deadline) {
    std::string log = (*up)->Log();
    static const std::regex re("controller (127\\.0\\.0\\.1:[0-9]+)");
    if (std::regex_search(log, m, re)) {
      address = m[1];
      break;
    }
    ASSERT_TRUE((*up)->running()) << log;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_FALSE(address.empty()) << (*up)->Log();
  const std::string ctl = ctl_ + " --controller " + address;

  CmdResult r = Sh(ctl + " nodes list");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("local-0"));
  EXPECT_THAT(r.out, HasSubstr("ready"));
  r = Sh(ctl + " -o json nodes list");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto nodes = nlohmann::json::parse(r.out);
  ASSERT_EQ(nodes["nodes"].size(), 1u);
  EXPECT_EQ(nodes["nodes"][0]["state"], "NODE_STATE_READY");

  r = Sh(ctl + " jobs create trainer --max_sandboxes 3");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  std::smatch key;
  ASSERT_TRUE(std::regex_search(
      r.out, key, std::regex("api key \\(shown once\\): ([0-9a-f]+)")))
      << r.out;
  r = Sh(ctl + " -o json jobs list");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  auto jobs = nlohmann::json::parse(r.out);
  ASSERT_EQ(jobs["jobs"].size(), 1u);
  const std::string job_id = jobs["jobs"][0]["id"];

  // The demo creates its own job and cleans up after itself.
  r = Sh(ctl + " demo --count 4");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("mean reward 0.500 over 4 episodes"));
  EXPECT_THAT(r.out, HasSubstr("deleted 4 sandboxes"));

  r = Sh(ctl + " stats");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("nodes ready"));
  r = Sh(ctl + " nodes cordon local-0");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("cordoned"));
  r = Sh(ctl + " nodes cordon no-such-node");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, HasSubstr("no-such-node"));
  r = Sh(ctl + " nodes uncordon local-0");
  EXPECT_EQ(r.exit_code, 0) << r.out;

  auto stopped = (*up)->Stop(SIGINT, absl::Seconds(30));
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_TRUE(WIFEXITED(*stopped) && WEXITSTATUS(*stopped) == 0)
      << (*up)->Log();
  EXPECT_EQ(CountMountsUnder(data), 0) << "mounts left behind";
}

TEST_F(LocalModeTest, DemoRunsEndToEndAndExitsZero) {
  CmdResult r = Sh(ctl_ + " local up --demo --count 4 --port 0 --data_dir " +
                   dir_.Join("d"));
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("dsec local cluster ready"));
  EXPECT_THAT(r.out, HasSubstr("created 4 sandboxes"));
  EXPECT_THAT(r.out, HasSubstr("network interfaces: lo"));
  EXPECT_THAT(r.out, HasSubstr("pids limit hit"));
  EXPECT_EQ(CountMountsUnder(dir_.Join("d")), 0);
}

// `--run CMD` runs a command against the cluster (sharing its mount
// namespace, so dsec-fs is visible), passes its exit status on and stops.
TEST_F(LocalModeTest, RunExecutesACommandAgainstTheCluster) {
  const std::string data = dir_.Join("r");
  CmdResult r = Sh(ctl_ + " local up --port 0 --data_dir " + data +
                   " --run sh -c 'echo ctl=$DSEC_CONTROLLER; "
                   "echo hi > $DSEC_FS_MOUNT/from-child && "
                   "cat $DSEC_FS_MOUNT/from-child && " +
                   ctl_ + " nodes list >/dev/null && exit 7'");
  EXPECT_EQ(r.exit_code, 7) << r.out;
  EXPECT_THAT(r.out, HasSubstr("ctl=127.0.0.1:"));
  EXPECT_THAT(r.out, HasSubstr("hi\n"));
  EXPECT_EQ(CountMountsUnder(data), 0);
  CmdResult bad = Sh(ctl_ + " local up --port 0 --data_dir " + data + " --run");
  EXPECT_EQ(bad.exit_code, 2) << bad.out;
}

}  // namespace
}  // namespace dsec
