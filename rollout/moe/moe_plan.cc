#include "rollout/moe/moe_plan.h"

#include "absl/strings/str_cat.h"

namespace dsec::moe {

PackedMoe::PackedMoe(const MoeWeights& w) {
  const MoeConfig& c = w.config();
  auto pack = [&](const ExpertWeights& ew) {
    return PackedExpert{PackGateUp(ew.w1, c.intermediate), PackWeight(ew.w2)};
  };
  for (int64_t e = 0; e < c.num_experts; ++e) {
    experts.push_back(pack(w.expert(e)));
  }
  for (int64_t s = 0; s < c.num_shared_experts; ++s) {
    shared.push_back(pack(w.shared_expert(s)));
  }
  act_panels = (c.intermediate + kNr / 2 - 1) / (kNr / 2);
  act_width = act_panels * (kNr / 2);
}

int64_t PackedMoe::ExpertBytes() const {
  return experts.empty() ? 0
                         : experts[0].gate_up.Bytes() + experts[0].down.Bytes();
}

void DispatchPlan::Build(const RoutingInfo& routing, int64_t num_experts) {
  const int64_t slots = routing.num_tokens * routing.top_k;
  expert_begin.assign(num_experts + 1, 0);
  for (int64_t s = 0; s < slots; ++s) ++expert_begin[routing.experts[s] + 1];
  for (int64_t e = 0; e < num_experts; ++e) {
    expert_begin[e + 1] += expert_begin[e];
  }
  pair_token.resize(slots);
  pair_weight.resize(slots);
  slot_pair.resize(slots);
  std::vector<int64_t> fill(expert_begin.begin(), expert_begin.end() - 1);
  // Slots in token order, so each expert's pairs come out token-sorted.
  for (int64_t s = 0; s < slots; ++s) {
    const int64_t p = fill[routing.experts[s]]++;
    pair_token[p] = static_cast<int32_t>(s / routing.top_k);
    pair_weight[p] = routing.weights[s];
    slot_pair[s] = p;
  }
}

absl::Status ValidateRunOptions(const MoeConfig& config,
                                const MoeRunOptions& o) {
  if (o.num_threads < 1 || o.num_threads > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe run options: num_threads must be in [1, 1024], got ",
                     o.num_threads));
  }
  if (o.num_ranks < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "moe run options: num_ranks must be >= 1, got ", o.num_ranks));
  }
  if (config.num_experts % o.num_ranks != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe run options: num_experts ", config.num_experts,
                     " is not divisible by num_ranks ", o.num_ranks));
  }
  if (o.wave_experts < 0) {
    return absl::InvalidArgumentError("moe run options: wave_experts < 0");
  }
  return absl::OkStatus();
}

}  // namespace dsec::moe
