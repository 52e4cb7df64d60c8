// S3Store: an ObjectStore on an S3 bucket (AWS, Ceph RGW, MinIO, ...) over libcurl with our own
// SigV4 signing. Path-style or virtual-hosted-style addressing, optional key prefix, custom CA,
// bounded retries with exponential backoff and jitter, multipart upload for large objects,
// conditional create (If-None-Match: *, after a HEAD check), DeleteObjects in batches of 1000.
// See docs/s3.md. Thread-safe.
#ifndef VMBACKUP_STORE_S3_S3_STORE_H_
#define VMBACKUP_STORE_S3_S3_STORE_H_

#include <memory>

#include "store/object_store.h"
#include "vmbackup/backup_target.h"

namespace vmbackup::internal {

// Opens the bucket named by `config` and checks that it answers (a one-key listing).
// Returns kInvalidArgument for a bad endpoint or missing credentials, kPermissionDenied for
// rejected credentials (naming the S3 error code and request id), kNotFound for a missing bucket,
// kUnavailable when the server cannot be reached within the retry budget.
StatusOr<std::unique_ptr<ObjectStore>> OpenS3Store(const TargetConfig& config,
                                                   const TargetOptions& options,
                                                   std::shared_ptr<Runtime> runtime);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_STORE_S3_S3_STORE_H_
