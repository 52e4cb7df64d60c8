// The S3 store against a server that lies (issue #9: trust nothing read from a target). A tiny
// HTTP/1.1 server on a loopback socket, run by threads of this test, answers the store's requests
// with what a broken or hostile endpoint (or anyone on the path of an http:// endpoint) could send:
// a huge Content-Length, a body far beyond what was asked, 200 with the whole object instead of
// 206, another range than asked, numbers that are not numbers, listings with foreign keys, and
// PUTs that ignore If-None-Match. The store must answer each with an error that names the object
// and must stop the transfer instead of buffering: the server records whether the client hung up
// before it had sent everything.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/runtime.h"
#include "store/s3/s3_store.h"
#include "support/test_util.h"
#include "target/store_factory.h"
#include "vmbackup/options.h"
#include "vmbackup/runtime.h"

namespace vmbackup::internal {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr uint64_t kMiB = 1024 * 1024;

struct FakeRequest {
  std::string method;
  std::string target;                          // path and query as sent
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

// One accepted connection of the fake server.
class FakeConn {
 public:
  explicit FakeConn(int fd) : fd_(fd) {}
  // Sends `s`; false when the client has gone.
  bool Send(std::string_view s) {
    while (!s.empty()) {
      ssize_t n = ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      s.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // Sends `n` filler bytes as they are (plain) or as HTTP chunks with the final empty chunk.
  // Returns how many body bytes went out before the client hung up (n when it never did).
  uint64_t Stream(uint64_t n, bool chunked) {
    static const std::string piece(64 * 1024, 'z');
    uint64_t sent = 0;
    while (sent < n) {
      const uint64_t k = std::min<uint64_t>(piece.size(), n - sent);
      if (chunked) {
        char head[32];
        std::snprintf(head, sizeof head, "%llx\r\n", static_cast<unsigned long long>(k));
        if (!Send(head)) return sent;
      }
      if (!Send(std::string_view(piece).substr(0, k))) return sent;
      if (chunked && !Send("\r\n")) return sent;
      sent += k;
    }
    if (chunked) Send("0\r\n\r\n");
    return sent;
  }

 private:
  int fd_;
};

// A loopback HTTP/1.1 server: each connection on its own thread, requests answered one after the
// other by `handler`, which writes the whole answer and returns false to close the connection.
class FakeHttpServer {
 public:
  using Handler = std::function<bool(const FakeRequest&, FakeConn&)>;

  explicit FakeHttpServer(Handler handler) : handler_(std::move(handler)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (listen_fd_ < 0 ||
        ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listen_fd_, 16) != 0) {
      ADD_FAILURE() << "cannot listen on 127.0.0.1";
      return;
    }
    socklen_t len = sizeof addr;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }

  ~FakeHttpServer() {
    stopping_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    if (accept_thread_.joinable()) accept_thread_.join();
    ::close(listen_fd_);
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> l(mu_);
      for (int fd : open_fds_) ::shutdown(fd, SHUT_RDWR);
      threads.swap(threads_);
    }
    for (auto& t : threads) t.join();
  }

  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }

  // "METHOD target" of every request so far.
  std::vector<std::string> requests() const {
    std::lock_guard<std::mutex> l(mu_);
    return requests_;
  }

 private:
  void AcceptLoop() {
    while (!stopping_) {
      int fd = ::accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) {
        if (stopping_) return;
        continue;
      }
      std::lock_guard<std::mutex> l(mu_);
      open_fds_.insert(fd);
      threads_.emplace_back([this, fd] { Serve(fd); });
    }
  }

  void Serve(int fd) {
    std::string buf;
    FakeConn conn(fd);
    while (true) {
      FakeRequest req;
      if (!ReadRequest(fd, &buf, &req)) break;
      {
        std::lock_guard<std::mutex> l(mu_);
        requests_.push_back(req.method + " " + req.target);
      }
      if (!handler_(req, conn)) break;
    }
    std::lock_guard<std::mutex> l(mu_);
    open_fds_.erase(fd);
    ::close(fd);
  }

