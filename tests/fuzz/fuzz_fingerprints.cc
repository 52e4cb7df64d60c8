// Fuzzes DecodeFingerprints (volumes/<backup>/<volume>.vfp, format 2): the raw input, then the
// input with its trailing HMAC recomputed under a fixed test key (so FingerprintsAuthentic passes
// and the parser behind it is reached). Decoded entries must be strictly sorted by block and inside
// the volume, and re-encoding under the test key must give the input back.
#include "core/util.h"
#include "fuzz_util.h"
#include "repo/format.h"

namespace vmbackup::fuzz {
namespace {

constexpr const char* kWhat = "fingerprints volumes/b/disk0.vfp";
constexpr std::array<uint8_t, 32> kAuth = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
                                           12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                                           23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

void DecodeOne(std::string_view bytes) {
  StatusOr<internal::VolumeFingerprints> f = internal::DecodeFingerprints(bytes, kWhat);
  if (!f.ok()) {
    FUZZ_CHECK(FailedNaming(f.status(), StatusCode::kDataLoss, kWhat) ||
               FailedNaming(f.status(), StatusCode::kFailedPrecondition, kWhat));
    return;
  }
  const uint64_t nblocks = internal::BlockCount(f->volume_size, f->block_size);
  for (size_t i = 1; i < f->entries.size(); ++i) {
    FUZZ_CHECK(f->entries[i - 1].block < f->entries[i].block);
  }
  for (const internal::BlockFingerprintEntry& e : f->entries) {
    FUZZ_CHECK(e.block < nblocks);
    FUZZ_CHECK(f->Find(e.block) != nullptr && *f->Find(e.block) == e.fp);
  }
  const std::string again = internal::EncodeFingerprints(*f, kAuth);
  FUZZ_CHECK(SameExceptVersion(again, bytes));
  FUZZ_CHECK(internal::FingerprintsAuthentic(again, kAuth));
  if (internal::FingerprintsAuthentic(bytes, kAuth)) FUZZ_CHECK(again == bytes);
}

// `bytes` with its trailing 32 bytes replaced by the HMAC of the rest under the test key.
std::string WithTrailingHmac(std::string_view bytes) {
  std::string out(bytes);
  if (out.size() < 32) return out;
  const internal::Digest mac =
      internal::HmacSha256(kAuth.data(), kAuth.size(), out.data(), out.size() - 32);
  std::memcpy(out.data() + out.size() - 32, mac.data(), 32);
  return out;
}

}  // namespace
}  // namespace vmbackup::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmbackup::fuzz;
  const std::string_view raw = AsView(data, size);
  DecodeOne(raw);
  const std::string fixed = WithTrailingHmac(raw);
  if (fixed != raw) DecodeOne(fixed);
  return 0;
}
