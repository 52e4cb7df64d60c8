// kill -9 trials (issue #11): backups, deletes, garbage collection and restores, each SIGKILLed at
// chosen store operations (vmbackup_kill_child: before an operation reaches the store, or after
// the store answered it and before the library saw the answer), on a local directory and on
// radosgw (an encrypted repository). After every kill, a fresh process view of the target must
// show:
//   - no listed backup with missing data (fast verify clean; the affected backup restores
//     bit-identical), and every backup that reported Ready still listed;
//   - no destination partly changed (a new destination does not exist; an overwritten one holds
//     its old bytes);
//   - the next run succeeds and reuses what the killed one uploaded;
// and at the end, after deletes and GC runs, the target holds only what the remaining backups
// reference (no orphan pack, temporary, lease or restore leftover; dead bytes only inside packs
// above the repack threshold). Each test prints a "[ TRIAL    ]" line with its kill count and the
// figure of bytes on the target against bytes referenced.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include "core/impl_access.h"
#include "core/util.h"
#include "integration_util.h"
#include "support/test_util.h"
#include "target/target_impl.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup {
namespace {

using ::vmbackup::testing::FileSha256;
using ::vmbackup::testing::TempDir;
namespace integ = ::vmbackup::integration;

constexpr uint64_t kVolumeSize = 6ull << 20;
constexpr uint64_t kChange = 1ull << 20;  // bytes rewritten before each backup
constexpr char kRawKeyHex[] = "5c1e8f0d2b7a4c6e9f1a3b5d7c9e0f2a4b6c8d0e1f3a5b7c9d1e3f5a7b9c1d3e";

// What one child run did.
struct ChildRun {
  bool killed = false;
  int exit_code = -1;
  std::string code;  // StatusCodeName of the result ("" when killed)
  std::string message;
  uint64_t ops = 0;
  uint64_t bytes_new = 0;
  std::vector<std::string> lines;
};

// How many kills each phase gets on a target.
struct Plan {
  int backups, deletes, gcs, restores;
};

class KillTrial : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ASSERT_EQ(::mkdir(dir_.Sub("restores").c_str(), 0700), 0);
    ASSERT_EQ(::mkdir(dir_.Sub("state").c_str(), 0700), 0);
    if (GetParam() == "local") {
      ASSERT_EQ(::mkdir(dir_.Sub("target").c_str(), 0700), 0);
      spec_ = "local:" + dir_.Sub("target");
      config_.type = TargetConfig::Type::kFile;
      config_.endpoint = dir_.Sub("target");
      plan_ = {16, 8, 8, 10};
    } else {
      auto c = integ::ServerTargetConfig("s3");
      ASSERT_OK(c);
      config_ = *c;
      spec_ = "s3:" + config_.prefix;
      options_.encryption = "aes-256-gcm";
      std::string key(32, '\0');
      ASSERT_TRUE(internal::BytesFromHex(kRawKeyHex, reinterpret_cast<uint8_t*>(key.data()), 32));
      options_.raw_key = key;
      plan_ = {6, 3, 4, 4};
    }
    options_.block_size = 64 * 1024;
    options_.pack_size = 1024 * 1024;
    options_.state_dir = dir_.Sub("state");
    auto t = BackupTarget::Open(config_, options_);
    ASSERT_OK(t);
    options_.create_if_missing = false;
    volume_ = dir_.Sub("disk0.img");
    integ::WriteRandomFile(volume_, kVolumeSize, 7);
  }
  void TearDown() override {
    if (GetParam() == "local") return;
    auto t = Open();
    if (!t) return;
    auto& store = internal::ImplOf(t)->repo->store();
    for (const char* p : {"records/", "volumes/", "index/", "packs/", "gc/", "leases/", ".tmp/",
                          "keys/", "fingerprints/"}) {
      auto keys = store.ListAll(p);
      if (!keys.ok()) continue;
      std::vector<std::string> k;
      for (auto& o : *keys) k.push_back(o.key);
      if (!k.empty()) (void)store.Delete(k);
    }
    (void)store.Delete({"repository.json"});
  }

  // A fresh view of the target (nothing cached from earlier opens).
  std::shared_ptr<BackupTarget> Open() {
    auto t = BackupTarget::Open(config_, options_);
    EXPECT_OK(t);
    return t.ok() ? *t : nullptr;
  }
  internal::ObjectStore& StoreOf(const std::shared_ptr<BackupTarget>& t) {
    return internal::ImplOf(t)->repo->store();
  }
  uint64_t Count(const std::shared_ptr<BackupTarget>& t, const std::string& prefix) {
    auto keys = StoreOf(t).ListAll(prefix);
    EXPECT_OK(keys);
    return keys.ok() ? keys->size() : 0;
  }

  // Runs the child; kill_at 0 = a counting run that must not be killed.
  ChildRun Child(bool count_reads, uint64_t kill_at, bool after,
                 const std::vector<std::string>& op) {
    std::vector<std::string> args = {"--target",    spec_,
                                     "--state-dir", dir_.Sub("state"),
                                     "--count",     count_reads ? "reads" : "writes",
                                     "--kill-at",   std::to_string(kill_at),
                                     "--after",     after ? "1" : "0"};
    if (GetParam() != "local") {
      args.push_back("--raw-key");
      args.push_back(kRawKeyHex);
    }
    args.insert(args.end(), op.begin(), op.end());
    integ::HelperProcess p;
    ChildRun r;
    if (!p.Start(VMBACKUP_KILL_CHILD, args, dir_.Sub("child.log"))) return r;
    const int status = p.Wait();
    r.lines = p.Lines();
    r.killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
    if (auto res = p.Result()) {
      r.code = res->first;
      r.message = res->second;
    }
    for (const auto& l : r.lines) {
      unsigned long long a = 0, b = 0;
      if (std::sscanf(l.c_str(), "ops %llu", &a) == 1) r.ops = a;
      if (std::sscanf(l.c_str(), "stats %llu %llu", &a, &b) == 2) r.bytes_new = a;
    }
    if (r.killed) ++kills_;
    return r;
  }
  // A child run that must complete with OK.
  ChildRun MustComplete(bool count_reads, const std::vector<std::string>& op) {
    ChildRun r = Child(count_reads, 0, false, op);
    EXPECT_FALSE(r.killed);
    EXPECT_EQ(r.code, "OK") << r.message << "\n" << ::testing::PrintToString(r.lines);
    return r;
  }
  // Kill points for an operation of about `ops` counted operations: `n` points spread over
  // [1, ops], alternately before and after.
  static std::vector<std::pair<uint64_t, bool>> Points(uint64_t ops, int n) {
    std::vector<std::pair<uint64_t, bool>> out;
    if (ops == 0) return out;
    for (int i = 0; i < n; ++i) {
      const uint64_t k = 1 + (ops - 1) * static_cast<uint64_t>(i) / std::max(1, n - 1);
      out.emplace_back(std::max<uint64_t>(1, k), i % 2 == 1);
    }
    return out;
  }

  // Rewrites kChange bytes of the volume at a place chosen by `seed` (64 KiB aligned); returns the
  // volume's new SHA-256.
  std::string Change(uint64_t seed) {
    std::mt19937_64 rng(seed);
    const uint64_t blocks = kVolumeSize / (64 * 1024);
    const uint64_t at = (rng() % (blocks - kChange / (64 * 1024))) * 64 * 1024;
    std::string bytes(kChange, '\0');
    for (size_t i = 0; i + 8 <= bytes.size(); i += 8) {
      const uint64_t v = rng();
      std::memcpy(&bytes[i], &v, 8);
    }
    std::fstream f(volume_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(at));
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    f.close();
    return FileSha256(volume_);
  }

  std::string RestoredSha(const std::shared_ptr<BackupTarget>& t, const std::string& name) {
    return integ::RestoreSha(t, name, dir_);
  }

  // The invariants after a kill. `maybe` is a backup whose fate the kill decided (a killed backup
  // or delete): listed or not, but whole if listed. Returns whether `maybe` is listed.
  bool Check(const std::string& what, const std::string& maybe = "",
             const std::string& maybe_sha = "") {
    SCOPED_TRACE(what);
    auto t = Open();
    if (!t) return false;
    auto list = t->ListBackups();
    EXPECT_OK(list);
    if (!list.ok()) return false;
    std::set<std::string> listed;
    for (const auto& b : list->backups) listed.insert(b.name);
    for (const auto& [name, sha] : ready_)
      if (name != maybe) {
        EXPECT_TRUE(listed.count(name)) << "backup " << name << " vanished";
      }
    for (const auto& name : listed)
      EXPECT_TRUE(ready_.count(name) || name == maybe) << "unknown backup " << name << " listed";
    auto report = t->Verify();
    EXPECT_OK(report);
    if (report.ok()) {
      EXPECT_TRUE(report->ok()) << VerifyReportToJson(*report);
      EXPECT_TRUE(report->damaged_backups.empty()) << VerifyReportToJson(*report);
    }
    const bool maybe_listed = !maybe.empty() && listed.count(maybe) > 0;
    if (maybe_listed) {
      EXPECT_EQ(RestoredSha(t, maybe), maybe_sha) << maybe << " is not whole";
    }
    return maybe_listed;
  }

  // Every listed backup restores bit-identical.
  void RestoreAll(const std::string& what) {
    SCOPED_TRACE(what);
    auto t = Open();
    if (!t) return;
    for (const auto& [name, sha] : ready_) EXPECT_EQ(RestoredSha(t, name), sha) << name;
  }

  // Files named like a restore's temporary in the restore directory.
  std::vector<std::string> Partials() {
    std::vector<std::string> out;
    for (const auto& f : integ::FilesUnder(dir_.Sub("restores")))
      if (f.find(".vmbackup-partial-") != std::string::npos) out.push_back(f);
    return out;
  }

  TempDir dir_;
  TargetConfig config_;
  TargetOptions options_;
  std::string spec_, volume_;
  Plan plan_{};
  std::map<std::string, std::string> ready_;  // backups that reported Ready → volume SHA-256
  int kills_ = 0;
  int seed_ = 100;
};

