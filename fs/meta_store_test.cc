#include "fs/meta_store.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "fs/fs_error.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rocksdb/db.h"

namespace dsec::fs {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kCrashDirEnv[] = "DSEC_FS_CRASH_CHILD_DIR";

std::unique_ptr<MetaStore> OpenStore(
    const std::string& dir,
    absl::Duration orphan_grace = absl::ZeroDuration()) {
  MetaStoreOptions options;
  options.dir = dir;
  options.orphan_grace = orphan_grace;
  options.sync_writes = false;
  auto store = MetaStore::Create(options);
  EXPECT_THAT(store, IsOk());
  return store.ok() ? std::move(*store) : nullptr;
}

void ExpectConsistent(MetaStore& store) {
  auto report = store.Fsck();
  ASSERT_THAT(report, IsOk());
  EXPECT_THAT(report->errors, IsEmpty()) << absl::StrJoin(report->errors, "\n");
}

class MetaStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { store_ = OpenStore(tmp_.Join("meta")); }
  void TearDown() override {
    if (store_) ExpectConsistent(*store_);
  }

  uint64_t MkdirOk(uint64_t parent, const std::string& name) {
    auto inode = store_->Mkdir(parent, name, 0755, 1000, 1000);
    EXPECT_THAT(inode, IsOk());
    return inode.ok() ? inode->id() : 0;
  }
  uint64_t CreateOk(uint64_t parent, const std::string& name) {
    auto inode = store_->Create(parent, name, 0644, 1000, 1000);
    EXPECT_THAT(inode, IsOk());
    return inode.ok() ? inode->id() : 0;
  }
  uint32_t Nlink(uint64_t ino) {
    auto inode = store_->GetAttr(ino);
    EXPECT_THAT(inode, IsOk());
    return inode.ok() ? inode->nlink() : 0;
  }

  dsec::testing::TempDir tmp_;
  std::unique_ptr<MetaStore> store_;
};

TEST_F(MetaStoreTest, RootExistsAndSurvivesReopen) {
  ASSERT_OK_AND_ASSIGN(v1::Inode root, store_->GetAttr(kRootIno));
  EXPECT_EQ(root.type(), v1::INODE_TYPE_DIRECTORY);
  EXPECT_EQ(root.nlink(), 2u);
  uint64_t dir = MkdirOk(kRootIno, "a");
  uint64_t file = CreateOk(dir, "f");
  store_.reset();
  store_ = OpenStore(tmp_.Join("meta"));
  ASSERT_OK_AND_ASSIGN(v1::Inode found, store_->Lookup(dir, "f"));
  EXPECT_EQ(found.id(), file);
  EXPECT_EQ(found.chunk_size(), 4u << 20);
  // New ids never collide with old ones after a reopen.
  EXPECT_GT(CreateOk(dir, "g"), file);
}

TEST_F(MetaStoreTest, StatFsCountersFollowEveryChange) {
  auto expect = [&](uint64_t inodes, uint64_t bytes, const char* when) {
    ASSERT_OK_AND_ASSIGN(v1::StatFs st, store_->StatFs());
    EXPECT_EQ(st.inodes(), inodes) << when;
    EXPECT_EQ(st.total_bytes(), bytes) << when;
  };
  expect(1, 0, "root only");
  uint64_t d = MkdirOk(kRootIno, "d");
  uint64_t f = CreateOk(d, "f");
  uint64_t g = CreateOk(d, "g");
  ASSERT_OK(store_->Symlink(d, "l", "f", 0, 0).status());
  expect(5, 4 * 0, "created");  // a symlink's length is not file data
  SetAttrArgs size;
  size.mask = kSetSize;
  size.size = 1000;
  ASSERT_OK(store_->SetAttr(f, size).status());
  ASSERT_OK(store_->Open(g, /*for_write=*/true).status());
  ASSERT_OK(store_->Close(g, 300));
  expect(5, 1300, "sized");
  size.size = 100;
  ASSERT_OK(store_->SetAttr(f, size).status());
  expect(5, 400, "truncated");
  ASSERT_OK(store_->Link(f, kRootIno, "f2").status());
  ASSERT_OK(store_->Unlink(d, "f"));
  expect(5, 400, "one of two links gone");
  // Unlinked while open: counted until the last close.
  ASSERT_OK(store_->Open(g, /*for_write=*/false).status());
  ASSERT_OK(store_->Unlink(d, "g"));
  expect(5, 400, "orphan");
  ASSERT_OK(store_->Close(g, std::nullopt));
  expect(4, 100, "orphan reclaimed");
  ASSERT_OK(store_->Unlink(kRootIno, "f2"));
  ASSERT_OK(store_->Unlink(d, "l"));
  ASSERT_OK(store_->Rmdir(kRootIno, "d"));
  expect(1, 0, "all gone");
  // Counted again from the data after a reopen.
  CreateOk(kRootIno, "h");
  ASSERT_OK(store_->SetAttr(CreateOk(kRootIno, "i"), size).status());
  store_.reset();
  store_ = OpenStore(tmp_.Join("meta"));
  expect(3, 100, "reopened");
  (void)d;
}

