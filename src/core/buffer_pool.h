// BufferPool: recycles large std::string buffers (32 MiB packs) so a backup does not map, fault in
// and zero fresh pages for every pack. Keeps at most `max_kept` buffers; the rest are freed.
// Thread-safe.
#ifndef VMBACKUP_CORE_BUFFER_POOL_H_
#define VMBACKUP_CORE_BUFFER_POOL_H_

#include <cstddef>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace vmbackup::internal {

class BufferPool {
 public:
  explicit BufferPool(size_t max_kept) : max_kept_(max_kept) {}
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // An empty string with at least `capacity` bytes reserved (a recycled one when available).
  std::string Take(size_t capacity) {
    std::string s;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!free_.empty()) {
        s = std::move(free_.back());
        free_.pop_back();
      }
    }
    s.clear();
    s.reserve(capacity);
    return s;
  }

  // Returns a buffer for reuse (dropped when the pool already keeps max_kept).
  void Give(std::string s) {
    std::lock_guard<std::mutex> l(mu_);
    if (free_.size() < max_kept_) free_.push_back(std::move(s));
  }

 private:
  const size_t max_kept_;
  std::mutex mu_;
  std::vector<std::string> free_;
};

}  // namespace vmbackup::internal

#endif  // VMBACKUP_CORE_BUFFER_POOL_H_
