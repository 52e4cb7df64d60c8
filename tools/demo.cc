#include "demo.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <sstream>

#include "commands.h"
#include "demo_util.h"
#include "vmbackup/vmbackup.h"

namespace vmbackupctl {
namespace {

namespace fs = std::filesystem;
using vmbackup::Status;
using vmbackup::StatusOr;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kChangeSize = 64 << 10;         // size of one scattered write of step 3
constexpr uint64_t kSeed = 0x766d6261636b7570ULL;  // "vmbackup": the demo data is reproducible

const char* const kFullName = "demo-vm-full";
const char* const kIncrName = "demo-vm-incr";

struct Check {
  std::string name;
  bool ok = false;
  std::string detail;
};

struct DataDiskLayout {
  int regions[4] = {0, 0, 0, 0};  // random, compressible, zeros, holes
  uint64_t bytes[4] = {0, 0, 0, 0};
};

// Human progress lines on stdout (suppressed by --json / --quiet).
void Say(Context& ctx, const std::string& line) { ctx.Info(line); }

Status ErrnoError(const std::string& what) {
  int err = errno;
  std::string msg = what + ": " + std::strerror(err);
  if (err == ENOSPC) return vmbackup::ResourceExhaustedError(msg);
  if (err == EACCES || err == EPERM) return vmbackup::PermissionDeniedError(msg);
  if (err == ENOENT) return vmbackup::NotFoundError(msg);
  return vmbackup::InternalError(msg);
}

Status WriteFile(const fs::path& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  out.close();
  if (!out) return vmbackup::InternalError("cannot write " + path.string());
  return Status::Ok();
}

// A tree of text and binary files for the root disk's ext4 filesystem, about `budget` bytes.
Status MakeTree(const fs::path& root, uint64_t budget, Rng& rng, int* files, uint64_t* bytes) {
  static const char* const kDirs[] = {"etc",
                                      "etc/demo",
                                      "etc/systemd/system",
                                      "usr/bin",
                                      "usr/lib/demo",
                                      "usr/lib/demo/plugins",
                                      "usr/share/doc/demo",
                                      "usr/share/demo/assets",
                                      "var/log",
                                      "var/log/app",
                                      "var/lib/demo/db",
                                      "home/demo",
                                      "home/demo/notes",
                                      "home/demo/photos",
                                      "opt/app/bin",
                                      "opt/app/data",
                                      "srv/www"};
  constexpr int kFiles = 320;
  const uint64_t avg = std::max<uint64_t>(budget / kFiles, 1024);
  std::error_code ec;
  for (const char* d : kDirs) {
    fs::create_directories(root / d, ec);
    if (ec) return vmbackup::InternalError("mkdir " + (root / d).string() + ": " + ec.message());
  }
  *files = 0;
  *bytes = 0;
  std::string data;
  for (int i = 0; i < kFiles; ++i) {
    const char* dir = kDirs[rng.Range(0, std::size(kDirs) - 1)];
    bool text = rng.Range(0, 9) < 6;
    uint64_t size = text ? rng.Range(avg / 8, avg * 3 / 2) : rng.Range(avg / 4, avg * 7 / 4);
    data.resize(size);
    if (text) {
      FillCompressible(rng, data.data(), data.size());
    } else {
      rng.Fill(data.data(), data.size());
    }
    char name[64];
    std::snprintf(name, sizeof(name), "%s-%03d.%s", text ? "file" : "blob", i,
                  text ? "log" : "bin");
    Status st = WriteFile(root / dir / name, data);
    if (!st.ok()) return st;
    ++*files;
    *bytes += size;
  }
  WriteFile(root / "etc/hostname", "demo-vm\n").IgnoreError();
  fs::create_symlink("../usr/share/doc/demo", root / "etc/demo/doc", ec);
  return Status::Ok();
}

// Runs an e2fsprogs tool; its output becomes part of the error message on failure.
StatusOr<ProgramResult> RunTool(const std::vector<std::string>& argv) {
  StatusOr<ProgramResult> r = RunProgram(argv);
  if (!r.ok()) return r.status();
  if (r->exit_code >= 128) {
    return vmbackup::CancelledError(argv[0] + " killed by signal " +
                                    std::to_string(r->exit_code - 128));
  }
  return r;
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// The data disk: interleaved regions of random data, compressible text, written zeros and holes.
Status MakeDataDisk(const std::string& path, uint64_t size, Rng& rng, DataDiskLayout* layout) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("create " + path);
  Status st = Status::Ok();
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) st = ErrnoError("truncate " + path);
  std::string buf;
  uint64_t offset = 0;
  while (st.ok() && offset < size) {
    uint64_t len = std::min<uint64_t>(rng.Range(1, 48) * (64 << 10), size - offset);
    uint64_t r = rng.Range(0, 99);
    int kind = r < 30 ? 0 : r < 60 ? 1 : r < 75 ? 2 : 3;
    layout->regions[kind]++;
    layout->bytes[kind] += len;
    if (kind != 3) {
      for (uint64_t done = 0; st.ok() && done < len;) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(len - done, 4 * kMiB));
        buf.resize(n);
        if (kind == 0) rng.Fill(buf.data(), n);
        if (kind == 1) FillCompressible(rng, buf.data(), n);
        if (kind == 2) std::memset(buf.data(), 0, n);
        st = PWriteAll(fd, buf.data(), n, offset + done);
        done += n;
      }
    }
    offset += len;
  }
  if (::close(fd) != 0 && st.ok()) st = ErrnoError("close " + path);
  return st;
}

