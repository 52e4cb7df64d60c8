// Garbage collection (src/repo/gc.h) on the in-memory store, through real backups and restores.
// The GC clock is a variable the tests move, so grace periods of hours pass in microseconds.
#include "repo/gc.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>
#include <set>

#include "core/impl_access.h"
#include "core/process_id.h"
#include "store/mem_store.h"
#include "support/test_util.h"
#include "target/target_impl.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup::internal {
namespace {

using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::TempDir;

constexpr int64_t kHour = 3600;

class GcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = std::make_unique<MemStore>(Runtime::Default());
    store_ = store.get();
    TargetOptions o;
    o.block_size = 64 * 1024;
    o.pack_size = 256 * 1024;
    o.state_dir = dir_.Sub("state");
    auto t = OpenTargetOnStore(std::move(store), o);
    ASSERT_OK(t);
    target_ = *t;
  }
  Repository& repo() { return *ImplOf(target_)->repo; }

  // Backs up a fresh 4 MiB volume made from `seed` (different seeds share no data block).
  std::string Backup(const std::string& name, uint64_t seed, const std::string& vm = "vm1") {
    const std::string vol = dir_.Sub(name + ".img");
    testing::MakeVolume(vol, 4 << 20, seed);
    BackupSpec spec;
    spec.name = name;
    spec.vm_metadata_json = R"({"name":")" + vm + R"(","namespace":"default"})";
    spec.volumes.push_back({"disk0", vol, false, {}});
    auto job = BackupJob::Create(target_, spec);
    EXPECT_OK(job);
    if (!job.ok()) return "";
    EXPECT_OK((*job)->Run());
    return FileSha256(vol);
  }
  std::string RestoredSha(const std::string& name) {
    const std::string dest = dir_.Sub(name + ".restored-" + std::to_string(++restores_));
    RestoreSpec spec;
    spec.backup = name;
    spec.volumes.push_back({"disk0", dest});
    auto plan = RestorePlan::Create(target_, spec);
    if (!plan.ok()) return plan.status().ToString();
    Status st = (*plan)->Run();
    if (!st.ok()) return st.ToString();
    return FileSha256(dest);
  }
  // Backs up the file dir_/<file> as volume "disk0" of backup `name` (no VM identity).
  void BackupFile(const std::string& name, const std::string& file) {
    BackupSpec spec;
    spec.name = name;
    spec.volumes.push_back({"disk0", dir_.Sub(file), false, {}});
    auto job = BackupJob::Create(target_, spec);
    ASSERT_OK(job);
    ASSERT_OK((*job)->Run());
  }
  // Overwrites bytes [begin, end) of *s (a multiple of 8 apart) with `rng`'s output.
  static void FillRandom(std::mt19937_64& rng, std::string* s, size_t begin, size_t end) {
    for (size_t i = begin; i + 8 <= end; i += 8) {
      const uint64_t x = rng();
      std::memcpy(&(*s)[i], &x, 8);
    }
  }
  StatusOr<GcReport> Gc(int64_t grace = 1 * kHour, bool dry_run = false) {
    GcOptions o;
    o.grace_seconds = grace;
    o.dry_run = dry_run;
    return RunGc(repo(), o, [this] { return now_; });
  }
  // Runs GC, moving the clock past the grace each time, until a run deletes nothing more.
  void GcUntilStable() {
    for (int i = 0; i < 6; ++i) {
      now_ += 2 * kHour;
      auto r = Gc();
      ASSERT_OK(r);
    }
  }
  // The objects of backup `name`: its record and its volume indexes and fingerprints, by key.
  std::map<std::string, std::string> ObjectsOf(const std::string& name) const {
    std::map<std::string, std::string> out;
    for (const auto& [k, v] : store_->Snapshot())
      if (k.rfind("records/" + name + ".", 0) == 0 || k.rfind("volumes/" + name + "/", 0) == 0)
        out[k] = v;
    return out;
  }
  uint64_t BytesUnder(const std::string& prefix) const {
    uint64_t n = 0;
    for (const auto& [k, v] : store_->Snapshot())
      if (k.rfind(prefix, 0) == 0) n += v.size();
    return n;
  }
  size_t CountUnder(const std::string& prefix) const {
    size_t n = 0;
    for (const auto& [k, v] : store_->Snapshot()) n += k.rfind(prefix, 0) == 0;
    return n;
  }
  // Bytes of the packs and pack indexes that hold at least one block of a listed backup.
  uint64_t ReferencedPackBytes() {
    std::set<Digest> live;
    auto list = repo().ListBackups();
    EXPECT_OK(list);
    for (const auto& b : list->backups)
      for (const auto& v : b.volumes) {
        auto idx = repo().LoadVolumeIndex(b.name, v);
        EXPECT_OK(idx);
        for (size_t i = 0; i < idx->kinds.size(); ++i)
          if (idx->kinds[i] == BlockKind::kData) live.insert(idx->digests[i]);
      }
    uint64_t bytes = 0;
    auto snap = store_->Snapshot();
    for (const auto& [k, v] : snap) {
      const std::string id = PackIdFromIndexKey(k);
      if (id.empty()) continue;
      auto entries = DecodePackIndex(v, id, k);
      EXPECT_OK(entries);
      bool used = false;
      for (const auto& e : *entries) used = used || live.count(e.digest);
      if (used) bytes += v.size() + snap.at(PackKey(id)).size();
    }
    return bytes;
  }

  TempDir dir_;
  MemStore* store_ = nullptr;
  std::shared_ptr<BackupTarget> target_;
  int64_t now_ = SystemUnixSeconds();  // leases carry the real time of their writer
  int restores_ = 0;
};

