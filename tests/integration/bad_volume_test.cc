// Bad source volumes: missing, unreadable, not a file. Each must fail with the documented code and
// a message naming the path, write nothing to the target, and leave earlier backups restorable.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

#include "integration_util.h"

namespace vmbackup::integration {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::TempDir;

constexpr int kNobody = 65534;

class BadVolumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    target_dir_ = dir_.Sub("target");
    ASSERT_EQ(::mkdir(target_dir_.c_str(), 0755), 0);
    auto t = OpenTarget(target_dir_);
    ASSERT_OK(t);
    target_ = *t;
    good_ = dir_.Sub("good.img");
    ::vmbackup::testing::MakeVolume(good_, 4 << 20, 1);
    auto b1 = RunBackup(target_, "b1", good_);
    ASSERT_OK(b1);
    before_ = FilesUnder(target_dir_);
  }

  // The target holds exactly what it held after b1, and b1 still restores.
  void ExpectTargetUntouched() {
    EXPECT_EQ(FilesUnder(target_dir_), before_) << "the failed backup wrote to the target";
    auto list = target_->ListBackups();
    ASSERT_OK(list);
    EXPECT_THAT(ListedNames(*list), ElementsAre("b1"));
    EXPECT_TRUE(list->damaged.empty());
    ExpectRestorable(target_dir_, "b1", {{"disk0", FileSha256(good_)}}, dir_.path());
  }

  TempDir dir_;
  std::string target_dir_, good_;
  std::shared_ptr<BackupTarget> target_;
  std::vector<std::string> before_;
};

TEST_F(BadVolumeTest, MissingVolumeIsNotFoundNamingItAndWritesNothing) {
  const std::string missing = dir_.Sub("no-such-disk.img");
  // The missing volume comes second: the first one must not be half backed up either.
  auto r = RunBackup(
      target_, "b2",
      {VolumeSource{"disk0", good_, false, {}}, VolumeSource{"disk1", missing, false, {}}});
  ShowStatus(r);
  EXPECT_THAT(r, StatusIs(StatusCode::kNotFound, missing));
  EXPECT_THAT(target_->GetBackup("b2"), StatusIs(StatusCode::kNotFound, "b2"));
  ExpectTargetUntouched();
}

TEST_F(BadVolumeTest, UnreadableVolumeIsPermissionDeniedNamingIt) {
  const std::string secret = dir_.Sub("secret.img");
  ::vmbackup::testing::MakeVolume(secret, 2 << 20, 2);
  ASSERT_EQ(::chmod(secret.c_str(), 0000), 0);
  if (!IsRoot()) {
    ReportPath("unprivileged test process: chmod 000 volume read in-process");
    auto r = RunBackup(target_, "b2", secret);
    ShowStatus(r);
    EXPECT_THAT(r, StatusIs(StatusCode::kPermissionDenied, secret));
  } else {
    // Root reads through permission bits, so the backup runs in a child as uid/gid 65534. The
    // helper is copied where that user can execute it, and the test directory made traversable.
    ReportPath("root: chmod 000 volume read by the helper as uid 65534");
    ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
    // The target belongs to the user who backs up to it (the store creates everything 0600 /
    // 0700): hand it to 65534.
    ASSERT_EQ(::chown(target_dir_.c_str(), kNobody, kNobody), 0);
    for (const auto& e : std::filesystem::recursive_directory_iterator(target_dir_))
      ASSERT_EQ(::lchown(e.path().c_str(), kNobody, kNobody), 0) << e.path();
    const std::string helper = dir_.Sub("helper");
    std::filesystem::copy_file(HelperPath(), helper);
    ASSERT_EQ(::chmod(helper.c_str(), 0755), 0);
    HelperProcess child;
    ASSERT_TRUE(child.Start(
        helper, {"backup", "--target", target_dir_, "--name", "b2", "--volume", "disk0=" + secret},
        dir_.Sub("helper.log"), kNobody, kNobody));
    int status = child.Wait();
    ASSERT_TRUE(WIFEXITED(status)) << "helper died: status " << status;
    ASSERT_NE(WEXITSTATUS(status), 121) << "setgid to 65534 failed";
    ASSERT_NE(WEXITSTATUS(status), 122) << "setuid to 65534 failed";
    ASSERT_NE(WEXITSTATUS(status), 127) << "exec of " << helper << " failed";
    auto result = child.Result();
    ASSERT_TRUE(result.has_value()) << ::testing::PrintToString(child.Lines());
    std::cout << "[ STATUS   ] " << result->first << ": " << result->second << std::endl;
    EXPECT_EQ(result->first, "PERMISSION_DENIED") << result->second;
    EXPECT_THAT(result->second, HasSubstr(secret));
    EXPECT_EQ(WEXITSTATUS(status), 1);
  }
  ExpectTargetUntouched();
}

