// MetaStore: the namespace of dsec-fs (inodes, directory entries, open-file
// bookkeeping) kept in one local RocksDB, 3FS-style.
//
// Keys: "i/<8-byte BE id>" -> v1::Inode; "d/<8-byte BE parent id><name>" ->
// v1::Dentry, so a directory's entries are one key range sorted by name;
// "o/<id>" marks an inode whose last link is gone while it is still open
// (reclaimed by the last Close, or by Create after a crash); "g/<id>" marks a
// deleted file whose chunks the chunk servers still have to drop (written in
// the transaction that deletes the inode; see ListPendingGc); "c/next_ino"
// reserves inode ids in blocks. Every operation runs in one pessimistic
// RocksDB transaction (WAL on), retried on lock conflicts, so a crash at any
// point leaves either the whole operation or none of it.
//
// Errors carry the errno a FUSE layer should return (fs/fs_error.h, ErrnoOf):
// ENOENT -> NOT_FOUND, EEXIST -> ALREADY_EXISTS, ENOTEMPTY/ENOTDIR/EISDIR ->
// FAILED_PRECONDITION, EPERM (sealed) -> PERMISSION_DENIED, EINVAL and bad
// names -> INVALID_ARGUMENT.
//
// Permission checks (mode/uid against the caller) are not done here.
//
// Thread-safe: all methods may be called concurrently. The store owns its
// RocksDB instance; one MetaStore per directory per process.
#ifndef DSEC_FS_META_STORE_H_
#define DSEC_FS_META_STORE_H_

#include <atomic>
#include <cstdint>
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
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "dsec/v1/fs.pb.h"

namespace rocksdb {
class TransactionDB;
}  // namespace rocksdb

namespace dsec::fs {

inline constexpr uint64_t kRootIno = 1;
inline constexpr size_t kMaxNameBytes = 255;
inline constexpr size_t kMaxSymlinkBytes = 4096;

struct MetaStoreOptions {
  // RocksDB directory; created if missing.
  std::string dir;
  // Chunk size recorded in every new file.
  uint32_t chunk_size = 4 << 20;
  // fsync the WAL on every commit. Off, commits survive a process crash
  // (kill -9) at once and power loss once the WAL is synced: by Fsync, by a
  // Close that commits a length, and by SyncWal (the meta
  // server calls it every wal_sync_interval) -- a local file system's
  // contract.
  bool sync_writes = true;
  // Files unlinked while open when the server stopped ("orphans"): with a
  // zero grace they are reclaimed when the store opens; otherwise they are
  // kept that long so clients can re-open their handles (by inode) and go
  // on, and ReclaimOrphans drops the ones nobody re-opened.
  absl::Duration orphan_grace = absl::ZeroDuration();
};

// Which fields SetAttr changes; OR these together.
enum SetAttrMask : uint32_t {
  kSetMode = 1 << 0,
  kSetUid = 1 << 1,
  kSetGid = 1 << 2,
  kSetSize = 1 << 3,
  kSetAtime = 1 << 4,
  kSetMtime = 1 << 5,
};

struct SetAttrArgs {
  uint32_t mask = 0;
  uint32_t mode = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint64_t size = 0;
  int64_t atime_ns = 0;
  int64_t mtime_ns = 0;
};

// Rename flags, the values of Linux renameat2.
inline constexpr uint32_t kRenameNoReplace = 1 << 0;
inline constexpr uint32_t kRenameExchange = 1 << 1;

struct ReadDirPage {
  std::vector<v1::DirEntry> entries;
  // More entries follow the last one returned.
  bool has_more = false;
};

struct FsckReport {
  uint64_t inodes = 0;
  uint64_t dentries = 0;
  uint64_t orphans = 0;
  // Deleted files whose chunks are not yet collected.
  uint64_t pending_gc = 0;
  // One line per inconsistency; empty means consistent.
  std::vector<std::string> errors;
};

// OK if `name` may be a directory entry name; INVALID_ARGUMENT (EINVAL or
// ENAMETOOLONG) naming the problem: empty, ".", "..", '/' or NUL inside, or
// longer than kMaxNameBytes.
absl::Status ValidateName(absl::string_view name);

class MetaStore {
 public:
  // Opens (creating on first use) the store in options.dir, creates the root
  // directory (id 1, mode 0755, owned by 0:0) if absent, and reclaims orphan
  // inodes left by a crash.
  static absl::StatusOr<std::unique_ptr<MetaStore>> Create(
      const MetaStoreOptions& options);

