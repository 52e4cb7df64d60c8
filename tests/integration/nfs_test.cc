// The NFS target against a real server: nfs-ganesha 4.3 (FSAL VFS) + rpcbind on 127.0.0.1, started
// by scripts/nfs-server.sh (scripts/test.sh starts it and exports its environment before ctest).
// Round trips through the public API over NFSv3, NFSv4 and Harvester's URL form; the store's
// chunked large objects, 1000-key listing pages and emptied directories; the modes of what it
// creates and its bounds on what a (possibly hostile) export makes it read; missing, refused and
// read-only exports; a closed port; ganesha restarted during a backup; and interoperability with
// libnfs-utils (nfs-ls / nfs-cat read what vmbackup wrote). The ObjectStore contract itself is
// tested on ganesha (NFSv3 and v4) by store_conformance_test.cc.
//
// Every test works under its own prefix ("t-<test>-<random>") inside the export. The tests share
// one ganesha; the restart tests stop it for a few seconds, so CMake gives all of them one
// RESOURCE_LOCK.
//
// Without a server (NFS_URL_V3 unset) every test FAILS with a message saying how to start one.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "core/runtime.h"
#include "integration_util.h"
#include "store/nfs/nfs_store.h"
#include "target/store_factory.h"

// LeakSanitizer (the asan build): libnfs 4.0 does not free the state of a connection or mount in
// progress when its context is destroyed (the store destroys contexts mid-mount on a deadline, a
// server restart or its own destruction: DestroyingTheStoreEndsPendingOperations). Only those
// allocations are exempt.
extern "C" const char* __lsan_default_suppressions() {
  return "leak:rpc_connect_port_async\nleak:nfs3_mount_async\n";
}

namespace vmbackup::integration {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;
using ::vmbackup::testing::FileExists;
using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::MakeVolume;
using ::vmbackup::testing::ReadAll;
using ::vmbackup::testing::ScribbleVolume;
using ::vmbackup::testing::TempDir;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMiB = 1024 * 1024;

// Inserts `sub` ("/a/b") after the path of a libnfs URL, before its query.
std::string UrlWithPath(const std::string& url, const std::string& sub) {
  auto q = url.find('?');
  if (q == std::string::npos) return url + sub;
  return url.substr(0, q) + sub + url.substr(q);
}

std::string TargetJsonFor(const std::string& endpoint, const std::string& prefix) {
  return R"({"type":"nfs","endpoint":")" + endpoint + R"(","prefix":")" + prefix + R"("})";
}

class NfsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    url3_ = Env("NFS_URL_V3");
    ASSERT_FALSE(url3_.empty())
        << "the NFS test server is not running: NFS_URL_V3 is not set. Start nfs-ganesha and "
           "export its environment with\n    eval \"$(bash scripts/nfs-server.sh start)\"\n(from "
           "the repository root), then run ctest again. scripts/test.sh does both.";
    url4_ = Env("NFS_URL_V4");
    harvester_ = Env("NFS_HARVESTER_URL");
    export_dir_ = Env("NFS_EXPORT");
    state_dir_ = Env("NFS_STATE_DIR");
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = info->name();
    for (auto& c : name)
      if (!std::isalnum(static_cast<unsigned char>(c))) c = '-';
    prefix_ = "t-" + name.substr(0, 40) + "-" + RandomHex(6);
  }

  TargetOptions Opts() const {
    TargetOptions o = SmallRepo();
    o.retry_timeout_seconds = 30;
    return o;
  }
  StatusOr<std::shared_ptr<BackupTarget>> Open(const std::string& url, const TargetOptions& o) {
    return BackupTarget::Open(TargetJsonFor(url, prefix_), o);
  }
  StatusOr<std::unique_ptr<internal::ObjectStore>> Store(const std::string& url, int timeout = 30) {
    TargetOptions o;
    o.retry_timeout_seconds = timeout;
    return Store(url, o, Runtime::Default());
  }
  StatusOr<std::unique_ptr<internal::ObjectStore>> Store(const std::string& url,
                                                         const TargetOptions& o,
                                                         std::shared_ptr<Runtime> rt) {
    TargetConfig c;
    c.type = TargetConfig::Type::kNfs;
    c.endpoint = url;
    c.prefix = prefix_;
    return internal::OpenNfsStore(c, o, std::move(rt));
  }
  // A runtime of its own with one worker and one job thread.
  static std::shared_ptr<Runtime> SmallRuntime(int blocking_threads, int io_threads) {
    RuntimeOptions ro;
    ro.blocking_threads = blocking_threads;
    ro.worker_threads = 1;
    ro.io_threads = io_threads;
    ro.job_threads = 1;
    return Runtime::Create(ro);
  }
  // Restarts ganesha with a pause of `seconds`; returns the script's exit status.
  int RestartServer(int seconds, const std::string& log) {
    const std::string script = std::string(VMBACKUP_SOURCE_DIR) + "/scripts/nfs-server.sh";
    return std::system(("VMBACKUP_NFS_STATE_DIR=" + Quote(state_dir_) + " bash " + Quote(script) +
                        " restart " + std::to_string(seconds) + " >" + Quote(log) + " 2>&1")
                           .c_str());
  }

  std::string url3_, url4_, harvester_, export_dir_, state_dir_, prefix_;
};

