#include "ctl/commands.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/units.h"
#include "ctl/cli_util.h"
#include "ctl/fs_commands.h"

namespace dsec::ctl {
namespace {

using dsec::v1::SandboxState;

// ---- output
// ---------------------------------------------------------------------

std::string StateName(SandboxState s) {
  std::string n = dsec::v1::SandboxState_Name(s);
  absl::string_view v = n;
  absl::ConsumePrefix(&v, "SANDBOX_STATE_");
  return absl::AsciiStrToLower(v);
}

std::string NodeStateName(dsec::v1::NodeState s) {
  std::string n = dsec::v1::NodeState_Name(s);
  absl::string_view v = n;
  absl::ConsumePrefix(&v, "NODE_STATE_");
  return absl::AsciiStrToLower(v);
}

std::string Age(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0) return "-";
  absl::Duration d = absl::Now() - absl::FromUnixSeconds(t.seconds());
  if (d < absl::Minutes(2)) return absl::StrCat(absl::ToInt64Seconds(d), "s");
  if (d < absl::Hours(2)) return absl::StrCat(absl::ToInt64Minutes(d), "m");
  return absl::StrCat(absl::ToInt64Hours(d), "h");
}

class Progress {
 public:
  Progress(bool enabled, std::string what, int total)
      : enabled_(enabled && total > 1), what_(std::move(what)), total_(total) {}
  void Update(int done) {
    if (!enabled_) return;
    const int width = 30;
    int fill = total_ == 0 ? width : done * width / total_;
    std::cerr << "\r" << what_ << " [" << std::string(fill, '#')
              << std::string(width - fill, '.') << "] " << done << "/" << total_
              << std::flush;
    if (done >= total_) std::cerr << "\n";
  }

 private:
  bool enabled_;
  std::string what_;
  int total_;
};

// ---- commands
// ---------------------------------------------------------------------

int Nodes(const CommandContext& ctx, ControllerConn& conn, const Args& a,
          std::ostream& out, std::ostream& err) {
  std::string verb = a.positional.size() > 1 ? a.positional[1] : "list";
  if (verb == "list") {
    dsec::v1::ListNodesResponse resp;
    auto c = conn.Context();
    grpc::Status s = conn.admin().ListNodes(c.get(), {}, &resp);
    if (!s.ok()) return Fail(err, RpcError(s, "list nodes"));
    if (ctx.output == Output::kJson) {
      out << Json(resp) << "\n";
      return 0;
    }
    std::vector<std::vector<std::string>> rows = {{"NODE", "STATE", "ENDPOINT",
                                                   "SANDBOXES", "CPU USED",
                                                   "MEM USED", "HEARTBEAT"}};
    for (const auto& n : resp.nodes()) {
      rows.push_back(
          {n.node_id(), NodeStateName(n.state()), n.endpoint(),
           absl::StrCat(n.live_sandboxes(), "/", n.capacity().max_sandboxes()),
           absl::StrCat(n.used_cpu_millicores(), "m/",
                        n.capacity().cpu_millicores(), "m"),
           absl::StrCat(Bytes(n.used_memory_bytes()), "/",
                        Bytes(n.capacity().memory_bytes())),
           Age(n.last_heartbeat_time())});
    }
    PrintTable(rows, out);
    return 0;
  }
  if (verb == "cordon" || verb == "uncordon" || verb == "drain") {
    if (a.positional.size() != 3)
      return Usage(err, absl::StrCat("nodes ", verb, " NODE"));
    dsec::v1::Node node;
    auto c = conn.Context();
    grpc::Status s;
    if (verb == "drain") {
      dsec::v1::DrainNodeRequest req;
      req.set_node_id(a.positional[2]);
      s = conn.admin().DrainNode(c.get(), req, &node);
    } else {
      dsec::v1::CordonNodeRequest req;
      req.set_node_id(a.positional[2]);
      req.set_cordon(verb == "cordon");
      s = conn.admin().CordonNode(c.get(), req, &node);
    }
    if (!s.ok())
      return Fail(err, RpcError(s, absl::StrCat(verb, " ", a.positional[2])));
    if (ctx.output == Output::kJson) {
      out << Json(node) << "\n";
    } else {
      out << "node " << node.node_id() << " is " << NodeStateName(node.state())
          << "\n";
    }
    return 0;
  }
  return Usage(err, absl::StrCat("unknown nodes command '", verb, "'"));
}

absl::StatusOr<std::vector<dsec::v1::Sandbox>> ListAll(
    ControllerConn& conn, const std::string& job, const std::string& state) {
  std::vector<dsec::v1::Sandbox> all;
  dsec::v1::ListSandboxesRequest req;
  req.set_page_size(500);
  if (!job.empty()) req.set_job_id(job);
  if (!state.empty()) {
    dsec::v1::SandboxState st;
    if (!dsec::v1::SandboxState_Parse(
            "SANDBOX_STATE_" + absl::AsciiStrToUpper(state), &st)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown state '", state,
                       "' (pending, starting, running, parked, lost, ...)"));
    }
    req.add_states(st);
  }
  while (true) {
    dsec::v1::ListSandboxesResponse resp;
    auto c = conn.Context();
    grpc::Status s = conn.sandboxes().ListSandboxes(c.get(), req, &resp);
    if (!s.ok()) return RpcError(s, "list sandboxes");
    for (const auto& sb : resp.sandboxes()) all.push_back(sb);
    if (resp.next_page_token().empty()) return all;
    req.set_page_token(resp.next_page_token());
  }
}

