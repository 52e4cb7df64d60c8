#include "synthetic.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <stdexcept>

namespace vmbackup::bench {

namespace fs = std::filesystem;

namespace {

Status Errno(const std::string& what) {
  return Status(StatusCode::kInternal, what + ": " + std::strerror(errno));
}

Status PwriteAll(int fd, const char* p, size_t n, uint64_t off) {
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      return Errno("pwrite");
    }
    p += w;
    n -= static_cast<size_t>(w);
    off += static_cast<uint64_t>(w);
  }
  return Status::Ok();
}

}  // namespace

void FillRandom(char* p, size_t n, uint64_t seed) {
  Rng r(seed);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = r.Next();
    std::memcpy(p + i, &v, 8);
  }
  if (i < n) {
    uint64_t v = r.Next();
    std::memcpy(p + i, &v, n - i);
  }
}

void FillCompressible(char* p, size_t n, uint64_t seed) {
  static const std::string dict = [] {
    std::string d(4096, '\0');
    FillRandom(d.data(), d.size(), 0x5eed);
    return d;
  }();
  Rng r(seed);
  constexpr size_t kChunk = 64, kFresh = 16;
  size_t i = 0;
  while (i < n) {
    const size_t fresh = std::min(kFresh, n - i);
    FillRandom(p + i, fresh, r.Next());
    i += fresh;
    const size_t copy = std::min(kChunk - kFresh, n - i);
    std::memcpy(p + i, dict.data() + r.Below(dict.size() - kChunk), copy);
    i += copy;
  }
}

void FillZeroish(char* p, size_t n, uint64_t seed) {
  std::memset(p, 0, n);
  Rng r(seed);
  for (size_t i = 0; i < n; i += 4096) p[i + r.Below(std::min<size_t>(4096, n - i))] = 1;
}

Status MakeMixedVolume(const std::string& path, uint64_t size, uint64_t seed) {
  if (size % kRegion != 0) return InvalidArgumentError("volume size must be a multiple of 4 MiB");
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("create " + path);
  std::unique_ptr<char[]> buf(new char[kRegion]);
  Status st;
  for (uint64_t i = 0; i < size / kRegion && st.ok(); ++i) {
    const uint64_t s = seed * 0x100000001b3ull + i;
    switch (MixedRegionKind(i)) {
      case RegionKind::kRandom:
        FillRandom(buf.get(), kRegion, s);
        break;
      case RegionKind::kCompressible:
        FillCompressible(buf.get(), kRegion, s);
        break;
      case RegionKind::kZeros:
        std::memset(buf.get(), 0, kRegion);
        break;
      case RegionKind::kHole:
        continue;
    }
    st = PwriteAll(fd, buf.get(), kRegion, i * kRegion);
  }
  if (st.ok() && ::ftruncate(fd, static_cast<off_t>(size)) != 0) st = Errno("ftruncate " + path);
  ::close(fd);
  return st;
}

std::vector<Extent> ScatteredExtents(uint64_t size, uint64_t count, uint64_t len, uint64_t align,
                                     uint64_t seed) {
  Rng r(seed);
  std::vector<Extent> out;
  out.reserve(count);
  const uint64_t slots = (size - len) / align + 1;
  for (uint64_t i = 0; i < count; ++i) out.push_back({r.Below(slots) * align, len});
  return out;
}

Status ApplyWrites(const std::string& path, const std::vector<Extent>& extents, uint64_t seed) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Errno("open " + path);
  Status st;
  std::string buf;
  for (size_t i = 0; i < extents.size() && st.ok(); ++i) {
    buf.resize(extents[i].length);
    FillRandom(buf.data(), buf.size(), seed + i);
    st = PwriteAll(fd, buf.data(), buf.size(), extents[i].offset);
  }
  ::close(fd);
  return st;
}

uint64_t DirtyBlocks(const std::vector<Extent>& extents, uint64_t block) {
  std::set<uint64_t> dirty;
  for (const auto& e : extents)
    for (uint64_t b = e.offset / block; b <= (e.offset + e.length - 1) / block; ++b)
      dirty.insert(b);
  return dirty.size();
}

TempDir::TempDir(const std::string& tag) {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/vmbackup-" + tag + "-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp " + tmpl);
  path_ = tmpl;
}

TempDir::~TempDir() { RemoveTree(path_); }

std::string TempDir::Sub(const std::string& name) const {
  std::string p = path_ + "/" + name;
  RemoveTree(p);
  fs::create_directories(p);
  return p;
}

void RemoveTree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
}

std::string FileTargetJson(const std::string& dir) {
  return R"({"type": "file", "endpoint": ")" + dir + R"("})";
}

uint64_t DiskUsage(const std::string& path) {
  uint64_t total = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(path, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    struct stat sb;
    if (::lstat(it->path().c_str(), &sb) == 0 && S_ISREG(sb.st_mode))
      total += static_cast<uint64_t>(sb.st_blocks) * 512;
  }
  return total;
}

uint64_t ResidentBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
  }
  return 0;
}

}  // namespace vmbackup::bench
