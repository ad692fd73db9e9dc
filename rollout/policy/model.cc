// Layouts (see model.h for the math):
//  - Dense weights are row-major [out x in] fp32, packed once for the moe
//    micro-kernel; the MoE layers are moe::FusedMoe over moe::MoeWeights.
//  - KvCache, bf16 (half the bytes a decode step streams; the kernel
//    widens to fp32), per layer and head: keys as a PackedMatrix with n =
//    capacity and k = head_dim, i.e. panel p = positions [16p, 16p + 16), value
//    (d, j) at [(p * head_dim + d) * 16 + j]; growing only appends panels.
//    Values with n = head_dim and k = capacity: panel q = dims
//    [16q, 16q + 16), value (pos, j) at [(q * capacity + pos) * 16 + j];
//    growing re-lays them out.
//  - Attention of a segment's rows for one head: scores = Q K^T with the
//    micro-kernel (panels of 16 keys), causal softmax per row, zeros past
//    the row's position, then P V with the micro-kernel over positions in
//    order. Only each row's own entries are ever read, so rows do not
//    depend on how many other rows share the call.
#include "rollout/policy/model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "rollout/policy/hash.h"
#include "rollout/policy/tokenizer.h"

namespace dsec::policy {
namespace {

using moe::kNr;
using moe::PackedMatrix;

constexpr char kMagic[8] = {'D', 'S', 'E', 'C', 'P', 'O', 'L', '1'};
constexpr uint32_t kVersion = 1;
constexpr int64_t kGemmRows = 4 * moe::kRowGroup;  // rows per GEMM task
constexpr int64_t kMaxSeqLenLimit = int64_t{1} << 20;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

PackedMatrix Pack(const std::vector<float>& w, int64_t rows, int64_t cols) {
  moe::WeightMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.f32 = w;
  return moe::PackWeight(m);
}

void RmsNorm(const float* x, const float* w, int64_t h, float eps, float* out) {
  float ss = 0;
  for (int64_t c = 0; c < h; ++c) ss = std::fma(x[c], x[c], ss);
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(h) + eps);
  for (int64_t c = 0; c < h; ++c) out[c] = x[c] * r * w[c];
}

// Little-endian byte serialization (the host is little-endian).
class Writer {
 public:
  template <typename T>
  void Put(T v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  template <typename T>
  void PutVec(const std::vector<T>& v) {
    out_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
  std::string& str() { return out_; }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(absl::string_view in) : in_(in) {}
  template <typename T>
  bool Get(T& v) {
    if (in_.size() < sizeof v) return false;
    std::memcpy(&v, in_.data(), sizeof v);
    in_.remove_prefix(sizeof v);
    return true;
  }
  template <typename T>
  bool GetVec(std::vector<T>& v) {  // v sized by the caller
    const size_t n = v.size() * sizeof(T);
    if (in_.size() < n) return false;
    if (n > 0) std::memcpy(v.data(), in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  size_t left() const { return in_.size(); }

 private:
  absl::string_view in_;
};

void PutMatrix(Writer& w, const moe::WeightMatrix& m) {
  if (m.dtype == moe::WeightDtype::kFp32) {
    w.PutVec(m.f32);
  } else {
    w.PutVec(m.bf16);
  }
}

bool GetMatrix(Reader& r, moe::WeightMatrix& m) {
  return m.dtype == moe::WeightDtype::kFp32 ? r.GetVec(m.f32)
                                            : r.GetVec(m.bf16);
}

// row[j] = e^((row[j] - mx) * scale) for j in [0, RoundUp(n, 8)) (the
// caller's buffer has room), relative error < 3e-7. GCC vector extensions
// (SSE on baseline x86-64): rounding by the 1.5 * 2^23 trick, Cody-Waite
// reduction, degree-6 polynomial; arguments clamped at -87. Each element
// sees the same operations wherever it sits, so results depend only on
// its own score.
typedef float V8f __attribute__((vector_size(32)));
typedef int32_t V8i __attribute__((vector_size(32)));

void ExpRow(float* row, int64_t n, float mx, float scale) {
  const V8f lo = V8f{} - 87.0f, magic = V8f{} + 12582912.0f;
  for (int64_t j = 0; j < n; j += 8) {
    V8f x;
    std::memcpy(&x, row + j, sizeof x);
    x = (x - mx) * scale;
    x = x < lo ? lo : x;
    const V8f r = (x * 1.44269504f + magic) - magic;
    const V8f f = (x - r * 0.693145751953125f) - r * 1.428606765330187e-06f;
    V8f p = V8f{} + 1.0f / 720;
    p = p * f + 1.0f / 120;
    p = p * f + 1.0f / 24;
    p = p * f + 1.0f / 6;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    const V8i bits = (__builtin_convertvector(r, V8i) + 127) << 23;
    V8f pow2;
    std::memcpy(&pow2, &bits, sizeof pow2);
    p = p * pow2;
    std::memcpy(row + j, &p, sizeof p);
  }
}

// Max and sum of row[0, n) with 8 independent accumulators (latency, not a
// dependency chain, bounds them); the order depends only on n.
inline float RowMax(const float* row, int64_t n) {
  float m[8];
  std::fill(m, m + 8, -INFINITY);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int u = 0; u < 8; ++u) m[u] = std::max(m[u], row[j + u]);
  }
  for (; j < n; ++j) m[0] = std::max(m[0], row[j]);
  return *std::max_element(m, m + 8);
}

inline float RowSum(const float* row, int64_t n) {
  float a[8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int u = 0; u < 8; ++u) a[u] += row[j + u];
  }
  for (; j < n; ++j) a[0] += row[j];
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

}  // namespace

struct Model::Layer {
  std::vector<float> attn_norm, ffn_norm;  // [H]
  std::vector<float> wqkv;                 // [3A x H]: q, k, v rows
  std::vector<float> wo;                   // [H x A]
  std::shared_ptr<const moe::MoeWeights> moe;
  // Run time.
  PackedMatrix wqkv_p, wo_p;
  std::unique_ptr<moe::FusedMoe> ffn;
};

struct Model::Weights {
  std::vector<float> embed;  // [V x H]
  std::vector<Layer> layers;
  std::vector<float> final_norm;  // [H]
  std::vector<float> lm_head;     // [V x H]
  PackedMatrix lm_head_p;
};

moe::MoeConfig ModelConfig::DefaultMoe(int64_t hidden) {
  moe::MoeConfig m;
  m.hidden = hidden;
  m.num_experts = 16;
  m.top_k = 2;
  m.intermediate = 256;
  m.num_shared_experts = 1;
  m.scoring = moe::ScoringFunc::kSoftmax;
  m.normalize_top_k = true;
  return m;
}

absl::Status ModelConfig::Validate() const {
  auto bad = [](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("model config: ", what));
  };
  const int32_t tokenizer_vocab = Tokenizer().vocab_size();
  if (vocab_size != 0 && vocab_size != tokenizer_vocab) {
    return bad(absl::StrCat("vocab_size ", vocab_size,
                            " must be 0 or the tokenizer's ", tokenizer_vocab));
  }
  if (hidden <= 0) return bad(absl::StrCat("hidden ", hidden, " must be > 0"));
  if (layers <= 0) return bad(absl::StrCat("layers ", layers, " must be > 0"));
  if (heads <= 0) return bad(absl::StrCat("heads ", heads, " must be > 0"));
  if (head_dim <= 0 || head_dim % kNr != 0) {
    return bad(absl::StrCat("head_dim ", head_dim,
                            " must be a positive multiple of 16"));
  }
  if (max_seq_len < 2 || max_seq_len > kMaxSeqLenLimit) {
    return bad(absl::StrCat("max_seq_len ", max_seq_len, " must be in [2, ",
                            kMaxSeqLenLimit, "]"));
  }
  if (!(rms_eps > 0) || !std::isfinite(rms_eps)) {
    return bad("rms_eps must be finite and > 0");
  }
  if (!(rope_theta > 1) || !std::isfinite(rope_theta)) {
    return bad("rope_theta must be finite and > 1");
  }
  if (moe.hidden != hidden) {
    return bad(
        absl::StrCat("moe.hidden ", moe.hidden, " must equal hidden ", hidden));
  }
  const int scoring = static_cast<int>(moe.scoring);
  const int dtype = static_cast<int>(moe.weight_dtype);
  if (scoring < 0 || scoring > 2 || dtype < 0 || dtype > 1) {
    return bad("moe.scoring or moe.weight_dtype out of range");
  }
  absl::Status s = moe::ValidateMoeConfig(moe);
  if (!s.ok()) return bad(s.message());
  return absl::OkStatus();
}

ModelConfig TinyConfig() {
  ModelConfig c;
  c.hidden = 128;
  c.layers = 2;
  c.heads = 4;
  c.head_dim = 32;
  c.max_seq_len = 8192;
  c.moe = ModelConfig::DefaultMoe(c.hidden);
  c.moe.intermediate = 128;
  return c;
}

// ---------------------------------------------------------------- KvCache

KvCache::KvCache(const ModelConfig& config)
    : heads_total_(int64_t{config.layers} * config.heads),
      head_dim_(config.head_dim),
      max_positions_(CeilDiv(config.max_seq_len, kNr) * kNr),
      keys_(heads_total_),
      values_(heads_total_) {}

void KvCache::Truncate(int64_t n) { size_ = std::clamp<int64_t>(n, 0, size_); }

void KvCache::CopyPrefix(const KvCache& from, int64_t n, int64_t reserve) {
  size_ = 0;  // nothing to carry over when Reserve re-lays the values
  Reserve(std::max(n, reserve));
  const int64_t hd = head_dim_;
  // Keys: whole panels, positions [0, n rounded up to kNr) are contiguous
  // (the tail past n is never read before it is overwritten, as after
  // Truncate). Values: n positions of each 16-dim panel.
  const int64_t key_elems = CeilDiv(n, kNr) * kNr * hd;
  for (int64_t i = 0; i < heads_total_ && n > 0; ++i) {
    std::memcpy(keys_[i].bf16.data(), from.keys_[i].bf16.data(),
                key_elems * sizeof(uint16_t));
    for (int64_t q = 0; q < hd / kNr; ++q) {
      std::memcpy(values_[i].bf16.data() + q * capacity_ * kNr,
                  from.values_[i].bf16.data() + q * from.capacity_ * kNr,
                  n * kNr * sizeof(uint16_t));
    }
  }
  size_ = n;
}

int64_t KvCache::Bytes() const {
  return capacity_ * heads_total_ * head_dim_ * 2 * int64_t{sizeof(uint16_t)};
}

void KvCache::Reserve(int64_t positions) {
  if (positions <= capacity_) return;
  int64_t cap = std::max<int64_t>({positions, capacity_ * 2, 64});
  cap = std::min(CeilDiv(cap, kNr) * kNr, std::max(max_positions_, positions));
  cap = CeilDiv(cap, kNr) * kNr;
  const int64_t hd = head_dim_;
  for (int64_t i = 0; i < heads_total_; ++i) {
    PackedMatrix& k = keys_[i];
    k.n = cap;
    k.k = hd;
    k.panels = cap / kNr;
    k.dtype = moe::WeightDtype::kBf16;
    k.bf16.resize(cap * hd);
    PackedMatrix& v = values_[i];
    std::vector<uint16_t> nv(cap * hd, 0);
    for (int64_t q = 0; q < hd / kNr; ++q) {
      if (size_ > 0) {
        std::memcpy(nv.data() + q * cap * kNr,
                    v.bf16.data() + q * capacity_ * kNr,
                    size_ * kNr * sizeof(uint16_t));
      }
    }
    v.dtype = moe::WeightDtype::kBf16;
    v.bf16 = std::move(nv);
    v.n = hd;
    v.k = cap;
    v.panels = hd / kNr;
  }
  capacity_ = cap;
}

// ------------------------------------------------------------------ Model

Model::Model(const ModelConfig& config, std::unique_ptr<Weights> weights)
    : config_(config), weights_(std::move(weights)) {}

Model::~Model() = default;

absl::StatusOr<std::unique_ptr<Model>> Model::Random(
    const ModelConfig& config_in, uint64_t seed, const ModelRunOptions& run) {
  RETURN_IF_ERROR(config_in.Validate());
  ModelConfig config = config_in;
  if (config.vocab_size == 0) config.vocab_size = Tokenizer().vocab_size();
  const int64_t v = config.vocab_size, h = config.hidden,
                a = int64_t{config.heads} * config.head_dim;
  std::mt19937_64 rng(seed);
  auto fill = [&](int64_t n, float bound) {
    std::uniform_real_distribution<float> dist(-bound, bound);
    std::vector<float> out(n);
    for (float& x : out) x = dist(rng);
    return out;
  };
  auto w = std::make_unique<Weights>();
  w->embed = fill(v * h, 1.0f);
  for (int32_t l = 0; l < config.layers; ++l) {
    Layer layer;
    layer.attn_norm.assign(h, 1.0f);
    layer.ffn_norm.assign(h, 1.0f);
    layer.wqkv = fill(3 * a * h, std::sqrt(3.0f / h));
    layer.wo = fill(h * a, std::sqrt(3.0f / a));
    ASSIGN_OR_RETURN(
        moe::MoeWeights mw,
        moe::MoeWeights::Random(config.moe, internal::Mix64(seed + l + 1)));
    layer.moe = std::make_shared<const moe::MoeWeights>(std::move(mw));
    w->layers.push_back(std::move(layer));
  }
  w->final_norm.assign(h, 1.0f);
  w->lm_head = fill(v * h, std::sqrt(3.0f / h));
  return Build(config, std::move(w), run);
}

absl::StatusOr<std::unique_ptr<Model>> Model::Build(
    const ModelConfig& config, std::unique_ptr<Weights> w,
    const ModelRunOptions& run) {
  if (run.threads < 1 || run.threads > 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model run options: threads ", run.threads, " must be in [1, 1024]"));
  }
  const int64_t h = config.hidden, a = int64_t{config.heads} * config.head_dim;
  moe::MoeRunOptions mo;
  mo.num_threads = run.threads;
  for (Layer& layer : w->layers) {
    layer.wqkv_p = Pack(layer.wqkv, 3 * a, h);
    layer.wo_p = Pack(layer.wo, h, a);
    ASSIGN_OR_RETURN(layer.ffn, moe::FusedMoe::Create(layer.moe, mo));
  }
  w->lm_head_p = Pack(w->lm_head, config.vocab_size, h);
  std::unique_ptr<Model> model(new Model(config, std::move(w)));
  ASSIGN_OR_RETURN(model->pool_, moe::ThreadPool::Create(run.threads));
  model->scores_.resize(run.threads);
  const int64_t half = config.head_dim / 2;
  model->rope_cos_.resize(int64_t{config.max_seq_len} * half);
  model->rope_sin_.resize(int64_t{config.max_seq_len} * half);
  for (int64_t i = 0; i < half; ++i) {
    const double freq =
        std::pow(double{config.rope_theta}, -2.0 * i / config.head_dim);
    for (int64_t p = 0; p < config.max_seq_len; ++p) {
      model->rope_cos_[p * half + i] = static_cast<float>(std::cos(p * freq));
      model->rope_sin_[p * half + i] = static_cast<float>(std::sin(p * freq));
    }
  }
  model->fingerprint_ = internal::Hash64(model->Serialize());
  return model;
}

namespace {

void PutConfig(Writer& w, const ModelConfig& c) {
  w.Put<int32_t>(c.vocab_size);
  w.Put<int32_t>(c.hidden);
  w.Put<int32_t>(c.layers);
  w.Put<int32_t>(c.heads);
  w.Put<int32_t>(c.head_dim);
  w.Put<int32_t>(c.max_seq_len);
  w.Put<float>(c.rms_eps);
  w.Put<float>(c.rope_theta);
  w.Put<int64_t>(c.moe.hidden);
  w.Put<int64_t>(c.moe.num_experts);
  w.Put<int64_t>(c.moe.top_k);
  w.Put<int64_t>(c.moe.intermediate);
  w.Put<int64_t>(c.moe.num_shared_experts);
  w.Put<float>(c.moe.routed_scaling_factor);
  w.Put<int32_t>(static_cast<int32_t>(c.moe.scoring));
  w.Put<int32_t>(c.moe.normalize_top_k ? 1 : 0);
  w.Put<int32_t>(c.moe.hash_routing ? 1 : 0);
  w.Put<int32_t>(static_cast<int32_t>(c.moe.weight_dtype));
}

bool GetConfig(Reader& r, ModelConfig& c) {
  int32_t scoring = 0, normalize = 0, hash = 0, dtype = 0;
  const bool ok = r.Get(c.vocab_size) && r.Get(c.hidden) && r.Get(c.layers) &&
                  r.Get(c.heads) && r.Get(c.head_dim) && r.Get(c.max_seq_len) &&
                  r.Get(c.rms_eps) && r.Get(c.rope_theta) &&
                  r.Get(c.moe.hidden) && r.Get(c.moe.num_experts) &&
                  r.Get(c.moe.top_k) && r.Get(c.moe.intermediate) &&
                  r.Get(c.moe.num_shared_experts) &&
                  r.Get(c.moe.routed_scaling_factor) && r.Get(scoring) &&
                  r.Get(normalize) && r.Get(hash) && r.Get(dtype);
  c.moe.scoring = static_cast<moe::ScoringFunc>(scoring);
  c.moe.normalize_top_k = normalize != 0;
  c.moe.hash_routing = hash != 0;
  c.moe.weight_dtype = static_cast<moe::WeightDtype>(dtype);
  return ok;
}

// Bytes of the tensors of a valid config, in the order Serialize writes.
int64_t PayloadBytes(const ModelConfig& c) {
  const int64_t v = c.vocab_size, h = c.hidden,
                a = int64_t{c.heads} * c.head_dim, e = c.moe.num_experts,
                s = c.moe.num_shared_experts, i = c.moe.intermediate;
  const int64_t wbytes = c.moe.weight_dtype == moe::WeightDtype::kFp32 ? 4 : 2;
  const int64_t per_layer =
      4 * (2 * h + 3 * a * h + h * a + e * h) + wbytes * (e + s) * 3 * i * h;
  return 4 * (2 * v * h + h) + c.layers * per_layer;
}

}  // namespace

std::string Model::Serialize() const {
  Writer w;
  w.str().append(kMagic, sizeof kMagic);
  w.Put<uint32_t>(kVersion);
  PutConfig(w, config_);
  w.Put<uint64_t>(PayloadBytes(config_));
  w.PutVec(weights_->embed);
  for (const Layer& l : weights_->layers) {
    w.PutVec(l.attn_norm);
    w.PutVec(l.wqkv);
    w.PutVec(l.wo);
    w.PutVec(l.ffn_norm);
    w.PutVec(l.moe->router());
    for (int64_t e = 0; e < config_.moe.num_experts; ++e) {
      PutMatrix(w, l.moe->expert(e).w1);
      PutMatrix(w, l.moe->expert(e).w2);
    }
    for (int64_t s = 0; s < config_.moe.num_shared_experts; ++s) {
      PutMatrix(w, l.moe->shared_expert(s).w1);
      PutMatrix(w, l.moe->shared_expert(s).w2);
    }
  }
  w.PutVec(weights_->final_norm);
  w.PutVec(weights_->lm_head);
  w.Put<uint64_t>(internal::Hash64(w.str()));
  return std::move(w.str());
}

absl::Status Model::Save(const std::string& path) const {
  const std::string data = Serialize();
  const std::string tmp = absl::StrCat(path, ".tmp");
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    return absl::InternalError(absl::StrCat("save model: cannot open ", tmp));
  }
  const bool wrote = std::fwrite(data.data(), 1, data.size(), f) == data.size();
  const bool closed = std::fclose(f) == 0;
  if (!wrote || !closed || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("save model: writing ", path, " failed"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& path,
                                                   const ModelRunOptions& run) {
  std::string data;
  {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("load model: cannot open ", path));
    }
    char buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) data.append(buf, n);
    const bool err = std::ferror(f) != 0;
    std::fclose(f);
    if (err) {
      return absl::DataLossError(
          absl::StrCat("load model: read ", path, " failed"));
    }
  }
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("load model ", path, ": ", why));
  };
  auto loss = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("load model ", path, ": ", why));
  };
  if (data.size() < sizeof kMagic ||
      std::memcmp(data.data(), kMagic, sizeof kMagic) != 0) {
    return invalid("not a policy model file (bad magic)");
  }
  Reader r(absl::string_view(data).substr(sizeof kMagic));
  uint32_t version = 0;
  ModelConfig config;
  uint64_t payload = 0;
  if (!r.Get(version)) return loss("truncated header");
  if (version != kVersion) {
    return invalid(absl::StrCat("unsupported version ", version));
  }
  if (!GetConfig(r, config) || !r.Get(payload)) {
    return loss("truncated header");
  }
  if (r.left() < 8 || payload != r.left() - 8) {
    return loss(absl::StrCat(
        "size mismatch: header says ", payload, " payload bytes, file has ",
        r.left() < 8 ? 0 : r.left() - 8, " (truncated or corrupt)"));
  }
  uint64_t stored = 0;
  std::memcpy(&stored, data.data() + data.size() - 8, 8);
  if (stored !=
      internal::Hash64(absl::string_view(data).substr(0, data.size() - 8))) {
    return loss("checksum mismatch (corrupt file)");
  }
  if (absl::Status s = config.Validate(); !s.ok()) return invalid(s.message());
  if (config.vocab_size == 0) return invalid("vocab_size 0 in a saved model");
  if (static_cast<int64_t>(payload) != PayloadBytes(config)) {
    return loss("payload size does not match the config");
  }
  const int64_t v = config.vocab_size, h = config.hidden,
                a = int64_t{config.heads} * config.head_dim;
  auto w = std::make_unique<Weights>();
  w->embed.resize(v * h);
  bool ok = r.GetVec(w->embed);
  for (int32_t l = 0; ok && l < config.layers; ++l) {
    Layer layer;
    layer.attn_norm.resize(h);
    layer.wqkv.resize(3 * a * h);
    layer.wo.resize(h * a);
    layer.ffn_norm.resize(h);
    ASSIGN_OR_RETURN(moe::MoeWeights mw, moe::MoeWeights::Zeros(config.moe));
    ok = r.GetVec(layer.attn_norm) && r.GetVec(layer.wqkv) &&
         r.GetVec(layer.wo) && r.GetVec(layer.ffn_norm) &&
         r.GetVec(mw.mutable_router());
    for (int64_t e = 0; ok && e < config.moe.num_experts; ++e) {
      ok = GetMatrix(r, mw.mutable_expert(e).w1) &&
           GetMatrix(r, mw.mutable_expert(e).w2);
    }
    for (int64_t s = 0; ok && s < config.moe.num_shared_experts; ++s) {
      ok = GetMatrix(r, mw.mutable_shared_expert(s).w1) &&
           GetMatrix(r, mw.mutable_shared_expert(s).w2);
    }
    layer.moe = std::make_shared<const moe::MoeWeights>(std::move(mw));
    w->layers.push_back(std::move(layer));
  }
  w->final_norm.resize(h);
  w->lm_head.resize(v * h);
  ok = ok && r.GetVec(w->final_norm) && r.GetVec(w->lm_head) && r.left() == 8;
  if (!ok) return loss("tensor data does not match the header");
  return Build(config, std::move(w), run);
}

