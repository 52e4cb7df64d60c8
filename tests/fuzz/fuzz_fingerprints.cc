// Fuzzes DecodeFingerprints (volumes/<backup>/<volume>.vfp): the raw input, then the input with its
// trailing SHA-256 recomputed. Decoded entries must be strictly sorted by block, and re-encoding
// must give the input back (but for the unread version field).
#include "fuzz_util.h"
#include "repo/format.h"

namespace vmbackup::fuzz {
namespace {

constexpr const char* kWhat = "fingerprints volumes/b/disk0.vfp";

void DecodeOne(std::string_view bytes) {
  StatusOr<internal::VolumeFingerprints> f = internal::DecodeFingerprints(bytes, kWhat);
  if (!f.ok()) {
    FUZZ_CHECK(FailedNaming(f.status(), StatusCode::kDataLoss, kWhat));
    return;
  }
  for (size_t i = 1; i < f->entries.size(); ++i) {
    FUZZ_CHECK(f->entries[i - 1].block < f->entries[i].block);
  }
  for (const internal::BlockFingerprintEntry& e : f->entries) {
    FUZZ_CHECK(f->Find(e.block) != nullptr && *f->Find(e.block) == e.fp);
  }
  FUZZ_CHECK(SameExceptVersion(internal::EncodeFingerprints(*f), bytes));
}

}  // namespace
}  // namespace vmbackup::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmbackup::fuzz;
  const std::string_view raw = AsView(data, size);
  DecodeOne(raw);
  const std::string fixed = WithTrailingSha256(raw);
  if (fixed != raw) DecodeOne(fixed);
  return 0;
}
