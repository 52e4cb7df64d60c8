// GetMany (see get_many.h).
#include "store/get_many.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <utility>

namespace vmbackup::internal {

namespace {
// Shared with the completions. GetMany waits for every read it started before it returns (also
// when an exception unwinds it), so the store outlives them; the state is shared anyway so that
// a completion never depends on GetMany's frame.
struct GetManyState {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<size_t, StatusOr<std::string>>> ready;
  size_t in_flight = 0;
};
}  // namespace

Status GetMany(ObjectStore& store, size_t n, const std::function<std::string(size_t)>& key,
               int window, const std::function<Status(size_t, StatusOr<std::string>)>& consume) {
  return GetMany(store, n, key, nullptr, window, consume);
}

Status GetMany(ObjectStore& store, size_t n, const std::function<std::string(size_t)>& key,
               const std::function<uint64_t(size_t)>& length, int window,
               const std::function<Status(size_t, StatusOr<std::string>)>& consume) {
  auto state = std::make_shared<GetManyState>();
  const size_t limit = static_cast<size_t>(std::max(1, window));
  size_t next = 0;
  Status first_error;
  std::unique_lock<std::mutex> l(state->mu);
  try {
    for (;;) {
      while (first_error.ok() && next < n && state->in_flight < limit) {
        const size_t i = next++;
        l.unlock();  // the completion may run inline on this thread and take the lock
        std::string k = key(i);
        const uint64_t len = length ? length(i) : 0;
        auto done = [state, i](StatusOr<std::string> got) {
          std::lock_guard<std::mutex> g(state->mu);
          state->ready.emplace_back(i, std::move(got));
          --state->in_flight;
          state->cv.notify_all();
        };
        l.lock();
        ++state->in_flight;
        l.unlock();
        try {
          store.GetAsync(std::move(k), 0, len, std::move(done));
        } catch (...) {
          // Not started (the store calls `done` exactly once when it accepted the read).
          l.lock();
          --state->in_flight;
          throw;
        }
        l.lock();
      }
      if (state->ready.empty()) {
        if (state->in_flight == 0 && (next == n || !first_error.ok())) break;
        state->cv.wait(l, [&] { return !state->ready.empty() || state->in_flight == 0; });
        continue;
      }
      auto item = std::move(state->ready.front());
      state->ready.pop_front();
      if (!first_error.ok()) continue;  // draining: results dropped
      l.unlock();
      Status st = consume(item.first, std::move(item.second));
      l.lock();
      if (!st.ok()) first_error = st;
    }
  } catch (...) {
    // An exception from key() or consume() (bad_alloc): wait for the reads in flight first.
    if (!l.owns_lock()) l.lock();
    state->cv.wait(l, [&] { return state->in_flight == 0; });
    throw;
  }
  return first_error;
}

}  // namespace vmbackup::internal
