// The rollout policy model: a small decoder-only MoE transformer over the
// byte-level vocabulary of tokenizer.h.
//
//   x = embed[token]
//   per layer:  x += Wo * Attention(RoPE(Wq h), RoPE(Wk h), Wv h),
//                    h = RMSNorm(x) * attn_norm          (causal, KV cache)
//               x += MoE(RMSNorm(x) * ffn_norm)          (moe::FusedMoe)
//   logits = lm_head * (RMSNorm(x) * final_norm)
//
// Forward runs a batch of segments (each a run of new tokens appended to
// its own KvCache) as one pass: the projections, the MoE and the LM head
// see all rows together; attention runs per segment and head.
//
// Invariant (the generator relies on it): every value computed for a row
// depends only on that row's token, position and its sequence's earlier
// K/V, never on the other rows of the batch or on how a sequence was split
// into forward calls: matmuls use the moe micro-kernel (each output is an
// fma chain in k order), attention reads scores and values in position
// order, and masked positions contribute exact zeros. So batched, chunked,
// cached and one-by-one decoding give bitwise equal logits.
//
// Thread-safety: Model is immutable apart from scratch; Forward calls are
// serialized internally. A KvCache belongs to one sequence and is not
// thread-safe.
#ifndef DSEC_ROLLOUT_POLICY_MODEL_H_
#define DSEC_ROLLOUT_POLICY_MODEL_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "rollout/moe/fused_moe.h"
#include "rollout/moe/gemm_kernel.h"
#include "rollout/moe/moe_config.h"
#include "rollout/moe/moe_weights.h"
#include "rollout/moe/thread_pool.h"

namespace dsec::policy {

struct ModelConfig {
  int32_t vocab_size = 0;  // 0: Tokenizer().vocab_size(); else must equal it
  int32_t hidden = 256;
  int32_t layers = 2;
  int32_t heads = 4;
  int32_t head_dim = 64;  // multiple of 16
  int32_t max_seq_len = 8192;
  moe::MoeConfig moe = DefaultMoe(256);  // moe.hidden must equal hidden
  float rms_eps = 1e-6f;
  float rope_theta = 10000.0f;

  // INVALID_ARGUMENT naming the first bad field.
  absl::Status Validate() const;

  // 16 experts, top 2, intermediate 256, 1 shared, softmax.
  static moe::MoeConfig DefaultMoe(int64_t hidden);
};

// The small default the rollout worker runs: hidden 128, 2 layers, 4 heads
// x head_dim 32, max_seq_len 8192; MoE 16 experts, top 2, intermediate 128,
// 1 shared expert. About 0.4 s to prefill 3,000 tokens on one core.
ModelConfig TinyConfig();

struct ModelRunOptions {
  int threads = 1;  // workers for the dense GEMMs, attention and the MoE
};

class Model;

// The keys and values of one sequence's positions [0, size()), per layer
// and head, stored as bf16 in the packed panel layouts the GEMM kernel
// reads (model.cc). Every path reads K/V back from the cache, so cached and
// recomputed attention agree exactly.
class KvCache {
 public:
  explicit KvCache(const ModelConfig& config);

  int64_t size() const { return size_; }
  // Forgets positions [n, size()). REQUIRES: 0 <= n <= size().
  void Truncate(int64_t n);
  // Replaces the contents with a copy of positions [0, n) of `from` (the
  // two stay independent), with room for at least `reserve` positions.
  // K/V rows depend only on the tokens before them (see Model), so this
  // equals recomputing them when both sequences start with the same n
  // tokens. REQUIRES: `from` made for the same config, 0 <= n <=
  // from.size(), &from != this.
  void CopyPrefix(const KvCache& from, int64_t n, int64_t reserve = 0);
  int64_t Bytes() const;

 private:
  friend class Model;
  void Reserve(int64_t positions);

