// SandboxIo over an in-process dsec::sandbox::Sandbox: no controller, no
// agent, no gRPC. For benchmarks, single-node tools and tests that want the
// real isolation without a cluster.
//
// Mapping (the SandboxIo contract in sandbox_io.h):
//   - sandbox::ExecResult → ExecOutcome; kInfraFailure (dsec itself failed)
//     and any non-OK Status from Sandbox::Exec (bad request, sandbox parked
//     or gone, init unreachable) → that non-OK Status (UNAVAILABLE for
//     kInfraFailure). A fork refused by the pids limit makes an exit or
//     signal kPidsLimit, as the contract's precedence says.
//   - Command::shell runs as /bin/sh -c; env is added to the spec's;
//     action_id is ignored (no idempotency records in process).
//   - Files go through Sandbox::OpenFiles() (confined to the sandbox's root,
//     see sandbox/safe_fs.h), owned by the sandbox's root; relative paths
//     are relative to the spec's workdir.
//
// Thread-safe (Sandbox is). The sandbox is shared: it lives while this
// object or another holder keeps it.
#ifndef DSEC_CLIENT_LOCAL_SANDBOX_IO_H_
#define DSEC_CLIENT_LOCAL_SANDBOX_IO_H_

#include <memory>
#include <string>

#include "client/sandbox_io.h"
#include "sandbox/sandbox.h"

namespace dsec::client {

class LocalSandboxIo : public SandboxIo {
 public:
  // REQUIRES: sandbox != nullptr.
  explicit LocalSandboxIo(std::shared_ptr<sandbox::Sandbox> sandbox);

  absl::StatusOr<ExecOutcome> Run(const Command& command) override;
  absl::Status WriteFile(absl::string_view path, absl::string_view data,
                         uint32_t mode = 0644) override;
  absl::StatusOr<std::string> ReadFile(absl::string_view path,
                                       int64_t max_bytes,
                                       bool* truncated = nullptr) override;

  sandbox::Sandbox& sandbox() const { return *sandbox_; }

 private:
  std::string Resolve(absl::string_view path) const;

  std::shared_ptr<sandbox::Sandbox> sandbox_;
};

// The ExecOutcome for a sandbox ExecResult; UNAVAILABLE for kInfraFailure.
absl::StatusOr<ExecOutcome> ToExecOutcome(sandbox::ExecResult result);

}  // namespace dsec::client

#endif  // DSEC_CLIENT_LOCAL_SANDBOX_IO_H_
