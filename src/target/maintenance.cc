// BackupTarget::Forget and BackupTarget::CollectGarbage, and GcReportToJson (maintenance.h).
#include <nlohmann/json.hpp>

#include "catalog/retention.h"
#include "core/errors.h"
#include "repo/gc.h"
#include "target/target_impl.h"
#include "vmbackup/backup_target.h"

namespace vmbackup {

StatusOr<ForgetResult> BackupTarget::Forget(const RetentionPolicy& policy,
                                            const ForgetOptions& options) {
  return internal::GuardExceptions("BackupTarget::Forget", [&]() -> StatusOr<ForgetResult> {
    if (!internal::PolicyKeepsSomething(policy))
      return InvalidArgumentError(
          "retention policy: every keep count must be >= 0 and at least one > 0 (a policy that "
          "keeps nothing would forget every backup)");
    if (options.vm_name.empty() && !options.vm_namespace.empty())
      return InvalidArgumentError("ForgetOptions.vm_namespace needs vm_name");
    VMB_ASSIGN_OR_RETURN(BackupList list, impl_->repo->ListBackups());
    std::vector<BackupInfo> considered;
    for (auto& b : list.backups) {
      if (!options.vm_name.empty() &&
          (b.vm_name != options.vm_name || b.vm_namespace != options.vm_namespace))
        continue;
      considered.push_back(std::move(b));
    }
    ForgetResult out;
    out.decision = SelectBackupsToForget(policy, considered);
    if (options.dry_run) return out;
    for (const auto& name : out.decision.forget) {
      Status st = impl_->repo->DeleteBackup(name);
      if (!st.ok() && st.code() != StatusCode::kNotFound) {
        std::string done;
        for (const auto& d : out.deleted) done += (done.empty() ? "" : ", ") + d;
        return st.WithContext("forget: deleting backup '" + name +
                              "' (deleted before it: " + (done.empty() ? "none" : done) + ")");
      }
      if (st.ok()) out.deleted.push_back(name);
    }
    return out;
  });
}

StatusOr<GcReport> BackupTarget::CollectGarbage(const GcOptions& options) {
  return internal::GuardExceptions("BackupTarget::CollectGarbage", [&]() -> StatusOr<GcReport> {
    return internal::RunGc(*impl_->repo, options);
  });
}

std::string GcReportToJson(const GcReport& r) {
  nlohmann::json j;
  j["run"] = r.run;
  j["dry_run"] = r.dry_run;
  j["backups"] = r.backups;
  j["live_blocks"] = r.live_blocks;
  j["packs"] = r.packs;
  j["pack_bytes"] = r.pack_bytes;
  j["dead_packs"] = r.dead_packs;
  j["dead_pack_bytes"] = r.dead_pack_bytes;
  j["partly_live_packs"] = r.partly_live_packs;
  j["dead_bytes_in_partly_live_packs"] = r.dead_bytes_in_partly_live_packs;
  j["live_stored_bytes"] = r.live_stored_bytes;
  j["repack_candidates"] = r.repack_candidates;
  j["packs_repacked"] = r.packs_repacked;
  j["bytes_repacked"] = r.bytes_repacked;
  j["new_candidates"] = r.new_candidates;
  j["indexes_deleted"] = r.indexes_deleted;
  j["packs_deleted"] = r.packs_deleted;
  j["bytes_deleted"] = r.bytes_deleted;
  j["indexes_restored"] = r.indexes_restored;
  j["packs_leased"] = r.packs_leased;
  j["orphan_packs_deleted"] = r.orphan_packs_deleted;
  j["temporaries_deleted"] = r.temporaries_deleted;
  j["restore_partials_deleted"] = r.restore_partials_deleted;
  j["leases_active"] = r.leases_active;
  j["leases_expired"] = r.leases_expired;
  j["reclaimable_bytes"] = r.reclaimable_bytes;
  j["damaged"] = r.damaged;
  return j.dump();
}

}  // namespace vmbackup
