// Snapshot providers inside a backup (src/volume/provider.h, src/engine/backup_planner.cc), with a
// fake provider: the parent's checkpoint reaches the provider, its changed ranges decide what is
// read, the record names the provider, snapshot, checkpoint and changed bytes, Commit runs only
// after the record is published, and a provider that fails inside the freeze window thaws once.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/backup_planner.h"
#include "store/mem_store.h"
#include "support/test_util.h"
#include "target/target_impl.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup::internal {
namespace {

using ::vmbackup::testing::TempDir;
constexpr uint64_t kBs = 64 * 1024;

// What the fake provider saw and did.
struct Log {
  std::mutex mu;
  std::vector<std::string> events;  // hooks and provider calls, in order
  std::vector<std::string> bases;   // base checkpoints handed to Prepare
  std::string data;                 // the volume's bytes at the next Take
  bool report_changes = true;
  std::vector<Extent> changed;
  Status take_result = Status::Ok();
  int take_ms = 0;  // how long Take takes
  int taken = 0;
  void Add(const std::string& e) {
    std::lock_guard<std::mutex> l(mu);
    events.push_back(e);
  }
};

class MemView final : public VolumeView {
 public:
  explicit MemView(std::string data) : data_(std::move(data)) {}
  uint64_t size() const override { return data_.size(); }
  StatusOr<std::vector<Extent>> DataExtents(uint64_t off, uint64_t len) const override {
    const uint64_t end = std::min<uint64_t>(data_.size(), off + len);
    if (off >= end) return std::vector<Extent>{};
    return std::vector<Extent>{{off, end - off}};
  }
  StatusOr<size_t> ReadAt(uint64_t off, void* buf, size_t len) const override {
    if (off > data_.size()) return OutOfRangeError("past the end");
    const size_t n = std::min<size_t>(len, data_.size() - off);
    std::memcpy(buf, data_.data() + off, n);
    return n;
  }

 private:
  std::string data_;
};

class FakeProvider final : public SnapshotProvider {
 public:
  explicit FakeProvider(Log* log) : log_(log) {}
  ~FakeProvider() override { log_->Add("release"); }
  Status Prepare(const std::vector<ProviderVolume>& volumes, const std::string&) override {
    log_->Add("prepare");
    for (const auto& v : volumes) log_->bases.push_back(v.base_checkpoint);
    base_ = volumes[0].base_checkpoint;
    return Status::Ok();
  }
  Status Take() override {
    log_->Add("take");
    if (log_->take_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(log_->take_ms));
    if (!log_->take_result.ok()) return log_->take_result;
    snapshot_ = log_->data;
    ++log_->taken;
    return Status::Ok();
  }
  StatusOr<std::vector<TakenVolume>> Open() override {
    TakenVolume t;
    t.view = std::make_unique<MemView>(snapshot_);
    t.snapshot = "fleece";
    t.point_in_time = true;
    char name[32];
    std::snprintf(name, sizeof name, "vmbackup-%016x", log_->taken);
    t.checkpoint = name;
    if (!base_.empty() && log_->report_changes) {
      t.has_changes = true;
      t.changed = log_->changed;
    }
    std::vector<TakenVolume> out;
    out.push_back(std::move(t));
    return out;
  }
  void Commit() override { log_->Add("commit"); }

 private:
  Log* log_;
  std::string base_, snapshot_;
};

class ProviderPlanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TargetOptions o;
    o.block_size = kBs;
    o.state_dir = dir_.Sub("state");
    auto t = OpenTargetOnStore(std::make_unique<MemStore>(Runtime::Default()), o);
    ASSERT_OK(t);
    target_ = *t;
    log_.data.resize(16 * kBs);
    uint64_t x = 7;
    for (char& c : log_.data) {
      x = x * 6364136223846793005ull + 1442695040888963407ull;
      c = static_cast<char>(x >> 56);
    }
    SetProviderFactoryForTest([this](const VolumeSource&, const SnapshotOptions&) {
      return std::unique_ptr<SnapshotProvider>(new FakeProvider(&log_));
    });
  }
  void TearDown() override { SetProviderFactoryForTest(nullptr); }

  // A backup of VM `vm` ("" = unnamed) with one qemu volume "disk0".
  StatusOr<BackupInfo> Run(const std::string& name, const std::string& vm = "vm1",
                           bool cancel = false, uint64_t* bytes_read = nullptr,
                           int freeze_timeout_ms = 60000) {
    BackupSpec spec;
    spec.name = name;
    spec.vm_metadata_json = vm.empty() ? "{}" : "{\"name\":\"" + vm + "\"}";
    auto v = ParseVolumeLocation("disk0", "qemu:/nonexistent/qmp.sock?node=disk0");
    if (!v.ok()) return v.status();
    spec.volumes.push_back(*v);
    spec.snapshot.freeze = [this] {
      log_.Add("freeze");
      return Status::Ok();
    };
    spec.snapshot.thaw = [this] {
      log_.Add("thaw");
      return Status::Ok();
    };
    spec.snapshot.freeze_timeout_ms = freeze_timeout_ms;
    if (cancel)
      spec.progress = [](const Progress& p) { return p.phase != Progress::Phase::kFinalizing; };
    auto job = BackupJob::Create(target_, spec);
    if (!job.ok()) return job.status();
    Status st = (*job)->Run();
    if (bytes_read != nullptr) *bytes_read = (*job)->progress().bytes_read;
    if (!st.ok()) return st;
    return (*job)->result();
  }
  std::string Restore(const std::string& backup) {
    const std::string dest = dir_.Sub("restored-" + backup);
    RestoreSpec rs;
    rs.backup = backup;
    rs.volumes.push_back(VolumeDestination{"disk0", dest});
    auto plan = RestorePlan::Create(target_, rs);
    EXPECT_OK(plan);
    if (!plan.ok()) return "";
    EXPECT_OK((*plan)->Run());
    return testing::ReadAll(dest);
  }

  TempDir dir_;
  std::shared_ptr<BackupTarget> target_;
  Log log_;
};

