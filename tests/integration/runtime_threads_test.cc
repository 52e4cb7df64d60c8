// One async core (issue #10): a backup and a restore to a local directory, S3 (radosgw) and NFS
// (ganesha) run on the Runtime's threads only. The threads of the process are counted
// (/proc/self/task) before the Runtime is created, after, and all through the jobs, from the
// progress callback (a Runtime thread) and from the waiting test thread. Any thread a store, the
// engine or a job started of its own shows up as one more than the baseline.
#include <arpa/inet.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <netdb.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include "integration_util.h"
#include "support/test_util.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup::integration {
namespace {

using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::MakeVolume;
using ::vmbackup::testing::TempDir;

// Threads of this process now.
int ThreadsNow() {
  DIR* d = ::opendir("/proc/self/task");
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(d);
  return n;
}

// The most threads seen, from any thread.
struct Peak {
  std::atomic<int> most{0};
  void Sample() {
    const int n = ThreadsNow();
    int m = most.load();
    while (n > m && !most.compare_exchange_weak(m, n)) {
    }
  }
};

// A name of this machine that resolves to 127.0.0.1 (where radosgw listens) and that curl would
// look up itself (not an IP address, not "localhost"): its host name, as Debian's /etc/hosts
// lists it.
StatusOr<std::string> LoopbackHostName() {
  char name[256] = {0};
  if (::gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0')
    return FailedPreconditionError("gethostname failed");
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(name, nullptr, &hints, &res) != 0)
    return FailedPreconditionError(std::string("this machine's name '") + name +
                                   "' does not resolve; the s3-named case needs it to resolve "
                                   "to 127.0.0.1 (add it to /etc/hosts)");
  bool loopback = false;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next)
    loopback |= reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr.s_addr == htonl(0x7f000001);
  ::freeaddrinfo(res);
  if (!loopback)
    return FailedPreconditionError(std::string("this machine's name '") + name +
                                   "' does not resolve to 127.0.0.1 (add it to /etc/hosts)");
  return std::string(name);
}

StatusOr<TargetConfig> ConfigFor(const std::string& kind, const TempDir& dir) {
  if (kind == "s3-named") {
    // The same radosgw, reached by a host name: the name is looked up on the Runtime's blocking
    // pool, not by a resolver thread of curl's.
    StatusOr<TargetConfig> base = ServerTargetConfig("s3");
    if (!base.ok()) return base.status();
    StatusOr<std::string> name = LoopbackHostName();
    if (!name.ok()) return name.status();
    TargetConfig c = *base;
    const size_t at = c.endpoint.find("127.0.0.1");
    if (at == std::string::npos) return FailedPreconditionError("S3 endpoint " + c.endpoint);
    c.endpoint.replace(at, 9, *name);
    return c;
  }
  if (kind != "local") return ServerTargetConfig(kind == "nfs" ? "nfs3" : kind);
  TargetConfig c;
  c.type = TargetConfig::Type::kFile;
  c.endpoint = dir.Sub("target");
  if (::mkdir(c.endpoint.c_str(), 0700) != 0) return InternalError("mkdir " + c.endpoint);
  return c;
}

class RuntimeThreadsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RuntimeThreadsTest, BackupAndRestoreRunOnTheRuntimesThreadsOnly) {
  TempDir dir;
  const std::string vol = dir.Sub("disk0.img");
  MakeVolume(vol, 24 << 20, 31, 1 << 20);
  auto config = ConfigFor(GetParam(), dir);
  ASSERT_OK(config);

  // ThreadSanitizer starts a thread of its own with the process's first other thread: let it.
  std::thread([] {}).join();
  const int before = ThreadsNow();
  RuntimeOptions ro;
  ro.worker_threads = 2;
  ro.blocking_threads = 3;
  ro.io_threads = 1;
  ro.job_threads = 2;
  auto rt = Runtime::Create(ro);
  const int baseline = ThreadsNow();
  ASSERT_EQ(baseline - before, rt->thread_count())
      << "the Runtime started other threads than it reports";
  ASSERT_EQ(rt->thread_count(), 2 + 3 + 1 + 2);

