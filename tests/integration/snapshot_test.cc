// Point-in-time snapshots of volumes that a writer keeps changing (issue #12, "file" provider):
// a reflink clone on a real XFS (reflink=1) on a loop device, taken inside one freeze window;
// and on the machine's ext4 (no reflink) a running VM's volume is refused unless kept frozen.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>
#include <atomic>
#include <cstring>
#include <string>

#include "integration_util.h"

namespace vmbackup::integration {
namespace {

using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::ReadAll;
using ::vmbackup::testing::TempDir;

constexpr uint64_t kVolume = 32 << 20;
constexpr size_t kChunk = 64 << 10;

// A child process that rewrites random 64 KiB chunks of `path` with a stamp until killed; the
// number of chunks written so far is in shared memory.
class Writer {
 public:
  explicit Writer(const std::string& path) {
    count_ = static_cast<std::atomic<uint64_t>*>(::mmap(nullptr, sizeof(std::atomic<uint64_t>),
                                                        PROT_READ | PROT_WRITE,
                                                        MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    new (count_) std::atomic<uint64_t>(0);
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(path.c_str(), O_WRONLY);
      if (fd < 0) ::_exit(3);
      char buf[kChunk];
      uint64_t x = 0x9e3779b97f4a7c15ull;
      for (uint64_t n = 1;; ++n) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::memset(buf, static_cast<int>(n & 0xff), sizeof buf);
        std::memcpy(buf, &n, sizeof n);
        const off_t off = static_cast<off_t>((x % (kVolume / kChunk)) * kChunk);
        if (::pwrite(fd, buf, sizeof buf, off) != static_cast<ssize_t>(sizeof buf)) ::_exit(4);
        count_->store(n);
      }
    }
  }
  ~Writer() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::kill(pid_, SIGCONT);
      ::waitpid(pid_, nullptr, 0);
    }
    ::munmap(count_, sizeof(std::atomic<uint64_t>));
  }
  bool ok() const { return pid_ > 0; }
  uint64_t count() const { return count_->load(); }
  // Stops the writer and waits until it is stopped (no write is in flight afterwards).
  Status Stop() {
    if (::kill(pid_, SIGSTOP) != 0) return InternalError("SIGSTOP failed");
    int st = 0;
    if (::waitpid(pid_, &st, WUNTRACED) != pid_ || !WIFSTOPPED(st))
      return InternalError("the writer did not stop");
    return Status::Ok();
  }
  Status Resume() {
    return ::kill(pid_, SIGCONT) == 0 ? Status::Ok() : InternalError("SIGCONT failed");
  }

 private:
  pid_t pid_ = -1;
  std::atomic<uint64_t>* count_ = nullptr;
};

class SnapshotTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (mounted_) {
      int rc = 0;
      Shell("umount " + Quote(dir_.Sub("xfs")) + " 2>&1", &rc);
      EXPECT_EQ(rc, 0) << "umount of the test XFS failed";
    }
  }
  // An XFS with reflink=1 on a loop device, mounted at dir_/xfs.
  void MountXfs() {
    ASSERT_TRUE(CanMount()) << NoMountReason();
    int rc = 0;
    const std::string img = dir_.Sub("xfs.img");
    ASSERT_EQ(::mkdir(dir_.Sub("xfs").c_str(), 0700), 0);
    std::string out =
        Shell("truncate -s 512M " + Quote(img) + " && mkfs.xfs -q -m reflink=1 " + Quote(img) +
                  " 2>&1 && mount -o loop " + Quote(img) + " " + Quote(dir_.Sub("xfs")) + " 2>&1",
              &rc);
    ASSERT_EQ(rc, 0) << "cannot make and mount an XFS with reflink on a loop device: " << out;
    mounted_ = true;
  }

  StatusOr<std::shared_ptr<BackupTarget>> Target() {
    ::mkdir(dir_.Sub("target").c_str(), 0700);
    return OpenTarget(dir_.Sub("target"));
  }

  TempDir dir_;
  bool mounted_ = false;
};

