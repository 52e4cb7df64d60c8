// vmbackup_concurrent_jobs: many backups and restores at once in one process (issue #10).
//
// Generates N distinct synthetic volumes (benchmarks/synthetic.h: 4 MiB regions cycling random,
// compressible, zeros, holes; a different seed per volume, so nothing deduplicates across them) and
// measures, each phase on a Runtime of its own shared by all of the phase's jobs:
//   single-backup   ONE BackupJob holding all N volumes, to a fresh repository (the baseline);
//   single-restore  ONE RestorePlan restoring R of those volumes (the restore baseline);
//   many-backup     N concurrent BackupJobs, one volume each (VM names vm-00, vm-01, ...), to
//                   another fresh repository;
//   many-restore    R concurrent RestorePlans of R of those backups, one each.
// For each phase: wall time from the first Start() to the last Wait(), aggregate throughput
// (logical volume bytes / wall time), peak thread count (/proc/self/status "Threads:" sampled every
// 10 ms by a thread of this program, which is not counted), peak RSS (the larger of the largest
// VmRSS sample and VmHWM). At the start of each phase the heap is trimmed (malloc_trim) and VmHWM
// is reset through /proc/self/clear_refs; the RSS left then is reported as the phase's base.
// Restored files are compared byte for byte with their sources; a mismatch or any failed job makes
// the program exit with status 1. Goals (issue #10: concurrent >= 90 % of the single job's
// throughput, peak RSS <= 512 MiB) are reported, never enforced.
//
// Usage: vmbackup_concurrent_jobs --target DIR|JSON [--jobs 32] [--size-mib 256] [--restores 8]
//          [--work-dir DIR] [--json FILE] [--worker-threads 0] [--job-threads 0] [--in-flight-mib 0]
//          [--between-cmd CMD] [--keep] [--prepare-only] [--single-first]
// --target: a local directory (each phase's repository goes to a fresh subdirectory of it) or a
//   backup-target setting JSON such as {"type":"s3",...} (each phase: "prefix" + "/<run>-<phase>").
// Order: the concurrent phases run first, in a fresh process, so that their peak RSS is not
//   raised by what the single-job phases left behind; --single-first runs the baseline first.
// --between-cmd: shell command run after the first pair of phases, with VMB_PHASE_PREFIX (S3) or
//   VMB_PHASE_DIR (local) set to that phase's repository, e.g. to delete it from a small S3 server.
//   Local repositories are removed by the program itself unless --keep.
// --prepare-only: generate the volumes (kept in <work-dir>/volumes and reused by later runs of the
//   same size) and exit.
// Only the public API (include/vmbackup/) is used; the program links the shared library.
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fcntl.h>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "synthetic.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string target;
  int jobs = 32;
  uint64_t size_mib = 256;
  int restores = 8;
  std::string work_dir;
  std::string json;
  int worker_threads = 0;
  int job_threads = 0;
  uint64_t in_flight_mib = 0;
  std::string between_cmd;
  bool keep = false;
  bool prepare_only = false;
  bool single_first = false;
};

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(
      stderr,
      "vmbackup_concurrent_jobs: %s\n"
      "usage: vmbackup_concurrent_jobs --target DIR|JSON [--jobs N] [--size-mib M] "
      "[--restores R] [--work-dir DIR] [--json FILE] [--worker-threads W] [--job-threads J] "
      "[--in-flight-mib B] [--between-cmd CMD] [--keep] [--prepare-only] [--single-first]\n",
      why.c_str());
  std::exit(2);
}

// Fails the benchmark at once; _Exit because jobs may still be running on library threads.
[[noreturn]] void Die(const std::string& why) {
  std::fflush(stdout);
  std::fprintf(stderr, "vmbackup_concurrent_jobs: FAILED: %s\n", why.c_str());
  std::fflush(stderr);
  std::_Exit(1);
}

