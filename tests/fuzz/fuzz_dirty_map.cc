// Fuzzes ParseDirtyMap (the host-supplied dirty map of vmbackupctl backup --dirty-map). A map that
// parses has one entry per volume of the input object, each holding as many extents as its array.
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "vm/dirty_map.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using vmbackup::StatusCode;
  using namespace vmbackup::fuzz;
  constexpr const char* kWhat = "dirty map 'fuzz.json'";
  const std::string_view text = AsView(data, size);
  auto m = vmbackup::internal::ParseDirtyMap(text, kWhat);
  if (!m.ok()) {
    FUZZ_CHECK(FailedNaming(m.status(), StatusCode::kInvalidArgument, kWhat));
    return 0;
  }
  nlohmann::json doc = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
  FUZZ_CHECK(doc.is_object() && doc.size() == m->size());
  for (const auto& [name, extents] : *m) {
    FUZZ_CHECK(doc.contains(name) && doc[name].size() == extents.size());
  }
  return 0;
}
