// A real cluster for client end-to-end tests: one dsec-controller and N
// dsec-agent processes on loopback (binaries from $DSEC_BIN_DIR), stopped
// with SIGTERM when the object dies. Faults are real: KillAgent sends
// SIGKILL, so the controller marks the node dead after its heartbeat
// timeout (3 s here) and the node's sandboxes LOST. Not thread-safe.
#ifndef DSEC_CLIENT_TESTING_TEST_CLUSTER_H_
#define DSEC_CLIENT_TESTING_TEST_CLUSTER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "common/testing/subprocess.h"

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

}  // namespace dsec::client::testing

#endif  // DSEC_CLIENT_TESTING_TEST_CLUSTER_H_
