// Private to sandbox/cgroup*.cc: pure parsers for the text the kernel gives
// about cgroups (/proc/self/mountinfo, /proc/self/cgroup, "key value" stat
// files, single counters, pid lists) and the planning step that turns them
// into the directories a CgroupManager nests under. No I/O here, so both
// cgroup versions are unit tested with fixture strings on any host.
//
// Thread-safe: pure functions.
#ifndef DSEC_SANDBOX_CGROUP_PARSE_H_
#define DSEC_SANDBOX_CGROUP_PARSE_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/optional.h"
#include "absl/types/span.h"

namespace dsec::sandbox::cgroup_internal {

// One line of /proc/<pid>/mountinfo (the fields cgroup detection needs).
struct MountInfo {
  std::string root;         // path of the mount's root inside its filesystem
  std::string mount_point;  // where it is mounted, octal escapes decoded
  std::string fs_type;      // "cgroup", "cgroup2", ...
  std::vector<std::string> super_options;  // v1: controllers, "name=..."
};

absl::StatusOr<std::vector<MountInfo>> ParseMountInfo(absl::string_view text);

// One line of /proc/<pid>/cgroup: "id:controller,list:/path". The v2 line is
// id 0 with no controllers.
struct ProcCgroup {
  int hierarchy_id = 0;
  std::vector<std::string> controllers;
  std::string path;
};

absl::StatusOr<std::vector<ProcCgroup>> ParseProcCgroup(absl::string_view text);

// The value of `key` in a flat keyed file ("key value" per line:
// memory.events, cpu.stat, pids.events, memory.oom_control). nullopt when
// the key is absent or its value is not an integer.
absl::optional<int64_t> FindKeyedValue(absl::string_view text,
                                       absl::string_view key);

// A single-value file ("123\n"); "max" reads as INT64_MAX.
absl::optional<int64_t> ParseCounter(absl::string_view text);

// cgroup.procs: one pid per line; sorted, duplicates removed (v1 may list a
// process twice).
std::vector<pid_t> ParsePidList(absl::string_view text);

// True when every name in `wanted` is a token of the space-separated `list`
// (cgroup.controllers, cgroup.subtree_control).
bool HasAllTokens(absl::string_view list, absl::Span<const std::string> wanted);

// A directory under which the manager root goes, and the controllers of the
// hierarchy it belongs to.
struct HierarchyPlan {
  std::string parent_path;  // e.g. /sys/fs/cgroup/memory/process_api/abc
  std::vector<std::string> controllers;
};

// v1: one plan per distinct mount holding one of `wanted` (in the order of
// `wanted`; co-mounted controllers such as "cpu,cpuacct" share one plan).
// The parent is this process's cgroup in that hierarchy, or
// `parent_override` (a cgroup path such as "/dsec") when not empty.
// FAILED_PRECONDITION names the first controller with no usable mount.
absl::StatusOr<std::vector<HierarchyPlan>> PlanV1(
    absl::Span<const MountInfo> mounts, absl::Span<const ProcCgroup> cgroups,
    absl::Span<const std::string> wanted, absl::string_view parent_override);

// v2: the unified hierarchy's mount under which this process's cgroup (or
// `parent_override`) is visible. `controllers` is left empty: the caller
// reads cgroup.controllers to learn what is available.
absl::StatusOr<HierarchyPlan> PlanV2(absl::Span<const MountInfo> mounts,
                                     absl::Span<const ProcCgroup> cgroups,
                                     absl::string_view parent_override);

}  // namespace dsec::sandbox::cgroup_internal

#endif  // DSEC_SANDBOX_CGROUP_PARSE_H_
