#include "rollout/worker/rollout.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/reward.h"
#include "client/trajectory.h"
#include "common/logging.h"
#include "common/scope_guard.h"
#include "common/status_macros.h"

namespace dsec::rollout {
namespace {

namespace dsml = client::dsml;
namespace reward = client::reward;
using Role = policy::ChatMessage::Role;

// Runs fn(0..n-1) on up to `threads` threads.
void ParallelFor(size_t n, int threads, const std::function<void(size_t)>& fn) {
  const size_t workers = std::min<size_t>(n, std::max(1, threads));
  if (workers <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::vector<std::thread> pool;
  pool.reserve(workers);
  for (size_t w = 0; w < workers; ++w) {
    pool.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < n;) fn(i);
    });
  }
  for (std::thread& t : pool) t.join();
}

double Seconds(absl::Time start) {
  return absl::ToDoubleSeconds(absl::Now() - start);
}

// One task's GRPO group: the snapshot of its starting tree and the forked
// member sandboxes.
struct Group {
  const tasks::Task* task = nullptr;
  std::string snapshot_id;
  std::vector<std::string> members;
  std::string setup_error;  // non-empty: every episode is masked
};

struct Episode {
  const tasks::Task* task = nullptr;
  Group* group = nullptr;
  int member = 0;
  std::string id;
  std::vector<policy::ChatMessage> messages;
  std::unique_ptr<client::Trajectory> trajectory;
  std::unique_ptr<client::ToolBox> toolbox;
  int step = 0;
  bool done = false;
  std::string end_reason;
  std::string infra_error;  // non-empty: masked
  reward::RewardResult result;
  nlohmann::json turns = nlohmann::json::array();
  int64_t actions = 0;
  int64_t format_errors = 0;
  int64_t prompt_tokens = 0;
  int64_t prefill_tokens = 0;
  int64_t shared_prefix_tokens = 0;
  int64_t generated_tokens = 0;
  int64_t replayed_steps = 0;
  double sandbox_s = 0;
  double policy_s = 0;
};

std::string Workdir(const dsec::v1::SandboxSpec& spec) {
  return spec.workdir().empty() ? "/root" : spec.workdir();
}

std::string UserPrompt(const tasks::Task& task,
                       const dsec::v1::SandboxSpec& spec) {
  std::vector<std::string> files;
  for (const tasks::TaskFile& f : task.files) files.push_back(f.path);
  return absl::StrCat(task.statement, "\n\nLanguage: ", task.language,
                      ". Files in ", Workdir(spec), ": ",
                      files.empty() ? "(none)" : absl::StrJoin(files, ", "),
                      ".\nHidden tests will be run on your files when you "
                      "answer without a tool call.");
}

nlohmann::json CallsJson(const std::vector<dsml::ToolCall>& calls) {
  nlohmann::json out = nlohmann::json::array();
  for (const dsml::ToolCall& call : calls) {
    nlohmann::json args = nlohmann::json::object();
    for (const dsml::Parameter& p : call.params) args[p.name] = p.value;
    out.push_back({{"name", call.name}, {"arguments", std::move(args)}});
  }
  return out;
}

nlohmann::json RoutingJson(const std::vector<policy::TokenRouting>& routing) {
  nlohmann::json experts = nlohmann::json::array();
  nlohmann::json weights = nlohmann::json::array();
  for (const policy::TokenRouting& t : routing) {
    experts.push_back(t.experts);
    weights.push_back(t.weights);
  }
  return {{"experts", std::move(experts)}, {"weights", std::move(weights)}};
}

// Writes `text` to `path` atomically (temp file + rename).
absl::Status WriteFileAtomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp, ": ", strerror(errno)));
  }
  return absl::OkStatus();
}

