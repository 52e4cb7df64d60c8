// RestorePlan: restores the volumes (and the VM metadata) of a backup.
//
// Blocks are fetched in parallel, decompressed, checked against their SHA-256 digest and written at
// their offsets; zero and hole blocks are left as holes. Each volume is written under a temporary
// name beside its destination and renamed into place only when complete and fsynced, so a
// destination path either does not exist or holds the whole restored volume. A digest mismatch
// fails the restore with kDataLoss naming the backup, volume, offset and object.
//
// Thread-safety: as BackupJob: all methods are thread-safe; Start() once.
#ifndef VMBACKUP_RESTORE_PLAN_H_
#define VMBACKUP_RESTORE_PLAN_H_

#include <memory>
#include <string>
#include <vector>

#include "vmbackup/backup_job.h"
#include "vmbackup/backup_target.h"
#include "vmbackup/export.h"
#include "vmbackup/options.h"
#include "vmbackup/status.h"

namespace vmbackup {

// Where one volume of the backup goes.
struct VolumeDestination {
  std::string volume;  // volume name in the backup
  std::string path;    // destination file (created) or existing block device (written in place)
};

struct RestoreSpec {
  std::string backup;  // name of the backup to restore (required)
  // Explicit destinations. Default empty = every volume of the backup, to
  // "<dest_dir>/<volume>.img".
  std::vector<VolumeDestination> volumes;
  // Directory for volumes without an explicit destination, and for the VM metadata file "vm.json"
  // (rewritten with new_vm_name and the restored paths). Default empty = do not write vm.json; then
  // every volume needs an explicit destination.
  std::string dest_dir;
  std::string
      new_vm_name;  // name for the restored VM's metadata; default empty = keep the original
  // Replace existing destination files. Default false: an existing destination gives kAlreadyExists
  // before anything is written.
  bool overwrite = false;
  ProgressCallback progress;       // default none
  int progress_interval_ms = 200;  // default 200 ms
};

class VMBACKUP_EXPORT RestorePlan {
 public:
  // Reads the backup record and checks the spec. Returns kNotFound for an unknown backup or volume,
  // kInvalidArgument for a bad spec (naming the field), kAlreadyExists for an existing destination
  // without `overwrite`, kDataLoss for a damaged record.
  static StatusOr<std::unique_ptr<RestorePlan>> Create(std::shared_ptr<BackupTarget> target,
                                                       RestoreSpec spec);

  RestorePlan(const RestorePlan&) = delete;
  RestorePlan& operator=(const RestorePlan&) = delete;
  // Cancels a running restore and waits for it to end.
  ~RestorePlan();

  // Starts restoring on the runtime's threads. kFailedPrecondition if already started.
  Status Start();
  // Blocks until done. OK, or: kDataLoss (corrupt block/index, message names backup, volume, offset
  // and object), kNotFound (a pack is missing), kResourceExhausted (destination full),
  // kUnavailable, kCancelled. On any failure no destination path is created or changed. Wait()
  // before Start() starts it.
  Status Wait();
  Status Run();
  void Cancel();

  JobState state() const;
  Progress progress() const;
  // The backup being restored.
  const BackupInfo& backup() const;
  // The destination path chosen for each volume, in backup order.
  std::vector<VolumeDestination> destinations() const;

  struct Impl;

 private:
  explicit RestorePlan(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vmbackup

#endif  // VMBACKUP_RESTORE_PLAN_H_
