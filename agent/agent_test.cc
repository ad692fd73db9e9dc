// End-to-end tests of the agent over loopback gRPC: an in-process
// AgentServer, real sandboxes (root + cgroups), tokens minted with the
// shared secret, and a fake in-process controller for registration and
// heartbeats. Never asserts timings.
#include "agent/agent_server.h"

#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "common/token.h"
#include "dsec/v1/agent_service.grpc.pb.h"
#include "dsec/v1/node_service.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sandbox/cgroup.h"

namespace dsec::agent {
namespace {

using ::testing::HasSubstr;

constexpr char kSecret[] = "0123456789abcdef0123456789abcdef";
constexpr char kJob[] = "job1";

bool HostCanSandbox() { return geteuid() == 0 && sandbox::CgroupsAvailable(); }

std::chrono::system_clock::time_point Deadline(int seconds = 60) {
  return std::chrono::system_clock::now() + std::chrono::seconds(seconds);
}

std::string Token(const std::string& id,
                  absl::Time expire = absl::Now() + absl::Hours(1),
                  const std::string& secret = kSecret) {
  auto signer = TokenSigner::Create(secret);
  return *signer->Sign({id, kJob, expire});
}

// Polls `cond` until true or ~60 s pass.
bool Eventually(const std::function<bool()>& cond) {
  for (int i = 0; i < 600; ++i) {
    if (cond()) return true;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return false;
}

struct ExecOutcome {
  grpc::Status status;
  std::vector<v1::ExecEvent> events;
  const v1::ExecResult& result() const { return events.back().result(); }
  std::string streamed(v1::OutputStream which) const {
    std::string out;
    for (const auto& ev : events) {
      if (ev.has_output() && ev.output().stream() == which) {
        out += ev.output().data();
      }
    }
    return out;
  }
};

class AgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DSEC_REQUIRE_HOST_FEATURE(HostCanSandbox(), "root with cgroups");
  }
  void TearDown() override {
    if (agent_) agent_->Shutdown();
  }

  AgentOptions Options() {
    AgentOptions o;
    o.node_id = "node-a";
    o.token_secret = kSecret;
    o.state_dir = dir_.Join("state");
    o.init_path = dsec::testing::BinDir() + "/dsec-init";
    o.netns_pool_target = 0;
    o.reap_interval = absl::Milliseconds(50);
    return o;
  }

  void StartAgent(AgentOptions options) {
    auto agent = AgentServer::Create(options);
    ASSERT_THAT(agent, dsec::testing::IsOk());
    agent_ = std::move(*agent);
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    args.SetMaxSendMessageSize(64 << 20);
    auto channel = grpc::CreateCustomChannel(
        agent_->endpoint(), grpc::InsecureChannelCredentials(), args);
    runtime_ = v1::SandboxRuntime::NewStub(channel);
    node_ = v1::NodeAgent::NewStub(channel);
  }
  void StartAgent() { StartAgent(Options()); }

  grpc::Status Start(const std::string& id, v1::SandboxSpec spec = {},
                     v1::StartSandboxResponse* out = nullptr,
                     const std::string& node_key = "") {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    if (!node_key.empty()) ctx.AddMetadata("x-dsec-node-key", node_key);
    v1::StartSandboxRequest req;
    req.set_sandbox_id(id);
    req.set_job_id(kJob);
    *req.mutable_spec() = std::move(spec);
    v1::StartSandboxResponse resp;
    grpc::Status s = node_->StartSandbox(&ctx, req, &resp);
    if (out) *out = resp;
    return s;
  }

  ExecOutcome Exec(v1::ExecRequest req) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    ExecOutcome out;
    auto reader = runtime_->Exec(&ctx, req);
    v1::ExecEvent ev;
    while (reader->Read(&ev)) out.events.push_back(ev);
    out.status = reader->Finish();
    return out;
  }

  v1::ExecRequest Shell(const std::string& id, const std::string& script) {
    v1::ExecRequest req;
    req.set_sandbox_id(id);
    req.set_token(Token(id));
    req.set_shell(script);
    return req;
  }

  // Runs a shell command and returns its stdout (expects exit 0).
  std::string Run(const std::string& id, const std::string& script) {
    ExecOutcome out = Exec(Shell(id, script));
    EXPECT_TRUE(out.status.ok()) << out.status.error_message();
    if (!out.status.ok() || out.events.empty()) return "";
    EXPECT_EQ(out.result().status(), v1::EXEC_STATUS_EXITED);
    return out.result().stdout_data();
  }

