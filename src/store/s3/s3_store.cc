// S3Store implementation (see s3_store.h).
#include "store/s3/s3_store.h"

#include <curl/curl.h>
#include <openssl/evp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <random>
#include <set>

#include "core/asio.h"
#include "core/errors.h"
#include "core/retry.h"
#include "core/runtime.h"
#include "core/util.h"
#include "store/s3/http.h"
#include "store/s3/s3_xml.h"
#include "store/s3/sigv4.h"

namespace vmbackup::internal {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMultipartThreshold = 64u << 20;
constexpr size_t kPartSize = 16u << 20;
// The most bytes of a ListObjectsV2 page or DeleteObjects answer (1000 keys take ~400 KiB).
constexpr uint64_t kMaxListBody = 16u << 20;

std::string Base64(const unsigned char* p, size_t n) {
  std::string out(4 * ((n + 2) / 3) + 1, '\0');
  int len = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), p, static_cast<int>(n));
  out.resize(static_cast<size_t>(len));
  return out;
}

std::string Md5Base64(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_md5(), nullptr);
  return Base64(md, len);
}

bool IsTlsError(int code) {
  return code == CURLE_PEER_FAILED_VERIFICATION || code == CURLE_SSL_CONNECT_ERROR ||
         code == CURLE_SSL_CERTPROBLEM || code == CURLE_SSL_CACERT_BADFILE ||
         code == CURLE_SSL_ISSUER_ERROR || code == CURLE_SSL_PINNEDPUBKEYNOTMATCH;
}

struct S3Settings {
  std::string scheme;  // http or https
  std::string host;    // host[:port] as sent (default port stripped)
  std::string bucket;
  std::string region;
  std::string prefix;  // "" or "dir/sub/" (ends with '/')
  bool virtual_hosted = false;
  s3::Credentials creds;
  RetryPolicy retry;
};

class S3Store final : public ObjectStore {
 public:
  S3Store(std::shared_ptr<Runtime> rt, S3Settings s, http::EngineOptions eo, S3TestHooks hooks)
      : ObjectStore(rt), s_(std::move(s)), hooks_(std::move(hooks)), engine_(rt, std::move(eo)) {}

  // Ends every request waiting to retry (its callback gets kUnavailable) and waits for their timer
  // handlers; then the engine (the last member) fails the requests in flight. Never called from
  // an io thread of the Runtime.
  ~S3Store() override {
    std::unique_lock<std::mutex> l(timers_mu_);
    closing_ = true;
    for (const auto& t : timers_) t->cancel();
    timers_cv_.wait(l, [this] { return timers_.empty(); });
  }

  std::string Describe() const override {
    return "s3://" + s_.bucket +
           (s_.prefix.empty() ? "" : "/" + s_.prefix.substr(0, s_.prefix.size() - 1)) + " at " +
           s_.scheme + "://" + s_.host;
  }

  // ---- the request machinery -------------------------------------------------------------------
  struct Call {
    std::string method;
    std::string key;  // object key below the bucket (prefix applied), "" = the bucket itself
    std::vector<std::pair<std::string, std::string>> query;
    std::vector<std::pair<std::string, std::string>> headers;
    std::shared_ptr<const std::string> body;
    size_t body_offset = 0, body_length = 0;
    std::string payload_sha256;  // computed once, reused by retries
    RetryPolicy policy;          // the store's, or a shorter one (first contact)
    Clock::time_point started;
    int attempt = 0;
    std::string last_error;
    // The most body bytes accepted in a 2xx answer (error answers: http::kMaxErrorBody).
    uint64_t max_body = http::kMaxErrorBody;
    // The error for a 2xx answer whose body exceeded max_body; null = a generic kDataLoss.
    std::function<Status(const http::Response&)> too_large_error;
    std::function<void(http::Response, Status)> done;
  };

  // Runs `c` with retries; `done` gets the final response and OK, or the mapped error.
  void Run(std::shared_ptr<Call> c) {
    if (c->payload_sha256.empty()) {
      c->payload_sha256 = c->body ? ToHex(Sha256(c->body->data() + c->body_offset, c->body_length))
                                  : std::string(s3::kEmptyPayloadSha256);
    }
    c->started = Clock::now();
    Attempt(std::move(c));
  }

