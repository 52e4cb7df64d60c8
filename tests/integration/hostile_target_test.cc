// Hostile-target suite (issue #9): a target that someone else can write holds crafted objects that
// pass their checksums (the suite recomputes them) — names with "..", "/", NUL or too long; sizes
// at 0, 1, 2^32-1, 2^64-1; counts whose products wrap; offsets past the pack; deeply nested JSON;
// a record pointing at another backup's objects; oversized objects. Every case must end in a clear
// error (kDataLoss or kInvalidArgument naming the object and field), with nothing written outside
// the restore's destination, no crash, and no allocation beyond what the object's real size
// allows (a wrapped count would otherwise ask for 10^17 entries).
//
// Runs on a local-directory target and on the real S3 server (radosgw, started by scripts/test.sh;
// without its environment the S3 variant fails and says how to start it).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/util.h"
#include "integration_util.h"
#include "repo/format.h"
#include "store/object_store.h"
#include "support/test_util.h"
#include "target/target_impl.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup::integration {
namespace {

using internal::ObjectStore;
using internal::PutOptions;
using nlohmann::json;
using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::TempDir;

constexpr uint64_t kVolume = 2 << 20;  // 32 blocks of 64 KiB

std::string TargetSetting(const std::string& kind, const TempDir& dir) {
  if (kind == "file") {
    EXPECT_EQ(::mkdir(dir.Sub("target").c_str(), 0700), 0);
    return TargetJson(dir.Sub("target"));
  }
  if (Env("S3_HTTP_ENDPOINT").empty()) {
    ADD_FAILURE() << "S3_HTTP_ENDPOINT is not set: start the test S3 server first with "
                     "eval \"$(bash scripts/s3-server.sh start --tls)\" (scripts/test.sh does)";
    return "";
  }
  json j = {{"type", "s3"},
            {"endpoint", Env("S3_HTTP_ENDPOINT")},
            {"bucketName", Env("S3_BUCKET")},
            {"accessKeyId", Env("AWS_ACCESS_KEY_ID")},
            {"secretAccessKey", Env("AWS_SECRET_ACCESS_KEY")},
            {"allowInsecureHttp", true},
            {"prefix", "hostile-" + RandomHex(8)}};
  return j.dump();
}

// A JSON envelope of `kind` around `body` whose checksum is right (what a hostile writer makes).
std::string Envelope(const std::string& kind, const json& body) {
  json doc = {{"format", kind}, {"version", 1}, {"body", body}};
  doc["sha256"] = internal::ToHex(internal::Sha256(body.dump()));
  return doc.dump();
}

// `bytes` with its trailing SHA-256 recomputed.
std::string Reseal(std::string bytes) {
  bytes.resize(bytes.size() - 32);
  const internal::Digest d = internal::Sha256(bytes);
  bytes.append(reinterpret_cast<const char*>(d.data()), 32);
  return bytes;
}

class HostileTargetTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string setting = TargetSetting(GetParam(), dir_);
    ASSERT_FALSE(setting.empty());
    TargetOptions o = SmallRepo();
    o.state_dir = dir_.Sub("state");
    auto t = BackupTarget::Open(setting, o);
    ASSERT_OK(t);
    target_ = *t;
    ASSERT_EQ(::mkdir(dir_.Sub("sandbox").c_str(), 0700), 0);
    ASSERT_EQ(::mkdir(dir_.Sub("sandbox/dest").c_str(), 0700), 0);
    ASSERT_EQ(::mkdir(dir_.Sub("sandbox/outside").c_str(), 0700), 0);
    ::vmbackup::testing::WriteAll(dir_.Sub("sandbox/outside/x.img"), "precious");
    vol_ = dir_.Sub("disk0.img");
    WriteRandomFile(vol_, kVolume, 7);
    auto good = NamedBackup("good");
    ASSERT_OK(good);
    good_ = *good;
    good_body_ = json::parse(Get("records/good.json"))["body"];
  }
  // A backup of VM "vm1" (a named VM, so later backups use it as their fingerprint reference).
  StatusOr<BackupInfo> NamedBackup(const std::string& name) {
    BackupSpec spec;
    spec.name = name;
    spec.vm_metadata_json = R"({"name":"vm1","namespace":"default"})";
    spec.volumes.push_back({"disk0", vol_, false, {}});
    auto job = BackupJob::Create(target_, spec);
    if (!job.ok()) return job.status();
    VMB_RETURN_IF_ERROR((*job)->Run());
    return (*job)->result();
  }
  ObjectStore& store() { return internal::ImplOf(target_)->repo->store(); }
  void Put(const std::string& key, const std::string& bytes) {
    ASSERT_OK(store().Put(key, bytes, PutOptions{}));
  }
  std::string Get(const std::string& key) {
    auto b = store().Get(key);
    EXPECT_OK(b);
    return b.ok() ? *b : "";
  }
  // The good record's body as JSON (to be changed field by field).
  json GoodBody() const { return good_body_; }
  void PutRecord(const std::string& name, const json& body) {
    Put("records/" + name + ".json", Envelope("vmbackup-record", body));
  }
  // Restores backup `name` into sandbox/dest; returns the status. Checks that nothing appeared or
  // changed outside sandbox/dest, and that a failed restore left sandbox/dest empty.
  Status RestoreIntoSandbox(const std::string& name) {
    RestoreSpec spec;
    spec.backup = name;
    spec.dest_dir = dir_.Sub("sandbox/dest");
    Status st;
    auto plan = RestorePlan::Create(target_, spec);
    st = plan.ok() ? (*plan)->Run() : plan.status();
    const auto files = FilesUnder(dir_.Sub("sandbox"));
    for (const auto& f : files) {
      if (f == "outside/x.img") continue;
      EXPECT_TRUE(st.ok() && f.rfind("dest/", 0) == 0) << "restore of '" << name << "' left " << f;
    }
    EXPECT_EQ(::vmbackup::testing::ReadAll(dir_.Sub("sandbox/outside/x.img")), "precious");
    return st;
  }
  // A changed copy of the good record, published as backup `name` (the record's own name is set
  // to `name` unless `keep_name`), must be refused everywhere with `code` and `text`.
  void ExpectRecordRefused(const std::string& name, const json& body, StatusCode code,
                           const std::string& text) {
    SCOPED_TRACE(name + ": " + body.dump().substr(0, 300));
    PutRecord(name, body);
    ShowStatus(target_->GetBackup(name));
    EXPECT_THAT(target_->GetBackup(name), StatusIs(code, text));
    EXPECT_THAT(RestoreIntoSandbox(name), StatusIs(code, text));
    auto list = target_->ListBackups();
    ASSERT_OK(list);
    bool damaged = false;
    for (const auto& d : list->damaged) damaged = damaged || d.rfind(name + ":", 0) == 0;
    EXPECT_TRUE(damaged) << "not listed as damaged";
    for (const auto& b : list->backups) EXPECT_NE(b.name, name);
    ASSERT_OK(store().Delete({"records/" + name + ".json"}));
  }

  TempDir dir_;
  std::shared_ptr<BackupTarget> target_;
  std::string vol_;
  BackupInfo good_;
  json good_body_;
};

