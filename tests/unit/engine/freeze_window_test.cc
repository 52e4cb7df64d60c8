// One freeze window per backup (SnapshotOptions::freeze / thaw): the hooks run once for all
// volumes, thaw always follows a successful freeze, and the record says how long the guest was
// frozen and how consistent each volume is (docs/FORMAT.md "Records").
#include <gtest/gtest.h>

#include <mutex>
#include <string>
#include <vector>

#include "repo/format.h"
#include "store/mem_store.h"
#include "support/test_util.h"
#include "target/target_impl.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup::internal {
namespace {

using ::vmbackup::testing::TempDir;

class FreezeWindowTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TargetOptions o;
    o.block_size = 64 * 1024;
    o.state_dir = dir_.Sub("state");
    auto t = OpenTargetOnStore(std::make_unique<MemStore>(Runtime::Default()), o);
    ASSERT_OK(t);
    target_ = *t;
    for (int i = 0; i < 3; ++i) {
      const std::string path = dir_.Sub("disk" + std::to_string(i) + ".img");
      testing::MakeVolume(path, 1 << 20, 10 + i);
      spec_.volumes.push_back({"disk" + std::to_string(i), path, false, {}});
    }
    spec_.snapshot.freeze = [this] {
      Log("freeze");
      return freeze_result_;
    };
    spec_.snapshot.thaw = [this] {
      Log("thaw");
      std::lock_guard<std::mutex> l(mu_);
      if (job_ != nullptr) read_at_thaw_ = job_->progress().bytes_read;
      return Status::Ok();
    };
  }
  void Log(const std::string& e) {
    std::lock_guard<std::mutex> l(mu_);
    events_.push_back(e);
  }
  StatusOr<BackupInfo> Run(const std::string& name) {
    BackupSpec spec = spec_;
    spec.name = name;
    auto job = BackupJob::Create(target_, spec);
    if (!job.ok()) return job.status();
    {
      std::lock_guard<std::mutex> l(mu_);
      job_ = job->get();
    }
    Status st = (*job)->Run();
    if (!st.ok()) return st;
    return (*job)->result();
  }

  TempDir dir_;
  std::shared_ptr<BackupTarget> target_;
  BackupSpec spec_;
  std::mutex mu_;
  std::vector<std::string> events_;       // the hooks' calls; guarded by mu_ while a job runs
  BackupJob* job_ = nullptr;              // the running job (for its progress)
  uint64_t read_at_thaw_ = ~uint64_t{0};  // bytes the job had read when thaw ran
  Status freeze_result_ = Status::Ok();
};

TEST_F(FreezeWindowTest, DirectReadsFreezeOnceAndThawOnceAfterTheBackup) {
  spec_.snapshot.mode = SnapshotOptions::Mode::kDirect;
  auto info = Run("direct");
  ASSERT_OK(info);
  EXPECT_EQ(events_, (std::vector<std::string>{"freeze", "thaw"}));
  EXPECT_EQ(read_at_thaw_, 3u << 20);  // thawed after every byte was read
  EXPECT_GE(info->freeze_seconds, 0);
  EXPECT_LE(info->freeze_seconds, info->seconds + 1);
  ASSERT_EQ(info->volumes.size(), 3u);
  for (const auto& v : info->volumes) {
    EXPECT_EQ(v.snapshot, "direct");
    EXPECT_EQ(v.consistency, "fs-frozen");  // read while the guest stayed frozen
  }
  // The record on the target says the same.
  auto stored = target_->GetBackup("direct");
  ASSERT_OK(stored);
  EXPECT_EQ(stored->volumes[2].consistency, "fs-frozen");
  EXPECT_DOUBLE_EQ(stored->freeze_seconds, info->freeze_seconds);
}

TEST_F(FreezeWindowTest, ThawEarlyThawsBeforeReadingAndRecordsUnknownConsistency) {
  spec_.snapshot.mode = SnapshotOptions::Mode::kDirect;
  spec_.snapshot.thaw_after_backup = false;
  auto info = Run("early");
  ASSERT_OK(info);
  EXPECT_EQ(events_, (std::vector<std::string>{"freeze", "thaw"}));
  EXPECT_EQ(read_at_thaw_, 0u);  // thawed before anything was read
  for (const auto& v : info->volumes) {
    EXPECT_EQ(v.snapshot, "direct");
    EXPECT_EQ(v.consistency, "unknown");
  }
}

TEST_F(FreezeWindowTest, WithoutHooksNothingIsFrozenAndDirectReadsAreUnknown) {
  spec_.snapshot = SnapshotOptions{};
  spec_.snapshot.mode = SnapshotOptions::Mode::kDirect;
  auto info = Run("nohooks");
  ASSERT_OK(info);
  EXPECT_EQ(info->freeze_seconds, -1);
  for (const auto& v : info->volumes) EXPECT_EQ(v.consistency, "unknown");
  EXPECT_EQ(BackupInfoToJson(*info).find("freeze_seconds"), std::string::npos);
}

TEST_F(FreezeWindowTest, AFailedFreezeReadsNothingAndThawsNothing) {
  freeze_result_ = FailedPreconditionError("guest agent not answering");
  auto info = Run("refused");
  EXPECT_THAT(info, StatusIs(StatusCode::kFailedPrecondition, "guest agent not answering"));
  EXPECT_EQ(events_, std::vector<std::string>{"freeze"});
  EXPECT_THAT(target_->GetBackup("refused"), StatusIs(StatusCode::kNotFound, "refused"));
}

