#include "sandbox/rootfs.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/errno_status.h"
#include "common/scope_guard.h"
#include "common/status_macros.h"

namespace dsec::sandbox {
namespace {

absl::Status MkdirIfMissing(const std::string& path, mode_t mode) {
  if (mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return dsec::ErrnoStatus(absl::StrCat("mkdir ", path));
  }
  return absl::OkStatus();
}

absl::Status WriteStringToFile(const std::string& path, const std::string& data,
                               mode_t mode) {
  UniqueFd fd(
      open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  if (!fd) return dsec::ErrnoStatus(absl::StrCat("create ", path));
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd.get(), data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return dsec::ErrnoStatus(absl::StrCat("write ", path));
    }
    done += n;
  }
  return absl::OkStatus();
}

// chown -hR: every entry below and including `dir`, never following links.
absl::Status ChownTree(const std::string& dir, uid_t uid, gid_t gid) {
  std::vector<std::string> stack = {dir};
  if (lchown(dir.c_str(), uid, gid) != 0) {
    return dsec::ErrnoStatus(absl::StrCat("chown ", dir));
  }
  while (!stack.empty()) {
    std::string cur = std::move(stack.back());
    stack.pop_back();
    DIR* d = opendir(cur.c_str());
    if (d == nullptr) return dsec::ErrnoStatus(absl::StrCat("opendir ", cur));
    auto close_dir = MakeScopeGuard([d] { closedir(d); });
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      std::string path = absl::StrCat(cur, "/", name);
      if (lchown(path.c_str(), uid, gid) != 0) {
        return dsec::ErrnoStatus(absl::StrCat("chown ", path));
      }
      if (e->d_type == DT_DIR) stack.push_back(path);
    }
  }
  return absl::OkStatus();
}

// Calls fn(name, value) for each extended attribute of `fd` (none where the
// file system has no xattrs).
absl::Status ForEachXattr(
    int fd, const std::string& what,
    const std::function<absl::Status(const char*, absl::string_view)>& fn) {
  char names[4096];
  ssize_t len = flistxattr(fd, names, sizeof(names));
  if (len < 0) {
    if (errno == ENOTSUP || errno == EBADF) return absl::OkStatus();
    return dsec::ErrnoStatus(absl::StrCat("listxattr ", what));
  }
  for (ssize_t off = 0; off < len;) {
    const char* name = names + off;
    off += strlen(name) + 1;
    char value[4096];
    ssize_t vlen = fgetxattr(fd, name, value, sizeof(value));
    if (vlen < 0) continue;
    RETURN_IF_ERROR(fn(name, absl::string_view(value, vlen)));
  }
  return absl::OkStatus();
}

absl::Status CopyXattrs(int src_fd, int dst_fd, const std::string& what) {
  return ForEachXattr(
      src_fd, what,
      [&](const char* name, absl::string_view value) -> absl::Status {
        if (fsetxattr(dst_fd, name, value.data(), value.size(), 0) != 0 &&
            errno != ENOTSUP) {
          return dsec::ErrnoStatus(
              absl::StrCat("setxattr ", name, " on ", what));
        }
        return absl::OkStatus();
      });
}

