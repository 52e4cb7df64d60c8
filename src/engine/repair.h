// Repair of damaged packs and pack indexes (docs/FORMAT.md "Verification and repair"), the engine
// behind BackupTarget::Repair. It runs a Verifier first, then handles each pack it found damaged:
//
//  - index damaged or missing, pack present: the pack is read whole (at most kMaxRepairRead
//    bytes), its trailer's copy of the index decoded and every block it lists decoded and checked
//    against its digest. All good: that copy is published as index/<id>.idx (a damaged one is
//    deleted first; create-if-absent, so a concurrent writer or repair that published it first
//    wins with the same bytes). Some bad: "repacked" as below, and the damaged index removed.
//  - index readable, pack truncated or with blocks that fail their check: the blocks the pack
//    still holds are checked; the good ones are copied into a new pack (new random id; pack
//    first, then its index), then the old pack's index is deleted.
//  - index readable or damaged, pack missing: the index is deleted.
//
// A lost block is therefore in no pack index afterwards, so the next backup that reads it stores
// it again (and from then on every backup that references it restores again). Packs are never
// deleted or rewritten: a pack whose index is gone is an orphan, which garbage collection removes.
//
// Thread-safety: called by one thread; safe while backups run (they only add objects; a backup
// that deduplicated against a block being repacked finds it in the new pack). Two repairs of one
// repository must not run at once.
#ifndef VMBACKUP_ENGINE_REPAIR_H_
#define VMBACKUP_ENGINE_REPAIR_H_

#include "repo/repository.h"
#include "vmbackup/runtime.h"
#include "vmbackup/verify.h"

namespace vmbackup::internal {

// The largest pack repair reads into memory.
inline constexpr uint64_t kMaxRepairRead = 2ull << 30;

// Verifies with options.verify, then repairs (or with dry_run only plans) as above. Errors: those
// of Verifier::Run; a failure to repair one pack is in its action, the others go on.
StatusOr<RepairReport> RepairRepository(Repository& repo, Runtime& rt,
                                        const RepairOptions& options);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_ENGINE_REPAIR_H_