uint64_t ParseCount(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0) Usage("bad number for " + flag + ": '" + v + "'");
  return n;
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i], v;
    const auto eq = a.find('=');
    const bool has_eq = a.rfind("--", 0) == 0 && eq != std::string::npos;
    if (has_eq) {
      v = a.substr(eq + 1);
      a = a.substr(0, eq);
    }
    auto value = [&]() -> std::string {
      if (has_eq) return v;
      if (i + 1 >= argc) Usage("missing value for " + a);
      return argv[++i];
    };
    if (a == "--target") {
      o.target = value();
    } else if (a == "--jobs") {
      o.jobs = static_cast<int>(ParseCount(a, value()));
    } else if (a == "--size-mib") {
      o.size_mib = ParseCount(a, value());
    } else if (a == "--restores") {
      o.restores = static_cast<int>(ParseCount(a, value()));
    } else if (a == "--work-dir") {
      o.work_dir = value();
    } else if (a == "--json") {
      o.json = value();
    } else if (a == "--worker-threads") {
      o.worker_threads = static_cast<int>(ParseCount(a, value()));
    } else if (a == "--job-threads") {
      o.job_threads = static_cast<int>(ParseCount(a, value()));
    } else if (a == "--in-flight-mib") {
      o.in_flight_mib = ParseCount(a, value());
    } else if (a == "--between-cmd") {
      o.between_cmd = value();
    } else if (a == "--keep") {
      o.keep = true;
    } else if (a == "--prepare-only") {
      o.prepare_only = true;
    } else if (a == "--single-first") {
      o.single_first = true;
    } else {
      Usage("unknown argument '" + a + "'");
    }
  }
  if (o.target.empty()) Usage("--target is required");
  if (o.jobs < 1 || o.jobs > 999) Usage("--jobs must be 1..999");
  if (o.size_mib == 0 || o.size_mib % (kRegion / kMiB) != 0)
    Usage("--size-mib must be a positive multiple of 4");
  if (o.restores < 0 || o.restores > o.jobs) Usage("--restores must be 0..jobs");
  return o;
}

// ---- process sampling ----------------------------------------------------------------------------

struct ProcStatus {
  int threads = 0;
  uint64_t rss = 0;  // VmRSS, bytes
  uint64_t hwm = 0;  // VmHWM, bytes
};

ProcStatus ReadProcStatus() {
  ProcStatus s;
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Threads:", 0) == 0) {
      s.threads = std::atoi(line.c_str() + 8);
    } else if (line.rfind("VmRSS:", 0) == 0) {
      s.rss = std::strtoull(line.c_str() + 6, nullptr, 10) * kKiB;
    } else if (line.rfind("VmHWM:", 0) == 0) {
      s.hwm = std::strtoull(line.c_str() + 6, nullptr, 10) * kKiB;
    }
  }
  return s;
}

// Resets VmHWM to the current RSS (Linux >= 4.0). False when the kernel refuses.
bool ResetPeakRss() {
  int fd = ::open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::write(fd, "5", 1) == 1;
  ::close(fd);
  return ok;
}

struct ProcUsage {
  int base_threads = 0;  // threads of the program when the phase started (before the sampler)
  int peak_threads = 0;  // largest sample, sampler not counted
  uint64_t base_rss = 0;
  uint64_t peak_rss_sampled = 0;  // largest VmRSS sample
  uint64_t peak_rss_hwm = 0;      // VmHWM at the end (0 when it could not be reset)
  double cpu_seconds = 0;         // user + system time of the process during the phase
  double sys_seconds = 0;         // of which system time
  uint64_t minor_faults = 0;      // page faults served without I/O (fresh or reused pages)
};

// {user, system} CPU seconds of the process so far.
uint64_t MinorFaults() {
  struct rusage ru;
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<uint64_t>(ru.ru_minflt);
}

std::pair<double, double> CpuSeconds() {
  struct rusage ru;
  ::getrusage(RUSAGE_SELF, &ru);
  auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return {s(ru.ru_utime), s(ru.ru_stime)};
}

