// RestorePlan: restores the volumes (and the VM metadata) of a backup.
//
// Blocks are fetched in parallel, decompressed, checked against their SHA-256 digest and written at
// their offsets; zero and hole blocks are left as holes. Each volume file is written under a
// temporary name beside its destination and renamed into place only when every volume is complete
// and fsynced, so a destination file either keeps what it was or holds the whole restored volume.
// A digest mismatch fails the restore with kDataLoss naming the backup, volume, offset and object.
//
// Everything read from the target is checked before it is used: volume names that would put a
// file outside dest_dir, sizes beyond the format's limits, damaged indexes all fail with kDataLoss
// before anything is written.
//
// Block devices (an explicit destination that is a device, or a symbolic link to one such as
// /dev/vg0/lv) are written in place, so they cannot be swapped in atomically: they need
// `overwrite`, are opened exclusively (a mounted or otherwise held device is refused with
// kFailedPrecondition), must be at least as large as the volume, and get every block written
// (zero and hole blocks as zeros). A restore that fails or is cancelled after it started writing
// a device leaves that device partly written: blocks already written hold the backup's data, the
// rest still hold the device's old contents. Its old contents are not kept anywhere.
//
// Thread-safety: as BackupJob: all methods are thread-safe; Start() once.
#ifndef VMBACKUP_RESTORE_PLAN_H_
#define VMBACKUP_RESTORE_PLAN_H_

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "vmbackup/backup_job.h"
#include "vmbackup/backup_target.h"
#include "vmbackup/export.h"
#include "vmbackup/options.h"
#include "vmbackup/status.h"

namespace vmbackup {

namespace internal {
struct ImplAccess;  // the library's own access to Impl (src/core/impl_access.h)
}  // namespace internal

// Where one volume of the backup goes.
struct VolumeDestination {
  std::string volume;  // volume name in the backup
  // Destination file (created or replaced), or an existing block device or a symbolic link to one
  // (explicit destinations only; written in place). A path derived from dest_dir is never followed
  // through a symbolic link: a link there is replaced like a file.
  std::string path;
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
  // Name for the restored VM's metadata; default empty = keep the original.
  std::string new_vm_name;
  // Replace existing destinations (files, and block devices written in place). Default false: any
  // existing destination, block devices included, gives kAlreadyExists before anything is written.
  bool overwrite = false;
  ProgressCallback progress;       // default none
  int progress_interval_ms = 200;  // default 200 ms
  // Permission bits of restored volume files and vm.json (exactly these, whatever the umask).
  // Default 0600: guest disks and VM metadata are readable by their owner only.
  uint32_t file_mode = 0600;
};

class VMBACKUP_EXPORT RestorePlan {
 public:
  // Reads the backup record and checks the spec. Returns kNotFound for an unknown backup or volume,
  // kInvalidArgument for a bad spec (naming the field), kAlreadyExists for an existing destination
  // without `overwrite`, kFailedPrecondition for a destination device that is in use or smaller
  // than its volume (or a destination that is neither file nor device), kDataLoss for a damaged
  // or hostile record.
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
  // kFailedPrecondition (a device became busy), kUnavailable, kCancelled, kInternal. On any
  // failure no destination file is created or changed; block devices: see the file comment.
  // Wait() before Start() starts it.
  Status Wait();
  Status Run();
  // Waits at most `timeout` for the job to end: its final status (as Wait() returns it), or
  // nullopt if it still runs. Like Wait(), starts the job if it was not started. Never blocks
  // longer than `timeout` (0 = just look).
  std::optional<Status> WaitFor(std::chrono::milliseconds timeout);
  // Calls `fn` exactly once with the final status when the job ends, before Wait() returns: on a
  // Runtime thread, or at once on the calling thread if the job already ended. `fn` must return
  // quickly and must neither wait for nor destroy this job; an exception it throws is dropped.
  // Several callbacks run in the order they were added.
  void OnDone(std::function<void(const Status&)> fn);
  void Cancel();

  JobState state() const;
  Progress progress() const;
  // The backup being restored.
  const BackupInfo& backup() const;
  // The destination path chosen for each volume, in backup order.
  std::vector<VolumeDestination> destinations() const;

 private:
  friend struct internal::ImplAccess;
  struct Impl;
  explicit RestorePlan(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vmbackup

#endif  // VMBACKUP_RESTORE_PLAN_H_
