// Parameters of one MoE layer: router, routed experts and shared experts,
// stored row-major in the config's weight dtype (the router is always fp32).
//
//   router          [E x H]
//   expert e  w1    [2I x H]   rows [0, I) gate, rows [I, 2I) up ("linear")
//             w2    [H x I]
//   shared s  w1/w2 same shapes as a routed expert
//
// Immutable after creation; safe to share (e.g. via shared_ptr<const>)
// between threads and between layer implementations.
#ifndef DSEC_ROLLOUT_MOE_MOE_WEIGHTS_H_
#define DSEC_ROLLOUT_MOE_MOE_WEIGHTS_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rollout/moe/moe_config.h"

namespace dsec::moe {

// bf16 <-> fp32. To-bf16 rounds to nearest even; NaN stays NaN.
inline float Bf16ToFloat(uint16_t v) {
  uint32_t bits = uint32_t{v} << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
uint16_t FloatToBf16(float f);

// A row-major matrix in fp32 or bf16 (exactly one of the vectors is used).
struct WeightMatrix {
  int64_t rows = 0, cols = 0;
  WeightDtype dtype = WeightDtype::kFp32;
  std::vector<float> f32;
  std::vector<uint16_t> bf16;

  float At(int64_t r, int64_t c) const {
    const int64_t i = r * cols + c;
    return dtype == WeightDtype::kFp32 ? f32[i] : Bf16ToFloat(bf16[i]);
  }
  int64_t StorageBytes() const {
    return rows * cols * (dtype == WeightDtype::kFp32 ? 4 : 2);
  }
};

struct ExpertWeights {
  WeightMatrix w1;  // [2I x H]
  WeightMatrix w2;  // [H x I]
};

class MoeWeights {
 public:
  // Uniform random weights from `seed`, each matrix in
  // [-scale/sqrt(fan_in), scale/sqrt(fan_in)]. With inputs in [-1, 1],
  // scale ~20 makes the SwiGLU clamp fire regularly.
  static absl::StatusOr<MoeWeights> Random(const MoeConfig& config,
                                           uint64_t seed, float scale = 1.0f);
  // Zero weights of the right shapes (callers fill them in).
  static absl::StatusOr<MoeWeights> Zeros(const MoeConfig& config);

  // Simple binary file: magic, config fields, then the matrices in the order
  // above, little-endian. Load validates every size against the header.
  absl::Status Save(const std::string& path) const;
  static absl::StatusOr<MoeWeights> Load(const std::string& path);

  const MoeConfig& config() const { return config_; }
  const std::vector<float>& router() const { return router_; }
  std::vector<float>& mutable_router() { return router_; }
  const ExpertWeights& expert(int64_t e) const { return experts_[e]; }
  ExpertWeights& mutable_expert(int64_t e) { return experts_[e]; }
  const ExpertWeights& shared_expert(int64_t s) const { return shared_[s]; }
  ExpertWeights& mutable_shared_expert(int64_t s) { return shared_[s]; }

  // Bytes of one expert's w1 + w2 as stored.
  int64_t ExpertBytes() const;

 private:
  explicit MoeWeights(const MoeConfig& config) : config_(config) {}

  MoeConfig config_;
  std::vector<float> router_;
  std::vector<ExpertWeights> experts_;
  std::vector<ExpertWeights> shared_;
};

}  // namespace dsec::moe

#endif  // DSEC_ROLLOUT_MOE_MOE_WEIGHTS_H_
