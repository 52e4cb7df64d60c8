// BackupJob: snapshot → read → skip holes / zeros → hash → dedup → compress → pack → upload →
// volume indexes → record (published last). See backup_job.h and docs/ARCHITECTURE.md.
#include "vmbackup/backup_job.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/runtime.h"
#include "core/util.h"
#include "engine/job_runner.h"
#include "engine/pipeline.h"
#include "target/target_impl.h"

namespace vmbackup {

using namespace internal;  // NOLINT(build/namespaces)
using nlohmann::json;

const char* JobStateName(JobState s) {
  switch (s) {
    case JobState::kPending:
      return "Pending";
    case JobState::kInProgress:
      return "InProgress";
    case JobState::kReady:
      return "Ready";
    case JobState::kError:
      return "Error";
  }
  return "Unknown";
}

namespace {

enum class Plan : uint8_t { kRead = 0, kHole = 1, kCopy = 2 };

// Blocks a worker claims at once (4 MiB with 256 KiB blocks).
constexpr uint64_t kClaim = 16;

struct VolumeWork {
  const VolumeSource* source = nullptr;
  std::unique_ptr<VolumeSnapshot> snap;
  const VolumeIndex* parent = nullptr;  // parent's index of this volume (dirty-map backups)
  VolumeIndex index;
  std::vector<Plan> plan;
  // Fingerprint reference: the blocks of an earlier backup of this volume and their fingerprints
  // (ref == nullptr: none). `fps` collects this backup's fingerprints.
  const VolumeIndex* ref = nullptr;
  VolumeIndex ref_storage;
  VolumeFingerprints ref_fps;
  std::mutex fps_mu;
  std::vector<BlockFingerprintEntry> fps;
  VolumeBackupInfo info;
  std::atomic<uint64_t> data_blocks{0}, zero_blocks{0}, hole_blocks{0}, bytes_new{0},
      bytes_reused{0}, bytes_stored{0};
};

// Marks blocks touching any extent in `extents` with `mark`.
void MarkBlocks(const std::vector<Extent>& extents, uint32_t bs, uint64_t nblocks,
                std::vector<Plan>* plan, Plan mark) {
  for (const auto& e : extents) {
    if (e.length == 0) continue;
    uint64_t first = e.offset / bs;
    uint64_t last = std::min<uint64_t>((e.offset + e.length - 1) / bs, nblocks ? nblocks - 1 : 0);
    for (uint64_t b = first; b <= last && b < nblocks; ++b) (*plan)[b] = mark;
  }
}

}  // namespace

struct BackupJob::Impl {
  std::shared_ptr<BackupTarget> target;
  BackupSpec spec;
  std::string name;
  std::string vm_name, vm_namespace;  // the VM identity, from the metadata ("" = unnamed)
  mutable std::mutex result_mu;
  std::optional<BackupInfo> result;
  // Last member: destroyed first, so the driver is cancelled and waited for before anything it
  // touches goes away.
  std::unique_ptr<JobRunner> runner;

