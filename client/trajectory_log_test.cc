#include "client/trajectory_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "gtest/gtest.h"

namespace dsec::client {
namespace {

using ::dsec::testing::StatusIs;

dsec::v1::TrajectoryRecord StepRecord(int i, const std::string& out) {
  dsec::v1::TrajectoryRecord r;
  r.mutable_step()->set_step(i);
  r.mutable_step()->mutable_outcome()->set_stdout_data(out);
  return r;
}

TEST(TrajectoryLog, RecordsSurviveReopen) {
  dsec::testing::TempDir dir;
  const std::string path = dir.Join("sub/t.dtl");
  {
    auto log = TrajectoryLog::Open(path, /*sync=*/true);
    ASSERT_TRUE(log.ok()) << log.status();
    EXPECT_TRUE((*log)->records().empty());
    for (int i = 0; i < 100; ++i) {
      ASSERT_TRUE((*log)->Append(StepRecord(i, std::string(i * 10, 'x'))).ok());
    }
  }
  auto log = TrajectoryLog::Open(path, false);
  ASSERT_TRUE(log.ok()) << log.status();
  ASSERT_EQ((*log)->records().size(), 100u);
  EXPECT_EQ((*log)->records()[42].step().outcome().stdout_data(),
            std::string(420, 'x'));
  EXPECT_EQ((*log)->torn_bytes(), 0);
  ASSERT_TRUE((*log)->Append(StepRecord(100, "more")).ok());
  log = TrajectoryLog::Open(path, false);
  EXPECT_EQ((*log)->records().size(), 101u);
}

TEST(TrajectoryLog, TornTailFromACrashIsCutAtEveryByte) {
  dsec::testing::TempDir dir;
  const std::string path = dir.Join("t.dtl");
  {
    auto log = TrajectoryLog::Open(path, false);
    ASSERT_TRUE((*log)->Append(StepRecord(0, "first")).ok());
    ASSERT_TRUE((*log)->Append(StepRecord(1, "second")).ok());
  }
  const auto full = std::filesystem::file_size(path);
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  // Cut the file at every offset inside the second record: the first
  // always survives, the partial second is removed, and appending works.
  for (size_t cut = 1; cut < full; ++cut) {
    {
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(cut));
    }
    auto log = TrajectoryLog::Open(path, false);
    ASSERT_TRUE(log.ok()) << "cut at " << cut << ": " << log.status();
    ASSERT_LE((*log)->records().size(), 1u);
    if (!(*log)->records().empty()) {
      EXPECT_EQ((*log)->records()[0].step().outcome().stdout_data(), "first");
    }
    ASSERT_TRUE((*log)->Append(StepRecord(9, "after")).ok());
    auto again = TrajectoryLog::Open(path, false);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ((*again)->records().back().step().step(), 9);
    EXPECT_EQ((*again)->torn_bytes(), 0);
  }
}

TEST(TrajectoryLog, CorruptionBeforeGoodRecordsIsDataLossAndLeftAlone) {
  dsec::testing::TempDir dir;
  const std::string path = dir.Join("t.dtl");
  {
    auto log = TrajectoryLog::Open(path, false);
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE((*log)->Append(StepRecord(i, "payload")).ok());
    }
  }
  const auto size = std::filesystem::file_size(path);
  {
    int fd = open(path.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, "\xff", 1, 12), 1);  // inside record 0's payload
    close(fd);
  }
  EXPECT_THAT(TrajectoryLog::Open(path, false).status(),
              StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_EQ(std::filesystem::file_size(path), size);
}

TEST(TrajectoryLog, UnopenablePathIsAnError) {
  EXPECT_FALSE(TrajectoryLog::Open("/proc/self/no/such/t.dtl", false).ok());
}

}  // namespace
}  // namespace dsec::client
