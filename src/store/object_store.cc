// Default async forms and shared helpers of ObjectStore.
#include "store/object_store.h"

#include "core/errors.h"
#include "core/runtime.h"

namespace vmbackup::internal {

void ObjectStore::PutAsync(std::string key, std::shared_ptr<const std::string> data,
                           PutOptions opts, std::function<void(Status)> done) {
  internal::ImplOf(runtime_)->PostBlocking(
      [this, key = std::move(key), data = std::move(data), opts, done = std::move(done)] {
        Status st;
        try {
          st = Put(key, *data, opts);
        } catch (...) {
          st = CurrentExceptionToStatus("put " + key);
        }
        done(st);
      });
}

Status ObjectStore::GetInto(const std::string& key, uint64_t offset, uint64_t length,
                            std::string* out) {
  auto r = Get(key, offset, length);
  if (!r.ok()) return r.status();
  *out = std::move(*r);
  return Status::Ok();
}

void ObjectStore::GetAsync(std::string key, uint64_t offset, uint64_t length,
                           std::function<void(StatusOr<std::string>)> done) {
  internal::ImplOf(runtime_)->PostBlocking(
      [this, key = std::move(key), offset, length, done = std::move(done)] {
        StatusOr<std::string> r = InternalError("get " + key);
        try {
          r = Get(key, offset, length);
        } catch (...) {
          r = CurrentExceptionToStatus("get " + key);
        }
        done(std::move(r));
      });
}

StatusOr<std::vector<ObjectInfo>> ObjectStore::ListAll(const std::string& prefix) {
  // A listing comes from the target: pages must move forward (a server cycling between
  // continuation tokens would otherwise loop for ever) and the total is bounded.
  constexpr size_t kMaxListed = 10'000'000;
  std::vector<ObjectInfo> all;
  std::string token;
  do {
    auto page = List(prefix, token, 1000);
    if (!page.ok()) return page.status();
    for (auto& o : page->objects) {
      if (!all.empty() && o.key <= all.back().key)
        return DataLossError("listing of '" + prefix + "' on " + Describe() +
                             " went backwards at key '" + o.key + "' (broken or hostile server)");
      all.push_back(std::move(o));
    }
    if (all.size() > kMaxListed)
      return DataLossError("listing of '" + prefix + "' on " + Describe() + " holds more than " +
                           std::to_string(kMaxListed) + " objects");
    if (!page->next_token.empty() && page->objects.empty())
      return DataLossError("listing of '" + prefix + "' on " + Describe() +
                           " returned an empty page that is not the last one");
    token = page->next_token;
  } while (!token.empty());
  return all;
}

Status TooLargeForWholeRead(const std::string& key, uint64_t size, uint64_t max) {
  return DataLossError("object " + key + " is " + std::to_string(size) + " bytes, more than the " +
                       std::to_string(max) +
                       " a reader accepts for it (corrupt or hostile target)");
}

StatusOr<std::string> ObjectStore::GetAtMost(const std::string& key, uint64_t max_size) {
  if (max_size <= kMaxWholeObjectRead) {
    auto r = Get(key, 0, 0);
    if (r.ok() && r->size() > max_size) return TooLargeForWholeRead(key, r->size(), max_size);
    return r;
  }
  VMB_ASSIGN_OR_RETURN(ObjectInfo info, Head(key));
  if (info.size > max_size) return TooLargeForWholeRead(key, info.size, max_size);
  if (info.size == 0) return std::string();
  return Get(key, 0, info.size);
}

Status ValidateKey(const std::string& key) {
  if (key.empty() || key.front() == '/' || key.back() == '/')
    return InvalidArgumentError("bad object key '" + key + "'");
  size_t start = 0;
  while (start <= key.size()) {
    size_t end = key.find('/', start);
    if (end == std::string::npos) end = key.size();
    std::string_view seg(key.data() + start, end - start);
    if (seg.empty() || seg == "." || seg == "..")
      return InvalidArgumentError("bad object key '" + key + "'");
    for (char c : seg) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '.' || c == '_' || c == '-';
      if (!ok) return InvalidArgumentError("bad character in object key '" + key + "'");
    }
    start = end + 1;
  }
  return Status::Ok();
}

}  // namespace vmbackup::internal
