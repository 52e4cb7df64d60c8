// RestorePlan: record → volume indexes → parallel fetch / decompress / verify / write into a
// temporary file → fsync → rename → fsync dir; then vm.json. See restore_plan.h. Each volume is
// read by a RestoreReader (restore_reader.h) and written by a VolumeWriter (restore_writer.h).
#include "vmbackup/restore_plan.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/runtime.h"
#include "core/util.h"
#include "engine/job_runner.h"
#include "engine/pipeline.h"
#include "engine/read_plan.h"
#include "engine/restore_reader.h"
#include "engine/restore_writer.h"
#include "repo/gc.h"
#include "target/target_impl.h"

namespace vmbackup {

using namespace internal;  // NOLINT(build/namespaces)
using nlohmann::json;

namespace {

std::string AbsolutePath(const std::string& p) {
  if (p.empty() || p[0] == '/') return p;
  char cwd[4096];
  if (::getcwd(cwd, sizeof(cwd)) == nullptr) return p;
  return std::string(cwd) + "/" + p;
}

}  // namespace

struct RestorePlan::Impl {
  std::shared_ptr<BackupTarget> target;
  RestoreSpec spec;
  BackupInfo backup;
  std::vector<VolumeDestination> dests;  // the volumes restored, in backup order
  std::vector<bool> explicit_dest;       // per dests entry: given in spec.volumes
  std::unique_ptr<JobRunner> runner;

