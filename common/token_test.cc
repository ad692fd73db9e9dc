#include "common/token.h"

#include "common/testing/status_matchers.h"
#include "common/testing/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace dsec {
namespace {

using ::dsec::testing::IsOk;
using ::dsec::testing::StatusIs;
using ::testing::HasSubstr;

TokenSigner Signer(std::string secret = "0123456789abcdef-secret") {
  return *TokenSigner::Create(std::move(secret));
}

TEST(Token, SignedTokenVerifiesForItsSandbox) {
  absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  auto token = Signer().Sign({"sb1", "job1", now + absl::Minutes(5)});
  ASSERT_THAT(token, IsOk());
  auto claims = Signer().VerifyFor(*token, "sb1", now);
  ASSERT_THAT(claims, IsOk());
  EXPECT_EQ(claims->job_id, "job1");
  EXPECT_THAT(Signer().VerifyFor(*token, "sb2", now),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("sb1")));
}

TEST(Token, ExpiredTamperedForeignAndGarbageAreUnauthenticated) {
  absl::Time now = absl::FromUnixSeconds(1'700'000'000);
  std::string token = *Signer().Sign({"sb1", "job1", now + absl::Seconds(1)});
  EXPECT_THAT(
      Signer().Verify(token, now + absl::Seconds(2)),
      StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("expired")));
  std::string tampered = token;
  tampered.replace(tampered.find("sb1"), 3, "sb2");
  EXPECT_THAT(
      Signer().Verify(tampered, now),
      StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("signature")));
  std::string later = token;  // stretch the expiry
  later.replace(later.find("1700000001"), 10, "1900000001");
  EXPECT_THAT(Signer().Verify(later, now),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(Signer("another-secret-of-16b").Verify(token, now),
              StatusIs(absl::StatusCode::kUnauthenticated));
  for (const char* bad : {"", "v1", "v1.a.b.c", "v2.a.b.1.x", "v1.a.b.zz.mac",
                          "....", "v1.a.b.1.mac.extra"}) {
    EXPECT_THAT(Signer().Verify(bad, now),
                StatusIs(absl::StatusCode::kUnauthenticated))
        << bad;
  }
  EXPECT_THAT(Signer().Verify(std::string(5000, 'v'), now),
              StatusIs(absl::StatusCode::kUnauthenticated));
}

TEST(Token, RejectsBadIdsAndShortSecrets) {
  EXPECT_THAT(TokenSigner::Create("short"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Signer().Sign({"a.b", "j", absl::Now()}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Signer().Sign({"", "j", absl::Now()}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(Token, SecretFileIsCreatedOnceAndReused) {
  dsec::testing::TempDir dir;
  std::string path = dir.Join("secret");
  EXPECT_THAT(LoadOrCreateSecret(path, false),
              StatusIs(absl::StatusCode::kNotFound));
  auto a = LoadOrCreateSecret(path, true);
  ASSERT_THAT(a, IsOk());
  EXPECT_EQ(a->size(), 64u);
  auto b = LoadOrCreateSecret(path, true);
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(*a, *b);
}

TEST(Token, HelpersBehave) {
  EXPECT_EQ(RandomHex(8).size(), 16u);
  EXPECT_NE(RandomHex(8), RandomHex(8));
  EXPECT_EQ(Sha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_TRUE(SecureEquals("abc", "abc"));
  EXPECT_FALSE(SecureEquals("abc", "abd"));
  EXPECT_FALSE(SecureEquals("abc", "ab"));
}

}  // namespace
}  // namespace dsec
