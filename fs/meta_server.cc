#include "fs/meta_server.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/status_macros.h"
#include "dsec/v1/fs_service.grpc.pb.h"
#include "fs/fs_rpc.h"
#include "fs/meta_service.h"

namespace dsec::fs {
namespace {

constexpr size_t kGcBatch = 1000;

struct GcMetrics {
  metrics::Counter* collected;
  metrics::Counter* failures;
  static GcMetrics& Get() {
    static GcMetrics* m = [] {
      auto& reg = metrics::Registry::Default();
      auto* out = new GcMetrics;
      out->collected =
          reg.AddCounter("dsec_fs_gc_inodes_total",
                         "Deleted files whose chunks every alive chunk "
                         "server dropped.");
      out->failures =
          reg.AddCounter("dsec_fs_gc_failures_total",
                         "RemoveInodes calls that failed (retried next pass).");
      return out;
    }();
    return *m;
  }
};

absl::StatusOr<std::pair<std::string, int>> SplitHostPort(
    const std::string& address) {
  size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address \"", address, "\" is not host:port"));
  }
  std::string host = address.substr(0, colon);
  if (host.empty() || host == "[::]") host = "0.0.0.0";
  return std::make_pair(host, port);
}

}  // namespace

struct MetaServer::Impl {
  MetaServerOptions options;
  std::unique_ptr<MetaStore> store;
  std::unique_ptr<ClusterManager> cluster;
  std::unique_ptr<FsMetaService> meta_service;
  std::unique_ptr<FsClusterService> cluster_service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<metrics::HttpServer> http;
  int bound_port = 0;
  std::thread liveness;
  std::thread gc;
  std::thread wal_sync;
  std::atomic<bool> shut{false};

  absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;

  // Only the GC thread touches these.
  std::map<std::string, std::unique_ptr<v1::FsChunkService::Stub>> stubs;

  // Sleeps up to `d`; false once stopping.
  bool Sleep(absl::Duration d) {
    absl::MutexLock lock(&mu);
    mu.AwaitWithTimeout(absl::Condition(&stopping), d);
    return !stopping;
  }

  void LivenessLoop() {
    while (Sleep(options.cluster.heartbeat_interval)) {
      absl::Status s = cluster->CheckLiveness();
      if (!s.ok()) DSEC_LOG_ERROR("cluster: {}", s.ToString());
    }
  }

  void WalSyncLoop() {
    while (Sleep(options.wal_sync_interval)) {
      absl::Status s = store->SyncWal();
      if (!s.ok()) DSEC_LOG_ERROR("meta: {}", s.ToString());
    }
  }

  void GcLoop() {
    // Failed passes back off (doubling, up to 32 intervals) so a down chunk
    // server costs one log line per backoff step, not one per interval.
    int backoff = 1;
    while (Sleep(options.gc_interval * backoff)) {
      absl::StatusOr<int> orphans = store->ReclaimOrphans();
      if (!orphans.ok()) {
        DSEC_LOG_WARN("orphan reclaim: {}", orphans.status().ToString());
      } else if (*orphans > 0) {
        DSEC_LOG_INFO(
            "reclaimed {} files unlinked while open before the "
            "restart and not re-opened since",
            *orphans);
      }
      // Drain batch after batch while each one succeeds.
      for (;;) {
        absl::StatusOr<bool> more = GcPass();
        if (!more.ok()) {
          DSEC_LOG_WARN("chunk gc: {} (retry in {})", more.status().ToString(),
                        absl::FormatDuration(options.gc_interval *
                                             std::min(backoff * 2, 32)));
          backoff = std::min(backoff * 2, 32);
          break;
        }
        backoff = 1;
        if (!*more) break;
        absl::MutexLock lock(&mu);
        if (stopping) return;
      }
    }
  }

  v1::FsChunkService::Stub* StubFor(const std::string& address) {
    auto& stub = stubs[address];
    if (!stub) stub = v1::FsChunkService::NewStub(MakeFsChannel(address));
    return stub.get();
  }

