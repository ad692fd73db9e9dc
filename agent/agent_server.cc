#include "agent/agent_server.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/token.h"
#include "dsec/v1/agent_service.grpc.pb.h"
#include "dsec/v1/node_service.grpc.pb.h"

namespace dsec::agent {
namespace {

constexpr char kNodeKeyHeader[] = "x-dsec-node-key";
constexpr size_t kMaxWriteChunk = 1 << 20;
constexpr int kMaxReceiveBytes = 20 << 20;  // ExecRequest stdin up to 16 MiB
constexpr absl::Duration kRpcDeadline = absl::Seconds(5);

grpc::Status Reply(const absl::Status& status) { return ToGrpcStatus(status); }

template <typename T>
grpc::Status Reply(absl::StatusOr<T> result, T* out) {
  if (!result.ok()) return ToGrpcStatus(result.status());
  *out = std::move(*result);
  return grpc::Status::OK;
}

}  // namespace

// ---- SandboxRuntime: one call into the manager each ------------------------

class AgentServer::RuntimeService final : public v1::SandboxRuntime::Service {
 public:
  explicit RuntimeService(AgentServer* agent) : agent_(agent) {}

  grpc::Status Exec(grpc::ServerContext* ctx, const v1::ExecRequest* request,
                    grpc::ServerWriter<v1::ExecEvent>* writer) override {
    return Reply(manager().Exec(
        *request,
        [&](const v1::ExecEvent& ev) {
          return !ctx->IsCancelled() && writer->Write(ev);
        },
        [&] { return ctx->IsCancelled(); }));
  }

  grpc::Status WriteFile(grpc::ServerContext* ctx,
                         grpc::ServerReader<v1::WriteFileRequest>* reader,
                         v1::WriteFileResponse* response) override {
    v1::WriteFileRequest msg;
    if (!reader->Read(&msg) || !msg.has_header()) {
      return Reply(absl::InvalidArgumentError(
          "the first WriteFile message must be the header"));
    }
    const v1::WriteFileHeader header = msg.header();
    absl::Status auth = manager().AuthorizeWrite(header);
    if (!auth.ok()) return Reply(auth);
    std::string data;
    while (reader->Read(&msg)) {
      if (msg.has_header()) {
        return Reply(absl::InvalidArgumentError("header repeated"));
      }
      if (msg.data().size() > kMaxWriteChunk) {
        return Reply(absl::InvalidArgumentError(
            "WriteFile data messages are limited to 1 MiB"));
      }
      if (static_cast<int64_t>(data.size() + msg.data().size()) >
          agent_->max_write_file_bytes_) {
        return Reply(absl::ResourceExhaustedError(
            "file larger than the agent's WriteFile limit"));
      }
      data += msg.data();
    }
    if (ctx->IsCancelled()) {
      return Reply(absl::CancelledError("upload cancelled; nothing written"));
    }
    return Reply(manager().WriteFile(header, data), response);
  }

  grpc::Status ReadFile(
      grpc::ServerContext* ctx, const v1::ReadFileRequest* request,
      grpc::ServerWriter<v1::ReadFileResponse>* writer) override {
    return Reply(
        manager().ReadFile(*request, [&](const v1::ReadFileResponse& msg) {
          return !ctx->IsCancelled() && writer->Write(msg);
        }));
  }

  grpc::Status ListFiles(grpc::ServerContext*,
                         const v1::ListFilesRequest* request,
                         v1::ListFilesResponse* response) override {
    return Reply(manager().ListFiles(*request), response);
  }
  grpc::Status StatFile(grpc::ServerContext*,
                        const v1::StatFileRequest* request,
                        v1::FileInfo* response) override {
    return Reply(manager().StatFile(*request), response);
  }
  grpc::Status DeleteFile(grpc::ServerContext*,
                          const v1::DeleteFileRequest* request,
                          v1::DeleteFileResponse* response) override {
    return Reply(manager().DeleteFile(*request), response);
  }
  grpc::Status Park(grpc::ServerContext*, const v1::ParkRequest* request,
                    v1::ParkResponse* response) override {
    return Reply(manager().Park(*request), response);
  }
  grpc::Status Unpark(grpc::ServerContext*, const v1::UnparkRequest* request,
                      v1::UnparkResponse* response) override {
    return Reply(manager().Unpark(*request), response);
  }
  grpc::Status Snapshot(grpc::ServerContext*,
                        const v1::SnapshotRequest* request,
                        v1::SnapshotResponse* response) override {
    return Reply(manager().Snapshot(*request), response);
  }
  grpc::Status Fork(grpc::ServerContext*, const v1::ForkRequest* request,
                    v1::ForkResponse* response) override {
    return Reply(manager().Fork(*request, agent_->endpoint()), response);
  }
  grpc::Status Signal(grpc::ServerContext*, const v1::SignalRequest* request,
                      v1::SignalResponse* response) override {
    return Reply(manager().Signal(*request), response);
  }
  grpc::Status ListProcesses(grpc::ServerContext*,
                             const v1::ListProcessesRequest* request,
                             v1::ListProcessesResponse* response) override {
    return Reply(manager().ListProcesses(*request), response);
  }

