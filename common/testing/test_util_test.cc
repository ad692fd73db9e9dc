#include "common/testing/test_util.h"

#include <sys/stat.h>

#include <fstream>

#include "common/testing/status_matchers.h"
#include "gtest/gtest.h"

namespace dsec::testing {
namespace {

TEST(TempDir, CreatesAndRemovesRecursively) {
  std::string path;
  {
    TempDir dir;
    path = dir.path();
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISDIR(st.st_mode));
    ASSERT_EQ(mkdir(dir.Join("sub").c_str(), 0755), 0);
    std::ofstream(dir.Join("sub/f")) << "x";
  }
  struct stat st;
  EXPECT_NE(stat(path.c_str(), &st), 0);
}

TEST(TempDir, TwoDirsDiffer) {
  TempDir a, b;
  EXPECT_NE(a.path(), b.path());
}

TEST(FreePort, ReturnsUsablePort) {
  ASSERT_OK_AND_ASSIGN(int port, PickFreeLoopbackPort());
  EXPECT_GT(port, 0);
  EXPECT_LT(port, 65536);
}

}  // namespace
}  // namespace dsec::testing
