// The CUDA kernels of CudaMoe behind a plain C++ interface, so host code
// (cuda_moe.cc, built by the C++ compiler) never includes CUDA device
// headers and nvcc never parses Abseil. Internal to dsec_moe_cuda.
//
// Layout on the device (built by cuda_moe.cc):
//  - Experts are indexed 0..E+S-1: routed experts, then shared experts.
//  - w1 [E+S][2I][H] and w2 [E+S][H][I], row-major, fp32 or bf16 (uint16_t
//    bits); widened to fp32 in registers, accumulation in fp32.
//  - Pairs (token, expert) sorted by expert: routed pairs [0, T*k) exactly
//    as DispatchPlan orders them, then shared expert s's pairs
//    T*k + s*T + t (weight 1). pair_token / pair_weight per pair.
//  - A work item is up to kTileRows consecutive pairs of one expert.
//  - send [pairs][H]: pair p's weighted expert output (one writer per
//    element); the combine sums a token's rows in slot order, then shared.
#ifndef DSEC_ROLLOUT_MOE_CUDA_MOE_KERNELS_H_
#define DSEC_ROLLOUT_MOE_CUDA_MOE_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dsec::moe::cuda {

inline constexpr int kTileRows = 32;  // rows (pairs) per work item
inline constexpr int kTileCols = 64;  // output columns per CTA tile

struct WorkItem {
  int32_t expert;
  int32_t rows;   // 1..kTileRows
  int64_t pair0;  // first pair
};

struct MoeDims {
  int64_t hidden = 0;        // H
  int64_t intermediate = 0;  // I
  int64_t top_k = 0;
  int64_t num_tokens = 0;
  int64_t num_routed_pairs = 0;  // T * k
  int64_t num_shared = 0;        // S
  bool bf16 = false;             // weights are bf16 bits, else fp32
  float swiglu_limit = 0;        // kSwigluLimit (moe_config.h)
};

struct DeviceWeights {
  const void* w1 = nullptr;  // [E+S][2I][H]
  const void* w2 = nullptr;  // [E+S][H][I]
};

struct DeviceBatch {
  const float* hidden = nullptr;        // [T][H]
  const int32_t* pair_token = nullptr;  // [pairs]
  const float* pair_weight = nullptr;   // [pairs]
  const int64_t* slot_pair = nullptr;   // [T*k]: pair of (t, j)
  const WorkItem* items = nullptr;
  int64_t num_items = 0;
};

// Dynamic shared memory the fused kernel asks for, per CTA.
int64_t FusedSharedBytes(const MoeDims& d);
// Once per process and device: lets the fused kernel use more than 48 KiB.
cudaError_t PrepareFusedKernel(const MoeDims& d);

// Fused: per (work item, column split) one CTA; GEMM1 + clamped SwiGLU into
// shared memory, GEMM2 + routing weight into send. `splits` CTAs share a
// work item, each writing a disjoint range of output columns (GEMM1 is
// recomputed by each: it buys parallelism at small batch).
cudaError_t LaunchFused(const MoeDims& d, const DeviceWeights& w,
                        const DeviceBatch& b, int splits, float* send,
                        cudaStream_t stream);

// Unfused baseline, every stage materialized in global memory:
// permute -> GEMM1 -> SwiGLU -> GEMM2 (+ weight). Scratch: xp [pairs][H],
// h1 [pairs][2I], act [pairs][I].
cudaError_t LaunchUnfused(const MoeDims& d, const DeviceWeights& w,
                          const DeviceBatch& b, float* xp, float* h1,
                          float* act, float* send, cudaStream_t stream);

// out[t][c] = sum_j send[slot_pair[t*k+j]][c] + sum_s send[T*k+s*T+t][c].
cudaError_t LaunchCombine(const MoeDims& d, const DeviceBatch& b,
                          const float* send, float* out, cudaStream_t stream);

}  // namespace dsec::moe::cuda

#endif  // DSEC_ROLLOUT_MOE_CUDA_MOE_KERNELS_H_
