// The SandboxFusion-compatible endpoint over HTTP: request validation
// (against a server whose controller is unreachable, so no cluster is
// needed), and /run_code against a real 1-agent cluster: languages, stdin,
// failures of every kind, files both ways, limits and concurrency.
#include "client/fusion_server.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/testing/test_cluster.h"
#include "common/metrics.h"
#include "common/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace dsec::client {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

struct Reply {
  int http = 0;
  json body;
  std::string text;
};

Reply Post(int port, const std::string& body) {
  httplib::Client http("127.0.0.1", port);
  http.set_read_timeout(300, 0);
  http.set_write_timeout(60, 0);
  auto res = http.Post("/run_code", body, "application/json");
  // A connection-level failure (the listen backlog of a loaded machine) is
  // retried like any HTTP client would; an HTTP reply never is.
  for (int attempt = 0; !res && attempt < 3; ++attempt) {
    absl::SleepFor(absl::Milliseconds(200));
    res = http.Post("/run_code", body, "application/json");
  }
  Reply reply;
  if (!res) {
    reply.text = absl::StrCat("http error ", static_cast<int>(res.error()));
    return reply;
  }
  reply.http = res->status;
  reply.text = res->body;
  reply.body = json::parse(res->body, nullptr, false);
  return reply;
}

json Code(absl::string_view language, absl::string_view code) {
  return json{{"language", std::string(language)}, {"code", std::string(code)}};
}

Reply Post(int port, const json& request) { return Post(port, request.dump()); }

// A loopback port nothing listens on.
int ClosedPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// A server whose client points at a closed port: every sandbox call fails.
std::unique_ptr<FusionServer> UnreachableServer(size_t max_body_bytes) {
  FusionServerOptions options;
  options.port = 0;
  options.client_options.controller = absl::StrCat("127.0.0.1:", ClosedPort());
  options.client_options.api_key = "unused";
  options.client_options.call_timeout = absl::Seconds(2);
  options.client_options.max_attempts = 2;
  options.max_body_bytes = max_body_bytes;
  auto server = FusionServer::Create(std::move(options));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

TEST(FusionRequest, DefaultsFollowSandboxFusion) {
  auto r =
      ParseRunCodeRequest(R"j({"code": "print(1)", "language": "python"})j",
                          DefaultFusionLanguages());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->compile_timeout, absl::Seconds(10));
  EXPECT_EQ(r->run_timeout, absl::Seconds(10));
  EXPECT_EQ(r->memory_limit_mb, -1);
  EXPECT_FALSE(r->stdin_data.has_value());
  EXPECT_TRUE(r->files.empty());
}

TEST(FusionRequest, ReasonsNameTheField) {
  const auto langs = DefaultFusionLanguages();
  auto reason = [&](absl::string_view body) {
    return std::string(ParseRunCodeRequest(body, langs).status().message());
  };
  EXPECT_EQ(reason("{"), "request body is not valid JSON");
  EXPECT_THAT(reason("[1]"), HasSubstr("must be a JSON object"));
  EXPECT_EQ(reason(R"({"language": "python"})"), "\"code\" is required");
  EXPECT_EQ(reason(R"({"code": "x"})"), "\"language\" is required");
  EXPECT_THAT(reason(R"({"code": 5, "language": "python"})"),
              HasSubstr("\"code\" must be a string, got number"));
  EXPECT_THAT(reason(R"({"code": "", "language": "cobol"})"),
              HasSubstr("unknown language \"cobol\""));
  EXPECT_THAT(
      reason(R"({"code": "", "language": "python", "run_timeout": "10"})"),
      HasSubstr("\"run_timeout\" must be a number"));
  EXPECT_THAT(
      reason(R"({"code": "", "language": "python", "run_timeout": -1})"),
      HasSubstr("\"run_timeout\" must be in (0, 300]"));
  EXPECT_THAT(
      reason(R"({"code": "", "language": "python", "memory_limit_MB": 1.5})"),
      HasSubstr("memory_limit_MB"));
  EXPECT_THAT(reason(R"({"code": "", "language": "python", "stdin": 5})"),
              HasSubstr("\"stdin\" must be a string or null"));
  EXPECT_THAT(reason(R"({"code": "", "language": "python", "files": []})"),
              HasSubstr("\"files\" must be an object"));
  EXPECT_THAT(
      reason(R"({"code": "", "language": "python", "files": {"a": "@@"}})"),
      HasSubstr("files[\"a\"] is not valid base64"));
  EXPECT_THAT(
      reason(R"({"code": "", "language": "python", "fetch_files": "a"})"),
      HasSubstr("\"fetch_files\" must be an array"));
  EXPECT_THAT(
      reason(R"({"code": "", "language": "python", "fetch_files": [1]})"),
      HasSubstr("fetch_files[]"));
}