StatusOr<BackupInfo> Backup(const std::shared_ptr<BackupTarget>& target, const std::string& name,
                            const std::string& path, const std::string& parent = "",
                            const std::vector<std::pair<uint64_t, uint64_t>>* dirty = nullptr) {
  BackupSpec spec;
  spec.name = name;
  spec.parent = parent;
  spec.vm_metadata_json = R"({"name":"vm1","namespace":"default"})";
  VolumeSource v{"disk0", path, false, {}};
  if (dirty != nullptr) {
    v.has_dirty_map = true;
    for (const auto& [off, len] : *dirty) v.dirty_ranges.push_back(Extent{off, len});
  }
  spec.volumes.push_back(v);
  auto job = BackupJob::Create(target, spec);
  if (!job.ok()) return job.status();
  Status st = (*job)->Run();
  if (!st.ok()) return st;
  return (*job)->result();
}

// ---- round trips through the public API ---------------------------------------------------------

TEST_F(NfsTest, V3FullIncrementalDirtyMapRoundTripsByteIdentical) {
  TempDir dir;
  const std::string vol = dir.Sub("disk0.img");
  MakeVolume(vol, 12 * kMiB, 1, 512 * 1024);
  const std::string sha_full = FileSha256(vol);
  auto target = Open(url3_, Opts());
  ASSERT_OK(target);
  ASSERT_OK((*target)->Test());
  auto full = Backup(*target, "full", vol);
  ASSERT_OK(full);
  ScribbleVolume(vol, 16, 4096, 2);
  const std::string sha_incr = FileSha256(vol);
  auto incr = Backup(*target, "incr", vol, "full");
  ASSERT_OK(incr);
  EXPECT_LT(incr->bytes_new, full->bytes_new);
  auto ranges = ScribbleVolume(vol, 8, 8192, 3);
  const std::string sha_dirty = FileSha256(vol);
  auto dirty = Backup(*target, "dirty", vol, "incr", &ranges);
  ASSERT_OK(dirty);
  EXPECT_LE(dirty->bytes_new, 8u * 2 * 64 * 1024);

  // A fresh target object (no cached state) lists and restores all three, byte-identical.
  auto fresh = Open(url3_, Opts());
  ASSERT_OK(fresh);
  auto list = (*fresh)->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), UnorderedElementsAre("full", "incr", "dirty"));
  EXPECT_EQ(RestoreSha(*fresh, "full", dir), sha_full);
  EXPECT_EQ(RestoreSha(*fresh, "incr", dir), sha_incr);
  EXPECT_EQ(RestoreSha(*fresh, "dirty", dir), sha_dirty);
  // The objects are plain files in the exported directory, under the prefix.
  EXPECT_TRUE(FileExists(export_dir_ + "/" + prefix_ + "/records/full.json"));
  ASSERT_OK((*fresh)->DeleteBackup("incr"));
  list = (*fresh)->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), UnorderedElementsAre("full", "dirty"));
  EXPECT_EQ(RestoreSha(*fresh, "dirty", dir), sha_dirty);
}

TEST_F(NfsTest, V4RoundTripWithChunkedWrites) {
  ASSERT_FALSE(url4_.empty()) << "NFS_URL_V4 is not set (scripts/nfs-server.sh prints it)";
  TempDir dir;
  const std::string vol = dir.Sub("disk0.img");
  MakeVolume(vol, 3 * kMiB, 4, 256 * 1024);
  const std::string sha = FileSha256(vol);
  auto target = Open(url4_, Opts());
  ASSERT_OK(target);
  EXPECT_THAT((*target)->config().endpoint, HasSubstr("version=4"));
  auto b = Backup(*target, "v4", vol);
  ASSERT_OK(b);
  // Written over v4, read back over v3 and v4.
  auto v3 = Open(url3_, Opts());
  ASSERT_OK(v3);
  EXPECT_EQ(RestoreSha(*v3, "v4", dir), sha);
  EXPECT_EQ(RestoreSha(*target, "v4", dir), sha);
  // The store's if_absent and overwrite work on v4 too (exclusive O_CREAT is handled).
  auto store = Store(url4_);
  ASSERT_OK(store);
  internal::PutOptions once;
  once.if_absent = true;
  ASSERT_OK((*store)->Put("x/once", "first", once));
  EXPECT_THAT((*store)->Put("x/once", "second", once), StatusIs(StatusCode::kAlreadyExists, ""));
  ASSERT_OK((*store)->Put("x/once", "replaced", {}));
  EXPECT_EQ(*(*store)->Get("x/once"), "replaced");
}

