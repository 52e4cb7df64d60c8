// Helpers shared by the libFuzzer targets (tests/fuzz/fuzz_<name>.cc): checksum repair, so that
// mutated inputs get past the SHA-256 checks into the parsers behind them, and FUZZ_CHECK for the
// properties a decoder promises (a failed check aborts, which libFuzzer reports as a crash).
// Thread-safety: pure functions.
#ifndef VMBACKUP_TESTS_FUZZ_FUZZ_UTIL_H_
#define VMBACKUP_TESTS_FUZZ_FUZZ_UTIL_H_

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/util.h"
#include "vmbackup/status.h"

// Aborts with the failed condition when `cond` is false: a decoder broke one of its promises.
#define FUZZ_CHECK(cond)                                                                   \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

namespace vmbackup::fuzz {

// The pack id every pack index and pack seed is encoded with, and that the targets expect.
inline constexpr const char* kPackId = "0123456789abcdef0123456789abcdef";

inline std::string_view AsView(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Rewrites (*bytes)[end - 32, end) as the SHA-256 of (*bytes)[begin, end - 32): the trailing
// checksum of a binary object stored at [begin, end). Does nothing when the range is too short.
inline void FixTrailingSha256(std::string* bytes, size_t begin, size_t end) {
  if (end > bytes->size() || begin > end || end - begin < 32) return;
  const internal::Digest sum = internal::Sha256(bytes->data() + begin, end - begin - 32);
  std::memcpy(bytes->data() + end - 32, sum.data(), sum.size());
}

// `bytes` with its last 32 bytes replaced by the SHA-256 of everything before them.
inline std::string WithTrailingSha256(std::string_view bytes) {
  std::string out(bytes);
  FixTrailingSha256(&out, 0, out.size());
  return out;
}

// Nesting depth of a JSON value, computed without recursion.
inline size_t JsonDepth(const nlohmann::json& root) {
  size_t max_depth = 0;
  std::vector<std::pair<const nlohmann::json*, size_t>> stack{{&root, 1}};
  while (!stack.empty()) {
    auto [j, depth] = stack.back();
    stack.pop_back();
    max_depth = std::max(max_depth, depth);
    if (j->is_structured()) {
      for (const auto& child : *j) stack.emplace_back(&child, depth + 1);
    }
  }
  return max_depth;
}

// When `bytes` parse as a JSON object with a "body" member: the document with "sha256" set to the
// SHA-256 of body.dump(), as the checksummed envelope of records and the repository descriptor
// requires (repo/format.cc, OpenEnvelope). nullopt otherwise, and for documents nested deeper than
// 512 levels (serializing those is recursive; the decoder still sees them through the raw input).
inline std::optional<std::string> WithEnvelopeSha256(std::string_view bytes) {
  nlohmann::json doc =
      nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("body")) return std::nullopt;
  if (JsonDepth(doc) > 512) return std::nullopt;
  try {
    doc["sha256"] = internal::ToHex(internal::Sha256(doc["body"].dump()));
    return doc.dump(1) + "\n";
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

// True when the binary objects `a` and `b` (magic, u32 version, ..., SHA-256) are equal except for
// their version field and checksum. The decoders do not read the version field (the magic carries
// the version), so an object that re-encodes from its decoded form may differ there.
inline bool SameExceptVersion(std::string_view a, std::string_view b) {
  if (a.size() != b.size() || a.size() < 12 + 32) return false;
  return a.substr(0, 8) == b.substr(0, 8) &&
         a.substr(12, a.size() - 12 - 32) == b.substr(12, b.size() - 12 - 32);
}

// True when `s` failed with `code` and its message names `what`.
inline bool FailedNaming(const Status& s, StatusCode code, std::string_view what) {
  return !s.ok() && s.code() == code && s.message().find(what) != std::string::npos;
}

}  // namespace vmbackup::fuzz

#endif  // VMBACKUP_TESTS_FUZZ_FUZZ_UTIL_H_