TEST_F(MetaStoreTest, InvalidNamesAreRefusedWithTheProblemNamed) {
  struct Case {
    std::string name;
    int err;
    std::string why;
  } cases[] = {
      {"", EINVAL, "empty"},
      {".", EINVAL, "reserved"},
      {"..", EINVAL, "reserved"},
      {"a/b", EINVAL, "'/'"},
      {std::string("a\0b", 3), EINVAL, "NUL"},
      {std::string(256, 'x'), ENAMETOOLONG, "longer than 255"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.why);
    absl::Status s = store_->Create(kRootIno, c.name, 0644, 0, 0).status();
    EXPECT_THAT(s,
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.why)));
    EXPECT_EQ(ErrnoOf(s), c.err);
    EXPECT_EQ(ErrnoOf(store_->Mkdir(kRootIno, c.name, 0755, 0, 0).status()),
              c.err);
    EXPECT_EQ(ErrnoOf(store_->Lookup(kRootIno, c.name).status()), c.err);
    EXPECT_EQ(ErrnoOf(store_->Rename(kRootIno, "x", kRootIno, c.name)), c.err);
  }
  EXPECT_THAT(store_->Create(kRootIno, std::string(255, 'x'), 0644, 0, 0),
              IsOk());
}

TEST_F(MetaStoreTest, CreateIsExclusiveAndLookupMissingIsEnoent) {
  uint64_t f = CreateOk(kRootIno, "f");
  EXPECT_EQ(ErrnoOf(store_->Create(kRootIno, "f", 0644, 0, 0).status()),
            EEXIST);
  EXPECT_EQ(ErrnoOf(store_->Mkdir(kRootIno, "f", 0755, 0, 0).status()), EEXIST);
  EXPECT_THAT(store_->Lookup(kRootIno, "nope"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(ErrnoOf(store_->Lookup(f, "x").status()), ENOTDIR);
  EXPECT_EQ(ErrnoOf(store_->Create(f, "x", 0644, 0, 0).status()), ENOTDIR);
  EXPECT_EQ(ErrnoOf(store_->Create(999999, "x", 0644, 0, 0).status()), ENOENT);
}

TEST_F(MetaStoreTest, MkdirRmdirKeepParentLinkCounts) {
  uint64_t a = MkdirOk(kRootIno, "a");
  EXPECT_EQ(Nlink(kRootIno), 3u);
  MkdirOk(a, "b");
  CreateOk(a, "f");
  EXPECT_EQ(Nlink(a), 3u);
  absl::Status s = store_->Rmdir(kRootIno, "a");
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kFailedPrecondition,
                          HasSubstr("ENOTEMPTY")));
  EXPECT_EQ(ErrnoOf(s), ENOTEMPTY);
  EXPECT_EQ(ErrnoOf(store_->Rmdir(a, "f")), ENOTDIR);
  EXPECT_EQ(ErrnoOf(store_->Unlink(a, "b")), EISDIR);
  EXPECT_OK(store_->Rmdir(a, "b"));
  EXPECT_OK(store_->Unlink(a, "f"));
  EXPECT_OK(store_->Rmdir(kRootIno, "a"));
  EXPECT_EQ(Nlink(kRootIno), 2u);
  EXPECT_EQ(ErrnoOf(store_->GetAttr(a).status()), ENOENT);
  EXPECT_EQ(ErrnoOf(store_->Rmdir(kRootIno, "a")), ENOENT);
}

TEST_F(MetaStoreTest, HardLinksCountNames) {
  uint64_t f = CreateOk(kRootIno, "f");
  uint64_t d = MkdirOk(kRootIno, "d");
  ASSERT_OK_AND_ASSIGN(v1::Inode linked, store_->Link(f, d, "g"));
  EXPECT_EQ(linked.nlink(), 2u);
  EXPECT_OK(store_->Link(f, kRootIno, "h").status());
  EXPECT_EQ(Nlink(f), 3u);
  EXPECT_EQ(ErrnoOf(store_->Link(f, d, "g").status()), EEXIST);
  EXPECT_EQ(ErrnoOf(store_->Link(d, kRootIno, "dd").status()), EPERM);
  EXPECT_OK(store_->Unlink(kRootIno, "f"));
  EXPECT_OK(store_->Unlink(d, "g"));
  EXPECT_EQ(Nlink(f), 1u);
  ASSERT_OK_AND_ASSIGN(v1::Inode via_h, store_->Lookup(kRootIno, "h"));
  EXPECT_EQ(via_h.id(), f);
  EXPECT_OK(store_->Unlink(kRootIno, "h"));
  EXPECT_EQ(ErrnoOf(store_->GetAttr(f).status()), ENOENT);
}

TEST_F(MetaStoreTest, SymlinkAndReadlink) {
  ASSERT_OK_AND_ASSIGN(v1::Inode l,
                       store_->Symlink(kRootIno, "l", "../target", 5, 6));
  EXPECT_EQ(l.type(), v1::INODE_TYPE_SYMLINK);
  EXPECT_EQ(l.size(), 9u);
  ASSERT_OK_AND_ASSIGN(std::string target, store_->Readlink(l.id()));
  EXPECT_EQ(target, "../target");
  EXPECT_EQ(ErrnoOf(store_->Readlink(kRootIno).status()), EINVAL);
  EXPECT_EQ(ErrnoOf(store_->Symlink(kRootIno, "m", "", 0, 0).status()), ENOENT);
  EXPECT_EQ(ErrnoOf(store_->Symlink(kRootIno, "m", std::string(5000, 'x'), 0, 0)
                        .status()),
            ENAMETOOLONG);
  EXPECT_OK(store_->Unlink(kRootIno, "l"));
}

