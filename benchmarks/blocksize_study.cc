// vmbackup_blocksize_study: measures what the repository block size costs and saves.
//
// For each block size it creates a synthetic mixed volume (4 MiB regions: random, compressible,
// zeros, holes), takes a full backup into a fresh local repository, rewrites a fraction of the
// volume as scattered writes (default 1 % as 64 KiB writes at 4 KiB-aligned random offsets) and
// takes an incremental backup, once with the host's dirty map (only touched blocks are read) and
// once without (the whole volume is read, hashed and deduplicated). It reports the medians of the
// timings over --reps runs, the stored bytes, the volume index size per TiB from the format, and
// the dedup-index memory per TiB of unique data, measured as the RSS growth of a RepoIndex built
// with that many entries.
//
// Usage: vmbackup_blocksize_study [--size-mib=1024] [--reps=3] [--block-kib=64,128,256,1024,4096]
//          [--fraction=0.01] [--write-kib=64] [--align-kib=4] [--memory-tib=1] [--no-memory]
//          [--no-backup]
// Scratch files go to $TMPDIR (default /tmp) and are removed at exit.
#include <malloc.h>
#include <sys/stat.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/util.h"
#include "repo/format.h"
#include "repo/repository.h"
#include "synthetic.h"
#include "vmbackup/vmbackup.h"

namespace vmbackup::bench {
namespace {

constexpr uint64_t kTiB = 1024 * kGiB;

struct Options {
  uint64_t size = 1 * kGiB;
  int reps = 3;
  std::vector<uint32_t> block_sizes = {64 << 10, 128 << 10, 256 << 10, 1 << 20, 4 << 20};
  double fraction = 0.01;
  uint64_t write_len = 64 * kKiB;
  uint64_t align = 4 * kKiB;
  double memory_tib = 1.0;
  bool memory = true;
  bool backup = true;
};

[[noreturn]] void Usage(const char* bad) {
  std::fprintf(stderr,
               "bad argument '%s'\nusage: vmbackup_blocksize_study [--size-mib=N] [--reps=N] "
               "[--block-kib=64,128,...] [--fraction=F] [--write-kib=N] [--align-kib=N] "
               "[--memory-tib=F] [--no-memory] [--no-backup]\n",
               bad);
  std::exit(2);
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&](const char* name) -> const char* {
      size_t n = std::strlen(name);
      return a.compare(0, n, name) == 0 ? a.c_str() + n : nullptr;
    };
    if (const char* v = val("--size-mib=")) {
      o.size = std::strtoull(v, nullptr, 10) * kMiB;
    } else if (const char* v = val("--reps=")) {
      o.reps = std::max(1, std::atoi(v));
    } else if (const char* v = val("--block-kib=")) {
      o.block_sizes.clear();
      for (const char* p = v; *p;) {
        char* end;
        o.block_sizes.push_back(static_cast<uint32_t>(std::strtoul(p, &end, 10) * 1024));
        p = *end == ',' ? end + 1 : end;
        if (end == p && *p) Usage(argv[i]);
      }
    } else if (const char* v = val("--fraction=")) {
      o.fraction = std::atof(v);
    } else if (const char* v = val("--write-kib=")) {
      o.write_len = std::strtoull(v, nullptr, 10) * kKiB;
    } else if (const char* v = val("--align-kib=")) {
      o.align = std::strtoull(v, nullptr, 10) * kKiB;
    } else if (const char* v = val("--memory-tib=")) {
      o.memory_tib = std::atof(v);
    } else if (a == "--no-memory") {
      o.memory = false;
    } else if (a == "--no-backup") {
      o.backup = false;
    } else {
      Usage(argv[i]);
    }
  }
  if (o.size == 0 || o.size % kRegion != 0) Usage("--size-mib must be a multiple of 4");
  if (o.write_len == 0 || o.align == 0 || o.write_len > o.size) Usage("--write-kib/--align-kib");
  return o;
}

void Check(const Status& st, const std::string& what) {
  if (st.ok()) return;
  std::fprintf(stderr, "vmbackup_blocksize_study: %s: %s\n", what.c_str(), st.ToString().c_str());
  std::exit(1);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::string Size(double bytes) {
  char buf[32];
  if (bytes >= kGiB)
    std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / kGiB);
  else if (bytes >= kMiB)
    std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / kMiB);
  else
    std::snprintf(buf, sizeof buf, "%.0f KiB", bytes / kKiB);
  return buf;
}

std::string Kib(uint32_t bs) {
  return bs >= kMiB ? std::to_string(bs / kMiB) + " MiB" : std::to_string(bs / kKiB) + " KiB";
}

// ---- backups ----

struct Timed {
  BackupInfo info;
  double seconds = 0;
};

