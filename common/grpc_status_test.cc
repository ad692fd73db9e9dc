#include "common/grpc_status.h"

#include "common/testing/status_matchers.h"
#include "gtest/gtest.h"

namespace dsec {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;

TEST(GrpcStatus, EveryCanonicalCodeRoundTrips) {
  for (int c = 0; c <= static_cast<int>(absl::StatusCode::kUnauthenticated);
       ++c) {
    auto code = static_cast<absl::StatusCode>(c);
    absl::Status s(code, c == 0 ? "" : "why it failed");
    grpc::Status g = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), c);
    EXPECT_EQ(FromGrpcStatus(g), s);
  }
}

TEST(GrpcStatus, KeepsMessage) {
  grpc::Status g = ToGrpcStatus(absl::ResourceExhaustedError("quota: cpu"));
  EXPECT_EQ(g.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(g.error_message(), "quota: cpu");
  EXPECT_THAT(FromGrpcStatus(grpc::Status::OK), IsOk());
}

TEST(GrpcStatus, OutOfRangeCodeFromPeerBecomesUnknown) {
  grpc::Status g(static_cast<grpc::StatusCode>(77), "odd peer");
  EXPECT_THAT(FromGrpcStatus(g),
              StatusIs(absl::StatusCode::kUnknown, "odd peer"));
}

}  // namespace
}  // namespace dsec
