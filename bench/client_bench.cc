// One rollout process driving many sandboxes through a tool loop, the way
// an RL worker does: N live sandboxes, each running S steps (exec a tool
// call, feed the result to the next step), all concurrently.
//
//   async     dsec::client with RunAsync chains: each step's callback issues
//             the next; no thread per sandbox.
//   threads   peer in the same run: the naive client, blocking Run calls
//             from a pool of --threads threads (one sandbox loop at a time
//             per thread).
//
// The cluster (`dsecctl local up`) runs in a separate process so the
// figures are the client's own: actions/s, client CPU (user+sys of this
// process) per action, and per-action latency.
//
//   sudo build/bench/client_bench [--sandboxes 2000] [--steps 5]
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "client/client.h"
#include "common/rlimit.h"
#include "common/testing/subprocess.h"
#include "common/testing/test_util.h"

ABSL_FLAG(int, sandboxes, 2000, "live sandboxes driven at once");
ABSL_FLAG(int, steps, 5, "tool-loop steps per sandbox");
ABSL_FLAG(int, threads, 64, "threads of the blocking peer");
ABSL_FLAG(std::string, controller, "",
          "use this cluster instead of starting `dsecctl local up`");

namespace {

using dsec::bench::Print;
using dsec::bench::Summarize;
using dsec::client::Command;
using dsec::client::ExecOutcome;

double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return absl::ToDoubleSeconds(absl::DurationFromTimeval(u.ru_utime) +
                               absl::DurationFromTimeval(u.ru_stime));
}

// Step k of a sandbox's loop: a small stateful tool call.
Command StepCommand(int k) {
  return Command::Shell(
      absl::StrCat("echo ", k, " >> /root/log; wc -l < /root/log"));
}

struct RunStats {
  double wall_s = 0, cpu_s = 0;
  int ok = 0, failed = 0;
  std::vector<double> latencies_ms;
};

void Report(const char* name, const RunStats& r, int actions) {
  std::printf(
      "%-8s %6d actions  %6d ok  %8.1f actions/s  client CPU %7.1f us/action"
      "  wall %.2f s\n",
      name, actions, r.ok, actions / r.wall_s, 1e6 * r.cpu_s / actions,
      r.wall_s);
  Print(absl::StrCat("  ", name, " action latency").c_str(),
        Summarize(r.latencies_ms));
}

// Every sandbox runs its loop as a chain of callbacks.
RunStats RunAsyncLoops(const dsec::client::SandboxGroup& group, int steps) {
  struct Shared {
    absl::Mutex mu;
    int remaining = 0;
    RunStats stats;
  } shared;
  shared.remaining = static_cast<int>(group.size());
  const double cpu0 = CpuSeconds();
  const absl::Time t0 = absl::Now();
  std::function<void(std::shared_ptr<dsec::client::Sandbox>, int)> step;
  step = [&](std::shared_ptr<dsec::client::Sandbox> sb, int k) {
    const absl::Time start = absl::Now();
    sb->RunAsync(
        StepCommand(k), [&, sb, k, start](absl::StatusOr<ExecOutcome> r) {
          const double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
          bool good = r.ok() && r->stdout_data == absl::StrCat(k + 1, "\n");
          {
            absl::MutexLock l(&shared.mu);
            shared.stats.latencies_ms.push_back(ms);
            good ? ++shared.stats.ok : ++shared.stats.failed;
            if (!good && shared.stats.failed <= 3) {
              std::fprintf(stderr, "step failed: %s\n",
                           r.ok() ? r->stdout_data.c_str()
                                  : r.status().ToString().c_str());
            }
            if (k + 1 == steps) {
              --shared.remaining;
              return;
            }
          }
          step(sb, k + 1);
        });
  };
  for (const auto& sb : group.members()) step(sb, 0);
  absl::MutexLock l(&shared.mu);
  shared.mu.Await(absl::Condition(
      +[](int* n) { return *n == 0; }, &shared.remaining));
  shared.stats.wall_s = absl::ToDoubleSeconds(absl::Now() - t0);
  shared.stats.cpu_s = CpuSeconds() - cpu0;
  return std::move(shared.stats);
}

