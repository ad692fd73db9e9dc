// Invariants:
//  * Members of every chain are ordered SERVING, SYNCING, OFFLINE (Order()).
//  * An alive server has no OFFLINE membership: it goes OFFLINE only when it
//    stops being alive, and comes back only through Register.
//  * A chain that ever had a member keeps at least one SERVING member.
//  * Every change that readers of the table route by bumps the chain's
//    version and the table's, and is persisted before the call returns.
#include "fs/cluster_manager.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/status_macros.h"
#include "common/unique_fd.h"

namespace dsec::fs {
namespace {

int Rank(v1::ChainMemberState state) {
  switch (state) {
    case v1::CHAIN_MEMBER_STATE_SERVING:
      return 0;
    case v1::CHAIN_MEMBER_STATE_SYNCING:
      return 1;
    default:
      return 2;
  }
}

// Stable: members of one state keep their relative order.
void Order(v1::Chain* chain) {
  std::vector<v1::ChainMember> members(chain->members().begin(),
                                       chain->members().end());
  std::stable_sort(members.begin(), members.end(),
                   [](const v1::ChainMember& a, const v1::ChainMember& b) {
                     return Rank(a.state()) < Rank(b.state());
                   });
  chain->clear_members();
  for (auto& m : members) *chain->add_members() = std::move(m);
}

// Moves `node_id` to `state`, after the members already in that state.
void MoveTo(v1::Chain* chain, const std::string& node_id,
            v1::ChainMemberState state) {
  auto* members = chain->mutable_members();
  for (int i = 0; i < members->size(); ++i) {
    if (members->Get(i).node_id() != node_id) continue;
    v1::ChainMember m = members->Get(i);
    members->DeleteSubrange(i, 1);
    m.set_state(state);
    *chain->add_members() = std::move(m);
    break;
  }
  Order(chain);
}

v1::ChainMember* MemberOf(v1::Chain* chain, const std::string& node_id) {
  for (auto& m : *chain->mutable_members()) {
    if (m.node_id() == node_id) return &m;
  }
  return nullptr;
}

int CountState(const v1::Chain& chain, v1::ChainMemberState state) {
  return static_cast<int>(std::count_if(
      chain.members().begin(), chain.members().end(),
      [&](const v1::ChainMember& m) { return m.state() == state; }));
}

absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& data) {
  const std::string tmp = path + ".tmp";
  {
    UniqueFd fd(
        open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd) return ErrnoStatus(absl::StrCat("open ", tmp));
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = write(fd.get(), data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoStatus(absl::StrCat("write ", tmp));
      done += static_cast<size_t>(n);
    }
    if (fsync(fd.get()) != 0) return ErrnoStatus(absl::StrCat("fsync ", tmp));
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    return ErrnoStatus(absl::StrCat("rename ", tmp));
  }
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  if (dir.empty()) dir = "/";
  UniqueFd dfd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd) return ErrnoStatus(absl::StrCat("open ", dir));
  if (fsync(dfd.get()) != 0) return ErrnoStatus(absl::StrCat("fsync ", dir));
  return absl::OkStatus();
}