TEST_F(MetaStoreTest, SetAttrTruncatesUpAndDown) {
  uint64_t f = CreateOk(kRootIno, "f");
  SetAttrArgs args;
  args.mask = kSetSize;
  args.size = 10 << 20;
  ASSERT_OK_AND_ASSIGN(v1::Inode up, store_->SetAttr(f, args));
  EXPECT_EQ(up.size(), 10u << 20);
  args.size = 3;
  ASSERT_OK_AND_ASSIGN(v1::Inode down, store_->SetAttr(f, args));
  EXPECT_EQ(down.size(), 3u);
  args = {};
  args.mask = kSetMode | kSetUid | kSetGid | kSetAtime | kSetMtime;
  args.mode = 0100600;
  args.uid = 7;
  args.gid = 8;
  args.atime_ns = 111;
  args.mtime_ns = 222;
  ASSERT_OK_AND_ASSIGN(v1::Inode attrs, store_->SetAttr(f, args));
  EXPECT_EQ(attrs.mode(), 0600u);
  EXPECT_EQ(attrs.uid(), 7u);
  EXPECT_EQ(attrs.gid(), 8u);
  EXPECT_EQ(attrs.atime_ns(), 111);
  EXPECT_EQ(attrs.mtime_ns(), 222);
  EXPECT_EQ(attrs.size(), 3u);
  args = {};
  args.mask = kSetSize;
  EXPECT_EQ(ErrnoOf(store_->SetAttr(kRootIno, args).status()), EISDIR);
  ASSERT_OK_AND_ASSIGN(v1::StatFs statfs, store_->StatFs());
  EXPECT_EQ(statfs.inodes(), 2u);
  EXPECT_EQ(statfs.total_bytes(), 3u);
}

TEST_F(MetaStoreTest, RenameFileWithinAndAcrossDirectories) {
  uint64_t f = CreateOk(kRootIno, "f");
  uint64_t d = MkdirOk(kRootIno, "d");
  EXPECT_OK(store_->Rename(kRootIno, "f", kRootIno, "g"));
  EXPECT_EQ(ErrnoOf(store_->Lookup(kRootIno, "f").status()), ENOENT);
  EXPECT_OK(store_->Rename(kRootIno, "g", d, "h"));
  ASSERT_OK_AND_ASSIGN(v1::Inode h, store_->Lookup(d, "h"));
  EXPECT_EQ(h.id(), f);
  EXPECT_OK(store_->Rename(d, "h", d, "h"));  // Same name: no-op.
  EXPECT_EQ(ErrnoOf(store_->Rename(d, "nope", d, "x")), ENOENT);
}

TEST_F(MetaStoreTest, RenameOverExistingFileReplacesIt) {
  uint64_t a = CreateOk(kRootIno, "a");
  uint64_t b = CreateOk(kRootIno, "b");
  EXPECT_OK(store_->Rename(kRootIno, "a", kRootIno, "b"));
  ASSERT_OK_AND_ASSIGN(v1::Inode now_b, store_->Lookup(kRootIno, "b"));
  EXPECT_EQ(now_b.id(), a);
  EXPECT_EQ(ErrnoOf(store_->GetAttr(b).status()), ENOENT);
  // Rename onto another link of the same file does nothing.
  EXPECT_OK(store_->Link(a, kRootIno, "c").status());
  EXPECT_OK(store_->Rename(kRootIno, "b", kRootIno, "c"));
  EXPECT_OK(store_->Lookup(kRootIno, "b").status());
  EXPECT_EQ(Nlink(a), 2u);
}

TEST_F(MetaStoreTest, RenameDirectoryReplacementRules) {
  uint64_t d1 = MkdirOk(kRootIno, "d1");
  uint64_t d2 = MkdirOk(kRootIno, "d2");
  uint64_t full = MkdirOk(kRootIno, "full");
  CreateOk(full, "x");
  CreateOk(kRootIno, "file");
  // Directory over non-empty directory.
  absl::Status s = store_->Rename(kRootIno, "d1", kRootIno, "full");
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kFailedPrecondition,
                          HasSubstr("ENOTEMPTY")));
  EXPECT_EQ(ErrnoOf(s), ENOTEMPTY);
  // Directory over file, file over directory.
  EXPECT_EQ(ErrnoOf(store_->Rename(kRootIno, "d1", kRootIno, "file")), ENOTDIR);
  EXPECT_EQ(ErrnoOf(store_->Rename(kRootIno, "file", kRootIno, "d1")), EISDIR);
  // Directory over empty directory.
  EXPECT_OK(store_->Rename(kRootIno, "d1", kRootIno, "d2"));
  ASSERT_OK_AND_ASSIGN(v1::Inode now_d2, store_->Lookup(kRootIno, "d2"));
  EXPECT_EQ(now_d2.id(), d1);
  EXPECT_EQ(ErrnoOf(store_->GetAttr(d2).status()), ENOENT);
  EXPECT_EQ(Nlink(kRootIno), 4u);  // d2 (was d1), full, plus . and ..
  // Moving a directory re-parents it.
  EXPECT_OK(store_->Rename(kRootIno, "d2", full, "moved"));
  ASSERT_OK_AND_ASSIGN(v1::Inode moved, store_->GetAttr(d1));
  EXPECT_EQ(moved.parent(), full);
  EXPECT_EQ(Nlink(full), 3u);
  EXPECT_EQ(Nlink(kRootIno), 3u);
}

