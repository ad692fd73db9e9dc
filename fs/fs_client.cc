#include "fs/fs_client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <future>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "fs/chain_table.h"
#include "fs/fs_error.h"
#include "fs/fs_rpc.h"

namespace dsec::fs {
namespace {

bool Retryable(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status) ||
         absl::IsAborted(status);
}

// Splits "/a/b/c" into its parent path "/a/b" and name "c". INVALID_ARGUMENT
// for relative paths and the root.
absl::Status SplitParent(absl::string_view path, std::string* parent,
                         std::string* name) {
  if (path.empty() || path[0] != '/') {
    return FsError(
        EINVAL, absl::StrCat("path '", std::string(path), "' is not absolute"));
  }
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  size_t slash = path.rfind('/');
  if (path.size() == 1) {
    return FsError(EINVAL, "the root directory has no parent");
  }
  *parent = slash == 0 ? "/" : std::string(path.substr(0, slash));
  *name = std::string(path.substr(slash + 1));
  return absl::OkStatus();
}

// Moves the directories of a namespace reply to `out` (if set).
void CopyDirs(google::protobuf::RepeatedPtrField<v1::Inode>* dirs,
              std::vector<v1::Inode>* out) {
  if (out == nullptr) return;
  for (v1::Inode& dir : *dirs) out->push_back(std::move(dir));
}

}  // namespace

// Backoff state for one logical operation under the retry budget.
class FsClient::Retrier {
 public:
  explicit Retrier(FsClient* client)
      : client_(client),
        deadline_(absl::Now() + client->options_.retry_budget) {}

  // True if `status` should be retried (and sleeps first); counts the retry.
  bool ShouldRetry(const absl::Status& status) {
    if (!Retryable(status) || absl::Now() + delay_ > deadline_) return false;
    absl::SleepFor(delay_);
    delay_ = std::min(delay_ * 2, absl::Milliseconds(500));
    absl::MutexLock lock(&client_->mu_);
    ++client_->stats_.retries;
    return true;
  }

 private:
  FsClient* client_;
  absl::Time deadline_;
  absl::Duration delay_ = absl::Milliseconds(20);
};

absl::StatusOr<std::unique_ptr<FsClient>> FsClient::Create(
    const FsClientOptions& options) {
  if (options.meta_address.empty()) {
    return absl::InvalidArgumentError(
        "dsec-fs client needs the meta server address (host:port)");
  }
  if (options.parallel_chunks < 1) {
    return absl::InvalidArgumentError("parallel_chunks must be >= 1");
  }
  return std::unique_ptr<FsClient>(new FsClient(options));
}

FsClient::FsClient(const FsClientOptions& options) : options_(options) {
  std::shared_ptr<grpc::Channel> channel = MakeFsChannel(options.meta_address);
  meta_ = v1::FsMetaService::NewStub(channel);
  cluster_ = v1::FsClusterService::NewStub(channel);
}

FsClient::~FsClient() = default;

void FsClient::PrepareContext(grpc::ClientContext* context) const {
  context->set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
}

// Calls a unary meta RPC, retrying UNAVAILABLE (meta restarting) under the
// retry budget.
#define DSEC_META_CALL(method, request, response)                \
  [&]() -> absl::Status {                                        \
    Retrier retrier(this);                                       \
    while (true) {                                               \
      grpc::ClientContext context;                               \
      PrepareContext(&context);                                  \
      absl::Status status = FromGrpcFsStatus(                    \
          context, meta_->method(&context, request, &response)); \
      if (status.ok() || !absl::IsUnavailable(status) ||         \
          !retrier.ShouldRetry(status)) {                        \
        return status;                                           \
      }                                                          \
    }                                                            \
  }()

absl::StatusOr<v1::Inode> FsClient::Lookup(uint64_t parent,
                                           absl::string_view name) {
  v1::LookupRequest request;
  request.set_parent(parent);
  request.set_name(std::string(name));
  // A miss comes back as an empty reply: cheaper than an error status (with
  // its trailers) for what a lookup before every create returns.
  request.set_missing_ok(true);
  v1::InodeReply reply;
  RETURN_IF_ERROR(DSEC_META_CALL(Lookup, request, reply));
  if (!reply.has_inode()) {
    return FsError(
        ENOENT, absl::StrCat("no entry \"", name, "\" in directory ", parent));
  }
  return std::move(*reply.mutable_inode());
}

