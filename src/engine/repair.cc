// Repair (see repair.h).
#include "engine/repair.h"

#include <algorithm>
#include <memory>
#include <set>

#include <absl/container/flat_hash_set.h>

#include "core/errors.h"
#include "core/util.h"
#include "engine/verify.h"

namespace vmbackup::internal {

namespace {

// The blocks of `entries` that `data` (bytes [0, data.size()) of the pack) holds and that decode
// to their digest; the others go to *lost with the reason.
std::vector<PackEntry> CheckBlocks(std::string_view data, const std::vector<PackEntry>& entries,
                                   const BlockNamer& namer,
                                   std::vector<std::pair<PackEntry, std::string>>* lost) {
  std::vector<PackEntry> good;
  std::unique_ptr<char[]> raw;
  uint32_t cap = 0;
  for (const PackEntry& e : entries) {
    if (e.offset > data.size() || e.stored_len > data.size() - e.offset) {
      lost->emplace_back(e, "beyond the end of the pack");
      continue;
    }
    if (cap < e.raw_len) {
      raw.reset(new char[e.raw_len]);
      cap = e.raw_len;
    }
    Status st = DecodeBlock(e.codec, data.data() + e.offset, e.stored_len, raw.get(), e.raw_len);
    if (st.ok() && namer(raw.get(), e.raw_len) != e.digest)
      st = DataLossError("digest mismatch (corrupt block)");
    if (!st.ok()) {
      lost->emplace_back(e, st.message());
      continue;
    }
    good.push_back(e);
  }
  return good;
}

class Repairer {
 public:
  Repairer(Repository& repo, const RepairOptions& opts, const Verifier& verifier)
      : repo_(repo), store_(repo.store()), opts_(opts), verifier_(verifier) {}

  // Repairs pack `p` (see repair.h); fills `a` (its action) and the digests kept and lost.
  void RepairPack(const Verifier::PackState& p, RepairAction* a) {
    a->pack_id = p.id;
    good_.clear();
    Status st = Repair(p, a);
    if (!st.ok()) {
      a->done = false;
      a->error = st.message();
      return;
    }
    for (const Digest& d : good_) kept.insert(d);
  }

  // Blocks that a pack index lists after the repairs done so far (or planned, in a dry run), and
  // blocks they took out.
  absl::flat_hash_set<Digest, DigestHash> kept, lost;

