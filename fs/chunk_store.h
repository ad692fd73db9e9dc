// ChunkStore: a dsec-fs chunk server's local storage (no RPC). A chunk is
// identified by (inode, index) and holds up to `max_chunk_size` bytes.
//
// Layout under options.dir:
//   meta/                      RocksDB: one record per chunk (versions,
//                              lengths, CRC32 of the whole content and of each
//                              `block_size` block, corrupt flag)
//   chunks/<xx>/<inode>-<index>.v<version>
//                              one immutable file per live version; <xx> is a
//                              hash shard (256 subdirectories)
//
// CRAQ semantics for the chain layer:
//   - Write/Truncate stage a new *pending* version, copy-on-write: the new
//     content goes to a new file (base = pending content if one is staged,
//     else the committed content), fdatasynced (and its name made durable,
//     see Durability) before the pending record is written. The committed
//     file is never modified, so a crash cannot leave committed data
//     half-overwritten.
//     Versions must increase: a version <= max(committed, pending) is refused
//     with FAILED_PRECONDITION "stale version".
//   - Commit(v) makes pending version v the committed one with a single
//     RocksDB write (the atomic switch), then unlinks the old file. Committing
//     a version <= the committed one is an idempotent no-op.
//   - Read returns committed data only and verifies the CRC32 of every block
//     it touches on every read; a mismatch returns DATA_LOSS and marks the
//     chunk corrupt (GetMeta().corrupt) until ApplyReplica repairs it.
//   - Sparse: reading past the length is a short read; writing past it
//     zero-fills the gap.
//   - StageReplace stages a whole-content pending version (the chain's
//     REPLACE op). Unlike Write/Truncate it accepts a version <= the pending
//     one: that pending version was abandoned by a failed chain write, and is
//     dropped first. The version must still exceed the committed one.
//   - ApplyReplica keeps a pending version newer than the one it installs
//     (a chain write that arrived while a resync or repair was copying).
// Recovery (Open): chunk files no record references (crashed writes, replaced
// versions) are removed; a pending record whose file is missing is dropped; a
// committed record whose file is missing is marked corrupt.
//
// Durability (options.sync), per staged version: one fdatasync of the new
// file and one synced RocksDB write, the commit's. Why that is enough:
//   - Only Commit (and ApplyReplica, Remove, recovery fixes) must be durable
//     when it returns: the chain acknowledges upstream only after it. The
//     pending record is written without sync; the next synced write carries
//     it (RocksDB's WAL is sequential), and a commit record holds the whole
//     record anyway. If a crash loses a pending record, its file is an orphan
//     that Open removes, and the chain sees an abandoned pending version:
//     the next write's base differs and the sender re-sends REPLACE (see
//     chunk_server.h), exactly as after a failed forward. Nothing acknowledged
//     depended on it.
//   - Data before the commit record: the file is fdatasynced while staging,
//     before any Commit of its version can be written.
//   - The file's name before the commit record: fsync of its shard directory
//     after the create, except where Open found that the file's own
//     fdatasync already covers the create: ext4 (with a journal the create
//     is logged no later than the file's size/extents and the log commits
//     in order; without one ext4_sync_parent writes a new inode's parent),
//     XFS and btrfs (fsync logs the name with the inode). The reasoning per
//     file system is at FileSyncCoversCreate in chunk_store.cc. Renames
//     (WriteWholeFile's temporary file) always fsync the directory. Were a
//     committed version's name lost anyway, Open marks the chunk corrupt
//     (never serves it) and the chain repairs it from a replica.
//
// Thread-safe. Updates to one chunk are serialized (lock striping); different
// chunks proceed in parallel. Reads take no chunk lock.
#ifndef DSEC_FS_CHUNK_STORE_H_
#define DSEC_FS_CHUNK_STORE_H_

#include <array>
#include <atomic>
#include <compare>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace rocksdb {
class DB;
}

namespace dsec::fs {

struct ChunkId {
  uint64_t inode = 0;
  uint32_t index = 0;

