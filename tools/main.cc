// vmbackupctl: command-line front end of the vmbackup library (public C++ API only).
//
// Parses the command line, sets up SIGINT/SIGTERM cancellation and dispatches to the commands in
// commands.cc and demo.cc. See docs/vmbackupctl.md.
#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "args.h"
#include "cancel.h"
#include "cli.h"
#include "commands.h"
#include "demo.h"
#include "progress.h"
#include "vmbackup/vmbackup.h"

namespace vmbackupctl {
namespace {

struct CommandDef {
  std::string name;   // "backup", "target test"
  std::string usage;  // after "vmbackupctl "
  std::string summary;
  std::string details;
  std::vector<FlagDef> flags;
  int (*run)(Context&, const ParsedArgs&) = nullptr;
};

const FlagDef kTargetFlag{"target", true, false, "CONFIG",
                          "backup target: JSON, @FILE or a directory (default $VMBACKUP_TARGET)"};

std::vector<FlagDef> GlobalFlags() {
  return {
      {"json", false, false, "", "machine-readable output: one JSON document on stdout"},
      {"quiet", false, false, "", "no progress, warnings or summaries (errors still print)"},
      {"threads", true, false, "N", "worker threads of the runtime (default: one per core)"},
      {"in-flight-mib", true, false, "N",
       "MiB of packs a backup uploads at once (default 96; the memory it uses grows with it)"},
      {"progress", true, false, "MODE", "auto (bar on a terminal), bar, plain or none"},
      {"state-dir", true, false, "DIR",
       "this host's private state, e.g. the fingerprint key (default $VMBACKUP_STATE_DIR, else "
       "/var/lib/vmbackup as root)"},
      {"encryption", true, false, "MODE",
       "aes-256-gcm or none: required when the command creates the repository (default "
       "$VMBACKUP_ENCRYPTION)"},
      {"passphrase-file", true, false, "FILE",
       "passphrase of an encrypted repository (default $VMBACKUP_PASSPHRASE)"},
      {"key-file", true, false, "FILE",
       "raw 256-bit key of an encrypted repository (32 bytes or 64 hex characters)"},
      {"help", false, false, "", "show help"},
  };
}

const std::vector<CommandDef>& Commands() {
  static const std::vector<CommandDef> commands = {
      {"target test",
       "target test [--target CONFIG]",
       "check that the backup target is usable",
       "Opens the target (initializing a repository if it holds none) and writes, reads back\n"
       "and deletes a probe object.\n",
       {kTargetFlag},
       CmdTargetTest},
      {"backup",
       "backup [--target CONFIG] (--vm-dir DIR | --volume NAME=LOCATION... [--qmp SOCKET\n"
       "                   --drive NODE[=NAME]... [--nbd-socket S] [--scratch-dir D]]\n"
       "                   [--rbd [NAME=]POOL/IMAGE... [--ceph-conf F] [--ceph-id ID]]\n"
       "                   [--vm-name VM] [--vm-namespace NS]) [--name N] [--parent P]\n"
       "                   [--dirty-map FILE]\n"
       "                   [--no-fingerprints] [--freeze-cmd CMD --thaw-cmd CMD [--thaw-early]\n"
       "                   [--freeze-timeout SECONDS]]\n"
       "                   [--vm-state running|stopped [--allow-inconsistent]]",
       "back up a VM's volumes and metadata",
       "--vm-dir reads DIR/vm.json ({\"name\":..., \"volumes\":[{\"name\":..., \"path\":...}]};\n"
       "  a volume may give \"location\" instead of \"path\").\n"
       "--volume backs up the given volumes instead. A LOCATION is a file or block device path,\n"
       "  qemu:QMP_SOCKET?node=NODE[&nbd=SOCKET][&scratch=DIR] (a disk of a running QEMU: one\n"
       "  QMP transaction for all its disks, changed blocks from persistent dirty bitmaps), or\n"
       "  rbd:POOL/IMAGE[?conf=FILE][&id=CLIENT] (a Ceph RBD image: snapshots, rbd diff).\n"
       "  --qmp/--drive and --rbd say the same in flag form (docs/providers/).\n"
       "  With --vm-name, a qemu or rbd volume whose previous backup left a checkpoint is read\n"
       "  only where it changed since (that backup becomes the parent).\n"
       "--dirty-map FILE lists changed ranges per volume relative to --parent:\n"
       "  {\"datadisk\": [[offset, length], ...]}; volumes not listed are read in full.\n"
       "Without a dirty map, blocks whose keyed fingerprint matches the previous backup of the\n"
       "same named VM (or --parent, when it is of that VM) are not hashed again; unnamed VMs\n"
       "(--volume without --vm-name) hash every block, as does --no-fingerprints.\n"
       "--freeze-cmd and --thaw-cmd (run by /bin/sh) open and close one freeze window for all\n"
       "volumes: thaw runs once after the snapshots (volumes read directly, not cloned, stay\n"
       "frozen until the backup ends unless --thaw-early). A freeze command that exits non-zero\n"
       "fails the backup (exit 11) before anything is read; `show` reports the window's length\n"
       "and each volume's consistency. Snapshots that take longer than --freeze-timeout after the\n"
       "freeze thaw the guest and fail the backup (exit code of a deadline) with nothing read.\n",
       {kTargetFlag,
        {"vm-dir", true, false, "DIR", "VM directory holding vm.json"},
        {"volume", true, true, "NAME=LOCATION", "volume to back up (instead of --vm-dir)"},
        {"qmp", true, false, "SOCKET",
         "QMP socket of the running QEMU whose --drive disks to back up"},
        {"drive", true, true, "NODE[=NAME]",
         "a QEMU block node (or device) to back up, as volume NAME"},
        {"nbd-socket", true, false, "SOCKET", "QEMU's NBD server, when the host already runs one"},
        {"scratch-dir", true, false, "DIR", "where QEMU keeps the temporary fleecing images"},
        {"rbd", true, true, "[NAME=]POOL/IMAGE",
         "a Ceph RBD image to back up (volume NAME, default IMAGE)"},
        {"ceph-conf", true, false, "FILE", "ceph.conf for --rbd (default $CEPH_CONF or /etc/ceph)"},
        {"ceph-id", true, false, "ID", "cephx user for --rbd, without \"client.\" (default admin)"},
        {"vm-name", true, false, "VM", "name of the VM the --volume backups belong to"},
        {"vm-namespace", true, false, "NS", "namespace of that VM"},
        {"name", true, false, "NAME", "backup name (default <vm>-<UTC time>-<random>)"},
        {"parent", true, false, "BACKUP", "base backup of this incremental backup"},
        {"dirty-map", true, false, "FILE", "changed ranges since --parent (JSON)"},
        {"no-fingerprints", false, false, "", "hash every block (skip no unchanged block)"},
        {"freeze-cmd", true, false, "CMD", "shell command that freezes the guest"},
        {"thaw-cmd", true, false, "CMD",
         "shell command that thaws it (required with --freeze-cmd)"},
        {"thaw-early", false, false, "", "thaw right after the snapshots, also for direct reads"},
        {"freeze-timeout", true, false, "SECONDS",
         "fail (after thawing) when the snapshots take longer (default 60, 0 = none)"},
        {"vm-state", true, false, "STATE",
         "running (refuse volumes that cannot be cloned or kept frozen) or stopped"},
        {"allow-inconsistent", false, false, "",
         "with --vm-state running: read such volumes anyway (consistency unknown)"}},
       CmdBackup},
      {"list",
       "list [--target CONFIG]",
       "list the backups on the target",
       "Damaged backup records are reported as warnings on stderr (and under \"damaged\" with\n"
       "--json); they never hide the readable ones.\n",
       {kTargetFlag},
       CmdList},
      {"show",
       "show BACKUP [--target CONFIG]",
       "show one backup in detail",
       "",
       {kTargetFlag},
       CmdShow},
      {"restore",
       "restore BACKUP [--target CONFIG] --dest-dir DIR [--new-name NAME] [--volume NAME=PATH...]\n"
       "                   [--overwrite] [--mode OCTAL]",
       "restore a backup as a new VM",
       "Volumes go to DIR/<volume>.img unless --volume names another destination; DIR/vm.json\n"
       "receives the VM metadata with the new name and the restored paths. Without --overwrite\n"
       "an existing destination (a block device too) fails the restore before anything is\n"
       "written. A --volume PATH that is a block device, or a link to one (/dev/vg0/lv), is\n"
       "written in place: it must not be mounted and must be as large as the volume; a failed\n"
       "restore leaves such a device partly written. Restored files are private (0600).\n",
       {kTargetFlag,
        {"dest-dir", true, false, "DIR", "directory for volumes and vm.json (created)"},
        {"new-name", true, false, "NAME", "name of the restored VM (default: the original)"},
        {"volume", true, true, "NAME=PATH", "explicit destination of one volume"},
        {"overwrite", false, false, "", "replace existing destinations (files and devices)"},
        {"mode", true, false, "OCTAL", "permissions of restored files (default 0600)"}},
       CmdRestore},
      {"delete",
       "delete BACKUP [--target CONFIG]",
       "delete a backup record",
       "Blocks that no other backup uses stay on the target until garbage collection.\n",
       {kTargetFlag},
       CmdDelete},
      {"verify",
       "verify [--target CONFIG] [--read-data] [--read-data-subset X]",
       "check the backups on the target",
       "Reads every backup record and volume index, every pack index, and checks that every\n"
       "block a backup references is indexed and its pack present with the right size.\n"
       "--read-data also fetches and hashes every referenced block; --read-data-subset reads\n"
       "only a share of the packs (0.1 or 10%) or part n of m (1/5 .. 5/5 cover every pack).\n"
       "Each bad block is reported with its backup, volume, offset, pack and offset in the\n"
       "pack. Changes nothing. Exit 0 when nothing is damaged, 14 when damage was found.\n",
       {kTargetFlag,
        {"read-data", false, false, "", "fetch and hash every referenced block"},
        {"read-data-subset", true, false, "X",
         "with --read-data: a share (0.1, 10%) or part n/m of the packs"}},
       CmdVerify},
      {"repair",
       "repair [--target CONFIG] [--dry-run] [--read-data] [--read-data-subset X]",
       "repair damaged packs and pack indexes",
       "Verifies, then rebuilds damaged or missing pack indexes from the copy in their pack\n"
       "(every block checked first), copies the good blocks of a damaged pack to a new pack and\n"
       "removes the indexes of missing packs, so that lost blocks are stored again by the next\n"
       "backup. Lists the backups that stay unrestorable until then. --read-data finds corrupt\n"
       "blocks in packs whose index is intact too. --dry-run changes nothing. Exit 0 when\n"
       "nothing stays damaged, 14 otherwise.\n",
       {kTargetFlag,
        {"dry-run", false, false, "", "report the repairs, change nothing"},
        {"read-data", false, false, "", "check every referenced block, not only damaged packs"},
        {"read-data-subset", true, false, "X", "with --read-data: a share or part n/m of packs"}},
       CmdRepair},
      {"forget",
       "forget [--target CONFIG] --keep-last N | --keep-hourly N | --keep-daily N |\n"
       "                   --keep-weekly N | --keep-monthly N | --keep-yearly N ...\n"
       "                   [--vm-name VM [--vm-namespace NS]] [--dry-run] [--prune [--grace D]]",
       "delete the backups a retention policy does not keep",
       "Per VM (namespace + name; backups without VM metadata form one group), newest first, a\n"
       "backup is kept when any rule keeps it: --keep-last N keeps the N newest; --keep-daily N\n"
       "keeps the newest backup of each of the N newest UTC days that have backups (likewise\n"
       "hourly, ISO weeks, months, years). Everything else is deleted (restic's semantics).\n"
       "--prune then runs one garbage-collection run (see gc). --dry-run deletes nothing.\n",
       {kTargetFlag,
        {"keep-last", true, false, "N", "keep the N newest backups"},
        {"keep-hourly", true, false, "N", "keep the newest backup of each of N hours"},
        {"keep-daily", true, false, "N", "keep the newest backup of each of N days"},
        {"keep-weekly", true, false, "N", "keep the newest backup of each of N ISO weeks"},
        {"keep-monthly", true, false, "N", "keep the newest backup of each of N months"},
        {"keep-yearly", true, false, "N", "keep the newest backup of each of N years"},
        {"vm-name", true, false, "VM", "only this VM's backups"},
        {"vm-namespace", true, false, "NS", "namespace of --vm-name"},
        {"dry-run", false, false, "", "show what would be forgotten; delete nothing"},
        {"prune", false, false, "", "run garbage collection afterwards"},
        {"grace", true, false, "D", "with --prune: grace period (default 24h; 0, 90s, 30m, 7d)"},
        {"lease-expiry", true, false, "D", "with --prune: age of abandoned leases (default 7d)"}},
       CmdForget},
      {"gc",
       "gc [--target CONFIG] [--dry-run] [--grace D] [--lease-expiry D] [--no-repack]\n"
       "                   [--max-unused PCT] [--restore-dir DIR...]",
       "reclaim the space of deleted backups, killed jobs and stray temporaries",
       "One garbage-collection run. Packs no backup references are listed first and deleted\n"
       "only by later runs once they stayed garbage for the grace period (default 24h, measured\n"
       "between runs): the pack index in one run, the pack in the next. Partly-live packs with\n"
       "the largest dead share are rewritten (their live blocks moved to a new pack) until the\n"
       "dead bytes left are at most --max-unused of all packs' bytes, once they were chosen for\n"
       "the grace, then collected likewise. Safe while backups run on\n"
       "any host (they hold leases). The first run upgrades the repository: vmbackup versions\n"
       "before garbage collection then refuse it. --dry-run reports what would be freed. Exits 14\n"
       "when damaged records or indexes kept it from deleting packs.\n",
       {kTargetFlag,
        {"dry-run", false, false, "", "report what would be deleted; change nothing"},
        {"grace", true, false, "D", "grace period (default 24h; 0, 90s, 30m, 7d)"},
        {"lease-expiry", true, false, "D", "leases older than this are abandoned (default 7d)"},
        {"no-repack", false, false, "", "do not rewrite partly-live packs"},
        {"max-unused", true, false, "PCT",
         "dead data partly-live packs may keep, % of all packs' bytes (default 10; 0 to 100)"},
        {"restore-dir", true, true, "DIR",
         "also delete *.vmbackup-partial-* leftovers of killed restores in DIR older than the "
         "grace"}},
       CmdGc},
      {"key list",
       "key list [--target CONFIG]",
       "list the key slots of an encrypted repository",
       "Each slot opens the repository with its own passphrase or raw key; all wrap one master\n"
       "key. The slot this invocation opened the target with is marked current.\n",
       {kTargetFlag},
       CmdKeyList},
      {"key add",
       "key add [--target CONFIG] (--new-passphrase-file FILE | --new-key-file FILE)\n"
       "                   [--label TEXT]",
       "add a key slot to an encrypted repository",
       "Opens the target with the current key (--passphrase-file, --key-file or\n"
       "$VMBACKUP_PASSPHRASE) and adds a slot for the new secret. No data is rewritten. To\n"
       "rotate a key: add the new one, then remove the old one while opened with the new one.\n",
       {kTargetFlag,
        {"new-passphrase-file", true, false, "FILE", "the new slot's passphrase"},
        {"new-key-file", true, false, "FILE", "the new slot's raw key (32 bytes or 64 hex)"},
        {"label", true, false, "TEXT", "a note stored with the slot (at most 200 bytes)"}},
       CmdKeyAdd},
      {"key remove",
       "key remove ID [--target CONFIG]",
       "remove a key slot of an encrypted repository",
       "The slot the target was opened with cannot be removed (open it with another key), so\n"
       "the last key is never removed.\n",
       {kTargetFlag},
       CmdKeyRemove},
      {"demo",
       "demo [--work-dir DIR] [--size-mib N] [--keep] [--with-dirty-map]",
       "end-to-end proof on a local target",
       "Creates a demo VM (an ext4 root disk and a data disk with random, compressible, zero and\n"
       "hole regions), backs it up, changes ~1% of the data disk, takes an incremental backup,\n"
       "restores both as new VMs and verifies SHA-256 of every volume and e2fsck of the root\n"
       "disk. Needs mke2fs, e2fsck and debugfs (e2fsprogs). Exits 1 if a check fails.\n",
       {{"work-dir", true, false, "DIR", "where to work (must be empty; default a new temp dir)"},
        {"size-mib", true, false, "N", "size of each disk in MiB (default 512)"},
        {"keep", false, false, "", "keep the work directory afterwards"},
        {"with-dirty-map", false, false, "",
         "pass the data disk's changed ranges as a dirty map to the incremental backup"}},
       CmdDemo},
      {"version", "version", "print the library version", "", {}, nullptr},
  };
  return commands;
}

const CommandDef* FindCommand(const std::string& name) {
  for (const CommandDef& c : Commands()) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

std::string MainHelp() {
  std::string out =
      "vmbackupctl - back up and restore VM volumes with the vmbackup library\n\n"
      "Usage: vmbackupctl [global options] COMMAND [options] [arguments]\n\nCommands:\n";
  for (const CommandDef& c : Commands()) {
    std::string n = "  " + c.name;
    n.append(n.size() < 18 ? 18 - n.size() : 1, ' ');
    out += n + c.summary + "\n";
  }
  out += "  help [COMMAND]   show help for a command\n\nGlobal options:\n";
  out += FormatFlagHelp(GlobalFlags());
  out +=
      "\nBackup target CONFIG (--target or $VMBACKUP_TARGET):\n"
      "  '{\"type\":\"file\",\"endpoint\":\"/backups\"}'   Harvester backup-target setting JSON\n"
      "  @target.json                             the same JSON read from a file\n"
      "  /backups                                 a directory (a local file target)\n\n";
  out += ExitCodeHelp();
  return out;
}

std::string CommandHelp(const CommandDef& c) {
  std::string out = "Usage: vmbackupctl " + c.usage + "\n\n" + c.summary + ".\n";
  if (!c.details.empty()) out += "\n" + c.details;
  if (!c.flags.empty()) out += "\nOptions:\n" + FormatFlagHelp(c.flags);
  out += "\nGlobal options:\n" + FormatFlagHelp(GlobalFlags());
  out += "\nExit codes: 0 ok, 2 usage; errors as listed by 'vmbackupctl --help'.\n";
  return out;
}

bool StartsFlag(const std::string& s) { return s.size() >= 2 && s[0] == '-'; }

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  Context ctx;

  // Every flag any command knows: used to skip flag values while looking for the command words, so
  // that "vmbackupctl --target /b list" works too.
  std::vector<FlagDef> all = GlobalFlags();
  for (const CommandDef& c : Commands()) all.insert(all.end(), c.flags.begin(), c.flags.end());
  auto takes_value = [&](const std::string& token) {
    if (token.rfind("--", 0) != 0 || token.find('=') != std::string::npos) return false;
    for (const FlagDef& f : all) {
      if ("--" + f.name == token) return f.has_value;
    }
    return false;
  };

  // Find and remove the command words.
  std::vector<std::string> words;
  std::vector<std::string> rest;
  bool ended = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (ended || !StartsFlag(a)) {
      bool want_word = words.empty() ||
                       (words.size() == 1 &&
                        (words[0] == "target" || words[0] == "key" || words[0] == "help")) ||
                       (words.size() == 2 && words[0] == "help" && words[1] == "key");
      if (!ended && want_word) {
        words.push_back(a);
      } else {
        rest.push_back(a);
      }
      continue;
    }
    if (a == "--") ended = true;
    rest.push_back(a);
    if (takes_value(a) && i + 1 < args.size()) rest.push_back(args[++i]);
  }

