// The rbd provider against a real Ceph cluster (issue #12): the one-mon, one-memstore-OSD cluster
// scripts/s3-server.sh starts, with an RBD pool "vmbackup-rbd-test" the tests create through
// librados when it is missing. A thread with its own librbd handle stands in for the guest: it
// writes while backups run. The tests check that every restore equals the image at its snapshot's
// instant, that an incremental reads only what rbd_diff_iterate2 reports changed, which snapshots
// stay on the image after a successful, a cancelled and a base-less backup, and the errors for a
// missing image, pool or configuration.
//
// The cluster's configuration comes from $CEPH_CONF, else $S3_STATE_DIR/rgw/ceph.conf (the
// environment `scripts/s3-server.sh start --tls` prints). Without either every test FAILS saying
// how to start the cluster.
#include <gtest/gtest.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "integration_util.h"

namespace vmbackup::integration {
namespace {

using ::vmbackup::testing::ReadAll;
using ::vmbackup::testing::TempDir;

constexpr char kPool[] = "vmbackup-rbd-test";
constexpr uint64_t kImage = 64 << 20;
constexpr uint64_t kK64 = 64 << 10;

// The cluster's ceph.conf, or "" with a test failure saying how to start the cluster.
std::string CephConf() {
  std::string conf = Env("CEPH_CONF");
  if (conf.empty() && !Env("S3_STATE_DIR").empty()) conf = Env("S3_STATE_DIR") + "/rgw/ceph.conf";
  struct stat st;
  if (conf.empty() || ::stat(conf.c_str(), &st) != 0) {
    ADD_FAILURE() << "no Ceph cluster (CEPH_CONF and S3_STATE_DIR unset, or '" << conf
                  << "' missing): start it first with "
                     "eval \"$(bash scripts/s3-server.sh start --tls)\" (scripts/test.sh does)";
    return "";
  }
  return conf;
}

std::string Pattern(uint64_t len, uint64_t seed) {
  std::string s(len, '\0');
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (size_t i = 0; i < len; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(&s[i], &x, std::min<size_t>(8, len - i));
  }
  return s;
}

// The test's own librados client and an ioctx on the test pool (created when missing).
class Cluster {
 public:
  explicit Cluster(const std::string& conf) : conf_(conf) {
    if (conf.empty()) return;
    int r = rados_create2(&cluster_, "ceph", "client.admin", 0);
    if (r == 0) r = rados_conf_read_file(cluster_, conf.c_str());
    if (r == 0) r = rados_connect(cluster_);
    if (r < 0) {
      ADD_FAILURE() << "cannot connect to the Ceph cluster of " << conf << ": " << strerror(-r);
      return;
    }
    bool created = false;
    if (rados_pool_lookup(cluster_, kPool) < 0) {
      r = rados_pool_create(cluster_, kPool);
      if (r < 0 && r != -EEXIST) {
        ADD_FAILURE() << "rados_pool_create " << kPool << ": " << strerror(-r);
        return;
      }
      created = true;
    }
    r = rados_ioctx_create(cluster_, kPool, &io_);
    if (r < 0) {
      ADD_FAILURE() << "rados_ioctx_create " << kPool << ": " << strerror(-r);
      return;
    }
    if (created && (r = rbd_pool_init(io_, false)) < 0) {
      ADD_FAILURE() << "rbd_pool_init " << kPool << ": " << strerror(-r);
      return;
    }
    ok_ = true;
  }
  ~Cluster() {
    if (io_ != nullptr) rados_ioctx_destroy(io_);
    if (cluster_ != nullptr) rados_shutdown(cluster_);
  }
  bool ok() const { return ok_; }
  const std::string& conf() const { return conf_; }
  rados_ioctx_t io() const { return io_; }

