// The qemu provider: point-in-time views of a running QEMU's disks and their changed ranges, the
// way libvirt's incremental "pull" backups get them (docs/providers/qemu.md).
//
// Prepare: connect to QMP, take this QEMU's lock (one backup per QEMU process at a time), remove
//   what a killed run left (exports, jobs, fleecing nodes, temporary bitmaps: everything named
//   "vmbackup-..."), resolve each disk's node, size and bitmaps, start QEMU's NBD server (unless
//   the host runs one), and create a temporary fleecing image per disk (qcow2 whose backing is
//   the disk) through blockdev-create.
// Take (inside the freeze window), one QMP transaction for all disks: a new dirty bitmap per
//   disk (the checkpoint of this instant; persistent in qcow2 images), a disabled copy of the
//   parent's checkpoint bitmap (merged in the same transaction), and `blockdev-backup sync=none`
//   into the fleecing image, so the guest's later writes first copy the old data there.
// Open: an NBD export of each fleecing node with the copied bitmap; libnbd reads the data
//   extents (base:allocation), the changed ranges (qemu:dirty-bitmap:...) and the blocks.
// Teardown (always): export, job, fleecing nodes and file, the temporary bitmap; after Commit
//   every other "vmbackup-" bitmap of the disk goes (one checkpoint kept per disk: the newest);
//   without Commit the new checkpoint goes and the parent's stays, as found.
#include <fcntl.h>
#include <libnbd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "core/crypto.h"
#include "core/errors.h"
#include "core/impl_access.h"
#include "core/runtime.h"
#include "core/util.h"
#include "volume/provider.h"
#include "volume/qmp.h"

namespace vmbackup::internal {
namespace {

using json = nlohmann::json;
using std::chrono::milliseconds;

constexpr uint64_t kMaxDiskSize = uint64_t{1} << 50;  // 1 PiB
constexpr size_t kMaxExtents = 16u << 20;
constexpr size_t kMaxNbdRead = 32u << 20;  // QEMU's NBD payload limit
constexpr int kMaxNbdConnections = 4;
const milliseconds kConnectTimeout(10000);
const milliseconds kJobTimeout(120000);

std::string NbdError(const std::string& what) {
  const char* e = nbd_get_error();
  return what + ": " + (e != nullptr ? e : "unknown libnbd error");
}

bool HasPrefix(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

// A string member of a QMP object, bounded; "" when absent or not a string.
std::string Str(const json& j, const char* key, size_t max = 4096) {
  if (!j.is_object()) return "";
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return "";
  std::string s = it->get<std::string>();
  return s.size() > max ? "" : s;
}

// Adds [off, off+len) to `out`, merging with the last extent when adjacent.
void Append(std::vector<Extent>* out, uint64_t off, uint64_t len) {
  if (len == 0) return;
  if (!out->empty() && out->back().offset + out->back().length == off)
    out->back().length += len;
  else
    out->push_back({off, len});
}

// libnbd handles to one export; several pipeline workers read at once.
class NbdPool {
 public:
  NbdPool(std::string socket, std::string export_name, std::vector<std::string> contexts)
      : socket_(std::move(socket)),
        export_(std::move(export_name)),
        contexts_(std::move(contexts)) {}
  ~NbdPool() { CloseAll(); }

  void CloseAll() {
    std::lock_guard<std::mutex> l(mu_);
    for (nbd_handle* h : free_) {
      nbd_shutdown(h, 0);
      nbd_close(h);
    }
    free_.clear();
  }

  // A new connection of the caller's own (nbd_close it).
  StatusOr<nbd_handle*> Connect() { return Open(); }

  StatusOr<nbd_handle*> Acquire() {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!free_.empty()) {
        nbd_handle* h = free_.back();
        free_.pop_back();
        return h;
      }
    }
    return Open();
  }
  void Release(nbd_handle* h, bool healthy) {
    std::lock_guard<std::mutex> l(mu_);
    if (healthy && free_.size() < kMaxNbdConnections) {
      free_.push_back(h);
      return;
    }
    nbd_close(h);
  }

