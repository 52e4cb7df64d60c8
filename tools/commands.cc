#include "commands.h"

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "cancel.h"
#include "progress.h"
#include "vm/dirty_map.h"

namespace vmbackupctl {
namespace {

using vmbackup::BackupInfo;
using vmbackup::Status;
using vmbackup::StatusOr;

// `path` made absolute and normalized (the restored vm.json records destination paths, and a path
// relative to the caller's working directory would mean nothing there). Empty stays empty.
std::string AbsolutePath(const std::string& path) {
  if (path.empty()) return path;
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(path, ec);
  return ec ? path : abs.lexically_normal().string();
}

std::string OrDash(const std::string& s) { return s.empty() ? "-" : s; }

std::string Ratio(std::optional<double> r) {
  if (!r) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2fx", *r);
  return buf;
}

std::string VmLabel(const BackupInfo& info) {
  if (info.vm_name.empty()) return "-";
  return info.vm_namespace.empty() ? info.vm_name : info.vm_namespace + "/" + info.vm_name;
}

// The backup name argument of show/restore/delete.
std::optional<std::string> OneName(Context& ctx, const ParsedArgs& args, const char* command,
                                   int* exit_code) {
  if (args.positionals().size() != 1) {
    *exit_code =
        ctx.UsageError(std::string(command) + ": expected exactly one backup name", command);
    return std::nullopt;
  }
  return args.positionals()[0];
}

}  // namespace

// ---- job runners
// ---------------------------------------------------------------------------------

StatusOr<BackupRun> RunBackupJob(Context& ctx,
                                 const std::shared_ptr<vmbackup::BackupTarget>& target,
                                 vmbackup::BackupSpec spec) {
  ProgressReporter reporter(ctx.options.progress, ProgressReporter::Kind::kBackup, "backup");
  if (reporter.enabled()) spec.progress = reporter.Callback();
  if (ctx.options.in_flight_mib > 0) spec.max_in_flight_bytes = ctx.options.in_flight_mib << 20;
  StatusOr<std::unique_ptr<vmbackup::BackupJob>> job = vmbackup::BackupJob::Create(target, spec);
  if (!job.ok()) return job.status();
  vmbackup::BackupJob& j = **job;
  reporter.set_label("backup " + j.name());
  double start = MonotonicSeconds();
  Status st;
  {
    CancelScope cancel([&j] { j.Cancel(); });
    st = j.Run();
  }
  double seconds = MonotonicSeconds() - start;
  reporter.Finish();
  if (!st.ok()) return st.WithContext("backup " + j.name());
  StatusOr<BackupInfo> info = j.result();
  if (!info.ok()) return info.status();
  BackupRun run;
  run.info = *std::move(info);
  run.seconds = seconds;
  return run;
}

StatusOr<RestoreRun> RunRestorePlan(Context& ctx,
                                    const std::shared_ptr<vmbackup::BackupTarget>& target,
                                    vmbackup::RestoreSpec spec) {
  ProgressReporter reporter(ctx.options.progress, ProgressReporter::Kind::kRestore,
                            "restore " + spec.backup);
  if (reporter.enabled()) spec.progress = reporter.Callback();
  std::string dest_dir = spec.dest_dir;
  StatusOr<std::unique_ptr<vmbackup::RestorePlan>> plan =
      vmbackup::RestorePlan::Create(target, std::move(spec));
  if (!plan.ok()) return plan.status();
  vmbackup::RestorePlan& p = **plan;
  double start = MonotonicSeconds();
  Status st;
  {
    CancelScope cancel([&p] { p.Cancel(); });
    st = p.Run();
  }
  double seconds = MonotonicSeconds() - start;
  reporter.Finish();
  if (!st.ok()) return st.WithContext("restore " + p.backup().name);
  RestoreRun run;
  run.backup = p.backup();
  run.destinations = p.destinations();
  run.dest_dir = dest_dir;
  run.seconds = seconds;
  run.bytes_written = p.progress().bytes_written;
  return run;
}

Status ApplyDirtyMap(const std::string& file, vmbackup::BackupSpec* spec) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return vmbackup::NotFoundError("cannot read dirty map '" + file + "'");
  std::ostringstream text;
  text << in.rdbuf();
  const std::string what = "dirty map '" + file + "'";
  StatusOr<std::map<std::string, std::vector<vmbackup::Extent>>> map =
      vmbackup::internal::ParseDirtyMap(text.str(), what);
  if (!map.ok()) return map.status();
  for (auto& [name, extents] : *map) {
    auto vol = std::find_if(spec->volumes.begin(), spec->volumes.end(),
                            [&](const vmbackup::VolumeSource& v) { return v.name == name; });
    if (vol == spec->volumes.end()) {
      return vmbackup::InvalidArgumentError(what + ": unknown volume '" + name + "'");
    }
    vol->has_dirty_map = true;
    vol->dirty_ranges = std::move(extents);
  }
  return Status::Ok();
}