 private:
  Status Repair(const Verifier::PackState& p, RepairAction* a) {
    const std::string pack_key = PackKey(p.id), index_key = PackIndexKey(p.id);
    if (!p.has_pack) {
      // Nothing to salvage: the index goes, its blocks are lost.
      a->action = "removed index";
      a->detail = p.problem;
      if (p.index_ok) {
        VMB_ASSIGN_OR_RETURN(std::string bytes, store_.GetAtMost(index_key, kMaxWholeObjectRead));
        VMB_ASSIGN_OR_RETURN(auto entries, DecodePackIndex(bytes, p.id, "pack index " + index_key));
        a->blocks_lost = entries.size();
        for (const PackEntry& e : entries) lost.insert(e.digest);
      }
      if (!opts_.dry_run) VMB_RETURN_IF_ERROR(store_.Delete({index_key}));
      a->done = !opts_.dry_run;
      return Status::Ok();
    }
    if (p.pack_size > kMaxRepairRead)
      return FailedPreconditionError("pack " + pack_key + " holds " + std::to_string(p.pack_size) +
                                     " bytes, more than repair reads (" +
                                     std::to_string(kMaxRepairRead) + ")");
    std::vector<PackEntry> entries;
    std::string index_copy;  // the trailer's copy, when the index comes from there
    std::string data;
    if (!p.index_ok) {
      // Damaged or missing index: the whole pack, and the index copy in its trailer.
      a->detail = p.has_index ? p.problem
                              : "pack has no index (its index was deleted, or a "
                                "backup was interrupted before writing it)";
      VMB_ASSIGN_OR_RETURN(data, store_.Get(pack_key, 0, p.pack_size));
      auto from_trailer = DecodePackTrailer(data, p.id, "pack " + pack_key);
      if (!from_trailer.ok())
        return DataLossError("cannot rebuild the index: " + from_trailer.status().message());
      entries = std::move(*from_trailer);
      const uint64_t index_offset = GetU64(data.data() + data.size() - 16);
      index_copy = data.substr(index_offset, data.size() - 16 - index_offset);
    } else {
      a->detail = p.problem;
      VMB_ASSIGN_OR_RETURN(std::string bytes, store_.GetAtMost(index_key, kMaxWholeObjectRead));
      VMB_ASSIGN_OR_RETURN(entries, DecodePackIndex(bytes, p.id, "pack index " + index_key));
      uint64_t data_end = kPackMagic.size();
      for (const PackEntry& e : entries) data_end = std::max(data_end, e.offset + e.stored_len);
      const uint64_t n = std::min(data_end, p.pack_size);
      auto got = store_.Get(pack_key, 0, n);
      if (!got.ok()) {
        if (got.status().code() != StatusCode::kNotFound) return got.status();
        data.clear();  // deleted meanwhile: every block is lost
      } else {
        data = std::move(*got);
      }
    }
    std::vector<std::pair<PackEntry, std::string>> bad;
    std::vector<PackEntry> good = CheckBlocks(data, entries, repo_.block_namer(), &bad);
    a->blocks_kept = good.size();
    a->blocks_lost = bad.size();
    for (const PackEntry& e : good) good_.push_back(e.digest);
    for (const auto& [e, why] : bad) lost.insert(e.digest);
    if (!bad.empty())
      a->detail +=
          "; first lost block at " + std::to_string(bad[0].first.offset) + ": " + bad[0].second;

    if (bad.empty() && !index_copy.empty() && !p.has_index &&
        std::none_of(good.begin(), good.end(),
                     [&](const PackEntry& e) { return verifier_.Unindexed(e.digest); })) {
      // A pack without an index that no backup needs: garbage collection condemned it (deleted
      // its index; the pack goes in a later run), or a killed backup left it. Indexing it again
      // would undo GC's work and, during a GC run, let a backup deduplicate against a pack about
      // to be deleted. Left for garbage collection.
      a->action = "none";
      a->detail += "; no backup needs its blocks: left for garbage collection";
      good_.clear();
      return Status::Ok();
    }
    if (bad.empty() && !index_copy.empty()) {
      // Every block good: the trailer's copy is the index, byte for byte.
      a->action = "rebuilt index";
      if (opts_.dry_run) return Status::Ok();
      if (p.has_index) VMB_RETURN_IF_ERROR(store_.Delete({index_key}));
      Status put = store_.Put(index_key, index_copy, PutOptions{.if_absent = true});
      if (!put.ok() && put.code() != StatusCode::kAlreadyExists) return put;
      a->done = true;
      return Status::Ok();
    }
    if (bad.empty()) {
      // The index is readable and the pack holds every block it lists (a pack larger than its
      // index says, say): nothing to take out.
      a->action = "none";
      a->detail += "; every block checks";
      return Status::Ok();
    }
    if (!p.has_index) {
      // A pack without an index that has bad blocks: nothing lists its blocks, so only those a
      // backup needs and no index lists are worth copying (the rest is garbage for GC; copying
      // it would make every later repair copy it again).
      good.erase(std::remove_if(good.begin(), good.end(),
                                [&](const PackEntry& e) { return !verifier_.Unindexed(e.digest); }),
                 good.end());
      good_.clear();
      for (const PackEntry& e : good) good_.push_back(e.digest);
      a->blocks_kept = good.size();
      if (good.empty()) {
        a->action = "none";
        return Status::Ok();
      }
    }
    // Some blocks are lost: the good ones move to a new pack, then the old index goes.
    a->action = good.empty() ? "removed index" : "repacked";
    if (opts_.dry_run) return Status::Ok();
    if (!good.empty()) {
      PackBuilder builder(std::max<uint32_t>(repo_.descriptor().pack_size, 1));
      std::unique_ptr<char[]> raw;
      uint32_t cap = 0;
      for (const PackEntry& e : good) {
        if (cap < e.raw_len) {
          raw.reset(new char[e.raw_len]);
          cap = e.raw_len;
        }
        VMB_RETURN_IF_ERROR(
            DecodeBlock(e.codec, data.data() + e.offset, e.stored_len, raw.get(), e.raw_len));
        builder.Add(e.digest, raw.get(), e.raw_len);
      }
      VMB_ASSIGN_OR_RETURN(PackBuilder::Sealed sealed, builder.Seal());
      a->new_pack_id = sealed.id;
      // Data before metadata: the new pack is durable before its index makes it visible, and the
      // new index is published before the old one goes, so good blocks never vanish.
      VMB_RETURN_IF_ERROR(store_.Put(PackKey(sealed.id), sealed.data, PutOptions{}));
      VMB_RETURN_IF_ERROR(store_.Put(PackIndexKey(sealed.id), sealed.index, PutOptions{}));
    }
    if (p.has_index) VMB_RETURN_IF_ERROR(store_.Delete({index_key}));
    a->done = true;
    return Status::Ok();
  }

  Repository& repo_;
  ObjectStore& store_;
  const RepairOptions& opts_;
  const Verifier& verifier_;
  std::vector<Digest> good_;  // blocks the pack being repaired keeps
};

}  // namespace

StatusOr<RepairReport> RepairRepository(Repository& repo, Runtime& rt,
                                        const RepairOptions& options) {
  RepairReport report;
  report.dry_run = options.dry_run;
  VerifyOptions vopts = options.verify;
  vopts.max_bad_blocks_listed = 0;  // every bad block: they decide which backups stay damaged
  Verifier verifier(repo, rt, vopts);
  VMB_ASSIGN_OR_RETURN(report.before, verifier.Run());
  Repairer repairer(repo, options, verifier);
  for (const Verifier::PackState& p : verifier.packs()) {
    const bool damaged = !p.problem.empty();
    const bool orphan = !p.has_index && p.has_pack;
    if (!damaged && !orphan) continue;
    RepairAction a;
    repairer.RepairPack(p, &a);
    if (a.action == "none" && a.error.empty()) continue;
    report.actions.push_back(std::move(a));
  }
  // A backup stays unrestorable when its record or a volume index is damaged, or one of its bad
  // blocks is neither in a pack the repair keeps (rebuilt or repacked) nor has a sound copy in a
  // pack the repair leaves alone (a bad second copy was repacked away).
  std::set<std::string> unrestorable(verifier.metadata_damaged().begin(),
                                     verifier.metadata_damaged().end());
  for (const BadBlock& b : report.before.bad_blocks) {
    Digest d{};
    if (!DigestFromHex(b.digest, &d) || (!repairer.kept.contains(d) && !verifier.HasSoundCopy(d)))
      unrestorable.insert(b.backup);
  }
  report.unrestorable_backups.assign(unrestorable.begin(), unrestorable.end());
  if (options.verify.max_bad_blocks_listed != 0 &&
      report.before.bad_blocks.size() > options.verify.max_bad_blocks_listed)
    report.before.bad_blocks.resize(options.verify.max_bad_blocks_listed);
  return report;
}

}  // namespace vmbackup::internal