 private:
  std::string conf_;
  rados_t cluster_ = nullptr;
  rados_ioctx_t io_ = nullptr;
  bool ok_ = false;
};

// A test image ("t-<random>") opened at its head, removed with its snapshots at the end. Writes
// are serialized (one handle, several test threads).
class TestImage {
 public:
  TestImage(const Cluster& c, uint64_t size) : c_(c), name_("t-" + RandomHex(12)) {
    int order = 0;
    int r = rbd_create(c.io(), name_.c_str(), size, &order);
    if (r == 0) r = rbd_open(c.io(), name_.c_str(), &image_, nullptr);
    if (r < 0) ADD_FAILURE() << "create image " << name_ << ": " << strerror(-r);
  }
  ~TestImage() {
    if (image_ == nullptr) return;
    for (const auto& s : Snapshots()) rbd_snap_remove(image_, s.c_str());
    rbd_close(image_);
    rbd_remove(c_.io(), name_.c_str());
  }
  bool ok() const { return image_ != nullptr; }
  const std::string& name() const { return name_; }
  void Write(uint64_t off, const std::string& data) {
    std::lock_guard<std::mutex> l(mu_);
    ASSERT_EQ(rbd_write(image_, off, data.size(), data.data()), static_cast<ssize_t>(data.size()));
  }
  void Discard(uint64_t off, uint64_t len) {
    std::lock_guard<std::mutex> l(mu_);
    ASSERT_EQ(rbd_discard(image_, off, len), static_cast<int>(len));
  }
  // The whole image at snapshot `snap` ("" = the head).
  std::string Read(const std::string& snap = "") {
    rbd_image_t img = nullptr;
    int r = rbd_open_read_only(c_.io(), name_.c_str(), &img, snap.empty() ? nullptr : snap.c_str());
    EXPECT_EQ(r, 0) << "open " << name_ << "@" << snap << ": " << strerror(-r);
    if (r < 0) return "";
    uint64_t size = 0;
    rbd_get_size(img, &size);
    std::string s(size, '\0');
    for (uint64_t done = 0; done < size; done += 16 << 20) {
      const uint64_t n = std::min<uint64_t>(size - done, 16 << 20);
      EXPECT_EQ(rbd_read(img, done, n, s.data() + done), static_cast<ssize_t>(n));
    }
    rbd_close(img);
    return s;
  }
  void Snapshot(const std::string& name) { ASSERT_EQ(rbd_snap_create(image_, name.c_str()), 0); }
  void RemoveSnapshot(const std::string& name) {
    ASSERT_EQ(rbd_snap_remove(image_, name.c_str()), 0);
  }
  std::set<std::string> Snapshots() {
    rbd_snap_info_t snaps[64];
    int max = 64;
    const int n = rbd_snap_list(image_, snaps, &max);
    EXPECT_GE(n, 0) << strerror(-n);
    std::set<std::string> out;
    for (int i = 0; i < n; ++i) out.insert(snaps[i].name);
    if (n >= 0) rbd_snap_list_end(snaps);
    return out;
  }
  VolumeSource Volume(const std::string& volume = "disk0") const {
    auto v = ParseVolumeLocation(
        volume, "rbd:" + std::string(kPool) + "/" + name_ + "?conf=" + c_.conf() + "&id=admin");
    EXPECT_TRUE(v.ok()) << v.status().ToString();
    return *v;
  }

