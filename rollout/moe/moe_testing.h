// Helpers shared by the MoE layer tests (CPU and CUDA): random inputs, the
// tolerance check of moe_layer.h, small configs, and a clamp-hit counter.
// For tests only (uses GoogleTest).
#ifndef DSEC_ROLLOUT_MOE_MOE_TESTING_H_
#define DSEC_ROLLOUT_MOE_MOE_TESTING_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "rollout/moe/moe_config.h"
#include "rollout/moe/moe_layer.h"
#include "rollout/moe/moe_weights.h"

namespace dsec::moe::test_util {

inline std::vector<float> RandomInput(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Per element |got - ref| <= kMoeTolerance * (|ref| + rms(ref)).
inline void ExpectClose(const std::vector<float>& got,
                        const std::vector<float>& ref,
                        const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double sq = 0;
  for (float r : ref) sq += double{r} * r;
  const double rms = ref.empty() ? 0 : std::sqrt(sq / ref.size());
  int bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double tol = kMoeTolerance * (std::fabs(ref[i]) + rms);
    if (!(std::fabs(double{got[i]} - ref[i]) <= tol)) {
      if (++bad <= 3) {
        ADD_FAILURE() << what << ": element " << i << " got " << got[i]
                      << " want " << ref[i] << " (tol " << tol << ")";
      }
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << ref.size()
                    << " elements out of tolerance";
}

inline MoeConfig Config(int64_t h, int64_t e, int64_t k, int64_t i, int64_t s) {
  MoeConfig c;
  c.hidden = h;
  c.num_experts = e;
  c.top_k = k;
  c.intermediate = i;
  c.num_shared_experts = s;
  c.routed_scaling_factor = 1.5f;
  return c;
}

// Counts pre-activation values past the clamp for the first tokens and all
// routed experts (computed straight from the weights).
inline int CountClampHits(const MoeWeights& w, const std::vector<float>& x,
                          int64_t tokens) {
  const MoeConfig& c = w.config();
  int hits = 0;
  for (int64_t t = 0; t < std::min<int64_t>(tokens, 4); ++t) {
    for (int64_t e = 0; e < c.num_experts; ++e) {
      for (int64_t r = 0; r < 2 * c.intermediate; ++r) {
        double acc = 0;
        for (int64_t col = 0; col < c.hidden; ++col) {
          acc += w.expert(e).w1.At(r, col) * x[t * c.hidden + col];
        }
        if (std::fabs(acc) > kSwigluLimit) ++hits;
      }
    }
  }
  return hits;
}

}  // namespace dsec::moe::test_util

#endif  // DSEC_ROLLOUT_MOE_MOE_TESTING_H_
