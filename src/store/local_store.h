// LocalStore: an ObjectStore on a local (or kernel-mounted) directory.
//
// Key "a/b/c" is the file <root>/a/b/c. Put writes <root>/.tmp/<random>, fsyncs it, then renames it
// into place (link + unlink for if_absent, which makes create-if-absent atomic) and fsyncs the
// parent directory, so a crash leaves either the complete object or none (plus, at worst, a stray
// file under .tmp/ that garbage collection removes). Thread-safe.
//
// The target is shared storage that others may write to, so nothing below the root is trusted:
// - The root is resolved once, at open (the configured path may itself be a symbolic link), and
//   every operation resolves keys against that directory descriptor with openat2(RESOLVE_BENEATH |
//   RESOLVE_NO_SYMLINKS) (or, where the kernel has no openat2, a component-by-component
//   openat(O_NOFOLLOW) walk) and the *at calls. A symbolic link anywhere below the root (a
//   directory on the way or the object itself) is never followed: Put, Get, Head and Delete of such
//   a key fail with kPermissionDenied naming the key and the link; List skips links (and fails the
//   same way when the directory its prefix names is reached through one). Nothing outside the root
//   is ever read, written or removed.
// - Objects and their temporaries are created 0600, directories 0700 (guest data stays private to
//   the target's owner).
// - Only regular files are objects: anything else (FIFO, device, directory) at a key is kNotFound
//   "not a regular file", and is never opened for reading in a way that could block.
// - A whole-object read (length 0) of more than kMaxWholeObjectRead bytes is kDataLoss naming the
//   object before anything is allocated; a ranged read allocates at most the length asked, and
//   nothing when the object is shorter than the range (kDataLoss).
#ifndef VMBACKUP_STORE_LOCAL_STORE_H_
#define VMBACKUP_STORE_LOCAL_STORE_H_

#include <memory>
#include <string>

#include "store/object_store.h"

namespace vmbackup::internal {

// Opens the directory `root` (following a symbolic link there: the user configured it). kNotFound
// if it does not exist, kInvalidArgument if it is not a directory, kPermissionDenied if it cannot
// be read.
StatusOr<std::unique_ptr<ObjectStore>> OpenLocalStore(const std::string& root,
                                                      std::shared_ptr<Runtime> runtime);

// Test hook: while set, stores opened afterwards resolve keys with the openat(O_NOFOLLOW) walk, as
// on kernels without openat2, instead of openat2.
void SetLocalStoreWithoutOpenat2ForTest(bool without);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_STORE_LOCAL_STORE_H_
