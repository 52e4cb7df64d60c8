// MemStore implementation (see mem_store.h).
#include "store/mem_store.h"

#include "core/errors.h"

namespace vmbackup::internal {

Status MemStore::Fault(Op op, const std::string& key) const {
  FaultHook hook;
  {
    std::lock_guard<std::mutex> l(mu_);
    hook = hook_;
  }
  return hook ? hook(op, key) : Status::Ok();
}

void MemStore::SetFaultHook(FaultHook hook) {
  std::lock_guard<std::mutex> l(mu_);
  hook_ = std::move(hook);
}

Status MemStore::Put(const std::string& key, std::string_view data, const PutOptions& opts) {
  VMB_RETURN_IF_ERROR(ValidateKey(key));
  VMB_RETURN_IF_ERROR(Fault(Op::kPut, key));
  std::lock_guard<std::mutex> l(mu_);
  if (opts.if_absent && objects_.count(key)) return AlreadyExistsError("object " + key + " exists");
  objects_[key] = std::string(data);
  versions_[key] = next_version_++;
  ++puts_;
  return Status::Ok();
}

StatusOr<std::string> MemStore::Get(const std::string& key, uint64_t offset, uint64_t length) {
  VMB_RETURN_IF_ERROR(ValidateKey(key));
  VMB_RETURN_IF_ERROR(Fault(Op::kGet, key));
  std::lock_guard<std::mutex> l(mu_);
  auto it = objects_.find(key);
  if (it == objects_.end()) return NotFoundError("object " + key + " not found");
  const std::string& v = it->second;
  if (offset > v.size() || (length > 0 && offset == v.size()))
    return OutOfRangeError("range past the end of object " + key);
  uint64_t want = length == 0 ? v.size() - offset : length;
  if (length == 0 && want > kMaxWholeObjectRead) return TooLargeForWholeRead(key, want);
  if (offset + want > v.size()) return DataLossError("object " + key + " is shorter than expected");
  return v.substr(offset, want);
}

StatusOr<ObjectInfo> MemStore::Head(const std::string& key) {
  VMB_RETURN_IF_ERROR(ValidateKey(key));
  VMB_RETURN_IF_ERROR(Fault(Op::kHead, key));
  std::lock_guard<std::mutex> l(mu_);
  auto it = objects_.find(key);
  if (it == objects_.end()) return NotFoundError("object " + key + " not found");
  auto v = versions_.find(key);
  return ObjectInfo{key, it->second.size(), v == versions_.end() ? "" : std::to_string(v->second)};
}

StatusOr<ListPage> MemStore::List(const std::string& prefix, const std::string& token,
                                  int max_keys) {
  VMB_RETURN_IF_ERROR(Fault(Op::kList, prefix));
  std::lock_guard<std::mutex> l(mu_);
  ListPage page;
  auto it = token.empty() ? objects_.lower_bound(prefix) : objects_.upper_bound(token);
  for (; it != objects_.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
    if (static_cast<int>(page.objects.size()) == max_keys) {
      page.next_token = page.objects.back().key;
      break;
    }
    auto v = versions_.find(it->first);
    page.objects.push_back(
        {it->first, it->second.size(), v == versions_.end() ? "" : std::to_string(v->second)});
  }
  return page;
}

Status MemStore::Delete(const std::vector<std::string>& keys) {
  for (const auto& k : keys) VMB_RETURN_IF_ERROR(ValidateKey(k));
  for (const auto& k : keys) VMB_RETURN_IF_ERROR(Fault(Op::kDelete, k));
  std::lock_guard<std::mutex> l(mu_);
  for (const auto& k : keys) {
    objects_.erase(k);
    versions_.erase(k);
  }
  return Status::Ok();
}

std::map<std::string, std::string> MemStore::Snapshot() const {
  std::lock_guard<std::mutex> l(mu_);
  return objects_;
}

void MemStore::Overwrite(const std::string& key, std::string data) {
  std::lock_guard<std::mutex> l(mu_);
  objects_[key] = std::move(data);
  versions_[key] = next_version_++;
}

size_t MemStore::put_count() const {
  std::lock_guard<std::mutex> l(mu_);
  return puts_;
}

}  // namespace vmbackup::internal
