// Generate, per call:
//   1. Prepare each request: open its WAL (logged tokens = already sampled),
//      pick its cache (the session's, truncated to the longest prefix it
//      shares with what must be fed, or a fresh one) and the pending tokens.
//   2. Share prefixes (in request order): if another cached session holds
//      a longer common prefix than the request's own cache, copy its rows
//      now; if an earlier request of this call will hold a longer one still,
//      wait for it (the request's cache is emptied and filled by copy in
//      the prefill once the leader has computed those rows).
//   3. Prefill: pending tokens of all sequences not waiting, in chunks,
//      several sequences per forward; the chunk that ends a sequence's
//      tokens returns the logits of its last token.
//   3. Decode: per step, sample every active sequence (log to the WAL
//      first), retire the finished, and run one forward of one token each.
//
// Invariants: a sequence's cache holds exactly the first cache->size()
// tokens of seq.all (prompt + generated), so after the call the session's
// token list is that prefix. At all times a session's `tokens` are a prefix
// of what its cache holds, and prefixes_ holds exactly the hashes of every
// session's `blocks` (SetTokens is the only writer of either), so a donor
// found through the index has those rows. A waiting request's leader comes
// earlier in the call, so the wait always ends.
#include "rollout/policy/generator.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <numeric>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/status_macros.h"
#include "common/unique_fd.h"
#include "rollout/policy/hash.h"

