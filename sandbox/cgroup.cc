// Cgroup manager for sandboxes, over cgroup v1 or v2 (see cgroup.h).
//
// Invariants worth knowing before changing this file:
//  - Every directory we create is owned by a Node (RAII): the Node's
//    destructor closes its fds and rmdirs the directory in every hierarchy.
//    Only directories are ever removed; no file in cgroupfs is unlinked.
//    Children are declared after their parent so they are destroyed first.
//  - A Node's fds are opened once, when it is created, and never change;
//    reads are pread(fd, 0) on those fds, so the stats path does no open()
//    and builds no path strings (paths are only built for error messages).
//  - v1: hierarchy 0 is the freezer's, and a joining process writes the
//    procs fds in hierarchy order, so the freezer hierarchy's membership is
//    a superset of every other's. Counting and killing read it alone.
//  - Counters the kernel cannot reset (oom kills, fork failures, v2 cpu
//    time) are baselined; v1's and v2's "local" event files count at the
//    cgroup where the event happened, so a group's total is the sum over
//    the nodes that can hold processes (v1: sb + slots; v2: init + slots).
//  - A pooled group holds no process, is thawed, has only e0 (and init on
//    v2), and its baselines and peak were reset when it was released, so
//    Acquire only writes the limits.
#include "sandbox/cgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <limits>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/errno_status.h"
#include "common/logging.h"
#include "common/scope_guard.h"
#include "common/status_macros.h"
#include "sandbox/cgroup_internal.h"
#include "sandbox/cgroup_parse.h"

namespace dsec::sandbox {
namespace {

using cgroup_internal::CreateKnobs;
using cgroup_internal::FindKeyedValue;
using cgroup_internal::HasAllTokens;
using cgroup_internal::HierarchyPlan;
using cgroup_internal::ParseCounter;
using cgroup_internal::ParsePidList;

// ---- constants --------------------------------------------------------------

enum Controller : int { kMemory, kPids, kCpu, kCpuacct, kFreezer, kNumCtl };
// v2 core files (cgroup.*, cpu.stat) exist in every cgroup of hierarchy 0.
constexpr int kCore = -1;
constexpr const char* kCtlNames[kNumCtl] = {"memory", "pids", "cpu", "cpuacct",
                                            "freezer"};

constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();
constexpr int64_t kCpuPeriodUs = 100000;  // 100 ms
constexpr int64_t kMinCpuQuotaUs = 1000;  // the kernel's minimum
constexpr int kMaxPool = 1024;
// Bounded waits: freezing, emptying after SIGKILL, rmdir of a busy group.
constexpr absl::Duration kWaitTimeout = absl::Seconds(2);
// Below this, a released group's leftover page cache is not worth a reclaim.
constexpr int64_t kReclaimThreshold = 1 << 20;

// Files a Node keeps open, by purpose.
enum File : int {
  kPeak,         // memory high-water mark (resettable)
  kCurrent,      // memory usage
  kCpuUsage,     // v1 cpuacct.usage (ns); v2 cpu.stat usage_usec
  kOomEvents,    // local oom kill count
  kPidsEvents,   // local count of forks refused by pids.max
  kPidsCurrent,  // tasks
  kFreezeState,  // v1 freezer.state; v2 cgroup.freeze
  kEvents,       // v2 cgroup.events (populated, frozen)
  kProcsRead,    // cgroup.procs (v1: of the freezer hierarchy)
  kKill,         // v2 cgroup.kill
  kMemLimit,
  kSwapLimit,
  kPidsMax,
  kCpuMax,
  kNumFiles
};

// What a Node is; decides which files it opens.
enum Role : uint8_t {
  kRoleRoot = 0,
  kRoleGroup = 1,
  kRoleInit = 2,
  kRoleSlot = 4
};

struct FileSpec {
  int controller;        // Controller or kCore
  const char* name;      // nullptr: no such file in this version
  const char* fallback;  // tried when `name` does not exist (older kernels)
  int flags;
  bool optional;  // absent on some kernels/configs: read as 0, never written
  uint8_t roles;  // Role bits of the nodes that open it
};

constexpr uint8_t kGS = kRoleGroup | kRoleSlot;

constexpr std::array<FileSpec, kNumFiles> kV1Files = {{
    {kMemory, "memory.max_usage_in_bytes", nullptr, O_RDWR, false, kGS},
    {kMemory, "memory.usage_in_bytes", nullptr, O_RDONLY, false, kGS},
    {kCpuacct, "cpuacct.usage", nullptr, O_RDONLY, false, kGS},
    {kMemory, "memory.oom_control", nullptr, O_RDONLY, false, kGS},
    {kPids, "pids.events", nullptr, O_RDONLY, true, kGS},
    {kPids, "pids.current", nullptr, O_RDONLY, false, kGS},
    {kFreezer, "freezer.state", nullptr, O_RDWR, false, kGS},
    {kCore, nullptr, nullptr, 0, true, 0},
    {kFreezer, "cgroup.procs", nullptr, O_RDONLY, false, 0},  // per read
    {kCore, nullptr, nullptr, 0, true, 0},
    {kMemory, "memory.limit_in_bytes", nullptr, O_WRONLY, false, kRoleGroup},
    {kMemory, "memory.memsw.limit_in_bytes", nullptr, O_WRONLY, true,
     kRoleGroup},
    {kPids, "pids.max", nullptr, O_WRONLY, false, kRoleGroup},
    {kCpu, "cpu.cfs_quota_us", nullptr, O_WRONLY, false, kRoleGroup},
}};

constexpr uint8_t kIS = kRoleInit | kRoleSlot;

constexpr std::array<FileSpec, kNumFiles> kV2Files = {{
    {kMemory, "memory.peak", nullptr, O_RDWR, true, kGS},
    {kMemory, "memory.current", nullptr, O_RDONLY, false, kGS},
    {kCore, "cpu.stat", nullptr, O_RDONLY, false, kGS},
    {kMemory, "memory.events.local", "memory.events", O_RDONLY, false, kIS},
    {kPids, "pids.events.local", "pids.events", O_RDONLY, true, kIS},
    {kPids, "pids.current", nullptr, O_RDONLY, false, kGS},
    {kCore, "cgroup.freeze", nullptr, O_RDWR, false, kGS},
    {kCore, "cgroup.events", nullptr, O_RDONLY, false, kGS},
    {kCore, "cgroup.procs", nullptr, O_RDONLY, false, 0},  // per read
    {kCore, "cgroup.kill", nullptr, O_WRONLY, true, kGS},
    {kMemory, "memory.max", nullptr, O_WRONLY, false, kRoleGroup},
    {kMemory, "memory.swap.max", nullptr, O_WRONLY, true, kRoleGroup},
    {kPids, "pids.max", nullptr, O_WRONLY, false, kRoleGroup},
    {kCpu, "cpu.max", nullptr, O_WRONLY, false, kRoleGroup},
}};

// ---- small I/O helpers ------------------------------------------------------

class Backoff {
 public:
  void Sleep() {
    absl::SleepFor(delay_);
    delay_ = std::min(delay_ * 2, absl::Milliseconds(5));
  }

