// Invariant: every path from a caller is resolved by the kernel relative to
// root_ with RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS; nothing here joins
// path strings onto a host directory. Operations that must not follow the
// final component (write, delete, lstat) resolve the parent directory that
// way and then act on the last component with *at() calls and O_NOFOLLOW.
#include "sandbox/safe_fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/errno_status.h"
#include "common/scope_guard.h"
#include "common/status_macros.h"

namespace dsec::sandbox {
namespace {

constexpr uint64_t kResolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;

absl::Status ValidatePath(absl::string_view path) {
  if (path.empty()) return absl::InvalidArgumentError("path is empty");
  if (path.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError("path contains a NUL byte");
  }
  if (path.size() >= PATH_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "path is ", path.size(), " bytes; the limit is ", PATH_MAX - 1));
  }
  return absl::OkStatus();
}

// openat2 under the root; retries the EAGAIN that RESOLVE_IN_ROOT returns
// when a rename races with the lookup.
int OpenInRoot(int root, const std::string& path, uint64_t flags,
               uint64_t mode = 0) {
  open_how how{};
  how.flags = flags | O_CLOEXEC;
  how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
  how.resolve = kResolve;
  const char* p = path.empty() ? "." : path.c_str();
  for (int attempt = 0; attempt < 16; ++attempt) {
    int fd = static_cast<int>(syscall(SYS_openat2, root, p, &how, sizeof(how)));
    if (fd >= 0 || errno != EAGAIN) return fd;
  }
  return -1;
}

absl::Status PathError(absl::string_view op, absl::string_view path) {
  int e = errno;
  if (e == ELOOP) {
    return absl::FailedPreconditionError(absl::StrCat(
        op, " '", path, "': is a symlink or a link loop (not followed)"));
  }
  if (e == EXDEV) {
    return absl::PermissionDeniedError(
        absl::StrCat(op, " '", path, "': path leaves the sandbox"));
  }
  return dsec::ErrnoToStatus(e, absl::StrCat(op, " '", path, "'"));
}

// Splits "a/b/c" into ("a/b", "c"); "c" into ("", "c"); "/" into ("", ".").
std::pair<std::string, std::string> SplitParent(absl::string_view path) {
  std::string p(path);
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  size_t slash = p.rfind('/');
  if (slash == std::string::npos) return {"", p};
  std::string parent = p.substr(0, slash);
  if (parent.empty()) parent = "/";
  std::string base = p.substr(slash + 1);
  if (base.empty()) base = ".";
  return {parent, base};
}

absl::Status CheckLeaf(absl::string_view op, const std::string& leaf) {
  if (leaf.empty() || leaf == "." || leaf == ".." || leaf == "/") {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": the path must name an entry, not '", leaf, "'"));
  }
  return absl::OkStatus();
}

FileType TypeOf(mode_t mode) {
  if (S_ISREG(mode)) return FileType::kRegular;
  if (S_ISDIR(mode)) return FileType::kDirectory;
  if (S_ISLNK(mode)) return FileType::kSymlink;
  return FileType::kOther;
}

FileInfo InfoFrom(std::string name, const struct stat& st) {
  FileInfo info;
  info.name = std::move(name);
  info.type = TypeOf(st.st_mode);
  info.size = st.st_size;
  info.mode = st.st_mode & 07777;
  info.mtime_ns = st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
  return info;
}

std::string ReadLinkAt(int dirfd, const char* name) {
  char buf[PATH_MAX];
  ssize_t n = readlinkat(dirfd, name, buf, sizeof(buf));
  return n > 0 ? std::string(buf, n) : std::string();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafeRoot>> SafeRoot::Open(
    absl::string_view root_dir) {
  std::string dir(root_dir);
  UniqueFd fd(open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return dsec::ErrnoStatus(absl::StrCat("open root ", dir));
  return std::unique_ptr<SafeRoot>(new SafeRoot(std::move(fd)));
}

std::unique_ptr<SafeRoot> SafeRoot::Adopt(UniqueFd root_dir) {
  return std::unique_ptr<SafeRoot>(new SafeRoot(std::move(root_dir)));
}

absl::StatusOr<UniqueFd> SafeRoot::OpenForRead(absl::string_view path) const {
  RETURN_IF_ERROR(ValidatePath(path));
  std::string p(path);
  // O_NONBLOCK: a FIFO planted by the sandbox must not hang the host.
  UniqueFd fd(OpenInRoot(root_.get(), p, O_RDONLY | O_NONBLOCK | O_NOCTTY));
  if (!fd) return PathError("open", path);
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return PathError("stat", path);
  if (S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("read '", path, "': is a directory"));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "read '", path, "': not a regular file (device, FIFO or socket)"));
  }
  fcntl(fd.get(), F_SETFL, 0);
  return fd;
}

