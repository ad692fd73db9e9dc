#include "fs/cluster_manager.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "fs/chain_table.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::fs {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;
using ::testing::ElementsAre;

constexpr auto kServing = v1::CHAIN_MEMBER_STATE_SERVING;
constexpr auto kSyncing = v1::CHAIN_MEMBER_STATE_SYNCING;
constexpr auto kOffline = v1::CHAIN_MEMBER_STATE_OFFLINE;

// "a:S b:Y c:O" for members a SERVING, b SYNCING, c OFFLINE.
std::string Describe(const v1::Chain& chain) {
  std::string out;
  for (const auto& m : chain.members()) {
    if (!out.empty()) out += " ";
    char s = m.state() == kServing ? 'S' : m.state() == kSyncing ? 'Y' : 'O';
    absl::StrAppend(&out, m.node_id(), ":", std::string(1, s));
  }
  return out;
}

class ClusterManagerTest : public ::testing::Test {
 protected:
  void SetUp() override { Open(); }

  void Open() {
    manager_.reset();
    ClusterOptions options;
    options.num_chains = 4;
    options.replication = 3;
    options.heartbeat_interval = absl::Seconds(1);
    options.offline_after = 3;
    options.state_path = tmp_.Join("chains.pb");
    options.clock = [this] { return now_; };
    auto manager = ClusterManager::Create(options);
    ASSERT_THAT(manager, IsOk());
    manager_ = std::move(*manager);
  }

  void Register(const std::string& node) {
    ASSERT_OK(manager_->Register(node, node + ":1").status());
  }

  void Beat(const std::string& node) {
    v1::ChunkHeartbeatRequest request;
    request.set_node_id(node);
    auto response = manager_->Heartbeat(request);
    ASSERT_THAT(response, IsOk());
    ASSERT_FALSE(response->reregister()) << node;
  }

  std::string Chain(uint32_t id) {
    v1::ChainTable table = manager_->Table();
    const v1::Chain* chain = FindChain(table, id);
    return chain ? Describe(*chain) : "missing";
  }

  uint64_t ChainVersion(uint32_t id) {
    v1::ChainTable table = manager_->Table();
    return FindChain(table, id)->version();
  }

  // Three servers a, b, c form the cluster.
  void FormThree() {
    Register("a");
    Register("b");
    Register("c");
  }

  dsec::testing::TempDir tmp_;
  absl::Time now_ = absl::FromUnixSeconds(1000000);
  std::unique_ptr<ClusterManager> manager_;
};

TEST_F(ClusterManagerTest, ChainsFormOnceReplicationServersAreAliveAllServing) {
  Register("a");
  Register("b");
  EXPECT_EQ(Chain(0), "");
  Register("c");
  // Every chain is full and SERVING; heads rotate with the chain id.
  EXPECT_EQ(Chain(0), "a:S b:S c:S");
  EXPECT_EQ(Chain(1), "b:S c:S a:S");
  EXPECT_EQ(Chain(2), "c:S a:S b:S");
  EXPECT_EQ(Chain(3), "a:S b:S c:S");
  v1::ChainTable table = manager_->Table();
  EXPECT_EQ(table.replication(), 3u);
  EXPECT_EQ(table.chunk_size(), 4u << 20);
  EXPECT_EQ(table.servers_size(), 3);
}

TEST_F(ClusterManagerTest, FourthServerDoesNotJoinFullChains) {
  FormThree();
  uint64_t version = manager_->Table().version();
  uint64_t chain_version = ChainVersion(0);
  Register("d");
  EXPECT_EQ(Chain(0), "a:S b:S c:S");
  EXPECT_EQ(ChainVersion(0), chain_version);
  EXPECT_GT(manager_->Table().version(), version);  // Server entry added.
  EXPECT_EQ(manager_->Table().servers_size(), 4);
}

