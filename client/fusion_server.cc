// FusionServer: SandboxFusion's /run_code over dsec sandboxes.
//
// Invariants:
//   - Every sandbox created for a request is deleted before the request is
//     answered, whatever happened in between (scope guard right after the
//     create).
//   - Request text is untrusted: parsing never throws (nlohmann is used with
//     allow_exceptions = false and every field's type is checked before it
//     is read), and output is dumped with invalid UTF-8 replaced.
//   - "The toolchain is missing" is told apart from the program's own
//     failure by a per-request nonce the first step prints (the program
//     cannot know it) with exit code 127.
#include "client/fusion_server.h"

#include <signal.h>

#include <cmath>
#include <thread>

#include "absl/random/random.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/scope_guard.h"
#include "common/status_macros.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace dsec::client {
namespace {

using json = nlohmann::json;

constexpr int64_t kMaxMemoryLimitMb = int64_t{1} << 20;  // 1 TiB

const FusionLanguage* FindLanguage(const std::vector<FusionLanguage>& langs,
                                   absl::string_view name) {
  for (const FusionLanguage& l : langs) {
    if (l.name == name) return &l;
  }
  return nullptr;
}

std::string JsonTypeName(const json& v) { return v.type_name(); }

absl::Status FieldError(absl::string_view field, absl::string_view want,
                        const json& got) {
  return absl::InvalidArgumentError(absl::StrCat(
      "\"", field, "\" must be ", want, ", got ", JsonTypeName(got)));
}

// A timeout in seconds: absent or null keeps `*out`.
absl::Status ParseTimeout(const json& root, const char* field,
                          const RunCodeLimits& limits, absl::Duration* out) {
  auto it = root.find(field);
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return FieldError(field, "a number (seconds)", *it);
  const double seconds = it->get<double>();
  if (!std::isfinite(seconds) || seconds <= 0 ||
      absl::Seconds(seconds) > limits.max_timeout) {
    return absl::InvalidArgumentError(
        absl::StrFormat("\"%s\" must be in (0, %g] seconds, got %g", field,
                        absl::ToDoubleSeconds(limits.max_timeout), seconds));
  }
  *out = absl::Seconds(seconds);
  return absl::OkStatus();
}

json ResultToJson(const CommandRunResult& r) {
  static constexpr const char* kNames[] = {"Finished", "Error",
                                           "TimeLimitExceeded"};
  json j;
  j["status"] = kNames[static_cast<int>(r.status)];
  j["execution_time"] = r.execution_time;
  j["return_code"] =
      r.return_code.has_value() ? json(*r.return_code) : json(nullptr);
  j["stdout"] = r.stdout_data;
  j["stderr"] = r.stderr_data;
  return j;
}

std::string Dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string ErrorBody(absl::string_view message) {
  return Dump(
      json{{"status", "SandboxError"}, {"message", std::string(message)}});
}

CommandRunResult ToRunResult(const ExecOutcome& o) {
  CommandRunResult r;
  r.execution_time = absl::ToDoubleSeconds(o.wall_time);
  r.stdout_data = o.stdout_data;
  r.stderr_data = o.stderr_data;
  switch (o.kind) {
    case ExitKind::kExited:
      r.return_code = o.exit_code;
      break;
    case ExitKind::kTimedOut:
    case ExitKind::kCpuLimit:
      r.status = CommandRunResult::Status::kTimeLimitExceeded;
      break;
    case ExitKind::kSignaled:
    case ExitKind::kOomKilled:
    case ExitKind::kPidsLimit:
    case ExitKind::kSeccompViolation:
      r.return_code = -(o.signal > 0 ? o.signal : SIGKILL);
      break;
  }
  return r;
}

// Why a step that did not exit 0 failed, for "message".
std::string DescribeFailure(absl::string_view step, const ExecOutcome& o,
                            absl::Duration timeout) {
  switch (o.kind) {
    case ExitKind::kExited:
      return absl::StrCat(step, ": exit code ", o.exit_code);
    case ExitKind::kSignaled:
      return absl::StrCat(step, ": killed by signal ", o.signal);
    case ExitKind::kTimedOut:
      return absl::StrCat(step, ": time limit of ",
                          absl::FormatDuration(timeout), " exceeded");
    case ExitKind::kCpuLimit:
      return absl::StrCat(step, ": CPU time limit exceeded");
    case ExitKind::kOomKilled:
      return absl::StrCat(step, ": out of memory (OOM-killed)");
    case ExitKind::kPidsLimit:
      return absl::StrCat(step, ": process limit reached");
    case ExitKind::kSeccompViolation:
      return absl::StrCat(step, ": forbidden system call");
  }
  return std::string(step);
}

}  // namespace

