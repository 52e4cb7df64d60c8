// LocalStore implementation (see local_store.h).
//
// Every path below the root is resolved relative to root_fd_, the directory descriptor opened once
// by OpenLocalStore, never as a string from "/". Lookups of existing paths go through OpenBeneath()
// (openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, or the openat(O_NOFOLLOW) walk); changes use
// mkdirat / linkat / renameat / unlinkat on a parent directory descriptor obtained that way, with a
// name that is a single component, so the kernel never follows a link on our behalf. A symbolic
// link shows up as ELOOP and becomes SymlinkError().
#include "store/local_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <utility>

#include "core/errors.h"
#include "core/util.h"

namespace vmbackup::internal {
namespace {

// How often a Put retries when concurrent Deletes (of this or another process) keep removing the
// directory it creates, and the pause before each retry: a yield at first, then a random sleep
// that doubles up to ~2 ms, so the other writers' Deletes stop landing in the same instant. Under
// load (sanitizers, 2 cores, 4 writers in one directory) 16 rounds without a pause were not enough.
constexpr int kRaceRounds = 64;

void BackOffFromDeletes(int round) {
  if (round < 2) {
    std::this_thread::yield();
    return;
  }
  thread_local std::minstd_rand rng(std::random_device{}());
  const int cap_us = 32 << std::min(round, 6);
  std::this_thread::sleep_for(
      std::chrono::microseconds(std::uniform_int_distribution<int>(1, cap_us)(rng)));
}

constexpr const char* kTmpDir = ".tmp";
// Durable objects of at least kDirectMin bytes are written with O_DIRECT in kDirectChunk pieces.
constexpr size_t kDirectMin = 1 << 20;
constexpr size_t kDirectChunk = 8 << 20;
constexpr size_t kDirectAlign = 4096;
// Modes of what the store creates (before the umask): guest data is for the target's owner only.
constexpr mode_t kFileMode = 0600;
constexpr mode_t kDirMode = 0700;

std::atomic<bool> g_without_openat2{false};

// An owned file descriptor (closed on destruction).
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  // Closes now; returns close()'s result (0, or -1 with errno).
  int Close() { return ::close(std::exchange(fd_, -1)); }