namespace dsec::policy {
namespace {

using internal::Hash64;
using internal::Mix64;

// Prefixes are indexed at multiples of this many tokens: a match found
// through the index is extended token by token on one candidate, so at
// most kPrefixBlock - 1 shareable tokens are missed when another candidate
// would have matched further.
constexpr int64_t kPrefixBlock = 16;

// Appends to `hashes` (the chained hashes of a prefix of `tokens`' blocks)
// those of the remaining whole blocks: hashes[k] identifies tokens[0,
// kPrefixBlock (k + 1)).
void ExtendBlockHashes(absl::Span<const int32_t> tokens,
                       std::vector<uint64_t>& hashes) {
  for (int64_t k = hashes.size();
       (k + 1) * kPrefixBlock <= static_cast<int64_t>(tokens.size()); ++k) {
    hashes.push_back(Hash64(
        absl::string_view(
            reinterpret_cast<const char*>(tokens.data() + k * kPrefixBlock),
            kPrefixBlock * sizeof(int32_t)),
        k == 0 ? 0 : hashes[k - 1]));
  }
}

int64_t CommonPrefix(absl::Span<const int32_t> a, absl::Span<const int32_t> b,
                     int64_t limit) {
  limit = std::min<int64_t>(
      {limit, static_cast<int64_t>(a.size()), static_cast<int64_t>(b.size())});
  int64_t n = 0;
  while (n < limit && a[n] == b[n]) ++n;
  return n;
}

double UniformFor(uint64_t seed, int64_t step) {
  const uint64_t z = Mix64(
      Mix64(seed) ^ Mix64(static_cast<uint64_t>(step) + 0x632be59bd9b4e019ULL));
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

uint32_t FloatBits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// ------------------------------------------------------------------- WAL

constexpr char kWalMagic[8] = {'D', 'S', 'E', 'C', 'W', 'A', 'L', '1'};
constexpr uint32_t kWalVersion = 1;

struct WalHeader {
  char magic[8];
  uint32_t version;
  uint32_t reserved;
  uint64_t model;
  uint64_t prompt_hash;
  uint64_t prompt_len;
  uint32_t temperature;
  uint32_t top_p;
  int32_t max_new_tokens;
  uint32_t stop_at_tool_calls_close;
  uint64_t seed;
  uint64_t checksum;  // Hash64 of the bytes above
};
static_assert(sizeof(WalHeader) == 72);

struct WalRecord {
  int32_t token;
  uint32_t check;
};
static_assert(sizeof(WalRecord) == 8);

uint32_t RecordCheck(uint64_t header_sum, int64_t index, int32_t token) {
  const uint64_t v[2] = {static_cast<uint64_t>(index),
                         static_cast<uint32_t>(token)};
  return static_cast<uint32_t>(
      Hash64(absl::string_view(reinterpret_cast<const char*>(v), sizeof v),
             header_sum));
}

uint64_t PromptHash(absl::Span<const int32_t> prompt) {
  return Hash64(absl::string_view(reinterpret_cast<const char*>(prompt.data()),
                                  prompt.size() * sizeof(int32_t)));
}

class Wal {
 public:
  // Opens or creates the log; returns it with the tokens it holds.
  static absl::StatusOr<std::unique_ptr<Wal>> Open(
      const std::string& path, const WalHeader& want, bool sync,
      std::vector<int32_t>* logged);
  absl::Status Append(int32_t token);

 private:
  Wal(const std::string& path, UniqueFd fd, uint64_t sum, int64_t count,
      bool sync)
      : path_(path),
        fd_(std::move(fd)),
        sum_(sum),
        count_(count),
        sync_(sync) {}
  std::string path_;
  UniqueFd fd_;
  uint64_t sum_;
  int64_t count_;
  bool sync_;
};

absl::Status PWriteAll(int fd, const void* p, size_t n, off_t off,
                       const std::string& path) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, c, n, off);
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, absl::StrCat("wal ", path, ": write"));
    }
    c += w;
    n -= w;
    off += w;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Wal>> Wal::Open(const std::string& path,
                                               const WalHeader& want, bool sync,
                                               std::vector<int32_t>* logged) {
  logged->clear();
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) {
    return ErrnoToStatus(errno, absl::StrCat("wal ", path, ": open"));
  }
  std::string data;
  {
    char buf[1 << 16];
    off_t off = 0;
    for (;;) {
      const ssize_t r = ::pread(fd.get(), buf, sizeof buf, off);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0)
        return ErrnoToStatus(errno, absl::StrCat("wal ", path, ": read"));
      if (r == 0) break;
      data.append(buf, r);
      off += r;
    }
  }
  if (data.size() < sizeof(WalHeader)) {
    // New, or the header itself was torn: start over.
    if (::ftruncate(fd.get(), 0) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("wal ", path, ": truncate"));
    }
    RETURN_IF_ERROR(PWriteAll(fd.get(), &want, sizeof want, 0, path));
    if (sync && ::fdatasync(fd.get()) != 0) {
      return ErrnoToStatus(errno, absl::StrCat("wal ", path, ": sync"));
    }
    return std::unique_ptr<Wal>(
        new Wal(path, std::move(fd), want.checksum, 0, sync));
  }
  WalHeader got;
  std::memcpy(&got, data.data(), sizeof got);
  if (std::memcmp(got.magic, kWalMagic, sizeof kWalMagic) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("wal ", path, ": not a write-ahead log (bad magic)"));
  }
  if (got.checksum !=
      Hash64(absl::string_view(data.data(), offsetof(WalHeader, checksum)))) {
    return absl::DataLossError(
        absl::StrCat("wal ", path, ": header checksum mismatch"));
  }
  const char* what = nullptr;
  if (got.version != want.version) {
    what = "version";
  } else if (got.model != want.model) {
    what = "model";
  } else if (got.prompt_hash != want.prompt_hash ||
             got.prompt_len != want.prompt_len) {
    what = "prompt";
  } else if (got.temperature != want.temperature || got.top_p != want.top_p ||
             got.max_new_tokens != want.max_new_tokens ||
             got.stop_at_tool_calls_close != want.stop_at_tool_calls_close ||
             got.seed != want.seed) {
    what = "sampling params";
  }
  if (what != nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("wal ", path, " was written for another ", what,
                     "; remove it to start over"));
  }
  const int64_t full = (data.size() - sizeof got) / sizeof(WalRecord);
  int64_t valid = 0;
  for (; valid < full; ++valid) {
    WalRecord rec;
    std::memcpy(&rec, data.data() + sizeof got + valid * sizeof rec,
                sizeof rec);
    if (rec.check != RecordCheck(got.checksum, valid, rec.token)) break;
    logged->push_back(rec.token);
  }
  if (valid < full - 1) {
    return absl::DataLossError(absl::StrCat("wal ", path, ": record ", valid,
                                            " of ", full, " is corrupt"));
  }
  const off_t keep = sizeof got + valid * sizeof(WalRecord);
  if (static_cast<size_t>(keep) != data.size() &&
      ::ftruncate(fd.get(), keep) != 0) {  // drop the torn tail
    return ErrnoToStatus(errno, absl::StrCat("wal ", path, ": truncate"));
  }
  return std::unique_ptr<Wal>(
      new Wal(path, std::move(fd), got.checksum, valid, sync));
}