// Samples /proc/self/status every 10 ms from its own thread while alive.
class Monitor {
 public:
  Monitor() {
    // Give the heap the previous phase freed back to the kernel first (glibc keeps it in its arenas
    // otherwise), so that a phase's peak is not the previous phase's leftovers.
    ::malloc_trim(0);
    hwm_reset_ = ResetPeakRss();
    const ProcStatus s = ReadProcStatus();
    u_.base_threads = s.threads;
    u_.base_rss = s.rss;
    cpu0_ = CpuSeconds();
    faults0_ = MinorFaults();
    thread_ = std::thread([this] { Loop(); });
  }
  ~Monitor() { Stop(); }

  ProcUsage Stop() {
    if (thread_.joinable()) {
      stop_ = true;
      thread_.join();
      const ProcStatus s = ReadProcStatus();
      u_.peak_rss_sampled = std::max(u_.peak_rss_sampled, s.rss);
      if (hwm_reset_) u_.peak_rss_hwm = s.hwm;
      const auto [user, sys] = CpuSeconds();
      u_.cpu_seconds = user + sys - cpu0_.first - cpu0_.second;
      u_.sys_seconds = sys - cpu0_.second;
      u_.minor_faults = MinorFaults() - faults0_;
    }
    return u_;
  }

 private:
  void Loop() {
    while (!stop_) {
      const ProcStatus s = ReadProcStatus();
      u_.peak_threads = std::max(u_.peak_threads, s.threads - 1);
      u_.peak_rss_sampled = std::max(u_.peak_rss_sampled, s.rss);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  ProcUsage u_;
  bool hwm_reset_ = false;
  std::pair<double, double> cpu0_;
  uint64_t faults0_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// ---- phases --------------------------------------------------------------------------------------

struct PhaseResult {
  std::string name;
  int jobs = 0;          // BackupJobs / RestorePlans run at once
  int volumes = 0;       // volumes moved
  uint64_t bytes = 0;    // logical bytes of those volumes
  double seconds = 0;    // first Start() to last Wait()
  double job_min_s = 0;  // fastest job, its own Start() to its Wait() returning
  double job_max_s = 0;  // slowest job
  uint64_t stored = 0;   // backups: bytes the phase added to the target after compression
  ProcUsage usage;
  double MiBps() const { return seconds > 0 ? static_cast<double>(bytes) / kMiB / seconds : 0; }
};

struct Context {
  Options opt;
  bool s3 = false;
  TargetConfig base;  // parsed --target
  std::string run;    // unique tag of this run
  std::string state_dir;
  std::vector<std::string> volumes;  // source paths
  uint64_t volume_size = 0;
};

std::string VolumeName(int i) {
  char b[16];
  std::snprintf(b, sizeof b, "disk%02d", i);
  return b;
}

std::string VmName(int i) {
  char b[16];
  std::snprintf(b, sizeof b, "vm-%02d", i);
  return b;
}

// Where the repository of `phase` lives: a directory (local) or a key prefix (S3).
std::string PhaseLocation(const Context& c, const std::string& phase) {
  if (c.s3) return (c.base.prefix.empty() ? "" : c.base.prefix + "/") + c.run + "-" + phase;
  return c.base.endpoint + "/" + c.run + "-" + phase;
}

std::shared_ptr<BackupTarget> OpenPhaseTarget(const Context& c, const std::string& phase,
                                              const std::shared_ptr<Runtime>& rt) {
  TargetConfig cfg = c.base;
  if (c.s3) {
    cfg.prefix = PhaseLocation(c, phase);
  } else {
    cfg.endpoint = PhaseLocation(c, phase);
    fs::create_directories(cfg.endpoint);
  }
  TargetOptions to;
  to.runtime = rt;
  to.state_dir = c.state_dir;
  auto t = BackupTarget::Open(cfg, to);
  if (!t.ok()) Die("open target for " + phase + ": " + t.status().ToString());
  return *t;
}

std::shared_ptr<Runtime> NewRuntime(const Context& c) {
  RuntimeOptions ro;
  ro.worker_threads = c.opt.worker_threads;
  ro.job_threads = c.opt.job_threads;
  return Runtime::Create(ro);
}

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Runs `jobs` (BackupJob or RestorePlan) at once: Start() them all, then Wait() for each. Fills the
// wall time and the fastest and slowest job's own time.
template <typename Job>
void RunAll(const std::vector<std::unique_ptr<Job>>& jobs, const std::vector<std::string>& labels,
            PhaseResult* r) {
  std::vector<double> ends(jobs.size(), 0);
  std::vector<Status> st(jobs.size());
  const Clock::time_point t0 = Clock::now();
  for (size_t i = 0; i < jobs.size(); ++i) {
    st[i] = jobs[i]->Start();
    if (!st[i].ok()) Die(labels[i] + ": Start: " + st[i].ToString());
  }
  // Wait() in order: the wall time is when the last one has ended. Each job's own duration comes
  // from its progress (elapsed_seconds of the final report), which needs no extra threads.
  for (size_t i = 0; i < jobs.size(); ++i) {
    st[i] = jobs[i]->Wait();
    ends[i] = jobs[i]->progress().elapsed_seconds;
  }
  r->seconds = Since(t0);
  std::string failed;
  for (size_t i = 0; i < jobs.size(); ++i)
    if (!st[i].ok()) failed += "\n  " + labels[i] + ": " + st[i].ToString();
  if (!failed.empty()) Die(r->name + ": jobs failed:" + failed);
  r->job_min_s = *std::min_element(ends.begin(), ends.end());
  r->job_max_s = *std::max_element(ends.begin(), ends.end());
}

// Backs up `groups` (one BackupJob per group of volume indexes) to the repository of `phase`.
PhaseResult BackupPhase(const Context& c, const std::string& phase,
                        const std::vector<std::vector<int>>& groups,
                        std::vector<std::string>* names) {
  PhaseResult r;
  r.name = phase;
  r.jobs = static_cast<int>(groups.size());
  std::vector<std::unique_ptr<BackupJob>> jobs;
  std::vector<std::string> labels;
  ProcUsage usage;
  {
    Monitor mon;
    {
      auto rt = NewRuntime(c);
      auto target = OpenPhaseTarget(c, phase, rt);
      for (size_t g = 0; g < groups.size(); ++g) {
        const std::string vm = groups.size() == 1 ? std::string("vm-all") : VmName(groups[g][0]);
        BackupSpec spec;
        spec.name = vm + "-" + c.run;
        spec.vm_metadata_json = R"({"name": ")" + vm + R"("})";
        for (int v : groups[g]) spec.volumes.push_back({VolumeName(v), c.volumes[v], false, {}});
        spec.max_in_flight_bytes = c.opt.in_flight_mib * kMiB;
        r.volumes += static_cast<int>(groups[g].size());
        r.bytes += groups[g].size() * c.volume_size;
        auto job = BackupJob::Create(target, std::move(spec));
        if (!job.ok()) Die(phase + ": create " + vm + ": " + job.status().ToString());
        labels.push_back(vm);
        jobs.push_back(std::move(*job));
      }
      RunAll(jobs, labels, &r);
      for (auto& j : jobs) {
        auto info = j->result();
        if (!info.ok()) Die(phase + ": result of " + j->name() + ": " + info.status().ToString());
        r.stored += info->bytes_stored;
        names->push_back(j->name());
      }
      jobs.clear();
    }  // jobs, target and runtime gone: their threads are joined inside the phase
    usage = mon.Stop();
  }
  r.usage = usage;
  return r;
}

// Compares two files byte for byte (restored bytes that differ fail the benchmark).
Status SameBytes(const std::string& a, const std::string& b) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  if (!fa) return NotFoundError("cannot open " + a);
  if (!fb) return NotFoundError("cannot open " + b);
  std::vector<char> ba(4 * kMiB), bb(4 * kMiB);
  uint64_t off = 0;
  while (true) {
    fa.read(ba.data(), static_cast<std::streamsize>(ba.size()));
    fb.read(bb.data(), static_cast<std::streamsize>(bb.size()));
    const auto na = fa.gcount(), nb = fb.gcount();
    if (na != nb) return DataLossError(b + ": size differs from " + a);
    if (std::memcmp(ba.data(), bb.data(), static_cast<size_t>(na)) != 0) {
      size_t k = 0;
      while (ba[k] == bb[k]) ++k;
      return DataLossError(b + " differs from " + a + " at byte " + std::to_string(off + k));
    }
    off += static_cast<uint64_t>(na);
    if (na == 0) return Status::Ok();
  }
}

// Restores with one RestorePlan per entry of `plans`: {backup name, volume indexes}. Restored
// files go under `dest`, are checked against their sources, then deleted.
PhaseResult RestorePhase(const Context& c, const std::string& phase, const std::string& repo_phase,
                         const std::vector<std::pair<std::string, std::vector<int>>>& plans) {
  PhaseResult r;
  r.name = phase;
  r.jobs = static_cast<int>(plans.size());
  const std::string dest = c.opt.work_dir + "/" + c.run + "-" + phase;
  RemoveTree(dest);
  fs::create_directories(dest);
  std::vector<std::pair<std::string, std::string>> check;  // (source, restored)
  ProcUsage usage;
  {
    Monitor mon;
    {
      auto rt = NewRuntime(c);
      auto target = OpenPhaseTarget(c, repo_phase, rt);
      std::vector<std::unique_ptr<RestorePlan>> jobs;
      std::vector<std::string> labels;
      for (size_t p = 0; p < plans.size(); ++p) {
        RestoreSpec spec;
        spec.backup = plans[p].first;
        for (int v : plans[p].second) {
          const std::string out = dest + "/" + std::to_string(p) + "-" + VolumeName(v) + ".img";
          spec.volumes.push_back({VolumeName(v), out});
          check.emplace_back(c.volumes[v], out);
          r.volumes += 1;
          r.bytes += c.volume_size;
        }
        auto plan = RestorePlan::Create(target, std::move(spec));
        if (!plan.ok()) Die(phase + ": create " + plans[p].first + ": " + plan.status().ToString());
        labels.push_back(plans[p].first);
        jobs.push_back(std::move(*plan));
      }
      RunAll(jobs, labels, &r);
    }
    usage = mon.Stop();
  }
  r.usage = usage;
  for (const auto& [src, out] : check) {
    Status st = SameBytes(src, out);
    if (!st.ok()) Die(phase + ": RESTORED BYTES WRONG: " + st.ToString());
  }
  std::fprintf(stderr, "  %s: %zu restored volumes identical to their sources\n", phase.c_str(),
               check.size());
  RemoveTree(dest);
  return r;
}

// ---- setup ---------------------------------------------------------------------------------------

// Creates the volumes, or keeps those a previous run made with the same size (volumes/params).
void MakeVolumes(Context* c) {
  const std::string dir = c->opt.work_dir + "/volumes";
  fs::create_directories(dir);
  const std::string params = "mixed-v1 size=" + std::to_string(c->volume_size);
  std::string have;
  {
    std::ifstream in(dir + "/params");
    std::getline(in, have);
  }
  int made = 0;
  const auto t0 = Clock::now();
  for (int i = 0; i < c->opt.jobs; ++i) {
    const std::string path = dir + "/" + VolumeName(i) + ".img";
    c->volumes.push_back(path);
    std::error_code ec;
    if (have == params && fs::file_size(path, ec) == c->volume_size && !ec) continue;
    if (have != params) {
      std::ofstream(dir + "/params") << "";  // invalid while (re)generating
      have = "";
    }
    Status st = MakeMixedVolume(path, c->volume_size, 0xC0C0 + static_cast<uint64_t>(i));
    if (!st.ok()) Die("generate " + path + ": " + st.ToString());
    ++made;
  }
  std::ofstream(dir + "/params") << params << "\n";
  // New volumes are still being written back: that would land in the first measured phase (a
  // local run's first restores took 4.8 s of system time instead of 1.3 s).
  if (made > 0) ::sync();
  std::fprintf(stderr, "volumes: %d x %" PRIu64 " MiB in %s (%d generated in %.1f s)\n",
               c->opt.jobs, c->opt.size_mib, dir.c_str(), made, Since(t0));
}

std::string RunTag() {
  char b[64];
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  std::snprintf(
      b, sizeof b, "cj%lld-%d",
      static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(now).count()),
      static_cast<int>(::getpid()));
  return b;
}

// ---- report --------------------------------------------------------------------------------------

double Mib(uint64_t b) { return static_cast<double>(b) / kMiB; }

void PrintTable(const std::vector<PhaseResult>& rs) {
  std::printf(
      "\n| phase          | jobs | volumes |  GiB  | seconds |  MiB/s | job min-max s | threads "
      "(base) | RSS MiB peak (base)  | CPU s (sys)  | faults k |\n"
      "|----------------|------|---------|-------|---------|--------|---------------|----------"
      "------|----------------------|--------------|----------|\n");
  for (const auto& r : rs) {
    std::printf(
        "| %-14s | %4d | %7d | %5.2f | %7.2f | %6.1f | %5.1f - %5.1f | %8d (%3d) | %8.0f "
        "(%6.0f)    | %5.1f (%4.1f) | %8.0f |\n",
        r.name.c_str(), r.jobs, r.volumes, static_cast<double>(r.bytes) / kGiB, r.seconds,
        r.MiBps(), r.job_min_s, r.job_max_s, r.usage.peak_threads, r.usage.base_threads,
        Mib(std::max(r.usage.peak_rss_sampled, r.usage.peak_rss_hwm)), Mib(r.usage.base_rss),
        r.usage.cpu_seconds, r.usage.sys_seconds, static_cast<double>(r.usage.minor_faults) / 1e3);
  }
}

struct Verdict {
  std::string what;
  double ratio = 0;
  bool throughput_ok = false;
  bool rss_ok = false;
  uint64_t peak_rss = 0;
  int peak_threads = 0;
};

Verdict Judge(const std::string& what, const PhaseResult& single, const PhaseResult& many) {
  Verdict v;
  v.what = what;
  v.ratio = single.MiBps() > 0 ? many.MiBps() / single.MiBps() : 0;
  v.throughput_ok = v.ratio >= 0.9;
  v.peak_rss = std::max(many.usage.peak_rss_sampled, many.usage.peak_rss_hwm);
  v.rss_ok = v.peak_rss <= 512 * kMiB;
  v.peak_threads = many.usage.peak_threads;
  return v;
}

std::string JsonEscape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    if (ch == '"' || ch == '\\') {
      o += '\\';
      o += ch;
    } else if (static_cast<unsigned char>(ch) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", ch);
      o += b;
    } else {
      o += ch;
    }
  }
  return o;
}

