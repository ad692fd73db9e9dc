// Scope guards: run a callback when a scope ends, unless cancelled.
//
//   auto undo = dsec::MakeScopeGuard([&] { rmdir(path); });
//   ... on success: std::move(undo).Cancel();
//
// A thin name over absl::Cleanup (a well-kept library) so the spelling stays
// uniform across the project. Not thread-safe.
#ifndef DSEC_COMMON_SCOPE_GUARD_H_
#define DSEC_COMMON_SCOPE_GUARD_H_

#include <utility>

#include "absl/cleanup/cleanup.h"

namespace dsec {

template <typename F>
using ScopeGuard = absl::Cleanup<absl::cleanup_internal::Tag, F>;

template <typename F>
[[nodiscard]] ScopeGuard<F> MakeScopeGuard(F&& f) {
  return absl::MakeCleanup(std::forward<F>(f));
}

}  // namespace dsec

#endif  // DSEC_COMMON_SCOPE_GUARD_H_
