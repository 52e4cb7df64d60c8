// MemStore: an in-memory ObjectStore for unit tests and benchmarks, with fault injection.
// Thread-safe.
#ifndef VMBACKUP_STORE_MEM_STORE_H_
#define VMBACKUP_STORE_MEM_STORE_H_

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "store/object_store.h"

namespace vmbackup::internal {

class MemStore final : public ObjectStore {
 public:
  enum class Op { kPut, kGet, kHead, kList, kDelete };
  // Called before every operation; a non-OK result fails the operation with it.
  using FaultHook = std::function<Status(Op op, const std::string& key)>;

  explicit MemStore(std::shared_ptr<Runtime> runtime) : ObjectStore(std::move(runtime)) {}

  std::string Describe() const override { return "mem://"; }
  Status Put(const std::string& key, std::string_view data, const PutOptions& opts) override;
  StatusOr<std::string> Get(const std::string& key, uint64_t offset, uint64_t length) override;
  StatusOr<ObjectInfo> Head(const std::string& key) override;
  StatusOr<ListPage> List(const std::string& prefix, const std::string& token,
                          int max_keys) override;
  Status Delete(const std::vector<std::string>& keys) override;

  void SetFaultHook(FaultHook hook);
  // Direct access for tests (corrupting objects).
  std::map<std::string, std::string> Snapshot() const;
  void Overwrite(const std::string& key, std::string data);
  size_t put_count() const;

 private:
  Status Fault(Op op, const std::string& key) const;
  mutable std::mutex mu_;
  std::map<std::string, std::string> objects_;
  std::map<std::string, uint64_t> versions_;  // bumped by every Put and Overwrite of a key
  uint64_t next_version_ = 1;
  FaultHook hook_;
  size_t puts_ = 0;
};

}  // namespace vmbackup::internal

#endif  // VMBACKUP_STORE_MEM_STORE_H_
