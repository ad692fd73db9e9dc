// Schedule of one Forward (task order = claim order, see thread_pool.h):
//
//   [copy wave 0 + shared input] [copy wave 1][shared tiles][tiles wave 0]
//   [copy wave 2][tiles wave 1] ... [tiles wave last]
//
// Copies never wait; a tile of wave w spins until all copies of wave w are
// done. Since tasks are claimed in index order, every copy a tile waits on
// has already been claimed by a running worker: no deadlock, and with one
// worker the order is simply sequential.
//
// Combine, two modes chosen per Forward:
//  - Row tiles enough to keep every worker busy (chunks == 1): each tile
//    owns its pairs, and the GEMM2 epilogue stores weight * result into the
//    pair's row of send_ (the rank's send buffer). The final pass, by token,
//    sums the token's k pair rows and shared rows: sequential traffic, no
//    read-modify-write scattered over a [T x H] accumulator.
//  - Few row tiles (small batches, split-K over the intermediate dim): a
//    tile writes weight * (GEMM2 partial) into its worker's private [T x H]
//    accumulator. A row is stored (not added) the first time that worker
//    touches the token, so accumulators never need clearing; the final pass
//    sums the touched rows of all workers and resets the flags.
#include "rollout/moe/fused_moe.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "common/status_macros.h"

