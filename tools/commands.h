// The vmbackupctl commands (target test, backup, list, show, restore, delete, verify, repair,
// forget, gc) and the job runners the demo shares with them. Each Cmd* function prints its result (text or --json) and returns the
// process exit code. Run on the main thread.
#ifndef VMBACKUP_TOOLS_COMMANDS_H_
#define VMBACKUP_TOOLS_COMMANDS_H_

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "args.h"
#include "cli.h"
#include "vmbackup/vmbackup.h"

namespace vmbackupctl {

int CmdTargetTest(Context& ctx, const ParsedArgs& args);
int CmdBackup(Context& ctx, const ParsedArgs& args);
int CmdList(Context& ctx, const ParsedArgs& args);
int CmdShow(Context& ctx, const ParsedArgs& args);
int CmdRestore(Context& ctx, const ParsedArgs& args);
int CmdDelete(Context& ctx, const ParsedArgs& args);
// verify [--read-data] [--read-data-subset X]; repair [--dry-run] [--read-data ...]. Exit 0 when
// the target is sound (repair: when nothing stays damaged), kExitDamageFound otherwise.
int CmdVerify(Context& ctx, const ParsedArgs& args);
int CmdRepair(Context& ctx, const ParsedArgs& args);
// forget and gc (maintenance_cmds.cc).
int CmdForget(Context& ctx, const ParsedArgs& args);
int CmdGc(Context& ctx, const ParsedArgs& args);
int CmdKeyList(Context& ctx, const ParsedArgs& args);
int CmdKeyAdd(Context& ctx, const ParsedArgs& args);
int CmdKeyRemove(Context& ctx, const ParsedArgs& args);

// A finished backup.
struct BackupRun {
  vmbackup::BackupInfo info;
  double seconds = 0;  // wall time of the job (Start to end of Wait)
};

// A finished restore.
struct RestoreRun {
  vmbackup::BackupInfo backup;
  std::vector<vmbackup::VolumeDestination> destinations;
  std::string dest_dir;
  double seconds = 0;
  uint64_t bytes_written = 0;
};

// Runs a backup with the context's progress display; SIGINT/SIGTERM cancel it.
vmbackup::StatusOr<BackupRun> RunBackupJob(Context& ctx,
                                           const std::shared_ptr<vmbackup::BackupTarget>& target,
                                           vmbackup::BackupSpec spec);
// Runs a restore likewise.
vmbackup::StatusOr<RestoreRun> RunRestorePlan(Context& ctx,
                                              const std::shared_ptr<vmbackup::BackupTarget>& target,
                                              vmbackup::RestoreSpec spec);

// Reads a dirty-map file (JSON object: volume name -> [[offset, length], ...] or
// [{"offset": o, "length": l}, ...]) into the matching volumes of `spec`.
// kInvalidArgument for malformed files or unknown volume names; kNotFound if the file is missing.
vmbackup::Status ApplyDirtyMap(const std::string& file, vmbackup::BackupSpec* spec);

// Human-readable summaries and JSON documents of the results.
std::string BackupSummary(const BackupRun& run);
nlohmann::json BackupRunJson(const BackupRun& run);
std::string RestoreSummary(const RestoreRun& run);
nlohmann::json RestoreRunJson(const RestoreRun& run);

}  // namespace vmbackupctl

#endif  // VMBACKUP_TOOLS_COMMANDS_H_
