#include "client/trajectory.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/convert.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/token.h"

namespace dsec::client {
namespace {

namespace v1 = dsec::v1;

bool ValidTrajectoryId(absl::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
          c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

// SHA-256 of the action with deterministic (map-ordered) serialization.
std::string Digest(const v1::TrajectoryStep& step) {
  v1::TrajectoryStep action;
  switch (step.action_case()) {
    case v1::TrajectoryStep::kExec: {
      *action.mutable_exec() = step.exec();
      action.mutable_exec()->clear_action_id();
      break;
    }
    case v1::TrajectoryStep::kWriteFile:
      *action.mutable_write_file() = step.write_file();
      break;
    case v1::TrajectoryStep::kReadFile:
      *action.mutable_read_file() = step.read_file();
      break;
    case v1::TrajectoryStep::kSnapshot:
      action.mutable_snapshot();
      break;
    default:
      break;
  }
  action.set_mutating(step.mutating());
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream out(&bytes);
    google::protobuf::io::CodedOutputStream coded(&out);
    coded.SetSerializationDeterministic(true);
    action.SerializeToCodedStream(&coded);
  }
  return Sha256Hex(bytes);
}

std::string Describe(const v1::TrajectoryStep& s) {
  switch (s.action_case()) {
    case v1::TrajectoryStep::kExec: {
      std::string cmd = s.exec().has_argv()
                            ? absl::StrJoin(s.exec().argv().args(), " ")
                            : s.exec().shell();
      if (cmd.size() > 60) cmd = cmd.substr(0, 57) + "...";
      return absl::StrCat(s.mutating() ? "exec" : "read-only exec", " `", cmd,
                          "`");
    }
    case v1::TrajectoryStep::kWriteFile:
      return absl::StrCat("write ", s.write_file().path());
    case v1::TrajectoryStep::kReadFile:
      return absl::StrCat("read ", s.read_file().path());
    case v1::TrajectoryStep::kSnapshot:
      return "snapshot";
    default:
      return "unknown action";
  }
}

v1::RecordedOutcome Record(const ExecOutcome& o) {
  v1::RecordedOutcome r;
  r.set_kind(static_cast<int32_t>(o.kind));
  r.set_exit_code(o.exit_code);
  r.set_signal(o.signal);
  r.set_stdout_data(o.stdout_data);
  r.set_stderr_data(o.stderr_data);
  r.set_stdout_truncated(o.stdout_truncated);
  r.set_stderr_truncated(o.stderr_truncated);
  r.set_wall_time_us(absl::ToInt64Microseconds(o.wall_time));
  r.set_cpu_time_us(absl::ToInt64Microseconds(o.cpu_time));
  r.set_peak_memory_bytes(o.peak_memory_bytes);
  return r;
}

ExecOutcome Restore(const v1::RecordedOutcome& r, bool replayed) {
  ExecOutcome o;
  o.kind = static_cast<ExitKind>(r.kind());
  o.exit_code = r.exit_code();
  o.signal = r.signal();
  o.stdout_data = r.stdout_data();
  o.stderr_data = r.stderr_data();
  o.stdout_truncated = r.stdout_truncated();
  o.stderr_truncated = r.stderr_truncated();
  o.wall_time = absl::Microseconds(r.wall_time_us());
  o.cpu_time = absl::Microseconds(r.cpu_time_us());
  o.peak_memory_bytes = r.peak_memory_bytes();
  o.replayed = replayed;
  return o;
}

// Errors that are the program's or the caller's doing, not the
// infrastructure's: the same action would fail the same way again.
bool IsDeterministicError(const absl::Status& s) {
  if (IsSandboxLost(s)) return false;
  switch (s.code()) {
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kOutOfRange:
      return true;
    default:
      return false;
  }
}

bool Same(const v1::TrajectoryStep& a, const v1::TrajectoryStep& b) {
  if (a.has_outcome() && b.has_outcome()) {
    return a.outcome().kind() == b.outcome().kind() &&
           a.outcome().exit_code() == b.outcome().exit_code() &&
           a.outcome().stdout_data() == b.outcome().stdout_data();
  }
  return a.result_case() == b.result_case();
}

}  // namespace

Trajectory::Trajectory(std::shared_ptr<Client> client,
                       TrajectoryOptions options,
                       std::unique_ptr<TrajectoryLog> log)
    : client_(std::move(client)),
      options_(std::move(options)),
      log_(std::move(log)) {}

absl::StatusOr<std::unique_ptr<Trajectory>> Trajectory::Open(
    std::shared_ptr<Client> client, TrajectoryOptions options) {
  if (!ValidTrajectoryId(options.trajectory_id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("trajectory id \"", options.trajectory_id,
                     "\" must be 1..64 bytes of [A-Za-z0-9._-]"));
  }
  if (options.log_path.empty()) {
    return absl::InvalidArgumentError("TrajectoryOptions.log_path is empty");
  }
  ASSIGN_OR_RETURN(auto log,
                   TrajectoryLog::Open(options.log_path, options.sync));
  if (log->torn_bytes() > 0) {
    DSEC_LOG_WARN("trajectory {}: cut a torn record of {} bytes off {}",
                  options.trajectory_id, log->torn_bytes(), log->path());
  }
  std::unique_ptr<Trajectory> t(
      new Trajectory(std::move(client), std::move(options), std::move(log)));
  RETURN_IF_ERROR(t->Load());
  return t;
}

absl::Status Trajectory::Load() {
  absl::MutexLock l(&mu_);
  const auto& records = log_->records();
  if (records.empty()) {
    v1::TrajectoryRecord header;
    auto* h = header.mutable_header();
    h->set_trajectory_id(options_.trajectory_id);
    *h->mutable_spec() = options_.spec;
    h->set_base_snapshot_id(options_.base_snapshot_id);
    h->set_create_time_unix_ms(absl::ToUnixMillis(absl::Now()));
    return log_->Append(header);
  }
  if (!records[0].has_header() ||
      records[0].header().trajectory_id() != options_.trajectory_id) {
    return absl::FailedPreconditionError(
        absl::StrCat("log ", log_->path(), " belongs to trajectory \"",
                     records[0].header().trajectory_id(), "\", not \"",
                     options_.trajectory_id, "\""));
  }
  for (const auto& r : records) {
    if (r.has_step()) {
      if (r.step().step() != static_cast<int64_t>(steps_.size())) {
        return absl::DataLossError(
            absl::StrCat("log ", log_->path(), " skips from step ",
                         steps_.size(), " to ", r.step().step()));
      }
      steps_.push_back(r.step());
    } else if (r.has_attach()) {
      attached_id_ = r.attach().sandbox_id();
      if (!r.attach().lost_sandbox_id().empty()) ++rebuilds_;
    }
  }
  return absl::OkStatus();
}

int64_t Trajectory::next_step() const {
  absl::MutexLock l(&mu_);
  return next_step_;
}
int64_t Trajectory::logged_steps() const {
  absl::MutexLock l(&mu_);
  return static_cast<int64_t>(steps_.size());
}
int Trajectory::rebuilds() const {
  absl::MutexLock l(&mu_);
  return rebuilds_;
}
std::string Trajectory::sandbox_id() const {
  absl::MutexLock l(&mu_);
  return sandbox_ ? sandbox_->id() : attached_id_;
}

absl::StatusOr<v1::TrajectoryStep> Trajectory::Step(v1::TrajectoryStep step,
                                                    bool* from_log) {
  absl::MutexLock l(&mu_);
  *from_log = false;
  step.set_step(next_step_);
  step.set_digest(Digest(step));
  if (next_step_ < static_cast<int64_t>(steps_.size())) {
    const v1::TrajectoryStep& logged = steps_[next_step_];
    if (logged.digest() != step.digest()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "trajectory ", options_.trajectory_id, " diverged at step ",
          next_step_, ": the log has ", Describe(logged),
          " but the rollout issued ", Describe(step),
          " (a resumed rollout must repeat its actions in order)"));
    }
    ++next_step_;
    *from_log = true;
    return logged;  // fast-forward
  }
  absl::Status last;
  for (int attempt = 0; attempt <= options_.max_rebuilds; ++attempt) {
    absl::Status ready = EnsureSandbox();
    if (ready.ok()) {
      absl::StatusOr<v1::TrajectoryStep> done = Apply(step);
      if (done.ok()) {
        v1::TrajectoryRecord record;
        *record.mutable_step() = *done;
        RETURN_IF_ERROR(log_->Append(record));
        steps_.push_back(*done);
        ++next_step_;
        return done;
      }
      ready = done.status();
    }
    last = ready;
    if (!IsSandboxLost(ready) && !WaitUntilLost(ready)) return ready;
    DSEC_LOG_WARN("trajectory {}: step {}: {}; rebuilding",
                  options_.trajectory_id, next_step_,
                  std::string(ready.message()));
    absl::Status rebuilt = Rebuild(std::string(ready.message()));
    if (!rebuilt.ok()) last = rebuilt;
  }
  return absl::Status(
      last.code(),
      absl::StrCat("trajectory ", options_.trajectory_id, ": step ", next_step_,
                   " failed after ", options_.max_rebuilds,
                   " rebuilds: ", last.message()));
}

