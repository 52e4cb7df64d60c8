// Fuzzes DecodeDescriptor (repository.json): the raw input, then the input with its envelope
// checksum recomputed so that mutations reach the body's fields.
#include "fuzz_util.h"
#include "repo/format.h"

namespace vmbackup::fuzz {
namespace {

void DecodeOne(std::string_view bytes) {
  StatusOr<internal::RepoDescriptor> d = internal::DecodeDescriptor(bytes);
  if (!d.ok()) {
    FUZZ_CHECK(d.status().code() == StatusCode::kDataLoss ||
               d.status().code() == StatusCode::kFailedPrecondition);
    return;
  }
  FUZZ_CHECK(d->block_size >= internal::kMinBlockSize && d->block_size <= internal::kMaxBlockSize);
  FUZZ_CHECK((d->block_size & (d->block_size - 1)) == 0);
  FUZZ_CHECK(d->fingerprint_key.empty() || d->fingerprint_key.size() == 32);
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
