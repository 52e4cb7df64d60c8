// The backups of one Runtime share its bound on pack bytes in flight
// (RuntimeOptions::max_in_flight_bytes) and its pack buffers (issue #10): many concurrent backups
// stay within the bound together, restore exactly, and leave no pack memory behind.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <memory>
#include <string>
#include <vector>

#include "core/buffer_pool.h"
#include "core/runtime.h"
#include "support/test_util.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup {
namespace {

using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::MakeVolume;
using ::vmbackup::testing::TempDir;

// A local target in dir/target (created here) on runtime `rt`: 64 KiB blocks, 1 MiB packs.
StatusOr<std::shared_ptr<BackupTarget>> OpenTarget(const TempDir& dir,
                                                   const std::shared_ptr<Runtime>& rt) {
  TargetOptions o;
  o.runtime = rt;
  o.state_dir = dir.Sub("state");
  o.block_size = 64 * 1024;
  o.pack_size = 1 << 20;
  return BackupTarget::Open(R"({"type":"file","endpoint":")" + dir.Sub("target") + R"("})", o);
}

TEST(SharedUploadBudgetTest, ConcurrentBackupsShareTheRuntimesBoundAndBuffers) {
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.Sub("target").c_str(), 0755), 0);
  RuntimeOptions ro;
  ro.worker_threads = 2;
  ro.job_threads = 4;
  ro.max_in_flight_bytes = 3u << 20;  // about two 1 MiB packs for all the backups together
  auto rt = Runtime::Create(ro);
  EXPECT_EQ(rt->max_in_flight_bytes(), 3u << 20);
  auto target = OpenTarget(dir, rt);
  ASSERT_OK(target);

  constexpr int kJobs = 6;
  std::vector<std::unique_ptr<BackupJob>> jobs;
  for (int i = 0; i < kJobs; ++i) {
    const std::string name = "vm" + std::to_string(i);
    MakeVolume(dir.Sub(name + ".img"), 6 << 20, 100 + i, 256 << 10);
    BackupSpec spec;
    spec.name = name;
    spec.max_in_flight_bytes = 64u << 20;  // the job's own bound is not what limits here
    spec.volumes.push_back({"disk0", dir.Sub(name + ".img"), false, {}});
    auto job = BackupJob::Create(*target, spec);
    ASSERT_OK(job);
    ASSERT_OK((*job)->Start());
    jobs.push_back(std::move(*job));
  }
  for (auto& job : jobs) ASSERT_OK(job->Wait());

  internal::ByteBudget& budget = internal::ImplOf(rt)->upload_budget();
  EXPECT_GT(budget.peak(), 0u);  // the backups counted their packs against the Runtime's bound
  // Each pack (1 MiB of blocks plus its index and trailer) is below the bound, so the bound held.
  EXPECT_LE(budget.peak(), 3u << 20);
  EXPECT_EQ(budget.in_flight(), 0u);
  jobs.clear();
  // No backup runs: the Runtime keeps no pack buffers.
  EXPECT_EQ(internal::ImplOf(rt)->pack_buffers()->kept(), 0u);

  for (int i = 0; i < kJobs; ++i) {
    const std::string name = "vm" + std::to_string(i);
    RestoreSpec rs;
    rs.backup = name;
    rs.dest_dir = dir.Sub("restored-" + name);
    ASSERT_EQ(::mkdir(rs.dest_dir.c_str(), 0755), 0);
    auto plan = RestorePlan::Create(*target, rs);
    ASSERT_OK(plan);
    ASSERT_OK((*plan)->Run());
    EXPECT_EQ(FileSha256(rs.dest_dir + "/disk0.img"), FileSha256(dir.Sub(name + ".img"))) << name;
  }
}

// A backup keeps the Runtime's pack buffers from its creation, not only while it runs: backups
// queued behind the job pool reuse the buffers of the ones that ended before them (32 backups on 4
// job threads had faulted in fresh pack buffers whenever no backup happened to run for a moment).
TEST(SharedUploadBudgetTest, QueuedBackupsReuseThePackBuffersOfTheOnesBeforeThem) {
  TempDir dir;
  ASSERT_EQ(::mkdir(dir.Sub("target").c_str(), 0755), 0);
  RuntimeOptions ro;
  ro.worker_threads = 1;
  ro.job_threads = 1;
  auto rt = Runtime::Create(ro);
  auto target = OpenTarget(dir, rt);
  ASSERT_OK(target);
  internal::BufferPool& pool = *internal::ImplOf(rt)->pack_buffers();

  int seed = 7;
  auto make = [&](const std::string& name) {
    // Different data each: a backup that deduplicates everything takes no pack buffer.
    MakeVolume(dir.Sub(name + ".img"), 3 << 20, seed++, 256 << 10);
    BackupSpec spec;
    spec.name = name;
    spec.volumes.push_back({"disk0", dir.Sub(name + ".img"), false, {}});
    return BackupJob::Create(*target, spec);
  };
  auto first = make("first");
  ASSERT_OK(first);
  auto second = make("second");  // created (queued) before the first one runs
  ASSERT_OK(second);
  ASSERT_OK((*first)->Run());
  // The first backup ended; the second, not started yet, keeps its buffers for itself.
  EXPECT_GT(pool.kept(), 0u);
  const uint64_t taken = pool.taken(), reused = pool.reused();
  ASSERT_OK((*second)->Run());
  EXPECT_GT(pool.taken(), taken);
  EXPECT_EQ(pool.taken() - taken, pool.reused() - reused);  // every buffer it took was recycled
  // No backup is pending any more: the Runtime keeps no pack memory.
  EXPECT_EQ(pool.kept(), 0u);
  first->reset();
  second->reset();
  EXPECT_EQ(pool.kept(), 0u);

  // A backup that is created and dropped without running lets go of the buffers too.
  auto third = make("third");
  ASSERT_OK(third);
  auto fourth = make("fourth");
  ASSERT_OK(fourth);
  ASSERT_OK((*third)->Run());
  EXPECT_GT(pool.kept(), 0u);
  fourth->reset();
  EXPECT_EQ(pool.kept(), 0u);
}

}  // namespace
}  // namespace vmbackup
