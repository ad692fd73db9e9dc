// FsClient: the native dsec-fs client. It speaks to the meta server for the
// namespace and to chunk servers for data, without FUSE; dsec-mount, dsecctl
// fs/image and the agent use it.
//
// Namespace calls are thin wrappers over FsMetaService. Data calls cut a byte
// range into chunks (Inode.chunk_size), route each to its chain
// (fs/chain_table.h), and run chunks in parallel. Writes go to the chain's
// head and return once the whole chain has committed; reads go to any
// SERVING replica, trying the others when one fails (DATA_LOSS included), and
// read never-written chunks (holes) as zeros.
//
// Retries: UNAVAILABLE, DEADLINE_EXCEEDED and ABORTED (stale chain table) are
// retried with backoff, refreshing the chain table, until
// options.retry_budget runs out; then the last error is returned. Writes are
// idempotent per byte range, so a retried write is safe.
//
// Sizes: data calls do not change the committed file length; a writer
// commits it with Close or Fsync (as the FUSE client does on close/fsync).
// Read clips to the `file_size` the caller passes (its own view: committed
// length or larger after its own writes).
//
// Errors carry the errno the FUSE layer should return (fs/fs_error.h ErrnoOf).
// Thread-safe: one FsClient may be shared by any number of threads.
#ifndef DSEC_FS_FS_CLIENT_H_
#define DSEC_FS_FS_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "dsec/v1/fs_service.grpc.pb.h"
#include "fs/meta_store.h"

namespace dsec::fs {

struct FsClientOptions {
  // host:port of dsec-meta.
  std::string meta_address;
  // Per-RPC deadline.
  absl::Duration rpc_timeout = absl::Seconds(30);
  // How long retryable failures are retried before giving up.
  absl::Duration retry_budget = absl::Seconds(30);
  // Chunks of one call fetched or written at once.
  int parallel_chunks = 8;
};

// A file's data identity: what data calls need from its inode.
struct FileRef {
  uint64_t ino = 0;
  uint32_t chunk_size = 0;

  static FileRef Of(const v1::Inode& inode) {
    return FileRef{inode.id(), inode.chunk_size()};
  }
};

struct FsClientStats {
  uint64_t chunk_reads = 0;
  uint64_t chunk_writes = 0;
  uint64_t retries = 0;
  uint64_t replica_failovers = 0;
  uint64_t table_refreshes = 0;
};

class FsClient {
 public:
  // Connects lazily; fails only on bad options. The first call that needs
  // the chain table fetches it.
  static absl::StatusOr<std::unique_ptr<FsClient>> Create(
      const FsClientOptions& options);
  ~FsClient();
  FsClient(const FsClient&) = delete;
  FsClient& operator=(const FsClient&) = delete;

  // ---- namespace (FsMetaService) ----
  absl::StatusOr<v1::Inode> Lookup(uint64_t parent, absl::string_view name);
  absl::StatusOr<v1::Inode> GetAttr(uint64_t ino);
  // "/a/b" -> inode, no symlinks followed.
  absl::StatusOr<v1::Inode> ResolvePath(absl::string_view path);
  // kSetSize also cuts or removes the chunks past the new length (shrink:
  // the length is committed first, then the data goes).
  absl::StatusOr<v1::Inode> SetAttr(uint64_t ino, const SetAttrArgs& args);
  // Namespace calls fill `dirs_after`, when given, with the directories they
  // changed, as the meta server committed them.
  absl::StatusOr<v1::Inode> Mkdir(uint64_t parent, absl::string_view name,
                                  uint32_t mode, uint32_t uid, uint32_t gid,
                                  std::vector<v1::Inode>* dirs_after = nullptr);
  absl::Status Rmdir(uint64_t parent, absl::string_view name,
                     std::vector<v1::Inode>* dirs_after = nullptr);
  // With `open`, the file is also opened for writing (pair with Close).
  absl::StatusOr<v1::Inode> Create(
      uint64_t parent, absl::string_view name, uint32_t mode, uint32_t uid,
      uint32_t gid, bool open, std::vector<v1::Inode>* dirs_after = nullptr);
  absl::Status Unlink(uint64_t parent, absl::string_view name,
                      std::vector<v1::Inode>* dirs_after = nullptr);
  absl::Status Rename(uint64_t old_parent, absl::string_view old_name,
                      uint64_t new_parent, absl::string_view new_name,
                      uint32_t flags = 0,
                      std::vector<v1::Inode>* dirs_after = nullptr);
  absl::StatusOr<v1::Inode> Link(uint64_t ino, uint64_t new_parent,
                                 absl::string_view new_name,
                                 std::vector<v1::Inode>* dirs_after = nullptr);
  absl::StatusOr<v1::Inode> Symlink(
      uint64_t parent, absl::string_view name, absl::string_view target,
      uint32_t uid, uint32_t gid, std::vector<v1::Inode>* dirs_after = nullptr);
  absl::StatusOr<std::string> Readlink(uint64_t ino);
  // With `with_inodes`, each entry carries its inode (readdirplus).
  absl::StatusOr<ReadDirPage> ReadDir(uint64_t ino, absl::string_view cursor,
                                      size_t max_entries,
                                      bool with_inodes = false);
  absl::StatusOr<v1::StatFsResponse> StatFs();
  absl::StatusOr<v1::Inode> Open(uint64_t ino, bool for_write);
  // Both survive a meta server restart that forgot the handle: they open it
  // again and repeat the call once.
  absl::Status Close(uint64_t ino, std::optional<uint64_t> new_size);
  absl::Status Fsync(uint64_t ino, uint64_t new_size);
  // Closes handles that have nothing to commit, in as few calls as
  // kMaxCloseMany allows; handles the server no longer knows are skipped.
  absl::Status CloseMany(const std::vector<uint64_t>& inos);
  // Returns how many inodes were sealed.
  absl::StatusOr<uint64_t> Seal(uint64_t ino, bool recursive);

