// On-target format v1 (see docs/FORMAT.md): object keys, the repository descriptor, block codec,
// pack builder and pack index, volume index and backup record encodings.
//
// Every binary object ends with a SHA-256 of everything before it, and every JSON metadata object
// carries a SHA-256 of its canonical body, so any flipped byte is detected as kDataLoss.
// Thread-safety: pure functions; a PackBuilder is used by one thread at a time.
#ifndef VMBACKUP_REPO_FORMAT_H_
#define VMBACKUP_REPO_FORMAT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/buffer_pool.h"
#include "core/util.h"
#include "vmbackup/backup_target.h"
#include "vmbackup/status.h"

namespace vmbackup::internal {

inline constexpr int kFormatVersion = 1;
inline constexpr uint32_t kDefaultBlockSize = 256 * 1024;
inline constexpr uint32_t kDefaultPackSize = 32 * 1024 * 1024;
inline constexpr uint32_t kMinBlockSize = 64 * 1024;
inline constexpr uint32_t kMaxBlockSize = 16 * 1024 * 1024;

// ---- keys ----
inline constexpr const char* kDescriptorKey = "repository.json";
inline constexpr const char* kIndexPrefix = "index/";
inline constexpr const char* kRecordPrefix = "records/";
std::string PackKey(const std::string& pack_id);       // packs/<id[0:2]>/<id>.pack
std::string PackIndexKey(const std::string& pack_id);  // index/<id>.idx
std::string RecordKey(const std::string& backup);      // records/<backup>.json
std::string VolumeIndexKey(const std::string& backup, const std::string& volume);
// "index/<id>.idx" → "<id>"; empty when the key is not a pack index key.
std::string PackIdFromIndexKey(const std::string& key);
// "records/<name>.json" → "<name>"; empty otherwise.
std::string BackupNameFromRecordKey(const std::string& key);

// ---- repository descriptor ----
struct RepoDescriptor {
  int version = kFormatVersion;
  std::string id;
  uint32_t block_size = kDefaultBlockSize;
  uint32_t pack_size = kDefaultPackSize;
  std::string created_at;
  // Secret key of the block fingerprints, 32 hex chars; empty in repositories made before
  // fingerprints existed (their backups hash every block).
  std::string fingerprint_key;
};
std::string EncodeDescriptor(const RepoDescriptor& d);
// kDataLoss when unparsable or its checksum is wrong; kFailedPrecondition for a newer version.
StatusOr<RepoDescriptor> DecodeDescriptor(std::string_view bytes);

// ---- blocks ----
enum class Codec : uint8_t { kNone = 0, kLz4 = 1 };
// Decompresses (or copies) a stored block into raw[0, raw_len). kDataLoss when the stored bytes do
// not decode to exactly raw_len bytes.
Status DecodeBlock(Codec codec, const char* stored, size_t stored_len, char* raw, size_t raw_len);
// Appends the stored form of `raw` to *out: LZ4 when that saves at least 1/32 of the size, else
// raw. Returns the codec chosen.
Codec EncodeBlockAppend(const char* raw, size_t raw_len, std::string* out);

// ---- packs ----
struct PackEntry {
  Digest digest{};
  uint64_t offset = 0;  // of the stored bytes inside the pack object
  uint32_t stored_len = 0;
  uint32_t raw_len = 0;
  Codec codec = Codec::kNone;
};

inline constexpr std::string_view kPackMagic = "VMBPACK1";
inline constexpr std::string_view kPackTrailerMagic = "VMBPEND1";

// Accumulates blocks into one pack object. Not thread-safe.
class PackBuilder {
 public:
  // `pool` (optional, must outlive the builder) supplies the buffers of the next packs.
  explicit PackBuilder(uint32_t target_size, BufferPool* pool = nullptr);
  // Appends a block (compressing it when that pays) and returns its entry.
  const PackEntry& Add(const Digest& digest, const char* raw, size_t raw_len);
  bool full() const { return data_.size() >= target_size_; }
  bool empty() const { return entries_.empty(); }
  size_t bytes() const { return data_.size(); }
  size_t block_count() const { return entries_.size(); }
  uint64_t raw_bytes() const { return raw_bytes_; }

  struct Sealed {
    std::string id;     // random 128-bit hex id
    std::string data;   // the pack object
    std::string index;  // the pack index object
    std::vector<PackEntry> entries;
  };
  // Finishes the pack and resets the builder for the next one. kUnavailable when no random pack
  // id can be drawn (the builder keeps its blocks then).
  StatusOr<Sealed> Seal();

 private:
  void Reset();
  uint32_t target_size_;
  BufferPool* pool_;
  std::string data_;
  std::vector<PackEntry> entries_;
  uint64_t raw_bytes_ = 0;
};

std::string EncodePackIndex(const std::string& pack_id, const std::vector<PackEntry>& entries);
// kDataLoss naming `what` on a bad magic, size or checksum, or a pack id different from `pack_id`.
StatusOr<std::vector<PackEntry>> DecodePackIndex(std::string_view bytes, const std::string& pack_id,
                                                 const std::string& what);

// The pack index copy in the trailer of a whole pack object (`pack`), checked as DecodePackIndex
// does, plus: every entry lies between the magic and the copy. kDataLoss naming `what` otherwise.
StatusOr<std::vector<PackEntry>> DecodePackTrailer(std::string_view pack,
                                                   const std::string& pack_id,
                                                   const std::string& what);

// ---- volume index ----
enum class BlockKind : uint8_t { kHole = 0, kZero = 1, kData = 2 };
struct VolumeIndex {
  uint64_t volume_size = 0;
  uint32_t block_size = 0;
  std::vector<BlockKind> kinds;  // one per block
  std::vector<Digest> digests;   // one per block; zero for holes and zero blocks
  uint64_t block_count() const { return kinds.size(); }
};
std::string EncodeVolumeIndex(const VolumeIndex& v);
StatusOr<VolumeIndex> DecodeVolumeIndex(std::string_view bytes, const std::string& what);

// ---- block fingerprints of a volume (optional companion of a volume index) ----
struct BlockFingerprintEntry {
  uint64_t block = 0;
  Fingerprint fp{};
};
struct VolumeFingerprints {
  uint64_t volume_size = 0;
  uint32_t block_size = 0;
  std::vector<BlockFingerprintEntry> entries;  // data blocks only, sorted by block
  // The fingerprint recorded for `block`, or nullptr.
  const Fingerprint* Find(uint64_t block) const;
};
std::string FingerprintsKey(const std::string& backup, const std::string& volume);
std::string EncodeFingerprints(const VolumeFingerprints& f);
// kDataLoss naming `what` on a bad magic, size, order or checksum.
StatusOr<VolumeFingerprints> DecodeFingerprints(std::string_view bytes, const std::string& what);

// ---- backup record ----
std::string EncodeRecord(const BackupInfo& info);
// kDataLoss naming `what` when unparsable, incomplete or its checksum is wrong.
StatusOr<BackupInfo> DecodeRecord(std::string_view bytes, const std::string& what);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_REPO_FORMAT_H_
