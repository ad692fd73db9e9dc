#include "client/tools.h"

#include <signal.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <map>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dsec::client {
namespace {

// ---- arguments: one table per tool drives validation and the schema -------

enum class Type { kString, kInteger, kNumber, kBoolean };

absl::string_view TypeName(Type type) {
  switch (type) {
    case Type::kString:
      return "string";
    case Type::kInteger:
      return "integer";
    case Type::kNumber:
      return "number";
    case Type::kBoolean:
      return "boolean";
  }
  return "?";
}

struct ParamSpec {
  std::string name;
  Type type;
  bool required;
  std::string description;
};

// Validated arguments of one call.
class Args {
 public:
  void Set(absl::string_view name, const nlohmann::json* value) {
    values_[std::string(name)] = value;
  }
  bool Has(absl::string_view name) const {
    return values_.count(std::string(name)) > 0;
  }
  std::string Str(absl::string_view name, std::string fallback = "") const {
    const nlohmann::json* v = Get(name);
    return v ? v->get<std::string>() : fallback;
  }
  int64_t Int(absl::string_view name, int64_t fallback) const {
    const nlohmann::json* v = Get(name);
    if (v == nullptr) return fallback;
    // Validated: an integer, or a float with an integral value below 1e15.
    return v->is_number_integer() ? v->get<int64_t>()
                                  : static_cast<int64_t>(v->get<double>());
  }
  double Num(absl::string_view name, double fallback) const {
    const nlohmann::json* v = Get(name);
    return v ? v->get<double>() : fallback;
  }
  bool Bool(absl::string_view name, bool fallback) const {
    const nlohmann::json* v = Get(name);
    return v ? v->get<bool>() : fallback;
  }

 private:
  const nlohmann::json* Get(absl::string_view name) const {
    auto it = values_.find(std::string(name));
    return it == values_.end() ? nullptr : it->second;
  }
  std::map<std::string, const nlohmann::json*> values_;
};

using ToolFn = ToolResult (*)(SandboxIo& io, const ToolLimits& limits,
                              const Args& args);

struct ToolDef {
  std::string name;
  std::string description;
  std::vector<ParamSpec> params;
  ToolFn run;
};

bool HasType(const nlohmann::json& v, Type type) {
  switch (type) {
    case Type::kString:
      return v.is_string();
    case Type::kInteger:
      return v.is_number_integer() ||
             (v.is_number_float() && std::abs(v.get<double>()) < 1e15 &&
              std::trunc(v.get<double>()) == v.get<double>());
    case Type::kNumber:
      return v.is_number();
    case Type::kBoolean:
      return v.is_boolean();
  }
  return false;
}

std::string Shown(const nlohmann::json& v) {
  std::string text =
      v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return text.size() > 40 ? text.substr(0, 37) + "..." : text;
}

// The call's arguments checked against `def`; on failure, the message for
// the model.
absl::StatusOr<Args> Validate(const ToolDef& def, const dsml::ToolCall& call) {
  Args args;
  for (const dsml::Parameter& p : call.params) {
    auto spec =
        std::find_if(def.params.begin(), def.params.end(),
                     [&](const ParamSpec& s) { return s.name == p.name; });
    if (spec == def.params.end()) {
      std::vector<std::string> names;
      for (const ParamSpec& s : def.params) names.push_back(s.name);
      return absl::InvalidArgumentError(
          absl::StrCat("unknown parameter \"", p.name, "\" for tool ", def.name,
                       "; its parameters are: ", absl::StrJoin(names, ", ")));
    }
    if (!HasType(p.value, spec->type)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "parameter \"", p.name, "\" of tool ", def.name, " must be ",
          spec->type == Type::kInteger ? "an " : "a ", TypeName(spec->type),
          ", got ", p.value.type_name(), " ", Shown(p.value),
          spec->type == Type::kString
              ? ""
              : " (write non-string values with string=\"false\")"));
    }
    args.Set(p.name, &p.value);
  }
  for (const ParamSpec& s : def.params) {
    if (s.required && !args.Has(s.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tool ", def.name, " needs parameter \"", s.name, "\" (",
                       TypeName(s.type), ")"));
    }
  }
  return args;
}

