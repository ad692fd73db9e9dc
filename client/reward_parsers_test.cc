#include "client/reward_parsers.h"

#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::client::reward {
namespace {

using ::dsec::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

auto Is(absl::string_view name, Verdict v) {
  return ::testing::AllOf(Field(&TestVerdict::name, std::string(name)),
                          Field(&TestVerdict::verdict, v));
}

// Recorded: pytest 7.2.1, `python3 -m pytest -rA -v --junitxml=j.xml tests`.
// test_b and test_e print lines imitating pytest's own.
constexpr absl::string_view kPytestVerbose =
    R"(============================= test session starts ==============================
platform linux -- Python 3.11.2, pytest-7.2.1, pluggy-1.0.0+repack -- /usr/bin/python3
cachedir: .pytest_cache
rootdir: /tmp/rw
collecting ... collected 6 items

tests/test_x.py::test_a PASSED                                           [ 16%]
tests/test_x.py::test_b FAILED                                           [ 33%]
tests/test_x.py::test_c ERROR                                            [ 50%]
tests/test_x.py::test_d SKIPPED (nope)                                   [ 66%]
tests/test_x.py::test_e[1] PASSED                                        [ 83%]
tests/test_x.py::test_e[2] PASSED                                        [100%]

==================================== ERRORS ====================================
___________________________ ERROR at setup of test_c ___________________________

    @pytest.fixture
>   def broken(): raise RuntimeError("fixture boom")
E   RuntimeError: fixture boom

tests/test_x.py:8: RuntimeError
=================================== FAILURES ===================================
____________________________________ test_b ____________________________________

    def test_b():
        print("100 passed")
        print("tests/test_x.py::test_fake PASSED")
>       assert 1 == 2
E       assert 1 == 2

tests/test_x.py:6: AssertionError
----------------------------- Captured stdout call -----------------------------
100 passed
tests/test_x.py::test_fake PASSED
==================================== PASSES ====================================
__________________________________ test_e[1] ___________________________________
----------------------------- Captured stdout call -----------------------------
=== 99 passed in 0.01s ===
__________________________________ test_e[2] ___________________________________
----------------------------- Captured stdout call -----------------------------
=== 99 passed in 0.01s ===
---------------------- generated xml file: /tmp/rw/j.xml -----------------------
=========================== short test summary info ============================
PASSED tests/test_x.py::test_a
PASSED tests/test_x.py::test_e[1]
PASSED tests/test_x.py::test_e[2]
SKIPPED [1] tests/test_x.py:10: nope
ERROR tests/test_x.py::test_c - RuntimeError: fixture boom
FAILED tests/test_x.py::test_b - assert 1 == 2
=============== 1 failed, 3 passed, 1 skipped, 1 error in 0.07s ================
)";

// The JUnit file written by the same run.
constexpr absl::string_view kPytestJUnit =
    R"(<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="6" time="0.085" timestamp="2026-11-28T09:35:34.052055" hostname="vm"><testcase classname="tests.test_x" name="test_a" time="0.001" /><testcase classname="tests.test_x" name="test_b" time="0.001"><failure message="assert 1 == 2">def test_b():
&gt;       assert 1 == 2
E       assert 1 == 2

tests/test_x.py:6: AssertionError</failure></testcase><testcase classname="tests.test_x" name="test_c" time="0.001"><error message="failed on setup with &quot;RuntimeError: fixture boom&quot;">@pytest.fixture
tests/test_x.py:8: RuntimeError</error></testcase><testcase classname="tests.test_x" name="test_d" time="0.000"><skipped type="pytest.skip" message="nope">/tmp/rw/tests/test_x.py:10: nope</skipped></testcase><testcase classname="tests.test_x" name="test_e[1]" time="0.001" /><testcase classname="tests.test_x" name="test_e[2]" time="0.25" /></testsuite></testsuites>)";

// Recorded: Python 3.11.2, `python3 -m unittest -v test_u` (stderr).
constexpr absl::string_view kUnittestVerbose =
    R"(test_a (test_u.T.test_a) ... ok
test_b (test_u.T.test_b) ... FAIL
test_c (test_u.T.test_c) ... ERROR
test_d (test_u.T.test_d) ... skipped 'why'
test_e (test_u.T.test_e)
Doc line. ... ok

