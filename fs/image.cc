#include "fs/image.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace dsec::fs {

absl::Status ValidateImageName(absl::string_view name) {
  if (name.empty() || name.size() > 128 || name[0] == '.') {
    return absl::InvalidArgumentError(absl::StrCat(
        "image name '", std::string(name),
        "' must be 1-128 characters of [A-Za-z0-9._-], not starting with '.'"));
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat("image name '", std::string(name), "' has character '",
                       std::string(1, c), "'; use [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

std::string ImagePath(absl::string_view mount_dir, absl::string_view name) {
  return absl::StrCat(mount_dir, kImagesDir, "/", name);
}

}  // namespace dsec::fs