// ---- summaries
// -----------------------------------------------------------------------------------

std::string BackupSummary(const BackupRun& run) {
  const BackupInfo& i = run.info;
  std::vector<std::string> names;
  for (const auto& v : i.volumes) names.push_back(v.name);
  std::string vols;
  for (size_t k = 0; k < names.size(); ++k) vols += (k ? ", " : "") + names[k];
  std::ostringstream out;
  out << "Backup " << i.name << " " << i.state << "\n"
      << "  vm:            " << VmLabel(i) << "\n"
      << "  parent:        " << OrDash(i.parent) << "\n"
      << "  volumes:       " << i.volumes.size() << " (" << vols << ")\n"
      << "  time:          " << FormatDuration(run.seconds) << "\n"
      << "  bytes total:   " << FormatBytes(i.bytes_total) << " (logical)\n"
      << "  new:           " << FormatBytes(i.bytes_new) << "\n"
      << "  reused:        " << FormatBytes(i.bytes_reused) << "\n"
      << "  stored:        " << FormatBytes(i.bytes_stored) << " (after compression)\n"
      << "  dedup ratio:   "
      << (i.bytes_new ? Ratio(DedupRatio(i)) + " ((new + reused) / new)" : "- (nothing new)")
      << "\n"
      << "  compression:   "
      << (i.bytes_stored ? Ratio(CompressionRatio(i)) + " (new / stored)" : "- (nothing stored)")
      << "\n"
      << "  throughput:    "
      << FormatRate(run.seconds > 0 ? static_cast<double>(i.bytes_total) / run.seconds : 0) << "\n";
  return out.str();
}

nlohmann::json BackupRunJson(const BackupRun& run) {
  return {{"backup", ToJson(run.info)},
          {"seconds", run.seconds},
          {"throughput_bytes_per_second",
           run.seconds > 0 ? static_cast<double>(run.info.bytes_total) / run.seconds : 0.0}};
}

std::string RestoreSummary(const RestoreRun& run) {
  std::ostringstream out;
  out << "Restored backup " << run.backup.name << "\n"
      << "  time:          " << FormatDuration(run.seconds) << "\n"
      << "  bytes total:   " << FormatBytes(run.backup.bytes_total) << " (logical)\n"
      << "  bytes written: " << FormatBytes(run.bytes_written) << "\n"
      << "  throughput:    "
      << FormatRate(run.seconds > 0 ? static_cast<double>(run.backup.bytes_total) / run.seconds : 0)
      << "\n";
  if (!run.dest_dir.empty()) {
    out << "  vm metadata:   " << (std::filesystem::path(run.dest_dir) / "vm.json").string()
        << "\n";
  }
  out << "  destinations:\n";
  for (const auto& d : run.destinations) out << "    " << d.volume << " -> " << d.path << "\n";
  return out.str();
}

nlohmann::json RestoreRunJson(const RestoreRun& run) {
  nlohmann::json dests = nlohmann::json::array();
  for (const auto& d : run.destinations) dests.push_back({{"volume", d.volume}, {"path", d.path}});
  nlohmann::json vm_json = nullptr;
  if (!run.dest_dir.empty()) vm_json = (std::filesystem::path(run.dest_dir) / "vm.json").string();
  return {{"restore",
           {{"backup", run.backup.name},
            {"seconds", run.seconds},
            {"bytes_total", run.backup.bytes_total},
            {"bytes_written", run.bytes_written},
            {"throughput_bytes_per_second",
             run.seconds > 0 ? static_cast<double>(run.backup.bytes_total) / run.seconds : 0.0},
            {"dest_dir", run.dest_dir},
            {"vm_json", vm_json},
            {"destinations", std::move(dests)}}}};
}

