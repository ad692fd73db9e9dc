#include "rollout/tasks/task_set.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/errno_status.h"
#include "common/status_macros.h"
#include "common/unique_fd.h"
#include "nlohmann/json.hpp"

#ifndef DSEC_TASKS_DIR
#define DSEC_TASKS_DIR ""
#endif

namespace dsec::tasks {
namespace {

namespace fs = std::filesystem;
using client::Command;
using client::reward::ParserKind;
using client::reward::RewardPolicy;
using client::reward::TestCase;
using Json = nlohmann::json;

constexpr int kMaxTimeoutSeconds = 3600;

absl::Status Invalid(absl::string_view file, absl::string_view field,
                     absl::string_view what) {
  if (field.empty())
    return absl::InvalidArgumentError(absl::StrCat(file, ": ", what));
  return absl::InvalidArgumentError(
      absl::StrCat(file, ": ", field, ": ", what));
}

// Reads a regular file of at most kMaxTaskFileBytes without following a
// symlink in its last component. *mode gets the permission bits.
absl::StatusOr<std::string> ReadTaskFile(const std::string& path,
                                         uint32_t* mode = nullptr) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) {
    if (errno == ELOOP) return Invalid(path, "", "is a symlink");
    return ErrnoStatus(absl::StrCat("open ", path));
  }
  struct stat st;
  if (fstat(fd.get(), &st) != 0)
    return ErrnoStatus(absl::StrCat("stat ", path));
  if (!S_ISREG(st.st_mode)) return Invalid(path, "", "not a regular file");
  if (st.st_size > kMaxTaskFileBytes) {
    return Invalid(path, "",
                   absl::StrCat("larger than ", kMaxTaskFileBytes, " bytes"));
  }
  if (mode != nullptr) *mode = (st.st_mode & S_IXUSR) ? 0755 : 0644;
  std::string data;
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(absl::StrCat("read ", path));
    }
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
    if (static_cast<int64_t>(data.size()) > kMaxTaskFileBytes) {
      return Invalid(path, "", "grew past the size limit while read");
    }
  }
  return data;
}

// Every regular file under `root` (recursively), sorted by relative path.
// A missing root is an empty tree when `optional`, else INVALID_ARGUMENT.
absl::StatusOr<std::vector<TaskFile>> ReadTree(const std::string& root,
                                               bool optional) {
  std::vector<TaskFile> out;
  std::error_code ec;
  fs::file_status top = fs::symlink_status(root, ec);
  if (ec || !fs::exists(top)) {
    if (optional) return out;
    return Invalid(root, "", "missing directory");
  }
  if (!fs::is_directory(top)) return Invalid(root, "", "not a directory");
  fs::recursive_directory_iterator it(root, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const fs::path& p = it->path();
    fs::file_status st = it->symlink_status(ec);
    if (ec) break;
    std::string rel = fs::relative(p, root, ec).generic_string();
    if (ec) break;
    if (fs::is_symlink(st)) {
      return Invalid(p.string(), "",
                     "is a symlink (could point outside the task)");
    }
    if (fs::is_directory(st)) continue;
    if (!fs::is_regular_file(st))
      return Invalid(p.string(), "", "not a regular file");
    TaskFile f;
    f.path = std::move(rel);
    ASSIGN_OR_RETURN(f.content, ReadTaskFile(p.string(), &f.mode));
    out.push_back(std::move(f));
  }
  if (ec) {
    return absl::InternalError(absl::StrCat("walk ", root, ": ", ec.message()));
  }
  std::sort(out.begin(), out.end(), [](const TaskFile& a, const TaskFile& b) {
    return a.path < b.path;
  });
  return out;
}

// A relative path that stays inside the task: not absolute, no "..", no
// empty or "." component.
bool IsSafeRelativePath(absl::string_view path) {
  if (path.empty() || path.front() == '/') return false;
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part.empty() || part == "." || part == "..") return false;
  }
  return path.find('\0') == absl::string_view::npos;
}

absl::StatusOr<Json> ParseJsonFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadTaskFile(path));
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Invalid(path, "", "not valid JSON");
  if (!j.is_object()) return Invalid(path, "", "not a JSON object");
  return j;
}

// Field readers: a missing required field, or one of the wrong type, is
// INVALID_ARGUMENT naming `file` and `name`.
class Fields {
 public:
  Fields(const std::string& file, std::string prefix, const Json& obj)
      : file_(file), prefix_(std::move(prefix)), obj_(obj) {}

  std::string Name(absl::string_view key) const {
    return absl::StrCat(prefix_, key);
  }

  absl::StatusOr<std::string> String(absl::string_view key, bool required,
                                     bool non_empty = false) const {
    auto it = obj_.find(std::string(key));
    if (it == obj_.end()) {
      if (required) return Invalid(file_, Name(key), "missing");
      return std::string();
    }
    if (!it->is_string()) return Invalid(file_, Name(key), "not a string");
    std::string s = it->get<std::string>();
    if (non_empty && s.empty()) return Invalid(file_, Name(key), "empty");
    return s;
  }

