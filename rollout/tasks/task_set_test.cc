// The task loader on hostile and malformed task directories, the shipped set
// as data, and (TaskSetValidation, root with cgroups: skips locally without
// them, fails in CI) every shipped task scored in real sandboxes: the
// starting tree fails, the reference solution scores 1, the scripted mistake
// scores partially.
#include "rollout/tasks/task_set.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/local_sandbox_io.h"
#include "client/reward.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sandbox/cgroup.h"
#include "sandbox/sandbox.h"

namespace dsec::tasks {
namespace {

namespace fs = std::filesystem;
using client::reward::EvalState;
using client::reward::ParserKind;
using client::reward::RewardPolicy;
using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

void WriteText(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

constexpr char kTaskJson[] = R"({
  "id": "t1",
  "language": "python",
  "difficulty": "easy",
  "statement": "Implement add(a, b) in add.py.",
  "test": {
    "command": "python3 -m pytest -q -rA test_add.py",
    "parser": "pytest",
    "timeout_s": 20,
    "setup": "true",
    "cases": [{"name": "c1", "stdin": "1 2", "expected_stdout": "3\n"},
              {"name": "c2", "command": "echo 3"}]
  },
  "hints": ["use +"]
})";

constexpr char kMistakeJson[] = R"({
  "file": "add.py",
  "old": "a + b",
  "new": "a - b",
  "error_note": "test_add fails: 1 - 2 is -1."
})";

// A minimal valid task "t1" under a temp dir, for each test to break.
class TaskDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    task_ = dir_.Join("t1");
    WriteText(task_ + "/task.json", kTaskJson);
    WriteText(task_ + "/files/add.py",
              "def add(a, b):\n    raise NotImplementedError\n");
    WriteText(
        task_ + "/hidden/test_add.py",
        "from add import add\n\ndef test_add():\n    assert add(1, 2) == 3\n");
    WriteText(task_ + "/solution/add.py", "def add(a, b):\n    return a + b\n");
    WriteText(task_ + "/solution/bin/run.sh", "#!/bin/sh\necho hi\n");
    chmod((task_ + "/solution/bin/run.sh").c_str(), 0755);
    WriteText(task_ + "/mistake.json", kMistakeJson);
  }

  // task.json with `from` replaced by `to` (which must be there once).
  void EditTaskJson(const std::string& from, const std::string& to) {
    std::string text = kTaskJson;
    size_t pos = text.find(from);
    ASSERT_NE(pos, std::string::npos) << from;
    text.replace(pos, from.size(), to);
    WriteText(task_ + "/task.json", text);
  }

  dsec::testing::TempDir dir_;
  std::string task_;
};

TEST_F(TaskDirTest, ValidTaskLoadsIntoRewardSpec) {
  ASSERT_OK_AND_ASSIGN(Task t, LoadTask(task_));
  EXPECT_EQ(t.id, "t1");
  EXPECT_EQ(t.language, "python");
  EXPECT_EQ(t.difficulty, "easy");
  EXPECT_THAT(t.hints, ::testing::ElementsAre("use +"));
  ASSERT_EQ(t.files.size(), 1u);
  EXPECT_EQ(t.files[0].path, "add.py");
  ASSERT_EQ(t.solution.size(), 2u);
  EXPECT_EQ(t.solution[0].path, "add.py");
  EXPECT_EQ(t.solution[1].path, "bin/run.sh");
  EXPECT_EQ(t.solution[1].mode, 0755u);
  EXPECT_EQ(t.solution[0].mode, 0644u);

  const client::reward::RewardSpec& spec = t.reward;
  ASSERT_EQ(spec.files.size(), 1u);
  EXPECT_EQ(spec.files[0].path, "test_add.py");
  EXPECT_EQ(spec.test_command.shell, "python3 -m pytest -q -rA test_add.py");
  EXPECT_TRUE(spec.test_command.argv.empty());
  EXPECT_EQ(spec.test_command.timeout, absl::Seconds(20));
  ASSERT_TRUE(spec.setup.has_value());
  EXPECT_EQ(spec.setup->shell, "true");
  EXPECT_EQ(spec.setup->timeout, absl::Seconds(20));
  EXPECT_EQ(spec.parser, ParserKind::kPytest);
  EXPECT_EQ(spec.policy, RewardPolicy::kFractionPassed);
  ASSERT_EQ(spec.cases.size(), 2u);
  EXPECT_EQ(spec.cases[0].name, "c1");
  EXPECT_EQ(spec.cases[0].stdin_data, "1 2");
  EXPECT_EQ(spec.cases[0].expected_stdout, "3\n");
  EXPECT_FALSE(spec.cases[0].command.has_value());
  ASSERT_TRUE(spec.cases[1].command.has_value());
  EXPECT_EQ(spec.cases[1].command->shell, "echo 3");
  EXPECT_FALSE(spec.cases[1].expected_stdout.has_value());
}

