#include "sandbox/cgroup_parse.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace dsec::sandbox::cgroup_internal {
namespace {

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string UnescapeOctal(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      const char a = s[i + 1], b = s[i + 2], c = s[i + 3];
      if (a >= '0' && a <= '3' && b >= '0' && b <= '7' && c >= '0' &&
          c <= '7') {
        out.push_back(
            static_cast<char>((a - '0') * 64 + (b - '0') * 8 + (c - '0')));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

// Iterates the lines of `text` without allocating; `fn` returns false to
// stop.
template <typename Fn>
void ForEachLine(absl::string_view text, Fn fn) {
  while (!text.empty()) {
    size_t nl = text.find('\n');
    absl::string_view line = text.substr(0, nl);
    if (!fn(line)) return;
    if (nl == absl::string_view::npos) return;
    text.remove_prefix(nl + 1);
  }
}

bool Contains(absl::Span<const std::string> list, absl::string_view name) {
  return std::find(list.begin(), list.end(), name) != list.end();
}

// `path` relative to a mount whose root is `root`, or nullopt when the
// path is not visible through that mount.
absl::optional<std::string> RelativeToRoot(absl::string_view root,
                                           absl::string_view path) {
  if (root == "/") return std::string(path);
  if (path == root) return std::string("/");
  if (absl::StartsWith(path, root) && path.size() > root.size() &&
      path[root.size()] == '/') {
    return std::string(path.substr(root.size()));
  }
  return absl::nullopt;
}

std::string JoinMountPath(absl::string_view mount_point,
                          absl::string_view relative) {
  absl::string_view base = absl::StripSuffix(mount_point, "/");
  absl::string_view rel = absl::StripSuffix(relative, "/");
  std::string out =
      absl::StrCat(base, rel.empty() || rel.front() == '/' ? "" : "/", rel);
  if (out.empty()) out.push_back('/');
  return out;
}

absl::Status CheckCgroupPath(absl::string_view path) {
  if (path.empty() || path.front() != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("cgroup path '", path, "' is not absolute"));
  }
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("cgroup path '", path, "' contains '..'"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<MountInfo>> ParseMountInfo(absl::string_view text) {
  std::vector<MountInfo> out;
  absl::Status status;
  int line_no = 0;
  ForEachLine(text, [&](absl::string_view line) {
    ++line_no;
    if (absl::StripAsciiWhitespace(line).empty()) return true;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, ' ', absl::SkipEmpty());
    // id parent maj:min root mount_point options [optional...] - type source
    // super_options
    auto sep = std::find(fields.begin(), fields.end(), "-");
    if (fields.size() < 10 || sep == fields.end() || sep - fields.begin() < 6 ||
        fields.end() - sep < 4) {
      status = absl::InvalidArgumentError(absl::StrCat(
          "mountinfo line ", line_no, " is malformed: '", line, "'"));
      return false;
    }
    MountInfo m;
    m.root = UnescapeOctal(fields[3]);
    m.mount_point = UnescapeOctal(fields[4]);
    m.fs_type = std::string(sep[1]);
    m.super_options = absl::StrSplit(sep[3], ',', absl::SkipEmpty());
    out.push_back(std::move(m));
    return true;
  });
  if (!status.ok()) return status;
  return out;
}

absl::StatusOr<std::vector<ProcCgroup>> ParseProcCgroup(
    absl::string_view text) {
  std::vector<ProcCgroup> out;
  absl::Status status;
  ForEachLine(text, [&](absl::string_view line) {
    if (absl::StripAsciiWhitespace(line).empty()) return true;
    // The path may itself contain ':'; split into three at the first two.
    std::vector<absl::string_view> parts =
        absl::StrSplit(line, absl::MaxSplits(':', 2));
    ProcCgroup c;
    if (parts.size() != 3 || !absl::SimpleAtoi(parts[0], &c.hierarchy_id)) {
      status = absl::InvalidArgumentError(
          absl::StrCat("malformed /proc/self/cgroup line '", line, "'"));
      return false;
    }
    c.controllers = absl::StrSplit(parts[1], ',', absl::SkipEmpty());
    c.path = std::string(parts[2]);
    out.push_back(std::move(c));
    return true;
  });
  if (!status.ok()) return status;
  return out;
}

absl::optional<int64_t> FindKeyedValue(absl::string_view text,
                                       absl::string_view key) {
  absl::optional<int64_t> result;
  ForEachLine(text, [&](absl::string_view line) {
    if (line.size() > key.size() && absl::StartsWith(line, key) &&
        line[key.size()] == ' ') {
      int64_t v;
      if (absl::SimpleAtoi(line.substr(key.size() + 1), &v)) result = v;
      return false;
    }
    return true;
  });
  return result;
}

absl::optional<int64_t> ParseCounter(absl::string_view text) {
  absl::string_view v = absl::StripAsciiWhitespace(text);
  if (v == "max") return std::numeric_limits<int64_t>::max();
  int64_t out;
  if (!absl::SimpleAtoi(v, &out)) return absl::nullopt;
  return out;
}

std::vector<pid_t> ParsePidList(absl::string_view text) {
  std::vector<pid_t> pids;
  ForEachLine(text, [&](absl::string_view line) {
    pid_t pid;
    if (absl::SimpleAtoi(line, &pid) && pid > 0) pids.push_back(pid);
    return true;
  });
  std::sort(pids.begin(), pids.end());
  pids.erase(std::unique(pids.begin(), pids.end()), pids.end());
  return pids;
}

bool HasAllTokens(absl::string_view list,
                  absl::Span<const std::string> wanted) {
  std::vector<absl::string_view> tokens =
      absl::StrSplit(list, absl::ByAnyChar(" \t\n"), absl::SkipEmpty());
  for (const std::string& w : wanted) {
    if (std::find(tokens.begin(), tokens.end(), w) == tokens.end()) {
      return false;
    }
  }
  return true;
}

absl::StatusOr<std::vector<HierarchyPlan>> PlanV1(
    absl::Span<const MountInfo> mounts, absl::Span<const ProcCgroup> cgroups,
    absl::Span<const std::string> wanted, absl::string_view parent_override) {
  if (!parent_override.empty()) {
    if (absl::Status s = CheckCgroupPath(parent_override); !s.ok()) return s;
  }
  std::vector<HierarchyPlan> plans;
  for (const std::string& controller : wanted) {
    const ProcCgroup* own = nullptr;
    for (const ProcCgroup& c : cgroups) {
      if (c.hierarchy_id != 0 && Contains(c.controllers, controller)) {
        own = &c;
        break;
      }
    }
    std::string cgroup_path = !parent_override.empty()
                                  ? std::string(parent_override)
                              : own != nullptr ? own->path
                                               : std::string();
    bool mounted = false;
    absl::optional<std::string> found;
    for (const MountInfo& m : mounts) {
      if (m.fs_type != "cgroup" || !Contains(m.super_options, controller)) {
        continue;
      }
      mounted = true;
      if (cgroup_path.empty()) continue;
      if (absl::optional<std::string> rel =
              RelativeToRoot(m.root, cgroup_path)) {
        found = JoinMountPath(m.mount_point, *rel);
        break;
      }
    }
    if (!mounted) {
      return absl::FailedPreconditionError(
          absl::StrCat("cgroup v1 '", controller, "' hierarchy not mounted"));
    }
    if (cgroup_path.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "this process has no cgroup in the v1 '", controller, "' hierarchy"));
    }
    if (!found) {
      return absl::FailedPreconditionError(
          absl::StrCat("cgroup '", cgroup_path, "' is not visible under any '",
                       controller, "' mount"));
    }
    auto same = std::find_if(plans.begin(), plans.end(), [&](const auto& p) {
      return p.parent_path == *found;
    });
    if (same != plans.end()) {
      same->controllers.push_back(controller);
    } else {
      plans.push_back(HierarchyPlan{*found, {controller}});
    }
  }
  return plans;
}

absl::StatusOr<HierarchyPlan> PlanV2(absl::Span<const MountInfo> mounts,
                                     absl::Span<const ProcCgroup> cgroups,
                                     absl::string_view parent_override) {
  std::string cgroup_path;
  if (!parent_override.empty()) {
    if (absl::Status s = CheckCgroupPath(parent_override); !s.ok()) return s;
    cgroup_path = std::string(parent_override);
  } else {
    for (const ProcCgroup& c : cgroups) {
      if (c.hierarchy_id == 0 && c.controllers.empty()) {
        cgroup_path = c.path;
        break;
      }
    }
    if (cgroup_path.empty()) {
      return absl::FailedPreconditionError(
          "this process has no cgroup v2 ('0::') entry in /proc/self/cgroup");
    }
  }
  bool mounted = false;
  for (const MountInfo& m : mounts) {
    if (m.fs_type != "cgroup2") continue;
    mounted = true;
    if (absl::optional<std::string> rel = RelativeToRoot(m.root, cgroup_path)) {
      return HierarchyPlan{JoinMountPath(m.mount_point, *rel), {}};
    }
  }
  if (!mounted) {
    return absl::FailedPreconditionError("cgroup v2 hierarchy not mounted");
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "cgroup '", cgroup_path, "' is not visible under any cgroup2 mount"));
}

}  // namespace dsec::sandbox::cgroup_internal