======================================================================
ERROR: test_c (test_u.T.test_c)
----------------------------------------------------------------------
Traceback (most recent call last):
  File "/tmp/rw/test_u.py", line 7, in test_c
    def test_c(self): raise RuntimeError("boom")
                      ^^^^^^^^^^^^^^^^^^^^^^^^^^
RuntimeError: boom

======================================================================
FAIL: test_b (test_u.T.test_b)
----------------------------------------------------------------------
Traceback (most recent call last):
  File "/tmp/rw/test_u.py", line 6, in test_b
    self.assertEqual(1, 2)
AssertionError: 1 != 2

----------------------------------------------------------------------
Ran 5 tests in 0.001s

FAILED (failures=1, errors=1, skipped=1)
)";

// Recorded: go 1.21, `go test -v ./...` with a failing, a skipped, a
// subtest and a package that does not build.
constexpr absl::string_view kGoVerbose = R"(# example.com/broken
broken/b.go:3:1: syntax error: non-declaration statement outside function body
=== RUN   TestAdd
--- PASS: TestAdd (0.00s)
=== RUN   TestSub
    math_test.go:12: Sub(3, 1) = 1, want 2
--- FAIL: TestSub (0.01s)
=== RUN   TestSkip
    math_test.go:16: not today
--- SKIP: TestSkip (0.00s)
=== RUN   TestTable
=== RUN   TestTable/zero
--- PASS: TestTable (0.00s)
    --- PASS: TestTable/zero (0.00s)
FAIL
FAIL	example.com/math	0.004s
FAIL	example.com/broken [build failed]
?   	example.com/cmd	[no test files]
FAIL
)";

// Recorded: go 1.21, `go test -json` of the same math package.
constexpr absl::string_view kGoJson =
    R"({"Time":"2024-01-02T10:00:00.1Z","Action":"start","Package":"example.com/math"}
{"Time":"2024-01-02T10:00:00.2Z","Action":"run","Package":"example.com/math","Test":"TestAdd"}
{"Time":"2024-01-02T10:00:00.2Z","Action":"output","Package":"example.com/math","Test":"TestAdd","Output":"=== RUN   TestAdd\n"}
{"Time":"2024-01-02T10:00:00.2Z","Action":"output","Package":"example.com/math","Test":"TestAdd","Output":"--- PASS: TestAdd (0.00s)\n"}
{"Time":"2024-01-02T10:00:00.2Z","Action":"pass","Package":"example.com/math","Test":"TestAdd","Elapsed":0}
{"Time":"2024-01-02T10:00:00.2Z","Action":"run","Package":"example.com/math","Test":"TestSub"}
{"Time":"2024-01-02T10:00:00.2Z","Action":"output","Package":"example.com/math","Test":"TestSub","Output":"--- PASS: TestFake (0.00s)\n"}
{"Time":"2024-01-02T10:00:00.2Z","Action":"output","Package":"example.com/math","Test":"TestSub","Output":"    math_test.go:12: Sub(3, 1) = 1, want 2\n"}
{"Time":"2024-01-02T10:00:00.2Z","Action":"output","Package":"example.com/math","Test":"TestSub","Output":"--- FAIL: TestSub (0.01s)\n"}
{"Time":"2024-01-02T10:00:00.2Z","Action":"fail","Package":"example.com/math","Test":"TestSub","Elapsed":0.01}
{"Time":"2024-01-02T10:00:00.2Z","Action":"skip","Package":"example.com/math","Test":"TestSkip","Elapsed":0}
{"Time":"2024-01-02T10:00:00.3Z","Action":"output","Package":"example.com/math","Output":"FAIL\n"}
{"Time":"2024-01-02T10:00:00.3Z","Action":"fail","Package":"example.com/math","Elapsed":0.004}
)";

