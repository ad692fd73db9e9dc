#include "sandbox/warm_pool.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace dsec::sandbox {

WarmPool::WarmPool(Runtime* runtime, WarmPoolOptions options)
    : runtime_(runtime), options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<WarmPool>> WarmPool::Create(
    Runtime* runtime, const WarmPoolOptions& options) {
  if (options.target < 0 || options.target > 100000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "warm pool target ", options.target, " must be between 0 and 100000"));
  }
  std::unique_ptr<WarmPool> pool(new WarmPool(runtime, options));
  pool->refill_ = std::thread([p = pool.get()] { p->RefillLoop(); });
  return pool;
}

WarmPool::~WarmPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  refill_.join();
  std::deque<std::unique_ptr<Sandbox>> idle;
  {
    absl::MutexLock lock(&mu_);
    idle.swap(ready_);
  }
  // Sandboxes are destroyed outside the lock.
}

void WarmPool::RefillLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto needs_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || static_cast<int>(ready_.size()) < options_.target;
      };
      mu_.Await(absl::Condition(&needs_work));
      if (stopping_) return;
    }
    auto sb = runtime_->CreateSandbox(options_.spec);
    if (sb.ok() && !options_.warmup_argv.empty()) {
      auto r = (*sb)->Exec({.argv = options_.warmup_argv});
      if (!r.ok()) sb = r.status();
    }
    absl::MutexLock lock(&mu_);
    if (!sb.ok()) {
      ++stats_.create_errors;
      DSEC_LOG_WARN("warm pool refill failed: {}", sb.status().ToString());
      // Back off so a persistent failure does not spin.
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Seconds(1));
      continue;
    }
    ++stats_.created;
    ready_.push_back(std::move(*sb));
  }
}

absl::StatusOr<std::unique_ptr<Sandbox>> WarmPool::Claim() {
  {
    absl::MutexLock lock(&mu_);
    while (!ready_.empty()) {
      std::unique_ptr<Sandbox> sb = std::move(ready_.front());
      ready_.pop_front();
      if (sb->dead()) continue;  // killed from outside while idle
      ++stats_.hits;
      return sb;
    }
    ++stats_.misses;
  }
  return runtime_->CreateSandbox(options_.spec);
}

int WarmPool::ready() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(ready_.size());
}

WarmPoolStats WarmPool::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

bool WarmPool::WaitReady(int n, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return static_cast<int>(ready_.size()) >= n;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
}

}  // namespace dsec::sandbox
