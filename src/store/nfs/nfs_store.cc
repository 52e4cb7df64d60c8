// NfsStore implementation (see nfs_store.h and docs/nfs.md).
//
// Every libnfs call is issued with its async API and completed by Pump(), which polls the context's
// socket for the events libnfs asks for (nfs_which_events) and calls nfs_service, in slices of at
// most 100 ms, until the call completes or the operation's deadline passes. A context that failed
// (socket error, timeout) is destroyed at once, while the callbacks' targets are still alive, and
// the next attempt connects a fresh one: that is how the store reconnects after a server restart.
#include "store/nfs/nfs_store.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

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
#include "core/util.h"

namespace vmbackup::internal {
namespace {

using Clock = std::chrono::steady_clock;
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

// One libnfs context: one TCP connection and one mount. Used by one operation at a time.
struct Conn {
  nfs_context* nfs = nullptr;
  uint64_t read_chunk = kDefaultChunk;
  uint64_t write_chunk = kDefaultChunk;
  ~Conn() { Close(); }
  // Destroys the context. Pending calls are cancelled (their callbacks may run now), so every
  // Call still in flight must be alive when this is called.
  void Close() {
    if (nfs != nullptr) nfs_destroy_context(nfs);
    nfs = nullptr;
  }
  // True when an idle connection was closed by the server (it restarted or dropped us).
  bool LooksDead() const {
    if (nfs == nullptr) return false;
    if (nfs_queue_length(nfs) != 0) return false;
    pollfd p{nfs_get_fd(nfs), POLLIN, 0};
    if (p.fd < 0) return true;
    return ::poll(&p, 1, 0) > 0;  // readable while idle: EOF or error
  }
};

// Drives `c` until ready() or the deadline. On a socket error or the deadline the context is
// destroyed and kUnavailable is returned.
Status Pump(Conn& c, const std::function<bool()>& ready, Clock::time_point deadline) {
  while (!ready()) {
    auto now = Clock::now();
    if (now >= deadline) {
      c.Close();
      return UnavailableError("no answer before the deadline");
    }
    int ms = static_cast<int>(std::clamp<int64_t>(
        std::chrono::duration_cast<milliseconds>(deadline - now).count() + 1, 1, 100));
    pollfd p{nfs_get_fd(c.nfs), static_cast<short>(nfs_which_events(c.nfs)), 0};
    int r = 0;
    if (p.fd < 0) {
      std::this_thread::sleep_for(milliseconds(ms));
    } else {
      r = ::poll(&p, 1, ms);
      if (r < 0) {
        if (errno == EINTR) continue;
        int err = errno;
        c.Close();
        return UnavailableError(std::string("poll: ") + std::strerror(err));
      }
    }
    if (nfs_service(c.nfs, r > 0 ? p.revents : 0) < 0) {
      std::string msg = nfs_get_error(c.nfs) ? nfs_get_error(c.nfs) : "connection failed";
      c.Close();
      return UnavailableError(msg);
    }
  }
  return Status::Ok();
}

Status Wait(Conn& c, Call& call, Clock::time_point deadline) {
  return Pump(
      c, [&call] { return call.done; }, deadline);
}

// Queues a call (rc from the *_async function); a queueing failure breaks the connection.
Status Queued(Conn& c, int rc, const std::string& what) {
  if (rc >= 0) return Status::Ok();
  std::string msg = nfs_get_error(c.nfs) ? nfs_get_error(c.nfs) : std::strerror(-rc);
  c.Close();
  return UnavailableError(what + ": " + msg);
}

// A pool of at most `max` connections.
class ConnPool {
 public:
  explicit ConnPool(int max) : max_(max) {}
  // A connection (possibly not connected yet), or null if none became free before the deadline.
  std::unique_ptr<Conn> Acquire(Clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    while (free_.empty() && created_ >= max_) {
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && free_.empty() &&
          created_ >= max_)
        return nullptr;
    }
    if (!free_.empty()) {
      auto c = std::move(free_.back());
      free_.pop_back();
      return c;
    }
    ++created_;
    return std::make_unique<Conn>();
  }
  void Release(std::unique_ptr<Conn> c) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back(std::move(c));
    }
    cv_.notify_one();
  }

 private:
  const int max_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Conn>> free_;  // GUARDED_BY(mu_)
  int created_ = 0;                          // GUARDED_BY(mu_)
};

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

