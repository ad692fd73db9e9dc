// Sandbox tokens: HMAC-SHA256-signed, expiring capabilities for one sandbox.
//
// The controller mints a token when it places a sandbox; the agent that owns
// the sandbox verifies it locally (no call to the controller) with the same
// cluster secret. Text form, URL-safe:
//   v1.<sandbox_id>.<job_id>.<expiry unix seconds>.<base64url(hmac)>
// ids must not contain '.'. The MAC covers everything before the last '.'.
//
// Thread-safe: a TokenSigner is immutable after construction.
#ifndef DSEC_COMMON_TOKEN_H_
#define DSEC_COMMON_TOKEN_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace dsec {

struct TokenClaims {
  std::string sandbox_id;
  std::string job_id;
  absl::Time expire_time;
};

class TokenSigner {
 public:
  // `secret` must be at least 16 bytes (INVALID_ARGUMENT otherwise).
  static absl::StatusOr<TokenSigner> Create(std::string secret);

  // Mints a token. INVALID_ARGUMENT for empty ids or ids containing '.'.
  absl::StatusOr<std::string> Sign(const TokenClaims& claims) const;

  // Checks format, MAC (constant-time) and expiry against `now`.
  //   UNAUTHENTICATED    malformed, bad signature, or expired (message says
  //                      which; never echoes the MAC).
  absl::StatusOr<TokenClaims> Verify(absl::string_view token,
                                     absl::Time now = absl::Now()) const;

  // Verify, then PERMISSION_DENIED unless the token is for `sandbox_id`.
  absl::StatusOr<TokenClaims> VerifyFor(absl::string_view token,
                                        absl::string_view sandbox_id,
                                        absl::Time now = absl::Now()) const;

 private:
  explicit TokenSigner(std::string secret) : secret_(std::move(secret)) {}
  std::string Mac(absl::string_view payload) const;
  std::string secret_;
};

// Reads a cluster secret file (trailing whitespace stripped), or creates it
// with 32 random bytes (hex, mode 0600) when `create_if_missing`.
absl::StatusOr<std::string> LoadOrCreateSecret(const std::string& path,
                                               bool create_if_missing);

// `bytes` random bytes from the OS, hex-encoded (ids, API keys).
std::string RandomHex(size_t bytes);

// SHA-256 of `data`, hex (stored API key hashes).
std::string Sha256Hex(absl::string_view data);

// Constant-time comparison.
bool SecureEquals(absl::string_view a, absl::string_view b);

}  // namespace dsec

#endif  // DSEC_COMMON_TOKEN_H_
