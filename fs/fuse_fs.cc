#define FUSE_USE_VERSION 312
#include "fs/fuse_fs.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse3/fuse_lowlevel.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <future>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "fs/fs_error.h"

namespace dsec::fs {
namespace {

constexpr uint64_t kNoOffset = std::numeric_limits<uint64_t>::max();
// Noted directory states kept at most (see FuseMount::Impl::NoteDirs).
constexpr size_t kMaxNotedDirs = 1 << 16;
// Held-back closes: sent after this long, or at once when this many wait.
constexpr absl::Duration kCloseHoldBack = absl::Milliseconds(5);
constexpr size_t kCloseBatch = 256;
// Listings (see FuseMount::Impl::Listing): fetched after this many lookups
// in one directory within attr_timeout; directories with more entries than
// kMaxListingEntries are not cached; at most kMaxListedEntries in all.
constexpr int kStataheadLookups = 32;
constexpr size_t kMaxListingEntries = 100000;
constexpr size_t kMaxListedEntries = 1000000;

int64_t NowNs() { return absl::ToUnixNanos(absl::Now()); }

timespec ToTimespec(int64_t ns) {
  timespec ts;
  ts.tv_sec = ns / 1000000000;
  ts.tv_nsec = ns % 1000000000;
  if (ts.tv_nsec < 0) {
    ts.tv_nsec += 1000000000;
    --ts.tv_sec;
  }
  return ts;
}

int64_t FromTimespec(const timespec& ts) {
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

mode_t TypeBits(v1::InodeType type) {
  switch (type) {
    case v1::INODE_TYPE_DIRECTORY:
      return S_IFDIR;
    case v1::INODE_TYPE_SYMLINK:
      return S_IFLNK;
    default:
      return S_IFREG;
  }
}

// An open file: its size as this handle sees it, the write-back buffer and
// the readahead window.
struct FileHandle {
  uint64_t ino = 0;
  FileRef ref;
  bool writable = false;
  // Opened from the sealed-inode cache without telling the meta server (a
  // sealed file cannot be unlinked or written, so there is nothing to track).
  bool untracked = false;

  absl::Mutex mu;
  // Committed length at open, grown by this handle's writes and refreshed
  // when a read reaches past it.
  uint64_t size ABSL_GUARDED_BY(mu) = 0;
  // `size` is not yet committed to the meta server.
  bool size_dirty ABSL_GUARDED_BY(mu) = false;
  // Contiguous buffered write [buf_off, buf_off + buf.size()).
  uint64_t buf_off ABSL_GUARDED_BY(mu) = 0;
  std::string buf ABSL_GUARDED_BY(mu);
  // A failed background flush, reported by the next write/flush/fsync.
  absl::Status write_error ABSL_GUARDED_BY(mu);
  // Buffers being written to the chunk servers in the background, oldest
  // first.
  struct Inflight {
    uint64_t off = 0;
    uint64_t len = 0;
    std::future<absl::Status> done;
  };
  std::deque<Inflight> inflight ABSL_GUARDED_BY(mu);
  // Readahead window [ra_off, ra_off + ra.size()) and where the last read
  // ended (sequential detection).
  uint64_t ra_off ABSL_GUARDED_BY(mu) = 0;
  std::string ra ABSL_GUARDED_BY(mu);
  uint64_t last_end ABSL_GUARDED_BY(mu) = kNoOffset;
  // The next windows, being fetched, in file order and contiguous after
  // the current one (at most options.readahead_windows).
  struct Prefetch {
    uint64_t off = 0;
    uint64_t len = 0;
    std::future<absl::StatusOr<std::string>> data;
  };
  std::deque<Prefetch> prefetch ABSL_GUARDED_BY(mu);
};

// fusectl's abort file of connection `conn`, mounting fusectl if needed.
std::string ConnectionAbortPath(unsigned conn) {
  const std::string dir = "/sys/fs/fuse/connections";
  const std::string conn_dir = absl::StrCat(dir, "/", conn);
  if (access(conn_dir.c_str(), F_OK) != 0) {
    (void)mount("fusectl", dir.c_str(), "fusectl", 0, nullptr);
  }
  return conn_dir + "/abort";
}

// ---- crash safety of in-process mounts ----
//
// A process that serves its own mount and uses it (local mode, tests) must
// not hang when it crashes: a thread of it blocked in a FUSE request that a
// (now dead) loop thread had already read waits uninterruptibly for the
// answer, so the process never finishes exiting and /dev/fuse is never
// closed. On SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGABRT the handler below aborts
// every connection this process registered (fusectl's
// /sys/fs/fuse/connections/<minor>/abort), which fails those requests, then
// hands the signal to the previous disposition. The table is fixed-size and
// filled before the signal; the handler only does getpid/open/write/close/
// sigaction/raise (async-signal-safe). Slots record the owning pid, so a
// forked child that crashes (say, between clone and execve) does not abort
// its parent's mount.
constexpr int kMaxCrashAborts = 64;
constexpr std::array<int, 5> kCrashSignals = {SIGSEGV, SIGBUS, SIGILL, SIGFPE,
                                              SIGABRT};
struct CrashAbortSlot {
  // 0 free, 1 being filled or cleared, 2 armed.
  std::atomic<int> state{0};
  pid_t pid = 0;
  char path[PATH_MAX];
};
CrashAbortSlot g_crash_slots[kMaxCrashAborts];
struct sigaction g_prev_crash_actions[kCrashSignals.size()];

void AbortConnectionsOnCrash(int sig, siginfo_t* info, void* ucontext) {
  const pid_t self = getpid();
  for (CrashAbortSlot& slot : g_crash_slots) {
    if (slot.state.load(std::memory_order_acquire) != 2 || slot.pid != self) {
      continue;
    }
    int fd = open(slot.path, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      (void)!write(fd, "1", 1);
      close(fd);
    }
  }
  for (size_t i = 0; i < kCrashSignals.size(); ++i) {
    if (kCrashSignals[i] != sig) continue;
    const struct sigaction& prev = g_prev_crash_actions[i];
    if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction != nullptr) {
      // Chain to a handler installed before us, as it would have run.
      sigaction(sig, &prev, nullptr);
      prev.sa_sigaction(sig, info, ucontext);
      return;
    }
    sigaction(sig, &prev, nullptr);
  }
  // The signal is blocked while we run: re-raised, it is delivered with the
  // previous disposition as soon as we return (a fault would recur anyway).
  raise(sig);
}

void InstallCrashHandlersOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (size_t i = 0; i < kCrashSignals.size(); ++i) {
      struct sigaction sa;
      std::memset(&sa, 0, sizeof(sa));
      sa.sa_sigaction = &AbortConnectionsOnCrash;
      sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
      sigemptyset(&sa.sa_mask);
      sigaction(kCrashSignals[i], &sa, &g_prev_crash_actions[i]);
    }
  });
}

// Returns the slot index, or -1 if the table is full or the path too long.
int RegisterCrashAbort(const std::string& abort_path) {
  if (abort_path.size() >= PATH_MAX) return -1;
  InstallCrashHandlersOnce();
  for (int i = 0; i < kMaxCrashAborts; ++i) {
    CrashAbortSlot& slot = g_crash_slots[i];
    int expected = 0;
    if (!slot.state.compare_exchange_strong(expected, 1)) continue;
    slot.pid = getpid();
    std::memcpy(slot.path, abort_path.c_str(), abort_path.size() + 1);
    slot.state.store(2, std::memory_order_release);
    return i;
  }
  return -1;
}

void UnregisterCrashAbort(int index) {
  if (index < 0) return;
  CrashAbortSlot& slot = g_crash_slots[index];
  slot.state.store(1, std::memory_order_release);
  slot.path[0] = '\0';
  slot.state.store(0, std::memory_order_release);
}

// A directory listing, snapshotted at opendir so offsets stay stable.
struct DirHandle {
  std::vector<v1::DirEntry> entries;
};

}  // namespace

std::optional<unsigned> FuseConnection(const std::string& mountpoint) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  std::optional<unsigned> found;
  while (std::getline(in, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    if (f.size() < 5 || f[4] != mountpoint) continue;
    std::vector<std::string> dev = absl::StrSplit(f[2], ':');
    unsigned minor = 0;
    if (dev.size() == 2 && absl::SimpleAtoi(dev[1], &minor)) found = minor;
  }
  return found;
}

class FuseMount::Impl {
 public:
  Impl(FsClient* client, const FuseMountOptions& options)
      : client_(client), options_(options) {}
  ~Impl() { Shutdown(); }

