// dsec-fusion: a SandboxFusion-compatible /run_code endpoint over a dsec
// cluster. flags -> FusionServerOptions -> FusionServer; SIGTERM or SIGINT
// shuts down cleanly (in-flight requests finish) and exits 0.
//
//   dsec-fusion --listen 127.0.0.1:8080 --controller 127.0.0.1:7070
//       --api_key $KEY
//   dsec-fusion --job fusion --admin_key $ADMIN   # creates a job
#include <csignal>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "client/fusion_server.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/rlimit.h"
#include "common/status_macros.h"
#include "common/tls.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:8080", "HTTP host:port");
ABSL_FLAG(std::string, controller, "127.0.0.1:7070", "controller host:port");
ABSL_FLAG(std::string, api_key, "", "job API key");
ABSL_FLAG(std::string, job, "",
          "create a job of this name (with --admin_key) instead of --api_key");
ABSL_FLAG(std::string, admin_key, "", "admin key for --job (none in local)");
ABSL_FLAG(int, max_sandboxes, 1000, "quota of the job --job creates");
ABSL_FLAG(int, max_concurrent_requests, 64, "requests served at once");
ABSL_FLAG(int64_t, default_memory_mb, 0,
          "sandbox memory without memory_limit_MB (0: agent default)");
ABSL_FLAG(int64_t, default_cpu_millicores, 0, "sandbox CPU (0: default)");
ABSL_FLAG(int64_t, default_pids, 0, "sandbox pids (0: agent default)");
ABSL_FLAG(std::string, warm_pool_class, "",
          "warm pool class (\"default\" in dsecctl local; empty: agent "
          "matches by spec)");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for --tls_cert");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA of the cluster (enables TLS)");
ABSL_FLAG(int, metrics_port, -1, "Prometheus port; -1: off");
ABSL_FLAG(std::string, log_level, "info", "log level");

namespace {

absl::StatusOr<dsec::client::FusionServerOptions> OptionsFromFlags() {
  dsec::client::FusionServerOptions o;
  std::pair<std::string, std::string> hp = absl::StrSplit(
      absl::GetFlag(FLAGS_listen), absl::MaxSplits(absl::ByChar(':'), 1));
  if (hp.first.empty() || !absl::SimpleAtoi(hp.second, &o.port)) {
    return absl::InvalidArgumentError("--listen wants host:port");
  }
  o.host = hp.first;
  o.max_concurrent_requests = absl::GetFlag(FLAGS_max_concurrent_requests);
  o.default_limits.set_memory_bytes(absl::GetFlag(FLAGS_default_memory_mb)
                                    << 20);
  o.default_limits.set_cpu_millicores(
      absl::GetFlag(FLAGS_default_cpu_millicores));
  o.default_limits.set_pids(absl::GetFlag(FLAGS_default_pids));
  o.warm_pool_class = absl::GetFlag(FLAGS_warm_pool_class);

  dsec::client::ClientOptions& c = o.client_options;
  c.controller = absl::GetFlag(FLAGS_controller);
  const dsec::TlsFiles tls{absl::GetFlag(FLAGS_tls_cert),
                           absl::GetFlag(FLAGS_tls_key),
                           absl::GetFlag(FLAGS_tls_ca)};
  if (tls.enabled()) {
    ASSIGN_OR_RETURN(c.credentials, dsec::MakeChannelCredentials(tls));
  }
  c.api_key = absl::GetFlag(FLAGS_api_key);
  if (!absl::GetFlag(FLAGS_job).empty()) {
    dsec::client::ClientOptions admin = c;
    admin.api_key = absl::GetFlag(FLAGS_admin_key);
    ASSIGN_OR_RETURN(
        dsec::client::JobInfo job,
        dsec::client::CreateJob(admin, absl::GetFlag(FLAGS_job),
                                absl::GetFlag(FLAGS_max_sandboxes)));
    DSEC_LOG_INFO("fusion: created job {}", job.job_id);
    c.api_key = job.api_key;
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  (void)dsec::InitLogging({absl::GetFlag(FLAGS_log_level), "fusion"});
  dsec::RaiseOpenFileLimit();

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // threads inherit

  absl::StatusOr<dsec::client::FusionServerOptions> options =
      OptionsFromFlags();
  if (!options.ok()) {
    DSEC_LOG_ERROR("fusion: {}", options.status().ToString());
    return 2;
  }
  std::unique_ptr<dsec::metrics::HttpServer> metrics;
  if (absl::GetFlag(FLAGS_metrics_port) >= 0) {
    auto m = dsec::metrics::HttpServer::Start(
        options->host, absl::GetFlag(FLAGS_metrics_port),
        &dsec::metrics::Registry::Default());
    if (!m.ok()) {
      DSEC_LOG_ERROR("fusion: {}", m.status().ToString());
      return 1;
    }
    metrics = *std::move(m);
    DSEC_LOG_INFO("fusion: metrics on port {}", metrics->port());
  }
  auto server = dsec::client::FusionServer::Create(*std::move(options));
  if (!server.ok()) {
    DSEC_LOG_ERROR("fusion: {}", server.status().ToString());
    return 1;
  }
  int sig = 0;
  sigwait(&signals, &sig);
  DSEC_LOG_INFO("fusion: signal {}, shutting down", sig);
  (*server)->Shutdown();
  return 0;
}