  grpc::Status WriteFile(const std::string& id, const std::string& path,
                         const std::string& data, bool header = true) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::WriteFileResponse resp;
    auto writer = runtime_->WriteFile(&ctx, &resp);
    if (header) {
      v1::WriteFileRequest msg;
      msg.mutable_header()->set_sandbox_id(id);
      msg.mutable_header()->set_token(Token(id));
      msg.mutable_header()->set_path(path);
      msg.mutable_header()->set_size_bytes(static_cast<int64_t>(data.size()));
      writer->Write(msg);
    }
    for (size_t off = 0; off < data.size(); off += 1 << 20) {
      v1::WriteFileRequest msg;
      msg.set_data(data.substr(off, 1 << 20));
      if (!writer->Write(msg)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }

  grpc::Status ReadFile(const std::string& id, const std::string& path,
                        std::string* data, int* messages = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    v1::ReadFileRequest req;
    req.set_sandbox_id(id);
    req.set_token(Token(id));
    req.set_path(path);
    auto reader = runtime_->ReadFile(&ctx, req);
    v1::ReadFileResponse msg;
    data->clear();
    int n = 0;
    while (reader->Read(&msg)) {
      data->append(msg.data());
      ++n;
    }
    if (messages) *messages = n;
    return reader->Finish();
  }

  dsec::testing::TempDir dir_;
  std::unique_ptr<AgentServer> agent_;
  std::unique_ptr<v1::SandboxRuntime::Stub> runtime_;
  std::unique_ptr<v1::NodeAgent::Stub> node_;
};

TEST_F(AgentTest, ExecEchoStreamsOutputThenTypedResult) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  v1::ExecRequest req;
  req.set_sandbox_id("sb1");
  req.set_token(Token("sb1"));
  req.mutable_argv()->add_args("echo");
  req.mutable_argv()->add_args("hello");
  req.set_stream_output(true);
  ExecOutcome out = Exec(req);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  ASSERT_GE(out.events.size(), 2u);
  EXPECT_TRUE(out.events.front().has_started());
  ASSERT_TRUE(out.events.back().has_result());
  EXPECT_EQ(out.streamed(v1::OUTPUT_STREAM_STDOUT), "hello\n");
  EXPECT_EQ(out.result().status(), v1::EXEC_STATUS_EXITED);
  EXPECT_EQ(out.result().exit_code(), 0);
  EXPECT_EQ(out.result().stdout_data(), "");
  EXPECT_EQ(out.result().stdout_total_bytes(), 6);

  req.set_stream_output(false);
  out = Exec(req);
  ASSERT_TRUE(out.status.ok());
  EXPECT_EQ(out.result().stdout_data(), "hello\n");
  EXPECT_EQ(Run("sb1", "exit 3; "), "");
  ExecOutcome failed = Exec(Shell("sb1", "echo err >&2; exit 3"));
  EXPECT_EQ(failed.result().exit_code(), 3);
  EXPECT_EQ(failed.result().stderr_data(), "err\n");
}

TEST_F(AgentTest, ExecTimeoutIsReportedAsTimedOut) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  v1::ExecRequest req = Shell("sb1", "sleep 60");
  req.mutable_timeout()->set_seconds(1);
  ExecOutcome out = Exec(req);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.result().status(), v1::EXEC_STATUS_TIMED_OUT);
}

TEST_F(AgentTest, ClientThatGoesAwayTakesItsCommandTreeWithIt) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  // No action id: nobody could collect the result, so cancelling kills it.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(500)));
    auto reader = runtime_->Exec(&ctx, Shell("sb1", "sleep 300 & sleep 300"));
    v1::ExecEvent ev;
    while (reader->Read(&ev)) {
    }
    EXPECT_EQ(reader->Finish().error_code(),
              grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  std::string left;
  for (int i = 0; i < 100; ++i) {
    left = Run("sb1",
               "for p in /proc/[0-9]*; do cat $p/comm; done | grep -c sleep");
    if (left == "0\n") break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(left, "0\n") << "the cancelled command's tree is still running";
  // With an action id the command runs on (its result is recorded).
  {
    v1::ExecRequest req = Shell("sb1", "sleep 1; echo done");
    req.set_action_id("keep");
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(200)));
    auto reader = runtime_->Exec(&ctx, req);
    v1::ExecEvent ev;
    while (reader->Read(&ev)) {
    }
    reader->Finish();
    ExecOutcome again = Exec(req);
    ASSERT_TRUE(again.status.ok()) << again.status.error_message();
    EXPECT_EQ(again.result().stdout_data(), "done\n");
  }
}