TEST_F(GcTest, DeletedBackupsAreReclaimedOnlyAfterTheGraceAndTheRestRestoreBitIdentical) {
  const std::string s1 = Backup("b1", 1), s2 = Backup("b2", 2), s3 = Backup("b3", 3, "vm2");
  const uint64_t packs_before = BytesUnder("packs/");
  ASSERT_OK(target_->DeleteBackup("b2"));

  auto r1 = Gc();  // lists b2's packs as candidates; deletes nothing
  ASSERT_OK(r1);
  EXPECT_GT(r1->dead_packs, 0u);
  EXPECT_EQ(r1->new_candidates, r1->dead_packs);
  EXPECT_EQ(r1->indexes_deleted + r1->packs_deleted, 0u);
  EXPECT_EQ(BytesUnder("packs/"), packs_before);

  now_ += kHour / 2;  // grace not over: still nothing
  auto r2 = Gc();
  ASSERT_OK(r2);
  EXPECT_EQ(r2->indexes_deleted, 0u);
  EXPECT_EQ(r2->new_candidates, 0u);

  now_ += kHour;  // candidates for 1.5 h now: their indexes go, the packs stay
  auto r3 = Gc();
  ASSERT_OK(r3);
  EXPECT_EQ(r3->indexes_deleted, r1->dead_packs);
  EXPECT_EQ(r3->packs_deleted, 0u);
  EXPECT_EQ(BytesUnder("packs/"), packs_before);

  now_ += 2 * kHour;  // condemned for longer than the grace: the packs go
  auto r4 = Gc();
  ASSERT_OK(r4);
  EXPECT_EQ(r4->packs_deleted, r1->dead_packs);
  EXPECT_EQ(r4->bytes_deleted, r1->dead_pack_bytes);
  EXPECT_EQ(BytesUnder("packs/"), packs_before - r1->dead_pack_bytes);

  // What is left is exactly what the remaining backups reference, and they restore.
  EXPECT_EQ(BytesUnder("packs/") + BytesUnder("index/"), ReferencedPackBytes());
  EXPECT_EQ(RestoredSha("b1"), s1);
  EXPECT_EQ(RestoredSha("b3"), s3);
  // A new backup of b2's data stores it again (nothing stale is reused) and restores.
  EXPECT_EQ(Backup("b2-again", 2), s2);
  EXPECT_EQ(RestoredSha("b2-again"), s2);
}

TEST_F(GcTest, AfterDeletingEveryBackupNothingButMetadataRemains) {
  Backup("b1", 1);
  Backup("b2", 2);
  ASSERT_OK(target_->DeleteBackup("b1"));
  ASSERT_OK(target_->DeleteBackup("b2"));
  GcUntilStable();
  EXPECT_EQ(CountUnder("packs/"), 0u);
  EXPECT_EQ(CountUnder("index/"), 0u);
  EXPECT_EQ(CountUnder("leases/"), 0u);
  EXPECT_EQ(CountUnder("gc/lock"), 0u);
  EXPECT_LE(CountUnder("gc/"), 4u);  // marks and states of the last two runs only
}

TEST_F(GcTest, DryRunChangesNothingAndReportsWhatARunWouldDo) {
  Backup("b1", 1);
  Backup("b2", 2);
  ASSERT_OK(target_->DeleteBackup("b2"));
  ASSERT_OK(Gc());
  now_ += 2 * kHour;
  const auto before = store_->Snapshot();
  auto dry = Gc(kHour, /*dry_run=*/true);
  ASSERT_OK(dry);
  EXPECT_TRUE(dry->dry_run);
  EXPECT_TRUE(dry->run.empty());
  EXPECT_GT(dry->indexes_deleted, 0u);
  EXPECT_GT(dry->reclaimable_bytes, 0u);
  EXPECT_EQ(store_->Snapshot(), before);  // not one object written or deleted
  auto real = Gc();
  ASSERT_OK(real);
  EXPECT_EQ(real->indexes_deleted, dry->indexes_deleted);
  EXPECT_EQ(real->dead_pack_bytes, dry->dead_pack_bytes);
  EXPECT_NE(store_->Snapshot(), before);
}