Timed Backup(const std::shared_ptr<BackupTarget>& target, const std::string& name,
             const std::string& volume, const std::string& parent,
             const std::vector<Extent>* dirty) {
  BackupSpec spec;
  spec.name = name;
  spec.parent = parent;
  VolumeSource src;
  src.name = "disk";
  src.path = volume;
  if (dirty) {
    src.has_dirty_map = true;
    src.dirty_ranges = *dirty;
  }
  spec.volumes.push_back(std::move(src));
  const double t0 = internal::MonotonicSeconds();
  auto job = BackupJob::Create(target, std::move(spec));
  Check(job.status(), "create backup " + name);
  Check((*job)->Run(), "backup " + name);
  Timed t;
  t.seconds = internal::MonotonicSeconds() - t0;
  t.info = *(*job)->result();
  return t;
}

std::shared_ptr<BackupTarget> Open(const std::string& dir, uint32_t bs) {
  TargetOptions opts;
  opts.block_size = bs;
  auto t = BackupTarget::Open(FileTargetJson(dir), opts);
  Check(t.status(), "open target " + dir);
  return *t;
}

uint64_t FileSize(const std::string& path) {
  struct stat sb;
  return ::stat(path.c_str(), &sb) == 0 ? static_cast<uint64_t>(sb.st_size) : 0;
}

struct BackupRow {
  uint32_t bs = 0;
  std::vector<double> full_s, inc_dirty_s, inc_scan_s;
  BackupInfo full, inc_dirty, inc_scan;
  uint64_t repo_disk = 0;  // disk usage of the repository after the full backup
  uint64_t vindex_bytes = 0;
  uint64_t dirty_blocks = 0;
};

BackupRow StudyBackups(const Options& o, uint32_t bs, const std::vector<Extent>& writes) {
  BackupRow row;
  row.bs = bs;
  row.dirty_blocks = DirtyBlocks(writes, bs);
  for (int rep = 0; rep < o.reps; ++rep) {
    TempDir dir("bs-study");
    const std::string volume = dir.path() + "/disk.img";
    Check(MakeMixedVolume(volume, o.size, 42), "create volume");
    const std::string r1 = dir.Sub("repo-dirty"), r2 = dir.Sub("repo-scan");
    auto t1 = Open(r1, bs), t2 = Open(r2, bs);
    Timed f1 = Backup(t1, "full", volume, "", nullptr);
    Timed f2 = Backup(t2, "full", volume, "", nullptr);
    row.repo_disk = DiskUsage(r1);
    row.vindex_bytes = FileSize(r1 + "/" + f1.info.volumes[0].index_key);
    Check(ApplyWrites(volume, writes, 4242), "rewrite volume");
    Timed d = Backup(t1, "incr", volume, "full", &writes);
    Timed s = Backup(t2, "incr", volume, "full", nullptr);
    row.full_s.push_back(f1.seconds);
    row.full_s.push_back(f2.seconds);
    row.inc_dirty_s.push_back(d.seconds);
    row.inc_scan_s.push_back(s.seconds);
    row.full = f1.info;
    row.inc_dirty = d.info;
    row.inc_scan = s.info;
    std::printf(
        "  bs=%-8s rep %d: full %.2f s / %.2f s, stored %s; incr dirty-map %.3f s new %s stored "
        "%s; incr scan %.2f s new %s stored %s\n",
        Kib(bs).c_str(), rep + 1, f1.seconds, f2.seconds, Size(f1.info.bytes_stored).c_str(),
        d.seconds, Size(d.info.bytes_new).c_str(), Size(d.info.bytes_stored).c_str(), s.seconds,
        Size(s.info.bytes_new).c_str(), Size(s.info.bytes_stored).c_str());
    std::fflush(stdout);
  }
  return row;
}

// ---- dedup index memory ----

struct MemoryRow {
  uint32_t bs = 0;
  uint64_t entries = 0;
  uint64_t rss_delta = 0;
  double build_s = 0;
  double lookup_ns = 0;
};

