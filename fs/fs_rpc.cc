#include "fs/fs_rpc.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/grpc_status.h"
#include "fs/fs_error.h"

namespace dsec::fs {

grpc::Status ToGrpcFsStatus(grpc::ServerContext* context,
                            const absl::Status& status) {
  if (!status.ok() && context != nullptr) {
    context->AddTrailingMetadata(kErrnoMetadataKey,
                                 absl::StrCat(ErrnoOf(status)));
  }
  return ToGrpcStatus(status);
}

absl::Status FromGrpcFsStatus(const grpc::ClientContext& context,
                              const grpc::Status& status) {
  absl::Status out = FromGrpcStatus(status);
  if (out.ok()) return out;
  const auto& trailers = context.GetServerTrailingMetadata();
  auto it = trailers.find(kErrnoMetadataKey);
  int errno_value = 0;
  if (it != trailers.end() &&
      absl::SimpleAtoi(absl::string_view(it->second.data(), it->second.size()),
                       &errno_value) &&
      errno_value > 0 && errno_value < 4096) {
    out = WithErrno(std::move(out), errno_value);
  }
  return out;
}

std::shared_ptr<grpc::Channel> MakeFsChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxFsMessageBytes);
  args.SetMaxSendMessageSize(kMaxFsMessageBytes);
  // Reconnect quickly after a chunk server restarts.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(),
                                   args);
}

void ConfigureFsServer(grpc::ServerBuilder& builder) {
  builder.SetMaxReceiveMessageSize(kMaxFsMessageBytes);
  builder.SetMaxSendMessageSize(kMaxFsMessageBytes);
  // Keep a few request threads around instead of creating one per burst
  // (the default keeps at most 2 idle pollers).
  builder.SetSyncServerOption(
      grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 2);
  builder.SetSyncServerOption(
      grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 8);
}

}  // namespace dsec::fs
