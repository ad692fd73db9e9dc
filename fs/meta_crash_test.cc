// Crash safety of the dsec-meta binary: a stream of creates and renames over
// gRPC, SIGKILL mid-stream, restart on the same data dir. Every acknowledged
// operation must be there, and the store must pass Fsck.
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/testing/status_matchers.h"
#include "common/testing/subprocess.h"
#include "common/testing/test_util.h"
#include "dsec/v1/fs_service.grpc.pb.h"
#include "fs/fs_error.h"
#include "fs/fs_rpc.h"
#include "fs/meta_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::fs {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::Subprocess;
using ::testing::IsEmpty;

class MetaClient {
 public:
  explicit MetaClient(const std::string& address)
      : stub_(v1::FsMetaService::NewStub(MakeFsChannel(address))) {}

  absl::StatusOr<v1::Inode> Mkdir(uint64_t parent, const std::string& name) {
    v1::MkdirRequest r;
    r.set_parent(parent);
    r.set_name(name);
    r.set_mode(0755);
    v1::InodeReply reply;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    RETURN_IF_ERROR(FromGrpcFsStatus(ctx, stub_->Mkdir(&ctx, r, &reply)));
    return reply.inode();
  }
  absl::StatusOr<v1::Inode> Create(uint64_t parent, const std::string& name) {
    v1::CreateRequest r;
    r.set_parent(parent);
    r.set_name(name);
    r.set_mode(0644);
    v1::InodeReply reply;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    RETURN_IF_ERROR(FromGrpcFsStatus(ctx, stub_->Create(&ctx, r, &reply)));
    return reply.inode();
  }
  absl::Status Rename(uint64_t dir, const std::string& from,
                      const std::string& to) {
    v1::RenameRequest r;
    r.set_old_parent(dir);
    r.set_old_name(from);
    r.set_new_parent(dir);
    r.set_new_name(to);
    v1::NamespaceReply reply;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    return FromGrpcFsStatus(ctx, stub_->Rename(&ctx, r, &reply));
  }
  absl::StatusOr<v1::Inode> Lookup(uint64_t parent, const std::string& name) {
    v1::LookupRequest r;
    r.set_parent(parent);
    r.set_name(name);
    v1::InodeReply reply;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    RETURN_IF_ERROR(FromGrpcFsStatus(ctx, stub_->Lookup(&ctx, r, &reply)));
    return reply.inode();
  }

 private:
  static void SetDeadline(grpc::ClientContext& ctx) {
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(10));
  }
  std::unique_ptr<v1::FsMetaService::Stub> stub_;
};

// Polls GetAttr(root) at `address` until the server answers (bounded). A
// fresh channel per attempt: one that failed to connect backs off for a
// while before trying again.
bool WaitReady(const std::string& address) {
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    auto stub = v1::FsMetaService::NewStub(MakeFsChannel(address));
    v1::GetAttrRequest r;
    r.set_ino(kRootIno);
    v1::InodeReply reply;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(500));
    if (stub->GetAttr(&ctx, r, &reply).ok()) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

// What the client was told about file number i.
struct FileState {
  bool created = false;         // Create acknowledged as "f<i>".
  bool renamed = false;         // Rename f<i> -> g<i> acknowledged.
  bool rename_unknown = false;  // Rename in flight at the kill.
  uint64_t ino = 0;
};

class MetaCrashTest : public ::testing::Test {
 protected:
  std::unique_ptr<Subprocess> StartMeta(int* port) {
    auto picked = dsec::testing::PickFreeLoopbackPort();
    EXPECT_THAT(picked, IsOk());
    if (!picked.ok()) return nullptr;
    *port = *picked;
    auto p =
        Subprocess::Start({dsec::testing::BinDir() + "/dsec-meta", "--listen",
                           absl::StrCat("127.0.0.1:", *port), "--data_dir",
                           tmp_.Join("data"), "--heartbeat_ms", "200"},
                          tmp_.Join("meta.log"));
    EXPECT_THAT(p, IsOk());
    return p.ok() ? std::move(*p) : nullptr;
  }

