// Garbage collection (see gc.h and docs/FORMAT.md "Garbage collection").
#include "repo/gc.h"

#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/process_id.h"
#include "store/get_many.h"

namespace vmbackup::internal {

using nlohmann::json;

int64_t SystemUnixSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

constexpr const char* kStateSuffix = ".candidates";
constexpr const char* kStateKind = "vmbackup-gc-state";
constexpr const char* kMarkKind = "vmbackup-gc-mark";
constexpr const char* kLockKind = "vmbackup-gc-lock";
constexpr const char* kLeaseKind = "vmbackup-lease";

std::string HostName() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

std::string UnixToRfc3339(int64_t t) {
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// "gc/<run>.candidates" → "<run>"; empty otherwise.
std::string RunFromStateKey(const std::string& key) {
  const std::string suffix = kStateSuffix;
  if (key.size() <= 3 + suffix.size() || key.compare(0, 3, kGcPrefix) != 0 ||
      key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0)
    return "";
  std::string run = key.substr(3, key.size() - 3 - suffix.size());
  return run.find('/') == std::string::npos ? run : "";
}

std::string StateKey(const std::string& run) { return kGcPrefix + run + kStateSuffix; }
std::string MarkKey(const std::string& run) { return kGcPrefix + run + ".json"; }

// "packs/<xx>/<id>.pack" → "<id>" (32 hex, matching <xx>); empty otherwise.
std::string PackIdFromPackKey(const std::string& key) {
  if (key.size() != 6 + 3 + 32 + 5 || key.compare(0, 6, kPackPrefix) != 0 || key[8] != '/' ||
      key.compare(key.size() - 5, 5, ".pack") != 0)
    return "";
  std::string id = key.substr(9, 32);
  if (id.find_first_not_of("0123456789abcdef") != std::string::npos) return "";
  if (key.compare(6, 2, id, 0, 2) != 0) return "";
  return id;
}

// What one run leaves for the next: objects found garbage (with the time and run that first
// found them so, on the clock of the GC hosts).
struct Seen {
  int64_t first_seen = 0;
  std::string first_run;
  bool condemned = false;  // a pack whose index GC deleted (not an orphan)
};
struct GcState {
  std::string run;
  int64_t started = 0;
  std::map<std::string, Seen> candidates;   // pack id → dead pack with an index
  std::map<std::string, Seen> no_index;     // pack id → pack without an index
  std::map<std::string, Seen> temporaries;  // .tmp/ key
  std::map<std::string, Seen> repack;       // pack id → less than half live (by stored bytes)
  std::map<std::string, std::string> replaced_by;  // repacked pack id → the pack of its live blocks
};

json SeenMapToJson(const std::map<std::string, Seen>& m) {
  json out = json::object();
  for (const auto& [k, v] : m) out[k] = json::array({v.first_seen, v.first_run, v.condemned});
  return out;
}

Status SeenMapFromJson(const json& body, const char* field, const std::string& what,
                       std::map<std::string, Seen>* out) {
  auto it = body.find(field);
  if (it == body.end() || !it->is_object())
    return DataLossError(what + ": field '" + field + "' is not an object");
  for (const auto& [k, v] : it->items()) {
    if (!v.is_array() || v.size() != 3 || !v[0].is_number_integer() || !v[1].is_string() ||
        !v[2].is_boolean())
      return DataLossError(what + ": field '" + field + "' has a malformed entry");
    (*out)[k] = Seen{v[0].get<int64_t>(), v[1].get<std::string>(), v[2].get<bool>()};
  }
  return Status::Ok();
}

std::string EncodeState(const GcState& s) {
  json b;
  b["run"] = s.run;
  b["started"] = s.started;
  b["candidates"] = SeenMapToJson(s.candidates);
  b["no_index"] = SeenMapToJson(s.no_index);
  b["temporaries"] = SeenMapToJson(s.temporaries);
  b["repack"] = SeenMapToJson(s.repack);
  b["replaced_by"] = s.replaced_by;
  return EncodeJsonEnvelope(kStateKind, b);
}

StatusOr<GcState> DecodeState(std::string_view bytes, const std::string& what) {
  VMB_ASSIGN_OR_RETURN(json b, DecodeJsonEnvelope(bytes, kStateKind, kMaxGcStateBytes, what));
  GcState s;
  if (!b.contains("run") || !b["run"].is_string() || !b.contains("started") ||
      !b["started"].is_number_integer())
    return DataLossError(what + " is incomplete");
  s.run = b["run"].get<std::string>();
  s.started = b["started"].get<int64_t>();
  VMB_RETURN_IF_ERROR(SeenMapFromJson(b, "candidates", what, &s.candidates));
  VMB_RETURN_IF_ERROR(SeenMapFromJson(b, "no_index", what, &s.no_index));
  VMB_RETURN_IF_ERROR(SeenMapFromJson(b, "temporaries", what, &s.temporaries));
  VMB_RETURN_IF_ERROR(SeenMapFromJson(b, "repack", what, &s.repack));
  auto rb = b.find("replaced_by");
  if (rb == b.end() || !rb->is_object())
    return DataLossError(what + ": field 'replaced_by' is not an object");
  for (const auto& [k, v] : rb->items()) {
    if (!v.is_string() || v.get<std::string>().size() != 32)
      return DataLossError(what + ": field 'replaced_by' has a malformed entry");
    s.replaced_by[k] = v.get<std::string>();
  }
  return s;
}

// The live set: sorted, distinct 8-byte prefixes of every live digest. A dead block whose prefix
// equals a live one's is kept (never the other way round), at odds of about live / 2^64 per block.
class LiveSet {
 public:
  static uint64_t Prefix(const Digest& d) {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | d[static_cast<size_t>(i)];
    return v;
  }
  // Adds a batch (one volume index): sorted and merged, so memory stays one entry per live block
  // plus the batch.
  void Add(std::vector<uint64_t> batch) {
    std::sort(batch.begin(), batch.end());
    batch.erase(std::unique(batch.begin(), batch.end()), batch.end());
    const size_t mid = v_.size();
    // Grow by a quarter at a time: the reallocation holds old and new arrays at once.
    if (v_.capacity() < mid + batch.size()) v_.reserve(std::max(mid + batch.size(), mid + mid / 4));
    v_.insert(v_.end(), batch.begin(), batch.end());
    batch.clear();
    batch.shrink_to_fit();
    std::inplace_merge(v_.begin(), v_.begin() + static_cast<std::ptrdiff_t>(mid), v_.end());
    v_.erase(std::unique(v_.begin(), v_.end()), v_.end());
  }
  bool Contains(const Digest& d) const {
    return std::binary_search(v_.begin(), v_.end(), Prefix(d));
  }
  size_t size() const { return v_.size(); }

 private:
  std::vector<uint64_t> v_;
};

// The index copy in the trailer of pack `id` (of `size` bytes).
StatusOr<std::vector<PackEntry>> ReadTrailerEntries(ObjectStore& store, const std::string& id,
                                                    uint64_t size, std::string* index_bytes) {
  const std::string key = PackKey(id);
  const std::string what = "pack " + key;
  const uint64_t tail = 8 + kPackTrailerMagic.size();
  if (size < kPackMagic.size() + tail) return DataLossError(what + " is truncated");
  VMB_ASSIGN_OR_RETURN(std::string t, store.Get(key, size - tail, tail));
  if (t.size() != tail || std::string_view(t).substr(8) != kPackTrailerMagic)
    return DataLossError(what + " has no trailer");
  const uint64_t off = GetU64(t.data());
  if (off < kPackMagic.size() || off > size - tail || size - tail - off > kMaxWholeObjectRead)
    return DataLossError(what + " has a trailer pointing outside the pack");
  VMB_ASSIGN_OR_RETURN(*index_bytes, store.Get(key, off, size - tail - off));
  return DecodePackIndex(*index_bytes, id, what + " (index copy in the trailer)");
}

// A pack with live and dead blocks (stored bytes of each).
struct PartlyLive {
  std::string id;
  uint64_t size = 0, live = 0, dead = 0;
};

// The packs to repack so that the dead bytes left in partly-live packs are at most `max_unused`
// percent of what all indexed packs keep (live bytes plus that dead rest): the largest dead
// shares first (ties: more dead bytes, then the id, so that runs choose alike). 0 chooses every
// partly-live pack, 100 none.
std::vector<const PartlyLive*> ChooseRepacks(const std::vector<PartlyLive>& partly,
                                             uint64_t live_bytes, int max_unused) {
  std::vector<const PartlyLive*> order;
  uint64_t dead = 0;
  for (const auto& p : partly) {
    order.push_back(&p);
    dead += p.dead;
  }
  std::sort(order.begin(), order.end(), [](const PartlyLive* a, const PartlyLive* b) {
    // a.dead / (a.dead + a.live) > b.dead / (b.dead + b.live), cross-multiplied in 128 bits.
    const unsigned __int128 l = static_cast<unsigned __int128>(a->dead) * (b->dead + b->live);
    const unsigned __int128 r = static_cast<unsigned __int128>(b->dead) * (a->dead + a->live);
    if (l != r) return l > r;
    if (a->dead != b->dead) return a->dead > b->dead;
    return a->id < b->id;
  });
  auto within = [&](uint64_t d) {
    const unsigned __int128 total = static_cast<unsigned __int128>(live_bytes) + d;
    return static_cast<unsigned __int128>(d) * 100 <= total * static_cast<unsigned>(max_unused);
  };
  size_t n = 0;
  while (n < order.size() && !within(dead)) dead -= order[n++]->dead;
  order.resize(n);
  return order;
}

class Run {
 public:
  Run(Repository& repo, const GcOptions& o, const GcClock& clock)
      : repo_(repo), store_(repo.store()), opts_(o), clock_(clock) {}

  StatusOr<GcReport> Go();

 private:
  Status Progress(const char* phase, uint64_t done, uint64_t total) {
    VMB_RETURN_IF_ERROR(RenewLock());
    if (!opts_.progress) return Status::Ok();
    GcProgress p{phase, done, total};
    if (!opts_.progress(p))
      return CancelledError("garbage collection cancelled (" + std::string(phase) + ")");
    return Status::Ok();
  }
  Status Delete(const std::vector<std::string>& keys) {
    if (opts_.dry_run || keys.empty()) return Status::Ok();
    return store_.Delete(keys);
  }
  Status GateAndUpgrade();
  Status Lock();
  void Unlock();
  std::string LockBody(int64_t renewed) const;
  // Rewrites the lock every 10 minutes of a long run, so that only a run that stopped renewing it
  // for kGcLockStaleSeconds counts as killed.
  Status RenewLock() {
    if (!locked_) return Status::Ok();
    const int64_t t = clock_();
    if (t - renewed_ < 600) return Status::Ok();
    renewed_ = t;
    return store_.Put(kGcLockKey, LockBody(t), PutOptions{}).WithContext("renewing the GC lock");
  }
  int64_t renewed_ = 0;
  StatusOr<std::optional<GcState>> PreviousState();
  Status ReadLeases();
  Status BuildLiveSet();
  Status Finish();
  Status Mark(const std::string& prev_run);
  Status SweepRestorePartials();
  StatusOr<std::string> RepackLive(const std::string& id, uint64_t size,
                                   const std::vector<PackEntry>& entries);
  // Digests of pack `id`'s index (empty when it is missing or unreadable).
  // The entries of pack `id`'s index, read and decoded (kNotFound when it is gone, kDataLoss when
  // it does not decode).
  StatusOr<std::vector<PackEntry>> ReadPackIndex(const std::string& id);
  std::set<Digest> DigestsOf(const std::string& id);
  std::string prev_newest_;  // the newest run with a state on the target, readable or not

  Repository& repo_;
  ObjectStore& store_;
  const GcOptions& opts_;
  const GcClock& clock_;
  int64_t now_ = 0, grace_ = 0, expiry_ = 0;
  int max_unused_ = kDefaultMaxUnusedPercent;
  std::string run_;
  bool locked_ = false;
  GcReport r_;
  LiveSet live_;
  bool sweep_ = true;  // false when something is damaged: nothing is deleted but temporaries
  // Active leases: the newest completed run each writer had seen ("" = none).
  std::vector<std::string> lease_seen_;

  // True when a lease's writer may use a pack that run `first_run` found without an index.
  bool Leased(const std::string& first_run) const {
    for (const auto& s : lease_seen_)
      if (s < first_run) return true;
    return false;
  }
  bool GraceOver(const std::map<std::string, Seen>* prev, const std::string& key,
                 Seen* seen) const {
    if (prev == nullptr) return false;
    auto it = prev->find(key);
    if (it == prev->end()) return false;
    *seen = it->second;
    return now_ - it->second.first_seen >= grace_;
  }
};

Status Run::GateAndUpgrade() {
  VMB_ASSIGN_OR_RETURN(std::string bytes, store_.GetAtMost(kDescriptorKey, kMaxDescriptorBytes));
  VMB_ASSIGN_OR_RETURN(RepoDescriptor d, DecodeDescriptor(bytes));
  if (d.writer_version > kWriterVersion)
    return FailedPreconditionError("repository at " + store_.Describe() + " needs writer version " +
                                   std::to_string(d.writer_version) + "; this library is " +
                                   std::to_string(kWriterVersion));
  if (d.version >= 2 || opts_.dry_run) return Status::Ok();
  // The writer-version gate (FORMAT.md): from now on version-1 libraries, which do not take
  // leases, refuse the repository.
  d.version = 2;
  d.writer_version = kWriterVersion;
  return store_.Put(kDescriptorKey, EncodeDescriptor(d), PutOptions{})
      .WithContext("upgrading the repository descriptor for garbage collection");
}

std::string Run::LockBody(int64_t renewed) const {
  json b;
  b["host"] = HostName();
  b["started"] = renewed;  // when the holder last renewed it (its clock)
  b["started_at"] = UnixToRfc3339(now_);
  b["process"] = ProcessIdentity();
  return EncodeJsonEnvelope(kLockKind, b);
}

Status Run::Lock() {
  renewed_ = now_;
  const std::string body = LockBody(now_);
  for (int attempt = 0; attempt < 2; ++attempt) {
    Status st = store_.Put(kGcLockKey, body, PutOptions{.if_absent = true});
    if (st.ok()) {
      locked_ = true;
      return st;
    }
    if (st.code() != StatusCode::kAlreadyExists) return st;
    auto held = store_.GetAtMost(kGcLockKey, kMaxLeaseBytes);
    if (!held.ok() && held.status().code() == StatusCode::kNotFound) continue;
    VMB_RETURN_IF_ERROR(held.status());
    auto hb = DecodeJsonEnvelope(*held, kLockKind, kMaxLeaseBytes, kGcLockKey);
    int64_t started = 0;
    std::string who = "(unreadable lock)";
    if (hb.ok() && hb->contains("started") && (*hb)["started"].is_number_integer()) {
      started = (*hb)["started"].get<int64_t>();
      who = "host " + hb->value("host", std::string("?")) + " since " + UnixToRfc3339(started);
    }
    // A holder of this machine that is certainly gone (killed) needs no waiting out.
    const bool gone = hb.ok() && hb->contains("process") && (*hb)["process"].is_string() &&
                      ProcessCertainlyGone((*hb)["process"].get<std::string>());
    if (!gone && now_ - started < kGcLockStaleSeconds)
      return FailedPreconditionError("another garbage collection holds " + std::string(kGcLockKey) +
                                     " on " + store_.Describe() + ": " + who);
    VMB_RETURN_IF_ERROR(store_.Delete({kGcLockKey}));  // stale: left by a killed run
  }
  return AbortedError("garbage collection lock " + std::string(kGcLockKey) + " keeps changing");
}

void Run::Unlock() {
  if (locked_) (void)store_.Delete({kGcLockKey});
  locked_ = false;
}

StatusOr<std::optional<GcState>> Run::PreviousState() {
  VMB_ASSIGN_OR_RETURN(auto keys, store_.ListAll(kGcPrefix));
  std::string newest;
  for (const auto& o : keys) {
    std::string run = RunFromStateKey(o.key);
    if (!run.empty() && run > newest) newest = run;
  }
  prev_newest_ = newest;
  if (newest.empty()) return std::optional<GcState>();
  auto bytes = store_.GetAtMost(StateKey(newest), kMaxGcStateBytes);
  if (!bytes.ok()) {
    if (bytes.status().code() == StatusCode::kDataLoss) {
      r_.damaged.push_back(bytes.status().message());
      return std::optional<GcState>();
    }
    return bytes.status();
  }
  auto st = DecodeState(*bytes, "garbage collection state " + StateKey(newest));
  if (!st.ok()) {
    // Without it every grace period starts again: nothing is deleted early.
    r_.damaged.push_back(st.status().message());
    return std::optional<GcState>();
  }
  return std::optional<GcState>(std::move(*st));
}

Status Run::ReadLeases() {
  VMB_ASSIGN_OR_RETURN(auto keys, store_.ListAll(kLeasePrefix));
  std::vector<std::string> expired;
  for (const auto& o : keys) {
    auto bytes = store_.GetAtMost(o.key, kMaxLeaseBytes);
    if (!bytes.ok()) {
      if (bytes.status().code() == StatusCode::kNotFound) continue;  // the job ended
      if (bytes.status().code() != StatusCode::kDataLoss) return bytes.status();
    }
    auto b = bytes.ok() ? DecodeJsonEnvelope(*bytes, kLeaseKind, kMaxLeaseBytes, "lease " + o.key)
                        : StatusOr<json>(bytes.status());
    if (!b.ok() || !b->contains("created") || !(*b)["created"].is_number_integer() ||
        !b->contains("gc_seen") || !(*b)["gc_seen"].is_string()) {
      // Honoured as a writer that saw no run (the safe reading) until it expires by name.
      r_.damaged.push_back("lease " + o.key + " is unreadable");
      lease_seen_.push_back("");
      ++r_.leases_active;
      continue;
    }
    // Expired, or its writer was a process of this machine that no longer runs (killed): it
    // publishes nothing any more.
    if (now_ - (*b)["created"].get<int64_t>() > expiry_ ||
        (b->contains("process") && (*b)["process"].is_string() &&
         ProcessCertainlyGone((*b)["process"].get<std::string>()))) {
      expired.push_back(o.key);
      ++r_.leases_expired;
      continue;
    }
    lease_seen_.push_back((*b)["gc_seen"].get<std::string>());
    ++r_.leases_active;
  }
  return Delete(expired);
}

Status Run::BuildLiveSet() {
  VMB_ASSIGN_OR_RETURN(BackupList list, repo_.ListBackups());
  for (const auto& d : list.damaged) {
    r_.damaged.push_back("backup record " + d);
    sweep_ = false;  // its blocks are unknown
  }
  r_.backups = list.backups.size();
  uint64_t done = 0;
  for (const auto& b : list.backups) {
    bool deleted_meanwhile = false;
    for (const auto& v : b.volumes) {
      auto idx = repo_.LoadVolumeIndex(b.name, v);
      if (!idx.ok()) {
        if (idx.status().code() != StatusCode::kDataLoss) return idx.status();
        // A backup deleted since the listing (its record goes first, then its volume indexes)
        // is not damage: its blocks are simply no longer live.
        auto record = store_.Head(RecordKey(b.name));
        if (!record.ok() && record.status().code() == StatusCode::kNotFound) {
          deleted_meanwhile = true;
          break;
        }
        r_.damaged.push_back(idx.status().message());
        sweep_ = false;
        continue;
      }
      std::vector<uint64_t> batch;
      batch.reserve(idx->digests.size());
      for (size_t i = 0; i < idx->kinds.size(); ++i)
        if (idx->kinds[i] == BlockKind::kData) batch.push_back(LiveSet::Prefix(idx->digests[i]));
      *idx = VolumeIndex{};  // freed before the set grows
      live_.Add(std::move(batch));
    }
    if (deleted_meanwhile) --r_.backups;
    VMB_RETURN_IF_ERROR(Progress("records", ++done, list.backups.size()));
  }
  r_.live_blocks = live_.size();
  return Status::Ok();
}

StatusOr<GcReport> Run::Go() {
  r_.dry_run = opts_.dry_run;
  if (opts_.grace_seconds < -1 || opts_.lease_expiry_seconds < -1)
    return InvalidArgumentError(
        "GcOptions: grace_seconds and lease_expiry_seconds must be >= 0 "
        "(or -1 for the default)");
  if (opts_.max_unused_percent < -1 || opts_.max_unused_percent > 100)
    return InvalidArgumentError(
        "GcOptions: max_unused_percent must be 0 to 100 (or -1 for the "
        "default, " +
        std::to_string(kDefaultMaxUnusedPercent) + "), not " +
        std::to_string(opts_.max_unused_percent));
  max_unused_ =
      opts_.max_unused_percent == -1 ? kDefaultMaxUnusedPercent : opts_.max_unused_percent;
  grace_ = opts_.grace_seconds == -1 ? kDefaultGraceSeconds : opts_.grace_seconds;
  expiry_ =
      opts_.lease_expiry_seconds == -1 ? kDefaultLeaseExpirySeconds : opts_.lease_expiry_seconds;
  now_ = clock_();
  VMB_RETURN_IF_ERROR(Progress("mark", 0, 0));
  VMB_RETURN_IF_ERROR(GateAndUpgrade());
  if (!opts_.dry_run) VMB_RETURN_IF_ERROR(Lock());
  Status st = Finish();
  Unlock();
  if (!st.ok()) return st;
  return r_;
}

// Run ids: "<sequence, 10 digits>-<UTC time>-<random>", the sequence one more than the previous
// run's, so they sort in run order whatever the clocks of the GC hosts say.
static std::string NextRunId(const std::string& prev, int64_t now, const std::string& rnd) {
  uint64_t seq = 0;
  if (prev.size() > 10 && prev[10] == '-')
    seq = std::strtoull(prev.substr(0, 10).c_str(), nullptr, 10);
  std::time_t tt = static_cast<std::time_t>(now);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[80];
  std::strftime(buf, sizeof(buf), "%Y%m%dT%H%M%SZ", &tm);
  char id[160];
  std::snprintf(id, sizeof(id), "%010llu-%s-%s", static_cast<unsigned long long>(seq + 1), buf,
                rnd.c_str());
  return id;
}

Status Run::Mark(const std::string& prev_run) {
  VMB_ASSIGN_OR_RETURN(std::string rnd, RandomHex(4));
  run_ = NextRunId(prev_run, now_, rnd);
  if (opts_.dry_run) return Status::Ok();
  r_.run = run_;
  json m;
  m["run"] = run_;
  m["host"] = HostName();
  m["started_at"] = UnixToRfc3339(now_);
  return store_.Put(MarkKey(run_), EncodeJsonEnvelope(kMarkKind, m), PutOptions{});
}

// Leftovers of killed restores on this host (RestorePlan writes "<dest>.vmbackup-partial-<rand>"
// and renames it into place). Ages on this host's clock, which wrote them.
Status Run::SweepRestorePartials() {
  const auto now = std::filesystem::file_time_type::clock::now();
  for (const auto& dir : opts_.restore_dirs) {
    std::error_code ec;
    std::filesystem::directory_iterator it(dir, ec);
    if (ec) return ErrnoToStatus(ec.value(), "list restore directory " + dir);
    for (const auto& e : it) {
      const std::string name = e.path().filename().string();
      if (name.find(".vmbackup-partial-") == std::string::npos) continue;
      std::error_code fe;
      if (!e.is_regular_file(fe) || e.is_symlink(fe)) continue;
      const auto mtime = e.last_write_time(fe);
      if (fe) continue;
      if (now - mtime < std::chrono::seconds(grace_)) continue;
      ++r_.restore_partials_deleted;
      r_.bytes_deleted += e.file_size(fe);
      if (!opts_.dry_run && ::unlink(e.path().c_str()) != 0 && errno != ENOENT)
        return ErrnoToStatus(errno, "remove " + e.path().string());
    }
  }
  return Status::Ok();
}

// Writes the live blocks of pack `id` (checked against their digests) into a new pack and its
// index; returns the new pack's id. kDataLoss when a live block of the pack is damaged.
StatusOr<std::string> Run::RepackLive(const std::string& id, uint64_t size,
                                      const std::vector<PackEntry>& entries) {
  const std::string what = "pack " + PackKey(id);
  VMB_ASSIGN_OR_RETURN(std::string pack, store_.Get(PackKey(id), 0, size));
  PackBuilder pb(static_cast<uint32_t>(std::min<uint64_t>(size, kMaxPackSize)));
  std::string raw;
  for (const auto& e : entries) {
    if (!live_.Contains(e.digest)) continue;
    if (e.offset > pack.size() || e.stored_len > pack.size() - e.offset)
      return DataLossError(what + " is shorter than its index says");
    raw.resize(e.raw_len);
    VMB_RETURN_IF_ERROR(
        DecodeBlock(e.codec, pack.data() + e.offset, e.stored_len, raw.data(), e.raw_len));
    if (repo_.block_namer()(raw) != e.digest)
      return DataLossError(what + " holds a block that does not match its digest (at offset " +
                           std::to_string(e.offset) + ")");
    pb.Add(e.digest, raw.data(), raw.size());
  }
  VMB_ASSIGN_OR_RETURN(PackBuilder::Sealed sealed, pb.Seal());
  // Data before metadata, as every writer does.
  VMB_RETURN_IF_ERROR(store_.Put(PackKey(sealed.id), sealed.data, PutOptions{}));
  VMB_RETURN_IF_ERROR(store_.Put(PackIndexKey(sealed.id), sealed.index, PutOptions{}));
  r_.bytes_repacked += sealed.data.size();
  return sealed.id;
}

StatusOr<std::vector<PackEntry>> Run::ReadPackIndex(const std::string& id) {
  VMB_ASSIGN_OR_RETURN(std::string bytes, store_.GetAtMost(PackIndexKey(id), kMaxWholeObjectRead));
  return DecodePackIndex(bytes, id, "pack index " + PackIndexKey(id));
}

std::set<Digest> Run::DigestsOf(const std::string& id) {
  std::set<Digest> out;
  auto entries = ReadPackIndex(id);
  if (!entries.ok()) return out;
  for (const auto& e : *entries) out.insert(e.digest);
  return out;
}

Status Run::Finish() {
  VMB_ASSIGN_OR_RETURN(std::optional<GcState> prev, PreviousState());
  VMB_RETURN_IF_ERROR(Mark(prev_newest_));
  const auto* prev_candidates = prev ? &prev->candidates : nullptr;
  const auto* prev_no_index = prev ? &prev->no_index : nullptr;
  const auto* prev_temporaries = prev ? &prev->temporaries : nullptr;
  const auto* prev_repack = prev ? &prev->repack : nullptr;
  // Leases before records: a writer that removed its lease before this listing published its
  // record before it, so the record scan below sees it.
  VMB_RETURN_IF_ERROR(ReadLeases());
  VMB_RETURN_IF_ERROR(BuildLiveSet());

  GcState next;
  next.run = run_;
  next.started = now_;

  // Pack indexes and packs.
  VMB_ASSIGN_OR_RETURN(auto index_keys, store_.ListAll(kIndexPrefix));
  VMB_ASSIGN_OR_RETURN(auto pack_keys, store_.ListAll(kPackPrefix));
  std::map<std::string, uint64_t> pack_size;
  for (const auto& o : pack_keys) {
    std::string id = PackIdFromPackKey(o.key);
    if (!id.empty()) pack_size[id] = o.size;
  }
  std::set<std::string> indexed;
  std::vector<std::string> condemn;  // index keys to delete
  std::vector<PartlyLive> partly;    // packs with live and dead blocks (when repacking)
  uint64_t done = 0;
  // The pack indexes, kDefaultGetWindow reads in flight (GetMany); each is dealt with on this
  // thread as it arrives, in completion order (nothing below depends on the order).
  std::vector<const ObjectInfo*> index_objects;
  for (const auto& o : index_keys) {
    const std::string id = PackIdFromIndexKey(o.key);
    if (id.empty()) continue;
    indexed.insert(id);
    index_objects.push_back(&o);
  }
  VMB_RETURN_IF_ERROR(GetMany(
      store_, index_objects.size(), [&](size_t i) { return index_objects[i]->key; },
      kDefaultGetWindow,
      [&](size_t i, StatusOr<std::string> bytes) -> Status {
        const ObjectInfo& o = *index_objects[i];
        const std::string id = PackIdFromIndexKey(o.key);
        VMB_RETURN_IF_ERROR(Progress("indexes", done++, index_objects.size()));
        if (!bytes.ok()) {
          if (bytes.status().code() == StatusCode::kNotFound)
            return Status::Ok();  // deleted meanwhile
          if (bytes.status().code() != StatusCode::kDataLoss) return bytes.status();
          r_.damaged.push_back(bytes.status().message());
          return Status::Ok();
        }
        auto entries = DecodePackIndex(*bytes, id, "pack index " + o.key);
        if (!entries.ok()) {
          r_.damaged.push_back(entries.status().message());  // left for repair, never collected
          return Status::Ok();
        }
        auto ps = pack_size.find(id);
        if (ps == pack_size.end()) {
          r_.damaged.push_back("pack index " + o.key + " has no pack " + PackKey(id));
          return Status::Ok();
        }
        ++r_.packs;
        r_.pack_bytes += ps->second;
        uint64_t live = 0, dead_bytes = 0, live_bytes = 0;
        for (const auto& e : *entries) {
          if (live_.Contains(e.digest)) {
            ++live;
            live_bytes += e.stored_len;
          } else {
            dead_bytes += e.stored_len;
          }
        }
        r_.live_stored_bytes += live_bytes;
        if (live > 0) {
          if (dead_bytes > 0) {
            ++r_.partly_live_packs;
            r_.dead_bytes_in_partly_live_packs += dead_bytes;
            if (opts_.repack) partly.push_back({id, ps->second, live_bytes, dead_bytes});
          }
          return Status::Ok();
        }
        ++r_.dead_packs;
        r_.dead_pack_bytes += ps->second;
        r_.reclaimable_bytes += ps->second;
        Seen seen;
        if (sweep_ && GraceOver(prev_candidates, id, &seen)) {
          // Condemned: invisible to new backups from now on; the pack goes in a later run.
          condemn.push_back(o.key);
          next.no_index[id] = Seen{now_, run_, true};
          ++r_.indexes_deleted;
        } else {
          next.candidates[id] = prev_candidates && prev_candidates->count(id)
                                    ? prev_candidates->at(id)
                                    : Seen{now_, run_};
          if (!prev_candidates || !prev_candidates->count(id)) ++r_.new_candidates;
        }
        return Status::Ok();
      }));
  // Repack: the partly-live packs with the largest dead share, until what stays dead in them is at
  // most max_unused % of the packs' stored bytes. A chosen pack is listed first; once it was
  // chosen for the grace, its live blocks move to a new pack and it is condemned like a dead pack
  // (the re-check before deleting it accepts blocks the new pack holds).
  std::vector<const PartlyLive*> chosen = ChooseRepacks(partly, r_.live_stored_bytes, max_unused_);
  r_.repack_candidates = chosen.size();
  done = 0;
  for (const PartlyLive* p : chosen) {
    VMB_RETURN_IF_ERROR(Progress("repack", done++, chosen.size()));
    r_.reclaimable_bytes += p->dead;
    Seen seen;
    if (!sweep_ || !GraceOver(prev_repack, p->id, &seen)) {
      next.repack[p->id] =
          prev_repack && prev_repack->count(p->id) ? prev_repack->at(p->id) : Seen{now_, run_};
      continue;
    }
    ++r_.packs_repacked;
    if (opts_.dry_run) continue;
    // The index again (not kept from the listing above, so memory stays bounded by the number
    // of packs, not of blocks); gone or damaged meanwhile: left for the next run or for repair.
    auto entries = ReadPackIndex(p->id);
    auto replacement = entries.ok() ? RepackLive(p->id, p->size, *entries)
                                    : StatusOr<std::string>(entries.status());
    if (!replacement.ok()) {
      --r_.packs_repacked;
      const StatusCode c = replacement.status().code();
      if (c == StatusCode::kNotFound) continue;
      if (c != StatusCode::kDataLoss) return replacement.status();
      r_.damaged.push_back(replacement.status().message());  // left for repair
      continue;
    }
    condemn.push_back(PackIndexKey(p->id));
    next.no_index[p->id] = Seen{now_, run_, true};
    next.replaced_by[p->id] = *replacement;
    ++r_.indexes_deleted;
  }
  VMB_RETURN_IF_ERROR(Delete(condemn));

  // Packs without an index: condemned by an earlier run, or orphans of killed writers.
  std::vector<std::string> doomed;
  for (const auto& [id, size] : pack_size) {
    VMB_RETURN_IF_ERROR(Progress("sweep", done++, 0));
    if (indexed.count(id)) continue;
    if (next.no_index.count(id)) continue;
    r_.reclaimable_bytes += size;
    Seen seen;
    const bool due = sweep_ && GraceOver(prev_no_index, id, &seen);
    std::string replacement;
    if (prev && prev->replaced_by.count(id)) replacement = prev->replaced_by.at(id);
    if (!due) {
      next.no_index[id] =
          prev_no_index && prev_no_index->count(id) ? prev_no_index->at(id) : Seen{now_, run_};
      if (!replacement.empty()) next.replaced_by[id] = replacement;
      continue;
    }
    if (Leased(seen.first_run)) {
      ++r_.packs_leased;
      next.no_index[id] = seen;
      if (!replacement.empty()) next.replaced_by[id] = replacement;
      continue;
    }
    // Re-check: a backup that loaded the index before it was deleted may have published since.
    std::string index_bytes;
    auto entries = ReadTrailerEntries(store_, id, size, &index_bytes);
    if (!entries.ok() && entries.status().code() == StatusCode::kNotFound) continue;
    if (!entries.ok() && entries.status().code() != StatusCode::kDataLoss) return entries.status();
    // A repacked pack's live blocks are in its replacement (while that pack is indexed).
    const std::set<Digest> covered =
        replacement.empty() ? std::set<Digest>() : DigestsOf(replacement);
    bool live = false;
    if (entries.ok())
      for (const auto& e : *entries)
        live = live || (live_.Contains(e.digest) && !covered.count(e.digest));
    if (live) {
      if (!opts_.dry_run)
        VMB_RETURN_IF_ERROR(store_.Put(PackIndexKey(id), index_bytes, PutOptions{}));
      ++r_.indexes_restored;
      r_.reclaimable_bytes -= size;
      continue;
    }
    doomed.push_back(PackKey(id));
    r_.bytes_deleted += size;
    // A pack some run condemned (its index deleted by GC), or an orphan (never indexed).
    if (seen.condemned) {
      ++r_.packs_deleted;
    } else {
      ++r_.orphan_packs_deleted;
    }
  }
  VMB_RETURN_IF_ERROR(Delete(doomed));

  // Stray temporaries of killed writers (local and NFS targets).
  VMB_ASSIGN_OR_RETURN(auto tmps, store_.ListAll(kTmpPrefix));
  std::vector<std::string> stray;
  for (const auto& o : tmps) {
    r_.reclaimable_bytes += o.size;
    Seen seen;
    // A running backup may be uploading through it: postponed like its packs (see Leased).
    if (GraceOver(prev_temporaries, o.key, &seen) && !Leased(seen.first_run)) {
      stray.push_back(o.key);
      ++r_.temporaries_deleted;
      r_.bytes_deleted += o.size;
    } else {
      next.temporaries[o.key] = prev_temporaries && prev_temporaries->count(o.key)
                                    ? prev_temporaries->at(o.key)
                                    : Seen{now_, run_};
    }
  }
  VMB_RETURN_IF_ERROR(Delete(stray));

  VMB_RETURN_IF_ERROR(SweepRestorePartials());
  VMB_RETURN_IF_ERROR(Progress("done", 1, 1));
  if (opts_.dry_run) return Status::Ok();
  // The state for the next run, then the files of older runs (this run's and the previous
  // run's stay).
  VMB_RETURN_IF_ERROR(store_.Put(StateKey(run_), EncodeState(next), PutOptions{}));
  VMB_ASSIGN_OR_RETURN(auto gc_keys, store_.ListAll(kGcPrefix));
  std::vector<std::string> old;
  for (const auto& o : gc_keys) {
    if (o.key == kGcLockKey) continue;
    const std::string rest = o.key.substr(3);
    const std::string run = rest.substr(0, rest.find('.'));
    if (run < run_ && (!prev || run < prev->run)) old.push_back(o.key);
  }
  return Delete(old);
}

}  // namespace

StatusOr<std::string> NewestCompletedGcRun(ObjectStore& store) {
  VMB_ASSIGN_OR_RETURN(auto keys, store.ListAll(kGcPrefix));
  std::string newest;
  for (const auto& o : keys) {
    std::string run = RunFromStateKey(o.key);
    if (run > newest) newest = run;
  }
  return newest;
}

StatusOr<std::unique_ptr<WriterLease>> WriterLease::Acquire(ObjectStore& store,
                                                            const std::string& job) {
  VMB_ASSIGN_OR_RETURN(std::string seen, NewestCompletedGcRun(store));
  VMB_ASSIGN_OR_RETURN(std::string rnd, RandomHex(4));
  const std::string key = std::string(kLeasePrefix) + job + "." + rnd + ".json";
  json b;
  b["job"] = job;
  b["host"] = HostName();
  b["created"] = SystemUnixSeconds();
  b["created_at"] = NowRfc3339();
  b["gc_seen"] = seen;
  b["process"] = ProcessIdentity();
  VMB_RETURN_IF_ERROR(store.Put(key, EncodeJsonEnvelope(kLeaseKind, b), PutOptions{})
                          .WithContext("writing the backup's lease " + key));
  return std::unique_ptr<WriterLease>(new WriterLease(store, key));
}

WriterLease::~WriterLease() { (void)store_.Delete({key_}); }

StatusOr<std::shared_ptr<const RepoIndex>> WithCondemnedPacks(
    ObjectStore& store, std::shared_ptr<const RepoIndex> index,
    const std::vector<const VolumeIndex*>& volumes) {
  std::set<Digest> missing;
  for (const VolumeIndex* v : volumes)
    for (size_t i = 0; i < v->kinds.size(); ++i)
      if (v->kinds[i] == BlockKind::kData && index->Find(v->digests[i]) == nullptr)
        missing.insert(v->digests[i]);
  if (missing.empty()) return index;
  VMB_ASSIGN_OR_RETURN(auto index_keys, store.ListAll(kIndexPrefix));
  VMB_ASSIGN_OR_RETURN(auto pack_keys, store.ListAll(kPackPrefix));
  std::set<std::string> indexed;
  for (const auto& o : index_keys) indexed.insert(PackIdFromIndexKey(o.key));
  auto next = std::make_shared<RepoIndex>(*index);
  for (const auto& o : pack_keys) {
    if (missing.empty()) break;
    const std::string id = PackIdFromPackKey(o.key);
    if (id.empty() || indexed.count(id)) continue;
    std::string bytes;
    auto entries = ReadTrailerEntries(store, id, o.size, &bytes);
    if (!entries.ok()) continue;  // an orphan or damaged pack: not where the blocks are
    bool useful = false;
    for (const auto& e : *entries) useful = missing.erase(e.digest) > 0 || useful;
    if (useful) next->AddPack(id, *entries);
  }
  return std::shared_ptr<const RepoIndex>(std::move(next));
}

StatusOr<GcReport> RunGc(Repository& repo, const GcOptions& options, const GcClock& clock) {
  Run run(repo, options, clock);
  return run.Go();
}

}  // namespace vmbackup::internal
