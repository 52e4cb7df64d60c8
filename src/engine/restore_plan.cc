// RestorePlan: record → volume indexes → parallel fetch / decompress / verify / write into a
// temporary file → fsync → rename → fsync dir; then vm.json. See restore_plan.h.
#include "vmbackup/restore_plan.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/runtime.h"
#include "core/util.h"
#include "engine/job_runner.h"
#include "engine/pipeline.h"
#include "engine/read_plan.h"
#include "target/target_impl.h"

namespace vmbackup {

using namespace internal;  // NOLINT(build/namespaces)
using nlohmann::json;

namespace {

// What a destination path is when the restore is planned, and again when it starts.
struct Destination {
  enum Kind { kNew, kFile, kDevice } kind = kNew;
  std::string write_path;  // the device's real path, or the path itself
  uint64_t device_size = 0;
};

// Classifies `path`. A symbolic link is followed only when `follow_devices` (explicit
// destinations: /dev/vg/lv is one) and only to a block device; any other link is a file to
// replace, never written through. Errors: kAlreadyExists when it exists and !overwrite;
// kFailedPrecondition for a device in use or too small, or a path that is neither file nor device.
StatusOr<Destination> Classify(const std::string& path, bool follow_devices, bool overwrite,
                               uint64_t volume_size) {
  Destination d;
  d.write_path = path;
  struct stat sb;
  if (::lstat(path.c_str(), &sb) != 0) {
    if (errno == ENOENT) return d;
    return ErrnoToStatus(errno, "destination " + path);
  }
  if (S_ISLNK(sb.st_mode) && follow_devices) {
    char real[PATH_MAX];
    struct stat rs;
    if (::realpath(path.c_str(), real) != nullptr && ::stat(real, &rs) == 0 &&
        S_ISBLK(rs.st_mode)) {
      d.write_path = real;
      sb = rs;
    }
  }
  if (!overwrite)
    return AlreadyExistsError("destination " + path + " exists (set overwrite to replace it)");
  if (S_ISBLK(sb.st_mode)) {
    d.kind = Destination::kDevice;
    // O_EXCL on a block device: EBUSY while it is mounted or held (LVM, another O_EXCL opener).
    int fd = ::open(d.write_path.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
    if (fd < 0) {
      if (errno == EBUSY)
        return FailedPreconditionError("destination " + path +
                                       (d.write_path != path ? " (" + d.write_path + ")" : "") +
                                       " is in use (mounted or held by another program)");
      return ErrnoToStatus(errno, "open destination device " + d.write_path);
    }
    int rc = ::ioctl(fd, BLKGETSIZE64, &d.device_size);
    int err = errno;
    ::close(fd);
    if (rc != 0) return ErrnoToStatus(err, "size of destination device " + d.write_path);
    if (d.device_size < volume_size)
      return FailedPreconditionError(
          "destination device " + d.write_path + " holds " + std::to_string(d.device_size) +
          " bytes, less than the volume's " + std::to_string(volume_size));
    return d;
  }
  if (S_ISREG(sb.st_mode) || S_ISLNK(sb.st_mode)) {
    d.kind = Destination::kFile;
    return d;
  }
  return FailedPreconditionError("destination " + path +
                                 " is neither a regular file nor a block device");
}

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
        VMB_RETURN_IF_ERROR(target->impl()->repo->store().Ping());
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
          VMB_ASSIGN_OR_RETURN(Destination d, Classify(path, is_explicit, spec.overwrite, v.size));
          if (d.kind == Destination::kDevice && !seen.insert("device:" + d.write_path).second)
            return InvalidArgumentError("spec: two volumes restore to the same device " +
                                        d.write_path);
          impl->dests.push_back({v.name, path});
          impl->explicit_dest.push_back(is_explicit);
        }
        if (!spec.dest_dir.empty()) {
          VMB_RETURN_IF_ERROR(
              Classify(spec.dest_dir + "/vm.json", false, spec.overwrite, 0).status());
        }
        impl->target = std::move(target);
        impl->spec = std::move(spec);
        Impl* raw = impl.get();
        impl->runner = std::make_unique<JobRunner>(
            impl->target->impl()->runtime, [raw] { return raw->Execute(); }, impl->spec.progress,
            impl->spec.progress_interval_ms);
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
  Repository& repo = *target->impl()->repo;
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
  Repository& repo = *target->impl()->repo;
  Runtime& rt = *target->impl()->runtime;
  // Checked again: time passed since Create.
  VMB_ASSIGN_OR_RETURN(Destination d, Classify(dest, follow_devices, spec.overwrite, v.size));
  const bool is_block = d.kind == Destination::kDevice;
  // Regular files: write a temporary file beside the destination, rename when complete. Block
  // devices: written in place, opened exclusively (no mounted or otherwise held device).
  VMB_ASSIGN_OR_RETURN(std::string tmp_rand, RandomHex(4));
  const std::string tmp = is_block ? d.write_path : dest + ".vmbackup-partial-" + tmp_rand;
  int fd = is_block ? ::open(tmp.c_str(), O_WRONLY | O_EXCL | O_CLOEXEC)
                    : ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                             spec.file_mode);
  if (fd < 0) {
    if (is_block && errno == EBUSY)
      return FailedPreconditionError("destination " + dest + (tmp != dest ? " (" + tmp + ")" : "") +
                                     " is in use (mounted or held by another program)");
    return ErrnoToStatus(errno, "create " + tmp);
  }
  struct stat opened;
  if (::fstat(fd, &opened) != 0 ||
      (is_block ? !S_ISBLK(opened.st_mode) : !S_ISREG(opened.st_mode))) {
    ::close(fd);
    if (!is_block) ::unlink(tmp.c_str());
    return FailedPreconditionError("destination " + dest + " changed while the restore started");
  }
  // The mode the host asked for, whatever the process umask.
  if (!is_block && ::fchmod(fd, spec.file_mode) != 0) {
    Status st = ErrnoToStatus(errno, "chmod " + tmp);
    ::close(fd);
    ::unlink(tmp.c_str());
    return st;
  }
  auto cleanup = [&] {
    ::close(fd);
    if (!is_block) ::unlink(tmp.c_str());
  };
  if (!is_block && ::ftruncate(fd, static_cast<off_t>(v.size)) != 0) {
    Status st = ErrnoToStatus(errno, "size " + tmp);
    cleanup();
    return st;
  }
  const uint32_t bs = vidx.block_size;
  const uint64_t nblocks = vidx.block_count();
  FirstError error;
  auto block_len = [&](uint64_t b) {
    return static_cast<size_t>(std::min<uint64_t>(bs, v.size - b * bs));
  };
  auto where = [&](uint64_t b) {
    return "backup '" + backup.name + "', volume '" + v.name + "', offset " +
           std::to_string(b * bs);
  };

