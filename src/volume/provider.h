// Snapshot providers: the point-in-time views a backup reads, and the changed ranges since an
// earlier checkpoint, for each kind of volume (VolumeProvider): reflink files (file_provider.cc),
// disks of a running QEMU (qemu_provider.cc), Ceph RBD images (rbd_provider.cc).
//
// A backup uses one provider per group of volumes that can be taken at one instant (all files;
// the disks behind one QMP socket; the images of one Ceph cluster), in this order:
//   Prepare   before the freeze window: connect, remove what a killed run left, check each volume
//             and whether its base checkpoint still exists;
//   Take      inside the freeze window: the point-in-time views of every volume, at one instant
//             where the provider can (one QMP transaction); RBD images are snapshotted one after
//             another (a group snapshot cannot be the base of rbd_diff_iterate2 in Ceph 16);
//   Open      after the window: a readable view per volume, and its changed ranges since the base;
//   Commit    after the backup's record is published: the new checkpoints are the ones the next
//             incremental needs; the base checkpoints are released.
// Destroying a provider releases everything it took (fleecing nodes, exports, snapshots); without
// Commit it keeps the base checkpoints and drops the new ones, so a failed or cancelled backup
// leaves the host as it found it. Views must be destroyed before their provider.
//
// Everything read from the host (sizes, extents, QMP replies, bitmap and snapshot lists) is
// untrusted: bounded and validated before use.
//
// Thread-safety: a provider is used by one job driver at a time; a VolumeView's const methods are
// thread-safe (pipeline workers read in parallel).
#ifndef VMBACKUP_VOLUME_PROVIDER_H_
#define VMBACKUP_VOLUME_PROVIDER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vmbackup/backup_job.h"
#include "vmbackup/options.h"
#include "vmbackup/runtime.h"
#include "vmbackup/status.h"
#include "vmbackup/volume_snapshotter.h"

namespace vmbackup::internal {

// A read-only point-in-time view of one volume.
class VolumeView {
 public:
  virtual ~VolumeView() = default;
  virtual uint64_t size() const = 0;
  // The data extents overlapping [offset, offset+length), clipped to it, in order; a source that
  // cannot tell returns the whole range. Errors: kUnavailable / kInternal with the source's text.
  virtual StatusOr<std::vector<Extent>> DataExtents(uint64_t offset, uint64_t length) const = 0;
  // Reads up to `length` bytes at `offset`; returns the number read (short only at the end).
  // kOutOfRange past the end; kDataLoss if the source shrank; kUnavailable / kInternal on I/O.
  virtual StatusOr<size_t> ReadAt(uint64_t offset, void* buf, size_t length) const = 0;
  // The ranges the backup will read, in the order it reads them (ascending; called once, before
  // the first ReadAt). A view over a network may fetch ahead along them; reads outside them still
  // work. Default: ignored.
  virtual void WillRead(std::vector<Extent> /*ranges*/) {}
};

// One volume for a provider: the source, and the checkpoint its parent backup recorded ("" none).
struct ProviderVolume {
  const VolumeSource* source = nullptr;
  std::string base_checkpoint;
};

// One volume as the provider took it.
struct TakenVolume {
  std::unique_ptr<VolumeView> view;
  std::string snapshot;        // VolumeBackupInfo::snapshot ("reflink", "direct", "fleece", "rbd")
  bool point_in_time = false;  // the view is of one instant (the guest may have run on)
  std::string checkpoint;      // names this instant for the next incremental; "" none
  // Ranges changed since ProviderVolume::base_checkpoint; has_changes false when unknown (no
  // base, the base is gone, or the provider cannot tell): the backup then reads every data block.
  bool has_changes = false;
  std::vector<Extent> changed;
};

class SnapshotProvider {
 public:
  virtual ~SnapshotProvider() = default;
  // `volumes` outlive the provider. `backup_name` names what the provider creates.
  virtual Status Prepare(const std::vector<ProviderVolume>& volumes,
                         const std::string& backup_name) = 0;
  virtual Status Take() = 0;
  // Once, after Take; in the order of Prepare's volumes.
  virtual StatusOr<std::vector<TakenVolume>> Open() = 0;
  // After the record is published. Failures are logged by the host's means later (#15); the
  // backup stands.
  virtual void Commit() = 0;
};

// What groups volumes under one provider instance (volumes with equal keys share one).
std::string ProviderKey(const VolumeSource& v);

// A provider for the volumes of `v`'s kind. `file_options` for kFile (hooks already removed).
std::unique_ptr<SnapshotProvider> MakeFileProvider(const SnapshotOptions& file_options);
// The view of a file snapshot (what the file provider's Open gives).
std::unique_ptr<VolumeView> MakeFileView(std::unique_ptr<VolumeSnapshot> snap);
std::unique_ptr<SnapshotProvider> MakeQemuProvider(Runtime& rt);
std::unique_ptr<SnapshotProvider> MakeRbdProvider();

// A new checkpoint name: "vmbackup-" + 16 random hex digits (IsCheckpointName, repo/format.h).
StatusOr<std::string> NewCheckpointName();

}  // namespace vmbackup::internal

#endif  // VMBACKUP_VOLUME_PROVIDER_H_
