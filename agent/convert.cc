#include "agent/convert.h"

#include <sys/stat.h>

#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "common/token.h"
#include "fs/image.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"

namespace dsec::agent {
namespace {

constexpr int64_t kDefaultOutputCap = 1 << 20;
constexpr absl::Duration kDefaultExecTimeout = absl::Seconds(30);

bool HasNul(absl::string_view s) { return s.find('\0') != s.npos; }

absl::Status CheckNonNegative(int64_t v, absl::string_view field) {
  if (v < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must not be negative"));
  }
  return absl::OkStatus();
}

// Merges KEY=VALUE pairs over a base list, later keys replacing equal ones.
absl::Status MergeEnv(
    const google::protobuf::Map<std::string, std::string>& add,
    std::vector<std::string>* env) {
  std::map<std::string, std::string> sorted(add.begin(), add.end());
  for (const auto& [key, value] : sorted) {
    if (key.empty() || absl::StrContains(key, '=') || HasNul(key) ||
        HasNul(value)) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad environment variable name \"", key, "\""));
    }
    const std::string prefix = key + "=";
    std::erase_if(*env, [&](const std::string& e) {
      return absl::StartsWith(e, prefix);
    });
    env->push_back(prefix + value);
  }
  return absl::OkStatus();
}

// A layer must be an absolute, normalized path under `root`.
absl::Status CheckLayer(absl::string_view layer, absl::string_view root) {
  if (root.empty() || !absl::StartsWith(layer, absl::StrCat(root, "/")) ||
      HasNul(layer)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer \"", layer,
        "\" is not a sealed layer of this agent (images need dsec-fs)"));
  }
  for (absl::string_view part : absl::StrSplit(layer, '/')) {
    if (part == "." || part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("layer \"", layer, "\" must be normalized"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

google::protobuf::Timestamp ToProtoTime(absl::Time t) {
  google::protobuf::Timestamp out;
  const int64_t ns = absl::ToUnixNanos(t);
  out.set_seconds(ns / 1000000000);
  out.set_nanos(static_cast<int32_t>(ns % 1000000000));
  return out;
}

absl::Time FromProto(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

absl::StatusOr<sandbox::SandboxSpec> ToSandboxSpec(
    const v1::SandboxSpec& spec, const RequestLimits& limits) {
  sandbox::SandboxSpec out;
  std::string image_layer;
  switch (spec.network_mode()) {
    case v1::NETWORK_MODE_UNSPECIFIED:
    case v1::NETWORK_MODE_NONE:
      break;
    case v1::NETWORK_MODE_EGRESS_ALLOWLIST:
      return absl::InvalidArgumentError(
          "network_mode EGRESS_ALLOWLIST is not implemented by this agent");
    case v1::NETWORK_MODE_HOST:
      return absl::UnimplementedError(
          "network_mode HOST is not served by this agent");
    default:
      return absl::InvalidArgumentError("unknown network_mode");
  }
  if (!spec.egress_allow().empty()) {
    return absl::InvalidArgumentError(
        "egress_allow must be empty unless network_mode is EGRESS_ALLOWLIST");
  }
  if (!spec.image().empty()) {
    if (limits.fs_mount_dir.empty()) {
      return absl::InvalidArgumentError(
          "images need dsec-fs, which this agent does not mount (start it "
          "with --fs_mount); leave image empty for the built-in image");
    }
    RETURN_IF_ERROR(fs::ValidateImageName(spec.image()));
    std::string path = fs::ImagePath(limits.fs_mount_dir, spec.image());
    struct stat st;
    if (stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return absl::NotFoundError(
          absl::StrCat("image '", spec.image(),
                       "' is not on dsec-fs (import it with "
                       "`dsecctl image import ",
                       spec.image(), " DIR|TARBALL`)"));
    }
    image_layer = std::move(path);
    out.host_binds = false;
  }
  if (!spec.mounts().empty()) {
    return absl::InvalidArgumentError(
        "volume mounts need dsec-fs, which this agent does not mount");
  }
  for (const std::string& layer : spec.layers()) {
    if (!limits.fs_mount_dir.empty() &&
        CheckLayer(layer, limits.fs_mount_dir).ok()) {
      out.layers.push_back(layer);
      continue;
    }
    RETURN_IF_ERROR(CheckLayer(layer, limits.layers_root));
    out.layers.push_back(layer);
  }
  // The image is the bottom layer; spec layers (forks) sit above it.
  // (A fork's layers already end with it: not twice.)
  if (!image_layer.empty() &&
      (out.layers.empty() || out.layers.back() != image_layer)) {
    out.layers.push_back(image_layer);
  }
  const v1::ResourceLimits& l = spec.limits();
  RETURN_IF_ERROR(CheckNonNegative(l.cpu_millicores(), "cpu_millicores"));
  RETURN_IF_ERROR(CheckNonNegative(l.memory_bytes(), "memory_bytes"));
  RETURN_IF_ERROR(CheckNonNegative(l.pids(), "pids"));
  RETURN_IF_ERROR(CheckNonNegative(l.disk_bytes(), "disk_bytes"));
  RETURN_IF_ERROR(CheckNonNegative(l.disk_inodes(), "disk_inodes"));
  RETURN_IF_ERROR(CheckNonNegative(l.open_files(), "open_files"));
  RETURN_IF_ERROR(CheckNonNegative(l.stack_bytes(), "stack_bytes"));
  RETURN_IF_ERROR(CheckNonNegative(l.file_size_bytes(), "file_size_bytes"));
  if (l.cpu_millicores() > 0) out.limits.cpu_millicores = l.cpu_millicores();
  if (l.memory_bytes() > 0) out.limits.memory_bytes = l.memory_bytes();
  if (l.pids() > 0) out.limits.pids = l.pids();
  if (l.disk_bytes() > 0) out.disk_bytes = l.disk_bytes();
  if (l.disk_inodes() > 0) out.disk_inodes = l.disk_inodes();
  if (l.open_files() > 0) out.max_open_files = l.open_files();
  if (l.stack_bytes() > 0) out.max_stack_bytes = l.stack_bytes();
  if (l.file_size_bytes() > 0) out.max_file_size_bytes = l.file_size_bytes();

  RETURN_IF_ERROR(MergeEnv(spec.env(), &out.env));
  if (!spec.workdir().empty()) {
    if (!absl::StartsWith(spec.workdir(), "/") || HasNul(spec.workdir())) {
      return absl::InvalidArgumentError("workdir must be an absolute path");
    }
    out.workdir = spec.workdir();
  }
  if (!spec.hostname().empty()) {
    if (spec.hostname().size() > 64 || HasNul(spec.hostname()) ||
        absl::StrContains(spec.hostname(), '/')) {
      return absl::InvalidArgumentError("hostname must be 1..64 characters");
    }
    out.hostname = spec.hostname();
  }
  const absl::Duration ttl = FromProto(spec.ttl());
  const absl::Duration idle_ttl = FromProto(spec.idle_ttl());
  if (ttl < absl::ZeroDuration() || idle_ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ttl and idle_ttl must not be negative");
  }
  if (ttl > limits.max_ttl) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ttl above the maximum of ", absl::FormatDuration(limits.max_ttl)));
  }
  switch (spec.seccomp().default_action()) {
    case v1::SECCOMP_ACTION_UNSPECIFIED:
    case v1::SECCOMP_ACTION_ERRNO:
      out.seccomp.action = sandbox::SeccompAction::kErrno;
      break;
    case v1::SECCOMP_ACTION_KILL:
      out.seccomp.action = sandbox::SeccompAction::kKill;
      break;
    default:
      return absl::InvalidArgumentError("unknown seccomp default_action");
  }
  out.seccomp.extra_deny.assign(spec.seccomp().extra_deny().begin(),
                                spec.seccomp().extra_deny().end());
  out.seccomp.allow.assign(spec.seccomp().allow().begin(),
                           spec.seccomp().allow().end());
  return out;
}

int64_t ReservedMemory(const v1::SandboxSpec& spec) {
  if (spec.limits().memory_bytes() > 0) return spec.limits().memory_bytes();
  return sandbox::SandboxSpec{}.limits.memory_bytes;
}

absl::StatusOr<sandbox::ExecRequest> ToSandboxExec(
    const v1::ExecRequest& request, const RequestLimits& limits) {
  sandbox::ExecRequest out;
  if (request.action_id().size() > 128) {
    return absl::InvalidArgumentError("action_id is longer than 128 bytes");
  }
  switch (request.command_case()) {
    case v1::ExecRequest::kArgv:
      out.argv.assign(request.argv().args().begin(),
                      request.argv().args().end());
      break;
    case v1::ExecRequest::kShell:
      out.argv = {"/bin/sh", "-c", request.shell()};
      break;
    default:
      return absl::InvalidArgumentError("no command: set argv or shell");
  }
  if (out.argv.empty() || out.argv[0].empty()) {
    return absl::InvalidArgumentError("argv must name a program");
  }
  for (const std::string& arg : out.argv) {
    if (HasNul(arg)) {
      return absl::InvalidArgumentError("argv must not contain NUL bytes");
    }
  }
  if (static_cast<int64_t>(request.stdin_data().size()) >
      limits.max_stdin_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("stdin_data above the maximum of ", limits.max_stdin_bytes,
                     " bytes; use WriteFile"));
  }
  out.stdin_data = request.stdin_data();
  out.env.clear();
  RETURN_IF_ERROR(MergeEnv(request.env(), &out.env));
  if (!request.cwd().empty() && HasNul(request.cwd())) {
    return absl::InvalidArgumentError("cwd must not contain NUL bytes");
  }
  out.cwd = request.cwd();
  if (request.has_timeout()) {
    out.timeout = FromProto(request.timeout());
    if (out.timeout <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError("timeout must be positive");
    }
    if (out.timeout > limits.max_exec_timeout) {
      return absl::InvalidArgumentError(
          absl::StrCat("timeout above the maximum of ",
                       absl::FormatDuration(limits.max_exec_timeout)));
    }
  } else {
    out.timeout = kDefaultExecTimeout;
  }
  if (request.has_cpu_time_limit()) {
    out.cpu_time_limit = FromProto(request.cpu_time_limit());
    if (out.cpu_time_limit < absl::ZeroDuration()) {
      return absl::InvalidArgumentError("cpu_time_limit must not be negative");
    }
  }
  for (auto [value, target, name] :
       {std::tuple{request.max_stdout_bytes(), &out.max_stdout_bytes,
                   "max_stdout_bytes"},
        std::tuple{request.max_stderr_bytes(), &out.max_stderr_bytes,
                   "max_stderr_bytes"}}) {
    RETURN_IF_ERROR(CheckNonNegative(value, name));
    if (value > limits.max_output_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, " above the maximum of ", limits.max_output_bytes));
    }
    *target = value == 0 ? kDefaultOutputCap : value;
  }
  if (!request.user().empty() && request.user() != "root" &&
      request.user() != "0" && request.user() != "0:0") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown user \"", request.user(),
                     "\": this agent runs execs as the sandbox's root only"));
  }
  return out;
}