  absl::Status Mount();
  absl::Status Run();
  absl::Status Start();
  void Stop();
  void Shutdown();
  absl::Status InstallSignalHandlers();
  const std::string& mountpoint() const { return options_.mountpoint; }

  // ---- operations (called by libfuse threads) ----
  static Impl* Of(fuse_req_t req) {
    return static_cast<Impl*>(fuse_req_userdata(req));
  }
  static void Init(void* userdata, fuse_conn_info* conn);
  static void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name);
  static void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr,
                      int to_set, fuse_file_info* fi);
  static void Readlink(fuse_req_t req, fuse_ino_t ino);
  static void Mknod(fuse_req_t req, fuse_ino_t parent, const char* name,
                    mode_t mode, dev_t rdev);
  static void Mkdir(fuse_req_t req, fuse_ino_t parent, const char* name,
                    mode_t mode);
  static void Unlink(fuse_req_t req, fuse_ino_t parent, const char* name);
  static void Rmdir(fuse_req_t req, fuse_ino_t parent, const char* name);
  static void Symlink(fuse_req_t req, const char* link, fuse_ino_t parent,
                      const char* name);
  static void Rename(fuse_req_t req, fuse_ino_t parent, const char* name,
                     fuse_ino_t newparent, const char* newname,
                     unsigned int flags);
  static void Link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
                   const char* newname);
  static void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                   fuse_file_info* fi);
  static void Write(fuse_req_t req, fuse_ino_t ino, const char* buf,
                    size_t size, off_t off, fuse_file_info* fi);
  static void Flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void Release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void Fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
                    fuse_file_info* fi);
  static void OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                      fuse_file_info* fi);
  static void ReleaseDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  static void StatFs(fuse_req_t req, fuse_ino_t ino);
  static void Create(fuse_req_t req, fuse_ino_t parent, const char* name,
                     mode_t mode, fuse_file_info* fi);

 private:
  struct stat ToStat(const v1::Inode& inode);
  double TimeoutFor(const v1::Inode& inode) const {
    return absl::ToDoubleSeconds(inode.sealed() ? options_.sealed_timeout
                                                : options_.attr_timeout);
  }
  // Timeouts: TimeoutFor(inode), but at most `max_timeout` seconds.
  void ReplyEntry(fuse_req_t req, const v1::Inode& inode,
                  double max_timeout = std::numeric_limits<double>::infinity());
  // "No such entry", cached by the kernel for `timeout` seconds.
  static void ReplyNegative(fuse_req_t req, double timeout);
  static void ReplyError(fuse_req_t req, const absl::Status& status);

  // Writes the buffered bytes (if any) to the chunk servers and waits for
  // every background flush.
  absl::Status FlushBuffer(FileHandle& h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(h.mu);
  // Hands the buffer to a background write (at most kMaxInflight per
  // handle; waits for the oldest beyond that).
  absl::Status FlushAsync(FileHandle& h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(h.mu);
  // Waits for background flushes: all, or down to `keep`.
  absl::Status WaitInflight(FileHandle& h, size_t keep)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(h.mu);
  // Buffer out + length committed to the meta server.
  absl::Status FlushAndCommit(FileHandle& h)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(h.mu);
  void StartPrefetch(FileHandle& h, uint64_t off, uint64_t file_size)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(h.mu);

  // Lengths of files with uncommitted writes through this mount, so stat()
  // shows a writer's length before close.
  void NoteLocalSize(uint64_t ino, uint64_t size, bool set);
  void DropLocalSize(uint64_t ino);
  std::optional<uint64_t> LocalSize(uint64_t ino);

  // Close-to-open page-cache keeping.
  bool KeepCache(const v1::Inode& inode);
  void ForgetCacheKey(uint64_t ino);

  FsClient* const client_;
  const FuseMountOptions options_;
  fuse_session* session_ = nullptr;
  bool mounted_ = false;
  bool signal_handlers_ = false;
  // This mount's slot in the crash-abort table, -1 if none.
  int crash_slot_ = -1;
  std::thread thread_;
  std::atomic<bool> stopping_{false};

  absl::Mutex sizes_mu_;
  // ino -> (length, open writable handles)
  absl::flat_hash_map<uint64_t, std::pair<uint64_t, int>> local_sizes_
      ABSL_GUARDED_BY(sizes_mu_);
  // Sealed inodes never change: kept forever once seen, so opens of image
  // files and lookups under sealed directories need no meta round trip.
  void NoteInode(const v1::Inode& inode);
  std::optional<v1::Inode> SealedInode(uint64_t ino);
  // (parent, name) -> child inode (0: no such entry) under sealed parents.
  std::optional<uint64_t> SealedChild(uint64_t parent, const char* name);
  void NoteSealedChild(uint64_t parent, const char* name, uint64_t child);
  absl::Mutex sealed_mu_;
  absl::flat_hash_map<uint64_t, v1::Inode> sealed_ ABSL_GUARDED_BY(sealed_mu_);
  absl::flat_hash_map<std::pair<uint64_t, std::string>, uint64_t>
      sealed_children_ ABSL_GUARDED_BY(sealed_mu_);

  // Directories as the namespace calls through this mount left them, and
  // when. After every create, unlink or rename in a directory the kernel
  // drops its attributes and asks for them again before the next path walk
  // (default_permissions needs them); the call's reply already carried
  // them, so GetAttr answers from here while they are younger than
  // attr_timeout, exactly as long as the kernel itself would have cached
  // them.
  void NoteDirs(std::vector<v1::Inode> dirs);
  // After a namespace call: notes the directories it returned, or forgets
  // what is known of `touched` when it failed (it may have changed them all
  // the same).
  void AfterNamespaceCall(const absl::Status& status,
                          std::vector<v1::Inode> dirs,
                          std::initializer_list<uint64_t> touched);
  // The same for a call that added entry `name` to `parent` (create,
  // mknod, mkdir, symlink, link), which also goes into its listing.
  void AfterAdd(uint64_t parent, const char* name,
                const absl::StatusOr<v1::Inode>& inode,
                std::vector<v1::Inode> dirs);
  // The same for a call that removed `name` from `parent` (unlink, rmdir).
  void AfterRemove(uint64_t parent, const char* name,
                   const absl::Status& status, std::vector<v1::Inode> dirs);
  void ForgetDir(uint64_t ino);
  // The directory and how long it stays fresh, if noted recently.
  std::optional<std::pair<v1::Inode, absl::Duration>> FreshDir(uint64_t ino);
  absl::Mutex dirs_mu_;
  absl::flat_hash_map<uint64_t, std::pair<v1::Inode, absl::Time>> dirs_
      ABSL_GUARDED_BY(dirs_mu_);

  // Listings (statahead, readdirplus): a directory's complete listing with
  // every entry's inode, fetched at `fetched` (ReadDir with inodes). Lookups
  // in it, hits and misses alike, are answered from here while it is
  // younger than attr_timeout: the kernel caches entries, negative ones
  // included, just as long. Fetched when a directory is opened for reading
  // (ls -l, find, git status: a listing, then a lookup of each entry) or
  // when lookups in it keep coming (kStataheadLookups within attr_timeout:
  // a create, stat or unlink loop). This mount's own namespace calls keep
  // it current; an inode changed through this mount since the fetch
  // (closed after writing, truncated, chmod'ed, linked) is looked up again
  // instead, a file open for writing here shows its local length, and
  // a listing a local change raced with is not installed. Other clients'
  // changes show within attr_timeout, as with the kernel's own caches.
  struct Listing {
    absl::Time fetched;
    absl::flat_hash_map<std::string, v1::Inode> entries;
  };
  enum class Listed { kUnknown, kAbsent, kFound };
  // What the listing of `parent` says of `name`; on kFound/kAbsent also the
  // inode and how long the answer stays fresh.
  Listed FromListing(uint64_t parent, const std::string& name, v1::Inode* inode,
                     absl::Duration* left);
  // Counts a lookup that needed a call; true when `parent` is now hot
  // enough to fetch its listing.
  bool CountLookup(uint64_t parent);
  // Fetches and installs the listing of `dir` (pages of ReadDir with
  // inodes); the plain entries also go to `entries` when given.
  absl::Status FetchListing(uint64_t dir, std::vector<v1::DirEntry>* entries);
  void ListingAdd(uint64_t parent, const std::string& name,
                  const v1::Inode& inode);
  void ListingRemove(uint64_t parent, const std::string& name);
  void DropListing(uint64_t dir) ABSL_EXCLUSIVE_LOCKS_REQUIRED(listing_mu_);
  // Changes of these directories' entries that a fetch in progress cannot
  // replay: their listings are dropped and such fetches do not install.
  void ForgetListings(std::initializer_list<uint64_t> dirs);
  // `ino` changed through this mount: listings fetched before do not
  // answer for it.
  void TouchInode(uint64_t ino);
  absl::Mutex listing_mu_;
  absl::flat_hash_map<uint64_t, Listing> listings_ ABSL_GUARDED_BY(listing_mu_);
  size_t listed_entries_ ABSL_GUARDED_BY(listing_mu_) = 0;
  // A fetch in progress: this mount's changes to the directory meanwhile
  // (name -> inode, nullopt: removed), applied on top of what it fetched;
  // `raced` when one of them cannot be replayed (a rename, a failed call).
  struct Fetch {
    bool raced = false;
    std::vector<std::pair<std::string, std::optional<v1::Inode>>> changes;
  };
  absl::flat_hash_map<uint64_t, Fetch> fetching_ ABSL_GUARDED_BY(listing_mu_);
  // dir -> (window start, lookups that needed a call).
  absl::flat_hash_map<uint64_t, std::pair<absl::Time, int>> heat_
      ABSL_GUARDED_BY(listing_mu_);
  absl::flat_hash_map<uint64_t, absl::Time> touched_
      ABSL_GUARDED_BY(listing_mu_);

  // Closes of handles with nothing to commit (read-only opens, files
  // created or opened but never written) are held back up to
  // kCloseHoldBack and sent together with CloseMany by closer_: the
  // application does not wait for a release anyway, and one call per close
  // costs the meta server and this process a round trip each. The meta
  // server only learns later that the handle is gone: an unlink in between
  // keeps the inode as an orphan, which the held-back close then reclaims.
  void DeferClose(uint64_t ino);
  void CloserLoop();
  absl::Mutex close_mu_;
  std::vector<uint64_t> pending_closes_ ABSL_GUARDED_BY(close_mu_);
  bool closer_stop_ ABSL_GUARDED_BY(close_mu_) = false;
  std::thread closer_;

  absl::Mutex cache_mu_;
  // ino -> (mtime_ns, size) when last opened.
  absl::flat_hash_map<uint64_t, std::pair<int64_t, uint64_t>> cache_keys_
      ABSL_GUARDED_BY(cache_mu_);
};

// ---- helpers ----

struct stat FuseMount::Impl::ToStat(const v1::Inode& inode) {
  struct stat st;
  std::memset(&st, 0, sizeof(st));
  st.st_ino = inode.id();
  st.st_mode = TypeBits(inode.type()) | (inode.mode() & 07777);
  st.st_nlink = inode.nlink();
  st.st_uid = inode.uid();
  st.st_gid = inode.gid();
  uint64_t size = inode.size();
  if (inode.type() == v1::INODE_TYPE_FILE) {
    if (std::optional<uint64_t> local = LocalSize(inode.id())) {
      size = *local;
    }
  }
  st.st_size = static_cast<off_t>(size);
  st.st_blksize = 1 << 20;
  st.st_blocks = static_cast<blkcnt_t>((size + 511) / 512);
  st.st_atim = ToTimespec(inode.atime_ns());
  st.st_mtim = ToTimespec(inode.mtime_ns());
  st.st_ctim = ToTimespec(inode.ctime_ns());
  return st;
}

void FuseMount::Impl::NoteInode(const v1::Inode& inode) {
  if (!inode.sealed()) return;
  absl::MutexLock lock(&sealed_mu_);
  if (sealed_.size() < (1u << 20)) sealed_.try_emplace(inode.id(), inode);
}

std::optional<uint64_t> FuseMount::Impl::SealedChild(uint64_t parent,
                                                     const char* name) {
  absl::MutexLock lock(&sealed_mu_);
  auto it = sealed_children_.find(std::make_pair(parent, std::string(name)));
  if (it == sealed_children_.end()) return std::nullopt;
  return it->second;
}

void FuseMount::Impl::NoteSealedChild(uint64_t parent, const char* name,
                                      uint64_t child) {
  absl::MutexLock lock(&sealed_mu_);
  if (sealed_children_.size() < (1u << 21)) {
    sealed_children_.try_emplace(std::make_pair(parent, std::string(name)),
                                 child);
  }
}

std::optional<v1::Inode> FuseMount::Impl::SealedInode(uint64_t ino) {
  absl::MutexLock lock(&sealed_mu_);
  auto it = sealed_.find(ino);
  if (it == sealed_.end()) return std::nullopt;
  return it->second;
}

void FuseMount::Impl::NoteDirs(std::vector<v1::Inode> dirs) {
  if (dirs.empty()) return;
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&dirs_mu_);
  if (dirs_.size() > kMaxNotedDirs) {
    // Drop the stale ones; if all are fresh, start over.
    absl::erase_if(dirs_, [&](const auto& kv) {
      return now - kv.second.second >= options_.attr_timeout;
    });
    if (dirs_.size() > kMaxNotedDirs) dirs_.clear();
  }
  for (v1::Inode& dir : dirs) {
    auto [it, inserted] = dirs_.try_emplace(dir.id(), dir, now);
    // Concurrent calls in one directory may reply out of order: keep the
    // later state (the server stamps ctime on every change).
    if (!inserted && dir.ctime_ns() >= it->second.first.ctime_ns()) {
      it->second = {std::move(dir), now};
    }
  }
}

