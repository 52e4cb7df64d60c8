// Fuzzes DecodeVolumeIndex (volumes/<backup>/<volume>.vidx): the raw input, then the input with its
// trailing SHA-256 recomputed. A decoded index must describe its volume exactly: one kind and one
// digest per block, ceil(volume_size / block_size) blocks, and re-encode to the input (but for the
// unread version field).
#include "fuzz_util.h"
#include "repo/format.h"

namespace vmbackup::fuzz {
namespace {

constexpr const char* kWhat = "volume index volumes/b/disk0.vidx";

void DecodeOne(std::string_view bytes) {
  StatusOr<internal::VolumeIndex> v = internal::DecodeVolumeIndex(bytes, kWhat);
  if (!v.ok()) {
    FUZZ_CHECK(FailedNaming(v.status(), StatusCode::kDataLoss, kWhat));
    return;
  }
  FUZZ_CHECK(v->block_size > 0);
  FUZZ_CHECK(v->kinds.size() == v->digests.size());
  // Computed without overflow, unlike (volume_size + block_size - 1) / block_size.
  const uint64_t blocks =
      v->volume_size / v->block_size + (v->volume_size % v->block_size != 0 ? 1 : 0);
  FUZZ_CHECK(v->block_count() == blocks);
  for (internal::BlockKind k : v->kinds) {
    FUZZ_CHECK(k == internal::BlockKind::kHole || k == internal::BlockKind::kZero ||
               k == internal::BlockKind::kData);
  }
  FUZZ_CHECK(SameExceptVersion(internal::EncodeVolumeIndex(*v), bytes));
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
