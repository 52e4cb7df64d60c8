// The rbd provider: point-in-time views of Ceph RBD images and their changed extents, through
// librbd's C API (docs/providers/rbd.md).
//
// Prepare: connect to the cluster (one rados client per provider: every volume of one conf file
//   and cephx user), open an ioctx per pool and each image, check whether each volume's base
//   checkpoint (an RBD snapshot "vmbackup-" + 16 hex) still exists, and remove what nothing but a
//   killed run can have left ("vmbackup-tmp-*" snapshots; this design creates none).
// Take (inside the freeze window): one snapshot per image, all named with this backup's new
//   checkpoint, one image after the other. RBD group snapshots would give one instant for several
//   images, but they need a persistent group membership (an image can be in one group only), and
//   Ceph 16's C API cannot diff from a group snapshot (rbd_diff_iterate2 resolves the base name in
//   the user snapshot namespace only), so they could not serve as checkpoints.
// Open: each image opened read-only at the new snapshot; its data extents and, when the base
//   exists, the extents changed since it (rbd_diff_iterate2: data written and data discarded).
// Teardown: the read-only handles first; without Commit the new snapshots go (the base stays, the
//   images are as found); after Commit every other "vmbackup-*" snapshot of each image goes (one
//   checkpoint kept per image: the newest).
//
// Everything librbd reports (sizes, extents, snapshot lists) is bounded and validated.
// Thread-safety: the provider is driven by one thread; RbdView's const methods are thread-safe
// (librbd image handles serve concurrent synchronous reads).
#include <rados/librados.h>
#include <rbd/librbd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <utility>

#include "core/errors.h"
#include "volume/provider.h"

