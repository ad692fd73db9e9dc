// Preemption-safe trajectories on a real 2-node cluster: fast-forward
// replay after a restart (in-process and after SIGKILL of a rollout
// process), divergence detection, and rebuild on another node after the
// sandbox's agent is killed.
#include "client/trajectory.h"

#include <signal.h>
#include <unistd.h>

#include <map>
#include <regex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/testing/test_cluster.h"
#include "common/testing/status_matchers.h"
#include "common/testing/subprocess.h"
#include "common/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sandbox/cgroup.h"

namespace dsec::client {
namespace {

using ::dsec::testing::StatusIs;
using ::testing::HasSubstr;

// Same script as testing/trajectory_child.cc.
std::string StepScript(int i) {
  return absl::StrCat("echo ", i,
                      " >> /root/count; echo step-$(head -c8 /dev/urandom | "
                      "od -An -tx8 | tr -d ' ')");
}

class TrajectoryTest : public testing::ClusterTest<2> {
 protected:
  void SetUp() override {
    testing::ClusterTest<2>::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    spec_.mutable_limits()->set_memory_bytes(256 << 20);
  }

  TrajectoryOptions Options(const std::string& id) {
    return {.log_path = log_dir_.Join(id + ".dtl"),
            .trajectory_id = id,
            .spec = spec_,
            .lost_wait = absl::Seconds(30)};
  }

  dsec::testing::TempDir log_dir_;
  dsec::v1::SandboxSpec spec_;
};

TEST_F(TrajectoryTest, ResumeFastForwardsWithoutRunningAnythingTwice) {
  std::vector<std::string> seen;
  std::string sandbox_id;
  {
    auto t = Trajectory::Open(client_, Options("resume"));
    ASSERT_TRUE(t.ok()) << t.status();
    for (int i = 0; i < 4; ++i) {
      auto r = (*t)->Run(Command::Shell(StepScript(i)));
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_FALSE(r->replayed);
      seen.push_back(r->stdout_data);
    }
    ASSERT_OK((*t)->WriteFile("/root/notes.txt", "written once"));
    auto read = (*t)->ReadFile("/root/notes.txt", 100);
    ASSERT_TRUE(read.ok());
    sandbox_id = (*t)->sandbox_id();
    // Dropped without Close: the rollout process "died".
  }
  // A new process: a new client, the same log.
  auto client = Client::Create(client_->options());
  ASSERT_TRUE(client.ok());
  auto t = Trajectory::Open(*client, Options("resume"));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->logged_steps(), 6);
  for (int i = 0; i < 4; ++i) {
    auto r = (*t)->Run(Command::Shell(StepScript(i)));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->replayed);
    EXPECT_EQ(r->stdout_data, seen[i]) << "step " << i;
  }
  ASSERT_OK((*t)->WriteFile("/root/notes.txt", "written once"));
  auto read = (*t)->ReadFile("/root/notes.txt", 100);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, "written once");
  // Live again, in the same sandbox: every step ran exactly once.
  auto r = (*t)->Run(Command::Shell("cat /root/count"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->replayed);
  EXPECT_EQ(r->stdout_data, "0\n1\n2\n3\n");
  EXPECT_EQ((*t)->sandbox_id(), sandbox_id);
  EXPECT_EQ((*t)->rebuilds(), 0);
  ASSERT_OK((*t)->Close());
}