// Step 3: about 1 % of the disk in scattered 64 KiB writes of random data. Returns the written
// extents.
StatusOr<std::vector<vmbackup::Extent>> ChangeDataDisk(const std::string& path, uint64_t size,
                                                       Rng& rng) {
  uint64_t count = std::max<uint64_t>(1, (size / 100 + kChangeSize / 2) / kChangeSize);
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open " + path);
  std::string buf(kChangeSize, '\0');
  std::vector<vmbackup::Extent> extents;
  Status st = Status::Ok();
  for (uint64_t i = 0; i < count && st.ok(); ++i) {
    uint64_t offset = rng.Range(0, (size - kChangeSize) / 4096) * 4096;
    rng.Fill(buf.data(), buf.size());
    st = PWriteAll(fd, buf.data(), buf.size(), offset);
    extents.push_back({offset, kChangeSize});
  }
  if (::close(fd) != 0 && st.ok()) st = ErrnoError("close " + path);
  if (!st.ok()) return st;
  return extents;
}

// SHA-256 of several files at once (one thread each).
StatusOr<std::map<std::string, std::string>> HashFiles(
    const std::map<std::string, std::string>& paths) {
  std::map<std::string, std::future<StatusOr<std::string>>> futures;
  for (const auto& [name, path] : paths) {
    futures.emplace(name, std::async(std::launch::async, Sha256File, path));
  }
  std::map<std::string, std::string> out;
  Status first = Status::Ok();
  for (auto& [name, f] : futures) {
    StatusOr<std::string> h = f.get();
    if (!h.ok()) {
      if (first.ok()) first = h.status();
      continue;
    }
    out[name] = *h;
  }
  if (!first.ok()) return first;
  return out;
}

std::string Percent(uint64_t part, uint64_t whole) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %%",
                whole ? 100.0 * static_cast<double>(part) / static_cast<double>(whole) : 0.0);
  return buf;
}

std::string RatioText(std::optional<double> r) {
  if (!r) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2fx", *r);
  return buf;
}

class Demo {
 public:
  Demo(Context& ctx, const ParsedArgs& args) : ctx_(ctx), args_(args) {}
  int Run();

