// Invariants:
//  - An Entry is in sandboxes_ from admission (STARTING, sb == nullptr)
//    until it is destroyed; capacity counts every entry in the map.
//  - Entry::state changes only under Entry::mu; RUNNING <-> PARKED, and any
//    state -> TERMINATING once. Exec increments `inflight` under the same
//    lock after seeing RUNNING, so Park never freezes a running exec.
//  - Idempotency records: an action id maps to one ActionRecord; its
//    `done` notification fires exactly once, after status/response are set.
//    A failed start (non-OK status) erases the record, so a retry runs.
#include "agent/sandbox_manager.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <filesystem>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "common/errno_status.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace dsec::agent {

namespace {

constexpr size_t kChunkBytes = 256 << 10;
constexpr int kMaxForkCount = 256;
constexpr size_t kMaxListEntries = 100000;

struct ActionRecord {
  std::string fingerprint;
  // Signal by action_id asked for the exec's tree to be killed.
  std::atomic<bool> kill_requested{false};
  absl::Notification done;
  absl::Status status;   // set before `done`
  std::string response;  // serialized response proto, set before `done`
};

bool ValidId(absl::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return absl::ascii_isalnum(c) || c == '-' || c == '_';
  });
}

std::string StateLabel(v1::SandboxState state) {
  std::string name = v1::SandboxState_Name(state);
  absl::string_view v(name);
  absl::ConsumePrefix(&v, "SANDBOX_STATE_");
  return absl::AsciiStrToLower(v);
}

int64_t DirBytes(const std::string& dir) {
  std::error_code ec;
  int64_t total = 0;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_regular_file(ec)) total += it->file_size(ec);
  }
  return total;
}

}  // namespace

struct SandboxManager::Entry {
  std::string id;
  std::string job_id;
  v1::SandboxSpec spec;
  int64_t cpu_millicores = 0;
  int64_t memory_bytes = 0;
  absl::Time create_time;
  absl::Time expire_time = absl::InfiniteFuture();
  absl::Duration idle_ttl = absl::ZeroDuration();

  absl::Mutex mu;
  std::shared_ptr<sandbox::Sandbox> sb ABSL_GUARDED_BY(mu);
  bool warm ABSL_GUARDED_BY(mu) = false;
  v1::SandboxState state ABSL_GUARDED_BY(mu) = v1::SANDBOX_STATE_STARTING;
  absl::Status start_status ABSL_GUARDED_BY(mu);
  absl::Time last_activity ABSL_GUARDED_BY(mu);
  int inflight ABSL_GUARDED_BY(mu) = 0;
  std::map<std::string, std::shared_ptr<ActionRecord>> actions
      ABSL_GUARDED_BY(mu);
  std::deque<std::string> finished_actions ABSL_GUARDED_BY(mu);

  std::shared_ptr<sandbox::Sandbox> Get() {
    absl::MutexLock lock(&mu);
    return sb;
  }

  // The record for `action_id`: a fresh one (second = true) the caller must
  // Finish, or the existing one. ALREADY_EXISTS on a fingerprint mismatch.
  absl::StatusOr<std::pair<std::shared_ptr<ActionRecord>, bool>> BeginAction(
      const std::string& action_id, const std::string& fingerprint) {
    absl::MutexLock lock(&mu);
    auto it = actions.find(action_id);
    if (it != actions.end()) {
      if (it->second->fingerprint != fingerprint) {
        return absl::AlreadyExistsError(absl::StrCat(
            "action_id \"", action_id, "\" was used for a different request"));
      }
      return std::make_pair(it->second, false);
    }
    auto record = std::make_shared<ActionRecord>();
    record->fingerprint = fingerprint;
    actions[action_id] = record;
    return std::make_pair(record, true);
  }

  void FinishAction(const std::string& action_id,
                    const std::shared_ptr<ActionRecord>& record,
                    absl::Status status, std::string response, int cap) {
    {
      absl::MutexLock lock(&mu);
      record->status = std::move(status);
      record->response = std::move(response);
      if (!record->status.ok()) {
        actions.erase(action_id);
      } else {
        finished_actions.push_back(action_id);
        while (static_cast<int>(finished_actions.size()) > cap) {
          actions.erase(finished_actions.front());
          finished_actions.pop_front();
        }
      }
    }
    record->done.Notify();
  }
};

// Waits for an in-flight action; CANCELLED if the caller goes away first.
static absl::Status AwaitAction(const ActionRecord& record,
                                const std::function<bool()>& cancelled) {
  while (!record.done.WaitForNotificationWithTimeout(absl::Milliseconds(50))) {
    if (cancelled && cancelled()) {
      return absl::CancelledError("caller went away while waiting");
    }
  }
  return record.status;
}

struct SandboxManager::Metrics {
  metrics::Gauge* sandboxes;
  metrics::Histogram* exec_seconds;
  metrics::Counter* execs;
  metrics::Counter* warm_claims;
  metrics::Counter* warm_misses;
  metrics::Counter* reaped;
};

absl::StatusOr<std::unique_ptr<SandboxManager>> SandboxManager::Create(
    const ManagerOptions& options) {
  std::unique_ptr<SandboxManager> manager(new SandboxManager(options));
  RETURN_IF_ERROR(manager->Init());
  return manager;
}

SandboxManager::SandboxManager(ManagerOptions options)
    : options_(std::move(options)) {}

SandboxManager::~SandboxManager() { Shutdown(); }

absl::Status SandboxManager::Init() {
  ASSIGN_OR_RETURN(TokenSigner signer,
                   TokenSigner::Create(options_.token_secret));
  signer_ = std::make_unique<TokenSigner>(std::move(signer));
  ASSIGN_OR_RETURN(runtime_, sandbox::Runtime::Create(options_.runtime));
  request_limits_ = options_.request_limits;
  if (request_limits_.layers_root.empty()) {
    request_limits_.layers_root = runtime_->LayersDir();
  }
  if (!request_limits_.fs_mount_dir.empty()) {
    ASSIGN_OR_RETURN(
        snapshot_store_,
        SnapshotStore::Create(
            {.fs_mount_dir = request_limits_.fs_mount_dir,
             .cache_dir = request_limits_.layers_root + "/fs-cache"}));
  }

  static metrics::Registry* fallback = new metrics::Registry();
  metrics::Registry& reg = options_.metrics ? *options_.metrics : *fallback;
  metrics_ = std::make_unique<Metrics>();
  metrics_->sandboxes = reg.AddGauge(
      "dsec_agent_sandboxes", "Sandboxes on this node by state.", {"state"});
  metrics_->exec_seconds =
      reg.AddHistogram("dsec_agent_exec_seconds", "Exec wall time.", {},
                       metrics::LatencyBuckets());
  metrics_->execs = reg.AddCounter("dsec_agent_execs_total",
                                   "Execs by outcome.", {"outcome"});
  metrics_->warm_claims = reg.AddCounter("dsec_agent_warm_claims_total",
                                         "Warm pool claims served.", {"class"});
  metrics_->warm_misses =
      reg.AddCounter("dsec_agent_warm_misses_total",
                     "Warm pool claims that launched cold.", {"class"});
  metrics_->reaped =
      reg.AddCounter("dsec_agent_reaped_total",
                     "Sandboxes destroyed by ttl/idle_ttl.", {"reason"});

  for (const WarmPoolClass& pool_class : options_.warm_pools) {
    if (pool_class.name.empty() || pools_.count(pool_class.name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "warm pool class \"", pool_class.name, "\" is empty or repeated"));
    }
    sandbox::WarmPoolOptions pool_options;
    ASSIGN_OR_RETURN(pool_options.spec,
                     ToSandboxSpec(pool_class.spec, request_limits_));
    if (!pool_class.spec.image().empty()) {
      image_warmer_.Warm(pool_options.spec.layers.back());
    }
    pool_options.target = pool_class.size;
    ASSIGN_OR_RETURN(auto pool,
                     sandbox::WarmPool::Create(runtime_.get(), pool_options));
    sandbox::WarmPool* raw = pool.get();
    reg.AddCallbackGauge(
        absl::StrCat("dsec_agent_warm_ready_",
                     absl::StrReplaceAll(pool_class.name, {{"-", "_"}})),
        absl::StrCat("Warm sandboxes ready in class ", pool_class.name, "."),
        [raw] { return raw->ready(); });
    pools_[pool_class.name] = std::move(pool);
    pool_specs_[pool_class.name] = SpecShape(pool_class.spec);
  }
  return absl::OkStatus();
}

