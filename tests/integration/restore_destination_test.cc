// Restore destinations (issue #9, findings 6 and 8) and exceptions on library threads (finding 3),
// against real loop block devices, a mounted ext4 filesystem and real files.
//
// Block devices: a symbolic link to one (as /dev/vg0/lv is) is written through, not replaced by a
// regular file; any existing destination needs `overwrite`; a device in use (mounted) or smaller
// than the volume is refused before anything is written. Restored files are private (0600) unless
// the host asks otherwise. An exception thrown inside a store (std::bad_alloc) ends the job with a
// Status instead of terminating the process.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <new>

#include "integration_util.h"
#include "repo/repository.h"
#include "store/local_store.h"
#include "support/test_util.h"
#include "target/target_impl.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup::integration {
namespace {

using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::ReadAll;
using ::vmbackup::testing::TempDir;
using ::vmbackup::testing::WriteAll;

constexpr uint64_t kVolume = 2 << 20;

// A loop block device over a file of `bytes` filled with 0xAB, detached on destruction.
class LoopDevice {
 public:
  LoopDevice(const std::string& file, uint64_t bytes) {
    WriteAll(file, std::string(bytes, '\xab'));
    int rc = 0;
    std::string out = Shell("losetup -f --show " + Quote(file) + " 2>&1", &rc);
    if (rc == 0) {
      while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
      dev_ = out;
    } else {
      error_ = "losetup: " + out;
    }
  }
  ~LoopDevice() {
    if (!dev_.empty()) {
      int rc = 0;
      Shell("losetup -d " + Quote(dev_) + " 2>&1", &rc);
    }
  }
  const std::string& dev() const { return dev_; }
  const std::string& error() const { return error_; }
  // The first `n` bytes of the device.
  std::string Head(uint64_t n) const {
    std::string buf(n, '\0');
    int fd = ::open(dev_.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    if (fd < 0) return "";
    EXPECT_EQ(::pread(fd, buf.data(), n, 0), static_cast<ssize_t>(n));
    ::close(fd);
    return buf;
  }

 private:
  std::string dev_, error_;
};

// "" when a == b, else where they first differ (a device's bytes are not printed: megabytes).
std::string Difference(const std::string& a, const std::string& b) {
  if (a == b) return "";
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return "differ from offset " + std::to_string(i) + " (sizes " + std::to_string(a.size()) + ", " +
         std::to_string(b.size()) + ")";
}

class RestoreDestinationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(IsRoot()) << "block-device tests need root (losetup); CI runs as root";
    ASSERT_EQ(::mkdir(dir_.Sub("target").c_str(), 0700), 0);
    TargetOptions o = SmallRepo();
    o.state_dir = dir_.Sub("state");
    auto t = OpenTarget(dir_.Sub("target"), o);
    ASSERT_OK(t);
    target_ = *t;
    vol_ = dir_.Sub("disk0.img");
    WriteRandomFile(vol_, kVolume, 3);
    ASSERT_OK(RunBackup(target_, "b1", vol_));
  }
  Status Restore(const std::string& dest, bool overwrite, uint32_t mode = 0600) {
    RestoreSpec spec;
    spec.backup = "b1";
    spec.volumes = {{"disk0", dest}};
    spec.overwrite = overwrite;
    spec.file_mode = mode;
    auto plan = RestorePlan::Create(target_, spec);
    if (!plan.ok()) return plan.status();
    return (*plan)->Run();
  }
  TempDir dir_;
  std::shared_ptr<BackupTarget> target_;
  std::string vol_;
};

TEST_F(RestoreDestinationTest, SymlinkToABlockDeviceIsWrittenThroughNotReplaced) {
  LoopDevice loop(dir_.Sub("lv.raw"), 4 << 20);
  ASSERT_TRUE(loop.error().empty()) << loop.error();
  const std::string link = dir_.Sub("lv");  // like /dev/vg0/lv -> ../dm-3
  ASSERT_EQ(::symlink(loop.dev().c_str(), link.c_str()), 0);
  const std::string before = loop.Head(4 << 20);

  EXPECT_THAT(Restore(link, false), StatusIs(StatusCode::kAlreadyExists, "set overwrite"));
  EXPECT_EQ(Difference(loop.Head(4 << 20), before), "") << "written without overwrite";
  EXPECT_THAT(Restore(loop.dev(), false), StatusIs(StatusCode::kAlreadyExists, "set overwrite"));

  ASSERT_OK(Restore(link, true));
  struct stat sb;
  ASSERT_EQ(::lstat(link.c_str(), &sb), 0);
  EXPECT_TRUE(S_ISLNK(sb.st_mode)) << "the link was replaced by a regular file";
  const std::string dev = loop.Head(4 << 20);
  EXPECT_EQ(Difference(dev.substr(0, kVolume), ReadAll(vol_)), "")
      << "the device does not hold the volume";
  EXPECT_EQ(Difference(dev.substr(kVolume), before.substr(kVolume)), "")
      << "bytes past the volume changed";
}

