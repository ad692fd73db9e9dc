// The GEMM micro-kernel shared by the unfused and fused MoE paths, and the
// packed weight layout it reads.
//
// C[M x N] = A[M x K] * W^T for a weight W [N x K] stored row-major (out x
// in). W is packed once, ahead of time, into panels of kNr = 16 output
// columns: panel p holds K rows of 16 values, value (k, j) = W[16p + j][k]
// (zero past N). The micro-kernel computes one mr x 16 tile (mr <= kMr = 6)
// over a K range into a caller-provided float[kMr * kNr] scratch tile, which
// the caller's epilogue consumes (store, SwiGLU, weighted combine).
//
// bf16 panels stay bf16 in memory (half the bytes streamed); the kernel
// widens them to fp32 in registers. Accumulation is always fp32.
//
// Every output element is accumulated in k order with one fused multiply-add
// per step, in both kernels, so results are bitwise equal to a scalar
// std::fma loop over k. Routing relies on this: router logits, hence expert
// choices, are identical in every MoE implementation.
//
// The AVX2/FMA kernel is chosen at run time (__builtin_cpu_supports); a
// scalar kernel with the same results up to summation order runs elsewhere.
// Everything here is thread-compatible; packed matrices are immutable after
// packing and safe to read from many threads.
#ifndef DSEC_ROLLOUT_MOE_GEMM_KERNEL_H_
#define DSEC_ROLLOUT_MOE_GEMM_KERNEL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "rollout/moe/moe_config.h"
#include "rollout/moe/moe_weights.h"

namespace dsec::moe {

inline constexpr int kMr = 6;
inline constexpr int kNr = 16;

// The clamped SwiGLU of DeepSeek-V4, the one definition every path uses.
inline float SwiGlu(float gate, float up) {
  gate = std::min(gate, kSwigluLimit);
  up = std::clamp(up, -kSwigluLimit, kSwigluLimit);
  return gate / (1.0f + std::exp(-gate)) * up;
}

// A weight matrix packed into kNr-column panels (see top of file).
struct PackedMatrix {
  int64_t n = 0;       // output columns (W rows)
  int64_t k = 0;       // reduction length (W cols)
  int64_t panels = 0;  // ceil(n / kNr)
  WeightDtype dtype = WeightDtype::kFp32;
  std::vector<float> f32;
  std::vector<uint16_t> bf16;

  int64_t Bytes() const { return panels * k * kNr * (f32.empty() ? 2 : 4); }
};

// Packs W [n x k] as above, keeping W's dtype.
PackedMatrix PackWeight(const WeightMatrix& w);
// Packs the router (fp32 [n x k]).
PackedMatrix PackRouter(const std::vector<float>& w, int64_t n, int64_t k);
// Packs an expert's w1 [2I x H] gate/up-interleaved so the SwiGLU can run
// in the GEMM epilogue: panel p holds gate rows [8p, 8p+8) in columns 0..7
// and the matching up rows I + [8p, 8p+8) in columns 8..15 (zero past I).
// panels = ceil(I / 8); n = 2 * panels * 8.
PackedMatrix PackGateUp(const WeightMatrix& w1, int64_t intermediate);

// c[i * kNr + j] (+)= sum_{kk < k} a[i * lda + kk] * panel[kk * kNr + j]
// for i < mr, j < kNr; adds to c's values when `accumulate`, else
// overwrites. REQUIRES: 1 <= mr <= kMr, k >= 0.
void MicroKernel(int mr, int64_t k, const float* a, int64_t lda,
                 const float* panel, float* c, bool accumulate = false);
void MicroKernel(int mr, int64_t k, const float* a, int64_t lda,
                 const uint16_t* panel, float* c, bool accumulate = false);

// Runs the micro-kernel for rows [0, m) of A against panel p of `b` over
// reduction rows [k0, k1), and hands each tile to
// epilogue(row0, mr, const float* tile), rows in increasing order. `a`
// points at A's column k0 (row i's values for k0..k1 are
// a[i * lda + 0 .. k1 - k0)).
//
// Blocking: rows in groups of kRowGroup, the reduction in blocks of
// kKBlock, so a kKBlock x 16 slice of the panel (16 KiB fp32) stays in L1
// while every row tile of the group uses it.
inline constexpr int64_t kRowGroup = 8 * kMr;
inline constexpr int64_t kKBlock = 256;

template <typename Epilogue>
void GemmPanel(int64_t m, const float* a, int64_t lda, const PackedMatrix& b,
               int64_t p, int64_t k0, int64_t k1, Epilogue&& epilogue) {
  alignas(64) float tiles[kRowGroup * kNr];
  const int64_t off = (p * b.k + k0) * kNr;
  for (int64_t g = 0; g < m; g += kRowGroup) {
    const int64_t gm = std::min(kRowGroup, m - g);
    for (int64_t kb = 0; kb < k1 - k0; kb += kKBlock) {
      const int64_t kn = std::min(kKBlock, k1 - k0 - kb);
      for (int64_t r = 0; r < gm; r += kMr) {
        const int mr = static_cast<int>(std::min<int64_t>(kMr, gm - r));
        const float* ar = a + (g + r) * lda + kb;
        float* c = tiles + r * kNr;
        if (b.dtype == WeightDtype::kFp32) {
          MicroKernel(mr, kn, ar, lda, b.f32.data() + off + kb * kNr, c,
                      kb > 0);
        } else {
          MicroKernel(mr, kn, ar, lda, b.bf16.data() + off + kb * kNr, c,
                      kb > 0);
        }
      }
    }
    if (k1 <= k0) std::fill(tiles, tiles + gm * kNr, 0.0f);
    for (int64_t r = 0; r < gm; r += kMr) {
      const int mr = static_cast<int>(std::min<int64_t>(kMr, gm - r));
      epilogue(g + r, mr, static_cast<const float*>(tiles + r * kNr));
    }
  }
}

// True when the AVX2/FMA kernel is in use.
bool MicroKernelIsAvx2();

namespace internal {
// Defined in gemm_kernel_avx2.cc (compiled with -mavx2 -mfma).
void MicroKernelAvx2(int mr, int64_t k, const float* a, int64_t lda,
                     const float* panel, float* c, bool accumulate);
void MicroKernelAvx2(int mr, int64_t k, const float* a, int64_t lda,
                     const uint16_t* panel, float* c, bool accumulate);
}  // namespace internal

}  // namespace dsec::moe

#endif  // DSEC_ROLLOUT_MOE_GEMM_KERNEL_H_
