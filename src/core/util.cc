// Shared helpers (see util.h).
#include "core/util.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>

#include "core/errors.h"

namespace vmbackup::internal {

Digest Sha256(const void* data, size_t len) {
  Digest d;
  SHA256(static_cast<const unsigned char*>(data), len, d.data());
  return d;
}

Digest HmacSha256(const void* key, size_t key_len, const void* data, size_t len) {
  Digest out{};
  unsigned int n = 0;
  // Fails only on a broken OpenSSL; an all-zero MAC then simply never verifies.
  if (HMAC(EVP_sha256(), key, static_cast<int>(key_len), static_cast<const unsigned char*>(data),
           len, out.data(), &n) == nullptr)
    out.fill(0);
  return out;
}

Fingerprint BlockFingerprint(const FingerprintKey& key, const void* data, size_t len) {
  // One cipher context per thread, re-keyed per call (the key schedule is ~100 ns against ~25 µs
  // of GHASH for a 256 KiB block). The block is authenticated data only: nothing is encrypted.
  struct Ctx {
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    // The cipher is set once per thread; later calls only set key and IV.
    bool has_cipher = ctx != nullptr &&
                      EVP_EncryptInit_ex(ctx, EVP_aes_128_gcm(), nullptr, nullptr, nullptr) == 1;
    ~Ctx() { EVP_CIPHER_CTX_free(ctx); }
  };
  thread_local Ctx c;
  static const unsigned char kIv[12] = {0};
  Fingerprint fp{};
  int outl = 0;
  const auto* p = static_cast<const unsigned char*>(data);
  bool ok = c.has_cipher && EVP_EncryptInit_ex(c.ctx, nullptr, nullptr, key.data(), kIv) == 1;
  // EVP takes int lengths: feed large inputs in pieces (GHASH is streaming).
  for (size_t done = 0; ok && done < len;) {
    const int n = static_cast<int>(std::min<size_t>(len - done, 1u << 30));
    ok = EVP_EncryptUpdate(c.ctx, nullptr, &outl, p + done, n) == 1;
    done += static_cast<size_t>(n);
  }
  ok = ok && EVP_EncryptFinal_ex(c.ctx, nullptr, &outl) == 1 &&
       EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_GET_TAG, 16, fp.data()) == 1;
  // OpenSSL failing here means a broken library; fall back to a truncated SHA-256, which is still
  // a sound (if slower, and unkeyed) change detector.
  if (!ok) {
    Digest d = Sha256(data, len);
    std::memcpy(fp.data(), d.data(), fp.size());
  }
  return fp;
}

std::string ToHex(const void* data, size_t len) {
  static const char* kHex = "0123456789abcdef";
  const auto* p = static_cast<const uint8_t*>(data);
  std::string s(len * 2, '0');
  for (size_t i = 0; i < len; ++i) {
    s[2 * i] = kHex[p[i] >> 4];
    s[2 * i + 1] = kHex[p[i] & 15];
  }
  return s;
}

static int HexVal(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool BytesFromHex(std::string_view hex, uint8_t* out, size_t n) {
  if (hex.size() != 2 * n) return false;
  for (size_t i = 0; i < n; ++i) {
    int hi = HexVal(hex[2 * i]), lo = HexVal(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return true;
}

bool DigestFromHex(std::string_view hex, Digest* out) {
  return BytesFromHex(hex, out->data(), out->size());
}

bool IsAllZero(const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  if (len < 64) {
    for (size_t i = 0; i < len; ++i)
      if (p[i]) return false;
    return true;
  }
  // Cheap early exit on the first 64 bytes, then compare the buffer with itself shifted by 64:
  // memcmp is vectorized and stops at the first difference.
  for (size_t i = 0; i < 64; ++i)
    if (p[i]) return false;
  return std::memcmp(p, p + 64, len - 64) == 0;
}

static std::string FormatNow(const char* fmt) {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), fmt, &tm);
  return buf;
}

std::string NowRfc3339() {
  // Millisecond precision: backups taken within one second still sort in the order they started.
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  char out[80];
  std::snprintf(out, sizeof(out), "%s.%03dZ", buf, static_cast<int>(ms));
  return out;
}
std::string NowCompact() { return FormatNow("%Y%m%d-%H%M%S"); }

static std::atomic<bool> g_random_fails_for_test{false};

void SetRandomFailsForTest(bool fail) { g_random_fails_for_test.store(fail); }

Status RandomBytes(void* out, size_t n) {
  // A predictable id or key is worse than none: without the system RNG, fail (never fall back to
  // clocks or addresses).
  if (g_random_fails_for_test.load() ||
      RAND_bytes(static_cast<unsigned char*>(out), static_cast<int>(n)) != 1)
    return UnavailableError("the system random number generator failed (no entropy source?)");
  return Status::Ok();
}

StatusOr<std::string> RandomHex(size_t n) {
  std::string b(n, '\0');
  VMB_RETURN_IF_ERROR(RandomBytes(b.data(), n));
  return ToHex(b.data(), n);
}

double MonotonicSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool IsValidName(std::string_view name, size_t max_len) {
  if (name.empty() || name.size() > max_len || name[0] == '.') return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string DirName(const std::string& path) {
  auto pos = path.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

Status FsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, "open directory " + dir);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoToStatus(err, "fsync directory " + dir);
  return Status::Ok();
}

Status PwriteAll(int fd, const void* data, size_t n, uint64_t off, const std::string& what) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "write " + what);
    }
    p += w;
    n -= static_cast<size_t>(w);
    off += static_cast<uint64_t>(w);
  }
  return Status::Ok();
}

Status WriteFileAtomic(const std::string& path, std::string_view data, uint32_t mode) {
  VMB_ASSIGN_OR_RETURN(std::string suffix, RandomHex(6));
  std::string tmp = path + ".tmp-" + suffix;
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                  static_cast<mode_t>(mode));
  if (fd < 0) return ErrnoToStatus(errno, "create " + tmp);
  Status st = ::fchmod(fd, static_cast<mode_t>(mode)) == 0 ? Status::Ok()
                                                           : ErrnoToStatus(errno, "chmod " + tmp);
  if (st.ok()) st = PwriteAll(fd, data.data(), data.size(), 0, tmp);
  if (st.ok() && ::fsync(fd) != 0) st = ErrnoToStatus(errno, "fsync " + tmp);
  if (::close(fd) != 0 && st.ok()) st = ErrnoToStatus(errno, "close " + tmp);
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0)
    st = ErrnoToStatus(errno, "rename to " + path);
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  return FsyncDir(DirName(path));
}

StatusOr<std::string> ReadFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, "open " + path);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t r = ::read(fd, buf, sizeof(buf));
    if (r < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return ErrnoToStatus(err, "read " + path);
    }
    if (r == 0) break;
    out.append(buf, static_cast<size_t>(r));
  }
  ::close(fd);
  return out;
}

}  // namespace vmbackup::internal
