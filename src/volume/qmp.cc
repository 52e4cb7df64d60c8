// QmpClient (see qmp.h).
#include "volume/qmp.h"

#include <future>
#include <utility>

#include "core/errors.h"

namespace vmbackup::internal {

namespace asio = boost::asio;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;

namespace {

// Runs `start(done)` (which begins one asynchronous operation on `strand`) and waits for it or
// for `deadline`, whichever comes first; on the deadline `cancel` runs on the strand.
template <typename Start, typename Cancel>
std::pair<error_code, size_t> RunUntil(asio::strand<asio::io_context::executor_type>& strand,
                                       Clock::time_point deadline, Start start, Cancel cancel,
                                       bool* expired) {
  struct State {
    std::promise<std::pair<error_code, size_t>> done;
    bool finished = false;
    bool expired = false;
  };
  auto st = std::make_shared<State>();
  auto fut = st->done.get_future();
  auto timer = std::make_shared<asio::steady_timer>(strand, deadline);
  asio::post(strand, [st, timer, start, cancel]() mutable {
    timer->async_wait([st, cancel](const error_code& e) mutable {
      if (e || st->finished) return;
      st->expired = true;
      cancel();
    });
    start([st, timer](const error_code& e, size_t n) {
      st->finished = true;
      timer->cancel();
      st->done.set_value({e, n});
    });
  });
  auto r = fut.get();
  *expired = st->expired;
  return r;
}

}  // namespace

QmpClient::QmpClient(asio::io_context& io, std::string path)
    : io_(io),
      path_(std::move(path)),
      strand_(asio::make_strand(io)),
      sock_(strand_),
      in_(kMaxLine) {}

QmpClient::~QmpClient() { Close(); }

void QmpClient::Close() {
  error_code ignored;
  if (sock_.is_open()) sock_.close(ignored);
}

StatusOr<std::unique_ptr<QmpClient>> QmpClient::Connect(asio::io_context& io,
                                                        const std::string& path,
                                                        std::chrono::milliseconds timeout) {
  std::unique_ptr<QmpClient> c(new QmpClient(io, path));
  const auto deadline = Clock::now() + timeout;
  bool expired = false;
  QmpClient* self = c.get();
  auto [ec, n] = RunUntil(
      c->strand_, deadline,
      [self](auto done) {
        self->sock_.async_connect(asio::local::stream_protocol::endpoint(self->path_),
                                  [done](const error_code& e) { done(e, 0); });
      },
      [self] {
        error_code ignored;
        self->sock_.close(ignored);
      },
      &expired);
  (void)n;
  if (expired) return DeadlineExceededError("QMP socket " + path + ": no connection in time");
  if (ec)
    return UnavailableError("cannot connect to QEMU's QMP socket " + path + ": " + ec.message());
  VMB_ASSIGN_OR_RETURN(std::string greeting, c->ReadLine(deadline));
  nlohmann::json g = nlohmann::json::parse(greeting, nullptr, false);
  if (!g.is_object() || !g.contains("QMP"))
    return DataLossError("QMP socket " + path + " did not greet with QMP (is it QEMU's -qmp?)");
  auto caps = c->Execute("qmp_capabilities", nullptr,
                         std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::max(deadline - Clock::now(), Clock::duration(1))));
  if (!caps.ok()) return caps.status();
  return c;
}

StatusOr<std::string> QmpClient::ReadLine(Clock::time_point deadline) {
  if (broken_) return UnavailableError("QMP connection to " + path_ + " was lost");
  bool expired = false;
  auto [ec, n] = RunUntil(
      strand_, deadline,
      [this](auto done) {
        asio::async_read_until(sock_, in_, '\n',
                               [done](const error_code& e, size_t len) { done(e, len); });
      },
      [this] {
        error_code ignored;
        sock_.cancel(ignored);
      },
      &expired);
  if (expired) {
    broken_ = true;
    Close();
    return DeadlineExceededError("QEMU at " + path_ + " did not answer in time");
  }
  if (ec) {
    broken_ = true;
    Close();
    if (ec == asio::error::not_found)
      return DataLossError("QEMU at " + path_ + " sent a line longer than 16 MiB");
    return UnavailableError("QMP connection to " + path_ + " lost: " + ec.message());
  }
  std::string line(asio::buffers_begin(in_.data()), asio::buffers_begin(in_.data()) + n);
  in_.consume(n);
  if (!line.empty() && line.back() == '\n') line.pop_back();
  return line;
}

Status QmpClient::WriteLine(const std::string& line, Clock::time_point deadline) {
  if (broken_) return UnavailableError("QMP connection to " + path_ + " was lost");
  bool expired = false;
  auto [ec, n] = RunUntil(
      strand_, deadline,
      [this, &line](auto done) {
        asio::async_write(sock_, asio::buffer(line),
                          [done](const error_code& e, size_t len) { done(e, len); });
      },
      [this] {
        error_code ignored;
        sock_.cancel(ignored);
      },
      &expired);
  (void)n;
  if (expired || ec) {
    broken_ = true;
    Close();
    if (expired)
      return DeadlineExceededError("QEMU at " + path_ + " did not take a command in time");
    return UnavailableError("QMP connection to " + path_ + " lost: " + ec.message());
  }
  return Status::Ok();
}

StatusOr<nlohmann::json> QmpClient::Execute(const std::string& command, const nlohmann::json& args,
                                            std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  const uint64_t id = next_id_++;
  nlohmann::json req = {{"execute", command}, {"id", id}};
  if (!args.is_null()) req["arguments"] = args;
  VMB_RETURN_IF_ERROR(WriteLine(req.dump() + "\n", deadline).WithContext(command));
  for (int skipped = 0; skipped <= kMaxSkipped; ++skipped) {
    VMB_ASSIGN_OR_RETURN(std::string line, ReadLine(deadline));
    nlohmann::json r = nlohmann::json::parse(line, nullptr, false);
    if (!r.is_object()) continue;  // not JSON: skipped (bounded)
    auto rid = r.find("id");
    if (rid == r.end() || !rid->is_number_unsigned() || rid->get<uint64_t>() != id) continue;
    if (auto ret = r.find("return"); ret != r.end()) return *ret;
    auto err = r.find("error");
    std::string desc = "unknown error", cls = "GenericError";
    if (err != r.end() && err->is_object()) {
      if (auto d = err->find("desc"); d != err->end() && d->is_string())
        desc = d->get<std::string>().substr(0, 4096);
      if (auto c = err->find("class"); c != err->end() && c->is_string())
        cls = c->get<std::string>().substr(0, 64);
    }
    const std::string msg = command + ": " + desc + " (QEMU " + cls + ")";
    if (cls == "DeviceNotFound") return NotFoundError(msg);
    return FailedPreconditionError(msg);
  }
  return DataLossError("QEMU at " + path_ + " sent too many lines without answering " + command);
}

}  // namespace vmbackup::internal