TEST(FusionResponse, InvalidUtf8IsReplacedNotFatal) {
  RunCodeResponse r;
  r.status = RunCodeResponse::Status::kFailed;
  r.run_result = CommandRunResult{};
  r.run_result->stdout_data = "ok \xff\xfe end";
  r.files["bin"] = std::string("\x00\xff", 2);
  json j = json::parse(RunCodeResponseToJson(r));
  EXPECT_EQ(j["status"], "Failed");
  EXPECT_EQ(j["run_result"]["stdout"], "ok \xEF\xBF\xBD\xEF\xBF\xBD end");
  EXPECT_EQ(j["compile_result"], nullptr);
  EXPECT_EQ(j["run_result"]["status"], "Finished");
  EXPECT_EQ(j["files"]["bin"], absl::Base64Escape(std::string("\x00\xff", 2)));
}

TEST(FusionServerHttp, MalformedRequestsGet400WithReason) {
  auto server = UnreachableServer(size_t{1} << 20);
  ASSERT_NE(server, nullptr);
  for (const char* body :
       {"not json", R"({"language": "python"})",
        R"({"code": "x", "language": "nope"})",
        R"({"code": ["x"], "language": "python"})",
        R"({"code": "x", "language": "python", "compile_timeout": null,
            "run_timeout": true})"}) {
    Reply r = Post(server->port(), std::string(body));
    EXPECT_EQ(r.http, 400) << body;
    ASSERT_TRUE(r.body.is_object()) << r.text;
    EXPECT_EQ(r.body["status"], "SandboxError");
    EXPECT_FALSE(r.body["message"].get<std::string>().empty());
  }
  // Too big: 413, still JSON.
  Reply big = Post(server->port(), std::string(2 << 20, 'x'));
  EXPECT_EQ(big.http, 413);
  ASSERT_TRUE(big.body.is_object()) << big.text;
  EXPECT_THAT(big.body["message"].get<std::string>(),
              HasSubstr("exceeds 1048576 bytes"));

  httplib::Client http("127.0.0.1", server->port());
  auto ping = http.Get("/v1/ping");
  ASSERT_TRUE(ping);
  EXPECT_EQ(ping->body, "pong");
  auto health = http.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  auto missing = http.Get("/nope");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
}

TEST(FusionServerHttp, UnreachableControllerIsSandboxError) {
  auto server = UnreachableServer(size_t{1} << 20);
  ASSERT_NE(server, nullptr);
  Reply r = Post(server->port(), Code("python", "print('hi')"));
  EXPECT_EQ(r.http, 200);
  ASSERT_TRUE(r.body.is_object()) << r.text;
  EXPECT_EQ(r.body["status"], "SandboxError");
  EXPECT_THAT(r.body["message"].get<std::string>(),
              HasSubstr("create sandbox"));
  EXPECT_EQ(r.body["run_result"], nullptr);
  server->Shutdown();
  server->Shutdown();  // idempotent
}