TEST_F(BadVolumeTest, UnreadableTargetIsPermissionDeniedNamingIt) {
  if (!IsRoot()) {
    ReportPath("unprivileged test process: chmod 000 target opened in-process");
    ASSERT_EQ(::chmod(target_dir_.c_str(), 0000), 0);
    auto t = OpenTarget(target_dir_);
    ShowStatus(t);
    EXPECT_THAT(t, StatusIs(StatusCode::kPermissionDenied, target_dir_));
    ASSERT_EQ(::chmod(target_dir_.c_str(), 0755), 0);
  } else {
    ReportPath("root: chmod 700 target opened by the helper as uid 65534");
    ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
    ASSERT_EQ(::chmod(target_dir_.c_str(), 0700), 0);
    const std::string helper = dir_.Sub("helper");
    std::filesystem::copy_file(HelperPath(), helper);
    ASSERT_EQ(::chmod(helper.c_str(), 0755), 0);
    HelperProcess child;
    ASSERT_TRUE(child.Start(helper, {"open", "--target", target_dir_}, dir_.Sub("helper.log"),
                            kNobody, kNobody));
    int status = child.Wait();
    ASSERT_TRUE(WIFEXITED(status)) << "helper died: status " << status;
    auto result = child.Result();
    ASSERT_TRUE(result.has_value()) << ::testing::PrintToString(child.Lines());
    std::cout << "[ STATUS   ] " << result->first << ": " << result->second << std::endl;
    EXPECT_EQ(result->first, "PERMISSION_DENIED") << result->second;
    EXPECT_THAT(result->second, HasSubstr(target_dir_));
    ASSERT_EQ(::chmod(target_dir_.c_str(), 0755), 0);
  }
  ExpectTargetUntouched();
}

TEST_F(BadVolumeTest, DirectoryOrFifoAsVolumeIsInvalidArgumentNamingIt) {
  const std::string dir_vol = dir_.Sub("a-directory");
  const std::string fifo_vol = dir_.Sub("a-fifo");
  ASSERT_EQ(::mkdir(dir_vol.c_str(), 0755), 0);
  ASSERT_EQ(::mkfifo(fifo_vol.c_str(), 0644), 0);
  // A FIFO must be refused without being opened: opening it for reading would block forever.
  auto r = RunBackup(target_, "b2", fifo_vol);
  ShowStatus(r);
  EXPECT_THAT(r, StatusIs(StatusCode::kInvalidArgument, fifo_vol));
  EXPECT_THAT(RunBackup(target_, "b3", dir_vol), StatusIs(StatusCode::kInvalidArgument, dir_vol));
  ExpectTargetUntouched();
}

TEST_F(BadVolumeTest, EmptyVolumeListAndBadNamesAreRejectedBeforeAnythingIsRead) {
  EXPECT_THAT(RunBackup(target_, "b2", std::vector<VolumeSource>{}),
              StatusIs(StatusCode::kInvalidArgument, "spec.volumes"));
  EXPECT_THAT(RunBackup(target_, "b2", {VolumeSource{"bad/name", good_, false, {}}}),
              StatusIs(StatusCode::kInvalidArgument, "bad/name"));
  EXPECT_THAT(
      RunBackup(target_, "b2",
                {VolumeSource{"disk0", good_, false, {}}, VolumeSource{"disk0", good_, false, {}}}),
      StatusIs(StatusCode::kInvalidArgument, "used twice"));
  EXPECT_THAT(RunBackup(target_, "../escape", good_),
              StatusIs(StatusCode::kInvalidArgument, "../escape"));
  ExpectTargetUntouched();
}

