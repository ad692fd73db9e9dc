// Schedule of one Forward (task order = claim order, see thread_pool.h):
//
//   [copy wave 0 + shared input] [copy wave 1] [tiles of shared + wave 0]
//   [copy wave 2] [tiles of wave 1] ... [tiles of the last wave]
//
// where "tiles" of a wave are, for large batches, one kTile task per row
// tile, and for small batches all kGateUp tasks of the wave's row tiles
// followed by the kDown tasks of the previous wave's row tiles (the last
// wave's kDown tasks close the list). When fewer than kInlineCopyRows rows
// are to be copied (small batches) the copies run before the pass instead,
// and all experts form one wave.
//
// Waiting: a kTile/kGateUp task spins until its wave's copies are done; a
// kDown task spins until its row tile's kGateUp tasks are done. Everything
// waited on has a smaller task index, hence was already claimed by a
// running worker, and copies and kGateUp tasks never wait on anything a
// later task produces: no deadlock, and with one worker the order is simply
// sequential.
//
// Combine: each (pair, output column) of send_ has exactly one writer
// (kTile writes all columns of its rows, kDown a disjoint column range), so
// no atomics and no zeroing; the final pass sums, per token, its k pair
// rows and its shared-expert rows.
#include "rollout/moe/fused_moe.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "common/status_macros.h"

