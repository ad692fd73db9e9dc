// Durable controller state in RocksDB: jobs, sandboxes, nodes, snapshots
// and deleted snapshots still to be removed from dsec-fs, one record per
// object under a key prefix:
//   job/<id>     dsec.v1.Job        (api_key holds the SHA-256 hex of the key)
//   sbx/<id>     dsec.v1.Sandbox
//   node/<id>    dsec.v1.Node
//   snap/<id>    dsec.v1.Snapshot
//   snapgc/<id>  decimal Unix milliseconds: until when agents are told to
//                remove deleted snapshot <id>'s dsec-fs directory
//   ev/<rv>      dsec.v1.SandboxEvent, rv zero-padded to 20 digits (the watch
//                history, so a watch resumes across a controller restart)
// Mutations go through a Batch, applied atomically (one WriteBatch, WAL on,
// no fsync per write: a controller crash loses nothing, a machine crash may
// lose the last writes, which reconciliation with agents repairs).
//
// Thread-safe (RocksDB is); a Batch is thread-compatible. The Store owns the
// DB handle and closes it on destruction.
#ifndef DSEC_CONTROLLER_STORE_H_
#define DSEC_CONTROLLER_STORE_H_

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dsec/v1/job_service.pb.h"
#include "dsec/v1/node_service.pb.h"
#include "dsec/v1/sandbox_service.pb.h"
#include "dsec/v1/types.pb.h"

namespace rocksdb {
class DB;
}

namespace dsec::controller {

class Store {
 public:
  class Batch {
   public:
    void PutJob(const v1::Job& job);
    void DeleteJob(const std::string& id);
    void PutSandbox(const v1::Sandbox& sandbox);
    void DeleteSandbox(const std::string& id);
    void PutNode(const v1::Node& node);
    void PutSnapshot(const v1::Snapshot& snapshot);
    void DeleteSnapshot(const std::string& id);
    // A deleted snapshot whose dsec-fs directory agents should remove until
    // `deadline` (stored to the millisecond).
    void PutSnapshotGc(const std::string& snapshot_id, absl::Time deadline);
    void DeleteSnapshotGc(const std::string& snapshot_id);
    void PutEvent(const v1::SandboxEvent& event);
    // Drops every event with resource_version < rv.
    void DeleteEventsBefore(int64_t rv);
    bool empty() const { return ops_.empty(); }
    size_t size() const { return ops_.size(); }

   private:
    friend class Store;
    struct Op {
      std::string key;
      // Unset: delete `key` (or the range [key, range_end) if that is set).
      std::optional<std::string> value;
      std::string range_end;
    };
    std::vector<Op> ops_;
  };

  struct State {
    std::vector<v1::Job> jobs;
    std::vector<v1::Sandbox> sandboxes;
    std::vector<v1::Node> nodes;
    std::vector<v1::Snapshot> snapshots;
    struct SnapshotGc {
      std::string snapshot_id;
      absl::Time deadline;
    };
    // In key (snapshot id) order, expired ones included.
    std::vector<SnapshotGc> snapshot_gc;
    // Oldest first.
    std::vector<v1::SandboxEvent> events;
  };

  // Opens (creating if missing) the DB in `dir`.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& dir);
  ~Store();

  absl::Status Write(Batch batch);
  // Reads every record. INTERNAL on a corrupt record.
  absl::StatusOr<State> LoadAll() const;

 private:
  explicit Store(rocksdb::DB* db);
  std::unique_ptr<rocksdb::DB> db_;
};

}  // namespace dsec::controller

#endif  // DSEC_CONTROLLER_STORE_H_
