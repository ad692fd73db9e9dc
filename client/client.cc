#include "client/client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <condition_variable>
#include <optional>
#include <queue>
#include <random>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/convert.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "common/token.h"
#include "dsec/v1/agent_service.grpc.pb.h"
#include "dsec/v1/job_service.grpc.pb.h"
#include "dsec/v1/sandbox_service.grpc.pb.h"

namespace dsec::client {
namespace {

namespace v1 = dsec::v1;

constexpr absl::string_view kLostPayload = "type.dsec.dev/sandbox-lost";
constexpr size_t kFileChunk = 1 << 20;
constexpr size_t kDeleteBatch = 1000;

grpc::ChannelArguments ChannelArgs() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // Keep idle agent connections alive across long tool loops.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  return args;
}

bool IsTerminal(v1::SandboxState s) {
  return s == v1::SANDBOX_STATE_LOST || s == v1::SANDBOX_STATE_TERMINATED ||
         s == v1::SANDBOX_STATE_FAILED || s == v1::SANDBOX_STATE_TERMINATING;
}

absl::Status WithContext(const grpc::Status& s, absl::string_view what) {
  absl::Status st = dsec::FromGrpcStatus(s);
  return absl::Status(st.code(), absl::StrCat(what, ": ", st.message()));
}

absl::Status Lost(absl::string_view id, absl::string_view why) {
  absl::Status st = absl::UnavailableError(
      absl::StrCat("sandbox ", id, " is lost: ", why,
                   " (recreate it and replay the trajectory)"));
  st.SetPayload(kLostPayload, absl::Cord(id));
  return st;
}

ExitKind KindOf(v1::ExecStatus s) {
  switch (s) {
    case v1::EXEC_STATUS_SIGNALED:
      return ExitKind::kSignaled;
    case v1::EXEC_STATUS_TIMED_OUT:
      return ExitKind::kTimedOut;
    case v1::EXEC_STATUS_OOM_KILLED:
      return ExitKind::kOomKilled;
    case v1::EXEC_STATUS_PIDS_LIMIT:
      return ExitKind::kPidsLimit;
    case v1::EXEC_STATUS_SECCOMP_VIOLATION:
      return ExitKind::kSeccompViolation;
    case v1::EXEC_STATUS_CPU_LIMIT:
      return ExitKind::kCpuLimit;
    default:
      return ExitKind::kExited;
  }
}

// The typed outcome of an agent ExecResult; INFRA_FAILURE is a Status.
absl::StatusOr<ExecOutcome> ToOutcome(const v1::ExecResult& r,
                                      std::string streamed_out,
                                      std::string streamed_err) {
  if (r.status() == v1::EXEC_STATUS_INFRA_FAILURE ||
      r.status() == v1::EXEC_STATUS_UNSPECIFIED) {
    auto code = static_cast<absl::StatusCode>(r.infra_error().code());
    if (code == absl::StatusCode::kOk) code = absl::StatusCode::kInternal;
    return absl::Status(code, absl::StrCat("exec infrastructure failure: ",
                                           r.infra_error().message()));
  }
  ExecOutcome o;
  o.kind = KindOf(r.status());
  o.exit_code = r.exit_code();
  o.signal = r.signal();
  o.stdout_data =
      r.stdout_data().empty() ? std::move(streamed_out) : r.stdout_data();
  o.stderr_data =
      r.stderr_data().empty() ? std::move(streamed_err) : r.stderr_data();
  o.stdout_truncated = r.stdout_truncated();
  o.stderr_truncated = r.stderr_truncated();
  o.wall_time = FromProtoDuration(r.wall_time());
  o.cpu_time = FromProtoDuration(r.cpu_time());
  o.peak_memory_bytes = r.peak_memory_bytes();
  o.replayed = r.replayed();
  return o;
}

v1::ExecRequest ToRequest(const Command& c) {
  v1::ExecRequest r = ToExecRequest(c);
  if (r.action_id().empty()) r.set_action_id("c-" + RandomHex(12));
  return r;
}

}  // namespace

bool IsSandboxLost(const absl::Status& status) {
  return status.GetPayload(kLostPayload).has_value();
}

// ---------------------------------------------------------------------------
// Client::Impl: channels, stubs, and a small pool for delayed work (retries,
// token renewal, lost checks) so gRPC callback threads never block.

struct Client::Impl {
  explicit Impl(const ClientOptions& o) : options(o) {
    creds = o.credentials ? o.credentials : grpc::InsecureChannelCredentials();
    controller = grpc::CreateCustomChannel(o.controller, creds, ChannelArgs());
    sandboxes = v1::Sandboxes::NewStub(controller);
    jobs = v1::Jobs::NewStub(controller);
    for (int i = 0; i < kWorkers; ++i) {
      workers.emplace_back([this] { WorkLoop(); });
    }
  }
  ~Impl() {
    {
      std::lock_guard<std::mutex> l(qmu);
      stopping = true;
    }
    qcv.notify_all();
    for (auto& t : workers) t.join();
  }

