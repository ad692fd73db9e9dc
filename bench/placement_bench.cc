// Placement core at cluster scale, on one thread:
//   place     N sandboxes (default 1,000,000) over M nodes (default 10,000)
//             through the Placer plus per-job quota accounting, in GRPO
//             groups of 16 with group spread, random node_selector/image
//             mixes; placements/s and p99 per placement.
//   churn     delete + re-place at 1M live (steady state).
//   rss       process RSS with 1M live sandboxes in the placement core.
//   recovery  write N sandbox records through the Store, reopen, LoadAll
//             and rebuild reservations: seconds.
// Targets: >= 100k placements/s, RSS <= 2 GiB at 1M, recovery <= 10 s.
//
//   build/bench/placement_bench [--nodes 10000] [--sandboxes 1000000]
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/testing/test_util.h"
#include "controller/placement.h"
#include "controller/store.h"
#include "google/protobuf/util/time_util.h"

ABSL_FLAG(int, nodes, 10000, "simulated nodes");
ABSL_FLAG(int, sandboxes, 1000000, "sandboxes to place");
ABSL_FLAG(bool, recovery, true, "run the store recovery part");

namespace {

using dsec::controller::NodeIndex;
using dsec::controller::Placer;

constexpr int64_t kGiB = int64_t{1} << 30;

double RssMiB() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}

struct Job {
  int64_t max_sandboxes = 0;
  int64_t used = 0;
  int64_t cpu = 0;
  int64_t mem = 0;
};