  friend auto operator<=>(const ChunkId&, const ChunkId&) = default;
  // "<inode>:<index>", for messages.
  std::string ToString() const;
};

struct ChunkMeta {
  ChunkId id;
  // 0: nothing committed yet (a chunk whose first write is still pending).
  uint64_t committed_version = 0;
  uint64_t length = 0;    // of the committed content
  uint32_t checksum = 0;  // zlib CRC32 of the whole committed content
  // 0: no pending version.
  uint64_t pending_version = 0;
  uint64_t pending_length = 0;
  uint32_t pending_checksum = 0;
  // The committed content failed verification; repair with ApplyReplica.
  bool corrupt = false;
};

// The whole committed content of a chunk, consistent with its version (for
// resync and repair of another replica).
struct ChunkSnapshot {
  uint64_t version = 0;
  uint32_t checksum = 0;
  std::string content;
};

struct ChunkStoreOptions {
  // Created if missing. REQUIRES: non-empty.
  std::string dir;
  uint32_t max_chunk_size = 4 << 20;
  // Checksum granularity: a read verifies only the blocks it touches.
  // REQUIRES: divides max_chunk_size.
  uint32_t block_size = 64 << 10;
  // fsync data files, directories and metadata. Off only for tests/benches
  // that measure something else.
  bool sync = true;
  // Write whole-chunk versions with O_DIRECT (falls back to buffered writes
  // where the file system refuses it): the data skips this server's page
  // cache, so the copy into it costs no CPU here, and reads of it come from
  // disk until they cache it.
  bool direct_io = true;
};

// What Open's recovery did, for logs and tests.
struct ChunkRecoveryStats {
  int orphan_files_removed = 0;
  int pending_dropped = 0;
  int committed_missing = 0;
};

class ChunkStore {
 public:
  static absl::StatusOr<std::unique_ptr<ChunkStore>> Open(
      const ChunkStoreOptions& options);
  ~ChunkStore();
  ChunkStore(const ChunkStore&) = delete;
  ChunkStore& operator=(const ChunkStore&) = delete;

  // Stages `new_version` = base content with `data` written at `offset`.
  // Creates the chunk if unknown. INVALID_ARGUMENT if offset + size exceeds
  // max_chunk_size; FAILED_PRECONDITION on a stale version; DATA_LOSS if the
  // chunk is corrupt or a partially overwritten base block fails its CRC.
  absl::Status Write(const ChunkId& id, uint64_t offset, absl::string_view data,
                     uint64_t new_version);
  // Stages `new_version` = base content cut or zero-extended to `length`.
  // NOT_FOUND for an unknown chunk; otherwise as Write.
  absl::Status Truncate(const ChunkId& id, uint64_t length,
                        uint64_t new_version);
  // Makes pending `version` the committed one. OK (no-op) if version <=
  // committed. NOT_FOUND for an unknown chunk; FAILED_PRECONDITION if
  // `version` is not the pending version.
  absl::Status Commit(const ChunkId& id, uint64_t version);

  // Committed bytes [offset, offset + length), short at the end of the chunk.
  // NOT_FOUND if unknown or nothing is committed; INVALID_ARGUMENT past
  // max_chunk_size; DATA_LOSS on a checksum mismatch (and marks it corrupt).
  absl::StatusOr<std::string> Read(const ChunkId& id, uint64_t offset,
                                   uint64_t length);
  // The whole committed content with its version, verified.
  absl::StatusOr<ChunkSnapshot> ReadChunk(const ChunkId& id);
  absl::StatusOr<ChunkMeta> GetMeta(const ChunkId& id) const;
  // Up to `limit` chunks with id > *after (all if nullopt), in id order.
  absl::StatusOr<std::vector<ChunkMeta>> ListChunks(
      std::optional<ChunkId> after, size_t limit) const;
  // Drops the chunk (committed and pending). NOT_FOUND if unknown.
  absl::Status Remove(const ChunkId& id);
  // Drops every chunk (inode, index >= from_index) for which `filter` (if
  // set) returns true; returns how many. Idempotent.
  absl::StatusOr<uint64_t> RemoveChunks(
      uint64_t inode, uint32_t from_index,
      const std::function<bool(const ChunkId&)>& filter = nullptr);
  // Stages `content` (CRC32 `checksum`) as pending `version`, replacing any
  // pending version (see the header comment). DATA_LOSS on a checksum
  // mismatch; FAILED_PRECONDITION if version <= committed; INVALID_ARGUMENT
  // for version 0 or content over max_chunk_size. Creates the chunk.
  absl::Status StageReplace(const ChunkId& id, absl::string_view content,
                            uint32_t checksum, uint64_t version);
  // The whole pending content with its version, verified against its block
  // CRCs (what a chain member re-sends as REPLACE). NOT_FOUND if the chunk
  // is unknown or has no pending version; DATA_LOSS on a mismatch.
  absl::StatusOr<ChunkSnapshot> ReadPending(const ChunkId& id);
  // Number of chunks and bytes of committed content (a full metadata scan).
  struct Usage {
    uint64_t chunks = 0;
    uint64_t bytes = 0;
  };
  absl::StatusOr<Usage> GetUsage() const;
  // Installs `content` as committed `version` from a replica (repair/resync),
  // dropping any pending version <= `version` (a newer one is kept). DATA_LOSS
  // if CRC32(content) != checksum; FAILED_PRECONDITION if version < committed,
  // or == committed on a healthy chunk with different content. Creates the
  // chunk if unknown.
  absl::Status ApplyReplica(const ChunkId& id, uint64_t version,
                            absl::string_view content, uint32_t checksum);

