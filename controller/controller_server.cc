// Invariants:
//  * A sandbox holds quota (job usage) and node resources (Placer) exactly
//    while it is live: STARTING, RUNNING, PARKED, SNAPSHOTTING. The move to
//    TERMINATING or any terminal state releases both, in Transition().
//  * Every sandbox change bumps rv_, appends one event to history_ and is
//    written to the store (sandbox record and event) in the same critical
//    section and batch.
//  * Agent RPCs run without mu_ held; their results are applied under mu_
//    and re-checked (the sandbox may have been deleted meanwhile).
#include "controller/controller_server.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <set>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/node_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/status_macros.h"
#include "common/token.h"
#include "controller/placement.h"
#include "controller/store.h"
#include "dsec/v1/agent_service.grpc.pb.h"
#include "dsec/v1/job_service.grpc.pb.h"
#include "dsec/v1/node_service.grpc.pb.h"
#include "dsec/v1/sandbox_service.grpc.pb.h"
#include "fs/image.h"
#include "google/protobuf/util/time_util.h"

namespace dsec::controller {
namespace {

using google::protobuf::util::TimeUtil;

constexpr int kMaxBatch = 4096;
constexpr int kMaxDeleteIds = 1000;
constexpr char kNodeKeyHeader[] = "x-dsec-node-key";
constexpr char kAdminKeyHeader[] = "x-dsec-admin-key";
constexpr char kShortfallTrailer[] = "dsec-shortfall-bin";

google::protobuf::Timestamp ToProto(absl::Time t) {
  return TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(t));
}
absl::Time FromProto(const google::protobuf::Timestamp& t) {
  return absl::FromUnixNanos(TimeUtil::TimestampToNanoseconds(t));
}
absl::Duration FromProto(const google::protobuf::Duration& d) {
  return absl::Nanoseconds(TimeUtil::DurationToNanoseconds(d));
}
google::protobuf::Duration ToProtoDuration(absl::Duration d) {
  return TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(d));
}

bool IsLive(v1::SandboxState s) {
  return s == v1::SANDBOX_STATE_PENDING || s == v1::SANDBOX_STATE_STARTING ||
         s == v1::SANDBOX_STATE_RUNNING || s == v1::SANDBOX_STATE_PARKED ||
         s == v1::SANDBOX_STATE_SNAPSHOTTING;
}
bool IsTerminal(v1::SandboxState s) {
  return s == v1::SANDBOX_STATE_TERMINATED || s == v1::SANDBOX_STATE_LOST ||
         s == v1::SANDBOX_STATE_FAILED;
}

bool ValidLabelText(const std::string& s) {
  if (s.size() > 63) return false;
  for (char c : s) {
    if (!(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
          c == '_' || c == '/' || c == '-')) {
      return false;
    }
  }
  return true;
}

bool ValidJobName(const std::string& s) {
  if (s.empty() || s.size() > 63) return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) {
      return false;
    }
  }
  return true;
}

std::string NewId(absl::string_view prefix) {
  return absl::StrCat(prefix, RandomHex(8));
}

bool LabelsMatch(const google::protobuf::Map<std::string, std::string>& have,
                 const google::protobuf::Map<std::string, std::string>& want) {
  for (const auto& [k, v] : want) {
    auto it = have.find(k);
    if (it == have.end() || it->second != v) return false;
  }
  return true;
}

struct Caller {
  bool admin = false;
  std::string job_id;  // set for job keys
};

// Metrics shared by every controller in the process.
struct Metrics {
  metrics::Gauge* sandboxes;
  metrics::Counter* placements;
  metrics::Gauge* queue_depth;
  metrics::Histogram* queue_wait;
  metrics::Counter* heartbeats;
  metrics::Gauge* nodes;
  static Metrics& Get() {
    static Metrics* m = [] {
      auto& reg = metrics::Registry::Default();
      auto* out = new Metrics;
      out->sandboxes = reg.AddGauge("dsec_controller_sandboxes",
                                    "Sandboxes known, by state.", {"state"});
      out->placements = reg.AddCounter("dsec_controller_placements_total",
                                       "Sandboxes placed on nodes.");
      out->queue_depth = reg.AddGauge("dsec_controller_queue_depth",
                                      "Create requests waiting in the queue.");
      out->queue_wait =
          reg.AddHistogram("dsec_controller_queue_wait_seconds",
                           "Time create requests waited for admission.", {},
                           metrics::LatencyBuckets());
      out->heartbeats = reg.AddCounter("dsec_controller_heartbeats_total",
                                       "Agent heartbeats received.");
      out->nodes =
          reg.AddGauge("dsec_controller_nodes", "Nodes, by state.", {"state"});
      return out;
    }();
    return *m;
  }
};

}  // namespace

struct ControllerServer::Impl {
  // ---- state ---------------------------------------------------------------
  struct JobRec {
    v1::Job job;  // api_key empty; usage kept current
    std::string key_hash;
    // Per-job index for listing, newest first: (create ns, id).
    std::set<std::pair<int64_t, std::string>> sandboxes;
  };
  struct SbxRec {
    v1::Sandbox sb;
    std::optional<NodeIndex> node;
    bool recovered_starting = false;
    // The agent's code when it refused the start outright (not retried).
    absl::StatusCode start_error = absl::StatusCode::kOk;
  };
  struct NodeRec {
    v1::Node node;
    NodeIndex idx = 0;
    absl::Time last_heartbeat;
    bool cordoned = false;
    bool draining = false;
    bool dead = false;
    absl::flat_hash_set<std::string> sandboxes;  // live ones placed here
    std::shared_ptr<v1::NodeAgent::Stub> agent;
    std::shared_ptr<v1::SandboxRuntime::Stub> runtime;
  };
  struct Waiter {
    std::string job_id;
    int64_t seq = 0;
    int32_t count = 0;
    bool granted = false;
    std::vector<std::string> ids;  // when granted
    bool quota_blocked = false;
  };
  struct IdemRec {
    std::string fingerprint;
    bool done = false;
    absl::Status status;
    std::vector<std::string> ids;
    std::string group_id;
    v1::CapacityShortfall shortfall;
    absl::Time time;
  };
  // One create/fork request after validation.
  struct CreateArgs {
    v1::SandboxSpec spec;  // job_id set, defaults filled
    int32_t count = 1;
    int32_t min_count = 1;
    Spread spread = Spread::kSpread;
    int32_t max_per_node = 0;
    std::string request_id;
    std::string fingerprint;
    absl::Time queue_deadline;
    std::optional<std::string> only_node;
    std::string parent_snapshot_id;
  };
  struct CreateResult {
    std::vector<v1::SandboxHandle> handles;
    std::vector<v1::Sandbox> sandboxes;
    std::string group_id;
    v1::CapacityShortfall shortfall;
    bool has_shortfall = false;
  };

  explicit Impl(const ControllerOptions& o, TokenSigner s)
      : options(o),
        signer(std::move(s)),
        placer(PlacerOptions{o.placement_samples, 0x5eed}) {}

  ControllerOptions options;
  // Credentials for calls to agents (TLS when options.tls is set).
  std::shared_ptr<grpc::ChannelCredentials> agent_creds;
  TokenSigner signer;
  std::unique_ptr<Store> store;
  std::unique_ptr<grpc::Server> server;
  std::vector<std::unique_ptr<grpc::Service>> services;
  std::unique_ptr<metrics::HttpServer> http;
  int bound_port = 0;
  std::thread monitor;
  std::thread reconciler;
  std::atomic<bool> shut{false};

  mutable absl::Mutex mu;
  absl::CondVar cv;  // queue grants, idempotent joins, watch events
  bool stopping ABSL_GUARDED_BY(mu) = false;
  Placer placer ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<std::string, JobRec> jobs ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<std::string, std::string> job_by_key
      ABSL_GUARDED_BY(mu);  // hash -> id
  absl::node_hash_map<std::string, SbxRec> sandboxes ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<std::string, NodeRec> nodes ABSL_GUARDED_BY(mu);
  std::vector<std::string> node_by_index ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<std::string, v1::Snapshot> snapshots ABSL_GUARDED_BY(mu);
  // Deleted snapshots whose dsec-fs directories agents should remove, by
  // wall-clock deadline: every heartbeat answer names them until the
  // deadline. Each entry is also in the store (snapgc/<id>), written in the
  // batch that deletes the snapshot and deleted when it expires, so a
  // controller restart resumes the list.
  std::deque<std::pair<absl::Time, std::string>> snapshot_gc
      ABSL_GUARDED_BY(mu);

  // Queues `snap`'s dsec-fs directory for removal by the agents and records
  // that in `batch`, the batch that deletes the snapshot.
  void ForgetSnapshotOnFs(const v1::Snapshot& snap, Store::Batch* batch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (snap.fs_path().empty()) return;
    std::pair<absl::Time, std::string> entry(
        absl::Now() +
            std::max(absl::Seconds(30), 3 * options.heartbeat_timeout),
        snap.id());
    batch->PutSnapshotGc(entry.second, entry.first);
    // Usually the back; earlier when heartbeat_timeout shrank over a restart.
    snapshot_gc.insert(
        std::upper_bound(snapshot_gc.begin(), snapshot_gc.end(), entry),
        std::move(entry));
  }
  absl::flat_hash_map<std::string, IdemRec> idem ABSL_GUARDED_BY(mu);
  std::deque<std::pair<absl::Time, std::string>> idem_order ABSL_GUARDED_BY(mu);
  std::vector<Waiter*> queue ABSL_GUARDED_BY(mu);
  int64_t next_seq ABSL_GUARDED_BY(mu) = 0;
  int64_t rv ABSL_GUARDED_BY(mu) = 0;
  std::deque<v1::SandboxEvent> history ABSL_GUARDED_BY(mu);
  uint64_t history_trimmed ABSL_GUARDED_BY(mu) = 0;
  std::deque<std::pair<absl::Time, std::string>> terminal_order
      ABSL_GUARDED_BY(mu);
  int64_t state_counts[10] ABSL_GUARDED_BY(mu) = {};
  int64_t placements_total ABSL_GUARDED_BY(mu) = 0;
  bool pump_needed ABSL_GUARDED_BY(mu) = false;
  bool pumping ABSL_GUARDED_BY(mu) = false;

  // ---- helpers -------------------------------------------------------------
  static std::string QueueKey(const std::string& job, const std::string& rid) {
    return absl::StrCat(job, "\n", rid);
  }

  // Writes `batch`; then, if capacity was freed, grants queued requests.
  // Callers hold no references into the maps across this call.
  void Persist(Store::Batch batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    absl::Status s = store->Write(std::move(batch));
    if (!s.ok())
      DSEC_LOG_ERROR("controller: store write failed: {}", s.ToString());
    if (pump_needed && !pumping) {
      pump_needed = false;
      cv.SignalAll();
      PumpQueue();
    }
  }

  void PublishStateGauge(v1::SandboxState s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Metrics::Get().sandboxes->Set(
        {v1::SandboxState_Name(s)},
        static_cast<double>(state_counts[static_cast<int>(s)]));
  }