absl::Status Wal::Append(int32_t token) {
  const WalRecord rec{token, RecordCheck(sum_, count_, token)};
  RETURN_IF_ERROR(PWriteAll(fd_.get(), &rec, sizeof rec,
                            sizeof(WalHeader) + count_ * sizeof rec, path_));
  ++count_;
  if (sync_ && ::fdatasync(fd_.get()) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("wal ", path_, ": sync"));
  }
  return absl::OkStatus();
}

}  // namespace

int32_t SampleToken(absl::Span<const float> logits, const SamplingParams& p,
                    int64_t step) {
  const int64_t v = logits.size();
  int32_t best = 0;
  for (int64_t i = 1; i < v; ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  if (p.temperature <= 0) return best;
  std::vector<double> prob(v);
  const double inv_t = 1.0 / p.temperature, mx = logits[best];
  double total = 0;
  for (int64_t i = 0; i < v; ++i) {
    prob[i] = std::exp((logits[i] - mx) * inv_t);
    total += prob[i];
  }
  const double u = UniformFor(p.seed, step);
  std::vector<int32_t> order(v);
  std::iota(order.begin(), order.end(), 0);
  double mass = total;
  int64_t kept = v;
  if (p.top_p < 1.0f) {
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return prob[a] > prob[b]; });
    double cum = 0;
    kept = 0;
    while (kept < v) {
      cum += prob[order[kept++]];
      if (cum >= p.top_p * total) break;
    }
    mass = cum;
  }
  double target = u * mass, cum = 0;
  for (int64_t i = 0; i < kept; ++i) {
    cum += prob[order[i]];
    if (target < cum) return order[i];
  }
  return order[kept - 1];
}

// ------------------------------------------------------------- Generator

struct Generator::Session {
  explicit Session(const ModelConfig& config) : cache(config) {}
  KvCache cache;
  std::vector<int32_t> tokens;   // a prefix of what the cache holds
  std::vector<uint64_t> blocks;  // ExtendBlockHashes(tokens), in prefixes_
  uint64_t last_use = 0;
};

struct Generator::Seq {
  const GenerationRequest* req = nullptr;
  GenerationResult* res = nullptr;
  KvCache* cache = nullptr;
  std::unique_ptr<KvCache> own;  // sessionless requests
  Session* session = nullptr;
  std::unique_ptr<Wal> wal;
  std::vector<int32_t> all;  // prompt + generated
  int64_t target = 0;        // feed all[0, target) before sampling
  int64_t reusable = 0;      // rows [0, reusable) may come from a cache
  int64_t reserve = 0;       // positions the cache will need
  int64_t leader = -1;       // waits to copy rows [0, shared) from it
  int64_t shared = 0;
  bool done = false;
  std::vector<float> logits;
};

Generator::Generator(Model* model, GeneratorOptions options)
    : model_(model), options_(options) {}

Generator::~Generator() = default;

void Generator::DropSession(absl::string_view session_id) {
  absl::MutexLock lock(&mu_);
  EraseSession(session_id);
}

