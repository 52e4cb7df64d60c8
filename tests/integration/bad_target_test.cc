// Bad backup targets: missing, read-only, full; and a full restore destination. Where the test
// process may mount (root in a private mount namespace), the conditions are real (read-only bind
// mount, small tmpfs); otherwise a documented fallback runs and says so in the log ("[ PATH ]").
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "integration_util.h"
#include "repo/format.h"
#include "repo/repository.h"
#include "store/local_store.h"

namespace vmbackup::integration {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::vmbackup::testing::FileExists;
using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::TempDir;

TEST(BadTargetTest, MissingTargetDirectoryIsNotFoundNamingIt) {
  TempDir dir;
  const std::string missing = dir.Sub("no-such-target");
  EXPECT_THAT(OpenTarget(missing), StatusIs(StatusCode::kNotFound, missing));
  EXPECT_FALSE(FileExists(missing)) << "opening a missing target must not create it";
  // Also with the default options and through a file:// URL.
  EXPECT_THAT(BackupTarget::Open(R"({"type":"file","endpoint":"file://)" + missing + R"("})"),
              StatusIs(StatusCode::kNotFound, missing));
  EXPECT_FALSE(FileExists(missing));
}

TEST(BadTargetTest, TargetThatIsAFileIsInvalidArgument) {
  TempDir dir;
  const std::string file = dir.Sub("a-file");
  ::vmbackup::testing::WriteAll(file, "not a directory");
  EXPECT_THAT(OpenTarget(file), StatusIs(StatusCode::kInvalidArgument, file));
  EXPECT_EQ(::vmbackup::testing::ReadAll(file), "not a directory");
}

TEST(BadTargetTest, EmptyTargetWithoutCreateIfMissingIsNotFound) {
  TempDir dir;
  TargetOptions opts = SmallRepo();
  opts.create_if_missing = false;
  EXPECT_THAT(OpenTarget(dir.path(), opts), StatusIs(StatusCode::kNotFound, dir.path()));
  EXPECT_THAT(FilesUnder(dir.path()), IsEmpty());
}

TEST(BadTargetTest, CorruptRepositoryDescriptorIsDataLoss) {
  TempDir dir;
  ASSERT_OK(OpenTarget(dir.path()));
  const std::string desc = dir.Sub("repository.json");
  const std::string bytes = ::vmbackup::testing::ReadAll(desc);
  ::vmbackup::testing::WriteAll(desc, bytes.substr(0, bytes.size() / 2));
  EXPECT_THAT(OpenTarget(dir.path()), StatusIs(StatusCode::kDataLoss, "repository descriptor"));
  // Not silently re-initialized over the damaged one.
  EXPECT_EQ(::vmbackup::testing::ReadAll(desc), bytes.substr(0, bytes.size() / 2));
}

class ReadOnlyTargetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    target_dir_ = dir_.Sub("target");
    ASSERT_EQ(::mkdir(target_dir_.c_str(), 0755), 0);
  }
  // Makes target_dir_ read-only for real when possible. Returns false when the caller must use the
  // fault-injecting store instead.
  bool MakeReadOnly() {
    std::string err = mount_.BindReadOnly(target_dir_);
    if (err.empty()) {
      ReportPath("read-only bind mount of the target directory");
      return true;
    }
    if (!IsRoot()) {
      ReportPath("mount not permitted (" + err + "): chmod a-w on every target directory");
      reason_ = "Permission denied";
      for (auto& e : std::filesystem::recursive_directory_iterator(target_dir_))
        if (e.is_directory()) ::chmod(e.path().c_str(), 0555);
      ::chmod(target_dir_.c_str(), 0555);
      chmodded_ = true;
      return true;
    }
    ReportPath("mount not permitted (" + err + ") and root ignores modes: EROFS injected by a " +
               "FaultStore wrapping the local directory");
    return false;
  }
  void MakeWritable() {
    mount_.Unmount();
    if (chmodded_) {
      for (auto& e : std::filesystem::recursive_directory_iterator(target_dir_))
        if (e.is_directory()) ::chmod(e.path().c_str(), 0755);
      ::chmod(target_dir_.c_str(), 0755);
      chmodded_ = false;
    }
  }

  TempDir dir_;
  std::string target_dir_;
  ScopedMount mount_;  // after dir_: unmounted before the directory is removed
  bool chmodded_ = false;
  std::string reason_ = "Read-only file system";  // the errno text the failure must carry
};

