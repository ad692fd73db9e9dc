// File operations confined to a sandbox's root directory.
//
// Every path is resolved by the kernel with openat2(RESOLVE_IN_ROOT |
// RESOLVE_NO_MAGICLINKS) against an fd of the root, so "..", absolute
// symlinks and symlinks planted by sandboxed code all stay inside the root:
// the host never reads or writes outside it. Final components that are
// symlinks are not followed for write, delete and stat-nofollow. Used by the
// agent's file API on a running sandbox (root = the sandbox's merged rootfs
// as seen from the host, e.g. /proc/<init>/root or the overlay mountpoint).
//
// Thread-safe: a SafeRoot holds only an fd; all calls are independent.
#ifndef DSEC_SANDBOX_SAFE_FS_H_
#define DSEC_SANDBOX_SAFE_FS_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/unique_fd.h"

namespace dsec::sandbox {

enum class FileType { kRegular, kDirectory, kSymlink, kOther };

struct FileInfo {
  std::string name;  // base name (List) or the path asked for (Stat)
  FileType type = FileType::kOther;
  int64_t size = 0;
  uint32_t mode = 0;  // permission bits
  int64_t mtime_ns = 0;
  std::string symlink_target;  // for kSymlink
};

struct WriteOptions {
  uint32_t mode = 0644;
  bool append = false;
  bool create_parents = false;  // mkdir -p the parent directories (0755)
  bool exclusive = false;       // fail with ALREADY_EXISTS if present
  uid_t uid = 0;                // host ids for new files (the sandbox's
  gid_t gid = 0;                // mapped root), applied with fchown
};

class SafeRoot {
 public:
  // Opens `root_dir` (O_PATH | O_DIRECTORY). NOT_FOUND if missing.
  static absl::StatusOr<std::unique_ptr<SafeRoot>> Open(
      absl::string_view root_dir);
  // Takes ownership of an fd of the root directory (O_PATH is enough).
  // REQUIRES: root_dir is a valid directory fd.
  static std::unique_ptr<SafeRoot> Adopt(UniqueFd root_dir);

  // Errors: INVALID_ARGUMENT (empty path, NUL byte, path > PATH_MAX),
  // NOT_FOUND, PERMISSION_DENIED, FAILED_PRECONDITION (is a directory / not
  // a directory), RESOURCE_EXHAUSTED (ENOSPC, file larger than max_bytes).
  absl::StatusOr<std::string> ReadFile(absl::string_view path,
                                       int64_t offset = 0,
                                       int64_t max_bytes = 64 << 20) const;
  // Opens a regular file for streaming reads (O_RDONLY), resolved in root.
  absl::StatusOr<UniqueFd> OpenForRead(absl::string_view path) const;
  absl::Status WriteFile(absl::string_view path, absl::string_view data,
                         const WriteOptions& options = {}) const;
  // Opens for streaming writes (O_WRONLY | O_CREAT | O_TRUNC or O_APPEND).
  absl::StatusOr<UniqueFd> OpenForWrite(absl::string_view path,
                                        const WriteOptions& options) const;
  absl::StatusOr<FileInfo> Stat(absl::string_view path) const;  // lstat
  // Entries of a directory sorted by name, without "." and "..".
  absl::StatusOr<std::vector<FileInfo>> List(absl::string_view path) const;
  // Removes a file, symlink or (with recursive) a directory tree, never
  // following symlinks inside it.
  absl::Status Delete(absl::string_view path, bool recursive = false) const;
  absl::Status MakeDirs(absl::string_view path, uint32_t mode = 0755,
                        uid_t uid = 0, gid_t gid = 0) const;

 private:
  explicit SafeRoot(UniqueFd fd) : root_(std::move(fd)) {}
  UniqueFd root_;
};

}  // namespace dsec::sandbox

#endif  // DSEC_SANDBOX_SAFE_FS_H_
