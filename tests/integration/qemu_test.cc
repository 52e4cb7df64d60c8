// The qemu provider against a real QEMU (issue #12): qemu-system-x86_64 -machine none (no KVM, no
// guest) with qcow2 disks attached by -blockdev, QMP on unix sockets, and a writable NBD export of
// each disk that stands in for the guest (it attaches before any backup starts: a later user would
// conflict with the copy-before-write filter). The tests write through it before, during and
// between backups and check that every restore equals the disk at the instant of its backup, that
// an incremental reads only what the dirty bitmap says, that two disks are taken at one instant,
// and that a killed QEMU or a killed backing-up process leaves nothing behind that matters.
//
// Needs qemu-system-x86 and qemu-utils (scripts/test.sh installs them); without them the tests
// FAIL saying so.
#include <gtest/gtest.h>
#include <libnbd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>

#include "integration_util.h"

namespace vmbackup::integration {
namespace {

using json = nlohmann::json;
using ::vmbackup::testing::ReadAll;
using ::vmbackup::testing::TempDir;

constexpr uint64_t kDisk = 64 << 20;
constexpr uint64_t kK64 = 64 << 10;

// A minimal blocking QMP client for the test's own monitor (independent of the library's).
class TestQmp {
 public:
  bool Connect(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return false;
    ReadLine();  // greeting
    return Cmd("qmp_capabilities").contains("return");
  }
  ~TestQmp() {
    if (fd_ >= 0) ::close(fd_);
  }
  // The reply object ({"return": ...} or {"error": ...}); events are skipped.
  json Cmd(const std::string& name, const json& args = nullptr) {
    json req = {{"execute", name}};
    if (!args.is_null()) req["arguments"] = args;
    const std::string line = req.dump() + "\n";
    if (::write(fd_, line.data(), line.size()) != static_cast<ssize_t>(line.size())) return {};
    for (;;) {
      std::string l = ReadLine();
      if (l.empty()) return {};
      json r = json::parse(l, nullptr, false);
      if (r.is_object() && (r.contains("return") || r.contains("error"))) return r;
    }
  }
  json Ok(const std::string& name, const json& args = nullptr) {
    json r = Cmd(name, args);
    EXPECT_TRUE(r.contains("return")) << name << ": " << r.dump();
    return r.contains("return") ? r["return"] : json();
  }

 private:
  std::string ReadLine() {
    std::string l;
    char c;
    while (::read(fd_, &c, 1) == 1) {
      if (c == '\n') return l;
      l += c;
    }
    return l;
  }
  int fd_ = -1;
};

// libnbd client of a writable export: the stand-in guest.
class Guest {
 public:
  Guest(const std::string& socket, const std::string& name) {
    h_ = nbd_create();
    nbd_set_export_name(h_, name.c_str());
    ok_ = nbd_connect_unix(h_, socket.c_str()) == 0;
  }
  ~Guest() { nbd_close(h_); }
  bool ok() const { return ok_; }
  void Write(uint64_t off, const std::string& data) {
    std::lock_guard<std::mutex> l(mu_);
    ASSERT_EQ(nbd_pwrite(h_, data.data(), data.size(), off, 0), 0) << nbd_get_error();
  }
  std::string Read(uint64_t off, uint64_t len) {
    std::lock_guard<std::mutex> l(mu_);
    std::string s(len, '\0');
    for (uint64_t done = 0; done < len; done += 16 << 20) {
      const uint64_t n = std::min<uint64_t>(len - done, 16 << 20);
      EXPECT_EQ(nbd_pread(h_, s.data() + done, n, off + done, 0), 0) << nbd_get_error();
    }
    return s;
  }

