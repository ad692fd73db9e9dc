#include "fs/meta_store.h"

#include <errno.h>

#include <algorithm>
#include <deque>
#include <map>
#include <set>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "fs/fs_error.h"
#include "rocksdb/options.h"
#include "rocksdb/utilities/transaction.h"
#include "rocksdb/utilities/transaction_db.h"
#include "rocksdb/write_batch.h"

namespace dsec::fs {
namespace {

constexpr char kInodePrefix[] = "i/";
constexpr char kDentryPrefix[] = "d/";
constexpr char kOrphanPrefix[] = "o/";
constexpr char kGcPrefix[] = "g/";
constexpr char kNextInoKey[] = "c/next_ino";
constexpr uint64_t kInoBlock = 1024;
constexpr int kMaxTxnAttempts = 1000;
constexpr int kMaxDepth = 1 << 16;

void AppendBe64(uint64_t v, std::string* out) {
  for (int i = 7; i >= 0; --i) out->push_back(static_cast<char>(v >> (i * 8)));
}

uint64_t ReadBe64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

std::string InodeKey(uint64_t id) {
  std::string key = kInodePrefix;
  AppendBe64(id, &key);
  return key;
}

std::string DirPrefix(uint64_t parent) {
  std::string key = kDentryPrefix;
  AppendBe64(parent, &key);
  return key;
}

std::string DentryKey(uint64_t parent, absl::string_view name) {
  std::string key = DirPrefix(parent);
  key.append(name.data(), name.size());
  return key;
}

std::string OrphanKey(uint64_t id) {
  std::string key = kOrphanPrefix;
  AppendBe64(id, &key);
  return key;
}

std::string GcKey(uint64_t id) {
  std::string key = kGcPrefix;
  AppendBe64(id, &key);
  return key;
}

int64_t NowNs() { return absl::ToUnixNanos(absl::Now()); }

bool IsConflict(const rocksdb::Status& s) {
  return s.IsBusy() || s.IsTimedOut() || s.IsTryAgain() || s.IsDeadlock();
}

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  if (IsConflict(s)) {
    return absl::AbortedError(absl::StrCat(what, ": ", s.ToString()));
  }
  return absl::InternalError(
      absl::StrCat("meta store: ", what, ": ", s.ToString()));
}

template <typename Msg>
absl::Status Parse(const std::string& value, absl::string_view what, Msg* msg) {
  if (!msg->ParseFromString(value)) {
    return absl::DataLossError(absl::StrCat("meta store: corrupt ", what));
  }
  return absl::OkStatus();
}

bool IsDir(const v1::Inode& inode) {
  return inode.type() == v1::INODE_TYPE_DIRECTORY;
}

std::string Describe(uint64_t parent, absl::string_view name) {
  return absl::StrCat("\"", name, "\" in directory ", parent);
}

}  // namespace

absl::Status ValidateName(absl::string_view name) {
  if (name.empty()) return FsError(EINVAL, "empty file name");
  if (name == "." || name == "..") {
    return FsError(EINVAL,
                   absl::StrCat("file name \"", name, "\" is reserved"));
  }
  if (name.find('/') != absl::string_view::npos) {
    return FsError(EINVAL, "file name contains '/'");
  }
  if (name.find('\0') != absl::string_view::npos) {
    return FsError(EINVAL, "file name contains a NUL byte");
  }
  if (name.size() > kMaxNameBytes) {
    return FsError(ENAMETOOLONG,
                   absl::StrCat("file name is ", name.size(),
                                " bytes, longer than ", kMaxNameBytes));
  }
  return absl::OkStatus();
}

namespace {

rocksdb::TransactionOptions TxnOptions() {
  rocksdb::TransactionOptions options;
  // Lock cycles (two renames locking the same dirs in opposite orders) fail
  // at once with Busy(kDeadlock) and are retried, instead of timing out.
  options.deadlock_detect = true;
  return options;
}

}  // namespace

// One transaction: locked reads (GetForUpdate), an inode cache so an inode
// read twice (old and new parent the same) is one object, writes at Commit.
class MetaStore::Txn {
 public:
  Txn(rocksdb::TransactionDB* db, const rocksdb::WriteOptions& wo)
      : txn_(db->BeginTransaction(wo, TxnOptions())) {}

  // The inode, locked; NOT_FOUND (ENOENT) if absent.
  absl::StatusOr<v1::Inode*> Inode(uint64_t id) {
    auto it = inodes_.find(id);
    if (it == inodes_.end()) {
      std::string value;
      rocksdb::Status s = txn_->GetForUpdate(ro_, InodeKey(id), &value);
      std::optional<v1::Inode> inode;
      if (s.ok()) {
        inode.emplace();
        RETURN_IF_ERROR(Parse(value, absl::StrCat("inode ", id), &*inode));
      } else if (!s.IsNotFound()) {
        return FromRocks(s, "read inode");
      }
      original_.try_emplace(id, Footprint(inode));
      it = inodes_.emplace(id, std::move(inode)).first;
    }
    if (!it->second) {
      return FsError(ENOENT, absl::StrCat("no inode ", id));
    }
    return &*it->second;
  }
  // A directory that may gain or lose entries.
  absl::StatusOr<v1::Inode*> WritableDir(uint64_t id) {
    ASSIGN_OR_RETURN(v1::Inode * dir, Inode(id));
    if (!IsDir(*dir)) {
      return FsError(ENOTDIR,
                     absl::StrCat("inode ", id, " is not a directory"));
    }
    if (dir->sealed()) {
      return FsError(EPERM, absl::StrCat("directory ", id, " is sealed"));
    }
    return dir;
  }
  void Dirty(uint64_t id) { dirty_.insert(id); }
  void AddInode(v1::Inode inode) {
    uint64_t id = inode.id();
    original_.try_emplace(id, std::make_pair(0, 0));  // a fresh id
    inodes_[id] = std::move(inode);
    dirty_.insert(id);
  }
  // Deletes inode `id`; a file's chunks become pending GC in the same
  // transaction.
  absl::Status DeleteInode(uint64_t id) {
    if (!inodes_.contains(id)) {
      absl::StatusOr<v1::Inode*> loaded = Inode(id);  // for the counters
      if (!loaded.ok() && !absl::IsNotFound(loaded.status())) {
        return loaded.status();
      }
    }
    std::optional<v1::Inode>& inode = inodes_[id];
    if (inode && inode->type() == v1::INODE_TYPE_FILE) {
      RETURN_IF_ERROR(FromRocks(txn_->Put(GcKey(id), ""), "write gc mark"));
    }
    inode.reset();
    dirty_.insert(id);
    return absl::OkStatus();
  }