  int64_t heads_total_;  // layers * heads
  int64_t head_dim_;
  int64_t max_positions_;  // max_seq_len rounded up to kNr
  int64_t size_ = 0;
  int64_t capacity_ = 0;  // multiple of kNr
  // [layer * heads + head]: keys as a PackedMatrix with n = capacity,
  // k = head_dim (panel = 16 positions); values with n = head_dim,
  // k = capacity (panel = 16 dims, position-major).
  std::vector<moe::PackedMatrix> keys_;
  std::vector<moe::PackedMatrix> values_;
};

// One sequence's part of a Forward: `tokens` go to positions
// cache->size() ... and are appended to the cache.
struct ForwardSegment {
  enum class Logits { kNone, kLast, kAll };
  KvCache* cache = nullptr;
  absl::Span<const int32_t> tokens;
  Logits logits = Logits::kLast;
};

struct ForwardResult {
  // [rows x vocab]: for each segment in order, its last token's or all its
  // tokens' logits (per ForwardSegment::logits).
  std::vector<float> logits;
  std::vector<int64_t> first_logits_row;  // per segment; -1 for kNone
  // Per layer, the MoE routing of every token, segments in order.
  std::vector<moe::RoutingInfo> routing;
};

class Model {
 public:
  // Random weights from `seed` (same seed, same config -> same model).
  static absl::StatusOr<std::unique_ptr<Model>> Random(
      const ModelConfig& config, uint64_t seed,
      const ModelRunOptions& run = {});
  // Reads a file written by Save. INVALID_ARGUMENT for a file that is not a
  // model (magic, version, config); DATA_LOSS for a truncated or corrupt
  // one (sizes, checksum).
  static absl::StatusOr<std::unique_ptr<Model>> Load(
      const std::string& path, const ModelRunOptions& run = {});
  // Format: magic "DSECPOL1", version, config, payload size, the tensors
  // (little-endian), then a 64-bit checksum of everything before it.
  absl::Status Save(const std::string& path) const;

  ~Model();

  // vocab_size resolved.
  const ModelConfig& config() const { return config_; }
  // A checksum of config and weights: identifies the model (e.g. in
  // write-ahead logs).
  uint64_t fingerprint() const { return fingerprint_; }

  // Runs the segments as one batch (see top of file). REQUIRES per segment:
  // cache made for this model's config, tokens non-empty and in the
  // vocabulary, cache->size() + tokens.size() <= max_seq_len (else
  // INVALID_ARGUMENT); no cache twice. `forced_routing`, if non-empty, has
  // one RoutingInfo per layer over all the tokens (routing replay).
  absl::StatusOr<ForwardResult> Forward(
      absl::Span<const ForwardSegment> segments,
      absl::Span<const moe::RoutingInfo> forced_routing = {});

 private:
  struct Layer;
  struct Weights;
  Model(const ModelConfig& config, std::unique_ptr<Weights> weights);
  static absl::StatusOr<std::unique_ptr<Model>> Build(
      const ModelConfig& config, std::unique_ptr<Weights> weights,
      const ModelRunOptions& run);
  std::string Serialize() const;
  void Gemm(int64_t m, const float* a, int64_t lda, const moe::PackedMatrix& b,
            float* c, int64_t ldc, bool accumulate);
  // Appends one head's keys/values of `seg` (rows from row0 of qkv) to its
  // cache and writes the head's attention output into out [rows x A].
  void AttentionHead(const ForwardSegment& seg, int64_t layer, int64_t head,
                     int64_t row0, const float* qkv, float* out,
                     std::vector<float>& scratch);

  ModelConfig config_;
  std::unique_ptr<Weights> weights_;
  uint64_t fingerprint_ = 0;
  std::unique_ptr<moe::ThreadPool> pool_;
  std::vector<float> rope_cos_, rope_sin_;  // [max_seq_len x head_dim / 2]

  std::mutex mu_;  // one Forward at a time (scratch below)
  std::vector<std::vector<float>> scores_;  // per worker attention scratch
};

}  // namespace dsec::policy

#endif  // DSEC_ROLLOUT_POLICY_MODEL_H_
