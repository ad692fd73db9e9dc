// Parsing of human-written quantities used by flags and config:
// byte sizes ("512M", "1.5GiB", "4096") and CPU amounts ("500m", "1.5").
// Pure functions, thread-safe.
#ifndef DSEC_COMMON_UNITS_H_
#define DSEC_COMMON_UNITS_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dsec {

// "1024", "64k", "512M", "2G", "1.5GiB", "10MB" (K/M/G/T are powers of 1024,
// with or without "i"/"B"). INVALID_ARGUMENT for anything else or overflow.
absl::StatusOr<int64_t> ParseByteSize(absl::string_view text);

// CPU in millicores: "500m" -> 500, "2" -> 2000, "0.25" -> 250.
absl::StatusOr<int64_t> ParseMillicores(absl::string_view text);

}  // namespace dsec

#endif  // DSEC_COMMON_UNITS_H_
