// vmbackup_stage_bench: throughput of each backup pipeline stage and of whole BackupJob /
// RestorePlan runs on a synthetic volume. See docs/benchmarks.md for how to run it and the figures.
//
// Every case reports bytes/s (SetBytesProcessed):
//   Sha256, BlockFingerprint, IsAllZero, Lz4Encode/Decode, PackBuilder  bytes of raw block data;
//   PackIndexEncode/Decode                             bytes of the pack index object;
//   RepoIndexFind                                      logical volume bytes the lookups stand for
//                                                      (one lookup per 256 KiB block), plus
//                                                      items/s = lookups/s;
//   BackupJob / RestorePlan                            logical volume size (holes included).
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
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

using internal::Codec;
using internal::Digest;
using internal::PackBuilder;
using internal::PackEntry;

void Die(const std::string& what, const Status& st) {
  std::fprintf(stderr, "vmbackup_stage_bench: %s: %s\n", what.c_str(), st.ToString().c_str());
  std::exit(1);
}

enum DataKind { kRandom = 0, kCompressible = 1, kZeroish = 2 };
const char* DataKindName(int k) {
  return k == kRandom ? "random" : k == kCompressible ? "compressible" : "zeroish";
}

std::string MakeData(int kind, size_t n, uint64_t seed) {
  std::string s(n, '\0');
  if (kind == kRandom) FillRandom(s.data(), n, seed);
  if (kind == kCompressible) FillCompressible(s.data(), n, seed);
  if (kind == kZeroish) FillZeroish(s.data(), n, seed);
  return s;
}

void BlockSizes(benchmark::internal::Benchmark* b) {
  for (int64_t kb : {64, 256, 1024, 4096}) b->Arg(kb * 1024);
}

// ---- hashing and zero detection ----

