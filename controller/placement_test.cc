#include "controller/placement.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "common/testing/status_matchers.h"
#include "gtest/gtest.h"

namespace dsec::controller {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;

constexpr int64_t kGiB = int64_t{1} << 30;

Placer MakeCluster(int n, int64_t slots = 100) {
  Placer p;
  for (int i = 0; i < n; ++i) {
    p.UpsertNode(absl::StrCat("n", i), {16000, 64 * kGiB, slots},
                 {{"zone", i % 2 ? "b" : "a"}}, {});
  }
  return p;
}

PlacementRequest Small() {
  PlacementRequest r;
  r.cpu_millicores = 1000;
  r.memory_bytes = kGiB;
  return r;
}

TEST(Placer, GroupSpreadUsesDistinctNodes) {
  Placer p = MakeCluster(8);
  GroupState g;
  PlacementRequest r = Small();
  r.group = &g;
  std::set<NodeIndex> used;
  for (int i = 0; i < 8; ++i) {
    auto n = p.Place(r);
    ASSERT_THAT(n, IsOk());
    used.insert(*n);
  }
  EXPECT_GE(used.size(), 7u);
}

TEST(Placer, MaxPerNodeIsAHardCap) {
  Placer p = MakeCluster(2);
  GroupState g;
  PlacementRequest r = Small();
  r.group = &g;
  r.max_per_node = 1;
  ASSERT_THAT(p.Place(r), IsOk());
  ASSERT_THAT(p.Place(r), IsOk());
  EXPECT_THAT(p.Place(r), StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST(Placer, PackKeepsGroupOnFewNodes) {
  Placer p = MakeCluster(50);
  GroupState g;
  PlacementRequest r = Small();
  r.group = &g;
  r.spread = Spread::kPack;
  for (int i = 0; i < 10; ++i) ASSERT_THAT(p.Place(r), IsOk());
  EXPECT_LE(g.per_node.size(), 2u);
}

TEST(Placer, NodeSelectorRestrictsNodes) {
  Placer p = MakeCluster(10);
  std::map<std::string, std::string> sel{{"zone", "b"}};
  PlacementRequest r = Small();
  r.node_selector = &sel;
  for (int i = 0; i < 20; ++i) {
    auto n = p.Place(r);
    ASSERT_THAT(n, IsOk());
    EXPECT_EQ(*n % 2, 1u);
  }
  std::map<std::string, std::string> none{{"zone", "c"}};
  r.node_selector = &none;
  EXPECT_THAT(p.Place(r), StatusIs(absl::StatusCode::kResourceExhausted,
                                   ::testing::HasSubstr("zone=c")));
}

TEST(Placer, CapacityFiltersAndReleaseFrees) {
  Placer p;
  p.UpsertNode("small", {2000, 4 * kGiB, 10}, {}, {});
  PlacementRequest r = Small();
  ASSERT_THAT(p.Place(r), IsOk());
  ASSERT_THAT(p.Place(r), IsOk());
  EXPECT_THAT(p.Place(r), StatusIs(absl::StatusCode::kResourceExhausted));
  p.Release(0, r.cpu_millicores, r.memory_bytes);
  EXPECT_THAT(p.Place(r), IsOk());
  PlacementRequest big = Small();
  big.memory_bytes = 8 * kGiB;
  EXPECT_THAT(p.Place(big), StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST(Placer, CordonedNodesGetNothing) {
  Placer p = MakeCluster(3);
  p.SetSchedulable(0, false);
  p.SetSchedulable(1, false);
  for (int i = 0; i < 10; ++i) {
    auto n = p.Place(Small());
    ASSERT_THAT(n, IsOk());
    EXPECT_EQ(*n, 2u);
  }
  p.SetSchedulable(2, false);
  EXPECT_THAT(p.Place(Small()), StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST(Placer, PrefersNodesWithCachedImage) {
  Placer p;
  for (int i = 0; i < 200; ++i) {
    p.UpsertNode(absl::StrCat("n", i), {16000, 64 * kGiB, 100}, {},
                 i == 77 ? std::vector<std::string>{"python-3.12"}
                         : std::vector<std::string>{});
  }
  PlacementRequest r = Small();
  r.image = "python-3.12";
  auto n = p.Place(r);
  ASSERT_THAT(n, IsOk());
  EXPECT_EQ(p.NodeId(*n), "n77");
}

TEST(Placer, ExcludedNodeIsSkipped) {
  Placer p = MakeCluster(2);
  PlacementRequest r = Small();
  r.exclude = {0};
  for (int i = 0; i < 5; ++i) {
    auto n = p.Place(r);
    ASSERT_THAT(n, IsOk());
    EXPECT_EQ(*n, 1u);
  }
}

TEST(Placer, FindsTheLastFreeNodeAmongManyFull) {
  Placer p;
  for (int i = 0; i < 2000; ++i) {
    p.UpsertNode(absl::StrCat("n", i), {1000, kGiB, 1}, {}, {});
  }
  PlacementRequest r = Small();
  for (int i = 0; i < 2000; ++i) ASSERT_THAT(p.Place(r), IsOk()) << i;
  EXPECT_THAT(p.Place(r), StatusIs(absl::StatusCode::kResourceExhausted));
}

}  // namespace
}  // namespace dsec::controller
