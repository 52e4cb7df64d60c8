// HttpEngine over the libcurl multi_socket interface, driven by the Runtime's io_context (see
// http.h).
#include "store/s3/http.h"

#include <curl/curl.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/runtime.h"
#include "store/s3/s3_xml.h"

namespace vmbackup::internal::http {
namespace {

std::once_flag g_curl_init;

struct Transfer {
  Transfer() = default;
  Transfer(const Transfer&) = delete;
  Transfer& operator=(const Transfer&) = delete;
  ~Transfer() {
    curl_slist_free_all(headers);
    curl_slist_free_all(resolve);
  }

  Request req;
  std::function<void(Response)> done;
  Response resp;
  size_t sent = 0;
  curl_slist* headers = nullptr;
  curl_slist* resolve = nullptr;  // "host:port:addresses" for CURLOPT_RESOLVE (looked up by us)
  char errbuf[CURL_ERROR_SIZE] = {0};
  uint64_t status = 0;        // from the last status line seen
  uint64_t header_bytes = 0;  // of every header line so far
};

// The most body bytes the answer being received may have.
uint64_t BodyCap(const Transfer& t) {
  return t.status >= 200 && t.status < 300 ? t.req.max_body : kMaxErrorBody;
}

size_t OnWriteUnguarded(char* p, size_t size, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  const size_t len = size * n;
  const uint64_t cap = BodyCap(*t);
  // body.size() <= cap always holds, so this cannot overflow.
  if (len > cap - t->resp.body.size()) {
    t->resp.too_large =
        "the answer's body goes on past the " + std::to_string(cap) + " bytes accepted";
    return 0;  // a short count: curl stops the transfer with CURLE_WRITE_ERROR
  }
  t->resp.body.append(p, len);
  return len;
}

// The headers of the final answer are complete: refuse a declared body over the bound before
// any of it arrives. False stops the transfer.
bool OnEndOfHeaders(Transfer* t) {
  if (t->status >= 100 && t->status < 200) return true;  // interim answer; the real one follows
  if (t->req.method == "HEAD" || !t->resp.content_length.has_value()) return true;
  const uint64_t cap = BodyCap(*t);
  const uint64_t declared = *t->resp.content_length;
  if (declared > cap) {
    t->resp.too_large = "the answer declares a body of " + std::to_string(declared) +
                        " bytes (Content-Length), more than the " + std::to_string(cap) +
                        " accepted";
    return false;
  }
  if (t->status >= 200 && t->status < 300) t->resp.body.reserve(declared);
  return true;
}

size_t OnHeaderUnguarded(char* p, size_t size, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  const size_t len = size * n;
  t->header_bytes += len;
  if (t->header_bytes > kMaxHeaderBytes) {
    t->resp.too_large = "the answer's headers exceed " + std::to_string(kMaxHeaderBytes) + " bytes";
    return 0;  // curl stops the transfer with CURLE_WRITE_ERROR
  }
  const std::string_view line(p, len);
  if (line.substr(0, 5) == "HTTP/") {
    // A status line: the headers of an earlier (interim) answer no longer count.
    t->resp.headers.clear();
    t->resp.content_length.reset();
    const size_t sp = line.find(' ');
    t->status =
        sp == std::string_view::npos ? 0 : ParseDecimalU64(line.substr(sp + 1, 3)).value_or(0);
    return len;
  }
  if (line == "\r\n" || line == "\n") return OnEndOfHeaders(t) ? len : 0;
  const size_t colon = line.find(':');
  if (colon != std::string_view::npos) {
    std::string name(line.substr(0, colon));
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const size_t b = line.find_first_not_of(" \t", colon + 1);
    const size_t e = line.find_last_not_of(" \t\r\n");
    std::string value =
        b == std::string_view::npos || e < b ? "" : std::string(line.substr(b, e - b + 1));
    if (name == "content-length") t->resp.content_length = ParseDecimalU64(value);
    t->resp.headers[name] = std::move(value);
  }
  return len;
}

// curl calls these from C: an exception (std::bad_alloc while growing the body or the headers) must
// not cross its frames. It stops the transfer instead.
size_t OnWrite(char* p, size_t size, size_t n, void* ud) {
  try {
    return OnWriteUnguarded(p, size, n, ud);
  } catch (...) {
    static_cast<Transfer*>(ud)->resp.out_of_memory = true;
    return 0;
  }
}
size_t OnHeader(char* p, size_t size, size_t n, void* ud) {
  try {
    return OnHeaderUnguarded(p, size, n, ud);
  } catch (...) {
    static_cast<Transfer*>(ud)->resp.out_of_memory = true;
    return 0;
  }
}

size_t OnRead(char* p, size_t size, size_t n, void* ud) {
  auto* t = static_cast<Transfer*>(ud);
  size_t left = t->req.body_length - t->sent;
  size_t k = std::min(left, size * n);
  if (k) std::memcpy(p, t->req.body->data() + t->req.body_offset + t->sent, k);
  t->sent += k;
  return k;
}

int OnSeek(void* ud, curl_off_t off, int origin) {
  auto* t = static_cast<Transfer*>(ud);
  if (origin != SEEK_SET || off < 0 || static_cast<size_t>(off) > t->req.body_length)
    return CURL_SEEKFUNC_FAIL;
  t->sent = static_cast<size_t>(off);
  return CURL_SEEKFUNC_OK;
}

// Adds the configured PEM certificates to the TLS context's trust store (beside the system CAs).
CURLcode OnSslCtx(CURL*, void* ssl_ctx, void* ud) {
  const std::string* pem = static_cast<const std::string*>(ud);
  X509_STORE* store = SSL_CTX_get_cert_store(static_cast<SSL_CTX*>(ssl_ctx));
  BIO* bio = BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size()));
  if (bio == nullptr) return CURLE_SSL_CERTPROBLEM;
  int added = 0;
  while (X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
    if (X509_STORE_add_cert(store, cert) == 1) ++added;
    X509_free(cert);
  }
  BIO_free(bio);
  return added > 0 ? CURLE_OK : CURLE_SSL_CERTPROBLEM;
}

