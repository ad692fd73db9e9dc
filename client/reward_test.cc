#include "client/reward.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/testing/host_sandbox_io.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::client::reward {
namespace {

using ::dsec::client::testing::HostSandboxIo;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::Field;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

auto Is(absl::string_view name, Verdict v) {
  return AllOf(Field(&TestVerdict::name, std::string(name)),
               Field(&TestVerdict::verdict, v));
}

class RewardTest : public ::testing::Test {
 protected:
  RewardTest() : io_(dir_.path()) {}

  // pytest from the host's /usr/bin/python3 (HostSandboxIo's PATH).
  bool HavePytest() {
    absl::StatusOr<ExecOutcome> o =
        io_.Run(Command::Argv({"python3", "-m", "pytest", "--version"}));
    return o.ok() && o->ok();
  }

  static Command Pytest(std::vector<std::string> extra = {}) {
    Command c = Command::Argv(
        {"python3", "-m", "pytest", "-rA", "-v", "-p", "no:cacheprovider"});
    c.argv.insert(c.argv.end(), extra.begin(), extra.end());
    return c;
  }

  dsec::testing::TempDir dir_;
  HostSandboxIo io_;
};

#define REQUIRE_PYTEST()                                            \
  do {                                                              \
    if (!HavePytest()) GTEST_SKIP() << "python3 -m pytest missing"; \
  } while (false)

// Three passing, one failing, one erroring, one skipped test.
const char kMixedTests[] = R"(import pytest
def test_a(): assert 1 == 1
def test_b():
    print("=== 99 passed in 0.01s ===")
    print("tests/test_m.py::test_fake PASSED")
    assert 1 == 2
@pytest.fixture
def broken(): raise RuntimeError("fixture boom")
def test_c(broken): pass
@pytest.mark.skip(reason="nope")
def test_d(): pass
@pytest.mark.parametrize("v", [1, 2])
def test_e(v): assert v
)";

TEST_F(RewardTest, RealPytestRunIsScoredFromPerTestLines) {
  REQUIRE_PYTEST();
  RewardSpec spec;
  spec.files = {{"tests/test_m.py", kMixedTests}};
  spec.test_command = Pytest({"tests"});
  spec.parser = ParserKind::kPytest;
  RewardResult r = Evaluate(io_, spec);
  ASSERT_EQ(r.state, EvalState::kScored) << r.reason << r.output_tail;
  EXPECT_THAT(r.tests,
              ElementsAre(Is("tests/test_m.py::test_a", Verdict::kPassed),
                          Is("tests/test_m.py::test_b", Verdict::kFailed),
                          Is("tests/test_m.py::test_c", Verdict::kError),
                          Is("tests/test_m.py::test_d", Verdict::kSkipped),
                          Is("tests/test_m.py::test_e[1]", Verdict::kPassed),
                          Is("tests/test_m.py::test_e[2]", Verdict::kPassed)));
  EXPECT_DOUBLE_EQ(r.reward, 3.0 / 5);  // skipped does not count
  EXPECT_EQ(r.counts,
            (TestCounts{.passed = 3, .failed = 1, .errors = 1, .skipped = 1}));
  EXPECT_EQ(r.runs, 1);
  EXPECT_THAT(r.output_tail, HasSubstr("1 failed, 3 passed"));

  spec.policy = RewardPolicy::kAllOrNothing;
  EXPECT_EQ(Evaluate(io_, spec).reward, 0.0);
}

TEST_F(RewardTest, PytestWithoutPerTestLinesForPassesIsScoredFromSummary) {
  REQUIRE_PYTEST();
  RewardSpec spec;
  spec.files = {{"tests/test_m.py", kMixedTests}};
  spec.test_command = Command::Argv(
      {"python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"});
  spec.parser = ParserKind::kPytest;
  RewardResult r = Evaluate(io_, spec);
  ASSERT_EQ(r.state, EvalState::kScored) << r.reason << r.output_tail;
  EXPECT_DOUBLE_EQ(r.reward, 3.0 / 5);
  EXPECT_EQ(r.counts,
            (TestCounts{.passed = 3, .failed = 1, .errors = 1, .skipped = 1}));
  EXPECT_THAT(r.reason, HasSubstr("scored from the runner's summary"));
}

