// Verify and repair on an in-memory repository (MemStore): backups are written by hand with the
// format's own encoders (PackBuilder, volume index, record), then damaged object by object.
// Covers the parallel pack-index loading of Repository::LoadIndex too.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "core/errors.h"
#include "core/util.h"
#include "engine/repair.h"
#include "engine/restore_reader.h"
#include "engine/verify.h"
#include "repo/repository.h"
#include "store/get_many.h"
#include "store/mem_store.h"
#include "support/test_util.h"

namespace vmbackup::internal {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

constexpr uint32_t kBlock = 64 << 10;
constexpr uint32_t kPack = 256 << 10;  // 4 blocks of random data per pack

// Incompressible, deterministic.
std::string RandomData(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(&s[i], &v, std::min<size_t>(8, n - i));
  }
  return s;
}

class VerifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto repo =
        Repository::Open(std::make_unique<MemStore>(Runtime::Default()), true, kBlock, kPack);
    ASSERT_OK(repo);
    repo_ = std::move(*repo);
    store_ = static_cast<MemStore*>(&repo_->store());
  }

  // Writes a backup of one volume "disk0" holding `data` (blocks of kBlock; an all-zero block is
  // a zero block), storing blocks not stored yet in new packs, exactly as a backup would.
  void AddBackup(const std::string& name, const std::string& data) {
    VolumeIndex vidx;
    vidx.volume_size = data.size();
    vidx.block_size = kBlock;
    PackBuilder builder(kPack);
    auto flush = [&] {
      if (builder.empty()) return;
      auto sealed = builder.Seal();
      ASSERT_OK(sealed);
      ASSERT_OK(store_->Put(PackKey(sealed->id), sealed->data, PutOptions{}));
      ASSERT_OK(store_->Put(PackIndexKey(sealed->id), sealed->index, PutOptions{}));
      for (const PackEntry& e : sealed->entries) where_[e.digest] = {sealed->id, e.offset};
    };
    for (uint64_t off = 0; off < data.size(); off += kBlock) {
      const size_t len = std::min<size_t>(kBlock, data.size() - off);
      const char* p = data.data() + off;
      if (IsAllZero(p, len)) {
        vidx.kinds.push_back(BlockKind::kZero);
        vidx.digests.push_back(Digest{});
        continue;
      }
      const Digest d = Sha256(p, len);
      vidx.kinds.push_back(BlockKind::kData);
      vidx.digests.push_back(d);
      if (where_.count(d) || pending_.count(d)) continue;
      pending_.insert(d);
      builder.Add(d, p, len);
      if (builder.full()) flush();
    }
    flush();
    pending_.clear();
    const std::string bytes = EncodeVolumeIndex(vidx);
    BackupInfo info;
    info.name = name;
    info.created_at = info.completed_at = "2026-12-02T00:00:0" + std::to_string(backups_++) + "Z";
    VolumeBackupInfo v;
    v.name = "disk0";
    v.size = data.size();
    v.block_size = kBlock;
    for (BlockKind k : vidx.kinds) (k == BlockKind::kData ? v.data_blocks : v.zero_blocks)++;
    v.index_key = VolumeIndexKey(name, "disk0.0123abcd");
    v.index_sha256 = ToHex(Sha256(bytes));
    info.volumes.push_back(v);
    info.bytes_total = data.size();
    ASSERT_OK(store_->Put(v.index_key, bytes, PutOptions{}));
    ASSERT_OK(store_->Put(RecordKey(name), EncodeRecord(info), PutOptions{}));
  }

  StatusOr<VerifyReport> Verify(bool read_data, VerifyOptions o = {}) {
    o.read_data = read_data;
    Verifier v(*repo_, *Runtime::Default(), o);
    return v.Run();
  }
  StatusOr<RepairReport> Repair(bool read_data, bool dry_run = false) {
    RepairOptions o;
    o.verify.read_data = read_data;
    o.dry_run = dry_run;
    return RepairRepository(*repo_, *Runtime::Default(), o);
  }
  // A fresh repository object over the same store (no cached block index).
  std::unique_ptr<Repository> Reopen() {
    // The store is owned by repo_; a second Repository needs its own: copy the objects.
    auto copy = std::make_unique<MemStore>(Runtime::Default());
    for (const auto& [k, v] : store_->Snapshot()) copy->Overwrite(k, v);
    auto r = Repository::Open(std::move(copy), false, kBlock, kPack);
    EXPECT_OK(r);
    return r.ok() ? std::move(*r) : nullptr;
  }
  // Restores backup `name`'s disk0 through the restore reader (every block decoded and checked).
  StatusOr<std::string> RestoreBytes(Repository& repo, const std::string& name) {
    VMB_ASSIGN_OR_RETURN(BackupInfo info, repo.GetBackup(name));
    const VolumeBackupInfo& v = info.volumes[0];
    VMB_ASSIGN_OR_RETURN(VolumeIndex vidx, repo.LoadVolumeIndex(name, v));
    VMB_ASSIGN_OR_RETURN(auto index, repo.LoadIndex());
    RestoreReader reader(repo.store(), *index, vidx, v.size, name, v.name);
    VMB_RETURN_IF_ERROR(reader.Plan());
    std::string out(v.size, '\0');
    std::string buf;
    for (size_t u = 0; u < reader.unit_count(); ++u) {
      VMB_RETURN_IF_ERROR(reader.Fetch(u, &buf));
      for (size_t p = reader.unit(u).first; p < reader.unit(u).last; ++p) {
        const uint64_t b = reader.piece(p).block;
        VMB_RETURN_IF_ERROR(reader.Decode(u, p, buf, &out[b * kBlock]));
      }
    }
    return out;
  }
  std::string Obj(const std::string& key) { return store_->Snapshot().at(key); }
  std::vector<std::string> Keys(const std::string& prefix) {
    std::vector<std::string> keys;
    for (const auto& [k, v] : store_->Snapshot())
      if (k.rfind(prefix, 0) == 0) keys.push_back(k);
    return keys;
  }

  std::unique_ptr<Repository> repo_;
  MemStore* store_ = nullptr;
  struct Where {
    std::string pack;
    uint64_t offset;
  };
  std::map<Digest, Where> where_;
  std::set<Digest> pending_;
  int backups_ = 0;
};

