// On-target format v1 encodings (see format.h and docs/FORMAT.md).
#include "repo/format.h"

#include <lz4.h>
#include <openssl/crypto.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include <nlohmann/json.hpp>

#include "core/errors.h"

namespace vmbackup::internal {

using nlohmann::json;

std::string PackKey(const std::string& id) {
  return "packs/" + id.substr(0, 2) + "/" + id + ".pack";
}
std::string PackIndexKey(const std::string& id) { return std::string(kIndexPrefix) + id + ".idx"; }
std::string RecordKey(const std::string& b) { return std::string(kRecordPrefix) + b + ".json"; }
std::string VolumeIndexKey(const std::string& b, const std::string& v) {
  return "volumes/" + b + "/" + v + ".vidx";
}
std::string FingerprintsKey(const std::string& b, const std::string& v) {
  return "volumes/" + b + "/" + v + ".vfp";
}

static std::string Between(const std::string& key, std::string_view prefix,
                           std::string_view suffix) {
  if (key.size() <= prefix.size() + suffix.size()) return "";
  if (key.compare(0, prefix.size(), prefix) != 0) return "";
  if (key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0) return "";
  std::string mid = key.substr(prefix.size(), key.size() - prefix.size() - suffix.size());
  if (mid.find('/') != std::string::npos) return "";
  return mid;
}
std::string PackIdFromIndexKey(const std::string& key) {
  return Between(key, kIndexPrefix, ".idx");
}
std::string BackupNameFromRecordKey(const std::string& key) {
  return Between(key, kRecordPrefix, ".json");
}

// ---- names and limits ----
bool IsValidBackupName(std::string_view name) { return IsValidName(name, kMaxBackupName); }
bool IsValidVolumeName(std::string_view name) { return IsValidName(name, kMaxVolumeName); }

bool IsCheckpointName(std::string_view s) {
  if (s.size() != 9 + 16 || s.substr(0, 9) != "vmbackup-") return false;
  for (size_t i = 9; i < s.size(); ++i)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
  return true;
}
bool IsValidVmName(std::string_view name) { return name.empty() || IsValidName(name, kMaxVmName); }
bool IsValidBlockSize(uint64_t bs) {
  return bs >= kMinBlockSize && bs <= kMaxBlockSize && (bs & (bs - 1)) == 0;
}

static constexpr size_t kVolumeIndexHeader = 8 + 4 + 4 + 8 + 8;
static constexpr size_t kVolumeIndexEntry = 33;

bool VolumeIndexSize(uint64_t size, uint32_t block_size, uint64_t* out) {
  if (!IsValidBlockSize(block_size) || size > kMaxVolumeSize) return false;
  // At most 2^50 / 2^16 = 2^34 blocks: 33 * 2^34 fits in 64 bits comfortably.
  *out = kVolumeIndexHeader + BlockCount(size, block_size) * kVolumeIndexEntry + 32;
  return true;
}

bool JsonDepthWithin(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

// ---- checksummed JSON envelope ----
static std::string Envelope(const char* kind, const json& body, int version = kFormatVersion) {
  json doc;
  doc["format"] = kind;
  doc["version"] = version;
  doc["body"] = body;
  doc["sha256"] = ToHex(Sha256(body.dump()));
  return doc.dump(1) + "\n";
}

static StatusOr<json> OpenEnvelope(std::string_view bytes, const char* kind,
                                   const std::string& what, int max_version = kFormatVersion,
                                   int* version_out = nullptr) {
  // Depth first: nlohmann's printer (used for the checksum) and destructor recurse.
  if (!JsonDepthWithin(bytes, kMaxJsonDepth))
    return DataLossError(what + " nests JSON deeper than " + std::to_string(kMaxJsonDepth) +
                         " levels (corrupt or hostile)");
  json doc = json::parse(bytes.begin(), bytes.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object())
    return DataLossError(what + " is not valid JSON (truncated or corrupt)");
  if (!doc.contains("format") || doc["format"] != kind)
    return DataLossError(what + " is not a " + kind + " object");
  if (!doc.contains("version") || !doc["version"].is_number_integer() ||
      doc["version"].get<int64_t>() < 1)
    return DataLossError(what + " has no valid format version");
  if (doc["version"].get<int64_t>() > max_version)
    return FailedPreconditionError(what + " has format version " +
                                   std::to_string(doc["version"].get<int64_t>()) +
                                   "; this library reads up to " + std::to_string(max_version));
  if (version_out != nullptr) *version_out = static_cast<int>(doc["version"].get<int64_t>());
  if (!doc.contains("body") || !doc["body"].is_object() || !doc.contains("sha256") ||
      !doc["sha256"].is_string())
    return DataLossError(what + " is incomplete");
  if (ToHex(Sha256(doc["body"].dump())) != doc["sha256"].get<std::string>())
    return DataLossError(what + " fails its checksum (corrupt)");
  return std::move(doc["body"]);
}

// ---- typed, bounded fields of a decoded JSON body ----
namespace {

// Reads the fields of one JSON object of a target, naming `what` (the object) and the field in
// every error. Failures are kDataLoss: whatever the cause, the object is not what a writer made.
class Fields {
 public:
  Fields(const json& j, std::string what) : j_(j), what_(std::move(what)) {}
  Status Err(const std::string& field, const std::string& why) const {
    return DataLossError(what_ + ": field '" + field + "' " + why);
  }
  Status String(const char* field, size_t max_len, std::string* out, bool optional = false) const {
    auto it = j_.find(field);
    if (it == j_.end()) return optional ? Status::Ok() : Err(field, "is missing");
    if (!it->is_string()) return Err(field, "is not a string");
    const std::string& v = it->get_ref<const std::string&>();
    if (v.size() > max_len) return Err(field, "is longer than " + std::to_string(max_len));
    if (v.find('\0') != std::string::npos) return Err(field, "holds a NUL character");
    *out = v;
    return Status::Ok();
  }
  Status U64(const char* field, uint64_t max, uint64_t* out) const {
    auto it = j_.find(field);
    if (it == j_.end()) return Err(field, "is missing");
    if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0))
      return Err(field, "is not a non-negative integer");
    const uint64_t v = it->get<uint64_t>();
    if (v > max) return Err(field, "is " + std::to_string(v) + ", above " + std::to_string(max));
    *out = v;
    return Status::Ok();
  }
  Status U32(const char* field, uint32_t max, uint32_t* out) const {
    uint64_t v = 0;
    VMB_RETURN_IF_ERROR(U64(field, max, &v));
    *out = static_cast<uint32_t>(v);
    return Status::Ok();
  }
  Status Double(const char* field, double* out) const {
    auto it = j_.find(field);
    if (it == j_.end()) return Err(field, "is missing");
    if (!it->is_number()) return Err(field, "is not a number");
    *out = it->get<double>();
    return Status::Ok();
  }
  Status Hex(const char* field, size_t len, std::string* out, bool optional = false) const {
    VMB_RETURN_IF_ERROR(String(field, len, out, optional));
    if (out->empty() && optional) return Status::Ok();
    if (out->size() != len || out->find_first_not_of("0123456789abcdef") != std::string::npos)
      return Err(field, "is not " + std::to_string(len) + " lowercase hex characters");
    return Status::Ok();
  }

 private:
  const json& j_;
  std::string what_;
};

constexpr size_t kMaxTimeString = 64;

}  // namespace