// Finished episodes from an earlier run. A torn last line (killed mid-write)
// is dropped and cut off the file.
absl::StatusOr<std::vector<nlohmann::json>> LoadRecords(
    const std::string& path) {
  std::vector<nlohmann::json> records;
  std::ifstream in(path);
  if (!in) return records;
  std::string line;
  int64_t good_bytes = 0;
  int64_t offset = 0;
  while (std::getline(in, line)) {
    offset += static_cast<int64_t>(line.size()) + 1;
    if (in.eof()) break;  // no newline: torn
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("episode")) {
      return absl::DataLossError(
          absl::StrCat(path, ": unreadable record at byte ", good_bytes,
                       "; move the file away to start over"));
    }
    records.push_back(std::move(j));
    good_bytes = offset;
  }
  in.close();
  if (truncate(path.c_str(), good_bytes) != 0) {
    return absl::InternalError(absl::StrCat("cannot truncate ", path));
  }
  return records;
}

class Runner {
 public:
  Runner(std::shared_ptr<client::Client> client, Policy& policy,
         const RolloutOptions& options)
      : client_(std::move(client)), policy_(policy), options_(options) {}

  absl::StatusOr<RolloutSummary> Run(absl::Span<const tasks::Task> tasks);

 private:
  absl::Status Prepare(absl::Span<const tasks::Task> tasks);
  void SetUpGroup(Group& group);
  absl::Status SaveManifest();
  absl::Status OpenEpisode(Episode& ep);
  void ApplyTurn(Episode& ep, PolicyTurn turn);
  void Score(Episode& ep);
  absl::Status Record(Episode& ep);
  absl::Status RunWave(std::vector<Group*> groups);
  RolloutSummary Summarize(absl::Span<const tasks::Task> tasks, double wall_s);
  bool Stopping() const {
    return options_.stop != nullptr && options_.stop->load();
  }

  std::shared_ptr<client::Client> client_;
  Policy& policy_;
  const RolloutOptions& options_;
  std::string log_dir_;
  std::string records_path_;
  std::vector<dsml::ToolSpec> tool_specs_;
  std::string system_prompt_;

  std::vector<Group> groups_;
  std::set<std::string> finished_;  // episode ids with a record
  absl::Mutex mu_;
  std::vector<nlohmann::json> records_ ABSL_GUARDED_BY(mu_);
  std::ofstream records_out_ ABSL_GUARDED_BY(mu_);
  // Phase wall times of this run.
  double policy_s_ = 0;
  double sandbox_s_ = 0;
};

absl::Status Runner::Prepare(absl::Span<const tasks::Task> tasks) {
  if (options_.out_dir.empty()) {
    return absl::InvalidArgumentError("rollout: out_dir is required");
  }
  if (options_.group_size < 1 || options_.group_size > 1024) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rollout: group_size must be 1..1024, got ", options_.group_size));
  }
  if (options_.concurrency < 1 || options_.max_steps < 1) {
    return absl::InvalidArgumentError(
        "rollout: concurrency and max_steps must be at least 1");
  }
  if (tasks.empty()) {
    return absl::InvalidArgumentError("rollout: no tasks");
  }
  log_dir_ =
      options_.log_dir.empty() ? options_.out_dir + "/logs" : options_.log_dir;
  std::error_code ec;
  std::filesystem::create_directories(options_.out_dir, ec);
  std::filesystem::create_directories(log_dir_, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create ", log_dir_, ": ", ec.message()));
  }
  records_path_ = options_.out_dir + "/episodes.jsonl";
  const std::string manifest_path = options_.out_dir + "/manifest.json";
  if (!options_.resume && (std::filesystem::exists(records_path_) ||
                           std::filesystem::exists(manifest_path))) {
    return absl::FailedPreconditionError(absl::StrCat(
        options_.out_dir,
        " already holds a rollout; resume it (--resume) or use a new "
        "directory"));
  }
  ASSIGN_OR_RETURN(std::vector<nlohmann::json> old, LoadRecords(records_path_));
  for (const nlohmann::json& r : old) {
    finished_.insert(r["episode"].get<std::string>());
  }
  {
    absl::MutexLock lock(&mu_);
    records_ = std::move(old);
    records_out_.open(records_path_, std::ios::app);
    if (!records_out_) {
      return absl::InternalError(absl::StrCat("cannot open ", records_path_));
    }
  }

  groups_.resize(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) groups_[i].task = &tasks[i];
  if (options_.resume) {
    std::ifstream in(manifest_path);
    if (in) {
      nlohmann::json m = nlohmann::json::parse(in, nullptr, false);
      if (m.is_discarded() || !m.contains("groups")) {
        return absl::DataLossError(
            absl::StrCat(manifest_path, " is unreadable"));
      }
      std::map<std::string, nlohmann::json> by_task;
      for (const nlohmann::json& g : m["groups"]) {
        by_task[g.value("task", "")] = g;
      }
      for (Group& g : groups_) {
        auto it = by_task.find(g.task->id);
        if (it == by_task.end()) continue;
        g.snapshot_id = it->second.value("snapshot", "");
        g.members = it->second.value("members", std::vector<std::string>{});
        if (static_cast<int>(g.members.size()) != options_.group_size) {
          return absl::FailedPreconditionError(absl::StrCat(
              "resume: task ", g.task->id, " was set up with ",
              g.members.size(), " members, not --group ", options_.group_size));
        }
      }
    }
  }
  client::ToolBox specs_only(nullptr, options_.tools);
  tool_specs_ = specs_only.Specs();
  system_prompt_ = SystemPrompt(options_.spec);
  return absl::OkStatus();
}

