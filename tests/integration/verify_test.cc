// Verify and repair through the public API against the real targets: a local directory, S3
// (Ceph radosgw) and NFS (nfs-ganesha, NFSv3). Objects are damaged through the target's own store
// (a flipped byte in a pack, a deleted pack index, a missing or truncated pack), as another
// writer or a failing disk would. The S3 and NFS variants need the servers' environment
// (scripts/test.sh starts both; `source /tmp/s3env.sh; source /tmp/nfsenv.sh` for a shell).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <map>

#include "core/impl_access.h"
#include "core/util.h"
#include "integration_util.h"
#include "repo/format.h"
#include "repo/repository.h"
#include "target/target_impl.h"

namespace vmbackup::integration {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;
using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::TempDir;

constexpr uint32_t kBlock = 64 << 10;

class VerifyTargetTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    TargetOptions o = SmallRepo();
    o.retry_timeout_seconds = 30;
    std::string kind = GetParam();
    if (kind.size() > 4 && kind.compare(kind.size() - 4, 4, "_enc") == 0) {
      // The same tests on an encrypted repository (issue #11): Store() is the sealing store, so
      // the bytes the tests damage are inside authentic objects, as a buggy writer would leave.
      kind.resize(kind.size() - 4);
      o.encryption = "aes-256-gcm";
      o.raw_key = std::string(32, '\x7e');
    }
    if (kind == "file") {
      const std::string dir = dir_.Sub("target");
      ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
      auto c = ParseTargetConfig(TargetJson(dir));
      ASSERT_OK(c);
      config_ = *c;
    } else {
      auto c = ServerTargetConfig(kind);
      ASSERT_OK(c);
      config_ = *c;
    }
    options_ = o;
    target_ = Open();
    ASSERT_NE(target_, nullptr);
    vol_ = dir_.Sub("disk0.img");
    WriteRandomFile(vol_, 40 * kBlock + 1234, 7);  // incompressible: 16 blocks per 1 MiB pack
    auto b1 = RunBackup(target_, "b1", vol_);
    ASSERT_OK(b1);
    b1_ = *b1;
    sha_ = FileSha256(vol_);
  }

  std::shared_ptr<BackupTarget> Open() {
    auto t = BackupTarget::Open(config_, options_);
    EXPECT_OK(t);
    return t.ok() ? *t : nullptr;
  }
  internal::ObjectStore& Store() { return internal::ImplOf(target_)->repo->store(); }
  std::string Get(const std::string& key) {
    auto got = Store().Get(key);
    EXPECT_OK(got);
    return got.ok() ? *got : "";
  }
  void Put(const std::string& key, const std::string& data) {
    ASSERT_OK(Store().Put(key, data, internal::PutOptions{}));
  }
  // Where block `b` of b1's disk0 is stored: its pack id and offset in the pack.
  std::pair<std::string, uint64_t> Locate(uint64_t b) {
    auto vidx = internal::ImplOf(target_)->repo->LoadVolumeIndex("b1", b1_.volumes[0]);
    EXPECT_OK(vidx);
    auto keys = Store().ListAll(internal::kIndexPrefix);
    EXPECT_OK(keys);
    for (const auto& o : *keys) {
      const std::string id = internal::PackIdFromIndexKey(o.key);
      auto entries = internal::DecodePackIndex(Get(o.key), id, o.key);
      if (!entries.ok()) continue;
      for (const auto& e : *entries)
        if (e.digest == vidx->digests[b]) return {id, e.offset};
    }
    ADD_FAILURE() << "block " << b << " is in no pack index";
    return {"", 0};
  }
  std::string RestoredSha(const std::shared_ptr<BackupTarget>& t, const std::string& name) {
    return RestoreSha(t, name, dir_);
  }

  TempDir dir_;
  TargetConfig config_;
  TargetOptions options_;
  std::shared_ptr<BackupTarget> target_;
  std::string vol_, sha_;
  BackupInfo b1_;
};