// ---- commands
// ------------------------------------------------------------------------------------

int CmdTargetTest(Context& ctx, const ParsedArgs& args) {
  if (!args.positionals().empty()) {
    return ctx.UsageError("target test: unexpected argument '" + args.positionals()[0] + "'",
                          "target test");
  }
  auto target = OpenTarget(ctx, args.Get("target"));
  if (!target.ok()) return ctx.Fail(target.status(), "open target");
  Status st = (*target)->Test();
  if (!st.ok()) return ctx.Fail(st, "target test");
  const auto& t = **target;
  if (ctx.options.json) {
    nlohmann::json config = nlohmann::json::parse(t.config().ToRedactedJson(), nullptr, false);
    ctx.PrintJson({{"ok", true},
                   {"target", config.is_discarded() ? nlohmann::json(nullptr) : config},
                   {"repository_id", t.repository_id()},
                   {"block_size", t.block_size()}});
  } else {
    ctx.Info("Target OK: " + t.config().ToRedactedJson() + "\n  repository: " + t.repository_id() +
             "\n  block size: " + FormatBytes(t.block_size()));
  }
  return kExitOk;
}

namespace {

// Runs a freeze or thaw command with /bin/sh; its output goes to this process's stdout/stderr.
// kFailedPrecondition when it cannot run or exits non-zero.
Status RunHookCommand(const char* what, const std::string& cmd) {
  std::fflush(nullptr);
  const int rc = std::system(cmd.c_str());
  if (rc == -1)
    return vmbackup::FailedPreconditionError(std::string("cannot run the ") + what + " command");
  if (WIFEXITED(rc) && WEXITSTATUS(rc) == 0) return Status::Ok();
  return vmbackup::FailedPreconditionError(
      std::string("the ") + what + " command '" + cmd + "' " +
      (WIFEXITED(rc) ? "exited " + std::to_string(WEXITSTATUS(rc))
                     : "was killed by signal " + std::to_string(WTERMSIG(rc))));
}

}  // namespace

