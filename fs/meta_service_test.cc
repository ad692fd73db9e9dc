// FsMetaService and FsClusterService through a real in-process MetaServer
// and gRPC stubs: errno across the wire, hostile input, paging, sealing and
// chunk GC against a fake FsChunkService.
#include "fs/meta_service.h"

#include <errno.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "dsec/v1/fs_service.grpc.pb.h"
#include "fs/fs_error.h"
#include "fs/fs_rpc.h"
#include "fs/meta_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::fs {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// Records RemoveInodes calls; fails the first `fail_first` of them.
class FakeChunkService final : public v1::FsChunkService::Service {
 public:
  explicit FakeChunkService(int fail_first) : fail_left_(fail_first) {}

  grpc::Status RemoveInodes(grpc::ServerContext* context,
                            const v1::RemoveInodesRequest* request,
                            v1::RemoveInodesResponse* response) override {
    absl::MutexLock lock(&mu_);
    ++calls_;
    if (fail_left_ > 0) {
      --fail_left_;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "injected");
    }
    for (uint64_t ino : request->inodes()) removed_.push_back(ino);
    response->set_removed(request->inodes_size());
    return grpc::Status::OK;
  }

  std::vector<uint64_t> removed() {
    absl::MutexLock lock(&mu_);
    return removed_;
  }
  int calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

 private:
  absl::Mutex mu_;
  int fail_left_ ABSL_GUARDED_BY(mu_);
  int calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<uint64_t> removed_ ABSL_GUARDED_BY(mu_);
};

class MetaServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(); }

  void StartServer() {
    MetaServerOptions options;
    options.data_dir = tmp_.Join("meta-data");
    options.store.sync_writes = false;
    options.cluster.num_chains = 2;
    options.cluster.replication = 1;
    // Fake chunk servers never heartbeat; keep them alive.
    options.cluster.heartbeat_interval = absl::Hours(1);
    options.gc_interval = absl::Milliseconds(20);
    auto server = MetaServer::Create(options);
    ASSERT_THAT(server, IsOk());
    server_ = std::move(*server);
    auto channel = MakeFsChannel(absl::StrCat("127.0.0.1:", server_->port()));
    meta_ = v1::FsMetaService::NewStub(channel);
    cluster_ = v1::FsClusterService::NewStub(channel);
  }

  void TearDown() override {
    if (server_ == nullptr) return;
    auto report = server_->StoreForTesting()->Fsck();
    ASSERT_THAT(report, IsOk());
    EXPECT_THAT(report->errors, IsEmpty());
  }

  template <typename Stub, typename Req, typename Resp>
  absl::StatusOr<Resp> Call(Stub* stub,
                            grpc::Status (Stub::*method)(grpc::ClientContext*,
                                                         const Req&, Resp*),
                            const Req& request) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    Resp response;
    absl::Status s = FromGrpcFsStatus(
        context, (stub->*method)(&context, request, &response));
    if (!s.ok()) return s;
    return response;
  }
#define META(Method, request) \
  Call(meta_.get(), &v1::FsMetaService::Stub::Method, (request))
#define CLUSTER(Method, request) \
  Call(cluster_.get(), &v1::FsClusterService::Stub::Method, (request))

  absl::StatusOr<v1::Inode> Mkdir(uint64_t parent, const std::string& name) {
    v1::MkdirRequest r;
    r.set_parent(parent);
    r.set_name(name);
    r.set_mode(0755);
    ASSIGN_OR_RETURN(v1::InodeReply reply, META(Mkdir, r));
    return reply.inode();
  }
  absl::StatusOr<v1::Inode> Create(uint64_t parent, const std::string& name,
                                   bool open = false) {
    v1::CreateRequest r;
    r.set_parent(parent);
    r.set_name(name);
    r.set_mode(0644);
    r.set_open(open);
    ASSIGN_OR_RETURN(v1::InodeReply reply, META(Create, r));
    return reply.inode();
  }
  absl::StatusOr<v1::Inode> Lookup(uint64_t parent, const std::string& name) {
    v1::LookupRequest r;
    r.set_parent(parent);
    r.set_name(name);
    ASSIGN_OR_RETURN(v1::InodeReply reply, META(Lookup, r));
    return reply.inode();
  }
  absl::StatusOr<v1::Inode> GetAttr(uint64_t ino) {
    v1::GetAttrRequest r;
    r.set_ino(ino);
    ASSIGN_OR_RETURN(v1::InodeReply reply, META(GetAttr, r));
    return reply.inode();
  }
  absl::StatusOr<v1::Inode> Resolve(const std::string& path) {
    v1::ResolvePathRequest r;
    r.set_path(path);
    ASSIGN_OR_RETURN(v1::InodeReply reply, META(ResolvePath, r));
    return reply.inode();
  }
  absl::Status Unlink(uint64_t parent, const std::string& name) {
    v1::RemoveRequest r;
    r.set_parent(parent);
    r.set_name(name);
    return META(Unlink, r).status();
  }
  absl::Status Rmdir(uint64_t parent, const std::string& name) {
    v1::RemoveRequest r;
    r.set_parent(parent);
    r.set_name(name);
    return META(Rmdir, r).status();
  }
  absl::Status Rename(uint64_t op, const std::string& on, uint64_t np,
                      const std::string& nn, uint32_t flags = 0) {
    v1::RenameRequest r;
    r.set_old_parent(op);
    r.set_old_name(on);
    r.set_new_parent(np);
    r.set_new_name(nn);
    r.set_flags(flags);
    return META(Rename, r).status();
  }
  absl::StatusOr<v1::ReadDirResponse> ReadDir(uint64_t ino,
                                              const std::string& cursor,
                                              uint32_t max) {
    v1::ReadDirRequest r;
    r.set_ino(ino);
    r.set_cursor(cursor);
    r.set_max_entries(max);
    return META(ReadDir, r);
  }
  absl::Status Close(uint64_t ino) {
    v1::CloseRequest r;
    r.set_ino(ino);
    return META(Close, r).status();
  }

  dsec::testing::TempDir tmp_;
  std::unique_ptr<MetaServer> server_;
  std::unique_ptr<v1::FsMetaService::Stub> meta_;
  std::unique_ptr<v1::FsClusterService::Stub> cluster_;
};