std::vector<FusionLanguage> DefaultFusionLanguages() {
  const std::string has_python = "command -v python3";
  std::vector<FusionLanguage> langs = {
      {"python", "main.py", "", "python3 main.py", "python3", has_python},
      {"pytest", "test_main.py", "",
       "python3 -m pytest -q -p no:cacheprovider test_main.py", "pytest",
       "python3 -c 'import pytest'"},
      {"bash", "main.sh", "", "bash main.sh", "bash", "command -v bash"},
      {"cpp", "main.cpp", "g++ -O2 -std=c++17 -o main main.cpp", "./main",
       "g++", "command -v g++"},
      {"c", "main.c", "gcc -O2 -o main main.c -lm", "./main", "gcc",
       "command -v gcc"},
      {"nodejs", "main.js", "", "node main.js", "node", "command -v node"},
      // The JDK reads its security config from /etc, which the built-in
      // image does not share: checked, so a bare /etc says so.
      {"java", "Main.java", "javac Main.java", "java -cp . Main",
       "javac (with its conf/security/java.security)",
       "j=$(readlink -f \"$(command -v javac)\") && "
       "test -r \"${j%/bin/javac}/conf/security/java.security\""},
      {"perl", "main.pl", "", "perl main.pl", "perl", "command -v perl"},
  };
  FusionLanguage js = langs[5];
  js.name = "javascript";
  langs.push_back(js);
  return langs;
}

absl::string_view RunCodeStatusName(RunCodeResponse::Status status) {
  switch (status) {
    case RunCodeResponse::Status::kSuccess:
      return "Success";
    case RunCodeResponse::Status::kFailed:
      return "Failed";
    case RunCodeResponse::Status::kSandboxError:
      return "SandboxError";
  }
  return "SandboxError";
}

absl::StatusOr<RunCodeRequest> ParseRunCodeRequest(
    absl::string_view body, const std::vector<FusionLanguage>& languages,
    const RunCodeLimits& limits) {
  json root = json::parse(body.begin(), body.end(), nullptr,
                          /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError("request body is not valid JSON");
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request body must be a JSON object, got ", JsonTypeName(root)));
  }
  RunCodeRequest request;

  auto code = root.find("code");
  if (code == root.end()) {
    return absl::InvalidArgumentError("\"code\" is required");
  }
  if (!code->is_string()) return FieldError("code", "a string", *code);
  request.code = code->get<std::string>();

  auto language = root.find("language");
  if (language == root.end()) {
    return absl::InvalidArgumentError("\"language\" is required");
  }
  if (!language->is_string()) {
    return FieldError("language", "a string", *language);
  }
  request.language = language->get<std::string>();
  if (FindLanguage(languages, request.language) == nullptr) {
    std::vector<std::string> names;
    for (const FusionLanguage& l : languages) names.push_back(l.name);
    return absl::InvalidArgumentError(
        absl::StrCat("unknown language \"", request.language,
                     "\"; supported: ", absl::StrJoin(names, ", ")));
  }

  RETURN_IF_ERROR(
      ParseTimeout(root, "compile_timeout", limits, &request.compile_timeout));
  RETURN_IF_ERROR(
      ParseTimeout(root, "run_timeout", limits, &request.run_timeout));

  auto memory = root.find("memory_limit_MB");
  if (memory != root.end() && !memory->is_null()) {
    if (!memory->is_number()) {
      return FieldError("memory_limit_MB", "an integer", *memory);
    }
    const double mb = memory->get<double>();
    if (mb != std::floor(mb) || mb > kMaxMemoryLimitMb) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "\"memory_limit_MB\" must be an integer <= %d, got %g",
          kMaxMemoryLimitMb, mb));
    }
    request.memory_limit_mb = static_cast<int64_t>(mb);
  }

  auto stdin_it = root.find("stdin");
  if (stdin_it != root.end() && !stdin_it->is_null()) {
    if (!stdin_it->is_string()) {
      return FieldError("stdin", "a string or null", *stdin_it);
    }
    request.stdin_data = stdin_it->get<std::string>();
  }

  auto files = root.find("files");
  if (files != root.end() && !files->is_null()) {
    if (!files->is_object()) {
      return FieldError("files", "an object {path: base64}", *files);
    }
    for (auto it = files->begin(); it != files->end(); ++it) {
      if (it.key().empty()) {
        return absl::InvalidArgumentError("\"files\" has an empty path");
      }
      if (it.value().is_null()) continue;  // SandboxFusion: nothing to write
      if (!it.value().is_string()) {
        return FieldError(absl::StrCat("files[\"", it.key(), "\"]"),
                          "a base64 string", it.value());
      }
      std::string data;
      if (!absl::Base64Unescape(it.value().get<std::string>(), &data)) {
        return absl::InvalidArgumentError(
            absl::StrCat("files[\"", it.key(), "\"] is not valid base64"));
      }
      request.files[it.key()] = std::move(data);
    }
  }

  auto fetch = root.find("fetch_files");
  if (fetch != root.end() && !fetch->is_null()) {
    if (!fetch->is_array()) {
      return FieldError("fetch_files", "an array of paths", *fetch);
    }
    for (const json& path : *fetch) {
      if (!path.is_string() || path.get<std::string>().empty()) {
        return FieldError("fetch_files[]", "a non-empty string", path);
      }
      request.fetch_files.push_back(path.get<std::string>());
    }
  }
  return request;
}

