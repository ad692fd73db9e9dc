// SIMT kernels of CudaMoe (see moe_kernels.h for the data layout).
//
// One building block, TileMma: a CTA of 256 threads computes a
// kTileRows x kTileCols fp32 tile C = A * W^T, staging kBk-deep slices of A
// (through a row functor: gathered hidden rows, or the activation tile in
// shared memory) and of W (bf16 widened exactly) through shared memory.
// Thread (tx, ty) = (tid % 16, tid / 16) owns rows ty, ty + 16 and columns
// tx + 16 j, j < 4; every element is one fmaf chain in k order.
//
// Fused kernel, per (work item, column split):
//   for each chunk of up to kActCols intermediate columns:
//     GEMM1: 32 gate rows and the matching 32 up rows of w1 form one
//       64-column tile, so a thread holds gate and up of the same two
//       intermediate columns and applies the clamped SwiGLU in registers;
//       the result goes to the activation tile in shared memory (never to
//       global memory).
//     GEMM2: this split's output columns, A = the activation tile; the
//       epilogue scales by the routing weight and stores (first chunk) or
//       adds (later chunks) into the pair's row of send. Every send element
//       has exactly one writer CTA, so there are no atomics and the result
//       is deterministic.
// Waves: work items are ordered expert by expert, and the hardware issues
// CTAs in blockIdx order, so the CTAs resident at a time cover a few
// consecutive experts; an expert's weights are read from DRAM once and its
// other tiles hit L2.
#include "rollout/moe/cuda/moe_kernels.h"

#include <cuda_runtime.h>

namespace dsec::moe::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kBk = 32;        // reduction slice staged in shared memory
constexpr int kActCols = 512;  // intermediate columns per fused chunk
constexpr int kHalf = kTileCols / 2;
static_assert(kThreads == 16 * (kTileRows / 2), "thread/row mapping");
static_assert(kTileCols == 16 * 4, "thread/column mapping");

__device__ __forceinline__ float Widen(float v) { return v; }
__device__ __forceinline__ float Widen(uint16_t v) {
  return __uint_as_float(static_cast<uint32_t>(v) << 16);
}

// Written as std::min / std::clamp evaluate (moe/gemm_kernel.h SwiGlu).
__device__ __forceinline__ float SwiGlu(float gate, float up, float limit) {
  gate = limit < gate ? limit : gate;
  up = up < -limit ? -limit : (limit < up ? limit : up);
  return gate / (1.0f + expf(-gate)) * up;
}

struct Stage {
  float a[kBk][kTileRows + 1];
  float w[kBk][kTileCols + 1];
};

// acc[i][j] += sum_{k < k_len} A(ty + 16 i, k) * W(tx + 16 j, k), where
// a_val(r, k) gives A and w_row(n) points at W's row n (nullptr: zeros).
template <typename W, typename AVal, typename WRow>
__device__ __forceinline__ void TileMma(int64_t k_len, AVal a_val, WRow w_row,
                                        Stage& s, float (&acc)[2][4]) {
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  for (int64_t k0 = 0; k0 < k_len; k0 += kBk) {
#pragma unroll
    for (int q = 0; q < kTileRows * kBk / kThreads; ++q) {
      const int idx = tid + q * kThreads, r = idx / kBk, kk = idx % kBk;
      s.a[kk][r] = k0 + kk < k_len ? a_val(r, k0 + kk) : 0.0f;
    }
#pragma unroll
    for (int q = 0; q < kTileCols * kBk / kThreads; ++q) {
      const int idx = tid + q * kThreads, n = idx / kBk, kk = idx % kBk;
      const W* p = w_row(n);
      s.w[kk][n] = p != nullptr && k0 + kk < k_len ? Widen(p[k0 + kk]) : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kBk; ++kk) {
      const float a0 = s.a[kk][ty], a1 = s.a[kk][ty + 16];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float b = s.w[kk][tx + 16 * j];
        acc[0][j] = fmaf(a0, b, acc[0][j]);
        acc[1][j] = fmaf(a1, b, acc[1][j]);
      }
    }
    __syncthreads();
  }
}

