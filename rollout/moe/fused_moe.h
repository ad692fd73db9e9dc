// FusedMoe ("MegaMoE" on CPU): expert-parallel dispatch, GEMM1, SwiGLU,
// GEMM2 and the weighted combine as one pipelined pass over the thread pool.
//
// Invariants (see fused_moe.cc for the schedule):
//  - Ranks: rank r owns experts [r*E/R, (r+1)*E/R); its receive buffer is
//    the contiguous range of pairs (token, expert) for those experts.
//  - Waves: each rank's experts are processed wave_experts at a time. The
//    dispatch copies for wave w+1 are queued ahead of wave w's compute, so
//    one worker copies the next wave's tokens while others compute; a
//    compute tile waits (spins) only for its own wave's copies.
//  - A compute tile is (expert, up to kRowTile gathered rows, a range of
//    intermediate columns). GEMM1 runs over that range with the clamped
//    SwiGLU in its epilogue into a worker-local tile (no [T x 2I] buffer);
//    GEMM2 consumes the tile and its epilogue applies the combine weight,
//    storing into the pair's row of the send buffer (or, for small batches
//    split over the intermediate dimension, adding into the worker's
//    private [T x H] accumulator). No atomics: the final pass reduces per
//    token.
//  - Results differ from UnfusedMoe only in fp32 summation order (which
//    worker summed which tile), within kMoeTolerance.
//
// Thread-safe: Forward calls are serialized on an internal mutex.
#ifndef DSEC_ROLLOUT_MOE_FUSED_MOE_H_
#define DSEC_ROLLOUT_MOE_FUSED_MOE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "rollout/moe/moe_layer.h"
#include "rollout/moe/moe_plan.h"
#include "rollout/moe/moe_weights.h"
#include "rollout/moe/routing.h"
#include "rollout/moe/thread_pool.h"

namespace dsec::moe {

class FusedMoe : public MoeLayer {
 public:
  // REQUIRES: weights non-null; options valid for the config (else
  // InvalidArgument). Packs the weights (a copy; `weights` may be dropped).
  static absl::StatusOr<std::unique_ptr<FusedMoe>> Create(
      std::shared_ptr<const MoeWeights> weights, const MoeRunOptions& options);

  absl::StatusOr<MoeOutput> Forward(const MoeInput& input) override;

 private:
  struct Task {
    bool dispatch;       // copy rows into the receive buffer, else compute
    int32_t wave;        // -1: shared experts (no dispatch to wait for)
    int32_t expert;      // >= 0 routed expert, -1 - s shared expert s
    int64_t row0, rows;  // dispatch: pair range; compute: rows of the expert
    int64_t p0, p1;      // compute: gate/up panels (intermediate / 8)
  };

  FusedMoe(const MoeWeights& weights, const MoeRunOptions& options,
           std::unique_ptr<ThreadPool> pool);
  void BuildSchedule(int64_t num_tokens);
  void RunTask(const Task& task, int worker, const float* hidden);

  const MoeConfig config_;
  const MoeRunOptions options_;
  const Router router_;
  const PackedMoe packed_;
  std::unique_ptr<ThreadPool> pool_;

  std::mutex mu_;  // guards the scratch below for one Forward
  DispatchPlan plan_;
  int64_t stride_ = 0;            // row stride of recv_ and shared_in_
  std::vector<float> recv_;       // [pairs x stride_], rank receive buffers
  std::vector<float> shared_in_;  // [T x stride_], shared experts' input
  std::vector<Task> tasks_;
  std::vector<int> wave_copies_;  // dispatch tasks per wave
  std::unique_ptr<std::atomic<int>[]> wave_done_;
  int64_t num_waves_ = 0;
  bool split_k_ = false;
  int64_t t_count_ = 0;
  std::vector<float> send_;  // [(pairs + S * T) x H] weighted results
  // Per worker: accumulator [T x H], touched flags [T], activation tile.
  std::vector<std::vector<float>> acc_;
  std::vector<std::vector<uint8_t>> touched_;
  std::vector<std::vector<float>> act_;
};

}  // namespace dsec::moe

#endif  // DSEC_ROLLOUT_MOE_FUSED_MOE_H_