TEST_F(MetaServiceTest, EveryNamespaceRpcRoundTrips) {
  ASSERT_OK_AND_ASSIGN(v1::Inode d, Mkdir(kRootIno, "d"));
  EXPECT_EQ(d.type(), v1::INODE_TYPE_DIRECTORY);
  ASSERT_OK_AND_ASSIGN(v1::Inode f, Create(d.id(), "f"));
  ASSERT_OK_AND_ASSIGN(v1::Inode looked, Lookup(d.id(), "f"));
  EXPECT_EQ(looked.id(), f.id());
  ASSERT_OK_AND_ASSIGN(v1::Inode attr, GetAttr(f.id()));
  EXPECT_EQ(attr.type(), v1::INODE_TYPE_FILE);
  ASSERT_OK_AND_ASSIGN(v1::Inode resolved, Resolve("/d/f"));
  EXPECT_EQ(resolved.id(), f.id());

  v1::SetAttrRequest setattr;
  setattr.set_ino(f.id());
  setattr.set_mask(kSetMode | kSetSize);
  setattr.set_mode(0600);
  setattr.set_size(77);
  ASSERT_OK_AND_ASSIGN(v1::InodeReply set, META(SetAttr, setattr));
  EXPECT_EQ(set.inode().mode(), 0600u);
  EXPECT_EQ(set.inode().size(), 77u);

  v1::LinkRequest link;
  link.set_ino(f.id());
  link.set_new_parent(kRootIno);
  link.set_new_name("hard");
  ASSERT_OK_AND_ASSIGN(v1::InodeReply linked, META(Link, link));
  EXPECT_EQ(linked.inode().nlink(), 2u);

  v1::SymlinkRequest symlink;
  symlink.set_parent(kRootIno);
  symlink.set_name("sym");
  symlink.set_target("d/f");
  ASSERT_OK_AND_ASSIGN(v1::InodeReply sym, META(Symlink, symlink));
  v1::ReadlinkRequest readlink;
  readlink.set_ino(sym.inode().id());
  ASSERT_OK_AND_ASSIGN(v1::ReadlinkResponse target, META(Readlink, readlink));
  EXPECT_EQ(target.target(), "d/f");

  v1::OpenRequest open;
  open.set_ino(f.id());
  open.set_for_write(true);
  ASSERT_OK(META(Open, open).status());
  v1::FsyncRequest fsync;
  fsync.set_ino(f.id());
  fsync.set_size(100);
  ASSERT_OK(META(Fsync, fsync).status());
  v1::CloseRequest close;
  close.set_ino(f.id());
  close.set_has_size(true);
  close.set_size(200);
  ASSERT_OK(META(Close, close).status());
  ASSERT_OK_AND_ASSIGN(attr, GetAttr(f.id()));
  EXPECT_EQ(attr.size(), 200u);

  ASSERT_OK(Rename(d.id(), "f", kRootIno, "g"));
  ASSERT_OK_AND_ASSIGN(v1::ReadDirResponse root, ReadDir(kRootIno, "", 0));
  std::vector<std::string> names;
  for (const auto& e : root.entries()) names.push_back(e.name());
  EXPECT_THAT(names, ElementsAre("d", "g", "hard", "sym"));
  EXPECT_FALSE(root.has_more());

  v1::StatFsRequest statfs;
  ASSERT_OK_AND_ASSIGN(v1::StatFsResponse stat, META(StatFs, statfs));
  EXPECT_EQ(stat.stat().inodes(), 4u);  // root, d, f, sym
  EXPECT_EQ(stat.stat().total_bytes(), 200u);

  ASSERT_OK(Unlink(kRootIno, "g"));
  ASSERT_OK(Unlink(kRootIno, "hard"));
  ASSERT_OK(Unlink(kRootIno, "sym"));
  ASSERT_OK(Rmdir(kRootIno, "d"));
  EXPECT_EQ(ErrnoOf(GetAttr(f.id()).status()), ENOENT);
}

