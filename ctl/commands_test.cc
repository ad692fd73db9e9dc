// dsecctl without a cluster: usage errors, unreachable controllers and
// table formatting. The end-to-end behaviour against a live local cluster is
// in tests/cluster_test.cc.
#include "ctl/commands.h"

#include <sstream>

#include "common/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::ctl {
namespace {

using ::testing::HasSubstr;

struct Result {
  int rc;
  std::string out, err;
};

Result RunCmd(std::vector<std::string> args, Output output = Output::kTable) {
  CommandContext ctx;
  // Nothing listens there: a closed loopback port.
  ctx.conn.controller =
      absl::StrCat("127.0.0.1:", *dsec::testing::PickFreeLoopbackPort());
  ctx.conn.timeout = absl::Seconds(2);
  ctx.output = output;
  std::ostringstream out, err;
  int rc = Run(ctx, args, out, err);
  return {rc, out.str(), err.str()};
}

TEST(Dsecctl, HelpAndUsageErrors) {
  Result r = RunCmd({"help"});
  EXPECT_EQ(r.rc, 0);
  EXPECT_THAT(r.out, HasSubstr("local up"));
  EXPECT_EQ(RunCmd({}).rc, 2);
  r = RunCmd({"frobnicate"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_THAT(r.err, HasSubstr("unknown command 'frobnicate'"));
  r = RunCmd({"nodes", "cordon"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_THAT(r.err, HasSubstr("nodes cordon NODE"));
  r = RunCmd({"jobs", "create", "x", "--max_sandboxes", "lots"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_THAT(r.err, HasSubstr("not a non-negative integer"));
  r = RunCmd({"jobs", "create", "x", "--memory", "big"});
  EXPECT_EQ(r.rc, 2);
  r = RunCmd({"sandboxes", "exec", "sb-1"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_THAT(r.err, HasSubstr("-- CMD"));
  r = RunCmd({"sandboxes", "list", "--job"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_THAT(r.err, HasSubstr("needs a value"));
  r = RunCmd({"sandboxes", "list", "--state", "sleepy"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.err, HasSubstr("unknown state 'sleepy'"));
  r = RunCmd({"demo", "--count", "0"});
  EXPECT_EQ(r.rc, 2);
}

TEST(Dsecctl, UnreachableControllerSaysHowToFixIt) {
  Result r = RunCmd({"nodes", "list"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_THAT(r.err, HasSubstr("is the controller running"));
  EXPECT_THAT(r.err, HasSubstr("dsecctl local up"));
}

TEST(Dsecctl, TablesAlignColumns) {
  std::ostringstream out;
  PrintTable({{"A", "LONGER", "C"}, {"xxxx", "y", ""}}, out);
  EXPECT_EQ(out.str(), "A     LONGER  C\nxxxx  y\n");
}

}  // namespace
}  // namespace dsec::ctl