TEST_P(HostileTargetTest, VolumeNamesThatWouldEscapeTheDestinationAreRefused) {
  const std::string long_name(129, 'v');
  for (const std::string& bad :
       {std::string("../../x"), std::string("a/b"), std::string("x\0y", 3), std::string(".."),
        std::string(".hidden"), std::string(""), long_name, std::string("/etc/passwd")}) {
    json body = GoodBody();
    body["name"] = "evil";
    body["volumes"][0]["name"] = bad;
    body["volumes"][0]["index_key"] = "volumes/evil/" + bad + ".0123abcd.vidx";
    ExpectRecordRefused("evil", body, StatusCode::kDataLoss, "field 'name'");
  }
}

TEST_P(HostileTargetTest, BackupAndVmNamesAreCheckedLikeWritersCheckThem) {
  json body = GoodBody();
  body["name"] = "other";  // a whole, consistent record of backup "other" under another key
  for (auto& v : body["volumes"])
    v["index_key"] = "volumes/other/" + v["name"].get<std::string>() + ".0123abcd.vidx";
  for (auto& v : body["volumes"]) v.erase("fingerprints_key");
  ExpectRecordRefused("copied", body, StatusCode::kDataLoss, "holds the record of backup 'other'");
  body = GoodBody();
  body["name"] = "good/../x";
  ExpectRecordRefused("x", body, StatusCode::kDataLoss, "field 'name'");
  for (const char* field : {"vm_name", "vm_namespace", "parent"}) {
    for (const std::string& value :
         {std::string("../x\0", 5), std::string("../x"), std::string(254, 'n')}) {
      body = GoodBody();
      body["name"] = "vmname";
      for (auto& v : body["volumes"]) {
        v["index_key"] = "volumes/vmname/" + v["name"].get<std::string>() + ".0123abcd.vidx";
        v.erase("fingerprints_key");
      }
      body[field] = value;
      ExpectRecordRefused("vmname", body, StatusCode::kDataLoss, std::string("field '") + field);
    }
  }
}