TEST_P(KillTrial, KilledAnywhereNothingIsLostAndGcFreesWhatWasLeft) {
  int next = 0;
  auto name_of = [&](int i) {
    char b[16];
    std::snprintf(b, sizeof b, "b%02d", i);
    return std::string(b);
  };

  // ---- backups ----
  // A full backup, then an incremental one counted: its writes are the kill range.
  std::string sha = FileSha256(volume_);
  ASSERT_EQ(MustComplete(false, {"backup", name_of(next), volume_}).code, "OK");
  ready_[name_of(next++)] = sha;
  sha = Change(seed_++);
  ChildRun counted = MustComplete(false, {"backup", name_of(next), volume_});
  ASSERT_EQ(counted.code, "OK");
  ready_[name_of(next++)] = sha;
  ASSERT_GT(counted.ops, 3u);
  for (auto [k, after] : Points(counted.ops, plan_.backups)) {
    const std::string name = name_of(next++);
    SCOPED_TRACE("backup " + name + " killed at write " + std::to_string(k) +
                 (after ? " after" : " before"));
    sha = Change(seed_++);
    auto before_kill = Open();
    ASSERT_TRUE(before_kill);
    const uint64_t indexes_before = Count(before_kill, "index/");
    ChildRun r = Child(false, k, after, {"backup", name, volume_});
    if (!r.killed) {  // fewer writes than counted: it completed
      ASSERT_EQ(r.code, "OK") << r.message;
      ready_[name] = sha;
      continue;
    }
    const uint64_t indexes_uploaded = Count(Open(), "index/") - indexes_before;
    if (Check("after the kill", name, sha)) {
      ready_[name] = sha;  // killed after its record was written: whole
      continue;
    }
    // The next run of the same backup succeeds, reusing the blocks of the packs already indexed.
    ChildRun again = MustComplete(false, {"backup", name, volume_});
    ready_[name] = sha;
    if (indexes_uploaded > 0) {
      EXPECT_LT(again.bytes_new, kChange) << "the rerun stored again what the killed run uploaded";
    }
  }
  RestoreAll("after the backup kills");

  // ---- deletes ----
  ChildRun del = MustComplete(false, {"delete", ready_.begin()->first});
  ready_.erase(ready_.begin());
  ASSERT_GT(del.ops, 0u);
  for (auto [k, after] : Points(del.ops, plan_.deletes)) {
    const std::string victim = ready_.begin()->first, victim_sha = ready_.begin()->second;
    SCOPED_TRACE("delete of " + victim + " killed at write " + std::to_string(k) +
                 (after ? " after" : " before"));
    ChildRun r = Child(false, k, after, {"delete", victim});
    ready_.erase(victim);
    if (r.killed && Check("after the kill", victim, victim_sha)) {
      auto t = Open();
      ASSERT_TRUE(t);
      EXPECT_OK(t->DeleteBackup(victim));  // finish it
    } else if (!r.killed) {
      EXPECT_EQ(r.code, "OK") << r.message;
    }
  }

  // ---- garbage collection ----
  // GC runs of a few writes each (run record, candidates, deletions, repacks): kill points from 1
  // to 8; a run with fewer writes completes. One more backup is deleted before each to make work.
  for (int i = 0; i < plan_.gcs; ++i) {
    const uint64_t k = 1 + static_cast<uint64_t>(i) % 8;
    const bool after = i % 2 == 1;
    SCOPED_TRACE("gc killed at write " + std::to_string(k) + (after ? " after" : " before"));
    if (ready_.size() > 4 && i % 2 == 0) {
      auto t = Open();
      ASSERT_TRUE(t);
      ASSERT_OK(t->DeleteBackup(ready_.begin()->first));
      ready_.erase(ready_.begin());
    }
    ChildRun r = Child(false, k, after, {"gc", dir_.Sub("restores")});
    if (!r.killed) {
      EXPECT_EQ(r.code, "OK") << r.message;
    }
    Check("after the gc kill");
  }
  RestoreAll("after the gc kills");

  // ---- restores ----
  const std::string victim = ready_.rbegin()->first, victim_sha = ready_.rbegin()->second;
  const std::string counted_dest = dir_.Sub("restores/counted.img");
  ChildRun rc = MustComplete(true, {"restore", victim, counted_dest, "0"});
  EXPECT_EQ(FileSha256(counted_dest), victim_sha);
  ASSERT_GT(rc.ops, 0u);
  // An existing file to overwrite: another backup's bytes.
  const std::string old_name = ready_.begin()->first, old_sha = ready_.begin()->second;
  ASSERT_NE(old_sha, victim_sha);
  int point = 0;
  for (auto [k, after] : Points(rc.ops, plan_.restores)) {
    const bool overwrite = point++ % 2 == 1;
    SCOPED_TRACE(std::string(overwrite ? "overwriting" : "new") + " restore killed at read " +
                 std::to_string(k) + (after ? " after" : " before"));
    const std::string dest = dir_.Sub("restores/r" + std::to_string(point) + ".img");
    if (overwrite) {
      ASSERT_EQ(::system(("cp " + integ::Quote(counted_dest) + " " + integ::Quote(dest)).c_str()),
                0);
      // counted_dest holds victim's bytes; restore the other backup over it.
    }
    const std::string want_after = overwrite ? old_sha : victim_sha;
    const std::string want_kept = overwrite ? victim_sha : "";
    ChildRun r = Child(true, k, after,
                       {"restore", overwrite ? old_name : victim, dest, overwrite ? "1" : "0"});
    struct stat st;
    const bool exists = ::stat(dest.c_str(), &st) == 0;
    if (r.killed) {
      if (overwrite) {
        ASSERT_TRUE(exists);
        const std::string now = FileSha256(dest);
        EXPECT_TRUE(now == want_kept || now == want_after)
            << "an overwritten file was changed in part";
      } else {
        EXPECT_TRUE(!exists || FileSha256(dest) == want_after)
            << "a killed restore left a partial file at its destination";
      }
    } else {
      EXPECT_EQ(r.code, "OK") << r.message;
    }
    Check("after the restore kill");
    // The restore done again succeeds.
    MustComplete(true, {"restore", overwrite ? old_name : victim, dest, "1"});
    EXPECT_EQ(FileSha256(dest), want_after);
  }

  // ---- the end: GC frees what the killed runs left ----
  // Runs (grace 0: each step takes one run more) until one finds nothing left to do; a repack
  // or a condemned pack takes three.
  auto t = Open();
  ASSERT_TRUE(t);
  GcOptions o;
  o.grace_seconds = 0;
  o.restore_dirs = {dir_.Sub("restores")};
  std::vector<std::string> gc_reports;
  for (int i = 0; i < 8; ++i) {
    auto r = t->CollectGarbage(o);
    ASSERT_OK(r);
    gc_reports.push_back(GcReportToJson(*r));
    if (r->reclaimable_bytes + r->bytes_deleted + r->indexes_deleted + r->packs_repacked +
            r->restore_partials_deleted + r->leases_expired ==
        0)
      break;
  }
  o.dry_run = true;
  auto last = t->CollectGarbage(o);
  ASSERT_OK(last);
  EXPECT_EQ(last->dead_packs, 0u) << GcReportToJson(*last);
  EXPECT_EQ(last->new_candidates, 0u) << GcReportToJson(*last);
  EXPECT_EQ(last->repack_candidates, 0u) << GcReportToJson(*last);
  EXPECT_EQ(Count(t, ".tmp/"), 0u) << "temporaries of killed writers left";
  EXPECT_EQ(Count(t, "leases/"), 0u) << "leases of killed backups left";
  {
    auto packs = StoreOf(t).ListAll("packs/");
    auto indexes = StoreOf(t).ListAll("index/");
    ASSERT_OK(packs);
    ASSERT_OK(indexes);
    std::set<std::string> indexed;
    for (const auto& o : *indexes) indexed.insert(o.key.substr(o.key.rfind('/') + 1, 32));
    std::vector<std::string> orphans;
    for (const auto& o : *packs)
      if (!indexed.count(o.key.substr(o.key.rfind('/') + 1, 32))) orphans.push_back(o.key);
    EXPECT_TRUE(orphans.empty()) << "packs without an index left: "
                                 << ::testing::PrintToString(orphans) << "\nlast GC runs:\n"
                                 << ::testing::PrintToString(gc_reports);
  }
  EXPECT_TRUE(Partials().empty()) << ::testing::PrintToString(Partials());
  // Within the repack threshold: the dead bytes left in partly-live packs are at most 10 % (the
  // default max_unused_percent) of what the packs keep.
  EXPECT_LE(last->dead_bytes_in_partly_live_packs * 10,
            last->live_stored_bytes + last->dead_bytes_in_partly_live_packs)
      << GcReportToJson(*last);
  uint64_t all_bytes = 0;
  for (const char* p : {"packs/", "index/", "records/", "volumes/", "gc/", "fingerprints/"}) {
    auto keys = StoreOf(t).ListAll(p);
    ASSERT_OK(keys);
    for (const auto& k : *keys) all_bytes += k.size;
  }
  RestoreAll("at the end");
  const uint64_t live = last->pack_bytes - last->dead_bytes_in_partly_live_packs;
  std::printf(
      "[ TRIAL    ] %s: %d kills; %zu backups left; packs %llu B, of which live %llu B "
      "(%.1f %%); all objects %llu B\n",
      GetParam().c_str(), kills_, ready_.size(), static_cast<unsigned long long>(last->pack_bytes),
      static_cast<unsigned long long>(live),
      last->pack_bytes ? 100.0 * static_cast<double>(live) / static_cast<double>(last->pack_bytes)
                       : 100.0,
      static_cast<unsigned long long>(all_bytes));
  const int wanted = plan_.backups + plan_.deletes + plan_.restores;
  EXPECT_GE(kills_, wanted) << "fewer kills landed than planned: the points missed the runs";
}