absl::Status CopyFileData(int src_fd, int dst_fd, off_t size,
                          const std::string& what) {
  off_t copied = 0;
  while (copied < size) {
    ssize_t n =
        copy_file_range(src_fd, nullptr, dst_fd, nullptr, size - copied, 0);
    if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS)) {
      char buf[65536];
      n = read(src_fd, buf, sizeof(buf));
      if (n > 0 && write(dst_fd, buf, n) != n) {
        return dsec::ErrnoStatus(absl::StrCat("write ", what));
      }
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      return dsec::ErrnoStatus(absl::StrCat("copy ", what));
    }
    if (n == 0) break;  // file shrank under us
    copied += n;
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<HostBind> DefaultHostBinds() {
  std::vector<HostBind> binds;
  for (const char* path :
       {"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}) {
    struct stat st;
    if (lstat(path, &st) != 0) continue;
    HostBind b;
    b.path = path;
    if (S_ISLNK(st.st_mode)) {
      char target[PATH_MAX];
      ssize_t n = readlink(path, target, sizeof(target) - 1);
      if (n <= 0) continue;
      b.is_symlink = true;
      b.symlink_target.assign(target, n);
    } else if (!S_ISDIR(st.st_mode)) {
      continue;
    }
    binds.push_back(std::move(b));
  }
  return binds;
}

absl::Status WriteDefaultImage(const std::string& dir, uid_t owner) {
  RETURN_IF_ERROR(MkdirIfMissing(dir, 0755));
  for (const auto& [name, mode] :
       std::vector<std::pair<const char*, mode_t>>{{"etc", 0755},
                                                   {"root", 0700},
                                                   {"tmp", 01777},
                                                   {"proc", 0555},
                                                   {"dev", 0755},
                                                   {"sys", 0555},
                                                   {"home", 0755},
                                                   {"run", 0755},
                                                   {"var", 0755},
                                                   {"var/tmp", 01777},
                                                   {"mnt", 0755},
                                                   {"opt", 0755},
                                                   {"srv", 0755},
                                                   {"workspace", 0755}}) {
    std::string path = absl::StrCat(dir, "/", name);
    RETURN_IF_ERROR(MkdirIfMissing(path, mode));
    chmod(path.c_str(), mode);  // umask-proof
  }
  for (const HostBind& b : DefaultHostBinds()) {
    std::string path = absl::StrCat(dir, b.path);
    if (b.is_symlink) {
      if (symlink(b.symlink_target.c_str(), path.c_str()) != 0 &&
          errno != EEXIST) {
        return dsec::ErrnoStatus(absl::StrCat("symlink ", path));
      }
    } else {
      RETURN_IF_ERROR(MkdirIfMissing(path, 0755));
    }
  }
  const std::string etc = absl::StrCat(dir, "/etc/");
  RETURN_IF_ERROR(WriteStringToFile(
      etc + "passwd",
      "root:x:0:0:root:/root:/bin/bash\n"
      "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
      0644));
  RETURN_IF_ERROR(WriteStringToFile(
      etc + "group", "root:x:0:\ntty:x:5:\nusers:x:100:\nnogroup:x:65534:\n",
      0644));
  RETURN_IF_ERROR(WriteStringToFile(
      etc + "hosts", "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost\n", 0644));
  RETURN_IF_ERROR(WriteStringToFile(etc + "hostname", "sandbox\n", 0644));
  RETURN_IF_ERROR(WriteStringToFile(etc + "resolv.conf", "", 0644));
  RETURN_IF_ERROR(
      WriteStringToFile(etc + "nsswitch.conf",
                        "passwd: files\ngroup: files\nhosts: files\n", 0644));
  // Host configuration that the bound /usr needs to work: the dynamic
  // linker's cache, Debian's alternatives symlinks (cc, awk, ...), and
  // interpreter site configuration.
  for (const char* name :
       {"ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "python3",
        "python3.11", "localtime", "ssl"}) {
    std::string src = absl::StrCat("/etc/", name);
    struct stat st;
    if (lstat(src.c_str(), &st) != 0) continue;
    std::string dst = etc + name;
    if (S_ISLNK(st.st_mode)) {
      char target[PATH_MAX];
      ssize_t n = readlink(src.c_str(), target, sizeof(target) - 1);
      if (n > 0) {
        target[n] = '\0';
        if (symlink(target, dst.c_str()) != 0 && errno != EEXIST) {
          return dsec::ErrnoStatus(absl::StrCat("symlink ", dst));
        }
      }
    } else if (S_ISDIR(st.st_mode)) {
      UniqueFd src_fd(open(src.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!src_fd) continue;
      RETURN_IF_ERROR(CopyLayerTree(src_fd.get(), dst));
    } else if (S_ISREG(st.st_mode)) {
      UniqueFd in(open(src.c_str(), O_RDONLY | O_CLOEXEC));
      UniqueFd out(open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                        st.st_mode & 07777));
      if (!in || !out) return dsec::ErrnoStatus(absl::StrCat("copy ", src));
      RETURN_IF_ERROR(CopyFileData(in.get(), out.get(), st.st_size, src));
    }
  }
  return ChownTree(dir, owner, owner);
}

absl::Status MountDevTemplate(const std::string& dir) {
  RETURN_IF_ERROR(MkdirIfMissing(dir, 0755));
  if (mount("dsec-dev", dir.c_str(), "tmpfs", MS_NOSUID | MS_NOEXEC,
            "mode=0755,size=64k,nr_inodes=64") != 0) {
    return dsec::ErrnoStatus(absl::StrCat("mount tmpfs ", dir));
  }
  auto undo = MakeScopeGuard([&] { UnmountTree(dir).IgnoreError(); });
  for (const char* dev : {"null", "zero", "full", "random", "urandom", "tty"}) {
    std::string src = absl::StrCat("/dev/", dev);
    std::string dst = absl::StrCat(dir, "/", dev);
    RETURN_IF_ERROR(WriteStringToFile(dst, "", 0666));
    if (mount(src.c_str(), dst.c_str(), nullptr, MS_BIND, nullptr) != 0) {
      return dsec::ErrnoStatus(absl::StrCat("bind ", src));
    }
  }
  for (const char* sub : {"pts", "shm", "mqueue"}) {
    RETURN_IF_ERROR(MkdirIfMissing(absl::StrCat(dir, "/", sub), 0755));
  }
  for (const auto& [name, target] :
       std::vector<std::pair<const char*, const char*>>{
           {"ptmx", "pts/ptmx"},
           {"fd", "/proc/self/fd"},
           {"stdin", "/proc/self/fd/0"},
           {"stdout", "/proc/self/fd/1"},
           {"stderr", "/proc/self/fd/2"}}) {
    std::string path = absl::StrCat(dir, "/", name);
    if (symlink(target, path.c_str()) != 0 && errno != EEXIST) {
      return dsec::ErrnoStatus(absl::StrCat("symlink ", path));
    }
  }
  if (mount(nullptr, dir.c_str(), nullptr,
            MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, nullptr) != 0) {
    return dsec::ErrnoStatus(absl::StrCat("remount ro ", dir));
  }
  std::move(undo).Cancel();
  return absl::OkStatus();
}

absl::Status UnmountTree(const std::string& dir) {
  std::ifstream in("/proc/self/mountinfo");
  std::vector<std::string> targets;
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> f = absl::StrSplit(line, ' ');
    if (f.size() < 5) continue;
    const std::string& mp = f[4];
    if (mp == dir ||
        (mp.size() > dir.size() && mp.compare(0, dir.size(), dir) == 0 &&
         mp[dir.size()] == '/')) {
      targets.push_back(mp);
    }
  }
  std::sort(targets.begin(), targets.end(),
            [](const std::string& a, const std::string& b) {
              return a.size() > b.size();
            });
  absl::Status result;
  for (const std::string& t : targets) {
    if (umount2(t.c_str(), MNT_DETACH) != 0 && errno != EINVAL &&
        errno != ENOENT) {
      result.Update(dsec::ErrnoStatus(absl::StrCat("umount ", t)));
    }
  }
  return result;
}

