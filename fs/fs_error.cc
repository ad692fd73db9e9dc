#include "fs/fs_error.h"

#include <errno.h>

#include "absl/strings/str_cat.h"
#include "common/errno_status.h"

namespace dsec::fs {
namespace {

const char* ErrnoName(int errno_value) {
  switch (errno_value) {
    case ENOENT:
      return "ENOENT";
    case EEXIST:
      return "EEXIST";
    case EPERM:
      return "EPERM";
    case EACCES:
      return "EACCES";
    case EINVAL:
      return "EINVAL";
    case ENAMETOOLONG:
      return "ENAMETOOLONG";
    case ENOTEMPTY:
      return "ENOTEMPTY";
    case ENOTDIR:
      return "ENOTDIR";
    case EISDIR:
      return "EISDIR";
    case EXDEV:
      return "EXDEV";
    case EBUSY:
      return "EBUSY";
    case ENOSPC:
      return "ENOSPC";
    case EMLINK:
      return "EMLINK";
    case EIO:
      return "EIO";
    default:
      return "errno";
  }
}

}  // namespace

absl::StatusCode FsErrorCode(int errno_value) {
  switch (errno_value) {
    case ENOENT:
      return absl::StatusCode::kNotFound;
    case EEXIST:
      return absl::StatusCode::kAlreadyExists;
    case EPERM:
    case EACCES:
      return absl::StatusCode::kPermissionDenied;
    case EINVAL:
    case ENAMETOOLONG:
      return absl::StatusCode::kInvalidArgument;
    case ENOTEMPTY:
    case ENOTDIR:
    case EISDIR:
    case EXDEV:
    case EBUSY:
      return absl::StatusCode::kFailedPrecondition;
    case ENOSPC:
    case EMLINK:
      return absl::StatusCode::kResourceExhausted;
    default:
      return absl::StatusCode::kUnknown;
  }
}

absl::Status FsError(int errno_value, std::string msg) {
  return WithErrno(
      absl::Status(FsErrorCode(errno_value),
                   absl::StrCat(msg, " (", ErrnoName(errno_value), ")")),
      errno_value);
}

int ErrnoOf(const absl::Status& status) {
  return ::dsec::StatusToErrno(status);
}

}  // namespace dsec::fs
