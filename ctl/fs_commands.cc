#include "ctl/fs_commands.h"

#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "common/errno_status.h"
#include "common/scope_guard.h"
#include "common/status_macros.h"
#include "common/unique_fd.h"
#include "ctl/commands.h"
#include "fs/fs_error.h"
#include "fs/image.h"

extern char** environ;

namespace dsec::ctl {
namespace {

using fs::FsClient;
using fs::kImagesDir;
using fs::SetAttrArgs;
using fs::ValidateImageName;

constexpr size_t kPiece = 4 << 20;

std::string TypeName(v1::InodeType t) {
  switch (t) {
    case v1::INODE_TYPE_DIRECTORY:
      return "dir";
    case v1::INODE_TYPE_SYMLINK:
      return "symlink";
    case v1::INODE_TYPE_FILE:
      return "file";
    default:
      return "?";
  }
}

std::string Mode(uint32_t mode) { return absl::StrFormat("%04o", mode); }

std::string Time(int64_t ns) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixNanos(ns),
                          absl::LocalTimeZone());
}

std::string Join(const std::string& dir, const std::string& name) {
  return dir == "/" ? "/" + name : dir + "/" + name;
}

// Writes local file `path` (size `size`) into new dsec-fs file `name` under
// `parent`, then sets its owner, mode and times from `st`.
absl::Status PutFile(FsClient& client, const std::string& path,
                     const struct stat& st, uint64_t parent,
                     const std::string& name, uint32_t id_shift) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus(absl::StrCat("open ", path));
  ASSIGN_OR_RETURN(v1::Inode inode,
                   client.Create(parent, name, st.st_mode & 07777,
                                 st.st_uid + id_shift, st.st_gid + id_shift,
                                 /*open=*/true));
  uint64_t offset = 0;
  absl::Status status;
  std::string buf(kPiece, '\0');
  while (status.ok()) {
    ssize_t n = read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      status = ErrnoStatus(absl::StrCat("read ", path));
      break;
    }
    if (n == 0) break;
    status = client.Write(fs::FileRef::Of(inode), offset,
                          absl::string_view(buf.data(), n));
    offset += n;
  }
  absl::Status closed = client.Close(
      inode.id(), status.ok() ? std::optional<uint64_t>(offset) : std::nullopt);
  RETURN_IF_ERROR(status);
  RETURN_IF_ERROR(closed);
  SetAttrArgs attrs;
  attrs.mask = fs::kSetAtime | fs::kSetMtime;
  attrs.atime_ns = st.st_atim.tv_sec * 1000000000LL + st.st_atim.tv_nsec;
  attrs.mtime_ns = st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
  return client.SetAttr(inode.id(), attrs).status();
}

absl::Status RunTar(const std::string& tarball, const std::string& dir) {
  std::vector<std::string> argv = {"tar", "-xf", tarball,
                                   "-C",  dir,   "--no-same-owner"};
  if (geteuid() == 0) argv.back() = "--same-owner";
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  pid_t pid;
  int rc = posix_spawnp(&pid, "tar", nullptr, nullptr, cargv.data(), environ);
  if (rc != 0) return ErrnoToStatus(rc, "spawn tar");
  int wstatus = 0;
  while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tar could not unpack ", tarball, " (is it a tarball?)"));
  }
  return absl::OkStatus();
}

int PrintInode(const FsCommandOptions& o, const std::string& path,
               const v1::Inode& inode, std::ostream& out) {
  if (o.json) {
    out << Json(inode) << "\n";
    return 0;
  }
  PrintTable({{"path", path},
              {"inode", absl::StrCat(inode.id())},
              {"type", TypeName(inode.type())},
              {"mode", Mode(inode.mode())},
              {"owner", absl::StrCat(inode.uid(), ":", inode.gid())},
              {"size", absl::StrCat(inode.size())},
              {"links", absl::StrCat(inode.nlink())},
              {"mtime", Time(inode.mtime_ns())},
              {"sealed", inode.sealed() ? "yes" : "no"}},
             out);
  return 0;
}

}  // namespace

