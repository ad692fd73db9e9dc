// ReferenceMoe: the oracle. Naive scalar loops straight from the formula in
// moe_layer.h, double accumulation for the experts; router logits with a
// float fma loop in k order (the arithmetic the micro-kernel performs, so
// routing matches the optimized layers exactly). Slow; for tests.
// Thread-safe (stateless besides the shared immutable weights).
#ifndef DSEC_ROLLOUT_MOE_REFERENCE_MOE_H_
#define DSEC_ROLLOUT_MOE_REFERENCE_MOE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "rollout/moe/moe_layer.h"
#include "rollout/moe/moe_weights.h"

namespace dsec::moe {

class ReferenceMoe : public MoeLayer {
 public:
  // REQUIRES: weights non-null.
  static absl::StatusOr<std::unique_ptr<ReferenceMoe>> Create(
      std::shared_ptr<const MoeWeights> weights);

  absl::StatusOr<MoeOutput> Forward(const MoeInput& input) override;

 private:
  explicit ReferenceMoe(std::shared_ptr<const MoeWeights> weights)
      : weights_(std::move(weights)) {}

  std::shared_ptr<const MoeWeights> weights_;
};

}  // namespace dsec::moe

#endif  // DSEC_ROLLOUT_MOE_REFERENCE_MOE_H_
