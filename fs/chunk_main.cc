// dsec-chunk: flags -> ChunkServerOptions -> ChunkServer; SIGTERM or SIGINT
// shuts down cleanly and exits 0.
#include <malloc.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/logging.h"
#include "fs/chunk_server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:9500", "gRPC listen address");
ABSL_FLAG(std::string, advertise, "",
          "address registered with the meta server; empty: listen host:port");
ABSL_FLAG(std::string, node_id, "", "stable chunk server name (required)");
ABSL_FLAG(std::string, data_dir, "/var/lib/dsec/chunk", "chunk store dir");
ABSL_FLAG(std::string, meta, "127.0.0.1:9400",
          "meta server (FsClusterService) host:port");
ABSL_FLAG(uint32_t, max_chunk_size, 4 << 20, "largest chunk in bytes");
ABSL_FLAG(bool, sync, true, "fsync chunk data and metadata");
ABSL_FLAG(std::string, metrics_listen, "", "Prometheus host:port; empty: off");
ABSL_FLAG(std::string, log_level, "info", "log level");
ABSL_FLAG(int64_t, scrub_interval_s, 86400,
          "start a scrub pass (read back and verify every chunk) this often; "
          "0: never");
ABSL_FLAG(uint64_t, scrub_mib_per_s, 32, "read rate cap of a scrub pass");
ABSL_FLAG(int64_t, stray_grace_s, 600,
          "delete local chunks of a chain this server has not been a member "
          "of for this long; 0: never");

int main(int argc, char** argv) {
  // Chunk-sized buffers (gRPC messages, protobuf strings) are allocated and
  // freed all the time: keep them in the heap rather than mmap'ed and
  // returned, which made every 4 MiB chunk cost ~1,000 page faults.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  absl::ParseCommandLine(argc, argv);
  std::string level = absl::GetFlag(FLAGS_log_level);
  (void)dsec::InitLogging({level, "chunk"});

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // threads inherit

  dsec::fs::ChunkServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.advertise_address = absl::GetFlag(FLAGS_advertise);
  options.node_id = absl::GetFlag(FLAGS_node_id);
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.meta_address = absl::GetFlag(FLAGS_meta);
  options.store.max_chunk_size = absl::GetFlag(FLAGS_max_chunk_size);
  if (options.store.max_chunk_size % options.store.block_size != 0) {
    options.store.block_size = options.store.max_chunk_size;
  }
  options.store.sync = absl::GetFlag(FLAGS_sync);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.scrub_interval = absl::Seconds(
      std::max<int64_t>(absl::GetFlag(FLAGS_scrub_interval_s), 0));
  options.scrub_bytes_per_sec = absl::GetFlag(FLAGS_scrub_mib_per_s) << 20;
  options.stray_grace =
      absl::Seconds(std::max<int64_t>(absl::GetFlag(FLAGS_stray_grace_s), 0));

  auto server = dsec::fs::ChunkServer::Create(options);
  if (!server.ok()) {
    DSEC_LOG_ERROR("dsec-chunk: {}", server.status().ToString());
    return 1;
  }
  int sig = 0;
  sigwait(&signals, &sig);
  DSEC_LOG_INFO("dsec-chunk: signal {}, shutting down", sig);
  (*server)->Shutdown();
  return 0;
}
