// Shared pieces of vmbackupctl: exit codes, the per-invocation context (output mode, runtime),
// target configuration forms, human-readable formatting and JSON conversion of the public API's
// records. Not thread-safe unless a function says otherwise (vmbackupctl runs its commands on the
// main thread).
#ifndef VMBACKUP_TOOLS_CLI_H_
#define VMBACKUP_TOOLS_CLI_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "vmbackup/vmbackup.h"

namespace vmbackupctl {

// Process exit codes. Stable: scripts rely on them (documented in docs/vmbackupctl.md and --help).
enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,              // internal / unknown error, or a demo check that failed
  kExitUsage = 2,                // bad command line
  kExitInvalidArgument = 3,      // invalid argument or configuration (also out of range)
  kExitNotFound = 4,             // backup, volume, target directory or parent not found
  kExitAlreadyExists = 5,        // backup name or destination already exists
  kExitPermissionDenied = 6,     // permission denied (also unauthenticated)
  kExitResourceExhausted = 7,    // target or destination full
  kExitUnavailable = 8,          // target unreachable or timed out: retry later
  kExitDataLoss = 9,             // stored data is corrupt, or restored data did not verify
  kExitCancelled = 10,           // cancelled (SIGINT / SIGTERM)
  kExitFailedPrecondition = 11,  // system not in a state for the operation
  kExitAborted = 12,             // concurrency conflict: retry the whole command
  kExitUnimplemented = 13,       // not supported by this build (e.g. a target type)
  kExitDamageFound = 14,         // verify / repair: the target holds damaged backups
};

// Maps a library status code to the process exit code (kOk -> 0).
int ExitCodeFor(vmbackup::StatusCode code);

// The exit code table as help text.
std::string ExitCodeHelp();

enum class ProgressMode { kAuto, kBar, kPlain, kNone };

// Options that apply to every command.
struct GlobalOptions {
  bool json = false;
  bool quiet = false;
  int threads = 0;              // 0 = library default runtime
  uint64_t in_flight_mib = 0;   // 0 = the library's bounds on pack MiB being uploaded
  std::string state_dir;        // "" = the library's default (TargetOptions::state_dir)
  std::string encryption;       // --encryption / $VMBACKUP_ENCRYPTION ("" = not chosen)
  std::string passphrase_file;  // --passphrase-file ("" = $VMBACKUP_PASSPHRASE, if set)
  std::string key_file;         // --key-file: a raw 256-bit key (32 bytes or 64 hex)
  ProgressMode progress = ProgressMode::kAuto;
};

// Everything a command needs besides its own arguments.
// The secret in `path`: a passphrase file loses one trailing newline; a key file holds 32 raw
// bytes or 64 hex characters (surrounding whitespace ignored). kInvalidArgument naming the file
// when it cannot be read or holds no valid key.
vmbackup::StatusOr<std::string> ReadSecretFile(const std::string& path, bool raw_key);

struct Context {
  GlobalOptions options;
  // Created on first use when options.threads > 0; shared by all targets this invocation opens.
  std::shared_ptr<vmbackup::Runtime> runtime;

  // Prints `status` (stdout JSON in --json mode, else "vmbackupctl: error: ..." on stderr) and
  // returns its exit code. REQUIRES: !status.ok().
  int Fail(const vmbackup::Status& status, const std::string& context = "");
  // Prints a usage error and a hint to `help_command`; returns kExitUsage.
  int UsageError(const std::string& message, const std::string& help_command = "");
  // Prints a JSON document on stdout (one line per document is not required; pretty with indent 2).
  void PrintJson(const nlohmann::json& doc);
  // Informational line on stdout, suppressed by --quiet and --json.
  void Info(const std::string& line);
  // Warning on stderr, suppressed by --quiet (never by --json: stdout stays clean anyway).
  void Warn(const std::string& line);
};

// Resolves the --target argument (or $VMBACKUP_TARGET when `arg` is empty) into target setting
// JSON:
//   '{...}'     inline JSON
//   '@file'     JSON read from a file
//   otherwise   a directory path, shorthand for {"type":"file","endpoint":"<absolute path>"}.
// Returns kInvalidArgument when neither is given or the file cannot be read.
vmbackup::StatusOr<std::string> ResolveTargetConfig(const std::optional<std::string>& arg);

// Opens the target named by `arg` (see ResolveTargetConfig) with the context's runtime.
vmbackup::StatusOr<std::shared_ptr<vmbackup::BackupTarget>> OpenTarget(
    Context& ctx, const std::optional<std::string>& arg);

// Parses "name=path" (for --volume). Returns false if there is no '=' or either side is empty.
bool ParseNameEqPath(const std::string& arg, std::string* name, std::string* path);

// "1.50 GiB", "512 B".
std::string FormatBytes(uint64_t bytes);
// "12.3 MiB/s".
std::string FormatRate(double bytes_per_second);
// "0.84 s", "1m02s", "1h02m03s".
std::string FormatDuration(double seconds);
// "3.21x", or "-" when the denominator is zero.
std::string FormatRatio(double numerator, double denominator);
// Left-aligned text table, columns separated by two spaces; the first row is the header.
std::string FormatTable(const std::vector<std::vector<std::string>>& rows);
// Seconds since an arbitrary fixed point (monotonic).
double MonotonicSeconds();

// Dedup ratio of a backup: (new + reused) / new; nullopt when nothing was new.
std::optional<double> DedupRatio(const vmbackup::BackupInfo& info);
// Compression ratio: new / stored; nullopt when nothing was stored.
std::optional<double> CompressionRatio(const vmbackup::BackupInfo& info);

// JSON forms of the public records (schema in docs/vmbackupctl.md).
nlohmann::json ToJson(const vmbackup::BackupInfo& info);
nlohmann::json ErrorJson(const std::string& code, const std::string& message, int exit_code,
                         bool retryable);

}  // namespace vmbackupctl

#endif  // VMBACKUP_TOOLS_CLI_H_
