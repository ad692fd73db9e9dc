// The MoE layer at a scaled-down DeepSeek-V4-Flash shape (hidden 1024, 64
// routed experts, top-6, intermediate 512, one shared expert): FusedMoe
// ("MegaMoE") against UnfusedMoe in the same run, samples interleaved, for
// each batch size. Baselines measured in the same run:
//   read bw   summing a 1 GiB buffer with the same number of threads
//   fma peak  independent AVX2 FMA chains, best of 1 and N threads
// Reports per batch: median ms of each path, fused/unfused speedup, the
// fused path's weight bytes per second vs read bw (what matters at small
// batch) and its GFLOP/s vs fma peak (what matters at large batch).
//
// When built with CUDA (dsec_moe_cuda) and a device is present, a second
// table compares CudaFusedMoe with the CUDA unfused baseline. Those rows
// replay a routing recorded once per input (the router runs on the host in
// both, see cuda_moe.h), so they time upload + kernels + download.
//
//   build/bench/moe_bench [--threads 2] [--batches 1,8,64,512,4096]
//                         [--dtype fp32|bf16] [--ranks 1] [--min_ms 300]
//                         [--cpu=false] [--cuda=false]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "rollout/moe/fused_moe.h"
#include "rollout/moe/gemm_kernel.h"
#include "rollout/moe/unfused_moe.h"

#if DSEC_MOE_HAVE_CUDA
#include "rollout/moe/cuda/cuda_moe.h"
#endif

#if defined(__x86_64__)
#include <immintrin.h>
#endif

ABSL_FLAG(int, threads, 2, "worker threads for both paths");
ABSL_FLAG(std::string, batches, "1,8,64,512,4096", "token counts");
ABSL_FLAG(std::string, dtype, "fp32", "expert weight dtype: fp32 or bf16");
ABSL_FLAG(int, ranks, 1, "simulated expert-parallel ranks");
ABSL_FLAG(int, min_ms, 300, "minimum measuring time per path and batch");
ABSL_FLAG(int, min_samples, 5, "minimum samples per path and batch");
ABSL_FLAG(bool, cpu, true, "run the CPU fused/unfused rows");
ABSL_FLAG(bool, cuda, true,
          "run the CUDA fused/unfused rows (when built and a GPU exists)");

namespace {

using namespace dsec::moe;  // NOLINT: a benchmark's main file
using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// GB/s reading a 1 GiB buffer, `threads` threads each summing a slice.
double MeasureReadBandwidth(int threads) {
  const size_t n = (size_t{1} << 30) / sizeof(uint64_t);
  std::vector<uint64_t> buf(n);
  for (size_t i = 0; i < n; ++i) buf[i] = i;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::atomic<uint64_t> sink{0};
    const auto t0 = Clock::now();
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        const size_t lo = n * t / threads, hi = n * (t + 1) / threads;
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (size_t i = lo; i + 4 <= hi; i += 4) {
          s0 += buf[i];
          s1 += buf[i + 1];
          s2 += buf[i + 2];
          s3 += buf[i + 3];
        }
        sink += s0 + s1 + s2 + s3;
      });
    }
    for (auto& t : ts) t.join();
    const double s = Ms(Clock::now() - t0) / 1e3;
    best = std::max(best, (n * sizeof(uint64_t)) / s / 1e9);
    if (sink.load() == 42) std::printf(" ");
  }
  return best;
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) double FmaLoop(int64_t iters) {
  __m256 acc[10];
  for (int i = 0; i < 10; ++i) acc[i] = _mm256_set1_ps(0.001f * i);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 10
    for (int i = 0; i < 10; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  float out[8];
  __m256 s = acc[0];
  for (int i = 1; i < 10; ++i) s = _mm256_add_ps(s, acc[i]);
  _mm256_storeu_ps(out, s);
  return out[0];
}
#endif

// GFLOP/s of independent FMA chains on `threads` threads (0 without AVX2).
double MeasureFmaPeak(int threads) {
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    return 0;
  }
  const int64_t iters = 20'000'000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::atomic<double> sink{0};
    const auto t0 = Clock::now();
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&] { sink = sink + FmaLoop(iters); });
    }
    for (auto& t : ts) t.join();
    const double s = Ms(Clock::now() - t0) / 1e3;
    best = std::max(best, threads * iters * 10.0 * 8 * 2 / s / 1e9);
  }
  return best;
#else
  return 0;
#endif
}