namespace vmbackup::internal {
namespace {

constexpr uint64_t kMaxImageSize = uint64_t{1} << 50;  // 1 PiB
constexpr size_t kMaxExtents = 16u << 20;
constexpr size_t kMaxRead = 64u << 20;  // per librbd call
constexpr int kMaxSnapshots = 1 << 16;
constexpr size_t kMaxSnapName = 4096;
constexpr char kPrefix[] = "vmbackup-";
constexpr char kTmpPrefix[] = "vmbackup-tmp-";

bool HasPrefix(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

std::string ErrText(int r) { return std::strerror(r < 0 ? -r : r); }

// The librados / librbd error `r` (negative errno) as a Status naming `what`.
Status RbdError(int r, const std::string& what) { return ErrnoToStatus(r < 0 ? -r : r, what); }

// Sorts `v`, merges overlapping and adjacent extents.
void Normalize(std::vector<Extent>* v) {
  std::sort(v->begin(), v->end(),
            [](const Extent& a, const Extent& b) { return a.offset < b.offset; });
  std::vector<Extent> out;
  out.reserve(v->size());
  for (const auto& e : *v) {
    if (!out.empty() && e.offset <= out.back().offset + out.back().length) {
      out.back().length =
          std::max(out.back().offset + out.back().length, e.offset + e.length) - out.back().offset;
    } else {
      out.push_back(e);
    }
  }
  *v = std::move(out);
}

// The extents rbd_diff_iterate2 reports for `image` over [0, size) since `from` (nullptr: the
// allocated extents), clipped to the image, sorted and merged. `only_existing`: keep the extents
// holding data only (else discarded ranges count too).
Status DiffExtents(rbd_image_t image, const char* from, uint64_t size, bool only_existing,
                   const std::string& what, std::vector<Extent>* out) {
  struct Acc {
    uint64_t size;
    bool only_existing;
    std::vector<Extent>* out;
    bool too_many = false;
    bool failed = false;
  } acc{size, only_existing, out};
  auto cb = [](uint64_t off, size_t len, int exists, void* arg) -> int {
    auto* a = static_cast<Acc*>(arg);
    try {
      if (a->only_existing && !exists) return 0;
      if (off >= a->size || len == 0) return 0;
      const uint64_t n = std::min<uint64_t>(len, a->size - off);
      if (!a->out->empty() && a->out->back().offset + a->out->back().length == off)
        a->out->back().length += n;
      else
        a->out->push_back({off, n});
      if (a->out->size() > kMaxExtents) {
        a->too_many = true;
        return -EFBIG;
      }
      return 0;
    } catch (...) {
      a->failed = true;
      return -ENOMEM;
    }
  };
  const int r = rbd_diff_iterate2(image, from, 0, size, 1, 0, cb, &acc);
  if (acc.too_many) return DataLossError("librbd reported more than 16 M extents for " + what);
  if (acc.failed) return ResourceExhaustedError("out of memory listing the extents of " + what);
  if (r < 0) return RbdError(r, "rbd_diff_iterate2 (" + what + ")");
  Normalize(out);
  return Status::Ok();
}

// A read-only image handle at a snapshot, closed by whichever of the provider and the view lets
// go of it last, or at once by Close() (the provider's teardown); reads after Close fail.
class SnapHandle {
 public:
  explicit SnapHandle(rbd_image_t image) : image_(image) {}
  ~SnapHandle() { Close(); }
  SnapHandle(const SnapHandle&) = delete;
  SnapHandle& operator=(const SnapHandle&) = delete;

  void Close() {
    std::unique_lock<std::shared_mutex> l(mu_);
    if (image_ != nullptr) rbd_close(image_);
    image_ = nullptr;
  }

  // rbd_read of [offset, offset+length); returns what librbd returned (bytes or -errno).
  ssize_t Read(uint64_t offset, size_t length, char* buf) const {
    std::shared_lock<std::shared_mutex> l(mu_);
    if (image_ == nullptr) return -EBADF;
    return rbd_read(image_, offset, length, buf);
  }

 private:
  mutable std::shared_mutex mu_;
  rbd_image_t image_;
};

class RbdView final : public VolumeView {
 public:
  RbdView(std::shared_ptr<SnapHandle> handle, std::string what, uint64_t size,
          std::vector<Extent> data)
      : handle_(std::move(handle)), what_(std::move(what)), size_(size), data_(std::move(data)) {}

  uint64_t size() const override { return size_; }

  StatusOr<std::vector<Extent>> DataExtents(uint64_t offset, uint64_t length) const override {
    std::vector<Extent> out;
    const uint64_t end = offset > size_ ? offset : offset + std::min(length, size_ - offset);
    auto it = std::upper_bound(data_.begin(), data_.end(), offset,
                               [](uint64_t o, const Extent& e) { return o < e.offset; });
    if (it != data_.begin()) --it;
    for (; it != data_.end() && it->offset < end; ++it) {
      const uint64_t a = std::max(it->offset, offset), b = std::min(it->offset + it->length, end);
      if (a < b) out.push_back({a, b - a});
    }
    return out;
  }

  StatusOr<size_t> ReadAt(uint64_t offset, void* buf, size_t length) const override {
    if (offset > size_) return OutOfRangeError("read past the end of " + what_);
    const size_t want = static_cast<size_t>(std::min<uint64_t>(length, size_ - offset));
    size_t got = 0;
    while (got < want) {
      const size_t n = std::min(want - got, kMaxRead);
      const ssize_t r = handle_->Read(offset + got, n, static_cast<char*>(buf) + got);
      if (r == -EBADF) return FailedPreconditionError(what_ + " was closed");
      if (r < 0)
        return RbdError(static_cast<int>(r),
                        "read " + what_ + " at offset " + std::to_string(offset + got));
      if (static_cast<size_t>(r) != n)
        return DataLossError(what_ + " returned " + std::to_string(r) + " of " + std::to_string(n) +
                             " bytes at offset " + std::to_string(offset + got) +
                             " (the snapshot shrank?)");
      got += n;
    }
    return got;
  }

 private:
  std::shared_ptr<SnapHandle> handle_;
  const std::string what_;
  const uint64_t size_;
  const std::vector<Extent> data_;  // sorted, merged, inside [0, size_)
};

// The user snapshots of `image`: name → (id, size). Bounded in count and name length.
struct SnapInfo {
  uint64_t id = 0;
  uint64_t size = 0;
};
StatusOr<std::map<std::string, SnapInfo>> ListSnaps(rbd_image_t image, const std::string& what) {
  int max = 64;
  for (int attempt = 0; attempt < 8; ++attempt) {
    std::vector<rbd_snap_info_t> snaps(static_cast<size_t>(max) + 1);
    int n = max;
    const int r = rbd_snap_list(image, snaps.data(), &n);
    if (r == -ERANGE) {
      if (n <= max || n > kMaxSnapshots)
        return DataLossError(what + " reports " + std::to_string(n) + " snapshots");
      max = n + 16;
      continue;
    }
    if (r < 0) return RbdError(r, "list the snapshots of " + what);
    std::map<std::string, SnapInfo> out;
    const int count = std::min(r, max);
    for (int i = 0; i < count; ++i) {
      const char* name = snaps[i].name;
      if (name == nullptr) continue;
      const size_t len = strnlen(name, kMaxSnapName + 1);
      if (len > kMaxSnapName) continue;
      out[std::string(name, len)] = {snaps[i].id, snaps[i].size};
    }
    rbd_snap_list_end(snaps.data());
    return out;
  }
  return UnavailableError("the snapshot list of " + what + " kept growing");
}

struct Image {
  const VolumeSource* src = nullptr;
  std::string what;  // "rbd image POOL/IMAGE"
  std::string base;  // the parent's checkpoint ("" none)
  bool base_ok = false;
  uint64_t base_size = 0;
  rados_ioctx_t io = nullptr;   // borrowed from the provider's pools_
  rbd_image_t image = nullptr;  // at the head: snapshots are created and removed through it
  bool created = false;         // Take made the new snapshot
  std::shared_ptr<SnapHandle> snap;
};

class RbdProvider final : public SnapshotProvider {
 public:
  RbdProvider() = default;
  ~RbdProvider() override { Teardown(); }

  Status Prepare(const std::vector<ProviderVolume>& volumes, const std::string&) override {
    if (volumes.empty()) return InvalidArgumentError("rbd provider: no volumes");
    const RbdImage& first = volumes.front().source->rbd;
    conf_ = first.conf;
    if (conf_.empty()) {
      const char* env = std::getenv("CEPH_CONF");
      conf_ = env != nullptr && *env != '\0' ? env : "/etc/ceph/ceph.conf";
    }
    const std::string id = first.client_id.empty() ? "admin" : first.client_id;
    VMB_RETURN_IF_ERROR(Connect(id));
    VMB_ASSIGN_OR_RETURN(checkpoint_, NewCheckpointName());

    for (const auto& pv : volumes)
      VMB_RETURN_IF_ERROR(AddImage(pv).WithContext("volume '" + pv.source->name + "'"));
    return Status::Ok();
  }

  Status Take() override {
    for (auto& m : images_) {
      const int r = rbd_snap_create(m.image, checkpoint_.c_str());
      if (r < 0) return RbdError(r, "snapshot " + m.what + "@" + checkpoint_);
      m.created = true;
    }
    return Status::Ok();
  }

  StatusOr<std::vector<TakenVolume>> Open() override {
    std::vector<TakenVolume> out;
    for (auto& m : images_) {
      TakenVolume t;
      VMB_RETURN_IF_ERROR(OpenOne(m, &t).WithContext("volume '" + m.src->name + "'"));
      out.push_back(std::move(t));
    }
    return out;
  }

  void Commit() override {
    committed_ = true;
    for (auto& m : images_) {
      if (!m.created) continue;
      auto snaps = ListSnaps(m.image, m.what);
      if (!snaps.ok()) continue;
      for (const auto& [name, info] : *snaps)
        if (HasPrefix(name, kPrefix) && name != checkpoint_) rbd_snap_remove(m.image, name.c_str());
    }
  }

 private:
  Status Connect(const std::string& id) {
    const std::string where = "Ceph cluster of " + conf_ + " as client." + id;
    int r = rados_create2(&cluster_, "ceph", ("client." + id).c_str(), 0);
    if (r < 0) {
      cluster_ = nullptr;
      return RbdError(r, "rados_create2 (" + where + ")");
    }
    r = rados_conf_read_file(cluster_, conf_.c_str());
    if (r < 0) return RbdError(r, "cannot read the Ceph configuration " + conf_);
    // Without a reachable monitor librados waits client_mount_timeout: its default of 300 s
    // becomes 60 s (a value the conf sets is kept).
    char buf[32] = {0};
    if (rados_conf_get(cluster_, "client_mount_timeout", buf, sizeof buf - 1) == 0 &&
        std::strtod(buf, nullptr) == 300)
      rados_conf_set(cluster_, "client_mount_timeout", "60");
    // Without op timeouts (librados' default: 0, wait for ever) a full or stuck cluster hangs the
    // backup, inside the freeze window for the snapshots: each OSD and monitor operation fails
    // after 30 s instead (a value the conf sets is kept).
    for (const char* opt : {"rados_osd_op_timeout", "rados_mon_op_timeout"}) {
      std::memset(buf, 0, sizeof buf);
      if (rados_conf_get(cluster_, opt, buf, sizeof buf - 1) == 0 && std::strtod(buf, nullptr) == 0)
        rados_conf_set(cluster_, opt, "30");
    }
    r = rados_connect(cluster_);
    if (r < 0) {
      rados_shutdown(cluster_);
      cluster_ = nullptr;
      return UnavailableError("cannot connect to the " + where + ": " + ErrText(r));
    }
    return Status::Ok();
  }

  // Opens the image of `pv`, checks its base checkpoint, removes our temporary snapshots.
  Status AddImage(const ProviderVolume& pv) {
    const RbdImage& r = pv.source->rbd;
    Image im;
    im.src = pv.source;
    im.base = pv.base_checkpoint;
    im.what = "rbd image " + r.pool + "/" + r.image;
    if (r.pool.empty() || r.image.empty()) return InvalidArgumentError("empty rbd pool or image");
    for (const auto& other : images_)
      if (other.src->rbd.pool == r.pool && other.src->rbd.image == r.image)
        return InvalidArgumentError("volume '" + other.src->name + "' is the same " + im.what);
    VMB_ASSIGN_OR_RETURN(im.io, Pool(r.pool));
    const int rc = rbd_open(im.io, r.image.c_str(), &im.image, nullptr);
    if (rc == -ENOENT) return NotFoundError(im.what + " does not exist");
    if (rc < 0) return RbdError(rc, "open " + im.what);
    images_.push_back(std::move(im));
    Image& m = images_.back();
    VMB_ASSIGN_OR_RETURN(auto snaps, ListSnaps(m.image, m.what));
    if (!m.base.empty()) {
      auto it = snaps.find(m.base);
      if (it != snaps.end()) {
        m.base_ok = true;
        m.base_size = it->second.size;
      }
    }
    // Only what no live run can own: temporary snapshots (this design creates none).
    for (const auto& [name, info] : snaps)
      if (HasPrefix(name, kTmpPrefix)) rbd_snap_remove(m.image, name.c_str());
    return Status::Ok();
  }

  StatusOr<rados_ioctx_t> Pool(const std::string& pool) {
    auto it = pools_.find(pool);
    if (it != pools_.end()) return it->second;
    rados_ioctx_t io = nullptr;
    const int r = rados_ioctx_create(cluster_, pool.c_str(), &io);
    if (r == -ENOENT) return NotFoundError("rbd pool " + pool + " does not exist");
    if (r < 0) return RbdError(r, "open rbd pool " + pool);
    pools_.emplace(pool, io);
    return io;
  }

  Status OpenOne(Image& m, TakenVolume* t) {
    const RbdImage& r = m.src->rbd;
    rbd_image_t img = nullptr;
    int rc = rbd_open_read_only(m.io, r.image.c_str(), &img, checkpoint_.c_str());
    if (rc < 0) return RbdError(rc, "open " + m.what + "@" + checkpoint_);
    m.snap = std::make_shared<SnapHandle>(img);
    uint64_t size = 0;
    rc = rbd_get_size(img, &size);
    if (rc < 0) return RbdError(rc, "size of " + m.what + "@" + checkpoint_);
    if (size > kMaxImageSize)
      return DataLossError(m.what + " reports a size of " + std::to_string(size));
    std::vector<Extent> data;
    VMB_RETURN_IF_ERROR(DiffExtents(img, nullptr, size, true, m.what, &data));
    if (m.base_ok) {
      VMB_RETURN_IF_ERROR(
          DiffExtents(img, m.base.c_str(), size, false, m.what + " since " + m.base, &t->changed));
      // A resized image: whatever lies past the base's end is new.
      if (m.base_size < size) {
        t->changed.push_back({m.base_size, size - m.base_size});
        Normalize(&t->changed);
      }
      t->has_changes = true;
    }
    t->view = std::make_unique<RbdView>(m.snap, m.what + "@" + checkpoint_, size, std::move(data));
    t->snapshot = "rbd";
    t->point_in_time = true;
    t->checkpoint = checkpoint_;
    return Status::Ok();
  }

  void Teardown() {
    for (auto& m : images_)
      if (m.snap) m.snap->Close();
    for (auto& m : images_) {
      if (m.created && !committed_) rbd_snap_remove(m.image, checkpoint_.c_str());
      m.snap.reset();
      if (m.image != nullptr) rbd_close(m.image);
      m.image = nullptr;
    }
    for (auto& [name, io] : pools_) rados_ioctx_destroy(io);
    pools_.clear();
    if (cluster_ != nullptr) rados_shutdown(cluster_);
    cluster_ = nullptr;
  }

  std::string conf_;
  std::string checkpoint_;
  rados_t cluster_ = nullptr;
  bool committed_ = false;
  std::map<std::string, rados_ioctx_t> pools_;
  std::vector<Image> images_;
};

}  // namespace

std::unique_ptr<SnapshotProvider> MakeRbdProvider() { return std::make_unique<RbdProvider>(); }

}  // namespace vmbackup::internal