  void PublishNodeGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    int64_t counts[5] = {};
    for (const auto& [id, n] : nodes) counts[n.node.state()]++;
    for (int s = 1; s <= 4; ++s) {
      Metrics::Get().nodes->Set(
          {v1::NodeState_Name(static_cast<v1::NodeState>(s))},
          static_cast<double>(counts[s]));
    }
  }

  void SetNodeState(NodeRec& n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    v1::NodeState s = n.dead       ? v1::NODE_STATE_DEAD
                      : n.draining ? v1::NODE_STATE_DRAINING
                      : n.cordoned ? v1::NODE_STATE_CORDONED
                                   : v1::NODE_STATE_READY;
    n.node.set_state(s);
    placer.SetSchedulable(n.idx, s == v1::NODE_STATE_READY);
    PublishNodeGauges();
  }

  // Publishes an event to watchers and persists it in `batch`, so that a
  // watch resumes across a controller restart.
  void Emit(v1::SandboxEvent::Type type, const v1::Sandbox& sb,
            Store::Batch* batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    v1::SandboxEvent ev;
    ev.set_type(type);
    *ev.mutable_sandbox() = sb;
    ev.set_resource_version(sb.resource_version());
    batch->PutEvent(ev);
    history.push_back(std::move(ev));
    while (history.size() > options.watch_history) {
      history.pop_front();
      // Trim the stored history in steps, not one delete per event.
      if (++history_trimmed % 1024 == 0) {
        batch->DeleteEventsBefore(history.front().resource_version());
      }
    }
    cv.SignalAll();
  }

  // Adds (sign +1) or removes (-1) a snapshot's layer bytes to its job's
  // usage (quota.snapshot_bytes).
  void ChargeSnapshot(const v1::Snapshot& snap, int sign)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto jit = jobs.find(snap.job_id());
    if (jit == jobs.end()) return;
    auto* u = jit->second.job.mutable_usage();
    u->set_snapshot_bytes(
        std::max<int64_t>(0, u->snapshot_bytes() + sign * snap.size_bytes()));
  }

  // Charges quota and node resources for a live sandbox (new or recovered).
  void Charge(SbxRec& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const auto& lim = r.sb.spec().limits();
    auto jit = jobs.find(r.sb.job_id());
    if (jit != jobs.end()) {
      auto* u = jit->second.job.mutable_usage();
      u->set_sandboxes(u->sandboxes() + 1);
      u->set_cpu_millicores(u->cpu_millicores() + lim.cpu_millicores());
      u->set_memory_bytes(u->memory_bytes() + lim.memory_bytes());
    }
    if (r.node) {
      auto nit = nodes.find(node_by_index[*r.node]);
      if (nit != nodes.end()) nit->second.sandboxes.insert(r.sb.id());
    }
  }

  void Uncharge(SbxRec& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const auto& lim = r.sb.spec().limits();
    auto jit = jobs.find(r.sb.job_id());
    if (jit != jobs.end()) {
      auto* u = jit->second.job.mutable_usage();
      u->set_sandboxes(std::max<int64_t>(0, u->sandboxes() - 1));
      u->set_cpu_millicores(
          std::max<int64_t>(0, u->cpu_millicores() - lim.cpu_millicores()));
      u->set_memory_bytes(
          std::max<int64_t>(0, u->memory_bytes() - lim.memory_bytes()));
    }
    if (r.node) {
      placer.Release(*r.node, lim.cpu_millicores(), lim.memory_bytes());
      auto nit = nodes.find(node_by_index[*r.node]);
      if (nit != nodes.end()) nit->second.sandboxes.erase(r.sb.id());
    }
  }

  // Moves a sandbox to `state`, releasing resources when it stops being
  // live, publishing an event and adding the record to `batch`.
  void Transition(SbxRec& r, v1::SandboxState state, const std::string& reason,
                  Store::Batch* batch) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    v1::SandboxState old = r.sb.state();
    if (old == state && r.sb.state_reason() == reason) return;
    bool was_live = IsLive(old);
    state_counts[old]--;
    state_counts[state]++;
    PublishStateGauge(old);
    PublishStateGauge(state);
    r.sb.set_state(state);
    r.sb.set_state_reason(reason);
    *r.sb.mutable_update_time() = ToProto(absl::Now());
    r.sb.set_resource_version(++rv);
    if (was_live && !IsLive(state)) {
      Uncharge(r);
      pump_needed = true;  // run at the next Persist(), with no refs held
    }
    if (IsTerminal(state)) terminal_order.emplace_back(absl::Now(), r.sb.id());
    v1::SandboxEvent::Type type = v1::SandboxEvent::TYPE_STATE_CHANGED;
    if (state == v1::SANDBOX_STATE_TERMINATED)
      type = v1::SandboxEvent::TYPE_DELETED;
    if (state == v1::SANDBOX_STATE_LOST) type = v1::SandboxEvent::TYPE_LOST;
    Emit(type, r.sb, batch);
    batch->PutSandbox(r.sb);
  }

  absl::StatusOr<v1::SandboxHandle> MakeHandle(const v1::Sandbox& sb) const {
    absl::Time expire = absl::Now() + options.token_ttl;
    if (sb.has_expire_time())
      expire = std::min(expire, FromProto(sb.expire_time()));
    ASSIGN_OR_RETURN(std::string token,
                     signer.Sign({sb.id(), sb.job_id(), expire}));
    v1::SandboxHandle h;
    h.set_sandbox_id(sb.id());
    h.set_agent_endpoint(sb.agent_endpoint());
    h.set_token(std::move(token));
    *h.mutable_token_expire_time() =
        ToProto(absl::FromUnixSeconds(absl::ToUnixSeconds(expire)));
    h.set_node_id(sb.node_id());
    return h;
  }

  // ---- auth ----------------------------------------------------------------
  static std::string Metadata(const grpc::ServerContext* ctx,
                              const std::string& key) {
    auto range = ctx->client_metadata().equal_range(key);
    if (range.first == range.second) return "";
    return std::string(range.first->second.data(), range.first->second.size());
  }

  absl::StatusOr<Caller> Authenticate(const grpc::ServerContext* ctx) const {
    std::string auth = Metadata(ctx, "authorization");
    std::string key;
    if (!auth.empty()) {
      if (!absl::StartsWith(auth, "Bearer ")) {
        return absl::UnauthenticatedError(
            "authorization must be 'Bearer <key>'");
      }
      key = auth.substr(7);
    }
    if (key.empty()) {
      if (options.admin_key.empty()) return Caller{true, ""};
      return absl::UnauthenticatedError("API key missing");
    }
    if (!options.admin_key.empty() && SecureEquals(key, options.admin_key)) {
      return Caller{true, ""};
    }
    absl::MutexLock l(&mu);
    auto it = job_by_key.find(Sha256Hex(key));
    if (it == job_by_key.end()) {
      return absl::UnauthenticatedError("API key unknown or revoked");
    }
    return Caller{false, it->second};
  }

  absl::Status AuthenticateAdmin(const grpc::ServerContext* ctx) const {
    if (options.admin_key.empty()) return absl::OkStatus();
    std::string key = Metadata(ctx, kAdminKeyHeader);
    if (key.empty()) {
      std::string auth = Metadata(ctx, "authorization");
      if (absl::StartsWith(auth, "Bearer ")) key = auth.substr(7);
    }
    if (key.empty()) return absl::UnauthenticatedError("admin key missing");
    if (!SecureEquals(key, options.admin_key)) {
      return absl::PermissionDeniedError("not the admin key");
    }
    return absl::OkStatus();
  }

  absl::Status AuthenticateNode(const grpc::ServerContext* ctx) const {
    if (options.node_key.empty()) return absl::OkStatus();
    if (!SecureEquals(Metadata(ctx, kNodeKeyHeader), options.node_key)) {
      return absl::UnauthenticatedError("wrong node key");
    }
    return absl::OkStatus();
  }

  // The job a request acts on. REQUIRES: mu held.
  absl::StatusOr<std::string> ResolveJob(const Caller& c,
                                         const std::string& requested) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (!c.admin) {
      if (!requested.empty() && requested != c.job_id) {
        return absl::PermissionDeniedError("job key used for another job");
      }
      return c.job_id;
    }
    if (requested.empty()) {
      return absl::InvalidArgumentError(
          "job_id is required with the admin key");
    }
    if (!jobs.contains(requested)) {
      return absl::NotFoundError(absl::StrCat("job ", requested, " not found"));
    }
    return requested;
  }

  // The sandbox if the caller may see it. REQUIRES: mu held.
  absl::StatusOr<SbxRec*> FindSandbox(const Caller& c, const std::string& id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = sandboxes.find(id);
    if (it == sandboxes.end() ||
        (!c.admin && it->second.sb.job_id() != c.job_id)) {
      return absl::NotFoundError(absl::StrCat("sandbox ", id, " not found"));
    }
    return &it->second;
  }

  // ---- spec validation -----------------------------------------------------
  absl::Status ValidateSpec(const Caller& c, v1::SandboxSpec* spec) const {
    if (!spec->image().empty()) {
      RETURN_IF_ERROR(fs::ValidateImageName(spec->image()));
    }
    const auto& lim = spec->limits();
    if (lim.cpu_millicores() < 0 || lim.memory_bytes() < 0 || lim.pids() < 0 ||
        lim.disk_bytes() < 0 || lim.disk_inodes() < 0 || lim.open_files() < 0 ||
        lim.stack_bytes() < 0 || lim.file_size_bytes() < 0) {
      return absl::InvalidArgumentError("spec.limits: negative limit");
    }
    for (const auto& [k, v] : spec->labels()) {
      if (k.empty() || !ValidLabelText(k) || !ValidLabelText(v)) {
        return absl::InvalidArgumentError(
            absl::StrCat("spec.labels: bad label '", k, "'"));
      }
    }
    for (const auto& [k, v] : spec->node_selector()) {
      if (k.empty() || !ValidLabelText(k) || !ValidLabelText(v)) {
        return absl::InvalidArgumentError(
            absl::StrCat("spec.node_selector: bad label '", k, "'"));
      }
    }
    if (spec->network_mode() == v1::NETWORK_MODE_HOST && !c.admin) {
      return absl::PermissionDeniedError(
          "NETWORK_MODE_HOST needs the admin key");
    }
    if (spec->network_mode() != v1::NETWORK_MODE_EGRESS_ALLOWLIST &&
        spec->egress_allow_size() > 0) {
      return absl::InvalidArgumentError(
          "spec.egress_allow is only for NETWORK_MODE_EGRESS_ALLOWLIST");
    }
    if (spec->has_ttl()) {
      absl::Duration ttl = FromProto(spec->ttl());
      if (ttl <= absl::ZeroDuration() || ttl > options.max_sandbox_ttl) {
        return absl::InvalidArgumentError(
            absl::StrCat("spec.ttl must be in (0, ",
                         absl::FormatDuration(options.max_sandbox_ttl), "]"));
      }
    } else {
      *spec->mutable_ttl() = ToProtoDuration(options.default_sandbox_ttl);
    }
    if (spec->has_idle_ttl() &&
        FromProto(spec->idle_ttl()) < absl::ZeroDuration()) {
      return absl::InvalidArgumentError("spec.idle_ttl negative");
    }
    for (const auto& m : spec->mounts()) {
      if (!absl::StartsWith(m.source_path(), "/") ||
          !absl::StartsWith(m.target_path(), "/")) {
        return absl::InvalidArgumentError(
            "spec.mounts: paths must be absolute");
      }
    }
    auto* l = spec->mutable_limits();
    if (l->cpu_millicores() == 0)
      l->set_cpu_millicores(options.default_cpu_millicores);
    if (l->memory_bytes() == 0)
      l->set_memory_bytes(options.default_memory_bytes);
    return absl::OkStatus();
  }

  absl::Time QueueDeadline(bool has_timeout,
                           const google::protobuf::Duration& qt,
                           const grpc::ServerContext* ctx) const {
    absl::Time now = absl::Now();
    if (has_timeout) {
      absl::Duration d = std::clamp(FromProto(qt), absl::ZeroDuration(),
                                    options.max_queue_timeout);
      return now + d;
    }
    auto dl = ctx->deadline();
    if (dl != std::chrono::system_clock::time_point::max()) {
      absl::Duration rem = absl::FromChrono(dl) - now;
      if (rem <= absl::ZeroDuration()) return now;
      absl::Duration margin = std::min(absl::Seconds(1), rem / 10);
      return now + std::min(rem - margin, options.max_queue_timeout);
    }
    return now + options.max_queue_timeout;
  }

  // ---- admission -----------------------------------------------------------
  struct Pending {
    Waiter waiter;
    const CreateArgs* args = nullptr;
    std::string group_id;
    GroupState group;
  };
  // Pending requests by waiter pointer (for the pump to place them).
  absl::flat_hash_map<Waiter*, Pending*> pending ABSL_GUARDED_BY(mu);

  // Sort key: higher priority first, then lower usage/weight, then arrival.
  bool Before(const Waiter* a, const Waiter* b) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto key = [&](const Waiter* w) {
      auto it = jobs.find(w->job_id);
      int32_t prio = 0;
      double share = 0;
      if (it != jobs.end()) {
        prio = it->second.job.priority();
        int32_t weight = std::max(1, it->second.job.weight());
        share =
            static_cast<double>(it->second.job.usage().sandboxes()) / weight;
      }
      return std::make_tuple(-prio, share, w->seq);
    };
    return key(a) < key(b);
  }

  // Quota room for `want` sandboxes of `args` in its job.
  // Returns how many fit; fills `short_msg` when fewer.
  int32_t QuotaRoom(const CreateArgs& args, int32_t want, std::string* what,
                    v1::CapacityShortfall* sf) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = jobs.find(args.spec.job_id());
    if (it == jobs.end()) return 0;
    const auto& q = it->second.job.quota();
    const auto& u = it->second.job.usage();
    int64_t room = want;
    // One quota dimension: `cap` total, `used` now, `per` per sandbox.
    auto limit = [&](const char* name, int64_t cap, int64_t used, int64_t per,
                     auto set_short) {
      if (cap <= 0 || per <= 0) return;
      int64_t r = std::max<int64_t>(0, (cap - used) / per);
      if (r < want) {
        *what =
            absl::StrCat("job quota ", name, " ", cap, " (using ", used, ")");
        set_short((want - r) * per);
      }
      room = std::min(room, r);
    };
    limit("max_sandboxes", q.max_sandboxes(), u.sandboxes(), 1,
          [&](int64_t v) { sf->set_sandboxes_short(static_cast<int32_t>(v)); });
    limit("cpu_millicores", q.cpu_millicores(), u.cpu_millicores(),
          args.spec.limits().cpu_millicores(),
          [&](int64_t v) { sf->set_cpu_millicores_short(v); });
    limit("memory_bytes", q.memory_bytes(), u.memory_bytes(),
          args.spec.limits().memory_bytes(),
          [&](int64_t v) { sf->set_memory_bytes_short(v); });
    return static_cast<int32_t>(room);
  }

  // Places up to `want` sandboxes of p (all-or-nothing when `all`). Creates
  // STARTING records for the placed ones. Returns the ids placed.
  std::vector<std::string> PlaceSome(Pending& p, int32_t want, bool all,
                                     std::string* capacity_msg)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const CreateArgs& a = *p.args;
    std::vector<NodeIndex> placed;
    PlacementRequest req;
    req.cpu_millicores = a.spec.limits().cpu_millicores();
    req.memory_bytes = a.spec.limits().memory_bytes();
    std::map<std::string, std::string> selector(a.spec.node_selector().begin(),
                                                a.spec.node_selector().end());
    req.node_selector = selector.empty() ? nullptr : &selector;
    req.image = a.spec.image();
    req.spread = a.spread;
    req.max_per_node = a.max_per_node;
    req.group = &p.group;
    if (a.only_node) {
      auto nit = nodes.find(*a.only_node);
      if (nit == nodes.end()) {
        *capacity_msg = absl::StrCat("node ", *a.only_node, " is gone");
        return {};
      }
      req.only_node = nit->second.idx;
    }
    for (int32_t i = 0; i < want; ++i) {
      auto n = placer.Place(req);
      if (!n.ok()) {
        *capacity_msg = std::string(n.status().message());
        break;
      }
      placed.push_back(*n);
    }
    if (all && static_cast<int32_t>(placed.size()) < want) {
      for (NodeIndex n : placed) {
        placer.Release(n, req.cpu_millicores, req.memory_bytes);
        auto it = p.group.per_node.find(n);
        if (it != p.group.per_node.end() && --it->second == 0)
          p.group.per_node.erase(it);
      }
      return {};
    }
    std::vector<std::string> ids;
    Store::Batch batch;
    absl::Time now = absl::Now();
    for (NodeIndex n : placed) {
      SbxRec r;
      r.node = n;
      v1::Sandbox& sb = r.sb;
      sb.set_id(NewId("sb-"));
      sb.set_job_id(a.spec.job_id());
      *sb.mutable_spec() = a.spec;
      sb.set_state(v1::SANDBOX_STATE_STARTING);
      sb.set_state_reason("placed");
      const NodeRec& node = nodes.at(node_by_index[n]);
      sb.set_agent_endpoint(node.node.endpoint());
      sb.set_node_id(node.node.node_id());
      *sb.mutable_create_time() = ToProto(now);
      *sb.mutable_update_time() = ToProto(now);
      *sb.mutable_expire_time() = ToProto(now + FromProto(a.spec.ttl()));
      sb.set_parent_snapshot_id(a.parent_snapshot_id);
      sb.set_group_id(p.group_id);
      sb.set_resource_version(++rv);
      state_counts[sb.state()]++;
      // Placer already reserved node resources; charge quota only.
      auto jit = jobs.find(sb.job_id());
      if (jit != jobs.end()) {
        jit->second.sandboxes.emplace(absl::ToUnixNanos(now), sb.id());
      }
      Charge(r);
      Emit(v1::SandboxEvent::TYPE_CREATED, sb, &batch);
      batch.PutSandbox(sb);
      ids.push_back(sb.id());
      sandboxes.emplace(sb.id(), std::move(r));
      placements_total++;
      Metrics::Get().placements->Inc();
    }
    PublishStateGauge(v1::SANDBOX_STATE_STARTING);
    Persist(std::move(batch));
    return ids;
  }

  // Grants queued requests in order while capacity allows.
  void PumpQueue() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (queue.empty() || pumping) return;
    pumping = true;
    std::vector<Waiter*> order(queue.begin(), queue.end());
    std::sort(order.begin(), order.end(),
              [&](const Waiter* a, const Waiter* b) { return Before(a, b); });
    for (Waiter* w : order) {
      if (w->granted) continue;
      Pending& p = *pending.at(w);
      std::string what;
      v1::CapacityShortfall sf;
      if (QuotaRoom(*p.args, w->count, &what, &sf) < w->count) {
        w->quota_blocked = true;
        continue;  // own quota never blocks other jobs
      }
      w->quota_blocked = false;
      std::string cap_msg;
      auto ids = PlaceSome(p, w->count, /*all=*/true, &cap_msg);
      if (ids.empty()) break;  // capacity: later requests wait behind it
      w->ids = std::move(ids);
      w->granted = true;
      cv.SignalAll();
    }
    pumping = false;
  }

  void RemoveWaiter(Waiter* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    queue.erase(std::remove(queue.begin(), queue.end(), w), queue.end());
    pending.erase(w);
    Metrics::Get().queue_depth->Set({}, static_cast<double>(queue.size()));
    auto jit = jobs.find(w->job_id);
    if (jit != jobs.end()) {
      auto* u = jit->second.job.mutable_usage();
      u->set_queued_requests(std::max<int64_t>(0, u->queued_requests() - 1));
      u->set_queued_sandboxes(
          std::max<int64_t>(0, u->queued_sandboxes() - w->count));
    }
  }

  // Admits a request (queueing up to args.queue_deadline). On success
  // `ids` holds at least min_count STARTING sandboxes.
  absl::Status Admit(const CreateArgs& args, std::string* group_id,
                     std::vector<std::string>* ids, v1::CapacityShortfall* sf,
                     bool* has_sf) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    absl::Time start = absl::Now();
    Pending p;
    p.args = &args;
    p.group_id = NewId("grp-");
    p.waiter.job_id = args.spec.job_id();
    p.waiter.seq = next_seq++;
    p.waiter.count = args.count;
    *group_id = p.group_id;
    sf->set_requested_count(args.count);

    // What can never fit fails at once.
    {
      std::string what;
      v1::CapacityShortfall qsf;
      const auto& q = jobs.at(args.spec.job_id()).job.quota();
      const auto& lim = args.spec.limits();
      if ((q.max_sandboxes() > 0 && args.min_count > q.max_sandboxes()) ||
          (q.cpu_millicores() > 0 &&
           args.min_count * lim.cpu_millicores() > q.cpu_millicores()) ||
          (q.memory_bytes() > 0 &&
           args.min_count * lim.memory_bytes() > q.memory_bytes())) {
        sf->set_reason(v1::CapacityShortfall::REASON_QUOTA);
        sf->set_unsatisfiable(true);
        sf->set_sandboxes_short(args.min_count);
        *has_sf = true;
        return absl::ResourceExhaustedError(absl::StrCat(
            "job quota can never fit ", args.min_count, " sandboxes of ",
            lim.cpu_millicores(), " millicores and ", lim.memory_bytes(),
            " bytes (quota: max_sandboxes ", q.max_sandboxes(),
            ", cpu_millicores ", q.cpu_millicores(), ", memory_bytes ",
            q.memory_bytes(), ")"));
      }
    }

    queue.push_back(&p.waiter);
    pending[&p.waiter] = &p;
    Metrics::Get().queue_depth->Set({}, static_cast<double>(queue.size()));
    {
      auto* u = jobs.at(args.spec.job_id()).job.mutable_usage();
      u->set_queued_requests(u->queued_requests() + 1);
      u->set_queued_sandboxes(u->queued_sandboxes() + args.count);
    }
    PumpQueue();
    while (!p.waiter.granted && !stopping &&
           absl::Now() < args.queue_deadline) {
      auto jit = jobs.find(args.spec.job_id());
      if (jit == jobs.end() || jit->second.job.state() != v1::JOB_STATE_ACTIVE)
        break;
      cv.WaitWithDeadline(&mu, args.queue_deadline);
    }
    RemoveWaiter(&p.waiter);
    Metrics::Get().queue_wait->Observe(
        {}, absl::ToDoubleSeconds(absl::Now() - start));
    if (p.waiter.granted) {
      *ids = std::move(p.waiter.ids);
      return absl::OkStatus();
    }
    if (stopping) return absl::UnavailableError("controller shutting down");
    auto jit = jobs.find(args.spec.job_id());
    if (jit == jobs.end() ||
        jit->second.job.state() == v1::JOB_STATE_DELETING) {
      return absl::FailedPreconditionError("the job is being deleted");
    }
    if (jit->second.job.state() == v1::JOB_STATE_LEASE_EXPIRED) {
      return absl::FailedPreconditionError("the job's lease has lapsed");
    }
    // Timed out: take what fits now if that reaches min_count.
    std::string quota_what;
    int32_t room = QuotaRoom(args, args.count, &quota_what, sf);
    std::string cap_msg;
    std::vector<std::string> got;
    if (room >= args.min_count)
      got = PlaceSome(p, room, /*all=*/false, &cap_msg);
    if (static_cast<int32_t>(got.size()) >= args.min_count && !got.empty()) {
      if (static_cast<int32_t>(got.size()) < args.count) {
        *has_sf = true;
        sf->set_placed_count(static_cast<int32_t>(got.size()));
        sf->set_reason(room < args.count
                           ? v1::CapacityShortfall::REASON_QUOTA
                           : v1::CapacityShortfall::REASON_CAPACITY);
        if (sf->sandboxes_short() == 0) {
          sf->set_sandboxes_short(args.count -
                                  static_cast<int32_t>(got.size()));
        }
      }
      *ids = std::move(got);
      return absl::OkStatus();
    }
    // Release a partial placement (gang semantics).
    Store::Batch batch;
    for (const auto& id : got) {
      Transition(sandboxes.at(id), v1::SANDBOX_STATE_FAILED,
                 "released: fewer than min_count placed", &batch);
    }
    Persist(std::move(batch));
    *has_sf = true;
    sf->set_placed_count(static_cast<int32_t>(got.size()));
    std::string msg;
    if (room < args.min_count) {
      sf->set_reason(v1::CapacityShortfall::REASON_QUOTA);
      msg = absl::StrCat("quota short: ", quota_what);
    } else {
      sf->set_reason(v1::CapacityShortfall::REASON_CAPACITY);
      Placer::Usage free = placer.FreeTotal();
      int32_t short_n = args.min_count - static_cast<int32_t>(got.size());
      sf->set_sandboxes_short(short_n);
      sf->set_cpu_millicores_short(std::max<int64_t>(
          0,
          short_n * args.spec.limits().cpu_millicores() - free.cpu_millicores));
      sf->set_memory_bytes_short(std::max<int64_t>(
          0, short_n * args.spec.limits().memory_bytes() - free.memory_bytes));
      msg = absl::StrCat("capacity short: ", cap_msg,
                         " (free in cluster: ", free.cpu_millicores,
                         " millicores, ", free.memory_bytes, " bytes, ",
                         free.sandboxes, " slots)");
    }
    return absl::ResourceExhaustedError(
        absl::StrCat("could not place ", args.min_count, " of ", args.count,
                     " sandboxes within the queue timeout; ", msg));
  }

  // ---- agent calls ---------------------------------------------------------
  void PrepareContext(grpc::ClientContext* ctx) const {
    ctx->set_deadline(
        absl::ToChronoTime(absl::Now() + options.agent_call_timeout));
    if (!options.node_key.empty())
      ctx->AddMetadata(kNodeKeyHeader, options.node_key);
  }

  struct StartCall {
    std::string id;
    std::shared_ptr<v1::NodeAgent::Stub> stub;
    v1::StartSandboxRequest req;
    v1::StartSandboxResponse resp;
    grpc::ClientContext ctx;
    grpc::Status status;
  };

  struct StopCall {
    std::shared_ptr<v1::NodeAgent::Stub> stub;
    v1::StopSandboxesRequest req;
    v1::StopSandboxesResponse resp;
    grpc::ClientContext ctx;
    grpc::Status status;
  };

  // Sends every call at once and waits for all (callback API).
  template <typename Call, typename Fn>
  void RunParallel(std::vector<std::unique_ptr<Call>>& calls, Fn issue) {
    if (calls.empty()) return;
    absl::BlockingCounter done(static_cast<int>(calls.size()));
    for (auto& c : calls) {
      Call* call = c.get();
      if (!call->stub) {
        call->status =
            grpc::Status(grpc::StatusCode::UNAVAILABLE, "no agent stub");
        done.DecrementCount();
        continue;
      }
      PrepareContext(&call->ctx);
      issue(call, [call, &done](grpc::Status s) {
        call->status = std::move(s);
        done.DecrementCount();
      });
    }
    done.Wait();
  }

  // Starts the given STARTING sandboxes on their agents; refusals re-place
  // elsewhere up to max_start_attempts. Returns the ids now RUNNING.
  std::vector<std::string> StartOnAgents(std::vector<std::string> ids,
                                         const CreateArgs& args,
                                         const std::string& group_id) {
    std::vector<std::string> running;
    absl::flat_hash_map<std::string, std::vector<NodeIndex>> excluded;
    absl::flat_hash_map<std::string, int> attempts;
    while (!ids.empty()) {
      std::vector<std::unique_ptr<StartCall>> calls;
      {
        absl::MutexLock l(&mu);
        for (const auto& id : ids) {
          auto it = sandboxes.find(id);
          if (it == sandboxes.end() ||
              it->second.sb.state() != v1::SANDBOX_STATE_STARTING ||
              !it->second.node) {
            continue;
          }
          auto c = std::make_unique<StartCall>();
          c->id = id;
          c->stub = nodes.at(node_by_index[*it->second.node]).agent;
          c->req.set_sandbox_id(id);
          c->req.set_job_id(it->second.sb.job_id());
          *c->req.mutable_spec() = it->second.sb.spec();
          *c->req.mutable_expire_time() = it->second.sb.expire_time();
          auto snap = snapshots.find(it->second.sb.parent_snapshot_id());
          if (snap != snapshots.end() && !snap->second.fs_path().empty()) {
            c->req.set_snapshot_id(snap->first);
          }
          calls.push_back(std::move(c));
        }
      }
      RunParallel(calls, [](StartCall* c, auto cb) {
        c->stub->async()->StartSandbox(&c->ctx, &c->req, &c->resp,
                                       std::move(cb));
      });
      ids.clear();
      absl::MutexLock l(&mu);
      Store::Batch batch;
      for (auto& c : calls) {
        auto it = sandboxes.find(c->id);
        if (it == sandboxes.end()) continue;
        SbxRec& r = it->second;
        if (r.sb.state() != v1::SANDBOX_STATE_STARTING)
          continue;  // deleted meanwhile
        if (c->status.ok()) {
          Transition(r, v1::SANDBOX_STATE_RUNNING, "started", &batch);
          running.push_back(c->id);
          continue;
        }
        int n = ++attempts[c->id];
        auto code = c->status.error_code();
        bool retry = code == grpc::StatusCode::RESOURCE_EXHAUSTED ||
                     code == grpc::StatusCode::FAILED_PRECONDITION ||
                     code == grpc::StatusCode::UNAVAILABLE ||
                     code == grpc::StatusCode::DEADLINE_EXCEEDED;
        std::string why = absl::StrCat("node ", r.sb.node_id(), ": ",
                                       c->status.error_message());
        DSEC_LOG_INFO("controller: start {} refused ({}); attempt {}", c->id,
                      why, n);
        if (!retry || n >= options.max_start_attempts || args.only_node) {
          if (!retry) r.start_error = static_cast<absl::StatusCode>(code);
          Transition(r, v1::SANDBOX_STATE_FAILED,
                     absl::StrCat("start failed: ", why), &batch);
          continue;
        }
        // Re-place elsewhere.
        const auto& lim = r.sb.spec().limits();
        NodeIndex old = *r.node;
        excluded[c->id].push_back(old);
        placer.Release(old, lim.cpu_millicores(), lim.memory_bytes());
        nodes.at(node_by_index[old]).sandboxes.erase(c->id);
        PlacementRequest req;
        req.cpu_millicores = lim.cpu_millicores();
        req.memory_bytes = lim.memory_bytes();
        std::map<std::string, std::string> selector(
            r.sb.spec().node_selector().begin(),
            r.sb.spec().node_selector().end());
        req.node_selector = selector.empty() ? nullptr : &selector;
        req.image = r.sb.spec().image();
        req.exclude = excluded[c->id];
        auto placed = placer.Place(req);
        if (!placed.ok()) {
          r.node.reset();
          Transition(r, v1::SANDBOX_STATE_FAILED,
                     absl::StrCat("start failed: ", why, "; no other node: ",
                                  placed.status().message()),
                     &batch);
          continue;
        }
        r.node = *placed;
        NodeRec& nn = nodes.at(node_by_index[*placed]);
        nn.sandboxes.insert(c->id);
        r.sb.set_node_id(nn.node.node_id());
        r.sb.set_agent_endpoint(nn.node.endpoint());
        r.sb.set_resource_version(++rv);
        Emit(v1::SandboxEvent::TYPE_STATE_CHANGED, r.sb, &batch);
        batch.PutSandbox(r.sb);
        placements_total++;
        Metrics::Get().placements->Inc();
        ids.push_back(c->id);
      }
      Persist(std::move(batch));
    }
    (void)group_id;
    return running;
  }

  // Sends StopSandboxes per node, in parallel.
  void StopOnAgents(
      const absl::flat_hash_map<std::string, std::vector<std::string>>& by_node,
      const std::string& reason) {
    std::vector<std::unique_ptr<StopCall>> calls;
    {
      absl::MutexLock l(&mu);
      for (const auto& [node_id, ids] : by_node) {
        auto it = nodes.find(node_id);
        if (it == nodes.end()) continue;
        auto c = std::make_unique<StopCall>();
        c->stub = it->second.agent;
        for (const auto& id : ids) c->req.add_sandbox_ids(id);
        c->req.set_reason(reason);
        calls.push_back(std::move(c));
      }
    }
    RunParallel(calls, [](StopCall* c, auto cb) {
      c->stub->async()->StopSandboxes(&c->ctx, &c->req, &c->resp,
                                      std::move(cb));
    });
    for (auto& c : calls) {
      if (!c->status.ok()) {
        DSEC_LOG_WARN(
            "controller: StopSandboxes failed: {} (heartbeat will retry)",
            c->status.error_message());
      }
    }
  }

  // Terminates sandboxes: TERMINATING, stop on agents, TERMINATED.
  void Terminate(const std::vector<std::string>& ids,
                 const std::string& reason) {
    absl::flat_hash_map<std::string, std::vector<std::string>> by_node;
    {
      absl::MutexLock l(&mu);
      Store::Batch batch;
      for (const auto& id : ids) {
        auto it = sandboxes.find(id);
        if (it == sandboxes.end() || !IsLive(it->second.sb.state())) continue;
        if (!it->second.sb.node_id().empty())
          by_node[it->second.sb.node_id()].push_back(id);
        Transition(it->second, v1::SANDBOX_STATE_TERMINATING, reason, &batch);
      }
      Persist(std::move(batch));
    }
    StopOnAgents(by_node, reason);
    absl::MutexLock l(&mu);
    Store::Batch batch;
    for (const auto& id : ids) {
      auto it = sandboxes.find(id);
      if (it == sandboxes.end() ||
          it->second.sb.state() != v1::SANDBOX_STATE_TERMINATING)
        continue;
      Transition(it->second, v1::SANDBOX_STATE_TERMINATED, reason, &batch);
    }
    Persist(std::move(batch));
  }

  // ---- create --------------------------------------------------------------
  absl::Status Create(const CreateArgs& args, CreateResult* out) {
    std::string key;
    {
      absl::MutexLock l(&mu);
      auto jit = jobs.find(args.spec.job_id());
      if (jit == jobs.end()) return absl::NotFoundError("job not found");
      if (jit->second.job.state() == v1::JOB_STATE_LEASE_EXPIRED) {
        return absl::FailedPreconditionError(
            "the job's lease has lapsed; call RenewLease first");
      }
      if (jit->second.job.state() == v1::JOB_STATE_DELETING) {
        return absl::FailedPreconditionError("the job is being deleted");
      }
      if (!args.request_id.empty()) {
        key = QueueKey(args.spec.job_id(), args.request_id);
        auto it = idem.find(key);
        if (it != idem.end()) {
          if (it->second.fingerprint != args.fingerprint) {
            return absl::AlreadyExistsError(
                "request_id reused for a different request");
          }
          while (!idem.at(key).done && !stopping) cv.Wait(&mu);
          const IdemRec& rec = idem.at(key);
          if (!rec.done)
            return absl::UnavailableError("controller shutting down");
          RETURN_IF_ERROR(rec.status);
          return FillResult(rec.ids, rec.group_id, rec.shortfall, out);
        }
        idem[key] = IdemRec{
            args.fingerprint, false, absl::OkStatus(), {}, "", {}, absl::Now()};
        idem_order.emplace_back(absl::Now(), key);
      }
    }
    v1::CapacityShortfall sf;
    bool has_sf = false;
    std::string group_id;
    std::vector<std::string> ids;
    absl::Status st;
    {
      absl::MutexLock l(&mu);
      st = Admit(args, &group_id, &ids, &sf, &has_sf);
    }
    std::vector<std::string> running;
    if (st.ok()) {
      running = StartOnAgents(ids, args, group_id);
      if (static_cast<int32_t>(running.size()) < args.min_count) {
        std::string reason = "released: fewer than min_count started";
        Terminate(running, reason);
        absl::MutexLock l(&mu);
        std::string why;
        // A request the agent refused as such (unknown image, bad spec)
        // keeps the agent's code; capacity and node trouble is UNAVAILABLE.
        absl::StatusCode code = absl::StatusCode::kUnavailable;
        for (const auto& id : ids) {
          auto it = sandboxes.find(id);
          if (it != sandboxes.end() &&
              it->second.sb.state() == v1::SANDBOX_STATE_FAILED) {
            why = it->second.sb.state_reason();
            if (it->second.start_error != absl::StatusCode::kOk) {
              code = it->second.start_error;
            }
            break;
          }
        }
        st = absl::Status(
            code, absl::StrCat("agents failed to start enough sandboxes (",
                               running.size(), " of ", args.min_count,
                               " needed): ", why));
        running.clear();
      } else if (static_cast<int32_t>(running.size()) < args.count) {
        has_sf = true;
        sf.set_requested_count(args.count);
        sf.set_placed_count(static_cast<int32_t>(running.size()));
        if (sf.reason() == v1::CapacityShortfall::REASON_UNSPECIFIED) {
          sf.set_reason(v1::CapacityShortfall::REASON_CAPACITY);
        }
        sf.set_sandboxes_short(args.count -
                               static_cast<int32_t>(running.size()));
      }
    }
    if (!has_sf) sf.Clear();
    absl::MutexLock l(&mu);
    if (!key.empty()) {
      IdemRec& rec = idem[key];
      rec.done = true;
      rec.status = st;
      rec.ids = running;
      rec.group_id = group_id;
      rec.shortfall = sf;
      cv.SignalAll();
    }
    if (!st.ok()) {
      if (has_sf) out->shortfall = sf, out->has_shortfall = true;
      return st;
    }
    return FillResult(running, group_id, sf, out);
  }

  absl::Status FillResult(const std::vector<std::string>& ids,
                          const std::string& group_id,
                          const v1::CapacityShortfall& sf, CreateResult* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    out->group_id = group_id;
    out->shortfall = sf;
    out->has_shortfall = sf.requested_count() > 0;
    for (const auto& id : ids) {
      auto it = sandboxes.find(id);
      if (it == sandboxes.end()) continue;
      ASSIGN_OR_RETURN(auto h, MakeHandle(it->second.sb));
      out->handles.push_back(std::move(h));
      out->sandboxes.push_back(it->second.sb);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<CreateArgs> BuildArgs(
      const Caller& c, v1::SandboxSpec spec, int32_t count, int32_t min_count,
      const v1::PlacementPolicy& pl, const std::string& request_id, bool has_qt,
      const google::protobuf::Duration& qt, const grpc::ServerContext* ctx,
      const std::string& fingerprint_extra) {
    if (count < 1 || count > kMaxBatch) {
      return absl::InvalidArgumentError(
          absl::StrCat("count must be 1..", kMaxBatch));
    }
    if (min_count < 0 || min_count > count) {
      return absl::InvalidArgumentError("min_count must be 0..count");
    }
    if (pl.max_per_node() < 0)
      return absl::InvalidArgumentError("max_per_node < 0");
    if (request_id.size() > 128)
      return absl::InvalidArgumentError("request_id > 128 bytes");
    {
      absl::MutexLock l(&mu);
      ASSIGN_OR_RETURN(std::string job, ResolveJob(c, spec.job_id()));
      spec.set_job_id(job);
    }
    RETURN_IF_ERROR(ValidateSpec(c, &spec));
    CreateArgs a;
    a.spec = std::move(spec);
    a.count = count;
    a.min_count = min_count == 0 ? count : min_count;
    a.spread =
        pl.spread() == v1::GROUP_SPREAD_PACK ? Spread::kPack : Spread::kSpread;
    a.max_per_node = pl.max_per_node();
    a.request_id = request_id;
    std::string spec_bytes;
    a.spec.SerializeToString(&spec_bytes);
    a.fingerprint =
        absl::StrCat(spec_bytes, "|", count, "|", a.min_count, "|",
                     pl.SerializeAsString(), "|", fingerprint_extra);
    a.queue_deadline = QueueDeadline(has_qt, qt, ctx);
    return a;
  }

  // ---- nodes ---------------------------------------------------------------
  void MakeStubs(NodeRec& n) {
    auto channel = grpc::CreateChannel(n.node.endpoint(), agent_creds);
    n.agent = v1::NodeAgent::NewStub(channel);
    n.runtime = v1::SandboxRuntime::NewStub(channel);
  }

  NodeRec& UpsertNodeLocked(const v1::Node& node)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::map<std::string, std::string> labels(node.labels().begin(),
                                              node.labels().end());
    std::vector<std::string> images(node.cached_images().begin(),
                                    node.cached_images().end());
    NodeIndex idx = placer.UpsertNode(
        node.node_id(),
        {node.capacity().cpu_millicores(), node.capacity().memory_bytes(),
         node.capacity().max_sandboxes()},
        labels, images);
    if (node_by_index.size() <= idx) node_by_index.resize(idx + 1);
    node_by_index[idx] = node.node_id();
    NodeRec& n = nodes[node.node_id()];
    bool endpoint_changed = n.node.endpoint() != node.endpoint() || !n.agent;
    n.node = node;
    n.idx = idx;
    if (endpoint_changed) MakeStubs(n);
    return n;
  }

  // Applies an agent's full list of sandboxes. Returns ids it must destroy.
  std::vector<std::string> ApplyReport(
      NodeRec& n,
      const google::protobuf::RepeatedPtrField<v1::NodeSandboxReport>& reps,
      bool full) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::vector<std::string> destroy;
    absl::flat_hash_set<std::string> seen;
    Store::Batch batch;
    for (const auto& rep : reps) {
      seen.insert(rep.sandbox_id());
      auto it = sandboxes.find(rep.sandbox_id());
      if (it == sandboxes.end() || !IsLive(it->second.sb.state()) ||
          it->second.sb.node_id() != n.node.node_id()) {
        if (IsLive(rep.state()) ||
            rep.state() == v1::SANDBOX_STATE_UNSPECIFIED) {
          destroy.push_back(rep.sandbox_id());
        }
        continue;
      }
      SbxRec& r = it->second;
      if (r.sb.state() == v1::SANDBOX_STATE_STARTING && r.recovered_starting &&
          rep.state() == v1::SANDBOX_STATE_RUNNING) {
        r.recovered_starting = false;
        Transition(r, v1::SANDBOX_STATE_RUNNING, "recovered", &batch);
      } else if (rep.state() == v1::SANDBOX_STATE_PARKED ||
                 (rep.state() == v1::SANDBOX_STATE_RUNNING &&
                  r.sb.state() == v1::SANDBOX_STATE_PARKED)) {
        Transition(r, rep.state(), "reported by agent", &batch);
      } else if (IsTerminal(rep.state())) {
        Transition(r,
                   rep.state() == v1::SANDBOX_STATE_FAILED
                       ? v1::SANDBOX_STATE_FAILED
                       : v1::SANDBOX_STATE_TERMINATED,
                   "ended on the agent", &batch);
      }
    }
    if (full) {
      std::vector<std::string> missing;
      for (const auto& id : n.sandboxes) {
        if (seen.contains(id)) continue;
        auto it = sandboxes.find(id);
        if (it == sandboxes.end()) continue;
        // A fresh STARTING sandbox may not be in a report sent before the
        // start call arrived; only recovered ones are judged.
        if (it->second.sb.state() == v1::SANDBOX_STATE_STARTING &&
            !it->second.recovered_starting) {
          continue;
        }
        missing.push_back(id);
      }
      for (const auto& id : missing) {
        Transition(sandboxes.at(id), v1::SANDBOX_STATE_LOST,
                   absl::StrCat("missing from node ", n.node.node_id(),
                                " full report"),
                   &batch);
      }
    }
    Persist(std::move(batch));
    return destroy;
  }

  void MarkDead(NodeRec& n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    DSEC_LOG_WARN("controller: node {} missed heartbeats: DEAD",
                  n.node.node_id());
    n.dead = true;
    SetNodeState(n);
    Store::Batch batch;
    std::vector<std::string> ids(n.sandboxes.begin(), n.sandboxes.end());
    for (const auto& id : ids) {
      auto it = sandboxes.find(id);
      if (it == sandboxes.end() || !IsLive(it->second.sb.state())) continue;
      Transition(it->second, v1::SANDBOX_STATE_LOST,
                 absl::StrCat("node ", n.node.node_id(), " lost"), &batch);
    }
    batch.PutNode(n.node);
    Persist(std::move(batch));
  }

  // ---- monitor -------------------------------------------------------------
  void MonitorLoop() {
    absl::Time last_purge = absl::Now();
    while (true) {
      std::vector<std::pair<std::string, std::vector<std::string>>> lapsed;
      {
        absl::MutexLock l(&mu);
        if (stopping) return;
        cv.WaitWithTimeout(&mu, options.monitor_interval);
        if (stopping) return;
        absl::Time now = absl::Now();
        for (auto& [id, n] : nodes) {
          if (!n.dead && now - n.last_heartbeat > options.heartbeat_timeout)
            MarkDead(n);
        }
        for (auto& [id, j] : jobs) {
          if (j.job.state() != v1::JOB_STATE_ACTIVE ||
              !j.job.has_lease_expire_time())
            continue;
          if (FromProto(j.job.lease_expire_time()) > now) continue;
          j.job.set_state(v1::JOB_STATE_LEASE_EXPIRED);
          DSEC_LOG_INFO("controller: job {} lease expired", id);
          Store::Batch b;
          b.PutJob(StoredJob(j));
          Persist(std::move(b));
          std::vector<std::string> ids;
          for (const auto& [t, sid] : j.sandboxes) {
            auto it = sandboxes.find(sid);
            if (it != sandboxes.end() && IsLive(it->second.sb.state()))
              ids.push_back(sid);
          }
          lapsed.emplace_back(id, std::move(ids));
          cv.SignalAll();  // queued creates fail
        }
        if (now - last_purge > absl::Seconds(1)) {
          last_purge = now;
          PurgeLocked(now);
        }
      }
      for (auto& [job, ids] : lapsed) Terminate(ids, "job lease expired");
    }
  }

  void PurgeLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    Store::Batch batch;
    while (!terminal_order.empty() &&
           now - terminal_order.front().first > options.terminal_retention) {
      std::string id = terminal_order.front().second;
      terminal_order.pop_front();
      auto it = sandboxes.find(id);
      if (it == sandboxes.end() || !IsTerminal(it->second.sb.state())) continue;
      auto jit = jobs.find(it->second.sb.job_id());
      if (jit != jobs.end()) {
        jit->second.sandboxes.erase(
            {TimeUtil::TimestampToNanoseconds(it->second.sb.create_time()),
             id});
      }
      state_counts[it->second.sb.state()]--;
      sandboxes.erase(it);
      batch.DeleteSandbox(id);
    }
    while (!idem_order.empty() &&
           now - idem_order.front().first > absl::Hours(1)) {
      auto it = idem.find(idem_order.front().second);
      if (it != idem.end() && it->second.done) idem.erase(it);
      idem_order.pop_front();
    }
    Persist(std::move(batch));
  }

  static v1::Job StoredJob(const JobRec& j) {
    v1::Job out = j.job;
    out.clear_usage();
    out.set_api_key(j.key_hash);
    return out;
  }

  // ---- recovery ------------------------------------------------------------
  absl::Status Recover() {
    ASSIGN_OR_RETURN(Store::State st, store->LoadAll());
    absl::MutexLock l(&mu);
    absl::Time now = absl::Now();
    for (auto& j : st.jobs) {
      JobRec rec;
      rec.key_hash = j.api_key();
      j.clear_api_key();
      j.clear_usage();
      rec.job = std::move(j);
      if (rec.job.state() != v1::JOB_STATE_DELETING)
        job_by_key[rec.key_hash] = rec.job.id();
      jobs[rec.job.id()] = std::move(rec);
    }
    for (auto& n : st.nodes) {
      NodeRec& rec = UpsertNodeLocked(n);
      rec.last_heartbeat = now;  // grace period to report
      rec.cordoned = n.state() == v1::NODE_STATE_CORDONED;
      rec.draining = n.state() == v1::NODE_STATE_DRAINING;
      rec.dead = false;
      SetNodeState(rec);
    }
    for (auto& s : st.snapshots) {
      ChargeSnapshot(s, +1);
      snapshots[s.id()] = std::move(s);
    }
    // Deleted snapshots' dsec-fs directories still to hand to agents; the
    // ones past their deadline are dropped, from the store too.
    Store::Batch expired_gc;
    for (auto& g : st.snapshot_gc) {
      if (g.deadline < now) {
        expired_gc.DeleteSnapshotGc(g.snapshot_id);
      } else {
        snapshot_gc.emplace_back(g.deadline, std::move(g.snapshot_id));
      }
    }
    std::sort(snapshot_gc.begin(), snapshot_gc.end());
    RETURN_IF_ERROR(store->Write(std::move(expired_gc)));
    for (auto& sb : st.sandboxes) {
      rv = std::max(rv, sb.resource_version());
      SbxRec r;
      r.sb = std::move(sb);
      state_counts[r.sb.state()]++;
      auto jit = jobs.find(r.sb.job_id());
      if (jit != jobs.end()) {
        jit->second.sandboxes.emplace(
            TimeUtil::TimestampToNanoseconds(r.sb.create_time()), r.sb.id());
      }
      if (IsLive(r.sb.state())) {
        auto nit = nodes.find(r.sb.node_id());
        if (nit != nodes.end()) {
          r.node = nit->second.idx;
          placer.Reserve(*r.node, r.sb.spec().limits().cpu_millicores(),
                         r.sb.spec().limits().memory_bytes());
        }
        r.recovered_starting = r.sb.state() == v1::SANDBOX_STATE_STARTING;
        Charge(r);
      } else {
        terminal_order.emplace_back(FromProto(r.sb.update_time()), r.sb.id());
      }
      std::string id = r.sb.id();
      sandboxes.emplace(std::move(id), std::move(r));
    }
    // The retained watch history, so watches resume across the restart.
    size_t skip = st.events.size() > options.watch_history
                      ? st.events.size() - options.watch_history
                      : 0;
    for (size_t i = skip; i < st.events.size(); ++i) {
      rv = std::max(rv, st.events[i].resource_version());
      history.push_back(std::move(st.events[i]));
    }
    std::sort(terminal_order.begin(), terminal_order.end());
    for (int s = 0; s < 10; ++s)
      PublishStateGauge(static_cast<v1::SandboxState>(s));
    DSEC_LOG_INFO(
        "controller: recovered {} jobs, {} nodes, {} sandboxes, {} snapshots, "
        "{} deleted snapshots to remove from dsec-fs",
        jobs.size(), nodes.size(), sandboxes.size(), snapshots.size(),
        snapshot_gc.size());
    return absl::OkStatus();
  }

  // Asks every known agent for its sandboxes once after recovery.
  void ReconcileWithAgents() {
    std::vector<std::pair<std::string, std::shared_ptr<v1::NodeAgent::Stub>>>
        targets;
    {
      absl::MutexLock l(&mu);
      for (auto& [id, n] : nodes) targets.emplace_back(id, n.agent);
    }
    for (auto& [id, stub] : targets) {
      if (shut.load()) return;
      grpc::ClientContext ctx;
      PrepareContext(&ctx);
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
      v1::ListNodeSandboxesResponse resp;
      grpc::Status s =
          stub->ListNodeSandboxes(&ctx, v1::ListNodeSandboxesRequest(), &resp);
      if (!s.ok()) continue;  // heartbeats will reconcile
      std::vector<std::string> destroy;
      {
        absl::MutexLock l(&mu);
        auto it = nodes.find(id);
        if (it == nodes.end() || it->second.dead) continue;
        destroy = ApplyReport(it->second, resp.sandboxes(), /*full=*/true);
      }
      if (!destroy.empty()) {
        absl::flat_hash_map<std::string, std::vector<std::string>> m;
        m[id] = destroy;
        StopOnAgents(m, "unknown to the controller");
      }
    }
  }

  void ShutdownImpl() {
    if (shut.exchange(true)) return;
    {
      absl::MutexLock l(&mu);
      stopping = true;
      cv.SignalAll();
    }
    if (server)
      server->Shutdown(std::chrono::system_clock::now() +
                       std::chrono::seconds(2));
    if (monitor.joinable()) monitor.join();
    if (reconciler.joinable()) reconciler.join();
    if (server) server->Wait();
    http.reset();
    store.reset();
  }
};