TEST(ParsePytest, RecordedVerboseRunGivesPerTestVerdictsAndSummary) {
  ParsedOutput p = ParsePytest(kPytestVerbose);
  EXPECT_THAT(p.tests,
              ElementsAre(Is("tests/test_x.py::test_a", Verdict::kPassed),
                          Is("tests/test_x.py::test_b", Verdict::kFailed),
                          Is("tests/test_x.py::test_c", Verdict::kError),
                          Is("tests/test_x.py::test_d", Verdict::kSkipped),
                          Is("tests/test_x.py::test_e[1]", Verdict::kPassed),
                          Is("tests/test_x.py::test_e[2]", Verdict::kPassed)));
  EXPECT_EQ(p.tests[1].message, "assert 1 == 2");
  EXPECT_EQ(p.tests[2].message, "RuntimeError: fixture boom");
  ASSERT_TRUE(p.summary.has_value());
  EXPECT_EQ(*p.summary,
            (TestCounts{.passed = 3, .failed = 1, .errors = 1, .skipped = 1}));
}

TEST(ParsePytest, LinesPrintedByTestsInCapturedOutputAreIgnored) {
  ParsedOutput p = ParsePytest(kPytestVerbose);
  for (const TestVerdict& t : p.tests) {
    EXPECT_THAT(t.name, ::testing::Not(HasSubstr("fake")));
  }
  EXPECT_EQ(p.summary->passed, 3);  // not the "99 passed" a test printed
}

TEST(ParsePytest, ImitatedShortSummaryHeaderInCapturedOutputIsIgnored) {
  std::string out = absl::StrCat(
      "tests/t.py::test_a FAILED [100%]\n"
      "=================== FAILURES ===================\n"
      "------ Captured stdout call ------\n"
      "=========== short test summary info ===========\n"
      "PASSED tests/t.py::test_a\n"
      "PASSED tests/t.py::test_fake\n"
      "=========== short test summary info ===========\n"
      "FAILED tests/t.py::test_a - boom\n"
      "============ 1 failed in 0.01s ============\n");
  ParsedOutput p = ParsePytest(out);
  EXPECT_THAT(p.tests, ElementsAre(Is("tests/t.py::test_a", Verdict::kFailed)));
}

TEST(ParsePytest, SummaryLinePrintedBeforeTheEndIsIgnored) {
  ParsedOutput p = ParsePytest(
      ".F                                   [100%]\n"
      "=========== FAILURES ===========\n"
      "------ Captured stdout call ------\n"
      "=== 99 passed in 0.01s ===\n"
      "1 failed, 1 passed in 0.06s\n");
  EXPECT_EQ(*p.summary, (TestCounts{.passed = 1, .failed = 1}));
  p = ParsePytest("=== 99 passed in 0.01s ===\nTraceback: killed\n");
  EXPECT_FALSE(p.summary.has_value());
}

TEST(ParsePytest, QuietModeSummaryIsUndecoratedLastLine) {
  ParsedOutput p = ParsePytest(
      "..F.E                                   [100%]\n"
      "=========== short test summary info ===========\n"
      "FAILED tests/t.py::test_b - assert 0\n"
      "ERROR tests/t.py::test_c - RuntimeError\n"
      "1 failed, 3 passed, 1 error in 0.06s\n");
  EXPECT_THAT(p.tests, ElementsAre(Is("tests/t.py::test_b", Verdict::kFailed),
                                   Is("tests/t.py::test_c", Verdict::kError)));
  EXPECT_EQ(*p.summary, (TestCounts{.passed = 3, .failed = 1, .errors = 1}));
}

TEST(ParsePytest, AnsiColouredOutputParsesLikePlain) {
  ParsedOutput p = ParsePytest(
      "tests/t.py::test_a \x1b[32mPASSED\x1b[0m\x1b[32m     [100%]\x1b[0m\n"
      "\x1b[32m====== \x1b[32m\x1b[1m1 passed\x1b[0m\x1b[32m in 0.01s\x1b[0m"
      "\x1b[32m ======\x1b[0m\n");
  EXPECT_THAT(p.tests, ElementsAre(Is("tests/t.py::test_a", Verdict::kPassed)));
  EXPECT_EQ(p.summary->passed, 1);
}

TEST(ParsePytest, NoTestsRanIsAnEmptySummary) {
  ParsedOutput p =
      ParsePytest("============ no tests ran in 0.01s ============\n");
  EXPECT_THAT(p.tests, IsEmpty());
  ASSERT_TRUE(p.summary.has_value());
  EXPECT_EQ(p.summary->scored(), 0);
}