 private:
  absl::Duration delay_ = absl::Microseconds(20);
};

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(absl::StrCat("open ", path));
  std::string out;
  char buf[4096];
  while (true) {
    ssize_t n = read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(absl::StrCat("read ", path));
    if (n == 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

absl::Status WriteFile(const std::string& path, absl::string_view value) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(absl::StrCat("open ", path));
  if (write(fd.get(), value.data(), value.size()) !=
      static_cast<ssize_t>(value.size())) {
    return ErrnoStatus(absl::StrCat("write '", value, "' to ", path));
  }
  return absl::OkStatus();
}

// One write of `value` at offset 0. Returns errno (0 on success).
int PwriteErrno(int fd, absl::string_view value) {
  while (true) {
    ssize_t n = pwrite(fd, value.data(), value.size(), 0);
    if (n == static_cast<ssize_t>(value.size())) return 0;
    if (n < 0 && errno == EINTR) continue;
    return n < 0 ? errno : EIO;
  }
}

// Reads a small file from offset 0 into `buf`; returns its length or -errno.
ssize_t PreadSmall(int fd, char* buf, size_t cap) {
  while (true) {
    ssize_t n = pread(fd, buf, cap, 0);
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

// Whole content of a file that may exceed one page (cgroup.procs).
absl::StatusOr<std::string> PreadAll(int fd) {
  std::string out;
  char buf[4096];
  while (true) {
    ssize_t n = pread(fd, buf, sizeof(buf), static_cast<off_t>(out.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus("pread");
    if (n == 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

// Decimal text of `v` in `buf` (no allocation).
absl::string_view FormatInt(int64_t v, char (&buf)[24]) {
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return absl::string_view(buf, static_cast<size_t>(r.ptr - buf));
}

absl::Status RemoveCgroupDir(int parent_fd, const std::string& name);

// rmdir of every sub-directory of parent/name (cgroups we do not track,
// e.g. made by someone else or left by a failed removal).
void RemoveChildDirs(int parent_fd, const std::string& name) {
  int fd = openat(parent_fd, name.c_str(),
                  O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return;
  std::unique_ptr<DIR, int (*)(DIR*)> dir(fdopendir(fd), &closedir);
  if (!dir) {
    close(fd);
    return;
  }
  std::vector<std::string> children;
  while (dirent* e = readdir(dir.get())) {
    absl::string_view n(e->d_name);
    if (e->d_type == DT_DIR && n != "." && n != "..") {
      children.emplace_back(n);
    }
  }
  for (const std::string& child : children) {
    if (absl::Status s = RemoveCgroupDir(dirfd(dir.get()), child); !s.ok()) {
      DSEC_LOG_WARN("cgroup: {}", s.ToString());
    }
  }
}

// rmdir parent/name, first removing sub-cgroups; retries (bounded) while the
// kernel still reports it busy, e.g. just after its last process exited.
absl::Status RemoveCgroupDir(int parent_fd, const std::string& name) {
  const absl::Time deadline = absl::Now() + kWaitTimeout;
  Backoff backoff;
  while (true) {
    if (unlinkat(parent_fd, name.c_str(), AT_REMOVEDIR) == 0 ||
        errno == ENOENT) {
      return absl::OkStatus();
    }
    const int err = errno;
    if (err != EBUSY && err != ENOTEMPTY) {
      return ErrnoToStatus(err, absl::StrCat("rmdir ", name));
    }
    RemoveChildDirs(parent_fd, name);
    if (absl::Now() > deadline) {
      return ErrnoToStatus(err, absl::StrCat("rmdir ", name));
    }
    backoff.Sleep();
  }
}

// ---- layout -----------------------------------------------------------------

struct Hierarchy {
  std::string parent_path;  // the cgroup the manager root is created in
  std::string root_path;    // parent_path + "/" + root name
  uint32_t controllers = 0;
};

struct Layout {
  CgroupVersion version = CgroupVersion::kV1;
  std::vector<Hierarchy> hierarchies;       // v1: freezer's first; v2: one
  std::array<int, kNumCtl> hierarchy_of{};  // -1: controller missing
  std::string root_name;
  const std::array<FileSpec, kNumFiles>* files = &kV1Files;

  bool Has(int controller) const {
    return controller == kCore ? version == CgroupVersion::kV2
                               : hierarchy_of[controller] >= 0;
  }
  int HierarchyFor(int controller) const {
    return controller == kCore ? 0 : hierarchy_of[controller];
  }
  // v2: the controllers to enable in subtree_control, e.g. "+memory +pids".
  std::string SubtreeControl() const {
    std::vector<std::string> parts;
    for (int c : {kMemory, kPids, kCpu}) {
      if (Has(c)) parts.push_back(absl::StrCat("+", kCtlNames[c]));
    }
    return absl::StrJoin(parts, " ");
  }
  std::vector<std::string> V2Controllers() const {
    std::vector<std::string> out;
    for (int c : {kMemory, kPids, kCpu}) {
      if (Has(c)) out.push_back(kCtlNames[c]);
    }
    return out;
  }
};

// ---- Node: one cgroup directory in every hierarchy
// ---------------------------

class Node {
 public:
  // mkdir parent/name in each hierarchy and opens the files of `role`.
  // `parent_dirs` must outlive the Node (they are its parent's dir fds).
  static absl::StatusOr<std::unique_ptr<Node>> Create(
      const Layout& layout, absl::Span<const int> parent_dirs, std::string name,
      std::string rel, Role role);

  // Closes the fds, then rmdirs the directory in every hierarchy (the owner
  // has emptied it first).
  ~Node();

  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  int fd(File f) const { return files_[f].get(); }
  absl::Span<const int> dirs() const { return dirs_raw_; }
  absl::Span<const int> procs_fds() const { return procs_raw_; }
  const std::string& rel() const { return rel_; }
  bool peak_resettable() const { return peak_resettable_; }
  void set_peak_resettable(bool v) { peak_resettable_ = v; }

  // Path of a file of this node, for error messages only.
  std::string PathOf(File f) const;
  std::string PathIn(int hierarchy) const {
    return absl::StrCat(layout_->hierarchies[hierarchy].root_path,
                        rel_.empty() ? "" : "/", rel_);
  }

 private:
  Node(const Layout& layout, absl::Span<const int> parent_dirs,
       std::string name, std::string rel)
      : layout_(&layout),
        parent_dirs_(parent_dirs.begin(), parent_dirs.end()),
        name_(std::move(name)),
        rel_(std::move(rel)) {}

  const Layout* layout_;
  std::vector<int> parent_dirs_;  // borrowed from the parent
  std::string name_;              // e.g. "e3"
  std::string rel_;               // e.g. "sb-7/e3"; "" for the root
  size_t created_ = 0;            // hierarchies where mkdir succeeded
  std::vector<UniqueFd> dirs_;    // root and group nodes only
  std::vector<int> dirs_raw_;
  std::vector<UniqueFd> procs_;  // O_WRONLY cgroup.procs, for joining
  std::vector<int> procs_raw_;
  std::array<UniqueFd, kNumFiles> files_;
  bool peak_resettable_ = true;
};

absl::StatusOr<std::unique_ptr<Node>> Node::Create(
    const Layout& layout, absl::Span<const int> parent_dirs, std::string name,
    std::string rel, Role role) {
  std::unique_ptr<Node> node(
      new Node(layout, parent_dirs, std::move(name), std::move(rel)));
  const size_t n = layout.hierarchies.size();
  // Directories: on failure the Node's destructor removes those made so far.
  std::vector<UniqueFd> dirs;
  dirs.reserve(n);
  for (size_t h = 0; h < n; ++h) {
    if (mkdirat(parent_dirs[h], node->name_.c_str(), 0755) != 0) {
      return ErrnoStatus(absl::StrCat("mkdir ", node->PathIn(h)));
    }
    node->created_ = h + 1;
    UniqueFd dir(openat(parent_dirs[h], node->name_.c_str(),
                        O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
    if (!dir) return ErrnoStatus(absl::StrCat("open ", node->PathIn(h)));
    dirs.push_back(std::move(dir));
  }
  // v2: controllers for the children, before any child exists.
  if (layout.version == CgroupVersion::kV2 && role == kRoleGroup) {
    std::string subtree = layout.SubtreeControl();
    if (!subtree.empty()) {
      UniqueFd fd(openat(dirs[0].get(), "cgroup.subtree_control",
                         O_WRONLY | O_CLOEXEC));
      if (!fd || PwriteErrno(fd.get(), subtree) != 0) {
        return ErrnoStatus(absl::StrCat("write '", subtree, "' to ",
                                        node->PathIn(0),
                                        "/cgroup.subtree_control"));
      }
    }
  }
  // Join fds: v1 processes live in groups (init) and slots; v2 in leaves.
  const bool joinable = layout.version == CgroupVersion::kV1
                            ? (role == kRoleGroup || role == kRoleSlot)
                            : (role == kRoleInit || role == kRoleSlot);
  if (joinable) {
    for (size_t h = 0; h < n; ++h) {
      UniqueFd fd(openat(dirs[h].get(), "cgroup.procs", O_WRONLY | O_CLOEXEC));
      if (!fd) {
        return ErrnoStatus(
            absl::StrCat("open ", node->PathIn(h), "/cgroup.procs"));
      }
      node->procs_raw_.push_back(fd.get());
      node->procs_.push_back(std::move(fd));
    }
  }
  for (int f = 0; f < kNumFiles; ++f) {
    const FileSpec& spec = (*layout.files)[f];
    if (spec.name == nullptr || (spec.roles & role) == 0 ||
        !layout.Has(spec.controller)) {
      continue;
    }
    const int dir = dirs[layout.HierarchyFor(spec.controller)].get();
    int flags = spec.flags | O_CLOEXEC;
    int fd = openat(dir, spec.name, flags);
    if (fd < 0 && errno == ENOENT && spec.fallback != nullptr) {
      fd = openat(dir, spec.fallback, flags);
    }
    if (fd < 0 && (errno == EACCES || errno == EPERM) && f == kPeak) {
      // memory.peak is read-only before Linux 6.12: no per-fd reset.
      node->peak_resettable_ = false;
      fd = openat(dir, spec.name, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) {
      if (errno == ENOENT && spec.optional) continue;
      return ErrnoStatus(absl::StrCat(
          "open ", node->PathIn(layout.HierarchyFor(spec.controller)), "/",
          spec.name));
    }
    node->files_[f].Reset(fd);
  }
  if (role == kRoleRoot || role == kRoleGroup) {
    for (UniqueFd& d : dirs) node->dirs_raw_.push_back(d.get());
    node->dirs_ = std::move(dirs);
  }
  return node;
}

Node::~Node() {
  for (UniqueFd& fd : files_) fd.Reset();
  procs_.clear();
  dirs_.clear();
  for (size_t h = 0; h < created_; ++h) {
    if (absl::Status s = RemoveCgroupDir(parent_dirs_[h], name_); !s.ok()) {
      DSEC_LOG_WARN("cgroup: removing {}: {}", PathIn(static_cast<int>(h)),
                    s.ToString());
    }
  }
}

std::string Node::PathOf(File f) const {
  const FileSpec& spec = (*layout_->files)[f];
  int h = layout_->HierarchyFor(spec.controller);
  return absl::StrCat(PathIn(h < 0 ? 0 : h), "/", spec.name ? spec.name : "?");
}

// ---- reading and writing a node's files
// ---------------------------------------

// A file's text (small files only), "" when the node lacks the file.
absl::StatusOr<absl::string_view> ReadSmall(const Node& node, File f, char* buf,
                                            size_t cap) {
  const int fd = node.fd(f);
  if (fd < 0) return absl::string_view();
  ssize_t n = PreadSmall(fd, buf, cap);
  if (n < 0) {
    return ErrnoToStatus(static_cast<int>(-n),
                         absl::StrCat("read ", node.PathOf(f)));
  }
  return absl::string_view(buf, static_cast<size_t>(n));
}

// A single-value file; 0 when the node lacks it.
absl::StatusOr<int64_t> ReadValue(const Node& node, File f) {
  char buf[64];
  ASSIGN_OR_RETURN(absl::string_view text,
                   ReadSmall(node, f, buf, sizeof(buf)));
  if (text.empty()) return 0;
  absl::optional<int64_t> v = ParseCounter(text);
  if (!v) {
    return absl::InternalError(
        absl::StrCat("unexpected content '", text, "' in ", node.PathOf(f)));
  }
  return *v;
}

// `key` of a "key value" file; 0 when the file or the key is absent.
absl::StatusOr<int64_t> ReadKeyed(const Node& node, File f,
                                  absl::string_view key) {
  char buf[1024];
  ASSIGN_OR_RETURN(absl::string_view text,
                   ReadSmall(node, f, buf, sizeof(buf)));
  return FindKeyedValue(text, key).value_or(0);
}

absl::Status WriteNode(const Node& node, File f, absl::string_view value) {
  const int fd = node.fd(f);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(node.PathOf(f), " is not available on this host"));
  }
  if (int err = PwriteErrno(fd, value); err != 0) {
    return ErrnoToStatus(
        err, absl::StrCat("write '", value, "' to ", node.PathOf(f)));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> ReadCpuNs(const Layout& layout, const Node& node) {
  if (layout.version == CgroupVersion::kV1) return ReadValue(node, kCpuUsage);
  ASSIGN_OR_RETURN(int64_t usec, ReadKeyed(node, kCpuUsage, "usage_usec"));
  return usec * 1000;
}

absl::StatusOr<int64_t> ReadOomKills(const Node& node) {
  return ReadKeyed(node, kOomEvents, "oom_kill");
}

absl::StatusOr<int64_t> ReadPidsMaxEvents(const Node& node) {
  return ReadKeyed(node, kPidsEvents, "max");
}

absl::StatusOr<std::vector<pid_t>> ReadPids(const Node& node) {
  // Opened afresh for every read: cgroup v1 builds the pid list of an open
  // file once and keeps serving it (for about a second) on later reads from
  // offset 0, so a kept fd would report processes that already died and
  // miss new ones.
  const std::string path = node.PathOf(kProcsRead);
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return std::vector<pid_t>{};
    return ErrnoStatus(absl::StrCat("open ", path));
  }
  auto text = PreadAll(fd.get());
  if (!text.ok()) {
    return ErrnoToStatus(StatusToErrno(text.status()),
                         absl::StrCat("read ", node.PathOf(kProcsRead)));
  }
  return ParsePidList(*text);
}

// v2: "populated" / "frozen" of cgroup.events.
absl::StatusOr<bool> ReadEventFlag(const Node& node, absl::string_view key) {
  ASSIGN_OR_RETURN(int64_t v, ReadKeyed(node, kEvents, key));
  return v != 0;
}

absl::StatusOr<bool> HasProcesses(const Layout& layout, const Node& node) {
  if (layout.version == CgroupVersion::kV2) {
    return ReadEventFlag(node, "populated");
  }
  ASSIGN_OR_RETURN(std::vector<pid_t> pids, ReadPids(node));
  return !pids.empty();
}

// Polls `done` (returning StatusOr<bool>) until true or kWaitTimeout.
template <typename Fn>
absl::Status WaitUntil(Fn done, absl::string_view what) {
  const absl::Time deadline = absl::Now() + kWaitTimeout;
  Backoff backoff;
  while (true) {
    absl::StatusOr<bool> ok = done();
    if (!ok.ok()) return ok.status();
    if (*ok) return absl::OkStatus();
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "timed out after ", absl::FormatDuration(kWaitTimeout), " ", what));
    }
    backoff.Sleep();
  }
}

absl::Status WriteFrozen(const Layout& layout, const Node& node, bool frozen) {
  if (layout.version == CgroupVersion::kV1) {
    return WriteNode(node, kFreezeState, frozen ? "FROZEN" : "THAWED");
  }
  return WriteNode(node, kFreezeState, frozen ? "1" : "0");
}

absl::Status WaitFrozen(const Layout& layout, const Node& node) {
  return WaitUntil(
      [&]() -> absl::StatusOr<bool> {
        if (layout.version == CgroupVersion::kV2) {
          return ReadEventFlag(node, "frozen");
        }
        char buf[32];
        ASSIGN_OR_RETURN(absl::string_view state,
                         ReadSmall(node, kFreezeState, buf, sizeof(buf)));
        return absl::StartsWith(state, "FROZEN");
      },
      absl::StrCat("waiting for ", node.PathIn(0), " to freeze"));
}

// Kills every process listed in `nodes` until they are all gone. The
// processes are first frozen (through `freeze_node`, an ancestor of or one
// of `nodes`) so none can fork between being listed and being killed; a
// freeze that does not settle in time (a task stuck in the kernel) is not
// fatal, the kill loop still runs. Thaws `freeze_node` afterwards: SIGKILL
// takes effect only in thawed tasks.
absl::Status KillByEnumeration(const Layout& layout, const Node& freeze_node,
                               absl::Span<const Node* const> nodes) {
  auto list = [&]() -> absl::StatusOr<std::vector<pid_t>> {
    std::vector<pid_t> all;
    for (const Node* n : nodes) {
      ASSIGN_OR_RETURN(std::vector<pid_t> pids, ReadPids(*n));
      all.insert(all.end(), pids.begin(), pids.end());
    }
    return all;
  };
  ASSIGN_OR_RETURN(std::vector<pid_t> pids, list());
  if (pids.empty()) return absl::OkStatus();

  bool wrote_frozen = false;
  if (freeze_node.fd(kFreezeState) >= 0) {
    wrote_frozen = WriteFrozen(layout, freeze_node, true).ok();
    if (wrote_frozen) {
      if (absl::Status s = WaitFrozen(layout, freeze_node); !s.ok()) {
        DSEC_LOG_WARN("cgroup: killing without a settled freeze: {}",
                      s.ToString());
      }
      ASSIGN_OR_RETURN(pids, list());
    }
  }
  const absl::Time deadline = absl::Now() + kWaitTimeout;
  Backoff backoff;
  while (true) {
    for (pid_t pid : pids) kill(pid, SIGKILL);
    if (wrote_frozen) {
      RETURN_IF_ERROR(WriteFrozen(layout, freeze_node, false));
      wrote_frozen = false;
    }
    ASSIGN_OR_RETURN(pids, list());
    if (pids.empty()) return absl::OkStatus();
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(pids.size(), " process(es) still in ",
                       freeze_node.PathIn(0), " after SIGKILL"));
    }
    backoff.Sleep();
  }
}

// v2: cgroup.kill the node's subtree and wait until it is unpopulated.
absl::Status KillSubtreeV2(const Layout& layout, const Node& node) {
  ASSIGN_OR_RETURN(bool populated, ReadEventFlag(node, "populated"));
  if (!populated) return absl::OkStatus();
  RETURN_IF_ERROR(WriteNode(node, kKill, "1"));
  return WaitUntil(
      [&]() -> absl::StatusOr<bool> {
        ASSIGN_OR_RETURN(bool p, ReadEventFlag(node, "populated"));
        return !p;
      },
      absl::StrCat("waiting for ", node.PathIn(0), " to empty"));
}

// Resets a node's memory high-water mark to its current usage.
void ResetPeak(const Layout& layout, Node& node) {
  if (node.fd(kPeak) < 0 || !node.peak_resettable()) return;
  // v1: write 0 to max_usage_in_bytes. v2 (Linux >= 6.12): any write resets
  // the peak seen through this fd.
  int err = PwriteErrno(node.fd(kPeak),
                        layout.version == CgroupVersion::kV1 ? "0" : "reset");
  if (err != 0) {
    DSEC_LOG_DEBUG(
        "cgroup: {} cannot be reset ({}); reporting peak since "
        "creation",
        node.PathOf(kPeak), err);
    node.set_peak_resettable(false);
  }
}

// ---- Tree: the manager root, shared by the manager and its groups
// -------------

class Tree {
 public:
  static absl::StatusOr<std::shared_ptr<Tree>> Create(Layout layout);

  ~Tree() {
    // root_ (declared last) goes first, then the parent fds it borrowed.
    root_.reset();
  }

  const Layout& layout() const { return layout_; }
  const Node& root() const { return *root_; }

 private:
  explicit Tree(Layout layout) : layout_(std::move(layout)) {}

  Layout layout_;
  std::vector<UniqueFd> parent_dirs_;
  std::vector<int> parent_raw_;
  std::unique_ptr<Node> root_;
};

// v2: makes memory, pids and cpu available to children of `parent`. A
// non-root cgroup with processes in it cannot enable them (no internal
// processes); when this process is the only one there, it moves itself into
// a leaf "dsec-supervisor" first, as systemd asks of delegated services.
absl::Status EnableV2ControllersAt(const Layout& layout,
                                   const std::string& parent) {
  std::string want = layout.SubtreeControl();
  if (want.empty()) return absl::OkStatus();
  const std::string control = absl::StrCat(parent, "/cgroup.subtree_control");
  ASSIGN_OR_RETURN(std::string enabled, ReadFileToString(control));
  if (HasAllTokens(enabled, layout.V2Controllers())) return absl::OkStatus();
  absl::Status s = WriteFile(control, want);
  if (s.ok() || StatusToErrno(s) != EBUSY) return s;

  ASSIGN_OR_RETURN(std::string procs_text,
                   ReadFileToString(absl::StrCat(parent, "/cgroup.procs")));
  std::vector<pid_t> procs = ParsePidList(procs_text);
  if (procs != std::vector<pid_t>{getpid()}) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cgroup v2: cannot enable '", want, "' in ", parent,
        ": it holds processes (no internal processes rule); run dsec in a "
        "delegated cgroup whose processes live in a leaf, or set "
        "parent_override"));
  }
  const std::string leaf = absl::StrCat(parent, "/dsec-supervisor");
  if (mkdir(leaf.c_str(), 0755) != 0 && errno != EEXIST) {
    return ErrnoStatus(absl::StrCat("mkdir ", leaf));
  }
  RETURN_IF_ERROR(WriteFile(absl::StrCat(leaf, "/cgroup.procs"), "0"));
  DSEC_LOG_INFO("cgroup: moved this process into {} to enable controllers",
                leaf);
  return WriteFile(control, want);
}

absl::StatusOr<std::shared_ptr<Tree>> Tree::Create(Layout layout) {
  std::shared_ptr<Tree> tree(new Tree(std::move(layout)));
  const Layout& l = tree->layout_;
  for (const Hierarchy& h : l.hierarchies) {
    UniqueFd fd(
        open(h.parent_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd) return ErrnoStatus(absl::StrCat("open ", h.parent_path));
    tree->parent_raw_.push_back(fd.get());
    tree->parent_dirs_.push_back(std::move(fd));
  }
  if (l.version == CgroupVersion::kV2) {
    RETURN_IF_ERROR(EnableV2ControllersAt(l, l.hierarchies[0].parent_path));
  }
  auto root = Node::Create(l, tree->parent_raw_, l.root_name, "", kRoleRoot);
  if (!root.ok() && StatusToErrno(root.status()) == EEXIST) {
    // Left by an earlier run with the same name that died: remove what is
    // empty of it and try once more.
    for (size_t h = 0; h < l.hierarchies.size(); ++h) {
      (void)RemoveCgroupDir(tree->parent_raw_[h], l.root_name);
    }
    root = Node::Create(l, tree->parent_raw_, l.root_name, "", kRoleRoot);
  }
  if (!root.ok()) return root.status();
  tree->root_ = std::move(root).value();
  const Node& r = *tree->root_;
  if (l.version == CgroupVersion::kV1) {
    // Hierarchical memory accounting (always on since Linux 5.x; older
    // kernels accept the write only before children exist).
    int fd = openat(r.dirs()[l.hierarchy_of[kMemory]], "memory.use_hierarchy",
                    O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      (void)PwriteErrno(fd, "1");
      close(fd);
    }
  } else {
    std::string want = l.SubtreeControl();
    if (!want.empty()) {
      RETURN_IF_ERROR(WriteFile(
          absl::StrCat(r.PathIn(0), "/cgroup.subtree_control"), want));
    }
  }
  return tree;
}

// ---- groups and slots
// ----------------------------------------------------------

struct Baseline {
  int64_t cpu_ns = 0;
  int64_t oom_kills = 0;
  int64_t pids_max_events = 0;
};

class SandboxCgroupImpl;

class SlotImpl final : public ExecSlot {
 public:
  enum class State { kHeld, kFree, kDraining };

  SlotImpl(SandboxCgroupImpl* group, std::unique_ptr<Node> node)
      : group_(group), node_(std::move(node)) {}

  absl::Span<const int> procs_fds() const override {
    return node_->procs_fds();
  }
  absl::StatusOr<CgroupStats> Stats() const override;
  absl::StatusOr<int> CountProcesses() const override;
  absl::Status KillAll() override;

  // Starts a new use: peak reset, counters baselined.
  absl::Status Reset();

  const Node& node() const { return *node_; }
  Node& node() { return *node_; }
  State state = State::kFree;  // guarded by the group's mutex

 private:
  SandboxCgroupImpl* const group_;
  std::unique_ptr<Node> node_;
  Baseline base_;
};

class SandboxCgroupImpl final : public SandboxCgroup {
 public:
  static absl::StatusOr<std::unique_ptr<SandboxCgroupImpl>> Create(
      std::shared_ptr<const Tree> tree, int id);

  // Kills what is left; members then rmdir slots, init and the group.
  ~SandboxCgroupImpl() override;

  absl::Span<const int> init_procs_fds() const override {
    return init_ ? init_->procs_fds() : sb_->procs_fds();
  }
  absl::StatusOr<ExecSlot*> AcquireSlot() override;
  void ReleaseSlot(ExecSlot* slot) override;
  absl::StatusOr<CgroupStats> Stats() const override;
  absl::Status Freeze() override;
  absl::Status Thaw() override;
  absl::Status KillAll() override;
  std::string PathFor(const std::string& controller) const override;

  absl::Status ApplyLimits(const CgroupLimits& limits);
  // Empties the group for the pool: kill, thaw, drop slots but e0, reclaim
  // leftover page cache, reset the peak and the baselines.
  absl::Status ResetForReuse();

  const Tree* tree() const { return tree_.get(); }
  const Layout& layout() const { return layout_; }
  bool frozen() const { return frozen_.load(std::memory_order_relaxed); }

 private:
  SandboxCgroupImpl(std::shared_ptr<const Tree> tree, std::string name)
      : tree_(std::move(tree)), layout_(tree_->layout()), name_(name) {}

  absl::StatusOr<SlotImpl*> NewSlotLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Nodes that can hold processes: v1 sb + slots; v2 init + slots.
  std::vector<const Node*> ProcessNodesLocked() const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status Rebaseline() ABSL_LOCKS_EXCLUDED(mu_);

  // Declaration order is destruction order reversed: slots, init, sb, tree.
  std::shared_ptr<const Tree> tree_;
  const Layout& layout_;
  const std::string name_;
  std::unique_ptr<Node> sb_;
  std::unique_ptr<Node> init_;  // v2 only
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<SlotImpl>> slots_ ABSL_GUARDED_BY(mu_);
  Baseline base_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> frozen_{false};
  // Limits last written (v1 needs them to order the memsw writes).
  int64_t mem_limit_ = kUnlimited;
};

absl::StatusOr<std::unique_ptr<SandboxCgroupImpl>> SandboxCgroupImpl::Create(
    std::shared_ptr<const Tree> tree, int id) {
  std::string name = absl::StrCat("sb-", id);
  std::unique_ptr<SandboxCgroupImpl> g(
      new SandboxCgroupImpl(std::move(tree), name));
  const Layout& l = g->layout_;
  ASSIGN_OR_RETURN(
      g->sb_, Node::Create(l, g->tree_->root().dirs(), name, name, kRoleGroup));
  const Node& sb = *g->sb_;
  if (l.version == CgroupVersion::kV1) {
    if (l.Has(kMemory)) {
      // Best effort: fails where the kernel has no swap support at all.
      int fd = openat(sb.dirs()[l.hierarchy_of[kMemory]], "memory.swappiness",
                      O_WRONLY | O_CLOEXEC);
      if (fd >= 0) {
        (void)PwriteErrno(fd, "0");
        close(fd);
      }
    }
    if (l.Has(kCpu)) {
      char buf[24];
      UniqueFd fd(openat(sb.dirs()[l.hierarchy_of[kCpu]], "cpu.cfs_period_us",
                         O_WRONLY | O_CLOEXEC));
      if (!fd || PwriteErrno(fd.get(), FormatInt(kCpuPeriodUs, buf)) != 0) {
        return ErrnoStatus(absl::StrCat("set cpu.cfs_period_us of ",
                                        sb.PathIn(l.hierarchy_of[kCpu])));
      }
    }
  } else {
    if (sb.fd(kSwapLimit) >= 0) RETURN_IF_ERROR(WriteNode(sb, kSwapLimit, "0"));
    ASSIGN_OR_RETURN(g->init_,
                     Node::Create(l, sb.dirs(), "init",
                                  absl::StrCat(name, "/init"), kRoleInit));
  }
  {
    absl::MutexLock lock(&g->mu_);
    RETURN_IF_ERROR(g->NewSlotLocked().status());
  }
  RETURN_IF_ERROR(g->Rebaseline());
  return g;
}

SandboxCgroupImpl::~SandboxCgroupImpl() {
  if (absl::Status s = KillAll(); !s.ok()) {
    DSEC_LOG_WARN("cgroup: destroying {}: {}", sb_ ? sb_->PathIn(0) : name_,
                  s.ToString());
  }
  absl::MutexLock lock(&mu_);
  slots_.clear();
}

absl::StatusOr<SlotImpl*> SandboxCgroupImpl::NewSlotLocked() {
  const size_t k = slots_.size();
  std::string name = absl::StrCat("e", k);
  ASSIGN_OR_RETURN(std::unique_ptr<Node> node,
                   Node::Create(layout_, sb_->dirs(), name,
                                absl::StrCat(name_, "/", name), kRoleSlot));
  slots_.push_back(std::make_unique<SlotImpl>(this, std::move(node)));
  return slots_.back().get();
}

std::vector<const Node*> SandboxCgroupImpl::ProcessNodesLocked() const {
  std::vector<const Node*> nodes;
  nodes.reserve(slots_.size() + 1);
  nodes.push_back(init_ ? init_.get() : sb_.get());
  for (const auto& s : slots_) nodes.push_back(&s->node());
  return nodes;
}

absl::Status SandboxCgroupImpl::Rebaseline() {
  absl::MutexLock lock(&mu_);
  Baseline b;
  ASSIGN_OR_RETURN(b.cpu_ns, ReadCpuNs(layout_, *sb_));
  for (const Node* n : ProcessNodesLocked()) {
    ASSIGN_OR_RETURN(int64_t oom, ReadOomKills(*n));
    ASSIGN_OR_RETURN(int64_t forks, ReadPidsMaxEvents(*n));
    b.oom_kills += oom;
    b.pids_max_events += forks;
  }
  base_ = b;
  ResetPeak(layout_, *sb_);
  return absl::OkStatus();
}

absl::Status SandboxCgroupImpl::ApplyLimits(const CgroupLimits& limits) {
  if (limits.memory_bytes < 0 || limits.pids < 0 || limits.cpu_millicores < 0) {
    return absl::InvalidArgumentError("cgroup limits must not be negative");
  }
  const Node& sb = *sb_;
  const bool v1 = layout_.version == CgroupVersion::kV1;
  char buf[24];
  // Memory (swap always off: v1 memsw = memory; v2 swap.max = 0 at creation).
  if (layout_.Has(kMemory)) {
    const int64_t mem =
        limits.memory_bytes > 0 ? limits.memory_bytes : kUnlimited;
    absl::string_view text =
        limits.memory_bytes > 0 ? FormatInt(mem, buf) : (v1 ? "-1" : "max");
    if (v1 && sb.fd(kSwapLimit) >= 0) {
      // memory.limit <= memsw.limit must hold after each write.
      if (mem > mem_limit_) {
        RETURN_IF_ERROR(WriteNode(sb, kSwapLimit, text));
        RETURN_IF_ERROR(WriteNode(sb, kMemLimit, text));
      } else {
        RETURN_IF_ERROR(WriteNode(sb, kMemLimit, text));
        RETURN_IF_ERROR(WriteNode(sb, kSwapLimit, text));
      }
    } else {
      RETURN_IF_ERROR(WriteNode(sb, kMemLimit, text));
    }
    mem_limit_ = mem;
  } else if (limits.memory_bytes > 0) {
    return absl::FailedPreconditionError("no memory controller");
  }
  // Pids.
  if (layout_.Has(kPids)) {
    RETURN_IF_ERROR(WriteNode(
        sb, kPidsMax, limits.pids > 0 ? FormatInt(limits.pids, buf) : "max"));
  } else if (limits.pids > 0) {
    return absl::FailedPreconditionError("no pids controller");
  }
  // CPU: quota per 100 ms period.
  if (layout_.Has(kCpu)) {
    int64_t quota = -1;
    if (limits.cpu_millicores > 0) {
      quota = limits.cpu_millicores > std::numeric_limits<int64_t>::max() /
                                          (kCpuPeriodUs / 1000)
                  ? std::numeric_limits<int64_t>::max() / 2
                  : limits.cpu_millicores * (kCpuPeriodUs / 1000);
      quota = std::max(quota, kMinCpuQuotaUs);
    }
    if (v1) {
      RETURN_IF_ERROR(WriteNode(sb, kCpuMax, FormatInt(quota, buf)));
    } else {
      std::string text = quota < 0 ? absl::StrCat("max ", kCpuPeriodUs)
                                   : absl::StrCat(quota, " ", kCpuPeriodUs);
      RETURN_IF_ERROR(WriteNode(sb, kCpuMax, text));
    }
  } else if (limits.cpu_millicores > 0) {
    return absl::FailedPreconditionError("no cpu controller");
  }
  return absl::OkStatus();
}

absl::StatusOr<ExecSlot*> SandboxCgroupImpl::AcquireSlot() {
  absl::MutexLock lock(&mu_);
  SlotImpl* chosen = nullptr;
  // The lowest-index slot that is free, or draining and now empty (its
  // daemons have gone), so e0 is reused first and directories stay few.
  for (auto& slot : slots_) {
    if (slot->state == SlotImpl::State::kHeld) continue;
    ASSIGN_OR_RETURN(bool busy, HasProcesses(layout_, slot->node()));
    if (busy) {
      slot->state = SlotImpl::State::kDraining;
      continue;
    }
    chosen = slot.get();
    break;
  }
  if (chosen == nullptr) {
    ASSIGN_OR_RETURN(chosen, NewSlotLocked());
  }
  RETURN_IF_ERROR(chosen->Reset());
  chosen->state = SlotImpl::State::kHeld;
  return chosen;
}

void SandboxCgroupImpl::ReleaseSlot(ExecSlot* slot) {
  if (slot == nullptr) return;
  absl::MutexLock lock(&mu_);
  for (auto& s : slots_) {
    if (s.get() != slot) continue;
    absl::StatusOr<bool> busy = HasProcesses(layout_, s->node());
    s->state = busy.ok() && !*busy ? SlotImpl::State::kFree
                                   : SlotImpl::State::kDraining;
    return;
  }
  DSEC_LOG_ERROR("cgroup: ReleaseSlot of a slot not in {}", sb_->PathIn(0));
}

absl::StatusOr<CgroupStats> SandboxCgroupImpl::Stats() const {
  CgroupStats st;
  const Node& sb = *sb_;
  ASSIGN_OR_RETURN(st.memory_peak_bytes, ReadValue(sb, kPeak));
  ASSIGN_OR_RETURN(st.memory_current_bytes, ReadValue(sb, kCurrent));
  ASSIGN_OR_RETURN(st.pids_current, ReadValue(sb, kPidsCurrent));
  ASSIGN_OR_RETURN(int64_t cpu, ReadCpuNs(layout_, sb));
  absl::MutexLock lock(&mu_);
  st.cpu_usage_ns = cpu - base_.cpu_ns;
  int64_t oom = 0, forks = 0;
  for (const Node* n : ProcessNodesLocked()) {
    ASSIGN_OR_RETURN(int64_t o, ReadOomKills(*n));
    ASSIGN_OR_RETURN(int64_t f, ReadPidsMaxEvents(*n));
    oom += o;
    forks += f;
  }
  st.oom_kills = oom - base_.oom_kills;
  st.pids_max_events = forks - base_.pids_max_events;
  return st;
}

absl::Status SandboxCgroupImpl::Freeze() {
  frozen_ = true;
  RETURN_IF_ERROR(WriteFrozen(layout_, *sb_, true));
  return WaitFrozen(layout_, *sb_);
}

absl::Status SandboxCgroupImpl::Thaw() {
  RETURN_IF_ERROR(WriteFrozen(layout_, *sb_, false));
  frozen_ = false;
  return absl::OkStatus();
}

absl::Status SandboxCgroupImpl::KillAll() {
  absl::Status s;
  if (layout_.version == CgroupVersion::kV2 && sb_->fd(kKill) >= 0) {
    s = KillSubtreeV2(layout_, *sb_);
  } else {
    std::vector<const Node*> nodes;
    {
      absl::MutexLock lock(&mu_);
      nodes = ProcessNodesLocked();
    }
    s = KillByEnumeration(layout_, *sb_, nodes);
  }
  // Whatever joins next must not start frozen.
  if (frozen_) {
    if (absl::Status t = Thaw(); !t.ok() && s.ok()) s = t;
  }
  return s;
}

absl::Status SandboxCgroupImpl::ResetForReuse() {
  RETURN_IF_ERROR(KillAll());
  {
    absl::MutexLock lock(&mu_);
    // Slots beyond e0 are removed (their Nodes rmdir on destruction).
    while (slots_.size() > 1) slots_.pop_back();
    if (slots_.empty()) RETURN_IF_ERROR(NewSlotLocked().status());
    slots_[0]->state = SlotImpl::State::kFree;
  }
  // Page cache the sandbox left stays charged to the group; give it back so
  // the next sandbox starts from zero.
  if (layout_.Has(kMemory)) {
    absl::StatusOr<int64_t> usage = ReadValue(*sb_, kCurrent);
    if (usage.ok() && *usage > kReclaimThreshold) {
      const bool v1 = layout_.version == CgroupVersion::kV1;
      int fd = openat(sb_->dirs()[layout_.hierarchy_of[kMemory]],
                      v1 ? "memory.force_empty" : "memory.reclaim",
                      O_WRONLY | O_CLOEXEC);
      if (fd >= 0) {
        char buf[24];
        (void)PwriteErrno(fd,
                          v1 ? absl::string_view("0") : FormatInt(*usage, buf));
        close(fd);
      }
    }
  }
  return Rebaseline();
}

std::string SandboxCgroupImpl::PathFor(const std::string& controller) const {
  for (int c = 0; c < kNumCtl; ++c) {
    if (controller != kCtlNames[c]) continue;
    int h = layout_.version == CgroupVersion::kV2 ? 0 : layout_.hierarchy_of[c];
    return h < 0 ? std::string() : sb_->PathIn(h);
  }
  return layout_.version == CgroupVersion::kV2 ? sb_->PathIn(0) : std::string();
}

absl::Status SlotImpl::Reset() {
  const Layout& l = group_->layout();
  ResetPeak(l, *node_);
  Baseline b;
  ASSIGN_OR_RETURN(b.cpu_ns, ReadCpuNs(l, *node_));
  ASSIGN_OR_RETURN(b.oom_kills, ReadOomKills(*node_));
  ASSIGN_OR_RETURN(b.pids_max_events, ReadPidsMaxEvents(*node_));
  base_ = b;
  return absl::OkStatus();
}

absl::StatusOr<CgroupStats> SlotImpl::Stats() const {
  const Layout& l = group_->layout();
  CgroupStats st;
  ASSIGN_OR_RETURN(st.memory_peak_bytes, ReadValue(*node_, kPeak));
  ASSIGN_OR_RETURN(st.memory_current_bytes, ReadValue(*node_, kCurrent));
  ASSIGN_OR_RETURN(st.pids_current, ReadValue(*node_, kPidsCurrent));
  ASSIGN_OR_RETURN(int64_t cpu, ReadCpuNs(l, *node_));
  ASSIGN_OR_RETURN(int64_t oom, ReadOomKills(*node_));
  ASSIGN_OR_RETURN(int64_t forks, ReadPidsMaxEvents(*node_));
  st.cpu_usage_ns = cpu - base_.cpu_ns;
  st.oom_kills = oom - base_.oom_kills;
  st.pids_max_events = forks - base_.pids_max_events;
  return st;
}

absl::StatusOr<int> SlotImpl::CountProcesses() const {
  ASSIGN_OR_RETURN(std::vector<pid_t> pids, ReadPids(*node_));
  return static_cast<int>(pids.size());
}

absl::Status SlotImpl::KillAll() {
  const Layout& l = group_->layout();
  if (l.version == CgroupVersion::kV2 && node_->fd(kKill) >= 0) {
    return KillSubtreeV2(l, *node_);
  }
  if (l.version == CgroupVersion::kV1 && group_->frozen()) {
    // v1 frozen tasks act on SIGKILL only once thawed, and thawing the slot
    // cannot override the group's freeze.
    return absl::FailedPreconditionError(
        "cannot kill a slot of a frozen sandbox on cgroup v1; Thaw first");
  }
  const Node* self = node_.get();
  return KillByEnumeration(l, *node_, absl::MakeConstSpan(&self, 1));
}

// ---- manager
// -------------------------------------------------------------------

class CgroupManagerImpl final : public CgroupManager {
 public:
  CgroupManagerImpl(std::shared_ptr<const Tree> tree, int pool_cap,
                    int pool_target)
      : tree_(std::move(tree)),
        pool_cap_(pool_cap),
        pool_target_(std::min(pool_target, pool_cap)) {
    if (pool_target_ > 0) refill_ = std::thread([this] { RefillLoop(); });
  }

  ~CgroupManagerImpl() override {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    if (refill_.joinable()) refill_.join();
    std::vector<std::unique_ptr<SandboxCgroupImpl>> pool;
    {
      absl::MutexLock lock(&mu_);
      pool.swap(pool_);
    }
    pool.clear();  // each group kills and removes itself
    // tree_ goes last; the root is removed once no group outlives us.
  }

  CgroupVersion version() const override { return tree_->layout().version; }

  absl::StatusOr<std::unique_ptr<SandboxCgroup>> Acquire(
      const CgroupLimits& limits) override {
    std::unique_ptr<SandboxCgroupImpl> group;
    {
      absl::MutexLock lock(&mu_);
      if (!pool_.empty()) {
        group = std::move(pool_.back());
        pool_.pop_back();
      }
    }
    if (!group) {
      ASSIGN_OR_RETURN(group, NewGroup());
    }
    RETURN_IF_ERROR(group->ApplyLimits(limits));
    return std::unique_ptr<SandboxCgroup>(std::move(group));
  }

  void Release(std::unique_ptr<SandboxCgroup> group) override {
    if (!group) return;
    auto* impl = dynamic_cast<SandboxCgroupImpl*>(group.get());
    if (impl == nullptr || impl->tree() != tree_.get()) return;  // destroyed
    if (absl::Status s = impl->ResetForReuse(); !s.ok()) {
      DSEC_LOG_WARN("cgroup: not pooling {}: {}", impl->PathFor("memory"),
                    s.ToString());
      return;
    }
    std::unique_ptr<SandboxCgroupImpl> owned(
        static_cast<SandboxCgroupImpl*>(group.release()));
    {
      absl::MutexLock lock(&mu_);
      if (static_cast<int>(pool_.size()) < pool_cap_) {
        pool_.push_back(std::move(owned));
        return;
      }
    }
    // Pool full: `owned` is destroyed (killed, removed) outside the lock.
  }

  absl::Status Prewarm(int count) override {
    count = std::min(count, pool_cap_);
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        if (static_cast<int>(pool_.size()) + creating_ >= count) {
          return absl::OkStatus();
        }
        ++creating_;
      }
      absl::StatusOr<std::unique_ptr<SandboxCgroupImpl>> group = NewGroup();
      absl::MutexLock lock(&mu_);
      --creating_;
      if (!group.ok()) return group.status();
      pool_.push_back(std::move(group).value());
    }
  }

  int PooledForTesting() const override {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(pool_.size());
  }

 private:
  absl::StatusOr<std::unique_ptr<SandboxCgroupImpl>> NewGroup() {
    return SandboxCgroupImpl::Create(tree_, next_id_.fetch_add(1));
  }

  bool RefillDue() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || static_cast<int>(pool_.size()) + creating_ < pool_target_;
  }

  // Keeps pool_target_ groups ready, off the launch path.
  void RefillLoop() {
    while (true) {
      mu_.LockWhen(absl::Condition(this, &CgroupManagerImpl::RefillDue));
      if (stop_) {
        mu_.Unlock();
        return;
      }
      ++creating_;
      mu_.Unlock();
      absl::StatusOr<std::unique_ptr<SandboxCgroupImpl>> group = NewGroup();
      mu_.Lock();
      --creating_;
      if (group.ok()) {
        pool_.push_back(std::move(group).value());
        mu_.Unlock();
        continue;
      }
      DSEC_LOG_WARN("cgroup: prewarming a group: {}",
                    group.status().ToString());
      // Back off before retrying; wake early on shutdown.
      mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Seconds(1));
      mu_.Unlock();
    }
  }

  const std::shared_ptr<const Tree> tree_;
  const int pool_cap_;
  const int pool_target_;
  std::atomic<int> next_id_{0};
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<SandboxCgroupImpl>> pool_ ABSL_GUARDED_BY(mu_);
  int creating_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread refill_;
};

// ---- detection
// -----------------------------------------------------------------

// At most a quarter of the fd budget goes to pooled groups.
int PoolCap(const Layout& layout) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) {
    return kMaxPool;
  }
  const int h = static_cast<int>(layout.hierarchies.size());
  // group: dirs + procs + files; e0: procs + files; init (v2): procs + 2.
  const int per_group = 3 * h + 2 * kNumFiles + 4;
  const int64_t cap = static_cast<int64_t>(rl.rlim_cur) / 4 / per_group;
  return static_cast<int>(std::clamp<int64_t>(cap, 1, kMaxPool));
}