struct Metrics {
  metrics::Gauge* servers;
  metrics::Gauge* chains;
  metrics::Gauge* members;
  metrics::Gauge* table_version;
  static Metrics& Get() {
    static Metrics* m = [] {
      auto& reg = metrics::Registry::Default();
      auto* out = new Metrics;
      out->servers = reg.AddGauge("dsec_fs_chunk_servers",
                                  "Chunk servers known, by state.", {"state"});
      out->chains = reg.AddGauge(
          "dsec_fs_chains",
          "Chains by health: full (replication SERVING members), degraded "
          "(fewer), empty (not formed).",
          {"state"});
      out->members = reg.AddGauge("dsec_fs_chain_members",
                                  "Chain memberships, by state.", {"state"});
      out->table_version = reg.AddGauge("dsec_fs_chain_table_version",
                                        "Version of the chain table.");
      return out;
    }();
    return *m;
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<ClusterManager>> ClusterManager::Create(
    const ClusterOptions& options) {
  if (options.num_chains == 0) {
    return absl::InvalidArgumentError("cluster: num_chains must be > 0");
  }
  if (options.replication == 0) {
    return absl::InvalidArgumentError("cluster: replication must be > 0");
  }
  if (options.chunk_size == 0) {
    return absl::InvalidArgumentError("cluster: chunk_size must be > 0");
  }
  if (options.heartbeat_interval <= absl::ZeroDuration() ||
      options.offline_after <= 0) {
    return absl::InvalidArgumentError(
        "cluster: heartbeat_interval and offline_after must be positive");
  }
  std::unique_ptr<ClusterManager> manager(new ClusterManager(options));
  absl::MutexLock lock(&manager->mu_);
  RETURN_IF_ERROR(manager->Load());
  manager->UpdateMetrics();
  return manager;
}

ClusterManager::ClusterManager(const ClusterOptions& options)
    : options_(options) {}

absl::Time ClusterManager::Now() const {
  return options_.clock ? options_.clock() : absl::Now();
}

absl::Status ClusterManager::Load() {
  std::string data;
  bool found = false;
  if (!options_.state_path.empty()) {
    std::ifstream in(options_.state_path, std::ios::binary);
    if (in) {
      std::stringstream ss;
      ss << in.rdbuf();
      if (in.bad()) {
        return absl::DataLossError(
            absl::StrCat("cluster: cannot read ", options_.state_path));
      }
      data = ss.str();
      found = true;
    }
  }
  if (!found) {
    table_.Clear();
    table_.set_version(1);
    table_.set_replication(options_.replication);
    table_.set_chunk_size(options_.chunk_size);
    for (uint32_t i = 0; i < options_.num_chains; ++i) {
      v1::Chain* chain = table_.add_chains();
      chain->set_id(i);
      chain->set_version(1);
    }
    return Persist();
  }
  if (!table_.ParseFromString(data) || table_.chains_size() == 0) {
    return absl::DataLossError(
        absl::StrCat("cluster: corrupt chain table in ", options_.state_path));
  }
  if (table_.chains_size() != static_cast<int>(options_.num_chains)) {
    DSEC_LOG_WARN("cluster: keeping the stored {} chains (num_chains is {})",
                  table_.chains_size(), options_.num_chains);
  }
  table_.set_replication(options_.replication);
  table_.set_chunk_size(options_.chunk_size);
  // Servers alive before the restart get a fresh allowance; offline ones stay
  // offline until they register again (alive servers hold no OFFLINE
  // membership, so a heartbeat from one never needs the return path).
  const absl::Time now = Now();
  for (auto& server : *table_.mutable_servers()) {
    if (server.alive()) last_seen_[server.node_id()] = now;
  }
  for (auto& chain : *table_.mutable_chains()) {
    Order(&chain);
    // Replacement clocks restart with the meta server.
    for (const auto& m : chain.members()) {
      if (m.state() == v1::CHAIN_MEMBER_STATE_OFFLINE) {
        offline_since_[absl::StrCat(chain.id(), "/", m.node_id())] = now;
      }
    }
  }
  table_.set_version(table_.version() + 1);
  return Persist();
}

absl::Status ClusterManager::Persist() {
  if (options_.state_path.empty()) return absl::OkStatus();
  absl::Status s =
      WriteFileAtomically(options_.state_path, table_.SerializeAsString());
  if (!s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cluster: persist chain table: ", s.message()));
  }
  return absl::OkStatus();
}

void ClusterManager::BumpChain(v1::Chain* chain) {
  chain->set_version(chain->version() + 1);
  table_.set_version(table_.version() + 1);
}

v1::ChunkServerInfo* ClusterManager::FindServer(const std::string& node_id) {
  for (auto& s : *table_.mutable_servers()) {
    if (s.node_id() == node_id) return &s;
  }
  return nullptr;
}

void ClusterManager::FormEmptyChains() {
  std::vector<std::string> alive;
  for (const auto& s : table_.servers()) {
    if (s.alive()) alive.push_back(s.node_id());
  }
  if (alive.size() < options_.replication) return;
  const size_t n = alive.size();
  for (auto& chain : *table_.mutable_chains()) {
    if (chain.members_size() > 0) continue;
    for (uint32_t k = 0; k < options_.replication; ++k) {
      v1::ChainMember* m = chain.add_members();
      m->set_node_id(alive[(chain.id() + k) % n]);
      m->set_state(v1::CHAIN_MEMBER_STATE_SERVING);
    }
    BumpChain(&chain);
  }
}

absl::StatusOr<v1::ChainTable> ClusterManager::Register(
    const std::string& node_id, const std::string& address) {
  if (node_id.empty()) {
    return absl::InvalidArgumentError("register: empty node_id");
  }
  if (address.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("register ", node_id, ": empty address"));
  }
  absl::MutexLock lock(&mu_);
  const absl::Time now = Now();
  last_seen_[node_id] = now;
  v1::ChunkServerInfo* server = FindServer(node_id);
  if (server == nullptr) {
    server = table_.add_servers();
    server->set_node_id(node_id);
    server->set_address(address);
    server->set_alive(true);
    server->set_last_heartbeat_ns(absl::ToUnixNanos(now));
    table_.set_version(table_.version() + 1);
    for (auto& chain : *table_.mutable_chains()) {
      if (chain.members_size() == 0) continue;
      int active = chain.members_size() -
                   CountState(chain, v1::CHAIN_MEMBER_STATE_OFFLINE);
      if (active >= static_cast<int>(options_.replication)) continue;
      v1::ChainMember* m = chain.add_members();
      m->set_node_id(node_id);
      m->set_state(v1::CHAIN_MEMBER_STATE_SYNCING);
      Order(&chain);
      BumpChain(&chain);
    }
    DSEC_LOG_INFO("cluster: chunk server {} registered at {}", node_id,
                  address);
  } else {
    if (server->address() != address || !server->alive()) {
      server->set_address(address);
      server->set_alive(true);
      table_.set_version(table_.version() + 1);
    }
    server->set_last_heartbeat_ns(absl::ToUnixNanos(now));
    for (auto& chain : *table_.mutable_chains()) {
      v1::ChainMember* m = MemberOf(&chain, node_id);
      if (m == nullptr || m->state() != v1::CHAIN_MEMBER_STATE_OFFLINE) {
        continue;
      }
      bool only_one = CountState(chain, v1::CHAIN_MEMBER_STATE_SERVING) == 0;
      MoveTo(&chain, node_id,
             only_one ? v1::CHAIN_MEMBER_STATE_SERVING
                      : v1::CHAIN_MEMBER_STATE_SYNCING);
      BumpChain(&chain);
    }
    DSEC_LOG_INFO("cluster: chunk server {} re-registered at {}", node_id,
                  address);
  }
  FormEmptyChains();
  UpdateMetrics();
  RETURN_IF_ERROR(Persist());
  return table_;
}

absl::StatusOr<v1::ChunkHeartbeatResponse> ClusterManager::Heartbeat(
    const v1::ChunkHeartbeatRequest& request) {
  v1::ChunkHeartbeatResponse response;
  absl::MutexLock lock(&mu_);
  v1::ChunkServerInfo* server = FindServer(request.node_id());
  if (server == nullptr || !server->alive()) {
    response.set_reregister(true);
    return response;
  }
  const absl::Time now = Now();
  last_seen_[request.node_id()] = now;
  server->set_last_heartbeat_ns(absl::ToUnixNanos(now));
  server->set_chunks(request.chunks());
  server->set_used_bytes(request.used_bytes());
  if (request.table_version() < table_.version()) {
    *response.mutable_table() = table_;
  }
  return response;
}

absl::StatusOr<v1::ChainTable> ClusterManager::SyncDone(
    const std::string& node_id, uint32_t chain_id, uint64_t chain_version) {
  absl::MutexLock lock(&mu_);
  if (FindServer(node_id) == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("sync done: unknown chunk server ", node_id));
  }
  v1::Chain* chain = nullptr;
  for (auto& c : *table_.mutable_chains()) {
    if (c.id() == chain_id) chain = &c;
  }
  if (chain == nullptr) {
    return absl::NotFoundError(absl::StrCat("sync done: no chain ", chain_id));
  }
  v1::ChainMember* m = MemberOf(chain, node_id);
  if (m != nullptr && m->state() == v1::CHAIN_MEMBER_STATE_SERVING) {
    return table_;
  }
  if (m == nullptr || m->state() != v1::CHAIN_MEMBER_STATE_SYNCING) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sync done: ", node_id, " is not syncing in chain ", chain_id));
  }
  if (chain->version() != chain_version) {
    return absl::AbortedError(absl::StrCat(
        "sync done: chain ", chain_id, " is at version ", chain->version(),
        ", the sync started at ", chain_version, "; sync again"));
  }
  MoveTo(chain, node_id, v1::CHAIN_MEMBER_STATE_SERVING);
  BumpChain(chain);
  DSEC_LOG_INFO("cluster: {} now serves chain {}", node_id, chain_id);
  UpdateMetrics();
  RETURN_IF_ERROR(Persist());
  return table_;
}