TEST_F(SnapshotTest, AReflinkCloneOnXfsHoldsTheFreezeInstantWhileAWriterKeepsWriting) {
  ASSERT_NO_FATAL_FAILURE(MountXfs());
  const std::string vol = dir_.Sub("xfs/disk0.img");
  WriteRandomFile(vol, kVolume, 12);
  Writer writer(vol);
  ASSERT_TRUE(writer.ok());
  while (writer.count() < 100) ::usleep(1000);  // writing before the backup starts

  auto target = Target();
  ASSERT_OK(target);
  std::string instant;  // the volume as it was inside the freeze window
  uint64_t writes_at_thaw = 0;
  BackupSpec spec;
  spec.name = "running";
  spec.volumes.push_back({"disk0", vol, false, {}});
  spec.snapshot.mode = SnapshotOptions::Mode::kReflink;
  spec.snapshot.vm_state = SnapshotOptions::VmState::kRunning;
  spec.snapshot.freeze = [&]() -> Status {
    Status stopped = writer.Stop();
    if (!stopped.ok()) return stopped;
    instant = ReadAll(vol);
    return Status::Ok();
  };
  spec.snapshot.thaw = [&]() -> Status {
    writes_at_thaw = writer.count();
    return writer.Resume();
  };
  auto job = BackupJob::Create(*target, spec);
  ASSERT_OK(job);
  ASSERT_OK((*job)->Run());
  const uint64_t writes_after = writer.count();
  auto info = (*job)->result();
  ASSERT_OK(info);
  ASSERT_EQ(instant.size(), kVolume);
  EXPECT_EQ(info->volumes[0].snapshot, "reflink");
  EXPECT_EQ(info->volumes[0].consistency, "fs-frozen");
  EXPECT_GE(info->freeze_seconds, 0);
  // The writer went on during the backup, yet the backup holds the instant of the window.
  EXPECT_GT(writes_after, writes_at_thaw) << "the writer made no write during the backup";
  const std::string restored = dir_.Sub("restored.img");
  ASSERT_OK(RunRestore(*target, "running", restored));
  EXPECT_TRUE(ReadAll(restored) == instant) << "the restore is not the volume at the freeze";
  ASSERT_OK(writer.Stop());
  EXPECT_FALSE(ReadAll(vol) == instant) << "the live volume never changed after the freeze";
  ReportPath("XFS reflink=1 on a loop device, " + std::to_string(writes_after - writes_at_thaw) +
             " writes during the backup");
}

TEST_F(SnapshotTest, WithoutAFreezeAnXfsCloneIsCrashConsistentAndTheCloneIsGoneAfterwards) {
  ASSERT_NO_FATAL_FAILURE(MountXfs());
  const std::string vol = dir_.Sub("xfs/disk0.img");
  WriteRandomFile(vol, kVolume, 13);
  auto target = Target();
  ASSERT_OK(target);
  BackupSpec spec;
  spec.name = "crash";
  spec.volumes.push_back({"disk0", vol, false, {}});
  spec.snapshot.vm_state = SnapshotOptions::VmState::kRunning;  // a clone needs no freeze
  auto job = BackupJob::Create(*target, spec);
  ASSERT_OK(job);
  ASSERT_OK((*job)->Run());
  auto info = (*job)->result();
  ASSERT_OK(info);
  EXPECT_EQ(info->volumes[0].snapshot, "reflink");
  EXPECT_EQ(info->volumes[0].consistency, "crash-consistent");
  EXPECT_EQ(info->freeze_seconds, -1);
  EXPECT_EQ(RestoreSha(*target, "crash", dir_), FileSha256(vol));
  // The clone was anonymous: nothing is left beside the volume.
  EXPECT_EQ(FilesUnder(dir_.Sub("xfs")), std::vector<std::string>{"disk0.img"});
}

TEST_F(SnapshotTest, OnExt4ARunningVmIsRefusedUnlessFrozenForTheWholeBackup) {
  // The test directory is on the machine's ext4, which cannot clone.
  const std::string vol = dir_.Sub("disk0.img");
  WriteRandomFile(vol, 4 << 20, 14);
  auto target = Target();
  ASSERT_OK(target);
  BackupSpec spec;
  spec.name = "ext4";
  spec.volumes.push_back({"disk0", vol, false, {}});
  spec.snapshot.vm_state = SnapshotOptions::VmState::kRunning;
  auto job = BackupJob::Create(*target, spec);
  ASSERT_OK(job);
  Status st = (*job)->Run();
  if (st.ok()) {
    // A filesystem that clones after all: then the clone is what was read.
    auto info = (*job)->result();
    ASSERT_OK(info);
    ASSERT_EQ(info->volumes[0].snapshot, "reflink");
    ReportPath("the test directory clones (not ext4): nothing to refuse");
    return;
  }
  EXPECT_THAT(st, StatusIs(StatusCode::kFailedPrecondition, "running VM cannot be cloned"));
  EXPECT_THAT((*target)->GetBackup("ext4"), StatusIs(StatusCode::kNotFound, "ext4"));
  int freezes = 0, thaws = 0;
  spec.snapshot.freeze = [&] {
    ++freezes;
    return Status::Ok();
  };
  spec.snapshot.thaw = [&] {
    ++thaws;
    return Status::Ok();
  };
  job = BackupJob::Create(*target, spec);
  ASSERT_OK(job);
  ASSERT_OK((*job)->Run());
  auto info = (*job)->result();
  ASSERT_OK(info);
  EXPECT_EQ(freezes, 1);
  EXPECT_EQ(thaws, 1);
  EXPECT_EQ(info->volumes[0].snapshot, "direct");
  EXPECT_EQ(info->volumes[0].consistency, "fs-frozen");
  EXPECT_EQ(RestoreSha(*target, "ext4", dir_), FileSha256(vol));
  ReportPath("ext4: direct read kept frozen");
}

}  // namespace
}  // namespace vmbackup::integration