class NfsStore final : public ObjectStore {
 public:
  NfsStore(NfsEndpoint ep, std::string prefix, const RetryPolicy& retry, int connections,
           std::shared_ptr<Runtime> rt)
      : ObjectStore(std::move(rt)),
        ep_(std::move(ep)),
        prefix_(std::move(prefix)),
        base_(prefix_.empty() ? "" : "/" + prefix_),
        timeout_(retry.deadline),
        retry_(retry),
        pool_(connections) {}

  std::string Describe() const override {
    return "nfs://" + ep_.server + ep_.export_path + base_ + (ep_.version == 4 ? " (NFSv4)" : "");
  }

  // Checks the export (mount) and creates the prefix directory. First contact: retried for
  // kConnectDeadline at most, so a server that is down fails fast.
  Status Init() {
    return Run(
        "open " + Describe(),
        [this](Conn& c, Clock::time_point deadline) {
          if (base_.empty()) return Status::Ok();
          return MakeDirs(c, base_, deadline);
        },
        std::min(timeout_, kConnectDeadline));
  }

  // A GETATTR of the store's directory, retried for kConnectDeadline at most.
  Status Ping() override {
    return Run(
        "reach " + Describe(),
        [this](Conn& c, Clock::time_point deadline) {
          Call call(Call::kStat);
          const std::string dir = base_.empty() ? "/" : base_;
          VMB_RETURN_IF_ERROR(
              Queued(c, nfs_stat64_async(c.nfs, dir.c_str(), OnNfsDone, &call), "stat"));
          VMB_RETURN_IF_ERROR(Wait(c, call, deadline));
          if (call.err < 0) return CallError(call, "stat " + Describe());
          return Status::Ok();
        },
        std::min(timeout_, kConnectDeadline));
  }

  // ---- ObjectStore -----------------------------------------------------------------------------

  Status Put(const std::string& key, std::string_view data, const PutOptions& opts) override {
    VMB_RETURN_IF_ERROR(ValidateKey(key));
    const std::string path = Path(key);
    PutState s;
    Status st = Run("write " + Name(key), [&](Conn& c, Clock::time_point deadline) {
      return PutAttempt(c, deadline, key, path, data, opts, &s);
    });
    if (!st.ok() && st.code() != StatusCode::kUnavailable && !s.tmp.empty() && !s.published) {
      // Best effort: do not leave the temporary file behind (garbage collection would remove it).
      Status ignored = Run(
          "remove " + s.tmp,
          [&](Conn& c, Clock::time_point deadline) { return Unlink(c, s.tmp, deadline); },
          std::min(timeout_, milliseconds(5000)));
      ignored.IgnoreError();
    }
    return st;
  }

  StatusOr<std::string> Get(const std::string& key, uint64_t offset, uint64_t length) override {
    VMB_RETURN_IF_ERROR(ValidateKey(key));
    std::string out;
    Status st = Run("read " + Name(key), [&](Conn& c, Clock::time_point deadline) {
      return GetAttempt(c, deadline, key, offset, length, &out);
    });
    if (!st.ok()) return st;
    return out;
  }