const char kShutDown[] = "the S3 client was shut down";

// How long a looked-up address is used before it is looked up again (in the background: requests
// keep using the old one meanwhile).
constexpr auto kAddressTtl = std::chrono::seconds(60);
// The most addresses of one host handed to curl.
constexpr size_t kMaxAddresses = 16;

// The host and port of a URL, and whether connecting needs a lookup of the host: not for an IP
// address, nor for "localhost" and "*.localhost", which curl answers itself without a thread.
struct HostPort {
  std::string host;  // as in the URL (an IPv6 literal keeps its brackets)
  std::string port;
  bool needs_lookup = false;
};
std::optional<HostPort> HostOfUrl(const std::string& url) {
  CURLU* u = curl_url();
  if (u == nullptr) return std::nullopt;
  std::optional<HostPort> out;
  char* host = nullptr;
  char* port = nullptr;
  if (curl_url_set(u, CURLUPART_URL, url.c_str(), 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
    HostPort hp;
    hp.host = host;
    hp.port = port;
    std::string lower = hp.host;
    for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    in6_addr a6;
    in_addr a4;
    const bool ip = (lower.size() > 2 && lower.front() == '[') ||
                    ::inet_pton(AF_INET, lower.c_str(), &a4) == 1 ||
                    ::inet_pton(AF_INET6, lower.c_str(), &a6) == 1;
    const bool local =
        lower == "localhost" ||
        (lower.size() > 10 && lower.compare(lower.size() - 10, 10, ".localhost") == 0);
    hp.needs_lookup = !ip && !local;
    out = std::move(hp);
  }
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return out;
}

// Blocking (runs on the blocking pool): the CURLOPT_RESOLVE entry "host:port:addr,addr" of
// host:port, or "" with *error set.
std::string LookUpHost(const std::string& host, const std::string& port, std::string* error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    *error = std::string("could not resolve host '") + host +
             "': " + (rc == EAI_SYSTEM ? std::strerror(errno) : ::gai_strerror(rc));
    return "";
  }
  std::vector<std::string> addrs;
  for (addrinfo* ai = res; ai != nullptr && addrs.size() < kMaxAddresses; ai = ai->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {0};
    std::string a;
    if (ai->ai_family == AF_INET &&
        ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr, buf,
                    sizeof(buf)) != nullptr) {
      a = buf;
    } else if (ai->ai_family == AF_INET6 &&
               ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr, buf,
                           sizeof(buf)) != nullptr) {
      a = std::string("[") + buf + "]";
    }
    if (!a.empty() && std::find(addrs.begin(), addrs.end(), a) == addrs.end()) addrs.push_back(a);
  }
  ::freeaddrinfo(res);
  if (addrs.empty()) {
    *error = "could not resolve host '" + host + "': no IPv4 or IPv6 address";
    return "";
  }
  std::string entry = host + ":" + port + ":";
  for (size_t i = 0; i < addrs.size(); ++i) entry += (i ? "," : "") + addrs[i];
  return entry;
}

