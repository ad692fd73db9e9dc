// Snapshots on dsec-fs across nodes, as separate processes on loopback: one
// dsec-fs (dsec-meta, three dsec-chunk, one dsec-mount FUSE mount per node),
// one dsec-controller and two dsec-agent processes with their own state
// dirs, each mounting dsec-fs at its own mountpoint. A snapshot taken on
// one node (with a deleted lower file, i.e. a whiteout, and a replaced
// directory, i.e. an opaque dir) forks onto both nodes, also after its node
// died; bad ids and damaged snapshot directories get clean errors.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "common/testing/status_matchers.h"
#include "common/testing/subprocess.h"
#include "common/testing/test_util.h"
#include "common/token.h"
#include "ctl/rpc.h"
#include "dsec/v1/node_service.grpc.pb.h"
#include "fs/testing/fs_cluster.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "sandbox/cgroup.h"

namespace dsec {
namespace {

using ::dsec::testing::Subprocess;
using ::testing::HasSubstr;

constexpr int kAgents = 2;

class SnapshotFsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DSEC_REQUIRE_HOST_FEATURE(geteuid() == 0 && sandbox::CgroupsAvailable() &&
                                  access("/dev/fuse", F_OK) == 0,
                              "root with cgroups and /dev/fuse");
    auto fs = fs::testing::FsTestCluster::Start({.root = dir_.Join("fs")});
    ASSERT_OK(fs.status());
    fs_ = std::move(*fs);
    for (int i = 0; i < kAgents; ++i) {
      auto mnt = fs_->Mount();
      ASSERT_OK(mnt.status()) << fs_->Logs();
      mounts_.push_back(*mnt);
    }
    secret_ = dir_.Join("secret");
    ASSERT_TRUE(LoadOrCreateSecret(secret_, true).ok());
    controller_port_ = *dsec::testing::PickFreeLoopbackPort();
    auto p = Subprocess::Start(
        {dsec::testing::BinDir() + "/dsec-controller", "--listen", controller(),
         "--data_dir", dir_.Join("controller"), "--secret_file", secret_,
         "--heartbeat_timeout", "3s"},
        dir_.Join("controller.log"));
    ASSERT_TRUE(p.ok()) << p.status();
    controller_ = std::move(*p);
    for (int i = 0; i < kAgents; ++i) StartAgent(i);
    ctl::ConnOptions opts;
    opts.controller = controller();
    admin_ = std::make_unique<ctl::ControllerConn>(opts);
    ASSERT_TRUE(WaitReady(kAgents, absl::Seconds(30)));
    ASSERT_OK_AND_ASSIGN(
        client::JobInfo job,
        client::CreateJob({.controller = controller()}, "snapfs", 64));
    ASSERT_OK_AND_ASSIGN(
        client_, client::Client::Create(
                     {.controller = controller(), .api_key = job.api_key}));
  }

  void TearDown() override {
    client_.reset();
    for (auto& agent : agents_) {
      if (agent && agent->running()) {
        EXPECT_TRUE(agent->Stop(SIGTERM).ok());
      }
    }
    if (controller_ && controller_->running()) {
      EXPECT_TRUE(controller_->Stop(SIGTERM).ok());
    }
    fs_.reset();
  }

  std::string controller() const {
    return absl::StrCat("127.0.0.1:", controller_port_);
  }

  void StartAgent(int i) {
    if (agents_.size() <= static_cast<size_t>(i)) agents_.resize(i + 1);
    int port = *dsec::testing::PickFreeLoopbackPort();
    auto p =
        Subprocess::Start({dsec::testing::BinDir() + "/dsec-agent", "--listen",
                           absl::StrCat("127.0.0.1:", port), "--node_id",
                           absl::StrCat("node-", i), "--controller",
                           controller(), "--secret_file", secret_,
                           "--state_dir", dir_.Join(absl::StrCat("agent-", i)),
                           "--max_sandboxes", "64", "--fs_mount", mounts_[i]},
                          dir_.Join(absl::StrCat("agent-", i, ".log")));
    ASSERT_TRUE(p.ok()) << p.status();
    agents_[i] = std::move(*p);
  }

  std::vector<v1::Node> Nodes() {
    v1::ListNodesResponse resp;
    auto c = admin_->Context(absl::Seconds(2));
    if (!admin_->admin().ListNodes(c.get(), {}, &resp).ok()) return {};
    return {resp.nodes().begin(), resp.nodes().end()};
  }

  bool WaitReady(int n, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      int ready = 0;
      for (const auto& node : Nodes()) {
        ready += node.state() == v1::NODE_STATE_READY;
      }
      if (ready >= n) return true;
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  }