void SandboxManager::Shutdown() {
  std::map<std::string, std::shared_ptr<Entry>> all;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
    draining_ = true;
    all = sandboxes_;
  }
  for (auto& [id, entry] : all) Destroy(entry, "agent shutdown");
  {
    // Starts past admission finish (and are destroyed below) before the
    // warm pools they may claim from go away.
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](int* n) { return *n == 0; }, &launching_));
    all = sandboxes_;
  }
  for (auto& [id, entry] : all) Destroy(entry, "agent shutdown");
  pools_.clear();
}

// ---- admission and lifecycle ----------------------------------------------

absl::Status SandboxManager::Admit(const v1::SandboxSpec& spec,
                                   int count) const {
  if (draining_) {
    return absl::FailedPreconditionError("node is draining");
  }
  int64_t cpu = 0, memory = 0;
  for (const auto& [id, entry] : sandboxes_) {
    cpu += entry->cpu_millicores;
    memory += entry->memory_bytes;
  }
  const int live = static_cast<int>(sandboxes_.size());
  if (options_.max_sandboxes > 0 && live + count > options_.max_sandboxes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "node holds ", live, " of ", options_.max_sandboxes, " sandboxes"));
  }
  if (options_.memory_bytes > 0 &&
      memory + count * ReservedMemory(spec) > options_.memory_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "node memory: ", memory, " of ", options_.memory_bytes,
        " bytes committed, ", count * ReservedMemory(spec), " more asked"));
  }
  if (options_.cpu_millicores > 0 &&
      cpu + count * spec.limits().cpu_millicores() > options_.cpu_millicores) {
    return absl::ResourceExhaustedError(absl::StrCat("node cpu: ", cpu, " of ",
                                                     options_.cpu_millicores,
                                                     " millicores committed"));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> SandboxManager::Launch(const std::string& id,
                                            const std::string& job_id,
                                            const v1::SandboxSpec& spec,
                                            absl::Time expire_time) {
  ASSIGN_OR_RETURN(sandbox::SandboxSpec sb_spec,
                   ToSandboxSpec(spec, request_limits_));
  // The image is the bottom layer; see image_warmer.h for why the agent
  // reads it before any sandbox does.
  if (!spec.image().empty()) image_warmer_.Warm(sb_spec.layers.back());
  if (options_.memory_bytes > 0 &&
      ReservedMemory(spec) > options_.memory_bytes) {
    return absl::InvalidArgumentError("memory limit above the node's memory");
  }
  if (options_.cpu_millicores > 0 &&
      spec.limits().cpu_millicores() > options_.cpu_millicores) {
    return absl::InvalidArgumentError("cpu limit above the node's cpu");
  }
  auto entry = std::make_shared<Entry>();
  entry->id = id;
  entry->job_id = job_id;
  entry->spec = spec;
  entry->cpu_millicores = spec.limits().cpu_millicores();
  entry->memory_bytes = ReservedMemory(spec);
  entry->create_time = absl::Now();
  entry->expire_time = expire_time;
  if (spec.has_ttl() && FromProto(spec.ttl()) > absl::ZeroDuration()) {
    entry->expire_time =
        std::min(expire_time, entry->create_time + FromProto(spec.ttl()));
  }
  entry->idle_ttl = FromProto(spec.idle_ttl());
  {
    absl::MutexLock lock(&mu_);
    if (sandboxes_.count(id)) {
      return absl::AlreadyExistsError(absl::StrCat("sandbox ", id, " exists"));
    }
    RETURN_IF_ERROR(Admit(spec, 1));
    sandboxes_[id] = entry;
    ++launching_;
  }
  absl::Cleanup done_launching = [this] {
    absl::MutexLock lock(&mu_);
    --launching_;
  };

  // Warm pool: the named class, else one whose spec has the same shape.
  sandbox::WarmPool* pool = nullptr;
  std::string pool_name = spec.warm_pool_class();
  if (!pool_name.empty() && pools_.count(pool_name)) {
    pool = pools_.at(pool_name).get();
  } else if (pool_name.empty()) {
    const v1::SandboxSpec shape = SpecShape(spec);
    for (const auto& [name, pool_shape] : pool_specs_) {
      if (Fingerprint("spec", pool_shape) == Fingerprint("spec", shape)) {
        pool = pools_.at(name).get();
        pool_name = name;
        break;
      }
    }
  }
  absl::StatusOr<std::unique_ptr<sandbox::Sandbox>> sb;
  bool warm = false;
  if (pool != nullptr) {
    const int64_t hits_before = pool->stats().hits;
    sb = pool->Claim();
    warm = pool->stats().hits > hits_before;
    (warm ? metrics_->warm_claims : metrics_->warm_misses)->Inc({pool_name});
  } else {
    sb = runtime_->CreateSandbox(sb_spec);
  }

  if (!sb.ok()) {
    {
      absl::MutexLock map_lock(&mu_);
      auto it = sandboxes_.find(id);
      if (it != sandboxes_.end() && it->second == entry) sandboxes_.erase(it);
    }
    absl::MutexLock lock(&entry->mu);
    entry->state = v1::SANDBOX_STATE_FAILED;
    entry->start_status = sb.status();
    return sb.status();
  }
  absl::MutexLock lock(&entry->mu);
  if (entry->state != v1::SANDBOX_STATE_STARTING) {
    // Stopped while starting.
    (*sb)->Destroy().IgnoreError();
    entry->start_status = absl::AbortedError("sandbox stopped while starting");
    return entry->start_status;
  }
  entry->sb = std::move(*sb);
  entry->warm = warm;
  entry->state = v1::SANDBOX_STATE_RUNNING;
  entry->last_activity = absl::Now();
  DSEC_LOG_INFO("sandbox {} started ({})", id, warm ? "warm" : "cold");
  return warm;
}

absl::StatusOr<v1::StartSandboxResponse> SandboxManager::StartSandbox(
    const v1::StartSandboxRequest& request) {
  if (!ValidId(request.sandbox_id())) {
    return absl::InvalidArgumentError(
        "sandbox_id must be 1..128 characters of [A-Za-z0-9_-]");
  }
  if (request.job_id().find('.') != std::string::npos) {
    return absl::InvalidArgumentError("job_id must not contain '.'");
  }
  std::shared_ptr<Entry> existing;
  {
    absl::MutexLock lock(&mu_);
    auto it = sandboxes_.find(request.sandbox_id());
    if (it != sandboxes_.end()) existing = it->second;
  }
  if (existing != nullptr) {
    // Idempotent: report the same sandbox (waiting out a concurrent start).
    absl::MutexLock lock(&existing->mu);
    existing->mu.Await(absl::Condition(
        +[](Entry* e) ABSL_SHARED_LOCKS_REQUIRED(e->mu) {
          return e->state != v1::SANDBOX_STATE_STARTING;
        },
        existing.get()));
    if (existing->state == v1::SANDBOX_STATE_FAILED) {
      return existing->start_status;
    }
    v1::StartSandboxResponse response;
    response.set_state(existing->state);
    response.set_warm(existing->warm);
    return response;
  }
  absl::Time expire = absl::InfiniteFuture();
  if (request.has_expire_time()) expire = FromProto(request.expire_time());
  v1::SandboxSpec spec = request.spec();
  if (!request.snapshot_id().empty()) {
    // A fork: the node that took the snapshot has its layers (spec.layers);
    // any other node copies them from dsec-fs.
    RETURN_IF_ERROR(ValidateSnapshotId(request.snapshot_id()));
    bool held;
    {
      absl::MutexLock lock(&mu_);
      held = snapshots_.count(request.snapshot_id()) > 0;
    }
    if (!held) {
      if (snapshot_store_ == nullptr) {
        return absl::FailedPreconditionError(absl::StrCat(
            "snapshot ", request.snapshot_id(),
            " was taken on another node and this agent does not mount "
            "dsec-fs (--fs_mount)"));
      }
      ASSIGN_OR_RETURN(std::vector<std::string> layers,
                       snapshot_store_->Fetch(request.snapshot_id()));
      spec.clear_layers();
      for (const std::string& layer : layers) spec.add_layers(layer);
    }
  }
  ASSIGN_OR_RETURN(
      bool warm, Launch(request.sandbox_id(), request.job_id(), spec, expire));
  v1::StartSandboxResponse response;
  response.set_state(v1::SANDBOX_STATE_RUNNING);
  response.set_warm(warm);
  return response;
}

void SandboxManager::Destroy(const std::shared_ptr<Entry>& entry,
                             absl::string_view reason) {
  std::shared_ptr<sandbox::Sandbox> sb;
  {
    absl::MutexLock lock(&entry->mu);
    if (entry->state == v1::SANDBOX_STATE_TERMINATING ||
        entry->state == v1::SANDBOX_STATE_TERMINATED) {
      return;
    }
    entry->state = v1::SANDBOX_STATE_TERMINATING;
    sb = entry->sb;
  }
  if (sb != nullptr) {
    absl::Status status = sb->Destroy();
    if (!status.ok()) {
      DSEC_LOG_WARN("destroying sandbox {}: {}", entry->id, status.ToString());
    }
  }
  {
    absl::MutexLock lock(&entry->mu);
    entry->state = v1::SANDBOX_STATE_TERMINATED;
  }
  absl::MutexLock lock(&mu_);
  auto it = sandboxes_.find(entry->id);
  if (it != sandboxes_.end() && it->second == entry) sandboxes_.erase(it);
  DSEC_LOG_INFO("sandbox {} destroyed: {}", entry->id, std::string(reason));
}

v1::StopSandboxesResponse SandboxManager::StopSandboxes(
    const v1::StopSandboxesRequest& request) {
  v1::StopSandboxesResponse response;
  const std::string reason =
      request.reason().empty() ? "stopped" : request.reason();
  for (const std::string& id : request.sandbox_ids()) {
    std::shared_ptr<Entry> entry;
    {
      absl::MutexLock lock(&mu_);
      auto it = sandboxes_.find(id);
      if (it != sandboxes_.end()) entry = it->second;
    }
    if (entry == nullptr) {
      response.add_not_found_ids(id);
      continue;
    }
    Destroy(entry, reason);
    response.add_stopped_ids(id);
  }
  return response;
}

v1::ListNodeSandboxesResponse SandboxManager::ListSandboxes() const {
  v1::ListNodeSandboxesResponse response;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, entry] : sandboxes_) {
    v1::NodeSandboxReport* report = response.add_sandboxes();
    report->set_sandbox_id(id);
    report->set_job_id(entry->job_id);
    absl::MutexLock entry_lock(&entry->mu);
    report->set_state(entry->state);
  }
  return response;
}