// The peer: blocking calls, a fixed pool of threads, one loop per thread at
// a time.
RunStats RunThreadLoops(const dsec::client::SandboxGroup& group, int steps,
                        int threads) {
  RunStats stats;
  absl::Mutex mu;
  std::atomic<size_t> next{0};
  const double cpu0 = CpuSeconds();
  const absl::Time t0 = absl::Now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (size_t i = next++; i < group.size(); i = next++) {
        for (int k = 0; k < steps; ++k) {
          const absl::Time start = absl::Now();
          absl::StatusOr<ExecOutcome> r = group[i]->Run(StepCommand(k));
          const double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
          bool good = r.ok() && r->stdout_data == absl::StrCat(k + 1, "\n");
          absl::MutexLock l(&mu);
          stats.latencies_ms.push_back(ms);
          good ? ++stats.ok : ++stats.failed;
        }
      }
    });
  }
  for (auto& t : pool) t.join();
  stats.wall_s = absl::ToDoubleSeconds(absl::Now() - t0);
  stats.cpu_s = CpuSeconds() - cpu0;
  return stats;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  dsec::RaiseOpenFileLimit();
  const int n = absl::GetFlag(FLAGS_sandboxes);
  const int steps = absl::GetFlag(FLAGS_steps);

  std::unique_ptr<dsec::testing::TempDir> dir;
  std::unique_ptr<dsec::testing::Subprocess> cluster;
  std::string controller = absl::GetFlag(FLAGS_controller);
  if (controller.empty()) {
    dir = std::make_unique<dsec::testing::TempDir>();
    std::string self(4096, '\0');
    self.resize(readlink("/proc/self/exe", self.data(), self.size()));
    const std::string bin = self.substr(0, self.rfind("/bench/")) + "/bin";
    auto p = dsec::testing::Subprocess::Start(
        {bin + "/dsecctl", "local", "up", "--port", "0", "--data_dir",
         dir->Join("state"), "--max_sandboxes", absl::StrCat(2 * n + 64),
         "--warm_pool", "0"},
        dir->Join("local.log"));
    if (!p.ok()) {
      std::fprintf(stderr, "start local cluster: %s\n",
                   p.status().ToString().c_str());
      return 1;
    }
    cluster = std::move(*p);
    static const std::regex re("controller (127\\.0\\.0\\.1:[0-9]+)");
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    std::smatch m;
    while (absl::Now() < deadline) {
      std::string log = cluster->Log();
      if (std::regex_search(log, m, re)) {
        controller = m[1];
        break;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    if (controller.empty()) {
      std::fprintf(stderr, "local cluster did not start:\n%s\n",
                   cluster->Log().c_str());
      return 1;
    }
  }
  auto job =
      dsec::client::CreateJob({.controller = controller}, "bench", 4 * n + 64);
  if (!job.ok()) {
    std::fprintf(stderr, "%s\n", job.status().ToString().c_str());
    return 1;
  }
  auto client =
      dsec::client::Client::Create({.controller = controller,
                                    .api_key = job->api_key,
                                    .call_timeout = absl::Minutes(10)});
  dsec::v1::SandboxSpec spec;
  spec.mutable_limits()->set_memory_bytes(64 << 20);
  spec.mutable_limits()->set_cpu_millicores(200);
  spec.mutable_limits()->set_pids(32);

  std::printf("client_bench: %d sandboxes x %d steps, controller %s\n", n,
              steps, controller.c_str());
  auto create = [&](int count) -> dsec::client::SandboxGroup {
    std::vector<std::shared_ptr<dsec::client::Sandbox>> all;
    const absl::Time t0 = absl::Now();
    while (static_cast<int>(all.size()) < count) {
      auto g = (*client)->CreateGroup(
          spec, std::min(256, count - static_cast<int>(all.size())));
      if (!g.ok()) {
        std::fprintf(stderr, "create: %s\n", g.status().ToString().c_str());
        exit(1);
      }
      for (const auto& m : g->members()) all.push_back(m);
    }
    std::printf("created %d sandboxes in %.1f s\n", count,
                absl::ToDoubleSeconds(absl::Now() - t0));
    return dsec::client::SandboxGroup("", std::move(all));
  };

  dsec::client::SandboxGroup a = create(n);
  RunStats async_stats = RunAsyncLoops(a, steps);
  (void)a.Delete();
  dsec::client::SandboxGroup b = create(n);
  RunStats thread_stats =
      RunThreadLoops(b, steps, absl::GetFlag(FLAGS_threads));
  (void)b.Delete();

  const int actions = n * steps;
  Report("async", async_stats, actions);
  Report("threads", thread_stats, actions);
  std::printf(
      "ratio async/threads: throughput %.2fx, client CPU per action %.2fx\n",
      (actions / async_stats.wall_s) / (actions / thread_stats.wall_s),
      async_stats.cpu_s / thread_stats.cpu_s);
  if (cluster) (void)cluster->Stop(SIGINT, absl::Seconds(120));
  return async_stats.failed + thread_stats.failed == 0 ? 0 : 1;
}
