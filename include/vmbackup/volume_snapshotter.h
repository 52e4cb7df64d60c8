// VolumeSnapshotter: a point-in-time, read-only source for one volume (a regular file or block
// device).
//
// Snapshot() asks the host to freeze the guest (optional hook), then takes a reflink clone of the
// volume (FICLONE) where the filesystem supports it, so the guest can be thawed at once and keep
// writing while the backup reads the clone. Where reflinks are not supported the snapshot reads the
// volume directly; the host must then keep the volume quiet (powered-off VM, or frozen for the
// whole backup: SnapshotOptions::thaw_after_backup). Data extents come from SEEK_DATA/SEEK_HOLE, so
// holes are never read.
//
// Thread-safety: a VolumeSnapshotter may be used from one thread at a time. A VolumeSnapshot's
// const methods (ReadAt, DataExtents) are thread-safe and used by several pipeline workers at once.
#ifndef VMBACKUP_VOLUME_SNAPSHOTTER_H_
#define VMBACKUP_VOLUME_SNAPSHOTTER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "vmbackup/export.h"
#include "vmbackup/options.h"
#include "vmbackup/status.h"

namespace vmbackup {

namespace internal {
struct ImplAccess;  // the library's own access to Impl (src/core/impl_access.h)
}  // namespace internal

struct SnapshotOptions {
  enum class Mode : int {
    kAuto = 0,     // reflink clone if supported, else direct read
    kReflink = 1,  // reflink clone or fail with kFailedPrecondition
    kDirect = 2,   // always read the volume itself
  };
  Mode mode = Mode::kAuto;  // default kAuto
  // Host hooks, default empty (not called). freeze() runs before the snapshot is taken; a non-OK
  // result aborts the snapshot (thaw is not called). thaw() runs after the clone is made, or, for a
  // direct snapshot with thaw_after_backup, when the VolumeSnapshot is destroyed. thaw errors are
  // reported but never lose the snapshot. A BackupJob calls them once for all its volumes (one
  // freeze window: freeze, every volume's snapshot, thaw; direct reads with thaw_after_backup
  // thaw when the job ends) and records the window (BackupInfo::freeze_seconds) and each
  // volume's VolumeBackupInfo::snapshot and consistency.
  std::function<Status()> freeze;
  std::function<Status()> thaw;
  // For direct snapshots: keep the guest frozen until the snapshot is released. Default true.
  bool thaw_after_backup = true;
  // Directory for reflink clones. Default empty = beside the volume.
  std::string clone_dir;
  // What the host knows of the VM while a BackupJob snapshots its volumes (VolumeSnapshotter
  // itself ignores these two). kRunning: a volume that cannot be cloned and that no freeze keeps
  // still for the whole backup (no freeze hook, or thaw_after_backup false) makes the job fail
  // with kFailedPrecondition before anything is read, unless allow_inconsistent; kStopped: every
  // volume is recorded "stopped"; kUnknown (default): volumes read directly are recorded
  // "unknown".
  enum class VmState : int { kUnknown = 0, kRunning = 1, kStopped = 2 };
  VmState vm_state = VmState::kUnknown;
  bool allow_inconsistent = false;  // default false
  // The freeze deadline of a BackupJob: the most milliseconds from the freeze hook's return to
  // the last volume's point-in-time snapshot. A backup whose snapshots take longer thaws the guest
  // and fails with kDeadlineExceeded (nothing is read, nothing published): a guest is never held
  // frozen for an unbounded time because storage is slow. Direct reads kept frozen for the whole
  // backup (thaw_after_backup) are not bound by it once their snapshots are taken. Default 60000;
  // 0 = no deadline.
  int freeze_timeout_ms = 60000;
};

// A read-only point-in-time view of a volume. Releasing it deletes a reflink clone, or runs the
// thaw hook for a direct snapshot kept frozen.
class VMBACKUP_EXPORT VolumeSnapshot {
 public:
  VolumeSnapshot(const VolumeSnapshot&) = delete;
  VolumeSnapshot& operator=(const VolumeSnapshot&) = delete;
  ~VolumeSnapshot();

  // Logical size of the volume in bytes.
  uint64_t size() const;
  // True when the snapshot reads a reflink clone, false when it reads the volume directly.
  bool is_clone() const;
  // The volume's path.
  const std::string& source_path() const;

  // Returns the data extents overlapping [offset, offset+length), clipped to it, in order. A volume
  // whose filesystem cannot report holes returns one extent covering the whole range.
  // kInternal/kDataLoss style errors from the OS are returned as kUnavailable/kInternal with the
  // errno text.
  StatusOr<std::vector<Extent>> DataExtents(uint64_t offset, uint64_t length) const;

  // Reads up to `length` bytes at `offset` into `buf`; returns the number read (short only at the
  // end of the volume). Returns kOutOfRange past the end; kInternal/kUnavailable on I/O errors
  // (EIO).
  StatusOr<size_t> ReadAt(uint64_t offset, void* buf, size_t length) const;

 private:
  friend class VolumeSnapshotter;
  friend struct internal::ImplAccess;
  struct Impl;
  explicit VolumeSnapshot(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class VMBACKUP_EXPORT VolumeSnapshotter {
 public:
  // Opens the volume at `path` (regular file or block device) for snapshots.
  // Returns kNotFound if it does not exist, kPermissionDenied if it cannot be read,
  // kInvalidArgument if it is neither a regular file nor a block device.
  static StatusOr<std::unique_ptr<VolumeSnapshotter>> Open(const std::string& path,
                                                           const SnapshotOptions& options = {});

  VolumeSnapshotter(const VolumeSnapshotter&) = delete;
  VolumeSnapshotter& operator=(const VolumeSnapshotter&) = delete;
  ~VolumeSnapshotter();

  // Whether the volume's filesystem supports reflink clones (tested once, by cloning).
  bool SupportsReflink() const;

  // Takes a snapshot. Returns the freeze hook's error if it fails; kFailedPrecondition in kReflink
  // mode when clones are not supported; kResourceExhausted when there is no space for the clone's
  // metadata. The snapshot may outlive the snapshotter.
  StatusOr<std::unique_ptr<VolumeSnapshot>> Snapshot();

 private:
  struct Impl;
  explicit VolumeSnapshotter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vmbackup

#endif  // VMBACKUP_VOLUME_SNAPSHOTTER_H_
