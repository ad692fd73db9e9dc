#include "rollout/worker/scripted_policy.h"

#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "rollout/policy/hash.h"

namespace dsec::rollout {
namespace {

namespace dsml = client::dsml;

enum class Move {
  kExplore,     // list_files
  kRead,        // read_file of the stub
  kWriteGood,   // write_file of every solution file
  kWriteWrong,  // the same with the task's mistake applied
  kCheck,       // bash: a syntax/compile check
  kFix,         // edit_file undoing the mistake
  kBadFormat,   // a truncated DSML block
  kAnswer,      // final answer, no tool call
  kGiveUp,      // final answer admitting failure
};

std::vector<Move> MovesFor(ScriptedPlan plan) {
  switch (plan) {
    case ScriptedPlan::kCorrect:
      return {Move::kExplore, Move::kRead, Move::kWriteGood, Move::kCheck,
              Move::kAnswer};
    case ScriptedPlan::kMistakeFixed:
      return {Move::kExplore, Move::kRead,  Move::kWriteWrong, Move::kCheck,
              Move::kFix,     Move::kCheck, Move::kAnswer};
    case ScriptedPlan::kMistakeKept:
      return {Move::kExplore, Move::kRead, Move::kWriteWrong, Move::kCheck,
              Move::kAnswer};
    case ScriptedPlan::kGiveUp:
      return {Move::kExplore, Move::kRead, Move::kGiveUp};
    case ScriptedPlan::kBadFormat:
      return {Move::kExplore,   Move::kBadFormat, Move::kRead,
              Move::kWriteGood, Move::kCheck,     Move::kAnswer};
  }
  return {Move::kAnswer};
}

dsml::ToolCall Call(std::string name,
                    std::vector<std::pair<std::string, std::string>> args) {
  dsml::ToolCall call{.name = std::move(name), .params = {}};
  for (auto& [k, v] : args) {
    call.params.push_back(dsml::MakeStringParameter(k, std::move(v)));
  }
  return call;
}

std::string Render(const std::vector<dsml::ToolCall>& calls) {
  absl::StatusOr<std::string> text = dsml::RenderCalls(calls);
  // Only reachable with a task file that is not UTF-8 or holds the closing
  // tag; send it as JSON instead, which RenderCalls always accepts.
  if (text.ok()) return *text;
  std::vector<dsml::ToolCall> json_calls = calls;
  for (dsml::ToolCall& call : json_calls) {
    for (dsml::Parameter& p : call.params) {
      p = dsml::MakeJsonParameter(p.name, nlohmann::json(p.raw));
    }
  }
  text = dsml::RenderCalls(json_calls);
  return text.ok() ? *text : "";
}

// The starting file the solution replaces (what a developer opens first).
std::string StubPath(const tasks::Task& task) {
  for (const tasks::TaskFile& s : task.solution) {
    for (const tasks::TaskFile& f : task.files) {
      if (f.path == s.path) return f.path;
    }
  }
  if (!task.files.empty()) return task.files.front().path;
  return task.solution.empty() ? "." : task.solution.front().path;
}

// A quick check a developer runs after writing code: it catches syntax
// errors, not wrong answers (the hidden tests do that).
std::string CheckCommand(const tasks::Task& task) {
  std::vector<std::string> checks;
  for (const tasks::TaskFile& f : task.solution) {
    const std::string& p = f.path;
    if (absl::EndsWith(p, ".py")) {
      checks.push_back(absl::StrCat("python3 -m py_compile '", p, "'"));
    } else if (absl::EndsWith(p, ".c")) {
      checks.push_back(absl::StrCat("gcc -fsyntax-only -Wall '", p, "'"));
    } else if (absl::EndsWith(p, ".sh")) {
      checks.push_back(absl::StrCat("bash -n '", p, "'"));
    } else if (absl::EndsWith(p, ".js")) {
      checks.push_back(absl::StrCat("node --check '", p, "'"));
    }
  }
  if (checks.empty()) return "ls -la";
  return absl::StrCat(absl::StrJoin(checks, " && "), " && echo check ok");
}

size_t CountOccurrences(absl::string_view haystack, absl::string_view needle) {
  if (needle.empty()) return 0;
  size_t n = 0;
  for (size_t pos = haystack.find(needle); pos != absl::string_view::npos;
       pos = haystack.find(needle, pos + 1)) {
    ++n;
  }
  return n;
}

}  // namespace

absl::string_view ScriptedPlanName(ScriptedPlan plan) {
  switch (plan) {
    case ScriptedPlan::kCorrect:
      return "correct";
    case ScriptedPlan::kMistakeFixed:
      return "mistake_fixed";
    case ScriptedPlan::kMistakeKept:
      return "mistake_kept";
    case ScriptedPlan::kGiveUp:
      return "give_up";
    case ScriptedPlan::kBadFormat:
      return "bad_format";
  }
  return "?";
}

ScriptedPlan ScriptedPolicy::PlanFor(absl::string_view episode_id) const {
  const double weights[] = {options_.correct, options_.mistake_fixed,
                            options_.mistake_kept, options_.give_up,
                            options_.bad_format};
  double total = 0;
  for (double w : weights) total += w > 0 ? w : 0;
  if (total <= 0) return ScriptedPlan::kCorrect;
  // Stable across processes and builds, so a resumed episode replays.
  const uint64_t h = policy::internal::Hash64(episode_id, options_.seed);
  double u = static_cast<double>(h >> 11) * 0x1.0p-53 * total;
  for (int i = 0; i < 5; ++i) {
    const double w = weights[i] > 0 ? weights[i] : 0;
    if (u < w) return static_cast<ScriptedPlan>(i);
    u -= w;
  }
  return ScriptedPlan::kCorrect;
}

PolicyTurn ScriptedPolicy::TurnFor(const EpisodeContext& context) const {
  const tasks::Task& task = *context.task;
  const std::vector<Move> moves = MovesFor(PlanFor(context.episode_id));
  const Move move = context.step < static_cast<int>(moves.size())
                        ? moves[context.step]
                        : Move::kAnswer;
  PolicyTurn turn;
  switch (move) {
    case Move::kExplore:
      turn.reasoning = "I should see what the working directory holds.";
      turn.content = "Let me look at the files first.";
      turn.tool_calls = Render({Call("list_files", {{"path", "."}})});
      break;
    case Move::kRead:
      turn.reasoning = "The stub shows the expected interface.";
      turn.content = absl::StrCat("Reading ", StubPath(task), ".");
      turn.tool_calls = Render({Call("read_file", {{"path", StubPath(task)}})});
      break;
    case Move::kWriteGood:
    case Move::kWriteWrong: {
      const std::vector<tasks::TaskFile> files =
          move == Move::kWriteGood ? task.solution : task.MistakenSolution();
      std::vector<dsml::ToolCall> calls;
      for (const tasks::TaskFile& f : files) {
        calls.push_back(
            Call("write_file", {{"path", f.path}, {"content", f.content}}));
      }
      turn.reasoning = "I know how to implement this; writing it now.";
      turn.content = "Here is my implementation.";
      turn.tool_calls = Render(calls);
      break;
    }
    case Move::kCheck:
      turn.reasoning = "A quick check that it at least builds.";
      turn.content = "Checking the code.";
      turn.tool_calls =
          Render({Call("bash", {{"command", CheckCommand(task)}})});
      break;
    case Move::kFix: {
      const tasks::Task::Mistake& m = task.mistake;
      turn.reasoning = absl::StrCat("Wait, there is a bug: ", m.error_note);
      turn.content = absl::StrCat("Fixing a bug in ", m.file, ".");
      std::string wrong;
      for (const tasks::TaskFile& f : task.MistakenSolution()) {
        if (f.path == m.file) wrong = f.content;
      }
      if (CountOccurrences(wrong, m.new_text) == 1) {
        turn.tool_calls =
            Render({Call("edit_file", {{"path", m.file},
                                       {"old_string", m.new_text},
                                       {"new_string", m.old_text}})});
      } else {
        // The edit would be ambiguous: rewrite the file.
        for (const tasks::TaskFile& f : task.solution) {
          if (f.path != m.file) continue;
          turn.tool_calls = Render(
              {Call("write_file", {{"path", f.path}, {"content", f.content}})});
        }
      }
      break;
    }
    case Move::kBadFormat:
      turn.reasoning = "Let me read the stub.";
      turn.content = "Reading the file.";
      // Unterminated: the parameter and the block never close.
      turn.tool_calls = absl::StrCat(
          "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"read_file\">\n"
          "<｜DSML｜parameter name=\"path\" string=\"true\">",
          StubPath(task));
      break;
    case Move::kAnswer:
      turn.reasoning = "The implementation is complete.";
      turn.content =
          absl::StrCat("I implemented the task in ",
                       task.solution.empty() ? std::string("the files")
                                             : task.solution.front().path,
                       ".");
      break;
    case Move::kGiveUp:
      turn.reasoning = "I do not know how to solve this.";
      turn.content = "I could not complete this task.";
      break;
  }
  return turn;
}

absl::StatusOr<std::vector<PolicyTurn>> ScriptedPolicy::Act(
    absl::Span<const EpisodeContext> batch) {
  std::vector<PolicyTurn> turns;
  turns.reserve(batch.size());
  for (const EpisodeContext& context : batch) {
    if (context.task == nullptr) {
      return absl::InvalidArgumentError(
          "scripted policy: episode without a task");
    }
    turns.push_back(TurnFor(context));
  }
  return turns;
}

}  // namespace dsec::rollout
