// Synthetic data for the benchmarks: random, compressible and zero-ish buffers, the mixed test
// volume (4 MiB regions cycling random / compressible / zeros / hole), scattered rewrites, and
// scratch directories under $TMPDIR (default /tmp) that delete themselves.
//
// Every generator is deterministic in its seed, so the block-size study rewrites the same offsets
// with the same bytes for every block size.
#ifndef VMBACKUP_BENCHMARKS_SYNTHETIC_H_
#define VMBACKUP_BENCHMARKS_SYNTHETIC_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "vmbackup/options.h"
#include "vmbackup/status.h"

namespace vmbackup::bench {

inline constexpr uint64_t kKiB = 1024;
inline constexpr uint64_t kMiB = 1024 * kKiB;
inline constexpr uint64_t kGiB = 1024 * kMiB;
inline constexpr uint64_t kRegion = 4 * kMiB;  // granularity of the mixed volume

// A small fast PRNG (splitmix64). Not for cryptography.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t Below(uint64_t n) { return Next() % n; }

 private:
  uint64_t s_;
};

// Incompressible bytes.
void FillRandom(char* p, size_t n, uint64_t seed);
// Bytes that LZ4 (EncodeBlockAppend) compresses about 2.3x: each 64-byte chunk is 16 fresh random
// bytes followed by 48 bytes copied from a shared 4 KiB dictionary. Unique per seed (no dedup).
void FillCompressible(char* p, size_t n, uint64_t seed);
// Zeros with one non-zero byte every 4 KiB (a mostly-empty guest filesystem block).
void FillZeroish(char* p, size_t n, uint64_t seed);

enum class RegionKind { kRandom = 0, kCompressible = 1, kZeros = 2, kHole = 3 };
// Kind of 4 MiB region `i` of the mixed volume: i % 4 -> random, compressible, zeros, hole.
inline RegionKind MixedRegionKind(uint64_t i) { return static_cast<RegionKind>(i % 4); }

// Creates (truncating) a sparse file of `size` bytes (a multiple of 4 MiB): a quarter random, a
// quarter compressible, a quarter written zeros (allocated), a quarter holes, in 4 MiB regions.
Status MakeMixedVolume(const std::string& path, uint64_t size, uint64_t seed);

// Offsets of `count` writes of `len` bytes at `align`-aligned uniformly random offsets inside
// [0, size - len].
std::vector<Extent> ScatteredExtents(uint64_t size, uint64_t count, uint64_t len, uint64_t align,
                                     uint64_t seed);
// Writes fresh random data over each extent of the file at `path`.
Status ApplyWrites(const std::string& path, const std::vector<Extent>& extents, uint64_t seed);
// Number of distinct `block`-sized blocks that `extents` touch.
uint64_t DirtyBlocks(const std::vector<Extent>& extents, uint64_t block);

// A directory created under $TMPDIR (default /tmp) and removed with its contents on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& tag);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  // Creates (or empties) and returns the subdirectory `name`.
  std::string Sub(const std::string& name) const;

 private:
  std::string path_;
};

// Removes a file or directory tree; ignores errors.
void RemoveTree(const std::string& path);
// {"type": "file", "endpoint": dir}.
std::string FileTargetJson(const std::string& dir);
// Disk space used by a directory tree (sum of st_blocks * 512).
uint64_t DiskUsage(const std::string& path);
// Resident set size of this process in bytes (VmRSS of /proc/self/status).
uint64_t ResidentBytes();

}  // namespace vmbackup::bench

#endif  // VMBACKUP_BENCHMARKS_SYNTHETIC_H_
