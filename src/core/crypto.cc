// AES-256-GCM over OpenSSL's EVP interface; scrypt's ROMix here, its PBKDF2 steps OpenSSL's.
#include "core/crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/mman.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

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

// ---- scrypt (RFC 7914) ----
// OpenSSL's EVP_PBE_scrypt computes the same function, but allocates its 64 MiB (n = 2^16, r = 8)
// with malloc: fresh 4 KiB pages, one fault each, which on this class of virtual machine cost more
// than the hashing (0.55-0.7 s per unlock against 0.22 s with the memory already mapped). The
// memory here is one mapping with transparent huge pages asked for, so it faults in 2 MiB at a
// time. The algorithm is the RFC's, checked against its vectors and against OpenSSL.

uint32_t Rotl32(uint32_t v, int c) { return (v << c) | (v >> (32 - c)); }

// B = Salsa20/8(B) (RFC 7914 section 3), on 16 words.
void Salsa208(uint32_t b[16]) {
  uint32_t x[16];
  std::memcpy(x, b, sizeof x);
  for (int i = 8; i > 0; i -= 2) {
    x[4] ^= Rotl32(x[0] + x[12], 7);
    x[8] ^= Rotl32(x[4] + x[0], 9);
    x[12] ^= Rotl32(x[8] + x[4], 13);
    x[0] ^= Rotl32(x[12] + x[8], 18);
    x[9] ^= Rotl32(x[5] + x[1], 7);
    x[13] ^= Rotl32(x[9] + x[5], 9);
    x[1] ^= Rotl32(x[13] + x[9], 13);
    x[5] ^= Rotl32(x[1] + x[13], 18);
    x[14] ^= Rotl32(x[10] + x[6], 7);
    x[2] ^= Rotl32(x[14] + x[10], 9);
    x[6] ^= Rotl32(x[2] + x[14], 13);
    x[10] ^= Rotl32(x[6] + x[2], 18);
    x[3] ^= Rotl32(x[15] + x[11], 7);
    x[7] ^= Rotl32(x[3] + x[15], 9);
    x[11] ^= Rotl32(x[7] + x[3], 13);
    x[15] ^= Rotl32(x[11] + x[7], 18);
    x[1] ^= Rotl32(x[0] + x[3], 7);
    x[2] ^= Rotl32(x[1] + x[0], 9);
    x[3] ^= Rotl32(x[2] + x[1], 13);
    x[0] ^= Rotl32(x[3] + x[2], 18);
    x[6] ^= Rotl32(x[5] + x[4], 7);
    x[7] ^= Rotl32(x[6] + x[5], 9);
    x[4] ^= Rotl32(x[7] + x[6], 13);
    x[5] ^= Rotl32(x[4] + x[7], 18);
    x[11] ^= Rotl32(x[10] + x[9], 7);
    x[8] ^= Rotl32(x[11] + x[10], 9);
    x[9] ^= Rotl32(x[8] + x[11], 13);
    x[10] ^= Rotl32(x[9] + x[8], 18);
    x[12] ^= Rotl32(x[15] + x[14], 7);
    x[13] ^= Rotl32(x[12] + x[15], 9);
    x[14] ^= Rotl32(x[13] + x[12], 13);
    x[15] ^= Rotl32(x[14] + x[13], 18);
  }
  for (int i = 0; i < 16; ++i) b[i] += x[i];
}

// scryptBlockMix (RFC 7914 section 4): `in` (2r blocks of 16 words) to `out`, even blocks first.
void BlockMix(const uint32_t* in, uint32_t* out, size_t r) {
  uint32_t x[16];
  std::memcpy(x, in + (2 * r - 1) * 16, sizeof x);
  for (size_t i = 0; i < 2 * r; ++i) {
    for (int k = 0; k < 16; ++k) x[k] ^= in[i * 16 + k];
    Salsa208(x);
    std::memcpy(out + ((i & 1) != 0 ? r + i / 2 : i / 2) * 16, x, sizeof x);
  }
}

