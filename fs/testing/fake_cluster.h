// FakeCluster: an in-test FsClusterService (the dsec-meta membership role)
// over a chain table the test edits. Chunk servers register, heartbeat,
// fetch the table and report sync completion against it exactly as they
// would against dsec-meta; the test plays the meta server's failure detector
// by calling SetMemberState (e.g. OFFLINE after killing a server).
//
// Semantics kept from the contract: every edit bumps the table version and
// the edited chain's version; members stay ordered SERVING, SYNCING, OFFLINE
// (a member that changes state moves to the end of its new group);
// ReportSyncDone on the current chain version flips SYNCING to SERVING,
// otherwise ABORTED. Heartbeats from unknown nodes get reregister = true.
//
// Thread-safe. Serves on 127.0.0.1 (port 0) until destroyed.
#ifndef DSEC_FS_TESTING_FAKE_CLUSTER_H_
#define DSEC_FS_TESTING_FAKE_CLUSTER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dsec/v1/fs_service.pb.h"

namespace dsec::fs::testing {

struct FakeClusterOptions {
  // Chains 1..num_chains, created empty.
  uint32_t num_chains = 1;
  uint32_t replication = 3;
  uint32_t chunk_size = 4 << 20;
  int64_t heartbeat_interval_ms = 100;
};

class FakeCluster {
 public:
  static absl::StatusOr<std::unique_ptr<FakeCluster>> Start(
      const FakeClusterOptions& options);
  ~FakeCluster();

  // host:port of the FsClusterService.
  std::string address() const;

  // Replaces the members of chain `chain_id` (in the order given; states as
  // given). Servers named here need not have registered yet.
  void SetChain(
      uint32_t chain_id,
      const std::vector<std::pair<std::string, v1::ChainMemberState>>& members);
  // Changes one member's state (reordering as described above).
  void SetMemberState(uint32_t chain_id, const std::string& node_id,
                      v1::ChainMemberState state);
  // Registers (or re-addresses) a server without an RPC.
  void AddServer(const std::string& node_id, const std::string& address);
  // Forgets a server: its next heartbeat is told to reregister.
  void ForgetServer(const std::string& node_id);

  v1::ChainTable table() const;
  v1::Chain chain(uint32_t chain_id) const;
  // How often `node_id` registered / reported sync done for a chain.
  int registrations(const std::string& node_id) const;
  int sync_done(const std::string& node_id, uint32_t chain_id) const;
  // Waits until `pred(table())` holds; false after `timeout`.
  bool WaitForTable(const std::function<bool(const v1::ChainTable&)>& pred,
                    absl::Duration timeout = absl::Seconds(30)) const;

 private:
  struct Impl;
  explicit FakeCluster(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Every data file of chunk (inode, index) under <data_dir>/chunks, for tests
// that damage chunk files on disk.
std::vector<std::string> ChunkFilesOf(const std::string& data_dir,
                                      uint64_t inode, uint32_t index);

}  // namespace dsec::fs::testing

#endif  // DSEC_FS_TESTING_FAKE_CLUSTER_H_
