// dsec-fs through the FUSE mount: a table of POSIX behaviours and edge cases,
// real workloads (tar, make/gcc, git, sqlite3) run inside the mount, and a
// clean unmount on SIGTERM. One cluster (meta + 3 chunk servers, replication
// 3, 1 MiB chunks) and one mount serve the whole suite; each test works in
// its own directory.
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "fs/fs_error.h"
#include "fs/fuse_fs.h"
#include "fs/testing/fs_cluster.h"
#include "gtest/gtest.h"

namespace dsec::fs {
namespace {

using ::dsec::fs::testing::FsTestCluster;
using ::dsec::testing::CommandResult;
using ::dsec::testing::RunCommand;

constexpr uint64_t kChunk = 1 << 20;

std::string Pattern(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  std::mt19937 rng(seed);
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

bool WriteAll(const std::string& path, const std::string& data,
              int flags = O_WRONLY | O_CREAT | O_TRUNC) {
  int fd = open(path.c_str(), flags, 0644);
  if (fd < 0) return false;
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n <= 0) {
      close(fd);
      return false;
    }
    done += n;
  }
  return close(fd) == 0;
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

class FsMountTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (geteuid() != 0 || access("/dev/fuse", R_OK | W_OK) != 0) return;
    auto cluster = FsTestCluster::Start({.chunk_size = kChunk});
    if (!cluster.ok()) {
      setup_error_ = new std::string(cluster.status().ToString());
      return;
    }
    cluster_ = cluster->release();
    auto mnt = cluster_->Mount();
    if (!mnt.ok()) {
      setup_error_ =
          new std::string(mnt.status().ToString() + "\n" + cluster_->Logs());
      return;
    }
    mnt_ = new std::string(*mnt);
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
    delete mnt_;
    mnt_ = nullptr;
  }

