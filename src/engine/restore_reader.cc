// The restore's reader (see restore_reader.h).
#include "engine/restore_reader.h"

#include <algorithm>
#include <tuple>

#include "core/errors.h"
#include "core/util.h"

namespace vmbackup::internal {

Status FetchError(const Status& got, const std::string& where, const std::string& key,
                  uint64_t begin, uint64_t end) {
  const StatusCode c = got.code();
  if (c == StatusCode::kNotFound)
    return DataLossError(where + ": pack object " + key + " is missing");
  if (c == StatusCode::kOutOfRange || c == StatusCode::kDataLoss)
    return DataLossError(where + ": pack object " + key + " does not hold bytes " +
                         std::to_string(begin) + "-" + std::to_string(end) +
                         " that its pack index lists (" + got.message() + ")");
  return got.WithContext(where + ", object " + key);
}

RestoreReader::RestoreReader(ObjectStore& store, const RepoIndex& index, const VolumeIndex& vidx,
                             uint64_t volume_size, std::string backup, std::string volume,
                             const BlockNamer& namer)
    : store_(store),
      index_(index),
      vidx_(vidx),
      volume_size_(volume_size),
      bs_(vidx.block_size),
      backup_(std::move(backup)),
      volume_(std::move(volume)),
      namer_(namer) {}

std::string RestoreReader::Where(uint64_t b) const {
  return "backup '" + backup_ + "', volume '" + volume_ + "', offset " + std::to_string(b * bs_);
}

Status RestoreReader::Plan(uint64_t max_gap, uint64_t max_unit) {
  // Every data block located in its pack, then sorted by (pack, offset) and cut into fetch units:
  // runs of nearby blocks of one pack read with ONE ranged Get.
  pieces_.clear();
  const uint64_t nblocks = vidx_.block_count();
  for (uint64_t b = 0; b < nblocks; ++b) {
    if (vidx_.kinds[b] != BlockKind::kData) continue;
    const BlockLocation* loc = index_.Find(vidx_.digests[b]);
    if (loc == nullptr) {
      std::string msg = Where(b) + ": block " + ToHex(vidx_.digests[b]) + " is in no pack index";
      if (!index_.damaged().empty()) msg += " (damaged: " + index_.damaged().front() + ")";
      return DataLossError(msg);
    }
    if (loc->raw_len != block_length(b))
      return DataLossError(Where(b) + ": pack index gives the block a different length");
    pieces_.push_back({loc->pack, loc->offset, loc, b});
  }
  std::sort(pieces_.begin(), pieces_.end(), [](const RestorePiece& a, const RestorePiece& b) {
    return std::tie(a.pack, a.offset, a.block) < std::tie(b.pack, b.offset, b.block);
  });
  std::vector<ReadPiece> read_pieces;
  read_pieces.reserve(pieces_.size());
  for (const RestorePiece& p : pieces_)
    read_pieces.push_back({p.pack, p.offset, p.loc->stored_len});
  units_ = CoalesceReads(read_pieces, max_gap, max_unit);
  return Status::Ok();
}

std::string RestoreReader::UnitKey(size_t unit) const {
  return PackKey(index_.pack_id(pieces_[units_[unit].first].pack));
}

Status RestoreReader::Fetch(size_t unit, std::string* buf) const {
  const ReadUnit& u = units_[unit];
  const std::string key = UnitKey(unit);
  Status got = store_.GetInto(key, u.begin, u.end - u.begin, buf);
  if (!got.ok()) return FetchError(got, Where(pieces_[u.first].block), key, u.begin, u.end);
  return Status::Ok();
}

Status RestoreReader::Decode(size_t unit, size_t p, const std::string& buf, char* raw) const {
  const ReadUnit& u = units_[unit];
  const RestorePiece& piece = pieces_[p];
  const size_t len = block_length(piece.block);
  Status st = DecodeBlock(piece.loc->codec, buf.data() + (piece.offset - u.begin),
                          piece.loc->stored_len, raw, len);
  if (st.ok() && namer_(raw, len) != vidx_.digests[piece.block])
    st = DataLossError("digest mismatch (corrupt block)");
  if (!st.ok())
    return DataLossError(Where(piece.block) + ", object " + UnitKey(unit) + " at " +
                         std::to_string(piece.offset) + ": " + st.message());
  return Status::Ok();
}

}  // namespace vmbackup::internal