TEST_F(TaskDirTest, MistakenSolutionEditsOnlyTheMistakeFile) {
  ASSERT_OK_AND_ASSIGN(Task t, LoadTask(task_));
  std::vector<TaskFile> m = t.MistakenSolution();
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].content, "def add(a, b):\n    return a - b\n");
  EXPECT_EQ(m[1].content, t.solution[1].content);
  EXPECT_EQ(t.solution[0].content, "def add(a, b):\n    return a + b\n");
  EXPECT_EQ(t.mistake.error_note, "test_add fails: 1 - 2 is -1.");
}

TEST_F(TaskDirTest, HiddenDirectoryIsOptional) {
  fs::remove_all(task_ + "/hidden");
  ASSERT_OK_AND_ASSIGN(Task t, LoadTask(task_));
  EXPECT_TRUE(t.hidden.empty());
  EXPECT_TRUE(t.reward.files.empty());
}

TEST_F(TaskDirTest, BadJsonNamesTheFile) {
  WriteText(task_ + "/task.json", "{\"id\": \"t1\", ");
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        AllOf(HasSubstr("task.json"),
                                              HasSubstr("not valid JSON"))));
  WriteText(task_ + "/task.json", "[1, 2]");
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("not a JSON object")));
  SetUp();
  WriteText(task_ + "/mistake.json", "nope");
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("mistake.json")));
}

TEST_F(TaskDirTest, MissingOrMistypedFieldsAreNamed) {
  EditTaskJson("\"statement\": \"Implement add(a, b) in add.py.\",", "");
  EXPECT_THAT(
      LoadTask(task_),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("task.json"), HasSubstr("statement: missing"))));
  EditTaskJson("\"timeout_s\": 20", "\"timeout_s\": \"20\"");
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("test.timeout_s")));
  EditTaskJson("\"timeout_s\": 20", "\"timeout_s\": -1");
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("test.timeout_s")));
  EditTaskJson("\"command\": \"python3 -m pytest -q -rA test_add.py\",", "");
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("test.command: missing")));
  EditTaskJson("{\"name\": \"c1\", ", "{\"name\": 7, ");
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("test.cases[0].name")));
  EditTaskJson("\"name\": \"c2\"", "\"name\": \"c1\"");
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("duplicate case")));
  EditTaskJson("\"hints\": [\"use +\"]", "\"hints\": \"use +\"");
  EXPECT_THAT(LoadTask(task_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("hints")));
}

TEST_F(TaskDirTest, UnknownParserLanguageOrDifficultyIsRejected) {
  EditTaskJson("\"parser\": \"pytest\"", "\"parser\": \"tap\"");
  EXPECT_THAT(LoadTask(task_),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("test.parser"), HasSubstr("tap"))));
  EditTaskJson("\"language\": \"python\"", "\"language\": \"cobol\"");
  EXPECT_THAT(LoadTask(task_),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("language"), HasSubstr("cobol"))));
  EditTaskJson("\"difficulty\": \"easy\"", "\"difficulty\": \"trivial\"");
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("difficulty")));
}

TEST_F(TaskDirTest, IdMustMatchDirectoryName) {
  EditTaskJson("\"id\": \"t1\"", "\"id\": \"other\"");
  EXPECT_THAT(
      LoadTask(task_),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("id"), HasSubstr("other"), HasSubstr("t1"))));
  EditTaskJson("\"id\": \"t1\"", "\"id\": \"t1\"");
  EXPECT_THAT(LoadTask(task_ + "/"), IsOk());
}