int CmdBackup(Context& ctx, const ParsedArgs& args) {
  if (!args.positionals().empty()) {
    return ctx.UsageError("backup: unexpected argument '" + args.positionals()[0] + "'", "backup");
  }
  std::optional<std::string> vm_dir = args.Get("vm-dir");
  std::vector<std::string> volume_args = args.GetAll("volume");
  // --drive NODE[=NAME] with --qmp, --rbd [NAME=]POOL/IMAGE: volume locations in flag form.
  const std::vector<std::string> drives = args.GetAll("drive"), rbds = args.GetAll("rbd");
  if (args.Has("qmp") != !drives.empty())
    return ctx.UsageError("backup: --qmp SOCKET and --drive NODE go together", "backup");
  for (const char* f : {"nbd-socket", "scratch-dir"})
    if (args.Has(f) && drives.empty())
      return ctx.UsageError(std::string("backup: --") + f + " goes with --qmp and --drive",
                            "backup");
  for (const char* f : {"ceph-conf", "ceph-id"})
    if (args.Has(f) && rbds.empty())
      return ctx.UsageError(std::string("backup: --") + f + " goes with --rbd", "backup");
  for (const std::string& d : drives) {
    const size_t eq = d.find('=');
    const std::string node = d.substr(0, eq),
                      vol = eq == std::string::npos ? node : d.substr(eq + 1);
    std::string loc = "qemu:" + AbsolutePath(*args.Get("qmp")) + "?node=" + node;
    if (auto s = args.Get("nbd-socket")) loc += "&nbd=" + AbsolutePath(*s);
    if (auto s = args.Get("scratch-dir")) loc += "&scratch=" + AbsolutePath(*s);
    volume_args.push_back(vol + "=" + loc);
  }
  for (const std::string& r : rbds) {
    const size_t eq = r.find('=');
    const std::string spec = eq == std::string::npos ? r : r.substr(eq + 1);
    const std::string vol =
        eq == std::string::npos ? spec.substr(spec.find('/') + 1) : r.substr(0, eq);
    std::string loc = "rbd:" + spec;
    char sep = '?';
    if (auto c = args.Get("ceph-conf")) {
      loc += std::string(1, sep) + "conf=" + AbsolutePath(*c);
      sep = '&';
    }
    if (auto id = args.Get("ceph-id")) loc += std::string(1, sep) + "id=" + *id;
    volume_args.push_back(vol + "=" + loc);
  }
  if (vm_dir && !volume_args.empty()) {
    return ctx.UsageError("backup: give either --vm-dir or --volume/--drive/--rbd, not both",
                          "backup");
  }
  if (!vm_dir && volume_args.empty()) {
    return ctx.UsageError(
        "backup: --vm-dir DIR or at least one --volume NAME=LOCATION (or --qmp with --drive, or "
        "--rbd) is required",
        "backup");
  }
  if (vm_dir && (args.Has("vm-name") || args.Has("vm-namespace"))) {
    return ctx.UsageError(
        "backup: --vm-name and --vm-namespace go with --volume (--vm-dir's vm.json names the VM)",
        "backup");
  }
  vmbackup::BackupSpec spec;
  if (vm_dir) {
    StatusOr<vmbackup::BackupSpec> s = vmbackup::BackupSpecFromVmDirectory(*vm_dir);
    if (!s.ok()) return ctx.Fail(s.status(), "VM directory '" + *vm_dir + "'");
    spec = *std::move(s);
  } else {
    nlohmann::json volumes = nlohmann::json::array();
    for (const std::string& a : volume_args) {
      std::string vol, location;
      if (!ParseNameEqPath(a, &vol, &location)) {
        return ctx.UsageError("backup: --volume expects NAME=LOCATION, got '" + a + "'", "backup");
      }
      StatusOr<vmbackup::VolumeSource> v = vmbackup::ParseVolumeLocation(vol, location);
      if (!v.ok()) return ctx.UsageError("backup: " + v.status().message(), "backup");
      if (v->provider == vmbackup::VolumeProvider::kFile) {
        v->path = AbsolutePath(v->path);
        volumes.push_back({{"name", v->name}, {"path", v->path}});
      } else {
        volumes.push_back({{"name", v->name}, {"location", vmbackup::VolumeLocation(*v)}});
      }
      spec.volumes.push_back(*std::move(v));
    }
    nlohmann::json meta = {{"volumes", std::move(volumes)}};
    // The VM identity: backups of the same named VM use each other as fingerprint references;
    // unnamed ones never do (docs/FORMAT.md, "Block fingerprints").
    if (auto vm = args.Get("vm-name")) meta["name"] = *vm;
    if (auto ns = args.Get("vm-namespace")) meta["namespace"] = *ns;
    spec.vm_metadata_json = meta.dump();
  }
  if (auto name = args.Get("name")) spec.name = *name;
  if (auto parent = args.Get("parent")) spec.parent = *parent;
  if (args.Has("no-fingerprints")) spec.use_fingerprints = false;
  {
    const auto freeze = args.Get("freeze-cmd"), thaw = args.Get("thaw-cmd");
    if (freeze.has_value() != thaw.has_value())
      return ctx.UsageError("backup: --freeze-cmd and --thaw-cmd go together", "backup");
    if (args.Has("thaw-early") && !freeze)
      return ctx.UsageError("backup: --thaw-early needs --freeze-cmd and --thaw-cmd", "backup");
    if (freeze) {
      spec.snapshot.freeze = [cmd = *freeze]() { return RunHookCommand("freeze", cmd); };
      spec.snapshot.thaw = [cmd = *thaw]() { return RunHookCommand("thaw", cmd); };
      spec.snapshot.thaw_after_backup = !args.Has("thaw-early");
    }
    if (auto state = args.Get("vm-state")) {
      if (*state == "running")
        spec.snapshot.vm_state = vmbackup::SnapshotOptions::VmState::kRunning;
      else if (*state == "stopped")
        spec.snapshot.vm_state = vmbackup::SnapshotOptions::VmState::kStopped;
      else
        return ctx.UsageError("backup: --vm-state expects running or stopped, got '" + *state + "'",
                              "backup");
    }
    if (auto t = args.Get("freeze-timeout")) {
      char* end = nullptr;
      const double secs = std::strtod(t->c_str(), &end);
      if (t->empty() || *end != '\0' || !(secs >= 0 && secs <= 86400))
        return ctx.UsageError(
            "backup: --freeze-timeout expects seconds from 0 (none) to 86400, got '" + *t + "'",
            "backup");
      if (!freeze)
        return ctx.UsageError("backup: --freeze-timeout goes with --freeze-cmd", "backup");
      spec.snapshot.freeze_timeout_ms = static_cast<int>(std::ceil(secs * 1000));
    }
    if (args.Has("allow-inconsistent")) {
      if (spec.snapshot.vm_state != vmbackup::SnapshotOptions::VmState::kRunning)
        return ctx.UsageError("backup: --allow-inconsistent goes with --vm-state running",
                              "backup");
      spec.snapshot.allow_inconsistent = true;
    }
  }
  if (auto dirty = args.Get("dirty-map")) {
    Status st = ApplyDirtyMap(*dirty, &spec);
    if (!st.ok()) return ctx.Fail(st);
  }
  auto target = OpenTarget(ctx, args.Get("target"));
  if (!target.ok()) return ctx.Fail(target.status(), "open target");
  StatusOr<BackupRun> run = RunBackupJob(ctx, *target, std::move(spec));
  if (!run.ok()) return ctx.Fail(run.status());
  for (const auto& v : run->info.volumes)
    if (v.consistency == "unknown")
      ctx.Warn("warning: volume '" + v.name +
               "' was read directly (no reflink clone, no freeze for the whole backup): its "
               "consistency is unknown (--freeze-cmd/--thaw-cmd or --vm-state stopped say more)");
  if (ctx.options.json) {
    ctx.PrintJson(BackupRunJson(*run));
  } else if (ctx.options.quiet) {
    std::cout << run->info.name << std::endl;
  } else {
    std::cout << BackupSummary(*run);
  }
  return kExitOk;
}