 private:
  int Fail(const Status& st, const std::string& context);
  Status PrepareWorkDir();
  void Cleanup();
  Status CreateVm();
  void Verify(const RestoreRun& run, const std::map<std::string, std::string>& source_hashes,
              const std::string& new_name);
  void PrintReport(double total_seconds);

  Context& ctx_;
  const ParsedArgs& args_;
  fs::path work_;
  bool created_work_ = false;
  bool keep_ = false;
  uint64_t size_ = 0;
  std::string mke2fs_, e2fsck_, debugfs_;
  fs::path vm_dir_;
  std::map<std::string, std::string> volumes_;  // name -> source path
  Rng rng_{kSeed};
  int tree_files_ = 0;
  uint64_t tree_bytes_ = 0;
  DataDiskLayout layout_;
  std::vector<BackupRun> backups_;
  std::vector<RestoreRun> restores_;
  std::vector<Check> checks_;
  std::vector<std::string> notes_;
};

int Demo::Fail(const Status& st, const std::string& context) {
  int code = ctx_.Fail(st, "demo: " + context);
  if (!work_.empty() && !ctx_.options.json) {
    std::cerr << "vmbackupctl: demo work directory kept at " << work_.string() << std::endl;
  }
  return code;
}

Status Demo::PrepareWorkDir() {
  std::error_code ec;
  if (auto dir = args_.Get("work-dir")) {
    work_ = fs::absolute(*dir, ec);
    if (ec) work_ = *dir;
    if (fs::exists(work_, ec)) {
      if (!fs::is_directory(work_, ec) || !fs::is_empty(work_, ec)) {
        return vmbackup::AlreadyExistsError("work directory " + work_.string() +
                                            " exists and is not empty");
      }
    } else {
      fs::create_directories(work_, ec);
      if (ec) {
        return vmbackup::PermissionDeniedError("cannot create " + work_.string() + ": " +
                                               ec.message());
      }
      created_work_ = true;
    }
  } else {
    // Not /tmp by default: it is often a small tmpfs, and the demo writes ~1 GiB of sparse files.
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp && *tmp ? tmp : "/var/tmp") + "/vmbackupctl-demo-XXXXXX";
    std::vector<char> buf(pattern.begin(), pattern.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr) return ErrnoError("mkdtemp " + pattern);
    work_ = buf.data();
    created_work_ = true;
  }
  return Status::Ok();
}

void Demo::Cleanup() {
  std::error_code ec;
  if (created_work_) {
    fs::remove_all(work_, ec);
    return;
  }
  for (const auto& entry : fs::directory_iterator(work_, ec)) fs::remove_all(entry.path(), ec);
}

Status Demo::CreateVm() {
  vm_dir_ = work_ / "vm";
  std::error_code ec;
  fs::create_directories(vm_dir_, ec);
  if (ec) return vmbackup::InternalError("mkdir " + vm_dir_.string() + ": " + ec.message());

  // Root disk: ext4 built by mke2fs -d from a generated tree.
  fs::path tree = work_ / "rootfs-tree";
  uint64_t budget = std::min<uint64_t>(12 * kMiB, size_ / 8);
  Status st = MakeTree(tree, budget, rng_, &tree_files_, &tree_bytes_);
  if (!st.ok()) return st;
  std::string rootdisk = (vm_dir_ / "rootdisk.img").string();
  StatusOr<ProgramResult> r = RunTool({mke2fs_, "-q", "-t", "ext4", "-d", tree.string(), "-F",
                                       rootdisk, std::to_string(size_ / kMiB) + "M"});
  if (!r.ok()) return r.status();
  if (r->exit_code != 0) {
    return vmbackup::InternalError("mke2fs exited with " + std::to_string(r->exit_code) + ": " +
                                   Trim(r->output));
  }
  fs::remove_all(tree, ec);

  // Data disk.
  std::string datadisk = (vm_dir_ / "datadisk.img").string();
  st = MakeDataDisk(datadisk, size_, rng_, &layout_);
  if (!st.ok()) return st;

  nlohmann::json vm = {
      {"name", "demo-vm"},
      {"namespace", "default"},
      {"description", "vmbackupctl demo VM"},
      {"cpu", {{"cores", 2}, {"sockets", 1}, {"threads", 1}}},
      {"memory", "2Gi"},
      {"machineType", "q35"},
      {"runStrategy", "Halted"},
      {"volumes",
       {{{"name", "rootdisk"}, {"path", "rootdisk.img"}, {"bus", "virtio"}, {"bootOrder", 1}},
        {{"name", "datadisk"}, {"path", "datadisk.img"}, {"bus", "virtio"}}}}};
  st = WriteFile(vm_dir_ / "vm.json", vm.dump(2) + "\n");
  if (!st.ok()) return st;
  volumes_ = {{"rootdisk", rootdisk}, {"datadisk", datadisk}};
  return Status::Ok();
}

