// Cgroups for sandboxes: one group per sandbox with per-exec child "slots",
// over cgroup v2 when the host has controllers there, v1 otherwise.
//
// Layout (v1: a tree in each of the memory, pids, cpu, cpuacct and freezer
// hierarchies; v2: one tree with those controllers enabled):
//
//   <parent>/dsec-<tag>/            CgroupManager root (parent: this process's
//                                   own cgroup in each hierarchy by default)
//     sb-<n>/                       SandboxCgroup: the sandbox's limits
//       init/                       (v2 only: no-internal-process rule) PID 1
//       e<k>/                       exec slot k: one exec's process tree
//
// Limits are set on sb-<n>; slots only group processes so an exec's whole
// tree (daemons and double-forked children included) can be found, counted,
// timed and killed. Slots are made by the first AcquireSlot. Groups are
// pooled: Release() empties a group and keeps it for the next Acquire(), so
// the launch path does no mkdir/rmdir.
//
// cgroup v1 keeps memory cgroups few, because each costs the kernel ~1 KiB
// per 64 superblocks on the host (memcg shrinker maps), which makes many
// sandboxes with a memory cgroup each cost O(N^2):
//  - slots exist only in the freezer, pids and cpuacct hierarchies; an
//    exec's processes are in sb-<n> in the memory and cpu hierarchies, so
//    a slot's memory counters (peak, current, oom kills) read 0 on v1 and
//    the group's hold them;
//  - sb-<n> is made in the freezer's hierarchy by Acquire and in the others
//    (memory, pids, cpu, cpuacct) by the first AcquireSlot, with the limits.
//    PID 1 (trusted, static, allocation free) is in sb-<n> for the freezer
//    (Park, KillAll) and stays in the manager root elsewhere; every exec
//    joins sb-<n> there through ExecSlot::OpenProcsFds, so all code a caller
//    runs is under the limits. An idle sandbox that never ran an exec thus
//    has one cgroup directory and no memory cgroup.
//
// Joining is done by the process itself: a child writes "0" to each fd of
// OpenProcsFds() (opened O_WRONLY by the host for that one join, passed
// across namespaces, closed by the caller afterwards) before execve. That
// keeps the host out of the launch path and needs no pid translation.
//
// Fds: groups and slots hold no file descriptors while idle or pooled;
// every access opens the cgroup file by path and closes it. A held slot
// keeps its counter files open (at most six fds) until ReleaseSlot, so an
// exec's stats are cheap and v2's per-fd memory.peak reset applies.
//
// Thread-safety: CgroupManager is thread-safe. A SandboxCgroup is used by one
// owner at a time (the Sandbox), but its slot methods may be called from
// several exec threads at once (internally synchronized).
#ifndef DSEC_SANDBOX_CGROUP_H_
#define DSEC_SANDBOX_CGROUP_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace dsec::sandbox {

enum class CgroupVersion { kAuto, kV1, kV2 };

struct CgroupLimits {
  int64_t memory_bytes = 0;    // 0: unlimited. Swap is always disabled.
  int64_t pids = 0;            // 0: unlimited.
  int64_t cpu_millicores = 0;  // 0: unlimited; 1000 = one full CPU.
};

// Counters of a sandbox group (cumulative since Acquire) or of one slot.
struct CgroupStats {
  int64_t memory_peak_bytes = 0;  // high-water mark since the last reset
  int64_t memory_current_bytes = 0;
  int64_t cpu_usage_ns = 0;
  int64_t oom_kills = 0;        // processes killed by the memory limit
  int64_t pids_max_events = 0;  // forks refused by the pids limit
  int64_t pids_current = 0;
};

class CgroupManager;

// One exec's group of processes. Obtained from SandboxCgroup::AcquireSlot.
class ExecSlot {
 public:
  virtual ~ExecSlot() = default;
  // Opens the fds a process writes "0" to in order to join this slot (one
  // per v1 hierarchy, in hierarchy order: the slot's directory, or the
  // group's where slots have none; one on v2). The caller owns them and
  // closes them once the process has joined (or the fds were passed on).
  virtual absl::StatusOr<std::vector<UniqueFd>> OpenProcsFds() const = 0;
  // Memory peak, CPU usage etc. of the slot since it was acquired. On v1
  // the memory figures and oom_kills read 0 (see the top).
  virtual absl::StatusOr<CgroupStats> Stats() const = 0;
  // Number of live processes in the slot.
  virtual absl::StatusOr<int> CountProcesses() const = 0;
  // SIGKILLs every process in the slot, however it forked or re-parented
  // (v2: cgroup.kill; v1: freeze, kill each pid, thaw), and waits (bounded)
  // until the slot is empty.
  virtual absl::Status KillAll() = 0;
};

