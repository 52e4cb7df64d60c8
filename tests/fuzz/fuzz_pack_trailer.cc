// Fuzzes DecodePackTrailer (the pack index copy at the end of packs/<id>.pack): the raw input, then
// the input with the SHA-256 of its index copy recomputed (the copy starts where the trailer's
// offset points and ends before the offset and the end magic). Every entry returned must lie
// between the pack magic and the index copy.
#include "fuzz_util.h"
#include "repo/format.h"

namespace vmbackup::fuzz {
namespace {

constexpr const char* kWhat = "pack packs/01/fuzz.pack";
constexpr size_t kTail = 8 + 8;  // index offset + end magic

void DecodeOne(std::string_view bytes) {
  StatusOr<std::vector<internal::PackEntry>> e = internal::DecodePackTrailer(bytes, kPackId, kWhat);
  if (!e.ok()) {
    FUZZ_CHECK(FailedNaming(e.status(), StatusCode::kDataLoss, kWhat));
    return;
  }
  FUZZ_CHECK(bytes.size() >= internal::kPackMagic.size() + kTail);
  const uint64_t index_offset = internal::GetU64(bytes.data() + bytes.size() - kTail);
  FUZZ_CHECK(index_offset <= bytes.size() - kTail);
  for (const internal::PackEntry& p : *e) {
    FUZZ_CHECK(p.offset >= internal::kPackMagic.size());
    FUZZ_CHECK(p.offset <= index_offset && p.stored_len <= index_offset - p.offset);
  }
}

}  // namespace
}  // namespace vmbackup::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmbackup::fuzz;
  const std::string_view raw = AsView(data, size);
  DecodeOne(raw);
  if (size < kTail) return 0;
  const uint64_t index_offset = vmbackup::internal::GetU64(raw.data() + size - kTail);
  if (index_offset > size - kTail) return 0;
  std::string fixed(raw);
  FixTrailingSha256(&fixed, index_offset, size - kTail);
  if (fixed != raw) DecodeOne(fixed);
  return 0;
}