// ---------------------------------------------------------------- Forward

void Model::Gemm(int64_t m, const float* a, int64_t lda, const PackedMatrix& b,
                 float* c, int64_t ldc, bool accumulate) {
  const int64_t row_blocks = CeilDiv(m, kGemmRows);
  const int64_t tasks = row_blocks * b.panels;
  auto run = [&](int64_t t, int) {
    const int64_t p = t % b.panels, r0 = (t / b.panels) * kGemmRows;
    const int64_t rows = std::min(kGemmRows, m - r0);
    const int64_t cols = std::min<int64_t>(kNr, b.n - p * kNr);
    moe::GemmPanel(rows, a + r0 * lda, lda, b, p, 0, b.k,
                   [&](int64_t row, int mr, const float* tile) {
                     for (int i = 0; i < mr; ++i) {
                       float* dst = c + (r0 + row + i) * ldc + p * kNr;
                       const float* src = tile + i * kNr;
                       if (accumulate) {
                         for (int64_t j = 0; j < cols; ++j) dst[j] += src[j];
                       } else {
                         for (int64_t j = 0; j < cols; ++j) dst[j] = src[j];
                       }
                     }
                   });
  };
  if (pool_->num_threads() == 1 || tasks == 1) {
    for (int64_t t = 0; t < tasks; ++t) run(t, 0);
  } else {
    pool_->ParallelFor(tasks, run);
  }
}