  std::string name;
  for (const std::string& w : words) name += (name.empty() ? "" : " ") + w;
  bool help_cmd = !words.empty() && words[0] == "help";
  const CommandDef* cmd = nullptr;
  if (help_cmd) {
    std::string topic = name.size() > 5 ? name.substr(5) : "";
    if (topic == "target") topic = "target test";
    if (topic.empty()) {
      std::cout << MainHelp();
      return kExitOk;
    }
    cmd = FindCommand(topic);
    if (cmd == nullptr) return ctx.UsageError("unknown command '" + topic + "'");
    std::cout << CommandHelp(*cmd);
    return kExitOk;
  }
  if (!words.empty()) {
    cmd = FindCommand(name);
    if (cmd == nullptr) {
      if (words[0] == "key") {
        if (words.size() == 1)
          return ctx.UsageError("key: missing subcommand (available: list, add, remove)");
        return ctx.UsageError("key: unknown subcommand '" + words[1] +
                              "' (available: list, add, remove)");
      }
      if (words[0] == "target") {
        if (words.size() == 1) {
          bool help = false;
          for (const auto& r : rest) help |= (r == "--help" || r == "-h");
          if (help) {
            std::cout << CommandHelp(*FindCommand("target test"));
            return kExitOk;
          }
          return ctx.UsageError("target: missing subcommand (available: test)");
        }
        return ctx.UsageError("target: unknown subcommand '" + words[1] + "' (available: test)");
      }
      return ctx.UsageError("unknown command '" + name + "'");
    }
  }

