// Retention and garbage collection (issue #11) on real targets: a local directory, radosgw (S3)
// and nfs-ganesha (NFSv3). Through the public API (Forget, CollectGarbage with a grace of 0, so
// each step takes one more run), plus the internal store to plant what killed writers leave.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <atomic>
#include <cstring>
#include <future>
#include <map>
#include <mutex>
#include <random>

#include "core/impl_access.h"
#include "integration_util.h"
#include "support/test_util.h"
#include "target/target_impl.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup {
namespace {

using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::TempDir;
namespace integ = ::vmbackup::integration;

class GcIntegrationTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    StatusOr<std::shared_ptr<BackupTarget>> t = Status::Ok();
    if (GetParam() == "local") {
      ASSERT_EQ(::mkdir(dir_.Sub("target").c_str(), 0700), 0);
      t = integ::OpenTarget(dir_.Sub("target"));
    } else {
      auto config = integ::ServerTargetConfig(GetParam());
      ASSERT_OK(config);
      t = BackupTarget::Open(*config, integ::SmallRepo());
    }
    ASSERT_OK(t);
    target_ = *t;
  }
  void TearDown() override {
    if (!target_) return;
    // Leave nothing on the shared servers: every backup, then everything else under the prefix.
    auto& store = store_();
    for (const char* p : {"records/", "volumes/", "index/", "packs/", "gc/", "leases/", ".tmp/"}) {
      auto keys = store.ListAll(p);
      if (!keys.ok()) continue;
      std::vector<std::string> k;
      for (auto& o : *keys) k.push_back(o.key);
      if (!k.empty()) (void)store.Delete(k);
    }
    (void)store.Delete({"repository.json"});
  }
  internal::ObjectStore& store_() { return internal::ImplOf(target_)->repo->store(); }

  std::string Volume(const std::string& name, uint64_t seed, uint64_t size = 4 << 20) {
    const std::string path = dir_.Sub(name);
    integ::WriteRandomFile(path, size, seed);
    return path;
  }
  void Backup(const std::string& name, const std::string& vol, const std::string& vm = "vm1") {
    BackupSpec spec;
    spec.name = name;
    spec.vm_metadata_json = R"({"name":")" + vm + R"(","namespace":"ns"})";
    spec.volumes.push_back({"disk0", vol, false, {}});
    auto job = BackupJob::Create(target_, spec);
    ASSERT_OK(job);
    ASSERT_OK((*job)->Run());
  }
  GcReport Gc(bool dry_run = false) {
    GcOptions o;
    o.grace_seconds = 0;
    o.dry_run = dry_run;
    auto r = target_->CollectGarbage(o);
    EXPECT_OK(r);
    return r.ok() ? *r : GcReport{};
  }
  uint64_t Bytes(const std::string& prefix) {
    auto keys = store_().ListAll(prefix);
    EXPECT_OK(keys);
    uint64_t n = 0;
    for (auto& o : *keys) n += o.size;
    return n;
  }
  size_t Count(const std::string& prefix) {
    auto keys = store_().ListAll(prefix);
    EXPECT_OK(keys);
    return keys.ok() ? keys->size() : 0;
  }

  TempDir dir_;
  std::shared_ptr<BackupTarget> target_;
};