  void SetupContext(grpc::ClientContext* ctx, absl::Time deadline) const {
    ctx->set_deadline(absl::ToChronoTime(deadline));
    if (!options.api_key.empty()) {
      ctx->AddMetadata("authorization",
                       absl::StrCat("Bearer ", options.api_key));
    }
  }

  v1::SandboxRuntime::Stub& Agent(const std::string& endpoint) {
    absl::MutexLock l(&agents_mu);
    auto& stub = agents[endpoint];
    if (!stub) {
      stub = v1::SandboxRuntime::NewStub(
          grpc::CreateCustomChannel(endpoint, creds, ChannelArgs()));
    }
    return *stub;
  }

  absl::Duration Backoff(int attempt) {
    absl::Duration d = options.initial_backoff * (1 << std::min(attempt, 16));
    d = std::min(d, options.max_backoff);
    std::uniform_real_distribution<double> jitter(0.5, 1.0);
    absl::MutexLock l(&rng_mu);
    return d * jitter(rng);
  }

  // Runs `fn` (a unary call given a fresh context) until it succeeds, fails
  // with something other than UNAVAILABLE, or the deadline/attempts run out.
  template <typename Fn>
  grpc::Status Retry(absl::Time deadline, Fn fn) {
    grpc::Status s;
    for (int attempt = 0;; ++attempt) {
      grpc::ClientContext ctx;
      SetupContext(&ctx, deadline);
      s = fn(ctx);
      if (s.error_code() != grpc::StatusCode::UNAVAILABLE ||
          attempt + 1 >= options.max_attempts) {
        return s;
      }
      absl::Duration wait = Backoff(attempt);
      if (absl::Now() + wait >= deadline) return s;
      absl::SleepFor(wait);
    }
  }

  void After(absl::Duration delay, std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> l(qmu);
      queue.push({absl::Now() + delay, seq++, std::move(fn)});
    }
    qcv.notify_one();
  }

  void WorkLoop() {
    std::unique_lock<std::mutex> l(qmu);
    while (true) {
      if (stopping && queue.empty()) return;
      if (queue.empty()) {
        qcv.wait(l);
        continue;
      }
      absl::Time at = queue.top().at;
      absl::Time now = absl::Now();
      if (at > now && !stopping) {
        qcv.wait_for(l, absl::ToChronoNanoseconds(at - now));
        continue;
      }
      std::function<void()> fn = std::move(const_cast<Task&>(queue.top()).fn);
      queue.pop();
      l.unlock();
      fn();
      l.lock();
    }
  }

  static constexpr int kWorkers = 4;
  const ClientOptions options;
  std::shared_ptr<grpc::ChannelCredentials> creds;
  std::shared_ptr<grpc::Channel> controller;
  std::unique_ptr<v1::Sandboxes::Stub> sandboxes;
  std::unique_ptr<v1::Jobs::Stub> jobs;

  absl::Mutex agents_mu;
  std::map<std::string, std::unique_ptr<v1::SandboxRuntime::Stub>> agents
      ABSL_GUARDED_BY(agents_mu);

  absl::Mutex rng_mu;
  std::mt19937_64 rng ABSL_GUARDED_BY(rng_mu){std::random_device{}()};

  struct Task {
    absl::Time at;
    uint64_t seq;
    std::function<void()> fn;
    bool operator<(const Task& o) const {
      return at != o.at ? at > o.at : seq > o.seq;
    }
  };
  std::mutex qmu;
  std::condition_variable qcv;
  std::priority_queue<Task> queue;
  uint64_t seq = 0;
  bool stopping = false;
  std::vector<std::thread> workers;
};

// ---------------------------------------------------------------------------
// One exec. ExecCall carries the request across attempts; each attempt is
// an ExecAttempt, a callback-API reader over the agent's Exec stream that
// deletes itself in OnDone. UNAVAILABLE restarts the exec under the same
// action id until the deadline (the agent never runs an action id twice);
// an expired token is renewed once.

class ExecCall : public std::enable_shared_from_this<ExecCall> {
 public:
  ExecCall(std::shared_ptr<Sandbox> sandbox, v1::ExecRequest request,
           absl::Time deadline, OutputFn on_output,
           std::function<void(absl::StatusOr<ExecOutcome>)> done)
      : sandbox_(std::move(sandbox)),
        request_(std::move(request)),
        deadline_(deadline),
        on_output_(std::move(on_output)),
        done_(std::move(done)) {
    request_.set_stream_output(on_output_ != nullptr);
  }

