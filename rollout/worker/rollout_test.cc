// The rollout worker against local mode: real sandboxes (forked per group),
// the shipped task set, tools, hidden-test scoring, trajectory logs on
// dsec-fs, preemption and resume, and the MoE policy end to end.
#include "rollout/worker/rollout.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "ctl/local_cluster.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rollout/policy/model.h"
#include "rollout/worker/moe_policy.h"
#include "rollout/worker/scripted_policy.h"
#include "sandbox/cgroup.h"

namespace dsec::rollout {
namespace {

std::vector<nlohmann::json> ReadRecords(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

class RolloutTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (geteuid() != 0 || !sandbox::CgroupsAvailable()) return;
    ctl::LocalClusterOptions options;
    options.data_dir = dir_->Join("local");
    options.controller_port = 0;
    options.fs_meta_port = 0;
    options.warm_pool_size = 4;
    options.max_sandboxes = 64;
    options.init_path = dsec::testing::BinDir() + "/dsec-init";
    auto cluster = ctl::LocalCluster::Create(options);
    ASSERT_OK(cluster.status());
    cluster_ = cluster->release();
    client::ClientOptions admin{.controller = cluster_->controller_address()};
    auto job = client::CreateJob(admin, "rollout-test", 48);
    ASSERT_OK(job.status());
    auto c =
        client::Client::Create({.controller = cluster_->controller_address(),
                                .api_key = job->api_key});
    ASSERT_OK(c.status());
    client_ = new std::shared_ptr<client::Client>(*c);
  }
  static void TearDownTestSuite() {
    delete client_;
    client_ = nullptr;
    if (cluster_ != nullptr) cluster_->Shutdown();
    delete cluster_;
    cluster_ = nullptr;
  }

  void SetUp() override {
    DSEC_REQUIRE_HOST_FEATURE(geteuid() == 0 && sandbox::CgroupsAvailable(),
                              "root with cgroups");
    ASSERT_NE(cluster_, nullptr);
    auto all = tasks::LoadTaskSet(tasks::DefaultTaskDir());
    ASSERT_OK(all.status());
    // One task per language, so every toolchain is exercised.
    std::map<std::string, const tasks::Task*> first;
    for (const tasks::Task& t : *all) first.emplace(t.language, &t);
    for (auto& [language, t] : first) tasks_.push_back(*t);
    ASSERT_GE(tasks_.size(), 3u);
  }

  // Logs on dsec-fs, as a rollout that must resume on another node has them.
  RolloutOptions Options(const std::string& name) {
    RolloutOptions o;
    o.group_size = 4;
    o.concurrency = 16;
    o.out_dir = dir_->Join(name);
    o.log_dir = absl::StrCat(cluster_->fs_mountpoint(), "/rollout-logs/", name);
    return o;
  }

  // The reward each scripted plan must earn.
  static void ExpectRewardsMatchPlans(const ScriptedPolicy& policy,
                                      const std::vector<nlohmann::json>& recs) {
    for (const nlohmann::json& r : recs) {
      SCOPED_TRACE(r.dump().substr(0, 2000));
      ASSERT_FALSE(r["masked"].get<bool>());
      const double reward = r["reward"].get<double>();
      switch (policy.PlanFor(r["episode"].get<std::string>())) {
        case ScriptedPlan::kCorrect:
        case ScriptedPlan::kMistakeFixed:
        case ScriptedPlan::kBadFormat:
          EXPECT_EQ(reward, 1.0);
          break;
        case ScriptedPlan::kMistakeKept:
        case ScriptedPlan::kGiveUp:
          EXPECT_LT(reward, 1.0);
          break;
      }
    }
  }

