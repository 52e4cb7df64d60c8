// Repository: the on-target format v1 over an ObjectStore: descriptor, block index, records.
//
// The block index (digest → pack location) is built from every pack index object on the target and
// cached: LoadIndex() fetches only the pack indexes that appeared since the previous call and
// returns an immutable snapshot, so pipelines look blocks up without locks. Damaged pack indexes
// are skipped and reported (their blocks count as absent: a backup stores them again; a restore
// that needs them fails with kDataLoss naming the damaged index).
//
// Backup records are immutable once published, so ListBackups keeps the records it decoded (by
// name, with the size and version their listing gave, up to kRecordCacheBytes in all) and fetches
// only the records that are new or were replaced since, in parallel: listing a repository of N
// backups costs one listing plus the new records' reads, not N reads one after another.
//
// Thread-safety: all methods are thread-safe.
#ifndef VMBACKUP_REPO_REPOSITORY_H_
#define VMBACKUP_REPO_REPOSITORY_H_

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <absl/container/flat_hash_map.h>

#include "repo/fingerprints.h"
#include "repo/format.h"
#include "repo/keys.h"
#include "store/object_store.h"

namespace vmbackup::internal {

struct BlockLocation {
  uint32_t pack = 0;  // index into RepoIndex::pack_ids
  uint32_t stored_len = 0;
  uint64_t offset = 0;
  uint32_t raw_len = 0;
  Codec codec = Codec::kNone;
};

class RepoIndex {
 public:
  const BlockLocation* Find(const Digest& d) const {
    auto it = map_.find(d);
    return it == map_.end() ? nullptr : &it->second;
  }
  const std::string& pack_id(uint32_t i) const { return pack_ids_[i]; }
  size_t block_count() const { return map_.size(); }
  size_t pack_count() const { return pack_ids_.size(); }
  const std::vector<std::string>& damaged() const { return damaged_; }

  // Building (Repository only).
  void AddPack(const std::string& pack_id, const std::vector<PackEntry>& entries);
  void AddDamaged(std::string what) { damaged_.push_back(std::move(what)); }
  // Forgets the blocks of packs whose pack index is gone (garbage collection deleted it): a backup
  // must never deduplicate against a pack that GC may delete next (FORMAT.md "Garbage collection").
  void RemovePacks(const std::set<std::string>& pack_ids);

 private:
  absl::flat_hash_map<Digest, BlockLocation, DigestHash> map_;
  std::vector<std::string> pack_ids_;
  std::vector<std::string> damaged_;
};

// The most record bytes a Repository keeps decoded for ListBackups (further records are read again
// at each listing).
inline constexpr uint64_t kRecordCacheBytes = 64ull << 20;
// Records ListBackups reads at once.
inline constexpr int kRecordFetchWindow = 16;

// How Repository::Open treats encryption (TargetOptions::encryption, passphrase, raw_key).
struct EncryptionSetup {
  // For a repository Open initializes: "aes-256-gcm" or "none"; empty = "aes-256-gcm" when a
  // secret is given, else "none".
  std::string mode;
  KeySecret secret;   // opens an encrypted repository; protects the first slot of a new one
  std::string label;  // of that first slot
};

class Repository {
 public:
  // Opens the repository in `store`, initializing it (create-if-absent of the descriptor) when
  // there is none and `create` is true; an encrypted repository is unlocked with `enc.secret` and
  // its store() seals and opens every object. See BackupTarget::Open for the errors.
  static StatusOr<std::unique_ptr<Repository>> Open(std::unique_ptr<ObjectStore> store, bool create,
                                                    uint32_t block_size, uint32_t pack_size,
                                                    const EncryptionSetup& enc = {});
  ~Repository();

  // The repository's objects (sealed and opened transparently when it is encrypted).
  ObjectStore& store() const { return *store_; }
  const RepoDescriptor& descriptor() const { return desc_; }
  bool encrypted() const { return keys_.has_value(); }

  // How data blocks are named: SHA-256, or HMAC-SHA256 under the digest key when encrypted.
  const BlockNamer& block_namer() const { return namer_; }