v1::HeartbeatRequest SandboxManager::HeartbeatReport() const {
  v1::HeartbeatRequest request;
  v1::ListNodeSandboxesResponse list = ListSandboxes();
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, entry] : sandboxes_) {
      request.set_used_cpu_millicores(request.used_cpu_millicores() +
                                      entry->cpu_millicores);
      request.set_used_memory_bytes(request.used_memory_bytes() +
                                    entry->memory_bytes);
    }
  }
  request.set_live_sandboxes(list.sandboxes_size());
  *request.mutable_sandboxes() = std::move(*list.mutable_sandboxes());
  request.set_full_report(true);
  for (const auto& [name, pool] : pools_) {
    (*request.mutable_warm_pool_ready())[name] = pool->ready();
  }
  double load[1] = {0};
  if (getloadavg(load, 1) == 1) request.set_load_average(load[0]);
  return request;
}

std::vector<std::string> SandboxManager::WarmPoolClasses() const {
  std::vector<std::string> names;
  for (const auto& [name, pool] : pools_) names.push_back(name);
  return names;
}

void SandboxManager::SetDraining(bool draining) {
  absl::MutexLock lock(&mu_);
  if (!shut_down_) draining_ = draining;
}

int SandboxManager::Reap(absl::Time now) {
  std::vector<std::pair<std::shared_ptr<Entry>, std::string>> doomed;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, entry] : sandboxes_) {
      absl::MutexLock entry_lock(&entry->mu);
      if (entry->state != v1::SANDBOX_STATE_RUNNING &&
          entry->state != v1::SANDBOX_STATE_PARKED) {
        continue;
      }
      if (entry->sb != nullptr && entry->sb->dead()) {
        doomed.emplace_back(entry, "init_died");
      } else if (now >= entry->expire_time) {
        doomed.emplace_back(entry, "ttl");
      } else if (entry->idle_ttl > absl::ZeroDuration() &&
                 entry->state == v1::SANDBOX_STATE_RUNNING &&
                 entry->inflight == 0 &&
                 now - entry->last_activity >= entry->idle_ttl) {
        doomed.emplace_back(entry, "idle_ttl");
      }
    }
  }
  for (const auto& [entry, reason] : doomed) {
    Destroy(entry, reason);
    metrics_->reaped->Inc({reason});
  }
  return static_cast<int>(doomed.size());
}

void SandboxManager::DeleteSnapshots(const std::vector<std::string>& ids) {
  absl::MutexLock lock(&mu_);
  for (const std::string& id : ids) {
    if (!ValidateSnapshotId(id).ok() || deleted_.count(id)) continue;
    snapshots_.erase(id);
    if (snapshot_store_ != nullptr) {
      fs_deletes_.insert(id);
      cache_deletes_.insert(id);
    }
  }
}

