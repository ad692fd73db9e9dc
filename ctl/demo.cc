// The demo rollout behind `dsecctl demo` and `dsecctl local up --demo`: what
// an RL trainer does with dsec, in miniature.
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/token.h"
#include "ctl/commands.h"

namespace dsec::ctl {
namespace {

// Candidate "model answers" for one task; some are wrong on purpose.
const char* const kCandidates[] = {
    "def add(a, b):\n    return a + b\n",
    "def add(a, b):\n    return a - b\n",
    "def add(a, b):\n    return sum([a, b])\n",
    "def add(a, b):\n    while True: pass\n",
};

const char kTest[] =
    "python3 - <<'EOF'\n"
    "from solution import add\n"
    "cases = [(1, 2, 3), (2, 3, 5), (-1, 1, 0), (10, 20, 30)]\n"
    "passed = sum(add(a, b) == c for a, b, c in cases)\n"
    "print(f'{passed}/{len(cases)} passed')\n"
    "EOF\n";

std::string ShortStatus(const dsec::v1::ExecResult& r) {
  switch (r.status()) {
    case dsec::v1::EXEC_STATUS_EXITED:
      return absl::StrCat("exit ", r.exit_code());
    case dsec::v1::EXEC_STATUS_TIMED_OUT:
      return "timed out";
    case dsec::v1::EXEC_STATUS_OOM_KILLED:
      return "oom";
    case dsec::v1::EXEC_STATUS_PIDS_LIMIT:
      return "pids limit";
    case dsec::v1::EXEC_STATUS_SIGNALED:
      return absl::StrCat("signal ", r.signal());
    default:
      return dsec::v1::ExecStatus_Name(r.status());
  }
}

}  // namespace

int RunDemo(const CommandContext& ctx, int count, std::ostream& out,
            std::ostream& err) {
  ControllerConn admin(ctx.conn);
  const absl::Time t0 = absl::Now();

  // 1. A job: the unit of quota, fair share and lease.
  dsec::v1::CreateJobRequest job_req;
  job_req.set_name(absl::StrCat("demo-", dsec::RandomHex(3)));
  job_req.mutable_quota()->set_max_sandboxes(count * 2);
  job_req.set_weight(1);
  job_req.mutable_lease_ttl()->set_seconds(600);
  dsec::v1::Job job;
  {
    auto c = admin.Context();
    grpc::Status s = admin.jobs().CreateJob(c.get(), job_req, &job);
    if (!s.ok()) {
      err << "error: " << RpcError(s, "create demo job").message() << "\n";
      return 1;
    }
  }
  out << "job " << job.name() << " (" << job.id() << ")\n";
  ConnOptions job_conn_opts = ctx.conn;
  job_conn_opts.api_key = job.api_key();
  ControllerConn conn(job_conn_opts);

  // 2. A GRPO group: one call creates them all, spread over nodes.
  dsec::v1::CreateSandboxesRequest create;
  create.set_count(count);
  auto* spec = create.mutable_spec();
  spec->set_job_id(job.id());
  spec->mutable_limits()->set_memory_bytes(256LL << 20);
  spec->mutable_limits()->set_pids(128);
  spec->mutable_limits()->set_cpu_millicores(1000);
  spec->set_warm_pool_class("default");
  (*spec->mutable_labels())["app"] = "dsec-demo";
  create.mutable_placement()->set_spread(dsec::v1::GROUP_SPREAD_SPREAD);
  create.mutable_queue_timeout()->set_seconds(30);
  dsec::v1::CreateSandboxesResponse group;
  const absl::Time c0 = absl::Now();
  {
    auto c = conn.Context(absl::Seconds(60));
    grpc::Status s = conn.sandboxes().CreateSandboxes(c.get(), create, &group);
    if (!s.ok()) {
      err << "error: " << RpcError(s, "create sandboxes").message() << "\n";
      return 1;
    }
  }
  out << absl::StrFormat("created %d sandboxes (group %s) in %.1f ms\n",
                         group.handles_size(), group.group_id(),
                         absl::ToDoubleMilliseconds(absl::Now() - c0));

  // 3. An episode per sandbox: write the candidate, run the test, score it.
  struct Row {
    std::string status, output;
    double reward = 0, wall_ms = 0;
    std::string error;
  };
  std::vector<Row> rows(group.handles_size());
  std::vector<std::thread> threads;
  const int kThreads = std::min(group.handles_size(), 16);
  std::atomic<int> next{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      ControllerConn local(job_conn_opts);
      for (int i = next++; i < group.handles_size(); i = next++) {
        const auto& h = group.handles(i);
        const char* candidate = kCandidates[i % 4];
        dsec::v1::ExecRequest req;
        req.set_action_id(absl::StrCat("demo-step-", i));
        req.set_shell(absl::StrCat(
            "mkdir -p /work && cd /work && cat > solution.py <<'EOF'\n",
            candidate, "EOF\n", kTest));
        req.set_cwd("/");
        req.mutable_timeout()->set_seconds(3);
        auto r = RunExec(local, h, req, absl::Seconds(20));
        if (!r.ok()) {
          rows[i].error = std::string(r.status().message());
          continue;
        }
        rows[i].status = ShortStatus(*r);
        std::string o = r->stdout_data();
        while (!o.empty() && o.back() == '\n') o.pop_back();
        rows[i].output = o;
        int passed = 0, total = 0;
        if (r->status() == dsec::v1::EXEC_STATUS_EXITED &&
            sscanf(o.c_str(), "%d/%d", &passed, &total) == 2 && total > 0) {
          rows[i].reward = double(passed) / total;
        }
        rows[i].wall_ms = absl::ToDoubleMilliseconds(
            absl::Seconds(r->wall_time().seconds()) +
            absl::Nanoseconds(r->wall_time().nanos()));
      }
    });
  }
  for (auto& t : threads) t.join();
  std::vector<std::vector<std::string>> table = {
      {"SANDBOX", "NODE", "CANDIDATE", "RESULT", "OUTPUT", "REWARD", "WALL"}};
  double total_reward = 0;
  int failures = 0;
  for (int i = 0; i < group.handles_size(); ++i) {
    const Row& r = rows[i];
    if (!r.error.empty()) {
      ++failures;
      table.push_back({group.handles(i).sandbox_id(),
                       group.handles(i).node_id(), absl::StrCat(i % 4),
                       "infra error", r.error, "-", "-"});
      continue;
    }
    total_reward += r.reward;
    table.push_back({group.handles(i).sandbox_id(), group.handles(i).node_id(),
                     absl::StrCat(i % 4), r.status,
                     r.output.empty() ? "-" : r.output,
                     absl::StrFormat("%.2f", r.reward),
                     absl::StrFormat("%.0f ms", r.wall_ms)});
  }
  PrintTable(table, out);
  out << absl::StrFormat(
      "mean reward %.3f over %d episodes\n",
      total_reward / std::max(1, group.handles_size() - failures),
      group.handles_size() - failures);

  // 4. Hostile code meets the sandbox.
  if (group.handles_size() > 0) {
    dsec::v1::ExecRequest req;
    req.set_shell(
        "echo -n 'host secrets: '; cat /etc/shadow 2>&1 | head -c 60; "
        "echo -n 'network interfaces: '; awk -F: 'NR>2{gsub(/ /, \"\", $1); "
        "printf \"%s \", $1}' /proc/net/dev; echo; "
        "echo -n 'processes: '; ls /proc | grep -c '^[0-9]'; "
        "echo -n 'fork bomb: '; (f(){ f|f& }; f) 2>/dev/null; sleep 1; echo "
        "survived");
    req.mutable_timeout()->set_seconds(5);
    auto r = RunExec(conn, group.handles(0), req, absl::Seconds(20));
    out << "isolation check in " << group.handles(0).sandbox_id() << ":\n";
    if (r.ok()) {
      out << r->stdout_data() << "  -> " << ShortStatus(*r)
          << (r->pids_limit_hit() ? " (pids limit hit, node unharmed)" : "")
          << "\n";
    } else {
      out << "  " << r.status().message() << "\n";
    }
  }

  // 5. Clean up: the trainer deletes its group (a lapsed lease would too).
  dsec::v1::DeleteSandboxesRequest del;
  for (const auto& h : group.handles()) del.add_sandbox_ids(h.sandbox_id());
  dsec::v1::DeleteSandboxesResponse del_resp;
  {
    auto c = conn.Context();
    grpc::Status s = conn.sandboxes().DeleteSandboxes(c.get(), del, &del_resp);
    if (!s.ok()) err << "warning: " << RpcError(s, "delete").message() << "\n";
  }
  {
    dsec::v1::DeleteJobRequest req;
    req.set_job_id(job.id());
    dsec::v1::DeleteJobResponse resp;
    auto c = admin.Context();
    (void)admin.jobs().DeleteJob(c.get(), req, &resp);
  }
  out << absl::StrFormat("deleted %d sandboxes; demo took %.2f s\n",
                         del_resp.deleted_ids_size(),
                         absl::ToDoubleSeconds(absl::Now() - t0));
  return failures == 0 ? 0 : 1;
}

}  // namespace dsec::ctl
