#include "client/trajectory_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/status_macros.h"

namespace dsec::client {
namespace {

constexpr size_t kHeader = 8;
constexpr uint32_t kMaxRecord = 256u << 20;

uint32_t Crc(const char* data, size_t n) {
  return static_cast<uint32_t>(
      crc32(0L, reinterpret_cast<const Bytef*>(data), static_cast<uInt>(n)));
}

void PutU32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= uint32_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return v;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TrajectoryLog>> TrajectoryLog::Open(
    const std::string& path, bool sync) {
  std::unique_ptr<TrajectoryLog> log(new TrajectoryLog());
  log->path_ = path;
  log->sync_ = sync;
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(),
                                      ec);
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return dsec::ErrnoToStatus(errno,
                               absl::StrCat("open trajectory log ", path));
  }
  log->fd_.Reset(fd);
  struct stat st;
  if (fstat(fd, &st) != 0) return dsec::ErrnoToStatus(errno, "fstat");
  std::string data(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < data.size()) {
    ssize_t n = pread(fd, data.data() + got, data.size() - got, got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return dsec::ErrnoToStatus(errno, "read trajectory log");
    got += n;
  }
  size_t off = 0;
  while (off < data.size()) {
    bool complete = data.size() - off >= kHeader;
    uint32_t len = complete ? GetU32(data.data() + off) : 0;
    complete =
        complete && len <= kMaxRecord && data.size() - off - kHeader >= len;
    bool good = false;
    dsec::v1::TrajectoryRecord record;
    if (complete) {
      const char* payload = data.data() + off + kHeader;
      good = Crc(payload, len) == GetU32(data.data() + off + 4) &&
             record.ParseFromArray(payload, static_cast<int>(len));
    }
    if (!good) {
      size_t end = complete ? off + kHeader + len : data.size();
      if (end < data.size()) {
        return absl::DataLossError(absl::StrCat(
            "trajectory log ", path, " is corrupt at byte ", off,
            " (a bad record followed by more data); not touching it"));
      }
      // A torn tail: the writer died mid-record.
      log->torn_bytes_ = static_cast<int64_t>(data.size() - off);
      if (ftruncate(fd, static_cast<off_t>(off)) != 0) {
        return dsec::ErrnoToStatus(errno, "truncate torn trajectory record");
      }
      break;
    }
    log->records_.push_back(std::move(record));
    off += kHeader + len;
  }
  if (lseek(fd, 0, SEEK_END) < 0) return dsec::ErrnoToStatus(errno, "lseek");
  return log;
}

absl::Status TrajectoryLog::Append(const dsec::v1::TrajectoryRecord& record) {
  std::string payload = record.SerializeAsString();
  if (payload.size() > kMaxRecord) {
    return absl::InvalidArgumentError(
        absl::StrCat("trajectory record of ", payload.size(),
                     " bytes is over the ", kMaxRecord, "-byte limit"));
  }
  std::string frame(kHeader, '\0');
  PutU32(frame.data(), static_cast<uint32_t>(payload.size()));
  PutU32(frame.data() + 4, Crc(payload.data(), payload.size()));
  frame += payload;
  off_t start = lseek(fd_.get(), 0, SEEK_END);
  size_t done = 0;
  while (done < frame.size()) {
    ssize_t n = write(fd_.get(), frame.data() + done, frame.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      absl::Status st = dsec::ErrnoToStatus(errno, "append to trajectory log");
      // Never leave half a record for the next append to follow.
      if (start >= 0) (void)ftruncate(fd_.get(), start);
      return st;
    }
    done += n;
  }
  if (sync_ && fdatasync(fd_.get()) != 0) {
    return dsec::ErrnoToStatus(errno, "fdatasync trajectory log");
  }
  records_.push_back(record);
  return absl::OkStatus();
}

}  // namespace dsec::client
