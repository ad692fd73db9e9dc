// SafeRoot: every path stays inside the root, whatever symlinks, "..", FIFOs
// or races sandboxed code sets up. The "host" here is a sibling directory of
// the root holding a secret that no call may read, write or delete.
#include "sandbox/safe_fs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <string>
#include <thread>

#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::sandbox {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class SafeFsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = tmp_.Join("root");
    host_ = tmp_.Join("host");
    ASSERT_EQ(mkdir(root_.c_str(), 0755), 0);
    ASSERT_EQ(mkdir(host_.c_str(), 0755), 0);
    std::ofstream(host_ + "/secret") << "host-secret";
    auto fs = SafeRoot::Open(root_);
    ASSERT_THAT(fs, IsOk());
    fs_ = std::move(*fs);
  }
  void Link(const std::string& target, const std::string& rel) {
    ASSERT_EQ(symlink(target.c_str(), (root_ + "/" + rel).c_str()), 0) << rel;
  }
  bool HostIntact() { return Slurp(host_ + "/secret") == "host-secret"; }

  dsec::testing::TempDir tmp_;
  std::string root_, host_;
  std::unique_ptr<SafeRoot> fs_;
};

TEST_F(SafeFsTest, WriteReadStatListDeleteRoundTrip) {
  ASSERT_THAT(fs_->WriteFile("/a/b/c.txt", "hello", {.create_parents = true}),
              IsOk());
  EXPECT_EQ(fs_->ReadFile("a/b/c.txt").value_or(""), "hello");
  EXPECT_EQ(fs_->ReadFile("/a/b/c.txt", 1, 10).value_or(""), "ello");
  EXPECT_THAT(fs_->ReadFile("/a/b/c.txt", 1, 2),
              StatusIs(absl::StatusCode::kResourceExhausted));
  ASSERT_THAT(fs_->WriteFile("/a/b/c.txt", " world", {.append = true}), IsOk());
  EXPECT_EQ(*fs_->ReadFile("/a/b/c.txt"), "hello world");
  auto info = fs_->Stat("/a/b/c.txt");
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->type, FileType::kRegular);
  EXPECT_EQ(info->size, 11);
  ASSERT_THAT(fs_->WriteFile("/a/b/a.txt", "", {}), IsOk());
  auto list = fs_->List("/a/b");
  ASSERT_THAT(list, IsOk());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name, "a.txt");
  EXPECT_EQ((*list)[1].name, "c.txt");
  EXPECT_THAT(fs_->Delete("/a"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_THAT(fs_->Delete("/a", /*recursive=*/true), IsOk());
  EXPECT_THAT(fs_->Stat("/a"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(SafeFsTest, BadPathsAreInvalidArgumentNotCrashes) {
  EXPECT_THAT(fs_->ReadFile(""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(fs_->ReadFile(std::string("a\0b", 3)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("NUL")));
  EXPECT_THAT(fs_->ReadFile(std::string(5000, 'x')),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(fs_->WriteFile("/", "x"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(fs_->Delete("/.."), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(fs_->MakeDirs("/x/../../y"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(fs_->ReadFile("/f", -1),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(fs_->ReadFile("/missing"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(SafeFsTest, DotDotAndAbsoluteSymlinksStayInsideRoot) {
  // "../host/secret" from the root is clamped to "/host/secret" inside it.
  EXPECT_THAT(fs_->ReadFile("../host/secret"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(fs_->ReadFile("/../../../" + host_ + "/secret"),
              StatusIs(absl::StatusCode::kNotFound));
  Link(host_ + "/secret", "abs");  // absolute: resolved under root
  Link("../host/secret", "rel");   // relative: ".." stops at root
  Link(host_, "dir");              // directory link to the host
  EXPECT_THAT(fs_->ReadFile("/abs"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(fs_->ReadFile("/rel"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(fs_->ReadFile("/dir/secret"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(fs_->List("/dir"), StatusIs(absl::StatusCode::kNotFound));
  // The same link resolves to the sandbox's own copy when there is one.
  ASSERT_THAT(
      fs_->WriteFile(host_ + "/secret", "inside", {.create_parents = true}),
      IsOk());
  EXPECT_EQ(*fs_->ReadFile("/abs"), "inside");
  EXPECT_EQ(Slurp(root_ + host_ + "/secret"), "inside");
  EXPECT_TRUE(HostIntact());
}

TEST_F(SafeFsTest, MagicLinksInProcAreRefused) {
  // A sandbox's /proc/self/root or /proc/<pid>/fd/N would jump anywhere.
  ASSERT_EQ(mkdir((root_ + "/proc").c_str(), 0755), 0);
  Link("/proc/self/root", "proc/r");
  EXPECT_THAT(fs_->ReadFile("/proc/r/etc/hostname"), ::testing::Not(IsOk()));
  ASSERT_EQ(symlink("/proc/self/root", (root_ + "/escape").c_str()), 0);
  EXPECT_THAT(fs_->ReadFile("/escape" + host_ + "/secret"),
              ::testing::Not(IsOk()));
}

TEST_F(SafeFsTest, WritesNeverFollowAFinalSymlink) {
  Link(host_ + "/secret", "link");
  EXPECT_THAT(
      fs_->WriteFile("/link", "pwned"),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("symlink")));
  EXPECT_THAT(fs_->WriteFile("/link", "pwned", {.append = true}),
              ::testing::Not(IsOk()));
  EXPECT_TRUE(HostIntact());
  // Through a directory link the path resolves inside the root: the link's
  // target does not exist there, so the write fails instead of reaching the
  // host; once the sandbox has that directory, the write lands in it.
  Link(host_, "hostdir");
  EXPECT_THAT(
      fs_->WriteFile("/hostdir/secret", "pwned", {.create_parents = true}),
      StatusIs(absl::StatusCode::kNotFound));
  EXPECT_TRUE(HostIntact());
  ASSERT_THAT(fs_->MakeDirs(host_), IsOk());
  ASSERT_THAT(fs_->WriteFile("/hostdir/secret", "pwned"), IsOk());
  EXPECT_TRUE(HostIntact());
  EXPECT_EQ(Slurp(root_ + host_ + "/secret"), "pwned");
}

TEST_F(SafeFsTest, DeleteRemovesLinksNotTheirTargets) {
  Link(host_, "hostdir");
  ASSERT_EQ(mkdir((root_ + "/tree").c_str(), 0755), 0);
  Link(host_, "tree/inner");
  Link(host_ + "/secret", "tree/file");
  ASSERT_THAT(fs_->Delete("/tree", true), IsOk());
  ASSERT_THAT(fs_->Delete("/hostdir"), IsOk());
  EXPECT_TRUE(HostIntact());
  struct stat st;
  EXPECT_EQ(lstat((root_ + "/hostdir").c_str(), &st), -1);
}

TEST_F(SafeFsTest, StatAndListDescribeSymlinksWithoutFollowing) {
  Link("/etc/passwd", "l");
  auto info = fs_->Stat("/l");
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->type, FileType::kSymlink);
  EXPECT_EQ(info->symlink_target, "/etc/passwd");
  auto list = fs_->List("/");
  ASSERT_THAT(list, IsOk());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].symlink_target, "/etc/passwd");
}

TEST_F(SafeFsTest, FifosAndDevicesDoNotHangOrLeak) {
  ASSERT_EQ(mkfifo((root_ + "/fifo").c_str(), 0644), 0);
  EXPECT_THAT(
      fs_->ReadFile("/fifo"),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("regular")));
  EXPECT_THAT(fs_->WriteFile("/fifo", "x"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_EQ(mkdir((root_ + "/d").c_str(), 0755), 0);
  EXPECT_THAT(
      fs_->ReadFile("/d"),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("directory")));
}

TEST_F(SafeFsTest, SizeLimitAndExclusiveCreate) {
  ASSERT_THAT(fs_->WriteFile("/big", std::string(4096, 'x')), IsOk());
  EXPECT_THAT(
      fs_->ReadFile("/big", 0, 100),
      StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("ranges")));
  EXPECT_THAT(fs_->WriteFile("/big", "y", {.exclusive = true}),
              StatusIs(absl::StatusCode::kAlreadyExists));
}

TEST_F(SafeFsTest, RacingSymlinkSwapNeverReachesTheHost) {
  // Sandboxed code flips /d between a real directory and a link to the host
  // while the host reads and writes /d/secret in a loop.
  ASSERT_EQ(mkdir((root_ + "/real").c_str(), 0755), 0);
  std::ofstream(root_ + "/real/secret") << "inside";
  std::atomic<bool> stop{false};
  std::thread flipper([&] {
    const std::string d = root_ + "/d", tmp = root_ + "/d.tmp";
    while (!stop) {
      unlink(tmp.c_str());
      symlink(host_.c_str(), tmp.c_str());
      rename(tmp.c_str(), d.c_str());
      unlink(tmp.c_str());
      symlink((root_ + "/real").c_str(), tmp.c_str());  // host-absolute
      rename(tmp.c_str(), d.c_str());
      unlink(tmp.c_str());
      symlink("real", tmp.c_str());
      rename(tmp.c_str(), d.c_str());
    }
  });
  int leaked = 0;
  for (int i = 0; i < 3000; ++i) {
    auto r = fs_->ReadFile("/d/secret");
    if (r.ok() && *r == "host-secret") ++leaked;
    (void)fs_->WriteFile("/d/secret", "clobber");
  }
  stop = true;
  flipper.join();
  EXPECT_EQ(leaked, 0);
  EXPECT_TRUE(HostIntact());
}

}  // namespace
}  // namespace dsec::sandbox