TEST_F(MetaServiceTest, ErrnoSurvivesTheWire) {
  ASSERT_OK_AND_ASSIGN(v1::Inode d, Mkdir(kRootIno, "d"));
  ASSERT_OK_AND_ASSIGN(v1::Inode f, Create(d.id(), "f"));
  EXPECT_EQ(ErrnoOf(Lookup(kRootIno, "missing").status()), ENOENT);
  EXPECT_EQ(ErrnoOf(Create(d.id(), "f").status()), EEXIST);
  EXPECT_EQ(ErrnoOf(Mkdir(kRootIno, "d").status()), EEXIST);
  EXPECT_EQ(ErrnoOf(Rmdir(kRootIno, "d")), ENOTEMPTY);
  EXPECT_EQ(ErrnoOf(Unlink(kRootIno, "d")), EISDIR);
  EXPECT_EQ(ErrnoOf(Rmdir(d.id(), "f")), ENOTDIR);
  EXPECT_EQ(ErrnoOf(Lookup(f.id(), "x").status()), ENOTDIR);
  EXPECT_EQ(ErrnoOf(Resolve("/d/f/x").status()), ENOTDIR);
  EXPECT_EQ(ErrnoOf(GetAttr(0).status()), EINVAL);
  EXPECT_EQ(ErrnoOf(Create(kRootIno, std::string(256, 'n')).status()),
            ENAMETOOLONG);
  EXPECT_EQ(ErrnoOf(Close(f.id())), EBADF);

  v1::SealRequest seal;
  seal.set_ino(f.id());
  ASSERT_OK(META(Seal, seal).status());
  EXPECT_EQ(ErrnoOf(Unlink(d.id(), "f")), EPERM);
  v1::SetAttrRequest setattr;
  setattr.set_ino(f.id());
  setattr.set_mask(kSetSize);
  EXPECT_THAT(
      META(SetAttr, setattr),
      StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("sealed")));
  EXPECT_EQ(ErrnoOf(META(SetAttr, setattr).status()), EPERM);
}

TEST_F(MetaServiceTest, HostileNamesAreRefusedWithReasons) {
  const std::vector<std::string> bad = {
      "", ".", "..", "a/b", std::string("a\0b", 3), std::string(256, 'x')};
  for (const std::string& name : bad) {
    SCOPED_TRACE(absl::StrCat("name of ", name.size(), " bytes"));
    int want = name.size() > kMaxNameBytes ? ENAMETOOLONG : EINVAL;
    EXPECT_THAT(
        Create(kRootIno, name),
        StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("name")));
    EXPECT_EQ(ErrnoOf(Create(kRootIno, name).status()), want);
    EXPECT_EQ(ErrnoOf(Mkdir(kRootIno, name).status()), want);
    EXPECT_EQ(ErrnoOf(Lookup(kRootIno, name).status()), want);
    EXPECT_EQ(ErrnoOf(Unlink(kRootIno, name)), want);
    EXPECT_EQ(ErrnoOf(Rmdir(kRootIno, name)), want);
    EXPECT_EQ(ErrnoOf(Rename(kRootIno, name, kRootIno, "ok")), want);
    EXPECT_EQ(ErrnoOf(Rename(kRootIno, "ok", kRootIno, name)), want);
  }
  // The server is still up and the namespace untouched.
  ASSERT_OK_AND_ASSIGN(v1::ReadDirResponse root, ReadDir(kRootIno, "", 0));
  EXPECT_THAT(root.entries(), IsEmpty());
}

