// A policy that plays multi-step tool use from a task's reference solution,
// with deliberate mistakes and fixes, so rollouts exercise the whole path
// (DSML, tools in sandboxes, scoring) and earn real, varied rewards without
// a trained model.
//
// Each episode draws one plan from (seed, episode id), so the members of a
// GRPO group behave differently and a resumed episode replays identically:
//   kCorrect      look around, read the stub, write the solution, check it,
//                 answer.
//   kMistakeFixed write the task's known mistake, check, notice it (the
//                 mistake's error note), fix it with edit_file, check, answer.
//   kMistakeKept  write the mistake and answer without noticing (partial
//                 reward).
//   kGiveUp       look around and stop (reward 0).
//   kBadFormat    one malformed DSML block first (the worker answers with the
//                 parse error), then as kCorrect.
//
// Thread-compatible; Act is deterministic.
#ifndef DSEC_ROLLOUT_WORKER_SCRIPTED_POLICY_H_
#define DSEC_ROLLOUT_WORKER_SCRIPTED_POLICY_H_

#include <cstdint>
#include <string>

#include "rollout/worker/policy.h"

namespace dsec::rollout {

enum class ScriptedPlan {
  kCorrect,
  kMistakeFixed,
  kMistakeKept,
  kGiveUp,
  kBadFormat
};

absl::string_view ScriptedPlanName(ScriptedPlan plan);

struct ScriptedPolicyOptions {
  uint64_t seed = 1;
  // Plan weights (need not sum to 1).
  double correct = 0.35;
  double mistake_fixed = 0.25;
  double mistake_kept = 0.2;
  double give_up = 0.1;
  double bad_format = 0.1;
};

class ScriptedPolicy : public Policy {
 public:
  explicit ScriptedPolicy(ScriptedPolicyOptions options = {})
      : options_(options) {}
  std::string name() const override { return "scripted"; }
  absl::StatusOr<std::vector<PolicyTurn>> Act(
      absl::Span<const EpisodeContext> batch) override;

  // The plan an episode follows.
  ScriptedPlan PlanFor(absl::string_view episode_id) const;

 private:
  PolicyTurn TurnFor(const EpisodeContext& context) const;
  ScriptedPolicyOptions options_;
};

}  // namespace dsec::rollout

#endif  // DSEC_ROLLOUT_WORKER_SCRIPTED_POLICY_H_
