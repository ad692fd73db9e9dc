// The C++ client for rollout workers.
//
//   ASSIGN_OR_RETURN(auto client, Client::Create({.controller =
//   "127.0.0.1:7070",
//                                                 .api_key = key}));
//   ASSIGN_OR_RETURN(auto group, client->CreateGroup(spec, 64));
//   std::vector<absl::StatusOr<ExecOutcome>> r =
//       group.RunAll(Command::Shell("python3 solution.py"));
//   group.Delete();
//
// Lifecycle calls (create, get, delete, snapshot, fork) go to the
// controller; exec and file calls go straight to the owning agent with the
// sandbox's token. One channel per agent endpoint is shared by every
// sandbox on it.
//
// Errors (see sandbox_io.h): an ExecOutcome is what the program did; a
// non-OK Status is an infrastructure failure. IsSandboxLost(status) tells
// the one infrastructure failure that replay recovers from (the node died
// and the sandbox's contents are gone).
//
// Retries: calls that are safe to repeat (reads, deletes, token renewal,
// and execs/writes, which always carry an action id — generated when the
// caller gives none) are retried on UNAVAILABLE with jittered exponential
// backoff until their deadline; an expired token is renewed once. Creates
// are retried with a request id, so a retry never creates twice.
//
// Threads: blocking calls run on the caller's thread; RunAsync uses gRPC's
// callback API, so any number of concurrent execs costs no thread per
// exec. Client, Sandbox and SandboxGroup are thread-safe. A Sandbox keeps
// its Client alive.
#ifndef DSEC_CLIENT_CLIENT_H_
#define DSEC_CLIENT_CLIENT_H_

#include <functional>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/sandbox_io.h"
#include "dsec/v1/sandbox_service.pb.h"
#include "dsec/v1/types.pb.h"

namespace grpc {
class ChannelCredentials;
}

namespace dsec::client {

struct ClientOptions {
  // host:port of the controller.
  std::string controller = "127.0.0.1:7070";
  // Job API key (or the admin key with `job_id` set).
  std::string api_key;
  // Job of every sandbox created; empty: the API key's job.
  std::string job_id;
  // From MakeChannelCredentials (common/tls.h); null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Deadline of each lifecycle and file call (creates queue until it).
  absl::Duration call_timeout = absl::Seconds(60);
  // Exec deadline beyond the command's own timeout (transfer, queueing).
  absl::Duration exec_slack = absl::Seconds(30);
  // Backoff between retries of UNAVAILABLE.
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(2);
  // Retries stop at the call's deadline or after this many attempts.
  int max_attempts = 8;
};

// True when `status` says the sandbox is gone for good because its node
// died or it was torn down (LOST, TERMINATED, FAILED or unknown to the
// controller): recreate it and replay.
bool IsSandboxLost(const absl::Status& status);

class Client;

// How an exec's output is delivered while it runs (stream 1 = stdout,
// 2 = stderr). Called on a gRPC thread; must not block.
using OutputFn = std::function<void(int stream, absl::string_view data)>;

class Sandbox : public SandboxIo, public std::enable_shared_from_this<Sandbox> {
 public:
  const std::string& id() const { return id_; }
  std::string agent_endpoint() const;
  std::string node_id() const;

  // SandboxIo. Run is blocking; it retries UNAVAILABLE under the same
  // action id (generated when command.action_id is empty).
  absl::StatusOr<ExecOutcome> Run(const Command& command) override;
  absl::Status WriteFile(absl::string_view path, absl::string_view data,
                         uint32_t mode = 0644) override;
  absl::StatusOr<std::string> ReadFile(absl::string_view path,
                                       int64_t max_bytes,
                                       bool* truncated = nullptr) override;

  // Runs with output streamed to `on_output` as it is produced.
  absl::StatusOr<ExecOutcome> RunStreaming(const Command& command,
                                           OutputFn on_output);
  // Starts an exec and returns at once; `done` is called exactly once, on a
  // gRPC or retry thread (it must not block for long).
  void RunAsync(const Command& command,
                std::function<void(absl::StatusOr<ExecOutcome>)> done,
                OutputFn on_output = nullptr);
  std::future<absl::StatusOr<ExecOutcome>> RunFuture(const Command& command);

  // Like WriteFile, with an idempotency key: a repeat writes nothing.
  absl::Status WriteFileWithActionId(absl::string_view path,
                                     absl::string_view data, uint32_t mode,
                                     absl::string_view action_id);
  struct FileEntry {
    std::string path;
    bool is_dir = false;
    bool is_symlink = false;
    int64_t size_bytes = 0;
    uint32_t mode = 0;
  };
  absl::StatusOr<std::vector<FileEntry>> ListFiles(absl::string_view path,
                                                   bool recursive = false);
  absl::StatusOr<FileEntry> StatFile(absl::string_view path);
  absl::Status DeleteFile(absl::string_view path, bool recursive = false);