 private:
  StatusOr<nbd_handle*> Open() {
    nbd_handle* h = nbd_create();
    if (h == nullptr) return InternalError(NbdError("nbd_create"));
    auto fail = [&](const std::string& what, StatusCode code) {
      Status st(code, NbdError(what + " (export " + export_ + " at " + socket_ + ")"));
      nbd_close(h);
      return st;
    };
    for (const auto& c : contexts_)
      if (nbd_add_meta_context(h, c.c_str()) != 0)
        return fail("nbd_add_meta_context", StatusCode::kInternal);
    if (nbd_set_export_name(h, export_.c_str()) != 0)
      return fail("nbd_set_export_name", StatusCode::kInternal);
    if (nbd_connect_unix(h, socket_.c_str()) != 0)
      return fail("connect to QEMU's NBD server", StatusCode::kUnavailable);
    for (const auto& c : contexts_)
      if (nbd_can_meta_context(h, c.c_str()) != 1)
        return fail("QEMU does not offer " + c, StatusCode::kFailedPrecondition);
    return h;
  }

  const std::string socket_, export_;
  const std::vector<std::string> contexts_;
  std::mutex mu_;
  std::vector<nbd_handle*> free_;
};

// The extents of `context` over [0, size) whose flags match (`want` true: any of `mask` set;
// false: none of `mask` set). Replies are untrusted: entries are clipped to what was asked, a
// reply that does not advance is an error, and the count is bounded.
Status BlockStatus(nbd_handle* h, const std::string& context, uint64_t size, uint32_t mask,
                   bool want, std::vector<Extent>* out) {
  struct Acc {
    const std::string* context;
    uint64_t start = 0, limit = 0, end = 0;
    uint32_t mask = 0;
    bool want = false;
    std::vector<Extent>* out;
    bool too_many = false;
  } acc;
  acc.context = &context;
  acc.mask = mask;
  acc.want = want;
  acc.out = out;
  nbd_extent_callback cb;
  cb.user_data = &acc;
  cb.free = nullptr;
  cb.callback = [](void* ud, const char* ctx, uint64_t offset, uint32_t* entries, size_t n,
                   int*) -> int {
    auto* a = static_cast<Acc*>(ud);
    if (ctx == nullptr || *a->context != ctx || offset != a->start) return 0;
    uint64_t pos = offset;
    for (size_t i = 0; i + 1 < n && pos < a->limit; i += 2) {
      const uint64_t len = std::min<uint64_t>(entries[i], a->limit - pos);
      const bool set = (entries[i + 1] & a->mask) != 0;
      if (set == a->want) Append(a->out, pos, len);
      if (a->out->size() > kMaxExtents) {
        a->too_many = true;
        return 0;
      }
      pos += len;
    }
    a->end = std::max(a->end, pos);
    return 0;
  };
  uint64_t off = 0;
  while (off < size) {
    acc.start = off;
    acc.limit = off + std::min<uint64_t>(size - off, uint64_t{1} << 30);
    acc.end = off;
    if (nbd_block_status(h, acc.limit - off, off, cb, 0) != 0)
      return UnavailableError(NbdError("NBD block status (" + context + ")"));
    if (acc.too_many) return DataLossError("QEMU reported more than 16 M extents for " + context);
    if (acc.end <= off)
      return DataLossError("QEMU's block status for " + context + " did not advance at offset " +
                           std::to_string(off));
    off = acc.end;
  }
  return Status::Ok();
}

// A disk's point-in-time view over NBD. Reads along the ranges the backup announced
// (WillRead) are fetched ahead on a connection of their own: up to kWindow bytes in kChunk
// requests in flight (QEMU serves the requests of one connection concurrently), so the disk
// behind QEMU sees a deep queue even when it is opened with O_DIRECT. Other reads, and all reads
// after a readahead failure, go through the pool synchronously.
class NbdView final : public VolumeView {
 public:
  static constexpr uint64_t kChunk = 1 << 20;
  static constexpr uint64_t kWindow = 16 << 20;   // bytes requested and not yet received
  static constexpr uint64_t kLag = 16 << 20;      // received bytes kept behind the latest read
  static constexpr uint64_t kMaxHeld = 64 << 20;  // received bytes kept at most

  NbdView(std::shared_ptr<NbdPool> pool, uint64_t size, std::vector<Extent> data)
      : pool_(std::move(pool)), size_(size), data_(std::move(data)) {}
  ~NbdView() override {
    // Closing the connection ends its requests before their buffers go.
    if (ra_ != nullptr) nbd_close(ra_);
  }
  uint64_t size() const override { return size_; }