int SandboxManager::CollectDeletedSnapshots() {
  if (snapshot_store_ == nullptr) return 0;
  std::set<std::string> fs_ids;
  std::vector<std::string> cache_ids;
  {
    absl::MutexLock lock(&mu_);
    fs_ids.swap(fs_deletes_);
    for (const std::string& id : cache_deletes_) {
      // A cached layer under a live sandbox's overlay must stay.
      const std::string prefix = snapshot_store_->CachedDir(id) + "/";
      const bool used = std::any_of(
          sandboxes_.begin(), sandboxes_.end(), [&](const auto& kv) {
            const auto& layers = kv.second->spec.layers();
            return std::any_of(layers.begin(), layers.end(),
                               [&](const std::string& layer) {
                                 return absl::StartsWith(layer, prefix);
                               });
          });
      if (!used) cache_ids.push_back(id);
    }
    for (const std::string& id : cache_ids) cache_deletes_.erase(id);
  }
  int removed = 0;
  for (const std::string& id : fs_ids) {
    absl::Status status = snapshot_store_->Remove(id);
    if (!status.ok()) {
      DSEC_LOG_WARN("delete snapshot {} from dsec-fs: {}", id,
                    status.ToString());
      continue;
    }
    ++removed;
    absl::MutexLock lock(&mu_);
    deleted_.insert(id);
    deleted_order_.push_back(id);
    while (deleted_order_.size() > 4096) {
      deleted_.erase(deleted_order_.front());
      deleted_order_.pop_front();
    }
  }
  for (const std::string& id : cache_ids) snapshot_store_->RemoveCached(id);
  return removed;
}

void SandboxManager::UpdateGauges() const {
  std::map<std::string, int> counts;
  for (v1::SandboxState s :
       {v1::SANDBOX_STATE_STARTING, v1::SANDBOX_STATE_RUNNING,
        v1::SANDBOX_STATE_PARKED, v1::SANDBOX_STATE_TERMINATING}) {
    counts[StateLabel(s)] = 0;
  }
  const v1::ListNodeSandboxesResponse list = ListSandboxes();
  for (const auto& report : list.sandboxes()) {
    ++counts[StateLabel(report.state())];
  }
  for (const auto& [state, n] : counts) metrics_->sandboxes->Set({state}, n);
}

// ---- data path ------------------------------------------------------------

absl::StatusOr<std::shared_ptr<SandboxManager::Entry>>
SandboxManager::Authorize(absl::string_view id, absl::string_view token,
                          bool touch) {
  if (id.empty()) return absl::InvalidArgumentError("sandbox_id is empty");
  if (token.empty()) return absl::UnauthenticatedError("token is missing");
  RETURN_IF_ERROR(signer_->VerifyFor(token, id).status());
  std::shared_ptr<Entry> entry;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return absl::UnavailableError("agent is stopping");
    auto it = sandboxes_.find(std::string(id));
    if (it != sandboxes_.end()) entry = it->second;
  }
  if (entry == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("sandbox ", id, " is not on this agent"));
  }
  absl::MutexLock lock(&entry->mu);
  switch (entry->state) {
    case v1::SANDBOX_STATE_STARTING:
      return absl::UnavailableError("sandbox is still starting");
    case v1::SANDBOX_STATE_RUNNING:
    case v1::SANDBOX_STATE_PARKED:
      break;
    default:
      return absl::FailedPreconditionError(
          absl::StrCat("sandbox is ", StateLabel(entry->state)));
  }
  if (touch) entry->last_activity = absl::Now();
  return entry;
}

absl::StatusOr<std::shared_ptr<SandboxManager::Entry>>
SandboxManager::AuthorizeRunning(absl::string_view id,
                                 absl::string_view token) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry, Authorize(id, token, true));
  absl::MutexLock lock(&entry->mu);
  if (entry->state == v1::SANDBOX_STATE_PARKED) {
    return absl::FailedPreconditionError("sandbox is parked; Unpark it first");
  }
  return entry;
}

namespace {

// Sends a recorded exec result as a replay: started, the recorded output
// as chunks when streaming, then the result.
void EmitReplay(v1::ExecResult result, bool stream, const ExecEmitter& emit) {
  v1::ExecEvent started;
  started.mutable_started()->set_action_id(result.action_id());
  started.mutable_started()->set_replayed(true);
  *started.mutable_started()->mutable_start_time() = ToProtoTime(absl::Now());
  if (!emit(started)) return;
  if (stream) {
    for (auto [which, data] :
         {std::pair{v1::OUTPUT_STREAM_STDOUT, &result.stdout_data()},
          std::pair{v1::OUTPUT_STREAM_STDERR, &result.stderr_data()}}) {
      for (size_t off = 0; off < data->size(); off += kChunkBytes) {
        v1::ExecEvent ev;
        ev.mutable_output()->set_stream(which);
        ev.mutable_output()->set_offset(static_cast<int64_t>(off));
        ev.mutable_output()->set_data(data->substr(off, kChunkBytes));
        if (!emit(ev)) return;
      }
    }
    result.clear_stdout_data();
    result.clear_stderr_data();
  }
  result.set_replayed(true);
  v1::ExecEvent ev;
  *ev.mutable_result() = std::move(result);
  emit(ev);
}

bool StartFailureCode(absl::StatusCode code) {
  return code == absl::StatusCode::kInvalidArgument ||
         code == absl::StatusCode::kNotFound ||
         code == absl::StatusCode::kFailedPrecondition ||
         code == absl::StatusCode::kResourceExhausted;
}

}  // namespace