TEST_F(AgentTest, ActionIdRunsOnceAndRejectsADifferentRequest) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  v1::ExecRequest req = Shell("sb1", "echo x >> /tmp/f; echo ran");
  req.set_action_id("step-1");
  ExecOutcome first = Exec(req);
  ASSERT_TRUE(first.status.ok());
  EXPECT_FALSE(first.result().replayed());
  req.set_token(Token("sb1", absl::Now() + absl::Hours(2)));  // not compared
  ExecOutcome second = Exec(req);
  ASSERT_TRUE(second.status.ok());
  EXPECT_TRUE(second.result().replayed());
  EXPECT_TRUE(second.events.front().started().replayed());
  EXPECT_EQ(second.result().stdout_data(), "ran\n");
  EXPECT_EQ(Run("sb1", "cat /tmp/f"), "x\n");

  req.set_shell("echo y >> /tmp/f");
  EXPECT_EQ(Exec(req).status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(Run("sb1", "cat /tmp/f"), "x\n");
}

TEST_F(AgentTest, RepeatOfAnInFlightActionWaitsForTheSameResult) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  v1::ExecRequest req = Shell("sb1", "sleep 1; echo x >> /tmp/g; date +%N");
  req.set_action_id("slow");
  ExecOutcome first;
  std::thread t([&] { first = Exec(req); });
  ExecOutcome second = Exec(req);
  t.join();
  ASSERT_TRUE(first.status.ok());
  ASSERT_TRUE(second.status.ok());
  EXPECT_EQ(first.result().stdout_data(), second.result().stdout_data());
  EXPECT_NE(first.result().replayed(), second.result().replayed());
  EXPECT_EQ(Run("sb1", "cat /tmp/g"), "x\n");
}

TEST_F(AgentTest, WriteFileWithActionIdIsReplayed) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  auto write = [&](const std::string& data, v1::WriteFileResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline());
    auto writer = runtime_->WriteFile(&ctx, resp);
    v1::WriteFileRequest msg;
    msg.mutable_header()->set_sandbox_id("sb1");
    msg.mutable_header()->set_token(Token("sb1"));
    msg.mutable_header()->set_path("log.txt");  // relative: /root/log.txt
    msg.mutable_header()->set_write_mode(v1::WRITE_MODE_APPEND);
    msg.mutable_header()->set_action_id("w1");
    writer->Write(msg);
    msg.set_data(data);
    writer->Write(msg);
    writer->WritesDone();
    return writer->Finish();
  };
  v1::WriteFileResponse resp;
  ASSERT_TRUE(write("line\n", &resp).ok());
  EXPECT_FALSE(resp.replayed());
  EXPECT_EQ(resp.path(), "/root/log.txt");
  ASSERT_TRUE(write("line\n", &resp).ok());
  EXPECT_TRUE(resp.replayed());
  EXPECT_EQ(write("other\n", &resp).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(Run("sb1", "cat /root/log.txt"), "line\n");
}

TEST_F(AgentTest, ExpireTimeReapsTheSandbox) {
  StartAgent();
  grpc::ClientContext ctx;
  v1::StartSandboxRequest req;
  req.set_sandbox_id("short");
  req.set_job_id(kJob);
  *req.mutable_expire_time() = ToProtoTime(absl::Now() + absl::Seconds(1));
  v1::StartSandboxResponse resp;
  ASSERT_TRUE(node_->StartSandbox(&ctx, req, &resp).ok());
  EXPECT_TRUE(Eventually(
      [&] { return agent_->manager().ListSandboxes().sandboxes_size() == 0; }));
}

TEST_F(AgentTest, ShutdownEndsRunningExecsAndRefusesNewCalls) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  ExecOutcome running;
  std::thread t([&] { running = Exec(Shell("sb1", "sleep 120")); });
  ASSERT_TRUE(Eventually([&] {
    v1::ListProcessesRequest r;
    r.set_sandbox_id("sb1");
    r.set_token(Token("sb1"));
    auto procs = agent_->manager().ListProcesses(r);
    return procs.ok() && !procs->processes().empty();
  }));
  agent_->Shutdown();
  t.join();  // returns: the sandbox was destroyed under it
  if (running.status.ok()) {
    EXPECT_NE(running.result().status(), v1::EXEC_STATUS_EXITED);
  }
  EXPECT_FALSE(Exec(Shell("sb1", "true")).status.ok());
  agent_->Shutdown();  // idempotent
}