namespace {
using Impl = ControllerServer::Impl;

grpc::Status Fail(const absl::Status& s) { return ToGrpcStatus(s); }

#define DSEC_RPC_ASSIGN(lhs, rexpr)                               \
  auto DSEC_STATUS_CONCAT_(rpc_so_, __LINE__) = (rexpr);          \
  if (!DSEC_STATUS_CONCAT_(rpc_so_, __LINE__).ok())               \
    return Fail(DSEC_STATUS_CONCAT_(rpc_so_, __LINE__).status()); \
  lhs = std::move(DSEC_STATUS_CONCAT_(rpc_so_, __LINE__)).value()

#define DSEC_RPC_CHECK(expr)                 \
  do {                                       \
    absl::Status rpc_st_ = (expr);           \
    if (!rpc_st_.ok()) return Fail(rpc_st_); \
  } while (false)

class SandboxesService final : public v1::Sandboxes::Service {
 public:
  explicit SandboxesService(Impl* impl) : impl_(impl) {}

  grpc::Status CreateSandbox(grpc::ServerContext* ctx,
                             const v1::CreateSandboxRequest* req,
                             v1::CreateSandboxResponse* resp) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    DSEC_RPC_ASSIGN(
        auto args, impl_->BuildArgs(c, req->spec(), 1, 1, v1::PlacementPolicy(),
                                    req->request_id(), req->has_queue_timeout(),
                                    req->queue_timeout(), ctx, "single"));
    Impl::CreateResult out;
    absl::Status s = impl_->Create(args, &out);
    if (!s.ok()) return FailCreate(ctx, s, out);
    if (out.handles.empty())
      return Fail(absl::UnavailableError("sandbox vanished"));
    *resp->mutable_handle() = out.handles[0];
    *resp->mutable_sandbox() = out.sandboxes[0];
    return grpc::Status::OK;
  }

