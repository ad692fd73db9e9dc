// AVX2/FMA 6x16 micro-kernel. This file alone is compiled with -mavx2
// -mfma; it is only called after gemm_kernel.cc checked the CPU.
#include "rollout/moe/gemm_kernel.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace dsec::moe::internal {
namespace {

inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 Load8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <int MR, typename B>
void Kernel(int64_t k, const float* a, int64_t lda, const B* panel, float* c,
            bool accumulate) {
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    c0[i] = accumulate ? _mm256_loadu_ps(c + i * kNr) : _mm256_setzero_ps();
    c1[i] = accumulate ? _mm256_loadu_ps(c + i * kNr + 8) : _mm256_setzero_ps();
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m256 b0 = Load8(panel + kk * kNr);
    const __m256 b1 = Load8(panel + kk * kNr + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + i * lda + kk);
      c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(c + i * kNr, c0[i]);
    _mm256_storeu_ps(c + i * kNr + 8, c1[i]);
  }
}

template <typename B>
void Dispatch(int mr, int64_t k, const float* a, int64_t lda, const B* panel,
              float* c, bool acc) {
  switch (mr) {
    case 1:
      return Kernel<1>(k, a, lda, panel, c, acc);
    case 2:
      return Kernel<2>(k, a, lda, panel, c, acc);
    case 3:
      return Kernel<3>(k, a, lda, panel, c, acc);
    case 4:
      return Kernel<4>(k, a, lda, panel, c, acc);
    case 5:
      return Kernel<5>(k, a, lda, panel, c, acc);
    default:
      return Kernel<6>(k, a, lda, panel, c, acc);
  }
}

}  // namespace

void MicroKernelAvx2(int mr, int64_t k, const float* a, int64_t lda,
                     const float* panel, float* c, bool accumulate) {
  Dispatch(mr, k, a, lda, panel, c, accumulate);
}

void MicroKernelAvx2(int mr, int64_t k, const float* a, int64_t lda,
                     const uint16_t* panel, float* c, bool accumulate) {
  Dispatch(mr, k, a, lda, panel, c, accumulate);
}

}  // namespace dsec::moe::internal

#else  // no AVX2 at compile time: never selected (see DetectAvx2).
#include <cstdlib>

namespace dsec::moe::internal {
void MicroKernelAvx2(int, int64_t, const float*, int64_t, const float*, float*,
                     bool) {
  std::abort();
}
void MicroKernelAvx2(int, int64_t, const float*, int64_t, const uint16_t*,
                     float*, bool) {
  std::abort();
}
}  // namespace dsec::moe::internal
#endif