TEST_F(MetaStoreTest, RenameNoReplaceAndExchange) {
  uint64_t a = CreateOk(kRootIno, "a");
  uint64_t d = MkdirOk(kRootIno, "d");
  uint64_t sub = MkdirOk(d, "sub");
  EXPECT_EQ(
      ErrnoOf(store_->Rename(kRootIno, "a", kRootIno, "d", kRenameNoReplace)),
      EEXIST);
  EXPECT_OK(store_->Rename(kRootIno, "a", kRootIno, "b", kRenameNoReplace));
  EXPECT_EQ(
      ErrnoOf(store_->Rename(kRootIno, "b", kRootIno, "zz", kRenameExchange)),
      ENOENT);
  EXPECT_EQ(ErrnoOf(store_->Rename(kRootIno, "b", kRootIno, "d",
                                   kRenameExchange | kRenameNoReplace)),
            EINVAL);
  // Exchange a file and a directory in different parents.
  EXPECT_OK(store_->Rename(kRootIno, "b", d, "sub", kRenameExchange));
  ASSERT_OK_AND_ASSIGN(v1::Inode now_b, store_->Lookup(kRootIno, "b"));
  EXPECT_EQ(now_b.id(), sub);
  EXPECT_EQ(now_b.parent(), kRootIno);
  ASSERT_OK_AND_ASSIGN(v1::Inode now_sub, store_->Lookup(d, "sub"));
  EXPECT_EQ(now_sub.id(), a);
  EXPECT_EQ(Nlink(d), 2u);
  EXPECT_EQ(Nlink(kRootIno), 4u);
}

TEST_F(MetaStoreTest, RenameRefusesToMoveADirectoryIntoItsSubtree) {
  uint64_t a = MkdirOk(kRootIno, "a");
  uint64_t b = MkdirOk(a, "b");
  uint64_t c = MkdirOk(b, "c");
  absl::Status s = store_->Rename(kRootIno, "a", c, "a");
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument,
                          HasSubstr("own subtree")));
  EXPECT_EQ(ErrnoOf(s), EINVAL);
  EXPECT_EQ(ErrnoOf(store_->Rename(kRootIno, "a", a, "self")), EINVAL);
  EXPECT_EQ(ErrnoOf(store_->Rename(a, "b", c, "x", kRenameExchange)), ENOENT);
  MkdirOk(c, "x");
  EXPECT_EQ(ErrnoOf(store_->Rename(a, "b", c, "x", kRenameExchange)), EINVAL);
  // Moving up is fine.
  EXPECT_OK(store_->Rename(b, "c", kRootIno, "c"));
}

TEST_F(MetaStoreTest, DeepTreeOf200Levels) {
  uint64_t dir = kRootIno;
  std::vector<uint64_t> chain = {kRootIno};
  for (int i = 0; i < 200; ++i) {
    dir = MkdirOk(dir, absl::StrCat("level", i));
    chain.push_back(dir);
  }
  CreateOk(dir, "leaf");
  // The top can't go under the bottom; the bottom can go to the top.
  EXPECT_EQ(ErrnoOf(store_->Rename(kRootIno, "level0", dir, "loop")), EINVAL);
  EXPECT_OK(store_->Rename(chain[199], "level199", kRootIno, "bottom"));
  EXPECT_OK(store_->Rename(kRootIno, "bottom", chain[100], "back"));
  uint64_t cur = kRootIno;
  for (int i = 0; i < 100; ++i) {
    ASSERT_OK_AND_ASSIGN(v1::Inode next,
                         store_->Lookup(cur, absl::StrCat("level", i)));
    cur = next.id();
  }
  ASSERT_OK_AND_ASSIGN(v1::Inode back, store_->Lookup(cur, "back"));
  EXPECT_EQ(back.id(), dir);
}

TEST_F(MetaStoreTest, ReadDirPagesByNameAcrossManyEntries) {
  uint64_t d = MkdirOk(kRootIno, "d");
  constexpr int kEntries = 1000;
  for (int i = 0; i < kEntries; ++i) {
    CreateOk(d, absl::StrCat("f", 10000 + i));
  }
  MkdirOk(d, "zdir");
  std::vector<std::string> names;
  std::string cursor;
  int pages = 0;
  while (true) {
    ASSERT_OK_AND_ASSIGN(ReadDirPage page, store_->ReadDir(d, cursor, 64));
    ++pages;
    for (const v1::DirEntry& e : page.entries) names.push_back(e.name());
    if (!page.has_more) break;
    ASSERT_FALSE(page.entries.empty());
    cursor = page.entries.back().name();
  }
  EXPECT_EQ(pages, (kEntries + 1 + 63) / 64);
  ASSERT_EQ(names.size(), kEntries + 1u);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(names.front(), "f10000");
  EXPECT_EQ(names.back(), "zdir");
  ASSERT_OK_AND_ASSIGN(ReadDirPage rest, store_->ReadDir(d, "f10998", 10));
  ASSERT_EQ(rest.entries.size(), 2u);
  EXPECT_EQ(rest.entries[1].type(), v1::INODE_TYPE_DIRECTORY);
  // Other directories' entries never leak into the range.
  ASSERT_OK_AND_ASSIGN(ReadDirPage root, store_->ReadDir(kRootIno, "", 100));
  EXPECT_EQ(root.entries.size(), 1u);
  uint64_t f = CreateOk(kRootIno, "file");
  EXPECT_EQ(ErrnoOf(store_->ReadDir(f, "", 10).status()), ENOTDIR);
}