// Four processes back up to one target, round after round, while this process deletes old
// backups and runs GC (grace 0) in a loop: every backup that reported Ready and was not deleted
// restores bit-identical afterwards, also after GC ran until it had nothing left to do.
TEST_P(KillTrial, FourWritersWithGcAndDeletesInALoopLoseNothing) {
  constexpr int kWriters = 4;
  const int rounds = 4;
  std::vector<std::string> volumes;
  for (int w = 0; w < kWriters; ++w) {
    // The writers share the first half of their data (they race to store the same blocks).
    volumes.push_back(dir_.Sub("w" + std::to_string(w) + ".img"));
    ASSERT_EQ(
        ::system(("cp " + integ::Quote(volume_) + " " + integ::Quote(volumes.back())).c_str()), 0);
  }
  auto t = Open();
  ASSERT_TRUE(t);
  GcOptions gc;
  gc.grace_seconds = 0;
  int gc_runs = 0, deleted = 0;
  for (int round = 0; round < rounds; ++round) {
    std::vector<std::string> names, shas;
    std::vector<std::unique_ptr<integ::HelperProcess>> writers;
    for (int w = 0; w < kWriters; ++w) {
      std::mt19937_64 rng(static_cast<uint64_t>(round * 131 + w));
      const std::string saved = volume_;
      volume_ = volumes[w];
      shas.push_back(Change(rng()));  // a fresh 1 MiB in each writer's volume
      volume_ = saved;
      names.push_back("w" + std::to_string(w) + "-r" + std::to_string(round));
      std::vector<std::string> args = {"--target", spec_, "--state-dir", dir_.Sub("state")};
      if (GetParam() != "local") {
        args.push_back("--raw-key");
        args.push_back(kRawKeyHex);
      }
      for (const std::string& a : {std::string("backup"), names.back(), volumes[w]})
        args.push_back(a);
      writers.push_back(std::make_unique<integ::HelperProcess>());
      ASSERT_TRUE(writers.back()->Start(VMBACKUP_KILL_CHILD, args,
                                        dir_.Sub("writer" + std::to_string(w) + ".log")));
    }
    // Deletes and GC runs while the writers run.
    auto any_running = [&] {
      for (auto& p : writers)
        if (p->Running()) return true;
      return false;
    };
    while (any_running()) {
      if (ready_.size() > 4) {
        ASSERT_OK(t->DeleteBackup(ready_.begin()->first));
        ready_.erase(ready_.begin());
        ++deleted;
      }
      // No other GC runs here: every run must succeed, whatever the writers do meanwhile.
      auto r = t->CollectGarbage(gc);
      ASSERT_OK(r);
      ++gc_runs;
    }
    for (int w = 0; w < kWriters; ++w) {
      const int status = writers[w]->Wait();
      ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
          << names[w] << ": " << ::testing::PrintToString(writers[w]->Lines());
      ready_[names[w]] = shas[w];
    }
  }
  // Check before GC settles, then after.
  auto report = t->Verify();
  ASSERT_OK(report);
  EXPECT_TRUE(report->ok()) << VerifyReportToJson(*report);
  RestoreAll("after the rounds");
  GcReport last;
  for (int i = 0; i < 8; ++i) {
    auto r = t->CollectGarbage(gc);
    ASSERT_OK(r);
    last = *r;
    if (r->reclaimable_bytes + r->bytes_deleted + r->indexes_deleted + r->packs_repacked == 0)
      break;
  }
  RestoreAll("after GC settled");
  EXPECT_LE(last.dead_bytes_in_partly_live_packs * 10,
            last.live_stored_bytes + last.dead_bytes_in_partly_live_packs)
      << GcReportToJson(last);
  EXPECT_GE(gc_runs, rounds) << "GC did not run during every round of writers";
  std::printf(
      "[ TRIAL    ] %s: %d writers x %d rounds, %d GC runs and %d deletes meanwhile; "
      "%zu backups left, packs %llu B, of which live %llu B\n",
      GetParam().c_str(), kWriters, rounds, gc_runs, deleted, ready_.size(),
      static_cast<unsigned long long>(last.pack_bytes),
      static_cast<unsigned long long>(last.pack_bytes - last.dead_bytes_in_partly_live_packs));
}

INSTANTIATE_TEST_SUITE_P(Targets, KillTrial, ::testing::Values("local", "s3"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace vmbackup
