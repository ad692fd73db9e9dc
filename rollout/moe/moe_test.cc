#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rollout/moe/fused_moe.h"
#include "rollout/moe/gemm_kernel.h"
#include "rollout/moe/moe_layer.h"
#include "rollout/moe/moe_testing.h"
#include "rollout/moe/moe_weights.h"
#include "rollout/moe/reference_moe.h"
#include "rollout/moe/routing.h"
#include "rollout/moe/unfused_moe.h"

namespace dsec::moe {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;
using test_util::Config;
using test_util::CountClampHits;
using test_util::ExpectClose;
using test_util::RandomInput;
using ::testing::HasSubstr;

struct Case {
  std::string name;
  MoeConfig config;
  int64_t tokens;
  int ranks;
  int threads;
  float scale = 1.0f;
  int wave_experts = 0;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> Cases() {
  std::vector<Case> cases;
  cases.push_back({"Basic", Config(40, 8, 2, 24, 1), 13, 2, 2});
  cases.push_back({"TopKOne", Config(32, 4, 1, 16, 1), 11, 1, 2});
  cases.push_back({"TopKAll", Config(24, 6, 6, 16, 1), 9, 3, 2});
  {
    Case c{"Sigmoid", Config(48, 8, 3, 32, 0), 17, 2, 2};
    c.config.scoring = ScoringFunc::kSigmoid;
    c.config.normalize_top_k = false;
    cases.push_back(c);
  }
  {
    Case c{"SqrtSoftplus", Config(48, 16, 4, 32, 1), 21, 4, 2};
    c.config.scoring = ScoringFunc::kSqrtSoftplus;
    cases.push_back(c);
  }
  {
    Case c{"SqrtSoftplusUnnormalized", Config(32, 8, 2, 16, 0), 7, 2, 2};
    c.config.scoring = ScoringFunc::kSqrtSoftplus;
    c.config.normalize_top_k = false;
    cases.push_back(c);
  }
  {
    Case c{"HashRouting", Config(32, 16, 3, 24, 1), 19, 4, 2};
    c.config.hash_routing = true;
    cases.push_back(c);
  }
  cases.push_back({"NoShared", Config(32, 8, 2, 16, 0), 10, 2, 2});
  cases.push_back({"TwoShared", Config(32, 8, 2, 16, 2), 10, 2, 2});
  {
    Case c{"Bf16", Config(64, 8, 2, 40, 1), 15, 2, 2};
    c.config.weight_dtype = WeightDtype::kBf16;
    cases.push_back(c);
  }
  {
    Case c{"Bf16Clamped", Config(64, 8, 2, 40, 1), 15, 4, 2, 20.0f};
    c.config.weight_dtype = WeightDtype::kBf16;
    cases.push_back(c);
  }
  cases.push_back({"Clamped", Config(64, 8, 2, 48, 1), 20, 2, 2, 20.0f});
  cases.push_back({"OneRank", Config(32, 8, 2, 16, 1), 12, 1, 2});
  cases.push_back({"FourRanks", Config(32, 8, 2, 16, 1), 12, 4, 2});
  cases.push_back({"OddSizes", Config(37, 10, 3, 19, 1), 29, 5, 2});
  cases.push_back({"OddSizesBigTile", Config(53, 12, 5, 71, 1), 101, 3, 3});
  cases.push_back({"OneToken", Config(64, 16, 4, 128, 1), 1, 2, 2});
  cases.push_back({"ZeroTokens", Config(16, 4, 2, 8, 1), 0, 2, 2});
  cases.push_back({"SingleThread", Config(32, 8, 2, 24, 1), 25, 2, 1});
  // Few tokens over many experts: most experts get none.
  cases.push_back({"SparseExperts", Config(32, 32, 2, 16, 1), 3, 4, 2});
  // Many tokens, several row tiles per expert, one expert per wave.
  {
    Case c{"ManyTokensWaves", Config(64, 16, 4, 40, 1), 300, 4, 2};
    c.wave_experts = 1;
    cases.push_back(c);
  }
  // Few row tiles but enough rows to copy: split GEMMs fed by copy waves.
  {
    Case c{"SplitTilesWithCopyWaves", Config(32, 4, 2, 64, 1), 100, 2, 2};
    c.wave_experts = 1;
    cases.push_back(c);
  }
  // Many row tiles, few rows: whole-tile tasks, copies before the pass.
  cases.push_back(
      {"WholeTilesInlineCopies", Config(32, 32, 1, 16, 1), 40, 4, 2});
  return cases;
}

struct Layers {
  std::shared_ptr<const MoeWeights> weights;
  std::unique_ptr<ReferenceMoe> reference;
  std::unique_ptr<UnfusedMoe> unfused;
  std::unique_ptr<FusedMoe> fused;
};

absl::StatusOr<Layers> MakeLayers(const MoeConfig& config, float scale,
                                  const MoeRunOptions& options,
                                  uint64_t seed = 7) {
  ASSIGN_OR_RETURN(MoeWeights w, MoeWeights::Random(config, seed, scale));
  Layers l;
  l.weights = std::make_shared<const MoeWeights>(std::move(w));
  ASSIGN_OR_RETURN(l.reference, ReferenceMoe::Create(l.weights));
  ASSIGN_OR_RETURN(l.unfused, UnfusedMoe::Create(l.weights, options));
  ASSIGN_OR_RETURN(l.fused, FusedMoe::Create(l.weights, options));
  return l;
}

class MoeEquivalenceTest : public ::testing::TestWithParam<Case> {};

TEST_P(MoeEquivalenceTest, FusedAndUnfusedMatchReference) {
  const Case& c = GetParam();
  MoeRunOptions options;
  options.num_threads = c.threads;
  options.num_ranks = c.ranks;
  options.wave_experts = c.wave_experts;
  ASSERT_OK_AND_ASSIGN(Layers l, MakeLayers(c.config, c.scale, options));
  const std::vector<float> x = RandomInput(c.tokens * c.config.hidden, 11);
  std::vector<int64_t> ids(c.tokens);
  for (int64_t t = 0; t < c.tokens; ++t) ids[t] = 1000 + 37 * t;
  MoeInput in;
  in.num_tokens = c.tokens;
  in.hidden = x;
  in.token_ids = ids;

  if (c.scale > 1.0f) {
    EXPECT_GT(CountClampHits(*l.weights, x, c.tokens), 0)
        << "weights too small to exercise the SwiGLU clamp";
  }

  ASSERT_OK_AND_ASSIGN(MoeOutput ref, l.reference->Forward(in));
  ASSERT_OK_AND_ASSIGN(MoeOutput unfused, l.unfused->Forward(in));
  ASSERT_OK_AND_ASSIGN(MoeOutput fused, l.fused->Forward(in));

  // Routing is bitwise identical across implementations.
  EXPECT_EQ(unfused.routing, ref.routing);
  EXPECT_EQ(fused.routing, ref.routing);
  ASSERT_EQ(ref.routing.experts.size(), c.tokens * c.config.top_k);
  if (c.config.hash_routing) {
    std::vector<int32_t> want(c.config.top_k);
    for (int64_t t = 0; t < c.tokens; ++t) {
      HashExperts(ids[t], c.config.num_experts, c.config.top_k, want.data());
      for (int64_t j = 0; j < c.config.top_k; ++j) {
        EXPECT_EQ(ref.routing.experts[t * c.config.top_k + j], want[j]);
      }
    }
  }

  ExpectClose(unfused.hidden, ref.hidden, "unfused vs reference");
  ExpectClose(fused.hidden, ref.hidden, "fused vs reference");
  ExpectClose(fused.hidden, unfused.hidden, "fused vs unfused");

  // A second call reuses scratch buffers and must give the same answer.
  ASSERT_OK_AND_ASSIGN(MoeOutput fused2, l.fused->Forward(in));
  ExpectClose(fused2.hidden, ref.hidden, "fused (second call) vs reference");
  ASSERT_OK_AND_ASSIGN(MoeOutput unfused2, l.unfused->Forward(in));
  EXPECT_EQ(unfused2.hidden, unfused.hidden);
}

INSTANTIATE_TEST_SUITE_P(Shapes, MoeEquivalenceTest,
                         ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

TEST(MoeEquivalence, SparseExpertsCaseLeavesExpertsEmpty) {
  // Guards the SparseExperts case above: it really leaves experts idle.
  MoeConfig c = Config(32, 32, 2, 16, 1);
  ASSERT_OK_AND_ASSIGN(MoeWeights w, MoeWeights::Random(c, 7));
  const std::vector<float> x = RandomInput(3 * 32, 11);
  Router router(w);
  RoutingInfo r = router.Route(x, 3, {}, nullptr);
  std::vector<int> used(32, 0);
  for (int32_t e : r.experts) used[e] = 1;
  int idle = 0;
  for (int u : used) idle += !u;
  EXPECT_GE(idle, 26);
}

TEST(MoeForcedRouting, AllTokensToOneExpert) {
  for (int64_t k : {1, 2}) {
    MoeConfig c = Config(40, 8, k, 24, 1);
    MoeRunOptions options{.num_threads = 2, .num_ranks = 4};
    ASSERT_OK_AND_ASSIGN(Layers l, MakeLayers(c, 1.0f, options));
    const int64_t t_count = 50;
    const std::vector<float> x = RandomInput(t_count * c.hidden, 3);
    RoutingInfo forced;
    forced.num_tokens = t_count;
    forced.top_k = k;
    for (int64_t t = 0; t < t_count; ++t) {
      forced.experts.push_back(5);
      forced.weights.push_back(0.75f);
      if (k == 2) {
        forced.experts.push_back(static_cast<int32_t>(t % 8));  // may repeat 5
        forced.weights.push_back(0.25f);
      }
    }
    MoeInput in{t_count, x, {}, &forced};
    ASSERT_OK_AND_ASSIGN(MoeOutput ref, l.reference->Forward(in));
    ASSERT_OK_AND_ASSIGN(MoeOutput unfused, l.unfused->Forward(in));
    ASSERT_OK_AND_ASSIGN(MoeOutput fused, l.fused->Forward(in));
    EXPECT_EQ(ref.routing, forced);
    EXPECT_EQ(unfused.routing, forced);
    EXPECT_EQ(fused.routing, forced);
    ExpectClose(unfused.hidden, ref.hidden, "unfused, one expert");
    ExpectClose(fused.hidden, ref.hidden, "fused, one expert");
  }
}

TEST(MoeForcedRouting, ReplayReproducesRecordedRouting) {
  MoeConfig c = Config(48, 16, 4, 32, 1);
  c.scoring = ScoringFunc::kSqrtSoftplus;
  MoeRunOptions options{.num_threads = 2, .num_ranks = 2};
  ASSERT_OK_AND_ASSIGN(Layers l, MakeLayers(c, 1.0f, options));
  const int64_t t_count = 40;
  const std::vector<float> x = RandomInput(t_count * c.hidden, 5);
  MoeInput in{t_count, x, {}, nullptr};
  ASSERT_OK_AND_ASSIGN(MoeOutput recorded, l.fused->Forward(in));

  // Replay on different inputs: routing must be the recorded one, exactly.
  const std::vector<float> x2 = RandomInput(t_count * c.hidden, 6);
  MoeInput replay{t_count, x2, {}, &recorded.routing};
  for (MoeLayer* layer : std::vector<MoeLayer*>{
           l.reference.get(), l.unfused.get(), l.fused.get()}) {
    ASSERT_OK_AND_ASSIGN(MoeOutput out, layer->Forward(replay));
    EXPECT_EQ(out.routing, recorded.routing);
  }
  // Replay on the same inputs reproduces the output too.
  MoeInput same{t_count, x, {}, &recorded.routing};
  ASSERT_OK_AND_ASSIGN(MoeOutput ref, l.reference->Forward(same));
  ExpectClose(recorded.hidden, ref.hidden, "recorded fused vs replayed ref");
}

TEST(MoeRouting, TopKTiesGoToLowerIndex) {
  MoeConfig c = Config(4, 5, 2, 4, 0);
  c.normalize_top_k = true;
  c.routed_scaling_factor = 2.0f;
  const float scores[5] = {0.1f, 0.3f, 0.3f, 0.05f, 0.3f};
  int32_t experts[2];
  float weights[2];
  SelectExperts(c, scores, 0, experts, weights);
  EXPECT_EQ(experts[0], 1);
  EXPECT_EQ(experts[1], 2);
  EXPECT_FLOAT_EQ(weights[0], 1.0f);  // 0.3 / 0.6 * 2
  EXPECT_FLOAT_EQ(weights[1], 1.0f);
}

TEST(MoeRouting, UnnormalizedWeightsAreScaledScores) {
  MoeConfig c = Config(4, 4, 2, 4, 0);
  c.normalize_top_k = false;
  c.routed_scaling_factor = 2.5f;
  const float scores[4] = {0.2f, 0.9f, 0.4f, 0.1f};
  int32_t experts[2];
  float weights[2];
  SelectExperts(c, scores, 0, experts, weights);
  EXPECT_EQ(experts[0], 1);
  EXPECT_EQ(experts[1], 2);
  EXPECT_FLOAT_EQ(weights[0], 0.9f * 2.5f);
  EXPECT_FLOAT_EQ(weights[1], 0.4f * 2.5f);
}

TEST(MoeRouting, ScoringFunctions) {
  const float logits[3] = {0.0f, 1.0f, -2.0f};
  float s[3];
  ScoreLogits(ScoringFunc::kSoftmax, logits, 3, s);
  const double z = 1 + std::exp(1.0) + std::exp(-2.0);
  EXPECT_NEAR(s[0], 1 / z, 1e-6);
  EXPECT_NEAR(s[1], std::exp(1.0) / z, 1e-6);
  ScoreLogits(ScoringFunc::kSigmoid, logits, 3, s);
  EXPECT_NEAR(s[0], 0.5, 1e-7);
  EXPECT_NEAR(s[2], 1 / (1 + std::exp(2.0)), 1e-7);
  ScoreLogits(ScoringFunc::kSqrtSoftplus, logits, 3, s);
  EXPECT_NEAR(s[0], std::sqrt(std::log(2.0)), 1e-6);
  EXPECT_NEAR(s[1], std::sqrt(std::log1p(std::exp(1.0))), 1e-6);
  const float big[1] = {100.0f};
  ScoreLogits(ScoringFunc::kSqrtSoftplus, big, 1, s);
  EXPECT_NEAR(s[0], 10.0, 1e-5);
}

TEST(MoeRouting, HashExpertsAreDistinctAndFixed) {
  for (int64_t k : {1, 3, 8}) {
    std::vector<int32_t> a(k), b(k);
    HashExperts(12345, 8, k, a.data());
    HashExperts(12345, 8, k, b.data());
    EXPECT_EQ(a, b);
    std::vector<int> seen(8, 0);
    for (int32_t e : a) {
      ASSERT_GE(e, 0);
      ASSERT_LT(e, 8);
      EXPECT_EQ(seen[e]++, 0);
    }
  }
  std::vector<int32_t> a(2), b(2);
  int differ = 0;
  for (int64_t id = 0; id < 20; ++id) {
    HashExperts(id, 64, 2, a.data());
    HashExperts(id + 1, 64, 2, b.data());
    differ += a != b;
  }
  EXPECT_GT(differ, 15);
}

TEST(MoeKernel, MicroKernelMatchesScalarFmaLoopBitwise) {
  for (WeightDtype dtype : {WeightDtype::kFp32, WeightDtype::kBf16}) {
    WeightMatrix w;
    w.rows = 21;
    w.cols = 37;
    w.dtype = dtype;
    const std::vector<float> src = RandomInput(w.rows * w.cols, 9);
    for (float v : src) {
      if (dtype == WeightDtype::kFp32) {
        w.f32.push_back(v);
      } else {
        w.bf16.push_back(FloatToBf16(v));
      }
    }
    const PackedMatrix packed = PackWeight(w);
    ASSERT_EQ(packed.panels, 2);
    const std::vector<float> a = RandomInput(11 * w.cols, 10);
    for (int64_t p = 0; p < packed.panels; ++p) {
      GemmPanel(11, a.data(), w.cols, packed, p, 0, w.cols,
                [&](int64_t r0, int mr, const float* tile) {
                  for (int i = 0; i < mr; ++i) {
                    for (int j = 0; j < kNr; ++j) {
                      const int64_t n = p * kNr + j;
                      float want = 0;
                      if (n < w.rows) {
                        for (int64_t kk = 0; kk < w.cols; ++kk) {
                          want = std::fma(a[(r0 + i) * w.cols + kk],
                                          w.At(n, kk), want);
                        }
                      }
                      EXPECT_EQ(tile[i * kNr + j], want)
                          << "row " << r0 + i << " col " << n;
                    }
                  }
                });
    }
  }
}

TEST(MoeKernel, SwiGluClamps) {
  EXPECT_FLOAT_EQ(SwiGlu(50.0f, 1.0f), 10.0f / (1 + std::exp(-10.0f)));
  EXPECT_FLOAT_EQ(SwiGlu(1.0f, 50.0f), 10.0f / (1 + std::exp(-1.0f)));
  EXPECT_FLOAT_EQ(SwiGlu(1.0f, -50.0f), -10.0f / (1 + std::exp(-1.0f)));
  // The gate is clamped from above only.
  EXPECT_FLOAT_EQ(SwiGlu(-20.0f, 1.0f), -20.0f / (1 + std::exp(20.0f)));
}

TEST(MoeWeightsFile, SaveLoadRoundTrip) {
  MoeConfig c = Config(24, 4, 2, 12, 1);
  c.weight_dtype = WeightDtype::kBf16;
  c.scoring = ScoringFunc::kSigmoid;
  ASSERT_OK_AND_ASSIGN(MoeWeights w, MoeWeights::Random(c, 3));
  const std::string path = ::testing::TempDir() + "/moe_weights.bin";
  ASSERT_OK(w.Save(path));
  ASSERT_OK_AND_ASSIGN(MoeWeights back, MoeWeights::Load(path));
  EXPECT_EQ(back.config().scoring, ScoringFunc::kSigmoid);
  EXPECT_EQ(back.config().weight_dtype, WeightDtype::kBf16);
  EXPECT_EQ(back.router(), w.router());
  EXPECT_EQ(back.expert(3).w1.bf16, w.expert(3).w1.bf16);
  EXPECT_EQ(back.shared_expert(0).w2.bf16, w.shared_expert(0).w2.bf16);

  // Truncated and garbage files are refused, not crashed on.
  ASSERT_EQ(truncate(path.c_str(), 100), 0);
  EXPECT_THAT(MoeWeights::Load(path), StatusIs(absl::StatusCode::kDataLoss));
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  std::fputs("not a weight file at all, just some text padding it out", f);
  std::fclose(f);
  EXPECT_THAT(MoeWeights::Load(path), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(MoeWeights::Load(path + ".missing"),
              StatusIs(absl::StatusCode::kNotFound));
  unlink(path.c_str());
}

TEST(MoeHostileConfig, TopKAboveExpertsIsRejected) {
  MoeConfig c = Config(16, 4, 5, 8, 0);
  EXPECT_THAT(MoeWeights::Random(c, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_k")));
  c.top_k = 0;
  EXPECT_THAT(MoeWeights::Random(c, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("top_k")));
}

TEST(MoeHostileConfig, ZeroSizesAreRejected) {
  EXPECT_THAT(
      MoeWeights::Random(Config(0, 4, 2, 8, 0), 1),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("hidden")));
  EXPECT_THAT(
      MoeWeights::Random(Config(16, 4, 2, 0, 0), 1),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("intermediate")));
  EXPECT_THAT(
      MoeWeights::Random(Config(16, 0, 1, 8, 0), 1),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("num_experts")));
  MoeConfig c = Config(16, 4, 2, 8, 0);
  c.routed_scaling_factor = NAN;
  EXPECT_THAT(MoeWeights::Random(c, 1),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(MoeHostileConfig, ExpertsNotDivisibleByRanksIsRejected) {
  ASSERT_OK_AND_ASSIGN(MoeWeights w,
                       MoeWeights::Random(Config(16, 6, 2, 8, 0), 1));
  auto weights = std::make_shared<const MoeWeights>(std::move(w));
  MoeRunOptions options{.num_threads = 2, .num_ranks = 4};
  EXPECT_THAT(
      FusedMoe::Create(weights, options),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not divisible")));
  EXPECT_THAT(
      UnfusedMoe::Create(weights, options),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not divisible")));
  options = {.num_threads = 0, .num_ranks = 1};
  EXPECT_THAT(FusedMoe::Create(weights, options),
              StatusIs(absl::StatusCode::kInvalidArgument));
  options = {.num_threads = 1, .num_ranks = 0};
  EXPECT_THAT(UnfusedMoe::Create(weights, options),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(FusedMoe::Create(nullptr, MoeRunOptions{}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(MoeHostileInput, BadShapesAndRoutingAreRejected) {
  MoeConfig c = Config(16, 4, 2, 8, 1);
  c.hash_routing = true;
  MoeRunOptions options{.num_threads = 2, .num_ranks = 2};
  ASSERT_OK_AND_ASSIGN(Layers l, MakeLayers(c, 1.0f, options));
  const std::vector<float> x = RandomInput(3 * 16, 1);
  for (MoeLayer* layer : std::vector<MoeLayer*>{
           l.reference.get(), l.unfused.get(), l.fused.get()}) {
    // Wrong number of values.
    EXPECT_THAT(layer->Forward({4, x, {}, nullptr}),
                StatusIs(absl::StatusCode::kInvalidArgument));
    // Hash routing without token ids.
    EXPECT_THAT(
        layer->Forward({3, x, {}, nullptr}),
        StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("token ids")));
    const std::vector<int64_t> ids = {1, 2};
    EXPECT_THAT(layer->Forward({3, x, ids, nullptr}),
                StatusIs(absl::StatusCode::kInvalidArgument));
    // Forced routing naming a missing expert, or the wrong shape.
    RoutingInfo bad{3, 2, {0, 1, 2, 3, 4, 0}, {1, 1, 1, 1, 1, 1}};
    EXPECT_THAT(
        layer->Forward({3, x, {}, &bad}),
        StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("expert 4")));
    RoutingInfo short_routing{3, 2, {0, 1}, {1, 1}};
    EXPECT_THAT(layer->Forward({3, x, {}, &short_routing}),
                StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(layer->Forward({-1, {}, {}, nullptr}),
                StatusIs(absl::StatusCode::kInvalidArgument));
  }
}

TEST(MoeThreadPool, RunsEveryTaskOnce) {
  ASSERT_OK_AND_ASSIGN(auto pool, ThreadPool::Create(3));
  for (int round = 0; round < 50; ++round) {
    std::vector<std::atomic<int>> hits(round + 1);
    pool->ParallelFor(round + 1, [&](int64_t i, int worker) {
      ASSERT_GE(worker, 0);
      ASSERT_LT(worker, 3);
      hits[i].fetch_add(1);
    });
    for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  }
  EXPECT_THAT(ThreadPool::Create(0),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace dsec::moe
