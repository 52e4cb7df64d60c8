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
    // "path": a file (relative to the directory); "location": any ParseVolumeLocation form
    // (qemu:SOCKET?node=NODE, rbd:POOL/IMAGE, or a path).
    const bool has_path = v.contains("path"), has_location = v.contains("location");
    if (has_path == has_location)
      return InvalidArgumentError(field + ": give exactly one of 'path' and 'location'");
    const char* key = has_path ? "path" : "location";
    if (!v[key].is_string() || v[key].get<std::string>().empty())
      return InvalidArgumentError(field + "." + key + " must be a non-empty string");
    VolumeSource s;
    if (has_path) {
      s.name = v["name"].get<std::string>();
      s.path = v["path"].get<std::string>();
    } else {
      auto parsed = ParseVolumeLocation(v["name"].get<std::string>(), v["location"]);
      if (!parsed.ok()) return parsed.status().WithContext(field);
      s = std::move(*parsed);
    }
    if (s.provider == VolumeProvider::kFile && s.path[0] != '/') s.path = dir + "/" + s.path;
    spec.volumes.push_back(std::move(s));
  }
  return spec;
}

}  // namespace vmbackup
