// Encrypted repositories end to end on a local target: what the target holds, unlocking, key
// slots, and refusals (wrong or missing key, a key for an unencrypted repository).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "repo/keys.h"
#include "repo/repository.h"
#include "store/mem_store.h"
#include "support/test_util.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup {
namespace {

using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::ListFiles;
using ::vmbackup::testing::MakeVolume;
using ::vmbackup::testing::ReadAll;
using ::vmbackup::testing::TempDir;

const std::string kRawKey(32, '\x5a');

class EncryptionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    internal::SetNewSlotScryptNForTest(1024);
    ASSERT_EQ(::mkdir(dir_.Sub("target").c_str(), 0755), 0);
  }
  void TearDown() override { internal::SetNewSlotScryptNForTest(0); }

  StatusOr<std::shared_ptr<BackupTarget>> Open(TargetOptions o) {
    o.state_dir = dir_.Sub("state");
    return BackupTarget::Open(R"({"type":"file","endpoint":")" + dir_.Sub("target") + R"("})", o);
  }
  TargetOptions Passphrase(const std::string& p, const std::string& mode = "") {
    TargetOptions o;
    o.encryption = mode;
    o.passphrase = p;
    return o;
  }

  // Backs up a 3 MiB volume holding `marker` in each block, with `metadata`, as backup `name`.
  void Backup(const std::shared_ptr<BackupTarget>& t, const std::string& name,
              const std::string& marker, const std::string& metadata) {
    const std::string vol = dir_.Sub(name + ".img");
    MakeVolume(vol, 3 << 20, 21);
    std::string bytes = ReadAll(vol);
    for (size_t off = 0; off + marker.size() < bytes.size(); off += 64 << 10)
      bytes.replace(off, marker.size(), marker);
    testing::WriteAll(vol, bytes);
    BackupSpec spec;
    spec.name = name;
    spec.vm_metadata_json = metadata;
    spec.volumes.push_back({"disk0", vol, false, {}});
    auto job = BackupJob::Create(t, spec);
    ASSERT_OK(job);
    ASSERT_OK((*job)->Run());
  }
  void ExpectRestores(const std::shared_ptr<BackupTarget>& t, const std::string& name) {
    const std::string out = dir_.Sub("out-" + name);
    ASSERT_EQ(::mkdir(out.c_str(), 0755), 0);
    RestoreSpec r;
    r.backup = name;
    r.dest_dir = out;
    auto plan = RestorePlan::Create(t, r);
    ASSERT_OK(plan);
    ASSERT_OK((*plan)->Run());
    EXPECT_EQ(FileSha256(out + "/disk0.img"), FileSha256(dir_.Sub(name + ".img")));
  }

  TempDir dir_;
};

TEST_F(EncryptionTest, TheTargetHoldsNeitherDataNorMetadataInTheClearAndRestoresAreExact) {
  auto t = Open(Passphrase("correct horse", "aes-256-gcm"));
  ASSERT_OK(t);
  EXPECT_EQ((*t)->encryption(), "aes-256-gcm");
  const std::string marker = "BLOCK-MARKER-7f3a9c";
  const std::string secret = "cloud-init-password-s3cr3t";
  Backup(*t, "b1", marker, R"({"name":"vm-a","userData":")" + secret + R"("})");
  ExpectRestores(*t, "b1");
  auto info = (*t)->GetBackup("b1");
  ASSERT_OK(info);
  EXPECT_NE(info->vm_metadata_json.find(secret), std::string::npos);
  int objects = 0;
  for (const auto& f : ListFiles(dir_.Sub("target"))) {
    const std::string bytes = ReadAll(dir_.Sub("target/" + f));
    ++objects;
    EXPECT_EQ(bytes.find(marker), std::string::npos) << f;
    EXPECT_EQ(bytes.find(secret), std::string::npos) << f;
    EXPECT_EQ(bytes.find("vm-a"), std::string::npos) << f;
    if (f != "repository.json" && f.compare(0, 5, "keys/") != 0) {
      EXPECT_EQ(bytes.compare(0, 8, "VMBENC01"), 0) << f << " is not sealed";
    }
  }
  EXPECT_GT(objects, 4);
  // A second backup of the same bytes deduplicates (block names are keyed, not random).
  Backup(*t, "b2", marker, "{}");
  auto b2 = (*t)->GetBackup("b2");
  ASSERT_OK(b2);
  EXPECT_EQ(b2->volumes.at(0).bytes_new, 0u);
}

