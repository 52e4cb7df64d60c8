// On-target format v1: round trips and corruption detection of every encoding.
#include "repo/format.h"

#include "core/buffer_pool.h"

#include <gtest/gtest.h>

#include <random>

#include "support/test_util.h"

namespace vmbackup::internal {
namespace {

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

TEST(BlockCodecTest, CompressibleBlockUsesLz4AndRoundTrips) {
  std::string raw(256 << 10, 'a');
  std::string stored;
  EXPECT_EQ(EncodeBlockAppend(raw.data(), raw.size(), &stored), Codec::kLz4);
  EXPECT_LT(stored.size(), raw.size() / 10);
  std::string back(raw.size(), '\0');
  ASSERT_OK(DecodeBlock(Codec::kLz4, stored.data(), stored.size(), back.data(), back.size()));
  EXPECT_EQ(back, raw);
}

TEST(BlockCodecTest, RandomBlockIsStoredRaw) {
  std::string raw = RandomBytes(64 << 10, 1);
  std::string stored = "prefix";
  EXPECT_EQ(EncodeBlockAppend(raw.data(), raw.size(), &stored), Codec::kNone);
  EXPECT_EQ(stored, "prefix" + raw);
}

TEST(BlockCodecTest, CorruptLz4IsDataLoss) {
  std::string raw(64 << 10, 'b');
  std::string stored;
  ASSERT_EQ(EncodeBlockAppend(raw.data(), raw.size(), &stored), Codec::kLz4);
  stored.resize(stored.size() / 2);
  std::string back(raw.size(), '\0');
  EXPECT_THAT(DecodeBlock(Codec::kLz4, stored.data(), stored.size(), back.data(), back.size()),
              StatusIs(StatusCode::kDataLoss, "decompress"));
}

TEST(PackTest, SealProducesPackWithTrailerAndMatchingIndex) {
  PackBuilder b(1 << 20);
  std::string b1 = RandomBytes(100000, 2), b2(70000, 'z');
  Digest d1 = Sha256(b1), d2 = Sha256(b2);
  b.Add(d1, b1.data(), b1.size());
  b.Add(d2, b2.data(), b2.size());
  auto sealed = *b.Seal();
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(sealed.id.size(), 32u);
  EXPECT_EQ(sealed.data.substr(0, 8), "VMBPACK1");
  EXPECT_EQ(sealed.data.substr(sealed.data.size() - 8), "VMBPEND1");
  uint64_t idx_off = GetU64(sealed.data.data() + sealed.data.size() - 16);
  EXPECT_EQ(sealed.data.substr(idx_off, sealed.data.size() - 16 - idx_off), sealed.index);
  auto entries = DecodePackIndex(sealed.index, sealed.id, "idx");
  ASSERT_OK(entries);
  ASSERT_EQ(entries->size(), 2u);
  for (const auto& e : *entries) {
    std::string raw(e.raw_len, '\0');
    ASSERT_OK(
        DecodeBlock(e.codec, sealed.data.data() + e.offset, e.stored_len, raw.data(), raw.size()));
    EXPECT_EQ(Sha256(raw), e.digest);
  }
}

// A builder takes a pool buffer only when its first block arrives and takes none for the pack
// after a seal until that pack gets a block: idle builders (jobs waiting for the workers, builders
// whose last pack is sealed) hold no memory, and an unsealed buffer goes back to the pool.
TEST(PackTest, BuilderTakesAPoolBufferOnlyForBlocks) {
  BufferPool pool(4);
  std::string block = RandomBytes(4096, 3);
  {
    PackBuilder b(1 << 20, &pool);
    EXPECT_EQ(pool.taken(), 0u);
    b.Add(Sha256(block), block.data(), block.size());
    EXPECT_EQ(pool.taken(), 1u);
    auto sealed = b.Seal();
    ASSERT_OK(sealed);
    EXPECT_EQ(pool.taken(), 1u);  // nothing taken for the next pack yet
    pool.Give(std::move(sealed->data));
    EXPECT_EQ(pool.kept(), 1u);
    b.Add(Sha256(block), block.data(), block.size());
    EXPECT_EQ(pool.taken(), 2u);
    EXPECT_EQ(pool.reused(), 1u);  // the sealed pack's buffer, warm
    EXPECT_EQ(pool.kept(), 0u);
  }
  EXPECT_EQ(pool.kept(), 1u);  // the unsealed pack's buffer came back
}

TEST(PackTest, EveryFlippedByteOfAnIndexIsDetected) {
  std::vector<PackEntry> entries(3);
  for (int i = 0; i < 3; ++i) entries[i].digest = Sha256(std::to_string(i));
  std::string idx = EncodePackIndex("00112233445566778899aabbccddeeff", entries);
  for (size_t pos = 0; pos < idx.size(); pos += 7) {
    std::string bad = idx;
    bad[pos] ^= 0x01;
    EXPECT_EQ(DecodePackIndex(bad, "00112233445566778899aabbccddeeff", "idx").status().code(),
              StatusCode::kDataLoss)
        << "flip at " << pos;
  }
  EXPECT_THAT(DecodePackIndex(idx, "ffff2233445566778899aabbccddeeff", "idx"),
              StatusIs(StatusCode::kDataLoss, "another pack"));
  EXPECT_THAT(DecodePackIndex(idx.substr(0, 40), "x", "pack index foo"),
              StatusIs(StatusCode::kDataLoss, "pack index foo"));
}

TEST(VolumeIndexTest, RoundTripAndCorruption) {
  VolumeIndex v;
  v.block_size = 65536;
  v.volume_size = 65536 * 3 + 100;
  v.kinds = {BlockKind::kData, BlockKind::kZero, BlockKind::kHole, BlockKind::kData};
  v.digests = {Sha256("a"), Digest{}, Digest{}, Sha256("b")};
  std::string bytes = EncodeVolumeIndex(v);
  auto back = DecodeVolumeIndex(bytes, "vidx");
  ASSERT_OK(back);
  EXPECT_EQ(back->kinds, v.kinds);
  EXPECT_EQ(back->digests, v.digests);
  EXPECT_EQ(back->volume_size, v.volume_size);
  bytes[50] ^= 4;
  EXPECT_THAT(DecodeVolumeIndex(bytes, "volume index X"),
              StatusIs(StatusCode::kDataLoss, "volume index X"));
}

TEST(RecordTest, RoundTripKeepsEveryField) {
  BackupInfo r;
  r.name = "b1";
  r.vm_name = "vm";
  r.vm_namespace = "ns";
  r.created_at = "2026-01-01T00:00:00Z";
  r.completed_at = "2026-01-01T00:01:00Z";
  r.parent = "b0";
  r.vm_metadata_json = R"({"cpu":2,"name":"vm"})";
  r.bytes_total = 10;
  r.bytes_new = 5;
  r.bytes_reused = 4;
  r.bytes_stored = 3;
  r.seconds = 1.5;
  VolumeBackupInfo v;
  v.name = "disk";
  v.size = 10;
  v.block_size = 65536;
  v.data_blocks = 1;
  v.index_key = "volumes/b1/disk.0123abcd.vidx";
  v.index_sha256 = std::string(64, 'a');
  r.volumes.push_back(v);
  auto back = DecodeRecord(EncodeRecord(r), "rec");
  ASSERT_OK(back);
  EXPECT_EQ(back->name, "b1");
  EXPECT_EQ(back->parent, "b0");
  EXPECT_EQ(back->vm_metadata_json, R"({"cpu":2,"name":"vm"})");
  EXPECT_EQ(back->bytes_stored, 3u);
  ASSERT_EQ(back->volumes.size(), 1u);
  EXPECT_EQ(back->volumes[0].index_key, v.index_key);
  EXPECT_EQ(back->volumes[0].data_blocks, 1u);
}

TEST(RecordTest, TamperedOrTruncatedRecordIsDataLoss) {
  BackupInfo r;
  r.name = "b1";
  r.bytes_total = 12345;
  std::string enc = EncodeRecord(r);
  std::string tampered = enc;
  tampered.replace(tampered.find("12345"), 5, "12346");
  EXPECT_THAT(DecodeRecord(tampered, "record b1"), StatusIs(StatusCode::kDataLoss, "checksum"));
  EXPECT_THAT(DecodeRecord(enc.substr(0, enc.size() / 2), "record b1"),
              StatusIs(StatusCode::kDataLoss, "not valid JSON"));
}

TEST(DescriptorTest, NewerVersionIsRefused) {
  RepoDescriptor d;
  d.id = "0123456789abcdef0123456789abcdef";
  std::string enc = EncodeDescriptor(d);
  ASSERT_OK(DecodeDescriptor(enc));
  std::string newer = enc;
  newer.replace(newer.find("\"version\": 1"), 12, "\"version\": 9");
  EXPECT_THAT(DecodeDescriptor(newer), StatusIs(StatusCode::kFailedPrecondition, "version 9"));
}

TEST(KeysTest, ParseBack) {
  EXPECT_EQ(PackIdFromIndexKey(PackIndexKey("abcd")), "abcd");
  EXPECT_EQ(PackIdFromIndexKey("index/a/b.idx"), "");
  EXPECT_EQ(BackupNameFromRecordKey(RecordKey("b-1")), "b-1");
  EXPECT_EQ(PackKey("abcdef"), "packs/ab/abcdef.pack");
}

}  // namespace
}  // namespace vmbackup::internal
