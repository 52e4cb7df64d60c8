// BackupInfoToJson: the one JSON form of a backup (C binding and vmbackupctl).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "support/test_util.h"
#include "vmbackup/backup_target.h"

namespace vmbackup {
namespace {

TEST(BackupInfoToJsonTest, CarriesEveryFieldAndFingerprintsOnlyWhenSet) {
  BackupInfo b;
  b.name = "b1";
  b.vm_name = "vm";
  b.vm_namespace = "ns";
  b.created_at = "c";
  b.completed_at = "d";
  b.parent = "b0";
  b.vm_metadata_json = R"({"cpu":2})";
  b.bytes_total = 1;
  b.bytes_new = 2;
  b.bytes_reused = 3;
  b.bytes_stored = 4;
  b.seconds = 1.5;
  VolumeBackupInfo v;
  v.name = "disk0";
  v.size = 5;
  v.block_size = 65536;
  v.data_blocks = 6;
  v.zero_blocks = 7;
  v.hole_blocks = 8;
  v.bytes_new = 9;
  v.bytes_reused = 10;
  v.bytes_stored = 11;
  v.index_key = "k";
  v.index_sha256 = "s";
  b.volumes.push_back(v);
  v.name = "disk1";
  v.fingerprints_key = "fk";
  v.fingerprints_sha256 = "fs";
  b.volumes.push_back(v);
  const nlohmann::json j = nlohmann::json::parse(BackupInfoToJson(b));
  for (const char* f : {"name", "vm_name", "vm_namespace", "created_at", "completed_at", "parent",
                        "state", "vm_metadata", "volumes", "bytes_total", "bytes_new",
                        "bytes_reused", "bytes_stored", "seconds"})
    EXPECT_TRUE(j.contains(f)) << f;
  EXPECT_EQ(j["vm_metadata"]["cpu"], 2);
  EXPECT_EQ(j["bytes_stored"], 4);
  EXPECT_EQ(j["seconds"], 1.5);
  ASSERT_EQ(j["volumes"].size(), 2u);
  for (const char* f : {"name", "size", "block_size", "data_blocks", "zero_blocks", "hole_blocks",
                        "bytes_new", "bytes_reused", "bytes_stored", "index_key", "index_sha256"})
    EXPECT_TRUE(j["volumes"][0].contains(f)) << f;
  EXPECT_FALSE(j["volumes"][0].contains("fingerprints_key"));
  EXPECT_EQ(j["volumes"][1]["fingerprints_key"], "fk");
  EXPECT_EQ(j["volumes"][1]["fingerprints_sha256"], "fs");
  EXPECT_EQ(j["volumes"][1]["hole_blocks"], 8);
}

TEST(BackupInfoToJsonTest, UnparsableMetadataIsAStringAndBadUtf8IsReplaced) {
  BackupInfo b;
  b.vm_metadata_json = "{not json";
  b.vm_name = std::string("v\xff", 2);
  const nlohmann::json j = nlohmann::json::parse(BackupInfoToJson(b));
  EXPECT_EQ(j["vm_metadata"], "{not json");
  EXPECT_EQ(j["vm_name"].get<std::string>().substr(0, 1), "v");
  b.vm_metadata_json.clear();
  EXPECT_TRUE(nlohmann::json::parse(BackupInfoToJson(b))["vm_metadata"].is_object());
}

}  // namespace
}  // namespace vmbackup
