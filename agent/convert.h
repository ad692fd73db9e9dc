// Conversions between the dsec.v1 wire types and the sandbox library's
// plain structs, with the request validation the agent applies at its
// boundary (limits, malformed fields). Pure functions, thread-safe.
#ifndef DSEC_AGENT_CONVERT_H_
#define DSEC_AGENT_CONVERT_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/proto_time.h"
#include "dsec/v1/agent_service.pb.h"
#include "dsec/v1/exec.pb.h"
#include "dsec/v1/types.pb.h"
#include "sandbox/safe_fs.h"
#include "sandbox/spec.h"

namespace dsec::agent {

// Agent-wide maxima for requests (ExecRequest docs: "above the agent
// maximum: INVALID_ARGUMENT").
struct RequestLimits {
  absl::Duration max_exec_timeout = absl::Hours(2);
  int64_t max_output_bytes = 16 << 20;
  int64_t max_stdin_bytes = 16 << 20;
  absl::Duration max_ttl = absl::Hours(72);
  // Layers a spec may name must live under this host directory (the
  // runtime's sealed-layer dir); anything else is INVALID_ARGUMENT, so a
  // client cannot mount arbitrary host directories.
  std::string layers_root;
  // Where dsec-fs is mounted on this node. Empty: no images. With it, a
  // spec's `image` resolves to <fs_mount_dir>/images/<name> (a complete
  // root file system: the host's /usr, /bin, /lib* are not bound over it),
  // and layers may also live anywhere under the mount.
  std::string fs_mount_dir;
};

inline absl::Duration FromProto(const google::protobuf::Duration& d) {
  return FromProtoDuration(d);
}
using ::dsec::ToProtoDuration;
google::protobuf::Timestamp ToProtoTime(absl::Time t);
absl::Time FromProto(const google::protobuf::Timestamp& t);

// Validates a dsec.v1 spec and turns it into a sandbox spec. Only
// NETWORK_MODE_NONE is served: EGRESS_ALLOWLIST is INVALID_ARGUMENT, HOST
// UNIMPLEMENTED. `image` needs limits.fs_mount_dir (else INVALID_ARGUMENT;
// an image not on dsec-fs is NOT_FOUND). `mounts`: INVALID_ARGUMENT.
absl::StatusOr<sandbox::SandboxSpec> ToSandboxSpec(const v1::SandboxSpec& spec,
                                                   const RequestLimits& limits);

// Memory the spec reserves on the node (its memory limit, default filled).
int64_t ReservedMemory(const v1::SandboxSpec& spec);

absl::StatusOr<sandbox::ExecRequest> ToSandboxExec(
    const v1::ExecRequest& request, const RequestLimits& limits);

v1::ExecResult ToProtoResult(const sandbox::ExecResult& result);

v1::FileInfo ToProtoFileInfo(const sandbox::FileInfo& info,
                             absl::string_view path);

// Hex SHA-256 of the deterministic serialization of `message`, prefixed by
// `kind` so different calls sharing an id namespace never compare equal.
std::string Fingerprint(absl::string_view kind,
                        const google::protobuf::Message& message,
                        absl::string_view extra = "");

// Joins a request path onto the sandbox workdir; returns an absolute path
// inside the sandbox. INVALID_ARGUMENT for empty paths or NUL bytes.
absl::StatusOr<std::string> ResolveSandboxPath(absl::string_view workdir,
                                               absl::string_view path);

// The spec with the fields that do not shape the sandbox itself cleared
// (ttl, idle_ttl, labels, job, pool class, node selector): two specs whose
// shapes are equal can share a warm pool.
v1::SandboxSpec SpecShape(const v1::SandboxSpec& spec);

}  // namespace dsec::agent

#endif  // DSEC_AGENT_CONVERT_H_
