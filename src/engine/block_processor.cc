// The backup's block processor (see block_processor.h).
#include "engine/block_processor.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>

#include "core/util.h"

namespace vmbackup::internal {

namespace {

// Blocks a worker claims at once (4 MiB with 256 KiB blocks).
constexpr uint64_t kClaim = 16;

}  // namespace

BlockProcessor::BlockProcessor(Runtime& rt, int nworkers, JobRunner& run, const RepoIndex& index,
                               const FingerprintKeys* fkeys, PackUploader& uploader,
                               BufferPool* pool, uint32_t pack_size, std::string parent_name,
                               const BlockNamer& namer)
    : rt_(rt),
      nworkers_(nworkers),
      run_(run),
      index_(index),
      fkeys_(fkeys),
      uploader_(uploader),
      parent_name_(std::move(parent_name)),
      namer_(namer) {
  packs_.reserve(static_cast<size_t>(nworkers));
  for (int i = 0; i < nworkers; ++i) packs_.emplace_back(pack_size, pool);
}

Status BlockProcessor::Process(const VolumePlan& w, VolumeOutcome* out) {
  JobRunner& run = run_;
  ProgressCounters& pc = run.counters();
  const RepoIndex* index = &index_;
  const BlockNamer* namer = &namer_;
  FirstError& error = error_;
  const uint32_t bs = w.block_size;
  const uint64_t nblocks = w.blocks.size();
  const uint64_t size = w.size;
  const bool fingerprints = fkeys_ != nullptr;
  const VolumeIndex* parent = w.parent.get();
  const VolumeIndex* ref = w.ref.get();
  out->index.volume_size = size;
  out->index.block_size = bs;
  out->index.kinds.assign(nblocks, BlockKind::kHole);
  out->index.digests.assign(nblocks, Digest{});
  std::mutex fps_mu;
  std::atomic<uint64_t> data_blocks{0}, zero_blocks{0}, hole_blocks{0}, bytes_new{0},
      bytes_reused{0}, bytes_stored{0};
  std::atomic<uint64_t> next{0};
  Status ran = RunOnWorkers(
      rt_, nworkers_,
      [&](int slot) {
        std::unique_ptr<char[]> buf(new char[bs]);
        PackBuilder& pack = packs_[static_cast<size_t>(slot)];
        // Counters are kept per worker and published once per batch: on a sparse 1 TiB volume the
        // shared atomics, updated per block, cost more than the work itself.
        struct {
          uint64_t data = 0, zero = 0, hole = 0, fresh = 0, reused = 0, stored = 0, read = 0,
                   scanned = 0, blocks = 0;
        } c;
        std::vector<BlockFingerprintEntry> fps;
        auto publish = [&] {
          if (!fps.empty()) {
            std::lock_guard<std::mutex> l(fps_mu);
            out->fps.insert(out->fps.end(), fps.begin(), fps.end());
            fps.clear();
          }
          data_blocks += c.data;
          zero_blocks += c.zero;
          hole_blocks += c.hole;
          bytes_new += c.fresh;
          bytes_reused += c.reused;
          bytes_stored += c.stored;
          pc.bytes_new += c.fresh;
          pc.bytes_reused += c.reused;
          pc.bytes_read += c.read;
          pc.bytes_scanned += c.scanned;
          pc.blocks_done += c.blocks;
          c = {};
          run.MaybeReport();
        };
        for (;;) {
          if (run.cancelled() || error.has_error() || uploader_.failed()) break;
          // Blocks are claimed kClaim at a time: fewer shared updates, longer sequential reads.
          const uint64_t first = next.fetch_add(kClaim, std::memory_order_relaxed);
          if (first >= nblocks) break;
          const uint64_t last = std::min(nblocks, first + kClaim);
          for (uint64_t b = first; b < last && !error.has_error(); ++b) {
            const uint64_t off = b * bs;
            const size_t len = static_cast<size_t>(std::min<uint64_t>(bs, size - off));
            c.scanned += len;
            c.blocks += 1;
            switch (w.blocks[b]) {
              case BlockPlan::kHole:
                out->index.kinds[b] = BlockKind::kHole;
                ++c.hole;
                break;
              case BlockPlan::kCopy: {
                BlockKind k = parent->kinds[b];
                out->index.kinds[b] = k;
                out->index.digests[b] = parent->digests[b];
                if (k == BlockKind::kData) {
                  if (index->Find(parent->digests[b]) == nullptr) {
                    error.Set(DataLossError("block at offset " + std::to_string(off) +
                                            " of volume '" + w.name + "' in parent backup '" +
                                            parent_name_ + "' is not in any pack index"));
                    break;
                  }
                  ++c.data;
                  c.reused += len;
                  if (ref == parent) {  // the parent's fingerprints stay valid for copies
                    if (const Fingerprint* rf = w.ref_fps.Find(b)) fps.push_back({b, *rf});
                  }
                } else {
                  ++(k == BlockKind::kZero ? c.zero : c.hole);
                }
                break;
              }
              case BlockPlan::kRead: {
                auto r = w.view->ReadAt(off, buf.get(), len);
                if (!r.ok()) {
                  error.Set(r.status().WithContext("volume '" + w.name + "'"));
                  break;
                }
                c.read += len;
                if (IsAllZero(buf.get(), len)) {
                  out->index.kinds[b] = BlockKind::kZero;
                  ++c.zero;
                  break;
                }
                // Unchanged since the reference backup (same keyed fingerprint at this offset,
                // and its block still indexed)? Then its digest is this block's: no SHA-256
                // needed.
                const Digest* known = nullptr;
                if (fingerprints) {
                  const Fingerprint fp = BlockFingerprint(fkeys_->gmac, buf.get(), len);
                  fps.push_back({b, fp});
                  const VolumeIndex* ri = ref;
                  if (ri != nullptr && b < ri->block_count() && ri->kinds[b] == BlockKind::kData &&
                      std::min<uint64_t>(bs, ri->volume_size - off) == len) {
                    const Fingerprint* rf = w.ref_fps.Find(b);
                    if (rf != nullptr && *rf == fp && index->Find(ri->digests[b]) != nullptr)
                      known = &ri->digests[b];
                  }
                }
                const Digest d = known != nullptr ? *known : (*namer)(buf.get(), len);
                out->index.kinds[b] = BlockKind::kData;
                out->index.digests[b] = d;
                ++c.data;
                if (index->Find(d) != nullptr || !claims_.TryClaim(d)) {
                  c.reused += len;
                  break;
                }
                const PackEntry& e = pack.Add(d, buf.get(), len);
                c.fresh += len;
                c.stored += e.stored_len;
                if (pack.full()) {
                  auto sealed = pack.Seal();
                  if (!sealed.ok()) {
                    error.Set(sealed.status());
                    break;
                  }
                  uploader_.Submit(std::move(*sealed));
                }
                break;
              }
            }
          }
          publish();
        }
        publish();
      },
      "backup of volume '" + w.name + "'");
  error.Set(ran);
  out->data_blocks = data_blocks;
  out->zero_blocks = zero_blocks;
  out->hole_blocks = hole_blocks;
  out->bytes_new = bytes_new;
  out->bytes_reused = bytes_reused;
  out->bytes_stored = bytes_stored;
  return error.Get();
}

void BlockProcessor::FlushPartialPacks() {
  if (run_.cancelled() || uploader_.failed()) return;
  for (auto& p : packs_) {
    if (p.empty()) continue;
    auto sealed = p.Seal();
    if (!sealed.ok()) {
      error_.Set(sealed.status());
      break;
    }
    uploader_.Submit(std::move(*sealed));
  }
}

}  // namespace vmbackup::internal