absl::Status SandboxManager::Exec(const v1::ExecRequest& request,
                                  const ExecEmitter& emit,
                                  const std::function<bool()>& cancelled) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry,
                   AuthorizeRunning(request.sandbox_id(), request.token()));
  ASSIGN_OR_RETURN(sandbox::ExecRequest exec,
                   ToSandboxExec(request, request_limits_));
  const bool stream = request.stream_output();
  const std::string& action_id = request.action_id();

  std::shared_ptr<ActionRecord> record;
  if (!action_id.empty()) {
    v1::ExecRequest key = request;
    key.clear_token();
    key.clear_stream_output();
    ASSIGN_OR_RETURN(auto begun,
                     entry->BeginAction(action_id, Fingerprint("exec", key)));
    if (!begun.second) {
      RETURN_IF_ERROR(AwaitAction(*begun.first, cancelled));
      v1::ExecResult recorded;
      if (!recorded.ParseFromString(begun.first->response)) {
        return absl::AlreadyExistsError(absl::StrCat(
            "action_id \"", action_id, "\" was used for another call"));
      }
      EmitReplay(std::move(recorded), stream, emit);
      return absl::OkStatus();
    }
    record = begun.first;
  }
  auto fail = [&](absl::Status status) {
    if (record) {
      entry->FinishAction(action_id, record, status, "",
                          options_.max_actions_per_sandbox);
    }
    return status;
  };

  std::shared_ptr<sandbox::Sandbox> sb;
  {
    absl::MutexLock lock(&entry->mu);
    if (entry->state != v1::SANDBOX_STATE_RUNNING || entry->sb == nullptr) {
      return fail(absl::FailedPreconditionError(
          absl::StrCat("sandbox is ", StateLabel(entry->state))));
    }
    if (entry->inflight >= options_.max_concurrent_execs) {
      return fail(absl::ResourceExhaustedError(
          absl::StrCat(entry->inflight, " execs already running; back off")));
    }
    ++entry->inflight;
    sb = entry->sb;
  }

  bool receiver_alive = true;
  bool started_sent = false;
  auto send = [&](const v1::ExecEvent& ev) {
    if (receiver_alive) receiver_alive = emit(ev);
  };
  const absl::Time start_time = absl::Now();
  auto send_started = [&] {
    if (started_sent) return;
    started_sent = true;
    v1::ExecEvent ev;
    ev.mutable_started()->set_action_id(action_id);
    *ev.mutable_started()->mutable_start_time() = ToProtoTime(start_time);
    send(ev);
  };
  int64_t offsets[3] = {0, 0, 0};
  sandbox::OutputCallback on_output;
  if (stream) {
    on_output = [&](int which, absl::string_view data) {
      send_started();
      v1::ExecEvent ev;
      ev.mutable_output()->set_stream(which == 2 ? v1::OUTPUT_STREAM_STDERR
                                                 : v1::OUTPUT_STREAM_STDOUT);
      int64_t& offset = offsets[which == 2 ? 2 : 1];
      ev.mutable_output()->set_offset(offset);
      offset += static_cast<int64_t>(data.size());
      ev.mutable_output()->set_data(std::string(data));
      send(ev);
    };
  }
  // Without an action id nobody can collect the result later: a client that
  // goes away takes its command's process tree with it. With one, the
  // command runs on and its result is recorded for a re-issue.
  if (action_id.empty() && cancelled) {
    exec.cancelled = cancelled;
  } else if (record) {
    // Signal by action_id kills the whole tree, daemons included.
    exec.cancelled = [record] { return record->kill_requested.load(); };
  }
  absl::StatusOr<sandbox::ExecResult> ran = sb->Exec(exec, on_output);
  {
    absl::MutexLock lock(&entry->mu);
    --entry->inflight;
    entry->last_activity = absl::Now();
  }
  v1::ExecResult result;
  if (ran.ok()) {
    result = ToProtoResult(*ran);
  } else if (!started_sent && StartFailureCode(ran.status().code())) {
    return fail(ran.status());
  } else {
    result.set_status(v1::EXEC_STATUS_INFRA_FAILURE);
    result.set_exit_code(-1);
    result.mutable_infra_error()->set_code(
        static_cast<int>(ran.status().code()));
    result.mutable_infra_error()->set_message(
        std::string(ran.status().message()));
    result.mutable_infra_error()->set_retryable(true);
    *result.mutable_wall_time() = ToProtoDuration(absl::Now() - start_time);
  }
  result.set_action_id(action_id);
  std::string outcome = v1::ExecStatus_Name(result.status());
  absl::string_view outcome_view(outcome);
  absl::ConsumePrefix(&outcome_view, "EXEC_STATUS_");
  metrics_->execs->Inc({absl::AsciiStrToLower(outcome_view)});
  metrics_->exec_seconds->Observe(
      {}, absl::ToDoubleSeconds(FromProto(result.wall_time())));
  if (record) {
    entry->FinishAction(action_id, record, absl::OkStatus(),
                        result.SerializeAsString(),
                        options_.max_actions_per_sandbox);
  }
  send_started();
  if (stream) {
    result.clear_stdout_data();
    result.clear_stderr_data();
  }
  v1::ExecEvent ev;
  *ev.mutable_result() = std::move(result);
  send(ev);
  return absl::OkStatus();
}

absl::Status SandboxManager::AuthorizeWrite(const v1::WriteFileHeader& header) {
  return AuthorizeRunning(header.sandbox_id(), header.token()).status();
}

absl::StatusOr<v1::WriteFileResponse> SandboxManager::WriteFile(
    const v1::WriteFileHeader& header, const std::string& data) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry,
                   AuthorizeRunning(header.sandbox_id(), header.token()));
  ASSIGN_OR_RETURN(std::string path,
                   ResolveSandboxPath(entry->spec.workdir(), header.path()));
  if (header.has_size_bytes() &&
      header.size_bytes() != static_cast<int64_t>(data.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("size_bytes is ", header.size_bytes(), " but ",
                     data.size(), " bytes arrived"));
  }
  const int64_t file_cap = entry->spec.limits().file_size_bytes();
  if (static_cast<int64_t>(data.size()) > options_.max_write_file_bytes ||
      (file_cap > 0 && static_cast<int64_t>(data.size()) > file_cap)) {
    return absl::ResourceExhaustedError("file larger than the file size limit");
  }
  if (header.action_id().size() > 128) {
    return absl::InvalidArgumentError("action_id is longer than 128 bytes");
  }
  std::shared_ptr<ActionRecord> record;
  if (!header.action_id().empty()) {
    v1::WriteFileHeader key = header;
    key.clear_token();
    ASSIGN_OR_RETURN(
        auto begun,
        entry->BeginAction(header.action_id(),
                           Fingerprint("write", key, Sha256Hex(data))));
    if (!begun.second) {
      RETURN_IF_ERROR(AwaitAction(*begun.first, nullptr));
      v1::WriteFileResponse recorded;
      recorded.ParseFromString(begun.first->response);
      recorded.set_replayed(true);
      return recorded;
    }
    record = begun.first;
  }
  auto write = [&]() -> absl::StatusOr<v1::WriteFileResponse> {
    std::shared_ptr<sandbox::Sandbox> sb = entry->Get();
    if (sb == nullptr) return absl::FailedPreconditionError("sandbox is gone");
    ASSIGN_OR_RETURN(std::unique_ptr<sandbox::SafeRoot> files, sb->OpenFiles());
    const sandbox::SafeRoot& root = *files;
    absl::StatusOr<sandbox::FileInfo> before = root.Stat(path);
    if (before.ok() && before->type == sandbox::FileType::kDirectory) {
      return absl::FailedPreconditionError(
          absl::StrCat(header.path(), " is a directory"));
    }
    if (before.ok() && header.write_mode() == v1::WRITE_MODE_CREATE_NEW) {
      return absl::AlreadyExistsError(absl::StrCat(header.path(), " exists"));
    }
    sandbox::WriteOptions wo;
    wo.mode = header.mode() == 0 ? 0644 : (header.mode() & 07777);
    wo.append = header.write_mode() == v1::WRITE_MODE_APPEND;
    wo.exclusive = header.write_mode() == v1::WRITE_MODE_CREATE_NEW;
    wo.create_parents = header.make_parents();
    wo.uid = sb->host_uid();
    wo.gid = sb->host_uid();
    RETURN_IF_ERROR(root.WriteFile(path, data, wo));
    v1::WriteFileResponse response;
    response.set_path(path);
    response.set_written_bytes(static_cast<int64_t>(data.size()));
    ASSIGN_OR_RETURN(sandbox::FileInfo after, root.Stat(path));
    response.set_size_bytes(after.size);
    return response;
  };
  absl::StatusOr<v1::WriteFileResponse> response = write();
  if (record) {
    entry->FinishAction(header.action_id(), record, response.status(),
                        response.ok() ? response->SerializeAsString() : "",
                        options_.max_actions_per_sandbox);
  }
  return response;
}