TEST_P(HostileTargetTest, RecordPointingAtAnotherBackupsObjectsIsRefused) {
  auto second = RunBackup(target_, "second", vol_);
  ASSERT_OK(second);
  json body = GoodBody();
  body["name"] = "thief";
  // The good backup's own index, pinned correctly: readable, but not this backup's object.
  ExpectRecordRefused("thief", body, StatusCode::kDataLoss, "not this backup's volume index key");
  body["volumes"][0]["index_key"] = "records/good.json";
  ExpectRecordRefused("thief", body, StatusCode::kDataLoss, "index_key");
  body = GoodBody();
  body["name"] = "thief";
  body["volumes"][0]["index_key"] = "volumes/thief/disk0.0123abcd.vidx";
  body["volumes"][0]["fingerprints_key"] = second->volumes[0].fingerprints_key;
  body["volumes"][0]["fingerprints_sha256"] = second->volumes[0].fingerprints_sha256;
  ExpectRecordRefused("thief", body, StatusCode::kDataLoss, "fingerprints_key");
}

TEST_P(HostileTargetTest, SizesAndCountsAtTheirLimitsAreRefused) {
  struct Case {
    const char* field;
    json value;
    const char* text;
  };
  const std::vector<Case> cases = {
      {"size", json(~uint64_t{0}), "field 'size'"},
      {"size", json((uint64_t{1} << 50) + 1), "field 'size'"},
      {"size", json(-1), "field 'size'"},
      {"size", json("2097152"), "field 'size'"},
      {"size", json(1.5), "field 'size'"},
      {"block_size", json(0), "field 'block_size'"},
      {"block_size", json(1), "field 'block_size'"},
      {"block_size", json(4294967295u), "field 'block_size'"},
      {"block_size", json(uint64_t{1} << 32 | 65536), "field 'block_size'"},  // would truncate
      {"block_size", json(65537), "field 'block_size'"},
      {"data_blocks", json(~uint64_t{0}), "field 'data_blocks'"},
      {"data_blocks", json(33), "field 'data_blocks'"},  // 33 > 32 blocks
      {"zero_blocks", json(1), "block counts do not add up"},
      {"index_sha256", json(std::string(64, 'Z')), "field 'index_sha256'"},
      {"index_key", json(nullptr), "field 'index_key'"},
  };
  for (const auto& c : cases) {
    json body = GoodBody();
    body["volumes"][0][c.field] = c.value;
    ExpectRecordRefused("good", body, StatusCode::kDataLoss, c.text);
    PutRecord("good", GoodBody());  // (ExpectRecordRefused deleted it)
  }
  // Unchanged record, but a volume list of 5000 entries.
  json body = GoodBody();
  json vols = json::array();
  for (int i = 0; i < 5000; ++i) vols.push_back(body["volumes"][0]);
  body["volumes"] = vols;
  ExpectRecordRefused("good", body, StatusCode::kDataLoss, "1 to 4096 volumes");
  body["volumes"] = json::array();
  ExpectRecordRefused("good", body, StatusCode::kDataLoss, "1 to 4096 volumes");
}

