// Service tests: a real ControllerServer on loopback with fake agents
// (in-process gRPC servers implementing NodeAgent and SandboxRuntime.Snapshot
// that record calls and can refuse).
#include "controller/controller_server.h"

#include <atomic>
#include <map>
#include <set>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/grpc_status.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "common/token.h"
#include "dsec/v1/agent_service.grpc.pb.h"
#include "dsec/v1/job_service.grpc.pb.h"
#include "dsec/v1/node_service.grpc.pb.h"
#include "dsec/v1/sandbox_service.grpc.pb.h"
#include "gtest/gtest.h"

namespace dsec::controller {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;
using ::testing::HasSubstr;

constexpr char kSecret[] = "0123456789abcdef0123456789abcdef";
constexpr char kAdminKey[] = "admin-secret-key";
constexpr char kNodeKey[] = "node-secret-key";
constexpr int64_t kGiB = int64_t{1} << 30;

class FakeAgent final : public v1::NodeAgent::Service,
                        public v1::SandboxRuntime::Service {
 public:
  FakeAgent() {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                       &port_);
    b.RegisterService(static_cast<v1::NodeAgent::Service*>(this));
    b.RegisterService(static_cast<v1::SandboxRuntime::Service*>(this));
    server_ = b.BuildAndStart();
  }
  ~FakeAgent() override { server_->Shutdown(); }

  std::string endpoint() const { return "127.0.0.1:" + std::to_string(port_); }

  grpc::Status StartSandbox(grpc::ServerContext* ctx,
                            const v1::StartSandboxRequest* req,
                            v1::StartSandboxResponse* resp) override {
    absl::MutexLock l(&mu_);
    start_calls_++;
    auto key = ctx->client_metadata().find("x-dsec-node-key");
    if (key == ctx->client_metadata().end() || key->second != kNodeKey) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "node key");
    }
    if (refuse_)
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "node full");
    running_[req->sandbox_id()] = req->job_id();
    resp->set_state(v1::SANDBOX_STATE_RUNNING);
    return grpc::Status::OK;
  }
  grpc::Status StopSandboxes(grpc::ServerContext*,
                             const v1::StopSandboxesRequest* req,
                             v1::StopSandboxesResponse* resp) override {
    absl::MutexLock l(&mu_);
    for (const auto& id : req->sandbox_ids()) {
      stopped_.insert(id);
      if (running_.erase(id)) {
        resp->add_stopped_ids(id);
      } else {
        resp->add_not_found_ids(id);
      }
    }
    return grpc::Status::OK;
  }
  grpc::Status ListNodeSandboxes(grpc::ServerContext*,
                                 const v1::ListNodeSandboxesRequest*,
                                 v1::ListNodeSandboxesResponse* resp) override {
    absl::MutexLock l(&mu_);
    for (const auto& [id, job] : running_) {
      auto* r = resp->add_sandboxes();
      r->set_sandbox_id(id);
      r->set_job_id(job);
      r->set_state(v1::SANDBOX_STATE_RUNNING);
    }
    return grpc::Status::OK;
  }
  grpc::Status Snapshot(grpc::ServerContext*, const v1::SnapshotRequest* req,
                        v1::SnapshotResponse* resp) override {
    auto signer = TokenSigner::Create(kSecret);
    if (!signer->VerifyFor(req->token(), req->sandbox_id()).ok()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "token");
    }
    resp->mutable_snapshot()->set_id(absl::StrCat(
        "snap-", req->sandbox_id().substr(3), "-", snapshots_.fetch_add(1)));
    resp->mutable_snapshot()->set_size_bytes(1000);
    resp->mutable_snapshot()->set_layer_ref("/layers/x");
    resp->mutable_snapshot()->add_layers("/layers/x");
    if (fs_backed_.load()) {
      resp->mutable_snapshot()->set_fs_path(
          absl::StrCat("/snapshots/", resp->snapshot().id()));
    }
    return grpc::Status::OK;
  }

  std::atomic<int> snapshots_{0};
  // Snapshots report their layers written back to dsec-fs (fs_path set).
  std::atomic<bool> fs_backed_{false};

  void set_refuse(bool r) {
    absl::MutexLock l(&mu_);
    refuse_ = r;
  }
  size_t running_count() {
    absl::MutexLock l(&mu_);
    return running_.size();
  }
  std::map<std::string, std::string> running() {
    absl::MutexLock l(&mu_);
    return running_;
  }
  void set_running(std::map<std::string, std::string> r) {
    absl::MutexLock l(&mu_);
    running_ = std::move(r);
  }
  bool stopped(const std::string& id) {
    absl::MutexLock l(&mu_);
    return stopped_.contains(id);
  }
  int start_calls() {
    absl::MutexLock l(&mu_);
    return start_calls_;
  }

 private:
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  absl::Mutex mu_;
  bool refuse_ = false;
  int start_calls_ = 0;
  std::map<std::string, std::string> running_;
  std::set<std::string> stopped_;
};