void WriteJson(const Context& c, const std::vector<PhaseResult>& rs,
               const std::vector<Verdict>& vs) {
  FILE* f = std::fopen(c.opt.json.c_str(), "w");
  if (f == nullptr) Die("cannot write " + c.opt.json + ": " + std::strerror(errno));
  char host[256] = "";
  ::gethostname(host, sizeof host - 1);
  std::fprintf(f,
               "{\n  \"benchmark\": \"concurrent_jobs\",\n  \"run\": \"%s\",\n  \"host\": \"%s\",\n"
               "  \"cores\": %u,\n  \"target\": \"%s\",\n  \"target_type\": \"%s\",\n"
               "  \"jobs\": %d,\n  \"size_mib\": %" PRIu64
               ",\n  \"restores\": %d,\n"
               "  \"worker_threads\": %d,\n  \"job_threads\": %d,\n  \"in_flight_mib\": %" PRIu64
               ",\n  \"phases\": [",
               c.run.c_str(), JsonEscape(host).c_str(), std::thread::hardware_concurrency(),
               JsonEscape(c.s3 ? c.base.ToRedactedJson() : c.base.endpoint).c_str(),
               c.s3 ? "s3" : "file", c.opt.jobs, c.opt.size_mib, c.opt.restores,
               c.opt.worker_threads, c.opt.job_threads, c.opt.in_flight_mib);
  for (size_t i = 0; i < rs.size(); ++i) {
    const auto& r = rs[i];
    std::fprintf(f,
                 "%s\n    {\"name\": \"%s\", \"jobs\": %d, \"volumes\": %d, \"bytes\": %" PRIu64
                 ", \"seconds\": %.3f, \"mib_per_s\": %.1f, \"job_min_seconds\": %.3f, "
                 "\"job_max_seconds\": %.3f, \"bytes_stored\": %" PRIu64
                 ", \"threads_base\": %d, \"threads_peak\": %d, \"rss_base_bytes\": %" PRIu64
                 ", \"rss_peak_sampled_bytes\": %" PRIu64 ", \"rss_peak_hwm_bytes\": %" PRIu64
                 ", \"cpu_seconds\": %.2f, \"cpu_sys_seconds\": %.2f, \"minor_faults\": %llu}",
                 i ? "," : "", r.name.c_str(), r.jobs, r.volumes, r.bytes, r.seconds, r.MiBps(),
                 r.job_min_s, r.job_max_s, r.stored, r.usage.base_threads, r.usage.peak_threads,
                 r.usage.base_rss, r.usage.peak_rss_sampled, r.usage.peak_rss_hwm,
                 r.usage.cpu_seconds, r.usage.sys_seconds,
                 static_cast<unsigned long long>(r.usage.minor_faults));
  }
  std::fprintf(f, "\n  ],\n  \"goals\": [");
  for (size_t i = 0; i < vs.size(); ++i) {
    const auto& v = vs[i];
    std::fprintf(f,
                 "%s\n    {\"what\": \"%s\", \"throughput_ratio\": %.3f, \"throughput_goal_met\": "
                 "%s, \"peak_threads\": %d, \"peak_rss_bytes\": %" PRIu64 ", \"rss_goal_met\": %s}",
                 i ? "," : "", v.what.c_str(), v.ratio, v.throughput_ok ? "true" : "false",
                 v.peak_threads, v.peak_rss, v.rss_ok ? "true" : "false");
  }
  std::fprintf(f, "\n  ]\n}\n");
  if (std::fclose(f) != 0) Die("cannot write " + c.opt.json);
}