void BM_Sha256(benchmark::State& state) {
  const std::string data = MakeData(kRandom, static_cast<size_t>(state.range(0)), 1);
  for (auto _ : state) {
    Digest d = internal::Sha256(data.data(), data.size());
    benchmark::DoNotOptimize(d);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Sha256)->Apply(BlockSizes);

// The keyed block fingerprint (AES-128-GMAC) that lets incrementals skip SHA-256 of unchanged
// blocks.
void BM_BlockFingerprint(benchmark::State& state) {
  const std::string data = MakeData(kRandom, static_cast<size_t>(state.range(0)), 1);
  internal::FingerprintKey key{};
  key[0] = 7;
  for (auto _ : state) {
    internal::Fingerprint f = internal::BlockFingerprint(key, data.data(), data.size());
    benchmark::DoNotOptimize(f);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_BlockFingerprint)->Apply(BlockSizes);

// range(1): -1 = all zeros, 0 = non-zero first byte, 1 = non-zero last byte.
void BM_IsAllZero(benchmark::State& state) {
  std::string data(static_cast<size_t>(state.range(0)), '\0');
  if (state.range(1) == 0) data.front() = 1;
  if (state.range(1) == 1) data.back() = 1;
  const bool want = state.range(1) < 0;
  for (auto _ : state) {
    bool z = internal::IsAllZero(data.data(), data.size());
    benchmark::DoNotOptimize(z);
    if (z != want) state.SkipWithError("IsAllZero returned the wrong answer");
  }
  state.SetLabel(state.range(1) < 0    ? "all-zero"
                 : state.range(1) == 0 ? "nonzero-first-byte"
                                       : "nonzero-last-byte");
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_IsAllZero)->ArgsProduct({{64 << 10, 256 << 10, 1 << 20, 4 << 20}, {-1, 0, 1}});

// ---- block codec ----

void Lz4Args(benchmark::internal::Benchmark* b) {
  for (int64_t bs : {256 << 10, 4 << 20})
    for (int64_t kind : {kRandom, kCompressible, kZeroish}) b->Args({bs, kind});
}

void BM_Lz4Encode(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  const std::string data = MakeData(static_cast<int>(state.range(1)), n, 2);
  std::string out;
  out.reserve(n + n / 4);
  Codec codec = Codec::kNone;
  for (auto _ : state) {
    out.clear();
    codec = internal::EncodeBlockAppend(data.data(), n, &out);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["ratio"] = static_cast<double>(n) / static_cast<double>(out.size());
  state.SetLabel(std::string(DataKindName(static_cast<int>(state.range(1)))) +
                 (codec == Codec::kLz4 ? " lz4" : " stored-raw"));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Lz4Encode)->Apply(Lz4Args);

void BM_Lz4Decode(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  const std::string data = MakeData(static_cast<int>(state.range(1)), n, 3);
  std::string stored;
  const Codec codec = internal::EncodeBlockAppend(data.data(), n, &stored);
  std::string raw(n, '\0');
  for (auto _ : state) {
    Status st = internal::DecodeBlock(codec, stored.data(), stored.size(), raw.data(), n);
    if (!st.ok()) state.SkipWithError(st.ToString().c_str());
    benchmark::DoNotOptimize(raw.data());
  }
  if (raw != data) state.SkipWithError("decoded block differs");
  state.SetLabel(std::string(DataKindName(static_cast<int>(state.range(1)))) +
                 (codec == Codec::kLz4 ? " lz4" : " stored-raw"));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Lz4Decode)->Apply(Lz4Args);

// ---- packs ----

// Fills one 32 MiB pack with blocks of range(0) bytes, alternating random and compressible
// (the data half of the mixed volume), then seals it. Bytes = raw bytes added.
void BM_PackBuilderAddSeal(benchmark::State& state) {
  const size_t bs = static_cast<size_t>(state.range(0));
  constexpr size_t kPool = 16;
  std::vector<std::string> blocks;
  std::vector<Digest> digests;
  for (size_t i = 0; i < kPool; ++i) {
    blocks.push_back(MakeData(i % 2 ? kCompressible : kRandom, bs, 100 + i));
    digests.push_back(internal::Sha256(blocks.back()));
  }
  PackBuilder pb(internal::kDefaultPackSize);
  int64_t raw = 0, stored = 0;
  for (auto _ : state) {
    size_t i = 0;
    while (!pb.full()) {
      pb.Add(digests[i % kPool], blocks[i % kPool].data(), bs);
      ++i;
    }
    raw += static_cast<int64_t>(pb.raw_bytes());
    PackBuilder::Sealed s = *pb.Seal();
    stored += static_cast<int64_t>(s.data.size());
    benchmark::DoNotOptimize(s.data.data());
  }
  state.counters["ratio"] = static_cast<double>(raw) / static_cast<double>(stored);
  state.SetBytesProcessed(raw);
}
BENCHMARK(BM_PackBuilderAddSeal)->Arg(64 << 10)->Arg(256 << 10)->Arg(4 << 20);

std::vector<PackEntry> FakeEntries(size_t n, uint32_t bs, uint64_t seed) {
  std::vector<PackEntry> v(n);
  Rng r(seed);
  uint64_t off = internal::kPackMagic.size();
  for (auto& e : v) {
    for (size_t i = 0; i < e.digest.size(); i += 8) {
      uint64_t x = r.Next();
      std::memcpy(e.digest.data() + i, &x, 8);
    }
    e.offset = off;
    e.raw_len = bs;
    e.stored_len = bs / 2;
    e.codec = Codec::kLz4;
    off += e.stored_len;
  }
  return v;
}

// range(0) = block size; the index describes a 32 MiB pack of such blocks (stored at ~2x, as the
// pack builder stops at 32 MiB of stored bytes).
void BM_PackIndexEncode(benchmark::State& state) {
  const uint32_t bs = static_cast<uint32_t>(state.range(0));
  const auto entries = FakeEntries(2 * internal::kDefaultPackSize / bs, bs, 4);
  size_t size = 0;
  for (auto _ : state) {
    std::string idx = internal::EncodePackIndex("0123456789abcdef0123456789abcdef", entries);
    size = idx.size();
    benchmark::DoNotOptimize(idx.data());
  }
  state.counters["entries"] = static_cast<double>(entries.size());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * size));
}
BENCHMARK(BM_PackIndexEncode)->Arg(64 << 10)->Arg(256 << 10)->Arg(4 << 20);

void BM_PackIndexDecode(benchmark::State& state) {
  const uint32_t bs = static_cast<uint32_t>(state.range(0));
  const std::string id = "0123456789abcdef0123456789abcdef";
  const auto entries = FakeEntries(2 * internal::kDefaultPackSize / bs, bs, 5);
  const std::string idx = internal::EncodePackIndex(id, entries);
  for (auto _ : state) {
    auto d = internal::DecodePackIndex(idx, id, "bench index");
    if (!d.ok()) state.SkipWithError(d.status().ToString().c_str());
    benchmark::DoNotOptimize(d);
  }
  state.counters["entries"] = static_cast<double>(entries.size());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * idx.size()));
}
BENCHMARK(BM_PackIndexDecode)->Arg(64 << 10)->Arg(256 << 10)->Arg(4 << 20);

// ---- dedup index ----

constexpr size_t kIndexEntries = 1 << 20;

struct BigIndex {
  internal::RepoIndex index;
  std::vector<Digest> present;
  std::vector<Digest> absent;
  BigIndex() {
    const uint32_t bs = internal::kDefaultBlockSize;
    const size_t per_pack = internal::kDefaultPackSize / bs;
    for (size_t p = 0; p * per_pack < kIndexEntries; ++p) {
      auto entries = FakeEntries(per_pack, bs, 1000 + p);
      for (const auto& e : entries) present.push_back(e.digest);
      index.AddPack("pack" + std::to_string(p), entries);
    }
    for (const auto& e : FakeEntries(kIndexEntries, bs, 7)) absent.push_back(e.digest);
  }
};

const BigIndex& GetBigIndex() {
  static const BigIndex* idx = new BigIndex();
  return *idx;
}

