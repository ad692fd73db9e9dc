// Images on dsec-fs, end to end in local mode: a tiny root file system is
// imported (as a tarball, with dsecctl's ImportImage) into the local
// cluster's dsec-fs, sealed, and a sandbox created with `image` runs from it,
// read lazily through the FUSE mount as the overlay's lower layer: the
// image's files are there, the host's /usr is not, writes land in the
// sandbox's own layer and the image stays immutable. Unknown and malformed
// image names get clear errors.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "ctl/fs_commands.h"
#include "ctl/local_cluster.h"
#include "fs/fs_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sandbox/cgroup.h"

namespace dsec {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Copies `path` (and, for a binary, the libraries `ldd` names) into `root`.
void CopyWithLibs(const std::string& path, const std::string& root) {
  std::set<std::string> files = {path};
  dsec::testing::CommandResult r =
      dsec::testing::RunCommand("ldd " + path + " 2>/dev/null");
  for (absl::string_view line : absl::StrSplit(r.out, '\n')) {
    for (absl::string_view word :
         absl::StrSplit(line, absl::ByAnyChar(" \t"))) {
      if (!word.empty() && word[0] == '/') files.insert(std::string(word));
    }
  }
  for (const std::string& f : files) {
    std::filesystem::path dst = root + f;
    std::filesystem::create_directories(dst.parent_path());
    std::filesystem::copy_file(
        std::filesystem::canonical(f), dst,
        std::filesystem::copy_options::overwrite_existing);
    chmod(dst.c_str(), 0755);
  }
}

class FsImageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DSEC_REQUIRE_HOST_FEATURE(geteuid() == 0 && sandbox::CgroupsAvailable() &&
                                  access("/dev/fuse", F_OK) == 0,
                              "root with cgroups and /dev/fuse");
  }
  dsec::testing::TempDir dir_;
};

TEST_F(FsImageTest, SandboxRunsFromAnImageImportedIntoDsecFs) {
  // A root file system with a shell, a marker file and the dirs the runtime
  // mounts over.
  const std::string rootfs = dir_.Join("rootfs");
  CopyWithLibs("/bin/sh", rootfs);
  CopyWithLibs("/bin/cat", rootfs);
  CopyWithLibs("/bin/ls", rootfs);
  CopyWithLibs("/bin/stat", rootfs);
  for (const char* d : {"/etc", "/tmp", "/proc", "/dev", "/root", "/data"}) {
    std::filesystem::create_directories(rootfs + d);
  }
  chmod((rootfs + "/tmp").c_str(), 01777);
  std::ofstream(rootfs + "/etc/passwd") << "root:x:0:0:root:/root:/bin/sh\n";
  std::ofstream(rootfs + "/etc/group") << "root:x:0:\n";
  std::ofstream(rootfs + "/data/marker") << "from the image\n";
  dsec::testing::CommandResult tar = dsec::testing::RunCommand(
      "tar -C " + rootfs + " -cf " + dir_.Join("tiny.tar") + " .");
  ASSERT_EQ(tar.exit_code, 0) << tar.out;

  ctl::LocalClusterOptions options;
  options.data_dir = dir_.Join("local");
  options.controller_port = 0;
  options.fs_meta_port = 0;
  options.warm_pool_size = 0;
  options.max_sandboxes = 4;
  options.init_path = dsec::testing::BinDir() + "/dsec-init";
  auto cluster = ctl::LocalCluster::Create(options);
  ASSERT_OK(cluster.status());

  auto fs_client =
      fs::FsClient::Create({.meta_address = (*cluster)->fs_meta_address()});
  ASSERT_OK(fs_client.status());
  ASSERT_OK_AND_ASSIGN(
      ctl::ImportStats stats,
      ctl::ImportImage(**fs_client, "tiny", dir_.Join("tiny.tar")));
  EXPECT_GE(stats.files, 4u);
  // Importing the same name again is refused; bad names too.
  EXPECT_TRUE(absl::IsAlreadyExists(
      ctl::ImportImage(**fs_client, "tiny", rootfs).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      ctl::ImportImage(**fs_client, "../evil", rootfs).status()));
  // Sealed: nothing in it may change, even through the mount.
  ASSERT_OK_AND_ASSIGN(v1::Inode marker,
                       (*fs_client)->Stat("/images/tiny/data/marker"));
  EXPECT_TRUE(marker.sealed());
  const std::string mounted =
      (*cluster)->fs_mountpoint() + "/images/tiny/data/marker";
  EXPECT_EQ(unlink(mounted.c_str()), -1);
  EXPECT_EQ(errno, EPERM);

  client::ClientOptions admin{.controller = (*cluster)->controller_address()};
  ASSERT_OK_AND_ASSIGN(client::JobInfo job,
                       client::CreateJob(admin, "image-test", 4));
  ASSERT_OK_AND_ASSIGN(
      auto client,
      client::Client::Create({.controller = (*cluster)->controller_address(),
                              .api_key = job.api_key}));
  v1::SandboxSpec spec;
  spec.set_image("tiny");
  ASSERT_OK_AND_ASSIGN(auto sb, client->CreateSandbox(spec));
  ASSERT_OK_AND_ASSIGN(
      client::ExecOutcome out,
      sb->Run(client::Command::Shell(
          "cat /data/marker; echo changed > /tmp/new; cat /tmp/new; "
          "echo overwritten > /data/marker && cat /data/marker; "
          "stat -c %u:%g /data/marker /etc/passwd; "
          "ls /usr 2>&1; echo done")));
  EXPECT_EQ(out.exit_code, 0) << out.stdout_data << "|" << out.stderr_data;
  // Image owners are stored shifted into the sandboxes' id range: inside,
  // root's files belong to root, and overwriting one copies it up into the
  // writable layer.
  EXPECT_THAT(out.stdout_data,
              HasSubstr("from the image\nchanged\noverwritten\n0:0\n0:0\n"));
  // Only the image: no host /usr bound in.
  EXPECT_THAT(out.stdout_data, HasSubstr("No such file"));
  EXPECT_THAT(out.stdout_data, HasSubstr("done"));
  // The image is unchanged, on dsec-fs and in the next sandbox.
  std::ifstream in(mounted);
  std::stringstream content;
  content << in.rdbuf();
  EXPECT_EQ(content.str(), "from the image\n");
  ASSERT_OK(sb->Delete());
  ASSERT_OK_AND_ASSIGN(auto next, client->CreateSandbox(spec));
  ASSERT_OK_AND_ASSIGN(client::ExecOutcome again,
                       next->Run(client::Command::Shell("cat /data/marker")));
  EXPECT_EQ(again.stdout_data, "from the image\n");
  ASSERT_OK(next->Delete());

  // Unknown and malformed images.
  spec.set_image("no-such-image");
  absl::Status missing = client->CreateSandbox(spec).status();
  EXPECT_TRUE(absl::IsNotFound(missing)) << missing;
  EXPECT_THAT(std::string(missing.message()),
              HasSubstr("dsecctl image import"));
  spec.set_image("../../etc");
  EXPECT_TRUE(absl::IsInvalidArgument(client->CreateSandbox(spec).status()));
  (*cluster)->Shutdown();
}

}  // namespace
}  // namespace dsec
