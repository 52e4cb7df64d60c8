// AWS Signature Version 4: canonical request, string to sign, signing key, Authorization header.
#include "store/s3/sigv4.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>

#include "core/util.h"

namespace vmbackup::internal::s3 {
namespace {

bool IsUnreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == '~';
}

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

char AsciiLower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = AsciiLower(c);
  return out;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (AsciiLower(a[i]) != AsciiLower(b[i])) return false;
  }
  return true;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

// Trims and collapses each run of whitespace into one space ("Trimall" in the AWS docs).
std::string TrimAll(std::string_view s) {
  s = Trim(s);
  std::string out;
  out.reserve(s.size());
  bool in_space = false;
  for (char c : s) {
    if (IsSpace(c)) {
      in_space = true;
      continue;
    }
    if (in_space) out.push_back(' ');
    in_space = false;
    out.push_back(c);
  }
  return out;
}

// RFC 3986 section 5.2.4 dot-segment removal, plus the AWS rule that empty segments ("//") go too.
// A trailing '/' is kept when something remains ("/a/b/" stays, "/a/.." becomes "/").
std::string NormalizePath(std::string_view path) {
  if (path.empty()) return "/";
  std::vector<std::string_view> out;
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t next = path.find('/', pos);
    if (next == std::string_view::npos) next = path.size();
    std::string_view seg = path.substr(pos, next - pos);
    if (seg == "..") {
      if (!out.empty()) out.pop_back();
    } else if (!seg.empty() && seg != ".") {
      out.push_back(seg);
    }
    pos = next + 1;
  }
  std::string result = "/";
  for (size_t i = 0; i < out.size(); ++i) {
    if (i > 0) result.push_back('/');
    result.append(out[i]);
  }
  if (path.back() == '/' && !out.empty()) result.push_back('/');
  return result;
}

std::string Hmac(std::string_view key, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(data.data()), data.size(), out,
           &len) == nullptr) {
    // Only on allocation failure inside OpenSSL: there is no meaningful signature to return.
    std::fputs("vmbackup: OpenSSL HMAC-SHA256 failed\n", stderr);
    std::abort();
  }
  return std::string(reinterpret_cast<const char*>(out), len);
}

}  // namespace