TEST_F(EncryptionTest, BlockNamesAreKeyedNotPlainSha256) {
  internal::Key256 k{};
  k.fill(3);
  internal::BlockNamer keyed(k);
  const std::string block(4096, 'x');
  EXPECT_NE(keyed(block), internal::Sha256(block));
  EXPECT_EQ(keyed(block), internal::HmacSha256(k.data(), k.size(), block.data(), block.size()));
  EXPECT_EQ(internal::BlockNamer::Plain()(block), internal::Sha256(block));
}

TEST_F(EncryptionTest, OpeningNeedsTheRightSecretAndNamesWhatIsWrong) {
  {
    auto t = Open(Passphrase("right", "aes-256-gcm"));
    ASSERT_OK(t);
    Backup(*t, "b1", "m", "{}");
  }
  EXPECT_THAT(Open(TargetOptions{}), StatusIs(StatusCode::kPermissionDenied, "is encrypted"));
  EXPECT_THAT(Open(Passphrase("wrong")),
              StatusIs(StatusCode::kPermissionDenied, "no key slot of the repository"));
  TargetOptions raw;
  raw.raw_key = kRawKey;
  EXPECT_THAT(Open(raw), StatusIs(StatusCode::kPermissionDenied, "0 raw slot(s)"));
  raw.raw_key = "short";
  EXPECT_THAT(Open(raw), StatusIs(StatusCode::kInvalidArgument, "exactly 32 bytes"));
  auto t = Open(Passphrase("right"));
  ASSERT_OK(t);
  ExpectRestores(*t, "b1");
}

TEST_F(EncryptionTest, InitializationChoicesAreCheckedAndAKeyForAPlainRepositoryIsRefused) {
  EXPECT_THAT(Open(Passphrase("p", "aes-128-cbc")),
              StatusIs(StatusCode::kInvalidArgument, "aes-256-gcm' or 'none'"));
  EXPECT_THAT(Open(Passphrase("p", "none")),
              StatusIs(StatusCode::kInvalidArgument, "encryption is 'none'"));
  TargetOptions nokey;
  nokey.encryption = "aes-256-gcm";
  EXPECT_THAT(Open(nokey), StatusIs(StatusCode::kInvalidArgument, "no passphrase or raw key"));
  EXPECT_EQ(ListFiles(dir_.Sub("target")), std::vector<std::string>{});  // nothing was written
  TargetOptions plain;
  plain.encryption = "none";
  auto t = Open(plain);
  ASSERT_OK(t);
  EXPECT_EQ((*t)->encryption(), "none");
  // A host that means to encrypt never writes plaintext, even when the target's descriptor says
  // "unencrypted" (it may have been replaced).
  EXPECT_THAT(Open(Passphrase("p")), StatusIs(StatusCode::kFailedPrecondition, "not encrypted"));
  TargetOptions asks_aes;
  asks_aes.encryption = "aes-256-gcm";  // an explicit expectation, without a secret
  EXPECT_THAT(Open(asks_aes), StatusIs(StatusCode::kFailedPrecondition, "not encrypted"));
  EXPECT_THAT((*t)->AddKey({"p", "", ""}),
              StatusIs(StatusCode::kFailedPrecondition, "not encrypted"));
  EXPECT_THAT((*t)->ListKeys(), StatusIs(StatusCode::kFailedPrecondition, "not encrypted"));
}