  void WillRead(std::vector<Extent> ranges) override {
    std::lock_guard<std::mutex> l(mu_);
    plan_.clear();
    for (const auto& r : ranges) {
      if (r.offset >= size_ || r.length == 0) continue;
      plan_.push_back({r.offset, std::min(r.length, size_ - r.offset)});
    }
    plan_i_ = 0;
    plan_pos_ = plan_.empty() ? 0 : plan_[0].offset;
  }

  StatusOr<std::vector<Extent>> DataExtents(uint64_t offset, uint64_t length) const override {
    std::vector<Extent> out;
    const uint64_t end = std::min(size_, offset + length);
    for (const auto& e : data_) {
      const uint64_t a = std::max(e.offset, offset), b = std::min(e.offset + e.length, end);
      if (a < b) out.push_back({a, b - a});
    }
    return out;
  }

  StatusOr<size_t> ReadAt(uint64_t offset, void* buf, size_t length) const override {
    if (offset > size_) return OutOfRangeError("read past the end of the QEMU disk");
    const size_t want = static_cast<size_t>(std::min<uint64_t>(length, size_ - offset));
    {
      std::lock_guard<std::mutex> l(mu_);
      if (auto r = ReadAhead(offset, static_cast<char*>(buf), want)) return std::move(*r);
    }
    VMB_ASSIGN_OR_RETURN(nbd_handle * h, pool_->Acquire());
    size_t got = 0;
    while (got < want) {
      const size_t n = std::min(want - got, kMaxNbdRead);
      if (nbd_pread(h, static_cast<char*>(buf) + got, n, offset + got, 0) != 0) {
        Status st =
            UnavailableError(NbdError("NBD read at offset " + std::to_string(offset + got)));
        pool_->Release(h, false);
        return st;
      }
      got += n;
    }
    pool_->Release(h, true);
    return got;
  }

 private:
  struct Chunk {
    uint64_t off = 0, len = 0;
    std::unique_ptr<char[]> buf;
    int64_t cookie = -1;
    int state = 0;  // 0 in flight, 1 received, -1 failed
    std::string error;
  };

  // The read from fetched-ahead chunks; nullopt when they do not cover it (then read directly).
  // REQUIRES: mu_ held.
  std::optional<StatusOr<size_t>> ReadAhead(uint64_t off, char* buf, size_t len) const {
    if (plan_.empty() || failed_ || len == 0) return std::nullopt;
    if (ra_ == nullptr) {
      auto h = pool_->Connect();
      if (!h.ok()) {
        failed_ = true;
        return std::nullopt;
      }
      ra_ = *h;
    }
    // Chunks well behind this read (the other workers' reads trail by one claim at most) go.
    while (!chunks_.empty() && chunks_.front().state != 0 &&
           (chunks_.front().off + chunks_.front().len + kLag <= off || held_ > kMaxHeld)) {
      held_ -= chunks_.front().len;
      chunks_.pop_front();
    }
    TopUp();
    // The chunks covering [off, off+len), which must be contiguous.
    size_t first = chunks_.size();
    for (size_t i = 0; i < chunks_.size(); ++i)
      if (chunks_[i].off <= off && off < chunks_[i].off + chunks_[i].len) {
        first = i;
        break;
      }
    if (first == chunks_.size()) return std::nullopt;
    size_t last = first;
    uint64_t covered = chunks_[first].off + chunks_[first].len;
    while (covered < off + len && last + 1 < chunks_.size() && chunks_[last + 1].off == covered) {
      ++last;
      covered += chunks_[last].len;
    }
    if (covered < off + len) return std::nullopt;
    for (size_t i = first; i <= last; ++i) {
      while (chunks_[i].state == 0) {
        if (!Poll()) return std::nullopt;
        TopUp();
      }
      if (chunks_[i].state < 0)
        return StatusOr<size_t>(UnavailableError(
            "NBD read at offset " + std::to_string(chunks_[i].off) + ": " + chunks_[i].error));
    }
    for (size_t i = first; i <= last; ++i) {
      const Chunk& c = chunks_[i];
      const uint64_t a = std::max(c.off, off), b = std::min(c.off + c.len, off + len);
      std::memcpy(buf + (a - off), c.buf.get() + (a - c.off), b - a);
    }
    return StatusOr<size_t>(len);
  }