  // Key slots (encrypted repositories; kFailedPrecondition otherwise).
  // A new slot wrapping the master key under `secret`. Errors: KeySecret::Validate's, the store's.
  StatusOr<KeySlot> AddKeySlot(const KeySecret& secret, const std::string& label);
  // Every readable slot of this repository's key, sorted by creation; `damaged` gets one line per
  // slot that could not be read.
  StatusOr<std::vector<KeySlot>> ListKeySlots(std::vector<std::string>* damaged) const;
  // Removes slot `id`. kNotFound when there is none; kFailedPrecondition for the slot this
  // repository was opened with (open it with another key first).
  Status RemoveKeySlot(const std::string& id);
  // The slot this repository was unlocked with (empty when not encrypted).
  const std::string& unlocked_slot() const { return slot_id_; }

  // Loads pack indexes added since the last call; returns the current immutable snapshot.
  StatusOr<std::shared_ptr<const RepoIndex>> LoadIndex();

  // Every backup whose record is readable, oldest first; damaged records in `damaged`. Errors:
  // the store's (listing, or reading a record) other than kNotFound (a record deleted meanwhile is
  // left out) and kDataLoss (reported as damaged).
  StatusOr<BackupList> ListBackups() const;
  StatusOr<BackupInfo> GetBackup(const std::string& name) const;
  Status DeleteBackup(const std::string& name);
  // Fetches and verifies a volume's index (checksum, and the record's index_sha256).
  StatusOr<VolumeIndex> LoadVolumeIndex(const std::string& backup, const VolumeBackupInfo& v) const;
  // The volume's block fingerprints, unmasked, when this host's `keys` made them: pinned by the
  // record, HMAC verified, bound to the record's volume index, sizes matching. kNotFound when the
  // backup has none; kFailedPrecondition when another key made them (another host, or a version-1
  // object); kDataLoss when missing, corrupt or not authentic.
  StatusOr<VolumeFingerprints> LoadFingerprints(const std::string& backup,
                                                const VolumeBackupInfo& v,
                                                const FingerprintKeys& keys) const;

 private:
  Repository(std::unique_ptr<ObjectStore> store, RepoDescriptor desc)
      : store_(std::move(store)), desc_(std::move(desc)) {}
  // Checks `enc` against the descriptor `d` of `store`; unlocks and wraps the store when encrypted.
  static StatusOr<std::unique_ptr<Repository>> Unlock(std::unique_ptr<ObjectStore> store,
                                                      RepoDescriptor d, const EncryptionSetup& enc,
                                                      std::optional<RepoKeys> keys,
                                                      std::string slot_id);

  std::unique_ptr<ObjectStore> store_;
  RepoDescriptor desc_;
  std::optional<RepoKeys> keys_;  // encrypted repositories
  BlockNamer namer_;
  std::string slot_id_;
  // The object `key`, which the record pins by `sha256_hex`: kDataLoss naming `what` when it is
  // missing or its checksum differs; the store's error otherwise.
  // Objects larger than `max_size` are kDataLoss too (never read whole).
  StatusOr<std::string> GetPinned(const std::string& key, const std::string& sha256_hex,
                                  uint64_t max_size, const std::string& what) const;
  // Records ListBackups decoded, by backup name (see the file comment). Never holds a damaged
  // record; an entry is used only while the listing shows the same size and a non-empty version.
  struct CachedRecord {
    uint64_t size = 0;
    std::string version;
    std::shared_ptr<const BackupInfo> info;
  };
  mutable std::mutex records_mu_;
  mutable std::map<std::string, CachedRecord> records_;
  mutable uint64_t records_bytes_ = 0;  // sum of the cached records' sizes
  std::mutex index_mu_;                 // serializes LoadIndex
  std::shared_ptr<const RepoIndex> index_;
  std::set<std::string> loaded_;  // pack ids whose index is in index_ (or known damaged)
};

}  // namespace vmbackup::internal

#endif  // VMBACKUP_REPO_REPOSITORY_H_
