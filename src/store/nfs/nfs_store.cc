// NfsStore implementation (see nfs_store.h and docs/nfs.md).
//
// Every libnfs call is issued with its async API on the Runtime's io_context. Each libnfs context
// (a Conn: one TCP connection and one mount) lives on an asio strand of its own: a
// stream_descriptor over a dup() of nfs_get_fd waits for the events nfs_which_events asks for and
// calls nfs_service on that strand. An operation is a C++20 coroutine (asio awaitable): its
// retry loop (Run) runs on a strand of the operation, each attempt on the strand of the connection
// it borrowed, and it suspends (Conn::Pump) until the calls it waits for completed, the connection
// failed, or the deadline (an asio steady_timer) passed. Nothing blocks an io thread: the blocking
// forms (Put, Get, ...) wait on a future on the caller's thread; the async forms complete on the
// io_context. A context that failed (socket error, deadline) is destroyed at once, while the
// callbacks' targets are still alive, and the next attempt connects a fresh one: that is how the
// store reconnects after a server restart.
#include "store/nfs/nfs_store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <vector>

#include "core/asio.h"
// (after core/asio.h, which includes <utility> first for Boost 1.74)
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

extern "C" {
// Order matters: each libnfs header needs the ones before it.
#include <nfsc/libnfs.h>
// (keep)
#include <nfsc/libnfs-raw.h>
// (keep)
#include <nfsc/libnfs-raw-mount.h>
#include <nfsc/libnfs-raw-nfs.h>
}

#include "core/errors.h"
#include "core/retry.h"
#include "core/runtime.h"
#include "core/util.h"

// GCC 12 mistakes the allocation of asio's coroutine frames (awaitable_frame_base's own operator
// new and delete, which match) for a mismatched pair.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

// In a coroutine: co_returns `expr` (a Status) if it is not OK.
#define VMB_CO_RETURN_IF_ERROR(expr)              \
  do {                                            \
    ::vmbackup::Status vmb_status_ = (expr);      \
    if (!vmb_status_.ok()) co_return vmb_status_; \
  } while (0)

// In a coroutine: `lhs = value of expr` (a StatusOr<T>), or co_returns its status.
#define VMB_CO_ASSIGN_OR_RETURN(lhs, expr) \
  VMB_CO_ASSIGN_OR_RETURN_IMPL(VMB_CONCAT(vmb_statusor_, __LINE__), lhs, expr)
#define VMB_CO_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) co_return std::move(tmp).status();  \
  lhs = std::move(tmp).value()

namespace vmbackup::internal {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using Clock = std::chrono::steady_clock;
using Strand = asio::strand<asio::io_context::executor_type>;
using std::chrono::milliseconds;

constexpr const char* kTmpDir = ".tmp";
// Modes of what the store creates (sent in CREATE / MKDIR; the server may apply its own umask):
// guest data is for the target's owner only.
constexpr int kFileMode = 0600;
constexpr int kDirMode = 0700;
// libnfs 4.0.0 cannot encode an NFSv4 WRITE of more than about 3.8 KB ("Failed to encode
// COMPOUND4args"), and reports a write maximum of 0 on v4: v4 writes go in chunks of this size.
constexpr uint64_t kV4MaxWrite = 3584;
constexpr uint64_t kV4MaxRead = 64 * 1024;
constexpr uint64_t kDefaultChunk = 1024 * 1024;
// Bytes kept in flight per operation (pipelined WRITE / READ calls on one connection).
constexpr uint64_t kWindowBytes = 8u << 20;
constexpr int kMaxWindowCalls = 64;
// What an operation that the closing of the store ended fails with.
constexpr const char* kClosed = "the NFS store was closed";

// ---- one libnfs call ----------------------------------------------------------------------------

// The completion of one async libnfs call. Lives until the call completed or its context was
// destroyed.
struct Call {
  enum Kind { kPlain, kStat, kRead };
  explicit Call(Kind k = kPlain) : kind(k) {}
  Kind kind;
  bool done = false;
  int err = 0;               // >= 0 success (bytes for READ / WRITE), else -errno
  std::string msg;           // libnfs's error text
  void* ptr = nullptr;       // nfsfh* / nfsdir* for open / opendir
  nfs_stat_64 st{};          // for kStat
  char* read_dst = nullptr;  // for kRead: where the bytes go
  uint64_t read_cap = 0;     // for kRead: bytes asked for
  void Reset() { *this = Call(kind); }
};

void OnNfsDone(int err, struct nfs_context*, void* data, void* private_data) {
  auto* c = static_cast<Call*>(private_data);
  c->done = true;
  c->err = err;
  if (err < 0) {
    if (data != nullptr)
      c->msg.assign(static_cast<const char*>(data), strnlen(static_cast<const char*>(data), 1024));
    return;
  }
  switch (c->kind) {
    case Call::kStat:
      if (data != nullptr) std::memcpy(&c->st, data, sizeof c->st);
      break;
    case Call::kRead:
      if (static_cast<uint64_t>(err) > c->read_cap) {
        c->err = -EIO;
        c->msg = "server returned more bytes than asked for";
      } else if (err > 0) {
        std::memcpy(c->read_dst, data, static_cast<size_t>(err));
      }
      break;
    case Call::kPlain:
      c->ptr = data;
      break;
  }
}

// errno values that are the server's definitive answer; every other failure (EIO, ESTALE,
// connection errors, libnfs's EFAULT / EINTR for RPC errors and cancellations) is transient.
bool IsDefinitive(int err) {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
    case EISDIR:
    case EEXIST:
    case EACCES:
    case EPERM:
    case EROFS:
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
    case ENOTEMPTY:
    case EINVAL:
    case ENAMETOOLONG:
    case EMLINK:
    case EXDEV:
    case EOPNOTSUPP:
    case ENOSYS:
      return true;
    default:
      return false;
  }
}

// The Status for a failed call: the errno mapping for the server's definitive answers, kUnavailable
// (retried) for the rest.
Status CallError(const Call& c, const std::string& what) {
  int err = -c.err;
  if (IsDefinitive(err)) return ErrnoToStatus(err, what);
  return UnavailableError(what + ": " + (c.msg.empty() ? std::strerror(err) : c.msg));
}

// ---- connections --------------------------------------------------------------------------------

// Counts the store's objects that io handlers may still reach (its Core and every Conn), so that
// destroying the store can wait until the last of them is gone before the Runtime may go.
struct Tracker {
  std::mutex mu;
  std::condition_variable cv;
  int live = 0;                // GUARDED_BY(mu)
  std::shared_ptr<void> keep;  // the Runtime, when the store was destroyed on an io thread
  void Add() {
    std::lock_guard<std::mutex> l(mu);
    ++live;
  }
  void Remove() {
    std::lock_guard<std::mutex> l(mu);
    if (--live == 0) cv.notify_all();
  }
  void WaitForNone() {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [this] { return live == 0; });
  }
};

// Counts its holder in a Tracker for as long as it lives. Declared first in a class, it is
// destroyed last: the holder's asio objects are gone before the count drops.
class Tracked {
 public:
  explicit Tracked(std::shared_ptr<Tracker> t) : t_(std::move(t)) { t_->Add(); }
  Tracked(Tracked&& o) noexcept = default;  // leaves `o` empty
  Tracked(const Tracked&) = delete;
  Tracked& operator=(const Tracked&) = delete;
  Tracked& operator=(Tracked&&) = delete;
  ~Tracked() {
    if (t_) t_->Remove();
  }
  const std::shared_ptr<Tracker>& tracker() const { return t_; }

 private:
  std::shared_ptr<Tracker> t_;
};

// One libnfs context (one TCP connection and one mount), or the raw RPC context of an export
// listing, driven on the io_context. Used by one operation at a time. Everything but the
// constructor and the destructor runs on `strand`.
//
// The context's socket is watched through a dup() of nfs_get_fd, so asio never closes a
// descriptor libnfs uses; libnfs changes its socket while it mounts (portmapper, mountd, nfsd)
// and the watch follows: after every nfs_service the descriptor number and its inode are compared
// with the watched one, and a new socket is watched afresh (the dup of the old one is closed, which
// ends its waits). Handlers hold the Conn (shared_ptr), so none touches freed memory.
class Conn : public std::enable_shared_from_this<Conn> {
 public:
  Conn(asio::io_context& io, std::shared_ptr<Tracker> tracker)
      : tracked_(std::move(tracker)), strand_(asio::make_strand(io)), desc_(io), wake_(strand_) {}
  // A Conn on `strand` (the export listing shares the strand of the connection that asks).
  Conn(asio::io_context& io, std::shared_ptr<Tracker> tracker, Strand strand)
      : tracked_(std::move(tracker)), strand_(std::move(strand)), desc_(io), wake_(strand_) {}
  // The last reference is gone: no handler runs on it any more.
  ~Conn() { Close(); }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  const Strand& strand() const { return strand_; }