absl::Status ClusterManager::CheckLiveness() {
  absl::MutexLock lock(&mu_);
  const absl::Time deadline =
      Now() - options_.heartbeat_interval * options_.offline_after;
  bool changed = false;
  for (auto& server : *table_.mutable_servers()) {
    if (!server.alive()) continue;
    auto it = last_seen_.find(server.node_id());
    if (it != last_seen_.end() && it->second >= deadline) continue;
    server.set_alive(false);
    table_.set_version(table_.version() + 1);
    changed = true;
    DSEC_LOG_WARN("cluster: chunk server {} missed its heartbeats; offline",
                  server.node_id());
    for (auto& chain : *table_.mutable_chains()) {
      v1::ChainMember* m = MemberOf(&chain, server.node_id());
      if (m == nullptr || m->state() == v1::CHAIN_MEMBER_STATE_OFFLINE) {
        continue;
      }
      if (m->state() == v1::CHAIN_MEMBER_STATE_SERVING &&
          CountState(chain, v1::CHAIN_MEMBER_STATE_SERVING) == 1) {
        continue;  // Never the last SERVING member.
      }
      MoveTo(&chain, server.node_id(), v1::CHAIN_MEMBER_STATE_OFFLINE);
      offline_since_[absl::StrCat(chain.id(), "/", server.node_id())] = Now();
      BumpChain(&chain);
    }
  }
  changed |= RecruitSpares();
  if (!changed) return absl::OkStatus();
  UpdateMetrics();
  return Persist();
}

