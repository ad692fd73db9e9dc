// The dsec controller: serves Sandboxes, Jobs, NodeRegistry and Admin over
// gRPC, keeps its state in RocksDB (controller/store.h) and places
// sandboxes through the placement core (controller/placement.h). It calls
// agents' NodeAgent (start/stop/list) and SandboxRuntime.Snapshot; it never
// carries exec traffic.
//
// Lifecycle: Create() opens the store, recovers every job, sandbox, node,
// snapshot and deleted snapshot still to be removed from dsec-fs, starts the
// gRPC server, the monitor thread (heartbeat timeouts, lease lapses,
// retention) and a one-shot reconciliation pass that asks each known agent
// for its sandboxes (ListNodeSandboxes). Shutdown() stops all of
// it; it is idempotent and the destructor calls it. Embeddable: several
// controllers may live in one process (tests restart one on the same
// data_dir after Shutdown()).
//
// Auth (see the protos): `authorization: Bearer <key>`. The admin key acts
// for any job and must name it; a job key acts for its own job only. With an
// empty admin_key (local mode) a call without a key acts as admin; a call
// with a key still needs a valid one. Agents send "x-dsec-node-key".
//
// Queueing: queue_timeout unset -> the call's deadline less min(1s, 10%),
// or max_queue_timeout (60s) with no deadline; capped at max_queue_timeout.
// Zero: fail at once. Order: job priority, then usage/weight (fair share),
// then arrival; a request short on its own job's quota never blocks others.
//
// Snapshots: an agent that mounts dsec-fs writes a snapshot's layers back
// to it (Snapshot.fs_path set); ForkSandbox then places children like any
// create, and StartSandbox names the snapshot so an agent that does not
// hold it copies the layers from dsec-fs. Without fs_path the layers are
// node-local and every child goes to the snapshot's node. Deleted
// snapshots' dsec-fs directories are handed to agents in heartbeat answers
// for a while (3 heartbeat timeouts, at least 30s, wall clock); that list
// is in the store, so a controller restart does not forget it.
//
// Thread-safe. All state sits behind one mutex; RocksDB writes (WAL, no
// fsync) happen under it so that memory and disk change in the same order.
// Agent calls never run under it.
#ifndef DSEC_CONTROLLER_CONTROLLER_SERVER_H_
#define DSEC_CONTROLLER_CONTROLLER_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/tls.h"

namespace dsec::controller {

struct ControllerOptions {
  std::string listen_address = "127.0.0.1:0";
  // RocksDB directory. Required.
  std::string data_dir;
  // HMAC key shared with agents (>= 16 bytes). Required.
  std::string token_secret;
  // Agents send/expect "x-dsec-node-key"; empty: none.
  std::string node_key;
  // Empty: admin calls are open (local mode).
  std::string admin_key;
  absl::Duration heartbeat_interval = absl::Seconds(1);
  absl::Duration heartbeat_timeout = absl::Seconds(5);
  absl::Duration token_ttl = absl::Hours(1);
  absl::Duration default_sandbox_ttl = absl::Hours(24);
  absl::Duration max_sandbox_ttl = absl::Hours(24 * 7);
  absl::Duration max_queue_timeout = absl::Seconds(60);
  absl::Duration agent_call_timeout = absl::Seconds(30);
  // Terminal sandboxes stay visible this long.
  absl::Duration terminal_retention = absl::Hours(1);
  // Smallest lease_ttl CreateJob accepts (the proto says 10s; tests lower).
  absl::Duration min_lease_ttl = absl::Seconds(10);
  // How often the monitor looks for dead nodes and lapsed leases.
  absl::Duration monitor_interval = absl::Milliseconds(100);
  // Defaults filled into specs with zero limits.
  int64_t default_cpu_millicores = 1000;
  int64_t default_memory_bytes = int64_t{512} << 20;
  int placement_samples = 8;
  // StartSandbox attempts per sandbox (refusals re-place elsewhere).
  int max_start_attempts = 3;
  // Watch events kept for resume.
  size_t watch_history = 100000;
  // Bookmark period on idle watch streams.
  absl::Duration watch_bookmark_interval = absl::Seconds(5);
  // < 0: no metrics endpoint; 0: any free port.
  int metrics_port = -1;
  // TLS for the gRPC server and for calls to the other party (see
  // common/tls.h); empty: plaintext.
  TlsFiles tls;
};

class ControllerServer {
 public:
  static absl::StatusOr<std::unique_ptr<ControllerServer>> Create(
      const ControllerOptions& options);
  ~ControllerServer();
  ControllerServer(const ControllerServer&) = delete;
  ControllerServer& operator=(const ControllerServer&) = delete;

  // The bound gRPC port.
  int port() const;
  // The bound metrics port, or -1.
  int metrics_port() const;
  // Stops serving, joins threads, closes the store. Idempotent.
  void Shutdown();

  struct Impl;

 private:
  explicit ControllerServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsec::controller

#endif  // DSEC_CONTROLLER_CONTROLLER_SERVER_H_