TEST_F(NfsTest, HarvesterUrlFormUsesThePortmapper) {
  ASSERT_FALSE(harvester_.empty()) << "NFS_HARVESTER_URL is not set";
  EXPECT_THAT(harvester_, HasSubstr(":/"));
  TempDir dir;
  const std::string vol = dir.Sub("disk0.img");
  MakeVolume(vol, 2 * kMiB, 5, 256 * 1024);
  auto target = Open(harvester_, Opts());
  ASSERT_OK(target);
  ASSERT_OK((*target)->Test());
  ASSERT_OK(Backup(*target, "h", vol));
  EXPECT_EQ(RestoreSha(*target, "h", dir), FileSha256(vol));
}

TEST_F(NfsTest, BadEndpointsAreInvalidArgumentNamingTheProblem) {
  for (const char* ep :
       {"nfs://server", "nfs://:/x", "nfs://h/x?version=2", "nfs://h/x?foo=1", "nfs://h:2049/x"}) {
    auto t = BackupTarget::Open(TargetJsonFor(ep, prefix_), Opts());
    ShowStatus(t);
    EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument) << ep;
    EXPECT_THAT(t.status().message(), HasSubstr("endpoint")) << ep;
  }
  auto ok = internal::ParseNfsEndpoint("nfs://srv:/export/path?nfsOptions=nfsvers=4,soft");
  ASSERT_OK(ok);
  EXPECT_EQ(ok->server, "srv");
  EXPECT_EQ(ok->export_path, "/export/path");
  EXPECT_EQ(ok->version, 4);
}

// ---- the store ----------------------------------------------------------------------------------

TEST_F(NfsTest, StoreRangedGetHeadLargeObjectAndMissingKeys) {
  auto store = Store(url3_);
  ASSERT_OK(store);
  auto& s = **store;
  // 9 MiB + 3: several 1 MiB WRITEs in flight, a short last one.
  std::string big(9 * kMiB + 3, '\0');
  std::mt19937_64 rng(7);
  for (auto& c : big) c = static_cast<char>(rng());
  ASSERT_OK(s.Put("big/object", big, {}));
  auto head = s.Head("big/object");
  ASSERT_OK(head);
  EXPECT_EQ(head->size, big.size());
  auto all = s.Get("big/object");
  ASSERT_OK(all);
  EXPECT_TRUE(*all == big);
  auto mid = s.Get("big/object", kMiB - 5, 2 * kMiB + 10);  // crosses chunk boundaries
  ASSERT_OK(mid);
  EXPECT_TRUE(*mid == big.substr(kMiB - 5, 2 * kMiB + 10));
  auto tail = s.Get("big/object", big.size() - 3, 0);
  ASSERT_OK(tail);
  EXPECT_EQ(*tail, big.substr(big.size() - 3));
  EXPECT_THAT(s.Get("big/object", big.size() + 1, 0), StatusIs(StatusCode::kOutOfRange, ""));
  EXPECT_THAT(s.Get("big/object", big.size() - 2, 10), StatusIs(StatusCode::kDataLoss, "shorter"));
  EXPECT_THAT(s.Get("no/such"), StatusIs(StatusCode::kNotFound, ""));
  EXPECT_THAT(s.Head("no/such"), StatusIs(StatusCode::kNotFound, ""));
  EXPECT_THAT(s.Head("big"), StatusIs(StatusCode::kNotFound, "not a file"));
  ASSERT_OK(s.Put("empty", "", {}));
  EXPECT_EQ(*s.Get("empty"), "");
  // Nothing is left in .tmp/.
  EXPECT_THAT(FilesUnder(export_dir_ + "/" + prefix_ + "/.tmp"), IsEmpty());
}

