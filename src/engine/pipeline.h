// Pipeline building blocks shared by backup and restore: running N tasks on the worker pool and
// waiting for them, the job-local set of claimed block digests, and the pack uploader that bounds
// the bytes in flight. Thread-safety: every class here is thread-safe.
#ifndef VMBACKUP_ENGINE_PIPELINE_H_
#define VMBACKUP_ENGINE_PIPELINE_H_

#include <array>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>

#include <absl/container/flat_hash_set.h>

#include "core/byte_budget.h"
#include "repo/format.h"
#include "store/object_store.h"
#include "vmbackup/options.h"
#include "vmbackup/runtime.h"

namespace vmbackup::internal {

// Runs fn(0..n-1) on the runtime's worker pool and returns when all have returned. An exception
// escaping fn is returned as a Status (CurrentExceptionToStatus naming `what`; the first wins).
[[nodiscard]] Status RunOnWorkers(Runtime& rt, int n, const std::function<void(int)>& fn,
                                  const std::string& what);
// Runs fn(0..n-1) on the runtime's blocking pool: for tasks that spend much of their time waiting
// for reads from the target and writing files, so that more of them than cores keep both the
// network and the CPUs busy. Such a task must never wait for work of the blocking pool itself.
// Exceptions as RunOnWorkers.
[[nodiscard]] Status RunOnBlocking(Runtime& rt, int n, const std::function<void(int)>& fn,
                                   const std::string& what);

// Digests of new blocks claimed by this job: the first claimant stores the block, others reference
// it.
class ClaimSet {
 public:
  // True when `d` was not claimed before (the caller must now store the block).
  bool TryClaim(const Digest& d);

 private:
  static constexpr int kShards = 64;
  struct Shard {
    std::mutex mu;
    absl::flat_hash_set<Digest, DigestHash> set;
  };
  std::array<Shard, kShards> shards_;
};

// First error wins; later ones are dropped.
class FirstError {
 public:
  void Set(const Status& st);
  Status Get() const;
  // Lock-free: called per block on the hot path.
  bool has_error() const { return set_.load(std::memory_order_acquire); }

 private:
  mutable std::mutex mu_;
  Status st_;
  std::atomic<bool> set_{false};
};

// Uploads sealed packs (pack object first, then its index) with at most `max_in_flight` bytes
// outstanding. Submit blocks while the cap is reached.
class PackUploader {
 public:
  // At most `max_in_flight` bytes of this uploader's packs are in flight, and, when `shared` is
  // given, its bytes count against that budget too (the Runtime's, shared by all its backups).
  // `pool` (optional) receives each pack's buffer back once its upload finished.
  PackUploader(ObjectStore& store, uint64_t max_in_flight, std::function<void(uint64_t)> on_written,
               std::shared_ptr<BufferPool> pool = nullptr, ByteBudget* shared = nullptr);
  ~PackUploader();  // waits for outstanding uploads
  void Submit(PackBuilder::Sealed sealed);
  // Waits for every upload; returns the first error.
  Status Drain();
  bool failed() const { return error_.has_error(); }
  uint64_t packs() const;

 private:
  void Done(uint64_t bytes, const Status& st);
  ObjectStore& store_;
  ByteBudget own_;
  ByteBudget* shared_;
  std::function<void(uint64_t)> on_written_;
  std::shared_ptr<BufferPool> pool_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int outstanding_ = 0;
  uint64_t packs_ = 0;
  FirstError error_;
};

}  // namespace vmbackup::internal

#endif  // VMBACKUP_ENGINE_PIPELINE_H_
