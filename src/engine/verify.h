// Verifier: checks a repository against its own records (docs/FORMAT.md "Verification and
// repair"), the engine behind BackupTarget::Verify and the first half of BackupTarget::Repair.
//
//  1. Every record is listed and read; every volume index of every readable record is fetched
//     and checked (checksum, the record's index_sha256, sizes).
//  2. Every pack index is fetched afresh (not the cached block index: verify must see what is on
//     the target now), kDefaultGetWindow at a time, and every pack is listed with its size: a
//     pack must exist with exactly the size its index implies (magic + blocks + index copy +
//     trailer).
//  3. Every data block a volume index references must be in a readable pack index whose pack
//     holds its bytes. With read_data, the referenced blocks of the chosen packs are fetched in
//     ranged reads of at most kMaxReadUnit bytes (one or a few per pack), `parallel_reads` at a
//     time on the blocking pool, decoded and checked against their SHA-256; then the volume
//     indexes are read again to name every (backup, volume, offset) of each bad block.
//
// Memory: the block map (digest → location, ~64 B per distinct block in the repository) plus
// parallel_reads × kMaxReadUnit bytes of read buffers. Volume indexes are held one at a time.
//
// Thread-safety: one Verifier is used by one thread (the caller's); its reads run on the blocking
// pool. Progress callbacks run on the caller's thread.
#ifndef VMBACKUP_ENGINE_VERIFY_H_
#define VMBACKUP_ENGINE_VERIFY_H_

#include <atomic>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <absl/container/flat_hash_map.h>
#include <absl/container/flat_hash_set.h>

#include "repo/repository.h"
#include "vmbackup/runtime.h"
#include "vmbackup/verify.h"

namespace vmbackup::internal {

// "packs/<id[0:2]>/<id>.pack" → "<id>"; empty when the key is not a pack key.
std::string PackIdFromPackKey(const std::string& key);

// The exact size of a pack whose index object holds `index_bytes` bytes and whose last stored
// block ends at `data_end` (kPackMagic.size() when it holds none): what PackBuilder::Seal writes.
inline uint64_t ExpectedPackSize(uint64_t data_end, uint64_t index_bytes) {
  return data_end + index_bytes + 8 + kPackTrailerMagic.size();
}

class Verifier {
 public:
  // Ranged reads of read_data are at most this long; gaps up to kMaxReadGap between referenced
  // blocks of one pack are read through rather than split at.
  static constexpr uint64_t kMaxReadUnit = 32u << 20;
  static constexpr uint64_t kMaxReadGap = 1u << 20;

  // What the verifier learned about one pack (for Repair).
  struct PackState {
    std::string id;
    bool has_index = false;        // index/<id>.idx is listed (and was not deleted meanwhile)
    bool index_ok = false;         // ... and decodes
    bool has_pack = false;         // packs/<xx>/<id>.pack is listed
    uint64_t pack_size = 0;        // its listed size
    uint64_t expected_size = 0;    // the size its index implies (index_ok only)
    uint64_t blocks = 0;           // entries of its index (index_ok only)
    uint64_t bad_read_blocks = 0;  // blocks that failed their check when read (read_data)
    std::string problem;           // why the pack is damaged; empty when it is not
  };

  // REQUIRES: repo and rt outlive the verifier.
  Verifier(Repository& repo, Runtime& rt, VerifyOptions options);

  // Runs the checks. Damage goes into the report; the status is kInvalidArgument for bad
  // options, kCancelled when the progress callback asked, or the store's error when something
  // could not be listed or read (not damage: kUnavailable, kPermissionDenied, ...).
  StatusOr<VerifyReport> Run();

  // After Run: every pack seen (listed as a pack or a pack index), sorted by id.
  const std::vector<PackState>& packs() const { return packs_; }
  // After Run: true when a backup references block `d` and no readable pack index lists it.
  bool Unindexed(const Digest& d) const { return unindexed_.contains(d); }
  // After Run: backups whose record or a volume index is damaged (no repair of packs helps them).
  const std::set<std::string>& metadata_damaged() const { return metadata_damaged_; }
  // After a full Run (read_data): true when a copy of block `d` was read, checked good, and lies
  // in a pack with no problem (a pack repair leaves alone).
  bool HasSoundCopy(const Digest& d) const { return sound_copies_.contains(d); }

 private:
  struct Loc {
    uint32_t pack = 0;
    uint32_t stored_len = 0;
    uint64_t offset = 0;
    uint32_t raw_len = 0;
    Codec codec = Codec::kNone;
    bool referenced = false;
  };
  Status LoadPacks();
  Status CheckVolumes(const BackupList& list);
  Status ReadData();
  Status NameReadFailures(const BackupList& list);
  void AddBadBlock(BadBlock b);
  bool Progress(::vmbackup::Progress::Phase phase, bool force);

  Repository& repo_;
  Runtime& rt_;
  VerifyOptions opts_;
  VerifyReport report_;
  std::vector<PackState> packs_;
  absl::flat_hash_map<std::string, uint32_t> pack_of_;   // id → packs_ index
  absl::flat_hash_map<Digest, Loc, DigestHash> blocks_;  // every indexed block (one copy)
  // Further copies of blocks_'s digests listed by other pack indexes (a repack, two backups that
  // stored the same new block at once): a full verify reads them too, since a restore may map a
  // digest to any of them.
  std::vector<std::pair<Digest, Loc>> copies_;
  absl::flat_hash_set<Digest, DigestHash> unindexed_;  // referenced, in no pack index
  struct ReadFailure {
    std::string problem;
    uint32_t pack = 0;  // the copy that failed
    uint64_t offset = 0;
  };
  absl::flat_hash_map<Digest, ReadFailure, DigestHash> read_failures_;  // the first failed copy
  absl::flat_hash_set<Digest, DigestHash> sound_copies_;                // see HasSoundCopy
  std::set<std::string> damaged_backups_;
  std::set<std::string> metadata_damaged_;
  // Progress of the read phase.
  uint64_t read_bytes_total_ = 0, read_blocks_total_ = 0;
  std::atomic<uint64_t> read_bytes_done_{0}, read_blocks_done_{0};
  int64_t started_ns_ = 0, last_report_ns_ = 0;
};

}  // namespace vmbackup::internal

#endif  // VMBACKUP_ENGINE_VERIFY_H_