#if DSEC_MOE_HAVE_CUDA
// CUDA fused vs unfused per batch, routing recorded once per input and
// replayed (identical work for both; no host router in the timing).
void RunCudaRows(const MoeConfig& config, MoeLayer& fused, MoeLayer& unfused,
                 const std::vector<int64_t>& batches) {
  const double expert_bytes =
      3.0 * config.intermediate * config.hidden *
      (config.weight_dtype == WeightDtype::kBf16 ? 2 : 4);
  std::printf(
      "cuda: CudaFusedMoe vs CUDA unfused (routing replayed; upload + "
      "kernels + download)\n");
  std::printf("%6s %11s %11s %8s %10s %10s\n", "batch", "fused ms",
              "unfused ms", "speedup", "wt GB/s", "GFLOP/s");
  const int64_t min_ms = absl::GetFlag(FLAGS_min_ms);
  const int min_samples = absl::GetFlag(FLAGS_min_samples);
  for (int64_t t_count : batches) {
    constexpr int kInputs = 8;
    std::vector<std::vector<float>> inputs(kInputs);
    std::vector<RoutingInfo> routings(kInputs);
    std::vector<double> bytes(kInputs);
    std::mt19937_64 rng(t_count);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    for (int i = 0; i < kInputs; ++i) {
      inputs[i].resize(t_count * config.hidden);
      for (float& v : inputs[i]) v = d(rng);
      routings[i] =
          dsec::bench::OrDie(fused.Forward({t_count, inputs[i], {}, nullptr}))
              .routing;
      std::set<int32_t> used(routings[i].experts.begin(),
                             routings[i].experts.end());
      bytes[i] = (used.size() + config.num_shared_experts) * expert_bytes;
    }
    dsec::bench::OrDie(unfused.Forward({t_count, inputs[0], {}, &routings[0]}));
    std::vector<double> tf, tu;
    double bytes_sum = 0;
    const auto start = Clock::now();
    for (int s = 0; static_cast<int>(tf.size()) < min_samples ||
                    Ms(Clock::now() - start) < 2 * min_ms;
         ++s) {
      const MoeInput in{
          t_count, inputs[s % kInputs], {}, &routings[s % kInputs]};
      auto t0 = Clock::now();
      dsec::bench::OrDie(fused.Forward(in));
      tf.push_back(Ms(Clock::now() - t0));
      t0 = Clock::now();
      dsec::bench::OrDie(unfused.Forward(in));
      tu.push_back(Ms(Clock::now() - t0));
      bytes_sum += bytes[s % kInputs];
    }
    const double mf = Median(tf), mu = Median(tu);
    const double flops = 2.0 * t_count *
                         (config.top_k + config.num_shared_experts) * 3.0 *
                         config.intermediate * config.hidden;
    std::printf("%6lld %11.3f %11.3f %7.2fx %10.1f %10.1f\n",
                (long long)t_count, mf, mu, mu / mf,
                bytes_sum / tf.size() / (mf / 1e3) / 1e9,
                flops / (mf / 1e3) / 1e9);
    std::fflush(stdout);
  }
}
#endif

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int threads = absl::GetFlag(FLAGS_threads);
  std::vector<int64_t> batches;
  for (absl::string_view s :
       absl::StrSplit(absl::GetFlag(FLAGS_batches), ',')) {
    int64_t b;
    if (!absl::SimpleAtoi(s, &b) || b <= 0) {
      std::fprintf(stderr, "moe_bench: bad batch '%s'\n",
                   std::string(s).c_str());
      return 1;
    }
    batches.push_back(b);
  }

  MoeConfig config;
  config.hidden = 1024;
  config.num_experts = 64;
  config.top_k = 6;
  config.intermediate = 512;
  config.num_shared_experts = 1;
  config.routed_scaling_factor = 1.5f;
  config.scoring = ScoringFunc::kSqrtSoftplus;
  config.weight_dtype = absl::GetFlag(FLAGS_dtype) == "bf16"
                            ? WeightDtype::kBf16
                            : WeightDtype::kFp32;
  MoeRunOptions options;
  options.num_threads = threads;
  options.num_ranks = absl::GetFlag(FLAGS_ranks);

  auto weights = std::make_shared<const MoeWeights>(
      dsec::bench::OrDie(MoeWeights::Random(config, 1)));
#if DSEC_MOE_HAVE_CUDA
  // Created first: the CUDA layers copy the weights to the device.
  std::unique_ptr<MoeLayer> cuda_fused, cuda_unfused;
  if (absl::GetFlag(FLAGS_cuda)) {
    if (CudaAvailable()) {
      cuda_fused = dsec::bench::OrDie(MakeCudaFusedMoe(config, *weights));
      cuda_unfused = dsec::bench::OrDie(MakeCudaUnfusedMoe(config, *weights));
    } else {
      std::printf("cuda: no CUDA device; CUDA rows skipped\n");
    }
  }
