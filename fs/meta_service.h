// The gRPC faces of dsec-meta (dsec/v1/fs_service.proto):
//
//   FsMetaService     the namespace, over MetaStore (fs/meta_store.h)
//   FsClusterService  chunk server membership, over ClusterManager
//                     (fs/cluster_manager.h)
//
// Both are thin adapters: they validate requests (bad input is answered
// INVALID_ARGUMENT naming the field, never crashes the server), call the
// core, and answer with ToGrpcFsStatus so the errno survives the wire.
// Sync services: each call runs on a gRPC thread and may block on RocksDB.
//
// Thread-safe. Neither service owns its cores; they must outlive it.
#ifndef DSEC_FS_META_SERVICE_H_
#define DSEC_FS_META_SERVICE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "dsec/v1/fs_service.grpc.pb.h"
#include "fs/cluster_manager.h"
#include "fs/meta_store.h"

namespace dsec::fs {

// Longest path ResolvePath accepts, in bytes (PATH_MAX).
inline constexpr size_t kMaxPathBytes = 4096;
// ReadDir page size bounds: 0 asks for kDefaultReadDirEntries.
inline constexpr uint32_t kDefaultReadDirEntries = 1000;
inline constexpr uint32_t kMaxReadDirEntries = 10000;

// The components of absolute path `path` ("/" -> none). INVALID_ARGUMENT
// (EINVAL) for a relative or empty path, an empty component (except one
// trailing slash), "." or ".." components, or a NUL byte; ENAMETOOLONG for
// a path over kMaxPathBytes or a component over kMaxNameBytes.
absl::StatusOr<std::vector<std::string>> SplitAbsolutePath(
    absl::string_view path);

class FsMetaService final : public v1::FsMetaService::Service {
 public:
  // `cluster` may be null (StatFs then reports no chunk bytes).
  FsMetaService(MetaStore* store, const ClusterManager* cluster);

  grpc::Status Lookup(grpc::ServerContext* context,
                      const v1::LookupRequest* request,
                      v1::InodeReply* reply) override;
  grpc::Status GetAttr(grpc::ServerContext* context,
                       const v1::GetAttrRequest* request,
                       v1::InodeReply* reply) override;
  grpc::Status ResolvePath(grpc::ServerContext* context,
                           const v1::ResolvePathRequest* request,
                           v1::InodeReply* reply) override;
  grpc::Status SetAttr(grpc::ServerContext* context,
                       const v1::SetAttrRequest* request,
                       v1::InodeReply* reply) override;
  grpc::Status Mkdir(grpc::ServerContext* context,
                     const v1::MkdirRequest* request,
                     v1::InodeReply* reply) override;
  grpc::Status Rmdir(grpc::ServerContext* context,
                     const v1::RemoveRequest* request,
                     v1::NamespaceReply* reply) override;
  grpc::Status Create(grpc::ServerContext* context,
                      const v1::CreateRequest* request,
                      v1::InodeReply* reply) override;
  grpc::Status Unlink(grpc::ServerContext* context,
                      const v1::RemoveRequest* request,
                      v1::NamespaceReply* reply) override;
  grpc::Status Rename(grpc::ServerContext* context,
                      const v1::RenameRequest* request,
                      v1::NamespaceReply* reply) override;
  grpc::Status Link(grpc::ServerContext* context,
                    const v1::LinkRequest* request,
                    v1::InodeReply* reply) override;
  grpc::Status Symlink(grpc::ServerContext* context,
                       const v1::SymlinkRequest* request,
                       v1::InodeReply* reply) override;
  grpc::Status Readlink(grpc::ServerContext* context,
                        const v1::ReadlinkRequest* request,
                        v1::ReadlinkResponse* reply) override;
  grpc::Status ReadDir(grpc::ServerContext* context,
                       const v1::ReadDirRequest* request,
                       v1::ReadDirResponse* reply) override;
  grpc::Status StatFs(grpc::ServerContext* context,
                      const v1::StatFsRequest* request,
                      v1::StatFsResponse* reply) override;
  grpc::Status Open(grpc::ServerContext* context,
                    const v1::OpenRequest* request,
                    v1::InodeReply* reply) override;
  grpc::Status Close(grpc::ServerContext* context,
                     const v1::CloseRequest* request,
                     v1::CloseResponse* reply) override;
  grpc::Status CloseMany(grpc::ServerContext* context,
                         const v1::CloseManyRequest* request,
                         v1::CloseManyResponse* reply) override;
  grpc::Status Fsync(grpc::ServerContext* context,
                     const v1::FsyncRequest* request,
                     v1::FsyncResponse* reply) override;
  grpc::Status Seal(grpc::ServerContext* context,
                    const v1::SealRequest* request,
                    v1::SealResponse* reply) override;

 private:
  absl::StatusOr<v1::Inode> ResolvePathImpl(absl::string_view path);
  // Seals `ino` and, if `recursive`, everything below it; returns the count.
  absl::StatusOr<uint64_t> SealImpl(uint64_t ino, bool recursive);

  MetaStore* const store_;
  const ClusterManager* const cluster_;
};

class FsClusterService final : public v1::FsClusterService::Service {
 public:
  explicit FsClusterService(ClusterManager* cluster);

  grpc::Status RegisterChunkServer(
      grpc::ServerContext* context,
      const v1::RegisterChunkServerRequest* request,
      v1::RegisterChunkServerResponse* reply) override;
  grpc::Status Heartbeat(grpc::ServerContext* context,
                         const v1::ChunkHeartbeatRequest* request,
                         v1::ChunkHeartbeatResponse* reply) override;
  grpc::Status ReportSyncDone(grpc::ServerContext* context,
                              const v1::ReportSyncDoneRequest* request,
                              v1::ReportSyncDoneResponse* reply) override;
  grpc::Status GetChainTable(grpc::ServerContext* context,
                             const v1::GetChainTableRequest* request,
                             v1::GetChainTableResponse* reply) override;

 private:
  ClusterManager* const cluster_;
};

}  // namespace dsec::fs

#endif  // DSEC_FS_META_SERVICE_H_
