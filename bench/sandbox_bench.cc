// Sandbox start-up and exec latency, side by side with peers in one run:
//   bare   fork + execve + wait of /bin/true (the floor)
//   bwrap  Debian's bubblewrap with an equivalent minimal rootfs, /proc,
//          /dev and every namespace (user, pid, mount, net, ipc, uts, cgroup)
//   dsec   cold create + first exec; exec in a running sandbox; warm-pool
//          claim + first exec; creations/s with 2 threads; idle density.
// Prints medians and p99s plus ratios. Machines are noisy: compare ratios.
// The density test also prints where the memory went (meminfo and slab
// deltas, cgroup counts, init's PSS), and stops creating sandboxes before
// the host's MemAvailable drops below --density_floor_mib.
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
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
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
ABSL_FLAG(int, density_floor_mib, 4096,
          "stop the density test before MemAvailable falls below this");
ABSL_FLAG(bool, density_exec, false,
          "run /bin/true once in each density sandbox before holding it");
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

// Kernel-side memory figures, for the density breakdown.
struct KernelMemory {
  std::map<std::string, int64_t> meminfo_kib;  // /proc/meminfo
  std::map<std::string, int64_t> slab_kib;     // per cache: slabs * pages
  std::map<std::string, int64_t> slab_objs;    // per cache: active objects
  std::map<std::string, int64_t> cgroups;      // /proc/cgroups num_cgroups
  int64_t self_rss_kib = 0;                    // this process
};

KernelMemory ReadKernelMemory() {
  KernelMemory m;
  {
    std::ifstream in("/proc/meminfo");
    std::string key, unit;
    int64_t value;
    while (in >> key >> value) {
      if (in.peek() != '\n') in >> unit;
      key.pop_back();  // ':'
      m.meminfo_kib[key] = value;
    }
  }
  {
    std::ifstream in("/proc/slabinfo");
    std::string line;
    const int64_t page_kib = sysconf(_SC_PAGESIZE) / 1024;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#' || line.rfind("slabinfo", 0) == 0) {
        continue;
      }
      // name active_objs num_objs objsize objperslab pagesperslab : tunables
      // l b s : slabdata active_slabs num_slabs sharedavail
      std::istringstream f(line);
      std::string name, colon, word;
      int64_t active, num, size, per, pages;
      f >> name >> active >> num >> size >> per >> pages;
      int64_t slabs = 0;
      while (f >> word) {
        if (word == "slabdata") {
          int64_t active_slabs;
          f >> active_slabs >> slabs;
          break;
        }
      }
      m.slab_kib[name] = slabs * pages * page_kib;
      m.slab_objs[name] = active;
    }
  }
  {
    std::ifstream in("/proc/cgroups");
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      std::istringstream f(line);
      std::string name;
      int64_t hierarchy, count;
      f >> name >> hierarchy >> count;
      m.cgroups[name] = count;
    }
  }
  {
    std::ifstream in("/proc/self/status");
    std::string key;
    while (in >> key) {
      if (key == "VmRSS:") {
        in >> m.self_rss_kib;
        break;
      }
    }
  }
  return m;
}

// "Pss:" and "Rss:" (KiB) of a process.
std::pair<int64_t, int64_t> PssRssKiB(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/smaps_rollup"));
  std::string line;
  int64_t pss = 0, rss = 0;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string key;
    int64_t v = 0;
    if (!(f >> key >> v)) continue;  // the header line
    if (key == "Pss:") pss = v;
    if (key == "Rss:") rss = v;
  }
  return {pss, rss};
}