  bool WaitNodeState(const std::string& id, v1::NodeState state,
                     absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      for (const auto& node : Nodes()) {
        if (node.node_id() == id && node.state() == state) return true;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  }

  static v1::SandboxSpec SmallSpec() {
    v1::SandboxSpec spec;
    spec.mutable_limits()->set_cpu_millicores(100);
    spec.mutable_limits()->set_memory_bytes(128 << 20);
    spec.mutable_limits()->set_pids(64);
    return spec;
  }

  static std::string NodeOf(client::Sandbox& sb) {
    absl::StatusOr<v1::Sandbox> d = sb.Describe();
    return d.ok() ? d->node_id() : "";
  }

  static std::string Sh(client::Sandbox& sb, const std::string& script) {
    absl::StatusOr<client::ExecOutcome> out =
        sb.Run(client::Command::Shell(script));
    if (!out.ok()) return absl::StrCat("error: ", out.status().ToString());
    return out->stdout_data + out->stderr_data;
  }

  int AgentIndex(const std::string& node_id) {
    return node_id == "node-0" ? 0 : 1;
  }

  dsec::testing::TempDir dir_;
  std::unique_ptr<fs::testing::FsTestCluster> fs_;
  std::vector<std::string> mounts_;
  std::string secret_;
  int controller_port_ = 0;
  std::unique_ptr<Subprocess> controller_;
  std::vector<std::unique_ptr<Subprocess>> agents_;
  std::unique_ptr<ctl::ControllerConn> admin_;
  std::shared_ptr<client::Client> client_;
};

TEST_F(SnapshotFsTest, ForksLandOnEveryNodeWithWhiteoutsAndOpaqueDirs) {
  ASSERT_OK_AND_ASSIGN(auto base, client_->CreateSandbox(SmallSpec()));
  EXPECT_EQ(Sh(*base,
               "mkdir -p /root/base /root/dir && echo v1 > /root/base/keep && "
               "echo doomed > /root/base/gone && echo old > /root/dir/old && "
               "echo ok"),
            "ok\n");
  // First snapshot: /root/base and /root/dir become a lower layer.
  absl::Time t0 = absl::Now();
  ASSERT_OK_AND_ASSIGN(std::string snap1, base->Snapshot());
  const absl::Duration snapshot1_time = absl::Now() - t0;
  struct stat st;
  ASSERT_EQ(
      stat((mounts_[0] + "/snapshots/" + snap1 + "/manifest.pb").c_str(), &st),
      0)
      << "snapshot not written back to dsec-fs";

  ASSERT_OK_AND_ASSIGN(auto mid_group, client_->ForkSnapshot(snap1, 1));
  client::Sandbox& mid = *mid_group.members()[0];
  // A whiteout (file deleted from a lower layer), an opaque directory
  // (directory replaced) and a changed file.
  EXPECT_EQ(Sh(mid,
               "rm /root/base/gone && rm -rf /root/dir && mkdir /root/dir && "
               "echo new > /root/dir/new && echo v2 > /root/base/keep && "
               "echo ok"),
            "ok\n");
  t0 = absl::Now();
  ASSERT_OK_AND_ASSIGN(std::string snap2, mid.Snapshot());
  const absl::Duration snapshot2_time = absl::Now() - t0;

  // dsec-fs holds no special files: whiteouts travel in the manifest.
  for (const auto& e : std::filesystem::recursive_directory_iterator(
           mounts_[1] + "/snapshots/" + snap2)) {
    EXPECT_FALSE(e.is_character_file()) << e.path();
  }

  constexpr int kChildren = 8;
  t0 = absl::Now();
  ASSERT_OK_AND_ASSIGN(auto group, client_->ForkSnapshot(snap2, kChildren));
  const absl::Duration fork_cold = absl::Now() - t0;
  ASSERT_EQ(group.members().size(), static_cast<size_t>(kChildren));
  std::set<std::string> nodes;
  for (size_t i = 0; i < group.members().size(); ++i) {
    client::Sandbox& child = *group.members()[i];
    nodes.insert(NodeOf(child));
    EXPECT_EQ(Sh(child,
                 "cat /root/base/keep; test -e /root/base/gone || echo gone; "
                 "ls /root/dir"),
              "v2\ngone\nnew\n")
        << "child on " << NodeOf(child);
    // Writable, and private to this child.
    EXPECT_EQ(Sh(child, absl::StrCat("echo ", i, " > /root/mine && ls /root")),
              "base\ndir\nmine\n");
  }
  EXPECT_EQ(nodes.size(), 2u) << "spread should use both nodes";
  for (size_t i = 0; i < group.members().size(); ++i) {
    EXPECT_EQ(Sh(*group.members()[i], "cat /root/mine"), absl::StrCat(i, "\n"));
  }
  // Second fork: layers already cached on both nodes.
  t0 = absl::Now();
  ASSERT_OK_AND_ASSIGN(auto again, client_->ForkSnapshot(snap2, kChildren));
  const absl::Duration fork_warm = absl::Now() - t0;
  std::cerr << "timing: snapshot " << snapshot1_time << " / " << snapshot2_time
            << " (second is a 2-layer chain), fork " << kChildren
            << " across nodes: first " << fork_cold << ", cached " << fork_warm
            << "\n";
  ASSERT_OK(again.Delete());
  ASSERT_OK(group.Delete());

  // Deleting the snapshot removes its dsec-fs directory (via the agents).
  ASSERT_OK(client_->DeleteSnapshot(snap2));
  const std::string gone = mounts_[0] + "/snapshots/" + snap2;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (stat(gone.c_str(), &st) == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_NE(stat(gone.c_str(), &st), 0) << gone << " still there";
}

TEST_F(SnapshotFsTest, ForkWorksAfterTheSnapshotsNodeDied) {
  ASSERT_OK_AND_ASSIGN(auto base, client_->CreateSandbox(SmallSpec()));
  EXPECT_EQ(Sh(*base, "echo survived > /root/state && echo ok"), "ok\n");
  ASSERT_OK_AND_ASSIGN(std::string snap, base->Snapshot());
  const std::string dead_node = NodeOf(*base);
  ASSERT_FALSE(dead_node.empty());
  ASSERT_TRUE(agents_[AgentIndex(dead_node)]->Stop(SIGTERM).ok());
  ASSERT_TRUE(WaitNodeState(dead_node, v1::NODE_STATE_DEAD, absl::Seconds(20)));
  ASSERT_OK_AND_ASSIGN(auto group, client_->ForkSnapshot(snap, 2));
  for (auto& child : group.members()) {
    EXPECT_NE(NodeOf(*child), dead_node);
    EXPECT_EQ(Sh(*child, "cat /root/state"), "survived\n");
  }
  ASSERT_OK(group.Delete());
}

TEST_F(SnapshotFsTest, BadIdsAndDamagedSnapshotsAreCleanErrors) {
  ASSERT_OK_AND_ASSIGN(auto base, client_->CreateSandbox(SmallSpec()));
  EXPECT_EQ(Sh(*base, "echo data > /root/file && echo ok"), "ok\n");
  ASSERT_OK_AND_ASSIGN(std::string snap, base->Snapshot());
  const std::string holder = NodeOf(*base);
  // The other node's agent, called directly (as the controller would).
  const int other = 1 - AgentIndex(holder);
  std::string endpoint;
  for (const auto& node : Nodes()) {
    if (node.node_id() == absl::StrCat("node-", other)) {
      endpoint = node.endpoint();
    }
  }
  ASSERT_FALSE(endpoint.empty());
  auto stub = v1::NodeAgent::NewStub(
      grpc::CreateChannel(endpoint, grpc::InsecureChannelCredentials()));
  int n = 0;
  auto start = [&](const std::string& snapshot_id) {
    v1::StartSandboxRequest req;
    req.set_sandbox_id(absl::StrCat("sb-direct-", n++));
    req.set_job_id("job");
    *req.mutable_spec() = SmallSpec();
    req.set_snapshot_id(snapshot_id);
    v1::StartSandboxResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    grpc::Status s = stub->StartSandbox(&ctx, req, &resp);
    return s;
  };
  EXPECT_EQ(start("../../etc").error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(start("snap/x").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  grpc::Status missing = start("snap-does-not-exist");
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(missing.error_message(), HasSubstr("not on dsec-fs"));

  // Damage copies of the snapshot's directory (made through the mount).
  const std::string src = mounts_[0] + "/snapshots/" + snap;
  auto copy_as = [&](const std::string& id) {
    const std::string dst = mounts_[0] + "/snapshots/" + id;
    dsec::testing::CommandResult r =
        dsec::testing::RunCommand("cp -a " + src + " " + dst + " 2>&1");
    EXPECT_EQ(r.exit_code, 0) << r.out;
    return dst;
  };
  // A file missing from a stored layer.
  const std::string lost = copy_as("snap-lostfile");
  ASSERT_EQ(unlink((lost + "/layers/0/root/file").c_str()), 0);
  grpc::Status s = start("snap-lostfile");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS) << s.error_message();
  // A manifest that does not parse (and one naming another snapshot: the
  // copy's manifest still says `snap`).
  const std::string garbage = copy_as("snap-garbage");
  std::ofstream(garbage + "/manifest.pb", std::ios::trunc)
      << "\xff\xff garbage";
  EXPECT_EQ(start("snap-garbage").error_code(), grpc::StatusCode::DATA_LOSS);
  copy_as("snap-renamed");
  EXPECT_EQ(start("snap-renamed").error_code(), grpc::StatusCode::DATA_LOSS);
  // A missing manifest.
  const std::string bare = copy_as("snap-nomanifest");
  ASSERT_EQ(unlink((bare + "/manifest.pb").c_str()), 0);
  EXPECT_EQ(start("snap-nomanifest").error_code(), grpc::StatusCode::DATA_LOSS);

  // The agent is fine and the intact snapshot still forks there.
  grpc::Status ok = start(snap);
  EXPECT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_TRUE(agents_[other]->running());
}

}  // namespace
}  // namespace dsec
