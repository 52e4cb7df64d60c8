// The backup's planner (see backup_planner.h).
#include "engine/backup_planner.h"

#include <algorithm>
#include <map>
#include <mutex>

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

namespace {

// The consistency a volume's data has (VolumeBackupInfo::consistency).
std::string ConsistencyOf(const SnapshotOptions& o, bool frozen, bool keep_frozen,
                          bool point_in_time) {
  if (o.vm_state == SnapshotOptions::VmState::kStopped) return "stopped";
  if (frozen && (point_in_time || keep_frozen)) return "fs-frozen";
  return point_in_time ? "crash-consistent" : "unknown";
}

const VolumeBackupInfo* FindVolume(const BackupInfo& b, const std::string& name) {
  for (const auto& v : b.volumes)
    if (v.name == name) return &v;
  return nullptr;
}

}  // namespace

namespace {
std::mutex test_factory_mu;
ProviderFactory* test_factory = nullptr;
}  // namespace

void SetProviderFactoryForTest(ProviderFactory f) {
  std::lock_guard<std::mutex> l(test_factory_mu);
  delete test_factory;
  test_factory = f ? new ProviderFactory(std::move(f)) : nullptr;
}

ProviderFactory DefaultProviders(Runtime& rt) {
  {
    std::lock_guard<std::mutex> l(test_factory_mu);
    if (test_factory != nullptr) return *test_factory;
  }
  return [&rt](const VolumeSource& v,
               const SnapshotOptions& file_options) -> std::unique_ptr<SnapshotProvider> {
    switch (v.provider) {
      case VolumeProvider::kQemu:
        return MakeQemuProvider(rt);
      case VolumeProvider::kRbd:
        return MakeRbdProvider();
      case VolumeProvider::kFile:
        break;
    }
    return MakeFileProvider(file_options);
  };
}

