// Test-output parsers for reward evaluation: turn what a test runner printed
// (pytest, unittest, go test, a generic "N passed, M failed" line) or wrote
// (JUnit XML) into per-test verdicts and the runner's own summary counts.
//
// Input is untrusted sandbox output: any bytes, any size, ANSI colour codes,
// '\r' progress lines, and lines the program under test printed itself to
// look like a runner's. Parsers never crash or throw on it; they return what
// they recognised (possibly nothing). They use no regex engine (no
// backtracking, no recursion on long lines): cost is linear in the input.
//
// Trust order, so that a candidate printing "100 passed" gains nothing:
//   - per-test lines are read only where the runner writes them (pytest: the
//     run section and the "short test summary info" section, never captured
//     output sections; go test -json: structured events, never "output"
//     payloads);
//   - a summary is the LAST summary line of the output (runners print theirs
//     last); for pytest it must be the last non-empty line;
//   - go test's text mode cannot tell a "--- PASS: TestX" printed by a test
//     from the runner's own; use go test -json, whose events are trusted
//     and whose "output" payloads are not;
//   - the evaluator (reward.h) cross-checks both against each other and
//     against the exit code, and only ever lowers a reward on disagreement.
//
// Pure functions; thread-safe.
#ifndef DSEC_CLIENT_REWARD_PARSERS_H_
#define DSEC_CLIENT_REWARD_PARSERS_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace dsec::client::reward {

enum class Verdict {
  kPassed,
  kFailed,
  kError,    // the test could not run to a verdict (fixture/collection error)
  kSkipped,  // skipped or expected failure: not in the reward's denominator
  kNotRun,   // not run because of stop_at_first_failure: counts as failed
};

absl::string_view VerdictName(Verdict verdict);

struct TestVerdict {
  std::string name;
  Verdict verdict = Verdict::kPassed;
  std::optional<absl::Duration> duration;
  // Short reason for a non-pass (assertion line, "timed out", ...).
  std::string message;
  // Repeat-K evaluation: passed in some runs and failed in others.
  bool flaky = false;
};

struct TestCounts {
  int passed = 0;
  int failed = 0;
  int errors = 0;
  int skipped = 0;
  int not_run = 0;

  // Tests that count for the reward: everything but skipped.
  int scored() const { return passed + failed + errors + not_run; }
  bool operator==(const TestCounts&) const = default;
};

TestCounts CountVerdicts(const std::vector<TestVerdict>& tests);

struct ParsedOutput {
  std::vector<TestVerdict> tests;
  // The runner's own totals, when it printed (or wrote) a summary.
  std::optional<TestCounts> summary;

  bool empty() const { return tests.empty() && !summary.has_value(); }
};

// pytest with -v and/or -rA: "path::test PASSED [ 50%]" run lines, the
// "PASSED path::test" / "FAILED path::test - msg" short summary, and the
// final "=== 3 passed, 1 failed, 2 errors in 0.12s ===" (or -q
// "3 passed in 0.12s") line, which must end the output (give stdout last).
// XFAIL counts as skipped, XPASS as passed.
ParsedOutput ParsePytest(absl::string_view output);

// python -m unittest -v (stderr; give it last): "test_a (mod.Class) ...
// ok|FAIL|ERROR| skipped 'why'|expected failure|unexpected success", with the
// verdict on a later line when the test printed; "FAIL: test_a (mod.Class)"
// blocks give messages; "Ran N tests" + "OK (skipped=1)" / "FAILED (failures=1,
// errors=2)" give the summary.
ParsedOutput ParseUnittest(absl::string_view output);

// go test [-v] text ("--- PASS: TestX (0.00s)", "--- FAIL:", "--- SKIP:",
// "ok  pkg 0.1s", "FAIL pkg [build failed]") and go test -json event lines,
// mixed freely. Packages without any test verdict become one verdict each
// (a build failure is an error).
ParsedOutput ParseGoTest(absl::string_view output);

// The last line holding "N passed" and/or "N failed" (also "errors",
// "skipped"); counts only, no per-test verdicts.
ParsedOutput ParseGenericSummary(absl::string_view output);

// JUnit XML (pytest --junitxml, go-junit-report, surefire...): every
// <testcase> at any depth, named "classname.name"; <failure>, <error>,
// <skipped> children; time="seconds". INVALID_ARGUMENT when the document
// does not parse or holds no <testcase>.
absl::StatusOr<ParsedOutput> ParseJUnitXml(absl::string_view xml);

// Removes ANSI escape sequences (CSI, OSC, two-byte ESC forms).
std::string StripAnsi(absl::string_view text);

// Printable, valid UTF-8 text for logs and results: ANSI stripped, invalid
// UTF-8 and control bytes other than '\n' and '\t' replaced by '?'.
std::string SanitizeForDisplay(absl::string_view text);

}  // namespace dsec::client::reward

#endif  // DSEC_CLIENT_REWARD_PARSERS_H_
