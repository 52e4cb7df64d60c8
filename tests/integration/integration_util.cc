// Integration suite helpers (see integration_util.h).
#include "integration_util.h"

#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <sstream>
#include <thread>

#include "core/errors.h"
#include "core/util.h"
#include "repo/repository.h"
#include "store/local_store.h"
#include "target/target_impl.h"

namespace vmbackup::integration {

using ::vmbackup::testing::FileSha256;

namespace {
bool g_can_mount = false;
std::string g_no_mount_reason = "mount namespace not set up";
}  // namespace

bool EnterPrivateMountNamespace(std::string* why) {
  if (::unshare(CLONE_NEWNS) != 0) {
    *why = std::string("unshare(CLONE_NEWNS): ") + std::strerror(errno);
  } else if (::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    *why = std::string("mount --make-rprivate /: ") + std::strerror(errno);
  } else {
    why->clear();
    g_can_mount = true;
  }
  g_no_mount_reason = *why;
  return g_can_mount;
}

bool CanMount() { return g_can_mount; }
void SetNoMountReason(const std::string& why) { g_no_mount_reason = why; }
const std::string& NoMountReason() { return g_no_mount_reason; }
bool IsRoot() { return ::geteuid() == 0; }
bool RunKnownBugs() {
  const char* v = std::getenv("VMBACKUP_INTEG_RUN_KNOWN_BUGS");
  return v != nullptr && std::string(v) == "1";
}

void ReportPath(const std::string& what) {
  std::cout << "[ PATH     ] " << what << std::endl;
  ::testing::Test::RecordProperty("path", what);
}

void ShowStatus(const Status& st) { std::cout << "[ STATUS   ] " << st.ToString() << std::endl; }

// ---- mounts ----

ScopedMount::~ScopedMount() { Unmount(); }

std::string ScopedMount::MountTmpfs(const std::string& dir, uint64_t bytes) {
  if (!CanMount()) return NoMountReason();
  const std::string opts = "size=" + std::to_string(bytes) + ",mode=0755";
  if (::mount("tmpfs", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, opts.c_str()) != 0)
    return std::string("mount -t tmpfs: ") + std::strerror(errno);
  dir_ = dir;
  return "";
}

std::string ScopedMount::MountExt4Image(const std::string& dir, const std::string& image,
                                        uint64_t bytes) {
  if (!CanMount()) return NoMountReason();
  if (::truncate(image.c_str(), 0) != 0 && errno != ENOENT)
    return std::string("truncate: ") + std::strerror(errno);
  int rc = 0;
  std::string out = Shell("truncate -s " + std::to_string(bytes) + " " + Quote(image) +
                              " && mkfs.ext4 -q -F -m 0 " + Quote(image) + " && mount -o loop " +
                              Quote(image) + " " + Quote(dir),
                          &rc);
  if (rc != 0) return "loop-mounting an ext4 image failed: " + out;
  dir_ = dir;
  return "";
}

std::string ScopedMount::ResizeTmpfs(uint64_t bytes) {
  const std::string opts = "size=" + std::to_string(bytes);
  if (::mount("tmpfs", dir_.c_str(), "tmpfs", MS_REMOUNT | MS_NOSUID | MS_NODEV, opts.c_str()) != 0)
    return std::string("mount -o remount,size: ") + std::strerror(errno);
  return "";
}

std::string ScopedMount::BindReadOnly(const std::string& dir) {
  if (!CanMount()) return NoMountReason();
  if (::mount(dir.c_str(), dir.c_str(), nullptr, MS_BIND, nullptr) != 0)
    return std::string("mount --bind: ") + std::strerror(errno);
  dir_ = dir;
  if (::mount(nullptr, dir.c_str(), nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr) != 0) {
    std::string err = std::string("mount -o remount,bind,ro: ") + std::strerror(errno);
    Unmount();
    return err;
  }
  return "";
}

void ScopedMount::Unmount() {
  if (dir_.empty()) return;
  if (::umount2(dir_.c_str(), MNT_DETACH) != 0)
    ADD_FAILURE() << "umount " << dir_ << ": " << std::strerror(errno);
  dir_.clear();
}

// ---- fault store ----

FaultStore::FaultStore(std::unique_ptr<internal::ObjectStore> base, std::shared_ptr<Runtime> rt,
                       bool read_only, uint64_t quota)
    : ObjectStore(std::move(rt)), base_(std::move(base)), read_only_(read_only), quota_(quota) {}

Status FaultStore::Put(const std::string& key, std::string_view data,
                       const internal::PutOptions& opts) {
  if (read_only_) return internal::ErrnoToStatus(EROFS, "create " + Describe() + "/" + key);
  if (quota_ > 0) {
    uint64_t before = used_.fetch_add(data.size());
    if (before + data.size() > quota_) {
      used_.fetch_sub(data.size());
      return internal::ErrnoToStatus(ENOSPC, "write " + Describe() + "/" + key);
    }
  }
  return base_->Put(key, data, opts);
}
StatusOr<std::string> FaultStore::Get(const std::string& key, uint64_t offset, uint64_t length) {
  return base_->Get(key, offset, length);
}
StatusOr<internal::ObjectInfo> FaultStore::Head(const std::string& key) { return base_->Head(key); }
StatusOr<internal::ListPage> FaultStore::List(const std::string& prefix, const std::string& token,
                                              int max_keys) {
  return base_->List(prefix, token, max_keys);
}
Status FaultStore::Delete(const std::vector<std::string>& keys) {
  if (read_only_ && !keys.empty())
    return internal::ErrnoToStatus(EROFS, "delete " + Describe() + "/" + keys.front());
  return base_->Delete(keys);
}

Status InjectFaultStore(BackupTarget& target, const std::string& dir, bool read_only,
                        uint64_t quota) {
  auto& impl = *internal::ImplOf(target);
  auto local = internal::OpenLocalStore(dir, impl.runtime);
  if (!local.ok()) return local.status();
  auto store = std::make_unique<FaultStore>(std::move(*local), impl.runtime, read_only, quota);
  auto repo = internal::Repository::Open(std::move(store), /*create=*/false, 0, 0);
  if (!repo.ok()) return repo.status();
  impl.repo = std::move(*repo);
  return Status::Ok();
}

// ---- data ----

TargetOptions SmallRepo() {
  TargetOptions o;
  o.block_size = 64 * 1024;
  o.pack_size = 1024 * 1024;
  return o;
}

std::string TargetJson(const std::string& dir) {
  return R"({"type":"file","endpoint":")" + dir + R"("})";
}

StatusOr<std::shared_ptr<BackupTarget>> OpenTarget(const std::string& dir,
                                                   const TargetOptions& opts) {
  return BackupTarget::Open(TargetJson(dir), opts);
}

void WriteRandomFile(const std::string& path, uint64_t size, uint64_t seed) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  std::mt19937_64 rng(seed);
  std::string buf(1 << 20, '\0');
  for (uint64_t off = 0; off < size; off += buf.size()) {
    for (size_t j = 0; j + 8 <= buf.size(); j += 8) {
      uint64_t x = rng();
      std::memcpy(&buf[j], &x, 8);
    }
    size_t len = static_cast<size_t>(std::min<uint64_t>(buf.size(), size - off));
    ASSERT_EQ(::pwrite(fd, buf.data(), len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
  }
  ::close(fd);
}

StatusOr<BackupInfo> RunBackup(const std::shared_ptr<BackupTarget>& target, const std::string& name,
                               const std::vector<VolumeSource>& volumes) {
  BackupSpec spec;
  spec.name = name;
  spec.vm_metadata_json = R"({"name":"vm1","namespace":"default"})";
  spec.volumes = volumes;
  auto job = BackupJob::Create(target, spec);
  if (!job.ok()) return job.status();
  Status st = (*job)->Run();
  if (!st.ok()) return st;
  return (*job)->result();
}

StatusOr<BackupInfo> RunBackup(const std::shared_ptr<BackupTarget>& target, const std::string& name,
                               const std::string& volume_path) {
  return RunBackup(target, name, {VolumeSource{"disk0", volume_path, false, {}}});
}

Status RunRestore(const std::shared_ptr<BackupTarget>& target, const std::string& backup,
                  const std::vector<VolumeDestination>& dests) {
  RestoreSpec spec;
  spec.backup = backup;
  spec.volumes = dests;
  auto plan = RestorePlan::Create(target, spec);
  if (!plan.ok()) return plan.status();
  return (*plan)->Run();
}

Status RunRestore(const std::shared_ptr<BackupTarget>& target, const std::string& backup,
                  const std::string& dest) {
  return RunRestore(target, backup, {VolumeDestination{"disk0", dest}});
}

std::vector<std::string> FilesUnder(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> out;
  for (auto& f : ::vmbackup::testing::ListFiles(dir))
    if (f.compare(0, prefix.size(), prefix) == 0) out.push_back(f);
  return out;
}

std::vector<std::string> ListedNames(const BackupList& list) {
  std::vector<std::string> out;
  for (const auto& b : list.backups) out.push_back(b.name);
  return out;
}

void ExpectRestorable(const std::string& target_dir, const std::string& name,
                      const std::map<std::string, std::string>& expected,
                      const std::string& scratch_dir) {
  SCOPED_TRACE("backup '" + name + "' must stay listable and restorable");
  auto target = OpenTarget(target_dir);
  ASSERT_OK(target);
  auto list = (*target)->ListBackups();
  ASSERT_OK(list);
  EXPECT_THAT(ListedNames(*list), ::testing::Contains(name));
  static std::atomic<int> counter{0};
  std::vector<VolumeDestination> dests;
  for (const auto& [vol, sha] : expected) {
    dests.push_back({vol, scratch_dir + "/check-" + std::to_string(counter++) + "-" + vol});
  }
  ASSERT_OK(RunRestore(*target, name, dests));
  for (const auto& d : dests) {
    EXPECT_EQ(FileSha256(d.path), expected.at(d.volume)) << "volume " << d.volume;
    ::unlink(d.path.c_str());
  }
}

// ---- helper process ----

std::string HelperPath() { return VMBACKUP_INTEG_HELPER; }

HelperProcess::~HelperProcess() {
  if (pid_ > 0 && !reaped_) {
    ::kill(pid_, SIGKILL);
    Wait();
  }
}

bool HelperProcess::Start(const std::string& program, const std::vector<std::string>& args,
                          const std::string& log_path, int uid, int gid) {
  log_path_ = log_path;
  // Everything the child needs is prepared before fork: after fork only async-signal-safe calls.
  std::vector<std::string> all;
  all.push_back(program);
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  int out = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) {
    ADD_FAILURE() << "open " << log_path << ": " << std::strerror(errno);
    return false;
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(out);
    ADD_FAILURE() << "fork: " << std::strerror(errno);
    return false;
  }
  if (pid == 0) {
    ::dup2(out, 1);
    ::dup2(out, 2);
    if (gid >= 0) {
      gid_t g = static_cast<gid_t>(gid);
      if (::setgroups(1, &g) != 0 || ::setgid(g) != 0) ::_exit(121);
    }
    if (uid >= 0 && ::setuid(static_cast<uid_t>(uid)) != 0) ::_exit(122);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(out);
  pid_ = pid;
  reaped_ = false;
  return true;
}

void HelperProcess::Kill(int sig) {
  if (pid_ > 0 && !reaped_) ::kill(pid_, sig);
}

int HelperProcess::Wait() {
  if (pid_ <= 0 || reaped_) return status_;
  while (::waitpid(pid_, &status_, 0) < 0 && errno == EINTR) {
  }
  reaped_ = true;
  return status_;
}

bool HelperProcess::Running() {
  if (pid_ <= 0 || reaped_) return false;
  pid_t r = ::waitpid(pid_, &status_, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    return false;
  }
  return true;
}

std::vector<std::string> HelperProcess::Lines() const {
  std::vector<std::string> out;
  std::istringstream in(::vmbackup::testing::ReadAll(log_path_));
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  return out;
}

std::optional<std::pair<std::string, std::string>> HelperProcess::Result() const {
  for (const auto& l : Lines()) {
    if (l.rfind("result ", 0) != 0) continue;
    std::string rest = l.substr(7);
    auto sp = rest.find(' ');
    if (sp == std::string::npos) return std::make_pair(rest, std::string());
    return std::make_pair(rest.substr(0, sp), rest.substr(sp + 1));
  }
  return std::nullopt;
}

bool HelperProcess::WaitFor(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    if (!Running()) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return false;
}

std::string RestoreSha(const std::shared_ptr<BackupTarget>& target, const std::string& backup,
                       const ::vmbackup::testing::TempDir& dir) {
  static std::atomic<int> n{0};
  const std::string dest = dir.Sub("restored-" + std::to_string(n++) + ".img");
  Status st = RunRestore(target, backup, dest);
  EXPECT_OK(st) << " restoring " << backup;
  if (!st.ok()) return "restore of " + backup + " failed: " + st.ToString();
  std::string sha = ::vmbackup::testing::FileSha256(dest);
  ::unlink(dest.c_str());
  return sha;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

StatusOr<TargetConfig> ServerTargetConfig(const std::string& kind) {
  TargetConfig c;
  c.prefix = "t-" + kind + "-" + RandomHex(10);
  if (kind == "s3") {
    if (Env("S3_HTTP_ENDPOINT").empty())
      return FailedPreconditionError(
          "S3_HTTP_ENDPOINT is not set: start the test S3 server first with "
          "eval \"$(bash scripts/s3-server.sh start --tls)\" (scripts/test.sh does)");
    c.type = TargetConfig::Type::kS3;
    c.endpoint = Env("S3_HTTP_ENDPOINT");
    c.allow_insecure_http = true;
    c.bucket_name = Env("S3_BUCKET");
    c.access_key_id = Env("AWS_ACCESS_KEY_ID");
    c.secret_access_key = Env("AWS_SECRET_ACCESS_KEY");
    return c;
  }
  if (Env("NFS_URL_V3").empty())
    return FailedPreconditionError(
        "NFS_URL_V3 is not set: start the test NFS server first with "
        "eval \"$(bash scripts/nfs-server.sh start)\" (scripts/test.sh does)");
  c.type = TargetConfig::Type::kNfs;
  c.endpoint = Env(kind == "nfs4" ? "NFS_URL_V4" : "NFS_URL_V3");
  return c;
}

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string RandomHex(int n) {
  return internal::RandomHex(static_cast<size_t>(n + 1) / 2)
      .value()
      .substr(0, static_cast<size_t>(n));
}

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string Shell(const std::string& cmd, int* rc) {
  std::string out;
  FILE* f = ::popen(cmd.c_str(), "r");
  if (f == nullptr) {
    *rc = -1;
    return out;
  }
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  *rc = ::pclose(f);
  return out;
}

}  // namespace vmbackup::integration