TEST_F(ReadOnlyTargetTest, BackupToReadOnlyTargetIsPermissionDeniedAndWritesNothing) {
  const std::string vol1 = dir_.Sub("disk1.img"), vol2 = dir_.Sub("disk2.img");
  ::vmbackup::testing::MakeVolume(vol1, 4 << 20, 11);
  ::vmbackup::testing::MakeVolume(vol2, 4 << 20, 12);
  {
    auto t = OpenTarget(target_dir_);
    ASSERT_OK(t);
    ASSERT_OK(RunBackup(*t, "b1", vol1));
  }
  const auto before = FilesUnder(target_dir_);

  bool real = MakeReadOnly();
  auto t = OpenTarget(target_dir_);  // an existing repository opens read-only
  ASSERT_OK(t);
  if (!real) {
    ASSERT_OK(InjectFaultStore(**t, target_dir_, /*read_only=*/true, 0));
  }
  std::shared_ptr<BackupTarget> target = *t;

  Status probe = target->Test();
  ShowStatus(probe);
  EXPECT_THAT(probe, StatusIs(StatusCode::kPermissionDenied, target_dir_));
  EXPECT_THAT(probe, StatusIs(StatusCode::kPermissionDenied, reason_));

  auto r = RunBackup(target, "b2", vol2);
  ShowStatus(r);
  EXPECT_THAT(r, StatusIs(StatusCode::kPermissionDenied, target_dir_));
  EXPECT_THAT(r, StatusIs(StatusCode::kPermissionDenied, reason_));
  EXPECT_THAT(r.status().message(), Not(HasSubstr("\n")));

  // Reading still works on a read-only target: list and restore the Ready backup.
  auto list = target->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ElementsAre("b1"));
  ASSERT_OK(RunRestore(target, "b1", dir_.Sub("r1.img")));
  EXPECT_EQ(FileSha256(dir_.Sub("r1.img")), FileSha256(vol1));

  // Nothing half-written: once writable again the target holds exactly what it held, and a new
  // backup under the refused name succeeds.
  MakeWritable();
  EXPECT_EQ(FilesUnder(target_dir_), before);
  auto again = OpenTarget(target_dir_);
  ASSERT_OK(again);
  ASSERT_OK(RunBackup(*again, "b2", vol2));
  ExpectRestorable(target_dir_, "b1", {{"disk0", FileSha256(vol1)}}, dir_.path());
  ExpectRestorable(target_dir_, "b2", {{"disk0", FileSha256(vol2)}}, dir_.path());
}

TEST_F(ReadOnlyTargetTest, InitializingReadOnlyEmptyTargetIsPermissionDenied) {
  StatusOr<std::shared_ptr<BackupTarget>> t = InternalError("not run");
  if (MakeReadOnly()) {
    t = OpenTarget(target_dir_);
  } else {
    // BackupTarget::Open cannot be handed a store: run its initialization step over the fault
    // store directly (Repository::Open, exactly what Open calls).
    auto local = internal::OpenLocalStore(target_dir_, Runtime::Default());
    ASSERT_OK(local);
    auto repo = internal::Repository::Open(
        std::make_unique<FaultStore>(std::move(*local), Runtime::Default(), true, 0),
        /*create=*/true, 64 * 1024, 1024 * 1024);
    if (repo.ok()) {
      t = InternalError("initialized a read-only target");
    } else {
      t = repo.status();
    }
  }
  ShowStatus(t);
  EXPECT_THAT(t, StatusIs(StatusCode::kPermissionDenied, target_dir_));
  EXPECT_THAT(t, StatusIs(StatusCode::kPermissionDenied, "initializing repository"));
  MakeWritable();
  EXPECT_THAT(FilesUnder(target_dir_), IsEmpty());
  // And once writable, the same directory initializes normally.
  ASSERT_OK(OpenTarget(target_dir_));
}

class FullTargetTest : public ::testing::Test {
 protected:
  TempDir dir_;
  ScopedMount mount_;  // after dir_: unmounted before the directory is removed
};