TEST_F(NfsTest, ListPaginatesOverThousandKeysAndDeleteRemovesEmptiedDirs) {
  auto store = Store(url3_);
  ASSERT_OK(store);
  auto& s = **store;
  constexpr int kKeys = 1100;
  std::vector<std::string> keys;
  for (int i = 0; i < kKeys; ++i) {
    char k[64];
    std::snprintf(k, sizeof k, "objs/%02d/k%05d", i % 7, i);
    keys.push_back(k);
  }
  internal::PutOptions fast;
  fast.durable = false;
  std::atomic<int> next{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i; (i = next++) < kKeys;)
        if (!s.Put(keys[i], "v" + std::to_string(i), fast).ok()) ++failures;
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(failures.load(), 0);
  ASSERT_OK(s.Put("other/x", "x", {}));
  auto p1 = s.List("objs/", "", 1000);
  ASSERT_OK(p1);
  ASSERT_EQ(p1->objects.size(), 1000u);
  EXPECT_EQ(p1->next_token, p1->objects.back().key);
  auto p2 = s.List("objs/", p1->next_token, 1000);
  ASSERT_OK(p2);
  EXPECT_EQ(p2->objects.size(), 100u);
  EXPECT_TRUE(p2->next_token.empty());
  std::vector<std::string> listed;
  for (const auto& o : p1->objects) listed.push_back(o.key);
  for (const auto& o : p2->objects) listed.push_back(o.key);
  std::vector<std::string> sorted = keys;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(listed, sorted);
  EXPECT_EQ(p1->objects[0].size, p1->objects[0].key == keys[0] ? 2u : p1->objects[0].size);
  auto some = s.List("objs/03/k0", "", 1000);
  ASSERT_OK(some);
  for (const auto& o : some->objects) EXPECT_EQ(o.key.rfind("objs/03/k0", 0), 0u) << o.key;
  auto all = s.ListAll("");
  ASSERT_OK(all);
  EXPECT_EQ(all->size(), static_cast<size_t>(kKeys + 1));

  std::vector<std::string> doomed(keys.begin(), keys.end());
  doomed.push_back("never/existed");
  ASSERT_OK(s.Delete(doomed));
  auto rest = s.ListAll("");
  ASSERT_OK(rest);
  ASSERT_EQ(rest->size(), 1u);
  EXPECT_EQ((*rest)[0].key, "other/x");
  EXPECT_FALSE(FileExists(export_dir_ + "/" + prefix_ + "/objs")) << "emptied dirs stay";
}

// ---- a target others write to (issue #9) --------------------------------------------------------

// Regression: objects were created 0644 and directories 0755 on the export (the modes libnfs sends
// in CREATE / MKDIR), so every user of the NFS server's host could read the guests' data.
TEST_F(NfsTest, ObjectsWereWorldReadableOnTheExport) {
  ASSERT_FALSE(url4_.empty()) << "NFS_URL_V4 is not set (scripts/nfs-server.sh prints it)";
  for (const std::string& url : {url3_, url4_}) {
    const std::string v = url == url3_ ? "v3" : "v4";
    SCOPED_TRACE(v);
    auto store = Store(url);
    ASSERT_OK(store);
    internal::PutOptions once, fast;
    once.if_absent = true;
    fast.durable = false;
    ASSERT_OK((*store)->Put(v + "/packs/ab/ab01.pack", std::string(kMiB + 5, 'p'), {}));
    ASSERT_OK((*store)->Put(v + "/records/b.json", "r", once));
    ASSERT_OK((*store)->Put(v + "/index/i.idx", "i", fast));
  }
  // Everything the store created, the prefix directory included, as ganesha wrote it to disk.
  const std::string root = export_dir_ + "/" + prefix_;
  std::map<std::string, mode_t> modes;
  struct stat sb;
  ASSERT_EQ(::lstat(root.c_str(), &sb), 0);
  modes[prefix_] = sb.st_mode;
  for (const auto& e : std::filesystem::recursive_directory_iterator(root)) {
    ASSERT_EQ(::lstat(e.path().c_str(), &sb), 0) << e.path();
    modes[std::filesystem::relative(e.path(), export_dir_).string()] = sb.st_mode;
  }
  // Per version: v*, packs, packs/ab, records, index + 3 files; plus the prefix and .tmp.
  EXPECT_EQ(modes.size(), 2u * 8 + 2) << ::testing::PrintToString(modes);
  EXPECT_TRUE(modes.count(prefix_ + "/.tmp"));
  for (const auto& [path, mode] : modes) {
    EXPECT_EQ(mode & 07777, S_ISDIR(mode) ? 0700u : 0600u)
        << path << " has mode 0" << std::oct << (mode & 07777);
  }
}

// Regression: a whole-object read allocated (and read) the size the server reported, so a huge
// (sparse, cheap) file planted on the export made a restore allocate without bound; and a ranged
// read past the end of a short object allocated the whole range first.
TEST_F(NfsTest, WholeReadOfAHugePlantedObjectAllocatedItsSize) {
  const uint64_t size = internal::kMaxWholeObjectRead + kMiB;  // 65 MiB, sparse
  // Planted on the exported directory before ganesha ever looks at it (so no cached attributes).
  const std::string dir = export_dir_ + "/" + prefix_ + "/index";
  std::filesystem::create_directories(dir);
  ::vmbackup::testing::WriteAll(dir + "/huge.idx", "x");
  ASSERT_EQ(::truncate((dir + "/huge.idx").c_str(), static_cast<off_t>(size)), 0);
  auto store = Store(url3_);
  ASSERT_OK(store);
  auto& s = **store;
  ASSERT_EQ(s.Head("index/huge.idx")->size, size);
  EXPECT_THAT(s.Get("index/huge.idx"), StatusIs(StatusCode::kDataLoss, "index/huge.idx"));
  std::string buf;
  EXPECT_THAT(s.GetInto("index/huge.idx", 0, 0, &buf),
              StatusIs(StatusCode::kDataLoss, "index/huge.idx"));
  EXPECT_LT(buf.capacity(), kMiB) << "refused only after allocating the object's size";
  EXPECT_THAT(s.GetAtMost("index/huge.idx", kMiB),
              StatusIs(StatusCode::kDataLoss, "index/huge.idx"));
  auto part = s.Get("index/huge.idx", size - 10, 10);  // ranged reads still work
  ASSERT_OK(part);
  EXPECT_EQ(*part, std::string(10, '\0'));

  ASSERT_OK(s.Put("records/r.json", std::string(101, 'r'), {}));
  EXPECT_THAT(s.GetAtMost("records/r.json", 100),
              StatusIs(StatusCode::kDataLoss, "records/r.json"));
  EXPECT_EQ(s.GetAtMost("records/r.json", 101)->size(), 101u);
  std::string range;
  EXPECT_THAT(s.GetInto("records/r.json", 2, 1ull << 41, &range),
              StatusIs(StatusCode::kDataLoss, "shorter"));
  EXPECT_LT(range.capacity(), kMiB);
}