StatusOr<BackupPlan> PlanBackup(
    Repository& repo, const BackupSpec& spec, const std::string& vm_name,
    const std::string& vm_namespace,
    const std::function<std::optional<FingerprintKeys>()>& fingerprint_keys, ProgressCounters* pc,
    const ProviderFactory& make_provider) {
  const uint32_t bs = repo.descriptor().block_size;
  BackupPlan plan;

  // The parent: the one the host named (the base of its dirty maps and of provider checkpoints),
  // else, for a named VM with volumes whose provider keeps checkpoints, its newest backup.
  std::optional<BackupInfo> parent;
  bool auto_parent = false;
  if (!spec.parent.empty()) {
    auto p = repo.GetBackup(spec.parent);
    if (!p.ok()) return p.status().WithContext("parent backup");
    parent = std::move(*p);
  } else if (!vm_name.empty() &&
             std::any_of(spec.volumes.begin(), spec.volumes.end(), [](const VolumeSource& v) {
               return v.provider != VolumeProvider::kFile;
             })) {
    auto list = repo.ListBackups();
    if (list.ok()) {
      parent = NewestOfVm(list->backups, vm_name, vm_namespace);
      auto_parent = parent.has_value();
    }
  }
  for (const auto& v : spec.volumes) {
    if (!v.has_dirty_map) continue;
    const VolumeBackupInfo* pv = parent ? FindVolume(*parent, v.name) : nullptr;
    if (pv == nullptr)
      return InvalidArgumentError("volume '" + v.name + "' has a dirty map but parent backup '" +
                                  spec.parent + "' has no such volume");
    if (pv->block_size != bs)
      return FailedPreconditionError("parent backup '" + spec.parent +
                                     "' used another block size; take a backup without dirty map");
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

  // Providers: one per group of volumes that can be taken at one instant (ProviderKey), each
  // told the checkpoint the parent recorded for its volumes.
  SnapshotOptions each = spec.snapshot;
  each.freeze = nullptr;
  each.thaw = nullptr;
  std::vector<std::string> keys;
  std::vector<std::vector<ProviderVolume>> groups;
  std::vector<std::pair<size_t, size_t>> where(spec.volumes.size());  // (group, index in group)
  for (size_t vi = 0; vi < spec.volumes.size(); ++vi) {
    const VolumeSource& v = spec.volumes[vi];
    const std::string key = ProviderKey(v);
    size_t g = std::find(keys.begin(), keys.end(), key) - keys.begin();
    if (g == keys.size()) {
      keys.push_back(key);
      groups.emplace_back();
      plan.providers.push_back(make_provider(v, each));
      if (plan.providers.back() == nullptr)
        return UnimplementedError("volume '" + v.name + "': this build has no " +
                                  VolumeProviderName(v.provider) + " provider");
    }
    ProviderVolume pv;
    pv.source = &v;
    if (parent && !v.has_dirty_map) {
      const VolumeBackupInfo* p = FindVolume(*parent, v.name);
      if (p != nullptr && p->block_size == bs && p->provider == VolumeProviderName(v.provider))
        pv.base_checkpoint = p->checkpoint;
    }
    where[vi] = {g, groups[g].size()};
    groups[g].push_back(std::move(pv));
  }
  for (size_t g = 0; g < groups.size(); ++g)
    VMB_RETURN_IF_ERROR(plan.providers[g]->Prepare(groups[g], spec.name));

  // Snapshots in one freeze window: freeze once, every provider takes its volumes, thaw once
  // (also when one fails: the window's destructor thaws). Direct reads with thaw_after_backup
  // keep the guest frozen until the plan, and with it every view, is released.
  VMB_ASSIGN_OR_RETURN(plan.freeze, FreezeWindow::Open(spec.snapshot.freeze, spec.snapshot.thaw));
  for (auto& p : plan.providers) {
    // A failure thaws at once, before the providers release what they took.
    Status st = p->Take();
    if (st.ok() && plan.freeze->frozen() && spec.snapshot.freeze_timeout_ms > 0 &&
        plan.freeze->Seconds() * 1000 > spec.snapshot.freeze_timeout_ms)
      st = DeadlineExceededError(
          "the snapshots took " + std::to_string(plan.freeze->Seconds()) +
          " s, longer than the freeze deadline of " +
          std::to_string(spec.snapshot.freeze_timeout_ms) +
          " ms; the guest was thawed and nothing was read (raise freeze_timeout_ms)");
    if (!st.ok()) {
      plan.freeze->Thaw();
      return st;
    }
  }
  std::vector<std::vector<TakenVolume>> taken;
  for (auto& p : plan.providers) {
    VMB_ASSIGN_OR_RETURN(std::vector<TakenVolume> t, p->Open());
    taken.push_back(std::move(t));
  }
  bool any_direct = false;
  for (const auto& t : taken)
    for (const auto& tv : t) any_direct = any_direct || !tv.point_in_time;
  const bool keep_frozen = any_direct && spec.snapshot.thaw_after_backup;
  if (spec.snapshot.vm_state == SnapshotOptions::VmState::kRunning &&
      !spec.snapshot.allow_inconsistent && !(keep_frozen && plan.freeze->frozen())) {
    for (size_t vi = 0; vi < spec.volumes.size(); ++vi) {
      if (taken[where[vi].first][where[vi].second].point_in_time) continue;
      return FailedPreconditionError(
          "volume '" + spec.volumes[vi].name + "' of a running VM cannot be cloned (" +
          spec.volumes[vi].path +
          ": no reflink on its filesystem) and no freeze keeps it still while it is read: "
          "freeze the guest for the backup, stop the VM, or allow an inconsistent read");
    }
  }
  if (!keep_frozen) plan.freeze->Thaw();

  // Block plans.
  bool uses_parent = false;
  for (size_t vi = 0; vi < spec.volumes.size(); ++vi) {
    const VolumeSource& v = spec.volumes[vi];
    TakenVolume& t = taken[where[vi].first][where[vi].second];
    VolumePlan w;
    w.name = v.name;
    w.view = std::move(t.view);
    w.provider = VolumeProviderName(v.provider);
    w.snapshot = t.snapshot;
    w.checkpoint = t.checkpoint;
    w.consistency =
        ConsistencyOf(spec.snapshot, plan.freeze->frozen(), keep_frozen, t.point_in_time);
    const uint64_t size = w.view->size();
    w.size = size;
    w.block_size = bs;
    auto extents = w.view->DataExtents(0, size);
    if (!extents.ok()) return extents.status().WithContext("volume '" + v.name + "'");
    // The changed ranges: the host's dirty map, else the provider's since the parent's checkpoint.
    const std::vector<Extent>* dirty = nullptr;
    if (v.has_dirty_map) {
      dirty = &v.dirty_ranges;
    } else if (t.has_changes) {
      dirty = &t.changed;
      w.changed_bytes = 0;
      for (const auto& e : t.changed) w.changed_bytes += e.length;
    }
    if (dirty != nullptr) {
      VMB_ASSIGN_OR_RETURN(VolumeIndex pi,
                           repo.LoadVolumeIndex(parent->name, *FindVolume(*parent, v.name)));
      w.parent = std::make_shared<const VolumeIndex>(std::move(pi));
      uses_parent = true;
    }
    w.blocks = PlanBlocks(size, bs, *extents, dirty, w.parent.get());
    {
      std::vector<Extent> reads;  // the kRead blocks, as ranges
      for (uint64_t b = 0; b < w.blocks.size(); ++b) {
        if (w.blocks[b] != BlockPlan::kRead) continue;
        const uint64_t off = b * bs, len = std::min<uint64_t>(bs, size - off);
        if (!reads.empty() && reads.back().offset + reads.back().length == off)
          reads.back().length += len;
        else
          reads.push_back({off, len});
      }
      w.view->WillRead(std::move(reads));
    }
    if (ref) {
      const VolumeBackupInfo* rv = FindVolume(*ref, v.name);
      if (rv != nullptr && rv->block_size == bs && !rv->fingerprints_key.empty()) {
        auto fps = repo.LoadFingerprints(ref->name, *rv, *plan.fkeys);
        if (fps.ok()) {
          if (w.parent != nullptr && parent && ref->name == parent->name) {
            w.ref = w.parent;
          } else if (auto ri = repo.LoadVolumeIndex(ref->name, *rv); ri.ok()) {
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
  // The record names the parent it copies blocks from: the host's, or the automatic one when a
  // provider's changes were used.
  plan.parent_name =
      spec.parent.empty() ? (auto_parent && uses_parent ? parent->name : "") : spec.parent;
  return plan;
}

}  // namespace vmbackup::internal
