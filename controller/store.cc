#include "controller/store.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"

namespace dsec::controller {
namespace {

constexpr char kJob[] = "job/";
constexpr char kSandbox[] = "sbx/";
constexpr char kNode[] = "node/";
constexpr char kSnapshot[] = "snap/";
constexpr char kSnapshotGc[] = "snapgc/";
constexpr char kEvent[] = "ev/";

std::string EventKey(int64_t rv) {
  std::string digits = absl::StrCat(rv);
  return absl::StrCat(
      kEvent, std::string(20 - std::min<size_t>(20, digits.size()), '0'),
      digits);
}

absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", s.ToString()));
}

template <typename Msg>
absl::Status ParseInto(const rocksdb::Slice& key, const rocksdb::Slice& value,
                       std::vector<Msg>* out) {
  Msg msg;
  if (!msg.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
    return absl::InternalError(
        absl::StrCat("corrupt store record ", key.ToString()));
  }
  out->push_back(std::move(msg));
  return absl::OkStatus();
}

absl::Status ParseSnapshotGc(const rocksdb::Slice& key,
                             const rocksdb::Slice& value,
                             std::vector<Store::State::SnapshotGc>* out) {
  int64_t unix_ms = 0;
  if (!absl::SimpleAtoi(absl::string_view(value.data(), value.size()),
                        &unix_ms)) {
    return absl::InternalError(
        absl::StrCat("corrupt store record ", key.ToString()));
  }
  out->push_back({key.ToString().substr(sizeof(kSnapshotGc) - 1),
                  absl::FromUnixMillis(unix_ms)});
  return absl::OkStatus();
}

}  // namespace

void Store::Batch::PutJob(const v1::Job& job) {
  ops_.push_back({absl::StrCat(kJob, job.id()), job.SerializeAsString()});
}
void Store::Batch::DeleteJob(const std::string& id) {
  ops_.push_back({absl::StrCat(kJob, id), std::nullopt});
}
void Store::Batch::PutSandbox(const v1::Sandbox& sandbox) {
  ops_.push_back(
      {absl::StrCat(kSandbox, sandbox.id()), sandbox.SerializeAsString()});
}
void Store::Batch::DeleteSandbox(const std::string& id) {
  ops_.push_back({absl::StrCat(kSandbox, id), std::nullopt});
}
void Store::Batch::PutNode(const v1::Node& node) {
  ops_.push_back(
      {absl::StrCat(kNode, node.node_id()), node.SerializeAsString()});
}
void Store::Batch::PutSnapshot(const v1::Snapshot& snapshot) {
  ops_.push_back(
      {absl::StrCat(kSnapshot, snapshot.id()), snapshot.SerializeAsString()});
}
void Store::Batch::DeleteSnapshot(const std::string& id) {
  ops_.push_back({absl::StrCat(kSnapshot, id), std::nullopt});
}
void Store::Batch::PutSnapshotGc(const std::string& snapshot_id,
                                 absl::Time deadline) {
  ops_.push_back({absl::StrCat(kSnapshotGc, snapshot_id),
                  absl::StrCat(absl::ToUnixMillis(deadline))});
}
void Store::Batch::DeleteSnapshotGc(const std::string& snapshot_id) {
  ops_.push_back({absl::StrCat(kSnapshotGc, snapshot_id), std::nullopt});
}
void Store::Batch::PutEvent(const v1::SandboxEvent& event) {
  ops_.push_back(
      {EventKey(event.resource_version()), event.SerializeAsString()});
}
void Store::Batch::DeleteEventsBefore(int64_t rv) {
  ops_.push_back({std::string(kEvent), std::nullopt, EventKey(rv)});
}

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("store: empty data_dir");
  rocksdb::Options options;
  options.create_if_missing = true;
  options.IncreaseParallelism(2);
  options.compression = rocksdb::kNoCompression;
  options.write_buffer_size = 64 << 20;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, dir, &db);
  if (!s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("store: open ", dir, ": ", s.ToString()));
  }
  return std::unique_ptr<Store>(new Store(db));
}

Store::Store(rocksdb::DB* db) : db_(db) {}

Store::~Store() {
  if (db_) db_->Close().PermitUncheckedError();
}

absl::Status Store::Write(Batch batch) {
  if (batch.ops_.empty()) return absl::OkStatus();
  rocksdb::WriteBatch wb;
  for (auto& op : batch.ops_) {
    rocksdb::Status s = op.value ? wb.Put(op.key, *op.value)
                        : op.range_end.empty()
                            ? wb.Delete(op.key)
                            : wb.DeleteRange(op.key, op.range_end);
    if (!s.ok()) return FromRocks(s, "store: batch");
  }
  rocksdb::WriteOptions wo;
  wo.sync = false;
  return FromRocks(db_->Write(wo, &wb), "store: write");
}

absl::StatusOr<Store::State> Store::LoadAll() const {
  State state;
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    rocksdb::Slice key = it->key();
    absl::Status st;
    if (key.starts_with(kSandbox)) {
      st = ParseInto(key, it->value(), &state.sandboxes);
    } else if (key.starts_with(kJob)) {
      st = ParseInto(key, it->value(), &state.jobs);
    } else if (key.starts_with(kNode)) {
      st = ParseInto(key, it->value(), &state.nodes);
    } else if (key.starts_with(kSnapshot)) {
      st = ParseInto(key, it->value(), &state.snapshots);
    } else if (key.starts_with(kSnapshotGc)) {
      st = ParseSnapshotGc(key, it->value(), &state.snapshot_gc);
    } else if (key.starts_with(kEvent)) {
      st = ParseInto(key, it->value(), &state.events);
    }
    if (!st.ok()) return st;
  }
  if (!it->status().ok()) return FromRocks(it->status(), "store: scan");
  return state;
}

}  // namespace dsec::controller
