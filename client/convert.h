// Conversions between the client's plain types (sandbox_io.h) and the
// dsec.v1 wire messages. Pure functions.
#ifndef DSEC_CLIENT_CONVERT_H_
#define DSEC_CLIENT_CONVERT_H_

#include "absl/time/time.h"
#include "client/sandbox_io.h"
#include "common/proto_time.h"
#include "dsec/v1/exec.pb.h"

namespace dsec::client {

using ::dsec::FromProtoDuration;
using ::dsec::ToProtoDuration;

// Every field of `command`, action_id as given (may be empty).
dsec::v1::ExecRequest ToExecRequest(const Command& command);
Command FromExecRequest(const dsec::v1::ExecRequest& request);

}  // namespace dsec::client

#endif  // DSEC_CLIENT_CONVERT_H_