TEST_F(MetaStoreTest, UnlinkedOpenFileLivesUntilLastClose) {
  uint64_t f = CreateOk(kRootIno, "f");
  ASSERT_OK(store_->Open(f, /*for_write=*/true).status());
  ASSERT_OK(store_->Open(f, /*for_write=*/false).status());
  EXPECT_OK(store_->Unlink(kRootIno, "f"));
  EXPECT_EQ(ErrnoOf(store_->Lookup(kRootIno, "f").status()), ENOENT);
  ASSERT_OK_AND_ASSIGN(v1::Inode orphan, store_->GetAttr(f));
  EXPECT_EQ(orphan.nlink(), 0u);
  ASSERT_OK_AND_ASSIGN(FsckReport report, store_->Fsck());
  EXPECT_EQ(report.orphans, 1u);
  EXPECT_OK(store_->Fsync(f, 4096));
  EXPECT_OK(store_->Close(f, 8192));
  ASSERT_OK_AND_ASSIGN(v1::Inode still, store_->GetAttr(f));
  EXPECT_EQ(still.size(), 8192u);
  EXPECT_OK(store_->Close(f, std::nullopt));
  EXPECT_EQ(ErrnoOf(store_->GetAttr(f).status()), ENOENT);
  EXPECT_EQ(store_->OpenCountForTesting(f), 0);
  EXPECT_EQ(ErrnoOf(store_->Close(f, std::nullopt)), EBADF);
  ASSERT_OK_AND_ASSIGN(report, store_->Fsck());
  EXPECT_EQ(report.orphans, 0u);
}

TEST_F(MetaStoreTest, CloseCommitsLengthAndOpenOfMissingFails) {
  uint64_t f = CreateOk(kRootIno, "f");
  ASSERT_OK(store_->Open(f, true).status());
  EXPECT_OK(store_->Close(f, 12345));
  ASSERT_OK_AND_ASSIGN(v1::Inode inode, store_->GetAttr(f));
  EXPECT_EQ(inode.size(), 12345u);
  EXPECT_EQ(ErrnoOf(store_->Open(424242, false).status()), ENOENT);
  EXPECT_EQ(store_->OpenCountForTesting(424242), 0);
  EXPECT_EQ(ErrnoOf(store_->Open(kRootIno, true).status()), EISDIR);
  EXPECT_EQ(ErrnoOf(store_->Fsync(f, 1)), EBADF);
}

TEST_F(MetaStoreTest, OrphanLeftByACrashIsReclaimedOnOpen) {
  uint64_t f = CreateOk(kRootIno, "f");
  ASSERT_OK(store_->Open(f, true).status());
  EXPECT_OK(store_->Unlink(kRootIno, "f"));
  store_.reset();  // "Crash": the handle is never closed.
  store_ = OpenStore(tmp_.Join("meta"));
  EXPECT_EQ(ErrnoOf(store_->GetAttr(f).status()), ENOENT);
  ASSERT_OK_AND_ASSIGN(FsckReport report, store_->Fsck());
  EXPECT_EQ(report.orphans, 0u);
  EXPECT_EQ(report.inodes, 1u);
}

TEST_F(MetaStoreTest, OrphanSurvivesARestartForItsGraceAndCanBeReopened) {
  uint64_t f = CreateOk(kRootIno, "f");
  ASSERT_OK(store_->Open(f, true).status());
  ASSERT_OK(store_->Unlink(kRootIno, "f"));
  store_.reset();  // The server restarts; the client still has f open.
  store_ = OpenStore(tmp_.Join("meta"), absl::Hours(1));
  ASSERT_OK_AND_ASSIGN(v1::Inode kept, store_->GetAttr(f));
  EXPECT_EQ(kept.nlink(), 0u);
  // The client re-opens its handle by inode and keeps writing.
  ASSERT_OK(store_->Open(f, true).status());
  ASSERT_OK(store_->Fsync(f, 4096));
  ASSERT_OK_AND_ASSIGN(int reclaimed, store_->ReclaimOrphans());
  EXPECT_EQ(reclaimed, 0);
  EXPECT_OK(store_->GetAttr(f).status());
  // Its last close reclaims it, and its chunks go to GC.
  ASSERT_OK(store_->Close(f, std::nullopt));
  EXPECT_EQ(ErrnoOf(store_->GetAttr(f).status()), ENOENT);
  ASSERT_OK_AND_ASSIGN(std::vector<uint64_t> pending,
                       store_->ListPendingGc(100));
  EXPECT_EQ(pending, (std::vector<uint64_t>{f}));
  ExpectConsistent(*store_);
}

