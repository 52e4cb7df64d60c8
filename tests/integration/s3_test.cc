// The S3 target against a real server: Ceph radosgw started by scripts/s3-server.sh
// (scripts/test.sh starts it and exports its environment before ctest). Round trips through the
// public API in path style over HTTP and TLS and virtual-hosted style over TLS; credential, bucket,
// TLS and network errors; radosgw killed and restarted during a backup; interoperability with the
// aws CLI; a repository written by one process and read by another; a corrupted pack on S3;
// multipart upload; listing pagination and batched deletes.
//
// Every test works under its own key prefix ("t-<test>-<random>") and deletes it at the end, so
// tests never see each other's objects. The tests share one radosgw; the restart test stops it for
// a few seconds, so CMake gives all of them one RESOURCE_LOCK.
//
// Without a server (S3_ENDPOINT unset) every test FAILS with a message saying how to start one.
#include <arpa/inet.h>
#include <curl/curl.h>
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <csignal>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

#include "integration_util.h"
#include "repo/format.h"
#include "store/s3/s3_store.h"
#include "target/store_factory.h"

namespace vmbackup::integration {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::UnorderedElementsAre;
using ::vmbackup::testing::FileExists;
using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::MakeVolume;
using ::vmbackup::testing::ReadAll;
using ::vmbackup::testing::ScribbleVolume;
using ::vmbackup::testing::TempDir;
using ::vmbackup::testing::WriteAll;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMiB = 1024 * 1024;

std::string JsonStr(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        out += c;
    }
  }
  return out + "\"";
}

// Harvester's backup-target setting for `c` (what a host passes to BackupTarget::Open).
std::string ConfigJson(const TargetConfig& c) {
  std::string j = R"({"type":"s3","endpoint":)" + JsonStr(c.endpoint) + R"(,"bucketName":)" +
                  JsonStr(c.bucket_name) + R"(,"bucketRegion":"us-east-1")";
  if (!c.access_key_id.empty()) j += R"(,"accessKeyId":)" + JsonStr(c.access_key_id);
  if (!c.secret_access_key.empty()) j += R"(,"secretAccessKey":)" + JsonStr(c.secret_access_key);
  if (!c.cert.empty()) j += R"(,"cert":)" + JsonStr(c.cert);
  j += std::string(R"(,"virtualHostedStyle":)") + (c.virtual_hosted_style ? "true" : "false");
  if (c.allow_insecure_http) j += R"(,"allowInsecureHttp":true)";
  if (!c.prefix.empty()) j += R"(,"prefix":)" + JsonStr(c.prefix);
  return j + "}";
}

// The server the environment describes.
struct S3Server {
  std::string endpoint;             // S3_ENDPOINT: https when started with --tls
  std::string http_endpoint;        // S3_HTTP_ENDPOINT: plain HTTP
  std::string vhost_endpoint;       // S3_VHOST_ENDPOINT: https://<bucket>.localhost:<port>
  std::string vhost_base_endpoint;  // https://localhost:<port>
  std::string bucket, access_key, secret_key, ca_path, ca_pem, state_dir;

  // "" when usable, else what is missing and how to fix it.
  std::string Load() {
    endpoint = Env("S3_ENDPOINT");
    if (endpoint.empty()) {
      return "the S3 test server is not running: S3_ENDPOINT is not set. Start radosgw and export "
             "its environment with\n    eval \"$(bash scripts/s3-server.sh start --tls)\"\n"
             "(from the repository root), then run ctest again. scripts/test.sh does both.";
    }
    http_endpoint = Env("S3_HTTP_ENDPOINT");
    vhost_endpoint = Env("S3_VHOST_ENDPOINT");
    bucket = Env("S3_BUCKET");
    access_key = Env("AWS_ACCESS_KEY_ID");
    secret_key = Env("AWS_SECRET_ACCESS_KEY");
    ca_path = Env("S3_CA_CERT");
    state_dir = Env("S3_STATE_DIR");
    if (http_endpoint.empty() || bucket.empty() || access_key.empty() || secret_key.empty() ||
        state_dir.empty()) {
      return "S3_ENDPOINT is set but S3_HTTP_ENDPOINT, S3_BUCKET, AWS_ACCESS_KEY_ID, "
             "AWS_SECRET_ACCESS_KEY or S3_STATE_DIR is not: export the whole output of "
             "'bash scripts/s3-server.sh env'";
    }
    if (endpoint.rfind("https://", 0) != 0 || ca_path.empty()) {
      return "the S3 test server runs without TLS (S3_ENDPOINT=" + endpoint +
             ", S3_CA_CERT unset); these tests need both: 'bash scripts/s3-server.sh stop' and "
             "eval \"$(bash scripts/s3-server.sh start --tls)\"";
    }
    // S3_VHOST_ENDPOINT is https://<bucket>.localhost:<port>; the setting's endpoint is the same
    // without "<bucket>.".
    const std::string bucket_dot = "://" + bucket + ".";
    const auto at = vhost_endpoint.find(bucket_dot);
    if (at == std::string::npos)
      return "S3_VHOST_ENDPOINT=" + vhost_endpoint + " does not start with <scheme>://" + bucket +
             ".";
    vhost_base_endpoint =
        vhost_endpoint.substr(0, at) + "://" + vhost_endpoint.substr(at + bucket_dot.size());
    ca_pem = ReadAll(ca_path);
    if (ca_pem.find("BEGIN CERTIFICATE") == std::string::npos)
      return "S3_CA_CERT=" + ca_path + " holds no PEM certificate";
    return "";
  }
};

enum class Addressing { kPathHttp, kPathTls, kVirtualHostedTls };

std::string AddressingName(Addressing a) {
  switch (a) {
    case Addressing::kPathHttp:
      return "PathStyleHttp";
    case Addressing::kPathTls:
      return "PathStyleTlsWithCert";
    case Addressing::kVirtualHostedTls:
      return "VirtualHostedTlsWithCert";
  }
  return "?";
}

