// UnfusedMoe: the MoE layer as a sequence of separate parallel stages, each
// materializing its result (the baseline the fused kernel is measured
// against):
//   route -> permute tokens by expert [pairs x H] -> grouped GEMM1
//   [rows x 2I] -> SwiGLU [rows x I] -> grouped GEMM2 [rows x H] ->
//   un-permute + weighted combine.
// Uses the same packed weights and micro-kernel as FusedMoe. Each stage is
// one ParallelFor over the thread pool (one barrier per stage). Expert
// parallelism shows only in the layout: the permuted buffer is the ranks'
// receive buffers back to back (rank r's experts are contiguous); there is
// no overlap of copies with compute.
//
// Thread-safe: Forward calls are serialized on an internal mutex (the layer
// reuses its scratch buffers across calls).
#ifndef DSEC_ROLLOUT_MOE_UNFUSED_MOE_H_
#define DSEC_ROLLOUT_MOE_UNFUSED_MOE_H_

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

class UnfusedMoe : public MoeLayer {
 public:
  // REQUIRES: weights non-null; options valid for the config (else
  // InvalidArgument). Packs the weights (a copy; `weights` may be dropped).
  static absl::StatusOr<std::unique_ptr<UnfusedMoe>> Create(
      std::shared_ptr<const MoeWeights> weights, const MoeRunOptions& options);

  absl::StatusOr<MoeOutput> Forward(const MoeInput& input) override;

 private:
  UnfusedMoe(const MoeWeights& weights, const MoeRunOptions& options,
             std::unique_ptr<ThreadPool> pool);

  const MoeConfig config_;
  const MoeRunOptions options_;
  const Router router_;
  const PackedMoe packed_;
  std::unique_ptr<ThreadPool> pool_;

  std::mutex mu_;  // guards the scratch below for one Forward
  DispatchPlan plan_;
  std::vector<float> permuted_;  // [pairs + T (if shared) x PaddedStride(H)]
  std::vector<float> gemm1_;     // [rows x 2 * act_width], panel order
  std::vector<float> act_;       // [rows x PaddedStride(act_width)]
  std::vector<float> gemm2_;     // [rows x H]
};

}  // namespace dsec::moe

#endif  // DSEC_ROLLOUT_MOE_UNFUSED_MOE_H_