absl::StatusOr<v1::TrajectoryStep> Trajectory::Apply(v1::TrajectoryStep step) {
  const std::string action_id =
      absl::StrCat(options_.trajectory_id, "/", step.step());
  switch (step.action_case()) {
    case v1::TrajectoryStep::kExec: {
      Command c = FromExecRequest(step.exec());
      c.action_id = action_id;
      absl::StatusOr<ExecOutcome> r = sandbox_->Run(c);
      if (r.ok()) {
        *step.mutable_outcome() = Record(*r);
      } else if (IsDeterministicError(r.status())) {
        step.mutable_error()->set_code(static_cast<int>(r.status().code()));
        step.mutable_error()->set_message(std::string(r.status().message()));
      } else {
        return r.status();
      }
      return step;
    }
    case v1::TrajectoryStep::kWriteFile: {
      const auto& w = step.write_file();
      absl::Status s = sandbox_->WriteFileWithActionId(w.path(), w.data(),
                                                       w.mode(), action_id);
      if (s.ok()) {
        step.mutable_outcome()->set_exit_code(0);
      } else if (IsDeterministicError(s)) {
        step.mutable_error()->set_code(static_cast<int>(s.code()));
        step.mutable_error()->set_message(std::string(s.message()));
      } else {
        return s;
      }
      return step;
    }
    case v1::TrajectoryStep::kReadFile: {
      bool truncated = false;
      absl::StatusOr<std::string> data = sandbox_->ReadFile(
          step.read_file().path(), step.read_file().max_bytes(), &truncated);
      if (data.ok()) {
        step.set_data(*data);
        step.set_read_truncated(truncated);
      } else if (IsDeterministicError(data.status())) {
        step.mutable_error()->set_code(static_cast<int>(data.status().code()));
        step.mutable_error()->set_message(std::string(data.status().message()));
      } else {
        return data.status();
      }
      return step;
    }
    case v1::TrajectoryStep::kSnapshot: {
      ASSIGN_OR_RETURN(std::string id, sandbox_->Snapshot());
      step.set_snapshot_id(id);
      return step;
    }
    default:
      return absl::InternalError("trajectory step without an action");
  }
}

