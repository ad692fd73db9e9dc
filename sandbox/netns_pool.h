// NetnsPool: empty network namespaces (only `lo`, up) made ahead of time.
//
// A new network namespace costs ~0.8 ms in clone() on these machines, the
// single largest step of a sandbox launch. The pool makes them on its own
// thread (unshare(CLONE_NEWNET) affects only that thread), brings `lo` up,
// and hands out fds; a launching child joins one with setns(). Each
// namespace is used by exactly one sandbox, never shared.
//
// Thread-safe. Take() never blocks: an empty pool returns an invalid fd and
// the caller falls back to CLONE_NEWNET.
#ifndef DSEC_SANDBOX_NETNS_POOL_H_
#define DSEC_SANDBOX_NETNS_POOL_H_

#include <deque>
#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/unique_fd.h"

namespace dsec::sandbox {

class NetnsPool {
 public:
  // target 0 disables the pool (Take always misses).
  static absl::StatusOr<std::unique_ptr<NetnsPool>> Create(int target);
  ~NetnsPool();

  // A fresh namespace with lo up, or an invalid fd if none is ready.
  UniqueFd Take();

  int ready() const;

 private:
  explicit NetnsPool(int target) : target_(target) {}
  void Loop();

  const int target_;
  mutable absl::Mutex mu_;
  std::deque<UniqueFd> ready_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// Makes one namespace on the calling thread and returns the thread to the
// namespace it was in. Exposed for tests.
absl::StatusOr<UniqueFd> MakeLoopbackOnlyNetns();

}  // namespace dsec::sandbox

#endif  // DSEC_SANDBOX_NETNS_POOL_H_