absl::StatusOr<v1::Inode> FsClient::GetAttr(uint64_t ino) {
  v1::GetAttrRequest request;
  request.set_ino(ino);
  v1::InodeReply reply;
  RETURN_IF_ERROR(DSEC_META_CALL(GetAttr, request, reply));
  return std::move(*reply.mutable_inode());
}

absl::StatusOr<v1::Inode> FsClient::ResolvePath(absl::string_view path) {
  v1::ResolvePathRequest request;
  request.set_path(std::string(path));
  v1::InodeReply reply;
  RETURN_IF_ERROR(DSEC_META_CALL(ResolvePath, request, reply));
  return std::move(*reply.mutable_inode());
}

absl::StatusOr<v1::Inode> FsClient::SetAttr(uint64_t ino,
                                            const SetAttrArgs& args) {
  std::optional<v1::Inode> before;
  if (args.mask & kSetSize) {
    ASSIGN_OR_RETURN(v1::Inode inode, GetAttr(ino));
    before = std::move(inode);
  }
  v1::SetAttrRequest request;
  request.set_ino(ino);
  request.set_mask(args.mask);
  request.set_mode(args.mode);
  request.set_uid(args.uid);
  request.set_gid(args.gid);
  request.set_size(args.size);
  request.set_atime_ns(args.atime_ns);
  request.set_mtime_ns(args.mtime_ns);
  v1::InodeReply reply;
  RETURN_IF_ERROR(DSEC_META_CALL(SetAttr, request, reply));
  if (before.has_value() && before->type() == v1::INODE_TYPE_FILE &&
      args.size < before->size()) {
    RETURN_IF_ERROR(
        TruncateData(FileRef::Of(*before), before->size(), args.size));
  }
  return std::move(*reply.mutable_inode());
}

absl::StatusOr<v1::Inode> FsClient::Mkdir(uint64_t parent,
                                          absl::string_view name, uint32_t mode,
                                          uint32_t uid, uint32_t gid,
                                          std::vector<v1::Inode>* dirs_after) {
  v1::MkdirRequest request;
  request.set_parent(parent);
  request.set_name(std::string(name));
  request.set_mode(mode);
  request.set_uid(uid);
  request.set_gid(gid);
  v1::InodeReply reply;
  RETURN_IF_ERROR(DSEC_META_CALL(Mkdir, request, reply));
  CopyDirs(reply.mutable_dirs(), dirs_after);
  return std::move(*reply.mutable_inode());
}

absl::Status FsClient::Rmdir(uint64_t parent, absl::string_view name,
                             std::vector<v1::Inode>* dirs_after) {
  v1::RemoveRequest request;
  request.set_parent(parent);
  request.set_name(std::string(name));
  v1::NamespaceReply reply;
  RETURN_IF_ERROR(DSEC_META_CALL(Rmdir, request, reply));
  CopyDirs(reply.mutable_dirs(), dirs_after);
  return absl::OkStatus();
}

absl::StatusOr<v1::Inode> FsClient::Create(uint64_t parent,
                                           absl::string_view name,
                                           uint32_t mode, uint32_t uid,
                                           uint32_t gid, bool open,
                                           std::vector<v1::Inode>* dirs_after) {
  v1::CreateRequest request;
  request.set_parent(parent);
  request.set_name(std::string(name));
  request.set_mode(mode);
  request.set_uid(uid);
  request.set_gid(gid);
  request.set_open(open);
  v1::InodeReply reply;
  RETURN_IF_ERROR(DSEC_META_CALL(Create, request, reply));
  CopyDirs(reply.mutable_dirs(), dirs_after);
  return std::move(*reply.mutable_inode());
}