TEST_F(GcTest, FirstRunUpgradesTheDescriptorSoVersion1WritersRefuseTheRepository) {
  Backup("b1", 1);
  auto before = nlohmann::json::parse(store_->Snapshot().at("repository.json"));
  EXPECT_EQ(before["version"], 1);
  ASSERT_OK(Gc(kHour, /*dry_run=*/true));  // a dry run upgrades nothing
  EXPECT_EQ(nlohmann::json::parse(store_->Snapshot().at("repository.json"))["version"], 1);
  ASSERT_OK(Gc());
  auto after = nlohmann::json::parse(store_->Snapshot().at("repository.json"));
  // A version-1 library refuses any descriptor envelope above version 1 (format.cc, every
  // release so far): FAILED_PRECONDITION "has format version 2".
  EXPECT_EQ(after["version"], 2);
  EXPECT_EQ(after["body"]["writer_version"], 2);
  auto d = DecodeDescriptor(store_->Snapshot().at("repository.json"));
  ASSERT_OK(d);
  EXPECT_EQ(d->id, repo().descriptor().id);
  EXPECT_EQ(d->writer_version, 2u);
  // This library still reads and writes it.
  EXPECT_FALSE(Backup("b2", 2).empty());
  EXPECT_EQ(RestoredSha("b1").size(), 64u);

  // A descriptor that asks for a newer writer: GC refuses.
  RepoDescriptor newer = *d;
  newer.writer_version = kWriterVersion + 1;
  store_->Overwrite("repository.json", EncodeDescriptor(newer));
  EXPECT_THAT(Gc(), StatusIs(StatusCode::kFailedPrecondition, "needs writer version 3"));
}

TEST_F(GcTest, PackReusedByABackupThatLoadedTheIndexBeforeGcIsNotDeleted) {
  // b1 is deleted and its packs condemned while a writer that deduplicated against them (it
  // loaded the index earlier) has not published yet: simulated by re-publishing b1's own record
  // and volume index after GC deleted the pack indexes.
  const std::string s1 = Backup("b1", 1);
  Backup("b2", 2);
  const auto with_b1 = store_->Snapshot();
  std::map<std::string, std::string> b1_objects;
  for (const auto& [k, v] : with_b1)
    if (k.rfind("records/b1.", 0) == 0 || k.rfind("volumes/b1/", 0) == 0) b1_objects[k] = v;
  ASSERT_GE(b1_objects.size(), 2u);  // record, volume index (and fingerprints)

  // The writer's lease: taken before it loaded the index, i.e. before any GC run completed.
  auto lease = WriterLease::Acquire(*store_, "late-writer");
  ASSERT_OK(lease);
  ASSERT_OK(target_->DeleteBackup("b1"));
  ASSERT_OK(Gc());
  now_ += 2 * kHour;
  auto condemn = Gc();
  ASSERT_OK(condemn);
  ASSERT_GT(condemn->indexes_deleted, 0u);
  EXPECT_EQ(condemn->leases_active, 1u);

  // Past the grace, but the writer still runs: its packs are postponed, not deleted.
  now_ += 2 * kHour;
  auto held = Gc();
  ASSERT_OK(held);
  EXPECT_EQ(held->packs_deleted, 0u);
  EXPECT_EQ(held->packs_leased, condemn->indexes_deleted);

  // The writer publishes (its record references the condemned packs), then drops its lease.
  for (const auto& [k, v] : b1_objects) store_->Overwrite(k, v);
  lease->reset();
  now_ += 2 * kHour;
  auto after = Gc();
  ASSERT_OK(after);
  EXPECT_EQ(after->packs_deleted, 0u);
  EXPECT_EQ(after->indexes_restored, condemn->indexes_deleted);
  EXPECT_EQ(RestoredSha("b1"), s1);
  GcUntilStable();
  EXPECT_EQ(RestoredSha("b1"), s1);
  EXPECT_EQ(BytesUnder("packs/") + BytesUnder("index/"), ReferencedPackBytes());
}

TEST_F(GcTest, WithoutALeaseARecordPublishedBeforeTheNextRunStillSavesItsPacks) {
  // The seen-index rule: a pack's index is gone, but GC re-checks the pack (from its trailer)
  // against the live set before deleting it.
  const std::string s1 = Backup("b1", 1);
  const std::map<std::string, std::string> b1_objects = ObjectsOf("b1");
  ASSERT_OK(target_->DeleteBackup("b1"));
  ASSERT_OK(Gc());
  now_ += 2 * kHour;
  auto condemn = Gc();
  ASSERT_OK(condemn);
  ASSERT_GT(condemn->indexes_deleted, 0u);
  for (const auto& [k, v] : b1_objects) store_->Overwrite(k, v);
  // Listed and restorable at once: the restore finds the blocks in the condemned packs' trailers.
  EXPECT_EQ(RestoredSha("b1"), s1);
  now_ += 2 * kHour;
  auto r = Gc();
  ASSERT_OK(r);
  EXPECT_EQ(r->packs_deleted, 0u);
  EXPECT_EQ(r->indexes_restored, condemn->indexes_deleted);
  EXPECT_EQ(RestoredSha("b1"), s1);
}