TEST_F(VerifyTest, HealthyRepositoryVerifiesFastAndFullWithTotals) {
  std::string data = RandomData(10 * kBlock + 100, 1);
  std::fill(data.begin() + 2 * kBlock, data.begin() + 3 * kBlock, '\0');  // a zero block
  AddBackup("b1", data);
  AddBackup("b2", data);  // the same blocks again: nothing new
  auto fast = Verify(false);
  ASSERT_OK(fast);
  EXPECT_TRUE(fast->ok());
  EXPECT_EQ(fast->backups, 2u);
  EXPECT_EQ(fast->volumes, 2u);
  EXPECT_EQ(fast->blocks_referenced, 20u);
  EXPECT_EQ(fast->unique_blocks, 10u);
  EXPECT_EQ(fast->bytes_referenced, 9u * kBlock + 100);
  EXPECT_EQ(fast->packs, 3u);
  EXPECT_EQ(fast->blocks_checked, 0u);
  auto full = Verify(true);
  ASSERT_OK(full);
  EXPECT_TRUE(full->ok());
  EXPECT_EQ(full->blocks_checked, 10u);
  EXPECT_EQ(full->bytes_checked, 9u * kBlock + 100);
  EXPECT_EQ(full->packs_read, 3u);
}

TEST_F(VerifyTest, FlippedByteInAPackIsReportedByFullVerifyAsExactlyThatBlock) {
  const std::string data = RandomData(10 * kBlock, 2);
  AddBackup("b1", data);
  AddBackup("b2", RandomData(3 * kBlock, 3));
  // Block 6 of b1's disk0.
  const Digest d = Sha256(data.data() + 6 * kBlock, kBlock);
  const Where w = where_.at(d);
  std::string pack = Obj(PackKey(w.pack));
  pack[w.offset + 100] ^= 0x40;
  store_->Overwrite(PackKey(w.pack), pack);

  auto fast = Verify(false);
  ASSERT_OK(fast);
  EXPECT_TRUE(fast->ok()) << "sizes and indexes are intact: only reading finds it";
  auto full = Verify(true);
  ASSERT_OK(full);
  EXPECT_FALSE(full->ok());
  ASSERT_THAT(full->bad_blocks, SizeIs(1));
  EXPECT_EQ(full->bad_block_count, 1u);
  const BadBlock& b = full->bad_blocks[0];
  EXPECT_EQ(b.backup, "b1");
  EXPECT_EQ(b.volume, "disk0");
  EXPECT_EQ(b.offset, 6u * kBlock);
  EXPECT_EQ(b.pack_id, w.pack);
  EXPECT_EQ(b.pack_offset, w.offset);
  EXPECT_EQ(b.digest, ToHex(d));
  EXPECT_THAT(b.problem, HasSubstr("digest mismatch"));
  EXPECT_THAT(full->damaged_backups, ElementsAre("b1"));
  ASSERT_THAT(full->pack_problems, SizeIs(1));
  EXPECT_EQ(full->pack_problems[0].pack_id, w.pack);
}

