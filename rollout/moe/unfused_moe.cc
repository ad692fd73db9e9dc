#include "rollout/moe/unfused_moe.h"

#include <algorithm>
#include <cstring>

#include "common/status_macros.h"

namespace dsec::moe {
namespace {

constexpr int64_t kRowBlock = 48;    // rows per GEMM task (multiple of kMr)
constexpr int64_t kPanelBlock = 8;   // output panels per GEMM task
constexpr int64_t kTokenBlock = 16;  // rows per copy/activation/combine task

// One expert's rows in the grouped GEMMs: A rows [a, a + rows * lda) and
// output rows [out_row, out_row + rows).
struct Group {
  const PackedExpert* expert;
  const float* a;
  int64_t rows;
  int64_t out_row;
};

struct GemmTask {
  int32_t group;
  int64_t row0, rows, p0, p1;
};

std::vector<GemmTask> MakeTasks(const std::vector<Group>& groups,
                                int64_t panels) {
  std::vector<GemmTask> tasks;
  for (size_t g = 0; g < groups.size(); ++g) {
    for (int64_t r = 0; r < groups[g].rows; r += kRowBlock) {
      for (int64_t p = 0; p < panels; p += kPanelBlock) {
        tasks.push_back({static_cast<int32_t>(g), r,
                         std::min(kRowBlock, groups[g].rows - r), p,
                         std::min(panels, p + kPanelBlock)});
      }
    }
  }
  return tasks;
}

int64_t Blocks(int64_t n, int64_t b) { return (n + b - 1) / b; }

}  // namespace

absl::StatusOr<std::unique_ptr<UnfusedMoe>> UnfusedMoe::Create(
    std::shared_ptr<const MoeWeights> weights, const MoeRunOptions& options) {
  if (weights == nullptr) {
    return absl::InvalidArgumentError("unfused moe: null weights");
  }
  RETURN_IF_ERROR(ValidateMoeConfig(weights->config()));
  RETURN_IF_ERROR(ValidateRunOptions(weights->config(), options));
  ASSIGN_OR_RETURN(std::unique_ptr<ThreadPool> pool,
                   ThreadPool::Create(options.num_threads));
  return std::unique_ptr<UnfusedMoe>(
      new UnfusedMoe(*weights, options, std::move(pool)));
}

UnfusedMoe::UnfusedMoe(const MoeWeights& weights, const MoeRunOptions& options,
                       std::unique_ptr<ThreadPool> pool)
    : config_(weights.config()),
      options_(options),
      router_(weights),
      packed_(weights),
      pool_(std::move(pool)) {}

absl::StatusOr<MoeOutput> UnfusedMoe::Forward(const MoeInput& in) {
  RETURN_IF_ERROR(ValidateForwardInput(config_, in.hidden, in.num_tokens,
                                       in.token_ids, in.forced_routing));
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t t_count = in.num_tokens, h = config_.hidden, k = config_.top_k,
                aw = packed_.act_width, ap = packed_.act_panels;
  MoeOutput out;
  out.routing =
      in.forced_routing != nullptr
          ? *in.forced_routing
          : router_.Route(in.hidden, t_count, in.token_ids, pool_.get());
  out.hidden.assign(t_count * h, 0.0f);
  if (t_count == 0) return out;

  // 1. Dispatch: permute token rows into expert order (rank by rank), then
  // the tokens once more for the shared experts.
  plan_.Build(out.routing, config_.num_experts);
  const int64_t pairs = plan_.num_pairs();
  const int64_t hs = PaddedStride(h);
  const bool shared = config_.num_shared_experts > 0;
  const int64_t in_rows = pairs + (shared ? t_count : 0);
  permuted_.resize(in_rows * hs);
  pool_->ParallelFor(Blocks(in_rows, kTokenBlock), [&](int64_t b, int) {
    for (int64_t p = b * kTokenBlock;
         p < std::min(in_rows, (b + 1) * kTokenBlock); ++p) {
      const int64_t t = p < pairs ? plan_.pair_token[p] : p - pairs;
      std::memcpy(permuted_.data() + p * hs, in.hidden.data() + t * h,
                  h * sizeof(float));
    }
  });

  // Groups: routed experts over their permuted rows, then shared experts
  // over all tokens.
  std::vector<Group> groups;
  for (int64_t e = 0; e < config_.num_experts; ++e) {
    const int64_t b = plan_.expert_begin[e], n = plan_.expert_begin[e + 1] - b;
    if (n > 0) {
      groups.push_back({&packed_.experts[e], permuted_.data() + b * hs, n, b});
    }
  }
  for (int64_t s = 0; s < config_.num_shared_experts; ++s) {
    groups.push_back({&packed_.shared[s], permuted_.data() + pairs * hs,
                      t_count, pairs + s * t_count});
  }
  const int64_t rows = pairs + config_.num_shared_experts * t_count;

  // 2. GEMM1 (gate/up, panel-interleaved columns) -> gemm1_.
  const int64_t g1_ld = ap * kNr;
  gemm1_.resize(rows * g1_ld);
  {
    const std::vector<GemmTask> tasks = MakeTasks(groups, ap);
    pool_->ParallelFor(tasks.size(), [&](int64_t i, int) {
      const GemmTask& t = tasks[i];
      const Group& g = groups[t.group];
      for (int64_t p = t.p0; p < t.p1; ++p) {
        GemmPanel(t.rows, g.a + t.row0 * hs, hs, g.expert->gate_up, p, 0, h,
                  [&](int64_t r0, int mr, const float* tile) {
                    for (int r = 0; r < mr; ++r) {
                      std::memcpy(gemm1_.data() +
                                      (g.out_row + t.row0 + r0 + r) * g1_ld +
                                      p * kNr,
                                  tile + r * kNr, kNr * sizeof(float));
                    }
                  });
      }
    });
  }

  // 3. SwiGLU -> act_.
  const int64_t as = PaddedStride(aw);
  act_.resize(rows * as);
  pool_->ParallelFor(Blocks(rows, kTokenBlock), [&](int64_t b, int) {
    for (int64_t r = b * kTokenBlock; r < std::min(rows, (b + 1) * kTokenBlock);
         ++r) {
      const float* src = gemm1_.data() + r * g1_ld;
      float* dst = act_.data() + r * as;
      for (int64_t p = 0; p < ap; ++p) {
        for (int j = 0; j < kNr / 2; ++j) {
          dst[p * (kNr / 2) + j] =
              SwiGlu(src[p * kNr + j], src[p * kNr + kNr / 2 + j]);
        }
      }
    }
  });

  // 4. GEMM2 -> gemm2_.
  const int64_t hp = (h + kNr - 1) / kNr;
  gemm2_.resize(rows * h);
  {
    std::vector<Group> act_groups = groups;
    for (Group& g : act_groups) g.a = act_.data() + g.out_row * as;
    const std::vector<GemmTask> tasks = MakeTasks(act_groups, hp);
    pool_->ParallelFor(tasks.size(), [&](int64_t i, int) {
      const GemmTask& t = tasks[i];
      const Group& g = act_groups[t.group];
      for (int64_t p = t.p0; p < t.p1; ++p) {
        const int64_t cols = std::min<int64_t>(kNr, h - p * kNr);
        GemmPanel(
            t.rows, g.a + t.row0 * as, as, g.expert->down, p, 0,
            config_.intermediate, [&](int64_t r0, int mr, const float* tile) {
              for (int r = 0; r < mr; ++r) {
                std::memcpy(
                    gemm2_.data() + (g.out_row + t.row0 + r0 + r) * h + p * kNr,
                    tile + r * kNr, cols * sizeof(float));
              }
            });
      }
    });
  }

  // 5. Un-permute + weighted combine, token by token.
  pool_->ParallelFor(Blocks(t_count, kTokenBlock), [&](int64_t b, int) {
    for (int64_t t = b * kTokenBlock;
         t < std::min(t_count, (b + 1) * kTokenBlock); ++t) {
      float* y = out.hidden.data() + t * h;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t p = plan_.slot_pair[t * k + j];
        const float w = plan_.pair_weight[p];
        const float* src = gemm2_.data() + p * h;
        for (int64_t c = 0; c < h; ++c) y[c] += w * src[c];
      }
      for (int64_t s = 0; s < config_.num_shared_experts; ++s) {
        const float* src = gemm2_.data() + (pairs + s * t_count + t) * h;
        for (int64_t c = 0; c < h; ++c) y[c] += src[c];
      }
    }
  });
  return out;
}

}  // namespace dsec::moe
