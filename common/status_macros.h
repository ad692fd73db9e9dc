// Status propagation macros.
//
// Abseil 20220623 ships no RETURN_IF_ERROR / ASSIGN_OR_RETURN; these match the
// upstream (absl/status/status_macros.h-style) spelling and semantics so a
// later upgrade is a rename. Thread-compatible: they are plain expressions.
#ifndef DSEC_COMMON_STATUS_MACROS_H_
#define DSEC_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/base/optimization.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dsec::internal {

// Returns the status held by a Status or StatusOr<T>.
inline const absl::Status& GetStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

}  // namespace dsec::internal

#define DSEC_STATUS_CONCAT_INNER_(a, b) a##b
#define DSEC_STATUS_CONCAT_(a, b) DSEC_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (absl::Status or absl::StatusOr<T>); returns its status
// from the enclosing function if it is not OK.
#define RETURN_IF_ERROR(expr)                                           \
  do {                                                                  \
    auto&& dsec_status_ = (expr);                                       \
    if (ABSL_PREDICT_FALSE(!dsec_status_.ok())) {                       \
      return ::absl::Status(::dsec::internal::GetStatus(dsec_status_)); \
    }                                                                   \
  } while (false)

// ASSIGN_OR_RETURN(lhs, rexpr): evaluates `rexpr` (an absl::StatusOr<T>); on
// error returns its status, otherwise moves the value into `lhs`, which may be
// a declaration (`auto fd`, `std::unique_ptr<Foo> foo`) or an existing name.
#define ASSIGN_OR_RETURN(lhs, rexpr)                                         \
  DSEC_ASSIGN_OR_RETURN_IMPL_(DSEC_STATUS_CONCAT_(dsec_statusor_, __LINE__), \
                              lhs, rexpr)

#define DSEC_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                \
  if (ABSL_PREDICT_FALSE(!statusor.ok())) {               \
    return std::move(statusor).status();                  \
  }                                                       \
  lhs = std::move(statusor).value()

#endif  // DSEC_COMMON_STATUS_MACROS_H_