  MetaStore(const MetaStore&) = delete;
  MetaStore& operator=(const MetaStore&) = delete;
  ~MetaStore();

  // The inode `name` names in directory `parent`.
  absl::StatusOr<v1::Inode> Lookup(uint64_t parent, absl::string_view name);
  absl::StatusOr<v1::Inode> GetAttr(uint64_t ino);
  // Changes the fields in args.mask; kSetSize truncates a file up or down
  // (EISDIR for directories, EINVAL for symlinks). Sealed -> EPERM.
  absl::StatusOr<v1::Inode> SetAttr(uint64_t ino, const SetAttrArgs& args);

  // The namespace calls below fill `dirs_after`, when given, with the
  // directories they changed as committed (so a client can answer the
  // kernel's attribute refresh of a parent without another call).
  absl::StatusOr<v1::Inode> Mkdir(uint64_t parent, absl::string_view name,
                                  uint32_t mode, uint32_t uid, uint32_t gid,
                                  std::vector<v1::Inode>* dirs_after = nullptr);
  // ENOTDIR if not a directory, ENOTEMPTY if it has entries.
  absl::Status Rmdir(uint64_t parent, absl::string_view name,
                     std::vector<v1::Inode>* dirs_after = nullptr);
  // A new empty file; EEXIST if the name exists (O_EXCL semantics).
  absl::StatusOr<v1::Inode> Create(
      uint64_t parent, absl::string_view name, uint32_t mode, uint32_t uid,
      uint32_t gid, std::vector<v1::Inode>* dirs_after = nullptr);
  // Removes a file or symlink name (EISDIR for directories). The inode goes
  // when its last link does, or at its last Close if it is open.
  absl::Status Unlink(uint64_t parent, absl::string_view name,
                      std::vector<v1::Inode>* dirs_after = nullptr);
  // renameat2: replaces an existing target per POSIX (directory over empty
  // directory; ENOTDIR dir over non-dir; EISDIR non-dir over dir; ENOTEMPTY),
  // kRenameNoReplace (EEXIST) and kRenameExchange (ENOENT if no target).
  // EINVAL when a directory would move into its own subtree.
  absl::Status Rename(uint64_t old_parent, absl::string_view old_name,
                      uint64_t new_parent, absl::string_view new_name,
                      uint32_t flags = 0,
                      std::vector<v1::Inode>* dirs_after = nullptr);
  // A new name for file or symlink `ino` (EPERM for directories).
  absl::StatusOr<v1::Inode> Link(uint64_t ino, uint64_t new_parent,
                                 absl::string_view new_name,
                                 std::vector<v1::Inode>* dirs_after = nullptr);
  absl::StatusOr<v1::Inode> Symlink(
      uint64_t parent, absl::string_view name, absl::string_view target,
      uint32_t uid, uint32_t gid, std::vector<v1::Inode>* dirs_after = nullptr);
  absl::StatusOr<std::string> Readlink(uint64_t ino);
  // Up to `max_entries` entries of directory `ino` whose names sort after
  // `cursor` (bytewise; "" starts at the beginning). No "." or "..".
  // REQUIRES: max_entries > 0 (else EINVAL).
  // With `with_inodes`, each entry carries its inode (same snapshot).
  absl::StatusOr<ReadDirPage> ReadDir(uint64_t ino, absl::string_view cursor,
                                      size_t max_entries,
                                      bool with_inodes = false);
  absl::StatusOr<v1::StatFs> StatFs();

