// Runtime::Impl: the async core behind the public Runtime.
//
//  - io():       a Boost.Asio io_context run by `io_threads` threads: network event loops
//                (curl multi, libnfs contexts and the NFS store's coroutines) and timers.
//                Handlers here must never block.
//  - workers():  a thread pool for CPU work (hashing, compression) of job pipelines. Pipeline
//                tasks may block waiting for store operations, which complete on io() or
//                blocking() threads, so waiting here never deadlocks.
//  - blocking(): a thread pool for blocking file I/O (local-directory stores: write, fsync,
//                rename) and for restore tasks (which wait on reads and write files).
//  - pack_buffers(), upload_budget(): memory shared by the backups of this runtime.
//  - jobs():     a thread pool that runs job drivers (BackupJob / RestorePlan bodies); a driver
//                blocks while its tasks run on the other pools, never the other way round.
//
// Thread-safety: all members are thread-safe. Destruction joins all threads.
#ifndef VMBACKUP_CORE_RUNTIME_H_
#define VMBACKUP_CORE_RUNTIME_H_

#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "core/asio.h"
#include "core/buffer_pool.h"
#include "core/byte_budget.h"
#include "core/impl_access.h"
#include "vmbackup/runtime.h"

namespace vmbackup {

struct Runtime::Impl {
  explicit Impl(const RuntimeOptions& options);
  ~Impl();

  boost::asio::io_context& io() { return io_; }
  boost::asio::thread_pool& workers() { return workers_; }
  boost::asio::thread_pool& blocking() { return blocking_; }
  int worker_threads() const { return worker_threads_; }
  int blocking_threads() const { return blocking_threads_; }
  int thread_count() const { return thread_count_; }

  // Pack buffers shared by the backups of this runtime (kept while a backup holds the pool), so
  // concurrent and consecutive backups reuse memory instead of faulting in fresh pages.
  const std::shared_ptr<internal::BufferPool>& pack_buffers() const { return pack_buffers_; }
  // Pack bytes in flight, summed over all the backups of this runtime.
  internal::ByteBudget& upload_budget() { return upload_budget_; }

  // Posted tasks must report their own errors; an exception that still escapes one is dropped
  // here (last line of defence: a pool thread never takes the host process down).
  void PostWork(std::function<void()> fn) { boost::asio::post(workers_, Guarded(std::move(fn))); }
  void PostBlocking(std::function<void()> fn) {
    boost::asio::post(blocking_, Guarded(std::move(fn)));
  }
  void PostIo(std::function<void()> fn) { boost::asio::post(io_, Guarded(std::move(fn))); }
  void PostJob(std::function<void()> fn) { boost::asio::post(jobs_, Guarded(std::move(fn))); }

 private:
  static std::function<void()> Guarded(std::function<void()> fn) {
    return [fn = std::move(fn)] {
      try {
        fn();
      } catch (...) {
      }
    };
  }
  int worker_threads_;
  int blocking_threads_;
  int job_threads_;
  int thread_count_;
  internal::ByteBudget upload_budget_;
  std::shared_ptr<internal::BufferPool> pack_buffers_;
  boost::asio::io_context io_;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> guard_;
  std::vector<std::thread> io_threads_;
  boost::asio::thread_pool workers_;
  boost::asio::thread_pool blocking_;
  boost::asio::thread_pool jobs_;
};

}  // namespace vmbackup

#endif  // VMBACKUP_CORE_RUNTIME_H_
