// LocalStore: an ObjectStore on a local (or kernel-mounted) directory.
//
// Key "a/b/c" is the file <root>/a/b/c. Put writes <root>/.tmp/<random>, fsyncs it, then renames it
// into place (link + unlink for if_absent, which makes create-if-absent atomic) and fsyncs the
// parent directory, so a crash leaves either the complete object or none (plus, at worst, a stray
// file under .tmp/ that garbage collection removes). Thread-safe.
#ifndef VMBACKUP_STORE_LOCAL_STORE_H_
#define VMBACKUP_STORE_LOCAL_STORE_H_

#include <memory>
#include <string>

#include "store/object_store.h"

namespace vmbackup::internal {

// Opens the directory `root`. kNotFound if it does not exist, kInvalidArgument if it is not a
// directory, kPermissionDenied if it cannot be read.
StatusOr<std::unique_ptr<ObjectStore>> OpenLocalStore(const std::string& root,
                                                      std::shared_ptr<Runtime> runtime);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_STORE_LOCAL_STORE_H_
