// Command-line plumbing shared by dsecctl's command groups: argument parsing,
// flag values, output formatting and exit codes. Pure functions.
#ifndef DSEC_CTL_CLI_UTIL_H_
#define DSEC_CTL_CLI_UTIL_H_

#include <google/protobuf/message.h>

#include <cstdint>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace dsec::ctl {

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;
  std::vector<std::string> rest;  // after "--"
  bool Has(const std::string& k) const { return flags.count(k) > 0; }
  std::string Get(const std::string& k, std::string def = "") const {
    auto it = flags.find(k);
    return it == flags.end() ? def : it->second;
  }
};

// Parses in[from..]: "--k v", "--k=v", value-less flags (--all, --wait,
// --force, --recursive/-r, --parents/-p), positionals and everything after
// "--" into `rest`.
absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& in, size_t from);
absl::StatusOr<int64_t> IntFlag(const Args& a, const std::string& k,
                                int64_t def);
absl::StatusOr<absl::Duration> DurationFlag(const Args& a, const std::string& k,
                                            absl::Duration def);

// Protobuf's JSON mapping, indented, proto field names.
std::string Json(const google::protobuf::Message& m);
// 1.5G / 12M / 4K / 17.
std::string Bytes(int64_t b);

// "error: <message>" on err; returns 1.
int Fail(std::ostream& err, const absl::Status& s);
// "usage error: <msg>" on err; returns 2.
int Usage(std::ostream& err, absl::string_view msg);

}  // namespace dsec::ctl

#endif  // DSEC_CTL_CLI_UTIL_H_