void Demo::Verify(const RestoreRun& run, const std::map<std::string, std::string>& source_hashes,
                  const std::string& new_name) {
  std::map<std::string, std::string> restored;
  for (const auto& d : run.destinations) restored[d.volume] = d.path;
  StatusOr<std::map<std::string, std::string>> hashes = HashFiles(restored);
  for (const auto& [volume, want] : source_hashes) {
    Check c;
    c.name = "sha256 " + run.backup.name + "/" + volume;
    auto path = restored.find(volume);
    if (path == restored.end()) {
      c.detail = "volume was not restored";
    } else if (!hashes.ok()) {
      c.detail = hashes.status().ToString();
    } else {
      const std::string& got = hashes->at(volume);
      c.ok = got == want;
      c.detail = c.ok ? got.substr(0, 16) + "... matches source"
                      : "restored " + got + " != source " + want;
    }
    checks_.push_back(std::move(c));
  }
  if (restored.size() != source_hashes.size()) {
    checks_.push_back({"volumes of " + run.backup.name, false,
                       std::to_string(restored.size()) + " restored, expected " +
                           std::to_string(source_hashes.size())});
  }
  // e2fsck -fn: forced full check, read-only; exit 0 means no errors.
  if (auto root = restored.find("rootdisk"); root != restored.end()) {
    Check c;
    c.name = "e2fsck -fn " + run.backup.name + "/rootdisk";
    StatusOr<ProgramResult> r = RunTool({e2fsck_, "-fn", root->second});
    if (!r.ok()) {
      c.detail = r.status().ToString();
    } else {
      c.ok = r->exit_code == 0;
      c.detail = c.ok ? "clean" : "exit " + std::to_string(r->exit_code) + ": " + Trim(r->output);
    }
    checks_.push_back(std::move(c));
  }
  // The restored VM metadata carries the new name.
  Check c;
  c.name = "vm.json " + run.backup.name;
  fs::path vm_json = fs::path(run.dest_dir) / "vm.json";
  std::ifstream in(vm_json);
  nlohmann::json doc = in ? nlohmann::json::parse(in, nullptr, false) : nlohmann::json();
  if (!in) {
    c.detail = vm_json.string() + " missing";
  } else if (doc.is_discarded() || !doc.is_object()) {
    c.detail = vm_json.string() + " is not a JSON object";
  } else {
    std::string name = doc.value("name", "");
    c.ok = name == new_name;
    c.detail = c.ok ? "name " + name : "name '" + name + "', expected '" + new_name + "'";
  }
  checks_.push_back(std::move(c));
}