  void SetUp() override {
    DSEC_REQUIRE_HOST_FEATURE(geteuid() == 0 && access("/dev/fuse", F_OK) == 0,
                              "root and /dev/fuse");
    ASSERT_EQ(setup_error_, nullptr) << *setup_error_;
    ASSERT_NE(mnt_, nullptr);
    dir_ = absl::StrCat(
        *mnt_, "/",
        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    ASSERT_EQ(mkdir(dir_.c_str(), 0755), 0) << strerror(errno);
  }

  void TearDown() override {
    if (HasFailure() && cluster_ != nullptr) {
      std::cerr << cluster_->Logs();
    }
  }

  std::string P(const std::string& name) const { return dir_ + "/" + name; }

  static FsTestCluster* cluster_;
  static std::string* mnt_;
  static std::string* setup_error_;
  std::string dir_;
};

FsTestCluster* FsMountTest::cluster_ = nullptr;
std::string* FsMountTest::mnt_ = nullptr;
std::string* FsMountTest::setup_error_ = nullptr;

TEST_F(FsMountTest, WriteReadAcrossChunksAndNativeClientAgrees) {
  std::string data = Pattern(5 * kChunk + 12345, 1);
  ASSERT_TRUE(WriteAll(P("big"), data));
  struct stat st;
  ASSERT_EQ(stat(P("big").c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), data.size());
  EXPECT_EQ(ReadAll(P("big")), data);
  // Through the native client, bypassing FUSE.
  std::string path = absl::StrCat(
      "/", ::testing::UnitTest::GetInstance()->current_test_info()->name(),
      "/big");
  ASSERT_OK_AND_ASSIGN(std::string native, cluster_->client().ReadFile(path));
  EXPECT_EQ(native, data);
}

TEST_F(FsMountTest, SizeVisibleBeforeClose) {
  int fd = open(P("f").c_str(), O_WRONLY | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "hello", 5), 5);
  struct stat st;
  ASSERT_EQ(stat(P("f").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 5);
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(ReadAll(P("f")), "hello");
}

TEST_F(FsMountTest, RenameOverExistingFileReplacesIt) {
  ASSERT_TRUE(WriteAll(P("a"), "new"));
  ASSERT_TRUE(WriteAll(P("b"), "old content"));
  ASSERT_EQ(rename(P("a").c_str(), P("b").c_str()), 0);
  EXPECT_EQ(ReadAll(P("b")), "new");
  EXPECT_NE(access(P("a").c_str(), F_OK), 0);
  EXPECT_EQ(errno, ENOENT);
}

TEST_F(FsMountTest, RenameDirectoryRules) {
  ASSERT_EQ(mkdir(P("d1").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(P("d2").c_str(), 0755), 0);
  ASSERT_TRUE(WriteAll(P("d1/x"), "x"));
  // Over an empty directory: allowed.
  ASSERT_EQ(rename(P("d1").c_str(), P("d2").c_str()), 0);
  EXPECT_EQ(ReadAll(P("d2/x")), "x");
  // Over a non-empty one: ENOTEMPTY.
  ASSERT_EQ(mkdir(P("d3").c_str(), 0755), 0);
  EXPECT_NE(rename(P("d3").c_str(), P("d2").c_str()), 0);
  EXPECT_EQ(errno, ENOTEMPTY);
  // Into its own subtree: EINVAL.
  ASSERT_EQ(mkdir(P("d2/sub").c_str(), 0755), 0);
  EXPECT_NE(rename(P("d2").c_str(), P("d2/sub/d2").c_str()), 0);
  EXPECT_EQ(errno, EINVAL);
  // Directory over file: ENOTDIR; file over directory: EISDIR.
  ASSERT_TRUE(WriteAll(P("file"), "f"));
  EXPECT_NE(rename(P("d3").c_str(), P("file").c_str()), 0);
  EXPECT_EQ(errno, ENOTDIR);
  EXPECT_NE(rename(P("file").c_str(), P("d3").c_str()), 0);
  EXPECT_EQ(errno, EISDIR);
}

TEST_F(FsMountTest, RenameNoReplaceAndExchange) {
  ASSERT_TRUE(WriteAll(P("a"), "A"));
  ASSERT_TRUE(WriteAll(P("b"), "B"));
  EXPECT_NE(renameat2(AT_FDCWD, P("a").c_str(), AT_FDCWD, P("b").c_str(),
                      RENAME_NOREPLACE),
            0);
  EXPECT_EQ(errno, EEXIST);
  ASSERT_EQ(renameat2(AT_FDCWD, P("a").c_str(), AT_FDCWD, P("b").c_str(),
                      RENAME_EXCHANGE),
            0)
      << strerror(errno);
  EXPECT_EQ(ReadAll(P("a")), "B");
  EXPECT_EQ(ReadAll(P("b")), "A");
}

TEST_F(FsMountTest, UnlinkOfOpenFileKeepsDataUntilClose) {
  std::string data = Pattern(3 * kChunk, 2);
  ASSERT_TRUE(WriteAll(P("f"), data));
  struct stat st;
  ASSERT_EQ(stat(P("f").c_str(), &st), 0);
  int fd = open(P("f").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(unlink(P("f").c_str()), 0);
  EXPECT_NE(access(P("f").c_str(), F_OK), 0);
  std::string back(data.size(), '\0');
  ASSERT_EQ(pread(fd, back.data(), back.size(), 0),
            static_cast<ssize_t>(back.size()));
  EXPECT_EQ(back, data);
  ASSERT_EQ(close(fd), 0);
  // After the last close the inode is gone from the namespace. The kernel
  // sends release asynchronously, so poll briefly.
  absl::Status status;
  for (int i = 0; i < 100; ++i) {
    status = cluster_->client().GetAttr(st.st_ino).status();
    if (absl::IsNotFound(status)) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(absl::IsNotFound(status)) << status;
}

TEST_F(FsMountTest, DirectoryAttributesFollowNamespaceChanges) {
  FsClient& c = cluster_->client();
  ASSERT_EQ(mkdir(P("d").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(P("e").c_str(), 0755), 0);
  struct stat d, e;
  ASSERT_EQ(stat(P("d").c_str(), &d), 0);
  ASSERT_EQ(stat(P("e").c_str(), &e), 0);
  // What stat shows for a directory right after a change through the mount
  // is what the meta server holds.
  auto expect_current = [&](const std::string& path) {
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0) << path;
    ASSERT_OK_AND_ASSIGN(v1::Inode server, c.GetAttr(st.st_ino));
    EXPECT_EQ(st.st_nlink, server.nlink()) << path;
    EXPECT_EQ(static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 +
                  st.st_mtim.tv_nsec,
              server.mtime_ns())
        << path;
    EXPECT_EQ(st.st_mode & 07777, server.mode()) << path;
  };
  absl::SleepFor(absl::Milliseconds(5));
  int fd = open(P("d/f").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(close(fd), 0);
  expect_current(P("d"));
  ASSERT_EQ(mkdir(P("d/sub").c_str(), 0700), 0);
  expect_current(P("d"));
  struct stat st;
  ASSERT_EQ(stat(P("d").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 3u);
  ASSERT_EQ(rename(P("d/sub").c_str(), P("e/sub").c_str()), 0);
  expect_current(P("d"));
  expect_current(P("e"));
  ASSERT_EQ(stat(P("e").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 3u);
  ASSERT_EQ(link(P("d/f").c_str(), P("e/g").c_str()), 0);
  ASSERT_EQ(symlink("f", P("d/l").c_str()), 0);
  ASSERT_EQ(unlink(P("d/f").c_str()), 0);
  expect_current(P("d"));
  expect_current(P("e"));
  ASSERT_EQ(chmod(P("d").c_str(), 0711), 0);
  expect_current(P("d"));
  // A failed call leaves nothing stale behind.
  ASSERT_NE(rmdir(P("e").c_str()), 0);
  EXPECT_EQ(errno, ENOTEMPTY);
  expect_current(P("e"));
  // A change by another client shows within the attribute timeout.
  ASSERT_OK(c.Create(d.st_ino, "native", 0644, 0, 0, /*open=*/false).status());
  absl::SleepFor(absl::Milliseconds(1100));
  expect_current(P("d"));
}

// Enough lookups in one directory make dsec-mount answer lookups there from
// a fetched listing (statahead); opendir does too. What stat shows must stay
// exact for this mount's own changes, and others' changes must show within
// the attribute timeout.
TEST_F(FsMountTest, ListedDirectoriesStayExact) {
  FsClient& c = cluster_->client();
  constexpr int kFiles = 80;
  for (int i = 0; i < kFiles; ++i) {
    ASSERT_TRUE(WriteAll(P(absl::StrCat("f", i)), std::string(i, 'x')));
  }
  auto server_view = [&](const std::string& name) {
    struct stat st;
    EXPECT_EQ(stat(P(name).c_str(), &st), 0) << name;
    absl::StatusOr<v1::Inode> dir = c.ResolvePath(absl::StrCat(
        "/", ::testing::UnitTest::GetInstance()->current_test_info()->name()));
    EXPECT_OK(dir.status());
    absl::StatusOr<v1::Inode> server = c.Lookup(dir->id(), name);
    EXPECT_OK(server.status()) << name;
    if (!server.ok()) return;
    EXPECT_EQ(st.st_ino, server->id()) << name;
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), server->size()) << name;
    EXPECT_EQ(st.st_mode & 07777, server->mode()) << name;
    EXPECT_EQ(st.st_nlink, server->nlink()) << name;
  };
  // Twice over: the second round is answered from the listing.
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < kFiles; ++i) {
      struct stat st;
      ASSERT_EQ(stat(P(absl::StrCat("f", i)).c_str(), &st), 0);
      EXPECT_EQ(st.st_size, i);
    }
  }
  // Changes through this mount show at once.
  ASSERT_TRUE(WriteAll(P("f3"), std::string(5000, 'y')));
  server_view("f3");
  ASSERT_EQ(truncate(P("f4").c_str(), 77), 0);
  server_view("f4");
  ASSERT_EQ(chmod(P("f5").c_str(), 0600), 0);
  server_view("f5");
  ASSERT_EQ(link(P("f6").c_str(), P("f6-link").c_str()), 0);
  server_view("f6");
  server_view("f6-link");
  ASSERT_EQ(unlink(P("f6-link").c_str()), 0);
  server_view("f6");
  ASSERT_EQ(unlink(P("f7").c_str()), 0);
  EXPECT_NE(access(P("f7").c_str(), F_OK), 0);
  ASSERT_EQ(rename(P("f8").c_str(), P("f8-renamed").c_str()), 0);
  EXPECT_NE(access(P("f8").c_str(), F_OK), 0);
  server_view("f8-renamed");
  ASSERT_TRUE(WriteAll(P("new"), "fresh"));
  server_view("new");
  {
    int fd = open(P("f9").c_str(), O_WRONLY | O_APPEND);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, "abc", 3), 3);
    struct stat st;
    ASSERT_EQ(stat(P("f9").c_str(), &st), 0);
    EXPECT_EQ(st.st_size, 9 + 3);  // a writer's length before close
    ASSERT_EQ(close(fd), 0);
    server_view("f9");
  }
  // ls -l: a listing, then a lookup of each entry.
  std::set<std::string> names;
  DIR* d = opendir(dir_.c_str());
  ASSERT_NE(d, nullptr);
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') names.insert(e->d_name);
  }
  closedir(d);
  EXPECT_EQ(names.size(), static_cast<size_t>(kFiles));  // -f7, +new
  for (const std::string& name : names) server_view(name);

