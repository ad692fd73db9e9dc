// Sandbox start-up and exec latency, side by side with peers in one run:
//   bare   fork + execve + wait of /bin/true (the floor)
//   bwrap  Debian's bubblewrap with an equivalent minimal rootfs, /proc,
//          /dev and every namespace (user, pid, mount, net, ipc, uts, cgroup)
//   dsec   cold create + first exec; exec in a running sandbox; warm-pool
//          claim + first exec; creations/s with 2 threads; idle density.
// Prints medians and p99s plus ratios. Machines are noisy: compare ratios.
//
//   sudo build/bench/sandbox_bench [--iterations 300] [--density 10000]
#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "common/rlimit.h"
#include "common/testing/test_util.h"
#include "sandbox/sandbox.h"
#include "sandbox/warm_pool.h"

ABSL_FLAG(int, iterations, 300, "samples per latency measurement");
ABSL_FLAG(int, density, 0,
          "idle sandboxes to hold for the density test (0: skip)");
ABSL_FLAG(double, throughput_seconds, 5, "duration of the creations/s test");
ABSL_FLAG(std::string, bwrap, "/usr/bin/bwrap", "bubblewrap binary");

namespace {

using dsec::bench::ForkExecWait;
using dsec::bench::OrDie;
using dsec::bench::Print;
using dsec::bench::Summarize;
using dsec::bench::Summary;

using dsec::sandbox::ExecRequest;
using dsec::sandbox::Runtime;
using dsec::sandbox::SandboxSpec;

double SpawnAndWait(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  absl::Time start = absl::Now();
  pid_t pid;
  if (posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) {
    std::perror("posix_spawn");
    std::exit(1);
  }
  int status;
  waitpid(pid, &status, 0);
  double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "%s failed (status %d)\n", args[0].c_str(), status);
    std::exit(1);
  }
  return ms;
}

