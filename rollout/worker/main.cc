// dsec-rollout: flags -> tasks, policy and RolloutOptions -> RunRollout ->
// summary. SIGTERM or SIGINT stops after the current turn (exit 3); rerun
// with --resume to continue.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "common/logging.h"
#include "common/rlimit.h"
#include "rollout/policy/model.h"
#include "rollout/tasks/task_set.h"
#include "rollout/worker/moe_policy.h"
#include "rollout/worker/rollout.h"
#include "rollout/worker/scripted_policy.h"

ABSL_FLAG(std::string, controller, "",
          "controller host:port (default $DSEC_CONTROLLER or "
          "127.0.0.1:7070)");
ABSL_FLAG(std::string, api_key, "",
          "job API key (default $DSEC_API_KEY); empty: create a job with the "
          "admin key (local mode)");
ABSL_FLAG(std::string, admin_key, "", "admin key for creating the job");
ABSL_FLAG(std::string, job_name, "",
          "name of the job created (default: rollout-<time>-<pid>)");
ABSL_FLAG(std::string, tasks_dir, "", "task set (default: the shipped one)");
ABSL_FLAG(std::string, tasks, "", "comma-separated task ids (default: all)");
ABSL_FLAG(int, num_tasks, 0,
          "use this many tasks, taken round-robin across languages (0: all)");
ABSL_FLAG(int, group, 4, "episodes per task (GRPO group size)");
ABSL_FLAG(int, concurrency, 64, "episodes in flight");
ABSL_FLAG(int, max_steps, 12, "assistant turns per episode");
ABSL_FLAG(std::string, policy, "scripted", "scripted | moe");
ABSL_FLAG(uint64_t, seed, 1, "policy seed");
ABSL_FLAG(std::string, model, "",
          "moe: weights file (dsec policy format); empty: random weights");
ABSL_FLAG(uint64_t, model_seed, 1, "moe: seed of the random weights");
ABSL_FLAG(int, threads, 2, "moe: inference threads");
ABSL_FLAG(std::string, thinking, "non-think", "moe: non-think | high | max");
ABSL_FLAG(double, temperature, 1.0, "moe: sampling temperature (0: greedy)");
ABSL_FLAG(double, top_p, 0.95, "moe: nucleus sampling");
ABSL_FLAG(int, max_new_tokens, 96, "moe: tokens per turn");
ABSL_FLAG(std::string, out, "", "output directory (required)");
ABSL_FLAG(std::string, log_dir, "",
          "trajectory and generation logs (default: on dsec-fs under "
          "$DSEC_FS_MOUNT/trajectories when set, else <out>/logs); on dsec-fs "
          "a rollout resumes on another machine");
ABSL_FLAG(bool, resume, false, "continue the rollout in --out");
ABSL_FLAG(std::string, image, "", "sandbox image (default: built-in)");
ABSL_FLAG(bool, json, false, "print the summary as JSON");
ABSL_FLAG(bool, verbose, false, "progress on stderr");
ABSL_FLAG(std::string, log_level, "warn", "log level");

