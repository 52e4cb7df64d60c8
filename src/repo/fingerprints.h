// Keys of the block fingerprints (docs/FORMAT.md "Block fingerprints", version 2).
//
// A host derives, from its own secret (core/host_secret.h) and a repository's id, the key of the
// keyed fingerprint function (AES-128-GMAC: GHASH under a secret H), a key for the per-object
// masks and an HMAC key that authenticates fingerprint objects. None of them is ever written to a
// target: what a target holds is each fingerprint XORed with a pseudo-random mask unique to
// (object salt, block number), so the stored values reveal nothing about H.
//
// Thread-safety: pure functions.
#ifndef VMBACKUP_REPO_FINGERPRINTS_H_
#define VMBACKUP_REPO_FINGERPRINTS_H_

#include <array>
#include <string_view>
#include <vector>

#include "core/host_secret.h"
#include "repo/format.h"

namespace vmbackup::internal {

struct FingerprintKeys {
  FingerprintKey gmac{};           // key of BlockFingerprint (AES-128; GHASH key H = AES(0))
  std::array<uint8_t, 32> mask{};  // derives the mask key of each object from its salt
  std::array<uint8_t, 32> auth{};  // HMAC-SHA256 key of fingerprint objects
  FingerprintKeyId id{};           // public: tells readers which key set made an object
};

// HMAC-SHA256 based derivation, one key set per (host secret, repository id).
FingerprintKeys DeriveFingerprintKeys(const HostSecret& secret, std::string_view repository_id);

// XORs each entry's fingerprint with the mask of (salt, entry.block): AES-256 under
// HMAC(keys.mask, salt) of the block number. Masking twice restores the input, so the same call
// masks before writing and unmasks after reading. kInternal only when OpenSSL fails.
Status ApplyFingerprintMasks(const FingerprintKeys& keys, const FingerprintSalt& salt,
                             std::vector<BlockFingerprintEntry>* entries);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_REPO_FINGERPRINTS_H_