void PrintBreakdown(const KernelMemory& a, const KernelMemory& b, size_t n,
                    const std::vector<pid_t>& init_pids) {
  const double count = static_cast<double>(std::max<size_t>(1, n));
  auto row = [&](const std::string& what, int64_t delta_kib) {
    std::printf("  %-28s %+10.1f MiB %+9.1f KiB/sandbox\n", what.c_str(),
                delta_kib / 1024.0, delta_kib / count);
  };
  std::printf("density breakdown over %zu sandboxes (after - before):\n", n);
  for (const char* key :
       {"MemAvailable", "MemFree", "AnonPages", "Shmem", "Slab", "SReclaimable",
        "SUnreclaim", "KernelStack", "PageTables", "Percpu", "VmallocUsed"}) {
    auto get = [&](const KernelMemory& m) {
      auto it = m.meminfo_kib.find(key);
      return it == m.meminfo_kib.end() ? 0 : it->second;
    };
    row(absl::StrCat("meminfo ", key), get(b) - get(a));
  }
  row("this process VmRSS", b.self_rss_kib - a.self_rss_kib);
  std::vector<std::pair<int64_t, std::string>> slabs;
  for (const auto& [name, kib] : b.slab_kib) {
    auto it = a.slab_kib.find(name);
    slabs.push_back({kib - (it == a.slab_kib.end() ? 0 : it->second), name});
  }
  std::sort(slabs.rbegin(), slabs.rend());
  for (size_t i = 0; i < std::min<size_t>(15, slabs.size()); ++i) {
    const std::string& name = slabs[i].second;
    auto it = a.slab_objs.find(name);
    const int64_t objs =
        b.slab_objs.at(name) - (it == a.slab_objs.end() ? 0 : it->second);
    row(absl::StrCat("slab ", name, " (", objs / count, " obj)"),
        slabs[i].first);
  }
  std::printf("  cgroups per sandbox:");
  for (const auto& [name, c] : b.cgroups) {
    auto it = a.cgroups.find(name);
    const int64_t d = c - (it == a.cgroups.end() ? 0 : it->second);
    if (d != 0) std::printf(" %s %.2f", name.c_str(), d / count);
  }
  std::printf("\n");
  int64_t pss = 0, rss = 0;
  const size_t sample = std::min<size_t>(init_pids.size(), 1000);
  for (size_t i = 0; i < sample; ++i) {
    auto [p, r] = PssRssKiB(init_pids[i]);
    pss += p;
    rss += r;
  }
  if (sample > 0) {
    const double init_pss = static_cast<double>(pss) / sample;
    std::printf("  dsec-init (%zu sampled): PSS %.1f KiB, RSS %.1f KiB each\n",
                sample, init_pss, static_cast<double>(rss) / sample);
    // What the sandboxes cost by the kernel's own counters, immune to what
    // other processes on a shared host allocate or free meanwhile.
    // (VmallocUsed includes the vmapped kernel stacks: KernelStack is not
    // added again.)
    int64_t kernel_kib = b.self_rss_kib - a.self_rss_kib;
    for (const char* key :
         {"Slab", "PageTables", "Percpu", "VmallocUsed", "Shmem"}) {
      kernel_kib += b.meminfo_kib.at(key) - a.meminfo_kib.at(key);
    }
    std::printf(
        "  attributable (Slab+PageTables+Percpu+VmallocUsed+Shmem + this "
        "process's RSS + init PSS): %.1f KiB per sandbox\n",
        kernel_kib / count + init_pss);
    // One init's mappings, to see what its resident memory is.
    std::ifstream in(absl::StrCat("/proc/", init_pids[0], "/smaps"));
    std::string line, mapping;
    while (std::getline(in, line)) {
      const size_t sp = line.find(' ');
      if (sp != std::string::npos && line.find('-') < sp) {
        mapping = line;
      } else if (line.rfind("Rss:", 0) == 0 || line.rfind("Pss:", 0) == 0 ||
                 line.rfind("Anonymous:", 0) == 0) {
        const int64_t kib = std::atoll(line.c_str() + line.find(':') + 1);
        if (kib != 0) {
          std::printf("    %-56.56s %s\n", mapping.c_str(), line.c_str());
        }
      }
    }
  }
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
    const int64_t floor_kib =
        static_cast<int64_t>(absl::GetFlag(FLAGS_density_floor_mib)) * 1024;
    const bool exec_each = absl::GetFlag(FLAGS_density_exec);
    absl::SleepFor(absl::Seconds(2));  // let earlier teardown settle
    const KernelMemory mem_before = ReadKernelMemory();
    int64_t before = MemAvailableKiB();
    absl::Time start = absl::Now();
    for (int i = 0; i < density; ++i) {
      if (i % 100 == 0 && MemAvailableKiB() < floor_kib) {
        std::printf("density: stopped at %d: MemAvailable below %d MiB\n", i,
                    absl::GetFlag(FLAGS_density_floor_mib));
        break;
      }
      auto sb = runtime->CreateSandbox(SandboxSpec{});
      if (!sb.ok()) {
        std::printf("density: stopped at %d: %s\n", i,
                    sb.status().ToString().c_str());
        break;
      }
      if (exec_each) OrDie((*sb)->Exec(true_req));
      held.push_back(std::move(*sb));
    }
    double create_s = absl::ToDoubleSeconds(absl::Now() - start);
    absl::SleepFor(absl::Seconds(2));
    int64_t after = MemAvailableKiB();
    std::printf(
        "density: %zu idle sandboxes%s in %.1f s, MemAvailable delta %.1f MiB"
        " = %.0f KiB per sandbox (target <= 512)\n",
        held.size(), exec_each ? " (one exec each)" : "", create_s,
        (before - after) / 1024.0,
        static_cast<double>(before - after) / std::max<size_t>(1, held.size()));
    std::vector<pid_t> init_pids;
    for (const auto& sb : held) init_pids.push_back(sb->init_pid());
    PrintBreakdown(mem_before, ReadKernelMemory(), held.size(), init_pids);
    start = absl::Now();
    held.clear();
    std::printf("density: teardown of all in %.1f s\n",
                absl::ToDoubleSeconds(absl::Now() - start));
    runtime.reset();  // pooled cgroups, netns pool, dev template
    // The kernel frees network namespaces and RCU-deferred objects in the
    // background; wait (bounded) until MemAvailable is back.
    const absl::Time shut = absl::Now();
    while (before - MemAvailableKiB() > 64 * 1024 &&
           absl::Now() - shut < absl::Seconds(60)) {
      absl::SleepFor(absl::Seconds(1));
    }
    std::printf(
        "density: %.0f s after teardown and runtime shutdown MemAvailable is "
        "%.1f MiB below where it started\n",
        absl::ToDoubleSeconds(absl::Now() - shut),
        (before - MemAvailableKiB()) / 1024.0);
  }
  return 0;
}