void FuseMount::Impl::AfterNamespaceCall(
    const absl::Status& status, std::vector<v1::Inode> dirs,
    std::initializer_list<uint64_t> touched) {
  if (status.ok()) {
    // Their own entries in their parents' listings are stale now.
    for (const v1::Inode& dir : dirs) TouchInode(dir.id());
    return NoteDirs(std::move(dirs));
  }
  for (uint64_t ino : touched) ForgetDir(ino);
  ForgetListings(touched);
}

void FuseMount::Impl::AfterAdd(uint64_t parent, const char* name,
                               const absl::StatusOr<v1::Inode>& inode,
                               std::vector<v1::Inode> dirs) {
  AfterNamespaceCall(inode.status(), std::move(dirs), {parent});
  if (inode.ok()) ListingAdd(parent, name, *inode);
}

void FuseMount::Impl::AfterRemove(uint64_t parent, const char* name,
                                  const absl::Status& status,
                                  std::vector<v1::Inode> dirs) {
  AfterNamespaceCall(status, std::move(dirs), {parent});
  if (status.ok()) ListingRemove(parent, name);
}

void FuseMount::Impl::ForgetDir(uint64_t ino) {
  absl::MutexLock lock(&dirs_mu_);
  dirs_.erase(ino);
}

std::optional<std::pair<v1::Inode, absl::Duration>> FuseMount::Impl::FreshDir(
    uint64_t ino) {
  absl::MutexLock lock(&dirs_mu_);
  auto it = dirs_.find(ino);
  if (it == dirs_.end()) return std::nullopt;
  absl::Duration left =
      options_.attr_timeout - (absl::Now() - it->second.second);
  if (left <= absl::ZeroDuration()) {
    dirs_.erase(it);
    return std::nullopt;
  }
  return std::make_pair(it->second.first, left);
}

FuseMount::Impl::Listed FuseMount::Impl::FromListing(uint64_t parent,
                                                     const std::string& name,
                                                     v1::Inode* inode,
                                                     absl::Duration* left) {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&listing_mu_);
  auto it = listings_.find(parent);
  if (it == listings_.end()) return Listed::kUnknown;
  *left = options_.attr_timeout - (now - it->second.fetched);
  if (*left <= absl::ZeroDuration()) {
    DropListing(parent);
    // Still in use: fetch it again after the next lookup.
    heat_[parent] = {now, kStataheadLookups - 1};
    return Listed::kUnknown;
  }
  auto e = it->second.entries.find(name);
  if (e == it->second.entries.end()) return Listed::kAbsent;
  auto t = touched_.find(e->second.id());
  if (t != touched_.end() && t->second >= it->second.fetched) {
    return Listed::kUnknown;
  }
  *inode = e->second;
  return Listed::kFound;
}

bool FuseMount::Impl::CountLookup(uint64_t parent) {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&listing_mu_);
  if (listings_.contains(parent) || fetching_.contains(parent)) return false;
  if (heat_.size() > 4096) heat_.clear();
  auto [it, inserted] = heat_.try_emplace(parent, now, 0);
  if (now - it->second.first > options_.attr_timeout) it->second = {now, 0};
  if (++it->second.second < kStataheadLookups) return false;
  heat_.erase(it);
  return true;
}

