// On-target format v1 encodings (see format.h and docs/FORMAT.md).
#include "repo/format.h"

#include <lz4.h>

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

// ---- checksummed JSON envelope ----
static std::string Envelope(const char* kind, const json& body) {
  json doc;
  doc["format"] = kind;
  doc["version"] = kFormatVersion;
  doc["body"] = body;
  doc["sha256"] = ToHex(Sha256(body.dump()));
  return doc.dump(1) + "\n";
}

static StatusOr<json> OpenEnvelope(std::string_view bytes, const char* kind,
                                   const std::string& what) {
  json doc = json::parse(bytes.begin(), bytes.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object())
    return DataLossError(what + " is not valid JSON (truncated or corrupt)");
  if (!doc.contains("format") || doc["format"] != kind)
    return DataLossError(what + " is not a " + kind + " object");
  if (!doc.contains("version") || !doc["version"].is_number_integer())
    return DataLossError(what + " has no format version");
  if (doc["version"].get<int>() > kFormatVersion)
    return FailedPreconditionError(what + " has format version " +
                                   std::to_string(doc["version"].get<int>()) +
                                   "; this library reads up to " + std::to_string(kFormatVersion));
  if (!doc.contains("body") || !doc["body"].is_object() || !doc.contains("sha256") ||
      !doc["sha256"].is_string())
    return DataLossError(what + " is incomplete");
  if (ToHex(Sha256(doc["body"].dump())) != doc["sha256"].get<std::string>())
    return DataLossError(what + " fails its checksum (corrupt)");
  return std::move(doc["body"]);
}

// ---- descriptor ----
std::string EncodeDescriptor(const RepoDescriptor& d) {
  json b;
  b["id"] = d.id;
  b["block_size"] = d.block_size;
  b["pack_size"] = d.pack_size;
  b["hash"] = "sha256";
  b["compression"] = "lz4";
  b["created_at"] = d.created_at;
  if (!d.fingerprint_key.empty()) b["fingerprint_key"] = d.fingerprint_key;
  return Envelope("vmbackup-repository", b);
}