absl::Status Trajectory::Attach(const std::shared_ptr<Sandbox>& sandbox,
                                v1::TrajectoryAttach record) {
  record.set_sandbox_id(sandbox->id());
  record.set_node_id(sandbox->node_id());
  v1::TrajectoryRecord r;
  *r.mutable_attach() = std::move(record);
  RETURN_IF_ERROR(log_->Append(r));
  sandbox_ = sandbox;
  attached_id_ = sandbox->id();
  return absl::OkStatus();
}

absl::Status Trajectory::EnsureSandbox() {
  if (sandbox_) return absl::OkStatus();
  const std::string existing =
      !attached_id_.empty() ? attached_id_ : options_.sandbox_id;
  if (!existing.empty()) {
    absl::StatusOr<std::shared_ptr<Sandbox>> sb = client_->Attach(existing);
    if (!sb.ok()) return sb.status();  // lost: the caller rebuilds
    if (attached_id_.empty()) return Attach(*sb, {});
    sandbox_ = *sb;
    return absl::OkStatus();
  }
  std::shared_ptr<Sandbox> sb;
  if (!options_.base_snapshot_id.empty()) {
    ASSIGN_OR_RETURN(SandboxGroup g,
                     client_->ForkSnapshot(options_.base_snapshot_id, 1));
    sb = g[0];
  } else {
    ASSIGN_OR_RETURN(sb, client_->CreateSandbox(options_.spec));
  }
  return Attach(sb, {});
}

