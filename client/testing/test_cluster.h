// A real cluster for client end-to-end tests: one dsec-controller and N
// dsec-agent processes on loopback (binaries from $DSEC_BIN_DIR), stopped
// with SIGTERM when the object dies. Faults are real: KillAgent sends
// SIGKILL, so the controller marks the node dead after its heartbeat
// timeout (3 s here) and the node's sandboxes LOST. Not thread-safe.
#ifndef DSEC_CLIENT_TESTING_TEST_CLUSTER_H_
#define DSEC_CLIENT_TESTING_TEST_CLUSTER_H_

#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "common/testing/subprocess.h"
#include "common/testing/test_util.h"
#include "gtest/gtest.h"
#include "sandbox/cgroup.h"

namespace dsec::client::testing {

struct TestClusterOptions {
  std::string dir;  // state and logs; must exist
  int agents = 1;
  int max_sandboxes_per_agent = 200;
  int warm_pool = 4;  // class "default" per agent
};

class TestCluster {
 public:
  static absl::StatusOr<std::unique_ptr<TestCluster>> Start(
      const TestClusterOptions& options);
  ~TestCluster();

  std::string controller() const;
  // A job with `max_sandboxes` quota and a client holding its key.
  absl::StatusOr<std::shared_ptr<Client>> NewJobClient(const std::string& name,
                                                       int max_sandboxes = 1000,
                                                       ClientOptions base = {});
  // SIGKILL of agent i (its sandboxes die with it: the agent's cgroups are
  // reclaimed by the next agent on the node; here none restarts).
  void KillAgent(int i);
  absl::Status RestartAgent(int i);
  // Node id of agent i ("node-<i>").
  static std::string NodeId(int i);
  // Waits until `n` nodes are READY.
  absl::Status WaitReady(int n, absl::Duration timeout);
  std::string Logs() const;

 private:
  TestCluster() = default;
  absl::Status StartController();
  absl::Status StartAgent(int i);

  TestClusterOptions options_;
  int controller_port_ = 0;
  std::string secret_;
  std::unique_ptr<dsec::testing::Subprocess> controller_;
  std::vector<std::unique_ptr<dsec::testing::Subprocess>> agents_;
};

// A TEST_F fixture with one cluster of kAgents agents per suite. Tests skip
// without root and cgroups (and fail under CI); each gets client_, the
// client of a fresh job. A subclass's SetUp calls ClusterTest::SetUp first
// and returns if it skipped or failed.
template <int kAgents>
class ClusterTest : public ::testing::Test {
 protected:
  static bool HostSupported() {
    return geteuid() == 0 && sandbox::CgroupsAvailable();
  }
  static void SetUpTestSuite() {
    if (!HostSupported()) return;
    dir_ = new dsec::testing::TempDir();
    auto c = TestCluster::Start({.dir = dir_->path(), .agents = kAgents});
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = c->release();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    DSEC_REQUIRE_HOST_FEATURE(HostSupported(), "root with cgroups");
    ASSERT_NE(cluster_, nullptr);
    static int n = 0;
    auto c = cluster_->NewJobClient(absl::StrCat("job-", n++));
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = *c;
  }

  static inline dsec::testing::TempDir* dir_ = nullptr;
  static inline TestCluster* cluster_ = nullptr;
  std::shared_ptr<Client> client_;
};

}  // namespace dsec::client::testing

#endif  // DSEC_CLIENT_TESTING_TEST_CLUSTER_H_