namespace {

using dsec::rollout::RolloutSummary;

[[noreturn]] void Die(const std::string& what, const absl::Status& status) {
  fprintf(stderr, "dsec-rollout: %s: %s\n", what.c_str(),
          status.ToString().c_str());
  std::exit(status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1);
}

std::string EnvOr(const char* name, std::string fallback) {
  const char* v = getenv(name);
  return v != nullptr && *v != '\0' ? std::string(v) : fallback;
}

std::vector<dsec::tasks::Task> SelectTasks(std::vector<dsec::tasks::Task> all) {
  const std::string ids = absl::GetFlag(FLAGS_tasks);
  std::vector<dsec::tasks::Task> picked;
  if (!ids.empty()) {
    for (absl::string_view id : absl::StrSplit(ids, ',', absl::SkipEmpty())) {
      auto it = std::find_if(all.begin(), all.end(),
                             [&](const auto& t) { return t.id == id; });
      if (it == all.end()) {
        Die("--tasks", absl::NotFoundError(
                           absl::StrCat("no task '", id, "' in the task set")));
      }
      picked.push_back(*it);
    }
    all = std::move(picked);
    picked.clear();
  }
  const int n = absl::GetFlag(FLAGS_num_tasks);
  if (n <= 0 || n >= static_cast<int>(all.size())) return all;
  // Round-robin across languages, each in id order.
  std::map<std::string, std::vector<dsec::tasks::Task*>> by_language;
  for (auto& t : all) by_language[t.language].push_back(&t);
  for (size_t i = 0; static_cast<int>(picked.size()) < n; ++i) {
    for (auto& [language, list] : by_language) {
      if (i < list.size() && static_cast<int>(picked.size()) < n) {
        picked.push_back(*list[i]);
      }
    }
  }
  return picked;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  (void)dsec::InitLogging({absl::GetFlag(FLAGS_log_level), "rollout"});
  dsec::RaiseOpenFileLimit();

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // threads inherit
  static std::atomic<bool> stop{false};
  std::thread([signals] {
    int sig = 0;
    sigwait(&signals, &sig);
    fprintf(stderr, "dsec-rollout: signal %d: stopping after this turn\n", sig);
    stop = true;
  }).detach();

  if (absl::GetFlag(FLAGS_out).empty()) {
    Die("flags", absl::InvalidArgumentError("--out DIR is required"));
  }
  const std::string tasks_dir = absl::GetFlag(FLAGS_tasks_dir).empty()
                                    ? dsec::tasks::DefaultTaskDir()
                                    : absl::GetFlag(FLAGS_tasks_dir);
  absl::StatusOr<std::vector<dsec::tasks::Task>> all =
      dsec::tasks::LoadTaskSet(tasks_dir);
  if (!all.ok()) Die("task set", all.status());
  const std::vector<dsec::tasks::Task> tasks = SelectTasks(std::move(*all));

  dsec::rollout::RolloutOptions options;
  options.group_size = absl::GetFlag(FLAGS_group);
  options.concurrency = absl::GetFlag(FLAGS_concurrency);
  options.max_steps = absl::GetFlag(FLAGS_max_steps);
  options.out_dir = absl::GetFlag(FLAGS_out);
  options.log_dir = absl::GetFlag(FLAGS_log_dir);
  // Under `dsecctl local up --run`, logs go to dsec-fs.
  if (options.log_dir.empty() && !EnvOr("DSEC_FS_MOUNT", "").empty()) {
    options.log_dir = absl::StrCat(
        EnvOr("DSEC_FS_MOUNT", ""), "/trajectories/",
        std::filesystem::path(options.out_dir).filename().string());
  }
  options.resume = absl::GetFlag(FLAGS_resume);
  options.verbose = absl::GetFlag(FLAGS_verbose);
  options.stop = &stop;
  options.spec.set_image(absl::GetFlag(FLAGS_image));

  // The policy.
  std::unique_ptr<dsec::policy::Model> model;
  std::unique_ptr<dsec::rollout::Policy> policy;
  const std::string policy_name = absl::GetFlag(FLAGS_policy);
  if (policy_name == "scripted") {
    policy = std::make_unique<dsec::rollout::ScriptedPolicy>(
        dsec::rollout::ScriptedPolicyOptions{.seed =
                                                 absl::GetFlag(FLAGS_seed)});
  } else if (policy_name == "moe") {
    dsec::policy::ModelRunOptions run;
    run.threads = absl::GetFlag(FLAGS_threads);
    absl::StatusOr<std::unique_ptr<dsec::policy::Model>> m =
        absl::GetFlag(FLAGS_model).empty()
            ? dsec::policy::Model::Random(dsec::policy::TinyConfig(),
                                          absl::GetFlag(FLAGS_model_seed), run)
            : dsec::policy::Model::Load(absl::GetFlag(FLAGS_model), run);
    if (!m.ok()) Die("model", m.status());
    model = std::move(*m);
    dsec::rollout::MoePolicyOptions mo;
    const std::string thinking = absl::GetFlag(FLAGS_thinking);
    if (thinking == "non-think") {
      mo.mode = dsec::policy::ThinkingMode::kNonThink;
    } else if (thinking == "high") {
      mo.mode = dsec::policy::ThinkingMode::kHigh;
    } else if (thinking == "max") {
      mo.mode = dsec::policy::ThinkingMode::kMax;
    } else {
      Die("--thinking",
          absl::InvalidArgumentError("expected non-think, high or max"));
    }
    mo.sampling.temperature =
        static_cast<float>(absl::GetFlag(FLAGS_temperature));
    mo.sampling.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
    mo.sampling.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
    mo.sampling.seed = absl::GetFlag(FLAGS_seed);
    mo.generator.max_batch = std::max(1, options.concurrency);
    policy = std::make_unique<dsec::rollout::MoePolicy>(model.get(), mo);
  } else {
    Die("--policy",
        absl::InvalidArgumentError(absl::StrCat(
            "unknown policy '", policy_name, "'; expected scripted or moe")));
  }

  // The client, with a job of its own unless a key was given.
  dsec::client::ClientOptions copts;
  copts.controller = !absl::GetFlag(FLAGS_controller).empty()
                         ? absl::GetFlag(FLAGS_controller)
                         : EnvOr("DSEC_CONTROLLER", "127.0.0.1:7070");
  copts.api_key = !absl::GetFlag(FLAGS_api_key).empty()
                      ? absl::GetFlag(FLAGS_api_key)
                      : EnvOr("DSEC_API_KEY", "");
  if (copts.api_key.empty()) {
    dsec::client::ClientOptions admin = copts;
    admin.api_key = absl::GetFlag(FLAGS_admin_key);
    const int groups_per_wave =
        std::max(1, options.concurrency / std::max(1, options.group_size));
    std::string job_name = absl::GetFlag(FLAGS_job_name);
    if (job_name.empty()) {
      job_name = absl::StrCat("rollout-", absl::ToUnixSeconds(absl::Now()), "-",
                              getpid());
    }
    absl::StatusOr<dsec::client::JobInfo> job = dsec::client::CreateJob(
        admin, job_name, groups_per_wave * (options.group_size + 1) + 8);
    if (!job.ok()) Die("creating a job", job.status());
    copts.api_key = job->api_key;
  }
  absl::StatusOr<std::shared_ptr<dsec::client::Client>> client =
      dsec::client::Client::Create(copts);
  if (!client.ok()) Die("client", client.status());

  absl::StatusOr<RolloutSummary> summary =
      dsec::rollout::RunRollout(*client, tasks, *policy, options);
  if (!summary.ok()) {
    if (absl::IsAborted(summary.status())) {
      fprintf(stderr, "dsec-rollout: %s\n",
              summary.status().ToString().c_str());
      return 3;
    }
    Die("rollout", summary.status());
  }
  if (absl::GetFlag(FLAGS_json)) {
    printf("%s\n", summary->ToJson().dump(2).c_str());
  } else {
    printf("%s", summary->ToText().c_str());
    printf(
        "episodes: %s/episodes.jsonl, trajectory logs: %s\n",
        options.out_dir.c_str(),
        (options.log_dir.empty() ? options.out_dir + "/logs" : options.log_dir)
            .c_str());
  }
  return 0;
}
