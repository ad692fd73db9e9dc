// dsec-fs against its peers on the same local disk, in one run:
//   native       a plain directory
//   passthrough  libfuse's passthrough_ll example (built from Debian's
//                libfuse3-dev source as fuse-passthrough-ll) over a plain
//                directory, default options
//   dsec-fs      dsec-meta + 3 dsec-chunk (replication 3, 4 MiB chunks) on
//                loopback, mounted with dsec-mount (fs/testing/fs_cluster.h)
// Measures, medians of --reps / --meta_reps repetitions, peers interleaved:
//   1. sequential write of a --size_mib file in 1 MiB writes + fsync + close
//   2. sequential read of it in 1 MiB reads: cold (drop_caches first) and hot
//   3. create (O_CREAT|O_EXCL + close), stat, unlink of --files files in one
//      directory, single thread: ops/s per phase and in total
//   4. sandbox create + `python3 -c "import json, re, ..."` + delete, with a
//      minimal python rootfs as the only layer (host_binds off): from a local
//      directory vs from the same tree imported into dsec-fs as image "py";
//      steady state and with drop_caches before every run.
// Benchmarks report, they do not assert. Needs root (drop_caches, FUSE,
// sandboxes). Everything lives under one fresh directory in --dir. About 4
// minutes with the defaults on a 2-vCPU VM; the flags scale it down.
//
//   sudo build/bench/fs_bench [--dir /var/tmp] [--size_mib 1024] [--reps 3]
//       [--files 10000] [--meta_reps 1] [--sandbox_runs 10]
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agent/image_warmer.h"
#include "bench/bench_util.h"
#include "common/testing/subprocess.h"
#include "ctl/fs_commands.h"
#include "fs/image.h"
#include "fs/testing/fs_cluster.h"
#include "sandbox/sandbox.h"

ABSL_FLAG(std::string, dir, "/var/tmp",
          "parent directory for the run (one fresh subdirectory holds the "
          "native dir, passthrough source, dsec-fs data and rootfs)");
ABSL_FLAG(int, size_mib, 1024, "file size for the sequential tests, MiB");
ABSL_FLAG(int, reps, 3, "repetitions of the write/read tests");
ABSL_FLAG(int, files, 10000, "files for the metadata test");
ABSL_FLAG(int, meta_reps, 1,
          "repetitions of the metadata test (one dsec-fs pass of 10,000 "
          "files takes about a minute here)");
ABSL_FLAG(int, sandbox_runs, 10,
          "sandbox runs per layer per regime (0: skip the sandbox test)");
ABSL_FLAG(std::string, passthrough, "",
          "passthrough_ll binary (default: fuse-passthrough-ll next to this "
          "binary)");
ABSL_FLAG(bool, keep, false, "keep the run directory");
ABSL_FLAG(int, hold_s, 0,
          "before teardown, keep the mounts up this long (to inspect them "
          "with nsenter -m -t PID: they live in this process's private mount "
          "namespace)");

namespace {

using Clock = std::chrono::steady_clock;
using dsec::bench::OrDie;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "fs_bench: %s\n", what.c_str());
  std::exit(1);
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::string SelfDir() {
  return std::filesystem::read_symlink("/proc/self/exe").parent_path();
}

bool DropCaches() {
  sync();
  int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, "3", 1) == 1;
  close(fd);
  return ok;
}

struct Peer {
  std::string name;
  std::string dir;  // where this peer's files go
};

// --- 1 + 2: sequential I/O -------------------------------------------------

constexpr size_t kIo = 1 << 20;

// MiB/s of writing `size` bytes in 1 MiB writes + fsync + close.
double WriteFile(const std::string& path, int64_t size, const char* buf) {
  unlink(path.c_str());
  auto t0 = Clock::now();
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) Die(absl::StrCat("open ", path, ": ", strerror(errno)));
  for (int64_t done = 0; done < size;) {
    ssize_t n = write(fd, buf + (done / kIo % 4) * 64, kIo);
    if (n <= 0) Die(absl::StrCat("write ", path, ": ", strerror(errno)));
    done += n;
  }
  if (fsync(fd) != 0) Die(absl::StrCat("fsync ", path, ": ", strerror(errno)));
  if (close(fd) != 0) Die(absl::StrCat("close ", path, ": ", strerror(errno)));
  return size / double(1 << 20) / Seconds(t0, Clock::now());
}

