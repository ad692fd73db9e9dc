#include "controller/store.h"

#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "gtest/gtest.h"

namespace dsec::controller {
namespace {

TEST(Store, ReopenReturnsTheSameState) {
  dsec::testing::TempDir dir;
  {
    ASSERT_OK_AND_ASSIGN(auto store, Store::Open(dir.path()));
    Store::Batch b;
    v1::Job job;
    job.set_id("job-1");
    job.set_name("rl");
    b.PutJob(job);
    for (int i = 0; i < 3; ++i) {
      v1::Sandbox sb;
      sb.set_id("sb-" + std::to_string(i));
      sb.set_job_id("job-1");
      sb.set_state(v1::SANDBOX_STATE_RUNNING);
      b.PutSandbox(sb);
    }
    v1::Node node;
    node.set_node_id("n1");
    node.set_endpoint("127.0.0.1:1");
    b.PutNode(node);
    v1::Snapshot snap;
    snap.set_id("snap-1");
    b.PutSnapshot(snap);
    ASSERT_OK(store->Write(std::move(b)));
    Store::Batch d;
    d.DeleteSandbox("sb-1");
    ASSERT_OK(store->Write(std::move(d)));
  }
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(dir.path()));
  ASSERT_OK_AND_ASSIGN(auto state, store->LoadAll());
  ASSERT_EQ(state.jobs.size(), 1u);
  EXPECT_EQ(state.jobs[0].name(), "rl");
  ASSERT_EQ(state.sandboxes.size(), 2u);
  EXPECT_EQ(state.sandboxes[0].id(), "sb-0");
  EXPECT_EQ(state.sandboxes[1].id(), "sb-2");
  EXPECT_EQ(state.sandboxes[1].state(), v1::SANDBOX_STATE_RUNNING);
  ASSERT_EQ(state.nodes.size(), 1u);
  EXPECT_EQ(state.nodes[0].endpoint(), "127.0.0.1:1");
  EXPECT_EQ(state.snapshots.size(), 1u);
}

TEST(Store, EmptyDirIsInvalid) {
  EXPECT_THAT(Store::Open(""),
              dsec::testing::StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace dsec::controller
