// What the rollout worker asks of a policy: one assistant turn for each of a
// batch of episodes.
//
// The worker runs episodes in lock step: every episode that is waiting for
// the model goes into one Act call (so a batched inference core decodes them
// together), then every turn's tool calls run in the sandboxes in parallel.
// A turn is raw assistant text exactly as a model would produce it
// (reasoning, content, and an optional DSML tool-call block); the worker
// parses the DSML itself, so a scripted policy and a real model go through
// the same parser, tools and scoring.
//
// Determinism: for a given episode id, step and conversation a policy must
// return the same turn (seeded by the episode, never by the batch), so a
// rollout resumed after preemption replays exactly.
//
// Thread-safety: Act is called from one thread at a time.
#ifndef DSEC_ROLLOUT_WORKER_POLICY_H_
#define DSEC_ROLLOUT_WORKER_POLICY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "client/dsml.h"
#include "rollout/policy/chat.h"
#include "rollout/policy/generator.h"
#include "rollout/tasks/task_set.h"

namespace dsec::rollout {

// One episode as the policy sees it.
struct EpisodeContext {
  const tasks::Task* task = nullptr;
  std::string episode_id;  // stable across restarts
  int member = 0;          // index within the GRPO group
  int step = 0;            // assistant turns taken so far
  // The conversation so far: system, user, then assistant/tool turns.
  absl::Span<const policy::ChatMessage> messages;
  absl::Span<const client::dsml::ToolSpec> tools;
  // Where this turn's per-token write-ahead log goes ("" = none).
  std::string wal_path;
};

struct PolicyTurn {
  // The assistant's text as generated: reasoning (thinking modes), content
  // and optionally one DSML tool-call block.
  std::string reasoning;
  std::string content;
  std::string tool_calls;      // DSML block text, "" for none
  int64_t prompt_tokens = 0;   // tokens in the prompt of this turn
  int64_t prefill_tokens = 0;  // of those, computed
  // Of the prompt, K/V copied from another episode's cached prefix (the
  // shared system prompt); the rest came from this episode's own cache.
  int64_t shared_prefix_tokens = 0;
  int64_t generated_tokens = 0;  // tokens sampled (0 for scripted)
  int64_t resumed_tokens = 0;    // recovered from the write-ahead log
  // Per generated token and layer: chosen experts and weights (MoE only).
  std::vector<policy::TokenRouting> routing;
  // The policy cannot go on (e.g. the context window is full): the episode
  // ends here, with this reason.
  std::string stop_reason;
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual std::string name() const = 0;
  // One turn per context, in order. A non-OK status aborts the rollout
  // (the episodes stay resumable).
  virtual absl::StatusOr<std::vector<PolicyTurn>> Act(
      absl::Span<const EpisodeContext> batch) = 0;
};

}  // namespace dsec::rollout

#endif  // DSEC_ROLLOUT_WORKER_POLICY_H_
