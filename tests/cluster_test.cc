// The cluster as separate processes on loopback: one dsec-controller and
// three dsec-agent processes on this machine. Faults are real: kill -9 of an
// agent, kill -9 and restart of the controller under load.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/testing/status_matchers.h"
#include "common/testing/subprocess.h"
#include "common/testing/test_util.h"
#include "common/token.h"
#include "ctl/rpc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sandbox/cgroup.h"

namespace dsec {
namespace {

using ::dsec::testing::Subprocess;
using ::testing::HasSubstr;

constexpr int kAgents = 3;

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DSEC_REQUIRE_HOST_FEATURE(geteuid() == 0 && sandbox::CgroupsAvailable(),
                              "root with cgroups");
    secret_ = dir_.Join("secret");
    ASSERT_TRUE(LoadOrCreateSecret(secret_, true).ok());
    controller_port_ = *dsec::testing::PickFreeLoopbackPort();
    StartController();
    for (int i = 0; i < kAgents; ++i) StartAgent(i);
    ctl::ConnOptions opts;
    opts.controller = controller();
    admin_ = std::make_unique<ctl::ControllerConn>(opts);
    ASSERT_TRUE(
        WaitNodes(kAgents, dsec::v1::NODE_STATE_READY, absl::Seconds(30)))
        << controller_->Log();
  }

  // Graceful stop: agents destroy their sandboxes and cgroups.
  void TearDown() override {
    for (auto& agent : agents_) {
      if (agent && agent->running()) {
        EXPECT_TRUE(agent->Stop(SIGTERM).ok());
      }
    }
    if (controller_ && controller_->running()) {
      EXPECT_TRUE(controller_->Stop(SIGTERM).ok());
    }
  }

  std::string controller() const {
    return absl::StrCat("127.0.0.1:", controller_port_);
  }

  void StartController() {
    auto p = Subprocess::Start(
        {dsec::testing::BinDir() + "/dsec-controller", "--listen", controller(),
         "--data_dir", dir_.Join("controller"), "--secret_file", secret_,
         "--heartbeat_timeout", "3s"},
        dir_.Join("controller.log"));
    ASSERT_TRUE(p.ok()) << p.status();
    controller_ = std::move(*p);
  }

  void StartAgent(int i) {
    if (agents_.size() <= static_cast<size_t>(i)) agents_.resize(i + 1);
    int port = *dsec::testing::PickFreeLoopbackPort();
    auto p = Subprocess::Start(
        {dsec::testing::BinDir() + "/dsec-agent", "--listen",
         absl::StrCat("127.0.0.1:", port), "--node_id",
         absl::StrCat("node-", i), "--controller", controller(),
         "--secret_file", secret_, "--state_dir",
         dir_.Join(absl::StrCat("agent-", i)), "--max_sandboxes", "200",
         "--warm_pool", "default:4"},
        dir_.Join(absl::StrCat("agent-", i, ".log")));
    ASSERT_TRUE(p.ok()) << p.status();
    agents_[i] = std::move(*p);
  }

