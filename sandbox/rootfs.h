// Host-side pieces a Runtime prepares once and every sandbox reuses:
//   - the default image: a skeleton root (minimal generated /etc, the
//     host's /bin, /lib*, /sbin as symlinks or bind targets, /tmp, /root...)
//     owned by the sandbox root's host uid;
//   - a read-only /dev template (tmpfs with null, zero, full, random,
//     urandom, tty bound from the host, plus pts/ and shm/ mountpoints),
//     rbound into each sandbox in one mount call;
//   - the user namespace all sandboxes enter (0..n-1 -> uid_base..).
// Not thread-safe; built by Runtime::Init before any sandbox starts.
#ifndef DSEC_SANDBOX_ROOTFS_H_
#define DSEC_SANDBOX_ROOTFS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/unique_fd.h"

namespace dsec::sandbox {

// Top-level host directories bound read-only into the default image. Those
// that are symlinks on the host (merged /usr) become the same symlinks.
struct HostBind {
  std::string path;  // e.g. "/usr"
  bool is_symlink = false;
  std::string symlink_target;
};
std::vector<HostBind> DefaultHostBinds();

// Writes the default image skeleton into `dir` (created; must be empty or
// missing) with everything owned by uid/gid `owner`.
absl::Status WriteDefaultImage(const std::string& dir, uid_t owner);

// Mounts the /dev template at `dir` (created). `tty_gid` is the host gid of
// group "tty" inside. Undo with UnmountTree.
absl::Status MountDevTemplate(const std::string& dir);

// Lazily unmounts everything at and below `dir` (MNT_DETACH), deepest first.
absl::Status UnmountTree(const std::string& dir);

// Creates a user namespace mapping ids 0..count-1 to base.. (uids and gids)
// and returns an fd to it (from /proc/<pid>/ns/user of a short-lived child).
absl::StatusOr<UniqueFd> CreateUserNamespace(uid_t base, uint32_t count);

// What a layer tree holds beyond regular files, directories and symlinks,
// for copying it through a file system that holds only those (dsec-fs):
// special files (overlay whiteouts are 0/0 character devices) and extended
// attributes (trusted.overlay.opaque marks an opaque directory). Paths are
// relative to the tree's root ("" is the root itself).
struct LayerExtras {
  struct Special {
    std::string path;
    mode_t mode = 0;
    dev_t rdev = 0;
    uid_t uid = 0;
    gid_t gid = 0;
  };
  struct Xattr {
    std::string path;
    std::string name;
    std::string value;
  };
  std::vector<Special> specials;
  std::vector<Xattr> xattrs;
  // Directories, regular files and symlinks copied (the root not counted),
  // and the bytes of the regular files: a copy can be checked against them.
  uint64_t entries = 0;
  uint64_t file_bytes = 0;
};

// Copies a directory tree (an overlay upper layer) preserving types, modes,
// owners, times, xattrs (incl. trusted.overlay.*) and whiteout devices.
// Never follows symlinks. `src_dirfd` is an open directory fd. With
// `extras`, special files and xattrs are not made at the destination but
// recorded in *extras (appended; only xattrs that keep their meaning in
// another copy of the layer: trusted.overlay.opaque and user.*), and the
// counts are filled in.
absl::Status CopyLayerTree(int src_dirfd, const std::string& dst_dir,
                           LayerExtras* extras = nullptr);

// Re-creates recorded special files and xattrs in the tree at `dir` (the
// inverse of CopyLayerTree with `extras`). The record is untrusted: paths
// must be relative and normalized and are resolved beneath `dir` without
// following symlinks; only whiteouts (character 0/0), FIFOs and the xattrs
// "trusted.overlay.opaque" and "user.*" are accepted. Anything else is
// DATA_LOSS.
absl::Status ApplyLayerExtras(const std::string& dir,
                              const LayerExtras& extras);

}  // namespace dsec::sandbox

#endif  // DSEC_SANDBOX_ROOTFS_H_
