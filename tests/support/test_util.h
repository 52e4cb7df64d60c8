// Shared test helpers: temporary directories, generated volumes, file digests, Status matchers.
#ifndef VMBACKUP_TESTS_SUPPORT_TEST_UTIL_H_
#define VMBACKUP_TESTS_SUPPORT_TEST_UTIL_H_

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "vmbackup/status.h"

namespace vmbackup::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Writes a sparse volume of `size` bytes to `path`, laid out in regions of `region` bytes cycling
// through: random data, compressible data, written zeros, hole. Deterministic for a given `seed`.
void MakeVolume(const std::string& path, uint64_t size, uint64_t seed, uint64_t region = 1 << 20);
// Overwrites `count` scattered chunks of `chunk` bytes with random data (deterministic for `seed`).
// Returns the ranges written.
std::vector<std::pair<uint64_t, uint64_t>> ScribbleVolume(const std::string& path, uint64_t count,
                                                          uint64_t chunk, uint64_t seed);
// Hex SHA-256 of a whole file ("" if unreadable).
std::string FileSha256(const std::string& path);
bool FileExists(const std::string& path);
uint64_t FileSize(const std::string& path);
// Number of 512-byte blocks allocated to a file (to check that holes stay holes).
uint64_t AllocatedBytes(const std::string& path);
// All regular files under `dir`, relative paths, sorted.
std::vector<std::string> ListFiles(const std::string& dir);
// Flips one bit of the byte at `offset` in a file.
void FlipByte(const std::string& path, uint64_t offset);
std::string ReadAll(const std::string& path);
void WriteAll(const std::string& path, const std::string& data);

}  // namespace vmbackup::testing

// EXPECT_OK(status_or_statusor), ASSERT_OK(...)
#define EXPECT_OK(expr) EXPECT_TRUE((expr).ok()) << ::vmbackup::testing::StatusText(expr)
#define ASSERT_OK(expr) ASSERT_TRUE((expr).ok()) << ::vmbackup::testing::StatusText(expr)

namespace vmbackup::testing {
inline std::string StatusText(const Status& s) { return s.ToString(); }
template <typename T>
std::string StatusText(const StatusOr<T>& s) {
  return s.status().ToString();
}
template <typename T>
const Status& GetStatus(const StatusOr<T>& s) {
  return s.status();
}
inline const Status& GetStatus(const Status& s) { return s; }
}  // namespace vmbackup::testing

// Matches a Status or StatusOr with the given code and a message containing `substr`.
MATCHER_P2(StatusIs, code, substr,
           std::string("has code ") + ::vmbackup::StatusCodeName(code) +
               " and message containing \"" + std::string(substr) + "\"") {
  const ::vmbackup::Status& s = ::vmbackup::testing::GetStatus(arg);
  *result_listener << "which is " << s.ToString();
  return s.code() == code && s.message().find(substr) != std::string::npos;
}

#endif  // VMBACKUP_TESTS_SUPPORT_TEST_UTIL_H_
