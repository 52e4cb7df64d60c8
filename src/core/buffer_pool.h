// BufferPool: recycles large std::string buffers (32 MiB packs) so a backup does not map, fault in
// and zero fresh pages for every pack. Keeps at most `max_kept` buffers; the rest are freed.
//
// A pool built with Retention::kWhileHeld (the Runtime's, shared by all its backups) keeps buffers
// only while someone holds it (a running backup holds a Hold): when the last Hold ends, the kept
// buffers are freed and buffers given back later are dropped, so an idle Runtime keeps no pack
// memory. Thread-safe.
#ifndef VMBACKUP_CORE_BUFFER_POOL_H_
#define VMBACKUP_CORE_BUFFER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace vmbackup::internal {

class BufferPool {
 public:
  enum class Retention { kAlways, kWhileHeld };

  explicit BufferPool(size_t max_kept, Retention retention = Retention::kAlways)
      : max_kept_(max_kept), retention_(retention) {}
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // An empty string with at least `capacity` bytes reserved (a recycled one when available: the
  // most recently given back that is large enough, else the most recent one, grown).
  std::string Take(size_t capacity) {
    std::string s;
    {
      std::lock_guard<std::mutex> l(mu_);
      ++taken_;
      if (!free_.empty()) {
        auto it = free_.end() - 1;
        for (auto r = free_.end(); r != free_.begin();) {
          if ((--r)->capacity() >= capacity) {
            it = r;
            break;
          }
        }
        s = std::move(*it);
        free_.erase(it);
        ++reused_;
      }
    }
    s.clear();
    s.reserve(capacity);
    return s;
  }

  // Returns a buffer for reuse (dropped when the pool already keeps max_kept, or when a kWhileHeld
  // pool is not held).
  void Give(std::string s) {
    std::lock_guard<std::mutex> l(mu_);
    if (retention_ == Retention::kWhileHeld && holders_ == 0) return;
    if (free_.size() < max_kept_) free_.push_back(std::move(s));
  }

  // Keeps a kWhileHeld pool's buffers while alive. Movable; ending the last one frees them.
  class Hold {
   public:
    Hold() = default;
    explicit Hold(BufferPool* pool) : pool_(pool) {
      std::lock_guard<std::mutex> l(pool_->mu_);
      ++pool_->holders_;
    }
    Hold(Hold&& o) noexcept : pool_(std::exchange(o.pool_, nullptr)) {}
    Hold& operator=(Hold&& o) noexcept {
      if (this != &o) {
        Release();
        pool_ = std::exchange(o.pool_, nullptr);
      }
      return *this;
    }
    ~Hold() { Release(); }

   private:
    void Release() {
      if (pool_ == nullptr) return;
      std::vector<std::string> freed;
      {
        std::lock_guard<std::mutex> l(pool_->mu_);
        if (--pool_->holders_ == 0 && pool_->retention_ == Retention::kWhileHeld)
          freed.swap(pool_->free_);
      }
      pool_ = nullptr;  // `freed` is released outside the lock
    }
    BufferPool* pool_ = nullptr;
  };
  Hold Keep() { return Hold(this); }

  // Buffers kept for reuse now.
  size_t kept() const {
    std::lock_guard<std::mutex> l(mu_);
    return free_.size();
  }
  // Buffers taken so far, and how many of them were recycled ones.
  uint64_t taken() const {
    std::lock_guard<std::mutex> l(mu_);
    return taken_;
  }
  uint64_t reused() const {
    std::lock_guard<std::mutex> l(mu_);
    return reused_;
  }

 private:
  const size_t max_kept_;
  const Retention retention_;
  mutable std::mutex mu_;
  int holders_ = 0;
  uint64_t taken_ = 0;
  uint64_t reused_ = 0;
  std::vector<std::string> free_;
};

}  // namespace vmbackup::internal

#endif  // VMBACKUP_CORE_BUFFER_POOL_H_