TEST_F(VerifyTest, FastVerifyFindsMissingAndTruncatedPacksAndDamagedAndMissingIndexes) {
  const std::string data = RandomData(16 * kBlock, 4);  // 4 packs of 4 blocks
  AddBackup("b1", data);
  std::vector<std::string> packs;
  for (uint64_t blk = 0; blk < 16; blk += 4)
    packs.push_back(where_.at(Sha256(data.data() + blk * kBlock, kBlock)).pack);
  // Pack 0 missing, pack 1 truncated to two blocks, pack 2's index damaged, pack 3's index gone.
  ASSERT_OK(store_->Delete({PackKey(packs[0])}));
  store_->Overwrite(PackKey(packs[1]), Obj(PackKey(packs[1])).substr(0, 8 + 2 * kBlock));
  std::string idx = Obj(PackIndexKey(packs[2]));
  idx[60] ^= 1;
  store_->Overwrite(PackIndexKey(packs[2]), idx);
  ASSERT_OK(store_->Delete({PackIndexKey(packs[3])}));

  auto r = Verify(false);
  ASSERT_OK(r);
  EXPECT_FALSE(r->ok());
  EXPECT_EQ(r->packs_without_index, 1u);  // pack 3
  ASSERT_THAT(r->pack_problems, SizeIs(3));
  std::map<std::string, std::string> problems;
  for (const auto& p : r->pack_problems) problems[p.pack_id] = p.problem;
  EXPECT_THAT(problems[packs[0]], HasSubstr("missing"));
  EXPECT_THAT(problems[packs[1]], HasSubstr("truncated"));
  EXPECT_THAT(problems[packs[2]], HasSubstr("pack index damaged"));
  // Blocks 0-3 (missing pack), 6-7 (cut off), 8-15 (no readable index): 14 bad blocks.
  EXPECT_EQ(r->bad_block_count, 14u);
  std::set<uint64_t> bad;
  for (const BadBlock& b : r->bad_blocks) {
    bad.insert(b.offset / kBlock);
    if (b.offset / kBlock < 8) {
      EXPECT_EQ(b.pack_id, packs[b.offset / kBlock / 4]);
    } else {
      EXPECT_THAT(b.problem, HasSubstr("in no readable pack index"));
    }
  }
  EXPECT_EQ(bad, (std::set<uint64_t>{0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}));
  EXPECT_THAT(r->damaged_backups, ElementsAre("b1"));
}

TEST_F(VerifyTest, DamagedRecordsAndVolumeIndexesAreReportedWithoutHidingOthers) {
  AddBackup("b1", RandomData(4 * kBlock, 5));
  AddBackup("b2", RandomData(4 * kBlock, 6));
  AddBackup("b3", RandomData(4 * kBlock, 7));
  std::string rec = Obj(RecordKey("b1"));
  rec[rec.size() / 2] ^= 1;
  store_->Overwrite(RecordKey("b1"), rec);
  ASSERT_OK(store_->Delete({VolumeIndexKey("b2", "disk0.0123abcd")}));
  auto r = Verify(true);
  ASSERT_OK(r);
  EXPECT_THAT(r->damaged_records, SizeIs(1));
  EXPECT_THAT(r->damaged_volume_indexes, ElementsAre(HasSubstr("b2")));
  EXPECT_THAT(r->damaged_backups, ElementsAre("b1", "b2"));
  EXPECT_EQ(r->backups, 2u);         // b2 and b3 were read
  EXPECT_EQ(r->blocks_checked, 4u);  // b3's blocks
}

TEST_F(VerifyTest, ReadDataSubsetReadsAShareOrAPartOfThePacks) {
  AddBackup("b1", RandomData(64 * kBlock, 8));  // 16 packs
  std::set<std::string> seen;
  uint64_t total = 0;
  for (uint32_t part = 1; part <= 3; ++part) {
    VerifyOptions o;
    o.read_data_part = part;
    o.read_data_parts = 3;
    auto r = Verify(true, o);
    ASSERT_OK(r);
    total += r->packs_read;
  }
  EXPECT_EQ(total, 16u) << "parts 1..3 of 3 read every pack exactly once";
  VerifyOptions none;
  none.read_data_fraction = 0;
  auto r0 = Verify(true, none);
  ASSERT_OK(r0);
  EXPECT_EQ(r0->packs_read, 0u);
  VerifyOptions bad;
  bad.read_data_part = 4;
  bad.read_data_parts = 3;
  EXPECT_THAT(Verify(true, bad), StatusIs(StatusCode::kInvalidArgument, "read_data_part"));
}

