// Sandbox images on dsec-fs: immutable (sealed) directory trees under
// /images/<name>, each a complete root file system. Agents mount dsec-fs and
// use <mount>/images/<name> as an overlay lower layer. Pure functions.
#ifndef DSEC_FS_IMAGE_H_
#define DSEC_FS_IMAGE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace dsec::fs {

// Where images live, from the root of dsec-fs.
inline constexpr char kImagesDir[] = "/images";

// Image files are stored with their owners shifted by this much: an owner
// uid/gid N in the source tree is kImageIdShift + N on dsec-fs, which is
// exactly how a sandbox's user namespace maps its ids (root inside is host
// uid sandbox::RuntimeOptions::uid_base, the same 200000). So inside a
// sandbox image files belong to their real owners (root's files to root)
// and can be changed (copied up into the writable layer) like any file of
// a root file system, while the image on dsec-fs stays sealed.
inline constexpr uint32_t kImageIdShift = 200000;

// OK if `name` may name an image: 1-128 characters of [A-Za-z0-9._-], not
// starting with '.'. INVALID_ARGUMENT saying what is wrong otherwise.
absl::Status ValidateImageName(absl::string_view name);

// <mount_dir>/images/<name>. REQUIRES: ValidateImageName(name).ok().
std::string ImagePath(absl::string_view mount_dir, absl::string_view name);

}  // namespace dsec::fs

#endif  // DSEC_FS_IMAGE_H_