  // Requests the next planned ranges until kWindow bytes are in flight. REQUIRES: mu_ held.
  void TopUp() const {
    while (!failed_ && in_flight_ < kWindow && held_ < kMaxHeld && plan_i_ < plan_.size()) {
      const Extent& e = plan_[plan_i_];
      const uint64_t n = std::min(kChunk, e.offset + e.length - plan_pos_);
      Chunk c;
      c.off = plan_pos_;
      c.len = n;
      c.buf.reset(new char[n]);
      c.cookie = nbd_aio_pread(ra_, c.buf.get(), n, c.off, NBD_NULL_COMPLETION, 0);
      if (c.cookie < 0) {
        failed_ = true;
        return;
      }
      in_flight_ += n;
      held_ += n;
      chunks_.push_back(std::move(c));
      plan_pos_ += n;
      if (plan_pos_ >= e.offset + e.length && ++plan_i_ < plan_.size())
        plan_pos_ = plan_[plan_i_].offset;
    }
  }

  // Waits for some reply and settles the requests that completed; false when the connection
  // failed (every request in flight is then failed). REQUIRES: mu_ held.
  bool Poll() const {
    if (nbd_poll(ra_, -1) < 0) {
      const std::string err = NbdError("NBD connection");
      for (auto& c : chunks_)
        if (c.state == 0) {
          c.state = -1;
          c.error = err;
          in_flight_ -= c.len;
        }
      failed_ = true;
      return true;  // the failed chunks report the error
    }
    for (auto& c : chunks_) {
      if (c.state != 0) continue;
      const int r = nbd_aio_command_completed(ra_, static_cast<uint64_t>(c.cookie));
      if (r == 0) continue;
      c.state = r == 1 ? 1 : -1;
      if (r != 1) c.error = NbdError("read");
      in_flight_ -= c.len;
    }
    return true;
  }

  std::shared_ptr<NbdPool> pool_;
  uint64_t size_;
  std::vector<Extent> data_;
  mutable std::mutex mu_;
  mutable nbd_handle* ra_ = nullptr;  // the readahead connection
  mutable std::deque<Chunk> chunks_;  // ascending offsets
  std::vector<Extent> plan_;
  mutable size_t plan_i_ = 0;
  mutable uint64_t plan_pos_ = 0;
  mutable uint64_t in_flight_ = 0, held_ = 0;
  mutable bool failed_ = false;
};

struct Disk {
  const VolumeSource* src = nullptr;
  std::string base;  // the parent's checkpoint ("" none)
  bool base_ok = false;
  std::string node;  // the format node
  std::string drv;
  uint64_t size = 0;
  std::vector<std::string> bitmaps;  // "vmbackup-" bitmaps found on the node
  // What this run creates, and how far it got.
  std::string fleece_file, file_node, fleece_node, job, export_id;
  bool created_file = false, added_file_node = false, added_fleece = false, exported = false;
  std::shared_ptr<NbdPool> pool;
};

class QemuProvider final : public SnapshotProvider {
 public:
  explicit QemuProvider(Runtime& rt) : io_(ImplOf(rt)->io()) {}
  ~QemuProvider() override { Teardown(); }

  Status Prepare(const std::vector<ProviderVolume>& volumes, const std::string&) override {
    const QemuDisk& first = volumes.front().source->qemu;
    qmp_path_ = first.qmp_socket;
    VMB_RETURN_IF_ERROR(Lock());
    VMB_ASSIGN_OR_RETURN(qmp_, QmpClient::Connect(io_, qmp_path_, kConnectTimeout));
    VMB_ASSIGN_OR_RETURN(std::string run, RandomHex(4));
    VMB_ASSIGN_OR_RETURN(checkpoint_, NewCheckpointName());
    tmp_bitmap_ = "vmbackup-tmp-" + run;
    VMB_RETURN_IF_ERROR(RemoveLeftovers());

    VMB_ASSIGN_OR_RETURN(json nodes, qmp_->Execute("query-named-block-nodes", {{"flat", true}}));
    if (!nodes.is_array()) return DataLossError("query-named-block-nodes: not a list");
    for (size_t i = 0; i < volumes.size(); ++i) {
      Disk d;
      d.src = volumes[i].source;
      d.base = volumes[i].base_checkpoint;
      VMB_RETURN_IF_ERROR(Resolve(nodes, &d).WithContext("volume '" + d.src->name + "'"));
      const std::string tag = run + "-" + std::to_string(i);
      d.file_node = "vmbackup-ff-" + tag;
      d.fleece_node = "vmbackup-fl-" + tag;
      d.job = "vmbackup-j-" + tag;
      d.export_id = "vmbackup-e-" + tag;
      disks_.push_back(std::move(d));
    }
    VMB_RETURN_IF_ERROR(StartNbdServer());
    for (auto& d : disks_)
      VMB_RETURN_IF_ERROR(CreateFleece(&d).WithContext("volume '" + d.src->name + "'"));
    return Status::Ok();
  }