TEST_F(RestoreDestinationTest, DeviceSmallerThanTheVolumeIsRefusedUntouched) {
  LoopDevice loop(dir_.Sub("small.raw"), 1 << 20);
  ASSERT_TRUE(loop.error().empty()) << loop.error();
  const std::string before = loop.Head(1 << 20);
  EXPECT_THAT(Restore(loop.dev(), true), StatusIs(StatusCode::kFailedPrecondition, "less than"));
  EXPECT_EQ(Difference(loop.Head(1 << 20), before), "");
}

TEST_F(RestoreDestinationTest, MountedDeviceIsRefusedUntouched) {
  ASSERT_TRUE(CanMount()) << NoMountReason();
  LoopDevice loop(dir_.Sub("fs.raw"), 8 << 20);
  ASSERT_TRUE(loop.error().empty()) << loop.error();
  int rc = 0;
  ASSERT_EQ(::mkdir(dir_.Sub("mnt").c_str(), 0700), 0);
  // Nothing may reach the device behind the test's back between the two reads of it: inode
  // tables and journal initialized by mkfs (no ext4lazyinit writes after the mount) and the file
  // written back (sync) before the first read. Without that, a loaded machine wrote the file's
  // data back in between and the "untouched" comparison failed with nothing restored.
  std::string out = Shell("mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 " +
                              Quote(loop.dev()) + " 2>&1 && mount -o noinit_itable " +
                              Quote(loop.dev()) + " " + Quote(dir_.Sub("mnt")) + " 2>&1",
                          &rc);
  ASSERT_EQ(rc, 0) << out;
  WriteAll(dir_.Sub("mnt/keep"), "guest data");
  out = Shell("sync -f " + Quote(dir_.Sub("mnt/keep")) + " 2>&1", &rc);
  ASSERT_EQ(rc, 0) << out;
  const std::string before = loop.Head(8 << 20);
  Status st = Restore(loop.dev(), true);
  ShowStatus(st);
  EXPECT_THAT(st, StatusIs(StatusCode::kFailedPrecondition, "in use"));
  EXPECT_EQ(Difference(loop.Head(8 << 20), before), "");
  EXPECT_EQ(ReadAll(dir_.Sub("mnt/keep")), "guest data");
  Shell("umount " + Quote(dir_.Sub("mnt")) + " 2>&1", &rc);
  EXPECT_EQ(rc, 0);
}

// A path derived from dest_dir is never followed: a planted link there is replaced (overwrite),
// and what it pointed at is untouched.
TEST_F(RestoreDestinationTest, PlantedLinkInDestDirIsReplacedNotFollowed) {
  ASSERT_EQ(::mkdir(dir_.Sub("dest").c_str(), 0700), 0);
  WriteAll(dir_.Sub("victim"), "precious");
  ASSERT_EQ(::symlink(dir_.Sub("victim").c_str(), dir_.Sub("dest/disk0.img").c_str()), 0);
  RestoreSpec spec;
  spec.backup = "b1";
  spec.dest_dir = dir_.Sub("dest");
  auto plan = RestorePlan::Create(target_, spec);
  EXPECT_THAT(plan, StatusIs(StatusCode::kAlreadyExists, "disk0.img"));
  spec.overwrite = true;
  plan = RestorePlan::Create(target_, spec);
  ASSERT_OK(plan);
  ASSERT_OK((*plan)->Run());
  EXPECT_EQ(ReadAll(dir_.Sub("victim")), "precious");
  struct stat sb;
  ASSERT_EQ(::lstat(dir_.Sub("dest/disk0.img").c_str(), &sb), 0);
  EXPECT_TRUE(S_ISREG(sb.st_mode));
  EXPECT_EQ(FileSha256(dir_.Sub("dest/disk0.img")), FileSha256(vol_));
}