  // Another client's changes: a file it creates shows, one it removes goes,
  // within the attribute timeout.
  ASSERT_OK_AND_ASSIGN(
      v1::Inode dir,
      c.ResolvePath(absl::StrCat(
          "/",
          ::testing::UnitTest::GetInstance()->current_test_info()->name())));
  EXPECT_NE(access(P("theirs").c_str(), F_OK), 0);  // listed as absent now
  ASSERT_OK(c.Create(dir.id(), "theirs", 0644, 0, 0, /*open=*/false).status());
  ASSERT_OK(c.Unlink(dir.id(), "f10"));
  absl::SleepFor(absl::Milliseconds(1100));
  EXPECT_EQ(access(P("theirs").c_str(), F_OK), 0);
  EXPECT_NE(access(P("f10").c_str(), F_OK), 0);
  server_view("f11");
}

// open(O_CREAT) of a name another client created after this mount (or the
// kernel) cached it as absent: without O_EXCL it opens the file, with
// O_EXCL it fails with EEXIST.
TEST_F(FsMountTest, CreateOverAStaleNegativeEntry) {
  FsClient& c = cluster_->client();
  ASSERT_OK_AND_ASSIGN(
      v1::Inode dir,
      c.ResolvePath(absl::StrCat(
          "/",
          ::testing::UnitTest::GetInstance()->current_test_info()->name())));
  for (int i = 0; i < 40; ++i) {  // make the directory listed
    EXPECT_NE(access(P(absl::StrCat("probe", i)).c_str(), F_OK), 0);
  }
  EXPECT_NE(access(P("a").c_str(), F_OK), 0);
  EXPECT_NE(access(P("b").c_str(), F_OK), 0);
  ASSERT_OK(c.WriteFile(
      absl::StrCat(
          "/", ::testing::UnitTest::GetInstance()->current_test_info()->name(),
          "/a"),
      "theirs"));
  ASSERT_OK(c.Create(dir.id(), "b", 0644, 0, 0, /*open=*/false).status());
  int fd = open(P("a").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0) << strerror(errno);
  char buf[16] = {};
  EXPECT_EQ(pread(fd, buf, sizeof(buf), 0), 6);
  EXPECT_STREQ(buf, "theirs");
  close(fd);
  EXPECT_LT(open(P("b").c_str(), O_RDWR | O_CREAT | O_EXCL, 0644), 0);
  EXPECT_EQ(errno, EEXIST);
}