TEST(ReadDataSubsetTest, ParsesFractionsPercentagesAndParts) {
  VerifyOptions o;
  ASSERT_OK(ParseReadDataSubset("0.25", &o));
  EXPECT_DOUBLE_EQ(o.read_data_fraction, 0.25);
  ASSERT_OK(ParseReadDataSubset("10%", &o));
  EXPECT_DOUBLE_EQ(o.read_data_fraction, 0.1);
  ASSERT_OK(ParseReadDataSubset("2/5", &o));
  EXPECT_EQ(o.read_data_part, 2u);
  EXPECT_EQ(o.read_data_parts, 5u);
  for (const char* bad : {"", "0", "1.5", "-0.1", "x", "0/3", "4/3", "1/", "/2", "nan", "1e3"})
    EXPECT_THAT(ParseReadDataSubset(bad, &o),
                StatusIs(StatusCode::kInvalidArgument, "read-data subset"))
        << bad;
}

TEST_F(VerifyTest, ProgressIsReportedAndCanCancel) {
  AddBackup("b1", RandomData(16 * kBlock, 9));
  VerifyOptions o;
  o.progress_interval_ms = 0;
  std::vector<Progress> seen;
  o.progress = [&](const Progress& p) {
    seen.push_back(p);
    return true;
  };
  ASSERT_OK(Verify(true, o));
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back().phase, Progress::Phase::kDone);
  EXPECT_EQ(seen.back().blocks_done, 16u);
  EXPECT_EQ(seen.back().blocks_total, 16u);
  o.progress = [](const Progress& p) { return p.phase == Progress::Phase::kPreparing; };
  EXPECT_THAT(Verify(true, o), StatusIs(StatusCode::kCancelled, "cancelled"));
}

TEST_F(VerifyTest, RepairRebuildsADeletedPackIndexAndTheBackupRestoresAgain) {
  const std::string data = RandomData(12 * kBlock, 10);
  AddBackup("b1", data);
  const std::string pack = where_.at(Sha256(data.data() + 5 * kBlock, kBlock)).pack;
  const std::string original = Obj(PackIndexKey(pack));
  ASSERT_OK(store_->Delete({PackIndexKey(pack)}));
  {
    auto fresh = Reopen();
    EXPECT_THAT(RestoreBytes(*fresh, "b1"), StatusIs(StatusCode::kDataLoss, "no pack index"));
  }
  auto dry = Repair(false, /*dry_run=*/true);
  ASSERT_OK(dry);
  ASSERT_THAT(dry->actions, SizeIs(1));
  EXPECT_EQ(dry->actions[0].action, "rebuilt index");
  EXPECT_FALSE(dry->actions[0].done);
  EXPECT_THAT(dry->unrestorable_backups, IsEmpty());
  EXPECT_THAT(dry->before.damaged_backups, ElementsAre("b1"));
  EXPECT_THAT(Keys(PackIndexKey(pack)), IsEmpty()) << "a dry run writes nothing";

  auto rep = Repair(false);
  ASSERT_OK(rep);
  ASSERT_THAT(rep->actions, SizeIs(1));
  EXPECT_EQ(rep->actions[0].pack_id, pack);
  EXPECT_EQ(rep->actions[0].action, "rebuilt index");
  EXPECT_TRUE(rep->actions[0].done) << rep->actions[0].error;
  EXPECT_EQ(rep->actions[0].blocks_kept, 4u);
  EXPECT_EQ(Obj(PackIndexKey(pack)), original) << "the trailer's copy, byte for byte";
  auto after = Verify(true);
  ASSERT_OK(after);
  EXPECT_TRUE(after->ok());
  auto fresh = Reopen();
  auto restored = RestoreBytes(*fresh, "b1");
  ASSERT_OK(restored);
  EXPECT_TRUE(*restored == data);
}