TEST_P(VerifyTargetTest, FlippedByteIsNamedByFullVerifyAndRepairMakesTheNextBackupStoreItAgain) {
  const auto [pack, offset] = Locate(21);
  std::string bytes = Get(internal::PackKey(pack));
  bytes[offset + 5] ^= 0x10;
  Put(internal::PackKey(pack), bytes);

  auto fast = target_->Verify();
  ASSERT_OK(fast);
  EXPECT_TRUE(fast->ok()) << VerifyReportToJson(*fast);
  VerifyOptions full;
  full.read_data = true;
  auto r = target_->Verify(full);
  ASSERT_OK(r);
  std::cout << "[ REPORT   ] " << VerifyReportToJson(*r) << std::endl;
  ASSERT_THAT(r->bad_blocks, SizeIs(1));
  EXPECT_EQ(r->bad_blocks[0].backup, "b1");
  EXPECT_EQ(r->bad_blocks[0].volume, "disk0");
  EXPECT_EQ(r->bad_blocks[0].offset, 21u * kBlock);
  EXPECT_EQ(r->bad_blocks[0].pack_id, pack);
  EXPECT_EQ(r->bad_blocks[0].pack_offset, offset);
  EXPECT_THAT(r->bad_blocks[0].problem, HasSubstr("digest mismatch"));
  EXPECT_EQ(r->blocks_checked, 41u);
  EXPECT_THAT(r->damaged_backups, ElementsAre("b1"));

  RepairOptions ro;
  ro.verify.read_data = true;
  auto rep = target_->Repair(ro);
  ASSERT_OK(rep);
  ASSERT_THAT(rep->actions, SizeIs(1));
  EXPECT_EQ(rep->actions[0].action, "repacked");
  EXPECT_TRUE(rep->actions[0].done) << rep->actions[0].error;
  EXPECT_EQ(rep->actions[0].blocks_lost, 1u);
  EXPECT_THAT(rep->unrestorable_backups, ElementsAre("b1"));

  // A new target object (no cached block index): the next backup stores exactly that block.
  auto fresh = Open();
  ASSERT_NE(fresh, nullptr);
  auto b2 = RunBackup(fresh, "b2", vol_);
  ASSERT_OK(b2);
  EXPECT_EQ(b2->bytes_new, kBlock);
  EXPECT_EQ(RestoredSha(fresh, "b1"), sha_);
  auto after = fresh->Verify(full);
  ASSERT_OK(after);
  EXPECT_TRUE(after->ok()) << VerifyReportToJson(*after);
}

TEST_P(VerifyTargetTest, RepairRebuildsADeletedPackIndexAndTheBackupRestores) {
  const auto [pack, offset] = Locate(3);
  const std::string index = Get(internal::PackIndexKey(pack));
  ASSERT_OK(Store().Delete({internal::PackIndexKey(pack)}));
  auto fast = target_->Verify();
  ASSERT_OK(fast);
  EXPECT_FALSE(fast->ok());
  auto entries = internal::DecodePackIndex(index, pack, "index");
  ASSERT_OK(entries);
  EXPECT_EQ(fast->bad_block_count, entries->size());
  EXPECT_THAT(fast->bad_blocks[0].problem, HasSubstr("in no readable pack index"));

  RepairOptions dry;
  dry.dry_run = true;
  auto planned = target_->Repair(dry);
  ASSERT_OK(planned);
  ASSERT_THAT(planned->actions, SizeIs(1));
  EXPECT_EQ(planned->actions[0].action, "rebuilt index");
  EXPECT_FALSE(planned->actions[0].done);
  EXPECT_EQ(Store().Head(internal::PackIndexKey(pack)).status().code(), StatusCode::kNotFound);

  auto rep = target_->Repair();
  ASSERT_OK(rep);
  ASSERT_THAT(rep->actions, SizeIs(1));
  EXPECT_TRUE(rep->actions[0].done) << rep->actions[0].error;
  EXPECT_THAT(rep->unrestorable_backups, IsEmpty());
  EXPECT_EQ(Get(internal::PackIndexKey(pack)), index);
  auto fresh = Open();
  ASSERT_NE(fresh, nullptr);
  EXPECT_EQ(RestoredSha(fresh, "b1"), sha_);
  VerifyOptions full;
  full.read_data = true;
  auto after = fresh->Verify(full);
  ASSERT_OK(after);
  EXPECT_TRUE(after->ok()) << VerifyReportToJson(*after);
}

TEST_P(VerifyTargetTest, FastVerifyFindsAMissingAndATruncatedPack) {
  const auto [pack0, off0] = Locate(0);
  const auto [pack2, off2] = Locate(35);
  ASSERT_NE(pack0, pack2);
  ASSERT_OK(Store().Delete({internal::PackKey(pack0)}));
  const std::string p2 = Get(internal::PackKey(pack2));
  Put(internal::PackKey(pack2), p2.substr(0, off2 + 100));
  auto r = target_->Verify();
  ASSERT_OK(r);
  std::map<std::string, std::string> problems;
  for (const auto& p : r->pack_problems) problems[p.pack_id] = p.problem;
  ASSERT_THAT(problems, SizeIs(2)) << VerifyReportToJson(*r);
  EXPECT_THAT(problems[pack0], HasSubstr("missing"));
  EXPECT_THAT(problems[pack2], HasSubstr("truncated"));
  bool saw0 = false, saw35 = false;
  for (const BadBlock& b : r->bad_blocks) {
    saw0 = saw0 || (b.offset == 0 && b.pack_id == pack0);
    saw35 = saw35 || (b.offset == 35u * kBlock && b.pack_id == pack2 && b.pack_offset == off2);
  }
  EXPECT_TRUE(saw0 && saw35) << VerifyReportToJson(*r);
  EXPECT_THAT(r->damaged_backups, ElementsAre("b1"));
}

INSTANTIATE_TEST_SUITE_P(Targets, VerifyTargetTest,
                         ::testing::Values("file", "s3", "nfs3", "file_enc", "s3_enc", "nfs3_enc"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace vmbackup::integration
