// vmbackupctl forget and gc: retention and garbage collection (docs/vmbackupctl.md).
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "cancel.h"
#include "commands.h"

namespace vmbackupctl {
namespace {

using vmbackup::Status;
using vmbackup::StatusOr;

// "90", "90s", "30m", "24h", "7d" → seconds; nullopt when malformed.
std::optional<int64_t> ParseDuration(const std::string& s) {
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (end == s.c_str() || v < 0) return std::nullopt;
  const std::string unit(end);
  int64_t mult = 0;
  if (unit.empty() || unit == "s") mult = 1;
  if (unit == "m") mult = 60;
  if (unit == "h") mult = 3600;
  if (unit == "d") mult = 86400;
  if (mult == 0 || v > (int64_t{1} << 40)) return std::nullopt;
  return static_cast<int64_t>(v) * mult;
}

std::optional<int> ParseCount(const std::string& s) {
  char* end = nullptr;
  const long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v < 0 || v > 1000000) return std::nullopt;
  return static_cast<int>(v);
}

// Fills `o` from --grace / --lease-expiry / --dry-run; a usage error's exit code otherwise.
std::optional<int> GcOptionsFromArgs(Context& ctx, const ParsedArgs& args, const char* command,
                                     vmbackup::GcOptions* o) {
  for (const auto& [flag, field] : {std::pair{"grace", &o->grace_seconds},
                                    std::pair{"lease-expiry", &o->lease_expiry_seconds}}) {
    if (auto v = args.Get(flag)) {
      auto d = ParseDuration(*v);
      if (!d)
        return ctx.UsageError(std::string(command) + ": --" + flag +
                                  " expects a duration like 0, 90s, 30m, 24h or 7d, got '" + *v +
                                  "'",
                              command);
      *field = *d;
    }
  }
  for (const std::string& d : args.GetAll("restore-dir")) o->restore_dirs.push_back(d);
  o->repack = !args.Has("no-repack");
  if (auto v = args.Get("max-unused")) {
    std::string t = *v;
    if (!t.empty() && t.back() == '%') t.pop_back();
    char* end = nullptr;
    errno = 0;
    const long pct = t.empty() ? -1 : std::strtol(t.c_str(), &end, 10);
    if (t.empty() || errno != 0 || *end != '\0' || pct < 0 || pct > 100)
      return ctx.UsageError(std::string(command) +
                                ": --max-unused expects a percentage from 0 to 100 (like 10 or "
                                "10%), got '" +
                                *v + "'",
                            command);
    o->max_unused_percent = static_cast<int>(pct);
  }
  return std::nullopt;
}

nlohmann::json ForgetJson(const vmbackup::ForgetResult& r, bool dry_run) {
  nlohmann::json keep = nlohmann::json::array();
  for (const auto& k : r.decision.keep) keep.push_back({{"name", k.name}, {"reasons", k.reasons}});
  return {
      {"dry_run", dry_run}, {"keep", keep}, {"forget", r.decision.forget}, {"deleted", r.deleted}};
}

// Runs GC with a plain progress line per phase on stderr (unless quiet, --json or no progress);
// SIGINT/SIGTERM stop it after the current step.
StatusOr<vmbackup::GcReport> RunGc(Context& ctx, vmbackup::BackupTarget& target,
                                   vmbackup::GcOptions o) {
  const bool show =
      !ctx.options.quiet && !ctx.options.json && ctx.options.progress != ProgressMode::kNone;
  std::string last_phase;
  std::atomic<bool> stop{false};
  o.progress = [&](const vmbackup::GcProgress& p) {
    if (show && p.phase != last_phase) {
      std::cerr << "gc: " << p.phase << "\n";
      last_phase = p.phase;
    }
    return !stop.load();
  };
  CancelScope cancel([&stop] { stop = true; });
  return target.CollectGarbage(o);
}

void PrintGcReport(const vmbackup::GcReport& r) {
  std::cout << (r.dry_run ? "Garbage collection (dry run: nothing deleted)\n"
                          : "Garbage collection run " + r.run + "\n");
  std::cout << FormatTable({
      {"what", "count", "bytes"},
      {"backups", std::to_string(r.backups), "-"},
      {"packs", std::to_string(r.packs), FormatBytes(r.pack_bytes)},
      {"dead packs", std::to_string(r.dead_packs), FormatBytes(r.dead_pack_bytes)},
      {"partly live packs", std::to_string(r.partly_live_packs),
       FormatBytes(r.dead_bytes_in_partly_live_packs) + " dead"},
      {"chosen to repack (--max-unused)", std::to_string(r.repack_candidates), "-"},
      {"packs repacked", std::to_string(r.packs_repacked), FormatBytes(r.bytes_repacked) + " new"},
      {"new candidates (wait for the grace)", std::to_string(r.new_candidates), "-"},
      {"pack indexes deleted", std::to_string(r.indexes_deleted), "-"},
      {"packs deleted", std::to_string(r.packs_deleted), "-"},
      {"orphan packs deleted", std::to_string(r.orphan_packs_deleted), "-"},
      {"temporaries deleted", std::to_string(r.temporaries_deleted), "-"},
      {"restore leftovers deleted", std::to_string(r.restore_partials_deleted), "-"},
      {"indexes restored (live again)", std::to_string(r.indexes_restored), "-"},
      {"postponed by leases", std::to_string(r.packs_leased), "-"},
      {"active / expired leases",
       std::to_string(r.leases_active) + " / " + std::to_string(r.leases_expired), "-"},
  });
  std::cout << (r.dry_run ? "Would free now: " : "Freed: ") << FormatBytes(r.bytes_deleted)
            << "; reclaimable once the grace has passed: " << FormatBytes(r.reclaimable_bytes)
            << "\n";
}

int GcExit(Context& ctx, const vmbackup::GcReport& r) {
  for (const auto& d : r.damaged) ctx.Warn("damaged: " + d);
  return r.damaged.empty() ? kExitOk : kExitDamageFound;
}

}  // namespace

