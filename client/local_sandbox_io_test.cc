// LocalSandboxIo against a real sandbox: exec, files, and how timeouts, OOM
// and a destroyed sandbox map onto the SandboxIo contract. Needs root and
// cgroups: skips locally without them, fails in CI.
#include "client/local_sandbox_io.h"

#include <unistd.h>

#include "client/reward.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::client {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;
using ::testing::HasSubstr;

class LocalSandboxIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DSEC_REQUIRE_HOST_FEATURE(geteuid() == 0 && sandbox::CgroupsAvailable(),
                              "root with cgroups");
    sandbox::RuntimeOptions options;
    options.state_dir = dir_.Join("state");
    options.init_path = dsec::testing::BinDir() + "/dsec-init";
    options.netns_pool_target = 0;
    ASSERT_OK_AND_ASSIGN(runtime_, sandbox::Runtime::Create(options));
    sandbox::SandboxSpec spec;
    spec.limits.memory_bytes = 64 << 20;
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<sandbox::Sandbox> sb,
                         runtime_->CreateSandbox(spec));
    sandbox_ = std::move(sb);
    io_ = std::make_unique<LocalSandboxIo>(sandbox_);
  }

  dsec::testing::TempDir dir_;
  std::unique_ptr<sandbox::Runtime> runtime_;
  std::shared_ptr<sandbox::Sandbox> sandbox_;
  std::unique_ptr<LocalSandboxIo> io_;
};

TEST_F(LocalSandboxIoTest, RunsShellAndArgvWithStdinEnvAndCwd) {
  Command c = Command::Shell("read x; echo \"$x $GREETING $(pwd)\"; exit 3");
  c.stdin_data = "hi\n";
  c.env = {{"GREETING", "hello"}};
  c.cwd = "/tmp";
  ASSERT_OK_AND_ASSIGN(ExecOutcome o, io_->Run(c));
  EXPECT_EQ(o.kind, ExitKind::kExited);
  EXPECT_EQ(o.exit_code, 3);
  EXPECT_EQ(o.stdout_data, "hi hello /tmp\n");
  ASSERT_OK_AND_ASSIGN(o, io_->Run(Command::Argv({"id", "-u"})));
  EXPECT_TRUE(o.ok());
  EXPECT_EQ(o.stdout_data, "0\n");
  EXPECT_THAT(io_->Run(Command{}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(LocalSandboxIoTest, FilesAreWrittenRelativeToWorkdirAndReadBack) {
  ASSERT_THAT(io_->WriteFile("pkg/run.sh", "echo from-file\n", 0755), IsOk());
  ASSERT_OK_AND_ASSIGN(ExecOutcome o, io_->Run(Command::Shell(
                                          "./pkg/run.sh; stat -c %a pkg/run.sh;"
                                          " stat -c %u /root/pkg/run.sh")));
  EXPECT_EQ(o.stdout_data, "from-file\n755\n0\n");
  bool truncated = true;
  ASSERT_OK_AND_ASSIGN(std::string data,
                       io_->ReadFile("/root/pkg/run.sh", 1 << 20, &truncated));
  EXPECT_EQ(data, "echo from-file\n");
  EXPECT_FALSE(truncated);
  ASSERT_OK_AND_ASSIGN(data, io_->ReadFile("pkg/run.sh", 4, &truncated));
  EXPECT_EQ(data, "echo");
  EXPECT_TRUE(truncated);
  EXPECT_THAT(io_->ReadFile("missing", 10),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(io_->ReadFile("pkg", 10),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(LocalSandboxIoTest, TimeoutAndOomAreOutcomesNotStatuses) {
  Command spin = Command::Shell("while :; do :; done");
  spin.timeout = absl::Milliseconds(300);
  ASSERT_OK_AND_ASSIGN(ExecOutcome o, io_->Run(spin));
  EXPECT_EQ(o.kind, ExitKind::kTimedOut);
  EXPECT_FALSE(o.ok());
  ASSERT_OK_AND_ASSIGN(
      o,
      io_->Run(Command::Argv(
          {"python3", "-c", "a=[]\nwhile True: a.append(bytearray(1<<20))"})));
  EXPECT_EQ(o.kind, ExitKind::kOomKilled) << ExitKindName(o.kind);
}

TEST_F(LocalSandboxIoTest, DestroyedSandboxIsAnInfraFailure) {
  ASSERT_THAT(sandbox_->Destroy(), IsOk());
  absl::StatusOr<ExecOutcome> o = io_->Run(Command::Shell("true"));
  EXPECT_FALSE(o.ok());
  EXPECT_FALSE(io_->WriteFile("x", "y").ok());
  reward::RewardSpec spec;
  spec.test_command = Command::Shell("true");
  reward::RewardResult r = reward::Evaluate(*io_, spec);
  EXPECT_EQ(r.state, reward::EvalState::kInfraFailed);
}

TEST(ToExecOutcome, InfraFailureIsUnavailableAndPidsLimitWinsOverExit) {
  sandbox::ExecResult r;
  r.outcome = sandbox::ExecOutcome::kInfraFailure;
  r.infra_error = "init died";
  EXPECT_THAT(ToExecOutcome(r),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("init died")));
  r.outcome = sandbox::ExecOutcome::kExited;
  r.exit_code = 0;
  r.pids_limit_hit = true;
  ASSERT_OK_AND_ASSIGN(ExecOutcome o, ToExecOutcome(r));
  EXPECT_EQ(o.kind, ExitKind::kPidsLimit);
  r.outcome = sandbox::ExecOutcome::kSeccompKilled;
  r.signal = 31;
  ASSERT_OK_AND_ASSIGN(o, ToExecOutcome(r));
  EXPECT_EQ(o.kind, ExitKind::kSeccompViolation);
  EXPECT_EQ(o.exit_code, -1);
}

}  // namespace
}  // namespace dsec::client