  Status Execute();
};

BackupJob::BackupJob(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BackupJob::~BackupJob() = default;

StatusOr<std::unique_ptr<BackupJob>> BackupJob::Create(std::shared_ptr<BackupTarget> target,
                                                       BackupSpec spec) {
  return internal::GuardExceptions(
      "BackupJob::Create", [&]() -> StatusOr<std::unique_ptr<BackupJob>> {
        if (!target) return InvalidArgumentError("target is null");
        if (spec.volumes.empty())
          return InvalidArgumentError("spec.volumes: at least one volume is needed");
        std::set<std::string> names;
        for (size_t i = 0; i < spec.volumes.size(); ++i) {
          const auto& v = spec.volumes[i];
          const std::string field = "spec.volumes[" + std::to_string(i) + "]";
          if (!IsValidVolumeName(v.name))
            return InvalidArgumentError(field + ".name '" + v.name +
                                        "' must be 1-128 of [A-Za-z0-9._-]");
          if (!names.insert(v.name).second)
            return InvalidArgumentError(field + ".name '" + v.name + "' is used twice");
          if (v.path.empty()) return InvalidArgumentError(field + ".path is empty");
          if (v.has_dirty_map && spec.parent.empty())
            return InvalidArgumentError(field +
                                        ".dirty_ranges needs spec.parent (the dirty map's base)");
        }
        if (spec.vm_metadata_json.empty()) spec.vm_metadata_json = "{}";
        // Writers apply the limits readers check (docs/FORMAT.md "Limits").
        if (spec.vm_metadata_json.size() > kMaxVmMetadataBytes)
          return InvalidArgumentError("spec.vm_metadata_json is larger than " +
                                      std::to_string(kMaxVmMetadataBytes) + " bytes");
        if (!JsonDepthWithin(spec.vm_metadata_json, kMaxJsonDepth - 8))
          return InvalidArgumentError("spec.vm_metadata_json nests deeper than " +
                                      std::to_string(kMaxJsonDepth - 8) + " levels");
        json meta = json::parse(spec.vm_metadata_json, nullptr, false);
        if (meta.is_discarded() || !meta.is_object())
          return InvalidArgumentError("spec.vm_metadata_json must be a JSON object");
        auto impl = std::make_unique<Impl>();
        // The VM identity: optional, but valid names when given (records and references key on it).
        for (auto [field, out] :
             {std::pair{"name", &impl->vm_name}, std::pair{"namespace", &impl->vm_namespace}}) {
          if (!meta.contains(field)) continue;
          if (!meta[field].is_string() || !IsValidVmName(meta[field].get<std::string>()))
            return InvalidArgumentError(std::string("spec.vm_metadata_json: \"") + field +
                                        "\" must be a string of 1-253 of [A-Za-z0-9._-]");
          *out = meta[field].get<std::string>();
        }
        if (spec.name.empty()) {
          std::string base = meta.contains("name") && meta["name"].is_string()
                                 ? meta["name"].get<std::string>()
                                 : "backup";
          if (!IsValidName(base, 120)) base = "backup";
          VMB_ASSIGN_OR_RETURN(std::string suffix, RandomHex(2));
          spec.name = base + "-" + NowCompact() + "-" + suffix;
        }
        if (!IsValidBackupName(spec.name))
          return InvalidArgumentError("spec.name '" + spec.name +
                                      "' must be 1-200 of [A-Za-z0-9._-]");
        // A target that is down when a job starts fails fast (core/retry.h, kConnectDeadline).
        VMB_RETURN_IF_ERROR(target->impl()->repo->store().Ping());
        auto existing = target->GetBackup(spec.name);
        if (existing.ok() || existing.status().code() == StatusCode::kDataLoss)
          return AlreadyExistsError("a backup named '" + spec.name +
                                    "' already exists on the target");
        if (existing.status().code() != StatusCode::kNotFound) return existing.status();
        impl->target = std::move(target);
        impl->name = spec.name;
        impl->spec = std::move(spec);
        Impl* raw = impl.get();
        impl->runner = std::make_unique<JobRunner>(
            impl->target->impl()->runtime, [raw] { return raw->Execute(); }, impl->spec.progress,
            impl->spec.progress_interval_ms);
        return std::unique_ptr<BackupJob>(new BackupJob(std::move(impl)));
      });
}

Status BackupJob::Start() { return impl_->runner->Start(); }
Status BackupJob::Wait() { return impl_->runner->Wait(); }
std::optional<Status> BackupJob::WaitFor(std::chrono::milliseconds timeout) {
  return impl_->runner->WaitFor(timeout);
}
void BackupJob::OnDone(std::function<void(const Status&)> fn) {
  impl_->runner->OnDone(std::move(fn));
}
Status BackupJob::Run() {
  VMB_RETURN_IF_ERROR(Start());
  return Wait();
}
void BackupJob::Cancel() { impl_->runner->Cancel(); }
JobState BackupJob::state() const { return impl_->runner->state(); }
Progress BackupJob::progress() const { return impl_->runner->Snapshot(); }
const std::string& BackupJob::name() const { return impl_->name; }
StatusOr<BackupInfo> BackupJob::result() const {
  std::lock_guard<std::mutex> l(impl_->result_mu);
  if (!impl_->result) return FailedPreconditionError("backup '" + impl_->name + "' is not Ready");
  return *impl_->result;
}

Status BackupJob::Impl::Execute() {
  const double t0 = MonotonicSeconds();
  const std::string created_at = NowRfc3339();
  JobRunner& run = *runner;
  ProgressCounters& pc = run.counters();
  Repository& repo = *target->impl()->repo;
  Runtime& rt = *target->impl()->runtime;
  const uint32_t bs = repo.descriptor().block_size;
  run.SetPhase(Progress::Phase::kPreparing);
  run.MaybeReport(true);

  // Parent (for dirty maps) and its volume indexes.
  std::optional<BackupInfo> parent;
  std::map<std::string, VolumeIndex> parent_indexes;
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
      VMB_ASSIGN_OR_RETURN(parent_indexes[v.name], repo.LoadVolumeIndex(spec.parent, *it));
    }
  }
  VMB_ASSIGN_OR_RETURN(std::shared_ptr<const RepoIndex> index, repo.LoadIndex());