TEST_F(ProviderPlanTest, ChangedRangesSinceTheParentsCheckpointAreAllThatIsRead) {
  auto b1 = Run("b1");
  ASSERT_OK(b1);
  const VolumeBackupInfo& v1 = b1->volumes[0];
  EXPECT_EQ(v1.provider, "qemu");
  EXPECT_EQ(v1.snapshot, "fleece");
  EXPECT_EQ(v1.consistency, "fs-frozen");
  EXPECT_EQ(v1.checkpoint, "vmbackup-0000000000000001");
  EXPECT_EQ(v1.changed_bytes, -1);
  EXPECT_EQ(log_.events,
            (std::vector<std::string>{"prepare", "freeze", "take", "thaw", "commit", "release"}));
  const std::string at1 = log_.data;

  // Block 3 and a byte of block 9 change; the provider reports exactly those ranges.
  std::memset(log_.data.data() + 3 * kBs, 0x33, kBs);
  log_.data[9 * kBs + 5] ^= 0x5a;
  log_.changed = {{3 * kBs, kBs}, {9 * kBs + 5, 1}};
  uint64_t read = 0;
  auto b2 = Run("b2", "vm1", false, &read);
  ASSERT_OK(b2);
  EXPECT_EQ(log_.bases, (std::vector<std::string>{"", "vmbackup-0000000000000001"}));
  EXPECT_EQ(b2->parent, "b1");  // chosen by the VM's name
  EXPECT_EQ(b2->volumes[0].changed_bytes, static_cast<int64_t>(kBs + 1));
  EXPECT_EQ(b2->volumes[0].checkpoint, "vmbackup-0000000000000002");
  EXPECT_EQ(read, 2 * kBs);
  EXPECT_TRUE(Restore("b2") == log_.data);
  EXPECT_TRUE(Restore("b1") == at1);
}

TEST_F(ProviderPlanTest, WithoutChangesTheBackupReadsEverythingAndNamesNoParent) {
  ASSERT_OK(Run("b1"));
  log_.report_changes = false;  // the base checkpoint is gone from the host
  log_.data[0] ^= 1;
  uint64_t read = 0;
  auto b2 = Run("b2", "vm1", false, &read);
  ASSERT_OK(b2);
  EXPECT_EQ(b2->parent, "");
  EXPECT_EQ(b2->volumes[0].changed_bytes, -1);
  EXPECT_EQ(read, 16 * kBs);
  EXPECT_TRUE(Restore("b2") == log_.data);
}

TEST_F(ProviderPlanTest, AnUnnamedVmHasNoAutomaticParent) {
  ASSERT_OK(Run("b1", ""));
  ASSERT_OK(Run("b2", ""));
  EXPECT_EQ(log_.bases, (std::vector<std::string>{"", ""}));
}

TEST_F(ProviderPlanTest, ATakeThatFailsThawsOnceAndCommitsNothing) {
  log_.take_result = UnavailableError("QEMU went away");
  auto b = Run("failed");
  EXPECT_THAT(b, StatusIs(StatusCode::kUnavailable, "QEMU went away"));
  EXPECT_EQ(log_.events,
            (std::vector<std::string>{"prepare", "freeze", "take", "thaw", "release"}));
  EXPECT_THAT(target_->GetBackup("failed"), StatusIs(StatusCode::kNotFound, "failed"));
}

TEST_F(ProviderPlanTest, SnapshotsSlowerThanTheFreezeDeadlineThawAndFailWithNothingRead) {
  log_.take_ms = 150;
  uint64_t read = 1;
  auto b = Run("slow", "vm1", false, &read, /*freeze_timeout_ms=*/50);
  EXPECT_THAT(b, StatusIs(StatusCode::kDeadlineExceeded, "freeze deadline of 50 ms"));
  EXPECT_EQ(log_.events,
            (std::vector<std::string>{"prepare", "freeze", "take", "thaw", "release"}));
  EXPECT_EQ(read, 0u);
  EXPECT_THAT(target_->GetBackup("slow"), StatusIs(StatusCode::kNotFound, "slow"));
  // No deadline (0), or one the snapshots meet: the same backup succeeds.
  log_.events.clear();
  ASSERT_OK(Run("unbounded", "vm1", false, nullptr, 0));
  ASSERT_OK(Run("in-time", "vm1", false, nullptr, 5000));
  auto negative = Run("negative", "vm1", false, nullptr, -1);
  EXPECT_THAT(negative, StatusIs(StatusCode::kInvalidArgument, "freeze_timeout_ms"));
}

