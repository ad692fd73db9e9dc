#include "agent/image_warmer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <system_error>
#include <vector>

#include "common/logging.h"
#include "common/unique_fd.h"

namespace dsec::agent {

ImageWarmStats ImageWarmer::Warm(const std::string& dir) {
  std::shared_ptr<absl::Notification> done;
  bool mine = false;
  {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = done_.try_emplace(dir);
    if (inserted) {
      it->second = std::make_shared<absl::Notification>();
      mine = true;
    }
    done = it->second;
  }
  if (!mine) {
    done->WaitForNotification();
    return {};
  }
  const absl::Time start = absl::Now();
  ImageWarmStats stats = Walk(dir);
  done->Notify();
  DSEC_LOG_INFO("image {} warmed: {} entries, {} files ({} bytes) read in {}",
                dir, stats.entries, stats.files_read, stats.bytes_read,
                absl::FormatDuration(absl::Now() - start));
  return stats;
}

ImageWarmStats ImageWarmer::Walk(const std::string& dir) const {
  ImageWarmStats stats;
  std::error_code ec;
  std::filesystem::recursive_directory_iterator it(
      dir, std::filesystem::directory_options::skip_permission_denied, ec);
  std::vector<char> buf(1 << 20);
  for (; !ec && it != std::filesystem::recursive_directory_iterator();
       it.increment(ec)) {
    struct stat st;
    const std::string path = it->path().string();
    if (lstat(path.c_str(), &st) != 0) continue;
    ++stats.entries;
    if (!S_ISREG(st.st_mode) ||
        static_cast<uint64_t>(st.st_size) > max_file_bytes_ ||
        stats.bytes_read + st.st_size > max_total_bytes_) {
      continue;
    }
    UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (fd.get() < 0) continue;
    ssize_t n;
    while ((n = read(fd.get(), buf.data(), buf.size())) > 0) {
      stats.bytes_read += n;
    }
    ++stats.files_read;
  }
  return stats;
}

}  // namespace dsec::agent