// ---- descriptor ----
std::string EncodeDescriptor(const RepoDescriptor& d) {
  json b;
  b["id"] = d.id;
  b["block_size"] = d.block_size;
  b["pack_size"] = d.pack_size;
  // Block names: SHA-256 of the block, or HMAC-SHA256 under the digest key when encrypted.
  b["hash"] = d.encryption.empty() ? "sha256" : "hmac-sha256";
  b["compression"] = "lz4";
  b["created_at"] = d.created_at;
  if (!d.fingerprint_key.empty()) b["fingerprint_key"] = d.fingerprint_key;
  // Version 2 (FORMAT.md "Writer-version gate"): version-1 libraries refuse the envelope; later
  // ones read the repository and write it only when they are at least writer_version.
  if (d.version >= 2) b["writer_version"] = d.writer_version;
  if (!d.encryption.empty()) b["encryption"] = {{"algorithm", d.encryption}, {"key_id", d.key_id}};
  return Envelope("vmbackup-repository", b, d.version);
}

std::string KeySlotKey(const std::string& slot_id) {
  return std::string(kKeyPrefix) + slot_id + ".json";
}

std::string SlotIdFromKey(const std::string& key) {
  const std::string_view prefix = kKeyPrefix, suffix = ".json";
  if (key.size() != prefix.size() + 16 + suffix.size() || key.compare(0, prefix.size(), prefix) ||
      key.compare(key.size() - suffix.size(), suffix.size(), suffix))
    return "";
  std::string id = key.substr(prefix.size(), 16);
  if (id.find_first_not_of("0123456789abcdef") != std::string::npos) return "";
  return id;
}

std::string EncodeKeySlot(const KeySlot& s) {
  json b;
  b["id"] = s.id;
  b["kind"] = s.kind;
  if (s.kind == "passphrase")
    b["kdf"] = {{"name", "scrypt"}, {"n", s.scrypt_n}, {"r", s.scrypt_r}, {"p", s.scrypt_p}};
  b["salt"] = ToHex(s.salt.data(), s.salt.size());
  b["wrapped"] = ToHex(s.wrapped.data(), s.wrapped.size());
  b["key_id"] = s.key_id;
  b["created_at"] = s.created_at;
  b["host"] = s.host;
  b["label"] = s.label;
  return Envelope("vmbackup-key", b);
}