TEST_P(HostileTargetTest, DeeplyNestedJsonIsRefusedWithoutRecursion) {
  // 200000 levels: nlohmann's printer and destructor would overflow the stack. The body's
  // checksum is computed over its compact text, as a writer would.
  const int depth = 200000;
  std::string meta(depth, '[');
  meta += std::string(depth, ']');
  json body = GoodBody();
  body.erase("vm_metadata");
  std::string text = body.dump();
  text.insert(text.size() - 1, ",\"vm_metadata\":" + meta);
  std::string envelope = R"({"body":)" + text + R"(,"format":"vmbackup-record","sha256":")" +
                         internal::ToHex(internal::Sha256(text)) + R"(","version":1})";
  Put("records/deep.json", envelope);
  EXPECT_THAT(target_->GetBackup("deep"), StatusIs(StatusCode::kDataLoss, "nests JSON deeper"));
  auto list = target_->ListBackups();
  ASSERT_OK(list);
  EXPECT_EQ(list->backups.size(), 1u);
  // The same in the repository descriptor: the target cannot be opened, clearly.
  const std::string shallower = std::string(10000, '[') + std::string(10000, ']');
  std::string desc = R"({"body":)" + shallower + R"(,"format":"vmbackup-repository","sha256":"x"})";
  const std::string saved = Get("repository.json");
  Put("repository.json", desc);
  TargetOptions o = SmallRepo();
  o.state_dir = dir_.Sub("state");
  auto reopened = BackupTarget::Open(target_->config(), o);
  EXPECT_THAT(reopened, StatusIs(StatusCode::kDataLoss, "nests JSON deeper"));
  Put("repository.json", saved);
}

TEST_P(HostileTargetTest, HostileDescriptorFieldsAreRefusedAtOpen) {
  const std::string saved = Get("repository.json");
  const json good = json::parse(saved)["body"];
  struct Case {
    const char* field;
    json value;
  };
  const std::vector<Case> cases = {
      {"pack_size", json(0)},     // a division by zero in every later backup
      {"pack_size", json(4096)},  // smaller than the block size
      {"pack_size", json(~uint64_t{0})},
      {"block_size", json(1)},
      {"block_size", json(0)},
      {"block_size", json(4294967295u)},
      {"id", json("../../etc")},
      {"id", json(42)},
      {"fingerprint_key", json("not hex")},
      {"created_at", json(std::string(1000, 'x'))},
  };
  TargetOptions o = SmallRepo();
  o.state_dir = dir_.Sub("state");
  for (const auto& c : cases) {
    json body = good;
    body[c.field] = c.value;
    Put("repository.json", Envelope("vmbackup-repository", body));
    auto t = BackupTarget::Open(target_->config(), o);
    ShowStatus(t);
    EXPECT_THAT(t, StatusIs(StatusCode::kDataLoss, std::string("field '") + c.field))
        << c.field << " = " << c.value.dump().substr(0, 80);
  }
  Put("repository.json", saved);
  ASSERT_OK(BackupTarget::Open(target_->config(), o));
}

