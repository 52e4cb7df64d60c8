// Concurrent jobs on one target: two backups at once in one process (one BackupTarget), a backup
// racing one from another process, and two jobs racing for the same backup name.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <set>

#include "integration_util.h"

namespace vmbackup::integration {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;
using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::TempDir;
using namespace std::chrono_literals;

class ConcurrencyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    target_dir_ = dir_.Sub("target");
    ASSERT_EQ(::mkdir(target_dir_.c_str(), 0755), 0);
    auto t = OpenTarget(target_dir_);
    ASSERT_OK(t);
    target_ = *t;
    vol_a_ = dir_.Sub("a.img");
    vol_b_ = dir_.Sub("b.img");
    ::vmbackup::testing::MakeVolume(vol_a_, 24 << 20, 71);
    // b shares most blocks with a, so both jobs race to store the same new blocks.
    std::filesystem::copy_file(vol_a_, vol_b_);
    ::vmbackup::testing::ScribbleVolume(vol_b_, 16, 256 << 10, 72);
    ASSERT_NE(FileSha256(vol_a_), FileSha256(vol_b_));
  }
  std::unique_ptr<BackupJob> Job(const std::string& name, const std::string& vol) {
    BackupSpec spec;
    spec.name = name;
    spec.volumes.push_back({"disk0", vol, false, {}});
    auto job = BackupJob::Create(target_, spec);
    EXPECT_OK(job);
    return job.ok() ? std::move(*job) : nullptr;
  }
  TempDir dir_;
  std::string target_dir_, vol_a_, vol_b_;
  std::shared_ptr<BackupTarget> target_;
};

TEST_F(ConcurrencyTest, TwoBackupsOfDifferentVolumesAtOnceAreBothReadyAndRestorable) {
  auto a = Job("ba", vol_a_);
  auto b = Job("bb", vol_b_);
  ASSERT_TRUE(a && b);
  ASSERT_OK(a->Start());
  ASSERT_OK(b->Start());
  ASSERT_OK(a->Wait());
  ASSERT_OK(b->Wait());
  EXPECT_EQ(a->state(), JobState::kReady);
  EXPECT_EQ(b->state(), JobState::kReady);
  auto list = target_->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), UnorderedElementsAre("ba", "bb"));
  EXPECT_THAT(list->damaged, IsEmpty());
  ExpectRestorable(target_dir_, "ba", {{"disk0", FileSha256(vol_a_)}}, dir_.path());
  ExpectRestorable(target_dir_, "bb", {{"disk0", FileSha256(vol_b_)}}, dir_.path());
}

TEST_F(ConcurrencyTest, BackupRacingAnotherProcessOnTheSameTargetBothSucceed) {
  HelperProcess child;
  ASSERT_TRUE(child.Start(HelperPath(),
                          {"backup", "--target", target_dir_, "--name", "from-child", "--volume",
                           "disk0=" + vol_b_, "--workers", "1", "--rate-mib", "24"},
                          dir_.Sub("helper.log")));
  // Start ours once the child is transferring, so the two really overlap.
  ASSERT_TRUE(child.WaitFor(
      [&] {
        for (const auto& l : child.Lines())
          if (l.rfind("progress ", 0) == 0 && l != "progress 0 0") return true;
        return false;
      },
      30s))
      << ::testing::PrintToString(child.Lines());
  auto ours = RunBackup(target_, "from-parent", vol_a_);
  const int status = child.Wait();
  ASSERT_OK(ours);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  auto result = child.Result();
  ASSERT_TRUE(result.has_value()) << ::testing::PrintToString(child.Lines());
  EXPECT_EQ(result->first, "OK") << result->second;
  EXPECT_EQ(WEXITSTATUS(status), 0);

  auto list = target_->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), UnorderedElementsAre("from-child", "from-parent"));
  ExpectRestorable(target_dir_, "from-parent", {{"disk0", FileSha256(vol_a_)}}, dir_.path());
  ExpectRestorable(target_dir_, "from-child", {{"disk0", FileSha256(vol_b_)}}, dir_.path());
}

TEST_F(ConcurrencyTest, TwoJobsRacingForOneNamePublishExactlyOne) {
  // Both pass Create (no record yet); the record's create-if-absent decides.
  auto a = Job("same", vol_a_);
  auto b = Job("same", vol_b_);
  ASSERT_TRUE(a && b);
  ASSERT_OK(a->Start());
  ASSERT_OK(b->Start());
  Status sa = a->Wait(), sb = b->Wait();
  ASSERT_NE(sa.ok(), sb.ok()) << "a: " << sa.ToString() << " / b: " << sb.ToString();
  const Status& loser = sa.ok() ? sb : sa;
  EXPECT_THAT(loser, StatusIs(StatusCode::kAlreadyExists, "same"));
  const std::string winner_vol = sa.ok() ? vol_a_ : vol_b_;

  auto list = target_->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ElementsAre("same"));
  EXPECT_THAT(list->damaged, IsEmpty());
  // The published record is the winner's, whole: it restores the winner's bytes.
  ExpectRestorable(target_dir_, "same", {{"disk0", FileSha256(winner_vol)}}, dir_.path());
  // Deleting it removes every volume index under its name, the loser's included.
  ASSERT_OK(target_->DeleteBackup("same"));
  EXPECT_THAT(FilesUnder(target_dir_, "volumes/"), IsEmpty());
}

TEST(ConcurrentInitTest, ProcessesOpeningOneEmptyTargetAtOnceAgreeOnOneRepository) {
  TempDir dir;
  const std::string target_dir = dir.Sub("target");
  ASSERT_EQ(::mkdir(target_dir.c_str(), 0755), 0);
  constexpr int kChildren = 4;
  std::vector<std::unique_ptr<HelperProcess>> children;
  for (int i = 0; i < kChildren; ++i) {
    children.push_back(std::make_unique<HelperProcess>());
    ASSERT_TRUE(children.back()->Start(HelperPath(), {"open", "--target", target_dir},
                                       dir.Sub("open-" + std::to_string(i) + ".log")));
  }
  auto ours = OpenTarget(target_dir);
  ASSERT_OK(ours);
  std::set<std::string> ids = {(*ours)->repository_id()};
  for (auto& c : children) {
    const int status = c->Wait();
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << status << " " << ::testing::PrintToString(c->Lines());
    for (const auto& l : c->Lines())
      if (l.rfind("repository ", 0) == 0) ids.insert(l.substr(11));
  }
  EXPECT_EQ(ids.size(), 1u) << "several repositories were initialized: "
                            << ::testing::PrintToString(ids);
  EXPECT_THAT(FilesUnder(target_dir), ElementsAre("repository.json"));
}

}  // namespace
}  // namespace vmbackup::integration