  // Reads one request (head and Content-Length body) from `fd`; `buf` keeps what was read ahead.
  static bool ReadRequest(int fd, std::string* buf, FakeRequest* req) {
    size_t end;
    while ((end = buf->find("\r\n\r\n")) == std::string::npos) {
      if (!ReadSome(fd, buf) || buf->size() > 1 * kMiB) return false;
    }
    const std::string head = buf->substr(0, end);
    buf->erase(0, end + 4);
    size_t line_end = head.find("\r\n");
    const std::string first = head.substr(0, line_end);
    const size_t sp1 = first.find(' '), sp2 = first.rfind(' ');
    if (sp1 == std::string::npos || sp2 <= sp1) return false;
    req->method = first.substr(0, sp1);
    req->target = first.substr(sp1 + 1, sp2 - sp1 - 1);
    while (line_end != std::string::npos && line_end < head.size()) {
      const size_t next = head.find("\r\n", line_end + 2);
      const std::string line = head.substr(
          line_end + 2, next == std::string::npos ? std::string::npos : next - line_end - 2);
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        const size_t v = line.find_first_not_of(' ', colon + 1);
        req->headers[name] = v == std::string::npos ? "" : line.substr(v);
      }
      line_end = next;
    }
    const size_t body_len =
        req->headers.count("content-length") ? std::stoul(req->headers["content-length"]) : 0;
    while (buf->size() < body_len)
      if (!ReadSome(fd, buf)) return false;
    req->body = buf->substr(0, body_len);
    buf->erase(0, body_len);
    return true;
  }

  static bool ReadSome(int fd, std::string* buf) {
    char tmp[16384];
    ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) return false;
    buf->append(tmp, static_cast<size_t>(n));
    return true;
  }

  Handler handler_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread accept_thread_;
  mutable std::mutex mu_;
  std::set<int> open_fds_;
  std::vector<std::thread> threads_;
  std::vector<std::string> requests_;
};

