// The backup's block processor on a hand-made plan: what each block becomes, what is stored once,
// the counters, digests taken from the fingerprint reference, and a copy the packs lost
// (src/engine/block_processor.h).
#include "engine/block_processor.h"

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

using ::vmbackup::testing::TempDir;
using ::vmbackup::testing::WriteAll;

constexpr uint32_t kBs = 64 * 1024;

std::string Block(char c) {
  std::string s(kBs, c);
  for (size_t i = 0; i < s.size(); i += 89) s[i] = static_cast<char>(i * 13 + c);
  return s;
}

Digest DigestOf(const std::string& s) { return Sha256(s.data(), s.size()); }

// An index of one pack ("0123") that holds the block `d`, stored uncompressed.
RepoIndex IndexHolding(const Digest& d) {
  PackEntry held;
  held.digest = d;
  held.raw_len = kBs;
  held.stored_len = kBs;
  RepoIndex index;
  index.AddPack("0123", {held});
  return index;
}

class BlockProcessorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RuntimeOptions ro;
    ro.worker_threads = 2;
    rt_ = Runtime::Create(ro);
    store_ = std::make_unique<MemStore>(rt_);
    run_ = std::make_unique<JobRunner>(
        rt_, [] { return Status::Ok(); }, nullptr, 0);
    pool_ = std::make_shared<BufferPool>(4);
    uploader_ = std::make_unique<PackUploader>(
        *store_, 64 << 20, [](uint64_t) {}, pool_);
  }
  void TearDown() override {
    uploader_.reset();
    store_.reset();
  }

  // A plan over a volume file holding `blocks` (one per block; the last may be short).
  VolumePlan Plan(const std::vector<std::string>& blocks, std::vector<BlockPlan> plan) {
    std::string data;
    for (const auto& b : blocks) data += b;
    const std::string path = dir_.Sub("vol.img");
    WriteAll(path, data);
    SnapshotOptions so;
    so.mode = SnapshotOptions::Mode::kDirect;
    auto snapper = VolumeSnapshotter::Open(path, so);
    EXPECT_OK(snapper);
    auto snap = (*snapper)->Snapshot();
    EXPECT_OK(snap);
    VolumePlan v;
    v.name = "disk";
    v.view = MakeFileView(std::move(*snap));
    v.size = data.size();
    v.block_size = kBs;
    v.blocks = std::move(plan);
    return v;
  }
  BlockProcessor Processor(const RepoIndex& index, const FingerprintKeys* fkeys = nullptr) {
    return BlockProcessor(*rt_, 2, *run_, index, fkeys, *uploader_, pool_.get(), 1 << 20, "p");
  }

  TempDir dir_;
  std::shared_ptr<Runtime> rt_;
  std::unique_ptr<MemStore> store_;
  std::unique_ptr<JobRunner> run_;
  std::shared_ptr<BufferPool> pool_;
  std::unique_ptr<PackUploader> uploader_;
};

TEST_F(BlockProcessorTest, EachBlockBecomesWhatItsPlanSaysAndNewDataIsStoredOnce) {
  const std::string a = Block('a'), b = Block('b'), zeros(kBs, '\0');
  // Parent: block 5 is data the packs hold, block 6 a zero block.
  const std::string old = Block('o');
  const Digest held = DigestOf(old);
  const RepoIndex index = IndexHolding(held);
  auto parent = std::make_shared<VolumeIndex>();
  parent->volume_size = 7 * kBs;
  parent->block_size = kBs;
  parent->kinds.assign(7, BlockKind::kHole);
  parent->digests.assign(7, Digest{});
  parent->kinds[5] = BlockKind::kData;
  parent->digests[5] = held;
  parent->kinds[6] = BlockKind::kZero;

  const BlockPlan R = BlockPlan::kRead, H = BlockPlan::kHole, C = BlockPlan::kCopy;
  VolumePlan v = Plan({a, zeros, a, a, b, a, a}, {R, R, H, R, R, C, C});
  v.parent = parent;
  BlockProcessor p = Processor(index);
  VolumeOutcome out;
  ASSERT_OK(p.Process(v, &out));
  p.FlushPartialPacks();
  ASSERT_OK(uploader_->Drain());
  ASSERT_OK(p.error());

  EXPECT_EQ(out.index.volume_size, 7u * kBs);
  EXPECT_EQ(out.index.block_size, kBs);
  EXPECT_EQ(out.index.kinds,
            (std::vector<BlockKind>{BlockKind::kData, BlockKind::kZero, BlockKind::kHole,
                                    BlockKind::kData, BlockKind::kData, BlockKind::kData,
                                    BlockKind::kZero}));
  EXPECT_EQ(out.index.digests[0], DigestOf(a));
  EXPECT_EQ(out.index.digests[3], DigestOf(a));
  EXPECT_EQ(out.index.digests[4], DigestOf(b));
  EXPECT_EQ(out.index.digests[5], held);  // copied, never read
  EXPECT_EQ(out.data_blocks, 4u);
  EXPECT_EQ(out.zero_blocks, 2u);
  EXPECT_EQ(out.hole_blocks, 1u);
  EXPECT_EQ(out.bytes_new, 2u * kBs);     // a and b, once each
  EXPECT_EQ(out.bytes_reused, 2u * kBs);  // a again, and the copy
  EXPECT_GT(out.bytes_stored, 0u);
  EXPECT_TRUE(out.fps.empty());  // no keys, no fingerprints
  EXPECT_EQ(uploader_->packs(), 1u);
  const ProgressCounters& pc = run_->counters();
  EXPECT_EQ(pc.blocks_done.load(), 7u);
  EXPECT_EQ(pc.bytes_scanned.load(), 7u * kBs);
  EXPECT_EQ(pc.bytes_read.load(), 4u * kBs);
  EXPECT_EQ(pc.bytes_new.load(), 2u * kBs);
}

