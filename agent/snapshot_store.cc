// Invariants:
//  - /snapshots/<id> on dsec-fs exists only complete (staged, renamed into
//    place after manifest.pb is written and closed).
//  - <cache_dir>/<id> exists only complete (copied into a temporary sibling,
//    renamed into place); its manifest.pb is the one it was copied from.
//  - Everything read from dsec-fs is untrusted input: ids are checked,
//    fs_path layers must stay under the mount, stored layers are counted
//    against the manifest and extras are applied beneath the copy only.
#include "agent/snapshot_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/errno_status.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/token.h"
#include "common/unique_fd.h"

namespace dsec::agent {

namespace {

constexpr char kManifest[] = "manifest.pb";
constexpr size_t kMaxManifestBytes = 64 << 20;

absl::Status MkdirMode(const std::string& path, mode_t mode) {
  if (mkdir(path.c_str(), mode) != 0 && errno != EEXIST) {
    return dsec::ErrnoStatus(absl::StrCat("mkdir ", path));
  }
  if (chmod(path.c_str(), mode) != 0) {
    return dsec::ErrnoStatus(absl::StrCat("chmod ", path));
  }
  return absl::OkStatus();
}

absl::Status WriteWholeFile(const std::string& path, const std::string& data) {
  UniqueFd fd(
      open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444));
  if (!fd) return dsec::ErrnoStatus(absl::StrCat("create ", path));
  for (size_t off = 0; off < data.size();) {
    ssize_t n = write(fd.get(), data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return dsec::ErrnoStatus(absl::StrCat("write ", path));
    off += n;
  }
  if (fsync(fd.get()) != 0) return dsec::ErrnoStatus("fsync " + path);
  if (close(fd.Release()) != 0) return dsec::ErrnoStatus("close " + path);
  return absl::OkStatus();
}

// Reads a file of at most kMaxManifestBytes; errno kept in the status.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return dsec::ErrnoStatus(absl::StrCat("open ", path));
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return dsec::ErrnoStatus(absl::StrCat("read ", path));
    if (n == 0) break;
    out.append(buf, n);
    if (out.size() > kMaxManifestBytes) {
      return absl::DataLossError(absl::StrCat(path, " is too large"));
    }
  }
  return out;
}

// An absolute, normalized dsec-fs path ("/images/x").
bool NormalizedAbsolute(absl::string_view path) {
  if (path.size() < 2 || path[0] != '/' ||
      path.find('\0') != absl::string_view::npos) {
    return false;
  }
  for (absl::string_view part : absl::StrSplit(path.substr(1), '/')) {
    if (part.empty() || part == "." || part == "..") return false;
  }
  return true;
}

}  // namespace

absl::Status ValidateSnapshotId(absl::string_view id) {
  if (id.empty() || id.size() > 128 ||
      !std::all_of(id.begin(), id.end(), [](char c) {
        return absl::ascii_isalnum(c) || c == '-' || c == '_';
      })) {
    return absl::InvalidArgumentError(
        "snapshot id must be 1..128 characters of [A-Za-z0-9_-]");
  }
  return absl::OkStatus();
}

v1::SnapshotManifest::Layer ToManifestLayer(
    const sandbox::LayerExtras& extras) {
  v1::SnapshotManifest::Layer layer;
  for (const auto& sp : extras.specials) {
    auto* out = layer.add_specials();
    out->set_path(sp.path);
    out->set_mode(sp.mode);
    out->set_rdev(sp.rdev);
    out->set_uid(sp.uid);
    out->set_gid(sp.gid);
  }
  for (const auto& x : extras.xattrs) {
    auto* out = layer.add_xattrs();
    out->set_path(x.path);
    out->set_name(x.name);
    out->set_value(x.value);
  }
  layer.set_entries(extras.entries);
  layer.set_file_bytes(extras.file_bytes);
  return layer;
}

sandbox::LayerExtras FromManifestLayer(
    const v1::SnapshotManifest::Layer& layer) {
  sandbox::LayerExtras extras;
  for (const auto& sp : layer.specials()) {
    extras.specials.push_back({sp.path(), static_cast<mode_t>(sp.mode()),
                               static_cast<dev_t>(sp.rdev()), sp.uid(),
                               sp.gid()});
  }
  for (const auto& x : layer.xattrs()) {
    extras.xattrs.push_back({x.path(), x.name(), x.value()});
  }
  extras.entries = layer.entries();
  extras.file_bytes = layer.file_bytes();
  return extras;
}

