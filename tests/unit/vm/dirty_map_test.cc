// Dirty map parsing: both extent forms, and every malformed input named in the error.
#include "vm/dirty_map.h"

#include <gtest/gtest.h>

#include <limits>

#include "support/test_util.h"

namespace vmbackup::internal {
namespace {

TEST(DirtyMapTest, ParsesBothExtentFormsInOrder) {
  auto m = ParseDirtyMap(R"({"disk0": [[0, 4096], {"offset": 1048576, "length": 65536}],
                             "disk1": [], "disk2": [[18446744073709551615, 1]]})",
                         "dirty map 'm.json'");
  ASSERT_OK(m);
  ASSERT_EQ(m->size(), 3u);
  const std::vector<Extent>& d0 = m->at("disk0");
  ASSERT_EQ(d0.size(), 2u);
  EXPECT_EQ(d0[0].offset, 0u);
  EXPECT_EQ(d0[0].length, 4096u);
  EXPECT_EQ(d0[1].offset, 1048576u);
  EXPECT_EQ(d0[1].length, 65536u);
  EXPECT_TRUE(m->at("disk1").empty());  // listed with nothing changed: still a dirty map
  ASSERT_EQ(m->at("disk2").size(), 1u);
  EXPECT_EQ(m->at("disk2")[0].offset, std::numeric_limits<uint64_t>::max());
}

TEST(DirtyMapTest, EmptyObjectIsAnEmptyMap) {
  auto m = ParseDirtyMap("{}", "dirty map 'm.json'");
  ASSERT_OK(m);
  EXPECT_TRUE(m->empty());
}

struct BadDirtyMap {
  const char* json;
  const char* needle;
};

class BadDirtyMapTest : public ::testing::TestWithParam<BadDirtyMap> {};

TEST_P(BadDirtyMapTest, IsInvalidArgumentNamingTheMapAndThePlace) {
  auto m = ParseDirtyMap(GetParam().json, "dirty map 'm.json'");
  EXPECT_THAT(m, StatusIs(StatusCode::kInvalidArgument, "dirty map 'm.json'"));
  EXPECT_THAT(m, StatusIs(StatusCode::kInvalidArgument, GetParam().needle));
}

INSTANTIATE_TEST_SUITE_P(
    All, BadDirtyMapTest,
    ::testing::Values(
        BadDirtyMap{"", "expected a JSON object {volume: [[offset, length]]}"},
        BadDirtyMap{R"({"disk0": [[0, 1]])", "expected a JSON object"},
        BadDirtyMap{R"([["disk0", 0, 1]])", "expected a JSON object"},
        BadDirtyMap{R"({"disk0": {"offset": 0, "length": 1}})",
                    "volume 'disk0' must map to an array of extents"},
        BadDirtyMap{R"({"disk0": [[0, 1, 2]]})",
                    "volume 'disk0': extent must be [offset, length] or {offset, length}"},
        BadDirtyMap{R"({"disk0": [{"offset": 0}]})", "extent must be [offset, length]"},
        BadDirtyMap{R"({"disk0": [7]})", "extent must be [offset, length]"},
        BadDirtyMap{R"({"disk0": [[-1, 1]]})",
                    "volume 'disk0': extent offset must be a non-negative integer"},
        BadDirtyMap{R"({"disk0": [[0, -4096]]})", "extent length must be a non-negative integer"},
        BadDirtyMap{R"({"disk0": [[0.5, 1]]})", "extent offset must be a non-negative integer"},
        BadDirtyMap{R"({"disk0": [[0, 1e300]]})", "extent length must be a non-negative integer"},
        BadDirtyMap{R"({"disk0": [["0", 1]]})", "extent offset must be a non-negative integer"},
        BadDirtyMap{R"({"disk0": [[0, 1]], "disk1": [{"offset": 0, "length": null}]})",
                    "volume 'disk1': extent length must be a non-negative integer"}));

}  // namespace
}  // namespace vmbackup::internal