TEST_F(FsMountTest, HeldBackClosesReachTheMetaServer) {
  // Handles with nothing to commit are closed in batches, later: every one
  // must still arrive, so unlinked files do not linger as orphans.
  constexpr int kFiles = 300;
  std::vector<ino_t> inos;
  for (int i = 0; i < kFiles; ++i) {
    std::string path = P(absl::StrCat("f", i));
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
    ASSERT_GE(fd, 0) << path;
    ASSERT_EQ(close(fd), 0);
    fd = open(path.c_str(), O_RDONLY);  // and a reader
    ASSERT_GE(fd, 0) << path;
    ASSERT_EQ(close(fd), 0);
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    inos.push_back(st.st_ino);
    ASSERT_EQ(unlink(path.c_str()), 0);
  }
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  for (ino_t ino : inos) {
    absl::Status status;
    do {
      status = cluster_->client().GetAttr(ino).status();
      if (absl::IsNotFound(status)) break;
      absl::SleepFor(absl::Milliseconds(10));
    } while (absl::Now() < deadline);
    EXPECT_TRUE(absl::IsNotFound(status)) << "inode " << ino << ": " << status;
  }
}

TEST_F(FsMountTest, SparseFilesAndHolesReadAsZeros) {
  int fd = open(P("sparse").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  const off_t far = 5 * kChunk + 100;
  ASSERT_EQ(pwrite(fd, "tail", 4, far), 4);
  ASSERT_EQ(pwrite(fd, "head", 4, 0), 4);
  ASSERT_EQ(close(fd), 0);
  struct stat st;
  ASSERT_EQ(stat(P("sparse").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, far + 4);
  std::string all = ReadAll(P("sparse"));
  ASSERT_EQ(all.size(), static_cast<size_t>(far + 4));
  EXPECT_EQ(all.substr(0, 4), "head");
  EXPECT_EQ(all.substr(far), "tail");
  EXPECT_EQ(all.find_first_not_of('\0', 4), static_cast<size_t>(far));
}

TEST_F(FsMountTest, TruncateDownThenUpZeroFills) {
  std::string data = Pattern(3 * kChunk, 3);
  ASSERT_TRUE(WriteAll(P("t"), data));
  const off_t cut = kChunk + kChunk / 2;
  ASSERT_EQ(truncate(P("t").c_str(), cut), 0);
  EXPECT_EQ(ReadAll(P("t")), data.substr(0, cut));
  ASSERT_EQ(truncate(P("t").c_str(), 4 * kChunk), 0);
  std::string grown = ReadAll(P("t"));
  ASSERT_EQ(grown.size(), 4 * kChunk);
  EXPECT_EQ(grown.substr(0, cut), data.substr(0, cut));
  EXPECT_EQ(grown.find_first_not_of('\0', cut), std::string::npos)
      << "old bytes came back after truncate down + up";
  // ftruncate on an open handle with buffered writes.
  int fd = open(P("t").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, "abcdef", 6, 10), 6);
  ASSERT_EQ(ftruncate(fd, 12), 0);
  ASSERT_EQ(close(fd), 0);
  std::string small = ReadAll(P("t"));
  ASSERT_EQ(small.size(), 12u);
  EXPECT_EQ(small.substr(10), "ab");
}

TEST_F(FsMountTest, AppendMode) {
  ASSERT_TRUE(WriteAll(P("log"), "one\n"));
  ASSERT_TRUE(WriteAll(P("log"), "two\n", O_WRONLY | O_APPEND));
  ASSERT_TRUE(WriteAll(P("log"), "three\n", O_WRONLY | O_APPEND));
  EXPECT_EQ(ReadAll(P("log")), "one\ntwo\nthree\n");
}

TEST_F(FsMountTest, HardLinks) {
  ASSERT_TRUE(WriteAll(P("a"), "shared"));
  ASSERT_EQ(link(P("a").c_str(), P("b").c_str()), 0) << strerror(errno);
  struct stat sa, sb;
  ASSERT_EQ(stat(P("a").c_str(), &sa), 0);
  ASSERT_EQ(stat(P("b").c_str(), &sb), 0);
  EXPECT_EQ(sa.st_ino, sb.st_ino);
  EXPECT_EQ(sb.st_nlink, 2u);
  ASSERT_TRUE(WriteAll(P("b"), "changed"));
  EXPECT_EQ(ReadAll(P("a")), "changed");
  ASSERT_EQ(unlink(P("a").c_str()), 0);
  EXPECT_EQ(ReadAll(P("b")), "changed");
  ASSERT_EQ(stat(P("b").c_str(), &sb), 0);
  EXPECT_EQ(sb.st_nlink, 1u);
  // Directories cannot be hard-linked.
  ASSERT_EQ(mkdir(P("d").c_str(), 0755), 0);
  EXPECT_NE(link(P("d").c_str(), P("d2").c_str()), 0);
  EXPECT_EQ(errno, EPERM);
}

TEST_F(FsMountTest, LongNamesAndDeepTrees) {
  std::string max_name(255, 'n');
  ASSERT_TRUE(WriteAll(P(max_name), "ok"));
  EXPECT_EQ(ReadAll(P(max_name)), "ok");
  std::string too_long(256, 'n');
  EXPECT_LT(open(P(too_long).c_str(), O_CREAT | O_WRONLY, 0644), 0);
  EXPECT_EQ(errno, ENAMETOOLONG);
  std::string path = dir_;
  for (int i = 0; i < 64; ++i) {
    path += "/d" + std::to_string(i);
    ASSERT_EQ(mkdir(path.c_str(), 0755), 0) << path << ": " << strerror(errno);
  }
  ASSERT_TRUE(WriteAll(path + "/leaf", "deep"));
  EXPECT_EQ(ReadAll(path + "/leaf"), "deep");
  CommandResult r = RunCommand("find " + dir_ + " -name leaf | wc -l");
  EXPECT_EQ(r.out, "1\n");
}

TEST_F(FsMountTest, SymlinksAndErrors) {
  ASSERT_TRUE(WriteAll(P("target"), "t"));
  ASSERT_EQ(symlink("target", P("link").c_str()), 0);
  char buf[64] = {};
  ASSERT_EQ(readlink(P("link").c_str(), buf, sizeof(buf)), 6);
  EXPECT_STREQ(buf, "target");
  EXPECT_EQ(ReadAll(P("link")), "t");
  struct stat st;
  ASSERT_EQ(lstat(P("link").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));

  EXPECT_NE(mkdir(P("target").c_str(), 0755), 0);
  EXPECT_EQ(errno, EEXIST);
  ASSERT_EQ(mkdir(P("d").c_str(), 0755), 0);
  ASSERT_TRUE(WriteAll(P("d/x"), "x"));
  EXPECT_NE(rmdir(P("d").c_str()), 0);
  EXPECT_EQ(errno, ENOTEMPTY);
  EXPECT_NE(unlink(P("d").c_str()), 0);
  EXPECT_EQ(errno, EISDIR);
  EXPECT_LT(open(P("missing").c_str(), O_RDONLY), 0);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_NE(rmdir(P("target").c_str()), 0);
  EXPECT_EQ(errno, ENOTDIR);
  EXPECT_NE(mknod(P("fifo").c_str(), S_IFIFO | 0644, 0), 0);
  EXPECT_EQ(errno, EPERM);
}

TEST_F(FsMountTest, ModeAndTimesPersist) {
  ASSERT_TRUE(WriteAll(P("m"), "m"));
  ASSERT_EQ(chmod(P("m").c_str(), 0600), 0);
  timespec times[2] = {{1000, 5}, {2000, 7}};
  ASSERT_EQ(utimensat(AT_FDCWD, P("m").c_str(), times, 0), 0);
  ASSERT_OK_AND_ASSIGN(
      v1::Inode inode,
      cluster_->client().ResolvePath(absl::StrCat(
          "/", ::testing::UnitTest::GetInstance()->current_test_info()->name(),
          "/m")));
  EXPECT_EQ(inode.mode(), 0600u);
  EXPECT_EQ(inode.mtime_ns(), 2000 * 1000000000LL + 7);
  EXPECT_EQ(inode.atime_ns(), 1000 * 1000000000LL + 5);
}

TEST_F(FsMountTest, LargeDirectoryListing) {
  std::set<std::string> want;
  for (int i = 0; i < 2500; ++i) {
    std::string name = absl::StrCat("file-", i);
    int fd = open(P(name).c_str(), O_CREAT | O_WRONLY, 0644);
    ASSERT_GE(fd, 0) << name;
    close(fd);
    want.insert(name);
  }
  std::set<std::string> got;
  DIR* d = opendir(dir_.c_str());
  ASSERT_NE(d, nullptr);
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") got.insert(n);
  }
  closedir(d);
  EXPECT_EQ(got, want);
}

