// Umbrella header: the whole public C++ API of vmbackup.
#ifndef VMBACKUP_VMBACKUP_H_
#define VMBACKUP_VMBACKUP_H_

#include "vmbackup/backup_info.h"
#include "vmbackup/backup_job.h"
#include "vmbackup/backup_target.h"
#include "vmbackup/export.h"
#include "vmbackup/options.h"
#include "vmbackup/restore_plan.h"
#include "vmbackup/runtime.h"
#include "vmbackup/status.h"
#include "vmbackup/verify.h"
#include "vmbackup/version.h"
#include "vmbackup/vm.h"
#include "vmbackup/volume_snapshotter.h"

#endif  // VMBACKUP_VMBACKUP_H_