int CmdForget(Context& ctx, const ParsedArgs& args) {
  if (!args.positionals().empty()) return ctx.UsageError("forget: takes no arguments", "forget");
  vmbackup::RetentionPolicy policy;
  for (const auto& [flag, field] :
       {std::pair{"keep-last", &policy.keep_last}, std::pair{"keep-hourly", &policy.keep_hourly},
        std::pair{"keep-daily", &policy.keep_daily}, std::pair{"keep-weekly", &policy.keep_weekly},
        std::pair{"keep-monthly", &policy.keep_monthly},
        std::pair{"keep-yearly", &policy.keep_yearly}}) {
    if (auto v = args.Get(flag)) {
      auto n = ParseCount(*v);
      if (!n)
        return ctx.UsageError(
            std::string("forget: --") + flag + " expects a count >= 0, got '" + *v + "'", "forget");
      *field = *n;
    }
  }
  if (policy.keep_last + policy.keep_hourly + policy.keep_daily + policy.keep_weekly +
          policy.keep_monthly + policy.keep_yearly ==
      0)
    return ctx.UsageError("forget: give at least one --keep-* count above 0", "forget");
  vmbackup::ForgetOptions fo;
  fo.vm_name = args.Get("vm-name").value_or("");
  fo.vm_namespace = args.Get("vm-namespace").value_or("");
  fo.dry_run = args.Has("dry-run");
  vmbackup::GcOptions go;
  go.dry_run = fo.dry_run;
  if (auto code = GcOptionsFromArgs(ctx, args, "forget", &go)) return *code;
  if (args.Has("grace") && !args.Has("prune"))
    return ctx.UsageError("forget: --grace needs --prune", "forget");
  auto target = OpenTarget(ctx, args.Get("target"));
  if (!target.ok()) return ctx.Fail(target.status(), "open target");
  StatusOr<vmbackup::ForgetResult> r = (*target)->Forget(policy, fo);
  if (!r.ok()) return ctx.Fail(r.status(), "forget");
  std::optional<vmbackup::GcReport> gc;
  if (args.Has("prune")) {
    auto g = RunGc(ctx, **target, go);
    if (!g.ok()) return ctx.Fail(g.status(), "gc after forget");
    gc = std::move(*g);
  }
  if (ctx.options.json) {
    nlohmann::json doc = ForgetJson(*r, fo.dry_run);
    if (gc) doc["gc"] = nlohmann::json::parse(vmbackup::GcReportToJson(*gc));
    ctx.PrintJson(doc);
  } else if (!ctx.options.quiet) {
    std::vector<std::vector<std::string>> rows = {{"backup", "action", "reasons"}};
    for (const auto& k : r->decision.keep) {
      std::string reasons;
      for (const auto& x : k.reasons) reasons += (reasons.empty() ? "" : ",") + x;
      rows.push_back({k.name, "keep", reasons});
    }
    for (const auto& f : r->decision.forget)
      rows.push_back({f, fo.dry_run ? "would forget" : "forgotten", "-"});
    std::cout << FormatTable(rows);
    std::cout << (fo.dry_run ? "Dry run: nothing deleted; " : "") << r->decision.keep.size()
              << " kept, " << r->decision.forget.size()
              << (fo.dry_run ? " would be forgotten\n" : " forgotten\n");
    if (gc) PrintGcReport(*gc);
  }
  return gc ? GcExit(ctx, *gc) : kExitOk;
}