TEST_F(MetaServiceTest, ResolvePathRefusesTraversalAndOddSyntax) {
  ASSERT_OK_AND_ASSIGN(v1::Inode a, Mkdir(kRootIno, "a"));
  ASSERT_OK_AND_ASSIGN(v1::Inode b, Mkdir(a.id(), "b"));
  ASSERT_OK_AND_ASSIGN(v1::Inode root, Resolve("/"));
  EXPECT_EQ(root.id(), kRootIno);
  ASSERT_OK_AND_ASSIGN(v1::Inode got, Resolve("/a/b"));
  EXPECT_EQ(got.id(), b.id());
  ASSERT_OK_AND_ASSIGN(got, Resolve("/a/b/"));  // One trailing slash.
  EXPECT_EQ(got.id(), b.id());

  for (const std::string& path :
       {std::string("/a/../b"), std::string("a/b"), std::string("//"),
        std::string("/a//b"), std::string(""), std::string("/./a"),
        std::string("/a/."), std::string("/a/b//"), std::string("/a\0b", 4)}) {
    SCOPED_TRACE(path);
    EXPECT_THAT(Resolve(path), StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_EQ(ErrnoOf(Resolve(path).status()), EINVAL);
  }
  std::string longest = "/" + std::string(200, 'x');
  while (longest.size() <= kMaxPathBytes)
    longest += "/" + std::string(200, 'x');
  EXPECT_EQ(ErrnoOf(Resolve(longest).status()), ENAMETOOLONG);
  EXPECT_EQ(ErrnoOf(Resolve("/" + std::string(300, 'y')).status()),
            ENAMETOOLONG);
  EXPECT_EQ(ErrnoOf(Resolve("/a/missing").status()), ENOENT);
}

TEST_F(MetaServiceTest, UnknownInodesAreEnoentOrEinval) {
  for (uint64_t ino :
       {uint64_t{424242}, std::numeric_limits<uint64_t>::max()}) {
    SCOPED_TRACE(ino);
    EXPECT_EQ(ErrnoOf(GetAttr(ino).status()), ENOENT);
    EXPECT_EQ(ErrnoOf(Lookup(ino, "x").status()), ENOENT);
    EXPECT_EQ(ErrnoOf(Create(ino, "x").status()), ENOENT);
    EXPECT_EQ(ErrnoOf(ReadDir(ino, "", 10).status()), ENOENT);
    v1::OpenRequest open;
    open.set_ino(ino);
    EXPECT_EQ(ErrnoOf(META(Open, open).status()), ENOENT);
    v1::ReadlinkRequest readlink;
    readlink.set_ino(ino);
    EXPECT_EQ(ErrnoOf(META(Readlink, readlink).status()), ENOENT);
    v1::SealRequest seal;
    seal.set_ino(ino);
    seal.set_recursive(true);
    EXPECT_EQ(ErrnoOf(META(Seal, seal).status()), ENOENT);
    EXPECT_EQ(ErrnoOf(Close(ino)), EBADF);
  }
  v1::LinkRequest link;
  link.set_ino(0);
  link.set_new_parent(kRootIno);
  link.set_new_name("x");
  EXPECT_THAT(META(Link, link), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("ino is 0")));
  v1::SetAttrRequest setattr;
  setattr.set_ino(kRootIno);
  setattr.set_mask(1u << 30);
  EXPECT_THAT(META(SetAttr, setattr),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("mask")));
}