 private:
  int fd_ = -1;
};

// Splits "a/b/c" into {"a/b", "c"} and "c" into {"", "c"}.
std::pair<std::string, std::string> SplitKey(const std::string& rel) {
  auto slash = rel.rfind('/');
  if (slash == std::string::npos) return {"", rel};
  return {rel.substr(0, slash), rel.substr(slash + 1)};
}

// True when `name` in directory `dirfd` is a symbolic link (not followed).
// ObjectInfo::version of a file: a key is replaced by renaming a new file over it (another inode),
// and a write in place changes the modification time.
std::string FileVersion(const struct stat& sb) {
  return std::to_string(sb.st_dev) + ":" + std::to_string(sb.st_ino) + ":" +
         std::to_string(sb.st_mtim.tv_sec) + "." + std::to_string(sb.st_mtim.tv_nsec);
}

bool IsLinkAt(int dirfd, const char* name) {
  struct stat sb;
  return ::fstatat(dirfd, name, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(sb.st_mode);
}

// openat2(dirfd, rel, flags, mode) confined below dirfd without following any symbolic link.
// Returns the descriptor, or -1 with errno (ELOOP: a link was met; ENOSYS: no openat2).
int Openat2Beneath(int dirfd, const std::string& rel, int flags, mode_t mode) {
  open_how how{};
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  how.mode = (flags & O_CREAT) != 0 ? mode : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  for (int attempt = 0;; ++attempt) {
    long fd = ::syscall(SYS_openat2, dirfd, rel.c_str(), &how, sizeof how);
    // EAGAIN: the kernel could not rule out a ".." race; keys have no "..", so it is only retried.
    if (fd < 0 && (errno == EINTR || errno == EAGAIN) && attempt < 8) continue;
    return static_cast<int>(fd);
  }
}

// The same without openat2: each directory on the way is opened with O_NOFOLLOW relative to the
// previous one; the last component with O_NOFOLLOW too. `rel` must be a valid key (no "." or "..",
// no empty segment), which is what keeps the walk below dirfd. A link met on the way is ELOOP.
int WalkBeneath(int dirfd, const std::string& rel, int flags, mode_t mode) {
  Fd cur;
  int at = dirfd;
  size_t start = 0;
  while (true) {
    size_t slash = rel.find('/', start);
    std::string name =
        rel.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    const bool last = slash == std::string::npos;
    const int f =
        last ? (flags | O_NOFOLLOW | O_CLOEXEC) : (O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int fd = ::openat(at, name.c_str(), f, mode);
    if (fd < 0) {
      int err = errno;
      // O_DIRECTORY | O_NOFOLLOW on a link fails with ENOTDIR (or ELOOP): tell links apart.
      if ((err == ENOTDIR || err == ELOOP) && IsLinkAt(at, name.c_str())) err = ELOOP;
      errno = err;
      return -1;
    }
    if (last) return fd;
    cur = Fd(fd);
    at = cur.get();
    start = slash + 1;
  }
}

class LocalStore final : public ObjectStore {
 public:
  LocalStore(std::string root, Fd root_fd, bool use_openat2, std::shared_ptr<Runtime> rt)
      : ObjectStore(std::move(rt)),
        root_(std::move(root)),
        root_fd_(std::move(root_fd)),
        use_openat2_(use_openat2) {}

  std::string Describe() const override { return "file://" + root_; }

  // kInvalidArgument (bad key), kPermissionDenied naming the key when a symbolic link is on the
  // way to it or to .tmp/, or sits at the key (nothing is written through it), kAlreadyExists
  // (if_absent), kFailedPrecondition (a directory on the way is a file), else the errno mapping of
  // the failing call. On failure the temporary file is removed and the key is unchanged.
  Status Put(const std::string& key, std::string_view data, const PutOptions& opts) override {
    VMB_RETURN_IF_ERROR(ValidateKey(key));
    const auto [dir, base] = SplitKey(key);
    const std::string subject = "object " + key;
    VMB_ASSIGN_OR_RETURN(Fd parent, MakeDirs(dir, subject));
    VMB_ASSIGN_OR_RETURN(Fd tmp_dir, MakeDirs(kTmpDir, subject));
    VMB_ASSIGN_OR_RETURN(std::string tmp_name, RandomHex(8));
    const std::string tmp = std::string(kTmpDir) + "/" + tmp_name;
    // Large durable objects (packs) bypass the page cache: the kernel's copy into it cost a sixth
    // of a full backup's CPU time, and a backup should not evict the host's cached VM data.
    // O_EXCL never follows a link: a planted name fails with EEXIST.
    const bool direct = opts.durable && data.size() >= kDirectMin;
    const int create = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    int raw = -1;
    if (direct) raw = ::openat(tmp_dir.get(), tmp_name.c_str(), create | O_DIRECT, kFileMode);
    if (!direct || (raw < 0 && errno == EINVAL))  // EINVAL: the filesystem has no O_DIRECT (tmpfs)
      raw = ::openat(tmp_dir.get(), tmp_name.c_str(), create, kFileMode);
    if (raw < 0) return ErrnoToStatus(errno, "create " + Describe() + "/" + tmp);
    Fd fd(raw);
    Status st = WriteAll(fd.get(), data, direct, Describe() + "/" + key);
    if (st.ok() && opts.durable && ::fdatasync(fd.get()) != 0)
      st = ErrnoToStatus(errno, "fsync " + Describe() + "/" + key);
    if (fd.Close() != 0 && st.ok()) st = ErrnoToStatus(errno, "close " + Describe() + "/" + tmp);
    if (st.ok()) st = Publish(tmp_dir.get(), tmp_name, parent.get(), base, key, opts);
    // A concurrent Delete (this or another process) removed the then-empty parent directory (the
    // rename into the dead directory is ENOENT): recreate it and try again. Bounded: each round
    // needs another Delete to win the race, and the rounds back off so that it stops winning.
    for (int round = 0; round < kRaceRounds && st.code() == StatusCode::kNotFound; ++round) {
      BackOffFromDeletes(round);
      auto again = MakeDirs(dir, subject);
      if (!again.ok()) {
        st = again.status();
        break;
      }
      parent = std::move(*again);
      st = Publish(tmp_dir.get(), tmp_name, parent.get(), base, key, opts);
    }
    if (!st.ok()) {
      ::unlinkat(tmp_dir.get(), tmp_name.c_str(), 0);
      return st;
    }
    if (opts.durable && ::fsync(parent.get()) != 0)
      return ErrnoToStatus(errno, "fsync directory " + Describe() + "/" + dir);
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

  // Moves the complete temporary file `tmp_name` in `tmp_dir` to `base` in `parent` (link + unlink
  // for if_absent). kAlreadyExists (if_absent and the key exists), kPermissionDenied when a
  // symbolic link sits at the key (it is left alone), kNotFound when `parent` was removed
  // meanwhile, else the errno of the failing call.
  Status Publish(int tmp_dir, const std::string& tmp_name, int parent, const std::string& base,
                 const std::string& key, const PutOptions& opts) {
    if (opts.if_absent) {
      if (::linkat(tmp_dir, tmp_name.c_str(), parent, base.c_str(), 0) != 0) {
        if (errno != EEXIST) return ErrnoToStatus(errno, "link " + Describe() + "/" + key);
        if (IsLinkAt(parent, base.c_str())) return SymlinkError("object " + key, key);
        return AlreadyExistsError("object " + key + " already exists");
      }
      ::unlinkat(tmp_dir, tmp_name.c_str(), 0);
      return Status::Ok();
    }
    // rename() would replace a link at the key without following it; refusing keeps the rule
    // simple (a link below the root is never used) and leaves the evidence in place.
    if (IsLinkAt(parent, base.c_str())) return SymlinkError("object " + key, key);
    if (::renameat(tmp_dir, tmp_name.c_str(), parent, base.c_str()) != 0)
      return ErrnoToStatus(errno, "rename to " + Describe() + "/" + key);
    return Status::Ok();
  }

  StatusOr<std::string> Get(const std::string& key, uint64_t offset, uint64_t length) override {
    std::string out;
    VMB_RETURN_IF_ERROR(GetInto(key, offset, length, &out));
    return out;
  }

  // kNotFound (missing, or not a regular file), kPermissionDenied (a link on the way),
  // kOutOfRange (offset past the end), kDataLoss (object shorter than the range, or a whole read
  // of more than kMaxWholeObjectRead: both detected before anything is allocated).
  Status GetInto(const std::string& key, uint64_t offset, uint64_t length,
                 std::string* out_ptr) override {
    std::string& out = *out_ptr;
    VMB_RETURN_IF_ERROR(ValidateKey(key));
    // O_NONBLOCK: opening a FIFO planted at the key must not wait for a writer (it is refused
    // below); it changes nothing for regular files.
    VMB_ASSIGN_OR_RETURN(Fd fd, OpenBeneath(key, O_RDONLY | O_NONBLOCK, "object " + key, "open"));
    struct stat sb;
    if (::fstat(fd.get(), &sb) != 0) return ErrnoToStatus(errno, "stat " + Describe() + "/" + key);
    if (!S_ISREG(sb.st_mode)) return NotFoundError("object " + key + " is not a regular file");
    const uint64_t size = static_cast<uint64_t>(sb.st_size);
    if (offset > size || (length > 0 && offset == size))
      return OutOfRangeError("range past the end of object " + key);
    if (length == 0 && size - offset > kMaxWholeObjectRead) return TooLargeForWholeRead(key, size);
    if (length > size - offset) return ShortObject(key, offset, length, size - offset);
    const uint64_t want = length == 0 ? size - offset : length;
    out.resize(want);
    uint64_t got = 0;
    while (got < want) {
      ssize_t r = ::pread(fd.get(), out.data() + got, want - got, static_cast<off_t>(offset + got));
      if (r < 0) {
        if (errno == EINTR) continue;
        return ErrnoToStatus(errno, "read " + Describe() + "/" + key);
      }
      if (r == 0) break;  // truncated since the fstat
      got += static_cast<uint64_t>(r);
    }
    if (got < want) return ShortObject(key, offset, want, got);
    return Status::Ok();
  }

  // kNotFound (missing, or not a regular file), kPermissionDenied (a symbolic link on the way or
  // at the key).
  StatusOr<ObjectInfo> Head(const std::string& key) override {
    VMB_RETURN_IF_ERROR(ValidateKey(key));
    VMB_ASSIGN_OR_RETURN(Fd fd, OpenBeneath(key, O_PATH, "object " + key, "stat"));
    struct stat sb;
    if (::fstat(fd.get(), &sb) != 0) return ErrnoToStatus(errno, "stat " + Describe() + "/" + key);
    if (!S_ISREG(sb.st_mode)) return NotFoundError("object " + key + " is not a file");
    return ObjectInfo{key, static_cast<uint64_t>(sb.st_size), FileVersion(sb)};
  }

  // Regular files only; symbolic links met on the way are skipped and never descended into. The
  // directory the prefix names (the part before its last '/') being reached through a link is
  // kPermissionDenied; it being missing is an empty page.
  StatusOr<ListPage> List(const std::string& prefix, const std::string& token,
                          int max_keys) override {
    // Walk the deepest directory the prefix names fully, then filter by the rest of the prefix.
    std::string dir_part;
    auto slash = prefix.find_last_of('/');
    if (slash != std::string::npos) dir_part = prefix.substr(0, slash);
    std::vector<std::string> keys;
    if (dir_part.empty() || ValidateKey(dir_part).ok()) {  // else no key can match
      auto dir = OpenDir(dir_part, "list " + prefix, "list");
      if (dir.ok()) {
        VMB_RETURN_IF_ERROR(Walk(dir->get(), dir_part, prefix, &keys));
      } else if (dir.status().code() != StatusCode::kNotFound) {
        return dir.status();
      }
    }
    std::sort(keys.begin(), keys.end());
    ListPage page;
    auto it = token.empty() ? keys.begin() : std::upper_bound(keys.begin(), keys.end(), token);
    for (; it != keys.end(); ++it) {
      if (static_cast<int>(page.objects.size()) == max_keys) {
        page.next_token = page.objects.back().key;
        break;
      }
      // Deleted or replaced (by a link, say) since the walk: not listed.
      int raw = Open(*it, O_PATH);
      if (raw < 0) continue;
      Fd fd(raw);
      struct stat sb;
      if (::fstat(fd.get(), &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
      page.objects.push_back({*it, static_cast<uint64_t>(sb.st_size), FileVersion(sb)});
    }
    return page;
  }

  // Missing keys (also below a missing directory or a file) are fine. A key whose path holds a
  // symbolic link is kPermissionDenied and nothing is removed for it (the link stays); the keys
  // before it are deleted, the ones after it are not tried.
  Status Delete(const std::vector<std::string>& keys) override {
    for (const auto& key : keys) {
      VMB_RETURN_IF_ERROR(ValidateKey(key));
      const auto [dir, base] = SplitKey(key);
      const std::string subject = "object " + key;
      auto parent = OpenDir(dir, subject, "delete");
      if (!parent.ok()) {
        if (parent.status().code() == StatusCode::kNotFound) continue;
        return parent.status();
      }
      if (IsLinkAt(parent->get(), base.c_str())) return SymlinkError(subject, key);
      if (::unlinkat(parent->get(), base.c_str(), 0) != 0 && errno != ENOENT)
        return ErrnoToStatus(errno, "delete " + Describe() + "/" + key);
      // Remove parent directories left empty (fails harmlessly when they are not). unlinkat with
      // AT_REMOVEDIR never follows a link at the name (ENOTDIR).
      for (std::string d = dir; !d.empty();) {
        auto [up, name] = SplitKey(d);
        auto up_fd = OpenDir(up, subject, "delete");
        if (!up_fd.ok() || ::unlinkat(up_fd->get(), name.c_str(), AT_REMOVEDIR) != 0) break;
        d = up;
      }
    }
    return Status::Ok();
  }

 private:
  // OpenBeneath's raw form: the descriptor, or -1 with errno (ELOOP: a symbolic link on the way
  // or at `rel`). `rel` empty is the root itself.
  int Open(const std::string& rel, int flags, mode_t mode = 0) const {
    if (rel.empty()) return ::openat(root_fd_.get(), ".", flags | O_CLOEXEC, mode);
    int fd = use_openat2_ ? Openat2Beneath(root_fd_.get(), rel, flags, mode)
                          : WalkBeneath(root_fd_.get(), rel, flags, mode);
    if (fd >= 0 && (flags & O_PATH) != 0) {
      // An O_PATH open can name a link itself (the walk's O_NOFOLLOW): refuse it all the same.
      struct stat sb;
      if (::fstat(fd, &sb) == 0 && S_ISLNK(sb.st_mode)) {
        ::close(fd);
        errno = ELOOP;
        return -1;
      }
    }
    return fd;
  }

  // Opens `rel` (a key or a directory below the root) with `flags`. Errors start with `subject`
  // ("object <key>", "list <prefix>"):
  // kPermissionDenied when a symbolic link is on the way (SymlinkError), otherwise the errno
  // mapping of the open ("<what> file://root/rel: ...").
  StatusOr<Fd> OpenBeneath(const std::string& rel, int flags, const std::string& subject,
                           const char* what) const {
    int fd = Open(rel, flags);
    if (fd >= 0) return Fd(fd);
    if (errno == ELOOP || errno == EXDEV) return SymlinkError(subject, rel);
    return ErrnoToStatus(errno, std::string(what) + " " + Describe() + "/" + rel);
  }

  // The existing directory `rel` (root when empty), readable (so it can be fsynced and listed).
  // kNotFound when it or a directory above it is missing or a file; kPermissionDenied through a
  // link.
  StatusOr<Fd> OpenDir(const std::string& rel, const std::string& subject, const char* what) const {
    return OpenBeneath(rel, O_RDONLY | O_DIRECTORY, subject, what);
  }

  // mkdir -p of `rel` below the root (mode 0700), fsyncing the parent of each directory created;
  // returns the directory, open for reading. kPermissionDenied starting with `subject` when a
  // component is a symbolic link, kFailedPrecondition when one is not a directory.
  StatusOr<Fd> MakeDirs(const std::string& rel, const std::string& subject) {
    for (int round = 0;; ++round) {
      int fd = Open(rel, O_RDONLY | O_DIRECTORY);
      if (fd >= 0) return Fd(fd);
      if (errno == ELOOP || errno == EXDEV) return SymlinkError(subject, rel);
      if (errno != ENOENT && errno != ENOTDIR)
        return ErrnoToStatus(errno, "open directory " + Describe() + "/" + rel);
      // Walk down from the root, creating what is missing. Each step opens one name with
      // O_NOFOLLOW relative to the directory above, so the walk cannot leave the root.
      Fd cur(::openat(root_fd_.get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!cur.valid()) return ErrnoToStatus(errno, "open target directory " + root_);
      bool vanished = false;  // a concurrent Delete removed what we just created
      size_t start = 0;
      while (start <= rel.size() && !vanished) {
        size_t slash = rel.find('/', start);
        if (slash == std::string::npos) slash = rel.size();
        const std::string name = rel.substr(start, slash - start);
        const std::string so_far = rel.substr(0, slash);
        const int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
        int next = ::openat(cur.get(), name.c_str(), flags);
        if (next < 0 && errno == ENOENT) {
          if (::mkdirat(cur.get(), name.c_str(), kDirMode) == 0) {
            if (::fsync(cur.get()) != 0)
              return ErrnoToStatus(errno, "fsync directory " + Describe() + "/" + so_far);
          } else if (errno != EEXIST) {
            return ErrnoToStatus(errno, "mkdir " + Describe() + "/" + so_far);
          }
          next = ::openat(cur.get(), name.c_str(), flags);
          if (next < 0 && errno == ENOENT) {
            vanished = true;
            break;
          }
        }
        if (next < 0) {
          if ((errno == ENOTDIR || errno == ELOOP) && IsLinkAt(cur.get(), name.c_str()))
            return SymlinkError(subject, so_far);
          if (errno == ENOTDIR)
            return FailedPreconditionError(Describe() + "/" + so_far +
                                           " exists and is not a directory");
          return ErrnoToStatus(errno, "open directory " + Describe() + "/" + so_far);
        }
        cur = Fd(next);
        start = slash + 1;
      }
      if (!vanished) return cur;
      if (round == kRaceRounds)
        return NotFoundError("directory " + Describe() + "/" + rel +
                             " keeps being removed while it is created");
      BackOffFromDeletes(round);
    }
  }

  // kPermissionDenied for `subject` ("object <key>"), whose path meets a symbolic link at or above
  // `rel`. Names the first link on `rel` when it can be found (a diagnostic only: the check is not
  // repeated atomically).
  Status SymlinkError(const std::string& subject, const std::string& rel) const {
    std::string link = rel;
    for (size_t end = 0; end != std::string::npos;) {
      end = rel.find('/', end + 1);
      const std::string part = rel.substr(0, end);
      struct stat sb;
      if (::fstatat(root_fd_.get(), part.c_str(), &sb, AT_SYMLINK_NOFOLLOW) != 0) break;
      if (S_ISLNK(sb.st_mode)) {
        link = part;
        break;
      }
    }
    return PermissionDeniedError(subject + ": " + Describe() + "/" + link +
                                 " is a symbolic link; links inside a backup target are never "
                                 "followed (someone else wrote it there: remove it)");
  }

  static Status ShortObject(const std::string& key, uint64_t offset, uint64_t want, uint64_t got) {
    return DataLossError("object " + key + " is shorter than expected (wanted " +
                         std::to_string(want) + " bytes at " + std::to_string(offset) + ", got " +
                         std::to_string(got) + ")");
  }

  // Collects the regular files below the directory `dirfd` (= `rel_dir`) whose keys start with
  // `prefix`. Symbolic links are skipped; subdirectories are opened with O_NOFOLLOW relative to
  // `dirfd`.
  Status Walk(int dirfd, const std::string& rel_dir, const std::string& prefix,
              std::vector<std::string>* out) {
    int dup = ::fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) return ErrnoToStatus(errno, "list " + Describe() + "/" + rel_dir);
    DIR* d = ::fdopendir(dup);
    if (d == nullptr) {
      int err = errno;
      ::close(dup);
      return ErrnoToStatus(err, "list " + Describe() + "/" + rel_dir);
    }
    Status st;
    while (struct dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      // .tmp/ is listed only when asked for by name (garbage collection of stray temporaries).
      if (rel_dir.empty() && name == kTmpDir && prefix.compare(0, 5, ".tmp/") != 0) continue;
      if (name.find(".tmp-") != std::string::npos) continue;
      std::string rel = rel_dir.empty() ? name : rel_dir + "/" + name;
      unsigned char type = e->d_type;
      if (type == DT_UNKNOWN) {
        struct stat sb;
        if (::fstatat(dirfd, name.c_str(), &sb, AT_SYMLINK_NOFOLLOW) != 0) continue;
        type = S_ISDIR(sb.st_mode) ? DT_DIR : S_ISREG(sb.st_mode) ? DT_REG : DT_UNKNOWN;
      }
      if (type == DT_DIR) {
        // Descend only where the prefix can still match.
        std::string as_prefix = rel + "/";
        const size_t n = std::min(prefix.size(), as_prefix.size());
        if (prefix.compare(0, n, as_prefix, 0, n) != 0) continue;
        int sub = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) continue;  // removed, or replaced by a link, since readdir
        Fd sub_fd(sub);
        st = Walk(sub_fd.get(), rel, prefix, out);
        if (!st.ok()) break;
      } else if (type == DT_REG && rel.compare(0, prefix.size(), prefix) == 0) {
        out->push_back(rel);
      }
    }
    ::closedir(d);
    return st;
  }

  const std::string root_;  // as configured (messages)
  const Fd root_fd_;        // the root, resolved once
  const bool use_openat2_;
};

// Whether openat2 with our resolve flags works here (kernel >= 5.6 and not filtered by seccomp,
// which some container runtimes answer with EPERM or ENOSYS).
bool Openat2Works(int root_fd) {
  int fd = Openat2Beneath(root_fd, ".", O_PATH | O_DIRECTORY, 0);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

}  // namespace

void SetLocalStoreWithoutOpenat2ForTest(bool without) { g_without_openat2 = without; }

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
  // The configured path is trusted (links included) and resolved here, once.
  Fd fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoToStatus(errno, "target directory " + root);
  const bool use_openat2 = !g_without_openat2 && Openat2Works(fd.get());
  return std::unique_ptr<ObjectStore>(
      new LocalStore(root, std::move(fd), use_openat2, std::move(runtime)));
}

}  // namespace vmbackup::internal