// MiB/s of reading the whole file in 1 MiB reads.
double ReadFile(const std::string& path, int64_t size, char* buf) {
  auto t0 = Clock::now();
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) Die(absl::StrCat("open ", path, ": ", strerror(errno)));
  int64_t total = 0;
  for (;;) {
    ssize_t n = read(fd, buf, kIo);
    if (n < 0) Die(absl::StrCat("read ", path, ": ", strerror(errno)));
    if (n == 0) break;
    total += n;
  }
  close(fd);
  double mibs = total / double(1 << 20) / Seconds(t0, Clock::now());
  if (total != size) {
    std::printf("  WARNING: read %lld of %lld bytes from %s\n",
                static_cast<long long>(total), static_cast<long long>(size),
                path.c_str());
  }
  return mibs;
}

// --- 3: metadata ------------------------------------------------------------

struct MetaResult {
  double create = 0, stat = 0, unlink = 0, total = 0;  // ops/s
};

MetaResult Metadata(const std::string& dir, int n) {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (mkdir(dir.c_str(), 0755) != 0) Die("mkdir " + dir);
  std::vector<std::string> names;
  names.reserve(n);
  char name[32];
  for (int i = 0; i < n; ++i) {
    std::snprintf(name, sizeof(name), "/f%06d", i);
    names.push_back(dir + name);
  }
  auto t0 = Clock::now();
  for (const std::string& p : names) {
    int fd = open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) Die(absl::StrCat("create ", p, ": ", strerror(errno)));
    close(fd);
  }
  auto t1 = Clock::now();
  struct stat st;
  for (const std::string& p : names) {
    if (stat(p.c_str(), &st) != 0) Die("stat " + p);
  }
  auto t2 = Clock::now();
  for (const std::string& p : names) {
    if (unlink(p.c_str()) != 0) Die("unlink " + p);
  }
  auto t3 = Clock::now();
  rmdir(dir.c_str());
  return {n / Seconds(t0, t1), n / Seconds(t1, t2), n / Seconds(t2, t3),
          3.0 * n / Seconds(t0, t3)};
}

// --- 4: python rootfs
// ---------------------------------------------------------

void CopyFile(const std::string& src, const std::string& dst) {
  std::filesystem::create_directories(std::filesystem::path(dst).parent_path());
  std::filesystem::copy_file(src, dst,
                             std::filesystem::copy_options::overwrite_existing);
  // Modes and mtimes as `cp -a` would: python checks a .pyc against its
  // source's mtime, and a stale one is recompiled on every start.
  struct stat st;
  if (stat(src.c_str(), &st) == 0) {
    chmod(dst.c_str(), st.st_mode & 07777);
    const timespec times[2] = {st.st_atim, st.st_mtim};
    utimensat(AT_FDCWD, dst.c_str(), times, 0);
  }
}

// Copies a tree (symlinks as symlinks), skipping directories named in `skip`.
void CopyTree(const std::filesystem::path& src,
              const std::filesystem::path& dst,
              const std::set<std::string>& skip) {
  namespace fs = std::filesystem;
  fs::create_directories(dst);
  for (const fs::directory_entry& e : fs::directory_iterator(src)) {
    fs::path to = dst / e.path().filename();
    if (e.is_symlink()) {
      fs::copy_symlink(e.path(), to);
    } else if (e.is_directory()) {
      if (skip.count(e.path().filename().string())) continue;
      CopyTree(e.path(), to, skip);
    } else if (e.is_regular_file()) {
      CopyFile(e.path(), to);
    }
  }
}

// Absolute paths `ldd` lists for `elf` (libraries and the loader).
std::vector<std::string> LddPaths(const std::string& elf) {
  std::vector<std::string> out;
  FILE* f = popen(("ldd '" + elf + "' 2>/dev/null").c_str(), "r");
  if (f == nullptr) return out;
  char line[1024];
  while (fgets(line, sizeof(line), f) != nullptr) {
    std::string s(line);
    size_t arrow = s.find("=> ");
    size_t start = arrow != std::string::npos ? arrow + 3 : s.find('/');
    if (start == std::string::npos || start >= s.size() || s[start] != '/')
      continue;
    size_t end = s.find_first_of(" \t\n", start);
    out.push_back(s.substr(start, end - start));
  }
  pclose(f);
  return out;
}

