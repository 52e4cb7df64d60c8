// Jobs on the Runtime's job pool (issue #10): WaitFor, completion callbacks, and a bound on the
// jobs that run at once (RuntimeOptions::job_threads), with a local target.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "support/test_util.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup {
namespace {

using std::chrono::milliseconds;
using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::MakeVolume;
using ::vmbackup::testing::TempDir;

class JobLifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::mkdir(dir_.Sub("target").c_str(), 0755), 0);
    RuntimeOptions ro;
    ro.worker_threads = 2;
    ro.job_threads = 2;
    rt_ = Runtime::Create(ro);
    TargetOptions o;
    o.runtime = rt_;
    o.state_dir = dir_.Sub("state");
    auto t = BackupTarget::Open(R"({"type":"file","endpoint":")" + dir_.Sub("target") + R"("})", o);
    ASSERT_OK(t);
    target_ = *t;
  }
  void TearDown() override { target_.reset(); }

  // A backup of a fresh 4 MiB volume named `name`; `progress` may hold the job.
  std::unique_ptr<BackupJob> Job(const std::string& name, ProgressCallback progress = nullptr) {
    const std::string vol = dir_.Sub(name + ".img");
    MakeVolume(vol, 4 << 20, name.size() + 7);
    BackupSpec spec;
    spec.name = name;
    spec.volumes.push_back({"disk0", vol, false, {}});
    spec.progress = std::move(progress);
    spec.progress_interval_ms = 1;
    auto job = BackupJob::Create(target_, spec);
    EXPECT_OK(job);
    return job.ok() ? std::move(*job) : nullptr;
  }

  TempDir dir_;
  std::shared_ptr<Runtime> rt_;
  std::shared_ptr<BackupTarget> target_;
};

// A gate the test opens; progress callbacks of held jobs wait on it.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  std::atomic<int> waiting{0};
  void Wait() {
    std::unique_lock<std::mutex> l(mu);
    ++waiting;
    cv.wait(l, [this] { return open; });
    --waiting;
  }
  void Open() {
    std::lock_guard<std::mutex> l(mu);
    open = true;
    cv.notify_all();
  }
};

TEST_F(JobLifecycleTest, WaitForTimesOutWhileTheJobRunsThenReturnsItsStatus) {
  Gate gate;
  auto job = Job("held", [&gate](const Progress&) {
    gate.Wait();
    return true;
  });
  ASSERT_NE(job, nullptr);
  // WaitFor starts a job that was not started, like Wait.
  EXPECT_FALSE(job->WaitFor(milliseconds(50)).has_value());
  EXPECT_EQ(job->state(), JobState::kInProgress);
  EXPECT_FALSE(job->WaitFor(milliseconds(0)).has_value());
  gate.Open();
  auto done = job->WaitFor(milliseconds(60000));
  ASSERT_TRUE(done.has_value());
  EXPECT_OK(*done);
  EXPECT_EQ(job->state(), JobState::kReady);
  // After the end, WaitFor answers at once, with the same status, any number of times.
  auto again = job->WaitFor(milliseconds(0));
  ASSERT_TRUE(again.has_value());
  EXPECT_OK(*again);
}

TEST_F(JobLifecycleTest, OnDoneRunsOnceWithTheFinalStatusBeforeAndAfterTheEnd) {
  auto job = Job("cb");
  ASSERT_NE(job, nullptr);
  std::mutex mu;
  std::vector<std::string> calls;
  job->OnDone([&](const Status& st) {
    std::lock_guard<std::mutex> l(mu);
    calls.push_back("first:" + std::string(StatusCodeName(st.code())));
  });
  job->OnDone([&](const Status&) {
    std::lock_guard<std::mutex> l(mu);
    calls.push_back("second");
    throw std::runtime_error("a host callback that throws");  // dropped, the job is unharmed
  });
  ASSERT_OK(job->Run());
  // Registered after the end: called at once, on this thread.
  job->OnDone([&](const Status& st) { calls.push_back(st.ok() ? "late:OK" : "late:error"); });
  std::lock_guard<std::mutex> l(mu);
  EXPECT_EQ(calls, (std::vector<std::string>{"first:OK", "second", "late:OK"}));
}