absl::Status SandboxManager::ReadFile(const v1::ReadFileRequest& request,
                                      const ReadEmitter& emit) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry,
                   AuthorizeRunning(request.sandbox_id(), request.token()));
  ASSIGN_OR_RETURN(std::string path,
                   ResolveSandboxPath(entry->spec.workdir(), request.path()));
  if (request.offset_bytes() < 0 || request.limit_bytes() < 0) {
    return absl::InvalidArgumentError(
        "offset_bytes and limit_bytes must not be negative");
  }
  std::shared_ptr<sandbox::Sandbox> sb = entry->Get();
  if (sb == nullptr) return absl::FailedPreconditionError("sandbox is gone");
  ASSIGN_OR_RETURN(std::unique_ptr<sandbox::SafeRoot> files, sb->OpenFiles());
  ASSIGN_OR_RETURN(sandbox::FileInfo info, files->Stat(path));
  if (info.type != sandbox::FileType::kRegular) {
    return absl::FailedPreconditionError(
        absl::StrCat(request.path(), " is not a regular file"));
  }
  ASSIGN_OR_RETURN(UniqueFd fd, files->OpenForRead(path));
  struct stat st;
  if (fstat(fd.get(), &st) != 0) {
    return dsec::ErrnoToStatus(errno, "fstat");
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(request.path(), " is not a regular file"));
  }
  info.size = st.st_size;
  if (request.offset_bytes() > st.st_size) {
    return absl::OutOfRangeError(absl::StrCat("offset ", request.offset_bytes(),
                                              " beyond the end (", st.st_size,
                                              " bytes)"));
  }
  int64_t end = st.st_size;
  if (request.limit_bytes() > 0) {
    end =
        std::min<int64_t>(end, request.offset_bytes() + request.limit_bytes());
  }
  v1::ReadFileResponse first;
  *first.mutable_info() = ToProtoFileInfo(info, path);
  int64_t offset = request.offset_bytes();
  first.set_offset(offset);
  std::string buf;
  bool sent_first = false;
  while (offset < end || !sent_first) {
    const size_t want =
        static_cast<size_t>(std::min<int64_t>(kChunkBytes, end - offset));
    buf.resize(want);
    size_t got = 0;
    while (got < want) {
      ssize_t n = pread(fd.get(), buf.data() + got, want - got, offset + got);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return dsec::ErrnoToStatus(errno, "read");
      if (n == 0) break;  // file shrank
      got += static_cast<size_t>(n);
    }
    buf.resize(got);
    v1::ReadFileResponse msg = sent_first ? v1::ReadFileResponse() : first;
    msg.set_offset(offset);
    msg.set_data(buf);
    if (!emit(msg)) return absl::CancelledError("reader went away");
    sent_first = true;
    offset += static_cast<int64_t>(got);
    if (got < want) break;
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::ListFilesResponse> SandboxManager::ListFiles(
    const v1::ListFilesRequest& request) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry,
                   AuthorizeRunning(request.sandbox_id(), request.token()));
  ASSIGN_OR_RETURN(std::string path,
                   ResolveSandboxPath(entry->spec.workdir(), request.path()));
  if (request.page_size() < 0) {
    return absl::InvalidArgumentError("page_size must not be negative");
  }
  const int page_size =
      request.page_size() == 0 ? 1000 : std::min(request.page_size(), 10000);
  const std::string listing_key =
      Fingerprint("list", request, absl::StrCat(path, request.recursive()))
          .substr(0, 16);
  size_t start = 0;
  if (!request.page_token().empty()) {
    std::pair<std::string, std::string> parts =
        absl::StrSplit(request.page_token(), absl::MaxSplits(':', 1));
    if (parts.first != listing_key || !absl::SimpleAtoi(parts.second, &start)) {
      return absl::InvalidArgumentError("page_token is from another listing");
    }
  }
  std::shared_ptr<sandbox::Sandbox> sb = entry->Get();
  if (sb == nullptr) return absl::FailedPreconditionError("sandbox is gone");
  ASSIGN_OR_RETURN(std::unique_ptr<sandbox::SafeRoot> files, sb->OpenFiles());
  ASSIGN_OR_RETURN(sandbox::FileInfo top, files->Stat(path));
  if (top.type != sandbox::FileType::kDirectory) {
    return absl::FailedPreconditionError(
        absl::StrCat(request.path(), " is not a directory"));
  }
  std::vector<v1::FileInfo> all;
  std::vector<std::string> dirs = {path};
  while (!dirs.empty() && all.size() < kMaxListEntries) {
    std::string dir = dirs.back();
    dirs.pop_back();
    absl::StatusOr<std::vector<sandbox::FileInfo>> entries = files->List(dir);
    if (!entries.ok()) {
      if (dir == path) return entries.status();
      continue;  // vanished or unreadable below the top: skip
    }
    const std::string prefix = dir == "/" ? "/" : dir + "/";
    for (const sandbox::FileInfo& e : *entries) {
      const std::string child = prefix + e.name;
      all.push_back(ToProtoFileInfo(e, child));
      if (request.recursive() && e.type == sandbox::FileType::kDirectory) {
        dirs.push_back(child);
      }
    }
  }
  std::sort(all.begin(), all.end(),
            [](const v1::FileInfo& a, const v1::FileInfo& b) {
              return a.path() < b.path();
            });
  v1::ListFilesResponse response;
  const size_t end = std::min(all.size(), start + page_size);
  for (size_t i = start; i < end; ++i) *response.add_entries() = all[i];
  if (end < all.size()) {
    response.set_next_page_token(absl::StrCat(listing_key, ":", end));
  }
  return response;
}

absl::StatusOr<v1::FileInfo> SandboxManager::StatFile(
    const v1::StatFileRequest& request) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry,
                   AuthorizeRunning(request.sandbox_id(), request.token()));
  ASSIGN_OR_RETURN(std::string path,
                   ResolveSandboxPath(entry->spec.workdir(), request.path()));
  std::shared_ptr<sandbox::Sandbox> sb = entry->Get();
  if (sb == nullptr) return absl::FailedPreconditionError("sandbox is gone");
  ASSIGN_OR_RETURN(std::unique_ptr<sandbox::SafeRoot> files, sb->OpenFiles());
  ASSIGN_OR_RETURN(sandbox::FileInfo info, files->Stat(path));
  if (request.follow_symlinks() && info.type == sandbox::FileType::kSymlink) {
    ASSIGN_OR_RETURN(UniqueFd fd, files->OpenForRead(path));
    struct stat st;
    if (fstat(fd.get(), &st) != 0) return dsec::ErrnoToStatus(errno, "fstat");
    info.symlink_target.clear();
    info.size = st.st_size;
    info.mode = st.st_mode & 07777;
    info.mtime_ns = st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    info.type = S_ISREG(st.st_mode)   ? sandbox::FileType::kRegular
                : S_ISDIR(st.st_mode) ? sandbox::FileType::kDirectory
                                      : sandbox::FileType::kOther;
  }
  return ToProtoFileInfo(info, path);
}