StatusOr<KeySlot> DecodeKeySlot(std::string_view bytes, const std::string& id) {
  const std::string what = "key slot " + KeySlotKey(id);
  if (bytes.size() > kMaxKeySlotBytes)
    return DataLossError(what + " is larger than " + std::to_string(kMaxKeySlotBytes) +
                         " bytes (corrupt or hostile)");
  VMB_ASSIGN_OR_RETURN(json b, OpenEnvelope(bytes, "vmbackup-key", what));
  Fields f(b, what);
  KeySlot s;
  VMB_RETURN_IF_ERROR(f.Hex("id", 16, &s.id));
  if (s.id != id) return f.Err("id", "names slot " + s.id + " (misplaced or copied)");
  VMB_RETURN_IF_ERROR(f.String("kind", 16, &s.kind));
  if (s.kind != "passphrase" && s.kind != "raw")
    return f.Err("kind", "is '" + s.kind + "', not 'passphrase' or 'raw'");
  if (s.kind == "passphrase") {
    auto it = b.find("kdf");
    if (it == b.end() || !it->is_object()) return f.Err("kdf", "is missing or not an object");
    Fields k(*it, what + " kdf");
    std::string name;
    VMB_RETURN_IF_ERROR(k.String("name", 16, &name));
    if (name != "scrypt") return k.Err("name", "is '" + name + "', not 'scrypt'");
    VMB_RETURN_IF_ERROR(k.U64("n", 1ull << 20, &s.scrypt_n));
    VMB_RETURN_IF_ERROR(k.U32("r", 1024, &s.scrypt_r));
    VMB_RETURN_IF_ERROR(k.U32("p", 1024, &s.scrypt_p));
  }
  std::string hex;
  VMB_RETURN_IF_ERROR(f.Hex("salt", 64, &hex));
  s.salt.resize(32);
  BytesFromHex(hex, reinterpret_cast<uint8_t*>(s.salt.data()), 32);
  VMB_RETURN_IF_ERROR(f.Hex("wrapped", 120, &hex));
  s.wrapped.resize(60);
  BytesFromHex(hex, reinterpret_cast<uint8_t*>(s.wrapped.data()), 60);
  VMB_RETURN_IF_ERROR(f.Hex("key_id", 16, &s.key_id));
  VMB_RETURN_IF_ERROR(f.String("created_at", kMaxTimeString, &s.created_at, true));
  VMB_RETURN_IF_ERROR(f.String("host", 255, &s.host, true));
  VMB_RETURN_IF_ERROR(f.String("label", 200, &s.label, true));
  return s;
}

std::string EncodeJsonEnvelope(const char* kind, const nlohmann::json& body) {
  return Envelope(kind, body);
}

StatusOr<nlohmann::json> DecodeJsonEnvelope(std::string_view bytes, const char* kind,
                                            uint64_t max_size, const std::string& what) {
  if (bytes.size() > max_size)
    return DataLossError(what + " is larger than " + std::to_string(max_size) +
                         " bytes (corrupt or hostile)");
  return OpenEnvelope(bytes, kind, what);
}

StatusOr<RepoDescriptor> DecodeDescriptor(std::string_view bytes) {
  const std::string what = std::string("repository descriptor ") + kDescriptorKey;
  if (bytes.size() > kMaxDescriptorBytes)
    return DataLossError(what + " is larger than " + std::to_string(kMaxDescriptorBytes) +
                         " bytes (corrupt or hostile)");
  int version = 1;
  VMB_ASSIGN_OR_RETURN(
      json b, OpenEnvelope(bytes, "vmbackup-repository", what, kDescriptorVersion, &version));
  RepoDescriptor d;
  d.version = version;
  d.writer_version = 1;
  if (version >= 2) {
    VMB_RETURN_IF_ERROR(Fields(b, what).U32("writer_version", 1u << 20, &d.writer_version));
    if (d.writer_version < 2) return Fields(b, what).Err("writer_version", "is below 2");
  }
  Fields f(b, what);
  VMB_RETURN_IF_ERROR(f.Hex("id", 32, &d.id));
  VMB_RETURN_IF_ERROR(f.U32("block_size", kMaxBlockSize, &d.block_size));
  if (!IsValidBlockSize(d.block_size))
    return f.Err("block_size", "is not a power of two from 64 KiB to 16 MiB");
  VMB_RETURN_IF_ERROR(f.U32("pack_size", kMaxPackSize, &d.pack_size));
  if (d.pack_size < d.block_size) return f.Err("pack_size", "is smaller than block_size");
  VMB_RETURN_IF_ERROR(f.String("created_at", kMaxTimeString, &d.created_at, true));
  // Only repositories made by earlier versions have it (FORMAT.md "Block fingerprints"); it is
  // checked but never used: a key stored on the target protects nothing.
  VMB_RETURN_IF_ERROR(f.Hex("fingerprint_key", 32, &d.fingerprint_key, true));
  if (auto it = b.find("encryption"); it != b.end()) {
    if (version < kEncryptedDescriptorVersion)
      return f.Err("encryption", "is set in a descriptor of version " + std::to_string(version));
    if (!it->is_object()) return f.Err("encryption", "is not an object");
    Fields e(*it, what + " encryption");
    VMB_RETURN_IF_ERROR(e.String("algorithm", 32, &d.encryption));
    if (d.encryption != "aes-256-gcm")
      return FailedPreconditionError(what + " uses encryption '" + d.encryption +
                                     "'; this library knows aes-256-gcm");
    VMB_RETURN_IF_ERROR(e.Hex("key_id", 16, &d.key_id));
  } else if (version >= kEncryptedDescriptorVersion) {
    return f.Err("encryption", "is missing in a descriptor of version " + std::to_string(version));
  }
  std::string hash, compression;
  VMB_RETURN_IF_ERROR(f.String("hash", 32, &hash));
  VMB_RETURN_IF_ERROR(f.String("compression", 32, &compression));
  if (hash != (d.encryption.empty() ? "sha256" : "hmac-sha256") || compression != "lz4")
    return FailedPreconditionError(what + " uses hash '" + hash + "' and compression '" +
                                   compression + "'; this library knows sha256 and lz4");
  return d;
}