  static inline dsec::testing::TempDir* dir_ = new dsec::testing::TempDir();
  static inline ctl::LocalCluster* cluster_ = nullptr;
  static inline std::shared_ptr<client::Client>* client_ = nullptr;
  std::vector<tasks::Task> tasks_;
};

TEST_F(RolloutTest, ScriptedGroupsEarnTheRewardsTheirPlansDeserve) {
  ScriptedPolicy policy({.seed = 3});
  RolloutOptions o = Options("scripted");
  ASSERT_OK_AND_ASSIGN(RolloutSummary s,
                       RunRollout(*client_, tasks_, policy, o));
  std::cerr << s.ToText();
  const int n = static_cast<int>(tasks_.size()) * 4;
  EXPECT_EQ(s.episodes, n);
  EXPECT_EQ(s.scored, n);
  EXPECT_EQ(s.infra_failed, 0);
  EXPECT_GT(s.actions, 3 * n);
  EXPECT_GT(s.reward_mean, 0.0);
  EXPECT_GE(s.pass_at_k, s.pass_at_1);
  std::vector<nlohmann::json> recs = ReadRecords(o.out_dir + "/episodes.jsonl");
  ASSERT_EQ(static_cast<int>(recs.size()), n);
  ExpectRewardsMatchPlans(policy, recs);
  // Each record carries the actions and what the model saw.
  int format_errors = 0;
  for (const nlohmann::json& r : recs) {
    format_errors += r["format_errors"].get<int>();
    ASSERT_FALSE(r["turns"].empty());
    EXPECT_EQ(r["end"], "answered");
    EXPECT_TRUE(r["turns"][0].contains("tool_calls"));
    EXPECT_EQ(r["turns"][0]["tool_calls"][0]["name"], "list_files");
    EXPECT_FALSE(r["turns"][0]["observations"][0]["is_error"].get<bool>());
  }
  EXPECT_EQ(s.format_errors, format_errors);
  // The members of a group ran in different sandboxes forked from one
  // snapshot, and their logs live on dsec-fs.
  std::set<std::string> sandboxes;
  for (const nlohmann::json& r : recs) sandboxes.insert(r["sandbox"]);
  EXPECT_EQ(static_cast<int>(sandboxes.size()), n);
  EXPECT_TRUE(std::filesystem::exists(
      absl::StrCat(o.log_dir, "/", tasks_[0].id, ".0.dtl")));
  // The summary file agrees.
  std::ifstream in(o.out_dir + "/summary.json");
  nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["episodes"], n);
  EXPECT_DOUBLE_EQ(j["reward_mean"].get<double>(), s.reward_mean);
}

// A policy that stops the rollout after `turns` lock steps (a preemption).
class PreemptedPolicy : public Policy {
 public:
  PreemptedPolicy(Policy& inner, int turns, std::atomic<bool>* stop)
      : inner_(inner), turns_(turns), stop_(stop) {}
  std::string name() const override { return inner_.name(); }
  absl::StatusOr<std::vector<PolicyTurn>> Act(
      absl::Span<const EpisodeContext> batch) override {
    if (--turns_ <= 0) *stop_ = true;
    return inner_.Act(batch);
  }

 private:
  Policy& inner_;
  int turns_;
  std::atomic<bool>* stop_;
};

TEST_F(RolloutTest, PreemptedRolloutResumesWithoutRunningStepsTwice) {
  ScriptedPolicy policy({.seed = 5});
  std::atomic<bool> stop{false};
  PreemptedPolicy preempted(policy, 3, &stop);
  RolloutOptions o = Options("resume");
  o.stop = &stop;
  EXPECT_TRUE(
      absl::IsAborted(RunRollout(*client_, tasks_, preempted, o).status()));
  EXPECT_TRUE(ReadRecords(o.out_dir + "/episodes.jsonl").empty());

  // Not resuming into a used directory is refused.
  RolloutOptions fresh = o;
  fresh.stop = nullptr;
  EXPECT_TRUE(absl::IsFailedPrecondition(
      RunRollout(*client_, tasks_, policy, fresh).status()));

  RolloutOptions resumed = fresh;
  resumed.resume = true;
  ASSERT_OK_AND_ASSIGN(RolloutSummary s,
                       RunRollout(*client_, tasks_, policy, resumed));
  std::cerr << s.ToText();
  const int n = static_cast<int>(tasks_.size()) * 4;
  EXPECT_EQ(s.episodes, n);
  EXPECT_EQ(s.infra_failed, 0);
  // Every episode had logged steps (three turns' tools) and fast-forwarded.
  EXPECT_EQ(s.resumed_episodes, n);
  EXPECT_GE(s.replayed_steps, 2 * n);
  ExpectRewardsMatchPlans(policy, ReadRecords(o.out_dir + "/episodes.jsonl"));

  // Resuming a finished rollout does nothing new.
  ASSERT_OK_AND_ASSIGN(RolloutSummary again,
                       RunRollout(*client_, tasks_, policy, resumed));
  EXPECT_EQ(again.episodes, n);
  EXPECT_EQ(ReadRecords(o.out_dir + "/episodes.jsonl").size(),
            static_cast<size_t>(n));
}

