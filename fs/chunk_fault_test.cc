// Fault tests with real dsec-chunk processes (DSEC_BIN_DIR) and a
// FakeCluster in the test process playing the meta server: SIGKILL of the
// chain's middle server during a stream of writes, its resync after a
// restart, and repair of a corrupted chunk file.
#include <dirent.h>
#include <fcntl.h>
#include <grpcpp/client_context.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/testing/status_matchers.h"
#include "common/testing/subprocess.h"
#include "common/testing/test_util.h"
#include "dsec/v1/fs_service.grpc.pb.h"
#include "fs/chain_table.h"
#include "fs/chunk_store.h"
#include "fs/fs_rpc.h"
#include "fs/testing/fake_cluster.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::fs {
namespace {

using ::dsec::testing::StatusIs;

constexpr uint32_t kMax = 1 << 20;
constexpr auto kServing = v1::CHAIN_MEMBER_STATE_SERVING;
constexpr auto kSyncing = v1::CHAIN_MEMBER_STATE_SYNCING;
constexpr auto kOffline = v1::CHAIN_MEMBER_STATE_OFFLINE;

class ChunkFaultTest : public ::testing::Test {
 protected:
  const std::vector<std::string> kNodes = {"n1", "n2", "n3"};

  void SetUp() override {
    bin_ = dsec::testing::BinDir() + "/dsec-chunk";
    ASSERT_EQ(access(bin_.c_str(), X_OK), 0) << bin_ << " not built";
    testing::FakeClusterOptions co;
    co.num_chains = 1;
    co.heartbeat_interval_ms = 100;
    ASSERT_OK_AND_ASSIGN(cluster_, testing::FakeCluster::Start(co));
    procs_.resize(kNodes.size());
    ports_.resize(kNodes.size());
    for (size_t i = 0; i < kNodes.size(); ++i) {
      ASSERT_OK_AND_ASSIGN(ports_[i], dsec::testing::PickFreeLoopbackPort());
      Spawn(i);
      stubs_.push_back(v1::FsChunkService::NewStub(
          MakeFsChannel(absl::StrCat("127.0.0.1:", ports_[i]))));
    }
    cluster_->SetChain(1,
                       {{"n1", kServing}, {"n2", kServing}, {"n3", kServing}});
    ASSERT_TRUE(cluster_->WaitForTable([&](const v1::ChainTable& t) {
      return t.servers_size() == 3;
    })) << Logs();
  }

  void TearDown() override {
    if (HasFailure()) std::cerr << Logs();
  }