TEST_F(BlockProcessorTest, AnUnchangedFingerprintTakesTheReferencesDigest) {
  const std::string a = Block('a'), b = Block('b');
  const FingerprintKeys keys{};
  // The reference says block 0 holds a block the packs have, under a digest that is not a's: the
  // processor takes it without hashing, because the fingerprint matches. Block 1's fingerprint
  // does not match: hashed.
  const Digest stand_in = DigestOf(Block('s'));
  const RepoIndex index = IndexHolding(stand_in);
  auto ref = std::make_shared<VolumeIndex>();
  ref->volume_size = 2 * kBs;
  ref->block_size = kBs;
  ref->kinds.assign(2, BlockKind::kData);
  ref->digests = {stand_in, stand_in};

  VolumePlan v = Plan({a, b}, {BlockPlan::kRead, BlockPlan::kRead});
  v.ref = ref;
  v.ref_fps.entries = {{0, BlockFingerprint(keys.gmac, a.data(), a.size())},
                       {1, BlockFingerprint(keys.gmac, a.data(), a.size())}};
  BlockProcessor p = Processor(index, &keys);
  VolumeOutcome out;
  ASSERT_OK(p.Process(v, &out));
  EXPECT_EQ(out.index.digests[0], stand_in);
  EXPECT_EQ(out.index.digests[1], DigestOf(b));
  EXPECT_EQ(out.bytes_reused, kBs);
  EXPECT_EQ(out.bytes_new, kBs);
  ASSERT_EQ(out.fps.size(), 2u);  // every data block read gets its fingerprint recorded
  p.FlushPartialPacks();
  ASSERT_OK(uploader_->Drain());
}

TEST_F(BlockProcessorTest, ACopyOfABlockNoPackHoldsIsDataLoss) {
  RepoIndex index;  // empty: the parent's block is gone
  auto parent = std::make_shared<VolumeIndex>();
  parent->volume_size = kBs;
  parent->block_size = kBs;
  parent->kinds = {BlockKind::kData};
  parent->digests = {DigestOf(Block('x'))};
  VolumePlan v = Plan({Block('x')}, {BlockPlan::kCopy});
  v.parent = parent;
  BlockProcessor p = Processor(index);
  VolumeOutcome out;
  EXPECT_THAT(p.Process(v, &out),
              StatusIs(StatusCode::kDataLoss,
                       "block at offset 0 of volume 'disk' in parent backup 'p' is not in any pack "
                       "index"));
  EXPECT_THAT(p.error(), StatusIs(StatusCode::kDataLoss, "parent backup 'p'"));
}

TEST_F(BlockProcessorTest, ACancelledJobStopsWithoutErrorAndFlushesNothing) {
  RepoIndex index;
  VolumePlan v = Plan({Block('a'), Block('b')}, {BlockPlan::kRead, BlockPlan::kRead});
  run_->Cancel();
  BlockProcessor p = Processor(index);
  VolumeOutcome out;
  ASSERT_OK(p.Process(v, &out));
  p.FlushPartialPacks();
  ASSERT_OK(uploader_->Drain());
  EXPECT_EQ(run_->counters().blocks_done.load(), 0u);
  EXPECT_EQ(uploader_->packs(), 0u);
}

}  // namespace
}  // namespace vmbackup::internal