TEST_F(TaskDirTest, MistakeOldMustOccurExactlyOnce) {
  WriteText(
      task_ + "/mistake.json",
      R"({"file": "add.py", "old": "a * b", "new": "x", "error_note": "n"})");
  EXPECT_THAT(LoadTask(task_),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("mistake.json"), HasSubstr("old"),
                             HasSubstr("found 0 times"))));
  WriteText(task_ + "/mistake.json",
            R"({"file": "add.py", "old": "a", "new": "x", "error_note": "n"})");
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("more than 1 times")));
  WriteText(
      task_ + "/mistake.json",
      R"({"file": "nope.py", "old": "a + b", "new": "x", "error_note": "n"})");
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("not a solution file")));
  WriteText(task_ + "/mistake.json",
            R"({"file": "add.py", "old": "a + b", "new": "x"})");
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("error_note: missing")));
}

TEST_F(TaskDirTest, PathsEscapingTheTaskAreRejected) {
  for (const char* bad : {"/etc/passwd", "../t1/solution/add.py", "sub/../../x",
                          "./add.py", "a//b"}) {
    WriteText(
        task_ + "/mistake.json",
        absl::StrCat(R"({"file": ")", bad,
                     R"(", "old": "a + b", "new": "x", "error_note": "n"})"));
    EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                          AllOf(HasSubstr("mistake.json"),
                                                HasSubstr("escapes"))))
        << bad;
  }
}

TEST_F(TaskDirTest, SymlinksInTreesAreRejected) {
  ASSERT_EQ(symlink("/etc/passwd", (task_ + "/files/passwd").c_str()), 0);
  EXPECT_THAT(LoadTask(task_),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("files/passwd"), HasSubstr("symlink"))));
  fs::remove(task_ + "/files/passwd");
  // A symlinked directory is refused too (not followed).
  ASSERT_EQ(symlink("/etc", (task_ + "/hidden/etc").c_str()), 0);
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("symlink")));
  fs::remove(task_ + "/hidden/etc");
  // And task.json itself.
  fs::rename(task_ + "/task.json", dir_.Join("real.json"));
  ASSERT_EQ(
      symlink(dir_.Join("real.json").c_str(), (task_ + "/task.json").c_str()),
      0);
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("symlink")));
}

TEST_F(TaskDirTest, FilesOverOneMebibyteAreRejected) {
  WriteText(task_ + "/hidden/big.bin", std::string(kMaxTaskFileBytes, 'x'));
  EXPECT_THAT(LoadTask(task_), IsOk());
  WriteText(task_ + "/hidden/big.bin", std::string(kMaxTaskFileBytes + 1, 'x'));
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        AllOf(HasSubstr("hidden/big.bin"),
                                              HasSubstr("larger"))));
  fs::remove(task_ + "/hidden/big.bin");
  WriteText(task_ + "/task.json",
            std::string(kTaskJson) + std::string(kMaxTaskFileBytes, ' '));
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("larger")));
}

TEST_F(TaskDirTest, MissingTreesAreRejected) {
  fs::remove_all(task_ + "/solution");
  EXPECT_THAT(LoadTask(task_), StatusIs(absl::StatusCode::kInvalidArgument,
                                        HasSubstr("solution")));
  SetUp();
  fs::remove_all(task_ + "/files");
  EXPECT_THAT(LoadTask(task_),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("files")));
}