nlohmann::json Schema(const ToolDef& def) {
  nlohmann::json schema = {{"type", "object"},
                           {"properties", nlohmann::json::object()},
                           {"required", nlohmann::json::array()},
                           {"additionalProperties", false}};
  for (const ParamSpec& p : def.params) {
    schema["properties"][p.name] = {{"type", TypeName(p.type)},
                                    {"description", p.description}};
    if (p.required) schema["required"].push_back(p.name);
  }
  return schema;
}

// ---- results ----------------------------------------------------------------

ToolResult Ok(std::string output) {
  ToolResult r;
  r.output = std::move(output);
  return r;
}

ToolResult Error(absl::string_view message) {
  ToolResult r;
  r.output = absl::StrCat("error: ", message);
  r.is_error = true;
  return r;
}

ToolResult Infra(absl::Status status) {
  ToolResult r;
  r.output = absl::StrCat(
      "error: the sandbox failed to run this tool (infrastructure): ",
      status.message());
  r.is_error = true;
  r.infra_status = std::move(status);
  return r;
}

// File errors the model caused are tool errors; anything else is infra.
ToolResult FromFileStatus(absl::Status status, absl::string_view path) {
  switch (status.code()) {
    case absl::StatusCode::kNotFound:
      return Error(absl::StrCat(path, ": no such file or directory"));
    case absl::StatusCode::kFailedPrecondition:  // a directory
      return Error(absl::StrCat(path, " is a directory; use list_files"));
    case absl::StatusCode::kPermissionDenied:
      return Error(absl::StrCat(path, ": permission denied"));
    default:
      return Infra(std::move(status));
  }
}

// Appends `line` on a line of its own.
void AppendLine(std::string& out, absl::string_view line) {
  if (!out.empty() && out.back() != '\n') out += '\n';
  absl::StrAppend(&out, line, "\n");
}

