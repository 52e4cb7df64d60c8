// Helpers shared by the integration suite: backup / restore shorthands on real local-directory
// targets, tmpfs and read-only mounts inside a private mount namespace (with fault-injecting
// fallbacks where mounting is not permitted), and a child-process runner for the helper program
// that crash tests SIGKILL.
//
// Thread-safety: free functions are thread-safe; a HelperProcess or ScopedMount belongs to one
// test thread.
#ifndef VMBACKUP_TESTS_INTEGRATION_INTEGRATION_UTIL_H_
#define VMBACKUP_TESTS_INTEGRATION_INTEGRATION_UTIL_H_

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "store/object_store.h"
#include "support/test_util.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup::integration {

// ---- process-wide environment ----

// Enters a private mount namespace (unshare(CLONE_NEWNS) + make "/" private) so that test mounts
// vanish with the process. Must run in main() before any thread exists. Returns false (and the
// reason in *why) when not permitted; mounts are then never attempted.
bool EnterPrivateMountNamespace(std::string* why);
// Whether EnterPrivateMountNamespace succeeded.
bool CanMount();
// Why mounts are unavailable ("" when they are available).
const std::string& NoMountReason();
// Records why mounts are not used (when main() skips EnterPrivateMountNamespace on purpose).
void SetNoMountReason(const std::string& why);
bool IsRoot();
// True when VMBACKUP_INTEG_RUN_KNOWN_BUGS=1: tests of known library bugs run instead of skipping,
// so a fix can be checked before the skip is removed.
bool RunKnownBugs();

// Prints a visible line "[ PATH     ] <what>" and records it as a test property "path", so the
// log says which variant of an environment-dependent test ran.
void ReportPath(const std::string& what);
// Prints "[ STATUS   ] CODE: message" so the log shows the exact text a user would see.
void ShowStatus(const Status& st);
template <typename T>
void ShowStatus(const StatusOr<T>& st) {
  ShowStatus(st.status());
}

// ---- mounts ----

// A mount that is detached (umount2 MNT_DETACH) when the object is destroyed. Declare it after
// the TempDir that holds the mount point, so it goes first.
class ScopedMount {
 public:
  ScopedMount() = default;
  ~ScopedMount();
  ScopedMount(const ScopedMount&) = delete;
  ScopedMount& operator=(const ScopedMount&) = delete;
  // Mounts a tmpfs of `bytes` on `dir`. Returns "" on success, else the error text.
  std::string MountTmpfs(const std::string& dir, uint64_t bytes);
  // Changes the size of the tmpfs mounted by MountTmpfs. Returns "" on success, else the error.
  std::string ResizeTmpfs(uint64_t bytes);
  // Makes an ext4 filesystem of `bytes` in the file `image` and loop-mounts it on `dir` (where
  // O_DIRECT works, unlike tmpfs). Returns "" on success, else the error text.
  std::string MountExt4Image(const std::string& dir, const std::string& image, uint64_t bytes);
  // Bind-mounts `dir` on itself read-only. Returns "" on success, else the error text.
  std::string BindReadOnly(const std::string& dir);
  void Unmount();
  bool mounted() const { return !dir_.empty(); }

 private:
  std::string dir_;
};

// ---- fault-injecting store (fallback when mounts are not permitted) ----

// Wraps a real ObjectStore. Puts fail with EROFS when read_only, and with ENOSPC once more than
// `quota` bytes would have been written through this wrapper (0 = unlimited). Messages are built
// with the same errno mapping as the local store.
class FaultStore final : public internal::ObjectStore {
 public:
  FaultStore(std::unique_ptr<internal::ObjectStore> base, std::shared_ptr<Runtime> rt,
             bool read_only, uint64_t quota);
  std::string Describe() const override { return base_->Describe(); }
  Status Put(const std::string& key, std::string_view data,
             const internal::PutOptions& opts) override;
  StatusOr<std::string> Get(const std::string& key, uint64_t offset, uint64_t length) override;
  StatusOr<internal::ObjectInfo> Head(const std::string& key) override;
  StatusOr<internal::ListPage> List(const std::string& prefix, const std::string& token,
                                    int max_keys) override;
  Status Delete(const std::vector<std::string>& keys) override;

 private:
  std::unique_ptr<internal::ObjectStore> base_;
  const bool read_only_;
  const uint64_t quota_;
  std::atomic<uint64_t> used_{0};
};

// Reopens `target`'s repository over a FaultStore wrapping the local directory `dir`.
// REQUIRES: no job is using `target`.
Status InjectFaultStore(BackupTarget& target, const std::string& dir, bool read_only,
                        uint64_t quota);