TEST_F(FullTargetTest, BackupToFullTargetIsResourceExhaustedAndEarlierBackupSurvives) {
  const std::string target_dir = dir_.Sub("target");
  ASSERT_EQ(::mkdir(target_dir.c_str(), 0755), 0);
  constexpr uint64_t kTargetBytes = 8 << 20;
  std::string err = mount_.MountTmpfs(target_dir, kTargetBytes);
  const bool real = err.empty();
  if (real)
    ReportPath("8 MiB tmpfs mounted on the target directory");
  else
    ReportPath("mount not permitted (" + err + "): ENOSPC injected after 8 MiB by a FaultStore");

  const std::string small = dir_.Sub("small.img"), big = dir_.Sub("big.img");
  WriteRandomFile(small, 2 << 20, 21);
  WriteRandomFile(big, 16 << 20, 22);  // incompressible, twice the target's size

  auto t = OpenTarget(target_dir);
  ASSERT_OK(t);
  if (!real) {
    ASSERT_OK(InjectFaultStore(**t, target_dir, false, kTargetBytes));
  }
  std::shared_ptr<BackupTarget> target = *t;
  ASSERT_OK(RunBackup(target, "b1", small));

  auto r = RunBackup(target, "b2", big);
  ShowStatus(r);
  EXPECT_THAT(r, StatusIs(StatusCode::kResourceExhausted, "No space left on device"));
  EXPECT_THAT(r, StatusIs(StatusCode::kResourceExhausted, target_dir));
  EXPECT_TRUE(r.status().retryable());

  // No record, no volume index for the failed backup, no temporary file left behind. (Packs it
  // completed stay: they are immutable, unreferenced, and reused by the next attempt.)
  EXPECT_THAT(target->GetBackup("b2"), StatusIs(StatusCode::kNotFound, "b2"));
  EXPECT_THAT(FilesUnder(target_dir, "records/"), ElementsAre("records/b1.json"));
  EXPECT_THAT(FilesUnder(target_dir, "volumes/b2"), IsEmpty());
  EXPECT_THAT(FilesUnder(target_dir, ".tmp/"), IsEmpty());

  // The earlier backup is listed and restores identical bytes (restored outside the full target).
  auto list = target->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ElementsAre("b1"));
  EXPECT_THAT(list->damaged, IsEmpty());
  ASSERT_OK(RunRestore(target, "b1", dir_.Sub("r1.img")));
  EXPECT_EQ(FileSha256(dir_.Sub("r1.img")), FileSha256(small));
  if (real) {
    ExpectRestorable(target_dir, "b1", {{"disk0", FileSha256(small)}}, dir_.path());
  }

  // Once there is room, the same backup succeeds and reuses every block the failed attempt got
  // indexed.
  uint64_t indexed_raw = 0;
  for (const auto& key : FilesUnder(target_dir, "index/")) {
    const std::string id = internal::PackIdFromIndexKey(key);
    auto entries =
        internal::DecodePackIndex(::vmbackup::testing::ReadAll(target_dir + "/" + key), id, key);
    ASSERT_OK(entries);
    for (const auto& e : *entries) indexed_raw += e.raw_len;
  }
  const uint64_t b1_raw = 2 << 20;
  std::cout << "[ NOTE     ] raw bytes indexed by the failed attempt: " << indexed_raw - b1_raw
            << std::endl;
  if (real) {
    ASSERT_EQ(mount_.ResizeTmpfs(64 << 20), "");
  } else {
    ASSERT_OK(InjectFaultStore(*target, target_dir, false, 0));
  }
  auto retry = RunBackup(target, "b2", big);
  ASSERT_OK(retry);
  EXPECT_GE(retry->bytes_reused, indexed_raw - b1_raw);
  ExpectRestorable(target_dir, "b2", {{"disk0", FileSha256(big)}}, dir_.path());
}

// Packs are written with O_DIRECT on filesystems that support it (tmpfs above does not): a disk
// that fills up in the middle of such a write must fail the same way and leave nothing behind.
TEST_F(FullTargetTest, DirectIoPackWritesOnAFullExt4TargetAreResourceExhausted) {
  const std::string target_dir = dir_.Sub("target");
  ASSERT_EQ(::mkdir(target_dir.c_str(), 0755), 0);
  std::string err = mount_.MountExt4Image(target_dir, dir_.Sub("target.ext4"), 24 << 20);
  if (!err.empty()) GTEST_SKIP() << "needs a loop-mounted ext4 target: " << err;
  ReportPath("24 MiB ext4 image loop-mounted on the target directory");
  const std::string vol = dir_.Sub("disk0.img");
  WriteRandomFile(vol, 64 << 20, 41);  // incompressible, far more than the target holds
  auto t = OpenTarget(target_dir);
  ASSERT_OK(t);
  auto r = RunBackup(*t, "b1", vol);
  ShowStatus(r);
  EXPECT_THAT(r, StatusIs(StatusCode::kResourceExhausted, "No space left on device"));
  EXPECT_THAT((*t)->GetBackup("b1"), StatusIs(StatusCode::kNotFound, "b1"));
  EXPECT_THAT(FilesUnder(target_dir, "records/"), IsEmpty());
  EXPECT_THAT(FilesUnder(target_dir, ".tmp/"), IsEmpty());
  // Every pack that was published is complete: its trailer and index object agree.
  for (const auto& key : FilesUnder(target_dir, "index/")) {
    const std::string id = internal::PackIdFromIndexKey(key);
    auto entries =
        internal::DecodePackIndex(::vmbackup::testing::ReadAll(target_dir + "/" + key), id, key);
    ASSERT_OK(entries);
    const std::string pack = ::vmbackup::testing::ReadAll(target_dir + "/" + internal::PackKey(id));
    for (const auto& e : *entries) EXPECT_LE(e.offset + e.stored_len, pack.size()) << key;
  }
}