void Demo::PrintReport(double total_seconds) {
  bool ok = true;
  for (const Check& c : checks_) ok &= c.ok;
  if (ctx_.options.json) {
    nlohmann::json backups = nlohmann::json::array(), restores = nlohmann::json::array(),
                   checks = nlohmann::json::array();
    for (const auto& b : backups_) backups.push_back(BackupRunJson(b));
    for (const auto& r : restores_) restores.push_back(RestoreRunJson(r));
    for (const auto& c : checks_) {
      checks.push_back({{"name", c.name}, {"ok", c.ok}, {"detail", c.detail}});
    }
    ctx_.PrintJson({{"demo",
                     {{"ok", ok},
                      {"work_dir", work_.string()},
                      {"kept", keep_ || !ok},
                      {"disk_size", size_},
                      {"seconds", total_seconds},
                      {"backups", std::move(backups)},
                      {"restores", std::move(restores)},
                      {"checks", std::move(checks)},
                      {"notes", notes_}}}});
    return;
  }
  std::ostringstream out;
  if (ctx_.options.quiet) {
    // Only the verdict and the failed checks.
    for (const Check& c : checks_) {
      if (!c.ok) out << "[FAIL] " << c.name << ": " << c.detail << "\n";
    }
    out << (ok ? "demo: all checks passed\n"
               : "demo: FAILED; work directory kept at " + work_.string() + "\n");
    std::cout << out.str() << std::flush;
    return;
  }
  out << "\nBackups\n";
  std::vector<std::vector<std::string>> rows = {{"  NAME", "PARENT", "TIME", "TOTAL", "NEW",
                                                 "REUSED", "STORED", "DEDUP", "COMPRESSION",
                                                 "THROUGHPUT"}};
  for (const auto& b : backups_) {
    const auto& i = b.info;
    rows.push_back(
        {"  " + i.name, i.parent.empty() ? "-" : i.parent, FormatDuration(b.seconds),
         FormatBytes(i.bytes_total), FormatBytes(i.bytes_new), FormatBytes(i.bytes_reused),
         FormatBytes(i.bytes_stored), RatioText(DedupRatio(i)), RatioText(CompressionRatio(i)),
         FormatRate(b.seconds > 0 ? static_cast<double>(i.bytes_total) / b.seconds : 0)});
  }
  out << FormatTable(rows);
  out << "\nRestores\n";
  rows = {{"  BACKUP", "AS VM", "TIME", "BYTES", "WRITTEN", "THROUGHPUT", "DESTINATION"}};
  for (const auto& r : restores_) {
    rows.push_back(
        {"  " + r.backup.name,
         r.backup.name == kFullName ? "demo-vm-restored-full" : "demo-vm-restored-incr",
         FormatDuration(r.seconds), FormatBytes(r.backup.bytes_total), FormatBytes(r.bytes_written),
         FormatRate(r.seconds > 0 ? static_cast<double>(r.backup.bytes_total) / r.seconds : 0),
         r.dest_dir});
  }
  out << FormatTable(rows);
  out << "\nChecks\n";
  rows.clear();
  for (const Check& c : checks_) rows.push_back({c.ok ? "  [ok]  " : "  [FAIL]", c.name, c.detail});
  out << FormatTable(rows);
  for (const std::string& n : notes_) out << "note: " << n << "\n";
  out << "\n";
  if (ok) {
    out << "demo: all " << checks_.size() << " checks passed in " << FormatDuration(total_seconds)
        << "\n";
  } else {
    out << "demo: FAILED: ";
    int failed = 0;
    for (const Check& c : checks_) failed += c.ok ? 0 : 1;
    out << failed << " of " << checks_.size() << " checks failed; work directory kept at "
        << work_.string() << "\n";
  }
  if (ok && keep_) out << "demo: work directory kept at " << work_.string() << "\n";
  std::cout << out.str() << std::flush;
}

