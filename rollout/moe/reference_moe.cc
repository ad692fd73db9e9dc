#include "rollout/moe/reference_moe.h"

#include <cmath>
#include <vector>

#include "common/status_macros.h"
#include "rollout/moe/gemm_kernel.h"
#include "rollout/moe/routing.h"

namespace dsec::moe {
namespace {

// y += scale * Expert(x), in double.
void AddExpert(const ExpertWeights& ew, int64_t h, int64_t inter,
               const float* x, double scale, std::vector<double>& y) {
  std::vector<double> act(inter);
  for (int64_t i = 0; i < inter; ++i) {
    double gate = 0, up = 0;
    for (int64_t c = 0; c < h; ++c) {
      gate += static_cast<double>(ew.w1.At(i, c)) * x[c];
      up += static_cast<double>(ew.w1.At(inter + i, c)) * x[c];
    }
    gate = std::min<double>(gate, kSwigluLimit);
    up = std::clamp<double>(up, -kSwigluLimit, kSwigluLimit);
    act[i] = gate / (1.0 + std::exp(-gate)) * up;
  }
  for (int64_t r = 0; r < h; ++r) {
    double acc = 0;
    for (int64_t i = 0; i < inter; ++i) {
      acc += static_cast<double>(ew.w2.At(r, i)) * act[i];
    }
    y[r] += scale * acc;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ReferenceMoe>> ReferenceMoe::Create(
    std::shared_ptr<const MoeWeights> weights) {
  if (weights == nullptr) {
    return absl::InvalidArgumentError("reference moe: null weights");
  }
  RETURN_IF_ERROR(ValidateMoeConfig(weights->config()));
  return std::unique_ptr<ReferenceMoe>(new ReferenceMoe(std::move(weights)));
}

absl::StatusOr<MoeOutput> ReferenceMoe::Forward(const MoeInput& in) {
  const MoeConfig& c = weights_->config();
  RETURN_IF_ERROR(ValidateForwardInput(c, in.hidden, in.num_tokens,
                                       in.token_ids, in.forced_routing));
  const int64_t t_count = in.num_tokens, h = c.hidden, k = c.top_k,
                e_count = c.num_experts;
  MoeOutput out;
  if (in.forced_routing != nullptr) {
    out.routing = *in.forced_routing;
  } else {
    out.routing.num_tokens = t_count;
    out.routing.top_k = k;
    out.routing.experts.resize(t_count * k);
    out.routing.weights.resize(t_count * k);
    std::vector<float> logits(e_count), scores(e_count);
    for (int64_t t = 0; t < t_count; ++t) {
      const float* x = in.hidden.data() + t * h;
      for (int64_t e = 0; e < e_count; ++e) {
        float acc = 0;
        for (int64_t col = 0; col < h; ++col) {
          acc = std::fma(x[col], weights_->router()[e * h + col], acc);
        }
        logits[e] = acc;
      }
      ScoreLogits(c.scoring, logits.data(), e_count, scores.data());
      SelectExperts(c, scores.data(),
                    in.token_ids.empty() ? t : in.token_ids[t],
                    out.routing.experts.data() + t * k,
                    out.routing.weights.data() + t * k);
    }
  }
  out.hidden.resize(t_count * h);
  std::vector<double> y(h);
  for (int64_t t = 0; t < t_count; ++t) {
    const float* x = in.hidden.data() + t * h;
    std::fill(y.begin(), y.end(), 0.0);
    for (int64_t j = 0; j < k; ++j) {
      AddExpert(weights_->expert(out.routing.experts[t * k + j]), h,
                c.intermediate, x, out.routing.weights[t * k + j], y);
    }
    for (int64_t s = 0; s < c.num_shared_experts; ++s) {
      AddExpert(weights_->shared_expert(s), h, c.intermediate, x, 1.0, y);
    }
    for (int64_t r = 0; r < h; ++r) {
      out.hidden[t * h + r] = static_cast<float>(y[r]);
    }
  }
  return out;
}

}  // namespace dsec::moe