struct Live {
  NodeIndex node;
  uint16_t job;
  int32_t cpu;
  int64_t mem;
};

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int n_nodes = absl::GetFlag(FLAGS_nodes);
  const int n_sb = absl::GetFlag(FLAGS_sandboxes);
  std::mt19937_64 rng(42);

  Placer placer;
  std::vector<std::string> images;
  for (int i = 0; i < 20; ++i) images.push_back(absl::StrCat("image-", i));
  for (int i = 0; i < n_nodes; ++i) {
    std::map<std::string, std::string> labels{
        {"zone", absl::StrCat("z", i % 4)},
        {"pool", i % 10 == 0 ? "gpu" : "cpu"}};
    placer.UpsertNode(absl::StrCat("node-", i), {128000, 512 * kGiB, 200},
                      labels, {images[i % 20], images[(i * 7 + 3) % 20]});
  }
  std::vector<Job> jobs(100);
  for (auto& j : jobs) j.max_sandboxes = 2 * n_sb / 100;

  std::vector<Live> live;
  live.reserve(n_sb);
  std::vector<double> lat;
  lat.reserve(n_sb / 100 + 1);
  std::map<std::string, std::string> sel_zone{{"zone", "z1"}};
  std::uniform_int_distribution<int> pick_job(0, 99), pick_img(0, 19),
      pct(0, 99);
  dsec::controller::GroupState group;
  int failures = 0;
  absl::Time t0 = absl::Now();
  for (int i = 0; i < n_sb; ++i) {
    if (i % 16 == 0) group.per_node.clear();
    uint16_t job = static_cast<uint16_t>(pick_job(rng));
    Job& j = jobs[job];
    dsec::controller::PlacementRequest r;
    r.cpu_millicores = 500 + 500 * (i % 3);
    r.memory_bytes = (i % 4 + 1) * (kGiB / 2);
    r.image = images[pick_img(rng)];
    r.group = &group;
    if (pct(rng) < 5) r.node_selector = &sel_zone;
    bool sample = i % 100 == 0;
    absl::Time s = sample ? absl::Now() : absl::Time();
    // Admission accounting: job quota first.
    if (j.used + 1 > j.max_sandboxes) {
      ++failures;
      continue;
    }
    auto n = placer.Place(r);
    if (!n.ok()) {
      ++failures;
      continue;
    }
    j.used++;
    j.cpu += r.cpu_millicores;
    j.mem += r.memory_bytes;
    live.push_back(
        {*n, job, static_cast<int32_t>(r.cpu_millicores), r.memory_bytes});
    if (sample) lat.push_back(absl::ToDoubleMicroseconds(absl::Now() - s));
  }
  double place_s = absl::ToDoubleSeconds(absl::Now() - t0);
  double rss = RssMiB();
  std::sort(lat.begin(), lat.end());
  double p50 = lat.empty() ? 0 : lat[lat.size() / 2];
  double p99 = lat.empty() ? 0 : lat[lat.size() * 99 / 100];

  // Churn at full occupancy: delete a random live sandbox, place a new one.
  const int churn = std::min<int>(200000, static_cast<int>(live.size()));
  std::uniform_int_distribution<size_t> pick_live(
      0, live.empty() ? 0 : live.size() - 1);
  absl::Time c0 = absl::Now();
  for (int i = 0; i < churn; ++i) {
    size_t k = pick_live(rng);
    Live& l = live[k];
    placer.Release(l.node, l.cpu, l.mem);
    dsec::controller::PlacementRequest r;
    r.cpu_millicores = l.cpu;
    r.memory_bytes = l.mem;
    r.image = images[pick_img(rng)];
    auto n = placer.Place(r);
    if (n.ok()) l.node = *n;
  }
  double churn_s = absl::ToDoubleSeconds(absl::Now() - c0);

  std::printf(
      "placement bench: %d nodes, %d sandboxes requested, %zu placed, %d "
      "refused\n",
      n_nodes, n_sb, live.size(), failures);
  std::printf("%-34s %14s\n", "metric", "value");
  std::printf("%-34s %14.0f\n", "placements/s (1 thread)",
              live.size() / place_s);
  std::printf("%-34s %14.2f\n", "placement p50 (us)", p50);
  std::printf("%-34s %14.2f\n", "placement p99 (us)", p99);
  std::printf("%-34s %14.0f\n", "churn release+place/s at 1M", churn / churn_s);
  std::printf("%-34s %14.0f\n", "RSS at 1M live (MiB)", rss);

  if (!absl::GetFlag(FLAGS_recovery)) return 0;
  dsec::testing::TempDir dir;
  std::string db = dir.Join("db");
  absl::Time w0 = absl::Now();
  {
    auto store = dsec::controller::Store::Open(db);
    if (!store.ok()) {
      std::fprintf(stderr, "store: %s\n", store.status().ToString().c_str());
      return 1;
    }
    dsec::controller::Store::Batch batch;
    auto now = google::protobuf::util::TimeUtil::GetCurrentTime();
    for (size_t i = 0; i < live.size(); ++i) {
      dsec::v1::Sandbox sb;
      sb.set_id(absl::StrCat("sb-", 100000000 + i));
      sb.set_job_id(absl::StrCat("job-", live[i].job));
      auto* spec = sb.mutable_spec();
      spec->set_image(images[i % 20]);
      spec->mutable_limits()->set_cpu_millicores(live[i].cpu);
      spec->mutable_limits()->set_memory_bytes(live[i].mem);
      spec->mutable_ttl()->set_seconds(86400);
      (*spec->mutable_labels())["task"] = absl::StrCat("t", i / 16);
      spec->set_job_id(sb.job_id());
      sb.set_state(dsec::v1::SANDBOX_STATE_RUNNING);
      sb.set_state_reason("started");
      sb.set_node_id(placer.NodeId(live[i].node));
      sb.set_agent_endpoint(absl::StrCat("10.0.", live[i].node / 256, ".",
                                         live[i].node % 256, ":7071"));
      *sb.mutable_create_time() = now;
      *sb.mutable_update_time() = now;
      *sb.mutable_expire_time() = now;
      sb.set_group_id(absl::StrCat("grp-", i / 16));
      sb.set_resource_version(static_cast<int64_t>(i + 1));
      batch.PutSandbox(sb);
      if (batch.size() == 1000) {
        if (!(*store)->Write(std::move(batch)).ok()) return 1;
        batch = dsec::controller::Store::Batch();
      }
    }
    if (!(*store)->Write(std::move(batch)).ok()) return 1;
  }
  double write_s = absl::ToDoubleSeconds(absl::Now() - w0);
  absl::Time r0 = absl::Now();
  size_t loaded = 0;
  double rss_loaded = 0;
  {
    auto store = dsec::controller::Store::Open(db);
    if (!store.ok()) return 1;
    auto state = (*store)->LoadAll();
    if (!state.ok()) return 1;
    loaded = state->sandboxes.size();
    // Rebuild reservations as the controller does.
    Placer rebuilt;
    for (int i = 0; i < n_nodes; ++i) {
      rebuilt.UpsertNode(absl::StrCat("node-", i), {128000, 512 * kGiB, 200},
                         {}, {});
    }
    for (const auto& sb : state->sandboxes) {
      auto n = rebuilt.FindNode(sb.node_id());
      if (n)
        rebuilt.Reserve(*n, sb.spec().limits().cpu_millicores(),
                        sb.spec().limits().memory_bytes());
    }
    // What a recovered controller holds: every record plus the placer.
    rss_loaded = RssMiB();
  }
  double load_s = absl::ToDoubleSeconds(absl::Now() - r0);
  std::printf("%-34s %14.1f\n", "store write 1M records (s)", write_s);
  std::printf("%-34s %14.2f\n", "recovery: reopen+load+rebuild (s)", load_s);
  std::printf("%-34s %14zu\n", "records recovered", loaded);
  std::printf("%-34s %14.0f\n", "RSS, 1M records + placer (MiB)", rss_loaded);
  return 0;
}