TEST_F(FullTargetTest, RestoreToFullDestinationIsResourceExhaustedAndLeavesNothing) {
  const std::string target_dir = dir_.Sub("target"), dest_dir = dir_.Sub("dest");
  ASSERT_EQ(::mkdir(target_dir.c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(dest_dir.c_str(), 0755), 0);
  std::string err = mount_.MountTmpfs(dest_dir, 4 << 20);
  if (!err.empty()) GTEST_SKIP() << "needs a small tmpfs as restore destination: " << err;
  ReportPath("4 MiB tmpfs mounted as the restore destination");
  const std::string vol = dir_.Sub("disk0.img");
  WriteRandomFile(vol, 12 << 20, 31);
  auto t = OpenTarget(target_dir);
  ASSERT_OK(t);
  ASSERT_OK(RunBackup(*t, "b1", vol));
  const std::string dest = dest_dir + "/disk0.img";
  Status st = RunRestore(*t, "b1", dest);
  ShowStatus(st);
  EXPECT_THAT(st, StatusIs(StatusCode::kResourceExhausted, dest_dir));
  EXPECT_FALSE(FileExists(dest));
  EXPECT_THAT(FilesUnder(dest_dir), IsEmpty()) << "the partial file must be removed";
  // The backup itself is unharmed.
  ExpectRestorable(target_dir, "b1", {{"disk0", FileSha256(vol)}}, dir_.path());
}

TEST(BadDestinationTest, RestoreOntoADirectoryOrIntoAMissingDirectoryFailsAndLeavesNothing) {
  TempDir dir;
  const std::string target_dir = dir.Sub("target"), vol = dir.Sub("disk0.img");
  ASSERT_EQ(::mkdir(target_dir.c_str(), 0755), 0);
  ::vmbackup::testing::MakeVolume(vol, 4 << 20, 81);
  auto t = OpenTarget(target_dir);
  ASSERT_OK(t);
  ASSERT_OK(RunBackup(*t, "b1", vol));

  const std::string ddir = dir.Sub("a-directory");
  ASSERT_EQ(::mkdir(ddir.c_str(), 0755), 0);
  ::vmbackup::testing::WriteAll(ddir + "/keep", "keep me");
  EXPECT_THAT(RunRestore(*t, "b1", ddir), StatusIs(StatusCode::kAlreadyExists, ddir));
  RestoreSpec spec;
  spec.backup = "b1";
  spec.volumes = {{"disk0", ddir}};
  spec.overwrite = true;
  auto plan = RestorePlan::Create(*t, spec);
  Status st = plan.ok() ? (*plan)->Run() : plan.status();
  ShowStatus(st);
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(st.message(), HasSubstr(ddir));
  EXPECT_EQ(::vmbackup::testing::ReadAll(ddir + "/keep"), "keep me");

  const std::string nowhere = dir.Sub("no-such-dir") + "/disk0.img";
  st = RunRestore(*t, "b1", nowhere);
  ShowStatus(st);
  EXPECT_THAT(st, StatusIs(StatusCode::kNotFound, dir.Sub("no-such-dir")));
  EXPECT_FALSE(FileExists(dir.Sub("no-such-dir")));

  // Nothing but the inputs is left: no partial file beside either destination.
  EXPECT_THAT(FilesUnder(dir.path(), "a-directory"), ElementsAre("a-directory/keep"));
  for (const auto& f : FilesUnder(dir.path()))
    EXPECT_EQ(f.find("vmbackup-partial"), std::string::npos) << f;
  ExpectRestorable(target_dir, "b1", {{"disk0", FileSha256(vol)}}, dir.path());
}

}  // namespace
}  // namespace vmbackup::integration