absl::Status FuseMount::Impl::FetchListing(uint64_t dir,
                                           std::vector<v1::DirEntry>* entries) {
  {
    absl::MutexLock lock(&listing_mu_);
    fetching_.try_emplace(dir);
  }
  const absl::Time fetched = absl::Now();
  Listing listing;
  listing.fetched = fetched;
  bool cacheable = true;
  std::string cursor;
  absl::Status status;
  while (true) {
    absl::StatusOr<ReadDirPage> page =
        client_->ReadDir(dir, cursor, 1000, /*with_inodes=*/true);
    if (!page.ok()) {
      status = page.status();
      break;
    }
    if (!page->entries.empty()) cursor = page->entries.back().name();
    for (v1::DirEntry& e : page->entries) {
      if (cacheable && e.has_inode() &&
          listing.entries.size() < kMaxListingEntries) {
        listing.entries.emplace(e.name(), std::move(*e.mutable_inode()));
      } else {
        cacheable = false;
      }
      e.clear_inode();
      if (entries != nullptr) entries->push_back(std::move(e));
    }
    // Too big to keep, and nobody wants the names: stop paging.
    if (!cacheable && entries == nullptr) break;
    if (!page->has_more || page->entries.empty()) break;
  }
  absl::MutexLock lock(&listing_mu_);
  auto f = fetching_.find(dir);
  // Gone: a second fetch of the same directory finished first.
  const bool raced = f == fetching_.end() || f->second.raced;
  if (!raced) {
    for (auto& [name, inode] : f->second.changes) {
      if (inode.has_value()) {
        listing.entries.insert_or_assign(name, std::move(*inode));
      } else {
        listing.entries.erase(name);
      }
    }
  }
  if (f != fetching_.end()) fetching_.erase(f);
  if (!status.ok() || !cacheable || raced) return status;
  if (listed_entries_ + listing.entries.size() > kMaxListedEntries) {
    const absl::Time now = absl::Now();
    absl::erase_if(listings_, [&](const auto& kv) {
      if (now - kv.second.fetched < options_.attr_timeout) return false;
      listed_entries_ -= kv.second.entries.size();
      return true;
    });
    if (listed_entries_ + listing.entries.size() > kMaxListedEntries) {
      return status;
    }
  }
  DropListing(dir);
  listed_entries_ += listing.entries.size();
  listings_.emplace(dir, std::move(listing));
  return status;
}

void FuseMount::Impl::ListingAdd(uint64_t parent, const std::string& name,
                                 const v1::Inode& inode) {
  absl::MutexLock lock(&listing_mu_);
  if (auto f = fetching_.find(parent); f != fetching_.end()) {
    f->second.changes.emplace_back(name, inode);
  }
  auto it = listings_.find(parent);
  if (it == listings_.end()) return;
  if (it->second.entries.insert_or_assign(name, inode).second) {
    ++listed_entries_;
  }
}

void FuseMount::Impl::ListingRemove(uint64_t parent, const std::string& name) {
  absl::MutexLock lock(&listing_mu_);
  if (auto f = fetching_.find(parent); f != fetching_.end()) {
    f->second.changes.emplace_back(name, std::nullopt);
  }
  auto it = listings_.find(parent);
  if (it == listings_.end()) return;
  auto e = it->second.entries.find(name);
  if (e == it->second.entries.end()) return;
  // Its other names (hard links) now show one link less.
  touched_[e->second.id()] = absl::Now();
  it->second.entries.erase(e);
  --listed_entries_;
}

void FuseMount::Impl::DropListing(uint64_t dir) {
  auto it = listings_.find(dir);
  if (it == listings_.end()) return;
  listed_entries_ -= it->second.entries.size();
  listings_.erase(it);
}

void FuseMount::Impl::ForgetListings(std::initializer_list<uint64_t> dirs) {
  absl::MutexLock lock(&listing_mu_);
  for (uint64_t dir : dirs) {
    if (auto f = fetching_.find(dir); f != fetching_.end()) {
      f->second.raced = true;
    }
    DropListing(dir);
  }
}

void FuseMount::Impl::TouchInode(uint64_t ino) {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&listing_mu_);
  if (touched_.size() > 65536) {
    // Touches older than attr_timeout predate every listing still fresh.
    absl::erase_if(touched_, [&](const auto& kv) {
      return now - kv.second > options_.attr_timeout;
    });
  }
  touched_[ino] = now;
}

void FuseMount::Impl::DeferClose(uint64_t ino) {
  absl::MutexLock lock(&close_mu_);
  pending_closes_.push_back(ino);
}

void FuseMount::Impl::CloserLoop() {
  while (true) {
    std::vector<uint64_t> batch;
    {
      absl::MutexLock lock(&close_mu_);
      auto some = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(close_mu_) {
        return !pending_closes_.empty() || closer_stop_;
      };
      close_mu_.Await(absl::Condition(&some));
      if (pending_closes_.empty()) return;  // stopping, nothing left
      if (!closer_stop_) {
        // Let a burst gather; a full batch goes at once.
        auto full = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(close_mu_) {
          return pending_closes_.size() >= kCloseBatch || closer_stop_;
        };
        close_mu_.AwaitWithTimeout(absl::Condition(&full), kCloseHoldBack);
      }
      batch.swap(pending_closes_);
    }
    absl::Status status = client_->CloseMany(batch);
    if (!status.ok()) {
      DSEC_LOG_WARN("dsec-mount: closing {} handles: {}", batch.size(),
                    status.ToString());
    }
  }
}

void FuseMount::Impl::ReplyEntry(fuse_req_t req, const v1::Inode& inode,
                                 double max_timeout) {
  NoteInode(inode);
  fuse_entry_param e;
  std::memset(&e, 0, sizeof(e));
  e.ino = inode.id();
  e.attr = ToStat(inode);
  e.attr_timeout = e.entry_timeout = std::min(TimeoutFor(inode), max_timeout);
  fuse_reply_entry(req, &e);
}

void FuseMount::Impl::ReplyNegative(fuse_req_t req, double timeout) {
  fuse_entry_param e;
  std::memset(&e, 0, sizeof(e));
  e.entry_timeout = timeout;
  fuse_reply_entry(req, &e);
}

void FuseMount::Impl::ReplyError(fuse_req_t req, const absl::Status& status) {
  int err = ErrnoOf(status);
  if (err <= 0) err = EIO;
  if (err != ENOENT && err != EEXIST && err != ENOTEMPTY) {
    DSEC_LOG_WARN("dsec-mount: {}", status.ToString());
  }
  fuse_reply_err(req, err);
}

void FuseMount::Impl::NoteLocalSize(uint64_t ino, uint64_t size, bool set) {
  absl::MutexLock lock(&sizes_mu_);
  auto it = local_sizes_.find(ino);
  if (it == local_sizes_.end()) return;
  it->second.first = set ? size : std::max(it->second.first, size);
}

void FuseMount::Impl::DropLocalSize(uint64_t ino) {
  absl::MutexLock lock(&sizes_mu_);
  auto it = local_sizes_.find(ino);
  if (it != local_sizes_.end() && --it->second.second <= 0) {
    local_sizes_.erase(it);
  }
}

std::optional<uint64_t> FuseMount::Impl::LocalSize(uint64_t ino) {
  absl::MutexLock lock(&sizes_mu_);
  auto it = local_sizes_.find(ino);
  if (it == local_sizes_.end()) return std::nullopt;
  return it->second.first;
}

bool FuseMount::Impl::KeepCache(const v1::Inode& inode) {
  if (inode.sealed()) return true;
  absl::MutexLock lock(&cache_mu_);
  auto key = std::make_pair(inode.mtime_ns(), inode.size());
  auto [it, inserted] = cache_keys_.try_emplace(inode.id(), key);
  if (inserted) return false;
  bool same = it->second == key;
  it->second = key;
  return same;
}

void FuseMount::Impl::ForgetCacheKey(uint64_t ino) {
  absl::MutexLock lock(&cache_mu_);
  cache_keys_.erase(ino);
}

absl::Status FuseMount::Impl::WaitInflight(FileHandle& h, size_t keep) {
  while (h.inflight.size() > keep) {
    absl::Status s = h.inflight.front().done.get();
    h.inflight.pop_front();
    if (!s.ok() && h.write_error.ok()) h.write_error = s;
  }
  return h.write_error;
}