// range(0): 1 = hits (digests in the index), 0 = misses.
void BM_RepoIndexFind(benchmark::State& state) {
  const BigIndex& big = GetBigIndex();
  const auto& keys = state.range(0) ? big.present : big.absent;
  // Look keys up in a scattered order so that the probe sequence is not cache-friendly.
  size_t i = 0, found = 0;
  for (auto _ : state) {
    found += big.index.Find(keys[i]) != nullptr;
    i = (i + 7919) & (kIndexEntries - 1);
  }
  if (state.range(0) ? found != static_cast<size_t>(state.iterations()) : found != 0)
    state.SkipWithError("unexpected lookup result");
  state.counters["entries"] = static_cast<double>(big.index.block_count());
  state.SetLabel(state.range(0) ? "hit" : "miss");
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * internal::kDefaultBlockSize);
}
BENCHMARK(BM_RepoIndexFind)->Arg(1)->Arg(0);

// ---- end to end ----

constexpr uint64_t kVolumeSize = 256 * kMiB;

struct Scratch {
  TempDir dir{"stage-bench"};
  std::string volume = dir.path() + "/disk.img";
  Scratch() {
    Status st = MakeMixedVolume(volume, kVolumeSize, 42);
    if (!st.ok()) Die("create synthetic volume", st);
  }
};
Scratch* g_scratch = nullptr;
Scratch& GetScratch() {
  if (!g_scratch) g_scratch = new Scratch();
  return *g_scratch;
}

std::shared_ptr<BackupTarget> OpenTarget(const std::string& dir, uint32_t block_size) {
  TargetOptions opts;
  opts.block_size = block_size;
  auto t = BackupTarget::Open(FileTargetJson(dir), opts);
  if (!t.ok()) Die("open target " + dir, t.status());
  return *t;
}

BackupInfo RunBackup(const std::shared_ptr<BackupTarget>& target, const std::string& name,
                     const std::string& volume) {
  BackupSpec spec;
  spec.name = name;
  VolumeSource src;
  src.name = "disk";
  src.path = volume;
  spec.volumes.push_back(std::move(src));
  auto job = BackupJob::Create(target, std::move(spec));
  if (!job.ok()) Die("create backup job", job.status());
  Status st = (*job)->Run();
  if (!st.ok()) Die("backup", st);
  return *(*job)->result();
}

// Full backup of the 256 MiB mixed volume into a fresh repository of block size range(0).
// Only the job (Create + Run) is timed; creating and deleting the repository is not.
void BM_BackupJob(benchmark::State& state) {
  Scratch& s = GetScratch();
  const uint32_t bs = static_cast<uint32_t>(state.range(0));
  uint64_t stored = 0;
  int n = 0;
  for (auto _ : state) {
    state.PauseTiming();
    const std::string repo = s.dir.Sub("repo");
    auto target = OpenTarget(repo, bs);
    state.ResumeTiming();
    BackupInfo info = RunBackup(target, "full-" + std::to_string(n++), s.volume);
    state.PauseTiming();
    stored = info.bytes_stored;
    target.reset();
    RemoveTree(repo);
    state.ResumeTiming();
  }
  state.counters["stored_MiB"] = static_cast<double>(stored) / kMiB;
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kVolumeSize));
}
BENCHMARK(BM_BackupJob)
    ->Arg(256 << 10)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(3);

// Second backup of the unchanged volume: everything is read, hashed and found in the index.
void BM_BackupJobUnchanged(benchmark::State& state) {
  Scratch& s = GetScratch();
  const uint32_t bs = static_cast<uint32_t>(state.range(0));
  const std::string repo = s.dir.Sub("repo-unchanged");
  auto target = OpenTarget(repo, bs);
  RunBackup(target, "base", s.volume);
  int n = 0;
  for (auto _ : state) RunBackup(target, "again-" + std::to_string(n++), s.volume);
  target.reset();
  RemoveTree(repo);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kVolumeSize));
}
BENCHMARK(BM_BackupJobUnchanged)
    ->Arg(256 << 10)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(3);

// Restore of the full backup to a new file (written under a temporary name, fsynced, renamed).
void BM_RestorePlan(benchmark::State& state) {
  Scratch& s = GetScratch();
  const uint32_t bs = static_cast<uint32_t>(state.range(0));
  const std::string repo = s.dir.Sub("repo-restore");
  const std::string out = s.dir.Sub("restored");
  auto target = OpenTarget(repo, bs);
  RunBackup(target, "base", s.volume);
  for (auto _ : state) {
    RestoreSpec spec;
    spec.backup = "base";
    spec.volumes.push_back(VolumeDestination{"disk", out + "/disk.img"});
    spec.overwrite = true;
    auto plan = RestorePlan::Create(target, std::move(spec));
    if (!plan.ok()) Die("create restore plan", plan.status());
    Status st = (*plan)->Run();
    if (!st.ok()) Die("restore", st);
    state.PauseTiming();
    RemoveTree(out + "/disk.img");
    state.ResumeTiming();
  }
  target.reset();
  RemoveTree(repo);
  RemoveTree(out);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kVolumeSize));
}
BENCHMARK(BM_RestorePlan)
    ->Arg(256 << 10)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(3);

}  // namespace
}  // namespace vmbackup::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  delete vmbackup::bench::g_scratch;  // removes the temporary directory
  return 0;
}