TEST_F(ClusterManagerTest, NewServerJoinsADegradedChainAsSyncing) {
  FormThree();
  now_ += absl::Seconds(2);
  Beat("a");
  Beat("b");
  now_ += absl::Seconds(2);
  ASSERT_OK(manager_->CheckLiveness());
  EXPECT_EQ(Chain(0), "a:S b:S c:O");
  Register("d");
  EXPECT_EQ(Chain(0), "a:S b:S d:Y c:O");
}

TEST_F(ClusterManagerTest, SpareReplacesAMemberOfflineTooLong) {
  FormThree();
  Register("d");  // a spare: every chain is full
  EXPECT_EQ(Chain(0), "a:S b:S c:S");
  auto beat_abd = [&] {
    Beat("a");
    Beat("b");
    Beat("d");
  };
  now_ += absl::Seconds(2);
  beat_abd();
  now_ += absl::Seconds(2);
  beat_abd();
  ASSERT_OK(manager_->CheckLiveness());
  EXPECT_EQ(Chain(0), "a:S b:S c:O");  // Offline, not replaced yet.
  // Just short of replace_after (2 minutes): still waiting for c.
  for (int i = 0; i < 118; ++i) {
    now_ += absl::Seconds(1);
    beat_abd();
    ASSERT_OK(manager_->CheckLiveness());
  }
  EXPECT_EQ(Chain(0), "a:S b:S c:O");
  now_ += absl::Seconds(2);
  beat_abd();
  const uint64_t version = ChainVersion(0);
  ASSERT_OK(manager_->CheckLiveness());
  // c leaves every chain; d joins them to sync.
  for (uint32_t id = 0; id < 4; ++id) {
    EXPECT_THAT(Chain(id), ::testing::Not(::testing::HasSubstr("c:")));
    EXPECT_THAT(Chain(id), ::testing::HasSubstr("d:Y"));
  }
  EXPECT_EQ(Chain(0), "a:S b:S d:Y");
  EXPECT_GT(ChainVersion(0), version);
  ASSERT_OK(manager_->SyncDone("d", 0, ChainVersion(0)).status());
  EXPECT_EQ(Chain(0), "a:S b:S d:S");
  // c returns as a spare: it is in no chain any more.
  Register("c");
  EXPECT_EQ(Chain(0), "a:S b:S d:S");
  // The replacement survives a meta restart.
  Open();
  EXPECT_EQ(Chain(0), "a:S b:S d:S");
}

TEST_F(ClusterManagerTest, WithoutASpareTheOfflineMemberWaits) {
  FormThree();
  for (int i = 0; i < 300; ++i) {
    now_ += absl::Seconds(1);
    Beat("a");
    Beat("b");
    ASSERT_OK(manager_->CheckLiveness());
  }
  EXPECT_EQ(Chain(0), "a:S b:S c:O");
  Register("c");
  EXPECT_EQ(Chain(0), "a:S b:S c:Y");
}

TEST_F(ClusterManagerTest, MissedHeartbeatsGoOfflineButNeverTheLastServing) {
  FormThree();
  now_ += absl::Seconds(2);
  Beat("b");
  Beat("c");
  ASSERT_OK(manager_->CheckLiveness());
  EXPECT_EQ(Chain(0), "a:S b:S c:S");  // Not late yet.
  now_ += absl::Seconds(2);
  uint64_t version = ChainVersion(0);
  ASSERT_OK(manager_->CheckLiveness());
  EXPECT_EQ(Chain(0), "b:S c:S a:O");
  EXPECT_EQ(Chain(1), "b:S c:S a:O");
  EXPECT_GT(ChainVersion(0), version);
  std::vector<std::string> alive;
  for (const auto& s : manager_->AliveServers()) alive.push_back(s.node_id());
  EXPECT_THAT(alive, ElementsAre("b", "c"));

  // b and c go too: c stays SERVING in every chain where it is the last.
  now_ += absl::Seconds(1);
  Beat("c");
  now_ += absl::Seconds(3);
  ASSERT_OK(manager_->CheckLiveness());
  EXPECT_EQ(Chain(0), "c:S a:O b:O");
  now_ += absl::Seconds(10);
  ASSERT_OK(manager_->CheckLiveness());
  EXPECT_EQ(Chain(0), "c:S a:O b:O");
  EXPECT_TRUE(manager_->AliveServers().empty());
}

