// BackupJob: backs up a VM's volumes and metadata to a BackupTarget.
//
// The pipeline reads each volume's snapshot block by block, skips holes and all-zero blocks, hashes
// (SHA-256), deduplicates against the blocks the repository already holds (one index loaded per
// job, never an existence request per block), compresses with LZ4 where that saves space, groups
// blocks into pack objects and uploads them with a bounded number of bytes in flight. Blocks that
// did not change since the parent backup are referenced, not rewritten; with a host-supplied dirty
// map they are not even read. The backup record is published last: a backup is listed only when all
// its data is stored.
//
// States: kPending -> kInProgress -> kReady | kError. A job killed mid-way leaves no record;
// running it again reuses every pack that was completely uploaded.
//
// Thread-safety: all methods are thread-safe. Start() once; Wait() and Cancel() from any thread.
// The progress callback runs on a library thread (see docs/threading.md).
#ifndef VMBACKUP_BACKUP_JOB_H_
#define VMBACKUP_BACKUP_JOB_H_

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "vmbackup/backup_target.h"
#include "vmbackup/export.h"
#include "vmbackup/options.h"
#include "vmbackup/status.h"
#include "vmbackup/volume_snapshotter.h"

namespace vmbackup {

namespace internal {
struct ImplAccess;  // the library's own access to Impl (src/core/impl_access.h)
}  // namespace internal

enum class JobState : int { kPending = 0, kInProgress = 1, kReady = 2, kError = 3 };
// "Pending", "InProgress", "Ready", "Error".
VMBACKUP_EXPORT const char* JobStateName(JobState state);

// Where a volume lives, and so which snapshot provider takes its point-in-time view (guides:
// docs/providers/file.md, qemu.md, rbd.md).
enum class VolumeProvider : int {
  kFile = 0,  // a regular file or block device: reflink clone where possible, else a direct read
  kQemu = 1,  // a disk of a running QEMU: QMP transaction, fleecing, NBD export, dirty bitmaps
  kRbd = 2,   // a Ceph RBD image: an RBD snapshot, changed extents from rbd_diff_iterate2
};
// "file", "qemu", "rbd".
VMBACKUP_EXPORT const char* VolumeProviderName(VolumeProvider provider);

// A disk of a running QEMU process (VolumeProvider::kQemu).
struct QemuDisk {
  std::string qmp_socket;  // path of QEMU's QMP unix socket (-qmp unix:PATH,server=on,wait=off)
  std::string node;        // block node name of the disk's format node (or a -drive device id)
  // QEMU's NBD server, when the host already started one (nbd-server-start) on a unix socket:
  // the provider adds its export there. Default empty = the provider starts the server on a socket
  // in scratch_dir and stops it afterwards.
  std::string nbd_socket;
  // Directory, on the QEMU host, for the temporary fleecing image that holds the data the guest
  // overwrites while the backup reads. Default empty = the directory of the disk's image file.
  std::string scratch_dir;
};

// A Ceph RBD image (VolumeProvider::kRbd).
struct RbdImage {
  std::string pool;
  std::string image;
  std::string conf;       // ceph.conf; default empty = $CEPH_CONF, else /etc/ceph/ceph.conf
  std::string client_id;  // cephx user without "client."; default empty = "admin"
};

// One volume to back up.
struct VolumeSource {
  std::string name;  // unique inside the backup; [A-Za-z0-9._-], 1..128 chars
  std::string path;  // kFile: regular file or block device
  // Host-supplied changed-block information relative to BackupSpec::parent: when has_dirty_map is
  // true, only these ranges are read; everything else is taken from the parent backup unchanged.
  // Without it, a qemu or rbd volume whose parent recorded a checkpoint that still exists on the
  // host gets its changed ranges from the provider (VolumeBackupInfo::changed_bytes).
  bool has_dirty_map = false;  // default false
  std::vector<Extent> dirty_ranges;
  // Where the volume lives (ParseVolumeLocation makes all of this from one string).
  VolumeProvider provider = VolumeProvider::kFile;  // default kFile: `path`
  QemuDisk qemu{};                                  // kQemu
  RbdImage rbd{};                                   // kRbd
};

// Parses a volume location, the one string form of a VolumeSource's where (used by the C ABI,
// Python, vm.json and vmbackupctl):
//   PATH or file:PATH                                  kFile
//   qemu:QMP_SOCKET?node=NODE[&nbd=SOCKET][&scratch=DIR]  kQemu
//   rbd:POOL/IMAGE[?conf=FILE][&id=CLIENT]             kRbd
// Returns the VolumeSource named `name`, or kInvalidArgument saying what is wrong (unknown
// parameter, missing node, empty pool or image). Thread-safe.
VMBACKUP_EXPORT StatusOr<VolumeSource> ParseVolumeLocation(const std::string& name,
                                                           const std::string& location);
// The location string of `v` (the inverse of ParseVolumeLocation). Never fails. Thread-safe.
VMBACKUP_EXPORT std::string VolumeLocation(const VolumeSource& v);

struct BackupSpec {
  // Backup name, unique on the target; [A-Za-z0-9._-], 1..200 chars.
  // Default empty = "<vm name or 'backup'>-<UTC yyyymmdd-hhmmss>-<4 random hex>".
  std::string name;
  // The VM's metadata document (a JSON object), stored verbatim with the backup. Default "{}".
  std::string vm_metadata_json;
  std::vector<VolumeSource> volumes;  // at least one
  // Base for the dirty maps, and the backup whose unchanged blocks a dirty-map backup copies.
  // Default empty = none. Deduplication against every block on the target happens regardless.
  std::string parent;
  SnapshotOptions snapshot;   // how volumes are snapshotted; default kAuto without hooks
  ProgressCallback progress;  // default none
  // Minimum time between two progress reports. Default 200 ms.
  int progress_interval_ms = 200;
  // Cap on bytes held in memory by the pipeline (blocks being processed + packs uploading).
  // Default 0 = 96 MiB (three 32 MiB packs).
  uint64_t max_in_flight_bytes = 0;
  // Skip hashing blocks whose keyed fingerprint equals the one the reference backup (the parent,
  // else the newest backup of the same VM) recorded at the same offset; their SHA-256 is taken
  // from that backup. Every block is still read. Default true; false hashes every block (the
  // fingerprints are still recorded). See docs/FORMAT.md, "Fingerprints".
  bool use_fingerprints = true;
};

class VMBACKUP_EXPORT BackupJob {
 public:
  // Validates `spec` and prepares a job. Returns kInvalidArgument naming the bad field (empty
  // volume list, bad or duplicate names, metadata that is not a JSON object, dirty map without
  // parent), kAlreadyExists if a backup of that name exists on the target. Nothing is read or
  // written yet.
  static StatusOr<std::unique_ptr<BackupJob>> Create(std::shared_ptr<BackupTarget> target,
                                                     BackupSpec spec);

