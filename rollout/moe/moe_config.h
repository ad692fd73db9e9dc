// MoE layer configuration and the routing record shared by every
// implementation of the layer (reference, unfused, fused "MegaMoE").
//
// Plain value types; thread-compatible. ValidateMoeConfig is the one place a
// config is checked: every Create() calls it.
#ifndef DSEC_ROLLOUT_MOE_MOE_CONFIG_H_
#define DSEC_ROLLOUT_MOE_MOE_CONFIG_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace dsec::moe {

// How router logits become expert scores.
enum class ScoringFunc {
  kSoftmax,      // softmax over all experts
  kSigmoid,      // 1 / (1 + exp(-x))
  kSqrtSoftplus  // sqrt(log(1 + exp(x)))  (DeepSeek-V4)
};

// Storage type of the expert weights. Accumulation is always fp32.
enum class WeightDtype { kFp32, kBf16 };

struct MoeConfig {
  int64_t hidden = 0;              // H
  int64_t num_experts = 0;         // E, routed experts
  int64_t top_k = 0;               // experts per token, 1 <= top_k <= E
  int64_t intermediate = 0;        // I, per expert (routed and shared)
  int64_t num_shared_experts = 0;  // S, applied to every token
  float routed_scaling_factor = 1.0f;
  ScoringFunc scoring = ScoringFunc::kSoftmax;
  bool normalize_top_k = true;  // divide the k weights by their sum
  // Hash-routed layer: the k experts of a token are a fixed hash of its token
  // id (see HashExperts in routing.h); weights still come from the scores.
  bool hash_routing = false;
  WeightDtype weight_dtype = WeightDtype::kFp32;
};

// SwiGLU clamp limits (DeepSeek-V4): the linear ("up") half is clamped to
// [-kSwigluLimit, kSwigluLimit], the gate only from above.
inline constexpr float kSwigluLimit = 10.0f;

// Returns InvalidArgument naming the first bad field.
absl::Status ValidateMoeConfig(const MoeConfig& config);

// Per token, the experts chosen and their final combine weights (after
// normalization and the routed scaling factor). Returned by every Forward
// and accepted back as forced routing (training-side routing replay).
struct RoutingInfo {
  int64_t num_tokens = 0;
  int64_t top_k = 0;
  std::vector<int32_t> experts;  // [num_tokens x top_k]
  std::vector<float> weights;    // [num_tokens x top_k]

  friend bool operator==(const RoutingInfo&, const RoutingInfo&) = default;
};

// Checks shape and expert ids of a forced routing against the config.
absl::Status ValidateRouting(const MoeConfig& config, int64_t num_tokens,
                             const RoutingInfo& routing);

}  // namespace dsec::moe

#endif  // DSEC_ROLLOUT_MOE_MOE_CONFIG_H_
