// Runtime: the async core every target and job runs on. See docs/threading.md.
//
// Every field has a default that suits a host with no special needs; the comment beside it says
// what the default is. Structs only grow at the end.
#ifndef VMBACKUP_RUNTIME_H_
#define VMBACKUP_RUNTIME_H_

#include <cstdint>
#include <memory>

#include "vmbackup/export.h"

namespace vmbackup {

namespace internal {
struct ImplAccess;  // the library's own access to Impl (src/core/impl_access.h)
}  // namespace internal

// Threads of a Runtime.
struct RuntimeOptions {
  // Threads for CPU work (hashing, compression) of backup and restore pipelines.
  // Default 0 = std::thread::hardware_concurrency().
  int worker_threads = 0;
  // Threads that run blocking file I/O (writes, fsync, renames) for local-directory targets, and
  // restore tasks. Default 0 = 4.
  int blocking_threads = 0;
  // Threads that drive asynchronous network I/O (S3, NFS) and timers. Default 0 = 1.
  int io_threads = 0;
  // Backups and restores that run at once; jobs started beyond this wait (in state kInProgress,
  // with no bytes done) until one ends, in the order they were started. Bounds the memory and the
  // connections many jobs take together. Default 0 = 4.
  int job_threads = 0;
  // Pack bytes being uploaded at once by all the backups of this runtime together (each backup's
  // own BackupSpec::max_in_flight_bytes bounds it as well). Bounds the memory many concurrent
  // backups take. Default 0 = 256 MiB. A pack larger than the bound is uploaded alone.
  uint64_t max_in_flight_bytes = 0;
};

// The async core: an event loop for network I/O and timers, a worker pool for CPU work, a pool
// for blocking file I/O and a pool that runs jobs (each job's driver). These are the only threads
// the library starts. Targets and jobs share one Runtime; most hosts use Runtime::Default().
//
// Thread-safety: all methods are thread-safe. A Runtime lives as long as the last shared_ptr to it;
// destroying it joins its threads (never destroy it from one of its own threads).
class VMBACKUP_EXPORT Runtime {
 public:
  // Creates a runtime with its own threads. Never fails (threads are started lazily by the OS).
  static std::shared_ptr<Runtime> Create(const RuntimeOptions& options = {});
  // The process-wide runtime, created on first use with default options.
  static std::shared_ptr<Runtime> Default();

  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;
  ~Runtime();

  int worker_threads() const;
  // Every thread this runtime started: io + workers + blocking + jobs.
  int thread_count() const;
  // The bound on pack bytes in flight shared by this runtime's backups (RuntimeOptions).
  uint64_t max_in_flight_bytes() const;

 private:
  friend struct internal::ImplAccess;
  struct Impl;
  Impl* impl() const { return impl_.get(); }
  explicit Runtime(const RuntimeOptions& options);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vmbackup

#endif  // VMBACKUP_RUNTIME_H_