  dsec::testing::TempDir tmp_;
};

TEST_F(MetaCrashTest, SigkillMidStreamKeepsEveryAcknowledgedOperation) {
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    int port = 0;
    std::unique_ptr<Subprocess> meta = StartMeta(&port);
    ASSERT_NE(meta, nullptr);
    const std::string address = absl::StrCat("127.0.0.1:", port);
    ASSERT_TRUE(WaitReady(address)) << meta->Log();
    MetaClient client(address);
    ASSERT_OK_AND_ASSIGN(v1::Inode dir,
                         client.Mkdir(kRootIno, absl::StrCat("r", round)));

    // The stream: create f<i>; after every second create, rename the
    // previous file to g<i-1>. Stops at the first failure (the kill).
    absl::Mutex mu;
    std::vector<FileState> files;  // Guarded by mu.
    std::atomic<int> acked{0};
    std::thread stream([&] {
      for (int i = 0;; ++i) {
        {
          absl::MutexLock lock(&mu);
          files.emplace_back();
        }
        auto created = client.Create(dir.id(), absl::StrCat("f", i));
        if (!created.ok()) return;
        {
          absl::MutexLock lock(&mu);
          files[i].created = true;
          files[i].ino = created->id();
        }
        ++acked;
        if (i % 2 == 1) {
          {
            absl::MutexLock lock(&mu);
            files[i - 1].rename_unknown = true;
          }
          absl::Status s = client.Rename(dir.id(), absl::StrCat("f", i - 1),
                                         absl::StrCat("g", i - 1));
          if (!s.ok()) return;
          absl::MutexLock lock(&mu);
          files[i - 1].rename_unknown = false;
          files[i - 1].renamed = true;
          ++acked;
        }
      }
    });
    const int target = 50 + 25 * round;
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (acked.load() < target && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
    ASSERT_OK_AND_ASSIGN(int wstatus, meta->Stop(SIGKILL));
    stream.join();
    EXPECT_TRUE(WIFSIGNALED(wstatus)) << meta->Log();
    ASSERT_GE(acked.load(), target) << meta->Log();

    // Restart on the same data dir: every acknowledged operation is there.
    meta = StartMeta(&port);
    ASSERT_NE(meta, nullptr);
    const std::string new_address = absl::StrCat("127.0.0.1:", port);
    ASSERT_TRUE(WaitReady(new_address)) << meta->Log();
    MetaClient again(new_address);
    int checked = 0;
    {
      absl::MutexLock lock(&mu);
      for (size_t i = 0; i < files.size(); ++i) {
        const FileState& f = files[i];
        if (!f.created) continue;
        SCOPED_TRACE(absl::StrCat("file ", i));
        auto as_f = again.Lookup(dir.id(), absl::StrCat("f", i));
        auto as_g = again.Lookup(dir.id(), absl::StrCat("g", i));
        if (f.renamed) {
          ASSERT_THAT(as_g, IsOk());
          EXPECT_EQ(as_g->id(), f.ino);
          EXPECT_EQ(ErrnoOf(as_f.status()), ENOENT);
        } else if (f.rename_unknown) {
          EXPECT_NE(as_f.ok(), as_g.ok());  // Exactly one name.
        } else {
          ASSERT_THAT(as_f, IsOk());
          EXPECT_EQ(as_f->id(), f.ino);
        }
        ++checked;
      }
    }
    EXPECT_GT(checked, 0);

    // A clean stop, then the store itself must be consistent.
    ASSERT_OK_AND_ASSIGN(wstatus, meta->Stop(SIGTERM));
    EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << meta->Log();
    MetaStoreOptions options;
    options.dir = tmp_.Join("data/meta");
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<MetaStore> store,
                         MetaStore::Create(options));
    ASSERT_OK_AND_ASSIGN(FsckReport report, store->Fsck());
    EXPECT_THAT(report.errors, IsEmpty()) << absl::StrJoin(report.errors, "\n");
    EXPECT_EQ(report.orphans, 0u);
  }
}

}  // namespace
}  // namespace dsec::fs
