#include "common/errno_status.h"

#include <errno.h>
#include <string.h>

#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace dsec {
namespace {

constexpr absl::string_view kErrnoPayloadUrl = "dsec.dev/errno";

}  // namespace

absl::StatusCode ErrnoToCode(int errno_value) {
  switch (errno_value) {
    case 0:
      return absl::StatusCode::kOk;
    case EINVAL:
    case ENAMETOOLONG:
    case E2BIG:
    case EDOM:
    case EFAULT:
    case EILSEQ:
    case ENOTDIR:
    case EISDIR:
    case ELOOP:
    case EBADF:
    case ENOEXEC:
    case ENOTSOCK:
    case EDESTADDRREQ:
    case EPROTOTYPE:
    case ENOPROTOOPT:
      return absl::StatusCode::kInvalidArgument;
    case ENOENT:
    case ESRCH:
    case ENXIO:
    case ENODEV:
      return absl::StatusCode::kNotFound;
    case EEXIST:
    case EADDRINUSE:
      return absl::StatusCode::kAlreadyExists;
    case EPERM:
    case EACCES:
    case EROFS:
      return absl::StatusCode::kPermissionDenied;
    case ENOTEMPTY:
    case EBUSY:
    case ECHILD:
    case EISCONN:
    case ENOTCONN:
    case ETXTBSY:
    case EXDEV:
    case ENOTBLK:
    case EPIPE:
      return absl::StatusCode::kFailedPrecondition;
    case ENOSPC:
    case EMFILE:
    case ENFILE:
    case ENOMEM:
    case ENOBUFS:
    case EMLINK:
    case EFBIG:
    case EDQUOT:
    case ENOLCK:
    case EUSERS:
      return absl::StatusCode::kResourceExhausted;
    case EAGAIN:
    case ECONNREFUSED:
    case ECONNRESET:
    case ECONNABORTED:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ENETDOWN:
    case EHOSTDOWN:
    case EIO:
      return absl::StatusCode::kUnavailable;
    case ETIMEDOUT:
    case ETIME:
      return absl::StatusCode::kDeadlineExceeded;
    case EINTR:
    case ECANCELED:
      return absl::StatusCode::kCancelled;
    case EOVERFLOW:
    case ERANGE:
    case ESPIPE:
      return absl::StatusCode::kOutOfRange;
    case ENOSYS:
    case ENOTSUP:
    case EAFNOSUPPORT:
    case EPFNOSUPPORT:
    case EPROTONOSUPPORT:
    case ESOCKTNOSUPPORT:
      return absl::StatusCode::kUnimplemented;
    case EDEADLK:
      return absl::StatusCode::kAborted;
    default:
      return absl::StatusCode::kUnknown;
  }
}

absl::Status ErrnoToStatus(int errno_value, absl::string_view context) {
  char buf[128];
  // GNU strerror_r returns the message pointer, which may not be `buf`.
  const char* msg = strerror_r(errno_value, buf, sizeof(buf));
  absl::Status status(
      ErrnoToCode(errno_value),
      absl::StrCat(context, ": ", msg, " (errno ", errno_value, ")"));
  status.SetPayload(kErrnoPayloadUrl, absl::Cord(absl::StrCat(errno_value)));
  return status;
}

absl::Status ErrnoStatus(absl::string_view context) {
  return ::dsec::ErrnoToStatus(errno, context);
}

absl::Status WithErrno(absl::Status status, int errno_value) {
  status.SetPayload(kErrnoPayloadUrl, absl::Cord(absl::StrCat(errno_value)));
  return status;
}

int StatusToErrno(const absl::Status& status) {
  if (status.ok()) return 0;
  if (auto payload = status.GetPayload(kErrnoPayloadUrl)) {
    int value = 0;
    if (absl::SimpleAtoi(std::string(*payload), &value) && value > 0) {
      return value;
    }
  }
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      return EINVAL;
    case absl::StatusCode::kNotFound:
      return ENOENT;
    case absl::StatusCode::kAlreadyExists:
      return EEXIST;
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
      return EACCES;
    case absl::StatusCode::kFailedPrecondition:
      return EPERM;
    case absl::StatusCode::kResourceExhausted:
      return ENOSPC;
    case absl::StatusCode::kUnavailable:
      return EAGAIN;
    case absl::StatusCode::kDeadlineExceeded:
      return ETIMEDOUT;
    case absl::StatusCode::kCancelled:
      return EINTR;
    case absl::StatusCode::kOutOfRange:
      return ERANGE;
    case absl::StatusCode::kUnimplemented:
      return ENOSYS;
    case absl::StatusCode::kAborted:
      return EAGAIN;
    default:
      return EIO;
  }
}

}  // namespace dsec