void Model::AttentionHead(const ForwardSegment& seg, int64_t layer,
                          int64_t head, int64_t row0, const float* qkv,
                          float* out, std::vector<float>& scratch) {
  KvCache& kv = *seg.cache;
  const int64_t hd = config_.head_dim, a = int64_t{config_.heads} * hd;
  const int64_t ld = 3 * a, n = seg.tokens.size(), pos0 = kv.size_;
  const int64_t len = pos0 + n;
  PackedMatrix& keys = kv.keys_[layer * config_.heads + head];
  PackedMatrix& values = kv.values_[layer * config_.heads + head];
  const int64_t cap = kv.capacity_;

  // Append this head's keys and values.
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pos = pos0 + i;
    const float* k = qkv + (row0 + i) * ld + a + head * hd;
    const float* v = k + a;
    uint16_t* kp = keys.bf16.data() + (pos / kNr) * hd * kNr + pos % kNr;
    for (int64_t d = 0; d < hd; ++d) kp[d * kNr] = moe::FloatToBf16(k[d]);
    for (int64_t d = 0; d < hd; ++d) {
      values.bf16[((d / kNr) * cap + pos) * kNr + d % kNr] =
          moe::FloatToBf16(v[d]);
    }
  }

  // Scores: row i needs panels up to position pos0 + i.
  const int64_t lds = moe::PaddedStride(len);
  scratch.resize(n * lds);
  float* s = scratch.data();
  const float* q = qkv + row0 * ld + head * hd;
  const int64_t panels = CeilDiv(len, kNr);
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t first = std::max<int64_t>(0, p * kNr - pos0);
    moe::GemmPanel(n - first, q + first * ld, ld, keys, p, 0, hd,
                   [&](int64_t row, int mr, const float* tile) {
                     for (int i = 0; i < mr; ++i) {
                       std::memcpy(s + (first + row + i) * lds + p * kNr,
                                   tile + i * kNr, kNr * sizeof(float));
                     }
                   });
  }
  // Causal softmax; exact zeros past each row's position. Every step
  // depends only on the row's own scores and position.
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int64_t i = 0; i < n; ++i) {
    float* row = s + i * lds;
    const int64_t count = pos0 + i + 1;
    const float mx = RowMax(row, count);
    ExpRow(row, count, mx, scale);  // up to RoundUp(count, 8) <= lds
    std::fill(row + count, row + len, 0.0f);
    const float inv = 1.0f / RowSum(row, count);
    for (int64_t j = 0; j < count; ++j) row[j] *= inv;
  }
  // Out = P V over positions [0, len).
  for (int64_t p = 0; p < hd / kNr; ++p) {
    moe::GemmPanel(n, s, lds, values, p, 0, len,
                   [&](int64_t row, int mr, const float* tile) {
                     for (int i = 0; i < mr; ++i) {
                       std::memcpy(
                           out + (row0 + row + i) * a + head * hd + p * kNr,
                           tile + i * kNr, kNr * sizeof(float));
                     }
                   });
  }
}