  // The dentry, locked; nullopt if absent.
  absl::StatusOr<std::optional<v1::Dentry>> Entry(uint64_t parent,
                                                  absl::string_view name) {
    std::string value;
    rocksdb::Status s =
        txn_->GetForUpdate(ro_, DentryKey(parent, name), &value);
    if (s.IsNotFound()) return std::nullopt;
    RETURN_IF_ERROR(FromRocks(s, "read dentry"));
    v1::Dentry d;
    RETURN_IF_ERROR(Parse(value, "dentry", &d));
    return d;
  }
  absl::Status PutEntry(uint64_t parent, absl::string_view name,
                        const v1::Inode& child) {
    v1::Dentry d;
    d.set_ino(child.id());
    d.set_type(child.type());
    return FromRocks(txn_->Put(DentryKey(parent, name), d.SerializeAsString()),
                     "write dentry");
  }
  absl::Status DeleteEntry(uint64_t parent, absl::string_view name) {
    return FromRocks(txn_->Delete(DentryKey(parent, name)), "delete dentry");
  }
  absl::Status PutOrphan(uint64_t id) {
    return FromRocks(txn_->Put(OrphanKey(id), ""), "write orphan");
  }
  absl::Status DeleteOrphan(uint64_t id) {
    return FromRocks(txn_->Delete(OrphanKey(id)), "delete orphan");
  }
  // Whether directory `id` has any entry (the caller holds its inode lock,
  // which every entry-changing operation takes, so the answer is stable).
  absl::StatusOr<bool> HasEntries(uint64_t id) {
    std::string prefix = DirPrefix(id);
    std::unique_ptr<rocksdb::Iterator> it(txn_->GetIterator(ro_));
    it->Seek(prefix);
    bool found = it->Valid() && it->key().starts_with(prefix);
    RETURN_IF_ERROR(FromRocks(it->status(), "scan directory"));
    return found;
  }

  absl::Status Commit() {
    for (uint64_t id : dirty_) {
      const std::optional<v1::Inode>& inode = inodes_[id];
      rocksdb::Status s =
          inode ? txn_->Put(InodeKey(id), inode->SerializeAsString())
                : txn_->Delete(InodeKey(id));
      RETURN_IF_ERROR(FromRocks(s, "write inode"));
    }
    return FromRocks(txn_->Commit(), "commit");
  }
  // What the committed transaction changed in the inode count and the sum
  // of file sizes (MetaStore::StatFs).
  std::pair<int64_t, int64_t> Deltas() const {
    std::pair<int64_t, int64_t> d{0, 0};
    for (uint64_t id : dirty_) {
      auto o = original_.find(id);
      auto now = inodes_.find(id);
      if (o == original_.end() || now == inodes_.end()) continue;
      std::pair<int64_t, int64_t> after = Footprint(now->second);
      d.first += after.first - o->second.first;
      d.second += after.second - o->second.second;
    }
    return d;
  }
  // The directories this transaction changed, as it leaves them.
  void DirtyDirs(std::vector<v1::Inode>* out) const {
    for (uint64_t id : dirty_) {
      auto it = inodes_.find(id);
      if (it != inodes_.end() && it->second && IsDir(*it->second)) {
        out->push_back(*it->second);
      }
    }
  }

 private:
  std::unique_ptr<rocksdb::Transaction> txn_;
  rocksdb::ReadOptions ro_;
  // (1 if it exists, its size if a file).
  static std::pair<int64_t, int64_t> Footprint(
      const std::optional<v1::Inode>& inode) {
    if (!inode) return {0, 0};
    return {1, inode->type() == v1::INODE_TYPE_FILE
                   ? static_cast<int64_t>(inode->size())
                   : 0};
  }

  std::map<uint64_t, std::optional<v1::Inode>> inodes_;
  // id -> Footprint as first read (before this transaction).
  std::map<uint64_t, std::pair<int64_t, int64_t>> original_;
  std::set<uint64_t> dirty_;
};

template <typename Fn>
absl::Status MetaStore::RunTxn(Fn&& fn) {
  return RunTxn(nullptr, std::forward<Fn>(fn));
}

template <typename Fn>
absl::Status MetaStore::RunTxn(std::vector<v1::Inode>* dirs_after, Fn&& fn) {
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync_writes;
  absl::Status status;
  for (int attempt = 0; attempt < kMaxTxnAttempts; ++attempt) {
    Txn txn(db_, wo);
    status = fn(txn);
    if (status.ok()) status = txn.Commit();
    if (status.ok()) {
      auto [inodes, bytes] = txn.Deltas();
      inode_count_.fetch_add(inodes);
      total_bytes_.fetch_add(bytes);
    }
    if (status.ok() && dirs_after != nullptr) txn.DirtyDirs(dirs_after);
    if (status.code() != absl::StatusCode::kAborted) return status;
    absl::SleepFor(absl::Microseconds(50 * std::min(attempt + 1, 20)));
  }
  return absl::AbortedError(absl::StrCat(
      "meta store: transaction kept conflicting: ", status.message()));
}

absl::StatusOr<std::unique_ptr<MetaStore>> MetaStore::Create(
    const MetaStoreOptions& options) {
  if (options.dir.empty()) {
    return absl::InvalidArgumentError("meta store: empty dir");
  }
  if (options.chunk_size == 0) {
    return absl::InvalidArgumentError("meta store: chunk_size is 0");
  }
  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  db_options.IncreaseParallelism(2);
  db_options.compression = rocksdb::kNoCompression;
  rocksdb::TransactionDBOptions txn_options;
  txn_options.transaction_lock_timeout = 200;  // ms, then retried.
  rocksdb::TransactionDB* db = nullptr;
  rocksdb::Status s =
      rocksdb::TransactionDB::Open(db_options, txn_options, options.dir, &db);
  if (!s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("meta store: open ", options.dir, ": ", s.ToString()));
  }
  std::unique_ptr<MetaStore> store(new MetaStore(options, db));
  RETURN_IF_ERROR(store->Init());
  return store;
}

MetaStore::MetaStore(const MetaStoreOptions& options,
                     rocksdb::TransactionDB* db)
    : options_(options), db_(db) {}