TEST_F(VerifyTest, RepairRebuildsADamagedPackIndex) {
  const std::string data = RandomData(8 * kBlock, 11);
  AddBackup("b1", data);
  const std::string pack = where_.at(Sha256(data.data(), kBlock)).pack;
  const std::string original = Obj(PackIndexKey(pack));
  store_->Overwrite(PackIndexKey(pack), original.substr(0, original.size() - 1) + "x");
  auto rep = Repair(false);
  ASSERT_OK(rep);
  ASSERT_THAT(rep->actions, SizeIs(1));
  EXPECT_EQ(rep->actions[0].action, "rebuilt index");
  EXPECT_TRUE(rep->actions[0].done);
  EXPECT_EQ(Obj(PackIndexKey(pack)), original);
  auto after = Verify(false);
  ASSERT_OK(after);
  EXPECT_TRUE(after->ok());
}

TEST_F(VerifyTest, RepairOfACorruptBlockKeepsTheOthersAndTakesItOutOfEveryIndex) {
  const std::string data = RandomData(8 * kBlock, 12);
  AddBackup("b1", data);
  AddBackup("b2", RandomData(4 * kBlock, 13));
  const Digest d = Sha256(data.data() + 2 * kBlock, kBlock);
  const Where w = where_.at(d);
  std::string pack = Obj(PackKey(w.pack));
  pack[w.offset + 7] ^= 0x01;
  store_->Overwrite(PackKey(w.pack), pack);

  auto rep = Repair(/*read_data=*/true);
  ASSERT_OK(rep);
  ASSERT_THAT(rep->actions, SizeIs(1));
  const RepairAction& a = rep->actions[0];
  EXPECT_EQ(a.pack_id, w.pack);
  EXPECT_EQ(a.action, "repacked");
  EXPECT_TRUE(a.done) << a.error;
  EXPECT_EQ(a.blocks_kept, 3u);
  EXPECT_EQ(a.blocks_lost, 1u);
  EXPECT_FALSE(a.new_pack_id.empty());
  EXPECT_THAT(rep->unrestorable_backups, ElementsAre("b1"));
  EXPECT_THAT(Keys(PackIndexKey(w.pack)), IsEmpty()) << "the damaged pack's index is gone";
  EXPECT_THAT(Keys(PackKey(w.pack)), SizeIs(1)) << "packs are never deleted by repair";

  // The lost block is in no index: the next backup stores it (a backup dedups on LoadIndex).
  auto fresh = Reopen();
  auto index = fresh->LoadIndex();
  ASSERT_OK(index);
  EXPECT_EQ((*index)->Find(d), nullptr);
  for (int b = 0; b < 8; ++b) {
    if (b == 2) continue;
    EXPECT_NE((*index)->Find(Sha256(data.data() + b * kBlock, kBlock)), nullptr) << b;
  }
  // Verify now names the lost block as unindexed, nothing else.
  auto after = Verify(true);
  ASSERT_OK(after);
  ASSERT_THAT(after->bad_blocks, SizeIs(1));
  EXPECT_EQ(after->bad_blocks[0].offset, 2u * kBlock);
  EXPECT_THAT(after->bad_blocks[0].problem, HasSubstr("in no readable pack index"));
  EXPECT_THAT(after->pack_problems, IsEmpty());
  // A later backup of the same data stores the block again, and b1 restores again.
  where_.erase(d);
  AddBackup("b3", data);
  auto healed = Verify(true);
  ASSERT_OK(healed);
  EXPECT_TRUE(healed->ok());
  auto again = Reopen();
  auto restored = RestoreBytes(*again, "b1");
  ASSERT_OK(restored);
  EXPECT_TRUE(*restored == data);
}

TEST_F(VerifyTest, RepairRemovesTheIndexOfAMissingPackAndListsTheBackupsThatStayDamaged) {
  const std::string data = RandomData(8 * kBlock, 14);
  AddBackup("b1", data);
  AddBackup("b2", RandomData(4 * kBlock, 15));
  const std::string pack = where_.at(Sha256(data.data(), kBlock)).pack;
  ASSERT_OK(store_->Delete({PackKey(pack)}));
  auto rep = Repair(false);
  ASSERT_OK(rep);
  ASSERT_THAT(rep->actions, SizeIs(1));
  EXPECT_EQ(rep->actions[0].action, "removed index");
  EXPECT_EQ(rep->actions[0].blocks_lost, 4u);
  EXPECT_TRUE(rep->actions[0].done);
  EXPECT_THAT(rep->unrestorable_backups, ElementsAre("b1"));
  EXPECT_THAT(Keys(PackIndexKey(pack)), IsEmpty());
}

