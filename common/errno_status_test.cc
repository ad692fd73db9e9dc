#include "common/errno_status.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "common/testing/status_matchers.h"
#include "gtest/gtest.h"

namespace dsec {
namespace {

using ::dsec::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(ErrnoStatus, MapsCommonErrnosToCanonicalCodes) {
  EXPECT_EQ(ErrnoToCode(ENOENT), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrnoToCode(EEXIST), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ErrnoToCode(EACCES), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoToCode(EPERM), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoToCode(ENOSPC), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoToCode(EAGAIN), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ErrnoToCode(EINVAL), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrnoToCode(ENOTEMPTY), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ErrnoToCode(ETIMEDOUT), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(ErrnoToCode(ENOSYS), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(ErrnoToCode(0), absl::StatusCode::kOk);
  EXPECT_EQ(ErrnoToCode(99999), absl::StatusCode::kUnknown);
}

TEST(ErrnoStatus, MessageCarriesContextTextAndNumber) {
  absl::Status s = ErrnoToStatus(ENOENT, "open /nope");
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kNotFound,
                          AllOf(HasSubstr("open /nope"),
                                HasSubstr("No such file or directory"),
                                HasSubstr("errno 2"))));
}

TEST(ErrnoStatus, RoundTripsExactErrnoThroughStatus) {
  for (int e : {ENOENT, EACCES, EPERM, ENOTEMPTY, EXDEV, ELOOP, EROFS, EIO}) {
    EXPECT_EQ(StatusToErrno(ErrnoToStatus(e, "x")), e) << e;
  }
}

TEST(ErrnoStatus, FallsBackToCodeWhenNoErrnoPayload) {
  EXPECT_EQ(StatusToErrno(absl::OkStatus()), 0);
  EXPECT_EQ(StatusToErrno(absl::NotFoundError("x")), ENOENT);
  EXPECT_EQ(StatusToErrno(absl::AlreadyExistsError("x")), EEXIST);
  EXPECT_EQ(StatusToErrno(absl::InternalError("x")), EIO);
  EXPECT_EQ(StatusToErrno(absl::ResourceExhaustedError("x")), ENOSPC);
}

TEST(ErrnoStatus, ErrnoStatusReadsCurrentErrno) {
  ASSERT_EQ(open("/definitely/not/here", O_RDONLY), -1);
  EXPECT_THAT(ErrnoStatus("open"), StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace dsec