#endif
  if (absl::GetFlag(FLAGS_cpu)) {
    const double read_gbs = MeasureReadBandwidth(threads);
    const double fma1 = MeasureFmaPeak(1);
    const double fman = MeasureFmaPeak(threads);
    const double peak = std::max(fma1, fman);

    auto fused = dsec::bench::OrDie(FusedMoe::Create(weights, options));
    auto unfused = dsec::bench::OrDie(UnfusedMoe::Create(weights, options));
    const PackedMoe packed(*weights);
    const double expert_bytes = packed.ExpertBytes();
    const double router_bytes = config.num_experts * config.hidden * 4.0;

    std::printf(
        "moe_bench: H=%lld E=%lld top-%lld I=%lld shared=%lld dtype=%s "
        "threads=%d ranks=%d avx2=%d\n",
        (long long)config.hidden, (long long)config.num_experts,
        (long long)config.top_k, (long long)config.intermediate,
        (long long)config.num_shared_experts,
        absl::GetFlag(FLAGS_dtype).c_str(), threads, options.num_ranks,
        MicroKernelIsAvx2());
    std::printf(
        "baselines: read %.1f GB/s (%d threads, 1 GiB sum); fma peak %.1f "
        "GFLOP/s (1 thread %.1f, %d threads %.1f)\n",
        read_gbs, threads, peak, fma1, threads, fman);
    std::printf("%6s %11s %11s %8s %10s %8s %10s %8s\n", "batch", "fused ms",
                "unfused ms", "speedup", "wt GB/s", "of bw", "GFLOP/s",
                "of peak");

    const int64_t min_ms = absl::GetFlag(FLAGS_min_ms);
    const int min_samples = absl::GetFlag(FLAGS_min_samples);
    for (int64_t t_count : batches) {
      constexpr int kInputs = 8;  // rotate inputs so routing (and cache) varies
      std::vector<std::vector<float>> inputs(kInputs);
      std::mt19937_64 rng(t_count);
      std::uniform_real_distribution<float> d(-1.0f, 1.0f);
      for (auto& x : inputs) {
        x.resize(t_count * config.hidden);
        for (float& v : x) v = d(rng);
      }
      // Weight bytes each input touches: distinct routed experts + shared +
      // router.
      std::vector<double> bytes(kInputs);
      for (int i = 0; i < kInputs; ++i) {
        MoeOutput o = dsec::bench::OrDie(
            fused->Forward({t_count, inputs[i], {}, nullptr}));
        std::set<int32_t> used(o.routing.experts.begin(),
                               o.routing.experts.end());
        bytes[i] = (used.size() + config.num_shared_experts) * expert_bytes +
                   router_bytes;
      }
      dsec::bench::OrDie(unfused->Forward({t_count, inputs[0], {}, nullptr}));

      std::vector<double> tf, tu;
      double bytes_sum = 0;
      const auto start = Clock::now();
      for (int s = 0; static_cast<int>(tf.size()) < min_samples ||
                      Ms(Clock::now() - start) < 2 * min_ms;
           ++s) {
        MoeInput in{t_count, inputs[s % kInputs], {}, nullptr};
        auto t0 = Clock::now();
        dsec::bench::OrDie(fused->Forward(in));
        tf.push_back(Ms(Clock::now() - t0));
        t0 = Clock::now();
        dsec::bench::OrDie(unfused->Forward(in));
        tu.push_back(Ms(Clock::now() - t0));
        bytes_sum += bytes[s % kInputs];
      }
      const double mf = Median(tf), mu = Median(tu);
      const double gbs = bytes_sum / tf.size() / (mf / 1e3) / 1e9;
      const double flops = 2.0 * t_count *
                           ((config.top_k + config.num_shared_experts) * 3.0 *
                                config.intermediate * config.hidden +
                            config.num_experts * config.hidden);
      const double gflops = flops / (mf / 1e3) / 1e9;
      std::printf("%6lld %11.3f %11.3f %7.2fx %10.1f %7.0f%% %10.1f %7.0f%%\n",
                  (long long)t_count, mf, mu, mu / mf, gbs,
                  100 * gbs / read_gbs, gflops,
                  peak > 0 ? 100 * gflops / peak : 0.0);
      std::fflush(stdout);
    }
  }
#if DSEC_MOE_HAVE_CUDA
  if (cuda_fused != nullptr) {
    RunCudaRows(config, *cuda_fused, *cuda_unfused, batches);
  }
#endif
  return 0;
}
