#include "rollout/worker/scripted_policy.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rollout/worker/rollout.h"

namespace dsec::rollout {
namespace {

namespace dsml = client::dsml;
using ::testing::HasSubstr;
using Role = policy::ChatMessage::Role;

tasks::Task MakeTask() {
  tasks::Task t;
  t.id = "py-add";
  t.language = "python";
  t.statement = "Implement add(a, b) in add.py.";
  t.files = {{"add.py", "def add(a, b):\n    raise NotImplementedError\n"}};
  t.solution = {{"add.py", "def add(a, b):\n    return a + b\n"}};
  t.mistake = {.file = "add.py",
               .old_text = "a + b",
               .new_text = "a - b",
               .error_note = "it subtracts instead of adding."};
  return t;
}

// Plays one episode against the policy with canned tool results; returns
// the turns.
std::vector<PolicyTurn> Play(ScriptedPolicy& policy, const tasks::Task& task,
                             const std::string& id) {
  std::vector<policy::ChatMessage> messages = {
      {.role = Role::kSystem, .content = "sys"},
      {.role = Role::kUser, .content = task.statement}};
  std::vector<PolicyTurn> turns;
  for (int step = 0; step < 20; ++step) {
    EpisodeContext c{
        .task = &task, .episode_id = id, .step = step, .messages = messages};
    auto out = policy.Act({c});
    EXPECT_TRUE(out.ok());
    turns.push_back((*out)[0]);
    if (turns.back().tool_calls.empty()) break;
    messages.push_back({.role = Role::kAssistant,
                        .content = turns.back().content,
                        .tool_calls = turns.back().tool_calls});
    messages.push_back({.role = Role::kTool, .content = "ok"});
  }
  return turns;
}

TEST(ScriptedPolicyTest, PlansFollowTheWeightsAndAreStable) {
  ScriptedPolicy policy({.seed = 7});
  std::map<ScriptedPlan, int> counts;
  for (int i = 0; i < 4000; ++i) {
    const std::string id = absl::StrCat("task.", i);
    counts[policy.PlanFor(id)]++;
    EXPECT_EQ(policy.PlanFor(id), policy.PlanFor(id));
  }
  EXPECT_NEAR(counts[ScriptedPlan::kCorrect] / 4000.0, 0.35, 0.04);
  EXPECT_NEAR(counts[ScriptedPlan::kMistakeFixed] / 4000.0, 0.25, 0.04);
  EXPECT_NEAR(counts[ScriptedPlan::kMistakeKept] / 4000.0, 0.20, 0.04);
  EXPECT_NEAR(counts[ScriptedPlan::kGiveUp] / 4000.0, 0.10, 0.03);
  EXPECT_NEAR(counts[ScriptedPlan::kBadFormat] / 4000.0, 0.10, 0.03);
  // Another seed draws other plans for the same episodes.
  ScriptedPolicy other({.seed = 8});
  int same = 0;
  for (int i = 0; i < 200; ++i) {
    const std::string id = absl::StrCat("task.", i);
    same += policy.PlanFor(id) == other.PlanFor(id);
  }
  EXPECT_LT(same, 150);
}

std::string FindEpisodeWith(ScriptedPolicy& policy, ScriptedPlan plan) {
  for (int i = 0;; ++i) {
    std::string id = absl::StrCat("py-add.", i);
    if (policy.PlanFor(id) == plan) return id;
  }
}

TEST(ScriptedPolicyTest, EveryPlanWritesValidDsmlAndEndsWithAnAnswer) {
  ScriptedPolicy policy;
  const tasks::Task task = MakeTask();
  for (ScriptedPlan plan : {ScriptedPlan::kCorrect, ScriptedPlan::kMistakeFixed,
                            ScriptedPlan::kMistakeKept, ScriptedPlan::kGiveUp,
                            ScriptedPlan::kBadFormat}) {
    SCOPED_TRACE(ScriptedPlanName(plan));
    std::vector<PolicyTurn> turns =
        Play(policy, task, FindEpisodeWith(policy, plan));
    ASSERT_GE(turns.size(), 2u);
    EXPECT_TRUE(turns.back().tool_calls.empty());
    int bad = 0;
    std::vector<std::string> tools;
    for (size_t i = 0; i + 1 < turns.size(); ++i) {
      dsml::ParseResult r = dsml::Parse(turns[i].tool_calls);
      if (!r.ok()) {
        ++bad;
        continue;
      }
      for (const dsml::ToolCall& c : r.calls) tools.push_back(c.name);
    }
    EXPECT_EQ(bad, plan == ScriptedPlan::kBadFormat ? 1 : 0);
    const bool writes = plan != ScriptedPlan::kGiveUp;
    EXPECT_EQ(std::count(tools.begin(), tools.end(), "write_file") > 0, writes);
    EXPECT_EQ(std::count(tools.begin(), tools.end(), "edit_file"),
              plan == ScriptedPlan::kMistakeFixed ? 1 : 0);
  }
}

TEST(ScriptedPolicyTest, MistakeIsWrittenThenFixedByEdit) {
  ScriptedPolicy policy;
  const tasks::Task task = MakeTask();
  std::vector<PolicyTurn> turns =
      Play(policy, task, FindEpisodeWith(policy, ScriptedPlan::kMistakeFixed));
  std::string written, edit_old, edit_new;
  for (const PolicyTurn& t : turns) {
    dsml::ParseResult r = dsml::Parse(t.tool_calls);
    for (const dsml::ToolCall& c : r.calls) {
      if (c.name == "write_file") written = c.Find("content")->raw;
      if (c.name == "edit_file") {
        edit_old = c.Find("old_string")->raw;
        edit_new = c.Find("new_string")->raw;
        EXPECT_THAT(t.reasoning, HasSubstr("subtracts"));
      }
    }
  }
  EXPECT_THAT(written, HasSubstr("return a - b"));
  EXPECT_EQ(edit_old, "a - b");
  EXPECT_EQ(edit_new, "a + b");
}

TEST(ScriptedPolicyTest, TasklessEpisodeIsRefused) {
  ScriptedPolicy policy;
  EpisodeContext c{.episode_id = "x"};
  EXPECT_TRUE(absl::IsInvalidArgument(policy.Act({c}).status()));
}

TEST(PassAtKTest, MatchesTheCombinatorialDefinition) {
  EXPECT_DOUBLE_EQ(PassAtK(4, 0, 1), 0.0);
  EXPECT_DOUBLE_EQ(PassAtK(4, 4, 1), 1.0);
  EXPECT_DOUBLE_EQ(PassAtK(4, 1, 1), 0.25);
  // 1 - C(2,2)/C(4,2) = 1 - 1/6
  EXPECT_NEAR(PassAtK(4, 2, 2), 5.0 / 6.0, 1e-12);
  EXPECT_DOUBLE_EQ(PassAtK(4, 1, 4), 1.0);
  EXPECT_DOUBLE_EQ(PassAtK(8, 3, 8), 1.0);
  EXPECT_DOUBLE_EQ(PassAtK(0, 0, 1), 0.0);
  EXPECT_NEAR(PassAtK(10, 3, 1), 0.3, 1e-12);
}

}  // namespace
}  // namespace dsec::rollout