TEST_F(ClusterManagerTest, ReturningServerSyncsThenServes) {
  FormThree();
  now_ += absl::Seconds(4);
  Beat("b");
  Beat("c");
  ASSERT_OK(manager_->CheckLiveness());
  EXPECT_EQ(Chain(0), "b:S c:S a:O");

  // Heartbeats of an offline server ask it to register again.
  v1::ChunkHeartbeatRequest request;
  request.set_node_id("a");
  ASSERT_OK_AND_ASSIGN(v1::ChunkHeartbeatResponse response,
                       manager_->Heartbeat(request));
  EXPECT_TRUE(response.reregister());

  ASSERT_OK(manager_->Register("a", "a:2").status());
  EXPECT_EQ(Chain(0), "b:S c:S a:Y");
  ASSERT_OK_AND_ASSIGN(std::string address, AddressOf(manager_->Table(), "a"));
  EXPECT_EQ(address, "a:2");

  uint64_t version = ChainVersion(0);
  ASSERT_OK(manager_->SyncDone("a", 0, version).status());
  EXPECT_EQ(Chain(0), "b:S c:S a:S");
  EXPECT_GT(ChainVersion(0), version);
  // Idempotent once serving.
  EXPECT_OK(manager_->SyncDone("a", 0, version).status());
}