void Runner::SetUpGroup(Group& group) {
  const absl::Time start = absl::Now();
  auto fail = [&](const absl::Status& status) {
    group.setup_error = status.ToString();
    DSEC_LOG_WARN("rollout: setting up {} failed: {}", group.task->id,
                  group.setup_error);
  };
  absl::StatusOr<std::shared_ptr<client::Sandbox>> base =
      client_->CreateSandbox(options_.spec);
  if (!base.ok()) return fail(base.status());
  auto cleanup = MakeScopeGuard([&] { (void)(*base)->Delete(); });
  for (const tasks::TaskFile& f : group.task->files) {
    absl::Status s = (*base)->WriteFile(f.path, f.content, f.mode);
    if (!s.ok()) return fail(s);
  }
  absl::StatusOr<std::string> snapshot = (*base)->Snapshot();
  if (!snapshot.ok()) return fail(snapshot.status());
  absl::StatusOr<client::SandboxGroup> forked =
      client_->ForkSnapshot(*snapshot, options_.group_size);
  if (!forked.ok()) {
    (void)client_->DeleteSnapshot(*snapshot);
    return fail(forked.status());
  }
  group.snapshot_id = *snapshot;
  for (const auto& member : forked->members()) {
    group.members.push_back(member->id());
  }
  if (options_.verbose) {
    DSEC_LOG_INFO("rollout: {} set up in {:.2f}s ({} members)", group.task->id,
                  Seconds(start), group.members.size());
  }
}

absl::Status Runner::SaveManifest() {
  nlohmann::json groups = nlohmann::json::array();
  for (const Group& g : groups_) {
    if (g.snapshot_id.empty()) continue;
    groups.push_back({{"task", g.task->id},
                      {"snapshot", g.snapshot_id},
                      {"members", g.members}});
  }
  return WriteFileAtomic(options_.out_dir + "/manifest.json",
                         nlohmann::json{{"groups", groups}}.dump(1));
}

absl::Status Runner::OpenEpisode(Episode& ep) {
  client::TrajectoryOptions t;
  t.log_path = absl::StrCat(log_dir_, "/", ep.id, ".dtl");
  t.trajectory_id = ep.id;
  t.spec = options_.spec;
  t.base_snapshot_id = ep.group->snapshot_id;
  t.sandbox_id = ep.group->members[ep.member];
  ASSIGN_OR_RETURN(ep.trajectory, client::Trajectory::Open(client_, t));
  ep.replayed_steps = ep.trajectory->logged_steps();
  ep.toolbox =
      std::make_unique<client::ToolBox>(ep.trajectory.get(), options_.tools);
  ep.messages.push_back({.role = Role::kSystem, .content = system_prompt_});
  ep.messages.push_back(
      {.role = Role::kUser, .content = UserPrompt(*ep.task, options_.spec)});
  return absl::OkStatus();
}