  Status Take() override {
    json actions = json::array();
    for (const auto& d : disks_) {
      actions.push_back(
          {{"type", "block-dirty-bitmap-add"},
           {"data", {{"node", d.node}, {"name", checkpoint_}, {"persistent", d.drv == "qcow2"}}}});
      if (d.base_ok) {
        actions.push_back(
            {{"type", "block-dirty-bitmap-add"},
             {"data", {{"node", d.node}, {"name", tmp_bitmap_}, {"disabled", true}}}});
        actions.push_back(
            {{"type", "block-dirty-bitmap-merge"},
             {"data", {{"node", d.node}, {"target", tmp_bitmap_}, {"bitmaps", {d.base}}}}});
      }
      actions.push_back(
          {{"type", "blockdev-backup"},
           {"data",
            {{"device", d.node}, {"target", d.fleece_node}, {"sync", "none"}, {"job-id", d.job}}}});
    }
    VMB_RETURN_IF_ERROR(qmp_->Execute("transaction", {{"actions", actions}})
                            .status()
                            .WithContext("QEMU at " + qmp_path_));
    took_ = true;
    return Status::Ok();
  }

  StatusOr<std::vector<TakenVolume>> Open() override {
    std::vector<TakenVolume> out;
    for (auto& d : disks_) {
      json args = {{"type", "nbd"},
                   {"id", d.export_id},
                   {"node-name", d.fleece_node},
                   {"name", d.export_id},
                   {"writable", false}};
      if (d.base_ok) args["bitmaps"] = json::array({{{"node", d.node}, {"name", tmp_bitmap_}}});
      VMB_RETURN_IF_ERROR(qmp_->Execute("block-export-add", args)
                              .status()
                              .WithContext("volume '" + d.src->name + "'"));
      d.exported = true;
      std::vector<std::string> contexts = {"base:allocation"};
      const std::string dirty_ctx = "qemu:dirty-bitmap:" + tmp_bitmap_;
      if (d.base_ok) contexts.push_back(dirty_ctx);
      d.pool = std::make_shared<NbdPool>(nbd_socket_, d.export_id, contexts);
      VMB_ASSIGN_OR_RETURN(nbd_handle * h, d.pool->Acquire());
      TakenVolume t;
      Status st = Read(h, d, dirty_ctx, &t);
      d.pool->Release(h, st.ok());
      VMB_RETURN_IF_ERROR(st.WithContext("volume '" + d.src->name + "'"));
      out.push_back(std::move(t));
    }
    return out;
  }

  void Commit() override { committed_ = true; }

 private:
  // The data extents, changed ranges and view of disk `d` through handle `h`.
  Status Read(nbd_handle* h, Disk& d, const std::string& dirty_ctx, TakenVolume* t) {
    const int64_t sz = nbd_get_size(h);
    if (sz < 0) return UnavailableError(NbdError("NBD export size"));
    if (static_cast<uint64_t>(sz) != d.size)
      return DataLossError("QEMU exports " + std::to_string(sz) + " bytes for a disk of " +
                           std::to_string(d.size));
    std::vector<Extent> data;
    VMB_RETURN_IF_ERROR(BlockStatus(h, "base:allocation", d.size, LIBNBD_STATE_ZERO, false, &data));
    if (d.base_ok) {
      VMB_RETURN_IF_ERROR(BlockStatus(h, dirty_ctx, d.size, 1, true, &t->changed));
      t->has_changes = true;
    }
    t->view = std::make_unique<NbdView>(d.pool, d.size, std::move(data));
    t->snapshot = "fleece";
    t->point_in_time = true;
    t->checkpoint = checkpoint_;
    return Status::Ok();
  }