// A curl easy handle for `t`, or null when curl is out of memory.
CURL* MakeEasy(Transfer* t, const EngineOptions& opts) {
  CURL* e = curl_easy_init();
  if (e == nullptr) return nullptr;
  curl_easy_setopt(e, CURLOPT_PRIVATE, t);
  curl_easy_setopt(e, CURLOPT_URL, t->req.url.c_str());
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1));
  curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, OnWrite);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, opts.connect_timeout_ms);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, t->req.timeout_ms);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, opts.low_speed_time_s);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  // The host's addresses were looked up on the Runtime's blocking pool (HostLookup below), so curl
  // finds them in its cache and starts no resolver thread of its own.
  if (t->resolve != nullptr) curl_easy_setopt(e, CURLOPT_RESOLVE, t->resolve);
  if (!opts.verify_tls) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (!opts.ca_pem.empty()) {
    curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, OnSslCtx);
    curl_easy_setopt(e, CURLOPT_SSL_CTX_DATA, &opts.ca_pem);
  }
  const std::string& m = t->req.method;
  const bool has_body = t->req.body != nullptr;
  if (m == "HEAD") {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (m == "PUT" || (m == "POST" && has_body)) {
    if (m == "PUT") {
      curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(t->req.body_length));
    } else {
      curl_easy_setopt(e, CURLOPT_POST, 1L);
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(t->req.body_length));
    }
    curl_easy_setopt(e, CURLOPT_READFUNCTION, OnRead);
    curl_easy_setopt(e, CURLOPT_READDATA, t);
    curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, OnSeek);
    curl_easy_setopt(e, CURLOPT_SEEKDATA, t);
  } else if (m == "POST") {
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
  } else if (m != "GET") {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m.c_str());
  }
  for (const auto& h : t->req.headers) t->headers = curl_slist_append(t->headers, h.c_str());
  // No "Expect: 100-continue" round trip; curl's own Content-Type for POST is suppressed.
  t->headers = curl_slist_append(t->headers, "Expect:");
  if (m == "POST") t->headers = curl_slist_append(t->headers, "Content-Type:");
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
  return e;
}

// Runs the completion callback of `t` (once: it is moved out). What it throws is dropped.
void RunCallback(Transfer* t) {
  if (t == nullptr || !t->done) return;
  auto done = std::move(t->done);
  try {
    done(std::move(t->resp));
  } catch (...) {
  }
}

using Strand = boost::asio::strand<boost::asio::io_context::executor_type>;

