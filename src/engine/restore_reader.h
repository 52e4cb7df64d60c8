// The restore's reader: where each data block of a volume is stored, which ranged reads fetch
// them (CoalesceReads, read_plan.h), fetching one such read from the target, and decoding and
// verifying each block of it. Writing the blocks is the writer's part (restore_writer.h).
//
// Planning and decoding are pure (no I/O) and unit-tested on their own
// (tests/unit/engine/restore_reader_test.cc); only Fetch reads from the store.
//
// Thread-safety: after Plan returned, the const methods may be called from any number of threads
// at once (each with its own buffers).
#ifndef VMBACKUP_ENGINE_RESTORE_READER_H_
#define VMBACKUP_ENGINE_RESTORE_READER_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/read_plan.h"
#include "repo/format.h"
#include "repo/repository.h"
#include "store/object_store.h"

namespace vmbackup::internal {

// One data block's stored bytes: in pack `pack` (RepoIndex numbering) at `offset`.
struct RestorePiece {
  uint32_t pack = 0;
  uint64_t offset = 0;
  const BlockLocation* loc = nullptr;  // in the RepoIndex
  uint64_t block = 0;                  // block number in the volume
};

// The error of a failed ranged read of bytes [begin, end) of pack object `key`, for the block
// named by `where`: a missing object (kNotFound) or one shorter than its index says (kOutOfRange,
// kDataLoss) is kDataLoss, whatever the store called it: the target's data is damaged. Other
// errors keep their code, with `where` and the key as context.
Status FetchError(const Status& got, const std::string& where, const std::string& key,
                  uint64_t begin, uint64_t end);

class RestoreReader {
 public:
  // Bytes per ranged read, and gaps read through rather than split at. Fewer, larger reads
  // matter on S3 and NFS; on a local disk they turn into sequential reads.
  static constexpr uint64_t kMaxUnit = 8u << 20;
  static constexpr uint64_t kMaxGap = 256u << 10;

  // Reads the data blocks of `vidx` (the index of volume `volume` of backup `backup`, whose size
  // the record gives as `volume_size`) through `index` from `store`.
  // REQUIRES: store, index and vidx outlive the reader.
  // `namer` names the blocks (the repository's).
  RestoreReader(ObjectStore& store, const RepoIndex& index, const VolumeIndex& vidx,
                uint64_t volume_size, std::string backup, std::string volume,
                const BlockNamer& namer = BlockNamer::Plain());

  // Locates every data block in its pack, sorts them by (pack, offset, block) and cuts them into
  // ranged reads of at most `max_unit` bytes. kDataLoss naming the block when no pack index holds
  // it (naming the first damaged pack index, if any) or the pack index gives it another length.
  Status Plan(uint64_t max_gap = kMaxGap, uint64_t max_unit = kMaxUnit);

  // The planned reads and the blocks they cover (unit(i) covers pieces [first, last)).
  size_t unit_count() const { return units_.size(); }
  const ReadUnit& unit(size_t i) const { return units_[i]; }
  const RestorePiece& piece(size_t i) const { return pieces_[i]; }
  // The pack object a unit reads.
  std::string UnitKey(size_t unit) const;

  // Reads unit `unit` into *buf (its bytes replace buf's; the buffer is reused). Errors: as
  // FetchError, naming the unit's first block.
  Status Fetch(size_t unit, std::string* buf) const;

  // Decodes piece `p`, one of unit `unit`, from `buf` (that unit's bytes, as Fetch returned them)
  // into raw[0, block_length(block)) and checks its SHA-256 against the volume index. kDataLoss
  // naming the block, the pack object and the offset when it does not decode or verify.
  Status Decode(size_t unit, size_t p, const std::string& buf, char* raw) const;

  // The length of block `b` (the last one may be short).
  size_t block_length(uint64_t b) const {
    return static_cast<size_t>(std::min<uint64_t>(bs_, volume_size_ - b * bs_));
  }
  uint32_t block_size() const { return bs_; }
  // "backup '<backup>', volume '<volume>', offset <b * block size>": names a block in errors.
  std::string Where(uint64_t b) const;

 private:
  ObjectStore& store_;
  const RepoIndex& index_;
  const VolumeIndex& vidx_;
  const uint64_t volume_size_;
  const uint32_t bs_;
  const std::string backup_, volume_;
  const BlockNamer& namer_;
  std::vector<RestorePiece> pieces_;
  std::vector<ReadUnit> units_;
};

}  // namespace vmbackup::internal

#endif  // VMBACKUP_ENGINE_RESTORE_READER_H_