absl::Status FuseMount::Impl::FlushAsync(FileHandle& h) {
  constexpr size_t kMaxInflight = 4;
  if (h.buf.empty()) return h.write_error;
  RETURN_IF_ERROR(WaitInflight(h, kMaxInflight - 1));
  FileHandle::Inflight job;
  job.off = h.buf_off;
  job.len = h.buf.size();
  FsClient* client = client_;
  FileRef ref = h.ref;
  job.done = std::async(std::launch::async, [client, ref, off = h.buf_off,
                                             data = std::move(h.buf)]() {
    return client->Write(ref, off, data);
  });
  h.buf = std::string();
  h.inflight.push_back(std::move(job));
  return absl::OkStatus();
}

absl::Status FuseMount::Impl::FlushBuffer(FileHandle& h) {
  RETURN_IF_ERROR(WaitInflight(h, 0));
  if (h.buf.empty()) return absl::OkStatus();
  absl::Status status = client_->Write(h.ref, h.buf_off, h.buf);
  h.buf.clear();
  if (!status.ok()) h.write_error = status;
  return status;
}

absl::Status FuseMount::Impl::FlushAndCommit(FileHandle& h) {
  absl::Status status = FlushBuffer(h);
  if (!status.ok()) return status;
  if (h.size_dirty) {
    status = client_->Fsync(h.ino, h.size);
    if (!status.ok()) return status;
    h.size_dirty = false;
  }
  return absl::OkStatus();
}

void FuseMount::Impl::StartPrefetch(FileHandle& h, uint64_t off,
                                    uint64_t file_size) {
  if (!h.prefetch.empty()) {
    off = h.prefetch.back().off + h.prefetch.back().len;
  }
  FsClient* client = client_;
  FileRef ref = h.ref;
  while (off < file_size &&
         h.prefetch.size() < static_cast<size_t>(options_.readahead_windows)) {
    uint64_t len =
        std::min<uint64_t>(options_.readahead_bytes, file_size - off);
    h.prefetch.push_back(FileHandle::Prefetch{
        off, len,
        std::async(std::launch::async, [client, ref, file_size, off, len] {
          return client->Read(ref, file_size, off, len);
        })});
    off += len;
  }
}

// ---- operations ----

void FuseMount::Impl::Init(void* userdata, fuse_conn_info* conn) {
  Impl* self = static_cast<Impl*>(userdata);
  conn->max_write = self->options_.max_io_bytes;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) {
    conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  }
  if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) {
    conn->want |= FUSE_CAP_CACHE_SYMLINKS;
  }
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  // Our own write-back buffering keeps lengths exact; the kernel's would
  // make it track them instead.
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
}

void FuseMount::Impl::Lookup(fuse_req_t req, fuse_ino_t parent,
                             const char* name) {
  Impl* self = Of(req);
  // Entries of sealed directories never change: answered from memory once
  // seen (the kernel may still drop its own copies, e.g. when a sandbox's
  // memory cgroup is emptied).
  const bool sealed_parent = self->SealedInode(parent).has_value();
  std::optional<uint64_t> known;
  if (sealed_parent) known = self->SealedChild(parent, name);
  absl::StatusOr<v1::Inode> inode;
  bool fetch_listing = false;
  if (known.has_value() && *known == 0) {
    inode = absl::NotFoundError("sealed directory: no such entry");
  } else if (std::optional<v1::Inode> child =
                 known.has_value() ? self->SealedInode(*known) : std::nullopt) {
    inode = std::move(*child);
  } else {
    v1::Inode listed;
    absl::Duration left;
    switch (self->FromListing(parent, name, &listed, &left)) {
      case Listed::kFound:
        return self->ReplyEntry(req, listed, absl::ToDoubleSeconds(left));
      case Listed::kAbsent:
        return ReplyNegative(req, absl::ToDoubleSeconds(left));
      case Listed::kUnknown:
        break;
    }
    inode = self->client_->Lookup(parent, name);
    if (sealed_parent &&
        (absl::IsNotFound(inode.status()) || (inode.ok() && inode->sealed()))) {
      self->NoteSealedChild(parent, name, inode.ok() ? inode->id() : 0);
    }
    fetch_listing = !sealed_parent && self->CountLookup(parent);
  }
  if (absl::IsNotFound(inode.status())) {
    // Negative entry, cached like a positive one. Nothing can appear in a
    // sealed directory.
    ReplyNegative(req,
                  absl::ToDoubleSeconds(self->SealedInode(parent).has_value()
                                            ? self->options_.sealed_timeout
                                            : self->options_.attr_timeout));
  } else if (!inode.ok()) {
    ReplyError(req, inode.status());
  } else {
    self->ReplyEntry(req, *inode);
  }
  // Answered: the caller does not wait for the listing.
  if (fetch_listing) (void)self->FetchListing(parent, nullptr);
}

void FuseMount::Impl::GetAttr(fuse_req_t req, fuse_ino_t ino,
                              fuse_file_info* fi) {
  Impl* self = Of(req);
  absl::StatusOr<v1::Inode> inode;
  if (std::optional<v1::Inode> sealed = self->SealedInode(ino)) {
    inode = std::move(*sealed);
  } else if (auto dir = self->FreshDir(ino)) {
    struct stat st = self->ToStat(dir->first);
    return (void)fuse_reply_attr(req, &st, absl::ToDoubleSeconds(dir->second));
  } else {
    inode = self->client_->GetAttr(ino);
  }
  if (!inode.ok()) return ReplyError(req, inode.status());
  self->NoteInode(*inode);
  struct stat st = self->ToStat(*inode);
  fuse_reply_attr(req, &st, self->TimeoutFor(*inode));
}

void FuseMount::Impl::SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr,
                              int to_set, fuse_file_info* fi) {
  Impl* self = Of(req);
  SetAttrArgs args;
  if (to_set & FUSE_SET_ATTR_MODE) {
    args.mask |= kSetMode;
    args.mode = attr->st_mode & 07777;
  }
  if (to_set & FUSE_SET_ATTR_UID) {
    args.mask |= kSetUid;
    args.uid = attr->st_uid;
  }
  if (to_set & FUSE_SET_ATTR_GID) {
    args.mask |= kSetGid;
    args.gid = attr->st_gid;
  }
  if (to_set & FUSE_SET_ATTR_ATIME) {
    args.mask |= kSetAtime;
    args.atime_ns = (to_set & FUSE_SET_ATTR_ATIME_NOW)
                        ? NowNs()
                        : FromTimespec(attr->st_atim);
  }
  if (to_set & FUSE_SET_ATTR_MTIME) {
    args.mask |= kSetMtime;
    args.mtime_ns = (to_set & FUSE_SET_ATTR_MTIME_NOW)
                        ? NowNs()
                        : FromTimespec(attr->st_mtim);
  }
  FileHandle* h =
      fi != nullptr ? reinterpret_cast<FileHandle*>(fi->fh) : nullptr;
  if (to_set & FUSE_SET_ATTR_SIZE) {
    args.mask |= kSetSize;
    args.size = static_cast<uint64_t>(attr->st_size);
    // The meta server must know every byte written so far, so that a
    // shrink removes it all.
    if (h != nullptr) {
      absl::MutexLock lock(&h->mu);
      absl::Status status = self->FlushAndCommit(*h);
      if (!status.ok()) return ReplyError(req, status);
    } else if (std::optional<uint64_t> local = self->LocalSize(ino)) {
      absl::StatusOr<v1::Inode> current = self->client_->GetAttr(ino);
      if (current.ok() && *local > current->size()) {
        absl::Status status = self->client_->Fsync(ino, *local);
        if (!status.ok()) return ReplyError(req, status);
      }
    }
    self->ForgetCacheKey(ino);
  }
  self->ForgetDir(ino);
  self->TouchInode(ino);
  absl::StatusOr<v1::Inode> inode = self->client_->SetAttr(ino, args);
  if (!inode.ok()) return ReplyError(req, inode.status());
  if (to_set & FUSE_SET_ATTR_SIZE) {
    self->NoteLocalSize(ino, args.size, /*set=*/true);
    if (h != nullptr) {
      absl::MutexLock lock(&h->mu);
      h->size = args.size;
      h->ra.clear();
    }
  }
  struct stat st = self->ToStat(*inode);
  fuse_reply_attr(req, &st, self->TimeoutFor(*inode));
}

