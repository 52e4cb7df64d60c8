// VM directory → BackupSpec.
#include "vmbackup/vm.h"

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/util.h"

namespace vmbackup {

using nlohmann::json;

StatusOr<BackupSpec> BackupSpecFromVmDirectory(const std::string& dir) {
  const std::string path = dir + "/vm.json";
  auto text = internal::ReadFile(path);
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound)
      return NotFoundError("VM directory " + dir + " has no vm.json");
    return text.status();
  }
  json j = json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgumentError(path + ": not a JSON object");
  if (!j.contains("volumes") || !j["volumes"].is_array() || j["volumes"].empty())
    return InvalidArgumentError(path + ": field 'volumes' must be a non-empty array");
  BackupSpec spec;
  spec.vm_metadata_json = j.dump();
  size_t i = 0;
  for (const auto& v : j["volumes"]) {
    const std::string field = path + ": volumes[" + std::to_string(i++) + "]";
    if (!v.is_object() || !v.contains("name") || !v["name"].is_string())
      return InvalidArgumentError(field + ".name must be a string");
    if (!v.contains("path") || !v["path"].is_string() || v["path"].get<std::string>().empty())
      return InvalidArgumentError(field + ".path must be a non-empty string");
    VolumeSource s;
    s.name = v["name"].get<std::string>();
    s.path = v["path"].get<std::string>();
    if (s.path[0] != '/') s.path = dir + "/" + s.path;
    spec.volumes.push_back(std::move(s));
  }
  return spec;
}

}  // namespace vmbackup
