// The SandboxFusion-compatible endpoint end to end: a local-mode cluster
// (controller + agent in this process, warm pool "default"), a
// FusionServer on loopback, and N HTTP clients posting python hello-world
// /run_code requests back to back for a fixed time. Reports requests/s and
// latency percentiles; every reply must be "Success".
//
//   sudo build/bench/fusion_bench [--clients 16] [--seconds 10]
#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "client/client.h"
#include "client/fusion_server.h"
#include "common/logging.h"
#include "common/rlimit.h"
#include "common/testing/test_util.h"
#include "ctl/local_cluster.h"
#include "httplib.h"
#include "sandbox/sandbox.h"

ABSL_FLAG(int, clients, 16, "concurrent HTTP clients");
ABSL_FLAG(double, seconds, 10, "measurement time");
ABSL_FLAG(int, warm_pool, 32, "warm pool size of the local agent");

namespace {

using dsec::bench::OrDie;

constexpr char kHello[] =
    R"j({"language": "python", "code": "print('Hello, world!')"})j";

}  // namespace

int main(int argc, char** argv) {
  (void)dsec::sandbox::EnterPrivateMountNamespace();
  absl::ParseCommandLine(argc, argv);
  (void)dsec::InitLogging({.level = "warn", .component = "bench"});
  dsec::RaiseOpenFileLimit();
  const int clients = absl::GetFlag(FLAGS_clients);

  dsec::testing::TempDir dir;
  dsec::ctl::LocalClusterOptions local;
  local.data_dir = dir.Join("data");
  local.controller_port = 0;
  local.max_sandboxes = 256;
  local.warm_pool_size = absl::GetFlag(FLAGS_warm_pool);
  local.init_path = dsec::ctl::SelfDir() + "/../bin/dsec-init";
  auto cluster = OrDie(dsec::ctl::LocalCluster::Create(local));

  dsec::client::ClientOptions admin;
  admin.controller = cluster->controller_address();
  auto job = OrDie(dsec::client::CreateJob(admin, "fusion-bench", 256));
  dsec::client::ClientOptions copts = admin;
  copts.api_key = job.api_key;

  dsec::client::FusionServerOptions options;
  options.client = OrDie(dsec::client::Client::Create(copts));
  options.port = 0;
  options.max_concurrent_requests = clients;
  // The shape of local mode's warm pool class.
  options.warm_pool_class = "default";
  options.default_limits.set_memory_bytes(256LL << 20);
  options.default_limits.set_pids(128);
  options.default_limits.set_cpu_millicores(1000);
  auto server = OrDie(dsec::client::FusionServer::Create(options));
  const int port = server->port();

  auto post = [](httplib::Client& http) {
    auto res = http.Post("/run_code", kHello, "application/json");
    return res && res->status == 200 &&
           res->body.find("\"status\":\"Success\"") != std::string::npos;
  };
  {  // Warm-up.
    httplib::Client http("127.0.0.1", port);
    for (int i = 0; i < 5; ++i) post(http);
  }

  absl::Mutex mu;
  std::vector<double> latency_ms;
  std::atomic<int> failures{0};
  const absl::Time start = absl::Now();
  const absl::Time end = start + absl::Seconds(absl::GetFlag(FLAGS_seconds));
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&] {
      httplib::Client http("127.0.0.1", port);
      http.set_keep_alive(true);
      http.set_read_timeout(120, 0);
      std::vector<double> mine;
      while (absl::Now() < end) {
        const absl::Time s = absl::Now();
        if (!post(http)) failures.fetch_add(1);
        mine.push_back(absl::ToDoubleMilliseconds(absl::Now() - s));
      }
      absl::MutexLock lock(&mu);
      latency_ms.insert(latency_ms.end(), mine.begin(), mine.end());
    });
  }
  for (std::thread& t : threads) t.join();
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);

  std::printf("fusion /run_code python hello world, %d clients, %.1f s\n",
              clients, elapsed);
  std::printf("%-44s %8.1f /s  (%zu requests, %d not Success)\n",
              "requests per second", latency_ms.size() / elapsed,
              latency_ms.size(), failures.load());
  dsec::bench::Print("request latency", dsec::bench::Summarize(latency_ms));
  server->Shutdown();
  cluster->Shutdown();
  return failures.load() == 0 ? 0 : 1;
}