absl::Status FsClient::Unlink(uint64_t parent, absl::string_view name,
                              std::vector<v1::Inode>* dirs_after) {
  v1::RemoveRequest request;
  request.set_parent(parent);
  request.set_name(std::string(name));
  v1::NamespaceReply reply;
  RETURN_IF_ERROR(DSEC_META_CALL(Unlink, request, reply));
  CopyDirs(reply.mutable_dirs(), dirs_after);
  return absl::OkStatus();
}

absl::Status FsClient::Rename(uint64_t old_parent, absl::string_view old_name,
                              uint64_t new_parent, absl::string_view new_name,
                              uint32_t flags,
                              std::vector<v1::Inode>* dirs_after) {
  v1::RenameRequest request;
  request.set_old_parent(old_parent);
  request.set_old_name(std::string(old_name));
  request.set_new_parent(new_parent);
  request.set_new_name(std::string(new_name));
  request.set_flags(flags);
  v1::NamespaceReply reply;
  RETURN_IF_ERROR(DSEC_META_CALL(Rename, request, reply));
  CopyDirs(reply.mutable_dirs(), dirs_after);
  return absl::OkStatus();
}

absl::StatusOr<v1::Inode> FsClient::Link(uint64_t ino, uint64_t new_parent,
                                         absl::string_view new_name,
                                         std::vector<v1::Inode>* dirs_after) {
  v1::LinkRequest request;
  request.set_ino(ino);
  request.set_new_parent(new_parent);
  request.set_new_name(std::string(new_name));
  v1::InodeReply reply;
  RETURN_IF_ERROR(DSEC_META_CALL(Link, request, reply));
  CopyDirs(reply.mutable_dirs(), dirs_after);
  return std::move(*reply.mutable_inode());
}

absl::StatusOr<v1::Inode> FsClient::Symlink(
    uint64_t parent, absl::string_view name, absl::string_view target,
    uint32_t uid, uint32_t gid, std::vector<v1::Inode>* dirs_after) {
  v1::SymlinkRequest request;
  request.set_parent(parent);
  request.set_name(std::string(name));
  request.set_target(std::string(target));
  request.set_uid(uid);
  request.set_gid(gid);
  v1::InodeReply reply;
  RETURN_IF_ERROR(DSEC_META_CALL(Symlink, request, reply));
  CopyDirs(reply.mutable_dirs(), dirs_after);
  return std::move(*reply.mutable_inode());
}

absl::StatusOr<std::string> FsClient::Readlink(uint64_t ino) {
  v1::ReadlinkRequest request;
  request.set_ino(ino);
  v1::ReadlinkResponse reply;
  RETURN_IF_ERROR(DSEC_META_CALL(Readlink, request, reply));
  return std::move(*reply.mutable_target());
}

absl::StatusOr<ReadDirPage> FsClient::ReadDir(uint64_t ino,
                                              absl::string_view cursor,
                                              size_t max_entries,
                                              bool with_inodes) {
  v1::ReadDirRequest request;
  request.set_ino(ino);
  request.set_with_inodes(with_inodes);
  request.set_cursor(std::string(cursor));
  request.set_max_entries(static_cast<uint32_t>(
      std::min<size_t>(max_entries, std::numeric_limits<uint32_t>::max())));
  v1::ReadDirResponse reply;
  RETURN_IF_ERROR(DSEC_META_CALL(ReadDir, request, reply));
  ReadDirPage page;
  page.has_more = reply.has_more();
  page.entries.reserve(reply.entries_size());
  for (v1::DirEntry& e : *reply.mutable_entries()) {
    page.entries.push_back(std::move(e));
  }
  return page;
}

absl::StatusOr<v1::StatFsResponse> FsClient::StatFs() {
  v1::StatFsRequest request;
  v1::StatFsResponse reply;
  RETURN_IF_ERROR(DSEC_META_CALL(StatFs, request, reply));
  return reply;
}

absl::StatusOr<v1::Inode> FsClient::Open(uint64_t ino, bool for_write) {
  v1::OpenRequest request;
  request.set_ino(ino);
  request.set_for_write(for_write);
  v1::InodeReply reply;
  RETURN_IF_ERROR(DSEC_META_CALL(Open, request, reply));
  return std::move(*reply.mutable_inode());
}

