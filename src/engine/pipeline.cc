// Pipeline building blocks (see pipeline.h).
#include "engine/pipeline.h"

#include <vector>

#include "core/errors.h"
#include "core/runtime.h"

namespace vmbackup::internal {

namespace {
// Runs fn(0..n-1) with `post` and waits for all of them.
Status RunAll(int n, const std::function<void(std::function<void()>)>& post,
              const std::function<void(int)>& fn, const std::string& what) {
  std::mutex mu;
  std::condition_variable cv;
  int left = n;
  FirstError error;
  for (int i = 0; i < n; ++i) {
    post([&, i] {
      try {
        fn(i);
      } catch (...) {
        error.Set(CurrentExceptionToStatus(what));
      }
      std::lock_guard<std::mutex> l(mu);
      if (--left == 0) cv.notify_all();
    });
  }
  std::unique_lock<std::mutex> l(mu);
  cv.wait(l, [&] { return left == 0; });
  return error.Get();
}
}  // namespace

Status RunOnWorkers(Runtime& rt, int n, const std::function<void(int)>& fn,
                    const std::string& what) {
  return RunAll(
      n, [&rt](std::function<void()> task) { internal::ImplOf(rt)->PostWork(std::move(task)); }, fn,
      what);
}

Status RunOnBlocking(Runtime& rt, int n, const std::function<void(int)>& fn,
                     const std::string& what) {
  return RunAll(
      n, [&rt](std::function<void()> task) { internal::ImplOf(rt)->PostBlocking(std::move(task)); },
      fn, what);
}

bool ClaimSet::TryClaim(const Digest& d) {
  Shard& s = shards_[d[1] % kShards];
  std::lock_guard<std::mutex> l(s.mu);
  return s.set.insert(d).second;
}

void FirstError::Set(const Status& st) {
  if (st.ok()) return;
  std::lock_guard<std::mutex> l(mu_);
  if (st_.ok()) {
    st_ = st;
    set_.store(true, std::memory_order_release);
  }
}
Status FirstError::Get() const {
  std::lock_guard<std::mutex> l(mu_);
  return st_;
}

PackUploader::PackUploader(ObjectStore& store, uint64_t max_in_flight,
                           std::function<void(uint64_t)> on_written,
                           std::shared_ptr<BufferPool> pool, ByteBudget* shared)
    : store_(store),
      own_(max_in_flight),
      shared_(shared),
      on_written_(std::move(on_written)),
      pool_(std::move(pool)) {}

PackUploader::~PackUploader() { Drain().IgnoreError(); }

void PackUploader::Submit(PackBuilder::Sealed sealed) {
  const uint64_t bytes = sealed.data.size() + sealed.index.size();
  // This backup's bound first, then the Runtime's: a backup waiting for the shared budget holds
  // only its own, which nobody else needs.
  own_.Acquire(bytes);
  if (shared_ != nullptr) shared_->Acquire(bytes);
  {
    std::lock_guard<std::mutex> l(mu_);
    ++outstanding_;
  }
  std::shared_ptr<const std::string> data;
  if (pool_) {
    // The buffer goes back to the pool when the store lets go of it (possibly after Drain()).
    data = std::shared_ptr<const std::string>(new std::string(std::move(sealed.data)),
                                              [pool = pool_](std::string* s) {
                                                pool->Give(std::move(*s));
                                                delete s;
                                              });
  } else {
    data = std::make_shared<const std::string>(std::move(sealed.data));
  }
  auto index = std::make_shared<const std::string>(std::move(sealed.index));
  const std::string id = sealed.id;
  // Data before metadata: the index that makes the pack's blocks visible is written only after the
  // pack itself is durable.
  store_.PutAsync(PackKey(id), data, PutOptions{}, [this, id, index, bytes](Status st) {
    if (!st.ok()) {
      Done(bytes, st.WithContext("upload pack " + id));
      return;
    }
    store_.PutAsync(PackIndexKey(id), index, PutOptions{}, [this, id, bytes](Status st2) {
      Done(bytes, st2.WithContext("upload pack index " + id));
    });
  });
}

void PackUploader::Done(uint64_t bytes, const Status& st) {
  error_.Set(st);
  if (st.ok() && on_written_) on_written_(bytes);
  if (shared_ != nullptr) shared_->Release(bytes);
  own_.Release(bytes);
  std::lock_guard<std::mutex> l(mu_);
  --outstanding_;
  if (st.ok()) ++packs_;
  cv_.notify_all();
}

Status PackUploader::Drain() {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return outstanding_ == 0; });
  return error_.Get();
}

uint64_t PackUploader::packs() const {
  std::lock_guard<std::mutex> l(mu_);
  return packs_;
}

}  // namespace vmbackup::internal
