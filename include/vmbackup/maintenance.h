// Repository maintenance: retention (which backups to forget) and garbage collection (reclaiming
// the space of deleted backups, interrupted jobs and stray temporaries).
//
// SelectBackupsToForget is a pure function. BackupTarget::Forget and BackupTarget::CollectGarbage
// (backup_target.h) act on a target with the types below. docs/FORMAT.md "Garbage collection"
// describes the on-target protocol; docs/vmbackupctl.md the CLI verbs.
//
// Thread-safety: every type here is a plain value; copy and share it freely across threads.
#ifndef VMBACKUP_MAINTENANCE_H_
#define VMBACKUP_MAINTENANCE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "vmbackup/backup_info.h"
#include "vmbackup/export.h"

namespace vmbackup {

// A retention policy, per VM identity (vm_namespace + vm_name; backups without VM metadata form
// one group of their own). Within each group, backups are ordered newest first (created_at
// descending, then name descending for equal times), and a backup is KEPT when any rule keeps it:
//   keep_last N     the N newest backups;
//   keep_hourly N   for each of the N newest hours (UTC) that hold backups, the newest backup of
//                   that hour; likewise keep_daily (UTC calendar day), keep_weekly (ISO 8601 week,
//                   Monday to Sunday, UTC), keep_monthly (UTC calendar month) and keep_yearly.
// This is restic's semantics: walking newest to oldest, a period rule keeps a backup when its
// period differs from that of the last backup the rule kept, until it kept N. Every other backup
// of the group is forgotten. A backup whose created_at cannot be parsed is always kept.
// All counts default 0 (rule off). A policy whose counts are all 0 keeps nothing and is refused.
struct RetentionPolicy {
  int keep_last = 0;     // default 0
  int keep_hourly = 0;   // default 0
  int keep_daily = 0;    // default 0
  int keep_weekly = 0;   // default 0
  int keep_monthly = 0;  // default 0
  int keep_yearly = 0;   // default 0
};

// One backup the policy keeps and why ("last", "hourly", "daily", "weekly", "monthly", "yearly",
// "unparsable created_at"; several when several rules keep it).
struct KeptBackup {
  std::string name;
  std::vector<std::string> reasons;
};

// What a policy decides for a list of backups.
struct RetentionDecision {
  std::vector<KeptBackup> keep;     // newest first within each group, groups by (namespace, name)
  std::vector<std::string> forget;  // same order
};

// Applies `policy` to `backups` (any order; names are taken as unique). Pure and deterministic.
// Never fails; a policy with all counts 0 or a negative count keeps everything and forgets nothing
// (BackupTarget::Forget refuses such policies with kInvalidArgument). Thread-safe.
VMBACKUP_EXPORT RetentionDecision SelectBackupsToForget(const RetentionPolicy& policy,
                                                        const std::vector<BackupInfo>& backups);

struct ForgetOptions {
  // Only the backups of this VM (vm_name and vm_namespace equal) are considered. Default empty =
  // every group.
  std::string vm_name;
  std::string vm_namespace;  // default empty; used only with vm_name
  // Decide and report, delete nothing. Default false.
  bool dry_run = false;
};

struct ForgetResult {
  RetentionDecision decision;
  // The backups deleted (empty for a dry run). Their blocks stay on the target until garbage
  // collection reclaims them.
  std::vector<std::string> deleted;
};

// ---- garbage collection ----

struct GcProgress {
  // "mark", "records", "indexes", "repack", "sweep", "done".
  std::string phase;
  uint64_t done = 0;   // items of the phase dealt with so far
  uint64_t total = 0;  // items of the phase; 0 when unknown
};

struct GcOptions {
  // Report what would be deleted; write and delete nothing (no mark, no candidate list, no
  // descriptor upgrade). Default false.
  bool dry_run = false;
  // How long an object must have been garbage before it is deleted, measured between two GC runs
  // on the clock of the GC hosts (not of the writers): a pack is deleted only when a previous run
  // at least this long ago already listed it as garbage. Default -1 = 24 h; 0 allowed (tests:
  // every step still needs one run more).
  int64_t grace_seconds = -1;
  // A lease (leases/<job>.json, written by every running backup) older than this on the GC host's
  // clock is left over by a killed job and ignored (then deleted). Default -1 = 7 days; backups
  // must take less time than this.
  int64_t lease_expiry_seconds = -1;
  // Rewrite partly-live packs (see max_unused_percent) once they were chosen for the grace: their
  // live blocks move to a new pack and the old pack is then collected like a dead one. Default
  // true.
  bool repack = true;
  // How much dead data partly-live packs may keep, in percent of the stored bytes of all indexed
  // packs after the run: the packs with the largest dead share are repacked until the rest is
  // within this bound. 0 repacks every pack with a dead block (rewrites the most), 100 none.
  // Default -1 = 10. Ignored when repack is false. Values outside -1..100: kInvalidArgument.
  int max_unused_percent = -1;
  // Directories on this host where restores write (RestoreSpec::dest_dir and the directories of
  // explicit destinations): files named "*.vmbackup-partial-*" in them (not below), left by killed
  // restores and last modified longer than the grace ago (this host's clock), are deleted.
  // Default empty.
  std::vector<std::string> restore_dirs;
  // Called between steps from the calling thread, never under an internal lock. Return false to
  // stop early: the run ends with kCancelled after finishing the step it is in (what it deleted
  // stays deleted; the next run carries on). Default empty.
  std::function<bool(const GcProgress&)> progress;
};

// What one run found and did (for a dry run: would do).
struct GcReport {
  std::string run;           // the run's id (gc/<run>.json); empty for a dry run
  bool dry_run = false;      // the options' value
  uint64_t backups = 0;      // readable records
  uint64_t live_blocks = 0;  // distinct digests they reference
  uint64_t packs = 0;        // packs with a readable pack index
  uint64_t pack_bytes = 0;   // their size (all indexed packs)
  uint64_t dead_packs = 0;   // indexed packs none of whose blocks is live
  uint64_t dead_pack_bytes = 0;
  uint64_t partly_live_packs = 0;                // packs with live and dead blocks
  uint64_t dead_bytes_in_partly_live_packs = 0;  // stored bytes of their dead blocks
  uint64_t live_stored_bytes = 0;                // stored bytes of the live blocks in indexed packs
  uint64_t repack_candidates = 0;     // partly-live packs chosen to repack (max_unused_percent)
  uint64_t packs_repacked = 0;        // of them, rewritten by this run (their index deleted)
  uint64_t bytes_repacked = 0;        // size of the new packs written for them
  uint64_t new_candidates = 0;        // dead packs listed for a later run (grace not passed)
  uint64_t indexes_deleted = 0;       // pack indexes deleted (packs condemned; deleted next run)
  uint64_t packs_deleted = 0;         // condemned packs deleted
  uint64_t bytes_deleted = 0;         // bytes of packs, orphans and temporaries deleted
  uint64_t indexes_restored = 0;      // condemned packs found live again, their index restored
  uint64_t packs_leased = 0;          // deletions postponed because a running backup may use them
  uint64_t orphan_packs_deleted = 0;  // packs without an index, garbage for longer than the grace
  uint64_t temporaries_deleted = 0;   // stray .tmp/ files of killed writers
  uint64_t restore_partials_deleted = 0;  // *.vmbackup-partial-* files in GcOptions::restore_dirs
  uint64_t leases_active = 0;             // leases honoured
  uint64_t leases_expired = 0;            // leases older than lease_expiry, deleted
  // Bytes this run would free if the grace had passed for everything dead now (dead packs,
  // condemned packs, dead bytes of repack candidates, orphans and temporaries seen): what a dry
  // run reports as "reclaimable".
  uint64_t reclaimable_bytes = 0;
  std::vector<std::string> damaged;  // damaged records or pack indexes (GC refuses to sweep)
};

// `report` as one compact JSON object with the field names above. Never fails. Thread-safe.
VMBACKUP_EXPORT std::string GcReportToJson(const GcReport& report);

}  // namespace vmbackup

#endif  // VMBACKUP_MAINTENANCE_H_