 private:
  SandboxManager& manager() { return *agent_->manager_; }
  AgentServer* const agent_;
};

// ---- NodeAgent
// ---------------------------------------------------------------

class AgentServer::NodeService final : public v1::NodeAgent::Service {
 public:
  explicit NodeService(AgentServer* agent) : agent_(agent) {}

  grpc::Status StartSandbox(grpc::ServerContext* ctx,
                            const v1::StartSandboxRequest* request,
                            v1::StartSandboxResponse* response) override {
    if (absl::Status s = CheckKey(*ctx); !s.ok()) return Reply(s);
    return Reply(agent_->manager_->StartSandbox(*request), response);
  }
  grpc::Status StopSandboxes(grpc::ServerContext* ctx,
                             const v1::StopSandboxesRequest* request,
                             v1::StopSandboxesResponse* response) override {
    if (absl::Status s = CheckKey(*ctx); !s.ok()) return Reply(s);
    *response = agent_->manager_->StopSandboxes(*request);
    return grpc::Status::OK;
  }
  grpc::Status ListNodeSandboxes(
      grpc::ServerContext* ctx, const v1::ListNodeSandboxesRequest*,
      v1::ListNodeSandboxesResponse* response) override {
    if (absl::Status s = CheckKey(*ctx); !s.ok()) return Reply(s);
    *response = agent_->manager_->ListSandboxes();
    return grpc::Status::OK;
  }

 private:
  absl::Status CheckKey(const grpc::ServerContext& ctx) const {
    const std::string& want = agent_->options_.node_key;
    if (want.empty()) return absl::OkStatus();
    auto it = ctx.client_metadata().find(kNodeKeyHeader);
    if (it == ctx.client_metadata().end() ||
        !SecureEquals(absl::string_view(it->second.data(), it->second.size()),
                      want)) {
      return absl::UnauthenticatedError("missing or wrong x-dsec-node-key");
    }
    return absl::OkStatus();
  }
  AgentServer* const agent_;
};

// ---- AgentServer
// ---------------------------------------------------------------

absl::StatusOr<std::unique_ptr<AgentServer>> AgentServer::Create(
    const AgentOptions& options) {
  if (options.node_id.empty() && !options.controller_address.empty()) {
    return absl::InvalidArgumentError("node_id is required with a controller");
  }
  std::unique_ptr<AgentServer> agent(new AgentServer(options));
  absl::Status status = agent->Start();
  if (!status.ok()) {
    agent->Shutdown();
    return status;
  }
  return agent;
}

AgentServer::AgentServer(AgentOptions options)
    : options_(std::move(options)),
      registry_(std::make_unique<metrics::Registry>()) {}

AgentServer::~AgentServer() { Shutdown(); }

absl::Status AgentServer::Start() {
  ManagerOptions mo;
  mo.runtime.state_dir = options_.state_dir;
  mo.runtime.init_path = options_.init_path;
  mo.runtime.netns_pool_target = options_.netns_pool_target;
  mo.node_id = options_.node_id;
  mo.token_secret = options_.token_secret;
  mo.max_sandboxes = options_.max_sandboxes;
  mo.cpu_millicores = options_.cpu_millicores;
  mo.memory_bytes = options_.memory_bytes;
  mo.warm_pools = options_.warm_pools;
  mo.standalone = options_.controller_address.empty();
  mo.metrics = registry_.get();
  mo.request_limits = options_.request_limits;
  max_write_file_bytes_ = mo.max_write_file_bytes;
  ASSIGN_OR_RETURN(manager_, SandboxManager::Create(mo));
  heartbeats_ =
      registry_->AddCounter("dsec_agent_heartbeats_total",
                            "Heartbeats to the controller.", {"result"});

  runtime_service_ = std::make_unique<RuntimeService>(this);
  node_service_ = std::make_unique<NodeService>(this);
  ASSIGN_OR_RETURN(auto server_creds, MakeServerCredentials(options_.tls));
  ASSIGN_OR_RETURN(controller_creds_, MakeChannelCredentials(options_.tls));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options_.listen_address, server_creds, &port_);
  builder.SetMaxReceiveMessageSize(kMaxReceiveBytes);
  builder.RegisterService(runtime_service_.get());
  builder.RegisterService(node_service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options_.listen_address));
  }
  if (!options_.advertise_address.empty()) {
    endpoint_ = options_.advertise_address;
  } else {
    const size_t colon = options_.listen_address.rfind(':');
    endpoint_ =
        absl::StrCat(options_.listen_address.substr(0, colon), ":", port_);
  }
  if (options_.metrics_port >= 0) {
    ASSIGN_OR_RETURN(
        http_, metrics::HttpServer::Start("127.0.0.1", options_.metrics_port,
                                          registry_.get()));
  }
  reaper_ = std::thread([this] { ReaperLoop(); });
  if (!options_.controller_address.empty()) {
    controller_ = std::thread([this] { ControllerLoop(); });
  }
  DSEC_LOG_INFO("agent {} serving on {}", options_.node_id, endpoint_);
  return absl::OkStatus();
}

