// Unit tests of the proto <-> sandbox conversions (no root needed).
#include "agent/convert.h"

#include <sys/stat.h>

#include "common/testing/test_util.h"

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec::agent {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;

RequestLimits Limits() {
  RequestLimits limits;
  limits.layers_root = "/var/lib/dsec/layers";
  return limits;
}

TEST(ToSandboxSpec, FillsLimitsEnvAndWorkdir) {
  v1::SandboxSpec spec;
  spec.mutable_limits()->set_memory_bytes(256 << 20);
  spec.mutable_limits()->set_pids(64);
  (*spec.mutable_env())["FOO"] = "bar";
  (*spec.mutable_env())["HOME"] = "/work";
  spec.set_workdir("/work");
  spec.set_hostname("box");
  ASSERT_OK_AND_ASSIGN(sandbox::SandboxSpec out, ToSandboxSpec(spec, Limits()));
  EXPECT_EQ(out.limits.memory_bytes, 256 << 20);
  EXPECT_EQ(out.limits.pids, 64);
  EXPECT_EQ(out.workdir, "/work");
  EXPECT_EQ(out.hostname, "box");
  EXPECT_THAT(out.env, ::testing::Contains("FOO=bar"));
  EXPECT_THAT(out.env, ::testing::Contains("HOME=/work"));
  EXPECT_THAT(out.env, ::testing::Not(::testing::Contains("HOME=/root")));
}

TEST(ToSandboxSpec, RejectsUnsupportedNetworkModes) {
  v1::SandboxSpec spec;
  spec.set_network_mode(v1::NETWORK_MODE_EGRESS_ALLOWLIST);
  EXPECT_THAT(ToSandboxSpec(spec, Limits()),
              StatusIs(absl::StatusCode::kInvalidArgument));
  spec.set_network_mode(v1::NETWORK_MODE_HOST);
  EXPECT_THAT(ToSandboxSpec(spec, Limits()),
              StatusIs(absl::StatusCode::kUnimplemented));
}

TEST(ToSandboxSpec, RejectsHostLayersOutsideTheLayerDir) {
  v1::SandboxSpec spec;
  spec.add_layers("/etc");
  EXPECT_THAT(ToSandboxSpec(spec, Limits()),
              StatusIs(absl::StatusCode::kInvalidArgument));
  spec.set_layers(0, "/var/lib/dsec/layers/../../../etc");
  EXPECT_THAT(ToSandboxSpec(spec, Limits()),
              StatusIs(absl::StatusCode::kInvalidArgument));
  spec.set_layers(0, "/var/lib/dsec/layers/l1");
  EXPECT_THAT(ToSandboxSpec(spec, Limits()), IsOk());
}

TEST(ToSandboxSpec, RejectsNegativeLimitsAndImages) {
  v1::SandboxSpec spec;
  spec.mutable_limits()->set_memory_bytes(-1);
  EXPECT_THAT(ToSandboxSpec(spec, Limits()),
              StatusIs(absl::StatusCode::kInvalidArgument));
  v1::SandboxSpec image;
  image.set_image("python-3.12");
  EXPECT_THAT(ToSandboxSpec(image, Limits()),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ToSandboxSpec, ResolvesImagesUnderTheDsecFsMount) {
  ::dsec::testing::TempDir mount;
  ASSERT_EQ(mkdir(mount.Join("images").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(mount.Join("images/py").c_str(), 0755), 0);
  RequestLimits limits = Limits();
  limits.fs_mount_dir = mount.path();
  v1::SandboxSpec spec;
  spec.set_image("py");
  spec.add_layers(mount.Join("layers/fork1"));
  ASSERT_OK_AND_ASSIGN(sandbox::SandboxSpec out, ToSandboxSpec(spec, limits));
  // Fork layers above, the image at the bottom, no host binds.
  EXPECT_EQ(out.layers, (std::vector<std::string>{mount.Join("layers/fork1"),
                                                  mount.Join("images/py")}));
  EXPECT_FALSE(out.host_binds);
  spec.clear_layers();
  spec.set_image("missing");
  EXPECT_THAT(ToSandboxSpec(spec, limits),
              StatusIs(absl::StatusCode::kNotFound));
  for (const char* bad : {"../etc", "a/b", ".hidden", "", "x y"}) {
    spec.set_image(bad);
    if (std::string(bad).empty()) continue;  // empty: the built-in image
    EXPECT_THAT(ToSandboxSpec(spec, limits),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << bad;
  }
  // Layers outside both roots stay refused.
  spec.set_image("py");
  spec.add_layers("/etc");
  EXPECT_THAT(ToSandboxSpec(spec, limits),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ToSandboxExec, ValidatesCommandStdinAndCaps) {
  v1::ExecRequest req;
  EXPECT_THAT(ToSandboxExec(req, Limits()),
              StatusIs(absl::StatusCode::kInvalidArgument));
  req.mutable_argv();
  EXPECT_THAT(ToSandboxExec(req, Limits()),
              StatusIs(absl::StatusCode::kInvalidArgument));
  req.set_shell("echo hi");
  ASSERT_OK_AND_ASSIGN(sandbox::ExecRequest out, ToSandboxExec(req, Limits()));
  EXPECT_EQ(out.argv, (std::vector<std::string>{"/bin/sh", "-c", "echo hi"}));
  EXPECT_EQ(out.timeout, absl::Seconds(30));
  EXPECT_EQ(out.max_stdout_bytes, 1 << 20);
  req.set_max_stdout_bytes(int64_t{1} << 30);
  EXPECT_THAT(ToSandboxExec(req, Limits()),
              StatusIs(absl::StatusCode::kInvalidArgument));
  req.set_max_stdout_bytes(0);
  req.set_stdin_data(std::string((16 << 20) + 1, 'x'));
  EXPECT_THAT(ToSandboxExec(req, Limits()),
              StatusIs(absl::StatusCode::kInvalidArgument));
  req.clear_stdin_data();
  req.mutable_timeout()->set_seconds(-1);
  EXPECT_THAT(ToSandboxExec(req, Limits()),
              StatusIs(absl::StatusCode::kInvalidArgument));
  req.mutable_timeout()->set_seconds(1);
  req.set_user("nobody");
  EXPECT_THAT(ToSandboxExec(req, Limits()),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ToProtoResult, MapsOutcomes) {
  sandbox::ExecResult r;
  r.outcome = sandbox::ExecOutcome::kExited;
  r.exit_code = 3;
  EXPECT_EQ(ToProtoResult(r).status(), v1::EXEC_STATUS_EXITED);
  EXPECT_EQ(ToProtoResult(r).exit_code(), 3);
  r.pids_limit_hit = true;
  EXPECT_EQ(ToProtoResult(r).status(), v1::EXEC_STATUS_PIDS_LIMIT);
  r.outcome = sandbox::ExecOutcome::kTimedOut;
  r.signal = 9;
  EXPECT_EQ(ToProtoResult(r).status(), v1::EXEC_STATUS_TIMED_OUT);
  EXPECT_EQ(ToProtoResult(r).exit_code(), -1);
  r.outcome = sandbox::ExecOutcome::kSeccompKilled;
  EXPECT_EQ(ToProtoResult(r).status(), v1::EXEC_STATUS_SECCOMP_VIOLATION);
  r.outcome = sandbox::ExecOutcome::kInfraFailure;
  r.infra_error = "init died";
  v1::ExecResult infra = ToProtoResult(r);
  EXPECT_EQ(infra.status(), v1::EXEC_STATUS_INFRA_FAILURE);
  EXPECT_EQ(infra.infra_error().message(), "init died");
}

TEST(Fingerprint, IgnoresMapOrderButNotContent) {
  v1::ExecRequest a, b;
  (*a.mutable_env())["A"] = "1";
  (*a.mutable_env())["B"] = "2";
  (*b.mutable_env())["B"] = "2";
  (*b.mutable_env())["A"] = "1";
  EXPECT_EQ(Fingerprint("exec", a), Fingerprint("exec", b));
  EXPECT_NE(Fingerprint("exec", a), Fingerprint("write", a));
  b.set_shell("x");
  EXPECT_NE(Fingerprint("exec", a), Fingerprint("exec", b));
}

TEST(ResolveSandboxPath, JoinsRelativePathsOntoWorkdir) {
  EXPECT_EQ(*ResolveSandboxPath("/work", "a/b"), "/work/a/b");
  EXPECT_EQ(*ResolveSandboxPath("", "a"), "/root/a");
  EXPECT_EQ(*ResolveSandboxPath("/work", "/etc/x"), "/etc/x");
  EXPECT_THAT(ResolveSandboxPath("/work", ""),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace dsec::agent
