// gRPC plumbing shared by the dsec-fs servers and clients: statuses that keep
// their errno across the wire, and channel/server limits sized for chunks.
//
// A server answers with ToGrpcFsStatus(context, status): the code and message
// as usual, plus the errno (fs/fs_error.h ErrnoOf) in trailing metadata
// "dsec-errno". A client converts with FromGrpcFsStatus(context, status),
// which restores the errno payload so ErrnoOf gives the server's exact errno.
// Thread-safe: pure functions.
#ifndef DSEC_FS_FS_RPC_H_
#define DSEC_FS_FS_RPC_H_

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include <memory>
#include <string>

#include "absl/status/status.h"

namespace dsec::fs {

inline constexpr char kErrnoMetadataKey[] = "dsec-errno";
// Largest message a dsec-fs endpoint sends or accepts: a whole 64 MiB chunk
// plus framing.
inline constexpr int kMaxFsMessageBytes = (64 << 20) + (1 << 20);
// Most handles one CloseMany call may close.
inline constexpr int kMaxCloseMany = 4096;

grpc::Status ToGrpcFsStatus(grpc::ServerContext* context,
                            const absl::Status& status);
absl::Status FromGrpcFsStatus(const grpc::ClientContext& context,
                              const grpc::Status& status);

// An insecure channel to `address` (host:port) with the message limits above.
std::shared_ptr<grpc::Channel> MakeFsChannel(const std::string& address);
// Applies the message limits to a server being built.
void ConfigureFsServer(grpc::ServerBuilder& builder);

}  // namespace dsec::fs

#endif  // DSEC_FS_FS_RPC_H_
