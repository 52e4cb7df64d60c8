// The restore's writer side: destinations, the blocks a device needs zeroed, and the temporary
// file that only a finished volume leaves behind (src/engine/restore_writer.h).
#include "engine/restore_writer.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <string>
#include <vector>

#include "support/test_util.h"

namespace vmbackup::internal {
namespace {

using ::vmbackup::testing::FileExists;
using ::vmbackup::testing::FileSize;
using ::vmbackup::testing::ListFiles;
using ::vmbackup::testing::ReadAll;
using ::vmbackup::testing::TempDir;
using ::vmbackup::testing::WriteAll;

TEST(NonDataBlocksTest, ListsHolesAndZeroBlocksInOrder) {
  VolumeIndex v;
  v.kinds = {BlockKind::kData, BlockKind::kHole, BlockKind::kZero, BlockKind::kData,
             BlockKind::kHole};
  EXPECT_EQ(NonDataBlocks(v), (std::vector<uint64_t>{1, 2, 4}));
  EXPECT_TRUE(NonDataBlocks(VolumeIndex{}).empty());
}

TEST(ClassifyDestinationTest, NewFilesExistingFilesAndOtherThings) {
  TempDir dir;
  auto fresh = ClassifyDestination(dir.Sub("new.img"), false, false, 100);
  ASSERT_OK(fresh);
  EXPECT_EQ(fresh->kind, Destination::kNew);
  EXPECT_EQ(fresh->write_path, dir.Sub("new.img"));

  WriteAll(dir.Sub("old.img"), "x");
  EXPECT_THAT(ClassifyDestination(dir.Sub("old.img"), false, false, 100),
              StatusIs(StatusCode::kAlreadyExists, "set overwrite to replace it"));
  auto old = ClassifyDestination(dir.Sub("old.img"), false, true, 100);
  ASSERT_OK(old);
  EXPECT_EQ(old->kind, Destination::kFile);

  // A link to a file is a file to replace, never written through.
  ASSERT_EQ(::symlink(dir.Sub("old.img").c_str(), dir.Sub("link.img").c_str()), 0);
  auto link = ClassifyDestination(dir.Sub("link.img"), true, true, 100);
  ASSERT_OK(link);
  EXPECT_EQ(link->kind, Destination::kFile);
  EXPECT_EQ(link->write_path, dir.Sub("link.img"));

  EXPECT_THAT(
      ClassifyDestination(dir.path(), false, true, 100),
      StatusIs(StatusCode::kFailedPrecondition, "neither a regular file nor a block device"));
}

TEST(VolumeWriterTest, AFinishedVolumeLeavesItsTemporaryFileForTheRename) {
  TempDir dir;
  const std::string dest = dir.Sub("disk.img");
  auto w = VolumeWriter::Open(dest, false, false, 0640, 3000);
  ASSERT_OK(w);
  const std::string tmp = (*w)->path();
  EXPECT_FALSE((*w)->is_block());
  EXPECT_EQ(tmp.rfind(dest + ".vmbackup-partial-", 0), 0u) << tmp;
  EXPECT_EQ(FileSize(tmp), 3000u);  // sized sparse
  ASSERT_OK((*w)->Write("abc", 3, 1000));
  (*w)->NoteWritten(3);
  ASSERT_OK((*w)->Finish());
  w->reset();
  EXPECT_FALSE(FileExists(dest));
  ASSERT_TRUE(FileExists(tmp));
  EXPECT_EQ(ReadAll(tmp).substr(1000, 3), "abc");
  struct stat sb;
  ASSERT_EQ(::stat(tmp.c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 0777, 0640u);
}

TEST(VolumeWriterTest, AnUnfinishedVolumeLeavesNothing) {
  TempDir dir;
  {
    auto w = VolumeWriter::Open(dir.Sub("disk.img"), false, false, 0600, 100);
    ASSERT_OK(w);
    ASSERT_OK((*w)->Write("abc", 3, 0));
  }
  EXPECT_TRUE(ListFiles(dir.path()).empty());
}

TEST(VolumeWriterTest, ADestinationThatAppearedIsRefusedAgain) {
  TempDir dir;
  WriteAll(dir.Sub("disk.img"), "x");
  EXPECT_THAT(VolumeWriter::Open(dir.Sub("disk.img"), false, false, 0600, 100),
              StatusIs(StatusCode::kAlreadyExists, "exists"));
  EXPECT_EQ(ListFiles(dir.path()), (std::vector<std::string>{"disk.img"}));
}

}  // namespace
}  // namespace vmbackup::internal