v1::ExecResult ToProtoResult(const sandbox::ExecResult& r) {
  using sandbox::ExecOutcome;
  v1::ExecResult out;
  out.set_exit_code(-1);
  out.set_signal(r.signal);
  switch (r.outcome) {
    case ExecOutcome::kExited:
      out.set_status(r.pids_limit_hit && r.exit_code != 0
                         ? v1::EXEC_STATUS_PIDS_LIMIT
                         : v1::EXEC_STATUS_EXITED);
      out.set_exit_code(r.exit_code);
      out.set_signal(0);
      break;
    case ExecOutcome::kSignaled:
      out.set_status(r.pids_limit_hit ? v1::EXEC_STATUS_PIDS_LIMIT
                                      : v1::EXEC_STATUS_SIGNALED);
      break;
    case ExecOutcome::kTimedOut:
      out.set_status(v1::EXEC_STATUS_TIMED_OUT);
      break;
    case ExecOutcome::kOomKilled:
      out.set_status(v1::EXEC_STATUS_OOM_KILLED);
      break;
    case ExecOutcome::kCpuLimit:
      out.set_status(v1::EXEC_STATUS_CPU_LIMIT);
      break;
    case ExecOutcome::kSeccompKilled:
      out.set_status(v1::EXEC_STATUS_SECCOMP_VIOLATION);
      break;
    case ExecOutcome::kInfraFailure:
      out.set_status(v1::EXEC_STATUS_INFRA_FAILURE);
      out.mutable_infra_error()->set_code(
          static_cast<int>(absl::StatusCode::kInternal));
      out.mutable_infra_error()->set_message(r.infra_error);
      out.mutable_infra_error()->set_retryable(true);
      break;
  }
  out.set_stdout_data(r.stdout_data);
  out.set_stderr_data(r.stderr_data);
  out.set_stdout_truncated(r.stdout_truncated);
  out.set_stderr_truncated(r.stderr_truncated);
  out.set_stdout_total_bytes(r.stdout_total_bytes);
  out.set_stderr_total_bytes(r.stderr_total_bytes);
  *out.mutable_wall_time() = ToProtoDuration(r.wall_time);
  *out.mutable_cpu_time() = ToProtoDuration(r.cpu_time);
  out.set_peak_memory_bytes(r.peak_memory_bytes);
  out.set_pids_limit_hit(r.pids_limit_hit);
  return out;
}

