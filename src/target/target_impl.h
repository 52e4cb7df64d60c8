// BackupTarget::Impl: configuration + repository + runtime behind the public BackupTarget.
// Thread-safety: as BackupTarget (all members thread-safe or immutable after Open).
#ifndef VMBACKUP_TARGET_TARGET_IMPL_H_
#define VMBACKUP_TARGET_TARGET_IMPL_H_

#include <memory>
#include <mutex>
#include <optional>

#include "core/impl_access.h"
#include "repo/fingerprints.h"
#include "repo/repository.h"
#include "vmbackup/backup_target.h"

namespace vmbackup {

struct BackupTarget::Impl {
  TargetConfig config;
  std::shared_ptr<Runtime> runtime;
  std::unique_ptr<internal::Repository> repo;
  std::string state_dir;  // the host's state directory (TargetOptions::state_dir or the default)

  // This host's fingerprint keys for the repository, loaded (or created) from the state directory
  // on first use and cached. The error of LoadOrCreateHostSecret otherwise (not cached: the host
  // may fix the directory and try again).
  StatusOr<internal::FingerprintKeys> FingerprintKeys();

 private:
  std::mutex keys_mu_;
  std::optional<internal::FingerprintKeys> keys_;
};

namespace internal {
class ObjectStore;
// The encryption part of `options`, as Repository::Open takes it.
inline EncryptionSetup EncryptionSetupOf(const TargetOptions& options) {
  EncryptionSetup e;
  e.mode = options.encryption;
  e.secret.passphrase = options.passphrase;
  e.secret.raw_key = options.raw_key;
  e.label = options.key_label;
  return e;
}
// A BackupTarget over an already open store (tests: the in-memory store), opened like
// BackupTarget::Open opens the store of a configuration (options.create_if_missing, block_size and
// pack_size apply; config() reports type file with endpoint store->Describe()).
StatusOr<std::shared_ptr<BackupTarget>> OpenTargetOnStore(std::unique_ptr<ObjectStore> store,
                                                          const TargetOptions& options = {});
}  // namespace internal

}  // namespace vmbackup

#endif  // VMBACKUP_TARGET_TARGET_IMPL_H_
