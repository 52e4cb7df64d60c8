// <vmbackup/c.h> compiles alone as strict C++ too (extern "C", no C-only constructs).
#include <vmbackup/c.h>

unsigned int VmbHeaderCxxVersions() {
  const vmb_target_options target = VMB_TARGET_OPTIONS_INIT;
  const vmb_backup_options backup = VMB_BACKUP_OPTIONS_INIT;
  const vmb_restore_options restore = VMB_RESTORE_OPTIONS_INIT;
  return target.version + backup.version + restore.version;
}
