// Progress display for backup and restore jobs on stderr.
//
// kBar redraws one line in place (percent, bytes scanned / total, rate, ETA, and for backups new vs
// reused bytes); kPlain prints one line every few seconds (for logs); kNone prints nothing. kAuto
// picks kBar when stderr is a terminal and kNone otherwise.
//
// Thread-safety: the callback returned by Callback() may run on a library thread while the owner
// calls Finish(); both are serialized by an internal mutex. The reporter must outlive the job.
#ifndef VMBACKUP_TOOLS_PROGRESS_H_
#define VMBACKUP_TOOLS_PROGRESS_H_

#include <mutex>
#include <string>

#include "cli.h"
#include "vmbackup/options.h"

namespace vmbackupctl {

class ProgressReporter {
 public:
  enum class Kind { kBackup, kRestore };

  // `label` prefixes every line ("backup demo-vm-1").
  ProgressReporter(ProgressMode mode, Kind kind, std::string label);
  ProgressReporter(const ProgressReporter&) = delete;
  ProgressReporter& operator=(const ProgressReporter&) = delete;

  // Whether anything is shown at all.
  bool enabled() const { return mode_ != ProgressMode::kNone; }
  // A callback for BackupSpec::progress / RestoreSpec::progress; always returns true (cancellation
  // goes through Cancel()). Empty when !enabled().
  vmbackup::ProgressCallback Callback();
  // Ends the display: clears the bar line. Safe to call more than once.
  void Finish();
  // Replaces the label (e.g. once a generated backup name is known).
  void set_label(std::string label);

 private:
  void Report(const vmbackup::Progress& p);
  std::string Line(const vmbackup::Progress& p, int width) const;

  ProgressMode mode_;
  Kind kind_;
  std::string label_;
  std::mutex mu_;
  bool drawn_ = false;  // a bar line is on screen
  bool finished_ = false;
  double last_plain_ = -1e9;  // monotonic time of the last plain line
};

// Resolves kAuto against stderr (isatty). --quiet and --json force kNone unless the mode was set
// explicitly with --progress.
ProgressMode EffectiveProgressMode(const GlobalOptions& options, bool explicit_mode);

}  // namespace vmbackupctl

#endif  // VMBACKUP_TOOLS_PROGRESS_H_