// ---- errors -------------------------------------------------------------------------------------

TEST_F(NfsTest, MissingExportIsNotFoundNamingTheExport) {
  const std::string port = Env("NFS_PORT"), mport = Env("NFS_MOUNT_PORT");
  const std::string url =
      "nfs://127.0.0.1/no/such/export-" + RandomHex(4) + "?nfsport=" + port + "&mountport=" + mport;
  const auto t0 = Clock::now();
  auto t = Open(url, Opts());
  ShowStatus(t);
  EXPECT_THAT(t, StatusIs(StatusCode::kNotFound, "/no/such/export-"));
  EXPECT_LT(SecondsSince(t0), 10);
  auto t4 = Open("nfs://127.0.0.1/no/such/export?version=4&nfsport=" + port, Opts());
  ShowStatus(t4);
  EXPECT_EQ(t4.status().code(), StatusCode::kNotFound) << t4.status().ToString();
}

TEST_F(NfsTest, ExportThatRefusesWritesIsPermissionDenied) {
  const std::string url = Env("NFS_URL_DENIED");
  ASSERT_FALSE(url.empty()) << "NFS_URL_DENIED is not set (scripts/nfs-server.sh prints it)";
  auto t = Open(url, Opts());
  ShowStatus(t);
  EXPECT_THAT(t, StatusIs(StatusCode::kPermissionDenied, "Permission denied"));
  EXPECT_THAT(t.status().message(), HasSubstr("export-denied"));
}

TEST_F(NfsTest, ExportThatExcludesThisClientIsAClearError) {
  const std::string url = Env("NFS_URL_OTHER_CLIENT");
  ASSERT_FALSE(url.empty()) << "NFS_URL_OTHER_CLIENT is not set (scripts/nfs-server.sh prints it)";
  const auto t0 = Clock::now();
  auto t = Open(url, Opts());
  ShowStatus(t);
  EXPECT_LT(SecondsSince(t0), 10);
  // ganesha hides the export from this client, so it cannot be told from a missing one.
  EXPECT_THAT(t, StatusIs(StatusCode::kNotFound, "to this client"));
  EXPECT_THAT(t.status().message(), HasSubstr("export-other-client"));
}

TEST_F(NfsTest, ReadOnlyExportIsPermissionDeniedAndReadsWork) {
  const std::string url = Env("NFS_URL_RO");
  ASSERT_FALSE(url.empty()) << "NFS_URL_RO is not set (scripts/nfs-server.sh prints it)";
  auto t = BackupTarget::Open(R"({"type":"nfs","endpoint":")" + url + R"("})", Opts());
  ShowStatus(t);
  EXPECT_EQ(t.status().code(), StatusCode::kPermissionDenied) << t.status().ToString();
  // The store itself can read the export.
  TargetConfig c;
  c.type = TargetConfig::Type::kNfs;
  c.endpoint = url;
  auto store = internal::OpenNfsStore(c, TargetOptions{}, Runtime::Default());
  ASSERT_OK(store);
  auto got = (*store)->Get("existing-file");
  ASSERT_OK(got);
  EXPECT_THAT(*got, HasSubstr("read-only"));
  EXPECT_THAT((*store)->Put("new", "x", {}), StatusIs(StatusCode::kPermissionDenied, ""));
}

TEST_F(NfsTest, ClosedPortIsUnavailableWithinTheTimeout) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin_port);
  ::close(fd);  // nobody listens there now
  TargetOptions o = Opts();
  o.retry_timeout_seconds = 3;
  const std::string p = std::to_string(port);
  const auto t0 = Clock::now();
  auto t = Open("nfs://127.0.0.1/export?nfsport=" + p + "&mountport=" + p, o);
  const double secs = SecondsSince(t0);
  ShowStatus(t);
  EXPECT_THAT(t, StatusIs(StatusCode::kUnavailable, "127.0.0.1"));
  EXPECT_THAT(t.status().message(), HasSubstr("retry_timeout_seconds"));
  EXPECT_GE(secs, 2.0);
  EXPECT_LT(secs, 6.0);
}