  // One backup per QEMU process at a time (the leftover sweep would remove another run's nodes).
  Status Lock() {
    const char* dir = ::access("/run/lock", W_OK) == 0 ? "/run/lock" : "/tmp";
    const std::string hash = ToHex(Sha256(qmp_path_)).substr(0, 16);
    lock_path_ = std::string(dir) + "/vmbackup-qemu-" + hash + ".lock";
    own_nbd_socket_ = std::string(dir) + "/vmbackup-nbd-" + hash + ".sock";
    // The holder removes the file when done; a lock taken on a file that was removed meanwhile is
    // taken again on the new one.
    for (int attempt = 0; attempt < 100; ++attempt) {
      lock_fd_ = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      if (lock_fd_ < 0) return ErrnoToStatus(errno, "lock file " + lock_path_);
      if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
        ::close(lock_fd_);
        lock_fd_ = -1;
        return FailedPreconditionError("another backup of the QEMU at " + qmp_path_ +
                                       " is running (lock " + lock_path_ + ")");
      }
      struct stat held, now;
      if (::fstat(lock_fd_, &held) == 0 && ::stat(lock_path_.c_str(), &now) == 0 &&
          held.st_ino == now.st_ino && held.st_dev == now.st_dev)
        return Status::Ok();
      ::close(lock_fd_);
      lock_fd_ = -1;
    }
    return UnavailableError("cannot take the lock " + lock_path_);
  }

  // Removes what a killed run left on this QEMU: NBD exports, block jobs, fleecing nodes (and
  // their files) and temporary bitmaps, all named "vmbackup-...".
  Status RemoveLeftovers() {
    VMB_ASSIGN_OR_RETURN(json exports, qmp_->Execute("query-block-exports"));
    if (exports.is_array())
      for (const auto& e : exports) {
        const std::string id = Str(e, "id", 128);
        if (HasPrefix(id, "vmbackup-e-")) DeleteExport(id);
      }
    VMB_ASSIGN_OR_RETURN(json jobs, qmp_->Execute("query-jobs"));
    if (jobs.is_array())
      for (const auto& j : jobs) {
        const std::string id = Str(j, "id", 128);
        if (HasPrefix(id, "vmbackup-")) CancelJob(id);
      }
    VMB_ASSIGN_OR_RETURN(json nodes, qmp_->Execute("query-named-block-nodes", {{"flat", true}}));
    if (!nodes.is_array()) return Status::Ok();
    for (const char* prefix : {"vmbackup-fl-", "vmbackup-ff-"}) {
      for (const auto& n : nodes) {
        const std::string name = Str(n, "node-name", 128);
        if (!HasPrefix(name, prefix)) continue;
        const std::string file = Str(n, "file");
        qmp_->Execute("blockdev-del", {{"node-name", name}}).status().IgnoreError();
        if (HasPrefix(name, "vmbackup-ff-")) UnlinkFleece(file);
      }
    }
    for (const auto& n : nodes) {
      const std::string name = Str(n, "node-name", 128);
      auto bm = n.is_object() ? n.find("dirty-bitmaps") : n.end();
      if (name.empty() || !n.is_object() || bm == n.end() || !bm->is_array()) continue;
      for (const auto& b : *bm) {
        const std::string bname = Str(b, "name", 1024);
        if (HasPrefix(bname, "vmbackup-tmp-"))
          qmp_->Execute("block-dirty-bitmap-remove", {{"node", name}, {"name", bname}})
              .status()
              .IgnoreError();
      }
    }
    return Status::Ok();
  }

  // A fleecing file of ours: "<dir>/.vmbackup-fleece-<hex>.qcow2".
  static void UnlinkFleece(const std::string& path) {
    const std::string base = path.substr(path.rfind('/') + 1);
    if (!path.empty() && path[0] == '/' && HasPrefix(base, ".vmbackup-fleece-"))
      ::unlink(path.c_str());
  }

