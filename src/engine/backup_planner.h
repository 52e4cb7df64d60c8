// The backup's planner: before any block is read, it resolves the parent backup (dirty maps) and
// the fingerprint reference backup, takes the volumes' snapshots, and decides what each block
// becomes: a hole, a copy of the parent's block, or a block to read. The block processor
// (block_processor.h) carries the plan out; the publisher (backup_publisher.h) stores the result.
//
// The pure parts (MarkBlocks, PlanBlocks, SameVm, NewestOfVm) are unit-tested on their own
// (tests/unit/engine/backup_planner_test.cc); PlanBackup does the I/O around them.
//
// Thread-safety: the functions are stateless; PlanBackup is called by one job's driver.
#ifndef VMBACKUP_ENGINE_BACKUP_PLANNER_H_
#define VMBACKUP_ENGINE_BACKUP_PLANNER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/job_runner.h"
#include "repo/fingerprints.h"
#include "repo/repository.h"
#include "vmbackup/backup_job.h"
#include "vmbackup/volume_snapshotter.h"
#include "volume/provider.h"

namespace vmbackup::internal {

// What the backup does with one block.
enum class BlockPlan : uint8_t {
  kRead = 0,  // read from the snapshot (then zero check, fingerprint, hash, dedup, store)
  kHole = 1,  // a hole of the snapshot: recorded as a hole, never read
  kCopy = 2,  // unchanged since the parent (dirty map): the parent's block is recorded again
};

// Sets (*plan)[b] = `mark` for every block b that touches an extent of `extents` (blocks of
// `block_size` bytes; extents of length 0 touch nothing; blocks past plan->size() are ignored).
void MarkBlocks(const std::vector<Extent>& extents, uint32_t block_size,
                std::vector<BlockPlan>* plan, BlockPlan mark);

// The plan of a volume of `size` bytes cut into blocks of `block_size`: kRead for every block that
// touches one of the snapshot's `data_extents`, kHole for the others. With a dirty map
// (`dirty_ranges` non-null; REQUIRES `parent`, the parent's index of this volume), every block
// that touches no dirty range and that the parent holds in full is kCopy, whatever the extents say.
// The parent holds a block in full when the block is inside the parent's volume, and, for the
// parent's last block, when the parent's volume had this size (its last block may be partial).
std::vector<BlockPlan> PlanBlocks(uint64_t size, uint32_t block_size,
                                  const std::vector<Extent>& data_extents,
                                  const std::vector<Extent>* dirty_ranges,
                                  const VolumeIndex* parent);

// True when backup `b` is of the VM with this identity.
bool SameVm(const BackupInfo& b, const std::string& vm_name, const std::string& vm_namespace);
// The newest (greatest created_at; the first of equals) of `backups` of the VM with this identity;
// nullopt when there is none.
std::optional<BackupInfo> NewestOfVm(std::vector<BackupInfo> backups, const std::string& vm_name,
                                     const std::string& vm_namespace);

// The backup's one freeze window (SnapshotOptions::freeze / thaw): opened before the first
// volume's snapshot, closed once, by Thaw() or, at the latest, when the window is destroyed.
class FreezeWindow {
 public:
  // Runs `freeze` (when set); its error is returned and nothing is to be thawed.
  static StatusOr<std::unique_ptr<FreezeWindow>> Open(const std::function<Status()>& freeze,
                                                      std::function<Status()> thaw);
  FreezeWindow(const FreezeWindow&) = delete;
  FreezeWindow& operator=(const FreezeWindow&) = delete;
  ~FreezeWindow() { Thaw(); }
  // Calls the thaw hook the first time (its error is ignored: the snapshots are taken; the hook
  // is the host's to report). Later calls do nothing.
  void Thaw();
  // Whether a freeze hook ran (and succeeded).
  bool frozen() const { return frozen_; }
  // Seconds from the freeze to the thaw, or to now while still frozen; -1 when nothing froze.
  double Seconds() const;