  nfs_context* nfs = nullptr;  // the connection's context, or null
  rpc_context* rpc = nullptr;  // an export listing's context, or null
  uint64_t read_chunk = kDefaultChunk;
  uint64_t write_chunk = kDefaultChunk;

  bool Alive() const { return nfs != nullptr || rpc != nullptr; }
  bool shut_down() const { return shut_down_; }
  // The error that broke the context (empty when it was closed on purpose).
  const std::string& failure() const { return failure_; }

  // A fresh context will be set up: forget the last failure.
  void Reset() { failure_.clear(); }

  // A file handle opened on the context: closed with it unless Closing(fh) came first (libnfs
  // does not free the handles of a context it destroys).
  void Opened(nfsfh* fh) { open_files_.push_back(fh); }
  void Closing(nfsfh* fh) { std::erase(open_files_, fh); }

  // Destroys the context (after closing the files still open on it). Pending calls are cancelled
  // (their callbacks run now), so every Call still in flight must be alive when this is called.
  void Close() {
    Unwatch();
    if (nfs != nullptr) {
      for (nfsfh* fh : open_files_) {
        nfs_close_async(
            nfs, fh, [](int, nfs_context*, void*, void*) {}, nullptr);
      }
    }
    open_files_.clear();
    if (nfs != nullptr) nfs_destroy_context(nfs);
    if (rpc != nullptr) rpc_destroy_context(rpc);
    nfs = nullptr;
    rpc = nullptr;
  }

  // The context failed with `why`: closes it and wakes the operation waiting in Pump.
  void Fail(std::string why) {
    failure_ = std::move(why);
    Close();
    Wake();
  }

  // The store is closing: fails what runs on the connection, and it never connects again.
  void Shutdown() {
    shut_down_ = true;
    if (aux_) aux_->Shutdown();
    Fail(kClosed);
  }

  // The export listing a mount attempt runs beside this connection (shut down with it).
  void SetAux(std::shared_ptr<Conn> aux) { aux_ = std::move(aux); }

  // An attempt threw while calls were in flight: their Call objects are gone, so the context may
  // neither be serviced nor destroyed (either would run their callbacks). It is given up (leaked:
  // this only happens when memory ran out).
  void Abandon() {
    Unwatch();
    open_files_.clear();
    nfs = nullptr;
    rpc = nullptr;
    failure_ = "abandoned";
  }

  // True when an idle connection was closed by the server (it restarted or dropped us).
  bool LooksDead() const {
    if (nfs == nullptr) return false;
    if (nfs_queue_length(nfs) != 0) return false;
    const int fd = nfs_get_fd(nfs);
    if (fd < 0) return true;
    char b;
    const ssize_t r = ::recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r >= 0) return true;  // end of stream, or bytes nobody asked for
    return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
  }

  // Suspends until ready() (checked after every nfs_service), the context failed (the failure,
  // kUnavailable) or `deadline` passed (the context is destroyed; kUnavailable "no answer before
  // the deadline").
  awaitable<Status> Pump(std::function<bool()> ready, Clock::time_point deadline) {
    for (;;) {
      if (!Alive()) {
        co_return UnavailableError(failure_.empty() ? std::string("connection closed") : failure_);
      }
      if (ready()) co_return Status::Ok();
      const auto now = Clock::now();
      if (now >= deadline) {
        Close();
        co_return UnavailableError("no answer before the deadline");
      }
      Arm();
      if (!Alive()) continue;
      // Without a socket (between connections) libnfs is serviced every 100 ms, as it expects.
      const bool no_socket = Fd() < 0;
      wake_.expires_at(no_socket ? std::min(deadline, now + milliseconds(100)) : deadline);
      boost::system::error_code ec;
      co_await wake_.async_wait(asio::redirect_error(use_awaitable, ec));
      if (no_socket && Alive() && Service(0) < 0) Fail(ErrorText("connection failed"));
    }
  }

 private:
  int Fd() const { return nfs != nullptr ? nfs_get_fd(nfs) : rpc_get_fd(rpc); }
  int Events() const { return nfs != nullptr ? nfs_which_events(nfs) : rpc_which_events(rpc); }
  int Service(int revents) {
    return nfs != nullptr ? nfs_service(nfs, revents) : rpc_service(rpc, revents);
  }
  std::string ErrorText(const char* fallback) const {
    const char* e = nfs != nullptr   ? nfs_get_error(nfs)
                    : rpc != nullptr ? rpc_get_error(rpc)
                                     : nullptr;
    return e != nullptr && *e != '\0' ? std::string(e) : std::string(fallback);
  }

  // Wakes the operation suspended in Pump (if any): it checks its condition again.
  void Wake() { wake_.cancel(); }

  // Queues the waits libnfs wants (nfs_which_events) on its current socket.
  void Arm() {
    if (!Alive()) return;
    const int fd = Fd();
    if (fd < 0) {
      Unwatch();
      return;
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      Unwatch();
      return;
    }
    if (!desc_.is_open() || fd != fd_ || st.st_ino != ino_) {
      // A new socket (or a number libnfs closed and reused): never watch the old one.
      Unwatch();
      const int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
      if (dup < 0) {
        Fail(std::string("dup: ") + std::strerror(errno));
        return;
      }
      boost::system::error_code ec;
      desc_.assign(dup, ec);
      if (ec) {
        ::close(dup);
        Fail("watch the connection's socket: " + ec.message());
        return;
      }
      fd_ = fd;
      ino_ = st.st_ino;
    }
    const int events = Events();
    for (int dir = 0; dir < 2; ++dir) {
      const int bit = dir == 0 ? POLLIN : POLLOUT;
      if ((events & bit) == 0 || waiting_[dir]) continue;
      desc_.async_wait(dir == 0 ? asio::posix::stream_descriptor::wait_read
                                : asio::posix::stream_descriptor::wait_write,
                       asio::bind_executor(strand_, [self = shared_from_this(), gen = gen_,
                                                     dir](const boost::system::error_code& ec) {
                         self->OnReady(gen, dir, ec);
                       }));
      waiting_[dir] = true;
    }
  }

  // Stops watching: closes the dup, which ends its waits (their handlers find another gen_).
  void Unwatch() {
    ++gen_;
    waiting_[0] = waiting_[1] = false;
    fd_ = -1;
    ino_ = 0;
    if (desc_.is_open()) {
      boost::system::error_code ignored;
      desc_.close(ignored);
    }
  }

  // The watched socket is readable (dir 0) or writable (dir 1), or the wait failed.
  void OnReady(uint64_t gen, int dir, const boost::system::error_code& ec) {
    if (gen != gen_) return;  // that descriptor is no longer watched
    waiting_[dir] = false;
    if (!Alive() || ec == asio::error::operation_aborted) return;
    const int revents = ec ? POLLERR : dir == 0 ? POLLIN : POLLOUT;
    if (Service(revents) < 0) {
      Fail(ErrorText("connection failed"));
      return;
    }
    Arm();
    Wake();
  }

  const Tracked tracked_;  // first: counts the Conn until its last member is gone
  const Strand strand_;
  asio::posix::stream_descriptor desc_;  // the dup of the watched socket
  asio::steady_timer wake_;              // Pump's wait: expires at the deadline, cancelled to wake
  int fd_ = -1;                          // libnfs's descriptor number of the watched socket
  ino_t ino_ = 0;                        // its inode (sockfs): tells a reused number apart
  uint64_t gen_ = 0;                     // counts Unwatch() calls
  bool waiting_[2] = {false, false};     // a wait for reading / writing is queued
  bool shut_down_ = false;
  std::string failure_;
  std::shared_ptr<Conn> aux_;
  std::vector<nfsfh*> open_files_;
};

// Waits for the call to complete.
awaitable<Status> Wait(Conn& c, Call& call, Clock::time_point deadline) {
  return c.Pump([&call] { return call.done; }, deadline);
}

// Queues a call (rc from the *_async function); a queueing failure breaks the connection.
Status Queued(Conn& c, int rc, const std::string& what) {
  if (rc >= 0) return Status::Ok();
  const char* e = c.nfs != nullptr ? nfs_get_error(c.nfs) : nullptr;
  std::string msg = e != nullptr ? e : std::strerror(-rc);
  c.Close();
  return UnavailableError(what + ": " + msg);
}

// ---- endpoint parsing ---------------------------------------------------------------------------

bool ParsePort(const std::string& v, int* out) {
  if (v.empty() || v.size() > 5 || v.find_first_not_of("0123456789") != std::string::npos)
    return false;
  int p = std::stoi(v);
  if (p < 1 || p > 65535) return false;
  *out = p;
  return true;
}

}  // namespace

