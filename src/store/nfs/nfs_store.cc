// NfsStore: placeholder until issue #5 lands.
#include "store/nfs/nfs_store.h"

namespace vmbackup::internal {

StatusOr<std::unique_ptr<ObjectStore>> OpenNfsStore(const TargetConfig&, const TargetOptions&,
                                                    std::shared_ptr<Runtime>) {
  return UnimplementedError("nfs backup targets are not implemented in this build yet");
}

}  // namespace vmbackup::internal