MetaStore::~MetaStore() {
  db_->Close().PermitUncheckedError();
  delete db_;
}

absl::Status MetaStore::Init() {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kNextInoKey, &value);
  uint64_t limit = kRootIno + 1;
  if (s.ok()) {
    if (value.size() != 8) {
      return absl::DataLossError("meta store: corrupt inode counter");
    }
    limit = ReadBe64(value.data());
  } else if (!s.IsNotFound()) {
    return FromRocks(s, "read inode counter");
  }
  {
    absl::MutexLock lock(&ino_mu_);
    next_ino_ = limit;
    ino_limit_ = limit;
  }
  // The root directory.
  RETURN_IF_ERROR(RunTxn([&](Txn& txn) -> absl::Status {
    absl::StatusOr<v1::Inode*> root = txn.Inode(kRootIno);
    if (root.ok()) return absl::OkStatus();
    if (root.status().code() != absl::StatusCode::kNotFound) {
      return root.status();
    }
    int64_t now = NowNs();
    v1::Inode inode;
    inode.set_id(kRootIno);
    inode.set_type(v1::INODE_TYPE_DIRECTORY);
    inode.set_mode(0755);
    inode.set_nlink(2);
    inode.set_atime_ns(now);
    inode.set_mtime_ns(now);
    inode.set_ctime_ns(now);
    inode.set_parent(kRootIno);
    txn.AddInode(std::move(inode));
    return absl::OkStatus();
  }));
  // StatFs counters: counted once here, kept by every transaction after.
  {
    int64_t inodes = 0;
    int64_t bytes = 0;
    std::unique_ptr<rocksdb::Iterator> it(
        db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(kInodePrefix);
         it->Valid() && it->key().starts_with(kInodePrefix); it->Next()) {
      v1::Inode inode;
      if (!inode.ParseFromArray(it->value().data(),
                                static_cast<int>(it->value().size()))) {
        return absl::DataLossError("meta store: corrupt inode");
      }
      ++inodes;
      if (inode.type() == v1::INODE_TYPE_FILE) {
        bytes += static_cast<int64_t>(inode.size());
      }
    }
    RETURN_IF_ERROR(FromRocks(it->status(), "scan inodes"));
    inode_count_.store(inodes);
    total_bytes_.store(bytes);
  }
  // Orphans: unlinked while open when the last process died.
  std::vector<uint64_t> orphans;
  {
    std::unique_ptr<rocksdb::Iterator> it(
        db_->NewIterator(rocksdb::ReadOptions()));
    for (it->Seek(kOrphanPrefix);
         it->Valid() && it->key().starts_with(kOrphanPrefix) &&
         it->key().size() == 10;
         it->Next()) {
      orphans.push_back(ReadBe64(it->key().data() + 2));
    }
    RETURN_IF_ERROR(FromRocks(it->status(), "scan orphans"));
  }
  if (options_.orphan_grace > absl::ZeroDuration()) {
    absl::MutexLock lock(&open_mu_);
    const absl::Time deadline = absl::Now() + options_.orphan_grace;
    for (uint64_t id : orphans) recovered_orphans_[id] = deadline;
    return absl::OkStatus();
  }
  for (uint64_t id : orphans) {
    RETURN_IF_ERROR(RunTxn([&](Txn& txn) -> absl::Status {
      absl::StatusOr<v1::Inode*> inode = txn.Inode(id);
      if (inode.ok() && (*inode)->nlink() == 0) {
        RETURN_IF_ERROR(txn.DeleteInode(id));
      }
      return txn.DeleteOrphan(id);
    }));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> MetaStore::ReclaimOrphans() {
  std::vector<uint64_t> due;
  {
    absl::MutexLock lock(&open_mu_);
    const absl::Time now = absl::Now();
    for (auto it = recovered_orphans_.begin();
         it != recovered_orphans_.end();) {
      if (it->second > now) {
        ++it;
        continue;
      }
      if (!open_counts_.contains(it->first)) due.push_back(it->first);
      // Re-opened ones are reclaimed by their last Close.
      recovered_orphans_.erase(it++);
    }
  }
  int reclaimed = 0;
  for (uint64_t id : due) {
    RETURN_IF_ERROR(RunTxn([&](Txn& txn) -> absl::Status {
      absl::StatusOr<v1::Inode*> inode = txn.Inode(id);
      if (inode.ok() && (*inode)->nlink() == 0 && OpenCount(id) == 0) {
        RETURN_IF_ERROR(txn.DeleteInode(id));
        ++reclaimed;
      }
      if (OpenCount(id) > 0) return absl::OkStatus();
      return txn.DeleteOrphan(id);
    }));
  }
  return reclaimed;
}

absl::StatusOr<uint64_t> MetaStore::AllocateIno() {
  absl::MutexLock lock(&ino_mu_);
  if (next_ino_ >= ino_limit_) {
    uint64_t limit = ino_limit_ + kInoBlock;
    std::string value;
    AppendBe64(limit, &value);
    rocksdb::WriteOptions wo;
    wo.sync = options_.sync_writes;
    RETURN_IF_ERROR(
        FromRocks(db_->Put(wo, kNextInoKey, value), "write inode counter"));
    ino_limit_ = limit;
  }
  return next_ino_++;
}

int MetaStore::OpenCount(uint64_t ino) {
  absl::MutexLock lock(&open_mu_);
  auto it = open_counts_.find(ino);
  return it == open_counts_.end() ? 0 : it->second;
}

int MetaStore::OpenCountForTesting(uint64_t ino) { return OpenCount(ino); }

absl::StatusOr<v1::Inode> MetaStore::GetAttr(uint64_t ino) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), InodeKey(ino), &value);
  if (s.IsNotFound()) return FsError(ENOENT, absl::StrCat("no inode ", ino));
  RETURN_IF_ERROR(FromRocks(s, "read inode"));
  v1::Inode inode;
  RETURN_IF_ERROR(Parse(value, absl::StrCat("inode ", ino), &inode));
  return inode;
}

