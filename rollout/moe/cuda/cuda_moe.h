// CUDA implementations of moe::MoeLayer (built only when nvcc is present;
// see cmake/DsecCuda.cmake): CudaFusedMoe ("MegaMoE" on the GPU) and an
// unfused baseline that materializes every stage, for comparison.
//
// Semantics are FusedMoe's (moe_layer.h): same config, weights, input,
// output and RoutingInfo; fp32 and bf16 weights; clamped SwiGLU; routed
// scaling; shared experts; forced routing replay.
//
// Routing runs on the host with the CPU Router (routing.h), then the
// decisions are uploaded: RoutingInfo is therefore bitwise identical to
// every CPU implementation (a GPU router would differ in float rounding and
// could pick different experts on near-ties), and a RoutingInfo replays
// exactly across CPU and GPU layers.
//
// Numerics: SIMT fp32 FMA accumulation (bf16 weights widened exactly), so
// the CPU bound kMoeTolerance holds; only summation order differs. The
// combine is deterministic (no atomics): results are bitwise reproducible
// run to run on one GPU.
//
// Ownership: the layer copies the weights to the device at creation (the
// MoeWeights may be dropped) and owns its device buffers. Forward is
// thread-safe (calls on one layer are serialized) and synchronous.
#ifndef DSEC_ROLLOUT_MOE_CUDA_CUDA_MOE_H_
#define DSEC_ROLLOUT_MOE_CUDA_CUDA_MOE_H_

#include <memory>

#include "absl/status/statusor.h"
#include "rollout/moe/moe_config.h"
#include "rollout/moe/moe_layer.h"
#include "rollout/moe/moe_weights.h"

namespace dsec::moe {

// True when the CUDA runtime finds at least one device.
bool CudaAvailable();

// Agreement with ReferenceMoe, same form as kMoeTolerance (moe_layer.h).
inline constexpr double kCudaMoeTolerance = kMoeTolerance;

// The fused layer on device 0. REQUIRES: config equals weights.config()
// (else InvalidArgument). UNAVAILABLE ("no CUDA device") when the runtime
// finds no GPU; RESOURCE_EXHAUSTED when the weights do not fit.
absl::StatusOr<std::unique_ptr<MoeLayer>> MakeCudaFusedMoe(
    const MoeConfig& config, const MoeWeights& weights);

// The unfused baseline (permute -> GEMM1 -> SwiGLU -> GEMM2 -> combine,
// each stage a kernel writing global memory). Same contract.
absl::StatusOr<std::unique_ptr<MoeLayer>> MakeCudaUnfusedMoe(
    const MoeConfig& config, const MoeWeights& weights);

}  // namespace dsec::moe

#endif  // DSEC_ROLLOUT_MOE_CUDA_CUDA_MOE_H_