  StatusOr<ObjectInfo> Head(const std::string& key) override {
    VMB_RETURN_IF_ERROR(ValidateKey(key));
    ObjectInfo info;
    Status st = Run("stat " + Name(key), [&](Conn& c, Clock::time_point deadline) {
      Call call(Call::kStat);
      VMB_RETURN_IF_ERROR(
          Queued(c, nfs_stat64_async(c.nfs, Path(key).c_str(), OnNfsDone, &call), "stat"));
      VMB_RETURN_IF_ERROR(Wait(c, call, deadline));
      if (call.err < 0) return CallError(call, "stat " + Name(key));
      if ((call.st.nfs_mode & S_IFMT) != S_IFREG)
        return NotFoundError("object " + key + " is not a file");
      info = ObjectInfo{key, call.st.nfs_size};
      return Status::Ok();
    });
    if (!st.ok()) return st;
    return info;
  }

  StatusOr<ListPage> List(const std::string& prefix, const std::string& token,
                          int max_keys) override {
    std::string dir_part;
    auto slash = prefix.find_last_of('/');
    if (slash != std::string::npos) dir_part = prefix.substr(0, slash);
    std::vector<ObjectInfo> all;
    Status st = Run("list " + Describe() + "/" + prefix, [&](Conn& c, Clock::time_point deadline) {
      all.clear();
      return Walk(c, deadline, dir_part, prefix, &all);
    });
    if (!st.ok()) return st;
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
    for (const auto& key : keys) VMB_RETURN_IF_ERROR(ValidateKey(key));
    size_t done = 0;  // keys fully handled (kept across retries)
    return Run("delete in " + Describe(), [&](Conn& c, Clock::time_point deadline) {
      for (; done < keys.size(); ++done) {
        const std::string path = Path(keys[done]);
        VMB_RETURN_IF_ERROR(Unlink(c, path, deadline));
        // Remove parent directories left empty (fails harmlessly when they are not).
        for (std::string dir = DirName(path); dir.size() > base_.size() && dir != "/";
             dir = DirName(dir)) {
          Call call;
          VMB_RETURN_IF_ERROR(
              Queued(c, nfs_rmdir_async(c.nfs, dir.c_str(), OnNfsDone, &call), "rmdir"));
          VMB_RETURN_IF_ERROR(Wait(c, call, deadline));
          if (call.err < 0) break;
        }
      }
      return Status::Ok();
    });
  }