class ControllerTest : public ::testing::Test {
 protected:
  void StartController(absl::Duration hb_timeout = absl::Seconds(60),
                       size_t watch_history = 100000) {
    ControllerOptions o;
    o.watch_history = watch_history;
    o.data_dir = dir_.Join("db");
    o.token_secret = kSecret;
    o.node_key = kNodeKey;
    o.admin_key = kAdminKey;
    o.heartbeat_timeout = hb_timeout;
    o.min_lease_ttl = absl::Seconds(1);
    o.agent_call_timeout = absl::Seconds(5);
    auto c = ControllerServer::Create(o);
    ASSERT_THAT(c, IsOk());
    controller_ = std::move(*c);
    auto ch =
        grpc::CreateChannel("127.0.0.1:" + std::to_string(controller_->port()),
                            grpc::InsecureChannelCredentials());
    sandboxes_ = v1::Sandboxes::NewStub(ch);
    jobs_ = v1::Jobs::NewStub(ch);
    registry_ = v1::NodeRegistry::NewStub(ch);
    admin_ = v1::Admin::NewStub(ch);
  }

  std::unique_ptr<grpc::ClientContext> Ctx(
      const std::string& key, absl::Duration deadline = absl::Seconds(30)) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!key.empty()) ctx->AddMetadata("authorization", "Bearer " + key);
    if (key == kNodeKey)
      ctx = std::make_unique<grpc::ClientContext>(),
      ctx->AddMetadata("x-dsec-node-key", kNodeKey);
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    return ctx;
  }

  // Creates a job; returns {id, key}.
  std::pair<std::string, std::string> MakeJob(
      const std::string& name, int64_t max_sandboxes = 0,
      absl::Duration lease = absl::ZeroDuration()) {
    v1::CreateJobRequest req;
    req.set_name(name);
    req.mutable_quota()->set_max_sandboxes(max_sandboxes);
    req.mutable_lease_ttl()->set_seconds(absl::ToInt64Seconds(lease));
    v1::Job job;
    auto ctx = Ctx(kAdminKey);
    grpc::Status s = jobs_->CreateJob(ctx.get(), req, &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return {job.id(), job.api_key()};
  }

  FakeAgent* AddNode(const std::string& id, int32_t max_sandboxes = 100,
                     std::map<std::string, std::string> labels = {}) {
    agents_[id] = std::make_unique<FakeAgent>();
    v1::RegisterNodeRequest req;
    req.set_node_id(id);
    req.set_endpoint(agents_[id]->endpoint());
    req.mutable_capacity()->set_cpu_millicores(1000000);
    req.mutable_capacity()->set_memory_bytes(1000 * kGiB);
    req.mutable_capacity()->set_max_sandboxes(max_sandboxes);
    for (auto& [k, v] : labels) (*req.mutable_labels())[k] = v;
    v1::RegisterNodeResponse resp;
    auto ctx = Ctx(kNodeKey);
    grpc::Status s = registry_->RegisterNode(ctx.get(), req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return agents_[id].get();
  }

  absl::StatusOr<v1::CreateSandboxesResponse> CreateBatch(
      const std::string& key, int count, int min_count = 0,
      absl::Duration qt = absl::ZeroDuration(),
      grpc::ClientContext* ctx_out = nullptr) {
    v1::CreateSandboxesRequest req;
    req.set_count(count);
    req.set_min_count(min_count);
    req.mutable_queue_timeout()->set_nanos(
        static_cast<int32_t>(absl::ToInt64Nanoseconds(qt) % 1000000000));
    req.mutable_queue_timeout()->set_seconds(absl::ToInt64Seconds(qt));
    (*req.mutable_spec()->mutable_labels())["task"] = "t1";
    v1::CreateSandboxesResponse resp;
    auto ctx = Ctx(key);
    grpc::Status s =
        sandboxes_->CreateSandboxes(ctx_out ? ctx_out : ctx.get(), req, &resp);
    if (!s.ok()) return FromGrpcStatus(s);
    return resp;
  }

  absl::StatusOr<v1::Sandbox> Get(const std::string& key,
                                  const std::string& id) {
    v1::GetSandboxRequest req;
    req.set_sandbox_id(id);
    v1::Sandbox sb;
    auto ctx = Ctx(key);
    grpc::Status s = sandboxes_->GetSandbox(ctx.get(), req, &sb);
    if (!s.ok()) return FromGrpcStatus(s);
    return sb;
  }

  absl::Status Delete(const std::string& key,
                      const std::vector<std::string>& ids) {
    v1::DeleteSandboxesRequest req;
    for (const auto& id : ids) req.add_sandbox_ids(id);
    v1::DeleteSandboxesResponse resp;
    auto ctx = Ctx(key);
    return FromGrpcStatus(sandboxes_->DeleteSandboxes(ctx.get(), req, &resp));
  }

  // Polls until `pred` or timeout.
  template <typename Pred>
  bool Eventually(Pred pred, absl::Duration timeout = absl::Seconds(5)) {
    absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      if (pred()) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return pred();
  }

  dsec::testing::TempDir dir_;
  std::map<std::string, std::unique_ptr<FakeAgent>> agents_;
  std::unique_ptr<ControllerServer> controller_;
  std::unique_ptr<v1::Sandboxes::Stub> sandboxes_;
  std::unique_ptr<v1::Jobs::Stub> jobs_;
  std::unique_ptr<v1::NodeRegistry::Stub> registry_;
  std::unique_ptr<v1::Admin::Stub> admin_;
};

TEST_F(ControllerTest, BatchOf64SpreadsOverThreeNodesWithValidTokens) {
  StartController();
  auto [job, key] = MakeJob("grpo");
  AddNode("n1");
  AddNode("n2");
  AddNode("n3");
  ASSERT_OK_AND_ASSIGN(auto resp, CreateBatch(key, 64));
  ASSERT_EQ(resp.handles_size(), 64);
  EXPECT_FALSE(resp.group_id().empty());
  for (const auto& [id, a] : agents_) {
    EXPECT_GE(a->running_count(), 15u) << id;
    EXPECT_LE(a->running_count(), 30u) << id;
  }
  ASSERT_OK_AND_ASSIGN(auto signer, TokenSigner::Create(kSecret));
  for (const auto& h : resp.handles()) {
    ASSERT_OK_AND_ASSIGN(auto claims,
                         signer.VerifyFor(h.token(), h.sandbox_id()));
    EXPECT_EQ(claims.job_id, job);
    EXPECT_EQ(h.agent_endpoint(), agents_[h.node_id()]->endpoint());
  }
  ASSERT_OK_AND_ASSIGN(auto sb, Get(key, resp.handles(0).sandbox_id()));
  EXPECT_EQ(sb.state(), v1::SANDBOX_STATE_RUNNING);
  EXPECT_EQ(sb.group_id(), resp.group_id());
}

TEST_F(ControllerTest, RefusedStartIsPlacedElsewhere) {
  StartController();
  auto [job, key] = MakeJob("refuse");
  FakeAgent* bad = AddNode("bad");
  FakeAgent* good = AddNode("good");
  bad->set_refuse(true);
  ASSERT_OK_AND_ASSIGN(auto resp, CreateBatch(key, 8));
  EXPECT_EQ(resp.handles_size(), 8);
  EXPECT_EQ(good->running_count(), 8u);
  EXPECT_EQ(bad->running_count(), 0u);
  EXPECT_GT(bad->start_calls(), 0);
  for (const auto& h : resp.handles()) EXPECT_EQ(h.node_id(), "good");
}

TEST_F(ControllerTest, QuotaExceededIsResourceExhaustedWithMessage) {
  StartController();
  auto [job, key] = MakeJob("small", /*max_sandboxes=*/2);
  AddNode("n1");
  EXPECT_THAT(
      CreateBatch(key, 3),
      StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("quota")));
  ASSERT_THAT(CreateBatch(key, 2), IsOk());
  EXPECT_THAT(CreateBatch(key, 1),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("max_sandboxes")));
}

