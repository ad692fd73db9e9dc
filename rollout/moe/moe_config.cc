#include "rollout/moe/moe_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace dsec::moe {

absl::Status ValidateMoeConfig(const MoeConfig& c) {
  if (c.hidden <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe config: hidden must be > 0, got ", c.hidden));
  }
  if (c.num_experts <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "moe config: num_experts must be > 0, got ", c.num_experts));
  }
  if (c.top_k <= 0 || c.top_k > c.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat(
        "moe config: top_k must be in [1, num_experts=", c.num_experts,
        "], got ", c.top_k));
  }
  if (c.intermediate <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "moe config: intermediate must be > 0, got ", c.intermediate));
  }
  if (c.num_shared_experts < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe config: num_shared_experts must be >= 0, got ",
                     c.num_shared_experts));
  }
  if (!std::isfinite(c.routed_scaling_factor) || c.routed_scaling_factor <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe config: routed_scaling_factor must be finite and "
                     "> 0, got ",
                     c.routed_scaling_factor));
  }
  // Guards the int64 products used for buffer sizes.
  constexpr int64_t kMaxDim = int64_t{1} << 20;
  if (c.hidden > kMaxDim || c.intermediate > kMaxDim ||
      c.num_experts > kMaxDim || c.num_shared_experts > kMaxDim) {
    return absl::InvalidArgumentError("moe config: dimension above 2^20");
  }
  return absl::OkStatus();
}

absl::Status ValidateRouting(const MoeConfig& config, int64_t num_tokens,
                             const RoutingInfo& r) {
  if (r.num_tokens != num_tokens || r.top_k != config.top_k ||
      static_cast<int64_t>(r.experts.size()) != num_tokens * config.top_k ||
      static_cast<int64_t>(r.weights.size()) != num_tokens * config.top_k) {
    return absl::InvalidArgumentError(
        absl::StrCat("forced routing: shape ", r.num_tokens, "x", r.top_k, " (",
                     r.experts.size(), " ids, ", r.weights.size(),
                     " weights), want ", num_tokens, "x", config.top_k));
  }
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t j = 0; j < r.top_k; ++j) {
      const int32_t e = r.experts[t * r.top_k + j];
      if (e < 0 || e >= config.num_experts) {
        return absl::InvalidArgumentError(
            absl::StrCat("forced routing: token ", t, " slot ", j,
                         " names expert ", e, " of ", config.num_experts));
      }
      if (!std::isfinite(r.weights[t * r.top_k + j])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "forced routing: token ", t, " slot ", j, " weight not finite"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace dsec::moe