TEST_F(ClusterManagerTest, StaleSyncDoneIsAborted) {
  FormThree();
  now_ += absl::Seconds(4);
  Beat("b");
  Beat("c");
  ASSERT_OK(manager_->CheckLiveness());
  Register("a");
  EXPECT_EQ(Chain(1), "b:S c:S a:Y");
  uint64_t started = ChainVersion(1);
  // The chain changes while a syncs: c goes offline.
  now_ += absl::Seconds(2);
  Beat("a");
  Beat("b");
  now_ += absl::Seconds(2);
  Beat("a");
  Beat("b");
  ASSERT_OK(manager_->CheckLiveness());
  EXPECT_EQ(Chain(1), "b:S a:Y c:O");
  EXPECT_THAT(manager_->SyncDone("a", 1, started),
              StatusIs(absl::StatusCode::kAborted));
  EXPECT_EQ(Chain(1), "b:S a:Y c:O");
  EXPECT_OK(manager_->SyncDone("a", 1, ChainVersion(1)).status());
  EXPECT_EQ(Chain(1), "b:S a:S c:O");

  EXPECT_THAT(manager_->SyncDone("zz", 1, 1),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(manager_->SyncDone("a", 99, 1),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(manager_->SyncDone("c", 1, ChainVersion(1)),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(ClusterManagerTest, LastServingMemberReturnsServingAndOthersSync) {
  FormThree();
  now_ += absl::Seconds(4);
  Beat("c");
  ASSERT_OK(manager_->CheckLiveness());
  now_ += absl::Seconds(4);
  ASSERT_OK(manager_->CheckLiveness());
  EXPECT_EQ(Chain(0), "c:S a:O b:O");
  // Whole-cluster restart: a returns first and must sync from c.
  Register("a");
  EXPECT_EQ(Chain(0), "c:S a:Y b:O");
  Register("c");
  EXPECT_EQ(Chain(0), "c:S a:Y b:O");
}

TEST_F(ClusterManagerTest, TableSurvivesReopenAndServersCountAsAlive) {
  FormThree();
  now_ += absl::Seconds(4);
  Beat("a");
  Beat("b");
  ASSERT_OK(manager_->CheckLiveness());
  v1::ChainTable before = manager_->Table();
  EXPECT_EQ(Chain(2), "a:S b:S c:O");

  now_ += absl::Seconds(100);
  Open();
  v1::ChainTable after = manager_->Table();
  EXPECT_GT(after.version(), before.version());
  ASSERT_EQ(after.chains_size(), 4);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(Describe(after.chains(i)), Describe(before.chains(i)));
    EXPECT_EQ(after.chains(i).version(), before.chains(i).version());
  }
  // a and b were alive: liveness counts from the reload. c was offline and
  // stays so until it registers again.
  EXPECT_EQ(manager_->AliveServers().size(), 2u);
  now_ += absl::Seconds(2);
  ASSERT_OK(manager_->CheckLiveness());
  EXPECT_EQ(manager_->AliveServers().size(), 2u);
  Beat("a");
  now_ += absl::Seconds(2);
  ASSERT_OK(manager_->CheckLiveness());
  EXPECT_EQ(Chain(0), "a:S c:O b:O");
  v1::ChunkHeartbeatRequest request;
  request.set_node_id("c");
  ASSERT_OK_AND_ASSIGN(v1::ChunkHeartbeatResponse response,
                       manager_->Heartbeat(request));
  EXPECT_TRUE(response.reregister());
  Register("c");
  EXPECT_EQ(Chain(0), "a:S c:Y b:O");
}

TEST_F(ClusterManagerTest, HeartbeatDeliversNewerTablesAndUsage) {
  FormThree();
  uint64_t version = manager_->Table().version();
  v1::ChunkHeartbeatRequest request;
  request.set_node_id("a");
  request.set_table_version(version);
  request.set_used_bytes(100);
  ASSERT_OK_AND_ASSIGN(v1::ChunkHeartbeatResponse response,
                       manager_->Heartbeat(request));
  EXPECT_FALSE(response.has_table());
  EXPECT_FALSE(response.reregister());

  request.set_table_version(version - 1);
  request.set_node_id("b");
  request.set_used_bytes(23);
  ASSERT_OK_AND_ASSIGN(response, manager_->Heartbeat(request));
  ASSERT_TRUE(response.has_table());
  EXPECT_EQ(response.table().version(), version);
  EXPECT_EQ(manager_->AliveUsedBytes(), 123u);

  request.set_node_id("stranger");
  ASSERT_OK_AND_ASSIGN(response, manager_->Heartbeat(request));
  EXPECT_TRUE(response.reregister());
  EXPECT_FALSE(response.has_table());
}

TEST_F(ClusterManagerTest, BadRegistrationsAreRefused) {
  EXPECT_THAT(manager_->Register("", "x:1"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(manager_->Register("a", ""),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_FALSE(manager_->HasServers());
}

TEST(ClusterManagerOptions, InvalidOptionsAndCorruptStateAreErrors) {
  ClusterOptions options;
  options.num_chains = 0;
  EXPECT_THAT(ClusterManager::Create(options),
              StatusIs(absl::StatusCode::kInvalidArgument));
  options.num_chains = 1;
  options.replication = 0;
  EXPECT_THAT(ClusterManager::Create(options),
              StatusIs(absl::StatusCode::kInvalidArgument));

  dsec::testing::TempDir tmp;
  options = ClusterOptions();
  options.state_path = tmp.Join("chains.pb");
  {
    FILE* f = fopen(options.state_path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    fputs("\xff\xff\xff garbage", f);
    fclose(f);
  }
  EXPECT_THAT(ClusterManager::Create(options),
              StatusIs(absl::StatusCode::kDataLoss));
}

TEST(ClusterManagerOptions, ReplicationOneFormsWithTheFirstServer) {
  ClusterOptions options;
  options.num_chains = 2;
  options.replication = 1;
  ASSERT_OK_AND_ASSIGN(auto manager, ClusterManager::Create(options));
  ASSERT_OK_AND_ASSIGN(v1::ChainTable table, manager->Register("a", "a:1"));
  EXPECT_EQ(Describe(table.chains(0)), "a:S");
  ASSERT_OK_AND_ASSIGN(table, manager->Register("b", "b:1"));
  EXPECT_EQ(Describe(table.chains(0)), "a:S");
  EXPECT_EQ(Describe(table.chains(1)), "a:S");
}

}  // namespace
}  // namespace dsec::fs
