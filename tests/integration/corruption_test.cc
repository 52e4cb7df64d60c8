// Damaged objects on a real local-directory target: a flipped byte in a pack, a pack index, a
// volume index and a backup record; a truncated record; a missing pack. Each must be reported as
// DATA_LOSS naming the damaged object (and, for block data, the backup, volume and offset), must
// never produce a wrong or partial restored file, and must not hide the undamaged backups.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <set>

#include "integration_util.h"
#include "repo/format.h"

namespace vmbackup::integration {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;
using ::testing::StartsWith;
using ::vmbackup::testing::FileExists;
using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::FileSize;
using ::vmbackup::testing::FlipByte;
using ::vmbackup::testing::ReadAll;
using ::vmbackup::testing::TempDir;

// Two backups of unrelated volumes, each spanning several 1 MiB packs. b1's objects get damaged;
// b2 must stay listable and restorable throughout.
class CorruptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    target_dir_ = dir_.Sub("target");
    dest_dir_ = dir_.Sub("restore");
    ASSERT_EQ(::mkdir(target_dir_.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir(dest_dir_.c_str(), 0755), 0);
    vol1_ = dir_.Sub("disk1.img");
    vol2_ = dir_.Sub("disk2.img");
    ::vmbackup::testing::MakeVolume(vol1_, 12 << 20, 41, 512 << 10);
    ::vmbackup::testing::MakeVolume(vol2_, 8 << 20, 42, 512 << 10);
    auto t = OpenTarget(target_dir_);
    ASSERT_OK(t);
    auto b1 = RunBackup(*t, "b1", vol1_);
    ASSERT_OK(b1);
    b1_ = *b1;
    b1_packs_ = FilesUnder(target_dir_, "packs/");
    b1_indexes_ = FilesUnder(target_dir_, "index/");
    ASSERT_GE(b1_indexes_.size(), 3u) << "b1 should span several packs";
    ASSERT_OK(RunBackup(*t, "b2", vol2_));
  }

  // A target opened afresh, as another process would after the damage.
  std::shared_ptr<BackupTarget> Fresh() {
    auto t = OpenTarget(target_dir_);
    EXPECT_OK(t);
    return t.ok() ? *t : nullptr;
  }
  std::string Path(const std::string& key) const { return target_dir_ + "/" + key; }

  // A failed restore of b1 created nothing under the destination directory (not even a partial).
  void ExpectNothingRestored() {
    EXPECT_FALSE(FileExists(dest_dir_ + "/b1.img"));
    EXPECT_THAT(FilesUnder(dest_dir_), IsEmpty());
  }
  void ExpectB2Fine() {
    auto list = Fresh()->ListBackups();
    ASSERT_OK(list);
    EXPECT_THAT(ListedNames(*list), Contains("b2"));
    ExpectRestorable(target_dir_, "b2", {{"disk0", FileSha256(vol2_)}}, dir_.path());
  }

  TempDir dir_;
  std::string target_dir_, dest_dir_, vol1_, vol2_;
  BackupInfo b1_;
  std::vector<std::string> b1_packs_, b1_indexes_;
};

TEST_F(CorruptionTest, FlippedByteInPackIsDataLossNamingBackupVolumeOffsetAndPack) {
  // Pick a block in the middle of b1's second pack and flip a byte inside its stored bytes.
  const std::string idx_key = b1_indexes_[1];
  const std::string pack_id = internal::PackIdFromIndexKey(idx_key);
  ASSERT_FALSE(pack_id.empty()) << idx_key;
  auto entries = internal::DecodePackIndex(ReadAll(Path(idx_key)), pack_id, idx_key);
  ASSERT_OK(entries);
  ASSERT_FALSE(entries->empty());
  const internal::PackEntry victim = (*entries)[entries->size() / 2];
  const std::string pack_key = internal::PackKey(pack_id);
  FlipByte(Path(pack_key), victim.offset + victim.stored_len / 2);

  // Where that block sits in the volume (by the volume index, which is intact).
  auto vidx = internal::DecodeVolumeIndex(ReadAll(Path(b1_.volumes[0].index_key)), "vidx");
  ASSERT_OK(vidx);
  std::vector<std::string> where;
  for (uint64_t b = 0; b < vidx->block_count(); ++b)
    if (vidx->kinds[b] == internal::BlockKind::kData && vidx->digests[b] == victim.digest)
      where.push_back("offset " + std::to_string(b * vidx->block_size) + ",");
  ASSERT_FALSE(where.empty());

  auto target = Fresh();
  // Listing does not read packs: both backups are listed.
  auto list = target->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ElementsAre("b1", "b2"));

  Status st = RunRestore(target, "b1", dest_dir_ + "/b1.img");
  ShowStatus(st);
  EXPECT_THAT(st, StatusIs(StatusCode::kDataLoss, "backup 'b1'"));
  EXPECT_THAT(st.message(), HasSubstr("volume 'disk0'"));
  EXPECT_THAT(st.message(), HasSubstr(pack_key));
  bool names_offset = false;
  for (const auto& w : where)
    names_offset = names_offset || st.message().find(w) != std::string::npos;
  EXPECT_TRUE(names_offset) << st.message()
                            << "\n should name one of: " << ::testing::PrintToString(where);
  ExpectNothingRestored();
  ExpectB2Fine();
}