// ---- blocks ----
Codec EncodeBlockAppend(const char* raw, size_t raw_len, std::string* out) {
  // Compress into a per-thread scratch buffer and append only what is kept: growing `out` by the
  // LZ4 bound first would zero-fill (and fault in) 256 KiB per block just to be overwritten.
  thread_local std::unique_ptr<char[]> scratch;
  thread_local size_t scratch_size = 0;
  const int bound = LZ4_compressBound(static_cast<int>(raw_len));
  if (scratch_size < static_cast<size_t>(bound)) {
    scratch.reset(new char[static_cast<size_t>(bound)]);
    scratch_size = static_cast<size_t>(bound);
  }
  // Only a result that saves at least 1/32 is kept, so LZ4 may stop at that size.
  const int limit = static_cast<int>(raw_len - raw_len / 32);
  int n = LZ4_compress_default(raw, scratch.get(), static_cast<int>(raw_len), limit);
  if (n > 0) {
    out->append(scratch.get(), static_cast<size_t>(n));
    return Codec::kLz4;
  }
  out->append(raw, raw_len);
  return Codec::kNone;
}

Status DecodeBlock(Codec codec, const char* stored, size_t stored_len, char* raw, size_t raw_len) {
  switch (codec) {
    case Codec::kNone:
      if (stored_len != raw_len) return DataLossError("stored block has the wrong length");
      std::memcpy(raw, stored, raw_len);
      return Status::Ok();
    case Codec::kLz4: {
      int n =
          LZ4_decompress_safe(stored, raw, static_cast<int>(stored_len), static_cast<int>(raw_len));
      if (n < 0 || static_cast<size_t>(n) != raw_len)
        return DataLossError("stored block does not decompress (corrupt LZ4 data)");
      return Status::Ok();
    }
  }
  return DataLossError("stored block has an unknown codec");
}

// ---- packs ----
PackBuilder::PackBuilder(uint32_t target_size, BufferPool* pool)
    : target_size_(target_size), pool_(pool) {
  Reset();
}

PackBuilder::~PackBuilder() {
  if (pool_ != nullptr && data_.capacity() >= target_size_) pool_->Give(std::move(data_));
}

void PackBuilder::Reset() {
  // The buffer of the next pack is taken when its first block arrives: a builder that is done (or
  // waits for its turn on the workers) holds no memory, and the pool's warm buffers go to the
  // builders that fill them.
  data_ = std::string();
  entries_.clear();
  raw_bytes_ = 0;
}

void PackBuilder::Begin() {
  // Room for a full pack, its last block's LZ4 bound and the trailer without reallocating.
  const size_t capacity = target_size_ + target_size_ / 8;
  if (pool_ != nullptr) {
    data_ = pool_->Take(capacity);
  } else {
    data_.reserve(capacity);
  }
  data_.append(kPackMagic);
}

const PackEntry& PackBuilder::Add(const Digest& digest, const char* raw, size_t raw_len) {
  if (data_.empty()) Begin();
  PackEntry e;
  e.digest = digest;
  e.offset = data_.size();
  e.codec = EncodeBlockAppend(raw, raw_len, &data_);
  e.stored_len = static_cast<uint32_t>(data_.size() - e.offset);
  e.raw_len = static_cast<uint32_t>(raw_len);
  raw_bytes_ += raw_len;
  entries_.push_back(e);
  return entries_.back();
}

StatusOr<PackBuilder::Sealed> PackBuilder::Seal() {
  if (data_.empty()) Begin();  // an empty pack is still a well-formed one
  Sealed s;
  VMB_ASSIGN_OR_RETURN(s.id, RandomHex(16));
  s.data = std::move(data_);
  s.entries = std::move(entries_);
  s.index = EncodePackIndex(s.id, s.entries);
  // Trailer: a copy of the index, so a damaged index object can be rebuilt from the pack alone.
  const uint64_t index_offset = s.data.size();
  s.data.append(s.index);
  PutU64(&s.data, index_offset);
  s.data.append(kPackTrailerMagic);
  Reset();
  return s;
}

static constexpr std::string_view kPackIndexMagic = "VMBPIDX1";
static constexpr size_t kPackEntrySize = 32 + 8 + 4 + 4 + 1 + 7;

std::string EncodePackIndex(const std::string& pack_id, const std::vector<PackEntry>& entries) {
  std::string s;
  s.reserve(64 + entries.size() * kPackEntrySize);
  s.append(kPackIndexMagic);
  PutU32(&s, 1);
  PutU32(&s, static_cast<uint32_t>(entries.size()));
  std::string id = pack_id;
  id.resize(32, '\0');
  s.append(id);
  for (const auto& e : entries) {
    s.append(reinterpret_cast<const char*>(e.digest.data()), 32);
    PutU64(&s, e.offset);
    PutU32(&s, e.stored_len);
    PutU32(&s, e.raw_len);
    s.push_back(static_cast<char>(e.codec));
    s.append(7, '\0');
  }
  Digest sum = Sha256(s);
  s.append(reinterpret_cast<const char*>(sum.data()), 32);
  return s;
}

static bool ChecksumOk(std::string_view bytes) {
  if (bytes.size() < 32) return false;
  Digest sum = Sha256(bytes.data(), bytes.size() - 32);
  return std::memcmp(sum.data(), bytes.data() + bytes.size() - 32, 32) == 0;
}

