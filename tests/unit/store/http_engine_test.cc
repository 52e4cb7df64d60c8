// The HTTP engine of the S3 store (src/store/s3/http.h) on its own, against a loopback server run
// by ONE thread of this test (poll()), so that the threads of the process stay countable: the
// engine drives curl on the Runtime's io_context and starts no thread of its own (issue #10);
// Submit() works from inside a completion callback; destroying the engine with requests in flight
// completes each callback exactly once, with an error, before the destructor returns.
#include "store/s3/http.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/runtime.h"
#include "vmbackup/runtime.h"

namespace vmbackup::internal::http {
namespace {

using Clock = std::chrono::steady_clock;

// Entries of /proc/self/task: the threads of this process.
int ThreadCount() {
  DIR* d = ::opendir("/proc/self/task");
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n;
}

// A keep-alive HTTP/1.1 server on 127.0.0.1 served by one thread. Every request (no body) is
// answered "200 OK" with its request target as the body, `delay` after it arrived; with
// `answer == false` nothing is ever answered (the requests stay in flight).
class PollServer {
 public:
  PollServer(std::chrono::milliseconds delay, bool answer) : delay_(delay), answer_(answer) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (listen_fd_ < 0 ||
        ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listen_fd_, 128) != 0 || ::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
      ADD_FAILURE() << "cannot listen on 127.0.0.1";
      return;
    }
    socklen_t len = sizeof addr;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Loop(); });
  }
  ~PollServer() {
    stopping_ = true;
    if (::write(wake_[1], "x", 1) < 0) ADD_FAILURE() << "cannot wake the server";
    if (thread_.joinable()) thread_.join();
    for (auto& [fd, c] : conns_) ::close(fd);
    ::close(listen_fd_);
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

  std::string Url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }
  // Requests received so far.
  int received() const { return received_; }

 private:
  struct Conn {
    std::string in;
    std::vector<std::pair<Clock::time_point, std::string>> due;  // answers not yet sent
  };

  void Loop() {
    while (!stopping_) {
      std::vector<pollfd> fds = {{listen_fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
      auto next = Clock::time_point::max();
      for (auto& [fd, c] : conns_) {
        fds.push_back({fd, POLLIN, 0});
        for (auto& d : c.due) next = std::min(next, d.first);
      }
      int timeout = -1;
      if (next != Clock::time_point::max()) {
        const auto ms =
            std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count();
        timeout = static_cast<int>(std::max<int64_t>(0, ms + 1));
      }
      ::poll(fds.data(), fds.size(), timeout);
      if (fds[0].revents & POLLIN) {
        int fd;
        while ((fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC)) >= 0) conns_[fd];
      }
      for (size_t i = 2; i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        char buf[4096];
        const ssize_t n = ::recv(fds[i].fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0) {
          ::close(fds[i].fd);
          conns_.erase(fds[i].fd);
          continue;
        }
        Conn& c = conns_[fds[i].fd];
        c.in.append(buf, static_cast<size_t>(n));
        size_t end;
        while ((end = c.in.find("\r\n\r\n")) != std::string::npos) {
          const std::string head = c.in.substr(0, end);
          c.in.erase(0, end + 4);
          ++received_;
          const size_t sp1 = head.find(' '), sp2 = head.find(' ', sp1 + 1);
          const std::string target = head.substr(sp1 + 1, sp2 - sp1 - 1);
          if (answer_) {
            c.due.emplace_back(Clock::now() + delay_, "HTTP/1.1 200 OK\r\nContent-Length: " +
                                                          std::to_string(target.size()) +
                                                          "\r\n\r\n" + target);
          }
        }
      }
      const auto now = Clock::now();
      for (auto& [fd, c] : conns_) {
        while (!c.due.empty() && c.due.front().first <= now) {
          // Answers are small: a blocking-enough send of the whole text.
          const std::string& s = c.due.front().second;
          size_t off = 0;
          while (off < s.size()) {
            const ssize_t k = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
            if (k <= 0) break;
            off += static_cast<size_t>(k);
          }
          c.due.erase(c.due.begin());
        }
      }
    }
  }

  const std::chrono::milliseconds delay_;
  const bool answer_;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> received_{0};
  std::map<int, Conn> conns_;  // server thread only
  std::thread thread_;
};

