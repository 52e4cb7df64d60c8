// BackupTarget: where backups live (a local directory, S3 bucket or NFS export) and the catalogue
// of the backups stored there.
//
// A target is opened from Harvester's backup-target setting JSON:
//   {"type": "file", "endpoint": "/var/lib/vmbackup"}                       (local directory)
//   {"type": "s3", "endpoint": "https://s3.example", "bucketName": "b",
//    "bucketRegion": "us-east-1", "accessKeyId": "...", "secretAccessKey": "...",
//    "cert": "-----BEGIN...", "virtualHostedStyle": false, "allowInsecureHttp": false}
//   {"type": "nfs", "endpoint": "nfs://server:/export/path"}
// plus the optional "refreshIntervalInSeconds". Unknown fields are rejected so that typos do not
// pass silently. Opening a target that holds no repository yet initializes one (see TargetOptions).
//
// Thread-safety: all const methods may be called concurrently; DeleteBackup may run concurrently
// with them. Several BackupJob and RestorePlan objects may use one target at once, also from other
// processes and hosts: data objects are immutable and records are published atomically.
#ifndef VMBACKUP_BACKUP_TARGET_H_
#define VMBACKUP_BACKUP_TARGET_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "vmbackup/backup_info.h"
#include "vmbackup/export.h"
#include "vmbackup/maintenance.h"
#include "vmbackup/runtime.h"
#include "vmbackup/status.h"
#include "vmbackup/verify.h"

namespace vmbackup {

namespace internal {
struct ImplAccess;  // the library's own access to Impl (src/core/impl_access.h)
}  // namespace internal

// The parsed backup-target setting. Secrets are kept here but never printed by the library.
struct VMBACKUP_EXPORT TargetConfig {
  enum class Type : int { kFile = 0, kS3 = 1, kNfs = 2 };
  Type type = Type::kFile;
  std::string endpoint;           // file: directory path (or file:// URL); s3: URL; nfs: nfs:// URL
  std::string bucket_name;        // s3 only
  std::string bucket_region;      // s3 only; default "us-east-1"
  std::string access_key_id;      // s3 only
  std::string secret_access_key;  // s3 only
  std::string cert;               // s3 only: PEM CA certificate(s) trusted besides the system CAs
  bool virtual_hosted_style = false;  // s3 only
  // How often a host should re-list the target; default 60, min 1.
  int refresh_interval_seconds = 60;
  std::string prefix;  // optional key prefix inside the bucket / export ("prefix" field)
  // s3 only ("allowInsecureHttp"): accept an http:// endpoint, whose traffic (data, metadata and
  // signed requests) anyone on the path can read and change. Default false: an http:// endpoint
  // is refused with kInvalidArgument naming this field.
  bool allow_insecure_http = false;

  // The configuration as JSON with secrets replaced by "***" (safe to log).
  std::string ToRedactedJson() const;
};

// Parses Harvester's backup-target setting JSON.
// Returns kInvalidArgument whose message names the offending field for malformed JSON, a missing
// required field, a field of the wrong type, an unknown field, or an unknown "type".
VMBACKUP_EXPORT StatusOr<TargetConfig> ParseTargetConfig(std::string_view json);

struct TargetOptions {
  // Runtime whose threads do the work. Default null = Runtime::Default().
  std::shared_ptr<Runtime> runtime;
  // Initialize a repository when the target holds none. Default true. When false, opening an empty
  // target returns kNotFound.
  bool create_if_missing = true;
  // Block size of a newly initialized repository, a power of two from 64 KiB to 16 MiB.
  // Default 0 = 256 KiB (see docs/FORMAT.md for how it was chosen). Ignored for existing
  // repositories.
  uint32_t block_size = 0;
  // Target size of a pack object. Default 0 = 32 MiB.
  uint32_t pack_size = 0;
  // Network targets (S3, NFS): how long one operation may keep retrying transient failures
  // (timeouts, resets, 5xx, SlowDown) before it fails with kUnavailable. Counted from the
  // operation's start, or from the start of an outage the target's other operations already saw:
  // once the server has answered nothing for this long, operations fail after one attempt until
  // it answers again. Default 0 = 120 s.
  int retry_timeout_seconds = 0;
  // Network targets: requests in flight at once, which is also the number of connections kept.
  // Default 0 = 16 for S3, 4 for NFS.
  int max_requests_in_flight = 0;
  // S3 only, FOR TESTS AGAINST THROWAWAY SERVERS: skip TLS certificate verification. Default false.
  // Never set this in production; give the server's CA in the "cert" field instead.
  bool insecure_skip_tls_verify_for_tests_only = false;
  // Directory where this host keeps its own secrets for backups (the block fingerprint key, see
  // docs/FORMAT.md "Block fingerprints"), created with mode 0700 when missing. They never go to
  // the target. Default empty = $VMBACKUP_STATE_DIR, else /var/lib/vmbackup when running as root,
  // else $XDG_STATE_HOME/vmbackup or ~/.local/state/vmbackup. Several hosts that share one key
  // file (the host copies it) can use each other's backups as fingerprint references. When the
  // directory cannot be used, backups still work and hash every block (slower, never wrong).
  std::string state_dir;