// What became of the oversized bodies a handler streamed: whether the client hung up before the
// end. Handlers run on server threads and may end after the store call returned (the server
// notices a closed connection only at its next send), so the test waits for the first one.
class StreamRecord {
 public:
  // `conn` streams `total` bytes of body (as chunks when `chunked`); records how far it got.
  void Stream(FakeConn& conn, uint64_t total, bool chunked) {
    const uint64_t sent = conn.Stream(total, chunked);
    std::lock_guard<std::mutex> l(mu_);
    results_.push_back(sent < total);
    cv_.notify_all();
  }
  // True when the client hung up during the first stream. Waits for it to end (the deadline
  // only guards against a hang; it is not what is tested).
  bool FirstWasCut() {
    std::unique_lock<std::mutex> l(mu_);
    if (!cv_.wait_for(l, std::chrono::seconds(120), [&] { return !results_.empty(); })) {
      ADD_FAILURE() << "the server never finished streaming";
      return false;
    }
    return results_.front();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<bool> results_;
};

bool Answer(FakeConn& conn, const std::string& status, const std::string& headers,
            const std::string& body) {
  return conn.Send("HTTP/1.1 " + status + "\r\n" + headers +
                   "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
}

bool EmptyListing(FakeConn& conn) {
  return Answer(conn, "200 OK", "",
                "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>");
}

bool IsListing(const FakeRequest& r) {
  return r.method == "GET" && r.target.find("list-type=2") != std::string::npos;
}

class S3HostileServerTest : public ::testing::Test {
 protected:
  // A store on `server` (bucket "b", no prefix) with a short retry budget: answers the store
  // would retry (connection cut, 5xx) fail within about 2 s.
  StatusOr<std::unique_ptr<ObjectStore>> Open(const FakeHttpServer& server) {
    TargetConfig c;
    c.type = TargetConfig::Type::kS3;
    c.endpoint = server.endpoint();
    c.allow_insecure_http = true;
    c.bucket_name = "b";
    c.bucket_region = "us-east-1";
    c.access_key_id = "AKIDEXAMPLE";
    c.secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    TargetOptions o;
    o.retry_timeout_seconds = 2;
    return OpenS3Store(c, o, Runtime::Default());
  }
};

// Content-Length: 1 TiB for a whole-object read: refused from the header, before any body byte
// is kept (the old code read on until the server closed, then retried the same).
TEST_F(S3HostileServerTest, WholeObjectGetWithHugeContentLengthIsDataLossNamingItsSize) {
  StreamRecord record;
  FakeHttpServer server([&](const FakeRequest& r, FakeConn& conn) {
    if (IsListing(r)) return EmptyListing(conn);
    if (!conn.Send("HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n")) return false;
    record.Stream(conn, 96 * kMiB, false);
    return false;
  });
  auto store = Open(server);
  ASSERT_OK(store);
  auto got = (*store)->Get("packs/obj");
  EXPECT_THAT(got, StatusIs(StatusCode::kDataLoss, "packs/obj"));
  EXPECT_THAT(got.status().message(), HasSubstr("1099511627776"));
  EXPECT_TRUE(record.FirstWasCut()) << "the client read all 96 MiB the server sent";
}

// A chunked body (no Content-Length) that goes on past kMaxWholeObjectRead: the transfer is
// stopped at the bound (the old code buffered all of it and returned it).
TEST_F(S3HostileServerTest, WholeObjectGetOfBodyBeyondTheBoundStopsTheTransfer) {
  StreamRecord record;
  FakeHttpServer server([&](const FakeRequest& r, FakeConn& conn) {
    if (IsListing(r)) return EmptyListing(conn);
    if (!conn.Send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")) return false;
    record.Stream(conn, kMaxWholeObjectRead + 32 * kMiB, true);
    return false;
  });
  auto store = Open(server);
  ASSERT_OK(store);
  auto got = (*store)->Get("records/big.json");
  EXPECT_THAT(got, StatusIs(StatusCode::kDataLoss, "records/big.json"));
  EXPECT_THAT(got.status().message(), HasSubstr(std::to_string(kMaxWholeObjectRead)));
  EXPECT_TRUE(record.FirstWasCut()) << "the whole oversized body was received";
}

// A ranged GET answered with 200 and the whole (large) object, as by a server that ignores Range:
// the old code buffered the object and cut the range out of it.
TEST_F(S3HostileServerTest, RangedGetAnsweredWithTheWholeLargeObjectIsRefusedWithoutBuffering) {
  StreamRecord record;
  FakeHttpServer server([&](const FakeRequest& r, FakeConn& conn) {
    if (IsListing(r)) return EmptyListing(conn);
    const uint64_t size = 96 * kMiB;
    if (!conn.Send("HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(size) + "\r\n\r\n"))
      return false;
    record.Stream(conn, size, false);
    return false;
  });
  auto store = Open(server);
  ASSERT_OK(store);
  auto got = (*store)->Get("packs/p1", 8 * kMiB, kMiB);
  EXPECT_THAT(got, StatusIs(StatusCode::kDataLoss, "packs/p1"));
  EXPECT_TRUE(record.FirstWasCut()) << "the whole object was received for a 1 MiB range";
}

// A 206 whose Content-Range is not the range asked for: the bytes are of another place in the
// object (the old code returned them).
TEST_F(S3HostileServerTest, RangedGetAnsweredWithAnotherRangeIsDataLoss) {
  FakeHttpServer server([&](const FakeRequest& r, FakeConn& conn) {
    if (IsListing(r)) return EmptyListing(conn);
    return Answer(conn, "206 Partial Content", "Content-Range: bytes 0-1023/4096\r\n",
                  std::string(1024, 'a'));
  });
  auto store = Open(server);
  ASSERT_OK(store);
  EXPECT_THAT((*store)->Get("packs/p1", 1024, 1024),
              StatusIs(StatusCode::kDataLoss, "Content-Range"));
}

// An error answer (404) with a body that never ends: cut at the error-body bound and still
// reported as the 404 it is (the old code buffered the whole body first).
TEST_F(S3HostileServerTest, ErrorAnswerWithEndlessBodyIsCutAndMappedByItsStatus) {
  StreamRecord record;
  FakeHttpServer server([&](const FakeRequest& r, FakeConn& conn) {
    if (IsListing(r)) return EmptyListing(conn);
    if (!conn.Send("HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n")) return false;
    record.Stream(conn, 64 * kMiB, true);
    return false;
  });
  auto store = Open(server);
  ASSERT_OK(store);
  EXPECT_THAT((*store)->Get("records/x.json"), StatusIs(StatusCode::kNotFound, "records/x.json"));
  EXPECT_TRUE(record.FirstWasCut()) << "64 MiB of error body were received";
}

// 270 KiB of response headers (under curl's own 300 KiB limit) were all kept in the header map.
TEST_F(S3HostileServerTest, AnswerWithFloodOfHeadersIsDataLossNotKept) {
  FakeHttpServer server([&](const FakeRequest& r, FakeConn& conn) {
    if (IsListing(r)) return EmptyListing(conn);
    std::string headers;
    for (int i = 0; headers.size() < 270 * 1024; ++i)
      headers += "X-Flood-" + std::to_string(i) + ": " + std::string(100, 'f') + "\r\n";
    return Answer(conn, "200 OK", headers, "x");
  });
  auto store = Open(server);
  ASSERT_OK(store);
  EXPECT_THAT((*store)->Get("records/a.json"),
              StatusIs(StatusCode::kDataLoss, "headers exceed 262144 bytes"));
}

// std::stoull on Content-Length threw out_of_range (a crash for a program that does not catch)
// or read "12abc" as 12.
TEST_F(S3HostileServerTest, HeadWithContentLengthThatIsNotANumberIsDataLossNamingTheHeader) {
  std::string length;
  std::mutex mu;
  FakeHttpServer server([&](const FakeRequest& r, FakeConn& conn) {
    if (IsListing(r)) return EmptyListing(conn);
    std::lock_guard<std::mutex> l(mu);
    return conn.Send("HTTP/1.1 200 OK\r\nContent-Length: " + length + "\r\n\r\n");
  });
  auto store = Open(server);
  ASSERT_OK(store);
  for (const char* bad : {"99999999999999999999999", "12abc"}) {
    SCOPED_TRACE(bad);
    {
      std::lock_guard<std::mutex> l(mu);
      length = bad;
    }
    EXPECT_THAT((*store)->Head("records/a.json"),
                StatusIs(StatusCode::kDataLoss, "Content-Length"));
  }
}

// A listing of "records/" that holds a key elsewhere: the old code passed it on.
TEST_F(S3HostileServerTest, ListingWithKeyOutsideThePrefixIsDataLossNamingTheKey) {
  FakeHttpServer server([&](const FakeRequest& r, FakeConn& conn) {
    if (IsListing(r) && r.target.find("prefix=records%2F") != std::string::npos) {
      return Answer(conn, "200 OK", "",
                    "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>"
                    "repository.json</Key><Size>10</Size></Contents></ListBucketResult>");
    }
    if (IsListing(r)) return EmptyListing(conn);
    return Answer(conn, "404 Not Found", "", "");
  });
  auto store = Open(server);
  ASSERT_OK(store);
  EXPECT_THAT((*store)->List("records/", "", 1000),
              StatusIs(StatusCode::kDataLoss, "'repository.json'"));
}

// std::stoull on <Size> threw invalid_argument.
TEST_F(S3HostileServerTest, ListingWithSizeThatIsNotANumberIsDataLossNamingTheKey) {
  FakeHttpServer server([&](const FakeRequest& r, FakeConn& conn) {
    if (IsListing(r) && r.target.find("prefix=records%2F") != std::string::npos) {
      return Answer(conn, "200 OK", "",
                    "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>"
                    "records/a.json</Key><Size>many</Size></Contents></ListBucketResult>");
    }
    if (IsListing(r)) return EmptyListing(conn);
    return Answer(conn, "404 Not Found", "", "");
  });
  auto store = Open(server);
  ASSERT_OK(store);
  EXPECT_THAT((*store)->List("records/", "", 1000),
              StatusIs(StatusCode::kDataLoss, "<Size> of key 'records/a.json'"));
}

// A server that accepts every PUT, If-None-Match: * or not: a create-if-absent there could
// silently replace another writer's record. The store finds out with a probe and refuses.
TEST_F(S3HostileServerTest, IfAbsentPutIsRefusedWhenTheServerIgnoresIfNoneMatch) {
  FakeHttpServer server([&](const FakeRequest& r, FakeConn& conn) {
    if (IsListing(r)) return EmptyListing(conn);
    if (r.method == "PUT") return Answer(conn, "200 OK", "", "");
    if (r.method == "DELETE") return Answer(conn, "204 No Content", "", "");
    if (r.method == "POST" && r.target.find("delete") != std::string::npos)
      return Answer(conn, "200 OK", "", "<DeleteResult></DeleteResult>");
    return Answer(conn, "404 Not Found", "", "");
  });
  auto store = Open(server);
  ASSERT_OK(store);
  Status st = (*store)->Put("records/b1.json", "{}", PutOptions{true, true});
  EXPECT_THAT(
      st, StatusIs(StatusCode::kFailedPrecondition, "the S3 server does not honour If-None-Match"));
  EXPECT_THAT(st.message(), HasSubstr("two writers could overwrite each other"));
  // The record was never sent; the probe went under probe/ and was deleted.
  std::vector<std::string> log = server.requests();
  bool probed = false, probe_deleted = false;
  for (const auto& line : log) {
    EXPECT_THAT(line, Not(HasSubstr("records/b1.json")));
    probed = probed || line.rfind("PUT /b/probe/", 0) == 0;
    probe_deleted = probe_deleted || line.rfind("POST /b?delete", 0) == 0 ||
                    line.rfind("DELETE /b/probe/", 0) == 0;
  }
  EXPECT_TRUE(probed) << ::testing::PrintToString(log);
  EXPECT_TRUE(probe_deleted) << ::testing::PrintToString(log);
  // The answer is kept: the next create-if-absent is refused without probing again; plain puts
  // still work.
  const size_t before = server.requests().size();
  EXPECT_THAT((*store)->Put("records/b2.json", "{}", PutOptions{true, true}),
              StatusIs(StatusCode::kFailedPrecondition, "If-None-Match"));
  EXPECT_EQ(server.requests().size(), before);
  EXPECT_OK((*store)->Put("packs/x", "data", PutOptions{}));
}

}  // namespace
}  // namespace vmbackup::internal

namespace vmbackup::internal {
namespace {

// First contact (issue #10): a target that does not answer when it is opened, or when a job starts
// (ObjectStore::Ping), fails within kConnectDeadline although the retry budget of operations is
// the default 120 s; an outage in the middle of a job keeps the full budget.
class S3FirstContactTest : public ::testing::Test {
 protected:
  TargetConfig Config(const std::string& endpoint) {
    TargetConfig c;
    c.type = TargetConfig::Type::kS3;
    c.endpoint = endpoint;
    c.allow_insecure_http = true;
    c.bucket_name = "b";
    c.bucket_region = "us-east-1";
    c.access_key_id = "AKIDEXAMPLE";
    c.secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    return c;
  }
  static double Since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

TEST_F(S3FirstContactTest, OpeningAServerThatIsDownFailsWithinTheConnectDeadline) {
  // A port nobody listens on: every attempt is refused (a transient failure, retried).
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  const auto t0 = std::chrono::steady_clock::now();
  auto store = OpenS3Store(Config("http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port))),
                           TargetOptions{}, Runtime::Default());
  const double secs = Since(t0);
  EXPECT_THAT(store, StatusIs(StatusCode::kUnavailable, "127.0.0.1"));
  // The operations' budget is 120 s; the first contact gives up after kConnectDeadline (10 s).
  EXPECT_LT(secs, 30) << "first contact kept retrying for the whole operation budget";
}

TEST_F(S3FirstContactTest, PingFailsFastButAnOperationKeepsItsFullBudget) {
  std::atomic<bool> down{false};
  FakeHttpServer server([&](const FakeRequest& r, FakeConn& conn) {
    if (!down && IsListing(r)) return EmptyListing(conn);
    return Answer(conn, "503 Service Unavailable", "", "");
  });
  TargetOptions o;
  o.retry_timeout_seconds = 14;
  auto store = OpenS3Store(Config(server.endpoint()), o, Runtime::Default());
  ASSERT_OK(store);
  down = true;
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_THAT((*store)->Ping(), StatusIs(StatusCode::kUnavailable, ""));
  EXPECT_LT(Since(t0), 13) << "Ping used the operations' budget, not the connect deadline";
  // The server answers again (the outage is over), then stops: an operation retries for its own
  // full budget, not for the connect deadline.
  down = false;
  ASSERT_OK((*store)->List("records/", "", 1));
  down = true;
  t0 = std::chrono::steady_clock::now();
  EXPECT_THAT((*store)->Head("records/x.json"), StatusIs(StatusCode::kUnavailable, ""));
  EXPECT_GT(Since(t0), 11) << "an operation gave up at the connect deadline";
  // The server has now answered nothing for the whole budget: the next operation fails after one
  // attempt instead of waiting out another 14 s, and says why.
  t0 = std::chrono::steady_clock::now();
  auto again = (*store)->Head("records/y.json");
  EXPECT_THAT(again, StatusIs(StatusCode::kUnavailable, "answered no request for"));
  EXPECT_LT(Since(t0), 3) << "a queued operation waited out another full budget";
}

// A store closed while a request waits to retry (the server answers 503): the request's callback
// runs once, with kUnavailable naming the close, before the store's destructor returns; no retry
// timer fires into the freed store (ASan would see it).
TEST_F(S3FirstContactTest, ClosingTheStoreEndsRequestsWaitingToRetry) {
  std::atomic<bool> down{false};
  FakeHttpServer server([&](const FakeRequest& r, FakeConn& conn) {
    if (!down && IsListing(r)) return EmptyListing(conn);
    return Answer(conn, "503 Service Unavailable", "", "");
  });
  TargetOptions o;
  o.retry_timeout_seconds = 60;
  auto store = OpenS3Store(Config(server.endpoint()), o, Runtime::Default());
  ASSERT_OK(store);
  down = true;
  std::atomic<int> calls{0};
  Status got;
  std::mutex mu;
  // PutAsync: S3's own async form (GetAsync runs the blocking Get on the blocking pool, and a
  // store must not be destroyed under a running blocking call).
  auto body = std::make_shared<const std::string>("x");
  for (int i = 0; i < 4; ++i) {
    (*store)->PutAsync("records/x" + std::to_string(i) + ".json", body, PutOptions{},
                       [&](Status st) {
                         std::lock_guard<std::mutex> l(mu);
                         got = st;
                         ++calls;
                       });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(400));  // a few 503s and retries
  EXPECT_EQ(calls.load(), 0) << "the requests should still be retrying";
  const auto t0 = std::chrono::steady_clock::now();
  store->reset();
  EXPECT_LT(Since(t0), 5) << "closing waited out the retry budget";
  EXPECT_EQ(calls.load(), 4);
  std::lock_guard<std::mutex> l(mu);
  EXPECT_EQ(got.code(), StatusCode::kUnavailable) << got.ToString();
}

// A store closed while its requests are in flight (the server holds them unanswered): each
// callback runs once with kUnavailable naming the close, not an unknown "HTTP 0".
TEST_F(S3FirstContactTest, ClosingTheStoreEndsRequestsInFlight) {
  std::atomic<bool> down{false}, release{false};
  std::atomic<int> held{0};
  FakeHttpServer server([&](const FakeRequest& r, FakeConn& conn) {
    if (!down && IsListing(r)) return EmptyListing(conn);
    ++held;
    while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return false;
  });
  TargetOptions o;
  o.retry_timeout_seconds = 60;
  auto store = OpenS3Store(Config(server.endpoint()), o, Runtime::Default());
  ASSERT_OK(store);
  down = true;
  std::mutex mu;
  std::vector<Status> got;
  auto body = std::make_shared<const std::string>("x");
  for (int i = 0; i < 3; ++i) {
    (*store)->PutAsync("records/f" + std::to_string(i) + ".json", body, PutOptions{},
                       [&](Status st) {
                         std::lock_guard<std::mutex> l(mu);
                         got.push_back(st);
                       });
  }
  for (int i = 0; i < 400 && held.load() < 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(held.load(), 3) << "the server never saw the three requests";
  store->reset();
  release = true;
  std::lock_guard<std::mutex> l(mu);
  ASSERT_EQ(got.size(), 3u);
  for (const Status& st : got) EXPECT_THAT(st, StatusIs(StatusCode::kUnavailable, "was in flight"));
}

}  // namespace
}  // namespace vmbackup::internal
