// Retention policies: helpers of SelectBackupsToForget (include/vmbackup/maintenance.h).
// Pure functions, thread-safe.
#ifndef VMBACKUP_CATALOG_RETENTION_H_
#define VMBACKUP_CATALOG_RETENTION_H_

#include <cstdint>
#include <string>

#include "vmbackup/maintenance.h"

namespace vmbackup::internal {

// A backup's created_at broken into the periods retention rules count in (all UTC).
struct BackupTime {
  int year = 0, month = 0, day = 0, hour = 0;
  int64_t days = 0;  // since 1970-01-01
  int iso_year = 0, iso_week = 0;
};
// Parses "YYYY-MM-DDTHH:MM:SS[.fff]Z" (what writers record). False for anything else.
bool ParseBackupTime(const std::string& rfc3339, BackupTime* out);

// True when every count is >= 0 and at least one is > 0.
bool PolicyKeepsSomething(const RetentionPolicy& policy);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_CATALOG_RETENTION_H_