TEST_F(FsMountTest, WorkloadTarMakeGcc) {
  // A small C project, packed with tar outside and unpacked inside.
  ::dsec::testing::TempDir src;
  std::filesystem::create_directories(src.Join("proj/src"));
  std::ofstream(src.Join("proj/src/lib.c"))
      << "int add(int a, int b) { return a + b; }\n";
  std::ofstream(src.Join("proj/src/lib.h")) << "int add(int a, int b);\n";
  std::ofstream(src.Join("proj/src/main.c"))
      << "#include <stdio.h>\n#include \"lib.h\"\n"
         "int main(void) { printf(\"sum=%d\\n\", add(40, 2)); return 0; }\n";
  std::ofstream(src.Join("proj/Makefile"))
      << "app: src/main.o src/lib.o\n\tgcc -o app src/main.o src/lib.o\n"
         "src/%.o: src/%.c src/lib.h\n\tgcc -O1 -c -o $@ $<\n"
         "clean:\n\trm -f app src/*.o\n";
  CommandResult r =
      RunCommand("tar -C " + src.path() + " -cf " + src.Join("proj.tar") +
                 " proj && tar -C " + dir_ + " -xf " + src.Join("proj.tar"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  r = RunCommand("make -C " + dir_ + "/proj 2>&1 && " + dir_ + "/proj/app");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("sum=42"), std::string::npos) << r.out;
  // Rebuild after an edit, then clean.
  r = RunCommand("sleep 1 && sed -i 's/40/41/' " + dir_ +
                 "/proj/src/main.c && make -C " + dir_ + "/proj 2>&1 && " +
                 dir_ + "/proj/app && make -C " + dir_ + "/proj clean");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("sum=43"), std::string::npos) << r.out;
  EXPECT_NE(access((dir_ + "/proj/app").c_str(), F_OK), 0);
}

