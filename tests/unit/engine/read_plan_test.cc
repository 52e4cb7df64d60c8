// CoalesceReads: the restore's ranged reads (src/engine/read_plan.h).
#include "engine/read_plan.h"

#include <gtest/gtest.h>

#include <random>

namespace vmbackup::internal {
namespace {

std::vector<std::vector<uint64_t>> Shape(const std::vector<ReadUnit>& units) {
  std::vector<std::vector<uint64_t>> out;
  for (const auto& u : units) out.push_back({u.first, u.last, u.begin, u.end});
  return out;
}

TEST(CoalesceReadsTest, AdjacentAndNearbyPiecesOfOnePackAreOneRead) {
  // 0-100, 100-200 adjacent; 250-300 after a 50-byte gap (joins with max_gap 64).
  std::vector<ReadPiece> p = {{1, 0, 100}, {1, 100, 100}, {1, 250, 50}};
  EXPECT_EQ(Shape(CoalesceReads(p, 64, 1 << 20)),
            (std::vector<std::vector<uint64_t>>{{0, 3, 0, 300}}));
  // The same with max_gap 49: the gap splits the read.
  EXPECT_EQ(Shape(CoalesceReads(p, 49, 1 << 20)),
            (std::vector<std::vector<uint64_t>>{{0, 2, 0, 200}, {2, 3, 250, 300}}));
}

TEST(CoalesceReadsTest, ReadsNeverSpanPacksOrExceedTheUnit) {
  std::vector<ReadPiece> p = {{1, 0, 100}, {2, 100, 100}, {2, 200, 100}, {2, 300, 100}};
  EXPECT_EQ(
      Shape(CoalesceReads(p, 1000, 200)),
      (std::vector<std::vector<uint64_t>>{{0, 1, 0, 100}, {1, 3, 100, 300}, {3, 4, 300, 400}}));
}

TEST(CoalesceReadsTest, RepeatedAndOverlappingPiecesCostNothingAndOversizedPiecesStandAlone) {
  // Two volume blocks with the same content point at the same stored bytes.
  std::vector<ReadPiece> p = {{1, 0, 100}, {1, 0, 100}, {1, 50, 100}, {1, 1000, 5000}};
  EXPECT_EQ(Shape(CoalesceReads(p, 10, 1000)),
            (std::vector<std::vector<uint64_t>>{{0, 3, 0, 150}, {3, 4, 1000, 6000}}));
  EXPECT_TRUE(CoalesceReads({}, 10, 1000).empty());
}

// Every piece in exactly one read, in order, inside the read's range; reads within the bounds.
TEST(CoalesceReadsTest, RandomPlansCoverEveryPieceOnceWithinTheBounds) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    std::vector<ReadPiece> p;
    uint32_t pack = 0;
    uint64_t off = 0;
    const int n = static_cast<int>(rng() % 300);
    for (int i = 0; i < n; ++i) {
      if (rng() % 10 == 0) {
        ++pack;
        off = 0;
      }
      off += rng() % 3 == 0 ? rng() % 4096 : 0;
      const uint64_t len = 1 + rng() % 70000;
      p.push_back({pack, off, len});
      if (rng() % 5 != 0) off += len;
    }
    const uint64_t gap = rng() % 8192, unit = 65536 + rng() % (1 << 20);
    const auto units = CoalesceReads(p, gap, unit);
    size_t next = 0;
    for (const auto& u : units) {
      ASSERT_EQ(u.first, next);
      ASSERT_GT(u.last, u.first);
      next = u.last;
      if (u.last - u.first > 1) {
        EXPECT_LE(u.end - u.begin, unit);
      }
      for (size_t i = u.first; i < u.last; ++i) {
        EXPECT_EQ(p[i].pack, p[u.first].pack);
        EXPECT_GE(p[i].offset, u.begin);
        EXPECT_LE(p[i].offset + p[i].length, u.end);
      }
    }
    EXPECT_EQ(next, p.size());
  }
}

}  // namespace
}  // namespace vmbackup::internal