MemoryRow StudyMemory(uint32_t bs, double tib) {
  MemoryRow row;
  row.bs = bs;
  row.entries = static_cast<uint64_t>(tib * static_cast<double>(kTiB)) / bs;
  // Pack index entries as the backup writes them: 32 MiB packs of ~2x compressed blocks.
  const uint64_t per_pack = std::max<uint64_t>(1, 2 * internal::kDefaultPackSize / bs);
  // A fixed mmap threshold: every table of the map is its own mapping and goes back to the OS when
  // the map grows, so the RSS growth is the final table (glibc's dynamic threshold would otherwise
  // keep earlier, freed tables resident in the heap and make the figure depend on what ran before).
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  malloc_trim(0);
  const uint64_t rss0 = ResidentBytes();
  const double t0 = internal::MonotonicSeconds();
  auto index = std::make_unique<internal::RepoIndex>();
  Rng r(99);
  std::vector<internal::PackEntry> entries;
  internal::Digest probe{};
  for (uint64_t done = 0, p = 0; done < row.entries; ++p) {
    entries.assign(std::min(per_pack, row.entries - done), internal::PackEntry{});
    uint64_t off = 8;
    for (auto& e : entries) {
      for (size_t i = 0; i < 32; i += 8) {
        uint64_t x = r.Next();
        std::memcpy(e.digest.data() + i, &x, 8);
      }
      e.offset = off;
      e.raw_len = bs;
      e.stored_len = bs / 2;
      e.codec = internal::Codec::kLz4;
      off += e.stored_len;
    }
    probe = entries.front().digest;
    index->AddPack(internal::RandomHex(16).value(), entries);
    done += entries.size();
  }
  row.build_s = internal::MonotonicSeconds() - t0;
  std::vector<internal::PackEntry>().swap(entries);
  row.rss_delta = ResidentBytes() - rss0;
  // Random lookups (misses and one known hit) to show the probe cost at this size.
  const int kLookups = 2'000'000;
  internal::Digest d{};
  size_t found = index->Find(probe) != nullptr;
  const double t1 = internal::MonotonicSeconds();
  for (int i = 0; i < kLookups; ++i) {
    uint64_t x = r.Next();
    std::memcpy(d.data(), &x, 8);
    found += index->Find(d) != nullptr;
  }
  row.lookup_ns = (internal::MonotonicSeconds() - t1) * 1e9 / kLookups;
  if (found == 0) std::printf("  (lookup check failed)\n");
  index.reset();
  malloc_trim(0);
  std::printf("  bs=%-8s %" PRIu64
              " entries: RSS +%s (%.1f B/entry), built in %.2f s, %.0f ns/lookup\n",
              Kib(bs).c_str(), row.entries, Size(static_cast<double>(row.rss_delta)).c_str(),
              static_cast<double>(row.rss_delta) / static_cast<double>(row.entries), row.build_s,
              row.lookup_ns);
  std::fflush(stdout);
  return row;
}

// Bytes of a volume index for `volume` bytes at block size `bs` (format v1: 32-byte header,
// 33 bytes per block, 32-byte checksum).
// Bytes of an absl::flat_hash_map<Digest, BlockLocation> table holding `n` entries: capacity is
// the smallest 2^k - 1 with n <= 7/8 of it; each slot is 56 bytes (32 + 24) plus one control byte.
double HashTableBytes(double n) {
  double cap = 15;
  while (n > cap * 7 / 8) cap = cap * 2 + 1;
  return cap * (56 + 1);
}

double VolumeIndexBytes(double volume, uint32_t bs) { return 64 + 33 * (volume / bs); }
// Bytes of the pack indexes describing `unique` bytes of blocks (56 bytes per entry; one index of
// 80 bytes of header and checksum per 32 MiB pack).
double PackIndexBytes(double unique, uint32_t bs) {
  return 56 * (unique / bs) + 80 * (unique / 2 / internal::kDefaultPackSize);
}

