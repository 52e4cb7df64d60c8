// Processes killed mid-job. A child (vmbackup_integ_helper) runs a backup or restore, throttled so
// the kill lands while it is in flight, and is SIGKILLed: no cleanup code runs. The target and the
// destination must still be consistent, and the next run must succeed (reusing what was uploaded).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>

#include "integration_util.h"
#include "repo/format.h"
#include "repo/repository.h"
#include "target/target_impl.h"

namespace vmbackup::integration {
namespace {

using ::testing::Each;
using ::testing::IsEmpty;
using ::testing::StartsWith;
using ::vmbackup::testing::FileExists;
using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::ReadAll;
using ::vmbackup::testing::TempDir;
using namespace std::chrono_literals;

// Largest bytes_written reported on a "progress" line so far.
uint64_t LastWritten(const HelperProcess& p) {
  uint64_t best = 0;
  for (const auto& l : p.Lines()) {
    unsigned long long scanned = 0, written = 0;
    if (std::sscanf(l.c_str(), "progress %llu %llu", &scanned, &written) == 2)
      best = std::max<uint64_t>(best, written);
  }
  return best;
}

void ExpectKilledMidway(HelperProcess& child, int status) {
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the helper was not killed mid-job (it finished first?): status " << status << "\n"
      << ::testing::PrintToString(child.Lines());
  EXPECT_FALSE(child.Result().has_value()) << "the job completed before the kill";
}

class CrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    target_dir_ = dir_.Sub("target");
    ASSERT_EQ(::mkdir(target_dir_.c_str(), 0755), 0);
    // Initialize with 64 KiB blocks and 1 MiB packs, so packs are sealed and uploaded early.
    ASSERT_OK(OpenTarget(target_dir_));
  }
  TempDir dir_;
  std::string target_dir_;
};

TEST_F(CrashTest, BackupKilledAfterFirstPackLeavesNoRecordAndNextBackupReusesItsPacks) {
  const std::string vol = dir_.Sub("disk0.img");
  ::vmbackup::testing::MakeVolume(vol, 32 << 20, 51);
  HelperProcess child;
  ASSERT_TRUE(child.Start(
      HelperPath(),
      {"backup", "--target", target_dir_, "--name", "b1", "--volume", "disk0=" + vol,
       "--block-size", "65536", "--pack-size", "1048576", "--workers", "1", "--rate-mib", "8"},
      dir_.Sub("helper.log")));
  const bool saw_index =
      child.WaitFor([&] { return !FilesUnder(target_dir_, "index/").empty(); }, 30s);
  child.Kill(SIGKILL);
  const int status = child.Wait();
  ASSERT_TRUE(saw_index) << "no pack index appeared: " << ::testing::PrintToString(child.Lines());
  ExpectKilledMidway(child, status);

  // No record, no volume index: the killed backup does not exist.
  EXPECT_THAT(FilesUnder(target_dir_, "records/"), IsEmpty());
  EXPECT_THAT(FilesUnder(target_dir_, "volumes/"), IsEmpty());
  auto t = OpenTarget(target_dir_);
  ASSERT_OK(t);
  std::shared_ptr<BackupTarget> target = *t;
  auto list = target->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(list->backups, IsEmpty());
  EXPECT_THAT(list->damaged, IsEmpty());
  EXPECT_THAT(target->GetBackup("b1"), StatusIs(StatusCode::kNotFound, "b1"));

  // Every pack index that made it is whole (published atomically), and its pack is there.
  const auto indexes = FilesUnder(target_dir_, "index/");
  ASSERT_FALSE(indexes.empty());
  uint64_t indexed_raw = 0;
  for (const auto& key : indexes) {
    const std::string id = internal::PackIdFromIndexKey(key);
    auto entries = internal::DecodePackIndex(ReadAll(target_dir_ + "/" + key), id, key);
    ASSERT_OK(entries);
    EXPECT_TRUE(FileExists(target_dir_ + "/" + internal::PackKey(id))) << "index without pack";
    for (const auto& e : *entries) indexed_raw += e.raw_len;
  }
  auto index = internal::ImplOf(target)->repo->LoadIndex();
  ASSERT_OK(index);
  EXPECT_THAT((*index)->damaged(), IsEmpty());

  // The same backup again (same name: nothing was published) succeeds and reuses every block the
  // killed one had indexed.
  auto again = RunBackup(target, "b1", vol);
  ASSERT_OK(again);
  EXPECT_GT(again->bytes_reused, 0u);
  EXPECT_GE(again->bytes_reused, indexed_raw);
  ExpectRestorable(target_dir_, "b1", {{"disk0", FileSha256(vol)}}, dir_.path());
}

