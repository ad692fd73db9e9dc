// The wire contract compiles into one library and behaves as documented:
// round trips, oneofs, and gRPC service stubs that link.
#include <grpcpp/grpcpp.h>

#include "dsec/v1/agent_service.grpc.pb.h"
#include "dsec/v1/exec.pb.h"
#include "dsec/v1/job_service.grpc.pb.h"
#include "dsec/v1/sandbox_service.grpc.pb.h"
#include "gtest/gtest.h"

namespace dsec {
namespace {

TEST(Proto, ExecRequestRoundTripsWithShellOneof) {
  v1::ExecRequest req;
  req.set_sandbox_id("sb-1");
  req.set_action_id("traj-7/step-3");
  req.set_shell("pytest -q");
  req.mutable_timeout()->set_seconds(30);
  (*req.mutable_env())["PYTHONHASHSEED"] = "0";
  std::string wire = req.SerializeAsString();
  v1::ExecRequest back;
  ASSERT_TRUE(back.ParseFromString(wire));
  EXPECT_EQ(back.command_case(), v1::ExecRequest::kShell);
  EXPECT_EQ(back.shell(), "pytest -q");
  EXPECT_EQ(back.env().at("PYTHONHASHSEED"), "0");
  back.mutable_argv()->add_args("true");
  EXPECT_EQ(back.command_case(), v1::ExecRequest::kArgv);
}

TEST(Proto, GarbageBytesAreRejectedNotCrashing) {
  v1::ExecEvent ev;
  std::string junk = "\xff\xff\xff\xff\x0f garbage";
  EXPECT_FALSE(ev.ParseFromString(junk));
}

TEST(Proto, ServiceStubsExist) {
  auto channel =
      grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials());
  auto sandboxes = v1::Sandboxes::NewStub(channel);
  auto runtime = v1::SandboxRuntime::NewStub(channel);
  auto jobs = v1::Jobs::NewStub(channel);
  EXPECT_NE(sandboxes, nullptr);
  EXPECT_NE(runtime, nullptr);
  EXPECT_NE(jobs, nullptr);
  // An unreachable agent is UNAVAILABLE within the deadline.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(200));
  v1::StatFileRequest req;
  v1::FileInfo resp;
  grpc::Status s = runtime->StatFile(&ctx, req, &resp);
  EXPECT_TRUE(s.error_code() == grpc::StatusCode::UNAVAILABLE ||
              s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
      << s.error_code();
}

}  // namespace
}  // namespace dsec
