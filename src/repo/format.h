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

#include <nlohmann/json_fwd.hpp>

#include "core/buffer_pool.h"
#include "core/util.h"
#include "vmbackup/backup_info.h"
#include "vmbackup/status.h"

namespace vmbackup::internal {

inline constexpr int kFormatVersion = 1;
// The descriptor's envelope version: 2 once a GC-aware writer upgraded the repository
// (docs/FORMAT.md "Writer-version gate"); records and other objects stay at kFormatVersion.
// 3 for encrypted repositories: libraries that predate encryption refuse them outright.
inline constexpr int kDescriptorVersion = 3;
inline constexpr int kEncryptedDescriptorVersion = 3;
// The writer version of this library: it writes repositories whose descriptor asks for at most
// this writer version.
inline constexpr uint32_t kWriterVersion = 2;
inline constexpr uint32_t kDefaultBlockSize = 256 * 1024;
inline constexpr uint32_t kDefaultPackSize = 32 * 1024 * 1024;
inline constexpr uint32_t kMinBlockSize = 64 * 1024;
inline constexpr uint32_t kMaxBlockSize = 16 * 1024 * 1024;

// ---- limits: everything read from a target is checked against them (docs/FORMAT.md "Limits") ----
inline constexpr uint32_t kMaxPackSize = 1024u * 1024 * 1024;  // descriptor pack_size
inline constexpr uint64_t kMaxVolumeSize = 1ull << 50;         // 1 PiB per volume
inline constexpr size_t kMaxVolumesPerBackup = 4096;
inline constexpr size_t kMaxBackupName = 200;
inline constexpr size_t kMaxVolumeName = 128;
inline constexpr size_t kMaxVmName = 253;  // VM name and namespace (Kubernetes DNS names)
inline constexpr int kMaxJsonDepth = 64;   // nesting of any JSON object on the target
inline constexpr uint64_t kMaxDescriptorBytes = 64 * 1024;
inline constexpr uint64_t kMaxRecordBytes = 16ull << 20;  // a record, VM metadata included
inline constexpr uint64_t kMaxVmMetadataBytes = 8ull << 20;

// True when `name` is a valid backup name / volume name / VM name or namespace (empty allowed
// for VM names: an unnamed VM).
bool IsValidBackupName(std::string_view name);
bool IsValidVolumeName(std::string_view name);
// A snapshot provider's checkpoint name in a record: "vmbackup-" and 16 lowercase hex digits.
bool IsCheckpointName(std::string_view s);
bool IsValidVmName(std::string_view name);
// Number of blocks of a volume of `size` bytes (no overflow for any input).
inline uint64_t BlockCount(uint64_t size, uint32_t block_size) {
  return size / block_size + (size % block_size != 0 ? 1 : 0);
}
// A block size a reader accepts: a power of two from kMinBlockSize to kMaxBlockSize.
bool IsValidBlockSize(uint64_t block_size);
// The exact size of the volume index of a volume of `size` bytes; false when the volume is larger
// than kMaxVolumeSize or the block size is invalid.
bool VolumeIndexSize(uint64_t size, uint32_t block_size, uint64_t* out);
// False when `text` nests arrays/objects deeper than `max_depth` (checked before parsing, so no
// recursive parser, printer or destructor ever sees deeper input).
bool JsonDepthWithin(std::string_view text, int max_depth);

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
  int version = kFormatVersion;  // envelope version: 1, or 2 after the GC upgrade
  // The oldest writer version that may write the repository (version 2 only; 1 for version 1).
  uint32_t writer_version = 1;
  std::string id;
  uint32_t block_size = kDefaultBlockSize;
  uint32_t pack_size = kDefaultPackSize;
  std::string created_at;
  // Only in repositories made by versions before fingerprint format 2: the key of version-1
  // fingerprints, stored on the target (so it protected nothing). Checked, never used.
  std::string fingerprint_key;
  // Version 3: "aes-256-gcm" and the id of the master key (16 hex), FORMAT.md "Encryption".
  // Empty in unencrypted repositories.
  std::string encryption;
  std::string key_id;
};
std::string EncodeDescriptor(const RepoDescriptor& d);
// kDataLoss when unparsable or its checksum is wrong; kFailedPrecondition for a newer version.
StatusOr<RepoDescriptor> DecodeDescriptor(std::string_view bytes);