void Runner::ApplyTurn(Episode& ep, PolicyTurn turn) {
  const absl::Time start = absl::Now();
  ep.prompt_tokens += turn.prompt_tokens;
  ep.prefill_tokens += turn.prefill_tokens;
  ep.shared_prefix_tokens += turn.shared_prefix_tokens;
  ep.generated_tokens += turn.generated_tokens;
  nlohmann::json record = {{"step", ep.step},
                           {"reasoning", turn.reasoning},
                           {"content", turn.content},
                           {"prompt_tokens", turn.prompt_tokens},
                           {"generated_tokens", turn.generated_tokens}};
  if (turn.resumed_tokens > 0) record["resumed_tokens"] = turn.resumed_tokens;
  if (!turn.routing.empty()) record["routing"] = RoutingJson(turn.routing);
  ++ep.step;
  if (!turn.stop_reason.empty()) {
    ep.done = true;
    ep.end_reason = turn.stop_reason;
    ep.turns.push_back(std::move(record));
    return;
  }
  ep.messages.push_back({.role = Role::kAssistant,
                         .content = turn.content,
                         .reasoning = turn.reasoning,
                         .tool_calls = turn.tool_calls});
  if (turn.tool_calls.empty()) {
    ep.done = true;
    ep.end_reason = "answered";
    ep.turns.push_back(std::move(record));
    return;
  }
  dsml::ParseResult parsed = dsml::Parse(turn.tool_calls);
  std::vector<std::string> outputs;
  nlohmann::json observations = nlohmann::json::array();
  if (!parsed.ok()) {
    // The model wrote broken DSML: it is told where, and goes on.
    ++ep.format_errors;
    record["format_error"] = parsed.error->ToString();
    outputs.push_back(parsed.error->ToString());
    observations.push_back({{"tool", "dsml"},
                            {"output", parsed.error->ToString()},
                            {"is_error", true}});
  } else {
    record["tool_calls"] = CallsJson(parsed.calls);
    std::vector<client::ToolResult> results = ep.toolbox->RunAll(parsed.calls);
    ep.actions += static_cast<int64_t>(results.size());
    for (client::ToolResult& r : results) {
      if (r.infra_failed() && ep.infra_error.empty()) {
        ep.infra_error = r.infra_status.ToString();
      }
      observations.push_back(
          {{"tool", r.tool}, {"output", r.output}, {"is_error", r.is_error}});
      outputs.push_back(std::move(r.output));
    }
  }
  record["observations"] = std::move(observations);
  ep.turns.push_back(std::move(record));
  ep.messages.push_back(
      {.role = Role::kTool, .content = dsml::RenderResults(outputs)});
  ep.sandbox_s += Seconds(start);
  if (!ep.infra_error.empty()) {
    ep.done = true;
    ep.end_reason = "infra_failed";
  } else if (ep.step >= options_.max_steps) {
    ep.done = true;
    ep.end_reason = "step_limit";
  }
}

void Runner::Score(Episode& ep) {
  if (!ep.infra_error.empty()) return;
  const absl::Time start = absl::Now();
  ep.result = reward::Evaluate(*ep.trajectory, ep.task->reward);
  if (!ep.result.usable()) ep.infra_error = ep.result.status.ToString();
  ep.sandbox_s += Seconds(start);
}

absl::Status Runner::Record(Episode& ep) {
  const bool masked = !ep.infra_error.empty();
  nlohmann::json r = {
      {"episode", ep.id},
      {"task", ep.task->id},
      {"language", ep.task->language},
      {"member", ep.member},
      {"policy", policy_.name()},
      {"sandbox", ep.trajectory ? ep.trajectory->sandbox_id() : ""},
      {"end", ep.end_reason},
      {"steps", ep.step},
      {"masked", masked},
      {"reward", masked ? 0.0 : ep.result.reward},
      {"eval_state", masked
                         ? "infra_failed"
                         : std::string(reward::EvalStateName(ep.result.state))},
      {"actions", ep.actions},
      {"format_errors", ep.format_errors},
      {"prompt_tokens", ep.prompt_tokens},
      {"prefill_tokens", ep.prefill_tokens},
      {"shared_prefix_tokens", ep.shared_prefix_tokens},
      {"generated_tokens", ep.generated_tokens},
      {"replayed_steps", ep.replayed_steps},
      {"rebuilds", ep.trajectory ? ep.trajectory->rebuilds() : 0},
      {"sandbox_s", ep.sandbox_s},
      {"policy_s", ep.policy_s},
      {"turns", std::move(ep.turns)},
  };
  if (masked) r["infra_error"] = ep.infra_error;
  if (!masked) {
    r["tests"] = {{"passed", ep.result.counts.passed},
                  {"failed", ep.result.counts.failed},
                  {"errors", ep.result.counts.errors}};
    if (!ep.result.reason.empty()) r["reason"] = ep.result.reason;
  }
  absl::MutexLock lock(&mu_);
  // Tool output and sampled text need not be UTF-8: invalid bytes become
  // U+FFFD rather than failing the record.
  records_out_ << r.dump(-1, ' ', false,
                         nlohmann::json::error_handler_t::replace)
               << '\n';
  records_out_.flush();
  records_.push_back(std::move(r));
  if (!records_out_) {
    return absl::InternalError(
        absl::StrCat("cannot append to ", records_path_));
  }
  return absl::OkStatus();
}