TEST_F(MetaStoreTest, OrphanNobodyReopensIsReclaimedAfterItsGrace) {
  uint64_t f = CreateOk(kRootIno, "f");
  uint64_t g = CreateOk(kRootIno, "g");
  ASSERT_OK(store_->Open(f, true).status());
  ASSERT_OK(store_->Open(g, true).status());
  ASSERT_OK(store_->Unlink(kRootIno, "f"));
  ASSERT_OK(store_->Unlink(kRootIno, "g"));
  store_.reset();
  store_ = OpenStore(tmp_.Join("meta"), absl::Milliseconds(50));
  ASSERT_OK_AND_ASSIGN(int early, store_->ReclaimOrphans());
  EXPECT_EQ(early, 0);
  ASSERT_OK(store_->Open(g, false).status());  // g's client came back
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_OK_AND_ASSIGN(int reclaimed, store_->ReclaimOrphans());
  EXPECT_EQ(reclaimed, 1);
  EXPECT_EQ(ErrnoOf(store_->GetAttr(f).status()), ENOENT);
  EXPECT_OK(store_->GetAttr(g).status());
  ASSERT_OK(store_->Close(g, std::nullopt));
  EXPECT_EQ(ErrnoOf(store_->GetAttr(g).status()), ENOENT);
  ASSERT_OK_AND_ASSIGN(FsckReport report, store_->Fsck());
  EXPECT_EQ(report.orphans, 0u);
  EXPECT_THAT(report.errors, IsEmpty());
}

TEST_F(MetaStoreTest, SealedInodesRefuseChanges) {
  uint64_t d = MkdirOk(kRootIno, "d");
  uint64_t f = CreateOk(d, "f");
  uint64_t g = CreateOk(kRootIno, "g");
  EXPECT_OK(store_->SetSealed(g));
  EXPECT_OK(store_->SetSealed(g));  // Idempotent.
  SetAttrArgs args;
  args.mask = kSetSize;
  args.size = 1;
  EXPECT_THAT(
      store_->SetAttr(g, args),
      StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("sealed")));
  EXPECT_EQ(ErrnoOf(store_->Open(g, true).status()), EPERM);
  EXPECT_OK(store_->Open(g, false).status());
  EXPECT_EQ(ErrnoOf(store_->Close(g, 99)), EPERM);
  EXPECT_EQ(ErrnoOf(store_->Unlink(kRootIno, "g")), EPERM);
  EXPECT_EQ(ErrnoOf(store_->Rename(kRootIno, "g", kRootIno, "h")), EPERM);
  EXPECT_EQ(ErrnoOf(store_->Link(g, kRootIno, "h").status()), EPERM);
  ASSERT_OK_AND_ASSIGN(v1::Inode sealed, store_->GetAttr(g));
  EXPECT_TRUE(sealed.sealed());
  EXPECT_EQ(sealed.size(), 0u);

  EXPECT_OK(store_->SetSealed(d));
  EXPECT_EQ(ErrnoOf(store_->Create(d, "new", 0644, 0, 0).status()), EPERM);
  EXPECT_EQ(ErrnoOf(store_->Mkdir(d, "new", 0755, 0, 0).status()), EPERM);
  EXPECT_EQ(ErrnoOf(store_->Unlink(d, "f")), EPERM);
  EXPECT_EQ(ErrnoOf(store_->Rename(d, "f", kRootIno, "f")), EPERM);
  EXPECT_EQ(ErrnoOf(store_->Rmdir(kRootIno, "d")), EPERM);
  EXPECT_EQ(ErrnoOf(store_->Symlink(d, "l", "x", 0, 0).status()), EPERM);
  // Files inside a sealed directory can still be written (only g is sealed).
  EXPECT_OK(store_->SetAttr(f, args).status());
}

TEST_F(MetaStoreTest, DeletedFilesBecomePendingGcUntilAcked) {
  uint64_t a = CreateOk(kRootIno, "a");
  uint64_t b = CreateOk(kRootIno, "b");
  uint64_t c = CreateOk(kRootIno, "c");
  MkdirOk(kRootIno, "d");
  ASSERT_OK(store_->Symlink(kRootIno, "l", "a", 0, 0).status());
  ASSERT_OK_AND_ASSIGN(std::vector<uint64_t> pending,
                       store_->ListPendingGc(100));
  EXPECT_THAT(pending, IsEmpty());

  // Last unlink; a directory and a symlink leave no mark.
  ASSERT_OK(store_->Unlink(kRootIno, "a"));
  ASSERT_OK(store_->Rmdir(kRootIno, "d"));
  ASSERT_OK(store_->Unlink(kRootIno, "l"));
  // Replaced by rename.
  ASSERT_OK(store_->Rename(kRootIno, "c", kRootIno, "b"));
  ASSERT_OK_AND_ASSIGN(pending, store_->ListPendingGc(100));
  EXPECT_EQ(pending, (std::vector<uint64_t>{a, b}));

  // An open file is marked only at its last close.
  ASSERT_OK(store_->Open(c, true).status());
  ASSERT_OK(store_->Unlink(kRootIno, "b"));
  ASSERT_OK_AND_ASSIGN(pending, store_->ListPendingGc(100));
  EXPECT_EQ(pending, (std::vector<uint64_t>{a, b}));
  ASSERT_OK(store_->Close(c, std::nullopt));
  ASSERT_OK_AND_ASSIGN(pending, store_->ListPendingGc(100));
  EXPECT_EQ(pending, (std::vector<uint64_t>{a, b, c}));

  ASSERT_OK_AND_ASSIGN(pending, store_->ListPendingGc(2));
  EXPECT_EQ(pending.size(), 2u);
  EXPECT_EQ(ErrnoOf(store_->ListPendingGc(0).status()), EINVAL);

  ASSERT_OK(store_->AckGc({a, c, 12345}));
  ASSERT_OK_AND_ASSIGN(pending, store_->ListPendingGc(100));
  EXPECT_EQ(pending, (std::vector<uint64_t>{b}));
  ASSERT_OK_AND_ASSIGN(FsckReport report, store_->Fsck());
  EXPECT_EQ(report.pending_gc, 1u);

  // Survives a reopen.
  store_.reset();
  store_ = OpenStore(tmp_.Join("meta"));
  ASSERT_OK_AND_ASSIGN(pending, store_->ListPendingGc(100));
  EXPECT_EQ(pending, (std::vector<uint64_t>{b}));
}

