// HttpEngine: many HTTP/1.1 requests in flight over the libcurl multi_socket interface (no thread
// per request, and no thread of its own): the engine's curl multi handle is driven by the Runtime's
// io_context. Every curl call of an engine runs on one asio strand of that io_context (the
// io_context may be run by several threads); curl tells the engine which sockets to watch and when
// to time out, and the engine waits for them with asio. Transfers share a connection cache
// (keep-alive reuse) and a cap on connections (EngineOptions::max_connections).
//
// Every answer is untrusted: the engine never keeps more body bytes than the request allows
// (Request::max_body for a 2xx answer, kMaxErrorBody for any other) nor more than kMaxHeaderBytes
// of headers. An answer that declares a longer body in Content-Length is stopped when its headers
// end, before any body byte is kept; one whose body grows past the bound is stopped there (the
// write callback returns a short count). Either way the connection is closed and
// Response::too_large says what was exceeded.
//
// Thread-safety: Submit() may be called from any thread, including from inside a completion
// callback. Completion callbacks run on a thread of the Runtime's io_context, outside the strand
// and holding no lock of the engine, each exactly once; callbacks of different requests may run at
// the same time. An exception thrown by a callback is caught and ignored.
//
// Destruction fails every request still queued or in flight (curl_code CURLE_ABORTED_BY_CALLBACK,
// curl_error "the S3 client was shut down"), closes the engine's connections and, before it
// returns, waits until every callback of the engine has returned and no handler of the engine can
// run any more. REQUIRES: the engine is destroyed on a thread that does not run the Runtime's
// io_context (an io thread would wait for itself), and no Submit() races with the destructor
// except from inside a completion callback (such a request fails the same way). When it is
// destroyed on an io thread anyway, the destructor does not wait: the failed callbacks then run
// after it returned.
#ifndef VMBACKUP_STORE_S3_HTTP_H_
#define VMBACKUP_STORE_S3_HTTP_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace vmbackup {
class Runtime;
}

namespace vmbackup::internal::http {

// The most body bytes kept of an answer that is not 2xx (S3 error documents are < 1 KiB).
inline constexpr uint64_t kMaxErrorBody = 1u << 20;
// The most header bytes (all header lines together) kept of one answer.
inline constexpr uint64_t kMaxHeaderBytes = 256u << 10;

struct Request {
  std::string method;                       // GET, PUT, POST, HEAD, DELETE
  std::string url;                          // full URL, path already encoded
  std::vector<std::string> headers;         // "Name: value"
  std::shared_ptr<const std::string> body;  // may be null
  size_t body_offset = 0;
  size_t body_length = 0;
  long timeout_ms = 300000;  // whole transfer
  // The most body bytes a 2xx answer may have; a longer one is stopped (Response::too_large).
  // Default kMaxErrorBody: enough for every S3 answer except object reads and listings.
  uint64_t max_body = kMaxErrorBody;
};

struct Response {
  int curl_code = 0;       // CURLcode; 0 = the HTTP exchange completed
  std::string curl_error;  // text for curl_code != 0
  long status = 0;         // HTTP status
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names, of the final answer
  // The Content-Length of the answer when it was a decimal number; nullopt otherwise.
  std::optional<uint64_t> content_length;
  // Non-empty when the engine stopped the transfer because the answer was larger than allowed:
  // says what exceeded which bound. `body` then holds at most the bound (nothing when the
  // Content-Length alone was too large), `status` and `headers` are those received, and
  // curl_code is CURLE_WRITE_ERROR.
  std::string too_large;
  // True when memory ran out while receiving the answer (the transfer was stopped; curl_code is
  // CURLE_WRITE_ERROR): nothing escapes curl's C frames as an exception.
  bool out_of_memory = false;
};

struct EngineOptions {
  int max_connections = 16;
  std::string ca_pem;  // extra trusted CA certificates (PEM), added to the system store
  bool verify_tls = true;
  long connect_timeout_ms = 10000;
  long low_speed_time_s = 30;  // abort a transfer slower than 1 KiB/s for this long
  // Looks up the addresses of a host name (blocking; runs on the Runtime's blocking pool, never on
  // a thread of curl's own). Returns the CURLOPT_RESOLVE entry "host:port:addr[,addr...]", or ""
  // with *error set. Null = getaddrinfo. IP addresses, "localhost" and "*.localhost" are never
  // looked up (curl answers them itself). Answers are kept 60 s, then refreshed in the background.
  std::function<std::string(const std::string& host, const std::string& port, std::string* error)>
      lookup;
};

class Engine {
 public:
  Engine(std::shared_ptr<Runtime> runtime, EngineOptions options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; `done` runs once on the runtime's io_context when it completes or fails
  // (see the file comment). Throws std::bad_alloc when memory runs out (then `done` never runs).
  void Submit(Request req, std::function<void(Response)> done);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace vmbackup::internal::http

#endif  // VMBACKUP_STORE_S3_HTTP_H_