TEST_F(FsMountTest, WorkloadGit) {
  CommandResult r = RunCommand(
      "cd " + dir_ +
      " && git init -q repo && cd repo && git config user.email t@t && "
      "git config user.name t && for i in 1 2 3; do echo line$i >> f.txt; "
      "git add f.txt && git commit -qm c$i; done && git log --oneline | wc -l "
      "&& git fsck --full 2>&1 && git status --short | wc -l");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(r.out.substr(0, 2), "3\n") << r.out;
}

TEST_F(FsMountTest, WorkloadSqlite) {
  CommandResult r = RunCommand(
      "cd " + dir_ +
      " && sqlite3 db.sqlite 'create table t(k integer primary key, v text);' "
      "&& for i in $(seq 1 20); do sqlite3 db.sqlite \"begin; "
      "insert into t(v) select hex(randomblob(100)) from "
      "(with recursive c(x) as (select 1 union all select x+1 from c where "
      "x<50) select x from c); commit;\"; done && sqlite3 db.sqlite "
      "'select count(*) from t; pragma integrity_check;'");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(r.out, "1000\nok\n");
}

TEST_F(FsMountTest, BadInputGetsClearErrors) {
  FsClient& c = cluster_->client();
  EXPECT_EQ(ErrnoOf(c.ResolvePath("/../etc/passwd").status()), EINVAL);
  EXPECT_EQ(ErrnoOf(c.ResolvePath("relative/path").status()), EINVAL);
  EXPECT_EQ(ErrnoOf(c.Lookup(kRootIno, "a/b").status()), EINVAL);
  EXPECT_EQ(ErrnoOf(c.Lookup(kRootIno, "..").status()), EINVAL);
  EXPECT_EQ(ErrnoOf(c.GetAttr(987654321).status()), ENOENT);
  EXPECT_TRUE(
      absl::IsInvalidArgument(c.Read(FileRef{5, 0}, 100, 0, 10).status()));
  // A file never written reads as zeros up to the length the caller claims
  // (a hole), and an unknown inode's chunks are holes too.
  ASSERT_OK_AND_ASSIGN(std::string zeros,
                       c.Read(FileRef{123456789, kChunk}, 10, 0, 10));
  EXPECT_EQ(zeros, std::string(10, '\0'));
}