TEST_F(AgentTest, TokensAreChecked) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  ASSERT_TRUE(Start("sb2").ok());
  v1::ExecRequest req = Shell("sb1", "true");
  req.clear_token();
  EXPECT_EQ(Exec(req).status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  req.set_token("garbage");
  EXPECT_EQ(Exec(req).status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  req.set_token(Token("sb1", absl::Now() - absl::Minutes(1)));
  EXPECT_EQ(Exec(req).status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  req.set_token(Token("sb1", absl::Now() + absl::Hours(1),
                      "another-secret-of-enough-length"));
  EXPECT_EQ(Exec(req).status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  req.set_token(Token("sb2"));
  EXPECT_EQ(Exec(req).status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(Exec(Shell("nope", "true")).status.error_code(),
            grpc::StatusCode::NOT_FOUND);
  req = Shell("sb1", "true");
  req.clear_sandbox_id();
  EXPECT_EQ(Exec(req).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(AgentTest, FileRoundTripLargerThanOneChunk) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  std::string data(3 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7);
  grpc::Status s = WriteFile("sb1", "/tmp/big.bin", data);
  ASSERT_TRUE(s.ok()) << s.error_message();
  std::string back;
  int messages = 0;
  s = ReadFile("sb1", "/tmp/big.bin", &back, &messages);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_GT(messages, 1);
  EXPECT_TRUE(back == data);
  EXPECT_EQ(Run("sb1", "wc -c < /tmp/big.bin"), "3145728\n");

  grpc::ClientContext stat_ctx;
  v1::StatFileRequest stat;
  stat.set_sandbox_id("sb1");
  stat.set_token(Token("sb1"));
  stat.set_path("/tmp/big.bin");
  v1::FileInfo info;
  ASSERT_TRUE(runtime_->StatFile(&stat_ctx, stat, &info).ok());
  EXPECT_EQ(info.size_bytes(), 3 << 20);
  EXPECT_EQ(info.type(), v1::FILE_TYPE_REGULAR);

  grpc::ClientContext list_ctx;
  v1::ListFilesRequest list;
  list.set_sandbox_id("sb1");
  list.set_token(Token("sb1"));
  list.set_path("/tmp");
  v1::ListFilesResponse listed;
  ASSERT_TRUE(runtime_->ListFiles(&list_ctx, list, &listed).ok());
  bool found = false;
  for (const auto& e : listed.entries()) found |= e.path() == "/tmp/big.bin";
  EXPECT_TRUE(found);

  grpc::ClientContext del_ctx;
  v1::DeleteFileRequest del;
  del.set_sandbox_id("sb1");
  del.set_token(Token("sb1"));
  del.set_path("/tmp/big.bin");
  v1::DeleteFileResponse deleted;
  ASSERT_TRUE(runtime_->DeleteFile(&del_ctx, del, &deleted).ok());
  EXPECT_TRUE(deleted.deleted());
  EXPECT_EQ(ReadFile("sb1", "/tmp/big.bin", &back).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(AgentTest, SymlinksCannotLeadTheFileApiOutOfTheSandbox) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  const std::string host_file = dir_.Join("host-secret");
  { std::ofstream(host_file) << "host secret"; }
  Run("sb1", absl::StrCat("ln -s ", host_file, " /tmp/abs; ln -s ../../../../",
                          dir_.path(), " /tmp/rel; ln -s / /tmp/root"));
  std::string data;
  EXPECT_FALSE(ReadFile("sb1", "/tmp/abs", &data).ok() &&
               data == "host secret");
  EXPECT_FALSE(ReadFile("sb1", "/tmp/rel/host-secret", &data).ok() &&
               data == "host secret");
  WriteFile("sb1", "/tmp/root" + dir_.Join("pwned"), "x").ok();
  WriteFile("sb1", "/tmp/rel/pwned2", "x").ok();
  struct stat st;
  EXPECT_NE(stat(dir_.Join("pwned").c_str(), &st), 0);
  EXPECT_NE(stat(dir_.Join("pwned2").c_str(), &st), 0);
  std::ifstream in(host_file);
  std::string content((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(content, "host secret");
}

TEST_F(AgentTest, ParkedSandboxRefusesExecUntilUnparked) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  grpc::ClientContext park_ctx;
  v1::ParkRequest park;
  park.set_sandbox_id("sb1");
  park.set_token(Token("sb1"));
  v1::ParkResponse parked;
  ASSERT_TRUE(runtime_->Park(&park_ctx, park, &parked).ok());
  EXPECT_EQ(parked.state(), v1::SANDBOX_STATE_PARKED);
  EXPECT_EQ(Exec(Shell("sb1", "true")).status.error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  grpc::ClientContext unpark_ctx;
  v1::UnparkRequest unpark;
  unpark.set_sandbox_id("sb1");
  unpark.set_token(Token("sb1"));
  v1::UnparkResponse unparked;
  ASSERT_TRUE(runtime_->Unpark(&unpark_ctx, unpark, &unparked).ok());
  EXPECT_EQ(Run("sb1", "echo back"), "back\n");
}

TEST_F(AgentTest, StopSandboxesDestroysAndReportsUnknownIds) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  grpc::ClientContext ctx;
  v1::StopSandboxesRequest stop;
  stop.add_sandbox_ids("sb1");
  stop.add_sandbox_ids("ghost");
  v1::StopSandboxesResponse stopped;
  ASSERT_TRUE(node_->StopSandboxes(&ctx, stop, &stopped).ok());
  EXPECT_THAT(stopped.stopped_ids(), ::testing::ElementsAre("sb1"));
  EXPECT_THAT(stopped.not_found_ids(), ::testing::ElementsAre("ghost"));
  EXPECT_EQ(Exec(Shell("sb1", "true")).status.error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(AgentTest, StartIsIdempotentAndCappedByMaxSandboxes) {
  AgentOptions o = Options();
  o.max_sandboxes = 1;
  StartAgent(o);
  ASSERT_TRUE(Start("sb1").ok());
  v1::StartSandboxResponse again;
  ASSERT_TRUE(Start("sb1", {}, &again).ok());
  EXPECT_EQ(again.state(), v1::SANDBOX_STATE_RUNNING);
  EXPECT_EQ(Start("sb2").error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(Start("bad.id").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::SandboxSpec huge;
  huge.set_network_mode(v1::NETWORK_MODE_EGRESS_ALLOWLIST);
  EXPECT_EQ(Start("sb3", huge).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(AgentTest, WarmPoolClaimServesStart) {
  AgentOptions o = Options();
  o.warm_pools.push_back({.name = "small", .spec = {}, .size = 1});
  StartAgent(o);
  ASSERT_TRUE(Eventually([&] {
    return agent_->manager().HeartbeatReport().warm_pool_ready().at("small") >=
           1;
  }));
  v1::SandboxSpec spec;
  spec.set_warm_pool_class("small");
  v1::StartSandboxResponse resp;
  ASSERT_TRUE(Start("sb1", spec, &resp).ok());
  EXPECT_TRUE(resp.warm());
  EXPECT_EQ(Run("sb1", "echo warm"), "warm\n");
}

TEST_F(AgentTest, IdleTtlReapsAnUnusedSandbox) {
  StartAgent();
  v1::SandboxSpec spec;
  spec.mutable_idle_ttl()->set_seconds(1);
  ASSERT_TRUE(Start("idle", spec).ok());
  EXPECT_TRUE(Eventually(
      [&] { return agent_->manager().ListSandboxes().sandboxes_size() == 0; }));
  EXPECT_EQ(Exec(Shell("idle", "true")).status.error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(AgentTest, MalformedRequestsAreInvalidArgument) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  v1::ExecRequest req = Shell("sb1", "true");
  req.clear_shell();
  EXPECT_EQ(Exec(req).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  req.mutable_argv();
  EXPECT_EQ(Exec(req).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  req = Shell("sb1", "cat > /dev/null");
  req.set_stdin_data(std::string((16 << 20) + 1, 'x'));
  EXPECT_EQ(Exec(req).status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(WriteFile("sb1", "/tmp/x", "data", /*header=*/false).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ClientContext ctx;
  v1::SignalRequest sig;
  sig.set_sandbox_id("sb1");
  sig.set_token(Token("sb1"));
  sig.set_all(true);
  sig.set_signal(99);
  v1::SignalResponse sig_resp;
  EXPECT_EQ(runtime_->Signal(&ctx, sig, &sig_resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Run("sb1", "echo alive"), "alive\n");
}

TEST_F(AgentTest, NodeKeyIsRequiredWhenConfigured) {
  AgentOptions o = Options();
  o.node_key = "node-key-1";
  StartAgent(o);
  EXPECT_EQ(Start("sb1").error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Start("sb1", {}, nullptr, "wrong").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(Start("sb1", {}, nullptr, "node-key-1").ok());
}

TEST_F(AgentTest, MetricsAreServed) {
  AgentOptions o = Options();
  o.metrics_port = 0;
  StartAgent(o);
  ASSERT_TRUE(Start("sb1").ok());
  Run("sb1", "true");
  ASSERT_GT(agent_->metrics_port(), 0);
  httplib::Client client("127.0.0.1", agent_->metrics_port());
  auto res = client.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->body, HasSubstr("dsec_agent_execs_total"));
  EXPECT_THAT(res->body, HasSubstr("dsec_agent_exec_seconds"));
  EXPECT_THAT(res->body, HasSubstr("dsec_agent_sandboxes"));
}

TEST_F(AgentTest, SnapshotThenForkStartsChildrenWithTheParentsFiles) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  Run("sb1", "echo parent > /root/state");
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline());
  v1::ForkRequest fork;
  fork.set_sandbox_id("sb1");
  fork.set_token(Token("sb1"));
  fork.set_count(2);
  v1::ForkResponse forked;
  grpc::Status s = runtime_->Fork(&ctx, fork, &forked);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(forked.handles_size(), 2);
  for (const auto& handle : forked.handles()) {
    v1::ExecRequest req = Shell(handle.sandbox_id(), "cat /root/state");
    req.set_token(handle.token());
    ExecOutcome out = Exec(req);
    ASSERT_TRUE(out.status.ok()) << out.status.error_message();
    EXPECT_EQ(out.result().stdout_data(), "parent\n");
  }
}

TEST_F(AgentTest, ListProcessesAndSignalByPid) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  Run("sb1", "sleep 300 > /dev/null 2>&1 < /dev/null &");
  int sleep_pid = 0;
  ASSERT_TRUE(Eventually([&] {
    grpc::ClientContext ctx;
    v1::ListProcessesRequest req;
    req.set_sandbox_id("sb1");
    req.set_token(Token("sb1"));
    v1::ListProcessesResponse resp;
    if (!runtime_->ListProcesses(&ctx, req, &resp).ok()) return false;
    for (const auto& p : resp.processes()) {
      if (!p.argv().empty() && p.argv(0) == "sleep") sleep_pid = p.pid();
    }
    return sleep_pid > 1;
  }));
  grpc::ClientContext ctx;
  v1::SignalRequest sig;
  sig.set_sandbox_id("sb1");
  sig.set_token(Token("sb1"));
  sig.set_pid(sleep_pid);
  sig.set_signal(9);
  v1::SignalResponse resp;
  ASSERT_TRUE(runtime_->Signal(&ctx, sig, &resp).ok());
  EXPECT_EQ(resp.signaled_count(), 1);
  grpc::ClientContext ctx2;
  sig.set_pid(4000000);
  EXPECT_EQ(runtime_->Signal(&ctx2, sig, &resp).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(AgentTest, SignalByActionIdKillsThatExecsWholeTree) {
  StartAgent();
  ASSERT_TRUE(Start("sb1").ok());
  // The exec leaves a daemon behind and then blocks.
  v1::ExecRequest req =
      Shell("sb1", "(sleep 300 > /dev/null 2>&1 &); echo up; sleep 300");
  req.set_action_id("long");
  ExecOutcome out;
  std::thread t([&] { out = Exec(req); });
  auto signal = [&](int sig) {
    grpc::ClientContext ctx;
    v1::SignalRequest s;
    s.set_sandbox_id("sb1");
    s.set_token(Token("sb1"));
    s.set_action_id("long");
    s.set_signal(sig);
    v1::SignalResponse resp;
    return runtime_->Signal(&ctx, s, &resp);
  };
  ASSERT_TRUE(Eventually([&] { return signal(SIGTERM).ok(); }));
  t.join();
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_EQ(out.result().status(), v1::EXEC_STATUS_SIGNALED);
  // The daemon went with it: no sleep is left in the sandbox.
  EXPECT_EQ(Run("sb1", "ps -e -o comm= | grep -c sleep || true"), "0\n");
  // Finished now: NOT_FOUND; a signal that cannot kill a tree: refused.
  EXPECT_EQ(signal(SIGTERM).error_code(), grpc::StatusCode::NOT_FOUND);
  req.set_action_id("other");
  req.set_shell("sleep 300");
  std::thread t2([&] { out = Exec(req); });
  absl::SleepFor(absl::Milliseconds(300));
  grpc::ClientContext ctx;
  v1::SignalRequest s;
  s.set_sandbox_id("sb1");
  s.set_token(Token("sb1"));
  s.set_action_id("other");
  s.set_signal(SIGUSR1);
  v1::SignalResponse resp;
  EXPECT_EQ(runtime_->Signal(&ctx, s, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  s.set_signal(SIGKILL);
  grpc::ClientContext ctx3;
  EXPECT_TRUE(runtime_->Signal(&ctx3, s, &resp).ok());
  t2.join();
}

// A fake controller: records registrations and heartbeats, answers the
// first heartbeat with NOT_FOUND (forcing a re-register) and later ones with
// the ids in `destroy`.
class FakeRegistry final : public v1::NodeRegistry::Service {
 public:
  grpc::Status RegisterNode(grpc::ServerContext* ctx,
                            const v1::RegisterNodeRequest* req,
                            v1::RegisterNodeResponse* resp) override {
    absl::MutexLock lock(&mu);
    registers.push_back(*req);
    auto key = ctx->client_metadata().find("x-dsec-node-key");
    if (key != ctx->client_metadata().end()) {
      node_key = std::string(key->second.data(), key->second.size());
    }
    resp->mutable_heartbeat_interval()->set_nanos(100000000);
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override {
    absl::MutexLock lock(&mu);
    heartbeats.push_back(*req);
    if (heartbeats.size() == 1) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "who are you");
    }
    for (const auto& id : destroy) resp->add_destroy_sandbox_ids(id);
    return grpc::Status::OK;
  }

  absl::Mutex mu;
  std::vector<v1::RegisterNodeRequest> registers ABSL_GUARDED_BY(mu);
  std::vector<v1::HeartbeatRequest> heartbeats ABSL_GUARDED_BY(mu);
  std::vector<std::string> destroy ABSL_GUARDED_BY(mu);
  std::string node_key ABSL_GUARDED_BY(mu);
};

TEST_F(AgentTest, RegistersHeartbeatsAndDestroysWhatTheControllerLists) {
  FakeRegistry registry;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(&registry);
  std::unique_ptr<grpc::Server> controller = builder.BuildAndStart();
  ASSERT_GT(port, 0);

  AgentOptions o = Options();
  o.controller_address = absl::StrCat("127.0.0.1:", port);
  o.node_key = "node-key-1";
  o.heartbeat_interval = absl::Milliseconds(100);
  o.labels["zone"] = "a";
  StartAgent(o);
  ASSERT_TRUE(Start("keep", {}, nullptr, "node-key-1").ok());
  ASSERT_TRUE(Start("doomed", {}, nullptr, "node-key-1").ok());

  // Registered twice (the first heartbeat answered NOT_FOUND), then a full
  // report naming both sandboxes.
  EXPECT_TRUE(Eventually([&] {
    absl::MutexLock lock(&registry.mu);
    if (registry.registers.size() < 2) return false;
    for (const auto& hb : registry.heartbeats) {
      if (hb.full_report() && hb.sandboxes_size() == 2) return true;
    }
    return false;
  }));
  {
    absl::MutexLock lock(&registry.mu);
    EXPECT_EQ(registry.registers[0].node_id(), "node-a");
    EXPECT_EQ(registry.registers[0].endpoint(), agent_->endpoint());
    EXPECT_EQ(registry.registers[0].labels().at("zone"), "a");
    EXPECT_EQ(registry.node_key, "node-key-1");
    EXPECT_EQ(registry.heartbeats.back().node_id(), "node-a");
    registry.destroy = {"doomed"};
  }
  EXPECT_TRUE(Eventually([&] {
    auto list = agent_->manager().ListSandboxes();
    return list.sandboxes_size() == 1 &&
           list.sandboxes(0).sandbox_id() == "keep";
  }));
  EXPECT_EQ(Run("keep", "echo ok"), "ok\n");
  agent_->Shutdown();
  controller->Shutdown();
}

}  // namespace
}  // namespace dsec::agent