TEST_F(MetaServiceTest, ReadDirPagesAndBoundsMaxEntries) {
  ASSERT_OK_AND_ASSIGN(v1::Inode d, Mkdir(kRootIno, "d"));
  std::vector<std::string> want;
  for (int i = 0; i < 25; ++i) {
    std::string name = absl::StrCat("e", 100 + i);
    ASSERT_OK(Create(d.id(), name).status());
    want.push_back(name);
  }
  std::vector<std::string> got;
  std::string cursor;
  int pages = 0;
  for (;;) {
    ASSERT_OK_AND_ASSIGN(v1::ReadDirResponse page, ReadDir(d.id(), cursor, 7));
    ++pages;
    for (const auto& e : page.entries()) got.push_back(e.name());
    if (!page.has_more()) break;
    cursor = page.entries().rbegin()->name();
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(pages, 4);
  EXPECT_THAT(
      ReadDir(d.id(), "", 10001),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_entries")));
  EXPECT_EQ(
      ErrnoOf(
          ReadDir(d.id(), "", std::numeric_limits<uint32_t>::max()).status()),
      EINVAL);
  EXPECT_EQ(ErrnoOf(ReadDir(d.id(), "a/b", 10).status()), EINVAL);
  ASSERT_OK_AND_ASSIGN(v1::ReadDirResponse all, ReadDir(d.id(), "", 0));
  EXPECT_EQ(all.entries_size(), 25);
  ASSERT_OK_AND_ASSIGN(v1::Inode f, Lookup(d.id(), "e100"));
  EXPECT_EQ(ErrnoOf(ReadDir(f.id(), "", 10).status()), ENOTDIR);
}

TEST_F(MetaServiceTest, SymlinkTargetsAndRenameLoopsAreRefused) {
  v1::SymlinkRequest symlink;
  symlink.set_parent(kRootIno);
  symlink.set_name("l");
  symlink.set_target(std::string(kMaxSymlinkBytes + 1, 't'));
  EXPECT_EQ(ErrnoOf(META(Symlink, symlink).status()), ENAMETOOLONG);
  symlink.set_target("");
  EXPECT_EQ(ErrnoOf(META(Symlink, symlink).status()), ENOENT);
  symlink.set_target(std::string(kMaxSymlinkBytes, 't'));
  EXPECT_OK(META(Symlink, symlink).status());

  ASSERT_OK_AND_ASSIGN(v1::Inode a, Mkdir(kRootIno, "a"));
  ASSERT_OK_AND_ASSIGN(v1::Inode b, Mkdir(a.id(), "b"));
  ASSERT_OK_AND_ASSIGN(v1::Inode c, Mkdir(b.id(), "c"));
  EXPECT_EQ(ErrnoOf(Rename(kRootIno, "a", c.id(), "a")), EINVAL);
  EXPECT_EQ(ErrnoOf(Rename(a.id(), "b", b.id(), "b")), EINVAL);
  EXPECT_EQ(ErrnoOf(Rename(kRootIno, "a", kRootIno, "z", 1u << 7)), EINVAL);
  EXPECT_EQ(ErrnoOf(Rename(kRootIno, "a", kRootIno, "l", kRenameNoReplace)),
            EEXIST);
  ASSERT_OK_AND_ASSIGN(v1::Inode still, Resolve("/a/b/c"));
  EXPECT_EQ(still.id(), c.id());
}

TEST_F(MetaServiceTest, CreateWithOpenHoldsAHandle) {
  ASSERT_OK_AND_ASSIGN(v1::Inode f, Create(kRootIno, "f", /*open=*/true));
  EXPECT_EQ(server_->StoreForTesting()->OpenCountForTesting(f.id()), 1);
  // Unlinked while open: lives until the close.
  ASSERT_OK(Unlink(kRootIno, "f"));
  EXPECT_OK(GetAttr(f.id()).status());
  ASSERT_OK(Close(f.id()));
  EXPECT_EQ(ErrnoOf(GetAttr(f.id()).status()), ENOENT);
  EXPECT_EQ(ErrnoOf(Close(f.id())), EBADF);
}

TEST_F(MetaServiceTest, ReadDirWithInodesCarriesEachEntrysInode) {
  ASSERT_OK_AND_ASSIGN(v1::Inode d, Mkdir(kRootIno, "d"));
  for (int i = 0; i < 5; ++i) {
    ASSERT_OK(Create(d.id(), absl::StrCat("f", i)).status());
  }
  ASSERT_OK(Mkdir(d.id(), "sub").status());
  v1::ReadDirRequest r;
  r.set_ino(d.id());
  r.set_max_entries(4);
  r.set_with_inodes(true);
  std::vector<v1::DirEntry> all;
  while (true) {
    ASSERT_OK_AND_ASSIGN(v1::ReadDirResponse page, META(ReadDir, r));
    for (const v1::DirEntry& e : page.entries()) all.push_back(e);
    if (!page.has_more()) break;
    r.set_cursor(all.back().name());
  }
  ASSERT_EQ(all.size(), 6u);
  for (const v1::DirEntry& e : all) {
    ASSERT_TRUE(e.has_inode()) << e.name();
    ASSERT_OK_AND_ASSIGN(v1::Inode now, GetAttr(e.ino()));
    EXPECT_EQ(e.inode().SerializeAsString(), now.SerializeAsString());
  }
  // Without the flag, names only.
  ASSERT_OK_AND_ASSIGN(v1::ReadDirResponse plain, ReadDir(d.id(), "", 10));
  for (const v1::DirEntry& e : plain.entries()) EXPECT_FALSE(e.has_inode());
}

TEST_F(MetaServiceTest, LookupMissOkIsAnEmptyReply) {
  ASSERT_OK_AND_ASSIGN(v1::Inode d, Mkdir(kRootIno, "d"));
  v1::LookupRequest r;
  r.set_parent(d.id());
  r.set_name("absent");
  EXPECT_EQ(ErrnoOf(META(Lookup, r).status()), ENOENT);
  r.set_missing_ok(true);
  ASSERT_OK_AND_ASSIGN(v1::InodeReply reply, META(Lookup, r));
  EXPECT_FALSE(reply.has_inode());
  // Only a missing entry: other errors stay errors.
  ASSERT_OK_AND_ASSIGN(v1::Inode f, Create(kRootIno, "f"));
  r.set_parent(f.id());
  EXPECT_EQ(ErrnoOf(META(Lookup, r).status()), ENOTDIR);
  r.set_parent(d.id());
  r.set_name("../x");
  EXPECT_EQ(ErrnoOf(META(Lookup, r).status()), EINVAL);
  ASSERT_OK(Create(d.id(), "present").status());
  r.set_name("present");
  ASSERT_OK_AND_ASSIGN(reply, META(Lookup, r));
  EXPECT_TRUE(reply.has_inode());
}

TEST_F(MetaServiceTest, NamespaceRepliesCarryTheChangedDirectories) {
  ASSERT_OK_AND_ASSIGN(v1::Inode a, Mkdir(kRootIno, "a"));
  ASSERT_OK_AND_ASSIGN(v1::Inode b, Mkdir(kRootIno, "b"));
  auto only = [](const google::protobuf::RepeatedPtrField<v1::Inode>& dirs,
                 uint64_t id) -> std::optional<v1::Inode> {
    for (const v1::Inode& d : dirs) {
      if (d.id() == id) return d;
    }
    return std::nullopt;
  };
  v1::CreateRequest create;
  create.set_parent(a.id());
  create.set_name("f");
  create.set_mode(0644);
  ASSERT_OK_AND_ASSIGN(v1::InodeReply created, META(Create, create));
  ASSERT_EQ(created.dirs_size(), 1);
  ASSERT_OK_AND_ASSIGN(v1::Inode a_now, GetAttr(a.id()));
  EXPECT_EQ(created.dirs(0).SerializeAsString(), a_now.SerializeAsString());
  EXPECT_GE(a_now.mtime_ns(), a.mtime_ns());

  v1::MkdirRequest mkdir;
  mkdir.set_parent(a.id());
  mkdir.set_name("sub");
  mkdir.set_mode(0755);
  ASSERT_OK_AND_ASSIGN(v1::InodeReply made, META(Mkdir, mkdir));
  std::optional<v1::Inode> parent = only(made.dirs(), a.id());
  ASSERT_TRUE(parent.has_value());
  EXPECT_EQ(parent->nlink(), 3u);  // ".", "a" and sub's ".."

  v1::RenameRequest rename;
  rename.set_old_parent(a.id());
  rename.set_old_name("sub");
  rename.set_new_parent(b.id());
  rename.set_new_name("sub");
  ASSERT_OK_AND_ASSIGN(v1::NamespaceReply renamed, META(Rename, rename));
  ASSERT_TRUE(only(renamed.dirs(), a.id()).has_value());
  ASSERT_TRUE(only(renamed.dirs(), b.id()).has_value());
  EXPECT_EQ(only(renamed.dirs(), a.id())->nlink(), 2u);
  EXPECT_EQ(only(renamed.dirs(), b.id())->nlink(), 3u);
  ASSERT_OK_AND_ASSIGN(v1::Inode b_now, GetAttr(b.id()));
  EXPECT_EQ(only(renamed.dirs(), b.id())->SerializeAsString(),
            b_now.SerializeAsString());

  v1::RemoveRequest unlink;
  unlink.set_parent(a.id());
  unlink.set_name("f");
  ASSERT_OK_AND_ASSIGN(v1::NamespaceReply removed, META(Unlink, unlink));
  ASSERT_EQ(removed.dirs_size(), 1);
  ASSERT_OK_AND_ASSIGN(a_now, GetAttr(a.id()));
  EXPECT_EQ(removed.dirs(0).SerializeAsString(), a_now.SerializeAsString());

  // Gone now: a second unlink fails.
  EXPECT_EQ(ErrnoOf(META(Unlink, unlink).status()), ENOENT);
}

TEST_F(MetaServiceTest, CloseManyClosesHandlesAndCountsUnknownOnes) {
  ASSERT_OK_AND_ASSIGN(v1::Inode f, Create(kRootIno, "f", /*open=*/true));
  ASSERT_OK_AND_ASSIGN(v1::Inode g, Create(kRootIno, "g", /*open=*/true));
  v1::OpenRequest open;
  open.set_ino(g.id());
  ASSERT_OK(META(Open, open).status());  // g: two handles
  ASSERT_OK(Unlink(kRootIno, "f"));      // f lives on as an orphan
  v1::CloseManyRequest r;
  r.add_inos(f.id());
  r.add_inos(g.id());
  r.add_inos(g.id());
  r.add_inos(g.id());  // one more than g has
  ASSERT_OK_AND_ASSIGN(v1::CloseManyResponse reply, META(CloseMany, r));
  EXPECT_EQ(reply.unknown(), 1u);
  EXPECT_EQ(server_->StoreForTesting()->OpenCountForTesting(g.id()), 0);
  // The orphan's last handle went: reclaimed.
  EXPECT_EQ(ErrnoOf(GetAttr(f.id()).status()), ENOENT);
  EXPECT_OK(GetAttr(g.id()).status());

  // Bad input: nothing is closed.
  ASSERT_OK(META(Open, open).status());
  v1::CloseManyRequest bad;
  bad.add_inos(g.id());
  bad.add_inos(0);
  EXPECT_EQ(ErrnoOf(META(CloseMany, bad).status()), EINVAL);
  EXPECT_EQ(server_->StoreForTesting()->OpenCountForTesting(g.id()), 1);
  v1::CloseManyRequest huge;
  for (int i = 0; i <= kMaxCloseMany; ++i) huge.add_inos(g.id());
  absl::Status s = META(CloseMany, huge).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(server_->StoreForTesting()->OpenCountForTesting(g.id()), 1);
}

TEST_F(MetaServiceTest, RecursiveSealFreezesATree) {
  ASSERT_OK_AND_ASSIGN(v1::Inode d, Mkdir(kRootIno, "d"));
  ASSERT_OK_AND_ASSIGN(v1::Inode e, Mkdir(d.id(), "e"));
  ASSERT_OK_AND_ASSIGN(v1::Inode f, Create(d.id(), "f"));
  ASSERT_OK_AND_ASSIGN(v1::Inode g, Create(e.id(), "g"));
  for (int i = 0; i < 1100; ++i) {  // More than one ReadDir page.
    ASSERT_OK(Create(e.id(), absl::StrCat("many", i)).status());
  }
  v1::SealRequest seal;
  seal.set_ino(d.id());
  seal.set_recursive(true);
  ASSERT_OK_AND_ASSIGN(v1::SealResponse sealed, META(Seal, seal));
  EXPECT_EQ(sealed.sealed(), 4u + 1100u);

  for (uint64_t ino : {d.id(), e.id(), f.id(), g.id()}) {
    ASSERT_OK_AND_ASSIGN(v1::Inode inode, GetAttr(ino));
    EXPECT_TRUE(inode.sealed()) << ino;
  }
  ASSERT_OK_AND_ASSIGN(v1::Inode last, Lookup(e.id(), "many1099"));
  EXPECT_TRUE(last.sealed());
  EXPECT_EQ(ErrnoOf(Create(d.id(), "new").status()), EPERM);
  EXPECT_EQ(ErrnoOf(Create(e.id(), "new").status()), EPERM);
  EXPECT_EQ(ErrnoOf(Unlink(e.id(), "g")), EPERM);
  EXPECT_EQ(ErrnoOf(Rename(d.id(), "f", kRootIno, "f")), EPERM);
  v1::OpenRequest open;
  open.set_ino(g.id());
  open.set_for_write(true);
  EXPECT_EQ(ErrnoOf(META(Open, open).status()), EPERM);
  v1::SetAttrRequest setattr;
  setattr.set_ino(f.id());
  setattr.set_mask(kSetSize);
  setattr.set_size(1);
  EXPECT_EQ(ErrnoOf(META(SetAttr, setattr).status()), EPERM);
  // Reads still work; sealing again is idempotent.
  open.set_for_write(false);
  ASSERT_OK(META(Open, open).status());
  ASSERT_OK(Close(g.id()));
  EXPECT_OK(META(Seal, seal).status());
}

// Waits (polling, bounded) until `done` holds.
template <typename Fn>
bool Eventually(Fn done) {
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return done();
}

class FakeChunkServer {
 public:
  explicit FakeChunkServer(int fail_first) : service_(fail_first) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
  }
  ~FakeChunkServer() { server_->Shutdown(); }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  FakeChunkService& service() { return service_; }

 private:
  FakeChunkService service_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

TEST_F(MetaServiceTest, UnlinkedFilesChunksAreRemovedOnChunkServers) {
  FakeChunkServer chunk(/*fail_first=*/1);
  v1::RegisterChunkServerRequest reg;
  reg.set_node_id("chunk-1");
  reg.set_address(chunk.address());
  ASSERT_OK_AND_ASSIGN(v1::RegisterChunkServerResponse registered,
                       CLUSTER(RegisterChunkServer, reg));
  ASSERT_EQ(registered.table().chains_size(), 2);
  EXPECT_EQ(registered.table().chains(0).members_size(), 1);

  ASSERT_OK_AND_ASSIGN(v1::Inode f, Create(kRootIno, "f"));
  ASSERT_OK(Create(kRootIno, "g").status());
  ASSERT_OK(Unlink(kRootIno, "f"));
  ASSERT_OK(Rename(kRootIno, "g", kRootIno, "h"));  // No deletion.
  MetaStore* store = server_->StoreForTesting();
  // The first call fails; the mark stays and the next pass retries.
  ASSERT_TRUE(Eventually([&] {
    auto pending = store->ListPendingGc(10);
    return !chunk.service().removed().empty() && pending.ok() &&
           pending->empty();
  })) << "calls: "
      << chunk.service().calls();
  EXPECT_THAT(chunk.service().removed(), ElementsAre(f.id()));
  EXPECT_GE(chunk.service().calls(), 2);
}

TEST_F(MetaServiceTest, GcKeepsMarksWhileAChunkServerFails) {
  std::string dead_address;
  {
    FakeChunkServer chunk(0);
    dead_address = chunk.address();
  }
  v1::RegisterChunkServerRequest reg;
  reg.set_node_id("gone");
  reg.set_address(dead_address);
  ASSERT_OK(CLUSTER(RegisterChunkServer, reg).status());
  ASSERT_OK_AND_ASSIGN(v1::Inode f, Create(kRootIno, "f"));
  ASSERT_OK(Unlink(kRootIno, "f"));
  // The mark survives failed passes (whether or not any ran yet).
  absl::SleepFor(absl::Milliseconds(200));
  ASSERT_OK_AND_ASSIGN(std::vector<uint64_t> pending,
                       server_->StoreForTesting()->ListPendingGc(10));
  EXPECT_THAT(pending, ElementsAre(f.id()));
}

TEST_F(MetaServiceTest, ClusterServiceRegistersHeartbeatsAndReportsUsage) {
  v1::RegisterChunkServerRequest reg;
  EXPECT_THAT(CLUSTER(RegisterChunkServer, reg),
              StatusIs(absl::StatusCode::kInvalidArgument));
  reg.set_node_id("c1");
  reg.set_address("127.0.0.1:1");
  ASSERT_OK_AND_ASSIGN(v1::RegisterChunkServerResponse registered,
                       CLUSTER(RegisterChunkServer, reg));
  EXPECT_EQ(registered.heartbeat_interval_ms(), 3600 * 1000);
  const uint64_t version = registered.table().version();

  v1::ChunkHeartbeatRequest beat;
  beat.set_node_id("c1");
  beat.set_table_version(version);
  beat.set_used_bytes(4321);
  ASSERT_OK_AND_ASSIGN(v1::ChunkHeartbeatResponse hb, CLUSTER(Heartbeat, beat));
  EXPECT_FALSE(hb.reregister());
  EXPECT_FALSE(hb.has_table());
  beat.set_node_id("nobody");
  ASSERT_OK_AND_ASSIGN(hb, CLUSTER(Heartbeat, beat));
  EXPECT_TRUE(hb.reregister());

  v1::StatFsRequest statfs;
  ASSERT_OK_AND_ASSIGN(v1::StatFsResponse stat, META(StatFs, statfs));
  EXPECT_EQ(stat.chunk_bytes_used(), 4321u);

  v1::GetChainTableRequest get;
  ASSERT_OK_AND_ASSIGN(v1::GetChainTableResponse table,
                       CLUSTER(GetChainTable, get));
  EXPECT_EQ(table.table().version(), version);
  get.set_known_version(version);
  ASSERT_OK_AND_ASSIGN(table, CLUSTER(GetChainTable, get));
  EXPECT_FALSE(table.has_table());

  v1::ReportSyncDoneRequest done;
  done.set_node_id("c1");
  done.set_chain_id(0);
  done.set_chain_version(12345);
  // c1 is SERVING already (fresh chain): OK. An unknown chain: NOT_FOUND.
  EXPECT_OK(CLUSTER(ReportSyncDone, done).status());
  done.set_chain_id(77);
  EXPECT_THAT(CLUSTER(ReportSyncDone, done),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(MetaServiceTest, NamespaceAndChainTableSurviveARestart) {
  ASSERT_OK_AND_ASSIGN(v1::Inode d, Mkdir(kRootIno, "d"));
  ASSERT_OK(Create(d.id(), "f").status());
  v1::RegisterChunkServerRequest reg;
  reg.set_node_id("c1");
  reg.set_address("127.0.0.1:1");
  ASSERT_OK(CLUSTER(RegisterChunkServer, reg).status());
  server_->Shutdown();
  server_.reset();
  StartServer();
  EXPECT_OK(Resolve("/d/f").status());
  v1::GetChainTableRequest get;
  ASSERT_OK_AND_ASSIGN(v1::GetChainTableResponse table,
                       CLUSTER(GetChainTable, get));
  ASSERT_EQ(table.table().servers_size(), 1);
  EXPECT_EQ(table.table().servers(0).node_id(), "c1");
  EXPECT_EQ(table.table().chains(0).members(0).node_id(), "c1");
}

}  // namespace
}  // namespace dsec::fs
