// Verification and repair of a backup target: the options and reports of BackupTarget::Verify and
// BackupTarget::Repair, and their one JSON form (shared by the C binding, Python and vmbackupctl).
//
// Verify reads the target and changes nothing. Its fast form checks that every backup record and
// volume index reads back, that every block a backup references is in a readable pack index, and
// that every pack exists with the size its index gives; with `read_data` it also fetches every
// referenced block (or a subset of the packs) and checks its SHA-256. Repair does what Verify
// does, then rebuilds damaged or missing pack indexes from the copy in their pack's trailer and
// takes blocks that are lost out of every pack index, so the next backup stores them again (see
// docs/FORMAT.md "Verification and repair").
//
// Plain values: copy and share them freely across threads.
#ifndef VMBACKUP_VERIFY_H_
#define VMBACKUP_VERIFY_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "vmbackup/export.h"
#include "vmbackup/options.h"
#include "vmbackup/status.h"

namespace vmbackup {

struct VerifyOptions {
  // Fetch every referenced block and check its SHA-256 (a full read of the referenced data).
  // Default false: the fast checks only (records, volume indexes, pack indexes, pack sizes).
  bool read_data = false;
  // With read_data: the share of packs whose blocks are read, chosen at random per run, from 0 to
  // 1. Default 1 = every pack.
  double read_data_fraction = 1;
  // With read_data: read only part `read_data_part` (1-based) of `read_data_parts` equal parts of
  // the packs (a pack belongs to part 1 + (its id's first 32 bits mod parts), so parts 1..m of m
  // cover every pack exactly once across m runs). Default 0 / 0 = no partition. Combines with
  // read_data_fraction (both must select a pack).
  uint32_t read_data_part = 0;
  uint32_t read_data_parts = 0;
  // Packs read at once with read_data, each in ranged reads of at most 32 MiB, so the memory the
  // read takes is about 32 MiB times this. Default 0 = 8.
  int parallel_reads = 0;
  // At most this many bad blocks are listed in the report (VerifyReport::bad_block_count counts
  // them all). Default 10000; 0 = no limit.
  uint64_t max_bad_blocks_listed = 10000;
  // Progress reports: phase kPreparing while records and indexes are read, kTransferring while
  // blocks are read (bytes_total / bytes_read: stored bytes to read and read so far; blocks_total /
  // blocks_done), kDone at the end. Returning false cancels (kCancelled). Called on the thread that
  // called Verify / Repair, never while the library holds a lock. Default none.
  ProgressCallback progress;
  // Minimum time between two progress reports, in ms. Default 200.
  int progress_interval_ms = 200;
};

// Parses a read_data subset as the CLI and the bindings take it: a fraction ("0.1"), a percentage
// ("10%") or a part "n/m" (1 <= n <= m). Sets the matching fields of *options. kInvalidArgument
// naming the text otherwise. Thread-safe.
VMBACKUP_EXPORT Status ParseReadDataSubset(std::string_view text, VerifyOptions* options);

// A referenced block that cannot be restored, at one place of one backup.
struct BadBlock {
  std::string backup;
  std::string volume;
  uint64_t offset = 0;       // byte offset of the block in the volume
  std::string digest;        // hex SHA-256 of the block
  std::string pack_id;       // the pack that should hold it; empty when no pack index lists it
  uint64_t pack_offset = 0;  // offset of its stored bytes in that pack
  std::string problem;       // what is wrong, e.g. "digest mismatch (corrupt block)"
};

// A pack or pack index that is damaged.
struct PackProblem {
  std::string pack_id;
  std::string problem;  // e.g. "pack index damaged: ...", "pack missing", "pack truncated: ..."
};

struct VerifyReport {
  uint64_t backups = 0;                      // backup records read
  uint64_t volumes = 0;                      // volume indexes read
  uint64_t blocks_referenced = 0;            // data blocks referenced by all backups (with repeats)
  uint64_t unique_blocks = 0;                // distinct data blocks referenced
  uint64_t bytes_referenced = 0;             // raw bytes of those distinct blocks
  uint64_t packs = 0;                        // pack indexes and packs seen
  uint64_t packs_without_index = 0;          // packs no index lists (left by interrupted backups)
  uint64_t packs_read = 0;                   // packs whose blocks were read (read_data)
  uint64_t blocks_checked = 0;               // blocks fetched and hashed (read_data)
  uint64_t bytes_checked = 0;                // raw bytes of those blocks
  uint64_t bytes_read = 0;                   // bytes fetched from the target to check them
  std::vector<std::string> damaged_records;  // "name: reason"
  std::vector<std::string> damaged_volume_indexes;  // the message naming backup, volume and key
  std::vector<PackProblem> pack_problems;
  std::vector<BadBlock> bad_blocks;  // at most VerifyOptions::max_bad_blocks_listed
  uint64_t bad_block_count = 0;      // every bad (backup, volume, offset)
  // Backups that cannot be restored whole (a bad block or a damaged volume index), sorted.
  std::vector<std::string> damaged_backups;
  double seconds = 0;

  // True when nothing is damaged.
  bool ok() const {
    return damaged_records.empty() && damaged_volume_indexes.empty() && pack_problems.empty() &&
           bad_block_count == 0;
  }
};

struct RepairOptions {
  // How damage is found (Repair verifies first). With verify.read_data, packs whose blocks fail
  // their digest are repaired too; without it only damaged or missing pack indexes, missing and
  // truncated packs are. Packs whose index is damaged or missing are always read whole.
  VerifyOptions verify;
  // Report what would be done without writing or deleting anything. Default false.
  bool dry_run = false;
};

// One repair of one pack.
struct RepairAction {
  std::string pack_id;
  // "rebuilt index" (the trailer's copy, every block checked, published), "repacked" (good
  // blocks copied to a new pack `new_pack_id`, the old pack's index removed), "removed index"
  // (the pack is missing or unreadable: its blocks are lost).
  std::string action;
  std::string new_pack_id;   // "repacked" only
  uint64_t blocks_kept = 0;  // blocks still listed by a pack index after the repair
  uint64_t blocks_lost = 0;  // blocks taken out: the next backup stores them again
  std::string detail;        // why
  bool done = false;         // false in a dry run (or when it failed: see `error`)
  std::string error;         // empty unless this repair failed
};

struct RepairReport {
  VerifyReport before;                // what Verify found
  std::vector<RepairAction> actions;  // in pack id order
  // Backups that still cannot be restored whole after the repair (their lost blocks, damaged
  // volume indexes or records), sorted. A later backup that reads the same data stores the lost
  // blocks again, and from then on these backups restore again.
  std::vector<std::string> unrestorable_backups;
  bool dry_run = false;
};

// The reports as compact JSON (schema: docs/c_api.md "Verify report", "Repair report"). Field
// names are the C++ names, plus "ok": VerifyReport::ok(); for a repair, true when nothing was
// damaged, or (not a dry run) every action succeeded and no backup stays unrestorable. Never
// fail. Thread-safe.
VMBACKUP_EXPORT std::string VerifyReportToJson(const VerifyReport& report);
VMBACKUP_EXPORT std::string RepairReportToJson(const RepairReport& report);

}  // namespace vmbackup

#endif  // VMBACKUP_VERIFY_H_
