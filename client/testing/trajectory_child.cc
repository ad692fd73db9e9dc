// A rollout process for trajectory_test: runs `--steps` logged steps and
// prints "STEP <i> <stdout>" after each, so the test can SIGKILL it
// mid-trajectory and resume the same trajectory elsewhere.
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/trajectory.h"

ABSL_FLAG(std::string, controller, "", "controller address");
ABSL_FLAG(std::string, api_key, "", "job API key");
ABSL_FLAG(std::string, log, "", "trajectory log path");
ABSL_FLAG(std::string, id, "", "trajectory id");
ABSL_FLAG(int, steps, 6, "steps to run");
ABSL_FLAG(int, sleep_ms, 200, "pause after each step");

// The step every rollout of the test issues at index i: it appends to a
// counter file (so a double run shows) and prints something random (so a
// re-run shows).
std::string StepScript(int i) {
  return absl::StrCat("echo ", i,
                      " >> /root/count; echo step-$(head -c8 /dev/urandom | "
                      "od -An -tx8 | tr -d ' ')");
}

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  auto client = dsec::client::Client::Create(
      {.controller = absl::GetFlag(FLAGS_controller),
       .api_key = absl::GetFlag(FLAGS_api_key)});
  if (!client.ok()) return 2;
  dsec::v1::SandboxSpec spec;
  spec.mutable_limits()->set_memory_bytes(256 << 20);
  auto t = dsec::client::Trajectory::Open(
      *client, {.log_path = absl::GetFlag(FLAGS_log),
                .trajectory_id = absl::GetFlag(FLAGS_id),
                .spec = spec});
  if (!t.ok()) {
    std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
    return 2;
  }
  for (int i = 0; i < absl::GetFlag(FLAGS_steps); ++i) {
    auto r = (*t)->Run(dsec::client::Command::Shell(StepScript(i)));
    if (!r.ok()) {
      std::fprintf(stderr, "step %d: %s\n", i, r.status().ToString().c_str());
      return 3;
    }
    std::printf("STEP %d %s", i, r->stdout_data.c_str());
    std::fflush(stdout);
    absl::SleepFor(absl::Milliseconds(absl::GetFlag(FLAGS_sleep_ms)));
  }
  return 0;
}