StatusOr<NfsEndpoint> ParseNfsEndpoint(const std::string& endpoint) {
  auto bad = [&](const std::string& why) {
    return InvalidArgumentError("backup-target setting: field 'endpoint' (\"" + endpoint +
                                "\"): " + why);
  };
  if (endpoint.rfind("nfs://", 0) != 0) return bad("must start with nfs://");
  std::string rest = endpoint.substr(6);
  std::string query;
  if (auto q = rest.find('?'); q != std::string::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  auto slash = rest.find('/');
  if (slash == std::string::npos) return bad("no export path (expected nfs://server:/path)");
  std::string host = rest.substr(0, slash);
  std::string path = rest.substr(slash);
  NfsEndpoint ep;
  if (!host.empty() && host.back() == ':') host.pop_back();  // Harvester's nfs://server:/path
  if (host.find(':') != std::string::npos) {
    return bad("a port in the host part is not supported; use ?nfsport=N (and mountport=M)");
  }
  if (host.empty()) return bad("no server name");
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  if (path.empty() || path == "/") return bad("no export path (expected nfs://server:/path)");
  if (path.find("//") != std::string::npos) return bad("empty path segment");
  ep.server = host;
  ep.export_path = path;
  std::string extra;  // uid, gid, tcp-syncnt passed through to libnfs
  size_t pos = 0;
  while (!query.empty() && pos <= query.size()) {
    size_t amp = query.find('&', pos);
    if (amp == std::string::npos) amp = query.size();
    std::string kv = query.substr(pos, amp - pos);
    pos = amp + 1;
    if (kv.empty()) continue;
    auto eq = kv.find('=');
    std::string k = kv.substr(0, eq), v = eq == std::string::npos ? "" : kv.substr(eq + 1);
    if (k == "version" || k == "vers" || k == "nfsvers") {
      if (v == "3")
        ep.version = 3;
      else if (v == "4" || v == "4.0")
        ep.version = 4;
      else
        return bad("version must be 3 or 4 (4.0), not \"" + v + "\"");
    } else if (k == "nfsport") {
      if (!ParsePort(v, &ep.nfs_port)) return bad("nfsport must be a port number");
    } else if (k == "mountport") {
      if (!ParsePort(v, &ep.mount_port)) return bad("mountport must be a port number");
    } else if (k == "uid" || k == "gid" || k == "tcp-syncnt") {
      if (v.empty() || v.size() > 9 || v.find_first_not_of("0123456789") != std::string::npos)
        return bad(k + " must be a number");
      extra += "&" + k + "=" + v;
    } else if (k == "nfsOptions") {
      // Longhorn's mount options ("nfsvers=4.1,soft,timeo=150"): only the version matters here;
      // timeouts are this library's own (TargetOptions::retry_timeout_seconds).
      size_t p = 0;
      while (p <= v.size()) {
        size_t c = v.find(',', p);
        if (c == std::string::npos) c = v.size();
        std::string opt = v.substr(p, c - p);
        p = c + 1;
        if (opt.rfind("nfsvers=", 0) == 0 || opt.rfind("vers=", 0) == 0) {
          std::string ver = opt.substr(opt.find('=') + 1);
          if (ver == "3")
            ep.version = 3;
          else if (ver == "4" || ver == "4.0")
            ep.version = 4;
          else
            return bad("nfsOptions " + opt + ": only NFS versions 3 and 4.0 are supported");
        }
      }
    } else {
      return bad("unknown option \"" + k +
                 "\" (known: version, nfsport, mountport, uid, gid, tcp-syncnt, nfsOptions)");
    }
  }
  ep.libnfs_url = "nfs://" + ep.server + ep.export_path + "?version=" + std::to_string(ep.version);
  if (ep.nfs_port != 0) ep.libnfs_url += "&nfsport=" + std::to_string(ep.nfs_port);
  if (ep.mount_port != 0 && ep.version == 3)
    ep.libnfs_url += "&mountport=" + std::to_string(ep.mount_port);
  ep.libnfs_url += extra;
  return ep;
}

namespace {

// The numeric address of `server` (resolved here, on the thread that opens the store, so that no
// io_context thread ever waits for a name lookup: libnfs resolves names with a blocking
// getaddrinfo when it connects). The name itself when it does not resolve: libnfs then reports
// what is wrong on each attempt.
std::string ResolveServer(const std::string& server) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(server.c_str(), nullptr, &hints, &res) != 0 || res == nullptr) return server;
  char buf[INET6_ADDRSTRLEN] = {0};
  const void* addr = nullptr;
  if (res->ai_family == AF_INET)
    addr = &reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr;
  else if (res->ai_family == AF_INET6)
    addr = &reinterpret_cast<sockaddr_in6*>(res->ai_addr)->sin6_addr;
  std::string out = server;
  if (addr != nullptr && ::inet_ntop(res->ai_family, addr, buf, sizeof buf) != nullptr) out = buf;
  ::freeaddrinfo(res);
  return out;
}

// ---- the store ----------------------------------------------------------------------------------

// One try of an operation on a connection, on the connection's strand.
using AttemptFn = std::function<awaitable<Status>(Conn&, Clock::time_point)>;

// The state of one store, shared with the operations running on the io_context (each holds it
// until it completed). NfsStore's destructor closes it and waits until no operation and no
// connection of it is left (Tracker).
class Core : public std::enable_shared_from_this<Core> {
 public:
  Core(asio::io_context& io, std::shared_ptr<Tracker> tracker, NfsEndpoint ep, std::string prefix,
       const RetryPolicy& retry, int connections)
      : io_(io),
        tracker_(std::move(tracker)),
        ep_(std::move(ep)),
        address_(ResolveServer(ep_.server)),
        prefix_(std::move(prefix)),
        base_(prefix_.empty() ? "" : "/" + prefix_),
        timeout_(retry.deadline),
        retry_(retry),
        max_conns_(connections) {}
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  std::string Describe() const {
    return "nfs://" + ep_.server + ep_.export_path + base_ + (ep_.version == 4 ? " (NFSv4)" : "");
  }

  // Any thread: runs the operation `op` on the io_context and calls `done` with its status there
  // (an exception escaping it becomes the status; one escaping `done` is dropped).
  void Spawn(awaitable<Status> op, std::string what, std::function<void(Status)> done) {
    asio::co_spawn(asio::make_strand(io_), std::move(op),
                   [self = shared_from_this(), tr = Tracked(tracker_), what = std::move(what),
                    done = std::move(done)](std::exception_ptr e, Status st) {
                     if (e) {
                       try {
                         std::rethrow_exception(e);
                       } catch (...) {
                         st = CurrentExceptionToStatus(what);
                       }
                     }
                     try {
                       done(std::move(st));
                     } catch (...) {
                     }
                   });
  }

  // Runs `op` on the io_context and waits for it on this thread.
  // REQUIRES: not called from an io_context thread (ObjectStore's rule for the blocking forms).
  Status Block(awaitable<Status> op, std::string what) {
    if (io_.get_executor().running_in_this_thread()) {
      // It would wait for this very thread (with one io thread, for ever).
      return InternalError(what + ": a blocking NFS call from an io_context thread");
    }
    auto p = std::make_shared<std::promise<Status>>();
    auto f = p->get_future();
    Spawn(std::move(op), std::move(what), [p](Status st) { p->set_value(std::move(st)); });
    return f.get();
  }

  // Any thread: ends every operation (kUnavailable "the NFS store was closed"), also those started
  // later, and closes every connection; the Core lets go of them. Handlers still queued find the
  // connections shut down.
  void Close() {
    std::vector<std::shared_ptr<Conn>> conns;
    std::vector<std::shared_ptr<asio::steady_timer>> timers;
    {
      std::lock_guard<std::mutex> l(mu_);
      closed_ = true;
      conns = std::move(all_);
      all_.clear();
      free_.clear();
      for (auto& w : waiters_) timers.push_back(w->timer);
      waiters_.clear();
      for (auto& t : sleepers_) timers.push_back(t);
    }
    for (auto& t : timers) {
      asio::post(t->get_executor(), [t, tr = Tracked(tracker_)] { t->cancel(); });
    }
    for (auto& c : conns) asio::post(c->strand(), [c] { c->Shutdown(); });
  }

  // ---- operations (coroutines on the io_context) ---------------------------------------------

  // Checks the export (mount) and creates the prefix directory. First contact: retried for
  // kConnectDeadline at most, so a server that is down fails fast.
  awaitable<Status> Init() {
    co_return co_await Run(
        "open " + Describe(),
        [this](Conn& c, Clock::time_point deadline) -> awaitable<Status> {
          return MakeDirs(c, base_, deadline);
        },
        std::min(timeout_, kConnectDeadline));
  }

