// fuzz_seeds OUT_DIR: writes the seed corpus of every binary and envelope fuzz target to
// OUT_DIR/<name>/ with the real encoders (so the seeds follow the format), and checks that each
// seed decodes. Exit status 1 when a seed does not decode or a file cannot be written.
// Run by scripts/fuzz.sh before fuzzing; the JSON-text targets' seeds are committed in
// tests/fuzz/corpus/<name>/ instead.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "repo/format.h"
#include "store/encrypted_store.h"

namespace vmbackup::fuzz {
namespace {

namespace fs = std::filesystem;
using internal::Digest;

int failures = 0;

void Fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_seeds: %s\n", what.c_str());
  ++failures;
}

void Write(const fs::path& dir, const std::string& name, const std::string& bytes,
           const Status& decoded) {
  if (!decoded.ok()) Fail(name + " does not decode: " + decoded.ToString());
  std::error_code ec;
  fs::create_directories(dir, ec);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) Fail("cannot write " + (dir / name).string());
}

template <typename T>
Status StatusOf(const StatusOr<T>& s) {
  return s.ok() ? Status::Ok() : s.status();
}

// `n` bytes of a deterministic pattern: text-like (compresses) or scrambled (does not).
std::string Block(size_t n, uint32_t seed, bool compressible) {
  std::string b(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1103515245u + 12345u;
    b[i] = compressible ? static_cast<char>('a' + (i / 64 + seed) % 4) : static_cast<char>(x >> 24);
  }
  return b;
}

// A small pack of `blocks` blocks, sealed, with its index re-encoded under kPackId so the targets
// can check the pack id. Returns the pack object; *entries receives its entries.
std::string SmallPack(int blocks, std::vector<internal::PackEntry>* entries) {
  internal::PackBuilder builder(64 * 1024);
  for (int i = 0; i < blocks; ++i) {
    const std::string raw = Block(2048 + 512 * static_cast<size_t>(i), static_cast<uint32_t>(i),
                                  /*compressible=*/i % 2 == 0);
    builder.Add(internal::Sha256(raw), raw.data(), raw.size());
  }
  StatusOr<internal::PackBuilder::Sealed> sealed = builder.Seal();
  if (!sealed.ok()) {
    Fail("PackBuilder::Seal: " + sealed.status().ToString());
    return "";
  }
  *entries = sealed->entries;
  // The sealed pack is <magic><blocks><index copy><u64 index offset><end magic>.
  const size_t tail = 8 + internal::kPackTrailerMagic.size();
  const uint64_t index_offset = internal::GetU64(sealed->data.data() + sealed->data.size() - tail);
  std::string pack = sealed->data.substr(0, index_offset);
  pack.append(internal::EncodePackIndex(kPackId, *entries));
  internal::PutU64(&pack, index_offset);
  pack.append(internal::kPackTrailerMagic);
  return pack;
}

void Descriptors(const fs::path& dir) {
  internal::RepoDescriptor d;
  d.id = "5f0c4b6e2d8a41f3a9e07c1d2b3a4f56";
  d.created_at = "2026-11-27T10:00:00.000Z";
  std::string s = internal::EncodeDescriptor(d);
  Write(dir, "plain.json", s, StatusOf(internal::DecodeDescriptor(s)));
  d.block_size = internal::kMinBlockSize;
  d.pack_size = 1024 * 1024;
  d.fingerprint_key = "00112233445566778899aabbccddeeff";
  s = internal::EncodeDescriptor(d);
  Write(dir, "fingerprint-key.json", s, StatusOf(internal::DecodeDescriptor(s)));
}

// Sealed objects (a leading mode byte 0 and two range bytes, see fuzz_sealed.cc) and key slots
// (mode byte 1).
void SealedObjects(const fs::path& dir) {
  internal::ObjectKeys keys;
  keys.data_key.fill(0x42);
  keys.key_id = {1, 2, 3, 4, 5, 6, 7, 8};
  for (size_t n : {size_t{0}, size_t{100}, internal::kSealedSegment + 7}) {
    auto sealed = internal::SealObject(keys, "packs/x", std::string(n, 'a'));
    if (!sealed.ok()) Fail("seal: " + sealed.status().ToString());
    std::string in("\0\x03\x10", 3);
    in += *sealed;
    Write(dir, "sealed-" + std::to_string(n), in, Status::Ok());
  }
  internal::KeySlot slot;
  slot.id = "0123456789abcdef";
  slot.kind = "raw";
  slot.salt.assign(32, 's');
  slot.wrapped.assign(60, 'w');
  slot.key_id = "0102030405060708";
  slot.created_at = "2026-12-02T10:00:00.000Z";
  slot.host = "h";
  std::string in("\x01\0\0", 3);
  Write(dir, "slot-raw.json", in + internal::EncodeKeySlot(slot), Status::Ok());
  slot.kind = "passphrase";
  slot.scrypt_n = 1024;
  slot.scrypt_r = 8;
  slot.scrypt_p = 1;
  Write(dir, "slot-passphrase.json", in + internal::EncodeKeySlot(slot), Status::Ok());
}

