// Reward evaluation: runs a candidate's tests in a sandbox and turns what
// happened into a reward in [0, 1] for RL training.
//
//   RewardSpec spec;
//   spec.files = {{"solution.py", code}, {"tests/test_sol.py", tests}};
//   spec.test_command = Command::Argv({"python3", "-m", "pytest", "-rA"});
//   spec.parser = ParserKind::kPytest;
//   RewardResult r = Evaluate(io, spec);        // or cache.Evaluate(io, spec)
//   if (r.state == EvalState::kInfraFailed) mask the sample; else use r.reward
//
// Everything for one evaluation runs in the ONE SandboxIo given, in order:
// files, setup, then the test command (or every case), `repeat` times.
//
// Outcome states (RewardResult::state), kept apart so that a trainer never
// mistakes a broken cluster or a broken parser for a bad candidate:
//   kScored       tests ran and were parsed; `reward` is the score.
//   kProgramFailed the candidate's program failed as a whole, in any of the
//                 `repeat` runs: setup/compile failed, the test command
//                 timed out, was OOM-killed or crashed, or the runner was cut
//                 short. Reward 0, `reason` says why; `tests` holds what was
//                 parsed before.
//   kUnparseable  the command ran but the parser found no test result (or no
//                 test counted: all skipped / none collected): reward 0, NOT
//                 a verdict on the candidate; `reason` says what was missing.
//   kInfraFailed  SandboxIo returned a non-OK Status, or the spec is invalid
//                 (INVALID_ARGUMENT): `status` holds it; the reward MUST NOT
//                 be used. Never cached.
//
// Scoring and anti-cheating rules (output is untrusted; see
// reward_parsers.h for which lines are believed):
//   - reward = passed / (passed + failed + errors + not_run) under
//     kFractionPassed, or 1 only when every counted test passed under
//     kAllOrNothing. Skipped tests do not count; if none counts the state is
//     kUnparseable.
//   - Exit-code cross-check (every parser but kExitCode): a run whose exit
//     code is not 0 while no failing test was parsed gets a synthetic failed
//     verdict "[exit code N]", so it can never reach reward 1.
//   - Summary cross-check: when the runner's summary line reports fewer
//     passes or more failures than the per-test lines, the reward is capped
//     at the summary's. A lie can lower a reward, never raise it.
//   - When per-test lines cover fewer tests than the summary (pytest without
//     -rA, kGeneric), the summary scores the run; if the exit code is not 0
//     while that summary reports no failure, the run scores 0.
//   - pytest and unittest runs must end with the runner's summary line:
//     per-test lines without it mean the run was cut short (a test calling
//     os._exit(0)) and give kProgramFailed, not the lines' score.
//   - Per-test lines and JUnit XML outrank summary lines; kGeneric (a
//     summary line only, which the program can print itself) is the weakest
//     and relies on the exit-code rule alone.
//   - The JUnit file is emptied before each run, so a file the candidate
//     planted (or a stale one) does not count.
//
// Repeat-K (flaky detection): with repeat = K > 1 the test command (or the
// case list) runs K times in the same sandbox. A test that passed in some
// runs and failed in others is flaky (TestVerdict::flaky, RewardResult::
// flaky). kFlakyFails (default) scores a flaky test as failed; kMajority as
// passed when it passed in more than half of the runs where it ran.
//
// Cases: a spec with `cases` runs each case (its own command, or
// test_command with the case's stdin) and scores each as one test: passed
// when the program exited 0 and, if expected_stdout is set, its stdout
// matches under `whitespace`. A case that times out or crashes fails alone;
// the parser is not used for cases.
//
// stop_at_first_failure: cases after the first non-pass are not run
// (kNotRun, counted as failed); repeats stop after a run with a failure; for
// the pytest parser with an argv command, "-x" is added.
//
// Thread-safety: Evaluate is reentrant (it touches only its arguments);
// RewardCache is thread-safe.
#ifndef DSEC_CLIENT_REWARD_H_
#define DSEC_CLIENT_REWARD_H_

#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "client/reward_parsers.h"
#include "client/sandbox_io.h"

