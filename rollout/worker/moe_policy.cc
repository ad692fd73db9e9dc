#include "rollout/worker/moe_policy.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "rollout/policy/hash.h"

namespace dsec::rollout {

MoePolicy::MoePolicy(policy::Model* model, MoePolicyOptions options)
    : model_(model),
      options_(std::move(options)),
      generator_(model, options_.generator) {}

absl::StatusOr<std::vector<PolicyTurn>> MoePolicy::Act(
    absl::Span<const EpisodeContext> batch) {
  const int64_t max_seq = model_->config().max_seq_len;
  std::vector<PolicyTurn> turns(batch.size());
  std::vector<policy::GenerationRequest> requests;
  std::vector<size_t> slots;  // turns[slots[i]] <- requests[i]
  for (size_t i = 0; i < batch.size(); ++i) {
    const EpisodeContext& c = batch[i];
    const std::string prompt =
        policy::EncodeChat(c.messages, c.tools, options_.mode, true);
    policy::GenerationRequest request;
    request.session_id = c.episode_id;
    request.prompt = tokenizer_.Encode(prompt);
    request.sampling = options_.sampling;
    request.sampling.seed = policy::internal::Hash64(
        c.episode_id,
        options_.sampling.seed ^ (0x9e3779b97f4a7c15ULL * (c.step + 1)));
    request.wal_path = c.wal_path;
    request.return_routing = options_.return_routing;
    turns[i].prompt_tokens = static_cast<int64_t>(request.prompt.size());
    if (turns[i].prompt_tokens + request.sampling.max_new_tokens > max_seq) {
      turns[i].stop_reason = absl::StrCat(
          "context_full: ", turns[i].prompt_tokens, " prompt tokens + ",
          request.sampling.max_new_tokens, " new > ", max_seq);
      generator_.DropSession(c.episode_id);
      continue;
    }
    requests.push_back(std::move(request));
    slots.push_back(i);
  }
  if (requests.empty()) return turns;
  absl::StatusOr<std::vector<policy::GenerationResult>> results =
      generator_.Generate(requests);
  if (!results.ok()) return results.status();
  for (size_t r = 0; r < results->size(); ++r) {
    policy::GenerationResult& g = (*results)[r];
    PolicyTurn& turn = turns[slots[r]];
    policy::ParsedReply reply = policy::SplitReply(g.text, options_.mode);
    turn.reasoning = std::move(reply.reasoning);
    turn.content = std::move(reply.content);
    turn.tool_calls = std::move(reply.tool_calls);
    turn.prefill_tokens = g.prefill_tokens;
    turn.shared_prefix_tokens = g.shared_prefix_tokens;
    turn.generated_tokens = static_cast<int64_t>(g.tokens.size());
    turn.resumed_tokens = g.resumed_tokens;
    turn.routing = std::move(g.routing);
  }
  return turns;
}

}  // namespace dsec::rollout