  // A GETATTR of the store's directory, retried for kConnectDeadline at most.
  awaitable<Status> Ping() {
    co_return co_await Run(
        "reach " + Describe(),
        [this](Conn& c, Clock::time_point deadline) { return PingAttempt(c, deadline); },
        std::min(timeout_, kConnectDeadline));
  }

  // `data` stays valid until the operation completed.
  awaitable<Status> Put(std::string key, std::string_view data, PutOptions opts) {
    VMB_CO_RETURN_IF_ERROR(ValidateKey(key));
    const std::string path = Path(key);
    PutState s;
    Status st = co_await Run("write " + Name(key), [&](Conn& c, Clock::time_point deadline) {
      return PutAttempt(c, deadline, key, path, data, opts, &s);
    });
    if (!st.ok() && st.code() != StatusCode::kUnavailable && !s.tmp.empty() && !s.published) {
      // Best effort: do not leave the temporary file behind (garbage collection would remove it).
      Status ignored = co_await Run(
          "remove " + s.tmp,
          [&](Conn& c, Clock::time_point deadline) { return Unlink(c, s.tmp, deadline); },
          std::min(timeout_, milliseconds(5000)));
      ignored.IgnoreError();
    }
    co_return st;
  }

  awaitable<Status> Get(std::string key, uint64_t offset, uint64_t length, std::string* out) {
    VMB_CO_RETURN_IF_ERROR(ValidateKey(key));
    co_return co_await Run("read " + Name(key), [&](Conn& c, Clock::time_point deadline) {
      return GetAttempt(c, deadline, key, offset, length, out);
    });
  }

  awaitable<Status> Head(std::string key, ObjectInfo* info) {
    VMB_CO_RETURN_IF_ERROR(ValidateKey(key));
    co_return co_await Run("stat " + Name(key), [&](Conn& c, Clock::time_point deadline) {
      return HeadAttempt(c, deadline, key, info);
    });
  }

  // Every object below the directory of `prefix` whose key starts with `prefix` (unsorted).
  awaitable<Status> List(std::string prefix, std::vector<ObjectInfo>* all) {
    std::string dir_part;
    auto slash = prefix.find_last_of('/');
    if (slash != std::string::npos) dir_part = prefix.substr(0, slash);
    co_return co_await Run("list " + Describe() + "/" + prefix,
                           [&](Conn& c, Clock::time_point deadline) {
                             all->clear();
                             return Walk(c, deadline, dir_part, prefix, all);
                           });
  }

  awaitable<Status> Delete(std::vector<std::string> keys) {
    for (const auto& key : keys) VMB_CO_RETURN_IF_ERROR(ValidateKey(key));
    size_t done = 0;  // keys fully handled (kept across retries)
    co_return co_await Run("delete in " + Describe(), [&](Conn& c, Clock::time_point deadline) {
      return DeleteAttempt(c, deadline, keys, &done);
    });
  }

 private:
  // A Run waiting for a connection of the pool.
  struct Waiter {
    std::shared_ptr<asio::steady_timer> timer;  // expires at the deadline; cancelled to wake
    std::shared_ptr<Conn> given;                // GUARDED_BY(mu_): the connection handed over
  };

  struct PutState {
    std::string tmp;          // current temporary file
    bool written = false;     // tmp holds all the bytes (and is committed when durable)
    bool publishing = false;  // a rename / link of tmp was sent at least once
    bool published = false;
  };

  bool closed() {
    std::lock_guard<std::mutex> l(mu_);
    return closed_;
  }