namespace dsec::moe {
namespace {

constexpr int64_t kRowTile = 96;        // gathered rows per compute tile
constexpr int64_t kCopyRows = 128;      // rows per dispatch task
constexpr int64_t kTokenBlock = 16;     // tokens per reduction task
constexpr int64_t kMinChunkPanels = 4;  // >= 32 intermediate columns

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

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
      acc_(options.num_threads),
      touched_(options.num_threads),
      act_(options.num_threads) {
  for (auto& a : act_) a.resize(kRowTile * PaddedStride(packed_.act_width));
}

void FusedMoe::BuildSchedule(int64_t t_count) {
  const int64_t e_count = config_.num_experts, ranks = options_.num_ranks;
  const int64_t local = e_count / ranks;
  const int64_t wave_experts =
      options_.wave_experts > 0
          ? std::min<int64_t>(options_.wave_experts, local)
          : std::max<int64_t>(1, local / 4);
  num_waves_ = CeilDiv(local, wave_experts);

  // Split the intermediate dimension when there are too few row tiles to
  // keep every worker busy (small batches).
  int64_t row_tiles = config_.num_shared_experts * CeilDiv(t_count, kRowTile);
  for (int64_t e = 0; e < e_count; ++e) {
    row_tiles +=
        CeilDiv(plan_.expert_begin[e + 1] - plan_.expert_begin[e], kRowTile);
  }
  const int64_t ap = packed_.act_panels;
  const int64_t max_chunks = std::max<int64_t>(1, ap / kMinChunkPanels);
  const int64_t chunks = std::clamp<int64_t>(
      CeilDiv(8 * options_.num_threads, std::max<int64_t>(1, row_tiles)), 1,
      max_chunks);
  split_k_ = chunks > 1;

  tasks_.clear();
  auto push_tiles = [&](int32_t wave, int32_t expert, int64_t rows) {
    for (int64_t r = 0; r < rows; r += kRowTile) {
      for (int64_t c = 0; c < chunks; ++c) {
        tasks_.push_back({false, wave, expert, r, std::min(kRowTile, rows - r),
                          ap * c / chunks, ap * (c + 1) / chunks});
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
        tasks_.push_back(
            {true, 0, -1, t, std::min(kCopyRows, t_count - t), 0, 0});
        ++wave_copies_[0];
      }
    }
    for (int64_t r = 0; r < ranks; ++r) {
      auto [lo, hi] = wave_experts_of(r, w);
      const int64_t b = plan_.expert_begin[lo], e = plan_.expert_begin[hi];
      for (int64_t p = b; p < e; p += kCopyRows) {
        tasks_.push_back({true, static_cast<int32_t>(w), 0, p,
                          std::min(kCopyRows, e - p), 0, 0});
        ++wave_copies_[w];
      }
    }
  };

  push_copies(0);
  for (int64_t w = 0; w < num_waves_; ++w) {
    if (w + 1 < num_waves_) push_copies(w + 1);
    if (w == 0) {
      for (int64_t s = 0; s < config_.num_shared_experts; ++s) {
        push_tiles(0, static_cast<int32_t>(-1 - s), t_count);
      }
    }
    for (int64_t r = 0; r < ranks; ++r) {
      auto [lo, hi] = wave_experts_of(r, w);
      for (int64_t e = lo; e < hi; ++e) {
        const int64_t n = plan_.expert_begin[e + 1] - plan_.expert_begin[e];
        if (n > 0)
          push_tiles(static_cast<int32_t>(w), static_cast<int32_t>(e), n);
      }
    }
  }
  wave_done_.reset(new std::atomic<int>[num_waves_]);
  for (int64_t w = 0; w < num_waves_; ++w) wave_done_[w].store(0);
}

void FusedMoe::RunTask(const Task& t, int worker, const float* hidden) {
  const int64_t h = config_.hidden;
  if (t.dispatch) {
    for (int64_t p = t.row0; p < t.row0 + t.rows; ++p) {
      if (t.expert < 0) {
        std::memcpy(shared_in_.data() + p * stride_, hidden + p * h,
                    h * sizeof(float));
      } else {
        std::memcpy(recv_.data() + p * stride_,
                    hidden + plan_.pair_token[p] * h, h * sizeof(float));
      }
    }
    wave_done_[t.wave].fetch_add(1, std::memory_order_release);
    return;
  }
  {
    while (wave_done_[t.wave].load(std::memory_order_acquire) <
           wave_copies_[t.wave]) {
      std::this_thread::yield();
    }
  }

  // Rows of this tile: A, and per row the token and combine weight.
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
  // Where each row's weighted GEMM2 result goes, and whether it is stored
  // (first writer) or added.
  float* dst_row[kRowTile];
  bool first[kRowTile];
  float weight[kRowTile];
  const int64_t pairs = plan_.num_pairs();
  for (int64_t r = 0; r < t.rows; ++r) {
    weight[r] = pair0 >= 0 ? plan_.pair_weight[pair0 + r] : 1.0f;
    if (split_k_) {
      const int64_t token =
          pair0 >= 0 ? plan_.pair_token[pair0 + r] : t.row0 + r;
      uint8_t& touched = touched_[worker][token];
      dst_row[r] = acc_[worker].data() + token * h;
      first[r] = !touched;
      touched = 1;
    } else {
      const int64_t row = pair0 >= 0
                              ? pair0 + r
                              : pairs + (-1 - t.expert) * t_count_ + t.row0 + r;
      dst_row[r] = send_.data() + row * h;
      first[r] = true;
    }
  }

  // GEMM1 over panels [p0, p1) with SwiGLU in the epilogue -> act tile.
  constexpr int kHalf = kNr / 2;
  float* act = act_[worker].data();
  const int64_t alda = PaddedStride((t.p1 - t.p0) * kHalf);
  for (int64_t p = t.p0; p < t.p1; ++p) {
    GemmPanel(t.rows, a, stride_, pe->gate_up, p, 0, h,
              [&](int64_t r0, int mr, const float* tile) {
                for (int i = 0; i < mr; ++i) {
                  float* dst = act + (r0 + i) * alda + (p - t.p0) * kHalf;
                  const float* g = tile + i * kNr;
                  for (int j = 0; j < kHalf; ++j) {
                    dst[j] = SwiGlu(g[j], g[kHalf + j]);
                  }
                }
              });
  }

  // GEMM2 over the same intermediate range (split-K), weighted combine into
  // this worker's accumulator in the epilogue.
  const int64_t k0 = t.p0 * kHalf;
  const int64_t k1 = std::min(t.p1 * kHalf, config_.intermediate);
  const int64_t hp = CeilDiv(h, kNr);
  for (int64_t q = 0; q < hp; ++q) {
    const int cols = static_cast<int>(std::min<int64_t>(kNr, h - q * kNr));
    GemmPanel(t.rows, act, alda, pe->down, q, k0, k1,
              [&](int64_t r0, int mr, const float* tile) {
                for (int i = 0; i < mr; ++i) {
                  const int64_t r = r0 + i;
                  float* dst = dst_row[r] + q * kNr;
                  const float w = weight[r];
                  const float* src = tile + i * kNr;
                  if (first[r]) {
                    for (int j = 0; j < cols; ++j) dst[j] = w * src[j];
                  } else {
                    for (int j = 0; j < cols; ++j) dst[j] += w * src[j];
                  }
                }
              });
  }
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
  stride_ = PaddedStride(h);
  recv_.resize(plan_.num_pairs() * stride_);
  shared_in_.resize(config_.num_shared_experts > 0 ? t_count * stride_ : 0);
  BuildSchedule(t_count);
  t_count_ = t_count;
  if (split_k_) {
    for (int w = 0; w < options_.num_threads; ++w) {
      if (static_cast<int64_t>(acc_[w].size()) < t_count * h) {
        acc_[w].resize(t_count * h);
        touched_[w].resize(t_count, 0);
      }
    }
  } else {
    send_.resize((plan_.num_pairs() + config_.num_shared_experts * t_count) *
                 h);
  }

  const float* hidden = in.hidden.data();
  pool_->ParallelFor(tasks_.size(), [&](int64_t i, int worker) {
    RunTask(tasks_[i], worker, hidden);
  });

  // Combine, token by token (ownership by token: no atomics). Without
  // split-K each pair's weighted result sits in its own send_ row: sum the
  // token's k rows and its shared-expert rows. With split-K, sum the
  // workers' accumulators (fixed worker order).
  const int64_t pairs = plan_.num_pairs(), k = config_.top_k;
  pool_->ParallelFor(CeilDiv(t_count, kTokenBlock), [&](int64_t b, int) {
    for (int64_t t = b * kTokenBlock;
         t < std::min(t_count, (b + 1) * kTokenBlock); ++t) {
      float* y = out.hidden.data() + t * h;
      if (!split_k_) {
        for (int64_t j = 0; j < k; ++j) {
          const float* src = send_.data() + plan_.slot_pair[t * k + j] * h;
          for (int64_t c = 0; c < h; ++c) y[c] += src[c];
        }
        for (int64_t s = 0; s < config_.num_shared_experts; ++s) {
          const float* src = send_.data() + (pairs + s * t_count + t) * h;
          for (int64_t c = 0; c < h; ++c) y[c] += src[c];
        }
        continue;
      }
      for (int w = 0; w < options_.num_threads; ++w) {
        if (!touched_[w][t]) continue;
        const float* src = acc_[w].data() + t * h;
        for (int64_t c = 0; c < h; ++c) y[c] += src[c];
        touched_[w][t] = 0;
      }
    }
  });
  return out;
}

}  // namespace dsec::moe