int DeleteIds(const CommandContext& ctx, ControllerConn& conn,
              const std::vector<std::string>& ids, std::ostream& out,
              std::ostream& err) {
  Progress bar(ctx.progress, "deleting", static_cast<int>(ids.size()));
  int deleted = 0, missing = 0;
  for (size_t i = 0; i < ids.size(); i += 100) {
    dsec::v1::DeleteSandboxesRequest req;
    for (size_t j = i; j < std::min(ids.size(), i + 100); ++j)
      req.add_sandbox_ids(ids[j]);
    req.set_reason("dsecctl delete");
    dsec::v1::DeleteSandboxesResponse resp;
    auto c = conn.Context();
    grpc::Status s = conn.sandboxes().DeleteSandboxes(c.get(), req, &resp);
    if (!s.ok()) return Fail(err, RpcError(s, "delete sandboxes"));
    deleted += resp.deleted_ids_size();
    missing += resp.not_found_ids_size();
    for (const auto& id : resp.not_found_ids())
      err << "not found: " << id << "\n";
    bar.Update(static_cast<int>(std::min(ids.size(), i + 100)));
  }
  out << "deleted " << deleted << " sandbox(es)";
  if (missing) out << ", " << missing << " not found";
  out << "\n";
  return missing ? 1 : 0;
}

absl::StatusOr<dsec::v1::SandboxHandle> HandleFor(ControllerConn& conn,
                                                  const std::string& id) {
  dsec::v1::RenewTokenRequest req;
  req.set_sandbox_id(id);
  dsec::v1::SandboxHandle handle;
  auto c = conn.Context();
  grpc::Status s = conn.sandboxes().RenewToken(c.get(), req, &handle);
  if (!s.ok()) return RpcError(s, absl::StrCat("token for ", id));
  return handle;
}

