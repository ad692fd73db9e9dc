// Routing decisions of the MoE layer: scoring, top-k with ties to the lower
// expert id, hash routing, weight normalization and scaling. The one place
// these rules live; every implementation routes through them.
//
// Thread-compatible free functions; Router is immutable after Create and
// safe to share between threads.
#ifndef DSEC_ROLLOUT_MOE_ROUTING_H_
#define DSEC_ROLLOUT_MOE_ROUTING_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "rollout/moe/gemm_kernel.h"
#include "rollout/moe/moe_config.h"
#include "rollout/moe/moe_weights.h"
#include "rollout/moe/thread_pool.h"

namespace dsec::moe {

// scores[e] = scoring(logits)[e] for e < E.
void ScoreLogits(ScoringFunc f, const float* logits, int64_t num_experts,
                 float* scores);

// The k distinct experts a hash-routed layer sends token `token_id` to: a
// fixed splitmix64 sequence seeded by the id, duplicates skipped.
// REQUIRES: 1 <= k <= num_experts.
void HashExperts(int64_t token_id, int64_t num_experts, int64_t k,
                 int32_t* experts);

// From one token's scores: picks the experts (top-k by score, ties to the
// lower id; or the hash experts) and their combine weights (score,
// normalized over the k if config.normalize_top_k, times
// routed_scaling_factor). Writes k ids and k weights.
void SelectExperts(const MoeConfig& config, const float* scores,
                   int64_t token_id, int32_t* experts, float* weights);

// Routes a batch: router logits with the shared micro-kernel, then
// ScoreLogits + SelectExperts per token.
class Router {
 public:
  explicit Router(const MoeWeights& weights);

  // REQUIRES: hidden.size() == num_tokens * H; token_ids empty or
  // num_tokens long (required for hash routing). pool may be null.
  RoutingInfo Route(absl::Span<const float> hidden, int64_t num_tokens,
                    absl::Span<const int64_t> token_ids,
                    ThreadPool* pool) const;

 private:
  MoeConfig config_;
  PackedMatrix packed_;  // router [E x H]
};

// Shared input checks of Forward: shapes, token ids, forced routing.
absl::Status ValidateForwardInput(const MoeConfig& config,
                                  absl::Span<const float> hidden,
                                  int64_t num_tokens,
                                  absl::Span<const int64_t> token_ids,
                                  const RoutingInfo* forced_routing);

}  // namespace dsec::moe

#endif  // DSEC_ROLLOUT_MOE_ROUTING_H_
