// Private to sandbox/cgroup*.cc and its tests: the CgroupManager factory
// with knobs that production code never sets.
#ifndef DSEC_SANDBOX_CGROUP_INTERNAL_H_
#define DSEC_SANDBOX_CGROUP_INTERNAL_H_

#include <memory>

#include "absl/status/statusor.h"
#include "sandbox/cgroup.h"

namespace dsec::sandbox::cgroup_internal {

struct CreateKnobs {
  // Accept a hierarchy that lacks some of memory, pids and cpu (v2 only).
  // Limits on a missing controller then fail with FAILED_PRECONDITION and
  // its counters read 0. Lets tests drive the v2 code (tree, init leaf,
  // cgroup.freeze, cgroup.kill, populated waits) on a hybrid host whose
  // cgroup2 mount has no controllers.
  bool allow_missing_controllers = false;
};

absl::StatusOr<std::unique_ptr<CgroupManager>> CreateCgroupManager(
    const CgroupManagerOptions& options, const CreateKnobs& knobs);

}  // namespace dsec::sandbox::cgroup_internal

#endif  // DSEC_SANDBOX_CGROUP_INTERNAL_H_