TEST_F(RolloutTest, TornAndCorruptRecordsOnResume) {
  ScriptedPolicy policy;
  RolloutOptions o = Options("torn");
  std::vector<tasks::Task> one = {tasks_[0]};
  o.group_size = 2;
  ASSERT_OK(RunRollout(*client_, one, policy, o).status());
  const std::string path = o.out_dir + "/episodes.jsonl";
  // A torn last line (killed mid-write) is dropped and that episode reruns.
  std::vector<nlohmann::json> recs = ReadRecords(path);
  ASSERT_EQ(recs.size(), 2u);
  {
    std::ofstream out(path, std::ios::trunc);
    out << recs[0].dump() << "\n" << recs[1].dump().substr(0, 40);
  }
  o.resume = true;
  ASSERT_OK_AND_ASSIGN(RolloutSummary s, RunRollout(*client_, one, policy, o));
  EXPECT_EQ(s.episodes, 2);
  EXPECT_EQ(ReadRecords(path).size(), 2u);
  // Garbage in the middle is refused, not silently dropped.
  {
    std::ofstream out(path, std::ios::trunc);
    out << "{not json\n" << recs[1].dump() << "\n";
  }
  EXPECT_TRUE(absl::IsDataLoss(RunRollout(*client_, one, policy, o).status()));
}

TEST_F(RolloutTest, BadOptionsAreRejected) {
  ScriptedPolicy policy;
  RolloutOptions o = Options("bad");
  o.group_size = 0;
  EXPECT_TRUE(absl::IsInvalidArgument(
      RunRollout(*client_, tasks_, policy, o).status()));
  o.group_size = 2;
  o.out_dir = "";
  EXPECT_TRUE(absl::IsInvalidArgument(
      RunRollout(*client_, tasks_, policy, o).status()));
  o = Options("bad2");
  EXPECT_TRUE(
      absl::IsInvalidArgument(RunRollout(*client_, {}, policy, o).status()));
}

TEST_F(RolloutTest, MoePolicyRunsTheWholePathWithRoutingMetadata) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<policy::Model> model,
                       policy::Model::Random(policy::TinyConfig(), 11));
  MoePolicyOptions mo;
  mo.sampling.max_new_tokens = 24;
  mo.sampling.seed = 3;
  MoePolicy moe(model.get(), mo);
  RolloutOptions o = Options("moe");
  o.group_size = 2;
  o.max_steps = 3;
  std::vector<tasks::Task> one = {tasks_[0]};
  ASSERT_OK_AND_ASSIGN(RolloutSummary s, RunRollout(*client_, one, moe, o));
  std::cerr << s.ToText();
  EXPECT_EQ(s.episodes, 2);
  EXPECT_EQ(s.infra_failed, 0);
  EXPECT_GT(s.generated_tokens, 0);
  EXPECT_GT(s.prompt_tokens, 0);
  EXPECT_GT(s.policy_s, 0);
  // Both episodes start with the same system prompt: it is computed once.
  EXPECT_GT(s.shared_prefix_tokens, 1000);
  EXPECT_LT(s.prefill_tokens, s.prompt_tokens - s.shared_prefix_tokens + 1);
  for (const nlohmann::json& r : ReadRecords(o.out_dir + "/episodes.jsonl")) {
    ASSERT_FALSE(r["turns"].empty());
    const nlohmann::json& t = r["turns"][0];
    const int generated = t["generated_tokens"].get<int>();
    ASSERT_GT(generated, 0);
    // Per generated token: one expert list per layer, top-k each.
    ASSERT_TRUE(t.contains("routing"));
    ASSERT_EQ(static_cast<int>(t["routing"]["experts"].size()), generated);
    EXPECT_EQ(static_cast<int>(t["routing"]["experts"][0].size()),
              model->config().layers);
    EXPECT_EQ(static_cast<int>(t["routing"]["experts"][0][0].size()),
              model->config().moe.top_k);
  }
}

}  // namespace
}  // namespace dsec::rollout
