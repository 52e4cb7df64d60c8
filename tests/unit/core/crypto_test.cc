// AES-256-GCM and scrypt against published test vectors, and their failure behaviour.
#include "core/crypto.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include "core/util.h"
#include "support/test_util.h"

namespace vmbackup::internal {
namespace {

std::string Unhex(std::string_view hex) {
  std::string out(hex.size() / 2, '\0');
  EXPECT_TRUE(BytesFromHex(hex, reinterpret_cast<uint8_t*>(out.data()), out.size())) << hex;
  return out;
}

Key256 KeyFromHex(std::string_view hex) {
  Key256 k{};
  EXPECT_TRUE(BytesFromHex(hex, k.data(), k.size()));
  return k;
}

struct GcmVector {
  const char* key;
  const char* iv;
  const char* plain;
  const char* aad;
  const char* cipher;
  const char* tag;
};

// "The Galois/Counter Mode of Operation (GCM)", McGrew & Viega, test cases 14 and 16 (AES-256).
const GcmVector kVectors[] = {
    {"0000000000000000000000000000000000000000000000000000000000000000", "000000000000000000000000",
     "00000000000000000000000000000000", "", "cea7403d4d606b6e074ec5d3baf39d18",
     "d0d1c8a799996bf0265b98b5d48ab919"},
    {"feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "cafebabefacedbaddecaf888",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b"
     "5"
     "25b16aedf5aa0de657ba637b39",
     "feedfacedeadbeeffeedfacedeadbeefabaddad2",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828"
     "838"
     "c5f61e6393ba7a0abcc9f662",
     "76fc6ece0f4e1768cddf8853bb2d551b"},
};

TEST(CryptoTest, GcmMatchesThePublishedVectorsBothWays) {
  for (const auto& v : kVectors) {
    const Key256 key = KeyFromHex(v.key);
    const std::string iv = Unhex(v.iv), plain = Unhex(v.plain), aad = Unhex(v.aad);
    std::string out(plain.size() + kGcmTagSize, '\0');
    ASSERT_OK(GcmSeal(key, reinterpret_cast<const uint8_t*>(iv.data()), aad, plain.data(),
                      plain.size(), out.data()));
    EXPECT_EQ(ToHex(out.data(), plain.size()), v.cipher);
    EXPECT_EQ(ToHex(out.data() + plain.size(), kGcmTagSize), v.tag);
    std::string back(plain.size(), '\0');
    EXPECT_TRUE(GcmOpen(key, reinterpret_cast<const uint8_t*>(iv.data()), aad, out.data(),
                        plain.size(), back.data()));
    EXPECT_EQ(back, plain);
  }
}

TEST(CryptoTest, GcmOpenRefusesAnyChangeToBytesTagAadOrKey) {
  const Key256 key = KeyFromHex(kVectors[1].key);
  const std::string iv = Unhex(kVectors[1].iv), plain = Unhex(kVectors[1].plain);
  const std::string aad = "object name";
  std::string sealed(plain.size() + kGcmTagSize, '\0');
  ASSERT_OK(GcmSeal(key, reinterpret_cast<const uint8_t*>(iv.data()), aad, plain.data(),
                    plain.size(), sealed.data()));
  const auto* n = reinterpret_cast<const uint8_t*>(iv.data());
  std::string out(plain.size(), '\0');
  for (size_t i = 0; i < sealed.size(); ++i) {
    std::string bad = sealed;
    bad[i] ^= 0x01;
    EXPECT_FALSE(GcmOpen(key, n, aad, bad.data(), plain.size(), out.data())) << "byte " << i;
  }
  EXPECT_FALSE(GcmOpen(key, n, "object namf", sealed.data(), plain.size(), out.data()));
  Key256 other = key;
  other[31] ^= 0x80;
  EXPECT_FALSE(GcmOpen(other, n, aad, sealed.data(), plain.size(), out.data()));
  // And the right key still works after the wrong one (the per-thread key cache is not stale).
  EXPECT_TRUE(GcmOpen(key, n, aad, sealed.data(), plain.size(), out.data()));
  EXPECT_EQ(out, plain);
}

// RFC 7914 section 12, third vector (the first 32 of its 64 bytes: scrypt's output is PBKDF2's,
// whose blocks do not depend on the length asked for).
TEST(CryptoTest, ScryptMatchesRfc7914) {
  auto k = Scrypt("pleaseletmein", "SodiumChloride", 16384, 8, 1);
  ASSERT_OK(k);
  EXPECT_EQ(ToHex(k->data(), k->size()),
            "7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2");
}

// RFC 7914 section 12, first vector (the second has p = 16, above the bound a slot may carry: the
// next test compares p > 1 with OpenSSL instead).
TEST(CryptoTest, ScryptMatchesTheFirstRfc7914Vector) {
  auto a = Scrypt("", "", 16, 1, 1);
  ASSERT_OK(a);
  EXPECT_EQ(ToHex(a->data(), a->size()),
            "77d6576238657b203b19ca42c18a0497f16b4844e3074ae8dfdffa3fede21442");
}

// Our ROMix against OpenSSL's scrypt, over the shapes of parameters a slot may carry (odd r, p > 1,
// the smallest n, the default slot parameters).
TEST(CryptoTest, ScryptEqualsOpenSslForEveryParameterShape) {
  struct P {
    uint64_t n;
    uint32_t r, p;
  };
  for (P q : {P{2, 1, 1}, P{4, 1, 4}, P{1024, 3, 2}, P{256, 32, 1}, P{4096, 8, 1}, P{16, 5, 3},
              P{1ull << 12, 8, 2}}) {
    SCOPED_TRACE(std::to_string(q.n) + "/" + std::to_string(q.r) + "/" + std::to_string(q.p));
    const std::string pass = "pass " + std::to_string(q.n), salt(32, static_cast<char>(q.r));
    auto ours = Scrypt(pass, salt, q.n, q.r, q.p);
    ASSERT_OK(ours);
    Key256 theirs{};
    ASSERT_EQ(EVP_PBE_scrypt(pass.data(), pass.size(),
                             reinterpret_cast<const unsigned char*>(salt.data()), salt.size(), q.n,
                             q.r, q.p, 1u << 30, theirs.data(), theirs.size()),
              1);
    EXPECT_EQ(*ours, theirs);
  }
}

TEST(CryptoTest, ScryptParametersOutsideTheBoundsAreInvalidArgument) {
  EXPECT_THAT(Scrypt("p", "s", 1ull << 19, 8, 1),
              StatusIs(StatusCode::kInvalidArgument, "n=524288"));
  EXPECT_THAT(Scrypt("p", "s", 3000, 8, 1), StatusIs(StatusCode::kInvalidArgument, ""));
  EXPECT_THAT(Scrypt("p", "s", 1024, 0, 1), StatusIs(StatusCode::kInvalidArgument, ""));
  EXPECT_THAT(Scrypt("p", "s", 1024, 8, 5), StatusIs(StatusCode::kInvalidArgument, ""));
  // 2^18 * 128 * 16 = 512 MiB: above the memory bound although n and r are each allowed.
  EXPECT_THAT(Scrypt("p", "s", 1ull << 18, 16, 1), StatusIs(StatusCode::kInvalidArgument, ""));
}

}  // namespace
}  // namespace vmbackup::internal
