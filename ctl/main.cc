// dsecctl: the admin CLI. Global flags, then a command (see commands.h).
// `local up` runs a whole single-node cluster in this process until Ctrl-C.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/rlimit.h"
#include "common/tls.h"
#include "ctl/commands.h"
#include "ctl/local_cluster.h"
#include "sandbox/sandbox.h"

namespace {

// Runs `argv` as a child of this process (so it shares the private mount
// namespace and sees the dsec-fs mount) with the cluster's addresses in its
// environment; returns its exit status (128 + signal if killed).
int RunChild(const std::vector<std::string>& argv,
             const dsec::ctl::LocalCluster& cluster) {
  std::vector<char*> cargv;
  for (const std::string& a : argv)
    cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    std::cerr << "error: fork: " << strerror(errno) << "\n";
    return 1;
  }
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    setenv("DSEC_CONTROLLER", cluster.controller_address().c_str(), 1);
    if (!cluster.fs_meta_address().empty()) {
      setenv("DSEC_FS_META", cluster.fs_meta_address().c_str(), 1);
      setenv("DSEC_FS_MOUNT", cluster.fs_mountpoint().c_str(), 1);
    }
    execvp(cargv[0], cargv.data());
    fprintf(stderr, "error: cannot run %s: %s\n", cargv[0], strerror(errno));
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

int LocalUp(dsec::ctl::CommandContext ctx,
            const std::vector<std::string>& args) {
  // Still single-threaded: the cluster's host-side mounts die with us.
  (void)dsec::sandbox::EnterPrivateMountNamespace();
  dsec::ctl::LocalClusterOptions options;
  const char* home = getenv("HOME");
  options.data_dir = absl::StrCat(home ? home : "/tmp", "/.dsec/local");
  bool demo = false;
  bool fs_port_set = false;
  int count = 8;
  std::vector<std::string> run;  // --run CMD ARGS...: the rest of the line
  for (size_t i = 2; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) {
        std::cerr << "usage error: " << a << " needs a value\n";
        exit(2);
      }
      return args[++i];
    };
    if (a == "--data_dir") {
      options.data_dir = value();
    } else if (a == "--port") {
      if (!absl::SimpleAtoi(value(), &options.controller_port)) {
        std::cerr << "usage error: --port needs a number\n";
        return 2;
      }
    } else if (a == "--warm_pool") {
      if (!absl::SimpleAtoi(value(), &options.warm_pool_size)) return 2;
    } else if (a == "--max_sandboxes") {
      if (!absl::SimpleAtoi(value(), &options.max_sandboxes) ||
          options.max_sandboxes < 1) {
        std::cerr << "usage error: --max_sandboxes needs a number >= 1\n";
        return 2;
      }
    } else if (a == "--metrics_port") {
      if (!absl::SimpleAtoi(value(), &options.metrics_port)) return 2;
    } else if (a == "--fs_port") {
      if (!absl::SimpleAtoi(value(), &options.fs_meta_port)) return 2;
      fs_port_set = true;
    } else if (a == "--no_fs") {
      options.fs = false;
    } else if (a == "--demo") {
      demo = true;
    } else if (a == "--count") {
      if (!absl::SimpleAtoi(value(), &count) || count < 1) return 2;
    } else if (a == "--run") {
      run.assign(args.begin() + i + 1, args.end());
      if (run.empty()) {
        std::cerr << "usage error: --run needs a command\n";
        return 2;
      }
      break;
    } else {
      std::cerr << "usage error: unknown flag " << a
                << " (local up [--data_dir DIR] [--port N] [--warm_pool N] "
                   "[--max_sandboxes N] [--metrics_port N] [--fs_port N] "
                   "[--no_fs] [--demo] [--count N] [--run CMD ARGS...])\n";
      return 2;
    }
  }
  // With --port 0 (tests, several clusters at once) dsec-meta takes any port
  // too.
  if (options.controller_port == 0 && !fs_port_set) options.fs_meta_port = 0;
  // Block the stop signals before any thread starts; sigwait collects them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  dsec::RaiseOpenFileLimit();
  const absl::Time t0 = absl::Now();
  auto cluster = dsec::ctl::LocalCluster::Create(options);
  if (!cluster.ok()) {
    std::cerr << "error: local cluster did not start: "
              << cluster.status().message() << "\n";
    return 1;
  }
  std::cout << "dsec local cluster ready in "
            << absl::FormatDuration(
                   absl::Trunc(absl::Now() - t0, absl::Milliseconds(1)))
            << "\n  controller " << (*cluster)->controller_address()
            << "\n  agent      " << (*cluster)->agent_endpoint();
  if (options.fs) {
    std::cout << "\n  dsec-fs    meta " << (*cluster)->fs_meta_address()
              << ", mounted at " << (*cluster)->fs_mountpoint();
  }
  std::cout << "\n  data       " << options.data_dir << "\n" << std::flush;
  int rc = 0;
  if (demo) {
    ctx.conn.controller = (*cluster)->controller_address();
    rc = dsec::ctl::RunDemo(ctx, count, std::cout, std::cerr);
  }
  if (rc == 0 && !run.empty()) {
    std::cout << "\n== " << run[0] << " against the local cluster\n"
              << std::flush;
    rc = RunChild(run, **cluster);
  } else if (!demo) {
    std::cout << "export DSEC_CONTROLLER=" << (*cluster)->controller_address();
    if (options.fs) {
      std::cout << " DSEC_FS_META=" << (*cluster)->fs_meta_address();
    }
    std::cout << "   # then: dsecctl nodes list; Ctrl-C stops the cluster\n"
              << std::flush;
    int sig = 0;
    sigwait(&stop, &sig);
    std::cout << "stopping (signal " << sig << ")\n";
  }
  (*cluster)->Shutdown();
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  const char* level = getenv("DSEC_LOG_LEVEL");
  (void)dsec::InitLogging(
      {.level = level ? level : "warn", .component = "dsecctl"});
  dsec::ctl::CommandContext ctx;
  if (const char* c = getenv("DSEC_CONTROLLER")) ctx.conn.controller = c;
  if (const char* k = getenv("DSEC_API_KEY")) ctx.conn.api_key = k;
  if (const char* m = getenv("DSEC_FS_META")) ctx.fs_meta = m;
  std::vector<std::string> args(argv + 1, argv + argc);
  dsec::TlsFiles tls;  // from --tls_* flags
  size_t i = 0;
  for (; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](const std::string& name) -> const std::string* {
      if (i + 1 >= args.size()) return nullptr;
      (void)name;
      return &args[++i];
    };
    if (a == "--controller") {
      const std::string* v = value(a);
      if (!v) return 2;
      ctx.conn.controller = *v;
    } else if (a == "--fs_meta") {
      const std::string* v = value(a);
      if (!v) return 2;
      ctx.fs_meta = *v;
    } else if (a == "--api_key") {
      const std::string* v = value(a);
      if (!v) return 2;
      ctx.conn.api_key = *v;
    } else if (a == "-o" || a == "--output") {
      const std::string* v = value(a);
      if (!v || (*v != "json" && *v != "table")) {
        std::cerr << "usage error: -o takes json or table\n";
        return 2;
      }
      ctx.output =
          *v == "json" ? dsec::ctl::Output::kJson : dsec::ctl::Output::kTable;
    } else if (a == "-o=json" || a == "--output=json") {
      ctx.output = dsec::ctl::Output::kJson;
    } else if (a == "--tls_ca" || a == "--tls_cert" || a == "--tls_key") {
      const std::string* v = value(a);
      if (!v) return 2;
      (a == "--tls_ca"     ? tls.ca_file
       : a == "--tls_cert" ? tls.cert_file
                           : tls.key_file) = *v;
    } else if (a == "--no_progress") {
      ctx.progress = false;
    } else {
      break;
    }
  }
  args.erase(args.begin(), args.begin() + static_cast<long>(i));
  if (auto creds = dsec::MakeChannelCredentials(tls); !creds.ok()) {
    std::cerr << "usage error: " << creds.status().message() << "\n";
    return 2;
  } else {
    ctx.conn.credentials = *creds;
  }
  if (args.size() >= 2 && args[0] == "local" && args[1] == "up") {
    return LocalUp(ctx, args);
  }
  return dsec::ctl::Run(ctx, args, std::cout, std::cerr);
}
