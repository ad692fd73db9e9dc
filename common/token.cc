#include "common/token.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/errno_status.h"

namespace dsec {
namespace {

constexpr absl::string_view kVersion = "v1";

absl::Status CheckId(absl::string_view what, absl::string_view id) {
  if (id.empty())
    return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  if (id.find('.') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must not contain '.'"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TokenSigner> TokenSigner::Create(std::string secret) {
  if (secret.size() < 16) {
    return absl::InvalidArgumentError("token secret must be at least 16 bytes");
  }
  return TokenSigner(std::move(secret));
}

std::string TokenSigner::Mac(absl::string_view payload) const {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret_.data(), static_cast<int>(secret_.size()),
       reinterpret_cast<const unsigned char*>(payload.data()), payload.size(),
       mac, &len);
  return absl::WebSafeBase64Escape(
      absl::string_view(reinterpret_cast<const char*>(mac), len));
}

absl::StatusOr<std::string> TokenSigner::Sign(const TokenClaims& claims) const {
  if (absl::Status s = CheckId("sandbox_id", claims.sandbox_id); !s.ok())
    return s;
  if (absl::Status s = CheckId("job_id", claims.job_id); !s.ok()) return s;
  std::string payload =
      absl::StrCat(kVersion, ".", claims.sandbox_id, ".", claims.job_id, ".",
                   absl::ToUnixSeconds(claims.expire_time));
  return absl::StrCat(payload, ".", Mac(payload));
}

absl::StatusOr<TokenClaims> TokenSigner::Verify(absl::string_view token,
                                                absl::Time now) const {
  if (token.empty()) return absl::UnauthenticatedError("token is missing");
  if (token.size() > 1024)
    return absl::UnauthenticatedError("token is malformed (too long)");
  std::vector<absl::string_view> parts = absl::StrSplit(token, '.');
  if (parts.size() != 5 || parts[0] != kVersion) {
    return absl::UnauthenticatedError(
        "token is malformed (expected v1.<sandbox>.<job>.<expiry>.<mac>)");
  }
  const size_t cut = token.rfind('.');
  if (!SecureEquals(Mac(token.substr(0, cut)), parts[4])) {
    return absl::UnauthenticatedError("token signature is invalid");
  }
  int64_t expiry = 0;
  if (!absl::SimpleAtoi(parts[3], &expiry)) {
    return absl::UnauthenticatedError("token expiry is malformed");
  }
  TokenClaims claims{std::string(parts[1]), std::string(parts[2]),
                     absl::FromUnixSeconds(expiry)};
  if (now >= claims.expire_time) {
    return absl::UnauthenticatedError(
        absl::StrCat("token expired at ", absl::FormatTime(claims.expire_time),
                     "; renew it with RenewToken"));
  }
  return claims;
}

absl::StatusOr<TokenClaims> TokenSigner::VerifyFor(absl::string_view token,
                                                   absl::string_view sandbox_id,
                                                   absl::Time now) const {
  absl::StatusOr<TokenClaims> claims = Verify(token, now);
  if (!claims.ok()) return claims.status();
  if (claims->sandbox_id != sandbox_id) {
    return absl::PermissionDeniedError(absl::StrCat(
        "token is for sandbox ", claims->sandbox_id, ", not ", sandbox_id));
  }
  return claims;
}

absl::StatusOr<std::string> LoadOrCreateSecret(const std::string& path,
                                               bool create_if_missing) {
  std::ifstream in(path);
  if (in) {
    std::stringstream ss;
    ss << in.rdbuf();
    std::string s(absl::StripAsciiWhitespace(ss.str()));
    if (s.size() < 16) {
      return absl::FailedPreconditionError(
          absl::StrCat("secret file ", path, " holds fewer than 16 bytes"));
    }
    return s;
  }
  if (!create_if_missing) {
    return absl::NotFoundError(
        absl::StrCat("secret file ", path, " not found"));
  }
  std::string secret = RandomHex(32);
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST) return LoadOrCreateSecret(path, false);
    return ErrnoStatus(absl::StrCat("create secret file ", path));
  }
  std::string line = secret + "\n";
  bool ok =
      write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  close(fd);
  if (!ok) return absl::InternalError(absl::StrCat("write ", path));
  return secret;
}

std::string RandomHex(size_t bytes) {
  std::string raw(bytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()),
                 static_cast<int>(bytes)) != 1) {
    std::ifstream("/dev/urandom")
        .read(raw.data(), static_cast<std::streamsize>(bytes));
  }
  return absl::BytesToHexString(raw);
}

std::string Sha256Hex(absl::string_view data) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), md);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(md), sizeof(md)));
}

bool SecureEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace dsec