  Status Execute();
  // Writes one volume. For a regular-file destination the data goes to a temporary file, whose
  // path is appended to `pending` (renamed into place only when every volume succeeded).
  Status RestoreVolume(const VolumeBackupInfo& v, const std::string& dest, bool follow_devices,
                       const RepoIndex& index, const VolumeIndex& vidx,
                       std::vector<std::pair<std::string, std::string>>* pending);
};

RestorePlan::RestorePlan(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RestorePlan::~RestorePlan() = default;

StatusOr<std::unique_ptr<RestorePlan>> RestorePlan::Create(std::shared_ptr<BackupTarget> target,
                                                           RestoreSpec spec) {
  return internal::GuardExceptions(
      "RestorePlan::Create", [&]() -> StatusOr<std::unique_ptr<RestorePlan>> {
        if (!target) return InvalidArgumentError("target is null");
        if (spec.backup.empty())
          return InvalidArgumentError("spec.backup: a backup name is required");
        // A target that is down when a job starts fails fast (core/retry.h, kConnectDeadline).
        VMB_RETURN_IF_ERROR(internal::ImplOf(target)->repo->store().Ping());
        auto impl = std::make_unique<Impl>();
        VMB_ASSIGN_OR_RETURN(impl->backup, target->GetBackup(spec.backup));
        std::map<std::string, std::string> explicit_dest;
        for (size_t i = 0; i < spec.volumes.size(); ++i) {
          const auto& d = spec.volumes[i];
          const std::string field = "spec.volumes[" + std::to_string(i) + "]";
          auto it = std::find_if(impl->backup.volumes.begin(), impl->backup.volumes.end(),
                                 [&](const VolumeBackupInfo& v) { return v.name == d.volume; });
          if (it == impl->backup.volumes.end())
            return NotFoundError(field + ".volume: backup '" + spec.backup + "' has no volume '" +
                                 d.volume + "'");
          if (d.path.empty()) return InvalidArgumentError(field + ".path is empty");
          if (!explicit_dest.emplace(d.volume, d.path).second)
            return InvalidArgumentError(field + ".volume '" + d.volume + "' is given twice");
        }
        if (!spec.new_vm_name.empty() && !IsValidName(spec.new_vm_name, 128))
          return InvalidArgumentError("spec.new_vm_name must be 1-128 of [A-Za-z0-9._-]");
        if ((spec.file_mode & ~0777u) != 0)
          return InvalidArgumentError("spec.file_mode must be permission bits (0 to 0777)");
        if (!spec.dest_dir.empty()) {
          struct stat sb;
          if (::stat(spec.dest_dir.c_str(), &sb) != 0 || !S_ISDIR(sb.st_mode))
            return NotFoundError("spec.dest_dir: directory " + spec.dest_dir + " does not exist");
          // vm.json records absolute volume paths, whatever the caller's working directory was.
          spec.dest_dir = AbsolutePath(spec.dest_dir);
          while (spec.dest_dir.size() > 1 && spec.dest_dir.back() == '/') spec.dest_dir.pop_back();
        }
        std::set<std::string> seen;
        for (const auto& v : impl->backup.volumes) {
          std::string path;
          const bool is_explicit = explicit_dest.count(v.name) != 0;
          if (is_explicit) {
            path = explicit_dest[v.name];
          } else if (!spec.dest_dir.empty()) {
            // The name comes from the target: it must be a plain volume name (the record decoder
            // already refused anything else), and the path must lie directly inside dest_dir.
            if (!IsValidVolumeName(v.name))
              return DataLossError("backup '" + spec.backup + "' has a volume named '" + v.name +
                                   "', which is not a valid volume name (hostile record?)");
            path = spec.dest_dir + "/" + v.name + ".img";
            if (DirName(path) != spec.dest_dir || path.find('\0') != std::string::npos)
              return DataLossError("volume '" + v.name + "' would be restored outside " +
                                   spec.dest_dir);
          } else if (spec.volumes.empty()) {
            return InvalidArgumentError(
                "spec: give dest_dir or an explicit destination per volume");
          }
          if (path.empty()) continue;  // explicit list that leaves this volume out
          if (!seen.insert(path).second)
            return InvalidArgumentError("spec: two volumes restore to the same path " + path);
          VMB_ASSIGN_OR_RETURN(Destination d,
                               ClassifyDestination(path, is_explicit, spec.overwrite, v.size));
          if (d.kind == Destination::kDevice && !seen.insert("device:" + d.write_path).second)
            return InvalidArgumentError("spec: two volumes restore to the same device " +
                                        d.write_path);
          impl->dests.push_back({v.name, path});
          impl->explicit_dest.push_back(is_explicit);
        }
        if (!spec.dest_dir.empty()) {
          VMB_RETURN_IF_ERROR(
              ClassifyDestination(spec.dest_dir + "/vm.json", false, spec.overwrite, 0).status());
        }
        impl->target = std::move(target);
        impl->spec = std::move(spec);
        Impl* raw = impl.get();
        impl->runner = std::make_unique<JobRunner>(
            internal::ImplOf(impl->target)->runtime, [raw] { return raw->Execute(); },
            impl->spec.progress, impl->spec.progress_interval_ms);
        return std::unique_ptr<RestorePlan>(new RestorePlan(std::move(impl)));
      });
}

Status RestorePlan::Start() { return impl_->runner->Start(); }
Status RestorePlan::Wait() { return impl_->runner->Wait(); }
std::optional<Status> RestorePlan::WaitFor(std::chrono::milliseconds timeout) {
  return impl_->runner->WaitFor(timeout);
}
void RestorePlan::OnDone(std::function<void(const Status&)> fn) {
  impl_->runner->OnDone(std::move(fn));
}
Status RestorePlan::Run() {
  VMB_RETURN_IF_ERROR(Start());
  return Wait();
}
void RestorePlan::Cancel() { impl_->runner->Cancel(); }
JobState RestorePlan::state() const { return impl_->runner->state(); }
Progress RestorePlan::progress() const { return impl_->runner->Snapshot(); }
const BackupInfo& RestorePlan::backup() const { return impl_->backup; }
std::vector<VolumeDestination> RestorePlan::destinations() const { return impl_->dests; }

Status RestorePlan::Impl::Execute() {
  JobRunner& run = *runner;
  Repository& repo = *internal::ImplOf(target)->repo;
  run.SetPhase(Progress::Phase::kPreparing);
  run.MaybeReport(true);
  // Load and verify every volume index first: a damaged backup fails before anything is written.
  std::vector<std::pair<const VolumeBackupInfo*, VolumeIndex>> vols;
  for (const auto& d : dests) {
    const VolumeBackupInfo* v = nullptr;
    for (const auto& bv : backup.volumes)
      if (bv.name == d.volume) v = &bv;
    VMB_ASSIGN_OR_RETURN(VolumeIndex vidx, repo.LoadVolumeIndex(backup.name, *v));
    run.counters().bytes_total += v->size;
    run.counters().blocks_total += vidx.block_count();
    vols.emplace_back(v, std::move(vidx));
  }
  VMB_ASSIGN_OR_RETURN(std::shared_ptr<const RepoIndex> index, repo.LoadIndex());
  {
    // Blocks in packs GC condemned after this backup deduplicated against them (FORMAT.md).
    std::vector<const VolumeIndex*> vidxs;
    for (const auto& v : vols) vidxs.push_back(&v.second);
    VMB_ASSIGN_OR_RETURN(index, WithCondemnedPacks(repo.store(), std::move(index), vidxs));
  }
  run.SetPhase(Progress::Phase::kTransferring);
  // (temporary, final) paths of volumes written completely; renamed together at the end so that a
  // failed restore creates or changes no destination file.
  std::vector<std::pair<std::string, std::string>> pending;
  auto discard = [&pending] {
    for (const auto& p : pending) ::unlink(p.first.c_str());
  };
  for (size_t i = 0; i < vols.size(); ++i) {
    Status st = RestoreVolume(*vols[i].first, dests[i].path, explicit_dest[i], *index,
                              vols[i].second, &pending);
    if (st.ok() && run.cancelled())
      st = CancelledError("restore of backup '" + backup.name + "' cancelled");
    if (!st.ok()) {
      discard();
      return st;
    }
  }
  run.SetPhase(Progress::Phase::kFinalizing);
  for (size_t i = 0; i < pending.size(); ++i) {
    const auto& [tmp, dest] = pending[i];
    if (::rename(tmp.c_str(), dest.c_str()) != 0) {
      Status st = ErrnoToStatus(errno, "rename " + tmp + " to " + dest);
      for (size_t j = i; j < pending.size(); ++j) ::unlink(pending[j].first.c_str());
      return st;
    }
    VMB_RETURN_IF_ERROR(FsyncDir(DirName(dest)));
  }
  if (!spec.dest_dir.empty()) {
    json meta = json::parse(backup.vm_metadata_json, nullptr, false);
    if (meta.is_discarded() || !meta.is_object()) meta = json::object();
    if (!spec.new_vm_name.empty()) meta["name"] = spec.new_vm_name;
    json vols_json = json::array();
    for (const auto& d : dests) {
      json entry = {{"name", d.volume}, {"path", d.path}};
      if (meta.contains("volumes") && meta["volumes"].is_array()) {
        for (const auto& orig : meta["volumes"])
          if (orig.is_object() && orig.value("name", "") == d.volume) {
            entry = orig;
            entry["path"] = d.path;
          }
      }
      vols_json.push_back(entry);
    }
    meta["volumes"] = vols_json;
    meta["restoredFrom"] = backup.name;
    VMB_RETURN_IF_ERROR(
        WriteFileAtomic(spec.dest_dir + "/vm.json", meta.dump(2) + "\n", spec.file_mode));
  }
  return Status::Ok();
}

Status RestorePlan::Impl::RestoreVolume(const VolumeBackupInfo& v, const std::string& dest,
                                        bool follow_devices, const RepoIndex& index,
                                        const VolumeIndex& vidx,
                                        std::vector<std::pair<std::string, std::string>>* pending) {
  JobRunner& run = *runner;
  ProgressCounters& pc = run.counters();
  Repository& repo = *internal::ImplOf(target)->repo;
  Runtime& rt = *internal::ImplOf(target)->runtime;
  // The writer: a temporary file beside a regular-file destination (renamed when every volume is
  // complete), or the block device itself. It removes the temporary file on every error below.
  VMB_ASSIGN_OR_RETURN(
      std::unique_ptr<VolumeWriter> out,
      VolumeWriter::Open(dest, follow_devices, spec.overwrite, spec.file_mode, v.size));
  const bool is_block = out->is_block();
  // The reader: every data block located in its pack; runs of nearby blocks of one pack read with
  // ONE ranged Get.
  RestoreReader reader(repo.store(), index, vidx, v.size, backup.name, v.name, repo.block_namer());
  VMB_RETURN_IF_ERROR(reader.Plan());
  const uint32_t bs = vidx.block_size;
  const uint64_t nblocks = vidx.block_count();
  // Block devices keep old contents: zero and hole blocks must be written as zeros.
  const std::vector<uint64_t> zero_blocks =
      is_block ? NonDataBlocks(vidx) : std::vector<uint64_t>{};
  FirstError error;

  std::atomic<size_t> next_unit{0}, next_zero{0};
  // More tasks than cores, on the blocking pool: each waits on reads from the target part of the
  // time, and the others decompress, verify and write meanwhile.
  const int ntasks = std::max(2, internal::ImplOf(rt)->blocking_threads());
  Status ran = RunOnBlocking(
      rt, ntasks,
      [&](int) {
        std::unique_ptr<char[]> raw(new char[bs]);
        std::string buf;  // the current fetch unit, reused across units
        for (;;) {
          if (run.cancelled() || error.has_error()) return;
          const size_t ui = next_unit.fetch_add(1, std::memory_order_relaxed);
          if (ui >= reader.unit_count()) break;
          if (Status got = reader.Fetch(ui, &buf); !got.ok()) {
            error.Set(got);
            return;
          }
          pc.bytes_read += buf.size();
          const ReadUnit& u = reader.unit(ui);
          for (size_t i = u.first; i < u.last; ++i) {
            const uint64_t b = reader.piece(i).block;
            const size_t len = reader.block_length(b);
            Status st = reader.Decode(ui, i, buf, raw.get());
            if (st.ok()) st = out->Write(raw.get(), len, b * bs);
            if (!st.ok()) {
              error.Set(st);
              return;
            }
            pc.bytes_written += len;
            pc.bytes_scanned += len;
            pc.blocks_done += 1;
            run.MaybeReport();
            if (run.cancelled()) return;
          }
          out->NoteWritten(u.end - u.begin);
          run.MaybeReport();
        }
        std::memset(raw.get(), 0, bs);
        for (;;) {
          if (run.cancelled() || error.has_error()) return;
          const size_t zi = next_zero.fetch_add(1, std::memory_order_relaxed);
          if (zi >= zero_blocks.size()) break;
          const uint64_t b = zero_blocks[zi];
          Status st = out->Write(raw.get(), reader.block_length(b), b * bs);
          if (!st.ok()) {
            error.Set(st);
            return;
          }
          pc.bytes_scanned += reader.block_length(b);
          pc.blocks_done += 1;
        }
      },
      "restore of volume '" + v.name + "'");
  error.Set(ran);
  // Holes and zero blocks of regular files need no write: the file was sized sparse.
  if (!is_block) {
    for (uint64_t b = 0; b < nblocks; ++b) {
      if (vidx.kinds[b] != BlockKind::kData) {
        pc.bytes_scanned += reader.block_length(b);
        pc.blocks_done += 1;
      }
    }
  }
  Status st = error.Get();
  if (st.ok() && run.cancelled())
    st = CancelledError("restore of backup '" + backup.name + "' cancelled");
  VMB_RETURN_IF_ERROR(st);
  VMB_RETURN_IF_ERROR(out->Finish());
  if (!is_block) pending->emplace_back(out->path(), dest);
  return Status::Ok();
}

}  // namespace vmbackup