int64_t MemAvailableKiB() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t value;
  std::string unit;
  while (in >> key >> value >> unit) {
    if (key == "MemAvailable:") return value;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  (void)dsec::sandbox::EnterPrivateMountNamespace();
  absl::ParseCommandLine(argc, argv);
  const int n = absl::GetFlag(FLAGS_iterations);
  dsec::testing::TempDir dir;
  dsec::sandbox::RuntimeOptions options;
  options.state_dir = dir.Join("state");
  auto runtime = OrDie(Runtime::Create(options));
  const ExecRequest true_req{.argv = {"/bin/true"}};

  // Interleave peers sample by sample so drift hits all of them alike.
  std::vector<double> bare, bwrap, cold, exec_in, exec_idle, destroy;
  const std::vector<std::string> bwrap_args = {absl::GetFlag(FLAGS_bwrap),
                                               "--unshare-all",
                                               "--die-with-parent",
                                               "--ro-bind",
                                               "/usr",
                                               "/usr",
                                               "--symlink",
                                               "usr/bin",
                                               "/bin",
                                               "--symlink",
                                               "usr/lib",
                                               "/lib",
                                               "--symlink",
                                               "usr/lib64",
                                               "/lib64",
                                               "--symlink",
                                               "usr/sbin",
                                               "/sbin",
                                               "--proc",
                                               "/proc",
                                               "--dev",
                                               "/dev",
                                               "--tmpfs",
                                               "/tmp",
                                               "--hostname",
                                               "sandbox",
                                               "--",
                                               "/bin/true"};
  const bool have_bwrap = access(bwrap_args[0].c_str(), X_OK) == 0;
  auto warm = OrDie(runtime->CreateSandbox(SandboxSpec{}));
  for (int i = 0; i < 20; ++i) {  // warm caches and pools
    OrDie(runtime->CreateSandbox(SandboxSpec{}));
    if (have_bwrap) SpawnAndWait(bwrap_args);
  }
  for (int i = 0; i < n; ++i) {
    bare.push_back(ForkExecWait());
    if (have_bwrap) bwrap.push_back(SpawnAndWait(bwrap_args));
    absl::Time start = absl::Now();
    auto sb = OrDie(runtime->CreateSandbox(SandboxSpec{}));
    auto r = OrDie(sb->Exec(true_req));
    cold.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
    if (r.exit_code != 0) {
      std::fprintf(stderr, "exec failed: %s\n", r.stderr_data.c_str());
      return 1;
    }
    start = absl::Now();
    sb.reset();
    destroy.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
    start = absl::Now();
    OrDie(warm->Exec(true_req));
    exec_in.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
    // The same after the caller idled (as a pool claim follows a wait).
    absl::SleepFor(absl::Milliseconds(10));
    start = absl::Now();
    OrDie(warm->Exec(true_req));
    exec_idle.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
  }
  std::printf("== latency, %d samples each, interleaved\n", n);
  Summary s_bare = Summarize(bare);
  Print("bare fork+exec+wait /bin/true", s_bare);
  Summary s_bwrap{};
  if (have_bwrap) {
    s_bwrap = Summarize(bwrap);
    Print("bwrap (all namespaces, minimal rootfs)", s_bwrap);
  }
  Summary s_cold = Summarize(cold);
  Print("dsec cold create + first exec", s_cold);
  Print("dsec destroy", Summarize(destroy));
  Summary s_exec = Summarize(exec_in);
  Print("dsec exec in running sandbox", s_exec);
  Print("dsec exec in running sandbox, 10 ms idle", Summarize(exec_idle));

  // Warm pool: claim + first exec, pool kept topped up between samples.
  std::vector<double> claim, claim_only;
  std::vector<std::unique_ptr<dsec::sandbox::Sandbox>> claimed_sandboxes;
  {
    auto pool =
        OrDie(dsec::sandbox::WarmPool::Create(runtime.get(), {.target = 16}));
    for (int i = 0; i < std::min(n, 200); ++i) {
      pool->WaitReady(16, absl::Seconds(30));
      absl::Time start = absl::Now();
      auto sb = OrDie(pool->Claim());
      absl::Time claimed = absl::Now();
      OrDie(sb->Exec(true_req));
      claim.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
      claim_only.push_back(absl::ToDoubleMilliseconds(claimed - start));
      // Kept until the end: a destroy's asynchronous kernel work (network
      // namespace cleanup) would otherwise land in the next sample.
      claimed_sandboxes.push_back(std::move(sb));
    }
  }
  claimed_sandboxes.clear();
  Summary s_claim = Summarize(claim);
  Print("dsec warm-pool claim + first exec", s_claim);
  Print("  of which claim", Summarize(claim_only));

  // Creations per second, 2 threads, create + destroy.
  std::atomic<int64_t> created{0};
  {
    const absl::Time end =
        absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_throughput_seconds));
    std::vector<std::thread> threads;
    absl::Time start = absl::Now();
    for (int t = 0; t < 2; ++t) {
      threads.emplace_back([&] {
        while (absl::Now() < end) {
          auto sb = runtime->CreateSandbox(SandboxSpec{});
          if (sb.ok()) ++created;
        }
      });
    }
    for (auto& t : threads) t.join();
    double secs = absl::ToDoubleSeconds(absl::Now() - start);
    std::printf("%-44s %8.1f /s (create+destroy, 2 threads)\n",
                "dsec creations per second", created.load() / secs);
  }

  std::printf("== ratios (targets from issue 3)\n");
  if (have_bwrap) {
    std::printf(
        "cold create+exec p50 / bwrap p50       = %.2f (target <= 0.6)\n",
        s_cold.p50_ms / s_bwrap.p50_ms);
  }
  std::printf("exec-in-sandbox p50 / bare p50         = %.2f (target <= 1.5)\n",
              s_exec.p50_ms / s_bare.p50_ms);
  std::printf(
      "warm claim+exec p50                    = %.3f ms (target <= 1)\n",
      s_claim.p50_ms);

  const int density = absl::GetFlag(FLAGS_density);
  if (density > 0) {
    // Each idle sandbox holds one host fd (its control socket to init);
    // lift the fd limit as an agent does.
    std::printf("density: open file limit %lld\n",
                static_cast<long long>(dsec::RaiseOpenFileLimit()));
    warm.reset();
    std::vector<std::unique_ptr<dsec::sandbox::Sandbox>> held;
    held.reserve(density);
    int64_t before = MemAvailableKiB();
    absl::Time start = absl::Now();
    for (int i = 0; i < density; ++i) {
      auto sb = runtime->CreateSandbox(SandboxSpec{});
      if (!sb.ok()) {
        std::printf("density: stopped at %d: %s\n", i,
                    sb.status().ToString().c_str());
        break;
      }
      held.push_back(std::move(*sb));
    }
    double create_s = absl::ToDoubleSeconds(absl::Now() - start);
    absl::SleepFor(absl::Seconds(2));
    int64_t after = MemAvailableKiB();
    std::printf(
        "density: %zu idle sandboxes in %.1f s, MemAvailable delta %.1f MiB"
        " = %.0f KiB per sandbox (target <= 512)\n",
        held.size(), create_s, (before - after) / 1024.0,
        static_cast<double>(before - after) / std::max<size_t>(1, held.size()));
    start = absl::Now();
    held.clear();
    std::printf("density: teardown of all in %.1f s\n",
                absl::ToDoubleSeconds(absl::Now() - start));
  }
  return 0;
}
