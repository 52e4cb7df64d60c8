// The restore's read plan: which ranged reads fetch a volume's blocks from their packs. A pure
// function, unit-tested on its own (tests/unit/engine/read_plan_test.cc).
//
// Thread-safety: stateless.
#ifndef VMBACKUP_ENGINE_READ_PLAN_H_
#define VMBACKUP_ENGINE_READ_PLAN_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace vmbackup::internal {

// A block's stored bytes: `length` bytes at `offset` in pack number `pack`.
struct ReadPiece {
  uint32_t pack = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
};

// One ranged read of bytes [begin, end) of one pack, covering pieces [first, last).
struct ReadUnit {
  size_t first = 0, last = 0;
  uint64_t begin = 0, end = 0;
};

// Cuts `pieces`, sorted by (pack, offset), into ranged reads: the next piece of the same pack
// joins the current read while it starts at most `max_gap` bytes after the read's end (the gap is
// read and dropped; pieces that overlap or repeat one another join at no cost) and the read stays
// within `max_unit` bytes. A piece longer than `max_unit` is a read of its own. Every piece is in
// exactly one read, in order; reads never span two packs.
std::vector<ReadUnit> CoalesceReads(const std::vector<ReadPiece>& pieces, uint64_t max_gap,
                                    uint64_t max_unit);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_ENGINE_READ_PLAN_H_