class S3Test : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = srv_.Load();
    ASSERT_TRUE(why.empty()) << why;
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (char& c : name)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '-';
    prefix_ = "t-" + name.substr(0, 60) + "-" + RandomHex(8);
    loaded_ = true;
  }

  void TearDown() override {
    if (!loaded_) return;
    // Delete everything under the prefix, and check that nothing is left.
    auto store = Store();
    if (!store.ok()) {
      ADD_FAILURE() << "cleanup of " << prefix_ << ": " << store.status().ToString();
      return;
    }
    auto all = (*store)->ListAll("");
    ASSERT_OK(all);
    std::vector<std::string> keys;
    for (const auto& o : *all) keys.push_back(o.key);
    EXPECT_OK((*store)->Delete(keys));
    auto left = (*store)->ListAll("");
    ASSERT_OK(left);
    EXPECT_THAT(*left, IsEmpty()) << "objects left under " << prefix_;
  }

  TargetConfig Config(Addressing a = Addressing::kPathHttp) const {
    TargetConfig c;
    c.type = TargetConfig::Type::kS3;
    c.bucket_name = srv_.bucket;
    c.bucket_region = "us-east-1";
    c.access_key_id = srv_.access_key;
    c.secret_access_key = srv_.secret_key;
    c.prefix = prefix_;
    switch (a) {
      case Addressing::kPathHttp:
        c.endpoint = srv_.http_endpoint;
        c.allow_insecure_http = true;  // radosgw's plain HTTP port, on loopback
        break;
      case Addressing::kPathTls:
        c.endpoint = srv_.endpoint;
        c.cert = srv_.ca_pem;
        break;
      case Addressing::kVirtualHostedTls:
        // The endpoint without the bucket: the library puts "<bucket>." in front of its host.
        c.endpoint = srv_.vhost_base_endpoint;
        c.cert = srv_.ca_pem;
        c.virtual_hosted_style = true;
        break;
    }
    return c;
  }

  static TargetOptions Opts() {
    TargetOptions o = SmallRepo();  // 64 KiB blocks, 1 MiB packs
    o.retry_timeout_seconds = 60;
    return o;
  }

  StatusOr<std::shared_ptr<BackupTarget>> Open(Addressing a = Addressing::kPathHttp,
                                               const TargetOptions& o = Opts()) const {
    return BackupTarget::Open(ConfigJson(Config(a)), o);
  }

  // The internal object store on the same prefix (plain HTTP, path style).
  StatusOr<std::unique_ptr<internal::ObjectStore>> Store(int retry_seconds = 60) const {
    TargetOptions o;
    o.retry_timeout_seconds = retry_seconds;
    return internal::OpenS3Store(Config(), o, Runtime::Default());
  }

  // The internal object store on the same prefix with fault-injection hooks.
  StatusOr<std::unique_ptr<internal::ObjectStore>> StoreWithHooks(internal::S3TestHooks hooks) {
    TargetOptions o;
    o.retry_timeout_seconds = 60;
    return internal::OpenS3Store(Config(), o, Runtime::Default(), std::move(hooks));
  }

  // The message of `st` must not contain any secret.
  void ExpectNoSecret(const Status& st, const std::vector<std::string>& extra = {}) const {
    std::vector<std::string> secrets = extra;
    secrets.push_back(srv_.secret_key);
    for (const auto& s : secrets) {
      if (s.empty()) continue;
      EXPECT_THAT(st.message(), Not(HasSubstr(s))) << "a secret leaked into an error message";
    }
  }

  // aws CLI with the server's plain HTTP endpoint (credentials come from the exported AWS_*).
  std::string Aws(const std::string& args, int* rc) const {
    return Shell("aws --endpoint-url " + Quote(srv_.http_endpoint) + " " + args + " 2>>" +
                     Quote(aws_log_.Sub("aws.err")),
                 rc);
  }
  std::string AwsErrors() const { return ReadAll(aws_log_.Sub("aws.err")); }
  std::string S3Url(const std::string& key = "") const {
    return "s3://" + srv_.bucket + "/" + prefix_ + "/" + key;
  }

  S3Server srv_;
  std::string prefix_;
  bool loaded_ = false;
  TempDir aws_log_;
};

StatusOr<BackupInfo> Backup(const std::shared_ptr<BackupTarget>& target, const std::string& name,
                            const std::string& path, const std::string& parent = "",
                            const std::vector<std::pair<uint64_t, uint64_t>>* dirty = nullptr,
                            Progress* progress = nullptr) {
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
  if (progress != nullptr) *progress = (*job)->progress();
  if (!st.ok()) return st;
  return (*job)->result();
}

std::vector<std::string> Keys(const std::vector<internal::ObjectInfo>& objs) {
  std::vector<std::string> out;
  for (const auto& o : objs) out.push_back(o.key);
  return out;
}

// ---- 1. round trips through the public API ----------------------------------------------------

class S3RoundTripTest : public S3Test, public ::testing::WithParamInterface<Addressing> {};

TEST_P(S3RoundTripTest, FullIncrementalDirtyMapRestoreListShowDelete) {
  ReportPath(AddressingName(GetParam()));
  TempDir dir;
  const std::string vol = dir.Sub("disk0.img");
  const uint64_t size = 24 * kMiB;
  MakeVolume(vol, size, 7, kMiB);  // random, compressible, zero, hole regions of 1 MiB

  auto target = Open(GetParam());
  ASSERT_OK(target);
  ASSERT_OK((*target)->Test());

  // Full backup.
  auto full = Backup(*target, "full", vol);
  ASSERT_OK(full);
  const std::string sha_full = FileSha256(vol);
  EXPECT_EQ(full->bytes_total, size);
  EXPECT_EQ(full->bytes_new, 12 * kMiB) << "6 random + 6 compressible regions are data";
  EXPECT_LT(full->bytes_stored, 12 * kMiB) << "the compressible regions compress";

  // Incremental after 16 scattered 4 KiB writes: only the touched 64 KiB blocks are new.
  ScribbleVolume(vol, 16, 4096, 8);
  const std::string sha_incr = FileSha256(vol);
  auto incr = Backup(*target, "incr", vol, "full");
  ASSERT_OK(incr);
  EXPECT_GT(incr->bytes_new, 0u);
  EXPECT_LE(incr->bytes_new, 16u * 2 * 64 * 1024) << "more than the touched blocks were stored";
  EXPECT_GE(incr->bytes_reused, 10 * kMiB);

  // Dirty-map backup: only the ranges written since "incr" are read.
  auto ranges = ScribbleVolume(vol, 8, 8192, 9);
  const std::string sha_dirty = FileSha256(vol);
  Progress p;
  auto dirty = Backup(*target, "dirty", vol, "incr", &ranges, &p);
  ASSERT_OK(dirty);
  EXPECT_LE(dirty->bytes_new, 8u * 2 * 64 * 1024);
  EXPECT_LE(p.bytes_read, 8u * 2 * 64 * 1024) << "a dirty-map backup read outside the map";
  EXPECT_EQ(dirty->parent, "incr");

  // A target opened afresh (no cached state) lists, shows and restores all three.
  auto fresh = Open(GetParam());
  ASSERT_OK(fresh);
  EXPECT_EQ((*fresh)->repository_id(), (*target)->repository_id());
  EXPECT_EQ((*fresh)->block_size(), 64u * 1024);
  auto list = (*fresh)->ListBackups();
  ASSERT_OK(list);
  // Sorted by created_at, which has one-second resolution (ties by name): check the set, and the
  // order against the records' own timestamps.
  EXPECT_THAT(ListedNames(*list), UnorderedElementsAre("full", "incr", "dirty"));
  for (size_t i = 1; i < list->backups.size(); ++i) {
    EXPECT_LE(std::tie(list->backups[i - 1].created_at, list->backups[i - 1].name),
              std::tie(list->backups[i].created_at, list->backups[i].name));
  }
  EXPECT_THAT(list->damaged, IsEmpty());
  auto shown = (*fresh)->GetBackup("incr");
  ASSERT_OK(shown);
  EXPECT_EQ(shown->parent, "full");
  EXPECT_EQ(shown->state, "Ready");
  EXPECT_EQ(shown->vm_name, "vm1");
  ASSERT_EQ(shown->volumes.size(), 1u);
  EXPECT_EQ(shown->volumes[0].name, "disk0");
  EXPECT_EQ(shown->volumes[0].size, size);
  EXPECT_EQ(shown->bytes_new, incr->bytes_new);

  EXPECT_EQ(RestoreSha(*fresh, "full", dir), sha_full);
  EXPECT_EQ(RestoreSha(*fresh, "incr", dir), sha_incr);
  EXPECT_EQ(RestoreSha(*fresh, "dirty", dir), sha_dirty);

  // What is on the bucket: the layout of docs/FORMAT.md under the prefix, no probe left by Test().
  auto store = Store();
  ASSERT_OK(store);
  auto records = (*store)->ListAll("records/");
  ASSERT_OK(records);
  EXPECT_THAT(Keys(*records),
              ElementsAre("records/dirty.json", "records/full.json", "records/incr.json"));
  auto probes = (*store)->ListAll("probe/");
  ASSERT_OK(probes);
  EXPECT_THAT(Keys(*probes), IsEmpty()) << "Test() left its probe object";
  auto repo = (*store)->Head("repository.json");
  EXPECT_OK(repo);

  // Delete: the record and the volume indexes go; the other backups stay restorable.
  ASSERT_OK((*fresh)->DeleteBackup("incr"));
  EXPECT_THAT((*fresh)->GetBackup("incr"), StatusIs(StatusCode::kNotFound, "incr"));
  EXPECT_THAT((*fresh)->DeleteBackup("incr"), StatusIs(StatusCode::kNotFound, "incr"));
  list = (*target)->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), UnorderedElementsAre("full", "dirty"));
  auto vidx = (*store)->ListAll("volumes/incr/");
  ASSERT_OK(vidx);
  EXPECT_THAT(Keys(*vidx), IsEmpty());
  EXPECT_EQ(RestoreSha(*target, "dirty", dir), sha_dirty);
  EXPECT_EQ(RestoreSha(*target, "full", dir), sha_full);
}

