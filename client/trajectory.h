// A preemption-safe trajectory: a SandboxIo whose every call is a logged
// step (DSec's fast-forward replay).
//
//   ASSIGN_OR_RETURN(auto t, Trajectory::Open(client, {
//       .log_path = "/mnt/dsec-fs/logs/traj-17.dtl",
//       .trajectory_id = "traj-17", .spec = spec}));
//   t->Run(Command::Shell("pip install -e ."));   // step 0
//   t->WriteFile("/root/fix.py", patch);          // step 1
//   t->Run(Command::Shell("pytest -q"));          // step 2
//
// - Resume: a rollout restarted after preemption opens the same log and
//   issues the same actions again. Steps already in the log return their
//   recorded results at once (ExecOutcome.replayed = true) without touching
//   the sandbox; the first step past the log runs live, in the same sandbox
//   if it still exists. A step that ran but was not yet logged when the
//   process died is not run twice: it is re-issued under the same action id
//   (<trajectory_id>/<step>), and the agent returns its recorded result.
// - Node loss: when the sandbox is LOST (or unreachable and then declared
//   lost by the controller), the trajectory recreates it — from the newest
//   snapshot taken by Snapshot(), else the base snapshot, else the spec —
//   re-runs the logged mutating steps after that snapshot, logs that a
//   rebuild happened, and carries on with the step that failed. The caller
//   sees one uninterrupted trajectory.
// - Determinism: the log pins the order of actions. A resumed rollout that
//   issues a different action at a logged step gets FAILED_PRECONDITION
//   ("diverged at step N"). Calls are serialized; issue parallel tool calls
//   in a fixed order.
// - Errors: infrastructure failures that survive the retries and rebuilds
//   are returned and not logged (re-issuing the step later is fine);
//   outcomes and deterministic file errors (NOT_FOUND, is a directory) are
//   logged and replayed like any result.
//
// Thread-safe (calls are serialized).
#ifndef DSEC_CLIENT_TRAJECTORY_H_
#define DSEC_CLIENT_TRAJECTORY_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "client/sandbox_io.h"
#include "client/trajectory_log.h"

namespace dsec::client {

struct TrajectoryOptions {
  // The log file (created if missing). Local, or on dsec-fs to resume on
  // another machine.
  std::string log_path;
  // 1..64 bytes of [A-Za-z0-9._-]; part of every action id. Must match the
  // id in an existing log.
  std::string trajectory_id;
  // Spec of the sandbox to create (and to recreate on loss).
  dsec::v1::SandboxSpec spec;
  // Start from (and rebuild from) this snapshot instead of `spec` alone.
  std::string base_snapshot_id;
  // Start in this existing sandbox (e.g. a member of a forked group). Its
  // state must equal base_snapshot_id (or a fresh `spec`) for rebuilds to
  // be exact.
  std::string sandbox_id;
  // fsync every record (survive machine crashes, not just process death).
  bool sync = false;
  // How long to wait for the controller to declare an unreachable sandbox
  // lost (its heartbeat timeout) before giving up on the step.
  absl::Duration lost_wait = absl::Seconds(60);
  int max_rebuilds = 3;
};

class Trajectory : public SandboxIo {
 public:
  static absl::StatusOr<std::unique_ptr<Trajectory>> Open(
      std::shared_ptr<Client> client, TrajectoryOptions options);

  // A mutating step (re-run on rebuild).
  absl::StatusOr<ExecOutcome> Run(const Command& command) override;
  // A step that does not change the sandbox (not re-run on rebuild).
  absl::StatusOr<ExecOutcome> RunReadOnly(const Command& command);
  absl::Status WriteFile(absl::string_view path, absl::string_view data,
                         uint32_t mode = 0644) override;
  absl::StatusOr<std::string> ReadFile(absl::string_view path,
                                       int64_t max_bytes,
                                       bool* truncated = nullptr) override;
  // Snapshots the sandbox (a step); rebuilds start from the newest one.
  absl::StatusOr<std::string> Snapshot();

  // Index of the next step.
  int64_t next_step() const;
  // Steps in the log (the fast-forward horizon when opened).
  int64_t logged_steps() const;
  // Rebuilds over the whole trajectory, across restarts.
  int rebuilds() const;
  // Id of the sandbox in use ("" before the first live step).
  std::string sandbox_id() const;

  // Deletes the sandbox. The log stays (it is the trajectory's record).
  absl::Status Close();

 private:
  Trajectory(std::shared_ptr<Client> client, TrajectoryOptions options,
             std::unique_ptr<TrajectoryLog> log);
  absl::Status Load();
  absl::StatusOr<ExecOutcome> RunStep(const Command& command, bool mutating);

  // Runs one step: fast-forward from the log, or live with recovery.
  // *from_log: the result came from the log (fast-forward).
  absl::StatusOr<dsec::v1::TrajectoryStep> Step(dsec::v1::TrajectoryStep step,
                                                bool* from_log)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Applies an action to the live sandbox. OK with a recorded result, or a
  // non-OK infrastructure status.
  absl::StatusOr<dsec::v1::TrajectoryStep> Apply(dsec::v1::TrajectoryStep step)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status EnsureSandbox() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // True when the sandbox turned out lost (waits up to lost_wait).
  bool WaitUntilLost(const absl::Status& failure)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Rebuild(const std::string& reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Attach(const std::shared_ptr<Sandbox>& sandbox,
                      dsec::v1::TrajectoryAttach record)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::shared_ptr<Client> client_;
  const TrajectoryOptions options_;
  mutable absl::Mutex mu_;
  std::unique_ptr<TrajectoryLog> log_ ABSL_GUARDED_BY(mu_);
  std::vector<dsec::v1::TrajectoryStep> steps_ ABSL_GUARDED_BY(mu_);
  int64_t next_step_ ABSL_GUARDED_BY(mu_) = 0;
  int rebuilds_ ABSL_GUARDED_BY(mu_) = 0;
  // Sandbox id from the newest attach record ("" if none).
  std::string attached_id_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Sandbox> sandbox_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dsec::client

#endif  // DSEC_CLIENT_TRAJECTORY_H_
