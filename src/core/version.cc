// Runtime version query.
#include "vmbackup/version.h"

namespace vmbackup {
int VersionNumber() { return VMBACKUP_VERSION_NUMBER; }
const char* VersionString() { return VMBACKUP_VERSION_STRING; }
}  // namespace vmbackup