absl::StatusOr<std::string> SafeRoot::ReadFile(absl::string_view path,
                                               int64_t offset,
                                               int64_t max_bytes) const {
  if (offset < 0 || max_bytes < 0) {
    return absl::InvalidArgumentError("offset and max_bytes must be >= 0");
  }
  ASSIGN_OR_RETURN(UniqueFd fd, OpenForRead(path));
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return PathError("stat", path);
  const int64_t want = std::max<int64_t>(0, st.st_size - offset);
  if (want > max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "read '", path, "': ", want, " bytes from offset ", offset,
        " exceed the limit of ", max_bytes, "; read it in ranges"));
  }
  std::string data;
  data.resize(want);
  int64_t done = 0;
  while (done < want) {
    ssize_t n = pread(fd.get(), data.data() + done, want - done, offset + done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return PathError("read", path);
    }
    if (n == 0) break;  // shrank under us
    done += n;
  }
  data.resize(done);
  return data;
}

absl::StatusOr<UniqueFd> SafeRoot::OpenForWrite(
    absl::string_view path, const WriteOptions& options) const {
  RETURN_IF_ERROR(ValidatePath(path));
  auto [parent, leaf] = SplitParent(path);
  RETURN_IF_ERROR(CheckLeaf("write", leaf));
  if (options.create_parents && !parent.empty()) {
    RETURN_IF_ERROR(MakeDirs(parent, 0755, options.uid, options.gid));
  }
  UniqueFd dir(OpenInRoot(root_.get(), parent, O_PATH | O_DIRECTORY));
  if (!dir) return PathError("open parent of", path);
  int flags = O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY;
  flags |= options.append ? O_APPEND : O_TRUNC;
  if (options.exclusive) flags |= O_EXCL;
  // Refuse to write through anything but a regular file.
  struct stat st;
  const bool existed =
      fstatat(dir.get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
  if (existed && !S_ISREG(st.st_mode)) {
    if (options.exclusive) {
      return absl::AlreadyExistsError(absl::StrCat("'", path, "' exists"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat("write '", path, "': ",
                     S_ISLNK(st.st_mode)   ? "is a symlink (not followed)"
                     : S_ISDIR(st.st_mode) ? "is a directory"
                                           : "not a regular file"));
  }
  UniqueFd fd(
      openat(dir.get(), leaf.c_str(), flags | O_NONBLOCK, options.mode));
  if (!fd) {
    if (errno == EEXIST) {
      return absl::AlreadyExistsError(absl::StrCat("'", path, "' exists"));
    }
    return PathError("write", path);
  }
  // The entry may have been swapped between the check and the open.
  if (fstat(fd.get(), &st) != 0) return PathError("stat", path);
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("write '", path, "': not a regular file"));
  }
  fcntl(fd.get(), F_SETFL, options.append ? O_APPEND : 0);
  if (!existed && (options.uid != 0 || options.gid != 0)) {
    if (fchown(fd.get(), options.uid, options.gid) != 0) {
      return PathError("chown", path);
    }
  }
  return fd;
}

absl::Status SafeRoot::WriteFile(absl::string_view path, absl::string_view data,
                                 const WriteOptions& options) const {
  ASSIGN_OR_RETURN(UniqueFd fd, OpenForWrite(path, options));
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd.get(), data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return PathError("write", path);
    }
    done += n;
  }
  return absl::OkStatus();
}

absl::StatusOr<FileInfo> SafeRoot::Stat(absl::string_view path) const {
  RETURN_IF_ERROR(ValidatePath(path));
  auto [parent, leaf] = SplitParent(path);
  UniqueFd dir(OpenInRoot(root_.get(), parent, O_PATH | O_DIRECTORY));
  if (!dir) return PathError("stat", path);
  struct stat st;
  const char* name = leaf == "." ? "" : leaf.c_str();
  int flags = AT_SYMLINK_NOFOLLOW | (leaf == "." ? AT_EMPTY_PATH : 0);
  if (leaf == "..") {
    return absl::InvalidArgumentError("stat: path must not end in '..'");
  }
  if (fstatat(dir.get(), name, &st, flags) != 0) return PathError("stat", path);
  FileInfo info = InfoFrom(std::string(path), st);
  if (info.type == FileType::kSymlink) {
    info.symlink_target = ReadLinkAt(dir.get(), leaf.c_str());
  }
  return info;
}

absl::StatusOr<std::vector<FileInfo>> SafeRoot::List(
    absl::string_view path) const {
  RETURN_IF_ERROR(ValidatePath(path));
  std::string p(path);
  int fd = OpenInRoot(root_.get(), p, O_RDONLY | O_DIRECTORY);
  if (fd < 0) return PathError("list", path);
  DIR* d = fdopendir(fd);
  if (d == nullptr) {
    close(fd);
    return PathError("list", path);
  }
  auto close_dir = MakeScopeGuard([d] { closedir(d); });
  std::vector<FileInfo> out;
  while (dirent* e = readdir(d)) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    FileInfo info = InfoFrom(e->d_name, st);
    if (info.type == FileType::kSymlink) {
      info.symlink_target = ReadLinkAt(dirfd(d), e->d_name);
    }
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(), [](const FileInfo& a, const FileInfo& b) {
    return a.name < b.name;
  });
  return out;
}

