// dsec-run as a user runs it: exit codes, JSON results, flag errors.
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "common/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "sandbox/cgroup.h"

namespace dsec::sandbox {
namespace {

using ::testing::HasSubstr;

using RunResult = dsec::testing::CommandResult;

RunResult DsecRun(const std::string& args) {
  return dsec::testing::RunCommand(dsec::testing::BinDir() + "/dsec-run " +
                                   args);
}

class DsecRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DSEC_REQUIRE_HOST_FEATURE(geteuid() == 0 && CgroupsAvailable(),
                              "root with cgroups");
  }
  dsec::testing::TempDir state_;
  std::string Flags() { return "--state_dir " + state_.Join("s"); }
};

TEST_F(DsecRunTest, PassesOutputAndExitCodeThrough) {
  RunResult r = DsecRun(Flags() + " -- sh -c 'echo out; exit 7'");
  EXPECT_EQ(r.exit_code, 7);
  EXPECT_EQ(r.out, "out\n");
}

TEST_F(DsecRunTest, JsonResultSaysWhatHappened) {
  RunResult r =
      DsecRun(Flags() + " --json --timeout 300ms -- sh -c 'echo x; sleep 5'");
  EXPECT_EQ(r.exit_code, 124);
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["outcome"], "timed_out");
  EXPECT_EQ(j["stdout"], "x\n");
  EXPECT_GT(j["wall_time_ms"].get<double>(), 250);
}

TEST_F(DsecRunTest, MemoryLimitFlagIsEnforced) {
  RunResult r = DsecRun(Flags() +
                        " --json --memory 48M -- python3 -c "
                        "'a=[bytearray(1<<20) for _ in range(200)]'");
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["outcome"], "oom_killed") << r.out;
}

TEST_F(DsecRunTest, BadFlagsExit125WithMessage) {
  RunResult r = DsecRun(Flags() + " --memory lots -- true");
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_THAT(r.out, HasSubstr("not a size"));
  r = DsecRun(Flags() + " --bind /nonexistent:/x -- true");
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_THAT(r.out, HasSubstr("does not exist"));
  r = DsecRun(Flags());
  EXPECT_EQ(r.exit_code, 125);
  EXPECT_THAT(r.out, HasSubstr("usage"));
}

TEST_F(DsecRunTest, StdinAndReadWriteBind) {
  dsec::testing::TempDir shared;
  // Sandbox root is an unprivileged host uid: the directory must let it in.
  chmod(shared.path().c_str(), 0777);
  RunResult r = dsec::testing::RunCommand(
      "echo piped | " + dsec::testing::BinDir() + "/dsec-run " + Flags() +
      " --stdin --bind " + shared.path() +
      ":/data:rw -- sh -c 'cat > /data/f; cat /data/f'");
  EXPECT_EQ(r.out, "piped\n");
  // The bind was read-write: the file is on the host now.
  FILE* in = fopen(shared.Join("f").c_str(), "r");
  ASSERT_NE(in, nullptr);
  fclose(in);
}

}  // namespace
}  // namespace dsec::sandbox