  void Start();

  // From the attempt's OnDone (a gRPC thread: must not block).
  void AttemptDone(grpc::Status s, std::optional<v1::ExecResult> result,
                   std::string out, std::string err) {
    if (s.ok() && result.has_value()) {
      Finish(ToOutcome(*result, std::move(out), std::move(err)));
      return;
    }
    if (s.ok()) {
      s = grpc::Status(grpc::StatusCode::INTERNAL,
                       "exec stream ended without a result");
    }
    // Decide off the gRPC thread: retrying sleeps, renewing a token or
    // asking the controller whether the sandbox is lost blocks.
    impl().After(absl::ZeroDuration(),
                 [self = shared_from_this(), s] { self->AfterFailure(s); });
  }

  // Output chunk of the current attempt. A replayed exec re-sends output
  // the caller may have seen on an earlier attempt: deliver each stream
  // offset once.
  void Output(int stream, const std::string& data, int64_t offset) {
    if (!on_output_) return;
    int64_t& seen = stream == 1 ? out_seen_ : err_seen_;
    int64_t end = offset + static_cast<int64_t>(data.size());
    if (end <= seen) return;
    int64_t skip = std::max<int64_t>(0, seen - offset);
    on_output_(stream, absl::string_view(data).substr(skip));
    seen = end;
  }

 private:
  Client::Impl& impl() { return *sandbox_->client_->impl_; }

  void AfterFailure(const grpc::Status& s) {
    ++attempt_;
    if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED && !renewed_) {
      renewed_ = true;
      if (sandbox_->RenewToken().ok()) {
        Start();
        return;
      }
    }
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE &&
        attempt_ < impl().options.max_attempts) {
      // After a couple of failures, ask the controller whether there is
      // still a sandbox to retry against.
      if (attempt_ >= 2) {
        absl::Status lost = sandbox_->Classify(absl::UnavailableError("probe"));
        if (IsSandboxLost(lost)) {
          Finish(lost);
          return;
        }
      }
      absl::Duration wait = impl().Backoff(attempt_);
      if (absl::Now() + wait < deadline_) {
        impl().After(wait, [self = shared_from_this()] { self->Start(); });
        return;
      }
    }
    Finish(sandbox_->Classify(
        WithContext(s, absl::StrCat("exec in sandbox ", sandbox_->id()))));
  }

  void Finish(absl::StatusOr<ExecOutcome> r) {
    auto done = std::move(done_);
    done(std::move(r));
  }

  friend class ExecAttempt;
  std::shared_ptr<Sandbox> sandbox_;
  v1::ExecRequest request_;
  const absl::Time deadline_;
  OutputFn on_output_;
  std::function<void(absl::StatusOr<ExecOutcome>)> done_;
  int attempt_ = 0;
  bool renewed_ = false;
  int64_t out_seen_ = 0, err_seen_ = 0;
};

class ExecAttempt : public grpc::ClientReadReactor<v1::ExecEvent> {
 public:
  explicit ExecAttempt(std::shared_ptr<ExecCall> call)
      : call_(std::move(call)) {}

