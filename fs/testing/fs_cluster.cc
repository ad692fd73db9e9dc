#include "fs/testing/fs_cluster.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "common/testing/test_util.h"
#include "fs/chain_table.h"

namespace dsec::fs::testing {
namespace {

using ::dsec::testing::BinDir;
using ::dsec::testing::PickFreeLoopbackPort;
using ::dsec::testing::Subprocess;

}  // namespace

bool IsFuseMounted(const std::string& path) {
  std::ifstream mounts("/proc/self/mounts");
  std::string line;
  std::error_code ec;
  std::string canonical = std::filesystem::weakly_canonical(path, ec).string();
  while (std::getline(mounts, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    if (f.size() >= 3 && (f[1] == path || f[1] == canonical) &&
        f[2].rfind("fuse", 0) == 0) {
      return true;
    }
  }
  return false;
}

FsTestCluster::FsTestCluster(const FsTestClusterOptions& options)
    : options_(options) {}

absl::StatusOr<std::unique_ptr<FsTestCluster>> FsTestCluster::Start(
    const FsTestClusterOptions& options) {
  std::unique_ptr<FsTestCluster> c(new FsTestCluster(options));
  if (options.root.empty()) {
    const char* base = getenv("TEST_TMPDIR");
    std::string tmpl =
        absl::StrCat(base && *base ? base : "/tmp", "/dsec-fs-XXXXXX");
    if (mkdtemp(tmpl.data()) == nullptr) {
      return absl::InternalError("mkdtemp failed");
    }
    c->root_ = tmpl;
    c->own_root_ = true;
  } else {
    c->root_ = options.root;
    std::filesystem::create_directories(c->root_);
  }
  ASSIGN_OR_RETURN(c->meta_port_, PickFreeLoopbackPort());
  c->meta_address_ = absl::StrCat("127.0.0.1:", c->meta_port_);
  RETURN_IF_ERROR(c->StartMeta());
  c->chunks_.resize(options.chunk_servers);
  for (int i = 0; i < options.chunk_servers; ++i) {
    ASSIGN_OR_RETURN(int port, PickFreeLoopbackPort());
    c->chunk_ports_.push_back(port);
    RETURN_IF_ERROR(c->StartChunk(i));
  }
  FsClientOptions client_options;
  client_options.retry_budget = absl::Seconds(20);
  ASSIGN_OR_RETURN(c->client_, c->NewClient(client_options));
  RETURN_IF_ERROR(c->WaitForChains(
      std::min(options.replication, options.chunk_servers), absl::Seconds(30)));
  return c;
}

FsTestCluster::~FsTestCluster() {
  for (MountProc& m : mounts_) {
    if (m.proc != nullptr) (void)m.proc->Stop(SIGTERM, absl::Seconds(10));
    if (IsFuseMounted(m.path)) umount2(m.path.c_str(), MNT_DETACH);
  }
  client_.reset();
  for (auto& c : chunks_) {
    if (c != nullptr) (void)c->Stop(SIGKILL);
  }
  if (meta_ != nullptr) (void)meta_->Stop(SIGKILL);
  if (own_root_) {
    std::error_code ec;
    std::filesystem::remove_all(root_, ec);
  }
}

std::string FsTestCluster::meta_dir() const { return root_ + "/meta"; }
std::string FsTestCluster::chunk_dir(int i) const {
  return absl::StrCat(root_, "/chunk", i);
}
std::string FsTestCluster::chunk_node_id(int i) const {
  return absl::StrCat("chunk", i);
}

absl::Status FsTestCluster::StartMeta() {
  std::vector<std::string> argv = {
      BinDir() + "/dsec-meta",
      "--listen=" + meta_address_,
      "--data_dir=" + meta_dir(),
      absl::StrCat("--num_chains=", options_.num_chains),
      absl::StrCat("--replication=", options_.replication),
      absl::StrCat("--chunk_size=", options_.chunk_size),
      absl::StrCat("--heartbeat_ms=", options_.heartbeat_ms)};
  if (options_.replace_after_ms != 0) {
    argv.push_back(
        absl::StrCat("--replace_after_ms=", options_.replace_after_ms));
  }
  ASSIGN_OR_RETURN(meta_, Subprocess::Start(argv, root_ + "/meta.log"));
  return absl::OkStatus();
}

absl::Status FsTestCluster::StartChunk(int i) {
  std::vector<std::string> argv = {
      BinDir() + "/dsec-chunk",
      absl::StrCat("--listen=127.0.0.1:", chunk_ports_[i]),
      "--node_id=" + chunk_node_id(i),
      "--data_dir=" + chunk_dir(i),
      "--meta=" + meta_address_,
      absl::StrCat("--max_chunk_size=", options_.chunk_size)};
  ASSIGN_OR_RETURN(
      chunks_[i],
      Subprocess::Start(argv, absl::StrCat(root_, "/chunk", i, ".log")));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<FsClient>> FsTestCluster::NewClient(
    FsClientOptions options) {
  options.meta_address = meta_address_;
  return FsClient::Create(options);
}

absl::Status FsTestCluster::KillChunk(int i) {
  if (chunks_[i] == nullptr) return absl::OkStatus();
  absl::Status status = chunks_[i]->Stop(SIGKILL).status();
  chunks_[i].reset();
  return status;
}

absl::Status FsTestCluster::RestartChunk(int i) {
  RETURN_IF_ERROR(KillChunk(i));
  return StartChunk(i);
}

absl::Status FsTestCluster::KillMeta() {
  if (meta_ == nullptr) return absl::OkStatus();
  absl::Status status = meta_->Stop(SIGKILL).status();
  meta_.reset();
  return status;
}

absl::Status FsTestCluster::RestartMeta() {
  RETURN_IF_ERROR(KillMeta());
  return StartMeta();
}

absl::Status FsTestCluster::WaitForChains(int serving, absl::Duration timeout) {
  return WaitForServingChains(meta_address_, serving, timeout);
}

absl::Status FsTestCluster::WaitOffline(const std::string& node_id,
                                        absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    auto probe = FsClient::Create({.meta_address = meta_address_,
                                   .rpc_timeout = absl::Seconds(2),
                                   .retry_budget = absl::ZeroDuration()});
    RETURN_IF_ERROR(probe.status());
    absl::StatusOr<v1::ChainTable> table = (*probe)->Table();
    if (table.ok()) {
      bool offline = true;
      for (const v1::Chain& chain : table->chains()) {
        v1::ChainMemberState s = StateOf(chain, node_id);
        if (s == v1::CHAIN_MEMBER_STATE_SYNCING) offline = false;
        if (s == v1::CHAIN_MEMBER_STATE_SERVING &&
            ReadReplicas(chain).size() > 1) {
          offline = false;
        }
      }
      if (offline) return absl::OkStatus();
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(
      absl::StrCat(node_id, " never went offline"));
}

absl::StatusOr<std::string> FsTestCluster::Mount(
    std::vector<std::string> extra_flags, std::string path) {
  if (path.empty()) path = absl::StrCat(root_, "/mnt", mounts_.size());
  std::filesystem::create_directories(path);
  std::vector<std::string> argv = {BinDir() + "/dsec-mount",
                                   "--meta=" + meta_address_,
                                   "--retry_budget_s=20"};
  for (std::string& f : extra_flags) argv.push_back(std::move(f));
  argv.push_back(path);
  MountProc m;
  m.path = path;
  ASSIGN_OR_RETURN(
      m.proc, Subprocess::Start(
                  argv, absl::StrCat(root_, "/mount", mounts_.size(), ".log")));
  absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (!IsFuseMounted(path)) {
    if (!m.proc->running() || absl::Now() > deadline) {
      return absl::InternalError(
          absl::StrCat("dsec-mount did not mount ", path, ": ", m.proc->Log()));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  mounts_.push_back(std::move(m));
  return path;
}

absl::Status FsTestCluster::Unmount(const std::string& mountpoint) {
  for (MountProc& m : mounts_) {
    if (m.path != mountpoint || m.proc == nullptr) continue;
    ASSIGN_OR_RETURN(int wait_status, m.proc->Stop(SIGTERM));
    m.proc.reset();
    if (IsFuseMounted(mountpoint)) {
      return absl::InternalError(
          absl::StrCat(mountpoint, " still mounted after SIGTERM"));
    }
    if (!WIFEXITED(wait_status) || WEXITSTATUS(wait_status) != 0) {
      return absl::InternalError(absl::StrCat(
          "dsec-mount exited uncleanly (wait status ", wait_status, ")"));
    }
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("no mount at ", mountpoint));
}

std::string FsTestCluster::Logs() const {
  std::ostringstream out;
  for (const char* name : {"meta.log", "chunk0.log", "chunk1.log", "chunk2.log",
                           "mount0.log", "mount1.log"}) {
    std::ifstream f(root_ + "/" + name);
    if (!f) continue;
    std::stringstream s;
    s << f.rdbuf();
    std::string text = s.str();
    if (text.size() > 4000) text = "..." + text.substr(text.size() - 4000);
    out << "---- " << name << " ----\n" << text << "\n";
  }
  return out.str();
}

}  // namespace dsec::fs::testing