class RestoreCrashTest : public CrashTest {
 protected:
  void SetUp() override {
    CrashTest::SetUp();
    dest_dir_ = dir_.Sub("dest");
    ASSERT_EQ(::mkdir(dest_dir_.c_str(), 0755), 0);
    vol_ = dir_.Sub("disk0.img");
    ::vmbackup::testing::MakeVolume(vol_, 32 << 20, 61);
    auto t = OpenTarget(target_dir_);
    ASSERT_OK(t);
    ASSERT_OK(RunBackup(*t, "b1", vol_));
  }
  // Starts a throttled restore of b1 to `dest` and SIGKILLs it once 2 MiB were written.
  void RestoreAndKill(const std::string& dest, bool overwrite) {
    HelperProcess child;
    std::vector<std::string> args = {
        "restore",       "--target",  target_dir_, "--name",     "b1", "--dest",
        "disk0=" + dest, "--workers", "1",         "--rate-mib", "8"};
    if (overwrite) args.insert(args.end(), {"--overwrite", "1"});
    ASSERT_TRUE(child.Start(HelperPath(), args, dir_.Sub("helper.log")));
    const bool midway = child.WaitFor([&] { return LastWritten(child) >= (2u << 20); }, 30s);
    child.Kill(SIGKILL);
    const int status = child.Wait();
    ASSERT_TRUE(midway) << ::testing::PrintToString(child.Lines());
    ExpectKilledMidway(child, status);
  }
  std::string dest_dir_, vol_;
};

TEST_F(RestoreCrashTest, RestoreKilledMidwayLeavesNoDestinationAndCanBeRepeated) {
  const std::string dest = dest_dir_ + "/disk0.img";
  RestoreAndKill(dest, /*overwrite=*/false);
  if (HasFatalFailure()) return;

  EXPECT_FALSE(FileExists(dest)) << "a killed restore must not leave the final name";
  const auto left = FilesUnder(dest_dir_);
  EXPECT_THAT(left, Each(StartsWith("disk0.img.vmbackup-partial-")));
  std::cout << "[ NOTE     ] left behind by the killed restore: " << ::testing::PrintToString(left)
            << std::endl;

  auto t = OpenTarget(target_dir_);
  ASSERT_OK(t);
  ASSERT_OK(RunRestore(*t, "b1", dest));
  EXPECT_EQ(FileSha256(dest), FileSha256(vol_));
}

TEST_F(RestoreCrashTest, RestoreKilledWhileOverwritingKeepsTheOldFileWhole) {
  const std::string dest = dest_dir_ + "/disk0.img";
  ::vmbackup::testing::WriteAll(dest, "the previous contents of the destination");
  RestoreAndKill(dest, /*overwrite=*/true);
  if (HasFatalFailure()) return;

  EXPECT_EQ(ReadAll(dest), "the previous contents of the destination");
  for (const auto& f : FilesUnder(dest_dir_))
    if (f != "disk0.img") {
      EXPECT_THAT(f, StartsWith("disk0.img.vmbackup-partial-"));
    }

  auto t = OpenTarget(target_dir_);
  ASSERT_OK(t);
  RestoreSpec spec;
  spec.backup = "b1";
  spec.volumes = {{"disk0", dest}};
  spec.overwrite = true;
  auto plan = RestorePlan::Create(*t, spec);
  ASSERT_OK(plan);
  ASSERT_OK((*plan)->Run());
  EXPECT_EQ(FileSha256(dest), FileSha256(vol_));
}

}  // namespace
}  // namespace vmbackup::integration