template <typename W>
__global__ void __launch_bounds__(kThreads)
    FusedKernel(MoeDims d, const W* w1, const W* w2, DeviceBatch b,
                float* send) {
  extern __shared__ float act[];  // [kTileRows][act_ld]
  __shared__ Stage s;
  __shared__ const float* rows[kTileRows];
  __shared__ float weight[kTileRows];
  const WorkItem item = b.items[blockIdx.x];
  const int64_t h = d.hidden, inter = d.intermediate;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  if (tid < kTileRows) {
    const bool live = tid < item.rows;
    rows[tid] =
        live ? b.hidden + int64_t{b.pair_token[item.pair0 + tid]} * h : nullptr;
    weight[tid] = live ? b.pair_weight[item.pair0 + tid] : 0.0f;
  }
  __syncthreads();
  const W* ew1 = w1 + int64_t{item.expert} * 2 * inter * h;
  const W* ew2 = w2 + int64_t{item.expert} * h * inter;
  const int64_t act_ld = inter < kActCols ? inter : kActCols;

  for (int64_t c0 = 0; c0 < inter; c0 += kActCols) {
    const int64_t cn = inter - c0 < kActCols ? inter - c0 : kActCols;
    // GEMM1 + SwiGLU: kHalf gate rows and the same kHalf up rows per tile.
    for (int64_t i0 = 0; i0 < cn; i0 += kHalf) {
      float acc[2][4] = {};
      TileMma<W>(
          h,
          [&](int r, int64_t k) {
            const float* x = rows[r];
            return x != nullptr ? x[k] : 0.0f;
          },
          [&](int n) -> const W* {
            const int64_t i = i0 + (n % kHalf);
            if (i >= cn) return nullptr;
            return ew1 + ((n < kHalf ? 0 : inter) + c0 + i) * h;
          },
          s, acc);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int64_t col = i0 + tx + 16 * j;
          if (col < cn) {
            act[(ty + 16 * i) * act_ld + col] =
                SwiGlu(acc[i][j], acc[i][j + 2], d.swiglu_limit);
          }
        }
      }
    }
    __syncthreads();
    // GEMM2 over this chunk, for this split's output columns.
    for (int64_t h0 = int64_t{blockIdx.y} * kTileCols; h0 < h;
         h0 += int64_t{gridDim.y} * kTileCols) {
      float acc[2][4] = {};
      TileMma<W>(
          cn, [&](int r, int64_t k) { return act[r * act_ld + k]; },
          [&](int n) -> const W* {
            return h0 + n < h ? ew2 + (h0 + n) * inter + c0 : nullptr;
          },
          s, acc);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = ty + 16 * i;
        if (r >= item.rows) continue;
        float* dst = send + (item.pair0 + r) * h;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t col = h0 + tx + 16 * j;
          if (col < h) {
            const float v = weight[r] * acc[i][j];
            dst[col] = c0 == 0 ? v : dst[col] + v;
          }
        }
      }
    }
    __syncthreads();  // the next chunk overwrites act
  }
}

// C[pair0 + r][n0 + j] = scale * (A[pair0 + r] . W_e[n0 + j]) for one work
// item (blockIdx.x) and one column tile (blockIdx.y).
template <typename W>
__global__ void __launch_bounds__(kThreads)
    GroupedGemmKernel(const WorkItem* items, const float* a, int64_t lda,
                      const W* w, int64_t w_stride, int64_t n, int64_t k,
                      float* c, int64_t ldc, const float* row_scale) {
  __shared__ Stage s;
  const WorkItem item = items[blockIdx.x];
  const int64_t n0 = int64_t{blockIdx.y} * kTileCols;
  const float* a0 = a + item.pair0 * lda;
  const W* we = w + int64_t{item.expert} * w_stride;
  float acc[2][4] = {};
  TileMma<W>(
      k,
      [&](int r, int64_t kk) {
        return r < item.rows ? a0[r * lda + kk] : 0.0f;
      },
      [&](int nn) -> const W* {
        return n0 + nn < n ? we + (n0 + nn) * k : nullptr;
      },
      s, acc);
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = ty + 16 * i;
    if (r >= item.rows) continue;
    const int64_t p = item.pair0 + r;
    const float scale = row_scale != nullptr ? row_scale[p] : 1.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = n0 + tx + 16 * j;
      if (col < n) c[p * ldc + col] = scale * acc[i][j];
    }
  }
}

__global__ void PermuteKernel(const float* hidden, const int32_t* pair_token,
                              int64_t pairs, int64_t h, float* xp) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
       i < pairs * h; i += int64_t{gridDim.x} * blockDim.x) {
    xp[i] = hidden[int64_t{pair_token[i / h]} * h + i % h];
  }
}

__global__ void SwiGluKernel(const float* h1, int64_t pairs, int64_t inter,
                             float limit, float* act) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
       i < pairs * inter; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t p = i / inter, c = i % inter;
    act[i] =
        SwiGlu(h1[p * 2 * inter + c], h1[p * 2 * inter + inter + c], limit);
  }
}

