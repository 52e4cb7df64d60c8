// Block fingerprints: the keyed GMAC, the fingerprint objects, and their use by incremental
// backups to skip hashing unchanged blocks (and its opt-out), on a local target.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "core/util.h"
#include "repo/format.h"
#include "support/test_util.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup {
namespace {

using internal::BlockFingerprint;
using internal::Fingerprint;
using internal::FingerprintKey;
using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::ReadAll;
using ::vmbackup::testing::TempDir;
using ::vmbackup::testing::WriteAll;

TEST(BlockFingerprintTest, DependsOnKeyContentAndLength) {
  FingerprintKey k1{}, k2{};
  k2[0] = 1;
  std::string a(256 << 10, 'a');
  const Fingerprint f = BlockFingerprint(k1, a.data(), a.size());
  EXPECT_EQ(f, BlockFingerprint(k1, a.data(), a.size()));  // deterministic
  EXPECT_NE(f, BlockFingerprint(k2, a.data(), a.size()));  // keyed
  std::string b = a;
  b[12345] ^= 1;
  EXPECT_NE(f, BlockFingerprint(k1, b.data(), b.size()));  // one bit of content
  std::string c = a + std::string(1, '\0');
  EXPECT_NE(f, BlockFingerprint(k1, c.data(), c.size()));  // a trailing zero byte (length)
}

TEST(FingerprintFormatTest, RoundTripsAndRejectsCorruption) {
  internal::VolumeFingerprints f;
  f.volume_size = 10 << 20;
  f.block_size = 256 << 10;
  for (uint64_t b : {0, 3, 39}) {
    internal::BlockFingerprintEntry e;
    e.block = b;
    e.fp.fill(static_cast<uint8_t>(b + 1));
    f.entries.push_back(e);
  }
  const std::string bytes = internal::EncodeFingerprints(f);
  auto back = internal::DecodeFingerprints(bytes, "fp");
  ASSERT_OK(back);
  EXPECT_EQ(back->volume_size, f.volume_size);
  ASSERT_EQ(back->entries.size(), 3u);
  ASSERT_NE(back->Find(3), nullptr);
  EXPECT_EQ((*back->Find(3))[0], 4);
  EXPECT_EQ(back->Find(4), nullptr);
  std::string bad = bytes;
  bad[40] ^= 1;
  EXPECT_THAT(internal::DecodeFingerprints(bad, "fp x"), StatusIs(StatusCode::kDataLoss, "fp x"));
  EXPECT_THAT(internal::DecodeFingerprints(bytes.substr(0, 50), "fp"),
              StatusIs(StatusCode::kDataLoss, "fp"));
  std::swap(f.entries[0], f.entries[1]);
  EXPECT_THAT(internal::DecodeFingerprints(internal::EncodeFingerprints(f), "fp"),
              StatusIs(StatusCode::kDataLoss, "sorted"));
}

class FingerprintBackupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::mkdir(dir_.Sub("target").c_str(), 0755), 0);
    auto t = BackupTarget::Open(R"({"type":"file","endpoint":")" + dir_.Sub("target") + R"("})");
    ASSERT_OK(t);
    target_ = *t;
    vol_ = dir_.Sub("disk0.img");
    ::vmbackup::testing::MakeVolume(vol_, 16 << 20, 5);
  }
  StatusOr<BackupInfo> Backup(const std::string& name, bool use_fingerprints = true) {
    BackupSpec spec;
    spec.name = name;
    spec.vm_metadata_json = R"({"name":"vm1","namespace":"default"})";
    spec.volumes.push_back({"disk0", vol_, false, {}});
    spec.use_fingerprints = use_fingerprints;
    auto job = BackupJob::Create(target_, spec);
    if (!job.ok()) return job.status();
    Status st = (*job)->Run();
    if (!st.ok()) return st;
    return (*job)->result();
  }
  std::string RestoreSha(const std::string& name) {
    RestoreSpec spec;
    spec.backup = name;
    const std::string dest = dir_.Sub("restored-" + name + ".img");
    spec.volumes = {{"disk0", dest}};
    auto plan = RestorePlan::Create(target_, spec);
    EXPECT_OK(plan);
    if (!plan.ok()) return "";
    EXPECT_OK((*plan)->Run());
    return FileSha256(dest);
  }
  // Overwrites `len` bytes at `off` of the volume with `byte`.
  void Scribble(uint64_t off, size_t len, char byte) {
    std::fstream f(vol_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(off));
    std::string s(len, byte);
    f.write(s.data(), static_cast<std::streamsize>(s.size()));
  }
  TempDir dir_;
  std::shared_ptr<BackupTarget> target_;
  std::string vol_;
};

