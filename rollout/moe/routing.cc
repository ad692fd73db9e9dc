#include "rollout/moe/routing.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"

namespace dsec::moe {
namespace {

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float Softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

}  // namespace

void ScoreLogits(ScoringFunc f, const float* logits, int64_t num_experts,
                 float* scores) {
  switch (f) {
    case ScoringFunc::kSoftmax: {
      const float mx = *std::max_element(logits, logits + num_experts);
      float sum = 0;
      for (int64_t e = 0; e < num_experts; ++e) {
        scores[e] = std::exp(logits[e] - mx);
        sum += scores[e];
      }
      for (int64_t e = 0; e < num_experts; ++e) scores[e] /= sum;
      return;
    }
    case ScoringFunc::kSigmoid:
      for (int64_t e = 0; e < num_experts; ++e) {
        scores[e] = 1.0f / (1.0f + std::exp(-logits[e]));
      }
      return;
    case ScoringFunc::kSqrtSoftplus:
      for (int64_t e = 0; e < num_experts; ++e) {
        scores[e] = std::sqrt(Softplus(logits[e]));
      }
      return;
  }
}

void HashExperts(int64_t token_id, int64_t num_experts, int64_t k,
                 int32_t* experts) {
  uint64_t state = static_cast<uint64_t>(token_id) ^ 0xD5EC0E5ull;
  int64_t n = 0;
  // Rejection sampling; for k close to E the lowest unused ids fill the rest
  // after a bounded number of draws, so the loop always ends.
  for (int64_t draws = 0; n < k && draws < 16 * k + 64; ++draws) {
    const int32_t e = static_cast<int32_t>(SplitMix64(state) %
                                           static_cast<uint64_t>(num_experts));
    if (std::find(experts, experts + n, e) == experts + n) experts[n++] = e;
  }
  for (int32_t e = 0; n < k; ++e) {
    if (std::find(experts, experts + n, e) == experts + n) experts[n++] = e;
  }
}

void SelectExperts(const MoeConfig& config, const float* scores,
                   int64_t token_id, int32_t* experts, float* weights) {
  const int64_t e_count = config.num_experts, k = config.top_k;
  if (config.hash_routing) {
    HashExperts(token_id, e_count, k, experts);
  } else {
    // Partial selection sort: k passes, each taking the best remaining
    // (strictly greater wins, so ties go to the lower id). k * E is small.
    std::vector<char> taken(e_count, 0);
    for (int64_t j = 0; j < k; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < e_count; ++e) {
        if (taken[e]) continue;
        if (best < 0 || scores[e] > scores[best] ||
            (std::isnan(scores[best]) && !std::isnan(scores[e]))) {
          best = e;
        }
      }
      taken[best] = 1;
      experts[j] = static_cast<int32_t>(best);
    }
  }
  float sum = 0;
  for (int64_t j = 0; j < k; ++j) {
    weights[j] = scores[experts[j]];
    sum += weights[j];
  }
  const float norm = config.normalize_top_k && sum > 0 ? 1.0f / sum : 1.0f;
  for (int64_t j = 0; j < k; ++j) {
    weights[j] = weights[j] * norm * config.routed_scaling_factor;
  }
}

Router::Router(const MoeWeights& weights)
    : config_(weights.config()),
      packed_(PackRouter(weights.router(), weights.config().num_experts,
                         weights.config().hidden)) {}

RoutingInfo Router::Route(absl::Span<const float> hidden, int64_t num_tokens,
                          absl::Span<const int64_t> token_ids,
                          ThreadPool* pool) const {
  const int64_t h = config_.hidden, e_count = config_.num_experts,
                k = config_.top_k;
  RoutingInfo r;
  r.num_tokens = num_tokens;
  r.top_k = k;
  r.experts.resize(num_tokens * k);
  r.weights.resize(num_tokens * k);
  // Tokens in blocks of kMr rows: one micro-kernel pass per router panel.
  const int64_t blocks = (num_tokens + kMr - 1) / kMr;
  auto route_block = [&](int64_t b, int) {
    const int64_t t0 = b * kMr;
    const int64_t m = std::min<int64_t>(kMr, num_tokens - t0);
    std::vector<float> logits(m * packed_.panels * kNr);
    const int64_t ld = packed_.panels * kNr;
    for (int64_t p = 0; p < packed_.panels; ++p) {
      GemmPanel(m, hidden.data() + t0 * h, h, packed_, p, 0, h,
                [&](int64_t row0, int mr, const float* tile) {
                  for (int i = 0; i < mr; ++i) {
                    std::copy(tile + i * kNr, tile + (i + 1) * kNr,
                              logits.data() + (row0 + i) * ld + p * kNr);
                  }
                });
    }
    std::vector<float> scores(e_count);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t t = t0 + i;
      ScoreLogits(config_.scoring, logits.data() + i * ld, e_count,
                  scores.data());
      SelectExperts(config_, scores.data(),
                    token_ids.empty() ? t : token_ids[t],
                    r.experts.data() + t * k, r.weights.data() + t * k);
    }
  };
  if (pool != nullptr && blocks > 1) {
    pool->ParallelFor(blocks, route_block);
  } else {
    for (int64_t b = 0; b < blocks; ++b) route_block(b, 0);
  }
  return r;
}

absl::Status ValidateForwardInput(const MoeConfig& config,
                                  absl::Span<const float> hidden,
                                  int64_t num_tokens,
                                  absl::Span<const int64_t> token_ids,
                                  const RoutingInfo* forced_routing) {
  if (num_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe forward: num_tokens ", num_tokens, " < 0"));
  }
  if (num_tokens > int64_t{1} << 30) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe forward: num_tokens ", num_tokens, " > 2^30"));
  }
  if (static_cast<int64_t>(hidden.size()) != num_tokens * config.hidden) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe forward: hidden has ", hidden.size(),
                     " values, want ", num_tokens, " x ", config.hidden));
  }
  if (!token_ids.empty() &&
      static_cast<int64_t>(token_ids.size()) != num_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("moe forward: ", token_ids.size(), " token ids for ",
                     num_tokens, " tokens"));
  }
  if (forced_routing != nullptr) {
    return ValidateRouting(config, num_tokens, *forced_routing);
  }
  if (config.hash_routing && token_ids.empty() && num_tokens > 0) {
    return absl::InvalidArgumentError(
        "moe forward: hash routing needs token ids");
  }
  return absl::OkStatus();
}

}  // namespace dsec::moe