  // Finds `d`'s node (a node name, else a device or qdev id), its driver, size and bitmaps.
  Status Resolve(const json& nodes, Disk* d) {
    const std::string& want = d->src->qemu.node;
    const json* found = nullptr;
    for (const auto& n : nodes)
      if (Str(n, "node-name", 128) == want) found = &n;
    if (found == nullptr) {
      VMB_ASSIGN_OR_RETURN(json blocks, qmp_->Execute("query-block"));
      if (blocks.is_array())
        for (const auto& b : blocks) {
          if (Str(b, "device", 128) != want && Str(b, "qdev", 256) != want) continue;
          auto ins = b.find("inserted");
          if (ins == b.end() || !ins->is_object()) continue;
          const std::string node = Str(*ins, "node-name", 128);
          for (const auto& n : nodes)
            if (Str(n, "node-name", 128) == node) found = &n;
        }
    }
    if (found == nullptr)
      return NotFoundError("QEMU at " + qmp_path_ + " has no block node or device '" + want + "'");
    d->node = Str(*found, "node-name", 128);
    d->drv = Str(*found, "drv", 64);
    auto img = found->find("image");
    if (img == found->end() || !img->is_object() || !img->contains("virtual-size") ||
        !(*img)["virtual-size"].is_number_unsigned())
      return DataLossError("QEMU reports no size for node '" + d->node + "'");
    d->size = (*img)["virtual-size"].get<uint64_t>();
    if (d->size > kMaxDiskSize)
      return DataLossError("QEMU reports a size of " + std::to_string(d->size) + " for node '" +
                           d->node + "'");
    if (auto bm = found->find("dirty-bitmaps"); bm != found->end() && bm->is_array()) {
      for (const auto& b : *bm) {
        const std::string name = Str(b, "name", 1024);
        if (!HasPrefix(name, "vmbackup-")) continue;
        d->bitmaps.push_back(name);
        auto flag = [&](const char* k) {
          auto it = b.find(k);
          return it != b.end() && it->is_boolean() && it->get<bool>();
        };
        if (name == d->base && !flag("inconsistent") && !flag("busy")) d->base_ok = true;
      }
    }
    std::string dir = d->src->qemu.scratch_dir;
    if (dir.empty()) {
      const std::string file = Str(*found, "file");
      if (file.empty() || file[0] != '/')
        return FailedPreconditionError("node '" + d->node + "' has no local image file (" + file +
                                       "): give a scratch directory (scratch=DIR)");
      dir = DirName(file);
    }
    VMB_ASSIGN_OR_RETURN(std::string r, RandomHex(8));
    d->fleece_file = dir + "/.vmbackup-fleece-" + r + ".qcow2";
    return Status::Ok();
  }

  // QEMU's NBD server: the host's (QemuDisk::nbd_socket), else ours on a socket named after this
  // QEMU (a killed run's server is found there and reused).
  Status StartNbdServer() {
    const std::string& given = disks_.front().src->qemu.nbd_socket;
    if (!given.empty()) {
      nbd_socket_ = given;
      return Status::Ok();
    }
    nbd_socket_ = own_nbd_socket_;
    auto r = qmp_->Execute("nbd-server-start",
                           {{"addr", {{"type", "unix"}, {"data", {{"path", nbd_socket_}}}}}});
    if (r.ok()) {
      started_nbd_ = true;
      return Status::Ok();
    }
    if (::access(nbd_socket_.c_str(), F_OK) == 0) {
      started_nbd_ = true;  // ours, left by a killed run: reused, and stopped at the end
      return Status::Ok();
    }
    return FailedPreconditionError("QEMU at " + qmp_path_ + " already runs an NBD server (" +
                                   r.status().message() +
                                   "): give its unix socket (nbd=SOCKET, QemuDisk::nbd_socket)");
  }