TEST_F(ControllerTest, QueuedCreateSucceedsWhenCapacityFrees) {
  StartController();
  auto [job, key] = MakeJob("queue");
  AddNode("n1", /*max_sandboxes=*/1);
  ASSERT_OK_AND_ASSIGN(auto first, CreateBatch(key, 1));
  absl::StatusOr<v1::CreateSandboxesResponse> second;
  std::thread t([&] { second = CreateBatch(key, 1, 0, absl::Seconds(10)); });
  absl::SleepFor(absl::Milliseconds(300));
  v1::ClusterStats stats;
  auto ctx = Ctx(kAdminKey);
  ASSERT_TRUE(
      admin_->GetClusterStats(ctx.get(), v1::GetClusterStatsRequest(), &stats)
          .ok());
  EXPECT_EQ(stats.queued_requests(), 1);
  ASSERT_OK(Delete(key, {first.handles(0).sandbox_id()}));
  t.join();
  ASSERT_THAT(second, IsOk());
  EXPECT_EQ(second->handles_size(), 1);
}

TEST_F(ControllerTest, QueueTimeoutGivesShortfall) {
  StartController();
  auto [job, key] = MakeJob("timeout");
  AddNode("n1", /*max_sandboxes=*/2);
  ASSERT_THAT(CreateBatch(key, 2), IsOk());
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + key);
  absl::Time start = absl::Now();
  auto r = CreateBatch(key, 2, 0, absl::Milliseconds(300), &ctx);
  EXPECT_THAT(
      r, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("capacity")));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(250));
  auto trailer = ctx.GetServerTrailingMetadata().find("dsec-shortfall-bin");
  ASSERT_NE(trailer, ctx.GetServerTrailingMetadata().end());
  v1::CapacityShortfall sf;
  ASSERT_TRUE(sf.ParseFromString(
      std::string(trailer->second.data(), trailer->second.size())));
  EXPECT_EQ(sf.reason(), v1::CapacityShortfall::REASON_CAPACITY);
  EXPECT_EQ(sf.requested_count(), 2);
  EXPECT_EQ(sf.sandboxes_short(), 2);
}