absl::StatusOr<Layout> DetectLayout(const CgroupManagerOptions& options,
                                    const CreateKnobs& knobs) {
  ASSIGN_OR_RETURN(std::string mountinfo_text,
                   ReadFileToString("/proc/self/mountinfo"));
  ASSIGN_OR_RETURN(std::string cgroup_text,
                   ReadFileToString("/proc/self/cgroup"));
  ASSIGN_OR_RETURN(auto mounts,
                   cgroup_internal::ParseMountInfo(mountinfo_text));
  ASSIGN_OR_RETURN(auto cgroups, cgroup_internal::ParseProcCgroup(cgroup_text));

  Layout layout;
  layout.hierarchy_of.fill(-1);
  layout.root_name =
      options.name.empty() ? absl::StrCat("dsec-", getpid()) : options.name;
  if (layout.root_name == "." || layout.root_name == ".." ||
      absl::StrContains(layout.root_name, '/')) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad cgroup manager name '", layout.root_name, "'"));
  }
  const std::vector<std::string> v2_wanted = {"memory", "pids", "cpu"};

  absl::Status v2_status;
  if (options.version != CgroupVersion::kV1) {
    absl::StatusOr<HierarchyPlan> plan =
        cgroup_internal::PlanV2(mounts, cgroups, options.parent_override);
    if (plan.ok()) {
      absl::StatusOr<std::string> available = ReadFileToString(
          absl::StrCat(plan->parent_path, "/cgroup.controllers"));
      if (!available.ok()) {
        v2_status = available.status();
      } else if (HasAllTokens(*available, v2_wanted) ||
                 (knobs.allow_missing_controllers &&
                  options.version == CgroupVersion::kV2)) {
        layout.version = CgroupVersion::kV2;
        layout.files = &kV2Files;
        Hierarchy h;
        h.parent_path = plan->parent_path;
        for (int c : {kMemory, kPids, kCpu}) {
          if (HasAllTokens(*available, {std::string(kCtlNames[c])})) {
            layout.hierarchy_of[c] = 0;
            h.controllers |= 1u << c;
          }
        }
        layout.hierarchies.push_back(std::move(h));
      } else {
        v2_status = absl::FailedPreconditionError(
            absl::StrCat("cgroup v2 at ", plan->parent_path,
                         " lacks some of memory, pids, cpu (available: '",
                         absl::StripAsciiWhitespace(*available), "')"));
      }
    } else {
      v2_status = plan.status();
    }
    if (options.version == CgroupVersion::kV2 && !v2_status.ok()) {
      return v2_status;
    }
  }
  if (layout.hierarchies.empty()) {
    std::vector<std::string> wanted;
    for (int c : {kFreezer, kMemory, kPids, kCpu, kCpuacct}) {
      wanted.push_back(kCtlNames[c]);
    }
    absl::StatusOr<std::vector<HierarchyPlan>> plans = cgroup_internal::PlanV1(
        mounts, cgroups, wanted, options.parent_override);
    if (!plans.ok()) {
      if (options.version == CgroupVersion::kAuto && !v2_status.ok()) {
        return absl::FailedPreconditionError(absl::StrCat(
            plans.status().message(), "; and ", v2_status.message()));
      }
      return plans.status();
    }
    layout.version = CgroupVersion::kV1;
    layout.files = &kV1Files;
    for (const HierarchyPlan& p : *plans) {
      Hierarchy h;
      h.parent_path = p.parent_path;
      for (const std::string& name : p.controllers) {
        for (int c = 0; c < kNumCtl; ++c) {
          if (name == kCtlNames[c]) {
            layout.hierarchy_of[c] =
                static_cast<int>(layout.hierarchies.size());
            h.controllers |= 1u << c;
          }
        }
      }
      layout.hierarchies.push_back(std::move(h));
    }
  }
  for (Hierarchy& h : layout.hierarchies) {
    h.root_path = absl::StrCat(h.parent_path == "/" ? "" : h.parent_path, "/",
                               layout.root_name);
  }
  return layout;
}

}  // namespace