TEST_F(VerifyTest, RepairSalvagesTheBlocksATruncatedPackStillHolds) {
  const std::string data = RandomData(8 * kBlock, 16);
  AddBackup("b1", data);
  const std::string pack = where_.at(Sha256(data.data(), kBlock)).pack;
  store_->Overwrite(PackKey(pack), Obj(PackKey(pack)).substr(0, 8 + 3 * kBlock - 1));
  auto rep = Repair(false);
  ASSERT_OK(rep);
  ASSERT_THAT(rep->actions, SizeIs(1));
  EXPECT_EQ(rep->actions[0].action, "repacked");
  EXPECT_EQ(rep->actions[0].blocks_kept, 2u);
  EXPECT_EQ(rep->actions[0].blocks_lost, 2u);
  auto after = Verify(true);
  ASSERT_OK(after);
  EXPECT_EQ(after->bad_block_count, 2u);
  EXPECT_THAT(after->pack_problems, IsEmpty());
}

TEST_F(VerifyTest, HostileObjectsNeverCrashVerifyOrRepair) {
  const std::string data = RandomData(8 * kBlock, 17);
  AddBackup("b1", data);
  const auto clean = store_->Snapshot();
  std::mt19937_64 rng(99);
  std::vector<std::string> keys;
  for (const auto& [k, v] : clean) keys.push_back(k);
  // Stray and misnamed objects under the format's prefixes.
  const std::map<std::string, std::string> strays = {
      {"packs/zz/not-a-pack", "x"},
      {"packs/ab/abcdef0123456789abcdef0123456789.pack", "VMBPACK1"},
      {"index/bbcdef0123456789abcdef0123456789.idx", "VMBPIDX1"}};
  for (const auto& [k, v] : strays) store_->Overwrite(k, v);
  for (int round = 0; round < 60; ++round) {
    // Each round starts from the clean repository (the packs an earlier round's repair wrote go
    // too): one corruption of a sound repository per round. Second copies of blocks are the
    // subject of VerifyCopiesTest.
    std::vector<std::string> extra;
    for (const auto& [k, v] : store_->Snapshot())
      if (!clean.contains(k) && !strays.contains(k)) extra.push_back(k);
    ASSERT_OK(store_->Delete(extra));
    for (const auto& [k, v] : clean) store_->Overwrite(k, v);
    const std::string& key = keys[rng() % keys.size()];
    std::string obj = clean.at(key);
    switch (rng() % 4) {
      case 0:  // flip a byte, anywhere (the trailer and the index copy included)
        if (!obj.empty()) obj[rng() % obj.size()] ^= static_cast<char>(1 + rng() % 255);
        break;
      case 1:  // truncate
        obj.resize(rng() % (obj.size() + 1));
        break;
      case 2:  // the trailer's index offset pointing anywhere
        if (obj.size() >= 16) {
          const uint64_t v = rng();
          std::memcpy(&obj[obj.size() - 16], &v, 8);
        }
        break;
      case 3:  // garbage
        obj = RandomData(rng() % 4096, rng());
        break;
    }
    store_->Overwrite(key, obj);
    auto v = Verify(true);
    ASSERT_OK(v) << key;
    auto dry = Repair(true, true);
    ASSERT_OK(dry) << key;
    auto rep = Repair(true);
    ASSERT_OK(rep) << key;
    auto after = Verify(true);
    ASSERT_OK(after) << key;
    std::string problems;
    for (const auto& p : after->pack_problems)
      problems += " [" + p.pack_id + ": " + p.problem + "]";
    EXPECT_THAT(after->pack_problems, IsEmpty())
        << key << ": repair leaves no damaged pack (round " << round << ", actions "
        << rep->actions.size() << "):" << problems;
  }
}

// A block listed by two packs (a repack, or two backups that stored the same new block at once):
// a restore may read either copy, so a full verify reads both and names the corrupt one, whichever
// pack index arrived first; repair repacks that pack and the backup stays restorable.
class VerifyCopiesTest : public VerifyTest, public ::testing::WithParamInterface<bool> {};