  void Attempt(std::shared_ptr<Call> c) {
    s3::Request r;
    r.method = c->method;
    r.host = s_.virtual_hosted ? s_.bucket + "." + s_.host : s_.host;
    std::string path = s_.virtual_hosted ? "/" : "/" + s_.bucket;
    if (!c->key.empty()) path += (s_.virtual_hosted ? "" : "/") + c->key;
    r.path = path;
    r.query = c->query;
    r.headers = c->headers;
    if (hooks_.before_sign) hooks_.before_sign(c->method, c->key, &r.headers);
    r.payload_sha256_hex = c->payload_sha256;
    s3::HeaderList signed_headers =
        s3::Sign(r, s_.creds, s_.region, "s3", s3::FormatAmzDate(std::chrono::system_clock::now()));
    http::Request h;
    h.method = c->method;
    std::string q = s3::CanonicalQueryString(r);
    h.url = s_.scheme + "://" + r.host + s3::CanonicalUri(r) + (q.empty() ? "" : "?" + q);
    for (const auto& [n, v] : signed_headers) h.headers.push_back(n + ": " + v);
    h.body = c->body;
    h.body_offset = c->body_offset;
    h.body_length = c->body_length;
    h.max_body = c->max_body;
    ++c->attempt;
    engine_.Submit(std::move(h),
                   [this, c](http::Response resp) { OnResponse(c, std::move(resp)); });
  }

