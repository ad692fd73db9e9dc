#include "ctl/rpc.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"

namespace dsec::ctl {

namespace {
grpc::ChannelArguments Args() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return args;
}
}  // namespace

ControllerConn::ControllerConn(ConnOptions options)
    : options_(std::move(options)) {
  creds_ = options_.credentials ? options_.credentials
                                : grpc::InsecureChannelCredentials();
  channel_ = grpc::CreateCustomChannel(options_.controller, creds_, Args());
  sandboxes_ = dsec::v1::Sandboxes::NewStub(channel_);
  jobs_ = dsec::v1::Jobs::NewStub(channel_);
  admin_ = dsec::v1::Admin::NewStub(channel_);
}

std::unique_ptr<grpc::ClientContext> ControllerConn::Context(
    absl::Duration timeout) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (timeout == absl::ZeroDuration()) timeout = options_.timeout;
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (!options_.api_key.empty()) {
    ctx->AddMetadata("authorization",
                     absl::StrCat("Bearer ", options_.api_key));
  }
  return ctx;
}

dsec::v1::SandboxRuntime::Stub& ControllerConn::agent(
    const std::string& endpoint) {
  auto& stub = agents_[endpoint];
  if (!stub) {
    stub = dsec::v1::SandboxRuntime::NewStub(
        grpc::CreateCustomChannel(endpoint, creds_, Args()));
  }
  return *stub;
}

absl::Status RpcError(const grpc::Status& s, absl::string_view what) {
  absl::Status st = dsec::FromGrpcStatus(s);
  std::string hint;
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
    hint =
        " (is the controller running? start one with `dsecctl local up`, "
        "or pass --controller HOST:PORT)";
  } else if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
    hint = " (pass --api_key or set DSEC_API_KEY)";
  }
  return absl::Status(st.code(), absl::StrCat(what, ": ", st.message(), hint));
}

absl::StatusOr<dsec::v1::ExecResult> RunExec(
    ControllerConn& conn, const dsec::v1::SandboxHandle& handle,
    dsec::v1::ExecRequest request, absl::Duration deadline,
    const std::function<void(const dsec::v1::ExecOutput&)>& on_output) {
  request.set_sandbox_id(handle.sandbox_id());
  request.set_token(handle.token());
  if (on_output) request.set_stream_output(true);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  auto reader = conn.agent(handle.agent_endpoint()).Exec(&ctx, request);
  dsec::v1::ExecEvent event;
  std::optional<dsec::v1::ExecResult> result;
  while (reader->Read(&event)) {
    if (event.has_output() && on_output) on_output(event.output());
    if (event.has_result()) result = event.result();
  }
  grpc::Status s = reader->Finish();
  if (!s.ok())
    return RpcError(s, absl::StrCat("exec in ", handle.sandbox_id()));
  if (!result) {
    return absl::InternalError(absl::StrCat("exec in ", handle.sandbox_id(),
                                            ": stream ended without a result"));
  }
  return *result;
}

}  // namespace dsec::ctl
