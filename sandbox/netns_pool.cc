#include "sandbox/netns_pool.h"

#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/logging.h"
#include "common/scope_guard.h"

namespace dsec::sandbox {

absl::StatusOr<UniqueFd> MakeLoopbackOnlyNetns() {
  UniqueFd original(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!original) return dsec::ErrnoStatus("open /proc/thread-self/ns/net");
  if (unshare(CLONE_NEWNET) != 0) {
    return dsec::ErrnoStatus("unshare(CLONE_NEWNET)");
  }
  // Whatever happens, this thread goes back to where it was.
  auto restore = MakeScopeGuard([&] {
    if (setns(original.get(), CLONE_NEWNET) != 0) {
      DSEC_LOG_ERROR("cannot return thread to its network namespace: {}",
                     strerror(errno));
      std::abort();  // a thread stuck in a sandbox netns must not go on
    }
  });
  UniqueFd ns(open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (!ns) return dsec::ErrnoStatus("open new netns");
  UniqueFd sock(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!sock) return dsec::ErrnoStatus("socket in new netns");
  struct ifreq ifr = {};
  memcpy(ifr.ifr_name, "lo", 3);
  ifr.ifr_flags = IFF_UP | IFF_RUNNING;
  if (ioctl(sock.get(), SIOCSIFFLAGS, &ifr) != 0) {
    return dsec::ErrnoStatus("bring up lo");
  }
  return ns;
}

absl::StatusOr<std::unique_ptr<NetnsPool>> NetnsPool::Create(int target) {
  std::unique_ptr<NetnsPool> pool(new NetnsPool(target));
  if (target > 0) {
    // Fail early (and clearly) if this host cannot make namespaces.
    auto probe = MakeLoopbackOnlyNetns();
    if (!probe.ok()) return probe.status();
    {
      absl::MutexLock lock(&pool->mu_);
      pool->ready_.push_back(std::move(*probe));
    }
    pool->thread_ = std::thread([p = pool.get()] { p->Loop(); });
  }
  return pool;
}

NetnsPool::~NetnsPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void NetnsPool::Loop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || static_cast<int>(ready_.size()) < target_;
      };
      mu_.Await(absl::Condition(&work));
      if (stopping_) return;
    }
    auto ns = MakeLoopbackOnlyNetns();
    absl::MutexLock lock(&mu_);
    if (!ns.ok()) {
      DSEC_LOG_WARN("netns pool: {}", ns.status().ToString());
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Seconds(1));
      continue;
    }
    ready_.push_back(std::move(*ns));
  }
}

UniqueFd NetnsPool::Take() {
  absl::MutexLock lock(&mu_);
  if (ready_.empty()) return UniqueFd();
  UniqueFd fd = std::move(ready_.front());
  ready_.pop_front();
  return fd;
}

int NetnsPool::ready() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(ready_.size());
}

}  // namespace dsec::sandbox
