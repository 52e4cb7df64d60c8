#include "demo_util.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>

extern char** environ;

namespace vmbackupctl {
namespace {

uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

vmbackup::Status ErrnoStatus(const std::string& what, int err) {
  std::string msg = what + ": " + std::strerror(err);
  switch (err) {
    case ENOENT:
      return vmbackup::NotFoundError(msg);
    case EACCES:
    case EPERM:
      return vmbackup::PermissionDeniedError(msg);
    case ENOSPC:
    case EDQUOT:
      return vmbackup::ResourceExhaustedError(msg);
    default:
      return vmbackup::InternalError(msg);
  }
}

// Appends decimal `v` padded with zeros to `width` digits.
char* PutDec(char* p, uint64_t v, int width) {
  char tmp[24];
  int n = 0;
  do {
    tmp[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0 && n < 20);
  while (n < width) tmp[n++] = '0';
  while (n > 0) *p++ = tmp[--n];
  return p;
}

char* PutStr(char* p, const char* s) {
  size_t n = std::strlen(s);
  std::memcpy(p, s, n);
  return p + n;
}

}  // namespace

Rng::Rng(uint64_t seed) {
  for (uint64_t& s : s_) s = SplitMix64(seed);
}

uint64_t Rng::Next() {
  const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = Rotl(s_[3], 45);
  return result;
}

uint64_t Rng::Range(uint64_t lo, uint64_t hi) {
  uint64_t span = hi - lo + 1;
  if (span == 0) return Next();  // full 64-bit range
  return lo + Next() % span;
}

void Rng::Fill(void* buf, size_t len) {
  auto* p = static_cast<unsigned char*>(buf);
  while (len >= 8) {
    uint64_t v = Next();
    std::memcpy(p, &v, 8);
    p += 8;
    len -= 8;
  }
  if (len > 0) {
    uint64_t v = Next();
    std::memcpy(p, &v, len);
  }
}

void FillCompressible(Rng& rng, char* buf, size_t len) {
  static const char* const kServices[] = {"kernel",   "systemd",    "sshd",    "nginx",
                                          "postgres", "containerd", "kubelet", "cron"};
  static const char* const kMessages[] = {
      "accepted connection from 10.52.0.17 port 22",
      "GET /api/v1/namespaces/default/pods HTTP/1.1 200",
      "checkpoint complete: wrote 118 buffers (0.7%); 0 WAL file(s) added",
      "eth0: link up, 10000 Mbps, full duplex, flow control rx/tx",
      "Started Session of user demo.",
      "volume attach succeeded for pvc-rootdisk on node harvester-01",
      "image pull complete: registry.suse.com/harvester/vm-import-controller",
      "EXT4-fs (vda1): mounted filesystem with ordered data mode",
      "health check passed for backend upstream demo-backend",
      "pam_unix(sshd:session): session opened for user demo by (uid=0)",
  };
  char line[512];
  size_t done = 0;
  uint64_t second = rng.Range(0, 86399);
  while (done < len) {
    char* p = line;
    second += rng.Range(0, 2);
    p = PutStr(p, "2025-03-14T");
    p = PutDec(p, second / 3600 % 24, 2);
    *p++ = ':';
    p = PutDec(p, second / 60 % 60, 2);
    *p++ = ':';
    p = PutDec(p, second % 60, 2);
    *p++ = '.';
    p = PutDec(p, rng.Range(0, 999999), 6);
    p = PutStr(p, "Z demo-vm ");
    p = PutStr(p, kServices[rng.Range(0, 7)]);
    *p++ = '[';
    p = PutDec(p, rng.Range(100, 4000), 1);
    p = PutStr(p, "]: ");
    p = PutStr(p, kMessages[rng.Range(0, 9)]);
    p = PutStr(p, " req=");
    uint64_t id = rng.Next();
    for (int i = 0; i < 12; ++i) *p++ = "0123456789abcdef"[(id >> (4 * i)) & 15];
    p = PutStr(p, " peer=10.");
    p = PutDec(p, rng.Range(0, 255), 1);
    *p++ = '.';
    p = PutDec(p, rng.Range(0, 255), 1);
    *p++ = '.';
    p = PutDec(p, rng.Range(0, 255), 1);
    *p++ = ':';
    p = PutDec(p, rng.Range(1024, 65535), 1);
    p = PutStr(p, " bytes=");
    p = PutDec(p, rng.Range(0, 999999), 1);
    p = PutStr(p, " took=");
    p = PutDec(p, rng.Range(1, 9999), 1);
    p = PutStr(p, "us\n");
    size_t n = std::min<size_t>(static_cast<size_t>(p - line), len - done);
    std::memcpy(buf + done, line, n);
    done += n;
  }
}

vmbackup::StatusOr<std::string> Sha256File(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open " + path, errno);
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!md || EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr) != 1) {
    ::close(fd);
    return vmbackup::InternalError("EVP_DigestInit_ex(sha256) failed");
  }
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  constexpr size_t kBuf = 4 << 20;
  std::unique_ptr<unsigned char[]> buf(new unsigned char[kBuf]);
  uint64_t offset = 0;
  for (;;) {
    ssize_t n = ::pread(fd, buf.get(), kBuf, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return ErrnoStatus("read " + path, err);
    }
    if (n == 0) break;
    EVP_DigestUpdate(md.get(), buf.get(), static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
  ::close(fd);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  if (EVP_DigestFinal_ex(md.get(), digest, &digest_len) != 1) {
    return vmbackup::InternalError("EVP_DigestFinal_ex failed");
  }
  std::string hex;
  for (unsigned int i = 0; i < digest_len; ++i) {
    hex += "0123456789abcdef"[digest[i] >> 4];
    hex += "0123456789abcdef"[digest[i] & 15];
  }
  return hex;
}

vmbackup::Status PWriteAll(int fd, const void* buf, size_t len, uint64_t offset) {
  const char* p = static_cast<const char*>(buf);
  while (len > 0) {
    ssize_t n = ::pwrite(fd, p, len, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write", errno);
    }
    p += n;
    len -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return vmbackup::Status::Ok();
}

std::string FindProgram(const std::string& name) {
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH")) {
    std::string all = path;
    size_t start = 0;
    while (start <= all.size()) {
      size_t end = all.find(':', start);
      if (end == std::string::npos) end = all.size();
      if (end > start) dirs.push_back(all.substr(start, end - start));
      start = end + 1;
    }
  }
  dirs.push_back("/usr/sbin");
  dirs.push_back("/sbin");
  for (const std::string& d : dirs) {
    std::string candidate = d + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

vmbackup::StatusOr<ProgramResult> RunProgram(const std::vector<std::string>& argv) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return ErrnoStatus("pipe", errno);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty, defaults;
  sigemptyset(&empty);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> cargv;
  for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, argv[0].c_str(), &actions, &attr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    return ErrnoStatus("run " + argv[0], rc);
  }
  ProgramResult result;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fds[0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    result.output.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return ErrnoStatus("waitpid " + argv[0], errno);
  }
  if (WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.exit_code = 128 + WTERMSIG(status);
  } else {
    result.exit_code = 255;
  }
  return result;
}

uint64_t AllocatedBytes(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

}  // namespace vmbackupctl
