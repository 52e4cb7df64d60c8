// libFuzzer target: every parser of src/store/s3/s3_xml.h on arbitrary bytes (what a hostile S3
// server, or anyone on the path of an http:// endpoint, can send). None may crash, hang, throw or
// allocate without bound; beyond that it checks two properties:
//   - XmlEscape round-trips through ParseXmlDocument for any input;
//   - a ListObjectsV2 page that parses only holds valid keys under the requested prefix, in
//     strictly increasing order, at most max-keys of them.
// Seed corpus: tests/fuzz/corpus/s3_xml/ (bodies captured from Ceph radosgw 16.2).
//
//   fuzz_s3_xml -max_total_time=60 tests/fuzz/corpus/s3_xml
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "store/object_store.h"
#include "store/s3/s3_xml.h"

namespace {

using namespace vmbackup::internal;  // NOLINT(build/namespaces)

void Check(bool ok) {
  if (!ok) std::abort();
}

void CheckListing(std::string_view body, std::string_view store_prefix, std::string_view prefix,
                  std::string_view token, int max_keys) {
  auto page = ParseListObjectsV2(body, store_prefix, prefix, token, max_keys);
  if (!page.ok()) return;
  Check(page->objects.size() <= static_cast<size_t>(max_keys));
  const std::string wanted = std::string(store_prefix) + std::string(prefix);
  for (size_t i = 0; i < page->objects.size(); ++i) {
    const std::string full = std::string(store_prefix) + page->objects[i].key;
    Check(full.compare(0, wanted.size(), wanted) == 0);
    Check(ValidateKey(page->objects[i].key).ok());
    if (i > 0) Check(page->objects[i - 1].key < page->objects[i].key);
  }
  Check(page->next_token != token || page->next_token.empty());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);

  (void)ParseXmlDocument(in);
  XmlLimits tight;
  tight.max_depth = 3;
  tight.max_elements = 8;
  (void)ParseXmlDocument(in, tight);

  auto escaped = ParseXmlDocument("<k>" + XmlEscape(in) + "</k>");
  Check(escaped.ok() && escaped->text == in && escaped->children.empty());

  (void)ParseS3ErrorBody(in);
  CheckListing(in, "", "", "", 1000);
  CheckListing(in, "cap/", "", "cap/k1", 1);
  CheckListing(in, "t-1/", "records/", "", 2);
  (void)ParseInitiateMultipartUpload(in);
  (void)ParseCompleteMultipartUpload(in);
  (void)ParseDeleteObjectsResult(in);

  (void)ParseDecimalU64(in);
  (void)ParseDecimalField(in, "fuzz");
  auto range = ParseContentRange(in);
  if (range.ok())
    Check(range->first <= range->last && (!range->total || range->last < *range->total));
  (void)ServerText(in);
  (void)ServerText(in, 3);
  return 0;
}
