// HttpEngine: many HTTP/1.1 requests in flight on ONE event-loop thread over the libcurl multi
// interface (no thread per request), with a shared connection cache (keep-alive reuse) and a cap on
// connections. Completions are posted to the Runtime's io_context, never run on the loop thread.
//
// Thread-safety: Submit() may be called from any thread. Destruction fails outstanding requests
// with kCancelled-style errors (curl code CURLE_ABORTED_BY_CALLBACK) and joins the loop thread.
#ifndef VMBACKUP_STORE_S3_HTTP_H_
#define VMBACKUP_STORE_S3_HTTP_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace vmbackup {
class Runtime;
}

namespace vmbackup::internal::http {

struct Request {
  std::string method;                       // GET, PUT, POST, HEAD, DELETE
  std::string url;                          // full URL, path already encoded
  std::vector<std::string> headers;         // "Name: value"
  std::shared_ptr<const std::string> body;  // may be null
  size_t body_offset = 0;
  size_t body_length = 0;
  long timeout_ms = 300000;  // whole transfer
};

struct Response {
  int curl_code = 0;       // CURLcode; 0 = the HTTP exchange completed
  std::string curl_error;  // text for curl_code != 0
  long status = 0;         // HTTP status
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
};

struct EngineOptions {
  int max_connections = 16;
  std::string ca_pem;  // extra trusted CA certificates (PEM), added to the system store
  bool verify_tls = true;
  long connect_timeout_ms = 10000;
  long low_speed_time_s = 30;  // abort a transfer slower than 1 KiB/s for this long
};

class Engine {
 public:
  Engine(std::shared_ptr<Runtime> runtime, EngineOptions options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; `done` runs on the runtime's io_context when it completes.
  void Submit(Request req, std::function<void(Response)> done);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace vmbackup::internal::http

#endif  // VMBACKUP_STORE_S3_HTTP_H_