int CmdList(Context& ctx, const ParsedArgs& args) {
  if (!args.positionals().empty()) {
    return ctx.UsageError("list: unexpected argument '" + args.positionals()[0] + "'", "list");
  }
  auto target = OpenTarget(ctx, args.Get("target"));
  if (!target.ok()) return ctx.Fail(target.status(), "open target");
  StatusOr<vmbackup::BackupList> list = (*target)->ListBackups();
  if (!list.ok()) return ctx.Fail(list.status(), "list backups");
  for (const std::string& d : list->damaged) ctx.Warn("damaged backup record: " + d);
  if (ctx.options.json) {
    nlohmann::json backups = nlohmann::json::array();
    for (const BackupInfo& b : list->backups) {
      nlohmann::json j = ToJson(b);
      j.erase("vm_metadata");  // `show` has it; keeps listings of many backups small
      backups.push_back(std::move(j));
    }
    ctx.PrintJson({{"backups", std::move(backups)}, {"damaged", list->damaged}});
    return kExitOk;
  }
  if (ctx.options.quiet) {
    for (const BackupInfo& b : list->backups) std::cout << b.name << "\n";
    std::cout.flush();
    return kExitOk;
  }
  if (list->backups.empty()) {
    std::cout << "No backups." << std::endl;
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "VM", "CREATED", "STATE", "SIZE", "NEW", "REUSED", "STORED", "PARENT"}};
  for (const BackupInfo& b : list->backups) {
    rows.push_back({b.name, VmLabel(b), b.created_at, b.state, FormatBytes(b.bytes_total),
                    FormatBytes(b.bytes_new), FormatBytes(b.bytes_reused),
                    FormatBytes(b.bytes_stored), OrDash(b.parent)});
  }
  std::cout << FormatTable(rows) << std::flush;
  return kExitOk;
}