// Open handles live in dsec-meta's memory: after a meta restart it answers
// EBADF for a handle opened before. The handle is registered again (Open
// for write) and the call repeated once, so a writer's length still commits.
absl::Status FsClient::Close(uint64_t ino, std::optional<uint64_t> new_size) {
  v1::CloseRequest request;
  request.set_ino(ino);
  if (new_size.has_value()) {
    request.set_has_size(true);
    request.set_size(*new_size);
  }
  v1::CloseResponse reply;
  absl::Status status = DSEC_META_CALL(Close, request, reply);
  if (ErrnoOf(status) == EBADF) {
    RETURN_IF_ERROR(Open(ino, /*for_write=*/new_size.has_value()).status());
    status = DSEC_META_CALL(Close, request, reply);
  }
  return status;
}

absl::Status FsClient::Fsync(uint64_t ino, uint64_t new_size) {
  v1::FsyncRequest request;
  request.set_ino(ino);
  request.set_size(new_size);
  v1::FsyncResponse reply;
  absl::Status status = DSEC_META_CALL(Fsync, request, reply);
  if (ErrnoOf(status) == EBADF) {
    // Registers the handle again; the caller's Close releases it.
    RETURN_IF_ERROR(Open(ino, /*for_write=*/true).status());
    status = DSEC_META_CALL(Fsync, request, reply);
  }
  return status;
}

