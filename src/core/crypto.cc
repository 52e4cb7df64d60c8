// AES-256-GCM and scrypt over OpenSSL's EVP interface.
#include "core/crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "core/errors.h"

namespace vmbackup::internal {
namespace {

// One context per thread and direction; the cipher is set once. The key schedule is redone only
// when the key changes (an object's segments share one key: re-keying each 16 KiB segment would
// cost a few percent of the throughput), otherwise only the nonce is set.
struct CipherCtx {
  explicit CipherCtx(bool encrypt) : encrypt(encrypt) {
    ok = ctx != nullptr &&
         EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), nullptr, nullptr, nullptr, encrypt ? 1 : 0) == 1;
  }
  ~CipherCtx() {
    EVP_CIPHER_CTX_free(ctx);
    Wipe(key.data(), key.size());
  }
  bool Start(const Key256& k, const uint8_t* nonce) {
    if (!ok) return false;
    const bool same = keyed && std::memcmp(k.data(), key.data(), key.size()) == 0;
    if (EVP_CipherInit_ex(ctx, nullptr, nullptr, same ? nullptr : k.data(), nonce,
                          encrypt ? 1 : 0) != 1) {
      keyed = false;
      return false;
    }
    key = k;
    keyed = true;
    return true;
  }
  const bool encrypt;
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  bool ok = false;
  bool keyed = false;
  Key256 key{};
};

// Feeds [p, p+n) through EVP_CipherUpdate in pieces an int can count.
bool Update(EVP_CIPHER_CTX* ctx, unsigned char* out, const unsigned char* in, size_t n) {
  for (size_t done = 0; done < n;) {
    const int piece = static_cast<int>(std::min<size_t>(n - done, 1u << 30));
    int outl = 0;
    if (EVP_CipherUpdate(ctx, out == nullptr ? nullptr : out + done, &outl, in + done, piece) != 1)
      return false;
    done += static_cast<size_t>(piece);
  }
  return true;
}

}  // namespace

Status GcmSeal(const Key256& key, const uint8_t nonce[kGcmNonceSize], std::string_view aad,
               const char* in, size_t n, char* out) {
  thread_local CipherCtx c(true);
  auto* o = reinterpret_cast<unsigned char*>(out);
  int outl = 0;
  const bool ok =
      c.Start(key, nonce) &&
      Update(c.ctx, nullptr, reinterpret_cast<const unsigned char*>(aad.data()), aad.size()) &&
      Update(c.ctx, o, reinterpret_cast<const unsigned char*>(in), n) &&
      EVP_CipherFinal_ex(c.ctx, o + n, &outl) == 1 &&
      EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_GET_TAG, kGcmTagSize, o + n) == 1;
  if (!ok) return InternalError("AES-256-GCM encryption failed in OpenSSL");
  return Status::Ok();
}

bool GcmOpen(const Key256& key, const uint8_t nonce[kGcmNonceSize], std::string_view aad,
             const char* in, size_t n, char* out) {
  thread_local CipherCtx c(false);
  unsigned char tag[kGcmTagSize];
  std::memcpy(tag, in + n, kGcmTagSize);  // before an in-place decrypt could touch it (it cannot,
                                          // but `out` may alias `in`)
  auto* o = reinterpret_cast<unsigned char*>(out);
  int outl = 0;
  return c.Start(key, nonce) &&
         Update(c.ctx, nullptr, reinterpret_cast<const unsigned char*>(aad.data()), aad.size()) &&
         Update(c.ctx, o, reinterpret_cast<const unsigned char*>(in), n) &&
         EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_SET_TAG, kGcmTagSize, tag) == 1 &&
         EVP_CipherFinal_ex(c.ctx, o + n, &outl) == 1;
}

StatusOr<Key256> Scrypt(std::string_view passphrase, std::string_view salt, uint64_t n, uint32_t r,
                        uint32_t p) {
  if (n < 2 || (n & (n - 1)) != 0 || n > kMaxScryptN || r == 0 || r > kMaxScryptR || p == 0 ||
      p > kMaxScryptP || 128ull * r * n > kMaxScryptMemory ||
      (r < 4 && n >= (1ull << (16 * r))))  // scrypt needs n < 2^(16 r)
    return InvalidArgumentError("scrypt parameters n=" + std::to_string(n) +
                                " r=" + std::to_string(r) + " p=" + std::to_string(p) +
                                " are out of bounds (n a power of two up to 2^18, r up to 32, p "
                                "up to 4, at most 256 MiB)");
  Key256 out{};
  // OpenSSL needs maxmem above 128 * r * n (plus its own small overhead).
  const uint64_t maxmem = 128ull * r * n + (1u << 20) + 128ull * r * p;
  if (EVP_PBE_scrypt(passphrase.data(), passphrase.size(),
                     reinterpret_cast<const unsigned char*>(salt.data()), salt.size(), n, r, p,
                     maxmem, out.data(), out.size()) != 1)
    return InternalError("scrypt failed in OpenSSL");
  return out;
}

StatusOr<Key256> DeriveKey(const Key256& key, std::string_view label) {
  Key256 out{};
  unsigned int n = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(label.data()), label.size(), out.data(),
           &n) == nullptr)
    return InternalError("HMAC-SHA256 failed in OpenSSL");
  return out;
}

void Wipe(void* p, size_t n) { OPENSSL_cleanse(p, n); }

}  // namespace vmbackup::internal