TEST_F(MetaStoreTest, OrphanReclaimedAtOpenBecomesPendingGc) {
  uint64_t f = CreateOk(kRootIno, "f");
  ASSERT_OK(store_->Open(f, true).status());
  ASSERT_OK(store_->Unlink(kRootIno, "f"));
  store_.reset();
  store_ = OpenStore(tmp_.Join("meta"));
  ASSERT_OK_AND_ASSIGN(std::vector<uint64_t> pending,
                       store_->ListPendingGc(100));
  EXPECT_EQ(pending, (std::vector<uint64_t>{f}));
}

std::string Be64Key(char prefix, uint64_t id) {
  std::string key = {prefix, '/'};
  for (int i = 7; i >= 0; --i) key.push_back(static_cast<char>(id >> (i * 8)));
  return key;
}

TEST_F(MetaStoreTest, FsckReportsDamage) {
  uint64_t f = CreateOk(MkdirOk(kRootIno, "d"), "f");
  uint64_t g = CreateOk(kRootIno, "g");
  store_.reset();
  {
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(
        rocksdb::DB::Open(rocksdb::Options(), tmp_.Join("meta"), &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    // f loses its inode; g loses its only name; a dentry of a missing dir.
    ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), Be64Key('i', f)).ok());
    ASSERT_TRUE(
        db->Delete(rocksdb::WriteOptions(), Be64Key('d', kRootIno) + "g").ok());
    v1::Dentry dangling;
    dangling.set_ino(g);
    dangling.set_type(v1::INODE_TYPE_FILE);
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), Be64Key('d', 777) + "x",
                        dangling.SerializeAsString())
                    .ok());
    ASSERT_TRUE(db->Close().ok());
  }
  store_ = OpenStore(tmp_.Join("meta"));
  ASSERT_OK_AND_ASSIGN(FsckReport report, store_->Fsck());
  std::string all = absl::StrJoin(report.errors, "\n");
  EXPECT_THAT(all, HasSubstr(absl::StrCat("inode ", f, " missing")));
  EXPECT_THAT(all, HasSubstr("parent missing"));
  EXPECT_THAT(
      all, HasSubstr(absl::StrCat("inode ", g, ": unreachable from the root")));
  store_.reset();  // Skip the consistency check in TearDown.
}

// A random operation against the tree; errors are expected and ignored.
// `open` holds this caller's open handles.
void RandomOp(MetaStore& store, std::mt19937& rng,
              std::vector<uint64_t>* open) {
  auto random_dir = [&]() {
    uint64_t dir = kRootIno;
    int depth = static_cast<int>(rng() % 4);
    for (int i = 0; i < depth; ++i) {
      auto page = store.ReadDir(dir, "", 16);
      if (!page.ok()) break;
      std::vector<uint64_t> subdirs;
      for (const auto& e : page->entries) {
        if (e.type() == v1::INODE_TYPE_DIRECTORY) subdirs.push_back(e.ino());
      }
      if (subdirs.empty()) break;
      dir = subdirs[rng() % subdirs.size()];
    }
    return dir;
  };
  auto name = [&]() { return absl::StrCat("n", rng() % 6); };
  uint64_t dir = random_dir();
  switch (rng() % 11) {
    case 0:
    case 1:
      (void)store.Create(dir, name(), 0644, 0, 0);
      break;
    case 2:
      (void)store.Mkdir(dir, name(), 0755, 0, 0);
      break;
    case 3:
      (void)store.Unlink(dir, name());
      break;
    case 4:
      (void)store.Rmdir(dir, name());
      break;
    case 5:
    case 6: {
      uint32_t flags = std::vector<uint32_t>{0, 0, kRenameNoReplace,
                                             kRenameExchange}[rng() % 4];
      (void)store.Rename(dir, name(), random_dir(), name(), flags);
      break;
    }
    case 7: {
      auto inode = store.Lookup(dir, name());
      if (inode.ok()) (void)store.Link(inode->id(), random_dir(), name());
      break;
    }
    case 8:
      (void)store.Symlink(dir, name(), "target", 0, 0);
      break;
    case 9: {
      auto inode = store.Lookup(dir, name());
      if (inode.ok() && inode->type() == v1::INODE_TYPE_FILE &&
          store.Open(inode->id(), true).ok()) {
        open->push_back(inode->id());
        SetAttrArgs args;
        args.mask = kSetSize;
        args.size = rng() % 100000;
        (void)store.SetAttr(inode->id(), args);
      }
      break;
    }
    case 10:
      if (!open->empty()) {
        size_t i = rng() % open->size();
        (void)store.Close((*open)[i], rng() % 100000);
        open->erase(open->begin() + i);
      }
      break;
  }
}

