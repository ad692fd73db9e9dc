#include "fs/meta_service.h"

#include <errno.h>

#include <deque>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "common/status_macros.h"
#include "fs/fs_error.h"
#include "fs/fs_rpc.h"

namespace dsec::fs {
namespace {

constexpr uint32_t kAllSetAttrBits =
    kSetMode | kSetUid | kSetGid | kSetSize | kSetAtime | kSetMtime;

absl::Status CheckIno(uint64_t ino, absl::string_view field) {
  if (ino == 0) {
    return FsError(EINVAL, absl::StrCat(std::string(field),
                                        " is 0; inode ids start at 1 (root)"));
  }
  return absl::OkStatus();
}

absl::Status CheckName(absl::string_view name, absl::string_view field) {
  absl::Status s = ValidateName(name);
  if (s.ok()) return s;
  return FsError(ErrnoOf(s), absl::StrCat(std::string(field), ": ",
                                          std::string(s.message())));
}

metrics::Histogram* RequestSeconds() {
  static metrics::Histogram* histogram =
      metrics::Registry::Default().AddHistogram(
          "dsec_fs_meta_request_seconds",
          "Time in the meta service's handlers (after gRPC), by method.",
          {"method"}, metrics::LatencyBuckets());
  return histogram;
}

void SetDirs(std::vector<v1::Inode> dirs,
             google::protobuf::RepeatedPtrField<v1::Inode>* out) {
  for (v1::Inode& dir : dirs) *out->Add() = std::move(dir);
}

// Runs `fn` (returning absl::Status), times it and converts for the wire.
template <typename Fn>
grpc::Status Serve(grpc::ServerContext* context, const char* method, Fn&& fn) {
  absl::Time start = absl::Now();
  absl::Status status = fn();
  RequestSeconds()->Observe({method},
                            absl::ToDoubleSeconds(absl::Now() - start));
  return ToGrpcFsStatus(context, status);
}

}  // namespace

absl::StatusOr<std::vector<std::string>> SplitAbsolutePath(
    absl::string_view path) {
  if (path.empty()) return FsError(EINVAL, "path is empty");
  if (path.size() > kMaxPathBytes) {
    return FsError(ENAMETOOLONG,
                   absl::StrCat("path is ", path.size(), " bytes, longer than ",
                                kMaxPathBytes));
  }
  if (path[0] != '/') {
    return FsError(EINVAL, absl::StrCat("path \"", std::string(path),
                                        "\" is not absolute (must start "
                                        "with '/')"));
  }
  if (path.find('\0') != absl::string_view::npos) {
    return FsError(EINVAL, "path contains a NUL byte");
  }
  std::vector<std::string> parts;
  absl::string_view rest = path.substr(1);
  while (!rest.empty()) {
    size_t slash = rest.find('/');
    absl::string_view part = rest.substr(0, slash);
    rest = slash == absl::string_view::npos ? absl::string_view()
                                            : rest.substr(slash + 1);
    if (part.empty()) {
      return FsError(EINVAL, absl::StrCat("path \"", std::string(path),
                                          "\" has an empty component "
                                          "(\"//\")"));
    }
    if (part == "." || part == "..") {
      return FsError(EINVAL,
                     absl::StrCat("path \"", std::string(path), "\" has a \"",
                                  std::string(part),
                                  "\" component; send a normalized path"));
    }
    absl::Status s = ValidateName(part);
    if (!s.ok()) {
      return FsError(ErrnoOf(s),
                     absl::StrCat("path \"", std::string(path),
                                  "\": ", std::string(s.message())));
    }
    parts.emplace_back(part);
  }
  return parts;
}

// ---------------------------------------------------------------------------
// FsMetaService.

FsMetaService::FsMetaService(MetaStore* store, const ClusterManager* cluster)
    : store_(store), cluster_(cluster) {}

grpc::Status FsMetaService::Lookup(grpc::ServerContext* context,
                                   const v1::LookupRequest* request,
                                   v1::InodeReply* reply) {
  return Serve(context, "Lookup", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckIno(request->parent(), "parent"));
    RETURN_IF_ERROR(CheckName(request->name(), "name"));
    absl::StatusOr<v1::Inode> inode =
        store_->Lookup(request->parent(), request->name());
    if (request->missing_ok() && ErrnoOf(inode.status()) == ENOENT) {
      return absl::OkStatus();  // no inode in the reply
    }
    RETURN_IF_ERROR(inode.status());
    *reply->mutable_inode() = std::move(*inode);
    return absl::OkStatus();
  });
}