// ---- the io_context drives the store (issue #10) -------------------------------------------------

// Threads of this process now.
int ThreadsNow() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
  return n;
}

// Every thread of the blocking pool waits on a gate: NFS operations, async and blocking, still
// complete (they run on the io_context and need no pool thread), and no thread is started.
TEST_F(NfsTest, OperationsCompleteWhileEveryBlockingPoolThreadIsBusy) {
  auto rt = SmallRuntime(2, 1);
  TargetOptions o;
  o.retry_timeout_seconds = 30;
  auto store = Store(url3_, o, rt);
  ASSERT_OK(store);
  auto& s = **store;

  // The gate the blocking-pool threads wait on; opened when the test ends, however it ends.
  struct Gate {
    std::mutex mu;
    std::condition_variable cv;
    bool open = false;
    int waiting = 0;
    void Open() {
      std::lock_guard<std::mutex> l(mu);
      open = true;
      cv.notify_all();
    }
  };
  auto gate = std::make_shared<Gate>();
  std::unique_ptr<Gate, void (*)(Gate*)> opener(gate.get(), [](Gate* g) { g->Open(); });
  for (int i = 0; i < 2; ++i) {
    internal::ImplOf(rt)->PostBlocking([gate] {
      std::unique_lock<std::mutex> l(gate->mu);
      ++gate->waiting;
      gate->cv.notify_all();
      gate->cv.wait(l, [&] { return gate->open; });
    });
  }
  {
    std::unique_lock<std::mutex> l(gate->mu);
    ASSERT_TRUE(gate->cv.wait_for(l, std::chrono::seconds(10), [&] { return gate->waiting == 2; }));
  }
  const int threads = ThreadsNow();
  auto data = std::make_shared<std::string>(3 * kMiB + 17, '\0');
  std::mt19937_64 rng(11);
  for (auto& ch : *data) ch = static_cast<char>(rng());

  auto put = std::make_shared<std::promise<Status>>();
  s.PutAsync("busy/a", data, {}, [put](Status st) { put->set_value(std::move(st)); });
  auto put_done = put->get_future();
  ASSERT_EQ(put_done.wait_for(std::chrono::seconds(20)), std::future_status::ready)
      << "PutAsync waited for a blocking-pool thread";
  ASSERT_OK(put_done.get());
  auto get = std::make_shared<std::promise<StatusOr<std::string>>>();
  s.GetAsync("busy/a", 0, 0, [get](StatusOr<std::string> r) { get->set_value(std::move(r)); });
  auto get_done = get->get_future();
  ASSERT_EQ(get_done.wait_for(std::chrono::seconds(20)), std::future_status::ready)
      << "GetAsync waited for a blocking-pool thread";
  auto got = get_done.get();
  ASSERT_OK(got);
  EXPECT_TRUE(*got == *data);
  // The blocking forms, from this thread.
  ASSERT_OK(s.Put("busy/b", "bee", {}));
  EXPECT_EQ(*s.Get("busy/b"), "bee");
  EXPECT_EQ(s.Head("busy/a")->size, data->size());
  auto list = s.List("busy/", "", 10);
  ASSERT_OK(list);
  EXPECT_EQ(list->objects.size(), 2u);
  ASSERT_OK(s.Delete({"busy/a", "busy/b"}));
  EXPECT_THAT(s.Head("busy/a"), StatusIs(StatusCode::kNotFound, ""));
  EXPECT_EQ(ThreadsNow(), threads) << "an NFS operation started a thread";
}

// The store is destroyed while uploads and reads are in flight or queued: every completion is
// called before the destructor returns, the ones it cut short with kUnavailable "closed", and no
// handler touches the freed store afterwards (the ASan and TSan builds run this too).
TEST_F(NfsTest, DestroyingTheStoreEndsPendingOperations) {
  auto rt = SmallRuntime(1, 2);
  TargetOptions o;
  o.retry_timeout_seconds = 30;
  o.max_requests_in_flight = 2;
  for (int round = 0; round < 3; ++round) {
    auto store = Store(url3_, o, rt);
    ASSERT_OK(store);
    ASSERT_OK((*store)->Put("read-me", std::string(4 * kMiB, 'r'), {}));
    auto data = std::make_shared<const std::string>(16 * kMiB, static_cast<char>('a' + round));
    std::mutex mu;
    std::vector<Status> results;
    constexpr int kPuts = 12, kGets = 4;
    for (int i = 0; i < kPuts; ++i) {
      (*store)->PutAsync("pending/" + std::to_string(i), data, {}, [&](Status st) {
        std::lock_guard<std::mutex> l(mu);
        results.push_back(std::move(st));
      });
    }
    for (int i = 0; i < kGets; ++i) {
      (*store)->GetAsync("read-me", 0, 0, [&](StatusOr<std::string> r) {
        std::lock_guard<std::mutex> l(mu);
        results.push_back(r.status());
      });
    }
    // Round 0 closes at once; the others while data moves.
    if (round > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50 * round));
    const auto t0 = Clock::now();
    store->reset();
    const double secs = SecondsSince(t0);
    EXPECT_LT(secs, 5.0) << "closing the store waited for its operations";
    std::lock_guard<std::mutex> l(mu);
    ASSERT_EQ(results.size(), static_cast<size_t>(kPuts + kGets))
        << "a completion was not called before the store was gone";
    int ended = 0;
    for (const auto& st : results) {
      if (st.ok()) continue;
      ++ended;
      EXPECT_THAT(st, StatusIs(StatusCode::kUnavailable, "closed"));
    }
    EXPECT_GT(ended, 0) << "round " << round << ": every operation had completed already";
  }
  rt.reset();  // joins the threads: no handler of the stores may be left
}

