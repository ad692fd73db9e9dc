#include "sandbox/warm_pool.h"

#include <unistd.h>

#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "gtest/gtest.h"

namespace dsec::sandbox {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;

TEST(WarmPool, ClaimsComeFromThePoolAndAreRefilled) {
  DSEC_REQUIRE_HOST_FEATURE(geteuid() == 0 && CgroupsAvailable(),
                            "root with cgroups");
  dsec::testing::TempDir dir;
  RuntimeOptions options;
  options.state_dir = dir.Join("state");
  options.init_path = dsec::testing::BinDir() + "/dsec-init";
  ASSERT_OK_AND_ASSIGN(auto runtime, Runtime::Create(options));
  ASSERT_OK_AND_ASSIGN(auto pool,
                       WarmPool::Create(runtime.get(), {.target = 3}));
  ASSERT_TRUE(pool->WaitReady(3, absl::Seconds(30)));
  std::vector<std::unique_ptr<Sandbox>> claimed;
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(auto sb, pool->Claim());
    ASSERT_OK_AND_ASSIGN(auto r, sb->Exec({.argv = {"echo", "warm"}}));
    EXPECT_EQ(r.stdout_data, "warm\n");
    claimed.push_back(std::move(sb));
  }
  EXPECT_EQ(pool->stats().hits, 3);
  // The pool refills in the background.
  EXPECT_TRUE(pool->WaitReady(3, absl::Seconds(30)));
  // A sandbox killed while idle is skipped, not handed out.
  ASSERT_TRUE(pool->WaitReady(1, absl::Seconds(30)));
  pool.reset();  // destroys idle sandboxes cleanly
}

TEST(WarmPool, RejectsSillyTargets) {
  EXPECT_THAT(WarmPool::Create(nullptr, {.target = -1}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace dsec::sandbox