TEST_P(VerifyCopiesTest, FullVerifyReadsEveryCopyOfABlockAndRepairDropsTheCorruptOne) {
  {
    const bool corrupt_original = GetParam();
    const std::string data = RandomData(4 * kBlock, corrupt_original ? 31 : 32);
    AddBackup("b1", data);
    const Digest d = Sha256(data.data() + kBlock, kBlock);
    const std::string original = where_.at(d).pack;
    PackBuilder builder(kPack);
    for (int b = 0; b < 4; ++b)
      builder.Add(Sha256(data.data() + b * kBlock, kBlock), data.data() + b * kBlock, kBlock);
    auto second = builder.Seal();
    ASSERT_OK(second);
    store_->Overwrite(PackKey(second->id), second->data);
    store_->Overwrite(PackIndexKey(second->id), second->index);
    const std::string bad_pack = corrupt_original ? original : second->id;
    uint64_t bad_offset = where_.at(d).offset;
    if (!corrupt_original) {
      for (const PackEntry& e : second->entries)
        if (e.digest == d) bad_offset = e.offset;
    }
    std::string obj = Obj(PackKey(bad_pack));
    obj[bad_offset + 5] ^= 0x40;
    store_->Overwrite(PackKey(bad_pack), obj);

    for (int run = 0; run < 3; ++run) {  // the index arrival order varies from run to run
      auto v = Verify(true);
      ASSERT_OK(v);
      ASSERT_THAT(v->pack_problems, SizeIs(1)) << VerifyReportToJson(*v);
      EXPECT_EQ(v->pack_problems[0].pack_id, bad_pack);
      ASSERT_THAT(v->bad_blocks, SizeIs(1));
      EXPECT_EQ(v->bad_blocks[0].pack_id, bad_pack);
      EXPECT_EQ(v->bad_blocks[0].pack_offset, bad_offset);
      EXPECT_EQ(v->bad_blocks[0].offset, uint64_t{kBlock});
    }
    auto rep = Repair(true);
    ASSERT_OK(rep);
    ASSERT_THAT(rep->actions, SizeIs(1));
    EXPECT_EQ(rep->actions[0].pack_id, bad_pack);
    EXPECT_EQ(rep->actions[0].action, "repacked");
    EXPECT_TRUE(rep->actions[0].done) << rep->actions[0].error;
    EXPECT_THAT(rep->unrestorable_backups, IsEmpty()) << "the other copy is sound";
    auto after = Verify(true);
    ASSERT_OK(after);
    EXPECT_TRUE(after->ok()) << VerifyReportToJson(*after);
    auto again = Reopen();
    auto restored = RestoreBytes(*again, "b1");
    ASSERT_OK(restored);
    EXPECT_TRUE(*restored == data);
  }
}
INSTANTIATE_TEST_SUITE_P(Copies, VerifyCopiesTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return i.param ? std::string("OriginalCopyCorrupt")
                                          : std::string("SecondCopyCorrupt");
                         });

TEST_F(VerifyTest, PackPublishedBetweenTheTwoListingsWasReportedMissing) {
  // A backup running during verify publishes a pack, then its index, between verify's listing of
  // the pack indexes and its listing of the packs (or the other way round): neither order of
  // events may be reported as damage.
  AddBackup("b1", RandomData(8 * kBlock, 20));
  PackBuilder builder(kPack);
  const std::string extra = RandomData(kBlock, 21);
  builder.Add(Sha256(extra), extra.data(), extra.size());
  auto sealed = builder.Seal();
  ASSERT_OK(sealed);
  std::atomic<int> lists{0};
  store_->SetFaultHook([&](MemStore::Op op, const std::string& prefix) {
    if (op == MemStore::Op::kList && (prefix == "index/" || prefix == "packs/") && ++lists == 2) {
      store_->Overwrite(PackKey(sealed->id), sealed->data);  // data first, as writers do
      store_->Overwrite(PackIndexKey(sealed->id), sealed->index);
    }
    return Status::Ok();
  });
  auto r = Verify(true);
  ASSERT_OK(r);
  EXPECT_TRUE(r->ok()) << VerifyReportToJson(*r);
  store_->SetFaultHook(nullptr);
}

TEST_F(VerifyTest, BackupDeletedWhileVerifyRunsWasReportedAsADamagedVolumeIndex) {
  AddBackup("b1", RandomData(4 * kBlock, 22));
  AddBackup("b2", RandomData(4 * kBlock, 23));
  const std::string vidx = VolumeIndexKey("b1", "disk0.0123abcd");
  store_->SetFaultHook([&](MemStore::Op op, const std::string& key) {
    if (op == MemStore::Op::kGet && key == vidx) {
      // DeleteBackup's order: the record, then the volume indexes.
      store_->SetFaultHook(nullptr);
      EXPECT_OK(store_->Delete({RecordKey("b1"), vidx}));
    }
    return Status::Ok();
  });
  auto r = Verify(false);
  ASSERT_OK(r);
  EXPECT_TRUE(r->ok()) << VerifyReportToJson(*r);
  EXPECT_EQ(r->backups, 1u);
  // A volume index missing while its record is still there is damage.
  ASSERT_OK(store_->Delete({VolumeIndexKey("b2", "disk0.0123abcd")}));
  auto damaged = Verify(false);
  ASSERT_OK(damaged);
  EXPECT_THAT(damaged->damaged_volume_indexes, SizeIs(1));
}