int CmdShow(Context& ctx, const ParsedArgs& args) {
  int code = 0;
  std::optional<std::string> name = OneName(ctx, args, "show", &code);
  if (!name) return code;
  auto target = OpenTarget(ctx, args.Get("target"));
  if (!target.ok()) return ctx.Fail(target.status(), "open target");
  StatusOr<BackupInfo> info = (*target)->GetBackup(*name);
  if (!info.ok()) return ctx.Fail(info.status());
  if (ctx.options.json) {
    ctx.PrintJson({{"backup", ToJson(*info)}});
    return kExitOk;
  }
  const BackupInfo& i = *info;
  std::ostringstream out;
  out << "Backup:       " << i.name << "\n"
      << "State:        " << i.state << "\n"
      << "VM:           " << VmLabel(i) << "\n"
      << "Created:      " << i.created_at << "\n"
      << "Completed:    " << i.completed_at << "\n"
      << "Parent:       " << OrDash(i.parent) << "\n"
      << "Duration:     " << FormatDuration(i.seconds) << "\n"
      << "Frozen:       "
      << (i.freeze_seconds < 0 ? std::string("-")
                               : FormatDuration(i.freeze_seconds) + " (one window, all volumes)")
      << "\n"
      << "Size:         " << FormatBytes(i.bytes_total) << " (logical)\n"
      << "New:          " << FormatBytes(i.bytes_new) << "\n"
      << "Reused:       " << FormatBytes(i.bytes_reused) << "\n"
      << "Stored:       " << FormatBytes(i.bytes_stored) << " (after compression)\n"
      << "Dedup ratio:  " << Ratio(DedupRatio(i)) << "\n"
      << "Compression:  " << Ratio(CompressionRatio(i)) << "\n"
      << "Volumes:\n";
  std::vector<std::vector<std::string>> rows = {{"  NAME", "SIZE", "BLOCK", "DATA", "ZERO", "HOLE",
                                                 "NEW", "REUSED", "STORED", "PROVIDER", "SNAPSHOT",
                                                 "CONSISTENCY"}};
  std::string checkpoints;
  for (const auto& v : i.volumes) {
    rows.push_back({"  " + v.name, FormatBytes(v.size), FormatBytes(v.block_size),
                    std::to_string(v.data_blocks), std::to_string(v.zero_blocks),
                    std::to_string(v.hole_blocks), FormatBytes(v.bytes_new),
                    FormatBytes(v.bytes_reused), FormatBytes(v.bytes_stored), OrDash(v.provider),
                    OrDash(v.snapshot), OrDash(v.consistency)});
    if (!v.checkpoint.empty() || v.changed_bytes >= 0) {
      checkpoints += "  " + v.name + ": checkpoint " + OrDash(v.checkpoint);
      if (v.changed_bytes >= 0)
        checkpoints += ", " + FormatBytes(static_cast<uint64_t>(v.changed_bytes)) +
                       " changed since the parent's checkpoint";
      checkpoints += "\n";
    }
  }
  out << FormatTable(rows);
  if (!checkpoints.empty()) out << "Checkpoints:\n" << checkpoints;
  out << "VM metadata:  " << i.vm_metadata_json << "\n";
  std::cout << out.str() << std::flush;
  return kExitOk;
}

int CmdRestore(Context& ctx, const ParsedArgs& args) {
  int code = 0;
  std::optional<std::string> name = OneName(ctx, args, "restore", &code);
  if (!name) return code;
  vmbackup::RestoreSpec spec;
  spec.backup = *name;
  spec.dest_dir = AbsolutePath(args.Get("dest-dir").value_or(""));
  spec.new_vm_name = args.Get("new-name").value_or("");
  spec.overwrite = args.Has("overwrite");
  if (auto m = args.Get("mode")) {
    char* end = nullptr;
    const unsigned long mode = std::strtoul(m->c_str(), &end, 8);
    if (m->empty() || *end != '\0' || mode > 0777)
      return ctx.UsageError(
          "restore: --mode expects octal permissions up to 0777, got '" + *m + "'", "restore");
    spec.file_mode = static_cast<uint32_t>(mode);
  }
  for (const std::string& a : args.GetAll("volume")) {
    vmbackup::VolumeDestination d;
    if (!ParseNameEqPath(a, &d.volume, &d.path)) {
      return ctx.UsageError("restore: --volume expects NAME=PATH, got '" + a + "'", "restore");
    }
    d.path = AbsolutePath(d.path);
    spec.volumes.push_back(std::move(d));
  }
  if (spec.dest_dir.empty() && spec.volumes.empty()) {
    return ctx.UsageError("restore: --dest-dir DIR or --volume NAME=PATH is required", "restore");
  }
  auto target = OpenTarget(ctx, args.Get("target"));
  if (!target.ok()) return ctx.Fail(target.status(), "open target");
  // Create the destination directory; remove it again (only if still empty) when the restore fails.
  std::string created_dir;
  if (!spec.dest_dir.empty()) {
    std::error_code ec;
    if (!std::filesystem::exists(spec.dest_dir, ec)) {
      std::filesystem::create_directories(spec.dest_dir, ec);
      if (ec) {
        return ctx.Fail(vmbackup::PermissionDeniedError("cannot create destination directory '" +
                                                        spec.dest_dir + "': " + ec.message()));
      }
      created_dir = spec.dest_dir;
    }
  }
  StatusOr<RestoreRun> run = RunRestorePlan(ctx, *target, std::move(spec));
  if (!run.ok()) {
    if (!created_dir.empty()) {
      std::error_code ec;
      std::filesystem::remove(created_dir, ec);  // fails harmlessly when not empty
    }
    return ctx.Fail(run.status());
  }
  if (ctx.options.json) {
    ctx.PrintJson(RestoreRunJson(*run));
  } else if (!ctx.options.quiet) {
    std::cout << RestoreSummary(*run);
  }
  return kExitOk;
}