  Peak peak;
  peak.Sample();
  {
    TargetOptions o;
    o.runtime = rt;
    o.retry_timeout_seconds = 30;
    o.max_requests_in_flight = 8;
    auto target = BackupTarget::Open(*config, o);
    ASSERT_OK(target);
    peak.Sample();

    BackupSpec spec;
    spec.name = "threads";
    spec.vm_metadata_json = "{}";
    spec.volumes.push_back(VolumeSource{"disk0", vol, false, {}});
    spec.progress_interval_ms = 1;
    spec.progress = [&peak](const Progress&) {
      peak.Sample();
      return true;
    };
    auto job = BackupJob::Create(*target, spec);
    ASSERT_OK(job);
    ASSERT_OK((*job)->Start());
    std::optional<Status> done;
    while (!(done = (*job)->WaitFor(std::chrono::milliseconds(2)))) peak.Sample();
    ASSERT_OK(*done);

    RestoreSpec rs;
    rs.backup = "threads";
    rs.dest_dir = dir.Sub("restored");
    ASSERT_EQ(::mkdir(rs.dest_dir.c_str(), 0755), 0);
    rs.progress_interval_ms = 1;
    rs.progress = spec.progress;
    auto plan = RestorePlan::Create(*target, rs);
    ASSERT_OK(plan);
    ASSERT_OK((*plan)->Start());
    while (!(done = (*plan)->WaitFor(std::chrono::milliseconds(2)))) peak.Sample();
    ASSERT_OK(*done);
    EXPECT_EQ(FileSha256(dir.Sub("restored/disk0.img")), FileSha256(vol));
    auto list = (*target)->ListBackups();
    ASSERT_OK(list);
    peak.Sample();
  }
  std::cout << "[ THREADS  ] before the Runtime " << before << ", with it " << baseline
            << ", most during the jobs " << peak.most.load() << std::endl;
  EXPECT_LE(peak.most.load(), baseline)
      << "a thread besides the Runtime's ran during the backup or the restore";
  EXPECT_GE(peak.most.load(), baseline);
}

// The strict form, for NFS and for S3 reached by a host name: a backup and a restore in a child
// process (vmbackup_integ_helper --no-new-threads 1) in which no thread may start once its Runtime
// exists: a seccomp filter fails every clone() of a thread, so a thread the store or the engine
// started even for a moment (a libcurl resolver thread, say) fails the job (sampling
// /proc/self/task above could miss one that lived between two samples).
class RuntimeThreadsStrictTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RuntimeThreadsStrictTest, BackupAndRestoreStartNoThreadAtAll) {
  std::string json;
  if (GetParam() == "nfs") {
    const std::string url = Env("NFS_URL_V3");
    ASSERT_FALSE(url.empty()) << "the NFS test server is not running (NFS_URL_V3 is not set); "
                                 "eval \"$(bash scripts/nfs-server.sh start)\"";
    json = R"({"type":"nfs","endpoint":")" + url + R"(","prefix":"strict-threads-)" + RandomHex(6) +
           R"("})";
  } else {
    TempDir unused;
    auto c = ConfigFor("s3-named", unused);
    ASSERT_OK(c);
    json = R"({"type":"s3","endpoint":")" + c->endpoint + R"(","bucketName":")" + c->bucket_name +
           R"(","bucketRegion":"us-east-1","accessKeyId":")" + c->access_key_id +
           R"(","secretAccessKey":")" + c->secret_access_key +
           R"(","allowInsecureHttp":true,"prefix":"strict-threads-)" + RandomHex(6) + R"("})";
  }
  TempDir dir;
  const std::string vol = dir.Sub("disk0.img");
  MakeVolume(vol, 12 << 20, 37, 1 << 20);
  int rc = 0;
  std::string out =
      Shell(Quote(HelperPath()) + " backup --target-json " + Quote(json) +
                " --name strict --no-new-threads 1 --volume disk0=" + Quote(vol) + " 2>&1",
            &rc);
  EXPECT_EQ(rc, 0) << out;
  ASSERT_NE(out.find("result OK"), std::string::npos) << out;
  const std::string restored = dir.Sub("restored.img");
  out = Shell(Quote(HelperPath()) + " restore --target-json " + Quote(json) +
                  " --name strict --no-new-threads 1 --dest disk0=" + Quote(restored) + " 2>&1",
              &rc);
  EXPECT_EQ(rc, 0) << out;
  ASSERT_NE(out.find("result OK"), std::string::npos) << out;
  EXPECT_EQ(FileSha256(restored), FileSha256(vol));
}

INSTANTIATE_TEST_SUITE_P(Targets, RuntimeThreadsStrictTest, ::testing::Values("nfs", "s3-named"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& c : n) c = c == '-' ? '_' : c;
                           return n;
                         });

INSTANTIATE_TEST_SUITE_P(Targets, RuntimeThreadsTest,
                         ::testing::Values("local", "s3", "s3-named", "nfs"), [](const auto& info) {
                           std::string n = info.param;
                           for (auto& c : n) c = c == '-' ? '_' : c;
                           return n;
                         });

}  // namespace
}  // namespace vmbackup::integration