TEST_F(CorruptionTest, MissingPackIsDataLossNamingIt) {
  const std::string pack_key = b1_packs_[b1_packs_.size() / 2];
  ASSERT_EQ(::unlink(Path(pack_key).c_str()), 0);
  Status st = RunRestore(Fresh(), "b1", dest_dir_ + "/b1.img");
  ShowStatus(st);
  EXPECT_THAT(st, StatusIs(StatusCode::kDataLoss, pack_key));
  EXPECT_THAT(st.message(), HasSubstr("backup 'b1'"));
  EXPECT_THAT(st.message(), HasSubstr("missing"));
  ExpectNothingRestored();
  ExpectB2Fine();
}

TEST_F(CorruptionTest, FlippedByteInPackIndexKeepsListingAndFailsRestoreNamingTheIndex) {
  const std::string idx_key = b1_indexes_[1];
  FlipByte(Path(idx_key), FileSize(Path(idx_key)) / 2);

  auto target = Fresh();
  auto list = target->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ElementsAre("b1", "b2"));
  EXPECT_THAT(list->damaged, IsEmpty());  // records are intact

  Status st = RunRestore(target, "b1", dest_dir_ + "/b1.img");
  ShowStatus(st);
  EXPECT_THAT(st, StatusIs(StatusCode::kDataLoss, idx_key));
  EXPECT_THAT(st.message(), HasSubstr("backup 'b1'"));
  EXPECT_THAT(st.message(), HasSubstr("volume 'disk0'"));
  ExpectNothingRestored();
  ExpectB2Fine();
}

TEST_F(CorruptionTest, BlocksOfDamagedPackIndexAreStoredAgainByTheNextBackupWhichHealsRestore) {
  const std::string idx_key = b1_indexes_[1];
  FlipByte(Path(idx_key), FileSize(Path(idx_key)) / 2);

  // A new backup of the same volume cannot dedup against the unreadable index: it stores those
  // blocks again (in new packs) and reuses everything else.
  auto target = Fresh();
  auto b3 = RunBackup(target, "b3", vol1_);
  ASSERT_OK(b3);
  EXPECT_GT(b3->bytes_new, 0u) << "blocks of the damaged index must be stored again";
  EXPECT_GT(b3->bytes_reused, 0u) << "blocks of the intact packs must be reused";
  EXPECT_LT(b3->bytes_new, b1_.bytes_new);

  // Now every block of b1 is findable again through b3's packs: b1 restores identical bytes.
  ExpectRestorable(target_dir_, "b1", {{"disk0", FileSha256(vol1_)}}, dir_.path());
  ExpectRestorable(target_dir_, "b3", {{"disk0", FileSha256(vol1_)}}, dir_.path());
  ExpectB2Fine();
}

TEST_F(CorruptionTest, FlippedByteInVolumeIndexIsDataLossNamingIt) {
  const std::string vidx_key = b1_.volumes[0].index_key;
  ASSERT_THAT(vidx_key, StartsWith("volumes/b1/disk0."));
  FlipByte(Path(vidx_key), FileSize(Path(vidx_key)) / 2);

  auto target = Fresh();
  auto list = target->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ElementsAre("b1", "b2"));
  Status st = RunRestore(target, "b1", dest_dir_ + "/b1.img");
  ShowStatus(st);
  EXPECT_THAT(st, StatusIs(StatusCode::kDataLoss, vidx_key));
  EXPECT_THAT(st.message(), HasSubstr("backup 'b1'"));
  EXPECT_THAT(st.message(), HasSubstr("volume 'disk0'"));
  ExpectNothingRestored();
  ExpectB2Fine();
}

TEST_F(CorruptionTest, FlippedByteInRecordIsListedAsDamagedWithoutHidingOthers) {
  const std::string rec = Path("records/b1.json");
  FlipByte(rec, FileSize(rec) / 2);

  auto target = Fresh();
  auto list = target->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ElementsAre("b2"));
  ASSERT_THAT(list->damaged, SizeIs(1));
  std::cout << "[ DAMAGED  ] " << list->damaged[0] << std::endl;
  EXPECT_THAT(list->damaged[0], StartsWith("b1: "));
  EXPECT_THAT(list->damaged[0], HasSubstr("records/b1.json"));

  EXPECT_THAT(target->GetBackup("b1"), StatusIs(StatusCode::kDataLoss, "records/b1.json"));
  EXPECT_THAT(RunRestore(target, "b1", dest_dir_ + "/b1.img"),
              StatusIs(StatusCode::kDataLoss, "records/b1.json"));
  ExpectNothingRestored();
  // The damaged name is not silently reused by a new backup...
  EXPECT_THAT(RunBackup(target, "b1", vol1_), StatusIs(StatusCode::kAlreadyExists, "b1"));
  // ...but the damaged record can be deleted, after which the listing is clean.
  ASSERT_OK(target->DeleteBackup("b1"));
  list = target->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ElementsAre("b2"));
  EXPECT_THAT(list->damaged, IsEmpty());
  ExpectB2Fine();
}

