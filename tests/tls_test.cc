// Mutual TLS on every hop: client -> controller, client -> agent, agent <->
// controller, with certificates from a throwaway CA made by openssl here.
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "agent/agent_server.h"
#include "common/testing/test_util.h"
#include "common/tls.h"
#include "common/token.h"
#include "controller/controller_server.h"
#include "ctl/local_cluster.h"
#include "ctl/rpc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sandbox/cgroup.h"

namespace dsec {
namespace {

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DSEC_REQUIRE_HOST_FEATURE(geteuid() == 0 && sandbox::CgroupsAvailable(),
                              "root with cgroups");
    DSEC_REQUIRE_HOST_FEATURE(access("/usr/bin/openssl", X_OK) == 0, "openssl");
    const std::string d = dir_.path();
    std::ofstream(d + "/ext.cnf")
        << "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
    const std::string cmd = absl::StrCat(
        "cd ", d,
        " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out "
        "ca.pem"
        " -days 1 -subj /CN=dsec-test-ca",
        " && openssl req -newkey rsa:2048 -nodes -keyout node.key -out node.csr"
        " -subj /CN=127.0.0.1",
        " && openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key "
        "-CAcreateserial"
        " -out node.pem -days 1 -extfile ext.cnf",
        " && openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out "
        "other.pem"
        " -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1",
        " ) >/dev/null 2>&1");
    ASSERT_EQ(system(("( " + cmd).c_str()), 0) << "openssl failed";
    tls_ = {d + "/node.pem", d + "/node.key", d + "/ca.pem"};
  }
  dsec::testing::TempDir dir_;
  TlsFiles tls_;
};

TEST_F(TlsTest, EveryHopSpeaksMutualTlsAndPlaintextIsRefused) {
  const std::string secret = *LoadOrCreateSecret(dir_.Join("secret"), true);
  controller::ControllerOptions copts;
  copts.data_dir = dir_.Join("controller");
  copts.token_secret = secret;
  copts.tls = tls_;
  auto controller = controller::ControllerServer::Create(copts);
  ASSERT_TRUE(controller.ok()) << controller.status();
  const std::string address = absl::StrCat("127.0.0.1:", (*controller)->port());

  agent::AgentOptions aopts;
  aopts.node_id = "tls-node";
  aopts.token_secret = secret;
  aopts.controller_address = address;
  aopts.state_dir = dir_.Join("agent");
  aopts.init_path = dsec::testing::BinDir() + "/dsec-init";
  aopts.max_sandboxes = 4;
  aopts.cpu_millicores = 4000;
  aopts.memory_bytes = int64_t{4} << 30;
  aopts.tls = tls_;
  auto agent = agent::AgentServer::Create(aopts);
  ASSERT_TRUE(agent.ok()) << agent.status();

  ctl::ConnOptions opts;
  opts.controller = address;
  opts.credentials = *MakeChannelCredentials(tls_);
  opts.timeout = absl::Seconds(10);
  ctl::ControllerConn conn(opts);
  // The agent registers over mTLS.
  bool ready = false;
  for (int i = 0; i < 200 && !ready; ++i) {
    dsec::v1::ListNodesResponse nodes;
    auto c = conn.Context();
    ASSERT_TRUE(conn.admin().ListNodes(c.get(), {}, &nodes).ok());
    ready = nodes.nodes_size() == 1 &&
            nodes.nodes(0).state() == dsec::v1::NODE_STATE_READY;
    if (!ready) absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(ready);

  dsec::v1::CreateJobRequest job_req;
  job_req.set_name("tls");
  job_req.mutable_lease_ttl()->set_seconds(600);
  dsec::v1::Job job;
  auto jc = conn.Context();
  ASSERT_TRUE(conn.jobs().CreateJob(jc.get(), job_req, &job).ok());
  dsec::v1::CreateSandboxRequest req;
  req.mutable_spec()->set_job_id(job.id());
  dsec::v1::CreateSandboxResponse created;
  auto cc = conn.Context();
  grpc::Status s = conn.sandboxes().CreateSandbox(cc.get(), req, &created);
  ASSERT_TRUE(s.ok()) << s.error_message();
  dsec::v1::ExecRequest exec;
  exec.mutable_argv()->add_args("/bin/echo");
  exec.mutable_argv()->add_args("over tls");
  auto r = ctl::RunExec(conn, created.handle(), exec, absl::Seconds(20));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stdout_data(), "over tls\n");

  // Plaintext, a client without a certificate, and one trusting another CA
  // are all refused.
  for (TlsFiles bad : {TlsFiles{}, TlsFiles{"", "", tls_.ca_file},
                       TlsFiles{dir_.Join("other.pem"), dir_.Join("other.key"),
                                dir_.Join("other.pem")}}) {
    ctl::ConnOptions o = opts;
    o.credentials = *MakeChannelCredentials(bad);
    o.timeout = absl::Seconds(3);
    ctl::ControllerConn c(o);
    dsec::v1::ListNodesResponse nodes;
    auto ctx = c.Context();
    EXPECT_EQ(c.admin().ListNodes(ctx.get(), {}, &nodes).error_code(),
              grpc::StatusCode::UNAVAILABLE)
        << bad.cert_file << " " << bad.ca_file;
  }
  // Files that do not exist or are not PEM are reported, not ignored.
  EXPECT_EQ(MakeServerCredentials({"/nonexistent.pem", "/nonexistent.key", ""})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      MakeChannelCredentials({dir_.Join("ext.cnf"), dir_.Join("ext.cnf"), ""})
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeChannelCredentials({tls_.cert_file, "", ""}).status().code(),
            absl::StatusCode::kInvalidArgument);
  (*agent)->Shutdown();
  (*controller)->Shutdown();
}

}  // namespace
}  // namespace dsec