// Finding 8: restored volumes and vm.json were created 0644 (every local user could read guest
// disks). They are 0600 whatever the umask, or exactly the mode the host asks for.
TEST_F(RestoreDestinationTest, RestoredFilesArePrivateUnlessTheHostAsks) {
  const mode_t old_umask = ::umask(0);
  ASSERT_EQ(::mkdir(dir_.Sub("dest").c_str(), 0700), 0);
  RestoreSpec spec;
  spec.backup = "b1";
  spec.dest_dir = dir_.Sub("dest");
  auto plan = RestorePlan::Create(target_, spec);
  ASSERT_OK(plan);
  Status st = (*plan)->Run();
  ::umask(old_umask);
  ASSERT_OK(st);
  struct stat sb;
  ASSERT_EQ(::stat(dir_.Sub("dest/disk0.img").c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(dir_.Sub("dest/vm.json").c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 0777, 0600u);
  ASSERT_OK(Restore(dir_.Sub("shared.img"), false, 0640));
  ASSERT_EQ(::stat(dir_.Sub("shared.img").c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 0777, 0640u);
  EXPECT_THAT(Restore(dir_.Sub("x.img"), false, 01777),
              StatusIs(StatusCode::kInvalidArgument, "file_mode"));
}

// ---- finding 3: exceptions ----

// Forwards to a local store; throws std::bad_alloc from the operations named by `throw_on`.
class ThrowingStore final : public internal::ObjectStore {
 public:
  ThrowingStore(std::unique_ptr<internal::ObjectStore> base, std::shared_ptr<Runtime> rt)
      : ObjectStore(std::move(rt)), base_(std::move(base)) {}
  std::string Describe() const override { return base_->Describe(); }
  Status Put(const std::string& key, std::string_view data,
             const internal::PutOptions& opts) override {
    if (throw_put_packs && key.rfind("packs/", 0) == 0) throw std::bad_alloc();
    return base_->Put(key, data, opts);
  }
  StatusOr<std::string> Get(const std::string& key, uint64_t offset, uint64_t length) override {
    if (throw_get_packs && key.rfind("packs/", 0) == 0) throw std::bad_alloc();
    if (throw_get_records && key.rfind("records/", 0) == 0) throw std::runtime_error("boom");
    return base_->Get(key, offset, length);
  }
  StatusOr<internal::ObjectInfo> Head(const std::string& key) override { return base_->Head(key); }
  StatusOr<internal::ListPage> List(const std::string& prefix, const std::string& token,
                                    int max_keys) override {
    // Listing records too: ListBackups reads only records it has not decoded before.
    if (throw_get_records && prefix.rfind("records/", 0) == 0) throw std::runtime_error("boom");
    return base_->List(prefix, token, max_keys);
  }
  Status Delete(const std::vector<std::string>& keys) override { return base_->Delete(keys); }
  std::atomic<bool> throw_put_packs{false}, throw_get_packs{false}, throw_get_records{false};

 private:
  std::unique_ptr<internal::ObjectStore> base_;
};

TEST_F(RestoreDestinationTest, ExceptionsInsideStoresEndJobsWithAStatus) {
  auto& impl = *internal::ImplOf(target_);
  auto local = internal::OpenLocalStore(dir_.Sub("target"), impl.runtime);
  ASSERT_OK(local);
  auto owned = std::make_unique<ThrowingStore>(std::move(*local), impl.runtime);
  ThrowingStore* store = owned.get();
  auto repo = internal::Repository::Open(std::move(owned), false, 0, 0);
  ASSERT_OK(repo);
  impl.repo = std::move(*repo);
  const std::string b1_sha = FileSha256(vol_);

  // Restore: fetches run on the restore's task threads.
  store->throw_get_packs = true;
  EXPECT_THAT(Restore(dir_.Sub("r.img"), false),
              StatusIs(StatusCode::kResourceExhausted, "out of memory"));
  EXPECT_FALSE(::vmbackup::testing::FileExists(dir_.Sub("r.img")));
  store->throw_get_packs = false;
  // Backup: pack uploads run on the runtime's blocking pool.
  WriteRandomFile(vol_, kVolume, 99);
  store->throw_put_packs = true;
  EXPECT_THAT(RunBackup(target_, "b2", vol_),
              StatusIs(StatusCode::kResourceExhausted, "out of memory"));
  store->throw_put_packs = false;
  EXPECT_THAT(target_->GetBackup("b2"), StatusIs(StatusCode::kNotFound, "b2"));
  // Calls on the caller's thread: no exception crosses the public API either.
  store->throw_get_records = true;
  EXPECT_THAT(target_->GetBackup("b1"), StatusIs(StatusCode::kInternal, "boom"));
  EXPECT_THAT(target_->ListBackups(), StatusIs(StatusCode::kInternal, "boom"));
  RestoreSpec spec;
  spec.backup = "b1";
  spec.volumes = {{"disk0", dir_.Sub("r.img")}};
  EXPECT_THAT(RestorePlan::Create(target_, spec), StatusIs(StatusCode::kInternal, "boom"));
  store->throw_get_records = false;
  // And the process is still here to restore correctly.
  ASSERT_OK(Restore(dir_.Sub("r.img"), false));
  EXPECT_EQ(FileSha256(dir_.Sub("r.img")), b1_sha);
}

}  // namespace
}  // namespace vmbackup::integration