absl::StatusOr<v1::Inode> MetaStore::Lookup(uint64_t parent,
                                            absl::string_view name) {
  RETURN_IF_ERROR(ValidateName(name));
  const rocksdb::Snapshot* snap = db_->GetSnapshot();
  rocksdb::ReadOptions ro;
  ro.snapshot = snap;
  std::string value;
  rocksdb::Status s = db_->Get(ro, DentryKey(parent, name), &value);
  std::string inode_value;
  rocksdb::Status s2;
  v1::Dentry d;
  bool dentry_ok = s.ok() && d.ParseFromString(value);
  if (dentry_ok) s2 = db_->Get(ro, InodeKey(d.ino()), &inode_value);
  db_->ReleaseSnapshot(snap);
  if (s.IsNotFound()) {
    // Distinguish a missing parent (and a non-directory one).
    ASSIGN_OR_RETURN(v1::Inode dir, GetAttr(parent));
    if (!IsDir(dir)) {
      return FsError(ENOTDIR,
                     absl::StrCat("inode ", parent, " is not a directory"));
    }
    return FsError(ENOENT, absl::StrCat("no ", Describe(parent, name)));
  }
  RETURN_IF_ERROR(FromRocks(s, "read dentry"));
  if (!dentry_ok) {
    return absl::DataLossError(
        absl::StrCat("meta store: corrupt dentry ", Describe(parent, name)));
  }
  if (s2.IsNotFound()) {
    return absl::DataLossError(
        absl::StrCat("meta store: ", Describe(parent, name),
                     " names missing inode ", d.ino()));
  }
  RETURN_IF_ERROR(FromRocks(s2, "read inode"));
  v1::Inode inode;
  RETURN_IF_ERROR(Parse(inode_value, "inode", &inode));
  return inode;
}

