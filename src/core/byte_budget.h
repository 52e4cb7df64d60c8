// ByteBudget: a bound on bytes in flight (packs being uploaded), shared by whoever acquires from
// it: one backup's uploader, or all the backups of a Runtime. Acquire blocks until the bytes fit;
// a request larger than the whole budget goes through alone (when nothing else is in flight), so
// no request waits forever. Waiters are served as space frees, in no particular order.
// Thread-safe. Acquire blocks the calling thread: call it from pool threads that may block
// (pipeline workers), never from the io_context.
#ifndef VMBACKUP_CORE_BYTE_BUDGET_H_
#define VMBACKUP_CORE_BYTE_BUDGET_H_

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace vmbackup::internal {

class ByteBudget {
 public:
  explicit ByteBudget(uint64_t cap) : cap_(cap) {}
  ByteBudget(const ByteBudget&) = delete;
  ByteBudget& operator=(const ByteBudget&) = delete;

  void Acquire(uint64_t n) {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return in_flight_ == 0 || in_flight_ + n <= cap_; });
    in_flight_ += n;
    peak_ = std::max(peak_, in_flight_);
  }
  // Gives back bytes acquired earlier.
  void Release(uint64_t n) {
    {
      std::lock_guard<std::mutex> l(mu_);
      in_flight_ -= std::min(n, in_flight_);
    }
    cv_.notify_all();
  }

  uint64_t cap() const { return cap_; }
  uint64_t in_flight() const {
    std::lock_guard<std::mutex> l(mu_);
    return in_flight_;
  }
  // The most bytes ever in flight at once.
  uint64_t peak() const {
    std::lock_guard<std::mutex> l(mu_);
    return peak_;
  }

 private:
  const uint64_t cap_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t in_flight_ = 0;
  uint64_t peak_ = 0;
};

}  // namespace vmbackup::internal

#endif  // VMBACKUP_CORE_BYTE_BUDGET_H_