StatusOr<std::vector<PackEntry>> DecodePackIndex(std::string_view b, const std::string& pack_id,
                                                 const std::string& what) {
  const size_t header = 8 + 4 + 4 + 32;
  if (b.size() < header + 32 || b.substr(0, 8) != kPackIndexMagic)
    return DataLossError(what + " is not a pack index (bad magic or truncated)");
  if (!ChecksumOk(b)) return DataLossError(what + " fails its checksum (corrupt)");
  if (GetU32(b.data() + 8) != 1) return DataLossError(what + " has an unknown version");
  const uint64_t count = GetU32(b.data() + 12);
  // 64-bit arithmetic: count < 2^32 and the entry size is 56, so nothing wraps.
  if (b.size() != header + count * kPackEntrySize + 32)
    return DataLossError(what + " has the wrong size for its entry count");
  std::string id(b.substr(16, 32));
  id.resize(id.find('\0') == std::string::npos ? id.size() : id.find('\0'));
  if (id != pack_id) return DataLossError(what + " belongs to another pack (" + id + ")");
  std::vector<PackEntry> out(count);
  const char* p = b.data() + header;
  uint64_t end_of_previous = kPackMagic.size();
  for (uint64_t i = 0; i < count; ++i, p += kPackEntrySize) {
    PackEntry& e = out[i];
    std::memcpy(e.digest.data(), p, 32);
    e.offset = GetU64(p + 32);
    e.stored_len = GetU32(p + 40);
    e.raw_len = GetU32(p + 44);
    const uint8_t c = static_cast<uint8_t>(p[48]);
    const std::string entry = what + " entry " + std::to_string(i);
    if (c > 1) return DataLossError(entry + " has an unknown codec");
    e.codec = static_cast<Codec>(c);
    if (e.raw_len == 0 || e.raw_len > kMaxBlockSize)
      return DataLossError(entry + " has an invalid block length " + std::to_string(e.raw_len));
    const uint64_t max_stored =
        e.codec == Codec::kNone
            ? e.raw_len
            : static_cast<uint64_t>(LZ4_compressBound(static_cast<int>(e.raw_len)));
    if (e.stored_len == 0 || e.stored_len > max_stored ||
        (e.codec == Codec::kNone && e.stored_len != e.raw_len))
      return DataLossError(entry + " has an invalid stored length " + std::to_string(e.stored_len));
    // Blocks follow each other in the pack: no overlap, nothing beyond the largest pack.
    if (e.offset < end_of_previous || e.offset > uint64_t{kMaxPackSize} * 2)
      return DataLossError(entry + " has an invalid offset " + std::to_string(e.offset));
    end_of_previous = e.offset + e.stored_len;
  }
  return out;
}

StatusOr<std::vector<PackEntry>> DecodePackTrailer(std::string_view pack,
                                                   const std::string& pack_id,
                                                   const std::string& what) {
  const size_t tail = 8 + kPackTrailerMagic.size();
  if (pack.size() < kPackMagic.size() + tail || pack.substr(0, kPackMagic.size()) != kPackMagic ||
      pack.substr(pack.size() - kPackTrailerMagic.size()) != kPackTrailerMagic)
    return DataLossError(what + " is not a pack (bad magic or truncated)");
  const uint64_t index_offset = GetU64(pack.data() + pack.size() - tail);
  if (index_offset < kPackMagic.size() || index_offset > pack.size() - tail)
    return DataLossError(what + " has a trailer pointing outside the pack");
  VMB_ASSIGN_OR_RETURN(std::vector<PackEntry> entries,
                       DecodePackIndex(pack.substr(index_offset, pack.size() - tail - index_offset),
                                       pack_id, what + " (index copy in the trailer)"));
  for (const auto& e : entries) {
    if (e.offset < kPackMagic.size() || e.offset > index_offset ||
        e.stored_len > index_offset - e.offset)
      return DataLossError(what + " lists a block outside its data area");
  }
  return entries;
}

// ---- block fingerprints ----
static constexpr std::string_view kFingerprintsMagicV1 = "VMBVFP01";
static constexpr std::string_view kFingerprintsMagic = "VMBVFP02";
static constexpr size_t kFingerprintsHeader = 8 + 4 + 4 + 8 + 8 + 16 + 16 + 32;
static constexpr size_t kFingerprintEntrySize = 8 + 16;

const Fingerprint* VolumeFingerprints::Find(uint64_t block) const {
  auto it =
      std::lower_bound(entries.begin(), entries.end(), block,
                       [](const BlockFingerprintEntry& e, uint64_t b) { return e.block < b; });
  return it != entries.end() && it->block == block ? &it->fp : nullptr;
}

uint64_t MaxFingerprintsSize(uint64_t size, uint32_t block_size) {
  if (!IsValidBlockSize(block_size) || size > kMaxVolumeSize) return 0;
  return kFingerprintsHeader + BlockCount(size, block_size) * kFingerprintEntrySize + 32;
}

std::string EncodeFingerprints(const VolumeFingerprints& f,
                               const std::array<uint8_t, 32>& auth_key) {
  std::string s;
  s.reserve(kFingerprintsHeader + f.entries.size() * kFingerprintEntrySize + 32);
  s.append(kFingerprintsMagic);
  PutU32(&s, 2);
  PutU32(&s, f.block_size);
  PutU64(&s, f.volume_size);
  PutU64(&s, f.entries.size());
  s.append(reinterpret_cast<const char*>(f.key_id.data()), f.key_id.size());
  s.append(reinterpret_cast<const char*>(f.salt.data()), f.salt.size());
  s.append(reinterpret_cast<const char*>(f.index_sha256.data()), f.index_sha256.size());
  for (const auto& e : f.entries) {
    PutU64(&s, e.block);
    s.append(reinterpret_cast<const char*>(e.fp.data()), e.fp.size());
  }
  Digest mac = HmacSha256(auth_key.data(), auth_key.size(), s.data(), s.size());
  s.append(reinterpret_cast<const char*>(mac.data()), 32);
  return s;
}

