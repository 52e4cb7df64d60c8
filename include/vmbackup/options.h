// Report and option structs shared by the vmbackup classes: progress and its callback, extents.
// (The Runtime and its options are in vmbackup/runtime.h.)
//
// Every field has a default that suits a host with no special needs; the comment beside it says
// what the default is. Structs only grow at the end.
#ifndef VMBACKUP_OPTIONS_H_
#define VMBACKUP_OPTIONS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace vmbackup {

// A snapshot of a long-running job's progress. All byte counts are cumulative since the job
// started.
struct Progress {
  enum class Phase : int {
    kPreparing = 0,     // opening the target, loading indexes, snapshotting volumes
    kTransferring = 1,  // reading / hashing / uploading (backup) or fetching / writing (restore)
    kFinalizing = 2,    // flushing packs, publishing indexes and the record, fsync + rename
    kDone = 3,          // finished (successfully or not)
  };
  Phase phase = Phase::kPreparing;
  uint64_t bytes_total = 0;  // logical bytes of all volumes involved
  // Logical bytes dealt with so far (read, skipped as hole, or unchanged).
  uint64_t bytes_scanned = 0;
  // Bytes actually read from the source volume (backup) or target (restore).
  uint64_t bytes_read = 0;
  uint64_t bytes_new = 0;       // backup: raw bytes of blocks that were not on the target yet
  uint64_t bytes_reused = 0;    // backup: raw bytes of blocks already on the target (deduplicated)
  uint64_t bytes_written = 0;   // bytes written to the target (backup, after compression) or volume
  uint64_t blocks_total = 0;    // blocks of all volumes
  uint64_t blocks_done = 0;     // blocks dealt with so far
  double elapsed_seconds = 0;   // since the job started
  double bytes_per_second = 0;  // bytes_scanned / elapsed_seconds
  double eta_seconds = -1;      // estimated time to completion; -1 while unknown
};

// Called with progress reports. Return true to continue, false to cancel the job (it then ends with
// StatusCode::kCancelled). Called from a library thread, never while an internal lock is held, and
// never concurrently with itself for one job. Must not call back into the same job.
using ProgressCallback = std::function<bool(const Progress&)>;

// A byte range [offset, offset + length).
struct Extent {
  uint64_t offset = 0;
  uint64_t length = 0;
};

}  // namespace vmbackup

#endif  // VMBACKUP_OPTIONS_H_