  grpc::Status CreateSandboxes(grpc::ServerContext* ctx,
                               const v1::CreateSandboxesRequest* req,
                               v1::CreateSandboxesResponse* resp) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    DSEC_RPC_ASSIGN(
        auto args, impl_->BuildArgs(c, req->spec(), req->count(),
                                    req->min_count(), req->placement(),
                                    req->request_id(), req->has_queue_timeout(),
                                    req->queue_timeout(), ctx, "batch"));
    return CreateGroup(ctx, args, resp);
  }

  grpc::Status GetSandbox(grpc::ServerContext* ctx,
                          const v1::GetSandboxRequest* req,
                          v1::Sandbox* resp) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    absl::MutexLock l(&impl_->mu);
    DSEC_RPC_ASSIGN(auto* r, impl_->FindSandbox(c, req->sandbox_id()));
    *resp = r->sb;
    return grpc::Status::OK;
  }

  grpc::Status ListSandboxes(grpc::ServerContext* ctx,
                             const v1::ListSandboxesRequest* req,
                             v1::ListSandboxesResponse* resp) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    if (req->page_size() < 0)
      return Fail(absl::InvalidArgumentError("page_size < 0"));
    int32_t page =
        req->page_size() == 0 ? 100 : std::min(req->page_size(), 1000);
    // Token: "<rv>:<create ns>:<id>" of the last item returned.
    int64_t token_rv = 0, cursor_ns = INT64_MAX;
    std::string cursor_id;
    if (!req->page_token().empty()) {
      std::vector<std::string> parts =
          absl::StrSplit(req->page_token(), absl::MaxSplits(':', 2));
      if (parts.size() != 3 || !absl::SimpleAtoi(parts[0], &token_rv) ||
          !absl::SimpleAtoi(parts[1], &cursor_ns)) {
        return Fail(absl::InvalidArgumentError("bad page_token"));
      }
      cursor_id = parts[2];
    }
    absl::MutexLock l(&impl_->mu);
    std::vector<const std::set<std::pair<int64_t, std::string>>*> sets;
    if (!c.admin || !req->job_id().empty()) {
      DSEC_RPC_ASSIGN(std::string job, impl_->ResolveJob(c, req->job_id()));
      sets.push_back(&impl_->jobs.at(job).sandboxes);
    } else {
      for (const auto& [id, j] : impl_->jobs) sets.push_back(&j.sandboxes);
    }
    // Merge newest first from the cursor.
    std::vector<std::pair<int64_t, std::string>> all;
    std::pair<int64_t, std::string> cursor{cursor_ns, cursor_id};
    for (const auto* s : sets) {
      auto it = req->page_token().empty() ? s->end() : s->lower_bound(cursor);
      while (it != s->begin()) {
        --it;
        const auto& r = impl_->sandboxes.at(it->second);
        if (Matches(*req, r.sb)) {
          all.push_back(*it);
          if (sets.size() == 1 && static_cast<int32_t>(all.size()) > page)
            break;
        }
      }
    }
    std::sort(all.begin(), all.end(), std::greater<>());
    int64_t list_rv = token_rv != 0 ? token_rv : impl_->rv;
    for (int32_t i = 0; i < static_cast<int32_t>(all.size()) && i < page; ++i) {
      *resp->add_sandboxes() = impl_->sandboxes.at(all[i].second).sb;
    }
    if (static_cast<int32_t>(all.size()) > page) {
      const auto& last = all[page - 1];
      resp->set_next_page_token(
          absl::StrCat(list_rv, ":", last.first, ":", last.second));
    }
    resp->set_resource_version(list_rv);
    return grpc::Status::OK;
  }

  grpc::Status DeleteSandboxes(grpc::ServerContext* ctx,
                               const v1::DeleteSandboxesRequest* req,
                               v1::DeleteSandboxesResponse* resp) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    if (req->sandbox_ids_size() > kMaxDeleteIds) {
      return Fail(absl::InvalidArgumentError("more than 1000 sandbox_ids"));
    }
    std::vector<std::string> ids;
    {
      absl::MutexLock l(&impl_->mu);
      for (const auto& id : req->sandbox_ids()) {
        auto r = impl_->FindSandbox(c, id);
        if (!r.ok() || !IsLive((*r)->sb.state())) {
          if (r.ok() && (*r)->sb.state() == v1::SANDBOX_STATE_TERMINATING) {
            resp->add_deleted_ids(id);
          } else if (r.ok() &&
                     (*r)->sb.state() == v1::SANDBOX_STATE_TERMINATED) {
            resp->add_deleted_ids(id);
          } else {
            resp->add_not_found_ids(id);
          }
          continue;
        }
        ids.push_back(id);
        resp->add_deleted_ids(id);
      }
    }
    impl_->Terminate(
        ids, req->reason().empty() ? "deleted by client" : req->reason());
    return grpc::Status::OK;
  }

  grpc::Status RenewToken(grpc::ServerContext* ctx,
                          const v1::RenewTokenRequest* req,
                          v1::SandboxHandle* resp) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    absl::MutexLock l(&impl_->mu);
    DSEC_RPC_ASSIGN(auto* r, impl_->FindSandbox(c, req->sandbox_id()));
    if (!IsLive(r->sb.state())) {
      return Fail(absl::FailedPreconditionError(
          absl::StrCat("sandbox is ", v1::SandboxState_Name(r->sb.state()))));
    }
    DSEC_RPC_ASSIGN(*resp, impl_->MakeHandle(r->sb));
    return grpc::Status::OK;
  }

  grpc::Status WatchSandboxes(
      grpc::ServerContext* ctx, const v1::WatchSandboxesRequest* req,
      grpc::ServerWriter<v1::SandboxEvent>* writer) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    std::string job;  // empty: every job (admin)
    int64_t cursor;
    {
      absl::MutexLock l(&impl_->mu);
      if (!c.admin || !req->job_id().empty()) {
        DSEC_RPC_ASSIGN(job, impl_->ResolveJob(c, req->job_id()));
      }
      if (req->resource_version() < 0) {
        return Fail(absl::InvalidArgumentError("resource_version < 0"));
      }
      cursor =
          req->resource_version() == 0 ? impl_->rv : req->resource_version();
      int64_t oldest = impl_->history.empty()
                           ? impl_->rv + 1
                           : impl_->history.front().resource_version();
      if (cursor < impl_->rv && cursor + 1 < oldest) {
        return Fail(absl::OutOfRangeError(
            absl::StrCat("resource_version ", cursor,
                         " is older than the retained history (oldest ", oldest,
                         "); ListSandboxes again")));
      }
      if (cursor > impl_->rv) cursor = impl_->rv;
    }
    while (!ctx->IsCancelled()) {
      std::vector<v1::SandboxEvent> out;
      {
        absl::MutexLock l(&impl_->mu);
        absl::Time until = absl::Now() + impl_->options.watch_bookmark_interval;
        while (!impl_->stopping && impl_->rv <= cursor && !ctx->IsCancelled() &&
               absl::Now() < until) {
          impl_->cv.WaitWithDeadline(
              &impl_->mu,
              std::min(until, absl::Now() + absl::Milliseconds(200)));
        }
        if (impl_->stopping)
          return Fail(absl::UnavailableError("controller shutting down"));
        if (impl_->rv <= cursor) {
          v1::SandboxEvent bm;
          bm.set_type(v1::SandboxEvent::TYPE_BOOKMARK);
          bm.set_resource_version(cursor);
          out.push_back(std::move(bm));
        } else {
          const auto& h = impl_->history;
          if (h.empty() || h.front().resource_version() > cursor + 1) {
            return Fail(absl::OutOfRangeError(
                "watch fell behind the retained history"));
          }
          auto it = std::upper_bound(h.begin(), h.end(), cursor,
                                     [](int64_t v, const v1::SandboxEvent& e) {
                                       return v < e.resource_version();
                                     });
          for (; it != h.end(); ++it) {
            cursor = it->resource_version();
            const v1::Sandbox& sb = it->sandbox();
            if (!job.empty() && sb.job_id() != job) continue;
            if (!req->group_id().empty() && sb.group_id() != req->group_id())
              continue;
            if (!LabelsMatch(sb.spec().labels(), req->label_selector()))
              continue;
            out.push_back(*it);
          }
        }
      }
      for (const auto& ev : out) {
        if (!writer->Write(ev)) return grpc::Status::OK;
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status SnapshotSandbox(grpc::ServerContext* ctx,
                               const v1::SnapshotSandboxRequest* req,
                               v1::Snapshot* resp) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    DSEC_RPC_ASSIGN(*resp, TakeSnapshot(c, req->sandbox_id()));
    return grpc::Status::OK;
  }

  grpc::Status ForkSandbox(grpc::ServerContext* ctx,
                           const v1::ForkSandboxRequest* req,
                           v1::ForkSandboxResponse* resp) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    v1::Snapshot snap;
    if (req->source_case() == v1::ForkSandboxRequest::kSandboxId) {
      DSEC_RPC_ASSIGN(snap, TakeSnapshot(c, req->sandbox_id()));
    } else if (req->source_case() == v1::ForkSandboxRequest::kSnapshotId) {
      absl::MutexLock l(&impl_->mu);
      auto it = impl_->snapshots.find(req->snapshot_id());
      if (it == impl_->snapshots.end() ||
          (!c.admin && it->second.job_id() != c.job_id)) {
        return Fail(absl::NotFoundError("snapshot not found"));
      }
      snap = it->second;
    } else {
      return Fail(
          absl::InvalidArgumentError("sandbox_id or snapshot_id required"));
    }
    v1::SandboxSpec spec;
    std::string node_id;
    {
      absl::MutexLock l(&impl_->mu);
      auto it = impl_->sandboxes.find(snap.sandbox_id());
      if (it == impl_->sandboxes.end()) {
        return Fail(absl::NotFoundError(
            "the snapshot's source sandbox record is gone"));
      }
      spec = it->second.sb.spec();
      node_id = it->second.sb.node_id();
    }
    spec.clear_layers();
    for (const auto& layer : snap.layers()) spec.add_layers(layer);
    spec.clear_ttl();
    for (const auto& [k, v] : req->labels()) (*spec.mutable_labels())[k] = v;
    spec.set_job_id(snap.job_id());
    DSEC_RPC_ASSIGN(auto args,
                    impl_->BuildArgs(c, spec, req->count(), req->min_count(),
                                     req->placement(), req->request_id(),
                                     req->has_queue_timeout(),
                                     req->queue_timeout(), ctx, snap.id()));
    // Layers on dsec-fs: children go wherever placement puts them (agents
    // copy the layers from dsec-fs). Node-local layers: the snapshot's node.
    if (snap.fs_path().empty()) args.only_node = node_id;
    args.parent_snapshot_id = snap.id();
    *resp->mutable_snapshot() = snap;
    return CreateGroup(ctx, args, resp);
  }

  grpc::Status DeleteSnapshot(grpc::ServerContext* ctx,
                              const v1::DeleteSnapshotRequest* req,
                              v1::DeleteSnapshotResponse*) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    absl::MutexLock l(&impl_->mu);
    auto it = impl_->snapshots.find(req->snapshot_id());
    if (it == impl_->snapshots.end() ||
        (!c.admin && it->second.job_id() != c.job_id)) {
      return Fail(absl::NotFoundError("snapshot not found"));
    }
    impl_->ChargeSnapshot(it->second, -1);
    Store::Batch b;
    impl_->ForgetSnapshotOnFs(it->second, &b);
    impl_->snapshots.erase(it);
    b.DeleteSnapshot(req->snapshot_id());
    impl_->Persist(std::move(b));
    return grpc::Status::OK;
  }

 private:
  // Runs a group create (CreateSandboxes, ForkSandbox) into `resp`.
  template <typename Resp>
  grpc::Status CreateGroup(grpc::ServerContext* ctx,
                           const Impl::CreateArgs& args, Resp* resp) {
    Impl::CreateResult out;
    absl::Status s = impl_->Create(args, &out);
    if (!s.ok()) return FailCreate(ctx, s, out);
    for (auto& h : out.handles) *resp->add_handles() = h;
    resp->set_group_id(out.group_id);
    if (out.has_shortfall) *resp->mutable_shortfall() = out.shortfall;
    return grpc::Status::OK;
  }

  grpc::Status FailCreate(grpc::ServerContext* ctx, const absl::Status& s,
                          const Impl::CreateResult& out) {
    if (s.code() == absl::StatusCode::kResourceExhausted && out.has_shortfall) {
      ctx->AddTrailingMetadata(kShortfallTrailer,
                               out.shortfall.SerializeAsString());
    }
    return Fail(s);
  }

  static bool Matches(const v1::ListSandboxesRequest& req,
                      const v1::Sandbox& sb) {
    if (!req.group_id().empty() && sb.group_id() != req.group_id())
      return false;
    if (req.states_size() > 0 &&
        std::find(req.states().begin(), req.states().end(), sb.state()) ==
            req.states().end()) {
      return false;
    }
    return LabelsMatch(sb.spec().labels(), req.label_selector());
  }

  absl::StatusOr<v1::Snapshot> TakeSnapshot(const Caller& c,
                                            const std::string& sandbox_id) {
    std::shared_ptr<v1::SandboxRuntime::Stub> stub;
    v1::SnapshotRequest areq;
    std::string job_id;
    {
      absl::MutexLock l(&impl_->mu);
      ASSIGN_OR_RETURN(auto* r, impl_->FindSandbox(c, sandbox_id));
      if (r->sb.state() != v1::SANDBOX_STATE_RUNNING &&
          r->sb.state() != v1::SANDBOX_STATE_PARKED) {
        return absl::FailedPreconditionError(
            absl::StrCat("sandbox is ", v1::SandboxState_Name(r->sb.state()),
                         ", not RUNNING or PARKED"));
      }
      auto jit = impl_->jobs.find(r->sb.job_id());
      if (jit != impl_->jobs.end()) {
        const int64_t cap = jit->second.job.quota().snapshot_bytes();
        const int64_t used = jit->second.job.usage().snapshot_bytes();
        if (cap > 0 && used >= cap) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "the job's snapshot storage is full: ", used, " of ", cap,
              " bytes (quota.snapshot_bytes) used; delete snapshots "
              "(DeleteSnapshot) or raise the quota"));
        }
      }
      auto nit = impl_->nodes.find(r->sb.node_id());
      if (nit == impl_->nodes.end())
        return absl::UnavailableError("owning node unknown");
      stub = nit->second.runtime;
      ASSIGN_OR_RETURN(auto h, impl_->MakeHandle(r->sb));
      areq.set_sandbox_id(sandbox_id);
      areq.set_token(h.token());
      job_id = r->sb.job_id();
    }
    grpc::ClientContext actx;
    impl_->PrepareContext(&actx);
    v1::SnapshotResponse aresp;
    grpc::Status gs = stub->Snapshot(&actx, areq, &aresp);
    if (!gs.ok()) {
      absl::Status s = FromGrpcStatus(gs);
      return absl::Status(s.code(),
                          absl::StrCat("agent snapshot: ", s.message()));
    }
    v1::Snapshot snap = aresp.snapshot();
    if (snap.id().empty()) snap.set_id(NewId("snap-"));
    snap.set_sandbox_id(sandbox_id);
    snap.set_job_id(job_id);
    if (!snap.has_create_time())
      *snap.mutable_create_time() = ToProto(absl::Now());
    absl::MutexLock l(&impl_->mu);
    impl_->snapshots[snap.id()] = snap;
    impl_->ChargeSnapshot(snap, +1);
    Store::Batch b;
    b.PutSnapshot(snap);
    impl_->Persist(std::move(b));
    return snap;
  }

  Impl* impl_;
};

