// Fuzzes DecodePackIndex (index/<id>.idx): the raw input, then the input with its trailing SHA-256
// recomputed. Decoded entries must survive EncodePackIndex → DecodePackIndex unchanged.
#include "fuzz_util.h"
#include "repo/format.h"

namespace vmbackup::fuzz {
namespace {

constexpr const char* kWhat = "pack index index/fuzz.idx";
constexpr size_t kHeader = 8 + 4 + 4 + 32;
constexpr size_t kEntry = 56;

bool SameEntries(const std::vector<internal::PackEntry>& a,
                 const std::vector<internal::PackEntry>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].digest != b[i].digest || a[i].offset != b[i].offset ||
        a[i].stored_len != b[i].stored_len || a[i].raw_len != b[i].raw_len ||
        a[i].codec != b[i].codec)
      return false;
  }
  return true;
}

void DecodeOne(std::string_view bytes) {
  StatusOr<std::vector<internal::PackEntry>> e = internal::DecodePackIndex(bytes, kPackId, kWhat);
  if (!e.ok()) {
    FUZZ_CHECK(FailedNaming(e.status(), StatusCode::kDataLoss, kWhat));
    return;
  }
  FUZZ_CHECK(bytes.size() == kHeader + e->size() * kEntry + 32);
  for (const internal::PackEntry& p : *e) {
    FUZZ_CHECK(p.codec == internal::Codec::kNone || p.codec == internal::Codec::kLz4);
  }
  StatusOr<std::vector<internal::PackEntry>> again =
      internal::DecodePackIndex(internal::EncodePackIndex(kPackId, *e), kPackId, kWhat);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(SameEntries(*e, *again));
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