__global__ void CombineKernel(MoeDims d, const int64_t* slot_pair,
                              const float* send, float* out) {
  const int64_t h = d.hidden, t_count = d.num_tokens, k = d.top_k;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
       i < t_count * h; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / h, c = i % h;
    float y = 0;
    for (int64_t j = 0; j < k; ++j) y += send[slot_pair[t * k + j] * h + c];
    for (int64_t s = 0; s < d.num_shared; ++s) {
      y += send[(d.num_routed_pairs + s * t_count + t) * h + c];
    }
    out[i] = y;
  }
}

unsigned ElementwiseBlocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65536 ? (blocks > 0 ? blocks : 1)
                                              : 65536);
}

template <typename W>
cudaError_t Fused(const MoeDims& d, const DeviceWeights& w,
                  const DeviceBatch& b, int splits, float* send,
                  cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(b.num_items),
                  static_cast<unsigned>(splits));
  FusedKernel<W><<<grid, kThreads, FusedSharedBytes(d), stream>>>(
      d, static_cast<const W*>(w.w1), static_cast<const W*>(w.w2), b, send);
  return cudaGetLastError();
}

template <typename W>
cudaError_t Unfused(const MoeDims& d, const DeviceWeights& w,
                    const DeviceBatch& b, float* xp, float* h1, float* act,
                    float* send, cudaStream_t stream) {
  const int64_t h = d.hidden, inter = d.intermediate;
  const int64_t pairs = d.num_routed_pairs + d.num_shared * d.num_tokens;
  PermuteKernel<<<ElementwiseBlocks(pairs * h), kThreads, 0, stream>>>(
      b.hidden, b.pair_token, pairs, h, xp);
  const unsigned items = static_cast<unsigned>(b.num_items);
  GroupedGemmKernel<W>
      <<<dim3(items,
              static_cast<unsigned>((2 * inter + kTileCols - 1) / kTileCols)),
         kThreads, 0, stream>>>(b.items, xp, h, static_cast<const W*>(w.w1),
                                2 * inter * h, 2 * inter, h, h1, 2 * inter,
                                nullptr);
  SwiGluKernel<<<ElementwiseBlocks(pairs * inter), kThreads, 0, stream>>>(
      h1, pairs, inter, d.swiglu_limit, act);
  GroupedGemmKernel<W>
      <<<dim3(items, static_cast<unsigned>((h + kTileCols - 1) / kTileCols)),
         kThreads, 0, stream>>>(b.items, act, inter,
                                static_cast<const W*>(w.w2), h * inter, h,
                                inter, send, h, b.pair_weight);
  return cudaGetLastError();
}

}  // namespace

int64_t FusedSharedBytes(const MoeDims& d) {
  const int64_t cols = d.intermediate < kActCols ? d.intermediate : kActCols;
  return kTileRows * cols * static_cast<int64_t>(sizeof(float));
}

cudaError_t PrepareFusedKernel(const MoeDims& d) {
  const int bytes = static_cast<int>(FusedSharedBytes(d));
  cudaError_t err = cudaFuncSetAttribute(
      FusedKernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err != cudaSuccess) return err;
  return cudaFuncSetAttribute(FusedKernel<uint16_t>,
                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                              bytes);
}

cudaError_t LaunchFused(const MoeDims& d, const DeviceWeights& w,
                        const DeviceBatch& b, int splits, float* send,
                        cudaStream_t stream) {
  if (b.num_items == 0) return cudaSuccess;
  return d.bf16 ? Fused<uint16_t>(d, w, b, splits, send, stream)
                : Fused<float>(d, w, b, splits, send, stream);
}

cudaError_t LaunchUnfused(const MoeDims& d, const DeviceWeights& w,
                          const DeviceBatch& b, float* xp, float* h1,
                          float* act, float* send, cudaStream_t stream) {
  if (b.num_items == 0) return cudaSuccess;
  return d.bf16 ? Unfused<uint16_t>(d, w, b, xp, h1, act, send, stream)
                : Unfused<float>(d, w, b, xp, h1, act, send, stream);
}

cudaError_t LaunchCombine(const MoeDims& d, const DeviceBatch& b,
                          const float* send, float* out, cudaStream_t stream) {
  if (d.num_tokens == 0) return cudaSuccess;
  CombineKernel<<<ElementwiseBlocks(d.num_tokens * d.hidden), kThreads, 0,
                  stream>>>(d, b.slot_pair, send, out);
  return cudaGetLastError();
}

}  // namespace dsec::moe::cuda