TEST_F(GcTest, OrphanPacksAndTemporariesGoOnlyAfterTheGraceAndExpiredLeasesAreIgnored) {
  Backup("b1", 1);
  // A killed writer's pack without its index, a stray temporary and a lease it never removed.
  PackBuilder pb(256 * 1024);
  std::string block(64 * 1024, 'x');
  block[0] = 'y';
  pb.Add(Sha256(block), block.data(), block.size());
  auto sealed = pb.Seal();
  ASSERT_OK(sealed);
  ASSERT_OK(store_->Put(PackKey(sealed->id), sealed->data, PutOptions{}));
  ASSERT_OK(store_->Put(".tmp/0123456789abcdef", "half a pack", PutOptions{}));
  auto lease = WriterLease::Acquire(*store_, "killed");
  ASSERT_OK(lease);
  const std::string lease_key = (*lease)->key();
  const std::string lease_bytes = store_->Snapshot().at(lease_key);
  lease->reset();
  store_->Overwrite(lease_key, lease_bytes);  // killed: the lease was never deleted

  auto r1 = Gc();
  ASSERT_OK(r1);
  EXPECT_EQ(r1->orphan_packs_deleted + r1->temporaries_deleted, 0u);
  EXPECT_EQ(r1->leases_active, 1u);
  now_ += kHour / 2;
  auto r2 = Gc();
  ASSERT_OK(r2);
  EXPECT_EQ(r2->orphan_packs_deleted + r2->temporaries_deleted, 0u);
  EXPECT_TRUE(store_->Snapshot().count(PackKey(sealed->id)));

  // Past the grace, but the killed writer's lease (it could still be uploading) holds both.
  now_ += kHour;
  auto r3 = Gc();
  ASSERT_OK(r3);
  EXPECT_EQ(r3->temporaries_deleted, 0u);
  EXPECT_EQ(r3->orphan_packs_deleted, 0u);
  EXPECT_EQ(r3->packs_leased, 1u);
  EXPECT_TRUE(store_->Snapshot().count(".tmp/0123456789abcdef"));

  // Once the lease is older than the lease expiry it is deleted and both go.
  now_ += 8 * 24 * kHour;
  auto r4 = Gc();
  ASSERT_OK(r4);
  EXPECT_EQ(r4->leases_expired, 1u);
  EXPECT_EQ(r4->orphan_packs_deleted, 1u);
  EXPECT_EQ(r4->temporaries_deleted, 1u);
  EXPECT_FALSE(store_->Snapshot().count(PackKey(sealed->id)));
  EXPECT_FALSE(store_->Snapshot().count(".tmp/0123456789abcdef"));
  EXPECT_FALSE(store_->Snapshot().count(lease_key));
}

TEST_F(GcTest, ZeroGraceStillNeedsOneRunPerStep) {
  Backup("b1", 1);
  Backup("b2", 2);
  ASSERT_OK(target_->DeleteBackup("b2"));
  auto r1 = Gc(0);
  ASSERT_OK(r1);
  EXPECT_EQ(r1->indexes_deleted, 0u);
  auto r2 = Gc(0);
  ASSERT_OK(r2);
  EXPECT_EQ(r2->indexes_deleted, r1->dead_packs);
  EXPECT_EQ(r2->packs_deleted, 0u);
  auto r3 = Gc(0);
  ASSERT_OK(r3);
  EXPECT_EQ(r3->packs_deleted, r1->dead_packs);
  EXPECT_EQ(BytesUnder("packs/") + BytesUnder("index/"), ReferencedPackBytes());
}

TEST_F(GcTest, ASecondRunIsRefusedWhileTheLockIsFreshAndAStaleLockIsBroken) {
  Backup("b1", 1);
  nlohmann::json b = {{"run", "other"}, {"host", "elsewhere"}, {"started", now_}};
  ASSERT_OK(store_->Put(kGcLockKey, EncodeJsonEnvelope("vmbackup-gc-lock", b), PutOptions{}));
  EXPECT_THAT(Gc(), StatusIs(StatusCode::kFailedPrecondition, "host elsewhere"));
  EXPECT_OK(Gc(kHour, /*dry_run=*/true));  // a dry run takes no lock
  now_ += kGcLockStaleSeconds + 1;
  EXPECT_OK(Gc());
  EXPECT_FALSE(store_->Snapshot().count(kGcLockKey));
}

// A store whose async reads of pack indexes answer after 20 ms from a thread of their own,
// counting how many were in flight at once.
class SlowIndexStore final : public ObjectStore {
 public:
  explicit SlowIndexStore(MemStore* inner) : ObjectStore(Runtime::Default()), inner_(inner) {}
  ~SlowIndexStore() override {
    for (auto& t : threads_) t.join();
  }
  std::string Describe() const override { return "slow-index://"; }
  Status Put(const std::string& k, std::string_view d, const PutOptions& o) override {
    return inner_->Put(k, d, o);
  }
  StatusOr<std::string> Get(const std::string& k, uint64_t o, uint64_t l) override {
    return inner_->Get(k, o, l);
  }
  StatusOr<ObjectInfo> Head(const std::string& k) override { return inner_->Head(k); }
  StatusOr<ListPage> List(const std::string& p, const std::string& t, int m) override {
    return inner_->List(p, t, m);
  }
  Status Delete(const std::vector<std::string>& k) override { return inner_->Delete(k); }
  void GetAsync(std::string key, uint64_t offset, uint64_t length,
                std::function<void(StatusOr<std::string>)> done) override {
    if (key.rfind("index/", 0) != 0) return done(inner_->Get(key, offset, length));
    const int now = ++in_flight_;
    int seen = max_in_flight_.load();
    while (now > seen && !max_in_flight_.compare_exchange_weak(seen, now)) {
    }
    std::lock_guard<std::mutex> l(mu_);
    threads_.emplace_back([this, key, offset, length, done = std::move(done)] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      auto r = inner_->Get(key, offset, length);
      --in_flight_;
      done(std::move(r));
    });
  }
  int max_in_flight() const { return max_in_flight_.load(); }

 private:
  MemStore* inner_;
  std::atomic<int> in_flight_{0}, max_in_flight_{0};
  std::mutex mu_;
  std::vector<std::thread> threads_;
};