int Main(int argc, char** argv) {
  Context c;
  c.opt = ParseArgs(argc, argv);
  c.volume_size = c.opt.size_mib * kMiB;
  c.run = RunTag();
  if (c.opt.target[0] == '{') {
    auto cfg = ParseTargetConfig(c.opt.target);
    if (!cfg.ok()) Usage("--target: " + cfg.status().ToString());
    c.base = *cfg;
    if (c.base.type == TargetConfig::Type::kFile) {
      c.base.endpoint = fs::absolute(c.base.endpoint).lexically_normal().string();
    }
    c.s3 = c.base.type != TargetConfig::Type::kFile;
    if (c.base.type == TargetConfig::Type::kNfs) Usage("--target: nfs is not supported here");
  } else {
    c.base.type = TargetConfig::Type::kFile;
    c.base.endpoint = fs::absolute(c.opt.target).lexically_normal().string();
  }
  if (c.opt.work_dir.empty()) {
    const char* t = std::getenv("TMPDIR");
    c.opt.work_dir = std::string(t && *t ? t : "/tmp") + "/vmbackup-concurrent";
  }
  c.opt.work_dir = fs::absolute(c.opt.work_dir).lexically_normal().string();
  fs::create_directories(c.opt.work_dir);
  c.state_dir = c.opt.work_dir + "/state";

  std::fprintf(stderr, "run %s: %d jobs x %" PRIu64 " MiB, %d restores, target %s, %u cores\n",
               c.run.c_str(), c.opt.jobs, c.opt.size_mib, c.opt.restores,
               c.s3 ? c.base.ToRedactedJson().c_str() : c.base.endpoint.c_str(),
               std::thread::hardware_concurrency());
  MakeVolumes(&c);
  ::sync();
  if (c.opt.prepare_only) return 0;

  std::vector<PhaseResult> rs;
  const int n = c.opt.jobs, nr = c.opt.restores;

  PhaseResult single_b, single_r, many_b, many_r;
  // ONE job with all volumes, then ONE plan restoring R of them.
  auto run_single = [&] {
    std::vector<std::vector<int>> all(1);
    for (int i = 0; i < n; ++i) all[0].push_back(i);
    std::vector<std::string> big;
    std::fprintf(stderr, "single-backup: 1 job, %d volumes...\n", n);
    single_b = BackupPhase(c, "single-backup", all, &big);
    if (nr > 0) {
      std::vector<int> first_r;
      for (int i = 0; i < nr; ++i) first_r.push_back(i);
      std::fprintf(stderr, "single-restore: 1 plan, %d volumes...\n", nr);
      single_r = RestorePhase(c, "single-restore", "single-backup", {{big[0], first_r}});
    }
    return std::string("single-backup");
  };
  // N jobs with one volume each, then R plans restoring one backup each.
  auto run_many = [&] {
    std::vector<std::vector<int>> each;
    for (int i = 0; i < n; ++i) each.push_back({i});
    std::vector<std::string> names;
    std::fprintf(stderr, "many-backup: %d jobs...\n", n);
    many_b = BackupPhase(c, "many-backup", each, &names);
    if (nr > 0) {
      std::vector<std::pair<std::string, std::vector<int>>> plans;
      for (int i = 0; i < nr; ++i) plans.push_back({names[i], {i}});
      std::fprintf(stderr, "many-restore: %d plans...\n", nr);
      many_r = RestorePhase(c, "many-restore", "many-backup", plans);
    }
    return std::string("many-backup");
  };
  // The first pair's repository is handed to --between-cmd (local ones are removed here).
  const std::string first = c.opt.single_first ? run_single() : run_many();
  if (!c.opt.between_cmd.empty()) {
    const std::string loc = PhaseLocation(c, first);
    ::setenv(c.s3 ? "VMB_PHASE_PREFIX" : "VMB_PHASE_DIR", loc.c_str(), 1);
    std::fprintf(stderr, "between: %s\n", c.opt.between_cmd.c_str());
    const int rc = std::system(c.opt.between_cmd.c_str());
    if (rc != 0) std::fprintf(stderr, "  (exit status %d, continuing)\n", rc);
  }
  if (!c.s3 && !c.opt.keep) RemoveTree(PhaseLocation(c, first));
  const std::string second = c.opt.single_first ? run_many() : run_single();
  if (!c.s3 && !c.opt.keep) RemoveTree(PhaseLocation(c, second));
  // Table rows in the order the phases ran.
  if (c.opt.single_first) {
    rs.push_back(single_b);
    if (nr > 0) rs.push_back(single_r);
  }
  rs.push_back(many_b);
  if (nr > 0) rs.push_back(many_r);
  if (!c.opt.single_first) {
    rs.push_back(single_b);
    if (nr > 0) rs.push_back(single_r);
  }

  std::printf("concurrent_jobs: %d volumes x %" PRIu64
              " MiB (mixed: 1/4 random, 1/4 compressible, "
              "1/4 zeros, 1/4 holes), %s target, %u cores, run %s\n",
              n, c.opt.size_mib, c.s3 ? "S3" : "local", std::thread::hardware_concurrency(),
              c.run.c_str());
  PrintTable(rs);
  std::vector<Verdict> vs;
  vs.push_back(Judge("backup", single_b, many_b));
  if (nr > 0) vs.push_back(Judge("restore", single_r, many_r));
  std::printf("\nGoals of issue #10 (reported, not enforced):\n");
  for (const auto& v : vs) {
    std::printf(
        "  %-7s: concurrent / single throughput = %.2f (goal >= 0.90: %s); peak RSS %.0f MiB "
        "(goal <= 512: %s); peak threads %d\n",
        v.what.c_str(), v.ratio, v.throughput_ok ? "met" : "MISSED", Mib(v.peak_rss),
        v.rss_ok ? "met" : "MISSED", v.peak_threads);
  }
  std::printf(
      "(threads: peak of /proc/self/status Threads sampled every 10 ms, the sampler not counted; "
      "base = the program's own threads when the phase started)\n");
  std::fflush(stdout);
  if (!c.opt.json.empty()) WriteJson(c, rs, vs);
  return 0;
}

}  // namespace
}  // namespace vmbackup::bench

int main(int argc, char** argv) { return vmbackup::bench::Main(argc, argv); }
