// Cgroup manager for sandboxes, over cgroup v1 or v2 (see cgroup.h).
//
// Invariants worth knowing before changing this file:
//  - Every directory we create is owned by a Node (RAII): the Node's
//    destructor closes its fds and rmdirs the directory in every hierarchy.
//    Only directories are ever removed; no file in cgroupfs is unlinked.
//    Children are declared after their parent so they are destroyed first.
//  - A Node holds no fd: every read or write opens the file by absolute
//    path and closes it, so an idle sandbox's group costs no descriptors
//    (a process holding thousands of sandboxes stays far from
//    RLIMIT_NOFILE, and clone() has a short fd table to copy). Which name
//    each file has on this host is resolved once, in the manager root.
//    Only a held slot keeps fds: its counter files, opened at AcquireSlot
//    and closed at ReleaseSlot, so an exec's stats are preads and v2's
//    memory.peak reset (per fd, Linux >= 6.12) applies to the fd read.
//  - v1: hierarchy 0 is the freezer's, and a joining process writes the
//    procs fds (opened for that one join) in hierarchy order, so the freezer
//    hierarchy's membership is a superset of every other's. Counting and
//    killing read it alone.
//  - Counters the kernel cannot reset (oom kills, fork failures, v2 cpu
//    time) are baselined; v1's and v2's "local" event files count at the
//    cgroup where the event happened, so a group's total is the sum over
//    the nodes that can hold processes (v1: sb + slots; v2: init + slots).
//  - A pooled group holds no process, is thawed, has at most e0 (and init
//    on v2), and its baselines and peak were reset when it was released, so
//    Acquire only writes the limits. Slots are made by the first
//    AcquireSlot, not with the group: an idle sandbox that never ran an exec
//    has no slot directories.
//  - v1 density: a memory cgroup is the expensive kind (the kernel gives
//    each one a shrinker_info of ~1 KiB per 64 memcg-aware shrinkers, i.e.
//    per ~64 superblocks on the host, so N sandboxes with a few mounts each
//    cost O(N^2)). So on v1 (a) slots exist only in the hierarchies of
//    freezer, pids and cpuacct (finding, counting, killing and timing an
//    exec's tree); an exec's processes join the *group's* directory in the
//    others (memory, cpu), where the limits are; and (b) the group's
//    directories outside the freezer's hierarchy (hierarchy 0) are made at
//    the first AcquireSlot (the first exec), with the limits, rather than
//    with the group (Node `lazy_`). Until then the only process of the
//    sandbox is its init, which is trusted, static and makes no
//    allocations; it joins the group in the freezer hierarchy and the
//    manager root in the others and stays there, so every exec (the only
//    source of untrusted code) runs under the sandbox's limits.
#include "sandbox/cgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <initializer_list>
#include <limits>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
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
// Pooled groups hold no fds (see Node), only their directories.
constexpr int kMaxPool = 1024;
// Bounded waits: freezing, emptying after SIGKILL, rmdir of a busy group.
constexpr absl::Duration kWaitTimeout = absl::Seconds(2);
// Below this, a released group's leftover page cache is not worth a reclaim.
constexpr int64_t kReclaimThreshold = 1 << 20;

// Files of a Node, by purpose.
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

// What a Node is; decides which files it uses.
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
  bool optional;  // absent on some kernels/configs: read as 0, never written
  uint8_t roles;  // Role bits of the nodes that open it
};

constexpr uint8_t kGS = kRoleGroup | kRoleSlot;

constexpr std::array<FileSpec, kNumFiles> kV1Files = {{
    {kMemory, "memory.max_usage_in_bytes", nullptr, false, kGS},
    {kMemory, "memory.usage_in_bytes", nullptr, false, kGS},
    {kCpuacct, "cpuacct.usage", nullptr, false, kGS},
    {kMemory, "memory.oom_control", nullptr, false, kGS},
    {kPids, "pids.events", nullptr, true, kGS},
    {kPids, "pids.current", nullptr, false, kGS},
    {kFreezer, "freezer.state", nullptr, false, kGS},
    {kCore, nullptr, nullptr, true, 0},
    {kFreezer, "cgroup.procs", nullptr, false, 0},  // ReadPids: any node
    {kCore, nullptr, nullptr, true, 0},
    {kMemory, "memory.limit_in_bytes", nullptr, false, kRoleGroup},
    {kMemory, "memory.memsw.limit_in_bytes", nullptr, true, kRoleGroup},
    {kPids, "pids.max", nullptr, false, kRoleGroup},
    {kCpu, "cpu.cfs_quota_us", nullptr, false, kRoleGroup},
}};

constexpr uint8_t kIS = kRoleInit | kRoleSlot;

