#include "controller/placement.h"

#include <algorithm>
#include <bit>
#include <limits>

#include "absl/strings/str_cat.h"

namespace dsec::controller {

void Placer::PostingSet::Insert(NodeIndex n) {
  if (pos.contains(n)) return;
  pos[n] = static_cast<uint32_t>(items.size());
  items.push_back(n);
}

void Placer::PostingSet::Erase(NodeIndex n) {
  auto it = pos.find(n);
  if (it == pos.end()) return;
  uint32_t p = it->second;
  NodeIndex last = items.back();
  items[p] = last;
  pos[last] = p;
  items.pop_back();
  pos.erase(n);
}

Placer::Placer(PlacerOptions options)
    : options_(options), rng_(options.seed), buckets_(kBuckets) {
  if (options_.samples < 1) options_.samples = 1;
}

int64_t Placer::FreeUnits(const Node& node) {
  int64_t cpu = (node.cap.cpu_millicores - node.used.cpu_millicores) / kCpuUnit;
  int64_t mem = (node.cap.memory_bytes - node.used.memory_bytes) / kMemUnit;
  // A node without a free slot fits nothing; slots are otherwise checked
  // exactly (they are counted per sandbox, not in units).
  if (node.used.sandboxes >= node.cap.max_sandboxes) return 0;
  return std::max<int64_t>(0, std::min(cpu, mem));
}

// 0 units: bucket 0; else 1 + floor(log2(units)), so bucket b >= 1 holds
// units in [2^(b-1), 2^b).
int Placer::BucketOf(int64_t units) {
  if (units <= 0) return 0;
  int b = 64 - std::countl_zero(static_cast<uint64_t>(units));
  return std::min(b, kBuckets - 1);
}

void Placer::Rebucket(NodeIndex n) {
  Node& node = nodes_[n];
  int want = node.schedulable ? BucketOf(FreeUnits(node)) : -1;
  if (want == node.bucket) return;
  if (node.bucket >= 0) {
    auto& b = buckets_[node.bucket];
    NodeIndex last = b.back();
    b[node.bucket_pos] = last;
    nodes_[last].bucket_pos = node.bucket_pos;
    b.pop_back();
  }
  node.bucket = want;
  if (want >= 0) {
    node.bucket_pos = static_cast<uint32_t>(buckets_[want].size());
    buckets_[want].push_back(n);
  }
}

NodeIndex Placer::UpsertNode(const std::string& node_id,
                             const NodeCapacityInfo& capacity,
                             const std::map<std::string, std::string>& labels,
                             const std::vector<std::string>& cached_images) {
  NodeIndex n;
  auto it = by_id_.find(node_id);
  if (it == by_id_.end()) {
    n = static_cast<NodeIndex>(nodes_.size());
    nodes_.emplace_back();
    nodes_[n].id = node_id;
    by_id_[node_id] = n;
  } else {
    n = it->second;
    for (const auto& k : nodes_[n].label_keys) by_label_[k].Erase(n);
    for (const auto& i : nodes_[n].images) by_image_[i].Erase(n);
  }
  Node& node = nodes_[n];
  auto orinf = [](int64_t v) { return v > 0 ? v : kUnlimited; };
  node.cap.cpu_millicores = orinf(capacity.cpu_millicores);
  node.cap.memory_bytes = orinf(capacity.memory_bytes);
  node.cap.max_sandboxes = orinf(capacity.max_sandboxes);
  node.label_keys.clear();
  for (const auto& [k, v] : labels) {
    node.label_keys.push_back(absl::StrCat(k, "=", v));
    by_label_[node.label_keys.back()].Insert(n);
  }
  node.images = cached_images;
  for (const auto& i : node.images) by_image_[i].Insert(n);
  Rebucket(n);
  return n;
}

std::optional<NodeIndex> Placer::FindNode(absl::string_view node_id) const {
  auto it = by_id_.find(node_id);
  if (it == by_id_.end()) return std::nullopt;
  return it->second;
}

void Placer::SetSchedulable(NodeIndex n, bool schedulable) {
  nodes_[n].schedulable = schedulable;
  Rebucket(n);
}

void Placer::Reserve(NodeIndex n, int64_t cpu, int64_t mem) {
  Node& node = nodes_[n];
  node.used.cpu_millicores += cpu;
  node.used.memory_bytes += mem;
  node.used.sandboxes += 1;
  Rebucket(n);
}

void Placer::Release(NodeIndex n, int64_t cpu, int64_t mem) {
  Node& node = nodes_[n];
  node.used.cpu_millicores =
      std::max<int64_t>(0, node.used.cpu_millicores - cpu);
  node.used.memory_bytes = std::max<int64_t>(0, node.used.memory_bytes - mem);
  node.used.sandboxes = std::max<int64_t>(0, node.used.sandboxes - 1);
  Rebucket(n);
}

Placer::Usage Placer::FreeTotal() const {
  Usage u;
  for (const Node& node : nodes_) {
    if (!node.schedulable) continue;
    u.cpu_millicores += std::max<int64_t>(
        0, std::min(node.cap.cpu_millicores, kUnlimited / 1024) -
               node.used.cpu_millicores);
    u.memory_bytes += std::max<int64_t>(
        0, std::min(node.cap.memory_bytes, kUnlimited / 1024) -
               node.used.memory_bytes);
    u.sandboxes += std::max<int64_t>(
        0, std::min(node.cap.max_sandboxes, kUnlimited / 1024) -
               node.used.sandboxes);
  }
  return u;
}

bool Placer::Fits(NodeIndex n, const PlacementRequest& r) const {
  const Node& node = nodes_[n];
  if (!node.schedulable) return false;
  if (r.only_node && *r.only_node != n) return false;
  if (node.used.cpu_millicores + r.cpu_millicores > node.cap.cpu_millicores ||
      node.used.memory_bytes + r.memory_bytes > node.cap.memory_bytes ||
      node.used.sandboxes + 1 > node.cap.max_sandboxes) {
    return false;
  }
  for (NodeIndex x : r.exclude) {
    if (x == n) return false;
  }
  if (r.group != nullptr && r.max_per_node > 0) {
    auto it = r.group->per_node.find(n);
    if (it != r.group->per_node.end() && it->second >= r.max_per_node) {
      return false;
    }
  }
  if (r.node_selector != nullptr) {
    for (const auto& [k, v] : *r.node_selector) {
      std::string key = absl::StrCat(k, "=", v);
      if (!std::binary_search(node.label_keys.begin(), node.label_keys.end(),
                              key)) {
        return false;
      }
    }
  }
  return true;
}

// Lower is better.
double Placer::Score(NodeIndex n, const PlacementRequest& r) const {
  const Node& node = nodes_[n];
  double load = std::max(
      {static_cast<double>(node.used.cpu_millicores) / node.cap.cpu_millicores,
       static_cast<double>(node.used.memory_bytes) / node.cap.memory_bytes,
       static_cast<double>(node.used.sandboxes) / node.cap.max_sandboxes});
  bool cached = !r.image.empty() &&
                std::find(node.images.begin(), node.images.end(), r.image) !=
                    node.images.end();
  int32_t in_group = 0;
  if (r.group != nullptr) {
    auto it = r.group->per_node.find(n);
    if (it != r.group->per_node.end()) in_group = it->second;
  }
  if (r.spread == Spread::kPack) {
    return -10.0 * (in_group > 0) - load - (cached ? 0.5 : 0.0);
  }
  return 10.0 * in_group + load - (cached ? 0.5 : 0.0);
}

void Placer::Commit(NodeIndex n, const PlacementRequest& r) {
  Reserve(n, r.cpu_millicores, r.memory_bytes);
  if (r.group != nullptr) r.group->per_node[n]++;
}

absl::StatusOr<NodeIndex> Placer::Place(const PlacementRequest& r) {
  if (r.only_node) {
    if (*r.only_node < nodes_.size() && Fits(*r.only_node, r)) {
      Commit(*r.only_node, r);
      return *r.only_node;
    }
    return absl::ResourceExhaustedError(
        "the required node is full, unschedulable or excluded");
  }
  // Candidate source: the smallest node_selector posting set, else the
  // capacity buckets that certainly fit the request.
  const std::vector<NodeIndex>* selector_set = nullptr;
  if (r.node_selector != nullptr && !r.node_selector->empty()) {
    for (const auto& [k, v] : *r.node_selector) {
      auto it = by_label_.find(absl::StrCat(k, "=", v));
      if (it == by_label_.end() || it->second.items.empty()) {
        return absl::ResourceExhaustedError(
            absl::StrCat("no node carries label ", k, "=", v));
      }
      if (selector_set == nullptr ||
          it->second.items.size() < selector_set->size()) {
        selector_set = &it->second.items;
      }
    }
  }
  // A fitting node has min(free cpu units, free mem units) >= min(need):
  // only buckets from BucketOf(min need) up can hold one (exact check
  // below).
  int64_t need_cpu = (r.cpu_millicores + kCpuUnit - 1) / kCpuUnit;
  int64_t need_mem = (r.memory_bytes + kMemUnit - 1) / kMemUnit;
  int64_t need = std::max<int64_t>(std::min(need_cpu, need_mem), 1);
  int from = BucketOf(need);

  std::vector<const std::vector<NodeIndex>*> sources;
  if (selector_set != nullptr) {
    sources.push_back(selector_set);
  } else {
    for (int b = kBuckets - 1; b >= from; --b) {
      if (!buckets_[b].empty()) sources.push_back(&buckets_[b]);
    }
  }
  size_t total = 0;
  for (auto* s : sources) total += s->size();

  auto at = [&](size_t i) -> NodeIndex {
    for (auto* s : sources) {
      if (i < s->size()) return (*s)[i];
      i -= s->size();
    }
    return 0;
  };

  std::optional<NodeIndex> best;
  double best_score = std::numeric_limits<double>::infinity();
  auto consider = [&](NodeIndex n) {
    if (!Fits(n, r)) return;
    double s = Score(n, r);
    if (s < best_score) {
      best_score = s;
      best = n;
    }
  };

  if (total > 0) {
    std::uniform_int_distribution<size_t> pick(0, total - 1);
    int feasible_seen = 0;
    for (int i = 0;
         i < options_.samples * 4 && feasible_seen < options_.samples; ++i) {
      NodeIndex n = at(pick(rng_));
      if (Fits(n, r)) {
        ++feasible_seen;
        consider(n);
      }
    }
    // Locality and pack candidates.
    if (!r.image.empty()) {
      auto it = by_image_.find(r.image);
      if (it != by_image_.end() && !it->second.items.empty()) {
        const auto& items = it->second.items;
        std::uniform_int_distribution<size_t> ipick(0, items.size() - 1);
        for (int i = 0; i < 2; ++i) consider(items[ipick(rng_)]);
      }
    }
    if (r.group != nullptr && r.spread == Spread::kPack) {
      int k = 0;
      for (const auto& [n, c] : r.group->per_node) {
        if (++k > 16) break;
        consider(n);
      }
    }
    if (!best) {
      // Bounded scan from a random offset.
      size_t start = pick(rng_);
      size_t limit = std::min<size_t>(total, kMaxScan);
      for (size_t i = 0; i < limit && !best; ++i) {
        consider(at((start + i) % total));
      }
    }
  }
  if (!best) {
    std::string what = selector_set != nullptr
                           ? "no schedulable node matching node_selector has "
                           : "no schedulable node has ";
    return absl::ResourceExhaustedError(absl::StrCat(
        what, r.cpu_millicores, " millicores, ", r.memory_bytes,
        " bytes of memory and a sandbox slot free",
        r.max_per_node > 0 ? " within the group's max_per_node" : ""));
  }
  Commit(*best, r);
  return *best;
}

}  // namespace dsec::controller
