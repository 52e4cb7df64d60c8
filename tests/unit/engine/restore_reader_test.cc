// The restore's reader: locating blocks, the ranged reads, fetch errors, decoding and verifying
// (src/engine/restore_reader.h).
#include "engine/restore_reader.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "core/util.h"
#include "store/mem_store.h"
#include "support/test_util.h"
#include "vmbackup/runtime.h"

namespace vmbackup::internal {
namespace {

constexpr uint32_t kBs = 64 * 1024;

std::string Block(char c, size_t len = kBs) {
  std::string s(len, c);
  for (size_t i = 0; i < len; i += 97) s[i] = static_cast<char>(i * 31 + c);  // not all alike
  return s;
}

// A volume of `blocks` (one string per block; "" = a hole) whose data blocks are stored in one
// pack per entry of `packs` (each a list of block numbers, in the order they are added).
class RestoreReaderTest : public ::testing::Test {
 protected:
  void Build(const std::vector<std::string>& blocks, const std::vector<std::vector<size_t>>& packs,
             uint64_t size = 0) {
    vidx_.block_size = kBs;
    vidx_.volume_size = size ? size : blocks.size() * kBs;
    for (const auto& b : blocks) {
      vidx_.kinds.push_back(b.empty() ? BlockKind::kHole : BlockKind::kData);
      vidx_.digests.push_back(b.empty() ? Digest{} : Sha256(b.data(), b.size()));
    }
    for (const auto& pack : packs) {
      PackBuilder pb(1 << 30);
      for (size_t b : pack) pb.Add(vidx_.digests[b], blocks[b].data(), blocks[b].size());
      auto sealed = pb.Seal();
      ASSERT_TRUE(sealed.ok());
      index_.AddPack(sealed->id, sealed->entries);
      ASSERT_TRUE(store_->Put(PackKey(sealed->id), sealed->data, PutOptions{}).ok());
      pack_ids_.push_back(sealed->id);
    }
  }
  RestoreReader Reader() {
    return RestoreReader(*store_, index_, vidx_, vidx_.volume_size, "bk", "disk");
  }