constexpr std::array<FileSpec, kNumFiles> kV2Files = {{
    {kMemory, "memory.peak", nullptr, true, kGS},
    {kMemory, "memory.current", nullptr, false, kGS},
    {kCore, "cpu.stat", nullptr, false, kGS},
    {kMemory, "memory.events.local", "memory.events", false, kIS},
    {kPids, "pids.events.local", "pids.events", true, kIS},
    {kPids, "pids.current", nullptr, false, kGS},
    {kCore, "cgroup.freeze", nullptr, false, kGS},
    {kCore, "cgroup.events", nullptr, false, kGS},
    {kCore, "cgroup.procs", nullptr, false, 0},  // ReadPids: any node
    {kCore, "cgroup.kill", nullptr, true, kGS},
    {kMemory, "memory.max", nullptr, false, kRoleGroup},
    {kMemory, "memory.swap.max", nullptr, true, kRoleGroup},
    {kPids, "pids.max", nullptr, false, kRoleGroup},
    {kCpu, "cpu.max", nullptr, false, kRoleGroup},
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
  // Per File: the name that exists on this host (a FileSpec's name or its
  // fallback); nullptr where the host lacks it. Set once the root exists.
  std::array<const char*, kNumFiles> file_names{};
  bool peak_writable = true;  // memory.peak takes resets (v1; v2 >= 6.12)
  // Hierarchies (bit h = hierarchies[h]) a slot has a directory in: v1 those
  // of freezer, pids and cpuacct; v2 the one.
  uint32_t slot_mask = 0;
  // v1: hierarchies where a group's directory is made at its first
  // AcquireSlot (all but the freezer's, see the top); 0 on v2.
  uint32_t lazy_mask = 0;

  uint32_t AllMask() const {
    return static_cast<uint32_t>((uint64_t{1} << hierarchies.size()) - 1);
  }

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
  // mkdir <hierarchy root>/rel in each hierarchy of `mask` (bit h:
  // layout.hierarchies[h]; for the root, rel is "" and the directory is the
  // hierarchy's root_path). Opens nothing.
  static absl::StatusOr<std::unique_ptr<Node>> Create(const Layout& layout,
                                                      std::string rel,
                                                      Role role, uint32_t mask);

  // Closes the peak fd (if held), then rmdirs the directory in every
  // hierarchy (the owner has emptied it first).
  ~Node();

  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  const Layout& layout() const { return *layout_; }
  // True when the node has a directory in hierarchy `h`.
  bool In(int h) const { return h >= 0 && ((mask_ >> h) & 1) != 0; }
  // True when this node has file `f` (the host has it, the node's role uses
  // it and the node has a directory in the file's hierarchy).
  bool Has(File f) const {
    const FileSpec& spec = (*layout_->files)[f];
    return layout_->file_names[f] != nullptr && (spec.roles & role_) != 0 &&
           In(layout_->HierarchyFor(spec.controller));
  }
  // Absolute path of file `f` of this node (REQUIRES: Has(f)).
  std::string PathOf(File f) const;
  const std::string& PathIn(int hierarchy) const { return paths_[hierarchy]; }
  const std::string& rel() const { return rel_; }

  // Opens cgroup.procs of hierarchy `h` O_WRONLY. REQUIRES: In(h).
  absl::StatusOr<UniqueFd> OpenProcsFd(int h) const;

  // Opens `files` (those the node has) and keeps them until Unhold, so a
  // node in use (a held slot) reads its counters with one pread each and
  // its v2 memory.peak can be reset per fd. REQUIRES: nothing held.
  absl::Status Hold(std::initializer_list<File> files);
  void Unhold() {
    for (UniqueFd& fd : held_) fd.Reset();
  }
  // The held fd of `f`, or -1.
  int held_fd(File f) const { return held_[f].get(); }
  bool peak_resettable() const { return peak_resettable_; }
  void set_peak_resettable(bool v) { peak_resettable_ = v; }

 private:
  Node(const Layout& layout, std::string rel, Role role, uint32_t mask)
      : layout_(&layout), rel_(std::move(rel)), role_(role), mask_(mask) {
    paths_.reserve(layout.hierarchies.size());
    for (const Hierarchy& h : layout.hierarchies) {
      paths_.push_back(
          absl::StrCat(h.root_path, rel_.empty() ? "" : "/", rel_));
    }
  }

  const Layout* layout_;
  std::string rel_;                 // e.g. "sb-7/e3"; "" for the root
  std::vector<std::string> paths_;  // absolute directory, per hierarchy
  Role role_;
  uint32_t mask_;                         // hierarchies it has a directory in
  uint32_t created_ = 0;                  // those where mkdir succeeded
  std::array<UniqueFd, kNumFiles> held_;  // only between Hold and Unhold
  bool peak_resettable_ = true;
};

absl::StatusOr<std::unique_ptr<Node>> Node::Create(const Layout& layout,
                                                   std::string rel, Role role,
                                                   uint32_t mask) {
  std::unique_ptr<Node> node(
      new Node(layout, std::move(rel), role, mask & layout.AllMask()));
  node->peak_resettable_ = layout.peak_writable;
  // Directories: on failure the Node's destructor removes those made so far.
  for (size_t h = 0; h < layout.hierarchies.size(); ++h) {
    if (!node->In(static_cast<int>(h))) continue;
    if (mkdir(node->paths_[h].c_str(), 0755) != 0) {
      return ErrnoStatus(absl::StrCat("mkdir ", node->paths_[h]));
    }
    node->created_ |= 1u << h;
  }
  // v2: controllers for the children, before any child exists.
  if (layout.version == CgroupVersion::kV2 && role == kRoleGroup) {
    std::string subtree = layout.SubtreeControl();
    if (!subtree.empty()) {
      RETURN_IF_ERROR(WriteFile(
          absl::StrCat(node->paths_[0], "/cgroup.subtree_control"), subtree));
    }
  }
  return node;
}

Node::~Node() {
  Unhold();
  for (size_t h = 0; h < paths_.size(); ++h) {
    if (((created_ >> h) & 1) == 0) continue;
    if (absl::Status s = RemoveCgroupDir(AT_FDCWD, paths_[h]); !s.ok()) {
      DSEC_LOG_WARN("cgroup: removing {}: {}", paths_[h], s.ToString());
    }
  }
}

std::string Node::PathOf(File f) const {
  const FileSpec& spec = (*layout_->files)[f];
  const int h = layout_->HierarchyFor(spec.controller);
  const char* name = layout_->file_names[f];
  return absl::StrCat(PathIn(h < 0 ? 0 : h), "/",
                      name ? name : (spec.name ? spec.name : "?"));
}

absl::Status Node::Hold(std::initializer_list<File> files) {
  for (File f : files) {
    if (!Has(f)) continue;
    // memory.peak read-write where it takes resets, so Reset writes to it.
    const int mode = f == kPeak && peak_resettable_ ? O_RDWR : O_RDONLY;
    held_[f].Reset(open(PathOf(f).c_str(), mode | O_CLOEXEC));
    if (!held_[f]) {
      const absl::Status s = ErrnoStatus(absl::StrCat("open ", PathOf(f)));
      Unhold();
      return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> Node::OpenProcsFd(int h) const {
  const std::string path = absl::StrCat(paths_[h], "/cgroup.procs");
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(absl::StrCat("open ", path));
  return fd;
}

// ---- reading and writing a node's files
// ---------------------------------------
//
// Every access opens the file by absolute path and closes it again: an idle
// group holds no fd. cgroupfs lookups hit the dcache, so one open costs a
// few microseconds.

// A file's text (small files only), "" when the node lacks the file.
absl::StatusOr<absl::string_view> ReadSmall(const Node& node, File f, char* buf,
                                            size_t cap) {
  if (!node.Has(f)) return absl::string_view();
  UniqueFd opened;
  int fd = node.held_fd(f);
  if (fd < 0) {
    opened.Reset(open(node.PathOf(f).c_str(), O_RDONLY | O_CLOEXEC));
    if (!opened) return ErrnoStatus(absl::StrCat("open ", node.PathOf(f)));
    fd = opened.get();
  }
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
  if (!node.Has(f)) {
    return absl::FailedPreconditionError(
        absl::StrCat(node.PathOf(f), " is not available on this host"));
  }
  const std::string path = node.PathOf(f);
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoStatus(absl::StrCat("open ", path));
  if (int err = PwriteErrno(fd.get(), value); err != 0) {
    return ErrnoToStatus(err, absl::StrCat("write '", value, "' to ", path));
  }
  return absl::OkStatus();
}

// Best-effort write of `value` to `name` in the node's directory of
// `controller` (files no Node method reads: swappiness, force_empty...).
void WriteBestEffort(const Node& node, int controller, const char* name,
                     absl::string_view value) {
  const std::string path = absl::StrCat(
      node.PathIn(node.layout().HierarchyFor(controller)), "/", name);
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (fd) (void)PwriteErrno(fd.get(), value);
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
  // Opened afresh for every read anyway: cgroup v1 builds the pid list of an
  // open file once and keeps serving it (for about a second) on later reads
  // from offset 0, so a kept fd would report processes that already died
  // and miss new ones.
  const std::string path = node.PathOf(kProcsRead);
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return std::vector<pid_t>{};
    return ErrnoStatus(absl::StrCat("open ", path));
  }
  auto text = PreadAll(fd.get());
  if (!text.ok()) {
    return ErrnoToStatus(StatusToErrno(text.status()),
                         absl::StrCat("read ", path));
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
  if (freeze_node.Has(kFreezeState)) {
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

// Resets a node's memory high-water mark to its current usage. v1: writes 0
// to max_usage_in_bytes (a reset for every reader). v2 (Linux >= 6.12): a
// write resets only the peak seen through the fd written to, so only a node
// holding its memory.peak fd (a held slot) can be reset; a group node keeps
// no fd, and its peak on v2 is the peak since the directory was created, as
// on older kernels.
void ResetPeak(const Layout& layout, Node& node) {
  if (!node.Has(kPeak) || !node.peak_resettable()) return;
  const bool v1 = layout.version == CgroupVersion::kV1;
  int err = 0;
  if (node.held_fd(kPeak) >= 0) {
    err = PwriteErrno(node.held_fd(kPeak), v1 ? "0" : "reset");
  } else if (v1) {
    UniqueFd fd(open(node.PathOf(kPeak).c_str(), O_WRONLY | O_CLOEXEC));
    err = fd ? PwriteErrno(fd.get(), "0") : errno;
  }
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

  const Layout& layout() const { return layout_; }
  const Node& root() const { return *root_; }

 private:
  explicit Tree(Layout layout) : layout_(std::move(layout)) {}

  Layout layout_;
  std::unique_ptr<Node> root_;  // borrows layout_
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

// Resolves which of each FileSpec's names exists on this host, in the new
// manager root (every cgroup below it has the same files), so later
// accesses open the right name at once.
absl::Status ResolveFileNames(Layout& l, const Node& root) {
  for (int f = 0; f < kNumFiles; ++f) {
    const FileSpec& spec = (*l.files)[f];
    l.file_names[f] = nullptr;
    if (spec.name == nullptr || !l.Has(spec.controller)) continue;
    const std::string& dir = root.PathIn(l.HierarchyFor(spec.controller));
    for (const char* name : {spec.name, spec.fallback}) {
      if (name == nullptr) continue;
      if (access(absl::StrCat(dir, "/", name).c_str(), F_OK) == 0) {
        l.file_names[f] = name;
        break;
      }
    }
    if (l.file_names[f] == nullptr && !spec.optional) {
      return absl::FailedPreconditionError(
          absl::StrCat(dir, "/", spec.name, " does not exist"));
    }
  }
  if (l.file_names[kPeak] != nullptr) {
    // memory.peak is read-only before Linux 6.12: no per-fd reset.
    const std::string peak =
        absl::StrCat(root.PathIn(l.HierarchyFor((*l.files)[kPeak].controller)),
                     "/", l.file_names[kPeak]);
    UniqueFd fd(open(peak.c_str(), O_WRONLY | O_CLOEXEC));
    l.peak_writable = fd.valid() || (errno != EACCES && errno != EPERM);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Tree>> Tree::Create(Layout layout) {
  std::shared_ptr<Tree> tree(new Tree(std::move(layout)));
  Layout& l = tree->layout_;
  if (l.version == CgroupVersion::kV2) {
    RETURN_IF_ERROR(EnableV2ControllersAt(l, l.hierarchies[0].parent_path));
  }
  auto root = Node::Create(l, "", kRoleRoot, l.AllMask());
  if (!root.ok() && StatusToErrno(root.status()) == EEXIST) {
    // Left by an earlier run with the same name that died: remove what is
    // empty of it and try once more.
    for (const Hierarchy& h : l.hierarchies) {
      (void)RemoveCgroupDir(AT_FDCWD, h.root_path);
    }
    root = Node::Create(l, "", kRoleRoot, l.AllMask());
  }
  if (!root.ok()) return root.status();
  tree->root_ = std::move(root).value();
  const Node& r = *tree->root_;
  RETURN_IF_ERROR(ResolveFileNames(l, r));
  if (l.version == CgroupVersion::kV1) {
    // Hierarchical memory accounting (always on since Linux 5.x; older
    // kernels accept the write only before children exist).
    WriteBestEffort(r, kMemory, "memory.use_hierarchy", "1");
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

  absl::StatusOr<std::vector<UniqueFd>> OpenProcsFds() const override;
  absl::StatusOr<CgroupStats> Stats() const override;
  absl::StatusOr<int> CountProcesses() const override;
  absl::Status KillAll() override;

  // Starts a new use: peak reset, counters baselined.
  absl::Status Reset();
  // Ends a use: closes the fds Reset opened.
  void EndUse() { node_->Unhold(); }

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

  absl::StatusOr<std::vector<UniqueFd>> OpenInitProcsFds() const override;
  absl::StatusOr<ExecSlot*> AcquireSlot() override;
  void ReleaseSlot(ExecSlot* slot) override;
  absl::StatusOr<CgroupStats> Stats() const override;
  absl::StatusOr<CgroupStats> EventStats() const override;
  absl::Status Freeze() override;
  absl::Status Thaw() override;
  absl::Status KillAll() override;
  std::string PathFor(const std::string& controller) const override;

  absl::Status ApplyLimits(const CgroupLimits& limits);
  // Empties the group for the pool: kill, thaw, drop slots but e0, reclaim
  // leftover page cache, reset the peak and the baselines.
  absl::Status ResetForReuse();

  // The procs fds a process of slot `slot` writes to, in hierarchy order:
  // the slot's directory where it has one, else the group's.
  absl::StatusOr<std::vector<UniqueFd>> OpenSlotProcsFds(const Node& slot) const
      ABSL_LOCKS_EXCLUDED(mu_);
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
  // Nodes whose local event counters add up to the group's: the process
  // nodes plus a lazily made memory directory.
  std::vector<const Node*> CounterNodesLocked() const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The group's node holding file `f`; nullptr while it is a lazy one not
  // made yet (or the host lacks the controller).
  const Node* NodeForLocked(File f) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    const int h = layout_.HierarchyFor((*layout_.files)[f].controller);
    if (sb_->In(h)) return sb_.get();
    return lazy_ != nullptr && lazy_->In(h) ? lazy_.get() : nullptr;
  }
  // v1: makes the group's lazy directories and writes its limits there.
  absl::Status MaterializeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes the limits in `limits_` that live in `node`'s hierarchies.
  absl::Status WriteLimitsLocked(const Node& node)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes the memory limit to `node` (REQUIRES: it has the memory files).
  absl::Status WriteMemoryLimitLocked(const Node& node, int64_t memory_bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Rebaseline() ABSL_LOCKS_EXCLUDED(mu_);

  // Declaration order is destruction order reversed: slots, init, sb, tree.
  std::shared_ptr<const Tree> tree_;
  const Layout& layout_;
  const std::string name_;
  std::unique_ptr<Node> sb_;    // v1: the freezer hierarchy only
  std::unique_ptr<Node> init_;  // v2 only
  mutable absl::Mutex mu_;
  std::unique_ptr<Node> lazy_ ABSL_GUARDED_BY(mu_);  // v1: the others
  std::vector<std::unique_ptr<SlotImpl>> slots_ ABSL_GUARDED_BY(mu_);
  Baseline base_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> frozen_{false};
  // Limits wanted (written to lazy directories when they are made), and
  // the memory limit last written (v1 orders the memsw writes by it).
  CgroupLimits limits_ ABSL_GUARDED_BY(mu_);
  int64_t mem_limit_ ABSL_GUARDED_BY(mu_) = kUnlimited;
};

// v1: settings a new group directory needs in the hierarchies it has.
absl::Status PrepareV1Node(const Node& node) {
  const Layout& l = node.layout();
  if (node.In(l.HierarchyFor(kMemory))) {
    // Best effort: fails where the kernel has no swap support at all.
    WriteBestEffort(node, kMemory, "memory.swappiness", "0");
  }
  if (node.In(l.HierarchyFor(kCpu))) {
    char buf[24];
    RETURN_IF_ERROR(WriteFile(
        absl::StrCat(node.PathIn(l.HierarchyFor(kCpu)), "/cpu.cfs_period_us"),
        FormatInt(kCpuPeriodUs, buf)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<SandboxCgroupImpl>> SandboxCgroupImpl::Create(
    std::shared_ptr<const Tree> tree, int id) {
  std::string name = absl::StrCat("sb-", id);
  std::unique_ptr<SandboxCgroupImpl> g(
      new SandboxCgroupImpl(std::move(tree), name));
  const Layout& l = g->layout_;
  ASSIGN_OR_RETURN(
      g->sb_, Node::Create(l, name, kRoleGroup, l.AllMask() & ~l.lazy_mask));
  const Node& sb = *g->sb_;
  if (l.version == CgroupVersion::kV1) {
    RETURN_IF_ERROR(PrepareV1Node(sb));
  } else {
    if (sb.Has(kSwapLimit)) RETURN_IF_ERROR(WriteNode(sb, kSwapLimit, "0"));
    ASSIGN_OR_RETURN(g->init_, Node::Create(l, absl::StrCat(name, "/init"),
                                            kRoleInit, l.AllMask()));
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
                   Node::Create(layout_, absl::StrCat(name_, "/", name),
                                kRoleSlot, layout_.slot_mask));
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

std::vector<const Node*> SandboxCgroupImpl::CounterNodesLocked() const {
  std::vector<const Node*> nodes = ProcessNodesLocked();
  if (lazy_ != nullptr) nodes.push_back(lazy_.get());
  return nodes;
}

absl::StatusOr<std::vector<UniqueFd>> SandboxCgroupImpl::OpenInitProcsFds()
    const {
  if (init_ != nullptr) {
    ASSIGN_OR_RETURN(UniqueFd fd, init_->OpenProcsFd(0));
    std::vector<UniqueFd> fds;
    fds.push_back(std::move(fd));
    return fds;
  }
  // v1: the group's directory in each hierarchy; where the memory directory
  // is lazy, the manager root's (init stays there; see the top).
  std::vector<UniqueFd> fds;
  for (int h = 0; h < static_cast<int>(layout_.hierarchies.size()); ++h) {
    const Node& node = sb_->In(h) ? *sb_ : tree_->root();
    ASSIGN_OR_RETURN(UniqueFd fd, node.OpenProcsFd(h));
    fds.push_back(std::move(fd));
  }
  return fds;
}

absl::StatusOr<std::vector<UniqueFd>> SandboxCgroupImpl::OpenSlotProcsFds(
    const Node& slot) const {
  absl::MutexLock lock(&mu_);
  std::vector<UniqueFd> fds;
  for (int h = 0; h < static_cast<int>(layout_.hierarchies.size()); ++h) {
    const Node* node = &slot;
    if (!slot.In(h)) node = sb_->In(h) ? sb_.get() : lazy_.get();
    if (node == nullptr || !node->In(h)) {
      return absl::InternalError(
          absl::StrCat("no cgroup for a slot of ", sb_->PathIn(0), " in ",
                       layout_.hierarchies[h].root_path));
    }
    ASSIGN_OR_RETURN(UniqueFd fd, node->OpenProcsFd(h));
    fds.push_back(std::move(fd));
  }
  return fds;
}

absl::Status SandboxCgroupImpl::MaterializeLocked() {
  if (layout_.lazy_mask == 0 || lazy_ != nullptr) return absl::OkStatus();
  ASSIGN_OR_RETURN(std::unique_ptr<Node> node,
                   Node::Create(layout_, name_, kRoleGroup, layout_.lazy_mask));
  RETURN_IF_ERROR(PrepareV1Node(*node));
  mem_limit_ = kUnlimited;
  RETURN_IF_ERROR(WriteLimitsLocked(*node));
  // New directories: their peak and counters start at zero, which is what
  // the baselines taken without them assumed.
  lazy_ = std::move(node);
  return absl::OkStatus();
}

absl::Status SandboxCgroupImpl::Rebaseline() {
  absl::MutexLock lock(&mu_);
  Baseline b;
  if (const Node* cpu = NodeForLocked(kCpuUsage); cpu != nullptr) {
    ASSIGN_OR_RETURN(b.cpu_ns, ReadCpuNs(layout_, *cpu));
  }
  for (const Node* n : CounterNodesLocked()) {
    ASSIGN_OR_RETURN(int64_t oom, ReadOomKills(*n));
    ASSIGN_OR_RETURN(int64_t forks, ReadPidsMaxEvents(*n));
    b.oom_kills += oom;
    b.pids_max_events += forks;
  }
  base_ = b;
  if (const Node* mem = NodeForLocked(kCurrent); mem != nullptr) {
    ResetPeak(layout_, const_cast<Node&>(*mem));
  }
  return absl::OkStatus();
}

absl::Status SandboxCgroupImpl::WriteMemoryLimitLocked(const Node& node,
                                                       int64_t memory_bytes) {
  const bool v1 = layout_.version == CgroupVersion::kV1;
  char buf[24];
  const int64_t mem = memory_bytes > 0 ? memory_bytes : kUnlimited;
  absl::string_view text =
      memory_bytes > 0 ? FormatInt(mem, buf) : (v1 ? "-1" : "max");
  if (v1 && node.Has(kSwapLimit)) {
    // memory.limit <= memsw.limit must hold after each write.
    if (mem > mem_limit_) {
      RETURN_IF_ERROR(WriteNode(node, kSwapLimit, text));
      RETURN_IF_ERROR(WriteNode(node, kMemLimit, text));
    } else {
      RETURN_IF_ERROR(WriteNode(node, kMemLimit, text));
      RETURN_IF_ERROR(WriteNode(node, kSwapLimit, text));
    }
  } else {
    RETURN_IF_ERROR(WriteNode(node, kMemLimit, text));
  }
  mem_limit_ = mem;
  return absl::OkStatus();
}

absl::Status SandboxCgroupImpl::ApplyLimits(const CgroupLimits& limits) {
  if (limits.memory_bytes < 0 || limits.pids < 0 || limits.cpu_millicores < 0) {
    return absl::InvalidArgumentError("cgroup limits must not be negative");
  }
  if (!layout_.Has(kMemory) && limits.memory_bytes > 0) {
    return absl::FailedPreconditionError("no memory controller");
  }
  if (!layout_.Has(kPids) && limits.pids > 0) {
    return absl::FailedPreconditionError("no pids controller");
  }
  if (!layout_.Has(kCpu) && limits.cpu_millicores > 0) {
    return absl::FailedPreconditionError("no cpu controller");
  }
  absl::MutexLock lock(&mu_);
  limits_ = limits;
  RETURN_IF_ERROR(WriteLimitsLocked(*sb_));
  if (lazy_ != nullptr) RETURN_IF_ERROR(WriteLimitsLocked(*lazy_));
  return absl::OkStatus();
}

absl::Status SandboxCgroupImpl::WriteLimitsLocked(const Node& node) {
  const CgroupLimits& limits = limits_;
  const bool v1 = layout_.version == CgroupVersion::kV1;
  char buf[24];
  // Memory (swap always off: v1 memsw = memory; v2 swap.max = 0 at creation).
  if (node.Has(kMemLimit)) {
    RETURN_IF_ERROR(WriteMemoryLimitLocked(node, limits.memory_bytes));
  }
  if (node.Has(kPidsMax)) {
    RETURN_IF_ERROR(WriteNode(node, kPidsMax,
                              limits.pids > 0 ? FormatInt(limits.pids, buf)
                                              : absl::string_view("max")));
  }
  // CPU: quota per 100 ms period.
  if (node.Has(kCpuMax)) {
    int64_t quota = -1;
    if (limits.cpu_millicores > 0) {
      quota = limits.cpu_millicores > std::numeric_limits<int64_t>::max() /
                                          (kCpuPeriodUs / 1000)
                  ? std::numeric_limits<int64_t>::max() / 2
                  : limits.cpu_millicores * (kCpuPeriodUs / 1000);
      quota = std::max(quota, kMinCpuQuotaUs);
    }
    if (v1) {
      RETURN_IF_ERROR(WriteNode(node, kCpuMax, FormatInt(quota, buf)));
    } else {
      std::string text = quota < 0 ? absl::StrCat("max ", kCpuPeriodUs)
                                   : absl::StrCat(quota, " ", kCpuPeriodUs);
      RETURN_IF_ERROR(WriteNode(node, kCpuMax, text));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ExecSlot*> SandboxCgroupImpl::AcquireSlot() {
  absl::MutexLock lock(&mu_);
  // Before any exec starts: the limits are in place for it.
  RETURN_IF_ERROR(MaterializeLocked());
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
  if (absl::Status s = chosen->Reset(); !s.ok()) {
    chosen->EndUse();
    return s;
  }
  chosen->state = SlotImpl::State::kHeld;
  return chosen;
}

void SandboxCgroupImpl::ReleaseSlot(ExecSlot* slot) {
  if (slot == nullptr) return;
  absl::MutexLock lock(&mu_);
  for (auto& s : slots_) {
    if (s.get() != slot) continue;
    s->EndUse();
    absl::StatusOr<bool> busy = HasProcesses(layout_, s->node());
    s->state = busy.ok() && !*busy ? SlotImpl::State::kFree
                                   : SlotImpl::State::kDraining;
    return;
  }
  DSEC_LOG_ERROR("cgroup: ReleaseSlot of a slot not in {}", sb_->PathIn(0));
}

absl::StatusOr<CgroupStats> SandboxCgroupImpl::Stats() const {
  CgroupStats st;
  int64_t cpu = 0;
  {
    absl::MutexLock lock(&mu_);
    if (const Node* mem = NodeForLocked(kCurrent); mem != nullptr) {
      ASSIGN_OR_RETURN(st.memory_peak_bytes, ReadValue(*mem, kPeak));
      ASSIGN_OR_RETURN(st.memory_current_bytes, ReadValue(*mem, kCurrent));
    }
    if (const Node* pids = NodeForLocked(kPidsCurrent); pids != nullptr) {
      ASSIGN_OR_RETURN(st.pids_current, ReadValue(*pids, kPidsCurrent));
    }
    if (const Node* acct = NodeForLocked(kCpuUsage); acct != nullptr) {
      ASSIGN_OR_RETURN(cpu, ReadCpuNs(layout_, *acct));
    }
  }
  ASSIGN_OR_RETURN(CgroupStats events, EventStats());
  st.oom_kills = events.oom_kills;
  st.pids_max_events = events.pids_max_events;
  absl::MutexLock lock(&mu_);
  st.cpu_usage_ns = cpu - base_.cpu_ns;
  return st;
}

absl::StatusOr<CgroupStats> SandboxCgroupImpl::EventStats() const {
  CgroupStats st;
  absl::MutexLock lock(&mu_);
  int64_t oom = 0, forks = 0;
  for (const Node* n : CounterNodesLocked()) {
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
  if (layout_.version == CgroupVersion::kV2 && sb_->Has(kKill)) {
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
    if (!slots_.empty()) slots_[0]->state = SlotImpl::State::kFree;
    // Page cache the sandbox left stays charged to the group; give it back
    // so the next sandbox starts from zero.
    const Node* mem = NodeForLocked(kCurrent);
    if (layout_.Has(kMemory) && mem != nullptr) {
      absl::StatusOr<int64_t> usage = ReadValue(*mem, kCurrent);
      if (usage.ok() && *usage > kReclaimThreshold) {
        const bool v1 = layout_.version == CgroupVersion::kV1;
        char buf[24];
        WriteBestEffort(*mem, kMemory,
                        v1 ? "memory.force_empty" : "memory.reclaim",
                        v1 ? absl::string_view("0") : FormatInt(*usage, buf));
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

absl::StatusOr<std::vector<UniqueFd>> SlotImpl::OpenProcsFds() const {
  return group_->OpenSlotProcsFds(*node_);
}

absl::Status SlotImpl::Reset() {
  const Layout& l = group_->layout();
  node_->Unhold();
  RETURN_IF_ERROR(node_->Hold(
      {kPeak, kCurrent, kCpuUsage, kOomEvents, kPidsEvents, kPidsCurrent}));
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
  if (l.version == CgroupVersion::kV2 && node_->Has(kKill)) {
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
  if (layout.version == CgroupVersion::kV2) {
    layout.slot_mask = layout.AllMask();
  } else {
    constexpr uint32_t kSlotControllers =
        (1u << kFreezer) | (1u << kPids) | (1u << kCpuacct);
    for (size_t h = 0; h < layout.hierarchies.size(); ++h) {
      if ((layout.hierarchies[h].controllers & kSlotControllers) != 0) {
        layout.slot_mask |= 1u << h;
      }
    }
    // Hierarchy 0 is the freezer's: the group's directory there is made
    // with the group (init joins it; Park, KillAll and counting use it).
    layout.lazy_mask = layout.AllMask() & ~1u;
  }
  return layout;
}

// Kills every process in `path` and its sub-cgroups (thawing v1 freezer
// groups first so SIGKILL can land).
void KillTree(const std::string& path) {
  if (FILE* f = fopen((path + "/freezer.state").c_str(), "w")) {
    fputs("THAWED", f);
    fclose(f);
  }
  if (FILE* f = fopen((path + "/cgroup.freeze").c_str(), "w")) {
    fputs("0", f);
    fclose(f);
  }
  if (FILE* f = fopen((path + "/cgroup.procs").c_str(), "r")) {
    int pid;
    while (fscanf(f, "%d", &pid) == 1) kill(pid, SIGKILL);
    fclose(f);
  }
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir(path.c_str()), &closedir);
  if (!dir) return;
  while (dirent* e = readdir(dir.get())) {
    absl::string_view n(e->d_name);
    if (e->d_type == DT_DIR && n != "." && n != "..") {
      KillTree(absl::StrCat(path, "/", n));
    }
  }
}

// A runtime killed with SIGKILL leaves its "dsec-<pid>" tree (and the
// sandboxes in it) behind. Reclaims the trees of managers whose process is
// gone: their sandboxes are killed and the directories removed.
void ReclaimStaleTrees(const Layout& layout) {
  for (const Hierarchy& h : layout.hierarchies) {
    std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir(h.parent_path.c_str()),
                                            &closedir);
    if (!dir) continue;
    std::vector<std::string> stale;
    while (dirent* e = readdir(dir.get())) {
      absl::string_view n(e->d_name);
      int pid = 0;
      if (e->d_type != DT_DIR || !absl::ConsumePrefix(&n, "dsec-") ||
          !absl::SimpleAtoi(n, &pid) || pid <= 0 || pid == getpid()) {
        continue;
      }
      if (kill(pid, 0) != 0 && errno == ESRCH) stale.emplace_back(e->d_name);
    }
    for (const std::string& name : stale) {
      const std::string path = absl::StrCat(h.parent_path, "/", name);
      KillTree(path);
      if (absl::Status st = RemoveCgroupDir(AT_FDCWD, path); !st.ok()) {
        DSEC_LOG_WARN("cgroup: stale tree {} of a dead runtime: {}", path,
                      st.ToString());
      } else {
        DSEC_LOG_INFO("cgroup: reclaimed {} of a dead runtime", path);
      }
    }
  }
}

}  // namespace

namespace cgroup_internal {

absl::StatusOr<std::unique_ptr<CgroupManager>> CreateCgroupManager(
    const CgroupManagerOptions& options, const CreateKnobs& knobs) {
  if (options.pool_target < 0) {
    return absl::InvalidArgumentError("pool_target must not be negative");
  }
  ASSIGN_OR_RETURN(Layout layout, DetectLayout(options, knobs));
  if (options.name.empty()) ReclaimStaleTrees(layout);
  ASSIGN_OR_RETURN(std::shared_ptr<Tree> tree, Tree::Create(std::move(layout)));
  return std::unique_ptr<CgroupManager>(
      new CgroupManagerImpl(std::move(tree), kMaxPool, options.pool_target));
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