  // Plan: every data block located in its pack, then sorted by (pack, offset) and cut into fetch
  // units: runs of nearby blocks of one pack read with ONE ranged Get of at most kMaxUnit bytes.
  // Fewer, larger reads matter on S3 and NFS; on a local disk they turn into sequential reads.
  struct Piece {
    uint32_t pack;
    uint64_t offset;  // in the pack
    const BlockLocation* loc;
    uint64_t block;  // block number in the volume
  };
  std::vector<Piece> pieces;
  std::vector<uint64_t> zero_blocks;  // written explicitly on block devices only
  for (uint64_t b = 0; b < nblocks; ++b) {
    if (vidx.kinds[b] != BlockKind::kData) {
      if (is_block) zero_blocks.push_back(b);
      continue;
    }
    const BlockLocation* loc = index.Find(vidx.digests[b]);
    if (loc == nullptr) {
      std::string msg = where(b) + ": block " + ToHex(vidx.digests[b]) + " is in no pack index";
      if (!index.damaged().empty()) msg += " (damaged: " + index.damaged().front() + ")";
      cleanup();
      return DataLossError(msg);
    }
    if (loc->raw_len != block_len(b)) {
      cleanup();
      return DataLossError(where(b) + ": pack index gives the block a different length");
    }
    pieces.push_back({loc->pack, loc->offset, loc, b});
  }
  std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) {
    return std::tie(a.pack, a.offset, a.block) < std::tie(b.pack, b.offset, b.block);
  });
  constexpr uint64_t kMaxUnit = 8u << 20;   // bytes per read
  constexpr uint64_t kMaxGap = 256u << 10;  // read through gaps this small rather than split
  std::vector<ReadPiece> read_pieces;
  read_pieces.reserve(pieces.size());
  for (const Piece& p : pieces) read_pieces.push_back({p.pack, p.offset, p.loc->stored_len});
  const std::vector<ReadUnit> units = CoalesceReads(read_pieces, kMaxGap, kMaxUnit);
  read_pieces = {};

  std::atomic<size_t> next_unit{0}, next_zero{0};
  // More tasks than cores, on the blocking pool: each waits on reads from the target part of the
  // time, and the others decompress, verify and write meanwhile.
  const int ntasks = std::max(2, rt.impl()->blocking_threads());
  std::atomic<uint64_t> unflushed{0};
  Status ran = RunOnBlocking(
      rt, ntasks,
      [&](int) {
        std::unique_ptr<char[]> raw(new char[bs]);
        std::string buf;  // the current fetch unit, reused across units
        for (;;) {
          if (run.cancelled() || error.has_error()) return;
          const size_t ui = next_unit.fetch_add(1, std::memory_order_relaxed);
          if (ui >= units.size()) break;
          const ReadUnit& u = units[ui];
          const std::string key = PackKey(index.pack_id(pieces[u.first].pack));
          Status got = repo.store().GetInto(key, u.begin, u.end - u.begin, &buf);
          if (!got.ok()) {
            // Missing, or shorter than its index says (a range past the end): the target's
            // data is damaged, whatever the store called it.
            const StatusCode c = got.code();
            error.Set(c == StatusCode::kNotFound
                          ? DataLossError(where(pieces[u.first].block) + ": pack object " + key +
                                          " is missing")
                      : c == StatusCode::kOutOfRange || c == StatusCode::kDataLoss
                          ? DataLossError(where(pieces[u.first].block) + ": pack object " + key +
                                          " does not hold bytes " + std::to_string(u.begin) + "-" +
                                          std::to_string(u.end) + " that its pack index lists (" +
                                          got.message() + ")")
                          : got.WithContext(where(pieces[u.first].block) + ", object " + key));
            return;
          }
          const std::string* data = &buf;
          pc.bytes_read += data->size();
          for (size_t i = u.first; i < u.last; ++i) {
            const Piece& p = pieces[i];
            const size_t len = block_len(p.block);
            Status st = DecodeBlock(p.loc->codec, data->data() + (p.offset - u.begin),
                                    p.loc->stored_len, raw.get(), len);
            if (st.ok() && Sha256(raw.get(), len) != vidx.digests[p.block])
              st = DataLossError("digest mismatch (corrupt block)");
            if (!st.ok()) {
              error.Set(DataLossError(where(p.block) + ", object " + key + " at " +
                                      std::to_string(p.offset) + ": " + st.message()));
              return;
            }
            st = PwriteAll(fd, raw.get(), len, p.block * bs, tmp);
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
          // Start write-back every 64 MiB so the final fsync does not find the whole volume dirty.
          if (unflushed.fetch_add(u.end - u.begin) > (64u << 20)) {
            unflushed.store(0);
            ::sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
          }
          run.MaybeReport();
        }
        // Block devices keep old contents: zero and hole blocks must be written as zeros.
        std::memset(raw.get(), 0, bs);
        for (;;) {
          if (run.cancelled() || error.has_error()) return;
          const size_t zi = next_zero.fetch_add(1, std::memory_order_relaxed);
          if (zi >= zero_blocks.size()) break;
          const uint64_t b = zero_blocks[zi];
          Status st = PwriteAll(fd, raw.get(), block_len(b), b * bs, tmp);
          if (!st.ok()) {
            error.Set(st);
            return;
          }
          pc.bytes_scanned += block_len(b);
          pc.blocks_done += 1;
        }
      },
      "restore of volume '" + v.name + "'");
  error.Set(ran);
  // Holes and zero blocks of regular files need no write: the file was sized sparse.
  if (!is_block) {
    for (uint64_t b = 0; b < nblocks; ++b) {
      if (vidx.kinds[b] != BlockKind::kData) {
        pc.bytes_scanned += block_len(b);
        pc.blocks_done += 1;
      }
    }
  }
  Status st = error.Get();
  if (st.ok() && run.cancelled())
    st = CancelledError("restore of backup '" + backup.name + "' cancelled");
  if (st.ok() && ::fsync(fd) != 0) st = ErrnoToStatus(errno, "fsync " + tmp);
  if (!st.ok()) {
    cleanup();
    return st;
  }
  if (::close(fd) != 0) {
    st = ErrnoToStatus(errno, "close " + tmp);
    if (!is_block) ::unlink(tmp.c_str());
    return st;
  }
  if (!is_block) pending->emplace_back(tmp, dest);
  return Status::Ok();
}

}  // namespace vmbackup