  absl::StatusOr<std::optional<std::string>> OptionalString(
      absl::string_view key) const {
    auto it = obj_.find(std::string(key));
    if (it == obj_.end() || it->is_null()) return std::optional<std::string>();
    if (!it->is_string()) return Invalid(file_, Name(key), "not a string");
    return std::optional<std::string>(it->get<std::string>());
  }

  const Json* Find(absl::string_view key) const {
    auto it = obj_.find(std::string(key));
    return it == obj_.end() ? nullptr : &*it;
  }

  const std::string& file() const { return file_; }

 private:
  const std::string& file_;
  std::string prefix_;
  const Json& obj_;
};

absl::Status CheckOneOf(const std::string& file, const std::string& field,
                        const std::string& value,
                        std::initializer_list<absl::string_view> allowed) {
  for (absl::string_view a : allowed) {
    if (value == a) return absl::OkStatus();
  }
  return Invalid(file, field, absl::StrCat("unknown value '", value, "'"));
}

absl::StatusOr<ParserKind> ParseParser(const std::string& file,
                                       const std::string& value) {
  if (value == "pytest") return ParserKind::kPytest;
  if (value == "exit_code") return ParserKind::kExitCode;
  if (value == "unittest") return ParserKind::kUnittest;
  if (value == "generic") return ParserKind::kGeneric;
  return Invalid(file, "test.parser",
                 absl::StrCat("unknown parser '", value,
                              "' (pytest, exit_code, unittest, generic)"));
}

