// BackupJob: snapshot → read → skip holes / zeros → hash → dedup → compress → pack → upload →
// volume indexes → record (published last). See backup_job.h and docs/ARCHITECTURE.md. The job's
// body runs three units: the planner (backup_planner.h), the block processor (block_processor.h)
// and the publisher (backup_publisher.h).
#include "vmbackup/backup_job.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/runtime.h"
#include "core/util.h"
#include "engine/backup_planner.h"
#include "engine/backup_publisher.h"
#include "engine/block_processor.h"
#include "engine/job_runner.h"
#include "engine/pipeline.h"
#include "repo/gc.h"
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

struct BackupJob::Impl {
  std::shared_ptr<BackupTarget> target;
  BackupSpec spec;
  std::string name;
  std::string vm_name, vm_namespace;  // the VM identity, from the metadata ("" = unnamed)
  mutable std::mutex result_mu;
  std::optional<BackupInfo> result;
  // Keeps the Runtime's pack buffers from creation until the job ends (released by the driver),
  // not only while it runs: jobs queued behind the job pool reuse the buffers of those that end
  // before them instead of faulting in fresh ones when no job happens to run for a moment.
  BufferPool::Hold pending_buffers;
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
          switch (v.provider) {
            case VolumeProvider::kFile:
              if (v.path.empty()) return InvalidArgumentError(field + ".path is empty");
              break;
            case VolumeProvider::kQemu:
              if (v.qemu.qmp_socket.empty() || v.qemu.node.empty())
                return InvalidArgumentError(field + ".qemu needs qmp_socket and node");
              break;
            case VolumeProvider::kRbd:
              if (v.rbd.pool.empty() || v.rbd.image.empty())
                return InvalidArgumentError(field + ".rbd needs pool and image");
              break;
            default:
              return InvalidArgumentError(field + ".provider is unknown");
          }
          if (v.has_dirty_map && spec.parent.empty())
            return InvalidArgumentError(field +
                                        ".dirty_ranges needs spec.parent (the dirty map's base)");
        }
        if (spec.snapshot.freeze_timeout_ms < 0)
          return InvalidArgumentError("spec.snapshot.freeze_timeout_ms must not be negative");
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
        VMB_RETURN_IF_ERROR(internal::ImplOf(target)->repo->store().Ping());
        auto existing = target->GetBackup(spec.name);
        if (existing.ok() || existing.status().code() == StatusCode::kDataLoss)
          return AlreadyExistsError("a backup named '" + spec.name +
                                    "' already exists on the target");
        if (existing.status().code() != StatusCode::kNotFound) return existing.status();
        impl->pending_buffers =
            internal::ImplOf(internal::ImplOf(target)->runtime)->pack_buffers()->Keep();
        impl->target = std::move(target);
        impl->name = spec.name;
        impl->spec = std::move(spec);
        Impl* raw = impl.get();
        impl->runner = std::make_unique<JobRunner>(
            internal::ImplOf(impl->target)->runtime,
            [raw] {
              Status st = raw->Execute();
              raw->pending_buffers = BufferPool::Hold();
              return st;
            },
            impl->spec.progress, impl->spec.progress_interval_ms);
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

namespace {

// The transfer pipeline of one backup: the Runtime's pack buffers (held while the backup runs)
// and the uploader that bounds the bytes in flight (spec.max_in_flight_bytes, default 96 MiB, and
// the Runtime's bound shared by all its backups). Kept apart from the units that use it: where it
// comes from changes without them. Members end in reverse order: the uploader drains first.
struct Transfer {
  std::shared_ptr<BufferPool> pool;
  BufferPool::Hold keep_buffers;
  std::unique_ptr<PackUploader> uploader;
};

Transfer StartTransfer(Runtime& rt, Repository& repo, const BackupSpec& spec,
                       ProgressCounters& pc) {
  const uint64_t cap = spec.max_in_flight_bytes ? spec.max_in_flight_bytes : 96ull << 20;
  // Pack buffers a finished backup gave back are reused by the next without faulting in fresh
  // pages, and many concurrent backups together keep at most the Runtime's bound in flight.
  Transfer t;
  t.pool = internal::ImplOf(rt)->pack_buffers();
  t.keep_buffers = t.pool->Keep();
  t.uploader = std::make_unique<PackUploader>(
      repo.store(), cap, [&pc](uint64_t b) { pc.bytes_written += b; }, t.pool,
      &internal::ImplOf(rt)->upload_budget());
  return t;
}

}  // namespace