absl::StatusOr<std::unique_ptr<SnapshotStore>> SnapshotStore::Create(
    const SnapshotStoreOptions& options) {
  if (options.fs_mount_dir.empty() || options.cache_dir.empty()) {
    return absl::InvalidArgumentError(
        "snapshot store needs fs_mount_dir and cache_dir");
  }
  RETURN_IF_ERROR(MkdirMode(options.cache_dir, 0711));
  // Copies left by a crash in the middle of a fetch.
  std::error_code ec;
  for (const auto& e :
       std::filesystem::directory_iterator(options.cache_dir, ec)) {
    if (absl::StartsWith(e.path().filename().string(), ".tmp-")) {
      std::filesystem::remove_all(e.path(), ec);
    }
  }
  return std::unique_ptr<SnapshotStore>(new SnapshotStore(options));
}

std::string SnapshotStore::CachedDir(absl::string_view id) const {
  return absl::StrCat(options_.cache_dir, "/", id);
}

absl::StatusOr<std::string> SnapshotStore::Export(
    absl::string_view id, const std::vector<std::string>& layers) {
  RETURN_IF_ERROR(ValidateSnapshotId(id));
  const std::string& mount = options_.fs_mount_dir;
  const std::string root = mount + kSnapshotsDir;
  RETURN_IF_ERROR(MkdirMode(root, 0711));
  const std::string staging =
      absl::StrCat(root, "/.staging-", id, "-", RandomHex(4));
  auto cleanup = [&] {
    std::error_code ec;
    std::filesystem::remove_all(staging, ec);
  };
  absl::Status status = [&]() -> absl::Status {
    RETURN_IF_ERROR(MkdirMode(staging, 0711));
    RETURN_IF_ERROR(MkdirMode(staging + "/layers", 0711));
    v1::SnapshotManifest manifest;
    manifest.set_snapshot_id(std::string(id));
    for (size_t k = 0; k < layers.size(); ++k) {
      const std::string& layer = layers[k];
      if (absl::StartsWith(layer, mount + "/")) {
        manifest.add_layers()->set_fs_path(layer.substr(mount.size()));
        continue;
      }
      UniqueFd src(
          open(layer.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!src) return dsec::ErrnoStatus(absl::StrCat("open layer ", layer));
      sandbox::LayerExtras extras;
      RETURN_IF_ERROR(sandbox::CopyLayerTree(
          src.get(), absl::StrCat(staging, "/layers/", k), &extras));
      *manifest.add_layers() = ToManifestLayer(extras);
    }
    RETURN_IF_ERROR(WriteWholeFile(absl::StrCat(staging, "/", kManifest),
                                   manifest.SerializeAsString()));
    const std::string dst = absl::StrCat(root, "/", id);
    if (rename(staging.c_str(), dst.c_str()) != 0) {
      if (errno == EEXIST || errno == ENOTEMPTY) {
        return absl::AlreadyExistsError(
            absl::StrCat("snapshot ", id, " is already on dsec-fs"));
      }
      return dsec::ErrnoStatus(absl::StrCat("rename into ", dst));
    }
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    cleanup();
    return absl::Status(
        status.code(),
        absl::StrCat("write snapshot ", id, " to dsec-fs: ", status.message()));
  }
  return absl::StrCat(kSnapshotsDir, "/", id);
}

std::vector<std::string> SnapshotStore::LocalStack(
    const std::string& id, const v1::SnapshotManifest& manifest) const {
  std::vector<std::string> stack;
  for (int k = 0; k < manifest.layers_size(); ++k) {
    const auto& layer = manifest.layers(k);
    stack.push_back(layer.fs_path().empty()
                        ? absl::StrCat(CachedDir(id), "/", k)
                        : options_.fs_mount_dir + layer.fs_path());
  }
  return stack;
}

absl::StatusOr<std::vector<std::string>> SnapshotStore::Fetch(
    absl::string_view id_view) {
  RETURN_IF_ERROR(ValidateSnapshotId(id_view));
  const std::string id(id_view);
  std::shared_ptr<absl::Mutex> lock;
  {
    absl::MutexLock l(&mu_);
    auto& slot = fetch_locks_[id];
    if (!slot) slot = std::make_shared<absl::Mutex>();
    lock = slot;
  }
  absl::MutexLock l(lock.get());
  // Already copied: the cached manifest names the stack.
  absl::StatusOr<std::string> cached =
      ReadSmallFile(absl::StrCat(CachedDir(id), "/", kManifest));
  if (cached.ok()) {
    v1::SnapshotManifest manifest;
    if (manifest.ParseFromString(*cached)) return LocalStack(id, manifest);
    RemoveCached(id);  // damaged local copy: fetch again
  }
  return Materialize(id);
}

absl::StatusOr<std::vector<std::string>> SnapshotStore::Materialize(
    const std::string& id) {
  const std::string& mount = options_.fs_mount_dir;
  const std::string src = absl::StrCat(mount, kSnapshotsDir, "/", id);
  struct stat st;
  if (stat(src.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return absl::NotFoundError(absl::StrCat(
          "snapshot ", id, " is not on dsec-fs (no ", kSnapshotsDir, "/", id,
          "): it was deleted, or taken on a node without dsec-fs"));
    }
    return absl::UnavailableError(absl::StrCat("dsec-fs: stat ", kSnapshotsDir,
                                               "/", id, ": ", strerror(errno)));
  }
  auto data_loss = [&](absl::string_view what) {
    return absl::DataLossError(
        absl::StrCat("snapshot ", id, " on dsec-fs is damaged: ", what));
  };
  absl::StatusOr<std::string> bytes =
      ReadSmallFile(absl::StrCat(src, "/", kManifest));
  if (!bytes.ok()) return data_loss(bytes.status().message());
  v1::SnapshotManifest manifest;
  if (!manifest.ParseFromString(*bytes)) {
    return data_loss("manifest.pb does not parse");
  }
  if (manifest.snapshot_id() != id) {
    return data_loss(absl::StrCat("manifest names snapshot \"",
                                  manifest.snapshot_id(), "\""));
  }
  if (manifest.layers_size() == 0) return data_loss("manifest has no layers");

  const std::string tmp =
      absl::StrCat(options_.cache_dir, "/.tmp-", id, "-", RandomHex(4));
  auto remove_tmp = [&] {
    std::error_code ec;
    std::filesystem::remove_all(tmp, ec);
  };
  absl::Status status = [&]() -> absl::Status {
    RETURN_IF_ERROR(MkdirMode(tmp, 0711));
    for (int k = 0; k < manifest.layers_size(); ++k) {
      const v1::SnapshotManifest::Layer& layer = manifest.layers(k);
      if (!layer.fs_path().empty()) {
        const std::string path = mount + layer.fs_path();
        if (!NormalizedAbsolute(layer.fs_path()) ||
            absl::StartsWith(layer.fs_path(), kSnapshotsDir) ||
            stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
          return data_loss(absl::StrCat("layer ", k, " names \"",
                                        layer.fs_path(),
                                        "\", not a directory on dsec-fs"));
        }
        continue;
      }
      const std::string from = absl::StrCat(src, "/layers/", k);
      UniqueFd fd(
          open(from.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!fd) {
        return data_loss(absl::StrCat("layer ", k, ": ", strerror(errno)));
      }
      const std::string to = absl::StrCat(tmp, "/", k);
      sandbox::LayerExtras counted;
      absl::Status copied = sandbox::CopyLayerTree(fd.get(), to, &counted);
      if (!copied.ok()) {
        return data_loss(absl::StrCat("layer ", k, ": ", copied.message()));
      }
      if (!counted.specials.empty() || counted.entries != layer.entries() ||
          counted.file_bytes != layer.file_bytes()) {
        return data_loss(absl::StrCat(
            "layer ", k, " holds ", counted.entries, " entries and ",
            counted.file_bytes, " bytes, the manifest says ", layer.entries(),
            " and ", layer.file_bytes()));
      }
      RETURN_IF_ERROR(sandbox::ApplyLayerExtras(to, FromManifestLayer(layer)));
      // Sealed like a local snapshot layer.
      if (chmod(to.c_str(), 0555) != 0) {
        return dsec::ErrnoStatus(absl::StrCat("chmod ", to));
      }
    }
    RETURN_IF_ERROR(WriteWholeFile(absl::StrCat(tmp, "/", kManifest), *bytes));
    if (rename(tmp.c_str(), CachedDir(id).c_str()) != 0) {
      return dsec::ErrnoStatus(absl::StrCat("rename into ", CachedDir(id)));
    }
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    remove_tmp();
    return status;
  }
  DSEC_LOG_INFO("snapshot {}: copied {} layer(s) from dsec-fs", id,
                manifest.layers_size());
  return LocalStack(id, manifest);
}

absl::Status SnapshotStore::Remove(absl::string_view id) {
  RETURN_IF_ERROR(ValidateSnapshotId(id));
  const std::string root = options_.fs_mount_dir + kSnapshotsDir;
  const std::string dir = absl::StrCat(root, "/", id);
  // Renamed away first: one remover wins and a half-removed directory is
  // never mistaken for a snapshot.
  const std::string trash =
      absl::StrCat(root, "/.trash-", id, "-", RandomHex(4));
  if (rename(dir.c_str(), trash.c_str()) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return dsec::ErrnoStatus(absl::StrCat("rename ", dir));
  }
  std::error_code ec;
  std::filesystem::remove_all(trash, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("remove ", trash, ": ", ec.message()));
  }
  return absl::OkStatus();
}

void SnapshotStore::RemoveCached(absl::string_view id) {
  if (!ValidateSnapshotId(id).ok()) return;
  std::error_code ec;
  std::filesystem::remove_all(CachedDir(id), ec);
}

}  // namespace dsec::agent
