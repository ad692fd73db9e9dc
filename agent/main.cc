// dsec-agent: flags -> AgentOptions -> AgentServer::Create -> wait for
// SIGTERM/SIGINT -> Shutdown.
#include <signal.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "agent/agent_server.h"
#include "common/logging.h"
#include "common/rlimit.h"
#include "common/status_macros.h"
#include "common/token.h"
#include "common/units.h"
#include "sandbox/sandbox.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7070", "gRPC host:port");
ABSL_FLAG(std::string, advertise, "",
          "host:port clients dial (default: listen)");
ABSL_FLAG(std::string, node_id, "", "node id (default: hostname)");
ABSL_FLAG(std::string, controller, "",
          "controller NodeRegistry host:port; empty: standalone");
ABSL_FLAG(std::string, secret_file, "/etc/dsec/secret",
          "cluster secret (created if missing)");
ABSL_FLAG(std::string, node_key_file, "",
          "file holding the node key; empty: none");
ABSL_FLAG(std::string, fs_mount, "",
          "where dsec-fs is mounted on this node (images); empty: none");
ABSL_FLAG(std::string, state_dir, "",
          "runtime state dir (default /run/dsec/<pid>)");
ABSL_FLAG(std::string, init_path, "",
          "dsec-init binary (default: next to this binary)");
ABSL_FLAG(int, max_sandboxes, 0, "max live sandboxes (0: no cap)");
ABSL_FLAG(std::string, cpu, "",
          "node cpu capacity, e.g. 16 or 15500m (empty: no cap)");
ABSL_FLAG(std::string, memory, "",
          "node memory capacity, e.g. 64Gi (empty: no cap)");
ABSL_FLAG(std::vector<std::string>, labels, {}, "node labels k=v,k=v");
ABSL_FLAG(std::vector<std::string>, warm_pool, {},
          "warm pools class:size,... (default spec)");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate (enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for --tls_cert");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA: verify peers (and require client certificates)");
ABSL_FLAG(int, metrics_port, -1,
          "Prometheus port on 127.0.0.1 (-1: off, 0: any)");
ABSL_FLAG(std::string, log_level, "info", "log level");

namespace {

int Fail(const std::string& what) {
  std::fprintf(stderr, "dsec-agent: %s\n", what.c_str());
  return 2;
}

absl::StatusOr<dsec::agent::AgentOptions> OptionsFromFlags() {
  dsec::agent::AgentOptions o;
  o.listen_address = absl::GetFlag(FLAGS_listen);
  o.advertise_address = absl::GetFlag(FLAGS_advertise);
  o.node_id = absl::GetFlag(FLAGS_node_id);
  if (o.node_id.empty()) {
    char host[HOST_NAME_MAX + 1] = {};
    gethostname(host, sizeof(host) - 1);
    o.node_id = host;
  }
  o.controller_address = absl::GetFlag(FLAGS_controller);
  ASSIGN_OR_RETURN(o.token_secret,
                   dsec::LoadOrCreateSecret(absl::GetFlag(FLAGS_secret_file),
                                            /*create_if_missing=*/true));
  if (!absl::GetFlag(FLAGS_node_key_file).empty()) {
    ASSIGN_OR_RETURN(
        o.node_key, dsec::LoadOrCreateSecret(absl::GetFlag(FLAGS_node_key_file),
                                             /*create_if_missing=*/false));
  }
  o.state_dir = absl::GetFlag(FLAGS_state_dir);
  o.request_limits.fs_mount_dir = absl::GetFlag(FLAGS_fs_mount);
  o.init_path = absl::GetFlag(FLAGS_init_path);
  if (o.init_path.empty()) {
    char self[PATH_MAX] = {};
    if (readlink("/proc/self/exe", self, sizeof(self) - 1) > 0) {
      std::string dir(self);
      o.init_path = dir.substr(0, dir.rfind('/')) + "/dsec-init";
    }
  }
  o.max_sandboxes = absl::GetFlag(FLAGS_max_sandboxes);
  if (!absl::GetFlag(FLAGS_cpu).empty()) {
    ASSIGN_OR_RETURN(o.cpu_millicores,
                     dsec::ParseMillicores(absl::GetFlag(FLAGS_cpu)));
  }
  if (!absl::GetFlag(FLAGS_memory).empty()) {
    ASSIGN_OR_RETURN(o.memory_bytes,
                     dsec::ParseByteSize(absl::GetFlag(FLAGS_memory)));
  }
  for (const std::string& kv : absl::GetFlag(FLAGS_labels)) {
    std::pair<std::string, std::string> p =
        absl::StrSplit(kv, absl::MaxSplits('=', 1));
    if (p.first.empty()) {
      return absl::InvalidArgumentError("--labels wants k=v,...");
    }
    o.labels[p.first] = p.second;
  }
  for (const std::string& pool : absl::GetFlag(FLAGS_warm_pool)) {
    std::pair<std::string, std::string> p =
        absl::StrSplit(pool, absl::MaxSplits(':', 1));
    dsec::agent::WarmPoolClass c;
    c.name = p.first;
    if (c.name.empty() || !absl::SimpleAtoi(p.second, &c.size) || c.size < 0) {
      return absl::InvalidArgumentError("--warm_pool wants class:size,...");
    }
    o.warm_pools.push_back(std::move(c));
  }
  o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  o.tls = {absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
           absl::GetFlag(FLAGS_tls_ca)};
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread exists: our host-side mounts die with this process.
  const absl::Status private_mounts =
      dsec::sandbox::EnterPrivateMountNamespace();
  absl::ParseCommandLine(argc, argv);
  dsec::InitLogging(
      {.level = absl::GetFlag(FLAGS_log_level), .component = "agent"})
      .IgnoreError();
  if (!private_mounts.ok()) {
    DSEC_LOG_WARN("mounts stay in the host namespace: {}",
                  private_mounts.ToString());
  }
  const int64_t max_fds = dsec::RaiseOpenFileLimit();
  DSEC_LOG_INFO("open file limit {}", max_fds);
  // Block the stop signals in every thread; main waits for them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  absl::StatusOr<dsec::agent::AgentOptions> options = OptionsFromFlags();
  if (!options.ok()) return Fail(options.status().ToString());
  auto agent = dsec::agent::AgentServer::Create(*options);
  if (!agent.ok()) return Fail(agent.status().ToString());
  int sig = 0;
  sigwait(&stop, &sig);
  DSEC_LOG_INFO("signal {}: shutting down", sig);
  (*agent)->Shutdown();
  return 0;
}