absl::StatusOr<ForwardResult> Model::Forward(
    absl::Span<const ForwardSegment> segments,
    absl::Span<const moe::RoutingInfo> forced_routing) {
  const int64_t vocab = config_.vocab_size, h = config_.hidden,
                hd = config_.head_dim, heads = config_.heads, a = heads * hd;
  int64_t t_count = 0;
  std::set<const KvCache*> seen;
  for (size_t i = 0; i < segments.size(); ++i) {
    const ForwardSegment& seg = segments[i];
    if (seg.cache == nullptr ||
        seg.cache->heads_total_ != int64_t{config_.layers} * config_.heads ||
        seg.cache->head_dim_ != hd) {
      return absl::InvalidArgumentError(
          absl::StrCat("forward: segment ", i,
                       " has no cache or one made for another config"));
    }
    if (!seen.insert(seg.cache).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("forward: segment ", i, " reuses a cache"));
    }
    if (seg.tokens.empty() ||
        seg.cache->size() + static_cast<int64_t>(seg.tokens.size()) >
            config_.max_seq_len) {
      return absl::InvalidArgumentError(absl::StrCat(
          "forward: segment ", i, " has ", seg.tokens.size(), " tokens after ",
          seg.cache->size(), "; need 1 to max_seq_len ", config_.max_seq_len,
          " in all"));
    }
    for (int32_t t : seg.tokens) {
      if (t < 0 || t >= vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("forward: token id ", t, " out of range"));
      }
    }
    t_count += seg.tokens.size();
  }
  if (!forced_routing.empty() &&
      forced_routing.size() != static_cast<size_t>(config_.layers)) {
    return absl::InvalidArgumentError(
        absl::StrCat("forward: forced routing has ", forced_routing.size(),
                     " layers, the model ", config_.layers));
  }
  for (size_t l = 0; l < forced_routing.size(); ++l) {
    if (absl::Status s =
            moe::ValidateRouting(config_.moe, t_count, forced_routing[l]);
        !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "forward: forced routing of layer ", l, ": ", s.message()));
    }
  }

  std::lock_guard<std::mutex> lock(mu_);
  ForwardResult result;
  std::vector<int64_t> row0(segments.size());
  std::vector<int64_t> token_ids(t_count);
  std::vector<int64_t> positions(t_count);
  std::vector<float> x(t_count * h);
  int64_t rows = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    const ForwardSegment& seg = segments[i];
    row0[i] = rows;
    seg.cache->Reserve(seg.cache->size() + seg.tokens.size());
    for (size_t j = 0; j < seg.tokens.size(); ++j, ++rows) {
      token_ids[rows] = seg.tokens[j];
      positions[rows] = seg.cache->size() + j;
      std::memcpy(x.data() + rows * h,
                  weights_->embed.data() + int64_t{seg.tokens[j]} * h,
                  h * sizeof(float));
    }
  }

  std::vector<float> hn(t_count * h), qkv(t_count * 3 * a), attn(t_count * a);
  const int64_t half = hd / 2;
  for (int64_t l = 0; l < config_.layers; ++l) {
    Layer& layer = weights_->layers[l];
    for (int64_t r = 0; r < t_count; ++r) {
      RmsNorm(x.data() + r * h, layer.attn_norm.data(), h, config_.rms_eps,
              hn.data() + r * h);
    }
    Gemm(t_count, hn.data(), h, layer.wqkv_p, qkv.data(), 3 * a, false);
    for (int64_t r = 0; r < t_count; ++r) {  // RoPE on q and k
      const float* cs = rope_cos_.data() + positions[r] * half;
      const float* sn = rope_sin_.data() + positions[r] * half;
      for (int64_t hh = 0; hh < 2 * heads; ++hh) {
        float* v = qkv.data() + r * 3 * a + hh * hd;
        for (int64_t i = 0; i < half; ++i) {
          const float x0 = v[i], x1 = v[i + half];
          v[i] = x0 * cs[i] - x1 * sn[i];
          v[i + half] = x0 * sn[i] + x1 * cs[i];
        }
      }
    }
    auto head_task = [&](int64_t t, int worker) {
      const int64_t si = t / heads;
      AttentionHead(segments[si], l, t % heads, row0[si], qkv.data(),
                    attn.data(), scores_[worker]);
    };
    const int64_t tasks = static_cast<int64_t>(segments.size()) * heads;
    if (pool_->num_threads() == 1) {
      for (int64_t t = 0; t < tasks; ++t) head_task(t, 0);
    } else {
      pool_->ParallelFor(tasks, head_task);
    }
    Gemm(t_count, attn.data(), a, layer.wo_p, x.data(), h, true);
    for (int64_t r = 0; r < t_count; ++r) {
      RmsNorm(x.data() + r * h, layer.ffn_norm.data(), h, config_.rms_eps,
              hn.data() + r * h);
    }
    moe::MoeInput in;
    in.num_tokens = t_count;
    in.hidden = hn;
    in.token_ids = token_ids;
    if (!forced_routing.empty()) in.forced_routing = &forced_routing[l];
    absl::StatusOr<moe::MoeOutput> out = layer.ffn->Forward(in);
    if (!out.ok()) {  // inputs were checked above; caches keep their size
      return absl::Status(
          out.status().code(),
          absl::StrCat("forward: layer ", l, " moe: ", out.status().message()));
    }
    for (int64_t i = 0; i < t_count * h; ++i) x[i] += out->hidden[i];
    result.routing.push_back(std::move(out->routing));
  }
  for (const ForwardSegment& seg : segments)
    seg.cache->size_ += seg.tokens.size();

  // LM head over the rows that want logits.
  std::vector<int64_t> logit_rows;
  for (size_t i = 0; i < segments.size(); ++i) {
    const ForwardSegment& seg = segments[i];
    const int64_t n = seg.tokens.size();
    if (seg.logits == ForwardSegment::Logits::kNone) {
      result.first_logits_row.push_back(-1);
      continue;
    }
    result.first_logits_row.push_back(logit_rows.size());
    const int64_t from = seg.logits == ForwardSegment::Logits::kAll ? 0 : n - 1;
    for (int64_t j = from; j < n; ++j) logit_rows.push_back(row0[i] + j);
  }
  const int64_t m = logit_rows.size();
  for (int64_t i = 0; i < m; ++i) {
    RmsNorm(x.data() + logit_rows[i] * h, weights_->final_norm.data(), h,
            config_.rms_eps, hn.data() + i * h);
  }
  result.logits.resize(m * vocab);
  if (m > 0) {
    Gemm(m, hn.data(), h, weights_->lm_head_p, result.logits.data(), vocab,
         false);
  }
  return result;
}

}  // namespace dsec::policy
