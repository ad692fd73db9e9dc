// SandboxManager: the node agent's core, with no gRPC in it. It owns the
// node's sandboxes (cold-created or claimed from warm pools), admits starts
// against the node's capacity, authenticates every data-path call by
// sandbox token, runs execs and file calls with per-sandbox idempotency
// records, and reaps sandboxes whose ttl or idle_ttl has passed. The gRPC
// services in agent_server.cc adapt to it one call each.
//
// Thread-safety: every method is thread-safe; execs and file calls on the
// same or different sandboxes run concurrently on the callers' threads.
// Ownership: the manager owns the sandbox Runtime, the warm pools and every
// sandbox; a call in flight holds a shared_ptr to its sandbox, so a
// sandbox stopped meanwhile is destroyed (processes killed) at once and
// freed when the last call returns.
#ifndef DSEC_AGENT_SANDBOX_MANAGER_H_
#define DSEC_AGENT_SANDBOX_MANAGER_H_

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/convert.h"
#include "agent/image_warmer.h"
#include "agent/snapshot_store.h"
#include "common/metrics.h"
#include "common/token.h"
#include "dsec/v1/agent_service.pb.h"
#include "dsec/v1/node_service.pb.h"
#include "sandbox/sandbox.h"
#include "sandbox/warm_pool.h"

namespace dsec::agent {

// A warm pool: `size` sandboxes of `spec` kept ready under `name`.
struct WarmPoolClass {
  std::string name;
  v1::SandboxSpec spec;
  int size = 4;
};

struct ManagerOptions {
  sandbox::RuntimeOptions runtime;
  std::string node_id;  // put in fork handles
  std::string token_secret;
  // 0 or negative: no cap of that kind.
  int max_sandboxes = 0;
  int64_t cpu_millicores = 0;
  int64_t memory_bytes = 0;
  std::vector<WarmPoolClass> warm_pools;
  // Empty layers_root: the runtime's sealed-layer dir (snapshots).
  RequestLimits request_limits;
  // Largest file WriteFile takes (uploads are staged in memory before they
  // touch the sandbox, so a cancelled upload writes nothing).
  int64_t max_write_file_bytes = 256LL << 20;
  // Concurrent execs per sandbox; more: RESOURCE_EXHAUSTED.
  int max_concurrent_execs = 64;
  // Idempotency records kept per sandbox (oldest finished ones dropped).
  int max_actions_per_sandbox = 4096;
  // When false, Fork needs controller admission and is refused.
  bool standalone = true;
  // Registry for the agent's metrics. REQUIRES: outlives the manager.
  metrics::Registry* metrics = nullptr;
};

// Called with each event of a stream; false when the receiver is gone (the
// call keeps going where the contract says so).
using ExecEmitter = std::function<bool(const v1::ExecEvent&)>;
using ReadEmitter = std::function<bool(const v1::ReadFileResponse&)>;

class SandboxManager {
 public:
  static absl::StatusOr<std::unique_ptr<SandboxManager>> Create(
      const ManagerOptions& options);
  ~SandboxManager();  // Shutdown()
  SandboxManager(const SandboxManager&) = delete;
  SandboxManager& operator=(const SandboxManager&) = delete;

  // ---- NodeAgent --------------------------------------------------------
  absl::StatusOr<v1::StartSandboxResponse> StartSandbox(
      const v1::StartSandboxRequest& request);
  v1::StopSandboxesResponse StopSandboxes(
      const v1::StopSandboxesRequest& request);
  v1::ListNodeSandboxesResponse ListSandboxes() const;