void Generator::EraseSession(absl::string_view session_id) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  SetTokens(*it->second, {});
  sessions_.erase(it);
}

void Generator::SetTokens(Session& s, std::vector<int32_t> tokens) {
  const int64_t common = CommonPrefix(s.tokens, tokens, tokens.size());
  while (static_cast<int64_t>(s.blocks.size()) * kPrefixBlock > common) {
    auto it = prefixes_.find(s.blocks.back());
    if (it != prefixes_.end()) {
      it->second.erase(&s);
      if (it->second.empty()) prefixes_.erase(it);
    }
    s.blocks.pop_back();
  }
  s.tokens = std::move(tokens);
  const size_t from = s.blocks.size();
  ExtendBlockHashes(s.tokens, s.blocks);
  for (size_t k = from; k < s.blocks.size(); ++k) {
    prefixes_[s.blocks[k]].insert(&s);
  }
}

int64_t Generator::cached_sessions() const {
  absl::MutexLock lock(&mu_);
  return sessions_.size();
}

absl::Status Generator::Prepare(const GenerationRequest& req, Seq& seq) {
  const ModelConfig& config = model_->config();
  const SamplingParams& sp = req.sampling;
  GenerationResult& res = *seq.res;
  std::vector<int32_t> logged;
  if (!req.wal_path.empty()) {
    WalHeader h{};
    std::memcpy(h.magic, kWalMagic, sizeof kWalMagic);
    h.version = kWalVersion;
    h.model = model_->fingerprint();
    h.prompt_hash = PromptHash(req.prompt);
    h.prompt_len = req.prompt.size();
    h.temperature = FloatBits(sp.temperature);
    h.top_p = FloatBits(sp.top_p);
    h.max_new_tokens = sp.max_new_tokens;
    h.stop_at_tool_calls_close = sp.stop_at_tool_calls_close ? 1 : 0;
    h.seed = sp.seed;
    h.checksum = Hash64(absl::string_view(reinterpret_cast<const char*>(&h),
                                          offsetof(WalHeader, checksum)));
    ASSIGN_OR_RETURN(seq.wal,
                     Wal::Open(req.wal_path, h, options_.wal_sync, &logged));
  }
  seq.all = req.prompt;
  const int32_t eos = tokenizer_.eos();
  const int32_t calls_close = *tokenizer_.SpecialId(kToolCallsClose);
  for (size_t i = 0; i < logged.size(); ++i) {
    const int32_t t = logged[i];
    const bool stop =
        t == eos || (sp.stop_at_tool_calls_close && t == calls_close);
    if (t < 0 || t >= config.vocab_size || seq.done) {
      return absl::DataLossError(absl::StrCat(
          "wal ", req.wal_path, ": record ", i,
          seq.done ? " follows the end of the generation" : " is no token"));
    }
    seq.all.push_back(t);
    res.tokens.push_back(t);
    if (stop) {
      seq.done = true;
      res.finish = t == eos ? GenerationResult::Finish::kEos
                            : GenerationResult::Finish::kToolCalls;
    }
  }
  res.resumed_tokens = logged.size();
  if (!seq.done &&
      (static_cast<int64_t>(res.tokens.size()) >= sp.max_new_tokens ||
       static_cast<int64_t>(seq.all.size()) >= config.max_seq_len)) {
    seq.done = true;
    res.finish = GenerationResult::Finish::kLength;
  }
  if (static_cast<int64_t>(res.tokens.size()) > sp.max_new_tokens) {
    return absl::DataLossError(absl::StrCat(
        "wal ", req.wal_path, ": more records than max_new_tokens"));
  }
  // The last generated token of a finished sequence is never fed.
  seq.target = seq.all.size() - (seq.done && !res.tokens.empty() ? 1 : 0);

  int64_t keep = 0;
  if (!req.session_id.empty()) {
    auto [it, inserted] = sessions_.try_emplace(req.session_id);
    if (inserted) it->second = std::make_unique<Session>(config);
    seq.session = it->second.get();
    seq.session->last_use = ++clock_;
    seq.cache = &seq.session->cache;
    const std::vector<int32_t>& had = seq.session->tokens;
    const int64_t limit = std::min<int64_t>(had.size(), seq.target);
    while (keep < limit && had[keep] == seq.all[keep]) ++keep;
  } else {
    seq.own = std::make_unique<KvCache>(config);
    seq.cache = seq.own.get();
  }
  // Logits (and routing from the last prompt position on) must be computed.
  seq.reusable = seq.target - (seq.done ? 0 : 1);
  if (req.return_routing) {
    seq.reusable = std::min<int64_t>(seq.reusable, req.prompt.size() - 1);
  }
  seq.reusable = std::max<int64_t>(seq.reusable, 0);
  keep = std::min(keep, seq.reusable);
  seq.cache->Truncate(keep);
  if (seq.session != nullptr) {
    SetTokens(*seq.session,
              std::vector<int32_t>(seq.session->tokens.begin(),
                                   seq.session->tokens.begin() + keep));
  }
  res.prefill_tokens = seq.target - keep;
  seq.reserve = std::min<int64_t>(
      config.max_seq_len,
      seq.target + (seq.done ? 0 : sp.max_new_tokens - res.tokens.size()));
  return absl::OkStatus();
}

