// Placeholder replaced by the RBD provider.
#include "core/errors.h"
#include "volume/provider.h"
namespace vmbackup::internal {
std::unique_ptr<SnapshotProvider> MakeRbdProvider() { return nullptr; }
}  // namespace vmbackup::internal