absl::Status SafeRoot::Delete(absl::string_view path, bool recursive) const {
  RETURN_IF_ERROR(ValidatePath(path));
  auto [parent, leaf] = SplitParent(path);
  RETURN_IF_ERROR(CheckLeaf("delete", leaf));
  UniqueFd dir(OpenInRoot(root_.get(), parent, O_PATH | O_DIRECTORY));
  if (!dir) return PathError("delete", path);
  struct stat st;
  if (fstatat(dir.get(), leaf.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    return PathError("delete", path);
  }
  if (!S_ISDIR(st.st_mode)) {
    if (unlinkat(dir.get(), leaf.c_str(), 0) != 0)
      return PathError("delete", path);
    return absl::OkStatus();
  }
  if (!recursive) {
    if (unlinkat(dir.get(), leaf.c_str(), AT_REMOVEDIR) != 0) {
      return PathError("delete", path);
    }
    return absl::OkStatus();
  }
  // Depth-first with an explicit stack of open directories; never follows
  // a symlink (O_NOFOLLOW on every open, unlinkat on links themselves).
  struct Frame {
    UniqueFd parent;  // directory holding `name`
    std::string name;
    bool expanded = false;
  };
  constexpr size_t kMaxDepth = 4096;
  std::vector<Frame> stack;
  {
    UniqueFd p(OpenInRoot(root_.get(), parent, O_RDONLY | O_DIRECTORY));
    if (!p) return PathError("delete", path);
    stack.push_back({std::move(p), leaf});
  }
  while (!stack.empty()) {
    Frame& top = stack.back();
    if (top.expanded) {
      if (unlinkat(top.parent.get(), top.name.c_str(), AT_REMOVEDIR) != 0 &&
          errno != ENOENT) {
        return PathError("delete", top.name);
      }
      stack.pop_back();
      continue;
    }
    top.expanded = true;
    int fd = openat(top.parent.get(), top.name.c_str(),
                    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return PathError("delete", top.name);
    DIR* d = fdopendir(fd);
    if (d == nullptr) {
      close(fd);
      return PathError("delete", top.name);
    }
    auto close_dir = MakeScopeGuard([d] { closedir(d); });
    std::vector<std::string> subdirs;
    while (dirent* e = readdir(d)) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      struct stat est;
      if (fstatat(dirfd(d), e->d_name, &est, AT_SYMLINK_NOFOLLOW) != 0)
        continue;
      if (S_ISDIR(est.st_mode)) {
        subdirs.push_back(e->d_name);
      } else if (unlinkat(dirfd(d), e->d_name, 0) != 0 && errno != ENOENT) {
        return PathError("delete", e->d_name);
      }
    }
    if (stack.size() + subdirs.size() > kMaxDepth * 64 ||
        stack.size() > kMaxDepth) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "delete '", path, "': tree deeper than ", kMaxDepth, " levels"));
    }
    for (std::string& sub : subdirs) {
      int dup = fcntl(dirfd(d), F_DUPFD_CLOEXEC, 0);
      if (dup < 0) return PathError("delete", path);
      stack.push_back({UniqueFd(dup), std::move(sub)});
    }
  }
  return absl::OkStatus();
}

absl::Status SafeRoot::MakeDirs(absl::string_view path, uint32_t mode,
                                uid_t uid, gid_t gid) const {
  RETURN_IF_ERROR(ValidatePath(path));
  // One component at a time; each parent is resolved inside the root, so a
  // symlinked component (planted or not) is followed but stays confined.
  std::string p(path), prefix;
  size_t pos = 0;
  while (pos < p.size()) {
    size_t next = p.find('/', pos);
    if (next == std::string::npos) next = p.size();
    std::string comp = p.substr(pos, next - pos);
    pos = next + 1;
    if (comp.empty() || comp == ".") continue;
    if (comp == "..") {
      return absl::InvalidArgumentError("mkdir: '..' is not allowed in paths");
    }
    UniqueFd parent(OpenInRoot(root_.get(), prefix.empty() ? "/" : prefix,
                               O_PATH | O_DIRECTORY));
    if (!parent) return PathError("mkdir", prefix.empty() ? "/" : prefix);
    if (mkdirat(parent.get(), comp.c_str(), mode) == 0) {
      if (uid != 0 || gid != 0) {
        fchownat(parent.get(), comp.c_str(), uid, gid, AT_SYMLINK_NOFOLLOW);
      }
    } else if (errno != EEXIST) {
      return PathError("mkdir", path);
    }
    prefix += "/" + comp;
  }
  return absl::OkStatus();
}

}  // namespace dsec::sandbox
