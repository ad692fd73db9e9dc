// dsec-chunk: see chunk_server.h for the chain write path, sync and repair
// invariants. Layout of this file: keyed locks, the core (Impl: table,
// client ops, Forward, reads, sync, repair, membership), the gRPC adapter,
// and Create/Shutdown.
#include "fs/chunk_server.h"

#include <grpcpp/client_context.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/status_macros.h"
#include "dsec/v1/fs_service.grpc.pb.h"
#include "fs/chain_table.h"
#include "fs/fs_rpc.h"

namespace dsec::fs {
namespace {

using v1::ForwardOp;

// Per-key shared/exclusive locks; entries exist only while held or awaited.
template <typename K>
class KeyedLocks {
 public:
  class Guard {
   public:
    Guard(KeyedLocks* locks, K key, bool exclusive)
        : locks_(locks), key_(std::move(key)), exclusive_(exclusive) {
      locks_->Lock(key_, exclusive_);
    }
    ~Guard() { locks_->Unlock(key_, exclusive_); }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;

   private:
    KeyedLocks* locks_;
    K key_;
    bool exclusive_;
  };

 private:
  struct Entry {
    int readers = 0;
    bool writer = false;
    int refs = 0;
  };

  void Lock(const K& key, bool exclusive) {
    absl::MutexLock lock(&mu_);
    Entry& e = entries_[key];  // std::map: references stay valid
    ++e.refs;
    while (e.writer || (exclusive && e.readers > 0)) cv_.Wait(&mu_);
    if (exclusive) {
      e.writer = true;
    } else {
      ++e.readers;
    }
  }

  void Unlock(const K& key, bool exclusive) {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(key);
    if (exclusive) {
      it->second.writer = false;
    } else {
      --it->second.readers;
    }
    if (--it->second.refs == 0) entries_.erase(it);
    cv_.SignalAll();
  }

  absl::Mutex mu_;
  absl::CondVar cv_;
  std::map<K, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

ChunkId IdOf(const v1::ChunkRef& ref) {
  return ChunkId{ref.inode(), ref.index()};
}

v1::ChunkRef RefOf(const ChunkId& id) {
  v1::ChunkRef ref;
  ref.set_inode(id.inode);
  ref.set_index(id.index);
  return ref;
}

const char* OpName(ForwardOp op) {
  switch (op) {
    case v1::FORWARD_OP_WRITE:
      return "write";
    case v1::FORWARD_OP_TRUNCATE:
      return "truncate";
    case v1::FORWARD_OP_REPLACE:
      return "replace";
    case v1::FORWARD_OP_REMOVE:
      return "remove";
    default:
      return "unknown";
  }
}

uint64_t BaseOf(const ChunkMeta& m) {
  return m.pending_version ? m.pending_version : m.committed_version;
}

bool IsUnreachable(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s);
}

}  // namespace

struct ChunkServer::Impl {
  class Service;
  explicit Impl(const ChunkServerOptions& o) : options(o) {}

  // ---- state -------------------------------------------------------------
  const ChunkServerOptions options;
  std::unique_ptr<ChunkStore> store;
  std::string address;  // registered with the meta server
  int bound_port = 0;
  std::unique_ptr<v1::FsClusterService::Stub> meta;

  mutable absl::Mutex table_mu;
  std::shared_ptr<const v1::ChainTable> table ABSL_GUARDED_BY(table_mu) =
      std::make_shared<v1::ChainTable>();
  absl::Time last_refresh ABSL_GUARDED_BY(table_mu) = absl::InfinitePast();

  absl::Mutex peers_mu;
  absl::flat_hash_map<std::string, std::shared_ptr<v1::FsChunkService::Stub>>
      peers ABSL_GUARDED_BY(peers_mu);

  KeyedLocks<ChunkId> chunk_locks;
  KeyedLocks<std::pair<uint32_t, uint64_t>> inode_locks;  // (chain, inode)
  // Mutations in flight by (chain, chain version of the request),
  // registered before the version check and dropped when done, so a sync
  // listing can wait for every write admitted under an older version (see
  // ListChunks) without stopping new ones.
  absl::Mutex inflight_mu;
  std::map<std::pair<uint32_t, uint64_t>, int> inflight
      ABSL_GUARDED_BY(inflight_mu);

  class InflightGuard {
   public:
    InflightGuard(Impl* impl, const v1::ChainRef& ref)
        : impl_(impl), key_(ref.chain_id(), ref.chain_version()) {
      absl::MutexLock lock(&impl_->inflight_mu);
      ++impl_->inflight[key_];
    }
    ~InflightGuard() {
      absl::MutexLock lock(&impl_->inflight_mu);
      auto it = impl_->inflight.find(key_);
      if (--it->second == 0) impl_->inflight.erase(it);
    }

   private:
    Impl* impl_;
    std::pair<uint32_t, uint64_t> key_;
  };

  // Waits until no mutation of `chain_id` admitted under a version below
  // `version` is in flight.
  absl::Status DrainOlder(uint32_t chain_id, uint64_t version) {
    auto none_older = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(inflight_mu) {
      auto it = inflight.lower_bound({chain_id, 0});
      return it == inflight.end() || it->first.first != chain_id ||
             it->first.second >= version;
    };
    absl::MutexLock lock(&inflight_mu);
    if (!inflight_mu.AwaitWithTimeout(absl::Condition(&none_older),
                                      absl::Seconds(30))) {
      return absl::UnavailableError(absl::StrCat(
          "writes of chain ", chain_id, " under older versions still running"));
    }
    return absl::OkStatus();
  }

  std::atomic<bool> stopping{false};
  absl::Mutex wait_mu;  // for interruptible sleeps
  absl::CondVar wait_cv;

  absl::Mutex repair_mu;
  std::deque<ChunkId> repair_queue ABSL_GUARDED_BY(repair_mu);
  std::set<ChunkId> repair_queued ABSL_GUARDED_BY(repair_mu);

  absl::Mutex sync_mu;
  absl::flat_hash_set<uint32_t> sync_running ABSL_GUARDED_BY(sync_mu);
  std::vector<std::thread> sync_threads ABSL_GUARDED_BY(sync_mu);

  std::thread membership_thread;
  std::thread repair_thread;
  std::thread scrub_thread;
  std::unique_ptr<grpc::Server> server;
  std::vector<std::unique_ptr<grpc::Service>> services;
  std::unique_ptr<metrics::Registry> registry =
      std::make_unique<metrics::Registry>();
  std::unique_ptr<metrics::HttpServer> http;
  bool shut_down = false;

