// Shared by the benchmarks: latency summaries and the bare-launch baseline
// every dsec figure is compared against in the same run.
#ifndef DSEC_BENCH_BENCH_UTIL_H_
#define DSEC_BENCH_BENCH_UTIL_H_

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

extern char** environ;

namespace dsec::bench {

struct Summary {
  double p50_ms = 0, p99_ms = 0, mean_ms = 0;
};

inline Summary Summarize(std::vector<double> v) {
  if (v.empty()) return {};
  std::sort(v.begin(), v.end());
  double sum = 0;
  for (double x : v) sum += x;
  return {v[v.size() / 2], v[std::min(v.size() - 1, v.size() * 99 / 100)],
          sum / v.size()};
}

// The value, or exit(1) with the status (benchmarks have no one to tell).
template <typename T>
T OrDie(absl::StatusOr<T> v) {
  if (!v.ok()) {
    std::fprintf(stderr, "fatal: %s\n", v.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(*v);
}

inline void Print(const char* name, const Summary& s) {
  std::printf("%-44s p50 %8.3f ms   p99 %8.3f ms   mean %8.3f ms\n", name,
              s.p50_ms, s.p99_ms, s.mean_ms);
}

// fork + execve("/bin/true") + waitpid from this process, in ms.
inline double ForkExecWait() {
  absl::Time start = absl::Now();
  pid_t pid = fork();
  if (pid == 0) {
    char* argv[] = {const_cast<char*>("/bin/true"), nullptr};
    execve("/bin/true", argv, environ);
    _exit(127);
  }
  int status;
  waitpid(pid, &status, 0);
  return absl::ToDoubleMilliseconds(absl::Now() - start);
}

}  // namespace dsec::bench

#endif  // DSEC_BENCH_BENCH_UTIL_H_
