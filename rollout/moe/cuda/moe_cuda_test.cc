// CudaFusedMoe and the CUDA unfused baseline against ReferenceMoe.
//
// Needs a GPU. Without one every GPU test skips with a message, unless
// DSEC_REQUIRE_GPU=1, which turns the missing device into a failure (for
// GPU runners, where a skip would hide a broken driver). The ctest label is
// "gpu": CPU-only CI runs `ctest -LE gpu`.
#include <cmath>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/status_macros.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rollout/moe/cuda/cuda_moe.h"
#include "rollout/moe/fused_moe.h"
#include "rollout/moe/moe_layer.h"
#include "rollout/moe/moe_testing.h"
#include "rollout/moe/moe_weights.h"
#include "rollout/moe/reference_moe.h"

namespace dsec::moe {
namespace {

using ::dsec::testing::StatusIs;
using test_util::Config;
using test_util::CountClampHits;
using test_util::ExpectClose;
using test_util::RandomInput;
using ::testing::HasSubstr;

bool GpuRequired() {
  const char* v = std::getenv("DSEC_REQUIRE_GPU");
  return v != nullptr && std::string(v) == "1";
}

// Skips (or, with DSEC_REQUIRE_GPU=1, fails) when there is no device.
class CudaMoeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaAvailable()) return;
    if (GpuRequired()) {
      FAIL() << "DSEC_REQUIRE_GPU=1 but the CUDA runtime finds no device";
    }
    GTEST_SKIP() << "no CUDA device: skipping GPU test (set "
                    "DSEC_REQUIRE_GPU=1 to make this a failure)";
  }
};

struct Layers {
  std::shared_ptr<const MoeWeights> weights;
  std::unique_ptr<ReferenceMoe> reference;
  std::unique_ptr<MoeLayer> fused;
  std::unique_ptr<MoeLayer> unfused;
};

absl::StatusOr<Layers> MakeLayers(const MoeConfig& config, float scale) {
  ASSIGN_OR_RETURN(MoeWeights w, MoeWeights::Random(config, 7, scale));
  Layers l;
  l.weights = std::make_shared<const MoeWeights>(std::move(w));
  ASSIGN_OR_RETURN(l.reference, ReferenceMoe::Create(l.weights));
  ASSIGN_OR_RETURN(l.fused, MakeCudaFusedMoe(config, *l.weights));
  ASSIGN_OR_RETURN(l.unfused, MakeCudaUnfusedMoe(config, *l.weights));
  return l;
}

