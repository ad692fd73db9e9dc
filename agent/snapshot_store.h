// SnapshotStore: sandbox snapshots written back to dsec-fs, so that a fork
// can start on any node that mounts it, not only on the node that took the
// snapshot.
//
// Layout, relative to the dsec-fs mount:
//   /snapshots/<id>/manifest.pb   v1::SnapshotManifest (node_service.proto)
//   /snapshots/<id>/layers/<k>/   stored layer k of the stack (topmost first)
// Export writes everything under /snapshots/.staging-<id>-<random>/ and
// renames it into place, so a snapshot directory that exists is complete.
// Each directory is self-contained (every layer below the image is stored in
// it), so deleting one snapshot never breaks another. dsec-fs holds only
// files, directories and symlinks: whiteouts and xattrs (opaque dirs) travel
// in the manifest. Layers that already live on dsec-fs (images) are named in
// the manifest and used in place.
//
// Snapshot directories are not sealed: dsec-fs cannot remove a sealed tree
// and snapshots are deleted; only agents write under /snapshots (sandboxes
// never see the mount writable), and readers verify entry and byte counts.
//
// A node that forks a snapshot it did not take copies the stored layers once
// into <cache_dir>/<id>/<k>/ (re-creating whiteouts and xattrs) and mounts
// the local copies: overlayfs gets real whiteouts and no FUSE lower layers.
// <cache_dir>/<id> appears by rename once every layer is copied.
//
// Thread-safe. Concurrent Fetch calls for one id wait for a single copy.
#ifndef DSEC_AGENT_SNAPSHOT_STORE_H_
#define DSEC_AGENT_SNAPSHOT_STORE_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "dsec/v1/node_service.pb.h"
#include "sandbox/rootfs.h"

namespace dsec::agent {

// Where snapshots live, from the root of dsec-fs.
inline constexpr char kSnapshotsDir[] = "/snapshots";

// OK if `id` may name a snapshot: 1-128 characters of [A-Za-z0-9_-].
// INVALID_ARGUMENT otherwise.
absl::Status ValidateSnapshotId(absl::string_view id);

// The manifest record of a layer's extras and back (pure).
v1::SnapshotManifest::Layer ToManifestLayer(const sandbox::LayerExtras& extras);
sandbox::LayerExtras FromManifestLayer(
    const v1::SnapshotManifest::Layer& layer);

struct SnapshotStoreOptions {
  // Where dsec-fs is mounted. Required.
  std::string fs_mount_dir;
  // Local copies of other nodes' snapshots (created). Required; must be
  // under the agent's layers_root so specs may name them.
  std::string cache_dir;
};

class SnapshotStore {
 public:
  static absl::StatusOr<std::unique_ptr<SnapshotStore>> Create(
      const SnapshotStoreOptions& options);

  // Writes the layer stack `layers` (topmost first, as Sandbox::Snapshot
  // returns it) as snapshot `id`; returns its dsec-fs path
  // ("/snapshots/<id>"). ALREADY_EXISTS if the id is taken.
  absl::StatusOr<std::string> Export(absl::string_view id,
                                     const std::vector<std::string>& layers);

  // The local layer stack (topmost first) of snapshot `id` on dsec-fs,
  // copied into the cache on first use. INVALID_ARGUMENT for a bad id,
  // NOT_FOUND if it is not on dsec-fs, DATA_LOSS if its manifest or layers
  // are unreadable or do not match, UNAVAILABLE if dsec-fs fails.
  absl::StatusOr<std::vector<std::string>> Fetch(absl::string_view id);

  // Removes /snapshots/<id> from dsec-fs (absent: OK). Best effort.
  absl::Status Remove(absl::string_view id);
  // Removes the local copy of `id`. REQUIRES: no sandbox uses its layers.
  void RemoveCached(absl::string_view id);
  // The cache directory of `id`: a layer path under it belongs to it.
  std::string CachedDir(absl::string_view id) const;

 private:
  explicit SnapshotStore(SnapshotStoreOptions options)
      : options_(std::move(options)) {}
  absl::StatusOr<std::vector<std::string>> Materialize(const std::string& id);
  std::vector<std::string> LocalStack(
      const std::string& id, const v1::SnapshotManifest& manifest) const;

  const SnapshotStoreOptions options_;
  absl::Mutex mu_;
  // One lock per snapshot id being (or once) fetched.
  std::map<std::string, std::shared_ptr<absl::Mutex>> fetch_locks_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace dsec::agent

#endif  // DSEC_AGENT_SNAPSHOT_STORE_H_