TEST_P(HostileTargetTest, VolumeIndexWhoseCountWrapsIsRefusedBeforeAllocating) {
  // The 81-byte index of issue #9: block size 1 and a count c with 33 * c = 17 (mod 2^64), so
  // header + count * 33 + checksum "equals" 81 bytes, and c is about 5.6e17.
  uint64_t inv = 1;  // 33^-1 mod 2^64 by Newton iteration
  for (int i = 0; i < 6; ++i) inv *= 2 - 33 * inv;
  const uint64_t count = 17 * inv;
  ASSERT_EQ(count * 33, 17u);
  ASSERT_GT(count, uint64_t{1} << 58);
  std::string vidx = "VMBVIDX1";
  internal::PutU32(&vidx, 1);
  internal::PutU32(&vidx, 1);      // block size
  internal::PutU64(&vidx, count);  // volume size
  internal::PutU64(&vidx, count);
  vidx.append(17, '\2');
  vidx.append(32, '\0');
  vidx = Reseal(vidx);
  ASSERT_EQ(vidx.size(), 81u);
  EXPECT_THAT(internal::DecodeVolumeIndex(vidx, "vidx"), StatusIs(StatusCode::kDataLoss, "vidx"));

  // Planted behind a record that pins it: the restore fails before writing anything.
  const std::string key = good_.volumes[0].index_key;
  Put(key, vidx);
  json body = GoodBody();
  body["volumes"][0]["index_sha256"] = internal::ToHex(internal::Sha256(vidx));
  PutRecord("good", body);
  EXPECT_THAT(RestoreIntoSandbox("good"), StatusIs(StatusCode::kDataLoss, key));
  // The same index with a consistent but huge volume (2^64-1 bytes in 16 MiB blocks).
  std::string huge = "VMBVIDX1";
  internal::PutU32(&huge, 1);
  internal::PutU32(&huge, 16 << 20);
  internal::PutU64(&huge, ~uint64_t{0});
  internal::PutU64(&huge, (~uint64_t{0} >> 24) + 1);
  huge.append(32, '\0');
  huge = Reseal(huge);
  Put(key, huge);
  body["volumes"][0]["index_sha256"] = internal::ToHex(internal::Sha256(huge));
  PutRecord("good", body);
  EXPECT_THAT(RestoreIntoSandbox("good"), StatusIs(StatusCode::kDataLoss, key));
  // A backup with the good record as its dirty-map parent meets the same index: refused too.
  BackupSpec spec;
  spec.parent = "good";
  spec.volumes.push_back({"disk0", vol_, true, {{0, 65536}}});
  auto job = BackupJob::Create(target_, spec);
  ASSERT_OK(job);
  EXPECT_THAT((*job)->Run(), StatusIs(StatusCode::kDataLoss, key));
}

