#include "controller/store.h"

#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rocksdb/db.h"

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

TEST(Store, SnapshotGcEntriesSurviveReopenAndDelete) {
  dsec::testing::TempDir dir;
  const absl::Time deadline = absl::FromUnixMillis(1700000000123);
  {
    ASSERT_OK_AND_ASSIGN(auto store, Store::Open(dir.path()));
    Store::Batch b;
    v1::Snapshot snap;
    snap.set_id("snap-1");
    b.PutSnapshot(snap);
    b.PutSnapshotGc("snap-2", deadline);
    b.PutSnapshotGc("snap-3", deadline + absl::Seconds(1));
    ASSERT_OK(store->Write(std::move(b)));
    Store::Batch d;
    d.DeleteSnapshotGc("snap-3");
    ASSERT_OK(store->Write(std::move(d)));
  }
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(dir.path()));
  ASSERT_OK_AND_ASSIGN(auto state, store->LoadAll());
  ASSERT_EQ(state.snapshots.size(), 1u);
  EXPECT_EQ(state.snapshots[0].id(), "snap-1");
  ASSERT_EQ(state.snapshot_gc.size(), 1u);
  EXPECT_EQ(state.snapshot_gc[0].snapshot_id, "snap-2");
  EXPECT_EQ(state.snapshot_gc[0].deadline, deadline);
}

TEST(Store, CorruptSnapshotGcRecordIsInternal) {
  dsec::testing::TempDir dir;
  {
    rocksdb::Options options;
    options.create_if_missing = true;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(options, dir.path(), &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    ASSERT_TRUE(
        db->Put(rocksdb::WriteOptions(), "snapgc/snap-1", "not-a-time").ok());
    ASSERT_TRUE(db->Close().ok());
  }
  ASSERT_OK_AND_ASSIGN(auto store, Store::Open(dir.path()));
  EXPECT_THAT(store->LoadAll(),
              dsec::testing::StatusIs(
                  absl::StatusCode::kInternal,
                  ::testing::HasSubstr("corrupt store record snapgc/snap-1")));
}

TEST(Store, EmptyDirIsInvalid) {
  EXPECT_THAT(Store::Open(""),
              dsec::testing::StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace dsec::controller