  // ---- SandboxRuntime ---------------------------------------------------
  // Non-OK: the command did not start. `cancelled` is polled while waiting
  // for an in-flight repeat.
  absl::Status Exec(const v1::ExecRequest& request, const ExecEmitter& emit,
                    const std::function<bool()>& cancelled);
  // Checks the header's token and sandbox before data is accepted.
  absl::Status AuthorizeWrite(const v1::WriteFileHeader& header);
  absl::StatusOr<v1::WriteFileResponse> WriteFile(
      const v1::WriteFileHeader& header, const std::string& data);
  absl::Status ReadFile(const v1::ReadFileRequest& request,
                        const ReadEmitter& emit);
  absl::StatusOr<v1::ListFilesResponse> ListFiles(
      const v1::ListFilesRequest& request);
  absl::StatusOr<v1::FileInfo> StatFile(const v1::StatFileRequest& request);
  absl::StatusOr<v1::DeleteFileResponse> DeleteFile(
      const v1::DeleteFileRequest& request);
  absl::StatusOr<v1::ParkResponse> Park(const v1::ParkRequest& request);
  absl::StatusOr<v1::UnparkResponse> Unpark(const v1::UnparkRequest& request);
  absl::StatusOr<v1::SnapshotResponse> Snapshot(
      const v1::SnapshotRequest& request);
  absl::StatusOr<v1::ForkResponse> Fork(const v1::ForkRequest& request,
                                        absl::string_view agent_endpoint);
  absl::StatusOr<v1::SignalResponse> Signal(const v1::SignalRequest& request);
  absl::StatusOr<v1::ListProcessesResponse> ListProcesses(
      const v1::ListProcessesRequest& request);

  // ---- node ---------------------------------------------------------------
  // Load and a full report of every sandbox, for Heartbeat.
  v1::HeartbeatRequest HeartbeatReport() const;
  std::vector<std::string> WarmPoolClasses() const;
  // Draining: StartSandbox answers FAILED_PRECONDITION.
  void SetDraining(bool draining);
  // Destroys sandboxes past their ttl or idle_ttl as of `now`, and those
  // whose init died; returns how many. Called by the agent's reaper thread.
  int Reap(absl::Time now);
  // Refreshes the sandboxes-by-state gauge.
  void UpdateGauges() const;
  // Snapshots the controller deleted: queued here (cheap, from the heartbeat
  // thread), removed from dsec-fs and from this node's layer cache by
  // CollectDeletedSnapshots (the reaper thread). Best effort.
  void DeleteSnapshots(const std::vector<std::string>& ids);
  // Returns how many dsec-fs snapshot directories it removed.
  int CollectDeletedSnapshots();
  // Destroys every sandbox and warm pool. Idempotent.
  void Shutdown();

  sandbox::Runtime& runtime() { return *runtime_; }

  struct Entry;  // one sandbox (internal)

 private:
  explicit SandboxManager(ManagerOptions options);
  absl::Status Init();

  // Verifies the token and finds the sandbox; marks activity when `touch`.
  absl::StatusOr<std::shared_ptr<Entry>> Authorize(absl::string_view id,
                                                   absl::string_view token,
                                                   bool touch);
  // Like Authorize, then FAILED_PRECONDITION unless RUNNING.
  absl::StatusOr<std::shared_ptr<Entry>> AuthorizeRunning(
      absl::string_view id, absl::string_view token);
  // Creates (or claims) a sandbox for `spec` and inserts it as `id`.
  absl::StatusOr<bool> Launch(const std::string& id, const std::string& job_id,
                              const v1::SandboxSpec& spec,
                              absl::Time expire_time);
  absl::Status Admit(const v1::SandboxSpec& spec, int count) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Destroy(const std::shared_ptr<Entry>& entry, absl::string_view reason);

  const ManagerOptions options_;
  RequestLimits request_limits_;  // options_' with layers_root filled in
  std::unique_ptr<TokenSigner> signer_;
  std::unique_ptr<sandbox::Runtime> runtime_;
  std::map<std::string, std::unique_ptr<sandbox::WarmPool>> pools_;
  std::map<std::string, v1::SandboxSpec> pool_specs_;

  ImageWarmer image_warmer_;
  // Snapshots on dsec-fs; null without an fs mount (snapshots node-local).
  std::unique_ptr<SnapshotStore> snapshot_store_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> sandboxes_ ABSL_GUARDED_BY(mu_);
  struct SnapshotRecord {
    v1::Snapshot snapshot;
    v1::SandboxSpec spec;  // of the parent
  };
  std::map<std::string, SnapshotRecord> snapshots_ ABSL_GUARDED_BY(mu_);
  // Deleted snapshots still to remove from dsec-fs, from the layer cache
  // (once no sandbox here uses it), and the latest ones done (not redone
  // when the controller repeats them).
  std::set<std::string> fs_deletes_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> cache_deletes_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> deleted_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> deleted_order_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  int launching_ ABSL_GUARDED_BY(mu_) = 0;  // Launch calls past admission

  struct Metrics;
  std::unique_ptr<Metrics> metrics_;
};

}  // namespace dsec::agent

#endif  // DSEC_AGENT_SANDBOX_MANAGER_H_