INSTANTIATE_TEST_SUITE_P(Addressing, S3RoundTripTest,
                         ::testing::Values(Addressing::kPathHttp, Addressing::kPathTls,
                                           Addressing::kVirtualHostedTls),
                         [](const ::testing::TestParamInfo<Addressing>& i) {
                           return AddressingName(i.param);
                         });

// ---- 2. errors ---------------------------------------------------------------------------------

TEST_F(S3Test, WrongSecretIsPermissionDeniedAtOnceNamingCodeAndRequestId) {
  for (Addressing a : {Addressing::kPathHttp, Addressing::kPathTls}) {
    SCOPED_TRACE(AddressingName(a));
    TargetConfig c = Config(a);
    const std::string wrong = "wrong-" + srv_.secret_key.substr(6) + "-x";
    c.secret_access_key = wrong;
    TargetOptions o = Opts();  // 60 s retry budget: a retry storm would show in the time
    const auto t0 = Clock::now();
    auto t = BackupTarget::Open(ConfigJson(c), o);
    const double secs = SecondsSince(t0);
    ShowStatus(t);
    EXPECT_THAT(t, StatusIs(StatusCode::kPermissionDenied, "SignatureDoesNotMatch"));
    EXPECT_THAT(t.status().message(), HasSubstr("request id"));
    EXPECT_THAT(t.status().message(), HasSubstr("secretAccessKey")) << "says what to check";
    EXPECT_LT(secs, 10.0) << "403 SignatureDoesNotMatch must not be retried";
    ExpectNoSecret(t.status(), {wrong});
  }
}

TEST_F(S3Test, WrongAccessKeyIsPermissionDeniedNamingInvalidAccessKeyId) {
  TargetConfig c = Config();
  c.access_key_id = "VMBACKUPNOSUCHKEY999";
  const auto t0 = Clock::now();
  auto t = BackupTarget::Open(ConfigJson(c), Opts());
  const double secs = SecondsSince(t0);
  ShowStatus(t);
  EXPECT_THAT(t, StatusIs(StatusCode::kPermissionDenied, "InvalidAccessKeyId"));
  EXPECT_THAT(t.status().message(), HasSubstr("request id"));
  EXPECT_THAT(t.status().message(), HasSubstr("accessKeyId"));
  EXPECT_LT(secs, 10.0);
  ExpectNoSecret(t.status());
}

TEST_F(S3Test, MissingBucketIsNotFoundNamingTheBucket) {
  TargetConfig c = Config();
  c.bucket_name = "vmbackup-no-such-bucket-" + RandomHex(6);
  const auto t0 = Clock::now();
  auto t = BackupTarget::Open(ConfigJson(c), Opts());
  const double secs = SecondsSince(t0);
  ShowStatus(t);
  EXPECT_THAT(t, StatusIs(StatusCode::kNotFound, c.bucket_name));
  EXPECT_LT(secs, 10.0);
  ExpectNoSecret(t.status());
  // create_if_missing does not create buckets, and the bucket really is not there.
  int rc = 0;
  Aws("s3api head-bucket --bucket " + c.bucket_name + " >/dev/null", &rc);
  EXPECT_NE(rc, 0) << "the library created the missing bucket";
}

TEST_F(S3Test, TlsWithoutCertIsFailedPreconditionMentioningCert) {
  TargetConfig c = Config(Addressing::kPathTls);
  c.cert.clear();
  const auto t0 = Clock::now();
  auto t = BackupTarget::Open(ConfigJson(c), Opts());
  ShowStatus(t);
  EXPECT_THAT(t, StatusIs(StatusCode::kFailedPrecondition, "cert"));
  EXPECT_LT(SecondsSince(t0), 10.0) << "a TLS verification failure must not be retried";
  ExpectNoSecret(t.status());

  // A "cert" that is not the server's CA (any system CA) fails the same way.
  std::string other = ReadAll("/etc/ssl/certs/ca-certificates.crt");
  const auto end = other.find("-----END CERTIFICATE-----");
  if (end != std::string::npos) {
    c.cert = other.substr(0, end + 25) + "\n";
    auto t2 = BackupTarget::Open(ConfigJson(c), Opts());
    ShowStatus(t2);
    EXPECT_THAT(t2, StatusIs(StatusCode::kFailedPrecondition, "cert"));
  }

  // The test-only switch turns verification off (and is the only way without the CA).
  c.cert.clear();
  TargetOptions insecure = Opts();
  insecure.insecure_skip_tls_verify_for_tests_only = true;
  EXPECT_OK(BackupTarget::Open(ConfigJson(c), insecure));
}

TEST_F(S3Test, UnreachableEndpointIsUnavailableWithinTheRetryBudget) {
  // A port nobody listens on: bind an ephemeral port, then close it.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const int port = ntohs(addr.sin_port);
  ::close(fd);

  TargetConfig c = Config();
  c.endpoint = "http://127.0.0.1:" + std::to_string(port);
  TargetOptions o = Opts();
  o.retry_timeout_seconds = 3;
  const auto t0 = Clock::now();
  auto t = BackupTarget::Open(ConfigJson(c), o);
  const double secs = SecondsSince(t0);
  ShowStatus(t);
  std::cout << "[ TIME     ] " << secs << " s" << std::endl;
  EXPECT_THAT(t, StatusIs(StatusCode::kUnavailable, "127.0.0.1:" + std::to_string(port)));
  EXPECT_LT(secs, 10.0) << "the 3 s retry budget was not respected";
  EXPECT_GT(secs, 0.5) << "connection refused is transient: it should be retried for a while";
  ExpectNoSecret(t.status());
}

TEST_F(S3Test, KeysFromEnvironmentAndSecretsNeverPrinted) {
  // No keys in the setting: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (exported by the server
  // script) are used.
  TargetConfig c = Config();
  c.access_key_id.clear();
  c.secret_access_key.clear();
  auto t = BackupTarget::Open(ConfigJson(c), Opts());
  ASSERT_OK(t);
  EXPECT_OK((*t)->Test());
  // The parsed setting prints without the secret.
  auto parsed = ParseTargetConfig(ConfigJson(Config()));
  ASSERT_OK(parsed);
  EXPECT_EQ(parsed->secret_access_key, srv_.secret_key);
  EXPECT_EQ(parsed->prefix, prefix_);
  EXPECT_THAT(parsed->ToRedactedJson(), Not(HasSubstr(srv_.secret_key)));
  EXPECT_THAT(parsed->ToRedactedJson(), HasSubstr(srv_.access_key.substr(0, 4)));
}

// The plain HTTP endpoint of radosgw is refused without the opt-in, before any request.
TEST_F(S3Test, PlainHttpEndpointIsRefusedWithoutAllowInsecureHttp) {
  TargetConfig c = Config(Addressing::kPathHttp);
  c.allow_insecure_http = false;
  auto t = BackupTarget::Open(ConfigJson(c), Opts());
  ShowStatus(t);
  EXPECT_THAT(t, StatusIs(StatusCode::kInvalidArgument, "'allowInsecureHttp'"));
  EXPECT_THAT(internal::OpenS3Store(c, Opts(), Runtime::Default()),
              StatusIs(StatusCode::kInvalidArgument, "'allowInsecureHttp'"));
  c.allow_insecure_http = true;
  EXPECT_OK(BackupTarget::Open(ConfigJson(c), Opts()));
}

