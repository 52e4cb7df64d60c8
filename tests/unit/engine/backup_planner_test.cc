// The backup planner's pure parts: block plans from extents, dirty ranges and the parent's index,
// and the choice of the fingerprint reference (src/engine/backup_planner.h).
#include "engine/backup_planner.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace vmbackup::internal {
namespace {

constexpr uint32_t kBs = 64 * 1024;
constexpr BlockPlan R = BlockPlan::kRead;
constexpr BlockPlan H = BlockPlan::kHole;
constexpr BlockPlan C = BlockPlan::kCopy;

// A parent index of `size` bytes (its contents do not matter to the plan).
VolumeIndex ParentOf(uint64_t size) {
  VolumeIndex v;
  v.volume_size = size;
  v.block_size = kBs;
  v.kinds.assign((size + kBs - 1) / kBs, BlockKind::kData);
  v.digests.assign(v.kinds.size(), Digest{});
  return v;
}

TEST(MarkBlocksTest, MarksEveryBlockAnExtentTouches) {
  std::vector<BlockPlan> plan(8, H);
  // One byte at the end of block 0 and the start of block 1; block 3 exactly; an empty extent in
  // block 5; an extent running past the end.
  MarkBlocks({{kBs - 1, 2}, {3 * kBs, kBs}, {5 * kBs, 0}, {7 * kBs + 10, 10 * kBs}}, kBs, &plan, R);
  EXPECT_EQ(plan, (std::vector<BlockPlan>{R, R, H, R, H, H, H, R}));
}

TEST(MarkBlocksTest, ExtentsPastTheEndAndEmptyPlansAreIgnored) {
  std::vector<BlockPlan> plan(2, H);
  MarkBlocks({{5 * kBs, kBs}}, kBs, &plan, R);
  EXPECT_EQ(plan, (std::vector<BlockPlan>{H, H}));
  std::vector<BlockPlan> empty;
  MarkBlocks({{0, kBs}}, kBs, &empty, R);
  EXPECT_TRUE(empty.empty());
}

TEST(PlanBlocksTest, DataExtentsAreReadAndTheRestAreHoles) {
  // 4.5 blocks: the last block is partial.
  const uint64_t size = 4 * kBs + kBs / 2;
  EXPECT_EQ(PlanBlocks(size, kBs, {{0, 1}, {2 * kBs, 2 * kBs + 1}}, nullptr, nullptr),
            (std::vector<BlockPlan>{R, H, R, R, R}));
  EXPECT_EQ(PlanBlocks(size, kBs, {}, nullptr, nullptr), (std::vector<BlockPlan>(5, H)));
  EXPECT_TRUE(PlanBlocks(0, kBs, {}, nullptr, nullptr).empty());
}

TEST(PlanBlocksTest, WithADirtyMapCleanBlocksAreCopiedFromTheParent) {
  const uint64_t size = 6 * kBs;
  const VolumeIndex parent = ParentOf(size);
  const std::vector<Extent> dirty = {{kBs, 1}, {4 * kBs, kBs}};
  // Data everywhere: only the dirty blocks are read.
  EXPECT_EQ(PlanBlocks(size, kBs, {{0, size}}, &dirty, &parent),
            (std::vector<BlockPlan>{C, R, C, C, R, C}));
  // Clean holes of the snapshot are copied too (the parent's entry says what they are); dirty
  // blocks outside every data extent stay holes.
  EXPECT_EQ(PlanBlocks(size, kBs, {{kBs, kBs}}, &dirty, &parent),
            (std::vector<BlockPlan>{C, R, C, C, H, C}));
  // No dirty range: everything is copied.
  const std::vector<Extent> none;
  EXPECT_EQ(PlanBlocks(size, kBs, {{0, size}}, &none, &parent), (std::vector<BlockPlan>(6, C)));
}

TEST(PlanBlocksTest, OnlyBlocksTheParentHoldsInFullAreCopied) {
  const std::vector<Extent> none;
  // The volume grew from 2.5 to 4 blocks: the parent's partial last block and the new blocks are
  // read.
  const VolumeIndex smaller = ParentOf(2 * kBs + kBs / 2);
  EXPECT_EQ(PlanBlocks(4 * kBs, kBs, {{0, 4 * kBs}}, &none, &smaller),
            (std::vector<BlockPlan>{C, C, R, R}));
  // The same parent, same size: its partial last block is this volume's and is copied.
  EXPECT_EQ(PlanBlocks(2 * kBs + kBs / 2, kBs, {{0, 3 * kBs}}, &none, &smaller),
            (std::vector<BlockPlan>{C, C, C}));
  // An empty parent holds nothing.
  const VolumeIndex empty = ParentOf(0);
  EXPECT_EQ(PlanBlocks(2 * kBs, kBs, {{0, 2 * kBs}}, &none, &empty),
            (std::vector<BlockPlan>{R, R}));
}

BackupInfo Backup(std::string name, std::string vm, std::string ns, std::string created_at) {
  BackupInfo b;
  b.name = std::move(name);
  b.vm_name = std::move(vm);
  b.vm_namespace = std::move(ns);
  b.created_at = std::move(created_at);
  return b;
}

TEST(ReferenceTest, SameVmComparesNameAndNamespace) {
  EXPECT_TRUE(SameVm(Backup("b", "vm", "ns", ""), "vm", "ns"));
  EXPECT_FALSE(SameVm(Backup("b", "vm", "other", ""), "vm", "ns"));
  EXPECT_FALSE(SameVm(Backup("b", "other", "ns", ""), "vm", "ns"));
}

TEST(ReferenceTest, NewestOfVmPicksTheNewestBackupOfTheSameVmAndTheFirstOfEquals) {
  std::vector<BackupInfo> list = {
      Backup("a", "vm", "ns", "2026-01-01T00:00:00Z"),
      Backup("b", "vm", "ns", "2026-03-01T00:00:00Z"),
      Backup("c", "vm", "", "2026-05-01T00:00:00Z"),       // another namespace
      Backup("d", "other", "ns", "2026-06-01T00:00:00Z"),  // another VM
      Backup("e", "vm", "ns", "2026-03-01T00:00:00Z"),     // as new as b
  };
  auto ref = NewestOfVm(list, "vm", "ns");
  ASSERT_TRUE(ref.has_value());
  EXPECT_EQ(ref->name, "b");
  EXPECT_FALSE(NewestOfVm(list, "nobody", "ns").has_value());
  EXPECT_FALSE(NewestOfVm({}, "vm", "ns").has_value());
}

}  // namespace
}  // namespace vmbackup::internal
