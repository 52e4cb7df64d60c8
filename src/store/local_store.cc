// LocalStore implementation (see local_store.h).
#include "store/local_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "core/errors.h"
#include "core/util.h"

namespace vmbackup::internal {
namespace {

constexpr const char* kTmpDir = ".tmp";
// Durable objects of at least kDirectMin bytes are written with O_DIRECT in kDirectChunk pieces.
constexpr size_t kDirectMin = 1 << 20;
constexpr size_t kDirectChunk = 8 << 20;
constexpr size_t kDirectAlign = 4096;

class LocalStore final : public ObjectStore {
 public:
  LocalStore(std::string root, std::shared_ptr<Runtime> rt)
      : ObjectStore(std::move(rt)), root_(std::move(root)) {}

  std::string Describe() const override { return "file://" + root_; }

  Status Put(const std::string& key, std::string_view data, const PutOptions& opts) override {
    VMB_RETURN_IF_ERROR(ValidateKey(key));
    const std::string path = root_ + "/" + key;
    VMB_RETURN_IF_ERROR(MakeDirs(DirName(path)));
    VMB_RETURN_IF_ERROR(MakeDirs(root_ + "/" + kTmpDir));
    VMB_ASSIGN_OR_RETURN(std::string tmp_name, RandomHex(8));
    const std::string tmp = root_ + "/" + kTmpDir + "/" + tmp_name;
    // Large durable objects (packs) bypass the page cache: the kernel's copy into it cost a sixth
    // of a full backup's CPU time, and a backup should not evict the host's cached VM data.
    const bool direct = opts.durable && data.size() >= kDirectMin;
    int fd = -1;
    if (direct) fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_DIRECT, 0644);
    if (!direct || (fd < 0 && errno == EINVAL))  // EINVAL: the filesystem has no O_DIRECT (tmpfs)
      fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoToStatus(errno, "create " + tmp);
    Status st = WriteAll(fd, data, direct, Describe() + "/" + key);
    if (st.ok() && opts.durable && ::fdatasync(fd) != 0)
      st = ErrnoToStatus(errno, "fsync " + Describe() + "/" + key);
    if (::close(fd) != 0 && st.ok()) st = ErrnoToStatus(errno, "close " + tmp);
    if (st.ok()) st = Publish(tmp, path, key, opts);
    // A concurrent Delete (this or another process) removed the then-empty parent directory:
    // recreate it and try again. Bounded: each round needs another Delete to win the race.
    for (int round = 0; round < 16 && st.code() == StatusCode::kNotFound; ++round) {
      st = MakeDirs(DirName(path));
      if (st.ok()) st = Publish(tmp, path, key, opts);
    }
    if (!st.ok()) {
      ::unlink(tmp.c_str());
      return st;
    }
    if (opts.durable) return FsyncDir(DirName(path));
    return Status::Ok();
  }

  // Writes `data` at offset 0 of the new file `fd`. With O_DIRECT on the descriptor, whole aligned
  // chunks go through a per-thread aligned buffer; the last one is zero-padded to the alignment and
  // the file truncated back to its size. Falls back to buffered writes (clearing O_DIRECT) where
  // the filesystem refuses the alignment.
  // Errors name "write <object>".
  static Status WriteAll(int fd, std::string_view data, bool try_direct,
                         const std::string& object) {
    const std::string what = "write " + object;
    size_t done = 0;
    const bool direct = try_direct && (::fcntl(fd, F_GETFL) & O_DIRECT) != 0;
    if (direct) {
      thread_local std::unique_ptr<char, decltype(&std::free)> bounce(nullptr, &std::free);
      if (!bounce) {
        void* p = nullptr;
        if (::posix_memalign(&p, kDirectAlign, kDirectChunk) != 0)
          return ResourceExhaustedError(what + ": out of memory");
        bounce.reset(static_cast<char*>(p));
      }
      while (done < data.size()) {
        const size_t n = std::min(kDirectChunk, data.size() - done);
        const size_t padded = (n + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
        std::memcpy(bounce.get(), data.data() + done, n);
        if (padded > n) std::memset(bounce.get() + n, 0, padded - n);
        ssize_t w = ::pwrite(fd, bounce.get(), padded, static_cast<off_t>(done));
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno != EINVAL) return ErrnoToStatus(errno, what);
        if (w != static_cast<ssize_t>(padded)) break;  // refused or short: finish buffered
        done += n;
      }
      if (done == data.size()) {
        if (data.size() % kDirectAlign != 0 &&
            ::ftruncate(fd, static_cast<off_t>(data.size())) != 0)
          return ErrnoToStatus(errno, what + " (truncate)");
        return Status::Ok();
      }
      if (::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_DIRECT) != 0)
        return ErrnoToStatus(errno, what + " (clear O_DIRECT)");
    }
    return PwriteAll(fd, data.data() + done, data.size() - done, done, object);
  }