class JobsService final : public v1::Jobs::Service {
 public:
  explicit JobsService(Impl* impl) : impl_(impl) {}

  grpc::Status CreateJob(grpc::ServerContext* ctx,
                         const v1::CreateJobRequest* req,
                         v1::Job* resp) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    if (!c.admin)
      return Fail(absl::PermissionDeniedError("CreateJob needs the admin key"));
    if (!ValidJobName(req->name())) {
      return Fail(
          absl::InvalidArgumentError("name must be 1..63 bytes of [a-z0-9-]"));
    }
    DSEC_RPC_CHECK(ValidateQuota(req->quota()));
    if (req->weight() < 0 || req->weight() > 1000) {
      return Fail(absl::InvalidArgumentError("weight must be 0..1000"));
    }
    absl::Duration lease = FromProto(req->lease_ttl());
    if (lease != absl::ZeroDuration() && lease < impl_->options.min_lease_ttl) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat("lease_ttl below ",
                       absl::FormatDuration(impl_->options.min_lease_ttl))));
    }
    std::string key = RandomHex(24);
    absl::MutexLock l(&impl_->mu);
    for (const auto& [id, j] : impl_->jobs) {
      if (j.job.name() == req->name()) {
        return Fail(absl::AlreadyExistsError(
            absl::StrCat("job ", req->name(), " exists")));
      }
    }
    Impl::JobRec rec;
    rec.key_hash = Sha256Hex(key);
    v1::Job& j = rec.job;
    j.set_id(NewId("job-"));
    j.set_name(req->name());
    *j.mutable_quota() = req->quota();
    j.set_weight(req->weight() == 0 ? 1 : req->weight());
    j.set_priority(req->priority());
    *j.mutable_lease_ttl() = req->lease_ttl();
    absl::Time now = absl::Now();
    if (lease > absl::ZeroDuration())
      *j.mutable_lease_expire_time() = ToProto(now + lease);
    j.set_state(v1::JOB_STATE_ACTIVE);
    *j.mutable_create_time() = ToProto(now);
    j.mutable_usage();
    Store::Batch b;
    b.PutJob(Impl::StoredJob(rec));
    impl_->Persist(std::move(b));
    impl_->job_by_key[rec.key_hash] = j.id();
    *resp = j;
    resp->set_api_key(key);
    impl_->jobs[j.id()] = std::move(rec);
    return grpc::Status::OK;
  }

  grpc::Status GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req,
                      v1::Job* resp) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    absl::MutexLock l(&impl_->mu);
    DSEC_RPC_ASSIGN(std::string id, impl_->ResolveJob(c, req->job_id()));
    *resp = impl_->jobs.at(id).job;
    return grpc::Status::OK;
  }

  grpc::Status ListJobs(grpc::ServerContext* ctx,
                        const v1::ListJobsRequest* req,
                        v1::ListJobsResponse* resp) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    if (!c.admin)
      return Fail(absl::PermissionDeniedError("ListJobs needs the admin key"));
    if (req->page_size() < 0)
      return Fail(absl::InvalidArgumentError("page_size < 0"));
    int32_t page =
        req->page_size() == 0 ? 100 : std::min(req->page_size(), 1000);
    absl::MutexLock l(&impl_->mu);
    std::vector<const v1::Job*> all;
    for (const auto& [id, j] : impl_->jobs) {
      if (j.job.name() > req->page_token()) all.push_back(&j.job);
    }
    std::sort(all.begin(), all.end(), [](const v1::Job* a, const v1::Job* b) {
      return a->name() < b->name();
    });
    for (int32_t i = 0; i < static_cast<int32_t>(all.size()) && i < page; ++i) {
      *resp->add_jobs() = *all[i];
    }
    if (static_cast<int32_t>(all.size()) > page)
      resp->set_next_page_token(all[page - 1]->name());
    return grpc::Status::OK;
  }

  grpc::Status UpdateJobQuota(grpc::ServerContext* ctx,
                              const v1::UpdateJobQuotaRequest* req,
                              v1::Job* resp) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    if (!c.admin)
      return Fail(
          absl::PermissionDeniedError("UpdateJobQuota needs the admin key"));
    if (req->has_quota()) DSEC_RPC_CHECK(ValidateQuota(req->quota()));
    if (req->has_weight() && (req->weight() < 0 || req->weight() > 1000)) {
      return Fail(absl::InvalidArgumentError("weight must be 0..1000"));
    }
    absl::MutexLock l(&impl_->mu);
    DSEC_RPC_ASSIGN(std::string id, impl_->ResolveJob(c, req->job_id()));
    auto& j = impl_->jobs.at(id);
    if (req->has_quota()) *j.job.mutable_quota() = req->quota();
    if (req->has_weight())
      j.job.set_weight(req->weight() == 0 ? 1 : req->weight());
    if (req->has_priority()) j.job.set_priority(req->priority());
    if (req->has_lease_ttl()) *j.job.mutable_lease_ttl() = req->lease_ttl();
    Store::Batch b;
    b.PutJob(Impl::StoredJob(j));
    impl_->Persist(std::move(b));
    impl_->PumpQueue();
    *resp = j.job;
    return grpc::Status::OK;
  }

  grpc::Status RenewLease(grpc::ServerContext* ctx,
                          const v1::RenewLeaseRequest* req,
                          v1::RenewLeaseResponse* resp) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    absl::MutexLock l(&impl_->mu);
    DSEC_RPC_ASSIGN(std::string id, impl_->ResolveJob(c, req->job_id()));
    auto& j = impl_->jobs.at(id);
    if (j.job.state() == v1::JOB_STATE_DELETING) {
      return Fail(absl::FailedPreconditionError("the job is being deleted"));
    }
    absl::Duration ttl = FromProto(j.job.lease_ttl());
    if (ttl > absl::ZeroDuration()) {
      *j.job.mutable_lease_expire_time() = ToProto(absl::Now() + ttl);
      *resp->mutable_lease_expire_time() = j.job.lease_expire_time();
    }
    j.job.set_state(v1::JOB_STATE_ACTIVE);
    Store::Batch b;
    b.PutJob(Impl::StoredJob(j));
    impl_->Persist(std::move(b));
    return grpc::Status::OK;
  }

  grpc::Status DeleteJob(grpc::ServerContext* ctx,
                         const v1::DeleteJobRequest* req,
                         v1::DeleteJobResponse*) override {
    DSEC_RPC_ASSIGN(Caller c, impl_->Authenticate(ctx));
    if (!c.admin)
      return Fail(absl::PermissionDeniedError("DeleteJob needs the admin key"));
    std::vector<std::string> ids;
    std::string id;
    {
      absl::MutexLock l(&impl_->mu);
      DSEC_RPC_ASSIGN(id, impl_->ResolveJob(c, req->job_id()));
      auto& j = impl_->jobs.at(id);
      if (j.job.state() == v1::JOB_STATE_DELETING) {
        return Fail(absl::NotFoundError("job already being deleted"));
      }
      j.job.set_state(v1::JOB_STATE_DELETING);
      impl_->job_by_key.erase(j.key_hash);
      Store::Batch b;
      b.PutJob(Impl::StoredJob(j));
      for (auto it = impl_->snapshots.begin(); it != impl_->snapshots.end();) {
        if (it->second.job_id() == id) {
          impl_->ForgetSnapshotOnFs(it->second, &b);
          b.DeleteSnapshot(it->first);
          impl_->snapshots.erase(it++);
        } else {
          ++it;
        }
      }
      impl_->Persist(std::move(b));
      for (const auto& [t, sid] : j.sandboxes) ids.push_back(sid);
      impl_->cv.SignalAll();
    }
    impl_->Terminate(ids, "job deleted");
    absl::MutexLock l(&impl_->mu);
    auto jit = impl_->jobs.find(id);
    if (jit != impl_->jobs.end() && jit->second.job.usage().sandboxes() == 0) {
      Store::Batch b;
      b.DeleteJob(id);
      for (const auto& [t, sid] : jit->second.sandboxes) {
        auto it = impl_->sandboxes.find(sid);
        if (it != impl_->sandboxes.end()) {
          impl_->state_counts[it->second.sb.state()]--;
          impl_->sandboxes.erase(it);
        }
        b.DeleteSandbox(sid);
      }
      impl_->jobs.erase(jit);
      impl_->Persist(std::move(b));
    }
    return grpc::Status::OK;
  }

 private:
  static absl::Status ValidateQuota(const v1::JobQuota& q) {
    if (q.max_sandboxes() < 0 || q.cpu_millicores() < 0 ||
        q.memory_bytes() < 0 || q.snapshot_bytes() < 0) {
      return absl::InvalidArgumentError("negative quota");
    }
    return absl::OkStatus();
  }
  Impl* impl_;
};

