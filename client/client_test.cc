// The C++ client against a real cluster (controller + agent processes on
// loopback): lifecycle, groups, exec (blocking, async, streaming), files,
// idempotent retries, and the program-failure / infra-failure split.
#include "client/client.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/testing/test_cluster.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sandbox/cgroup.h"

namespace dsec::client {
namespace {

using ::dsec::testing::StatusIs;
using ::testing::HasSubstr;

class ClientTest : public testing::ClusterTest<2> {
 protected:
  dsec::v1::SandboxSpec SmallSpec() {
    dsec::v1::SandboxSpec spec;
    spec.mutable_limits()->set_memory_bytes(256 << 20);
    spec.mutable_limits()->set_cpu_millicores(500);
    return spec;
  }
};

TEST_F(ClientTest, StateSurvivesBetweenExecsAndFailuresAreTyped) {
  auto sb = client_->CreateSandbox(SmallSpec());
  ASSERT_TRUE(sb.ok()) << sb.status();
  auto r = (*sb)->Run(Command::Shell("echo hello > /root/f && cat /root/f"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->ok());
  EXPECT_EQ(r->stdout_data, "hello\n");

  // The program failing is an outcome, not an error.
  r = (*sb)->Run(Command::Shell("cat /root/f >&2; exit 3"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->kind, ExitKind::kExited);
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->stderr_data, "hello\n");

  Command slow = Command::Shell("sleep 30");
  slow.timeout = absl::Milliseconds(300);
  r = (*sb)->Run(slow);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->kind, ExitKind::kTimedOut);

  r = (*sb)->Run(Command::Argv({"sh", "-c", "kill -SEGV $$"}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->kind, ExitKind::kSignaled);
  EXPECT_EQ(r->signal, SIGSEGV);

  // A bad request is an error, and not "lost".
  r = (*sb)->Run(Command{});
  EXPECT_THAT(r.status(), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_FALSE(IsSandboxLost(r.status()));

  ASSERT_OK((*sb)->Delete());
  // The infrastructure failing (the sandbox is gone) is an error that says
  // so.
  r = (*sb)->Run(Command::Shell("true"));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(IsSandboxLost(r.status())) << r.status();
}

TEST_F(ClientTest, ActionIdNeverRunsTwice) {
  auto sb = client_->CreateSandbox(SmallSpec());
  ASSERT_TRUE(sb.ok()) << sb.status();
  Command c = Command::Shell("echo x >> /root/log; wc -l < /root/log");
  c.action_id = "step-1";
  auto a = (*sb)->Run(c);
  auto b = (*sb)->Run(c);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->stdout_data, "1\n");
  EXPECT_EQ(b->stdout_data, "1\n");
  EXPECT_FALSE(a->replayed);
  EXPECT_TRUE(b->replayed);
  // Same id, different command: refused.
  c.shell = "echo other";
  EXPECT_THAT((*sb)->Run(c).status(),
              StatusIs(absl::StatusCode::kAlreadyExists));
  ASSERT_OK((*sb)->Delete());
}

TEST_F(ClientTest, GroupRunsEverywhereAndSpreadsOverNodes) {
  auto g = client_->CreateGroup(SmallSpec(), 6);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_EQ(g->size(), 6u);
  std::set<std::string> nodes;
  for (const auto& m : g->members()) nodes.insert(m->node_id());
  EXPECT_EQ(nodes.size(), 2u);
  auto results = g->RunAll(Command::Shell("hostname; echo $((6*7))"));
  ASSERT_EQ(results.size(), 6u);
  for (const auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->stdout_data, "sandbox\n42\n");
  }
  std::vector<Command> each;
  for (int i = 0; i < 6; ++i) {
    each.push_back(Command::Shell(absl::StrCat("echo ", i)));
  }
  results = g->RunEach(each);
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(results[i].ok());
    EXPECT_EQ(results[i]->stdout_data, absl::StrCat(i, "\n"));
  }
  ASSERT_OK(g->Delete());
  auto d = (*g)[0]->Describe();
  ASSERT_TRUE(d.ok());
  EXPECT_THAT(dsec::v1::SandboxState_Name(d->state()), HasSubstr("TERMINAT"));
}

TEST_F(ClientTest, ManyAsyncExecsShareFewThreads) {
  auto g = client_->CreateGroup(SmallSpec(), 8);
  ASSERT_TRUE(g.ok()) << g.status();
  constexpr int kPerSandbox = 25;
  absl::Mutex mu;
  int done = 0, ok = 0;
  for (int i = 0; i < kPerSandbox; ++i) {
    for (const auto& m : g->members()) {
      m->RunAsync(Command::Shell("echo hi"),
                  [&](absl::StatusOr<ExecOutcome> r) {
                    absl::MutexLock l(&mu);
                    ++done;
                    ok += r.ok() && r->stdout_data == "hi\n";
                  });
    }
  }
  const int total = kPerSandbox * static_cast<int>(g->size());
  absl::MutexLock l(&mu);
  mu.Await(absl::Condition(
      +[](std::pair<int*, int>* p) { return *p->first == p->second; },
      new std::pair<int*, int>(&done, total)));
  EXPECT_EQ(ok, total);
  ASSERT_OK(g->Delete());
}

TEST_F(ClientTest, StreamingDeliversOutputAsItComes) {
  auto sb = client_->CreateSandbox(SmallSpec());
  ASSERT_TRUE(sb.ok()) << sb.status();
  std::string seen;
  std::atomic<int> chunks{0};
  auto r = (*sb)->RunStreaming(
      Command::Shell("for i in 1 2 3; do echo $i; sleep 0.1; done; echo e >&2"),
      [&](int stream, absl::string_view data) {
        seen += absl::StrCat(stream, ":", data);
        ++chunks;
      });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GE(chunks.load(), 3);
  EXPECT_THAT(seen, HasSubstr("1:3\n"));
  EXPECT_THAT(seen, HasSubstr("2:e\n"));
  EXPECT_EQ(r->stdout_data, "1\n2\n3\n");
  ASSERT_OK((*sb)->Delete());
}

TEST_F(ClientTest, FilesRoundTripIncludingLargeAndTruncatedReads) {
  auto sb = client_->CreateSandbox(SmallSpec());
  ASSERT_TRUE(sb.ok()) << sb.status();
  std::string big(3 << 20, 'x');
  for (size_t i = 0; i < big.size(); i += 4096) big[i] = 'a' + (i / 4096) % 26;
  ASSERT_OK((*sb)->WriteFile("/root/d/big.bin", big));
  bool truncated = true;
  auto back = (*sb)->ReadFile("/root/d/big.bin", int64_t{8} << 20, &truncated);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, big);
  EXPECT_FALSE(truncated);
  back = (*sb)->ReadFile("/root/d/big.bin", 10, &truncated);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, big.substr(0, 10));
  EXPECT_TRUE(truncated);

  auto r = (*sb)->Run(Command::Shell("sha1sum < /root/d/big.bin | cut -c1-8"));
  ASSERT_TRUE(r.ok());
  auto ls = (*sb)->ListFiles("/root/d");
  ASSERT_TRUE(ls.ok()) << ls.status();
  ASSERT_EQ(ls->size(), 1u);
  EXPECT_EQ((*ls)[0].size_bytes, static_cast<int64_t>(big.size()));
  auto st = (*sb)->StatFile("/root/d");
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(st->is_dir);

  EXPECT_THAT((*sb)->ReadFile("/root/nope", 100).status(),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_FALSE(IsSandboxLost((*sb)->ReadFile("/root/nope", 100).status()));
  EXPECT_THAT((*sb)->ReadFile("/root/d", 100).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  // A symlink planted inside does not lead the file API out.
  ASSERT_TRUE((*sb)->Run(Command::Shell("ln -s /etc/shadow /root/esc")).ok());
  auto esc = (*sb)->ReadFile("/root/esc", 1000);
  if (esc.ok()) EXPECT_THAT(*esc, ::testing::Not(HasSubstr("root:")));
  ASSERT_OK((*sb)->DeleteFile("/root/d", /*recursive=*/true));
  EXPECT_THAT((*sb)->StatFile("/root/d").status(),
              StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK((*sb)->Delete());
}

TEST_F(ClientTest, ParkSnapshotAndForkCarryTheFilesystem) {
  auto sb = client_->CreateSandbox(SmallSpec());
  ASSERT_TRUE(sb.ok()) << sb.status();
  ASSERT_OK((*sb)->WriteFile("/root/state.txt", "prefix"));
  ASSERT_OK((*sb)->Park());
  EXPECT_FALSE((*sb)->Run(Command::Shell("true")).ok());
  ASSERT_OK((*sb)->Unpark());
  auto g = client_->Fork(**sb, 3);
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_EQ(g->size(), 3u);
  auto results = g->RunAll(Command::Shell("cat /root/state.txt"));
  for (const auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->stdout_data, "prefix");
  }
  ASSERT_OK(g->Delete());
  ASSERT_OK((*sb)->Delete());
}

TEST_F(ClientTest, AttachAfterRestartAndUnknownIdsAreLost) {
  auto sb = client_->CreateSandbox(SmallSpec());
  ASSERT_TRUE(sb.ok()) << sb.status();
  ASSERT_OK((*sb)->WriteFile("/root/x", "1"));
  // A second client (a restarted rollout process) picks the sandbox up.
  auto again = client_->Attach((*sb)->id());
  ASSERT_TRUE(again.ok()) << again.status();
  auto r = (*again)->ReadFile("/root/x", 10);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "1");
  auto missing = client_->Attach("sb-does-not-exist");
  EXPECT_TRUE(IsSandboxLost(missing.status())) << missing.status();
  ASSERT_OK((*sb)->Delete());
}

}  // namespace
}  // namespace dsec::client