int Main(int argc, char** argv) {
  const Options o = ParseArgs(argc, argv);
  const uint64_t nwrites = static_cast<uint64_t>(
      static_cast<double>(o.size) * o.fraction / static_cast<double>(o.write_len) + 0.5);
  const std::vector<Extent> writes = ScatteredExtents(o.size, nwrites, o.write_len, o.align, 7);

  std::printf(
      "vmbackup block-size study: volume %s (4 MiB regions: 1/4 random, 1/4 compressible, "
      "1/4 zeros, 1/4 holes), %d rep(s); rewrite %.2f %% as %" PRIu64
      " writes of %s at "
      "%s-aligned random offsets\n",
      Size(static_cast<double>(o.size)).c_str(), o.reps, o.fraction * 100, nwrites,
      Size(static_cast<double>(o.write_len)).c_str(), Size(static_cast<double>(o.align)).c_str());

  // Dirty blocks of the same rewrite pattern on a 4 GiB and a 1 TiB disk (no I/O: counts only).
  std::printf("\nBlocks dirtied by rewriting %.2f %% as scattered %s writes (same generator):\n\n",
              o.fraction * 100, Size(static_cast<double>(o.write_len)).c_str());
  std::printf(
      "| block size | 4 GiB disk: dirty / blocks | raw bytes to store | 1 TiB disk: dirty "
      "fraction | raw bytes to store |\n|---|---|---|---|---|\n");
  const uint64_t n4g = static_cast<uint64_t>(4.0 * kGiB * o.fraction / o.write_len + 0.5);
  const uint64_t n1t = static_cast<uint64_t>(1.0 * kTiB * o.fraction / o.write_len + 0.5);
  const auto w4g = ScatteredExtents(4 * kGiB, n4g, o.write_len, o.align, 7);
  const auto w1t = ScatteredExtents(kTiB, n1t, o.write_len, o.align, 7);
  for (uint32_t bs : o.block_sizes) {
    const uint64_t d4 = DirtyBlocks(w4g, bs), d1 = DirtyBlocks(w1t, bs);
    std::printf("| %s | %" PRIu64 " / %" PRIu64 " | %s (%.1f %%) | %.2f %% | %s |\n",
                Kib(bs).c_str(), d4, 4 * kGiB / bs, Size(static_cast<double>(d4) * bs).c_str(),
                100.0 * static_cast<double>(d4) * bs / (4.0 * kGiB),
                100.0 * static_cast<double>(d1) * bs / static_cast<double>(kTiB),
                Size(static_cast<double>(d1) * bs).c_str());
  }
  std::fflush(stdout);

  std::vector<BackupRow> rows;
  if (o.backup) {
    std::printf(
        "\nBackups (each rep: fresh volume and repositories; times are wall clock of "
        "BackupJob Create+Run):\n");
    for (uint32_t bs : o.block_sizes) rows.push_back(StudyBackups(o, bs, writes));
  }
  std::vector<MemoryRow> mem;
  if (o.memory) {
    std::printf("\nDedup index (RepoIndex) built with the entries of %.2f TiB of unique data:\n",
                o.memory_tib);
    for (uint32_t bs : o.block_sizes) mem.push_back(StudyMemory(bs, o.memory_tib));
  }

  if (!rows.empty()) {
    const double mib_s = static_cast<double>(o.size) / kMiB;
    std::printf(
        "\n### Backups of the %s volume (medians of %d reps; full: %d samples)\n\n"
        "| block size | full: time | full: MiB/s (logical) | full: stored | dirty blocks | "
        "incr (dirty map): time | incr (scan): time | incr: bytes_new | incr: bytes_stored | "
        "incr stored / rewritten | volume index (this volume) | repo on disk after full |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        Size(static_cast<double>(o.size)).c_str(), o.reps, 2 * o.reps);
    const double rewritten = static_cast<double>(nwrites * o.write_len);
    for (const auto& r : rows) {
      const double full = Median(r.full_s);
      std::printf("| %s | %.2f s | %.0f | %s | %" PRIu64 " / %" PRIu64
                  " | %.3f s | %.2f s | %s | %s | "
                  "%.1fx | %s | %s |\n",
                  Kib(r.bs).c_str(), full, mib_s / full, Size(r.full.bytes_stored).c_str(),
                  r.dirty_blocks, (o.size + r.bs - 1) / r.bs, Median(r.inc_dirty_s),
                  Median(r.inc_scan_s), Size(r.inc_dirty.bytes_new).c_str(),
                  Size(r.inc_dirty.bytes_stored).c_str(),
                  static_cast<double>(r.inc_dirty.bytes_stored) / rewritten,
                  Size(static_cast<double>(r.vindex_bytes)).c_str(),
                  Size(static_cast<double>(r.repo_disk)).c_str());
      if (r.inc_scan.bytes_new != r.inc_dirty.bytes_new)
        std::printf("  note: scan incremental stored %s new bytes, dirty-map one %s\n",
                    Size(r.inc_scan.bytes_new).c_str(), Size(r.inc_dirty.bytes_new).c_str());
    }
  }

  std::printf(
      "\n### Index sizes per TiB\n\n"
      "| block size | volume index per TiB of disk (format: 33 B/block) | pack indexes per "
      "TiB unique (56 B/entry) | dedup index RAM per TiB unique: table size | measured RSS "
      "| B/entry | index build | lookup |\n|---|---|---|---|---|---|---|---|\n");
  for (uint32_t bs : o.block_sizes) {
    std::string ram = "-", per = "-", build = "-", look = "-";
    for (const auto& m : mem) {
      if (m.bs != bs) continue;
      const double scale = 1.0 / o.memory_tib;
      ram = Size(static_cast<double>(m.rss_delta) * scale);
      char b[64];
      std::snprintf(b, sizeof b, "%.1f",
                    static_cast<double>(m.rss_delta) / static_cast<double>(m.entries));
      per = b;
      std::snprintf(b, sizeof b, "%.2f s", m.build_s * scale);
      build = b;
      std::snprintf(b, sizeof b, "%.0f ns", m.lookup_ns);
      look = b;
    }
    std::printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", Kib(bs).c_str(),
                Size(VolumeIndexBytes(static_cast<double>(kTiB), bs)).c_str(),
                Size(PackIndexBytes(static_cast<double>(kTiB), bs)).c_str(),
                Size(HashTableBytes(static_cast<double>(kTiB) / bs)).c_str(), ram.c_str(),
                per.c_str(), build.c_str(), look.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace vmbackup::bench

int main(int argc, char** argv) { return vmbackup::bench::Main(argc, argv); }