std::string RunCodeResponseToJson(const RunCodeResponse& response) {
  json j;
  j["status"] = std::string(RunCodeStatusName(response.status));
  j["message"] = response.message;
  j["compile_result"] = response.compile_result.has_value()
                            ? ResultToJson(*response.compile_result)
                            : json(nullptr);
  j["run_result"] = response.run_result.has_value()
                        ? ResultToJson(*response.run_result)
                        : json(nullptr);
  j["executor_pod_name"] = response.executor_pod_name.has_value()
                               ? json(*response.executor_pod_name)
                               : json(nullptr);
  json files = json::object();
  for (const auto& [path, data] : response.files) {
    files[path] = absl::Base64Escape(data);
  }
  j["files"] = std::move(files);
  return Dump(j);
}

struct FusionServer::Impl {
  std::shared_ptr<Client> client;
  httplib::Server http;
  std::thread thread;
  absl::BitGen bitgen;  // guarded by bitgen_mu
  absl::Mutex bitgen_mu;

  metrics::Counter* requests = nullptr;
  metrics::Histogram* latency = nullptr;
  metrics::Gauge* in_flight = nullptr;
};

FusionServer::FusionServer(FusionServerOptions options)
    : options_(std::move(options)), impl_(std::make_unique<Impl>()) {}

FusionServer::~FusionServer() { Shutdown(); }

absl::StatusOr<std::unique_ptr<FusionServer>> FusionServer::Create(
    FusionServerOptions options) {
  if (options.max_concurrent_requests < 1) {
    return absl::InvalidArgumentError("max_concurrent_requests must be >= 1");
  }
  std::unique_ptr<FusionServer> s(new FusionServer(std::move(options)));
  Impl& impl = *s->impl_;
  impl.client = s->options_.client;
  if (impl.client == nullptr) {
    ASSIGN_OR_RETURN(impl.client, Client::Create(s->options_.client_options));
  }
  metrics::Registry& reg = s->options_.registry != nullptr
                               ? *s->options_.registry
                               : metrics::Registry::Default();
  impl.requests = reg.AddCounter("dsec_fusion_requests_total",
                                 "SandboxFusion /run_code requests.",
                                 {"language", "status"});
  impl.latency = reg.AddHistogram("dsec_fusion_request_seconds",
                                  "SandboxFusion /run_code latency.",
                                  {"language"}, metrics::LatencyBuckets());
  impl.in_flight = reg.AddGauge("dsec_fusion_requests_in_flight",
                                "SandboxFusion /run_code requests running.");

  FusionServer* self = s.get();
  const int threads = s->options_.max_concurrent_requests;
  impl.http.new_task_queue = [threads] {
    return new httplib::ThreadPool(threads);
  };
  impl.http.set_payload_max_length(s->options_.max_body_bytes);
  impl.http.Post("/run_code",
                 [self](const httplib::Request& req, httplib::Response& res) {
                   self->HandleRunCode(req.body, &res.status, &res.body);
                   res.set_header("Content-Type", "application/json");
                 });
  impl.http.Get("/v1/ping",
                [](const httplib::Request&, httplib::Response& res) {
                  res.set_content("pong", "text/plain");
                });
  impl.http.Get("/healthz",
                [](const httplib::Request&, httplib::Response& res) {
                  res.set_content("ok\n", "text/plain");
                });
  const size_t max_body = s->options_.max_body_bytes;
  // Errors httplib answers itself (413, 404, ...) get a SandboxFusion-shaped
  // body too; a handler's own error body is left alone.
  impl.http.set_error_handler(httplib::Server::HandlerWithResponse(
      [max_body](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) {
          return httplib::Server::HandlerResponse::Unhandled;
        }
        std::string message =
            res.status == 413
                ? absl::StrCat("request body exceeds ", max_body, " bytes")
            : res.status == 404
                ? absl::StrCat("no such endpoint: ", req.method, " ", req.path)
                : absl::StrCat("HTTP ", res.status);
        res.set_content(ErrorBody(message), "application/json");
        return httplib::Server::HandlerResponse::Handled;
      }));
  impl.http.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        res.status = 500;
        res.set_content(ErrorBody("internal error"), "application/json");
      });

  const std::string& host = s->options_.host;
  const int port = s->options_.port;
  const int bound = port == 0
                        ? impl.http.bind_to_any_port(host)
                        : (impl.http.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    return absl::UnavailableError(
        absl::StrCat("fusion: cannot listen on ", host, ":", port));
  }
  s->port_ = bound;
  impl.thread = std::thread([&impl] { impl.http.listen_after_bind(); });
  // stop() is a no-op until the listener runs; Shutdown relies on it.
  while (!impl.http.is_running()) absl::SleepFor(absl::Milliseconds(1));
  DSEC_LOG_INFO("fusion: listening on {}:{}", host, bound);
  return s;
}

