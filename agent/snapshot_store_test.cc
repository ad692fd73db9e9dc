// SnapshotStore on a plain directory standing in for the dsec-fs mount: the
// store records special files and xattrs in the manifest (it never makes
// them on the "mount"), so the round trip is the one dsec-fs sees. Special
// files and trusted.* xattrs need root.
#include "agent/snapshot_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::agent {
namespace {

using ::testing::HasSubstr;

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class SnapshotStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    mount_ = dir_.Join("mnt");
    std::filesystem::create_directories(mount_ + "/images/img/bin");
  }
  std::unique_ptr<SnapshotStore> NewStore(const std::string& cache) {
    auto store = SnapshotStore::Create(
        {.fs_mount_dir = mount_, .cache_dir = dir_.Join(cache)});
    EXPECT_OK(store.status());
    return store.ok() ? std::move(*store) : nullptr;
  }
  // A layer with a file, a symlink, a FIFO-free subdir and (as root) a
  // whiteout and an opaque directory.
  std::string MakeLayer(bool specials) {
    const std::string layer = dir_.Join("layer");
    std::filesystem::create_directories(layer + "/root/opaque");
    std::ofstream(layer + "/root/file") << "hello";
    std::ofstream(layer + "/root/opaque/inside") << "x";
    symlink("/etc/passwd", (layer + "/root/link").c_str());
    if (specials) {
      EXPECT_EQ(mknod((layer + "/root/gone").c_str(), S_IFCHR | 0, 0), 0);
      EXPECT_EQ(setxattr((layer + "/root/opaque").c_str(),
                         "trusted.overlay.opaque", "y", 1, 0),
                0);
    }
    chmod(layer.c_str(), 0555);
    return layer;
  }
  dsec::testing::TempDir dir_;
  std::string mount_;
};

TEST(SnapshotId, OnlySafeNames) {
  EXPECT_OK(ValidateSnapshotId("snap-0123abcd"));
  for (const char* bad : {"", "..", "a/b", "../x", "a b", "snap.1"}) {
    EXPECT_TRUE(absl::IsInvalidArgument(ValidateSnapshotId(bad))) << bad;
  }
  EXPECT_TRUE(
      absl::IsInvalidArgument(ValidateSnapshotId(std::string(129, 'a'))));
}

TEST(ManifestLayer, ExtrasRoundTrip) {
  sandbox::LayerExtras extras;
  extras.specials.push_back({"a/b", S_IFCHR | 0644, 0, 10, 20});
  extras.xattrs.push_back({"a", "trusted.overlay.opaque", "y"});
  extras.entries = 7;
  extras.file_bytes = 99;
  sandbox::LayerExtras back = FromManifestLayer(ToManifestLayer(extras));
  ASSERT_EQ(back.specials.size(), 1u);
  EXPECT_EQ(back.specials[0].path, "a/b");
  EXPECT_EQ(back.specials[0].mode, static_cast<mode_t>(S_IFCHR | 0644));
  EXPECT_EQ(back.specials[0].uid, 10u);
  EXPECT_EQ(back.specials[0].gid, 20u);
  ASSERT_EQ(back.xattrs.size(), 1u);
  EXPECT_EQ(back.xattrs[0].name, "trusted.overlay.opaque");
  EXPECT_EQ(back.xattrs[0].value, "y");
  EXPECT_EQ(back.entries, 7u);
  EXPECT_EQ(back.file_bytes, 99u);
}

