// Verifier (see verify.h).
#include "engine/verify.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <random>
#include <tuple>

#include "core/errors.h"
#include "core/runtime.h"
#include "core/util.h"
#include "engine/pipeline.h"
#include "engine/read_plan.h"
#include "store/get_many.h"

namespace vmbackup::internal {

namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool IsLowerHex(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// The first 32 bits of a pack id (32 hex characters), which partition packs for read_data_parts.
uint32_t PackIdBits(const std::string& id) {
  uint32_t v = 0;
  for (size_t i = 0; i < 8 && i < id.size(); ++i) {
    const char c = id[i];
    v = v * 16 + static_cast<uint32_t>(c <= '9' ? c - '0' : c - 'a' + 10);
  }
  return v;
}

}  // namespace

std::string PackIdFromPackKey(const std::string& key) {
  // packs/<2>/<32>.pack
  constexpr std::string_view kPrefix = "packs/", kSuffix = ".pack";
  if (key.size() != kPrefix.size() + 3 + 32 + kSuffix.size()) return "";
  if (key.compare(0, kPrefix.size(), kPrefix) != 0) return "";
  if (key.compare(key.size() - kSuffix.size(), kSuffix.size(), kSuffix) != 0) return "";
  const std::string dir = key.substr(kPrefix.size(), 2);
  if (key[kPrefix.size() + 2] != '/') return "";
  std::string id = key.substr(kPrefix.size() + 3, 32);
  if (!IsLowerHex(id) || id.compare(0, 2, dir) != 0) return "";
  return id;
}

Verifier::Verifier(Repository& repo, Runtime& rt, VerifyOptions options)
    : repo_(repo), rt_(rt), opts_(std::move(options)) {}

bool Verifier::Progress(::vmbackup::Progress::Phase phase, bool force) {
  if (!opts_.progress) return true;
  const int64_t now = NowNs();
  if (!force && now - last_report_ns_ < int64_t{opts_.progress_interval_ms} * 1000000) return true;
  last_report_ns_ = now;
  ::vmbackup::Progress p;
  p.phase = phase;
  p.bytes_total = read_bytes_total_;
  p.bytes_read = read_bytes_done_.load(std::memory_order_relaxed);
  p.bytes_scanned = p.bytes_read;
  p.blocks_total = read_blocks_total_;
  p.blocks_done = read_blocks_done_.load(std::memory_order_relaxed);
  p.elapsed_seconds = static_cast<double>(now - started_ns_) / 1e9;
  if (p.elapsed_seconds > 0)
    p.bytes_per_second = static_cast<double>(p.bytes_read) / p.elapsed_seconds;
  if (phase == ::vmbackup::Progress::Phase::kTransferring && p.bytes_per_second > 0 &&
      p.bytes_total >= p.bytes_read)
    p.eta_seconds = static_cast<double>(p.bytes_total - p.bytes_read) / p.bytes_per_second;
  if (phase == ::vmbackup::Progress::Phase::kDone) p.eta_seconds = 0;
  return opts_.progress(p);
}

void Verifier::AddBadBlock(BadBlock b) {
  ++report_.bad_block_count;
  damaged_backups_.insert(b.backup);
  if (opts_.max_bad_blocks_listed == 0 || report_.bad_blocks.size() < opts_.max_bad_blocks_listed)
    report_.bad_blocks.push_back(std::move(b));
}

StatusOr<VerifyReport> Verifier::Run() {
  if (!(opts_.read_data_fraction >= 0 && opts_.read_data_fraction <= 1))
    return InvalidArgumentError("VerifyOptions.read_data_fraction must be from 0 to 1");
  if ((opts_.read_data_parts == 0) != (opts_.read_data_part == 0) ||
      opts_.read_data_part > opts_.read_data_parts)
    return InvalidArgumentError(
        "VerifyOptions.read_data_part must be from 1 to read_data_parts (or both 0)");
  if (opts_.parallel_reads < 0 || opts_.parallel_reads > 1024)
    return InvalidArgumentError("VerifyOptions.parallel_reads must be from 0 to 1024");
  if (opts_.progress_interval_ms < 0)
    return InvalidArgumentError("VerifyOptions.progress_interval_ms must not be negative");
  started_ns_ = NowNs();
  if (!Progress(::vmbackup::Progress::Phase::kPreparing, true))
    return CancelledError("verify cancelled");

  VMB_ASSIGN_OR_RETURN(BackupList list, repo_.ListBackups());
  report_.damaged_records = list.damaged;
  for (const std::string& d : list.damaged) {
    damaged_backups_.insert(d.substr(0, d.find(':')));
    metadata_damaged_.insert(d.substr(0, d.find(':')));
  }
  VMB_RETURN_IF_ERROR(LoadPacks());
  VMB_RETURN_IF_ERROR(CheckVolumes(list));
  if (opts_.read_data) {
    VMB_RETURN_IF_ERROR(ReadData());
    if (!read_failures_.empty()) VMB_RETURN_IF_ERROR(NameReadFailures(list));
  }
  for (const PackState& p : packs_)
    if (!p.problem.empty()) report_.pack_problems.push_back({p.id, p.problem});
  std::sort(report_.bad_blocks.begin(), report_.bad_blocks.end(),
            [](const BadBlock& a, const BadBlock& b) {
              return std::tie(a.backup, a.volume, a.offset) <
                     std::tie(b.backup, b.volume, b.offset);
            });
  report_.damaged_backups.assign(damaged_backups_.begin(), damaged_backups_.end());
  report_.seconds = static_cast<double>(NowNs() - started_ns_) / 1e9;
  if (!Progress(::vmbackup::Progress::Phase::kDone, true))
    return CancelledError("verify cancelled");
  return report_;
}

Status Verifier::LoadPacks() {
  ObjectStore& store = repo_.store();
  // Indexes first: a writer makes its pack durable before it writes the pack's index, so every
  // index listed here has its pack in the listing below, even while backups run (listing packs
  // first would report the pack of an index written in between as missing).
  VMB_ASSIGN_OR_RETURN(auto index_keys, store.ListAll(kIndexPrefix));
  VMB_ASSIGN_OR_RETURN(auto pack_keys, store.ListAll("packs/"));
  std::vector<std::string> ids;
  auto state = [&](const std::string& id) -> PackState& {
    auto [it, added] = pack_of_.try_emplace(id, static_cast<uint32_t>(packs_.size()));
    if (added) {
      packs_.emplace_back();
      packs_.back().id = id;
    }
    return packs_[it->second];
  };
  for (const auto& o : pack_keys) {
    std::string id = PackIdFromPackKey(o.key);
    if (id.empty()) continue;  // not ours (a stray object): never reported as damage
    PackState& p = state(id);
    p.has_pack = true;
    p.pack_size = o.size;
  }
  for (const auto& o : index_keys) {
    std::string id = PackIdFromIndexKey(o.key);
    if (id.empty()) continue;
    state(id).has_index = true;
    ids.push_back(id);
  }
  // Sorted by id, so reports and repairs come in a stable order; pack_of_ follows.
  std::sort(packs_.begin(), packs_.end(),
            [](const PackState& a, const PackState& b) { return a.id < b.id; });
  for (uint32_t i = 0; i < packs_.size(); ++i) pack_of_[packs_[i].id] = i;

  // Every pack index afresh, kDefaultGetWindow at a time; blocks of healthy packs are entered
  // first (below), so a digest stored twice maps to a copy that can be read when there is one.
  std::vector<std::pair<uint32_t, std::vector<PackEntry>>> indexed;
  VMB_RETURN_IF_ERROR(GetMany(
      store, ids.size(), [&](size_t i) { return PackIndexKey(ids[i]); }, kDefaultGetWindow,
      [&](size_t i, StatusOr<std::string> bytes) -> Status {
        PackState& p = packs_[pack_of_[ids[i]]];
        if (!bytes.ok()) {
          if (bytes.status().code() == StatusCode::kNotFound) {  // deleted meanwhile
            p.has_index = false;
            return Status::Ok();
          }
          if (bytes.status().code() != StatusCode::kDataLoss) return bytes.status();
          p.problem = "pack index " + PackIndexKey(p.id) + " damaged: " + bytes.status().message();
          return Status::Ok();
        }
        auto entries = DecodePackIndex(*bytes, p.id, "pack index " + PackIndexKey(p.id));
        if (!entries.ok()) {
          p.problem = "pack index damaged: " + entries.status().message();
          return Status::Ok();
        }
        p.index_ok = true;
        p.blocks = entries->size();
        uint64_t data_end = kPackMagic.size();
        for (const PackEntry& e : *entries) data_end = std::max(data_end, e.offset + e.stored_len);
        p.expected_size = ExpectedPackSize(data_end, bytes->size());
        indexed.emplace_back(pack_of_[p.id], std::move(*entries));
        if (!Progress(::vmbackup::Progress::Phase::kPreparing, false))
          return CancelledError("verify cancelled");
        return Status::Ok();
      }));
  for (PackState& p : packs_) {
    ++report_.packs;
    if (!p.has_index) {
      if (p.has_pack) ++report_.packs_without_index;
      continue;
    }
    if (!p.index_ok) continue;  // problem set above
    if (!p.has_pack) {
      p.problem = "pack " + PackKey(p.id) + " is missing (its index lists " +
                  std::to_string(p.blocks) + " blocks)";
    } else if (p.pack_size != p.expected_size) {
      p.problem = "pack " + PackKey(p.id) + " holds " + std::to_string(p.pack_size) +
                  " bytes, its index implies " + std::to_string(p.expected_size) +
                  (p.pack_size < p.expected_size ? " (truncated)" : "");
    }
  }
  auto healthy = [&](uint32_t pack) { return packs_[pack].problem.empty(); };
  std::stable_partition(indexed.begin(), indexed.end(),
                        [&](const auto& e) { return healthy(e.first); });
  for (const auto& [pack, entries] : indexed) {
    for (const PackEntry& e : entries) {
      const Loc loc{pack, e.stored_len, e.offset, e.raw_len, e.codec, false};
      if (!blocks_.try_emplace(e.digest, loc).second) copies_.emplace_back(e.digest, loc);
    }
  }
  return Status::Ok();
}

Status Verifier::CheckVolumes(const BackupList& list) {
  size_t damaged_indexes = 0;
  for (const PackState& p : packs_) damaged_indexes += p.has_index && !p.index_ok ? 1 : 0;
  for (const BackupInfo& b : list.backups) {
    ++report_.backups;
    for (const VolumeBackupInfo& v : b.volumes) {
      auto vidx = repo_.LoadVolumeIndex(b.name, v);
      if (!vidx.ok()) {
        if (vidx.status().code() != StatusCode::kDataLoss) return vidx.status();
        // A backup deleted since it was listed (the record goes first, then its indexes) is not
        // damage: it is simply gone.
        auto record = repo_.store().Head(RecordKey(b.name));
        if (!record.ok() && record.status().code() == StatusCode::kNotFound) {
          --report_.backups;
          break;
        }
        report_.damaged_volume_indexes.push_back(vidx.status().message());
        damaged_backups_.insert(b.name);
        metadata_damaged_.insert(b.name);
        continue;
      }
      ++report_.volumes;
      for (uint64_t i = 0; i < vidx->block_count(); ++i) {
        if (vidx->kinds[i] != BlockKind::kData) continue;
        ++report_.blocks_referenced;
        const Digest& d = vidx->digests[i];
        const uint64_t offset = i * v.block_size;
        const uint64_t len = std::min<uint64_t>(v.block_size, v.size - offset);
        auto it = blocks_.find(d);
        if (it == blocks_.end()) {
          if (unindexed_.insert(d).second) ++report_.unique_blocks;
          std::string problem = "in no readable pack index";
          if (damaged_indexes > 0)
            problem += " (" + std::to_string(damaged_indexes) + " pack index(es) damaged)";
          AddBadBlock({b.name, v.name, offset, ToHex(d), "", 0, std::move(problem)});
          continue;
        }
        Loc& loc = it->second;
        if (!loc.referenced) {
          loc.referenced = true;
          ++report_.unique_blocks;
          report_.bytes_referenced += loc.raw_len;
        }
        const PackState& p = packs_[loc.pack];
        std::string problem;
        if (loc.raw_len != len) {
          problem = "the pack index gives it " + std::to_string(loc.raw_len) + " bytes, not " +
                    std::to_string(len);
        } else if (!p.problem.empty() &&
                   (!p.has_pack || loc.offset + loc.stored_len > p.pack_size)) {
          problem = p.problem;
        }
        if (!problem.empty())
          AddBadBlock({b.name, v.name, offset, ToHex(d), p.id, loc.offset, std::move(problem)});
      }
      if (!Progress(::vmbackup::Progress::Phase::kPreparing, false))
        return CancelledError("verify cancelled");
    }
  }
  return Status::Ok();
}

Status Verifier::ReadData() {
  // Which packs are read: a random share and/or one part of a partition.
  std::vector<bool> chosen(packs_.size(), true);
  std::mt19937_64 rng;
  if (opts_.read_data_fraction < 1) {
    uint64_t seed = 0;
    VMB_RETURN_IF_ERROR(RandomBytes(&seed, sizeof seed));
    rng.seed(seed);
  }
  std::uniform_real_distribution<double> uniform(0, 1);
  for (size_t i = 0; i < packs_.size(); ++i) {
    if (opts_.read_data_parts != 0 &&
        PackIdBits(packs_[i].id) % opts_.read_data_parts != opts_.read_data_part - 1)
      chosen[i] = false;
    if (opts_.read_data_fraction < 1 && !(uniform(rng) < opts_.read_data_fraction))
      chosen[i] = false;
  }
  // Every referenced block of a chosen pack whose bytes the pack holds, by (pack, offset).
  struct Item {
    uint32_t pack;
    uint64_t offset;
    const Digest* digest;
    const Loc* loc;
  };
  std::vector<Item> items;
  for (const auto& [digest, loc] : blocks_) {
    if (!loc.referenced || !chosen[loc.pack]) continue;
    const PackState& p = packs_[loc.pack];
    if (!p.has_pack || loc.offset + loc.stored_len > p.pack_size) continue;  // reported already
    items.push_back({loc.pack, loc.offset, &digest, &loc});
  }
  // Every other copy of a referenced block too: which copy a restore reads depends on the order
  // its pack indexes arrived in, so each must be sound.
  for (const auto& [digest, loc] : copies_) {
    if (!blocks_.at(digest).referenced || !chosen[loc.pack]) continue;
    const PackState& p = packs_[loc.pack];
    if (!p.has_pack || loc.offset + loc.stored_len > p.pack_size) continue;
    items.push_back({loc.pack, loc.offset, &digest, &loc});
  }
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return std::tie(a.pack, a.offset, *a.digest) < std::tie(b.pack, b.offset, *b.digest);
  });
  std::vector<ReadPiece> pieces;
  pieces.reserve(items.size());
  for (const Item& it : items) pieces.push_back({it.pack, it.offset, it.loc->stored_len});
  const std::vector<ReadUnit> units = CoalesceReads(pieces, kMaxReadGap, kMaxReadUnit);
  read_blocks_total_ = items.size();
  for (const ReadUnit& u : units) read_bytes_total_ += u.end - u.begin;
  {
    uint32_t last = UINT32_MAX;
    for (const Item& it : items) {
      if (it.pack != last) ++report_.packs_read;
      last = it.pack;
    }
  }

  // parallel_reads tasks on the blocking pool claim units in order; this thread reports progress.
  ObjectStore& store = repo_.store();
  const int tasks =
      std::max<int>(1, std::min<size_t>(opts_.parallel_reads > 0 ? opts_.parallel_reads : 8,
                                        std::max<size_t>(units.size(), 1)));
  std::atomic<size_t> next_unit{0};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> raw_checked{0};
  FirstError error;
  std::mutex mu;  // guards read_failures_, packs_[].bad_read_blocks, good_reads, left
  std::vector<std::pair<uint32_t, const Digest*>> good_reads;  // copies that checked good
  std::condition_variable cv;
  int left = tasks;
  auto task = [&] {
    std::string buf;
    std::unique_ptr<char[]> raw;
    size_t raw_cap = 0;
    try {
      for (;;) {
        if (stop.load(std::memory_order_relaxed) || error.has_error()) break;
        const size_t ui = next_unit.fetch_add(1);
        if (ui >= units.size()) break;
        const ReadUnit& u = units[ui];
        const std::string& id = packs_[items[u.first].pack].id;
        const std::string key = PackKey(id);
        Status got = store.GetInto(key, u.begin, u.end - u.begin, &buf);
        std::vector<std::pair<size_t, std::string>> bad;
        std::vector<size_t> good;
        if (!got.ok()) {
          const StatusCode c = got.code();
          if (c != StatusCode::kNotFound && c != StatusCode::kOutOfRange &&
              c != StatusCode::kDataLoss) {
            error.Set(got.WithContext("reading " + key));
            break;
          }
          // The pack changed since it was listed (deleted, or shorter than its index says).
          for (size_t i = u.first; i < u.last; ++i)
            bad.emplace_back(i, "pack object " + key + " could not be read at " +
                                    std::to_string(u.begin) + "-" + std::to_string(u.end) + ": " +
                                    got.message());
        } else {
          for (size_t i = u.first; i < u.last; ++i) {
            const Loc& loc = *items[i].loc;
            const char* stored = buf.data() + (loc.offset - u.begin);
            // A block stored as is is hashed where it lies (no copy: verify is CPU-bound).
            const char* plain = stored;
            Status st;
            if (loc.codec != Codec::kNone || loc.stored_len != loc.raw_len) {
              if (raw_cap < loc.raw_len) {
                raw.reset(new char[loc.raw_len]);
                raw_cap = loc.raw_len;
              }
              st = DecodeBlock(loc.codec, stored, loc.stored_len, raw.get(), loc.raw_len);
              plain = raw.get();
            }
            if (st.ok() && repo_.block_namer()(plain, loc.raw_len) != *items[i].digest)
              st = DataLossError("digest mismatch (corrupt block)");
            if (st.ok()) {
              good.push_back(i);
            } else {
              bad.emplace_back(i, st.message());
            }
            raw_checked.fetch_add(loc.raw_len, std::memory_order_relaxed);
          }
        }
        read_bytes_done_.fetch_add(u.end - u.begin, std::memory_order_relaxed);
        read_blocks_done_.fetch_add(u.last - u.first, std::memory_order_relaxed);
        if (!bad.empty() || !good.empty()) {
          std::lock_guard<std::mutex> l(mu);
          for (auto& [i, problem] : bad) {
            // Every failed copy counts against its pack; the block is named by its first one.
            ++packs_[items[i].pack].bad_read_blocks;
            read_failures_.try_emplace(
                *items[i].digest, ReadFailure{std::move(problem), items[i].pack, items[i].offset});
          }
          for (size_t i : good) good_reads.emplace_back(items[i].pack, items[i].digest);
        }
      }
    } catch (...) {
      error.Set(CurrentExceptionToStatus("verify read task"));
    }
    std::lock_guard<std::mutex> l(mu);
    if (--left == 0) cv.notify_all();
  };
  for (int i = 0; i < tasks; ++i) ImplOf(rt_)->PostBlocking(task);
  bool cancelled = false;
  {
    std::unique_lock<std::mutex> l(mu);
    const auto slice = std::chrono::milliseconds(std::clamp(opts_.progress_interval_ms, 10, 1000));
    while (left > 0) {
      cv.wait_for(l, slice, [&] { return left == 0; });
      if (left == 0) break;
      l.unlock();  // never call user code under our lock
      if (!cancelled && !Progress(::vmbackup::Progress::Phase::kTransferring, false)) {
        cancelled = true;
        stop.store(true);
      }
      l.lock();
    }
  }
  VMB_RETURN_IF_ERROR(error.Get());
  if (cancelled) return CancelledError("verify cancelled");
  report_.blocks_checked = read_blocks_done_.load();
  report_.bytes_read = read_bytes_done_.load();
  report_.bytes_checked = raw_checked.load();
  for (PackState& p : packs_) {
    if (p.bad_read_blocks > 0 && p.problem.empty())
      p.problem = std::to_string(p.bad_read_blocks) + " block(s) of pack " + PackKey(p.id) +
                  " fail their check";
  }
  for (const auto& [pack, digest] : good_reads)
    if (packs_[pack].problem.empty()) sound_copies_.insert(*digest);
  if (!Progress(::vmbackup::Progress::Phase::kTransferring, true))
    return CancelledError("verify cancelled");
  return Status::Ok();
}

Status Verifier::NameReadFailures(const BackupList& list) {
  for (const BackupInfo& b : list.backups) {
    for (const VolumeBackupInfo& v : b.volumes) {
      auto vidx = repo_.LoadVolumeIndex(b.name, v);
      if (!vidx.ok()) continue;  // reported by CheckVolumes (or changed meanwhile)
      for (uint64_t i = 0; i < vidx->block_count(); ++i) {
        if (vidx->kinds[i] != BlockKind::kData) continue;
        auto it = read_failures_.find(vidx->digests[i]);
        if (it == read_failures_.end()) continue;
        const ReadFailure& f = it->second;
        AddBadBlock({b.name, v.name, i * v.block_size, ToHex(it->first), packs_[f.pack].id,
                     f.offset, f.problem});
      }
    }
  }
  return Status::Ok();
}

}  // namespace vmbackup::internal