TEST_F(EncryptionTest, KeySlotsAreAddedListedRotatedAndRemovedWithoutRewritingData) {
  TargetOptions first;
  first.encryption = "aes-256-gcm";
  first.raw_key = kRawKey;
  first.key_label = "kms:prod";
  auto t = Open(first);
  ASSERT_OK(t);
  Backup(*t, "b1", "m", "{}");
  std::map<std::string, std::string> before;
  for (const auto& f : ListFiles(dir_.Sub("target"))) before[f] = ReadAll(dir_.Sub("target/" + f));

  auto added = (*t)->AddKey({"ops passphrase", "", "ops"});
  ASSERT_OK(added);
  auto keys = (*t)->ListKeys();
  ASSERT_OK(keys);
  ASSERT_EQ(keys->size(), 2u);
  EXPECT_EQ((*keys)[0].kind, "raw");
  EXPECT_EQ((*keys)[0].label, "kms:prod");
  EXPECT_TRUE((*keys)[0].current);
  EXPECT_EQ((*keys)[1].id, *added);
  EXPECT_EQ((*keys)[1].kind, "passphrase");
  EXPECT_FALSE((*keys)[1].current);
  EXPECT_THAT((*t)->AddKey({"p", kRawKey, ""}), StatusIs(StatusCode::kInvalidArgument, "not both"));

  // Rotate: open with the new slot, remove the old one.
  EXPECT_THAT((*t)->RemoveKey((*keys)[0].id),
              StatusIs(StatusCode::kFailedPrecondition, "opened with it"));
  auto t2 = Open(Passphrase("ops passphrase"));
  ASSERT_OK(t2);
  ASSERT_OK((*t2)->RemoveKey((*keys)[0].id));
  EXPECT_THAT((*t2)->RemoveKey((*keys)[0].id), StatusIs(StatusCode::kNotFound, ""));
  EXPECT_THAT((*t2)->RemoveKey("../../etc"),
              StatusIs(StatusCode::kInvalidArgument, "not a key slot"));
  EXPECT_THAT(Open(first), StatusIs(StatusCode::kPermissionDenied, "no key slot"));
  ExpectRestores(*t2, "b1");
  // No data object changed: only keys/ did.
  for (const auto& [f, bytes] : before) {
    if (f.compare(0, 5, "keys/") != 0) {
      EXPECT_EQ(ReadAll(dir_.Sub("target/" + f)), bytes) << f;
    }
  }
}

// Regression: packs were sealed on the worker pool, whose workers were all blocked waiting for
// upload budget that only a queued seal would release: a backup larger than the budget hung.
TEST_F(EncryptionTest, ABackupLargerThanTheUploadBudgetCompletesWithOneWorker) {
  RuntimeOptions ro;
  ro.worker_threads = 1;
  ro.max_in_flight_bytes = 2 << 20;
  TargetOptions o = Passphrase("p", "aes-256-gcm");
  o.runtime = Runtime::Create(ro);
  o.pack_size = 1 << 20;
  auto t = Open(o);
  ASSERT_OK(t);
  const std::string vol = dir_.Sub("big.img");
  MakeVolume(vol, 12 << 20, 5);
  BackupSpec spec;
  spec.name = "big";
  spec.max_in_flight_bytes = 2 << 20;
  spec.volumes.push_back({"disk0", vol, false, {}});
  auto job = BackupJob::Create(*t, spec);
  ASSERT_OK(job);
  ASSERT_OK((*job)->Start());
  auto st = (*job)->WaitFor(std::chrono::seconds(120));
  if (!st.has_value()) {
    (*job)->Cancel();
    FAIL() << "the backup did not finish within 120 s (deadlock)";
  }
  ASSERT_OK(*st);
  const std::string out = dir_.Sub("out-big");
  ASSERT_EQ(::mkdir(out.c_str(), 0755), 0);
  RestoreSpec r;
  r.backup = "big";
  r.dest_dir = out;
  auto plan = RestorePlan::Create(*t, r);
  ASSERT_OK(plan);
  ASSERT_OK((*plan)->Run());
  EXPECT_EQ(FileSha256(out + "/disk0.img"), FileSha256(vol));
}

TEST_F(EncryptionTest, VerifyGcAndForgetWorkOnAnEncryptedRepository) {
  auto t = Open(Passphrase("p", "aes-256-gcm"));
  ASSERT_OK(t);
  Backup(*t, "b1", "first", "{}");
  Backup(*t, "b2", "second", "{}");
  VerifyOptions vo;
  vo.read_data = true;
  auto report = (*t)->Verify(vo);
  ASSERT_OK(report);
  EXPECT_TRUE(report->ok());
  ASSERT_OK((*t)->DeleteBackup("b1"));
  GcOptions g;
  g.grace_seconds = 0;
  uint64_t indexes_deleted = 0, packs_deleted = 0;
  for (int run = 0; run < 3; ++run) {
    auto r = (*t)->CollectGarbage(g);
    ASSERT_OK(r);
    EXPECT_EQ(r->damaged, std::vector<std::string>{});
    indexes_deleted += r->indexes_deleted;
    packs_deleted += r->packs_deleted;
  }
  EXPECT_GT(indexes_deleted, 0u);
  EXPECT_EQ(packs_deleted, indexes_deleted);
  ExpectRestores(*t, "b2");
  report = (*t)->Verify(vo);
  ASSERT_OK(report);
  EXPECT_TRUE(report->ok());
  // A flipped byte in a pack is found by a full verify as a bad block.
  for (const auto& f : ListFiles(dir_.Sub("target"))) {
    if (f.size() > 5 && f.substr(f.size() - 5) == ".pack") {
      testing::FlipByte(dir_.Sub("target/" + f), 4000);
    }
  }
  auto fresh = Open(Passphrase("p"));
  ASSERT_OK(fresh);
  report = (*fresh)->Verify(vo);
  ASSERT_OK(report);
  EXPECT_FALSE(report->ok());
}

}  // namespace
}  // namespace vmbackup