grpc::Status FsMetaService::GetAttr(grpc::ServerContext* context,
                                    const v1::GetAttrRequest* request,
                                    v1::InodeReply* reply) {
  return Serve(context, "GetAttr", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckIno(request->ino(), "ino"));
    ASSIGN_OR_RETURN(*reply->mutable_inode(), store_->GetAttr(request->ino()));
    return absl::OkStatus();
  });
}

absl::StatusOr<v1::Inode> FsMetaService::ResolvePathImpl(
    absl::string_view path) {
  ASSIGN_OR_RETURN(std::vector<std::string> parts, SplitAbsolutePath(path));
  ASSIGN_OR_RETURN(v1::Inode inode, store_->GetAttr(kRootIno));
  for (const std::string& part : parts) {
    if (inode.type() != v1::INODE_TYPE_DIRECTORY) {
      return FsError(ENOTDIR, absl::StrCat("resolve \"", std::string(path),
                                           "\": a component before \"", part,
                                           "\" is not a directory"));
    }
    ASSIGN_OR_RETURN(inode, store_->Lookup(inode.id(), part));
  }
  return inode;
}

grpc::Status FsMetaService::ResolvePath(grpc::ServerContext* context,
                                        const v1::ResolvePathRequest* request,
                                        v1::InodeReply* reply) {
  return Serve(context, "ResolvePath", [&]() -> absl::Status {
    ASSIGN_OR_RETURN(*reply->mutable_inode(), ResolvePathImpl(request->path()));
    return absl::OkStatus();
  });
}

grpc::Status FsMetaService::SetAttr(grpc::ServerContext* context,
                                    const v1::SetAttrRequest* request,
                                    v1::InodeReply* reply) {
  return Serve(context, "SetAttr", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckIno(request->ino(), "ino"));
    if (request->mask() & ~kAllSetAttrBits) {
      return FsError(
          EINVAL, absl::StrCat("setattr: unknown mask bits 0x",
                               absl::Hex(request->mask() & ~kAllSetAttrBits)));
    }
    SetAttrArgs args;
    args.mask = request->mask();
    args.mode = request->mode();
    args.uid = request->uid();
    args.gid = request->gid();
    args.size = request->size();
    args.atime_ns = request->atime_ns();
    args.mtime_ns = request->mtime_ns();
    ASSIGN_OR_RETURN(*reply->mutable_inode(),
                     store_->SetAttr(request->ino(), args));
    return absl::OkStatus();
  });
}

grpc::Status FsMetaService::Mkdir(grpc::ServerContext* context,
                                  const v1::MkdirRequest* request,
                                  v1::InodeReply* reply) {
  return Serve(context, "Mkdir", [&]() -> absl::Status {
    std::vector<v1::Inode> dirs;
    RETURN_IF_ERROR(CheckIno(request->parent(), "parent"));
    RETURN_IF_ERROR(CheckName(request->name(), "name"));
    ASSIGN_OR_RETURN(
        *reply->mutable_inode(),
        store_->Mkdir(request->parent(), request->name(), request->mode(),
                      request->uid(), request->gid(), &dirs));
    SetDirs(std::move(dirs), reply->mutable_dirs());
    return absl::OkStatus();
  });
}

grpc::Status FsMetaService::Rmdir(grpc::ServerContext* context,
                                  const v1::RemoveRequest* request,
                                  v1::NamespaceReply* reply) {
  return Serve(context, "Rmdir", [&]() -> absl::Status {
    std::vector<v1::Inode> dirs;
    RETURN_IF_ERROR(CheckIno(request->parent(), "parent"));
    RETURN_IF_ERROR(CheckName(request->name(), "name"));
    RETURN_IF_ERROR(store_->Rmdir(request->parent(), request->name(), &dirs));
    SetDirs(std::move(dirs), reply->mutable_dirs());
    return absl::OkStatus();
  });
}