  // ---- metrics -----------------------------------------------------------
  metrics::Counter* reads = registry->AddCounter(
      "dsec_chunk_reads_total", "Client chunk reads.", {"outcome"});
  metrics::Counter* read_bytes = registry->AddCounter(
      "dsec_chunk_read_bytes_total", "Bytes returned by client reads.");
  metrics::Counter* writes =
      registry->AddCounter("dsec_chunk_writes_total",
                           "Client writes at the head.", {"op", "outcome"});
  metrics::Counter* write_bytes = registry->AddCounter(
      "dsec_chunk_write_bytes_total", "Bytes of client writes at the head.");
  metrics::Counter* forwards_in =
      registry->AddCounter("dsec_chunk_forwards_received_total",
                           "Forwards received.", {"op", "outcome"});
  metrics::Counter* forwards_out =
      registry->AddCounter("dsec_chunk_forwards_sent_total",
                           "Forwards sent to successors.", {"op", "outcome"});
  metrics::Counter* forward_bytes = registry->AddCounter(
      "dsec_chunk_forward_bytes_total", "Payload bytes forwarded.");
  metrics::Counter* sync_chunks =
      registry->AddCounter("dsec_chunk_sync_chunks_total",
                           "Chunks copied or removed by resync.", {"action"});
  metrics::Counter* syncs_done = registry->AddCounter(
      "dsec_chunk_syncs_done_total", "Chain resyncs reported done.");
  metrics::Gauge* syncing = registry->AddGauge("dsec_chunk_syncing_chains",
                                               "Chains being resynced now.");
  metrics::Counter* repairs = registry->AddCounter(
      "dsec_chunk_repairs_total", "Chunk repairs from replicas.", {"outcome"});
  metrics::Counter* corrupt = registry->AddCounter(
      "dsec_chunk_corrupt_reads_total", "Reads that hit corrupt data.");
  metrics::Counter* scrubbed = registry->AddCounter(
      "dsec_chunk_scrubbed_total",
      "Chunks the scrub verified, by outcome (ok, corrupt).", {"outcome"});
  metrics::Counter* scrubbed_bytes = registry->AddCounter(
      "dsec_chunk_scrubbed_bytes_total", "Bytes the scrub read back.");
  metrics::Counter* scrub_passes = registry->AddCounter(
      "dsec_chunk_scrub_passes_total", "Finished scrub passes.");
  metrics::Counter* strays_removed = registry->AddCounter(
      "dsec_chunk_stray_chunks_removed_total",
      "Chunks removed because this server left their chain.");
  // When the last heartbeat succeeded (the chain table was current then).
  std::atomic<int64_t> heartbeat_ok_ns{0};
  // chain id -> since when this server has not been a member (scrub
  // thread only).
  absl::flat_hash_map<uint32_t, absl::Time> not_member_since;

  // ---- table -------------------------------------------------------------
  std::shared_ptr<const v1::ChainTable> Table() const {
    absl::MutexLock lock(&table_mu);
    return table;
  }

  void InstallTable(const v1::ChainTable& t) {
    {
      absl::MutexLock lock(&table_mu);
      if (t.version() <= table->version()) return;
      table = std::make_shared<const v1::ChainTable>(t);
    }
    DSEC_LOG_DEBUG("chunk {}: chain table version {}", options.node_id,
                   t.version());
    MaybeStartSyncs();
  }

  absl::Status RefreshTable() {
    uint64_t known;
    {
      absl::MutexLock lock(&table_mu);
      // A hostile client naming future versions cannot make us hammer meta.
      if (absl::Now() - last_refresh < absl::Milliseconds(10)) {
        return absl::OkStatus();
      }
      last_refresh = absl::Now();
      known = table->version();
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options.meta_timeout));
    v1::GetChainTableRequest req;
    req.set_known_version(known);
    v1::GetChainTableResponse resp;
    RETURN_IF_ERROR(
        FromGrpcFsStatus(ctx, meta->GetChainTable(&ctx, req, &resp)));
    if (resp.has_table()) InstallTable(resp.table());
    return absl::OkStatus();
  }

  struct Route {
    std::shared_ptr<const v1::ChainTable> table;
    const v1::Chain* chain = nullptr;
  };

