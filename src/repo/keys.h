// The key hierarchy of encrypted repositories (docs/FORMAT.md "Encryption"): a random 256-bit
// master key, wrapped in key slots (keys/<id>.json) by a passphrase (scrypt) or by a raw key the
// host supplies; from the master key, the digest key (block names) and the data key (objects).
//
// Thread-safety: pure functions; thread-safe.
#ifndef VMBACKUP_REPO_KEYS_H_
#define VMBACKUP_REPO_KEYS_H_

#include <optional>
#include <string>

#include "core/crypto.h"
#include "core/util.h"
#include "repo/format.h"
#include "store/encrypted_store.h"

namespace vmbackup::internal {

// The secret that opens a key slot: exactly one of the two is set.
struct KeySecret {
  std::string passphrase;  // any non-empty bytes
  std::string raw_key;     // exactly 32 bytes
  bool empty() const { return passphrase.empty() && raw_key.empty(); }
  const char* kind() const { return raw_key.empty() ? "passphrase" : "raw"; }
  // kInvalidArgument when both or neither is set, or the raw key is not 32 bytes.
  Status Validate() const;
};

struct RepoKeys {
  Key256 master{};
  Key256 digest{};  // block names: HMAC-SHA256(digest, block)
  ObjectKeys objects;
  std::string key_id_hex() const;
};

// How blocks are named: SHA-256 of the block, or HMAC-SHA256 under the digest key of an encrypted
// repository (the target cannot confirm a guess of a block's content by its name).
class BlockNamer {
 public:
  BlockNamer() = default;  // SHA-256
  explicit BlockNamer(const Key256& digest_key) : keyed_(true), key_(digest_key) {}
  ~BlockNamer() { Wipe(key_.data(), key_.size()); }
  BlockNamer(const BlockNamer&) = default;
  BlockNamer& operator=(const BlockNamer&) = default;
  Digest operator()(const void* data, size_t len) const;
  Digest operator()(std::string_view s) const { return (*this)(s.data(), s.size()); }
  // The namer of unencrypted repositories.
  static const BlockNamer& Plain();

 private:
  bool keyed_ = false;
  Key256 key_{};
};

// Derives the digest key, the data key and the key id of `master`.
StatusOr<RepoKeys> DeriveRepoKeys(const Key256& master);
// A new random master key and what derives from it. kUnavailable when the CSPRNG fails.
StatusOr<RepoKeys> NewRepoKeys();

// A new slot of repository `repo_id` that wraps `keys.master` under `secret` (scrypt with the
// default parameters for a passphrase). Errors: Validate's; kUnavailable (CSPRNG); kInternal.
StatusOr<KeySlot> WrapMasterKey(const RepoKeys& keys, const KeySecret& secret,
                                const std::string& repo_id, const std::string& label);

// Test hook: the scrypt n of new passphrase slots (0 = kDefaultScryptN). Unit tests under
// sanitizers cannot afford 64 MiB and ~0.2 s per slot.
void SetNewSlotScryptNForTest(uint64_t n);

// The master key `slot` wraps when `secret` opens it; nullopt when it does not (wrong secret, a
// slot of the other kind, or a changed slot). kInvalidArgument when the slot's scrypt parameters
// are out of bounds (a hostile target must not make an unlock take unbounded memory or time).
StatusOr<std::optional<Key256>> UnwrapKeySlot(const KeySlot& slot, const KeySecret& secret,
                                              const std::string& repo_id);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_REPO_KEYS_H_