bool FingerprintsAuthentic(std::string_view b, const std::array<uint8_t, 32>& auth_key) {
  if (b.size() < 32) return false;
  Digest mac = HmacSha256(auth_key.data(), auth_key.size(), b.data(), b.size() - 32);
  return mac != Digest{} && CRYPTO_memcmp(mac.data(), b.data() + b.size() - 32, 32) == 0;
}

StatusOr<VolumeFingerprints> DecodeFingerprints(std::string_view b, const std::string& what) {
  if (b.size() >= 8 && b.substr(0, 8) == kFingerprintsMagicV1)
    return FailedPreconditionError(what +
                                   " is a version-1 fingerprint object, whose key was kept "
                                   "on the target; it is never used");
  if (b.size() < kFingerprintsHeader + 32 || b.substr(0, 8) != kFingerprintsMagic)
    return DataLossError(what + " is not a fingerprint object (bad magic or truncated)");
  if (GetU32(b.data() + 8) != 2) return DataLossError(what + " has an unknown version");
  VolumeFingerprints f;
  f.block_size = GetU32(b.data() + 12);
  f.volume_size = GetU64(b.data() + 16);
  const uint64_t count = GetU64(b.data() + 24);
  if (!IsValidBlockSize(f.block_size) || f.volume_size > kMaxVolumeSize)
    return DataLossError(what + " has an invalid block size or volume size");
  const uint64_t nblocks = BlockCount(f.volume_size, f.block_size);
  // Compared by division first, so a hostile count cannot wrap the product.
  if (count > nblocks || count != (b.size() - kFingerprintsHeader - 32) / kFingerprintEntrySize ||
      kFingerprintsHeader + count * kFingerprintEntrySize + 32 != b.size())
    return DataLossError(what + " has the wrong size for its entry count");
  std::memcpy(f.key_id.data(), b.data() + 32, 16);
  std::memcpy(f.salt.data(), b.data() + 48, 16);
  std::memcpy(f.index_sha256.data(), b.data() + 64, 32);
  f.entries.resize(count);
  const char* p = b.data() + kFingerprintsHeader;
  for (uint64_t i = 0; i < count; ++i, p += kFingerprintEntrySize) {
    f.entries[i].block = GetU64(p);
    std::memcpy(f.entries[i].fp.data(), p + 8, 16);
    if (f.entries[i].block >= nblocks)
      return DataLossError(what + " names a block past the end of the volume");
    if (i > 0 && f.entries[i].block <= f.entries[i - 1].block)
      return DataLossError(what + " is not sorted by block");
  }
  return f;
}

// ---- volume index ----
static constexpr std::string_view kVolumeIndexMagic = "VMBVIDX1";

std::string EncodeVolumeIndex(const VolumeIndex& v) {
  std::string s;
  s.reserve(kVolumeIndexHeader + v.kinds.size() * kVolumeIndexEntry + 32);
  s.append(kVolumeIndexMagic);
  PutU32(&s, 1);
  PutU32(&s, v.block_size);
  PutU64(&s, v.volume_size);
  PutU64(&s, v.kinds.size());
  size_t pos = s.size();
  s.resize(pos + v.kinds.size() * 33);
  char* out = s.data();
  for (size_t i = 0; i < v.kinds.size(); ++i, pos += 33) {
    out[pos] = static_cast<char>(v.kinds[i]);
    std::memcpy(out + pos + 1, v.digests[i].data(), 32);
  }
  Digest sum = Sha256(s);
  s.append(reinterpret_cast<const char*>(sum.data()), 32);
  return s;
}

StatusOr<VolumeIndex> DecodeVolumeIndex(std::string_view b, const std::string& what) {
  const size_t header = kVolumeIndexHeader;
  if (b.size() < header + 32 || b.substr(0, 8) != kVolumeIndexMagic)
    return DataLossError(what + " is not a volume index (bad magic or truncated)");
  if (!ChecksumOk(b)) return DataLossError(what + " fails its checksum (corrupt)");
  if (GetU32(b.data() + 8) != 1) return DataLossError(what + " has an unknown version");
  VolumeIndex v;
  v.block_size = GetU32(b.data() + 12);
  v.volume_size = GetU64(b.data() + 16);
  const uint64_t count = GetU64(b.data() + 24);
  uint64_t expected = 0;
  if (!VolumeIndexSize(v.volume_size, v.block_size, &expected))
    return DataLossError(what + " has an invalid block size or volume size");
  // The entry count must match both the volume size and the object's real length (compared by
  // division, so a hostile count cannot wrap the product).
  if (b.size() != expected || count != BlockCount(v.volume_size, v.block_size) ||
      count != (b.size() - header - 32) / kVolumeIndexEntry)
    return DataLossError(what + " has inconsistent sizes");
  v.kinds.resize(count);
  v.digests.resize(count);
  const char* p = b.data() + header;
  for (uint64_t i = 0; i < count; ++i, p += kVolumeIndexEntry) {
    uint8_t k = static_cast<uint8_t>(p[0]);
    if (k > 2) return DataLossError(what + " has an unknown block kind");
    v.kinds[i] = static_cast<BlockKind>(k);
    std::memcpy(v.digests[i].data(), p + 1, 32);
  }
  return v;
}