TEST_F(FingerprintBackupTest, IncrementalsRecordFingerprintsAndRestoreExactly) {
  auto full = Backup("full");
  ASSERT_OK(full);
  ASSERT_FALSE(full->volumes[0].fingerprints_key.empty());
  EXPECT_EQ(full->volumes[0].fingerprints_sha256.size(), 64u);
  // Changes inside blocks, across a block boundary, and in the last block.
  Scribble(100, 10, 'x');
  Scribble((1 << 20) - 5, 10, 'y');
  Scribble((16 << 20) - 3, 3, 'z');
  const std::string want = FileSha256(vol_);
  auto inc = Backup("inc");
  ASSERT_OK(inc);
  EXPECT_GT(inc->volumes[0].bytes_reused, 0u);
  EXPECT_GT(inc->volumes[0].bytes_new, 0u);
  EXPECT_EQ(RestoreSha("inc"), want);
  // A third backup with no change reuses every data block.
  auto again = Backup("again");
  ASSERT_OK(again);
  EXPECT_EQ(again->volumes[0].bytes_new, 0u);
  EXPECT_EQ(RestoreSha("again"), want);
}

// White-box: plant a fingerprint "collision" in the reference backup (its fingerprint of block 0
// becomes that of the block's new content while its digest stays the old one). With fingerprints
// on, the incremental trusts the match and records the old digest — which proves that matches are
// taken from the reference without hashing; with them off, every block is hashed and the new
// content is recorded.
TEST_F(FingerprintBackupTest, MatchingFingerprintSkipsHashingUnlessTurnedOff) {
  auto full = Backup("full");
  ASSERT_OK(full);
  const std::string old_sha = FileSha256(vol_);
  Scribble(0, 4096, 'n');  // block 0 holds random data in MakeVolume's layout
  const std::string new_sha = FileSha256(vol_);

  const std::string root = dir_.Sub("target") + "/";
  const auto& v = full->volumes[0];
  auto fps = internal::DecodeFingerprints(ReadAll(root + v.fingerprints_key), "fp");
  ASSERT_OK(fps);
  ASSERT_NE(fps->Find(0), nullptr);
  FingerprintKey key{};
  auto desc = internal::DecodeDescriptor(ReadAll(root + "repository.json"));
  ASSERT_OK(desc);
  ASSERT_TRUE(internal::BytesFromHex(desc->fingerprint_key, key.data(), key.size()));
  const std::string block0 = ReadAll(vol_).substr(0, 256 << 10);
  fps->entries[0].fp = BlockFingerprint(key, block0.data(), block0.size());
  const std::string planted = internal::EncodeFingerprints(*fps);
  WriteAll(root + v.fingerprints_key, planted);
  BackupInfo rec = full.value();
  rec.volumes[0].fingerprints_sha256 = internal::ToHex(internal::Sha256(planted));
  WriteAll(root + "records/full.json", internal::EncodeRecord(rec));

  auto trusted = Backup("trusted");
  ASSERT_OK(trusted);
  EXPECT_EQ(RestoreSha("trusted"), old_sha) << "the planted match was not used";
  auto hashed = Backup("hashed", /*use_fingerprints=*/false);
  ASSERT_OK(hashed);
  EXPECT_EQ(RestoreSha("hashed"), new_sha);
}

TEST_F(FingerprintBackupTest, DamagedReferenceFingerprintsOnlyCostSpeed) {
  auto full = Backup("full");
  ASSERT_OK(full);
  const std::string root = dir_.Sub("target") + "/";
  std::string bytes = ReadAll(root + full->volumes[0].fingerprints_key);
  bytes[30] ^= 0x55;
  WriteAll(root + full->volumes[0].fingerprints_key, bytes);
  Scribble(5000, 100, 'q');
  auto inc = Backup("inc");
  ASSERT_OK(inc);
  EXPECT_EQ(RestoreSha("inc"), FileSha256(vol_));
}

// Repositories made before fingerprints existed have no key: backups work as before, without
// fingerprint objects.
TEST_F(FingerprintBackupTest, RepositoryWithoutKeyWritesNoFingerprints) {
  const std::string desc_path = dir_.Sub("target") + "/repository.json";
  auto desc = internal::DecodeDescriptor(ReadAll(desc_path));
  ASSERT_OK(desc);
  desc->fingerprint_key.clear();
  WriteAll(desc_path, internal::EncodeDescriptor(*desc));
  auto t = BackupTarget::Open(R"({"type":"file","endpoint":")" + dir_.Sub("target") + R"("})");
  ASSERT_OK(t);
  target_ = *t;
  auto full = Backup("full");
  ASSERT_OK(full);
  EXPECT_TRUE(full->volumes[0].fingerprints_key.empty());
  Scribble(0, 10, 'k');
  auto inc = Backup("inc");
  ASSERT_OK(inc);
  EXPECT_EQ(RestoreSha("inc"), FileSha256(vol_));
  for (const auto& f : ::vmbackup::testing::ListFiles(dir_.Sub("target")))
    EXPECT_EQ(f.find(".vfp"), std::string::npos) << f;
}

}  // namespace
}  // namespace vmbackup
