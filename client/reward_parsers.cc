#include "client/reward_parsers.h"

#include <algorithm>
#include <cstdint>
#include <deque>
#include <iterator>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"
#include "pugixml.hpp"

namespace dsec::client::reward {
namespace {

// Messages and names taken from output are cut to this many bytes.
constexpr size_t kMaxFieldBytes = 512;

std::string Field(absl::string_view s) {
  s = absl::StripAsciiWhitespace(s);
  if (s.size() > kMaxFieldBytes) s = s.substr(0, kMaxFieldBytes);
  return SanitizeForDisplay(s);
}

// Lines of `output` after ANSI stripping; '\r' also ends a line.
std::vector<std::string> Lines(absl::string_view output) {
  std::string clean = StripAnsi(output);
  std::vector<std::string> lines =
      absl::StrSplit(clean, absl::ByAnyChar("\r\n"));
  return lines;
}

// Parses a non-negative count; false on overflow or junk.
bool ParseCount(absl::string_view s, int* out) {
  int64_t v;
  if (s.empty() || s.size() > 9 || !absl::SimpleAtoi(s, &v) || v < 0) {
    return false;
  }
  *out = static_cast<int>(v);
  return true;
}

// "0.25" seconds → duration.
std::optional<absl::Duration> ParseSeconds(absl::string_view s) {
  double v;
  if (!absl::SimpleAtod(s, &v) || !(v >= 0) || v > 1e7) return std::nullopt;
  return absl::Seconds(v);
}

// Severity order for merging two verdicts on one test: the worse one wins.
int Severity(Verdict v) {
  switch (v) {
    case Verdict::kSkipped:
      return 0;
    case Verdict::kPassed:
      return 1;
    case Verdict::kNotRun:
      return 2;
    case Verdict::kFailed:
      return 3;
    case Verdict::kError:
      return 4;
  }
  return 0;
}

// Collects verdicts by name in first-seen order, merging duplicates.
class VerdictSet {
 public:
  TestVerdict& Add(absl::string_view name, Verdict verdict) {
    std::string key(name);
    auto it = index_.find(key);
    if (it == index_.end()) {
      index_.emplace(key, tests_.size());
      tests_.push_back({.name = Field(name), .verdict = verdict});
      return tests_.back();
    }
    TestVerdict& t = tests_[it->second];
    if (Severity(verdict) > Severity(t.verdict)) t.verdict = verdict;
    return t;
  }
  TestVerdict* Find(absl::string_view name) {
    auto it = index_.find(std::string(name));
    return it == index_.end() ? nullptr : &tests_[it->second];
  }
  std::vector<TestVerdict> Take() {
    return std::vector<TestVerdict>(std::make_move_iterator(tests_.begin()),
                                    std::make_move_iterator(tests_.end()));
  }