// Planner (backup_planner.h) → block processor (block_processor.h) → publisher
// (backup_publisher.h).
Status BackupJob::Impl::Execute() {
  const double t0 = MonotonicSeconds();
  const std::string created_at = NowRfc3339();
  JobRunner& run = *runner;
  Repository& repo = *internal::ImplOf(target)->repo;
  Runtime& rt = *internal::ImplOf(target)->runtime;
  run.SetPhase(Progress::Phase::kPreparing);
  run.MaybeReport(true);

  // The lease tells garbage collection which packs this job may still use (FORMAT.md "Garbage
  // collection"); taken before the block index is loaded, released when the job ends.
  if (repo.descriptor().writer_version > kWriterVersion)
    return FailedPreconditionError("repository at " + repo.store().Describe() +
                                   " needs writer version " +
                                   std::to_string(repo.descriptor().writer_version));
  VMB_ASSIGN_OR_RETURN(std::unique_ptr<WriterLease> lease,
                       WriterLease::Acquire(repo.store(), name));

  // Parent, block index, fingerprint reference, snapshots and block plans. Fingerprints need this
  // host's keys (from its state directory, never from the target); without them every block is
  // hashed and none are recorded.
  VMB_ASSIGN_OR_RETURN(BackupPlan plan,
                       PlanBackup(
                           repo, spec, vm_name, vm_namespace,
                           [this]() -> std::optional<FingerprintKeys> {
                             if (auto k = internal::ImplOf(target)->FingerprintKeys(); k.ok())
                               return *k;
                             return std::nullopt;
                           },
                           &run.counters(), DefaultProviders(rt)));
  const FingerprintKeys* fkeys = plan.fkeys ? &*plan.fkeys : nullptr;

  // Transfer.
  run.SetPhase(Progress::Phase::kTransferring);
  const int nworkers = std::max(1, rt.worker_threads());
  Transfer transfer = StartTransfer(rt, repo, spec, run.counters());
  PackUploader& uploader = *transfer.uploader;
  BlockProcessor processor(rt, nworkers, run, *plan.index, fkeys, uploader, transfer.pool.get(),
                           repo.descriptor().pack_size, plan.parent_name, repo.block_namer());
  std::vector<VolumeToPublish> volumes;
  volumes.reserve(plan.volumes.size());
  for (const VolumePlan& v : plan.volumes) {
    VolumeToPublish& out = volumes.emplace_back();
    out.name = v.name;
    out.size = v.size;
    out.block_size = v.block_size;
    out.provider = v.provider;
    out.snapshot = v.snapshot;
    out.consistency = v.consistency;
    out.checkpoint = v.checkpoint;
    out.changed_bytes = v.changed_bytes;
    VMB_RETURN_IF_ERROR(processor.Process(v, &out.outcome));
    if (run.cancelled()) break;
    if (uploader.failed()) break;
  }
  // Flush partial packs, then wait until every pack and pack index is durable.
  run.SetPhase(Progress::Phase::kFinalizing);
  run.MaybeReport(true);
  processor.FlushPartialPacks();
  VMB_RETURN_IF_ERROR(AwaitData(uploader, processor.error(), run, name));

  // Volume indexes, then the record: the record's presence means everything it needs is stored.
  RecordHeader header;
  header.name = name;
  header.vm_name = vm_name;
  header.vm_namespace = vm_namespace;
  header.created_at = created_at;
  header.parent = plan.parent_name;
  header.vm_metadata_json = spec.vm_metadata_json;
  header.started = t0;
  header.freeze = plan.freeze.get();
  VMB_ASSIGN_OR_RETURN(BackupInfo rec,
                       PublishBackup(repo.store(), run, fkeys, header, std::move(volumes)));
  // The new checkpoints are what the next incremental needs; the parent's are released.
  for (auto& p : plan.providers) p->Commit();
  std::lock_guard<std::mutex> l(result_mu);
  result = std::move(rec);
  return Status::Ok();
}

}  // namespace vmbackup
