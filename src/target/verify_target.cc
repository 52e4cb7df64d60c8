// BackupTarget::Verify and BackupTarget::Repair (see backup_target.h and vmbackup/verify.h), the
// read-data subset parser and the reports' one JSON form (for the C binding, Python and
// vmbackupctl). Field order is fixed (ordered_json), so output is stable and diffable.
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "engine/repair.h"
#include "engine/verify.h"
#include "target/target_impl.h"
#include "vmbackup/backup_target.h"
#include "vmbackup/verify.h"

namespace vmbackup {

namespace {

using nlohmann::ordered_json;

bool ParseU32(std::string_view s, uint32_t* out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

ordered_json VerifyJson(const VerifyReport& r) {
  ordered_json j;
  j["ok"] = r.ok();
  j["backups"] = r.backups;
  j["volumes"] = r.volumes;
  j["blocks_referenced"] = r.blocks_referenced;
  j["unique_blocks"] = r.unique_blocks;
  j["bytes_referenced"] = r.bytes_referenced;
  j["packs"] = r.packs;
  j["packs_without_index"] = r.packs_without_index;
  j["packs_read"] = r.packs_read;
  j["blocks_checked"] = r.blocks_checked;
  j["bytes_checked"] = r.bytes_checked;
  j["bytes_read"] = r.bytes_read;
  j["damaged_records"] = r.damaged_records;
  j["damaged_volume_indexes"] = r.damaged_volume_indexes;
  ordered_json packs = ordered_json::array();
  for (const PackProblem& p : r.pack_problems)
    packs.push_back(ordered_json{{"pack_id", p.pack_id}, {"problem", p.problem}});
  j["pack_problems"] = std::move(packs);
  ordered_json blocks = ordered_json::array();
  for (const BadBlock& b : r.bad_blocks) {
    blocks.push_back(ordered_json{{"backup", b.backup},
                                  {"volume", b.volume},
                                  {"offset", b.offset},
                                  {"digest", b.digest},
                                  {"pack_id", b.pack_id},
                                  {"pack_offset", b.pack_offset},
                                  {"problem", b.problem}});
  }
  j["bad_blocks"] = std::move(blocks);
  j["bad_block_count"] = r.bad_block_count;
  j["damaged_backups"] = r.damaged_backups;
  j["seconds"] = r.seconds;
  return j;
}

std::string Dump(const ordered_json& j) {
  // Replacement of invalid UTF-8: names and messages may quote bytes from the target.
  return j.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
}

}  // namespace

Status ParseReadDataSubset(std::string_view text, VerifyOptions* options) {
  const std::string t(text);
  auto bad = [&] {
    return InvalidArgumentError("read-data subset '" + t +
                                "': expected a fraction (0.1), a percentage (10%) or n/m");
  };
  if (options == nullptr) return InvalidArgumentError("ParseReadDataSubset: options is null");
  if (const size_t slash = t.find('/'); slash != std::string::npos) {
    uint32_t n = 0, m = 0;
    if (!ParseU32(std::string_view(t).substr(0, slash), &n) ||
        !ParseU32(std::string_view(t).substr(slash + 1), &m) || n < 1 || n > m)
      return bad();
    options->read_data_part = n;
    options->read_data_parts = m;
    return Status::Ok();
  }
  std::string num = t;
  double scale = 1;
  if (!num.empty() && num.back() == '%') {
    num.pop_back();
    scale = 100;
  }
  if (num.empty() || num.find_first_not_of("0123456789.") != std::string::npos) return bad();
  char* end = nullptr;
  const double v = std::strtod(num.c_str(), &end) / scale;
  if (end != num.c_str() + num.size() || !std::isfinite(v) || v <= 0 || v > 1) return bad();
  options->read_data_fraction = v;
  return Status::Ok();
}

std::string VerifyReportToJson(const VerifyReport& report) { return Dump(VerifyJson(report)); }

std::string RepairReportToJson(const RepairReport& r) {
  ordered_json j;
  // Sound: nothing was damaged, or a real repair left no failed action and no unrestorable backup.
  bool failed = false;
  for (const RepairAction& a : r.actions) failed = failed || !a.error.empty();
  j["ok"] = r.before.ok() || (!r.dry_run && !failed && r.unrestorable_backups.empty());
  j["dry_run"] = r.dry_run;
  ordered_json actions = ordered_json::array();
  for (const RepairAction& a : r.actions) {
    actions.push_back(ordered_json{{"pack_id", a.pack_id},
                                   {"action", a.action},
                                   {"new_pack_id", a.new_pack_id},
                                   {"blocks_kept", a.blocks_kept},
                                   {"blocks_lost", a.blocks_lost},
                                   {"detail", a.detail},
                                   {"done", a.done},
                                   {"error", a.error}});
  }
  j["actions"] = std::move(actions);
  j["unrestorable_backups"] = r.unrestorable_backups;
  j["before"] = VerifyJson(r.before);
  return Dump(j);
}

StatusOr<VerifyReport> BackupTarget::Verify(const VerifyOptions& options) const {
  return internal::GuardExceptions("BackupTarget::Verify", [&]() -> StatusOr<VerifyReport> {
    internal::Verifier v(*impl_->repo, *impl_->runtime, options);
    return v.Run();
  });
}

StatusOr<RepairReport> BackupTarget::Repair(const RepairOptions& options) {
  return internal::GuardExceptions("BackupTarget::Repair", [&]() -> StatusOr<RepairReport> {
    return internal::RepairRepository(*impl_->repo, *impl_->runtime, options);
  });
}

}  // namespace vmbackup