// ---- server restarts ----------------------------------------------------------------------------

// ganesha down for longer than the timeout: the backup fails with kUnavailable in bounded time and
// leaves no record; once the server is back the same target works again (fresh connections).
TEST_F(NfsTest, ServerDownLongerThanTimeoutFailsBoundedWithoutRecordThenRecovers) {
  TempDir dir;
  const std::string vol = dir.Sub("disk0.img");
  MakeVolume(vol, 48 * kMiB, 11, kMiB);
  const std::string sha = FileSha256(vol);
  TargetOptions o = Opts();
  o.retry_timeout_seconds = 2;
  auto target = Open(url3_, o);
  ASSERT_OK(target);

  std::atomic<bool> uploading{false}, down{false};
  BackupSpec spec;
  spec.name = "during-outage";
  spec.vm_metadata_json = "{}";
  spec.volumes.push_back(VolumeSource{"disk0", vol, false, {}});
  spec.progress_interval_ms = 20;
  spec.progress = [&uploading, &down](const Progress& p) {
    if (p.bytes_written > 0 || p.phase == Progress::Phase::kFinalizing) uploading = true;
    // Once uploads started, hold this worker (or the driver, at the latest when it starts
    // finalizing) until ganesha is really down: whatever the other worker did meanwhile, the last
    // packs, the volume index and the record still have to be written during the 6 s outage,
    // which outlasts the 2 s timeout. Never in the final report (kDone): that one comes after the
    // record was published, and holding it let a backup that had already finished "succeed".
    if (uploading && p.phase != Progress::Phase::kDone) {
      const auto t = Clock::now();
      while (!down && SecondsSince(t) < 20)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  };
  // Watches the NFS port: `down` once a connection is refused.
  std::atomic<bool> stop_watch{false};
  Clock::time_point down_at{};
  std::thread watch([&] {
    const int port = std::atoi(Env("NFS_PORT").c_str());
    while (!stop_watch && !down) {
      int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<uint16_t>(port));
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 && errno == ECONNREFUSED) {
        down_at = Clock::now();
        down = true;
      }
      ::close(s);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
  auto job = BackupJob::Create(*target, spec);
  ASSERT_OK(job);
  ASSERT_OK((*job)->Start());
  const auto t0 = Clock::now();
  while (!uploading && (*job)->state() == JobState::kInProgress && SecondsSince(t0) < 30)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ((*job)->state(), JobState::kInProgress) << "the backup ended before the outage";
  int rc = 0;
  std::thread restart([&] { rc = RestartServer(6, dir.Sub("restart.log")); });
  Status st = (*job)->Wait();
  const auto ended = Clock::now();
  const double secs = SecondsSince(t0);
  restart.join();
  stop_watch = true;
  watch.join();
  ASSERT_EQ(rc, 0) << ReadAll(dir.Sub("restart.log"));
  ASSERT_GT(std::atoi(Env("NFS_PORT").c_str()), 0) << "NFS_PORT is not set";
  EXPECT_TRUE(down) << "the NFS port never refused a connection during the restart";
  ShowStatus(st);
  std::cout << "[ TIME     ] backup ended after " << secs << " s" << std::endl;
  EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.ToString();
  // Failed while ganesha was still down (6 s from when its port first refused), bounded by the
  // 2 s timeout once: operations queued behind the first one that gave up count from the
  // outage's start instead of each waiting out another 2 s (which had made it 4, 6 or 8 s).
  if (down) {
    EXPECT_LT(std::chrono::duration<double>(ended - down_at).count(), 2 * 2.0)
        << "the backup outlasted its retry budget";
  }
  auto list = (*target)->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), IsEmpty()) << "a failed backup left a record";
  ASSERT_OK(Backup(*target, "after-outage", vol));
  EXPECT_EQ(RestoreSha(*target, "after-outage", dir), sha);
}

