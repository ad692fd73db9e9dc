// dsecctl's dsec-fs commands, over the native client (fs/fs_client.h):
//
//   fs ls PATH | stat PATH | mkdir [-p] PATH | rm [-r] PATH
//      put LOCAL REMOTE (file or directory tree) | get REMOTE LOCAL
//      df | chains
//   image import NAME DIR|TARBALL   writes the tree to /images/NAME on
//                                   dsec-fs (staged, renamed in place, then
//                                   sealed immutable)
//   image list
//
// Each returns the process exit code (0 ok, 1 failed with a message on err,
// 2 usage error).
#ifndef DSEC_CTL_FS_COMMANDS_H_
#define DSEC_CTL_FS_COMMANDS_H_

#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "ctl/cli_util.h"
#include "fs/fs_client.h"
#include "fs/image.h"

namespace dsec::ctl {

struct FsCommandOptions {
  std::string meta_address = "127.0.0.1:9400";
  bool json = false;
};

int RunFs(const FsCommandOptions& options, const Args& a, std::ostream& out,
          std::ostream& err);
int RunImage(const FsCommandOptions& options, const Args& a, std::ostream& out,
             std::ostream& err);

struct ImportStats {
  uint64_t files = 0;
  uint64_t dirs = 0;
  uint64_t symlinks = 0;
  uint64_t hardlinks = 0;
  uint64_t bytes = 0;
};

// Copies local directory `local_dir` into dsec-fs directory `remote_dir`
// (created; must not exist), keeping modes, owners, mtimes, symlinks and
// hard links; file contents in parallel. Other file types are skipped.
// Owners are stored shifted by `id_shift` (uid and gid + id_shift).
absl::StatusOr<ImportStats> PutTree(fs::FsClient& client,
                                    const std::string& local_dir,
                                    const std::string& remote_dir,
                                    uint32_t id_shift = 0);

// Imports `source` (a directory, or a tarball unpacked with tar first) as
// image `name`: /images/.staging-<name>-<pid>, renamed to /images/<name>
// (ALREADY_EXISTS if taken), then sealed. INVALID_ARGUMENT for bad names
// (fs/image.h ValidateImageName). Owners are shifted by `id_shift`
// (fs::kImageIdShift: the sandboxes' user-namespace mapping).
absl::StatusOr<ImportStats> ImportImage(fs::FsClient& client,
                                        const std::string& name,
                                        const std::string& source,
                                        uint32_t id_shift = fs::kImageIdShift);

}  // namespace dsec::ctl

#endif  // DSEC_CTL_FS_COMMANDS_H_
