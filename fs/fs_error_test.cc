#include "fs/fs_error.h"

#include <errno.h>

#include "common/errno_status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::fs {
namespace {

using ::testing::HasSubstr;

TEST(FsError, CarriesExactErrnoAndName) {
  absl::Status s = FsError(ENOTEMPTY, "rmdir a");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("(ENOTEMPTY)"));
  EXPECT_EQ(ErrnoOf(s), ENOTEMPTY);
  EXPECT_EQ(StatusToErrno(s), ENOTEMPTY);
}

TEST(FsError, CodesMatchTheBrief) {
  EXPECT_EQ(FsError(ENOENT, "x").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(FsError(EEXIST, "x").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(FsError(ENOTDIR, "x").code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FsError(EISDIR, "x").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FsError(EPERM, "x").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(FsError(ENAMETOOLONG, "x").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrnoOf(FsError(EISDIR, "x")), EISDIR);
}

TEST(FsError, ErrnoOfPlainStatusFallsBackToCode) {
  EXPECT_EQ(ErrnoOf(absl::OkStatus()), 0);
  EXPECT_EQ(ErrnoOf(absl::NotFoundError("x")), ENOENT);
}

}  // namespace
}  // namespace dsec::fs