void Records(const fs::path& dir) {
  BackupInfo r;
  r.name = "b1";
  r.vm_name = "vm1";
  r.vm_namespace = "default";
  r.created_at = "2026-11-27T10:00:00.000Z";
  r.completed_at = "2026-11-27T10:01:30.500Z";
  r.vm_metadata_json = R"({"name":"vm1","namespace":"default","volumes":[{"name":"disk0"}]})";
  r.bytes_total = 3 * 1024 * 1024;
  r.bytes_new = 1024 * 1024;
  r.bytes_reused = 512 * 1024;
  r.bytes_stored = 700000;
  r.seconds = 90.5;
  VolumeBackupInfo v;
  v.name = "disk0";
  v.size = 3 * 1024 * 1024;
  v.block_size = internal::kDefaultBlockSize;
  v.data_blocks = 6;
  v.zero_blocks = 4;
  v.hole_blocks = 2;
  v.bytes_new = 1024 * 1024;
  v.bytes_reused = 512 * 1024;
  v.bytes_stored = 700000;
  v.index_key = internal::VolumeIndexKey("b1", "disk0.0a1b2c3d");
  v.index_sha256 = internal::ToHex(internal::Sha256("index"));
  v.fingerprints_key = internal::FingerprintsKey("b1", "disk0.0a1b2c3d");
  v.fingerprints_sha256 = internal::ToHex(internal::Sha256("fingerprints"));
  r.volumes.push_back(v);
  std::string s = internal::EncodeRecord(r);
  Write(dir, "one-volume.json", s, StatusOf(internal::DecodeRecord(s, "seed")));
  r.name = "b2";
  r.parent = "b1";
  r.state = "Ready";
  r.vm_metadata_json = "";
  r.volumes[0].index_key = internal::VolumeIndexKey("b2", "disk0.1a2b3c4d");
  r.volumes[0].fingerprints_key = internal::FingerprintsKey("b2", "disk0.1a2b3c4d");
  v.name = "data";
  v.size = 65536 + 17;
  v.data_blocks = 1;
  v.zero_blocks = 0;
  v.hole_blocks = 0;
  v.index_key = internal::VolumeIndexKey("b2", "data.2b3c4d5e");
  v.fingerprints_key.clear();
  v.fingerprints_sha256.clear();
  r.volumes.push_back(v);
  s = internal::EncodeRecord(r);
  Write(dir, "incremental-two-volumes.json", s, StatusOf(internal::DecodeRecord(s, "seed")));
}

void PackIndexes(const fs::path& index_dir, const fs::path& trailer_dir) {
  std::string s = internal::EncodePackIndex(kPackId, {});
  Write(index_dir, "empty.idx", s, StatusOf(internal::DecodePackIndex(s, kPackId, "seed")));
  std::vector<internal::PackEntry> entries;
  const std::string pack = SmallPack(4, &entries);
  s = internal::EncodePackIndex(kPackId, entries);
  Write(index_dir, "four-blocks.idx", s, StatusOf(internal::DecodePackIndex(s, kPackId, "seed")));
  Write(trailer_dir, "four-blocks.pack", pack,
        StatusOf(internal::DecodePackTrailer(pack, kPackId, "seed")));
  const std::string one = SmallPack(1, &entries);
  Write(trailer_dir, "one-block.pack", one,
        StatusOf(internal::DecodePackTrailer(one, kPackId, "seed")));
}