class NodeRegistryService final : public v1::NodeRegistry::Service {
 public:
  explicit NodeRegistryService(Impl* impl) : impl_(impl) {}

  grpc::Status RegisterNode(grpc::ServerContext* ctx,
                            const v1::RegisterNodeRequest* req,
                            v1::RegisterNodeResponse* resp) override {
    DSEC_RPC_CHECK(impl_->AuthenticateNode(ctx));
    if (req->node_id().empty() || req->endpoint().empty()) {
      return Fail(
          absl::InvalidArgumentError("node_id and endpoint are required"));
    }
    const auto& cap = req->capacity();
    if (cap.cpu_millicores() < 0 || cap.memory_bytes() < 0 ||
        cap.max_sandboxes() < 0) {
      return Fail(absl::InvalidArgumentError("negative capacity"));
    }
    absl::MutexLock l(&impl_->mu);
    v1::Node node;
    auto it = impl_->nodes.find(req->node_id());
    if (it != impl_->nodes.end()) node = it->second.node;
    node.set_node_id(req->node_id());
    node.set_endpoint(req->endpoint());
    *node.mutable_capacity() = cap;
    node.mutable_labels()->clear();
    for (const auto& [k, v] : req->labels()) (*node.mutable_labels())[k] = v;
    node.clear_cached_images();
    for (const auto& i : req->cached_images()) node.add_cached_images(i);
    absl::Time now = absl::Now();
    *node.mutable_last_heartbeat_time() = ToProto(now);
    Impl::NodeRec& n = impl_->UpsertNodeLocked(node);
    n.last_heartbeat = now;
    n.dead = false;
    impl_->SetNodeState(n);
    Store::Batch b;
    b.PutNode(n.node);
    impl_->Persist(std::move(b));
    DSEC_LOG_INFO("controller: node {} registered at {}", req->node_id(),
                  req->endpoint());
    impl_->PumpQueue();
    impl_->cv.SignalAll();
    *resp->mutable_heartbeat_interval() =
        ToProtoDuration(impl_->options.heartbeat_interval);
    *resp->mutable_heartbeat_timeout() =
        ToProtoDuration(impl_->options.heartbeat_timeout);
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext* ctx,
                         const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override {
    DSEC_RPC_CHECK(impl_->AuthenticateNode(ctx));
    Metrics::Get().heartbeats->Inc();
    absl::MutexLock l(&impl_->mu);
    auto it = impl_->nodes.find(req->node_id());
    if (it == impl_->nodes.end()) {
      return Fail(absl::NotFoundError("node unknown; RegisterNode again"));
    }
    Impl::NodeRec& n = it->second;
    absl::Time now = absl::Now();
    n.last_heartbeat = now;
    *n.node.mutable_last_heartbeat_time() = ToProto(now);
    n.node.set_used_cpu_millicores(req->used_cpu_millicores());
    n.node.set_used_memory_bytes(req->used_memory_bytes());
    n.node.set_live_sandboxes(req->live_sandboxes());
    if (n.dead) {
      DSEC_LOG_INFO("controller: node {} is back", req->node_id());
      n.dead = false;
      impl_->SetNodeState(n);
      Store::Batch b;
      b.PutNode(n.node);
      impl_->Persist(std::move(b));
      impl_->PumpQueue();
    }
    for (auto& id :
         impl_->ApplyReport(n, req->sandboxes(), req->full_report())) {
      resp->add_destroy_sandbox_ids(id);
    }
    resp->set_cordoned(n.cordoned || n.draining);
    resp->set_draining(n.draining);
    auto& gc = impl_->snapshot_gc;
    Store::Batch expired;
    while (!gc.empty() && gc.front().first < now) {
      expired.DeleteSnapshotGc(gc.front().second);
      gc.pop_front();
    }
    for (size_t i = 0; i < gc.size() && i < 1000; ++i) {
      resp->add_delete_snapshot_ids(gc[i].second);
    }
    // Last: `n` must not be used across Persist.
    if (!expired.empty()) impl_->Persist(std::move(expired));
    return grpc::Status::OK;
  }

 private:
  Impl* impl_;
};

class AdminService final : public v1::Admin::Service {
 public:
  explicit AdminService(Impl* impl) : impl_(impl) {}