absl::Status Runner::RunWave(std::vector<Group*> groups) {
  // 1. Set up the groups that are not yet (in parallel).
  const absl::Time setup_start = absl::Now();
  std::vector<Group*> fresh;
  for (Group* g : groups) {
    if (g->snapshot_id.empty()) fresh.push_back(g);
  }
  ParallelFor(fresh.size(), options_.concurrency,
              [&](size_t i) { SetUpGroup(*fresh[i]); });
  RETURN_IF_ERROR(SaveManifest());

  // 2. Open the unfinished episodes.
  std::vector<std::unique_ptr<Episode>> episodes;
  for (Group* g : groups) {
    for (int m = 0; m < options_.group_size; ++m) {
      auto ep = std::make_unique<Episode>();
      ep->task = g->task;
      ep->group = g;
      ep->member = m;
      ep->id = absl::StrCat(g->task->id, ".", m);
      if (finished_.count(ep->id)) continue;
      if (!g->setup_error.empty()) {
        ep->done = true;
        ep->end_reason = "setup_failed";
        ep->infra_error = g->setup_error;
      }
      episodes.push_back(std::move(ep));
    }
  }
  ParallelFor(episodes.size(), options_.concurrency, [&](size_t i) {
    Episode& ep = *episodes[i];
    if (ep.done) return;
    absl::Status s = OpenEpisode(ep);
    if (!s.ok()) {
      ep.done = true;
      ep.end_reason = "infra_failed";
      ep.infra_error = s.ToString();
    }
  });
  sandbox_s_ += Seconds(setup_start);

  // 3. Lock step: one batched policy call, then every turn's tools.
  while (true) {
    std::vector<Episode*> active;
    for (auto& ep : episodes) {
      if (!ep->done) active.push_back(ep.get());
    }
    if (active.empty()) break;
    if (Stopping()) {
      return absl::AbortedError(
          "rollout stopped (preempted); rerun with resume to continue");
    }
    std::vector<EpisodeContext> contexts;
    contexts.reserve(active.size());
    for (Episode* ep : active) {
      contexts.push_back({.task = ep->task,
                          .episode_id = ep->id,
                          .member = ep->member,
                          .step = ep->step,
                          .messages = ep->messages,
                          .tools = tool_specs_,
                          .wal_path = absl::StrCat(log_dir_, "/", ep->id, ".t",
                                                   ep->step, ".wal")});
    }
    const absl::Time policy_start = absl::Now();
    ASSIGN_OR_RETURN(std::vector<PolicyTurn> turns, policy_.Act(contexts));
    const double policy_s = Seconds(policy_start);
    policy_s_ += policy_s;
    if (turns.size() != active.size()) {
      return absl::InternalError(absl::StrCat("policy ", policy_.name(),
                                              " returned ", turns.size(),
                                              " turns for ", active.size()));
    }
    const absl::Time tools_start = absl::Now();
    ParallelFor(active.size(), options_.concurrency, [&](size_t i) {
      active[i]->policy_s += policy_s / active.size();
      ApplyTurn(*active[i], std::move(turns[i]));
    });
    sandbox_s_ += Seconds(tools_start);
  }

  // 4. Score, record, release.
  const absl::Time score_start = absl::Now();
  std::atomic<bool> record_failed{false};
  ParallelFor(episodes.size(), options_.concurrency, [&](size_t i) {
    Episode& ep = *episodes[i];
    Score(ep);
    if (!Record(ep).ok()) record_failed = true;
    if (ep.trajectory) (void)ep.trajectory->Close();
  });
  for (auto& ep : episodes) finished_.insert(ep->id);
  for (Group* g : groups) {
    if (!g->snapshot_id.empty()) (void)client_->DeleteSnapshot(g->snapshot_id);
  }
  sandbox_s_ += Seconds(score_start);
  if (record_failed) {
    return absl::InternalError(
        absl::StrCat("cannot append to ", records_path_));
  }
  return absl::OkStatus();
}