 private:
  FreezeWindow() = default;
  bool frozen_ = false;
  double frozen_at_ = 0, thawed_at_ = -1;
  std::function<Status()> thaw_;
};

// The plan of one volume. Movable, not copyable (it owns the view).
struct VolumePlan {
  std::string name;
  std::unique_ptr<VolumeView> view;
  std::string provider;     // VolumeBackupInfo::provider
  std::string snapshot;     // VolumeBackupInfo::snapshot
  std::string consistency;  // VolumeBackupInfo::consistency
  std::string checkpoint;   // VolumeBackupInfo::checkpoint
  // Bytes of the provider's changed ranges since the parent's checkpoint; -1 when none were used.
  int64_t changed_bytes = -1;
  uint64_t size = 0;
  uint32_t block_size = 0;
  std::vector<BlockPlan> blocks;  // one per block
  // The parent's index of this volume: the source of kCopy blocks (null without dirty map).
  std::shared_ptr<const VolumeIndex> parent;
  // Fingerprint reference: the blocks of an earlier backup of this volume (null: none; the same
  // object as `parent` when the parent is the reference) and their fingerprints.
  std::shared_ptr<const VolumeIndex> ref;
  VolumeFingerprints ref_fps;
};

struct BackupPlan {
  // The freeze window; still open while direct snapshots keep the guest frozen (thaw_after_backup).
  // Declared before `volumes`: thawed only after every snapshot is released.
  std::unique_ptr<FreezeWindow> freeze;
  // The providers that took the views: released after the views (declared before `volumes`),
  // before the window's thaw. BackupJob commits them once the record is published.
  std::vector<std::unique_ptr<SnapshotProvider>> providers;
  // The parent the record names: BackupSpec::parent, else the automatic parent whose checkpoints
  // gave changed ranges ("" = none).
  std::string parent_name;
  // The repository's block index when planning: blocks it holds are referenced, not stored.
  std::shared_ptr<const RepoIndex> index;
  // This host's fingerprint keys; nullopt: every block is hashed and no fingerprint is recorded.
  std::optional<FingerprintKeys> fkeys;
  std::vector<VolumePlan> volumes;  // in spec order
};

// Makes the provider for volume `v` (and the others of its ProviderKey group); `file_options` are
// the spec's snapshot options without hooks (the planner owns the freeze window).
using ProviderFactory = std::function<std::unique_ptr<SnapshotProvider>(
    const VolumeSource& v, const SnapshotOptions& file_options)>;
// The library's providers (file, qemu, rbd), or the factory a test set.
ProviderFactory DefaultProviders(Runtime& rt);
// Test hook: while set (non-null), DefaultProviders returns `f`.
void SetProviderFactoryForTest(ProviderFactory f);

// Plans the backup of `spec` (of the VM with this identity, "" = unnamed), in this order: loads
// the parent record (spec.parent; else, for a named VM with qemu or rbd volumes, its newest
// backup), the repository's block index, calls `fingerprint_keys` once (this host's keys, or
// nullopt), picks the fingerprint reference (the parent when it is of the same VM, else the
// newest backup of the same VM; only when spec.use_fingerprints and the VM is named), prepares
// one provider per ProviderKey group with the checkpoints the parent recorded, opens the freeze
// window, takes every provider's views, thaws (unless direct reads stay frozen), then per volume:
// data extents, changed ranges (the host's dirty map, else the provider's), the parent's index
// when changes are known, the block plan, the reference's index and fingerprints, and adds the
// volume's size and blocks to pc->bytes_total and pc->blocks_total.
//
// Errors: the parent's, with context "parent backup"; kInvalidArgument when a dirty-map volume is
// missing in the parent; kFailedPrecondition when the parent used another block size, or a running
// VM's volume can be neither cloned nor kept frozen; the providers' errors (context "volume
// '<name>'"); errors of loading indexes. Failing to find or load the reference only costs speed.
StatusOr<BackupPlan> PlanBackup(
    Repository& repo, const BackupSpec& spec, const std::string& vm_name,
    const std::string& vm_namespace,
    const std::function<std::optional<FingerprintKeys>()>& fingerprint_keys, ProgressCounters* pc,
    const ProviderFactory& make_provider);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_ENGINE_BACKUP_PLANNER_H_
