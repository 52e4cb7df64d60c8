// Parsing of what an S3 server sends back: the XML response bodies (error documents, ListObjectsV2
// pages, InitiateMultipartUpload, CompleteMultipartUpload, DeleteObjects results) and the numbers
// in headers. Every byte comes from a server that may be broken or hostile (an http:// endpoint
// can be rewritten by anyone on the path), so these are pure functions over bounded input that
// never throw, never recurse without bound and never allocate more than a small multiple of their
// input: anything unexpected is kDataLoss saying what was wrong. The fuzz target
// tests/fuzz/fuzz_s3_xml.cc calls every parser declared here.
//
// The XML subset is what S3 servers send: an optional prolog, one root element, nested elements
// with attributes (ignored), character data with the five named entities and numeric character
// references, CDATA sections, comments and processing instructions. A DOCTYPE (and with it any
// entity definition) is refused.
//
// Thread-safety: pure functions; safe to call from any thread.
#ifndef VMBACKUP_STORE_S3_S3_XML_H_
#define VMBACKUP_STORE_S3_S3_XML_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "store/object_store.h"
#include "vmbackup/status.h"

namespace vmbackup::internal {

// Bounds of ParseXmlDocument. The defaults fit a ListObjectsV2 page of 1000 keys many times over.
struct XmlLimits {
  size_t max_bytes = 16u << 20;  // a longer document is refused before parsing
  int max_depth = 16;            // nesting of elements
  size_t max_elements = 100000;  // elements in the whole document
};

// One element of a parsed document.
struct XmlElement {
  std::string name;  // as written, with any namespace prefix
  std::string text;  // all character data directly inside it, entities decoded, not trimmed
  std::vector<XmlElement> children;

  // The first child named `name`, or null.
  const XmlElement* Child(std::string_view name) const;
  // The text of the first child named `name`, or "" when there is none.
  std::string ChildText(std::string_view name) const;
};

// Parses `doc` as one XML document and returns its root element. kDataLoss naming the byte offset
// and the problem for: a document over limits.max_bytes, deeper than limits.max_depth or with more
// than limits.max_elements elements; a DOCTYPE; a malformed tag, attribute, comment, CDATA section
// or entity; an unknown entity; a character reference to NUL, a surrogate or beyond U+10FFFF; a
// mismatched end tag; an unclosed element; no root, or anything but whitespace, comments and
// processing instructions around the root.
StatusOr<XmlElement> ParseXmlDocument(std::string_view doc, const XmlLimits& limits = {});

// `s` with & < > " ' replaced by their entities (for request bodies we build).
std::string XmlEscape(std::string_view s);

// The value of a decimal number of 1 to 20 ASCII digits that fits in 64 bits; nullopt for anything
// else (empty, sign, space, other characters, overflow).
std::optional<uint64_t> ParseDecimalU64(std::string_view s);

// ParseDecimalU64 or kDataLoss "<what> is not a decimal number ('<s>', shortened)".
StatusOr<uint64_t> ParseDecimalField(std::string_view s, std::string_view what);

// Text from a server, safe to put in a Status message: bytes outside printable ASCII become '?',
// and at most `max` bytes are kept ("..." marks a cut).
std::string ServerText(std::string_view s, size_t max = 200);

// An HTTP Content-Range header of a 206 answer, "bytes <first>-<last>/<total or *>".
struct ContentRange {
  uint64_t first = 0;
  uint64_t last = 0;              // inclusive, >= first
  std::optional<uint64_t> total;  // nullopt for "*"
};
// kDataLoss naming the header for anything else (other units, last < first, last >= total, bad
// numbers).
StatusOr<ContentRange> ParseContentRange(std::string_view value);

// The fields of an S3 error document (<Error><Code>…</Code>…</Error>), as the server sent them.
struct S3ErrorBody {
  std::string code;  // "NoSuchKey", "SlowDown", ...
  std::string message;
  std::string request_id;
  std::string key;  // <Key> when present
};
// kDataLoss when `body` is not an XML document whose root is <Error> (for example the empty body of
// a HEAD answer); the caller then describes the error by its HTTP status alone.
StatusOr<S3ErrorBody> ParseS3ErrorBody(std::string_view body);

// A ListObjectsV2 page (<ListBucketResult>) of the request with prefix `store_prefix + prefix`,
// continuation token `token` and max-keys `max_keys`. The keys are returned without
// `store_prefix`. kDataLoss naming what is wrong when: the body is not such a document; a
// <Contents> lacks <Key> or <Size>; a key does not start with `store_prefix + prefix`, or without
// `store_prefix` fails ValidateKey (the key is named, shortened); a size is not a decimal number;
// keys are not strictly increasing; there are more than `max_keys` of them; <IsTruncated> is
// neither "true" nor "false"; a truncated page has no <NextContinuationToken>, one over 4096
// bytes, or the token it was asked for (a listing that would never end).
StatusOr<ListPage> ParseListObjectsV2(std::string_view body, std::string_view store_prefix,
                                      std::string_view prefix, std::string_view token,
                                      int max_keys);

// The UploadId of an <InitiateMultipartUploadResult>. kDataLoss when the body is not one, or the
// id is empty, over 1024 bytes or holds bytes outside printable ASCII.
StatusOr<std::string> ParseInitiateMultipartUpload(std::string_view body);

// The answer to CompleteMultipartUpload, which S3 may send as HTTP 200 with an <Error> document:
// nullopt for a <CompleteMultipartUploadResult>, the error for an <Error>, kDataLoss otherwise.
StatusOr<std::optional<S3ErrorBody>> ParseCompleteMultipartUpload(std::string_view body);

// The <Error> entries of a <DeleteResult> (empty when every key was deleted). kDataLoss when the
// body is not a <DeleteResult>.
StatusOr<std::vector<S3ErrorBody>> ParseDeleteObjectsResult(std::string_view body);

}  // namespace vmbackup::internal

#endif  // VMBACKUP_STORE_S3_S3_XML_H_