absl::StatusOr<UniqueFd> CreateUserNamespace(uid_t base, uint32_t count) {
  int sync[2];
  if (pipe2(sync, O_CLOEXEC) != 0) return dsec::ErrnoStatus("pipe");
  UniqueFd rd(sync[0]), wr(sync[1]);
  pid_t pid = fork();
  if (pid < 0) return dsec::ErrnoStatus("fork");
  if (pid == 0) {
    // Child: enter a new user namespace, then wait to be killed.
    char c = unshare(CLONE_NEWUSER) == 0 ? 'k' : 'e';
    (void)!write(wr.get(), &c, 1);
    pause();
    _exit(0);
  }
  auto reap = MakeScopeGuard([pid] {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  });
  wr.Reset();
  char c = 0;
  if (read(rd.get(), &c, 1) != 1 || c != 'k') {
    return absl::FailedPreconditionError(
        "unshare(CLONE_NEWUSER) failed: user namespaces are disabled on "
        "this host (check user.max_user_namespaces)");
  }
  std::string map = absl::StrCat("0 ", base, " ", count, "\n");
  for (const char* file : {"uid_map", "gid_map"}) {
    std::string path = absl::StrCat("/proc/", pid, "/", file);
    UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd || write(fd.get(), map.data(), map.size()) !=
                   static_cast<ssize_t>(map.size())) {
      return dsec::ErrnoStatus(absl::StrCat("write ", path, " '", map, "'"));
    }
  }
  std::string ns = absl::StrCat("/proc/", pid, "/ns/user");
  UniqueFd fd(open(ns.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return dsec::ErrnoStatus(absl::StrCat("open ", ns));
  return fd;
}

namespace {

// `dst` relative to `root` ("" for the root itself).
std::string RelativeTo(const std::string& root, const std::string& dst) {
  return dst.size() <= root.size() ? "" : dst.substr(root.size() + 1);
}

// Xattrs that mean the same in any copy of a layer: the opaque-directory
// mark and user data. The overlay's bookkeeping of one mount (uuid, origin,
// impure...) and security.* (file capabilities) do not travel.
bool PortableXattr(absl::string_view name) {
  return name == "trusted.overlay.opaque" || absl::StartsWith(name, "user.");
}

absl::Status RecordXattrs(int src_fd, const std::string& rel,
                          const std::string& what, LayerExtras* extras) {
  return ForEachXattr(
      src_fd, what,
      [&](const char* name, absl::string_view value) -> absl::Status {
        if (PortableXattr(name)) {
          extras->xattrs.push_back({rel, name, std::string(value)});
        }
        return absl::OkStatus();
      });
}

// Xattrs of `src_fd` onto `dst_fd`, or into `extras` when it is set.
absl::Status CopyOrRecordXattrs(int src_fd, int dst_fd, const std::string& root,
                                const std::string& dst, LayerExtras* extras) {
  if (extras != nullptr) {
    return RecordXattrs(src_fd, RelativeTo(root, dst), dst, extras);
  }
  return CopyXattrs(src_fd, dst_fd, dst);
}

}  // namespace

absl::Status CopyLayerTree(int src_dirfd, const std::string& dst_dir,
                           LayerExtras* extras) {
  struct Pending {
    UniqueFd src;
    std::string dst;
  };
  struct stat root_st;
  if (fstat(src_dirfd, &root_st) != 0) return dsec::ErrnoStatus("fstat");
  if (mkdir(dst_dir.c_str(), root_st.st_mode & 07777) != 0 && errno != EEXIST) {
    return dsec::ErrnoStatus(absl::StrCat("mkdir ", dst_dir));
  }
  int dup_fd = fcntl(src_dirfd, F_DUPFD_CLOEXEC, 0);
  if (dup_fd < 0) return dsec::ErrnoStatus("dup");
  std::vector<Pending> stack;
  stack.push_back({UniqueFd(dup_fd), dst_dir});
  std::vector<std::pair<std::string, struct stat>> dir_attrs;
  dir_attrs.push_back({dst_dir, root_st});
  {
    UniqueFd dst_fd(open(dst_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dst_fd) {
      RETURN_IF_ERROR(CopyOrRecordXattrs(src_dirfd, dst_fd.get(), dst_dir,
                                         dst_dir, extras));
    }
  }
  while (!stack.empty()) {
    Pending cur = std::move(stack.back());
    stack.pop_back();
    int iter_fd =
        openat(cur.src.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (iter_fd < 0) return dsec::ErrnoStatus(absl::StrCat("open ", cur.dst));
    DIR* d = fdopendir(iter_fd);
    if (d == nullptr) {
      close(iter_fd);
      return dsec::ErrnoStatus("fdopendir");
    }
    auto close_dir = MakeScopeGuard([d] { closedir(d); });
    while (dirent* e = readdir(d)) {
      const char* name = e->d_name;
      if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) continue;
      struct stat st;
      if (fstatat(cur.src.get(), name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        return dsec::ErrnoStatus(absl::StrCat("stat ", cur.dst, "/", name));
      }
      std::string dst = absl::StrCat(cur.dst, "/", name);
      if (extras != nullptr &&
          (S_ISDIR(st.st_mode) || S_ISREG(st.st_mode) || S_ISLNK(st.st_mode))) {
        ++extras->entries;
        if (S_ISREG(st.st_mode)) extras->file_bytes += st.st_size;
      }
      if (S_ISDIR(st.st_mode)) {
        if (mkdir(dst.c_str(), 0700) != 0 && errno != EEXIST) {
          return dsec::ErrnoStatus(absl::StrCat("mkdir ", dst));
        }
        UniqueFd sub(openat(cur.src.get(), name,
                            O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!sub) return dsec::ErrnoStatus(absl::StrCat("open ", dst));
        UniqueFd dfd(open(dst.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (dfd) {
          RETURN_IF_ERROR(
              CopyOrRecordXattrs(sub.get(), dfd.get(), dst_dir, dst, extras));
        }
        dir_attrs.push_back({dst, st});
        stack.push_back({std::move(sub), dst});
      } else if (S_ISREG(st.st_mode)) {
        UniqueFd in(
            openat(cur.src.get(), name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
        if (!in) return dsec::ErrnoStatus(absl::StrCat("open ", dst));
        UniqueFd out(open(dst.c_str(),
                          O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                          0600));
        if (!out) return dsec::ErrnoStatus(absl::StrCat("create ", dst));
        RETURN_IF_ERROR(CopyFileData(in.get(), out.get(), st.st_size, dst));
        RETURN_IF_ERROR(
            CopyOrRecordXattrs(in.get(), out.get(), dst_dir, dst, extras));
        if (fchown(out.get(), st.st_uid, st.st_gid) != 0 ||
            fchmod(out.get(), st.st_mode & 07777) != 0) {
          return dsec::ErrnoStatus(absl::StrCat("chown/chmod ", dst));
        }
        struct timespec times[2] = {st.st_atim, st.st_mtim};
        futimens(out.get(), times);
        // Close reports what a write-back file system failed to store.
        if (close(out.Release()) != 0) {
          return dsec::ErrnoStatus(absl::StrCat("close ", dst));
        }
      } else if (S_ISLNK(st.st_mode)) {
        std::string target(st.st_size + 1, '\0');
        ssize_t n =
            readlinkat(cur.src.get(), name, target.data(), target.size());
        if (n < 0) return dsec::ErrnoStatus(absl::StrCat("readlink ", dst));
        target.resize(n);
        if (symlink(target.c_str(), dst.c_str()) != 0) {
          return dsec::ErrnoStatus(absl::StrCat("symlink ", dst));
        }
        lchown(dst.c_str(), st.st_uid, st.st_gid);
      } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ||
                 S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)) {
        if (extras != nullptr) {
          extras->specials.push_back({RelativeTo(dst_dir, dst), st.st_mode,
                                      st.st_rdev, st.st_uid, st.st_gid});
          continue;
        }
        // Overlay whiteouts are 0/0 character devices; keep them exactly.
        if (mknod(dst.c_str(), st.st_mode, st.st_rdev) != 0) {
          return dsec::ErrnoStatus(absl::StrCat("mknod ", dst));
        }
        lchown(dst.c_str(), st.st_uid, st.st_gid);
      }
    }
  }
  // Directory owners, modes and times last, so writing into them worked.
  for (auto it = dir_attrs.rbegin(); it != dir_attrs.rend(); ++it) {
    const auto& [path, st] = *it;
    if (lchown(path.c_str(), st.st_uid, st.st_gid) != 0 ||
        chmod(path.c_str(), st.st_mode & 07777) != 0) {
      return dsec::ErrnoStatus(absl::StrCat("chown/chmod ", path));
    }
    struct timespec times[2] = {st.st_atim, st.st_mtim};
    utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW);
  }
  return absl::OkStatus();
}

namespace {

absl::Status BadRecord(absl::string_view what, absl::string_view path) {
  return absl::DataLossError(
      absl::StrCat("layer record: ", what, " \"", path, "\""));
}

// A relative, normalized path with no empty, "." or ".." part.
bool NormalizedRelative(absl::string_view path) {
  if (path.empty() || path.find('\0') != absl::string_view::npos) return false;
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part.empty() || part == "." || part == "..") return false;
  }
  return true;
}

// The parent directory of `rel` under `root_fd` (no symlinks on the way,
// never above the root) and the last component.
absl::StatusOr<std::pair<UniqueFd, std::string>> OpenParent(
    int root_fd, const std::string& rel) {
  const size_t slash = rel.rfind('/');
  const std::string parent =
      slash == std::string::npos ? "." : rel.substr(0, slash);
  const std::string name =
      slash == std::string::npos ? rel : rel.substr(slash + 1);
  struct open_how how = {};
  how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  int fd = static_cast<int>(
      syscall(SYS_openat2, root_fd, parent.c_str(), &how, sizeof(how)));
  if (fd < 0) return BadRecord(strerror(errno), rel);
  return std::make_pair(UniqueFd(fd), name);
}

}  // namespace

absl::Status ApplyLayerExtras(const std::string& dir,
                              const LayerExtras& extras) {
  UniqueFd root(open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root) return dsec::ErrnoStatus(absl::StrCat("open ", dir));
  for (const LayerExtras::Special& sp : extras.specials) {
    if (!NormalizedRelative(sp.path)) return BadRecord("bad path", sp.path);
    const bool whiteout = S_ISCHR(sp.mode) && sp.rdev == 0;
    if (!whiteout && !S_ISFIFO(sp.mode)) {
      return BadRecord("not a whiteout or FIFO", sp.path);
    }
    ASSIGN_OR_RETURN(auto parent, OpenParent(root.get(), sp.path));
    if (mknodat(parent.first.get(), parent.second.c_str(),
                sp.mode & (S_IFMT | 0777), sp.rdev) != 0) {
      return BadRecord(strerror(errno), sp.path);
    }
    if (fchownat(parent.first.get(), parent.second.c_str(), sp.uid, sp.gid,
                 AT_SYMLINK_NOFOLLOW) != 0) {
      return dsec::ErrnoStatus(absl::StrCat("chown ", sp.path));
    }
  }
  for (const LayerExtras::Xattr& x : extras.xattrs) {
    if (!PortableXattr(x.name)) {
      return BadRecord("xattr not allowed", x.name);
    }
    std::string target;
    if (x.path.empty()) {
      target = absl::StrCat("/proc/self/fd/", root.get());
    } else {
      if (!NormalizedRelative(x.path)) return BadRecord("bad path", x.path);
      ASSIGN_OR_RETURN(auto parent, OpenParent(root.get(), x.path));
      // The parent fd is a safe base; lsetxattr never follows the last
      // component.
      target = absl::StrCat("/proc/self/fd/", parent.first.get(), "/",
                            parent.second);
      if (lsetxattr(target.c_str(), x.name.c_str(), x.value.data(),
                    x.value.size(), 0) != 0) {
        return BadRecord(strerror(errno), x.path);
      }
      continue;
    }
    if (setxattr(target.c_str(), x.name.c_str(), x.value.data(), x.value.size(),
                 0) != 0) {
      return BadRecord(strerror(errno), "");
    }
  }
  return absl::OkStatus();
}

}  // namespace dsec::sandbox
