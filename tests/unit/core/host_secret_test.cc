// The host secret file: created private, read back, refused when others could read or swap it;
// and the random source that makes it (issue #9, finding 9: no predictable fallback).
#include "core/host_secret.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <thread>
#include <vector>

#include "core/util.h"
#include "support/test_util.h"

namespace vmbackup::internal {
namespace {

using ::vmbackup::testing::ReadAll;
using ::vmbackup::testing::TempDir;
using ::vmbackup::testing::WriteAll;

mode_t ModeOf(const std::string& path) {
  struct stat sb;
  EXPECT_EQ(::lstat(path.c_str(), &sb), 0) << path;
  return sb.st_mode & 0777;
}

TEST(HostSecretTest, CreatedPrivateOnceAndReadBack) {
  TempDir dir;
  const std::string state = dir.Sub("a/b/state");  // parents are created too
  auto first = LoadOrCreateHostSecret(state);
  ASSERT_OK(first);
  EXPECT_EQ(ModeOf(state), 0700u);
  EXPECT_EQ(ModeOf(state + "/" + kHostSecretFile), 0600u);
  auto again = LoadOrCreateHostSecret(state);
  ASSERT_OK(again);
  EXPECT_EQ(*first, *again);
  EXPECT_EQ(ReadAll(state + "/" + kHostSecretFile), ToHex(first->data(), first->size()) + "\n");
  TempDir other;
  auto elsewhere = LoadOrCreateHostSecret(other.Sub("state"));
  ASSERT_OK(elsewhere);
  EXPECT_NE(*first, *elsewhere);
}

TEST(HostSecretTest, ConcurrentCreatorsAgree) {
  TempDir dir;
  std::vector<HostSecret> got(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < got.size(); ++i)
    threads.emplace_back([&, i] {
      auto s = LoadOrCreateHostSecret(dir.Sub("state"));
      if (s.ok()) got[i] = *s;
    });
  for (auto& t : threads) t.join();
  for (const auto& g : got) EXPECT_EQ(g, got[0]);
  EXPECT_NE(got[0], HostSecret{});
}

TEST(HostSecretTest, RefusesFilesOthersCanReadLinksAndGarbage) {
  TempDir dir;
  const std::string state = dir.Sub("state");
  ASSERT_OK(LoadOrCreateHostSecret(state));
  const std::string file = state + "/" + kHostSecretFile;
  ASSERT_EQ(::chmod(file.c_str(), 0644), 0);
  EXPECT_THAT(LoadOrCreateHostSecret(state), StatusIs(StatusCode::kPermissionDenied, "0644"));
  ASSERT_EQ(::chmod(file.c_str(), 0600), 0);
  ASSERT_OK(LoadOrCreateHostSecret(state));

  WriteAll(dir.Sub("planted"), std::string(64, 'a') + "\n");
  ASSERT_EQ(::chmod(dir.Sub("planted").c_str(), 0600), 0);
  ASSERT_EQ(::unlink(file.c_str()), 0);
  ASSERT_EQ(::symlink(dir.Sub("planted").c_str(), file.c_str()), 0);
  EXPECT_THAT(LoadOrCreateHostSecret(state), StatusIs(StatusCode::kPermissionDenied, "link"));

  ASSERT_EQ(::unlink(file.c_str()), 0);
  WriteAll(file, "not hex\n");
  ASSERT_EQ(::chmod(file.c_str(), 0600), 0);
  EXPECT_THAT(LoadOrCreateHostSecret(state), StatusIs(StatusCode::kDataLoss, "64 hex"));

  const std::string open_dir = dir.Sub("open");
  ASSERT_EQ(::mkdir(open_dir.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(open_dir.c_str(), 0777), 0);
  EXPECT_THAT(LoadOrCreateHostSecret(open_dir), StatusIs(StatusCode::kPermissionDenied, "0777"));
  EXPECT_THAT(LoadOrCreateHostSecret(""), StatusIs(StatusCode::kInvalidArgument, ""));
}

TEST(HostSecretTest, DefaultStateDirFollowsTheEnvironment) {
  const char* saved = std::getenv("VMBACKUP_STATE_DIR");
  const std::string keep = saved ? saved : "";
  ::setenv("VMBACKUP_STATE_DIR", "/srv/x/state", 1);
  EXPECT_EQ(DefaultStateDir(), "/srv/x/state");
  ::unsetenv("VMBACKUP_STATE_DIR");
  if (::geteuid() == 0) {
    EXPECT_EQ(DefaultStateDir(), "/var/lib/vmbackup");
  }
  if (!keep.empty()) ::setenv("VMBACKUP_STATE_DIR", keep.c_str(), 1);
}

// Finding 9, regression: when the system RNG fails, ids and keys are not made up from the clock.
TEST(RandomTest, FailingRandomSourceFailsInsteadOfFallingBack) {
  SetRandomFailsForTest(true);
  auto hex = RandomHex(16);
  HostSecret s{};
  Status bytes = RandomBytes(s.data(), s.size());
  TempDir dir;
  auto secret = LoadOrCreateHostSecret(dir.Sub("state"));
  SetRandomFailsForTest(false);
  EXPECT_THAT(hex, StatusIs(StatusCode::kUnavailable, "random"));
  EXPECT_THAT(bytes, StatusIs(StatusCode::kUnavailable, "random"));
  EXPECT_THAT(secret, StatusIs(StatusCode::kUnavailable, "random"));
  auto ok = RandomHex(16);
  ASSERT_OK(ok);
  EXPECT_EQ(ok->size(), 32u);
}

}  // namespace
}  // namespace vmbackup::internal