TEST_F(CorruptionTest, TruncatedRecordIsDataLossAndOthersStillList) {
  const std::string rec = Path("records/b1.json");
  const std::string bytes = ReadAll(rec);
  ASSERT_EQ(::truncate(rec.c_str(), static_cast<off_t>(bytes.size() / 2)), 0);

  auto target = Fresh();
  auto list = target->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ElementsAre("b2"));
  ASSERT_THAT(list->damaged, SizeIs(1));
  std::cout << "[ DAMAGED  ] " << list->damaged[0] << std::endl;
  EXPECT_THAT(list->damaged[0], StartsWith("b1: "));
  EXPECT_THAT(list->damaged[0], HasSubstr("truncated"));
  auto got = target->GetBackup("b1");
  EXPECT_THAT(got, StatusIs(StatusCode::kDataLoss, "records/b1.json"));
  EXPECT_THAT(got, StatusIs(StatusCode::kDataLoss, "truncated"));
  EXPECT_THAT(RunRestore(target, "b1", dest_dir_ + "/b1.img"),
              StatusIs(StatusCode::kDataLoss, "records/b1.json"));
  ExpectNothingRestored();

  // An empty record (truncated to nothing) is damaged the same way.
  ASSERT_EQ(::truncate(rec.c_str(), 0), 0);
  EXPECT_THAT(target->GetBackup("b1"), StatusIs(StatusCode::kDataLoss, "records/b1.json"));
  list = target->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ElementsAre("b2"));
  EXPECT_THAT(list->damaged, SizeIs(1));
  ExpectB2Fine();
}

TEST_F(CorruptionTest, TruncatedPackIsDataLossNamingIt) {
  const std::string pack_key = b1_packs_[b1_packs_.size() / 2];
  ASSERT_EQ(::truncate(Path(pack_key).c_str(), static_cast<off_t>(FileSize(Path(pack_key)) / 3)),
            0);
  Status st = RunRestore(Fresh(), "b1", dest_dir_ + "/b1.img");
  ShowStatus(st);
  EXPECT_THAT(st, StatusIs(StatusCode::kDataLoss, pack_key));
  EXPECT_THAT(st.message(), HasSubstr("backup 'b1'"));
  EXPECT_THAT(st.message(), HasSubstr("volume 'disk0'"));
  ExpectNothingRestored();
  ExpectB2Fine();
}

TEST_F(CorruptionTest, MissingVolumeIndexIsDataLossNamingIt) {
  const std::string vidx_key = b1_.volumes[0].index_key;
  ASSERT_EQ(::unlink(Path(vidx_key).c_str()), 0);
  auto target = Fresh();
  auto list = target->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ElementsAre("b1", "b2"));
  Status st = RunRestore(target, "b1", dest_dir_ + "/b1.img");
  ShowStatus(st);
  EXPECT_THAT(st, StatusIs(StatusCode::kDataLoss, vidx_key));
  EXPECT_THAT(st.message(), HasSubstr("missing"));
  ExpectNothingRestored();
  ExpectB2Fine();
}

// Regression: a record copied to another key was listed twice and let DeleteBackup remove indexes
// another name still pointed to.
TEST_F(CorruptionTest, RecordStoredUnderAnotherNameIsReportedDamaged) {
  // records/b3.json := records/b2.json, as a hand-made copy or rename would leave it.
  ::vmbackup::testing::WriteAll(Path("records/b3.json"), ReadAll(Path("records/b2.json")));
  auto target = Fresh();
  auto list = target->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ElementsAre("b1", "b2"));  // b2 once, no phantom
  ASSERT_THAT(list->damaged, SizeIs(1));
  EXPECT_THAT(list->damaged[0], StartsWith("b3: "));
  EXPECT_THAT(list->damaged[0], HasSubstr("records/b3.json"));
  EXPECT_THAT(target->GetBackup("b3"), StatusIs(StatusCode::kDataLoss, "records/b3.json"));
  EXPECT_THAT(RunRestore(target, "b3", dest_dir_ + "/b3.img"),
              StatusIs(StatusCode::kDataLoss, "records/b3.json"));
}

}  // namespace
}  // namespace vmbackup::integration
