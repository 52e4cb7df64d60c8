// NfsStore: an ObjectStore on an NFS export over libnfs (userspace; no kernel mount), with bounded
// timeouts. See docs/nfs.md. Thread-safe.
#ifndef VMBACKUP_STORE_NFS_NFS_STORE_H_
#define VMBACKUP_STORE_NFS_NFS_STORE_H_

#include <memory>

#include "store/object_store.h"
#include "vmbackup/backup_target.h"

namespace vmbackup::internal {

// Opens the export named by config.endpoint (nfs://host:/path or nfs://host/path?version=3&...).
// Returns kInvalidArgument for a bad URL, kNotFound for a missing export, kPermissionDenied when the
// server refuses access, kUnavailable when the server cannot be reached within the timeout.
StatusOr<std::unique_ptr<ObjectStore>> OpenNfsStore(const TargetConfig& config,
                                                    const TargetOptions& options,
                                                    std::shared_ptr<Runtime> runtime);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_STORE_NFS_NFS_STORE_H_