int CmdDelete(Context& ctx, const ParsedArgs& args) {
  int code = 0;
  std::optional<std::string> name = OneName(ctx, args, "delete", &code);
  if (!name) return code;
  auto target = OpenTarget(ctx, args.Get("target"));
  if (!target.ok()) return ctx.Fail(target.status(), "open target");
  Status st = (*target)->DeleteBackup(*name);
  if (!st.ok()) return ctx.Fail(st);
  if (ctx.options.json) {
    ctx.PrintJson({{"deleted", *name}});
  } else {
    ctx.Info("Deleted backup " + *name +
             " (blocks no other backup uses stay until garbage collection)");
  }
  return kExitOk;
}

// ---- verify and repair --------------------------------------------------------------------------

namespace {

// The verify options of the command line; false (and *code set) on a usage error.
bool VerifyOptionsFromArgs(Context& ctx, const ParsedArgs& args, const std::string& command,
                           vmbackup::VerifyOptions* o, int* code) {
  if (!args.positionals().empty()) {
    *code =
        ctx.UsageError(command + ": unexpected argument '" + args.positionals()[0] + "'", command);
    return false;
  }
  o->read_data = args.Has("read-data");
  if (auto subset = args.Get("read-data-subset")) {
    if (!o->read_data) {
      *code = ctx.UsageError(command + ": --read-data-subset needs --read-data", command);
      return false;
    }
    Status st = vmbackup::ParseReadDataSubset(*subset, o);
    if (!st.ok()) {
      *code = ctx.UsageError(command + ": --read-data-subset: " + st.message(), command);
      return false;
    }
  }
  return true;
}

// Progress on stderr (--progress) and SIGINT/SIGTERM cancellation through the callback.
vmbackup::ProgressCallback VerifyProgress(Context& ctx, const std::string& what) {
  const bool show = ctx.options.progress != ProgressMode::kNone;  // resolved by main()
  auto last = std::make_shared<double>(-1e9);
  return [show, what, last](const vmbackup::Progress& p) {
    if (CancelRequested()) return false;
    if (!show || p.phase != vmbackup::Progress::Phase::kTransferring) return true;
    const double now = MonotonicSeconds();
    if (now - *last < 2) return true;
    *last = now;
    std::cerr << what << ": read " << FormatBytes(p.bytes_read) << " of "
              << FormatBytes(p.bytes_total) << " (" << p.blocks_done << "/" << p.blocks_total
              << " blocks, " << FormatRate(p.bytes_per_second) << ")" << std::endl;
    return true;
  };
}

void PrintVerifyText(const vmbackup::VerifyReport& r) {
  std::cout << "Checked " << r.backups << " backups, " << r.volumes << " volumes, "
            << r.unique_blocks << " distinct blocks (" << FormatBytes(r.bytes_referenced) << "), "
            << r.packs << " packs";
  if (r.packs_read > 0 || r.blocks_checked > 0)
    std::cout << "; read " << r.blocks_checked << " blocks (" << FormatBytes(r.bytes_checked)
              << ") from " << r.packs_read << " packs";
  std::cout << " in " << FormatDuration(r.seconds) << ".\n";
  for (const std::string& d : r.damaged_records) std::cout << "damaged record: " << d << "\n";
  for (const std::string& d : r.damaged_volume_indexes)
    std::cout << "damaged volume index: " << d << "\n";
  for (const vmbackup::PackProblem& p : r.pack_problems)
    std::cout << "damaged pack " << p.pack_id << ": " << p.problem << "\n";
  for (const vmbackup::BadBlock& b : r.bad_blocks) {
    std::cout << "bad block: backup " << b.backup << ", volume " << b.volume << ", offset "
              << b.offset;
    if (!b.pack_id.empty()) std::cout << ", pack " << b.pack_id << " at " << b.pack_offset;
    std::cout << ": " << b.problem << "\n";
  }
  if (r.bad_block_count > r.bad_blocks.size())
    std::cout << "... " << (r.bad_block_count - r.bad_blocks.size()) << " more bad blocks\n";
  if (r.ok()) {
    std::cout << "No damage found.\n";
  } else {
    std::cout << r.bad_block_count << " bad blocks; damaged backups:";
    for (const std::string& b : r.damaged_backups) std::cout << " " << b;
    std::cout << "\n";
  }
  std::cout.flush();
}

}  // namespace

