// Evaluation order for one spec, all in the caller's SandboxIo:
//   1. validate the spec (INVALID_ARGUMENT → kInfraFailed: not scored);
//   2. write files, run setup (a failed setup is the candidate's: 0);
//   3. `repeat` times: the test command (parsed) or every case (one verdict
//      each), stopping early under stop_at_first_failure;
//   4. merge verdicts across runs by name (flaky = passed and failed), score.
// Any non-OK Status from SandboxIo ends the evaluation as kInfraFailed at
// once: a partial result must not be scored.
#include "client/reward.h"

#include <algorithm>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/token.h"

namespace dsec::client::reward {
namespace {

constexpr int64_t kMaxJUnitBytes = int64_t{16} << 20;
constexpr int kMaxRepeat = 100;

std::string Describe(const ExecOutcome& o) {
  switch (o.kind) {
    case ExitKind::kExited:
      return absl::StrCat("exited with code ", o.exit_code);
    case ExitKind::kTimedOut:
      return absl::StrCat("timed out after ",
                          absl::FormatDuration(
                              absl::Trunc(o.wall_time, absl::Milliseconds(1))));
    case ExitKind::kSignaled:
      return absl::StrCat("killed by signal ", o.signal);
    case ExitKind::kOomKilled:
      return "killed: out of memory";
    case ExitKind::kPidsLimit:
      return "killed: process limit";
    case ExitKind::kSeccompViolation:
      return "killed: forbidden system call";
    case ExitKind::kCpuLimit:
      return "killed: CPU time limit";
  }
  return "ended";
}

absl::string_view ParserName(ParserKind kind) {
  switch (kind) {
    case ParserKind::kExitCode:
      return "exit-code";
    case ParserKind::kPytest:
      return "pytest";
    case ParserKind::kUnittest:
      return "unittest";
    case ParserKind::kGoTest:
      return "go test";
    case ParserKind::kGeneric:
      return "generic summary";
    case ParserKind::kJUnitXml:
      return "JUnit XML";
  }
  return "?";
}

ParsedOutput ParseText(ParserKind kind, absl::string_view text) {
  switch (kind) {
    case ParserKind::kPytest:
      return ParsePytest(text);
    case ParserKind::kUnittest:
      return ParseUnittest(text);
    case ParserKind::kGoTest:
      return ParseGoTest(text);
    case ParserKind::kGeneric:
      return ParseGenericSummary(text);
    case ParserKind::kExitCode:
    case ParserKind::kJUnitXml:
      break;
  }
  return {};
}

// Reward for `c` under `policy`; nullopt when no test counts.
std::optional<double> Score(const TestCounts& c, RewardPolicy policy) {
  if (c.scored() <= 0) return std::nullopt;
  if (policy == RewardPolicy::kAllOrNothing) {
    return c.passed == c.scored() ? 1.0 : 0.0;
  }
  return static_cast<double>(c.passed) / c.scored();
}

bool IsFail(Verdict v) {
  return v == Verdict::kFailed || v == Verdict::kError || v == Verdict::kNotRun;
}

// Appends "-x" to a pytest argv command that lacks it.
void AddExitFirst(Command* cmd) {
  bool pytest = false;
  for (size_t i = 0; i < cmd->argv.size(); ++i) {
    absl::string_view a = cmd->argv[i];
    if (a == "-x" || a == "--exitfirst") return;
    absl::string_view base = a.substr(a.rfind('/') + 1);
    if (base == "pytest" || base == "py.test" ||
        (a == "-m" && i + 1 < cmd->argv.size() &&
         cmd->argv[i + 1] == "pytest")) {
      pytest = true;
    }
  }
  if (pytest) cmd->argv.push_back("-x");
}

std::vector<std::string> NormalizedLines(absl::string_view s) {
  std::vector<std::string> lines;
  for (absl::string_view l : absl::StrSplit(s, '\n')) {
    lines.emplace_back(absl::StripTrailingAsciiWhitespace(l));
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

std::string Quote(absl::string_view s) {
  if (s.size() > 60) s = s.substr(0, 60);
  return absl::StrCat("\"", SanitizeForDisplay(s), "\"");
}

std::string WrongAnswer(absl::string_view actual, absl::string_view expected) {
  std::vector<std::string> a = NormalizedLines(actual);
  std::vector<std::string> e = NormalizedLines(expected);
  for (size_t i = 0; i < std::max(a.size(), e.size()); ++i) {
    constexpr absl::string_view kEnd = "<end of output>";
    absl::string_view al = i < a.size() ? absl::string_view(a[i]) : kEnd;
    absl::string_view el = i < e.size() ? absl::string_view(e[i]) : kEnd;
    if (al != el) {
      return absl::StrCat("wrong answer: line ", i + 1, ": expected ",
                          Quote(el), ", got ", Quote(al));
    }
  }
  return "wrong answer (whitespace differs)";
}

std::string Tail(const ExecOutcome& o, int64_t max_bytes) {
  std::string text = o.stdout_data;
  if (!o.stderr_data.empty()) {
    absl::StrAppend(&text, text.empty() ? "" : "\n", "--- stderr ---\n",
                    o.stderr_data);
  }
  size_t keep = static_cast<size_t>(std::max<int64_t>(0, max_bytes));
  if (text.size() > keep) text.erase(0, text.size() - keep);
  return SanitizeForDisplay(text);
}

absl::Status Validate(const RewardSpec& spec) {
  auto bad_command = [](const Command& c) {
    return c.argv.empty() == c.shell.empty();
  };
  if (spec.repeat < 1 || spec.repeat > kMaxRepeat) {
    return absl::InvalidArgumentError(
        absl::StrCat("repeat must be in [1, ", kMaxRepeat, "]"));
  }
  if (spec.setup.has_value() && bad_command(*spec.setup)) {
    return absl::InvalidArgumentError("setup: exactly one of argv and shell");
  }
  bool needs_test_command = spec.cases.empty();
  for (const TestCase& c : spec.cases) {
    if (c.command.has_value()) {
      if (bad_command(*c.command)) {
        return absl::InvalidArgumentError(
            absl::StrCat("case ", c.name, ": exactly one of argv and shell"));
      }
    } else {
      needs_test_command = true;
    }
  }
  if (needs_test_command && bad_command(spec.test_command)) {
    return absl::InvalidArgumentError(
        "test_command: exactly one of argv and shell");
  }
  if (spec.parser == ParserKind::kJUnitXml && spec.junit_path.empty() &&
      spec.cases.empty()) {
    return absl::InvalidArgumentError("kJUnitXml needs junit_path");
  }
  for (const FileToAdd& f : spec.files) {
    if (f.path.empty()) return absl::InvalidArgumentError("file without path");
  }
  return absl::OkStatus();
}

class Evaluator {
 public:
  Evaluator(SandboxIo& io, const RewardSpec& spec) : io_(io), spec_(spec) {}

  RewardResult Run() {
    if (absl::Status s = Validate(spec_); !s.ok()) {
      Infra(s, "spec");
      return std::move(result_);
    }
    if (!Prepare()) return std::move(result_);
    std::vector<std::vector<TestVerdict>> runs;
    for (int k = 0; k < spec_.repeat; ++k) {
      std::vector<TestVerdict> tests;
      bool ok = spec_.cases.empty() ? RunTestCommand(&tests) : RunCases(&tests);
      if (!ok) return std::move(result_);
      bool failed = std::any_of(tests.begin(), tests.end(), [](const auto& t) {
        return IsFail(t.verdict);
      });
      runs.push_back(std::move(tests));
      if (failed && spec_.stop_at_first_failure) break;
    }
    Finish(runs);
    return std::move(result_);
  }

 private:
  void Infra(const absl::Status& s, absl::string_view what) {
    result_.state = EvalState::kInfraFailed;
    result_.reward = 0;
    result_.status = absl::Status(
        s.code(), absl::StrCat("reward: ", what, ": ", s.message()));
    result_.reason = result_.status.ToString();
  }

  void End(EvalState state, std::string reason) {
    result_.state = state;
    result_.reward = 0;
    result_.reason = std::move(reason);
  }

  // Runs `cmd`; false (result_ set to kInfraFailed) when SandboxIo failed.
  bool Exec(const Command& cmd, absl::string_view what, ExecOutcome* out) {
    absl::StatusOr<ExecOutcome> o = io_.Run(cmd);
    if (!o.ok()) {
      Infra(o.status(), what);
      return false;
    }
    ++result_.runs;
    result_.output_tail = Tail(*o, spec_.output_tail_bytes);
    *out = *std::move(o);
    return true;
  }

  bool Prepare() {
    for (const FileToAdd& f : spec_.files) {
      absl::Status s = io_.WriteFile(f.path, f.content, f.mode);
      if (!s.ok()) {
        Infra(s, absl::StrCat("writing ", f.path));
        return false;
      }
    }
    if (!spec_.setup.has_value()) return true;
    ExecOutcome o;
    if (!Exec(*spec_.setup, "setup", &o)) return false;
    if (!o.ok()) {
      End(EvalState::kProgramFailed, absl::StrCat("setup ", Describe(o)));
      return false;
    }
    return true;
  }

  bool RunTestCommand(std::vector<TestVerdict>* tests) {
    Command cmd = spec_.test_command;
    if (spec_.stop_at_first_failure && spec_.parser == ParserKind::kPytest) {
      AddExitFirst(&cmd);
    }
    if (spec_.parser == ParserKind::kJUnitXml) {
      absl::Status s = io_.WriteFile(spec_.junit_path, "");
      if (!s.ok()) {
        Infra(s, "emptying the JUnit file");
        return false;
      }
    }
    ExecOutcome o;
    if (!Exec(cmd, "test command", &o)) return false;
    ParsedOutput parsed;
    std::string why_empty;
    if (spec_.parser == ParserKind::kJUnitXml) {
      if (!ReadJUnit(&parsed, &why_empty)) return false;
    } else {
      // The stream the runner writes its summary to goes last.
      parsed = ParseText(
          spec_.parser, spec_.parser == ParserKind::kPytest
                            ? absl::StrCat(o.stderr_data, "\n", o.stdout_data)
                            : absl::StrCat(o.stdout_data, "\n", o.stderr_data));
    }
    if (o.kind != ExitKind::kExited) {
      result_.tests = std::move(parsed.tests);  // partial, for debugging
      result_.counts = CountVerdicts(result_.tests);
      End(EvalState::kProgramFailed,
          absl::StrCat("test command ", Describe(o)));
      return false;
    }
    if (spec_.parser == ParserKind::kExitCode) {
      tests->push_back(
          {.name = "exit code",
           .verdict = o.exit_code == 0 ? Verdict::kPassed : Verdict::kFailed,
           .duration = o.wall_time,
           .message = o.exit_code == 0 ? "" : Describe(o)});
      return true;
    }
    if (parsed.empty()) {
      End(EvalState::kUnparseable,
          absl::StrCat(ParserName(spec_.parser),
                       " parser found no test results (test command ",
                       Describe(o), ")", why_empty));
      return false;
    }
    if ((spec_.parser == ParserKind::kPytest ||
         spec_.parser == ParserKind::kUnittest) &&
        !parsed.summary.has_value()) {
      // Per-test lines but no final summary: the runner was cut short (a
      // test called os._exit(0), say). Never score the lines seen so far.
      result_.tests = std::move(parsed.tests);
      result_.counts = CountVerdicts(result_.tests);
      End(EvalState::kProgramFailed,
          absl::StrCat(ParserName(spec_.parser),
                       " printed no final summary: the run ended early (test "
                       "command ",
                       Describe(o), ")"));
      return false;
    }
    TestCounts seen = CountVerdicts(parsed.tests);
    int reported_failures = seen.failed + seen.errors;
    if (parsed.summary.has_value()) {
      reported_failures += parsed.summary->failed + parsed.summary->errors;
    }
    const bool exit_mismatch = o.exit_code != 0 && reported_failures == 0;
    if (parsed.summary.has_value()) {
      CheckSummary(seen, *parsed.summary, exit_mismatch);
    }
    *tests = std::move(parsed.tests);
    if (exit_mismatch) {
      tests->push_back(
          {.name = absl::StrCat("[exit code ", o.exit_code, "]"),
           .verdict = Verdict::kFailed,
           .message = "non-zero exit but no failing test was reported"});
    }
    return true;
  }

  // Weighs the runner's summary against the per-test lines of one run:
  //   - lines cover fewer tests than the summary (pytest without -rA, a
  //     summary-only parser): the evaluation is scored from the summaries,
  //     the worst run's; a summary contradicted by the exit code scores 0;
  //   - the summary is more pessimistic than the lines: it caps the reward.
  void CheckSummary(TestCounts seen, TestCounts summary, bool exit_mismatch) {
    std::optional<double> s = Score(summary, spec_.policy);
    if (exit_mismatch) {  // both sides get the synthetic "[exit code N]"
      ++seen.failed;
      ++summary.failed;
      s = 0.0;
    }
    if (s.has_value() && *s <= worst_summary_.value_or(1.0)) {
      worst_summary_ = *s;
      worst_summary_counts_ = summary;
    }
    if (seen.scored() < summary.scored()) {
      lines_incomplete_ = true;
      result_.reason = absl::StrFormat(
          "per-test lines cover %d of %d tests: scored from the runner's "
          "summary%s",
          seen.scored(), summary.scored(),
          exit_mismatch ? " (contradicted by the exit code: 0)" : "");
      return;
    }
    if (summary.passed < seen.passed ||
        summary.failed + summary.errors > seen.failed + seen.errors) {
      cap_ = std::min(cap_, s.value_or(0.0));
      result_.reason = absl::StrFormat(
          "summary (%d passed, %d failed, %d errors) disagrees with per-test "
          "lines (%d passed, %d failed, %d errors); reward capped at the "
          "summary's",
          summary.passed, summary.failed, summary.errors, seen.passed,
          seen.failed, seen.errors);
    }
  }

  // False only for infrastructure errors; a missing or bad file leaves
  // `parsed` empty with the reason in `why`.
  bool ReadJUnit(ParsedOutput* parsed, std::string* why) {
    bool truncated = false;
    absl::StatusOr<std::string> xml =
        io_.ReadFile(spec_.junit_path, kMaxJUnitBytes, &truncated);
    if (!xml.ok()) {
      if (absl::IsNotFound(xml.status()) ||
          absl::IsFailedPrecondition(xml.status())) {
        *why = absl::StrCat(": ", xml.status().message());
        return true;
      }
      Infra(xml.status(), "reading the JUnit file");
      return false;
    }
    if (xml->empty()) {
      *why = absl::StrCat(": ", spec_.junit_path, " was not written");
      return true;
    }
    if (truncated) {
      *why = absl::StrCat(": ", spec_.junit_path, " is over ", kMaxJUnitBytes,
                          " bytes");
      return true;
    }
    absl::StatusOr<ParsedOutput> p = ParseJUnitXml(*xml);
    if (!p.ok()) {
      *why = absl::StrCat(": ", p.status().message());
      return true;
    }
    *parsed = *std::move(p);
    return true;
  }

  bool RunCases(std::vector<TestVerdict>* tests) {
    bool stopped = false;
    for (size_t i = 0; i < spec_.cases.size(); ++i) {
      const TestCase& c = spec_.cases[i];
      TestVerdict v{.name = c.name.empty() ? absl::StrCat("case_", i) : c.name};
      if (stopped) {
        v.verdict = Verdict::kNotRun;
        v.message = "not run: stop_at_first_failure";
        tests->push_back(std::move(v));
        continue;
      }
      Command cmd = c.command.value_or(spec_.test_command);
      if (c.stdin_data.has_value()) cmd.stdin_data = *c.stdin_data;
      ExecOutcome o;
      if (!Exec(cmd, absl::StrCat("case ", v.name), &o)) return false;
      v.duration = o.wall_time;
      if (!o.ok()) {
        v.verdict = Verdict::kFailed;
        v.message = Describe(o);
      } else if (c.expected_stdout.has_value()) {
        if (o.stdout_truncated) {
          v.verdict = Verdict::kFailed;
          v.message = "output over the limit";
        } else if (!OutputMatches(o.stdout_data, *c.expected_stdout,
                                  spec_.whitespace)) {
          v.verdict = Verdict::kFailed;
          v.message = WrongAnswer(o.stdout_data, *c.expected_stdout);
        }
      }
      stopped = spec_.stop_at_first_failure && IsFail(v.verdict);
      tests->push_back(std::move(v));
    }
    return true;
  }

  // Merges runs by test name (first-seen order) and scores.
  void Finish(const std::vector<std::vector<TestVerdict>>& runs) {
    struct Agg {
      TestVerdict first;
      TestVerdict worst_fail;
      int pass = 0, fail = 0;
    };
    std::vector<Agg> aggs;
    std::map<std::string, size_t> index;
    for (const auto& run : runs) {
      for (const TestVerdict& t : run) {
        auto [it, fresh] = index.emplace(t.name, aggs.size());
        if (fresh) aggs.push_back({.first = t});
        Agg& a = aggs[it->second];
        if (t.verdict == Verdict::kPassed) ++a.pass;
        if (IsFail(t.verdict)) {
          if (a.fail++ == 0) a.worst_fail = t;
        }
      }
    }
    for (Agg& a : aggs) {
      TestVerdict t = a.fail > 0 ? a.worst_fail : a.first;
      if (a.pass > 0 && a.fail > 0) {
        t.flaky = true;
        bool majority = a.pass > a.fail;
        t.verdict = spec_.flaky_policy == FlakyPolicy::kMajority && majority
                        ? Verdict::kPassed
                        : a.worst_fail.verdict;
        t.message =
            absl::StrCat("flaky: passed ", a.pass, " of ", a.pass + a.fail,
                         " runs; ", a.worst_fail.message);
        result_.flaky.push_back(t.name);
      }
      result_.tests.push_back(std::move(t));
    }
    result_.counts = CountVerdicts(result_.tests);
    std::optional<double> score = Score(result_.counts, spec_.policy);
    if (lines_incomplete_) {
      score = worst_summary_;
      if (worst_summary_counts_.has_value()) {
        result_.counts = *worst_summary_counts_;  // what the runner said
      }
    }
    if (!score.has_value()) {
      End(EvalState::kUnparseable,
          "no test counted (all skipped, or none collected)");
      return;
    }
    result_.state = EvalState::kScored;
    result_.reward = std::min(*score, cap_);
  }

  SandboxIo& io_;
  const RewardSpec& spec_;
  RewardResult result_;
  double cap_ = 1.0;
  // Some run's per-test lines missed tests its summary counted: the
  // summaries score the evaluation, the lowest of them.
  bool lines_incomplete_ = false;
  std::optional<double> worst_summary_;
  std::optional<TestCounts> worst_summary_counts_;  // of that run
};

// Length-prefixed fields, so no two specs serialise alike.
class KeyWriter {
 public:
  void Put(absl::string_view s) { absl::StrAppend(&out_, s.size(), ":", s); }
  void Put(int64_t v) { absl::StrAppend(&out_, "i", v, ";"); }
  void Put(const Command& c) {
    Put(static_cast<int64_t>(c.argv.size()));
    for (const std::string& a : c.argv) Put(a);
    Put(c.shell);
    Put(c.stdin_data);
    Put(static_cast<int64_t>(c.env.size()));
    for (const auto& [k, v] : c.env) {
      Put(k);
      Put(v);
    }
    Put(c.cwd);
    Put(absl::ToInt64Nanoseconds(c.timeout));
    Put(c.max_output_bytes);
  }
  template <typename T>
  void PutOptional(const std::optional<T>& v) {
    Put(int64_t{v.has_value()});
    if (v.has_value()) Put(*v);
  }
  const std::string& str() const { return out_; }

 private:
  std::string out_;
};

}  // namespace

absl::string_view EvalStateName(EvalState state) {
  switch (state) {
    case EvalState::kScored:
      return "scored";
    case EvalState::kProgramFailed:
      return "program_failed";
    case EvalState::kUnparseable:
      return "unparseable";
    case EvalState::kInfraFailed:
      return "infra_failed";
  }
  return "unknown";
}

RewardResult Evaluate(SandboxIo& io, const RewardSpec& spec) {
  return Evaluator(io, spec).Run();
}

bool OutputMatches(absl::string_view actual, absl::string_view expected,
                   WhitespaceMode mode) {
  switch (mode) {
    case WhitespaceMode::kExact:
      return actual == expected;
    case WhitespaceMode::kIgnoreTrailing:
      return NormalizedLines(actual) == NormalizedLines(expected);
    case WhitespaceMode::kTokens: {
      std::vector<absl::string_view> a = absl::StrSplit(
          actual, absl::ByAnyChar(" \t\r\n\f\v"), absl::SkipEmpty());
      std::vector<absl::string_view> e = absl::StrSplit(
          expected, absl::ByAnyChar(" \t\r\n\f\v"), absl::SkipEmpty());
      return a == e;
    }
  }
  return false;
}

std::string RewardCacheKey(const RewardSpec& spec) {
  KeyWriter w;
  w.Put("dsec.reward.v1");
  w.Put(spec.image);
  w.Put(static_cast<int64_t>(spec.files.size()));
  for (const FileToAdd& f : spec.files) {
    w.Put(f.path);
    w.Put(f.content);
    w.Put(int64_t{f.mode});
  }
  w.PutOptional(spec.setup);
  w.Put(spec.test_command);
  w.Put(static_cast<int64_t>(spec.cases.size()));
  for (const TestCase& c : spec.cases) {
    w.Put(c.name);
    w.PutOptional(c.command);
    w.PutOptional(c.stdin_data);
    w.PutOptional(c.expected_stdout);
  }
  w.Put(static_cast<int64_t>(spec.parser));
  w.Put(spec.junit_path);
  w.Put(static_cast<int64_t>(spec.policy));
  w.Put(int64_t{spec.stop_at_first_failure});
  w.Put(spec.repeat);
  w.Put(static_cast<int64_t>(spec.flaky_policy));
  w.Put(static_cast<int64_t>(spec.whitespace));
  w.Put(spec.output_tail_bytes);
  return Sha256Hex(w.str());
}

RewardCache::RewardCache(size_t capacity)
    : capacity_(std::max<size_t>(1, capacity)) {}

RewardResult RewardCache::Evaluate(SandboxIo& io, const RewardSpec& spec) {
  return GetOrCompute(RewardCacheKey(spec),
                      [&] { return reward::Evaluate(io, spec); });
}

RewardResult RewardCache::GetOrCompute(
    const std::string& key, absl::FunctionRef<RewardResult()> compute) {
  auto shared = [](RewardResult r) {
    r.from_cache = true;
    r.runs = 0;
    return r;
  };
  std::shared_ptr<Flight> flight;
  {
    absl::MutexLock lock(&mu_);
    while (true) {
      if (auto it = index_.find(key); it != index_.end()) {
        lru_.splice(lru_.begin(), lru_, it->second);
        ++stats_.hits;
        return shared(it->second->second);
      }
      auto f = in_flight_.find(key);
      if (f == in_flight_.end()) break;
      std::shared_ptr<Flight> other = f->second;
      mu_.Await(absl::Condition(&other->done));
      if (other->result.has_value()) {
        ++stats_.coalesced;
        return shared(*other->result);
      }
      // The evaluation we waited for failed (infra): look again, then run.
    }
    flight = std::make_shared<Flight>();
    in_flight_.emplace(key, flight);
    ++stats_.misses;
  }
  RewardResult result = compute();
  absl::MutexLock lock(&mu_);
  if (result.usable()) {
    flight->result = result;
    lru_.emplace_front(key, result);
    index_[key] = lru_.begin();
    while (lru_.size() > capacity_) {
      index_.erase(lru_.back().first);
      lru_.pop_back();
    }
  }
  flight->done = true;
  in_flight_.erase(key);
  return result;
}

RewardCache::Stats RewardCache::stats() const {
  absl::MutexLock lock(&mu_);
  Stats s = stats_;
  s.size = lru_.size();
  return s;
}

}  // namespace dsec::client::reward