struct Case {
  std::string name;
  MoeConfig config;
  int64_t tokens;
  float scale = 1.0f;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> Cases() {
  std::vector<Case> cases;
  cases.push_back({"Basic", Config(40, 8, 2, 24, 1), 13});
  cases.push_back({"TopKOne", Config(32, 4, 1, 16, 1), 11});
  cases.push_back({"TopKAll", Config(24, 6, 6, 16, 1), 9});
  {
    Case c{"Sigmoid", Config(48, 8, 3, 32, 0), 17};
    c.config.scoring = ScoringFunc::kSigmoid;
    c.config.normalize_top_k = false;
    cases.push_back(c);
  }
  {
    Case c{"SqrtSoftplus", Config(48, 16, 4, 32, 1), 21};
    c.config.scoring = ScoringFunc::kSqrtSoftplus;
    cases.push_back(c);
  }
  {
    Case c{"HashRouting", Config(32, 16, 3, 24, 1), 19};
    c.config.hash_routing = true;
    cases.push_back(c);
  }
  cases.push_back({"NoShared", Config(32, 8, 2, 16, 0), 10});
  cases.push_back({"TwoShared", Config(32, 8, 2, 16, 2), 10});
  {
    Case c{"Bf16", Config(64, 8, 2, 40, 1), 15};
    c.config.weight_dtype = WeightDtype::kBf16;
    cases.push_back(c);
  }
  {
    Case c{"Bf16Clamped", Config(64, 8, 2, 40, 1), 15, 20.0f};
    c.config.weight_dtype = WeightDtype::kBf16;
    cases.push_back(c);
  }
  cases.push_back({"Clamped", Config(64, 8, 2, 48, 1), 20, 20.0f});
  cases.push_back({"OddSizes", Config(37, 10, 3, 19, 1), 29});
  cases.push_back({"OddSizesManyTiles", Config(53, 12, 5, 71, 1), 301});
  cases.push_back({"OneToken", Config(64, 16, 4, 128, 1), 1});
  cases.push_back({"ZeroTokens", Config(16, 4, 2, 8, 1), 0});
  // Few tokens over many experts: most experts get none.
  cases.push_back({"SparseExperts", Config(32, 32, 2, 16, 1), 3});
  // Intermediate wider than one fused shared-memory chunk (512 columns).
  cases.push_back({"WideIntermediate", Config(48, 4, 2, 1100, 1), 40});
  {
    Case c{"WideIntermediateBf16", Config(48, 4, 2, 600, 1), 40, 20.0f};
    c.config.weight_dtype = WeightDtype::kBf16;
    cases.push_back(c);
  }
  // Few work items, hidden over several column tiles: the fused kernel
  // splits each item's output columns over CTAs.
  cases.push_back({"ColumnSplits", Config(200, 8, 2, 24, 1), 2});
  // Hidden wider than many column tiles; bench-like shape.
  cases.push_back({"BenchShape", Config(1024, 64, 6, 512, 1), 24});
  cases.push_back({"Batch4096", Config(64, 16, 4, 32, 1), 4096});
  return cases;
}

class CudaMoeEquivalenceTest : public CudaMoeTest,
                               public ::testing::WithParamInterface<Case> {};

TEST_P(CudaMoeEquivalenceTest, FusedAndUnfusedMatchReference) {
  const Case& c = GetParam();
  ASSERT_OK_AND_ASSIGN(Layers l, MakeLayers(c.config, c.scale));
  const std::vector<float> x = RandomInput(c.tokens * c.config.hidden, 11);
  std::vector<int64_t> ids(c.tokens);
  for (int64_t t = 0; t < c.tokens; ++t) ids[t] = 1000 + 37 * t;
  const MoeInput in{c.tokens, x, ids, nullptr};
  if (c.scale > 1.0f) {
    EXPECT_GT(CountClampHits(*l.weights, x, c.tokens), 0)
        << "weights too small to exercise the SwiGLU clamp";
  }

  ASSERT_OK_AND_ASSIGN(MoeOutput ref, l.reference->Forward(in));
  ASSERT_OK_AND_ASSIGN(MoeOutput fused, l.fused->Forward(in));
  ASSERT_OK_AND_ASSIGN(MoeOutput unfused, l.unfused->Forward(in));
  // Routing runs on the host with the CPU router: bitwise identical.
  EXPECT_EQ(fused.routing, ref.routing);
  EXPECT_EQ(unfused.routing, ref.routing);
  ExpectClose(fused.hidden, ref.hidden, "cuda fused vs reference");
  ExpectClose(unfused.hidden, ref.hidden, "cuda unfused vs reference");

  // Deterministic (no atomics), also after scratch reuse.
  ASSERT_OK_AND_ASSIGN(MoeOutput fused2, l.fused->Forward(in));
  EXPECT_EQ(fused2.hidden, fused.hidden);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaMoeEquivalenceTest,
                         ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

TEST_F(CudaMoeTest, AllTokensToOneExpert) {
  for (int64_t k : {1, 2}) {
    const MoeConfig c = Config(40, 8, k, 24, 1);
    ASSERT_OK_AND_ASSIGN(Layers l, MakeLayers(c, 1.0f));
    const int64_t t_count = 150;  // several row tiles of one expert
    const std::vector<float> x = RandomInput(t_count * c.hidden, 3);
    RoutingInfo forced;
    forced.num_tokens = t_count;
    forced.top_k = k;
    for (int64_t t = 0; t < t_count; ++t) {
      forced.experts.push_back(5);
      forced.weights.push_back(0.75f);
      if (k == 2) {
        forced.experts.push_back(static_cast<int32_t>(t % 8));  // may repeat
        forced.weights.push_back(0.25f);
      }
    }
    const MoeInput in{t_count, x, {}, &forced};
    ASSERT_OK_AND_ASSIGN(MoeOutput ref, l.reference->Forward(in));
    ASSERT_OK_AND_ASSIGN(MoeOutput fused, l.fused->Forward(in));
    ASSERT_OK_AND_ASSIGN(MoeOutput unfused, l.unfused->Forward(in));
    EXPECT_EQ(fused.routing, forced);
    EXPECT_EQ(unfused.routing, forced);
    ExpectClose(fused.hidden, ref.hidden, "cuda fused, one expert");
    ExpectClose(unfused.hidden, ref.hidden, "cuda unfused, one expert");
  }
}

TEST_F(CudaMoeTest, ReplaysRoutingRecordedOnTheCpu) {
  MoeConfig c = Config(48, 16, 4, 32, 1);
  c.scoring = ScoringFunc::kSqrtSoftplus;
  ASSERT_OK_AND_ASSIGN(Layers l, MakeLayers(c, 1.0f));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<FusedMoe> cpu,
                       FusedMoe::Create(l.weights, MoeRunOptions{}));
  const int64_t t_count = 40;
  const std::vector<float> x = RandomInput(t_count * c.hidden, 5);
  ASSERT_OK_AND_ASSIGN(MoeOutput recorded,
                       cpu->Forward({t_count, x, {}, nullptr}));
  // The GPU layer computes the same routing itself...
  ASSERT_OK_AND_ASSIGN(MoeOutput gpu,
                       l.fused->Forward({t_count, x, {}, nullptr}));
  EXPECT_EQ(gpu.routing, recorded.routing);
  // ...and replays it exactly on different inputs.
  const std::vector<float> x2 = RandomInput(t_count * c.hidden, 6);
  const MoeInput replay{t_count, x2, {}, &recorded.routing};
  ASSERT_OK_AND_ASSIGN(MoeOutput ref, l.reference->Forward(replay));
  for (MoeLayer* layer : {l.fused.get(), l.unfused.get()}) {
    ASSERT_OK_AND_ASSIGN(MoeOutput out, layer->Forward(replay));
    EXPECT_EQ(out.routing, recorded.routing);
    ExpectClose(out.hidden, ref.hidden, "replayed on the GPU");
  }
}

TEST_F(CudaMoeTest, RejectsBadInput) {
  const MoeConfig c = Config(16, 4, 2, 8, 1);
  ASSERT_OK_AND_ASSIGN(Layers l, MakeLayers(c, 1.0f));
  const std::vector<float> x(3 * 16 - 1, 0.0f);
  EXPECT_THAT(l.fused->Forward({3, x, {}, nullptr}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  RoutingInfo bad{1, 2, {0, 9}, {0.5f, 0.5f}};
  const std::vector<float> one(16, 0.0f);
  EXPECT_THAT(l.fused->Forward({1, one, {}, &bad}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// Runs everywhere: the factories' answers that need no device.
TEST(CudaMoeFactory, ConfigMustMatchTheWeights) {
  const MoeConfig c = Config(16, 4, 2, 8, 1);
  ASSERT_OK_AND_ASSIGN(MoeWeights w, MoeWeights::Random(c, 1));
  MoeConfig other = c;
  other.top_k = 1;
  EXPECT_THAT(MakeCudaFusedMoe(other, w),
              StatusIs(absl::StatusCode::kInvalidArgument));
  other.top_k = 9;  // invalid on its own
  EXPECT_THAT(MakeCudaUnfusedMoe(other, w),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(CudaMoeFactory, WithoutDeviceReportsUnavailable) {
  if (CudaAvailable()) GTEST_SKIP() << "a CUDA device is present";
  std::printf("moe_cuda_test: no CUDA device; GPU tests skip%s\n",
              GpuRequired() ? " -> FAIL (DSEC_REQUIRE_GPU=1)" : "");
  const MoeConfig c = Config(16, 4, 2, 8, 1);
  ASSERT_OK_AND_ASSIGN(MoeWeights w, MoeWeights::Random(c, 1));
  EXPECT_THAT(MakeCudaFusedMoe(c, w), StatusIs(absl::StatusCode::kUnavailable,
                                               HasSubstr("no CUDA device")));
  EXPECT_THAT(MakeCudaUnfusedMoe(c, w), StatusIs(absl::StatusCode::kUnavailable,
                                                 HasSubstr("no CUDA device")));
}

}  // namespace
}  // namespace dsec::moe
