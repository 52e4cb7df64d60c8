// The backup's publisher: data before metadata, the record last. AwaitData waits until every pack
// and pack index the block processor submitted is durable; PublishBackup then writes each
// volume's fingerprints and volume index, and finally the backup record with create-if-absent:
// the record's presence means everything it needs is stored (docs/FORMAT.md), so a crash or an
// error anywhere before leaves no backup, only unreferenced objects.
//
// Thread-safety: called by one job's driver.
#ifndef VMBACKUP_ENGINE_BACKUP_PUBLISHER_H_
#define VMBACKUP_ENGINE_BACKUP_PUBLISHER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "engine/backup_planner.h"
#include "engine/block_processor.h"
#include "engine/job_runner.h"
#include "engine/pipeline.h"
#include "repo/fingerprints.h"
#include "store/object_store.h"
#include "vmbackup/backup_info.h"

namespace vmbackup::internal {

// What the record says besides its volumes and totals.
struct RecordHeader {
  std::string name;              // the backup's name
  std::string vm_name;           // the VM identity ("" = unnamed)
  std::string vm_namespace;      //
  std::string created_at;        // RFC 3339, when the job started
  std::string parent;            // "" = none
  std::string vm_metadata_json;  // a JSON object (stored re-serialized)
  double started = 0;            // MonotonicSeconds() when the job started
  // The freeze window (null or not frozen: no freeze hook ran); read when the record is written.
  const FreezeWindow* freeze = nullptr;
};

// One volume to publish: the processor's outcome and what the record says of the volume.
struct VolumeToPublish {
  std::string name;
  uint64_t size = 0;
  uint32_t block_size = 0;
  std::string provider;     // VolumeBackupInfo::provider
  std::string snapshot;     // VolumeBackupInfo::snapshot
  std::string consistency;  // VolumeBackupInfo::consistency
  std::string checkpoint;   // VolumeBackupInfo::checkpoint
  int64_t changed_bytes = -1;
  VolumeOutcome outcome;
};

// Waits until every submitted upload ended (even after an error: nothing may still be written
// once the job ends), then returns, first that applies: `processing` when not OK (the block
// processor's first error), the first upload error, kCancelled "backup '<backup>' cancelled;
// nothing was published" when `run` was cancelled; else OK.
Status AwaitData(PackUploader& uploader, const Status& processing, const JobRunner& run,
                 const std::string& backup);

// Writes, per volume in order, its fingerprints (when `fkeys`: masked under a fresh salt,
// authenticated and bound to the volume index) and its volume index, then the record with
// create-if-absent. Adds what it writes to run's bytes_written. Returns the record published.
// Errors: the store's, with context "write block fingerprints of '<volume>'", "write volume index
// of '<volume>'" or "publish backup record"; kAlreadyExists when a record of this name appeared
// meanwhile; kCancelled (as AwaitData's) when `run` is cancelled before the record is written;
// kUnavailable when no random key or salt can be drawn.
// REQUIRES: AwaitData returned OK (the data every volume index refers to is stored).
StatusOr<BackupInfo> PublishBackup(ObjectStore& store, JobRunner& run, const FingerprintKeys* fkeys,
                                   const RecordHeader& header,
                                   std::vector<VolumeToPublish> volumes);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_ENGINE_BACKUP_PUBLISHER_H_
