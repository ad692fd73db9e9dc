// ClusterManager: chunk server membership and the versioned chain table of
// dsec-fs (the 3FS "mgmtd" role), with no gRPC. FsClusterService
// (fs/meta_service.h) adapts it; the meta server's GC and StatFs read it.
//
// The table (dsec/v1/fs_service.proto ChainTable) has `num_chains` chains,
// fixed when the cluster is first created. Rules:
//
//  * Forming. Chains start with no members. Once `replication` servers are
//    alive, every chain with no members at all takes `replication` of them,
//    all SERVING (nothing can have been written to a chain that never had a
//    member), in registration order rotated by the chain id so that heads
//    differ from chain to chain.
//  * Register, new server: it joins, as SYNCING (after the SERVING and
//    SYNCING members), every chain that has members but fewer than
//    `replication` non-OFFLINE ones; then forming (above) runs.
//  * Register, known server (a restart, or a server told to re-register):
//    its address is updated and it is alive again. Each of its OFFLINE
//    memberships becomes SYNCING (it must copy from its predecessor before
//    serving again), unless the chain has no SERVING member at all, in which
//    case it is the only serving-capable member and becomes SERVING.
//  * Liveness (CheckLiveness): a server with no heartbeat (or registration)
//    for offline_after * heartbeat_interval is no longer alive and goes
//    OFFLINE (moved to the end) in every chain, EXCEPT that a chain never
//    loses its last SERVING member: that one stays SERVING (writes fail
//    UNAVAILABLE while it is down; after a whole-cluster restart it is the
//    one the others sync from).
//  * Spare recruitment (in CheckLiveness): a member that has been OFFLINE
//    for replace_after is replaced by an alive server that is not in the
//    chain (the one in the fewest chains; ties by registration order rotated
//    by the chain id): the OFFLINE member leaves the chain and the spare
//    joins as SYNCING, copying everything from the last SERVING member. So a
//    cluster with spare servers heals a dead server's chains without it. The
//    replaced server, if it returns, is a spare itself; its old copies of
//    those chains' chunks are left on its disk.
//  * Heartbeat from an unknown or not-alive server answers reregister=true;
//    otherwise it records the server's counters and returns the table when
//    the server's table_version is older than the current one.
//  * SyncDone(node, chain, version): a SYNCING member becomes SERVING, placed
//    after the existing SERVING members, if `version` is the chain's current
//    version; otherwise ABORTED (the chain changed during the sync: refresh
//    and sync again). Already SERVING: OK (idempotent).
//  * Every membership or state change bumps that chain's version and the
//    table version; server entry changes (address, alive) bump the table
//    version. last_heartbeat_ns, chunks and used_bytes are informational
//    and change without a bump.
//  * The table is written to `state_path` (temp file, fsync, rename, fsync
//    of the directory) after every versioned change and reloaded by Create;
//    then every server that was alive counts as alive until it misses
//    heartbeats counted from the reload (offline ones stay offline until
//    they register again), and the table version is bumped once.
//
// Thread-safe: all methods may be called concurrently. Time comes from
// options.clock so tests can drive liveness by hand.
#ifndef DSEC_FS_CLUSTER_MANAGER_H_
#define DSEC_FS_CLUSTER_MANAGER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "dsec/v1/fs_service.pb.h"

namespace dsec::fs {

struct ClusterOptions {
  // Chains in a new cluster (a reloaded table keeps its own count).
  uint32_t num_chains = 16;
  // Members per chain the cluster aims for.
  uint32_t replication = 3;
  // Bytes per chunk, announced in the table.
  uint32_t chunk_size = 4 << 20;
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // Missed heartbeat intervals before a server goes OFFLINE.
  int offline_after = 3;
  // An OFFLINE member is replaced by a spare server after this long
  // (InfiniteDuration: never).
  absl::Duration replace_after = absl::Minutes(2);
  // Where the table is persisted; empty: memory only.
  std::string state_path;
  // Time source; null: absl::Now.
  std::function<absl::Time()> clock;
};

class ClusterManager {
 public:
  // Loads the table from options.state_path if it exists, else starts an
  // empty cluster. INVALID_ARGUMENT for zero num_chains/replication/
  // chunk_size or a non-positive interval; DATA_LOSS for an unreadable
  // state file.
  static absl::StatusOr<std::unique_ptr<ClusterManager>> Create(
      const ClusterOptions& options);

  ClusterManager(const ClusterManager&) = delete;
  ClusterManager& operator=(const ClusterManager&) = delete;

  // Registers a new or returning server (rules above); returns the table.
  // INVALID_ARGUMENT for an empty node_id or address.
  absl::StatusOr<v1::ChainTable> Register(const std::string& node_id,
                                          const std::string& address);
  absl::StatusOr<v1::ChunkHeartbeatResponse> Heartbeat(
      const v1::ChunkHeartbeatRequest& request);
  // ABORTED on a version mismatch; NOT_FOUND for an unknown chain or
  // server; FAILED_PRECONDITION if the server is not a SYNCING or SERVING
  // member of the chain.
  absl::StatusOr<v1::ChainTable> SyncDone(const std::string& node_id,
                                          uint32_t chain_id,
                                          uint64_t chain_version);
  // Applies the liveness rule at the current time. Call every interval.
  absl::Status CheckLiveness();

  v1::ChainTable Table() const;
  // Alive servers (node id and address), in registration order.
  std::vector<v1::ChunkServerInfo> AliveServers() const;
  // Whether any server was ever registered.
  bool HasServers() const;
  // Sum of used_bytes over alive servers.
  uint64_t AliveUsedBytes() const;
  absl::Duration heartbeat_interval() const {
    return options_.heartbeat_interval;
  }

 private:
  explicit ClusterManager(const ClusterOptions& options);

  absl::Time Now() const;
  absl::Status Load() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Persist() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Bumps chain `chain` and the table version.
  void BumpChain(v1::Chain* chain) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FormEmptyChains() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Replaces members OFFLINE for replace_after with spares; true if the
  // table changed.
  bool RecruitSpares() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::ChunkServerInfo* FindServer(const std::string& node_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateMetrics() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ClusterOptions options_;

  mutable absl::Mutex mu_;
  v1::ChainTable table_ ABSL_GUARDED_BY(mu_);
  // Last heartbeat (or registration, or reload) per server.
  absl::flat_hash_map<std::string, absl::Time> last_seen_ ABSL_GUARDED_BY(mu_);
  // When each OFFLINE membership ("<chain>/<node>") went OFFLINE (or the
  // table was reloaded).
  absl::flat_hash_map<std::string, absl::Time> offline_since_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace dsec::fs

#endif  // DSEC_FS_CLUSTER_MANAGER_H_
