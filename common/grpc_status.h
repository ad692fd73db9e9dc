// absl::Status <-> grpc::Status, converted once at each RPC boundary.
// The canonical codes are numerically identical; messages are kept. Pure
// functions, thread-safe.
#ifndef DSEC_COMMON_GRPC_STATUS_H_
#define DSEC_COMMON_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace dsec {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace dsec

#endif  // DSEC_COMMON_GRPC_STATUS_H_