// ---- parallel pack-index loading ----

TEST(GetManyTest, KeepsAtMostWindowReadsInFlightAndHandsEveryResultOnTheCallingThread) {
  auto store = std::make_unique<MemStore>(Runtime::Default());
  for (int i = 0; i < 40; ++i)
    ASSERT_OK(store->Put("k/" + std::to_string(i), "v" + std::to_string(i), PutOptions{}));
  std::atomic<int> now{0}, peak{0};
  store->SetFaultHook([&](MemStore::Op op, const std::string&) {
    if (op != MemStore::Op::kGet) return Status::Ok();
    const int n = ++now;
    int p = peak.load();
    while (n > p && !peak.compare_exchange_weak(p, n)) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    --now;
    return Status::Ok();
  });
  const auto caller = std::this_thread::get_id();
  std::set<size_t> got;
  ASSERT_OK(GetMany(
      *store, 41, [](size_t i) { return "k/" + std::to_string(i); }, 2,
      [&](size_t i, StatusOr<std::string> r) -> Status {
        EXPECT_EQ(std::this_thread::get_id(), caller);
        if (i == 40) {
          EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
        } else {
          EXPECT_OK(r);
          if (r.ok()) {
            EXPECT_EQ(*r, "v" + std::to_string(i));
          }
        }
        got.insert(i);
        return Status::Ok();
      }));
  EXPECT_EQ(got.size(), 41u);
  EXPECT_LE(peak.load(), 2);
  EXPECT_GE(peak.load(), 2) << "reads did overlap";
  // An error from consume stops new reads and is returned after the ones in flight ended.
  int calls = 0;
  Status st = GetMany(
      *store, 40, [](size_t i) { return "k/" + std::to_string(i); }, 4,
      [&](size_t, StatusOr<std::string>) -> Status {
        ++calls;
        return DataLossError("stop");
      });
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(now.load(), 0);
}

TEST_F(VerifyTest, LoadIndexFetchesInParallelSkipsDamagedAndDeletedIndexes) {
  AddBackup("b1", RandomData(200 * kBlock, 18));  // 50 packs
  auto packs = Keys("index/");
  ASSERT_EQ(packs.size(), 50u);
  std::string idx = Obj(packs[3]);
  idx[40] ^= 1;
  store_->Overwrite(packs[3], idx);
  std::atomic<int> now{0}, peak{0};
  const std::string gone = packs[7];
  store_->SetFaultHook([&](MemStore::Op op, const std::string& key) {
    if (op != MemStore::Op::kGet) return Status::Ok();
    if (key == gone) return NotFoundError(key);  // deleted between the listing and the read
    const int n = ++now;
    int p = peak.load();
    while (n > p && !peak.compare_exchange_weak(p, n)) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    --now;
    return Status::Ok();
  });
  auto index = repo_->LoadIndex();
  ASSERT_OK(index);
  EXPECT_EQ((*index)->pack_count(), 48u);
  EXPECT_EQ((*index)->block_count(), 48u * 4);
  ASSERT_THAT((*index)->damaged(), SizeIs(1));
  EXPECT_THAT((*index)->damaged()[0], HasSubstr(packs[3]));
  EXPECT_GT(peak.load(), 1) << "pack indexes are fetched in parallel";
  // A failed load keeps nothing half-loaded: the next call loads them all.
  store_->SetFaultHook(nullptr);
  auto again = repo_->LoadIndex();
  ASSERT_OK(again);
  EXPECT_EQ((*again)->pack_count(), 49u)
      << "the index that was NOT_FOUND is loaded once it is there";
}

TEST_F(VerifyTest, LoadIndexThatFailedMidwayNeverLoadedThePacksItHadReadBefore) {
  AddBackup("b1", RandomData(40 * kBlock, 19));  // 10 packs
  std::atomic<int> gets{0};
  store_->SetFaultHook([&](MemStore::Op op, const std::string&) {
    if (op == MemStore::Op::kGet && ++gets == 5) return UnavailableError("server went away");
    return Status::Ok();
  });
  EXPECT_THAT(repo_->LoadIndex(), StatusIs(StatusCode::kUnavailable, "went away"));
  store_->SetFaultHook(nullptr);
  auto index = repo_->LoadIndex();
  ASSERT_OK(index);
  EXPECT_EQ((*index)->pack_count(), 10u);
}

}  // namespace
}  // namespace vmbackup::internal