// ---- 3. radosgw killed during a backup ---------------------------------------------------------

TEST_F(S3Test, ServerRestartedDuringBackupCompletesOrFailsCleanly) {
  TempDir dir;
  const std::string vol = dir.Sub("disk0.img");
  MakeVolume(vol, 200 * kMiB, 31, 2 * kMiB);  // 100 MiB of data: 50 random, 50 compressible
  const std::string sha = FileSha256(vol);

  // One worker, throttled in the progress callback to about 50 MiB/s, so that the backup is
  // surely still uploading while radosgw is down (about 4.5 s for restart-rgw 3).
  RuntimeOptions ro;
  ro.worker_threads = 1;
  TargetOptions o = Opts();
  o.runtime = Runtime::Create(ro);
  o.pack_size = 4 * kMiB;
  o.retry_timeout_seconds = 60;
  auto target = Open(Addressing::kPathHttp, o);
  ASSERT_OK(target);

  std::atomic<bool> uploading{false};
  BackupSpec spec;
  spec.name = "during-restart";
  spec.vm_metadata_json = "{}";
  spec.volumes.push_back(VolumeSource{"disk0", vol, false, {}});
  spec.progress_interval_ms = 20;
  spec.progress = [&uploading](const Progress& p) {
    if (p.bytes_written > 0) uploading = true;
    const double due = static_cast<double>(p.bytes_scanned) / (50.0 * kMiB);
    if (due > p.elapsed_seconds)
      std::this_thread::sleep_for(std::chrono::duration<double>(due - p.elapsed_seconds));
    return true;
  };
  auto job = BackupJob::Create(*target, spec);
  ASSERT_OK(job);
  ASSERT_OK((*job)->Start());
  const auto t0 = Clock::now();
  while (!uploading && (*job)->state() == JobState::kInProgress && SecondsSince(t0) < 60)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const bool in_flight = (*job)->state() == JobState::kInProgress;
  const Progress at_kill = (*job)->progress();

  const std::string script = std::string(VMBACKUP_SOURCE_DIR) + "/scripts/s3-server.sh";
  const std::string log = dir.Sub("restart.log");
  const auto t1 = Clock::now();
  const int rc = std::system(("VMBACKUP_S3_STATE_DIR=" + Quote(srv_.state_dir) + " bash " +
                              Quote(script) + " restart-rgw 3 >" + Quote(log) + " 2>&1")
                                 .c_str());
  const double outage = SecondsSince(t1);
  ASSERT_EQ(rc, 0) << "restart-rgw failed:\n" << ReadAll(log);

  Status st = (*job)->Wait();
  const double total = SecondsSince(t0);
  ShowStatus(st);
  std::cout << "[ TIME     ] radosgw restart took " << outage << " s; backup took " << total
            << " s; at the kill: " << at_kill.bytes_scanned / kMiB << " MiB scanned, "
            << at_kill.bytes_written / kMiB << " MiB written" << std::endl;
  ASSERT_TRUE(in_flight) << "the backup ended before radosgw was stopped; nothing was tested";
  ReportPath(st.ok() ? "completed through retries" : "failed: " + st.ToString());
  ExpectNoSecret(st);

  auto fresh = Open(Addressing::kPathHttp, o);
  ASSERT_OK(fresh);
  auto list = (*fresh)->ListBackups();
  ASSERT_OK(list);
  if (st.ok()) {
    EXPECT_THAT(ListedNames(*list), ElementsAre("during-restart"));
    EXPECT_EQ(RestoreSha(*fresh, "during-restart", dir), sha);
  } else {
    EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.ToString();
    EXPECT_THAT(ListedNames(*list), IsEmpty()) << "a failed backup left a record";
    EXPECT_THAT((*fresh)->GetBackup("during-restart"), StatusIs(StatusCode::kNotFound, ""));
  }
  // Every listed backup is restorable, and a following backup works and restores.
  ScribbleVolume(vol, 8, 64 * 1024, 32);
  const std::string sha2 = FileSha256(vol);
  auto next = Backup(*fresh, "after-restart", vol);
  ASSERT_OK(next);
  EXPECT_EQ(RestoreSha(*fresh, "after-restart", dir), sha2);
}

// radosgw down for longer than the retry budget: the backup fails with kUnavailable and leaves no
// record; once the server is back a new backup works.
TEST_F(S3Test, ServerDownLongerThanRetryBudgetFailsCleanlyWithoutRecord) {
  TempDir dir;
  const std::string vol = dir.Sub("disk0.img");
  MakeVolume(vol, 64 * kMiB, 33, kMiB);
  const std::string sha = FileSha256(vol);
  RuntimeOptions ro;
  ro.worker_threads = 1;
  TargetOptions o = Opts();
  o.runtime = Runtime::Create(ro);
  o.pack_size = 4 * kMiB;
  o.retry_timeout_seconds = 3;
  auto target = Open(Addressing::kPathHttp, o);
  ASSERT_OK(target);

  const std::string script = std::string(VMBACKUP_SOURCE_DIR) + "/scripts/s3-server.sh";
  const std::string log = dir.Sub("rgw.log");
  auto rgw = [&](const std::string& what) {
    return std::system(("VMBACKUP_S3_STATE_DIR=" + Quote(srv_.state_dir) + " bash " +
                        Quote(script) + " " + what + " >>" + Quote(log) + " 2>&1")
                           .c_str());
  };
  // Whatever happens below, radosgw runs again when the test ends.
  struct Restart {
    std::function<int(const std::string&)> f;
    ~Restart() { f("start-rgw"); }
  } restart{rgw};

  std::atomic<bool> uploading{false};
  BackupSpec spec;
  spec.name = "while-down";
  spec.vm_metadata_json = "{}";
  spec.volumes.push_back(VolumeSource{"disk0", vol, false, {}});
  spec.progress_interval_ms = 20;
  spec.progress = [&uploading](const Progress& p) {
    if (p.bytes_written > 0) uploading = true;
    const double due = static_cast<double>(p.bytes_scanned) / (20.0 * kMiB);
    if (due > p.elapsed_seconds)
      std::this_thread::sleep_for(std::chrono::duration<double>(due - p.elapsed_seconds));
    return true;
  };
  auto job = BackupJob::Create(*target, spec);
  ASSERT_OK(job);
  ASSERT_OK((*job)->Start());
  const auto t0 = Clock::now();
  while (!uploading && (*job)->state() == JobState::kInProgress && SecondsSince(t0) < 60)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ((*job)->state(), JobState::kInProgress) << "the backup ended before radosgw stopped";
  ASSERT_EQ(rgw("stop-rgw"), 0) << ReadAll(log);
  const auto t1 = Clock::now();
  Status st = (*job)->Wait();
  const double secs = SecondsSince(t1);
  ShowStatus(st);
  std::cout << "[ TIME     ] failed " << secs << " s after radosgw stopped" << std::endl;
  EXPECT_THAT(st, StatusIs(StatusCode::kUnavailable, ""));
  // Bounded by the 3 s budget once, not once per queued request: requests that start after the
  // first gave up count from the outage's start.
  EXPECT_LT(secs, 2 * 3.0) << "the backup outlasted its retry budget";
  EXPECT_EQ((*job)->state(), JobState::kError);
  ExpectNoSecret(st);
  ASSERT_EQ(rgw("start-rgw"), 0) << ReadAll(log);

  auto fresh = Open(Addressing::kPathHttp, Opts());
  ASSERT_OK(fresh);
  auto list = (*fresh)->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), IsEmpty()) << "a failed backup published a record";
  EXPECT_THAT((*fresh)->GetBackup("while-down"), StatusIs(StatusCode::kNotFound, ""));
  // The same name is free again, and the backup restores.
  auto again = Backup(*fresh, "while-down", vol);
  ASSERT_OK(again);
  EXPECT_EQ(RestoreSha(*fresh, "while-down", dir), sha);
}

