// dsec-fs end to end under faults, with the real meta server and chunk
// servers as processes (FsTestCluster): a chunk server SIGKILLed in the
// middle of a write stream (no acknowledged write lost, reads keep working,
// it returns and re-syncs), a chunk file corrupted on disk (detected,
// served from another replica, repaired), the meta server SIGKILLed
// (restarted with the namespace intact), and hostile requests straight at a
// chunk server.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/testing/status_matchers.h"
#include "fs/chain_table.h"
#include "fs/fs_rpc.h"
#include "fs/testing/fs_cluster.h"
#include "gtest/gtest.h"

namespace dsec::fs {
namespace {

using ::dsec::fs::testing::FsTestCluster;

constexpr uint32_t kChunk = 256 << 10;

std::string Pattern(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  std::mt19937 rng(seed);
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::unique_ptr<FsTestCluster> StartCluster() {
  auto c = FsTestCluster::Start({.chunk_size = kChunk, .heartbeat_ms = 100});
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

// Reads chunk (ino, index) from server `address` directly.
absl::StatusOr<std::string> ReadReplica(const std::string& address,
                                        uint64_t ino, uint32_t index) {
  auto stub = v1::FsChunkService::NewStub(MakeFsChannel(address));
  v1::ChunkReadRequest request;
  request.mutable_chunk()->set_inode(ino);
  request.mutable_chunk()->set_index(index);
  request.set_length(kChunk);
  v1::ChunkReadResponse reply;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  absl::Status status =
      FromGrpcFsStatus(context, stub->Read(&context, request, &reply));
  if (!status.ok()) return status;
  return reply.data();
}

TEST(FsFaultTest, ChunkServerKilledMidWriteStreamLosesNoAcknowledgedWrite) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  FsClient& client = cluster->client();
  ASSERT_OK(client.MkdirAll("/stream", 0755));

  // The writer: files of 1-5 chunks, recorded once WriteFile returns OK.
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::map<std::string, std::string> acknowledged;
  std::atomic<int> failures{0};
  std::thread writer([&] {
    for (int i = 0; !stop.load(); ++i) {
      std::string path = absl::StrCat("/stream/f", i);
      std::string data = Pattern(kChunk * (1 + i % 5) - i % 7, i);
      absl::Status s = client.WriteFile(path, data);
      if (s.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        acknowledged[path] = std::move(data);
      } else {
        ++failures;
      }
    }
  });
  absl::SleepFor(absl::Milliseconds(800));
  ASSERT_OK(cluster->KillChunk(1));
  absl::SleepFor(absl::Milliseconds(1500));
  // Reads keep working while the server is down.
  {
    std::map<std::string, std::string> copy;
    {
      std::lock_guard<std::mutex> lock(mu);
      copy = acknowledged;
    }
    ASSERT_FALSE(copy.empty());
    for (const auto& [path, data] : copy) {
      ASSERT_OK_AND_ASSIGN(std::string back, client.ReadFile(path));
      ASSERT_TRUE(back == data) << path;
    }
  }
  ASSERT_OK(cluster->WaitOffline(cluster->chunk_node_id(1), absl::Seconds(20)))
      << cluster->Logs();
  // It returns on the same data and re-syncs while writes continue.
  ASSERT_OK(cluster->RestartChunk(1));
  ASSERT_OK(cluster->WaitForChains(3, absl::Seconds(60))) << cluster->Logs();
  absl::SleepFor(absl::Milliseconds(500));
  stop = true;
  writer.join();
  EXPECT_EQ(failures.load(), 0) << "writes failed instead of being retried";

  // Every acknowledged file is intact, and every replica holds the same
  // bytes for every chunk.
  ASSERT_OK_AND_ASSIGN(v1::ChainTable table,
                       cluster->NewClient().value()->Table());
  ASSERT_EQ(table.servers_size(), 3);
  for (const auto& [path, data] : acknowledged) {
    ASSERT_OK_AND_ASSIGN(std::string back, client.ReadFile(path));
    EXPECT_TRUE(back == data) << path;
    ASSERT_OK_AND_ASSIGN(v1::Inode inode, client.Stat(path));
    for (uint32_t index = 0; index * uint64_t{kChunk} < data.size(); ++index) {
      std::string want = data.substr(index * uint64_t{kChunk}, kChunk);
      for (const v1::ChunkServerInfo& server : table.servers()) {
        absl::StatusOr<std::string> replica =
            ReadReplica(server.address(), inode.id(), index);
        ASSERT_TRUE(replica.ok())
            << path << " chunk " << index << " on " << server.node_id() << ": "
            << replica.status();
        const std::string& got = *replica;
        EXPECT_TRUE(got == want)
            << path << " chunk " << index << " on " << server.node_id() << ": "
            << got.size() << " bytes, want " << want.size()
            << ", first difference at "
            << std::mismatch(got.begin(), got.end(), want.begin(), want.end())
                       .first -
                   got.begin();
      }
    }
  }
  std::cerr << acknowledged.size() << " files acknowledged\n";
}

// With a spare server, a dead one's chains heal without it: after
// replace_after the spare joins each of them, copies every chunk and serves;
// all three live members then hold identical bytes.
TEST(FsFaultTest, SpareServerReplacesADeadOneAndHoldsEveryChunk) {
  auto c = FsTestCluster::Start({.chunk_servers = 4,
                                 .chunk_size = kChunk,
                                 .heartbeat_ms = 100,
                                 .replace_after_ms = 1000});
  ASSERT_OK(c.status());
  FsTestCluster& cluster = **c;
  FsClient& client = cluster.client();
  ASSERT_OK(client.MkdirAll("/heal", 0755));
  std::map<std::string, std::string> files;
  for (int i = 0; i < 24; ++i) {
    std::string path = absl::StrCat("/heal/f", i);
    files[path] = Pattern(kChunk * (1 + i % 3) + i, 1000 + i);
    ASSERT_OK(client.WriteFile(path, files[path]));
  }
  const std::string dead = cluster.chunk_node_id(0);
  ASSERT_OK(cluster.KillChunk(0));
  // Replaced everywhere, then synced and serving: 3 SERVING members per
  // chain.
  auto member_of_any = [&](const v1::ChainTable& t) {
    for (const v1::Chain& chain : t.chains()) {
      for (const v1::ChainMember& m : chain.members()) {
        if (m.node_id() == dead) return true;
      }
    }
    return false;
  };
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (true) {
    // A new client each time: a client caches the table it fetched.
    auto probe = cluster.NewClient();
    ASSERT_OK(probe.status());
    absl::StatusOr<v1::ChainTable> t = (*probe)->Table();
    if (t.ok() && !member_of_any(*t)) break;
    ASSERT_LT(absl::Now(), deadline) << "never replaced\n" << cluster.Logs();
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_OK(cluster.WaitForChains(3, absl::Seconds(60))) << cluster.Logs();
  ASSERT_OK_AND_ASSIGN(v1::ChainTable table,
                       cluster.NewClient().value()->Table());
  std::map<std::string, std::string> address;
  for (const auto& s : table.servers()) address[s.node_id()] = s.address();
  for (const v1::Chain& chain : table.chains()) {
    for (const v1::ChainMember& m : chain.members()) {
      EXPECT_NE(m.node_id(), dead) << "chain " << chain.id();
    }
  }
  for (const auto& [path, data] : files) {
    ASSERT_OK_AND_ASSIGN(std::string back, client.ReadFile(path));
    EXPECT_TRUE(back == data) << path;
    ASSERT_OK_AND_ASSIGN(v1::Inode inode, client.Stat(path));
    for (uint32_t index = 0; index * uint64_t{kChunk} < data.size(); ++index) {
      const std::string want = data.substr(index * uint64_t{kChunk}, kChunk);
      ASSERT_OK_AND_ASSIGN(const v1::Chain* chain,
                           ChainFor(table, inode.id(), index));
      ASSERT_EQ(chain->members_size(), 3);
      for (const v1::ChainMember& m : chain->members()) {
        absl::StatusOr<std::string> replica =
            ReadReplica(address[m.node_id()], inode.id(), index);
        ASSERT_TRUE(replica.ok()) << path << " chunk " << index << " on "
                                  << m.node_id() << ": " << replica.status();
        EXPECT_TRUE(*replica == want)
            << path << " chunk " << index << " on " << m.node_id();
      }
    }
  }
  // Writes keep flowing through the healed chains.
  ASSERT_OK(client.WriteFile("/heal/after", Pattern(3 * kChunk, 7)));
  ASSERT_OK_AND_ASSIGN(std::string after, client.ReadFile("/heal/after"));
  EXPECT_TRUE(after == Pattern(3 * kChunk, 7));
}

TEST(FsFaultTest, CorruptChunkFileIsDetectedServedElsewhereAndRepaired) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  FsClient& client = cluster->client();
  std::string data = Pattern(kChunk, 7);
  ASSERT_OK(client.WriteFile("/victim", data));
  ASSERT_OK_AND_ASSIGN(v1::Inode inode, client.Stat("/victim"));
  // Flip bytes in every chunk file of this inode on server 0.
  int corrupted = 0;
  const std::string prefix = absl::StrFormat("%016x-", inode.id());
  for (const auto& e : std::filesystem::recursive_directory_iterator(
           cluster->chunk_dir(0) + "/chunks")) {
    if (!e.is_regular_file() ||
        e.path().filename().string().rfind(prefix, 0) != 0) {
      continue;
    }
    std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.write("CORRUPTION", 10);
    ++corrupted;
  }
  ASSERT_EQ(corrupted, 1);
  ASSERT_OK_AND_ASSIGN(v1::ChainTable table, client.Table());
  ASSERT_OK_AND_ASSIGN(std::string address,
                       AddressOf(table, cluster->chunk_node_id(0)));
  absl::StatusOr<std::string> direct = ReadReplica(address, inode.id(), 0);
  EXPECT_TRUE(absl::IsDataLoss(direct.status())) << direct.status();
  // The client gets the right bytes from another replica, whichever it asks
  // first.
  for (int i = 0; i < 6; ++i) {
    ASSERT_OK_AND_ASSIGN(std::string back, client.ReadFile("/victim"));
    ASSERT_EQ(back, data);
  }
  // Server 0 repairs itself from a replica.
  absl::StatusOr<std::string> repaired;
  for (int i = 0; i < 100; ++i) {
    repaired = ReadReplica(address, inode.id(), 0);
    if (repaired.ok()) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_OK(repaired.status());
  EXPECT_EQ(*repaired, data);
}

TEST(FsFaultTest, MetaServerKilledRestartsWithNamespaceIntact) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  FsClient& client = cluster->client();
  std::map<std::string, std::string> files;
  for (int d = 0; d < 5; ++d) {
    ASSERT_OK(client.MkdirAll(absl::StrCat("/tree/d", d, "/sub"), 0755));
    for (int f = 0; f < 10; ++f) {
      std::string path = absl::StrCat("/tree/d", d, "/sub/f", f);
      files[path] = Pattern(1000 + d * 100 + f, d * 10 + f);
      ASSERT_OK(client.WriteFile(path, files[path]));
    }
  }
  ASSERT_OK(client.Rename(client.Stat("/tree").value().id(), "d0",
                          client.Stat("/tree").value().id(), "renamed"));
  // A file open for writing across the restart.
  ASSERT_OK_AND_ASSIGN(v1::Inode open_file,
                       client.Create(kRootIno, "open", 0644, 0, 0, true));
  ASSERT_OK(client.Write(FileRef::Of(open_file), 0, "written before"));
  // And one unlinked while open: it must outlive the restart for its
  // client (the orphan grace), then go.
  ASSERT_OK_AND_ASSIGN(v1::Inode scratch,
                       client.Create(kRootIno, "scratch", 0644, 0, 0, true));
  ASSERT_OK(client.Write(FileRef::Of(scratch), 0, "scratch data"));
  ASSERT_OK(client.Unlink(kRootIno, "scratch"));
  ASSERT_OK(cluster->KillMeta());
  // While it is down, namespace calls fail (after retries) as UNAVAILABLE.
  auto impatient =
      cluster->NewClient({.retry_budget = absl::Milliseconds(200)}).value();
  EXPECT_TRUE(absl::IsUnavailable(impatient->Stat("/tree").status()));
  ASSERT_OK(cluster->RestartMeta());
  ASSERT_OK(cluster->WaitForChains(3, absl::Seconds(30))) << cluster->Logs();
  for (const auto& [path, data] : files) {
    std::string p = path;
    if (p.rfind("/tree/d0/", 0) == 0) p = "/tree/renamed/" + p.substr(9);
    ASSERT_OK_AND_ASSIGN(std::string back, client.ReadFile(p));
    EXPECT_EQ(back, data) << p;
  }
  EXPECT_TRUE(absl::IsNotFound(client.Stat("/tree/d0").status()));
  // The restarted server forgot the handle; fsync and close still commit.
  ASSERT_OK(client.Fsync(open_file.id(), 14));
  ASSERT_OK(client.Close(open_file.id(), 14));
  EXPECT_EQ(client.ReadFile("/open").value(), "written before");
  ASSERT_OK(client.Fsync(scratch.id(), 12));
  ASSERT_OK_AND_ASSIGN(std::string scratch_back,
                       client.Read(FileRef::Of(scratch), 12, 0, 100));
  EXPECT_EQ(scratch_back, "scratch data");
  ASSERT_OK(client.Close(scratch.id(), 12));
  EXPECT_TRUE(absl::IsNotFound(client.Stat("/scratch").status()));
  // And it keeps working.
  ASSERT_OK(client.WriteFile("/after", "after restart"));
  EXPECT_EQ(client.ReadFile("/after").value(), "after restart");
}

TEST(FsFaultTest, HostileChunkRequestsGetClearErrors) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  ASSERT_OK_AND_ASSIGN(v1::ChainTable table, cluster->client().Table());
  const v1::Chain& chain = table.chains(0);
  ASSERT_OK_AND_ASSIGN(std::string head,
                       AddressOf(table, WriteOrder(chain)[0]));
  auto stub = v1::FsChunkService::NewStub(MakeFsChannel(head));
  auto call = [&](auto method, auto& request, auto* reply) {
    grpc::ClientContext context;
    return FromGrpcFsStatus(context,
                            ((*stub).*method)(&context, request, reply));
  };
  v1::ChunkWriteResponse wreply;
  v1::ChunkWriteRequest write;
  write.mutable_chain()->set_chain_id(chain.id());
  write.mutable_chain()->set_chain_version(chain.version());
  // Inode 0.
  write.mutable_chunk()->set_inode(0);
  write.set_data("x");
  EXPECT_TRUE(absl::IsInvalidArgument(
      call(&v1::FsChunkService::Stub::Write, write, &wreply)));
  // Offset past the chunk size, and data larger than a chunk.
  write.mutable_chunk()->set_inode(42);
  write.set_offset(uint64_t{1} << 40);
  absl::Status s = call(&v1::FsChunkService::Stub::Write, write, &wreply);
  EXPECT_TRUE(absl::IsInvalidArgument(s) || absl::IsAborted(s)) << s;
  write.set_offset(0);
  write.set_data(std::string(kChunk + 1, 'x'));
  s = call(&v1::FsChunkService::Stub::Write, write, &wreply);
  EXPECT_TRUE(absl::IsInvalidArgument(s) || absl::IsAborted(s)) << s;
  // Unknown chain, stale chain version.
  write.set_data("x");
  write.mutable_chain()->set_chain_id(999);
  EXPECT_FALSE(call(&v1::FsChunkService::Stub::Write, write, &wreply).ok());
  write.mutable_chain()->set_chain_id(chain.id());
  write.mutable_chain()->set_chain_version(chain.version() + 100);
  EXPECT_FALSE(call(&v1::FsChunkService::Stub::Write, write, &wreply).ok());
  // Unknown chunk ids read as NOT_FOUND (a hole).
  v1::ChunkReadRequest read;
  read.mutable_chunk()->set_inode(777777);
  read.set_length(10);
  v1::ChunkReadResponse rreply;
  s = call(&v1::FsChunkService::Stub::Read, read, &rreply);
  EXPECT_TRUE(absl::IsNotFound(s) || absl::IsUnavailable(s)) << s;
  // The server is still fine.
  ASSERT_OK(cluster->client().WriteFile("/ok", "fine"));
  EXPECT_EQ(cluster->client().ReadFile("/ok").value(), "fine");
}

}  // namespace
}  // namespace dsec::fs
