// Fingerprint keys and masks (see fingerprints.h).
#include "repo/fingerprints.h"

#include <openssl/evp.h>

#include <cstring>
#include <memory>

#include "core/errors.h"
#include "core/util.h"

namespace vmbackup::internal {

FingerprintKeys DeriveFingerprintKeys(const HostSecret& secret, std::string_view repository_id) {
  // Extract: one pseudo-random key per repository; expand: one labelled HMAC per purpose.
  const std::string info = "vmbackup block fingerprints v2\n" + std::string(repository_id);
  const Digest prk = HmacSha256(secret.data(), secret.size(), info.data(), info.size());
  auto expand = [&](std::string_view label) {
    return HmacSha256(prk.data(), prk.size(), label.data(), label.size());
  };
  FingerprintKeys k;
  const Digest gmac = expand("gmac");
  std::memcpy(k.gmac.data(), gmac.data(), k.gmac.size());
  const Digest mask = expand("mask");
  std::memcpy(k.mask.data(), mask.data(), k.mask.size());
  const Digest auth = expand("auth");
  std::memcpy(k.auth.data(), auth.data(), k.auth.size());
  const Digest id = expand("id");
  std::memcpy(k.id.data(), id.data(), k.id.size());
  return k;
}

Status ApplyFingerprintMasks(const FingerprintKeys& keys, const FingerprintSalt& salt,
                             std::vector<BlockFingerprintEntry>* entries) {
  if (entries->empty()) return Status::Ok();
  const Digest object_key =
      HmacSha256(keys.mask.data(), keys.mask.size(), salt.data(), salt.size());
  // All counters in one ECB call (AES-NI runs it at GB/s): counter i = block number, little
  // endian, zero-padded to 16 bytes. Block numbers are distinct within an object.
  const size_t n = entries->size();
  std::unique_ptr<uint8_t[]> in(new uint8_t[n * 16]());
  std::unique_ptr<uint8_t[]> out(new uint8_t[n * 16 + 16]);
  for (size_t i = 0; i < n; ++i) {
    const uint64_t b = (*entries)[i].block;
    for (int j = 0; j < 8; ++j) in[i * 16 + j] = static_cast<uint8_t>(b >> (8 * j));
  }
  std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(),
                                                                      &EVP_CIPHER_CTX_free);
  bool ok = ctx && EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_ecb(), nullptr, object_key.data(),
                                      nullptr) == 1;
  ok = ok && EVP_CIPHER_CTX_set_padding(ctx.get(), 0) == 1;
  for (size_t done = 0; ok && done < n;) {
    const size_t chunk = std::min<size_t>(n - done, 1u << 24);  // EVP takes int lengths
    int outl = 0;
    ok = EVP_EncryptUpdate(ctx.get(), out.get() + done * 16, &outl, in.get() + done * 16,
                           static_cast<int>(chunk * 16)) == 1 &&
         outl == static_cast<int>(chunk * 16);
    done += chunk;
  }
  if (!ok) return InternalError("AES-256-ECB failed while masking block fingerprints");
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < 16; ++j) (*entries)[i].fp[j] ^= out[i * 16 + j];
  return Status::Ok();
}

}  // namespace vmbackup::internal
