// Round-trip cost of one small unary call to a dsec-fs style service:
// gRPC's synchronous server vs its callback server, over TCP loopback and
// over a unix socket, one call in flight (the FUSE client's pattern: one
// thread per request, waiting for its meta reply). Not a test.
//
//   build/bench/rpc_bench [--calls 20000] [--rounds 3]
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "dsec/v1/fs_service.grpc.pb.h"
#include "fs/fs_rpc.h"

ABSL_FLAG(int, calls, 20000, "calls per round and variant");
ABSL_FLAG(int, rounds, 3, "rounds; variants interleaved round by round");
ABSL_FLAG(std::string, meta, "",
          "also time GetAttr and Lookup against this running dsec-meta");

namespace {

using dsec::v1::FsMetaService;
using dsec::v1::GetAttrRequest;
using dsec::v1::InodeReply;

void Fill(const GetAttrRequest& request, InodeReply* reply) {
  auto* inode = reply->mutable_inode();
  inode->set_id(request.ino());
  inode->set_size(4096);
  inode->set_mode(0644);
  inode->set_nlink(1);
}

class SyncService final : public FsMetaService::Service {
  grpc::Status GetAttr(grpc::ServerContext*, const GetAttrRequest* request,
                       InodeReply* reply) override {
    Fill(*request, reply);
    return grpc::Status::OK;
  }
};

class CallbackService final : public FsMetaService::CallbackService {
  grpc::ServerUnaryReactor* GetAttr(grpc::CallbackServerContext* context,
                                    const GetAttrRequest* request,
                                    InodeReply* reply) override {
    Fill(*request, reply);
    auto* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

struct Variant {
  std::string name;
  bool callback;
  bool unix_socket;
  std::unique_ptr<grpc::Service> service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<FsMetaService::Stub> stub;
  std::vector<double> us_per_call;
};

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int calls = absl::GetFlag(FLAGS_calls);
  std::vector<Variant> variants;
  for (bool callback : {false, true}) {
    for (bool unix_socket : {false, true}) {
      Variant v;
      v.name = std::string(callback ? "callback" : "sync") +
               (unix_socket ? " / unix" : " / tcp");
      v.callback = callback;
      v.unix_socket = unix_socket;
      variants.push_back(std::move(v));
    }
  }
  int n = 0;
  for (Variant& v : variants) {
    grpc::ServerBuilder builder;
    dsec::fs::ConfigureFsServer(builder);
    std::string address;
    int port = 0;
    if (v.unix_socket) {
      address = "unix:/tmp/rpc_bench." + std::to_string(getpid()) + "." +
                std::to_string(n++);
      builder.AddListeningPort(address, grpc::InsecureServerCredentials());
    } else {
      builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                               &port);
    }
    if (v.callback) {
      v.service = std::make_unique<CallbackService>();
    } else {
      v.service = std::make_unique<SyncService>();
    }
    builder.RegisterService(v.service.get());
    v.server = builder.BuildAndStart();
    if (!v.unix_socket) address = "127.0.0.1:" + std::to_string(port);
    v.stub = FsMetaService::NewStub(dsec::fs::MakeFsChannel(address));
  }
  for (int round = 0; round < absl::GetFlag(FLAGS_rounds); ++round) {
    for (Variant& v : variants) {
      GetAttrRequest request;
      InodeReply reply;
      for (int i = 0; i < 200; ++i) {  // warm up the connection
        grpc::ClientContext context;
        request.set_ino(i + 1);
        v.stub->GetAttr(&context, request, &reply);
      }
      auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < calls; ++i) {
        grpc::ClientContext context;
        request.set_ino(i + 1);
        grpc::Status s = v.stub->GetAttr(&context, request, &reply);
        if (!s.ok()) {
          std::fprintf(stderr, "%s: %s\n", v.name.c_str(),
                       s.error_message().c_str());
          return 1;
        }
      }
      double us = std::chrono::duration<double, std::micro>(
                      std::chrono::steady_clock::now() - start)
                      .count() /
                  calls;
      v.us_per_call.push_back(us);
      std::printf("round %d %-16s %7.1f us/call\n", round, v.name.c_str(), us);
    }
  }
  std::printf(
      "\n| server / transport | µs per call (median of rounds) | vs sync / tcp "
      "|\n|---|---|---|\n");
  auto median = [](std::vector<double> x) {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
  };
  double base = median(variants[0].us_per_call);
  for (Variant& v : variants) {
    double m = median(v.us_per_call);
    std::printf("| %s | %.1f | %.2f× |\n", v.name.c_str(), m, base / m);
  }
  if (std::string meta = absl::GetFlag(FLAGS_meta); !meta.empty()) {
    auto stub = FsMetaService::NewStub(dsec::fs::MakeFsChannel(meta));
    for (int round = 0; round < absl::GetFlag(FLAGS_rounds); ++round) {
      for (int mode : {0, 1, 2}) {
        const bool lookup = mode > 0;
        auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < calls; ++i) {
          grpc::ClientContext context;
          InodeReply reply;
          if (lookup) {
            dsec::v1::LookupRequest request;
            request.set_parent(1);
            request.set_name("no-such-name");
            request.set_missing_ok(mode == 2);
            stub->Lookup(&context, request, &reply);
          } else {
            GetAttrRequest request;
            request.set_ino(1);
            stub->GetAttr(&context, request, &reply);
          }
        }
        double us = std::chrono::duration<double, std::micro>(
                        std::chrono::steady_clock::now() - start)
                        .count() /
                    calls;
        std::printf("round %d dsec-meta %-28s %7.1f us/call\n", round,
                    mode == 0   ? "GetAttr"
                    : mode == 1 ? "Lookup miss (NOT_FOUND)"
                                : "Lookup miss (missing_ok)",
                    us);
      }
    }
  }
  for (Variant& v : variants) v.server->Shutdown();
  return 0;
}