// ---- data ----

// A repository with small blocks and packs (64 KiB / 1 MiB), so a few MiB make several packs.
TargetOptions SmallRepo();
std::string TargetJson(const std::string& dir);
StatusOr<std::shared_ptr<BackupTarget>> OpenTarget(const std::string& dir,
                                                   const TargetOptions& opts = SmallRepo());
// Writes `size` bytes of incompressible pseudo-random data (deterministic for `seed`).
void WriteRandomFile(const std::string& path, uint64_t size, uint64_t seed);

StatusOr<BackupInfo> RunBackup(const std::shared_ptr<BackupTarget>& target, const std::string& name,
                               const std::vector<VolumeSource>& volumes);
// Backup of one volume named "disk0".
StatusOr<BackupInfo> RunBackup(const std::shared_ptr<BackupTarget>& target, const std::string& name,
                               const std::string& volume_path);
Status RunRestore(const std::shared_ptr<BackupTarget>& target, const std::string& backup,
                  const std::vector<VolumeDestination>& dests);
// Restore of volume "disk0" to `dest`.
Status RunRestore(const std::shared_ptr<BackupTarget>& target, const std::string& backup,
                  const std::string& dest);

// Restores volume "disk0" of `backup` to a fresh file under `dir` and returns its SHA-256 (or, with
// a test failure recorded, a text saying why the restore failed). The restored file is removed.
std::string RestoreSha(const std::shared_ptr<BackupTarget>& target, const std::string& backup,
                       const ::vmbackup::testing::TempDir& dir);

// The environment variable `name`, or "" when unset.
std::string Env(const char* name);
// The config of the test servers' target of `kind` ("s3": radosgw over plain HTTP; "nfs3",
// "nfs4": ganesha) under a fresh random prefix, from the environment scripts/test.sh exports;
// kFailedPrecondition saying how to start the server when it is not set.
StatusOr<TargetConfig> ServerTargetConfig(const std::string& kind);
// Seconds elapsed since `t0`.
double SecondsSince(std::chrono::steady_clock::time_point t0);
// `n` random lowercase hex characters (for unique names and key prefixes).
std::string RandomHex(int n);
// `s` quoted for /bin/sh.
std::string Quote(const std::string& s);
// Runs a shell command; returns its stdout, and its exit status in *rc.
std::string Shell(const std::string& cmd, int* rc);

// Files under `dir` (relative, sorted) whose relative path starts with `prefix`.
std::vector<std::string> FilesUnder(const std::string& dir, const std::string& prefix = "");
// Names of the listed backups, oldest first.
std::vector<std::string> ListedNames(const BackupList& list);

// Opens `target_dir` afresh (no cached state), checks that backup `name` is listed, and restores
// each volume in `expected` (volume name → SHA-256 of the original) into `scratch_dir`, comparing
// bytes. Adds GoogleTest failures on any difference.
void ExpectRestorable(const std::string& target_dir, const std::string& name,
                      const std::map<std::string, std::string>& expected,
                      const std::string& scratch_dir);

// ---- helper process ----

// The helper program built beside this suite (vmbackup_integ_helper).
std::string HelperPath();

// Runs the helper with stdout and stderr redirected to a file (so a busy child never blocks on a
// pipe), optionally as another uid/gid.
class HelperProcess {
 public:
  HelperProcess() = default;
  ~HelperProcess();  // SIGKILLs and reaps a child still running
  HelperProcess(const HelperProcess&) = delete;
  HelperProcess& operator=(const HelperProcess&) = delete;

  // Starts `program args...`; output goes to `log_path`. `uid` < 0 keeps the current user.
  // Returns false (with a GoogleTest failure) if fork fails.
  bool Start(const std::string& program, const std::vector<std::string>& args,
             const std::string& log_path, int uid = -1, int gid = -1);
  // Sends `sig`.
  void Kill(int sig);
  // Waits for the child and returns its waitpid status.
  int Wait();
  bool Running();
  // Lines written so far.
  std::vector<std::string> Lines() const;
  // The final "result <CODE> <message>" line split into code name and message, if written.
  std::optional<std::pair<std::string, std::string>> Result() const;
  // Polls `pred` every 2 ms until it is true (returns true) or `timeout` passes or the child exits
  // (returns false).
  bool WaitFor(const std::function<bool()>& pred, std::chrono::milliseconds timeout);

 private:
  pid_t pid_ = -1;
  std::string log_path_;
  bool reaped_ = false;
  int status_ = 0;
};

}  // namespace vmbackup::integration

#endif  // VMBACKUP_TESTS_INTEGRATION_INTEGRATION_UTIL_H_