TEST_F(TaskDirTest, TaskSetIsSortedAndReportsTheBrokenTask) {
  std::string other = dir_.Join("a0");
  fs::create_directories(other);
  fs::copy(task_, other, fs::copy_options::recursive);
  std::string json = kTaskJson;
  json.replace(json.find("\"t1\""), 4, "\"a0\"");
  WriteText(other + "/task.json", json);
  WriteText(dir_.Join("README.md"), "not a task\n");
  fs::create_directories(dir_.Join(".git"));
  ASSERT_OK_AND_ASSIGN(std::vector<Task> set, LoadTaskSet(dir_.path()));
  ASSERT_EQ(set.size(), 2u);
  EXPECT_EQ(set[0].id, "a0");
  EXPECT_EQ(set[1].id, "t1");

  WriteText(other + "/task.json", "{");
  EXPECT_THAT(
      LoadTaskSet(dir_.path()),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("a0/task.json")));
  EXPECT_THAT(LoadTaskSet(dir_.Join("missing")),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST(DefaultTaskDir, EnvironmentOverridesCompiledInPath) {
  unsetenv("DSEC_TASKS_DIR");
  std::string built_in = DefaultTaskDir();
  EXPECT_TRUE(fs::is_directory(built_in)) << built_in;
  setenv("DSEC_TASKS_DIR", "/some/where", 1);
  EXPECT_EQ(DefaultTaskDir(), "/some/where");
  setenv("DSEC_TASKS_DIR", "", 1);
  EXPECT_EQ(DefaultTaskDir(), built_in);
  unsetenv("DSEC_TASKS_DIR");
}

TEST(ShippedTaskSet, LoadsWithEnoughTasksAndLanguages) {
  ASSERT_OK_AND_ASSIGN(std::vector<Task> set, LoadTaskSet(DefaultTaskDir()));
  EXPECT_GE(set.size(), 30u);
  std::set<std::string> ids;
  std::map<std::string, int> languages;
  for (const Task& t : set) {
    SCOPED_TRACE(t.id);
    EXPECT_TRUE(ids.insert(t.id).second) << "duplicate id";
    ++languages[t.language];
    EXPECT_FALSE(t.statement.empty());
    EXPECT_FALSE(t.files.empty());
    EXPECT_FALSE(t.mistake.error_note.empty());
    // Something is hidden to score against: test files or cases.
    EXPECT_TRUE(!t.hidden.empty() || !t.reward.cases.empty());
    std::vector<TaskFile> mistaken = t.MistakenSolution();
    ASSERT_EQ(mistaken.size(), t.solution.size());
    int changed = 0;
    for (size_t i = 0; i < mistaken.size(); ++i) {
      changed += mistaken[i].content != t.solution[i].content;
    }
    EXPECT_EQ(changed, 1);
  }
  EXPECT_GE(languages.size(), 3u);
  for (const auto& [language, n] : languages) {
    std::printf("%-12s %d tasks\n", language.c_str(), n);
  }
}

// ---------------------------------------------------------------------------
// Validation: every shipped task in real sandboxes.

std::vector<client::reward::FileToAdd> Overlay(
    const std::vector<TaskFile>& base, const std::vector<TaskFile>& over) {
  std::map<std::string, const TaskFile*> by_path;
  for (const TaskFile& f : base) by_path[f.path] = &f;
  for (const TaskFile& f : over) by_path[f.path] = &f;
  std::vector<client::reward::FileToAdd> out;
  for (const auto& [path, f] : by_path)
    out.push_back({f->path, f->content, f->mode});
  return out;
}

struct PhaseResult {
  client::reward::RewardResult result;
  absl::Status setup;  // creating the sandbox or writing files
};

class TaskSetValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    DSEC_REQUIRE_HOST_FEATURE(geteuid() == 0 && sandbox::CgroupsAvailable(),
                              "root with cgroups");
    sandbox::RuntimeOptions options;
    options.state_dir = dir_.Join("state");
    options.init_path = dsec::testing::BinDir() + "/dsec-init";
    options.netns_pool_target = 0;
    ASSERT_OK_AND_ASSIGN(runtime_, sandbox::Runtime::Create(options));
  }

  // Writes `files` into a fresh sandbox and evaluates the task's reward.
  PhaseResult Score(const Task& task,
                    const std::vector<client::reward::FileToAdd>& files) {
    PhaseResult out;
    sandbox::SandboxSpec spec;  // workdir /root, host /usr bound read-only
    absl::StatusOr<std::unique_ptr<sandbox::Sandbox>> sb =
        runtime_->CreateSandbox(spec);
    if (!sb.ok()) {
      out.setup = sb.status();
      return out;
    }
    std::shared_ptr<sandbox::Sandbox> shared = std::move(*sb);
    client::LocalSandboxIo io(shared);
    for (const client::reward::FileToAdd& f : files) {
      out.setup = io.WriteFile(f.path, f.content, f.mode);
      if (!out.setup.ok()) return out;
    }
    out.result = client::reward::Evaluate(io, task.reward);
    (void)shared->Destroy();
    return out;
  }

  dsec::testing::TempDir dir_;
  std::unique_ptr<sandbox::Runtime> runtime_;
};

