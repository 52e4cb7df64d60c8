// The backup's publisher (see backup_publisher.h).
#include "engine/backup_publisher.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/util.h"
#include "repo/format.h"

namespace vmbackup::internal {

namespace {

Status CancelledBeforePublishing(const std::string& backup) {
  return CancelledError("backup '" + backup + "' cancelled; nothing was published");
}

}  // namespace

Status AwaitData(PackUploader& uploader, const Status& processing, const JobRunner& run,
                 const std::string& backup) {
  Status drained = uploader.Drain();
  VMB_RETURN_IF_ERROR(processing);
  VMB_RETURN_IF_ERROR(drained);
  if (run.cancelled()) return CancelledBeforePublishing(backup);
  return Status::Ok();
}

StatusOr<BackupInfo> PublishBackup(ObjectStore& store, JobRunner& run, const FingerprintKeys* fkeys,
                                   const RecordHeader& header,
                                   std::vector<VolumeToPublish> volumes) {
  ProgressCounters& pc = run.counters();
  const std::string& name = header.name;
  // Volume indexes, then the record: the record's presence means everything it needs is stored.
  BackupInfo rec;
  rec.name = name;
  nlohmann::json meta = nlohmann::json::parse(header.vm_metadata_json, nullptr, false);
  rec.vm_name = header.vm_name;
  rec.vm_namespace = header.vm_namespace;
  rec.created_at = header.created_at;
  rec.parent = header.parent;
  rec.state = "Ready";
  rec.vm_metadata_json = meta.dump();
  for (auto& v : volumes) {
    VolumeOutcome& o = v.outcome;
    VolumeBackupInfo info;
    info.name = v.name;
    info.size = v.size;
    info.block_size = v.block_size;
    info.provider = v.provider;
    info.snapshot = v.snapshot;
    info.consistency = v.consistency;
    info.checkpoint = v.checkpoint;
    info.changed_bytes = v.changed_bytes;
    info.data_blocks = o.data_blocks;
    info.zero_blocks = o.zero_blocks;
    info.hole_blocks = o.hole_blocks;
    info.bytes_new = o.bytes_new;
    info.bytes_reused = o.bytes_reused;
    info.bytes_stored = o.bytes_stored;
    VMB_ASSIGN_OR_RETURN(std::string index_rand, RandomHex(4));
    info.index_key = VolumeIndexKey(name, info.name + "." + index_rand);
    std::string bytes = EncodeVolumeIndex(o.index);
    const Digest index_sha256 = Sha256(bytes);
    info.index_sha256 = ToHex(index_sha256);
    if (fkeys != nullptr) {
      // Stored masked under a fresh salt, authenticated and bound to this volume index.
      VolumeFingerprints f;
      f.volume_size = info.size;
      f.block_size = info.block_size;
      f.key_id = fkeys->id;
      VMB_RETURN_IF_ERROR(RandomBytes(f.salt.data(), f.salt.size()));
      f.index_sha256 = index_sha256;
      f.entries = std::move(o.fps);
      std::sort(f.entries.begin(), f.entries.end(),
                [](const BlockFingerprintEntry& a, const BlockFingerprintEntry& b) {
                  return a.block < b.block;
                });
      VMB_RETURN_IF_ERROR(ApplyFingerprintMasks(*fkeys, f.salt, &f.entries));
      std::string fbytes = EncodeFingerprints(f, fkeys->auth);
      VMB_ASSIGN_OR_RETURN(std::string fp_rand, RandomHex(4));
      info.fingerprints_key = FingerprintsKey(name, info.name + "." + fp_rand);
      info.fingerprints_sha256 = ToHex(Sha256(fbytes));
      VMB_RETURN_IF_ERROR(store.Put(info.fingerprints_key, fbytes, PutOptions{})
                              .WithContext("write block fingerprints of '" + info.name + "'"));
      pc.bytes_written += fbytes.size();
    }
    VMB_RETURN_IF_ERROR(store.Put(info.index_key, bytes, PutOptions{})
                            .WithContext("write volume index of '" + info.name + "'"));
    pc.bytes_written += bytes.size();
    rec.bytes_total += info.size;
    rec.bytes_new += info.bytes_new;
    rec.bytes_reused += info.bytes_reused;
    rec.bytes_stored += info.bytes_stored;
    rec.volumes.push_back(std::move(info));
  }
  if (run.cancelled()) return CancelledBeforePublishing(name);
  rec.completed_at = NowRfc3339();
  rec.seconds = MonotonicSeconds() - header.started;
  if (header.freeze != nullptr && header.freeze->frozen())
    rec.freeze_seconds = header.freeze->Seconds();
  std::string record = EncodeRecord(rec);
  Status st = store.Put(RecordKey(name), record, PutOptions{.if_absent = true});
  if (st.code() == StatusCode::kAlreadyExists)
    return AlreadyExistsError("a backup named '" + name + "' appeared on the target meanwhile");
  VMB_RETURN_IF_ERROR(st.WithContext("publish backup record"));
  pc.bytes_written += record.size();
  return rec;
}

}  // namespace vmbackup::internal