  void OnResponse(std::shared_ptr<Call> c, http::Response resp) {
    if (hooks_.after_response) hooks_.after_response(c->method, c->key, c->headers, &resp);
    if (resp.out_of_memory) {
      Status st = ResourceExhaustedError("S3 " + c->method + " " + KeyForMessage(*c) + " on " +
                                         Describe() + ": out of memory receiving the answer");
      c->done(std::move(resp), std::move(st));
      return;
    }
    if (!resp.too_large.empty()) {
      if (resp.status < 300) {
        // A success answer (or none yet) larger than allowed: the server is broken or hostile;
        // asking again would not help.
        Status st = c->too_large_error ? c->too_large_error(resp)
                                       : DataLossError("S3 " + c->method + " " + KeyForMessage(*c) +
                                                       " on " + Describe() + ": " + resp.too_large);
        c->done(std::move(resp), std::move(st));
        return;
      }
      // An error answer with an oversized body: its status still says what happened; the body
      // is dropped.
      resp.curl_code = 0;
      resp.body.clear();
    }
    std::string why;
    bool transient = false;
    if (resp.curl_code != 0) {
      if (IsTlsError(resp.curl_code)) {
        c->done(std::move(resp),
                FailedPreconditionError(
                    "TLS verification of " + s_.scheme + "://" + s_.host +
                    " failed: " + resp.curl_error +
                    " (give the server's CA certificate in the target's \"cert\" field)"));
        return;
      }
      if (resp.curl_code == CURLE_COULDNT_RESOLVE_HOST) {
        c->done(std::move(resp),
                UnavailableError(
                    "S3 endpoint host of " + Describe() + " does not resolve: " + resp.curl_error +
                    (s_.virtual_hosted ? " (virtual-hosted style needs a DNS name that "
                                         "resolves <bucket>.<endpoint host>)"
                                       : "")));
        return;
      }
      if (resp.curl_code == CURLE_ABORTED_BY_CALLBACK) {
        // The engine ends the transfers in flight when the store closes (its last member goes
        // first in the destructor's order): the caller learns the store went away, not "HTTP 0".
        c->done(std::move(resp),
                UnavailableError(Describe() + ": the store was closed while " + c->method + " " +
                                 KeyForMessage(*c) + " was in flight (" + resp.curl_error + ")"));
        return;
      }
      transient = true;
      why = resp.curl_error;
    } else if (resp.status >= 300) {
      // Only error answers carry an S3 error code; a 2xx body is data (an object may well
      // contain "<Code>SlowDown</Code>").
      auto err = ParseS3ErrorBody(resp.body);
      const std::string code = err.ok() ? err->code : "";
      if (resp.status >= 500 || resp.status == 429) {
        transient = true;
        why = "HTTP " + std::to_string(resp.status) + (code.empty() ? "" : " " + ServerText(code));
      } else if (resp.status == 400 && code == "RequestTimeout") {
        transient = true;
        why = "RequestTimeout";
      } else if (code == "SlowDown") {
        transient = true;
        why = "SlowDown";
      } else if (resp.status == 409 && code == "ConditionalRequestConflict") {
        // AWS: a conditional write raced another write of the key; try again.
        transient = true;
        why = "ConditionalRequestConflict";
      }
    }
    if (transient) {
      c->last_error = why;
      const auto now = Clock::now();
      outage_.NoAnswer(now);
      // Counted from the start of an outage other requests already saw, if earlier: requests
      // queued behind one that gave up do not each wait out the whole deadline again.
      const auto from = outage_.CountFrom(c->started);
      if (auto when = c->policy.NextAttempt(c->attempt, from, now)) {
        auto timer =
            std::make_shared<boost::asio::steady_timer>(internal::ImplOf(runtime_)->io(), *when);
        {
          std::lock_guard<std::mutex> l(timers_mu_);
          if (!closing_) {
            timers_.insert(timer);
            timer->async_wait(
                [this, c, timer](const boost::system::error_code&) { RetryTimerFired(c, timer); });
            return;
          }
        }
        c->done(std::move(resp), Closed(*c));
        return;
      }
      c->done(
          std::move(resp),
          UnavailableError(
              Describe() + " did not answer " + c->method + " " + KeyForMessage(*c) + " after " +
              std::to_string(c->attempt) + " attempts in " +
              std::to_string(
                  std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - c->started)
                      .count()) +
              " ms" +
              (from < c->started
                   ? " (the server has answered no request for " +
                         std::to_string(
                             std::chrono::duration_cast<std::chrono::seconds>(now - from).count()) +
                         " s)"
                   : std::string()) +
              ": " + why));
      return;
    }
    if (resp.curl_code == 0) outage_.Answered();
    c->done(std::move(resp), Status::Ok());
  }

  // A retry's timer fired (or was cancelled by the destructor): the next attempt, or the end.
  void RetryTimerFired(const std::shared_ptr<Call>& c,
                       const std::shared_ptr<boost::asio::steady_timer>& timer) {
    bool closing;
    {
      std::lock_guard<std::mutex> l(timers_mu_);
      closing = closing_;
    }
    if (closing) {
      c->done(http::Response{}, Closed(*c));
    } else {
      Attempt(c);  // the destructor waits for this handler, so the engine is still there
    }
    std::lock_guard<std::mutex> l(timers_mu_);
    timers_.erase(timer);
    timers_cv_.notify_all();  // last touch of this store
  }
  Status Closed(const Call& c) const {
    return UnavailableError(Describe() + ": the store was closed while " + c.method + " " +
                            KeyForMessage(c) + " waited to retry");
  }

  // The key as the caller named it (without the store's prefix, which Describe() shows).
  std::string KeyForMessage(const Call& c) const {
    if (c.key.empty()) return "(bucket)";
    return c.key.compare(0, s_.prefix.size(), s_.prefix) == 0 ? c.key.substr(s_.prefix.size())
                                                              : c.key;
  }

  // Maps a completed non-2xx response to a Status naming the S3 error code and request id.
  Status HttpError(const Call& c, const http::Response& r) const {
    auto parsed = ParseS3ErrorBody(r.body);
    S3ErrorBody err = parsed.ok() ? *parsed : S3ErrorBody{};
    if (err.request_id.empty()) {
      auto it = r.headers.find("x-amz-request-id");
      if (it != r.headers.end()) err.request_id = it->second;
    }
    return ErrorStatus(c, r.status, err);
  }

  // The Status for S3 error `err` in an answer with HTTP `status` to call `c`. Everything the
  // server sent is shortened and stripped of control characters before it goes in the message.
  Status ErrorStatus(const Call& c, long status, const S3ErrorBody& err) const {
    const std::string& code = err.code;
    const std::string msg = ServerText(err.message);
    const std::string rid = ServerText(err.request_id, 100);
    std::string what = "S3 " + c.method + " " + KeyForMessage(c) + " on " + Describe() + ": HTTP " +
                       std::to_string(status) + (code.empty() ? "" : " " + ServerText(code, 64)) +
                       (msg.empty() ? "" : " (" + msg + ")") +
                       (rid.empty() ? "" : ", request id " + rid);
    if (status == 403 || code == "SignatureDoesNotMatch" || code == "InvalidAccessKeyId" ||
        code == "AccessDenied") {
      std::string hint = code == "SignatureDoesNotMatch" ? "check secretAccessKey"
                         : code == "InvalidAccessKeyId"
                             ? "check accessKeyId"
                             : "check the credentials and the bucket policy";
      return PermissionDeniedError(what + "; " + hint);
    }
    if (code == "NoSuchBucket")
      return NotFoundError(what + "; bucket '" + s_.bucket + "' does not exist (check bucketName)");
    if (status == 404) return NotFoundError(what);
    if (status == 412) return AlreadyExistsError(what);
    if (status == 416) return OutOfRangeError(what);
    if (code == "BadDigest" || code == "XAmzContentSHA256Mismatch") return DataLossError(what);
    if (code == "EntityTooLarge" || code == "QuotaExceeded" || status == 507)
      return ResourceExhaustedError(what);
    if (status == 400) return InvalidArgumentError(what);
    return UnknownError(what);
  }

  // Runs a call synchronously; returns the 2xx response or the error.
  StatusOr<http::Response> Sync(std::shared_ptr<Call> c) {
    std::promise<std::pair<http::Response, Status>> p;
    auto f = p.get_future();
    c->done = [&p](http::Response r, Status st) { p.set_value({std::move(r), std::move(st)}); };
    auto keep = c;
    Run(std::move(c));
    auto [resp, st] = f.get();
    if (!st.ok()) return st;
    if (resp.status < 200 || resp.status >= 300) return HttpError(*keep, resp);
    return resp;
  }

  std::shared_ptr<Call> NewCall(std::string method, const std::string& key) {
    auto c = std::make_shared<Call>();
    c->policy = s_.retry;
    c->method = std::move(method);
    c->key = key.empty() ? "" : s_.prefix + key;
    return c;
  }

  // ---- ObjectStore ------------------------------------------------------------------------------
  Status Put(const std::string& key, std::string_view data, const PutOptions& opts) override {
    VMB_RETURN_IF_ERROR(ValidateKey(key));
    auto body = std::make_shared<const std::string>(data);
    return PutShared(key, body, opts);
  }

  // if_absent: a PUT with If-None-Match: * (after a probe that the server honours it, see
  // CheckConditionalPuts). A 412 means the key exists: kAlreadyExists, unless an earlier attempt
  // of this same call may have created it (its answer lost to a broken connection after the
  // server committed, then retried): then the object is ours, and the call succeeds, exactly
  // when it holds our bytes.
  Status PutShared(const std::string& key, std::shared_ptr<const std::string> body,
                   const PutOptions& opts) {
    const std::string exists = "object " + key + " already exists on " + Describe();
    if (opts.if_absent) {
      VMB_RETURN_IF_ERROR(CheckConditionalPuts());
      if (body->size() > kMultipartThreshold) {
        // A multipart upload is not made conditional here: check first. Racy, but nothing the
        // format creates with if_absent (records, the descriptor) comes near this size.
        auto head = Head(key);
        if (head.ok()) return AlreadyExistsError(exists);
        if (head.status().code() != StatusCode::kNotFound) return head.status();
      }
    }
    if (body->size() > kMultipartThreshold) return PutMultipart(key, body);
    auto c = NewCall("PUT", key);
    c->body = body;
    c->body_length = body->size();
    if (opts.if_absent) c->headers.push_back({"If-None-Match", "*"});
    auto r = Sync(c);
    if (r.ok()) return Status::Ok();
    if (r.status().code() != StatusCode::kAlreadyExists) return r.status();  // not a 412
    if (c->attempt <= 1) return AlreadyExistsError(exists);
    auto same = HoldsExactly(key, *body);
    if (!same.ok())
      return same.status().WithContext("create-if-absent of " + key +
                                       " was retried and the "
                                       "object exists; reading it back to compare");
    return *same ? Status::Ok() : AlreadyExistsError(exists);
  }

  // True when object `key` holds exactly `data`; false when it holds other bytes (reading no more
  // than data.size() + what is in flight). The store's errors otherwise (kNotFound, ...).
  StatusOr<bool> HoldsExactly(const std::string& key, const std::string& data) {
    auto c = NewCall("GET", key);
    c->max_body = data.size();
    auto longer = std::make_shared<std::atomic<bool>>(false);
    c->too_large_error = [longer](const http::Response& r) {
      *longer = true;
      return DataLossError(r.too_large);
    };
    auto r = Sync(c);
    if (*longer) return false;
    if (!r.ok()) return r.status();
    return r->body == data;
  }

  // OK when the server honours If-None-Match: * (it refuses a conditional PUT of an existing key
  // with 412). Probed once per store, before the first create-if-absent: a probe object under
  // probe/ is PUT twice with the header, then deleted. kFailedPrecondition when the second PUT
  // was accepted (then and for every later call); the store's error (nothing remembered) when
  // the probe itself fails.
  Status CheckConditionalPuts() {
    std::lock_guard<std::mutex> l(probe_mu_);
    if (conditional_ == Conditional::kUnknown) {
      auto honoured = ProbeIfNoneMatch();
      if (!honoured.ok())
        return honoured.status().WithContext("probing whether " + Describe() +
                                             " honours If-None-Match");
      conditional_ = *honoured ? Conditional::kHonoured : Conditional::kIgnored;
    }
    if (conditional_ == Conditional::kHonoured) return Status::Ok();
    return FailedPreconditionError(
        "the S3 server does not honour If-None-Match; vmbackup refuses to publish records there "
        "because two writers could overwrite each other (" +
        Describe() +
        " accepted a second PUT of a probe object with If-None-Match: * instead of answering "
        "412)");
  }

  StatusOr<bool> ProbeIfNoneMatch() {
    VMB_ASSIGN_OR_RETURN(std::string id, RandomHex(8));
    const std::string key = "probe/if-none-match-" + id;
    auto body = std::make_shared<const std::string>("vmbackup probe: is If-None-Match honoured?");
    // The HTTP status of a conditional PUT of the probe: 2xx, or 412.
    auto put = [&]() -> StatusOr<long> {
      auto c = NewCall("PUT", key);
      c->body = body;
      c->body_length = body->size();
      c->headers.push_back({"If-None-Match", "*"});
      auto r = Sync(c);
      if (r.ok()) return r->status;
      if (r.status().code() == StatusCode::kAlreadyExists) return 412L;
      return r.status();
    };
    // The first PUT creates the probe (a 412 there can only follow a retried attempt of ours).
    VMB_ASSIGN_OR_RETURN(long first, put());
    (void)first;
    auto second = put();
    Delete({key}).IgnoreError();  // best effort: a probe left behind is harmless
    if (!second.ok()) return second.status();
    return *second == 412;
  }

  void PutAsync(std::string key, std::shared_ptr<const std::string> data, PutOptions opts,
                std::function<void(Status)> done) override {
    Status v = ValidateKey(key);
    if (!v.ok()) return done(v);
    if (opts.if_absent || data->size() > kMultipartThreshold) {
      return ObjectStore::PutAsync(std::move(key), std::move(data), opts, std::move(done));
    }
    auto c = NewCall("PUT", key);
    c->body = data;
    c->body_length = data->size();
    // `call` is a plain pointer: the Call owns this function, so a shared_ptr here would keep the
    // Call (and the 32 MiB pack it holds) alive forever. Whoever calls done holds the Call.
    c->done = [this, call = c.get(), done = std::move(done)](http::Response r, Status st) {
      if (st.ok() && (r.status < 200 || r.status >= 300)) st = HttpError(*call, r);
      done(st);
    };
    // Hashing a 32 MiB pack takes ~25 ms: do it on the caller's (worker) thread, not the io loop.
    Run(c);
  }

  Status PutMultipart(const std::string& key, std::shared_ptr<const std::string> body) {
    auto create = NewCall("POST", key);
    create->query = {{"uploads", ""}};
    VMB_ASSIGN_OR_RETURN(http::Response cr, Sync(create));
    auto id = ParseInitiateMultipartUpload(cr.body);
    if (!id.ok()) return id.status().WithContext("S3 PUT " + key + " on " + Describe());
    const std::string upload_id = *id;
    auto abort = [&](Status st) {
      auto a = NewCall("DELETE", key);
      a->query = {{"uploadId", upload_id}};
      Sync(a).status().IgnoreError();  // best effort: leave no parts behind
      return st;
    };
    std::string complete = "<CompleteMultipartUpload>";
    int part = 1;
    for (size_t off = 0; off < body->size(); off += kPartSize, ++part) {
      auto c = NewCall("PUT", key);
      c->query = {{"partNumber", std::to_string(part)}, {"uploadId", upload_id}};
      c->body = body;
      c->body_offset = off;
      c->body_length = std::min(kPartSize, body->size() - off);
      auto r = Sync(c);
      if (!r.ok()) return abort(r.status().WithContext("upload part " + std::to_string(part)));
      auto etag = r->headers.find("etag");
      complete += "<Part><PartNumber>" + std::to_string(part) + "</PartNumber><ETag>" +
                  XmlEscape(etag == r->headers.end() ? "" : etag->second) + "</ETag></Part>";
    }
    complete += "</CompleteMultipartUpload>";
    auto done = NewCall("POST", key);
    done->query = {{"uploadId", upload_id}};
    done->body = std::make_shared<const std::string>(complete);
    done->body_length = complete.size();
    auto r = Sync(done);
    if (!r.ok()) return abort(r.status().WithContext("complete multipart upload"));
    // CompleteMultipartUpload may answer 200 with an <Error> body.
    auto result = ParseCompleteMultipartUpload(r->body);
    if (!result.ok())
      return abort(result.status().WithContext("S3 PUT " + key + " on " + Describe()));
    if (result->has_value()) return abort(ErrorStatus(*done, r->status, **result));
    return Status::Ok();
  }

  StatusOr<std::string> Get(const std::string& key, uint64_t offset, uint64_t length) override {
    VMB_RETURN_IF_ERROR(ValidateKey(key));
    auto c = NewCall("GET", key);
    const bool ranged = offset > 0 || length > 0;
    const std::string asked = std::to_string(length) + " bytes at " + std::to_string(offset);
    if (ranged) {
      std::string range = "bytes=" + std::to_string(offset) + "-" +
                          (length > 0 ? std::to_string(offset + length - 1) : "");
      c->headers.push_back({"Range", range});
    }
    // Never more than asked; a whole-object (or to-the-end) read at most kMaxWholeObjectRead.
    c->max_body = length > 0 ? length : kMaxWholeObjectRead;
    c->too_large_error = [this, key, ranged, asked](const http::Response& r) -> Status {
      if (!ranged && r.content_length.has_value())
        return TooLargeForWholeRead(key, *r.content_length);
      if (!ranged)
        return DataLossError("object " + key + " on " + Describe() + " is larger than the " +
                             std::to_string(kMaxWholeObjectRead) +
                             " bytes a whole-object read accepts (" + r.too_large + ")");
      return DataLossError("S3 answered the read of " + asked + " of object " + key + " on " +
                           Describe() + " with more than that (HTTP " + std::to_string(r.status) +
                           ": " + r.too_large + ")" +
                           (r.status == 200 ? "; the server ignores Range" : ""));
    };
    auto r = Sync(c);
    if (!r.ok()) {
      if (r.status().code() == StatusCode::kNotFound)
        return NotFoundError("object " + key + " not found on " + Describe());
      return r.status();
    }
    if (ranged && r->status == 206) {
      // The bytes must be the range asked for, whatever the server says.
      auto it = r->headers.find("content-range");
      if (it == r->headers.end())
        return DataLossError("S3 answered the read of " + asked + " of object " + key + " on " +
                             Describe() + " with HTTP 206 but no Content-Range");
      auto cr = ParseContentRange(it->second);
      if (!cr.ok())
        return cr.status().WithContext("S3 read of " + asked + " of object " + key + " on " +
                                       Describe());
      if (cr->first != offset || cr->last - cr->first + 1 != r->body.size())
        return DataLossError("S3 answered the read of " + asked + " of object " + key + " on " +
                             Describe() + " with " + std::to_string(r->body.size()) +
                             " bytes of Content-Range " + ServerText(it->second, 80));
    } else if (ranged && offset > 0) {
      // A 2xx other than 206: the server ignored Range and the body starts at byte 0.
      return DataLossError("S3 answered the read of " + asked + " of object " + key + " on " +
                           Describe() + " with HTTP " + std::to_string(r->status) +
                           " (the whole object): the server ignores Range");
    }
    if (length > 0 && r->body.size() != length) {
      return DataLossError("object " + key + " is shorter than expected (wanted " + asked +
                           ", got " + std::to_string(r->body.size()) + ")");
    }
    return std::move(r->body);
  }

  StatusOr<ObjectInfo> Head(const std::string& key) override {
    VMB_RETURN_IF_ERROR(ValidateKey(key));
    auto c = NewCall("HEAD", key);
    auto r = Sync(c);
    if (!r.ok()) {
      if (r.status().code() == StatusCode::kNotFound)
        return NotFoundError("object " + key + " not found on " + Describe());
      return r.status();
    }
    auto it = r->headers.find("content-length");
    const std::string what = "header Content-Length of S3 HEAD " + key + " on " + Describe();
    if (it == r->headers.end()) return DataLossError(what + " is missing");
    VMB_ASSIGN_OR_RETURN(uint64_t size, ParseDecimalField(it->second, what));
    auto etag = r->headers.find("etag");
    return ObjectInfo{key, size,
                      etag != r->headers.end() && etag->second.size() <= 256 ? etag->second : ""};
  }

  StatusOr<ListPage> List(const std::string& prefix, const std::string& token,
                          int max_keys) override {
    return ListWith(prefix, token, max_keys, s_.retry);
  }

  StatusOr<ListPage> ListWith(const std::string& prefix, const std::string& token, int max_keys,
                              const RetryPolicy& policy) {
    auto c = NewCall("GET", "");
    c->policy = policy;
    c->query = {
        {"list-type", "2"}, {"prefix", s_.prefix + prefix}, {"max-keys", std::to_string(max_keys)}};
    if (!token.empty()) c->query.push_back({"continuation-token", token});
    c->max_body = kMaxListBody;
    VMB_ASSIGN_OR_RETURN(http::Response r, Sync(c));
    auto page = ParseListObjectsV2(r.body, s_.prefix, prefix, token, max_keys);
    if (!page.ok()) return page.status().WithContext("listing '" + prefix + "' on " + Describe());
    return page;
  }

  Status Delete(const std::vector<std::string>& keys) override {
    for (size_t i = 0; i < keys.size(); i += 1000) {
      std::string xml = "<Delete><Quiet>true</Quiet>";
      for (size_t j = i; j < std::min(keys.size(), i + 1000); ++j) {
        VMB_RETURN_IF_ERROR(ValidateKey(keys[j]));
        xml += "<Object><Key>" + XmlEscape(s_.prefix + keys[j]) + "</Key></Object>";
      }
      xml += "</Delete>";
      auto c = NewCall("POST", "");
      c->query = {{"delete", ""}};
      c->headers = {{"Content-MD5", Md5Base64(xml)}, {"Content-Type", "application/xml"}};
      c->body = std::make_shared<const std::string>(xml);
      c->body_length = xml.size();
      c->max_body = kMaxListBody;
      VMB_ASSIGN_OR_RETURN(http::Response r, Sync(c));
      auto errors = ParseDeleteObjectsResult(r.body);
      if (!errors.ok()) return errors.status().WithContext("S3 DeleteObjects on " + Describe());
      if (!errors->empty()) {
        const S3ErrorBody& e = errors->front();
        return UnknownError("S3 DeleteObjects on " + Describe() + " failed for " +
                            ServerText(e.key) + ": " + ServerText(e.code, 64) + " " +
                            ServerText(e.message));
      }
    }
    return Status::Ok();
  }

  // A one-key listing: proves the endpoint, credentials and bucket. First contact: retried for
  // kConnectDeadline at most, so a server that is down fails fast.
  Status Check() {
    return ListWith("", "", 1, s_.retry.WithDeadlineAtMost(kConnectDeadline)).status();
  }
  Status Ping() override { return Check(); }

 private:
  enum class Conditional { kUnknown, kHonoured, kIgnored };

  S3Settings s_;
  S3TestHooks hooks_;
  Outage outage_;        // since when the server answered no request
  std::mutex probe_mu_;  // held while probing, so that concurrent callers wait for one probe
  Conditional conditional_ = Conditional::kUnknown;  // guarded by probe_mu_
  std::mutex timers_mu_;
  std::condition_variable timers_cv_;
  std::set<std::shared_ptr<boost::asio::steady_timer>> timers_;  // retries waiting; timers_mu_
  bool closing_ = false;                                         // guarded by timers_mu_
  http::Engine engine_;
};

}  // namespace