namespace cgroup_internal {

absl::StatusOr<std::unique_ptr<CgroupManager>> CreateCgroupManager(
    const CgroupManagerOptions& options, const CreateKnobs& knobs) {
  if (options.pool_target < 0) {
    return absl::InvalidArgumentError("pool_target must not be negative");
  }
  ASSIGN_OR_RETURN(Layout layout, DetectLayout(options, knobs));
  const int cap = PoolCap(layout);
  ASSIGN_OR_RETURN(std::shared_ptr<Tree> tree, Tree::Create(std::move(layout)));
  return std::unique_ptr<CgroupManager>(
      new CgroupManagerImpl(std::move(tree), cap, options.pool_target));
}

}  // namespace cgroup_internal

absl::StatusOr<std::unique_ptr<CgroupManager>> CgroupManager::Create(
    const CgroupManagerOptions& options) {
  return cgroup_internal::CreateCgroupManager(options, {});
}

bool CgroupsAvailable() {
  if (geteuid() != 0) return false;
  absl::StatusOr<Layout> layout = DetectLayout({}, {});
  if (!layout.ok()) return false;
  for (const Hierarchy& h : layout->hierarchies) {
    if (access(h.parent_path.c_str(), W_OK) != 0) return false;
  }
  return true;
}

}  // namespace dsec::sandbox