// python3's binary, the libraries ldd lists for it and its extension
// modules, the loader, the stdlib without test/ and site/dist-packages, a
// minimal /etc and the sandbox's mountpoints. Returns the file count.
int BuildPythonRootfs(const std::string& root) {
  namespace fs = std::filesystem;
  const std::string py = fs::canonical("/usr/bin/python3");  // python3.X
  const std::string ver = fs::path(py).filename();
  const std::string stdlib = "/usr/lib/" + ver;
  CopyFile(py, root + py);
  fs::create_symlink(ver, root + "/usr/bin/python3");
  CopyTree(stdlib, root + stdlib,
           {"test", "site-packages", "dist-packages", "idle_test"});
  std::set<std::string> libs;
  std::vector<std::string> elves = {py};
  for (const fs::directory_entry& e :
       fs::directory_iterator(stdlib + "/lib-dynload")) {
    elves.push_back(e.path());
  }
  for (const std::string& elf : elves) {
    for (std::string& p : LddPaths(elf)) libs.insert(std::move(p));
  }
  for (const std::string& lib : libs) CopyFile(fs::canonical(lib), root + lib);
  fs::create_directories(root + "/etc");
  std::ofstream(root + "/etc/passwd") << "root:x:0:0:root:/root:/bin/sh\n"
                                         "nobody:x:65534:65534:nobody:/"
                                         "nonexistent:/usr/sbin/nologin\n";
  std::ofstream(root + "/etc/group") << "root:x:0:\nnogroup:x:65534:\n";
  if (fs::is_directory("/etc/" + ver)) {
    CopyTree("/etc/" + ver, root + "/etc/" + ver, {});  // sitecustomize.py
  }
  for (const char* d : {"/tmp", "/proc", "/dev", "/root"}) {
    fs::create_directories(root + d);
  }
  chmod((root + "/tmp").c_str(), 01777);
  int files = 0;
  for (auto it = fs::recursive_directory_iterator(root);
       it != fs::recursive_directory_iterator(); ++it) {
    files += it->is_regular_file();
  }
  return files;
}

// Median µs of open(O_RDONLY) + close over every regular file of a tree, on
// a second pass (the first warms the caches).
double OpenCloseUs(const std::string& root) {
  std::vector<std::string> files;
  for (auto it = std::filesystem::recursive_directory_iterator(root);
       it != std::filesystem::recursive_directory_iterator(); ++it) {
    if (it->is_regular_file() && !it->is_symlink()) {
      files.push_back(it->path());
    }
  }
  std::vector<double> us;
  for (int pass = 0; pass < 2; ++pass) {
    for (const std::string& f : files) {
      auto t0 = Clock::now();
      int fd = open(f.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd >= 0) close(fd);
      if (pass == 1) us.push_back(Seconds(t0, Clock::now()) * 1e6);
    }
  }
  return Median(us);
}

// --- output
// -------------------------------------------------------------------

std::string Fmt(double v, int prec = 1) {
  char b[64];
  std::snprintf(b, sizeof(b), "%.*f", prec, v);
  return b;
}

std::string Ratio(double a, double b) {
  return b > 0 ? Fmt(a / b, 2) + "×" : "—";
}

void PrintRaw(const std::string& what, const std::vector<double>& v) {
  std::vector<std::string> s;
  for (double x : v) s.push_back(Fmt(x, 1));
  std::printf("  %-40s %s\n", what.c_str(), absl::StrJoin(s, " ").c_str());
}

}  // namespace

