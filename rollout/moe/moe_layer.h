// The MoE layer interface and its three implementations' shared types.
//
//   out[t] = sum_j w[t][j] * Expert_{e[t][j]}(x[t]) + sum_s Shared_s(x[t])
//   Expert(x) = W2 * SwiGLU(W1_gate * x, W1_up * x)   (clamped, see
//   kSwigluLimit)
//
// Implementations (identical results within kMoeTolerance):
//   ReferenceMoe  naive scalar loops, double accumulation: the oracle.
//   UnfusedMoe    route, permute, grouped GEMM1, activation, grouped GEMM2,
//                 un-permute + combine; each stage materialized.
//   FusedMoe      "MegaMoE": one pipelined pass in expert waves; SwiGLU in
//                 the GEMM1 epilogue, weighted combine in the GEMM2 epilogue.
// Routing is bitwise identical across the three (same router arithmetic,
// see gemm_kernel.h), so a RoutingInfo from one replays exactly in another.
//
// Layers own their packed weights and scratch; Forward is thread-safe
// (concurrent calls on one layer are serialized internally).
#ifndef DSEC_ROLLOUT_MOE_MOE_LAYER_H_
#define DSEC_ROLLOUT_MOE_MOE_LAYER_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "rollout/moe/moe_config.h"

namespace dsec::moe {

// Agreement between implementations: |a - b| <= kMoeTolerance * (|ref| +
// rms(ref)), per element. The same bound holds for fp32 and bf16 weights:
// bf16 widens exactly to fp32 and every path accumulates in fp32 (the
// reference in double), so only summation order differs (observed ~1e-6).
inline constexpr double kMoeTolerance = 1e-4;

struct MoeInput {
  int64_t num_tokens = 0;
  absl::Span<const float> hidden;       // [num_tokens x H]
  absl::Span<const int64_t> token_ids;  // empty, or num_tokens ids (hash
                                        // routing needs them)
  // If set, used instead of the router (routing replay). Not owned; must
  // outlive the call.
  const RoutingInfo* forced_routing = nullptr;
};

struct MoeOutput {
  std::vector<float> hidden;  // [num_tokens x H]
  RoutingInfo routing;        // what was used (forced or computed)
};

// How the optimized implementations run.
struct MoeRunOptions {
  int num_threads = 1;  // workers, including the caller
  // Simulated expert parallelism: ranks each own num_experts / num_ranks
  // experts. REQUIRES: num_experts % num_ranks == 0.
  int num_ranks = 1;
  // Fused only: local experts per rank per wave (0 = choose).
  int wave_experts = 0;
};

class MoeLayer {
 public:
  virtual ~MoeLayer() = default;
  virtual absl::StatusOr<MoeOutput> Forward(const MoeInput& input) = 0;
};

}  // namespace dsec::moe

#endif  // DSEC_ROLLOUT_MOE_MOE_LAYER_H_
