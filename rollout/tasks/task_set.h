// The shipped set of small programming tasks for agentic RL rollouts, and
// its loader. A task is a directory:
//
//   <id>/task.json     {"id", "language", "difficulty", "statement",
//                       "test": {"command", "parser", "timeout_s",
//                                "setup"?, "cases"?: [{"name", "stdin"?,
//                                "expected_stdout"?, "command"?}]},
//                       "hints"?: [string]}
//   <id>/files/        the starting tree the model is given
//   <id>/hidden/       hidden tests, written only at scoring time (optional)
//   <id>/solution/     reference files that, written over files/, pass
//   <id>/mistake.json  {"file", "old", "new", "error_note"}: a realistic bug
//                       that makes the solution pass some hidden tests only
//
// Every path is relative to the sandbox's workdir. The reward spec runs
// `setup` then `command` (or each case) with /bin/sh -c, each under
// `timeout_s`, and scores the fraction of tests passed.
//
// Task directories are input from disk and are checked: a malformed task is
// INVALID_ARGUMENT naming the file and the field, never a crash. Symlinks
// and other non-regular files are refused (a link could point outside the
// task), as are files over kMaxTaskFileBytes.
//
// Functions are thread-safe (they share no state); Task is a plain value.
#ifndef DSEC_ROLLOUT_TASKS_TASK_SET_H_
#define DSEC_ROLLOUT_TASKS_TASK_SET_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/reward.h"

namespace dsec::tasks {

inline constexpr int64_t kMaxTaskFileBytes = int64_t{1} << 20;

struct TaskFile {
  std::string path;  // relative, '/'-separated
  std::string content;
  uint32_t mode = 0644;  // 0755 when the file on disk is executable
};

struct Task {
  std::string id, language, difficulty, statement;
  std::vector<std::string> hints;
  std::vector<TaskFile> files;     // starting tree, sorted by path
  std::vector<TaskFile> hidden;    // hidden tests, sorted by path
  std::vector<TaskFile> solution;  // reference solution files, sorted by path
  struct Mistake {
    std::string file, old_text, new_text, error_note;
  } mistake;
  // From task.json "test": the hidden files as spec.files, setup,
  // test_command (Command::Shell with the timeout), parser, cases; policy
  // kFractionPassed.
  client::reward::RewardSpec reward;

  // The solution files with the mistake applied (mistake.old_text occurs
  // exactly once in mistake.file, which LoadTask checked).
  std::vector<TaskFile> MistakenSolution() const;
};

// Loads one task directory; its base name must equal task.json's "id".
absl::StatusOr<Task> LoadTask(const std::string& task_dir);

// Loads every task under `dir` (each subdirectory not starting with '.'),
// sorted by id. NOT_FOUND when `dir` is missing; the first malformed task's
// INVALID_ARGUMENT otherwise.
absl::StatusOr<std::vector<Task>> LoadTaskSet(const std::string& dir);

// The shipped task set: $DSEC_TASKS_DIR when set and non-empty, else the
// path compiled in (the source tree's rollout/tasks/data).
std::string DefaultTaskDir();

}  // namespace dsec::tasks

#endif  // DSEC_ROLLOUT_TASKS_TASK_SET_H_