TEST_P(GcIntegrationTest, ForgetThenGcLeavesExactlyWhatTheRemainingBackupsUse) {
  const std::string v1 = Volume("v1.img", 1), v2 = Volume("v2.img", 2), v3 = Volume("v3.img", 3);
  Backup("a-1", v1);
  Backup("a-2", v2);
  Backup("a-3", v3);
  Backup("b-1", v1, "vm2");  // another VM, sharing a-1's data
  const uint64_t packs_with_all = Bytes("packs/");

  RetentionPolicy keep_one;
  keep_one.keep_last = 1;
  ForgetOptions dry_run;
  dry_run.dry_run = true;
  auto dry = target_->Forget(keep_one, dry_run);
  ASSERT_OK(dry);
  EXPECT_EQ(dry->decision.forget, (std::vector<std::string>{"a-2", "a-1"}));
  EXPECT_TRUE(dry->deleted.empty());
  auto forgot = target_->Forget(keep_one);
  ASSERT_OK(forgot);
  EXPECT_EQ(forgot->deleted, (std::vector<std::string>{"a-2", "a-1"}));

  // a-2's packs are dead (a-1's are still used by b-1); a dry run changes nothing.
  const GcReport first = Gc();
  EXPECT_GT(first.dead_packs, 0u);
  const GcReport dry_gc = Gc(/*dry_run=*/true);
  EXPECT_EQ(dry_gc.indexes_deleted, first.dead_packs);
  EXPECT_EQ(Bytes("packs/"), packs_with_all);
  const GcReport second = Gc();
  EXPECT_EQ(second.indexes_deleted, first.dead_packs);
  const GcReport third = Gc();
  EXPECT_EQ(third.packs_deleted, first.dead_packs);
  EXPECT_EQ(Bytes("packs/"), packs_with_all - first.dead_pack_bytes);
  // Every remaining pack is live: a further run finds nothing dead.
  const GcReport after = Gc();
  EXPECT_EQ(after.dead_packs, 0u);
  EXPECT_EQ(after.partly_live_packs, 0u);
  std::cout << "[ BYTES ] " << GetParam() << ": packs " << packs_with_all << " -> "
            << Bytes("packs/") << " after forgetting a-1 and a-2\n";

  EXPECT_EQ(integ::RestoreSha(target_, "a-3", dir_), FileSha256(v3));
  EXPECT_EQ(integ::RestoreSha(target_, "b-1", dir_), FileSha256(v1));
}

TEST_P(GcIntegrationTest, BackupThatLoadedTheIndexBeforeGcCondemnedItsPacksStaysRestorable) {
  const std::string vol = Volume("v.img", 7, 8 << 20);
  Backup("old", vol);
  ASSERT_OK(target_->DeleteBackup("old"));
  const GcReport listed = Gc();  // old's packs become candidates
  ASSERT_GT(listed.dead_packs, 0u);

  // "new" backs up the same data: it loads the index (old's packs still indexed) and reuses every
  // block. Its first progress report in the transfer phase waits until GC condemned those packs
  // and tried to delete them.
  std::promise<void> gc_done;
  std::shared_future<void> gc_done_f = gc_done.get_future().share();
  std::promise<void> transferring;
  std::atomic<bool> told{false};
  BackupSpec spec;
  spec.name = "new";
  spec.vm_metadata_json = R"({"name":"vm1","namespace":"ns"})";
  spec.volumes.push_back({"disk0", vol, false, {}});
  spec.progress_interval_ms = 0;
  spec.progress = [&](const Progress& p) {
    if (p.phase == Progress::Phase::kTransferring && !told.exchange(true)) {
      transferring.set_value();
      gc_done_f.wait();
    }
    return true;
  };
  auto job = BackupJob::Create(target_, spec);
  ASSERT_OK(job);
  ASSERT_OK((*job)->Start());
  transferring.get_future().wait();
  EXPECT_EQ(Count("leases/"), 1u);
  const GcReport condemn = Gc();
  EXPECT_EQ(condemn.indexes_deleted, listed.dead_packs);
  EXPECT_EQ(condemn.leases_active, 1u);
  const GcReport held = Gc();
  EXPECT_EQ(held.packs_deleted, 0u);
  EXPECT_EQ(held.packs_leased, listed.dead_packs);
  gc_done.set_value();
  ASSERT_OK((*job)->Wait());
  auto info = (*job)->result();
  ASSERT_OK(info);
  EXPECT_GT(info->bytes_reused, 0u);
  EXPECT_EQ(Count("leases/"), 0u);
  // Ready, so restorable now (its blocks are in packs whose index GC deleted: read from their
  // trailers), before any further GC run.
  EXPECT_EQ(integ::RestoreSha(target_, "new", dir_), FileSha256(vol));

  // The lease is gone and the record published: GC finds the packs live again.
  const GcReport recheck = Gc();
  EXPECT_EQ(recheck.packs_deleted, 0u);
  EXPECT_EQ(recheck.indexes_restored, listed.dead_packs);
  Gc();
  Gc();
  EXPECT_EQ(integ::RestoreSha(target_, "new", dir_), FileSha256(vol));
}

