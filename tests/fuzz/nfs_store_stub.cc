// Stand-in for the NFS store in the fuzz build. clang 14 with ASan cannot compile the store's C++20
// coroutines (a backend bug: "Cannot represent a difference across sections"), and no fuzzer opens
// an NFS store (target configurations are only parsed), so the fuzzers link this, which refuses.
#include "core/errors.h"
#include "store/nfs/nfs_store.h"

namespace vmbackup::internal {

StatusOr<NfsEndpoint> ParseNfsEndpoint(const std::string&) {
  return UnimplementedError("the NFS store is not built into the fuzzers");
}

StatusOr<std::unique_ptr<ObjectStore>> OpenNfsStore(const NfsStoreOptions&,
                                                    std::shared_ptr<Runtime>) {
  return UnimplementedError("the NFS store is not built into the fuzzers");
}

}  // namespace vmbackup::internal
