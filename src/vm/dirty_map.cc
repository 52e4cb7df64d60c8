// Dirty map JSON → extents per volume (see dirty_map.h).
#include "vm/dirty_map.h"

#include <nlohmann/json.hpp>

namespace vmbackup::internal {

using nlohmann::json;

namespace {

StatusOr<uint64_t> JsonU64(const json& v, const std::string& what) {
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0)) {
    return InvalidArgumentError(what + " must be a non-negative integer");
  }
  return v.get<uint64_t>();
}

}  // namespace

StatusOr<std::map<std::string, std::vector<Extent>>> ParseDirtyMap(std::string_view text,
                                                                   const std::string& what) {
  json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return InvalidArgumentError(what + ": expected a JSON object {volume: [[offset, length]]}");
  }
  std::map<std::string, std::vector<Extent>> out;
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    if (!it.value().is_array()) {
      return InvalidArgumentError(what + ": volume '" + it.key() +
                                  "' must map to an array of extents");
    }
    std::vector<Extent>& extents = out[it.key()];
    for (const json& e : it.value()) {
      const std::string extent = what + " volume '" + it.key() + "': extent";
      json off, len;
      if (e.is_array() && e.size() == 2) {
        off = e[0];
        len = e[1];
      } else if (e.is_object() && e.contains("offset") && e.contains("length")) {
        off = e["offset"];
        len = e["length"];
      } else {
        return InvalidArgumentError(extent + " must be [offset, length] or {offset, length}");
      }
      StatusOr<uint64_t> o = JsonU64(off, extent + " offset");
      if (!o.ok()) return o.status();
      StatusOr<uint64_t> l = JsonU64(len, extent + " length");
      if (!l.ok()) return l.status();
      extents.push_back(Extent{*o, *l});
    }
  }
  return out;
}

}  // namespace vmbackup::internal
