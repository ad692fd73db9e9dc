// A child process for multi-process tests: started with argv, stdout and
// stderr appended to a log file, killed (SIGKILL by default) and reaped when
// the object dies. Not thread-safe.
#ifndef DSEC_COMMON_TESTING_SUBPROCESS_H_
#define DSEC_COMMON_TESTING_SUBPROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dsec::testing {

class Subprocess {
 public:
  static absl::StatusOr<std::unique_ptr<Subprocess>> Start(
      std::vector<std::string> argv, const std::string& log_path);
  ~Subprocess();

  pid_t pid() const { return pid_; }
  bool running();
  // Sends `sig`; then waits up to `timeout` for exit. Returns the wait status
  // (or DEADLINE_EXCEEDED).
  absl::StatusOr<int> Stop(int sig, absl::Duration timeout = absl::Seconds(20));
  // The log so far (for failure messages).
  std::string Log() const;

 private:
  Subprocess() = default;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  std::string log_path_;
};

}  // namespace dsec::testing

#endif  // DSEC_COMMON_TESTING_SUBPROCESS_H_