  // Fingerprints need this host's keys (from its state directory, never from the target);
  // without them every block is hashed and none are recorded.
  std::optional<FingerprintKeys> fkeys;
  if (auto k = target->impl()->FingerprintKeys(); k.ok()) fkeys = *k;
  const bool fingerprints = fkeys.has_value();
  // Fingerprint reference backup: one of the same VM identity (a named VM: unnamed ones never
  // serve), the parent when it qualifies, else the newest such backup. Failing to find or load
  // one only costs speed (every block is hashed), never correctness.
  std::optional<BackupInfo> ref;
  if (fingerprints && spec.use_fingerprints && !vm_name.empty()) {
    if (parent) {
      if (parent->vm_name == vm_name && parent->vm_namespace == vm_namespace) ref = parent;
    } else {
      auto list = repo.ListBackups();
      if (list.ok()) {
        for (auto& b : list->backups)
          if (b.vm_name == vm_name && b.vm_namespace == vm_namespace &&
              (!ref || b.created_at > ref->created_at))
            ref = std::move(b);
      }
    }
  }

  // Snapshots and block plans.
  std::vector<std::unique_ptr<VolumeWork>> work;
  for (const auto& v : spec.volumes) {
    auto w = std::make_unique<VolumeWork>();
    w->source = &v;
    VMB_ASSIGN_OR_RETURN(auto snapper, VolumeSnapshotter::Open(v.path, spec.snapshot));
    auto snap = snapper->Snapshot();
    if (!snap.ok()) return snap.status().WithContext("volume '" + v.name + "'");
    w->snap = std::move(*snap);
    const uint64_t size = w->snap->size();
    const uint64_t nblocks = (size + bs - 1) / bs;
    w->index.volume_size = size;
    w->index.block_size = bs;
    w->index.kinds.assign(nblocks, BlockKind::kHole);
    w->index.digests.assign(nblocks, Digest{});
    w->plan.assign(nblocks, Plan::kHole);
    auto extents = w->snap->DataExtents(0, size);
    if (!extents.ok()) return extents.status().WithContext("volume '" + v.name + "'");
    MarkBlocks(*extents, bs, nblocks, &w->plan, Plan::kRead);
    if (v.has_dirty_map) {
      const VolumeIndex& pi = parent_indexes[v.name];
      w->parent = &pi;
      // Blocks inside the parent's extent and outside every dirty range are copied from the parent.
      std::vector<Plan> dirty(nblocks, Plan::kCopy);
      MarkBlocks(v.dirty_ranges, bs, nblocks, &dirty, Plan::kRead);
      for (uint64_t b = 0; b < nblocks; ++b) {
        bool in_parent =
            b < pi.block_count() && (b + 1 < pi.block_count() || pi.volume_size == size);
        if (dirty[b] == Plan::kCopy && in_parent) w->plan[b] = Plan::kCopy;
      }
    }
    if (ref) {
      auto it = std::find_if(ref->volumes.begin(), ref->volumes.end(),
                             [&](const VolumeBackupInfo& rv) { return rv.name == v.name; });
      if (it != ref->volumes.end() && it->block_size == bs && !it->fingerprints_key.empty()) {
        auto fps = repo.LoadFingerprints(ref->name, *it, *fkeys);
        if (fps.ok()) {
          if (w->parent != nullptr && ref->name == spec.parent) {
            w->ref = w->parent;
          } else if (auto ri = repo.LoadVolumeIndex(ref->name, *it); ri.ok()) {
            w->ref_storage = std::move(*ri);
            w->ref = &w->ref_storage;
          }
          if (w->ref != nullptr) w->ref_fps = std::move(*fps);
        }
      }
    }
    w->info.name = v.name;
    w->info.size = size;
    w->info.block_size = bs;
    pc.bytes_total += size;
    pc.blocks_total += nblocks;
    work.push_back(std::move(w));
  }