TEST_P(GcIntegrationTest, LeftoversOfKilledWritersGoAfterTwoRuns) {
  Backup("b1", Volume("v.img", 9));
  // A pack a killed backup stored without its index; a temporary of a killed upload (on S3 a plain
  // object under .tmp/, which GC treats the same way).
  auto& store = store_();
  const std::string orphan_id = "0123456789abcdef0123456789abcdef";
  std::string pack = "VMBPACK1";
  pack += std::string(1000, 'z');
  ASSERT_OK(store.Put("packs/01/" + orphan_id + ".pack", pack, {}));
  ASSERT_OK(store.Put(".tmp/deadbeefdeadbeef", "partial upload", {}));
  const uint64_t packs_before = Bytes("packs/");
  const GcReport first = Gc();
  EXPECT_EQ(first.orphan_packs_deleted + first.temporaries_deleted, 0u);
  EXPECT_EQ(Bytes("packs/"), packs_before);
  EXPECT_GE(first.reclaimable_bytes, pack.size());
  const GcReport second = Gc();
  EXPECT_EQ(second.orphan_packs_deleted, 1u);
  EXPECT_EQ(second.temporaries_deleted, 1u);
  EXPECT_EQ(Bytes("packs/"), packs_before - pack.size());
  EXPECT_EQ(Count(".tmp/deadbeefdeadbeef"), 0u);
  EXPECT_EQ(integ::RestoreSha(target_, "b1", dir_), FileSha256(dir_.Sub("v.img")));
}

TEST_P(GcIntegrationTest, PacksMostlyDeadAreRepackedAndTheirBackupStillRestores) {
  // SmallRepo: 64 KiB blocks, 1 MiB packs (16 random blocks each). "keep" shares every fourth
  // block with "gone"; once "gone" is deleted, each of its packs is a quarter live.
  const std::string a = Volume("a.img", 21, 4 << 20);
  std::string b = ::vmbackup::testing::ReadAll(a);
  std::mt19937_64 rng(22);
  for (size_t blk = 0; blk < b.size() / 65536; ++blk) {
    if (blk % 4 == 0) continue;
    for (size_t i = blk * 65536; i < (blk + 1) * 65536; i += 8) {
      const uint64_t x = rng();
      std::memcpy(&b[i], &x, 8);
    }
  }
  ::vmbackup::testing::WriteAll(dir_.Sub("b.img"), b);
  Backup("gone", a);
  Backup("keep", dir_.Sub("b.img"));
  ASSERT_OK(target_->DeleteBackup("gone"));
  const uint64_t before = Bytes("packs/");
  const GcReport first = Gc();
  ASSERT_GT(first.repack_candidates, 0u);
  const GcReport second = Gc();
  EXPECT_EQ(second.packs_repacked, first.repack_candidates);
  EXPECT_EQ(integ::RestoreSha(target_, "keep", dir_), FileSha256(dir_.Sub("b.img")));
  const GcReport third = Gc();
  EXPECT_EQ(third.packs_deleted, first.repack_candidates);
  const GcReport after = Gc();
  EXPECT_EQ(after.repack_candidates, 0u);
  EXPECT_EQ(after.dead_packs, 0u);
  std::cout << "[ BYTES ] " << GetParam() << ": packs " << before << " -> " << Bytes("packs/")
            << " after repacking " << second.packs_repacked << " packs\n";
  EXPECT_LT(Bytes("packs/"), before);
  EXPECT_EQ(integ::RestoreSha(target_, "keep", dir_), FileSha256(dir_.Sub("b.img")));
}

INSTANTIATE_TEST_SUITE_P(Targets, GcIntegrationTest, ::testing::Values("local", "s3", "nfs3"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace vmbackup