void VolumeIndexes(const fs::path& dir) {
  internal::VolumeIndex v;
  v.block_size = internal::kMinBlockSize;
  std::string s = internal::EncodeVolumeIndex(v);
  Write(dir, "empty.vidx", s, StatusOf(internal::DecodeVolumeIndex(s, "seed")));
  v.volume_size = 5 * uint64_t{internal::kMinBlockSize} + 4096;  // a partial last block
  const internal::BlockKind kinds[] = {internal::BlockKind::kData, internal::BlockKind::kZero,
                                       internal::BlockKind::kHole, internal::BlockKind::kData,
                                       internal::BlockKind::kData, internal::BlockKind::kHole};
  for (int i = 0; i < 6; ++i) {
    v.kinds.push_back(kinds[i]);
    v.digests.push_back(kinds[i] == internal::BlockKind::kData
                            ? internal::Sha256(Block(64, static_cast<uint32_t>(i), false))
                            : Digest{});
  }
  s = internal::EncodeVolumeIndex(v);
  Write(dir, "six-blocks.vidx", s, StatusOf(internal::DecodeVolumeIndex(s, "seed")));
}

void Fingerprints(const fs::path& dir) {
  // The fuzz target's test key (fuzz_fingerprints.cc), so seeds authenticate.
  constexpr std::array<uint8_t, 32> kAuth = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
                                             12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                                             23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
  internal::VolumeFingerprints f;
  f.block_size = internal::kDefaultBlockSize;
  f.key_id.fill(7);
  f.salt.fill(9);
  std::string s = internal::EncodeFingerprints(f, kAuth);
  Write(dir, "empty.vfp", s, StatusOf(internal::DecodeFingerprints(s, "seed")));
  f.volume_size = 10 * uint64_t{internal::kDefaultBlockSize};
  const internal::FingerprintKey key{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
  for (uint64_t block : {0, 1, 4, 9}) {
    const std::string raw = Block(4096, static_cast<uint32_t>(block), false);
    f.entries.push_back({block, internal::BlockFingerprint(key, raw.data(), raw.size())});
  }
  s = internal::EncodeFingerprints(f, kAuth);
  Write(dir, "four-blocks.vfp", s, StatusOf(internal::DecodeFingerprints(s, "seed")));
}

// Binary reproducers of fixed bugs, generated here rather than committed as binary files (see
// tests/fuzz/regressions/README.md). Each must fail to decode with kDataLoss.
void GeneratedRegressions(const fs::path& dir) {
  auto write_failing = [&](const fs::path& sub, const std::string& name, std::string bytes) {
    internal::Digest sum = internal::Sha256(bytes);
    bytes.append(reinterpret_cast<const char*>(sum.data()), sum.size());
    Status st = StatusOf(internal::DecodeVolumeIndex(bytes, "regression"));
    if (st.code() != StatusCode::kDataLoss) Fail(name + " decodes: " + st.ToString());
    Write(sub, name, bytes, Status::Ok());
  };
  // Block size 1, volume size = count = 33^-1 mod 2^64: header + count * 33 + 32 wraps to the
  // object's 65 bytes, and a decoder that believed it resized its vectors to ~1 EiB.
  uint64_t inv33 = 1;
  for (int i = 0; i < 6; ++i) inv33 *= 2 - 33 * inv33;
  std::string wraps = "VMBVIDX1";
  internal::PutU32(&wraps, 1);
  internal::PutU32(&wraps, 1);
  internal::PutU64(&wraps, inv33);
  internal::PutU64(&wraps, inv33);
  wraps.push_back('\0');
  write_failing(dir / "volume_index", "entry-count-times-33-wraps.vidx", wraps);
  // Volume size 2^64-1: (size + block_size - 1) wraps, so the volume "has" 0 blocks.
  std::string rounding = "VMBVIDX1";
  internal::PutU32(&rounding, 1);
  internal::PutU32(&rounding, internal::kMinBlockSize);
  internal::PutU64(&rounding, ~uint64_t{0});
  internal::PutU64(&rounding, 0);
  write_failing(dir / "volume_index", "block-count-rounding-wraps.vidx", rounding);
}

}  // namespace
}  // namespace vmbackup::fuzz

int main(int argc, char** argv) {
  using namespace vmbackup::fuzz;
  if (argc != 2 && argc != 3) {
    std::fprintf(stderr, "usage: fuzz_seeds OUT_DIR [REGRESSION_DIR]\n");
    return 2;
  }
  const fs::path out = argv[1];
  if (argc == 3) GeneratedRegressions(argv[2]);
  Descriptors(out / "descriptor");
  Records(out / "record");
  PackIndexes(out / "pack_index", out / "pack_trailer");
  VolumeIndexes(out / "volume_index");
  Fingerprints(out / "fingerprints");
  SealedObjects(out / "sealed");
  if (failures != 0) return 1;
  std::printf("fuzz_seeds: seeds written to %s\n", out.c_str());
  return 0;
}