namespace dsec::client::reward {

enum class ParserKind {
  kExitCode,  // one verdict: passed iff exit code 0
  kPytest,
  kUnittest,
  kGoTest,
  kGeneric,   // "N passed, M failed" summary line only
  kJUnitXml,  // RewardSpec::junit_path, read after each run
};

enum class RewardPolicy { kFractionPassed, kAllOrNothing };
enum class FlakyPolicy { kFlakyFails, kMajority };

// How a case's stdout is compared with its expected_stdout.
enum class WhitespaceMode {
  kExact,
  // Trailing whitespace of each line and trailing blank lines ignored.
  kIgnoreTrailing,
  // Any run of whitespace (including newlines) equals any other.
  kTokens,
};

struct FileToAdd {
  std::string path;
  std::string content;
  uint32_t mode = 0644;
};

struct TestCase {
  std::string name;  // empty: "case_<index>"
  // Empty: RewardSpec::test_command.
  std::optional<Command> command;
  // Replaces the command's stdin when set.
  std::optional<std::string> stdin_data;
  std::optional<std::string> expected_stdout;
};

struct RewardSpec {
  // Identifies the sandbox image in the cache key only (the caller chose the
  // sandbox).
  std::string image;
  std::vector<FileToAdd> files;
  std::optional<Command> setup;
  Command test_command;
  std::vector<TestCase> cases;
  ParserKind parser = ParserKind::kExitCode;
  std::string junit_path;  // for kJUnitXml
  RewardPolicy policy = RewardPolicy::kFractionPassed;
  bool stop_at_first_failure = false;
  int repeat = 1;  // >= 1
  FlakyPolicy flaky_policy = FlakyPolicy::kFlakyFails;
  WhitespaceMode whitespace = WhitespaceMode::kIgnoreTrailing;
  // Bytes of (sanitised) output kept in RewardResult::output_tail.
  int64_t output_tail_bytes = 4096;
};

enum class EvalState { kScored, kProgramFailed, kUnparseable, kInfraFailed };
absl::string_view EvalStateName(EvalState state);

struct RewardResult {
  EvalState state = EvalState::kInfraFailed;
  double reward = 0;
  absl::Status status;  // non-OK exactly when state == kInfraFailed
  std::string reason;   // why not kScored; or notes (summary disagreement)
  std::vector<TestVerdict> tests;
  TestCounts counts;               // of `tests`
  std::vector<std::string> flaky;  // names of flaky tests
  std::string output_tail;         // last run's output, sanitised
  int runs = 0;                    // SandboxIo::Run calls made
  bool from_cache = false;         // served by RewardCache (hit or wait)

  // The reward may be used for training.
  bool usable() const { return state != EvalState::kInfraFailed; }
};

// Runs `spec` in `io`. Never fails: infrastructure errors come back as
// state kInfraFailed.
RewardResult Evaluate(SandboxIo& io, const RewardSpec& spec);

// Whitespace-normalised comparison used for cases (exposed for tests).
bool OutputMatches(absl::string_view actual, absl::string_view expected,
                   WhitespaceMode mode);

// SHA-256 (hex) over everything in `spec` that can change a result: image,
// files, setup, commands (not action_id), cases, parser and policy fields.
std::string RewardCacheKey(const RewardSpec& spec);

// A bounded LRU cache of results keyed by RewardCacheKey, so the duplicate
// completions of a GRPO group are run once. Concurrent evaluations of one
// key coalesce: the first runs, the others wait for its result. Results in
// state kInfraFailed are neither stored nor shared: waiters of a failed
// evaluation run their own. Thread-safe.
class RewardCache {
 public:
  // REQUIRES: capacity >= 1.
  explicit RewardCache(size_t capacity);
  RewardCache(const RewardCache&) = delete;
  RewardCache& operator=(const RewardCache&) = delete;

  // Evaluate(io, spec) unless a result for the same key is cached or being
  // computed.
  RewardResult Evaluate(SandboxIo& io, const RewardSpec& spec);
  // The same with any evaluation function (tests, other evaluators).
  RewardResult GetOrCompute(const std::string& key,
                            absl::FunctionRef<RewardResult()> compute);

  struct Stats {
    int64_t hits = 0;       // served from a stored result
    int64_t coalesced = 0;  // waited for a concurrent evaluation
    int64_t misses = 0;     // computed
    size_t size = 0;
  };
  Stats stats() const;

 private:
  struct Flight {
    bool done = false;
    std::optional<RewardResult> result;  // unset when infra failed
  };
  using Entry = std::pair<std::string, RewardResult>;

  const size_t capacity_;
  mutable absl::Mutex mu_;
  std::list<Entry> lru_ ABSL_GUARDED_BY(mu_);  // front: most recent
  absl::flat_hash_map<std::string, std::list<Entry>::iterator> index_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<Flight>> in_flight_
      ABSL_GUARDED_BY(mu_);
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dsec::client::reward

#endif  // DSEC_CLIENT_REWARD_H_
