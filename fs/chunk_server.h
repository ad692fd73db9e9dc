// ChunkServer: dsec-chunk, one dsec-fs chunk server. Serves FsChunkService
// (dsec/v1/fs_service.proto) over a local ChunkStore (fs/chunk_store.h),
// replicates writes along CRAQ-style chains, keeps its chain table current
// through the meta server's FsClusterService, re-syncs chains it rejoins and
// repairs corrupt chunks from replicas.
//
// Write path (invariants):
//   - Client Write/Truncate/Remove must reach the chain's head (WriteOrder
//     [0]) and name ChainRef{chain_id, chain_version}. A server whose table
//     holds another version of that chain refreshes its table from the meta
//     server once if its own is older, re-checks, and otherwise answers
//     ABORTED "stale chain table"; a non-head answers ABORTED. A chunk that
//     does not map to the named chain under that table is INVALID_ARGUMENT.
//   - Every member (head or receiver) holds the chunk's lock for the whole
//     stage -> forward -> commit sequence, and a (chain, inode) lock shared
//     (exclusive for REMOVE), so all members apply one chunk's operations in
//     the head's order. Locks are per key (not striped) and only ever taken
//     for operations of the key's own chain, so chains cannot deadlock each
//     other; every forward carries a deadline.
//   - Head: version = max(committed, pending) + 1, staged in the ChunkStore
//     on top of its base (pending if any, else committed), then Forward to the
//     successor with base_version = that base; commit once the successor
//     answers OK. A receiver does the same with the sender's version, and the
//     last writer commits at once. So OK to the client means every SERVING
//     and SYNCING member committed.
//   - Base mismatch: a receiver whose base (pending, else committed, 0 if no
//     chunk) differs from base_version, or whose base is corrupt, stages
//     nothing and answers **OK with ForwardResponse.base_mismatch = true**
//     (gRPC drops response bodies on errors, so the flag cannot ride on
//     FAILED_PRECONDITION). The sender then re-sends FORWARD_OP_REPLACE with
//     its whole staged content and CRC32 (ChunkStore::StageReplace accepts a
//     version <= an abandoned pending one). A receiver forwards exactly the
//     op it received.
//   - REMOVE: forwarded first, then applied locally (tail first, like a
//     commit). RemoveInodes (meta GC) is local only, any chain, idempotent.
//   - Failure: an unreachable successor (UNAVAILABLE/DEADLINE_EXCEEDED) makes
//     the head answer UNAVAILABLE; nothing is committed upstream and the
//     pending version is superseded by the next write. ABORTED from a
//     successor (its table is newer) is passed through.
//   - Truncate of a chunk never written is NOT_FOUND (a hole stays a hole).
//
// Reads: Read is served from committed data by a member that is SERVING for
// the chunk's chain (UNAVAILABLE otherwise, so the client tries another
// replica). DATA_LOSS is returned as is and schedules an async repair:
// FetchChunk from another SERVING member, then ChunkStore::ApplyReplica. A
// head whose base is corrupt repairs inline before staging.
//
// Sync (pull): for each chain where this server is SYNCING, a worker pulls
// from the chain's last SERVING member (not a possibly-incomplete SYNCING
// one): pass 1 pages ListChunks on the source and, for every chunk whose
// committed version is newer than ours (or equal but different / corrupt
// here), fetches it and ApplyReplica's it under our chunk lock
// (FAILED_PRECONDITION because a newer write already landed is fine). Pass 2
// pages our own chunks of the chain, and removes those the source's fresh
// listing lacks after re-checking the source under our chunk lock, so a
// concurrent first write (committed here first, as we are a last writer) is
// never lost. Then ReportSyncDone(node, chain, chain_version); ABORTED (the
// chain changed) restarts the sync under the new version. Client traffic
// continues throughout. Residual window: a REMOVE that reaches us between
// our fetch of that chunk and the source's own removal may leave the chunk
// here until the next sync; documented, not handled.
//
// Membership: Create() starts serving at once, then a background thread
// registers with the meta server (retrying with backoff until it answers),
// heartbeats every heartbeat_interval_ms (with chunk count and bytes),
// installs every newer table a reply carries and re-registers when told.
// Until a table arrives, writes are ABORTED and reads UNAVAILABLE.
//
// Thread-safe. The ChunkServer owns its store, gRPC server, metrics registry
// (and optional /metrics endpoint) and threads; Shutdown() stops them all
// (idempotent; the destructor calls it).
#ifndef DSEC_FS_CHUNK_SERVER_H_
#define DSEC_FS_CHUNK_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "fs/chunk_store.h"

namespace dsec::metrics {
class Registry;
}

namespace dsec::fs {

struct ChunkServerOptions {
  // gRPC listen address; port 0 picks one (see port()).
  std::string listen = "127.0.0.1:0";
  // Stable name across restarts. REQUIRES: non-empty.
  std::string node_id;
  // Address registered with the meta server; empty: the listen host with
  // the bound port.
  std::string advertise_address;
  // ChunkStore directory (store.dir is overwritten with it). REQUIRES:
  // non-empty.
  std::string data_dir;
  // host:port of the meta server's FsClusterService. REQUIRES: non-empty.
  std::string meta_address;
  // max_chunk_size, block_size, sync.
  ChunkStoreOptions store;
  // host:port for Prometheus /metrics; empty: none (port 0: any).
  std::string metrics_listen;
  // Deadline of server-to-server calls (Forward, FetchChunk, ListChunks).
  absl::Duration peer_timeout = absl::Seconds(10);
  // Deadline of calls to the meta server.
  absl::Duration meta_timeout = absl::Seconds(5);
  // Heartbeat period until the meta server says otherwise.
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // Recompute chunk count and bytes for heartbeats at most this often.
  absl::Duration usage_interval = absl::Seconds(5);
  // Scrub: every committed chunk is read back and its checksums verified
  // once per pass, so corruption of data nobody reads (a bad sector, a
  // stray write) is found and repaired from a replica while replicas still
  // hold good copies. A pass starts this long after the previous one
  // started (the first one this long after start-up); zero: never.
  absl::Duration scrub_interval = absl::Hours(24);
  // Read rate cap of a pass, so it stays in the background.
  uint64_t scrub_bytes_per_sec = 32 << 20;
  // Stray chunks: this server's chunks of a chain it has not been a member
  // of for this long (it was replaced by a spare while away) are deleted;
  // the chain's members hold them, and should it join the chain again it
  // re-syncs from them. Only while heartbeats succeed (the chain table is
  // current) and the chain has a SERVING member. Zero: never.
  absl::Duration stray_grace = absl::Minutes(10);
};

class ChunkServer {
 public:
  static absl::StatusOr<std::unique_ptr<ChunkServer>> Create(
      const ChunkServerOptions& options);
  ~ChunkServer();
  ChunkServer(const ChunkServer&) = delete;
  ChunkServer& operator=(const ChunkServer&) = delete;

  // The bound gRPC port and the address registered with the meta server.
  int port() const;
  std::string address() const;
  // -1 when there is no metrics endpoint.
  int metrics_port() const;
  // The chain table version this server holds (0 before registering).
  uint64_t table_version() const;
  // This server's metrics (each server has its own registry).
  const metrics::Registry& metrics() const;
  // Direct access to local storage, for tests (e.g. forcing divergence).
  ChunkStore& StoreForTesting();
  void Shutdown();

 private:
  struct Impl;
  explicit ChunkServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsec::fs

#endif  // DSEC_FS_CHUNK_SERVER_H_
