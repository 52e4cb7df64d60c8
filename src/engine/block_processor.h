// The backup's block processor: carries out a volume's block plan (backup_planner.h) on the
// runtime's workers. Each worker claims runs of blocks and, per block: records a hole; copies the
// parent's entry (kCopy); or reads the block, records a zero block, or computes its keyed
// fingerprint, takes its digest from the reference backup when the fingerprint matches there (else
// SHA-256), and stores it when no pack holds it and no other worker claimed it: added to the
// worker's pack, which is sealed and submitted to the PackUploader when full. Counters are kept
// per worker and published to the job's progress once per run of blocks.
//
// Thread-safety: one BlockProcessor serves one job; Process and FlushPartialPacks are called by
// the job's driver, one at a time (Process runs the workers and returns when they are done).
#ifndef VMBACKUP_ENGINE_BLOCK_PROCESSOR_H_
#define VMBACKUP_ENGINE_BLOCK_PROCESSOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/buffer_pool.h"
#include "engine/backup_planner.h"
#include "engine/job_runner.h"
#include "engine/pipeline.h"
#include "repo/fingerprints.h"
#include "repo/repository.h"
#include "vmbackup/runtime.h"

namespace vmbackup::internal {

// What the block processor made of one volume: what the publisher stores.
struct VolumeOutcome {
  VolumeIndex index;
  std::vector<BlockFingerprintEntry> fps;  // of the data blocks, in no particular order
  uint64_t data_blocks = 0, zero_blocks = 0, hole_blocks = 0;
  uint64_t bytes_new = 0, bytes_reused = 0, bytes_stored = 0;
};

class BlockProcessor {
 public:
  // Runs `nworkers` workers on `rt`, each with its own pack builder (of `pack_size`, buffers from
  // `pool`), submitting sealed packs to `uploader`; reports progress to `run` and stops when it is
  // cancelled. Blocks that `index` holds are referenced, not stored. `fkeys` null: no
  // fingerprints. `parent_name` names the parent backup in errors. `namer` names the blocks (the
  // repository's).
  // REQUIRES: every argument referred to outlives the processor.
  BlockProcessor(Runtime& rt, int nworkers, JobRunner& run, const RepoIndex& index,
                 const FingerprintKeys* fkeys, PackUploader& uploader, BufferPool* pool,
                 uint32_t pack_size, std::string parent_name,
                 const BlockNamer& namer = BlockNamer::Plain());
  BlockProcessor(const BlockProcessor&) = delete;
  BlockProcessor& operator=(const BlockProcessor&) = delete;

  // Processes every block of `vol` into `*out` (a volume index of vol's size and block size, its
  // fingerprints and counts). Returns the processor's first error (this volume's or an earlier
  // one's): a read error with context "volume '<name>'", kDataLoss for a kCopy block whose
  // digest no pack holds, a pack sealing error, or an exception escaping a worker. Stops early
  // without error when the job is cancelled or an upload failed (*out is then incomplete).
  Status Process(const VolumePlan& vol, VolumeOutcome* out);

  // Seals each worker's partial pack and submits it, unless the job was cancelled or an upload
  // failed. A sealing error becomes the processor's error.
  void FlushPartialPacks();

  // The first error (OK when none).
  Status error() const { return error_.Get(); }

 private:
  Runtime& rt_;
  const int nworkers_;
  JobRunner& run_;
  const RepoIndex& index_;
  const FingerprintKeys* fkeys_;
  PackUploader& uploader_;
  const std::string parent_name_;
  const BlockNamer& namer_;
  std::vector<PackBuilder> packs_;  // one per worker
  ClaimSet claims_;
  FirstError error_;
};

}  // namespace vmbackup::internal

#endif  // VMBACKUP_ENGINE_BLOCK_PROCESSOR_H_