// ganesha restarted (5 s) within the timeout: the backup rides through it on fresh connections
// and completes; or, if it fails, it fails cleanly. Either way the next backup works.
TEST_F(NfsTest, ServerRestartedDuringBackupCompletesOrFailsCleanly) {
  TempDir dir;
  const std::string vol = dir.Sub("disk0.img");
  MakeVolume(vol, 48 * kMiB, 12, kMiB);
  const std::string sha = FileSha256(vol);
  TargetOptions o = Opts();
  o.retry_timeout_seconds = 30;
  auto target = Open(url3_, o);
  ASSERT_OK(target);
  std::atomic<bool> uploading{false};
  BackupSpec spec;
  spec.name = "during-restart";
  spec.vm_metadata_json = "{}";
  spec.volumes.push_back(VolumeSource{"disk0", vol, false, {}});
  spec.progress_interval_ms = 20;
  spec.progress = [&uploading](const Progress& p) {
    if (p.bytes_written > 0) uploading = true;
    const double due = static_cast<double>(p.bytes_scanned) / (8.0 * kMiB);
    if (due > p.elapsed_seconds)
      std::this_thread::sleep_for(std::chrono::duration<double>(due - p.elapsed_seconds));
    return true;
  };
  auto job = BackupJob::Create(*target, spec);
  ASSERT_OK(job);
  ASSERT_OK((*job)->Start());
  const auto t0 = Clock::now();
  while (!uploading && (*job)->state() == JobState::kInProgress && SecondsSince(t0) < 30)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ((*job)->state(), JobState::kInProgress) << "the backup ended before the restart";
  ASSERT_EQ(RestartServer(5, dir.Sub("restart.log")), 0) << ReadAll(dir.Sub("restart.log"));
  Status st = (*job)->Wait();
  const double secs = SecondsSince(t0);
  ShowStatus(st);
  std::cout << "[ TIME     ] backup ended after " << secs << " s" << std::endl;
  ReportPath(st.ok() ? "completed after the restart" : "failed: " + st.ToString());
  EXPECT_LT(secs, 5 + 30 + 15);
  auto fresh = Open(url3_, o);
  ASSERT_OK(fresh);
  auto list = (*fresh)->ListBackups();
  ASSERT_OK(list);
  if (st.ok()) {
    EXPECT_THAT(ListedNames(*list), ElementsAre("during-restart"));
    EXPECT_EQ(RestoreSha(*fresh, "during-restart", dir), sha);
  } else {
    EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.ToString();
    EXPECT_THAT(ListedNames(*list), IsEmpty());
  }
  ScribbleVolume(vol, 8, 64 * 1024, 13);
  ASSERT_OK(Backup(*fresh, "after-restart", vol));
  EXPECT_EQ(RestoreSha(*fresh, "after-restart", dir), FileSha256(vol));
}

// ---- interoperability ---------------------------------------------------------------------------

TEST_F(NfsTest, WhatVmbackupWroteIsReadByNfsLsAndNfsCat) {
  TempDir dir;
  const std::string vol = dir.Sub("disk0.img");
  MakeVolume(vol, 2 * kMiB, 21, 256 * 1024);
  auto target = Open(url3_, Opts());
  ASSERT_OK(target);
  ASSERT_OK(Backup(*target, "interop", vol));
  auto store = Store(url3_);
  ASSERT_OK(store);
  int rc = 0;
  const std::string ls =
      Shell("nfs-ls " + Quote(UrlWithPath(url3_, "/" + prefix_ + "/records")) + " 2>&1", &rc);
  ASSERT_EQ(rc, 0) << ls;
  EXPECT_THAT(ls, HasSubstr("interop.json"));
  auto objects = (*store)->ListAll("");
  ASSERT_OK(objects);
  ASSERT_FALSE(objects->empty());
  int checked = 0;
  for (const auto& o : *objects) {
    if (o.size > 4 * kMiB) continue;
    const std::string cat = Shell(
        "nfs-cat " + Quote(UrlWithPath(url3_, "/" + prefix_ + "/" + o.key)) + " 2>/dev/null", &rc);
    ASSERT_EQ(rc, 0) << o.key;
    auto mine = (*store)->Get(o.key);
    ASSERT_OK(mine);
    EXPECT_EQ(cat.size(), o.size) << o.key;
    EXPECT_TRUE(cat == *mine) << "nfs-cat and vmbackup read different bytes of " << o.key;
    ++checked;
  }
  EXPECT_GE(checked, 3);
  // And the other way: a file written by nfs-cp is an object vmbackup reads.
  const std::string src = dir.Sub("from-nfs-cp");
  ::vmbackup::testing::WriteAll(src, "written by nfs-cp\n");
  Shell("nfs-cp " + Quote(src) + " " + Quote(UrlWithPath(url3_, "/" + prefix_ + "/ext")) + " 2>&1",
        &rc);
  ASSERT_EQ(rc, 0);
  EXPECT_EQ(*(*store)->Get("ext"), "written by nfs-cp\n");
}

}  // namespace
}  // namespace vmbackup::integration
