// The rollout worker's engine: GRPO groups of agentic episodes against a dsec
// cluster, scored by the tasks' hidden tests.
//
//   ASSIGN_OR_RETURN(auto tasks, tasks::LoadTaskSet(tasks::DefaultTaskDir()));
//   ScriptedPolicy policy;
//   ASSIGN_OR_RETURN(RolloutSummary s,
//                    RunRollout(client, tasks, policy, {.group_size = 8,
//                                                       .out_dir = "out"}));
//
// Per task (a group of G episodes):
//   1. set up once: create a sandbox, write the task's starting tree,
//      snapshot it, fork the snapshot G ways (the base sandbox is deleted);
//   2. run each episode: the policy writes a turn (reasoning, content, DSML
//      tool calls); the calls run in the member's sandbox through a
//      Trajectory (client/trajectory.h), whose log makes the episode survive
//      preemption and node loss; the results go back as a tool turn; until
//      the policy answers without a call, or max_steps;
//   3. score it: the task's hidden tests run in the same sandbox
//      (client/reward.h), also as logged steps.
// Episodes run in lock step: every episode waiting for the model goes into
// one Policy::Act call, then all their tool calls run in parallel.
//
// Output (out_dir):
//   episodes.jsonl   one line per finished episode: task, group, actions,
//                    observations, reward and eval state, tokens, routing
//                    metadata (moe), timings
//   summary.json     RolloutSummary::ToJson()
//   manifest.json    the groups set up (snapshot and member sandbox ids)
// Resume: rerun with the same options and resume = true after a preemption
// (process killed, or `stop` set): finished episodes are kept, groups
// already set up are reused, and unfinished episodes fast-forward through
// their trajectory logs (no tool call runs twice) to where they stopped.
//
// Thread-safety: RunRollout uses its own threads; call it from one thread.
#ifndef DSEC_ROLLOUT_WORKER_ROLLOUT_H_
#define DSEC_ROLLOUT_WORKER_ROLLOUT_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "client/client.h"
#include "client/tools.h"
#include "dsec/v1/types.pb.h"
#include "nlohmann/json.hpp"
#include "rollout/tasks/task_set.h"
#include "rollout/worker/policy.h"

namespace dsec::rollout {

struct RolloutOptions {
  int group_size = 4;    // G: episodes per task
  int concurrency = 64;  // episodes in flight (whole groups, at least one)
  int max_steps = 12;    // assistant turns per episode
  std::string out_dir;   // required
  // Trajectory logs (<log_dir>/<episode>.dtl) and generation write-ahead
  // logs. Empty: <out_dir>/logs. Put it on dsec-fs to resume elsewhere.
  std::string log_dir;
  // Sandbox of every episode; workdir defaults to /root.
  dsec::v1::SandboxSpec spec;
  client::ToolBoxOptions tools;
  bool resume = false;
  // Set (e.g. by SIGTERM) to stop after the current turn: RunRollout
  // returns ABORTED and the run can be resumed.
  const std::atomic<bool>* stop = nullptr;
  // Progress lines on stderr.
  bool verbose = false;
};

struct RolloutSummary {
  std::string policy;
  int tasks = 0;
  int group_size = 0;
  int episodes = 0;
  int scored = 0;        // usable rewards
  int infra_failed = 0;  // masked: the cluster, not the policy, failed
  double reward_mean = 0;
  double reward_std = 0;
  double pass_at_1 = 0;  // unbiased estimator, success = reward 1
  double pass_at_k = 0;  // k = group_size
  // Groups whose rewards are not all equal (they carry a GRPO signal).
  double groups_with_signal = 0;
  int64_t turns = 0;
  int64_t actions = 0;  // tool calls executed
  int64_t format_errors = 0;
  int64_t prompt_tokens = 0;
  int64_t prefill_tokens = 0;
  int64_t shared_prefix_tokens = 0;
  int64_t generated_tokens = 0;
  int64_t replayed_steps = 0;  // fast-forwarded from trajectory logs
  int64_t resumed_episodes = 0;
  double wall_s = 0;
  double policy_s = 0;   // in Policy::Act
  double sandbox_s = 0;  // setup, tool calls and scoring
  double actions_per_s() const { return wall_s > 0 ? actions / wall_s : 0; }
  double tokens_per_s() const {
    return policy_s > 0 ? generated_tokens / policy_s : 0;
  }
  double policy_share() const {
    const double t = policy_s + sandbox_s;
    return t > 0 ? policy_s / t : 0;
  }
  nlohmann::json ToJson() const;
  std::string ToText() const;
};

// Unbiased pass@k for n samples with c successes (Chen et al. 2021).
double PassAtK(int n, int c, int k);

absl::StatusOr<RolloutSummary> RunRollout(
    std::shared_ptr<client::Client> client, absl::Span<const tasks::Task> tasks,
    Policy& policy, const RolloutOptions& options);

// The system prompt every episode starts with (tools are added by the chat
// encoding).
std::string SystemPrompt(const dsec::v1::SandboxSpec& spec);

}  // namespace dsec::rollout

#endif  // DSEC_ROLLOUT_WORKER_ROLLOUT_H_