class SandboxCgroup {
 public:
  virtual ~SandboxCgroup() = default;

  // Opens the fds through which PID 1 of the sandbox joins the group (v2:
  // init/); owned by the caller, as ExecSlot::OpenProcsFds.
  virtual absl::StatusOr<std::vector<UniqueFd>> OpenInitProcsFds() const = 0;

  // A slot with no processes in it, its counters reset (made on first use;
  // on v1 the first call also makes the group's memory cgroup, see the
  // top). A slot is returned to the free list by ReleaseSlot once the exec
  // is over; a slot still holding processes (a daemon started with `&`) is
  // kept busy until it empties and is reclaimed by a later AcquireSlot.
  virtual absl::StatusOr<ExecSlot*> AcquireSlot() = 0;
  virtual void ReleaseSlot(ExecSlot* slot) = 0;

  // Whole-sandbox counters (limits apply here). On cgroup v2 the group's
  // memory peak is the peak since the group's directory was created (a
  // pooled group's may come from an earlier sandbox): keeping the fd a
  // per-fd reset needs would cost every idle sandbox a descriptor.
  virtual absl::StatusOr<CgroupStats> Stats() const = 0;
  // Only oom_kills and pids_max_events of Stats() (the rest 0): fewer files
  // to read, for an exec's before/after comparison.
  virtual absl::StatusOr<CgroupStats> EventStats() const = 0;

  // Freeze / thaw every process of the sandbox. Freeze returns once the
  // kernel reports the group frozen (bounded wait).
  virtual absl::Status Freeze() = 0;
  virtual absl::Status Thaw() = 0;

  // SIGKILL everything in the sandbox group (all slots and init).
  virtual absl::Status KillAll() = 0;

  // Filesystem path of the group in the given controller's hierarchy (for
  // tests and debugging), e.g. "memory" -> /sys/fs/cgroup/memory/.../sb-3
  // (on v1 made by the first AcquireSlot).
  virtual std::string PathFor(const std::string& controller) const = 0;
};

struct CgroupManagerOptions {
  CgroupVersion version = CgroupVersion::kAuto;
  // Where the manager root goes, per hierarchy. Empty: the cgroup this
  // process is in (read from /proc/self/cgroup).
  std::string parent_override;
  // Name of the manager root directory; empty: "dsec-<pid>".
  std::string name;
  // Groups kept ready in the pool, created in the background by Prewarm.
  int pool_target = 0;
};

class CgroupManager {
 public:
  // Detects the cgroup version and controller mounts from
  // /proc/self/mountinfo, creates the manager root and enables controllers.
  // Fails with FAILED_PRECONDITION naming what is missing (e.g. "cgroup v1
  // 'pids' hierarchy not mounted").
  static absl::StatusOr<std::unique_ptr<CgroupManager>> Create(
      const CgroupManagerOptions& options);

  // Kills whatever is left and removes the whole tree.
  virtual ~CgroupManager() = default;

  virtual CgroupVersion version() const = 0;

  // A group for a new sandbox with `limits` applied (pooled when possible).
  virtual absl::StatusOr<std::unique_ptr<SandboxCgroup>> Acquire(
      const CgroupLimits& limits) = 0;

  // Kills everything left in `group`, then keeps it for reuse (or removes
  // it when the pool is full).
  virtual void Release(std::unique_ptr<SandboxCgroup> group) = 0;

  // Creates groups until `count` are pooled.
  virtual absl::Status Prewarm(int count) = 0;

  // Number of groups currently in the pool (for tests).
  virtual int PooledForTesting() const = 0;
};

// True when this host lets us create cgroups (root and a usable v1 or v2
// tree with memory, pids and cpu controllers).
bool CgroupsAvailable();

}  // namespace dsec::sandbox

#endif  // DSEC_SANDBOX_CGROUP_H_