  void Start(v1::SandboxRuntime::Stub& stub, const v1::ExecRequest& request) {
    request_ = request;
    context_.set_deadline(absl::ToChronoTime(call_->deadline_));
    stub.async()->Exec(&context_, &request_, this);
    StartRead(&event_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    if (event_.has_output()) {
      const auto& o = event_.output();
      int stream = o.stream() == v1::OUTPUT_STREAM_STDERR ? 2 : 1;
      (stream == 1 ? out_ : err_).append(o.data());
      call_->Output(stream, o.data(), o.offset());
    } else if (event_.has_result()) {
      result_ = std::move(*event_.mutable_result());
    }
    StartRead(&event_);
  }

  void OnDone(const grpc::Status& s) override {
    std::shared_ptr<ExecCall> call = std::move(call_);
    grpc::Status status = s;
    std::optional<v1::ExecResult> result = std::move(result_);
    std::string out = std::move(out_), err = std::move(err_);
    delete this;
    call->AttemptDone(std::move(status), std::move(result), std::move(out),
                      std::move(err));
  }

 private:
  std::shared_ptr<ExecCall> call_;
  grpc::ClientContext context_;
  v1::ExecRequest request_;
  v1::ExecEvent event_;
  std::optional<v1::ExecResult> result_;
  std::string out_, err_;
};

void ExecCall::Start() {
  v1::SandboxHandle h = sandbox_->handle();
  request_.set_sandbox_id(h.sandbox_id());
  request_.set_token(h.token());
  auto* attempt = new ExecAttempt(shared_from_this());
  attempt->Start(impl().Agent(h.agent_endpoint()), request_);
}

// ---------------------------------------------------------------------------
// Sandbox

Sandbox::Sandbox(std::shared_ptr<Client> client, const v1::SandboxHandle& h)
    : client_(std::move(client)), id_(h.sandbox_id()), handle_(h) {}

v1::SandboxHandle Sandbox::handle() const {
  absl::MutexLock l(&mu_);
  return handle_;
}

std::string Sandbox::agent_endpoint() const {
  return handle().agent_endpoint();
}
std::string Sandbox::node_id() const { return handle().node_id(); }

absl::Status Sandbox::RenewToken() {
  auto& impl = *client_->impl_;
  v1::RenewTokenRequest req;
  req.set_sandbox_id(id_);
  v1::SandboxHandle fresh;
  grpc::Status s = impl.Retry(
      absl::Now() + impl.options.call_timeout, [&](grpc::ClientContext& ctx) {
        return impl.sandboxes->RenewToken(&ctx, req, &fresh);
      });
  if (!s.ok()) return Classify(WithContext(s, "renew token"));
  absl::MutexLock l(&mu_);
  handle_ = fresh;
  return absl::OkStatus();
}

absl::Status Sandbox::Classify(absl::Status status) {
  if (status.ok() || IsSandboxLost(status)) return status;
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kDeadlineExceeded:
      break;
    default:
      return status;
  }
  absl::StatusOr<v1::Sandbox> sb = client_->GetSandbox(id_);
  if (!sb.ok()) {
    if (sb.status().code() == absl::StatusCode::kNotFound) {
      return Lost(id_, "the controller no longer knows it");
    }
    return status;  // controller unreachable: cannot tell
  }
  if (IsTerminal(sb->state())) {
    return Lost(id_, absl::StrCat(v1::SandboxState_Name(sb->state()), " (",
                                  sb->state_reason(), ")"));
  }
  return status;
}

void Sandbox::RunAsync(const Command& command,
                       std::function<void(absl::StatusOr<ExecOutcome>)> done,
                       OutputFn on_output) {
  if (command.argv.empty() == command.shell.empty()) {
    done(absl::InvalidArgumentError(
        "a command needs exactly one of argv and shell"));
    return;
  }
  absl::Time deadline =
      absl::Now() + command.timeout + client_->options_.exec_slack;
  auto call = std::make_shared<ExecCall>(shared_from_this(), ToRequest(command),
                                         deadline, std::move(on_output),
                                         std::move(done));
  call->Start();
}

absl::StatusOr<ExecOutcome> Sandbox::RunStreaming(const Command& command,
                                                  OutputFn on_output) {
  absl::Notification n;
  absl::StatusOr<ExecOutcome> result;
  RunAsync(
      command,
      [&](absl::StatusOr<ExecOutcome> r) {
        result = std::move(r);
        n.Notify();
      },
      std::move(on_output));
  n.WaitForNotification();
  return result;
}

absl::StatusOr<ExecOutcome> Sandbox::Run(const Command& command) {
  return RunStreaming(command, nullptr);
}

std::future<absl::StatusOr<ExecOutcome>> Sandbox::RunFuture(
    const Command& command) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<ExecOutcome>>>();
  auto future = promise->get_future();
  RunAsync(command, [promise](absl::StatusOr<ExecOutcome> r) {
    promise->set_value(std::move(r));
  });
  return future;
}

absl::Status Sandbox::WriteFile(absl::string_view path, absl::string_view data,
                                uint32_t mode) {
  return WriteFileWithActionId(path, data, mode, "");
}

absl::Status Sandbox::WriteFileWithActionId(absl::string_view path,
                                            absl::string_view data,
                                            uint32_t mode,
                                            absl::string_view action_id) {
  auto& impl = *client_->impl_;
  std::string id =
      action_id.empty() ? "w-" + RandomHex(12) : std::string(action_id);
  absl::Time deadline = absl::Now() + impl.options.call_timeout;
  for (int attempt = 0;; ++attempt) {
    v1::SandboxHandle h = handle();
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(deadline));
    v1::WriteFileResponse resp;
    auto writer = impl.Agent(h.agent_endpoint()).WriteFile(&ctx, &resp);
    v1::WriteFileRequest req;
    auto* hdr = req.mutable_header();
    hdr->set_sandbox_id(id_);
    hdr->set_token(h.token());
    hdr->set_path(std::string(path));
    hdr->set_mode(mode);
    hdr->set_make_parents(true);
    hdr->set_action_id(id);
    hdr->set_size_bytes(static_cast<int64_t>(data.size()));
    bool ok = writer->Write(req);
    for (size_t off = 0; ok && off < data.size(); off += kFileChunk) {
      v1::WriteFileRequest chunk;
      chunk.set_data(std::string(data.substr(off, kFileChunk)));
      ok = writer->Write(chunk);
    }
    writer->WritesDone();
    grpc::Status s = writer->Finish();
    if (s.ok()) return absl::OkStatus();
    if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED && attempt == 0) {
      RETURN_IF_ERROR(RenewToken());
      continue;
    }
    absl::Duration wait = impl.Backoff(attempt);
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE ||
        attempt + 1 >= impl.options.max_attempts ||
        absl::Now() + wait >= deadline) {
      return Classify(WithContext(s, absl::StrCat("write ", path)));
    }
    absl::SleepFor(wait);
  }
}