absl::Status FsClient::CloseMany(const std::vector<uint64_t>& inos) {
  for (size_t i = 0; i < inos.size(); i += kMaxCloseMany) {
    v1::CloseManyRequest request;
    size_t end = std::min(inos.size(), i + kMaxCloseMany);
    request.mutable_inos()->Add(inos.begin() + i, inos.begin() + end);
    v1::CloseManyResponse reply;
    RETURN_IF_ERROR(DSEC_META_CALL(CloseMany, request, reply));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> FsClient::Seal(uint64_t ino, bool recursive) {
  v1::SealRequest request;
  request.set_ino(ino);
  request.set_recursive(recursive);
  v1::SealResponse reply;
  RETURN_IF_ERROR(DSEC_META_CALL(Seal, request, reply));
  return reply.sealed();
}

#undef DSEC_META_CALL

// ---- chain table ----

absl::StatusOr<std::shared_ptr<const v1::ChainTable>> FsClient::GetTable(
    bool refresh) {
  uint64_t known = 0;
  {
    absl::MutexLock lock(&mu_);
    if (table_ != nullptr && !refresh) return table_;
    if (table_ != nullptr) known = table_->version();
  }
  v1::GetChainTableRequest request;
  request.set_known_version(known);
  v1::GetChainTableResponse reply;
  grpc::ClientContext context;
  PrepareContext(&context);
  RETURN_IF_ERROR(FromGrpcFsStatus(
      context, cluster_->GetChainTable(&context, request, &reply)));
  absl::MutexLock lock(&mu_);
  ++stats_.table_refreshes;
  if (reply.has_table() &&
      (table_ == nullptr || reply.table().version() > table_->version())) {
    table_ = std::make_shared<const v1::ChainTable>(
        std::move(*reply.mutable_table()));
  }
  if (table_ == nullptr) {
    return absl::UnavailableError(
        "dsec-fs meta server returned no chain table yet");
  }
  return table_;
}

absl::StatusOr<v1::ChainTable> FsClient::Table() {
  ASSIGN_OR_RETURN(std::shared_ptr<const v1::ChainTable> table,
                   GetTable(/*refresh=*/false));
  return *table;
}

v1::FsChunkService::Stub* FsClient::ChunkStub(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto& stub = chunk_stubs_[address];
  if (stub == nullptr) {
    stub = v1::FsChunkService::NewStub(MakeFsChannel(address));
  }
  return stub.get();
}

FsClientStats FsClient::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

// ---- data ----

std::vector<FsClient::ChunkSpan> FsClient::SplitRange(const FileRef& file,
                                                      uint64_t offset,
                                                      uint64_t length) const {
  std::vector<ChunkSpan> spans;
  const uint64_t cs = file.chunk_size;
  uint64_t pos = offset;
  const uint64_t end = offset + length;
  while (pos < end) {
    ChunkSpan span;
    span.index = static_cast<uint32_t>(pos / cs);
    span.offset_in_chunk = pos % cs;
    span.length = std::min<uint64_t>(cs - span.offset_in_chunk, end - pos);
    span.buffer_offset = pos - offset;
    spans.push_back(span);
    pos += span.length;
  }
  return spans;
}

absl::Status FsClient::ParallelFor(
    size_t n, const std::function<absl::Status(size_t)>& fn) {
  if (n == 1) return fn(0);
  absl::Status first_error;
  const size_t width = static_cast<size_t>(options_.parallel_chunks);
  for (size_t start = 0; start < n; start += width) {
    size_t stop = std::min(n, start + width);
    std::vector<std::future<absl::Status>> futures;
    // The calling thread runs the first of each batch itself.
    for (size_t i = start + 1; i < stop; ++i) {
      futures.push_back(std::async(std::launch::async, fn, i));
    }
    absl::Status status = fn(start);
    if (!status.ok() && first_error.ok()) first_error = status;
    for (auto& f : futures) {
      absl::Status s = f.get();
      if (!s.ok() && first_error.ok()) first_error = s;
    }
    if (!first_error.ok()) break;
  }
  return first_error;
}

static absl::Status CheckFile(const FileRef& file) {
  if (file.ino == 0 || file.chunk_size == 0) {
    return FsError(EINVAL, absl::StrCat("inode ", file.ino,
                                        " has no data layout (chunk size 0): "
                                        "not a regular file"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> FsClient::Read(const FileRef& file,
                                           uint64_t file_size, uint64_t offset,
                                           uint64_t length) {
  RETURN_IF_ERROR(CheckFile(file));
  if (offset >= file_size || length == 0) return std::string();
  length = std::min(length, file_size - offset);
  std::string out(length, '\0');
  std::vector<ChunkSpan> spans = SplitRange(file, offset, length);
  RETURN_IF_ERROR(ParallelFor(spans.size(), [&](size_t i) {
    return ReadChunk(file, spans[i], out.data() + spans[i].buffer_offset);
  }));
  return out;
}

absl::Status FsClient::ReadChunk(const FileRef& file, const ChunkSpan& span,
                                 char* out) {
  v1::ChunkReadRequest request;
  request.mutable_chunk()->set_inode(file.ino);
  request.mutable_chunk()->set_index(span.index);
  request.set_offset(span.offset_in_chunk);
  request.set_length(span.length);
  Retrier retrier(this);
  bool refresh = false;
  while (true) {
    ASSIGN_OR_RETURN(std::shared_ptr<const v1::ChainTable> table,
                     GetTable(refresh));
    ASSIGN_OR_RETURN(const v1::Chain* chain,
                     ChainFor(*table, file.ino, span.index));
    std::vector<std::string> replicas = ReadReplicas(*chain);
    absl::Status last = absl::UnavailableError(
        absl::StrCat("chain ", chain->id(), " of chunk ", file.ino, ":",
                     span.index, " has no serving replica"));
    size_t start;
    {
      absl::MutexLock lock(&mu_);
      start = read_rotor_++;
      ++stats_.chunk_reads;
    }
    // NOT_FOUND means a hole only if every replica that answers agrees: a
    // replica that lost a chunk must not turn acknowledged data into zeros.
    int not_found = 0;
    int failed = 0;
    for (size_t k = 0; k < replicas.size(); ++k) {
      const std::string& node = replicas[(start + k) % replicas.size()];
      absl::StatusOr<std::string> address = AddressOf(*table, node);
      if (!address.ok()) {
        last = absl::UnavailableError(address.status().message());
        ++failed;
        continue;
      }
      grpc::ClientContext context;
      PrepareContext(&context);
      v1::ChunkReadResponse reply;
      absl::Status status = FromGrpcFsStatus(
          context, ChunkStub(*address)->Read(&context, request, &reply));
      if (absl::IsNotFound(status)) {
        ++not_found;
        continue;
      }
      if (status.ok()) {
        size_t n = std::min<size_t>(reply.data().size(), span.length);
        std::memcpy(out, reply.data().data(), n);
        // Past the chunk's end (short read) stays zero: a sparse tail.
        return absl::OkStatus();
      }
      last = status;
      ++failed;
      if (!Retryable(status) && !absl::IsDataLoss(status)) return status;
      absl::MutexLock lock(&mu_);
      ++stats_.replica_failovers;
    }
    if (not_found > 0 && failed == 0) {
      // Every replica said NOT_FOUND: a hole; zeros already in `out`.
      return absl::OkStatus();
    }
    // Every replica failed (or lost data): refresh the table and retry.
    if (absl::IsDataLoss(last)) last = absl::UnavailableError(last.message());
    if (!retrier.ShouldRetry(last)) return last;
    refresh = true;
  }
}

absl::Status FsClient::Write(const FileRef& file, uint64_t offset,
                             absl::string_view data) {
  RETURN_IF_ERROR(CheckFile(file));
  if (data.empty()) return absl::OkStatus();
  std::vector<ChunkSpan> spans = SplitRange(file, offset, data.size());
  return ParallelFor(spans.size(), [&](size_t i) {
    return WriteChunk(file, spans[i],
                      data.substr(spans[i].buffer_offset, spans[i].length));
  });
}

absl::Status FsClient::CallHead(
    const FileRef& file, uint32_t index,
    const std::function<absl::Status(v1::FsChunkService::Stub*,
                                     const v1::ChainRef&)>& call) {
  Retrier retrier(this);
  bool refresh = false;
  while (true) {
    ASSIGN_OR_RETURN(std::shared_ptr<const v1::ChainTable> table,
                     GetTable(refresh));
    ASSIGN_OR_RETURN(const v1::Chain* chain, ChainFor(*table, file.ino, index));
    std::vector<std::string> order = WriteOrder(*chain);
    absl::Status status;
    if (order.empty()) {
      status = absl::UnavailableError(
          absl::StrCat("chain ", chain->id(), " has no writable member"));
    } else {
      absl::StatusOr<std::string> address = AddressOf(*table, order[0]);
      if (!address.ok()) {
        status = absl::UnavailableError(address.status().message());
      } else {
        v1::ChainRef ref;
        ref.set_chain_id(chain->id());
        ref.set_chain_version(chain->version());
        status = call(ChunkStub(*address), ref);
      }
    }
    if (status.ok() || !retrier.ShouldRetry(status)) return status;
    refresh = true;
  }
}

absl::Status FsClient::WriteChunk(const FileRef& file, const ChunkSpan& span,
                                  absl::string_view data) {
  {
    absl::MutexLock lock(&mu_);
    ++stats_.chunk_writes;
  }
  v1::ChunkWriteRequest request;
  request.mutable_chunk()->set_inode(file.ino);
  request.mutable_chunk()->set_index(span.index);
  request.set_offset(span.offset_in_chunk);
  request.set_data(std::string(data));
  return CallHead(file, span.index,
                  [&](v1::FsChunkService::Stub* stub, const v1::ChainRef& ref) {
                    *request.mutable_chain() = ref;
                    grpc::ClientContext context;
                    PrepareContext(&context);
                    v1::ChunkWriteResponse reply;
                    return FromGrpcFsStatus(
                        context, stub->Write(&context, request, &reply));
                  });
}

absl::Status FsClient::TruncateChunk(const FileRef& file, uint32_t index,
                                     uint64_t length) {
  v1::ChunkTruncateRequest request;
  request.mutable_chunk()->set_inode(file.ino);
  request.mutable_chunk()->set_index(index);
  request.set_length(length);
  absl::Status status =
      CallHead(file, index,
               [&](v1::FsChunkService::Stub* stub, const v1::ChainRef& ref) {
                 *request.mutable_chain() = ref;
                 grpc::ClientContext context;
                 PrepareContext(&context);
                 v1::ChunkWriteResponse reply;
                 return FromGrpcFsStatus(
                     context, stub->Truncate(&context, request, &reply));
               });
  // A chunk never written has nothing to cut.
  return absl::IsNotFound(status) ? absl::OkStatus() : status;
}

absl::Status FsClient::RemoveChunksFrom(const FileRef& file,
                                        uint32_t from_index,
                                        uint32_t end_index) {
  ASSIGN_OR_RETURN(std::shared_ptr<const v1::ChainTable> table,
                   GetTable(/*refresh=*/false));
  const uint32_t num_chains = table->chains_size();
  if (num_chains == 0 || end_index <= from_index) return absl::OkStatus();
  // One request per chain that can hold chunks in [from_index, end_index);
  // index i routes by (i mod num_chains) offsets, so the first num_chains
  // indexes cover every chain that matters.
  std::vector<uint32_t> representatives;
  for (uint32_t i = from_index; i < end_index && i - from_index < num_chains;
       ++i) {
    representatives.push_back(i);
  }
  return ParallelFor(representatives.size(), [&](size_t k) {
    const uint32_t index = representatives[k];
    v1::ChunkRemoveRequest request;
    request.set_inode(file.ino);
    request.set_from_index(from_index);
    return CallHead(
        file, index,
        [&](v1::FsChunkService::Stub* stub, const v1::ChainRef& ref) {
          *request.mutable_chain() = ref;
          grpc::ClientContext context;
          PrepareContext(&context);
          v1::ChunkRemoveResponse reply;
          return FromGrpcFsStatus(context,
                                  stub->Remove(&context, request, &reply));
        });
  });
}

absl::Status FsClient::TruncateData(const FileRef& file, uint64_t old_size,
                                    uint64_t new_size) {
  RETURN_IF_ERROR(CheckFile(file));
  if (new_size >= old_size) return absl::OkStatus();
  const uint64_t cs = file.chunk_size;
  uint32_t first_removed = static_cast<uint32_t>(new_size / cs);
  if (new_size % cs != 0) {
    RETURN_IF_ERROR(TruncateChunk(file, first_removed, new_size % cs));
    ++first_removed;
  }
  const uint32_t end = static_cast<uint32_t>((old_size + cs - 1) / cs);
  return RemoveChunksFrom(file, first_removed, end);
}

// ---- paths ----

absl::StatusOr<v1::Inode> FsClient::Stat(absl::string_view path) {
  return ResolvePath(path);
}

absl::StatusOr<std::vector<v1::DirEntry>> FsClient::ListDir(
    absl::string_view path) {
  ASSIGN_OR_RETURN(v1::Inode dir, ResolvePath(path));
  if (dir.type() != v1::INODE_TYPE_DIRECTORY) {
    return FsError(
        ENOTDIR, absl::StrCat("'", std::string(path), "' is not a directory"));
  }
  std::vector<v1::DirEntry> out;
  std::string cursor;
  while (true) {
    ASSIGN_OR_RETURN(ReadDirPage page, ReadDir(dir.id(), cursor, 1000));
    for (v1::DirEntry& e : page.entries) out.push_back(std::move(e));
    if (!page.has_more || out.empty()) break;
    cursor = out.back().name();
  }
  return out;
}

absl::StatusOr<v1::Inode> FsClient::MkdirAll(absl::string_view path,
                                             uint32_t mode) {
  if (path.empty() || path[0] != '/') {
    return FsError(
        EINVAL, absl::StrCat("path '", std::string(path), "' is not absolute"));
  }
  ASSIGN_OR_RETURN(v1::Inode dir, GetAttr(kRootIno));
  for (absl::string_view part : absl::StrSplit(path, '/', absl::SkipEmpty())) {
    absl::StatusOr<v1::Inode> next = Lookup(dir.id(), part);
    if (absl::IsNotFound(next.status())) {
      next = Mkdir(dir.id(), part, mode, 0, 0);
      if (absl::IsAlreadyExists(next.status())) next = Lookup(dir.id(), part);
    }
    RETURN_IF_ERROR(next.status());
    if (next->type() != v1::INODE_TYPE_DIRECTORY) {
      return FsError(ENOTDIR,
                     absl::StrCat("'", std::string(part), "' in '",
                                  std::string(path), "' is not a directory"));
    }
    dir = std::move(*next);
  }
  return dir;
}

absl::StatusOr<std::string> FsClient::ReadFile(absl::string_view path) {
  ASSIGN_OR_RETURN(v1::Inode inode, ResolvePath(path));
  if (inode.type() == v1::INODE_TYPE_DIRECTORY) {
    return FsError(EISDIR,
                   absl::StrCat("'", std::string(path), "' is a directory"));
  }
  if (inode.type() != v1::INODE_TYPE_FILE) {
    return FsError(EINVAL, absl::StrCat("'", std::string(path),
                                        "' is not a regular file"));
  }
  return Read(FileRef::Of(inode), inode.size(), 0, inode.size());
}

absl::Status FsClient::WriteFile(absl::string_view path, absl::string_view data,
                                 uint32_t mode) {
  std::string parent_path, name;
  RETURN_IF_ERROR(SplitParent(path, &parent_path, &name));
  ASSIGN_OR_RETURN(v1::Inode parent, ResolvePath(parent_path));
  absl::StatusOr<v1::Inode> inode =
      Create(parent.id(), name, mode, 0, 0, /*open=*/true);
  if (absl::IsAlreadyExists(inode.status())) {
    ASSIGN_OR_RETURN(v1::Inode existing, Lookup(parent.id(), name));
    inode = Open(existing.id(), /*for_write=*/true);
    if (inode.ok() && inode->size() > 0) {
      SetAttrArgs args;
      args.mask = kSetSize;
      args.size = 0;
      absl::StatusOr<v1::Inode> cut = SetAttr(inode->id(), args);
      if (!cut.ok()) {
        (void)Close(inode->id(), std::nullopt);
        return cut.status();
      }
    }
  }
  RETURN_IF_ERROR(inode.status());
  absl::Status status = Write(FileRef::Of(*inode), 0, data);
  absl::Status closed =
      Close(inode->id(),
            status.ok() ? std::optional<uint64_t>(data.size()) : std::nullopt);
  RETURN_IF_ERROR(status);
  return closed;
}

absl::Status FsClient::Remove(absl::string_view path, bool recursive) {
  std::string parent_path, name;
  RETURN_IF_ERROR(SplitParent(path, &parent_path, &name));
  ASSIGN_OR_RETURN(v1::Inode parent, ResolvePath(parent_path));
  ASSIGN_OR_RETURN(v1::Inode inode, Lookup(parent.id(), name));
  if (inode.type() != v1::INODE_TYPE_DIRECTORY) {
    return Unlink(parent.id(), name);
  }
  if (recursive) {
    std::string child_prefix(path);
    while (child_prefix.size() > 1 && child_prefix.back() == '/') {
      child_prefix.pop_back();
    }
    ASSIGN_OR_RETURN(std::vector<v1::DirEntry> entries, ListDir(child_prefix));
    for (const v1::DirEntry& e : entries) {
      RETURN_IF_ERROR(Remove(absl::StrCat(child_prefix, "/", e.name()),
                             /*recursive=*/true));
    }
  }
  return Rmdir(parent.id(), name);
}

absl::Status WaitForServingChains(const std::string& meta_address, int serving,
                                  absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last = "no table";
  while (true) {
    // A fresh client each round: Table() caches.
    ASSIGN_OR_RETURN(std::unique_ptr<FsClient> probe,
                     FsClient::Create({.meta_address = meta_address,
                                       .rpc_timeout = absl::Seconds(2),
                                       .retry_budget = absl::ZeroDuration()}));
    absl::StatusOr<v1::ChainTable> table = probe->Table();
    if (table.ok()) {
      bool ready = table->chains_size() > 0;
      for (const v1::Chain& chain : table->chains()) {
        int s = 0, syncing = 0;
        for (const v1::ChainMember& m : chain.members()) {
          s += m.state() == v1::CHAIN_MEMBER_STATE_SERVING;
          syncing += m.state() == v1::CHAIN_MEMBER_STATE_SYNCING;
        }
        if (s < serving || syncing != 0) ready = false;
      }
      if (ready) return absl::OkStatus();
      last = table->ShortDebugString();
    } else {
      last = table.status().ToString();
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("dsec-fs chains never reached ", serving,
                       " serving members; last: ", last));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
}

}  // namespace dsec::fs
