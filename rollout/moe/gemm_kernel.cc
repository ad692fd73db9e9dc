#include "rollout/moe/gemm_kernel.h"

namespace dsec::moe {
namespace {

bool DetectAvx2() {
#if DSEC_MOE_HAVE_AVX2_KERNEL
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

const bool kUseAvx2 = DetectAvx2();

template <typename B>
float Widen(B v) {
  if constexpr (sizeof(B) == 2) {
    return Bf16ToFloat(v);
  } else {
    return v;
  }
}

template <typename B>
void MicroKernelScalar(int mr, int64_t k, const float* a, int64_t lda,
                       const B* panel, float* c, bool accumulate) {
  for (int i = 0; i < mr; ++i) {
    float acc[kNr] = {};
    if (accumulate) std::copy(c + i * kNr, c + (i + 1) * kNr, acc);
    for (int64_t kk = 0; kk < k; ++kk) {
      const float av = a[i * lda + kk];
      for (int j = 0; j < kNr; ++j) {
        acc[j] = std::fma(av, Widen(panel[kk * kNr + j]), acc[j]);
      }
    }
    for (int j = 0; j < kNr; ++j) c[i * kNr + j] = acc[j];
  }
}

// Generic packer: value(k, j) of panel p comes from source row `row(p, j)`
// (or zero when row < 0).
template <typename T, typename RowOf>
void PackInto(const T* src, int64_t k, int64_t panels, RowOf row_of,
              std::vector<T>& out) {
  out.assign(panels * k * kNr, T{});
  for (int64_t p = 0; p < panels; ++p) {
    T* dst = out.data() + p * k * kNr;
    for (int j = 0; j < kNr; ++j) {
      const int64_t row = row_of(p, j);
      if (row < 0) continue;
      const T* s = src + row * k;
      for (int64_t kk = 0; kk < k; ++kk) dst[kk * kNr + j] = s[kk];
    }
  }
}

template <typename RowOf>
PackedMatrix Pack(const WeightMatrix& w, int64_t n, int64_t panels,
                  RowOf row_of) {
  PackedMatrix m;
  m.n = n;
  m.k = w.cols;
  m.panels = panels;
  m.dtype = w.dtype;
  if (w.dtype == WeightDtype::kFp32) {
    PackInto(w.f32.data(), w.cols, panels, row_of, m.f32);
  } else {
    PackInto(w.bf16.data(), w.cols, panels, row_of, m.bf16);
  }
  return m;
}

}  // namespace

bool MicroKernelIsAvx2() { return kUseAvx2; }

void MicroKernel(int mr, int64_t k, const float* a, int64_t lda,
                 const float* panel, float* c, bool accumulate) {
  if (kUseAvx2) {
    return internal::MicroKernelAvx2(mr, k, a, lda, panel, c, accumulate);
  }
  MicroKernelScalar(mr, k, a, lda, panel, c, accumulate);
}

void MicroKernel(int mr, int64_t k, const float* a, int64_t lda,
                 const uint16_t* panel, float* c, bool accumulate) {
  if (kUseAvx2) {
    return internal::MicroKernelAvx2(mr, k, a, lda, panel, c, accumulate);
  }
  MicroKernelScalar(mr, k, a, lda, panel, c, accumulate);
}

PackedMatrix PackWeight(const WeightMatrix& w) {
  const int64_t n = w.rows;
  const int64_t panels = (n + kNr - 1) / kNr;
  return Pack(w, n, panels, [n](int64_t p, int j) {
    const int64_t r = p * kNr + j;
    return r < n ? r : -1;
  });
}

PackedMatrix PackRouter(const std::vector<float>& w, int64_t n, int64_t k) {
  WeightMatrix m;
  m.rows = n;
  m.cols = k;
  m.dtype = WeightDtype::kFp32;
  m.f32 = w;
  return PackWeight(m);
}

PackedMatrix PackGateUp(const WeightMatrix& w1, int64_t intermediate) {
  constexpr int kHalf = kNr / 2;
  const int64_t panels = (intermediate + kHalf - 1) / kHalf;
  return Pack(w1, panels * kNr, panels,
              [intermediate](int64_t p, int j) -> int64_t {
                const int64_t col = p * kHalf + j % kHalf;
                if (col >= intermediate) return -1;
                return j < kHalf ? col : intermediate + col;
              });
}

}  // namespace dsec::moe