  // ---- encryption (docs/encryption.md) ----
  // Encryption of a repository this Open initializes: "aes-256-gcm" (every object sealed on this
  // host before it leaves; needs a passphrase or raw_key) or "none". Ignored for an existing
  // repository, whose descriptor decides. Default empty = "aes-256-gcm" when a passphrase or
  // raw_key is given, else "none". (vmbackupctl insists on an explicit --encryption.)
  std::string encryption;
  // The secret that opens an encrypted repository, and that protects the first key slot of one
  // this Open initializes: a passphrase (any non-empty bytes; stretched with scrypt) ...
  std::string passphrase;
  // ... or a raw 256-bit key (exactly 32 bytes) from the host's key management. Not both.
  // Giving either for a repository that is not encrypted is kFailedPrecondition.
  std::string raw_key;
  // A note stored with the first key slot of a new encrypted repository (at most 200 bytes).
  std::string key_label;
};

// One key slot of an encrypted repository (BackupTarget::ListKeys).
struct KeyInfo {
  std::string id;          // 16 hex characters
  std::string kind;        // "passphrase" or "raw"
  std::string created_at;  // RFC 3339
  std::string host;        // the host that added it
  std::string label;
  bool current = false;  // this target was opened with it
};

// `keys` and the `damaged` slot messages (BackupTarget::ListKeys) as one compact JSON object:
// {"keys": [{"id", "kind", "created_at", "host", "label", "current"}, ...], "damaged": [...]}, in
// the given order; text that is not UTF-8 is replaced, never an error. Never fails. Thread-safe.
VMBACKUP_EXPORT std::string KeyListToJson(const std::vector<KeyInfo>& keys,
                                          const std::vector<std::string>& damaged);

// A new key slot (BackupTarget::AddKey): exactly one of passphrase and raw_key.
struct NewKey {
  std::string passphrase;
  std::string raw_key;  // exactly 32 bytes
  std::string label;    // at most 200 bytes
};

class VMBACKUP_EXPORT BackupTarget {
 public:
  // Opens (and, if allowed, initializes) the repository at the target described by `config_json`.
  // Returns:
  //   kInvalidArgument    bad configuration (the message names the field), or a bad
  //                       TargetOptions value;
  //   kNotFound           the directory / bucket / export does not exist, or no repository and
  //                       !create_if_missing;
  //   kPermissionDenied   the target may not be read or written;
  //   kUnavailable        the server could not be reached;
  //   kFailedPrecondition the repository has a newer format version than this library reads, or
  //                       a passphrase / raw key was given for a repository that is not encrypted;
  //   kPermissionDenied   (also) the repository is encrypted and no passphrase or raw key was
  //                       given, or no key slot opens with the one given;
  //   kDataLoss           the repository descriptor is corrupt or hostile (the message names the
  //                       field);
  //   kUnimplemented      a target type this build does not support yet;
  //   kInternal / kResourceExhausted  an unexpected exception inside the library (never thrown).
  static StatusOr<std::shared_ptr<BackupTarget>> Open(std::string_view config_json,
                                                      const TargetOptions& options = {});
  // Same, from an already parsed configuration.
  static StatusOr<std::shared_ptr<BackupTarget>> Open(const TargetConfig& config,
                                                      const TargetOptions& options = {});

  BackupTarget(const BackupTarget&) = delete;
  BackupTarget& operator=(const BackupTarget&) = delete;
  ~BackupTarget();

  // Health check: writes, reads back and deletes a probe object. OK when the target is usable;
  // otherwise the store's error (kPermissionDenied, kResourceExhausted, kUnavailable, ...).
  Status Test() const;

  // Lists every backup record. Records that cannot be parsed go to BackupList::damaged instead of
  // failing the call. Returns the store's error when the listing itself fails.
  StatusOr<BackupList> ListBackups() const;

  // Returns the record of backup `name`; kNotFound if there is none; kDataLoss if it is damaged.
  StatusOr<BackupInfo> GetBackup(std::string_view name) const;

  // Deletes the record of backup `name` (and its volume indexes). Blocks that no other backup uses
  // stay on the target until garbage collection. kNotFound if there is no such backup.
  Status DeleteBackup(std::string_view name);