StatusOr<RepoDescriptor> DecodeDescriptor(std::string_view bytes) {
  VMB_ASSIGN_OR_RETURN(json b, OpenEnvelope(bytes, "vmbackup-repository", "repository descriptor"));
  RepoDescriptor d;
  try {
    d.id = b.at("id").get<std::string>();
    d.block_size = b.at("block_size").get<uint32_t>();
    d.pack_size = b.at("pack_size").get<uint32_t>();
    d.created_at = b.value("created_at", "");
    d.fingerprint_key = b.value("fingerprint_key", "");
    if (b.at("hash") != "sha256" || b.at("compression") != "lz4")
      return FailedPreconditionError("repository uses an unsupported hash or compression");
  } catch (const json::exception& e) {
    return DataLossError(std::string("repository descriptor: ") + e.what());
  }
  if (d.block_size < kMinBlockSize || d.block_size > kMaxBlockSize ||
      (d.block_size & (d.block_size - 1)) != 0)
    return DataLossError("repository descriptor has an invalid block size");
  if (!d.fingerprint_key.empty() &&
      (d.fingerprint_key.size() != 32 ||
       d.fingerprint_key.find_first_not_of("0123456789abcdef") != std::string::npos))
    return DataLossError("repository descriptor has an invalid fingerprint key");
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

void PackBuilder::Reset() {
  // Room for a full pack, its last block's LZ4 bound and the trailer without reallocating.
  const size_t capacity = target_size_ + target_size_ / 8;
  if (pool_ != nullptr) {
    data_ = pool_->Take(capacity);
  } else {
    data_ = std::string();
    data_.reserve(capacity);
  }
  data_.append(kPackMagic);
  entries_.clear();
  raw_bytes_ = 0;
}

const PackEntry& PackBuilder::Add(const Digest& digest, const char* raw, size_t raw_len) {
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
  uint32_t count = GetU32(b.data() + 12);
  if (b.size() != header + count * kPackEntrySize + 32)
    return DataLossError(what + " has the wrong size for its entry count");
  std::string id(b.substr(16, 32));
  id.resize(id.find('\0') == std::string::npos ? id.size() : id.find('\0'));
  if (id != pack_id) return DataLossError(what + " belongs to another pack (" + id + ")");
  std::vector<PackEntry> out(count);
  const char* p = b.data() + header;
  for (uint32_t i = 0; i < count; ++i, p += kPackEntrySize) {
    std::memcpy(out[i].digest.data(), p, 32);
    out[i].offset = GetU64(p + 32);
    out[i].stored_len = GetU32(p + 40);
    out[i].raw_len = GetU32(p + 44);
    uint8_t c = static_cast<uint8_t>(p[48]);
    if (c > 1) return DataLossError(what + " has an unknown codec");
    out[i].codec = static_cast<Codec>(c);
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
static constexpr std::string_view kFingerprintsMagic = "VMBVFP01";
static constexpr size_t kFingerprintsHeader = 8 + 4 + 4 + 8 + 8;
static constexpr size_t kFingerprintEntrySize = 8 + 16;

const Fingerprint* VolumeFingerprints::Find(uint64_t block) const {
  auto it =
      std::lower_bound(entries.begin(), entries.end(), block,
                       [](const BlockFingerprintEntry& e, uint64_t b) { return e.block < b; });
  return it != entries.end() && it->block == block ? &it->fp : nullptr;
}

std::string EncodeFingerprints(const VolumeFingerprints& f) {
  std::string s;
  s.reserve(kFingerprintsHeader + f.entries.size() * kFingerprintEntrySize + 32);
  s.append(kFingerprintsMagic);
  PutU32(&s, 1);
  PutU32(&s, f.block_size);
  PutU64(&s, f.volume_size);
  PutU64(&s, f.entries.size());
  for (const auto& e : f.entries) {
    PutU64(&s, e.block);
    s.append(reinterpret_cast<const char*>(e.fp.data()), e.fp.size());
  }
  Digest sum = Sha256(s);
  s.append(reinterpret_cast<const char*>(sum.data()), 32);
  return s;
}

StatusOr<VolumeFingerprints> DecodeFingerprints(std::string_view b, const std::string& what) {
  if (b.size() < kFingerprintsHeader + 32 || b.substr(0, 8) != kFingerprintsMagic)
    return DataLossError(what + " is not a fingerprint object (bad magic or truncated)");
  if (!ChecksumOk(b)) return DataLossError(what + " fails its checksum (corrupt)");
  VolumeFingerprints f;
  f.block_size = GetU32(b.data() + 12);
  f.volume_size = GetU64(b.data() + 16);
  const uint64_t count = GetU64(b.data() + 24);
  if (count != (b.size() - kFingerprintsHeader - 32) / kFingerprintEntrySize ||
      kFingerprintsHeader + count * kFingerprintEntrySize + 32 != b.size())
    return DataLossError(what + " has the wrong size for its entry count");
  f.entries.resize(count);
  const char* p = b.data() + kFingerprintsHeader;
  for (uint64_t i = 0; i < count; ++i, p += kFingerprintEntrySize) {
    f.entries[i].block = GetU64(p);
    std::memcpy(f.entries[i].fp.data(), p + 8, 16);
    if (i > 0 && f.entries[i].block <= f.entries[i - 1].block)
      return DataLossError(what + " is not sorted by block");
  }
  return f;
}

// ---- volume index ----
static constexpr std::string_view kVolumeIndexMagic = "VMBVIDX1";

std::string EncodeVolumeIndex(const VolumeIndex& v) {
  std::string s;
  s.reserve(40 + v.kinds.size() * 33 + 32);
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
  const size_t header = 8 + 4 + 4 + 8 + 8;
  if (b.size() < header + 32 || b.substr(0, 8) != kVolumeIndexMagic)
    return DataLossError(what + " is not a volume index (bad magic or truncated)");
  if (!ChecksumOk(b)) return DataLossError(what + " fails its checksum (corrupt)");
  VolumeIndex v;
  v.block_size = GetU32(b.data() + 12);
  v.volume_size = GetU64(b.data() + 16);
  uint64_t count = GetU64(b.data() + 24);
  if (v.block_size == 0 || count != (v.volume_size + v.block_size - 1) / v.block_size ||
      b.size() != header + count * 33 + 32)
    return DataLossError(what + " has inconsistent sizes");
  v.kinds.resize(count);
  v.digests.resize(count);
  const char* p = b.data() + header;
  for (uint64_t i = 0; i < count; ++i, p += 33) {
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
  }
  b["volumes"] = vols;
  return Envelope("vmbackup-record", b);
}

StatusOr<BackupInfo> DecodeRecord(std::string_view bytes, const std::string& what) {
  VMB_ASSIGN_OR_RETURN(json b, OpenEnvelope(bytes, "vmbackup-record", what));
  BackupInfo r;
  try {
    r.name = b.at("name").get<std::string>();
    r.vm_name = b.at("vm_name").get<std::string>();
    r.vm_namespace = b.at("vm_namespace").get<std::string>();
    r.created_at = b.at("created_at").get<std::string>();
    r.completed_at = b.at("completed_at").get<std::string>();
    r.parent = b.at("parent").get<std::string>();
    r.state = b.at("state").get<std::string>();
    r.vm_metadata_json = b.at("vm_metadata").dump();
    r.bytes_total = b.at("bytes_total").get<uint64_t>();
    r.bytes_new = b.at("bytes_new").get<uint64_t>();
    r.bytes_reused = b.at("bytes_reused").get<uint64_t>();
    r.bytes_stored = b.at("bytes_stored").get<uint64_t>();
    r.seconds = b.at("seconds").get<double>();
    for (const auto& v : b.at("volumes")) {
      VolumeBackupInfo vi;
      vi.name = v.at("name").get<std::string>();
      vi.size = v.at("size").get<uint64_t>();
      vi.block_size = v.at("block_size").get<uint32_t>();
      vi.data_blocks = v.at("data_blocks").get<uint64_t>();
      vi.zero_blocks = v.at("zero_blocks").get<uint64_t>();
      vi.hole_blocks = v.at("hole_blocks").get<uint64_t>();
      vi.bytes_new = v.at("bytes_new").get<uint64_t>();
      vi.bytes_reused = v.at("bytes_reused").get<uint64_t>();
      vi.bytes_stored = v.at("bytes_stored").get<uint64_t>();
      vi.index_key = v.at("index_key").get<std::string>();
      vi.index_sha256 = v.at("index_sha256").get<std::string>();
      vi.fingerprints_key = v.value("fingerprints_key", "");
      vi.fingerprints_sha256 = v.value("fingerprints_sha256", "");
      r.volumes.push_back(std::move(vi));
    }
  } catch (const json::exception& e) {
    return DataLossError(what + " is incomplete: " + e.what());
  }
  return r;
}

}  // namespace vmbackup::internal