grpc::Status FsMetaService::Create(grpc::ServerContext* context,
                                   const v1::CreateRequest* request,
                                   v1::InodeReply* reply) {
  return Serve(context, "Create", [&]() -> absl::Status {
    std::vector<v1::Inode> dirs;
    RETURN_IF_ERROR(CheckIno(request->parent(), "parent"));
    RETURN_IF_ERROR(CheckName(request->name(), "name"));
    ASSIGN_OR_RETURN(
        v1::Inode inode,
        store_->Create(request->parent(), request->name(), request->mode(),
                       request->uid(), request->gid(), &dirs));
    if (request->open()) {
      ASSIGN_OR_RETURN(inode, store_->Open(inode.id(), /*for_write=*/true));
    }
    *reply->mutable_inode() = std::move(inode);
    SetDirs(std::move(dirs), reply->mutable_dirs());
    return absl::OkStatus();
  });
}

grpc::Status FsMetaService::Unlink(grpc::ServerContext* context,
                                   const v1::RemoveRequest* request,
                                   v1::NamespaceReply* reply) {
  return Serve(context, "Unlink", [&]() -> absl::Status {
    std::vector<v1::Inode> dirs;
    RETURN_IF_ERROR(CheckIno(request->parent(), "parent"));
    RETURN_IF_ERROR(CheckName(request->name(), "name"));
    RETURN_IF_ERROR(store_->Unlink(request->parent(), request->name(), &dirs));
    SetDirs(std::move(dirs), reply->mutable_dirs());
    return absl::OkStatus();
  });
}

grpc::Status FsMetaService::Rename(grpc::ServerContext* context,
                                   const v1::RenameRequest* request,
                                   v1::NamespaceReply* reply) {
  return Serve(context, "Rename", [&]() -> absl::Status {
    std::vector<v1::Inode> dirs;
    RETURN_IF_ERROR(CheckIno(request->old_parent(), "old_parent"));
    RETURN_IF_ERROR(CheckName(request->old_name(), "old_name"));
    RETURN_IF_ERROR(CheckIno(request->new_parent(), "new_parent"));
    RETURN_IF_ERROR(CheckName(request->new_name(), "new_name"));
    RETURN_IF_ERROR(store_->Rename(request->old_parent(), request->old_name(),
                                   request->new_parent(), request->new_name(),
                                   request->flags(), &dirs));
    SetDirs(std::move(dirs), reply->mutable_dirs());
    return absl::OkStatus();
  });
}

grpc::Status FsMetaService::Link(grpc::ServerContext* context,
                                 const v1::LinkRequest* request,
                                 v1::InodeReply* reply) {
  return Serve(context, "Link", [&]() -> absl::Status {
    std::vector<v1::Inode> dirs;
    RETURN_IF_ERROR(CheckIno(request->ino(), "ino"));
    RETURN_IF_ERROR(CheckIno(request->new_parent(), "new_parent"));
    RETURN_IF_ERROR(CheckName(request->new_name(), "new_name"));
    ASSIGN_OR_RETURN(*reply->mutable_inode(),
                     store_->Link(request->ino(), request->new_parent(),
                                  request->new_name(), &dirs));
    SetDirs(std::move(dirs), reply->mutable_dirs());
    return absl::OkStatus();
  });
}

grpc::Status FsMetaService::Symlink(grpc::ServerContext* context,
                                    const v1::SymlinkRequest* request,
                                    v1::InodeReply* reply) {
  return Serve(context, "Symlink", [&]() -> absl::Status {
    std::vector<v1::Inode> dirs;
    RETURN_IF_ERROR(CheckIno(request->parent(), "parent"));
    RETURN_IF_ERROR(CheckName(request->name(), "name"));
    ASSIGN_OR_RETURN(
        *reply->mutable_inode(),
        store_->Symlink(request->parent(), request->name(), request->target(),
                        request->uid(), request->gid(), &dirs));
    SetDirs(std::move(dirs), reply->mutable_dirs());
    return absl::OkStatus();
  });
}