std::string Describe(const PhaseResult& p) {
  if (!p.setup.ok()) return absl::StrCat("setup failed: ", p.setup.ToString());
  const client::reward::RewardResult& r = p.result;
  return absl::StrCat(
      client::reward::EvalStateName(r.state), " reward=", r.reward,
      " reason=", r.reason,
      r.status.ok() ? "" : " status=", r.status.ok() ? "" : r.status.ToString(),
      "\n--- output tail\n", r.output_tail);
}

TEST_F(TaskSetValidation, StartFailsSolutionPassesMistakeIsPartial) {
  ASSERT_OK_AND_ASSIGN(std::vector<Task> set, LoadTaskSet(DefaultTaskDir()));
  ASSERT_GE(set.size(), 30u);
  struct Row {
    PhaseResult start, solution, mistake;
  };
  std::vector<Row> rows(set.size());
  std::atomic<size_t> next{0};
  absl::Time begin = absl::Now();
  const int threads = std::max(
      2,
      std::min(6, static_cast<int>(std::thread::hardware_concurrency()) * 2));
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i) {
    pool.emplace_back([&] {
      for (size_t k = next++; k < set.size(); k = next++) {
        const Task& t = set[k];
        rows[k].start = Score(t, Overlay(t.files, {}));
        rows[k].solution = Score(t, Overlay(t.files, t.solution));
        rows[k].mistake = Score(t, Overlay(t.files, t.MistakenSolution()));
      }
    });
  }
  for (std::thread& th : pool) th.join();

  int partial = 0;
  std::printf("%-22s %-10s %-26s %-10s %s\n", "task", "language", "start",
              "solution", "mistake");
  for (size_t k = 0; k < set.size(); ++k) {
    const Task& t = set[k];
    const Row& r = rows[k];
    auto cell = [](const PhaseResult& p) {
      if (!p.setup.ok()) return std::string("SETUP-ERROR");
      return absl::StrFormat("%.2f %s", p.result.reward,
                             client::reward::EvalStateName(p.result.state));
    };
    std::printf("%-22s %-10s %-26s %-10s %s\n", t.id.c_str(),
                t.language.c_str(), cell(r.start).c_str(),
                cell(r.solution).c_str(), cell(r.mistake).c_str());
    SCOPED_TRACE(t.id);
    ASSERT_THAT(r.start.setup, IsOk());
    ASSERT_THAT(r.solution.setup, IsOk());
    ASSERT_THAT(r.mistake.setup, IsOk());
    // Starting tree: scored below 1, or the program failed as a whole (a
    // compile error, a stub that crashes) -- never unparseable or infra.
    EXPECT_TRUE(r.start.result.state == EvalState::kScored ||
                r.start.result.state == EvalState::kProgramFailed)
        << "start: " << Describe(r.start);
    EXPECT_LT(r.start.result.reward, 1.0) << "start: " << Describe(r.start);
    EXPECT_EQ(r.solution.result.state, EvalState::kScored)
        << "solution: " << Describe(r.solution);
    EXPECT_EQ(r.solution.result.reward, 1.0)
        << "solution: " << Describe(r.solution);
    EXPECT_TRUE(r.mistake.result.usable())
        << "mistake: " << Describe(r.mistake);
    EXPECT_GE(r.mistake.result.reward, 0.0)
        << "mistake: " << Describe(r.mistake);
    EXPECT_LT(r.mistake.result.reward, 1.0)
        << "mistake: " << Describe(r.mistake);
    // The scripted mistake is meant to be partial credit.
    EXPECT_GT(r.mistake.result.reward, 0.0)
        << "mistake: " << Describe(r.mistake);
    if (r.mistake.result.reward > 0) ++partial;
  }
  std::printf("%zu tasks, %d with partial mistake reward, %d threads, %.1fs\n",
              set.size(), partial, threads,
              absl::ToDoubleSeconds(absl::Now() - begin));
}

}  // namespace
}  // namespace dsec::tasks