int Demo::Run() {
  double t0 = MonotonicSeconds();
  keep_ = args_.Has("keep");
  if (!args_.positionals().empty()) {
    return ctx_.UsageError("demo: unexpected argument '" + args_.positionals()[0] + "'", "demo");
  }
  uint64_t size_mib = 512;
  if (auto s = args_.Get("size-mib")) {
    char* end = nullptr;
    unsigned long long v = std::strtoull(s->c_str(), &end, 10);
    if (s->empty() || *end != '\0' || v < 16 || v > 1024 * 1024) {
      return ctx_.UsageError("demo: --size-mib expects a number from 16 to 1048576", "demo");
    }
    size_mib = v;
  }
  size_ = size_mib * kMiB;
  mke2fs_ = FindProgram("mke2fs");
  e2fsck_ = FindProgram("e2fsck");
  debugfs_ = FindProgram("debugfs");
  if (mke2fs_.empty() || e2fsck_.empty()) {
    return Fail(
        vmbackup::FailedPreconditionError("mke2fs and e2fsck are required (install e2fsprogs)"),
        "prerequisites");
  }

  Status st = PrepareWorkDir();
  if (!st.ok()) return Fail(st, "work directory");

  // (1) The demo VM.
  Say(ctx_, "[1/5] creating demo VM in " + (work_ / "vm").string() + " (2 disks of " +
                FormatBytes(size_) + ")");
  st = CreateVm();
  if (!st.ok()) return Fail(st, "create VM");
  Say(ctx_, "      rootdisk: ext4 with " + std::to_string(tree_files_) + " files (" +
                FormatBytes(tree_bytes_) + "), allocated " +
                FormatBytes(AllocatedBytes(volumes_["rootdisk"])));
  Say(ctx_, "      datadisk: " + std::to_string(layout_.regions[0]) + " random (" +
                FormatBytes(layout_.bytes[0]) + "), " + std::to_string(layout_.regions[1]) +
                " compressible (" + FormatBytes(layout_.bytes[1]) + "), " +
                std::to_string(layout_.regions[2]) + " zero (" + FormatBytes(layout_.bytes[2]) +
                "), " + std::to_string(layout_.regions[3]) + " hole (" +
                FormatBytes(layout_.bytes[3]) + ") regions");

  // (2) Full backup.
  std::string target_dir = (work_ / "target").string();
  std::error_code ec;
  fs::create_directories(target_dir, ec);
  if (ec)
    return Fail(vmbackup::InternalError("mkdir " + target_dir + ": " + ec.message()), "target");
  // The demo's target is its own new directory: unencrypted unless --encryption says otherwise.
  if (ctx_.options.encryption.empty()) ctx_.options.encryption = "none";
  auto target = OpenTarget(ctx_, target_dir);
  if (!target.ok()) return Fail(target.status(), "open target " + target_dir);
  StatusOr<std::map<std::string, std::string>> hashes_full = HashFiles(volumes_);
  if (!hashes_full.ok()) return Fail(hashes_full.status(), "hash source volumes");
  Say(ctx_, "[2/5] full backup " + std::string(kFullName) + " to " + target_dir);
  StatusOr<vmbackup::BackupSpec> spec = vmbackup::BackupSpecFromVmDirectory(vm_dir_.string());
  if (!spec.ok()) return Fail(spec.status(), "read VM directory");
  spec->name = kFullName;
  StatusOr<BackupRun> full = RunBackupJob(ctx_, *target, *spec);
  if (!full.ok()) return Fail(full.status(), "full backup");
  backups_.push_back(*full);

  // (3) Change ~1 % of the data disk and a file in the ext4 root disk, then an incremental backup.
  StatusOr<std::vector<vmbackup::Extent>> changed =
      ChangeDataDisk(volumes_["datadisk"], size_, rng_);
  if (!changed.ok()) return Fail(changed.status(), "change datadisk");
  uint64_t changed_bytes = changed->size() * kChangeSize;
  std::string rootdisk_change = "no root disk change (debugfs not found)";
  if (!debugfs_.empty()) {
    fs::path file = work_ / "incremental.log";
    std::string data(256 << 10, '\0');
    FillCompressible(rng_, data.data(), data.size());
    st = WriteFile(file, data);
    if (!st.ok()) return Fail(st, "write " + file.string());
    StatusOr<ProgramResult> r =
        RunTool({debugfs_, "-w", "-R", "write \"" + file.string() + "\" incremental.log",
                 volumes_["rootdisk"]});
    if (!r.ok()) return Fail(r.status(), "debugfs");
    if (r->exit_code == 0 && r->output.find("Allocated inode") != std::string::npos) {
      rootdisk_change = "wrote /incremental.log (" + FormatBytes(data.size()) + ") into the ext4";
    } else {
      rootdisk_change = "root disk unchanged";
      notes_.push_back("debugfs could not write into the root disk: " + Trim(r->output));
    }
    fs::remove(file);
  } else {
    notes_.push_back("debugfs not found: the root disk was not changed before the incremental");
  }
  Say(ctx_, "[3/5] changed " + std::to_string(changed->size()) + " x 64 KiB of datadisk (" +
                Percent(changed_bytes, size_) + "), " + rootdisk_change);
  StatusOr<std::map<std::string, std::string>> hashes_incr = HashFiles(volumes_);
  if (!hashes_incr.ok()) return Fail(hashes_incr.status(), "hash source volumes");
  Say(ctx_, "      incremental backup " + std::string(kIncrName) + " (parent " + kFullName +
                (args_.Has("with-dirty-map") ? ", dirty map for datadisk)" : ")"));
  spec->name = kIncrName;
  spec->parent = kFullName;
  if (args_.Has("with-dirty-map")) {
    for (auto& v : spec->volumes) {
      if (v.name != "datadisk") continue;
      v.has_dirty_map = true;
      v.dirty_ranges = *changed;
    }
  }
  StatusOr<BackupRun> incr = RunBackupJob(ctx_, *target, *spec);
  if (!incr.ok()) return Fail(incr.status(), "incremental backup");
  backups_.push_back(*incr);

  // The catalogue lists both backups.
  StatusOr<vmbackup::BackupList> list = (*target)->ListBackups();
  if (!list.ok()) return Fail(list.status(), "list backups");
  {
    Check c{"list shows both backups", false, ""};
    int found = 0;
    for (const auto& b : list->backups) found += (b.name == kFullName || b.name == kIncrName);
    c.ok = found == 2 && list->damaged.empty();
    c.detail = std::to_string(list->backups.size()) + " listed, " +
               std::to_string(list->damaged.size()) + " damaged";
    checks_.push_back(std::move(c));
  }

  // (4) Restore both as new VMs.
  Say(ctx_, "[4/5] restoring both backups as new VMs");
  struct RestoreJob {
    const char* backup;
    const char* new_name;
    const char* dir;
    const std::map<std::string, std::string>* hashes;
  };
  const RestoreJob jobs[] = {
      {kFullName, "demo-vm-restored-full", "restore-full", &*hashes_full},
      {kIncrName, "demo-vm-restored-incr", "restore-incr", &*hashes_incr},
  };
  for (const RestoreJob& j : jobs) {
    vmbackup::RestoreSpec rs;
    rs.backup = j.backup;
    rs.dest_dir = (work_ / j.dir).string();
    rs.new_vm_name = j.new_name;
    std::error_code ec;
    fs::create_directories(rs.dest_dir, ec);
    StatusOr<RestoreRun> run = RunRestorePlan(ctx_, *target, std::move(rs));
    if (!run.ok()) return Fail(run.status(), std::string("restore ") + j.backup);
    restores_.push_back(*run);
  }

  // (5) Verify.
  Say(ctx_, "[5/5] verifying restored volumes (SHA-256, e2fsck -fn, vm.json)");
  for (size_t i = 0; i < restores_.size(); ++i) {
    Verify(restores_[i], *jobs[i].hashes, jobs[i].new_name);
  }

  bool ok = true;
  for (const Check& c : checks_) ok &= c.ok;
  PrintReport(MonotonicSeconds() - t0);
  if (ok && !keep_) Cleanup();
  return ok ? kExitOk : kExitFailure;
}

}  // namespace

int CmdDemo(Context& ctx, const ParsedArgs& args) {
  Demo demo(ctx, args);
  return demo.Run();
}

}  // namespace vmbackupctl