bool ClusterManager::RecruitSpares() {
  if (options_.replace_after == absl::InfiniteDuration()) return false;
  const absl::Time now = Now();
  std::vector<std::string> alive;
  absl::flat_hash_map<std::string, int> load;  // non-OFFLINE memberships
  for (const auto& s : table_.servers()) {
    if (s.alive()) alive.push_back(s.node_id());
  }
  if (alive.empty()) return false;
  for (const auto& chain : table_.chains()) {
    for (const auto& m : chain.members()) {
      if (m.state() != v1::CHAIN_MEMBER_STATE_OFFLINE) load[m.node_id()]++;
    }
  }
  bool changed = false;
  for (auto& chain : *table_.mutable_chains()) {
    int active = chain.members_size() -
                 CountState(chain, v1::CHAIN_MEMBER_STATE_OFFLINE);
    for (int i = 0; i < chain.members_size() &&
                    active < static_cast<int>(options_.replication);) {
      const v1::ChainMember& m = chain.members(i);
      if (m.state() != v1::CHAIN_MEMBER_STATE_OFFLINE) {
        ++i;
        continue;
      }
      // try_emplace: an OFFLINE member not seen going down starts now.
      auto since = offline_since_.try_emplace(
          absl::StrCat(chain.id(), "/", m.node_id()), now);
      if (now - since.first->second < options_.replace_after) {
        ++i;
        continue;
      }
      // The least-loaded alive server outside the chain.
      std::string spare;
      for (size_t k = 0; k < alive.size(); ++k) {
        const std::string& candidate = alive[(chain.id() + k) % alive.size()];
        if (MemberOf(&chain, candidate) != nullptr) continue;
        if (spare.empty() || load[candidate] < load[spare]) spare = candidate;
      }
      if (spare.empty()) break;  // No spare: wait for the member to return.
      const std::string replaced = m.node_id();
      offline_since_.erase(absl::StrCat(chain.id(), "/", replaced));
      chain.mutable_members()->DeleteSubrange(i, 1);
      v1::ChainMember* joined = chain.add_members();
      joined->set_node_id(spare);
      joined->set_state(v1::CHAIN_MEMBER_STATE_SYNCING);
      Order(&chain);
      BumpChain(&chain);
      load[spare]++;
      active++;
      changed = true;
      DSEC_LOG_WARN(
          "cluster: chain {}: {} offline too long; spare {} joins to sync",
          chain.id(), replaced, spare);
      i = 0;  // The order changed; look again.
    }
  }
  return changed;
}

