// A small fork-join thread pool for the MoE kernels: ParallelFor hands out
// task indices in increasing order from one atomic counter to the calling
// thread (worker 0) and num_threads - 1 pool threads.
//
// Tasks are claimed strictly in index order, so a task may wait (spin) for
// a task with a smaller index to finish without deadlock, as long as that
// task itself never waits; the fused MoE kernel relies on this to overlap
// dispatch copies with compute.
//
// Thread-safe: ParallelFor calls from different threads are serialized.
#ifndef DSEC_ROLLOUT_MOE_THREAD_POOL_H_
#define DSEC_ROLLOUT_MOE_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"

namespace dsec::moe {

class ThreadPool {
 public:
  // REQUIRES: 1 <= num_threads <= 1024 (else InvalidArgument).
  static absl::StatusOr<std::unique_ptr<ThreadPool>> Create(int num_threads);
  ~ThreadPool();

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Runs fn(task, worker) for every task in [0, n) and returns when all are
  // done. worker is in [0, num_threads()) and unique among concurrently
  // running calls of fn.
  void ParallelFor(int64_t n, absl::FunctionRef<void(int64_t, int)> fn);

 private:
  explicit ThreadPool(int num_threads) : num_threads_(num_threads) {}
  void WorkerLoop(int worker);
  void RunTasks(int worker);

  const int num_threads_;
  std::mutex call_mu_;  // serializes ParallelFor

  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  uint64_t generation_ = 0;  // guarded by mu_
  int running_ = 0;          // pool threads still in this generation; mu_
  bool stop_ = false;        // mu_

  // Current job, published under mu_ before generation_ advances.
  const absl::FunctionRef<void(int64_t, int)>* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};

  std::vector<std::thread> threads_;
};

}  // namespace dsec::moe

#endif  // DSEC_ROLLOUT_MOE_THREAD_POOL_H_