TEST(ParseUnittest, RecordedVerboseRunGivesVerdictsMessagesAndSummary) {
  ParsedOutput p = ParseUnittest(kUnittestVerbose);
  EXPECT_THAT(p.tests, ElementsAre(Is("test_u.T.test_a", Verdict::kPassed),
                                   Is("test_u.T.test_b", Verdict::kFailed),
                                   Is("test_u.T.test_c", Verdict::kError),
                                   Is("test_u.T.test_d", Verdict::kSkipped),
                                   Is("test_u.T.test_e", Verdict::kPassed)));
  EXPECT_EQ(p.tests[1].message, "AssertionError: 1 != 2");
  EXPECT_EQ(p.tests[2].message, "RuntimeError: boom");
  EXPECT_EQ(*p.summary,
            (TestCounts{.passed = 2, .failed = 1, .errors = 1, .skipped = 1}));
}

TEST(ParseUnittest, OldStyleNamesAndVerdictAfterPrintedOutput) {
  ParsedOutput p = ParseUnittest(
      "test_a (mod.Case) ... some printed text\n"
      "more text\n"
      "ok\n"
      "test_b (mod.Case) ... expected failure\n"
      "\n"
      "----------------------------------------------------------------------\n"
      "Ran 2 tests in 0.000s\n"
      "\n"
      "OK (expected failures=1)\n");
  EXPECT_THAT(p.tests, ElementsAre(Is("mod.Case.test_a", Verdict::kPassed),
                                   Is("mod.Case.test_b", Verdict::kSkipped)));
  EXPECT_EQ(*p.summary, (TestCounts{.passed = 1, .skipped = 1}));
}

TEST(ParseGoTest, RecordedVerboseTextGivesTestsAndBuildFailure) {
  ParsedOutput p = ParseGoTest(kGoVerbose);
  EXPECT_THAT(p.tests,
              ElementsAre(Is("TestAdd", Verdict::kPassed),
                          Is("TestSub", Verdict::kFailed),
                          Is("TestSkip", Verdict::kSkipped),
                          Is("TestTable", Verdict::kPassed),
                          Is("TestTable/zero", Verdict::kPassed),
                          Is("package example.com/broken", Verdict::kError)));
  EXPECT_EQ(p.tests[1].message, "math_test.go:12: Sub(3, 1) = 1, want 2");
  EXPECT_EQ(p.tests[1].duration, absl::Milliseconds(10));
}

TEST(ParseGoTest, NonVerbosePackageLinesBecomeVerdicts) {
  ParsedOutput p = ParseGoTest(
      "ok  \texample.com/a\t0.01s\n"
      "--- \n"
      "FAIL\texample.com/b\t0.02s\n");
  EXPECT_THAT(p.tests,
              ElementsAre(Is("package example.com/a", Verdict::kPassed),
                          Is("package example.com/b", Verdict::kFailed)));
}

TEST(ParseGoTest, JsonEventsAreTrustedOverOutputPayloads) {
  ParsedOutput p = ParseGoTest(kGoJson);
  EXPECT_THAT(p.tests, ElementsAre(Is("TestAdd", Verdict::kPassed),
                                   Is("TestSub", Verdict::kFailed),
                                   Is("TestSkip", Verdict::kSkipped)));
  EXPECT_EQ(p.tests[1].message, "math_test.go:12: Sub(3, 1) = 1, want 2");
}

TEST(ParseGenericSummary, LastSummaryLineWins) {
  ParsedOutput p = ParseGenericSummary(
      "running\n10 passed, 0 failed\nsomething\n"
      "Results: 7 passed, 2 failed, 1 error, 3 skipped\n");
  EXPECT_THAT(p.tests, IsEmpty());
  EXPECT_EQ(*p.summary,
            (TestCounts{.passed = 7, .failed = 2, .errors = 1, .skipped = 3}));
  EXPECT_FALSE(ParseGenericSummary("bypassed 3 failedness").summary);
}