  // ---- data (FsChunkService) ----
  // Bytes [offset, offset + length) clipped to file_size; holes read as zeros.
  absl::StatusOr<std::string> Read(const FileRef& file, uint64_t file_size,
                                   uint64_t offset, uint64_t length);
  // Writes `data` at `offset` (chunks in parallel); the file length is not
  // committed (see Close/Fsync).
  absl::Status Write(const FileRef& file, uint64_t offset,
                     absl::string_view data);
  // Makes the data match a length change old_size -> new_size: when
  // shrinking, the boundary chunk is cut and later chunks removed; growing
  // needs nothing (past-the-end chunks do not exist, so they read as zeros).
  absl::Status TruncateData(const FileRef& file, uint64_t old_size,
                            uint64_t new_size);

  // ---- paths (dsecctl, tools) ----
  // Absolute paths; parents must exist unless stated.
  absl::StatusOr<v1::Inode> Stat(absl::string_view path);
  absl::StatusOr<std::vector<v1::DirEntry>> ListDir(absl::string_view path);
  // mkdir -p; OK if it exists as a directory.
  absl::StatusOr<v1::Inode> MkdirAll(absl::string_view path, uint32_t mode);
  absl::StatusOr<std::string> ReadFile(absl::string_view path);
  // Creates or replaces the file with `data` (written, then the length
  // committed on close).
  absl::Status WriteFile(absl::string_view path, absl::string_view data,
                         uint32_t mode = 0644);
  // Removes a file, symlink or empty directory; with `recursive`, a tree.
  absl::Status Remove(absl::string_view path, bool recursive);

  // The chain table (fetched if not yet known).
  absl::StatusOr<v1::ChainTable> Table();
  FsClientStats stats() const;

 private:
  struct ChunkSpan {
    uint32_t index = 0;
    uint64_t offset_in_chunk = 0;
    uint64_t length = 0;
    uint64_t buffer_offset = 0;  // into the caller's buffer
  };
  class Retrier;

  explicit FsClient(const FsClientOptions& options);

  std::vector<ChunkSpan> SplitRange(const FileRef& file, uint64_t offset,
                                    uint64_t length) const;
  // Runs fn(i) for i in [0, n), up to parallel_chunks at once; the first
  // error wins.
  absl::Status ParallelFor(size_t n,
                           const std::function<absl::Status(size_t)>& fn);
  absl::Status ReadChunk(const FileRef& file, const ChunkSpan& span, char* out);
  absl::Status WriteChunk(const FileRef& file, const ChunkSpan& span,
                          absl::string_view data);
  absl::Status TruncateChunk(const FileRef& file, uint32_t index,
                             uint64_t length);
  absl::Status RemoveChunksFrom(const FileRef& file, uint32_t from_index,
                                uint32_t end_index);
  // Sends one request (`call`) to the head of the chain of chunk
  // (file.ino, index), retrying retryable failures with a refreshed table.
  absl::Status CallHead(
      const FileRef& file, uint32_t index,
      const std::function<absl::Status(v1::FsChunkService::Stub*,
                                       const v1::ChainRef&)>& call);
  // The cached table, fetching it if there is none; with `refresh`, asks the
  // meta server for anything newer than the cached one.
  absl::StatusOr<std::shared_ptr<const v1::ChainTable>> GetTable(bool refresh);
  v1::FsChunkService::Stub* ChunkStub(const std::string& address);
  void PrepareContext(grpc::ClientContext* context) const;

  const FsClientOptions options_;
  std::unique_ptr<v1::FsMetaService::Stub> meta_;
  std::unique_ptr<v1::FsClusterService::Stub> cluster_;

  mutable absl::Mutex mu_;
  std::shared_ptr<const v1::ChainTable> table_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::unique_ptr<v1::FsChunkService::Stub>>
      chunk_stubs_ ABSL_GUARDED_BY(mu_);
  FsClientStats stats_ ABSL_GUARDED_BY(mu_);
  uint64_t read_rotor_ ABSL_GUARDED_BY(mu_) = 0;
};

// Polls the meta server at `meta_address` until its chain table has chains,
// each with at least `serving` SERVING members and none SYNCING
// (DEADLINE_EXCEEDED with the last table seen otherwise). For start-up and
// tests.
absl::Status WaitForServingChains(const std::string& meta_address, int serving,
                                  absl::Duration timeout);

}  // namespace dsec::fs

#endif  // DSEC_FS_FS_CLIENT_H_
