// GetMany: many whole-object reads with a bounded number in flight, through the store's async
// GetAsync (real async I/O on S3 and NFS; the blocking pool for local directories), each result
// handed to the caller on the calling thread as it arrives.
//
// Thread-safety: a blocking call; `consume` runs on the calling thread only, so it needs no lock.
// REQUIRES: not called from an io() handler of the store's runtime (it waits).
#ifndef VMBACKUP_STORE_GET_MANY_H_
#define VMBACKUP_STORE_GET_MANY_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "store/object_store.h"

namespace vmbackup::internal {

// GETs at most this many objects at once by default: enough to hide a network round trip behind
// others (~300k pack indexes of 10 TiB load in minutes instead of hours), few enough for any server.
inline constexpr int kDefaultGetWindow = 32;

// Reads objects key(0) .. key(n-1) whole (at most kMaxWholeObjectRead bytes each, as Get with
// length 0) with at most `window` reads in flight, and calls consume(i, result) for each on the
// calling thread, in completion order. Once `consume` returns an error no new read starts; the
// reads in flight are awaited (their results dropped) and that error is returned. OK otherwise.
// Memory: at most `window` results are held at once.
[[nodiscard]] Status GetMany(ObjectStore& store, size_t n,
                             const std::function<std::string(size_t)>& key, int window,
                             const std::function<Status(size_t, StatusOr<std::string>)>& consume);

// As above, object i read as the range [0, length(i)) (GetAsync's `length`: 0 = whole), e.g. the
// size a listing gave, so nothing beyond it is read: an object that changed size since is
// kDataLoss or kOutOfRange. A null `length` reads every object whole.
[[nodiscard]] Status GetMany(ObjectStore& store, size_t n,
                             const std::function<std::string(size_t)>& key,
                             const std::function<uint64_t(size_t)>& length, int window,
                             const std::function<Status(size_t, StatusOr<std::string>)>& consume);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_STORE_GET_MANY_H_
