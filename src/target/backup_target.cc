// BackupTarget: configuration parsing, opening stores, catalogue operations.
#include "vmbackup/backup_target.h"

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/runtime.h"
#include "store/local_store.h"
#include "target/store_factory.h"
#include "target/target_impl.h"

namespace vmbackup {

using internal::IsValidName;
using nlohmann::json;

std::string TargetConfig::ToRedactedJson() const {
  json j;
  j["type"] = type == Type::kFile ? "file" : type == Type::kS3 ? "s3" : "nfs";
  j["endpoint"] = endpoint;
  if (type == Type::kS3) {
    j["bucketName"] = bucket_name;
    j["bucketRegion"] = bucket_region;
    j["accessKeyId"] = access_key_id;
    j["secretAccessKey"] = secret_access_key.empty() ? "" : "***";
    j["cert"] = cert.empty() ? "" : "(PEM, " + std::to_string(cert.size()) + " bytes)";
    j["virtualHostedStyle"] = virtual_hosted_style;
    j["allowInsecureHttp"] = allow_insecure_http;
  }
  if (!prefix.empty()) j["prefix"] = prefix;
  j["refreshIntervalInSeconds"] = refresh_interval_seconds;
  return j.dump();
}

namespace {

Status FieldError(const std::string& field, const std::string& what) {
  return InvalidArgumentError("backup-target setting: field '" + field + "' " + what);
}

Status GetString(const json& j, const char* field, std::string* out) {
  if (!j.contains(field) || j[field].is_null()) return Status::Ok();
  if (!j[field].is_string()) return FieldError(field, "must be a string");
  *out = j[field].get<std::string>();
  return Status::Ok();
}

// A boolean field; "true" and "false" as strings are accepted too (Harvester settings are
// strings).
Status GetBool(const json& j, const char* field, bool* out) {
  if (!j.contains(field) || j[field].is_null()) return Status::Ok();
  const json& v = j[field];
  if (v.is_boolean())
    *out = v.get<bool>();
  else if (v.is_string() && (v == "true" || v == "false"))
    *out = v == "true";
  else
    return FieldError(field, "must be a boolean");
  return Status::Ok();
}

}  // namespace

StatusOr<TargetConfig> ParseTargetConfig(std::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError("backup-target setting: not valid JSON");
  if (!j.is_object()) return InvalidArgumentError("backup-target setting: not a JSON object");
  static const char* kKnown[] = {"type",         "endpoint",           "bucketName",
                                 "bucketRegion", "accessKeyId",        "secretAccessKey",
                                 "cert",         "virtualHostedStyle", "refreshIntervalInSeconds",
                                 "prefix",       "allowInsecureHttp"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool known = false;
    for (const char* k : kKnown) known = known || it.key() == k;
    if (!known) return FieldError(it.key(), "is not a known field");
  }
  TargetConfig c;
  std::string type;
  if (!j.contains("type"))
    return FieldError("type", "is missing (expected \"file\", \"s3\" or \"nfs\")");
  VMB_RETURN_IF_ERROR(GetString(j, "type", &type));
  for (auto& ch : type) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (type == "file" || type == "local")
    c.type = TargetConfig::Type::kFile;
  else if (type == "s3")
    c.type = TargetConfig::Type::kS3;
  else if (type == "nfs")
    c.type = TargetConfig::Type::kNfs;
  else
    return FieldError("type",
                      "has unknown value \"" + type + "\" (expected \"file\", \"s3\" or \"nfs\")");
  VMB_RETURN_IF_ERROR(GetString(j, "endpoint", &c.endpoint));
  VMB_RETURN_IF_ERROR(GetString(j, "bucketName", &c.bucket_name));
  VMB_RETURN_IF_ERROR(GetString(j, "bucketRegion", &c.bucket_region));
  VMB_RETURN_IF_ERROR(GetString(j, "accessKeyId", &c.access_key_id));
  VMB_RETURN_IF_ERROR(GetString(j, "secretAccessKey", &c.secret_access_key));
  VMB_RETURN_IF_ERROR(GetString(j, "cert", &c.cert));
  VMB_RETURN_IF_ERROR(GetString(j, "prefix", &c.prefix));
  VMB_RETURN_IF_ERROR(GetBool(j, "virtualHostedStyle", &c.virtual_hosted_style));
  VMB_RETURN_IF_ERROR(GetBool(j, "allowInsecureHttp", &c.allow_insecure_http));
  if (j.contains("refreshIntervalInSeconds") && !j["refreshIntervalInSeconds"].is_null()) {
    const json& v = j["refreshIntervalInSeconds"];
    if (!v.is_number_integer()) return FieldError("refreshIntervalInSeconds", "must be an integer");
    int64_t s = v.get<int64_t>();
    if (s < 0 || s > 86400 * 365)
      return FieldError("refreshIntervalInSeconds", "must be between 0 and 31536000");
    // 0 means "default": a zero interval made Harvester 1.4.2 busy-loop (harvester#7885).
    c.refresh_interval_seconds = s == 0 ? 60 : static_cast<int>(s);
  }
  if (!c.prefix.empty() && internal::ValidateKey(c.prefix).code() != StatusCode::kOk)
    return FieldError("prefix", "must be a relative path of [A-Za-z0-9._-] segments");
  switch (c.type) {
    case TargetConfig::Type::kFile:
      if (c.endpoint.rfind("file://", 0) == 0) c.endpoint = c.endpoint.substr(7);
      if (c.endpoint.empty())
        return FieldError("endpoint", "is required for a file target (a directory)");
      if (c.endpoint[0] != '/') return FieldError("endpoint", "must be an absolute directory path");
      break;
    case TargetConfig::Type::kS3:
      if (c.bucket_name.empty()) return FieldError("bucketName", "is required for an s3 target");
      if (c.bucket_region.empty()) c.bucket_region = "us-east-1";
      if (!c.endpoint.empty() && c.endpoint.rfind("http://", 0) != 0 &&
          c.endpoint.rfind("https://", 0) != 0)
        return FieldError("endpoint", "must start with http:// or https:// for an s3 target");
      VMB_RETURN_IF_ERROR(internal::CheckS3EndpointIsSecure(c.endpoint, c.allow_insecure_http));
      break;
    case TargetConfig::Type::kNfs:
      if (c.endpoint.rfind("nfs://", 0) != 0)
        return FieldError("endpoint", "must be an nfs:// URL for an nfs target");
      break;
  }
  return c;
}

StatusOr<internal::FingerprintKeys> BackupTarget::Impl::FingerprintKeys() {
  std::lock_guard<std::mutex> l(keys_mu_);
  if (!keys_) {
    VMB_ASSIGN_OR_RETURN(internal::HostSecret secret, internal::LoadOrCreateHostSecret(state_dir));
    keys_ = internal::DeriveFingerprintKeys(secret, repo->descriptor().id);
  }
  return *keys_;
}

BackupTarget::BackupTarget(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BackupTarget::~BackupTarget() = default;

StatusOr<std::shared_ptr<BackupTarget>> BackupTarget::Open(std::string_view config_json,
                                                           const TargetOptions& options) {
  VMB_ASSIGN_OR_RETURN(TargetConfig c, ParseTargetConfig(config_json));
  return Open(c, options);
}

StatusOr<std::shared_ptr<BackupTarget>> BackupTarget::Open(const TargetConfig& config,
                                                           const TargetOptions& options) {
  return internal::GuardExceptions(
      "BackupTarget::Open", [&]() -> StatusOr<std::shared_ptr<BackupTarget>> {
        uint32_t bs = options.block_size == 0 ? internal::kDefaultBlockSize : options.block_size;
        if (bs < internal::kMinBlockSize || bs > internal::kMaxBlockSize || (bs & (bs - 1)) != 0)
          return InvalidArgumentError(
              "TargetOptions.block_size must be a power of two from 64 KiB to 16 MiB");
        uint32_t ps = options.pack_size == 0 ? internal::kDefaultPackSize : options.pack_size;
        if (ps < bs || ps > 1024u * 1024 * 1024)
          return InvalidArgumentError(
              "TargetOptions.pack_size must be between block_size and 1 GiB");
        auto impl = std::make_unique<Impl>();
        impl->config = config;
        impl->runtime = options.runtime ? options.runtime : Runtime::Default();
        impl->state_dir =
            options.state_dir.empty() ? internal::DefaultStateDir() : options.state_dir;
        std::unique_ptr<internal::ObjectStore> store;
        switch (config.type) {
          case TargetConfig::Type::kFile: {
            std::string root = config.endpoint;
            if (!config.prefix.empty()) root += "/" + config.prefix;
            VMB_ASSIGN_OR_RETURN(store, internal::OpenLocalStore(root, impl->runtime));
            break;
          }
          case TargetConfig::Type::kS3: {
            VMB_ASSIGN_OR_RETURN(store, internal::OpenS3Store(config, options, impl->runtime));
            break;
          }
          case TargetConfig::Type::kNfs: {
            VMB_ASSIGN_OR_RETURN(store, internal::OpenNfsStore(config, options, impl->runtime));
            break;
          }
        }
        VMB_ASSIGN_OR_RETURN(
            impl->repo, internal::Repository::Open(std::move(store), options.create_if_missing, bs,
                                                   ps, internal::EncryptionSetupOf(options)));
        return std::shared_ptr<BackupTarget>(new BackupTarget(std::move(impl)));
      });
}

Status BackupTarget::Test() const {
  return internal::GuardExceptions("BackupTarget::Test", [&]() -> Status {
    auto& store = impl_->repo->store();
    VMB_ASSIGN_OR_RETURN(std::string probe_id, internal::RandomHex(8));
    const std::string key = "probe/" + probe_id;
    const std::string payload = "vmbackup probe " + internal::NowRfc3339();
    VMB_RETURN_IF_ERROR(store.Put(key, payload, internal::PutOptions{}).WithContext("write probe"));
    auto back = store.Get(key);
    Status del = store.Delete({key});
    if (!back.ok()) return back.status().WithContext("read probe");
    if (*back != payload) return DataLossError("probe object read back different bytes");
    return del.WithContext("delete probe");
  });
}

StatusOr<BackupList> BackupTarget::ListBackups() const {
  return internal::GuardExceptions("BackupTarget::ListBackups",
                                   [&] { return impl_->repo->ListBackups(); });
}

StatusOr<BackupInfo> BackupTarget::GetBackup(std::string_view name) const {
  return internal::GuardExceptions("BackupTarget::GetBackup", [&]() -> StatusOr<BackupInfo> {
    return impl_->repo->GetBackup(std::string(name));
  });
}

Status BackupTarget::DeleteBackup(std::string_view name) {
  return internal::GuardExceptions("BackupTarget::DeleteBackup", [&]() -> Status {
    return impl_->repo->DeleteBackup(std::string(name));
  });
}

std::string BackupTarget::encryption() const {
  return impl_->repo->encrypted() ? impl_->repo->descriptor().encryption : "none";
}

StatusOr<std::string> BackupTarget::AddKey(const NewKey& key) {
  return internal::GuardExceptions("BackupTarget::AddKey", [&]() -> StatusOr<std::string> {
    internal::KeySecret secret{key.passphrase, key.raw_key};
    VMB_ASSIGN_OR_RETURN(internal::KeySlot slot, impl_->repo->AddKeySlot(secret, key.label));
    return slot.id;
  });
}

StatusOr<std::vector<KeyInfo>> BackupTarget::ListKeys(std::vector<std::string>* damaged) const {
  return internal::GuardExceptions(
      "BackupTarget::ListKeys", [&]() -> StatusOr<std::vector<KeyInfo>> {
        VMB_ASSIGN_OR_RETURN(auto slots, impl_->repo->ListKeySlots(damaged));
        std::vector<KeyInfo> out;
        for (auto& s : slots) {
          KeyInfo k{s.id, s.kind, s.created_at, s.host, s.label};
          k.current = s.id == impl_->repo->unlocked_slot();
          out.push_back(std::move(k));
        }
        return out;
      });
}

std::string KeyListToJson(const std::vector<KeyInfo>& keys,
                          const std::vector<std::string>& damaged) {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const KeyInfo& k : keys)
    list.push_back({{"id", k.id},
                    {"kind", k.kind},
                    {"created_at", k.created_at},
                    {"host", k.host},
                    {"label", k.label},
                    {"current", k.current}});
  nlohmann::ordered_json j;
  j["keys"] = std::move(list);
  j["damaged"] = damaged;
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

Status BackupTarget::RemoveKey(std::string_view id) {
  return internal::GuardExceptions("BackupTarget::RemoveKey", [&]() -> Status {
    return impl_->repo->RemoveKeySlot(std::string(id));
  });
}

const TargetConfig& BackupTarget::config() const { return impl_->config; }
uint32_t BackupTarget::block_size() const { return impl_->repo->descriptor().block_size; }
const std::string& BackupTarget::repository_id() const { return impl_->repo->descriptor().id; }

}  // namespace vmbackup