TEST_F(FsMountTest, ZzCleanUnmountOnSigterm) {
  // A second mount of the same file system sees the first one's files, and
  // goes away cleanly on SIGTERM.
  ASSERT_TRUE(WriteAll(P("shared"), "from mount 1"));
  ASSERT_OK_AND_ASSIGN(std::string second, cluster_->Mount());
  std::string name =
      ::testing::UnitTest::GetInstance()->current_test_info()->name();
  EXPECT_EQ(ReadAll(absl::StrCat(second, "/", name, "/shared")),
            "from mount 1");
  ASSERT_OK(cluster_->Unmount(second));
  EXPECT_FALSE(fs::testing::IsFuseMounted(second));
}

// A process that serves its own mount in-process and crashes while one of
// its threads waits on that mount must still exit (the crash handler aborts
// the FUSE connection); without it the process hangs forever, unkillable.
constexpr char kCrashChildEnv[] = "DSEC_FS_CRASH_CHILD_MNT";

// The child: mounts at $DSEC_FS_CRASH_CHILD_MNT over a "meta server" that
// accepts connections and never answers, so a lookup on the mount blocks in
// the FUSE loop; then aborts.
TEST(FuseMountCrash, ChildBody) {
  const char* mnt = getenv(kCrashChildEnv);
  if (mnt == nullptr) GTEST_SKIP() << "run by CrashWithThreadOnOwnMountExits";
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(lfd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(lfd, 16), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<FsClient> client,
      FsClient::Create(
          {.meta_address = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port)),
           .rpc_timeout = absl::Seconds(300),
           .retry_budget = absl::Seconds(300)}));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<FuseMount> mount,
                       FuseMount::Mount(client.get(), {.mountpoint = mnt}));
  ASSERT_OK(mount->Start());
  std::string file = absl::StrCat(mnt, "/f");
  std::thread([file] {
    int fd = open(file.c_str(), O_RDONLY);
    if (fd >= 0) close(fd);
  }).detach();
  absl::SleepFor(absl::Seconds(1));  // the LOOKUP is now in the loop
  rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  abort();
}