int AgentServer::metrics_port() const { return http_ ? http_->port() : -1; }

bool AgentServer::SleepFor(absl::Duration d) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(&stopping_), d);
  return !stopping_;
}

void AgentServer::ReaperLoop() {
  while (SleepFor(options_.reap_interval)) {
    manager_->Reap(absl::Now());
    manager_->CollectDeletedSnapshots();
    manager_->UpdateGauges();
  }
}

void AgentServer::ControllerLoop() {
  auto channel =
      grpc::CreateChannel(options_.controller_address, controller_creds_);
  auto stub = v1::NodeRegistry::NewStub(channel);
  auto new_context = [&](grpc::ClientContext* ctx) {
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + kRpcDeadline));
    if (!options_.node_key.empty()) {
      ctx->AddMetadata(kNodeKeyHeader, options_.node_key);
    }
  };
  bool registered = false;
  absl::Duration backoff = absl::Milliseconds(100);
  absl::Duration interval = options_.heartbeat_interval;
  for (;;) {
    if (!registered) {
      v1::RegisterNodeRequest request;
      request.set_node_id(options_.node_id);
      request.set_endpoint(endpoint_);
      request.mutable_capacity()->set_cpu_millicores(options_.cpu_millicores);
      request.mutable_capacity()->set_memory_bytes(options_.memory_bytes);
      request.mutable_capacity()->set_max_sandboxes(options_.max_sandboxes);
      for (const auto& [k, v] : options_.labels) {
        (*request.mutable_labels())[k] = v;
      }
      for (const std::string& name : manager_->WarmPoolClasses()) {
        request.add_warm_pool_classes(name);
      }
      grpc::ClientContext ctx;
      new_context(&ctx);
      v1::RegisterNodeResponse response;
      grpc::Status status = stub->RegisterNode(&ctx, request, &response);
      if (!status.ok()) {
        DSEC_LOG_WARN("RegisterNode with {}: {}", options_.controller_address,
                      status.error_message());
        if (!SleepFor(backoff)) return;
        backoff = std::min(backoff * 2, absl::Seconds(5));
        continue;
      }
      registered = true;
      backoff = absl::Milliseconds(100);
      const absl::Duration asked = FromProto(response.heartbeat_interval());
      interval = asked > absl::ZeroDuration()
                     ? std::min(asked, options_.heartbeat_interval)
                     : options_.heartbeat_interval;
      DSEC_LOG_INFO("registered with controller {}",
                    options_.controller_address);
    }
    v1::HeartbeatRequest request = manager_->HeartbeatReport();
    request.set_node_id(options_.node_id);
    grpc::ClientContext ctx;
    new_context(&ctx);
    v1::HeartbeatResponse response;
    grpc::Status status = stub->Heartbeat(&ctx, request, &response);
    if (status.ok()) {
      heartbeats_->Inc({"ok"});
      manager_->SetDraining(response.draining());
      if (!response.destroy_sandbox_ids().empty()) {
        v1::StopSandboxesRequest stop;
        *stop.mutable_sandbox_ids() = response.destroy_sandbox_ids();
        stop.set_reason("controller asked");
        manager_->StopSandboxes(stop);
      }
      if (!response.delete_snapshot_ids().empty()) {
        manager_->DeleteSnapshots({response.delete_snapshot_ids().begin(),
                                   response.delete_snapshot_ids().end()});
      }
    } else {
      heartbeats_->Inc({"failed"});
      if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
        registered = false;
        continue;
      }
      DSEC_LOG_WARN("Heartbeat: {}", status.error_message());
    }
    if (!SleepFor(interval)) return;
  }
}

void AgentServer::Shutdown() {
  absl::MutexLock shutdown_lock(&shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  // Destroying the sandboxes first ends running execs, so the server's
  // in-flight handlers return promptly.
  if (manager_) manager_->Shutdown();
  if (server_) {
    server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    server_->Wait();
  }
  if (reaper_.joinable()) reaper_.join();
  if (controller_.joinable()) controller_.join();
  http_.reset();
  DSEC_LOG_INFO("agent {} stopped", options_.node_id);
}

}  // namespace dsec::agent
