// Repository::ListBackups over the in-memory store: records are read once and kept while their
// listing shows them unchanged; new, replaced, corrupted and deleted records are seen at once.
#include "repo/repository.h"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>

#include "repo/format.h"
#include "store/mem_store.h"
#include "support/test_util.h"
#include "vmbackup/runtime.h"

namespace vmbackup::internal {
namespace {

class RepositoryListTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = std::make_unique<MemStore>(Runtime::Default());
    mem_ = store.get();
    mem_->SetFaultHook([this](MemStore::Op op, const std::string& key) {
      if (op == MemStore::Op::kGet && key.rfind("records/", 0) == 0) {
        std::lock_guard<std::mutex> l(mu_);
        ++record_reads_[key];
      }
      return fail_gets_ && op == MemStore::Op::kGet ? UnavailableError("target down")
                                                    : Status::Ok();
    });
    auto repo = Repository::Open(std::move(store), true, 256 << 10, 32 << 20);
    ASSERT_OK(repo);
    repo_ = std::move(*repo);
  }
  static BackupInfo Record(const std::string& name, const std::string& created_at) {
    BackupInfo b;
    b.name = name;
    b.vm_name = "vm";
    b.created_at = created_at;
    b.state = "Ready";
    VolumeBackupInfo v;
    v.name = "disk0";
    v.size = 1 << 20;
    v.block_size = 256 << 10;
    v.zero_blocks = 4;
    v.index_key = "volumes/" + name + "/disk0.0123abcd.vidx";
    v.index_sha256 = std::string(64, 'a');
    b.volumes.push_back(v);
    return b;
  }
  void Publish(const BackupInfo& b) {
    ASSERT_OK(mem_->Put(RecordKey(b.name), EncodeRecord(b), PutOptions{}));
  }
  int Reads() {
    std::lock_guard<std::mutex> l(mu_);
    int n = 0;
    for (const auto& [k, c] : record_reads_) n += c;
    record_reads_.clear();
    return n;
  }
  std::vector<std::string> Names() {
    auto list = repo_->ListBackups();
    EXPECT_OK(list);
    if (list.ok()) {
      EXPECT_TRUE(list->damaged.empty()) << list->damaged[0];
    }
    std::vector<std::string> names;
    if (list.ok())
      for (const auto& b : list->backups) names.push_back(b.name);
    return names;
  }

  MemStore* mem_ = nullptr;
  std::unique_ptr<Repository> repo_;
  std::mutex mu_;
  std::map<std::string, int> record_reads_;
  std::atomic<bool> fail_gets_{false};
};

TEST_F(RepositoryListTest, RecordsAreReadOnceWhileUnchanged) {
  for (int i = 0; i < 30; ++i) {
    char ts[32];
    std::snprintf(ts, sizeof ts, "2026-12-02T07:%02d:00Z", i);
    Publish(Record("b" + std::to_string(100 + i), ts));
  }
  auto names = Names();
  ASSERT_EQ(names.size(), 30u);
  EXPECT_EQ(names.front(), "b100");  // oldest first
  EXPECT_EQ(names.back(), "b129");
  EXPECT_EQ(Reads(), 30);
  EXPECT_EQ(Names(), names);
  EXPECT_EQ(Reads(), 0) << "unchanged records are not read again";

  Publish(Record("b200", "2026-12-02T08:00:00Z"));
  names.push_back("b200");
  EXPECT_EQ(Names(), names);
  EXPECT_EQ(Reads(), 1) << "only the new record is read";
}

TEST_F(RepositoryListTest, ReplacedCorruptedAndDeletedRecordsAreSeenAtOnce) {
  Publish(Record("keep", "2026-12-02T07:00:00Z"));
  Publish(Record("flip", "2026-12-02T07:01:00Z"));
  Publish(Record("gone", "2026-12-02T07:02:00Z"));
  Publish(Record("redo", "2026-12-02T07:03:00Z"));
  ASSERT_EQ(Names().size(), 4u);
  Reads();

  // A byte flipped in place (same size): damaged at the next listing, not served from memory.
  std::string bytes = mem_->Snapshot().at(RecordKey("flip"));
  bytes[bytes.size() / 2] ^= 0x20;
  mem_->Overwrite(RecordKey("flip"), bytes);
  // Deleted by another host, and a record replaced by another of the same name and size.
  ASSERT_OK(mem_->Delete({RecordKey("gone")}));
  ASSERT_OK(mem_->Delete({RecordKey("redo")}));
  BackupInfo redo = Record("redo", "2026-12-02T07:09:00Z");
  Publish(redo);

  auto list = repo_->ListBackups();
  ASSERT_OK(list);
  ASSERT_EQ(list->backups.size(), 2u);
  EXPECT_EQ(list->backups[0].name, "keep");
  EXPECT_EQ(list->backups[1].name, "redo");
  EXPECT_EQ(list->backups[1].created_at, "2026-12-02T07:09:00Z");
  ASSERT_EQ(list->damaged.size(), 1u);
  EXPECT_NE(list->damaged[0].find("flip"), std::string::npos) << list->damaged[0];
  EXPECT_GE(Reads(), 2);  // flip (again, to decide) and redo; not keep
  EXPECT_EQ(mem_->Snapshot().count(RecordKey("keep")), 1u);

  // A backup this repository deletes is forgotten too.
  ASSERT_OK(repo_->DeleteBackup("keep"));
  list = repo_->ListBackups();
  ASSERT_OK(list);
  ASSERT_EQ(list->backups.size(), 1u);
  EXPECT_EQ(list->backups[0].name, "redo");
}

TEST_F(RepositoryListTest, AReadErrorFailsTheListingAndNothingStaleIsKept) {
  Publish(Record("a", "2026-12-02T07:00:00Z"));
  Publish(Record("b", "2026-12-02T07:01:00Z"));
  ASSERT_EQ(Names().size(), 2u);
  Publish(Record("c", "2026-12-02T07:02:00Z"));
  fail_gets_ = true;
  EXPECT_THAT(repo_->ListBackups(), StatusIs(StatusCode::kUnavailable, "target down"));
  fail_gets_ = false;
  EXPECT_EQ(Names(), (std::vector<std::string>{"a", "b", "c"}));
}

}  // namespace
}  // namespace vmbackup::internal
