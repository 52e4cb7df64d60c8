// JobRunner implementation (see job_runner.h).
#include "engine/job_runner.h"

#include "core/errors.h"
#include "core/runtime.h"
#include "core/util.h"

namespace vmbackup::internal {

JobRunner::JobRunner(std::shared_ptr<Runtime> runtime, std::function<Status()> body,
                     ProgressCallback callback, int interval_ms)
    : runtime_(std::move(runtime)),
      body_(std::move(body)),
      callback_(std::move(callback)),
      interval_ns_(static_cast<int64_t>(interval_ms > 0 ? interval_ms : 200) * 1000000) {}

JobRunner::~JobRunner() {
  Cancel();
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [this] { return exited_; });
}

Status JobRunner::Start() {
  std::lock_guard<std::mutex> l(mu_);
  if (started_) return FailedPreconditionError("job already started");
  started_ = true;
  state_ = JobState::kInProgress;
  start_ = MonotonicSeconds();
  exited_ = false;
  // On the Runtime's job pool: a job started beyond RuntimeOptions::job_threads waits there.
  try {
    PostDriver();
  } catch (...) {
    // Not queued (out of memory): the job never started, and the destructor must not wait.
    started_ = false;
    state_ = JobState::kPending;
    exited_ = true;
    return CurrentExceptionToStatus("start job");
  }
  return Status::Ok();
}

void JobRunner::PostDriver() {
  internal::ImplOf(runtime_)->PostJob([this] {
    Status st;
    try {
      st = cancelled() ? CancelledError("cancelled before it started") : body_();
    } catch (...) {
      st = CurrentExceptionToStatus("job");
    }
    if (st.ok() && cancelled()) st = CancelledError("cancelled");
    SetPhase(Progress::Phase::kDone);
    MaybeReport(/*force=*/true);
    std::vector<std::function<void(const Status&)>> callbacks;
    {
      std::lock_guard<std::mutex> l2(mu_);
      status_ = st;
      state_ = st.ok() ? JobState::kReady : JobState::kError;
      final_ = true;  // OnDone from now on calls at once
      callbacks.swap(on_done_);
    }
    // Before Wait() returns: when it does, every completion callback has run.
    for (auto& fn : callbacks) {
      try {
        fn(st);
      } catch (...) {
        // A host's callback that throws must not take the Runtime's thread down.
      }
    }
    // Last touch of this object: the destructor may run as soon as the lock is released.
    std::lock_guard<std::mutex> l3(mu_);
    finished_ = true;
    exited_ = true;
    cv_.notify_all();
  });
}

Status JobRunner::EnsureStarted() {
  bool need_start;
  {
    std::lock_guard<std::mutex> l(mu_);
    need_start = !started_;
  }
  if (need_start) {
    Status st = Start();
    if (!st.ok() && st.code() != StatusCode::kFailedPrecondition) return st;
  }
  return Status::Ok();
}

Status JobRunner::Wait() {
  VMB_RETURN_IF_ERROR(EnsureStarted());
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [this] { return finished_; });
  return status_;
}

std::optional<Status> JobRunner::WaitFor(std::chrono::milliseconds timeout) {
  VMB_RETURN_IF_ERROR(EnsureStarted());
  std::unique_lock<std::mutex> l(mu_);
  if (!cv_.wait_for(l, timeout, [this] { return finished_; })) return std::nullopt;
  return status_;
}

void JobRunner::OnDone(std::function<void(const Status&)> fn) {
  Status final_status;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!final_) {
      on_done_.push_back(std::move(fn));
      return;
    }
    final_status = status_;
  }
  try {
    fn(final_status);
  } catch (...) {
  }
}

JobState JobRunner::state() const {
  std::lock_guard<std::mutex> l(mu_);
  return state_;
}

void JobRunner::SetPhase(Progress::Phase p) {
  counters_.phase.store(static_cast<int>(p), std::memory_order_relaxed);
}

Progress JobRunner::Snapshot() const {
  Progress p;
  const auto& c = counters_;
  p.phase = static_cast<Progress::Phase>(c.phase.load(std::memory_order_relaxed));
  p.bytes_total = c.bytes_total.load(std::memory_order_relaxed);
  p.bytes_scanned = c.bytes_scanned.load(std::memory_order_relaxed);
  p.bytes_read = c.bytes_read.load(std::memory_order_relaxed);
  p.bytes_new = c.bytes_new.load(std::memory_order_relaxed);
  p.bytes_reused = c.bytes_reused.load(std::memory_order_relaxed);
  p.bytes_written = c.bytes_written.load(std::memory_order_relaxed);
  p.blocks_total = c.blocks_total.load(std::memory_order_relaxed);
  p.blocks_done = c.blocks_done.load(std::memory_order_relaxed);
  double start;
  {
    std::lock_guard<std::mutex> l(mu_);
    start = start_;
  }
  p.elapsed_seconds = start > 0 ? MonotonicSeconds() - start : 0;
  if (p.elapsed_seconds > 0)
    p.bytes_per_second = static_cast<double>(p.bytes_scanned) / p.elapsed_seconds;
  if (p.phase == Progress::Phase::kDone) {
    p.eta_seconds = 0;
  } else if (p.bytes_per_second > 0 && p.bytes_total >= p.bytes_scanned && p.bytes_scanned > 0) {
    p.eta_seconds = static_cast<double>(p.bytes_total - p.bytes_scanned) / p.bytes_per_second;
  }
  return p;
}

void JobRunner::MaybeReport(bool force) {
  if (!callback_) return;
  int64_t now = static_cast<int64_t>(MonotonicSeconds() * 1e9);
  int64_t next = next_report_ns_.load(std::memory_order_relaxed);
  if (!force && now < next) return;
  if (!force && !next_report_ns_.compare_exchange_strong(next, now + interval_ns_)) return;
  std::unique_lock<std::mutex> l(report_mu_, std::defer_lock);
  if (force) {
    l.lock();
  } else if (!l.try_lock()) {
    return;
  }
  bool keep_going = true;
  try {
    keep_going = callback_(Snapshot());
  } catch (...) {
    keep_going = false;  // an exception in user code cancels the job; it never crosses our threads
  }
  if (!keep_going) Cancel();
}

}  // namespace vmbackup::internal
