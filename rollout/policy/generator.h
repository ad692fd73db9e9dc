// Batched generation for the rollout worker: many sequences decoded
// together over one Model, a KV cache kept per session between calls, and
// an optional per-token write-ahead log (WAL) so a preempted generation
// resumes where it stopped instead of restarting (restarting would bias
// toward short completions).
//
// Determinism: token i of a request is drawn with a uniform derived only
// from (sampling.seed, i), and the model's logits for a row do not depend on
// the batch, the chunking or the cache (model.h). So a request gives the
// same tokens alone or in any batch, with or without a cached session, and
// resumed from its WAL or not.
//
// WAL file: a 72-byte header (magic, model fingerprint, prompt hash and
// length, sampling params, header checksum), then one 8-byte record per
// sampled token (id, checksum over id, index and header), written before
// the token is used. A torn or corrupt last record is dropped (and cut from
// the file); a corrupt record before the last is DATA_LOSS; a header for
// another prompt, model or params is FAILED_PRECONDITION. Records are
// written with pwrite, so they survive the process being killed; they
// survive a machine crash only with GeneratorOptions::wal_sync.
//
// Prefix sharing: a request whose tokens start with the same tokens as
// another cached session's (a shared system prompt) does not recompute
// them: its cache starts as a copy of that session's K/V rows for the
// longest common prefix (found through a hash of every 16-token-aligned
// prefix of every session, so the cost is per request, not per step).
// Requests of one call that share a prefix prefill it once: the rest wait
// for the first of them and copy. Copies are independent of their donor
// (evicting it is safe) and bitwise equal to recomputation (model.h).
//
// Routing (return_routing): for generated token i, the MoE routing of the
// forward step whose logits it was sampled from, i.e. of the input token at
// position prompt.size() - 1 + i: exactly the positions a trainer computes
// the generated tokens' log-probs at.
//
// Thread-safety: Generate and DropSession are serialized internally. The
// Model must outlive the Generator.
#ifndef DSEC_ROLLOUT_POLICY_GENERATOR_H_
#define DSEC_ROLLOUT_POLICY_GENERATOR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "rollout/policy/model.h"
#include "rollout/policy/tokenizer.h"

namespace dsec::policy {

struct SamplingParams {
  float temperature = 1.0f;  // 0 = greedy (ties to the lower id)
  float top_p = 1.0f;        // (0, 1]
  int32_t max_new_tokens = 256;
  uint64_t seed = 0;
  // Stop after "</｜DSML｜tool_calls>" (finish kToolCalls).
  bool stop_at_tool_calls_close = true;
};

struct GenerationRequest {
  // Non-empty: the KV cache is kept under this id between calls; a prompt
  // sharing a prefix with the session's previous tokens (prompt +
  // generated) prefills only the rest. At most one request per session in
  // a call.
  std::string session_id;
  std::vector<int32_t> prompt;  // the full token sequence, non-empty
  SamplingParams sampling;
  std::string wal_path;  // optional write-ahead log
  bool return_routing = false;
};

struct TokenRouting {
  std::vector<std::vector<int32_t>> experts;  // [layer][k]
  std::vector<std::vector<float>> weights;    // [layer][k]
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated, the stop token included
  std::string text;             // Tokenizer().Decode(tokens)
  // kLength: max_new_tokens reached or the sequence hit max_seq_len.
  enum class Finish { kEos, kToolCalls, kLength } finish = Finish::kLength;
  int64_t resumed_tokens = 0;  // recovered from the WAL, not sampled
  int64_t prefill_tokens = 0;  // prompt (and WAL) tokens actually computed
  // Positions whose K/V were copied from another session or request.
  int64_t shared_prefix_tokens = 0;
  std::vector<TokenRouting> routing;  // per generated token (see top)
};

struct GeneratorOptions {
  int32_t max_batch = 64;  // sequences per decode forward
  int64_t max_cached_sessions = 1024;
  int64_t max_cache_bytes = int64_t{8} << 30;  // all sessions' KV caches
  int32_t prefill_chunk = 256;    // tokens of one sequence per forward
  int32_t prefill_budget = 1024;  // tokens of all sequences per forward
  bool wal_sync = false;          // fdatasync the WAL after each record
  bool share_prefixes = true;     // copy common prefixes' K/V (see top)
};

// Samples from one row of logits; token `step` of a request always uses the
// same uniform for a given seed. Exposed for tests.
int32_t SampleToken(absl::Span<const float> logits, const SamplingParams& p,
                    int64_t step);

class Generator {
 public:
  // REQUIRES: model non-null, outlives the generator.
  explicit Generator(Model* model, GeneratorOptions options = {});
  ~Generator();

  // Runs every request to completion, all decoding together (one forward
  // per step over all active sequences, in groups of max_batch).
  // INVALID_ARGUMENT for a bad request (empty or too long prompt, token out
  // of range, bad params, duplicate session); WAL errors as described above.
  absl::StatusOr<std::vector<GenerationResult>> Generate(
      absl::Span<const GenerationRequest> requests);

  void DropSession(absl::string_view session_id);
  int64_t cached_sessions() const;

 private:
  struct Session;
  struct Seq;
  absl::Status Prepare(const GenerationRequest& req, Seq& seq)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Picks where seqs[i]'s cache starts: its own session's rows, a copy of
  // a cached session's, or (later, in the prefill) a copy of an earlier
  // request's. `leaders` maps block hashes of the earlier requests' tokens
  // to their index.
  void SharePrefix(std::vector<Seq>& seqs, size_t i,
                   absl::flat_hash_map<uint64_t, size_t>& leaders)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets s.tokens (REQUIRES: the cache holds them) and re-indexes.
  void SetTokens(Session& s, std::vector<int32_t> tokens)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseSession(absl::string_view session_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RunForward(std::vector<Seq*>& seqs,
                          const std::vector<int64_t>& counts,
                          const std::vector<bool>& want_logits);
  void EvictSessions() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Model* const model_;
  const GeneratorOptions options_;
  const Tokenizer tokenizer_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<Session>> sessions_
      ABSL_GUARDED_BY(mu_);
  uint64_t clock_ ABSL_GUARDED_BY(mu_) = 0;
  // Hash of tokens[0, 16 k) -> the sessions whose tokens start so.
  absl::flat_hash_map<uint64_t, absl::flat_hash_set<Session*>> prefixes_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace dsec::policy

#endif  // DSEC_ROLLOUT_POLICY_GENERATOR_H_
