// vmbackup_integ_helper: a child process for the integration suite. It runs one backup or restore
// through the public API so that a test can SIGKILL it mid-way, or run it as another user.
//
//   vmbackup_integ_helper backup  --target DIR --name NAME --volume VOL=LOCATION [--volume ...]
//                                 [--block-size N] [--pack-size N] [--workers N] [--rate-mib N]
//   vmbackup_integ_helper restore --target DIR --name NAME --dest VOL=PATH [--dest ...]
//                                 [--workers N] [--rate-mib N] [--overwrite 1]
//   vmbackup_integ_helper open    --target DIR
//
// --target-json JSON opens a target setting (S3, NFS, ...) instead of a directory. With
// --no-new-threads 1 the helper creates its Runtime, then forbids every new thread of the process
// (a seccomp filter fails clone() of a thread with EPERM and clone3() with ENOSYS, checked by
// trying to start one) before it opens the target: the job must run on the Runtime's threads
// alone, and whatever the library would start, even for a moment, fails instead.
//
// LOCATION is a path or any ParseVolumeLocation form (qemu:SOCKET?node=NODE, rbd:POOL/IMAGE).
//
// Output, one line each, flushed at once:
//   progress <bytes_scanned> <bytes_written>     from the progress callback
//   stats <bytes_new> <bytes_reused>             after a successful backup
//   repository <id>                              "open": the repository id (then Test()'s result)
//   result <CODE_NAME> <message>                 last line; CODE_NAME as StatusCodeName()
// Exit status: 0 on OK, 1 on an error status, 2 on bad usage.
//
// --rate-mib caps the scanning rate (MiB/s) by sleeping in the progress callback; with --workers 1
// the single pipeline worker sleeps, which stands in for a slow disk or network so that a kill
// lands while the job is in flight.
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "vmbackup/vmbackup.h"

namespace {

using namespace vmbackup;  // NOLINT(build/namespaces)

void Line(const std::string& s) {
  std::string one = s;
  for (char& c : one)
    if (c == '\n') c = ' ';
  std::fprintf(stdout, "%s\n", one.c_str());
  std::fflush(stdout);
}

int Finish(const Status& st) {
  Line(std::string("result ") + StatusCodeName(st.code()) + " " + st.message());
  return st.ok() ? 0 : 1;
}

int Usage(const std::string& why) {
  std::fprintf(stderr, "vmbackup_integ_helper: %s\n", why.c_str());
  return 2;
}

bool SplitPair(const std::string& s, std::string* a, std::string* b) {
  auto eq = s.find('=');
  if (eq == std::string::npos || eq == 0) return false;
  *a = s.substr(0, eq);
  *b = s.substr(eq + 1);
  return true;
}

// From now on no thread of this process may start another thread (see the header comment).
bool ForbidNewThreads() {
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),  // glibc falls back to clone()
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),  // flags
      BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
  if (::syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
    return false;
  try {
    std::thread t([] {});
    t.join();
    return false;  // the filter did not stop it
  } catch (const std::system_error&) {
    return true;
  }
}

ProgressCallback MakeProgress(double rate_mib) {
  return [rate_mib](const Progress& p) {
    Line("progress " + std::to_string(p.bytes_scanned) + " " + std::to_string(p.bytes_written));
    if (rate_mib > 0) {
      const double due = static_cast<double>(p.bytes_scanned) / (rate_mib * 1024 * 1024);
      if (due > p.elapsed_seconds)
        std::this_thread::sleep_for(std::chrono::duration<double>(due - p.elapsed_seconds));
    }
    return true;
  };
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage("missing mode");
  const std::string mode = argv[1];
  std::string target_dir, target_json, name;
  bool no_new_threads = false;
  std::vector<std::pair<std::string, std::string>> volumes, dests;
  TargetOptions opts;
  int workers = 0;
  double rate_mib = 0;
  bool overwrite = false;
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) return Usage("flag " + flag + " needs a value");
    const std::string value = argv[++i];
    std::string a, b;
    if (flag == "--target") {
      target_dir = value;
    } else if (flag == "--target-json") {
      target_json = value;
    } else if (flag == "--no-new-threads") {
      no_new_threads = value == "1";
    } else if (flag == "--name") {
      name = value;
    } else if (flag == "--volume" && SplitPair(value, &a, &b)) {
      volumes.emplace_back(a, b);
    } else if (flag == "--dest" && SplitPair(value, &a, &b)) {
      dests.emplace_back(a, b);
    } else if (flag == "--block-size") {
      opts.block_size = static_cast<uint32_t>(std::strtoul(value.c_str(), nullptr, 10));
    } else if (flag == "--pack-size") {
      opts.pack_size = static_cast<uint32_t>(std::strtoul(value.c_str(), nullptr, 10));
    } else if (flag == "--workers") {
      workers = std::atoi(value.c_str());
    } else if (flag == "--overwrite") {
      overwrite = value == "1";
    } else if (flag == "--rate-mib") {
      rate_mib = std::atof(value.c_str());
    } else {
      return Usage("bad flag " + flag + " " + value);
    }
  }
  if (target_dir.empty() == target_json.empty())
    return Usage("one of --target and --target-json is required");
  if (workers > 0 || no_new_threads) {
    RuntimeOptions ro;
    ro.worker_threads = workers;
    opts.runtime = Runtime::Create(ro);
  }
  if (no_new_threads && !ForbidNewThreads())
    return Finish(Status(StatusCode::kInternal, "could not forbid new threads"));
  TargetConfig config;
  config.type = TargetConfig::Type::kFile;
  config.endpoint = target_dir;
  auto target = target_json.empty() ? BackupTarget::Open(config, opts)
                                    : BackupTarget::Open(target_json, opts);
  if (!target.ok()) return Finish(target.status());
  if (mode == "open") {
    Line("repository " + (*target)->repository_id());
    return Finish((*target)->Test());
  }

  if (mode == "backup") {
    if (name.empty() || volumes.empty()) return Usage("backup needs --name and --volume");
    BackupSpec spec;
    spec.name = name;
    spec.vm_metadata_json = R"({"name":"vm1","namespace":"default"})";
    for (auto& [vol, location] : volumes) {
      auto v = ParseVolumeLocation(vol, location);
      if (!v.ok()) return Finish(v.status());
      spec.volumes.push_back(std::move(*v));
    }
    spec.progress = MakeProgress(rate_mib);
    spec.progress_interval_ms = 5;
    auto job = BackupJob::Create(*target, spec);
    if (!job.ok()) return Finish(job.status());
    Status st = (*job)->Run();
    if (st.ok()) {
      auto info = (*job)->result();
      if (info.ok())
        Line("stats " + std::to_string(info->bytes_new) + " " + std::to_string(info->bytes_reused));
    }
    return Finish(st);
  }
  if (mode == "restore") {
    if (name.empty() || dests.empty()) return Usage("restore needs --name and --dest");
    RestoreSpec spec;
    spec.backup = name;
    for (auto& [vol, path] : dests) spec.volumes.push_back(VolumeDestination{vol, path});
    spec.overwrite = overwrite;
    spec.progress = MakeProgress(rate_mib);
    spec.progress_interval_ms = 5;
    auto plan = RestorePlan::Create(*target, spec);
    if (!plan.ok()) return Finish(plan.status());
    return Finish((*plan)->Run());
  }
  return Usage("unknown mode " + mode);
}