  grpc::Status ListNodes(grpc::ServerContext* ctx, const v1::ListNodesRequest*,
                         v1::ListNodesResponse* resp) override {
    DSEC_RPC_CHECK(impl_->AuthenticateAdmin(ctx));
    absl::MutexLock l(&impl_->mu);
    std::vector<const v1::Node*> all;
    for (const auto& [id, n] : impl_->nodes) all.push_back(&n.node);
    std::sort(all.begin(), all.end(), [](const v1::Node* a, const v1::Node* b) {
      return a->node_id() < b->node_id();
    });
    for (const auto* n : all) *resp->add_nodes() = *n;
    return grpc::Status::OK;
  }

  grpc::Status CordonNode(grpc::ServerContext* ctx,
                          const v1::CordonNodeRequest* req,
                          v1::Node* resp) override {
    DSEC_RPC_CHECK(impl_->AuthenticateAdmin(ctx));
    absl::MutexLock l(&impl_->mu);
    auto it = impl_->nodes.find(req->node_id());
    if (it == impl_->nodes.end())
      return Fail(absl::NotFoundError("node not found"));
    it->second.cordoned = req->cordon();
    if (!req->cordon()) it->second.draining = false;
    impl_->SetNodeState(it->second);
    Store::Batch b;
    b.PutNode(it->second.node);
    impl_->Persist(std::move(b));
    if (!req->cordon()) impl_->PumpQueue();
    *resp = it->second.node;
    return grpc::Status::OK;
  }

