// HttpEngine over the libcurl multi interface (see http.h).
#include "store/s3/http.h"

#include <curl/curl.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <atomic>
#include <deque>
#include <mutex>
#include <set>
#include <thread>

#include "core/runtime.h"
#include "store/s3/s3_xml.h"

namespace vmbackup::internal::http {
namespace {

std::once_flag g_curl_init;

struct Transfer {
  Request req;
  std::function<void(Response)> done;
  Response resp;
  size_t sent = 0;
  curl_slist* headers = nullptr;
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

}  // namespace

struct Engine::Impl {
  std::shared_ptr<Runtime> rt;
  EngineOptions opts;
  CURLM* multi = nullptr;
  CURLSH* share = nullptr;
  std::mutex mu;
  std::deque<Transfer*> queue;
  std::atomic<bool> stop{false};
  std::thread loop;

  void Loop();
  CURL* MakeEasy(Transfer* t);
  void Finish(CURL* easy, CURLcode code);
  // One round of the loop: start queued transfers, drive curl, finish completed ones.
  void RunOnce(std::set<CURL*>* active, int* running);
};

Engine::Engine(std::shared_ptr<Runtime> runtime, EngineOptions options)
    : impl_(std::make_unique<Impl>()) {
  std::call_once(g_curl_init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  impl_->rt = std::move(runtime);
  impl_->opts = std::move(options);
  impl_->multi = curl_multi_init();
  curl_multi_setopt(impl_->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                    static_cast<long>(impl_->opts.max_connections));
  curl_multi_setopt(impl_->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                    static_cast<long>(impl_->opts.max_connections));
  curl_multi_setopt(impl_->multi, CURLMOPT_MAXCONNECTS,
                    static_cast<long>(impl_->opts.max_connections));
  impl_->loop = std::thread([this] { impl_->Loop(); });
}

Engine::~Engine() {
  impl_->stop = true;
  curl_multi_wakeup(impl_->multi);
  impl_->loop.join();
  curl_multi_cleanup(impl_->multi);
}

void Engine::Submit(Request req, std::function<void(Response)> done) {
  auto* t = new Transfer;
  t->req = std::move(req);
  t->done = std::move(done);
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    impl_->queue.push_back(t);
  }
  curl_multi_wakeup(impl_->multi);
}

CURL* Engine::Impl::MakeEasy(Transfer* t) {
  CURL* e = curl_easy_init();
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

void Engine::Impl::Finish(CURL* easy, CURLcode code) {
  Transfer* t = nullptr;
  curl_easy_getinfo(easy, CURLINFO_PRIVATE, reinterpret_cast<char**>(&t));
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &t->resp.status);
  if (t->resp.status == 0) t->resp.status = static_cast<long>(t->status);
  t->resp.curl_code = static_cast<int>(code);
  if (code != CURLE_OK) t->resp.curl_error = t->errbuf[0] ? t->errbuf : curl_easy_strerror(code);
  curl_multi_remove_handle(multi, easy);
  curl_easy_cleanup(easy);
  curl_slist_free_all(t->headers);
  auto done = std::move(t->done);
  Response resp = std::move(t->resp);
  delete t;
  rt->impl()->PostIo(
      [done = std::move(done), resp = std::move(resp)]() mutable { done(std::move(resp)); });
}

void Engine::Impl::Loop() {
  std::set<CURL*> active;  // owned by this thread
  int running = 0;
  while (!stop) {
    // An exception here (memory exhausted) must not end the loop thread, which every transfer of
    // the store depends on: drop this round and go on (a stuck transfer then ends by its own
    // timeout).
    try {
      RunOnce(&active, &running);
    } catch (...) {
    }
    curl_multi_poll(multi, nullptr, 0, 1000, nullptr);
  }
  // Shutting down: fail whatever is still queued or in flight.
  for (CURL* e : active) Finish(e, CURLE_ABORTED_BY_CALLBACK);
  std::lock_guard<std::mutex> l(mu);
  for (Transfer* t : queue) {
    t->resp.curl_code = CURLE_ABORTED_BY_CALLBACK;
    t->resp.curl_error = "the S3 client was shut down";
    auto done = std::move(t->done);
    Response resp = std::move(t->resp);
    delete t;
    rt->impl()->PostIo(
        [done = std::move(done), resp = std::move(resp)]() mutable { done(std::move(resp)); });
  }
  queue.clear();
}

void Engine::Impl::RunOnce(std::set<CURL*>* active_set, int* running_count) {
  std::set<CURL*>& active = *active_set;
  int& running = *running_count;
  {
    std::deque<Transfer*> fresh;
    {
      std::lock_guard<std::mutex> l(mu);
      fresh.swap(queue);
    }
    for (Transfer* t : fresh) {
      CURL* e = MakeEasy(t);
      active.insert(e);
      curl_multi_add_handle(multi, e);
    }
    curl_multi_perform(multi, &running);
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      CURL* e = msg->easy_handle;
      CURLcode code = msg->data.result;
      active.erase(e);
      Finish(e, code);
    }
  }
}

}  // namespace vmbackup::internal::http