v1::ChainTable ClusterManager::Table() const {
  absl::MutexLock lock(&mu_);
  return table_;
}

std::vector<v1::ChunkServerInfo> ClusterManager::AliveServers() const {
  absl::MutexLock lock(&mu_);
  std::vector<v1::ChunkServerInfo> out;
  for (const auto& s : table_.servers()) {
    if (s.alive()) out.push_back(s);
  }
  return out;
}

bool ClusterManager::HasServers() const {
  absl::MutexLock lock(&mu_);
  return table_.servers_size() > 0;
}

uint64_t ClusterManager::AliveUsedBytes() const {
  absl::MutexLock lock(&mu_);
  uint64_t sum = 0;
  for (const auto& s : table_.servers()) {
    if (s.alive()) sum += s.used_bytes();
  }
  return sum;
}

void ClusterManager::UpdateMetrics() {
  Metrics& m = Metrics::Get();
  int alive = 0;
  int offline = 0;
  for (const auto& s : table_.servers()) (s.alive() ? alive : offline)++;
  m.servers->Set({"alive"}, alive);
  m.servers->Set({"offline"}, offline);
  int full = 0;
  int degraded = 0;
  int empty = 0;
  int serving = 0;
  int syncing = 0;
  int off = 0;
  for (const auto& chain : table_.chains()) {
    int s = CountState(chain, v1::CHAIN_MEMBER_STATE_SERVING);
    serving += s;
    syncing += CountState(chain, v1::CHAIN_MEMBER_STATE_SYNCING);
    off += CountState(chain, v1::CHAIN_MEMBER_STATE_OFFLINE);
    if (chain.members_size() == 0) {
      ++empty;
    } else if (s >= static_cast<int>(options_.replication)) {
      ++full;
    } else {
      ++degraded;
    }
  }
  m.chains->Set({"full"}, full);
  m.chains->Set({"degraded"}, degraded);
  m.chains->Set({"empty"}, empty);
  m.members->Set({"serving"}, serving);
  m.members->Set({"syncing"}, syncing);
  m.members->Set({"offline"}, off);
  m.table_version->Set({}, static_cast<double>(table_.version()));
}

}  // namespace dsec::fs