TEST_F(TrajectoryTest, ADifferentActionAtALoggedStepIsRefused) {
  {
    auto t = Trajectory::Open(client_, Options("diverge"));
    ASSERT_TRUE(t.ok());
    ASSERT_TRUE((*t)->Run(Command::Shell("echo a")).ok());
    ASSERT_TRUE((*t)->Run(Command::Shell("echo b")).ok());
  }
  auto t = Trajectory::Open(client_, Options("diverge"));
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE((*t)->Run(Command::Shell("echo a")).ok());
  auto r = (*t)->Run(Command::Shell("echo c"));
  EXPECT_THAT(r.status(), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(r.status().message(), HasSubstr("diverged at step 1"));
  EXPECT_THAT(r.status().message(), HasSubstr("echo b"));
  ASSERT_OK((*t)->Close());

  // Another trajectory's log is refused too.
  TrajectoryOptions other = Options("other");
  other.log_path = Options("diverge").log_path;
  EXPECT_THAT(Trajectory::Open(client_, other).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  other.trajectory_id = "bad id with spaces";
  EXPECT_THAT(Trajectory::Open(client_, other).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(TrajectoryTest, KilledRolloutProcessResumesWithIdenticalObservations) {
  const std::string log = Options("killed").log_path;
  auto child = dsec::testing::Subprocess::Start(
      {dsec::testing::BinDir() + "/dsec-trajectory-child", "--controller",
       client_->options().controller, "--api_key", client_->options().api_key,
       "--log", log, "--id", "killed", "--steps", "8", "--sleep_ms", "150"},
      log_dir_.Join("child.out"));
  ASSERT_TRUE(child.ok()) << child.status();
  // Kill it with SIGKILL after its third step, wherever it is then.
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while ((*child)->Log().find("STEP 2 ") == std::string::npos) {
    ASSERT_TRUE((*child)->running()) << (*child)->Log();
    ASSERT_LT(absl::Now(), deadline) << (*child)->Log();
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE((*child)->Stop(SIGKILL).ok());
  std::map<int, std::string> child_saw;
  static const std::regex re("STEP ([0-9]+) (step-[0-9a-f]+)");
  const std::string out = (*child)->Log();
  for (std::sregex_iterator it(out.begin(), out.end(), re), end; it != end;
       ++it) {
    child_saw[std::stoi((*it)[1])] = std::string((*it)[2]) + "\n";
  }
  ASSERT_GE(child_saw.size(), 3u);

  auto t = Trajectory::Open(client_, Options("killed"));
  ASSERT_TRUE(t.ok()) << t.status();
  for (int i = 0; i < 8; ++i) {
    auto r = (*t)->Run(Command::Shell(StepScript(i)));
    ASSERT_TRUE(r.ok()) << "step " << i << ": " << r.status();
    if (child_saw.count(i)) {
      EXPECT_EQ(r->stdout_data, child_saw[i]) << "step " << i;
      EXPECT_TRUE(r->replayed);
    }
  }
  auto count = (*t)->Run(Command::Shell("cat /root/count"));
  ASSERT_TRUE(count.ok());
  EXPECT_EQ(count->stdout_data, "0\n1\n2\n3\n4\n5\n6\n7\n")
      << "an action ran twice or not at all";
  ASSERT_OK((*t)->Close());
}

// Last: it kills an agent (and restarts it at the end).
TEST_F(TrajectoryTest, ZzNodeLossRebuildsOnAnotherNodeWithTheSameState) {
  auto t = Trajectory::Open(client_, Options("nodeloss"));
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_OK((*t)->WriteFile("/root/state", "a\n"));
  ASSERT_TRUE((*t)->Run(Command::Shell("echo b >> /root/state")).ok());
  auto snap = (*t)->Snapshot();
  ASSERT_TRUE(snap.ok()) << snap.status();
  ASSERT_TRUE((*t)->Run(Command::Shell("echo c >> /root/state")).ok());
  auto ro = (*t)->RunReadOnly(Command::Shell("wc -l < /root/state"));
  ASSERT_TRUE(ro.ok());
  EXPECT_EQ(ro->stdout_data, "3\n");
  const std::string first = (*t)->sandbox_id();
  auto desc = client_->GetSandbox(first);
  ASSERT_TRUE(desc.ok());
  const int victim = desc->node_id() == testing::TestCluster::NodeId(0) ? 0 : 1;

  cluster_->KillAgent(victim);
  auto r = (*t)->Run(Command::Shell("echo d >> /root/state; cat /root/state"));
  ASSERT_TRUE(r.ok()) << r.status() << cluster_->Logs();
  EXPECT_EQ(r->stdout_data, "a\nb\nc\nd\n");
  EXPECT_EQ((*t)->rebuilds(), 1);
  EXPECT_NE((*t)->sandbox_id(), first);
  auto now = client_->GetSandbox((*t)->sandbox_id());
  ASSERT_TRUE(now.ok());
  EXPECT_NE(now->node_id(), desc->node_id());

  // The log says a rebuild happened, and a resumed rollout sees it too.
  auto log = TrajectoryLog::Open(Options("nodeloss").log_path, false);
  ASSERT_TRUE(log.ok());
  int rebuild_records = 0;
  for (const auto& rec : (*log)->records()) {
    if (rec.has_attach() && !rec.attach().lost_sandbox_id().empty()) {
      ++rebuild_records;
      EXPECT_EQ(rec.attach().lost_sandbox_id(), first);
      // Snapshots are node-local until they live on dsec-fs: the one
      // taken died with the node, so the rebuild started from the spec and
      // re-ran the three mutating steps (not the read-only one).
      EXPECT_EQ(rec.attach().from_snapshot_id(), "");
      EXPECT_EQ(rec.attach().replayed_actions(), 3);
    }
  }
  EXPECT_EQ(rebuild_records, 1);
  ASSERT_OK((*t)->Close());
  ASSERT_OK(cluster_->RestartAgent(victim));
  ASSERT_OK(cluster_->WaitReady(2, absl::Seconds(30)));
}

}  // namespace
}  // namespace dsec::client