  // Moves the complete temporary file to its final name (link + unlink for if_absent).
  Status Publish(const std::string& tmp, const std::string& path, const std::string& key,
                 const PutOptions& opts) {
    if (opts.if_absent) {
      if (::link(tmp.c_str(), path.c_str()) != 0) {
        return errno == EEXIST ? AlreadyExistsError("object " + key + " already exists")
                               : ErrnoToStatus(errno, "link " + path);
      }
      ::unlink(tmp.c_str());
      return Status::Ok();
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) return ErrnoToStatus(errno, "rename to " + path);
    return Status::Ok();
  }

  StatusOr<std::string> Get(const std::string& key, uint64_t offset, uint64_t length) override {
    std::string out;
    VMB_RETURN_IF_ERROR(GetInto(key, offset, length, &out));
    return out;
  }

  Status GetInto(const std::string& key, uint64_t offset, uint64_t length,
                 std::string* out_ptr) override {
    std::string& out = *out_ptr;
    VMB_RETURN_IF_ERROR(ValidateKey(key));
    const std::string path = root_ + "/" + key;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, "open " + Describe() + "/" + key);
    struct stat sb;
    if (::fstat(fd, &sb) != 0) {
      int err = errno;
      ::close(fd);
      return ErrnoToStatus(err, "stat " + path);
    }
    uint64_t size = static_cast<uint64_t>(sb.st_size);
    if (offset > size || (length > 0 && offset == size)) {
      ::close(fd);
      return OutOfRangeError("range past the end of object " + key);
    }
    uint64_t want = length == 0 ? size - offset : length;
    out.resize(want);
    uint64_t got = 0;
    while (got < want) {
      ssize_t r = ::pread(fd, out.data() + got, want - got, static_cast<off_t>(offset + got));
      if (r < 0) {
        if (errno == EINTR) continue;
        int err = errno;
        ::close(fd);
        return ErrnoToStatus(err, "read " + Describe() + "/" + key);
      }
      if (r == 0) break;
      got += static_cast<uint64_t>(r);
    }
    ::close(fd);
    if (got < want) {
      return DataLossError("object " + key + " is shorter than expected (wanted " +
                           std::to_string(want) + " bytes at " + std::to_string(offset) + ", got " +
                           std::to_string(got) + ")");
    }
    return Status::Ok();
  }

  StatusOr<ObjectInfo> Head(const std::string& key) override {
    VMB_RETURN_IF_ERROR(ValidateKey(key));
    struct stat sb;
    if (::stat((root_ + "/" + key).c_str(), &sb) != 0)
      return ErrnoToStatus(errno, "stat " + Describe() + "/" + key);
    if (!S_ISREG(sb.st_mode)) return NotFoundError("object " + key + " is not a file");
    return ObjectInfo{key, static_cast<uint64_t>(sb.st_size)};
  }

  StatusOr<ListPage> List(const std::string& prefix, const std::string& token,
                          int max_keys) override {
    // Walk the deepest directory the prefix names fully, then filter by the rest of the prefix.
    std::string dir_part;
    auto slash = prefix.find_last_of('/');
    if (slash != std::string::npos) dir_part = prefix.substr(0, slash);
    std::vector<std::string> keys;
    VMB_RETURN_IF_ERROR(Walk(dir_part, prefix, &keys));
    std::sort(keys.begin(), keys.end());
    ListPage page;
    auto it = token.empty() ? keys.begin() : std::upper_bound(keys.begin(), keys.end(), token);
    for (; it != keys.end(); ++it) {
      if (static_cast<int>(page.objects.size()) == max_keys) {
        page.next_token = page.objects.back().key;
        break;
      }
      struct stat sb;
      if (::stat((root_ + "/" + *it).c_str(), &sb) != 0) continue;  // deleted meanwhile
      page.objects.push_back({*it, static_cast<uint64_t>(sb.st_size)});
    }
    return page;
  }

  Status Delete(const std::vector<std::string>& keys) override {
    for (const auto& key : keys) {
      VMB_RETURN_IF_ERROR(ValidateKey(key));
      if (::unlink((root_ + "/" + key).c_str()) != 0 && errno != ENOENT)
        return ErrnoToStatus(errno, "delete " + Describe() + "/" + key);
      // Remove parent directories left empty (fails harmlessly when they are not).
      for (std::string dir = DirName(root_ + "/" + key); dir.size() > root_.size();
           dir = DirName(dir)) {
        if (::rmdir(dir.c_str()) != 0) break;
      }
    }
    return Status::Ok();
  }

 private:
  // mkdir -p below root_, fsyncing the parent of each directory created.
  Status MakeDirs(const std::string& dir) {
    struct stat sb;
    if (::stat(dir.c_str(), &sb) == 0) {
      if (S_ISDIR(sb.st_mode)) return Status::Ok();
      return FailedPreconditionError(dir + " exists and is not a directory");
    }
    if (dir.size() <= root_.size()) return ErrnoToStatus(ENOENT, "target directory " + root_);
    VMB_RETURN_IF_ERROR(MakeDirs(DirName(dir)));
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
      return ErrnoToStatus(errno, "mkdir " + dir);
    return FsyncDir(DirName(dir));
  }

  Status Walk(const std::string& rel_dir, const std::string& prefix,
              std::vector<std::string>* out) {
    std::string abs = rel_dir.empty() ? root_ : root_ + "/" + rel_dir;
    DIR* d = ::opendir(abs.c_str());
    if (d == nullptr) {
      if (errno == ENOENT || errno == ENOTDIR) return Status::Ok();
      return ErrnoToStatus(errno, "list " + abs);
    }
    Status st;
    while (struct dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      if (rel_dir.empty() && name == kTmpDir) continue;
      if (name.find(".tmp-") != std::string::npos) continue;
      std::string rel = rel_dir.empty() ? name : rel_dir + "/" + name;
      bool is_dir = e->d_type == DT_DIR;
      if (e->d_type == DT_UNKNOWN) {
        struct stat sb;
        if (::stat((root_ + "/" + rel).c_str(), &sb) != 0) continue;
        is_dir = S_ISDIR(sb.st_mode);
      }
      if (is_dir) {
        // Descend only where the prefix can still match.
        std::string as_prefix = rel + "/";
        if (prefix.compare(0, std::min(prefix.size(), as_prefix.size()), as_prefix, 0,
                           std::min(prefix.size(), as_prefix.size())) == 0) {
          st = Walk(rel, prefix, out);
          if (!st.ok()) break;
        }
      } else if (rel.compare(0, prefix.size(), prefix) == 0) {
        out->push_back(rel);
      }
    }
    ::closedir(d);
    return st;
  }

  std::string root_;
};

}  // namespace

StatusOr<std::unique_ptr<ObjectStore>> OpenLocalStore(const std::string& root_in,
                                                      std::shared_ptr<Runtime> runtime) {
  std::string root = root_in;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  if (root.empty()) return InvalidArgumentError("endpoint: empty directory path");
  struct stat sb;
  if (::stat(root.c_str(), &sb) != 0) {
    if (errno == ENOENT) return NotFoundError("target directory " + root + " does not exist");
    return ErrnoToStatus(errno, "target directory " + root);
  }
  if (!S_ISDIR(sb.st_mode)) return InvalidArgumentError("target " + root + " is not a directory");
  if (::access(root.c_str(), R_OK | X_OK) != 0)
    return ErrnoToStatus(errno, "target directory " + root);
  return std::unique_ptr<ObjectStore>(new LocalStore(root, std::move(runtime)));
}

}  // namespace vmbackup::internal