std::string UriEncode(std::string_view s, bool encode_slash) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() + s.size() / 2);
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (IsUnreserved(c) || (c == '/' && !encode_slash)) {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::string CanonicalUri(const Request& req) {
  if (req.s3_path_rules) {
    if (req.path.empty()) return "/";
    std::string encoded = UriEncode(req.path, /*encode_slash=*/false);
    if (encoded.front() != '/') encoded.insert(encoded.begin(), '/');
    return encoded;
  }
  return UriEncode(NormalizePath(req.path), /*encode_slash=*/false);
}

std::string CanonicalQueryString(const Request& req) {
  std::vector<std::pair<std::string, std::string>> params;
  params.reserve(req.query.size());
  for (const auto& [name, value] : req.query) {
    params.emplace_back(UriEncode(name, true), UriEncode(value, true));
  }
  std::sort(params.begin(), params.end());
  std::string out;
  for (const auto& [name, value] : params) {
    if (!out.empty()) out.push_back('&');
    out.append(name);
    out.push_back('=');
    out.append(value);
  }
  return out;
}

void CanonicalHeaders(const Request& req, std::string* canonical_headers,
                      std::string* signed_headers) {
  std::vector<std::pair<std::string, std::string>> headers;
  headers.reserve(req.headers.size() + 1);
  bool has_host = false;
  for (const auto& [name, value] : req.headers) {
    std::string lname = Lower(Trim(name));
    if (lname == "host") has_host = true;
    headers.emplace_back(std::move(lname), TrimAll(value));
  }
  if (!has_host && !req.host.empty()) headers.emplace_back("host", TrimAll(req.host));
  // Stable: duplicates keep their order, and are then combined with ','.
  std::stable_sort(headers.begin(), headers.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  canonical_headers->clear();
  signed_headers->clear();
  for (size_t i = 0; i < headers.size(); ++i) {
    if (i > 0 && headers[i].first == headers[i - 1].first) {
      // Replace the '\n' of the previous line by ',' + this value + '\n'.
      canonical_headers->back() = ',';
      canonical_headers->append(headers[i].second);
      canonical_headers->push_back('\n');
      continue;
    }
    if (!signed_headers->empty()) signed_headers->push_back(';');
    signed_headers->append(headers[i].first);
    canonical_headers->append(headers[i].first);
    canonical_headers->push_back(':');
    canonical_headers->append(headers[i].second);
    canonical_headers->push_back('\n');
  }
}

std::string CanonicalRequest(const Request& req) {
  std::string canonical_headers, signed_headers;
  CanonicalHeaders(req, &canonical_headers, &signed_headers);
  std::string out;
  out.reserve(256 + canonical_headers.size() + req.path.size() * 3);
  out.append(req.method).push_back('\n');
  out.append(CanonicalUri(req)).push_back('\n');
  out.append(CanonicalQueryString(req)).push_back('\n');
  out.append(canonical_headers).push_back('\n');
  out.append(signed_headers).push_back('\n');
  out.append(req.payload_sha256_hex.empty() ? kEmptyPayloadSha256 : req.payload_sha256_hex);
  return out;
}

std::string StringToSign(std::string_view amz_date, std::string_view scope,
                         std::string_view canonical_request) {
  std::string out = "AWS4-HMAC-SHA256\n";
  out.append(amz_date).push_back('\n');
  out.append(scope).push_back('\n');
  out.append(ToHex(Sha256(canonical_request)));
  return out;
}

std::string SigningKey(std::string_view secret_access_key, std::string_view date,
                       std::string_view region, std::string_view service) {
  std::string k_secret = "AWS4";
  k_secret.append(secret_access_key);
  std::string key = Hmac(k_secret, date);
  key = Hmac(key, region);
  key = Hmac(key, service);
  key = Hmac(key, "aws4_request");
  std::fill(k_secret.begin(), k_secret.end(), '\0');
  return key;
}

HeaderList Sign(Request& req, const Credentials& creds, std::string_view region,
                std::string_view service, std::string_view amz_date) {
  const bool s3 = service == "s3";
  const bool token = !creds.session_token.empty();
  std::erase_if(req.headers, [&](const auto& h) {
    std::string_view name = Trim(h.first);
    return EqualsIgnoreCase(name, "authorization") || EqualsIgnoreCase(name, "x-amz-date") ||
           (s3 && EqualsIgnoreCase(name, "x-amz-content-sha256")) ||
           (token && EqualsIgnoreCase(name, "x-amz-security-token"));
  });
  const bool has_host = std::any_of(req.headers.begin(), req.headers.end(), [](const auto& h) {
    return EqualsIgnoreCase(Trim(h.first), "host");
  });
  if (!has_host && !req.host.empty()) req.headers.insert(req.headers.begin(), {"host", req.host});
  req.headers.emplace_back("x-amz-date", std::string(amz_date));
  if (s3) {
    req.headers.emplace_back("x-amz-content-sha256", req.payload_sha256_hex.empty()
                                                         ? std::string(kEmptyPayloadSha256)
                                                         : req.payload_sha256_hex);
  }
  if (token) req.headers.emplace_back("x-amz-security-token", creds.session_token);

  const std::string_view date = amz_date.substr(0, 8);
  std::string scope(date);
  scope.append("/").append(region).append("/").append(service).append("/aws4_request");

  std::string canonical_headers, signed_headers;
  CanonicalHeaders(req, &canonical_headers, &signed_headers);
  const std::string sts = StringToSign(amz_date, scope, CanonicalRequest(req));
  std::string key = SigningKey(creds.secret_access_key, date, region, service);
  const std::string signature = Hmac(key, sts);
  std::fill(key.begin(), key.end(), '\0');

  std::string auth = "AWS4-HMAC-SHA256 Credential=";
  auth.append(creds.access_key_id).append("/").append(scope);
  auth.append(", SignedHeaders=").append(signed_headers);
  auth.append(", Signature=").append(ToHex(signature.data(), signature.size()));
  req.headers.emplace_back("Authorization", std::move(auth));
  return req.headers;
}

std::string FormatAmzDate(std::chrono::system_clock::time_point t) {
  const std::time_t tt = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

}  // namespace vmbackup::internal::s3
