// Host secret file (see host_secret.h).
#include "core/host_secret.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include "core/errors.h"
#include "core/util.h"

namespace vmbackup::internal {
namespace {

// A directory or file that holds the secret must be ours, not a link, and closed to others.
Status CheckPrivate(const std::string& path, const struct stat& sb, bool dir) {
  if (S_ISLNK(sb.st_mode))
    return PermissionDeniedError(path + " is a symbolic link; the host secret needs a real " +
                                 (dir ? "directory" : "file"));
  if (dir ? !S_ISDIR(sb.st_mode) : !S_ISREG(sb.st_mode))
    return PermissionDeniedError(path + " is not a " + (dir ? "directory" : "regular file"));
  if (sb.st_uid != ::geteuid())
    return PermissionDeniedError(path + " is owned by uid " + std::to_string(sb.st_uid) +
                                 ", not by this process's uid " + std::to_string(::geteuid()));
  if ((sb.st_mode & (dir ? 022 : 077)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "0%03o", static_cast<unsigned>(sb.st_mode & 0777));
    return PermissionDeniedError(path + " is accessible to group or others (mode " + mode +
                                 "); chmod it to " + (dir ? "0700" : "0600"));
  }
  return Status::Ok();
}

StatusOr<HostSecret> ReadSecret(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ELOOP) return PermissionDeniedError(path + " is a symbolic link");
    return ErrnoToStatus(errno, "open host secret " + path);
  }
  struct stat sb;
  Status st = ::fstat(fd, &sb) == 0 ? CheckPrivate(path, sb, false)
                                    : ErrnoToStatus(errno, "stat host secret " + path);
  char buf[80];
  ssize_t n = st.ok() ? ::pread(fd, buf, sizeof(buf), 0) : 0;
  if (st.ok() && n < 0) st = ErrnoToStatus(errno, "read host secret " + path);
  ::close(fd);
  VMB_RETURN_IF_ERROR(st);
  HostSecret secret{};
  if (n != 65 || buf[64] != '\n' ||
      !BytesFromHex(std::string_view(buf, 64), secret.data(), secret.size()))
    return DataLossError("host secret " + path + " is not 64 hex characters and a newline");
  return secret;
}

}  // namespace

std::string DefaultStateDir() {
  if (const char* d = std::getenv("VMBACKUP_STATE_DIR"); d != nullptr && *d != '\0') return d;
  if (::geteuid() == 0) return "/var/lib/vmbackup";
  if (const char* d = std::getenv("XDG_STATE_HOME"); d != nullptr && *d == '/')
    return std::string(d) + "/vmbackup";
  if (const char* h = std::getenv("HOME"); h != nullptr && *h == '/')
    return std::string(h) + "/.local/state/vmbackup";
  return "";
}

StatusOr<HostSecret> LoadOrCreateHostSecret(const std::string& state_dir) {
  if (state_dir.empty()) return InvalidArgumentError("no state directory for the host secret");
  // The directory: created private, or an existing one checked to be private.
  if (::mkdir(state_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    // Parents may be missing (~/.local/state): create them like mkdir -p, private too.
    if (errno != ENOENT) return ErrnoToStatus(errno, "create state directory " + state_dir);
    for (size_t pos = 1; (pos = state_dir.find('/', pos)) != std::string::npos; ++pos) {
      if (::mkdir(state_dir.substr(0, pos).c_str(), 0700) != 0 && errno != EEXIST)
        return ErrnoToStatus(errno, "create state directory " + state_dir.substr(0, pos));
    }
    if (::mkdir(state_dir.c_str(), 0700) != 0 && errno != EEXIST)
      return ErrnoToStatus(errno, "create state directory " + state_dir);
  }
  struct stat sb;
  if (::lstat(state_dir.c_str(), &sb) != 0)
    return ErrnoToStatus(errno, "state directory " + state_dir);
  VMB_RETURN_IF_ERROR(CheckPrivate(state_dir, sb, true));

  const std::string path = state_dir + "/" + kHostSecretFile;
  auto existing = ReadSecret(path);
  if (existing.ok() || existing.status().code() != StatusCode::kNotFound) return existing;

  // Create: random secret in a private temporary file, durable, then link() publishes it only if
  // no other process did first (then theirs is read back).
  HostSecret secret{};
  VMB_RETURN_IF_ERROR(RandomBytes(secret.data(), secret.size()));
  const std::string text = ToHex(secret.data(), secret.size()) + "\n";
  VMB_ASSIGN_OR_RETURN(std::string rand, RandomHex(8));
  const std::string tmp = path + ".tmp-" + rand;
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoToStatus(errno, "create host secret " + tmp);
  Status st = PwriteAll(fd, text.data(), text.size(), 0, tmp);
  if (st.ok() && ::fsync(fd) != 0) st = ErrnoToStatus(errno, "fsync " + tmp);
  if (::close(fd) != 0 && st.ok()) st = ErrnoToStatus(errno, "close " + tmp);
  if (st.ok() && ::link(tmp.c_str(), path.c_str()) != 0 && errno != EEXIST)
    st = ErrnoToStatus(errno, "publish host secret " + path);
  ::unlink(tmp.c_str());
  VMB_RETURN_IF_ERROR(st);
  VMB_RETURN_IF_ERROR(FsyncDir(state_dir));
  return ReadSecret(path);
}

}  // namespace vmbackup::internal
