// SelectBackupsToForget (include/vmbackup/maintenance.h): restic's retention semantics per VM.
#include <gtest/gtest.h>

#include <algorithm>

#include "catalog/retention.h"
#include "vmbackup/maintenance.h"

namespace vmbackup {
namespace {

BackupInfo B(std::string name, std::string created_at, std::string vm = "vm1",
             std::string ns = "default") {
  BackupInfo b;
  b.name = std::move(name);
  b.created_at = std::move(created_at);
  b.vm_name = std::move(vm);
  b.vm_namespace = std::move(ns);
  return b;
}

std::vector<std::string> Kept(const RetentionDecision& d) {
  std::vector<std::string> out;
  for (const auto& k : d.keep) out.push_back(k.name);
  std::sort(out.begin(), out.end());
  return out;
}
std::vector<std::string> Forgotten(const RetentionDecision& d) {
  auto out = d.forget;
  std::sort(out.begin(), out.end());
  return out;
}
std::vector<std::string> ReasonsOf(const RetentionDecision& d, const std::string& name) {
  for (const auto& k : d.keep)
    if (k.name == name) return k.reasons;
  return {};
}

using V = std::vector<std::string>;

TEST(RetentionTest, KeepLastKeepsTheNewestNPerVm) {
  std::vector<BackupInfo> bs = {
      B("a1", "2026-11-01T10:00:00.000Z"), B("a2", "2026-11-02T10:00:00.000Z"),
      B("a3", "2026-11-03T10:00:00.000Z"), B("b1", "2026-11-01T10:00:00.000Z", "vm2"),
      B("c1", "2026-11-01T10:00:00.000Z", "vm1", "other")};
  auto d = SelectBackupsToForget(RetentionPolicy{.keep_last = 2}, bs);
  // vm1/default keeps its 2 newest; vm2 and vm1 in namespace "other" are separate groups.
  EXPECT_EQ(Kept(d), (V{"a2", "a3", "b1", "c1"}));
  EXPECT_EQ(Forgotten(d), (V{"a1"}));
  EXPECT_EQ(ReasonsOf(d, "a3"), (V{"last"}));
}

TEST(RetentionTest, DailyKeepsTheNewestBackupOfEachOfTheNNewestDays) {
  std::vector<BackupInfo> bs = {
      B("d1-morning", "2026-11-01T06:00:00.000Z"), B("d1-evening", "2026-11-01T22:00:00.000Z"),
      B("d2-a", "2026-11-02T01:00:00.000Z"),       B("d2-b", "2026-11-02T23:59:59.999Z"),
      B("d4", "2026-11-04T12:00:00.000Z"),  // no backup on day 3: days with backups count
  };
  auto d = SelectBackupsToForget(RetentionPolicy{.keep_daily = 2}, bs);
  EXPECT_EQ(Kept(d), (V{"d2-b", "d4"}));
  EXPECT_EQ(Forgotten(d), (V{"d1-evening", "d1-morning", "d2-a"}));
  d = SelectBackupsToForget(RetentionPolicy{.keep_daily = 5}, bs);
  EXPECT_EQ(Kept(d), (V{"d1-evening", "d2-b", "d4"}));
}

TEST(RetentionTest, RulesCombineAndEachBackupSaysWhyItIsKept) {
  std::vector<BackupInfo> bs = {
      B("oct", "2026-10-15T00:00:00.000Z"), B("nov-a", "2026-11-01T00:00:00.000Z"),
      B("nov-b", "2026-11-20T00:00:00.000Z"), B("dec", "2026-12-01T00:00:00.000Z")};
  auto d = SelectBackupsToForget(RetentionPolicy{.keep_last = 1, .keep_monthly = 2}, bs);
  EXPECT_EQ(Kept(d), (V{"dec", "nov-b"}));
  EXPECT_EQ(ReasonsOf(d, "dec"), (V{"last", "monthly"}));
  EXPECT_EQ(ReasonsOf(d, "nov-b"), (V{"monthly"}));
  EXPECT_EQ(Forgotten(d), (V{"nov-a", "oct"}));
}

TEST(RetentionTest, TiesOnCreatedAtAreBrokenByNameDescending) {
  std::vector<BackupInfo> bs = {B("x-a", "2026-11-01T10:00:00.000Z"),
                                B("x-c", "2026-11-01T10:00:00.000Z"),
                                B("x-b", "2026-11-01T10:00:00.000Z")};
  auto d = SelectBackupsToForget(RetentionPolicy{.keep_last = 1}, bs);
  EXPECT_EQ(Kept(d), (V{"x-c"}));
  d = SelectBackupsToForget(RetentionPolicy{.keep_daily = 1}, bs);
  EXPECT_EQ(Kept(d), (V{"x-c"}));
  // Deterministic whatever the input order.
  std::reverse(bs.begin(), bs.end());
  EXPECT_EQ(Kept(SelectBackupsToForget(RetentionPolicy{.keep_last = 2}, bs)), (V{"x-b", "x-c"}));
}

TEST(RetentionTest, WeeksAreIsoWeeksAcrossTheNewYear) {
  // 2026-12-28 is a Monday; 2027-01-03 a Sunday: the same ISO week (2026-W53).
  std::vector<BackupInfo> bs = {B("mon", "2026-12-28T08:00:00.000Z"),
                                B("sun", "2027-01-03T08:00:00.000Z"),
                                B("prev-sun", "2026-12-27T08:00:00.000Z")};
  auto d = SelectBackupsToForget(RetentionPolicy{.keep_weekly = 2}, bs);
  EXPECT_EQ(Kept(d), (V{"prev-sun", "sun"}));
  internal::BackupTime t;
  ASSERT_TRUE(internal::ParseBackupTime("2027-01-01T00:00:00Z", &t));
  EXPECT_EQ(t.iso_year, 2026);
  EXPECT_EQ(t.iso_week, 53);
  ASSERT_TRUE(internal::ParseBackupTime("2024-12-30T00:00:00.5Z", &t));  // Monday of 2025-W01
  EXPECT_EQ(t.iso_year, 2025);
  EXPECT_EQ(t.iso_week, 1);
}

TEST(RetentionTest, HourlyAndYearly) {
  std::vector<BackupInfo> bs = {
      B("h10a", "2026-11-01T10:05:00.000Z"), B("h10b", "2026-11-01T10:55:00.000Z"),
      B("h11", "2026-11-01T11:00:00.000Z"), B("y2025", "2025-06-01T00:00:00.000Z")};
  EXPECT_EQ(Kept(SelectBackupsToForget(RetentionPolicy{.keep_hourly = 2}, bs)), (V{"h10b", "h11"}));
  EXPECT_EQ(Kept(SelectBackupsToForget(RetentionPolicy{.keep_yearly = 5}, bs)),
            (V{"h11", "y2025"}));
}

TEST(RetentionTest, UnparsableTimesAreKeptAndEmptyPoliciesKeepEverything) {
  std::vector<BackupInfo> bs = {B("ok1", "2026-11-01T10:00:00.000Z"),
                                B("ok2", "2026-11-02T10:00:00.000Z"), B("weird", "yesterday")};
  auto d = SelectBackupsToForget(RetentionPolicy{.keep_last = 1}, bs);
  EXPECT_EQ(Kept(d), (V{"ok2", "weird"}));
  EXPECT_EQ(ReasonsOf(d, "weird"), (V{"unparsable created_at"}));
  EXPECT_TRUE(SelectBackupsToForget(RetentionPolicy{}, bs).forget.empty());
  EXPECT_TRUE(SelectBackupsToForget(RetentionPolicy{.keep_last = -1}, bs).forget.empty());
  EXPECT_FALSE(internal::PolicyKeepsSomething(RetentionPolicy{}));
  EXPECT_FALSE(internal::PolicyKeepsSomething(RetentionPolicy{.keep_last = 1, .keep_daily = -2}));
}

TEST(RetentionTest, TimesMustBeUtcRfc3339) {
  internal::BackupTime t;
  EXPECT_TRUE(internal::ParseBackupTime("2026-11-01T10:00:00Z", &t));
  EXPECT_FALSE(internal::ParseBackupTime("2026-11-01T10:00:00+01:00", &t));
  EXPECT_FALSE(internal::ParseBackupTime("2026-13-01T10:00:00Z", &t));
  EXPECT_FALSE(internal::ParseBackupTime("2026-11-01 10:00:00Z", &t));
  EXPECT_FALSE(internal::ParseBackupTime("", &t));
}

}  // namespace
}  // namespace vmbackup