absl::StatusOr<std::string> Sandbox::ReadFile(absl::string_view path,
                                              int64_t max_bytes,
                                              bool* truncated) {
  auto& impl = *client_->impl_;
  absl::Time deadline = absl::Now() + impl.options.call_timeout;
  std::string data;
  grpc::Status s = impl.Retry(deadline, [&](grpc::ClientContext& ctx) {
    v1::SandboxHandle h = handle();
    v1::ReadFileRequest req;
    req.set_sandbox_id(id_);
    req.set_token(h.token());
    req.set_path(std::string(path));
    // One byte past the cap tells whether there was more.
    req.set_limit_bytes(max_bytes + 1);
    data.clear();
    auto reader = impl.Agent(h.agent_endpoint()).ReadFile(&ctx, req);
    v1::ReadFileResponse resp;
    while (reader->Read(&resp)) {
      if (resp.has_info() && resp.info().type() == v1::FILE_TYPE_DIRECTORY) {
        ctx.TryCancel();
        break;
      }
      data.append(resp.data());
    }
    grpc::Status st = reader->Finish();
    if (resp.has_info() && resp.info().type() == v1::FILE_TYPE_DIRECTORY) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "is a directory");
    }
    return st;
  });
  if (!s.ok()) {
    absl::Status st = WithContext(s, absl::StrCat("read ", path));
    if (st.code() == absl::StatusCode::kNotFound ||
        st.code() == absl::StatusCode::kFailedPrecondition) {
      // NOT_FOUND may mean the file or the sandbox: tell them apart.
      absl::Status classified = Classify(st);
      return classified;
    }
    return Classify(st);
  }
  bool more = static_cast<int64_t>(data.size()) > max_bytes;
  if (more) data.resize(static_cast<size_t>(max_bytes));
  if (truncated != nullptr) *truncated = more;
  return data;
}

namespace {
Sandbox::FileEntry ToEntry(const v1::FileInfo& f) {
  Sandbox::FileEntry e;
  e.path = f.path();
  e.is_dir = f.type() == v1::FILE_TYPE_DIRECTORY;
  e.is_symlink = f.type() == v1::FILE_TYPE_SYMLINK;
  e.size_bytes = f.size_bytes();
  e.mode = f.mode();
  return e;
}
}  // namespace

absl::StatusOr<std::vector<Sandbox::FileEntry>> Sandbox::ListFiles(
    absl::string_view path, bool recursive) {
  auto& impl = *client_->impl_;
  std::vector<FileEntry> out;
  std::string page;
  do {
    v1::ListFilesResponse resp;
    grpc::Status s = impl.Retry(
        absl::Now() + impl.options.call_timeout, [&](grpc::ClientContext& ctx) {
          v1::SandboxHandle h = handle();
          v1::ListFilesRequest req;
          req.set_sandbox_id(id_);
          req.set_token(h.token());
          req.set_path(std::string(path));
          req.set_recursive(recursive);
          req.set_page_token(page);
          return impl.Agent(h.agent_endpoint()).ListFiles(&ctx, req, &resp);
        });
    if (!s.ok()) return Classify(WithContext(s, absl::StrCat("list ", path)));
    for (const auto& f : resp.entries()) out.push_back(ToEntry(f));
    page = resp.next_page_token();
  } while (!page.empty());
  return out;
}

absl::StatusOr<Sandbox::FileEntry> Sandbox::StatFile(absl::string_view path) {
  auto& impl = *client_->impl_;
  v1::FileInfo info;
  grpc::Status s = impl.Retry(
      absl::Now() + impl.options.call_timeout, [&](grpc::ClientContext& ctx) {
        v1::SandboxHandle h = handle();
        v1::StatFileRequest req;
        req.set_sandbox_id(id_);
        req.set_token(h.token());
        req.set_path(std::string(path));
        return impl.Agent(h.agent_endpoint()).StatFile(&ctx, req, &info);
      });
  if (!s.ok()) return Classify(WithContext(s, absl::StrCat("stat ", path)));
  return ToEntry(info);
}