void FuseMount::Impl::Readlink(fuse_req_t req, fuse_ino_t ino) {
  absl::StatusOr<std::string> target = Of(req)->client_->Readlink(ino);
  if (!target.ok()) return ReplyError(req, target.status());
  fuse_reply_readlink(req, target->c_str());
}

void FuseMount::Impl::Mknod(fuse_req_t req, fuse_ino_t parent, const char* name,
                            mode_t mode, dev_t rdev) {
  if (!S_ISREG(mode)) {
    return ReplyError(req, FsError(EPERM,
                                   "dsec-fs holds only regular files, "
                                   "directories and symlinks"));
  }
  const fuse_ctx* ctx = fuse_req_ctx(req);
  Impl* self = Of(req);
  std::vector<v1::Inode> dirs;
  absl::StatusOr<v1::Inode> inode = self->client_->Create(
      parent, name, mode & 07777, ctx->uid, ctx->gid, /*open=*/false, &dirs);
  self->AfterAdd(parent, name, inode, std::move(dirs));
  if (!inode.ok()) return ReplyError(req, inode.status());
  self->ReplyEntry(req, *inode);
}

void FuseMount::Impl::Mkdir(fuse_req_t req, fuse_ino_t parent, const char* name,
                            mode_t mode) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  Impl* self = Of(req);
  std::vector<v1::Inode> dirs;
  absl::StatusOr<v1::Inode> inode = self->client_->Mkdir(
      parent, name, mode & 07777, ctx->uid, ctx->gid, &dirs);
  self->AfterAdd(parent, name, inode, std::move(dirs));
  if (!inode.ok()) return ReplyError(req, inode.status());
  self->ReplyEntry(req, *inode);
}

void FuseMount::Impl::Unlink(fuse_req_t req, fuse_ino_t parent,
                             const char* name) {
  Impl* self = Of(req);
  std::vector<v1::Inode> dirs;
  absl::Status status = self->client_->Unlink(parent, name, &dirs);
  self->AfterRemove(parent, name, status, std::move(dirs));
  fuse_reply_err(req, ErrnoOf(status));
}

void FuseMount::Impl::Rmdir(fuse_req_t req, fuse_ino_t parent,
                            const char* name) {
  Impl* self = Of(req);
  std::vector<v1::Inode> dirs;
  absl::Status status = self->client_->Rmdir(parent, name, &dirs);
  self->AfterRemove(parent, name, status, std::move(dirs));
  fuse_reply_err(req, ErrnoOf(status));
}

void FuseMount::Impl::Symlink(fuse_req_t req, const char* link,
                              fuse_ino_t parent, const char* name) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  Impl* self = Of(req);
  std::vector<v1::Inode> dirs;
  absl::StatusOr<v1::Inode> inode =
      self->client_->Symlink(parent, name, link, ctx->uid, ctx->gid, &dirs);
  self->AfterAdd(parent, name, inode, std::move(dirs));
  if (!inode.ok()) return ReplyError(req, inode.status());
  self->ReplyEntry(req, *inode);
}

void FuseMount::Impl::Rename(fuse_req_t req, fuse_ino_t parent,
                             const char* name, fuse_ino_t newparent,
                             const char* newname, unsigned int flags) {
  if ((flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) != 0) {
    return ReplyError(req, FsError(EINVAL, "unsupported rename flags"));
  }
  uint32_t f = 0;
  if (flags & RENAME_NOREPLACE) f |= kRenameNoReplace;
  if (flags & RENAME_EXCHANGE) f |= kRenameExchange;
  Impl* self = Of(req);
  std::vector<v1::Inode> dirs;
  absl::Status status =
      self->client_->Rename(parent, name, newparent, newname, f, &dirs);
  self->AfterNamespaceCall(status, std::move(dirs), {parent, newparent});
  // Entries moved, replaced or swapped: listed afresh when needed.
  self->ForgetListings({parent, newparent});
  fuse_reply_err(req, ErrnoOf(status));
}

void FuseMount::Impl::Link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
                           const char* newname) {
  Impl* self = Of(req);
  std::vector<v1::Inode> dirs;
  absl::StatusOr<v1::Inode> inode =
      self->client_->Link(ino, newparent, newname, &dirs);
  self->AfterAdd(newparent, newname, inode, std::move(dirs));
  if (inode.ok()) self->TouchInode(ino);  // its other names: one more link
  if (!inode.ok()) return ReplyError(req, inode.status());
  self->ReplyEntry(req, *inode);
}

void FuseMount::Impl::Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Impl* self = Of(req);
  const bool for_write = (fi->flags & O_ACCMODE) != O_RDONLY;
  std::optional<v1::Inode> sealed =
      for_write ? std::nullopt : self->SealedInode(ino);
  absl::StatusOr<v1::Inode> inode =
      sealed.has_value() ? absl::StatusOr<v1::Inode>(std::move(*sealed))
                         : self->client_->Open(ino, for_write);
  if (!inode.ok()) return ReplyError(req, inode.status());
  self->NoteInode(*inode);
  auto h = std::make_unique<FileHandle>();
  h->ino = ino;
  h->ref = FileRef::Of(*inode);
  h->writable = for_write;
  h->untracked = sealed.has_value();
  {
    absl::MutexLock lock(&h->mu);
    h->size = inode->size();
    if (std::optional<uint64_t> local = self->LocalSize(ino)) {
      h->size = std::max(h->size, *local);
    }
  }
  if (for_write) {
    self->TouchInode(ino);
    absl::MutexLock lock(&self->sizes_mu_);
    auto [it, inserted] = self->local_sizes_.try_emplace(ino, inode->size(), 0);
    ++it->second.second;
    self->ForgetCacheKey(ino);
  } else {
    fi->keep_cache = self->KeepCache(*inode) ? 1 : 0;
  }
  FileHandle* raw = h.release();
  fi->fh = reinterpret_cast<uint64_t>(raw);
  if (fuse_reply_open(req, fi) == -ENOENT) {
    // The opener was interrupted and no release will come: undo.
    if (!raw->untracked) (void)self->client_->Close(ino, std::nullopt);
    if (for_write) self->DropLocalSize(ino);
    delete raw;
  }
}

void FuseMount::Impl::Create(fuse_req_t req, fuse_ino_t parent,
                             const char* name, mode_t mode,
                             fuse_file_info* fi) {
  Impl* self = Of(req);
  const fuse_ctx* ctx = fuse_req_ctx(req);
  std::vector<v1::Inode> dirs;
  absl::StatusOr<v1::Inode> inode = self->client_->Create(
      parent, name, mode & 07777, ctx->uid, ctx->gid, /*open=*/true, &dirs);
  self->AfterAdd(parent, name, inode, std::move(dirs));
  if (ErrnoOf(inode.status()) == EEXIST && (fi->flags & O_EXCL) == 0) {
    // The name exists after all: the negative answer the kernel acted on
    // (from a listing or its own negative entry) was stale, another client
    // created it. The listing is dropped above; ESTALE makes the kernel
    // look the name up afresh and open what is there, checking its
    // permissions, as open(O_CREAT) without O_EXCL must.
    return (void)fuse_reply_err(req, ESTALE);
  }
  if (!inode.ok()) return ReplyError(req, inode.status());
  auto h = std::make_unique<FileHandle>();
  h->ino = inode->id();
  h->ref = FileRef::Of(*inode);
  h->writable = true;
  {
    absl::MutexLock lock(&self->sizes_mu_);
    auto [it, inserted] = self->local_sizes_.try_emplace(inode->id(), 0, 0);
    ++it->second.second;
  }
  fi->fh = reinterpret_cast<uint64_t>(h.release());
  fuse_entry_param e;
  std::memset(&e, 0, sizeof(e));
  e.ino = inode->id();
  e.attr = self->ToStat(*inode);
  e.attr_timeout = self->TimeoutFor(*inode);
  e.entry_timeout = self->TimeoutFor(*inode);
  fuse_reply_create(req, &e, fi);
}