int CmdGc(Context& ctx, const ParsedArgs& args) {
  if (!args.positionals().empty()) return ctx.UsageError("gc: takes no arguments", "gc");
  vmbackup::GcOptions o;
  o.dry_run = args.Has("dry-run");
  if (auto code = GcOptionsFromArgs(ctx, args, "gc", &o)) return *code;
  auto target = OpenTarget(ctx, args.Get("target"));
  if (!target.ok()) return ctx.Fail(target.status(), "open target");
  auto r = RunGc(ctx, **target, o);
  if (!r.ok()) return ctx.Fail(r.status(), "gc");
  if (ctx.options.json) {
    ctx.PrintJson(nlohmann::json::parse(vmbackup::GcReportToJson(*r)));
  } else if (!ctx.options.quiet) {
    PrintGcReport(*r);
  }
  return GcExit(ctx, *r);
}

// ---- keys ---------------------------------------------------------------------------------------

namespace {
// Host names and labels come from the target: control characters never reach the terminal.
std::string Printable(std::string s) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return s;
}
}  // namespace

int CmdKeyList(Context& ctx, const ParsedArgs& args) {
  if (!args.positionals().empty())
    return ctx.UsageError("key list: unexpected argument '" + args.positionals()[0] + "'",
                          "key list");
  auto target = OpenTarget(ctx, args.Get("target"));
  if (!target.ok()) return ctx.Fail(target.status(), "open target");
  std::vector<std::string> damaged;
  auto keys = (*target)->ListKeys(&damaged);
  if (!keys.ok()) return ctx.Fail(keys.status());
  for (const auto& d : damaged) ctx.Warn("damaged key slot: " + d);
  if (ctx.options.json) {
    ctx.PrintJson(nlohmann::json::parse(vmbackup::KeyListToJson(*keys, damaged)));
    return kExitOk;
  }
  if (ctx.options.quiet) return kExitOk;
  std::printf("%-2s %-16s %-10s %-24s %-20s %s\n", "", "ID", "KIND", "CREATED", "HOST", "LABEL");
  for (const auto& k : *keys)
    std::printf("%-2s %-16s %-10s %-24s %-20s %s\n", k.current ? "*" : "", k.id.c_str(),
                k.kind.c_str(), Printable(k.created_at).c_str(), Printable(k.host).c_str(),
                Printable(k.label).c_str());
  return kExitOk;
}

int CmdKeyAdd(Context& ctx, const ParsedArgs& args) {
  if (!args.positionals().empty())
    return ctx.UsageError("key add: unexpected argument '" + args.positionals()[0] + "'",
                          "key add");
  auto pass_file = args.Get("new-passphrase-file");
  auto key_file = args.Get("new-key-file");
  if (pass_file.has_value() == key_file.has_value())
    return ctx.UsageError("key add: give exactly one of --new-passphrase-file and --new-key-file",
                          "key add");
  vmbackup::NewKey k;
  auto secret = ReadSecretFile(pass_file ? *pass_file : *key_file, key_file.has_value());
  if (!secret.ok()) return ctx.Fail(secret.status());
  (key_file ? k.raw_key : k.passphrase) = std::move(*secret);
  if (auto l = args.Get("label")) k.label = *l;
  auto target = OpenTarget(ctx, args.Get("target"));
  if (!target.ok()) return ctx.Fail(target.status(), "open target");
  auto id = (*target)->AddKey(k);
  if (!id.ok()) return ctx.Fail(id.status());
  if (ctx.options.json) {
    ctx.PrintJson({{"added", *id}});
  } else {
    ctx.Info("Added key slot " + *id);
  }
  return kExitOk;
}

int CmdKeyRemove(Context& ctx, const ParsedArgs& args) {
  if (args.positionals().size() != 1)
    return ctx.UsageError("key remove: expected exactly one key slot id", "key remove");
  const std::string id = args.positionals()[0];
  auto target = OpenTarget(ctx, args.Get("target"));
  if (!target.ok()) return ctx.Fail(target.status(), "open target");
  Status st = (*target)->RemoveKey(id);
  if (!st.ok()) return ctx.Fail(st);
  if (ctx.options.json) {
    ctx.PrintJson({{"removed", id}});
  } else {
    ctx.Info("Removed key slot " + id);
  }
  return kExitOk;
}

}  // namespace vmbackupctl