  // The chain `ref` names, at exactly the version it names (see header).
  absl::StatusOr<Route> RouteFor(const v1::ChainRef& ref) {
    for (int attempt = 0;; ++attempt) {
      Route r;
      r.table = Table();
      r.chain = FindChain(*r.table, ref.chain_id());
      if (r.chain != nullptr && r.chain->version() == ref.chain_version()) {
        return r;
      }
      const bool mine_older =
          r.chain == nullptr || r.chain->version() < ref.chain_version();
      if (attempt == 0 && mine_older) {
        RefreshTable().IgnoreError();
        continue;
      }
      if (r.table->chains_size() == 0) {
        return absl::AbortedError(
            absl::StrCat("stale chain table: chunk server ", options.node_id,
                         " has no chain table yet"));
      }
      if (r.chain == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("unknown chain ", ref.chain_id()));
      }
      return absl::AbortedError(
          absl::StrCat("stale chain table: chain ", ref.chain_id(),
                       " is at version ", r.chain->version(), " on ",
                       options.node_id, ", request has ", ref.chain_version()));
    }
  }

  absl::Status CheckMapsTo(const Route& r, const ChunkId& id) const {
    ASSIGN_OR_RETURN(const v1::Chain* c,
                     ChainFor(*r.table, id.inode, id.index));
    if (c->id() != r.chain->id()) {
      return absl::InvalidArgumentError(absl::StrCat("chunk ", id.ToString(),
                                                     " maps to chain ", c->id(),
                                                     ", not ", r.chain->id()));
    }
    return absl::OkStatus();
  }

  absl::Status CheckInput(uint64_t inode, uint64_t offset,
                          uint64_t length) const {
    if (inode == 0) return absl::InvalidArgumentError("inode 0 is invalid");
    const uint64_t max = options.store.max_chunk_size;
    if (offset > max || length > max - offset) {
      return absl::InvalidArgumentError(
          absl::StrCat("offset ", offset, " + length ", length,
                       " exceeds the maximum chunk size ", max));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ChunkMeta> MetaOrEmpty(const ChunkId& id) const {
    absl::StatusOr<ChunkMeta> m = store->GetMeta(id);
    if (absl::IsNotFound(m.status())) {
      ChunkMeta empty;
      empty.id = id;
      return empty;
    }
    return m;
  }

  absl::StatusOr<std::shared_ptr<v1::FsChunkService::Stub>> Peer(
      const v1::ChainTable& t, const std::string& node) {
    absl::StatusOr<std::string> addr = AddressOf(t, node);
    if (!addr.ok()) return absl::UnavailableError(addr.status().message());
    absl::MutexLock lock(&peers_mu);
    auto& stub = peers[*addr];
    if (!stub) stub = v1::FsChunkService::NewStub(MakeFsChannel(*addr));
    return stub;
  }

  void SetDeadline(grpc::ClientContext& ctx) const {
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options.peer_timeout));
  }

  // ---- staging and forwarding --------------------------------------------
  absl::Status Stage(const v1::ForwardRequest& f, const ChunkId& id) {
    switch (f.op()) {
      case v1::FORWARD_OP_WRITE:
        return store->Write(id, f.offset(), f.data(), f.version());
      case v1::FORWARD_OP_TRUNCATE:
        return store->Truncate(id, f.length(), f.version());
      case v1::FORWARD_OP_REPLACE:
        return store->StageReplace(id, f.data(), f.checksum(), f.version());
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("forward op ", f.op(), " cannot be staged"));
    }
  }

  absl::Status SendForward(const v1::ChainTable& t, const std::string& succ,
                           const v1::ForwardRequest& f,
                           v1::ForwardResponse* resp) {
    ASSIGN_OR_RETURN(auto stub, Peer(t, succ));
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    absl::Status s = FromGrpcFsStatus(ctx, stub->Forward(&ctx, f, resp));
    forwards_out->Inc({OpName(f.op()), s.ok() ? "ok" : "error"});
    if (s.ok()) forward_bytes->Inc({}, f.data().size());
    if (IsUnreachable(s)) {
      return absl::UnavailableError(
          absl::StrCat("successor ", succ, " of chain ", f.chain().chain_id(),
                       " unreachable: ", s.message()));
    }
    if (!s.ok()) {
      return absl::Status(s.code(),
                          absl::StrCat("successor ", succ, ": ", s.message()));
    }
    return absl::OkStatus();
  }

  // Forwards `*f` (already applied or staged here) to our successor, if any;
  // on a base mismatch re-sends our staged content as REPLACE. Modifies *f
  // in place (from_node; op, data and so on for a REPLACE; version kept)
  // rather than copy the chunk data.
  absl::Status ForwardDown(const Route& r, v1::ForwardRequest* f_ptr,
                           const ChunkId& id) {
    std::optional<std::string> succ = SuccessorOf(*r.chain, options.node_id);
    if (!succ) return absl::OkStatus();
    v1::ForwardRequest& f = *f_ptr;
    f.set_from_node(options.node_id);
    v1::ForwardResponse resp;
    RETURN_IF_ERROR(SendForward(*r.table, *succ, f, &resp));
    if (!resp.base_mismatch()) return absl::OkStatus();
    if (f.op() == v1::FORWARD_OP_REPLACE || f.op() == v1::FORWARD_OP_REMOVE) {
      return absl::InternalError(
          absl::StrCat("successor ", *succ, " reported a base mismatch on ",
                       OpName(f.op()), " of chunk ", id.ToString()));
    }
    ASSIGN_OR_RETURN(ChunkSnapshot snap, store->ReadPending(id));
    if (snap.version != f.version()) {
      return absl::InternalError(absl::StrCat(
          "chunk ", id.ToString(), ": pending version ", snap.version,
          " is not the forwarded version ", f.version()));
    }
    f.set_op(v1::FORWARD_OP_REPLACE);
    f.set_offset(0);
    f.set_length(0);
    f.set_base_version(0);
    f.set_checksum(snap.checksum);
    *f.mutable_data() = std::move(snap.content);
    resp.Clear();
    RETURN_IF_ERROR(SendForward(*r.table, *succ, f, &resp));
    if (resp.base_mismatch()) {
      return absl::InternalError(absl::StrCat(
          "successor ", *succ, " refused REPLACE of chunk ", id.ToString()));
    }
    return absl::OkStatus();
  }

  uint64_t RemoveLocal(uint32_t chain_id, uint64_t inode, uint32_t from,
                       absl::Status* status) {
    std::shared_ptr<const v1::ChainTable> t = Table();
    absl::StatusOr<uint64_t> n =
        store->RemoveChunks(inode, from, [&](const ChunkId& id) {
          absl::StatusOr<const v1::Chain*> c = ChainFor(*t, id.inode, id.index);
          return c.ok() && (*c)->id() == chain_id;
        });
    *status = n.status();
    return n.ok() ? *n : 0;
  }

  // ---- client writes (head) ----------------------------------------------
  absl::Status HeadMutate(const v1::ChainRef& ref, v1::ForwardRequest f,
                          v1::ChunkWriteResponse* resp) {
    const ChunkId id = IdOf(f.chunk());
    RETURN_IF_ERROR(CheckInput(
        id.inode, f.op() == v1::FORWARD_OP_WRITE ? f.offset() : f.length(),
        f.op() == v1::FORWARD_OP_WRITE ? f.data().size() : 0));
    InflightGuard inflight_guard(this, ref);
    ASSIGN_OR_RETURN(Route r, RouteFor(ref));
    RETURN_IF_ERROR(CheckMapsTo(r, id));
    RETURN_IF_ERROR(CheckHead(*r.chain));
    KeyedLocks<std::pair<uint32_t, uint64_t>>::Guard inode_guard(
        &inode_locks, {r.chain->id(), id.inode}, false);
    KeyedLocks<ChunkId>::Guard chunk_guard(&chunk_locks, id, true);
    absl::Status staged;
    for (int attempt = 0; attempt < 2; ++attempt) {
      ASSIGN_OR_RETURN(ChunkMeta m, MetaOrEmpty(id));
      f.set_base_version(BaseOf(m));
      f.set_version(std::max(m.committed_version, m.pending_version) + 1);
      staged = Stage(f, id);
      if (!absl::IsDataLoss(staged) || attempt > 0) break;
      // Our base is corrupt: repair it from a replica, then stage again.
      absl::Status repaired = RepairLocked(id, *r.table, *r.chain);
      if (!repaired.ok()) {
        return absl::UnavailableError(absl::StrCat(
            staged.message(), "; repair failed: ", repaired.message()));
      }
    }
    RETURN_IF_ERROR(staged);
    *f.mutable_chain() = ref;
    RETURN_IF_ERROR(ForwardDown(r, &f, id));
    RETURN_IF_ERROR(store->Commit(id, f.version()));
    ASSIGN_OR_RETURN(ChunkMeta after, store->GetMeta(id));
    resp->set_version(after.committed_version);
    resp->set_length(after.length);
    return absl::OkStatus();
  }

  absl::Status CheckHead(const v1::Chain& c) const {
    std::vector<std::string> order = WriteOrder(c);
    if (order.empty() || order[0] != options.node_id) {
      return absl::AbortedError(absl::StrCat(
          "stale chain table: ", options.node_id, " is not the head of chain ",
          c.id(), " (version ", c.version(), ")"));
    }
    return absl::OkStatus();
  }

  // Takes the data out of *req (no copy).
  absl::Status Write(v1::ChunkWriteRequest* req, v1::ChunkWriteResponse* resp) {
    const size_t bytes = req->data().size();
    v1::ForwardRequest f;
    f.set_op(v1::FORWARD_OP_WRITE);
    *f.mutable_chunk() = req->chunk();
    f.set_offset(req->offset());
    f.mutable_data()->swap(*req->mutable_data());
    absl::Status s = HeadMutate(req->chain(), std::move(f), resp);
    writes->Inc({"write", s.ok() ? "ok" : "error"});
    if (s.ok()) write_bytes->Inc({}, bytes);
    return s;
  }

  absl::Status Truncate(const v1::ChunkTruncateRequest& req,
                        v1::ChunkWriteResponse* resp) {
    v1::ForwardRequest f;
    f.set_op(v1::FORWARD_OP_TRUNCATE);
    *f.mutable_chunk() = req.chunk();
    f.set_length(req.length());
    absl::Status s = HeadMutate(req.chain(), std::move(f), resp);
    writes->Inc({"truncate", s.ok() ? "ok" : "error"});
    return s;
  }

  absl::Status Remove(const v1::ChunkRemoveRequest& req,
                      v1::ChunkRemoveResponse* resp) {
    absl::Status s = [&]() -> absl::Status {
      if (req.inode() == 0) return absl::InvalidArgumentError("inode 0");
      InflightGuard inflight_guard(this, req.chain());
      ASSIGN_OR_RETURN(Route r, RouteFor(req.chain()));
      RETURN_IF_ERROR(CheckHead(*r.chain));
      KeyedLocks<std::pair<uint32_t, uint64_t>>::Guard inode_guard(
          &inode_locks, {r.chain->id(), req.inode()}, true);
      v1::ForwardRequest f;
      *f.mutable_chain() = req.chain();
      f.set_op(v1::FORWARD_OP_REMOVE);
      f.mutable_chunk()->set_inode(req.inode());
      f.set_from_index(req.from_index());
      RETURN_IF_ERROR(ForwardDown(r, &f, ChunkId{req.inode(), 0}));
      absl::Status removed;
      resp->set_removed(
          RemoveLocal(r.chain->id(), req.inode(), req.from_index(), &removed));
      return removed;
    }();
    writes->Inc({"remove", s.ok() ? "ok" : "error"});
    return s;
  }

  // ---- Forward (receivers) -----------------------------------------------
  // Forwards *req in place (see ForwardDown).
  absl::Status Forward(v1::ForwardRequest* req, v1::ForwardResponse* resp) {
    const ForwardOp received_op = req->op();
    absl::Status s = ForwardImpl(req, resp);
    forwards_in->Inc({OpName(received_op), !s.ok() ? "error"
                                           : resp->base_mismatch()
                                               ? "base_mismatch"
                                               : "ok"});
    return s;
  }

  absl::Status ForwardImpl(v1::ForwardRequest* req_ptr,
                           v1::ForwardResponse* resp) {
    const v1::ForwardRequest& req = *req_ptr;
    const ChunkId id = IdOf(req.chunk());
    const ForwardOp op = req.op();
    if (op != v1::FORWARD_OP_WRITE && op != v1::FORWARD_OP_TRUNCATE &&
        op != v1::FORWARD_OP_REPLACE && op != v1::FORWARD_OP_REMOVE) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown forward op ", op));
    }
    if (op != v1::FORWARD_OP_REMOVE) {
      RETURN_IF_ERROR(
          CheckInput(id.inode,
                     op == v1::FORWARD_OP_WRITE      ? req.offset()
                     : op == v1::FORWARD_OP_TRUNCATE ? req.length()
                                                     : 0,
                     op == v1::FORWARD_OP_TRUNCATE ? 0 : req.data().size()));
      if (req.version() == 0) {
        return absl::InvalidArgumentError("forward version must be > 0");
      }
    } else if (id.inode == 0) {
      return absl::InvalidArgumentError("inode 0 is invalid");
    }
    InflightGuard inflight_guard(this, req.chain());
    ASSIGN_OR_RETURN(Route r, RouteFor(req.chain()));
    std::vector<std::string> order = WriteOrder(*r.chain);
    auto pos = std::find(order.begin(), order.end(), options.node_id);
    if (pos == order.end() || pos == order.begin()) {
      return absl::AbortedError(
          absl::StrCat("stale chain table: ", options.node_id,
                       " does not receive forwards for chain ", r.chain->id(),
                       " (version ", r.chain->version(), ")"));
    }
    if (op == v1::FORWARD_OP_REMOVE) {
      KeyedLocks<std::pair<uint32_t, uint64_t>>::Guard inode_guard(
          &inode_locks, {r.chain->id(), id.inode}, true);
      RETURN_IF_ERROR(ForwardDown(r, req_ptr, id));
      absl::Status removed;
      RemoveLocal(r.chain->id(), id.inode, req.from_index(), &removed);
      return removed;
    }
    RETURN_IF_ERROR(CheckMapsTo(r, id));
    KeyedLocks<std::pair<uint32_t, uint64_t>>::Guard inode_guard(
        &inode_locks, {r.chain->id(), id.inode}, false);
    KeyedLocks<ChunkId>::Guard chunk_guard(&chunk_locks, id, true);
    if (op != v1::FORWARD_OP_REPLACE) {
      ASSIGN_OR_RETURN(ChunkMeta m, MetaOrEmpty(id));
      if (BaseOf(m) != req.base_version()) {
        resp->set_base_mismatch(true);
        return absl::OkStatus();
      }
    }
    absl::Status staged = Stage(req, id);
    if (absl::IsDataLoss(staged) && op != v1::FORWARD_OP_REPLACE) {
      // Our base is rotten: the sender's REPLACE overwrites it.
      resp->set_base_mismatch(true);
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(staged);
    RETURN_IF_ERROR(ForwardDown(r, req_ptr, id));
    return store->Commit(id, req.version());
  }

  // ---- reads and peer queries --------------------------------------------
  absl::Status Read(const v1::ChunkReadRequest& req,
                    v1::ChunkReadResponse* resp) {
    absl::Status s = [&]() -> absl::Status {
      const ChunkId id = IdOf(req.chunk());
      RETURN_IF_ERROR(CheckInput(id.inode, req.offset(), req.length()));
      std::shared_ptr<const v1::ChainTable> t = Table();
      absl::StatusOr<const v1::Chain*> c = ChainFor(*t, id.inode, id.index);
      if (!c.ok()) return absl::UnavailableError(c.status().message());
      if (StateOf(**c, options.node_id) != v1::CHAIN_MEMBER_STATE_SERVING) {
        return absl::UnavailableError(
            absl::StrCat(options.node_id, " does not serve reads of chain ",
                         (*c)->id(), " (version ", (*c)->version(), ")"));
      }
      absl::StatusOr<ChunkMeta> m = store->GetMeta(id);
      absl::StatusOr<std::string> data =
          store->Read(id, req.offset(), req.length());
      if (absl::IsDataLoss(data.status())) {
        corrupt->Inc();
        ScheduleRepair(id);
      }
      RETURN_IF_ERROR(data.status());
      resp->set_version(m.ok() ? m->committed_version : 0);
      *resp->mutable_data() = std::move(*data);
      return absl::OkStatus();
    }();
    reads->Inc(
        {s.ok() ? "ok" : std::string(absl::StatusCodeToString(s.code()))});
    if (s.ok()) read_bytes->Inc({}, resp->data().size());
    return s;
  }

  absl::Status FetchChunk(const v1::FetchChunkRequest& req,
                          v1::FetchChunkResponse* resp) {
    const ChunkId id = IdOf(req.chunk());
    if (id.inode == 0) return absl::InvalidArgumentError("inode 0 is invalid");
    absl::StatusOr<ChunkSnapshot> snap = store->ReadChunk(id);
    if (absl::IsDataLoss(snap.status())) {
      corrupt->Inc();
      ScheduleRepair(id);
    }
    RETURN_IF_ERROR(snap.status());
    resp->set_version(snap->version);
    resp->set_checksum(snap->checksum);
    *resp->mutable_content() = std::move(snap->content);
    return absl::OkStatus();
  }

  absl::Status ListChunks(const v1::ListChunksRequest& req,
                          v1::ListChunksResponse* resp) {
    std::shared_ptr<const v1::ChainTable> t = Table();
    if (t->chains_size() == 0) {
      return absl::UnavailableError("no chain table yet");
    }
    if (FindChain(*t, req.chain_id()) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown chain ", req.chain_id()));
    }
    if (req.chain_version() != 0) {
      // A sync listing: we must route by the same chain version as the
      // syncing member (so every new write reaches it), and writes admitted
      // under an older version must be done (their effect is then listed).
      v1::ChainRef ref;
      ref.set_chain_id(req.chain_id());
      ref.set_chain_version(req.chain_version());
      ASSIGN_OR_RETURN(Route r, RouteFor(ref));
      t = r.table;
      RETURN_IF_ERROR(DrainOlder(req.chain_id(), req.chain_version()));
    }
    const size_t limit =
        req.limit() == 0 ? 1000 : std::min<size_t>(req.limit(), 10000);
    std::optional<ChunkId> after;
    if (req.has_after()) after = IdOf(req.after());
    while (true) {
      ASSIGN_OR_RETURN(std::vector<ChunkMeta> page,
                       store->ListChunks(after, 1000));
      for (const ChunkMeta& m : page) {
        after = m.id;
        absl::StatusOr<const v1::Chain*> c =
            ChainFor(*t, m.id.inode, m.id.index);
        if (!c.ok() || (*c)->id() != req.chain_id()) continue;
        v1::ChunkInfo* info = resp->add_chunks();
        *info->mutable_chunk() = RefOf(m.id);
        info->set_committed_version(m.committed_version);
        info->set_length(m.length);
        info->set_checksum(m.checksum);
        info->set_corrupt(m.corrupt);
        if (static_cast<size_t>(resp->chunks_size()) >= limit) {
          resp->set_has_more(true);
          return absl::OkStatus();
        }
      }
      if (page.size() < 1000) return absl::OkStatus();
    }
  }

  absl::Status InstallChunk(const v1::InstallChunkRequest& req) {
    const ChunkId id = IdOf(req.chunk());
    if (id.inode == 0) return absl::InvalidArgumentError("inode 0 is invalid");
    KeyedLocks<ChunkId>::Guard chunk_guard(&chunk_locks, id, true);
    if (req.remove()) {
      absl::Status s = store->Remove(id);
      return absl::IsNotFound(s) ? absl::OkStatus() : s;
    }
    return store->ApplyReplica(id, req.version(), req.content(),
                               req.checksum());
  }

  absl::Status RemoveInodes(const v1::RemoveInodesRequest& req,
                            v1::RemoveInodesResponse* resp) {
    uint64_t removed = 0;
    for (uint64_t inode : req.inodes()) {
      if (inode == 0) continue;
      ASSIGN_OR_RETURN(uint64_t n, store->RemoveChunks(inode, 0));
      removed += n;
    }
    resp->set_removed(removed);
    return absl::OkStatus();
  }

  // ---- repair -------------------------------------------------------------
  void ScheduleRepair(const ChunkId& id) {
    absl::MutexLock lock(&repair_mu);
    if (!repair_queued.insert(id).second) return;
    repair_queue.push_back(id);
  }

  // Copies `id` from another SERVING member of `chain`. Caller holds the
  // chunk lock.
  absl::Status RepairLocked(const ChunkId& id, const v1::ChainTable& t,
                            const v1::Chain& chain) {
    absl::Status last = absl::UnavailableError(absl::StrCat(
        "chunk ", id.ToString(), ": no other serving replica to repair from"));
    for (const std::string& node : ReadReplicas(chain)) {
      if (node == options.node_id) continue;
      absl::StatusOr<std::shared_ptr<v1::FsChunkService::Stub>> stub =
          Peer(t, node);
      if (!stub.ok()) {
        last = stub.status();
        continue;
      }
      grpc::ClientContext ctx;
      SetDeadline(ctx);
      v1::FetchChunkRequest req;
      *req.mutable_chunk() = RefOf(id);
      v1::FetchChunkResponse resp;
      absl::Status s =
          FromGrpcFsStatus(ctx, (*stub)->FetchChunk(&ctx, req, &resp));
      if (s.ok()) {
        s = store->ApplyReplica(id, resp.version(), resp.content(),
                                resp.checksum());
      }
      if (s.ok()) {
        repairs->Inc({"ok"});
        DSEC_LOG_INFO("chunk {}: repaired {} (version {}) from {}",
                      options.node_id, id.ToString(), resp.version(), node);
        return s;
      }
      last = absl::Status(
          s.code(), absl::StrCat("repair from ", node, ": ", s.message()));
    }
    repairs->Inc({"error"});
    return last;
  }

  void RepairLoop() {
    while (!stopping) {
      std::optional<ChunkId> next;
      {
        absl::MutexLock lock(&repair_mu);
        if (!repair_queue.empty()) {
          next = repair_queue.front();
          repair_queue.pop_front();
          repair_queued.erase(*next);
        }
      }
      if (!next) {
        Sleep(absl::Milliseconds(20));
        continue;
      }
      std::shared_ptr<const v1::ChainTable> t = Table();
      absl::StatusOr<const v1::Chain*> c =
          ChainFor(*t, next->inode, next->index);
      if (!c.ok()) continue;
      // Shared (chain, inode) lock: a concurrent REMOVE cannot be undone by
      // a repair that fetched the content before it.
      KeyedLocks<std::pair<uint32_t, uint64_t>>::Guard inode_guard(
          &inode_locks, {(*c)->id(), next->inode}, false);
      KeyedLocks<ChunkId>::Guard chunk_guard(&chunk_locks, *next, true);
      absl::StatusOr<ChunkMeta> m = store->GetMeta(*next);
      if (!m.ok() || !m->corrupt) continue;  // gone, or repaired meanwhile
      absl::Status s = RepairLocked(*next, *t, **c);
      if (!s.ok()) {
        DSEC_LOG_WARN("chunk {}: repair of {} failed: {}", options.node_id,
                      next->ToString(), s.ToString());
      }
    }
  }

  // ---- scrub
  // ------------------------------------------------------------------ Reads
  // every committed chunk back (ChunkStore verifies each block's CRC) at most
  // scrub_bytes_per_sec; a corrupt one is marked by the store and queued for
  // repair like a corrupt client read.
  // Also runs the stray-chunk check (StrayPass).
  void ScrubLoop() {
    const absl::Duration interval = options.scrub_interval;
    const bool scrub = interval > absl::ZeroDuration();
    const bool strays = options.stray_grace > absl::ZeroDuration();
    const absl::Duration stray_every = std::clamp(
        options.stray_grace / 10, absl::Milliseconds(200), absl::Minutes(1));
    absl::Time next = absl::Now() + interval;
    absl::Time next_stray = absl::Now() + stray_every;
    while (!stopping) {
      const absl::Time now = absl::Now();
      if (strays && now >= next_stray) {
        next_stray = now + stray_every;
        StrayPass();
        continue;
      }
      if (!scrub || now < next) {
        absl::Time wake = strays ? next_stray : now + absl::Seconds(1);
        if (scrub) wake = std::min(wake, next);
        Sleep(std::clamp(wake - now, absl::Milliseconds(1), absl::Seconds(1)));
        continue;
      }
      next = now + interval;
      ScrubPass();
      if (!stopping) scrub_passes->Inc();
    }
  }

  // Deletes this server's chunks of chains it left at least stray_grace
  // ago (see ChunkServerOptions::stray_grace).
  void StrayPass() {
    const absl::Time now = absl::Now();
    const absl::Time heartbeat = absl::FromUnixNanos(heartbeat_ok_ns.load());
    if (now - heartbeat >
        3 * options.heartbeat_interval + options.meta_timeout) {
      return;  // the table may be stale: decide nothing
    }
    std::shared_ptr<const v1::ChainTable> t = Table();
    absl::flat_hash_set<uint32_t> stray;
    for (const v1::Chain& c : t->chains()) {
      if (StateOf(c, options.node_id) != v1::CHAIN_MEMBER_STATE_UNSPECIFIED) {
        not_member_since.erase(c.id());
        continue;
      }
      auto [it, inserted] = not_member_since.try_emplace(c.id(), now);
      bool served = false;
      for (const v1::ChainMember& m : c.members()) {
        served |= m.state() == v1::CHAIN_MEMBER_STATE_SERVING;
      }
      if (served && now - it->second >= options.stray_grace) {
        stray.insert(c.id());
      }
    }
    if (stray.empty()) return;
    uint64_t removed = 0;
    std::optional<ChunkId> after;
    while (!stopping) {
      absl::StatusOr<std::vector<ChunkMeta>> page =
          store->ListChunks(after, 256);
      if (!page.ok()) break;
      for (const ChunkMeta& m : *page) {
        after = m.id;
        // Against the current table, in case this server just rejoined.
        std::shared_ptr<const v1::ChainTable> current = Table();
        absl::StatusOr<const v1::Chain*> c =
            ChainFor(*current, m.id.inode, m.id.index);
        if (!c.ok() || !stray.contains((*c)->id()) ||
            StateOf(**c, options.node_id) !=
                v1::CHAIN_MEMBER_STATE_UNSPECIFIED) {
          continue;
        }
        KeyedLocks<std::pair<uint32_t, uint64_t>>::Guard inode_guard(
            &inode_locks, {(*c)->id(), m.id.inode}, false);
        KeyedLocks<ChunkId>::Guard chunk_guard(&chunk_locks, m.id, true);
        if (store->Remove(m.id).ok()) ++removed;
      }
      if (page->size() < 256) break;
    }
    if (removed > 0) {
      strays_removed->Inc({}, static_cast<double>(removed));
      DSEC_LOG_INFO("chunk {}: removed {} stray chunks of {} chains it left",
                    options.node_id, removed, stray.size());
    }
  }

  void ScrubPass() {
    const double rate =
        static_cast<double>(std::max<uint64_t>(options.scrub_bytes_per_sec, 1));
    const absl::Time start = absl::Now();
    uint64_t bytes = 0;
    std::optional<ChunkId> after;
    while (!stopping) {
      absl::StatusOr<std::vector<ChunkMeta>> page =
          store->ListChunks(after, 256);
      if (!page.ok()) {
        DSEC_LOG_WARN("chunk {}: scrub: {}", options.node_id,
                      page.status().ToString());
        return;
      }
      for (const ChunkMeta& m : *page) {
        if (stopping) return;
        after = m.id;
        if (m.committed_version == 0 || m.corrupt) continue;
        absl::StatusOr<ChunkSnapshot> snap = store->ReadChunk(m.id);
        if (absl::IsDataLoss(snap.status())) {
          scrubbed->Inc({"corrupt"});
          DSEC_LOG_WARN("chunk {}: scrub found {} corrupt: {}", options.node_id,
                        m.id.ToString(), std::string(snap.status().message()));
          ScheduleRepair(m.id);
        } else if (snap.ok()) {
          scrubbed->Inc({"ok"});
          bytes += snap->content.size();
          scrubbed_bytes->Inc({}, static_cast<double>(snap->content.size()));
        }  // else removed meanwhile
        // Pace: no faster than `rate` since the pass started.
        absl::Duration ahead =
            absl::Seconds(static_cast<double>(bytes) / rate) -
            (absl::Now() - start);
        if (ahead > absl::ZeroDuration()) Sleep(ahead);
      }
      if (page->size() < 256) return;
    }
  }

  // ---- sync -----------------------------------------------------------------
  void MaybeStartSyncs() {
    std::shared_ptr<const v1::ChainTable> t = Table();
    absl::MutexLock lock(&sync_mu);
    if (stopping) return;
    for (const v1::Chain& c : t->chains()) {
      if (StateOf(c, options.node_id) != v1::CHAIN_MEMBER_STATE_SYNCING) {
        continue;
      }
      if (!sync_running.insert(c.id()).second) continue;
      uint32_t chain_id = c.id();
      sync_threads.emplace_back([this, chain_id] { SyncLoop(chain_id); });
    }
  }

  void SyncLoop(uint32_t chain_id) {
    syncing->Add({}, 1);
    absl::Duration backoff = absl::Milliseconds(100);
    while (true) {
      std::shared_ptr<const v1::ChainTable> t;
      const v1::Chain* c = nullptr;
      {
        absl::MutexLock lock(&sync_mu);
        t = Table();
        c = FindChain(*t, chain_id);
        if (stopping || c == nullptr ||
            StateOf(*c, options.node_id) != v1::CHAIN_MEMBER_STATE_SYNCING) {
          sync_running.erase(chain_id);
          break;
        }
      }
      absl::Status s = SyncOnce(*t, *c);
      if (s.ok()) s = ReportSyncDone(*c);
      if (s.ok()) {
        backoff = absl::Milliseconds(100);
        continue;
      }
      if (!stopping) {
        DSEC_LOG_WARN("chunk {}: sync of chain {} (version {}): {}",
                      options.node_id, chain_id, c->version(), s.ToString());
      }
      RefreshTable().IgnoreError();
      Sleep(backoff);
      backoff = std::min(backoff * 2, absl::Seconds(2));
    }
    syncing->Add({}, -1);
  }

  absl::Status ReportSyncDone(const v1::Chain& c) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options.meta_timeout));
    v1::ReportSyncDoneRequest req;
    req.set_node_id(options.node_id);
    req.set_chain_id(c.id());
    req.set_chain_version(c.version());
    v1::ReportSyncDoneResponse resp;
    RETURN_IF_ERROR(
        FromGrpcFsStatus(ctx, meta->ReportSyncDone(&ctx, req, &resp)));
    syncs_done->Inc();
    DSEC_LOG_INFO("chunk {}: chain {} synced (version {})", options.node_id,
                  c.id(), c.version());
    if (resp.has_table()) {
      InstallTable(resp.table());
    } else {
      RefreshTable().IgnoreError();
    }
    return absl::OkStatus();
  }

  absl::StatusOr<v1::ListChunksResponse> ListPeer(
      v1::FsChunkService::Stub* stub, uint32_t chain_id,
      const std::optional<ChunkId>& after, uint32_t limit,
      uint64_t chain_version = 0) {
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    v1::ListChunksRequest req;
    req.set_chain_id(chain_id);
    req.set_chain_version(chain_version);
    if (after) *req.mutable_after() = RefOf(*after);
    req.set_limit(limit);
    v1::ListChunksResponse resp;
    RETURN_IF_ERROR(FromGrpcFsStatus(ctx, stub->ListChunks(&ctx, req, &resp)));
    return resp;
  }

  // Whether `src` holds a record (committed or pending) of `id`.
  absl::StatusOr<bool> PeerHas(v1::FsChunkService::Stub* stub,
                               uint32_t chain_id, const ChunkId& id) {
    std::optional<ChunkId> before;
    if (id.index > 0) {
      before = ChunkId{id.inode, id.index - 1};
    } else if (id.inode > 0) {
      before = ChunkId{id.inode - 1, UINT32_MAX};
    }
    ASSIGN_OR_RETURN(v1::ListChunksResponse page,
                     ListPeer(stub, chain_id, before, 1));
    return page.chunks_size() > 0 && IdOf(page.chunks(0).chunk()) == id;
  }

  // Copies `id` from the source unless ours is already as new. Takes locks.
  absl::Status CopyFrom(v1::FsChunkService::Stub* stub, uint32_t chain_id,
                        const v1::ChunkInfo& info) {
    const ChunkId id = IdOf(info.chunk());
    KeyedLocks<std::pair<uint32_t, uint64_t>>::Guard inode_guard(
        &inode_locks, {chain_id, id.inode}, false);
    KeyedLocks<ChunkId>::Guard chunk_guard(&chunk_locks, id, true);
    ASSIGN_OR_RETURN(ChunkMeta m, MetaOrEmpty(id));
    if (m.committed_version > info.committed_version()) return absl::OkStatus();
    if (m.committed_version == info.committed_version() && !m.corrupt &&
        m.checksum == info.checksum() && m.length == info.length()) {
      return absl::OkStatus();
    }
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    v1::FetchChunkRequest req;
    *req.mutable_chunk() = info.chunk();
    v1::FetchChunkResponse resp;
    absl::Status s = FromGrpcFsStatus(ctx, stub->FetchChunk(&ctx, req, &resp));
    if (absl::IsNotFound(s)) return absl::OkStatus();  // removed meanwhile
    RETURN_IF_ERROR(s);
    s = store->ApplyReplica(id, resp.version(), resp.content(),
                            resp.checksum());
    if (absl::IsFailedPrecondition(s) &&
        resp.version() == m.committed_version) {
      // Same version, different content (an abandoned write committed only
      // here): the source wins.
      RETURN_IF_ERROR(store->Remove(id));
      s = store->ApplyReplica(id, resp.version(), resp.content(),
                              resp.checksum());
    }
    if (absl::IsFailedPrecondition(s)) return absl::OkStatus();  // newer here
    RETURN_IF_ERROR(s);
    sync_chunks->Inc({"copied"});
    return absl::OkStatus();
  }

  absl::Status SyncOnce(const v1::ChainTable& t, const v1::Chain& chain) {
    std::vector<std::string> serving = ReadReplicas(chain);
    serving.erase(std::remove(serving.begin(), serving.end(), options.node_id),
                  serving.end());
    if (serving.empty()) return absl::OkStatus();  // nothing to copy from
    const std::string& src = serving.back();
    ASSIGN_OR_RETURN(auto stub, Peer(t, src));
    DSEC_LOG_INFO("chunk {}: syncing chain {} (version {}) from {}",
                  options.node_id, chain.id(), chain.version(), src);
    // Pass 1: copy what the source has newer.
    std::optional<ChunkId> after;
    while (true) {
      ASSIGN_OR_RETURN(
          v1::ListChunksResponse page,
          ListPeer(stub.get(), chain.id(), after, 1000, chain.version()));
      for (const v1::ChunkInfo& info : page.chunks()) {
        if (stopping) return absl::CancelledError("shutting down");
        after = IdOf(info.chunk());
        if (info.committed_version() == 0) continue;  // a write in flight
        RETURN_IF_ERROR(CopyFrom(stub.get(), chain.id(), info));
      }
      if (!page.has_more() || page.chunks_size() == 0) break;
    }
    // Pass 2: drop what the source no longer has (fresh listing, then a
    // re-check under our chunk lock).
    std::set<ChunkId> theirs;
    after.reset();
    while (true) {
      ASSIGN_OR_RETURN(
          v1::ListChunksResponse page,
          ListPeer(stub.get(), chain.id(), after, 1000, chain.version()));
      for (const v1::ChunkInfo& info : page.chunks()) {
        after = IdOf(info.chunk());
        theirs.insert(*after);
      }
      if (!page.has_more() || page.chunks_size() == 0) break;
    }
    std::optional<ChunkId> mine_after;
    while (true) {
      ASSIGN_OR_RETURN(std::vector<ChunkMeta> page,
                       store->ListChunks(mine_after, 1000));
      for (const ChunkMeta& m : page) {
        if (stopping) return absl::CancelledError("shutting down");
        mine_after = m.id;
        absl::StatusOr<const v1::Chain*> c =
            ChainFor(t, m.id.inode, m.id.index);
        if (!c.ok() || (*c)->id() != chain.id() || theirs.contains(m.id)) {
          continue;
        }
        KeyedLocks<std::pair<uint32_t, uint64_t>>::Guard inode_guard(
            &inode_locks, {chain.id(), m.id.inode}, false);
        KeyedLocks<ChunkId>::Guard chunk_guard(&chunk_locks, m.id, true);
        ASSIGN_OR_RETURN(bool has, PeerHas(stub.get(), chain.id(), m.id));
        if (has) continue;
        absl::Status s = store->Remove(m.id);
        if (!s.ok() && !absl::IsNotFound(s)) return s;
        sync_chunks->Inc({"removed"});
      }
      if (page.size() < 1000) break;
    }
    return absl::OkStatus();
  }

  // ---- membership ---------------------------------------------------------
  void Sleep(absl::Duration d) {
    absl::MutexLock lock(&wait_mu);
    if (!stopping) wait_cv.WaitWithTimeout(&wait_mu, d);
  }

  absl::Status Register(absl::Duration* interval) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options.meta_timeout));
    v1::RegisterChunkServerRequest req;
    req.set_node_id(options.node_id);
    req.set_address(address);
    v1::RegisterChunkServerResponse resp;
    RETURN_IF_ERROR(
        FromGrpcFsStatus(ctx, meta->RegisterChunkServer(&ctx, req, &resp)));
    if (resp.heartbeat_interval_ms() > 0) {
      *interval = absl::Milliseconds(resp.heartbeat_interval_ms());
    }
    DSEC_LOG_INFO("chunk {}: registered as {} (table version {})",
                  options.node_id, address, resp.table().version());
    InstallTable(resp.table());
    return absl::OkStatus();
  }

  void MembershipLoop() {
    absl::Duration interval = options.heartbeat_interval;
    absl::Duration backoff = absl::Milliseconds(100);
    absl::Time last_usage = absl::InfinitePast();
    ChunkStore::Usage usage;
    bool registered = false;
    while (!stopping) {
      if (!registered) {
        absl::Status s = Register(&interval);
        if (!s.ok()) {
          DSEC_LOG_WARN("chunk {}: register with {}: {}", options.node_id,
                        options.meta_address, s.ToString());
          Sleep(backoff);
          backoff = std::min(backoff * 2, absl::Seconds(2));
          continue;
        }
        registered = true;
        backoff = absl::Milliseconds(100);
      }
      Sleep(interval);
      if (stopping) break;
      if (absl::Now() - last_usage >= options.usage_interval) {
        absl::StatusOr<ChunkStore::Usage> u = store->GetUsage();
        if (u.ok()) usage = *u;
        last_usage = absl::Now();
      }
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + options.meta_timeout));
      v1::ChunkHeartbeatRequest req;
      req.set_node_id(options.node_id);
      req.set_table_version(Table()->version());
      req.set_chunks(usage.chunks);
      req.set_used_bytes(usage.bytes);
      v1::ChunkHeartbeatResponse resp;
      absl::Status s = FromGrpcFsStatus(ctx, meta->Heartbeat(&ctx, req, &resp));
      if (!s.ok()) {
        DSEC_LOG_DEBUG("chunk {}: heartbeat: {}", options.node_id,
                       s.ToString());
        continue;
      }
      if (resp.reregister()) {
        registered = false;
        continue;
      }
      if (resp.has_table()) InstallTable(resp.table());
      heartbeat_ok_ns.store(absl::ToUnixNanos(absl::Now()));
    }
  }

  void ShutdownImpl() {
    if (shut_down) return;
    shut_down = true;
    {
      absl::MutexLock lock(&wait_mu);
      stopping = true;
      wait_cv.SignalAll();
    }
    if (server) {
      server->Shutdown(std::chrono::system_clock::now() +
                       std::chrono::seconds(1));
    }
    if (membership_thread.joinable()) membership_thread.join();
    if (repair_thread.joinable()) repair_thread.join();
    if (scrub_thread.joinable()) scrub_thread.join();
    std::vector<std::thread> threads;
    {
      absl::MutexLock lock(&sync_mu);
      threads.swap(sync_threads);
    }
    for (std::thread& t : threads) t.join();
    if (server) server->Wait();
    http.reset();
  }
};

