// Conversions between errno values and absl::Status, one place for the whole
// project: errno -> Status (syscall wrappers) and Status -> errno (FUSE
// replies). Thread-safe: pure functions.
#ifndef DSEC_COMMON_ERRNO_STATUS_H_
#define DSEC_COMMON_ERRNO_STATUS_H_

#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace dsec {

// The canonical code for an errno value (ENOENT -> NOT_FOUND, EACCES ->
// PERMISSION_DENIED, EAGAIN -> UNAVAILABLE, ENOSPC -> RESOURCE_EXHAUSTED...).
absl::StatusCode ErrnoToCode(int errno_value);

// A status "<context>: <strerror> (errno N)" with the code above; the errno
// is kept as a payload so StatusToErrno can return it exactly.
// REQUIRES: errno_value != 0.
absl::Status ErrnoToStatus(int errno_value, absl::string_view context);

// ErrnoToStatus(errno, context), for use right after a failed syscall.
absl::Status ErrnoStatus(absl::string_view context);

// `status` (same code and message) carrying `errno_value` for StatusToErrno,
// e.g. an errno that travelled over RPC. REQUIRES: errno_value > 0.
absl::Status WithErrno(absl::Status status, int errno_value);

// The errno to report for `status`: the original errno when the status came
// from ErrnoToStatus, otherwise the closest errno for its code. OK -> 0.
int StatusToErrno(const absl::Status& status);

}  // namespace dsec

#endif  // DSEC_COMMON_ERRNO_STATUS_H_