bool Trajectory::WaitUntilLost(const absl::Status& failure) {
  if (failure.code() != absl::StatusCode::kUnavailable &&
      failure.code() != absl::StatusCode::kDeadlineExceeded) {
    return false;
  }
  const std::string id = sandbox_ ? sandbox_->id() : attached_id_;
  if (id.empty()) return false;
  const absl::Time deadline = absl::Now() + options_.lost_wait;
  while (absl::Now() < deadline) {
    absl::StatusOr<v1::Sandbox> sb = client_->GetSandbox(id);
    if (!sb.ok() && sb.status().code() == absl::StatusCode::kNotFound) {
      return true;
    }
    if (sb.ok()) {
      switch (sb->state()) {
        case v1::SANDBOX_STATE_LOST:
        case v1::SANDBOX_STATE_TERMINATED:
        case v1::SANDBOX_STATE_TERMINATING:
        case v1::SANDBOX_STATE_FAILED:
          return true;
        default:
          break;
      }
    }
    absl::SleepFor(absl::Milliseconds(250));
  }
  return false;
}

absl::Status Trajectory::Rebuild(const std::string& reason) {
  const std::string lost_id = sandbox_ ? sandbox_->id() : attached_id_;
  if (sandbox_) (void)sandbox_->Delete();  // unreachable, not always dead
  sandbox_.reset();

  // Start from the newest snapshot in the log that can still be forked
  // (a node-local snapshot dies with its node), else the base snapshot,
  // else a fresh sandbox of the spec; re-run the mutating steps after it.
  struct Origin {
    std::string snapshot;
    int64_t from;
  };
  std::vector<Origin> origins;
  for (int64_t i = static_cast<int64_t>(steps_.size()) - 1; i >= 0; --i) {
    if (steps_[i].has_snapshot_id()) {
      origins.push_back({steps_[i].snapshot_id(), i + 1});
    }
  }
  origins.push_back({options_.base_snapshot_id, 0});
  CreateOptions fork_options;
  fork_options.queue_timeout = absl::Seconds(5);
  std::shared_ptr<Sandbox> sb;
  int64_t from = 0;
  std::string snapshot;
  absl::Status last = absl::OkStatus();
  for (const Origin& o : origins) {
    if (o.snapshot.empty()) {
      absl::StatusOr<std::shared_ptr<Sandbox>> created =
          client_->CreateSandbox(options_.spec);
      if (!created.ok()) return created.status();
      sb = *created;
    } else {
      absl::StatusOr<SandboxGroup> g =
          client_->ForkSnapshot(o.snapshot, 1, fork_options);
      if (!g.ok()) {
        DSEC_LOG_WARN("trajectory {}: cannot rebuild from snapshot {}: {}",
                      options_.trajectory_id, o.snapshot,
                      g.status().ToString());
        last = g.status();
        continue;
      }
      sb = (*g)[0];
    }
    from = o.from;
    snapshot = o.snapshot;
    break;
  }
  if (!sb) return last;
  sandbox_ = sb;
  int64_t replayed = 0, divergent = 0;
  for (int64_t i = from; i < static_cast<int64_t>(steps_.size()); ++i) {
    if (!steps_[i].mutating()) continue;
    v1::TrajectoryStep again = steps_[i];
    again.clear_result();
    absl::StatusOr<v1::TrajectoryStep> r = Apply(again);
    if (!r.ok()) {
      sandbox_.reset();
      (void)sb->Delete();
      return absl::Status(r.status().code(),
                          absl::StrCat("rebuild: re-running step ", i, ": ",
                                       r.status().message()));
    }
    ++replayed;
    divergent += !Same(*r, steps_[i]);
  }
  v1::TrajectoryAttach record;
  record.set_lost_sandbox_id(lost_id);
  record.set_reason(reason);
  record.set_from_snapshot_id(snapshot);
  record.set_replayed_actions(replayed);
  record.set_divergent_actions(divergent);
  RETURN_IF_ERROR(Attach(sb, record));
  ++rebuilds_;
  DSEC_LOG_INFO(
      "trajectory {}: rebuilt in sandbox {} on {} (from {}, {} steps re-run, "
      "{} diverged)",
      options_.trajectory_id, sb->id(), sb->node_id(),
      snapshot.empty() ? "the spec" : snapshot, replayed, divergent);
  return absl::OkStatus();
}