  // A connection (possibly not connected yet), or null if none became free before the deadline
  // or the store was closed.
  awaitable<std::shared_ptr<Conn>> Acquire(Clock::time_point deadline) {
    auto w = std::make_shared<Waiter>();
    w->timer = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor, deadline);
    {
      std::lock_guard<std::mutex> l(mu_);
      if (closed_) co_return nullptr;
      if (!free_.empty()) {
        auto c = std::move(free_.back());
        free_.pop_back();
        co_return c;
      }
      if (static_cast<int>(all_.size()) < max_conns_) {
        all_.push_back(std::make_shared<Conn>(io_, tracker_));
        co_return all_.back();
      }
      waiters_.push_back(w);
    }
    boost::system::error_code ec;
    co_await w->timer->async_wait(asio::redirect_error(use_awaitable, ec));
    std::lock_guard<std::mutex> l(mu_);
    if (w->given) co_return std::move(w->given);
    auto it = std::find(waiters_.begin(), waiters_.end(), w);
    if (it != waiters_.end()) waiters_.erase(it);
    co_return nullptr;
  }

  // Any thread: returns `c` to the pool (to the first Run waiting for one, if any).
  void Release(std::shared_ptr<Conn> c) {
    std::shared_ptr<Waiter> w;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (closed_) return;  // Close() shut it down
      if (waiters_.empty()) {
        free_.push_back(std::move(c));
        return;
      }
      w = std::move(waiters_.front());
      waiters_.pop_front();
      w->given = std::move(c);
    }
    asio::post(w->timer->get_executor(), [t = w->timer, tr = Tracked(tracker_)] { t->cancel(); });
  }

  // Waits until `until`, or until the store is closed.
  awaitable<void> Sleep(Clock::time_point until) {
    auto t = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor, until);
    {
      std::lock_guard<std::mutex> l(mu_);
      if (closed_) co_return;
      sleepers_.push_back(t);
    }
    boost::system::error_code ec;
    co_await t->async_wait(asio::redirect_error(use_awaitable, ec));
    std::lock_guard<std::mutex> l(mu_);
    auto it = std::find(sleepers_.begin(), sleepers_.end(), t);
    if (it != sleepers_.end()) sleepers_.erase(it);
  }

  // One attempt on `conn`, on its strand: connects it if needed, then runs `fn`.
  awaitable<Status> Attempt(std::shared_ptr<Conn> conn, const AttemptFn* fn,
                            Clock::time_point deadline) {
    Conn& c = *conn;
    if (c.shut_down()) co_return UnavailableError(kClosed);
    if (c.LooksDead()) c.Close();
    Status st;
    bool threw = false;
    try {
      if (!c.Alive()) st = co_await Connect(c, deadline);
      if (st.ok()) st = co_await (*fn)(c, deadline);
    } catch (...) {
      st = CurrentExceptionToStatus("NFS operation");
      threw = true;
    }
    if (threw) {
      c.Abandon();
    } else if (RetryPolicy::Retryable(st.code())) {
      c.Close();
    }
    co_return st;
  }

  // Runs `fn` on a pooled connection until it returns anything but kUnavailable or the deadline
  // passes: `budget` (default the store's timeout) from now, or from the start of an outage that
  // other operations already saw (Outage), but the first attempt always gets a fair chance.
  // Reconnects between attempts; waits between them on a timer.
  awaitable<Status> Run(std::string what, AttemptFn fn,
                        std::optional<milliseconds> budget = std::nullopt) {
    const auto start = Clock::now();
    const RetryPolicy policy = retry_.WithDeadlineAtMost(budget.value_or(timeout_));
    const auto first_attempt_until = start + std::min(policy.deadline, kConnectDeadline);
    Status last;
    int attempts = 0;
    while (true) {
      if (closed()) co_return UnavailableError(what + ": " + kClosed);
      auto deadline = outage_.CountFrom(start) + policy.deadline;
      if (attempts == 0) deadline = std::max(deadline, first_attempt_until);
      std::shared_ptr<Conn> conn = co_await Acquire(deadline);
      if (!conn) {
        if (closed()) co_return UnavailableError(what + ": " + kClosed);
        last = UnavailableError("all NFS connections stayed busy");
        break;
      }
      ++attempts;
      Status st =
          co_await asio::co_spawn(conn->strand(), Attempt(conn, &fn, deadline), use_awaitable);
      if (!RetryPolicy::Retryable(st.code())) {
        outage_.Answered();
        Release(std::move(conn));
        co_return st;
      }
      const auto failed_at = Clock::now();
      Release(std::move(conn));
      if (closed()) co_return UnavailableError(what + ": " + kClosed);
      outage_.NoAnswer(failed_at);
      last = st;
      auto when = policy.NextAttempt(attempts, outage_.CountFrom(start), failed_at);
      if (!when) break;
      co_await Sleep(*when);
    }
    const auto now = Clock::now();
    const auto since = outage_.CountFrom(start);
    char buf[96];
    std::snprintf(buf, sizeof buf, "%.1f s and %d attempt(s)",
                  std::chrono::duration<double>(now - start).count(), attempts);
    std::string silent;
    if (since < start) {
      char b2[96];
      std::snprintf(b2, sizeof b2, "; the server has answered no operation for %.1f s",
                    std::chrono::duration<double>(now - since).count());
      silent = b2;
    }
    co_return UnavailableError(
        what + ": NFS server " + ep_.server + PortText() + " unavailable; gave up after " + buf +
        silent + " (limit " + std::to_string(policy.deadline.count() / 1000) +
        (policy.deadline < timeout_ ? " s for a first contact"
                                    : " s, TargetOptions.retry_timeout_seconds") +
        "). Last error: " + last.message());
  }

  std::string Path(const std::string& key) const { return base_ + "/" + key; }
  std::string Name(const std::string& key) const { return Describe() + "/" + key; }
  std::string PortText() const {
    return ep_.nfs_port != 0 ? " (port " + std::to_string(ep_.nfs_port) + ")" : "";
  }

  // Connects and mounts a fresh context.
  awaitable<Status> Connect(Conn& c, Clock::time_point deadline) {
    c.Close();
    c.Reset();
    c.nfs = nfs_init_context();
    if (c.nfs == nullptr) co_return ResourceExhaustedError("nfs_init_context failed");
    nfs_url* url = nfs_parse_url_dir(c.nfs, ep_.libnfs_url.c_str());
    if (url == nullptr) {
      std::string msg = nfs_get_error(c.nfs);
      c.Close();
      co_return InvalidArgumentError("endpoint " + ep_.libnfs_url + ": " + msg);
    }
    nfs_destroy_url(url);
    // Every context its own NFSv4 client. libnfs names a client "Libnfs pid:<pid> <seconds>", so
    // the connections of one process made within a second shared a name: the server took each
    // new one for the same client rebooted (another verifier) and dropped the others' open
    // state, and concurrent reads failed at random with ENOENT. (libnfs keeps, and leaks, its
    // default name's copy: a few bytes per connection.)
    {
      VMB_CO_ASSIGN_OR_RETURN(std::string id, RandomHex(16));
      const std::string name = "vmbackup pid:" + std::to_string(::getpid()) + " " + id;
      nfs4_set_client_name(c.nfs, name.c_str());
      char verifier[8];
      VMB_CO_RETURN_IF_ERROR(RandomBytes(verifier, sizeof verifier));
      nfs4_set_verifier(c.nfs, verifier);
    }
    nfs_set_autoreconnect(c.nfs, 0);  // we reconnect ourselves, within the deadline
    nfs_set_dircache(c.nfs, 0);       // other hosts change directories too
    Call call;
    VMB_CO_RETURN_IF_ERROR(Queued(
        c, nfs_mount_async(c.nfs, address_.c_str(), ep_.export_path.c_str(), OnNfsDone, &call),
        "mount"));
    Status st = co_await Wait(c, call, deadline);
    if (!st.ok()) co_return UnavailableError("mount " + ep_.export_path + ": " + st.message());
    if (call.err < 0) {
      int err = -call.err;
      c.Close();
      if (err == ENOENT || err == ENOTDIR)
        co_return NotFoundError("NFS export " + ep_.export_path + " does not exist on server " +
                                ep_.server + " (" + call.msg + ")");
      if (err == EACCES || err == EPERM) co_return co_await MountRefused(c, call.msg, deadline);
      co_return UnavailableError("mount " + ep_.export_path + ": " + call.msg);
    }
    uint64_t wmax = nfs_get_writemax(c.nfs), rmax = nfs_get_readmax(c.nfs);
    if (ep_.version == 4) {
      c.write_chunk = kV4MaxWrite;
      c.read_chunk = rmax == 0 ? kV4MaxRead : std::min(rmax, kV4MaxRead);
    } else {
      c.write_chunk = wmax == 0 ? 64 * 1024 : std::min<uint64_t>(wmax, 4u << 20);
      c.read_chunk = rmax == 0 ? 64 * 1024 : std::min<uint64_t>(rmax, 4u << 20);
    }
    co_return Status::Ok();
  }

  // The server refused the mount: NFSv3 servers (ganesha among them) answer MNT3ERR_ACCES both for
  // a path they do not export and for an export this client may not use. The export list tells
  // which.
  awaitable<Status> MountRefused(Conn& c, std::string msg, Clock::time_point deadline) {
    std::vector<std::string> exports;
    bool listed = false;
    std::string list_error;
    // A raw RPC context beside the connection, on its strand.
    auto lc = std::make_shared<Conn>(io_, tracker_, c.strand());
    lc->rpc = rpc_init_context();
    if (lc->rpc != nullptr) {
      struct Ctx {
        bool done = false;
        int status = 0;
        std::vector<std::string>* out;
      } ctx{false, 0, &exports};
      auto cb = [](struct rpc_context*, int status, void* data, void* priv) {
        auto* x = static_cast<Ctx*>(priv);
        x->done = true;
        x->status = status;
        if (status == RPC_STATUS_SUCCESS && data != nullptr) {
          // libnfs decodes the list into memory aligned to 4 bytes only (UBSan: misaligned
          // exportnode): each node is copied out before it is read.
          exportnode* next = nullptr;
          std::memcpy(&next, data, sizeof next);
          while (next != nullptr) {
            exportnode e;
            std::memcpy(&e, static_cast<const void*>(next), sizeof e);
            x->out->push_back(e.ex_dir);
            next = e.ex_next;
          }
        }
      };
      auto dl = std::min(deadline, Clock::now() + milliseconds(5000));
      if (mount_getexports_async(lc->rpc, address_.c_str(), cb, &ctx) == 0) {
        c.SetAux(lc);  // closed with the connection when the store closes
        Status st = co_await lc->Pump([&ctx] { return ctx.done; }, dl);
        c.SetAux(nullptr);
        listed = st.ok() && ctx.status == RPC_STATUS_SUCCESS;
        if (!listed) {
          const char* e = lc->rpc != nullptr ? rpc_get_error(lc->rpc) : nullptr;
          list_error = !st.ok() ? st.message() : e != nullptr && *e != '\0' ? e : "no answer";
        }
      } else {
        list_error = rpc_get_error(lc->rpc) ? rpc_get_error(lc->rpc) : "cannot ask";
      }
      lc->Close();  // before ctx goes out of scope
    }
    if (listed && std::find(exports.begin(), exports.end(), ep_.export_path) == exports.end()) {
      std::string names;
      for (const auto& e : exports) names += (names.empty() ? "" : ", ") + e;
      // Servers (ganesha among them) list only the exports a client may mount, so this is also
      // what an export whose rules exclude this client looks like.
      co_return NotFoundError(
          "NFS server " + ep_.server + " does not export " + ep_.export_path +
          " to this client (exports it shows this client: " + (names.empty() ? "none" : names) +
          "); check the path, and the server's export rules for this host");
    }
    co_return PermissionDeniedError(
        "NFS server " + ep_.server + " refused to mount " + ep_.export_path + " for this client (" +
        msg + ")" +
        (listed ? ""
                : "; the export may also not exist (export list unavailable: " + list_error + ")"));
  }

  // mkdir -p below the export root.
  awaitable<Status> MakeDirs(Conn& c, std::string dir, Clock::time_point deadline) {
    if (dir.empty() || dir == "/") co_return Status::Ok();
    for (int round = 0; round < 2; ++round) {
      Call call;
      VMB_CO_RETURN_IF_ERROR(
          Queued(c, nfs_mkdir2_async(c.nfs, dir.c_str(), kDirMode, OnNfsDone, &call), "mkdir"));
      VMB_CO_RETURN_IF_ERROR(co_await Wait(c, call, deadline));
      if (call.err >= 0 || call.err == -EEXIST) co_return Status::Ok();
      if (call.err != -ENOENT || round == 1)
        co_return CallError(call, "mkdir " + Describe() + dir.substr(base_.size()));
      VMB_CO_RETURN_IF_ERROR(co_await MakeDirs(c, DirName(dir), deadline));
    }
    co_return Status::Ok();
  }

  // unlink; a missing file is not an error.
  awaitable<Status> Unlink(Conn& c, std::string path, Clock::time_point deadline) {
    Call call;
    VMB_CO_RETURN_IF_ERROR(
        Queued(c, nfs_unlink_async(c.nfs, path.c_str(), OnNfsDone, &call), "remove"));
    VMB_CO_RETURN_IF_ERROR(co_await Wait(c, call, deadline));
    if (call.err < 0 && call.err != -ENOENT) co_return CallError(call, "delete " + path);
    co_return Status::Ok();
  }

  awaitable<StatusOr<nfs_stat_64>> Stat(Conn& c, std::string path, Clock::time_point deadline) {
    Call call(Call::kStat);
    VMB_CO_RETURN_IF_ERROR(
        Queued(c, nfs_stat64_async(c.nfs, path.c_str(), OnNfsDone, &call), "stat"));
    VMB_CO_RETURN_IF_ERROR(co_await Wait(c, call, deadline));
    if (call.err < 0) co_return CallError(call, "stat " + path);
    co_return call.st;
  }

  awaitable<void> CloseFh(Conn& c, nfsfh* fh, Clock::time_point deadline) {
    if (c.nfs == nullptr || fh == nullptr) co_return;
    Call call;
    c.Closing(fh);
    if (nfs_close_async(c.nfs, fh, OnNfsDone, &call) < 0) co_return;
    (co_await Wait(c, call, deadline)).IgnoreError();
  }

  // Writes all of `data` at offset 0 with pipelined WRITE calls.
  awaitable<Status> WriteAll(Conn& c, nfsfh* fh, std::string_view data, std::string what,
                             Clock::time_point deadline) {
    struct Slot {
      Call call;
      bool active = false;
      uint64_t off = 0, len = 0;
    };
    const uint64_t chunk = c.write_chunk;
    const int window =
        static_cast<int>(std::clamp<uint64_t>(kWindowBytes / chunk, 1, kMaxWindowCalls));
    std::vector<Slot> slots(static_cast<size_t>(window));
    uint64_t next = 0;
    int inflight = 0;
    Status first_error;
    auto issue = [&](Slot& s, uint64_t off, uint64_t len) -> Status {
      s.call.Reset();
      s.active = true;
      s.off = off;
      s.len = len;
      ++inflight;
      int rc = nfs_pwrite_async(c.nfs, fh, off, len, data.data() + off, OnNfsDone, &s.call);
      if (rc < 0) {
        s.active = false;
        --inflight;
      }
      return Queued(c, rc, "write");
    };
    while (true) {
      for (auto& s : slots) {
        if (s.active || next >= data.size() || !first_error.ok()) continue;
        uint64_t len = std::min<uint64_t>(chunk, data.size() - next);
        VMB_CO_RETURN_IF_ERROR(issue(s, next, len));
        next += len;
      }
      if (inflight == 0) break;
      VMB_CO_RETURN_IF_ERROR(co_await c.Pump(
          [&] {
            for (auto& s : slots)
              if (s.active && s.call.done) return true;
            return false;
          },
          deadline));
      for (auto& s : slots) {
        if (!s.active || !s.call.done) continue;
        s.active = false;
        --inflight;
        if (s.call.err < 0) {
          if (first_error.ok()) first_error = CallError(s.call, what);
          continue;
        }
        uint64_t n = static_cast<uint64_t>(s.call.err);
        if (n == 0 && first_error.ok()) first_error = UnavailableError(what + ": wrote 0 bytes");
        if (n < s.len && first_error.ok()) VMB_CO_RETURN_IF_ERROR(issue(s, s.off + n, s.len - n));
      }
    }
    co_return first_error;
  }

  // Reads [offset, offset+out->size()) with pipelined READ calls; *got = bytes before the first
  // gap (a READ that hit the end of the file).
  awaitable<Status> ReadAll(Conn& c, nfsfh* fh, uint64_t offset, std::string* out, std::string what,
                            Clock::time_point deadline, uint64_t* got) {
    struct Slot {
      Call call{Call::kRead};
      bool active = false;
      uint64_t pos = 0, len = 0;  // relative to out
    };
    const uint64_t chunk = c.read_chunk;
    const int window =
        static_cast<int>(std::clamp<uint64_t>(kWindowBytes / chunk, 1, kMaxWindowCalls));
    std::vector<Slot> slots(static_cast<size_t>(window));
    const uint64_t want = out->size();
    uint64_t next = 0;
    uint64_t eof_at = want;  // lowest position where the server reported end of file
    int inflight = 0;
    Status first_error;
    auto issue = [&](Slot& s, uint64_t pos, uint64_t len) -> Status {
      s.call.Reset();
      s.call.read_dst = out->data() + pos;
      s.call.read_cap = len;
      s.active = true;
      s.pos = pos;
      s.len = len;
      ++inflight;
      int rc = nfs_pread_async(c.nfs, fh, offset + pos, len, OnNfsDone, &s.call);
      if (rc < 0) {
        s.active = false;
        --inflight;
      }
      return Queued(c, rc, "read");
    };
    while (true) {
      for (auto& s : slots) {
        if (s.active || next >= want || !first_error.ok() || next >= eof_at) continue;
        uint64_t len = std::min<uint64_t>(chunk, want - next);
        VMB_CO_RETURN_IF_ERROR(issue(s, next, len));
        next += len;
      }
      if (inflight == 0) break;
      VMB_CO_RETURN_IF_ERROR(co_await c.Pump(
          [&] {
            for (auto& s : slots)
              if (s.active && s.call.done) return true;
            return false;
          },
          deadline));
      for (auto& s : slots) {
        if (!s.active || !s.call.done) continue;
        s.active = false;
        --inflight;
        if (s.call.err < 0) {
          if (first_error.ok()) first_error = CallError(s.call, what);
          continue;
        }
        uint64_t n = static_cast<uint64_t>(s.call.err);
        if (n == 0) {
          eof_at = std::min(eof_at, s.pos);
        } else if (n < s.len && first_error.ok()) {
          VMB_CO_RETURN_IF_ERROR(issue(s, s.pos + n, s.len - n));
        }
      }
    }
    *got = eof_at;
    co_return first_error;
  }

  awaitable<Status> PutAttempt(Conn& c, Clock::time_point deadline, std::string key,
                               std::string path, std::string_view data, const PutOptions& opts,
                               PutState* s) {
    if (!s->written) {
      if (!s->tmp.empty())
        VMB_CO_RETURN_IF_ERROR(co_await Unlink(c, s->tmp, deadline));  // a failed attempt's
      // A fresh name per attempt: NFSv4 creates exclusively (libnfs 4.0 maps O_CREAT to
      // EXCLUSIVE4), and a create whose reply was lost must not make the retry fail.
      VMB_CO_ASSIGN_OR_RETURN(std::string tmp_name, RandomHex(16));
      s->tmp = base_ + "/" + kTmpDir + "/" + tmp_name;
      Call oc;
      for (int round = 0; round < 2; ++round) {
        oc.Reset();
        VMB_CO_RETURN_IF_ERROR(Queued(
            c,
            nfs_open2_async(c.nfs, s->tmp.c_str(), O_CREAT | O_WRONLY, kFileMode, OnNfsDone, &oc),
            "create"));
        VMB_CO_RETURN_IF_ERROR(co_await Wait(c, oc, deadline));
        if (oc.err == -ENOENT && round == 0) {
          VMB_CO_RETURN_IF_ERROR(co_await MakeDirs(c, base_ + "/" + kTmpDir, deadline));
          continue;
        }
        break;
      }
      if (oc.err < 0) co_return CallError(oc, "create temporary file for " + Name(key));
      auto* fh = static_cast<nfsfh*>(oc.ptr);
      c.Opened(fh);
      Status st;
      if (ep_.version == 4) {
        // libnfs creates exclusively on v4 (EXCLUSIVE4), which carries no attributes: the server
        // picks the mode (ganesha: 0600, others may differ). Set it explicitly.
        Call mc;
        st = Queued(c, nfs_fchmod_async(c.nfs, fh, kFileMode, OnNfsDone, &mc), "chmod");
        if (st.ok()) st = co_await Wait(c, mc, deadline);
        if (st.ok() && mc.err < 0) st = CallError(mc, "chmod temporary file of " + Name(key));
      }
      if (st.ok()) st = co_await WriteAll(c, fh, data, "write " + Name(key), deadline);
      if (st.ok() && opts.durable && c.nfs != nullptr) {
        Call fc;
        st = Queued(c, nfs_fsync_async(c.nfs, fh, OnNfsDone, &fc), "commit");
        if (st.ok()) st = co_await Wait(c, fc, deadline);
        if (st.ok() && fc.err < 0) st = CallError(fc, "commit " + Name(key));
      }
      if (c.nfs != nullptr) {
        Call cc;
        c.Closing(fh);
        Status cst = Queued(c, nfs_close_async(c.nfs, fh, OnNfsDone, &cc), "close");
        if (cst.ok()) cst = co_await Wait(c, cc, deadline);
        if (cst.ok() && cc.err < 0) cst = CallError(cc, "close " + Name(key));
        if (st.ok()) st = cst;
      }
      VMB_CO_RETURN_IF_ERROR(st);
      s->written = true;
    }
    if (opts.if_absent) {
      VMB_CO_RETURN_IF_ERROR(co_await PublishIfAbsent(c, deadline, key, path, data.size(), s));
    } else {
      VMB_CO_RETURN_IF_ERROR(co_await PublishReplace(c, deadline, key, path, data.size(), s));
    }
    s->published = true;
    co_return Status::Ok();
  }

  awaitable<Status> PublishReplace(Conn& c, Clock::time_point deadline, std::string key,
                                   std::string path, uint64_t size, PutState* s) {
    for (int round = 0; round < 2; ++round) {
      Call call;
      bool retried = s->publishing;
      s->publishing = true;
      VMB_CO_RETURN_IF_ERROR(Queued(
          c, nfs_rename_async(c.nfs, s->tmp.c_str(), path.c_str(), OnNfsDone, &call), "rename"));
      VMB_CO_RETURN_IF_ERROR(co_await Wait(c, call, deadline));
      if (call.err >= 0) co_return Status::Ok();
      if (call.err != -ENOENT) co_return CallError(call, "rename to " + Name(key));
      // ENOENT: the parent directory is missing (or a concurrent Delete removed it), or a rename
      // whose reply was lost already moved the temporary file.
      if (retried) {
        auto tmp_st = co_await Stat(c, s->tmp, deadline);
        if (tmp_st.status().code() == StatusCode::kUnavailable) co_return tmp_st.status();
        if (tmp_st.status().code() == StatusCode::kNotFound) {
          VMB_CO_ASSIGN_OR_RETURN(nfs_stat_64 st, co_await Stat(c, path, deadline));
          if (st.nfs_size == size) co_return Status::Ok();
          co_return DataLossError("temporary file of " + Name(key) + " vanished during rename");
        }
      }
      if (round == 1) co_return CallError(call, "rename to " + Name(key));
      VMB_CO_RETURN_IF_ERROR(co_await MakeDirs(c, DirName(path), deadline));
    }
    co_return Status::Ok();
  }

  awaitable<Status> PublishIfAbsent(Conn& c, Clock::time_point deadline, std::string key,
                                    std::string path, uint64_t size, PutState* s) {
    for (int round = 0; round < 2; ++round) {
      Call call;
      bool retried = s->publishing;
      s->publishing = true;
      VMB_CO_RETURN_IF_ERROR(
          Queued(c, nfs_link_async(c.nfs, s->tmp.c_str(), path.c_str(), OnNfsDone, &call), "link"));
      VMB_CO_RETURN_IF_ERROR(co_await Wait(c, call, deadline));
      if (call.err >= 0) break;
      if (call.err == -EEXIST) {
        if (retried) {
          // Did our own earlier LINK (reply lost) create it? Then both names are one file.
          auto a = co_await Stat(c, s->tmp, deadline);
          auto b = co_await Stat(c, path, deadline);
          if (a.ok() && b.ok() && a->nfs_ino == b->nfs_ino && a->nfs_dev == b->nfs_dev) break;
          if (a.status().code() == StatusCode::kUnavailable) co_return a.status();
          if (b.status().code() == StatusCode::kUnavailable) co_return b.status();
        }
        co_return AlreadyExistsError("object " + key + " already exists");
      }
      if (call.err == -EOPNOTSUPP || call.err == -ENOSYS || call.err == -EPERM ||
          call.err == -EMLINK) {
        // No hard links on this export: check, then rename (a narrow race remains; docs/nfs.md).
        auto st = co_await Stat(c, path, deadline);
        if (st.ok()) co_return AlreadyExistsError("object " + key + " already exists");
        if (st.status().code() != StatusCode::kNotFound) co_return st.status();
        co_return co_await PublishReplace(c, deadline, key, path, size, s);
      }
      if (call.err != -ENOENT || round == 1) co_return CallError(call, "link to " + Name(key));
      VMB_CO_RETURN_IF_ERROR(co_await MakeDirs(c, DirName(path), deadline));
    }
    // Published: the temporary name goes (a failure here leaves a stray link in .tmp/ only).
    (co_await Unlink(c, s->tmp, deadline)).IgnoreError();
    co_return Status::Ok();
  }

  // One try of Get: OPEN, GETATTR, then the checks below before anything is allocated, READs,
  // CLOSE. kNotFound (missing, or not a regular file), kOutOfRange (offset past the end), kDataLoss
  // (a whole read of more than kMaxWholeObjectRead bytes, or an object shorter than the range,
  // also when it shrank during the read), kUnavailable (retried by Run).
  awaitable<Status> GetAttempt(Conn& c, Clock::time_point deadline, std::string key,
                               uint64_t offset, uint64_t length, std::string* out) {
    Call oc;
    VMB_CO_RETURN_IF_ERROR(
        Queued(c, nfs_open_async(c.nfs, Path(key).c_str(), O_RDONLY, OnNfsDone, &oc), "open"));
    VMB_CO_RETURN_IF_ERROR(co_await Wait(c, oc, deadline));
    // NFSv4 refuses to OPEN a directory (NFS4ERR_ISDIR); v3 opens it and the stat below sees it.
    // Either way a key that only prefixes other objects is no object.
    if (oc.err == -EISDIR) co_return NotFoundError("object " + key + " is not a regular file");
    if (oc.err < 0) co_return CallError(oc, "open " + Name(key));
    auto* fh = static_cast<nfsfh*>(oc.ptr);
    c.Opened(fh);
    Call sc(Call::kStat);
    Status st = Queued(c, nfs_fstat64_async(c.nfs, fh, OnNfsDone, &sc), "stat");
    if (st.ok()) st = co_await Wait(c, sc, deadline);
    if (st.ok() && sc.err < 0) st = CallError(sc, "stat " + Name(key));
    uint64_t got = 0, want = 0;
    if (st.ok()) {
      const uint64_t size = sc.st.nfs_size;
      if ((sc.st.nfs_mode & S_IFMT) != S_IFREG) {
        st = NotFoundError("object " + key + " is not a regular file");
      } else if (offset > size || (length > 0 && offset == size)) {
        st = OutOfRangeError("range past the end of object " + key);
      } else if (length == 0 && size - offset > kMaxWholeObjectRead) {
        st = TooLargeForWholeRead(key, size);
      } else if (length > size - offset) {
        st = ShortObject(key, offset, length, size - offset);
      } else {
        want = length == 0 ? size - offset : length;
        out->assign(want, '\0');
        st = co_await ReadAll(c, fh, offset, out, "read " + Name(key), deadline, &got);
      }
    }
    co_await CloseFh(c, fh, deadline);
    VMB_CO_RETURN_IF_ERROR(st);
    if (got < want) co_return ShortObject(key, offset, want, got);
    co_return Status::Ok();
  }

  static Status ShortObject(std::string key, uint64_t offset, uint64_t want, uint64_t got) {
    return DataLossError("object " + key + " is shorter than expected (wanted " +
                         std::to_string(want) + " bytes at " + std::to_string(offset) + ", got " +
                         std::to_string(got) + ")");
  }

  // ObjectInfo::version from a file's attributes. A key is replaced by renaming a new file over
  // it, which changes the file id (v3) and the change time (a rename sets it), and a write in
  // place changes both times. libnfs's v4 directory entries carry no stable file id (another
  // number at each listing, unlike GETATTR's), so v4 versions are the two times alone.
  std::string VersionTag(uint64_t fileid, uint64_t mtime, uint64_t mtime_ns, uint64_t ctime,
                         uint64_t ctime_ns) const {
    std::string t = std::to_string(mtime) + "." + std::to_string(mtime_ns) + ":" +
                    std::to_string(ctime) + "." + std::to_string(ctime_ns);
    return ep_.version == 4 ? t : std::to_string(fileid) + ":" + t;
  }

  // Collects the objects below `rel_dir` whose keys start with `prefix`.
  awaitable<Status> Walk(Conn& c, Clock::time_point deadline, std::string rel_dir,
                         std::string prefix, std::vector<ObjectInfo>* out) {
    std::string abs = rel_dir.empty() ? (base_.empty() ? "/" : base_) : Path(rel_dir);
    Call call;
    VMB_CO_RETURN_IF_ERROR(
        Queued(c, nfs_opendir_async(c.nfs, abs.c_str(), OnNfsDone, &call), "opendir"));
    VMB_CO_RETURN_IF_ERROR(co_await Wait(c, call, deadline));
    if (call.err == -ENOENT || call.err == -ENOTDIR) co_return Status::Ok();
    if (call.err < 0) co_return CallError(call, "list " + Describe() + "/" + rel_dir);
    auto* dir = static_cast<nfsdir*>(call.ptr);
    std::vector<std::string> subdirs;
    while (nfsdirent* e = nfs_readdir(c.nfs, dir)) {
      std::string name = e->name;
      if (name == "." || name == "..") continue;
      // .tmp/ is listed only when asked for by name (garbage collection of stray temporaries).
      if (rel_dir.empty() && name == kTmpDir && prefix.compare(0, 5, ".tmp/") != 0) continue;
      if (name.find(".tmp-") != std::string::npos) continue;
      std::string rel = rel_dir.empty() ? name : rel_dir + "/" + name;
      bool is_dir = e->type == NF3DIR || (e->mode & S_IFMT) == S_IFDIR;
      if (is_dir) {
        std::string as_prefix = rel + "/";
        size_t n = std::min(prefix.size(), as_prefix.size());
        if (prefix.compare(0, n, as_prefix, 0, n) == 0) subdirs.push_back(rel);
      } else if (rel.compare(0, prefix.size(), prefix) == 0) {
        out->push_back({rel, e->size,
                        VersionTag(e->inode, static_cast<uint64_t>(e->mtime.tv_sec), e->mtime_nsec,
                                   static_cast<uint64_t>(e->ctime.tv_sec), e->ctime_nsec)});
      }
    }
    nfs_closedir(c.nfs, dir);
    for (const auto& d : subdirs)
      VMB_CO_RETURN_IF_ERROR(co_await Walk(c, deadline, d, prefix, out));
    co_return Status::Ok();
  }

  awaitable<Status> PingAttempt(Conn& c, Clock::time_point deadline) {
    Call call(Call::kStat);
    const std::string dir = base_.empty() ? "/" : base_;
    VMB_CO_RETURN_IF_ERROR(
        Queued(c, nfs_stat64_async(c.nfs, dir.c_str(), OnNfsDone, &call), "stat"));
    VMB_CO_RETURN_IF_ERROR(co_await Wait(c, call, deadline));
    if (call.err < 0) co_return CallError(call, "stat " + Describe());
    co_return Status::Ok();
  }

  awaitable<Status> HeadAttempt(Conn& c, Clock::time_point deadline, std::string key,
                                ObjectInfo* info) {
    Call call(Call::kStat);
    VMB_CO_RETURN_IF_ERROR(
        Queued(c, nfs_stat64_async(c.nfs, Path(key).c_str(), OnNfsDone, &call), "stat"));
    VMB_CO_RETURN_IF_ERROR(co_await Wait(c, call, deadline));
    if (call.err < 0) co_return CallError(call, "stat " + Name(key));
    if ((call.st.nfs_mode & S_IFMT) != S_IFREG)
      co_return NotFoundError("object " + key + " is not a file");
    *info = ObjectInfo{key, call.st.nfs_size,
                       VersionTag(call.st.nfs_ino, call.st.nfs_mtime, call.st.nfs_mtime_nsec,
                                  call.st.nfs_ctime, call.st.nfs_ctime_nsec)};
    co_return Status::Ok();
  }

  // Deletes keys[*done...], counting the keys fully handled in *done.
  awaitable<Status> DeleteAttempt(Conn& c, Clock::time_point deadline,
                                  const std::vector<std::string>& keys, size_t* done) {
    for (; *done < keys.size(); ++*done) {
      const std::string path = Path(keys[*done]);
      VMB_CO_RETURN_IF_ERROR(co_await Unlink(c, path, deadline));
      // Remove parent directories left empty (fails harmlessly when they are not).
      for (std::string dir = DirName(path); dir.size() > base_.size() && dir != "/";
           dir = DirName(dir)) {
        Call call;
        VMB_CO_RETURN_IF_ERROR(
            Queued(c, nfs_rmdir_async(c.nfs, dir.c_str(), OnNfsDone, &call), "rmdir"));
        VMB_CO_RETURN_IF_ERROR(co_await Wait(c, call, deadline));
        if (call.err < 0) break;
      }
    }
    co_return Status::Ok();
  }

  asio::io_context& io_;
  const std::shared_ptr<Tracker> tracker_;
  const NfsEndpoint ep_;
  const std::string address_;  // ep_.server's numeric address (ResolveServer)
  const std::string prefix_;   // "" or "a/b"
  const std::string base_;     // "" or "/a/b": the store's root below the export
  const milliseconds timeout_;
  const RetryPolicy retry_;  // backoff between attempts; deadline = timeout_
  const int max_conns_;
  Outage outage_;  // since when the server answered no attempt of any operation

  std::mutex mu_;
  bool closed_ = false;                          // GUARDED_BY(mu_)
  std::vector<std::shared_ptr<Conn>> all_;       // GUARDED_BY(mu_): every connection made
  std::vector<std::shared_ptr<Conn>> free_;      // GUARDED_BY(mu_): idle ones
  std::deque<std::shared_ptr<Waiter>> waiters_;  // GUARDED_BY(mu_): Runs waiting for one
  std::vector<std::shared_ptr<asio::steady_timer>> sleepers_;  // GUARDED_BY(mu_): backoffs
};