grpc::Status FsMetaService::Readlink(grpc::ServerContext* context,
                                     const v1::ReadlinkRequest* request,
                                     v1::ReadlinkResponse* reply) {
  return Serve(context, "Readlink", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckIno(request->ino(), "ino"));
    ASSIGN_OR_RETURN(*reply->mutable_target(),
                     store_->Readlink(request->ino()));
    return absl::OkStatus();
  });
}

grpc::Status FsMetaService::ReadDir(grpc::ServerContext* context,
                                    const v1::ReadDirRequest* request,
                                    v1::ReadDirResponse* reply) {
  return Serve(context, "ReadDir", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckIno(request->ino(), "ino"));
    uint32_t max = request->max_entries();
    if (max == 0) max = kDefaultReadDirEntries;
    if (max > kMaxReadDirEntries) {
      return FsError(
          EINVAL,
          absl::StrCat("readdir: max_entries ", max, " is over the limit of ",
                       kMaxReadDirEntries, "; page with the cursor instead"));
    }
    if (!request->cursor().empty()) {
      RETURN_IF_ERROR(CheckName(request->cursor(), "cursor"));
    }
    ASSIGN_OR_RETURN(ReadDirPage page,
                     store_->ReadDir(request->ino(), request->cursor(), max,
                                     request->with_inodes()));
    for (auto& e : page.entries) *reply->add_entries() = std::move(e);
    reply->set_has_more(page.has_more);
    return absl::OkStatus();
  });
}

grpc::Status FsMetaService::StatFs(grpc::ServerContext* context,
                                   const v1::StatFsRequest* request,
                                   v1::StatFsResponse* reply) {
  return Serve(context, "StatFs", [&]() -> absl::Status {
    ASSIGN_OR_RETURN(*reply->mutable_stat(), store_->StatFs());
    if (cluster_ != nullptr) {
      reply->set_chunk_bytes_used(cluster_->AliveUsedBytes());
    }
    return absl::OkStatus();
  });
}

grpc::Status FsMetaService::Open(grpc::ServerContext* context,
                                 const v1::OpenRequest* request,
                                 v1::InodeReply* reply) {
  return Serve(context, "Open", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckIno(request->ino(), "ino"));
    ASSIGN_OR_RETURN(*reply->mutable_inode(),
                     store_->Open(request->ino(), request->for_write()));
    return absl::OkStatus();
  });
}

grpc::Status FsMetaService::Close(grpc::ServerContext* context,
                                  const v1::CloseRequest* request,
                                  v1::CloseResponse* reply) {
  return Serve(context, "Close", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckIno(request->ino(), "ino"));
    std::optional<uint64_t> size;
    if (request->has_size()) size = request->size();
    return store_->Close(request->ino(), size);
  });
}

grpc::Status FsMetaService::CloseMany(grpc::ServerContext* context,
                                      const v1::CloseManyRequest* request,
                                      v1::CloseManyResponse* reply) {
  return Serve(context, "CloseMany", [&]() -> absl::Status {
    if (request->inos_size() > kMaxCloseMany) {
      return FsError(EINVAL,
                     absl::StrCat("close_many: ", request->inos_size(),
                                  " handles, more than ", kMaxCloseMany));
    }
    for (uint64_t ino : request->inos()) RETURN_IF_ERROR(CheckIno(ino, "inos"));
    uint32_t unknown = 0;
    for (uint64_t ino : request->inos()) {
      absl::Status s = store_->Close(ino, std::nullopt);
      if (ErrnoOf(s) == EBADF) {
        ++unknown;
      } else if (!s.ok()) {
        return s;
      }
    }
    reply->set_unknown(unknown);
    return absl::OkStatus();
  });
}

grpc::Status FsMetaService::Fsync(grpc::ServerContext* context,
                                  const v1::FsyncRequest* request,
                                  v1::FsyncResponse* reply) {
  return Serve(context, "Fsync", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckIno(request->ino(), "ino"));
    return store_->Fsync(request->ino(), request->size());
  });
}

