// BackupInfo: what a backup target records about each backup (the catalogue's entries), and its
// one JSON form. Plain values: copy and share them freely across threads.
#ifndef VMBACKUP_BACKUP_INFO_H_
#define VMBACKUP_BACKUP_INFO_H_

#include <cstdint>
#include <string>
#include <vector>

#include "vmbackup/export.h"

namespace vmbackup {

// One volume inside a backup.
struct VolumeBackupInfo {
  std::string name;           // volume name, unique inside the VM
  uint64_t size = 0;          // logical size in bytes
  uint32_t block_size = 0;    // block size of the repository when the backup was made
  uint64_t data_blocks = 0;   // blocks holding data
  uint64_t zero_blocks = 0;   // blocks that were all zeros
  uint64_t hole_blocks = 0;   // blocks that were holes in the source
  uint64_t bytes_new = 0;     // raw bytes this backup added to the target
  uint64_t bytes_reused = 0;  // raw bytes found on the target already
  uint64_t bytes_stored = 0;  // bytes this backup added to the target after compression
  std::string index_key;      // object key of the volume's block index
  std::string index_sha256;   // hex SHA-256 of that index object
  // Object key and hex SHA-256 of the volume's block fingerprints (lets the next backup skip
  // hashing unchanged blocks); empty when the backup has none.
  std::string fingerprints_key;
  std::string fingerprints_sha256;
  // Where the volume lived: "file", "qemu" or "rbd" (VolumeProvider). Empty in records written
  // before vmbackup recorded it (they are "file").
  std::string provider;
  // How the volume was read: "reflink" (a clone taken inside the freeze window), "direct" (the
  // volume itself), "fleece" (QEMU's point-in-time export of a running disk) or "rbd" (an RBD
  // snapshot). Empty in records written before vmbackup recorded it.
  std::string snapshot;
  // What the data can be trusted to be (docs/FORMAT.md "Records"): "fs-frozen" (the freeze hook
  // succeeded and the volume was cloned, or read while the guest stayed frozen), "crash-consistent"
  // (cloned without a freeze hook: as after a power cut), "stopped" (the host said the
  // VM was stopped), "unknown" (read directly while nothing kept it still). Empty in older
  // records.
  std::string consistency;
  // The provider's checkpoint of this backup's instant ("vmbackup-" + 16 hex: a QEMU dirty bitmap
  // or an RBD snapshot name): the base of the next incremental's changed ranges. Empty: none.
  std::string checkpoint;
  // Bytes the provider reported changed since the parent's checkpoint (what the backup read of
  // this volume, at block granularity); -1 when no provider changes were used (a full read, or the
  // host's dirty map).
  int64_t changed_bytes = -1;
};

// A backup as recorded on the target. A record exists on the target only when every byte it needs
// is there, so every listed backup is restorable ("Ready").
struct BackupInfo {
  std::string name;
  std::string vm_name;       // from the VM metadata's "name", if any
  std::string vm_namespace;  // from the VM metadata's "namespace", if any
  std::string created_at;    // RFC 3339 UTC, when the backup started
  std::string completed_at;  // RFC 3339 UTC, when the record was published
  std::string parent;        // backup used as the base of this incremental one, or empty
  std::string state = "Ready";
  std::string vm_metadata_json;  // the VM metadata document given at backup time, verbatim
  std::vector<VolumeBackupInfo> volumes;
  uint64_t bytes_total = 0;  // sum of volume sizes
  uint64_t bytes_new = 0;
  uint64_t bytes_reused = 0;
  uint64_t bytes_stored = 0;
  double seconds = 0;  // wall time of the backup
  // Seconds the guest was frozen: from the freeze hook's return to the thaw hook's call (one
  // window for all volumes; for direct reads kept frozen, until the record was published). -1
  // when no freeze hook ran (or in records written before vmbackup recorded it).
  double freeze_seconds = -1;
};

// The result of listing a target: the readable records, and one line per record that could not
// be read ("name: reason"), so one damaged record never hides the others.
struct BackupList {
  std::vector<BackupInfo> backups;  // sorted by created_at, oldest first
  std::vector<std::string> damaged;
};

// `info` as one compact JSON object: every field of BackupInfo and of each VolumeBackupInfo under
// its C++ name (fingerprints_key / fingerprints_sha256 only when set), "vm_metadata" as the JSON
// value of vm_metadata_json (an object; a string if it does not parse). The one JSON form of a
// backup shared by the C binding and vmbackupctl (schema: docs/c_api.md, "Backup record").
// Never fails. Thread-safe.
VMBACKUP_EXPORT std::string BackupInfoToJson(const BackupInfo& info);

}  // namespace vmbackup

#endif  // VMBACKUP_BACKUP_INFO_H_