  // Transfer.
  run.SetPhase(Progress::Phase::kTransferring);
  const int nworkers = std::max(1, rt.worker_threads());
  const uint64_t cap = spec.max_in_flight_bytes ? spec.max_in_flight_bytes : 96ull << 20;
  const uint32_t pack_size = repo.descriptor().pack_size;
  // Pack buffers and the bound on bytes in flight are the Runtime's, shared with its other
  // backups: buffers a finished backup gave back are reused by the next without faulting in
  // fresh pages, and many concurrent backups together keep at most the Runtime's bound in flight.
  const std::shared_ptr<BufferPool>& pool = rt.impl()->pack_buffers();
  BufferPool::Hold keep_buffers = pool->Keep();
  PackUploader uploader(
      repo.store(), cap, [&pc](uint64_t b) { pc.bytes_written += b; }, pool,
      &rt.impl()->upload_budget());
  std::vector<PackBuilder> packs;
  packs.reserve(static_cast<size_t>(nworkers));
  for (int i = 0; i < nworkers; ++i) packs.emplace_back(pack_size, pool.get());
  ClaimSet claims;
  FirstError error;

  for (auto& wp : work) {
    VolumeWork& w = *wp;
    const uint64_t nblocks = w.plan.size();
    const uint64_t size = w.index.volume_size;
    std::atomic<uint64_t> next{0};
    Status ran = RunOnWorkers(
        rt, nworkers,
        [&](int slot) {
          std::unique_ptr<char[]> buf(new char[bs]);
          PackBuilder& pack = packs[static_cast<size_t>(slot)];
          // Counters are kept per worker and published once per batch: on a sparse 1 TiB volume the
          // shared atomics, updated per block, cost more than the work itself.
          struct {
            uint64_t data = 0, zero = 0, hole = 0, fresh = 0, reused = 0, stored = 0, read = 0,
                     scanned = 0, blocks = 0;
          } c;
          std::vector<BlockFingerprintEntry> fps;
          auto publish = [&] {
            if (!fps.empty()) {
              std::lock_guard<std::mutex> l(w.fps_mu);
              w.fps.insert(w.fps.end(), fps.begin(), fps.end());
              fps.clear();
            }
            w.data_blocks += c.data;
            w.zero_blocks += c.zero;
            w.hole_blocks += c.hole;
            w.bytes_new += c.fresh;
            w.bytes_reused += c.reused;
            w.bytes_stored += c.stored;
            pc.bytes_new += c.fresh;
            pc.bytes_reused += c.reused;
            pc.bytes_read += c.read;
            pc.bytes_scanned += c.scanned;
            pc.blocks_done += c.blocks;
            c = {};
            run.MaybeReport();
          };
          for (;;) {
            if (run.cancelled() || error.has_error() || uploader.failed()) break;
            // Blocks are claimed kClaim at a time: fewer shared updates, longer sequential reads.
            const uint64_t first = next.fetch_add(kClaim, std::memory_order_relaxed);
            if (first >= nblocks) break;
            const uint64_t last = std::min(nblocks, first + kClaim);
            for (uint64_t b = first; b < last && !error.has_error(); ++b) {
              const uint64_t off = b * bs;
              const size_t len = static_cast<size_t>(std::min<uint64_t>(bs, size - off));
              c.scanned += len;
              c.blocks += 1;
              switch (w.plan[b]) {
                case Plan::kHole:
                  w.index.kinds[b] = BlockKind::kHole;
                  ++c.hole;
                  break;
                case Plan::kCopy: {
                  BlockKind k = w.parent->kinds[b];
                  w.index.kinds[b] = k;
                  w.index.digests[b] = w.parent->digests[b];
                  if (k == BlockKind::kData) {
                    if (index->Find(w.parent->digests[b]) == nullptr) {
                      error.Set(DataLossError(
                          "block at offset " + std::to_string(off) + " of volume '" + w.info.name +
                          "' in parent backup '" + spec.parent + "' is not in any pack index"));
                      break;
                    }
                    ++c.data;
                    c.reused += len;
                    if (w.ref == w.parent) {  // the parent's fingerprints stay valid for copies
                      if (const Fingerprint* rf = w.ref_fps.Find(b)) fps.push_back({b, *rf});
                    }
                  } else {
                    ++(k == BlockKind::kZero ? c.zero : c.hole);
                  }
                  break;
                }
                case Plan::kRead: {
                  auto r = w.snap->ReadAt(off, buf.get(), len);
                  if (!r.ok()) {
                    error.Set(r.status().WithContext("volume '" + w.info.name + "'"));
                    break;
                  }
                  c.read += len;
                  if (IsAllZero(buf.get(), len)) {
                    w.index.kinds[b] = BlockKind::kZero;
                    ++c.zero;
                    break;
                  }
                  // Unchanged since the reference backup (same keyed fingerprint at this offset,
                  // and its block still indexed)? Then its digest is this block's: no SHA-256
                  // needed.
                  const Digest* known = nullptr;
                  if (fingerprints) {
                    const Fingerprint fp = BlockFingerprint(fkeys->gmac, buf.get(), len);
                    fps.push_back({b, fp});
                    const VolumeIndex* ri = w.ref;
                    if (ri != nullptr && b < ri->block_count() &&
                        ri->kinds[b] == BlockKind::kData &&
                        std::min<uint64_t>(bs, ri->volume_size - off) == len) {
                      const Fingerprint* rf = w.ref_fps.Find(b);
                      if (rf != nullptr && *rf == fp && index->Find(ri->digests[b]) != nullptr)
                        known = &ri->digests[b];
                    }
                  }
                  const Digest d = known != nullptr ? *known : Sha256(buf.get(), len);
                  w.index.kinds[b] = BlockKind::kData;
                  w.index.digests[b] = d;
                  ++c.data;
                  if (index->Find(d) != nullptr || !claims.TryClaim(d)) {
                    c.reused += len;
                    break;
                  }
                  const PackEntry& e = pack.Add(d, buf.get(), len);
                  c.fresh += len;
                  c.stored += e.stored_len;
                  if (pack.full()) {
                    auto sealed = pack.Seal();
                    if (!sealed.ok()) {
                      error.Set(sealed.status());
                      break;
                    }
                    uploader.Submit(std::move(*sealed));
                  }
                  break;
                }
              }
            }
            publish();
          }
          publish();
        },
        "backup of volume '" + w.info.name + "'");
    error.Set(ran);
    VMB_RETURN_IF_ERROR(error.Get());
    if (run.cancelled()) break;
    if (uploader.failed()) break;
  }
  // Flush partial packs, then wait until every pack and pack index is durable.
  run.SetPhase(Progress::Phase::kFinalizing);
  run.MaybeReport(true);
  if (!run.cancelled() && !uploader.failed()) {
    for (auto& p : packs) {
      if (p.empty()) continue;
      auto sealed = p.Seal();
      if (!sealed.ok()) {
        error.Set(sealed.status());
        break;
      }
      uploader.Submit(std::move(*sealed));
    }
  }
  Status drained = uploader.Drain();
  VMB_RETURN_IF_ERROR(error.Get());
  VMB_RETURN_IF_ERROR(drained);
  if (run.cancelled())
    return CancelledError("backup '" + name + "' cancelled; nothing was published");