 private:
  std::deque<TestVerdict> tests_;  // stable references for Add's callers
  std::map<std::string, size_t> index_;
};

// Reads "N word" pairs separated by ", " into counts; words are matched
// with `word_to_field`. Returns false unless at least one pair parsed.
bool ParseCountList(absl::string_view list, TestCounts* counts) {
  bool any = false;
  for (absl::string_view part : absl::StrSplit(list, ',')) {
    part = absl::StripAsciiWhitespace(part);
    std::pair<absl::string_view, absl::string_view> nw =
        absl::StrSplit(part, absl::MaxSplits(' ', 1));
    int n;
    if (!ParseCount(nw.first, &n)) return false;
    absl::string_view word = absl::StripAsciiWhitespace(nw.second);
    if (word == "passed" || word == "xpassed") {
      counts->passed += n;
    } else if (word == "failed") {
      counts->failed += n;
    } else if (word == "error" || word == "errors") {
      counts->errors += n;
    } else if (word == "skipped" || word == "xfailed") {
      counts->skipped += n;
    } else if (word == "warning" || word == "warnings" ||
               word == "deselected" || word == "rerun") {
      // not a test outcome
    } else {
      return false;
    }
    any = true;
  }
  return any;
}

// ---- pytest ------------------------------------------------------------

std::optional<Verdict> PytestWord(absl::string_view w) {
  if (w == "PASSED" || w == "XPASS") return Verdict::kPassed;
  if (w == "FAILED") return Verdict::kFailed;
  if (w == "ERROR") return Verdict::kError;
  if (w == "SKIPPED" || w == "XFAIL") return Verdict::kSkipped;
  return std::nullopt;
}

// "=== title ===" → title.
std::optional<absl::string_view> PytestHeader(absl::string_view line) {
  if (!absl::StartsWith(line, "==") || !absl::EndsWith(line, "==")) {
    return std::nullopt;
  }
  absl::string_view t =
      absl::StripAsciiWhitespace(absl::StripTrailingAsciiWhitespace(line));
  while (!t.empty() && t.front() == '=') t.remove_prefix(1);
  while (!t.empty() && t.back() == '=') t.remove_suffix(1);
  return absl::StripAsciiWhitespace(t);
}

// "3 passed, 1 failed in 0.12s" / "3 passed in 0.12s (0:00:01)" /
// "no tests ran in 0.01s".
std::optional<TestCounts> PytestSummary(absl::string_view s) {
  size_t in = s.rfind(" in ");
  if (in == absl::string_view::npos) return std::nullopt;
  absl::string_view tail = s.substr(in + 4);
  if (tail.empty() || !absl::ascii_isdigit(tail.front()) ||
      tail.find('s') == absl::string_view::npos) {
    return std::nullopt;
  }
  absl::string_view list = s.substr(0, in);
  TestCounts counts;
  if (list == "no tests ran") return counts;
  if (!ParseCountList(list, &counts)) return std::nullopt;
  return counts;
}

// "path::test PASSED [ 50%]", "path::test SKIPPED (why) [ 66%]".
bool PytestRunLine(absl::string_view line, VerdictSet* set) {
  if (line.find("::") == absl::string_view::npos) return false;
  absl::string_view rest = absl::StripTrailingAsciiWhitespace(line);
  if (absl::EndsWith(rest, "%]")) {
    size_t open = rest.rfind('[');
    if (open == absl::string_view::npos) return false;
    rest = absl::StripTrailingAsciiWhitespace(rest.substr(0, open));
  }
  if (absl::EndsWith(rest, ")")) {  // "SKIPPED (reason)"
    size_t open = rest.rfind(" (");
    if (open != absl::string_view::npos) {
      absl::string_view before = rest.substr(0, open);
      size_t sp = before.rfind(' ');
      if (sp != absl::string_view::npos &&
          PytestWord(before.substr(sp + 1)).has_value()) {
        rest = before;
      }
    }
  }
  size_t sp = rest.rfind(' ');
  if (sp == absl::string_view::npos) return false;
  std::optional<Verdict> v = PytestWord(rest.substr(sp + 1));
  absl::string_view name =
      absl::StripTrailingAsciiWhitespace(rest.substr(0, sp));
  if (!v.has_value() || name.empty() || name.find("::") == 0) return false;
  set->Add(name, *v);
  return true;
}

// "FAILED path::test - message", "ERROR path - ImportError".
void PytestShortLine(absl::string_view line, VerdictSet* set) {
  std::pair<absl::string_view, absl::string_view> wr =
      absl::StrSplit(line, absl::MaxSplits(' ', 1));
  std::optional<Verdict> v = PytestWord(wr.first);
  if (!v.has_value() || absl::StartsWith(wr.second, "[")) return;
  std::pair<absl::string_view, absl::string_view> nm =
      absl::StrSplit(wr.second, absl::MaxSplits(" - ", 1));
  absl::string_view name = absl::StripAsciiWhitespace(nm.first);
  if (name.empty()) return;
  TestVerdict& t = set->Add(name, *v);
  if (t.message.empty()) t.message = Field(nm.second);
}

// ---- unittest ----------------------------------------------------------

std::optional<Verdict> UnittestWord(absl::string_view w) {
  w = absl::StripAsciiWhitespace(w);
  if (w == "ok" || w == "unexpected success") return Verdict::kPassed;
  if (w == "FAIL") return Verdict::kFailed;
  if (w == "ERROR") return Verdict::kError;
  if (w == "expected failure" || absl::StartsWith(w, "skipped '") ||
      absl::StartsWith(w, "skipped \"") || w == "skipped") {
    return Verdict::kSkipped;
  }
  return std::nullopt;
}

// "test_a (mod.Class.test_a)" or "test_a (mod.Class)" → "mod.Class.test_a".
std::optional<std::string> UnittestName(absl::string_view s) {
  s = absl::StripAsciiWhitespace(s);
  size_t open = s.find(" (");
  if (open == absl::string_view::npos || open == 0 || !absl::EndsWith(s, ")")) {
    return std::nullopt;
  }
  absl::string_view method = s.substr(0, open);
  absl::string_view where = s.substr(open + 2, s.size() - open - 3);
  if (method.find(' ') != absl::string_view::npos || where.empty() ||
      where.find(' ') != absl::string_view::npos) {
    return std::nullopt;
  }
  if (absl::EndsWith(where, absl::StrCat(".", method)))
    return std::string(where);
  return absl::StrCat(where, ".", method);
}

// Parses "(failures=1, errors=2, skipped=1)".
void UnittestTotals(absl::string_view s, TestCounts* counts) {
  size_t open = s.find('(');
  size_t close = s.rfind(')');
  if (open == absl::string_view::npos || close == absl::string_view::npos ||
      close < open) {
    return;
  }
  for (absl::string_view kv :
       absl::StrSplit(s.substr(open + 1, close - open - 1), ',')) {
    std::pair<absl::string_view, absl::string_view> p =
        absl::StrSplit(absl::StripAsciiWhitespace(kv), absl::MaxSplits('=', 1));
    int n;
    if (!ParseCount(p.second, &n)) continue;
    if (p.first == "failures") counts->failed = n;
    if (p.first == "errors") counts->errors = n;
    if (p.first == "skipped" || p.first == "expected failures") {
      counts->skipped += n;
    }
  }
}

// ---- go test -----------------------------------------------------------

std::optional<Verdict> GoAction(absl::string_view a) {
  if (a == "pass" || a == "PASS") return Verdict::kPassed;
  if (a == "fail" || a == "FAIL") return Verdict::kFailed;
  if (a == "skip" || a == "SKIP") return Verdict::kSkipped;
  return std::nullopt;
}

struct GoState {
  VerdictSet tests;
  VerdictSet packages;
  bool saw_json = false;
  // go test -json: last output line per test, for failure messages.
  std::map<std::string, std::string> last_output;
};

bool GoJsonLine(absl::string_view line, GoState* st) {
  if (!absl::StartsWith(line, "{")) return false;
  nlohmann::json ev = nlohmann::json::parse(line, nullptr,
                                            /*allow_exceptions=*/false);
  if (!ev.is_object()) return false;
  auto str = [&](const char* key) -> std::string {
    auto it = ev.find(key);
    return it != ev.end() && it->is_string() ? it->get<std::string>() : "";
  };
  std::string action = str("Action");
  if (action.empty()) return false;
  st->saw_json = true;
  std::string pkg = str("Package");
  std::string test = str("Test");
  if (action == "output") {
    std::string out(absl::StripAsciiWhitespace(str("Output")));
    if (!test.empty() && !out.empty() && !absl::StartsWith(out, "---") &&
        !absl::StartsWith(out, "===")) {
      st->last_output[test] = out;
    }
    return true;
  }
  std::optional<Verdict> v = GoAction(action);
  if (!v.has_value()) return true;
  TestVerdict& t =
      test.empty() ? st->packages.Add(pkg, *v) : st->tests.Add(test, *v);
  auto el = ev.find("Elapsed");
  if (el != ev.end() && el->is_number() && el->get<double>() >= 0 &&
      el->get<double>() < 1e7) {
    t.duration = absl::Seconds(el->get<double>());
  }
  if (*v == Verdict::kFailed && !test.empty()) {
    t.message = Field(st->last_output[test]);
  }
  return true;
}

// "--- PASS: TestX (0.00s)" (indented for subtests).
bool GoResultLine(absl::string_view line, GoState* st, TestVerdict** last) {
  absl::string_view s = absl::StripLeadingAsciiWhitespace(line);
  if (!absl::ConsumePrefix(&s, "--- ")) return false;
  size_t colon = s.find(": ");
  if (colon == absl::string_view::npos) return false;
  std::optional<Verdict> v = GoAction(s.substr(0, colon));
  if (!v.has_value()) return false;
  s.remove_prefix(colon + 2);
  size_t sp = s.find(' ');
  absl::string_view name = s.substr(0, sp);
  if (name.empty()) return false;
  TestVerdict& t = st->tests.Add(name, *v);
  if (sp != absl::string_view::npos) {
    absl::string_view d = absl::StripAsciiWhitespace(s.substr(sp));
    if (absl::ConsumePrefix(&d, "(") && absl::ConsumeSuffix(&d, "s)")) {
      t.duration = ParseSeconds(d);
    }
  }
  *last = &t;
  return true;
}

// "ok  \tpkg\t0.1s", "FAIL\tpkg\t0.1s", "FAIL\tpkg [build failed]".
void GoPackageLine(absl::string_view line, GoState* st) {
  std::vector<absl::string_view> f =
      absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
  if (f.size() < 2) return;
  if (f[0] == "ok") {
    st->packages.Add(f[1], Verdict::kPassed);
  } else if (f[0] == "FAIL") {
    bool build = absl::StrContains(line, "[build failed]") ||
                 absl::StrContains(line, "[setup failed]");
    TestVerdict& t =
        st->packages.Add(f[1], build ? Verdict::kError : Verdict::kFailed);
    if (build) t.message = Field(line.substr(line.find('[')));
  }
}

// ---- generic -----------------------------------------------------------

// Finds "N <word>" for `word` in `line`; true with the count when present.
bool FindCount(absl::string_view line, absl::string_view word, int* out) {
  size_t pos = 0;
  while ((pos = line.find(word, pos)) != absl::string_view::npos) {
    size_t end = pos + word.size();
    bool word_end = end == line.size() || !absl::ascii_isalpha(line[end]);
    size_t i = pos;
    if (i > 0 && line[i - 1] == ' ') --i;
    size_t digits_end = i;
    while (i > 0 && absl::ascii_isdigit(line[i - 1])) --i;
    bool word_start = i == 0 || !absl::ascii_isalnum(line[i - 1]);
    if (word_end && word_start && i < digits_end &&
        ParseCount(line.substr(i, digits_end - i), out)) {
      return true;
    }
    pos = end;
  }
  return false;
}

}  // namespace

absl::string_view VerdictName(Verdict verdict) {
  switch (verdict) {
    case Verdict::kPassed:
      return "passed";
    case Verdict::kFailed:
      return "failed";
    case Verdict::kError:
      return "error";
    case Verdict::kSkipped:
      return "skipped";
    case Verdict::kNotRun:
      return "not_run";
  }
  return "unknown";
}

TestCounts CountVerdicts(const std::vector<TestVerdict>& tests) {
  TestCounts c;
  for (const TestVerdict& t : tests) {
    switch (t.verdict) {
      case Verdict::kPassed:
        ++c.passed;
        break;
      case Verdict::kFailed:
        ++c.failed;
        break;
      case Verdict::kError:
        ++c.errors;
        break;
      case Verdict::kSkipped:
        ++c.skipped;
        break;
      case Verdict::kNotRun:
        ++c.not_run;
        break;
    }
  }
  return c;
}

ParsedOutput ParsePytest(absl::string_view output) {
  // Sections are told apart by "=== title ===" headers, which captured
  // output may imitate. Only lines pytest itself writes are read: run lines
  // before the first header other than "test session starts", short-summary
  // lines after the LAST "short test summary info" header (pytest prints it
  // after every captured-output section), and the summary, which must be
  // the last non-empty line (decorated, or bare under -q).
  std::vector<std::string> lines = Lines(output);
  for (std::string& l : lines) {
    l.resize(absl::StripTrailingAsciiWhitespace(l).size());
  }
  const size_t n = lines.size();
  size_t run_end = n;
  size_t last_short = n;
  size_t last_nonempty = n;
  for (size_t i = 0; i < n; ++i) {
    if (!lines[i].empty()) last_nonempty = i;
    std::optional<absl::string_view> title = PytestHeader(lines[i]);
    if (!title.has_value()) continue;
    if (absl::StrContains(*title, "short test summary info")) last_short = i;
    if (run_end == n && !absl::StrContains(*title, "test session starts")) {
      run_end = i;
    }
  }
  ParsedOutput out;
  if (last_nonempty < n) {
    absl::string_view last = lines[last_nonempty];
    out.summary = PytestSummary(PytestHeader(last).value_or(last));
  }
  VerdictSet set;
  for (size_t i = 0; i < run_end; ++i) {
    if (!PytestHeader(lines[i]).has_value()) PytestRunLine(lines[i], &set);
  }
  for (size_t i = last_short + 1; i < n; ++i) {
    if (PytestHeader(lines[i]).has_value()) break;
    PytestShortLine(lines[i], &set);
  }
  out.tests = set.Take();
  return out;
}

ParsedOutput ParseUnittest(absl::string_view output) {
  VerdictSet set;
  ParsedOutput out;
  std::optional<std::string> pending;  // a test whose verdict is still due
  std::optional<int> ran;
  TestVerdict* failure_block = nullptr;  // inside "FAIL: name" traceback
  bool in_trace = false;
  for (const std::string& raw : Lines(output)) {
    absl::string_view line = absl::StripTrailingAsciiWhitespace(raw);
    // Failure blocks: "=====", "FAIL: name", "-----", traceback, "-----"
    // or "=====". The traceback's last unindented line is the message.
    if (absl::StartsWith(line, "=====")) {
      failure_block = nullptr;
      in_trace = false;
      continue;
    }
    if (absl::StartsWith(line, "-----")) {
      in_trace = failure_block != nullptr && !in_trace;
      if (!in_trace) failure_block = nullptr;
      continue;
    }
    if (in_trace) {
      if (!line.empty() && !absl::StartsWith(line, " ") &&
          !absl::StartsWith(line, "Traceback")) {
        failure_block->message = Field(line);
      }
      continue;
    }
    absl::string_view rest = line;
    if (absl::ConsumePrefix(&rest, "Ran ")) {
      std::pair<absl::string_view, absl::string_view> p =
          absl::StrSplit(rest, absl::MaxSplits(' ', 1));
      int n;
      if (ParseCount(p.first, &n) && absl::StartsWith(p.second, "test")) {
        ran = n;
        continue;
      }
    }
    if (ran.has_value() &&
        (absl::StartsWith(line, "OK") || absl::StartsWith(line, "FAILED"))) {
      TestCounts c;
      UnittestTotals(line, &c);
      c.passed = std::max(0, *ran - c.failed - c.errors - c.skipped);
      out.summary = c;
      continue;
    }
    for (absl::string_view head : {"FAIL: ", "ERROR: "}) {
      if (absl::ConsumePrefix(&rest, head)) {
        if (std::optional<std::string> n = UnittestName(rest)) {
          failure_block = set.Find(*n);
          if (failure_block == nullptr) {
            failure_block = &set.Add(
                *n, head == "FAIL: " ? Verdict::kFailed : Verdict::kError);
          }
        }
        break;
      }
    }
    if (failure_block != nullptr) continue;
    size_t dots = line.rfind(" ... ");
    if (dots != absl::string_view::npos) {
      std::optional<Verdict> v = UnittestWord(line.substr(dots + 5));
      std::optional<std::string> n = UnittestName(line.substr(0, dots));
      if (n.has_value()) pending = n;  // "name ... <verdict or output>"
      if (v.has_value() && pending.has_value()) {
        set.Add(*pending, *v);
        pending.reset();
      }
      continue;
    }
    if (std::optional<std::string> n = UnittestName(line)) {
      pending = n;  // docstring on the next line
      continue;
    }
    if (pending.has_value()) {
      if (std::optional<Verdict> v = UnittestWord(line)) {
        set.Add(*pending, *v);
        pending.reset();
      }
    }
  }
  out.tests = set.Take();
  return out;
}

ParsedOutput ParseGoTest(absl::string_view output) {
  GoState st;
  std::vector<std::string> lines = Lines(output);
  for (const std::string& line : lines) GoJsonLine(line, &st);
  if (!st.saw_json) {
    // A failing test's log lines come before its "--- FAIL" with -v and
    // after it without.
    TestVerdict* last = nullptr;  // a "--- FAIL" still without a message
    std::string log;              // last log line since "=== RUN"
    for (const std::string& raw : lines) {
      absl::string_view line = absl::StripTrailingAsciiWhitespace(raw);
      if (GoResultLine(line, &st, &last)) {
        if (last->verdict == Verdict::kFailed && !log.empty()) {
          last->message = Field(log);
        }
        if (last->verdict != Verdict::kFailed || !last->message.empty()) {
          last = nullptr;
        }
        log.clear();
        continue;
      }
      if (absl::StartsWith(line, "=== ")) {
        log.clear();
        continue;
      }
      if (absl::StartsWith(line, "    ")) {
        if (last != nullptr) {
          last->message = Field(line);
          last = nullptr;
        } else {
          log = std::string(line);
        }
        continue;
      }
      GoPackageLine(line, &st);
    }
  } else {
    // Build failures are printed as text even with -json.
    for (const std::string& line : lines) {
      if (absl::StartsWith(line, "FAIL") &&
          absl::StrContains(line, " failed]")) {
        GoPackageLine(line, &st);
      }
    }
  }
  ParsedOutput out;
  out.tests = st.tests.Take();
  const bool no_tests = out.tests.empty();
  for (TestVerdict& p : st.packages.Take()) {
    if (no_tests || p.verdict == Verdict::kError) {
      p.name = absl::StrCat("package ", p.name);
      out.tests.push_back(std::move(p));
    }
  }
  return out;
}

ParsedOutput ParseGenericSummary(absl::string_view output) {
  ParsedOutput out;
  for (const std::string& line : Lines(output)) {
    TestCounts c;
    bool p = FindCount(line, "passed", &c.passed);
    bool f = FindCount(line, "failed", &c.failed);
    if (!p && !f) continue;
    if (!FindCount(line, "errors", &c.errors)) {
      FindCount(line, "error", &c.errors);
    }
    FindCount(line, "skipped", &c.skipped);
    out.summary = c;
  }
  return out;
}

absl::StatusOr<ParsedOutput> ParseJUnitXml(absl::string_view xml) {
  pugi::xml_document doc;
  pugi::xml_parse_result r = doc.load_buffer(xml.data(), xml.size());
  if (!r) {
    return absl::InvalidArgumentError(
        absl::StrCat("JUnit XML does not parse: ", r.description(),
                     " at offset ", r.offset));
  }
  VerdictSet set;
  // Iterative walk: hostile documents may nest deeply.
  std::vector<pugi::xml_node> stack = {doc.document_element()};
  while (!stack.empty()) {
    pugi::xml_node node = stack.back();
    stack.pop_back();
    if (node.type() != pugi::node_element) continue;
    if (absl::string_view(node.name()) != "testcase") {
      std::vector<pugi::xml_node> children;
      for (pugi::xml_node c : node.children()) children.push_back(c);
      stack.insert(stack.end(), children.rbegin(), children.rend());
      continue;
    }
    absl::string_view cls = node.attribute("classname").as_string();
    absl::string_view name = node.attribute("name").as_string();
    std::string full =
        cls.empty() ? std::string(name) : absl::StrCat(cls, ".", name);
    Verdict v = Verdict::kPassed;
    std::string message;
    for (pugi::xml_node c : node.children()) {
      absl::string_view tag = c.name();
      std::optional<Verdict> cv;
      if (tag == "failure") cv = Verdict::kFailed;
      if (tag == "error") cv = Verdict::kError;
      if (tag == "skipped") cv = Verdict::kSkipped;
      if (!cv.has_value()) continue;
      if (v != Verdict::kPassed && Severity(*cv) <= Severity(v)) continue;
      v = *cv;
      message = c.attribute("message").as_string();
      if (message.empty()) message = c.text().as_string();
    }
    TestVerdict& t = set.Add(full, v);
    t.message = Field(message);
    t.duration = ParseSeconds(node.attribute("time").as_string());
  }
  ParsedOutput out;
  out.tests = set.Take();
  if (out.tests.empty()) {
    return absl::InvalidArgumentError("JUnit XML holds no <testcase>");
  }
  return out;
}

std::string StripAnsi(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c != '\x1b') {
      out.push_back(c);
      continue;
    }
    if (i + 1 >= text.size()) break;
    char k = text[i + 1];
    if (k == '[') {  // CSI: parameters, intermediates, one final byte
      size_t j = i + 2;
      while (j < text.size() && !(text[j] >= 0x40 && text[j] <= 0x7e)) {
        ++j;
      }
      i = j;
    } else if (k == ']') {  // OSC: up to BEL or ESC '\'
      size_t j = i + 2;
      while (
          j < text.size() && text[j] != '\a' &&
          !(text[j] == '\x1b' && j + 1 < text.size() && text[j + 1] == '\\')) {
        ++j;
      }
      i = (j < text.size() && text[j] == '\x1b') ? j + 1 : j;
    } else {  // ESC, intermediates (0x20-0x2f), one final byte
      size_t j = i + 1;
      while (j < text.size() && text[j] >= 0x20 && text[j] <= 0x2f) ++j;
      i = j;
    }
  }
  return out;
}

std::string SanitizeForDisplay(absl::string_view text) {
  std::string s = StripAnsi(text);
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      bool ok = c >= 0x20 ? c != 0x7f : (c == '\n' || c == '\t');
      out.push_back(ok ? static_cast<char>(c) : '?');
      ++i;
      continue;
    }
    // Valid UTF-8 sequences are kept whole (no overlongs, no surrogates).
    int len = c >= 0xc2 && c <= 0xdf   ? 2
              : c >= 0xe0 && c <= 0xef ? 3
              : c >= 0xf0 && c <= 0xf4 ? 4
                                       : 0;
    bool valid = len > 0 && i + len <= s.size();
    for (int k = 1; valid && k < len; ++k) {
      valid = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
    }
    if (valid && len >= 3) {
      unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
      if ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 > 0x9f) ||
          (c == 0xf0 && c1 < 0x90) || (c == 0xf4 && c1 > 0x8f)) {
        valid = false;
      }
    }
    if (!valid) {
      out.push_back('?');
      ++i;
      continue;
    }
    out.append(s, i, len);
    i += len;
  }
  return out;
}

}  // namespace dsec::client::reward