TEST_F(ProviderPlanTest, ACancelledBackupCommitsNothing) {
  auto b = Run("cancelled", "vm1", /*cancel=*/true);
  EXPECT_THAT(b, StatusIs(StatusCode::kCancelled, ""));
  for (const auto& e : log_.events) EXPECT_NE(e, "commit");
  EXPECT_EQ(log_.events.back(), "release");
}

TEST(VolumeLocationTest, ParsesEveryFormAndRoundTrips) {
  auto q =
      ParseVolumeLocation("d", "qemu:/run/vm/qmp.sock?node=disk0&nbd=/run/nbd.sock&scratch=/s");
  ASSERT_OK(q);
  EXPECT_EQ(q->provider, VolumeProvider::kQemu);
  EXPECT_EQ(q->qemu.qmp_socket, "/run/vm/qmp.sock");
  EXPECT_EQ(q->qemu.node, "disk0");
  EXPECT_EQ(q->qemu.nbd_socket, "/run/nbd.sock");
  EXPECT_EQ(q->qemu.scratch_dir, "/s");
  auto r = ParseVolumeLocation("d", "rbd:pool/img?conf=/etc/ceph/c.conf&id=backup");
  ASSERT_OK(r);
  EXPECT_EQ(r->provider, VolumeProvider::kRbd);
  EXPECT_EQ(r->rbd.pool, "pool");
  EXPECT_EQ(r->rbd.image, "img");
  EXPECT_EQ(r->rbd.conf, "/etc/ceph/c.conf");
  EXPECT_EQ(r->rbd.client_id, "backup");
  auto f = ParseVolumeLocation("d", "/var/lib/vm/disk.img");
  ASSERT_OK(f);
  EXPECT_EQ(f->provider, VolumeProvider::kFile);
  EXPECT_EQ(f->path, "/var/lib/vm/disk.img");
  auto odd = ParseVolumeLocation("d", "file:rbd:not-an-image");
  ASSERT_OK(odd);
  EXPECT_EQ(odd->path, "rbd:not-an-image");
  for (const auto* v : {&*q, &*r, &*f, &*odd}) {
    auto again = ParseVolumeLocation("d", VolumeLocation(*v));
    ASSERT_OK(again);
    EXPECT_EQ(VolumeLocation(*again), VolumeLocation(*v));
  }
}

TEST(VolumeLocationTest, BadLocationsSayWhatIsWrong) {
  EXPECT_THAT(ParseVolumeLocation("d", ""), StatusIs(StatusCode::kInvalidArgument, "empty"));
  EXPECT_THAT(ParseVolumeLocation("d", "qemu:/q.sock"),
              StatusIs(StatusCode::kInvalidArgument, "no node"));
  EXPECT_THAT(ParseVolumeLocation("d", "qemu:?node=x"),
              StatusIs(StatusCode::kInvalidArgument, "no QMP socket"));
  EXPECT_THAT(ParseVolumeLocation("d", "qemu:/q.sock?node=x&colour=red"),
              StatusIs(StatusCode::kInvalidArgument, "unknown parameter 'colour'"));
  EXPECT_THAT(ParseVolumeLocation("d", "qemu:/q.sock?node=x&node=y"),
              StatusIs(StatusCode::kInvalidArgument, "given twice"));
  EXPECT_THAT(ParseVolumeLocation("d", "qemu:/q.sock?node"),
              StatusIs(StatusCode::kInvalidArgument, "not KEY=VALUE"));
  for (const char* bad : {"rbd:pool", "rbd:/img", "rbd:pool/", "rbd:a/b/c"})
    EXPECT_THAT(ParseVolumeLocation("d", bad),
                StatusIs(StatusCode::kInvalidArgument, "rbd:POOL/IMAGE"))
        << bad;
  EXPECT_THAT(ParseVolumeLocation("d", "file:"), StatusIs(StatusCode::kInvalidArgument, "no path"));
}

TEST(CheckpointNameTest, OnlyTheProvidersFormIsAccepted) {
  auto n = NewCheckpointName();
  ASSERT_OK(n);
  EXPECT_TRUE(IsCheckpointName(*n));
  EXPECT_TRUE(IsCheckpointName("vmbackup-0123456789abcdef"));
  for (const char* bad :
       {"", "vmbackup-", "vmbackup-0123456789ABCDEF", "vmbackup-0123456789abcde",
        "vmbackup-0123456789abcdef0", "xmbackup-0123456789abcdef", "vmbackup-../../../etc/x"})
    EXPECT_FALSE(IsCheckpointName(bad)) << bad;
}

}  // namespace
}  // namespace vmbackup::internal