  grpc::Status DrainNode(grpc::ServerContext* ctx,
                         const v1::DrainNodeRequest* req,
                         v1::Node* resp) override {
    DSEC_RPC_CHECK(impl_->AuthenticateAdmin(ctx));
    std::vector<std::string> ids;
    {
      absl::MutexLock l(&impl_->mu);
      auto it = impl_->nodes.find(req->node_id());
      if (it == impl_->nodes.end())
        return Fail(absl::NotFoundError("node not found"));
      it->second.cordoned = true;
      it->second.draining = true;
      impl_->SetNodeState(it->second);
      Store::Batch b;
      b.PutNode(it->second.node);
      impl_->Persist(std::move(b));
      ids.assign(it->second.sandboxes.begin(), it->second.sandboxes.end());
    }
    impl_->Terminate(ids, "node drained");
    absl::MutexLock l(&impl_->mu);
    *resp = impl_->nodes.at(req->node_id()).node;
    return grpc::Status::OK;
  }

  grpc::Status GetClusterStats(grpc::ServerContext* ctx,
                               const v1::GetClusterStatsRequest*,
                               v1::ClusterStats* resp) override {
    DSEC_RPC_CHECK(impl_->AuthenticateAdmin(ctx));
    absl::MutexLock l(&impl_->mu);
    for (const auto& [id, n] : impl_->nodes) {
      switch (n.node.state()) {
        case v1::NODE_STATE_READY:
          resp->set_nodes_ready(resp->nodes_ready() + 1);
          break;
        case v1::NODE_STATE_DEAD:
          resp->set_nodes_dead(resp->nodes_dead() + 1);
          break;
        default:
          resp->set_nodes_cordoned(resp->nodes_cordoned() + 1);
          break;
      }
    }
    for (int s = 1; s < 10; ++s) {
      if (impl_->state_counts[s] > 0) {
        (*resp->mutable_sandboxes_by_state())[v1::SandboxState_Name(
            static_cast<v1::SandboxState>(s))] = impl_->state_counts[s];
      }
    }
    resp->set_jobs(static_cast<int32_t>(impl_->jobs.size()));
    resp->set_queued_requests(static_cast<int32_t>(impl_->queue.size()));
    resp->set_placements_total(impl_->placements_total);
    return grpc::Status::OK;
  }

 private:
  Impl* impl_;
};

}  // namespace

ControllerServer::ControllerServer(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

ControllerServer::~ControllerServer() { Shutdown(); }

int ControllerServer::port() const { return impl_->bound_port; }

int ControllerServer::metrics_port() const {
  return impl_->http ? impl_->http->port() : -1;
}

void ControllerServer::Shutdown() { impl_->ShutdownImpl(); }

absl::StatusOr<std::unique_ptr<ControllerServer>> ControllerServer::Create(
    const ControllerOptions& options) {
  if (options.heartbeat_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("heartbeat_timeout must be positive");
  }
  ASSIGN_OR_RETURN(TokenSigner signer,
                   TokenSigner::Create(options.token_secret));
  auto impl = std::make_unique<Impl>(options, std::move(signer));
  ASSIGN_OR_RETURN(impl->store, Store::Open(options.data_dir));
  ASSIGN_OR_RETURN(impl->agent_creds, MakeChannelCredentials(options.tls));
  RETURN_IF_ERROR(impl->Recover());

  impl->services.push_back(std::make_unique<SandboxesService>(impl.get()));
  impl->services.push_back(std::make_unique<JobsService>(impl.get()));
  impl->services.push_back(std::make_unique<NodeRegistryService>(impl.get()));
  impl->services.push_back(std::make_unique<AdminService>(impl.get()));
  ASSIGN_OR_RETURN(auto server_creds, MakeServerCredentials(options.tls));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, server_creds,
                           &impl->bound_port);
  for (auto& s : impl->services) builder.RegisterService(s.get());
  impl->server = builder.BuildAndStart();
  if (!impl->server || impl->bound_port == 0) {
    return absl::UnavailableError(
        absl::StrCat("controller: cannot listen on ", options.listen_address));
  }
  if (options.metrics_port >= 0) {
    std::string host =
        options.listen_address.substr(0, options.listen_address.rfind(':'));
    if (host.empty() || host == "[::]") host = "0.0.0.0";
    auto http = metrics::HttpServer::Start(host, options.metrics_port,
                                           &metrics::Registry::Default());
    if (!http.ok()) {
      impl->ShutdownImpl();
      return http.status();
    }
    impl->http = std::move(*http);
  }
  Impl* raw = impl.get();
  impl->monitor = std::thread([raw] { raw->MonitorLoop(); });
  impl->reconciler = std::thread([raw] { raw->ReconcileWithAgents(); });
  DSEC_LOG_INFO("controller: serving on port {}", impl->bound_port);
  return std::unique_ptr<ControllerServer>(
      new ControllerServer(std::move(impl)));
}

}  // namespace dsec::controller
