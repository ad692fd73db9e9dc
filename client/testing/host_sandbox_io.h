// A SandboxIo for unit tests that runs commands as plain host processes
// (NO isolation) with a temporary directory standing in for the sandbox's
// root: paths "/x/y" and "x/y" both mean <root>/x/y, and commands start
// in <root> with $HOME=<root>. Timeouts kill the command's process group;
// output caps and truncation flags behave as in a real sandbox. Tests of
// tools and rewards use it so they run without root; end-to-end tests use
// the real client. Thread-safe.
#ifndef DSEC_CLIENT_TESTING_HOST_SANDBOX_IO_H_
#define DSEC_CLIENT_TESTING_HOST_SANDBOX_IO_H_

#include <atomic>
#include <string>

#include "client/sandbox_io.h"

namespace dsec::client::testing {

class HostSandboxIo : public SandboxIo {
 public:
  // REQUIRES: `root` exists.
  explicit HostSandboxIo(std::string root);

  absl::StatusOr<ExecOutcome> Run(const Command& command) override;
  absl::Status WriteFile(absl::string_view path, absl::string_view data,
                         uint32_t mode = 0644) override;
  absl::StatusOr<std::string> ReadFile(absl::string_view path,
                                       int64_t max_bytes,
                                       bool* truncated = nullptr) override;

  // Host path of a sandbox path.
  std::string HostPath(absl::string_view path) const;
  const std::string& root() const { return root_; }
  // Number of Run calls that actually started a process.
  int runs() const { return runs_.load(); }

 private:
  std::string root_;
  std::atomic<int> runs_{0};
};

}  // namespace dsec::client::testing

#endif  // DSEC_CLIENT_TESTING_HOST_SANDBOX_IO_H_