class FusionServerTest : public testing::ClusterTest<1> {
 protected:
  void SetUp() override {
    ClusterTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    FusionServerOptions options;
    options.client = client_;
    options.port = 0;
    options.max_concurrent_requests = 16;
    options.languages.push_back({"nolang", "main.x", "", "no-such-tool main.x",
                                 "no-such-tool", "command -v no-such-tool"});
    auto server = FusionServer::Create(std::move(options));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // Posts and checks the reply is well formed.
  json Run(const json& request) {
    Reply r = Post(server_->port(), request);
    EXPECT_EQ(r.http, 200) << r.text;
    EXPECT_TRUE(r.body.is_object()) << r.text;
    if (!r.body.is_object()) return json::object();
    for (const char* key : {"status", "message", "compile_result", "run_result",
                            "executor_pod_name", "files"}) {
      EXPECT_TRUE(r.body.contains(key)) << key << " in " << r.text;
    }
    return r.body;
  }

  std::unique_ptr<FusionServer> server_;
};

TEST_F(FusionServerTest, PythonHelloWorld) {
  json r = Run(Code("python", "print('Hello, world!')"));
  EXPECT_EQ(r["status"], "Success") << r;
  EXPECT_EQ(r["message"], "");
  EXPECT_EQ(r["compile_result"], nullptr);
  EXPECT_EQ(r["run_result"]["status"], "Finished");
  EXPECT_EQ(r["run_result"]["return_code"], 0);
  EXPECT_EQ(r["run_result"]["stdout"], "Hello, world!\n");
  EXPECT_EQ(r["run_result"]["stderr"], "");
  EXPECT_GT(r["run_result"]["execution_time"].get<double>(), 0);
  EXPECT_EQ(r["executor_pod_name"], testing::TestCluster::NodeId(0));
  EXPECT_EQ(r["files"], json::object());
}

TEST_F(FusionServerTest, StdinReachesTheProgram) {
  json req = Code("python", "import sys\nprint(sys.stdin.read().upper())");
  req["stdin"] = "abc\n";
  json r = Run(req);
  EXPECT_EQ(r["status"], "Success") << r;
  EXPECT_EQ(r["run_result"]["stdout"], "ABC\n\n");
}

TEST_F(FusionServerTest, NonZeroExitIsFailedWithReturnCode) {
  json r = Run(Code("python",
                    "import sys\nprint('x', file=sys.stderr)\n"
                    "sys.exit(3)"));
  EXPECT_EQ(r["status"], "Failed") << r;
  EXPECT_EQ(r["run_result"]["status"], "Finished");
  EXPECT_EQ(r["run_result"]["return_code"], 3);
  EXPECT_EQ(r["run_result"]["stderr"], "x\n");
  EXPECT_THAT(r["message"].get<std::string>(), HasSubstr("exit code 3"));
}

TEST_F(FusionServerTest, TimeoutIsTimeLimitExceeded) {
  json req = Code("python",
                  "import time\nprint('start', flush=True)\n"
                  "time.sleep(60)");
  req["run_timeout"] = 1.5;
  const absl::Time start = absl::Now();
  json r = Run(req);
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
  EXPECT_EQ(r["status"], "Failed") << r;
  EXPECT_EQ(r["run_result"]["status"], "TimeLimitExceeded");
  EXPECT_EQ(r["run_result"]["return_code"], nullptr);
  EXPECT_EQ(r["run_result"]["stdout"], "start\n");
}

TEST_F(FusionServerTest, CppCompileErrorIsFinishedWithNonZeroCode) {
  json req = Code("cpp", "int main() { return undeclared; }");
  req["compile_timeout"] = 60;
  json r = Run(req);
  EXPECT_EQ(r["status"], "Failed") << r;
  EXPECT_EQ(r["compile_result"]["status"], "Finished");
  EXPECT_NE(r["compile_result"]["return_code"], 0);
  EXPECT_THAT(r["compile_result"]["stderr"].get<std::string>(),
              HasSubstr("undeclared"));
  EXPECT_EQ(r["run_result"], nullptr);
}

TEST_F(FusionServerTest, CppCompilesAndRuns) {
  json req = Code("cpp",
                  "#include <iostream>\n#include <vector>\n"
                  "int main() { int a, b; std::cin >> a >> b;\n"
                  "  std::vector<int> v{a, b}; std::cout << v[0] + v[1]"
                  " << std::endl; }");
  req["stdin"] = "2 40";
  req["compile_timeout"] = 60;
  json r = Run(req);
  EXPECT_EQ(r["status"], "Success") << r;
  EXPECT_EQ(r["compile_result"]["status"], "Finished");
  EXPECT_EQ(r["compile_result"]["return_code"], 0);
  EXPECT_EQ(r["run_result"]["stdout"], "42\n");
}

TEST_F(FusionServerTest, CAndBash) {
  json c =
      Code("c",
           "#include <stdio.h>\n#include <math.h>\n"
           "int main(void) { printf(\"%.0f\\n\", sqrt(49.0)); return 0; }");
  c["compile_timeout"] = 60;
  json r = Run(c);
  EXPECT_EQ(r["status"], "Success") << r;
  EXPECT_EQ(r["run_result"]["stdout"], "7\n");

  r = Run(Code("bash", "x=$((6 * 7)); echo \"$x\"; echo err >&2; exit 0"));
  EXPECT_EQ(r["status"], "Success") << r;
  EXPECT_EQ(r["run_result"]["stdout"], "42\n");
  EXPECT_EQ(r["run_result"]["stderr"], "err\n");
}

TEST_F(FusionServerTest, OtherLanguagesOfTheHostImage) {
  struct Case {
    const char* language;
    const char* tool;  // on the host, hence in the sandbox's /usr
    const char* code;
    // Needs more than /usr (java: /etc/java-*; pytest: the module), so the
    // sandbox may lack it; then it must be a SandboxError that says so.
    bool may_lack = false;
  };
  const Case cases[] = {
      {"nodejs", "/usr/bin/node", "console.log(6 * 7);"},
      {"perl", "/usr/bin/perl", "print 6 * 7, \"\\n\";"},
      {"java", "/usr/bin/javac",
       "public class Main { public static void main(String[] a) {"
       " System.out.println(6 * 7); } }",
       true},
      {"pytest", "/usr/bin/python3",
       "def test_answer():\n    assert 6 * 7 == 42\n", true},
  };
  for (const Case& c : cases) {
    if (access(c.tool, X_OK) != 0) continue;
    json req = Code(c.language, c.code);
    req["compile_timeout"] = 120;
    req["run_timeout"] = 120;
    json r = Run(req);
    if (c.may_lack && r["status"] == "SandboxError") {
      EXPECT_THAT(r["message"].get<std::string>(),
                  HasSubstr("not found in the sandbox"))
          << c.language;
      continue;
    }
    EXPECT_EQ(r["status"], "Success") << c.language << ": " << r;
    if (std::string(c.language) != "pytest") {
      EXPECT_EQ(r["run_result"]["stdout"], "42\n") << c.language;
    }
  }
}

TEST_F(FusionServerTest, MissingToolchainIsSandboxErrorThatSaysSo) {
  json r = Run(Code("nolang", "anything"));
  EXPECT_EQ(r["status"], "SandboxError") << r;
  EXPECT_THAT(r["message"].get<std::string>(),
              HasSubstr("toolchain no-such-tool not found"));
  // A program exiting 127 on its own is just a failure.
  r = Run(Code("bash", "echo dsec-fusion-missing >&2; exit 127"));
  EXPECT_EQ(r["status"], "Failed") << r;
  EXPECT_EQ(r["run_result"]["return_code"], 127);
}

TEST_F(FusionServerTest, FilesInAndFetchFilesOut) {
  const std::string blob("\x00\x01\xfe\xff binary", 11);
  json req = Code("python",
                  "import os\n"
                  "data = open('data/in.bin', 'rb').read()\n"
                  "open('out.bin', 'wb').write(data[::-1])\n"
                  "os.makedirs('/tmp/o', exist_ok=True)\n"
                  "open('/tmp/o/abs.txt', 'w').write('abs')\n"
                  "print(len(data))");
  req["files"] = {{"data/in.bin", absl::Base64Escape(blob)}};
  req["fetch_files"] = {"out.bin", "/tmp/o/abs.txt", "missing.txt"};
  json r = Run(req);
  EXPECT_EQ(r["status"], "Success") << r;
  EXPECT_EQ(r["run_result"]["stdout"], "11\n");
  std::string out;
  ASSERT_TRUE(
      absl::Base64Unescape(r["files"]["out.bin"].get<std::string>(), &out));
  EXPECT_EQ(out, std::string(blob.rbegin(), blob.rend()));
  ASSERT_TRUE(absl::Base64Unescape(
      r["files"]["/tmp/o/abs.txt"].get<std::string>(), &out));
  EXPECT_EQ(out, "abs");
  EXPECT_FALSE(r["files"].contains("missing.txt"));
  EXPECT_THAT(r["message"].get<std::string>(),
              HasSubstr("missing.txt not found"));
}

TEST_F(FusionServerTest, MemoryLimitKillsTheProgram) {
  json req = Code("python",
                  "x = bytearray(512 << 20)\n"
                  "for i in range(0, len(x), 4096): x[i] = 1\n"
                  "print('survived')");
  req["memory_limit_MB"] = 64;
  req["run_timeout"] = 60;
  json r = Run(req);
  EXPECT_EQ(r["status"], "Failed") << r;
  EXPECT_EQ(r["run_result"]["status"], "Finished");
  EXPECT_EQ(r["run_result"]["return_code"], -9);
  EXPECT_EQ(r["run_result"]["stdout"], "");
  EXPECT_THAT(r["message"].get<std::string>(), HasSubstr("out of memory"));
}

TEST_F(FusionServerTest, ConcurrentRequestsAreAllAnsweredCorrectly) {
  constexpr int kRequests = 16;
  std::vector<json> replies(kRequests);
  std::vector<std::string> texts(kRequests);
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      json req = Code("python", absl::StrCat("print(", i, " * 2)"));
      req["run_timeout"] = 120;
      Reply r = Post(server_->port(), req);
      replies[i] = r.body;
      texts[i] = r.text;
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(replies[i].is_object()) << i << ": " << texts[i];
    EXPECT_EQ(replies[i]["status"], "Success") << replies[i];
    EXPECT_EQ(replies[i]["run_result"]["stdout"], absl::StrCat(i * 2, "\n"));
  }
  auto& reg = metrics::Registry::Default();
  EXPECT_GE(
      reg.AddCounter("dsec_fusion_requests_total", "", {"language", "status"})
          ->Value({"python", "Success"}),
      kRequests);
  EXPECT_THAT(reg.Render(), HasSubstr("dsec_fusion_request_seconds_bucket"));
}

TEST_F(FusionServerTest, EachRequestsSandboxIsDeleted) {
  // A job allowed one sandbox at a time serves requests one after another
  // only if each request's sandbox is gone when it is answered.
  auto client = cluster_->NewJobClient("fusion-quota-1", 1);
  ASSERT_TRUE(client.ok()) << client.status();
  FusionServerOptions options;
  options.client = *client;
  options.port = 0;
  auto server = FusionServer::Create(std::move(options));
  ASSERT_TRUE(server.ok()) << server.status();
  for (const json& req :
       {Code("python", "print(1)"), Code("cpp", "int main() { oops }"),
        Code("python", "raise SystemExit(4)"), Code("bash", "echo done")}) {
    const absl::Time start = absl::Now();
    Reply r = Post((*server)->port(), req);
    ASSERT_TRUE(r.body.is_object()) << r.text;
    EXPECT_NE(r.body["status"], "SandboxError") << r.text;
    EXPECT_LT(absl::Now() - start, absl::Seconds(30)) << r.text;
  }
}

}  // namespace
}  // namespace dsec::client