TEST_F(BadVolumeTest, VolumeTruncatedDuringBackupIsDataLossAndPublishesNothing) {
  // A throttled backup in a child process; the volume shrinks under it (a host that did not keep
  // the volume quiet). Without a reflink clone the reader hits the new end of file.
  const std::string vol = dir_.Sub("shrinking.img");
  WriteRandomFile(vol, 24 << 20, 3);
  const std::string original = FileSha256(vol);
  HelperProcess child;
  ASSERT_TRUE(child.Start(HelperPath(),
                          {"backup", "--target", target_dir_, "--name", "b2", "--volume",
                           "disk0=" + vol, "--workers", "1", "--rate-mib", "8"},
                          dir_.Sub("helper.log")));
  ASSERT_TRUE(child.WaitFor(
      [&] {
        for (const auto& l : child.Lines())
          if (l.rfind("progress ", 0) == 0 && l.rfind("progress 0 ", 0) != 0) return true;
        return false;
      },
      std::chrono::seconds(30)))
      << ::testing::PrintToString(child.Lines());
  ASSERT_EQ(::truncate(vol.c_str(), 1 << 20), 0);
  const int status = child.Wait();
  ASSERT_TRUE(WIFEXITED(status)) << status;
  auto result = child.Result();
  ASSERT_TRUE(result.has_value()) << ::testing::PrintToString(child.Lines());
  std::cout << "[ STATUS   ] " << result->first << ": " << result->second << std::endl;
  if (result->first == "OK") {
    // The snapshot was a reflink clone: the backup must hold the volume as it was when it began.
    ReportPath("reflink snapshot: truncation not seen by the backup");
    ExpectRestorable(target_dir_, "b2", {{"disk0", original}}, dir_.path());
    return;
  }
  ReportPath("direct snapshot: truncation seen by the backup");
  EXPECT_EQ(result->first, "DATA_LOSS");
  EXPECT_THAT(result->second, HasSubstr(vol));
  EXPECT_THAT(result->second, HasSubstr("shrank"));
  EXPECT_THAT(FilesUnder(target_dir_, "records/"), ElementsAre("records/b1.json"));
  EXPECT_THAT(FilesUnder(target_dir_, "volumes/b2"), ::testing::IsEmpty());
  auto list = target_->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ElementsAre("b1"));
  ExpectRestorable(target_dir_, "b1", {{"disk0", FileSha256(good_)}}, dir_.path());
}

TEST_F(BadVolumeTest, EmptyAndOddSizedVolumesRoundTripExactly) {
  const std::string empty = dir_.Sub("empty.img"), odd = dir_.Sub("odd.img");
  ::vmbackup::testing::WriteAll(empty, "");
  WriteRandomFile(odd, (3 << 20) + 12345, 4);  // not a multiple of the block size
  // Plus a trailing hole: the restored file must keep the logical size.
  ASSERT_EQ(::truncate(odd.c_str(), (5 << 20) + 777), 0);
  auto r =
      RunBackup(target_, "b2",
                {VolumeSource{"empty", empty, false, {}}, VolumeSource{"odd", odd, false, {}}});
  ASSERT_OK(r);
  EXPECT_EQ(r->bytes_total, (5u << 20) + 777);
  ExpectRestorable(target_dir_, "b2", {{"empty", FileSha256(empty)}, {"odd", FileSha256(odd)}},
                   dir_.path());
  const std::string dest = dir_.Sub("odd-restored.img");
  ASSERT_OK(RunRestore(target_, "b2", {VolumeDestination{"odd", dest}}));
  EXPECT_EQ(::vmbackup::testing::FileSize(dest), (5u << 20) + 777);
}

}  // namespace
}  // namespace vmbackup::integration
