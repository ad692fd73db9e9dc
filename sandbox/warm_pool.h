// WarmPool: sandboxes of one spec created ahead of demand, so that a claim
// costs a queue pop instead of a launch. A background thread keeps `target`
// sandboxes ready and refills after each claim.
//
// Thread-safe. The pool owns idle sandboxes; a claimed one belongs to the
// caller. Destroying the pool stops the refill thread and destroys the idle
// sandboxes.
#ifndef DSEC_SANDBOX_WARM_POOL_H_
#define DSEC_SANDBOX_WARM_POOL_H_

#include <deque>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "sandbox/sandbox.h"

namespace dsec::sandbox {

struct WarmPoolOptions {
  SandboxSpec spec;
  int target = 8;  // sandboxes kept ready
  // Run once in each new sandbox before it is pooled, so init has started
  // and the first real exec finds warm caches. Empty: none.
  std::vector<std::string> warmup_argv = {"/bin/true"};
};

struct WarmPoolStats {
  int64_t hits = 0;     // claims served from the pool
  int64_t misses = 0;   // claims that had to launch synchronously
  int64_t created = 0;  // sandboxes launched by the refill thread
  int64_t create_errors = 0;
};

class WarmPool {
 public:
  // REQUIRES: runtime outlives the pool.
  static absl::StatusOr<std::unique_ptr<WarmPool>> Create(
      Runtime* runtime, const WarmPoolOptions& options);
  ~WarmPool();
  WarmPool(const WarmPool&) = delete;
  WarmPool& operator=(const WarmPool&) = delete;

  // A ready sandbox, or a freshly launched one when the pool is empty.
  absl::StatusOr<std::unique_ptr<Sandbox>> Claim();

  int ready() const;
  WarmPoolStats stats() const;
  // Waits until at least `n` sandboxes are ready; false on timeout.
  bool WaitReady(int n, absl::Duration timeout) const;

 private:
  WarmPool(Runtime* runtime, WarmPoolOptions options);
  void RefillLoop();

  Runtime* const runtime_;
  const WarmPoolOptions options_;
  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Sandbox>> ready_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  WarmPoolStats stats_ ABSL_GUARDED_BY(mu_);
  std::thread refill_;
};

}  // namespace dsec::sandbox

#endif  // DSEC_SANDBOX_WARM_POOL_H_
