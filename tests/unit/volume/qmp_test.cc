// QmpClient against a scripted fake QEMU on a unix socket: what a hostile or broken monitor can
// send (no greeting, garbage, events between replies, replies to other ids, errors, a line that
// never ends, silence, a closed connection) gives a clear error, never a crash or a hang.
#include "volume/qmp.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <string>
#include <thread>

#include "core/impl_access.h"
#include "core/runtime.h"
#include "support/test_util.h"

namespace vmbackup::internal {
namespace {

using std::chrono::milliseconds;
using ::vmbackup::testing::TempDir;

// A one-connection server: `script(fd)` talks to the client.
class FakeQemu {
 public:
  FakeQemu(const std::string& path, std::function<void(int)> script) : path_(path) {
    listen_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
    EXPECT_EQ(::bind(listen_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(listen_, 1), 0);
    thread_ = std::thread([this, script] {
      const int fd = ::accept(listen_, nullptr, nullptr);
      if (fd < 0) return;
      script(fd);
      ::close(fd);
    });
  }
  ~FakeQemu() {
    ::shutdown(listen_, SHUT_RDWR);
    ::close(listen_);
    thread_.join();
  }

 private:
  std::string path_;
  int listen_ = -1;
  std::thread thread_;
};

void Send(int fd, const std::string& s) {
  ASSERT_EQ(::write(fd, s.data(), s.size()), (ssize_t)s.size());
}
std::string ReadLine(int fd) {
  std::string l;
  char c;
  while (::read(fd, &c, 1) == 1 && c != '\n') l += c;
  return l;
}
const char* kGreeting = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n";

class QmpTest : public ::testing::Test {
 protected:
  boost::asio::io_context& io() { return ImplOf(Runtime::Default())->io(); }
  TempDir dir_;
  std::string sock_ = dir_.Sub("qmp.sock");
};

TEST_F(QmpTest, RepliesAreMatchedByIdPastEventsAndGarbage) {
  FakeQemu q(sock_, [](int fd) {
    Send(fd, kGreeting);
    ReadLine(fd);
    Send(fd, "{\"return\": {}, \"id\": 1}\n");
    ReadLine(fd);
    Send(fd, "not json at all\n{\"event\": \"JOB_STATUS_CHANGE\"}\n[1,2]\n");
    Send(fd, "{\"return\": {\"wrong\": 1}, \"id\": 77}\n{\"return\": {\"ok\": 2}, \"id\": 2}\n");
    ReadLine(fd);
    Send(fd, "{\"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"no node x\"}, \"id\": 3}\n");
    ReadLine(fd);
    Send(fd, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"busy\"}, \"id\": 4}\n");
    ReadLine(fd);
  });
  auto c = QmpClient::Connect(io(), sock_, milliseconds(5000));
  ASSERT_OK(c);
  auto r = (*c)->Execute("query-something");
  ASSERT_OK(r);
  EXPECT_EQ((*r)["ok"], 2);
  EXPECT_THAT((*c)->Execute("blockdev-del"), StatusIs(StatusCode::kNotFound, "no node x"));
  EXPECT_THAT((*c)->Execute("transaction"),
              StatusIs(StatusCode::kFailedPrecondition, "transaction: busy (QEMU GenericError)"));
}

TEST_F(QmpTest, ASocketThatIsNotQmpIsDataLoss) {
  FakeQemu q(sock_, [](int fd) { Send(fd, "220 smtp.example.org ESMTP\n"); });
  EXPECT_THAT(QmpClient::Connect(io(), sock_, milliseconds(5000)),
              StatusIs(StatusCode::kDataLoss, "did not greet with QMP"));
}

TEST_F(QmpTest, SilenceIsADeadlineAndTheConnectionIsNotReused) {
  FakeQemu q(sock_, [](int fd) {
    Send(fd, kGreeting);
    ReadLine(fd);
    Send(fd, "{\"return\": {}, \"id\": 1}\n");
    ReadLine(fd);  // never answers; waits for the client to go
    ReadLine(fd);
  });
  auto c = QmpClient::Connect(io(), sock_, milliseconds(5000));
  ASSERT_OK(c);
  EXPECT_THAT((*c)->Execute("query-jobs", nullptr, milliseconds(100)),
              StatusIs(StatusCode::kDeadlineExceeded, "did not answer in time"));
  EXPECT_THAT((*c)->Execute("query-jobs"), StatusIs(StatusCode::kUnavailable, "was lost"));
}

TEST_F(QmpTest, AClosedConnectionIsUnavailable) {
  FakeQemu q(sock_, [](int fd) {
    Send(fd, kGreeting);
    ReadLine(fd);
    Send(fd, "{\"return\": {}, \"id\": 1}\n");
    ReadLine(fd);
  });
  auto c = QmpClient::Connect(io(), sock_, milliseconds(5000));
  ASSERT_OK(c);
  EXPECT_THAT((*c)->Execute("query-block"), StatusIs(StatusCode::kUnavailable, "lost"));
}

TEST_F(QmpTest, ALineLongerThanTheBoundIsDataLoss) {
  FakeQemu q(sock_, [](int fd) {
    Send(fd, kGreeting);
    ReadLine(fd);
    Send(fd, "{\"return\": {}, \"id\": 1}\n");
    ReadLine(fd);
    std::string chunk(1 << 20, 'x');
    for (size_t sent = 0; sent <= QmpClient::kMaxLine; sent += chunk.size())
      if (::write(fd, chunk.data(), chunk.size()) <= 0) return;
  });
  auto c = QmpClient::Connect(io(), sock_, milliseconds(5000));
  ASSERT_OK(c);
  EXPECT_THAT((*c)->Execute("query-block"), StatusIs(StatusCode::kDataLoss, "longer than 16 MiB"));
}

TEST_F(QmpTest, NoSocketIsUnavailableNamingIt) {
  EXPECT_THAT(QmpClient::Connect(io(), dir_.Sub("none.sock"), milliseconds(1000)),
              StatusIs(StatusCode::kUnavailable, "none.sock"));
}

}  // namespace
}  // namespace vmbackup::internal