namespace {
// A logged step's deterministic error, as the caller first saw it.
absl::Status LoggedError(const v1::TrajectoryStep& step) {
  return absl::Status(static_cast<absl::StatusCode>(step.error().code()),
                      step.error().message());
}
}  // namespace

absl::StatusOr<ExecOutcome> Trajectory::RunStep(const Command& command,
                                                bool mutating) {
  v1::TrajectoryStep step;
  *step.mutable_exec() = ToExecRequest(command);
  step.set_mutating(mutating);
  bool from_log = false;
  ASSIGN_OR_RETURN(v1::TrajectoryStep done, Step(std::move(step), &from_log));
  if (done.has_error()) return LoggedError(done);
  return Restore(done.outcome(), from_log);
}

absl::StatusOr<ExecOutcome> Trajectory::Run(const Command& command) {
  return RunStep(command, /*mutating=*/true);
}

absl::StatusOr<ExecOutcome> Trajectory::RunReadOnly(const Command& command) {
  return RunStep(command, /*mutating=*/false);
}

absl::Status Trajectory::WriteFile(absl::string_view path,
                                   absl::string_view data, uint32_t mode) {
  v1::TrajectoryStep step;
  auto* w = step.mutable_write_file();
  w->set_path(std::string(path));
  w->set_data(std::string(data));
  w->set_mode(mode);
  step.set_mutating(true);
  bool from_log = false;
  ASSIGN_OR_RETURN(v1::TrajectoryStep done, Step(std::move(step), &from_log));
  return done.has_error() ? LoggedError(done) : absl::OkStatus();
}

absl::StatusOr<std::string> Trajectory::ReadFile(absl::string_view path,
                                                 int64_t max_bytes,
                                                 bool* truncated) {
  v1::TrajectoryStep step;
  step.mutable_read_file()->set_path(std::string(path));
  step.mutable_read_file()->set_max_bytes(max_bytes);
  step.set_mutating(false);
  bool from_log = false;
  ASSIGN_OR_RETURN(v1::TrajectoryStep done, Step(std::move(step), &from_log));
  if (done.has_error()) return LoggedError(done);
  if (truncated != nullptr) *truncated = done.read_truncated();
  return done.data();
}

absl::StatusOr<std::string> Trajectory::Snapshot() {
  v1::TrajectoryStep step;
  step.mutable_snapshot();
  step.set_mutating(false);
  bool from_log = false;
  ASSIGN_OR_RETURN(v1::TrajectoryStep done, Step(std::move(step), &from_log));
  return done.snapshot_id();
}

absl::Status Trajectory::Close() {
  absl::MutexLock l(&mu_);
  std::string id = sandbox_ ? sandbox_->id() : attached_id_;
  sandbox_.reset();
  if (id.empty()) return absl::OkStatus();
  return client_->DeleteSandboxes({id});
}

}  // namespace dsec::client
