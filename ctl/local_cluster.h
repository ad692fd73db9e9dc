// Local single-node mode: a controller, one agent and a whole dsec-fs (a meta
// server, three chunk servers with replication 3, and the FUSE mount the
// agent reads images through) in this process, with all state under one data
// directory and no outside service. Used by
// `dsecctl local up`, the README's demo and end-to-end tests/benchmarks.
//
// Thread-safe: Create and Shutdown from one thread; the servers run on
// their own threads.
#ifndef DSEC_CTL_LOCAL_CLUSTER_H_
#define DSEC_CTL_LOCAL_CLUSTER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dsec::controller {
class ControllerServer;
}
namespace dsec::agent {
class AgentServer;
}
namespace dsec::fs {
class MetaServer;
class ChunkServer;
class FsClient;
class FuseMount;
}  // namespace dsec::fs

namespace dsec::ctl {

struct LocalClusterOptions {
  std::string data_dir;        // created if missing
  int controller_port = 7070;  // 0: any free port
  std::string init_path;       // dsec-init; default: next to this binary
  int max_sandboxes = 512;
  int warm_pool_size = 8;  // sandboxes kept ready in class "default"
  int metrics_port = -1;   // controller /metrics; agent on port + 1
  // dsec-fs: off runs without images (the built-in image only).
  bool fs = true;
  // dsec-meta port (0: any free one).
  int fs_meta_port = 9400;
  int fs_chunk_servers = 3;
};

class LocalCluster {
 public:
  // Starts both servers and waits until the agent has registered.
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Create(
      const LocalClusterOptions& options);
  ~LocalCluster();

  std::string controller_address() const;
  std::string agent_endpoint() const;
  // dsec-meta's address and where dsec-fs is mounted; empty without fs.
  std::string fs_meta_address() const;
  std::string fs_mountpoint() const;
  void Shutdown();

 private:
  LocalCluster() = default;
  absl::Status StartFs(const LocalClusterOptions& options);

  std::unique_ptr<dsec::fs::MetaServer> meta_;
  std::vector<std::unique_ptr<dsec::fs::ChunkServer>> chunks_;
  std::unique_ptr<dsec::fs::FsClient> fs_client_;
  std::unique_ptr<dsec::fs::FuseMount> mount_;
  std::string mountpoint_;
  std::unique_ptr<dsec::controller::ControllerServer> controller_;
  std::unique_ptr<dsec::agent::AgentServer> agent_;
};

// Directory of the running executable ("" if unknown).
std::string SelfDir();

}  // namespace dsec::ctl

#endif  // DSEC_CTL_LOCAL_CLUSTER_H_