absl::StatusOr<v1::DeleteFileResponse> SandboxManager::DeleteFile(
    const v1::DeleteFileRequest& request) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry,
                   AuthorizeRunning(request.sandbox_id(), request.token()));
  ASSIGN_OR_RETURN(std::string path,
                   ResolveSandboxPath(entry->spec.workdir(), request.path()));
  if (std::all_of(path.begin(), path.end(), [](char c) { return c == '/'; })) {
    return absl::FailedPreconditionError("refusing to delete /");
  }
  std::shared_ptr<sandbox::Sandbox> sb = entry->Get();
  if (sb == nullptr) return absl::FailedPreconditionError("sandbox is gone");
  ASSIGN_OR_RETURN(std::unique_ptr<sandbox::SafeRoot> files, sb->OpenFiles());
  v1::DeleteFileResponse response;
  absl::StatusOr<sandbox::FileInfo> info = files->Stat(path);
  if (absl::IsNotFound(info.status()) && request.allow_missing()) {
    return response;
  }
  RETURN_IF_ERROR(info.status());
  RETURN_IF_ERROR(files->Delete(path, request.recursive()));
  response.set_deleted(true);
  return response;
}

absl::StatusOr<v1::ParkResponse> SandboxManager::Park(
    const v1::ParkRequest& request) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry,
                   Authorize(request.sandbox_id(), request.token(), true));
  std::shared_ptr<sandbox::Sandbox> sb;
  {
    absl::MutexLock lock(&entry->mu);
    v1::ParkResponse response;
    response.set_state(v1::SANDBOX_STATE_PARKED);
    if (entry->state == v1::SANDBOX_STATE_PARKED) return response;
    if (entry->inflight > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(entry->inflight, " execs in flight; wait or Signal"));
    }
    entry->state = v1::SANDBOX_STATE_PARKED;
    sb = entry->sb;
  }
  absl::Status status = sb->Park();
  absl::MutexLock lock(&entry->mu);
  if (!status.ok()) {
    if (entry->state == v1::SANDBOX_STATE_PARKED) {
      entry->state = v1::SANDBOX_STATE_RUNNING;
    }
    return status;
  }
  v1::ParkResponse response;
  response.set_state(entry->state);
  return response;
}

absl::StatusOr<v1::UnparkResponse> SandboxManager::Unpark(
    const v1::UnparkRequest& request) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry,
                   Authorize(request.sandbox_id(), request.token(), true));
  std::shared_ptr<sandbox::Sandbox> sb = entry->Get();
  RETURN_IF_ERROR(sb->Unpark());
  absl::MutexLock lock(&entry->mu);
  if (entry->state == v1::SANDBOX_STATE_PARKED) {
    entry->state = v1::SANDBOX_STATE_RUNNING;
  }
  entry->last_activity = absl::Now();
  v1::UnparkResponse response;
  response.set_state(entry->state);
  return response;
}

absl::StatusOr<v1::SnapshotResponse> SandboxManager::Snapshot(
    const v1::SnapshotRequest& request) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry,
                   Authorize(request.sandbox_id(), request.token(), true));
  std::shared_ptr<sandbox::Sandbox> sb = entry->Get();
  ASSIGN_OR_RETURN(std::vector<std::string> layers, sb->Snapshot());
  v1::Snapshot snap;
  snap.set_id(absl::StrCat("snap-", RandomHex(8)));
  snap.set_sandbox_id(entry->id);
  snap.set_job_id(entry->job_id);
  snap.set_layer_ref(layers.empty() ? "" : layers.front());
  for (const std::string& layer : layers) snap.add_layers(layer);
  snap.set_size_bytes(layers.empty() ? 0 : DirBytes(layers.front()));
  *snap.mutable_create_time() = ToProtoTime(absl::Now());
  // Written back to dsec-fs (the sandbox already runs again) so forks can
  // land on any node; on failure the snapshot stays node-local.
  if (snapshot_store_ != nullptr) {
    absl::StatusOr<std::string> fs_path =
        snapshot_store_->Export(snap.id(), layers);
    if (fs_path.ok()) {
      snap.set_fs_path(*fs_path);
    } else {
      DSEC_LOG_WARN("snapshot {} stays on this node: {}", snap.id(),
                    fs_path.status().ToString());
    }
  }
  {
    absl::MutexLock lock(&mu_);
    snapshots_[snap.id()] = SnapshotRecord{snap, entry->spec};
  }
  v1::SnapshotResponse response;
  *response.mutable_snapshot() = std::move(snap);
  return response;
}

absl::StatusOr<v1::ForkResponse> SandboxManager::Fork(
    const v1::ForkRequest& request, absl::string_view agent_endpoint) {
  if (!options_.standalone) {
    return absl::FailedPreconditionError(
        "Fork on the agent needs controller admission, which this agent does "
        "not implement yet; use Sandboxes.ForkSandbox on the controller");
  }
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry,
                   Authorize(request.sandbox_id(), request.token(), true));
  ASSIGN_OR_RETURN(TokenClaims claims,
                   signer_->VerifyFor(request.token(), request.sandbox_id()));
  if (request.count() < 1 || request.count() > kMaxForkCount) {
    return absl::InvalidArgumentError("count must be 1..256");
  }
  std::shared_ptr<ActionRecord> record;
  if (!request.action_id().empty()) {
    v1::ForkRequest key = request;
    key.clear_token();
    ASSIGN_OR_RETURN(auto begun, entry->BeginAction(request.action_id(),
                                                    Fingerprint("fork", key)));
    if (!begun.second) {
      RETURN_IF_ERROR(AwaitAction(*begun.first, nullptr));
      v1::ForkResponse recorded;
      recorded.ParseFromString(begun.first->response);
      return recorded;
    }
    record = begun.first;
  }
  auto fork = [&]() -> absl::StatusOr<v1::ForkResponse> {
    v1::ForkResponse response;
    if (!request.snapshot_id().empty()) {
      absl::MutexLock lock(&mu_);
      auto it = snapshots_.find(request.snapshot_id());
      if (it == snapshots_.end() ||
          it->second.snapshot.job_id() != entry->job_id) {
        return absl::NotFoundError(
            absl::StrCat("snapshot ", request.snapshot_id(), " not found"));
      }
      *response.mutable_snapshot() = it->second.snapshot;
    } else {
      v1::SnapshotRequest snap_request;
      snap_request.set_sandbox_id(request.sandbox_id());
      snap_request.set_token(request.token());
      ASSIGN_OR_RETURN(v1::SnapshotResponse snap, Snapshot(snap_request));
      *response.mutable_snapshot() = snap.snapshot();
    }
    v1::SandboxSpec child = entry->spec;
    child.clear_warm_pool_class();
    child.mutable_layers()->CopyFrom(response.snapshot().layers());
    for (const auto& [k, v] : request.labels())
      (*child.mutable_labels())[k] = v;
    {
      absl::MutexLock lock(&mu_);
      RETURN_IF_ERROR(Admit(child, request.count()));
    }
    response.set_group_id(absl::StrCat("grp-", RandomHex(8)));
    std::vector<std::string> started;
    auto undo = [&] {
      v1::StopSandboxesRequest stop;
      for (const std::string& id : started) stop.add_sandbox_ids(id);
      StopSandboxes(stop);
    };
    for (int i = 0; i < request.count(); ++i) {
      const std::string id = absl::StrCat("sb-", RandomHex(8));
      absl::StatusOr<bool> launched =
          Launch(id, entry->job_id, child, entry->expire_time);
      absl::StatusOr<std::string> token =
          launched.ok() ? signer_->Sign({id, claims.job_id, claims.expire_time})
                        : launched.status();
      if (launched.ok()) started.push_back(id);
      if (!token.ok()) {
        undo();
        return token.status();
      }
      v1::SandboxHandle* handle = response.add_handles();
      handle->set_sandbox_id(id);
      handle->set_agent_endpoint(std::string(agent_endpoint));
      handle->set_token(*token);
      *handle->mutable_token_expire_time() = ToProtoTime(claims.expire_time);
      handle->set_node_id(options_.node_id);
    }
    return response;
  };
  absl::StatusOr<v1::ForkResponse> response = fork();
  if (record) {
    entry->FinishAction(request.action_id(), record, response.status(),
                        response.ok() ? response->SerializeAsString() : "",
                        options_.max_actions_per_sandbox);
  }
  return response;
}

