// Hermetic test helpers: temporary directories, free loopback ports, and
// the rule for tests that need root, namespaces, cgroups or /dev/fuse.
// Not thread-safe per object.
#ifndef DSEC_COMMON_TESTING_TEST_UTIL_H_
#define DSEC_COMMON_TESTING_TEST_UTIL_H_

#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "gtest/gtest.h"

namespace dsec::testing {

// A fresh directory under $TEST_TMPDIR (or /tmp), removed recursively when
// the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + name.
  std::string Join(absl::string_view name) const;

 private:
  std::string path_;
};

// A TCP port on 127.0.0.1 that was free a moment ago. Prefer port 0 and
// asking the server which port it bound; use this only where a port must be
// known in advance.
absl::StatusOr<int> PickFreeLoopbackPort();

// True when running under CI (CI=true or CI=1 in the environment). There, a
// test whose prerequisites are missing must fail, never skip.
bool RunningUnderCi();

// Directory holding the project's built binaries ($DSEC_BIN_DIR).
std::string BinDir();

// Runs `command` with /bin/sh, stdout and stderr together in `out`.
struct CommandResult {
  int exit_code;  // -1 when killed by a signal
  std::string out;
};
CommandResult RunCommand(const std::string& command);

}  // namespace dsec::testing

// Use at the top of a test that needs something of the host (root, user
// namespaces, cgroups, /dev/fuse): skips locally when `condition` is false,
// but fails loudly under CI.
#define DSEC_REQUIRE_HOST_FEATURE(condition, what)                   \
  do {                                                               \
    if (!(condition)) {                                              \
      if (::dsec::testing::RunningUnderCi()) {                       \
        FAIL() << "host lacks " << (what) << " (required under CI)"; \
      } else {                                                       \
        GTEST_SKIP() << "host lacks " << (what);                     \
      }                                                              \
    }                                                                \
  } while (false)

#endif  // DSEC_COMMON_TESTING_TEST_UTIL_H_
