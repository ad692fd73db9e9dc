// Errors of dsec-fs carrying the exact errno the FUSE layer should return.
//
// FsError(ENOTEMPTY, "rmdir a") gives a FAILED_PRECONDITION status whose
// message ends in "(ENOTEMPTY)" and whose errno payload is the one
// dsec::StatusToErrno (common/errno_status.h) reads, so ErrnoOf and
// StatusToErrno agree. Thread-safe: pure functions.
#ifndef DSEC_FS_FS_ERROR_H_
#define DSEC_FS_FS_ERROR_H_

#include <string>

#include "absl/status/status.h"

namespace dsec::fs {

// The status code fs errors use for `errno_value`: ENOENT -> NOT_FOUND,
// EEXIST -> ALREADY_EXISTS, EPERM/EACCES -> PERMISSION_DENIED, EINVAL and
// ENAMETOOLONG -> INVALID_ARGUMENT, ENOTEMPTY/ENOTDIR/EISDIR/EXDEV/EBUSY ->
// FAILED_PRECONDITION, ENOSPC -> RESOURCE_EXHAUSTED, else UNKNOWN.
absl::StatusCode FsErrorCode(int errno_value);

// "<msg> (<ERRNO NAME>)" with the code above and the errno attached.
// REQUIRES: errno_value > 0.
absl::Status FsError(int errno_value, std::string msg);

// The errno for `status`: the attached one, else the closest for its code
// (see dsec::StatusToErrno). OK -> 0.
int ErrnoOf(const absl::Status& status);

}  // namespace dsec::fs

#endif  // DSEC_FS_FS_ERROR_H_