// Two hosts publish a backup of the same name at the same time: one record, the other job fails
// with kAlreadyExists, and the record restores the winner's bytes.
TEST_F(S3Test, ConcurrentBackupsOfOneNamePublishExactlyOneRecord) {
  TempDir dir;
  const std::string vol_a = dir.Sub("a.img"), vol_b = dir.Sub("b.img");
  MakeVolume(vol_a, 8 * kMiB, 61, 512 * 1024);
  MakeVolume(vol_b, 8 * kMiB, 62, 512 * 1024);
  auto ta = Open();
  ASSERT_OK(ta);
  auto tb = Open();
  ASSERT_OK(tb);
  auto make = [](const std::shared_ptr<BackupTarget>& t, const std::string& vol) {
    BackupSpec spec;
    spec.name = "same-name";
    spec.vm_metadata_json = "{}";
    spec.volumes.push_back(VolumeSource{"disk0", vol, false, {}});
    return BackupJob::Create(t, spec);
  };
  auto ja = make(*ta, vol_a);
  ASSERT_OK(ja);
  auto jb = make(*tb, vol_b);
  ASSERT_OK(jb);
  ASSERT_OK((*ja)->Start());
  ASSERT_OK((*jb)->Start());
  Status sa = (*ja)->Wait(), sb = (*jb)->Wait();
  ShowStatus(sa);
  ShowStatus(sb);
  ASSERT_NE(sa.ok(), sb.ok()) << "exactly one of the two must publish: " << sa.ToString() << " / "
                              << sb.ToString();
  const Status& loser = sa.ok() ? sb : sa;
  EXPECT_THAT(loser, StatusIs(StatusCode::kAlreadyExists, "same-name"));
  auto list = (*ta)->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ElementsAre("same-name"));
  EXPECT_EQ(RestoreSha(*ta, "same-name", dir), FileSha256(sa.ok() ? vol_a : vol_b));
}

// ---- 4. interoperability with the aws CLI
// --------------------------------------------------------

TEST_F(S3Test, ObjectsWrittenByVmbackupAreListedAndReadByAwsCli) {
  int rc = 0;
  Shell("command -v aws >/dev/null 2>&1", &rc);
  ASSERT_EQ(rc, 0) << "the aws CLI is not on PATH (pip install awscli, or the pyenv python3)";

  TempDir dir;
  const std::string vol = dir.Sub("disk0.img");
  MakeVolume(vol, 6 * kMiB, 17, 512 * 1024);
  auto target = Open();
  ASSERT_OK(target);
  ASSERT_OK(Backup(*target, "interop", vol));
  auto store = Store();
  ASSERT_OK(store);
  auto objs = (*store)->ListAll("");
  ASSERT_OK(objs);
  std::map<std::string, uint64_t> ours;
  for (const auto& o : *objs) ours[o.key] = o.size;
  ASSERT_GE(ours.size(), 5u);

  // aws s3 ls: the same keys and sizes.
  const std::string ls = Aws("s3 ls --recursive " + Quote(S3Url()), &rc);
  ASSERT_EQ(rc, 0) << AwsErrors();
  std::map<std::string, uint64_t> theirs;
  std::istringstream lines(ls);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream f(line);
    std::string date, time, key;
    uint64_t size = 0;
    if (!(f >> date >> time >> size >> key)) continue;
    ASSERT_EQ(key.rfind(prefix_ + "/", 0), 0u) << line;
    theirs[key.substr(prefix_.size() + 1)] = size;
  }
  EXPECT_EQ(theirs, ours) << ls;

  // aws s3 cp repository.json - : byte for byte what the library reads.
  const std::string repo_cli = Aws("s3 cp " + Quote(S3Url("repository.json")) + " -", &rc);
  ASSERT_EQ(rc, 0) << AwsErrors();
  auto repo_lib = (*store)->Get("repository.json");
  ASSERT_OK(repo_lib);
  EXPECT_EQ(repo_cli, *repo_lib);
  EXPECT_THAT(repo_cli, HasSubstr("vmbackup-repository"));
  EXPECT_THAT(repo_cli, HasSubstr((*target)->repository_id()));

  // Every object downloaded by the CLI equals what the library reads.
  const std::string down = dir.Sub("down");
  Aws("s3 cp --recursive --quiet " + Quote(S3Url()) + " " + Quote(down), &rc);
  ASSERT_EQ(rc, 0) << AwsErrors();
  for (const auto& [key, size] : ours) {
    SCOPED_TRACE(key);
    auto got = (*store)->Get(key);
    ASSERT_OK(got);
    EXPECT_EQ(got->size(), size);
    EXPECT_TRUE(ReadAll(down + "/" + key) == *got) << "aws CLI and vmbackup read different bytes";
  }
  EXPECT_THAT(ReadAll(down + "/records/interop.json"), HasSubstr("interop"));

  // And the other way: an object the CLI uploads (9 MiB: a multipart upload by the CLI) is read
  // by the library.
  const std::string blob = dir.Sub("blob.bin");
  WriteRandomFile(blob, 9 * kMiB + 5, 99);
  Aws("s3 cp --quiet " + Quote(blob) + " " + Quote(S3Url("foreign/blob.bin")), &rc);
  ASSERT_EQ(rc, 0) << AwsErrors();
  auto head = (*store)->Head("foreign/blob.bin");
  ASSERT_OK(head);
  EXPECT_EQ(head->size, 9 * kMiB + 5);
  auto blob_lib = (*store)->Get("foreign/blob.bin");
  ASSERT_OK(blob_lib);
  EXPECT_TRUE(*blob_lib == ReadAll(blob));
  auto part = (*store)->Get("foreign/blob.bin", 8 * kMiB - 3, 10);
  ASSERT_OK(part);
  EXPECT_EQ(*part, ReadAll(blob).substr(8 * kMiB - 3, 10));

  // The backup still restores (the foreign object does not disturb the repository).
  EXPECT_EQ(RestoreSha(*target, "interop", dir), FileSha256(vol));
}

// ---- 5. one process writes, another restores ---------------------------------------------------

TEST_F(S3Test, RepositoryWrittenByOneProcessIsRestoredByAnother) {
  TempDir dir;
  const std::string config = dir.Sub("target.json");
  WriteAll(config, ConfigJson(Config(Addressing::kPathTls)));
  ::chmod(config.c_str(), 0600);
  const std::string vol = dir.Sub("disk0.img");
  MakeVolume(vol, 8 * kMiB, 23, 512 * 1024);
  const std::string sha1 = FileSha256(vol);

  // The child backs up; this process restores.
  {
    HelperProcess child;
    ASSERT_TRUE(child.Start(VMBACKUP_S3_CHILD,
                            {"backup", "--config", config, "--name", "by-child", "--volume", vol},
                            dir.Sub("child-backup.log")));
    const int status = child.Wait();
    auto result = child.Result();
    ASSERT_TRUE(result.has_value()) << ReadAll(dir.Sub("child-backup.log"));
    ASSERT_EQ(result->first, "OK") << result->second;
    EXPECT_EQ(status, 0);
    EXPECT_THAT(ReadAll(dir.Sub("child-backup.log")), Not(HasSubstr(srv_.secret_key)));
  }
  auto target = Open(Addressing::kPathTls);
  ASSERT_OK(target);
  auto info = (*target)->GetBackup("by-child");
  ASSERT_OK(info);
  EXPECT_EQ(info->vm_name, "vm-child");
  EXPECT_EQ(RestoreSha(*target, "by-child", dir), sha1);

  // This process backs up (incremental to the child's backup); the child restores and lists.
  ScribbleVolume(vol, 10, 4096, 24);
  const std::string sha2 = FileSha256(vol);
  auto mine = Backup(*target, "by-parent", vol, "by-child");
  ASSERT_OK(mine);
  EXPECT_GT(mine->bytes_reused, 0u) << "the child's blocks were not deduplicated against";
  const std::string dest = dir.Sub("restored-by-child.img");
  {
    HelperProcess child;
    ASSERT_TRUE(child.Start(VMBACKUP_S3_CHILD,
                            {"restore", "--config", config, "--name", "by-parent", "--dest", dest},
                            dir.Sub("child-restore.log")));
    child.Wait();
    auto result = child.Result();
    ASSERT_TRUE(result.has_value()) << ReadAll(dir.Sub("child-restore.log"));
    ASSERT_EQ(result->first, "OK") << result->second;
  }
  EXPECT_EQ(FileSha256(dest), sha2);
  {
    HelperProcess child;
    ASSERT_TRUE(
        child.Start(VMBACKUP_S3_CHILD, {"list", "--config", config}, dir.Sub("child-list.log")));
    child.Wait();
    EXPECT_THAT(child.Lines(), Contains("backup by-child"));
    EXPECT_THAT(child.Lines(), Contains("backup by-parent"));
    EXPECT_THAT(child.Lines(), Contains("repository " + (*target)->repository_id()));
  }
}