  absl::Status Park();
  absl::Status Unpark();
  // Seals the writable layer; returns the snapshot's id.
  absl::StatusOr<std::string> Snapshot();
  // Signals every process of the sandbox but init (e.g. to stop daemons).
  absl::Status SignalAll(int signal);
  // Terminates the sandbox (idempotent). The handle is useless afterwards.
  absl::Status Delete();

  // The controller's view (state, reason, node).
  absl::StatusOr<dsec::v1::Sandbox> Describe();

  // Internal: built by Client.
  Sandbox(std::shared_ptr<Client> client, const dsec::v1::SandboxHandle& h);

 private:
  friend class Client;
  friend class ExecCall;
  friend class SandboxGroup;
  dsec::v1::SandboxHandle handle() const;
  // Asks the controller for a fresh token (after UNAUTHENTICATED).
  absl::Status RenewToken();
  // Turns a failed agent call into the status callers see: LOST when the
  // controller says the sandbox is gone.
  absl::Status Classify(absl::Status status);

  std::shared_ptr<Client> client_;
  const std::string id_;
  mutable absl::Mutex mu_;
  dsec::v1::SandboxHandle handle_ ABSL_GUARDED_BY(mu_);
};

// The sandboxes of one create or fork call (a GRPO group).
class SandboxGroup {
 public:
  SandboxGroup() = default;
  SandboxGroup(std::string group_id,
               std::vector<std::shared_ptr<Sandbox>> members)
      : group_id_(std::move(group_id)), members_(std::move(members)) {}

  const std::string& group_id() const { return group_id_; }
  size_t size() const { return members_.size(); }
  const std::shared_ptr<Sandbox>& operator[](size_t i) const {
    return members_[i];
  }
  const std::vector<std::shared_ptr<Sandbox>>& members() const {
    return members_;
  }

  // Runs `command` on every member concurrently; results in member order.
  std::vector<absl::StatusOr<ExecOutcome>> RunAll(const Command& command);
  // Runs commands[i] on member i. REQUIRES: commands.size() == size().
  std::vector<absl::StatusOr<ExecOutcome>> RunEach(
      const std::vector<Command>& commands);
  // Deletes every member in one controller call.
  absl::Status Delete();

 private:
  std::string group_id_;
  std::vector<std::shared_ptr<Sandbox>> members_;
};

struct CreateOptions {
  // Idempotency key of the create (generated when empty, so retries never
  // create twice).
  std::string request_id;
  // Smallest acceptable group (0: all or nothing).
  int min_count = 0;
  dsec::v1::GroupSpread spread = dsec::v1::GROUP_SPREAD_SPREAD;
  int max_per_node = 0;
  // How long to wait for capacity; zero: the call deadline.
  absl::Duration queue_timeout = absl::ZeroDuration();
  // Labels added to a fork's children.
  std::map<std::string, std::string> labels;
};

class Client : public std::enable_shared_from_this<Client> {
 public:
  static absl::StatusOr<std::shared_ptr<Client>> Create(
      const ClientOptions& options);
  ~Client();

  absl::StatusOr<std::shared_ptr<Sandbox>> CreateSandbox(
      const dsec::v1::SandboxSpec& spec, const CreateOptions& options = {});
  absl::StatusOr<SandboxGroup> CreateGroup(const dsec::v1::SandboxSpec& spec,
                                           int count,
                                           const CreateOptions& options = {});
  // Forks `count` sandboxes from a snapshot (spread per options).
  absl::StatusOr<SandboxGroup> ForkSnapshot(absl::string_view snapshot_id,
                                            int count,
                                            const CreateOptions& options = {});
  // Snapshots `source` and forks it `count` ways.
  absl::StatusOr<SandboxGroup> Fork(const Sandbox& source, int count,
                                    const CreateOptions& options = {});
  // A handle for an existing sandbox (e.g. after a restart): fetches a
  // fresh token. NOT_FOUND / lost when it no longer runs.
  absl::StatusOr<std::shared_ptr<Sandbox>> Attach(absl::string_view id);
  absl::StatusOr<dsec::v1::Sandbox> GetSandbox(absl::string_view id);
  // Deletes in batches of 1000; unknown ids are not an error.
  absl::Status DeleteSandboxes(const std::vector<std::string>& ids);
  absl::Status DeleteSnapshot(absl::string_view snapshot_id);
  // Renews the job's lease (trainers call this periodically).
  absl::Status RenewLease();

  const ClientOptions& options() const { return options_; }

  struct Impl;  // channels, stubs and the retry timer

 private:
  friend class Sandbox;
  friend class ExecCall;
  explicit Client(ClientOptions options);

  ClientOptions options_;
  std::unique_ptr<Impl> impl_;
};

// Creates a job (an RL run) with its own API key. `admin` carries the
// controller address and the admin key (none in local mode).
struct JobInfo {
  std::string job_id;
  std::string api_key;
};
absl::StatusOr<JobInfo> CreateJob(const ClientOptions& admin,
                                  absl::string_view name, int max_sandboxes,
                                  absl::Duration lease_ttl = absl::Hours(1));

}  // namespace dsec::client

#endif  // DSEC_CLIENT_CLIENT_H_
