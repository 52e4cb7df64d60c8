// The backup's planner (see backup_planner.h).
#include "engine/backup_planner.h"

#include <algorithm>
#include <map>

#include "core/errors.h"
#include "core/util.h"

namespace vmbackup::internal {

StatusOr<std::unique_ptr<FreezeWindow>> FreezeWindow::Open(const std::function<Status()>& freeze,
                                                           std::function<Status()> thaw) {
  std::unique_ptr<FreezeWindow> w(new FreezeWindow());
  if (freeze) {
    VMB_RETURN_IF_ERROR(freeze().WithContext("freeze hook"));
    w->frozen_ = true;
    w->frozen_at_ = MonotonicSeconds();
    w->thaw_ = std::move(thaw);
  }
  return w;
}

void FreezeWindow::Thaw() {
  if (!frozen_ || thawed_at_ >= 0) return;
  thawed_at_ = MonotonicSeconds();
  if (thaw_) thaw_().IgnoreError();
}

double FreezeWindow::Seconds() const {
  if (!frozen_) return -1;
  return (thawed_at_ >= 0 ? thawed_at_ : MonotonicSeconds()) - frozen_at_;
}

void MarkBlocks(const std::vector<Extent>& extents, uint32_t block_size,
                std::vector<BlockPlan>* plan, BlockPlan mark) {
  const uint64_t nblocks = plan->size();
  for (const auto& e : extents) {
    if (e.length == 0) continue;
    uint64_t first = e.offset / block_size;
    uint64_t last =
        std::min<uint64_t>((e.offset + e.length - 1) / block_size, nblocks ? nblocks - 1 : 0);
    for (uint64_t b = first; b <= last && b < nblocks; ++b) (*plan)[b] = mark;
  }
}

std::vector<BlockPlan> PlanBlocks(uint64_t size, uint32_t block_size,
                                  const std::vector<Extent>& data_extents,
                                  const std::vector<Extent>* dirty_ranges,
                                  const VolumeIndex* parent) {
  const uint64_t nblocks = (size + block_size - 1) / block_size;
  std::vector<BlockPlan> plan(nblocks, BlockPlan::kHole);
  MarkBlocks(data_extents, block_size, &plan, BlockPlan::kRead);
  if (dirty_ranges != nullptr) {
    const VolumeIndex& pi = *parent;
    // Blocks inside the parent's extent and outside every dirty range are copied from the parent.
    std::vector<BlockPlan> dirty(nblocks, BlockPlan::kCopy);
    MarkBlocks(*dirty_ranges, block_size, &dirty, BlockPlan::kRead);
    for (uint64_t b = 0; b < nblocks; ++b) {
      bool in_parent = b < pi.block_count() && (b + 1 < pi.block_count() || pi.volume_size == size);
      if (dirty[b] == BlockPlan::kCopy && in_parent) plan[b] = BlockPlan::kCopy;
    }
  }
  return plan;
}

bool SameVm(const BackupInfo& b, const std::string& vm_name, const std::string& vm_namespace) {
  return b.vm_name == vm_name && b.vm_namespace == vm_namespace;
}

std::optional<BackupInfo> NewestOfVm(std::vector<BackupInfo> backups, const std::string& vm_name,
                                     const std::string& vm_namespace) {
  std::optional<BackupInfo> newest;
  for (auto& b : backups)
    if (SameVm(b, vm_name, vm_namespace) && (!newest || b.created_at > newest->created_at))
      newest = std::move(b);
  return newest;
}

StatusOr<BackupPlan> PlanBackup(
    Repository& repo, const BackupSpec& spec, const std::string& vm_name,
    const std::string& vm_namespace,
    const std::function<std::optional<FingerprintKeys>()>& fingerprint_keys, ProgressCounters* pc) {
  const uint32_t bs = repo.descriptor().block_size;
  BackupPlan plan;
  plan.parent_name = spec.parent;

  // Parent (for dirty maps) and its volume indexes.
  std::optional<BackupInfo> parent;
  std::map<std::string, std::shared_ptr<const VolumeIndex>> parent_indexes;
  if (!spec.parent.empty()) {
    auto p = repo.GetBackup(spec.parent);
    if (!p.ok()) return p.status().WithContext("parent backup");
    parent = std::move(*p);
    for (const auto& v : spec.volumes) {
      if (!v.has_dirty_map) continue;
      auto it = std::find_if(parent->volumes.begin(), parent->volumes.end(),
                             [&](const VolumeBackupInfo& pv) { return pv.name == v.name; });
      if (it == parent->volumes.end())
        return InvalidArgumentError("volume '" + v.name + "' has a dirty map but parent backup '" +
                                    spec.parent + "' has no such volume");
      if (it->block_size != bs)
        return FailedPreconditionError(
            "parent backup '" + spec.parent +
            "' used another block size; take a backup without dirty map");
      VMB_ASSIGN_OR_RETURN(VolumeIndex pi, repo.LoadVolumeIndex(spec.parent, *it));
      parent_indexes[v.name] = std::make_shared<const VolumeIndex>(std::move(pi));
    }
  }
  VMB_ASSIGN_OR_RETURN(plan.index, repo.LoadIndex());

  // Fingerprints need this host's keys (from its state directory, never from the target);
  // without them every block is hashed and none are recorded.
  plan.fkeys = fingerprint_keys();
  // Fingerprint reference backup: one of the same VM identity (a named VM: unnamed ones never
  // serve), the parent when it qualifies, else the newest such backup. Failing to find or load
  // one only costs speed (every block is hashed), never correctness.
  std::optional<BackupInfo> ref;
  if (plan.fkeys && spec.use_fingerprints && !vm_name.empty()) {
    if (parent) {
      if (SameVm(*parent, vm_name, vm_namespace)) ref = parent;
    } else {
      auto list = repo.ListBackups();
      if (list.ok()) ref = NewestOfVm(std::move(list->backups), vm_name, vm_namespace);
    }
  }

  // Snapshots in one freeze window: freeze once, snapshot every volume, thaw once (also when a
  // snapshot fails: the window's destructor thaws). Direct reads with thaw_after_backup keep the
  // guest frozen until the plan, and with it every snapshot, is released.
  VMB_ASSIGN_OR_RETURN(plan.freeze, FreezeWindow::Open(spec.snapshot.freeze, spec.snapshot.thaw));
  SnapshotOptions each = spec.snapshot;
  each.freeze = nullptr;
  each.thaw = nullptr;
  std::vector<std::unique_ptr<VolumeSnapshot>> snaps;
  bool any_direct = false;
  for (const auto& v : spec.volumes) {
    auto snapper = VolumeSnapshotter::Open(v.path, each);
    if (!snapper.ok()) return snapper.status();
    auto snap = (*snapper)->Snapshot();
    if (!snap.ok()) return snap.status().WithContext("volume '" + v.name + "'");
    any_direct = any_direct || !(*snap)->is_clone();
    snaps.push_back(std::move(*snap));
  }
  const bool keep_frozen = any_direct && spec.snapshot.thaw_after_backup;
  if (spec.snapshot.vm_state == SnapshotOptions::VmState::kRunning &&
      !spec.snapshot.allow_inconsistent && !(keep_frozen && plan.freeze->frozen())) {
    for (size_t vi = 0; vi < snaps.size(); ++vi) {
      if (snaps[vi]->is_clone()) continue;
      return FailedPreconditionError(
          "volume '" + spec.volumes[vi].name + "' of a running VM cannot be cloned (" +
          spec.volumes[vi].path +
          ": no reflink on its filesystem) and no freeze keeps it still while it is read: "
          "freeze the guest for the backup, stop the VM, or allow an inconsistent read");
    }
  }
  if (!keep_frozen) plan.freeze->Thaw();

  // Block plans.
  for (size_t vi = 0; vi < spec.volumes.size(); ++vi) {
    const VolumeSource& v = spec.volumes[vi];
    VolumePlan w;
    w.name = v.name;
    w.snap = std::move(snaps[vi]);
    const bool clone = w.snap->is_clone();
    w.snapshot = clone ? "reflink" : "direct";
    if (spec.snapshot.vm_state == SnapshotOptions::VmState::kStopped)
      w.consistency = "stopped";
    else if (plan.freeze->frozen() && (clone || keep_frozen))
      w.consistency = "fs-frozen";
    else
      w.consistency = clone ? "crash-consistent" : "unknown";
    const uint64_t size = w.snap->size();
    w.size = size;
    w.block_size = bs;
    auto extents = w.snap->DataExtents(0, size);
    if (!extents.ok()) return extents.status().WithContext("volume '" + v.name + "'");
    if (v.has_dirty_map) w.parent = parent_indexes[v.name];
    w.blocks =
        PlanBlocks(size, bs, *extents, v.has_dirty_map ? &v.dirty_ranges : nullptr, w.parent.get());
    if (ref) {
      auto it = std::find_if(ref->volumes.begin(), ref->volumes.end(),
                             [&](const VolumeBackupInfo& rv) { return rv.name == v.name; });
      if (it != ref->volumes.end() && it->block_size == bs && !it->fingerprints_key.empty()) {
        auto fps = repo.LoadFingerprints(ref->name, *it, *plan.fkeys);
        if (fps.ok()) {
          if (w.parent != nullptr && ref->name == spec.parent) {
            w.ref = w.parent;
          } else if (auto ri = repo.LoadVolumeIndex(ref->name, *it); ri.ok()) {
            w.ref = std::make_shared<const VolumeIndex>(std::move(*ri));
          }
          if (w.ref != nullptr) w.ref_fps = std::move(*fps);
        }
      }
    }
    pc->bytes_total += size;
    pc->blocks_total += w.blocks.size();
    plan.volumes.push_back(std::move(w));
  }
  return plan;
}

}  // namespace vmbackup::internal
