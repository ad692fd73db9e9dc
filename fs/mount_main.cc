// dsec-mount: mounts dsec-fs with FUSE. flags -> FsClientOptions +
// FuseMountOptions -> FuseMount::Mount -> serve until SIGTERM/SIGINT or an
// unmount -> unmount.
//
//   dsec-mount --meta 127.0.0.1:9400 /mnt/dsec
#include <malloc.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "fs/fs_client.h"
#include "fs/fuse_fs.h"

ABSL_FLAG(std::string, meta, "127.0.0.1:9400", "dsec-meta host:port");
ABSL_FLAG(int, attr_timeout_ms, 1000, "kernel attribute/entry cache timeout");
ABSL_FLAG(int, readahead_mib, 8, "readahead window per sequential reader");
ABSL_FLAG(int, readahead_windows, 4,
          "readahead windows kept in flight ahead of a sequential reader");
ABSL_FLAG(int, write_buffer_mib, 16, "write-back buffer per open file");
ABSL_FLAG(int, threads, 16, "max FUSE worker threads");
ABSL_FLAG(bool, read_only, false, "mount read-only");
ABSL_FLAG(bool, allow_other, true, "let other users use the mount");
ABSL_FLAG(std::string, options, "", "extra comma-separated -o options");
ABSL_FLAG(int, retry_budget_s, 30,
          "how long unavailable servers are retried before EIO");

int main(int argc, char** argv) {
  // Write-back buffers and readahead windows are MiBs each, allocated and
  // freed all the time: keep them in the heap rather than mmap'ed and
  // returned (a page fault per 4 KiB on every reuse otherwise).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  absl::SetProgramUsageMessage("dsec-mount [flags] MOUNTPOINT");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  (void)dsec::InitLogging({"info", "mount"});
  if (args.size() != 2) {
    std::fprintf(stderr, "usage: dsec-mount [--meta host:port] MOUNTPOINT\n");
    return 2;
  }
  dsec::fs::FsClientOptions client_options;
  client_options.meta_address = absl::GetFlag(FLAGS_meta);
  client_options.retry_budget =
      absl::Seconds(absl::GetFlag(FLAGS_retry_budget_s));
  auto client = dsec::fs::FsClient::Create(client_options);
  if (!client.ok()) {
    std::fprintf(stderr, "dsec-mount: %s\n",
                 client.status().ToString().c_str());
    return 1;
  }
  dsec::fs::FuseMountOptions options;
  options.mountpoint = args[1];
  options.attr_timeout =
      absl::Milliseconds(absl::GetFlag(FLAGS_attr_timeout_ms));
  options.readahead_bytes = uint64_t(absl::GetFlag(FLAGS_readahead_mib)) << 20;
  options.readahead_windows = absl::GetFlag(FLAGS_readahead_windows);
  options.write_buffer_bytes = uint64_t(absl::GetFlag(FLAGS_write_buffer_mib))
                               << 20;
  options.max_threads = absl::GetFlag(FLAGS_threads);
  options.read_only = absl::GetFlag(FLAGS_read_only);
  options.allow_other = absl::GetFlag(FLAGS_allow_other);
  for (absl::string_view o :
       absl::StrSplit(absl::GetFlag(FLAGS_options), ',', absl::SkipEmpty())) {
    options.extra_options.emplace_back(o);
  }
  auto mount = dsec::fs::FuseMount::Mount(client->get(), options);
  if (!mount.ok()) {
    std::fprintf(stderr, "dsec-mount: %s\n", mount.status().ToString().c_str());
    return 1;
  }
  if (absl::Status s = (*mount)->InstallSignalHandlers(); !s.ok()) {
    std::fprintf(stderr, "dsec-mount: %s\n", s.ToString().c_str());
    return 1;
  }
  DSEC_LOG_INFO("dsec-fs mounted at {} (meta {})", options.mountpoint,
                client_options.meta_address);
  absl::Status status = (*mount)->Run();
  mount->reset();
  DSEC_LOG_INFO("dsec-fs unmounted from {}", options.mountpoint);
  if (!status.ok()) {
    std::fprintf(stderr, "dsec-mount: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