  // One batch: true if it was acked in full (more may wait).
  absl::StatusOr<bool> GcPass() {
    ASSIGN_OR_RETURN(std::vector<uint64_t> pending,
                     store->ListPendingGc(kGcBatch));
    if (pending.empty()) return false;
    std::vector<v1::ChunkServerInfo> servers = cluster->AliveServers();
    if (servers.empty() && cluster->HasServers()) {
      return absl::UnavailableError(absl::StrCat(
          pending.size(), " deleted files wait: no chunk server is alive"));
    }
    v1::RemoveInodesRequest request;
    for (uint64_t ino : pending) request.add_inodes(ino);
    for (const auto& server : servers) {
      grpc::ClientContext context;
      context.set_deadline(
          std::chrono::system_clock::now() +
          absl::ToChronoMilliseconds(options.chunk_rpc_timeout));
      v1::RemoveInodesResponse response;
      absl::Status s = FromGrpcFsStatus(
          context, StubFor(server.address())
                       ->RemoveInodes(&context, request, &response));
      if (!s.ok()) {
        GcMetrics::Get().failures->Inc();
        return absl::Status(
            s.code(), absl::StrCat("RemoveInodes on ", server.node_id(), " (",
                                   server.address(), "): ", s.message()));
      }
    }
    RETURN_IF_ERROR(store->AckGc(pending));
    GcMetrics::Get().collected->Inc({}, static_cast<double>(pending.size()));
    return pending.size() == kGcBatch;
  }

  void ShutdownImpl() {
    if (shut.exchange(true)) return;
    {
      absl::MutexLock lock(&mu);
      stopping = true;
    }
    if (server) {
      server->Shutdown(std::chrono::system_clock::now() +
                       std::chrono::seconds(2));
    }
    if (liveness.joinable()) liveness.join();
    if (gc.joinable()) gc.join();
    if (wal_sync.joinable()) wal_sync.join();
    if (server) server->Wait();
    http.reset();
    server.reset();
    meta_service.reset();
    cluster_service.reset();
    stubs.clear();
    store.reset();
    cluster.reset();
  }
};

MetaServer::MetaServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MetaServer::~MetaServer() { Shutdown(); }

int MetaServer::port() const { return impl_->bound_port; }

int MetaServer::metrics_port() const {
  return impl_->http ? impl_->http->port() : -1;
}

void MetaServer::Shutdown() { impl_->ShutdownImpl(); }

MetaStore* MetaServer::StoreForTesting() { return impl_->store.get(); }

ClusterManager* MetaServer::ClusterForTesting() { return impl_->cluster.get(); }

absl::StatusOr<std::unique_ptr<MetaServer>> MetaServer::Create(
    const MetaServerOptions& options) {
  if (options.data_dir.empty()) {
    return absl::InvalidArgumentError("meta server: data_dir is required");
  }
  if (options.gc_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("meta server: gc_interval must be > 0");
  }
  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat(
        "meta server: create ", options.data_dir, ": ", ec.message()));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  MetaStoreOptions store_options = options.store;
  store_options.dir = options.data_dir + "/meta";
  ASSIGN_OR_RETURN(impl->store, MetaStore::Create(store_options));
  ClusterOptions cluster_options = options.cluster;
  cluster_options.state_path = options.data_dir + "/chains.pb";
  ASSIGN_OR_RETURN(impl->cluster, ClusterManager::Create(cluster_options));
  impl->options.cluster = cluster_options;

  impl->meta_service =
      std::make_unique<FsMetaService>(impl->store.get(), impl->cluster.get());
  impl->cluster_service =
      std::make_unique<FsClusterService>(impl->cluster.get());
  grpc::ServerBuilder builder;
  ConfigureFsServer(builder);
  builder.AddListeningPort(options.listen_address,
                           grpc::InsecureServerCredentials(),
                           &impl->bound_port);
  builder.RegisterService(impl->meta_service.get());
  builder.RegisterService(impl->cluster_service.get());
  impl->server = builder.BuildAndStart();
  if (!impl->server || impl->bound_port == 0) {
    impl->ShutdownImpl();
    return absl::UnavailableError(
        absl::StrCat("meta server: cannot listen on ", options.listen_address));
  }
  if (!options.metrics_listen.empty()) {
    auto host_port = SplitHostPort(options.metrics_listen);
    absl::StatusOr<std::unique_ptr<metrics::HttpServer>> http =
        host_port.ok()
            ? metrics::HttpServer::Start(host_port->first, host_port->second,
                                         &metrics::Registry::Default())
            : host_port.status();
    if (!http.ok()) {
      impl->ShutdownImpl();
      return http.status();
    }
    impl->http = std::move(*http);
  }
  GcMetrics::Get();  // Exported from the start, not at the first GC.
  Impl* raw = impl.get();
  impl->liveness = std::thread([raw] { raw->LivenessLoop(); });
  impl->gc = std::thread([raw] { raw->GcLoop(); });
  if (!options.store.sync_writes) {
    impl->wal_sync = std::thread([raw] { raw->WalSyncLoop(); });
  }
  DSEC_LOG_INFO("dsec-meta: serving on port {} (data in {})", impl->bound_port,
                options.data_dir);
  return std::unique_ptr<MetaServer>(new MetaServer(std::move(impl)));
}

}  // namespace dsec::fs