// The state of one engine. Handlers the engine queues on the io_context hold it (through a Hold),
// so a handler that runs after the engine was torn down finds `closed_` instead of freed memory.
// Members marked "strand" are used only by handlers running on `strand_` (curl calls its socket
// and timer callbacks from inside the curl_multi_* calls made there).
class Core : public std::enable_shared_from_this<Core> {
 public:
  Core(RuntimeImpl& rt, EngineOptions opts)
      : rt_(rt), io_(rt.io()), strand_(io_.get_executor()), opts_(std::move(opts)), timer_(io_) {}
  ~Core() {
    // Normally Teardown() has run; this only covers a Core that never got that far.
    for (auto& [easy, t] : active_) {
      curl_multi_remove_handle(multi_, easy);
      curl_easy_cleanup(easy);
    }
    if (multi_ != nullptr) curl_multi_cleanup(multi_);
  }
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  // Creates the multi handle. False when curl is out of memory.
  bool Init() {
    multi_ = curl_multi_init();
    if (multi_ == nullptr) return false;
    const long max = static_cast<long>(opts_.max_connections);
    curl_multi_setopt(multi_, CURLMOPT_MAX_TOTAL_CONNECTIONS, max);
    curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, max);
    curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, max);
    curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &Core::SocketCallback);
    curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
    curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &Core::TimerCallback);
    curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
    return true;
  }

  // Any thread: queues `t` on the strand.
  void Submit(std::unique_ptr<Transfer> t) {
    boost::asio::post(strand_, [h = Hold(shared_from_this()), t = std::move(t)]() mutable {
      h->Start(std::move(t));
    });
  }

  // Fails every transfer, closes the connections and, when `wait`, blocks until no handler of the
  // engine is queued or running. `keep` is held until the teardown ran (the Runtime, when not
  // waiting). REQUIRES: `wait` only on a thread that does not run the io_context.
  void Close(bool wait, std::shared_ptr<void> keep) {
    {
      // (Scoped: this Hold must be gone before the wait below.)
      auto teardown = [h = Hold(shared_from_this()), keep = std::move(keep)] { h->Teardown(); };
      // The destructor cannot fail: when memory is short, try again until the handler is queued.
      for (;;) {
        try {
          boost::asio::post(strand_, teardown);
          break;
        } catch (...) {
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
      }
    }
    if (!wait) return;
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [this] { return holds_.load() == 0; });
  }

 private:
  // Counts one handler of this engine from when it is created until it is destroyed (run or
  // dropped) and keeps the Core alive that long. Close() waits for the count to reach 0: only a
  // handler (or a callback, which is one) can queue another, so 0 after the teardown is final.
  class Hold {
   public:
    explicit Hold(std::shared_ptr<Core> core) : core_(std::move(core)) { ++core_->holds_; }
    Hold(const Hold& o) : core_(o.core_) {
      if (core_) ++core_->holds_;
    }
    Hold(Hold&& o) noexcept = default;  // leaves `o` empty
    Hold& operator=(const Hold&) = delete;
    Hold& operator=(Hold&&) = delete;
    ~Hold() {
      if (core_ && --core_->holds_ == 0) {
        std::lock_guard<std::mutex> l(core_->mu_);
        core_->cv_.notify_all();
      }
    }
    Core* operator->() const { return core_.get(); }

   private:
    std::shared_ptr<Core> core_;
  };

  // A socket curl asked the engine to watch. asio watches a dup() of it, so asio never closes a
  // descriptor curl uses; curl says CURL_POLL_REMOVE before it closes its own, and the dup is
  // closed then (which also ends the waits on it). Should a number come back as another socket
  // without that, the inode tells them apart.
  struct Socket {
    Socket(boost::asio::io_context& io, curl_socket_t s, ino_t i) : fd(s), ino(i), desc(io) {}
    curl_socket_t fd;  // curl's
    ino_t ino;         // of the socket (sockfs): tells a reused descriptor number apart
    boost::asio::posix::stream_descriptor desc;
    int want = 0;                      // CURL_POLL_IN / CURL_POLL_OUT bits curl asked for
    bool waiting[2] = {false, false};  // a wait for reading / writing is queued
    bool gone = false;                 // curl removed it; late handlers ignore it
  };

  static int SocketCallback(CURL*, curl_socket_t s, int what, void* userp, void*) {
    try {
      return static_cast<Core*>(userp)->OnSocket(s, what);
    } catch (...) {
      return -1;  // out of memory: curl fails the transfer
    }
  }
  static int TimerCallback(CURLM*, long timeout_ms, void* userp) {
    try {
      return static_cast<Core*>(userp)->OnTimer(timeout_ms);
    } catch (...) {
      return -1;
    }
  }

  // strand: curl wants `what` (CURL_POLL_*) on socket `s`.
  int OnSocket(curl_socket_t s, int what) {
    if (what == CURL_POLL_REMOVE) {
      auto it = sockets_.find(s);
      if (it != sockets_.end()) {
        Drop(*it->second);
        sockets_.erase(it);
      }
      return 0;
    }
    if (closed_) return 0;
    struct stat st {};
    if (::fstat(s, &st) != 0) return -1;
    auto it = sockets_.find(s);
    if (it != sockets_.end() && it->second->ino != st.st_ino) {
      // Another socket under a number curl closed without a word: never watch the old one.
      Drop(*it->second);
      sockets_.erase(it);
      it = sockets_.end();
    }
    if (it == sockets_.end()) {
      auto sock = std::make_shared<Socket>(io_, s, st.st_ino);
      const int fd = ::fcntl(s, F_DUPFD_CLOEXEC, 0);
      if (fd < 0) return -1;
      boost::system::error_code ec;
      sock->desc.assign(fd, ec);
      if (ec) {
        ::close(fd);
        return -1;
      }
      it = sockets_.emplace(s, std::move(sock)).first;  // on throw, `sock` closes the dup
    }
    it->second->want = what;
    Arm(it->second);
    return 0;
  }

  // strand: curl wants to be called back after `timeout_ms` (-1: never).
  int OnTimer(long timeout_ms) {
    ++timer_gen_;
    if (closed_ || timeout_ms < 0) {
      timer_.cancel();
      return 0;
    }
    timer_.expires_after(std::chrono::milliseconds(timeout_ms));
    timer_.async_wait(boost::asio::bind_executor(
        strand_, [h = Hold(shared_from_this()), gen = timer_gen_](
                     const boost::system::error_code& ec) { h->OnTimeout(gen, ec); }));
    return 0;
  }

  // strand: queues the waits curl wants on `sock` that are not queued yet.
  void Arm(const std::shared_ptr<Socket>& sock) {
    for (int dir = 0; dir < 2; ++dir) {
      const int bit = dir == 0 ? CURL_POLL_IN : CURL_POLL_OUT;
      if ((sock->want & bit) == 0 || sock->waiting[dir]) continue;
      sock->desc.async_wait(
          dir == 0 ? boost::asio::posix::stream_descriptor::wait_read
                   : boost::asio::posix::stream_descriptor::wait_write,
          boost::asio::bind_executor(
              strand_, [h = Hold(shared_from_this()), sock,
                        dir](const boost::system::error_code& ec) { h->OnReady(sock, dir, ec); }));
      sock->waiting[dir] = true;
    }
  }

  // strand: closes the dup of a socket curl no longer wants watched; its waits end aborted.
  static void Drop(Socket& sock) {
    sock.gone = true;
    boost::system::error_code ignored;
    sock.desc.close(ignored);
  }

  // strand: the socket is readable (dir 0) or writable (dir 1), or the wait failed.
  void OnReady(const std::shared_ptr<Socket>& sock, int dir, const boost::system::error_code& ec) {
    sock->waiting[dir] = false;
    if (closed_ || sock->gone || ec == boost::asio::error::operation_aborted) return;
    // An exception here (memory exhausted) must not end the io thread's loop: the transfer on the
    // socket then ends by its own timeout, which curl's timer still drives.
    try {
      if (ec) {
        Action(sock->fd, CURL_CSELECT_ERR);  // not watched again: curl decides
        return;
      }
      const int bit = dir == 0 ? CURL_POLL_IN : CURL_POLL_OUT;
      if ((sock->want & bit) == 0) return;  // curl changed its mind meanwhile
      Action(sock->fd, dir == 0 ? CURL_CSELECT_IN : CURL_CSELECT_OUT);
      if (!sock->gone && !closed_) Arm(sock);
    } catch (...) {
    }
  }

  // strand: curl's timeout expired.
  void OnTimeout(uint64_t gen, const boost::system::error_code& ec) {
    if (closed_ || ec == boost::asio::error::operation_aborted || gen != timer_gen_) return;
    try {
      Action(CURL_SOCKET_TIMEOUT, 0);
    } catch (...) {
    }
  }

  // strand: lets curl act on socket `s` (or its timeouts), then completes finished transfers.
  void Action(curl_socket_t s, int ev_bitmask) {
    int running = 0;
    curl_multi_socket_action(multi_, s, ev_bitmask, &running);
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi_, &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      CURL* easy = msg->easy_handle;
      const CURLcode code = msg->data.result;
      Finish(easy, code);
    }
  }

  // strand: a new request. Its host's addresses are looked up first when they are not known yet.
  void Start(std::unique_ptr<Transfer> t) {
    if (closed_) {
      t->resp.curl_code = CURLE_ABORTED_BY_CALLBACK;
      SetError(t.get(), kShutDown);
      Deliver(std::move(t));
      return;
    }
    std::optional<HostPort> hp;
    try {
      hp = HostOfUrl(t->req.url);
    } catch (...) {  // out of memory: let curl deal with the name
    }
    if (hp && hp->needs_lookup) {
      const std::string key = hp->host + ":" + hp->port;
      auto known = addresses_.find(key);
      if (known == addresses_.end()) {
        Park(key, *hp, std::move(t));
        return;
      }
      if (std::chrono::steady_clock::now() - known->second.at > kAddressTtl &&
          lookups_.find(key) == lookups_.end()) {
        try {
          StartLookup(key, *hp);  // refresh in the background; this request uses the old entry
        } catch (...) {
          lookups_.erase(key);  // out of memory: the old entry serves until a later refresh
        }
      }
      t->resolve = curl_slist_append(nullptr, known->second.entry.c_str());
    }
    Launch(std::move(t));
  }

  // strand: hands `t` to curl.
  void Launch(std::unique_ptr<Transfer> t) {
    CURL* easy = MakeEasy(t.get(), opts_);
    if (easy != nullptr) {
      std::unordered_map<CURL*, std::unique_ptr<Transfer>>::iterator it;
      try {
        it = active_.emplace(easy, nullptr).first;
      } catch (...) {
        curl_easy_cleanup(easy);
        easy = nullptr;
      }
      if (easy != nullptr) {
        it->second = std::move(t);
        const CURLMcode mc = curl_multi_add_handle(multi_, easy);
        if (mc != CURLM_OK) {
          Transfer* tp = it->second.get();
          SetError(tp, curl_multi_strerror(mc));
          Finish(easy, CURLE_OUT_OF_MEMORY);
        }
        return;
      }
    }
    t->resp.curl_code = CURLE_OUT_OF_MEMORY;
    t->resp.out_of_memory = true;
    SetError(t.get(), "out of memory starting the request");
    Deliver(std::move(t));
  }

  // strand: `t` waits for the lookup of `key`, which starts unless one already runs.
  void Park(const std::string& key, const HostPort& hp, std::unique_ptr<Transfer> t) {
    try {
      auto [it, fresh] = lookups_.try_emplace(key);
      it->second.waiting.push_back(std::move(t));
      if (fresh) StartLookup(key, hp);
    } catch (...) {  // out of memory: fail what waits for a lookup that could not start
      if (t) Fail(std::move(t), CURLE_OUT_OF_MEMORY, "out of memory looking up the host");
      if (auto it = lookups_.find(key); it != lookups_.end() && !it->second.started) {
        for (auto& w : it->second.waiting)
          Fail(std::move(w), CURLE_OUT_OF_MEMORY, "out of memory looking up the host");
        lookups_.erase(it);
      }
    }
  }

  // strand: looks `key` up on the Runtime's blocking pool (getaddrinfo blocks); requests waiting
  // for it fail after the connect timeout if it has not answered by then.
  void StartLookup(const std::string& key, const HostPort& hp) {
    Lookup& l = lookups_[key];
    l.host = hp.host;
    l.deadline = std::make_unique<boost::asio::steady_timer>(io_);
    l.deadline->expires_after(std::chrono::milliseconds(opts_.connect_timeout_ms));
    l.deadline->async_wait(boost::asio::bind_executor(
        strand_, [h = Hold(shared_from_this()), key](const boost::system::error_code& ec) {
          if (ec != boost::asio::error::operation_aborted) h->LookupTimedOut(key);
        }));
    std::weak_ptr<Core> weak = weak_from_this();
    rt_.PostBlocking([weak, key, host = hp.host, port = hp.port, lookup = opts_.lookup] {
      std::string error;
      std::string entry = lookup ? lookup(host, port, &error) : LookUpHost(host, port, &error);
      if (entry.empty() && error.empty()) error = "could not resolve host '" + host + "'";
      if (std::shared_ptr<Core> core = weak.lock()) {
        boost::asio::post(core->strand_,
                          [h = Hold(core), key, entry = std::move(entry),
                           error = std::move(error)] { h->LookupDone(key, entry, error); });
      }
    });
    l.started = true;
  }

  // strand: the lookup of `key` answered (`entry` "" and `error` set when it failed).
  void LookupDone(const std::string& key, const std::string& entry, const std::string& error) {
    std::vector<std::unique_ptr<Transfer>> waiting;
    if (auto it = lookups_.find(key); it != lookups_.end()) {
      waiting = std::move(it->second.waiting);
      lookups_.erase(it);  // destroys the deadline timer (its wait ends with operation_aborted)
    }
    if (closed_) return;  // Teardown failed every waiting request already
    if (!entry.empty()) addresses_[key] = Address{entry, std::chrono::steady_clock::now()};
    for (auto& t : waiting) {
      if (entry.empty()) {
        Fail(std::move(t), CURLE_COULDNT_RESOLVE_HOST, error.c_str());
        continue;
      }
      t->resolve = curl_slist_append(nullptr, entry.c_str());
      Launch(std::move(t));
    }
  }

  // strand: the lookup of `key` took longer than the connect timeout: its requests fail (a later
  // request starts a new lookup; a late answer still fills the cache).
  void LookupTimedOut(const std::string& key) {
    auto it = lookups_.find(key);
    if (it == lookups_.end() || closed_) return;
    std::vector<std::unique_ptr<Transfer>> waiting = std::move(it->second.waiting);
    const std::string text = "resolving host '" + it->second.host + "' took longer than " +
                             std::to_string(opts_.connect_timeout_ms) + " ms";
    lookups_.erase(it);
    for (auto& t : waiting) Fail(std::move(t), CURLE_OPERATION_TIMEDOUT, text.c_str());
  }

  // strand or any thread: ends `t` with `code` and `text` without it reaching curl.
  void Fail(std::unique_ptr<Transfer> t, CURLcode code, const char* text) {
    t->resp.curl_code = static_cast<int>(code);
    SetError(t.get(), text);
    Deliver(std::move(t));
  }

  // strand: `easy` ended with `code`; its callback is queued.
  void Finish(CURL* easy, CURLcode code) {
    auto it = active_.find(easy);
    curl_multi_remove_handle(multi_, easy);
    if (it == active_.end()) {  // not ours (cannot happen)
      curl_easy_cleanup(easy);
      return;
    }
    std::unique_ptr<Transfer> t = std::move(it->second);
    active_.erase(it);
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &t->resp.status);
    if (t->resp.status == 0) t->resp.status = static_cast<long>(t->status);
    curl_easy_cleanup(easy);
    t->resp.curl_code = static_cast<int>(code);
    if (code != CURLE_OK && t->resp.curl_error.empty())
      SetError(t.get(), t->errbuf[0] ? t->errbuf : curl_easy_strerror(code));
    Deliver(std::move(t));
  }

  static void SetError(Transfer* t, const char* text) {
    try {
      t->resp.curl_error = text;
    } catch (...) {  // out of memory: the code alone says what happened
    }
  }

  // Any thread: runs the callback of `t` on the io_context, outside the strand. When even that
  // cannot be queued (out of memory) it runs here rather than never.
  void Deliver(std::unique_ptr<Transfer> t) {
    auto run = [h = Hold(shared_from_this()), t = std::move(t)]() mutable { RunCallback(t.get()); };
    try {
      boost::asio::post(io_, std::move(run));
      return;
    } catch (...) {
    }
    run();
  }

  // strand: fails every transfer in flight and releases curl. Handlers still queued find closed_.
  void Teardown() {
    if (closed_) return;
    closed_ = true;
    ++timer_gen_;
    try {
      timer_.cancel();
    } catch (...) {  // a late timer handler finds closed_ anyway
    }
    for (auto it = active_.begin(); it != active_.end(); it = active_.erase(it)) {
      CURL* easy = it->first;
      std::unique_ptr<Transfer> t = std::move(it->second);
      curl_multi_remove_handle(multi_, easy);
      curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &t->resp.status);
      if (t->resp.status == 0) t->resp.status = static_cast<long>(t->status);
      curl_easy_cleanup(easy);
      t->resp.curl_code = CURLE_ABORTED_BY_CALLBACK;
      SetError(t.get(), kShutDown);
      Deliver(std::move(t));
    }
    for (auto& [key, lookup] : lookups_) {
      for (auto& t : lookup.waiting) Fail(std::move(t), CURLE_ABORTED_BY_CALLBACK, kShutDown);
    }
    lookups_.clear();
    curl_multi_cleanup(multi_);  // closes the cached connections (may call OnSocket: REMOVE)
    multi_ = nullptr;
    for (auto& [fd, sock] : sockets_) Drop(*sock);
    sockets_.clear();
  }

  // A lookup of a host's addresses in progress, and the requests waiting for it.
  struct Lookup {
    std::string host;
    bool started = false;  // posted to the blocking pool
    std::vector<std::unique_ptr<Transfer>> waiting;
    std::unique_ptr<boost::asio::steady_timer> deadline;
  };
  // A host's addresses as a CURLOPT_RESOLVE entry, and when they were looked up.
  struct Address {
    std::string entry;
    std::chrono::steady_clock::time_point at;
  };

  RuntimeImpl& rt_;  // lookups are posted to its blocking pool (only before Teardown)
  boost::asio::io_context& io_;
  Strand strand_;
  const EngineOptions opts_;
  CURLM* multi_ = nullptr;           // strand
  boost::asio::steady_timer timer_;  // strand
  uint64_t timer_gen_ = 0;           // strand: counts OnTimer calls
  bool closed_ = false;              // strand
  std::unordered_map<curl_socket_t, std::shared_ptr<Socket>> sockets_;  // strand
  std::unordered_map<CURL*, std::unique_ptr<Transfer>> active_;         // strand
  std::unordered_map<std::string, Lookup> lookups_;                     // strand, by "host:port"
  std::unordered_map<std::string, Address> addresses_;                  // strand, by "host:port"
  std::atomic<long> holds_{0};                                          // Holds alive (see Hold)
  std::mutex mu_;  // with cv_: Close() waits for holds_ == 0
  std::condition_variable cv_;
};

}  // namespace

struct Engine::Impl {
  std::shared_ptr<Runtime> rt;  // never held by a handler: the Runtime outlives every handler
  std::shared_ptr<Core> core;
};

Engine::Engine(std::shared_ptr<Runtime> runtime, EngineOptions options)
    : impl_(std::make_unique<Impl>()) {
  std::call_once(g_curl_init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  impl_->rt = std::move(runtime);
  impl_->core = std::make_shared<Core>(*internal::ImplOf(impl_->rt), std::move(options));
  if (!impl_->core->Init()) throw std::bad_alloc();
}

Engine::~Engine() {
  boost::asio::io_context& io = internal::ImplOf(impl_->rt)->io();
  if (io.get_executor().running_in_this_thread()) {
    // Against the documented rule: waiting here could wait for this very thread. Tear down
    // without waiting, keeping the Runtime alive until the teardown ran.
    impl_->core->Close(false, impl_->rt);
  } else {
    impl_->core->Close(true, nullptr);
  }
}

void Engine::Submit(Request req, std::function<void(Response)> done) {
  auto t = std::make_unique<Transfer>();
  t->req = std::move(req);
  t->done = std::move(done);
  impl_->core->Submit(std::move(t));
}

}  // namespace vmbackup::internal::http
