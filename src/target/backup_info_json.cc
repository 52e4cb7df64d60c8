// BackupInfoToJson (see backup_target.h): the one JSON form of a backup for the C binding and
// vmbackupctl. Field order is fixed (ordered_json), so output is stable and diffable.
#include <nlohmann/json.hpp>

#include "vmbackup/backup_target.h"

namespace vmbackup {

namespace {

using nlohmann::ordered_json;

ordered_json VolumeJson(const VolumeBackupInfo& v) {
  ordered_json j;
  j["name"] = v.name;
  j["size"] = v.size;
  j["block_size"] = v.block_size;
  j["data_blocks"] = v.data_blocks;
  j["zero_blocks"] = v.zero_blocks;
  j["hole_blocks"] = v.hole_blocks;
  j["bytes_new"] = v.bytes_new;
  j["bytes_reused"] = v.bytes_reused;
  j["bytes_stored"] = v.bytes_stored;
  j["index_key"] = v.index_key;
  j["index_sha256"] = v.index_sha256;
  if (!v.fingerprints_key.empty()) {
    j["fingerprints_key"] = v.fingerprints_key;
    j["fingerprints_sha256"] = v.fingerprints_sha256;
  }
  if (!v.provider.empty()) j["provider"] = v.provider;
  if (!v.snapshot.empty()) j["snapshot"] = v.snapshot;
  if (!v.consistency.empty()) j["consistency"] = v.consistency;
  if (!v.checkpoint.empty()) j["checkpoint"] = v.checkpoint;
  if (v.changed_bytes >= 0) j["changed_bytes"] = v.changed_bytes;
  return j;
}

}  // namespace

std::string BackupInfoToJson(const BackupInfo& b) {
  ordered_json j;
  j["name"] = b.name;
  j["vm_name"] = b.vm_name;
  j["vm_namespace"] = b.vm_namespace;
  j["created_at"] = b.created_at;
  j["completed_at"] = b.completed_at;
  j["parent"] = b.parent;
  j["state"] = b.state;
  // The metadata document as a JSON value; a document that does not parse is passed as a string.
  if (b.vm_metadata_json.empty()) {
    j["vm_metadata"] = ordered_json::object();
  } else {
    ordered_json meta =
        ordered_json::parse(b.vm_metadata_json, nullptr, /*allow_exceptions=*/false);
    j["vm_metadata"] = meta.is_discarded() ? ordered_json(b.vm_metadata_json) : std::move(meta);
  }
  ordered_json volumes = ordered_json::array();
  for (const VolumeBackupInfo& v : b.volumes) volumes.push_back(VolumeJson(v));
  j["volumes"] = std::move(volumes);
  j["bytes_total"] = b.bytes_total;
  j["bytes_new"] = b.bytes_new;
  j["bytes_reused"] = b.bytes_reused;
  j["bytes_stored"] = b.bytes_stored;
  j["seconds"] = b.seconds;
  if (b.freeze_seconds >= 0) j["freeze_seconds"] = b.freeze_seconds;
  // Replacement of invalid UTF-8: metadata from a target may hold any bytes.
  return j.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
}

}  // namespace vmbackup