RolloutSummary Runner::Summarize(absl::Span<const tasks::Task> tasks,
                                 double wall_s) {
  RolloutSummary s;
  s.policy = policy_.name();
  s.tasks = static_cast<int>(tasks.size());
  s.group_size = options_.group_size;
  s.wall_s = wall_s;
  s.policy_s = policy_s_;
  s.sandbox_s = sandbox_s_;
  std::map<std::string, std::vector<double>> by_task;
  double sum = 0, sum_sq = 0;
  absl::MutexLock lock(&mu_);
  for (const nlohmann::json& r : records_) {
    ++s.episodes;
    s.turns += r.value("steps", 0);
    s.actions += r.value("actions", int64_t{0});
    s.format_errors += r.value("format_errors", int64_t{0});
    s.prompt_tokens += r.value("prompt_tokens", int64_t{0});
    s.prefill_tokens += r.value("prefill_tokens", int64_t{0});
    s.shared_prefix_tokens += r.value("shared_prefix_tokens", int64_t{0});
    s.generated_tokens += r.value("generated_tokens", int64_t{0});
    const int64_t replayed = r.value("replayed_steps", int64_t{0});
    s.replayed_steps += replayed;
    s.resumed_episodes += replayed > 0;
    if (r.value("masked", false)) {
      ++s.infra_failed;
      continue;
    }
    const double reward = r.value("reward", 0.0);
    ++s.scored;
    sum += reward;
    sum_sq += reward * reward;
    by_task[r.value("task", "")].push_back(reward);
  }
  if (s.scored > 0) {
    s.reward_mean = sum / s.scored;
    s.reward_std = std::sqrt(
        std::max(0.0, sum_sq / s.scored - s.reward_mean * s.reward_mean));
  }
  int signal = 0;
  for (const auto& [task, rewards] : by_task) {
    const int n = static_cast<int>(rewards.size());
    const int c = static_cast<int>(std::count_if(
        rewards.begin(), rewards.end(), [](double r) { return r >= 1.0; }));
    s.pass_at_1 += PassAtK(n, c, 1);
    s.pass_at_k += PassAtK(n, c, std::min(n, options_.group_size));
    signal += *std::min_element(rewards.begin(), rewards.end()) !=
              *std::max_element(rewards.begin(), rewards.end());
  }
  if (!by_task.empty()) {
    s.pass_at_1 /= by_task.size();
    s.pass_at_k /= by_task.size();
    s.groups_with_signal = static_cast<double>(signal) / by_task.size();
  }
  return s;
}

absl::StatusOr<RolloutSummary> Runner::Run(
    absl::Span<const tasks::Task> tasks) {
  const absl::Time start = absl::Now();
  RETURN_IF_ERROR(Prepare(tasks));
  const int per_wave =
      std::max(1, options_.concurrency / std::max(1, options_.group_size));
  std::vector<Group*> pending;
  for (Group& g : groups_) {
    bool all_done = true;
    for (int m = 0; m < options_.group_size; ++m) {
      all_done &= finished_.count(absl::StrCat(g.task->id, ".", m)) > 0;
    }
    if (!all_done) pending.push_back(&g);
  }
  for (size_t i = 0; i < pending.size(); i += per_wave) {
    std::vector<Group*> wave(
        pending.begin() + i,
        pending.begin() + std::min(pending.size(), i + per_wave));
    RETURN_IF_ERROR(RunWave(std::move(wave)));
    if (options_.verbose) {
      DSEC_LOG_INFO("rollout: {}/{} groups done",
                    std::min(pending.size(), i + per_wave), pending.size());
    }
  }
  RolloutSummary summary = Summarize(tasks, Seconds(start));
  RETURN_IF_ERROR(WriteFileAtomic(options_.out_dir + "/summary.json",
                                  summary.ToJson().dump(2) + "\n"));
  return summary;
}

}  // namespace