TEST_F(FreezeWindowTest, AMissingVolumeIsFoundBeforeTheGuestIsFrozen) {
  // Providers check their volumes before the window opens (a failing snapshot inside the window
  // is ProviderPlanTest.ATakeThatFailsThawsOnceAndCommitsNothing).
  spec_.volumes[1].path = dir_.Sub("missing.img");
  spec_.snapshot.mode = SnapshotOptions::Mode::kDirect;
  auto info = Run("failed");
  EXPECT_THAT(info, StatusIs(StatusCode::kNotFound, "missing.img"));
  EXPECT_TRUE(events_.empty());
}

TEST_F(FreezeWindowTest, AReflinkModeFailureThawsOnce) {
  // The test directory's filesystem may or may not clone; where it cannot, kReflink fails after
  // the freeze and must thaw; where it can, the clones are taken in the window and thawed at once.
  spec_.snapshot.mode = SnapshotOptions::Mode::kReflink;
  auto info = Run("reflink");
  EXPECT_EQ(events_, (std::vector<std::string>{"freeze", "thaw"}));
  if (info.ok()) {
    EXPECT_EQ(read_at_thaw_, 0u);  // thawed before reading: the clones hold the instant
    for (const auto& v : info->volumes) {
      EXPECT_EQ(v.snapshot, "reflink");
      EXPECT_EQ(v.consistency, "fs-frozen");
    }
  } else {
    EXPECT_THAT(info, StatusIs(StatusCode::kFailedPrecondition, "reflink"));
  }
}

TEST_F(FreezeWindowTest, ARunningVmIsNotReadDirectlyUnlessFrozenOrAllowed) {
  // kDirect stands for a filesystem without reflink: nothing can be cloned.
  spec_.snapshot.mode = SnapshotOptions::Mode::kDirect;
  spec_.snapshot.vm_state = SnapshotOptions::VmState::kRunning;
  spec_.snapshot.freeze = nullptr;
  spec_.snapshot.thaw = nullptr;
  EXPECT_THAT(Run("running-unfrozen"), StatusIs(StatusCode::kFailedPrecondition,
                                                "volume 'disk0' of a running VM cannot be cloned"));
  EXPECT_THAT(target_->GetBackup("running-unfrozen"),
              StatusIs(StatusCode::kNotFound, "running-unfrozen"));

  spec_.snapshot.allow_inconsistent = true;
  auto allowed = Run("running-allowed");
  ASSERT_OK(allowed);
  for (const auto& v : allowed->volumes) EXPECT_EQ(v.consistency, "unknown");
}

TEST_F(FreezeWindowTest, ARunningVmKeptFrozenIsReadAndAThawEarlyOneIsRefusedButThawed) {
  spec_.snapshot.mode = SnapshotOptions::Mode::kDirect;
  spec_.snapshot.vm_state = SnapshotOptions::VmState::kRunning;
  auto frozen = Run("running-frozen");
  ASSERT_OK(frozen);
  for (const auto& v : frozen->volumes) EXPECT_EQ(v.consistency, "fs-frozen");
  events_.clear();
  spec_.snapshot.thaw_after_backup = false;
  EXPECT_THAT(Run("running-thawed"), StatusIs(StatusCode::kFailedPrecondition, "running VM"));
  EXPECT_EQ(events_, (std::vector<std::string>{"freeze", "thaw"}));
}

TEST_F(FreezeWindowTest, AStoppedVmIsRecordedStopped) {
  spec_.snapshot = SnapshotOptions{};
  spec_.snapshot.vm_state = SnapshotOptions::VmState::kStopped;
  auto info = Run("stopped");
  ASSERT_OK(info);
  for (const auto& v : info->volumes) EXPECT_EQ(v.consistency, "stopped");
  auto stored = target_->GetBackup("stopped");
  ASSERT_OK(stored);
  EXPECT_EQ(stored->volumes[0].consistency, "stopped");
}

TEST(RecordConsistencyTest, HostileValuesAreRefusedAndOldRecordsDecode) {
  BackupInfo r;
  r.name = "b";
  r.volumes.resize(1);
  VolumeBackupInfo& v = r.volumes[0];
  v.name = "disk0";
  v.size = 65536;
  v.block_size = 65536;
  v.data_blocks = 1;
  v.index_key = "volumes/b/disk0.0123abcd.vidx";
  v.index_sha256 = std::string(64, 'a');
  // Without the new fields (a record of an earlier version): empty / -1.
  auto old = DecodeRecord(EncodeRecord(r), "record");
  ASSERT_OK(old);
  EXPECT_EQ(old->volumes[0].snapshot, "");
  EXPECT_EQ(old->volumes[0].consistency, "");
  EXPECT_EQ(old->freeze_seconds, -1);
  v.snapshot = "reflink";
  v.consistency = "crash-consistent";
  r.freeze_seconds = 0.25;
  auto now = DecodeRecord(EncodeRecord(r), "record");
  ASSERT_OK(now);
  EXPECT_EQ(now->volumes[0].snapshot, "reflink");
  EXPECT_EQ(now->volumes[0].consistency, "crash-consistent");
  EXPECT_DOUBLE_EQ(now->freeze_seconds, 0.25);
  v.consistency = "perfect";
  EXPECT_THAT(DecodeRecord(EncodeRecord(r), "record"),
              StatusIs(StatusCode::kDataLoss, "consistency"));
  v.consistency = "stopped";
  ASSERT_OK(DecodeRecord(EncodeRecord(r), "record"));
  v.snapshot = "../x";
  EXPECT_THAT(DecodeRecord(EncodeRecord(r), "record"), StatusIs(StatusCode::kDataLoss, "snapshot"));
  v.snapshot = "direct";
  r.freeze_seconds = 1e12;
  EXPECT_THAT(DecodeRecord(EncodeRecord(r), "record"),
              StatusIs(StatusCode::kDataLoss, "freeze_seconds"));
}

}  // namespace
}  // namespace vmbackup::internal