// ---- 6. a corrupted pack on S3 -----------------------------------------------------------------

TEST_F(S3Test, FlippedByteInPackObjectIsDataLossNamingBackupVolumeOffsetAndPack) {
  TempDir dir;
  const std::string vol1 = dir.Sub("disk1.img"), vol2 = dir.Sub("disk2.img");
  MakeVolume(vol1, 12 * kMiB, 41, 512 * 1024);
  MakeVolume(vol2, 8 * kMiB, 42, 512 * 1024);
  auto target = Open();
  ASSERT_OK(target);
  auto b1 = Backup(*target, "b1", vol1);
  ASSERT_OK(b1);
  auto store = Store();
  ASSERT_OK(store);
  auto b1_indexes = (*store)->ListAll("index/");
  ASSERT_OK(b1_indexes);
  ASSERT_GE(b1_indexes->size(), 3u) << "b1 should span several packs";
  ASSERT_OK(Backup(*target, "b2", vol2));

  // Flip one byte in the middle of a block stored in b1's second pack, on the bucket.
  const std::string idx_key = (*b1_indexes)[1].key;
  const std::string pack_id = internal::PackIdFromIndexKey(idx_key);
  ASSERT_FALSE(pack_id.empty()) << idx_key;
  auto idx = (*store)->Get(idx_key);
  ASSERT_OK(idx);
  auto entries = internal::DecodePackIndex(*idx, pack_id, idx_key);
  ASSERT_OK(entries);
  ASSERT_FALSE(entries->empty());
  const internal::PackEntry victim = (*entries)[entries->size() / 2];
  const std::string pack_key = internal::PackKey(pack_id);
  auto pack = (*store)->Get(pack_key);
  ASSERT_OK(pack);
  std::string damaged = *pack;
  damaged[victim.offset + victim.stored_len / 2] ^= 0x01;
  ASSERT_OK((*store)->Put(pack_key, damaged, internal::PutOptions{}));

  auto vidx_bytes = (*store)->Get(b1->volumes[0].index_key);
  ASSERT_OK(vidx_bytes);
  auto vidx = internal::DecodeVolumeIndex(*vidx_bytes, "vidx");
  ASSERT_OK(vidx);
  std::vector<std::string> where;
  for (uint64_t b = 0; b < vidx->block_count(); ++b)
    if (vidx->kinds[b] == internal::BlockKind::kData && vidx->digests[b] == victim.digest)
      where.push_back("offset " + std::to_string(b * vidx->block_size));
  ASSERT_FALSE(where.empty());

  auto fresh = Open();
  ASSERT_OK(fresh);
  auto list = (*fresh)->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ElementsAre("b1", "b2"));
  const std::string dest = dir.Sub("b1-restored.img");
  Status st = RunRestore(*fresh, "b1", dest);
  ShowStatus(st);
  EXPECT_THAT(st, StatusIs(StatusCode::kDataLoss, "backup 'b1'"));
  EXPECT_THAT(st.message(), HasSubstr("volume 'disk0'"));
  EXPECT_THAT(st.message(), HasSubstr(pack_key));
  bool names_offset = false;
  for (const auto& w : where)
    names_offset = names_offset || st.message().find(w) != std::string::npos;
  EXPECT_TRUE(names_offset) << st.message() << "\nexpected one of "
                            << ::testing::PrintToString(where);
  EXPECT_FALSE(FileExists(dest)) << "a failed restore left a destination file";

  // The other backup is unaffected.
  EXPECT_EQ(RestoreSha(*fresh, "b2", dir), FileSha256(vol2));
}

// ---- 7. multipart upload -----------------------------------------------------------------------

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t x = rng();
    std::memcpy(&s[i], &x, 8);
  }
  for (size_t i = n - n % 8; i < n; ++i) s[i] = static_cast<char>(rng());
  return s;
}

TEST_F(S3Test, MultipartPutAboveThresholdReadsBackAndLeavesNoUploadOpen) {
  auto store = Store();
  ASSERT_OK(store);
  const size_t size = 64 * kMiB + 5 * kMiB + 123;  // above the 64 MiB threshold: 5 parts of 16 MiB
  const std::string data = RandomBytes(size, 71);
  ASSERT_OK((*store)->Put("big/object.bin", data, internal::PutOptions{}));

  auto head = (*store)->Head("big/object.bin");
  ASSERT_OK(head);
  EXPECT_EQ(head->size, size);
  // Above kMaxWholeObjectRead: a whole-object Get is refused (see
  // WholeObjectGetOfObjectAboveTheBoundIsDataLossNamingIt); GetAtMost reads it by range.
  auto all = (*store)->GetAtMost("big/object.bin", size);
  ASSERT_OK(all);
  EXPECT_EQ(all->size(), size);
  EXPECT_TRUE(*all == data) << "multipart object differs from what was put";
  // Range reads: across a part boundary, the last bytes, to the end, the first byte.
  const uint64_t cross = 16 * kMiB - 7;
  auto r1 = (*store)->Get("big/object.bin", cross, 20);
  ASSERT_OK(r1);
  EXPECT_EQ(*r1, data.substr(cross, 20));
  auto r2 = (*store)->Get("big/object.bin", size - 100, 100);
  ASSERT_OK(r2);
  EXPECT_EQ(*r2, data.substr(size - 100));
  auto r3 = (*store)->Get("big/object.bin", size - 4096, 0);
  ASSERT_OK(r3);
  EXPECT_EQ(*r3, data.substr(size - 4096));
  auto r4 = (*store)->Get("big/object.bin", 0, 1);
  ASSERT_OK(r4);
  EXPECT_EQ(*r4, data.substr(0, 1));
  EXPECT_THAT((*store)->Get("big/object.bin", size + 10, 5), StatusIs(StatusCode::kOutOfRange, ""));

  // The async form of a multipart put.
  auto shared = std::make_shared<const std::string>(RandomBytes(65 * kMiB, 72));
  std::promise<Status> done;
  (*store)->PutAsync("big/async.bin", shared, internal::PutOptions{},
                     [&done](Status st) { done.set_value(st); });
  ASSERT_OK(done.get_future().get());
  auto back = (*store)->GetAtMost("big/async.bin", shared->size());
  ASSERT_OK(back);
  EXPECT_TRUE(*back == *shared);

  // Conditional create on an existing (multipart) object.
  EXPECT_THAT((*store)->Put("big/object.bin", "x", internal::PutOptions{true, true}),
              StatusIs(StatusCode::kAlreadyExists, "big/object.bin"));

  // No multipart upload is left open under the prefix.
  int rc = 0;
  const std::string open = Aws("s3api list-multipart-uploads --bucket " + Quote(srv_.bucket) +
                                   " --prefix " + Quote(prefix_ + "/") + " --output json",
                               &rc);
  ASSERT_EQ(rc, 0) << AwsErrors();
  EXPECT_THAT(open, Not(HasSubstr("UploadId"))) << open;
  ASSERT_OK((*store)->Delete({"big/object.bin", "big/async.bin"}));
}