int Sandboxes(const CommandContext& ctx, ControllerConn& conn, const Args& a,
              std::ostream& out, std::ostream& err) {
  std::string verb = a.positional.size() > 1 ? a.positional[1] : "list";
  if (verb == "list") {
    auto all = ListAll(conn, a.Get("job"), a.Get("state"));
    if (!all.ok()) return Fail(err, all.status());
    if (ctx.output == Output::kJson) {
      dsec::v1::ListSandboxesResponse resp;
      for (auto& sb : *all) *resp.add_sandboxes() = sb;
      out << Json(resp) << "\n";
      return 0;
    }
    std::vector<std::vector<std::string>> rows = {
        {"SANDBOX", "JOB", "STATE", "NODE", "GROUP", "AGE", "REASON"}};
    for (const auto& sb : *all) {
      rows.push_back({sb.id(), sb.job_id(), StateName(sb.state()), sb.node_id(),
                      sb.group_id(), Age(sb.create_time()), sb.state_reason()});
    }
    PrintTable(rows, out);
    return 0;
  }
  if (verb == "inspect") {
    if (a.positional.size() != 3) return Usage(err, "sandboxes inspect ID");
    dsec::v1::GetSandboxRequest req;
    req.set_sandbox_id(a.positional[2]);
    dsec::v1::Sandbox sb;
    auto c = conn.Context();
    grpc::Status s = conn.sandboxes().GetSandbox(c.get(), req, &sb);
    if (!s.ok())
      return Fail(err, RpcError(s, absl::StrCat("get ", a.positional[2])));
    out << Json(sb) << "\n";
    return 0;
  }
  if (verb == "delete") {
    std::vector<std::string> ids(a.positional.begin() + 2, a.positional.end());
    if (a.Has("job")) {
      auto all = ListAll(conn, a.Get("job"), "");
      if (!all.ok()) return Fail(err, all.status());
      for (const auto& sb : *all) {
        if (sb.state() != dsec::v1::SANDBOX_STATE_TERMINATED)
          ids.push_back(sb.id());
      }
    }
    if (ids.empty()) return Usage(err, "sandboxes delete ID... | --job JOB");
    return DeleteIds(ctx, conn, ids, out, err);
  }
  if (verb == "exec") {
    if (a.positional.size() != 3 || a.rest.empty()) {
      return Usage(err, "sandboxes exec ID [--timeout 30s] -- CMD [ARGS...]");
    }
    auto timeout = DurationFlag(a, "timeout", absl::Seconds(30));
    if (!timeout.ok()) return Usage(err, timeout.status().message());
    auto handle = HandleFor(conn, a.positional[2]);
    if (!handle.ok()) return Fail(err, handle.status());
    dsec::v1::ExecRequest req;
    for (const auto& s : a.rest) req.mutable_argv()->add_args(s);
    req.mutable_timeout()->set_seconds(absl::ToInt64Seconds(*timeout));
    const bool json = ctx.output == Output::kJson;
    auto result = RunExec(
        conn, *handle, req, *timeout + absl::Seconds(10),
        json ? std::function<void(const dsec::v1::ExecOutput&)>()
             : [&](const dsec::v1::ExecOutput& o) {
                 (o.stream() == dsec::v1::OUTPUT_STREAM_STDERR ? err : out)
                     << o.data() << std::flush;
               });
    if (!result.ok()) return Fail(err, result.status());
    if (json) {
      out << Json(*result) << "\n";
      return 0;
    }
    if (result->status() != dsec::v1::EXEC_STATUS_EXITED) {
      err << "[" << dsec::v1::ExecStatus_Name(result->status()) << "]\n";
      return 1;
    }
    return result->exit_code();
  }
  return Usage(err, absl::StrCat("unknown sandboxes command '", verb, "'"));
}

absl::Status FillQuota(const Args& a, dsec::v1::JobQuota* q) {
  auto n = IntFlag(a, "max_sandboxes", 0);
  if (!n.ok()) return n.status();
  q->set_max_sandboxes(*n);
  if (a.Has("cpu")) {
    auto m = dsec::ParseMillicores(a.Get("cpu"));
    if (!m.ok()) return m.status();
    q->set_cpu_millicores(*m);
  }
  if (a.Has("memory")) {
    auto b = dsec::ParseByteSize(a.Get("memory"));
    if (!b.ok()) return b.status();
    q->set_memory_bytes(*b);
  }
  return absl::OkStatus();
}