TEST(MetaStoreConcurrency, ThreadsRacingStayConsistent) {
  dsec::testing::TempDir tmp;
  auto store = OpenStore(tmp.Join("meta"));
  ASSERT_NE(store, nullptr);
  constexpr int kThreads = 4;
  constexpr int kOps = 4000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1234 + t);
      std::vector<uint64_t> open;
      for (int i = 0; i < kOps; ++i) RandomOp(*store, rng, &open);
      for (uint64_t ino : open) EXPECT_OK(store->Close(ino, std::nullopt));
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_OK_AND_ASSIGN(FsckReport report, store->Fsck());
  EXPECT_THAT(report.errors, IsEmpty()) << absl::StrJoin(report.errors, "\n");
  EXPECT_EQ(report.orphans, 0u);
  EXPECT_GT(report.inodes, 1u);
}

TEST(MetaStoreConcurrency, CrossedDirectoryRenamesNeverFormACycle) {
  dsec::testing::TempDir tmp;
  auto store = OpenStore(tmp.Join("meta"));
  ASSERT_NE(store, nullptr);
  for (int round = 0; round < 100; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    std::string a_name = absl::StrCat("a", round);
    std::string b_name = absl::StrCat("b", round);
    ASSERT_OK_AND_ASSIGN(v1::Inode a,
                         store->Mkdir(kRootIno, a_name, 0755, 0, 0));
    ASSERT_OK_AND_ASSIGN(v1::Inode b,
                         store->Mkdir(kRootIno, b_name, 0755, 0, 0));
    absl::Status a_into_b, b_into_a;
    std::thread t1(
        [&] { a_into_b = store->Rename(kRootIno, a_name, b.id(), "a"); });
    std::thread t2(
        [&] { b_into_a = store->Rename(kRootIno, b_name, a.id(), "b"); });
    t1.join();
    t2.join();
    EXPECT_NE(a_into_b.ok(), b_into_a.ok()) << a_into_b << " / " << b_into_a;
    absl::Status failed = a_into_b.ok() ? b_into_a : a_into_b;
    EXPECT_THAT(ErrnoOf(failed), ::testing::AnyOf(EINVAL, ENOENT)) << failed;
  }
  ASSERT_OK_AND_ASSIGN(FsckReport report, store->Fsck());
  EXPECT_THAT(report.errors, IsEmpty()) << absl::StrJoin(report.errors, "\n");
}

// Re-executed by CrashSafety below with kCrashDirEnv set: random operations
// until SIGKILLed. Disabled, so a normal run never starts it.
TEST(MetaStoreCrashChild, DISABLED_RandomOpsUntilKilled) {
  const char* dir = getenv(kCrashDirEnv);
  if (dir == nullptr) GTEST_SKIP() << "only run as CrashSafety's child";
  auto store = OpenStore(dir);
  if (store == nullptr) _exit(3);
  std::mt19937 rng(static_cast<unsigned>(getpid()));
  std::vector<uint64_t> open;
  for (;;) RandomOp(*store, rng, &open);
}

TEST(MetaStoreCrashSafety, SigkillDuringRandomOpsLeavesConsistentStore) {
  dsec::testing::TempDir tmp;
  const std::string dir = tmp.Join("meta");
  uint64_t max_inodes = 0;
  for (int round = 0; round < 6; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      setenv(kCrashDirEnv, dir.c_str(), 1);
      int devnull = open("/dev/null", O_WRONLY);
      if (devnull >= 0) dup2(devnull, STDOUT_FILENO);
      execl("/proc/self/exe", "fs_meta_test",
            "--gtest_filter=MetaStoreCrashChild.DISABLED_RandomOpsUntilKilled",
            "--gtest_also_run_disabled_tests", static_cast<char*>(nullptr));
      _exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(400 + 150 * round));
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    int wstatus = 0;
    ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(wstatus))
        << "child exited early with " << WEXITSTATUS(wstatus);
    auto store = OpenStore(dir);
    ASSERT_NE(store, nullptr);
    ASSERT_OK_AND_ASSIGN(FsckReport report, store->Fsck());
    EXPECT_THAT(report.errors, IsEmpty()) << absl::StrJoin(report.errors, "\n");
    EXPECT_EQ(report.orphans, 0u);  // Reclaimed by the reopen.
    max_inodes = std::max<uint64_t>(max_inodes, report.inodes);
  }
  EXPECT_GT(max_inodes, 1u) << "the child never got to run operations";
}

}  // namespace
}  // namespace dsec::fs
