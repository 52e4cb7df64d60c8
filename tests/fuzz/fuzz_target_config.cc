// Fuzzes ParseTargetConfig (the Harvester backup-target setting, JSON). A config that parses must
// satisfy its type's rules, redact its secret, and parse again from its redacted JSON to the same
// target.
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "vmbackup/backup_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using vmbackup::StatusCode;
  using vmbackup::TargetConfig;
  using namespace vmbackup::fuzz;
  vmbackup::StatusOr<TargetConfig> c = vmbackup::ParseTargetConfig(AsView(data, size));
  if (!c.ok()) {
    FUZZ_CHECK(FailedNaming(c.status(), StatusCode::kInvalidArgument, "backup-target setting"));
    return 0;
  }
  switch (c->type) {
    case TargetConfig::Type::kFile:
      FUZZ_CHECK(!c->endpoint.empty() && c->endpoint[0] == '/');
      break;
    case TargetConfig::Type::kS3:
      FUZZ_CHECK(!c->bucket_name.empty() && !c->bucket_region.empty());
      break;
    case TargetConfig::Type::kNfs:
      FUZZ_CHECK(c->endpoint.rfind("nfs://", 0) == 0);
      break;
  }
  FUZZ_CHECK(c->refresh_interval_seconds > 0 && c->refresh_interval_seconds <= 86400 * 365);

  const std::string redacted = c->ToRedactedJson();
  nlohmann::json j = nlohmann::json::parse(redacted, nullptr, /*allow_exceptions=*/false);
  FUZZ_CHECK(j.is_object());
  if (j.contains("secretAccessKey")) {
    FUZZ_CHECK(j["secretAccessKey"] == "" || j["secretAccessKey"] == "***");
  }
  vmbackup::StatusOr<TargetConfig> again = vmbackup::ParseTargetConfig(redacted);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->type == c->type && again->endpoint == c->endpoint &&
             again->prefix == c->prefix &&
             again->refresh_interval_seconds == c->refresh_interval_seconds);
  if (c->type == TargetConfig::Type::kS3) {  // the S3 fields are redacted-dumped for S3 only
    FUZZ_CHECK(again->bucket_name == c->bucket_name && again->bucket_region == c->bucket_region &&
               again->access_key_id == c->access_key_id &&
               again->virtual_hosted_style == c->virtual_hosted_style);
  }
  return 0;
}