void FuseMount::Impl::Read(fuse_req_t req, fuse_ino_t ino, size_t size,
                           off_t off_signed, fuse_file_info* fi) {
  Impl* self = Of(req);
  FileHandle& h = *reinterpret_cast<FileHandle*>(fi->fh);
  const uint64_t off = static_cast<uint64_t>(off_signed);
  absl::MutexLock lock(&h.mu);
  // Our own buffered writes must be visible.
  if (!h.buf.empty() || !h.inflight.empty()) {
    absl::Status status = self->FlushBuffer(h);
    if (!status.ok()) return ReplyError(req, status);
    h.ra.clear();
  }
  if (off + size > h.size) {
    // The file may have grown (another writer): refresh the length.
    absl::StatusOr<v1::Inode> inode = self->client_->GetAttr(ino);
    if (inode.ok()) h.size = std::max(h.size, inode->size());
    if (std::optional<uint64_t> local = self->LocalSize(ino)) {
      h.size = std::max(h.size, *local);
    }
  }
  const uint64_t file_size = h.size;
  if (off >= file_size) {
    h.last_end = off;
    return (void)fuse_reply_buf(req, nullptr, 0);
  }
  const uint64_t want = std::min<uint64_t>(size, file_size - off);
  auto in_window = [&]() {
    return !h.ra.empty() && off >= h.ra_off &&
           off + want <= h.ra_off + h.ra.size();
  };
  while (!in_window() && !h.prefetch.empty()) {
    // Adopt the first prefetched window the read falls in (waiting for it);
    // windows before it are passed over, and all of them are stale if the
    // read is elsewhere.
    FileHandle::Prefetch& next = h.prefetch.front();
    if (off < next.off ||
        off >= h.prefetch.back().off + h.prefetch.back().len) {
      while (!h.prefetch.empty()) {
        (void)h.prefetch.front().data.get();
        h.prefetch.pop_front();
      }
      break;
    }
    absl::StatusOr<std::string> data = next.data.get();
    uint64_t next_off = next.off;
    h.prefetch.pop_front();
    if (data.ok() && off >= next_off && off + want <= next_off + data->size()) {
      h.ra = std::move(*data);
      h.ra_off = next_off;
    }
  }
  const bool sequential = off == h.last_end || off == 0;
  if (!in_window()) {
    uint64_t fetch = want;
    if (sequential) {
      fetch = std::max<uint64_t>(want, self->options_.readahead_bytes);
      fetch = std::min<uint64_t>(fetch, file_size - off);
    }
    absl::StatusOr<std::string> data =
        self->client_->Read(h.ref, file_size, off, fetch);
    if (!data.ok()) return ReplyError(req, data.status());
    if (!sequential) {
      h.last_end = off + data->size();
      return (void)fuse_reply_buf(req, data->data(), data->size());
    }
    h.ra = std::move(*data);
    h.ra_off = off;
  }
  h.last_end = off + want;
  if (sequential) {
    self->StartPrefetch(h, h.ra_off + h.ra.size(), file_size);
  }
  const size_t start = off - h.ra_off;
  const size_t n = std::min<size_t>(want, h.ra.size() - start);
  fuse_reply_buf(req, h.ra.data() + start, n);
}

void FuseMount::Impl::Write(fuse_req_t req, fuse_ino_t ino, const char* buf,
                            size_t size, off_t off_signed, fuse_file_info* fi) {
  Impl* self = Of(req);
  FileHandle& h = *reinterpret_cast<FileHandle*>(fi->fh);
  const uint64_t off = static_cast<uint64_t>(off_signed);
  absl::MutexLock lock(&h.mu);
  if (!h.write_error.ok()) return ReplyError(req, h.write_error);
  h.ra.clear();
  h.last_end = kNoOffset;
  const uint64_t limit = self->options_.write_buffer_bytes;
  absl::Status status;
  if (!h.buf.empty() && off == h.buf_off + h.buf.size() &&
      h.buf.size() + size <= limit) {
    h.buf.append(buf, size);
  } else {
    // A write overlapping a background flush must land after it.
    bool overlaps = false;
    for (const FileHandle::Inflight& f : h.inflight) {
      overlaps |= off < f.off + f.len && f.off < off + size;
    }
    status =
        overlaps || size >= limit ? self->FlushBuffer(h) : self->FlushAsync(h);
    if (!status.ok()) return ReplyError(req, status);
    if (size >= limit) {
      status = self->client_->Write(h.ref, off, absl::string_view(buf, size));
      if (!status.ok()) return ReplyError(req, status);
    } else {
      h.buf_off = off;
      h.buf.assign(buf, size);
    }
  }
  if (h.buf.size() >= limit) {
    status = self->FlushAsync(h);
    if (!status.ok()) return ReplyError(req, status);
  }
  if (off + size > h.size) h.size = off + size;
  h.size_dirty = true;
  self->NoteLocalSize(ino, h.size, /*set=*/false);
  fuse_reply_write(req, size);
}

void FuseMount::Impl::Flush(fuse_req_t req, fuse_ino_t ino,
                            fuse_file_info* fi) {
  FileHandle& h = *reinterpret_cast<FileHandle*>(fi->fh);
  absl::MutexLock lock(&h.mu);
  fuse_reply_err(req, ErrnoOf(Of(req)->FlushAndCommit(h)));
}

void FuseMount::Impl::Fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
                            fuse_file_info* fi) {
  FileHandle& h = *reinterpret_cast<FileHandle*>(fi->fh);
  Of(req)->TouchInode(ino);
  absl::MutexLock lock(&h.mu);
  absl::Status status = Of(req)->FlushAndCommit(h);
  if (status.ok() && h.writable) {
    // Commit the length even when nothing was written since the last flush.
    status = Of(req)->client_->Fsync(h.ino, h.size);
  }
  fuse_reply_err(req, ErrnoOf(status));
}

void FuseMount::Impl::Release(fuse_req_t req, fuse_ino_t ino,
                              fuse_file_info* fi) {
  Impl* self = Of(req);
  std::unique_ptr<FileHandle> h(reinterpret_cast<FileHandle*>(fi->fh));
  absl::Status status;
  {
    absl::MutexLock lock(&h->mu);
    status = self->FlushBuffer(*h);
    std::optional<uint64_t> size;
    if (h->size_dirty && status.ok()) size = h->size;
    if (!h->untracked && !size.has_value() && status.ok()) {
      self->DeferClose(ino);
    } else if (!h->untracked) {
      absl::Status closed = self->client_->Close(ino, size);
      if (status.ok()) status = closed;
    }
    for (FileHandle::Prefetch& p : h->prefetch) (void)p.data.get();
  }
  if (h->writable) {
    self->TouchInode(ino);  // its committed length may have moved
    self->DropLocalSize(ino);
  }
  fuse_reply_err(req, ErrnoOf(status));
}

void FuseMount::Impl::OpenDir(fuse_req_t req, fuse_ino_t ino,
                              fuse_file_info* fi) {
  Impl* self = Of(req);
  auto dir = std::make_unique<DirHandle>();
  absl::Status status = self->FetchListing(ino, &dir->entries);
  if (!status.ok()) return ReplyError(req, status);
  fi->fh = reinterpret_cast<uint64_t>(dir.release());
  fi->cache_readdir = 0;
  if (fuse_reply_open(req, fi) == -ENOENT) {
    delete reinterpret_cast<DirHandle*>(fi->fh);
  }
}