// The ObjectStore: forms of the operations over the Core.
class NfsStore final : public ObjectStore {
 public:
  NfsStore(NfsEndpoint ep, std::string prefix, const RetryPolicy& retry, int connections,
           std::shared_ptr<Runtime> rt)
      : ObjectStore(std::move(rt)),
        tracker_(std::make_shared<Tracker>()),
        core_(std::make_shared<Core>(internal::ImplOf(runtime_)->io(), tracker_, std::move(ep),
                                     std::move(prefix), retry, connections)) {}

  // Ends pending operations (kUnavailable "the NFS store was closed") and waits until no handler
  // of the store is left on the io_context.
  ~NfsStore() override {
    core_->Close();
    if (internal::ImplOf(runtime_)->io().get_executor().running_in_this_thread()) {
      // Waiting here could wait for this very thread: the last handler lets the Runtime go.
      std::lock_guard<std::mutex> l(tracker_->mu);
      if (tracker_->live > 0) tracker_->keep = runtime_;
      return;
    }
    tracker_->WaitForNone();
  }

  std::string Describe() const override { return core_->Describe(); }

  Status Init() { return core_->Block(core_->Init(), "open " + Describe()); }

  Status Ping() override { return core_->Block(core_->Ping(), "reach " + Describe()); }

  Status Put(const std::string& key, std::string_view data, const PutOptions& opts) override {
    return core_->Block(core_->Put(key, data, opts), "put " + key);
  }