  // Volume indexes, then the record: the record's presence means everything it needs is stored.
  BackupInfo rec;
  rec.name = name;
  json meta = json::parse(spec.vm_metadata_json, nullptr, false);
  rec.vm_name = vm_name;
  rec.vm_namespace = vm_namespace;
  rec.created_at = created_at;
  rec.parent = spec.parent;
  rec.state = "Ready";
  rec.vm_metadata_json = meta.dump();
  for (auto& wp : work) {
    VolumeWork& w = *wp;
    w.info.data_blocks = w.data_blocks;
    w.info.zero_blocks = w.zero_blocks;
    w.info.hole_blocks = w.hole_blocks;
    w.info.bytes_new = w.bytes_new;
    w.info.bytes_reused = w.bytes_reused;
    w.info.bytes_stored = w.bytes_stored;
    VMB_ASSIGN_OR_RETURN(std::string index_rand, RandomHex(4));
    w.info.index_key = VolumeIndexKey(name, w.info.name + "." + index_rand);
    std::string bytes = EncodeVolumeIndex(w.index);
    const Digest index_sha256 = Sha256(bytes);
    w.info.index_sha256 = ToHex(index_sha256);
    if (fingerprints) {
      // Stored masked under a fresh salt, authenticated and bound to this volume index.
      VolumeFingerprints f;
      f.volume_size = w.info.size;
      f.block_size = bs;
      f.key_id = fkeys->id;
      VMB_RETURN_IF_ERROR(RandomBytes(f.salt.data(), f.salt.size()));
      f.index_sha256 = index_sha256;
      f.entries = std::move(w.fps);
      std::sort(f.entries.begin(), f.entries.end(),
                [](const BlockFingerprintEntry& a, const BlockFingerprintEntry& b) {
                  return a.block < b.block;
                });
      VMB_RETURN_IF_ERROR(ApplyFingerprintMasks(*fkeys, f.salt, &f.entries));
      std::string fbytes = EncodeFingerprints(f, fkeys->auth);
      VMB_ASSIGN_OR_RETURN(std::string fp_rand, RandomHex(4));
      w.info.fingerprints_key = FingerprintsKey(name, w.info.name + "." + fp_rand);
      w.info.fingerprints_sha256 = ToHex(Sha256(fbytes));
      VMB_RETURN_IF_ERROR(repo.store()
                              .Put(w.info.fingerprints_key, fbytes, PutOptions{})
                              .WithContext("write block fingerprints of '" + w.info.name + "'"));
      pc.bytes_written += fbytes.size();
    }
    VMB_RETURN_IF_ERROR(repo.store()
                            .Put(w.info.index_key, bytes, PutOptions{})
                            .WithContext("write volume index of '" + w.info.name + "'"));
    pc.bytes_written += bytes.size();
    rec.bytes_total += w.info.size;
    rec.bytes_new += w.info.bytes_new;
    rec.bytes_reused += w.info.bytes_reused;
    rec.bytes_stored += w.info.bytes_stored;
    rec.volumes.push_back(w.info);
  }
  if (run.cancelled())
    return CancelledError("backup '" + name + "' cancelled; nothing was published");
  rec.completed_at = NowRfc3339();
  rec.seconds = MonotonicSeconds() - t0;
  std::string record = EncodeRecord(rec);
  Status st = repo.store().Put(RecordKey(name), record, PutOptions{.if_absent = true});
  if (st.code() == StatusCode::kAlreadyExists)
    return AlreadyExistsError("a backup named '" + name + "' appeared on the target meanwhile");
  VMB_RETURN_IF_ERROR(st.WithContext("publish backup record"));
  pc.bytes_written += record.size();
  std::lock_guard<std::mutex> l(result_mu);
  result = std::move(rec);
  return Status::Ok();
}

}  // namespace vmbackup