double PassAtK(int n, int c, int k) {
  if (n <= 0 || k <= 0) return 0;
  if (k > n) k = n;
  if (n - c < k) return 1.0;
  // 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k / i)
  double fail = 1.0;
  for (int i = n - c + 1; i <= n; ++i) fail *= 1.0 - static_cast<double>(k) / i;
  return 1.0 - fail;
}

std::string SystemPrompt(const dsec::v1::SandboxSpec& spec) {
  return absl::StrCat(
      "You are a software engineer working in a Linux sandbox. Your working "
      "directory is ",
      Workdir(spec),
      ". Use the tools to inspect files, write code and run commands. When "
      "the task is done, reply without a tool call; hidden tests then score "
      "your work.");
}

nlohmann::json RolloutSummary::ToJson() const {
  return {{"policy", policy},
          {"tasks", tasks},
          {"group_size", group_size},
          {"episodes", episodes},
          {"scored", scored},
          {"infra_failed", infra_failed},
          {"reward_mean", reward_mean},
          {"reward_std", reward_std},
          {"pass_at_1", pass_at_1},
          {absl::StrCat("pass_at_", group_size), pass_at_k},
          {"groups_with_signal", groups_with_signal},
          {"turns", turns},
          {"actions", actions},
          {"format_errors", format_errors},
          {"prompt_tokens", prompt_tokens},
          {"prefill_tokens", prefill_tokens},
          {"shared_prefix_tokens", shared_prefix_tokens},
          {"generated_tokens", generated_tokens},
          {"replayed_steps", replayed_steps},
          {"resumed_episodes", resumed_episodes},
          {"wall_s", wall_s},
          {"policy_s", policy_s},
          {"sandbox_s", sandbox_s},
          {"actions_per_s", actions_per_s()},
          {"tokens_per_s", tokens_per_s()},
          {"policy_share", policy_share()}};
}

std::string RolloutSummary::ToText() const {
  std::string out;
  absl::StrAppendFormat(&out,
                        "policy %s: %d tasks x %d = %d episodes (%d scored, %d "
                        "masked for infrastructure)\n",
                        policy, tasks, group_size, episodes, scored,
                        infra_failed);
  absl::StrAppendFormat(&out,
                        "reward mean %.3f (std %.3f)  pass@1 %.3f  pass@%d "
                        "%.3f  groups with signal %.0f%%\n",
                        reward_mean, reward_std, pass_at_1, group_size,
                        pass_at_k, 100 * groups_with_signal);
  absl::StrAppendFormat(&out,
                        "%d turns, %d actions (%.1f actions/s), %d DSML "
                        "format errors, %d steps replayed\n",
                        turns, actions, actions_per_s(), format_errors,
                        replayed_steps);
  if (generated_tokens > 0 || prompt_tokens > 0) {
    absl::StrAppendFormat(
        &out,
        "tokens: %d generated (%.0f tokens/s in the policy); of %d prompt "
        "tokens %d prefilled, %d copied from a shared prefix, the rest "
        "reused from the episode's KV cache\n",
        generated_tokens, tokens_per_s(), prompt_tokens, prefill_tokens,
        shared_prefix_tokens);
  }
  absl::StrAppendFormat(&out,
                        "time: %.2fs wall; policy %.2fs (%.0f%%), sandbox "
                        "%.2fs (%.0f%%)\n",
                        wall_s, policy_s, 100 * policy_share(), sandbox_s,
                        100 * (1 - policy_share()));
  return out;
}

absl::StatusOr<RolloutSummary> RunRollout(
    std::shared_ptr<client::Client> client, absl::Span<const tasks::Task> tasks,
    Policy& policy, const RolloutOptions& options) {
  Runner runner(std::move(client), policy, options);
  return runner.Run(tasks);
}

}  // namespace dsec::rollout
