// Shared test helpers (see test_util.h).
#include "support/test_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/util.h"

namespace vmbackup::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/vmbackup-test-XXXXXX";
  char* p = ::mkdtemp(tmpl.data());
  if (p == nullptr) std::abort();
  path_ = p;
}

TempDir::~TempDir() {
  std::error_code ec;
  // Make read-only test directories removable again.
  for (auto it = std::filesystem::recursive_directory_iterator(path_, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_directory(ec)) ::chmod(it->path().c_str(), 0755);
  }
  ::chmod(path_.c_str(), 0755);
  std::filesystem::remove_all(path_, ec);
}

void MakeVolume(const std::string& path, uint64_t size, uint64_t seed, uint64_t region) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) std::abort();
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) std::abort();
  std::mt19937_64 rng(seed);
  std::string buf;
  for (uint64_t off = 0, i = 0; off < size; off += region, ++i) {
    uint64_t len = std::min(region, size - off);
    buf.assign(len, '\0');
    switch (i % 4) {
      case 0:  // random
        for (uint64_t j = 0; j + 8 <= len; j += 8) {
          uint64_t x = rng();
          std::memcpy(&buf[j], &x, 8);
        }
        break;
      case 1: {  // compressible: text with some randomness
        const char* words[] = {"alpha ", "beta ", "gamma ", "delta ", "vm-disk ", "backup "};
        for (uint64_t j = 0; j < len;) {
          const char* w = words[rng() % 6];
          for (const char* c = w; *c && j < len; ++c) buf[j++] = *c;
        }
        break;
      }
      case 2:  // written zeros
        break;
      case 3:  // hole
        continue;
    }
    if (::pwrite(fd, buf.data(), len, static_cast<off_t>(off)) != static_cast<ssize_t>(len))
      std::abort();
  }
  ::close(fd);
}

std::vector<std::pair<uint64_t, uint64_t>> ScribbleVolume(const std::string& path, uint64_t count,
                                                          uint64_t chunk, uint64_t seed) {
  int fd = ::open(path.c_str(), O_WRONLY);
  if (fd < 0) std::abort();
  uint64_t size = FileSize(path);
  std::mt19937_64 rng(seed);
  std::vector<std::pair<uint64_t, uint64_t>> out;
  std::string buf(chunk, '\0');
  for (uint64_t i = 0; i < count; ++i) {
    uint64_t off = (rng() % ((size - chunk) / 4096)) * 4096;
    for (uint64_t j = 0; j + 8 <= chunk; j += 8) {
      uint64_t x = rng();
      std::memcpy(&buf[j], &x, 8);
    }
    if (::pwrite(fd, buf.data(), chunk, static_cast<off_t>(off)) != static_cast<ssize_t>(chunk))
      std::abort();
    out.emplace_back(off, chunk);
  }
  ::close(fd);
  return out;
}

std::string FileSha256(const std::string& path) {
  std::string data = ReadAll(path);
  if (!FileExists(path)) return "";
  return internal::ToHex(internal::Sha256(data));
}

bool FileExists(const std::string& path) {
  struct stat sb;
  return ::stat(path.c_str(), &sb) == 0;
}

uint64_t FileSize(const std::string& path) {
  struct stat sb;
  return ::stat(path.c_str(), &sb) == 0 ? static_cast<uint64_t>(sb.st_size) : 0;
}

uint64_t AllocatedBytes(const std::string& path) {
  struct stat sb;
  return ::stat(path.c_str(), &sb) == 0 ? static_cast<uint64_t>(sb.st_blocks) * 512 : 0;
}

std::vector<std::string> ListFiles(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) out.push_back(std::filesystem::relative(it->path(), dir).string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void FlipByte(const std::string& path, uint64_t offset) {
  int fd = ::open(path.c_str(), O_RDWR);
  if (fd < 0) std::abort();
  char c;
  if (::pread(fd, &c, 1, static_cast<off_t>(offset)) != 1) std::abort();
  c ^= 0x20;
  if (::pwrite(fd, &c, 1, static_cast<off_t>(offset)) != 1) std::abort();
  ::close(fd);
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

void WriteAll(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
}

}  // namespace vmbackup::testing
