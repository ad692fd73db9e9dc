// absl::Duration <-> google.protobuf.Duration, shared by the agent, the
// controller's callers and the client. Pure functions.
#ifndef DSEC_COMMON_PROTO_TIME_H_
#define DSEC_COMMON_PROTO_TIME_H_

#include "absl/time/time.h"
#include "google/protobuf/duration.pb.h"

namespace dsec {

google::protobuf::Duration ToProtoDuration(absl::Duration d);
absl::Duration FromProtoDuration(const google::protobuf::Duration& d);

}  // namespace dsec

#endif  // DSEC_COMMON_PROTO_TIME_H_