  // Runs `fn` on a pooled connection until it returns anything but kUnavailable or the deadline
  // passes: `budget` (default the store's timeout) from now, or from the start of an outage that
  // other operations already saw (Outage), but the first attempt always gets a fair chance.
  // Reconnects between attempts.
  Status Run(const std::string& what, const std::function<Status(Conn&, Clock::time_point)>& fn,
             std::optional<milliseconds> budget = std::nullopt) {
    const auto start = Clock::now();
    const RetryPolicy policy = retry_.WithDeadlineAtMost(budget.value_or(timeout_));
    const auto first_attempt_until = start + std::min(policy.deadline, kConnectDeadline);
    Status last;
    int attempts = 0;
    while (true) {
      auto deadline = outage_.CountFrom(start) + policy.deadline;
      if (attempts == 0) deadline = std::max(deadline, first_attempt_until);
      auto conn = pool_.Acquire(deadline);
      if (!conn) {
        last = UnavailableError("all NFS connections stayed busy");
        break;
      }
      ++attempts;
      if (conn->LooksDead()) conn->Close();
      Status st = conn->nfs != nullptr ? Status::Ok() : Connect(*conn, deadline);
      if (st.ok()) st = fn(*conn, deadline);
      if (!RetryPolicy::Retryable(st.code())) {
        outage_.Answered();
        pool_.Release(std::move(conn));
        return st;
      }
      const auto failed_at = Clock::now();
      outage_.NoAnswer(failed_at);
      conn->Close();
      pool_.Release(std::move(conn));
      last = st;
      auto when = policy.NextAttempt(attempts, outage_.CountFrom(start), failed_at);
      if (!when) break;
      std::this_thread::sleep_until(*when);
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
    return UnavailableError(
        what + ": NFS server " + ep_.server + PortText() + " unavailable; gave up after " + buf +
        silent + " (limit " + std::to_string(policy.deadline.count() / 1000) +
        (policy.deadline < timeout_ ? " s for a first contact"
                                    : " s, TargetOptions.retry_timeout_seconds") +
        "). Last error: " + last.message());
  }

 private:
  struct PutState {
    std::string tmp;          // current temporary file
    bool written = false;     // tmp holds all the bytes (and is committed when durable)
    bool publishing = false;  // a rename / link of tmp was sent at least once
    bool published = false;
  };

  std::string Path(const std::string& key) const { return base_ + "/" + key; }
  std::string Name(const std::string& key) const { return Describe() + "/" + key; }
  std::string PortText() const {
    return ep_.nfs_port != 0 ? " (port " + std::to_string(ep_.nfs_port) + ")" : "";
  }

  // Connects and mounts a fresh context.
  Status Connect(Conn& c, Clock::time_point deadline) {
    c.Close();
    c.nfs = nfs_init_context();
    if (c.nfs == nullptr) return ResourceExhaustedError("nfs_init_context failed");
    nfs_url* url = nfs_parse_url_dir(c.nfs, ep_.libnfs_url.c_str());
    if (url == nullptr) {
      std::string msg = nfs_get_error(c.nfs);
      c.Close();
      return InvalidArgumentError("endpoint " + ep_.libnfs_url + ": " + msg);
    }
    nfs_destroy_url(url);
    nfs_set_autoreconnect(c.nfs, 0);  // we reconnect ourselves, within the deadline
    nfs_set_dircache(c.nfs, 0);       // other hosts change directories too
    Call call;
    VMB_RETURN_IF_ERROR(Queued(
        c, nfs_mount_async(c.nfs, ep_.server.c_str(), ep_.export_path.c_str(), OnNfsDone, &call),
        "mount"));
    Status st = Wait(c, call, deadline);
    if (!st.ok()) return UnavailableError("mount " + ep_.export_path + ": " + st.message());
    if (call.err < 0) {
      int err = -call.err;
      c.Close();
      if (err == ENOENT || err == ENOTDIR)
        return NotFoundError("NFS export " + ep_.export_path + " does not exist on server " +
                             ep_.server + " (" + call.msg + ")");
      if (err == EACCES || err == EPERM) return MountRefused(call.msg, deadline);
      return UnavailableError("mount " + ep_.export_path + ": " + call.msg);
    }
    uint64_t wmax = nfs_get_writemax(c.nfs), rmax = nfs_get_readmax(c.nfs);
    if (ep_.version == 4) {
      c.write_chunk = kV4MaxWrite;
      c.read_chunk = rmax == 0 ? kV4MaxRead : std::min(rmax, kV4MaxRead);
    } else {
      c.write_chunk = wmax == 0 ? 64 * 1024 : std::min<uint64_t>(wmax, 4u << 20);
      c.read_chunk = rmax == 0 ? 64 * 1024 : std::min<uint64_t>(rmax, 4u << 20);
    }
    return Status::Ok();
  }

  // The server refused the mount: NFSv3 servers (ganesha among them) answer MNT3ERR_ACCES both for
  // a path they do not export and for an export this client may not use. The export list tells
  // which.
  Status MountRefused(const std::string& msg, Clock::time_point deadline) {
    std::vector<std::string> exports;
    bool listed = false;
    std::string list_error;
    rpc_context* rpc = rpc_init_context();
    if (rpc != nullptr) {
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
          for (exportnode* e = *static_cast<exportnode**>(data); e != nullptr; e = e->ex_next)
            x->out->push_back(e->ex_dir);
        }
      };
      auto dl = std::min(deadline, Clock::now() + milliseconds(5000));
      if (mount_getexports_async(rpc, ep_.server.c_str(), cb, &ctx) == 0) {
        while (!ctx.done && Clock::now() < dl) {
          pollfd p{rpc_get_fd(rpc), static_cast<short>(rpc_which_events(rpc)), 0};
          int r = p.fd < 0 ? 0 : ::poll(&p, 1, 100);
          if (r < 0 && errno == EINTR) continue;
          if (rpc_service(rpc, r > 0 ? p.revents : 0) < 0) break;
        }
        listed = ctx.done && ctx.status == RPC_STATUS_SUCCESS;
        if (!listed) list_error = rpc_get_error(rpc) ? rpc_get_error(rpc) : "no answer";
      } else {
        list_error = rpc_get_error(rpc) ? rpc_get_error(rpc) : "cannot ask";
      }
      rpc_destroy_context(rpc);  // before ctx goes out of scope
    }
    if (listed && std::find(exports.begin(), exports.end(), ep_.export_path) == exports.end()) {
      std::string names;
      for (const auto& e : exports) names += (names.empty() ? "" : ", ") + e;
      // Servers (ganesha among them) list only the exports a client may mount, so this is also
      // what an export whose rules exclude this client looks like.
      return NotFoundError(
          "NFS server " + ep_.server + " does not export " + ep_.export_path +
          " to this client (exports it shows this client: " + (names.empty() ? "none" : names) +
          "); check the path, and the server's export rules for this host");
    }
    return PermissionDeniedError(
        "NFS server " + ep_.server + " refused to mount " + ep_.export_path + " for this client (" +
        msg + ")" +
        (listed ? ""
                : "; the export may also not exist (export list unavailable: " + list_error + ")"));
  }

  // mkdir -p below the export root.
  Status MakeDirs(Conn& c, const std::string& dir, Clock::time_point deadline) {
    if (dir.empty() || dir == "/") return Status::Ok();
    for (int round = 0; round < 2; ++round) {
      Call call;
      VMB_RETURN_IF_ERROR(
          Queued(c, nfs_mkdir2_async(c.nfs, dir.c_str(), kDirMode, OnNfsDone, &call), "mkdir"));
      VMB_RETURN_IF_ERROR(Wait(c, call, deadline));
      if (call.err >= 0 || call.err == -EEXIST) return Status::Ok();
      if (call.err != -ENOENT || round == 1)
        return CallError(call, "mkdir " + Describe() + dir.substr(base_.size()));
      VMB_RETURN_IF_ERROR(MakeDirs(c, DirName(dir), deadline));
    }
    return Status::Ok();
  }

  // unlink; a missing file is not an error.
  Status Unlink(Conn& c, const std::string& path, Clock::time_point deadline) {
    Call call;
    VMB_RETURN_IF_ERROR(
        Queued(c, nfs_unlink_async(c.nfs, path.c_str(), OnNfsDone, &call), "remove"));
    VMB_RETURN_IF_ERROR(Wait(c, call, deadline));
    if (call.err < 0 && call.err != -ENOENT) return CallError(call, "delete " + path);
    return Status::Ok();
  }

  StatusOr<nfs_stat_64> Stat(Conn& c, const std::string& path, Clock::time_point deadline) {
    Call call(Call::kStat);
    VMB_RETURN_IF_ERROR(Queued(c, nfs_stat64_async(c.nfs, path.c_str(), OnNfsDone, &call), "stat"));
    VMB_RETURN_IF_ERROR(Wait(c, call, deadline));
    if (call.err < 0) return CallError(call, "stat " + path);
    return call.st;
  }

  void CloseFh(Conn& c, nfsfh* fh, Clock::time_point deadline) {
    if (c.nfs == nullptr || fh == nullptr) return;
    Call call;
    if (nfs_close_async(c.nfs, fh, OnNfsDone, &call) < 0) return;
    Wait(c, call, deadline).IgnoreError();
  }

  // Writes all of `data` at offset 0 with pipelined WRITE calls.
  Status WriteAll(Conn& c, nfsfh* fh, std::string_view data, const std::string& what,
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
        VMB_RETURN_IF_ERROR(issue(s, next, len));
        next += len;
      }
      if (inflight == 0) break;
      VMB_RETURN_IF_ERROR(Pump(
          c,
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
        if (n < s.len && first_error.ok()) VMB_RETURN_IF_ERROR(issue(s, s.off + n, s.len - n));
      }
    }
    return first_error;
  }

  // Reads [offset, offset+out->size()) with pipelined READ calls; *got = bytes before the first
  // gap (a READ that hit the end of the file).
  Status ReadAll(Conn& c, nfsfh* fh, uint64_t offset, std::string* out, const std::string& what,
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
        VMB_RETURN_IF_ERROR(issue(s, next, len));
        next += len;
      }
      if (inflight == 0) break;
      VMB_RETURN_IF_ERROR(Pump(
          c,
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
          VMB_RETURN_IF_ERROR(issue(s, s.pos + n, s.len - n));
        }
      }
    }
    *got = eof_at;
    return first_error;
  }

  Status PutAttempt(Conn& c, Clock::time_point deadline, const std::string& key,
                    const std::string& path, std::string_view data, const PutOptions& opts,
                    PutState* s) {
    if (!s->written) {
      if (!s->tmp.empty()) VMB_RETURN_IF_ERROR(Unlink(c, s->tmp, deadline));  // a failed attempt's
      // A fresh name per attempt: NFSv4 creates exclusively (libnfs 4.0 maps O_CREAT to
      // EXCLUSIVE4), and a create whose reply was lost must not make the retry fail.
      VMB_ASSIGN_OR_RETURN(std::string tmp_name, RandomHex(16));
      s->tmp = base_ + "/" + kTmpDir + "/" + tmp_name;
      Call oc;
      for (int round = 0; round < 2; ++round) {
        oc.Reset();
        VMB_RETURN_IF_ERROR(Queued(
            c,
            nfs_open2_async(c.nfs, s->tmp.c_str(), O_CREAT | O_WRONLY, kFileMode, OnNfsDone, &oc),
            "create"));
        VMB_RETURN_IF_ERROR(Wait(c, oc, deadline));
        if (oc.err == -ENOENT && round == 0) {
          VMB_RETURN_IF_ERROR(MakeDirs(c, base_ + "/" + kTmpDir, deadline));
          continue;
        }
        break;
      }
      if (oc.err < 0) return CallError(oc, "create temporary file for " + Name(key));
      auto* fh = static_cast<nfsfh*>(oc.ptr);
      Status st;
      if (ep_.version == 4) {
        // libnfs creates exclusively on v4 (EXCLUSIVE4), which carries no attributes: the server
        // picks the mode (ganesha: 0600, others may differ). Set it explicitly.
        Call mc;
        st = Queued(c, nfs_fchmod_async(c.nfs, fh, kFileMode, OnNfsDone, &mc), "chmod");
        if (st.ok()) st = Wait(c, mc, deadline);
        if (st.ok() && mc.err < 0) st = CallError(mc, "chmod temporary file of " + Name(key));
      }
      if (st.ok()) st = WriteAll(c, fh, data, "write " + Name(key), deadline);
      if (st.ok() && opts.durable && c.nfs != nullptr) {
        Call fc;
        st = Queued(c, nfs_fsync_async(c.nfs, fh, OnNfsDone, &fc), "commit");
        if (st.ok()) st = Wait(c, fc, deadline);
        if (st.ok() && fc.err < 0) st = CallError(fc, "commit " + Name(key));
      }
      if (c.nfs != nullptr) {
        Call cc;
        Status cst = Queued(c, nfs_close_async(c.nfs, fh, OnNfsDone, &cc), "close");
        if (cst.ok()) cst = Wait(c, cc, deadline);
        if (cst.ok() && cc.err < 0) cst = CallError(cc, "close " + Name(key));
        if (st.ok()) st = cst;
      }
      VMB_RETURN_IF_ERROR(st);
      s->written = true;
    }
    VMB_RETURN_IF_ERROR(opts.if_absent ? PublishIfAbsent(c, deadline, key, path, data.size(), s)
                                       : PublishReplace(c, deadline, key, path, data.size(), s));
    s->published = true;
    return Status::Ok();
  }

  Status PublishReplace(Conn& c, Clock::time_point deadline, const std::string& key,
                        const std::string& path, uint64_t size, PutState* s) {
    for (int round = 0; round < 2; ++round) {
      Call call;
      bool retried = s->publishing;
      s->publishing = true;
      VMB_RETURN_IF_ERROR(Queued(
          c, nfs_rename_async(c.nfs, s->tmp.c_str(), path.c_str(), OnNfsDone, &call), "rename"));
      VMB_RETURN_IF_ERROR(Wait(c, call, deadline));
      if (call.err >= 0) return Status::Ok();
      if (call.err != -ENOENT) return CallError(call, "rename to " + Name(key));
      // ENOENT: the parent directory is missing (or a concurrent Delete removed it), or a rename
      // whose reply was lost already moved the temporary file.
      if (retried) {
        auto tmp_st = Stat(c, s->tmp, deadline);
        if (tmp_st.status().code() == StatusCode::kUnavailable) return tmp_st.status();
        if (tmp_st.status().code() == StatusCode::kNotFound) {
          VMB_ASSIGN_OR_RETURN(nfs_stat_64 st, Stat(c, path, deadline));
          if (st.nfs_size == size) return Status::Ok();
          return DataLossError("temporary file of " + Name(key) + " vanished during rename");
        }
      }
      if (round == 1) return CallError(call, "rename to " + Name(key));
      VMB_RETURN_IF_ERROR(MakeDirs(c, DirName(path), deadline));
    }
    return Status::Ok();
  }

  Status PublishIfAbsent(Conn& c, Clock::time_point deadline, const std::string& key,
                         const std::string& path, uint64_t size, PutState* s) {
    for (int round = 0; round < 2; ++round) {
      Call call;
      bool retried = s->publishing;
      s->publishing = true;
      VMB_RETURN_IF_ERROR(
          Queued(c, nfs_link_async(c.nfs, s->tmp.c_str(), path.c_str(), OnNfsDone, &call), "link"));
      VMB_RETURN_IF_ERROR(Wait(c, call, deadline));
      if (call.err >= 0) break;
      if (call.err == -EEXIST) {
        if (retried) {
          // Did our own earlier LINK (reply lost) create it? Then both names are one file.
          auto a = Stat(c, s->tmp, deadline);
          auto b = Stat(c, path, deadline);
          if (a.ok() && b.ok() && a->nfs_ino == b->nfs_ino && a->nfs_dev == b->nfs_dev) break;
          if (a.status().code() == StatusCode::kUnavailable) return a.status();
          if (b.status().code() == StatusCode::kUnavailable) return b.status();
        }
        return AlreadyExistsError("object " + key + " already exists");
      }
      if (call.err == -EOPNOTSUPP || call.err == -ENOSYS || call.err == -EPERM ||
          call.err == -EMLINK) {
        // No hard links on this export: check, then rename (a narrow race remains; docs/nfs.md).
        auto st = Stat(c, path, deadline);
        if (st.ok()) return AlreadyExistsError("object " + key + " already exists");
        if (st.status().code() != StatusCode::kNotFound) return st.status();
        return PublishReplace(c, deadline, key, path, size, s);
      }
      if (call.err != -ENOENT || round == 1) return CallError(call, "link to " + Name(key));
      VMB_RETURN_IF_ERROR(MakeDirs(c, DirName(path), deadline));
    }
    // Published: the temporary name goes (a failure here leaves a stray link in .tmp/ only).
    Unlink(c, s->tmp, deadline).IgnoreError();
    return Status::Ok();
  }

  // One try of Get: OPEN, GETATTR, then the checks below before anything is allocated, READs,
  // CLOSE. kNotFound (missing, or not a regular file), kOutOfRange (offset past the end), kDataLoss
  // (a whole read of more than kMaxWholeObjectRead bytes, or an object shorter than the range,
  // also when it shrank during the read), kUnavailable (retried by Run).
  Status GetAttempt(Conn& c, Clock::time_point deadline, const std::string& key, uint64_t offset,
                    uint64_t length, std::string* out) {
    Call oc;
    VMB_RETURN_IF_ERROR(
        Queued(c, nfs_open_async(c.nfs, Path(key).c_str(), O_RDONLY, OnNfsDone, &oc), "open"));
    VMB_RETURN_IF_ERROR(Wait(c, oc, deadline));
    if (oc.err < 0) return CallError(oc, "open " + Name(key));
    auto* fh = static_cast<nfsfh*>(oc.ptr);
    Call sc(Call::kStat);
    Status st = Queued(c, nfs_fstat64_async(c.nfs, fh, OnNfsDone, &sc), "stat");
    if (st.ok()) st = Wait(c, sc, deadline);
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
        st = ReadAll(c, fh, offset, out, "read " + Name(key), deadline, &got);
      }
    }
    CloseFh(c, fh, deadline);
    VMB_RETURN_IF_ERROR(st);
    if (got < want) return ShortObject(key, offset, want, got);
    return Status::Ok();
  }

  static Status ShortObject(const std::string& key, uint64_t offset, uint64_t want, uint64_t got) {
    return DataLossError("object " + key + " is shorter than expected (wanted " +
                         std::to_string(want) + " bytes at " + std::to_string(offset) + ", got " +
                         std::to_string(got) + ")");
  }

  // Collects the objects below `rel_dir` whose keys start with `prefix`.
  Status Walk(Conn& c, Clock::time_point deadline, const std::string& rel_dir,
              const std::string& prefix, std::vector<ObjectInfo>* out) {
    std::string abs = rel_dir.empty() ? (base_.empty() ? "/" : base_) : Path(rel_dir);
    Call call;
    VMB_RETURN_IF_ERROR(
        Queued(c, nfs_opendir_async(c.nfs, abs.c_str(), OnNfsDone, &call), "opendir"));
    VMB_RETURN_IF_ERROR(Wait(c, call, deadline));
    if (call.err == -ENOENT || call.err == -ENOTDIR) return Status::Ok();
    if (call.err < 0) return CallError(call, "list " + Describe() + "/" + rel_dir);
    auto* dir = static_cast<nfsdir*>(call.ptr);
    std::vector<std::string> subdirs;
    while (nfsdirent* e = nfs_readdir(c.nfs, dir)) {
      std::string name = e->name;
      if (name == "." || name == "..") continue;
      if (rel_dir.empty() && name == kTmpDir) continue;
      if (name.find(".tmp-") != std::string::npos) continue;
      std::string rel = rel_dir.empty() ? name : rel_dir + "/" + name;
      bool is_dir = e->type == NF3DIR || (e->mode & S_IFMT) == S_IFDIR;
      if (is_dir) {
        std::string as_prefix = rel + "/";
        size_t n = std::min(prefix.size(), as_prefix.size());
        if (prefix.compare(0, n, as_prefix, 0, n) == 0) subdirs.push_back(rel);
      } else if (rel.compare(0, prefix.size(), prefix) == 0) {
        out->push_back({rel, e->size});
      }
    }
    nfs_closedir(c.nfs, dir);
    for (const auto& d : subdirs) VMB_RETURN_IF_ERROR(Walk(c, deadline, d, prefix, out));
    return Status::Ok();
  }

  const NfsEndpoint ep_;
  const std::string prefix_;  // "" or "a/b"
  const std::string base_;    // "" or "/a/b": the store's root below the export
  const milliseconds timeout_;
  const RetryPolicy retry_;  // backoff between attempts; deadline = timeout_
  Outage outage_;            // since when the server answered no attempt of any operation
  ConnPool pool_;
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