  const ChunkRecoveryStats& recovery_stats() const { return recovery_; }
  const ChunkStoreOptions& options() const { return options_; }
  // The zlib CRC32 ChunkMeta::checksum holds.
  static uint32_t Checksum(absl::string_view data);

 private:
  struct Record;
  static constexpr int kStripes = 256;

  ChunkStore(const ChunkStoreOptions& options, rocksdb::DB* db);
  absl::Status Recover();
  absl::Mutex& StripeFor(const ChunkId& id) const;
  std::string FilePath(const ChunkId& id, uint64_t version) const;
  absl::StatusOr<std::optional<Record>> LoadRecord(const ChunkId& id) const;
  // `durable`: synced (when options_.sync) before returning; otherwise made
  // durable by the next synced write (RocksDB's WAL is sequential).
  absl::Status StoreRecord(const Record& record, bool durable = true);
  absl::Status CheckRange(const ChunkId& id, uint64_t offset,
                          uint64_t length) const;
  absl::Status CheckVersion(const Record& record, uint64_t new_version) const;
  // Stages a new pending version (caller holds the stripe lock).
  absl::Status StageLocked(Record& record, uint64_t offset,
                           absl::string_view data, uint64_t new_length,
                           uint64_t new_version);
  // Reads committed [offset, offset + length) verifying blocks.
  absl::StatusOr<std::string> ReadVerified(const ChunkId& id, uint64_t offset,
                                           uint64_t length,
                                           uint64_t* version_out,
                                           uint32_t* checksum_out);
  // Flags committed `version` corrupt if it is still the committed one with
  // `checksum` (not, say, just repaired by ApplyReplica of the same version).
  void MarkCorrupt(const ChunkId& id, uint64_t version, uint32_t checksum);
  void MarkCorruptLocked(const ChunkId& id, uint64_t version,
                         uint32_t checksum);
  absl::Status SyncDir(const std::string& file_path) const;
  // Writes `content` to FilePath(id, version) (via a temporary file, synced)
  // and returns its per-block CRCs.
  absl::StatusOr<std::vector<uint32_t>> WriteWholeFile(
      const ChunkId& id, uint64_t version, absl::string_view content);

  const ChunkStoreOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  ChunkRecoveryStats recovery_;
  // See "Durability" in the header comment.
  bool file_sync_covers_create_ = false;
  // Writes `data` (the whole new content) to the existing file `path` with
  // O_DIRECT; false if that is not possible (the caller writes buffered).
  bool WriteDirect(const std::string& path, absl::string_view data);
  std::atomic<bool> direct_io_failed_{false};
  absl::Mutex direct_mu_;
  // Aligned max_chunk_size buffers for WriteDirect, reused.
  std::vector<std::unique_ptr<char, void (*)(void*)>> direct_buffers_
      ABSL_GUARDED_BY(direct_mu_);
  mutable std::array<absl::Mutex, kStripes> stripes_;
};

}  // namespace dsec::fs

#endif  // DSEC_FS_CHUNK_STORE_H_