// The gRPC adapter: converts statuses, nothing else.
class ChunkServer::Impl::Service final : public v1::FsChunkService::Service {
 public:
  explicit Service(ChunkServer::Impl* impl) : impl_(impl) {}

  grpc::Status Write(grpc::ServerContext* ctx, const v1::ChunkWriteRequest* req,
                     v1::ChunkWriteResponse* resp) override {
    // The sync server's request is this call's alone (destroyed after it):
    // the chunk data is moved out of it rather than copied.
    return ToGrpcFsStatus(
        ctx, impl_->Write(const_cast<v1::ChunkWriteRequest*>(req), resp));
  }
  grpc::Status Truncate(grpc::ServerContext* ctx,
                        const v1::ChunkTruncateRequest* req,
                        v1::ChunkWriteResponse* resp) override {
    return ToGrpcFsStatus(ctx, impl_->Truncate(*req, resp));
  }
  grpc::Status Remove(grpc::ServerContext* ctx,
                      const v1::ChunkRemoveRequest* req,
                      v1::ChunkRemoveResponse* resp) override {
    return ToGrpcFsStatus(ctx, impl_->Remove(*req, resp));
  }
  grpc::Status RemoveInodes(grpc::ServerContext* ctx,
                            const v1::RemoveInodesRequest* req,
                            v1::RemoveInodesResponse* resp) override {
    return ToGrpcFsStatus(ctx, impl_->RemoveInodes(*req, resp));
  }
  grpc::Status Read(grpc::ServerContext* ctx, const v1::ChunkReadRequest* req,
                    v1::ChunkReadResponse* resp) override {
    return ToGrpcFsStatus(ctx, impl_->Read(*req, resp));
  }
  grpc::Status Forward(grpc::ServerContext* ctx, const v1::ForwardRequest* req,
                       v1::ForwardResponse* resp) override {
    // As in Write: forwarded in place.
    return ToGrpcFsStatus(
        ctx, impl_->Forward(const_cast<v1::ForwardRequest*>(req), resp));
  }
  grpc::Status ListChunks(grpc::ServerContext* ctx,
                          const v1::ListChunksRequest* req,
                          v1::ListChunksResponse* resp) override {
    return ToGrpcFsStatus(ctx, impl_->ListChunks(*req, resp));
  }
  grpc::Status FetchChunk(grpc::ServerContext* ctx,
                          const v1::FetchChunkRequest* req,
                          v1::FetchChunkResponse* resp) override {
    return ToGrpcFsStatus(ctx, impl_->FetchChunk(*req, resp));
  }
  grpc::Status InstallChunk(grpc::ServerContext* ctx,
                            const v1::InstallChunkRequest* req,
                            v1::InstallChunkResponse*) override {
    return ToGrpcFsStatus(ctx, impl_->InstallChunk(*req));
  }

