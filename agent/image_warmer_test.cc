// ImageWarmer reads an image tree once, within its limits, and concurrent
// callers for one image share the work.
#include "agent/image_warmer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/testing/test_util.h"
#include "fs/image.h"
#include "gtest/gtest.h"
#include "sandbox/sandbox.h"

namespace dsec::agent {
namespace {

TEST(ImageWarmer, ReadsTheTreeOnceWithinItsLimits) {
  ::dsec::testing::TempDir dir;
  std::filesystem::create_directories(dir.Join("usr/lib"));
  std::ofstream(dir.Join("usr/lib/small")) << std::string(1000, 'a');
  std::ofstream(dir.Join("usr/lib/big")) << std::string(5000, 'b');
  std::ofstream(dir.Join("top")) << "t";
  ASSERT_EQ(symlink("usr/lib/small", dir.Join("link").c_str()), 0);
  ASSERT_EQ(mkfifo(dir.Join("fifo").c_str(), 0644), 0);  // never opened

  ImageWarmer warmer(/*max_file_bytes=*/4096, /*max_total_bytes=*/1 << 20);
  ImageWarmStats stats = warmer.Warm(dir.path());
  // usr, usr/lib, small, big, top, link, fifo.
  EXPECT_EQ(stats.entries, 7u);
  EXPECT_EQ(stats.files_read, 2u);  // big is over max_file_bytes
  EXPECT_EQ(stats.bytes_read, 1001u);
  // Once per directory.
  stats = warmer.Warm(dir.path());
  EXPECT_EQ(stats.entries, 0u);

  ImageWarmer budget(/*max_file_bytes=*/1 << 20, /*max_total_bytes=*/1500);
  stats = budget.Warm(dir.path());
  EXPECT_LE(stats.bytes_read, 1500u);
  // A missing directory is not an error, just nothing to do.
  EXPECT_EQ(budget.Warm(dir.Join("missing")).entries, 0u);
}

TEST(ImageWarmer, ConcurrentCallersShareOneWalk) {
  ::dsec::testing::TempDir dir;
  for (int i = 0; i < 50; ++i) {
    std::ofstream(dir.Join("f" + std::to_string(i))) << std::string(100, 'x');
  }
  ImageWarmer warmer;
  std::vector<std::thread> threads;
  std::vector<uint64_t> entries(8);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back(
        [&, t] { entries[t] = warmer.Warm(dir.path()).entries; });
  }
  for (auto& t : threads) t.join();
  uint64_t total = 0;
  for (uint64_t e : entries) total += e;
  EXPECT_EQ(total, 50u);
}

// Images are imported with owners shifted into the sandboxes' id range;
// the two constants must agree or image files turn read-only in sandboxes.
TEST(ImageIds, ImportShiftMatchesTheSandboxUserNamespace) {
  EXPECT_EQ(sandbox::RuntimeOptions{}.uid_base, fs::kImageIdShift);
}

}  // namespace
}  // namespace dsec::agent