absl::StatusOr<v1::Inode> MetaStore::SetAttr(uint64_t ino,
                                             const SetAttrArgs& args) {
  v1::Inode out;
  RETURN_IF_ERROR(RunTxn([&](Txn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(v1::Inode * inode, txn.Inode(ino));
    if (inode->sealed()) {
      return FsError(EPERM, absl::StrCat("inode ", ino, " is sealed"));
    }
    int64_t now = NowNs();
    if (args.mask & kSetSize) {
      if (IsDir(*inode)) {
        return FsError(
            EISDIR, absl::StrCat("truncate: inode ", ino, " is a directory"));
      }
      if (inode->type() != v1::INODE_TYPE_FILE) {
        return FsError(EINVAL,
                       absl::StrCat("truncate: inode ", ino, " is not a file"));
      }
      inode->set_size(args.size);
      inode->set_mtime_ns(now);
    }
    if (args.mask & kSetMode) inode->set_mode(args.mode & 07777);
    if (args.mask & kSetUid) inode->set_uid(args.uid);
    if (args.mask & kSetGid) inode->set_gid(args.gid);
    if (args.mask & kSetAtime) inode->set_atime_ns(args.atime_ns);
    if (args.mask & kSetMtime) inode->set_mtime_ns(args.mtime_ns);
    inode->set_ctime_ns(now);
    txn.Dirty(ino);
    out = *inode;
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<v1::Inode> MetaStore::MakeNode(
    uint64_t parent, absl::string_view name, v1::InodeType type, uint32_t mode,
    uint32_t uid, uint32_t gid, absl::string_view target,
    std::vector<v1::Inode>* dirs_after) {
  RETURN_IF_ERROR(ValidateName(name));
  ASSIGN_OR_RETURN(uint64_t id, AllocateIno());
  v1::Inode out;
  RETURN_IF_ERROR(RunTxn(dirs_after, [&](Txn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(v1::Inode * dir, txn.WritableDir(parent));
    if (dir->nlink() == 0) {
      return FsError(ENOENT,
                     absl::StrCat("directory ", parent, " was removed"));
    }
    ASSIGN_OR_RETURN(std::optional<v1::Dentry> existing,
                     txn.Entry(parent, name));
    if (existing) {
      return FsError(EEXIST, absl::StrCat(Describe(parent, name), " exists"));
    }
    int64_t now = NowNs();
    v1::Inode inode;
    inode.set_id(id);
    inode.set_type(type);
    inode.set_mode(mode & 07777);
    inode.set_uid(uid);
    inode.set_gid(gid);
    inode.set_atime_ns(now);
    inode.set_mtime_ns(now);
    inode.set_ctime_ns(now);
    switch (type) {
      case v1::INODE_TYPE_DIRECTORY:
        inode.set_nlink(2);
        inode.set_parent(parent);
        dir->set_nlink(dir->nlink() + 1);
        break;
      case v1::INODE_TYPE_FILE:
        inode.set_nlink(1);
        inode.set_chunk_size(options_.chunk_size);
        break;
      default:
        inode.set_nlink(1);
        inode.set_mode(0777);
        inode.set_symlink_target(std::string(target));
        inode.set_size(target.size());
        break;
    }
    dir->set_mtime_ns(now);
    dir->set_ctime_ns(now);
    txn.Dirty(parent);
    RETURN_IF_ERROR(txn.PutEntry(parent, name, inode));
    out = inode;
    txn.AddInode(std::move(inode));
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<v1::Inode> MetaStore::Mkdir(uint64_t parent,
                                           absl::string_view name,
                                           uint32_t mode, uint32_t uid,
                                           uint32_t gid,
                                           std::vector<v1::Inode>* dirs_after) {
  return MakeNode(parent, name, v1::INODE_TYPE_DIRECTORY, mode, uid, gid, "",
                  dirs_after);
}

absl::StatusOr<v1::Inode> MetaStore::Create(
    uint64_t parent, absl::string_view name, uint32_t mode, uint32_t uid,
    uint32_t gid, std::vector<v1::Inode>* dirs_after) {
  return MakeNode(parent, name, v1::INODE_TYPE_FILE, mode, uid, gid, "",
                  dirs_after);
}

absl::StatusOr<v1::Inode> MetaStore::Symlink(
    uint64_t parent, absl::string_view name, absl::string_view target,
    uint32_t uid, uint32_t gid, std::vector<v1::Inode>* dirs_after) {
  if (target.empty()) return FsError(ENOENT, "empty symlink target");
  if (target.size() > kMaxSymlinkBytes) {
    return FsError(ENAMETOOLONG,
                   absl::StrCat("symlink target is ", target.size(),
                                " bytes, longer than ", kMaxSymlinkBytes));
  }
  if (target.find('\0') != absl::string_view::npos) {
    return FsError(EINVAL, "symlink target contains a NUL byte");
  }
  return MakeNode(parent, name, v1::INODE_TYPE_SYMLINK, 0777, uid, gid, target,
                  dirs_after);
}

absl::StatusOr<std::string> MetaStore::Readlink(uint64_t ino) {
  ASSIGN_OR_RETURN(v1::Inode inode, GetAttr(ino));
  if (inode.type() != v1::INODE_TYPE_SYMLINK) {
    return FsError(EINVAL, absl::StrCat("inode ", ino, " is not a symlink"));
  }
  return inode.symlink_target();
}

absl::Status MetaStore::DropLink(Txn& txn, v1::Inode* inode) {
  uint64_t id = inode->id();
  inode->set_nlink(inode->nlink() - 1);
  inode->set_ctime_ns(NowNs());
  if (inode->nlink() > 0) {
    txn.Dirty(id);
    return absl::OkStatus();
  }
  // The inode lock is held, so Open (which takes it after counting itself)
  // and Close (which re-checks the count under it) cannot race this.
  if (OpenCount(id) > 0) {
    txn.Dirty(id);
    return txn.PutOrphan(id);
  }
  return txn.DeleteInode(id);
}

absl::Status MetaStore::Unlink(uint64_t parent, absl::string_view name,
                               std::vector<v1::Inode>* dirs_after) {
  RETURN_IF_ERROR(ValidateName(name));
  return RunTxn(dirs_after, [&](Txn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(v1::Inode * dir, txn.WritableDir(parent));
    ASSIGN_OR_RETURN(std::optional<v1::Dentry> d, txn.Entry(parent, name));
    if (!d) return FsError(ENOENT, absl::StrCat("no ", Describe(parent, name)));
    ASSIGN_OR_RETURN(v1::Inode * inode, txn.Inode(d->ino()));
    if (IsDir(*inode)) {
      return FsError(EISDIR, absl::StrCat("unlink: ", Describe(parent, name),
                                          " is a directory"));
    }
    if (inode->sealed()) {
      return FsError(EPERM, absl::StrCat("unlink: ", Describe(parent, name),
                                         " is sealed"));
    }
    int64_t now = NowNs();
    dir->set_mtime_ns(now);
    dir->set_ctime_ns(now);
    txn.Dirty(parent);
    RETURN_IF_ERROR(txn.DeleteEntry(parent, name));
    return DropLink(txn, inode);
  });
}

absl::Status MetaStore::Rmdir(uint64_t parent, absl::string_view name,
                              std::vector<v1::Inode>* dirs_after) {
  RETURN_IF_ERROR(ValidateName(name));
  return RunTxn(dirs_after, [&](Txn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(v1::Inode * dir, txn.WritableDir(parent));
    ASSIGN_OR_RETURN(std::optional<v1::Dentry> d, txn.Entry(parent, name));
    if (!d) return FsError(ENOENT, absl::StrCat("no ", Describe(parent, name)));
    ASSIGN_OR_RETURN(v1::Inode * victim, txn.Inode(d->ino()));
    if (!IsDir(*victim)) {
      return FsError(ENOTDIR, absl::StrCat("rmdir: ", Describe(parent, name),
                                           " is not a directory"));
    }
    if (victim->sealed()) {
      return FsError(
          EPERM, absl::StrCat("rmdir: ", Describe(parent, name), " is sealed"));
    }
    ASSIGN_OR_RETURN(bool has_entries, txn.HasEntries(victim->id()));
    if (has_entries) {
      return FsError(ENOTEMPTY, absl::StrCat("rmdir: ", Describe(parent, name),
                                             " is not empty"));
    }
    int64_t now = NowNs();
    dir->set_nlink(dir->nlink() - 1);
    dir->set_mtime_ns(now);
    dir->set_ctime_ns(now);
    txn.Dirty(parent);
    RETURN_IF_ERROR(txn.DeleteEntry(parent, name));
    return txn.DeleteInode(victim->id());
  });
}

absl::Status MetaStore::Rename(uint64_t old_parent, absl::string_view old_name,
                               uint64_t new_parent, absl::string_view new_name,
                               uint32_t flags,
                               std::vector<v1::Inode>* dirs_after) {
  RETURN_IF_ERROR(ValidateName(old_name));
  RETURN_IF_ERROR(ValidateName(new_name));
  if (flags & ~(kRenameNoReplace | kRenameExchange)) {
    return FsError(EINVAL, absl::StrCat("rename: unknown flags ", flags));
  }
  if ((flags & kRenameNoReplace) && (flags & kRenameExchange)) {
    return FsError(EINVAL, "rename: NOREPLACE and EXCHANGE together");
  }
  const bool exchange = flags & kRenameExchange;
  return RunTxn(dirs_after, [&](Txn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(v1::Inode * src_dir, txn.WritableDir(old_parent));
    ASSIGN_OR_RETURN(v1::Inode * dst_dir, txn.WritableDir(new_parent));
    if (dst_dir->nlink() == 0) {
      return FsError(ENOENT,
                     absl::StrCat("directory ", new_parent, " was removed"));
    }
    ASSIGN_OR_RETURN(std::optional<v1::Dentry> src_d,
                     txn.Entry(old_parent, old_name));
    if (!src_d) {
      return FsError(
          ENOENT, absl::StrCat("rename: no ", Describe(old_parent, old_name)));
    }
    ASSIGN_OR_RETURN(std::optional<v1::Dentry> dst_d,
                     txn.Entry(new_parent, new_name));
    if (old_parent == new_parent && old_name == new_name) {
      return absl::OkStatus();
    }
    if (dst_d && (flags & kRenameNoReplace)) {
      return FsError(
          EEXIST,
          absl::StrCat("rename: ", Describe(new_parent, new_name), " exists"));
    }
    if (!dst_d && exchange) {
      return FsError(ENOENT, absl::StrCat("rename exchange: no ",
                                          Describe(new_parent, new_name)));
    }
    ASSIGN_OR_RETURN(v1::Inode * src, txn.Inode(src_d->ino()));
    if (src->sealed()) {
      return FsError(EPERM,
                     absl::StrCat("rename: ", Describe(old_parent, old_name),
                                  " is sealed"));
    }
    v1::Inode* dst = nullptr;
    if (dst_d) {
      if (dst_d->ino() == src->id()) {
        // Two links to one file: POSIX says do nothing.
        return absl::OkStatus();
      }
      ASSIGN_OR_RETURN(dst, txn.Inode(dst_d->ino()));
      if (dst->sealed()) {
        return FsError(EPERM,
                       absl::StrCat("rename: ", Describe(new_parent, new_name),
                                    " is sealed"));
      }
    }
    // A directory must not move below itself: walk up from its new parent.
    auto check_loop = [&](const v1::Inode& moved,
                          uint64_t dest) -> absl::Status {
      if (!IsDir(moved) || dest == kRootIno) return absl::OkStatus();
      uint64_t cur = dest;
      for (int depth = 0; depth < kMaxDepth; ++depth) {
        if (cur == moved.id()) {
          return FsError(EINVAL,
                         absl::StrCat("rename: directory ", moved.id(),
                                      " would move into its own subtree"));
        }
        if (cur == kRootIno) return absl::OkStatus();
        ASSIGN_OR_RETURN(v1::Inode * up, txn.Inode(cur));
        cur = up->parent();
      }
      return absl::DataLossError("rename: directory tree too deep or cyclic");
    };
    if (old_parent != new_parent) {
      RETURN_IF_ERROR(check_loop(*src, new_parent));
      if (exchange) RETURN_IF_ERROR(check_loop(*dst, old_parent));
    }
    int64_t now = NowNs();
    // Re-parents directory `moved` from `from` to `to`.
    auto reparent = [&](v1::Inode* moved, v1::Inode* from, v1::Inode* to) {
      if (!IsDir(*moved) || from->id() == to->id()) return;
      moved->set_parent(to->id());
      from->set_nlink(from->nlink() - 1);
      to->set_nlink(to->nlink() + 1);
      txn.Dirty(moved->id());
    };
    if (exchange) {
      RETURN_IF_ERROR(txn.PutEntry(new_parent, new_name, *src));
      RETURN_IF_ERROR(txn.PutEntry(old_parent, old_name, *dst));
      reparent(src, src_dir, dst_dir);
      reparent(dst, dst_dir, src_dir);
      dst->set_ctime_ns(now);
      txn.Dirty(dst->id());
    } else {
      if (dst) {
        if (IsDir(*src) && !IsDir(*dst)) {
          return FsError(
              ENOTDIR, absl::StrCat("rename: ", Describe(new_parent, new_name),
                                    " is not a directory"));
        }
        if (!IsDir(*src) && IsDir(*dst)) {
          return FsError(
              EISDIR, absl::StrCat("rename: ", Describe(new_parent, new_name),
                                   " is a directory"));
        }
        if (IsDir(*dst)) {
          ASSIGN_OR_RETURN(bool has_entries, txn.HasEntries(dst->id()));
          if (has_entries) {
            return FsError(
                ENOTEMPTY,
                absl::StrCat("rename: ", Describe(new_parent, new_name),
                             " is not empty"));
          }
          dst_dir->set_nlink(dst_dir->nlink() - 1);
          RETURN_IF_ERROR(txn.DeleteInode(dst->id()));
        } else {
          RETURN_IF_ERROR(DropLink(txn, dst));
        }
      }
      RETURN_IF_ERROR(txn.PutEntry(new_parent, new_name, *src));
      RETURN_IF_ERROR(txn.DeleteEntry(old_parent, old_name));
      reparent(src, src_dir, dst_dir);
    }
    src->set_ctime_ns(now);
    txn.Dirty(src->id());
    for (v1::Inode* dir : {src_dir, dst_dir}) {
      dir->set_mtime_ns(now);
      dir->set_ctime_ns(now);
      txn.Dirty(dir->id());
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<v1::Inode> MetaStore::Link(uint64_t ino, uint64_t new_parent,
                                          absl::string_view new_name,
                                          std::vector<v1::Inode>* dirs_after) {
  RETURN_IF_ERROR(ValidateName(new_name));
  v1::Inode out;
  RETURN_IF_ERROR(RunTxn(dirs_after, [&](Txn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(v1::Inode * dir, txn.WritableDir(new_parent));
    if (dir->nlink() == 0) {
      return FsError(ENOENT,
                     absl::StrCat("directory ", new_parent, " was removed"));
    }
    ASSIGN_OR_RETURN(v1::Inode * inode, txn.Inode(ino));
    if (IsDir(*inode)) {
      return FsError(EPERM,
                     absl::StrCat("link: inode ", ino, " is a directory"));
    }
    if (inode->sealed()) {
      return FsError(EPERM, absl::StrCat("link: inode ", ino, " is sealed"));
    }
    if (inode->nlink() == 0) {
      return FsError(ENOENT,
                     absl::StrCat("link: inode ", ino, " has been unlinked"));
    }
    ASSIGN_OR_RETURN(std::optional<v1::Dentry> existing,
                     txn.Entry(new_parent, new_name));
    if (existing) {
      return FsError(EEXIST,
                     absl::StrCat(Describe(new_parent, new_name), " exists"));
    }
    int64_t now = NowNs();
    inode->set_nlink(inode->nlink() + 1);
    inode->set_ctime_ns(now);
    dir->set_mtime_ns(now);
    dir->set_ctime_ns(now);
    txn.Dirty(ino);
    txn.Dirty(new_parent);
    RETURN_IF_ERROR(txn.PutEntry(new_parent, new_name, *inode));
    out = *inode;
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<ReadDirPage> MetaStore::ReadDir(uint64_t ino,
                                               absl::string_view cursor,
                                               size_t max_entries,
                                               bool with_inodes) {
  if (max_entries == 0) return FsError(EINVAL, "readdir: max_entries is 0");
  const rocksdb::Snapshot* snap = db_->GetSnapshot();
  rocksdb::ReadOptions ro;
  ro.snapshot = snap;
  auto release = [&] { db_->ReleaseSnapshot(snap); };
  std::string value;
  rocksdb::Status s = db_->Get(ro, InodeKey(ino), &value);
  v1::Inode dir;
  if (s.IsNotFound()) {
    release();
    return FsError(ENOENT, absl::StrCat("no inode ", ino));
  }
  if (!s.ok() || !dir.ParseFromString(value)) {
    release();
    return absl::InternalError(
        absl::StrCat("meta store: read inode ", ino, ": ", s.ToString()));
  }
  if (!IsDir(dir)) {
    release();
    return FsError(ENOTDIR, absl::StrCat("inode ", ino, " is not a directory"));
  }
  ReadDirPage page;
  std::string prefix = DirPrefix(ino);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  for (it->Seek(DentryKey(ino, cursor));
       it->Valid() && it->key().starts_with(prefix); it->Next()) {
    absl::string_view name(it->key().data() + prefix.size(),
                           it->key().size() - prefix.size());
    if (name.empty() || name == cursor) continue;
    if (page.entries.size() == max_entries) {
      page.has_more = true;
      break;
    }
    v1::Dentry d;
    if (!d.ParseFromArray(it->value().data(),
                          static_cast<int>(it->value().size()))) {
      it.reset();
      release();
      return absl::DataLossError("meta store: corrupt dentry");
    }
    v1::DirEntry& e = page.entries.emplace_back();
    e.set_name(std::string(name));
    e.set_ino(d.ino());
    e.set_type(d.type());
    if (with_inodes) {
      rocksdb::Status got = db_->Get(ro, InodeKey(d.ino()), &value);
      if (got.ok() && !e.mutable_inode()->ParseFromString(value)) {
        it.reset();
        release();
        return absl::DataLossError(
            absl::StrCat("meta store: corrupt inode ", d.ino()));
      }
    }
  }
  rocksdb::Status it_status = it->status();
  it.reset();
  release();
  RETURN_IF_ERROR(FromRocks(it_status, "scan directory"));
  return page;
}

absl::StatusOr<v1::StatFs> MetaStore::StatFs() {
  // Running counters (counted at open, kept by every transaction): a statfs
  // costs nothing however large the namespace, so a client calling it in a
  // loop cannot load the meta server.
  v1::StatFs out;
  out.set_inodes(static_cast<uint64_t>(std::max<int64_t>(inode_count_, 0)));
  out.set_total_bytes(
      static_cast<uint64_t>(std::max<int64_t>(total_bytes_, 0)));
  return out;
}

absl::StatusOr<v1::Inode> MetaStore::Open(uint64_t ino, bool for_write) {
  // Count first, then read under the inode lock: an Unlink either sees this
  // handle (and keeps the inode as an orphan) or deletes before we read.
  {
    absl::MutexLock lock(&open_mu_);
    ++open_counts_[ino];
  }
  v1::Inode out;
  absl::Status status = RunTxn([&](Txn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(v1::Inode * inode, txn.Inode(ino));
    if (for_write && IsDir(*inode)) {
      return FsError(EISDIR, absl::StrCat("open for write: inode ", ino,
                                          " is a directory"));
    }
    if (for_write && inode->sealed()) {
      return FsError(EPERM,
                     absl::StrCat("open for write: inode ", ino, " is sealed"));
    }
    out = *inode;
    return absl::OkStatus();
  });
  if (!status.ok()) {
    absl::MutexLock lock(&open_mu_);
    if (--open_counts_[ino] == 0) open_counts_.erase(ino);
    return status;
  }
  return out;
}

absl::Status MetaStore::CommitSize(uint64_t ino, uint64_t new_size) {
  return RunTxn([&](Txn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(v1::Inode * inode, txn.Inode(ino));
    if (inode->type() != v1::INODE_TYPE_FILE) {
      return FsError(EINVAL, absl::StrCat("inode ", ino, " is not a file"));
    }
    if (inode->size() == new_size) return absl::OkStatus();
    if (inode->sealed()) {
      return FsError(EPERM, absl::StrCat("inode ", ino, " is sealed"));
    }
    int64_t now = NowNs();
    inode->set_size(new_size);
    inode->set_mtime_ns(now);
    inode->set_ctime_ns(now);
    txn.Dirty(ino);
    return absl::OkStatus();
  });
}

absl::Status MetaStore::Fsync(uint64_t ino, uint64_t new_size) {
  if (OpenCount(ino) == 0) {
    return FsError(EBADF, absl::StrCat("fsync: inode ", ino, " is not open"));
  }
  RETURN_IF_ERROR(CommitSize(ino, new_size));
  return options_.sync_writes ? absl::OkStatus() : SyncWal();
}

absl::Status MetaStore::SyncWal() {
  rocksdb::Status s = db_->FlushWAL(/*sync=*/true);
  if (!s.ok()) {
    return absl::InternalError(
        absl::StrCat("meta store WAL sync: ", s.ToString()));
  }
  return absl::OkStatus();
}

absl::Status MetaStore::Close(uint64_t ino, std::optional<uint64_t> new_size) {
  {
    absl::MutexLock lock(&open_mu_);
    auto it = open_counts_.find(ino);
    if (it == open_counts_.end()) {
      return FsError(EBADF, absl::StrCat("close: inode ", ino, " is not open"));
    }
  }
  absl::Status status =
      new_size ? CommitSize(ino, *new_size) : absl::OkStatus();
  if (status.ok() && new_size && !options_.sync_writes) status = SyncWal();
  {
    absl::MutexLock lock(&open_mu_);
    if (--open_counts_[ino] > 0) return status;
    open_counts_.erase(ino);
  }
  // Last handle: reclaim the inode if it was unlinked while open.
  absl::Status reclaim = RunTxn([&](Txn& txn) -> absl::Status {
    absl::StatusOr<v1::Inode*> inode = txn.Inode(ino);
    if (!inode.ok()) {
      return inode.status().code() == absl::StatusCode::kNotFound
                 ? absl::OkStatus()
                 : inode.status();
    }
    if ((*inode)->nlink() > 0 || OpenCount(ino) > 0) return absl::OkStatus();
    RETURN_IF_ERROR(txn.DeleteInode(ino));
    return txn.DeleteOrphan(ino);
  });
  return status.ok() ? reclaim : status;
}

absl::Status MetaStore::SetSealed(uint64_t ino) {
  return RunTxn([&](Txn& txn) -> absl::Status {
    ASSIGN_OR_RETURN(v1::Inode * inode, txn.Inode(ino));
    if (inode->sealed()) return absl::OkStatus();
    inode->set_sealed(true);
    inode->set_ctime_ns(NowNs());
    txn.Dirty(ino);
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<uint64_t>> MetaStore::ListPendingGc(size_t limit) {
  if (limit == 0) return FsError(EINVAL, "list pending gc: limit is 0");
  std::vector<uint64_t> out;
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(kGcPrefix);
       it->Valid() && it->key().starts_with(kGcPrefix) && out.size() < limit;
       it->Next()) {
    if (it->key().size() == 10) out.push_back(ReadBe64(it->key().data() + 2));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "scan gc marks"));
  return out;
}

absl::Status MetaStore::AckGc(const std::vector<uint64_t>& inodes) {
  if (inodes.empty()) return absl::OkStatus();
  rocksdb::WriteBatch batch;
  for (uint64_t id : inodes) {
    RETURN_IF_ERROR(FromRocks(batch.Delete(GcKey(id)), "delete gc mark"));
  }
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync_writes;
  return FromRocks(db_->Write(wo, &batch), "ack gc");
}

absl::StatusOr<FsckReport> MetaStore::Fsck() {
  FsckReport report;
  const rocksdb::Snapshot* snap = db_->GetSnapshot();
  rocksdb::ReadOptions ro;
  ro.snapshot = snap;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  std::map<uint64_t, v1::Inode> inodes;
  struct Entry {
    uint64_t parent;
    std::string name;
    v1::Dentry d;
  };
  std::vector<Entry> entries;
  absl::flat_hash_set<uint64_t> orphans;
  absl::flat_hash_set<uint64_t> pending_gc;
  uint64_t ino_limit = 0;
  auto& errors = report.errors;
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    absl::string_view key(it->key().data(), it->key().size());
    if (absl::StartsWith(key, kInodePrefix) && key.size() == 10) {
      v1::Inode inode;
      uint64_t id = ReadBe64(key.data() + 2);
      if (!inode.ParseFromArray(it->value().data(),
                                static_cast<int>(it->value().size()))) {
        errors.push_back(absl::StrCat("inode ", id, ": unparsable"));
        continue;
      }
      if (inode.id() != id) {
        errors.push_back(
            absl::StrCat("inode key ", id, " holds id ", inode.id()));
      }
      inodes[id] = std::move(inode);
    } else if (absl::StartsWith(key, kDentryPrefix) && key.size() > 10) {
      Entry e{ReadBe64(key.data() + 2), std::string(key.substr(10)), {}};
      if (!e.d.ParseFromArray(it->value().data(),
                              static_cast<int>(it->value().size()))) {
        errors.push_back(absl::StrCat("dentry ", Describe(e.parent, e.name),
                                      ": unparsable"));
        continue;
      }
      entries.push_back(std::move(e));
    } else if (absl::StartsWith(key, kOrphanPrefix) && key.size() == 10) {
      orphans.insert(ReadBe64(key.data() + 2));
    } else if (absl::StartsWith(key, kGcPrefix) && key.size() == 10) {
      pending_gc.insert(ReadBe64(key.data() + 2));
    } else if (key == kNextInoKey && it->value().size() == 8) {
      ino_limit = ReadBe64(it->value().data());
    } else {
      errors.push_back(absl::StrCat("unknown key of ", key.size(), " bytes"));
    }
  }
  absl::Status it_status = FromRocks(it->status(), "fsck scan");
  it.reset();
  db_->ReleaseSnapshot(snap);
  RETURN_IF_ERROR(it_status);
  report.inodes = inodes.size();
  report.dentries = entries.size();
  report.orphans = orphans.size();
  report.pending_gc = pending_gc.size();

  auto root = inodes.find(kRootIno);
  if (root == inodes.end() || !IsDir(root->second)) {
    errors.push_back("root inode missing or not a directory");
  } else if (root->second.parent() != kRootIno) {
    errors.push_back("root's parent is not itself");
  }
  std::map<uint64_t, uint32_t> links;    // dentries naming each inode
  std::map<uint64_t, uint32_t> subdirs;  // subdirectories of each dir
  std::map<uint64_t, std::vector<uint64_t>> children;
  for (const Entry& e : entries) {
    std::string where = absl::StrCat("dentry ", Describe(e.parent, e.name));
    if (ValidateName(e.name).ok() == false) {
      errors.push_back(absl::StrCat(where, ": invalid name"));
    }
    auto p = inodes.find(e.parent);
    if (p == inodes.end()) {
      errors.push_back(absl::StrCat(where, ": parent missing"));
    } else if (!IsDir(p->second)) {
      errors.push_back(absl::StrCat(where, ": parent is not a directory"));
    }
    auto c = inodes.find(e.d.ino());
    if (c == inodes.end()) {
      errors.push_back(absl::StrCat(where, ": inode ", e.d.ino(), " missing"));
      continue;
    }
    if (c->second.type() != e.d.type()) {
      errors.push_back(absl::StrCat(where, ": type differs from inode's"));
    }
    ++links[e.d.ino()];
    children[e.parent].push_back(e.d.ino());
    if (IsDir(c->second)) {
      ++subdirs[e.parent];
      if (c->second.parent() != e.parent) {
        errors.push_back(absl::StrCat("directory ", e.d.ino(), " has parent ",
                                      c->second.parent(), " but is named in ",
                                      e.parent));
      }
    }
  }
  // Reachability from the root.
  absl::flat_hash_set<uint64_t> reached = {kRootIno};
  std::deque<uint64_t> queue = {kRootIno};
  while (!queue.empty()) {
    uint64_t id = queue.front();
    queue.pop_front();
    for (uint64_t child : children[id]) {
      if (reached.insert(child).second) queue.push_back(child);
    }
  }
  for (const auto& [id, inode] : inodes) {
    std::string where = absl::StrCat("inode ", id);
    if (ino_limit != 0 && id >= ino_limit && id != kRootIno) {
      errors.push_back(absl::StrCat(where, ": id beyond the inode counter"));
    }
    uint32_t n = links[id];
    if (IsDir(inode)) {
      if (id != kRootIno && n != 1) {
        errors.push_back(
            absl::StrCat(where, ": directory named ", n, " times"));
      }
      if (inode.nlink() != 2 + subdirs[id]) {
        errors.push_back(absl::StrCat(where, ": nlink ", inode.nlink(), " but ",
                                      subdirs[id], " subdirectories"));
      }
    } else if (inode.nlink() != n) {
      errors.push_back(absl::StrCat(where, ": nlink ", inode.nlink(), " but ",
                                    n, " dentries"));
    }
    if (inode.nlink() == 0 && !orphans.contains(id)) {
      errors.push_back(absl::StrCat(where, ": unlinked but not an orphan"));
    }
    if (!reached.contains(id) && !orphans.contains(id)) {
      errors.push_back(absl::StrCat(where, ": unreachable from the root"));
    }
  }
  for (uint64_t id : pending_gc) {
    if (inodes.contains(id)) {
      errors.push_back(absl::StrCat("gc mark ", id, ": inode still exists"));
    }
  }
  for (uint64_t id : orphans) {
    auto i = inodes.find(id);
    if (i == inodes.end() || i->second.nlink() != 0) {
      errors.push_back(
          absl::StrCat("orphan ", id, ": inode missing or linked"));
    }
  }
  return report;
}

}  // namespace dsec::fs
