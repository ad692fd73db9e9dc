#include "common/units.h"

#include "common/testing/status_matchers.h"
#include "gtest/gtest.h"

namespace dsec {
namespace {

using ::dsec::testing::StatusIs;

TEST(ParseByteSize, AcceptsPlainAndSuffixedSizes) {
  EXPECT_EQ(*ParseByteSize("4096"), 4096);
  EXPECT_EQ(*ParseByteSize("64k"), 64 * 1024);
  EXPECT_EQ(*ParseByteSize("512M"), 512LL << 20);
  EXPECT_EQ(*ParseByteSize("2G"), 2LL << 30);
  EXPECT_EQ(*ParseByteSize("1.5GiB"), 3LL << 29);
  EXPECT_EQ(*ParseByteSize(" 10MB "), 10LL << 20);
}

TEST(ParseByteSize, RejectsGarbageWithActionableMessage) {
  for (const char* bad : {"", "M", "-1", "12X", "1e3", "99999999999T"}) {
    EXPECT_THAT(ParseByteSize(bad),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << bad;
  }
}

TEST(ParseMillicores, AcceptsCoresAndMillicores) {
  EXPECT_EQ(*ParseMillicores("500m"), 500);
  EXPECT_EQ(*ParseMillicores("2"), 2000);
  EXPECT_EQ(*ParseMillicores("0.25"), 250);
  EXPECT_THAT(ParseMillicores("fast"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseMillicores("-1"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace dsec
