// Authenticated encryption and key derivation for encrypted repositories (docs/FORMAT.md
// "Encryption"): AES-256-GCM through OpenSSL; scrypt (RFC 7914) with OpenSSL's PBKDF2 and its own
// ROMix (see crypto.cc: OpenSSL's allocates its memory in a way that costs more than the hashing).
//
// Thread-safety: every function is thread-safe (per-thread cipher contexts).
#ifndef VMBACKUP_CORE_CRYPTO_H_
#define VMBACKUP_CORE_CRYPTO_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "vmbackup/status.h"

namespace vmbackup::internal {

using Key256 = std::array<uint8_t, 32>;
inline constexpr size_t kGcmNonceSize = 12;
inline constexpr size_t kGcmTagSize = 16;

// Encrypts in[0, n) into out[0, n) and writes the 16-byte tag to out[n, n+16) (`out` may equal
// `in`). kInternal only when OpenSSL itself fails.
Status GcmSeal(const Key256& key, const uint8_t nonce[kGcmNonceSize], std::string_view aad,
               const char* in, size_t n, char* out);

// Decrypts in[0, n) whose tag is in[n, n+16) into out[0, n) (`out` may equal `in`). False when the
// tag does not verify (wrong key, wrong associated data, or changed bytes): `out` then holds
// garbage that must not be used.
bool GcmOpen(const Key256& key, const uint8_t nonce[kGcmNonceSize], std::string_view aad,
             const char* in, size_t n, char* out);

// scrypt bounds accepted from a key slot read from a target (which may be hostile): at most
// 256 MiB of memory (128 * r * n) and a few seconds of CPU.
inline constexpr uint64_t kMaxScryptN = 1ull << 18;
inline constexpr uint32_t kMaxScryptR = 32;
inline constexpr uint32_t kMaxScryptP = 4;
inline constexpr uint64_t kMaxScryptMemory = 256ull << 20;
// The parameters new key slots use: 64 MiB and ~0.2 s on one core here.
inline constexpr uint64_t kDefaultScryptN = 1ull << 16;
inline constexpr uint32_t kDefaultScryptR = 8;
inline constexpr uint32_t kDefaultScryptP = 1;

// scrypt(passphrase, salt, n, r, p) → 32 bytes. kInvalidArgument when the parameters are out of the
// bounds above or n is not a power of two above 1; kResourceExhausted when its 128 r n bytes
// cannot be mapped; kInternal when OpenSSL fails.
StatusOr<Key256> Scrypt(std::string_view passphrase, std::string_view salt, uint64_t n, uint32_t r,
                        uint32_t p);

// HMAC-SHA256(key, label): how every sub-key is derived from a parent key. kInternal when OpenSSL
// fails (never a weak fallback key).
StatusOr<Key256> DeriveKey(const Key256& key, std::string_view label);

// Overwrites `n` bytes at `p` in a way the compiler keeps (OPENSSL_cleanse).
void Wipe(void* p, size_t n);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_CORE_CRYPTO_H_