TEST_P(HostileTargetTest, PackIndexEntriesOutsideTheirPackAreRefused) {
  auto keys = store().ListAll("index/");
  ASSERT_OK(keys);
  ASSERT_FALSE(keys->empty());
  const std::string idx_key = (*keys)[0].key;
  const std::string pack_id = internal::PackIdFromIndexKey(idx_key);
  const std::string original = Get(idx_key);
  auto entries = internal::DecodePackIndex(original, pack_id, "idx");
  ASSERT_OK(entries);
  ASSERT_FALSE(entries->empty());
  auto plant = [&](std::vector<internal::PackEntry> e) {
    Put(idx_key, internal::EncodePackIndex(pack_id, e));
  };
  // Malformed entries make the whole index damaged: its blocks are absent, the restore says so.
  struct Case {
    const char* what;
    std::function<void(internal::PackEntry*)> change;
  };
  const std::vector<Case> cases = {
      {"stored length 2^32-1", [](internal::PackEntry* e) { e->stored_len = 0xffffffffu; }},
      {"stored length 0", [](internal::PackEntry* e) { e->stored_len = 0; }},
      {"raw length 0", [](internal::PackEntry* e) { e->raw_len = 0; }},
      {"raw length 2^32-1", [](internal::PackEntry* e) { e->raw_len = 0xffffffffu; }},
      {"offset 2^64-1", [](internal::PackEntry* e) { e->offset = ~uint64_t{0}; }},
      {"offset inside the magic", [](internal::PackEntry* e) { e->offset = 1; }},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    auto bad = *entries;
    c.change(&bad[0]);
    plant(bad);
    TargetOptions o = SmallRepo();
    o.state_dir = dir_.Sub("state");
    auto fresh = BackupTarget::Open(target_->config(), o);  // no cached index
    ASSERT_OK(fresh);
    target_ = *fresh;
    EXPECT_THAT(RestoreIntoSandbox("good"), StatusIs(StatusCode::kDataLoss, "damaged"));
  }
  // Well-formed entries that point past the end of the real pack object.
  auto past = *entries;
  uint64_t end = 0;
  for (const auto& e : past) end = std::max(end, e.offset + e.stored_len);
  for (auto& e : past) e.offset += end;
  std::sort(past.begin(), past.end(),
            [](const auto& a, const auto& b) { return a.offset < b.offset; });
  plant(past);
  TargetOptions o = SmallRepo();
  o.state_dir = dir_.Sub("state");
  auto fresh = BackupTarget::Open(target_->config(), o);
  ASSERT_OK(fresh);
  target_ = *fresh;
  EXPECT_THAT(RestoreIntoSandbox("good"),
              StatusIs(StatusCode::kDataLoss, internal::PackKey(pack_id)));
  // A count that disagrees with the object's size.
  std::string wrong = original;
  wrong[12] = static_cast<char>(wrong[12] + 1);
  EXPECT_THAT(internal::DecodePackIndex(Reseal(wrong), pack_id, "idx"),
              StatusIs(StatusCode::kDataLoss, "entry count"));
  Put(idx_key, original);
}

TEST_P(HostileTargetTest, OversizedRecordIsRefusedUnread) {
  // A record larger than any writer makes (16 MiB): refused by its size, listed as damaged.
  json body = GoodBody();
  body["name"] = "big";
  body["volumes"][0]["index_key"] = "volumes/big/disk0.0123abcd.vidx";
  body["vm_metadata"] = {{"pad", std::string((16 << 20) + 1, 'p')}};
  PutRecord("big", body);
  EXPECT_THAT(target_->GetBackup("big"), StatusIs(StatusCode::kDataLoss, "records/big.json"));
  auto list = target_->ListBackups();
  ASSERT_OK(list);
  ASSERT_EQ(list->damaged.size(), 1u);
  EXPECT_NE(list->damaged[0].find("big"), std::string::npos);
}

TEST_P(HostileTargetTest, HostileFingerprintsOnlyCostSpeed) {
  // Fingerprints of the reference with a wrapped count, blocks past the end, or swapped for
  // another volume's: the next backup hashes every block and stays exact.
  const auto& v = good_.volumes[0];
  ASSERT_FALSE(v.fingerprints_key.empty());
  std::string wrapped = Get(v.fingerprints_key);
  for (int i = 0; i < 8; ++i) wrapped[24 + i] = static_cast<char>(0xff);
  Put(v.fingerprints_key, wrapped);
  json body = GoodBody();
  body["volumes"][0]["fingerprints_sha256"] = internal::ToHex(internal::Sha256(wrapped));
  PutRecord("good", body);
  {
    std::fstream f(vol_, std::ios::in | std::ios::out | std::ios::binary);
    f.write("changed!", 8);
  }
  auto inc = NamedBackup("inc");
  ASSERT_OK(inc);
  EXPECT_EQ(RestoreSha(target_, "inc", dir_), FileSha256(vol_));
}

INSTANTIATE_TEST_SUITE_P(Targets, HostileTargetTest, ::testing::Values("file", "s3"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace vmbackup::integration