TEST(GcParallelTest, PackIndexesAreReadManyAtOnce) {
  TempDir dir;
  MemStore mem(Runtime::Default());
  auto slow = std::make_unique<SlowIndexStore>(&mem);
  SlowIndexStore* counter = slow.get();
  TargetOptions o;
  o.block_size = 64 * 1024;
  o.pack_size = 256 * 1024;
  o.state_dir = dir.Sub("state");
  auto t = OpenTargetOnStore(std::move(slow), o);
  ASSERT_OK(t);
  const std::string vol = dir.Sub("v.img");
  testing::MakeVolume(vol, 4 << 20, 9);
  BackupSpec spec;
  spec.name = "b1";
  spec.volumes.push_back({"disk0", vol, false, {}});
  auto job = BackupJob::Create(*t, spec);
  ASSERT_OK(job);
  ASSERT_OK((*job)->Run());
  GcOptions g;
  g.dry_run = true;
  auto r = (*t)->CollectGarbage(g);
  ASSERT_OK(r);
  ASSERT_GE(r->packs, 4u);
  EXPECT_GE(counter->max_in_flight(), 4) << "pack indexes were read one after another";
}

// The identity of a process of this machine that no longer runs: a child that exited.
std::string DeadProcessIdentity() {
  int fds[2];
  if (::pipe(fds) != 0) return "";
  const pid_t pid = ::fork();
  if (pid == 0) {
    const std::string id = ProcessIdentity();
    (void)!::write(fds[1], id.data(), id.size());
    ::_exit(0);
  }
  ::close(fds[1]);
  char buf[256];
  const ssize_t n = ::read(fds[0], buf, sizeof buf);
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

TEST_F(GcTest, ALockAndALeaseOfAKilledProcessOfThisMachineAreNotWaitedFor) {
  Backup("b1", 1);
  const std::string dead = DeadProcessIdentity();
  ASSERT_FALSE(dead.empty());
  // A lock whose holder runs (this process) is honoured; one whose holder is gone is broken now,
  // not after kGcLockStaleSeconds.
  nlohmann::json live = {{"host", "here"}, {"started", now_}, {"process", ProcessIdentity()}};
  ASSERT_OK(store_->Put(kGcLockKey, EncodeJsonEnvelope("vmbackup-gc-lock", live), PutOptions{}));
  EXPECT_THAT(Gc(), StatusIs(StatusCode::kFailedPrecondition, "host here"));
  nlohmann::json killed = {{"host", "here"}, {"started", now_}, {"process", dead}};
  ASSERT_OK(store_->Put(kGcLockKey, EncodeJsonEnvelope("vmbackup-gc-lock", killed), PutOptions{}));
  // A killed backup's lease (never deleted), naming the dead process.
  auto lease = WriterLease::Acquire(*store_, "killed");
  ASSERT_OK(lease);
  const std::string lease_key = (*lease)->key();
  auto body = DecodeJsonEnvelope(store_->Snapshot().at(lease_key), "vmbackup-lease", 4096, "lease");
  ASSERT_OK(body);
  (*body)["process"] = dead;
  lease->reset();
  store_->Overwrite(lease_key, EncodeJsonEnvelope("vmbackup-lease", *body));

  auto r = Gc();
  ASSERT_OK(r);
  EXPECT_EQ(r->leases_expired, 1u);
  EXPECT_EQ(r->leases_active, 0u);
  EXPECT_FALSE(store_->Snapshot().count(lease_key));
  EXPECT_FALSE(store_->Snapshot().count(kGcLockKey));  // broken, then released
}

TEST_F(GcTest, DamagedRecordStopsTheSweep) {
  Backup("b1", 1);
  Backup("b2", 2);
  ASSERT_OK(target_->DeleteBackup("b2"));
  store_->Overwrite("records/b1.json", "{not json");
  for (int i = 0; i < 3; ++i) {
    now_ += 2 * kHour;
    auto r = Gc();
    ASSERT_OK(r);
    EXPECT_FALSE(r->damaged.empty());
    EXPECT_EQ(r->indexes_deleted + r->packs_deleted, 0u);
  }
}

TEST_F(GcTest, BackupDeletedWhileGcRunsIsNotDamageAndIsReclaimed) {
  const std::string s1 = Backup("b1", 1);
  Backup("b2", 2);
  std::vector<std::string> b2_keys = {"records/b2.json"};  // then its volume index and .vfp
  std::string b2_vidx;
  for (const auto& [k, v] : ObjectsOf("b2")) {
    if (k == b2_keys[0]) continue;
    b2_keys.push_back(k);
    if (k.ends_with(".vidx")) b2_vidx = k;
  }
  ASSERT_FALSE(b2_vidx.empty());
  store_->SetFaultHook([&](MemStore::Op op, const std::string& key) {
    if (op == MemStore::Op::kGet && key == b2_vidx) {
      // DeleteBackup's order: the record, then the volume indexes; GC listed b2 before.
      store_->SetFaultHook(nullptr);
      EXPECT_OK(store_->Delete(b2_keys));
    }
    return Status::Ok();
  });
  auto r = Gc();
  ASSERT_OK(r);
  store_->SetFaultHook(nullptr);
  EXPECT_TRUE(r->damaged.empty()) << r->damaged[0];
  EXPECT_EQ(r->backups, 1u);
  EXPECT_GT(r->dead_packs, 0u) << "b2's packs are candidates at once";
  GcUntilStable();
  EXPECT_EQ(BytesUnder("packs/") + BytesUnder("index/"), ReferencedPackBytes());
  EXPECT_EQ(RestoredSha("b1"), s1);

  // A volume index missing while its record is still there is damage: nothing is swept.
  Backup("b3", 3);
  Backup("b4", 4);
  ASSERT_OK(target_->DeleteBackup("b4"));
  for (const auto& [k, v] : store_->Snapshot()) {
    if (k.rfind("volumes/b3/", 0) == 0) {
      ASSERT_OK(store_->Delete({k}));
    }
  }
  for (int i = 0; i < 3; ++i) {
    now_ += 2 * kHour;
    auto d = Gc();
    ASSERT_OK(d);
    EXPECT_FALSE(d->damaged.empty());
    EXPECT_EQ(d->indexes_deleted + d->packs_deleted, 0u);
  }
}

TEST_F(GcTest, ProgressIsReportedAndCanCancel) {
  Backup("b1", 1);
  std::set<std::string> phases;
  GcOptions o;
  o.progress = [&](const GcProgress& p) {
    phases.insert(p.phase);
    return true;
  };
  ASSERT_OK(RunGc(repo(), o, [this] { return now_; }));
  EXPECT_TRUE(phases.count("mark") && phases.count("records") && phases.count("indexes") &&
              phases.count("done"));
  o.progress = [](const GcProgress& p) { return p.phase != "indexes"; };
  EXPECT_THAT(RunGc(repo(), o, [this] { return now_; }),
              StatusIs(StatusCode::kCancelled, "cancelled"));
  EXPECT_FALSE(store_->Snapshot().count(kGcLockKey));  // the lock is released
}

TEST_F(GcTest, RestoreLeftoversOlderThanTheGraceAreDeleted) {
  const std::string dir = dir_.Sub("restores");
  ASSERT_EQ(::mkdir(dir.c_str(), 0700), 0);
  const std::string old_partial = dir + "/disk0.img.vmbackup-partial-0a1b2c3d";
  const std::string new_partial = dir + "/disk1.img.vmbackup-partial-4e5f6a7b";
  const std::string restored = dir + "/disk2.img";
  for (const auto& p : {old_partial, new_partial, restored}) testing::WriteAll(p, "data");
  const struct timeval two_hours_ago[2] = {{::time(nullptr) - 2 * kHour, 0},
                                           {::time(nullptr) - 2 * kHour, 0}};
  ASSERT_EQ(::utimes(old_partial.c_str(), two_hours_ago), 0);
  ASSERT_EQ(::utimes(restored.c_str(), two_hours_ago), 0);
  GcOptions o;
  o.grace_seconds = kHour;
  o.restore_dirs = {dir};
  o.dry_run = true;
  auto dry = RunGc(repo(), o, [this] { return now_; });
  ASSERT_OK(dry);
  EXPECT_EQ(dry->restore_partials_deleted, 1u);
  EXPECT_TRUE(testing::FileExists(old_partial));
  o.dry_run = false;
  auto r = RunGc(repo(), o, [this] { return now_; });
  ASSERT_OK(r);
  EXPECT_EQ(r->restore_partials_deleted, 1u);
  EXPECT_FALSE(testing::FileExists(old_partial));
  EXPECT_TRUE(testing::FileExists(new_partial));  // may belong to a restore still running
  EXPECT_TRUE(testing::FileExists(restored));
  o.restore_dirs = {dir_.Sub("no-such-dir")};
  EXPECT_THAT(RunGc(repo(), o, [this] { return now_; }),
              StatusIs(StatusCode::kNotFound, "no-such-dir"));
}

TEST_F(GcTest, PacksLessThanHalfLiveAreRepackedAndTheRestStaysRestorable) {
  // a.img: 32 random 64 KiB blocks (incompressible: 4 per 256 KiB pack). b.img keeps every fourth
  // block of a.img and replaces the others, so once backup "a" is deleted each of a's packs is a
  // quarter live.
  std::mt19937_64 rng(42);
  std::string a(32 * 65536, '\0'), b;
  FillRandom(rng, &a, 0, a.size());
  b = a;
  for (size_t blk = 0; blk < 32; ++blk)
    if (blk % 4 != 0) FillRandom(rng, &b, blk * 65536, (blk + 1) * 65536);
  testing::WriteAll(dir_.Sub("a.img"), a);
  testing::WriteAll(dir_.Sub("b.img"), b);
  ASSERT_NO_FATAL_FAILURE(BackupFile("a", "a.img"));
  ASSERT_NO_FATAL_FAILURE(BackupFile("b", "b.img"));
  ASSERT_OK(target_->DeleteBackup("a"));
  const uint64_t before = BytesUnder("packs/");

  auto r1 = Gc();
  ASSERT_OK(r1);
  EXPECT_GE(r1->repack_candidates, 7u);  // a's packs (a block may have shared one with b's)
  EXPECT_EQ(r1->packs_repacked, 0u);
  now_ += 2 * kHour;
  auto dry = Gc(kHour, /*dry_run=*/true);
  ASSERT_OK(dry);
  EXPECT_EQ(dry->packs_repacked, r1->repack_candidates);
  EXPECT_EQ(BytesUnder("packs/"), before);
  auto r2 = Gc();
  ASSERT_OK(r2);
  EXPECT_EQ(r2->packs_repacked, r1->repack_candidates);
  EXPECT_GT(r2->bytes_repacked, 0u);
  EXPECT_EQ(RestoredSha("b"), FileSha256(dir_.Sub("b.img")));  // from the new packs
  now_ += 2 * kHour;
  auto r3 = Gc();
  ASSERT_OK(r3);
  EXPECT_EQ(r3->packs_deleted, r1->repack_candidates);  // live blocks are in the new packs
  EXPECT_EQ(r3->indexes_restored, 0u);
  GcUntilStable();
  // No pack is left with dead blocks below half, nothing unreferenced remains, b restores.
  auto last = Gc();
  ASSERT_OK(last);
  EXPECT_EQ(last->repack_candidates, 0u);
  EXPECT_EQ(last->dead_packs, 0u);
  EXPECT_EQ(BytesUnder("packs/") + BytesUnder("index/"), ReferencedPackBytes());
  EXPECT_LT(BytesUnder("packs/"), before);
  EXPECT_EQ(RestoredSha("b"), FileSha256(dir_.Sub("b.img")));
}

TEST_F(GcTest, MaxUnusedChoosesHowManyMostlyLivePacksAreRepacked) {
  // a.img: 32 random 64 KiB blocks (incompressible: 4 per 256 KiB pack). b.img changes every
  // fourth block, so once backup "a" is deleted each of a's packs is three quarters live: the
  // dead quarter is 8 of 40 stored blocks (20 %).
  std::mt19937_64 rng(7);
  std::string a(32 * 65536, '\0');
  FillRandom(rng, &a, 0, a.size());
  std::string b = a;
  for (size_t blk = 0; blk < 32; blk += 4) FillRandom(rng, &b, blk * 65536, (blk + 1) * 65536);
  testing::WriteAll(dir_.Sub("a.img"), a);
  testing::WriteAll(dir_.Sub("b.img"), b);
  ASSERT_NO_FATAL_FAILURE(BackupFile("a", "a.img"));
  ASSERT_NO_FATAL_FAILURE(BackupFile("b", "b.img"));
  ASSERT_OK(target_->DeleteBackup("a"));
  auto gc = [&](int max_unused, bool dry_run) {
    GcOptions o;
    o.grace_seconds = kHour;
    o.dry_run = dry_run;
    o.max_unused_percent = max_unused;
    return RunGc(repo(), o, [this] { return now_; });
  };
  // The dead share of what stays after the run, in percent of the packs' stored bytes.
  auto unused_after = [](const GcReport& r, uint64_t dead_left) {
    return 100.0 * static_cast<double>(dead_left) /
           static_cast<double>(r.live_stored_bytes + dead_left);
  };

  auto all = gc(0, true);
  ASSERT_OK(all);
  ASSERT_GE(all->partly_live_packs, 6u);
  EXPECT_EQ(all->repack_candidates, all->partly_live_packs);  // 0: every pack with a dead block
  EXPECT_NEAR(unused_after(*all, all->dead_bytes_in_partly_live_packs), 20.0, 3.0);
  auto none = gc(50, true);  // 20 % dead is within 50 %; the old rule (under half live) agreed
  ASSERT_OK(none);
  EXPECT_EQ(none->repack_candidates, 0u);
  EXPECT_THAT(gc(101, true), StatusIs(StatusCode::kInvalidArgument, "max_unused_percent"));
  EXPECT_THAT(gc(-2, true), StatusIs(StatusCode::kInvalidArgument, "max_unused_percent"));

  // The default (10 %): the fewest packs that bring the dead rest within 10 %; each pack chosen
  // holds one dead block of four, so about half of them.
  auto r1 = gc(-1, false);
  ASSERT_OK(r1);
  ASSERT_GT(r1->repack_candidates, 0u);
  ASSERT_LT(r1->repack_candidates, r1->partly_live_packs);
  const uint64_t per_pack = r1->dead_bytes_in_partly_live_packs / r1->partly_live_packs;
  const uint64_t left = r1->dead_bytes_in_partly_live_packs - r1->repack_candidates * per_pack;
  EXPECT_LE(unused_after(*r1, left), 10.0);
  EXPECT_GT(unused_after(*r1, left + per_pack), 10.0);  // one pack fewer would not do
  EXPECT_EQ(r1->packs_repacked, 0u);                    // chosen now, rewritten after the grace
  GcUntilStable();
  auto last = gc(-1, false);
  ASSERT_OK(last);
  EXPECT_EQ(last->repack_candidates, 0u);
  EXPECT_EQ(last->partly_live_packs, r1->partly_live_packs - r1->repack_candidates);
  EXPECT_LE(unused_after(*last, last->dead_bytes_in_partly_live_packs), 10.0);
  EXPECT_EQ(last->dead_packs, 0u);
  EXPECT_EQ(BytesUnder("packs/") + BytesUnder("index/"), ReferencedPackBytes());
  EXPECT_EQ(RestoredSha("b"), FileSha256(dir_.Sub("b.img")));

  // 0 then rewrites the rest: no dead block is left in any pack.
  GcOptions o;
  o.grace_seconds = kHour;
  o.max_unused_percent = 0;
  for (int i = 0; i < 4; ++i) {
    now_ += 2 * kHour;
    ASSERT_OK(RunGc(repo(), o, [this] { return now_; }));
  }
  auto clean = gc(0, true);
  ASSERT_OK(clean);
  EXPECT_EQ(clean->partly_live_packs, 0u);
  EXPECT_EQ(clean->dead_bytes_in_partly_live_packs, 0u);
  EXPECT_EQ(RestoredSha("b"), FileSha256(dir_.Sub("b.img")));
}

TEST_F(GcTest, RepackedPackWhoseDeadBlockIsUsedAgainIsKept) {
  // A backup that loaded the index before the repack deduplicated against a dead block of the
  // pack (simulated by publishing the deleted backup's record again): the re-check finds a live
  // block that the new pack does not hold and restores the old pack's index.
  std::string a(8 * 65536, '\0'), b;
  std::mt19937_64 rng(7);
  FillRandom(rng, &a, 0, a.size());
  b = a;
  FillRandom(rng, &b, 65536, b.size());
  testing::WriteAll(dir_.Sub("a.img"), a);
  testing::WriteAll(dir_.Sub("b.img"), b);
  ASSERT_NO_FATAL_FAILURE(BackupFile("a", "a.img"));
  ASSERT_NO_FATAL_FAILURE(BackupFile("b", "b.img"));
  const std::map<std::string, std::string> a_objects = ObjectsOf("a");
  ASSERT_OK(target_->DeleteBackup("a"));
  ASSERT_OK(Gc());
  now_ += 2 * kHour;
  auto repacked = Gc();
  ASSERT_OK(repacked);
  ASSERT_GT(repacked->packs_repacked, 0u);
  for (const auto& [k, v] : a_objects) store_->Overwrite(k, v);
  EXPECT_EQ(RestoredSha("a"), FileSha256(dir_.Sub("a.img")));
  now_ += 2 * kHour;
  auto r = Gc();
  ASSERT_OK(r);
  EXPECT_EQ(r->packs_deleted, 0u);
  // The repacked pack and a's wholly dead pack, condemned in the same run, are both live again.
  EXPECT_EQ(r->indexes_restored, repacked->indexes_deleted);
  GcUntilStable();
  EXPECT_EQ(RestoredSha("a"), FileSha256(dir_.Sub("a.img")));
  EXPECT_EQ(RestoredSha("b"), FileSha256(dir_.Sub("b.img")));
}

// Merge of verify and gc (#11): repair re-indexed every pack without an index whose blocks all
// check, including the packs GC had condemned (index deleted, pack due in the next run), so a
// repair between two GC runs undid GC's work (and, during a run, let backups deduplicate against a
// pack about to be deleted). Repair now leaves a pack without an index that no backup needs to GC.
TEST_F(GcTest, RepairBetweenRunsReindexedCondemnedPacksSoGcNeverReclaimedThem) {
  const std::string s1 = Backup("b1", 1);
  Backup("b2", 2);
  ASSERT_OK(target_->DeleteBackup("b2"));
  auto r1 = Gc();  // candidates
  ASSERT_OK(r1);
  ASSERT_GT(r1->dead_packs, 0u);
  now_ += 2 * kHour;
  auto r2 = Gc();  // condemned: their indexes deleted
  ASSERT_OK(r2);
  ASSERT_EQ(r2->indexes_deleted, r1->dead_packs);
  const size_t indexes = CountUnder("index/");

  auto rep = target_->Repair();
  ASSERT_OK(rep);
  EXPECT_TRUE(rep->actions.empty()) << rep->actions[0].pack_id << ": " << rep->actions[0].action;
  EXPECT_EQ(rep->before.packs_without_index, r1->dead_packs);
  EXPECT_TRUE(rep->before.ok());
  EXPECT_EQ(CountUnder("index/"), indexes) << "no condemned pack indexed again";

  now_ += 2 * kHour;
  auto r3 = Gc();
  ASSERT_OK(r3);
  EXPECT_EQ(r3->packs_deleted, r1->dead_packs);
  EXPECT_EQ(BytesUnder("packs/") + BytesUnder("index/"), ReferencedPackBytes());
  VerifyOptions full;
  full.read_data = true;
  auto after = target_->Verify(full);
  ASSERT_OK(after);
  EXPECT_TRUE(after->ok());
  EXPECT_EQ(after->packs_without_index, 0u);
  EXPECT_EQ(RestoredSha("b1"), s1);
}

TEST_F(GcTest, BackupsLeaveNoLeaseBehind) {
  Backup("b1", 1);
  EXPECT_EQ(CountUnder("leases/"), 0u);
}

}  // namespace
}  // namespace vmbackup::internal