namespace dsec::moe {
namespace {

constexpr int64_t kRowTile = 96;     // gathered rows per row tile
constexpr int64_t kCopyRows = 128;   // rows per copy task
constexpr int64_t kTokenBlock = 16;  // tokens per combine task
// Below this many rows to copy there is nothing worth overlapping.
constexpr int64_t kInlineCopyRows = 256;
constexpr int64_t kMinPartPanels = 4;  // smallest column range of a task
constexpr int kHalf = kNr / 2;

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

void SpinUntil(const std::atomic<int>& counter, int target) {
  while (counter.load(std::memory_order_acquire) < target) {
    std::this_thread::yield();
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<FusedMoe>> FusedMoe::Create(
    std::shared_ptr<const MoeWeights> weights, const MoeRunOptions& options) {
  if (weights == nullptr) {
    return absl::InvalidArgumentError("fused moe: null weights");
  }
  RETURN_IF_ERROR(ValidateMoeConfig(weights->config()));
  RETURN_IF_ERROR(ValidateRunOptions(weights->config(), options));
  ASSIGN_OR_RETURN(std::unique_ptr<ThreadPool> pool,
                   ThreadPool::Create(options.num_threads));
  return std::unique_ptr<FusedMoe>(
      new FusedMoe(*weights, options, std::move(pool)));
}

FusedMoe::FusedMoe(const MoeWeights& weights, const MoeRunOptions& options,
                   std::unique_ptr<ThreadPool> pool)
    : config_(weights.config()),
      options_(options),
      router_(weights),
      packed_(weights),
      pool_(std::move(pool)),
      act_(options.num_threads) {
  for (auto& a : act_) a.resize(kRowTile * PaddedStride(packed_.act_width));
}

void FusedMoe::BuildSchedule(int64_t t_count) {
  const int64_t e_count = config_.num_experts, ranks = options_.num_ranks;
  const int64_t local = e_count / ranks;
  int64_t wave_experts = options_.wave_experts > 0
                             ? std::min<int64_t>(options_.wave_experts, local)
                             : std::max<int64_t>(1, local / 4);
  num_waves_ = CeilDiv(local, wave_experts);

  // Too few row tiles to keep every worker busy: split each tile's GEMMs by
  // output columns (small batches).
  int64_t row_tiles = config_.num_shared_experts * CeilDiv(t_count, kRowTile);
  for (int64_t e = 0; e < e_count; ++e) {
    row_tiles +=
        CeilDiv(plan_.expert_begin[e + 1] - plan_.expert_begin[e], kRowTile);
  }
  const int64_t want = 8 * options_.num_threads;
  const bool split = row_tiles < want;
  const int64_t parts = CeilDiv(want, std::max<int64_t>(1, row_tiles));
  const int64_t ap = packed_.act_panels, hp = CeilDiv(config_.hidden, kNr);
  gate_up_parts_ =
      std::clamp<int64_t>(parts, 1, std::max<int64_t>(1, ap / kMinPartPanels));
  const int64_t down_parts =
      std::clamp<int64_t>(parts, 1, std::max<int64_t>(1, hp / kMinPartPanels));

  tasks_.clear();
  units_.clear();
  int64_t act_rows = 0;
  std::vector<Task> downs;   // kDown tasks of the current wave
  std::vector<Task> lagged;  // kDown tasks of the previous wave
  auto push_tiles = [&](int32_t wave, int32_t expert, int64_t rows) {
    for (int64_t r = 0; r < rows; r += kRowTile) {
      const int64_t n = std::min(kRowTile, rows - r);
      if (!split) {
        tasks_.push_back({Kind::kTile, wave, expert, -1, r, n, 0, 0});
        continue;
      }
      const int32_t unit = static_cast<int32_t>(units_.size());
      units_.push_back({act_rows});
      act_rows += n;
      for (int64_t c = 0; c < gate_up_parts_; ++c) {
        tasks_.push_back({Kind::kGateUp, wave, expert, unit, r, n,
                          ap * c / gate_up_parts_,
                          ap * (c + 1) / gate_up_parts_});
      }
      for (int64_t c = 0; c < down_parts; ++c) {
        downs.push_back({Kind::kDown, wave, expert, unit, r, n,
                         hp * c / down_parts, hp * (c + 1) / down_parts});
      }
    }
  };
  auto wave_experts_of = [&](int64_t rank, int64_t w) {
    const int64_t lo = rank * local + w * wave_experts;
    return std::make_pair(lo,
                          std::min(rank * local + local, lo + wave_experts));
  };
  wave_copies_.assign(num_waves_, 0);
  auto push_copies = [&](int64_t w) {
    if (w == 0 && config_.num_shared_experts > 0) {
      for (int64_t t = 0; t < t_count; t += kCopyRows) {
        tasks_.push_back({Kind::kCopyShared, 0, -1, -1, t,
                          std::min(kCopyRows, t_count - t), 0, 0});
        ++wave_copies_[0];
      }
    }
    for (int64_t r = 0; r < ranks; ++r) {
      auto [lo, hi] = wave_experts_of(r, w);
      const int64_t b = plan_.expert_begin[lo], e = plan_.expert_begin[hi];
      for (int64_t p = b; p < e; p += kCopyRows) {
        tasks_.push_back({Kind::kCopyPairs, static_cast<int32_t>(w), 0, -1, p,
                          std::min(kCopyRows, e - p), 0, 0});
        ++wave_copies_[w];
      }
    }
  };

  const int64_t copy_rows =
      plan_.num_pairs() + (config_.num_shared_experts > 0 ? t_count : 0);
  const bool inline_copies = copy_rows < kInlineCopyRows;
  inline_copies_.clear();
  if (inline_copies) {
    // Nothing to overlap: one wave, copied before the pass.
    wave_experts = local;
    num_waves_ = 1;
    wave_copies_.assign(1, 0);
    push_copies(0);
    inline_copies_.swap(tasks_);
  } else {
    push_copies(0);
  }
  for (int64_t w = 0; w < num_waves_; ++w) {
    if (w + 1 < num_waves_ && !inline_copies) push_copies(w + 1);
    if (w == 0) {
      for (int64_t s = 0; s < config_.num_shared_experts; ++s) {
        push_tiles(0, static_cast<int32_t>(-1 - s), t_count);
      }
    }
    for (int64_t r = 0; r < ranks; ++r) {
      auto [lo, hi] = wave_experts_of(r, w);
      for (int64_t e = lo; e < hi; ++e) {
        const int64_t n = plan_.expert_begin[e + 1] - plan_.expert_begin[e];
        if (n > 0) {
          push_tiles(static_cast<int32_t>(w), static_cast<int32_t>(e), n);
        }
      }
    }
    // Software pipelining: wave w's GEMM2 tasks go after wave w+1's GEMM1
    // tasks, so a worker that would wait on a tile's last GEMM1 part finds
    // GEMM1 work of the next wave instead.
    tasks_.insert(tasks_.end(), lagged.begin(), lagged.end());
    lagged.swap(downs);
    downs.clear();
  }
  tasks_.insert(tasks_.end(), lagged.begin(), lagged.end());

  wave_done_.reset(new std::atomic<int>[num_waves_]);
  for (int64_t w = 0; w < num_waves_; ++w) wave_done_[w].store(0);
  unit_done_.reset(new std::atomic<int>[units_.size()]);
  for (size_t u = 0; u < units_.size(); ++u) unit_done_[u].store(0);
  act_all_.resize(act_rows * PaddedStride(packed_.act_width));
}

void FusedMoe::GateUp(const PackedExpert& pe, const float* a, int64_t rows,
                      int64_t p0, int64_t p1, float* act, int64_t alda) const {
  for (int64_t p = p0; p < p1; ++p) {
    GemmPanel(rows, a, stride_, pe.gate_up, p, 0, config_.hidden,
              [&](int64_t r0, int mr, const float* tile) {
                for (int i = 0; i < mr; ++i) {
                  float* dst = act + (r0 + i) * alda + p * kHalf;
                  const float* g = tile + i * kNr;
                  for (int j = 0; j < kHalf; ++j) {
                    dst[j] = SwiGlu(g[j], g[kHalf + j]);
                  }
                }
              });
  }
}

void FusedMoe::Down(const PackedExpert& pe, const float* act, int64_t alda,
                    int64_t rows, int64_t q0, int64_t q1, float* const* dst_row,
                    const float* weight) const {
  const int64_t h = config_.hidden;
  for (int64_t q = q0; q < q1; ++q) {
    const int cols = static_cast<int>(std::min<int64_t>(kNr, h - q * kNr));
    GemmPanel(rows, act, alda, pe.down, q, 0, config_.intermediate,
              [&](int64_t r0, int mr, const float* tile) {
                for (int i = 0; i < mr; ++i) {
                  float* dst = dst_row[r0 + i] + q * kNr;
                  const float w = weight[r0 + i];
                  const float* src = tile + i * kNr;
                  for (int j = 0; j < cols; ++j) dst[j] = w * src[j];
                }
              });
  }
}

void FusedMoe::RunTask(const Task& t, int worker, const float* hidden) {
  const int64_t h = config_.hidden;
  switch (t.kind) {
    case Kind::kCopyPairs:
      for (int64_t p = t.row0; p < t.row0 + t.rows; ++p) {
        std::memcpy(recv_.data() + p * stride_,
                    hidden + plan_.pair_token[p] * h, h * sizeof(float));
      }
      wave_done_[t.wave].fetch_add(1, std::memory_order_release);
      return;
    case Kind::kCopyShared:
      for (int64_t p = t.row0; p < t.row0 + t.rows; ++p) {
        std::memcpy(shared_in_.data() + p * stride_, hidden + p * h,
                    h * sizeof(float));
      }
      wave_done_[t.wave].fetch_add(1, std::memory_order_release);
      return;
    default:
      break;
  }

  // The tile's rows: A, and per row its send_ row and combine weight.
  const PackedExpert* pe;
  const float* a;
  int64_t pair0 = -1;
  if (t.expert >= 0) {
    pe = &packed_.experts[t.expert];
    pair0 = plan_.expert_begin[t.expert] + t.row0;
    a = recv_.data() + pair0 * stride_;
  } else {
    pe = &packed_.shared[-1 - t.expert];
    a = shared_in_.data() + t.row0 * stride_;
  }
  const int64_t alda = PaddedStride(packed_.act_width);

  if (t.kind == Kind::kGateUp) {
    SpinUntil(wave_done_[t.wave], wave_copies_[t.wave]);
    GateUp(*pe, a, t.rows, t.c0, t.c1,
           act_all_.data() + units_[t.unit].act_row * alda, alda);
    unit_done_[t.unit].fetch_add(1, std::memory_order_release);
    return;
  }

  float* dst_row[kRowTile];
  float weight[kRowTile];
  const int64_t pairs = plan_.num_pairs();
  for (int64_t r = 0; r < t.rows; ++r) {
    weight[r] = pair0 >= 0 ? plan_.pair_weight[pair0 + r] : 1.0f;
    const int64_t row = pair0 >= 0
                            ? pair0 + r
                            : pairs + (-1 - t.expert) * t_count_ + t.row0 + r;
    dst_row[r] = send_.data() + row * h;
  }
  if (t.kind == Kind::kDown) {
    SpinUntil(unit_done_[t.unit], static_cast<int>(gate_up_parts_));
    Down(*pe, act_all_.data() + units_[t.unit].act_row * alda, alda, t.rows,
         t.c0, t.c1, dst_row, weight);
    return;
  }
  // kTile: the whole tile, activations in this worker's tile buffer.
  SpinUntil(wave_done_[t.wave], wave_copies_[t.wave]);
  float* act = act_[worker].data();
  GateUp(*pe, a, t.rows, 0, packed_.act_panels, act, alda);
  Down(*pe, act, alda, t.rows, 0, CeilDiv(h, kNr), dst_row, weight);
}

absl::StatusOr<MoeOutput> FusedMoe::Forward(const MoeInput& in) {
  RETURN_IF_ERROR(ValidateForwardInput(config_, in.hidden, in.num_tokens,
                                       in.token_ids, in.forced_routing));
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t t_count = in.num_tokens, h = config_.hidden;
  MoeOutput out;
  out.routing =
      in.forced_routing != nullptr
          ? *in.forced_routing
          : router_.Route(in.hidden, t_count, in.token_ids, pool_.get());
  out.hidden.resize(t_count * h);
  if (t_count == 0) return out;

  plan_.Build(out.routing, config_.num_experts);
  const int64_t pairs = plan_.num_pairs(), k = config_.top_k;
  t_count_ = t_count;
  stride_ = PaddedStride(h);
  recv_.resize(pairs * stride_);
  shared_in_.resize(config_.num_shared_experts > 0 ? t_count * stride_ : 0);
  send_.resize((pairs + config_.num_shared_experts * t_count) * h);
  BuildSchedule(t_count);

  const float* hidden = in.hidden.data();
  for (const Task& t : inline_copies_) RunTask(t, 0, hidden);
  pool_->ParallelFor(tasks_.size(), [&](int64_t i, int worker) {
    RunTask(tasks_[i], worker, hidden);
  });

  // Combine, token by token: its k weighted pair rows, then shared rows.
  pool_->ParallelFor(CeilDiv(t_count, kTokenBlock), [&](int64_t b, int) {
    for (int64_t t = b * kTokenBlock;
         t < std::min(t_count, (b + 1) * kTokenBlock); ++t) {
      float* y = out.hidden.data() + t * h;
      for (int64_t j = 0; j < k; ++j) {
        const float* src = send_.data() + plan_.slot_pair[t * k + j] * h;
        for (int64_t c = 0; c < h; ++c) y[c] += src[c];
      }
      for (int64_t s = 0; s < config_.num_shared_experts; ++s) {
        const float* src = send_.data() + (pairs + s * t_count + t) * h;
        for (int64_t c = 0; c < h; ++c) y[c] += src[c];
      }
    }
  });
  return out;
}

}  // namespace dsec::moe