void Generator::SharePrefix(std::vector<Seq>& seqs, size_t i,
                            absl::flat_hash_map<uint64_t, size_t>& leaders) {
  Seq& seq = seqs[i];
  const absl::Span<const int32_t> want(seq.all.data(), seq.target);
  std::vector<uint64_t> hashes;
  ExtendBlockHashes(want, hashes);
  const size_t usable = seq.reusable / kPrefixBlock;
  // The deepest block prefix some cached session holds.
  size_t depth = 0;
  while (depth < usable && prefixes_.contains(hashes[depth])) ++depth;
  Session* donor = nullptr;
  int64_t from_cache = 0;
  if (depth > 0) {
    for (Session* s : prefixes_.find(hashes[depth - 1])->second) {
      if (s != seq.session) {
        donor = s;
        break;
      }
    }
    // Compared from 0: a hash collision only shortens the match.
    if (donor != nullptr) {
      from_cache = CommonPrefix(donor->tokens, want, seq.reusable);
    }
  }
  // The deepest one an earlier request of this call will hold.
  depth = 0;
  while (depth < usable && leaders.contains(hashes[depth])) ++depth;
  int64_t leader = -1, from_leader = 0;
  if (depth > 0) {
    leader = leaders.find(hashes[depth - 1])->second;
    const Seq& l = seqs[leader];
    from_leader = CommonPrefix(absl::MakeConstSpan(l.all.data(), l.target),
                               want, seq.reusable);
  }
  for (uint64_t h : hashes) leaders.try_emplace(h, i);

  const int64_t have = seq.cache->size();
  if (from_leader > std::max(have, from_cache)) {
    seq.cache->Truncate(0);
    if (seq.session != nullptr) SetTokens(*seq.session, {});
    seq.leader = leader;
    seq.shared = from_leader;
  } else if (from_cache > have) {
    seq.cache->CopyPrefix(donor->cache, from_cache, seq.reserve);
    if (seq.session != nullptr) {
      SetTokens(*seq.session,
                std::vector<int32_t>(want.begin(), want.begin() + from_cache));
    }
    seq.shared = from_cache;
  } else {
    return;
  }
  seq.res->prefill_tokens = seq.target - seq.shared;
  seq.res->shared_prefix_tokens = seq.shared;
}