  bool WaitNodes(int n, dsec::v1::NodeState state, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      dsec::v1::ListNodesResponse resp;
      auto c = admin_->Context(absl::Seconds(2));
      if (admin_->admin().ListNodes(c.get(), {}, &resp).ok()) {
        int count = 0;
        for (const auto& node : resp.nodes()) count += node.state() == state;
        if (count >= n) return true;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
    return false;
  }

  // A job and a connection that uses its key.
  std::unique_ptr<ctl::ControllerConn> NewJob(const std::string& name,
                                              int max_sandboxes,
                                              std::string* job_id) {
    dsec::v1::CreateJobRequest req;
    req.set_name(name);
    req.mutable_quota()->set_max_sandboxes(max_sandboxes);
    req.set_weight(1);
    req.mutable_lease_ttl()->set_seconds(600);
    dsec::v1::Job job;
    auto c = admin_->Context();
    grpc::Status s = admin_->jobs().CreateJob(c.get(), req, &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    *job_id = job.id();
    ctl::ConnOptions opts;
    opts.controller = controller();
    opts.api_key = job.api_key();
    return std::make_unique<ctl::ControllerConn>(opts);
  }

  std::vector<dsec::v1::SandboxHandle> CreateMany(ctl::ControllerConn& conn,
                                                  const std::string& job_id,
                                                  int count) {
    std::vector<dsec::v1::SandboxHandle> out;
    while (static_cast<int>(out.size()) < count) {
      dsec::v1::CreateSandboxesRequest req;
      req.set_count(std::min(64, count - static_cast<int>(out.size())));
      req.mutable_spec()->set_job_id(job_id);
      req.mutable_spec()->mutable_limits()->set_memory_bytes(128 << 20);
      req.mutable_spec()->mutable_limits()->set_cpu_millicores(10);
      req.mutable_placement()->set_spread(dsec::v1::GROUP_SPREAD_SPREAD);
      dsec::v1::CreateSandboxesResponse resp;
      auto c = conn.Context(absl::Seconds(120));
      grpc::Status s = conn.sandboxes().CreateSandboxes(c.get(), req, &resp);
      EXPECT_TRUE(s.ok()) << s.error_message();
      if (!s.ok()) break;
      for (const auto& h : resp.handles()) out.push_back(h);
    }
    return out;
  }

  static absl::StatusOr<dsec::v1::ExecResult> Echo(
      ctl::ControllerConn& conn, const dsec::v1::SandboxHandle& h,
      const std::string& text) {
    dsec::v1::ExecRequest req;
    req.mutable_argv()->add_args("/bin/echo");
    req.mutable_argv()->add_args(text);
    return ctl::RunExec(conn, h, req, absl::Seconds(30));
  }

  // Execs `echo <id>` in every handle from 8 threads (one connection each);
  // returns how many answered with their own id.
  int ExecAll(const ctl::ConnOptions& opts,
              const std::vector<dsec::v1::SandboxHandle>& handles) {
    std::atomic<int> ok{0}, next{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&] {
        ctl::ControllerConn conn(opts);
        for (int i = next++; i < static_cast<int>(handles.size()); i = next++) {
          auto r = Echo(conn, handles[i], handles[i].sandbox_id());
          if (r.ok() && r->status() == dsec::v1::EXEC_STATUS_EXITED &&
              r->stdout_data() == handles[i].sandbox_id() + "\n") {
            ++ok;
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    return ok;
  }

  std::map<std::string, dsec::v1::Sandbox> ListJob(ctl::ControllerConn& conn,
                                                   const std::string& job_id) {
    std::map<std::string, dsec::v1::Sandbox> out;
    dsec::v1::ListSandboxesRequest req;
    req.set_job_id(job_id);
    req.set_page_size(100);
    while (true) {
      dsec::v1::ListSandboxesResponse resp;
      auto c = conn.Context();
      grpc::Status s = conn.sandboxes().ListSandboxes(c.get(), req, &resp);
      EXPECT_TRUE(s.ok()) << s.error_message();
      if (!s.ok()) break;
      for (const auto& sb : resp.sandboxes()) out[sb.id()] = sb;
      if (resp.next_page_token().empty()) break;
      req.set_page_token(resp.next_page_token());
    }
    return out;
  }

  dsec::testing::TempDir dir_;
  std::string secret_;
  int controller_port_ = 0;
  std::unique_ptr<Subprocess> controller_;
  std::vector<std::unique_ptr<Subprocess>> agents_;
  std::unique_ptr<ctl::ControllerConn> admin_;
};

TEST_F(ClusterTest, ThreeHundredSandboxesThenAnAgentDiesAndOnlyItsAreLost) {
  std::string job_id;
  auto conn = NewJob("spread", 400, &job_id);
  std::vector<dsec::v1::SandboxHandle> handles = CreateMany(*conn, job_id, 300);
  ASSERT_EQ(handles.size(), 300u);
  std::map<std::string, int> per_node;
  for (const auto& h : handles) ++per_node[h.node_id()];
  EXPECT_EQ(per_node.size(), static_cast<size_t>(kAgents))
      << "group not spread";
  EXPECT_EQ(ExecAll(conn->options(), handles), 300);

  // Watch from now on; then kill -9 node-1's agent.
  std::atomic<int> lost_events{0};
  grpc::ClientContext watch_ctx;
  dsec::v1::WatchSandboxesRequest watch_req;
  watch_req.set_job_id(job_id);
  auto reader = conn->sandboxes().WatchSandboxes(&watch_ctx, watch_req);
  std::thread watcher([&] {
    dsec::v1::SandboxEvent ev;
    while (reader->Read(&ev)) {
      if (ev.sandbox().state() == dsec::v1::SANDBOX_STATE_LOST) ++lost_events;
    }
  });
  const int victims = per_node["node-1"];
  const absl::Time killed_at = absl::Now();
  ASSERT_TRUE(agents_[1]->Stop(SIGKILL).ok());
  while (lost_events < victims && absl::Now() - killed_at < absl::Seconds(20)) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(lost_events, victims);
  EXPECT_LT(absl::Now() - killed_at, absl::Seconds(10)) << "LOST reported late";
  watch_ctx.TryCancel();
  watcher.join();

  std::vector<dsec::v1::SandboxHandle> survivors;
  for (const auto& h : handles) {
    if (h.node_id() != "node-1") survivors.push_back(h);
  }
  EXPECT_EQ(ExecAll(conn->options(), survivors),
            static_cast<int>(survivors.size()));
  auto listed = ListJob(*conn, job_id);
  int lost = 0;
  for (const auto& [id, sb] : listed)
    lost += sb.state() == dsec::v1::SANDBOX_STATE_LOST;
  EXPECT_EQ(lost, victims);
}

TEST_F(ClusterTest,
       ControllerKilledAndRestartedUnderLoadForgetsAndLeaksNothing) {
  std::string job_id;
  auto conn = NewJob("restart", 200, &job_id);
  std::vector<dsec::v1::SandboxHandle> handles = CreateMany(*conn, job_id, 60);
  ASSERT_EQ(handles.size(), 60u);
  // Load on the data path while the controller dies: execs never touch it.
  std::atomic<bool> stop{false};
  std::atomic<int> exec_failures{0}, execs{0};
  std::thread load([&] {
    ctl::ControllerConn c(conn->options());
    for (int i = 0; !stop; i = (i + 1) % 60) {
      auto r = Echo(c, handles[i], handles[i].sandbox_id());
      ++execs;
      if (!r.ok() || r->stdout_data() != handles[i].sandbox_id() + "\n")
        ++exec_failures;
    }
  });
  ASSERT_TRUE(controller_->Stop(SIGKILL).ok());
  absl::SleepFor(absl::Seconds(1));
  StartController();
  ASSERT_TRUE(WaitNodes(kAgents, dsec::v1::NODE_STATE_READY, absl::Seconds(30)))
      << controller_->Log();
  stop = true;
  load.join();
  EXPECT_GT(execs, 0);
  EXPECT_EQ(exec_failures, 0) << "exec depends on the controller";

  auto listed = ListJob(*conn, job_id);
  EXPECT_EQ(listed.size(), 60u);
  for (const auto& h : handles) {
    ASSERT_TRUE(listed.count(h.sandbox_id())) << h.sandbox_id() << " forgotten";
    EXPECT_EQ(listed[h.sandbox_id()].state(), dsec::v1::SANDBOX_STATE_RUNNING);
  }
  // New work after the restart, then delete everything: agents end empty.
  std::vector<dsec::v1::SandboxHandle> more = CreateMany(*conn, job_id, 10);
  EXPECT_EQ(ExecAll(conn->options(), more), 10);
  dsec::v1::DeleteSandboxesRequest del;
  for (const auto& [id, sb] : ListJob(*conn, job_id)) del.add_sandbox_ids(id);
  del.set_wait(true);
  dsec::v1::DeleteSandboxesResponse resp;
  auto c = conn->Context();
  ASSERT_TRUE(conn->sandboxes().DeleteSandboxes(c.get(), del, &resp).ok());
  EXPECT_EQ(resp.deleted_ids_size(), 70);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  int live = -1;
  while (absl::Now() < deadline) {
    dsec::v1::ListNodesResponse nodes;
    auto nc = admin_->Context();
    ASSERT_TRUE(admin_->admin().ListNodes(nc.get(), {}, &nodes).ok());
    live = 0;
    for (const auto& n : nodes.nodes()) live += n.live_sandboxes();
    if (live == 0) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  EXPECT_EQ(live, 0) << "sandboxes leaked on agents";
}

TEST_F(ClusterTest, BadRequestsGetTheRightCodesAndNothingCrashes) {
  std::string job_a, job_b;
  auto a = NewJob("job-a", 2, &job_a);
  auto b = NewJob("job-b", 2, &job_b);
  std::vector<dsec::v1::SandboxHandle> mine = CreateMany(*a, job_a, 2);
  ASSERT_EQ(mine.size(), 2u);

  // Quota: a third sandbox is refused at once with a reason.
  dsec::v1::CreateSandboxRequest one;
  one.mutable_spec()->set_job_id(job_a);
  dsec::v1::CreateSandboxResponse created;
  {
    auto c = a->Context();
    grpc::Status s = a->sandboxes().CreateSandbox(c.get(), one, &created);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
        << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("quota"));
  }
  // Wrong API key.
  {
    ctl::ConnOptions bad = a->options();
    bad.api_key = "not-a-key";
    ctl::ControllerConn conn(bad);
    auto c = conn.Context();
    grpc::Status s = conn.sandboxes().CreateSandbox(c.get(), one, &created);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  // Another job's sandbox.
  {
    dsec::v1::GetSandboxRequest req;
    req.set_sandbox_id(mine[0].sandbox_id());
    dsec::v1::Sandbox sb;
    auto c = b->Context();
    grpc::Status s = b->sandboxes().GetSandbox(c.get(), req, &sb);
    EXPECT_TRUE(s.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
                s.error_code() == grpc::StatusCode::NOT_FOUND)
        << s.error_code();
  }
  // Malformed spec and oversized batch.
  {
    dsec::v1::CreateSandboxesRequest req;
    req.mutable_spec()->set_job_id(job_b);
    req.mutable_spec()->mutable_limits()->set_memory_bytes(-5);
    req.set_count(1);
    dsec::v1::CreateSandboxesResponse resp;
    auto c = b->Context();
    EXPECT_EQ(b->sandboxes().CreateSandboxes(c.get(), req, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
    req.mutable_spec()->mutable_limits()->set_memory_bytes(0);
    req.set_count(1 << 20);
    auto c2 = b->Context();
    EXPECT_EQ(b->sandboxes().CreateSandboxes(c2.get(), req, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  // Tokens on the agent: forged, expired, for another sandbox.
  {
    dsec::v1::SandboxHandle forged = mine[0];
    forged.set_token(forged.token() + "x");
    auto r = Echo(*a, forged, "x");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated)
        << r.status();
    auto signer = TokenSigner::Create(*LoadOrCreateSecret(secret_, false));
    dsec::v1::SandboxHandle expired = mine[0];
    expired.set_token(*signer->Sign(
        {mine[0].sandbox_id(), job_a, absl::Now() - absl::Seconds(1)}));
    r = Echo(*a, expired, "x");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated)
        << r.status();
    dsec::v1::SandboxHandle swapped = mine[0];
    swapped.set_token(mine[1].token());
    r = Echo(*a, swapped, "x");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied)
        << r.status();
  }
  // Everyone still alive.
  EXPECT_TRUE(controller_->running());
  for (auto& agent : agents_) EXPECT_TRUE(agent->running());
  EXPECT_EQ(ExecAll(a->options(), mine), 2);
}

}  // namespace
}  // namespace dsec