Status CheckS3EndpointIsSecure(std::string_view endpoint, bool allow_insecure_http) {
  if (allow_insecure_http || endpoint.rfind("http://", 0) != 0) return Status::Ok();
  return InvalidArgumentError(
      "backup-target setting: field 'endpoint' is a plain http:// URL, whose traffic (backup "
      "data, metadata and signed requests) anyone on the path can read and change; use https://, "
      "or set field 'allowInsecureHttp' to true to accept that");
}

StatusOr<std::unique_ptr<ObjectStore>> OpenS3Store(const S3StoreOptions& options,
                                                   std::shared_ptr<Runtime> runtime,
                                                   S3TestHooks hooks) {
  VMB_RETURN_IF_ERROR(CheckS3EndpointIsSecure(options.endpoint, options.allow_insecure_http));
  S3Settings s;
  std::string ep = options.endpoint;
  if (ep.empty()) ep = "https://s3." + options.region + ".amazonaws.com";
  auto sep = ep.find("://");
  if (sep == std::string::npos)
    return InvalidArgumentError("backup-target setting: field 'endpoint' has no scheme");
  s.scheme = ep.substr(0, sep);
  if (s.scheme != "https" && s.scheme != "http")
    return InvalidArgumentError(
        "backup-target setting: field 'endpoint' must start with http:// or https://");
  std::string rest = ep.substr(sep + 3);
  auto slash = rest.find('/');
  std::string host = rest.substr(0, slash);
  if (slash != std::string::npos && rest.substr(slash) != "/")
    return InvalidArgumentError(
        "backup-target setting: field 'endpoint' must not contain a path; use 'prefix'");
  if (host.empty())
    return InvalidArgumentError("backup-target setting: field 'endpoint' has no host");
  const std::string default_port = s.scheme == "https" ? ":443" : ":80";
  if (host.size() > default_port.size() &&
      host.compare(host.size() - default_port.size(), default_port.size(), default_port) == 0)
    host.resize(host.size() - default_port.size());
  s.host = host;
  if (options.virtual_hosted_style) {
    std::string name =
        host.substr(0, host.rfind(':') == std::string::npos ? host.size() : host.rfind(':'));
    bool is_ip = !name.empty() && (name.find_first_not_of("0123456789.") == std::string::npos ||
                                   name.front() == '[');
    if (is_ip)
      return InvalidArgumentError(
          "backup-target setting: field 'virtualHostedStyle' needs an endpoint with a DNS name "
          "(the "
          "bucket becomes a subdomain), not the IP address " +
          name);
  }
  s.bucket = options.bucket;
  s.region = options.region.empty() ? "us-east-1" : options.region;
  s.virtual_hosted = options.virtual_hosted_style;
  s.prefix = options.prefix.empty() ? "" : options.prefix + "/";
  s.creds.access_key_id = options.access_key_id;
  s.creds.secret_access_key = options.secret_access_key;
  auto env = [](const char* n) {
    const char* v = std::getenv(n);
    return std::string(v ? v : "");
  };
  if (s.creds.access_key_id.empty() && s.creds.secret_access_key.empty()) {
    s.creds.access_key_id = env("AWS_ACCESS_KEY_ID");
    s.creds.secret_access_key = env("AWS_SECRET_ACCESS_KEY");
    s.creds.session_token = env("AWS_SESSION_TOKEN");
  }
  if (s.creds.access_key_id.empty() || s.creds.secret_access_key.empty())
    return InvalidArgumentError(
        "backup-target setting: fields 'accessKeyId' and 'secretAccessKey' are required for an s3 "
        "target "
        "(or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment)");
  s.retry = options.retry;
  http::EngineOptions eo;
  eo.max_connections = options.max_connections > 0 ? options.max_connections : 16;
  eo.ca_pem = options.ca_pem;
  eo.verify_tls = options.verify_tls;
  auto store =
      std::make_unique<S3Store>(std::move(runtime), std::move(s), std::move(eo), std::move(hooks));
  VMB_RETURN_IF_ERROR(store->Check());
  return std::unique_ptr<ObjectStore>(std::move(store));
}

}  // namespace vmbackup::internal
