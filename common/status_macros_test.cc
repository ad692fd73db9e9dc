#include "common/status_macros.h"

#include <memory>
#include <string>

#include "common/testing/status_matchers.h"
#include "gtest/gtest.h"

namespace dsec {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;
using ::testing::HasSubstr;

absl::StatusOr<int> ParsePositive(int v) {
  if (v <= 0) return absl::InvalidArgumentError("not positive");
  return v;
}

absl::Status CheckTwice(int a, int b, int* calls) {
  ++*calls;
  RETURN_IF_ERROR(ParsePositive(a));
  ++*calls;
  RETURN_IF_ERROR(ParsePositive(b).status());
  ++*calls;
  return absl::OkStatus();
}

absl::StatusOr<int> Sum(int a, int b) {
  ASSIGN_OR_RETURN(int x, ParsePositive(a));
  ASSIGN_OR_RETURN(int y, ParsePositive(b));
  return x + y;
}

absl::StatusOr<std::unique_ptr<std::string>> MakeString(bool ok) {
  if (!ok) return absl::NotFoundError("no string");
  return std::make_unique<std::string>("hello");
}

absl::StatusOr<size_t> MoveOnlyLength(bool ok) {
  std::unique_ptr<std::string> s;
  ASSIGN_OR_RETURN(s, MakeString(ok));  // assigns to an existing name
  return s->size();
}

TEST(StatusMacros, ReturnIfErrorStopsAtFirstError) {
  int calls = 0;
  EXPECT_THAT(CheckTwice(-1, 1, &calls),
              StatusIs(absl::StatusCode::kInvalidArgument, "not positive"));
  EXPECT_EQ(calls, 1);
  calls = 0;
  EXPECT_THAT(CheckTwice(1, -1, &calls),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(calls, 2);
  calls = 0;
  EXPECT_THAT(CheckTwice(1, 1, &calls), IsOk());
  EXPECT_EQ(calls, 3);
}

TEST(StatusMacros, AssignOrReturnPropagatesValueAndError) {
  EXPECT_EQ(*Sum(2, 3), 5);
  EXPECT_THAT(Sum(2, 0), StatusIs(absl::StatusCode::kInvalidArgument,
                                  HasSubstr("positive")));
}

TEST(StatusMacros, AssignOrReturnWorksWithMoveOnlyTypes) {
  EXPECT_EQ(*MoveOnlyLength(true), 5u);
  EXPECT_THAT(MoveOnlyLength(false), StatusIs(absl::StatusCode::kNotFound));
}

TEST(StatusMatchers, AssertOkAndAssignDeclares) {
  ASSERT_OK_AND_ASSIGN(int v, ParsePositive(7));
  EXPECT_EQ(v, 7);
  EXPECT_THAT(ParsePositive(-7), ::testing::Not(IsOk()));
}

}  // namespace
}  // namespace dsec