absl::Status Sandbox::DeleteFile(absl::string_view path, bool recursive) {
  auto& impl = *client_->impl_;
  v1::DeleteFileResponse resp;
  grpc::Status s = impl.Retry(
      absl::Now() + impl.options.call_timeout, [&](grpc::ClientContext& ctx) {
        v1::SandboxHandle h = handle();
        v1::DeleteFileRequest req;
        req.set_sandbox_id(id_);
        req.set_token(h.token());
        req.set_path(std::string(path));
        req.set_recursive(recursive);
        req.set_allow_missing(true);
        return impl.Agent(h.agent_endpoint()).DeleteFile(&ctx, req, &resp);
      });
  if (!s.ok()) return Classify(WithContext(s, absl::StrCat("delete ", path)));
  return absl::OkStatus();
}

absl::Status Sandbox::Park() {
  auto& impl = *client_->impl_;
  v1::ParkResponse resp;
  grpc::Status s = impl.Retry(
      absl::Now() + impl.options.call_timeout, [&](grpc::ClientContext& ctx) {
        v1::SandboxHandle h = handle();
        v1::ParkRequest req;
        req.set_sandbox_id(id_);
        req.set_token(h.token());
        return impl.Agent(h.agent_endpoint()).Park(&ctx, req, &resp);
      });
  return s.ok() ? absl::OkStatus() : Classify(WithContext(s, "park"));
}

absl::Status Sandbox::Unpark() {
  auto& impl = *client_->impl_;
  v1::UnparkResponse resp;
  grpc::Status s = impl.Retry(
      absl::Now() + impl.options.call_timeout, [&](grpc::ClientContext& ctx) {
        v1::SandboxHandle h = handle();
        v1::UnparkRequest req;
        req.set_sandbox_id(id_);
        req.set_token(h.token());
        return impl.Agent(h.agent_endpoint()).Unpark(&ctx, req, &resp);
      });
  return s.ok() ? absl::OkStatus() : Classify(WithContext(s, "unpark"));
}

absl::Status Sandbox::SignalAll(int signal) {
  auto& impl = *client_->impl_;
  v1::SignalResponse resp;
  grpc::Status s = impl.Retry(
      absl::Now() + impl.options.call_timeout, [&](grpc::ClientContext& ctx) {
        v1::SandboxHandle h = handle();
        v1::SignalRequest req;
        req.set_sandbox_id(id_);
        req.set_token(h.token());
        req.set_all(true);
        req.set_signal(signal);
        return impl.Agent(h.agent_endpoint()).Signal(&ctx, req, &resp);
      });
  return s.ok() ? absl::OkStatus() : Classify(WithContext(s, "signal"));
}

absl::StatusOr<std::string> Sandbox::Snapshot() {
  auto& impl = *client_->impl_;
  v1::SnapshotSandboxRequest req;
  req.set_sandbox_id(id_);
  v1::Snapshot snap;
  // Not idempotent (each call is a new snapshot): no retry.
  grpc::ClientContext ctx;
  impl.SetupContext(&ctx, absl::Now() + impl.options.call_timeout);
  grpc::Status s = impl.sandboxes->SnapshotSandbox(&ctx, req, &snap);
  if (!s.ok()) return Classify(WithContext(s, "snapshot"));
  return snap.id();
}

absl::Status Sandbox::Delete() { return client_->DeleteSandboxes({id_}); }

absl::StatusOr<v1::Sandbox> Sandbox::Describe() {
  return client_->GetSandbox(id_);
}

// ---------------------------------------------------------------------------
// SandboxGroup

std::vector<absl::StatusOr<ExecOutcome>> SandboxGroup::RunEach(
    const std::vector<Command>& commands) {
  struct Gather {
    absl::Mutex mu;
    std::vector<absl::StatusOr<ExecOutcome>> results;
    size_t remaining;
  };
  auto g = std::make_shared<Gather>();
  g->results.assign(members_.size(), absl::UnknownError("not run"));
  g->remaining = members_.size();
  for (size_t i = 0; i < members_.size(); ++i) {
    members_[i]->RunAsync(commands[i], [g, i](absl::StatusOr<ExecOutcome> r) {
      absl::MutexLock l(&g->mu);
      g->results[i] = std::move(r);
      --g->remaining;
    });
  }
  absl::MutexLock l(&g->mu);
  g->mu.Await(absl::Condition(
      +[](size_t* n) { return *n == 0; }, &g->remaining));
  return std::move(g->results);
}

std::vector<absl::StatusOr<ExecOutcome>> SandboxGroup::RunAll(
    const Command& command) {
  // Action ids are per sandbox, so one id serves every member.
  return RunEach(std::vector<Command>(members_.size(), command));
}