  BackupJob(const BackupJob&) = delete;
  BackupJob& operator=(const BackupJob&) = delete;
  // Cancels a running job and waits for it to end.
  ~BackupJob();

  // Starts the job on the runtime's threads and returns at once. kFailedPrecondition if already
  // started.
  Status Start();
  // Blocks until the job ends; returns its final status: OK (kReady), or the first error:
  //   kNotFound / kPermissionDenied  a volume is missing or unreadable (the message names it);
  //   kNotFound                      the parent backup does not exist;
  //   kResourceExhausted             the target is full;
  //   kUnavailable                   the target could not be reached;
  //   kCancelled                     Cancel() or the progress callback asked to stop.
  // Calling Wait() before Start() starts the job.
  Status Wait();
  // Start() + Wait().
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
  // Asks the job to stop; Wait() then returns kCancelled (unless it already finished). No record is
  // written for a cancelled job. Safe to call at any time, any number of times.
  void Cancel();

  JobState state() const;
  // The latest progress snapshot.
  Progress progress() const;
  // The published record. kFailedPrecondition until the job is kReady.
  StatusOr<BackupInfo> result() const;
  // The backup's name (generated at Create() when the spec left it empty).
  const std::string& name() const;

 private:
  friend struct internal::ImplAccess;
  struct Impl;
  explicit BackupJob(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vmbackup

#endif  // VMBACKUP_BACKUP_JOB_H_
