#include "common/units.h"

#include <cmath>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace dsec {

absl::StatusOr<int64_t> ParseByteSize(absl::string_view text) {
  std::string s = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  size_t end = s.find_first_not_of("0123456789.");
  std::string number = s.substr(0, end);
  std::string unit = end == std::string::npos ? "" : s.substr(end);
  double value = 0;
  if (number.empty() || !absl::SimpleAtod(number, &value) || value < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a size (like 4096, 64k, 512M, 2G)"));
  }
  double mult = 0;
  if (unit.empty() || unit == "b") {
    mult = 1;
  } else if (unit == "k" || unit == "kb" || unit == "kib") {
    mult = 1024.0;
  } else if (unit == "m" || unit == "mb" || unit == "mib") {
    mult = 1024.0 * 1024;
  } else if (unit == "g" || unit == "gb" || unit == "gib") {
    mult = 1024.0 * 1024 * 1024;
  } else if (unit == "t" || unit == "tb" || unit == "tib") {
    mult = 1024.0 * 1024 * 1024 * 1024;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "': unknown size unit '", unit, "'"));
  }
  double bytes = value * mult;
  if (bytes > 9.0e18) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is too large"));
  }
  return static_cast<int64_t>(std::llround(bytes));
}

absl::StatusOr<int64_t> ParseMillicores(absl::string_view text) {
  std::string s = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  bool milli = !s.empty() && s.back() == 'm';
  if (milli) s.pop_back();
  double value = 0;
  if (s.empty() || !absl::SimpleAtod(s, &value) || value < 0 || value > 1e6) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a CPU amount (like 500m or 1.5)"));
  }
  return static_cast<int64_t>(std::llround(milli ? value : value * 1000));
}

}  // namespace dsec