absl::StatusOr<ImportStats> PutTree(FsClient& client,
                                    const std::string& local_dir,
                                    const std::string& remote_dir,
                                    uint32_t id_shift) {
  struct stat root_st;
  if (lstat(local_dir.c_str(), &root_st) != 0) {
    return ErrnoStatus(absl::StrCat("stat ", local_dir));
  }
  if (!S_ISDIR(root_st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(local_dir, " is not a directory"));
  }
  std::string parent_path =
      std::filesystem::path(remote_dir).parent_path().string();
  std::string root_name = std::filesystem::path(remote_dir).filename().string();
  if (parent_path.empty()) parent_path = "/";
  ASSIGN_OR_RETURN(v1::Inode parent, client.ResolvePath(parent_path));
  ASSIGN_OR_RETURN(
      v1::Inode root,
      client.Mkdir(parent.id(), root_name, root_st.st_mode & 07777,
                   root_st.st_uid + id_shift, root_st.st_gid + id_shift));

  // Pass 1 (sequential): directories, symlinks; files queued.
  struct FileJob {
    std::string local;
    struct stat st;
    uint64_t parent;
    std::string name;
  };
  struct DirAttr {
    uint64_t ino;
    struct stat st;
  };
  std::vector<FileJob> files;
  std::vector<DirAttr> dirs = {{root.id(), root_st}};
  // (dev, ino) of multiply linked files -> index of the first job.
  std::map<std::pair<dev_t, ino_t>, size_t> first_link;
  std::vector<std::pair<size_t, FileJob>> links;  // (first job, link)
  ImportStats stats;
  stats.dirs = 1;
  std::vector<std::pair<std::string, uint64_t>> stack = {
      {local_dir, root.id()}};
  while (!stack.empty()) {
    auto [dir, dir_ino] = stack.back();
    stack.pop_back();
    std::error_code ec;
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      names.push_back(e.path().filename().string());
    }
    if (ec) return absl::InternalError(absl::StrCat(dir, ": ", ec.message()));
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      std::string local = dir + "/" + name;
      struct stat st;
      if (lstat(local.c_str(), &st) != 0) {
        return ErrnoStatus(absl::StrCat("stat ", local));
      }
      if (S_ISDIR(st.st_mode)) {
        ASSIGN_OR_RETURN(
            v1::Inode d,
            client.Mkdir(dir_ino, name, st.st_mode & 07777,
                         st.st_uid + id_shift, st.st_gid + id_shift));
        dirs.push_back({d.id(), st});
        stack.push_back({local, d.id()});
        ++stats.dirs;
      } else if (S_ISLNK(st.st_mode)) {
        std::string target(PATH_MAX, '\0');
        ssize_t n = readlink(local.c_str(), target.data(), target.size());
        if (n < 0) return ErrnoStatus(absl::StrCat("readlink ", local));
        target.resize(n);
        RETURN_IF_ERROR(client
                            .Symlink(dir_ino, name, target,
                                     st.st_uid + id_shift, st.st_gid + id_shift)
                            .status());
        ++stats.symlinks;
      } else if (S_ISREG(st.st_mode)) {
        FileJob job{local, st, dir_ino, name};
        if (st.st_nlink > 1) {
          auto key = std::make_pair(st.st_dev, st.st_ino);
          auto it = first_link.find(key);
          if (it != first_link.end()) {
            links.push_back({it->second, std::move(job)});
            continue;
          }
          first_link[key] = files.size();
        }
        stats.bytes += st.st_size;
        files.push_back(std::move(job));
      }
      // Devices, fifos and sockets have no place in an image: skipped.
    }
  }
  stats.files = files.size();

  // Pass 2 (parallel): file contents.
  std::atomic<size_t> next{0};
  std::mutex error_mu;
  absl::Status first_error;
  auto worker = [&] {
    while (true) {
      size_t i = next.fetch_add(1);
      if (i >= files.size()) return;
      const FileJob& job = files[i];
      absl::Status s =
          PutFile(client, job.local, job.st, job.parent, job.name, id_shift);
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (first_error.ok()) first_error = s;
        next.store(files.size());
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  RETURN_IF_ERROR(first_error);

  // Pass 3: hard links, then directory times (children changed them).
  for (const auto& [first, link] : links) {
    const FileJob& target = files[first];
    ASSIGN_OR_RETURN(v1::Inode t, client.Lookup(target.parent, target.name));
    RETURN_IF_ERROR(client.Link(t.id(), link.parent, link.name).status());
    ++stats.hardlinks;
  }
  for (const DirAttr& d : dirs) {
    SetAttrArgs attrs;
    attrs.mask = fs::kSetAtime | fs::kSetMtime;
    attrs.atime_ns = d.st.st_atim.tv_sec * 1000000000LL + d.st.st_atim.tv_nsec;
    attrs.mtime_ns = d.st.st_mtim.tv_sec * 1000000000LL + d.st.st_mtim.tv_nsec;
    RETURN_IF_ERROR(client.SetAttr(d.ino, attrs).status());
  }
  return stats;
}

absl::StatusOr<ImportStats> ImportImage(FsClient& client,
                                        const std::string& name,
                                        const std::string& source,
                                        uint32_t id_shift) {
  RETURN_IF_ERROR(ValidateImageName(name));
  struct stat st;
  if (stat(source.c_str(), &st) != 0) {
    return ErrnoStatus(absl::StrCat("image source ", source));
  }
  std::string dir = source;
  std::string unpacked;
  auto cleanup = MakeScopeGuard([&] {
    if (!unpacked.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(unpacked, ec);
    }
  });
  if (!S_ISDIR(st.st_mode)) {
    const char* tmp = getenv("TMPDIR");
    std::string tmpl =
        absl::StrCat(tmp && *tmp ? tmp : "/tmp", "/dsec-image-XXXXXX");
    if (mkdtemp(tmpl.data()) == nullptr) return ErrnoStatus("mkdtemp");
    unpacked = dir = tmpl;
    // The image root is the sandbox's "/": world-readable unless the
    // tarball's "." entry says otherwise (mkdtemp made it 0700).
    chmod(dir.c_str(), 0755);
    RETURN_IF_ERROR(RunTar(source, dir));
  }
  ASSIGN_OR_RETURN(v1::Inode images, client.MkdirAll(kImagesDir, 0755));
  if (client.Lookup(images.id(), name).ok()) {
    return absl::AlreadyExistsError(
        absl::StrCat("image '", name,
                     "' already exists on dsec-fs (images are immutable; "
                     "import under a new name)"));
  }
  const std::string staging = absl::StrCat(".staging-", name, "-", getpid());
  (void)client.Remove(Join(kImagesDir, staging), /*recursive=*/true);
  ASSIGN_OR_RETURN(ImportStats stats,
                   PutTree(client, dir, Join(kImagesDir, staging), id_shift));
  absl::Status renamed = client.Rename(images.id(), staging, images.id(), name,
                                       fs::kRenameNoReplace);
  if (!renamed.ok()) {
    (void)client.Remove(Join(kImagesDir, staging), /*recursive=*/true);
    if (absl::IsAlreadyExists(renamed)) {
      return absl::AlreadyExistsError(
          absl::StrCat("image '", name, "' was imported concurrently"));
    }
    return renamed;
  }
  ASSIGN_OR_RETURN(v1::Inode image, client.Lookup(images.id(), name));
  RETURN_IF_ERROR(client.Seal(image.id(), /*recursive=*/true).status());
  return stats;
}

int RunFs(const FsCommandOptions& o, const Args& a, std::ostream& out,
          std::ostream& err) {
  const std::string verb = a.positional.size() > 1 ? a.positional[1] : "";
  auto client_or = FsClient::Create({.meta_address = o.meta_address});
  if (!client_or.ok()) return Fail(err, client_or.status());
  FsClient& client = **client_or;
  auto arg = [&](size_t i) { return a.positional[i]; };
  const size_t n = a.positional.size();
  if (verb == "ls" && n <= 3) {
    std::string path = n == 3 ? arg(2) : "/";
    absl::StatusOr<v1::Inode> inode = client.Stat(path);
    if (!inode.ok()) return Fail(err, inode.status());
    if (inode->type() != v1::INODE_TYPE_DIRECTORY) {
      return PrintInode(o, path, *inode, out);
    }
    absl::StatusOr<std::vector<v1::DirEntry>> entries = client.ListDir(path);
    if (!entries.ok()) return Fail(err, entries.status());
    std::vector<std::vector<std::string>> rows = {
        {"MODE", "TYPE", "SIZE", "MTIME", "NAME"}};
    v1::ReadDirResponse json;
    for (const v1::DirEntry& e : *entries) {
      absl::StatusOr<v1::Inode> child = client.GetAttr(e.ino());
      if (!child.ok()) continue;  // removed meanwhile
      *json.add_entries() = e;
      rows.push_back({Mode(child->mode()), TypeName(child->type()),
                      absl::StrCat(child->size()), Time(child->mtime_ns()),
                      e.name() + (child->sealed() ? "" : "")});
    }
    if (o.json) {
      out << Json(json) << "\n";
    } else {
      PrintTable(rows, out);
    }
    return 0;
  }
  if (verb == "stat" && n == 3) {
    absl::StatusOr<v1::Inode> inode = client.Stat(arg(2));
    if (!inode.ok()) return Fail(err, inode.status());
    return PrintInode(o, arg(2), *inode, out);
  }
  if (verb == "mkdir" && n == 3) {
    absl::Status s;
    if (a.Has("parents")) {
      s = client.MkdirAll(arg(2), 0755).status();
    } else {
      absl::StatusOr<v1::Inode> parent =
          client.Stat(std::filesystem::path(arg(2)).parent_path().string());
      s = parent.status();
      if (s.ok()) {
        s = client
                .Mkdir(parent->id(),
                       std::filesystem::path(arg(2)).filename().string(), 0755,
                       geteuid(), getegid())
                .status();
      }
    }
    return s.ok() ? 0 : Fail(err, s);
  }
  if (verb == "rm" && n == 3) {
    absl::Status s = client.Remove(arg(2), a.Has("recursive"));
    return s.ok() ? 0 : Fail(err, s);
  }
  if (verb == "put" && n == 4) {
    struct stat st;
    if (stat(arg(2).c_str(), &st) != 0) {
      return Fail(err, ErrnoStatus(absl::StrCat("stat ", arg(2))));
    }
    if (S_ISDIR(st.st_mode)) {
      absl::StatusOr<ImportStats> stats = PutTree(client, arg(2), arg(3));
      if (!stats.ok()) return Fail(err, stats.status());
      out << "put " << stats->files << " files, " << stats->dirs
          << " directories, " << Bytes(stats->bytes) << "\n";
      return 0;
    }
    absl::StatusOr<v1::Inode> parent =
        client.Stat(std::filesystem::path(arg(3)).parent_path().string());
    if (!parent.ok()) return Fail(err, parent.status());
    absl::Status s =
        PutFile(client, arg(2), st, parent->id(),
                std::filesystem::path(arg(3)).filename().string(), 0);
    return s.ok() ? 0 : Fail(err, s);
  }
  if (verb == "get" && n == 4) {
    absl::StatusOr<std::string> data = client.ReadFile(arg(2));
    if (!data.ok()) return Fail(err, data.status());
    if (arg(3) == "-") {
      out << *data;
      return 0;
    }
    UniqueFd fd(
        open(arg(3).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (fd.get() < 0) return Fail(err, ErrnoStatus("open " + arg(3)));
    size_t done = 0;
    while (done < data->size()) {
      ssize_t w = write(fd.get(), data->data() + done, data->size() - done);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return Fail(err, ErrnoStatus("write " + arg(3)));
      done += w;
    }
    return 0;
  }
  if (verb == "df" && n == 2) {
    absl::StatusOr<v1::StatFsResponse> s = client.StatFs();
    if (!s.ok()) return Fail(err, s.status());
    if (o.json) {
      out << Json(*s) << "\n";
      return 0;
    }
    PrintTable({{"INODES", "FILE BYTES", "CHUNK BYTES (all replicas)"},
                {absl::StrCat(s->stat().inodes()),
                 Bytes(s->stat().total_bytes()), Bytes(s->chunk_bytes_used())}},
               out);
    return 0;
  }
  if (verb == "chains" && n == 2) {
    absl::StatusOr<v1::ChainTable> table = client.Table();
    if (!table.ok()) return Fail(err, table.status());
    if (o.json) {
      out << Json(*table) << "\n";
      return 0;
    }
    std::vector<std::vector<std::string>> rows = {
        {"SERVER", "ADDRESS", "ALIVE", "CHUNKS", "USED"}};
    for (const v1::ChunkServerInfo& s : table->servers()) {
      rows.push_back({s.node_id(), s.address(), s.alive() ? "yes" : "no",
                      absl::StrCat(s.chunks()), Bytes(s.used_bytes())});
    }
    PrintTable(rows, out);
    out << "\n";
    rows = {{"CHAIN", "VERSION", "MEMBERS (head first)"}};
    for (const v1::Chain& c : table->chains()) {
      std::string members;
      for (const v1::ChainMember& m : c.members()) {
        std::string state = v1::ChainMemberState_Name(m.state());
        absl::string_view sv = state;
        absl::ConsumePrefix(&sv, "CHAIN_MEMBER_STATE_");
        absl::StrAppend(&members, members.empty() ? "" : " ", m.node_id(), "(",
                        absl::AsciiStrToLower(sv), ")");
      }
      rows.push_back(
          {absl::StrCat(c.id()), absl::StrCat(c.version()), members});
    }
    PrintTable(rows, out);
    return 0;
  }
  return Usage(err,
               "fs ls [PATH] | stat PATH | mkdir [-p] PATH | rm [-r] PATH | "
               "put LOCAL REMOTE | get REMOTE LOCAL|- | df | chains");
}

int RunImage(const FsCommandOptions& o, const Args& a, std::ostream& out,
             std::ostream& err) {
  const std::string verb = a.positional.size() > 1 ? a.positional[1] : "";
  auto client_or = FsClient::Create({.meta_address = o.meta_address});
  if (!client_or.ok()) return Fail(err, client_or.status());
  FsClient& client = **client_or;
  if (verb == "import" && a.positional.size() == 4) {
    const absl::Time t0 = absl::Now();
    absl::StatusOr<ImportStats> stats =
        ImportImage(client, a.positional[2], a.positional[3]);
    if (!stats.ok()) return Fail(err, stats.status());
    out << "imported image " << a.positional[2] << ": " << stats->files
        << " files, " << stats->dirs << " directories, " << stats->symlinks
        << " symlinks, " << stats->hardlinks << " hard links, "
        << Bytes(stats->bytes) << " in "
        << absl::FormatDuration(
               absl::Trunc(absl::Now() - t0, absl::Milliseconds(1)))
        << " (sealed at " << Join(kImagesDir, a.positional[2]) << ")\n";
    return 0;
  }
  if (verb == "list" && a.positional.size() == 2) {
    absl::StatusOr<std::vector<v1::DirEntry>> entries =
        client.ListDir(kImagesDir);
    if (absl::IsNotFound(entries.status())) {
      entries = std::vector<v1::DirEntry>();
    }
    if (!entries.ok()) return Fail(err, entries.status());
    std::vector<std::vector<std::string>> rows = {
        {"IMAGE", "SEALED", "CREATED"}};
    for (const v1::DirEntry& e : *entries) {
      if (!e.name().empty() && e.name()[0] == '.') continue;  // staging
      absl::StatusOr<v1::Inode> inode = client.GetAttr(e.ino());
      if (!inode.ok()) continue;
      rows.push_back(
          {e.name(), inode->sealed() ? "yes" : "no", Time(inode->ctime_ns())});
    }
    PrintTable(rows, out);
    return 0;
  }
  return Usage(err, "image import NAME DIR|TARBALL | image list");
}

}  // namespace dsec::ctl
