// Shared plumbing for dsecctl: channels, auth metadata, deadlines, and the
// conversion of a failed RPC into a message a person can act on.
//
// Thread-compatible: one ControllerConn per thread or guarded by the caller.
#ifndef DSEC_CTL_RPC_H_
#define DSEC_CTL_RPC_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dsec/v1/agent_service.grpc.pb.h"
#include "dsec/v1/job_service.grpc.pb.h"
#include "dsec/v1/node_service.grpc.pb.h"
#include "dsec/v1/sandbox_service.grpc.pb.h"

namespace dsec::ctl {

struct ConnOptions {
  std::string controller = "127.0.0.1:7070";
  std::string api_key;  // job or admin key: "authorization: Bearer <key>"
  absl::Duration timeout = absl::Seconds(30);
  // From MakeChannelCredentials (common/tls.h); null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
};

class ControllerConn {
 public:
  explicit ControllerConn(ConnOptions options);

  // A context with the deadline and auth metadata set.
  std::unique_ptr<grpc::ClientContext> Context(
      absl::Duration timeout = absl::ZeroDuration()) const;

  dsec::v1::Sandboxes::Stub& sandboxes() { return *sandboxes_; }
  dsec::v1::Jobs::Stub& jobs() { return *jobs_; }
  dsec::v1::Admin::Stub& admin() { return *admin_; }
  // A stub for the agent at `endpoint` (channels are cached).
  dsec::v1::SandboxRuntime::Stub& agent(const std::string& endpoint);
  const ConnOptions& options() const { return options_; }

 private:
  ConnOptions options_;
  std::shared_ptr<grpc::ChannelCredentials> creds_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<dsec::v1::Sandboxes::Stub> sandboxes_;
  std::unique_ptr<dsec::v1::Jobs::Stub> jobs_;
  std::unique_ptr<dsec::v1::Admin::Stub> admin_;
  std::map<std::string, std::unique_ptr<dsec::v1::SandboxRuntime::Stub>>
      agents_;
};

// "UNAVAILABLE: ..." plus a hint for the common causes.
absl::Status RpcError(const grpc::Status& s, absl::string_view what);

// Runs one Exec on an agent and gathers the final result. Output chunks are
// passed to `on_output` as they arrive when it is set (stream_output).
absl::StatusOr<dsec::v1::ExecResult> RunExec(
    ControllerConn& conn, const dsec::v1::SandboxHandle& handle,
    dsec::v1::ExecRequest request, absl::Duration deadline,
    const std::function<void(const dsec::v1::ExecOutput&)>& on_output = {});

}  // namespace dsec::ctl

#endif  // DSEC_CTL_RPC_H_
