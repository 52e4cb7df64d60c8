// internal::OpenTargetOnStore (target_impl.h): a BackupTarget over an already open store.
#include "core/errors.h"
#include "core/host_secret.h"
#include "target/target_impl.h"

namespace vmbackup::internal {

StatusOr<std::shared_ptr<BackupTarget>> OpenTargetOnStore(std::unique_ptr<ObjectStore> store,
                                                          const TargetOptions& options) {
  using TargetImpl = std::remove_pointer_t<decltype(ImplOf(std::declval<const BackupTarget&>()))>;
  auto impl = std::make_unique<TargetImpl>();
  impl->config.type = TargetConfig::Type::kFile;
  impl->config.endpoint = store->Describe();
  impl->runtime = options.runtime ? options.runtime : Runtime::Default();
  impl->state_dir = options.state_dir.empty() ? DefaultStateDir() : options.state_dir;
  const uint32_t bs = options.block_size == 0 ? kDefaultBlockSize : options.block_size;
  const uint32_t ps = options.pack_size == 0 ? kDefaultPackSize : options.pack_size;
  VMB_ASSIGN_OR_RETURN(impl->repo, Repository::Open(std::move(store), options.create_if_missing, bs,
                                                    ps, EncryptionSetupOf(options)));
  return ImplAccess::Wrap<BackupTarget>(std::move(impl));
}

}  // namespace vmbackup::internal