// scryptROMix (RFC 7914 section 5) on x (32 r words), with v (n * 32 r words) and t (32 r words).
void RoMix(uint32_t* x, size_t r, uint64_t n, uint32_t* v, uint32_t* t) {
  const size_t w = 32 * r;
  for (uint64_t i = 0; i < n; ++i) {
    std::memcpy(v + i * w, x, w * sizeof(uint32_t));
    BlockMix(v + i * w, x, r);
  }
  for (uint64_t i = 0; i < n; ++i) {
    const uint64_t j = x[(2 * r - 1) * 16] & (n - 1);  // Integerify mod n (n a power of two)
    const uint32_t* vj = v + j * w;
    for (size_t k = 0; k < w; ++k) t[k] = x[k] ^ vj[k];
    BlockMix(t, x, r);
  }
}

// The memory of one scrypt: one anonymous mapping aligned to 2 MiB, huge pages asked for (a hint:
// without them it is ordinary pages). Wiped and unmapped when done.
class ScryptMemory {
 public:
  explicit ScryptMemory(size_t bytes) : bytes_(bytes) {
    constexpr size_t kHuge = 2u << 20;
    map_len_ = bytes + kHuge;
    void* m = ::mmap(nullptr, map_len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return;
    map_ = m;
    const auto at = (reinterpret_cast<uintptr_t>(m) + kHuge - 1) & ~uintptr_t{kHuge - 1};
    data_ = reinterpret_cast<uint32_t*>(at);
#ifdef MADV_HUGEPAGE
    (void)::madvise(data_, bytes_, MADV_HUGEPAGE);
#endif
  }
  ~ScryptMemory() {
    if (map_ == nullptr) return;
    OPENSSL_cleanse(data_, bytes_);
    ::munmap(map_, map_len_);
  }
  ScryptMemory(const ScryptMemory&) = delete;
  ScryptMemory& operator=(const ScryptMemory&) = delete;
  uint32_t* data() const { return data_; }

 private:
  size_t bytes_;
  size_t map_len_ = 0;
  void* map_ = nullptr;
  uint32_t* data_ = nullptr;
};

uint32_t LoadLe32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}
void StoreLe32(uint32_t v, uint8_t* p) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
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
  if (passphrase.size() > INT_MAX || salt.size() > INT_MAX)
    return InvalidArgumentError("scrypt passphrase or salt too long");
  // B = PBKDF2-HMAC-SHA256(passphrase, salt, 1, p * 128 r); each 128 r-byte piece through ROMix;
  // the key = PBKDF2-HMAC-SHA256(passphrase, B, 1, 32).
  const size_t w = 32 * static_cast<size_t>(r);  // words per piece
  std::vector<uint8_t> b(128ull * r * p);
  std::vector<uint32_t> x(w), t(w);
  ScryptMemory v(128ull * r * n);
  Key256 out{};
  Status st;
  if (PKCS5_PBKDF2_HMAC(passphrase.data(), static_cast<int>(passphrase.size()),
                        reinterpret_cast<const unsigned char*>(salt.data()),
                        static_cast<int>(salt.size()), 1, EVP_sha256(), static_cast<int>(b.size()),
                        b.data()) != 1) {
    st = InternalError("scrypt failed in OpenSSL (PBKDF2)");
  } else if (v.data() == nullptr) {
    st = ResourceExhaustedError("scrypt: cannot map " + std::to_string(128ull * r * n >> 20) +
                                " MiB");
  } else {
    for (uint32_t i = 0; i < p; ++i) {
      uint8_t* piece = b.data() + 4 * w * i;
      for (size_t k = 0; k < w; ++k) x[k] = LoadLe32(piece + 4 * k);
      RoMix(x.data(), r, n, v.data(), t.data());
      for (size_t k = 0; k < w; ++k) StoreLe32(x[k], piece + 4 * k);
    }
    if (PKCS5_PBKDF2_HMAC(passphrase.data(), static_cast<int>(passphrase.size()), b.data(),
                          static_cast<int>(b.size()), 1, EVP_sha256(), static_cast<int>(out.size()),
                          out.data()) != 1)
      st = InternalError("scrypt failed in OpenSSL (PBKDF2)");
  }
  OPENSSL_cleanse(b.data(), b.size());
  OPENSSL_cleanse(x.data(), x.size() * sizeof(uint32_t));
  OPENSSL_cleanse(t.data(), t.size() * sizeof(uint32_t));
  if (!st.ok()) return st;
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
