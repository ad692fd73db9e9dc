// FuseMount: dsec-fs mounted through the libfuse3 low-level API, multi-
// threaded, over an FsClient (fs/fs_client.h).
//
// FUSE inode numbers are dsec-fs inode ids (the root is 1 in both).
// Caching:
//   - kernel entry/attribute caching for `attr_timeout`; sealed (immutable)
//     inodes get `sealed_timeout` and keep their page cache across opens;
//     other files keep it when size and mtime are unchanged since the last
//     open (close-to-open consistency, as NFS);
//   - readahead: a sequential reader's handle fetches `readahead_bytes`
//     windows, chunks in parallel, and keeps the next `readahead_windows`
//     windows in flight while the current one is being consumed;
//   - write-back: writes are buffered per open file up to `write_buffer_bytes`
//     of contiguous data and flushed on a gap, when full, on flush (close),
//     fsync and release; the file length is committed to the meta server at
//     flush/fsync/release. stat() of a file being written shows the writer's
//     length at once. Up to four buffers per open file are in flight.
// Crash safety: Mount registers the connection's fusectl abort file; if this
// process dies of SIGSEGV, SIGBUS, SIGILL, SIGFPE or SIGABRT, a handler
// (installed once, async-signal-safe) aborts every connection this process
// mounted before passing the signal on, so a thread of it blocked on its own
// mount cannot keep it from exiting. Stop unregisters it.
// Errors are the errno the meta/chunk servers attached (fs/fs_error.h).
// Permission checks are the kernel's (-o default_permissions).
//
// Thread-safe: libfuse calls the operations from several threads.
#ifndef DSEC_FS_FUSE_FS_H_
#define DSEC_FS_FUSE_FS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "fs/fs_client.h"

namespace dsec::fs {

// The FUSE connection number (the mount's minor device, as in
// /sys/fs/fuse/connections) of `mountpoint`, read from /proc/self/mountinfo
// so the file system itself is not touched; nullopt if it is not mounted.
std::optional<unsigned> FuseConnection(const std::string& mountpoint);

struct FuseMountOptions {
  std::string mountpoint;
  absl::Duration attr_timeout = absl::Seconds(1);
  absl::Duration sealed_timeout = absl::Hours(1);
  uint64_t readahead_bytes = 8 << 20;
  // Windows fetched ahead of a sequential reader (each `readahead_bytes`, its
  // chunks in parallel): a sequential handle holds at most
  // (1 + readahead_windows) * readahead_bytes.
  int readahead_windows = 4;
  uint64_t write_buffer_bytes = 16 << 20;
  // Largest single FUSE read/write request.
  uint32_t max_io_bytes = 1 << 20;
  int max_threads = 16;
  // -o allow_other: let other users (sandboxes) use the mount.
  bool allow_other = true;
  // Mount read-only.
  bool read_only = false;
  // Extra -o options for libfuse/the kernel.
  std::vector<std::string> extra_options;
};

class FuseMount {
 public:
  // Mounts at options.mountpoint (which must be an existing directory).
  // `client` must outlive the mount. Needs /dev/fuse and CAP_SYS_ADMIN (or
  // fusermount3).
  static absl::StatusOr<std::unique_ptr<FuseMount>> Mount(
      FsClient* client, const FuseMountOptions& options);
  // Unmounts if still mounted.
  ~FuseMount();
  FuseMount(const FuseMount&) = delete;
  FuseMount& operator=(const FuseMount&) = delete;

  // Serves requests until Stop(), a signal (with InstallSignalHandlers), or
  // an external unmount. Call once.
  absl::Status Run();
  // Serves on a background thread.
  absl::Status Start();
  // Ends Run/Start and unmounts; safe from any thread, idempotent.
  void Stop();
  // SIGTERM/SIGINT/SIGHUP end Run() cleanly (libfuse's handlers).
  absl::Status InstallSignalHandlers();

  const std::string& mountpoint() const;

  class Impl;

 private:
  explicit FuseMount(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsec::fs

#endif  // DSEC_FS_FUSE_FS_H_
