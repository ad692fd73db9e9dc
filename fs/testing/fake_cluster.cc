#include "fs/testing/fake_cluster.h"

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <functional>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "dsec/v1/fs_service.grpc.pb.h"
#include "fs/chain_table.h"
#include "fs/fs_rpc.h"

namespace dsec::fs::testing {
namespace {

int Rank(v1::ChainMemberState s) {
  switch (s) {
    case v1::CHAIN_MEMBER_STATE_SERVING:
      return 0;
    case v1::CHAIN_MEMBER_STATE_SYNCING:
      return 1;
    default:
      return 2;
  }
}

}  // namespace

struct FakeCluster::Impl final : public v1::FsClusterService::Service {
  FakeClusterOptions options;
  mutable absl::Mutex mu;
  v1::ChainTable table ABSL_GUARDED_BY(mu);
  std::map<std::string, int> registrations ABSL_GUARDED_BY(mu);
  std::map<std::pair<std::string, uint32_t>, int> sync_done ABSL_GUARDED_BY(mu);
  std::unique_ptr<grpc::Server> server;
  int port = 0;

  v1::Chain* MutableChain(uint32_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (v1::Chain& c : *table.mutable_chains()) {
      if (c.id() == id) return &c;
    }
    return nullptr;
  }

  void BumpChain(v1::Chain* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    c->set_version(c->version() + 1);
    table.set_version(table.version() + 1);
  }

  void SetStateLocked(v1::Chain* c, const std::string& node,
                      v1::ChainMemberState state)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::vector<v1::ChainMember> members(c->members().begin(),
                                         c->members().end());
    auto it = std::find_if(members.begin(), members.end(),
                           [&](const auto& m) { return m.node_id() == node; });
    if (it == members.end()) return;
    v1::ChainMember moved = *it;
    moved.set_state(state);
    members.erase(it);
    // Insert at the end of its group.
    auto pos = std::find_if(members.begin(), members.end(), [&](const auto& m) {
      return Rank(m.state()) > Rank(state);
    });
    members.insert(pos, moved);
    c->clear_members();
    for (const auto& m : members) *c->add_members() = m;
    BumpChain(c);
  }

  void AddServerLocked(const std::string& node, const std::string& address)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    for (v1::ChunkServerInfo& s : *table.mutable_servers()) {
      if (s.node_id() == node) {
        s.set_address(address);
        s.set_alive(true);
        table.set_version(table.version() + 1);
        return;
      }
    }
    v1::ChunkServerInfo* s = table.add_servers();
    s->set_node_id(node);
    s->set_address(address);
    s->set_alive(true);
    table.set_version(table.version() + 1);
  }

  grpc::Status RegisterChunkServer(
      grpc::ServerContext*, const v1::RegisterChunkServerRequest* req,
      v1::RegisterChunkServerResponse* resp) override {
    if (req->node_id().empty() || req->address().empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "node_id and address are required");
    }
    absl::MutexLock lock(&mu);
    AddServerLocked(req->node_id(), req->address());
    ++registrations[req->node_id()];
    *resp->mutable_table() = table;
    resp->set_heartbeat_interval_ms(options.heartbeat_interval_ms);
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext*,
                         const v1::ChunkHeartbeatRequest* req,
                         v1::ChunkHeartbeatResponse* resp) override {
    absl::MutexLock lock(&mu);
    bool known = false;
    for (v1::ChunkServerInfo& s : *table.mutable_servers()) {
      if (s.node_id() == req->node_id()) {
        known = true;
        s.set_chunks(req->chunks());
        s.set_used_bytes(req->used_bytes());
      }
    }
    if (!known) {
      resp->set_reregister(true);
      return grpc::Status::OK;
    }
    if (req->table_version() < table.version()) *resp->mutable_table() = table;
    return grpc::Status::OK;
  }

  grpc::Status ReportSyncDone(grpc::ServerContext*,
                              const v1::ReportSyncDoneRequest* req,
                              v1::ReportSyncDoneResponse* resp) override {
    absl::MutexLock lock(&mu);
    v1::Chain* c = MutableChain(req->chain_id());
    if (c == nullptr) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such chain");
    }
    if (c->version() != req->chain_version() ||
        StateOf(*c, req->node_id()) != v1::CHAIN_MEMBER_STATE_SYNCING) {
      return grpc::Status(grpc::StatusCode::ABORTED,
                          absl::StrCat("chain ", c->id(), " is at version ",
                                       c->version(), "; sync again"));
    }
    ++sync_done[{req->node_id(), req->chain_id()}];
    SetStateLocked(c, req->node_id(), v1::CHAIN_MEMBER_STATE_SERVING);
    *resp->mutable_table() = table;
    return grpc::Status::OK;
  }

  grpc::Status GetChainTable(grpc::ServerContext*,
                             const v1::GetChainTableRequest* req,
                             v1::GetChainTableResponse* resp) override {
    absl::MutexLock lock(&mu);
    if (req->known_version() == 0 || req->known_version() < table.version()) {
      *resp->mutable_table() = table;
    }
    return grpc::Status::OK;
  }
};