int Jobs(const CommandContext& ctx, ControllerConn& conn, const Args& a,
         std::ostream& out, std::ostream& err) {
  std::string verb = a.positional.size() > 1 ? a.positional[1] : "list";
  auto print_job = [&](const dsec::v1::Job& j) {
    if (ctx.output == Output::kJson) {
      out << Json(j) << "\n";
      return;
    }
    PrintTable(
        {{"JOB", "NAME", "STATE", "SANDBOXES", "MAX", "WEIGHT", "PRIORITY"},
         {j.id(), j.name(), dsec::v1::JobState_Name(j.state()),
          absl::StrCat(j.usage().sandboxes()),
          absl::StrCat(j.quota().max_sandboxes()), absl::StrCat(j.weight()),
          absl::StrCat(j.priority())}},
        out);
    if (!j.api_key().empty()) {
      out << "api key (shown once): " << j.api_key() << "\n";
    }
  };
  if (verb == "create") {
    if (a.positional.size() != 3)
      return Usage(err, "jobs create NAME [--max_sandboxes N] ...");
    dsec::v1::CreateJobRequest req;
    req.set_name(a.positional[2]);
    if (absl::Status s = FillQuota(a, req.mutable_quota()); !s.ok())
      return Usage(err, s.message());
    auto w = IntFlag(a, "weight", 1);
    auto p = IntFlag(a, "priority", 0);
    auto ttl = DurationFlag(a, "lease_ttl", absl::Minutes(10));
    if (!w.ok()) return Usage(err, w.status().message());
    if (!p.ok()) return Usage(err, p.status().message());
    if (!ttl.ok()) return Usage(err, ttl.status().message());
    req.set_weight(static_cast<int32_t>(*w));
    req.set_priority(static_cast<int32_t>(*p));
    req.mutable_lease_ttl()->set_seconds(absl::ToInt64Seconds(*ttl));
    dsec::v1::Job job;
    auto c = conn.Context();
    grpc::Status s = conn.jobs().CreateJob(c.get(), req, &job);
    if (!s.ok()) return Fail(err, RpcError(s, "create job"));
    print_job(job);
    return 0;
  }
  if (verb == "list") {
    dsec::v1::ListJobsRequest req;
    req.set_page_size(500);
    dsec::v1::ListJobsResponse all;
    while (true) {
      dsec::v1::ListJobsResponse resp;
      auto c = conn.Context();
      grpc::Status s = conn.jobs().ListJobs(c.get(), req, &resp);
      if (!s.ok()) return Fail(err, RpcError(s, "list jobs"));
      for (auto& j : resp.jobs()) *all.add_jobs() = j;
      if (resp.next_page_token().empty()) break;
      req.set_page_token(resp.next_page_token());
    }
    if (ctx.output == Output::kJson) {
      out << Json(all) << "\n";
      return 0;
    }
    std::vector<std::vector<std::string>> rows = {
        {"JOB", "NAME", "STATE", "SANDBOXES", "MAX", "CPU", "MEMORY", "WEIGHT",
         "LEASE"}};
    for (const auto& j : all.jobs()) {
      rows.push_back({j.id(), j.name(), dsec::v1::JobState_Name(j.state()),
                      absl::StrCat(j.usage().sandboxes()),
                      absl::StrCat(j.quota().max_sandboxes()),
                      absl::StrCat(j.usage().cpu_millicores(), "m"),
                      Bytes(j.usage().memory_bytes()), absl::StrCat(j.weight()),
                      j.lease_expire_time().seconds() == 0
                          ? "-"
                          : absl::StrCat(j.lease_expire_time().seconds() -
                                             absl::ToUnixSeconds(absl::Now()),
                                         "s left")});
    }
    PrintTable(rows, out);
    return 0;
  }
  if (verb == "quota") {
    if (a.positional.size() != 3)
      return Usage(err,
                   "jobs quota JOB [--max_sandboxes N] [--cpu C] [--memory M] "
                   "[--weight W] [--priority P]");
    dsec::v1::UpdateJobQuotaRequest req;
    req.set_job_id(a.positional[2]);
    if (absl::Status s = FillQuota(a, req.mutable_quota()); !s.ok())
      return Usage(err, s.message());
    if (a.Has("weight")) {
      auto w = IntFlag(a, "weight", 1);
      if (!w.ok()) return Usage(err, w.status().message());
      req.set_weight(static_cast<int32_t>(*w));
    }
    if (a.Has("priority")) {
      auto p = IntFlag(a, "priority", 0);
      if (!p.ok()) return Usage(err, p.status().message());
      req.set_priority(static_cast<int32_t>(*p));
    }
    dsec::v1::Job job;
    auto c = conn.Context();
    grpc::Status s = conn.jobs().UpdateJobQuota(c.get(), req, &job);
    if (!s.ok()) return Fail(err, RpcError(s, "update quota"));
    print_job(job);
    return 0;
  }
  if (verb == "renew" || verb == "delete") {
    if (a.positional.size() != 3)
      return Usage(err, absl::StrCat("jobs ", verb, " JOB"));
    auto c = conn.Context();
    grpc::Status s;
    if (verb == "renew") {
      dsec::v1::RenewLeaseRequest req;
      req.set_job_id(a.positional[2]);
      dsec::v1::RenewLeaseResponse resp;
      s = conn.jobs().RenewLease(c.get(), req, &resp);
    } else {
      dsec::v1::DeleteJobRequest req;
      req.set_job_id(a.positional[2]);
      dsec::v1::DeleteJobResponse resp;
      s = conn.jobs().DeleteJob(c.get(), req, &resp);
    }
    if (!s.ok()) return Fail(err, RpcError(s, absl::StrCat(verb, " job")));
    out << "job " << a.positional[2]
        << (verb == "renew" ? ": lease renewed" : ": deleting") << "\n";
    return 0;
  }
  return Usage(err, absl::StrCat("unknown jobs command '", verb, "'"));
}

