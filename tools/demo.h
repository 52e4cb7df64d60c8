// `vmbackupctl demo`: an end-to-end proof of backup, incremental backup and restore on a local
// target, with generated disk images (an ext4 root disk and a mixed-content data disk), SHA-256
// verification of every restored volume and e2fsck of the restored root disks.
// Runs on the main thread; hashing uses one extra thread per volume.
#ifndef VMBACKUP_TOOLS_DEMO_H_
#define VMBACKUP_TOOLS_DEMO_H_

#include "args.h"
#include "cli.h"

namespace vmbackupctl {

int CmdDemo(Context& ctx, const ParsedArgs& args);

}  // namespace vmbackupctl

#endif  // VMBACKUP_TOOLS_DEMO_H_