 private:
  const Cluster& c_;
  std::string name_;
  rbd_image_t image_ = nullptr;
  std::mutex mu_;
};

struct Backup {
  StatusOr<BackupInfo> info = InternalError("not run");
  Progress last;
};

// Backs up `volumes` of VM "vm1" into `target` (its newest backup is the parent). `during` runs
// once at the first progress report of the transfer phase; it returns false to cancel the job.
Backup BackupVm(const std::shared_ptr<BackupTarget>& target, const std::string& name,
                std::vector<VolumeSource> volumes, std::function<bool()> during = nullptr) {
  BackupSpec spec;
  spec.name = name;
  spec.vm_metadata_json = R"({"name":"vm1"})";
  spec.volumes = std::move(volumes);
  spec.progress_interval_ms = 0;
  auto once = std::make_shared<std::once_flag>();
  auto keep_going = std::make_shared<std::atomic<bool>>(true);
  spec.progress = [=](const Progress& p) {
    if (during && p.phase == Progress::Phase::kTransferring)
      std::call_once(*once, [&] { *keep_going = during(); });
    return keep_going->load();
  };
  Backup out;
  auto job = BackupJob::Create(target, spec);
  if (!job.ok()) {
    out.info = job.status();
    return out;
  }
  Status st = (*job)->Run();
  out.info = st.ok() ? (*job)->result() : StatusOr<BackupInfo>(st);
  out.last = (*job)->progress();
  return out;
}

std::string Restored(const std::shared_ptr<BackupTarget>& target, const std::string& backup,
                     const std::string& volume, const TempDir& dir) {
  const std::string dest = dir.Sub("restored-" + backup + "-" + volume + ".img");
  Status st = RunRestore(target, backup, {VolumeDestination{volume, dest}});
  EXPECT_TRUE(st.ok()) << st.ToString();
  std::string data = ReadAll(dest);
  ::unlink(dest.c_str());
  return data;
}

uint64_t RoundToBlocks(const std::vector<Extent>& extents, uint64_t bs) {
  std::set<uint64_t> blocks;
  for (const auto& e : extents)
    for (uint64_t b = e.offset / bs; b <= (e.offset + e.length - 1) / bs; ++b) blocks.insert(b);
  return blocks.size() * bs;
}

// The stand-in guest: writes 64 KiB chunks stamped with a sequence number n = first, first+1, ...
// to slot n % kSlots of a 1 MiB region, one after the other, until stopped.
class Writer {
 public:
  static constexpr uint64_t kRegion = 48 << 20;
  static constexpr uint64_t kSlots = 16;
  Writer(TestImage& img, uint64_t first) : img_(img), written_(first - 1) {
    thread_ = std::thread([this, first] {
      for (uint64_t n = first; !stop_; ++n) {
        img_.Write(kRegion + (n % kSlots) * kK64, Stamp(n));
        written_ = n;
      }
    });
    while (written_ < first + 20) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~Writer() { Stop(); }
  uint64_t Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    return written_;
  }
  uint64_t written() const { return written_; }
  static std::string Stamp(uint64_t n) {
    std::string s = Pattern(kK64, n);
    std::memcpy(s.data(), &n, sizeof n);
    return s;
  }
  // Checks that `image` holds in the region exactly the writes ..M for the largest stamp M it
  // holds (a prefix of the writer's sequence: one instant), and returns M.
  static uint64_t CheckPrefix(const std::string& image, const std::string& what) {
    uint64_t m = 0;
    std::vector<uint64_t> stamps(kSlots, 0);
    for (uint64_t k = 0; k < kSlots; ++k) {
      std::memcpy(&stamps[k], image.data() + kRegion + k * kK64, sizeof(uint64_t));
      m = std::max(m, stamps[k]);
    }
    EXPECT_GE(m, kSlots) << what;
    for (uint64_t k = 0; k < kSlots; ++k) {
      uint64_t want = m - ((m - k) % kSlots);  // the last n <= m with n % kSlots == k
      EXPECT_EQ(stamps[k], want) << what << ": slot " << k << " of a snapshot at write " << m;
      EXPECT_TRUE(image.compare(kRegion + k * kK64, kK64, Stamp(want)) == 0)
          << what << ": slot " << k << " is not write " << want;
    }
    return m;
  }

