// FsTestCluster: a whole dsec-fs on loopback for tests and benchmarks: one
// dsec-meta and N dsec-chunk processes (real binaries from BinDir()), each
// with its data under one temporary root, plus optional dsec-mount FUSE
// mounts. Processes can be SIGKILLed and restarted on the same data, and
// chunk files corrupted on disk, for fault tests.
//
// Not thread-safe. Everything is killed and the root removed when the
// object dies.
#ifndef DSEC_FS_TESTING_FS_CLUSTER_H_
#define DSEC_FS_TESTING_FS_CLUSTER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/testing/subprocess.h"
#include "fs/fs_client.h"

namespace dsec::fs::testing {

struct FsTestClusterOptions {
  int chunk_servers = 3;
  int replication = 3;
  int num_chains = 8;
  uint32_t chunk_size = 1 << 20;
  int heartbeat_ms = 200;
  // dsec-meta --replace_after_ms (0: its default).
  int replace_after_ms = 0;
  // Where data, logs and mountpoints go (a fresh temporary directory if
  // empty; removed at the end only if this created it).
  std::string root;
};

class FsTestCluster {
 public:
  // Starts meta + chunk servers and waits until every chain has
  // min(replication, chunk_servers) SERVING members.
  static absl::StatusOr<std::unique_ptr<FsTestCluster>> Start(
      const FsTestClusterOptions& options);
  ~FsTestCluster();

  const std::string& meta_address() const { return meta_address_; }
  // A client of this cluster (short retry budget suited to tests).
  FsClient& client() { return *client_; }
  // A fresh client with its own options (meta_address filled in).
  absl::StatusOr<std::unique_ptr<FsClient>> NewClient(
      FsClientOptions options = {});

  absl::Status KillChunk(int i);
  absl::Status RestartChunk(int i);
  absl::Status KillMeta();
  absl::Status RestartMeta();
  std::string chunk_dir(int i) const;
  std::string chunk_node_id(int i) const;
  std::string meta_dir() const;
  const std::string& root() const { return root_; }

  // Waits until every chain has `serving` SERVING members and no SYNCING
  // one (or times out with the last table in the message).
  absl::Status WaitForChains(int serving, absl::Duration timeout);
  // Waits until `node_id` is OFFLINE in every chain it belongs to.
  absl::Status WaitOffline(const std::string& node_id, absl::Duration timeout);

  // Mounts with dsec-mount at <root>/mnt<k> (or `path`) and waits for the
  // mount to be live. Returns the mountpoint.
  absl::StatusOr<std::string> Mount(std::vector<std::string> extra_flags = {},
                                    std::string path = "");
  // SIGTERM to the mount process; waits for a clean exit.
  absl::Status Unmount(const std::string& mountpoint);

  // Logs of every process, for failure messages.
  std::string Logs() const;

 private:
  explicit FsTestCluster(const FsTestClusterOptions& options);
  absl::Status StartMeta();
  absl::Status StartChunk(int i);

  FsTestClusterOptions options_;
  std::string root_;
  bool own_root_ = false;
  int meta_port_ = 0;
  std::string meta_address_;
  std::unique_ptr<dsec::testing::Subprocess> meta_;
  std::vector<int> chunk_ports_;
  std::vector<std::unique_ptr<dsec::testing::Subprocess>> chunks_;
  struct MountProc {
    std::string path;
    std::unique_ptr<dsec::testing::Subprocess> proc;
  };
  std::vector<MountProc> mounts_;
  std::unique_ptr<FsClient> client_;
};

// True if `path` is a mountpoint of a FUSE file system right now.
bool IsFuseMounted(const std::string& path);

}  // namespace dsec::fs::testing

#endif  // DSEC_FS_TESTING_FS_CLUSTER_H_