TEST_F(ControllerTest, MinCountAcceptsPartialBatch) {
  StartController();
  auto [job, key] = MakeJob("partial");
  AddNode("n1", /*max_sandboxes=*/3);
  ASSERT_OK_AND_ASSIGN(auto resp, CreateBatch(key, 5, 2));
  EXPECT_EQ(resp.handles_size(), 3);
  EXPECT_EQ(resp.shortfall().placed_count(), 3);
  EXPECT_EQ(resp.shortfall().sandboxes_short(), 2);
}

TEST_F(ControllerTest, LeaseLapseDeletesSandboxesAndBlocksCreates) {
  StartController();
  auto [job, key] = MakeJob("leased", 0, absl::Seconds(1));
  FakeAgent* a = AddNode("n1");
  ASSERT_OK_AND_ASSIGN(auto resp, CreateBatch(key, 2));
  std::string id = resp.handles(0).sandbox_id();
  ASSERT_TRUE(Eventually([&] {
    auto sb = Get(key, id);
    return sb.ok() && sb->state() == v1::SANDBOX_STATE_TERMINATED;
  }));
  ASSERT_OK_AND_ASSIGN(auto sb, Get(key, id));
  EXPECT_EQ(sb.state_reason(), "job lease expired");
  EXPECT_TRUE(a->stopped(id));
  EXPECT_EQ(a->running_count(), 0u);
  EXPECT_THAT(CreateBatch(key, 1),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  v1::RenewLeaseRequest req;
  req.set_job_id(job);
  v1::RenewLeaseResponse rr;
  auto ctx = Ctx(key);
  ASSERT_TRUE(jobs_->RenewLease(ctx.get(), req, &rr).ok());
  EXPECT_THAT(CreateBatch(key, 1), IsOk());
}

TEST_F(ControllerTest, HeartbeatTimeoutMarksLostAndEmitsWatchEvent) {
  StartController(absl::Seconds(1));
  auto [job, key] = MakeJob("lost");
  AddNode("n1");
  ASSERT_OK_AND_ASSIGN(auto resp, CreateBatch(key, 1));
  std::string id = resp.handles(0).sandbox_id();
  auto ctx = Ctx(key, absl::Seconds(10));
  v1::WatchSandboxesRequest wreq;
  auto reader = sandboxes_->WatchSandboxes(ctx.get(), wreq);
  v1::SandboxEvent ev;
  bool lost = false;
  absl::Time start = absl::Now();
  while (reader->Read(&ev)) {
    if (ev.type() == v1::SandboxEvent::TYPE_LOST && ev.sandbox().id() == id) {
      lost = true;
      break;
    }
  }
  ctx->TryCancel();
  EXPECT_TRUE(lost);
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
  ASSERT_OK_AND_ASSIGN(auto sb, Get(key, id));
  EXPECT_EQ(sb.state(), v1::SANDBOX_STATE_LOST);
  EXPECT_THAT(sb.state_reason(), HasSubstr("n1"));
}

TEST_F(ControllerTest, WatchResumesFromResourceVersionAndRejectsTooOld) {
  StartController();
  auto [job, key] = MakeJob("watch");
  AddNode("n1");
  ASSERT_THAT(CreateBatch(key, 1), IsOk());
  v1::ListSandboxesRequest lreq;
  v1::ListSandboxesResponse lresp;
  auto lctx = Ctx(key);
  ASSERT_TRUE(sandboxes_->ListSandboxes(lctx.get(), lreq, &lresp).ok());
  EXPECT_EQ(lresp.sandboxes_size(), 1);
  ASSERT_OK_AND_ASSIGN(auto resp, CreateBatch(key, 1));
  auto ctx = Ctx(key, absl::Seconds(10));
  v1::WatchSandboxesRequest wreq;
  wreq.set_resource_version(lresp.resource_version());
  auto reader = sandboxes_->WatchSandboxes(ctx.get(), wreq);
  v1::SandboxEvent ev;
  ASSERT_TRUE(reader->Read(&ev));
  EXPECT_EQ(ev.type(), v1::SandboxEvent::TYPE_CREATED);
  ASSERT_TRUE(reader->Read(&ev));
  EXPECT_EQ(ev.type(), v1::SandboxEvent::TYPE_STATE_CHANGED);
  EXPECT_EQ(ev.sandbox().state(), v1::SANDBOX_STATE_RUNNING);
  ctx->TryCancel();
  (void)reader->Finish();

  // The history survives a controller restart: resuming from the same
  // version gets the same events, nothing lost or repeated.
  controller_->Shutdown();
  controller_.reset();
  StartController();
  {
    auto rctx = Ctx(key, absl::Seconds(10));
    auto rreader = sandboxes_->WatchSandboxes(rctx.get(), wreq);
    ASSERT_TRUE(rreader->Read(&ev));
    EXPECT_EQ(ev.type(), v1::SandboxEvent::TYPE_CREATED);
    EXPECT_EQ(ev.sandbox().id(), resp.handles(0).sandbox_id());
    ASSERT_TRUE(rreader->Read(&ev));
    EXPECT_EQ(ev.sandbox().state(), v1::SANDBOX_STATE_RUNNING);
    ASSERT_TRUE(rreader->Read(&ev));
    EXPECT_EQ(ev.type(), v1::SandboxEvent::TYPE_BOOKMARK);
    rctx->TryCancel();
    (void)rreader->Finish();
  }

  // Older than the retained history (one event kept): OUT_OF_RANGE.
  controller_->Shutdown();
  controller_.reset();
  StartController(absl::Seconds(60), /*watch_history=*/1);
  auto octx = Ctx(key);
  v1::WatchSandboxesRequest old;
  old.set_resource_version(1);
  auto oreader = sandboxes_->WatchSandboxes(octx.get(), old);
  EXPECT_FALSE(oreader->Read(&ev));
  EXPECT_EQ(oreader->Finish().error_code(), grpc::StatusCode::OUT_OF_RANGE);
}

TEST_F(ControllerTest, RestartRecoversStateAndReconciles) {
  StartController();
  auto [job, key] = MakeJob("restart");
  FakeAgent* a = AddNode("n1");
  ASSERT_OK_AND_ASSIGN(auto resp, CreateBatch(key, 2));
  std::string keep = resp.handles(0).sandbox_id();
  std::string gone = resp.handles(1).sandbox_id();
  controller_->Shutdown();
  controller_.reset();
  // While the controller was down: one sandbox vanished, a stray appeared.
  a->set_running({{keep, job}, {"sb-stray", job}});
  StartController();
  ASSERT_OK_AND_ASSIGN(auto sb, Get(key, keep));  // job key still valid
  EXPECT_EQ(sb.state(), v1::SANDBOX_STATE_RUNNING);
  v1::HeartbeatRequest hb;
  hb.set_node_id("n1");
  hb.set_full_report(true);
  for (const auto& id : {keep, std::string("sb-stray")}) {
    auto* r = hb.add_sandboxes();
    r->set_sandbox_id(id);
    r->set_state(v1::SANDBOX_STATE_RUNNING);
  }
  v1::HeartbeatResponse hresp;
  auto ctx = Ctx(kNodeKey);
  ASSERT_TRUE(registry_->Heartbeat(ctx.get(), hb, &hresp).ok());
  ASSERT_EQ(hresp.destroy_sandbox_ids_size(), 1);
  EXPECT_EQ(hresp.destroy_sandbox_ids(0), "sb-stray");
  ASSERT_OK_AND_ASSIGN(auto lost, Get(key, gone));
  EXPECT_EQ(lost.state(), v1::SANDBOX_STATE_LOST);
  ASSERT_OK_AND_ASSIGN(sb, Get(key, keep));
  EXPECT_EQ(sb.state(), v1::SANDBOX_STATE_RUNNING);
  v1::GetJobRequest jreq;
  jreq.set_job_id(job);
  v1::Job j;
  auto jctx = Ctx(key);
  ASSERT_TRUE(jobs_->GetJob(jctx.get(), jreq, &j).ok());
  EXPECT_EQ(j.usage().sandboxes(), 1);
}

TEST_F(ControllerTest, AuthErrors) {
  StartController();
  auto [job1, key1] = MakeJob("one");
  auto [job2, key2] = MakeJob("two");
  AddNode("n1");
  EXPECT_THAT(CreateBatch("wrong-key", 1),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(CreateBatch("", 1), StatusIs(absl::StatusCode::kUnauthenticated));
  ASSERT_OK_AND_ASSIGN(auto resp, CreateBatch(key1, 1));
  std::string id = resp.handles(0).sandbox_id();
  EXPECT_THAT(Get(key2, id), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(Get(kAdminKey, id), IsOk());
  // A job key naming another job.
  v1::CreateSandboxRequest req;
  req.mutable_spec()->set_job_id(job1);
  v1::CreateSandboxResponse cr;
  auto ctx = Ctx(key2);
  EXPECT_EQ(sandboxes_->CreateSandbox(ctx.get(), req, &cr).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // Job keys cannot create jobs.
  v1::CreateJobRequest jreq;
  jreq.set_name("three");
  v1::Job j;
  auto jctx = Ctx(key1);
  EXPECT_EQ(jobs_->CreateJob(jctx.get(), jreq, &j).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // Delete of another job's sandbox: not found, never an error.
  v1::DeleteSandboxesRequest dreq;
  dreq.add_sandbox_ids(id);
  v1::DeleteSandboxesResponse dresp;
  auto dctx = Ctx(key2);
  ASSERT_TRUE(sandboxes_->DeleteSandboxes(dctx.get(), dreq, &dresp).ok());
  EXPECT_EQ(dresp.not_found_ids_size(), 1);
}

TEST_F(ControllerTest, MalformedRequestsAreInvalidArgument) {
  StartController();
  auto [job, key] = MakeJob("bad");
  AddNode("n1");
  EXPECT_THAT(CreateBatch(key, 5000),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(CreateBatch(key, 0),
              StatusIs(absl::StatusCode::kInvalidArgument));
  v1::CreateSandboxRequest req;
  (*req.mutable_spec()->mutable_labels())["bad label!"] = "x";
  v1::CreateSandboxResponse resp;
  auto ctx = Ctx(key);
  EXPECT_EQ(sandboxes_->CreateSandbox(ctx.get(), req, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::CreateSandboxRequest host;
  host.mutable_spec()->set_network_mode(v1::NETWORK_MODE_HOST);
  auto hctx = Ctx(key);
  EXPECT_EQ(sandboxes_->CreateSandbox(hctx.get(), host, &resp).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(ControllerTest, RequestIdIsIdempotent) {
  StartController();
  auto [job, key] = MakeJob("idem");
  AddNode("n1");
  v1::CreateSandboxRequest req;
  req.set_request_id("r1");
  v1::CreateSandboxResponse a, b;
  auto c1 = Ctx(key);
  ASSERT_TRUE(sandboxes_->CreateSandbox(c1.get(), req, &a).ok());
  auto c2 = Ctx(key);
  ASSERT_TRUE(sandboxes_->CreateSandbox(c2.get(), req, &b).ok());
  EXPECT_EQ(a.handle().sandbox_id(), b.handle().sandbox_id());
  (*req.mutable_spec()->mutable_labels())["x"] = "y";
  auto c3 = Ctx(key);
  EXPECT_EQ(sandboxes_->CreateSandbox(c3.get(), req, &b).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
}

TEST_F(ControllerTest, CordonAndDrain) {
  StartController();
  auto [job, key] = MakeJob("drain");
  FakeAgent* a1 = AddNode("n1");
  AddNode("n2");
  v1::CordonNodeRequest creq;
  creq.set_node_id("n2");
  creq.set_cordon(true);
  v1::Node node;
  auto ctx = Ctx(kAdminKey);
  ctx->AddMetadata("x-dsec-admin-key", kAdminKey);
  ASSERT_TRUE(admin_->CordonNode(ctx.get(), creq, &node).ok());
  EXPECT_EQ(node.state(), v1::NODE_STATE_CORDONED);
  ASSERT_OK_AND_ASSIGN(auto resp, CreateBatch(key, 4));
  for (const auto& h : resp.handles()) EXPECT_EQ(h.node_id(), "n1");
  v1::DrainNodeRequest dreq;
  dreq.set_node_id("n1");
  auto dctx = Ctx(kAdminKey);
  ASSERT_TRUE(admin_->DrainNode(dctx.get(), dreq, &node).ok());
  EXPECT_EQ(node.state(), v1::NODE_STATE_DRAINING);
  EXPECT_EQ(a1->running_count(), 0u);
  ASSERT_OK_AND_ASSIGN(auto sb, Get(key, resp.handles(0).sandbox_id()));
  EXPECT_EQ(sb.state(), v1::SANDBOX_STATE_TERMINATED);
  EXPECT_EQ(sb.state_reason(), "node drained");
  EXPECT_THAT(CreateBatch(key, 1),
              StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST_F(ControllerTest, SnapshotAndForkOnTheSameNode) {
  StartController();
  auto [job, key] = MakeJob("fork");
  AddNode("n1");
  AddNode("n2");
  ASSERT_OK_AND_ASSIGN(auto resp, CreateBatch(key, 1));
  v1::ForkSandboxRequest freq;
  freq.set_sandbox_id(resp.handles(0).sandbox_id());
  freq.set_count(3);
  v1::ForkSandboxResponse fresp;
  auto ctx = Ctx(key);
  grpc::Status s = sandboxes_->ForkSandbox(ctx.get(), freq, &fresp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(fresp.handles_size(), 3);
  EXPECT_FALSE(fresp.snapshot().id().empty());
  for (const auto& h : fresp.handles()) {
    EXPECT_EQ(h.node_id(), resp.handles(0).node_id());
    ASSERT_OK_AND_ASSIGN(auto sb, Get(key, h.sandbox_id()));
    EXPECT_EQ(sb.parent_snapshot_id(), fresp.snapshot().id());
    ASSERT_EQ(sb.spec().layers_size(), 1);
  }
}

TEST_F(ControllerTest, SnapshotBytesQuotaRefusesSnapshotsOnceFull) {
  StartController();
  auto [job, key] = MakeJob("snapquota");
  AddNode("n1");
  v1::UpdateJobQuotaRequest qreq;
  qreq.set_job_id(job);
  qreq.mutable_quota()->set_snapshot_bytes(2500);
  v1::Job j;
  auto qctx = Ctx(kAdminKey);
  ASSERT_TRUE(jobs_->UpdateJobQuota(qctx.get(), qreq, &j).ok());
  ASSERT_OK_AND_ASSIGN(auto resp, CreateBatch(key, 1));
  auto snapshot = [&](v1::Snapshot* out) {
    v1::SnapshotSandboxRequest req;
    req.set_sandbox_id(resp.handles(0).sandbox_id());
    auto ctx = Ctx(key);
    return sandboxes_->SnapshotSandbox(ctx.get(), req, out);
  };
  auto usage = [&] {
    v1::GetJobRequest req;
    req.set_job_id(job);
    v1::Job got;
    auto ctx = Ctx(key);
    EXPECT_TRUE(jobs_->GetJob(ctx.get(), req, &got).ok());
    return got.usage().snapshot_bytes();
  };
  std::vector<v1::Snapshot> taken(3);
  for (auto& snap : taken) ASSERT_TRUE(snapshot(&snap).ok());
  EXPECT_EQ(usage(), 3000);
  v1::Snapshot refused;
  grpc::Status s = snapshot(&refused);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("snapshot storage is full"));
  // Deleting frees the bytes; the usage survives a restart.
  v1::DeleteSnapshotRequest dreq;
  dreq.set_snapshot_id(taken[0].id());
  v1::DeleteSnapshotResponse dresp;
  auto dctx = Ctx(key);
  ASSERT_TRUE(sandboxes_->DeleteSnapshot(dctx.get(), dreq, &dresp).ok());
  EXPECT_EQ(usage(), 2000);
  controller_->Shutdown();
  controller_.reset();
  StartController();
  EXPECT_EQ(usage(), 2000);
}

TEST_F(ControllerTest, DeletedFsSnapshotIsStillNamedInHeartbeatsAfterRestart) {
  StartController();
  auto [job, key] = MakeJob("snapgc");
  FakeAgent* a = AddNode("n1");
  a->fs_backed_ = true;
  ASSERT_OK_AND_ASSIGN(auto resp, CreateBatch(key, 1));
  v1::SnapshotSandboxRequest sreq;
  sreq.set_sandbox_id(resp.handles(0).sandbox_id());
  v1::Snapshot snap;
  auto sctx = Ctx(key);
  ASSERT_TRUE(sandboxes_->SnapshotSandbox(sctx.get(), sreq, &snap).ok());
  ASSERT_FALSE(snap.fs_path().empty());
  v1::DeleteSnapshotRequest dreq;
  dreq.set_snapshot_id(snap.id());
  v1::DeleteSnapshotResponse dresp;
  auto dctx = Ctx(key);
  ASSERT_TRUE(sandboxes_->DeleteSnapshot(dctx.get(), dreq, &dresp).ok());
  auto heartbeat = [&] {
    v1::HeartbeatRequest hb;
    hb.set_node_id("n1");
    v1::HeartbeatResponse hresp;
    auto ctx = Ctx(kNodeKey);
    grpc::Status s = registry_->Heartbeat(ctx.get(), hb, &hresp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return std::vector<std::string>(hresp.delete_snapshot_ids().begin(),
                                    hresp.delete_snapshot_ids().end());
  };
  EXPECT_EQ(heartbeat(), std::vector<std::string>{snap.id()});
  // The list is durable: a restarted controller still hands it out.
  controller_->Shutdown();
  controller_.reset();
  StartController();
  EXPECT_EQ(heartbeat(), std::vector<std::string>{snap.id()});
  // And so does the next one, after another restart (nothing expired).
  controller_->Shutdown();
  controller_.reset();
  StartController();
  EXPECT_EQ(heartbeat(), std::vector<std::string>{snap.id()});
}

}  // namespace
}  // namespace dsec::controller