absl::StatusOr<uint64_t> FsMetaService::SealImpl(uint64_t ino, bool recursive) {
  ASSIGN_OR_RETURN(v1::Inode top, store_->GetAttr(ino));
  RETURN_IF_ERROR(store_->SetSealed(ino));
  uint64_t sealed = 1;
  if (!recursive || top.type() != v1::INODE_TYPE_DIRECTORY) return sealed;
  // Breadth first; a directory is sealed before its entries are listed, so
  // none can be added or removed while the walk runs.
  std::deque<uint64_t> dirs = {ino};
  while (!dirs.empty()) {
    uint64_t dir = dirs.front();
    dirs.pop_front();
    std::string cursor;
    for (;;) {
      ASSIGN_OR_RETURN(ReadDirPage page,
                       store_->ReadDir(dir, cursor, kDefaultReadDirEntries));
      for (const v1::DirEntry& e : page.entries) {
        absl::Status s = store_->SetSealed(e.ino());
        if (!s.ok()) {
          return absl::Status(
              s.code(), absl::StrCat("seal: inode ", e.ino(), " under ", dir,
                                     ": ", s.message()));
        }
        ++sealed;
        if (e.type() == v1::INODE_TYPE_DIRECTORY) dirs.push_back(e.ino());
      }
      if (!page.has_more || page.entries.empty()) break;
      cursor = page.entries.back().name();
    }
  }
  return sealed;
}

grpc::Status FsMetaService::Seal(grpc::ServerContext* context,
                                 const v1::SealRequest* request,
                                 v1::SealResponse* reply) {
  return Serve(context, "Seal", [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckIno(request->ino(), "ino"));
    ASSIGN_OR_RETURN(uint64_t sealed,
                     SealImpl(request->ino(), request->recursive()));
    reply->set_sealed(sealed);
    // A sealed image is published: make it durable now.
    return store_->SyncWal();
  });
}

// ---------------------------------------------------------------------------
// FsClusterService.

FsClusterService::FsClusterService(ClusterManager* cluster)
    : cluster_(cluster) {}

grpc::Status FsClusterService::RegisterChunkServer(
    grpc::ServerContext* context, const v1::RegisterChunkServerRequest* request,
    v1::RegisterChunkServerResponse* reply) {
  return Serve(context, "RegisterChunkServer", [&]() -> absl::Status {
    ASSIGN_OR_RETURN(
        *reply->mutable_table(),
        cluster_->Register(request->node_id(), request->address()));
    reply->set_heartbeat_interval_ms(
        absl::ToInt64Milliseconds(cluster_->heartbeat_interval()));
    return absl::OkStatus();
  });
}

grpc::Status FsClusterService::Heartbeat(
    grpc::ServerContext* context, const v1::ChunkHeartbeatRequest* request,
    v1::ChunkHeartbeatResponse* reply) {
  return Serve(context, "Heartbeat", [&]() -> absl::Status {
    ASSIGN_OR_RETURN(*reply, cluster_->Heartbeat(*request));
    return absl::OkStatus();
  });
}

grpc::Status FsClusterService::ReportSyncDone(
    grpc::ServerContext* context, const v1::ReportSyncDoneRequest* request,
    v1::ReportSyncDoneResponse* reply) {
  return Serve(context, "ReportSyncDone", [&]() -> absl::Status {
    ASSIGN_OR_RETURN(*reply->mutable_table(),
                     cluster_->SyncDone(request->node_id(), request->chain_id(),
                                        request->chain_version()));
    return absl::OkStatus();
  });
}

grpc::Status FsClusterService::GetChainTable(
    grpc::ServerContext* context, const v1::GetChainTableRequest* request,
    v1::GetChainTableResponse* reply) {
  return Serve(context, "GetChainTable", [&]() -> absl::Status {
    v1::ChainTable table = cluster_->Table();
    if (request->known_version() == 0 ||
        table.version() > request->known_version()) {
      *reply->mutable_table() = std::move(table);
    }
    return absl::OkStatus();
  });
}

}  // namespace dsec::fs