// ---- record ----
std::string EncodeRecord(const BackupInfo& r) {
  json b;
  b["name"] = r.name;
  b["vm_name"] = r.vm_name;
  b["vm_namespace"] = r.vm_namespace;
  b["created_at"] = r.created_at;
  b["completed_at"] = r.completed_at;
  b["parent"] = r.parent;
  b["state"] = r.state;
  json meta = json::parse(r.vm_metadata_json.empty() ? "{}" : r.vm_metadata_json, nullptr, false);
  b["vm_metadata"] = meta.is_discarded() ? json::object() : meta;
  b["bytes_total"] = r.bytes_total;
  b["bytes_new"] = r.bytes_new;
  b["bytes_reused"] = r.bytes_reused;
  b["bytes_stored"] = r.bytes_stored;
  b["seconds"] = r.seconds;
  if (r.freeze_seconds >= 0) b["freeze_seconds"] = r.freeze_seconds;
  json vols = json::array();
  for (const auto& v : r.volumes) {
    vols.push_back({{"name", v.name},
                    {"size", v.size},
                    {"block_size", v.block_size},
                    {"data_blocks", v.data_blocks},
                    {"zero_blocks", v.zero_blocks},
                    {"hole_blocks", v.hole_blocks},
                    {"bytes_new", v.bytes_new},
                    {"bytes_reused", v.bytes_reused},
                    {"bytes_stored", v.bytes_stored},
                    {"index_key", v.index_key},
                    {"index_sha256", v.index_sha256}});
    if (!v.fingerprints_key.empty()) {
      vols.back()["fingerprints_key"] = v.fingerprints_key;
      vols.back()["fingerprints_sha256"] = v.fingerprints_sha256;
    }
    if (!v.provider.empty()) vols.back()["provider"] = v.provider;
    if (!v.snapshot.empty()) vols.back()["snapshot"] = v.snapshot;
    if (!v.consistency.empty()) vols.back()["consistency"] = v.consistency;
    if (!v.checkpoint.empty()) vols.back()["checkpoint"] = v.checkpoint;
    if (v.changed_bytes >= 0) vols.back()["changed_bytes"] = v.changed_bytes;
  }
  b["volumes"] = vols;
  return Envelope("vmbackup-record", b);
}

// True when `key` is "volumes/<backup>/<volume>.<8 hex>.<ext>": the only keys a writer gives a
// volume's objects, so a record can never point at another backup's objects or outside volumes/.
static bool IsVolumeObjectKey(const std::string& key, const std::string& backup,
                              const std::string& volume, std::string_view ext) {
  const std::string prefix = "volumes/" + backup + "/" + volume + ".";
  if (key.size() != prefix.size() + 8 + 1 + ext.size() || key.compare(0, prefix.size(), prefix))
    return false;
  std::string_view rand(key.data() + prefix.size(), 8);
  return rand.find_first_not_of("0123456789abcdef") == std::string_view::npos &&
         key[prefix.size() + 8] == '.' && key.compare(prefix.size() + 9, ext.size(), ext) == 0;
}

