// ChunkStore against plain files, in the same directory and the same run:
//   store     sequential `io_kb` Write + Commit of `total_mb` into chunks of
//             `chunk_mb` (each update: copy-on-write file, fdatasync, dir
//             fsync, RocksDB WAL sync for the pending and for the commit),
//             then sequential verified Reads of the same ranges.
//   baseline  the same bytes with write() + fdatasync() per `io_kb` into one
//             file, then read() back.
// Reports MB/s for each and the store/baseline ratio. Reads come from the page
// cache for both (no root to drop caches).
//
//   build/bench/chunk_store_bench [--dir /tmp] [--total_mb 1024] [--io_kb 1024]
//                                 [--chunk_mb 4] [--sync]
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "fs/chunk_store.h"

ABSL_FLAG(std::string, dir, "/tmp",
          "parent directory for the run (a fresh subdirectory is made)");
ABSL_FLAG(int, total_mb, 1024, "bytes to write and read, MiB");
ABSL_FLAG(int, io_kb, 1024, "bytes per write/read, KiB");
ABSL_FLAG(int, chunk_mb, 4, "maximum chunk size, MiB");
ABSL_FLAG(bool, sync, true, "fsync data and metadata (both sides)");

namespace {

using dsec::fs::ChunkId;
using dsec::fs::ChunkStore;
using dsec::fs::ChunkStoreOptions;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "chunk_store_bench: %s\n", what.c_str());
  std::exit(1);
}

double MBps(int64_t bytes, absl::Duration d) {
  return bytes / 1e6 / absl::ToDoubleSeconds(d);
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int64_t io = int64_t{absl::GetFlag(FLAGS_io_kb)} << 10;
  const int64_t total = int64_t{absl::GetFlag(FLAGS_total_mb)} << 20;
  const int64_t chunk = int64_t{absl::GetFlag(FLAGS_chunk_mb)} << 20;
  const bool sync = absl::GetFlag(FLAGS_sync);
  if (io <= 0 || chunk % io != 0) Die("io_kb must divide chunk_mb");
  const int64_t ios = total / io, per_chunk = chunk / io;

  std::string tmpl = absl::GetFlag(FLAGS_dir) + "/chunk_bench.XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) Die("mkdtemp " + tmpl);
  const std::string root = tmpl;

  std::string buf(io, '\0');
  for (int64_t i = 0; i < io; ++i) buf[i] = static_cast<char>(i * 131 + 7);

  // Baseline: plain file.
  const std::string plain = root + "/plain";
  int fd = open(plain.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) Die("open " + plain);
  absl::Time t0 = absl::Now();
  for (int64_t i = 0; i < ios; ++i) {
    if (write(fd, buf.data(), io) != io) Die("write");
    if (sync && fdatasync(fd) != 0) Die("fdatasync");
  }
  absl::Duration plain_write = absl::Now() - t0;
  std::string rbuf(io, '\0');
  t0 = absl::Now();
  for (int64_t i = 0; i < ios; ++i) {
    if (pread(fd, rbuf.data(), io, i * io) != io) Die("read");
  }
  absl::Duration plain_read = absl::Now() - t0;
  close(fd);
  unlink(plain.c_str());

  // ChunkStore.
  ChunkStoreOptions options;
  options.dir = root + "/store";
  options.max_chunk_size = static_cast<uint32_t>(chunk);
  options.sync = sync;
  auto store_or = ChunkStore::Open(options);
  if (!store_or.ok()) Die(store_or.status().ToString());
  std::unique_ptr<ChunkStore> store = std::move(*store_or);
  t0 = absl::Now();
  for (int64_t i = 0; i < ios; ++i) {
    ChunkId id{1, static_cast<uint32_t>(i / per_chunk)};
    uint64_t version = i % per_chunk + 1;
    absl::Status s = store->Write(id, (i % per_chunk) * io, buf, version);
    if (s.ok()) s = store->Commit(id, version);
    if (!s.ok()) Die(s.ToString());
  }
  absl::Duration store_write = absl::Now() - t0;
  t0 = absl::Now();
  for (int64_t i = 0; i < ios; ++i) {
    ChunkId id{1, static_cast<uint32_t>(i / per_chunk)};
    auto r = store->Read(id, (i % per_chunk) * io, io);
    if (!r.ok()) Die(r.status().ToString());
    if (static_cast<int64_t>(r->size()) != io) Die("short read");
  }
  absl::Duration store_read = absl::Now() - t0;
  store.reset();
  std::system(("rm -rf " + root).c_str());

  std::printf(
      "chunk_store_bench: %lld MiB in %lld KiB ops, %lld MiB chunks, "
      "sync=%d\n",
      static_cast<long long>(total >> 20), static_cast<long long>(io >> 10),
      static_cast<long long>(chunk >> 20), sync);
  std::printf("%-28s %10s %10s\n", "", "write MB/s", "read MB/s");
  std::printf("%-28s %10.1f %10.1f\n", "plain write()/read()",
              MBps(total, plain_write), MBps(total, plain_read));
  std::printf("%-28s %10.1f %10.1f\n", "ChunkStore Write+Commit/Read",
              MBps(total, store_write), MBps(total, store_read));
  std::printf(
      "%-28s %10.2f %10.2f\n", "ratio store/plain",
      absl::ToDoubleSeconds(plain_write) / absl::ToDoubleSeconds(store_write),
      absl::ToDoubleSeconds(plain_read) / absl::ToDoubleSeconds(store_read));
  return 0;
}