  void PutAsync(std::string key, std::shared_ptr<const std::string> data, PutOptions opts,
                std::function<void(Status)> done) override {
    std::string what = "put " + key;
    std::string_view view = *data;
    core_->Spawn(
        core_->Put(std::move(key), view, opts), std::move(what),
        [data = std::move(data), done = std::move(done)](Status st) { done(std::move(st)); });
  }

  StatusOr<std::string> Get(const std::string& key, uint64_t offset, uint64_t length) override {
    std::string out;
    VMB_RETURN_IF_ERROR(core_->Block(core_->Get(key, offset, length, &out), "get " + key));
    return out;
  }

  void GetAsync(std::string key, uint64_t offset, uint64_t length,
                std::function<void(StatusOr<std::string>)> done) override {
    auto out = std::make_shared<std::string>();
    std::string what = "get " + key;
    core_->Spawn(core_->Get(std::move(key), offset, length, out.get()), std::move(what),
                 [out, done = std::move(done)](Status st) {
                   if (st.ok()) {
                     done(std::move(*out));
                   } else {
                     done(std::move(st));
                   }
                 });
  }

  StatusOr<ObjectInfo> Head(const std::string& key) override {
    ObjectInfo info;
    VMB_RETURN_IF_ERROR(core_->Block(core_->Head(key, &info), "stat " + key));
    return info;
  }