StatusOr<BackupInfo> DecodeRecord(std::string_view bytes, const std::string& what) {
  if (bytes.size() > kMaxRecordBytes)
    return DataLossError(what + " is larger than " + std::to_string(kMaxRecordBytes) +
                         " bytes (corrupt or hostile)");
  VMB_ASSIGN_OR_RETURN(json b, OpenEnvelope(bytes, "vmbackup-record", what));
  BackupInfo r;
  Fields f(b, what);
  constexpr uint64_t kAny = ~uint64_t{0};
  VMB_RETURN_IF_ERROR(f.String("name", kMaxBackupName, &r.name));
  if (!IsValidBackupName(r.name)) return f.Err("name", "is not a valid backup name");
  VMB_RETURN_IF_ERROR(f.String("vm_name", kMaxVmName, &r.vm_name));
  if (!IsValidVmName(r.vm_name)) return f.Err("vm_name", "is not a valid VM name");
  VMB_RETURN_IF_ERROR(f.String("vm_namespace", kMaxVmName, &r.vm_namespace));
  if (!IsValidVmName(r.vm_namespace)) return f.Err("vm_namespace", "is not a valid namespace");
  VMB_RETURN_IF_ERROR(f.String("created_at", kMaxTimeString, &r.created_at));
  VMB_RETURN_IF_ERROR(f.String("completed_at", kMaxTimeString, &r.completed_at));
  VMB_RETURN_IF_ERROR(f.String("parent", kMaxBackupName, &r.parent));
  if (!r.parent.empty() && !IsValidBackupName(r.parent))
    return f.Err("parent", "is not a valid backup name");
  VMB_RETURN_IF_ERROR(f.String("state", 16, &r.state));
  if (r.state != "Ready") return f.Err("state", "is not \"Ready\"");
  auto meta = b.find("vm_metadata");
  if (meta == b.end() || !meta->is_object()) return f.Err("vm_metadata", "is not an object");
  r.vm_metadata_json = meta->dump();
  VMB_RETURN_IF_ERROR(f.U64("bytes_total", kAny, &r.bytes_total));
  VMB_RETURN_IF_ERROR(f.U64("bytes_new", kAny, &r.bytes_new));
  VMB_RETURN_IF_ERROR(f.U64("bytes_reused", kAny, &r.bytes_reused));
  VMB_RETURN_IF_ERROR(f.U64("bytes_stored", kAny, &r.bytes_stored));
  VMB_RETURN_IF_ERROR(f.Double("seconds", &r.seconds));
  if (b.contains("freeze_seconds")) {
    VMB_RETURN_IF_ERROR(f.Double("freeze_seconds", &r.freeze_seconds));
    if (!(r.freeze_seconds >= 0 && r.freeze_seconds < 1e9))
      return f.Err("freeze_seconds", "is not a duration in seconds");
  }
  auto vols = b.find("volumes");
  if (vols == b.end() || !vols->is_array()) return f.Err("volumes", "is not an array");
  if (vols->empty() || vols->size() > kMaxVolumesPerBackup)
    return f.Err("volumes", "must hold 1 to " + std::to_string(kMaxVolumesPerBackup) + " volumes");
  for (size_t i = 0; i < vols->size(); ++i) {
    const json& v = (*vols)[i];
    const std::string vwhat = what + " volumes[" + std::to_string(i) + "]";
    if (!v.is_object()) return DataLossError(vwhat + " is not an object");
    Fields g(v, vwhat);
    VolumeBackupInfo vi;
    VMB_RETURN_IF_ERROR(g.String("name", kMaxVolumeName, &vi.name));
    if (!IsValidVolumeName(vi.name)) return g.Err("name", "is not a valid volume name");
    for (const auto& seen : r.volumes)
      if (seen.name == vi.name) return g.Err("name", "'" + vi.name + "' appears twice");
    VMB_RETURN_IF_ERROR(g.U64("size", kMaxVolumeSize, &vi.size));
    VMB_RETURN_IF_ERROR(g.U32("block_size", kMaxBlockSize, &vi.block_size));
    if (!IsValidBlockSize(vi.block_size))
      return g.Err("block_size", "is not a power of two from 64 KiB to 16 MiB");
    const uint64_t nblocks = BlockCount(vi.size, vi.block_size);
    VMB_RETURN_IF_ERROR(g.U64("data_blocks", nblocks, &vi.data_blocks));
    VMB_RETURN_IF_ERROR(g.U64("zero_blocks", nblocks, &vi.zero_blocks));
    VMB_RETURN_IF_ERROR(g.U64("hole_blocks", nblocks, &vi.hole_blocks));
    if (vi.data_blocks + vi.zero_blocks + vi.hole_blocks != nblocks)
      return DataLossError(vwhat + " block counts do not add up to the volume's blocks");
    VMB_RETURN_IF_ERROR(g.U64("bytes_new", kAny, &vi.bytes_new));
    VMB_RETURN_IF_ERROR(g.U64("bytes_reused", kAny, &vi.bytes_reused));
    VMB_RETURN_IF_ERROR(g.U64("bytes_stored", kAny, &vi.bytes_stored));
    VMB_RETURN_IF_ERROR(g.String("index_key", 512, &vi.index_key));
    if (!IsVolumeObjectKey(vi.index_key, r.name, vi.name, "vidx"))
      return g.Err("index_key", "is not this backup's volume index key");
    VMB_RETURN_IF_ERROR(g.Hex("index_sha256", 64, &vi.index_sha256));
    VMB_RETURN_IF_ERROR(g.String("fingerprints_key", 512, &vi.fingerprints_key, true));
    if (!vi.fingerprints_key.empty()) {
      if (!IsVolumeObjectKey(vi.fingerprints_key, r.name, vi.name, "vfp"))
        return g.Err("fingerprints_key", "is not this backup's fingerprints key");
      VMB_RETURN_IF_ERROR(g.Hex("fingerprints_sha256", 64, &vi.fingerprints_sha256));
    }
    VMB_RETURN_IF_ERROR(g.String("provider", 16, &vi.provider, true));
    if (!vi.provider.empty() && vi.provider != "file" && vi.provider != "qemu" &&
        vi.provider != "rbd")
      return g.Err("provider", "is not \"file\", \"qemu\" or \"rbd\"");
    VMB_RETURN_IF_ERROR(g.String("snapshot", 16, &vi.snapshot, true));
    if (!vi.snapshot.empty() && vi.snapshot != "reflink" && vi.snapshot != "direct" &&
        vi.snapshot != "fleece" && vi.snapshot != "rbd")
      return g.Err("snapshot", "is not \"reflink\", \"direct\", \"fleece\" or \"rbd\"");
    VMB_RETURN_IF_ERROR(g.String("checkpoint", 64, &vi.checkpoint, true));
    if (!vi.checkpoint.empty() && !IsCheckpointName(vi.checkpoint))
      return g.Err("checkpoint", "is not \"vmbackup-\" and 16 hex digits");
    if (v.contains("changed_bytes")) {
      uint64_t changed = 0;
      VMB_RETURN_IF_ERROR(g.U64("changed_bytes", vi.size, &changed));
      vi.changed_bytes = static_cast<int64_t>(changed);
    }
    VMB_RETURN_IF_ERROR(g.String("consistency", 32, &vi.consistency, true));
    if (!vi.consistency.empty() && vi.consistency != "fs-frozen" &&
        vi.consistency != "crash-consistent" && vi.consistency != "stopped" &&
        vi.consistency != "unknown")
      return g.Err("consistency",
                   "is not \"fs-frozen\", \"crash-consistent\", \"stopped\" or \"unknown\"");
    r.volumes.push_back(std::move(vi));
  }
  return r;
}

}  // namespace vmbackup::internal
