// ObjectStore: the minimal object interface every backup target speaks (local directory, S3, NFS).
//
// Keys are '/'-separated relative paths of [A-Za-z0-9._/-]. Objects are written whole and
// atomically (a reader sees the old object, the new one, or none: never a part), and are immutable
// by convention. Every operation exists in an async form (the completion is called exactly once, on
// a runtime thread or inline on the caller's thread for immediate errors) and a blocking form.
// Blocking forms may be called from job and user threads, never from an io() handler.
//
// Errors: kNotFound (no such object), kAlreadyExists (PutOptions::if_absent and the key exists),
// kPermissionDenied, kResourceExhausted (target full), kUnavailable (unreachable; retryable),
// kDataLoss (short object / checksum problems the store itself detects), kInvalidArgument (bad
// key).
//
// Thread-safety: implementations are thread-safe; any number of operations may run at once.
#ifndef VMBACKUP_STORE_OBJECT_STORE_H_
#define VMBACKUP_STORE_OBJECT_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "vmbackup/status.h"

namespace vmbackup {
class Runtime;
}

namespace vmbackup::internal {

struct ObjectInfo {
  std::string key;
  uint64_t size = 0;
  // Set by List: an opaque token that changes whenever the object at `key` is replaced (the
  // S3 ETag; file id and modification time on file systems; a counter in memory), so a reader
  // may keep what it decoded from an immutable object and skip fetching it again. Empty when the
  // store cannot tell (never cache then). Head may leave it empty.
  std::string version = {};
};

struct ListPage {
  std::vector<ObjectInfo> objects;  // sorted by key
  std::string next_token;           // empty when this is the last page
};

// The most a whole-object read (Get with length 0) returns. Every metadata object of the format is
// far smaller; a target (which may be hostile) must never make a reader allocate without bound.
inline constexpr uint64_t kMaxWholeObjectRead = 64ull << 20;

// kDataLoss: object `key` holds `size` bytes, more than a reader accepts.
Status TooLargeForWholeRead(const std::string& key, uint64_t size,
                            uint64_t max = kMaxWholeObjectRead);

struct PutOptions {
  bool if_absent = false;  // fail with kAlreadyExists instead of replacing an existing object
  bool durable = true;     // the object must survive a crash once the call returns (fsync / 200 OK)
};

class ObjectStore {
 public:
  virtual ~ObjectStore() = default;

  // A description for messages, without secrets ("file:///srv/backups").
  virtual std::string Describe() const = 0;

  // Blocking forms.
  virtual Status Put(const std::string& key, std::string_view data, const PutOptions& opts) = 0;
  // Reads [offset, offset+length) of the object; length 0 = to the end, but at most
  // kMaxWholeObjectRead bytes (a longer object is kDataLoss naming it, and nothing beyond that
  // bound is ever allocated or received). A range past the end is kOutOfRange; a short read
  // (object shorter than asked) is kDataLoss. Callers bound `length` themselves.
  virtual StatusOr<std::string> Get(const std::string& key, uint64_t offset = 0,
                                    uint64_t length = 0) = 0;
  // Get into `*out`, reusing its capacity (saves a large allocation per read in loops). On error
  // `*out` is unspecified. The default calls Get.
  virtual Status GetInto(const std::string& key, uint64_t offset, uint64_t length,
                         std::string* out);
  virtual StatusOr<ObjectInfo> Head(const std::string& key) = 0;
  // One page of the keys starting with `prefix`, after `token` (empty = first page).
  virtual StatusOr<ListPage> List(const std::string& prefix, const std::string& token,
                                  int max_keys = 1000) = 0;
  // Deletes the keys; missing keys are not an error.
  virtual Status Delete(const std::vector<std::string>& keys) = 0;

  // Async forms. The default implementations run the blocking form on the runtime's blocking pool;
  // network stores override them with real async I/O.
  virtual void PutAsync(std::string key, std::shared_ptr<const std::string> data, PutOptions opts,
                        std::function<void(Status)> done);
  virtual void GetAsync(std::string key, uint64_t offset, uint64_t length,
                        std::function<void(StatusOr<std::string>)> done);

  // A cheap request that proves the target answers, retried for at most kConnectDeadline
  // (core/retry.h): a target that is down when a job starts fails fast with kUnavailable, while an
  // outage during a job keeps the store's full retry deadline. OK for stores that are always
  // reachable (local). Errors: the store's (kUnavailable, kPermissionDenied, kNotFound, ...).
  virtual Status Ping() { return Status::Ok(); }

  // Every key under `prefix` (all pages).
  StatusOr<std::vector<ObjectInfo>> ListAll(const std::string& prefix);

  // The whole object `key` when it holds at most `max_size` bytes. kDataLoss naming the object
  // when it is larger (nothing beyond max_size is read); otherwise as Get. Objects above
  // kMaxWholeObjectRead are read with Head and one ranged Get.
  StatusOr<std::string> GetAtMost(const std::string& key, uint64_t max_size);

  // The runtime the store's async forms complete on.
  const std::shared_ptr<Runtime>& runtime() const { return runtime_; }

 protected:
  explicit ObjectStore(std::shared_ptr<Runtime> runtime) : runtime_(std::move(runtime)) {}
  std::shared_ptr<Runtime> runtime_;
};

// Validates an object key: non-empty, relative, no "." or ".." segments, [A-Za-z0-9._/-] only.
Status ValidateKey(const std::string& key);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_STORE_OBJECT_STORE_H_