// Counts completions and wakes a waiter when `expected` have arrived.
class Completions {
 public:
  void Add(const std::string& key, const Response& r) {
    std::lock_guard<std::mutex> l(mu_);
    ++count_[key];
    responses_.push_back(r);
    cv_.notify_all();
  }
  bool WaitFor(size_t n, std::chrono::seconds limit = std::chrono::seconds(60)) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, limit, [&] { return responses_.size() >= n; });
  }
  std::map<std::string, int> counts() const {
    std::lock_guard<std::mutex> l(mu_);
    return count_;
  }
  std::vector<Response> responses() const {
    std::lock_guard<std::mutex> l(mu_);
    return responses_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, int> count_;
  std::vector<Response> responses_;
};

// Waits until `done` holds `n` responses, sampling the thread count every millisecond meanwhile;
// returns the larger of `most` and every sample.
int WaitSamplingThreads(Completions& done, size_t n, int most) {
  while (!done.WaitFor(n, std::chrono::seconds(0))) {
    most = std::max(most, ThreadCount());
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return most;
}

Request Get(const std::string& url) {
  Request r;
  r.method = "GET";
  r.url = url;
  r.timeout_ms = 60000;
  return r;
}

std::shared_ptr<Runtime> TwoIoThreads() {
  RuntimeOptions o;
  o.worker_threads = 2;
  o.blocking_threads = 1;
  o.io_threads = 2;  // the engine must serialize curl itself (strand)
  return Runtime::Create(o);
}

TEST(HttpEngineTest, StartsNoThreadEvenWithManyRequestsInFlight) {
  auto rt = TwoIoThreads();
  PollServer server(std::chrono::milliseconds(30), true);
  // Give the Runtime's pools time to have started every thread; they exist before the baseline.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const int baseline = ThreadCount();
  ASSERT_GT(baseline, 0);
  int most = baseline;
  {
    EngineOptions eo;
    eo.max_connections = 8;
    Engine engine(rt, eo);
    most = std::max(most, ThreadCount());
    constexpr int kRequests = 200;
    Completions done;
    for (int i = 0; i < kRequests; ++i) {
      const std::string path = "/r" + std::to_string(i);
      engine.Submit(Get(server.Url(path)), [&done, path](Response r) { done.Add(path, r); });
      if (i % 16 == 0) most = std::max(most, ThreadCount());
    }
    // Sample while the burst is in flight.
    most = WaitSamplingThreads(done, kRequests, most);
    for (const Response& r : done.responses()) {
      EXPECT_EQ(r.curl_code, 0) << r.curl_error;
      EXPECT_EQ(r.status, 200);
    }
    const auto counts = done.counts();
    EXPECT_EQ(counts.size(), static_cast<size_t>(kRequests));
    for (const auto& [path, n] : counts) EXPECT_EQ(n, 1) << path;
    most = std::max(most, ThreadCount());
  }
  EXPECT_LE(most, baseline) << "the engine started a thread of its own";
  EXPECT_LE(ThreadCount(), baseline);
}

TEST(HttpEngineTest, SubmitFromInsideACompletionCallbackWorks) {
  auto rt = TwoIoThreads();
  PollServer server(std::chrono::milliseconds(0), true);
  Engine engine(rt, EngineOptions{});
  constexpr int kChain = 20;
  std::promise<std::vector<std::string>> bodies;
  auto got = std::make_shared<std::vector<std::string>>();
  // Each completion submits the next request from inside its callback, as S3 retries do.
  std::function<void(int)> next = [&](int i) {
    engine.Submit(Get(server.Url("/chain/" + std::to_string(i))), [&, i](Response r) {
      got->push_back(r.curl_code == 0 ? r.body : "error: " + r.curl_error);
      if (i + 1 < kChain) {
        next(i + 1);
      } else {
        bodies.set_value(*got);
      }
    });
  };
  next(0);
  auto f = bodies.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  const std::vector<std::string> b = f.get();
  ASSERT_EQ(b.size(), static_cast<size_t>(kChain));
  for (int i = 0; i < kChain; ++i) EXPECT_EQ(b[i], "/chain/" + std::to_string(i));
}

TEST(HttpEngineTest, ACallbackThatThrowsDoesNotStopTheEngine) {
  auto rt = TwoIoThreads();
  PollServer server(std::chrono::milliseconds(0), true);
  Engine engine(rt, EngineOptions{});
  Completions done;
  for (int i = 0; i < 4; ++i) {
    engine.Submit(Get(server.Url("/throw")), [&done](Response r) {
      done.Add("/throw", r);
      throw std::runtime_error("callback failed");
    });
  }
  ASSERT_TRUE(done.WaitFor(4));
  engine.Submit(Get(server.Url("/after")), [&done](Response r) { done.Add("/after", r); });
  ASSERT_TRUE(done.WaitFor(5));
  EXPECT_EQ(done.responses().back().body, "/after");
}

TEST(HttpEngineTest, DestroyingTheEngineFailsEachRequestInFlightExactlyOnce) {
  auto rt = TwoIoThreads();
  PollServer server(std::chrono::milliseconds(0), /*answer=*/false);
  EngineOptions eo;
  eo.max_connections = 4;  // the rest wait inside curl for a connection
  auto engine = std::make_unique<Engine>(rt, eo);
  Engine* raw = engine.get();
  constexpr int kRequests = 12;
  Completions done;
  for (int i = 0; i < kRequests; ++i) {
    const std::string path = "/hang/" + std::to_string(i);
    const std::string again = server.Url(path + "/again");
    engine->Submit(Get(server.Url(path)), [&done, raw, i, path, again](Response r) {
      done.Add(path, r);
      // A request submitted from a callback while the engine is being destroyed fails the same
      // way (and is waited for as well).
      if (i < 2) raw->Submit(Get(again), [&done, again](Response r2) { done.Add(again, r2); });
    });
  }
  // Wait until the connections are busy: requests really in flight, not only queued.
  const auto t0 = Clock::now();
  while (server.received() < 4 && Clock::now() - t0 < std::chrono::seconds(30))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_GE(server.received(), 4);
  EXPECT_TRUE(done.responses().empty());
  engine.reset();
  // The destructor returned only after every callback had run.
  auto counts = done.counts();
  EXPECT_EQ(counts.size(), static_cast<size_t>(kRequests + 2));
  for (const auto& [path, n] : counts) EXPECT_EQ(n, 1) << path;
  for (const Response& r : done.responses()) {
    EXPECT_EQ(r.curl_code, CURLE_ABORTED_BY_CALLBACK);
    EXPECT_FALSE(r.curl_error.empty());
  }
  // And none runs again later.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(done.responses().size(), static_cast<size_t>(kRequests + 2));
}

// Host names are looked up by the engine on the Runtime's blocking pool and handed to curl as
// CURLOPT_RESOLVE entries, so curl's threaded resolver never starts a thread. "s3.test" exists in
// no DNS: the requests reach the server only through the engine's lookup, which runs once for all
// of them (the answer is kept) and on a blocking-pool thread.
TEST(HttpEngineTest, HostNamesAreLookedUpOnTheRuntimeOnceAndStartNoThread) {
  auto rt = TwoIoThreads();
  PollServer server(std::chrono::milliseconds(5), true);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const int baseline = ThreadCount();
  std::atomic<int> lookups{0};
  std::atomic<bool> on_io_thread{false};
  int most = baseline;
  {
    EngineOptions eo;
    eo.max_connections = 4;
    eo.lookup = [&](const std::string& host, const std::string& port, std::string* error) {
      ++lookups;
      if (internal::ImplOf(rt)->io().get_executor().running_in_this_thread()) on_io_thread = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // requests queue meanwhile
      if (host != "s3.test") {
        *error = "unknown host " + host;
        return std::string();
      }
      return host + ":" + port + ":127.0.0.1";
    };
    Engine engine(rt, eo);
    const std::string url = server.Url("/named");
    const std::string named = "http://s3.test:" + url.substr(url.rfind(':') + 1);
    constexpr int kRequests = 40;
    Completions done;
    for (int i = 0; i < kRequests; ++i)
      engine.Submit(Get(named), [&done](Response r) { done.Add("named", r); });
    most = WaitSamplingThreads(done, kRequests, most);
    for (const Response& r : done.responses()) {
      EXPECT_EQ(r.curl_code, 0) << r.curl_error;
      EXPECT_EQ(r.status, 200);
      EXPECT_EQ(r.body, "/named");
    }
    EXPECT_EQ(lookups.load(), 1) << "one lookup serves every request to the host";
    EXPECT_FALSE(on_io_thread.load()) << "a lookup blocked the io_context";

    // A name the lookup does not know fails with curl's code for it and the lookup's words.
    Completions bad;
    engine.Submit(Get("http://nowhere.test:1/x"), [&bad](Response r) { bad.Add("bad", r); });
    ASSERT_TRUE(bad.WaitFor(1));
    EXPECT_EQ(bad.responses()[0].curl_code, CURLE_COULDNT_RESOLVE_HOST);
    EXPECT_NE(bad.responses()[0].curl_error.find("unknown host nowhere.test"), std::string::npos)
        << bad.responses()[0].curl_error;
    most = std::max(most, ThreadCount());
  }
  EXPECT_LE(most, baseline) << "a thread besides the Runtime's ran";
}

// A lookup that does not answer within the connect timeout fails its requests (they never wait
// without a deadline); destroying the engine while a lookup runs fails what waits for it.
TEST(HttpEngineTest, AHangingLookupFailsItsRequestsAfterTheConnectTimeout) {
  auto rt = TwoIoThreads();
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  EngineOptions eo;
  eo.connect_timeout_ms = 200;
  eo.lookup = [&](const std::string& host, const std::string& port, std::string*) {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return release; });
    return host + ":" + port + ":127.0.0.1";
  };
  Completions done, parked;  // outlive the engine: its destructor runs their callbacks
  {
    Engine engine(rt, eo);
    const auto t0 = Clock::now();
    engine.Submit(Get("http://slow.test:1/x"), [&done](Response r) { done.Add("slow", r); });
    ASSERT_TRUE(done.WaitFor(1, std::chrono::seconds(10)));
    const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
    EXPECT_EQ(done.responses()[0].curl_code, CURLE_OPERATION_TIMEDOUT);
    EXPECT_NE(
        done.responses()[0].curl_error.find("resolving host 'slow.test' took longer than 200"),
        std::string::npos)
        << done.responses()[0].curl_error;
    EXPECT_GE(waited, 0.19);
    EXPECT_LT(waited, 5.0);

    // Another request parks behind a new lookup; the engine goes away before it answers.
    engine.Submit(Get("http://slow2.test:1/x"), [&parked](Response r) { parked.Add("p", r); });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(parked.WaitFor(1, std::chrono::seconds(0))) << "the destructor ended the request";
  EXPECT_EQ(parked.responses()[0].curl_code, CURLE_ABORTED_BY_CALLBACK);
  {
    std::lock_guard<std::mutex> l(mu);
    release = true;  // let the blocked lookups end so the Runtime can join its pool
  }
  cv.notify_all();
}

}  // namespace
}  // namespace vmbackup::internal::http