absl::Status SandboxGroup::Delete() {
  if (members_.empty()) return absl::OkStatus();
  std::vector<std::string> ids;
  for (const auto& m : members_) ids.push_back(m->id());
  return members_.front()->client_->DeleteSandboxes(ids);
}

// ---------------------------------------------------------------------------
// Client

Client::Client(ClientOptions options)
    : options_(std::move(options)), impl_(std::make_unique<Impl>(options_)) {}

Client::~Client() = default;

absl::StatusOr<std::shared_ptr<Client>> Client::Create(
    const ClientOptions& options) {
  if (options.controller.empty()) {
    return absl::InvalidArgumentError("ClientOptions.controller is empty");
  }
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError("ClientOptions.max_attempts < 1");
  }
  return std::shared_ptr<Client>(new Client(options));
}

namespace {
v1::SandboxSpec WithJob(v1::SandboxSpec spec, const std::string& job) {
  if (spec.job_id().empty()) spec.set_job_id(job);
  return spec;
}
}  // namespace

absl::StatusOr<SandboxGroup> Client::CreateGroup(const v1::SandboxSpec& spec,
                                                 int count,
                                                 const CreateOptions& opts) {
  v1::CreateSandboxesRequest req;
  *req.mutable_spec() = WithJob(spec, options_.job_id);
  req.set_count(count);
  req.set_min_count(opts.min_count);
  req.mutable_placement()->set_spread(opts.spread);
  req.mutable_placement()->set_max_per_node(opts.max_per_node);
  req.set_request_id(opts.request_id.empty() ? "r-" + RandomHex(12)
                                             : opts.request_id);
  if (opts.queue_timeout > absl::ZeroDuration()) {
    *req.mutable_queue_timeout() = ToProtoDuration(opts.queue_timeout);
  }
  v1::CreateSandboxesResponse resp;
  grpc::Status s = impl_->Retry(
      absl::Now() + options_.call_timeout, [&](grpc::ClientContext& ctx) {
        return impl_->sandboxes->CreateSandboxes(&ctx, req, &resp);
      });
  if (!s.ok()) {
    return WithContext(s, absl::StrCat("create ", count, " sandboxes"));
  }
  std::vector<std::shared_ptr<Sandbox>> members;
  for (const auto& h : resp.handles()) {
    members.push_back(std::make_shared<Sandbox>(shared_from_this(), h));
  }
  return SandboxGroup(resp.group_id(), std::move(members));
}

absl::StatusOr<std::shared_ptr<Sandbox>> Client::CreateSandbox(
    const v1::SandboxSpec& spec, const CreateOptions& opts) {
  ASSIGN_OR_RETURN(SandboxGroup g, CreateGroup(spec, 1, opts));
  if (g.size() != 1) return absl::InternalError("create returned no sandbox");
  return g[0];
}

absl::StatusOr<SandboxGroup> Client::ForkSnapshot(absl::string_view snapshot_id,
                                                  int count,
                                                  const CreateOptions& opts) {
  v1::ForkSandboxRequest req;
  req.set_snapshot_id(std::string(snapshot_id));
  req.set_count(count);
  req.set_min_count(opts.min_count);
  req.mutable_placement()->set_spread(opts.spread);
  req.mutable_placement()->set_max_per_node(opts.max_per_node);
  for (const auto& [k, v] : opts.labels) (*req.mutable_labels())[k] = v;
  req.set_request_id(opts.request_id.empty() ? "f-" + RandomHex(12)
                                             : opts.request_id);
  if (opts.queue_timeout > absl::ZeroDuration()) {
    *req.mutable_queue_timeout() = ToProtoDuration(opts.queue_timeout);
  }
  v1::ForkSandboxResponse resp;
  grpc::Status s = impl_->Retry(
      absl::Now() + options_.call_timeout, [&](grpc::ClientContext& ctx) {
        return impl_->sandboxes->ForkSandbox(&ctx, req, &resp);
      });
  if (!s.ok()) {
    return WithContext(s, absl::StrCat("fork snapshot ", snapshot_id));
  }
  std::vector<std::shared_ptr<Sandbox>> members;
  for (const auto& h : resp.handles()) {
    members.push_back(std::make_shared<Sandbox>(shared_from_this(), h));
  }
  return SandboxGroup(resp.group_id(), std::move(members));
}

