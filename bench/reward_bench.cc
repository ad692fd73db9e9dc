// Reward evaluation of one candidate against a 20-test pytest suite, with
// the real sandbox (in process, via LocalSandboxIo):
//   per-test sandbox  20 x (create a sandbox, write files, pytest one test
//                     id, destroy): what "one sandbox per test" costs
//   warm, 20 runs     one sandbox, files once, 20 pytest invocations (one
//                     per test id) as cases of one RewardSpec
//   warm, one run     one sandbox, files once, ONE pytest run of all 20
// Each figure is the whole evaluation of one candidate (sandbox creation and
// destruction included). Prints medians over --reps and the ratios.
//
//   sudo build/bench/reward_bench [--reps 5] [--tests 20]
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "client/local_sandbox_io.h"
#include "client/reward.h"
#include "common/rlimit.h"
#include "common/testing/test_util.h"
#include "sandbox/sandbox.h"

ABSL_FLAG(int, reps, 5, "repetitions of each mode (medians reported)");
ABSL_FLAG(int, tests, 20, "tests in the pytest suite");

namespace {

using dsec::bench::OrDie;

using dsec::client::Command;
using dsec::client::LocalSandboxIo;
using dsec::client::reward::EvalState;
using dsec::client::reward::Evaluate;
using dsec::client::reward::ParserKind;
using dsec::client::reward::RewardResult;
using dsec::client::reward::RewardSpec;
using dsec::client::reward::TestCase;

std::string Suite(int n) {
  std::string s = "import json\n";
  for (int i = 0; i < n; ++i) {
    absl::StrAppend(&s, "def test_", i, "():\n",
                    "    assert json.loads(json.dumps(list(range(", i,
                    ")))) == list(range(", i, "))\n");
  }
  return s;
}

Command Pytest(std::vector<std::string> targets) {
  Command c = Command::Argv(
      {"python3", "-m", "pytest", "-rA", "-q", "-p", "no:cacheprovider"});
  c.argv.insert(c.argv.end(), targets.begin(), targets.end());
  c.timeout = absl::Seconds(60);
  return c;
}

std::string TestId(int i) {
  return absl::StrCat("tests/test_suite.py::test_", i);
}

void Check(const RewardResult& r, int expected_tests) {
  if (r.state != EvalState::kScored || r.reward != 1.0 ||
      r.counts.passed != expected_tests) {
    std::fprintf(stderr,
                 "evaluation failed: %s reward %.2f passed %d: %s\n%s\n",
                 std::string(EvalStateName(r.state)).c_str(), r.reward,
                 r.counts.passed, r.reason.c_str(), r.output_tail.c_str());
    std::exit(1);
  }
}

// One sandbox for one evaluation: created, used, destroyed.
RewardResult InFreshSandbox(dsec::sandbox::Runtime& runtime,
                            const RewardSpec& spec) {
  std::shared_ptr<dsec::sandbox::Sandbox> sb =
      OrDie(runtime.CreateSandbox(dsec::sandbox::SandboxSpec{}));
  LocalSandboxIo io(sb);
  RewardResult r = Evaluate(io, spec);
  (void)sb->Destroy();
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  (void)dsec::sandbox::EnterPrivateMountNamespace();
  absl::ParseCommandLine(argc, argv);
  dsec::RaiseOpenFileLimit();
  const int reps = absl::GetFlag(FLAGS_reps);
  const int n = absl::GetFlag(FLAGS_tests);
  dsec::testing::TempDir dir;
  dsec::sandbox::RuntimeOptions options;
  options.state_dir = dir.Join("state");
  auto runtime = OrDie(dsec::sandbox::Runtime::Create(options));

  RewardSpec base;
  base.files = {{"tests/test_suite.py", Suite(n)}};
  base.parser = ParserKind::kPytest;

  RewardSpec one_run = base;  // all tests, one pytest process
  one_run.test_command = Pytest({"tests"});

  RewardSpec cases = base;  // one pytest process per test id, as cases
  cases.parser = ParserKind::kExitCode;
  for (int i = 0; i < n; ++i) {
    cases.cases.push_back({.name = TestId(i), .command = Pytest({TestId(i)})});
  }

  // Warm up caches (page cache of python and pytest, netns pool).
  Check(InFreshSandbox(*runtime, one_run), n);

  std::vector<double> per_test, warm_cases, warm_one;
  for (int rep = 0; rep < reps; ++rep) {
    absl::Time start = absl::Now();
    for (int i = 0; i < n; ++i) {
      RewardSpec single = base;
      single.test_command = Pytest({TestId(i)});
      Check(InFreshSandbox(*runtime, single), 1);
    }
    per_test.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));

    start = absl::Now();
    Check(InFreshSandbox(*runtime, cases), n);
    warm_cases.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));

    start = absl::Now();
    Check(InFreshSandbox(*runtime, one_run), n);
    warm_one.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
  }
  using dsec::bench::Print;
  using dsec::bench::Summarize;
  std::printf(
      "reward evaluation of one candidate, %d-test pytest suite, "
      "%d reps\n",
      n, reps);
  const auto a = Summarize(per_test), b = Summarize(warm_cases),
             c = Summarize(warm_one);
  Print("per-test sandbox (create+pytest 1+destroy)", a);
  Print("one sandbox, one pytest run per test", b);
  Print("one sandbox, one pytest run", c);
  std::printf("per-test sandbox / one sandbox one run      %6.2fx\n",
              a.p50_ms / c.p50_ms);
  std::printf("per-test sandbox / one sandbox runs-per-test %6.2fx\n",
              a.p50_ms / b.p50_ms);
  std::printf("runs-per-test / one run (same sandbox)      %6.2fx\n",
              b.p50_ms / c.p50_ms);
  return 0;
}
