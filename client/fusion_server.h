// A SandboxFusion-compatible HTTP endpoint over the dsec client, so that
// frameworks which speak SandboxFusion (verl, ROLL) switch to dsec by
// changing a URL.
//
//   POST /run_code  SandboxFusion's RunCodeRequest -> RunCodeResponse
//   GET  /v1/ping   "pong"
//   GET  /healthz   "ok"
//
// Each /run_code request gets a fresh sandbox: the request's files and the
// code file are written, the compile step (if the language has one) and the
// run step are executed, fetch_files are read back, and the sandbox is
// deleted (on every path, errors included).
//
// Status mapping (SandboxFusion's contract):
//   Success       compile (if any) exited 0 and run exited 0
//   Failed        the program failed: compile error, non-zero exit, signal,
//                 time limit, OOM. The results say how.
//   SandboxError  the infrastructure failed (a non-OK Status from the
//                 client, or the language's toolchain is missing in the
//                 sandbox image); trainers mask such samples.
// A request that is not well formed is answered 400 with
// {"status": "SandboxError", "message": <reason>}; one larger than
// max_body_bytes 413.
//
// Threads: requests are served by a pool of max_concurrent_requests
// threads; each blocks on the client while its sandbox works. FusionServer
// is thread-safe; the request parsing and JSON helpers are pure functions.
#ifndef DSEC_CLIENT_FUSION_SERVER_H_
#define DSEC_CLIENT_FUSION_SERVER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "dsec/v1/types.pb.h"

namespace dsec::metrics {
class Registry;
}

namespace dsec::client {

// How one language is built and run in the sandbox's workdir. Steps are
// shell commands (/bin/sh -c).
struct FusionLanguage {
  std::string name;       // request "language", e.g. "cpp"
  std::string file_name;  // the code is written here, e.g. "main.cpp"
  std::string compile;    // empty: no compile step
  std::string run;
  // What must exist in the sandbox (for the error message), and a shell
  // test that succeeds iff it does; checked in the first step.
  std::string toolchain;
  std::string toolchain_check;
};

// python, pytest, bash, cpp, c, nodejs (alias javascript), java, perl.
std::vector<FusionLanguage> DefaultFusionLanguages();

// A parsed, validated /run_code request (timeouts within the limits,
// files base64-decoded).
struct RunCodeRequest {
  std::string code;
  std::string language;
  absl::Duration compile_timeout = absl::Seconds(10);
  absl::Duration run_timeout = absl::Seconds(10);
  int64_t memory_limit_mb = -1;  // <= 0: the server's default limits
  std::optional<std::string> stdin_data;
  std::map<std::string, std::string> files;  // path -> contents
  std::vector<std::string> fetch_files;
};

// SandboxFusion's CommandRunResult.
struct CommandRunResult {
  enum class Status { kFinished, kError, kTimeLimitExceeded };
  Status status = Status::kFinished;
  double execution_time = 0;  // seconds
  // Exit code; -signal when killed (as Python's subprocess reports);
  // absent on a time limit.
  std::optional<int> return_code;
  std::string stdout_data;
  std::string stderr_data;
};

// SandboxFusion's RunCodeResponse.
struct RunCodeResponse {
  enum class Status { kSuccess, kFailed, kSandboxError };
  Status status = Status::kSandboxError;
  std::string message;
  std::optional<CommandRunResult> compile_result;
  std::optional<CommandRunResult> run_result;
  std::optional<std::string> executor_pod_name;  // the node id
  std::map<std::string, std::string> files;      // path -> contents
};

absl::string_view RunCodeStatusName(RunCodeResponse::Status status);

struct RunCodeLimits {
  absl::Duration max_timeout = absl::Minutes(5);
};

// INVALID_ARGUMENT naming the offending field for malformed JSON, a missing
// or mistyped field, an unknown language (not in `languages`), bad base64,
// or a timeout outside (0, max_timeout].
absl::StatusOr<RunCodeRequest> ParseRunCodeRequest(
    absl::string_view body, const std::vector<FusionLanguage>& languages,
    const RunCodeLimits& limits = {});

// JSON text; invalid UTF-8 in outputs is replaced (U+FFFD), never fatal.
// Files are base64-encoded.
std::string RunCodeResponseToJson(const RunCodeResponse& response);

struct FusionServerOptions {
  // The client every request uses; null: one is created from
  // client_options.
  std::shared_ptr<Client> client;
  ClientOptions client_options;

  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (see FusionServer::port())
  // HTTP worker threads = requests served at once (more queue).
  int max_concurrent_requests = 64;
  // Larger request bodies are answered 413.
  size_t max_body_bytes = size_t{64} << 20;

  // Limits of each sandbox; memory_limit_MB > 0 overrides memory_bytes.
  dsec::v1::ResourceLimits default_limits;
  // Warm pool class for requests without memory_limit_MB (a class's
  // sandboxes keep the class's limits). Empty: the agent matches a class
  // by spec, if any.
  std::string warm_pool_class;
  RunCodeLimits limits;
  // Per stream, per step; more is dropped and noted in "message".
  int64_t max_output_bytes = int64_t{1} << 20;
  // Per fetched file; more is dropped and noted in "message".
  int64_t max_fetch_file_bytes = int64_t{16} << 20;
  std::vector<FusionLanguage> languages = DefaultFusionLanguages();

  // Where metrics go (dsec_fusion_*); null: Registry::Default().
  metrics::Registry* registry = nullptr;
};

class FusionServer {
 public:
  // Binds host:port and starts serving. UNAVAILABLE when the port is taken.
  static absl::StatusOr<std::unique_ptr<FusionServer>> Create(
      FusionServerOptions options);
  ~FusionServer();  // Shutdown()

  int port() const { return port_; }

  // Runs one request to the end (what POST /run_code does after parsing).
  RunCodeResponse RunCode(const RunCodeRequest& request);

  // Stops accepting, lets in-flight requests finish, joins. Idempotent.
  void Shutdown();

 private:
  struct Impl;
  explicit FusionServer(FusionServerOptions options);
  // POST /run_code: parse, run, answer (HTTP status and JSON body).
  void HandleRunCode(const std::string& body, int* http_status,
                     std::string* out);

  FusionServerOptions options_;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace dsec::client

#endif  // DSEC_CLIENT_FUSION_SERVER_H_
