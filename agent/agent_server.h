// AgentServer: the node agent. Serves dsec.v1.SandboxRuntime (the data
// path: exec, files, park, snapshot, fork, signals; authenticated by
// sandbox token) and dsec.v1.NodeAgent (controller-facing: start, stop and
// list sandboxes; authenticated by the "x-dsec-node-key" metadata) on one
// gRPC port, registers with and heartbeats to the controller when one is
// configured, reaps sandboxes past ttl/idle_ttl and serves Prometheus
// metrics. All sandbox logic lives in SandboxManager; this class wires it
// to gRPC, threads and the controller.
//
// Embeddable: `dsecctl local up` runs agents in-process through this API.
//
//   ASSIGN_OR_RETURN(auto agent, AgentServer::Create(options));
//   ... agent->endpoint() ...
//   agent->Shutdown();  // or destroy it
//
// Thread-safety: all methods are thread-safe. Ownership: the server owns
// its sandboxes (all destroyed by Shutdown), threads and listening socket.
#ifndef DSEC_AGENT_AGENT_SERVER_H_
#define DSEC_AGENT_AGENT_SERVER_H_

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/sandbox_manager.h"
#include "common/metrics.h"
#include "common/tls.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace dsec::agent {

struct AgentOptions {
  // host:port for gRPC; port 0 picks a free one (see port()).
  std::string listen_address = "127.0.0.1:0";
  // What the controller and clients dial; empty: the listen host with the
  // bound port.
  std::string advertise_address;
  std::string node_id;
  // Cluster secret shared with the controller (sandbox tokens); >= 16 bytes.
  std::string token_secret;
  // Expected in "x-dsec-node-key" on NodeAgent calls and sent on
  // NodeRegistry calls. Empty: no check.
  std::string node_key;
  // NodeRegistry address. Empty: standalone (no registration; Fork mints
  // tokens locally).
  std::string controller_address;
  // Runtime state (dev template, default image, sealed layers). Empty:
  // /run/dsec/<pid>.
  std::string state_dir;
  // dsec-init binary. Empty: the sandbox runtime's default.
  std::string init_path;
  // Node capacity; 0: no cap of that kind.
  int max_sandboxes = 0;
  int64_t cpu_millicores = 0;
  int64_t memory_bytes = 0;
  std::map<std::string, std::string> labels;
  std::vector<WarmPoolClass> warm_pools;
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // How often ttl/idle_ttl are checked.
  absl::Duration reap_interval = absl::Milliseconds(200);
  // -1: no metrics endpoint; 0: any free port (see metrics_port()).
  int metrics_port = -1;
  // TLS for the gRPC server and for calls to the other party (see
  // common/tls.h); empty: plaintext.
  TlsFiles tls;
  // Request maxima and the empty-network-namespace pool size.
  RequestLimits request_limits;
  int netns_pool_target = 16;
};

class AgentServer {
 public:
  static absl::StatusOr<std::unique_ptr<AgentServer>> Create(
      const AgentOptions& options);
  ~AgentServer();  // Shutdown()
  AgentServer(const AgentServer&) = delete;
  AgentServer& operator=(const AgentServer&) = delete;

  // Bound gRPC port.
  int port() const { return port_; }
  // host:port the controller and clients dial.
  std::string endpoint() const { return endpoint_; }
  // Bound metrics port; -1 when off.
  int metrics_port() const;
  // The agent's metrics (its own registry, not Registry::Default()).
  const metrics::Registry& metrics() const { return *registry_; }
  SandboxManager& manager() { return *manager_; }

  // Stops accepting calls, destroys every sandbox, stops the controller
  // link and reaper, joins threads. Idempotent.
  void Shutdown();

 private:
  explicit AgentServer(AgentOptions options);
  absl::Status Start();
  void ReaperLoop();
  void ControllerLoop();
  // Sleeps up to `d`; false once shutting down.
  bool SleepFor(absl::Duration d);

  const AgentOptions options_;
  std::unique_ptr<metrics::Registry> registry_;
  std::unique_ptr<SandboxManager> manager_;
  class RuntimeService;
  class NodeService;
  std::unique_ptr<RuntimeService> runtime_service_;
  std::unique_ptr<NodeService> node_service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::ChannelCredentials> controller_creds_;
  std::unique_ptr<metrics::HttpServer> http_;
  int port_ = 0;
  std::string endpoint_;
  metrics::Counter* heartbeats_ = nullptr;
  int64_t max_write_file_bytes_ = 0;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex shutdown_mu_;  // serializes Shutdown
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
  std::thread reaper_;
  std::thread controller_;
};

}  // namespace dsec::agent

#endif  // DSEC_AGENT_AGENT_SERVER_H_
