// JobRunner: the state machine shared by BackupJob and RestorePlan (Pending → InProgress → Ready |
// Error), the job's driver (its body, run on the Runtime's job pool), cancellation, completion
// callbacks and throttled progress reporting.
//
// Thread-safety: all methods are thread-safe. Counters are atomics updated by pipeline workers; the
// user callback is called outside every lock, never concurrently with itself.
#ifndef VMBACKUP_ENGINE_JOB_RUNNER_H_
#define VMBACKUP_ENGINE_JOB_RUNNER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "vmbackup/backup_job.h"
#include "vmbackup/options.h"
#include "vmbackup/runtime.h"

namespace vmbackup::internal {

struct ProgressCounters {
  std::atomic<uint64_t> bytes_total{0}, bytes_scanned{0}, bytes_read{0}, bytes_new{0},
      bytes_reused{0}, bytes_written{0}, blocks_total{0}, blocks_done{0};
  std::atomic<int> phase{0};
};

class JobRunner {
 public:
  JobRunner(std::shared_ptr<Runtime> runtime, std::function<Status()> body,
            ProgressCallback callback, int interval_ms);
  ~JobRunner();  // cancels, and waits until the driver no longer touches this object

  Status Start();
  Status Wait();
  // nullopt if the job still runs after `timeout`.
  std::optional<Status> WaitFor(std::chrono::milliseconds timeout);
  // Calls `fn` once with the final status when the job ends, before Wait() returns: on the
  // driver's thread, or at once on this thread if the final status is known.
  void OnDone(std::function<void(const Status&)> fn);
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }
  JobState state() const;

  ProgressCounters& counters() { return counters_; }
  void SetPhase(Progress::Phase p);
  Progress Snapshot() const;
  // Reports progress if the interval has passed (or `force`). Cancels the job if the callback says
  // so.
  void MaybeReport(bool force = false);

 private:
  // Starts the job unless it was started (the Wait forms start it).
  Status EnsureStarted();
  // Queues the driver on the Runtime's job pool. REQUIRES: mu_ held. Throws when it cannot queue.
  void PostDriver();

  std::shared_ptr<Runtime> runtime_;
  std::function<Status()> body_;
  ProgressCallback callback_;
  int64_t interval_ns_;
  double start_ = 0;
  ProgressCounters counters_;
  std::atomic<bool> cancelled_{false};
  std::atomic<int64_t> next_report_ns_{0};
  std::mutex report_mu_;  // held while calling the user callback (try_lock: never waits)

  mutable std::mutex mu_;
  std::condition_variable cv_;
  JobState state_ = JobState::kPending;
  bool started_ = false;
  bool final_ = false;     // status_ is final (completion callbacks may still run)
  bool finished_ = false;  // final_, and every completion callback has run
  bool exited_ = true;     // the driver no longer touches this object (false while it may)
  Status status_;
  std::vector<std::function<void(const Status&)>> on_done_;
};

}  // namespace vmbackup::internal

#endif  // VMBACKUP_ENGINE_JOB_RUNNER_H_