TEST(FuseMountCrash, CrashWithThreadOnOwnMountExits) {
  DSEC_REQUIRE_HOST_FEATURE(geteuid() == 0 && access("/dev/fuse", F_OK) == 0,
                            "root and /dev/fuse");
  char tmpl[] = "/tmp/dsec-fs-crash-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string mnt = tmpl;
  // Everything the child needs is built before fork (exec right after).
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  env.push_back(absl::StrCat(kCrashChildEnv, "=", mnt));
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string self = "/proc/self/exe";
  std::string filter = "--gtest_filter=FuseMountCrash.ChildBody";
  char* argv[] = {self.data(), filter.data(), nullptr};
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execve(argv[0], argv, envp.data());
    _exit(127);
  }
  int status = 0;
  bool exited = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      exited = true;
      break;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  if (!exited) {
    // Release the hung child the way the fix would have, so the suite ends.
    if (std::optional<unsigned> conn = FuseConnection(mnt)) {
      std::ofstream(absl::StrCat("/sys/fs/fuse/connections/", *conn, "/abort"))
          << "1";
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  umount2(mnt.c_str(), MNT_DETACH);
  EXPECT_FALSE(fs::testing::IsFuseMounted(mnt));
  rmdir(mnt.c_str());
  ASSERT_TRUE(exited) << "the crashed child hung on its own mount";
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT)
      << "child status " << status << " (127: exec failed; exit 1: the "
      << "child's setup failed)";
}

}  // namespace
}  // namespace dsec::fs
