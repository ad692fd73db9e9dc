// dsec-controller: flags -> ControllerOptions -> ControllerServer; SIGTERM
// or SIGINT shuts down cleanly and exits 0.
#include <csignal>
#include <cstdlib>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/rlimit.h"
#include "common/token.h"
#include "controller/controller_server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7070",
          "gRPC listen address (0.0.0.0:7070 for a real cluster, with "
          "--admin_key_file)");
ABSL_FLAG(std::string, data_dir, "/var/lib/dsec/controller",
          "RocksDB directory");
ABSL_FLAG(std::string, secret_file, "/etc/dsec/secret",
          "cluster token secret (created if missing)");
ABSL_FLAG(std::string, node_key_file, "",
          "agents' x-dsec-node-key; empty: none");
ABSL_FLAG(std::string, admin_key_file, "",
          "admin API key; empty: admin open (local)");
ABSL_FLAG(absl::Duration, heartbeat_timeout, absl::Seconds(5),
          "node DEAD after this long without a heartbeat");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate (enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for --tls_cert");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA: verify peers (and require client certificates)");
ABSL_FLAG(int, metrics_port, -1, "Prometheus port; -1: off");
ABSL_FLAG(std::string, log_level, "info", "log level");

namespace {

std::string ReadKey(const std::string& path) {
  if (path.empty()) return "";
  auto key = dsec::LoadOrCreateSecret(path, false);
  if (!key.ok()) {
    DSEC_LOG_ERROR("cannot read {}: {}", path, key.status().ToString());
    std::exit(2);
  }
  return *key;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::string level = absl::GetFlag(FLAGS_log_level);
  (void)dsec::InitLogging({level, "controller"});
  dsec::RaiseOpenFileLimit();

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // threads inherit

  dsec::controller::ControllerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  auto secret =
      dsec::LoadOrCreateSecret(absl::GetFlag(FLAGS_secret_file), true);
  if (!secret.ok()) {
    DSEC_LOG_ERROR("secret: {}", secret.status().ToString());
    return 2;
  }
  options.token_secret = *secret;
  options.node_key = ReadKey(absl::GetFlag(FLAGS_node_key_file));
  options.admin_key = ReadKey(absl::GetFlag(FLAGS_admin_key_file));
  options.heartbeat_timeout = absl::GetFlag(FLAGS_heartbeat_timeout);
  options.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  options.tls = {absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
                 absl::GetFlag(FLAGS_tls_ca)};

  auto server = dsec::controller::ControllerServer::Create(options);
  if (!server.ok()) {
    DSEC_LOG_ERROR("controller: {}", server.status().ToString());
    return 1;
  }
  int sig = 0;
  sigwait(&signals, &sig);
  DSEC_LOG_INFO("controller: signal {}, shutting down", sig);
  (*server)->Shutdown();
  return 0;
}
