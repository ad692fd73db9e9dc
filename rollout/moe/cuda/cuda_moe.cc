// Host side of the CUDA MoE layers: validation, routing (on the CPU, see
// cuda_moe.h), the dispatch plan, uploads, kernel launches (moe_kernels.h)
// and the download. One Forward is synchronous: upload, kernels and the
// result copy on the legacy default stream of device 0.
#include "rollout/moe/cuda/cuda_moe.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "rollout/moe/cuda/moe_kernels.h"
#include "rollout/moe/moe_plan.h"
#include "rollout/moe/routing.h"
#include "rollout/moe/thread_pool.h"

namespace dsec::moe {
namespace {

constexpr int kDevice = 0;
constexpr int kMaxRouterThreads = 8;

absl::Status CudaStatus(cudaError_t err, absl::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string msg =
      absl::StrCat("cuda moe: ", what, ": ", cudaGetErrorName(err), " (",
                   cudaGetErrorString(err), ")");
  switch (err) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(msg);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

// A device allocation that only grows; contents are lost when it grows.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }

  absl::Status Reserve(size_t bytes, absl::string_view what) {
    if (bytes <= size_) return absl::OkStatus();
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    size_ = 0;
    RETURN_IF_ERROR(
        CudaStatus(cudaMalloc(&ptr_, bytes),
                   absl::StrCat("allocating ", bytes, " bytes for ", what)));
    size_ = bytes;
    return absl::OkStatus();
  }
  absl::Status Upload(const void* src, size_t bytes, absl::string_view what) {
    RETURN_IF_ERROR(Reserve(bytes, what));
    if (bytes == 0) return absl::OkStatus();
    return CudaStatus(cudaMemcpy(ptr_, src, bytes, cudaMemcpyHostToDevice),
                      absl::StrCat("uploading ", what));
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

bool SameConfig(const MoeConfig& a, const MoeConfig& b) {
  return a.hidden == b.hidden && a.num_experts == b.num_experts &&
         a.top_k == b.top_k && a.intermediate == b.intermediate &&
         a.num_shared_experts == b.num_shared_experts &&
         a.routed_scaling_factor == b.routed_scaling_factor &&
         a.scoring == b.scoring && a.normalize_top_k == b.normalize_top_k &&
         a.hash_routing == b.hash_routing && a.weight_dtype == b.weight_dtype;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

class CudaMoe final : public MoeLayer {
 public:
  enum class Kind { kFused, kUnfused };

  static absl::StatusOr<std::unique_ptr<MoeLayer>> Create(
      Kind kind, const MoeConfig& config, const MoeWeights& weights);

  absl::StatusOr<MoeOutput> Forward(const MoeInput& in) override;

 private:
  CudaMoe(Kind kind, const MoeWeights& weights,
          std::unique_ptr<ThreadPool> pool)
      : kind_(kind),
        config_(weights.config()),
        router_(weights),
        pool_(std::move(pool)) {}
  absl::Status Init(const MoeWeights& weights);

  const Kind kind_;
  const MoeConfig config_;
  const Router router_;
  std::unique_ptr<ThreadPool> pool_;  // routing on the host
  cuda::MoeDims dims_;
  int sm_count_ = 1;
  DeviceBuffer w1_, w2_;  // all experts, routed then shared

  std::mutex mu_;  // guards everything below for one Forward
  DispatchPlan plan_;
  std::vector<int32_t> pair_token_;
  std::vector<float> pair_weight_;
  std::vector<cuda::WorkItem> items_;
  DeviceBuffer d_hidden_, d_pair_token_, d_pair_weight_, d_slot_pair_, d_items_,
      d_send_, d_out_;
  DeviceBuffer d_xp_, d_h1_, d_act_;  // unfused only
};

absl::StatusOr<std::unique_ptr<MoeLayer>> CudaMoe::Create(
    Kind kind, const MoeConfig& config, const MoeWeights& weights) {
  RETURN_IF_ERROR(ValidateMoeConfig(config));
  if (!SameConfig(config, weights.config())) {
    return absl::InvalidArgumentError(
        "cuda moe: config differs from the weights' config");
  }
  if (!CudaAvailable()) {
    return absl::UnavailableError("cuda moe: no CUDA device");
  }
  const int threads =
      std::clamp<int>(static_cast<int>(std::thread::hardware_concurrency()), 1,
                      kMaxRouterThreads);
  ASSIGN_OR_RETURN(std::unique_ptr<ThreadPool> pool,
                   ThreadPool::Create(threads));
  std::unique_ptr<CudaMoe> layer(new CudaMoe(kind, weights, std::move(pool)));
  RETURN_IF_ERROR(layer->Init(weights));
  return std::unique_ptr<MoeLayer>(std::move(layer));
}

absl::Status CudaMoe::Init(const MoeWeights& weights) {
  const MoeConfig& c = config_;
  dims_.hidden = c.hidden;
  dims_.intermediate = c.intermediate;
  dims_.top_k = c.top_k;
  dims_.num_shared = c.num_shared_experts;
  dims_.bf16 = c.weight_dtype == WeightDtype::kBf16;
  dims_.swiglu_limit = kSwigluLimit;

  RETURN_IF_ERROR(CudaStatus(cudaSetDevice(kDevice), "selecting device"));
  RETURN_IF_ERROR(
      CudaStatus(cudaDeviceGetAttribute(
                     &sm_count_, cudaDevAttrMultiProcessorCount, kDevice),
                 "querying SM count"));
  if (kind_ == Kind::kFused) {
    RETURN_IF_ERROR(
        CudaStatus(cuda::PrepareFusedKernel(dims_),
                   absl::StrCat("reserving ", cuda::FusedSharedBytes(dims_),
                                " bytes of shared memory")));
  }

  const int64_t elem = dims_.bf16 ? 2 : 4;
  const int64_t w1_bytes = 2 * c.intermediate * c.hidden * elem;
  const int64_t w2_bytes = c.hidden * c.intermediate * elem;
  const int64_t n = c.num_experts + c.num_shared_experts;
  RETURN_IF_ERROR(w1_.Reserve(n * w1_bytes, "w1"));
  RETURN_IF_ERROR(w2_.Reserve(n * w2_bytes, "w2"));
  auto data = [](const WeightMatrix& m) -> const void* {
    return m.dtype == WeightDtype::kFp32
               ? static_cast<const void*>(m.f32.data())
               : m.bf16.data();
  };
  for (int64_t e = 0; e < n; ++e) {
    const ExpertWeights& ew = e < c.num_experts
                                  ? weights.expert(e)
                                  : weights.shared_expert(e - c.num_experts);
    RETURN_IF_ERROR(
        CudaStatus(cudaMemcpy(w1_.as<char>() + e * w1_bytes, data(ew.w1),
                              w1_bytes, cudaMemcpyHostToDevice),
                   "uploading w1"));
    RETURN_IF_ERROR(
        CudaStatus(cudaMemcpy(w2_.as<char>() + e * w2_bytes, data(ew.w2),
                              w2_bytes, cudaMemcpyHostToDevice),
                   "uploading w2"));
  }
  return absl::OkStatus();
}

absl::StatusOr<MoeOutput> CudaMoe::Forward(const MoeInput& in) {
  RETURN_IF_ERROR(ValidateForwardInput(config_, in.hidden, in.num_tokens,
                                       in.token_ids, in.forced_routing));
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t t_count = in.num_tokens, h = config_.hidden,
                e_count = config_.num_experts,
                s_count = config_.num_shared_experts;
  MoeOutput out;
  out.routing =
      in.forced_routing != nullptr
          ? *in.forced_routing
          : router_.Route(in.hidden, t_count, in.token_ids, pool_.get());
  out.hidden.resize(t_count * h);
  if (t_count == 0) return out;

  // Pairs: the routed ones as DispatchPlan orders them, then per shared
  // expert one pair per token (weight 1). Work items: kTileRows pairs of
  // one expert, expert by expert.
  plan_.Build(out.routing, e_count);
  const int64_t routed = plan_.num_pairs();
  const int64_t pairs = routed + s_count * t_count;
  pair_token_.assign(plan_.pair_token.begin(), plan_.pair_token.end());
  pair_weight_.assign(plan_.pair_weight.begin(), plan_.pair_weight.end());
  items_.clear();
  auto add_items = [&](int64_t expert, int64_t begin, int64_t n) {
    for (int64_t r = 0; r < n; r += cuda::kTileRows) {
      items_.push_back(
          {static_cast<int32_t>(expert),
           static_cast<int32_t>(std::min<int64_t>(cuda::kTileRows, n - r)),
           begin + r});
    }
  };
  for (int64_t e = 0; e < e_count; ++e) {
    add_items(e, plan_.expert_begin[e],
              plan_.expert_begin[e + 1] - plan_.expert_begin[e]);
  }
  for (int64_t s = 0; s < s_count; ++s) {
    for (int64_t t = 0; t < t_count; ++t) {
      pair_token_.push_back(static_cast<int32_t>(t));
      pair_weight_.push_back(1.0f);
    }
    add_items(e_count + s, routed + s * t_count, t_count);
  }

  RETURN_IF_ERROR(CudaStatus(cudaSetDevice(kDevice), "selecting device"));
  RETURN_IF_ERROR(
      d_hidden_.Upload(in.hidden.data(), in.hidden.size() * 4, "hidden"));
  RETURN_IF_ERROR(
      d_pair_token_.Upload(pair_token_.data(), pairs * 4, "pair tokens"));
  RETURN_IF_ERROR(
      d_pair_weight_.Upload(pair_weight_.data(), pairs * 4, "pair weights"));
  RETURN_IF_ERROR(d_slot_pair_.Upload(plan_.slot_pair.data(),
                                      plan_.slot_pair.size() * 8, "slots"));
  RETURN_IF_ERROR(d_items_.Upload(
      items_.data(), items_.size() * sizeof(cuda::WorkItem), "work items"));
  RETURN_IF_ERROR(d_send_.Reserve(pairs * h * 4, "send"));
  RETURN_IF_ERROR(d_out_.Reserve(t_count * h * 4, "output"));

  cuda::MoeDims dims = dims_;
  dims.num_tokens = t_count;
  dims.num_routed_pairs = routed;
  const cuda::DeviceWeights w{w1_.as<void>(), w2_.as<void>()};
  const cuda::DeviceBatch b{
      d_hidden_.as<float>(),         d_pair_token_.as<int32_t>(),
      d_pair_weight_.as<float>(),    d_slot_pair_.as<int64_t>(),
      d_items_.as<cuda::WorkItem>(), static_cast<int64_t>(items_.size())};
  if (kind_ == Kind::kFused) {
    // Small batches have few work items: split each item's output columns
    // over several CTAs so that about two CTAs per SM are in flight.
    const int64_t items = std::max<int64_t>(1, items_.size());
    const int splits = static_cast<int>(std::clamp<int64_t>(
        CeilDiv(2 * sm_count_, items), 1, CeilDiv(h, cuda::kTileCols)));
    RETURN_IF_ERROR(CudaStatus(
        cuda::LaunchFused(dims, w, b, splits, d_send_.as<float>(), nullptr),
        "launching fused kernel"));
  } else {
    const int64_t inter = config_.intermediate;
    RETURN_IF_ERROR(d_xp_.Reserve(pairs * h * 4, "permuted input"));
    RETURN_IF_ERROR(d_h1_.Reserve(pairs * 2 * inter * 4, "gate/up"));
    RETURN_IF_ERROR(d_act_.Reserve(pairs * inter * 4, "activation"));
    RETURN_IF_ERROR(CudaStatus(
        cuda::LaunchUnfused(dims, w, b, d_xp_.as<float>(), d_h1_.as<float>(),
                            d_act_.as<float>(), d_send_.as<float>(), nullptr),
        "launching unfused kernels"));
  }
  RETURN_IF_ERROR(CudaStatus(cuda::LaunchCombine(dims, b, d_send_.as<float>(),
                                                 d_out_.as<float>(), nullptr),
                             "launching combine"));
  RETURN_IF_ERROR(
      CudaStatus(cudaMemcpy(out.hidden.data(), d_out_.as<float>(),
                            t_count * h * 4, cudaMemcpyDeviceToHost),
                 "running kernels / downloading output"));
  return out;
}

}  // namespace

bool CudaAvailable() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear it; nothing else to report
    return false;
  }
  return count > 0;
}

absl::StatusOr<std::unique_ptr<MoeLayer>> MakeCudaFusedMoe(
    const MoeConfig& config, const MoeWeights& weights) {
  return CudaMoe::Create(CudaMoe::Kind::kFused, config, weights);
}

absl::StatusOr<std::unique_ptr<MoeLayer>> MakeCudaUnfusedMoe(
    const MoeConfig& config, const MoeWeights& weights) {
  return CudaMoe::Create(CudaMoe::Kind::kUnfused, config, weights);
}

}  // namespace dsec::moe