TEST_F(JobLifecycleTest, CancelledJobReportsCancelledToWaitForAndOnDone) {
  Gate gate;
  auto job = Job("cancelled", [&gate](const Progress&) {
    gate.Wait();
    return true;
  });
  ASSERT_NE(job, nullptr);
  std::atomic<int> code{-1};
  job->OnDone([&code](const Status& st) { code = static_cast<int>(st.code()); });
  ASSERT_OK(job->Start());
  job->Cancel();
  gate.Open();
  auto done = job->WaitFor(milliseconds(60000));
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->code(), StatusCode::kCancelled);
  EXPECT_EQ(code.load(), static_cast<int>(StatusCode::kCancelled));
  auto list = target_->ListBackups();
  ASSERT_OK(list);
  EXPECT_TRUE(list->backups.empty()) << "a cancelled job published a record";
}

// job_threads = 2: a third job waits until one of the two running jobs ends, then runs; all three
// back up what they should.
TEST_F(JobLifecycleTest, JobsBeyondJobThreadsWaitTheirTurnAndThenRun) {
  Gate gate;
  std::atomic<int> third_progress{0};
  auto a = Job("a", [&gate](const Progress&) {
    gate.Wait();
    return true;
  });
  auto b = Job("b", [&gate](const Progress&) {
    gate.Wait();
    return true;
  });
  auto c = Job("c", [&third_progress](const Progress&) {
    ++third_progress;
    return true;
  });
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_NE(c, nullptr);
  ASSERT_OK(a->Start());
  ASSERT_OK(b->Start());
  const auto t0 = std::chrono::steady_clock::now();
  while (gate.waiting.load() < 2 &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30))
    std::this_thread::sleep_for(milliseconds(2));
  ASSERT_EQ(gate.waiting.load(), 2) << "the first two jobs should both be running";
  ASSERT_OK(c->Start());
  EXPECT_FALSE(c->WaitFor(milliseconds(200)).has_value()) << "a third job ran beside two";
  EXPECT_EQ(third_progress.load(), 0);
  EXPECT_EQ(c->state(), JobState::kInProgress);
  gate.Open();
  EXPECT_OK(c->Wait());
  EXPECT_OK(a->Wait());
  EXPECT_OK(b->Wait());
  EXPECT_GT(third_progress.load(), 0);
  auto list = target_->ListBackups();
  ASSERT_OK(list);
  EXPECT_EQ(list->backups.size(), 3u);
}

TEST_F(JobLifecycleTest, DestroyingAQueuedOrRunningJobCancelsItAndLeavesNoRecord) {
  Gate gate;
  {
    auto a = Job("a", [&gate](const Progress&) {
      gate.Wait();
      return true;
    });
    ASSERT_NE(a, nullptr);
    ASSERT_OK(a->Start());
    const auto t0 = std::chrono::steady_clock::now();
    while (gate.waiting.load() < 1 &&
           std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30))
      std::this_thread::sleep_for(milliseconds(2));
    a->Cancel();
    gate.Open();
    // ~BackupJob waits for the driver on the Runtime's job pool.
  }
  auto list = target_->ListBackups();
  ASSERT_OK(list);
  EXPECT_TRUE(list->backups.empty());
  // The pool is free again: a new job runs to the end and restores exactly.
  auto b = Job("after");
  ASSERT_NE(b, nullptr);
  ASSERT_OK(b->Run());
  RestoreSpec rs;
  rs.backup = "after";
  rs.dest_dir = dir_.Sub("restored");
  ASSERT_EQ(::mkdir(rs.dest_dir.c_str(), 0755), 0);
  auto plan = RestorePlan::Create(target_, rs);
  ASSERT_OK(plan);
  ASSERT_OK((*plan)->Run());
  EXPECT_EQ(FileSha256(dir_.Sub("restored/disk0.img")), FileSha256(dir_.Sub("after.img")));
}

}  // namespace
}  // namespace vmbackup
