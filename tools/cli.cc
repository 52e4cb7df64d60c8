#include "cli.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

namespace vmbackupctl {

using vmbackup::StatusCode;

int ExitCodeFor(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return kExitOk;
    case StatusCode::kCancelled:
      return kExitCancelled;
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      return kExitInvalidArgument;
    case StatusCode::kNotFound:
      return kExitNotFound;
    case StatusCode::kAlreadyExists:
      return kExitAlreadyExists;
    case StatusCode::kPermissionDenied:
    case StatusCode::kUnauthenticated:
      return kExitPermissionDenied;
    case StatusCode::kResourceExhausted:
      return kExitResourceExhausted;
    case StatusCode::kUnavailable:
    case StatusCode::kDeadlineExceeded:
      return kExitUnavailable;
    case StatusCode::kDataLoss:
      return kExitDataLoss;
    case StatusCode::kFailedPrecondition:
      return kExitFailedPrecondition;
    case StatusCode::kAborted:
      return kExitAborted;
    case StatusCode::kUnimplemented:
      return kExitUnimplemented;
    case StatusCode::kUnknown:
    case StatusCode::kInternal:
      return kExitFailure;
  }
  return kExitFailure;
}

std::string ExitCodeHelp() {
  return "Exit codes:\n"
         "   0  success\n"
         "   1  internal or unknown error; a failed demo check\n"
         "   2  usage error (bad command line)\n"
         "   3  invalid argument or configuration\n"
         "   4  not found (backup, volume, target, parent)\n"
         "   5  already exists (backup name, destination file)\n"
         "   6  permission denied\n"
         "   7  resource exhausted (target or destination full)\n"
         "   8  unavailable (target unreachable or timed out; retry later)\n"
         "   9  data loss (corrupt data on the target; restored data did not verify)\n"
         "  10  cancelled (SIGINT/SIGTERM)\n"
         "  11  failed precondition\n"
         "  12  aborted (concurrent change; retry)\n"
         "  13  unimplemented (not supported by this build)\n"
         "  14  damage found (verify; repair: backups that stay unrestorable, or a failed "
         "repair; gc: damaged objects, nothing deleted)\n";
}

nlohmann::json ErrorJson(const std::string& code, const std::string& message, int exit_code,
                         bool retryable) {
  return {
      {"error",
       {{"code", code}, {"message", message}, {"exit_code", exit_code}, {"retryable", retryable}}}};
}

int Context::Fail(const vmbackup::Status& status, const std::string& context) {
  vmbackup::Status s = context.empty() ? status : status.WithContext(context);
  int code = ExitCodeFor(s.code());
  if (options.json) {
    PrintJson(ErrorJson(vmbackup::StatusCodeName(s.code()), s.message(), code, s.retryable()));
  } else {
    std::cerr << "vmbackupctl: error: " << s.ToString() << std::endl;
  }
  return code;
}

int Context::UsageError(const std::string& message, const std::string& help_command) {
  if (options.json) {
    PrintJson(ErrorJson("USAGE", message, kExitUsage, false));
  } else {
    std::cerr << "vmbackupctl: " << message << "\n"
              << "Run 'vmbackupctl " << (help_command.empty() ? "" : help_command + " ")
              << "--help' for usage." << std::endl;
  }
  return kExitUsage;
}

void Context::PrintJson(const nlohmann::json& doc) {
  std::cout << doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
}

void Context::Info(const std::string& line) {
  if (options.quiet || options.json) return;
  std::cout << line << std::endl;
}

void Context::Warn(const std::string& line) {
  if (options.quiet) return;
  std::cerr << "vmbackupctl: warning: " << line << std::endl;
}

vmbackup::StatusOr<std::string> ResolveTargetConfig(const std::optional<std::string>& arg) {
  std::string value;
  if (arg.has_value()) {
    value = *arg;
  } else if (const char* env = std::getenv("VMBACKUP_TARGET"); env != nullptr && *env != '\0') {
    value = env;
  } else {
    return vmbackup::InvalidArgumentError(
        "no backup target: pass --target CONFIG or set VMBACKUP_TARGET");
  }
  size_t first = value.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return vmbackup::InvalidArgumentError("empty --target value");
  if (value[first] == '{') return value;
  if (value[0] == '@') {
    std::string path = value.substr(1);
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      return vmbackup::InvalidArgumentError("cannot read target configuration file '" + path + "'");
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(value, ec);
  if (ec) abs = value;
  nlohmann::json doc = {{"type", "file"}, {"endpoint", abs.lexically_normal().string()}};
  return doc.dump();
}

vmbackup::StatusOr<std::string> ReadSecretFile(const std::string& path, bool raw_key) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return vmbackup::InvalidArgumentError("cannot read '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (!raw_key) {
    if (!s.empty() && s.back() == '\n') s.pop_back();
    if (!s.empty() && s.back() == '\r') s.pop_back();
    if (s.empty()) return vmbackup::InvalidArgumentError("passphrase file '" + path + "' is empty");
    return s;
  }
  if (s.size() == 32) return s;
  const size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  std::string hex = b == std::string::npos ? "" : s.substr(b, e - b + 1);
  if (hex.size() == 64 && hex.find_first_not_of("0123456789abcdefABCDEF") == std::string::npos) {
    std::string key(32, '\0');
    for (size_t i = 0; i < 32; ++i)
      key[i] = static_cast<char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
    return key;
  }
  return vmbackup::InvalidArgumentError("key file '" + path +
                                        "' holds neither 32 raw bytes nor 64 hex characters");
}

