#include "ctl/local_cluster.h"

#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>

#include "absl/strings/str_cat.h"
#include "agent/agent_server.h"
#include "common/status_macros.h"
#include "common/token.h"
#include "controller/controller_server.h"
#include "ctl/rpc.h"
#include "fs/chunk_server.h"
#include "fs/fs_client.h"
#include "fs/fuse_fs.h"
#include "fs/meta_server.h"

namespace dsec::ctl {

std::string SelfDir() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "";
  std::string path(buf, static_cast<size_t>(n));
  return path.substr(0, path.rfind('/'));
}

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Create(
    const LocalClusterOptions& options) {
  if (options.data_dir.empty()) {
    return absl::InvalidArgumentError("local mode needs a data directory");
  }
  for (const std::string& d : {options.data_dir, options.data_dir + "/agent"}) {
    if (mkdir(d.c_str(), 0700) != 0 && errno != EEXIST) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create ", d, ": ", strerror(errno)));
    }
  }
  ASSIGN_OR_RETURN(std::string secret,
                   LoadOrCreateSecret(options.data_dir + "/secret", true));
  std::unique_ptr<LocalCluster> cluster(new LocalCluster());

  controller::ControllerOptions copts;
  copts.listen_address = absl::StrCat("127.0.0.1:", options.controller_port);
  copts.data_dir = options.data_dir + "/controller";
  copts.token_secret = secret;
  copts.metrics_port = options.metrics_port;
  ASSIGN_OR_RETURN(cluster->controller_,
                   controller::ControllerServer::Create(copts));
  if (options.fs) RETURN_IF_ERROR(cluster->StartFs(options));

  // One node that takes the whole machine. Limits are maxima, not
  // reservations, so local mode overcommits: the sandbox count is the cap.
  agent::AgentOptions aopts;
  aopts.node_id = "local-0";
  aopts.token_secret = secret;
  aopts.controller_address = cluster->controller_address();
  aopts.state_dir = options.data_dir + "/agent";
  aopts.init_path =
      options.init_path.empty() ? SelfDir() + "/dsec-init" : options.init_path;
  aopts.max_sandboxes = options.max_sandboxes;
  aopts.cpu_millicores = int64_t{options.max_sandboxes} * 1000;
  aopts.memory_bytes = int64_t{options.max_sandboxes} * (int64_t{512} << 20);
  aopts.labels["mode"] = "local";
  aopts.request_limits.fs_mount_dir = cluster->mountpoint_;
  aopts.metrics_port = options.metrics_port < 0    ? -1
                       : options.metrics_port == 0 ? 0
                                                   : options.metrics_port + 1;
  if (options.warm_pool_size > 0) {
    agent::WarmPoolClass pool;
    pool.name = "default";
    pool.spec.mutable_limits()->set_memory_bytes(256LL << 20);
    pool.spec.mutable_limits()->set_pids(128);
    pool.spec.mutable_limits()->set_cpu_millicores(1000);
    pool.size = options.warm_pool_size;
    aopts.warm_pools.push_back(pool);
  }
  ASSIGN_OR_RETURN(cluster->agent_, agent::AgentServer::Create(aopts));

  // Ready when the controller lists the node as READY.
  ConnOptions conn_opts;
  conn_opts.controller = cluster->controller_address();
  ControllerConn conn(conn_opts);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (true) {
    dsec::v1::ListNodesResponse resp;
    auto ctx = conn.Context(absl::Seconds(2));
    if (conn.admin().ListNodes(ctx.get(), {}, &resp).ok()) {
      for (const auto& n : resp.nodes()) {
        if (n.state() == dsec::v1::NODE_STATE_READY) return cluster;
      }
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          "the local agent did not register with the controller within 30s");
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

std::string LocalCluster::controller_address() const {
  return absl::StrCat("127.0.0.1:", controller_->port());
}

std::string LocalCluster::agent_endpoint() const { return agent_->endpoint(); }

std::string LocalCluster::fs_meta_address() const {
  return meta_ ? absl::StrCat("127.0.0.1:", meta_->port()) : "";
}

std::string LocalCluster::fs_mountpoint() const { return mountpoint_; }

absl::Status LocalCluster::StartFs(const LocalClusterOptions& options) {
  const std::string root = options.data_dir + "/fs";
  mountpoint_ = root + "/mnt";
  for (const std::string& d : {root, mountpoint_}) {
    if (mkdir(d.c_str(), 0755) != 0 && errno != EEXIST) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create ", d, ": ", strerror(errno)));
    }
  }
  // A mount left by a killed earlier run would fail ours: detach it.
  (void)umount2(mountpoint_.c_str(), MNT_DETACH);

  fs::MetaServerOptions mopts;
  mopts.listen_address = absl::StrCat("127.0.0.1:", options.fs_meta_port);
  mopts.data_dir = root + "/meta";
  // Durable on fsync and close (and every 100 ms) like a local file system,
  // not on every namespace change.
  mopts.store.sync_writes = false;
  mopts.store.orphan_grace = absl::Minutes(2);
  mopts.cluster.replication =
      static_cast<uint32_t>(std::min(3, options.fs_chunk_servers));
  mopts.cluster.num_chains = 8;
  ASSIGN_OR_RETURN(meta_, fs::MetaServer::Create(mopts));
  for (int i = 0; i < options.fs_chunk_servers; ++i) {
    fs::ChunkServerOptions c;
    c.node_id = absl::StrCat("local-chunk", i);
    c.data_dir = absl::StrCat(root, "/chunk", i);
    c.meta_address = fs_meta_address();
    ASSIGN_OR_RETURN(auto server, fs::ChunkServer::Create(c));
    chunks_.push_back(std::move(server));
  }
  ASSIGN_OR_RETURN(fs_client_,
                   fs::FsClient::Create({.meta_address = fs_meta_address()}));
  // Ready when every chain has its replicas serving.
  RETURN_IF_ERROR(fs::WaitForServingChains(
      fs_meta_address(), static_cast<int>(mopts.cluster.replication),
      absl::Seconds(30)));
  fs::FuseMountOptions fopts;
  fopts.mountpoint = mountpoint_;
  ASSIGN_OR_RETURN(mount_, fs::FuseMount::Mount(fs_client_.get(), fopts));
  RETURN_IF_ERROR(mount_->Start());
  return absl::OkStatus();
}

void LocalCluster::Shutdown() {
  // Agent first: it destroys its sandboxes while the controller and the file
  // system their images live on still run.
  if (agent_) agent_->Shutdown();
  if (mount_) mount_->Stop();
  mount_.reset();
  for (auto& c : chunks_) c->Shutdown();
  if (meta_) meta_->Shutdown();
  if (controller_) controller_->Shutdown();
}

LocalCluster::~LocalCluster() { Shutdown(); }

}  // namespace dsec::ctl