  // Runs blockdev-create as job `id` and waits for it.
  Status CreateJob(const std::string& id, const json& options) {
    VMB_RETURN_IF_ERROR(
        qmp_->Execute("blockdev-create", {{"job-id", id}, {"options", options}}).status());
    const auto deadline = std::chrono::steady_clock::now() + kJobTimeout;
    while (std::chrono::steady_clock::now() < deadline) {
      VMB_ASSIGN_OR_RETURN(json jobs, qmp_->Execute("query-jobs"));
      const json* job = nullptr;
      if (jobs.is_array())
        for (const auto& j : jobs)
          if (Str(j, "id", 128) == id) job = &j;
      if (job == nullptr) return InternalError("QEMU job " + id + " vanished");
      if (Str(*job, "status", 32) == "concluded") {
        const std::string err = Str(*job, "error");
        qmp_->Execute("job-dismiss", {{"id", id}}).status().IgnoreError();
        if (!err.empty()) return FailedPreconditionError("blockdev-create: " + err);
        return Status::Ok();
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
    CancelJob(id);
    return DeadlineExceededError("QEMU job " + id + " did not finish in time");
  }

  // The fleecing image of `d`: a qcow2 file whose backing is the disk.
  Status CreateFleece(Disk* d) {
    VMB_RETURN_IF_ERROR(
        CreateJob(d->job + "-c1", {{"driver", "file"}, {"filename", d->fleece_file}, {"size", 0}}));
    d->created_file = true;
    VMB_RETURN_IF_ERROR(qmp_->Execute("blockdev-add", {{"driver", "file"},
                                                       {"node-name", d->file_node},
                                                       {"filename", d->fleece_file}})
                            .status());
    d->added_file_node = true;
    VMB_RETURN_IF_ERROR(CreateJob(
        d->job + "-c2", {{"driver", "qcow2"}, {"file", d->file_node}, {"size", d->size}}));
    VMB_RETURN_IF_ERROR(qmp_->Execute("blockdev-add", {{"driver", "qcow2"},
                                                       {"node-name", d->fleece_node},
                                                       {"file", d->file_node},
                                                       {"backing", d->node}})
                            .status());
    d->added_fleece = true;
    return Status::Ok();
  }

  void DeleteExport(const std::string& id) {
    qmp_->Execute("block-export-del", {{"id", id}, {"mode", "hard"}}).status().IgnoreError();
    WaitGone("query-block-exports", id);
  }

  void CancelJob(const std::string& id) {
    if (!qmp_->Execute("block-job-cancel", {{"device", id}, {"force", true}}).ok())
      qmp_->Execute("job-cancel", {{"id", id}}).status().IgnoreError();
    qmp_->Execute("job-dismiss", {{"id", id}}).status().IgnoreError();
    WaitGone("query-jobs", id);
    qmp_->Execute("job-dismiss", {{"id", id}}).status().IgnoreError();
  }

  // Polls `query` until no entry has this id (at most 10 s; a concluded job is dismissed).
  void WaitGone(const char* query, const std::string& id) {
    for (int i = 0; i < 1000; ++i) {
      auto r = qmp_->Execute(query);
      if (!r.ok() || !r->is_array()) return;
      bool present = false;
      for (const auto& e : *r) {
        if (Str(e, "id", 128) != id) continue;
        present = true;
        if (Str(e, "status", 32) == "concluded")
          qmp_->Execute("job-dismiss", {{"id", id}}).status().IgnoreError();
      }
      if (!present) return;
      std::this_thread::sleep_for(milliseconds(10));
    }
  }

  void Teardown() {
    for (auto& d : disks_)
      if (d.pool) d.pool->CloseAll();
    if (qmp_ != nullptr) {
      for (auto& d : disks_) {
        if (d.exported) DeleteExport(d.export_id);
        if (took_) CancelJob(d.job);
        if (d.added_fleece)
          qmp_->Execute("blockdev-del", {{"node-name", d.fleece_node}}).status().IgnoreError();
        if (d.added_file_node)
          qmp_->Execute("blockdev-del", {{"node-name", d.file_node}}).status().IgnoreError();
        if (took_) {
          auto remove = [&](const std::string& name) {
            qmp_->Execute("block-dirty-bitmap-remove", {{"node", d.node}, {"name", name}})
                .status()
                .IgnoreError();
          };
          if (d.base_ok) remove(tmp_bitmap_);
          if (committed_) {
            // One checkpoint per disk: the newest. The parent's and any other run's go.
            for (const auto& b : d.bitmaps)
              if (b != checkpoint_) remove(b);
          } else {
            remove(checkpoint_);
          }
        }
      }
      if (started_nbd_) {
        // Kept when QEMU still serves on it (the next run reuses it); gone with a dead QEMU.
        auto r = qmp_->Execute("nbd-server-stop");
        if (r.ok() || r.status().code() == StatusCode::kUnavailable) ::unlink(nbd_socket_.c_str());
      }
    }
    for (auto& d : disks_)
      if (d.created_file) UnlinkFleece(d.fleece_file);
    qmp_.reset();
    if (lock_fd_ >= 0) {
      ::unlink(lock_path_.c_str());
      ::close(lock_fd_);
    }
  }

  boost::asio::io_context& io_;
  std::string qmp_path_, lock_path_, own_nbd_socket_, nbd_socket_;
  std::unique_ptr<QmpClient> qmp_;
  int lock_fd_ = -1;
  std::string checkpoint_, tmp_bitmap_;
  std::vector<Disk> disks_;
  bool started_nbd_ = false, took_ = false, committed_ = false;
};

}  // namespace

std::unique_ptr<SnapshotProvider> MakeQemuProvider(Runtime& rt) {
  return std::make_unique<QemuProvider>(rt);
}

}  // namespace vmbackup::internal