 private:
  TestImage& img_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> written_{0};
  std::thread thread_;
};

TEST(RbdProviderTest, FullThenIncrementalWhileWritingRestoreTheirSnapshots) {
  Cluster c(CephConf());
  ASSERT_TRUE(c.ok());
  TestImage img(c, kImage);
  ASSERT_TRUE(img.ok());
  TempDir dir, tdir;
  // 8 MiB of data at scattered offsets; the rest of the image is never written.
  for (uint64_t off : {0ull, 5ull << 20, 20ull << 20, 60ull << 20})
    img.Write(off, Pattern(2 << 20, off + 1));
  auto target = OpenTarget(tdir.path());
  ASSERT_TRUE(target.ok()) << target.status().ToString();

  // How each restore is checked: the snapshot a backup took stays on the image until the next
  // backup's Commit, so right after each backup the test reads the image at that snapshot (the
  // record's checkpoint) and compares the restore with it. Independently of librbd, the
  // writer's region of the restore must be one prefix of its write sequence (one instant), and
  // the writer must have gone on writing after it (so the backup did not read the live image).
  Writer w1(img, 1);
  Backup b1 = BackupVm(*target, "b1", {img.Volume()});
  const uint64_t after1 = w1.Stop();
  ASSERT_TRUE(b1.info.ok()) << b1.info.status().ToString();
  const VolumeBackupInfo& v1 = b1.info->volumes[0];
  EXPECT_EQ(v1.provider, "rbd");
  EXPECT_EQ(v1.snapshot, "rbd");
  EXPECT_EQ(v1.consistency, "crash-consistent");
  EXPECT_EQ(v1.checkpoint.rfind("vmbackup-", 0), 0u);
  EXPECT_EQ(v1.checkpoint.size(), 9u + 16u);
  EXPECT_EQ(v1.changed_bytes, -1);
  EXPECT_EQ(v1.size, kImage);
  EXPECT_EQ(b1.info->parent, "");
  const std::string at1 = img.Read(v1.checkpoint);
  EXPECT_EQ(img.Snapshots(), std::set<std::string>{v1.checkpoint});
  const std::string r1 = Restored(*target, "b1", "disk0", dir);
  EXPECT_TRUE(r1 == at1) << "b1 is not the image at its snapshot";
  const uint64_t m1 = Writer::CheckPrefix(r1, "b1");
  EXPECT_GT(after1, m1) << "the writer did not write during the backup";
  // Holes stay holes: only the data written was read (8 MiB + the writer's 1 MiB; librbd reports
  // each 4 MiB object's data from the object's start, so the write at 5 MiB counts from 4 MiB).
  EXPECT_LE(b1.last.bytes_read, 10u << 20);

  // Between the backups: 256 KiB rewritten at 5 MiB, 1 MiB discarded at 21 MiB; then b2 runs
  // while the writer writes again.
  img.Write(5 << 20, Pattern(256 << 10, 77));
  img.Discard(21 << 20, 1 << 20);
  Writer w2(img, after1 + 1);
  Backup b2 = BackupVm(*target, "b2", {img.Volume()});
  const uint64_t after2 = w2.Stop();
  ASSERT_TRUE(b2.info.ok()) << b2.info.status().ToString();
  const VolumeBackupInfo& v2 = b2.info->volumes[0];
  EXPECT_EQ(b2.info->parent, "b1");
  EXPECT_NE(v2.checkpoint, v1.checkpoint);
  EXPECT_EQ(v2.provider, "rbd");
  // Changed since b1's snapshot: the rewrite, the discard and the writer's region, at most.
  const std::vector<Extent> changed = {
      {5 << 20, 256 << 10}, {21 << 20, 1 << 20}, {Writer::kRegion, Writer::kSlots * kK64}};
  const uint64_t bound = RoundToBlocks(changed, v2.block_size);
  EXPECT_GE(v2.changed_bytes, static_cast<int64_t>(256 << 10)) << "the rewrite is missing";
  EXPECT_LE(v2.changed_bytes, static_cast<int64_t>(bound));
  EXPECT_LE(b2.last.bytes_read, bound);
  EXPECT_LT(b2.last.bytes_read, kImage / 16);
  const std::string at2 = img.Read(v2.checkpoint);
  // One checkpoint per image after a successful backup: the newest.
  EXPECT_EQ(img.Snapshots(), std::set<std::string>{v2.checkpoint});
  const std::string r2 = Restored(*target, "b2", "disk0", dir);
  EXPECT_TRUE(r2 == at2) << "b2 is not the image at its snapshot";
  EXPECT_TRUE(r2.compare(21 << 20, 1 << 20, std::string(1 << 20, '\0')) == 0)
      << "the discarded range is not zero in b2";
  const uint64_t m2 = Writer::CheckPrefix(r2, "b2");
  EXPECT_GT(m2, after1) << "b2 does not hold the writes made after b1";
  EXPECT_GT(after2, m2) << "the writer did not write during the backup";
  EXPECT_TRUE(Restored(*target, "b1", "disk0", dir) == at1) << "b1 changed after b2";
  ReportPath("b1 read " + std::to_string(b1.last.bytes_read) + " bytes at write " +
             std::to_string(m1) + " of " + std::to_string(after1) + "; b2 changed " +
             std::to_string(v2.changed_bytes) + " (bound " + std::to_string(bound) + "), read " +
             std::to_string(b2.last.bytes_read) + " at write " + std::to_string(m2) + " of " +
             std::to_string(after2));
}

TEST(RbdProviderTest, TwoImagesInOneBackupAndARestoreIntoANewImage) {
  Cluster c(CephConf());
  ASSERT_TRUE(c.ok());
  TestImage a(c, 16 << 20), b(c, 24 << 20);
  ASSERT_TRUE(a.ok() && b.ok());
  TempDir dir, tdir;
  a.Write(1 << 20, Pattern(3 << 20, 1));
  b.Write(0, Pattern(1 << 20, 2));
  b.Write(23 << 20, Pattern(512 << 10, 3));
  auto target = OpenTarget(tdir.path());
  ASSERT_TRUE(target.ok());
  Backup bk = BackupVm(*target, "two", {a.Volume("disk0"), b.Volume("disk1")});
  ASSERT_TRUE(bk.info.ok()) << bk.info.status().ToString();
  ASSERT_EQ(bk.info->volumes.size(), 2u);
  // One provider for both (same conf and user): one checkpoint name for the backup's instant.
  EXPECT_EQ(bk.info->volumes[0].checkpoint, bk.info->volumes[1].checkpoint);
  const std::string want_a = a.Read(), want_b = b.Read();
  EXPECT_TRUE(Restored(*target, "two", "disk0", dir) == want_a);

  // Restore disk1 to a file, then into a new image (sparse: all-zero chunks are not written).
  const std::string file = dir.Sub("disk1.img");
  ASSERT_TRUE(RunRestore(*target, "two", {VolumeDestination{"disk1", file}}).ok());
  const std::string data = ReadAll(file);
  ASSERT_EQ(data.size(), want_b.size());
  TestImage copy(c, data.size());
  ASSERT_TRUE(copy.ok());
  const std::string zero(1 << 20, '\0');
  for (uint64_t off = 0; off < data.size(); off += zero.size()) {
    const uint64_t n = std::min<uint64_t>(zero.size(), data.size() - off);
    if (data.compare(off, n, zero, 0, n) != 0) copy.Write(off, data.substr(off, n));
  }
  EXPECT_TRUE(copy.Read() == want_b) << "the new image is not disk1";
}

TEST(RbdProviderTest, SnapshotsLeftAfterSuccessfulCancelledAndBaselessBackups) {
  Cluster c(CephConf());
  ASSERT_TRUE(c.ok());
  TestImage img(c, 32 << 20);
  ASSERT_TRUE(img.ok());
  TempDir dir, tdir;
  img.Write(0, Pattern(8 << 20, 9));
  img.Snapshot("users-own");  // not ours: never touched
  auto target = OpenTarget(tdir.path());
  ASSERT_TRUE(target.ok());
  Backup b1 = BackupVm(*target, "b1", {img.Volume()});
  ASSERT_TRUE(b1.info.ok()) << b1.info.status().ToString();
  const std::string cp1 = b1.info->volumes[0].checkpoint;
  const std::set<std::string> after_b1 = {"users-own", cp1};
  EXPECT_EQ(img.Snapshots(), after_b1);

  // What killed runs could leave: a temporary snapshot (removed by any run's Prepare) and a
  // checkpoint that was never committed (removed by the next successful backup only).
  img.Snapshot("vmbackup-tmp-leftover");
  img.Snapshot("vmbackup-00000000deadbeef");
  std::set<std::string> before = after_b1;
  before.insert("vmbackup-00000000deadbeef");

  // Cancelled mid-transfer: no record, the new snapshot is gone, the base is kept.
  img.Write(1 << 20, Pattern(kK64, 10));
  Backup cancelled = BackupVm(*target, "cancelled", {img.Volume()}, [&] {
    EXPECT_EQ(img.Snapshots().size(), 4u) << "the new snapshot exists while the backup reads";
    return false;
  });
  ASSERT_FALSE(cancelled.info.ok());
  EXPECT_EQ(cancelled.info.status().code(), StatusCode::kCancelled)
      << cancelled.info.status().ToString();
  EXPECT_EQ(img.Snapshots(), before);

  // The next backup is an incremental from b1's snapshot all the same.
  Backup b2 = BackupVm(*target, "b2", {img.Volume()});
  ASSERT_TRUE(b2.info.ok()) << b2.info.status().ToString();
  const VolumeBackupInfo& v2 = b2.info->volumes[0];
  EXPECT_EQ(b2.info->parent, "b1");
  EXPECT_EQ(v2.changed_bytes, static_cast<int64_t>(kK64));
  EXPECT_EQ(img.Snapshots(), (std::set<std::string>{"users-own", v2.checkpoint}));

  // Its checkpoint removed behind vmbackup's back: the next backup reads every data block.
  img.RemoveSnapshot(v2.checkpoint);
  img.Write(2 << 20, Pattern(kK64, 11));
  Backup b3 = BackupVm(*target, "b3", {img.Volume()});
  ASSERT_TRUE(b3.info.ok()) << b3.info.status().ToString();
  const VolumeBackupInfo& v3 = b3.info->volumes[0];
  EXPECT_EQ(v3.changed_bytes, -1);
  EXPECT_GE(b3.last.bytes_read, 8u << 20);
  EXPECT_TRUE(Restored(*target, "b3", "disk0", dir) == img.Read(v3.checkpoint));
  EXPECT_EQ(img.Snapshots(), (std::set<std::string>{"users-own", v3.checkpoint}));
}

TEST(RbdProviderTest, MissingImageOrPoolAndBadConfigurationAreClearErrors) {
  const std::string conf = CephConf();
  ASSERT_FALSE(conf.empty());
  TempDir tdir;
  auto target = OpenTarget(tdir.path());
  ASSERT_TRUE(target.ok());
  auto run = [&](const std::string& location) {
    auto v = ParseVolumeLocation("disk0", location);
    EXPECT_TRUE(v.ok()) << v.status().ToString();
    Backup b = BackupVm(*target, "", {*v});
    EXPECT_FALSE(b.info.ok());
    ShowStatus(b.info);
    return b.info.status();
  };
  // The default configuration is $CEPH_CONF.
  const std::string saved = Env("CEPH_CONF");
  ::setenv("CEPH_CONF", conf.c_str(), 1);
  Status st = run("rbd:" + std::string(kPool) + "/no-such-image");
  if (saved.empty()) ::unsetenv("CEPH_CONF");
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_NE(st.message().find("rbd image vmbackup-rbd-test/no-such-image does not exist"),
            std::string::npos)
      << st.ToString();

  st = run("rbd:no-such-pool/img?conf=" + conf);
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  EXPECT_NE(st.message().find("rbd pool no-such-pool does not exist"), std::string::npos)
      << st.ToString();

  st = run("rbd:" + std::string(kPool) + "/img?conf=/nonexistent/ceph.conf");
  EXPECT_NE(st.code(), StatusCode::kOk);
  EXPECT_NE(st.message().find("/nonexistent/ceph.conf"), std::string::npos) << st.ToString();

  // A configuration naming a monitor nobody runs: kUnavailable within the mount timeout.
  TempDir cdir;
  const std::string bad = cdir.Sub("ceph.conf");
  ::vmbackup::testing::WriteAll(bad,
                                "[global]\nmon host = v2:127.0.0.1:9\nauth client required = none\n"
                                "client mount timeout = 2\nms bind msgr1 = false\n");
  const auto t0 = std::chrono::steady_clock::now();
  st = run("rbd:" + std::string(kPool) + "/img?conf=" + bad);
  EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.ToString();
  EXPECT_NE(st.message().find(bad), std::string::npos) << st.ToString();
  EXPECT_LT(SecondsSince(t0), 30);
}

}  // namespace
}  // namespace vmbackup::integration