vmbackup::StatusOr<std::shared_ptr<vmbackup::BackupTarget>> OpenTarget(
    Context& ctx, const std::optional<std::string>& arg) {
  vmbackup::StatusOr<std::string> config = ResolveTargetConfig(arg);
  if (!config.ok()) return config.status();
  vmbackup::TargetOptions options;
  options.state_dir = ctx.options.state_dir;
  options.encryption = ctx.options.encryption;
  if (!ctx.options.key_file.empty()) {
    auto key = ReadSecretFile(ctx.options.key_file, true);
    if (!key.ok()) return key.status();
    options.raw_key = std::move(*key);
  }
  if (!ctx.options.passphrase_file.empty()) {
    auto pass = ReadSecretFile(ctx.options.passphrase_file, false);
    if (!pass.ok()) return pass.status();
    options.passphrase = std::move(*pass);
  } else if (const char* env = std::getenv("VMBACKUP_PASSPHRASE");
             env != nullptr && options.raw_key.empty()) {
    // Set but empty is an error, never "no passphrase" (that would open an unencrypted
    // repository and write plaintext to it).
    if (*env == '\0')
      return vmbackup::InvalidArgumentError("$VMBACKUP_PASSPHRASE is set but empty");
    options.passphrase = env;
  }
  if (ctx.options.threads > 0 || ctx.options.in_flight_mib > 0) {
    if (!ctx.runtime) {
      vmbackup::RuntimeOptions ro;
      ro.worker_threads = ctx.options.threads;
      // The runtime's bound (shared by its backups) must not be below the one backup's.
      ro.max_in_flight_bytes = ctx.options.in_flight_mib << 20;
      ctx.runtime = vmbackup::Runtime::Create(ro);
    }
    options.runtime = ctx.runtime;
  }
  // A new repository's encryption is a choice the user makes explicitly: without --encryption,
  // only an existing repository is opened.
  if (options.encryption.empty()) {
    options.create_if_missing = false;
    auto t = vmbackup::BackupTarget::Open(*config, options);
    if (!t.ok() && t.status().code() == vmbackup::StatusCode::kNotFound &&
        t.status().message().find("no vmbackup repository") != std::string::npos)
      return vmbackup::InvalidArgumentError(
          t.status().message() +
          ": choose the new repository's encryption with --encryption aes-256-gcm (and "
          "--passphrase-file FILE, --key-file FILE or $VMBACKUP_PASSPHRASE) or --encryption none "
          "(or set VMBACKUP_ENCRYPTION)");
    return t;
  }
  return vmbackup::BackupTarget::Open(*config, options);
}

bool ParseNameEqPath(const std::string& arg, std::string* name, std::string* path) {
  size_t eq = arg.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == arg.size()) return false;
  *name = arg.substr(0, eq);
  *path = arg.substr(eq + 1);
  return true;
}

std::string FormatBytes(uint64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = static_cast<double>(bytes);
  int unit = 0;
  while (v >= 1024.0 && unit < 6) {
    v /= 1024.0;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), v < 10 ? "%.2f %s" : (v < 100 ? "%.1f %s" : "%.0f %s"), v,
                kUnits[unit]);
  return buf;
}

std::string FormatRate(double bytes_per_second) {
  if (!(bytes_per_second > 0) || !std::isfinite(bytes_per_second)) return "- B/s";
  return FormatBytes(static_cast<uint64_t>(bytes_per_second)) + "/s";
}

std::string FormatDuration(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds)) return "-";
  char buf[48];
  if (seconds < 60) {
    std::snprintf(buf, sizeof(buf), "%.2f s", seconds);
    return buf;
  }
  uint64_t s = static_cast<uint64_t>(seconds + 0.5);
  if (s < 3600) {
    std::snprintf(buf, sizeof(buf), "%um%02us", static_cast<unsigned>(s / 60),
                  static_cast<unsigned>(s % 60));
  } else {
    std::snprintf(buf, sizeof(buf), "%uh%02um%02us", static_cast<unsigned>(s / 3600),
                  static_cast<unsigned>(s / 60 % 60), static_cast<unsigned>(s % 60));
  }
  return buf;
}

std::string FormatRatio(double numerator, double denominator) {
  if (!(denominator > 0)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2fx", numerator / denominator);
  return buf;
}

double MonotonicSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::optional<double> DedupRatio(const vmbackup::BackupInfo& info) {
  if (info.bytes_new == 0) return std::nullopt;
  return static_cast<double>(info.bytes_new + info.bytes_reused) /
         static_cast<double>(info.bytes_new);
}

std::optional<double> CompressionRatio(const vmbackup::BackupInfo& info) {
  if (info.bytes_stored == 0) return std::nullopt;
  return static_cast<double>(info.bytes_new) / static_cast<double>(info.bytes_stored);
}

nlohmann::json ToJson(const vmbackup::BackupInfo& info) {
  // The library's one JSON form of a backup, plus the two ratios the tool derives.
  nlohmann::json doc = nlohmann::json::parse(vmbackup::BackupInfoToJson(info));
  std::optional<double> dedup = DedupRatio(info);
  std::optional<double> compression = CompressionRatio(info);
  doc["dedup_ratio"] = dedup ? nlohmann::json(*dedup) : nlohmann::json(nullptr);
  doc["compression_ratio"] = compression ? nlohmann::json(*compression) : nlohmann::json(nullptr);
  return doc;
}

std::string FormatTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line.append(width[i] - row[i].size() + 2, ' ');
    }
    out += line + "\n";
  }
  return out;
}

}  // namespace vmbackupctl
