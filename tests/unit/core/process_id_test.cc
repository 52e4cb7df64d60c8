#include "core/process_id.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace vmbackup::internal {
namespace {

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  size_t from = 0, slash;
  while ((slash = s.find('/', from)) != std::string::npos) {
    out.push_back(s.substr(from, slash - from));
    from = slash + 1;
  }
  out.push_back(s.substr(from));
  return out;
}

TEST(ProcessIdTest, ThisProcessIsNamedAndNotGone) {
  const std::string me = ProcessIdentity();
  ASSERT_FALSE(me.empty()) << "/proc should tell on Linux";
  const auto parts = Split(me);
  ASSERT_EQ(parts.size(), 4u) << me;
  EXPECT_EQ(parts[2], std::to_string(::getpid()));
  EXPECT_FALSE(ProcessCertainlyGone(me));
}

TEST(ProcessIdTest, AnExitedChildIsGone) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string id = ProcessIdentity();
    (void)!::write(fds[1], id.data(), id.size());
    ::_exit(0);
  }
  ::close(fds[1]);
  char buf[256];
  const ssize_t n = ::read(fds[0], buf, sizeof buf);
  ::close(fds[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_GT(n, 0);
  const std::string child(buf, static_cast<size_t>(n));
  EXPECT_EQ(Split(child)[2], std::to_string(pid));
  EXPECT_TRUE(ProcessCertainlyGone(child)) << child;
}

TEST(ProcessIdTest, APidNowHeldByAnotherProcessIsGone) {
  // Our pid with another start time: the pid was reused by a later process.
  auto parts = Split(ProcessIdentity());
  ASSERT_EQ(parts.size(), 4u);
  const std::string reused = parts[0] + "/" + parts[1] + "/" + parts[2] + "/" + parts[3] + "1";
  EXPECT_TRUE(ProcessCertainlyGone(reused));
}

TEST(ProcessIdTest, AnythingItCannotBeSureOfIsNotGone) {
  auto parts = Split(ProcessIdentity());
  ASSERT_EQ(parts.size(), 4u);
  const std::string dead_pid = "4194303";  // almost surely free, but on another machine or ns
  for (const std::string& s : {
           std::string(),
           std::string("garbage"),
           "other-boot/" + parts[1] + "/" + dead_pid + "/1",     // another machine
           parts[0] + "/1/" + dead_pid + "/1",                   // another PID namespace
           parts[0] + "/" + parts[1] + "/0/1",                   // pid 0
           parts[0] + "/" + parts[1] + "/-5/1",                  // not digits
           parts[0] + "/" + parts[1] + "/99999999999/1",         // beyond PID_MAX_LIMIT
           parts[0] + "/" + parts[1] + "/" + dead_pid,           // a field missing
           parts[0] + "/" + parts[1] + "/" + dead_pid + "/1/x",  // a field too many
           std::string(300, '/'),
       }) {
    EXPECT_FALSE(ProcessCertainlyGone(s)) << s;
  }
}

}  // namespace
}  // namespace vmbackup::internal