// ---- bounded reads (issue #9) ----------------------------------------------------------------

// A whole-object read of an object above kMaxWholeObjectRead returned all of it (the store
// buffered whatever the server sent). Now it is kDataLoss naming the object and its size, decided
// from the Content-Length before any byte of the body is kept; GetAtMost and ranged reads still
// read it, and an object of exactly the bound is read whole.
TEST_F(S3Test, WholeObjectGetOfObjectAboveTheBoundIsDataLossNamingIt) {
  auto store = Store();
  ASSERT_OK(store);
  const uint64_t bound = internal::kMaxWholeObjectRead;
  {
    const std::string over(bound + kMiB + 3, '\0');  // zeros: cheap to make; a multipart put
    ASSERT_OK((*store)->Put("big/over-bound.bin", over, internal::PutOptions{}));
  }
  auto whole = (*store)->Get("big/over-bound.bin");
  ShowStatus(whole);
  EXPECT_THAT(whole, StatusIs(StatusCode::kDataLoss, "big/over-bound.bin"));
  EXPECT_THAT(whole.status().message(), HasSubstr(std::to_string(bound + kMiB + 3)));
  // To the end from an offset: the same bound applies to what is left.
  EXPECT_THAT((*store)->Get("big/over-bound.bin", kMiB, 0),
              StatusIs(StatusCode::kDataLoss, "big/over-bound.bin"));
  auto tail = (*store)->Get("big/over-bound.bin", 2 * kMiB, 0);
  ASSERT_OK(tail);
  EXPECT_EQ(tail->size(), bound - kMiB + 3);
  // GetAtMost with a larger bound reads it (HEAD + one ranged GET); with a smaller one it refuses.
  auto at_most = (*store)->GetAtMost("big/over-bound.bin", 2 * bound);
  ASSERT_OK(at_most);
  EXPECT_EQ(at_most->size(), bound + kMiB + 3);
  EXPECT_THAT((*store)->GetAtMost("big/over-bound.bin", bound + kMiB),
              StatusIs(StatusCode::kDataLoss, "big/over-bound.bin"));
  // Exactly the bound is still one whole-object read.
  {
    const std::string exact(bound, 'e');
    ASSERT_OK((*store)->Put("big/exact-bound.bin", exact, internal::PutOptions{}));
  }
  auto exact = (*store)->Get("big/exact-bound.bin");
  ASSERT_OK(exact);
  EXPECT_EQ(exact->size(), bound);
  ASSERT_OK((*store)->Delete({"big/over-bound.bin", "big/exact-bound.bin"}));
}

// ---- conditional create (issue #9) ---------------------------------------------------------

bool HasIfNoneMatch(const internal::S3TestHooks::Headers& headers) {
  for (const auto& [name, value] : headers)
    if (strcasecmp(name.c_str(), "If-None-Match") == 0) return true;
  return false;
}