absl::Status Generator::RunForward(std::vector<Seq*>& seqs,
                                   const std::vector<int64_t>& counts,
                                   const std::vector<bool>& want_logits) {
  std::vector<ForwardSegment> segs(seqs.size());
  std::vector<int64_t> start(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    Seq& s = *seqs[i];
    start[i] = s.cache->size();
    segs[i].cache = s.cache;
    segs[i].tokens = absl::MakeConstSpan(s.all.data() + start[i], counts[i]);
    segs[i].logits = want_logits[i] ? ForwardSegment::Logits::kLast
                                    : ForwardSegment::Logits::kNone;
  }
  ASSIGN_OR_RETURN(ForwardResult out, model_->Forward(segs));
  const int64_t vocab = model_->config().vocab_size;
  int64_t row = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    Seq& s = *seqs[i];
    if (want_logits[i]) {
      const float* l = out.logits.data() + out.first_logits_row[i] * vocab;
      s.logits.assign(l, l + vocab);
    }
    if (s.req->return_routing) {
      const int64_t first = s.req->prompt.size() - 1;
      for (int64_t j = 0; j < counts[i]; ++j) {
        if (start[i] + j < first) continue;
        TokenRouting tr;
        for (const moe::RoutingInfo& r : out.routing) {
          const int64_t k = r.top_k, at = (row + j) * k;
          tr.experts.emplace_back(r.experts.begin() + at,
                                  r.experts.begin() + at + k);
          tr.weights.emplace_back(r.weights.begin() + at,
                                  r.weights.begin() + at + k);
        }
        s.res->routing.push_back(std::move(tr));
      }
    }
    row += counts[i];
  }
  return absl::OkStatus();
}

void Generator::EvictSessions() {
  int64_t bytes = 0;
  for (const auto& [id, s] : sessions_) bytes += s->cache.Bytes();
  while (!sessions_.empty() && (static_cast<int64_t>(sessions_.size()) >
                                    options_.max_cached_sessions ||
                                bytes > options_.max_cache_bytes)) {
    auto oldest = sessions_.begin();
    for (auto it = sessions_.begin(); it != sessions_.end(); ++it) {
      if (it->second->last_use < oldest->second->last_use) oldest = it;
    }
    bytes -= oldest->second->cache.Bytes();
    SetTokens(*oldest->second, {});
    sessions_.erase(oldest);
  }
}