int main(int argc, char** argv) {
  // Mounts made by this process and its children (dsec-mount,
  // passthrough_ll, the sandboxes' layers) stay in a private namespace.
  (void)dsec::sandbox::EnterPrivateMountNamespace();
  std::vector<std::string> cmdline(argv, argv + argc);
  absl::ParseCommandLine(argc, argv);
  namespace fs = std::filesystem;
  const int64_t size = int64_t{absl::GetFlag(FLAGS_size_mib)} << 20;
  const int reps = absl::GetFlag(FLAGS_reps);
  const int files = absl::GetFlag(FLAGS_files);
  const int meta_reps = absl::GetFlag(FLAGS_meta_reps);
  const int sandbox_runs = absl::GetFlag(FLAGS_sandbox_runs);
  const std::string self_dir = SelfDir();
  if (getenv("DSEC_BIN_DIR") == nullptr) {
    setenv("DSEC_BIN_DIR", (fs::path(self_dir).parent_path() / "bin").c_str(),
           1);
  }
  std::string pt_bin = absl::GetFlag(FLAGS_passthrough);
  if (pt_bin.empty()) pt_bin = self_dir + "/fuse-passthrough-ll";
  if (geteuid() != 0) Die("run as root (drop_caches, FUSE, sandboxes)");

  std::string tmpl = absl::GetFlag(FLAGS_dir) + "/fs_bench.XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) Die("mkdtemp " + tmpl);
  const std::string root = tmpl;
  std::printf("fs_bench: run directory %s\n", root.c_str());
  std::printf("reproduce: %s\n", absl::StrJoin(cmdline, " ").c_str());

  // Peers.
  const std::string native_dir = root + "/native";
  const std::string pt_src = root + "/pt_src", pt_mnt = root + "/pt_mnt";
  for (const std::string& d : {native_dir, pt_src, pt_mnt}) {
    fs::create_directories(d);
  }
  auto pt = OrDie(dsec::testing::Subprocess::Start(
      {pt_bin, "-f", "-o", "source=" + pt_src, pt_mnt}, root + "/pt.log"));
  for (auto deadline = Clock::now() + std::chrono::seconds(10);
       !dsec::fs::testing::IsFuseMounted(pt_mnt);) {
    if (!pt->running() || Clock::now() > deadline) {
      Die("passthrough_ll did not mount: " + pt->Log());
    }
    usleep(10000);
  }
  dsec::fs::testing::FsTestClusterOptions copts;
  copts.chunk_servers = 3;
  copts.replication = 3;
  copts.chunk_size = 4 << 20;
  copts.root = root + "/cluster";
  auto cluster = OrDie(dsec::fs::testing::FsTestCluster::Start(copts));
  const std::string dsec_mnt = OrDie(cluster->Mount());
  fs::create_directories(dsec_mnt + "/bench");
  const std::vector<Peer> peers = {{"native", native_dir},
                                   {"passthrough_ll", pt_mnt},
                                   {"dsec-fs", dsec_mnt + "/bench"}};
  std::printf(
      "peers: native %s | passthrough_ll %s (source %s) | dsec-fs %s "
      "(3 chunk servers, replication 3, 4 MiB chunks)\n",
      native_dir.c_str(), pt_mnt.c_str(), pt_src.c_str(), dsec_mnt.c_str());
  bool can_drop = DropCaches();
  if (!can_drop) std::printf("WARNING: cannot drop caches; cold = warm\n");

  // 1 + 2.
  std::vector<double> wr[3], cold[3], hot[3];
  if (size > 0 && reps > 0) {
    char* buf = static_cast<char*>(aligned_alloc(4096, kIo + 4096));
    std::mt19937_64 rng(42);
    for (size_t i = 0; i < (kIo + 4096) / 8; ++i) {
      reinterpret_cast<uint64_t*>(buf)[i] = rng();
    }
    std::vector<char> rbuf(kIo);
    auto t_io = Clock::now();
    for (int r = 0; r < reps; ++r) {
      for (int p = 0; p < 3; ++p) {
        std::string file = peers[p].dir + "/seq.dat";
        wr[p].push_back(WriteFile(file, size, buf));
        DropCaches();
        cold[p].push_back(ReadFile(file, size, rbuf.data()));
        hot[p].push_back(ReadFile(file, size, rbuf.data()));
        std::printf(
            "rep %d %-15s write %8.1f  cold read %8.1f  hot read %8.1f"
            " MiB/s\n",
            r, peers[p].name.c_str(), wr[p].back(), cold[p].back(),
            hot[p].back());
        std::fflush(stdout);
      }
    }
    for (const Peer& p : peers) unlink((p.dir + "/seq.dat").c_str());
    free(buf);
    std::printf("sequential I/O took %.1f s\n", Seconds(t_io, Clock::now()));
  }

  // 3.
  std::vector<MetaResult> meta[3];
  if (files > 0 && meta_reps > 0) {
    auto t_meta = Clock::now();
    for (int r = 0; r < meta_reps; ++r) {
      for (int p = 0; p < 3; ++p) {
        MetaResult m = Metadata(peers[p].dir + "/meta", files);
        meta[p].push_back(m);
        std::printf(
            "rep %d %-15s create %8.0f  stat %8.0f  unlink %8.0f  "
            "total %8.0f ops/s\n",
            r, peers[p].name.c_str(), m.create, m.stat, m.unlink, m.total);
        std::fflush(stdout);
      }
    }
    std::printf("metadata took %.1f s\n", Seconds(t_meta, Clock::now()));
  }

  // 4.
  std::vector<double> sb_steady[2], sb_cold[2];  // [0] local, [1] dsec-fs
  double open_us[2] = {0, 0};
  if (sandbox_runs > 0) {
    auto t_sb = Clock::now();
    const std::string rootfs = root + "/pyroot";
    int nfiles = BuildPythonRootfs(rootfs);
    auto t_import = Clock::now();
    auto stats = OrDie(dsec::ctl::ImportImage(cluster->client(), "py", rootfs));
    double import_s = Seconds(t_import, Clock::now());
    const std::string image = dsec::fs::ImagePath(dsec_mnt, "py");
    std::printf(
        "python rootfs: %d files locally; imported %llu files, %llu dirs, "
        "%llu symlinks, %.1f MiB into %s in %.2f s\n",
        nfiles, static_cast<unsigned long long>(stats.files),
        static_cast<unsigned long long>(stats.dirs),
        static_cast<unsigned long long>(stats.symlinks),
        stats.bytes / 1048576.0, image.c_str(), import_s);
    dsec::sandbox::RuntimeOptions ropts;
    ropts.state_dir = root + "/state";
    auto runtime = OrDie(dsec::sandbox::Runtime::Create(ropts));
    const dsec::sandbox::ExecRequest req{
        .argv = {"python3", "-c",
                 "import json, re, collections, decimal, email.parser, "
                 "http.client"},
        .timeout = absl::Seconds(120)};
    const std::string layers[2] = {rootfs, image};
    auto run = [&](int which) {
      dsec::sandbox::SandboxSpec spec;
      spec.layers = {layers[which]};
      spec.host_binds = false;
      auto t0 = Clock::now();
      auto sb = OrDie(runtime->CreateSandbox(spec));
      auto r = OrDie(sb->Exec(req));
      sb.reset();
      double ms = Seconds(t0, Clock::now()) * 1e3;
      if (r.outcome != dsec::sandbox::ExecOutcome::kExited ||
          r.exit_code != 0) {
        std::printf("  WARNING: python in %s: %s exit %d: %s\n",
                    layers[which].c_str(),
                    dsec::sandbox::ExecOutcomeName(r.outcome), r.exit_code,
                    r.stderr_data.c_str());
      }
      return ms;
    };
    // As the agent does before an image's first sandbox (agent/
    // image_warmer.h): read the tree from this process's cgroup, so the
    // kernel objects outlive each sandbox's emptied memory cgroup. Both
    // layers alike.
    for (const std::string& layer : layers) {
      dsec::agent::ImageWarmer().Warm(layer);
    }
    for (int i = 0; i < 2; ++i) run(0), run(1);  // warm both
    for (int i = 0; i < sandbox_runs; ++i) {
      for (int w = 0; w < 2; ++w) sb_steady[w].push_back(run(w));
    }
    for (int i = 0; i < sandbox_runs; ++i) {
      for (int w = 0; w < 2; ++w) {
        DropCaches();
        sb_cold[w].push_back(run(w));
      }
    }
    open_us[0] = OpenCloseUs(rootfs);
    open_us[1] = OpenCloseUs(image);
    PrintRaw("sandbox steady, local dir (ms)", sb_steady[0]);
    PrintRaw("sandbox steady, dsec-fs image (ms)", sb_steady[1]);
    PrintRaw("sandbox after drop_caches, local dir (ms)", sb_cold[0]);
    PrintRaw("sandbox after drop_caches, dsec-fs image (ms)", sb_cold[1]);
    std::printf("sandbox test took %.1f s\n", Seconds(t_sb, Clock::now()));
  }

  // Table.
  std::printf(
      "\n| measurement | native | passthrough_ll | dsec-fs | "
      "dsec-fs / passthrough_ll | target |\n|---|---|---|---|---|---|\n");
  auto row = [](const std::string& what, const double v[3],
                const std::string& target, int prec = 1) {
    std::printf("| %s | %s | %s | %s | **%s** | %s |\n", what.c_str(),
                Fmt(v[0], prec).c_str(), Fmt(v[1], prec).c_str(),
                Fmt(v[2], prec).c_str(), Ratio(v[2], v[1]).c_str(),
                target.c_str());
  };
  if (!wr[0].empty()) {
    double w[3], c[3], h[3];
    for (int p = 0; p < 3; ++p) {
      w[p] = Median(wr[p]), c[p] = Median(cold[p]), h[p] = Median(hot[p]);
    }
    std::string sz = absl::StrCat(absl::GetFlag(FLAGS_size_mib), " MiB");
    row("sequential write " + sz + ", 1 MiB writes + fsync (MiB/s)", w,
        "≥ 0.3×");
    row("sequential read, cold (MiB/s)", c, "≥ 0.7×");
    row("sequential read, hot (MiB/s)", h, "≥ 0.7×");
  }
  if (!meta[0].empty()) {
    double v[4][3];
    for (int p = 0; p < 3; ++p) {
      std::vector<double> a, b, c, d;
      for (const MetaResult& m : meta[p]) {
        a.push_back(m.create), b.push_back(m.stat), c.push_back(m.unlink),
            d.push_back(m.total);
      }
      v[0][p] = Median(a), v[1][p] = Median(b), v[2][p] = Median(c),
      v[3][p] = Median(d);
    }
    std::string n = absl::StrCat(files, " files");
    row("create (O_CREAT|O_EXCL + close), " + n + " (ops/s)", v[0], "", 0);
    row("stat (ops/s)", v[1], "", 0);
    row("unlink (ops/s)", v[2], "", 0);
    row("create + stat + unlink total (ops/s)", v[3], "≥ 0.5×", 0);
  }
  if (!sb_steady[0].empty()) {
    std::printf(
        "\n| sandbox create + python imports + delete | local dir | "
        "dsec-fs image | dsec-fs / local | target |\n"
        "|---|---|---|---|---|\n");
    for (auto [what, v] :
         {std::pair{"steady state, p50", sb_steady},
          std::pair{"drop_caches before each run, p50", sb_cold}}) {
      double l = Median(v[0]), d = Median(v[1]);
      std::printf("| %s | %.1f ms | %.1f ms | **%s** | ≤ 1.5× |\n", what, l, d,
                  Ratio(d, l).c_str());
    }
    std::printf(
        "| open + close of a file of the tree, warm, p50 | %.1f µs | "
        "%.1f µs | %s | — |\n",
        open_us[0], open_us[1], Ratio(open_us[1], open_us[0]).c_str());
  }
  std::printf("\nreproduce: %s\n", absl::StrJoin(cmdline, " ").c_str());
  std::fflush(stdout);

  if (int hold = absl::GetFlag(FLAGS_hold_s); hold > 0) {
    std::printf("holding the mounts for %d s (pid %d)\n", hold, getpid());
    std::fflush(stdout);
    sleep(hold);
  }
  // Teardown: passthrough first, then the cluster (its destructor unmounts).
  (void)pt->Stop(SIGTERM, absl::Seconds(10));
  if (dsec::fs::testing::IsFuseMounted(pt_mnt)) {
    umount2(pt_mnt.c_str(), MNT_DETACH);
  }
  cluster.reset();
  if (!absl::GetFlag(FLAGS_keep)) {
    if (dsec::fs::testing::IsFuseMounted(pt_mnt) ||
        dsec::fs::testing::IsFuseMounted(dsec_mnt)) {
      std::printf("a mount is still live; leaving %s\n", root.c_str());
    } else {
      std::error_code ec;
      fs::remove_all(root, ec);
    }
  }
  return 0;
}