bool EndsWith(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// A record PUT with If-None-Match whose 200 was lost (the connection broke after radosgw had
// committed) was retried, got 412 because of its own first attempt, and failed with
// kAlreadyExists although the record was published: the backup job failed. The hook turns the
// first 200 into a connection reset, which the store retries like any other.
TEST_F(S3Test, CreateIfAbsentWhoseSuccessAnswerWasLostIsRetriedAndReportedOk) {
  std::atomic<int> lost{0};
  internal::S3TestHooks hooks;
  hooks.after_response = [&lost](const std::string& method, const std::string& key,
                                 const internal::S3TestHooks::Headers& headers,
                                 internal::http::Response* r) {
    if (method == "PUT" && HasIfNoneMatch(headers) && EndsWith(key, "records/lost.json") &&
        r->curl_code == 0 && r->status == 200 && lost.fetch_add(1) == 0) {
      r->curl_code = CURLE_RECV_ERROR;
      r->curl_error = "injected: connection reset after the server committed the PUT";
      r->status = 0;
    }
  };
  auto store = StoreWithHooks(hooks);
  ASSERT_OK(store);
  const std::string record = R"({"name":"lost","v":1})";
  Status st = (*store)->Put("records/lost.json", record, internal::PutOptions{true, true});
  ShowStatus(st);
  EXPECT_OK(st);
  // One 200 dropped; the retry met 412 (its own first attempt) and compared the bytes.
  ASSERT_EQ(lost.load(), 1) << "no success answer was dropped: nothing was tested";
  auto back = (*store)->Get("records/lost.json");
  ASSERT_OK(back);
  EXPECT_EQ(*back, record);

  // Other bytes: the key exists, and it is not ours.
  EXPECT_THAT((*store)->Put("records/lost.json", R"({"name":"lost","v":2})",
                            internal::PutOptions{true, true}),
              StatusIs(StatusCode::kAlreadyExists, "records/lost.json"));
  // Our bytes, but no attempt of this call can have written them: still kAlreadyExists.
  EXPECT_THAT((*store)->Put("records/lost.json", record, internal::PutOptions{true, true}),
              StatusIs(StatusCode::kAlreadyExists, "records/lost.json"));
}

// The same when the retried attempt meets another writer's object: the 412 of the first attempt
// is lost, the retry gets 412 too, and the bytes on the bucket are not ours.
TEST_F(S3Test, CreateIfAbsentRetriedOntoAnotherWritersObjectIsAlreadyExists) {
  auto plain = Store();
  ASSERT_OK(plain);
  ASSERT_OK((*plain)->Put("records/taken.json", R"({"writer":"other"})",
                          internal::PutOptions{true, true}));
  std::atomic<int> lost{0};
  internal::S3TestHooks hooks;
  hooks.after_response = [&lost](const std::string& method, const std::string& key,
                                 const internal::S3TestHooks::Headers& headers,
                                 internal::http::Response* r) {
    if (method == "PUT" && HasIfNoneMatch(headers) && EndsWith(key, "records/taken.json") &&
        r->curl_code == 0 && r->status == 412 && lost.fetch_add(1) == 0) {
      r->curl_code = CURLE_RECV_ERROR;
      r->curl_error = "injected: connection reset";
      r->status = 0;
    }
  };
  auto store = StoreWithHooks(hooks);
  ASSERT_OK(store);
  EXPECT_THAT(
      (*store)->Put("records/taken.json", R"({"writer":"me"})", internal::PutOptions{true, true}),
      StatusIs(StatusCode::kAlreadyExists, "records/taken.json"));
  EXPECT_EQ(lost.load(), 2) << "the first 412 was not dropped, or the PUT was not retried";
  auto back = (*plain)->Get("records/taken.json");
  ASSERT_OK(back);
  EXPECT_EQ(*back, R"({"writer":"other"})");
}

// A server that ignores If-None-Match (simulated: a hook strips the header from every request
// before it is signed) accepted every create-if-absent, so two hosts publishing one record name
// overwrote each other. The store probes once and refuses; radosgw itself passes the probe, and
// the probe leaves nothing behind.
TEST_F(S3Test, IfAbsentPutsAreRefusedWhereIfNoneMatchIsNotHonoured) {
  std::atomic<int> stripped{0};
  internal::S3TestHooks hooks;
  hooks.before_sign = [&stripped](const std::string&, const std::string&,
                                  internal::S3TestHooks::Headers* headers) {
    const size_t before = headers->size();
    std::erase_if(*headers,
                  [](const auto& h) { return strcasecmp(h.first.c_str(), "If-None-Match") == 0; });
    stripped += static_cast<int>(before - headers->size());
  };
  auto ignoring = StoreWithHooks(hooks);
  ASSERT_OK(ignoring);
  Status st = (*ignoring)->Put("records/r1.json", "{}", internal::PutOptions{true, true});
  ShowStatus(st);
  EXPECT_THAT(st, StatusIs(StatusCode::kFailedPrecondition,
                           "the S3 server does not honour If-None-Match; vmbackup refuses to "
                           "publish records there because two writers could overwrite each "
                           "other"));
  EXPECT_GE(stripped.load(), 2) << "the probe did not send If-None-Match";
  EXPECT_THAT((*ignoring)->Put("records/r2.json", "{}", internal::PutOptions{true, true}),
              StatusIs(StatusCode::kFailedPrecondition, "If-None-Match"));
  EXPECT_OK((*ignoring)->Put("packs/plain", "data", internal::PutOptions{})) << "plain puts work";

  auto store = Store();
  ASSERT_OK(store);
  auto records = (*store)->ListAll("records/");
  ASSERT_OK(records);
  EXPECT_THAT(Keys(*records), IsEmpty()) << "a record was written without a working condition";
  // radosgw honours If-None-Match: the probe passes, create-if-absent works.
  EXPECT_OK((*store)->Put("records/r1.json", "{}", internal::PutOptions{true, true}));
  EXPECT_THAT((*store)->Put("records/r1.json", "{}", internal::PutOptions{true, true}),
              StatusIs(StatusCode::kAlreadyExists, "records/r1.json"));
  auto probes = (*store)->ListAll("probe/");
  ASSERT_OK(probes);
  EXPECT_THAT(Keys(*probes), IsEmpty()) << "the If-None-Match probe was left behind";
}

// ---- the key prefix ------------------------------------------------------------------------
// (The ObjectStore contract itself: empty objects, missing keys, create-if-absent races, bad keys
// is tested on radosgw by store_conformance_test.cc.)

// A nested prefix ("a/b" in the setting) keeps keys below it and lists them relative.
TEST_F(S3Test, NestedPrefixKeepsKeysBelowItAndListsThemRelative) {
  auto store = Store();
  ASSERT_OK(store);
  TargetConfig nested = Config();
  nested.prefix = prefix_ + "/deep/er";
  TargetOptions o;
  o.retry_timeout_seconds = 60;
  auto inner = internal::OpenS3Store(nested, o, Runtime::Default());
  ASSERT_OK(inner);
  ASSERT_OK((*inner)->Put("k1", "v1", internal::PutOptions{}));
  auto inner_list = (*inner)->ListAll("");
  ASSERT_OK(inner_list);
  EXPECT_THAT(Keys(*inner_list), ElementsAre("k1"));
  auto outer_list = (*store)->ListAll("deep/");
  ASSERT_OK(outer_list);
  EXPECT_THAT(Keys(*outer_list), ElementsAre("deep/er/k1"));
  EXPECT_EQ(*(*store)->Get("deep/er/k1"), "v1");
}

// ---- 8. listing pagination and batched deletes ------------------------------------------------

TEST_F(S3Test, ListAllPaginatesAndDeleteBatchesOverThousandsOfObjects) {
  auto store = Store();
  ASSERT_OK(store);
  constexpr int kCount = 2100;  // three pages of 1000, three DeleteObjects batches
  std::vector<std::string> keys;
  for (int i = 0; i < kCount; ++i) {
    char k[32];
    std::snprintf(k, sizeof k, "page/k%05d", i);
    keys.push_back(k);
  }
  std::mutex mu;
  std::condition_variable cv;
  int pending = kCount;
  std::vector<Status> failures;
  const auto t0 = Clock::now();
  for (const auto& k : keys) {
    (*store)->PutAsync(k, std::make_shared<const std::string>("value of " + k),
                       internal::PutOptions{}, [&](Status st) {
                         std::lock_guard<std::mutex> lock(mu);
                         if (!st.ok()) failures.push_back(st);
                         if (--pending == 0) cv.notify_all();
                       });
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(120), [&] { return pending == 0; }));
  }
  std::cout << "[ TIME     ] " << kCount << " PutAsync in " << SecondsSince(t0) << " s"
            << std::endl;
  ASSERT_THAT(failures, IsEmpty()) << failures.front().ToString();

  auto all = (*store)->ListAll("page/");
  ASSERT_OK(all);
  EXPECT_EQ(Keys(*all), keys) << "ListAll must return every key once, in order";
  auto page = (*store)->List("page/", "", 1000);
  ASSERT_OK(page);
  ASSERT_EQ(page->objects.size(), 1000u);
  EXPECT_FALSE(page->next_token.empty());
  auto page2 = (*store)->List("page/", page->next_token, 1000);
  ASSERT_OK(page2);
  ASSERT_EQ(page2->objects.size(), 1000u);
  EXPECT_EQ(page2->objects.front().key, "page/k01000");
  auto one = (*store)->Get("page/k02099");
  ASSERT_OK(one);
  EXPECT_EQ(*one, "value of page/k02099");

  ASSERT_OK((*store)->Delete(keys));  // one call, three batches
  auto left = (*store)->ListAll("page/");
  ASSERT_OK(left);
  EXPECT_THAT(Keys(*left), IsEmpty());
  EXPECT_OK((*store)->Delete(keys)) << "deleting missing keys is not an error";
}

// A backup process killed after its first packs reached S3: no record is published, and the next
// backup of the same volume reuses the packs that made it and restores identical bytes.
TEST_F(S3Test, ClientKilledDuringBackupPublishesNothingAndNextBackupReuses) {
  TempDir dir;
  // Create the repository with small packs, so that packs reach S3 early in the child's backup.
  TargetOptions small = Opts();
  small.pack_size = 1 * kMiB;
  {
    auto t = Open(Addressing::kPathHttp, small);
    ASSERT_OK(t);
  }
  const std::string config = dir.Sub("target.json");
  WriteAll(config, ConfigJson(Config(Addressing::kPathHttp)));
  ::chmod(config.c_str(), 0600);
  const std::string vol = dir.Sub("disk0.img");
  MakeVolume(vol, 160 * kMiB, 31, 1024 * 1024);
  const std::string sha = FileSha256(vol);
  auto store = Store();
  ASSERT_OK(store);

  HelperProcess child;
  ASSERT_TRUE(child.Start(VMBACKUP_S3_CHILD,
                          {"backup", "--config", config, "--name", "killed", "--volume", vol},
                          dir.Sub("child.log")));
  const bool uploading = child.WaitFor(
      [&] {
        auto idx = (*store)->List("index/", "", 10);
        return idx.ok() && !idx->objects.empty();
      },
      std::chrono::seconds(60));
  ASSERT_TRUE(uploading) << "the child finished or stalled before its first pack index appeared: "
                         << ReadAll(dir.Sub("child.log"));
  child.Kill(SIGKILL);
  child.Wait();
  ASSERT_FALSE(child.Result().has_value()) << "the child finished before it was killed";

  auto target = Open();
  ASSERT_OK(target);
  EXPECT_THAT((*target)->GetBackup("killed"), StatusIs(StatusCode::kNotFound, "killed"));
  auto list = (*target)->ListBackups();
  ASSERT_OK(list);
  EXPECT_TRUE(list->backups.empty());
  EXPECT_TRUE(list->damaged.empty());

  auto again = Backup(*target, "killed", vol);
  ASSERT_OK(again);
  EXPECT_GT(again->bytes_reused, 0u) << "packs uploaded by the killed process were not reused";
  EXPECT_EQ(RestoreSha(*target, "killed", dir), sha);
}

}  // namespace
}  // namespace vmbackup::integration