  std::vector<FlagDef> flags = GlobalFlags();
  if (cmd != nullptr) flags.insert(flags.end(), cmd->flags.begin(), cmd->flags.end());
  ParsedArgs parsed;
  std::optional<std::string> error = ParseFlags(rest, flags, &parsed);
  ctx.options.json = parsed.Has("json");
  ctx.options.quiet = parsed.Has("quiet");
  if (error) return ctx.UsageError(*error, cmd ? cmd->name : "");
  if (parsed.Has("help")) {
    std::cout << (cmd ? CommandHelp(*cmd) : MainHelp());
    return kExitOk;
  }
  if (cmd == nullptr) {
    if (!parsed.positionals().empty()) {
      return ctx.UsageError("unknown command '" + parsed.positionals()[0] + "'");
    }
    return ctx.UsageError("missing command");
  }
  if (auto t = parsed.Get("threads")) {
    char* end = nullptr;
    long n = std::strtol(t->c_str(), &end, 10);
    if (t->empty() || *end != '\0' || n < 1 || n > 1024) {
      return ctx.UsageError("--threads expects a number from 1 to 1024, got '" + *t + "'",
                            cmd->name);
    }
    ctx.options.threads = static_cast<int>(n);
  }
  if (auto m = parsed.Get("in-flight-mib")) {
    char* end = nullptr;
    long n = std::strtol(m->c_str(), &end, 10);
    if (m->empty() || *end != '\0' || n < 1 || n > 65536) {
      return ctx.UsageError("--in-flight-mib expects a number from 1 to 65536, got '" + *m + "'",
                            cmd->name);
    }
    ctx.options.in_flight_mib = static_cast<uint64_t>(n);
  }
  if (auto d = parsed.Get("state-dir")) {
    if (d->empty()) return ctx.UsageError("--state-dir expects a directory", cmd->name);
    ctx.options.state_dir = *d;
  }
  if (auto e = parsed.Get("encryption")) {
    ctx.options.encryption = *e;
  } else if (const char* env = std::getenv("VMBACKUP_ENCRYPTION"); env != nullptr) {
    ctx.options.encryption = env;
  }
  if (!ctx.options.encryption.empty() && ctx.options.encryption != "aes-256-gcm" &&
      ctx.options.encryption != "none")
    return ctx.UsageError(
        "--encryption expects aes-256-gcm or none, got '" + ctx.options.encryption + "'",
        cmd->name);
  if (auto f = parsed.Get("passphrase-file")) ctx.options.passphrase_file = *f;
  if (auto f = parsed.Get("key-file")) ctx.options.key_file = *f;
  if (!ctx.options.passphrase_file.empty() && !ctx.options.key_file.empty())
    return ctx.UsageError("give --passphrase-file or --key-file, not both", cmd->name);
  bool explicit_progress = false;
  if (auto p = parsed.Get("progress")) {
    explicit_progress = true;
    if (*p == "auto") {
      ctx.options.progress = ProgressMode::kAuto;
    } else if (*p == "bar") {
      ctx.options.progress = ProgressMode::kBar;
    } else if (*p == "plain") {
      ctx.options.progress = ProgressMode::kPlain;
    } else if (*p == "none") {
      ctx.options.progress = ProgressMode::kNone;
    } else {
      return ctx.UsageError("--progress expects auto, bar, plain or none, got '" + *p + "'",
                            cmd->name);
    }
  }
  ctx.options.progress = EffectiveProgressMode(ctx.options, explicit_progress);

  bool needs_target = std::any_of(cmd->flags.begin(), cmd->flags.end(),
                                  [](const FlagDef& f) { return f.name == "target"; });
  const char* env_target = std::getenv("VMBACKUP_TARGET");
  if (needs_target && !parsed.Has("target") && (env_target == nullptr || *env_target == '\0')) {
    return ctx.UsageError(
        cmd->name + ": no backup target: pass --target CONFIG or set VMBACKUP_TARGET", cmd->name);
  }
  if (cmd->name == "version") {
    if (ctx.options.json) {
      ctx.PrintJson(
          {{"version", vmbackup::VersionString()}, {"header_version", VMBACKUP_VERSION_STRING}});
    } else {
      std::cout << "vmbackupctl " << VMBACKUP_VERSION_STRING << " (library "
                << vmbackup::VersionString() << ")" << std::endl;
    }
    return kExitOk;
  }
  return cmd->run(ctx, parsed);
}

}  // namespace
}  // namespace vmbackupctl

int main(int argc, char** argv) {
  // First, before any thread exists: every thread inherits the blocked SIGINT/SIGTERM mask.
  vmbackupctl::InstallSignalHandling();
  int code = vmbackupctl::Main(argc, argv);
  std::cout.flush();
  return code;
}
