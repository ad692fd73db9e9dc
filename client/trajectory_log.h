// The on-disk trajectory log: an append-only file of TrajectoryRecords
// (proto/dsec/v1/trajectory.proto), each framed as
//   u32 length (little endian) | u32 CRC-32 of the payload | payload
// A record is durable against the process dying once Append returns (one
// write(2)); with `sync` it is also fsynced (durable against the machine
// dying). Opening tolerates a torn last record (the process died while
// writing it): it is cut off. A bad record followed by good ones is
// corruption: DATA_LOSS, the file is left alone.
//
// The path may be on dsec-fs (a FUSE mount) so that a rollout resumes on
// another machine. Not thread-safe.
#ifndef DSEC_CLIENT_TRAJECTORY_LOG_H_
#define DSEC_CLIENT_TRAJECTORY_LOG_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/unique_fd.h"
#include "dsec/v1/trajectory.pb.h"

namespace dsec::client {

class TrajectoryLog {
 public:
  // Opens `path`, creating it (and its directory) if missing.
  static absl::StatusOr<std::unique_ptr<TrajectoryLog>> Open(
      const std::string& path, bool sync);

  const std::vector<dsec::v1::TrajectoryRecord>& records() const {
    return records_;
  }
  // Bytes of a torn last record removed by Open (0 normally).
  int64_t torn_bytes() const { return torn_bytes_; }
  const std::string& path() const { return path_; }

  absl::Status Append(const dsec::v1::TrajectoryRecord& record);

 private:
  TrajectoryLog() = default;
  std::string path_;
  bool sync_ = false;
  UniqueFd fd_;
  std::vector<dsec::v1::TrajectoryRecord> records_;
  int64_t torn_bytes_ = 0;
};

}  // namespace dsec::client

#endif  // DSEC_CLIENT_TRAJECTORY_LOG_H_