int Stats(const CommandContext& ctx, ControllerConn& conn, std::ostream& out,
          std::ostream& err) {
  dsec::v1::ClusterStats st;
  auto c = conn.Context();
  grpc::Status s = conn.admin().GetClusterStats(c.get(), {}, &st);
  if (!s.ok()) return Fail(err, RpcError(s, "cluster stats"));
  if (ctx.output == Output::kJson) {
    out << Json(st) << "\n";
    return 0;
  }
  std::vector<std::vector<std::string>> rows = {{"WHAT", "COUNT"}};
  rows.push_back({"nodes ready", absl::StrCat(st.nodes_ready())});
  rows.push_back({"nodes cordoned", absl::StrCat(st.nodes_cordoned())});
  rows.push_back({"nodes dead", absl::StrCat(st.nodes_dead())});
  rows.push_back({"jobs", absl::StrCat(st.jobs())});
  rows.push_back({"queued requests", absl::StrCat(st.queued_requests())});
  rows.push_back({"placements", absl::StrCat(st.placements_total())});
  std::map<std::string, int64_t> by_state(st.sandboxes_by_state().begin(),
                                          st.sandboxes_by_state().end());
  for (const auto& [k, v] : by_state)
    rows.push_back({"sandboxes " + k, absl::StrCat(v)});
  PrintTable(rows, out);
  return 0;
}

const char kHelp[] =
    "dsecctl: administer a dsec cluster\n"
    "\n"
    "global flags: --controller HOST:PORT (default $DSEC_CONTROLLER or "
    "127.0.0.1:7070)\n"
    "              --api_key KEY (default $DSEC_API_KEY)   -o table|json\n"
    "              --tls_ca CA.pem [--tls_cert C.pem --tls_key K.pem]\n"
    "              --fs_meta HOST:PORT dsec-fs meta server (default "
    "$DSEC_FS_META or 127.0.0.1:9400)\n"
    "\n"
    "  local up [--data_dir DIR] [--port 7070] [--demo] [--count N]\n"
    "           [--run CMD ARGS...]  run CMD against the cluster, then stop\n"
    "  nodes list | cordon NODE | uncordon NODE | drain NODE\n"
    "  sandboxes list [--job J] [--state S] | inspect ID | delete ID... | "
    "delete --job J\n"
    "            exec ID [--timeout 30s] -- CMD [ARGS...]\n"
    "  jobs create NAME [--max_sandboxes N] [--cpu 4] [--memory 8G] [--weight "
    "W]\n"
    "                   [--priority P] [--lease_ttl 10m]\n"
    "       list | quota JOB [...] | renew JOB | delete JOB\n"
    "  stats\n"
    "  demo [--count 8]     a short rollout against a running cluster\n"
    "  fs ls [PATH] | stat PATH | mkdir [-p] PATH | rm [-r] PATH\n"
    "     put LOCAL REMOTE | get REMOTE LOCAL|- | df | chains\n"
    "  image import NAME DIR|TARBALL | image list\n";

}  // namespace

void PrintTable(const std::vector<std::vector<std::string>>& rows,
                std::ostream& out) {
  std::vector<size_t> width;
  for (const auto& r : rows) {
    if (width.size() < r.size()) width.resize(r.size(), 0);
    for (size_t i = 0; i < r.size(); ++i)
      width[i] = std::max(width[i], r[i].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size())
        line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << "\n";
  }
}

int Run(const CommandContext& ctx, const std::vector<std::string>& args,
        std::ostream& out, std::ostream& err) {
  if (args.empty() || args[0] == "help" || args[0] == "--help") {
    (args.empty() ? err : out) << kHelp;
    return args.empty() ? 2 : 0;
  }
  auto parsed = ParseArgs(args, 0);
  if (!parsed.ok()) return Usage(err, parsed.status().message());
  const std::string& group = args[0];
  if (group == "fs" || group == "image") {
    FsCommandOptions fs_options{.meta_address = ctx.fs_meta,
                                .json = ctx.output == Output::kJson};
    return group == "fs" ? RunFs(fs_options, *parsed, out, err)
                         : RunImage(fs_options, *parsed, out, err);
  }
  ControllerConn conn(ctx.conn);
  if (group == "nodes" || group == "node")
    return Nodes(ctx, conn, *parsed, out, err);
  if (group == "sandboxes" || group == "sandbox" || group == "sb") {
    return Sandboxes(ctx, conn, *parsed, out, err);
  }
  if (group == "jobs" || group == "job")
    return Jobs(ctx, conn, *parsed, out, err);
  if (group == "stats") return Stats(ctx, conn, out, err);
  if (group == "demo") {
    auto n = IntFlag(*parsed, "count", 8);
    if (!n.ok() || *n < 1 || *n > 1000)
      return Usage(err, "--count must be 1..1000");
    return RunDemo(ctx, static_cast<int>(*n), out, err);
  }
  return Usage(err, absl::StrCat("unknown command '", group, "'"));
}

}  // namespace dsec::ctl
