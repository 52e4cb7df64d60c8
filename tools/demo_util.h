// Helpers of `vmbackupctl demo`: deterministic data generation, SHA-256 of files (OpenSSL EVP),
// running external programs (e2fsprogs) and small file-system utilities.
// Thread-safety: the free functions are thread-safe; a Rng object is used by one thread at a time.
#ifndef VMBACKUP_TOOLS_DEMO_UTIL_H_
#define VMBACKUP_TOOLS_DEMO_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "vmbackup/status.h"

namespace vmbackupctl {

// xoshiro256** seeded with splitmix64: fast, deterministic pseudo-random data (not cryptographic).
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t Next();
  // Uniform in [lo, hi]. REQUIRES: lo <= hi.
  uint64_t Range(uint64_t lo, uint64_t hi);
  // Fills `len` bytes with random data.
  void Fill(void* buf, size_t len);

 private:
  uint64_t s_[4];
};

// Fills `len` bytes with log-like text (repeated vocabulary with random numbers and ids) that LZ4
// compresses roughly 2-3x.
void FillCompressible(Rng& rng, char* buf, size_t len);

// Hex SHA-256 of the whole file at `path` (holes read as zeros).
vmbackup::StatusOr<std::string> Sha256File(const std::string& path);

// Writes `len` bytes at `offset` (whole-buffer pwrite loop).
vmbackup::Status PWriteAll(int fd, const void* buf, size_t len, uint64_t offset);

// Finds an executable by name in $PATH, /usr/sbin and /sbin. Empty if not found.
std::string FindProgram(const std::string& name);

// The outcome of an external program: exit code (128 + signal if killed) and stdout+stderr.
struct ProgramResult {
  int exit_code = 0;
  std::string output;
};
// Runs argv[0] (an absolute path) with SIGINT/SIGTERM unblocked and default, capturing its output.
vmbackup::StatusOr<ProgramResult> RunProgram(const std::vector<std::string>& argv);

// Bytes allocated on disk for `path` (st_blocks * 512), or 0 on error.
uint64_t AllocatedBytes(const std::string& path);

}  // namespace vmbackupctl

#endif  // VMBACKUP_TOOLS_DEMO_UTIL_H_
