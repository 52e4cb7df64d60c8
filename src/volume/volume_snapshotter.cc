// VolumeSnapshotter: reflink clones (FICLONE) or direct reads, extents via SEEK_DATA/SEEK_HOLE.
#include "vmbackup/volume_snapshotter.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/util.h"

namespace vmbackup {

using internal::ErrnoToStatus;

struct VolumeSnapshot::Impl {
  std::string path;
  int fd = -1;
  uint64_t size = 0;
  bool clone = false;
  std::function<Status()> thaw_on_release;
  ~Impl() {
    if (fd >= 0) ::close(fd);
    if (thaw_on_release) thaw_on_release().IgnoreError();
  }
};

VolumeSnapshot::VolumeSnapshot(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
VolumeSnapshot::~VolumeSnapshot() = default;
uint64_t VolumeSnapshot::size() const { return impl_->size; }
bool VolumeSnapshot::is_clone() const { return impl_->clone; }
const std::string& VolumeSnapshot::source_path() const { return impl_->path; }

StatusOr<std::vector<Extent>> VolumeSnapshot::DataExtents(uint64_t offset, uint64_t length) const {
  std::vector<Extent> out;
  uint64_t end = std::min(impl_->size, offset + length);
  uint64_t pos = offset;
  while (pos < end) {
    off_t data = ::lseek(impl_->fd, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;                     // no data after pos
      if (errno == EINVAL || errno == EOPNOTSUPP) {  // no hole support: all data
        out.push_back({pos, end - pos});
        break;
      }
      return ErrnoToStatus(errno, "SEEK_DATA on " + impl_->path);
    }
    if (static_cast<uint64_t>(data) >= end) break;
    off_t hole = ::lseek(impl_->fd, data, SEEK_HOLE);
    if (hole < 0) return ErrnoToStatus(errno, "SEEK_HOLE on " + impl_->path);
    uint64_t e = std::min(end, static_cast<uint64_t>(hole));
    out.push_back({static_cast<uint64_t>(data), e - static_cast<uint64_t>(data)});
    pos = e;
  }
  return out;
}

StatusOr<size_t> VolumeSnapshot::ReadAt(uint64_t offset, void* buf, size_t length) const {
  if (offset > impl_->size) return OutOfRangeError("read past the end of " + impl_->path);
  size_t want = static_cast<size_t>(std::min<uint64_t>(length, impl_->size - offset));
  size_t got = 0;
  auto* p = static_cast<char*>(buf);
  while (got < want) {
    ssize_t r = ::pread(impl_->fd, p + got, want - got, static_cast<off_t>(offset + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno,
                           "read " + impl_->path + " at offset " + std::to_string(offset + got));
    }
    if (r == 0) break;  // volume shrank under us
    got += static_cast<size_t>(r);
  }
  if (got < want)
    return DataLossError("volume " + impl_->path + " shrank while being read (at offset " +
                         std::to_string(offset + got) + ")");
  return got;
}

struct VolumeSnapshotter::Impl {
  std::string path;
  SnapshotOptions options;
  bool is_block = false;
  int reflink = -1;  // -1 unknown, 0 no, 1 yes
};

VolumeSnapshotter::VolumeSnapshotter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
VolumeSnapshotter::~VolumeSnapshotter() = default;

StatusOr<std::unique_ptr<VolumeSnapshotter>> VolumeSnapshotter::Open(
    const std::string& path, const SnapshotOptions& options) {
  struct stat sb;
  if (::stat(path.c_str(), &sb) != 0) {
    if (errno == ENOENT) return NotFoundError("volume " + path + " does not exist");
    return ErrnoToStatus(errno, "volume " + path);
  }
  if (!S_ISREG(sb.st_mode) && !S_ISBLK(sb.st_mode))
    return InvalidArgumentError("volume " + path + " is neither a regular file nor a block device");
  if (::access(path.c_str(), R_OK) != 0) return ErrnoToStatus(errno, "volume " + path);
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->options = options;
  impl->is_block = S_ISBLK(sb.st_mode);
  if (impl->is_block) impl->reflink = 0;
  return std::unique_ptr<VolumeSnapshotter>(new VolumeSnapshotter(std::move(impl)));
}

static std::string CloneDir(const std::string& path, const SnapshotOptions& o) {
  return o.clone_dir.empty() ? internal::DirName(path) : o.clone_dir;
}

// Clones `src_fd` into an anonymous file (created, then unlinked at once, so a crash leaves
// nothing). Returns the clone's fd, or -errno.
static int CloneToAnonymous(int src_fd, const std::string& dir) {
  auto rand = internal::RandomHex(8);
  if (!rand.ok()) return -EAGAIN;
  std::string tmp = dir + "/.vmbackup-snap-" + *rand;
  int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return -errno;
  ::unlink(tmp.c_str());
  if (::ioctl(fd, FICLONE, src_fd) != 0) {
    int err = errno;
    ::close(fd);
    return -err;
  }
  return fd;
}

static bool CloneUnsupported(int err) {
  return err == EOPNOTSUPP || err == ENOTTY || err == EXDEV || err == EINVAL || err == ENOSYS ||
         err == EPERM || err == EACCES || err == EROFS;
}

bool VolumeSnapshotter::SupportsReflink() const {
  if (impl_->reflink >= 0) return impl_->reflink == 1;
  int src = ::open(impl_->path.c_str(), O_RDONLY | O_CLOEXEC);
  if (src < 0) return false;
  int fd = CloneToAnonymous(src, CloneDir(impl_->path, impl_->options));
  ::close(src);
  if (fd >= 0) ::close(fd);
  impl_->reflink = fd >= 0 ? 1 : 0;
  return fd >= 0;
}

StatusOr<std::unique_ptr<VolumeSnapshot>> VolumeSnapshotter::Snapshot() {
  const auto& o = impl_->options;
  int src = ::open(impl_->path.c_str(), O_RDONLY | O_CLOEXEC);
  if (src < 0) return ErrnoToStatus(errno, "open volume " + impl_->path);
  if (o.freeze) {
    Status st = o.freeze();
    if (!st.ok()) {
      ::close(src);
      return st.WithContext("freeze hook for " + impl_->path);
    }
  }
  auto snap = std::make_unique<VolumeSnapshot::Impl>();
  snap->path = impl_->path;
  int fd = -1;
  if (o.mode != SnapshotOptions::Mode::kDirect && impl_->reflink != 0) {
    fd = CloneToAnonymous(src, CloneDir(impl_->path, o));
    if (fd < 0) {
      int err = -fd;
      if (CloneUnsupported(err)) {
        impl_->reflink = 0;
      } else if (o.thaw) {
        o.thaw().IgnoreError();
      }
      if (!CloneUnsupported(err)) {
        ::close(src);
        return ErrnoToStatus(err, "reflink clone of " + impl_->path);
      }
    } else {
      impl_->reflink = 1;
    }
  }
  if (fd < 0 && o.mode == SnapshotOptions::Mode::kReflink) {
    ::close(src);
    if (o.thaw) o.thaw().IgnoreError();
    return FailedPreconditionError("the filesystem of " + impl_->path +
                                   " does not support reflink clones (FICLONE)");
  }
  if (fd >= 0) {
    ::close(src);
    snap->fd = fd;
    snap->clone = true;
    if (o.thaw) {
      Status st = o.thaw();
      (void)st;  // the clone is taken; a thaw failure is the host's to report
    }
  } else {
    snap->fd = src;
    snap->clone = false;
    if (o.thaw) {
      if (o.thaw_after_backup)
        snap->thaw_on_release = o.thaw;
      else
        o.thaw().IgnoreError();
    }
  }
  if (impl_->is_block) {
    uint64_t sz = 0;
    if (::ioctl(snap->fd, BLKGETSIZE64, &sz) != 0)
      return ErrnoToStatus(errno, "size of " + impl_->path);
    snap->size = sz;
  } else {
    struct stat sb;
    if (::fstat(snap->fd, &sb) != 0) return ErrnoToStatus(errno, "stat " + impl_->path);
    snap->size = static_cast<uint64_t>(sb.st_size);
  }
  ::posix_fadvise(snap->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  return std::unique_ptr<VolumeSnapshot>(new VolumeSnapshot(std::move(snap)));
}

}  // namespace vmbackup
