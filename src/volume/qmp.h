// QmpClient: a QEMU Machine Protocol client over a unix socket (JSON lines), on the Runtime's
// event loop. The calling thread (a job driver) blocks until the reply, an error or the deadline.
//
// Every line QEMU sends is untrusted: at most kMaxLine bytes, parsed without exceptions, and a
// reply is matched to its command by "id"; events and stray lines in between are skipped (at most
// kMaxSkipped per command).
//
// Thread-safety: one caller at a time.
#ifndef VMBACKUP_VOLUME_QMP_H_
#define VMBACKUP_VOLUME_QMP_H_

#include <chrono>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/asio.h"
#include "vmbackup/status.h"

namespace vmbackup::internal {

class QmpClient {
 public:
  static constexpr size_t kMaxLine = 16 << 20;
  static constexpr int kMaxSkipped = 100000;

  // Connects to the QMP socket at `path`, reads the greeting and negotiates capabilities.
  // kUnavailable when the socket cannot be reached or closes; kDeadlineExceeded after `timeout`;
  // kDataLoss when the greeting is not QMP.
  static StatusOr<std::unique_ptr<QmpClient>> Connect(boost::asio::io_context& io,
                                                      const std::string& path,
                                                      std::chrono::milliseconds timeout);
  ~QmpClient();

  // Runs `command` with `args` (an object, or null for none). Returns the reply's "return" value.
  // Errors: QEMU's error as kFailedPrecondition "<command>: <desc> (<class>)" (kNotFound for
  // class DeviceNotFound); kUnavailable when the connection is lost; kDeadlineExceeded after
  // `timeout` (the connection is then closed: a late reply cannot be matched to a later command).
  StatusOr<nlohmann::json> Execute(const std::string& command, const nlohmann::json& args = nullptr,
                                   std::chrono::milliseconds timeout = std::chrono::seconds(30));

  const std::string& path() const { return path_; }

 private:
  QmpClient(boost::asio::io_context& io, std::string path);
  // Reads one line (without '\n') before `deadline`.
  StatusOr<std::string> ReadLine(std::chrono::steady_clock::time_point deadline);
  Status WriteLine(const std::string& line, std::chrono::steady_clock::time_point deadline);
  void Close();

  boost::asio::io_context& io_;
  std::string path_;
  boost::asio::strand<boost::asio::io_context::executor_type> strand_;  // all socket handlers
  boost::asio::local::stream_protocol::socket sock_;
  boost::asio::streambuf in_;
  uint64_t next_id_ = 1;
  bool broken_ = false;
};

}  // namespace vmbackup::internal

#endif  // VMBACKUP_VOLUME_QMP_H_
