// Small shared helpers: SHA-256 digests, hex, zero detection, time stamps, random ids and durable
// file writes. Thread-safe (pure functions or per-call state).
#ifndef VMBACKUP_CORE_UTIL_H_
#define VMBACKUP_CORE_UTIL_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "vmbackup/status.h"

namespace vmbackup::internal {

using Digest = std::array<uint8_t, 32>;

struct DigestHash {
  size_t operator()(const Digest& d) const {
    uint64_t v;
    std::memcpy(&v, d.data(), sizeof(v));
    return static_cast<size_t>(v);
  }
};

// SHA-256 of [data, data+len) (OpenSSL; uses SHA-NI where the CPU has it).
Digest Sha256(const void* data, size_t len);
inline Digest Sha256(std::string_view s) { return Sha256(s.data(), s.size()); }

// A keyed 128-bit block fingerprint: AES-128-GMAC (GHASH, PCLMUL) of the block under a secret
// key, about 8× faster than SHA-256. It only tells whether a block at the same offset is unchanged
// since an earlier backup (see docs/FORMAT.md, "Fingerprints"); identity stays SHA-256.
using Fingerprint = std::array<uint8_t, 16>;
using FingerprintKey = std::array<uint8_t, 16>;
Fingerprint BlockFingerprint(const FingerprintKey& key, const void* data, size_t len);

// HMAC-SHA256 of [data, data+len) under `key`.
Digest HmacSha256(const void* key, size_t key_len, const void* data, size_t len);

std::string ToHex(const void* data, size_t len);
inline std::string ToHex(const Digest& d) { return ToHex(d.data(), d.size()); }
// Parses exactly 2n hex chars into out[0, n); false on bad input.
bool BytesFromHex(std::string_view hex, uint8_t* out, size_t n);
// Parses 64 hex chars; false on bad input.
bool DigestFromHex(std::string_view hex, Digest* out);

// True when all `len` bytes are zero. Fast path: word compare + memcmp against itself.
bool IsAllZero(const void* data, size_t len);

// Current UTC time as RFC 3339 with millisecond precision ("2026-11-26T15:00:00.123Z").
std::string NowRfc3339();
// Current UTC time as "yyyymmdd-hhmmss".
std::string NowCompact();
// `n` random bytes from the CSPRNG (OpenSSL RAND_bytes). kUnavailable when it fails: there is no
// fallback to anything predictable.
Status RandomBytes(void* out, size_t n);
// `n` random bytes as hex (2n chars); kUnavailable as RandomBytes.
StatusOr<std::string> RandomHex(size_t n);
// Test hook: makes RandomBytes fail while set.
void SetRandomFailsForTest(bool fail);

// Monotonic seconds since an arbitrary epoch.
double MonotonicSeconds();

// Names of backups, volumes: [A-Za-z0-9._-], not starting with '.', 1..max_len chars.
bool IsValidName(std::string_view name, size_t max_len);

// Writes `data` to `path` atomically and durably: temp file in the same directory, fsync, rename,
// fsync of the directory. Errors: ErrnoToStatus of the failing call.
// The file gets exactly `mode` (not reduced by the umask).
Status WriteFileAtomic(const std::string& path, std::string_view data, uint32_t mode = 0600);
// Writes all of [data, data+n) at offset `off` of `fd`, retrying short writes and EINTR.
// Errors: ErrnoToStatus(errno, "write " + what).
Status PwriteAll(int fd, const void* data, size_t n, uint64_t off, const std::string& what);
// Reads a whole file. kNotFound if missing.
StatusOr<std::string> ReadFile(const std::string& path);
// fsync() of a directory.
Status FsyncDir(const std::string& dir);
// Directory part of a path ("." if none).
std::string DirName(const std::string& path);

// Little-endian encoding helpers for the binary on-target formats.
inline void PutU32(std::string* s, uint32_t v) {
  char b[4];
  for (int i = 0; i < 4; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  s->append(b, 4);
}
inline void PutU64(std::string* s, uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  s->append(b, 8);
}
inline uint32_t GetU32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
inline uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

}  // namespace vmbackup::internal

#endif  // VMBACKUP_CORE_UTIL_H_