void FuseMount::Impl::ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size,
                              off_t off, fuse_file_info* fi) {
  const DirHandle& dir = *reinterpret_cast<DirHandle*>(fi->fh);
  std::string buf(size, '\0');
  size_t used = 0;
  // Offsets: 0 ".", 1 "..", 2 + i entry i; each entry carries the next one.
  const size_t total = dir.entries.size() + 2;
  for (size_t i = static_cast<size_t>(off); i < total; ++i) {
    struct stat st;
    std::memset(&st, 0, sizeof(st));
    const char* name;
    if (i == 0) {
      name = ".";
      st.st_ino = ino;
      st.st_mode = S_IFDIR;
    } else if (i == 1) {
      name = "..";
      st.st_ino = ino;  // the kernel resolves ".." itself
      st.st_mode = S_IFDIR;
    } else {
      const v1::DirEntry& e = dir.entries[i - 2];
      name = e.name().c_str();
      st.st_ino = e.ino();
      st.st_mode = TypeBits(e.type());
    }
    size_t need = fuse_add_direntry(req, buf.data() + used, size - used, name,
                                    &st, static_cast<off_t>(i + 1));
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void FuseMount::Impl::ReleaseDir(fuse_req_t req, fuse_ino_t ino,
                                 fuse_file_info* fi) {
  delete reinterpret_cast<DirHandle*>(fi->fh);
  fuse_reply_err(req, 0);
}

void FuseMount::Impl::StatFs(fuse_req_t req, fuse_ino_t ino) {
  absl::StatusOr<v1::StatFsResponse> stat = Of(req)->client_->StatFs();
  if (!stat.ok()) return ReplyError(req, stat.status());
  struct statvfs st;
  std::memset(&st, 0, sizeof(st));
  constexpr uint64_t kBlock = 4096;
  // Capacity is not tracked: report 1 PiB less what is used.
  const uint64_t total_blocks = (uint64_t{1} << 50) / kBlock;
  const uint64_t used_blocks =
      std::max(stat->chunk_bytes_used(), stat->stat().total_bytes()) / kBlock;
  st.f_bsize = kBlock;
  st.f_frsize = kBlock;
  st.f_blocks = total_blocks;
  st.f_bfree = st.f_bavail = total_blocks - std::min(used_blocks, total_blocks);
  st.f_files = uint64_t{1} << 32;
  st.f_ffree = st.f_favail = st.f_files - stat->stat().inodes();
  st.f_namemax = kMaxNameBytes;
  fuse_reply_statfs(req, &st);
}

// ---- lifecycle ----

absl::Status FuseMount::Impl::Mount() {
  static const fuse_lowlevel_ops kOps = [] {
    fuse_lowlevel_ops ops;
    std::memset(&ops, 0, sizeof(ops));
    ops.init = &Impl::Init;
    ops.lookup = &Impl::Lookup;
    ops.getattr = &Impl::GetAttr;
    ops.setattr = &Impl::SetAttr;
    ops.readlink = &Impl::Readlink;
    ops.mknod = &Impl::Mknod;
    ops.mkdir = &Impl::Mkdir;
    ops.unlink = &Impl::Unlink;
    ops.rmdir = &Impl::Rmdir;
    ops.symlink = &Impl::Symlink;
    ops.rename = &Impl::Rename;
    ops.link = &Impl::Link;
    ops.open = &Impl::Open;
    ops.read = &Impl::Read;
    ops.write = &Impl::Write;
    ops.flush = &Impl::Flush;
    ops.release = &Impl::Release;
    ops.fsync = &Impl::Fsync;
    ops.opendir = &Impl::OpenDir;
    ops.readdir = &Impl::ReadDir;
    ops.releasedir = &Impl::ReleaseDir;
    ops.statfs = &Impl::StatFs;
    ops.create = &Impl::Create;
    return ops;
  }();
  std::vector<std::string> opts = {"fsname=dsec-fs", "subtype=dsec",
                                   "default_permissions"};
  if (options_.allow_other) opts.push_back("allow_other");
  if (options_.read_only) opts.push_back("ro");
  for (const std::string& o : options_.extra_options) opts.push_back(o);
  std::string joined = absl::StrJoin(opts, ",");
  std::vector<char*> argv = {const_cast<char*>("dsec-mount"),
                             const_cast<char*>("-o"), joined.data()};
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  session_ = fuse_session_new(&args, &kOps, sizeof(kOps), this);
  if (session_ == nullptr) {
    return absl::InternalError(
        absl::StrCat("fuse_session_new failed with options ", joined));
  }
  // Resolved before mounting: afterwards a lookup of the mountpoint would
  // wait for the loop.
  char real[PATH_MAX];
  const std::string real_mountpoint =
      realpath(options_.mountpoint.c_str(), real) != nullptr
          ? std::string(real)
          : options_.mountpoint;
  if (fuse_session_mount(session_, options_.mountpoint.c_str()) != 0) {
    fuse_session_destroy(session_);
    session_ = nullptr;
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot mount dsec-fs at ", options_.mountpoint,
        ": needs an existing directory, /dev/fuse and root (see stderr)"));
  }
  mounted_ = true;
  closer_ = std::thread([this] { CloserLoop(); });
  // Armed from here: a crash of this process aborts the connection (see
  // "crash safety" above). Found through mountinfo, as a stat() of the
  // mountpoint would wait for a loop that is not running yet.
  if (std::optional<unsigned> conn = FuseConnection(real_mountpoint)) {
    crash_slot_ = RegisterCrashAbort(ConnectionAbortPath(*conn));
  }
  if (crash_slot_ < 0) {
    DSEC_LOG_WARN(
        "dsec-mount: {}: a crash of this process may hang on its "
        "own mount (connection not found or table full)",
        options_.mountpoint);
  }
  return absl::OkStatus();
}

absl::Status FuseMount::Impl::InstallSignalHandlers() {
  if (fuse_set_signal_handlers(session_) != 0) {
    return absl::InternalError("fuse_set_signal_handlers failed");
  }
  signal_handlers_ = true;
  return absl::OkStatus();
}

absl::Status FuseMount::Impl::Run() {
  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(config, options_.max_threads);
  fuse_loop_cfg_set_idle_threads(config, 4);
  int rc = fuse_session_loop_mt(session_, config);
  fuse_loop_cfg_destroy(config);
  // A loop ended by an unmount or a signal is a clean end.
  if (rc != 0 && !stopping_.load() && rc != -ENODEV && rc != SIGTERM &&
      rc != SIGINT && rc != SIGHUP) {
    return absl::InternalError(absl::StrCat("fuse loop ended with ", rc));
  }
  return absl::OkStatus();
}

absl::Status FuseMount::Impl::Start() {
  thread_ = std::thread([this] {
    absl::Status status = Run();
    if (!status.ok()) DSEC_LOG_ERROR("dsec-mount: {}", status.ToString());
  });
  return absl::OkStatus();
}

void FuseMount::Impl::Stop() {
  if (stopping_.exchange(true) || session_ == nullptr) return;
  UnregisterCrashAbort(crash_slot_);
  crash_slot_ = -1;
  fuse_session_exit(session_);
  if (!mounted_) return;
  std::optional<unsigned> conn = FuseConnection(options_.mountpoint);
  // A plain unmount ends the connection and wakes the loop's threads blocked
  // reading /dev/fuse. If something still uses the mount (a sandbox overlay,
  // an open file), detach it and abort the connection, or the threads would
  // wait for the last user.
  // A plain unmount can also succeed while another mount namespace (a
  // sandbox's, or a lazily detached overlay) still holds the super block:
  // then the connection outlives it, and is aborted too.
  const bool unmounted = umount2(options_.mountpoint.c_str(), 0) == 0;
  if (!unmounted && umount2(options_.mountpoint.c_str(), MNT_DETACH) != 0 &&
      errno != EINVAL) {
    DSEC_LOG_WARN("umount {}: {}", options_.mountpoint, std::strerror(errno));
  }
  if (!conn.has_value()) return;
  if (unmounted &&
      access(absl::StrCat("/sys/fs/fuse/connections/", *conn).c_str(), F_OK) !=
          0) {
    return;  // gone with the unmount
  }
  std::ofstream abort_file(ConnectionAbortPath(*conn));
  abort_file << "1";
}

void FuseMount::Impl::Shutdown() {
  if (session_ == nullptr) return;
  UnregisterCrashAbort(crash_slot_);
  crash_slot_ = -1;
  if (thread_.joinable()) {
    Stop();
    thread_.join();
  }
  if (closer_.joinable()) {
    {
      absl::MutexLock lock(&close_mu_);
      closer_stop_ = true;
    }
    closer_.join();  // sends what is still held back
  }
  if (signal_handlers_) fuse_remove_signal_handlers(session_);
  if (mounted_) fuse_session_unmount(session_);
  mounted_ = false;
  fuse_session_destroy(session_);
  session_ = nullptr;
}

// ---- FuseMount ----

absl::StatusOr<std::unique_ptr<FuseMount>> FuseMount::Mount(
    FsClient* client, const FuseMountOptions& options) {
  if (client == nullptr || options.mountpoint.empty()) {
    return absl::InvalidArgumentError(
        "FuseMount needs a client and a mountpoint");
  }
  if (options.max_threads < 1 || options.max_io_bytes < 4096 ||
      options.readahead_windows < 1) {
    return absl::InvalidArgumentError(
        "max_threads and readahead_windows must be >= 1 and max_io_bytes "
        ">= 4096");
  }
  auto impl = std::make_unique<Impl>(client, options);
  absl::Status status = impl->Mount();
  if (!status.ok()) return status;
  return std::unique_ptr<FuseMount>(new FuseMount(std::move(impl)));
}

FuseMount::FuseMount(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FuseMount::~FuseMount() = default;

absl::Status FuseMount::Run() { return impl_->Run(); }
absl::Status FuseMount::Start() { return impl_->Start(); }
void FuseMount::Stop() { impl_->Stop(); }
absl::Status FuseMount::InstallSignalHandlers() {
  return impl_->InstallSignalHandlers();
}
const std::string& FuseMount::mountpoint() const { return impl_->mountpoint(); }

}  // namespace dsec::fs