namespace {

// Reads a small file to EOF (procfs files report size 0, so SafeRoot's
// size-driven ReadFile returns nothing for them).
absl::StatusOr<std::string> ReadToEnd(const sandbox::SafeRoot& root,
                                      const std::string& path, size_t max) {
  ASSIGN_OR_RETURN(UniqueFd fd, root.OpenForRead(path));
  std::string out;
  char buf[4096];
  while (out.size() < max) {
    ssize_t n = read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return dsec::ErrnoToStatus(errno, "read");
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// Processes in the sandbox (init excluded), read from its own /proc
// through the confined file API.
std::vector<v1::ProcessInfo> SandboxProcesses(const sandbox::SafeRoot& root) {
  std::vector<v1::ProcessInfo> out;
  absl::StatusOr<std::vector<sandbox::FileInfo>> entries = root.List("/proc");
  if (!entries.ok()) return out;
  const long ticks = sysconf(_SC_CLK_TCK);
  const long page = sysconf(_SC_PAGESIZE);
  for (const sandbox::FileInfo& e : *entries) {
    int pid = 0;
    if (!absl::SimpleAtoi(e.name, &pid) || pid <= 1) continue;
    absl::StatusOr<std::string> stat =
        ReadToEnd(root, absl::StrCat("/proc/", pid, "/stat"), 4096);
    if (!stat.ok()) continue;
    // pid (comm) S ppid ...: comm may hold spaces and ')'; split after the
    // last ')'.
    const size_t close = stat->rfind(')');
    if (close == std::string::npos) continue;
    std::vector<absl::string_view> f = absl::StrSplit(
        absl::string_view(*stat).substr(close + 1), ' ', absl::SkipEmpty());
    // f[0] = state (field 3), f[1] = ppid, f[11] utime, f[12] stime,
    // f[21] rss (pages).
    if (f.size() < 22) continue;
    v1::ProcessInfo info;
    info.set_pid(pid);
    info.set_state(std::string(f[0]));
    int ppid = 0;
    (void)absl::SimpleAtoi(f[1], &ppid);
    info.set_ppid(ppid);
    int64_t utime = 0, stime = 0, rss = 0;
    (void)absl::SimpleAtoi(f[11], &utime);
    (void)absl::SimpleAtoi(f[12], &stime);
    (void)absl::SimpleAtoi(f[21], &rss);
    info.set_rss_bytes(rss * page);
    if (ticks > 0) {
      *info.mutable_cpu_time() =
          ToProtoDuration(absl::Milliseconds((utime + stime) * 1000 / ticks));
    }
    absl::StatusOr<std::string> cmdline =
        ReadToEnd(root, absl::StrCat("/proc/", pid, "/cmdline"), 65536);
    if (cmdline.ok()) {
      for (absl::string_view arg :
           absl::StrSplit(*cmdline, '\0', absl::SkipEmpty())) {
        info.add_argv(std::string(arg));
      }
    }
    out.push_back(std::move(info));
  }
  return out;
}

}  // namespace

absl::StatusOr<v1::SignalResponse> SandboxManager::Signal(
    const v1::SignalRequest& request) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry,
                   AuthorizeRunning(request.sandbox_id(), request.token()));
  const int signal = request.signal() == 0 ? SIGTERM : request.signal();
  if (signal < 1 || signal > 64) {
    return absl::InvalidArgumentError("signal must be 1..64");
  }
  std::shared_ptr<sandbox::Sandbox> sb = entry->Get();
  if (sb == nullptr) return absl::FailedPreconditionError("sandbox is gone");
  ASSIGN_OR_RETURN(std::unique_ptr<sandbox::SafeRoot> files, sb->OpenFiles());
  std::vector<v1::ProcessInfo> procs = SandboxProcesses(*files);
  v1::SignalResponse response;
  switch (request.target_case()) {
    case v1::SignalRequest::kPid: {
      const bool exists =
          std::any_of(procs.begin(), procs.end(),
                      [&](const auto& p) { return p.pid() == request.pid(); });
      if (!exists) {
        return absl::NotFoundError(
            absl::StrCat("no process ", request.pid(), " in the sandbox"));
      }
      RETURN_IF_ERROR(sb->Signal(request.pid(), signal));
      response.set_signaled_count(1);
      return response;
    }
    case v1::SignalRequest::kAll:
      if (!request.all()) return absl::InvalidArgumentError("all must be true");
      RETURN_IF_ERROR(sb->Signal(-1, signal));
      response.set_signaled_count(static_cast<int>(procs.size()));
      return response;
    case v1::SignalRequest::kActionId: {
      absl::MutexLock lock(&entry->mu);
      auto it = entry->actions.find(request.action_id());
      if (it == entry->actions.end() || it->second->done.HasBeenNotified()) {
        return absl::NotFoundError(absl::StrCat(
            "no running exec with action_id \"", request.action_id(), "\""));
      }
      // The tree of one exec is found and killed through its cgroup slot
      // (however it forked or re-parented), which only SIGKILLs. Other
      // signals go to a pid (ListProcesses) instead.
      switch (signal) {
        case SIGKILL:
        case SIGTERM:
        case SIGINT:
        case SIGHUP:
        case SIGQUIT:
          break;
        default:
          return absl::InvalidArgumentError(absl::StrCat(
              "signal ", signal,
              " cannot target an exec by action_id: its whole process tree is "
              "killed (SIGKILL, SIGTERM, SIGINT, SIGHUP, SIGQUIT); send other "
              "signals to a pid from ListProcesses"));
      }
      it->second->kill_requested.store(true);
      response.set_signaled_count(1);
      return response;
    }
    default:
      return absl::InvalidArgumentError("set pid, action_id or all");
  }
}

absl::StatusOr<v1::ListProcessesResponse> SandboxManager::ListProcesses(
    const v1::ListProcessesRequest& request) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry,
                   Authorize(request.sandbox_id(), request.token(), true));
  std::shared_ptr<sandbox::Sandbox> sb = entry->Get();
  if (sb == nullptr) return absl::FailedPreconditionError("sandbox is gone");
  // Reads the sandbox's /proc through its root, which init hands over only
  // while thawed: a parked sandbox is refused like the file API.
  ASSIGN_OR_RETURN(std::unique_ptr<sandbox::SafeRoot> files, sb->OpenFiles());
  v1::ListProcessesResponse response;
  for (v1::ProcessInfo& p : SandboxProcesses(*files)) {
    *response.add_processes() = std::move(p);
  }
  return response;
}

}  // namespace dsec::agent
