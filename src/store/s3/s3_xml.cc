// S3 response parsing (see s3_xml.h).
#include "store/s3/s3_xml.h"

#include <limits>
#include <utility>

#include "core/errors.h"

namespace vmbackup::internal {
namespace {

constexpr size_t kMaxContinuationToken = 4096;
constexpr size_t kMaxUploadId = 1024;

Status XmlError(size_t at, std::string_view what) {
  return DataLossError("S3 response is not well-formed XML (at byte " + std::to_string(at) +
                       "): " + std::string(what));
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

bool IsNameStart(char ch) {
  const auto c = static_cast<unsigned char>(ch);
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || c >= 0x80;
}

bool IsNameChar(char ch) {
  return IsNameStart(ch) || (ch >= '0' && ch <= '9') || ch == '-' || ch == '.';
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Appends `raw` (character data that started at byte `at` of the document) to `out` with the
// entities decoded. Fails on an unknown, unterminated or invalid entity.
Status DecodeText(std::string_view raw, size_t at, std::string* out) {
  size_t i = 0;
  while (i < raw.size()) {
    const size_t amp = raw.find('&', i);
    if (amp == std::string_view::npos) {
      out->append(raw.substr(i));
      break;
    }
    out->append(raw.substr(i, amp - i));
    // The longest entity we accept is "&#x10FFFF;" / "&#1114111;" (10 bytes).
    const size_t semi = raw.substr(amp, 12).find(';');
    if (semi == std::string_view::npos) return XmlError(at + amp, "unterminated entity");
    const std::string_view ent = raw.substr(amp + 1, semi - 1);
    if (ent == "lt") {
      out->push_back('<');
    } else if (ent == "gt") {
      out->push_back('>');
    } else if (ent == "amp") {
      out->push_back('&');
    } else if (ent == "quot") {
      out->push_back('"');
    } else if (ent == "apos") {
      out->push_back('\'');
    } else if (ent.size() >= 2 && ent[0] == '#') {
      const bool hex = ent[1] == 'x';
      const std::string_view digits = ent.substr(hex ? 2 : 1);
      if (digits.empty() || digits.size() > (hex ? 6u : 7u))
        return XmlError(at + amp, "bad character reference &" + ServerText(ent, 12) + ";");
      uint32_t cp = 0;
      for (char d : digits) {
        uint32_t v;
        if (d >= '0' && d <= '9')
          v = static_cast<uint32_t>(d - '0');
        else if (hex && d >= 'a' && d <= 'f')
          v = static_cast<uint32_t>(d - 'a' + 10);
        else if (hex && d >= 'A' && d <= 'F')
          v = static_cast<uint32_t>(d - 'A' + 10);
        else
          return XmlError(at + amp, "bad character reference &" + ServerText(ent, 12) + ";");
        cp = cp * (hex ? 16 : 10) + v;
      }
      if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return XmlError(
            at + amp, "character reference &" + ServerText(ent, 12) + "; is not a valid character");
      AppendUtf8(cp, out);
    } else {
      return XmlError(at + amp, "unknown entity &" + ServerText(ent, 12) + ";");
    }
    i = amp + semi + 1;
  }
  return Status::Ok();
}

class Parser {
 public:
  Parser(std::string_view doc, const XmlLimits& limits) : s_(doc), limits_(limits) {}

  StatusOr<XmlElement> Run() {
    if (s_.size() > limits_.max_bytes)
      return DataLossError("S3 response of " + std::to_string(s_.size()) +
                           " bytes is larger than the " + std::to_string(limits_.max_bytes) +
                           " accepted");
    if (StartsWith("\xEF\xBB\xBF")) pos_ = 3;  // UTF-8 byte order mark
    VMB_RETURN_IF_ERROR(SkipMisc());
    if (pos_ >= s_.size() || s_[pos_] != '<') return XmlError(pos_, "no root element");
    std::vector<XmlElement> open;  // the elements not closed yet, outermost first
    std::optional<XmlElement> root;
    while (!root.has_value()) {
      if (pos_ >= s_.size())
        return XmlError(pos_, open.empty() ? "no root element"
                                           : "element <" + ServerText(open.back().name, 64) +
                                                 "> is not closed");
      if (s_[pos_] != '<') {
        if (open.empty()) return XmlError(pos_, "text outside the root element");
        size_t end = s_.find('<', pos_);
        if (end == std::string_view::npos) end = s_.size();
        VMB_RETURN_IF_ERROR(DecodeText(s_.substr(pos_, end - pos_), pos_, &open.back().text));
        pos_ = end;
      } else if (StartsWith("<!--")) {
        VMB_RETURN_IF_ERROR(SkipPast(4, "-->", "comment"));
      } else if (StartsWith("<![CDATA[")) {
        if (open.empty()) return XmlError(pos_, "CDATA outside the root element");
        const size_t begin = pos_ + 9;
        const size_t end = s_.find("]]>", begin);
        if (end == std::string_view::npos) return XmlError(pos_, "unterminated CDATA section");
        open.back().text.append(s_.substr(begin, end - begin));
        pos_ = end + 3;
      } else if (StartsWith("<!")) {
        return XmlError(pos_, "DOCTYPE and other declarations are not accepted");
      } else if (StartsWith("<?")) {
        VMB_RETURN_IF_ERROR(SkipPast(2, "?>", "processing instruction"));
      } else if (StartsWith("</")) {
        const size_t at = pos_;
        pos_ += 2;
        VMB_ASSIGN_OR_RETURN(std::string_view name, Name());
        SkipSpace();
        if (pos_ >= s_.size() || s_[pos_] != '>') return XmlError(pos_, "expected '>'");
        ++pos_;
        if (open.empty()) return XmlError(at, "end tag without a start tag");
        if (name != open.back().name)
          return XmlError(at, "end tag </" + ServerText(name, 64) + "> does not close <" +
                                  ServerText(open.back().name, 64) + ">");
        XmlElement done = std::move(open.back());
        open.pop_back();
        if (open.empty())
          root = std::move(done);
        else
          open.back().children.push_back(std::move(done));
      } else {
        const size_t at = pos_;
        ++pos_;
        VMB_ASSIGN_OR_RETURN(std::string_view name, Name());
        if (++elements_ > limits_.max_elements)
          return XmlError(at, "more than " + std::to_string(limits_.max_elements) + " elements");
        if (open.size() >= static_cast<size_t>(limits_.max_depth))
          return XmlError(at, "elements nested deeper than " + std::to_string(limits_.max_depth));
        VMB_ASSIGN_OR_RETURN(bool self_closing, Attributes());
        XmlElement e;
        e.name = std::string(name);
        if (!self_closing)
          open.push_back(std::move(e));
        else if (open.empty())
          root = std::move(e);
        else
          open.back().children.push_back(std::move(e));
      }
    }
    VMB_RETURN_IF_ERROR(SkipMisc());
    if (pos_ != s_.size()) return XmlError(pos_, "content after the root element");
    return std::move(*root);
  }

 private:
  bool StartsWith(std::string_view p) const { return s_.substr(pos_, p.size()) == p; }

  // Skips whitespace; true when there was some.
  bool SkipSpace() {
    const size_t start = pos_;
    while (pos_ < s_.size() && IsSpace(s_[pos_])) ++pos_;
    return pos_ != start;
  }

  // Moves past the construct that starts at pos_ with `open_len` bytes and ends with `end`; fails
  // when there is no end.
  Status SkipPast(size_t open_len, std::string_view end, std::string_view what) {
    const size_t at = s_.find(end, pos_ + open_len);
    if (at == std::string_view::npos) return XmlError(pos_, "unterminated " + std::string(what));
    pos_ = at + end.size();
    return Status::Ok();
  }

  // Whitespace, comments and processing instructions (around the root element).
  Status SkipMisc() {
    while (true) {
      SkipSpace();
      if (StartsWith("<?")) {
        VMB_RETURN_IF_ERROR(SkipPast(2, "?>", "processing instruction"));
      } else if (StartsWith("<!--")) {
        VMB_RETURN_IF_ERROR(SkipPast(4, "-->", "comment"));
      } else {
        return Status::Ok();
      }
    }
  }

  StatusOr<std::string_view> Name() {
    const size_t start = pos_;
    if (pos_ >= s_.size() || !IsNameStart(s_[pos_])) return XmlError(pos_, "expected a name");
    while (pos_ < s_.size() && IsNameChar(s_[pos_])) ++pos_;
    return s_.substr(start, pos_ - start);
  }

  // The attributes of a start tag up to and including its '>' or "/>"; they are checked and
  // dropped. Returns true for a self-closing tag.
  StatusOr<bool> Attributes() {
    while (true) {
      const bool space = SkipSpace();
      if (pos_ >= s_.size()) return XmlError(pos_, "unterminated start tag");
      if (StartsWith("/>")) {
        pos_ += 2;
        return true;
      }
      if (s_[pos_] == '>') {
        ++pos_;
        return false;
      }
      if (!space) return XmlError(pos_, "expected whitespace before an attribute");
      VMB_ASSIGN_OR_RETURN(std::string_view name, Name());
      (void)name;
      SkipSpace();
      if (pos_ >= s_.size() || s_[pos_] != '=') return XmlError(pos_, "expected '='");
      ++pos_;
      SkipSpace();
      if (pos_ >= s_.size() || (s_[pos_] != '"' && s_[pos_] != '\''))
        return XmlError(pos_, "expected a quoted attribute value");
      const char quote = s_[pos_];
      const size_t begin = pos_ + 1;
      const size_t end = s_.find(quote, begin);
      if (end == std::string_view::npos) return XmlError(pos_, "unterminated attribute value");
      const std::string_view value = s_.substr(begin, end - begin);
      if (value.find('<') != std::string_view::npos)
        return XmlError(begin, "'<' in an attribute value");
      std::string scratch;
      VMB_RETURN_IF_ERROR(DecodeText(value, begin, &scratch));
      pos_ = end + 1;
    }
  }

  std::string_view s_;
  XmlLimits limits_;
  size_t pos_ = 0;
  size_t elements_ = 0;
};

// The root of `body` when it parses and is named `root`; kDataLoss naming `what` otherwise.
StatusOr<XmlElement> ParseRoot(std::string_view body, std::string_view root,
                               std::string_view what) {
  auto doc = ParseXmlDocument(body);
  if (!doc.ok()) return doc.status().WithContext(what);
  if (doc->name != root)
    return DataLossError(std::string(what) + ": expected <" + std::string(root) + ">, got <" +
                         ServerText(doc->name, 64) + ">");
  return doc;
}

S3ErrorBody ErrorFields(const XmlElement& e) {
  S3ErrorBody out;
  out.code = e.ChildText("Code");
  out.message = e.ChildText("Message");
  out.request_id = e.ChildText("RequestId");
  out.key = e.ChildText("Key");
  return out;
}

}  // namespace

const XmlElement* XmlElement::Child(std::string_view child) const {
  for (const auto& c : children)
    if (c.name == child) return &c;
  return nullptr;
}

std::string XmlElement::ChildText(std::string_view child) const {
  const XmlElement* c = Child(child);
  return c == nullptr ? std::string() : c->text;
}

StatusOr<XmlElement> ParseXmlDocument(std::string_view doc, const XmlLimits& limits) {
  return Parser(doc, limits).Run();
}

std::string XmlEscape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::optional<uint64_t> ParseDecimalU64(std::string_view s) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    const auto d = static_cast<uint64_t>(c - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

StatusOr<uint64_t> ParseDecimalField(std::string_view s, std::string_view what) {
  auto v = ParseDecimalU64(s);
  if (!v.has_value())
    return DataLossError(std::string(what) + " is not a decimal number ('" + ServerText(s, 40) +
                         "')");
  return *v;
}

std::string ServerText(std::string_view s, size_t max) {
  std::string out;
  const bool cut = s.size() > max;
  const std::string_view keep = cut ? s.substr(0, max) : s;
  out.reserve(keep.size() + 3);
  for (char c : keep) out.push_back(c >= 0x20 && c < 0x7F ? c : '?');
  if (cut) out += "...";
  return out;
}

StatusOr<ContentRange> ParseContentRange(std::string_view value) {
  auto bad = [&] {
    return DataLossError("header Content-Range is not 'bytes <first>-<last>/<size>' ('" +
                         ServerText(value, 80) + "')");
  };
  constexpr std::string_view kUnit = "bytes ";
  if (value.substr(0, kUnit.size()) != kUnit) return bad();
  const std::string_view rest = value.substr(kUnit.size());
  const size_t dash = rest.find('-');
  const size_t slash = rest.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || slash < dash)
    return bad();
  ContentRange r;
  auto first = ParseDecimalU64(rest.substr(0, dash));
  auto last = ParseDecimalU64(rest.substr(dash + 1, slash - dash - 1));
  if (!first || !last || *last < *first) return bad();
  r.first = *first;
  r.last = *last;
  const std::string_view total = rest.substr(slash + 1);
  if (total != "*") {
    auto t = ParseDecimalU64(total);
    if (!t || *t <= r.last) return bad();
    r.total = *t;
  }
  return r;
}

StatusOr<S3ErrorBody> ParseS3ErrorBody(std::string_view body) {
  VMB_ASSIGN_OR_RETURN(XmlElement root, ParseRoot(body, "Error", "S3 error document"));
  return ErrorFields(root);
}

StatusOr<ListPage> ParseListObjectsV2(std::string_view body, std::string_view store_prefix,
                                      std::string_view prefix, std::string_view token,
                                      int max_keys) {
  VMB_ASSIGN_OR_RETURN(XmlElement root,
                       ParseRoot(body, "ListBucketResult", "S3 ListObjectsV2 answer"));
  const std::string wanted = std::string(store_prefix) + std::string(prefix);
  ListPage page;
  std::string truncated;
  bool has_truncated = false;
  for (const XmlElement& c : root.children) {
    if (c.name == "IsTruncated") {
      has_truncated = true;
      truncated = c.text;
    } else if (c.name == "NextContinuationToken") {
      page.next_token = c.text;
    } else if (c.name == "Contents") {
      const XmlElement* key = c.Child("Key");
      const XmlElement* size = c.Child("Size");
      if (key == nullptr || size == nullptr)
        return DataLossError("S3 ListObjectsV2 answer has an entry without <Key> or <Size>");
      const std::string& k = key->text;
      if (k.size() < wanted.size() || k.compare(0, wanted.size(), wanted) != 0)
        return DataLossError("S3 listing of prefix '" + ServerText(wanted) + "' returned key '" +
                             ServerText(k) + "' outside that prefix");
      std::string rel = k.substr(store_prefix.size());
      if (!ValidateKey(rel).ok())
        return DataLossError("S3 listing returned key '" + ServerText(k) +
                             "', which is not a valid object key");
      VMB_ASSIGN_OR_RETURN(uint64_t n,
                           ParseDecimalField(size->text, "<Size> of key '" + ServerText(k) + "'"));
      if (!page.objects.empty() && !(page.objects.back().key < rel))
        return DataLossError("S3 listing is not in increasing key order at key '" + ServerText(k) +
                             "'");
      if (page.objects.size() >= static_cast<size_t>(max_keys < 0 ? 0 : max_keys))
        return DataLossError("S3 listing returned more than the " + std::to_string(max_keys) +
                             " keys asked for");
      const XmlElement* etag = c.Child("ETag");
      // The ETag is the object's version for readers that cache (bounded: a longer one is
      // not kept, and the object is simply fetched again).
      std::string version = etag != nullptr && etag->text.size() <= 256 ? etag->text : "";
      page.objects.push_back(ObjectInfo{std::move(rel), n, std::move(version)});
    }
  }
  if (!has_truncated || (truncated != "true" && truncated != "false"))
    return DataLossError("S3 ListObjectsV2 answer has no <IsTruncated> true or false ('" +
                         ServerText(truncated, 20) + "')");
  if (truncated == "false") {
    page.next_token.clear();
    return page;
  }
  if (page.next_token.empty() || page.next_token.size() > kMaxContinuationToken)
    return DataLossError(
        "S3 ListObjectsV2 answer is truncated without a usable <NextContinuationToken>");
  if (page.next_token == token)
    return DataLossError(
        "S3 ListObjectsV2 answer repeats the continuation token it was asked for (the listing "
        "would never end)");
  return page;
}

StatusOr<std::string> ParseInitiateMultipartUpload(std::string_view body) {
  VMB_ASSIGN_OR_RETURN(XmlElement root, ParseRoot(body, "InitiateMultipartUploadResult",
                                                  "S3 CreateMultipartUpload answer"));
  std::string id = root.ChildText("UploadId");
  bool printable = !id.empty() && id.size() <= kMaxUploadId;
  for (char c : id) printable = printable && c > 0x20 && c < 0x7F;
  if (!printable)
    return DataLossError("S3 CreateMultipartUpload answer has no usable <UploadId> ('" +
                         ServerText(id, 80) + "')");
  return id;
}

StatusOr<std::optional<S3ErrorBody>> ParseCompleteMultipartUpload(std::string_view body) {
  auto doc = ParseXmlDocument(body);
  if (!doc.ok()) return doc.status().WithContext("S3 CompleteMultipartUpload answer");
  if (doc->name == "CompleteMultipartUploadResult") return std::optional<S3ErrorBody>();
  if (doc->name == "Error") return std::optional<S3ErrorBody>(ErrorFields(*doc));
  return DataLossError(
      "S3 CompleteMultipartUpload answer: expected <CompleteMultipartUploadResult> or <Error>, "
      "got <" +
      ServerText(doc->name, 64) + ">");
}

StatusOr<std::vector<S3ErrorBody>> ParseDeleteObjectsResult(std::string_view body) {
  VMB_ASSIGN_OR_RETURN(XmlElement root, ParseRoot(body, "DeleteResult", "S3 DeleteObjects answer"));
  std::vector<S3ErrorBody> errors;
  for (const XmlElement& c : root.children)
    if (c.name == "Error") errors.push_back(ErrorFields(c));
  return errors;
}

}  // namespace vmbackup::internal