  // Records an open handle of `ino`; `for_write` is refused on sealed files
  // (EPERM) and directories (EISDIR). Pair every OK Open with one Close.
  absl::StatusOr<v1::Inode> Open(uint64_t ino, bool for_write);
  // Commits the file length (if given) and drops the handle; the last Close
  // of an unlinked inode deletes it.
  absl::Status Close(uint64_t ino, std::optional<uint64_t> new_size);
  // Commits the file length of an open file (fsync).
  absl::Status Fsync(uint64_t ino, uint64_t new_size);
  // Makes `ino` immutable; idempotent.
  absl::Status SetSealed(uint64_t ino);
  // Makes every commit so far durable (fsyncs the WAL). Cheap when nothing
  // was written since the last sync.
  absl::Status SyncWal();

  // Chunk GC. Every deletion of a file inode (last unlink, last close of an
  // orphan, replacement by rename, orphan reclaim at open) records the inode
  // as pending in the same transaction. ListPendingGc returns up to `limit`
  // pending inode ids in ascending order; AckGc forgets them once their
  // chunks are gone (unknown ids are ignored). REQUIRES: limit > 0.
  absl::StatusOr<std::vector<uint64_t>> ListPendingGc(size_t limit);
  absl::Status AckGc(const std::vector<uint64_t>& inodes);

  // Checks the whole namespace: every dentry names an existing inode of its
  // type inside an existing directory; every inode but the root is reachable
  // from the root or is an orphan; nlink matches the dentries (directories:
  // 2 + subdirectories); directory parent fields match their dentry.
  // Errors only for I/O failures; inconsistencies go in the report.
  absl::StatusOr<FsckReport> Fsck();

  // Open handle count of `ino` (0 when not open).
  int OpenCountForTesting(uint64_t ino);
  // Reclaims the orphans found at open whose grace has passed and that no
  // handle re-opened (the meta server calls it from its GC loop); returns
  // how many. The last Close of a re-opened orphan reclaims it as usual.
  absl::StatusOr<int> ReclaimOrphans();

 private:
  class Txn;

  MetaStore(const MetaStoreOptions& options, rocksdb::TransactionDB* db);

  absl::Status Init();
  // Runs `fn` in a fresh transaction and commits, retrying lock conflicts.
  template <typename Fn>
  absl::Status RunTxn(Fn&& fn);
  // Also fills `dirs_after` with the directories it changed, as committed.
  template <typename Fn>
  absl::Status RunTxn(std::vector<v1::Inode>* dirs_after, Fn&& fn);
  absl::StatusOr<uint64_t> AllocateIno();
  absl::StatusOr<v1::Inode> MakeNode(
      uint64_t parent, absl::string_view name, v1::InodeType type,
      uint32_t mode, uint32_t uid, uint32_t gid, absl::string_view target,
      std::vector<v1::Inode>* dirs_after = nullptr);
  absl::Status CommitSize(uint64_t ino, uint64_t new_size);
  // Drops one link of file/symlink `inode`, deleting it or marking it an
  // orphan when it was the last.
  absl::Status DropLink(Txn& txn, v1::Inode* inode);
  int OpenCount(uint64_t ino);

  const MetaStoreOptions options_;
  rocksdb::TransactionDB* const db_;

  absl::Mutex ino_mu_;
  uint64_t next_ino_ ABSL_GUARDED_BY(ino_mu_) = 0;
  // StatFs: inodes and the sum of file sizes.
  std::atomic<int64_t> inode_count_{0};
  std::atomic<int64_t> total_bytes_{0};
  uint64_t ino_limit_ ABSL_GUARDED_BY(ino_mu_) = 0;

  absl::Mutex open_mu_;
  absl::flat_hash_map<uint64_t, int> open_counts_ ABSL_GUARDED_BY(open_mu_);
  // Orphans found at open, kept until their deadline (orphan_grace).
  absl::flat_hash_map<uint64_t, absl::Time> recovered_orphans_
      ABSL_GUARDED_BY(open_mu_);
};

}  // namespace dsec::fs

#endif  // DSEC_FS_META_STORE_H_
