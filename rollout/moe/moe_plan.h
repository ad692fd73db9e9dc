// Internal to dsec_moe: what the unfused and fused layers share besides the
// micro-kernel: the packed expert weights and the dispatch plan (token/expert
// pairs grouped by expert).
//
// Expert-parallel layout: rank r owns experts [r * E/R, (r + 1) * E/R), so
// grouping pairs by expert also groups them by rank; rank r's receive
// buffer is the contiguous pair range of its experts.
#ifndef DSEC_ROLLOUT_MOE_MOE_PLAN_H_
#define DSEC_ROLLOUT_MOE_MOE_PLAN_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "rollout/moe/gemm_kernel.h"
#include "rollout/moe/moe_layer.h"
#include "rollout/moe/moe_weights.h"

namespace dsec::moe {

struct PackedExpert {
  PackedMatrix gate_up;  // PackGateUp(w1): panels of 8 gate + 8 up columns
  PackedMatrix down;     // PackWeight(w2): [H x I]
};

// All experts packed once at Create. Immutable.
struct PackedMoe {
  std::vector<PackedExpert> experts;
  std::vector<PackedExpert> shared;
  int64_t act_panels = 0;  // ceil(I / 8): gate_up panels
  int64_t act_width = 0;   // act_panels * 8: padded intermediate

  explicit PackedMoe(const MoeWeights& w);
  // Bytes of one expert's packed weights (streamed per use).
  int64_t ExpertBytes() const;
};

// Token/expert pairs sorted by (expert, token). Rebuilt per Forward; keeps
// its allocations.
struct DispatchPlan {
  std::vector<int64_t> expert_begin;  // E + 1 offsets into the pairs
  std::vector<int32_t> pair_token;    // token of each pair
  std::vector<float> pair_weight;     // combine weight of each pair
  std::vector<int64_t> slot_pair;     // [T * k]: pair index of (t, j)

  int64_t num_pairs() const { return expert_begin.back(); }
  void Build(const RoutingInfo& routing, int64_t num_experts);
};

// Row stride (floats) for A operands of the micro-kernel: n rounded up to a
// cache line plus one line, so the kMr rows it reads at once do not all map
// to the same L1 set (4 KiB aliasing when n is a power of two).
inline int64_t PaddedStride(int64_t n) { return (n + 15) / 16 * 16 + 16; }

// Checks run options against the config (threads, ranks, E % R).
absl::Status ValidateRunOptions(const MoeConfig& config,
                                const MoeRunOptions& options);

}  // namespace dsec::moe

#endif  // DSEC_ROLLOUT_MOE_MOE_PLAN_H_
