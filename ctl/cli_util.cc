#include "ctl/cli_util.h"

#include <google/protobuf/util/json_util.h>

#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace dsec::ctl {

// Flags that take no value.
namespace {

const std::set<std::string>& BoolFlags() {
  static const auto* s =
      new std::set<std::string>{"all", "wait", "force", "recursive", "parents"};
  return *s;
}

}  // namespace

absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& in,
                               size_t from) {
  Args a;
  for (size_t i = from; i < in.size(); ++i) {
    std::string s = in[i];
    if (s == "-r") s = "--recursive";
    if (s == "-p") s = "--parents";
    if (s == "--") {
      a.rest.assign(in.begin() + i + 1, in.end());
      break;
    }
    if (s.size() > 2 && s.rfind("--", 0) == 0) {
      std::string key = s.substr(2), value;
      size_t eq = key.find('=');
      if (eq != std::string::npos) {
        value = key.substr(eq + 1);
        key = key.substr(0, eq);
      } else if (BoolFlags().count(key)) {
        value = "true";
      } else if (i + 1 < in.size()) {
        value = in[++i];
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", key, " needs a value"));
      }
      a.flags[key] = value;
      continue;
    }
    a.positional.push_back(s);
  }
  return a;
}

absl::StatusOr<int64_t> IntFlag(const Args& a, const std::string& k,
                                int64_t def) {
  if (!a.Has(k)) return def;
  int64_t v;
  if (!absl::SimpleAtoi(a.Get(k), &v) || v < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", k, " '", a.Get(k), "' is not a non-negative integer"));
  }
  return v;
}

absl::StatusOr<absl::Duration> DurationFlag(const Args& a, const std::string& k,
                                            absl::Duration def) {
  if (!a.Has(k)) return def;
  absl::Duration d;
  if (!absl::ParseDuration(a.Get(k), &d) || d < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", k, " '", a.Get(k), "' is not a duration like 30s or 10m"));
  }
  return d;
}

std::string Json(const google::protobuf::Message& m) {
  std::string s;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &s, o);
  return s;
}

std::string Bytes(int64_t b) {
  if (b >= (1LL << 30)) return absl::StrFormat("%.1fG", b / double(1LL << 30));
  if (b >= (1LL << 20)) return absl::StrFormat("%.0fM", b / double(1LL << 20));
  if (b >= (1LL << 10)) return absl::StrFormat("%.0fK", b / double(1LL << 10));
  return absl::StrCat(b);
}

int Fail(std::ostream& err, const absl::Status& s) {
  err << "error: " << s.message() << "\n";
  return 1;
}

int Usage(std::ostream& err, absl::string_view msg) {
  err << "usage error: " << msg << "\n(run `dsecctl help` for the commands)\n";
  return 2;
}

}  // namespace dsec::ctl
