// The stores of a target, opened from its setting (TargetConfig) and TargetOptions: the one place
// where target options get their defaults and are validated, and where they become each store's
// own options (the stores know nothing of the public configuration types).
//
// Thread-safety: pure functions.
#ifndef VMBACKUP_TARGET_STORE_FACTORY_H_
#define VMBACKUP_TARGET_STORE_FACTORY_H_

#include <memory>

#include "store/nfs/nfs_store.h"
#include "store/object_store.h"
#include "store/s3/s3_store.h"
#include "vmbackup/backup_target.h"

namespace vmbackup::internal {

// The retry policy of TargetOptions::retry_timeout_seconds (0 = 120 s). kInvalidArgument when it
// is negative.
StatusOr<RetryPolicy> RetryPolicyOf(const TargetOptions& options);

// A TargetConfig of type s3 (or nfs) and TargetOptions as the store's options. kInvalidArgument
// naming the option for a negative retry_timeout_seconds or max_requests_in_flight.
StatusOr<S3StoreOptions> S3StoreOptionsOf(const TargetConfig& config, const TargetOptions& options);
StatusOr<NfsStoreOptions> NfsStoreOptionsOf(const TargetConfig& config,
                                            const TargetOptions& options);

// OpenS3Store / OpenNfsStore from a target's setting and options (errors: as the *Of functions,
// then as the store's Open).
StatusOr<std::unique_ptr<ObjectStore>> OpenS3Store(const TargetConfig& config,
                                                   const TargetOptions& options,
                                                   std::shared_ptr<Runtime> runtime,
                                                   S3TestHooks hooks = {});
StatusOr<std::unique_ptr<ObjectStore>> OpenNfsStore(const TargetConfig& config,
                                                    const TargetOptions& options,
                                                    std::shared_ptr<Runtime> runtime);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_TARGET_STORE_FACTORY_H_
