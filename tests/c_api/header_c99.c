/* <vmbackup/c.h> compiles alone as strict C99 (twice: include guard). */
#include <vmbackup/c.h>

/* The option INIT macros are valid initializers. */
static const vmb_target_options kTarget = VMB_TARGET_OPTIONS_INIT;
static const vmb_backup_options kBackup = VMB_BACKUP_OPTIONS_INIT;
static const vmb_restore_options kRestore = VMB_RESTORE_OPTIONS_INIT;

unsigned int vmb_header_c99_versions(void);
unsigned int vmb_header_c99_versions(void) {
  return kTarget.version + kBackup.version + kRestore.version;
}
