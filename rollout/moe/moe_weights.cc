#include "rollout/moe/moe_weights.h"

#include <cmath>
#include <cstdio>
#include <memory>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace dsec::moe {
namespace {

constexpr char kMagic[8] = {'D', 'S', 'E', 'C', 'M', 'O', 'E', '1'};

WeightMatrix MakeMatrix(int64_t rows, int64_t cols, WeightDtype dtype) {
  WeightMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.dtype = dtype;
  if (dtype == WeightDtype::kFp32) {
    m.f32.assign(rows * cols, 0.0f);
  } else {
    m.bf16.assign(rows * cols, 0);
  }
  return m;
}

void FillRandom(std::mt19937_64& rng, float bound, WeightMatrix& m) {
  std::uniform_real_distribution<float> dist(-bound, bound);
  const int64_t n = m.rows * m.cols;
  for (int64_t i = 0; i < n; ++i) {
    const float v = dist(rng);
    if (m.dtype == WeightDtype::kFp32) {
      m.f32[i] = v;
    } else {
      m.bf16[i] = FloatToBf16(v);
    }
  }
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

// Fixed-width on-disk header.
struct Header {
  char magic[8];
  int64_t hidden, num_experts, top_k, intermediate, num_shared_experts;
  float routed_scaling_factor;
  int32_t scoring, normalize_top_k, hash_routing, weight_dtype;
};

absl::Status WriteAll(std::FILE* f, const void* p, size_t n,
                      const std::string& path) {
  if (n != 0 && std::fwrite(p, 1, n, f) != n) {
    return absl::InternalError(absl::StrCat("write ", path, " failed"));
  }
  return absl::OkStatus();
}

absl::Status ReadAll(std::FILE* f, void* p, size_t n, const std::string& path) {
  if (n != 0 && std::fread(p, 1, n, f) != n) {
    return absl::DataLossError(absl::StrCat(path, ": truncated moe weights"));
  }
  return absl::OkStatus();
}

absl::Status WriteMatrix(std::FILE* f, const WeightMatrix& m,
                         const std::string& path) {
  if (m.dtype == WeightDtype::kFp32) {
    return WriteAll(f, m.f32.data(), m.f32.size() * 4, path);
  }
  return WriteAll(f, m.bf16.data(), m.bf16.size() * 2, path);
}

absl::Status ReadMatrix(std::FILE* f, WeightMatrix& m,
                        const std::string& path) {
  if (m.dtype == WeightDtype::kFp32) {
    return ReadAll(f, m.f32.data(), m.f32.size() * 4, path);
  }
  return ReadAll(f, m.bf16.data(), m.bf16.size() * 2, path);
}

}  // namespace

uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if (std::isnan(f)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  const uint32_t rounding = 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

absl::StatusOr<MoeWeights> MoeWeights::Zeros(const MoeConfig& config) {
  RETURN_IF_ERROR(ValidateMoeConfig(config));
  MoeWeights w(config);
  const int64_t h = config.hidden, i = config.intermediate;
  w.router_.assign(config.num_experts * h, 0.0f);
  auto make_expert = [&] {
    return ExpertWeights{MakeMatrix(2 * i, h, config.weight_dtype),
                         MakeMatrix(h, i, config.weight_dtype)};
  };
  for (int64_t e = 0; e < config.num_experts; ++e) {
    w.experts_.push_back(make_expert());
  }
  for (int64_t s = 0; s < config.num_shared_experts; ++s) {
    w.shared_.push_back(make_expert());
  }
  return w;
}

absl::StatusOr<MoeWeights> MoeWeights::Random(const MoeConfig& config,
                                              uint64_t seed, float scale) {
  if (!std::isfinite(scale) || scale <= 0) {
    return absl::InvalidArgumentError("moe weights: scale must be > 0");
  }
  ASSIGN_OR_RETURN(MoeWeights w, Zeros(config));
  std::mt19937_64 rng(seed);
  const float h_bound = scale / std::sqrt(static_cast<float>(config.hidden));
  const float i_bound =
      scale / std::sqrt(static_cast<float>(config.intermediate));
  {
    std::uniform_real_distribution<float> dist(-h_bound, h_bound);
    for (float& v : w.router_) v = dist(rng);
  }
  auto fill = [&](ExpertWeights& ew) {
    FillRandom(rng, h_bound, ew.w1);
    FillRandom(rng, i_bound, ew.w2);
  };
  for (ExpertWeights& ew : w.experts_) fill(ew);
  for (ExpertWeights& ew : w.shared_) fill(ew);
  return w;
}

int64_t MoeWeights::ExpertBytes() const {
  return experts_.empty()
             ? 0
             : experts_[0].w1.StorageBytes() + experts_[0].w2.StorageBytes();
}

absl::Status MoeWeights::Save(const std::string& path) const {
  File f(std::fopen(path.c_str(), "wb"));
  if (f == nullptr) {
    return absl::InternalError(absl::StrCat("open ", path, " for write"));
  }
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.hidden = config_.hidden;
  h.num_experts = config_.num_experts;
  h.top_k = config_.top_k;
  h.intermediate = config_.intermediate;
  h.num_shared_experts = config_.num_shared_experts;
  h.routed_scaling_factor = config_.routed_scaling_factor;
  h.scoring = static_cast<int32_t>(config_.scoring);
  h.normalize_top_k = config_.normalize_top_k;
  h.hash_routing = config_.hash_routing;
  h.weight_dtype = static_cast<int32_t>(config_.weight_dtype);
  RETURN_IF_ERROR(WriteAll(f.get(), &h, sizeof h, path));
  RETURN_IF_ERROR(WriteAll(f.get(), router_.data(), router_.size() * 4, path));
  for (const auto* list : {&experts_, &shared_}) {
    for (const ExpertWeights& ew : *list) {
      RETURN_IF_ERROR(WriteMatrix(f.get(), ew.w1, path));
      RETURN_IF_ERROR(WriteMatrix(f.get(), ew.w2, path));
    }
  }
  if (std::fflush(f.get()) != 0) {
    return absl::InternalError(absl::StrCat("flush ", path));
  }
  return absl::OkStatus();
}

absl::StatusOr<MoeWeights> MoeWeights::Load(const std::string& path) {
  File f(std::fopen(path.c_str(), "rb"));
  if (f == nullptr) {
    return absl::NotFoundError(absl::StrCat("open ", path));
  }
  Header h{};
  RETURN_IF_ERROR(ReadAll(f.get(), &h, sizeof h, path));
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0) {
    return absl::DataLossError(absl::StrCat(path, ": not a moe weight file"));
  }
  if (h.scoring < 0 || h.scoring > 2 || h.weight_dtype < 0 ||
      h.weight_dtype > 1) {
    return absl::DataLossError(absl::StrCat(path, ": bad enum in header"));
  }
  MoeConfig c;
  c.hidden = h.hidden;
  c.num_experts = h.num_experts;
  c.top_k = h.top_k;
  c.intermediate = h.intermediate;
  c.num_shared_experts = h.num_shared_experts;
  c.routed_scaling_factor = h.routed_scaling_factor;
  c.scoring = static_cast<ScoringFunc>(h.scoring);
  c.normalize_top_k = h.normalize_top_k != 0;
  c.hash_routing = h.hash_routing != 0;
  c.weight_dtype = static_cast<WeightDtype>(h.weight_dtype);
  if (absl::Status s = ValidateMoeConfig(c); !s.ok()) {
    return absl::DataLossError(absl::StrCat(path, ": ", s.message()));
  }
  // Refuse headers whose sizes the file cannot hold before allocating.
  if (std::fseek(f.get(), 0, SEEK_END) != 0) {
    return absl::InternalError(absl::StrCat("seek ", path));
  }
  const long file_size = std::ftell(f.get());
  const int64_t per = c.weight_dtype == WeightDtype::kFp32 ? 4 : 2;
  const int64_t want = static_cast<int64_t>(sizeof(Header)) +
                       c.num_experts * c.hidden * 4 +
                       (c.num_experts + c.num_shared_experts) * 3 *
                           c.intermediate * c.hidden * per;
  if (file_size != want) {
    return absl::DataLossError(absl::StrCat(path, ": size ", file_size,
                                            " bytes, header implies ", want));
  }
  std::fseek(f.get(), sizeof(Header), SEEK_SET);
  ASSIGN_OR_RETURN(MoeWeights w, Zeros(c));
  RETURN_IF_ERROR(
      ReadAll(f.get(), w.router_.data(), w.router_.size() * 4, path));
  for (auto* list : {&w.experts_, &w.shared_}) {
    for (ExpertWeights& ew : *list) {
      RETURN_IF_ERROR(ReadMatrix(f.get(), ew.w1, path));
      RETURN_IF_ERROR(ReadMatrix(f.get(), ew.w2, path));
    }
  }
  return w;
}

}  // namespace dsec::moe
