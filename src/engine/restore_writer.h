// The restore's writer side: what a destination path is (a new file, a file to replace, a block
// device), and one volume's destination open for writing. A regular-file destination is written
// as a temporary file beside it, which the caller renames into place once every volume succeeded;
// a block device is written in place, opened exclusively (never a mounted or otherwise held one).
// The blocks come from the reader (restore_reader.h).
//
// Thread-safety: ClassifyDestination is stateless. A VolumeWriter's Write and NoteWritten may be
// called from many threads at once (positional writes to distinct blocks); Finish and the
// destructor from one thread, after every writer.
#ifndef VMBACKUP_ENGINE_RESTORE_WRITER_H_
#define VMBACKUP_ENGINE_RESTORE_WRITER_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "repo/format.h"
#include "vmbackup/status.h"

namespace vmbackup::internal {

// What a destination path is when the restore is planned, and again when it starts.
struct Destination {
  enum Kind { kNew, kFile, kDevice } kind = kNew;
  std::string write_path;  // the device's real path, or the path itself
  uint64_t device_size = 0;
};

// Classifies `path`. A symbolic link is followed only when `follow_devices` (explicit
// destinations: /dev/vg/lv is one) and only to a block device; any other link is a file to
// replace, never written through. Errors: kAlreadyExists when it exists and !overwrite;
// kFailedPrecondition for a device in use or too small, or a path that is neither file nor device.
StatusOr<Destination> ClassifyDestination(const std::string& path, bool follow_devices,
                                          bool overwrite, uint64_t volume_size);

// The blocks of `vidx` that are not data (holes and zero blocks), in order: a block device keeps
// its old contents there, so they are written as zeros.
std::vector<uint64_t> NonDataBlocks(const VolumeIndex& vidx);

class VolumeWriter {
 public:
  // Checks `dest` again (ClassifyDestination: time passed since the plan was made), then opens
  // it: a block device exclusively, in place; a regular file as a new temporary file
  // "<dest>.vmbackup-partial-<random>" with mode `file_mode` (whatever the umask), sized to
  // `volume_size` (sparse). Errors: ClassifyDestination's; kFailedPrecondition when the device is
  // in use or the destination changed kind meanwhile; the OS's for create, chmod, size.
  static StatusOr<std::unique_ptr<VolumeWriter>> Open(const std::string& dest, bool follow_devices,
                                                      bool overwrite, uint32_t file_mode,
                                                      uint64_t volume_size);
  // Unless Finish succeeded: closes the file and removes a temporary file.
  ~VolumeWriter();
  VolumeWriter(const VolumeWriter&) = delete;
  VolumeWriter& operator=(const VolumeWriter&) = delete;

  bool is_block() const { return is_block_; }
  // The path written: the temporary file, or the device.
  const std::string& path() const { return path_; }

  // Writes data[0, len) at `offset`. Errors: ErrnoToStatus(errno, "write <path>").
  Status Write(const char* data, size_t len, uint64_t offset);
  // Counts `bytes` more written; starts write-back every 64 MiB so that Finish does not find the
  // whole volume dirty.
  void NoteWritten(uint64_t bytes);
  // Makes the data durable (fsync) and closes the file. On success a temporary file stays for the
  // caller to rename; on error it is removed. Errors: "fsync <path>", "close <path>".
  Status Finish();

 private:
  VolumeWriter(int fd, bool is_block, std::string path)
      : fd_(fd), is_block_(is_block), path_(std::move(path)) {}
  int fd_;
  const bool is_block_;
  const std::string path_;
  bool finished_ = false;
  std::atomic<uint64_t> unflushed_{0};
};

}  // namespace vmbackup::internal

#endif  // VMBACKUP_ENGINE_RESTORE_WRITER_H_
