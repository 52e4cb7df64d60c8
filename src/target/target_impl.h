// BackupTarget::Impl: configuration + repository + runtime behind the public BackupTarget.
// Thread-safety: as BackupTarget (all members thread-safe or immutable after Open).
#ifndef VMBACKUP_TARGET_TARGET_IMPL_H_
#define VMBACKUP_TARGET_TARGET_IMPL_H_

#include <memory>

#include "repo/repository.h"
#include "vmbackup/backup_target.h"

namespace vmbackup {

struct BackupTarget::Impl {
  TargetConfig config;
  std::shared_ptr<Runtime> runtime;
  std::unique_ptr<internal::Repository> repo;
};

}  // namespace vmbackup

#endif  // VMBACKUP_TARGET_TARGET_IMPL_H_
