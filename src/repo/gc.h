// Garbage collection of a repository (docs/FORMAT.md "Garbage collection") and the writer side of
// its protocol (leases).
//
// A GC run computes the live set (every data digest of every record's volume indexes, kept as a
// sorted vector of 8-byte digest prefixes), then walks every pack index once: packs none of whose
// blocks is live become candidates; a candidate that a previous run listed at least the grace
// period earlier loses its pack index; a pack without an index that a previous run already saw
// without one at least the grace period earlier is re-checked against the live set (from its
// trailer) and deleted, unless a running backup's lease says it may still use it. The state
// between runs is gc/<run>.candidates. Stray .tmp/ files likewise.
//
// Thread-safety: RunGc may run concurrently with backups, restores and deletes on any host; two
// GC runs exclude each other through gc/lock.json. WriterLease is used by one job.
#ifndef VMBACKUP_REPO_GC_H_
#define VMBACKUP_REPO_GC_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "repo/repository.h"
#include "store/object_store.h"
#include "vmbackup/maintenance.h"

namespace vmbackup::internal {

inline constexpr const char* kGcPrefix = "gc/";
inline constexpr const char* kGcLockKey = "gc/lock.json";
inline constexpr const char* kLeasePrefix = "leases/";
inline constexpr const char* kTmpPrefix = ".tmp/";
inline constexpr const char* kPackPrefix = "packs/";
inline constexpr int64_t kDefaultGraceSeconds = 24 * 3600;
inline constexpr int64_t kDefaultLeaseExpirySeconds = 7 * 24 * 3600;
// GcOptions::max_unused_percent's default.
inline constexpr int kDefaultMaxUnusedPercent = 10;
// A gc/lock.json older than this (GC host's clock) was left by a killed run and is broken.
inline constexpr int64_t kGcLockStaleSeconds = 6 * 3600;
inline constexpr uint64_t kMaxGcStateBytes = 64ull << 20;
inline constexpr uint64_t kMaxLeaseBytes = 64 * 1024;

// Seconds since the Unix epoch on the GC host (injectable for tests).
using GcClock = std::function<int64_t()>;
int64_t SystemUnixSeconds();

// The id of the newest completed GC run on the target ("" when there is none). Writers record it
// in their lease: packs whose index a completed run deleted are invisible to them.
StatusOr<std::string> NewestCompletedGcRun(ObjectStore& store);

// The lease of one running backup: leases/<job>.<rand>.json, written before the backup loads the
// repository index, deleted when the job ends (whatever its outcome). While it exists (and is not
// expired), GC deletes no pack whose index a GC run that the writer had not seen completed
// deleted, nor any pack without index first seen by such a run.
class WriterLease {
 public:
  // Lists gc/, then writes the lease. The store's error on failure.
  static StatusOr<std::unique_ptr<WriterLease>> Acquire(ObjectStore& store, const std::string& job);
  // Deletes the lease (best effort: an expired lease is removed by GC).
  ~WriterLease();
  WriterLease(const WriterLease&) = delete;
  WriterLease& operator=(const WriterLease&) = delete;
  const std::string& key() const { return key_; }

 private:
  WriterLease(ObjectStore& store, std::string key) : store_(store), key_(std::move(key)) {}
  ObjectStore& store_;
  std::string key_;
};

// `index` completed with the packs that GC condemned (pack index deleted, pack still there) and
// that hold a data block of `volumes` missing from `index`: a backup that deduplicated against
// such a pack may publish before the next GC run finds the pack live again and restores its index;
// its restore reads the blocks from the pack's trailer index meanwhile. Returns `index` itself when
// nothing is missing; blocks found nowhere stay missing (the restore reports them).
StatusOr<std::shared_ptr<const RepoIndex>> WithCondemnedPacks(
    ObjectStore& store, std::shared_ptr<const RepoIndex> index,
    const std::vector<const VolumeIndex*>& volumes);

// One GC run (see the file comment). Errors: kInvalidArgument for bad options; kFailedPrecondition
// when another run holds gc/lock.json or the descriptor asks for a newer writer; kCancelled when
// the progress callback asked to stop; the store's errors.
StatusOr<GcReport> RunGc(Repository& repo, const GcOptions& options,
                         const GcClock& clock = SystemUnixSeconds);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_REPO_GC_H_
