// AWS Signature Version 4 (header-based "AWS4-HMAC-SHA256" authorization) for S3 requests, with
// our own code over OpenSSL HMAC-SHA256 / SHA-256. Knows nothing about HTTP transport: the S3
// object store builds a Request, calls Sign(), and sends exactly the returned headers, the path
// CanonicalUri() and the query CanonicalQueryString() (so that what is signed is what is sent).
//
// Two path modes (Request::s3_path_rules):
//   true  (S3, the default): `path` is the raw object path ("/bucket/key with spaces+plus"); it is
//         percent-encoded once, segment by segment, and NOT normalized: ".", ".." and "//" are
//         kept, because they are part of S3 object keys. The encoded form is also the path to put
//         on the wire (with libcurl: set CURLOPT_PATH_AS_IS, or curl removes "/../" before
//         sending).
//   false (every other AWS service; the AWS SigV4 test suite): `path` is the path as it appears on
//         the wire; it is normalized (RFC 3986 dot segments removed, "//" collapsed) and encoded
//         again. AWS calls this "double encoding": a wire path "/a%20b" signs as "/a%2520b".
// The query is always given raw (unencoded) and encoded once; a parameter without a value
// ("?uploads") is ("uploads", "") and signs as "uploads=".
//
// Thread-safety: pure functions over their arguments; Sign() mutates only the Request passed in.
// Secrets never leave these functions except inside the HMAC signature.
#ifndef VMBACKUP_STORE_S3_SIGV4_H_
#define VMBACKUP_STORE_S3_SIGV4_H_

#include <chrono>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace vmbackup::internal::s3 {

using HeaderList = std::vector<std::pair<std::string, std::string>>;

// Hex SHA-256 of the empty string: the payload hash of a request without a body.
inline constexpr std::string_view kEmptyPayloadSha256 =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
// Payload hash value that tells S3 the body is not covered by the signature.
inline constexpr std::string_view kUnsignedPayload = "UNSIGNED-PAYLOAD";

struct Credentials {
  std::string access_key_id;      // e.g. "AKIDEXAMPLE"
  std::string secret_access_key;  // never logged
  std::string session_token;      // STS token; empty = none (no x-amz-security-token header)
};

struct Request {
  std::string method;  // "GET", "PUT", ... (upper case, as sent)
  // Host as sent in the Host header, with ":port" if the port is not the scheme's default
  // ("127.0.0.1:7480", "bucket.s3.us-east-1.amazonaws.com"). Used when `headers` has no "host".
  std::string host;
  // S3 mode: raw, unencoded object path, "/bucket/key" or "/key" (virtual-hosted style); "" = "/".
  // Generic mode: the path as on the wire (see the file comment).
  std::string path;
  // Raw, unencoded query parameters in any order; duplicates allowed; ("uploads", "") for
  // "?uploads".
  std::vector<std::pair<std::string, std::string>> query;
  // Headers to sign and send; names in any case; duplicates are combined in order with ','.
  // Every header given here is signed (do not put hop-by-hop headers such as "Expect" here).
  HeaderList headers;
  // Lower-case hex SHA-256 of the body, or kUnsignedPayload; "" = kEmptyPayloadSha256.
  std::string payload_sha256_hex;
  // true: S3 rules (no normalization, encode once). false: generic AWS rules (normalize, encode the
  // wire path again). Default true.
  bool s3_path_rules = true;
};

// Percent-encodes `s` per the SigV4/S3 rules: A-Z a-z 0-9 '-' '_' '.' '~' are kept, every other
// byte becomes "%XX" with upper-case hex (UTF-8 sequences byte by byte; ' ' is "%20", never '+').
// '/' is kept unless `encode_slash` (true for query names and values, false for paths).
std::string UriEncode(std::string_view s, bool encode_slash);

// The canonical URI of `req` (see the file comment for the two modes); always starts with '/'.
// In S3 mode this is also the exact path to send.
std::string CanonicalUri(const Request& req);

// "name=value" pairs, both UriEncode()d with encode_slash, sorted by encoded name then value,
// joined with '&'; "" without parameters. Also a valid query string to send (after '?').
std::string CanonicalQueryString(const Request& req);

// Canonical headers block and signed-header list of `req`: names lower-cased and trimmed, values
// trimmed with runs of whitespace collapsed to one space, duplicates combined with ',' in order,
// sorted by name; a "host" header from req.host is added when `headers` has none.
// `canonical_headers` ends with '\n' after each header; `signed_headers` is "host;x-amz-date".
void CanonicalHeaders(const Request& req, std::string* canonical_headers,
                      std::string* signed_headers);

// METHOD \n CanonicalUri \n CanonicalQueryString \n CanonicalHeaders \n SignedHeaders \n payload
// hash.
std::string CanonicalRequest(const Request& req);

// "AWS4-HMAC-SHA256\n<amz_date>\n<scope>\n<hex SHA-256 of canonical_request>".
// `amz_date` is "YYYYMMDDTHHMMSSZ", `scope` is "YYYYMMDD/region/service/aws4_request".
std::string StringToSign(std::string_view amz_date, std::string_view scope,
                         std::string_view canonical_request);

// The 32-byte (binary) signing key: HMAC chain over "AWS4"+secret, date ("YYYYMMDD"), region,
// service, "aws4_request". Callers may cache it per day/region/service.
std::string SigningKey(std::string_view secret_access_key, std::string_view date,
                       std::string_view region, std::string_view service);

// Signs `req` in place and returns its final header list (req->headers after signing):
//  - removes any Authorization and X-Amz-Date header (a retry re-signs cleanly), and
//    X-Amz-Content-SHA256 when `service` is "s3", X-Amz-Security-Token when a token is set;
//  - adds "host" (from req.host) if absent, "x-amz-date: <amz_date>", for service "s3"
//    "x-amz-content-sha256: <payload hash>", "x-amz-security-token" when creds.session_token is
//    set;
//  - adds "Authorization: AWS4-HMAC-SHA256 Credential=<key id>/<scope>, SignedHeaders=...,
//    Signature=<hex>".
// REQUIRES: amz_date is "YYYYMMDDTHHMMSSZ" (see FormatAmzDate); region and service non-empty.
HeaderList Sign(Request& req, const Credentials& creds, std::string_view region,
                std::string_view service, std::string_view amz_date);

// `t` in UTC as "YYYYMMDDTHHMMSSZ".
std::string FormatAmzDate(std::chrono::system_clock::time_point t);

}  // namespace vmbackup::internal::s3

#endif  // VMBACKUP_STORE_S3_SIGV4_H_