TEST_F(SnapshotStoreTest, ExportThenFetchOnAnotherNodeKeepsEverything) {
  const bool root = geteuid() == 0;
  const std::string layer = MakeLayer(root);
  auto a = NewStore("cache-a");
  auto b = NewStore("cache-b");
  ASSERT_OK_AND_ASSIGN(std::string fs_path,
                       a->Export("snap-1", {layer, mount_ + "/images/img"}));
  EXPECT_EQ(fs_path, "/snapshots/snap-1");
  // Nothing special was made on the "mount".
  for (const auto& e : std::filesystem::recursive_directory_iterator(
           mount_ + "/snapshots/snap-1")) {
    EXPECT_TRUE(e.is_regular_file() || e.is_directory() || e.is_symlink())
        << e.path();
  }
  EXPECT_TRUE(absl::IsAlreadyExists(a->Export("snap-1", {layer}).status()));

  ASSERT_OK_AND_ASSIGN(std::vector<std::string> stack, b->Fetch("snap-1"));
  ASSERT_EQ(stack.size(), 2u);
  EXPECT_EQ(stack[0], dir_.Join("cache-b") + "/snap-1/0");
  EXPECT_EQ(stack[1], mount_ + "/images/img");
  EXPECT_EQ(Slurp(stack[0] + "/root/file"), "hello");
  EXPECT_EQ(std::filesystem::read_symlink(stack[0] + "/root/link"),
            "/etc/passwd");
  struct stat st;
  ASSERT_EQ(stat(stack[0].c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0555u);
  if (root) {
    ASSERT_EQ(lstat((stack[0] + "/root/gone").c_str(), &st), 0);
    EXPECT_TRUE(S_ISCHR(st.st_mode));
    EXPECT_EQ(st.st_rdev, 0u);
    char value[8];
    EXPECT_EQ(getxattr((stack[0] + "/root/opaque").c_str(),
                       "trusted.overlay.opaque", value, sizeof(value)),
              1);
  }
  // Cached: a second fetch is the same stack, even with dsec-fs gone.
  ASSERT_OK(a->Remove("snap-1"));
  EXPECT_FALSE(std::filesystem::exists(mount_ + "/snapshots/snap-1"));
  ASSERT_OK_AND_ASSIGN(std::vector<std::string> again, b->Fetch("snap-1"));
  EXPECT_EQ(again, stack);
  EXPECT_OK(a->Remove("snap-1"));  // absent: fine
  b->RemoveCached("snap-1");
  EXPECT_FALSE(std::filesystem::exists(dir_.Join("cache-b") + "/snap-1"));
  EXPECT_TRUE(absl::IsNotFound(b->Fetch("snap-1").status()));
}

TEST_F(SnapshotStoreTest, HostileSnapshotDirectoriesAreDataLoss) {
  const std::string layer = MakeLayer(false);
  auto a = NewStore("cache-a");
  auto b = NewStore("cache-b");
  EXPECT_TRUE(absl::IsInvalidArgument(b->Fetch("../../etc").status()));
  absl::Status missing = b->Fetch("snap-missing").status();
  EXPECT_TRUE(absl::IsNotFound(missing)) << missing;
  EXPECT_THAT(std::string(missing.message()), HasSubstr("not on dsec-fs"));

  // Manifests rewritten to point outside, at devices, through symlinks.
  auto tamper = [&](const std::string& id,
                    const std::function<void(v1::SnapshotManifest&)>& edit) {
    ASSERT_OK(a->Export(id, {layer}).status());
    const std::string path = mount_ + "/snapshots/" + id + "/manifest.pb";
    v1::SnapshotManifest m;
    ASSERT_TRUE(m.ParseFromString(Slurp(path)));
    edit(m);
    chmod(path.c_str(), 0644);
    std::ofstream(path, std::ios::trunc) << m.SerializeAsString();
  };
  tamper("snap-outside", [](v1::SnapshotManifest& m) {
    m.mutable_layers(0)->Clear();
    m.mutable_layers(0)->set_fs_path("/../../etc");
  });
  tamper("snap-device", [](v1::SnapshotManifest& m) {
    auto* sp = m.mutable_layers(0)->add_specials();
    sp->set_path("root/null");
    sp->set_mode(S_IFCHR | 0666);
    sp->set_rdev(makedev(1, 3));
  });
  tamper("snap-dotdot", [](v1::SnapshotManifest& m) {
    auto* sp = m.mutable_layers(0)->add_specials();
    sp->set_path("../escape");
    sp->set_mode(S_IFIFO | 0644);
  });
  tamper("snap-symlink", [](v1::SnapshotManifest& m) {
    auto* sp = m.mutable_layers(0)->add_specials();
    sp->set_path("root/link/evil");  // root/link -> /etc/passwd
    sp->set_mode(S_IFIFO | 0644);
  });
  tamper("snap-xattr", [](v1::SnapshotManifest& m) {
    auto* x = m.mutable_layers(0)->add_xattrs();
    x->set_path("root/file");
    x->set_name("security.capability");
    x->set_value("x");
  });
  tamper("snap-count", [](v1::SnapshotManifest& m) {
    m.mutable_layers(0)->set_file_bytes(m.layers(0).file_bytes() + 1);
  });
  for (const char* id : {"snap-outside", "snap-device", "snap-dotdot",
                         "snap-symlink", "snap-xattr", "snap-count"}) {
    absl::Status s = b->Fetch(id).status();
    EXPECT_TRUE(absl::IsDataLoss(s)) << id << ": " << s;
    EXPECT_FALSE(std::filesystem::exists(dir_.Join("cache-b") + "/" + id));
  }
  EXPECT_FALSE(std::filesystem::exists("/escape"));
  // No temporary copies are left behind.
  for (const auto& e :
       std::filesystem::directory_iterator(dir_.Join("cache-b"))) {
    ADD_FAILURE() << "left behind: " << e.path();
  }
}

}  // namespace
}  // namespace dsec::agent