  // Checks the backups on the target (see vmbackup/verify.h) and changes nothing. Damage found is
  // in the report (VerifyReport::ok() is false), not in the status. Returns:
  //   kInvalidArgument  bad options (the message names the field);
  //   kCancelled        the progress callback returned false;
  //   the store's error when the target cannot be listed or read (kUnavailable, kPermissionDenied,
  //   ...): a verify that could not look at everything reports nothing.
  // Thread-safe; may run while backups, restores and deletes use the target: what they add
  // meanwhile may not be looked at, and a backup deleted meanwhile is skipped, not reported.
  StatusOr<VerifyReport> Verify(const VerifyOptions& options = {}) const;

  // Verifies (options.verify), then repairs each damaged pack: rebuilds a damaged or missing pack
  // index from the copy in the pack's trailer after checking every block it lists, copies the
  // good blocks of a pack with bad blocks to a new pack, and removes the index of a pack that is
  // missing or unreadable, so that lost blocks are in no pack index and the next backup stores
  // them again. With dry_run, reports the actions and changes nothing. Returns the errors of
  // Verify; a repair of one pack that fails is reported in its action (RepairAction::error), the
  // others go on. Thread-safe; safe while backups run (it only adds objects and removes pack
  // indexes whose blocks are lost or copied elsewhere), but two repairs should not run at once.
  StatusOr<RepairReport> Repair(const RepairOptions& options = {});

  // Applies the retention `policy` (maintenance.h) to the backups listed on the target and deletes
  // (DeleteBackup) every backup it does not keep, unless options.dry_run. Damaged records are
  // never touched. Space is reclaimed by CollectGarbage afterwards.
  // Returns the decision and the backups deleted, or:
  //   kInvalidArgument  a policy whose counts are all 0 or one negative (it would forget every
  //                     backup), or vm_namespace without vm_name;
  //   the store's error (kUnavailable, kPermissionDenied, ...) when listing fails, or when a
  //   deletion fails: the backups deleted before it stay deleted and the message names them.
  // Thread-safety: may run concurrently with every other method; two Forget calls with the same
  // policy on one target delete each backup once (the other sees kNotFound and ignores it).
  StatusOr<ForgetResult> Forget(const RetentionPolicy& policy, const ForgetOptions& options = {});

  // One garbage-collection run (docs/FORMAT.md "Garbage collection"): marks the run, computes the
  // live set from every record, and deletes what stayed garbage for the grace period across runs
  // (pack indexes of dead packs, then in a later run the packs themselves; orphan packs; stray
  // temporaries). Safe while backups run on this and other hosts (they hold leases). The first
  // real run upgrades the repository descriptor to version 2: version-1 libraries then refuse the
  // repository (see FORMAT.md "Writer-version gate"). Damaged records or volume indexes stop the
  // run from deleting packs (listed in GcReport::damaged).
  // Returns the report, or:
  //   kInvalidArgument    a negative grace or lease expiry other than -1;
  //   kFailedPrecondition another GC run holds gc/lock.json (its host and start are named), or
  //                       the repository needs a newer writer version;
  //   kCancelled          options.progress returned false (what was deleted stays deleted);
  //   the store's error (kUnavailable, kPermissionDenied, ...).
  // Thread-safety: may run concurrently with every other method and with backups anywhere; a
  // second concurrent CollectGarbage on the same repository fails with kFailedPrecondition.
  StatusOr<GcReport> CollectGarbage(const GcOptions& options = {});

  // ---- keys of an encrypted repository (docs/encryption.md) ----
  // Every key slot can open the repository; slots wrap one master key, so adding, removing or
  // rotating a slot (add the new one, then remove the old one) rewrites no data.
  // "aes-256-gcm" or "none".
  std::string encryption() const;
  // Adds a key slot. Returns its id, or kFailedPrecondition (repository not encrypted),
  // kInvalidArgument (not exactly one of passphrase / raw_key, a raw key not of 32 bytes, a label
  // over 200 bytes), the store's error. Thread-safe.
  StatusOr<std::string> AddKey(const NewKey& key);
  // The key slots, oldest first; a damaged slot is skipped (and named in `damaged` when given).
  // kFailedPrecondition when the repository is not encrypted; the store's error. Thread-safe.
  StatusOr<std::vector<KeyInfo>> ListKeys(std::vector<std::string>* damaged = nullptr) const;
  // Removes key slot `id`. kNotFound when there is none; kFailedPrecondition for the slot this
  // target was opened with (open it with another key first: the last slot can never be removed
  // this way) or when the repository is not encrypted; the store's error. Thread-safe.
  Status RemoveKey(std::string_view id);

  // The configuration the target was opened with.
  const TargetConfig& config() const;
  // The repository's block size in bytes.
  uint32_t block_size() const;
  // The repository's unique id (hex).
  const std::string& repository_id() const;

 private:
  friend struct internal::ImplAccess;
  struct Impl;
  Impl* impl() const { return impl_.get(); }
  explicit BackupTarget(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vmbackup

#endif  // VMBACKUP_BACKUP_TARGET_H_