v1::FileInfo ToProtoFileInfo(const sandbox::FileInfo& info,
                             absl::string_view path) {
  v1::FileInfo out;
  out.set_path(std::string(path));
  switch (info.type) {
    case sandbox::FileType::kRegular:
      out.set_type(v1::FILE_TYPE_REGULAR);
      break;
    case sandbox::FileType::kDirectory:
      out.set_type(v1::FILE_TYPE_DIRECTORY);
      break;
    case sandbox::FileType::kSymlink:
      out.set_type(v1::FILE_TYPE_SYMLINK);
      out.set_symlink_target(info.symlink_target);
      break;
    case sandbox::FileType::kOther:
      out.set_type(v1::FILE_TYPE_OTHER);
      break;
  }
  out.set_size_bytes(info.size);
  out.set_mode(info.mode & 07777);
  *out.mutable_modify_time() = ToProtoTime(absl::FromUnixNanos(info.mtime_ns));
  return out;
}

std::string Fingerprint(absl::string_view kind,
                        const google::protobuf::Message& message,
                        absl::string_view extra) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    message.SerializeToCodedStream(&coded);
  }
  return Sha256Hex(absl::StrCat(kind, ":", bytes.size(), ":", bytes, extra));
}

absl::StatusOr<std::string> ResolveSandboxPath(absl::string_view workdir,
                                               absl::string_view path) {
  if (path.empty()) return absl::InvalidArgumentError("path is empty");
  if (HasNul(path)) {
    return absl::InvalidArgumentError("path must not contain NUL bytes");
  }
  if (absl::StartsWith(path, "/")) return std::string(path);
  return absl::StrCat(workdir.empty() ? "/root" : workdir, "/", path);
}

v1::SandboxSpec SpecShape(const v1::SandboxSpec& spec) {
  v1::SandboxSpec shape = spec;
  shape.clear_ttl();
  shape.clear_idle_ttl();
  shape.clear_labels();
  shape.clear_job_id();
  shape.clear_warm_pool_class();
  shape.clear_node_selector();
  return shape;
}

}  // namespace dsec::agent
