// CoalesceReads (see read_plan.h).
#include "engine/read_plan.h"

#include <algorithm>

namespace vmbackup::internal {

std::vector<ReadUnit> CoalesceReads(const std::vector<ReadPiece>& pieces, uint64_t max_gap,
                                    uint64_t max_unit) {
  std::vector<ReadUnit> units;
  for (size_t i = 0; i < pieces.size();) {
    ReadUnit u{i, i + 1, pieces[i].offset, pieces[i].offset + pieces[i].length};
    while (u.last < pieces.size() && pieces[u.last].pack == pieces[i].pack) {
      const ReadPiece& p = pieces[u.last];
      const uint64_t pend = std::max(u.end, p.offset + p.length);
      if (p.offset > u.end + max_gap || pend - u.begin > max_unit) break;
      u.end = pend;
      ++u.last;
    }
    units.push_back(u);
    i = u.last;
  }
  return units;
}

}  // namespace vmbackup::internal
