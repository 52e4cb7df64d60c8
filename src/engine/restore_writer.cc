// The restore's writer side (see restore_writer.h).
#include "engine/restore_writer.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>

#include "core/errors.h"
#include "core/util.h"

namespace vmbackup::internal {

StatusOr<Destination> ClassifyDestination(const std::string& path, bool follow_devices,
                                          bool overwrite, uint64_t volume_size) {
  Destination d;
  d.write_path = path;
  struct stat sb;
  if (::lstat(path.c_str(), &sb) != 0) {
    if (errno == ENOENT) return d;
    return ErrnoToStatus(errno, "destination " + path);
  }
  if (S_ISLNK(sb.st_mode) && follow_devices) {
    char real[PATH_MAX];
    struct stat rs;
    if (::realpath(path.c_str(), real) != nullptr && ::stat(real, &rs) == 0 &&
        S_ISBLK(rs.st_mode)) {
      d.write_path = real;
      sb = rs;
    }
  }
  if (!overwrite)
    return AlreadyExistsError("destination " + path + " exists (set overwrite to replace it)");
  if (S_ISBLK(sb.st_mode)) {
    d.kind = Destination::kDevice;
    // O_EXCL on a block device: EBUSY while it is mounted or held (LVM, another O_EXCL opener).
    int fd = ::open(d.write_path.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
    if (fd < 0) {
      if (errno == EBUSY)
        return FailedPreconditionError("destination " + path +
                                       (d.write_path != path ? " (" + d.write_path + ")" : "") +
                                       " is in use (mounted or held by another program)");
      return ErrnoToStatus(errno, "open destination device " + d.write_path);
    }
    int rc = ::ioctl(fd, BLKGETSIZE64, &d.device_size);
    int err = errno;
    ::close(fd);
    if (rc != 0) return ErrnoToStatus(err, "size of destination device " + d.write_path);
    if (d.device_size < volume_size)
      return FailedPreconditionError(
          "destination device " + d.write_path + " holds " + std::to_string(d.device_size) +
          " bytes, less than the volume's " + std::to_string(volume_size));
    return d;
  }
  if (S_ISREG(sb.st_mode) || S_ISLNK(sb.st_mode)) {
    d.kind = Destination::kFile;
    return d;
  }
  return FailedPreconditionError("destination " + path +
                                 " is neither a regular file nor a block device");
}

std::vector<uint64_t> NonDataBlocks(const VolumeIndex& vidx) {
  std::vector<uint64_t> blocks;
  for (uint64_t b = 0; b < vidx.block_count(); ++b)
    if (vidx.kinds[b] != BlockKind::kData) blocks.push_back(b);
  return blocks;
}

StatusOr<std::unique_ptr<VolumeWriter>> VolumeWriter::Open(const std::string& dest,
                                                           bool follow_devices, bool overwrite,
                                                           uint32_t file_mode,
                                                           uint64_t volume_size) {
  // Checked again: time passed since Create.
  VMB_ASSIGN_OR_RETURN(Destination d,
                       ClassifyDestination(dest, follow_devices, overwrite, volume_size));
  const bool is_block = d.kind == Destination::kDevice;
  // Regular files: write a temporary file beside the destination, rename when complete. Block
  // devices: written in place, opened exclusively (no mounted or otherwise held device).
  VMB_ASSIGN_OR_RETURN(std::string tmp_rand, RandomHex(4));
  const std::string tmp = is_block ? d.write_path : dest + ".vmbackup-partial-" + tmp_rand;
  int fd = is_block ? ::open(tmp.c_str(), O_WRONLY | O_EXCL | O_CLOEXEC)
                    : ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                             file_mode);
  if (fd < 0) {
    if (is_block && errno == EBUSY)
      return FailedPreconditionError("destination " + dest + (tmp != dest ? " (" + tmp + ")" : "") +
                                     " is in use (mounted or held by another program)");
    return ErrnoToStatus(errno, "create " + tmp);
  }
  // From here on the writer owns the file: its destructor closes it and removes a temporary file.
  std::unique_ptr<VolumeWriter> w(new VolumeWriter(fd, is_block, tmp));
  struct stat opened;
  if (::fstat(fd, &opened) != 0 || (is_block ? !S_ISBLK(opened.st_mode) : !S_ISREG(opened.st_mode)))
    return FailedPreconditionError("destination " + dest + " changed while the restore started");
  // The mode the host asked for, whatever the process umask.
  if (!is_block && ::fchmod(fd, file_mode) != 0) return ErrnoToStatus(errno, "chmod " + tmp);
  if (!is_block && ::ftruncate(fd, static_cast<off_t>(volume_size)) != 0)
    return ErrnoToStatus(errno, "size " + tmp);
  return w;
}

VolumeWriter::~VolumeWriter() {
  if (finished_) return;
  if (fd_ >= 0) ::close(fd_);
  if (!is_block_) ::unlink(path_.c_str());
}

Status VolumeWriter::Write(const char* data, size_t len, uint64_t offset) {
  return PwriteAll(fd_, data, len, offset, path_);
}

void VolumeWriter::NoteWritten(uint64_t bytes) {
  if (unflushed_.fetch_add(bytes) > (64u << 20)) {
    unflushed_.store(0);
    ::sync_file_range(fd_, 0, 0, SYNC_FILE_RANGE_WRITE);
  }
}

Status VolumeWriter::Finish() {
  if (::fsync(fd_) != 0) return ErrnoToStatus(errno, "fsync " + path_);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) return ErrnoToStatus(errno, "close " + path_);
  finished_ = true;
  return Status::Ok();
}

}  // namespace vmbackup::internal