namespace vmbackup::internal {
namespace {

// A store whose create of repository.json lands but whose answer is lost (an error comes back).
class LostDescriptorAnswerStore final : public ObjectStore {
 public:
  explicit LostDescriptorAnswerStore(MemStore* inner)
      : ObjectStore(Runtime::Default()), inner_(inner) {}
  std::string Describe() const override { return "lost-answer://"; }
  Status Put(const std::string& key, std::string_view data, const PutOptions& opts) override {
    Status st = inner_->Put(key, data, opts);
    if (st.ok() && key == kDescriptorKey) return UnavailableError("answer lost after the write");
    return st;
  }
  StatusOr<std::string> Get(const std::string& key, uint64_t o, uint64_t l) override {
    return inner_->Get(key, o, l);
  }
  StatusOr<ObjectInfo> Head(const std::string& key) override { return inner_->Head(key); }
  StatusOr<ListPage> List(const std::string& p, const std::string& t, int m) override {
    return inner_->List(p, t, m);
  }
  Status Delete(const std::vector<std::string>& keys) override { return inner_->Delete(keys); }

 private:
  MemStore* inner_;
};

TEST(EncryptionInitTest, ADescriptorWhoseCreateAnswerWasLostKeepsItsKeySlot) {
  MemStore mem(Runtime::Default());
  EncryptionSetup enc;
  enc.mode = "aes-256-gcm";
  enc.secret.raw_key = std::string(32, 'k');
  auto repo = Repository::Open(std::make_unique<LostDescriptorAnswerStore>(&mem), true, 256 << 10,
                               32 << 20, enc);
  ASSERT_OK(repo);  // the descriptor read back is ours: the repository is usable
  EXPECT_TRUE((*repo)->encrypted());
  // And it opens later: the slot the descriptor's key needs was not deleted.
  auto again =
      Repository::Open(std::make_unique<LostDescriptorAnswerStore>(&mem), false, 0, 0, enc);
  ASSERT_OK(again);
  EXPECT_EQ((*again)->descriptor().key_id, (*repo)->descriptor().key_id);
}

}  // namespace
}  // namespace vmbackup::internal

namespace vmbackup::internal {
namespace {

TEST(KeyListToJsonTest, EveryFieldInOrderAndTextThatIsNotUtf8IsReplaced) {
  KeyInfo a{"00112233445566aa", "passphrase", "2026-12-02T10:00:00Z", "h1", "ops", true};
  KeyInfo b{"ffeeddccbbaa9988",          "raw", "2026-12-02T11:00:00Z", "h2",
            std::string("bad \xff\xfe"), false};
  const std::string j = KeyListToJson({a, b}, {"keys/x.json: unreadable"});
  const std::string head =
      R"({"keys":[{"id":"00112233445566aa","kind":"passphrase","created_at":)"
      R"("2026-12-02T10:00:00Z","host":"h1","label":"ops","current":true},{"id":"ffeed)";
  EXPECT_EQ(j.substr(0, head.size()), head);
  EXPECT_NE(j.find(R"("label":"bad )"), std::string::npos) << j;
  EXPECT_EQ(j.find('\xff'), std::string::npos) << "invalid UTF-8 passed through";
  EXPECT_NE(j.find(R"("current":false}],"damaged":["keys/x.json: unreadable"]})"),
            std::string::npos)
      << j;
  EXPECT_EQ(KeyListToJson({}, {}), R"({"keys":[],"damaged":[]})");
}

}  // namespace
}  // namespace vmbackup::internal
