// GoogleTest matchers for absl::Status and absl::StatusOr<T>.
//
//   EXPECT_THAT(DoIt(), IsOk());
//   EXPECT_THAT(Parse(""), StatusIs(absl::StatusCode::kInvalidArgument,
//                                   HasSubstr("empty")));
//   ASSERT_OK_AND_ASSIGN(auto fd, OpenIt());
#ifndef DSEC_COMMON_TESTING_STATUS_MATCHERS_H_
#define DSEC_COMMON_TESTING_STATUS_MATCHERS_H_

#include <ostream>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::testing {

MATCHER(IsOk, negation ? "is not OK" : "is OK") {
  const absl::Status& status = ::dsec::internal::GetStatus(arg);
  if (!status.ok()) *result_listener << "status is " << status;
  return status.ok();
}

MATCHER_P2(StatusIs, code_matcher, message_matcher,
           "has a status code that " +
               ::testing::DescribeMatcher<absl::StatusCode>(code_matcher) +
               " and a message that " +
               ::testing::DescribeMatcher<std::string>(message_matcher)) {
  const absl::Status& status = ::dsec::internal::GetStatus(arg);
  *result_listener << "status is " << status;
  return ::testing::Matches(code_matcher)(status.code()) &&
         ::testing::Matches(message_matcher)(std::string(status.message()));
}

// StatusIs(code): any message.
inline auto StatusIs(absl::StatusCode code) {
  return StatusIs(code, ::testing::_);
}

}  // namespace dsec::testing

#define EXPECT_OK(expr) EXPECT_THAT((expr), ::dsec::testing::IsOk())
#define ASSERT_OK(expr) ASSERT_THAT((expr), ::dsec::testing::IsOk())

// ASSERT_OK_AND_ASSIGN(lhs, rexpr): asserts rexpr (a StatusOr) is OK and moves
// its value into lhs (a declaration or an existing name).
#define ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  DSEC_ASSERT_OK_AND_ASSIGN_IMPL_(       \
      DSEC_STATUS_CONCAT_(dsec_test_statusor_, __LINE__), lhs, rexpr)
#define DSEC_ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                    \
  ASSERT_TRUE(statusor.ok()) << statusor.status();            \
  lhs = std::move(statusor).value()

#endif  // DSEC_COMMON_TESTING_STATUS_MATCHERS_H_
