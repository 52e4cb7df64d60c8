// A small command-line parser for vmbackupctl.
//
// Grammar: `vmbackupctl [global flags] <command> [<subcommand>] [flags] [arguments]`. Flags are
// long options (`--name value` or `--name=value`; boolean flags take no value), `-h` is `--help`,
// and `--` ends the flags. Global flags may appear before or after the command; command flags only
// after it. Not thread-safe (used from main only).
#ifndef VMBACKUP_TOOLS_ARGS_H_
#define VMBACKUP_TOOLS_ARGS_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace vmbackupctl {

// Declares one long flag.
struct FlagDef {
  std::string name;  // without the leading "--"
  bool has_value = false;
  bool repeated = false;  // may be given several times (values are collected in order)
  std::string metavar;    // placeholder shown in help ("N", "DIR"); only for has_value flags
  std::string help;       // one line
};

// The result of parsing.
class ParsedArgs {
 public:
  // True if the flag was given (with or without a value).
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  // The last value of a flag, or nullopt if it was not given.
  std::optional<std::string> Get(const std::string& name) const;
  // All values of a repeated flag, in order (empty if not given).
  std::vector<std::string> GetAll(const std::string& name) const;
  const std::vector<std::string>& positionals() const { return positionals_; }

  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positionals_;
};

// Parses `args` (without the program name or command words) against `flags`. Returns an error
// message for an unknown flag, a missing value, a value given to a boolean flag, or a non-repeated
// flag given twice; nullopt on success.
std::optional<std::string> ParseFlags(const std::vector<std::string>& args,
                                      const std::vector<FlagDef>& flags, ParsedArgs* out);

// Formats the flag list for help output, one flag per line, aligned.
std::string FormatFlagHelp(const std::vector<FlagDef>& flags);

}  // namespace vmbackupctl

#endif  // VMBACKUP_TOOLS_ARGS_H_