std::string Finished(std::string out) {
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// The longest prefix of `s` of at most `max` bytes that does not split a
// UTF-8 character.
absl::string_view CutUtf8(absl::string_view s, size_t max) {
  if (s.size() <= max) return s;
  size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

// `text` cut to the output limit, with a note when cut.
std::string Capped(absl::string_view text, const ToolLimits& limits) {
  absl::string_view shown =
      CutUtf8(text, static_cast<size_t>(limits.max_output_bytes));
  std::string out(shown);
  if (shown.size() < text.size()) {
    AppendLine(out, absl::StrCat("[output truncated: ", shown.size(), " of ",
                                 text.size(), " bytes shown]"));
  }
  return out;
}

std::string Ending(const ExecOutcome& o, absl::Duration timeout) {
  switch (o.kind) {
    case ExitKind::kExited:
      return absl::StrCat("[exit code: ", o.exit_code, "]");
    case ExitKind::kTimedOut:
      return absl::StrCat("[timed out after ", absl::FormatDuration(timeout),
                          "; the command was killed]");
    case ExitKind::kSignaled: {
      const char* abbrev = sigabbrev_np(o.signal);
      return absl::StrCat("[killed by signal ", o.signal,
                          abbrev ? absl::StrCat(" (SIG", abbrev, ")") : "",
                          "]");
    }
    case ExitKind::kOomKilled:
      return "[killed: out of memory]";
    case ExitKind::kPidsLimit:
      return "[killed: process limit reached]";
    case ExitKind::kSeccompViolation:
      return "[killed: forbidden system call]";
    case ExitKind::kCpuLimit:
      return "[killed: CPU time limit reached]";
  }
  return "[ended]";
}

// bash and python: stdout, then stderr, then how it ended.
ToolResult ExecResult(const ExecOutcome& o, absl::Duration timeout,
                      absl::string_view note) {
  std::string out = o.stdout_data;
  if (o.stdout_truncated) {
    AppendLine(out, absl::StrCat("[stdout truncated: first ",
                                 o.stdout_data.size(), " bytes shown]"));
  }
  if (!o.stderr_data.empty() || o.stderr_truncated) {
    AppendLine(out, "[stderr]");
    absl::StrAppend(&out, o.stderr_data);
    if (o.stderr_truncated) {
      AppendLine(out, absl::StrCat("[stderr truncated: first ",
                                   o.stderr_data.size(), " bytes shown]"));
    }
  }
  if (!note.empty()) AppendLine(out, note);
  AppendLine(out, Ending(o, timeout));
  ToolResult r = Ok(Finished(std::move(out)));
  r.is_error = !o.ok();
  return r;
}

// ---- the tools --------------------------------------------------------------

ToolResult RunProgram(SandboxIo& io, const ToolLimits& limits, const Args& args,
                      Command command, absl::string_view code) {
  if (static_cast<int64_t>(code.size()) > limits.max_code_bytes) {
    return Error(absl::StrCat("the code is ", code.size(),
                              " bytes; the limit is ", limits.max_code_bytes,
                              ". Write it to a file with write_file and run "
                              "that instead."));
  }
  std::string note;
  absl::Duration timeout = limits.default_timeout;
  if (args.Has("timeout")) {
    double seconds = args.Num("timeout", 0);
    if (!(seconds > 0)) {
      return Error("timeout must be a positive number of seconds");
    }
    timeout = absl::Seconds(seconds);
    if (timeout > limits.max_timeout) {
      timeout = limits.max_timeout;
      note = absl::StrCat("[timeout lowered to the maximum, ",
                          absl::FormatDuration(timeout), "]");
    }
  }
  command.timeout = timeout;
  command.max_output_bytes = limits.max_output_bytes;
  absl::StatusOr<ExecOutcome> outcome = io.Run(command);
  if (!outcome.ok()) return Infra(outcome.status());
  return ExecResult(*outcome, timeout, note);
}

ToolResult Bash(SandboxIo& io, const ToolLimits& limits, const Args& args) {
  std::string script = args.Str("command");
  return RunProgram(io, limits, args, Command::Argv({"bash", "-c", script}),
                    script);
}

ToolResult Python(SandboxIo& io, const ToolLimits& limits, const Args& args) {
  Command command = Command::Argv({"python3", "-"});
  command.stdin_data = args.Str("code");
  return RunProgram(io, limits, args, command, command.stdin_data);
}

ToolResult ReadFileTool(SandboxIo& io, const ToolLimits& limits,
                        const Args& args) {
  std::string path = args.Str("path");
  int64_t offset = args.Int("offset", 1);
  int64_t limit = args.Int("limit", limits.default_read_lines);
  if (offset < 1) return Error("offset is a line number and starts at 1");
  if (limit < 1) return Error("limit must be at least 1 line");
  bool truncated = false;
  absl::StatusOr<std::string> data =
      io.ReadFile(path, limits.max_file_bytes, &truncated);
  if (!data.ok()) return FromFileStatus(data.status(), path);
  absl::string_view text = *data;
  if (text.find('\0') != absl::string_view::npos) {
    return Error(absl::StrCat(path,
                              " looks like a binary file (it has NUL "
                              "bytes); inspect it with bash, e.g. xxd"));
  }
  if (text.empty()) return Ok("[the file is empty]");
  int64_t total = std::count(text.begin(), text.end(), '\n') +
                  (text.back() == '\n' ? 0 : 1);
  if (offset > total) {
    return Error(absl::StrCat("offset ", offset, " is past the end of ", path,
                              ", which has ", total, " lines"));
  }
  limit = std::min(limit, total);
  // Byte range of lines [offset, offset + limit).
  size_t start = 0, line = 1;
  while (line < static_cast<size_t>(offset)) {
    start = text.find('\n', start) + 1;
    ++line;
  }
  size_t end = start;
  int64_t last = offset - 1;
  while (end < text.size() && last < offset - 1 + limit) {
    size_t nl = text.find('\n', end);
    end = nl == absl::string_view::npos ? text.size() : nl + 1;
    ++last;
  }
  std::string out = Capped(text.substr(start, end - start), limits);
  if (offset > 1 || last < total) {
    AppendLine(
        out, absl::StrCat("[lines ", offset, "-", last, " of ", total, " shown",
                          last < total
                              ? absl::StrCat("; offset=", last + 1, " reads on")
                              : "",
                          "]"));
  }
  if (truncated) {
    AppendLine(out,
               absl::StrCat("[the file is larger than ", limits.max_file_bytes,
                            " bytes; only that much was read]"));
  }
  return Ok(Finished(std::move(out)));
}

ToolResult WriteFileTool(SandboxIo& io, const ToolLimits& limits,
                         const Args& args) {
  std::string path = args.Str("path");
  std::string content = args.Str("content");
  if (static_cast<int64_t>(content.size()) > limits.max_file_bytes) {
    return Error(absl::StrCat("content is ", content.size(),
                              " bytes; the limit is ", limits.max_file_bytes));
  }
  absl::Status status = io.WriteFile(path, content);
  if (!status.ok()) return FromFileStatus(std::move(status), path);
  return Ok(absl::StrCat("wrote ", content.size(), " bytes to ", path));
}

size_t CountOccurrences(absl::string_view text, absl::string_view needle) {
  size_t count = 0;
  for (size_t at = text.find(needle); at != absl::string_view::npos;
       at = text.find(needle, at + needle.size())) {
    ++count;
  }
  return count;
}

ToolResult EditFileTool(SandboxIo& io, const ToolLimits& limits,
                        const Args& args) {
  std::string path = args.Str("path");
  std::string old_string = args.Str("old_string");
  std::string new_string = args.Str("new_string");
  bool replace_all = args.Bool("replace_all", false);
  if (old_string.empty()) {
    return Error("old_string is empty; to create a file use write_file");
  }
  if (old_string == new_string) {
    return Error("old_string and new_string are the same; nothing to do");
  }
  bool truncated = false;
  absl::StatusOr<std::string> data =
      io.ReadFile(path, limits.max_file_bytes, &truncated);
  if (!data.ok()) return FromFileStatus(data.status(), path);
  if (truncated) {
    return Error(absl::StrCat(path, " is larger than ", limits.max_file_bytes,
                              " bytes; edit it with bash instead"));
  }
  size_t count = CountOccurrences(*data, old_string);
  if (count == 0) {
    return Error(absl::StrCat("old_string was not found in ", path,
                              "; it must match the file exactly, whitespace "
                              "and indentation included"));
  }
  if (count > 1 && !replace_all) {
    return Error(absl::StrCat(
        "old_string occurs ", count, " times in ", path,
        "; include more surrounding lines to make it unique, or pass "
        "replace_all=true to replace every occurrence"));
  }
  std::string edited;
  size_t from = 0;
  for (size_t at = data->find(old_string); at != std::string::npos;
       at = data->find(old_string, from)) {
    absl::StrAppend(&edited, absl::string_view(*data).substr(from, at - from),
                    new_string);
    from = at + old_string.size();
  }
  absl::StrAppend(&edited, absl::string_view(*data).substr(from));
  if (static_cast<int64_t>(edited.size()) > limits.max_file_bytes) {
    return Error(absl::StrCat("the edited file would be ", edited.size(),
                              " bytes; the limit is ", limits.max_file_bytes));
  }
  // Keep the file's mode (an edited script stays executable).
  Command stat = Command::Argv({"stat", "-c", "%a", "--", path});
  stat.timeout = limits.fs_timeout;
  absl::StatusOr<ExecOutcome> mode_out = io.Run(stat);
  if (!mode_out.ok()) return Infra(mode_out.status());
  uint32_t mode = 0644;
  if (mode_out->ok()) {
    mode = static_cast<uint32_t>(
        std::strtoul(mode_out->stdout_data.c_str(), nullptr, 8));
  }
  absl::Status status = io.WriteFile(path, edited, mode);
  if (!status.ok()) return FromFileStatus(std::move(status), path);
  return Ok(absl::StrCat("replaced ", count,
                         count == 1 ? " occurrence" : " occurrences", " in ",
                         path));
}

// Lists under $1 to depth $2, at most $3 entries, sorted, dirs with '/'.
constexpr char kListScript[] =
    "[ -e \"$1\" ] || exit 2\n"
    "[ -d \"$1\" ] || exit 3\n"
    "find -H \"$1\" -mindepth 1 -maxdepth \"$2\" \\( -type d -printf '%P/\\n' "
    "-o -printf '%P\\n' \\) 2>/dev/null | LC_ALL=C sort |\n"
    "  awk -v max=\"$3\" 'NR <= max { print } END { if (NR > max) printf "
    "\"[listing truncated: %d of %d entries shown]\\n\", max, NR }'\n";

ToolResult ListFiles(SandboxIo& io, const ToolLimits& limits,
                     const Args& args) {
  std::string path = args.Str("path", ".");
  int64_t depth = args.Int("depth", limits.default_list_depth);
  if (depth < 1 || depth > limits.max_list_depth) {
    return Error(
        absl::StrCat("depth must be between 1 and ", limits.max_list_depth));
  }
  Command command =
      Command::Argv({"sh", "-c", kListScript, "sh", path, absl::StrCat(depth),
                     absl::StrCat(limits.max_list_entries)});
  command.timeout = limits.fs_timeout;
  command.max_output_bytes = limits.max_output_bytes;
  absl::StatusOr<ExecOutcome> outcome = io.Run(command);
  if (!outcome.ok()) return Infra(outcome.status());
  const ExecOutcome& o = *outcome;
  if (o.kind == ExitKind::kExited && o.exit_code == 2) {
    return Error(absl::StrCat(path, ": no such file or directory"));
  }
  if (o.kind == ExitKind::kExited && o.exit_code == 3) {
    return Error(absl::StrCat(path, " is not a directory; use read_file"));
  }
  if (!o.ok()) {
    return Error(absl::StrCat("listing ", path, " failed ",
                              Ending(o, command.timeout), " ", o.stderr_data));
  }
  if (o.stdout_data.empty()) return Ok("[empty directory]");
  std::string out = o.stdout_data;
  if (o.stdout_truncated) {
    AppendLine(out, absl::StrCat("[output truncated: first ",
                                 o.stdout_data.size(), " bytes shown]"));
  }
  return Ok(Finished(std::move(out)));
}

ToolResult SearchFiles(SandboxIo& io, const ToolLimits& limits,
                       const Args& args) {
  std::string pattern = args.Str("pattern");
  std::string path = args.Str("path", ".");
  if (pattern.empty()) return Error("pattern is empty");
  std::vector<std::string> argv = {"grep", "-rnIE", "--color=never"};
  if (args.Has("include")) {
    argv.push_back(absl::StrCat("--include=", args.Str("include")));
  }
  argv.push_back("-e");
  argv.push_back(pattern);
  argv.push_back("--");
  argv.push_back(path);
  Command command = Command::Argv(std::move(argv));
  command.timeout = limits.fs_timeout;
  command.max_output_bytes = limits.max_output_bytes;
  absl::StatusOr<ExecOutcome> outcome = io.Run(command);
  if (!outcome.ok()) return Infra(outcome.status());
  const ExecOutcome& o = *outcome;
  bool exited = o.kind == ExitKind::kExited;
  if (exited && o.exit_code == 1 && o.stdout_data.empty()) {
    return Ok(absl::StrCat("no matches for /", pattern, "/ in ", path));
  }
  if (!(exited && o.exit_code <= 2) ||
      (o.exit_code == 2 && o.stdout_data.empty())) {
    return Error(absl::StrCat("search failed ", Ending(o, command.timeout),
                              ": ", o.stderr_data));
  }
  // Keep whole lines, at most max_search_matches of them.
  absl::string_view text = o.stdout_data;
  size_t lines = 0, end = 0;
  while (end < text.size() &&
         lines < static_cast<size_t>(limits.max_search_matches)) {
    size_t nl = text.find('\n', end);
    end = nl == absl::string_view::npos ? text.size() : nl + 1;
    ++lines;
  }
  std::string out(text.substr(0, end));
  if (end < text.size()) {
    size_t total = std::count(text.begin(), text.end(), '\n');
    AppendLine(out, absl::StrCat("[search truncated: ", lines, " of ",
                                 o.stdout_truncated ? "at least " : "", total,
                                 " matching lines shown]"));
  } else if (o.stdout_truncated) {
    AppendLine(out, absl::StrCat("[output truncated: first ", text.size(),
                                 " bytes shown]"));
  }
  if (!o.stderr_data.empty()) {
    AppendLine(out, "[grep warnings]");
    absl::StrAppend(&out, o.stderr_data);
  }
  return Ok(Finished(std::move(out)));
}

std::vector<ToolDef> Defs(const ToolLimits& limits) {
  const std::string timeout_help =
      absl::StrCat("Seconds before the command is killed (default ",
                   absl::ToDoubleSeconds(limits.default_timeout), ", at most ",
                   absl::ToDoubleSeconds(limits.max_timeout), ").");
  const std::string output_help = absl::StrCat(
      " Output past ", limits.max_output_bytes, " bytes is cut, with a note.");
  return {
      {"bash",
       "Run a bash command in the sandbox's working directory and return "
       "its stdout, stderr and exit code." +
           output_help,
       {{"command", Type::kString, true, "The bash script to run."},
        {"timeout", Type::kNumber, false, timeout_help}},
       Bash},
      {"python",
       "Run Python 3 code (fed to python3 on stdin) and return its stdout, "
       "stderr and exit code." +
           output_help,
       {{"code", Type::kString, true, "The Python program."},
        {"timeout", Type::kNumber, false, timeout_help}},
       Python},
      {"read_file",
       "Read a text file, or a window of its lines." + output_help,
       {{"path", Type::kString, true, "File to read."},
        {"offset", Type::kInteger, false,
         "First line to show, counting from 1 (default 1)."},
        {"limit", Type::kInteger, false,
         absl::StrCat("Number of lines to show (default ",
                      limits.default_read_lines, ").")}},
       ReadFileTool},
      {"write_file",
       "Create a file, or replace its whole content; parent directories "
       "are created.",
       {{"path", Type::kString, true, "File to write."},
        {"content", Type::kString, true, "The complete new content."}},
       WriteFileTool},
      {"edit_file",
       "Replace an exact string in a file. old_string must occur exactly "
       "once unless replace_all is true.",
       {{"path", Type::kString, true, "File to edit."},
        {"old_string", Type::kString, true,
         "Text to replace, exactly as in the file (whitespace included)."},
        {"new_string", Type::kString, true, "Replacement text."},
        {"replace_all", Type::kBoolean, false,
         "Replace every occurrence (default false)."}},
       EditFileTool},
      {"list_files",
       "List files and directories under a path, sorted; directories end "
       "with '/'.",
       {{"path", Type::kString, false,
         "Directory to list (default: the working directory)."},
        {"depth", Type::kInteger, false,
         absl::StrCat("How many levels to descend (default ",
                      limits.default_list_depth, ", at most ",
                      limits.max_list_depth, ").")}},
       ListFiles},
      {"search_files",
       "Search file contents for a regular expression (grep -rnE); returns "
       "path:line:text for each matching line.",
       {{"pattern", Type::kString, true, "Extended regular expression."},
        {"path", Type::kString, false,
         "File or directory to search (default: the working directory)."},
        {"include", Type::kString, false,
         "Only search files whose name matches this glob, e.g. *.py."}},
       SearchFiles},
  };
}

}  // namespace

ToolBox::ToolBox(SandboxIo* io, ToolBoxOptions options)
    : io_(io), options_(std::move(options)) {}

std::vector<dsml::ToolSpec> ToolBox::Specs() const {
  std::vector<dsml::ToolSpec> specs;
  for (const ToolDef& def : Defs(options_.limits)) {
    specs.push_back({def.name, def.description, Schema(def)});
  }
  return specs;
}

ToolResult ToolBox::Run(const dsml::ToolCall& call) const {
  std::vector<ToolDef> defs = Defs(options_.limits);
  auto def = std::find_if(defs.begin(), defs.end(), [&](const ToolDef& d) {
    return d.name == call.name;
  });
  ToolResult result;
  if (def == defs.end()) {
    std::vector<std::string> names;
    for (const ToolDef& d : defs) names.push_back(d.name);
    result = Error(
        absl::StrCat("unknown tool \"", call.name,
                     "\"; available tools: ", absl::StrJoin(names, ", ")));
  } else if (absl::StatusOr<Args> args = Validate(*def, call); !args.ok()) {
    result = Error(args.status().message());
  } else {
    result = def->run(*io_, options_.limits, *args);
  }
  result.tool = call.name;
  return result;
}

std::vector<ToolResult> ToolBox::RunAll(
    const std::vector<dsml::ToolCall>& calls) const {
  std::vector<ToolResult> results(calls.size());
  size_t threads = std::min<size_t>(
      calls.size(), static_cast<size_t>(std::max(1, options_.max_parallel)));
  if (threads <= 1) {
    for (size_t i = 0; i < calls.size(); ++i) results[i] = Run(calls[i]);
    return results;
  }
  std::atomic<size_t> next{0};
  std::vector<std::thread> workers;
  for (size_t t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      for (size_t i = next++; i < calls.size(); i = next++) {
        results[i] = Run(calls[i]);
      }
    });
  }
  for (std::thread& w : workers) w.join();
  return results;
}

}  // namespace dsec::client