absl::StatusOr<std::unique_ptr<FakeCluster>> FakeCluster::Start(
    const FakeClusterOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  {
    absl::MutexLock lock(&impl->mu);
    impl->table.set_version(1);
    impl->table.set_replication(options.replication);
    impl->table.set_chunk_size(options.chunk_size);
    for (uint32_t i = 1; i <= options.num_chains; ++i) {
      v1::Chain* c = impl->table.add_chains();
      c->set_id(i);
      c->set_version(1);
    }
  }
  grpc::ServerBuilder builder;
  ConfigureFsServer(builder);
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &impl->port);
  builder.RegisterService(impl.get());
  impl->server = builder.BuildAndStart();
  if (!impl->server || impl->port == 0) {
    return absl::UnavailableError("fake cluster: cannot listen");
  }
  return std::unique_ptr<FakeCluster>(new FakeCluster(std::move(impl)));
}

FakeCluster::FakeCluster(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

FakeCluster::~FakeCluster() {
  impl_->server->Shutdown(std::chrono::system_clock::now());
  impl_->server->Wait();
}

std::string FakeCluster::address() const {
  return absl::StrCat("127.0.0.1:", impl_->port);
}

void FakeCluster::SetChain(
    uint32_t chain_id,
    const std::vector<std::pair<std::string, v1::ChainMemberState>>& members) {
  absl::MutexLock lock(&impl_->mu);
  v1::Chain* c = impl_->MutableChain(chain_id);
  if (c == nullptr) {
    c = impl_->table.add_chains();
    c->set_id(chain_id);
  }
  c->clear_members();
  for (const auto& [node, state] : members) {
    v1::ChainMember* m = c->add_members();
    m->set_node_id(node);
    m->set_state(state);
  }
  impl_->BumpChain(c);
}

void FakeCluster::SetMemberState(uint32_t chain_id, const std::string& node_id,
                                 v1::ChainMemberState state) {
  absl::MutexLock lock(&impl_->mu);
  v1::Chain* c = impl_->MutableChain(chain_id);
  if (c != nullptr) impl_->SetStateLocked(c, node_id, state);
}

void FakeCluster::AddServer(const std::string& node_id,
                            const std::string& address) {
  absl::MutexLock lock(&impl_->mu);
  impl_->AddServerLocked(node_id, address);
}

void FakeCluster::ForgetServer(const std::string& node_id) {
  absl::MutexLock lock(&impl_->mu);
  auto* servers = impl_->table.mutable_servers();
  for (int i = 0; i < servers->size(); ++i) {
    if (servers->Get(i).node_id() == node_id) {
      servers->DeleteSubrange(i, 1);
      impl_->table.set_version(impl_->table.version() + 1);
      return;
    }
  }
}

v1::ChainTable FakeCluster::table() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->table;
}

v1::Chain FakeCluster::chain(uint32_t chain_id) const {
  absl::MutexLock lock(&impl_->mu);
  const v1::Chain* c = FindChain(impl_->table, chain_id);
  return c ? *c : v1::Chain();
}

int FakeCluster::registrations(const std::string& node_id) const {
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->registrations.find(node_id);
  return it == impl_->registrations.end() ? 0 : it->second;
}

int FakeCluster::sync_done(const std::string& node_id,
                           uint32_t chain_id) const {
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->sync_done.find({node_id, chain_id});
  return it == impl_->sync_done.end() ? 0 : it->second;
}

bool FakeCluster::WaitForTable(
    const std::function<bool(const v1::ChainTable&)>& pred,
    absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (pred(table())) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return pred(table());
}

std::vector<std::string> ChunkFilesOf(const std::string& data_dir,
                                      uint64_t inode, uint32_t index) {
  char prefix[64];
  snprintf(prefix, sizeof(prefix), "%016lx-%08x.v",
           static_cast<unsigned long>(inode), index);
  std::vector<std::string> out;
  std::string root = data_dir + "/chunks";
  DIR* d = opendir(root.c_str());
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::string sub = root + "/" + e->d_name;
    DIR* s = opendir(sub.c_str());
    if (s == nullptr) continue;
    while (dirent* f = readdir(s)) {
      if (absl::StartsWith(f->d_name, prefix)) {
        out.push_back(sub + "/" + f->d_name);
      }
    }
    closedir(s);
  }
  closedir(d);
  return out;
}

}  // namespace dsec::fs::testing