 private:
  std::mutex mu_;
  nbd_handle* h_ = nullptr;
  bool ok_ = false;
};

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

// A QEMU process with `disks` qcow2 disks (nodes disk0, disk1, ...), two QMP monitors (the
// provider's and the test's), and, with `guest_nbd`, a writable NBD export per disk ("guest0",
// ...) on the test's NBD server. Without it QEMU runs no NBD server (the provider starts its own)
// and the test writes with HMP qemu-io between backups (Fill).
class Qemu {
 public:
  Qemu(const TempDir& dir, int disks, bool guest_nbd = true) : dir_(dir.path()) {
    std::string cmd = "set -e; cd " + Quote(dir_) + "; ";
    std::string blockdevs;
    for (int i = 0; i < disks; ++i) {
      const std::string f = dir_ + "/disk" + std::to_string(i) + ".qcow2";
      cmd += "qemu-img create -q -f qcow2 " + Quote(f) + " " + std::to_string(kDisk) + "; ";
      blockdevs += " -blockdev driver=file,filename=" + f + ",node-name=file" + std::to_string(i) +
                   " -blockdev driver=qcow2,file=file" + std::to_string(i) + ",node-name=disk" +
                   std::to_string(i);
    }
    cmd += "qemu-system-x86_64 -machine none -nodefaults -display none -daemonize -pidfile " +
           Quote(dir_ + "/qemu.pid") + " -qmp unix:" + qmp() +
           ",server=on,wait=off -qmp unix:" + dir_ + "/test-qmp.sock,server=on,wait=off" +
           blockdevs + " 2>&1";
    int rc = 0;
    std::string out = Shell(cmd, &rc);
    if (rc != 0) {
      ADD_FAILURE() << "cannot start QEMU (scripts/test.sh installs qemu-system-x86 and "
                       "qemu-utils): "
                    << out;
      return;
    }
    pid_ = std::atoi(ReadAll(dir_ + "/qemu.pid").c_str());
    if (!test_qmp_.Connect(dir_ + "/test-qmp.sock")) {
      ADD_FAILURE() << "cannot connect to QEMU's test monitor";
      return;
    }
    if (!guest_nbd) disks = 0;
    if (guest_nbd)
      test_qmp_.Ok("nbd-server-start",
                   {{"addr", {{"type", "unix"}, {"data", {{"path", nbd_socket()}}}}}});
    for (int i = 0; i < disks; ++i) {
      const std::string n = "guest" + std::to_string(i);
      test_qmp_.Ok("block-export-add", {{"type", "nbd"},
                                        {"id", n},
                                        {"node-name", "disk" + std::to_string(i)},
                                        {"name", n},
                                        {"writable", true}});
      guests_.push_back(std::make_unique<Guest>(nbd_socket(), n));
      EXPECT_TRUE(guests_.back()->ok());
    }
    started_ = true;
  }
  ~Qemu() { Kill(); }
  void Kill() {
    if (pid_ > 0) ::kill(pid_, SIGKILL);
    pid_ = -1;
  }
  bool started() const { return started_; }
  // Writes `len` bytes of `byte` at `off` of disk0 with HMP qemu-io (only while no backup runs:
  // a backup's copy-before-write filter refuses a user attached after it).
  void Fill(uint64_t off, uint64_t len, int byte) {
    char cmd[128];
    std::snprintf(cmd, sizeof cmd, "qemu-io disk0 \"write -P 0x%02x %llu %llu\"", byte,
                  static_cast<unsigned long long>(off), static_cast<unsigned long long>(len));
    json r = test_qmp_.Ok("human-monitor-command", {{"command-line", cmd}});
    EXPECT_TRUE(r.is_string() && r.get<std::string>().find("rror") == std::string::npos)
        << r.dump();
  }
  std::string qmp() const { return dir_ + "/qmp.sock"; }
  std::string nbd_socket() const { return dir_ + "/guest-nbd.sock"; }
  Guest& guest(int i) { return *guests_[i]; }
  TestQmp& test_qmp() { return test_qmp_; }
  // The volume of disk `i` for a backup (on the test's NBD server).
  VolumeSource Volume(int i, bool own_nbd = false) const {
    auto v = ParseVolumeLocation("disk" + std::to_string(i),
                                 "qemu:" + qmp() + "?node=disk" + std::to_string(i) +
                                     (own_nbd ? "" : "&nbd=" + nbd_socket()));
    EXPECT_TRUE(v.ok());
    return *v;
  }
  // Names starting with "vmbackup-" among the block nodes, exports, jobs and disk0's bitmaps.
  std::set<std::string> Leftovers(std::set<std::string>* bitmaps) {
    std::set<std::string> out;
    for (const auto& n : test_qmp_.Ok("query-named-block-nodes", {{"flat", true}})) {
      const std::string name = n.value("node-name", "");
      if (name.rfind("vmbackup-", 0) == 0) out.insert("node " + name);
      if (name.rfind("disk", 0) == 0 && n.contains("dirty-bitmaps"))
        for (const auto& b : n["dirty-bitmaps"]) bitmaps->insert(name + ":" + b.value("name", ""));
    }
    for (const auto& e : test_qmp_.Ok("query-block-exports"))
      if (e.value("id", "").rfind("vmbackup-", 0) == 0) out.insert("export " + e.value("id", ""));
    for (const auto& j : test_qmp_.Ok("query-jobs"))
      if (j.value("id", "").rfind("vmbackup-", 0) == 0) out.insert("job " + j.value("id", ""));
    for (const auto& f : FilesUnder(dir_))
      if (f.find(".vmbackup-fleece-") != std::string::npos) out.insert("file " + f);
    return out;
  }