// task.json "test" → the reward spec (without the hidden files).
absl::Status ParseTest(const std::string& file, const Json& root,
                       client::reward::RewardSpec* spec) {
  auto it = root.find("test");
  if (it == root.end()) return Invalid(file, "test", "missing");
  if (!it->is_object()) return Invalid(file, "test", "not an object");
  Fields test(file, "test.", *it);

  const Json* timeout = test.Find("timeout_s");
  if (timeout == nullptr) return Invalid(file, "test.timeout_s", "missing");
  if (!timeout->is_number() || timeout->get<double>() <= 0 ||
      timeout->get<double>() > kMaxTimeoutSeconds) {
    return Invalid(
        file, "test.timeout_s",
        absl::StrCat("not a number in (0, ", kMaxTimeoutSeconds, "]"));
  }
  absl::Duration limit = absl::Seconds(timeout->get<double>());
  auto shell = [&](std::string script) {
    Command c = Command::Shell(std::move(script));
    c.timeout = limit;
    return c;
  };

  ASSIGN_OR_RETURN(std::string command, test.String("command", true, true));
  spec->test_command = shell(std::move(command));
  ASSIGN_OR_RETURN(std::optional<std::string> setup,
                   test.OptionalString("setup"));
  if (setup.has_value()) {
    if (setup->empty()) return Invalid(file, "test.setup", "empty");
    spec->setup = shell(std::move(*setup));
  }
  ASSIGN_OR_RETURN(std::string parser, test.String("parser", true));
  ASSIGN_OR_RETURN(spec->parser, ParseParser(file, parser));
  spec->policy = RewardPolicy::kFractionPassed;

  if (const Json* cases = test.Find("cases"); cases != nullptr) {
    if (!cases->is_array()) return Invalid(file, "test.cases", "not an array");
    for (size_t i = 0; i < cases->size(); ++i) {
      const Json& c = (*cases)[i];
      std::string prefix = absl::StrCat("test.cases[", i, "].");
      if (!c.is_object()) {
        return Invalid(file, absl::StrCat("test.cases[", i, "]"),
                       "not an object");
      }
      Fields f(file, prefix, c);
      TestCase tc;
      ASSIGN_OR_RETURN(tc.name, f.String("name", true, true));
      ASSIGN_OR_RETURN(tc.stdin_data, f.OptionalString("stdin"));
      ASSIGN_OR_RETURN(tc.expected_stdout, f.OptionalString("expected_stdout"));
      ASSIGN_OR_RETURN(std::optional<std::string> cmd,
                       f.OptionalString("command"));
      if (cmd.has_value()) {
        if (cmd->empty()) return Invalid(file, f.Name("command"), "empty");
        tc.command = shell(std::move(*cmd));
      }
      for (const TestCase& other : spec->cases) {
        if (other.name == tc.name) {
          return Invalid(file, f.Name("name"),
                         absl::StrCat("duplicate case '", tc.name, "'"));
        }
      }
      spec->cases.push_back(std::move(tc));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseMistake(const std::string& file,
                          const std::vector<TaskFile>& solution,
                          Task::Mistake* m) {
  ASSIGN_OR_RETURN(Json j, ParseJsonFile(file));
  Fields f(file, "", j);
  ASSIGN_OR_RETURN(m->file, f.String("file", true, true));
  ASSIGN_OR_RETURN(m->old_text, f.String("old", true, true));
  ASSIGN_OR_RETURN(m->new_text, f.String("new", true));
  ASSIGN_OR_RETURN(m->error_note, f.String("error_note", true, true));
  if (!IsSafeRelativePath(m->file)) {
    return Invalid(file, "file",
                   absl::StrCat("path '", m->file,
                                "' escapes the task (absolute or '..')"));
  }
  if (m->old_text == m->new_text) return Invalid(file, "new", "same as old");
  auto it = std::find_if(solution.begin(), solution.end(),
                         [&](const TaskFile& s) { return s.path == m->file; });
  if (it == solution.end()) {
    return Invalid(file, "file",
                   absl::StrCat("'", m->file, "' is not a solution file"));
  }
  size_t count = 0;
  for (size_t pos = it->content.find(m->old_text);
       pos != std::string::npos && count < 2;
       pos = it->content.find(m->old_text, pos + 1)) {
    ++count;
  }
  if (count != 1) {
    return Invalid(file, "old",
                   absl::StrCat("found ", count == 0 ? "0" : "more than 1",
                                " times in solution/", m->file,
                                " (must be exactly once)"));
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<TaskFile> Task::MistakenSolution() const {
  std::vector<TaskFile> out = solution;
  for (TaskFile& f : out) {
    if (f.path != mistake.file) continue;
    size_t pos = f.content.find(mistake.old_text);
    if (pos != std::string::npos) {
      f.content.replace(pos, mistake.old_text.size(), mistake.new_text);
    }
  }
  return out;
}

absl::StatusOr<Task> LoadTask(const std::string& task_dir) {
  std::string dir = task_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const std::string json_file = dir + "/task.json";
  ASSIGN_OR_RETURN(Json root, ParseJsonFile(json_file));
  Fields f(json_file, "", root);

  Task task;
  ASSIGN_OR_RETURN(task.id, f.String("id", true, true));
  std::string base = fs::path(dir).filename().string();
  if (task.id != base) {
    return Invalid(
        json_file, "id",
        absl::StrCat("'", task.id, "' differs from the directory name '", base,
                     "'"));
  }
  ASSIGN_OR_RETURN(task.language, f.String("language", true));
  RETURN_IF_ERROR(CheckOneOf(json_file, "language", task.language,
                             {"python", "c", "bash", "javascript"}));
  ASSIGN_OR_RETURN(task.difficulty, f.String("difficulty", true));
  RETURN_IF_ERROR(CheckOneOf(json_file, "difficulty", task.difficulty,
                             {"easy", "medium", "hard"}));
  ASSIGN_OR_RETURN(task.statement, f.String("statement", true, true));
  if (const Json* hints = f.Find("hints"); hints != nullptr) {
    if (!hints->is_array()) return Invalid(json_file, "hints", "not an array");
    for (const Json& h : *hints) {
      if (!h.is_string()) return Invalid(json_file, "hints", "not a string");
      task.hints.push_back(h.get<std::string>());
    }
  }
  RETURN_IF_ERROR(ParseTest(json_file, root, &task.reward));

  ASSIGN_OR_RETURN(task.files, ReadTree(dir + "/files", /*optional=*/false));
  // hidden/ may be absent (git keeps no empty directory): case-only tasks.
  ASSIGN_OR_RETURN(task.hidden, ReadTree(dir + "/hidden", /*optional=*/true));
  ASSIGN_OR_RETURN(task.solution,
                   ReadTree(dir + "/solution", /*optional=*/false));
  if (task.solution.empty()) {
    return Invalid(dir + "/solution", "", "holds no file");
  }
  RETURN_IF_ERROR(
      ParseMistake(dir + "/mistake.json", task.solution, &task.mistake));

  for (const TaskFile& h : task.hidden) {
    task.reward.files.push_back({h.path, h.content, h.mode});
  }
  return task;
}

absl::StatusOr<std::vector<Task>> LoadTaskSet(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat("task set ", dir, ": not a directory"));
  }
  std::vector<std::string> names;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (absl::StartsWith(name, ".")) continue;
    fs::file_status st = it->symlink_status(ec);
    if (ec) break;
    if (fs::is_directory(st)) names.push_back(std::move(name));
  }
  if (ec)
    return absl::InternalError(absl::StrCat("list ", dir, ": ", ec.message()));
  std::sort(names.begin(), names.end());
  std::vector<Task> tasks;
  tasks.reserve(names.size());
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(Task t, LoadTask(absl::StrCat(dir, "/", name)));
    tasks.push_back(std::move(t));
  }
  return tasks;
}

std::string DefaultTaskDir() {
  const char* env = std::getenv("DSEC_TASKS_DIR");
  if (env != nullptr && env[0] != '\0') return env;
  return DSEC_TASKS_DIR;
}

}  // namespace dsec::tasks
