// EncryptedStore: an ObjectStore that seals every object it writes with AES-256-GCM before the
// target sees it and opens (authenticates, then decrypts) everything it reads (docs/FORMAT.md
// "Encryption"). The target learns only object names, sizes and counts.
//
// Object layout:   header (56 bytes) ‖ segment 0 ‖ segment 1 ‖ … ‖ segment k-1
//   header:        "VMBENC01" ‖ key id (8) ‖ salt (32, random per write) ‖ plaintext size (u64 LE)
//   segment i:     AES-256-GCM(object key, nonce_i, plaintext[i·S, min((i+1)·S, size))) ‖ tag (16)
//   object key:    HMAC-SHA256(data key, "vmbackup object key\n" ‖ salt)
//   nonce_i:       0^4 ‖ i (u64 BE)
//   aad_i:         "VMBENC01" ‖ key id ‖ size (u64 LE) ‖ i (u64 LE) ‖ object name
// with S = 16 KiB and k = max(1, ⌈size / S⌉). Binding the name and the size into every segment
// means an object cannot be moved to another name, truncated, extended or spliced from segments of
// another object without failing authentication. Ranged reads fetch and open only the segments the
// range touches (plus the header, cached per object).
//
// Keys listed as clear (the repository descriptor and key slots, which must be readable before the
// key is known) pass through unchanged.
//
// Errors: the inner store's; kDataLoss naming the object when it is not a sealed object, was sealed
// with another key (naming both key ids), or fails authentication (changed, truncated, moved).
//
// Thread-safety: thread-safe, as the inner store.
#ifndef VMBACKUP_STORE_ENCRYPTED_STORE_H_
#define VMBACKUP_STORE_ENCRYPTED_STORE_H_

#include <array>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/crypto.h"
#include "store/object_store.h"

namespace vmbackup::internal {

inline constexpr std::string_view kSealedMagic = "VMBENC01";
inline constexpr size_t kSealedHeaderSize = 56;
inline constexpr size_t kSealedSegment = 16 * 1024;

using KeyId = std::array<uint8_t, 8>;

// The keys objects are sealed with (derived from the repository's master key, repo/keys.h).
struct ObjectKeys {
  Key256 data_key{};
  KeyId key_id{};
};

// Size on the target of an object of `plain` bytes.
uint64_t SealedSize(uint64_t plain);
// The plaintext size of a sealed object of `sealed` bytes; false when no plaintext seals to exactly
// that size (the object is damaged or not sealed).
bool PlainSizeOf(uint64_t sealed, uint64_t* plain);

// Seals `plain` as object `name`. kUnavailable when no random salt can be drawn; kInternal when
// OpenSSL fails.
StatusOr<std::string> SealObject(const ObjectKeys& keys, const std::string& name,
                                 std::string_view plain);
// Opens a whole sealed object `name`. kDataLoss as the file comment says.
StatusOr<std::string> OpenObject(const ObjectKeys& keys, const std::string& name,
                                 std::string_view sealed);

// Test hook: objects are sealed with `*salt` instead of a random salt (nullptr: random again), so
// that known-answer tests can pin the sealed bytes. Not thread-safe; never set outside tests.
void SetSealSaltForTest(const std::array<uint8_t, 32>* salt);

// Wraps `inner`: every key except those in `clear` (exact keys, or prefixes ending in '/') is
// sealed with `keys`.
std::unique_ptr<ObjectStore> MakeEncryptedStore(std::unique_ptr<ObjectStore> inner,
                                                const ObjectKeys& keys,
                                                std::vector<std::string> clear,
                                                std::shared_ptr<Runtime> runtime);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_STORE_ENCRYPTED_STORE_H_