TEST(ParseJUnitXml, PytestFileGivesVerdictsDurationsAndMessages) {
  ASSERT_OK_AND_ASSIGN(ParsedOutput p, ParseJUnitXml(kPytestJUnit));
  EXPECT_THAT(p.tests,
              ElementsAre(Is("tests.test_x.test_a", Verdict::kPassed),
                          Is("tests.test_x.test_b", Verdict::kFailed),
                          Is("tests.test_x.test_c", Verdict::kError),
                          Is("tests.test_x.test_d", Verdict::kSkipped),
                          Is("tests.test_x.test_e[1]", Verdict::kPassed),
                          Is("tests.test_x.test_e[2]", Verdict::kPassed)));
  EXPECT_EQ(p.tests[1].message, "assert 1 == 2");
  EXPECT_EQ(p.tests[5].duration, absl::Milliseconds(250));
}

TEST(ParseJUnitXml, NestedSuitesAreWalked) {
  ASSERT_OK_AND_ASSIGN(
      ParsedOutput p,
      ParseJUnitXml("<testsuites><testsuite><testsuite><testcase name=\"a\"/>"
                    "</testsuite><testcase name=\"b\"><failure/></testcase>"
                    "</testsuite></testsuites>"));
  EXPECT_THAT(p.tests, ElementsAre(Is("a", Verdict::kPassed),
                                   Is("b", Verdict::kFailed)));
}

TEST(ParseJUnitXml, MalformedOrEmptyDocumentsAreInvalidArgument) {
  EXPECT_THAT(ParseJUnitXml("<testsuite><testcase name='a'>"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseJUnitXml(""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      ParseJUnitXml("<testsuite tests='5'/>"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no <testcase>")));
}

TEST(ParseJUnitXml, DeepNestingDoesNotOverflowTheStack) {
  std::string xml;
  for (int i = 0; i < 100000; ++i) xml += "<a>";
  xml += "<testcase name='deep'/>";
  for (int i = 0; i < 100000; ++i) xml += "</a>";
  absl::StatusOr<ParsedOutput> p = ParseJUnitXml(xml);
  if (p.ok()) {
    EXPECT_EQ(p->tests.size(), 1u);
  }
}

TEST(SanitizeForDisplay, StripsAnsiAndReplacesControlAndInvalidBytes) {
  EXPECT_EQ(StripAnsi("\x1b[1;31mred\x1b[0m \x1b]0;title\x07x\x1b(B"), "red x");
  EXPECT_EQ(SanitizeForDisplay("a\x01\tb\n\xff\xc3\xa9\xed\xa0\x80"),
            "a?\tb\n?\xc3\xa9???");
}

// Every parser on random bytes, on random cuts and splices of the recorded
// outputs, and on one huge line: no crash, bounded time.
TEST(ParserFuzz, GarbageNeverCrashesAnyParser) {
  std::mt19937 rng(42);
  const std::vector<absl::string_view> seeds = {
      kPytestVerbose, kUnittestVerbose, kGoVerbose, kGoJson, kPytestJUnit};
  auto run_all = [](absl::string_view s) {
    ParsePytest(s);
    ParseUnittest(s);
    ParseGoTest(s);
    ParseGenericSummary(s);
    (void)ParseJUnitXml(s);
    SanitizeForDisplay(s);
  };
  for (int i = 0; i < 2000; ++i) {
    std::string s;
    if (i % 2 == 0) {
      s.resize(rng() % 2048);
      for (char& c : s) c = static_cast<char>(rng());
    } else {
      absl::string_view a = seeds[rng() % seeds.size()];
      absl::string_view b = seeds[rng() % seeds.size()];
      size_t cut_a = rng() % (a.size() + 1), cut_b = rng() % (b.size() + 1);
      s = absl::StrCat(a.substr(0, cut_a), b.substr(cut_b));
      for (int k = 0; k < 5 && !s.empty(); ++k) {
        s[rng() % s.size()] = "\x1b[\r\n\0=:-. \xff"[rng() % 12];
      }
    }
    run_all(s);
  }
  absl::Time start = absl::Now();
  run_all(std::string(8 << 20, '='));
  run_all(absl::StrCat(std::string(4 << 20, '1'), " passed in 0.1s"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
}

}  // namespace
}  // namespace dsec::client::reward
