#include "common/scope_guard.h"

#include "gtest/gtest.h"

namespace dsec {
namespace {

TEST(ScopeGuard, RunsAtScopeExit) {
  int runs = 0;
  {
    auto guard = MakeScopeGuard([&] { ++runs; });
    EXPECT_EQ(runs, 0);
  }
  EXPECT_EQ(runs, 1);
}

TEST(ScopeGuard, CancelledGuardDoesNotRun) {
  int runs = 0;
  {
    auto guard = MakeScopeGuard([&] { ++runs; });
    std::move(guard).Cancel();
  }
  EXPECT_EQ(runs, 0);
}

}  // namespace
}  // namespace dsec
