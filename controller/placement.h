// Placement core: picks a node for one sandbox among up to ~10,000 nodes
// without scanning them all. No gRPC, no I/O.
//
// Nodes are indexed by a coarse "free units" bucket (the smaller of free
// CPU / kCpuUnit and free memory / kMemUnit, log2 classes; 0 when no sandbox
// slot is free), by label ("k=v" posting sets) and by cached image. A placement
// draws `samples` candidates (power-of-k choices) from the buckets that can
// fit (or from the smallest node_selector posting set), checks
// each exactly, scores the feasible ones by load, image locality and group
// spread/pack, and reserves the resources on the winner. When sampling finds
// nothing, a bounded scan (kMaxScan entries from a random offset) runs
// before giving up, so every placement is O(samples + kMaxScan) at worst.
//
// Unschedulable nodes (cordoned, draining, dead) leave the capacity buckets
// and never receive placements; their reservations are still tracked.
//
// Thread-compatible: callers serialise access (the controller holds its
// mutex). Owns copies of node ids, labels and images.
#ifndef DSEC_CONTROLLER_PLACEMENT_H_
#define DSEC_CONTROLLER_PLACEMENT_H_

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dsec::controller {

using NodeIndex = uint32_t;

// Capacity of a node. 0 in a field: unlimited in that dimension.
struct NodeCapacityInfo {
  int64_t cpu_millicores = 0;
  int64_t memory_bytes = 0;
  int64_t max_sandboxes = 0;
};

enum class Spread { kSpread, kPack };

// How many sandboxes of one group sit on each node; updated by Place().
struct GroupState {
  absl::flat_hash_map<NodeIndex, int32_t> per_node;
};

struct PlacementRequest {
  int64_t cpu_millicores = 0;
  int64_t memory_bytes = 0;
  // Nodes must carry every pair. May be null.
  const std::map<std::string, std::string>* node_selector = nullptr;
  // Preferred (locality), never required. Empty: none.
  std::string image;
  Spread spread = Spread::kSpread;
  // Hard cap of the group's sandboxes per node; 0: none.
  int32_t max_per_node = 0;
  // The group being placed; may be null (single sandbox).
  GroupState* group = nullptr;
  // Nodes to avoid (refused this sandbox already). Small.
  std::vector<NodeIndex> exclude;
  // Place only on this node (forks from node-local layers).
  std::optional<NodeIndex> only_node;
};

struct PlacerOptions {
  int samples = 8;
  uint64_t seed = 0x5eed;
};

class Placer {
 public:
  static constexpr int64_t kCpuUnit = 100;         // millicores
  static constexpr int64_t kMemUnit = 64LL << 20;  // bytes
  static constexpr int kMaxScan = 512;
  static constexpr int64_t kUnlimited = int64_t{1} << 50;

  explicit Placer(PlacerOptions options = {});

  // Adds a node or replaces its capacity/labels/images (reservations kept).
  // New nodes start schedulable.
  NodeIndex UpsertNode(const std::string& node_id,
                       const NodeCapacityInfo& capacity,
                       const std::map<std::string, std::string>& labels,
                       const std::vector<std::string>& cached_images);
  std::optional<NodeIndex> FindNode(absl::string_view node_id) const;
  const std::string& NodeId(NodeIndex n) const { return nodes_[n].id; }
  size_t node_count() const { return nodes_.size(); }

  // Cordoned/draining/dead nodes are unschedulable.
  void SetSchedulable(NodeIndex n, bool schedulable);
  bool schedulable(NodeIndex n) const { return nodes_[n].schedulable; }

  // Picks a node and reserves the request's resources on it (and counts it
  // in request.group). RESOURCE_EXHAUSTED when no schedulable node fits;
  // the message says what was short.
  absl::StatusOr<NodeIndex> Place(const PlacementRequest& request);

  // Reserves/releases resources directly (recovery, refusals, deletes).
  // Reserve may overcommit (recovered state is authoritative).
  void Reserve(NodeIndex n, int64_t cpu_millicores, int64_t memory_bytes);
  void Release(NodeIndex n, int64_t cpu_millicores, int64_t memory_bytes);

  struct Usage {
    int64_t cpu_millicores = 0;
    int64_t memory_bytes = 0;
    int64_t sandboxes = 0;
  };
  Usage used(NodeIndex n) const { return nodes_[n].used; }
  NodeCapacityInfo capacity(NodeIndex n) const { return nodes_[n].cap; }

  // Total free among schedulable nodes (for shortfall messages). O(nodes):
  // call only on the failure path.
  Usage FreeTotal() const;

 private:
  struct Node {
    std::string id;
    NodeCapacityInfo cap;  // 0 fields replaced by kUnlimited
    Usage used;
    std::vector<std::string> label_keys;  // "k=v", sorted
    std::vector<std::string> images;
    bool schedulable = true;
    int bucket = -1;  // -1: in no bucket
    uint32_t bucket_pos = 0;
  };
  // An unordered set of node indexes with O(1) insert/erase.
  struct PostingSet {
    std::vector<NodeIndex> items;
    absl::flat_hash_map<NodeIndex, uint32_t> pos;
    void Insert(NodeIndex n);
    void Erase(NodeIndex n);
  };
  static constexpr int kBuckets = 48;

  static int64_t FreeUnits(const Node& node);
  static int BucketOf(int64_t units);
  void Rebucket(NodeIndex n);
  bool Fits(NodeIndex n, const PlacementRequest& r) const;
  double Score(NodeIndex n, const PlacementRequest& r) const;
  void Commit(NodeIndex n, const PlacementRequest& r);

  PlacerOptions options_;
  std::mt19937_64 rng_;
  std::vector<Node> nodes_;
  absl::flat_hash_map<std::string, NodeIndex> by_id_;
  std::vector<std::vector<NodeIndex>> buckets_;  // bucket -> nodes
  absl::flat_hash_map<std::string, PostingSet> by_label_;
  absl::flat_hash_map<std::string, PostingSet> by_image_;
};

}  // namespace dsec::controller

#endif  // DSEC_CONTROLLER_PLACEMENT_H_
