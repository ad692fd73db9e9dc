// The `moe` policy: the linked inference core end to end. Each turn renders
// the conversation with the V4 chat encoding, tokenizes it and decodes every
// episode of the batch together on the MoE transformer (rollout/policy).
// With random weights the text is noise, but the whole path runs and is
// timed: prefill (with the per-episode KV cache reused across turns, since
// interleaved thinking keeps prompts append-only), batched decode, DSML
// parsing of whatever came out, and per-token routing metadata.
//
// Determinism: each turn samples with a seed derived from (seed, episode id,
// step), and with a write-ahead log per turn a preempted generation resumes
// token for token.
//
// Thread-compatible (the worker calls Act from one thread).
#ifndef DSEC_ROLLOUT_WORKER_MOE_POLICY_H_
#define DSEC_ROLLOUT_WORKER_MOE_POLICY_H_

#include <memory>

#include "rollout/policy/chat.h"
#include "rollout/policy/generator.h"
#include "rollout/policy/model.h"
#include "rollout/policy/tokenizer.h"
#include "rollout/worker/policy.h"

namespace dsec::rollout {

struct MoePolicyOptions {
  policy::ThinkingMode mode = policy::ThinkingMode::kNonThink;
  policy::SamplingParams sampling;  // seed is mixed per episode and step
  bool return_routing = true;
  policy::GeneratorOptions generator;
};

class MoePolicy : public Policy {
 public:
  // `model` is not owned and must outlive the policy.
  MoePolicy(policy::Model* model, MoePolicyOptions options);
  std::string name() const override { return "moe"; }
  absl::StatusOr<std::vector<PolicyTurn>> Act(
      absl::Span<const EpisodeContext> batch) override;

 private:
  policy::Model* model_;
  MoePolicyOptions options_;
  policy::Tokenizer tokenizer_;
  policy::Generator generator_;
};

}  // namespace dsec::rollout

#endif  // DSEC_ROLLOUT_WORKER_MOE_POLICY_H_
