// MetaServer: the dsec-meta process in a library. It opens the namespace
// (MetaStore, RocksDB under <data_dir>/meta) and the cluster manager (chain
// table at <data_dir>/chains.pb), serves FsMetaService and FsClusterService
// on one gRPC port, and runs two background threads:
//
//   liveness  ClusterManager::CheckLiveness every heartbeat interval
//   chunk GC  takes deleted files from MetaStore::ListPendingGc, sends
//             FsChunkService.RemoveInodes to every alive chunk server, and
//             acks them (MetaStore::AckGc) once all of those answered OK.
//             Offline servers drop such chunks when they re-sync. With no
//             chunk server ever registered, nothing can hold chunks and the
//             marks are acked at once; with servers known but none alive,
//             GC waits. Known gap: the last SERVING member of a chain kept
//             through an outage (cluster_manager.h) misses removals sent
//             while it was down; its orphan chunks cost space, never
//             correctness (inode ids are never reused).
//
// Lifecycle: Create() starts everything; Shutdown() (idempotent, also run by
// the destructor) stops serving, joins the threads and closes the store.
// Embeddable: tests run several in one process, or restart one on the same
// data_dir after Shutdown(). Thread-safe.
#ifndef DSEC_FS_META_SERVER_H_
#define DSEC_FS_META_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "fs/cluster_manager.h"
#include "fs/meta_store.h"

namespace dsec::fs {

struct MetaServerOptions {
  // gRPC host:port; port 0 picks a free one (see port()).
  std::string listen_address = "127.0.0.1:0";
  // Required; created if missing.
  std::string data_dir;
  // `dir` is ignored: the store lives in <data_dir>/meta.
  MetaStoreOptions store;
  // `state_path` is ignored: the table lives in <data_dir>/chains.pb.
  ClusterOptions cluster;
  // Prometheus /metrics on host:port; empty: none.
  std::string metrics_listen;
  // How often the GC thread looks for deleted files.
  absl::Duration gc_interval = absl::Seconds(1);
  // With store.sync_writes off: how often the WAL is fsynced, bounding what
  // a power loss can take (a process crash takes nothing).
  absl::Duration wal_sync_interval = absl::Milliseconds(100);
  // Deadline of each RemoveInodes call.
  absl::Duration chunk_rpc_timeout = absl::Seconds(10);
};

class MetaServer {
 public:
  static absl::StatusOr<std::unique_ptr<MetaServer>> Create(
      const MetaServerOptions& options);
  ~MetaServer();
  MetaServer(const MetaServer&) = delete;
  MetaServer& operator=(const MetaServer&) = delete;

  // The bound gRPC port.
  int port() const;
  // The bound metrics port, or -1.
  int metrics_port() const;
  // Stops serving, joins the threads, closes the store. Idempotent.
  void Shutdown();

  // The cores, for tests; valid until Shutdown().
  MetaStore* StoreForTesting();
  ClusterManager* ClusterForTesting();

  struct Impl;

 private:
  explicit MetaServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsec::fs

#endif  // DSEC_FS_META_SERVER_H_