  std::unique_ptr<MemStore> store_ = std::make_unique<MemStore>(Runtime::Default());
  RepoIndex index_;
  VolumeIndex vidx_;
  std::vector<std::string> pack_ids_;
};

TEST_F(RestoreReaderTest, PlansOneReadPerPackInPackOrderAndRestoresEveryBlock) {
  // Blocks 0..4; 1 is a hole; block 4 holds the same bytes as block 0 (stored once). Pack 0 holds
  // 3 then 0, pack 1 holds 2.
  const std::vector<std::string> blocks = {Block('a'), "", Block('c'), Block('d'), Block('a')};
  Build(blocks, {{3, 0}, {2}});
  RestoreReader r = Reader();
  ASSERT_OK(r.Plan());
  ASSERT_EQ(r.unit_count(), 2u);
  // Pack 0 in pack order: block 3 (offset first), then blocks 0 and 4 (same bytes).
  const ReadUnit& u0 = r.unit(0);
  ASSERT_EQ(u0.last - u0.first, 3u);
  EXPECT_EQ(r.piece(u0.first).block, 3u);
  EXPECT_EQ(r.piece(u0.first + 1).block, 0u);
  EXPECT_EQ(r.piece(u0.first + 2).block, 4u);
  EXPECT_EQ(r.UnitKey(0), PackKey(pack_ids_[0]));
  EXPECT_EQ(r.UnitKey(1), PackKey(pack_ids_[1]));

  std::string buf;
  std::vector<char> raw(kBs);
  for (size_t ui = 0; ui < r.unit_count(); ++ui) {
    ASSERT_OK(r.Fetch(ui, &buf));
    EXPECT_EQ(buf.size(), r.unit(ui).end - r.unit(ui).begin);
    for (size_t i = r.unit(ui).first; i < r.unit(ui).last; ++i) {
      ASSERT_OK(r.Decode(ui, i, buf, raw.data()));
      const uint64_t b = r.piece(i).block;
      EXPECT_EQ(std::string(raw.data(), r.block_length(b)), blocks[b]) << "block " << b;
    }
  }
}

TEST_F(RestoreReaderTest, SmallUnitsSplitReads) {
  Build({Block('a'), Block('b'), Block('c')}, {{0, 1, 2}});
  RestoreReader r = Reader();
  // A unit smaller than any stored block: one read per block.
  ASSERT_OK(r.Plan(0, 1));
  EXPECT_EQ(r.unit_count(), 3u);
}

TEST_F(RestoreReaderTest, ThePartialLastBlockHasItsOwnLength) {
  const std::vector<std::string> blocks = {Block('a'), Block('b', 100)};
  Build(blocks, {{0, 1}}, kBs + 100);
  RestoreReader r = Reader();
  EXPECT_EQ(r.block_length(0), kBs);
  EXPECT_EQ(r.block_length(1), 100u);
  ASSERT_OK(r.Plan());
  std::string buf;
  std::vector<char> raw(kBs);
  ASSERT_OK(r.Fetch(0, &buf));
  ASSERT_OK(r.Decode(0, 1, buf, raw.data()));
  EXPECT_EQ(std::string(raw.data(), 100), blocks[1]);
}

TEST_F(RestoreReaderTest, ABlockInNoPackIndexIsDataLossNamingTheDamagedIndex) {
  Build({Block('a'), Block('b')}, {{0}});
  {
    RestoreReader r = Reader();
    EXPECT_THAT(r.Plan(), StatusIs(StatusCode::kDataLoss,
                                   "backup 'bk', volume 'disk', offset 65536: block " +
                                       ToHex(vidx_.digests[1]) + " is in no pack index"));
  }
  index_.AddDamaged("index/xyz.idx");
  RestoreReader r = Reader();
  EXPECT_THAT(r.Plan(), StatusIs(StatusCode::kDataLoss, "(damaged: index/xyz.idx)"));
}

TEST_F(RestoreReaderTest, ALengthOtherThanThePackIndexSaysIsDataLoss) {
  // The record says the volume ends 10 bytes into block 1, the pack holds a whole block.
  Build({Block('a'), Block('b')}, {{0, 1}}, kBs + 10);
  RestoreReader r = Reader();
  EXPECT_THAT(r.Plan(), StatusIs(StatusCode::kDataLoss,
                                 "offset 65536: pack index gives the block a different length"));
}

TEST_F(RestoreReaderTest, ACorruptBlockIsDataLossNamingObjectAndOffset) {
  Build({Block('a'), Block('b')}, {{0, 1}});
  RestoreReader r = Reader();
  ASSERT_OK(r.Plan());
  std::string buf;
  ASSERT_OK(r.Fetch(0, &buf));
  const RestorePiece& p = r.piece(r.unit(0).first + 1);
  buf[p.offset - r.unit(0).begin + 5] ^= 1;
  std::vector<char> raw(kBs);
  EXPECT_OK(r.Decode(0, r.unit(0).first, buf, raw.data()));
  EXPECT_THAT(
      r.Decode(0, r.unit(0).first + 1, buf, raw.data()),
      StatusIs(StatusCode::kDataLoss,
               "backup 'bk', volume 'disk', offset " + std::to_string(p.block * kBs) + ", object " +
                   PackKey(pack_ids_[0]) + " at " + std::to_string(p.offset) + ": "));
}

TEST_F(RestoreReaderTest, AMissingOrShortPackIsDataLoss) {
  Build({Block('a')}, {{0}});
  RestoreReader r = Reader();
  ASSERT_OK(r.Plan());
  std::string buf;
  store_->Overwrite(PackKey(pack_ids_[0]), "short");
  EXPECT_THAT(r.Fetch(0, &buf), StatusIs(StatusCode::kDataLoss, "does not hold bytes"));
  ASSERT_OK(store_->Delete({PackKey(pack_ids_[0])}));
  EXPECT_THAT(r.Fetch(0, &buf),
              StatusIs(StatusCode::kDataLoss,
                       "offset 0: pack object " + PackKey(pack_ids_[0]) + " is missing"));
}

TEST(FetchErrorTest, DamageIsDataLossAndOtherErrorsKeepTheirCode) {
  EXPECT_THAT(FetchError(NotFoundError("gone"), "W", "packs/k", 0, 10),
              StatusIs(StatusCode::kDataLoss, "W: pack object packs/k is missing"));
  EXPECT_THAT(
      FetchError(OutOfRangeError("past the end"), "W", "packs/k", 5, 10),
      StatusIs(
          StatusCode::kDataLoss,
          "W: pack object packs/k does not hold bytes 5-10 that its pack index lists (past the "
          "end)"));
  EXPECT_THAT(FetchError(DataLossError("short"), "W", "packs/k", 5, 10),
              StatusIs(StatusCode::kDataLoss, "does not hold bytes 5-10"));
  const Status down = FetchError(UnavailableError("timeout"), "W", "packs/k", 0, 10);
  EXPECT_THAT(down, StatusIs(StatusCode::kUnavailable, "timeout"));
  EXPECT_THAT(down, StatusIs(StatusCode::kUnavailable, "W, object packs/k"));
}

}  // namespace
}  // namespace vmbackup::internal
