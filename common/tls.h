// Optional TLS for every gRPC hop (client -> controller, client -> agent,
// agent <-> controller), configured by certificate files.
//
// With no files set everything is plaintext (local mode, tests). With
// cert_file + key_file a server speaks TLS; with ca_file as well it also
// requires and verifies client certificates (mutual TLS). A client trusts
// ca_file (or the system roots when empty) and presents cert/key when set.
// Pure functions; thread-safe.
#ifndef DSEC_COMMON_TLS_H_
#define DSEC_COMMON_TLS_H_

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace dsec {

struct TlsFiles {
  std::string cert_file;  // PEM certificate chain of this party
  std::string key_file;   // PEM private key
  std::string ca_file;    // PEM roots trusted for the peer
  bool enabled() const { return !cert_file.empty() || !ca_file.empty(); }
};

// INVALID_ARGUMENT when a file is missing/unreadable or only one of
// cert/key is given (the message names the file).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& tls);
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>>
MakeChannelCredentials(const TlsFiles& tls);

}  // namespace dsec

#endif  // DSEC_COMMON_TLS_H_