 private:
  ChunkServer::Impl* impl_;
};

namespace {

// "host:port" -> (host, port).
absl::Status SplitHostPort(const std::string& hp, std::string* host,
                           int* port) {
  size_t colon = hp.rfind(':');
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(hp.substr(colon + 1), port) || *port < 0 ||
      *port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad host:port '", hp, "'"));
  }
  *host = hp.substr(0, colon);
  return absl::OkStatus();
}

}  // namespace

ChunkServer::ChunkServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ChunkServer::~ChunkServer() { Shutdown(); }

void ChunkServer::Shutdown() { impl_->ShutdownImpl(); }

int ChunkServer::port() const { return impl_->bound_port; }

std::string ChunkServer::address() const { return impl_->address; }

int ChunkServer::metrics_port() const {
  return impl_->http ? impl_->http->port() : -1;
}

uint64_t ChunkServer::table_version() const {
  return impl_->Table()->version();
}

const metrics::Registry& ChunkServer::metrics() const {
  return *impl_->registry;
}

ChunkStore& ChunkServer::StoreForTesting() { return *impl_->store; }

absl::StatusOr<std::unique_ptr<ChunkServer>> ChunkServer::Create(
    const ChunkServerOptions& options) {
  if (options.node_id.empty() || options.data_dir.empty() ||
      options.meta_address.empty()) {
    return absl::InvalidArgumentError(
        "chunk server: node_id, data_dir and meta_address are required");
  }
  std::string listen_host;
  int listen_port = 0;
  RETURN_IF_ERROR(SplitHostPort(options.listen, &listen_host, &listen_port));
  auto impl = std::make_unique<Impl>(options);
  ChunkStoreOptions store_options = options.store;
  store_options.dir = options.data_dir;
  ASSIGN_OR_RETURN(impl->store, ChunkStore::Open(store_options));
  const ChunkRecoveryStats& rec = impl->store->recovery_stats();
  if (rec.orphan_files_removed || rec.pending_dropped ||
      rec.committed_missing) {
    DSEC_LOG_INFO(
        "chunk {}: recovery removed {} orphan files, dropped {} pending, {} "
        "committed missing",
        options.node_id, rec.orphan_files_removed, rec.pending_dropped,
        rec.committed_missing);
  }
  impl->meta =
      v1::FsClusterService::NewStub(MakeFsChannel(options.meta_address));

  impl->services.push_back(std::make_unique<Impl::Service>(impl.get()));
  grpc::ServerBuilder builder;
  ConfigureFsServer(builder);
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(),
                           &impl->bound_port);
  for (auto& s : impl->services) builder.RegisterService(s.get());
  impl->server = builder.BuildAndStart();
  if (!impl->server || impl->bound_port == 0) {
    return absl::UnavailableError(
        absl::StrCat("chunk server: cannot listen on ", options.listen));
  }
  if (!options.advertise_address.empty()) {
    impl->address = options.advertise_address;
  } else {
    std::string host = listen_host;
    if (host.empty() || host == "0.0.0.0" || host == "[::]") host = "127.0.0.1";
    impl->address = absl::StrCat(host, ":", impl->bound_port);
  }
  if (!options.metrics_listen.empty()) {
    std::string host;
    int port = 0;
    absl::Status s = SplitHostPort(options.metrics_listen, &host, &port);
    absl::StatusOr<std::unique_ptr<metrics::HttpServer>> http =
        s.ok() ? metrics::HttpServer::Start(host, port, impl->registry.get())
               : absl::StatusOr<std::unique_ptr<metrics::HttpServer>>(s);
    if (!http.ok()) {
      impl->ShutdownImpl();
      return http.status();
    }
    impl->http = std::move(*http);
  }
  Impl* raw = impl.get();
  impl->registry->AddCallbackGauge(
      "dsec_chunk_table_version", "Chain table version held.",
      [raw] { return static_cast<double>(raw->Table()->version()); });
  impl->repair_thread = std::thread([raw] { raw->RepairLoop(); });
  if (options.scrub_interval > absl::ZeroDuration() ||
      options.stray_grace > absl::ZeroDuration()) {
    impl->scrub_thread = std::thread([raw] { raw->ScrubLoop(); });
  }
  impl->membership_thread = std::thread([raw] { raw->MembershipLoop(); });
  DSEC_LOG_INFO("chunk {}: serving on {} (data {})", options.node_id,
                impl->address, options.data_dir);
  return std::unique_ptr<ChunkServer>(new ChunkServer(std::move(impl)));
}

}  // namespace dsec::fs