 private:
  std::string dir_;
  int pid_ = -1;
  bool started_ = false;
  TestQmp test_qmp_;
  std::vector<std::unique_ptr<Guest>> guests_;
};

struct Backup {
  StatusOr<BackupInfo> info = InternalError("not run");
  Progress last;
};

// Backs up `volumes` of VM "vm1" into `target`; `during` runs once, at the first progress report
// of the transfer phase (after the point-in-time views were taken).
Backup BackupVm(const std::shared_ptr<BackupTarget>& target, const std::string& name,
                std::vector<VolumeSource> volumes, std::function<void()> during = nullptr,
                SnapshotOptions snapshot = {}) {
  BackupSpec spec;
  spec.name = name;
  spec.vm_metadata_json = R"({"name":"vm1","namespace":"default"})";
  spec.volumes = std::move(volumes);
  spec.snapshot = std::move(snapshot);
  spec.progress_interval_ms = 0;
  auto once = std::make_shared<std::once_flag>();
  Backup out;
  auto last = std::make_shared<Progress>();
  auto mu = std::make_shared<std::mutex>();
  spec.progress = [=](const Progress& p) {
    {
      std::lock_guard<std::mutex> l(*mu);
      *last = p;
    }
    if (during && p.phase == Progress::Phase::kTransferring) std::call_once(*once, during);
    return true;
  };
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

TEST(QemuProviderTest, FullThenIncrementalReadOnlyTheBitmapAndRestoreTheirInstants) {
  TempDir dir, tdir;
  Qemu qemu(dir, 1);
  ASSERT_TRUE(qemu.started());
  Guest& g = qemu.guest(0);
  g.Write(0, Pattern(16 << 20, 1));
  g.Write(40 << 20, Pattern(1 << 20, 2));
  auto target = OpenTarget(tdir.path());
  ASSERT_TRUE(target.ok());

  // Full backup; the guest overwrites four 64 KiB chunks while it runs.
  const std::string at1 = g.Read(0, kDisk);
  const std::vector<uint64_t> during1 = {1 << 20, 5 << 20, 20 << 20, 40 << 20};
  Backup b1 = BackupVm(*target, "b1", {qemu.Volume(0)}, [&] {
    for (uint64_t off : during1) g.Write(off, Pattern(kK64, off));
  });
  ASSERT_TRUE(b1.info.ok()) << b1.info.status().ToString();
  const VolumeBackupInfo& v1 = b1.info->volumes[0];
  EXPECT_EQ(v1.provider, "qemu");
  EXPECT_EQ(v1.snapshot, "fleece");
  EXPECT_EQ(v1.consistency, "crash-consistent");
  EXPECT_EQ(v1.checkpoint.rfind("vmbackup-", 0), 0u);
  EXPECT_EQ(v1.changed_bytes, -1);
  EXPECT_EQ(b1.info->parent, "");
  EXPECT_TRUE(Restored(*target, "b1", "disk0", dir) == at1) << "b1 is not the disk at its instant";

  // Between the backups the guest writes two more chunks; the incremental reads the six chunks
  // written since b1's instant (four during b1, two after), all 64 KiB-aligned.
  g.Write(30 << 20, Pattern(kK64, 30));
  g.Write(50 << 20, Pattern(kK64, 50));
  const std::string at2 = g.Read(0, kDisk);
  Backup b2 =
      BackupVm(*target, "b2", {qemu.Volume(0)}, [&] { g.Write(60 << 20, Pattern(kK64, 60)); });
  ASSERT_TRUE(b2.info.ok()) << b2.info.status().ToString();
  const VolumeBackupInfo& v2 = b2.info->volumes[0];
  EXPECT_EQ(b2.info->parent, "b1");
  EXPECT_EQ(v2.changed_bytes, static_cast<int64_t>(6 * kK64));
  EXPECT_NE(v2.checkpoint, v1.checkpoint);
  // SmallRepo blocks are 64 KiB: exactly the six changed blocks are read.
  EXPECT_EQ(b2.last.bytes_read, 6 * kK64);
  EXPECT_TRUE(Restored(*target, "b2", "disk0", dir) == at2) << "b2 is not the disk at its instant";
  EXPECT_TRUE(Restored(*target, "b1", "disk0", dir) == at1) << "b1 changed after b2";

  // Nothing of the backups is left on QEMU but b2's checkpoint bitmap.
  std::set<std::string> bitmaps;
  EXPECT_EQ(qemu.Leftovers(&bitmaps), std::set<std::string>{});
  EXPECT_EQ(bitmaps, std::set<std::string>{"disk0:" + v2.checkpoint});
}

TEST(QemuProviderTest, TwoDisksAreTakenAtOneInstant) {
  TempDir dir, tdir;
  Qemu qemu(dir, 2);
  ASSERT_TRUE(qemu.started());
  auto target = OpenTarget(tdir.path());
  ASSERT_TRUE(target.ok());
  // The writer stamps sequence number n into disk0, then into disk1, as fast as it can; a guest
  // pauses between pairs while frozen.
  std::atomic<bool> stop{false};
  std::mutex pair_mu;
  std::atomic<uint64_t> written{0};
  std::thread writer([&] {
    for (uint64_t n = 1; !stop; ++n) {
      std::lock_guard<std::mutex> l(pair_mu);
      std::string stamp(kK64, '\0');
      std::memcpy(stamp.data(), &n, sizeof n);
      qemu.guest(0).Write(0, stamp);
      qemu.guest(1).Write(0, stamp);
      written = n;
    }
  });
  while (written < 50) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto seq = [&](const std::string& backup, const std::string& vol) {
    std::string d = Restored(*target, backup, vol, dir);
    uint64_t n = 0;
    if (d.size() >= sizeof n) std::memcpy(&n, d.data(), sizeof n);
    return n;
  };

  // Crash-consistent: one QMP transaction, so disk1 is disk0's number or the one before.
  Backup crash = BackupVm(*target, "crash", {qemu.Volume(0), qemu.Volume(1)});
  ASSERT_TRUE(crash.info.ok()) << crash.info.status().ToString();
  // Frozen: the guest holds still between pairs, so both disks carry the same number.
  std::unique_lock<std::mutex> frozen(pair_mu, std::defer_lock);
  SnapshotOptions so;
  so.freeze = [&] {
    frozen.lock();
    return Status::Ok();
  };
  so.thaw = [&] {
    frozen.unlock();
    return Status::Ok();
  };
  Backup fs = BackupVm(*target, "frozen", {qemu.Volume(0), qemu.Volume(1)}, nullptr, so);
  stop = true;
  writer.join();
  ASSERT_TRUE(fs.info.ok()) << fs.info.status().ToString();

  const uint64_t c0 = seq("crash", "disk0"), c1 = seq("crash", "disk1");
  EXPECT_GT(c0, 0u);
  EXPECT_TRUE(c1 == c0 || c1 + 1 == c0) << "disk0 " << c0 << ", disk1 " << c1;
  const uint64_t f0 = seq("frozen", "disk0"), f1 = seq("frozen", "disk1");
  EXPECT_GT(f0, c0);
  EXPECT_EQ(f0, f1);
  for (const auto& v : fs.info->volumes) EXPECT_EQ(v.consistency, "fs-frozen");
  EXPECT_GE(fs.info->freeze_seconds, 0);
}

TEST(QemuProviderTest, QemuKilledMidBackupFailsClearlyAndPublishesNothing) {
  TempDir dir, tdir;
  Qemu qemu(dir, 1, /*guest_nbd=*/false);
  ASSERT_TRUE(qemu.started());
  qemu.Fill(0, 32 << 20, 0x33);
  auto target = OpenTarget(tdir.path());
  ASSERT_TRUE(target.ok());
  Backup b = BackupVm(*target, "killed", {qemu.Volume(0, /*own_nbd=*/true)}, [&] { qemu.Kill(); });
  ASSERT_FALSE(b.info.ok());
  EXPECT_EQ(b.info.status().code(), StatusCode::kUnavailable) << b.info.status().ToString();
  EXPECT_NE(b.info.status().message().find("NBD"), std::string::npos) << b.info.status().ToString();
  auto list = (*target)->ListBackups();
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->backups.empty());
  EXPECT_TRUE(FilesUnder(dir.path(), ".vmbackup-fleece-").empty());
}

TEST(QemuProviderTest, AKilledBackupIsCleanedUpByTheNextRunWhichStaysIncremental) {
  TempDir dir, tdir;
  Qemu qemu(dir, 1, /*guest_nbd=*/false);
  ASSERT_TRUE(qemu.started());
  std::string disk(kDisk, '\0');  // what the disk holds, as written
  qemu.Fill(0, 24 << 20, 0x44);
  std::memset(disk.data(), 0x44, 24 << 20);
  auto target = OpenTarget(tdir.path());
  ASSERT_TRUE(target.ok());
  Backup b1 = BackupVm(*target, "b1", {qemu.Volume(0, /*own_nbd=*/true)});
  ASSERT_TRUE(b1.info.ok()) << b1.info.status().ToString();

  // A backup process (QEMU's NBD server started by the provider) is SIGKILLed while it reads.
  qemu.Fill(8 << 20, kK64, 0x88);
  std::memset(disk.data() + (8 << 20), 0x88, kK64);
  HelperProcess child;
  ASSERT_TRUE(child.Start(
      HelperPath(),
      {"backup", "--target", tdir.path(), "--name", "killed", "--volume",
       "disk0=" + VolumeLocation(qemu.Volume(0, true)), "--workers", "1", "--rate-mib", "1"},
      dir.Sub("child.log")));
  ASSERT_TRUE(child.WaitFor(
      [&] {
        // "progress <bytes_scanned> ...": blocks are being read from the export.
        for (const auto& l : child.Lines())
          if (l.rfind("progress ", 0) == 0 && l.rfind("progress 0 ", 0) != 0) return true;
        return false;
      },
      std::chrono::seconds(60)));
  child.Kill(SIGKILL);
  child.Wait();
  std::set<std::string> bitmaps;
  EXPECT_FALSE(qemu.Leftovers(&bitmaps).empty()) << "the killed run left nothing to clean";

  // The next run removes the export, job, fleecing nodes and file, and is still an incremental
  // from b1 holding exactly the disk of its instant (the chunk written before the killed run is
  // the one change).
  Backup b2 = BackupVm(*target, "b2", {qemu.Volume(0, /*own_nbd=*/true)});
  ASSERT_TRUE(b2.info.ok()) << b2.info.status().ToString();
  EXPECT_EQ(b2.info->parent, "b1");
  EXPECT_EQ(b2.info->volumes[0].changed_bytes, static_cast<int64_t>(kK64));
  EXPECT_TRUE(Restored(*target, "b2", "disk0", dir) == disk);
  bitmaps.clear();
  EXPECT_EQ(qemu.Leftovers(&bitmaps), std::set<std::string>{});
  EXPECT_EQ(bitmaps, std::set<std::string>{"disk0:" + b2.info->volumes[0].checkpoint});
  auto list = (*target)->ListBackups();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(ListedNames(*list), (std::vector<std::string>{"b1", "b2"}));
}

TEST(QemuProviderTest, AMissingNodeOrSocketIsAClearError) {
  TempDir dir, tdir;
  Qemu qemu(dir, 1);
  ASSERT_TRUE(qemu.started());
  auto target = OpenTarget(tdir.path());
  ASSERT_TRUE(target.ok());
  auto bad_node = ParseVolumeLocation("disk0", "qemu:" + qemu.qmp() + "?node=nosuch");
  ASSERT_TRUE(bad_node.ok());
  Backup b = BackupVm(*target, "bad-node", {*bad_node});
  EXPECT_EQ(b.info.status().code(), StatusCode::kNotFound) << b.info.status().ToString();
  EXPECT_NE(b.info.status().message().find("nosuch"), std::string::npos);
  auto bad_sock = ParseVolumeLocation("disk0", "qemu:" + dir.Sub("nosuch.sock") + "?node=disk0");
  ASSERT_TRUE(bad_sock.ok());
  b = BackupVm(*target, "bad-socket", {*bad_sock});
  EXPECT_EQ(b.info.status().code(), StatusCode::kUnavailable) << b.info.status().ToString();
  EXPECT_NE(b.info.status().message().find("nosuch.sock"), std::string::npos);
}

}  // namespace
}  // namespace vmbackup::integration
