// Sandbox images on dsec-fs: immutable (sealed) directory trees under
// /images/<name>, each a complete root file system. Agents mount dsec-fs and
// use <mount>/images/<name> as an overlay lower layer. Pure functions.
#ifndef DSEC_FS_IMAGE_H_
#define DSEC_FS_IMAGE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace dsec::fs {

// Where images live, from the root of dsec-fs.
inline constexpr char kImagesDir[] = "/images";

// OK if `name` may name an image: 1-128 characters of [A-Za-z0-9._-], not
// starting with '.'. INVALID_ARGUMENT saying what is wrong otherwise.
absl::Status ValidateImageName(absl::string_view name);

// <mount_dir>/images/<name>. REQUIRES: ValidateImageName(name).ok().
std::string ImagePath(absl::string_view mount_dir, absl::string_view name);

}  // namespace dsec::fs

#endif  // DSEC_FS_IMAGE_H_