int CmdVerify(Context& ctx, const ParsedArgs& args) {
  vmbackup::VerifyOptions o;
  int code = 0;
  if (!VerifyOptionsFromArgs(ctx, args, "verify", &o, &code)) return code;
  auto target = OpenTarget(ctx, args.Get("target"));
  if (!target.ok()) return ctx.Fail(target.status(), "open target");
  o.progress = VerifyProgress(ctx, "verify");
  CancelScope cancel([] {});  // a signal makes the progress callback cancel (exit code 10)
  StatusOr<vmbackup::VerifyReport> r = (*target)->Verify(o);
  if (!r.ok()) return ctx.Fail(r.status(), "verify");
  if (ctx.options.json) {
    ctx.PrintJson(nlohmann::json::parse(vmbackup::VerifyReportToJson(*r)));
  } else if (!ctx.options.quiet || !r->ok()) {
    PrintVerifyText(*r);
  }
  return r->ok() ? kExitOk : kExitDamageFound;
}

int CmdRepair(Context& ctx, const ParsedArgs& args) {
  vmbackup::RepairOptions o;
  int code = 0;
  if (!VerifyOptionsFromArgs(ctx, args, "repair", &o.verify, &code)) return code;
  o.dry_run = args.Has("dry-run");
  auto target = OpenTarget(ctx, args.Get("target"));
  if (!target.ok()) return ctx.Fail(target.status(), "open target");
  o.verify.progress = VerifyProgress(ctx, "repair");
  CancelScope cancel([] {});  // cancels the verify phase; each repair step is atomic anyway
  StatusOr<vmbackup::RepairReport> r = (*target)->Repair(o);
  if (!r.ok()) return ctx.Fail(r.status(), "repair");
  bool failed = false;
  for (const vmbackup::RepairAction& a : r->actions) failed = failed || !a.error.empty();
  const bool sound = r->before.ok() || (!o.dry_run && !failed && r->unrestorable_backups.empty());
  if (ctx.options.json) {
    ctx.PrintJson(nlohmann::json::parse(vmbackup::RepairReportToJson(*r)));
  } else if (!ctx.options.quiet || !sound) {
    PrintVerifyText(r->before);
    if (r->actions.empty()) std::cout << "Nothing to repair.\n";
    for (const vmbackup::RepairAction& a : r->actions) {
      std::cout << (o.dry_run ? "would repair" : (a.done ? "repaired" : "FAILED")) << " pack "
                << a.pack_id << ": " << a.action;
      if (!a.new_pack_id.empty()) std::cout << " into " << a.new_pack_id;
      std::cout << " (" << a.blocks_kept << " blocks kept, " << a.blocks_lost << " lost)";
      if (!a.error.empty()) std::cout << ": " << a.error;
      std::cout << "\n";
    }
    if (!r->unrestorable_backups.empty()) {
      std::cout << "Backups that cannot be restored" << (o.dry_run ? " after the repair" : "")
                << " (until a new backup stores the lost blocks again):";
      for (const std::string& b : r->unrestorable_backups) std::cout << " " << b;
      std::cout << "\n";
    }
    std::cout.flush();
  }
  return sound ? kExitOk : kExitDamageFound;
}

}  // namespace vmbackupctl
