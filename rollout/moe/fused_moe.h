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
//  - A row tile is up to kRowTile gathered rows of one expert. With enough
//    row tiles to keep every worker busy (large batches) one task does the
//    whole tile: GEMM1 with the clamped SwiGLU in its epilogue into a
//    worker-local activation tile (no [T x 2I] buffer), then GEMM2, whose
//    epilogue applies the combine weight and stores into the pair's row of
//    the send buffer. With few row tiles (small batches) a tile is split
//    into GEMM1 column-range tasks and GEMM2 column-range tasks; a GEMM2
//    task waits (spins) on its tile's GEMM1 tasks through a per-tile
//    counter instead of a global barrier.
//  - Combine: no atomics; every (pair, column) of the send buffer has one
//    writer, and the final pass sums each token's rows (ownership by
//    token).
//  - Deterministic: every send_ element has one writer and the combine
//    sums in a fixed order, so results do not depend on the schedule.
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
  enum class Kind : uint8_t {
    kCopyPairs,   // rows [row0, row0 + rows) of the pairs into recv_
    kCopyShared,  // tokens [row0, row0 + rows) into shared_in_
    kTile,        // whole row tile: GEMM1 + SwiGLU + GEMM2 + weight
    kGateUp,      // GEMM1 + SwiGLU, gate/up panels [c0, c1) -> unit act
    kDown,        // GEMM2 + weight, output panels [c0, c1) from unit act
  };
  struct Task {
    Kind kind;
    int32_t wave;    // copies of this wave must be done first
    int32_t expert;  // >= 0 routed expert, -1 - s shared expert s
    int32_t unit;    // kGateUp/kDown: index into units_
    int64_t row0, rows;
    int64_t c0, c1;
  };
  struct Unit {
    int64_t act_row;  // first row in act_all_
  };

  FusedMoe(const MoeWeights& weights, const MoeRunOptions& options,
           std::unique_ptr<ThreadPool> pool);
  void BuildSchedule(int64_t num_tokens);
  void RunTask(const Task& task, int worker, const float* hidden);
  // GEMM1 + SwiGLU for gate/up panels [p0, p1): act[r * alda + 8p + j].
  void GateUp(const PackedExpert& pe, const float* a, int64_t rows, int64_t p0,
              int64_t p1, float* act, int64_t alda) const;
  // GEMM2 for output panels [q0, q1), storing weight[r] * result into
  // dst_row[r].
  void Down(const PackedExpert& pe, const float* act, int64_t alda,
            int64_t rows, int64_t q0, int64_t q1, float* const* dst_row,
            const float* weight) const;

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
  std::vector<Task> inline_copies_;  // small batches: copied before the pass
  std::vector<int> wave_copies_;     // dispatch tasks per wave
  std::unique_ptr<std::atomic<int>[]> wave_done_;
  int64_t num_waves_ = 0;
  int64_t t_count_ = 0;
  std::vector<float> send_;  // [(pairs + S * T) x H] weighted results
  // Small batches: per row tile, its activation rows and GEMM1 progress.
  std::vector<Unit> units_;
  int64_t gate_up_parts_ = 0;  // kGateUp tasks per unit
  std::unique_ptr<std::atomic<int>[]> unit_done_;
  std::vector<float> act_all_;  // [sum of unit rows x act stride]
  // Large batches: per worker activation tile [kRowTile x act stride].
  std::vector<std::vector<float>> act_;
};

}  // namespace dsec::moe

#endif  // DSEC_ROLLOUT_MOE_FUSED_MOE_H_
