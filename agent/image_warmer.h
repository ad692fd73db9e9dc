// ImageWarmer: reads a dsec-fs image tree once from the agent's own cgroup
// before the first sandbox uses it.
//
// Why: the kernel charges a dentry, inode or page-cache page to the memory
// cgroup of the task that first allocates it. Without warming, the first
// sandbox to open an image file owns the FUSE inodes and pages of every file
// it touches, and pooled sandbox cgroups are emptied between sandboxes
// (memory.force_empty / memory.reclaim), which evicts them: each new sandbox
// then looks every file up on the meta server and reads it from the chunk
// servers again. Objects the agent created first stay cached for all.
//
// Warm(dir) walks the tree (lstat of every entry) and reads every regular
// file up to `max_file_bytes`, within a `max_total_bytes` budget per image;
// it runs once per directory, and concurrent callers for the same directory
// wait for the one doing it. Thread-safe.
#ifndef DSEC_AGENT_IMAGE_WARMER_H_
#define DSEC_AGENT_IMAGE_WARMER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

namespace dsec::agent {

struct ImageWarmStats {
  uint64_t entries = 0;
  uint64_t files_read = 0;
  uint64_t bytes_read = 0;
};

class ImageWarmer {
 public:
  explicit ImageWarmer(uint64_t max_file_bytes = 64 << 20,
                       uint64_t max_total_bytes = uint64_t{512} << 20)
      : max_file_bytes_(max_file_bytes), max_total_bytes_(max_total_bytes) {}

  // Warms `dir` unless it was already; returns what this call did (zeros if
  // another call did the work). Errors inside the tree are skipped.
  ImageWarmStats Warm(const std::string& dir);

 private:
  ImageWarmStats Walk(const std::string& dir) const;

  const uint64_t max_file_bytes_;
  const uint64_t max_total_bytes_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<absl::Notification>> done_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace dsec::agent

#endif  // DSEC_AGENT_IMAGE_WARMER_H_