TEST_F(RewardTest, RealPytestJUnitXmlIsReadAfterTheRun) {
  REQUIRE_PYTEST();
  RewardSpec spec;
  spec.files = {
      {"tests/test_m.py", kMixedTests},
      // Planted by the candidate: must not count.
      {"out/junit.xml", "<testsuite><testcase name='x'/></testsuite>"}};
  spec.test_command = Pytest({"tests", "--junitxml=out/junit.xml"});
  spec.parser = ParserKind::kJUnitXml;
  spec.junit_path = "out/junit.xml";
  RewardResult r = Evaluate(io_, spec);
  ASSERT_EQ(r.state, EvalState::kScored) << r.reason;
  EXPECT_EQ(r.counts,
            (TestCounts{.passed = 3, .failed = 1, .errors = 1, .skipped = 1}));
  EXPECT_DOUBLE_EQ(r.reward, 0.6);
  EXPECT_TRUE(r.tests[0].duration.has_value());

  spec.test_command = Pytest({"tests"});  // writes no XML
  spec.files.pop_back();
  r = Evaluate(io_, spec);
  EXPECT_EQ(r.state, EvalState::kUnparseable);
  EXPECT_THAT(r.reason, HasSubstr("was not written"));
}

TEST_F(RewardTest, RealUnittestRunIsParsedFromStderr) {
  RewardSpec spec;
  spec.files = {{"test_u.py", R"(import unittest
class T(unittest.TestCase):
    def test_a(self): pass
    def test_b(self): self.assertEqual(1, 2)
    @unittest.skip("why")
    def test_c(self): pass
)"}};
  spec.test_command =
      Command::Argv({"python3", "-m", "unittest", "-v", "test_u"});
  spec.parser = ParserKind::kUnittest;
  RewardResult r = Evaluate(io_, spec);
  ASSERT_EQ(r.state, EvalState::kScored) << r.reason << r.output_tail;
  EXPECT_EQ(r.counts, (TestCounts{.passed = 1, .failed = 1, .skipped = 1}));
  EXPECT_DOUBLE_EQ(r.reward, 0.5);
  EXPECT_THAT(
      r.tests,
      Contains(AllOf(Is("test_u.T.test_b", Verdict::kFailed),
                     Field(&TestVerdict::message, "AssertionError: 1 != 2"))));
}

TEST_F(RewardTest, ExitCodeParserGivesOneOrZero) {
  RewardSpec spec;
  spec.test_command = Command::Shell("exit 0");
  RewardResult r = Evaluate(io_, spec);
  EXPECT_EQ(r.state, EvalState::kScored);
  EXPECT_EQ(r.reward, 1.0);
  spec.test_command = Command::Shell("exit 3");
  r = Evaluate(io_, spec);
  EXPECT_EQ(r.state, EvalState::kScored);
  EXPECT_EQ(r.reward, 0.0);
  EXPECT_THAT(r.tests, ElementsAre(Is("exit code", Verdict::kFailed)));
}

TEST_F(RewardTest, SetupFailureIsAProgramFailureScoredZero) {
  RewardSpec spec;
  spec.files = {{"main.c", "int main( {"}};
  spec.setup = Command::Shell("echo 'main.c:1: error: expected' >&2; exit 1");
  spec.test_command = Command::Shell("./main");
  RewardResult r = Evaluate(io_, spec);
  EXPECT_EQ(r.state, EvalState::kProgramFailed);
  EXPECT_TRUE(r.usable());
  EXPECT_EQ(r.reward, 0.0);
  EXPECT_THAT(r.reason, HasSubstr("setup exited with code 1"));
  EXPECT_THAT(r.output_tail, HasSubstr("error: expected"));
  EXPECT_EQ(r.runs, 1);
}

TEST_F(RewardTest, GenericSummaryScoresFromItsCounts) {
  RewardSpec spec;
  spec.test_command = Command::Shell("echo 'run: 7 passed, 3 failed'; exit 1");
  spec.parser = ParserKind::kGeneric;
  RewardResult r = Evaluate(io_, spec);
  ASSERT_EQ(r.state, EvalState::kScored) << r.reason;
  EXPECT_DOUBLE_EQ(r.reward, 0.7);
  EXPECT_EQ(r.counts, (TestCounts{.passed = 7, .failed = 3}));
}

TEST_F(RewardTest, TimeoutIsAProgramFailureWithTheReason) {
  RewardSpec spec;
  spec.test_command = Command::Shell("echo '1 passed'; sleep 5");
  spec.test_command.timeout = absl::Milliseconds(200);
  spec.parser = ParserKind::kGeneric;
  RewardResult r = Evaluate(io_, spec);
  EXPECT_EQ(r.state, EvalState::kProgramFailed);
  EXPECT_EQ(r.reward, 0.0);
  EXPECT_THAT(r.reason, HasSubstr("timed out"));
}

TEST_F(RewardTest, RepeatDetectsAFlakyTestAlternatingViaACounterFile) {
  REQUIRE_PYTEST();
  RewardSpec spec;
  spec.files = {{"tests/test_f.py", R"(import os
def test_stable(): pass
def test_flaky():
    n = int(open("counter").read()) if os.path.exists("counter") else 0
    open("counter", "w").write(str(n + 1))
    assert n % 3 != 1   # fails on the 2nd of every 3 runs
)"}};
  spec.test_command = Pytest({"tests"});
  spec.parser = ParserKind::kPytest;
  spec.repeat = 3;
  RewardResult r = Evaluate(io_, spec);
  ASSERT_EQ(r.state, EvalState::kScored) << r.reason;
  EXPECT_EQ(r.runs, 3);
  EXPECT_THAT(r.flaky, ElementsAre("tests/test_f.py::test_flaky"));
  EXPECT_THAT(r.tests,
              ElementsAre(Is("tests/test_f.py::test_stable", Verdict::kPassed),
                          Is("tests/test_f.py::test_flaky", Verdict::kFailed)));
  EXPECT_TRUE(r.tests[1].flaky);
  EXPECT_THAT(r.tests[1].message, HasSubstr("passed 2 of 3"));
  EXPECT_DOUBLE_EQ(r.reward, 0.5);

  // Under kMajority, 2 of 3 passes is a pass (counter continues at 3).
  spec.flaky_policy = FlakyPolicy::kMajority;
  r = Evaluate(io_, spec);
  EXPECT_THAT(r.flaky, ElementsAre("tests/test_f.py::test_flaky"));
  EXPECT_DOUBLE_EQ(r.reward, 1.0);
}

TEST_F(RewardTest, CasesRunInOneSandboxWithStdinAndExpectedOutput) {
  RewardSpec spec;
  spec.files = {{"sol.py",
                 "a, b = map(int, input().split())\n"
                 "print(a + b, ' ')\nprint()\n"}};
  spec.test_command = Command::Argv({"python3", "sol.py"});
  spec.cases = {
      {.name = "small", .stdin_data = "1 2\n", .expected_stdout = "3"},
      {.stdin_data = "2 2\n", .expected_stdout = "5\n"},
      {.name = "big",
       .stdin_data = "1000000 1\n",
       .expected_stdout = "1000001\n"},
      {.name = "crash", .stdin_data = "x\n", .expected_stdout = "0"}};
  RewardResult r = Evaluate(io_, spec);
  ASSERT_EQ(r.state, EvalState::kScored) << r.reason;
  EXPECT_EQ(io_.runs(), 4);
  EXPECT_THAT(
      r.tests,
      ElementsAre(Is("small", Verdict::kPassed), Is("case_1", Verdict::kFailed),
                  Is("big", Verdict::kPassed), Is("crash", Verdict::kFailed)));
  EXPECT_EQ(r.tests[1].message,
            "wrong answer: line 1: expected \"5\", got \"4\"");
  EXPECT_EQ(r.tests[3].message, "exited with code 1");
  EXPECT_DOUBLE_EQ(r.reward, 0.5);

  spec.whitespace = WhitespaceMode::kExact;  // "3  \n\n" != "3"
  EXPECT_EQ(Evaluate(io_, spec).counts.passed, 0);
}

TEST(OutputMatches, WhitespaceModes) {
  EXPECT_TRUE(
      OutputMatches("1 2\n3  \n\n", "1 2\n3", WhitespaceMode::kIgnoreTrailing));
  EXPECT_FALSE(
      OutputMatches("1  2\n3", "1 2\n3", WhitespaceMode::kIgnoreTrailing));
  EXPECT_TRUE(OutputMatches("1  2\n3", "1 2 3\n", WhitespaceMode::kTokens));
  EXPECT_FALSE(OutputMatches("1 2 3", "1 2 4", WhitespaceMode::kTokens));
  EXPECT_FALSE(OutputMatches("3\n", "3", WhitespaceMode::kExact));
}

TEST_F(RewardTest, StopAtFirstFailureSkipsLaterCasesAndCountsThemFailed) {
  RewardSpec spec;
  spec.cases = {{.command = Command::Shell("true")},
                {.command = Command::Shell("false")},
                {.command = Command::Shell("true")}};
  spec.stop_at_first_failure = true;
  spec.repeat = 2;
  RewardResult r = Evaluate(io_, spec);
  EXPECT_EQ(r.runs, 2);  // neither the third case nor the second repeat
  EXPECT_THAT(r.tests, ElementsAre(Is("case_0", Verdict::kPassed),
                                   Is("case_1", Verdict::kFailed),
                                   Is("case_2", Verdict::kNotRun)));
  EXPECT_DOUBLE_EQ(r.reward, 1.0 / 3);
}

TEST_F(RewardTest, StopAtFirstFailurePassesExitFirstToPytest) {
  REQUIRE_PYTEST();
  RewardSpec spec;
  spec.files = {{"tests/test_s.py",
                 "def test_1(): assert 0\ndef test_2(): assert 0\n"
                 "def test_3(): pass\n"}};
  spec.test_command = Pytest({"tests"});
  spec.parser = ParserKind::kPytest;
  spec.stop_at_first_failure = true;
  RewardResult r = Evaluate(io_, spec);
  ASSERT_EQ(r.state, EvalState::kScored) << r.reason;
  EXPECT_THAT(r.tests,
              ElementsAre(Is("tests/test_s.py::test_1", Verdict::kFailed)));
  EXPECT_THAT(r.output_tail, HasSubstr("stopping after 1 failures"));
}

// ---- lying and hostile output --------------------------------------------

TEST_F(RewardTest, PrintedPassSummaryWithNonZeroExitCannotScoreOne) {
  RewardSpec spec;
  spec.test_command = Command::Shell("echo '100 passed, 0 failed'; exit 1");
  spec.parser = ParserKind::kGeneric;
  RewardResult r = Evaluate(io_, spec);
  ASSERT_EQ(r.state, EvalState::kScored);
  EXPECT_EQ(r.reward, 0.0);
  EXPECT_THAT(r.tests, ElementsAre(Is("[exit code 1]", Verdict::kFailed)));
}

TEST_F(RewardTest, PytestCutShortByOsExitIsNotScoredFromItsPasses) {
  REQUIRE_PYTEST();
  RewardSpec spec;
  spec.files = {{"tests/test_x.py",
                 "import os\ndef test_a(): pass\n"
                 "def test_b(): os._exit(0)\n"}};
  spec.test_command = Pytest({"tests"});
  spec.parser = ParserKind::kPytest;
  RewardResult r = Evaluate(io_, spec);
  EXPECT_EQ(r.state, EvalState::kProgramFailed);
  EXPECT_EQ(r.reward, 0.0);
  EXPECT_THAT(r.reason, HasSubstr("no final summary"));
}

TEST_F(RewardTest, PerTestLinesInjectedWithoutCaptureAreCappedBySummary) {
  REQUIRE_PYTEST();
  RewardSpec spec;
  spec.files = {{"tests/test_x.py",
                 "def test_a():\n"
                 "    print('\\ntests/test_x.py::test_fake1 PASSED')\n"
                 "    print('tests/test_x.py::test_fake2 PASSED')\n"
                 "    assert 0\n"
                 "def test_b(): pass\n"}};
  spec.test_command = Pytest({"-s", "tests"});  // no capture: lines leak
  spec.parser = ParserKind::kPytest;
  RewardResult r = Evaluate(io_, spec);
  ASSERT_EQ(r.state, EvalState::kScored) << r.reason;
  EXPECT_DOUBLE_EQ(r.reward, 0.5);  // not 3/4
  EXPECT_THAT(r.reason, HasSubstr("disagrees"));
}

TEST_F(RewardTest, PytestExitCodeOneWithOnlyPassesParsedCannotScoreOne) {
  RewardSpec spec;
  spec.test_command = Command::Shell(
      "echo 't.py::test_a PASSED'; echo '=== 1 passed in 0.1s ==='; exit 1");
  spec.parser = ParserKind::kPytest;
  RewardResult r = Evaluate(io_, spec);
  ASSERT_EQ(r.state, EvalState::kScored);
  EXPECT_DOUBLE_EQ(r.reward, 0.5);
  EXPECT_THAT(r.tests, Contains(Is("[exit code 1]", Verdict::kFailed)));
}

TEST_F(RewardTest, OutputWithNoResultsIsUnparseableNotZero) {
  RewardSpec spec;
  spec.test_command = Command::Shell("echo hello");
  spec.parser = ParserKind::kPytest;
  RewardResult r = Evaluate(io_, spec);
  EXPECT_EQ(r.state, EvalState::kUnparseable);
  EXPECT_THAT(r.reason, HasSubstr("pytest parser found no test results"));
}

TEST_F(RewardTest, HugeBinaryOrColouredOutputNeverCrashes) {
  for (const char* script :
       {"head -c 3000000 /dev/urandom", "yes 'x::y PASSED' | head -c 5000000",
        "printf '\\033[31m\\033[1m\\000\\377 passed\\n'; exit 0"}) {
    for (ParserKind k : {ParserKind::kPytest, ParserKind::kUnittest,
                         ParserKind::kGoTest, ParserKind::kGeneric}) {
      RewardSpec spec;
      spec.test_command = Command::Shell(script);
      spec.parser = k;
      RewardResult r = Evaluate(io_, spec);
      EXPECT_TRUE(r.usable());
      EXPECT_LE(r.output_tail.size(), 4096u * 4);
      if (r.state == EvalState::kScored) {
        EXPECT_GE(r.reward, 0.0);
        EXPECT_LE(r.reward, 1.0);
      }
    }
  }
}

// ---- infrastructure failures and the cache -------------------------------

class UnavailableIo : public SandboxIo {
 public:
  absl::StatusOr<ExecOutcome> Run(const Command&) override {
    ++runs;
    return absl::UnavailableError("node lost");
  }
  absl::Status WriteFile(absl::string_view, absl::string_view,
                         uint32_t) override {
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ReadFile(absl::string_view, int64_t,
                                       bool*) override {
    return absl::UnavailableError("node lost");
  }
  std::atomic<int> runs{0};
};

TEST(RewardInfra, UnavailableSandboxIsFlaggedAndNeverCached) {
  UnavailableIo io;
  RewardCache cache(8);
  RewardSpec spec;
  spec.test_command = Command::Shell("true");
  RewardResult r = cache.Evaluate(io, spec);
  EXPECT_EQ(r.state, EvalState::kInfraFailed);
  EXPECT_FALSE(r.usable());
  EXPECT_THAT(r.status,
              ::dsec::testing::StatusIs(absl::StatusCode::kUnavailable,
                                        HasSubstr("node lost")));
  r = cache.Evaluate(io, spec);
  EXPECT_FALSE(r.from_cache);
  EXPECT_EQ(io.runs, 2);
  EXPECT_EQ(cache.stats().size, 0u);
}

TEST(RewardInfra, InvalidSpecIsNotScored) {
  UnavailableIo io;
  RewardSpec spec;  // no test command
  RewardResult r = Evaluate(io, spec);
  EXPECT_EQ(r.state, EvalState::kInfraFailed);
  EXPECT_THAT(r.status,
              ::dsec::testing::StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(io.runs, 0);
}

TEST_F(RewardTest, CacheServesDuplicateSpecsWithoutRunning) {
  RewardCache cache(8);
  RewardSpec spec;
  spec.files = {{"a.txt", "x"}};
  spec.test_command = Command::Shell("test -f a.txt");
  RewardResult first = cache.Evaluate(io_, spec);
  EXPECT_FALSE(first.from_cache);
  spec.test_command.action_id = "rollout-2";  // not part of the key
  RewardResult second = cache.Evaluate(io_, spec);
  EXPECT_TRUE(second.from_cache);
  EXPECT_EQ(second.reward, 1.0);
  EXPECT_EQ(io_.runs(), 1);
  spec.files[0].content = "y";  // another candidate
  EXPECT_FALSE(cache.Evaluate(io_, spec).from_cache);
  EXPECT_EQ(io_.runs(), 2);
  RewardCache::Stats s = cache.stats();
  EXPECT_EQ(s.hits, 1);
  EXPECT_EQ(s.misses, 2);
}

TEST(RewardCacheKey, CoversEveryResultChangingField) {
  RewardSpec a;
  a.test_command = Command::Shell("true");
  std::string k = RewardCacheKey(a);
  EXPECT_EQ(k.size(), 64u);
  RewardSpec b = a;
  b.image = "python:3.12";
  EXPECT_NE(RewardCacheKey(b), k);
  b = a;
  b.parser = ParserKind::kPytest;
  EXPECT_NE(RewardCacheKey(b), k);
  b = a;
  b.setup = Command::Shell("true");
  EXPECT_NE(RewardCacheKey(b), k);
  b = a;
  b.files = {{"x", "ab"}, {"", ""}};
  RewardSpec c = a;
  c.files = {{"x", "a"}, {"b", ""}};
  EXPECT_NE(RewardCacheKey(b), RewardCacheKey(c));
}

TEST(RewardCache, ConcurrentIdenticalEvaluationsCoalesce) {
  RewardCache cache(8);
  std::atomic<int> computed{0};
  absl::Notification started, release;
  auto compute = [&] {
    ++computed;
    started.Notify();
    release.WaitForNotification();
    RewardResult r;
    r.state = EvalState::kScored;
    r.reward = 0.75;
    return r;
  };
  RewardResult a, b;
  std::thread first([&] { a = cache.GetOrCompute("k", compute); });
  started.WaitForNotification();
  std::thread second([&] { b = cache.GetOrCompute("k", compute); });
  release.Notify();
  first.join();
  second.join();
  EXPECT_EQ(computed, 1);
  EXPECT_FALSE(a.from_cache);
  EXPECT_TRUE(b.from_cache);
  EXPECT_EQ(b.reward, 0.75);
  RewardCache::Stats s = cache.stats();
  EXPECT_EQ(s.hits + s.coalesced, 1);
}

TEST(RewardCache, WaiterOfAnInfraFailureRunsItsOwnEvaluation) {
  RewardCache cache(8);
  std::atomic<int> computed{0};
  absl::Notification started, release;
  RewardResult a, b;
  std::thread first([&] {
    a = cache.GetOrCompute("k", [&] {
      ++computed;
      started.Notify();
      release.WaitForNotification();
      RewardResult r;
      r.status = absl::UnavailableError("lost");
      return r;  // kInfraFailed
    });
  });
  started.WaitForNotification();
  std::thread second([&] {
    b = cache.GetOrCompute("k", [&] {
      ++computed;
      RewardResult r;
      r.state = EvalState::kScored;
      r.reward = 1;
      return r;
    });
  });
  release.Notify();
  first.join();
  second.join();
  EXPECT_EQ(computed, 2);
  EXPECT_FALSE(a.usable());
  EXPECT_TRUE(b.usable());
  EXPECT_FALSE(b.from_cache);
}

TEST(RewardCache, EvictsLeastRecentlyUsedBeyondCapacity) {
  RewardCache cache(2);
  int computed = 0;
  auto compute = [&] {
    ++computed;
    RewardResult r;
    r.state = EvalState::kScored;
    return r;
  };
  cache.GetOrCompute("a", compute);
  cache.GetOrCompute("b", compute);
  cache.GetOrCompute("a", compute);  // a is now most recent
  cache.GetOrCompute("c", compute);  // evicts b
  EXPECT_EQ(computed, 3);
  EXPECT_TRUE(cache.GetOrCompute("a", compute).from_cache);
  EXPECT_FALSE(cache.GetOrCompute("b", compute).from_cache);
  EXPECT_EQ(cache.stats().size, 2u);
}

}  // namespace
}  // namespace dsec::client::reward
