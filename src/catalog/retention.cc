// Retention policies (include/vmbackup/maintenance.h): which backups a policy keeps.
// Pure functions, thread-safe.
#include "catalog/retention.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <tuple>

namespace vmbackup {
namespace internal {

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
static int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

bool ParseBackupTime(const std::string& rfc3339, BackupTime* out) {
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, s = 0;
  char tail = 0;
  // "YYYY-MM-DDTHH:MM:SS" then "Z" or ".fff…Z": only UTC, which is what writers record.
  if (rfc3339.size() < 20 || std::sscanf(rfc3339.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%c", &y, &mo, &d,
                                         &h, &mi, &s, &tail) != 7)
    return false;
  if (rfc3339[4] != '-' || rfc3339[7] != '-' || rfc3339[10] != 'T' || rfc3339[13] != ':' ||
      rfc3339[16] != ':')
    return false;
  if (rfc3339.back() != 'Z' || (tail != 'Z' && tail != '.')) return false;
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60 || y < 1970) return false;
  out->year = y;
  out->month = mo;
  out->day = d;
  out->hour = h;
  out->days = DaysFromCivil(y, static_cast<unsigned>(mo), static_cast<unsigned>(d));
  // ISO 8601 week: the week (Monday first) holding the date's Thursday; its year is the
  // Thursday's year. 1970-01-01 was a Thursday.
  const int64_t weekday = ((out->days % 7) + 7 + 3) % 7;  // 0 = Monday
  const int64_t thursday = out->days - weekday + 3;
  // Year of the Thursday: from the civil year, corrected at the year's edges.
  int64_t ty = y;
  if (thursday < DaysFromCivil(y, 1, 1)) ty = y - 1;
  if (thursday >= DaysFromCivil(y + 1, 1, 1)) ty = y + 1;
  out->iso_year = static_cast<int>(ty);
  out->iso_week = static_cast<int>((thursday - DaysFromCivil(ty, 1, 1)) / 7 + 1);
  return true;
}

}  // namespace internal

namespace {

struct Rule {
  const char* reason;
  int count;
  int64_t (*bucket)(const internal::BackupTime&);
};

int64_t NoBucket(const internal::BackupTime&) { return 0; }
int64_t Hour(const internal::BackupTime& t) { return t.days * 24 + t.hour; }
int64_t Day(const internal::BackupTime& t) { return t.days; }
int64_t Week(const internal::BackupTime& t) {
  return static_cast<int64_t>(t.iso_year) * 100 + t.iso_week;
}
int64_t Month(const internal::BackupTime& t) {
  return static_cast<int64_t>(t.year) * 100 + t.month;
}
int64_t Year(const internal::BackupTime& t) { return t.year; }

}  // namespace

RetentionDecision SelectBackupsToForget(const RetentionPolicy& policy,
                                        const std::vector<BackupInfo>& backups) {
  RetentionDecision out;
  const bool usable = internal::PolicyKeepsSomething(policy);
  // Groups by VM identity, each newest first.
  std::map<std::pair<std::string, std::string>, std::vector<const BackupInfo*>> groups;
  for (const auto& b : backups) groups[{b.vm_namespace, b.vm_name}].push_back(&b);
  for (auto& [id, list] : groups) {
    std::sort(list.begin(), list.end(), [](const BackupInfo* a, const BackupInfo* b) {
      return std::tie(a->created_at, a->name) > std::tie(b->created_at, b->name);
    });
    Rule rules[] = {{"last", policy.keep_last, NoBucket},    {"hourly", policy.keep_hourly, Hour},
                    {"daily", policy.keep_daily, Day},       {"weekly", policy.keep_weekly, Week},
                    {"monthly", policy.keep_monthly, Month}, {"yearly", policy.keep_yearly, Year}};
    constexpr size_t kRules = sizeof(rules) / sizeof(rules[0]);
    int left[kRules];
    bool have_last[kRules] = {};
    int64_t last[kRules] = {};
    for (size_t r = 0; r < kRules; ++r) left[r] = rules[r].count;
    for (const BackupInfo* b : list) {
      KeptBackup kept{b->name, {}};
      internal::BackupTime t;
      if (!usable) {
        kept.reasons.push_back("policy keeps everything");
      } else if (!internal::ParseBackupTime(b->created_at, &t)) {
        kept.reasons.push_back("unparsable created_at");
      } else {
        for (size_t r = 0; r < kRules; ++r) {
          if (left[r] <= 0) continue;
          const int64_t bucket = rules[r].bucket(t);
          // keep_last: every backup is its own period.
          if (r == 0 || !have_last[r] || bucket != last[r]) {
            kept.reasons.push_back(rules[r].reason);
            have_last[r] = true;
            last[r] = bucket;
            --left[r];
          }
        }
      }
      if (kept.reasons.empty()) {
        out.forget.push_back(b->name);
      } else {
        out.keep.push_back(std::move(kept));
      }
    }
  }
  return out;
}

namespace internal {

bool PolicyKeepsSomething(const RetentionPolicy& p) {
  const int counts[] = {p.keep_last,   p.keep_hourly,  p.keep_daily,
                        p.keep_weekly, p.keep_monthly, p.keep_yearly};
  bool any = false;
  for (int c : counts) {
    if (c < 0) return false;
    any = any || c > 0;
  }
  return any;
}

}  // namespace internal
}  // namespace vmbackup