  void Spawn(size_t i, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {
        bin_,
        absl::StrCat("--listen=127.0.0.1:", ports_[i]),
        "--node_id=" + kNodes[i],
        "--data_dir=" + dir_.Join(kNodes[i]),
        "--meta=" + cluster_->address(),
        absl::StrCat("--max_chunk_size=", kMax),
        "--sync=false",
        "--log_level=info"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    ASSERT_OK_AND_ASSIGN(procs_[i], dsec::testing::Subprocess::Start(
                                        argv, dir_.Join(kNodes[i] + ".log")));
  }

  // Server i's (last) data file of chunk `id` ("" if none).
  std::string ChunkFile(size_t i, ChunkId id) {
    std::vector<std::string> files =
        testing::ChunkFilesOf(dir_.Join(kNodes[i]), id.inode, id.index);
    return files.empty() ? "" : files.back();
  }

  static void Overwrite(const std::string& file, off_t offset,
                        const std::string& bytes) {
    int fd = open(file.c_str(), O_RDWR);
    ASSERT_GE(fd, 0) << file;
    ASSERT_EQ(pwrite(fd, bytes.data(), bytes.size(), offset),
              static_cast<ssize_t>(bytes.size()));
    close(fd);
  }

  std::string Logs() {
    std::string out;
    for (size_t i = 0; i < procs_.size(); ++i) {
      if (procs_[i]) {
        out += absl::StrCat("==== ", kNodes[i], " ====\n", procs_[i]->Log());
      }
    }
    return out;
  }

  size_t IndexOf(const std::string& node) {
    for (size_t i = 0; i < kNodes.size(); ++i) {
      if (kNodes[i] == node) return i;
    }
    return 0;
  }

  // Writes at the current head until acknowledged, retrying UNAVAILABLE and
  // ABORTED (the client's part of the contract).
  absl::Status WriteWithRetry(ChunkId id, uint64_t offset,
                              const std::string& data) {
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    absl::Status last;
    while (absl::Now() < deadline) {
      v1::Chain chain = cluster_->chain(1);
      std::vector<std::string> order = WriteOrder(chain);
      if (order.empty()) return absl::InternalError("empty chain");
      v1::ChunkWriteRequest req;
      req.mutable_chain()->set_chain_id(1);
      req.mutable_chain()->set_chain_version(chain.version());
      req.mutable_chunk()->set_inode(id.inode);
      req.mutable_chunk()->set_index(id.index);
      req.set_offset(offset);
      req.set_data(data);
      v1::ChunkWriteResponse resp;
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(15)));
      last = FromGrpcFsStatus(
          ctx, stubs_[IndexOf(order[0])]->Write(&ctx, req, &resp));
      if (last.ok()) return last;
      if (!absl::IsUnavailable(last) && !absl::IsAborted(last) &&
          !absl::IsDeadlineExceeded(last)) {
        return last;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return last;
  }

  absl::StatusOr<std::string> Read(size_t server, ChunkId id) {
    v1::ChunkReadRequest req;
    req.mutable_chunk()->set_inode(id.inode);
    req.mutable_chunk()->set_index(id.index);
    req.set_length(kMax);
    v1::ChunkReadResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    absl::Status s =
        FromGrpcFsStatus(ctx, stubs_[server]->Read(&ctx, req, &resp));
    if (!s.ok()) return s;
    return resp.data();
  }

  absl::StatusOr<v1::FetchChunkResponse> Fetch(size_t server, ChunkId id) {
    v1::FetchChunkRequest req;
    req.mutable_chunk()->set_inode(id.inode);
    req.mutable_chunk()->set_index(id.index);
    v1::FetchChunkResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    absl::Status s =
        FromGrpcFsStatus(ctx, stubs_[server]->FetchChunk(&ctx, req, &resp));
    if (!s.ok()) return s;
    return resp;
  }

  // A writer thread: overwrites and extends chunks of a few inodes, keeping
  // the model of every acknowledged write.
  class Writer {
   public:
    // Continues the write sequence at `seq` over `model` (what was acked).
    Writer(ChunkFaultTest* t, uint64_t seq,
           std::map<ChunkId, std::string> model)
        : t_(t), seq_(seq), model_(std::move(model)) {
      thread_ = std::thread([this] { Run(); });
    }
    ~Writer() { Stop(); }
    void Stop() {
      stop_ = true;
      if (thread_.joinable()) thread_.join();
    }
    int acked() const { return acked_; }
    uint64_t next_seq() const { return next_seq_; }
    bool WaitForAcks(int n) {
      const absl::Time deadline = absl::Now() + absl::Seconds(120);
      while (acked_ < n && failure_.ok() && absl::Now() < deadline) {
        absl::SleepFor(absl::Milliseconds(5));
      }
      return acked_ >= n;
    }
    absl::Status failure() const { return failure_; }
    std::map<ChunkId, std::string> model() const {
      absl::MutexLock lock(&mu_);
      return model_;
    }

   private:
    void Run() {
      for (uint64_t i = seq_; !stop_; ++i) {
        ChunkId id{1 + i % 7, static_cast<uint32_t>((i / 7) % 4)};
        std::string data =
            absl::StrCat("write-", i, "-", std::string(i % 300, 'x'));
        uint64_t offset = (i * 37) % 5000;
        absl::Status s = t_->WriteWithRetry(id, offset, data);
        if (!s.ok()) {
          failure_ = s;
          return;
        }
        {
          absl::MutexLock lock(&mu_);
          std::string& m = model_[id];
          if (m.size() < offset + data.size()) {
            m.resize(offset + data.size(), '\0');
          }
          m.replace(offset, data.size(), data);
        }
        ++acked_;
        next_seq_ = i + 1;
      }
    }

    ChunkFaultTest* t_;
    uint64_t seq_;
    std::atomic<bool> stop_{false};
    std::atomic<int> acked_{0};
    std::atomic<uint64_t> next_seq_{0};
    absl::Status failure_;
    mutable absl::Mutex mu_;
    std::map<ChunkId, std::string> model_ ABSL_GUARDED_BY(mu_);
    std::thread thread_;
  };

  std::string bin_;
  dsec::testing::TempDir dir_;
  std::unique_ptr<testing::FakeCluster> cluster_;
  std::vector<std::unique_ptr<dsec::testing::Subprocess>> procs_;
  std::vector<int> ports_;
  std::vector<std::unique_ptr<v1::FsChunkService::Stub>> stubs_;
};

TEST_F(ChunkFaultTest, KilledMiddleServerLosesNoAckedWriteAndResyncs) {
  auto writer =
      std::make_unique<Writer>(this, 0, std::map<ChunkId, std::string>());
  ASSERT_TRUE(writer->WaitForAcks(40)) << writer->failure();

  // SIGKILL the middle server mid-stream; the "meta server" notices.
  ASSERT_OK(procs_[1]->Stop(SIGKILL).status());
  cluster_->SetMemberState(1, "n2", kOffline);
  int acked = writer->acked();
  ASSERT_TRUE(writer->WaitForAcks(acked + 40)) << writer->failure();
  writer->Stop();
  ASSERT_OK(writer->failure());
  std::map<ChunkId, std::string> model = writer->model();
  for (const auto& [id, content] : model) {
    for (size_t i : {0, 2}) {
      absl::StatusOr<std::string> r = Read(i, id);
      ASSERT_OK(r.status()) << kNodes[i] << " " << id.ToString();
      EXPECT_EQ(*r, content) << kNodes[i] << " " << id.ToString();
    }
  }

  // Restart it on the same data dir; it rejoins as SYNCING while writes
  // continue, and becomes SERVING once its sync is done.
  Spawn(1);
  ASSERT_TRUE(cluster_->WaitForTable([&](const v1::ChainTable&) {
    return cluster_->registrations("n2") >= 2;
  }));
  writer = std::make_unique<Writer>(this, writer->next_seq(), model);
  ASSERT_TRUE(writer->WaitForAcks(20)) << writer->failure();
  cluster_->SetMemberState(1, "n2", kSyncing);
  ASSERT_TRUE(cluster_->WaitForTable([](const v1::ChainTable& t) {
    return StateOf(*FindChain(t, 1), "n2") == kServing;
  })) << "n2 never finished its sync";
  EXPECT_GE(cluster_->sync_done("n2", 1), 1);
  acked = writer->acked();
  ASSERT_TRUE(writer->WaitForAcks(acked + 20)) << writer->failure();
  writer->Stop();
  ASSERT_OK(writer->failure());

  model = writer->model();
  ASSERT_FALSE(model.empty());
  for (const auto& [id, content] : model) {
    absl::StatusOr<v1::FetchChunkResponse> head = Fetch(0, id);
    ASSERT_OK(head.status()) << id.ToString();
    for (size_t i : {0, 1, 2}) {
      absl::StatusOr<v1::FetchChunkResponse> f = Fetch(i, id);
      ASSERT_OK(f.status()) << kNodes[i] << " " << id.ToString();
      EXPECT_EQ(f->version(), head->version())
          << kNodes[i] << " " << id.ToString();
      EXPECT_EQ(f->checksum(), head->checksum()) << kNodes[i];
      EXPECT_EQ(f->content(), head->content()) << kNodes[i];
    }
    for (size_t i : {0, 1, 2}) {
      absl::StatusOr<std::string> r = Read(i, id);
      ASSERT_OK(r.status()) << kNodes[i] << " " << id.ToString();
      EXPECT_EQ(*r, content) << kNodes[i] << " " << id.ToString();
    }
  }
}

TEST_F(ChunkFaultTest, CorruptChunkFileIsDetectedAndRepaired) {
  ChunkId id{77, 1};
  std::string content(200000, 'c');
  for (size_t k = 0; k < content.size(); k += 97) content[k] = 'a' + k % 26;
  ASSERT_OK(WriteWithRetry(id, 0, content));
  // Flip bytes in n3's file of the chunk.
  std::string found = ChunkFile(2, id);
  ASSERT_FALSE(found.empty());
  Overwrite(found, 150000, "\xff\xfe\xfd");
  EXPECT_THAT(Read(2, id), StatusIs(absl::StatusCode::kDataLoss));
  // Other replicas are unaffected.
  EXPECT_EQ(*Read(0, id), content);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  absl::StatusOr<std::string> r;
  do {
    absl::SleepFor(absl::Milliseconds(20));
    r = Read(2, id);
  } while (!r.ok() && absl::Now() < deadline);
  ASSERT_OK(r.status());
  EXPECT_EQ(*r, content);
}

TEST_F(ChunkFaultTest, ScrubRepairsCorruptionNobodyReads) {
  ChunkId id{78, 0};
  std::string content(300000, 's');
  for (size_t k = 0; k < content.size(); k += 89) content[k] = 'a' + k % 26;
  ASSERT_OK(WriteWithRetry(id, 0, content));
  ASSERT_OK(WriteWithRetry(ChunkId{78, 1}, 0, content));  // a healthy one
  // Damage n3's copy while it is down, then restart it scrubbing every
  // second. Nobody reads the chunk: the scrub alone must find and repair it.
  ASSERT_OK(procs_[2]->Stop(SIGTERM).status());
  std::string file = ChunkFile(2, id);
  ASSERT_FALSE(file.empty());
  Overwrite(file, 123456, std::string("\x00\x01\x02\x03", 4));
  Spawn(2, {"--scrub_interval_s=1", "--scrub_mib_per_s=64"});
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline &&
         procs_[2]->Log().find("repaired " + id.ToString()) ==
             std::string::npos) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  std::string log = procs_[2]->Log();
  EXPECT_NE(log.find("scrub found " + id.ToString() + " corrupt"),
            std::string::npos)
      << log;
  ASSERT_NE(log.find("repaired " + id.ToString()), std::string::npos) << log;
  // Only the damaged chunk was repaired.
  EXPECT_EQ(log.find("repaired " + ChunkId{78, 1}.ToString()),
            std::string::npos);
  absl::StatusOr<v1::FetchChunkResponse> f = Fetch(2, id);
  ASSERT_OK(f.status());
  EXPECT_EQ(f->content(), content);
  EXPECT_EQ(*Read(2, id), content);
}

TEST_F(ChunkFaultTest, ServerRemovedFromItsChainDropsItsStrayChunks) {
  ChunkId id{79, 0};
  const std::string content(100000, 'r');
  ASSERT_OK(WriteWithRetry(id, 0, content));
  ASSERT_OK(procs_[2]->Stop(SIGTERM).status());
  Spawn(2, {"--stray_grace_s=1"});
  ASSERT_TRUE(cluster_->WaitForTable([&](const v1::ChainTable&) {
    return cluster_->registrations("n3") >= 2;
  }));
  // Still a member: its copy stays.
  absl::SleepFor(absl::Milliseconds(2500));
  EXPECT_FALSE(
      testing::ChunkFilesOf(dir_.Join("n3"), id.inode, id.index).empty());
  // Replaced (as by a spare while it was away): after the grace its copy
  // goes; the members keep theirs.
  cluster_->SetChain(1, {{"n1", kServing}, {"n2", kServing}});
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline &&
         !testing::ChunkFilesOf(dir_.Join("n3"), id.inode, id.index).empty()) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(
      testing::ChunkFilesOf(dir_.Join("n3"), id.inode, id.index).empty())
      << procs_[2]->Log();
  EXPECT_NE(procs_[2]->Log().find("stray chunks"), std::string::npos);
  for (size_t i : {0, 1}) {
    absl::StatusOr<std::string> r = Read(i, id);
    ASSERT_OK(r.status()) << kNodes[i];
    EXPECT_EQ(*r, content);
  }
}

TEST_F(ChunkFaultTest, SigtermShutsDownCleanly) {
  ASSERT_OK(WriteWithRetry({5, 0}, 0, "x"));
  absl::StatusOr<int> status = procs_[2]->Stop(SIGTERM);
  ASSERT_OK(status.status());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << *status;
}

}  // namespace
}  // namespace dsec::fs