void FusionServer::Shutdown() {
  if (!impl_ || !impl_->thread.joinable()) return;
  impl_->http.stop();
  impl_->thread.join();  // the pool finishes in-flight requests first
}

void FusionServer::HandleRunCode(const std::string& body, int* http_status,
                                 std::string* out) {
  const absl::Time start = absl::Now();
  absl::StatusOr<RunCodeRequest> request =
      ParseRunCodeRequest(body, options_.languages, options_.limits);
  if (!request.ok()) {
    *http_status = 400;
    *out = ErrorBody(request.status().message());
    impl_->requests->Inc({"", "BadRequest"});
    return;
  }
  impl_->in_flight->Add({}, 1);
  RunCodeResponse response = RunCode(*request);
  impl_->in_flight->Add({}, -1);
  *http_status = 200;
  *out = RunCodeResponseToJson(response);
  impl_->requests->Inc(
      {request->language, std::string(RunCodeStatusName(response.status))});
  impl_->latency->Observe({request->language},
                          absl::ToDoubleSeconds(absl::Now() - start));
}

RunCodeResponse FusionServer::RunCode(const RunCodeRequest& request) {
  RunCodeResponse response;
  std::vector<std::string> notes;
  auto finish = [&](RunCodeResponse::Status status, std::string message) {
    response.status = status;
    if (!message.empty()) notes.insert(notes.begin(), std::move(message));
    response.message = absl::StrJoin(notes, "; ");
    return response;
  };
  auto infra_error = [&](absl::string_view what, const absl::Status& status) {
    return finish(RunCodeResponse::Status::kSandboxError,
                  absl::StrCat(what, ": ", status.ToString()));
  };
  const FusionLanguage* lang =
      FindLanguage(options_.languages, request.language);
  if (lang == nullptr) {
    return finish(RunCodeResponse::Status::kSandboxError,
                  absl::StrCat("unknown language \"", request.language, "\""));
  }

  dsec::v1::SandboxSpec spec;
  *spec.mutable_limits() = options_.default_limits;
  if (request.memory_limit_mb > 0) {
    spec.mutable_limits()->set_memory_bytes(request.memory_limit_mb << 20);
  } else {
    spec.set_warm_pool_class(options_.warm_pool_class);
  }
  absl::StatusOr<std::shared_ptr<Sandbox>> created =
      impl_->client->CreateSandbox(spec);
  if (!created.ok()) return infra_error("create sandbox", created.status());
  std::shared_ptr<Sandbox> sandbox = *std::move(created);
  auto remove = MakeScopeGuard([&sandbox] {
    absl::Status deleted = sandbox->Delete();
    if (!deleted.ok()) {
      DSEC_LOG_WARN("fusion: delete sandbox {}: {}", sandbox->id(),
                    deleted.ToString());
    }
  });
  response.executor_pod_name = sandbox->node_id();

  for (const auto& [path, data] : request.files) {
    absl::Status written = sandbox->WriteFile(path, data);
    if (!written.ok())
      return infra_error(absl::StrCat("write ", path), written);
  }
  absl::Status written = sandbox->WriteFile(lang->file_name, request.code);
  if (!written.ok()) {
    return infra_error(absl::StrCat("write ", lang->file_name), written);
  }

  // The first step checks the toolchain; a miss prints the nonce, exit 127.
  std::string nonce;
  {
    absl::MutexLock lock(&impl_->bitgen_mu);
    nonce = absl::StrFormat("dsec-fusion-missing-%016x",
                            absl::Uniform<uint64_t>(impl_->bitgen));
  }
  bool first = true;
  auto run_step =
      [&](const std::string& script, absl::Duration timeout,
          const std::string& stdin_data) -> absl::StatusOr<ExecOutcome> {
    Command command;
    command.shell = script;
    if (first && !lang->toolchain_check.empty()) {
      command.shell = absl::StrCat("{ ", lang->toolchain_check,
                                   "; } >/dev/null 2>&1 || { echo ", nonce,
                                   " >&2; exit 127; }\n", script);
    }
    first = false;
    command.timeout = timeout;
    command.stdin_data = stdin_data;
    command.max_output_bytes = options_.max_output_bytes;
    return sandbox->Run(command);
  };
  auto toolchain_missing = [&](const ExecOutcome& o) {
    return o.kind == ExitKind::kExited && o.exit_code == 127 &&
           absl::StrContains(o.stderr_data, nonce);
  };
  auto note_truncation = [&](absl::string_view step, const ExecOutcome& o) {
    if (o.stdout_truncated || o.stderr_truncated) {
      notes.push_back(absl::StrCat(step, " output truncated at ",
                                   options_.max_output_bytes,
                                   " bytes per stream"));
    }
  };
  auto fetch_files = [&]() -> absl::Status {
    for (const std::string& path : request.fetch_files) {
      bool truncated = false;
      absl::StatusOr<std::string> data =
          sandbox->ReadFile(path, options_.max_fetch_file_bytes, &truncated);
      if (data.ok()) {
        response.files[path] = *std::move(data);
        if (truncated) {
          notes.push_back(absl::StrCat("fetch_files: ", path, " truncated at ",
                                       options_.max_fetch_file_bytes,
                                       " bytes"));
        }
      } else if (absl::IsNotFound(data.status())) {
        notes.push_back(absl::StrCat("fetch_files: ", path, " not found"));
      } else if (absl::IsFailedPrecondition(data.status()) ||
                 absl::IsInvalidArgument(data.status())) {
        notes.push_back(
            absl::StrCat("fetch_files: ", path, ": ", data.status().message()));
      } else {
        return absl::Status(
            data.status().code(),
            absl::StrCat("fetch ", path, ": ", data.status().message()));
      }
    }
    return absl::OkStatus();
  };
  auto missing = [&] {
    return finish(RunCodeResponse::Status::kSandboxError,
                  absl::StrCat("language ", lang->name, ": toolchain ",
                               lang->toolchain, " not found in the sandbox"));
  };
  // A failed step ends the request: fetch what is there, report Failed.
  auto failed = [&](std::string why) {
    absl::Status fetched = fetch_files();
    if (!fetched.ok()) return infra_error("fetch_files", fetched);
    return finish(RunCodeResponse::Status::kFailed, std::move(why));
  };

  if (!lang->compile.empty()) {
    absl::StatusOr<ExecOutcome> compiled =
        run_step(lang->compile, request.compile_timeout, "");
    if (!compiled.ok()) return infra_error("compile", compiled.status());
    if (toolchain_missing(*compiled)) return missing();
    response.compile_result = ToRunResult(*compiled);
    note_truncation("compile", *compiled);
    if (!compiled->ok()) {
      return failed(
          DescribeFailure("compile", *compiled, request.compile_timeout));
    }
  }
  absl::StatusOr<ExecOutcome> ran =
      run_step(lang->run, request.run_timeout, request.stdin_data.value_or(""));
  if (!ran.ok()) return infra_error("run", ran.status());
  if (toolchain_missing(*ran)) return missing();
  response.run_result = ToRunResult(*ran);
  note_truncation("run", *ran);
  if (!ran->ok()) {
    return failed(DescribeFailure("run", *ran, request.run_timeout));
  }
  absl::Status fetched = fetch_files();
  if (!fetched.ok()) return infra_error("fetch_files", fetched);
  return finish(RunCodeResponse::Status::kSuccess, "");
}

}  // namespace dsec::client
