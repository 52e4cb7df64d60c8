// Fuzzes DecodeRecord (records/<name>.json): the raw input, then the input with its envelope
// checksum recomputed. A record that decodes must survive EncodeRecord → DecodeRecord unchanged.
#include "fuzz_util.h"
#include "repo/format.h"

namespace vmbackup::fuzz {
namespace {

constexpr const char* kWhat = "backup record records/fuzz.json";

bool SameVolume(const VolumeBackupInfo& a, const VolumeBackupInfo& b) {
  return a.name == b.name && a.size == b.size && a.block_size == b.block_size &&
         a.data_blocks == b.data_blocks && a.zero_blocks == b.zero_blocks &&
         a.hole_blocks == b.hole_blocks && a.bytes_new == b.bytes_new &&
         a.bytes_reused == b.bytes_reused && a.bytes_stored == b.bytes_stored &&
         a.index_key == b.index_key && a.index_sha256 == b.index_sha256 &&
         a.fingerprints_key == b.fingerprints_key &&
         (a.fingerprints_key.empty() || a.fingerprints_sha256 == b.fingerprints_sha256);
}

bool SameRecord(const BackupInfo& a, const BackupInfo& b) {
  if (a.volumes.size() != b.volumes.size()) return false;
  for (size_t i = 0; i < a.volumes.size(); ++i) {
    if (!SameVolume(a.volumes[i], b.volumes[i])) return false;
  }
  return a.name == b.name && a.vm_name == b.vm_name && a.vm_namespace == b.vm_namespace &&
         a.created_at == b.created_at && a.completed_at == b.completed_at && a.parent == b.parent &&
         a.state == b.state && a.vm_metadata_json == b.vm_metadata_json &&
         a.bytes_total == b.bytes_total && a.bytes_new == b.bytes_new &&
         a.bytes_reused == b.bytes_reused && a.bytes_stored == b.bytes_stored &&
         a.seconds == b.seconds;
}

void DecodeOne(std::string_view bytes) {
  StatusOr<BackupInfo> r = internal::DecodeRecord(bytes, kWhat);
  if (!r.ok()) {
    FUZZ_CHECK(FailedNaming(r.status(), StatusCode::kDataLoss, kWhat) ||
               FailedNaming(r.status(), StatusCode::kFailedPrecondition, kWhat));
    return;
  }
  StatusOr<BackupInfo> again = internal::DecodeRecord(internal::EncodeRecord(*r), kWhat);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(SameRecord(*r, *again));
}

}  // namespace
}  // namespace vmbackup::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmbackup::fuzz;
  const std::string_view raw = AsView(data, size);
  DecodeOne(raw);
  if (std::optional<std::string> fixed = WithEnvelopeSha256(raw)) DecodeOne(*fixed);
  return 0;
}