  StatusOr<ListPage> List(const std::string& prefix, const std::string& token,
                          int max_keys) override {
    std::vector<ObjectInfo> all;
    VMB_RETURN_IF_ERROR(core_->Block(core_->List(prefix, &all), "list " + prefix));
    std::sort(all.begin(), all.end(),
              [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
    ListPage page;
    auto it = all.begin();
    if (!token.empty()) {
      it = std::upper_bound(all.begin(), all.end(), token,
                            [](const std::string& t, const ObjectInfo& o) { return t < o.key; });
    }
    for (; it != all.end(); ++it) {
      if (static_cast<int>(page.objects.size()) == max_keys) {
        page.next_token = page.objects.back().key;
        break;
      }
      page.objects.push_back(std::move(*it));
    }
    return page;
  }

  Status Delete(const std::vector<std::string>& keys) override {
    return core_->Block(core_->Delete(keys), "delete in " + Describe());
  }

 private:
  const std::shared_ptr<Tracker> tracker_;
  const std::shared_ptr<Core> core_;
};

}  // namespace

StatusOr<std::unique_ptr<ObjectStore>> OpenNfsStore(const NfsStoreOptions& options,
                                                    std::shared_ptr<Runtime> runtime) {
  VMB_ASSIGN_OR_RETURN(NfsEndpoint ep, ParseNfsEndpoint(options.endpoint));
  std::string prefix = options.prefix;
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  if (!prefix.empty()) VMB_RETURN_IF_ERROR(ValidateKey(prefix));
  const int conns = std::clamp(options.connections, 1, 64);
  auto store = std::make_unique<NfsStore>(std::move(ep), std::move(prefix), options.retry, conns,
                                          std::move(runtime));
  VMB_RETURN_IF_ERROR(store->Init());
  return std::unique_ptr<ObjectStore>(std::move(store));
}

}  // namespace vmbackup::internal
