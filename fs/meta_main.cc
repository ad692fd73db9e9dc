// dsec-meta: flags -> MetaServerOptions -> MetaServer; SIGTERM or SIGINT
// shuts down cleanly and exits 0.
#include <csignal>
#include <cstdint>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/time/time.h"
#include "common/logging.h"
#include "common/rlimit.h"
#include "fs/meta_server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:9400", "gRPC listen address");
ABSL_FLAG(std::string, data_dir, "/var/lib/dsec/meta",
          "state directory: RocksDB in <dir>/meta, chain table in "
          "<dir>/chains.pb");
ABSL_FLAG(uint32_t, num_chains, 16, "chains of a new cluster");
ABSL_FLAG(uint32_t, replication, 3, "chunk servers per chain");
ABSL_FLAG(uint32_t, chunk_size, 4 << 20, "bytes per chunk of new files");
ABSL_FLAG(int64_t, heartbeat_ms, 1000,
          "chunk server heartbeat interval; 3 missed ones take it offline");
ABSL_FLAG(int64_t, replace_after_ms, 120000,
          "a chunk server offline this long is replaced by a spare in its "
          "chains; -1: never");
ABSL_FLAG(int64_t, orphan_grace_ms, 120000,
          "files unlinked while open at a restart are kept this long for "
          "their clients to re-open them");
ABSL_FLAG(bool, sync_writes, false,
          "fsync the WAL on every commit (false: on fsync/close and every "
          "100 ms; a process crash loses nothing either way)");
ABSL_FLAG(std::string, metrics_listen, "", "Prometheus host:port; empty: off");
ABSL_FLAG(std::string, log_level, "info", "log level");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::string level = absl::GetFlag(FLAGS_log_level);
  (void)dsec::InitLogging({level, "meta"});
  dsec::RaiseOpenFileLimit();

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // threads inherit

  dsec::fs::MetaServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.store.chunk_size = absl::GetFlag(FLAGS_chunk_size);
  options.store.sync_writes = absl::GetFlag(FLAGS_sync_writes);
  options.store.orphan_grace =
      absl::Milliseconds(absl::GetFlag(FLAGS_orphan_grace_ms));
  options.cluster.num_chains = absl::GetFlag(FLAGS_num_chains);
  options.cluster.replication = absl::GetFlag(FLAGS_replication);
  options.cluster.chunk_size = absl::GetFlag(FLAGS_chunk_size);
  options.cluster.heartbeat_interval =
      absl::Milliseconds(absl::GetFlag(FLAGS_heartbeat_ms));
  options.cluster.replace_after =
      absl::GetFlag(FLAGS_replace_after_ms) < 0
          ? absl::InfiniteDuration()
          : absl::Milliseconds(absl::GetFlag(FLAGS_replace_after_ms));
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);

  auto server = dsec::fs::MetaServer::Create(options);
  if (!server.ok()) {
    DSEC_LOG_ERROR("dsec-meta: {}", server.status().ToString());
    return 1;
  }
  int sig = 0;
  sigwait(&signals, &sig);
  DSEC_LOG_INFO("dsec-meta: signal {}, shutting down", sig);
  (*server)->Shutdown();
  return 0;
}
