#include "client/testing/test_cluster.h"

#include <signal.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/testing/test_util.h"
#include "common/token.h"
#include "ctl/rpc.h"

namespace dsec::client::testing {

using ::dsec::testing::Subprocess;

absl::StatusOr<std::unique_ptr<TestCluster>> TestCluster::Start(
    const TestClusterOptions& options) {
  std::unique_ptr<TestCluster> c(new TestCluster());
  c->options_ = options;
  c->secret_ = options.dir + "/secret";
  RETURN_IF_ERROR(LoadOrCreateSecret(c->secret_, true).status());
  ASSIGN_OR_RETURN(c->controller_port_, dsec::testing::PickFreeLoopbackPort());
  RETURN_IF_ERROR(c->StartController());
  c->agents_.resize(options.agents);
  for (int i = 0; i < options.agents; ++i) RETURN_IF_ERROR(c->StartAgent(i));
  RETURN_IF_ERROR(c->WaitReady(options.agents, absl::Seconds(30)));
  return c;
}

TestCluster::~TestCluster() {
  for (auto& a : agents_) {
    if (a && a->running()) (void)a->Stop(SIGTERM);
  }
  if (controller_ && controller_->running()) (void)controller_->Stop(SIGTERM);
}

std::string TestCluster::controller() const {
  return absl::StrCat("127.0.0.1:", controller_port_);
}

std::string TestCluster::NodeId(int i) { return absl::StrCat("node-", i); }

absl::Status TestCluster::StartController() {
  ASSIGN_OR_RETURN(
      controller_,
      Subprocess::Start(
          {dsec::testing::BinDir() + "/dsec-controller", "--listen",
           controller(), "--data_dir", options_.dir + "/controller",
           "--secret_file", secret_, "--heartbeat_timeout", "3s"},
          options_.dir + "/controller.log"));
  return absl::OkStatus();
}

absl::Status TestCluster::StartAgent(int i) {
  ASSIGN_OR_RETURN(int port, dsec::testing::PickFreeLoopbackPort());
  ASSIGN_OR_RETURN(
      agents_[i],
      Subprocess::Start(
          {dsec::testing::BinDir() + "/dsec-agent", "--listen",
           absl::StrCat("127.0.0.1:", port), "--node_id", NodeId(i),
           "--controller", controller(), "--secret_file", secret_,
           "--state_dir", absl::StrCat(options_.dir, "/agent-", i),
           "--max_sandboxes", absl::StrCat(options_.max_sandboxes_per_agent),
           "--warm_pool", absl::StrCat("default:", options_.warm_pool)},
          absl::StrCat(options_.dir, "/agent-", i, ".log")));
  return absl::OkStatus();
}

void TestCluster::KillAgent(int i) { (void)agents_[i]->Stop(SIGKILL); }

absl::Status TestCluster::RestartAgent(int i) {
  if (agents_[i]->running()) (void)agents_[i]->Stop(SIGTERM);
  return StartAgent(i);
}

absl::Status TestCluster::WaitReady(int n, absl::Duration timeout) {
  ctl::ControllerConn admin({.controller = controller()});
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    dsec::v1::ListNodesResponse resp;
    auto ctx = admin.Context(absl::Seconds(2));
    if (admin.admin().ListNodes(ctx.get(), {}, &resp).ok()) {
      int ready = 0;
      for (const auto& node : resp.nodes()) {
        ready += node.state() == dsec::v1::NODE_STATE_READY;
      }
      if (ready >= n) return absl::OkStatus();
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(
      absl::StrCat(n, " nodes not ready in time\n", Logs()));
}

absl::StatusOr<std::shared_ptr<Client>> TestCluster::NewJobClient(
    const std::string& name, int max_sandboxes, ClientOptions base) {
  ctl::ControllerConn admin({.controller = controller()});
  dsec::v1::CreateJobRequest req;
  req.set_name(name);
  req.mutable_quota()->set_max_sandboxes(max_sandboxes);
  req.set_weight(1);
  req.mutable_lease_ttl()->set_seconds(600);
  dsec::v1::Job job;
  auto ctx = admin.Context();
  grpc::Status s = admin.jobs().CreateJob(ctx.get(), req, &job);
  if (!s.ok()) return ctl::RpcError(s, "create job");
  base.controller = controller();
  base.api_key = job.api_key();
  base.job_id = job.id();
  return Client::Create(base);
}

std::string TestCluster::Logs() const {
  std::string out = "--- controller\n" + controller_->Log();
  for (size_t i = 0; i < agents_.size(); ++i) {
    if (agents_[i])
      absl::StrAppend(&out, "--- agent ", i, "\n", agents_[i]->Log());
  }
  return out;
}

}  // namespace dsec::client::testing