// ---- key slots (keys/<id>.json, encrypted repositories) ----
inline constexpr const char* kKeyPrefix = "keys/";
inline constexpr uint64_t kMaxKeySlotBytes = 16 * 1024;
inline constexpr size_t kMaxKeySlots = 64;           // slots an unlock looks at
std::string KeySlotKey(const std::string& slot_id);  // keys/<id>.json
// "keys/<id>.json" → "<id>" (16 hex); empty otherwise.
std::string SlotIdFromKey(const std::string& key);
struct KeySlot {
  std::string id;         // 16 hex
  std::string kind;       // "passphrase" (scrypt) or "raw" (a 256-bit key the host supplies)
  uint64_t scrypt_n = 0;  // passphrase slots
  uint32_t scrypt_r = 0, scrypt_p = 0;
  std::string salt;     // 32 bytes
  std::string wrapped;  // nonce (12) ‖ AES-256-GCM(master key) (32) ‖ tag (16)
  std::string key_id;   // 16 hex: the master key it wraps
  std::string created_at;
  std::string host;
  std::string label;  // the host's note ("ops 2026", "kms:arn:..."), at most 200 bytes
};
std::string EncodeKeySlot(const KeySlot& slot);
// kDataLoss naming the slot when malformed, of another id than `id`, or out of bounds.
StatusOr<KeySlot> DecodeKeySlot(std::string_view bytes, const std::string& id);

// ---- JSON envelopes of maintenance objects (gc/, leases/) ----
// `body` in a checksummed envelope of kind `kind` (FORMAT.md "JSON envelopes"), version 1.
std::string EncodeJsonEnvelope(const char* kind, const nlohmann::json& body);
// The body of an envelope of kind `kind`: kDataLoss naming `what` when larger than `max_size`,
// unparsable, of another kind or failing its checksum; kFailedPrecondition for a newer version.
StatusOr<nlohmann::json> DecodeJsonEnvelope(std::string_view bytes, const char* kind,
                                            uint64_t max_size, const std::string& what);

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
  // Gives the buffer of the pack being built (unsealed blocks are dropped) back to the pool.
  ~PackBuilder();
  PackBuilder(PackBuilder&&) = default;
  PackBuilder& operator=(PackBuilder&&) = default;
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
  void Begin();  // takes the buffer of a new pack and writes its header
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
// Version 2 (docs/FORMAT.md "Block fingerprints"): each stored tag is the block's keyed
// fingerprint masked with a pseudo-random value unique to (salt, block), under keys that only the
// host holds; the object is authenticated by an HMAC under the host's key and bound to the volume
// index it goes with.
using FingerprintKeyId = std::array<uint8_t, 16>;
using FingerprintSalt = std::array<uint8_t, 16>;
struct VolumeFingerprints {
  uint64_t volume_size = 0;
  uint32_t block_size = 0;
  FingerprintKeyId key_id{};  // which host key made the object (public, derived from the key)
  FingerprintSalt salt{};     // random per object: makes every stored mask unique
  Digest index_sha256{};      // SHA-256 of the volume index object this object goes with
  std::vector<BlockFingerprintEntry> entries;  // data blocks only, sorted by block
  // The fingerprint recorded for `block`, or nullptr.
  const Fingerprint* Find(uint64_t block) const;
};
std::string FingerprintsKey(const std::string& backup, const std::string& volume);
// Encodes `f` and appends HMAC-SHA256(auth_key, everything before).
std::string EncodeFingerprints(const VolumeFingerprints& f,
                               const std::array<uint8_t, 32>& auth_key);
// Parses a version-2 object (magic, sizes, order, block numbers inside the volume); the HMAC is
// checked separately by FingerprintsAuthentic. kDataLoss naming `what` when malformed;
// kFailedPrecondition for a version-1 object (its key was stored on the target: never trusted).
StatusOr<VolumeFingerprints> DecodeFingerprints(std::string_view bytes, const std::string& what);
// True when the trailing HMAC of an encoded object verifies under `auth_key`.
bool FingerprintsAuthentic(std::string_view bytes, const std::array<uint8_t, 32>& auth_key);
// The largest fingerprints object of a volume of `size` bytes (0 when the size is invalid).
uint64_t MaxFingerprintsSize(uint64_t size, uint32_t block_size);

// ---- backup record ----
std::string EncodeRecord(const BackupInfo& info);
// kDataLoss naming `what` when unparsable, incomplete or its checksum is wrong.
StatusOr<BackupInfo> DecodeRecord(std::string_view bytes, const std::string& what);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_REPO_FORMAT_H_
