// Runtime: thread pools and the io_context of the async core.
#include "core/runtime.h"

#include <mutex>

namespace vmbackup {
namespace {
constexpr uint64_t kDefaultMaxInFlightBytes = 256ull << 20;

int ResolveWorkers(const RuntimeOptions& o) {
  if (o.worker_threads > 0) return o.worker_threads;
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 2 : static_cast<int>(hc);
}
}  // namespace

Runtime::Impl::Impl(const RuntimeOptions& options)
    : worker_threads_(ResolveWorkers(options)),
      blocking_threads_(options.blocking_threads > 0 ? options.blocking_threads : 4),
      job_threads_(options.job_threads > 0 ? options.job_threads : 4),
      thread_count_(0),
      upload_budget_(options.max_in_flight_bytes > 0 ? options.max_in_flight_bytes
                                                     : kDefaultMaxInFlightBytes),
      // Every pack being built (a worker of each running job) or uploaded (the budget's worth of
      // 32 MiB packs) can be recycled; at most that many are ever in use at once.
      pack_buffers_(std::make_shared<internal::BufferPool>(
          static_cast<size_t>(worker_threads_) * static_cast<size_t>(job_threads_) +
              static_cast<size_t>(upload_budget_.cap() / (32u << 20)) + 1,
          internal::BufferPool::Retention::kWhileHeld)),
      workers_(static_cast<std::size_t>(worker_threads_)),
      blocking_(static_cast<std::size_t>(blocking_threads_)),
      jobs_(static_cast<std::size_t>(job_threads_)) {
  guard_.emplace(io_.get_executor());
  int n = options.io_threads > 0 ? options.io_threads : 1;
  for (int i = 0; i < n; ++i)
    io_threads_.emplace_back([this] {
      // run() rethrows what a handler threw; keep the loop (and the process) going.
      for (;;) {
        try {
          io_.run();
          return;
        } catch (...) {
        }
      }
    });
  thread_count_ = n + worker_threads_ + blocking_threads_ + job_threads_;
}

Runtime::Impl::~Impl() {
  // Jobs first: a driver may still wait on tasks of the other pools.
  jobs_.join();
  workers_.join();
  blocking_.join();
  guard_.reset();
  io_.stop();
  for (auto& t : io_threads_) t.join();
}

Runtime::Runtime(const RuntimeOptions& options) : impl_(std::make_unique<Impl>(options)) {}
Runtime::~Runtime() = default;

std::shared_ptr<Runtime> Runtime::Create(const RuntimeOptions& options) {
  return std::shared_ptr<Runtime>(new Runtime(options));
}

std::shared_ptr<Runtime> Runtime::Default() {
  // Leaked on purpose: joining threads from a static destructor at exit races with other statics.
  static auto* rt = new std::shared_ptr<Runtime>(Create());
  return *rt;
}

int Runtime::worker_threads() const { return impl_->worker_threads(); }
int Runtime::thread_count() const { return impl_->thread_count(); }
uint64_t Runtime::max_in_flight_bytes() const { return impl_->upload_budget().cap(); }

}  // namespace vmbackup
