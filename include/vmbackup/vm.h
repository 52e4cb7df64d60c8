// VM helpers: turn a VM description directory into a BackupSpec.
//
// A VM directory holds "vm.json", a JSON object with at least
//   {"name": "demo", "volumes": [{"name": "rootdisk", "path": "rootdisk.img"}, ...]}
// where relative volume paths are relative to the directory. The whole document is stored as the
// backup's VM metadata. Thread-safe (pure functions).
#ifndef VMBACKUP_VM_H_
#define VMBACKUP_VM_H_

#include <string>

#include "vmbackup/backup_job.h"
#include "vmbackup/export.h"
#include "vmbackup/status.h"

namespace vmbackup {

// Reads `<dir>/vm.json` into a BackupSpec (metadata + volumes; name, parent etc. left default).
// Returns kNotFound if the file is missing, kInvalidArgument naming the field if it is malformed.
VMBACKUP_EXPORT StatusOr<BackupSpec> BackupSpecFromVmDirectory(const std::string& dir);

}  // namespace vmbackup

#endif  // VMBACKUP_VM_H_