absl::StatusOr<SandboxGroup> Client::Fork(const Sandbox& source, int count,
                                          const CreateOptions& opts) {
  // Snapshot first (not idempotent, never retried), then a retryable fork
  // of that snapshot.
  v1::SnapshotSandboxRequest sreq;
  sreq.set_sandbox_id(source.id());
  v1::Snapshot snap;
  grpc::ClientContext ctx;
  impl_->SetupContext(&ctx, absl::Now() + options_.call_timeout);
  grpc::Status s = impl_->sandboxes->SnapshotSandbox(&ctx, sreq, &snap);
  if (!s.ok()) {
    return WithContext(s, absl::StrCat("snapshot ", source.id(), " to fork"));
  }
  return ForkSnapshot(snap.id(), count, opts);
}

absl::StatusOr<v1::Sandbox> Client::GetSandbox(absl::string_view id) {
  v1::GetSandboxRequest req;
  req.set_sandbox_id(std::string(id));
  v1::Sandbox sb;
  grpc::Status s = impl_->Retry(
      absl::Now() + options_.call_timeout, [&](grpc::ClientContext& ctx) {
        return impl_->sandboxes->GetSandbox(&ctx, req, &sb);
      });
  if (!s.ok()) return WithContext(s, absl::StrCat("get sandbox ", id));
  return sb;
}

absl::StatusOr<std::shared_ptr<Sandbox>> Client::Attach(absl::string_view id) {
  v1::RenewTokenRequest req;
  req.set_sandbox_id(std::string(id));
  v1::SandboxHandle h;
  grpc::Status s = impl_->Retry(
      absl::Now() + options_.call_timeout, [&](grpc::ClientContext& ctx) {
        return impl_->sandboxes->RenewToken(&ctx, req, &h);
      });
  if (!s.ok()) {
    if (s.error_code() == grpc::StatusCode::NOT_FOUND ||
        s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      return Lost(id, s.error_message());
    }
    return WithContext(s, absl::StrCat("attach to sandbox ", id));
  }
  return std::make_shared<Sandbox>(shared_from_this(), h);
}

absl::Status Client::DeleteSandboxes(const std::vector<std::string>& ids) {
  for (size_t i = 0; i < ids.size(); i += kDeleteBatch) {
    v1::DeleteSandboxesRequest req;
    for (size_t j = i; j < std::min(ids.size(), i + kDeleteBatch); ++j) {
      req.add_sandbox_ids(ids[j]);
    }
    v1::DeleteSandboxesResponse resp;
    grpc::Status s = impl_->Retry(
        absl::Now() + options_.call_timeout, [&](grpc::ClientContext& ctx) {
          return impl_->sandboxes->DeleteSandboxes(&ctx, req, &resp);
        });
    if (!s.ok()) return WithContext(s, "delete sandboxes");
  }
  return absl::OkStatus();
}

absl::Status Client::DeleteSnapshot(absl::string_view snapshot_id) {
  v1::DeleteSnapshotRequest req;
  req.set_snapshot_id(std::string(snapshot_id));
  v1::DeleteSnapshotResponse resp;
  grpc::Status s = impl_->Retry(
      absl::Now() + options_.call_timeout, [&](grpc::ClientContext& ctx) {
        return impl_->sandboxes->DeleteSnapshot(&ctx, req, &resp);
      });
  if (!s.ok()) return WithContext(s, "delete snapshot");
  return absl::OkStatus();
}

absl::Status Client::RenewLease() {
  v1::RenewLeaseRequest req;
  req.set_job_id(options_.job_id);
  v1::RenewLeaseResponse resp;
  grpc::Status s = impl_->Retry(
      absl::Now() + options_.call_timeout, [&](grpc::ClientContext& ctx) {
        return impl_->jobs->RenewLease(&ctx, req, &resp);
      });
  if (!s.ok()) return WithContext(s, "renew lease");
  return absl::OkStatus();
}

absl::StatusOr<JobInfo> CreateJob(const ClientOptions& admin,
                                  absl::string_view name, int max_sandboxes,
                                  absl::Duration lease_ttl) {
  auto creds = admin.credentials ? admin.credentials
                                 : grpc::InsecureChannelCredentials();
  auto stub = v1::Jobs::NewStub(
      grpc::CreateCustomChannel(admin.controller, creds, ChannelArgs()));
  v1::CreateJobRequest req;
  req.set_name(std::string(name));
  req.mutable_quota()->set_max_sandboxes(max_sandboxes);
  req.set_weight(1);
  *req.mutable_lease_ttl() = ToProtoDuration(lease_ttl);
  v1::Job job;
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + admin.call_timeout));
  if (!admin.api_key.empty()) {
    ctx.AddMetadata("authorization", absl::StrCat("Bearer ", admin.api_key));
  }
  grpc::Status s = stub->CreateJob(&ctx, req, &job);
  if (!s.ok()) return WithContext(s, absl::StrCat("create job ", name));
  return JobInfo{job.id(), job.api_key()};
}

}  // namespace dsec::client