absl::StatusOr<std::vector<GenerationResult>> Generator::Generate(
    absl::Span<const GenerationRequest> requests) {
  const ModelConfig& config = model_->config();
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationRequest& r = requests[i];
    const SamplingParams& sp = r.sampling;
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat("generate: request ", i, ": ", why));
    };
    if (r.prompt.empty()) return bad("empty prompt");
    if (static_cast<int64_t>(r.prompt.size()) >= config.max_seq_len) {
      return bad(absl::StrCat("prompt of ", r.prompt.size(),
                              " tokens leaves no room (max_seq_len ",
                              config.max_seq_len, ")"));
    }
    for (int32_t t : r.prompt) {
      if (t < 0 || t >= config.vocab_size) {
        return bad(absl::StrCat("token id ", t, " out of range"));
      }
    }
    if (!(sp.temperature >= 0) || !std::isfinite(sp.temperature)) {
      return bad("temperature must be finite and >= 0");
    }
    if (!(sp.top_p > 0 && sp.top_p <= 1)) return bad("top_p must be in (0, 1]");
    if (sp.max_new_tokens < 0) return bad("max_new_tokens must be >= 0");
    for (size_t j = 0; j < i; ++j) {
      if (!r.session_id.empty() && requests[j].session_id == r.session_id) {
        return bad(absl::StrCat("session ", r.session_id, " used twice"));
      }
      if (!r.wal_path.empty() && requests[j].wal_path == r.wal_path) {
        return bad(absl::StrCat("wal ", r.wal_path, " used twice"));
      }
    }
  }

  absl::MutexLock lock(&mu_);
  std::vector<GenerationResult> results(requests.size());
  std::vector<Seq> seqs(requests.size());
  absl::Status status = [&]() -> absl::Status {
    for (size_t i = 0; i < requests.size(); ++i) {
      seqs[i].req = &requests[i];
      seqs[i].res = &results[i];
      RETURN_IF_ERROR(Prepare(requests[i], seqs[i]));
    }
    if (options_.share_prefixes) {
      absl::flat_hash_map<uint64_t, size_t> leaders;
      for (size_t i = 0; i < seqs.size(); ++i) SharePrefix(seqs, i, leaders);
    }
    // Prefill.
    const int64_t chunk = std::max(1, options_.prefill_chunk);
    const int64_t budget = std::max<int64_t>(chunk, options_.prefill_budget);
    for (;;) {
      for (Seq& s : seqs) {
        if (s.leader >= 0 && seqs[s.leader].cache->size() >= s.shared) {
          s.cache->CopyPrefix(*seqs[s.leader].cache, s.shared, s.reserve);
          s.leader = -1;
        }
      }
      std::vector<Seq*> batch;
      std::vector<int64_t> counts;
      std::vector<bool> logits;
      int64_t left = budget;
      for (Seq& s : seqs) {
        const int64_t pending = s.target - s.cache->size();
        if (s.leader >= 0 || pending <= 0 || left <= 0) continue;
        const int64_t n = std::min({pending, chunk, left});
        batch.push_back(&s);
        counts.push_back(n);
        logits.push_back(!s.done && n == pending);
        left -= n;
      }
      if (batch.empty()) break;
      RETURN_IF_ERROR(RunForward(batch, counts, logits));
    }
    for (const Seq& s : seqs) {
      if (s.leader >= 0) return absl::InternalError("generate: stuck prefix");
    }
    // Decode.
    const int32_t eos = tokenizer_.eos();
    const int32_t calls_close = *tokenizer_.SpecialId(kToolCallsClose);
    for (;;) {
      std::vector<Seq*> active;
      for (Seq& s : seqs) {
        if (s.done) continue;
        const SamplingParams& sp = s.req->sampling;
        GenerationResult& res = *s.res;
        const int32_t t = SampleToken(s.logits, sp, res.tokens.size());
        if (s.wal != nullptr) RETURN_IF_ERROR(s.wal->Append(t));
        res.tokens.push_back(t);
        s.all.push_back(t);
        if (t == eos) {
          s.done = true;
          res.finish = GenerationResult::Finish::kEos;
        } else if (sp.stop_at_tool_calls_close && t == calls_close) {
          s.done = true;
          res.finish = GenerationResult::Finish::kToolCalls;
        } else if (static_cast<int64_t>(res.tokens.size()) >=
                       sp.max_new_tokens ||
                   static_cast<int64_t>(s.all.size()) >= config.max_seq_len) {
          s.done = true;
          res.finish = GenerationResult::Finish::kLength;
        }
        if (!s.done) active.push_back(&s);
      }
      if (active.empty()) break;
      const size_t group = std::max(1, options_.max_batch);
      for (size_t g = 0; g < active.size(); g += group) {
        std::vector<Seq*> batch(
            active.begin() + g,
            active.begin() + std::min(active.size(), g + group));
        RETURN_IF_ERROR(RunForward(batch, std::vector<int64_t>(batch.size(), 1),
                                   std::vector<bool>(batch.size(), true)));
      }
    }
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    // Caches may be part-way; forget the sessions this call touched.
    for (const GenerationRequest& r : requests) EraseSession(r.session_id);
    return status;
  }
  for (Seq& s : seqs) {  // the sessions' caches hold these tokens now
    if (s.session != nullptr) {
      SetTokens(
          *s.session,
          std::vector<int32_t>(s.all.begin(), s.all.begin() + s.cache->size()));
    }
  }
  for (GenerationResult& r : results) {
    r.text = tokenizer_.Decode(r.tokens);
    // max_new_tokens 0: the last prompt position's routing has no token.
    if (r.routing.size() > r.tokens.size()) r.routing.resize(r.tokens.size());
  }
  EvictSessions();
  return results;
}

}  // namespace dsec::policy
