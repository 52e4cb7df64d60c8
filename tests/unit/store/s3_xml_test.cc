// S3 response parsing (src/store/s3/s3_xml.h): real radosgw bodies parse; every malformed,
// hostile or out-of-bounds body is kDataLoss saying what was wrong, never an exception, a crash or
// an unbounded allocation.
#include "store/s3/s3_xml.h"

#include <gtest/gtest.h>

#include <string>

#include "support/test_util.h"

namespace vmbackup::internal {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

// Bodies captured from Ceph radosgw 16.2 (also in tests/fuzz/corpus/s3_xml/).
constexpr std::string_view kListPage =
    R"(<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>vmbackup-test</Name><Prefix>cap/</Prefix><MaxKeys>10</MaxKeys><IsTruncated>false</IsTruncated><Contents><Key>cap/k1</Key><LastModified>2026-12-01T21:19:01.460Z</LastModified><ETag>&quot;5d41402abc4b2a76b9719d911017c592&quot;</ETag><Size>5</Size><StorageClass>STANDARD</StorageClass><Type>Normal</Type></Contents><Contents><Key>cap/k2</Key><LastModified>2026-12-01T21:19:13.770Z</LastModified><ETag>&quot;6e809cbda0732ac4845916a59016f954&quot;</ETag><Size>6</Size><StorageClass>STANDARD</StorageClass><Type>Normal</Type></Contents><KeyCount>2</KeyCount></ListBucketResult>)";
constexpr std::string_view kListTruncated =
    R"(<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>vmbackup-test</Name><Prefix>cap/</Prefix><MaxKeys>1</MaxKeys><IsTruncated>true</IsTruncated><Contents><Key>cap/k1</Key><LastModified>2026-12-01T21:19:13.761Z</LastModified><ETag>&quot;5d41402abc4b2a76b9719d911017c592&quot;</ETag><Size>5</Size><StorageClass>STANDARD</StorageClass><Type>Normal</Type></Contents><NextContinuationToken>cap/k1</NextContinuationToken><KeyCount>1</KeyCount></ListBucketResult>)";
constexpr std::string_view kNoSuchKey =
    R"(<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code><Message></Message><BucketName>vmbackup-test</BucketName><RequestId>tx000007f4b8dc275634c89-006b0f39d1-1019-default</RequestId><HostId>1019-default-default</HostId></Error>)";
constexpr std::string_view kInitiate =
    R"(<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>vmbackup-test</Bucket><Key>cap/mp</Key><UploadId>2~OtV14c653MgFnQaX9-omuWTVz_4OdHJ</UploadId></InitiateMultipartUploadResult>)";
constexpr std::string_view kComplete =
    R"(<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Location>localhost/vmbackup-test/cap/mp2</Location><Bucket>vmbackup-test</Bucket><Key>cap/mp2</Key><ETag></ETag></CompleteMultipartUploadResult>)";
constexpr std::string_view kCompleteError =
    R"(<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidPart</Code><Message></Message><BucketName>vmbackup-test</BucketName><RequestId>tx00000303c81a2e7d496e4-006b0f39d1-1019-default</RequestId><HostId>1019-default-default</HostId></Error>)";
constexpr std::string_view kDeleteQuiet =
    R"(<?xml version="1.0" encoding="UTF-8"?><DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></DeleteResult>)";

// A ListObjectsV2 page with the given <Contents> entries (key, size) and tail.
std::string ListBody(const std::vector<std::pair<std::string, std::string>>& entries,
                     const std::string& tail = "<IsTruncated>false</IsTruncated>") {
  std::string s = "<ListBucketResult>";
  for (const auto& [k, n] : entries)
    s += "<Contents><Key>" + k + "</Key><Size>" + n + "</Size></Contents>";
  return s + tail + "</ListBucketResult>";
}

std::vector<std::string> Keys(const ListPage& p) {
  std::vector<std::string> out;
  for (const auto& o : p.objects) out.push_back(o.key);
  return out;
}

// ---- numbers ---------------------------------------------------------------------------------

// std::stoull threw (out_of_range, invalid_argument) on these, or read a prefix ("12abc" → 12,
// " 7" → 7, "-1" → 2^64-1).
TEST(S3XmlTest, DecimalParserRejectsWhatStoullThrowsOnOrMisreads) {
  for (const char* bad : {"", "-1", "+1", " 7", "7 ", "12abc", "0x10", "1e3", "1.0",
                          "18446744073709551616", "99999999999999999999999", "\xd9\xa1"}) {
    SCOPED_TRACE(bad);
    EXPECT_FALSE(ParseDecimalU64(bad).has_value());
    EXPECT_THAT(ParseDecimalField(bad, "header Content-Length"),
                StatusIs(StatusCode::kDataLoss, "header Content-Length is not a decimal number"));
  }
  EXPECT_EQ(ParseDecimalU64("0"), 0u);
  EXPECT_EQ(ParseDecimalU64("00042"), 42u);
  EXPECT_EQ(ParseDecimalU64("18446744073709551615"), UINT64_MAX);
}

TEST(S3XmlTest, ContentRangeIsParsedStrictly) {
  auto r = ParseContentRange("bytes 100-199/1000");
  ASSERT_OK(r);
  EXPECT_EQ(r->first, 100u);
  EXPECT_EQ(r->last, 199u);
  EXPECT_EQ(r->total, 1000u);
  auto star = ParseContentRange("bytes 0-0/*");
  ASSERT_OK(star);
  EXPECT_FALSE(star->total.has_value());
  for (const char* bad : {"", "bytes", "bytes 1-2", "items 0-1/2", "bytes 5-4/10", "bytes 0-9/9",
                          "bytes -1-2/3", "bytes 0-18446744073709551616/*", "bytes 1/2-3"}) {
    SCOPED_TRACE(bad);
    EXPECT_THAT(ParseContentRange(bad), StatusIs(StatusCode::kDataLoss, "Content-Range"));
  }
}

TEST(S3XmlTest, ServerTextDropsControlCharactersAndIsBounded) {
  EXPECT_EQ(ServerText("a\nb\r\x1b[31m\xff"), "a?b??[31m?");
  EXPECT_EQ(ServerText(std::string(500, 'x'), 10), "xxxxxxxxxx...");
}

// ---- the XML subset --------------------------------------------------------------------------

TEST(S3XmlTest, EntitiesCdataCommentsAndAttributesAreHandled) {
  auto doc = ParseXmlDocument(
      "\xEF\xBB\xBF<?xml version='1.0'?><!-- c --><a x=\"1 &amp; 2\" y='z'>"
      "<b>&lt;&gt;&amp;&quot;&apos;&#65;&#x42;&#xe9;&#x1F600;</b><c/><!-- -->"
      "<d><![CDATA[<raw&>]]></d></a><!-- after -->\n");
  ASSERT_OK(doc);
  EXPECT_EQ(doc->name, "a");
  ASSERT_EQ(doc->children.size(), 3u);
  EXPECT_EQ(doc->ChildText("b"), "<>&\"'AB\xc3\xa9\xf0\x9f\x98\x80");
  EXPECT_NE(doc->Child("c"), nullptr);
  EXPECT_EQ(doc->ChildText("d"), "<raw&>");
  EXPECT_EQ(doc->ChildText("missing"), "");
}

TEST(S3XmlTest, MalformedDocumentsAreDataLossNotExceptions) {
  for (const char* bad : {"",
                          "   ",
                          "text",
                          "<a>",
                          "<a></b>",
                          "<a><b></a></b>",
                          "</a>",
                          "<a></a><b></b>",
                          "<a></a>trailing",
                          "<a>&unknown;</a>",
                          "<a>&amp</a>",
                          "<a>&#0;</a>",
                          "<a>&#xD800;</a>",
                          "<a>&#x110000;</a>",
                          "<a>&#12345678;</a>",
                          "<a>&#x;</a>",
                          "<a b></a>",
                          "<a b=c></a>",
                          "<a b='<'></a>",
                          "<a b=\"1\"c=\"2\"></a>",
                          "<a><![CDATA[x</a>",
                          "<a><!-- x</a>",
                          "<1a></1a>",
                          "<a",
                          "<a/",
                          "<?xml",
                          "<!-->",
                          "<a></a ",
                          "x<a></a>",
                          "<!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>"}) {
    SCOPED_TRACE(bad);
    EXPECT_THAT(ParseXmlDocument(bad), StatusIs(StatusCode::kDataLoss, "S3 response"));
  }
}

// A document nested 100000 deep would overflow the stack of a recursive parser; it is refused at
// the depth bound.
TEST(S3XmlTest, DeepNestingIsRefusedAtTheDepthBound) {
  std::string deep;
  for (int i = 0; i < 100000; ++i) deep += "<a>";
  EXPECT_THAT(ParseXmlDocument(deep), StatusIs(StatusCode::kDataLoss, "nested deeper than 16"));
  std::string ok;
  for (int i = 0; i < 16; ++i) ok += "<a>";
  for (int i = 0; i < 16; ++i) ok += "</a>";
  EXPECT_OK(ParseXmlDocument(ok));
}

TEST(S3XmlTest, ElementCountAndDocumentSizeAreBounded) {
  std::string many = "<r>";
  for (int i = 0; i < 100001; ++i) many += "<e/>";
  many += "</r>";
  EXPECT_THAT(ParseXmlDocument(many), StatusIs(StatusCode::kDataLoss, "more than 100000 elements"));
  XmlLimits small;
  small.max_bytes = 10;
  EXPECT_THAT(ParseXmlDocument("<a>0123456789</a>", small),
              StatusIs(StatusCode::kDataLoss, "larger than the 10 accepted"));
}

TEST(S3XmlTest, EscapeRoundTripsThroughTheParser) {
  const std::string nasty = "a&b<c>d\"e'f&amp;\x01\xff]]>";
  auto doc = ParseXmlDocument("<k>" + XmlEscape(nasty) + "</k>");
  ASSERT_OK(doc);
  EXPECT_EQ(doc->text, nasty);
}

// ---- error documents -------------------------------------------------------------------------

TEST(S3XmlTest, ErrorBodyOfRadosgwParses) {
  auto e = ParseS3ErrorBody(kNoSuchKey);
  ASSERT_OK(e);
  EXPECT_EQ(e->code, "NoSuchKey");
  EXPECT_EQ(e->request_id, "tx000007f4b8dc275634c89-006b0f39d1-1019-default");
  EXPECT_EQ(e->message, "");
}

// The old flat scan took "<Code>" from anywhere in any body, e.g. from an HTML page or a nested
// element.
TEST(S3XmlTest, ErrorBodyThatIsNotAnErrorDocumentIsDataLoss) {
  EXPECT_THAT(ParseS3ErrorBody(""), StatusIs(StatusCode::kDataLoss, "S3 error document"));
  EXPECT_THAT(ParseS3ErrorBody("<html><Code>SlowDown</Code></html>"),
              StatusIs(StatusCode::kDataLoss, "expected <Error>"));
  EXPECT_THAT(ParseS3ErrorBody("<Error><Code>SlowDown</Code>"),
              StatusIs(StatusCode::kDataLoss, "not closed"));
  auto nested = ParseS3ErrorBody("<Error><X><Code>Deep</Code></X><Code>Top</Code></Error>");
  ASSERT_OK(nested);
  EXPECT_EQ(nested->code, "Top");
}

// ---- ListObjectsV2 ---------------------------------------------------------------------------

TEST(S3XmlTest, RadosgwListPagesParse) {
  auto page = ParseListObjectsV2(kListPage, "", "cap/", "", 10);
  ASSERT_OK(page);
  EXPECT_THAT(Keys(*page), ElementsAre("cap/k1", "cap/k2"));
  EXPECT_EQ(page->objects[1].size, 6u);
  EXPECT_EQ(page->next_token, "");
  auto truncated = ParseListObjectsV2(kListTruncated, "", "cap/", "", 1);
  ASSERT_OK(truncated);
  EXPECT_THAT(Keys(*truncated), ElementsAre("cap/k1"));
  EXPECT_EQ(truncated->next_token, "cap/k1");
  // With a store prefix, keys come back relative to it.
  auto rel = ParseListObjectsV2(kListPage, "cap/", "", "", 10);
  ASSERT_OK(rel);
  EXPECT_THAT(Keys(*rel), ElementsAre("k1", "k2"));
}

// The old parser called std::stoull on <Size>: it threw on these (or misread "12abc" as 12).
TEST(S3XmlTest, ListingSizeThatIsNotANumberIsDataLossNamingTheKey) {
  for (const char* bad : {"", "abc", "-1", "12abc", "99999999999999999999999"}) {
    SCOPED_TRACE(bad);
    EXPECT_THAT(ParseListObjectsV2(ListBody({{"p/x", bad}}), "", "p/", "", 1000),
                StatusIs(StatusCode::kDataLoss, "<Size> of key 'p/x'"));
  }
}

// The old parser skipped keys outside the store's prefix silently and never checked the prefix
// of the request at all: a server could slip keys of other objects into a listing.
TEST(S3XmlTest, ListingKeyOutsideTheRequestedPrefixIsDataLossNamingTheKey) {
  EXPECT_THAT(ParseListObjectsV2(ListBody({{"records/a.json", "1"}, {"packs/x", "1"}}), "",
                                 "records/", "", 1000),
              StatusIs(StatusCode::kDataLoss, "key 'packs/x' outside that prefix"));
  EXPECT_THAT(
      ParseListObjectsV2(ListBody({{"other/records/a", "1"}}), "mine/", "records/", "", 1000),
      StatusIs(StatusCode::kDataLoss, "key 'other/records/a' outside"));
  EXPECT_THAT(ParseListObjectsV2(ListBody({{"mine", "1"}}), "mine/", "", "", 1000),
              StatusIs(StatusCode::kDataLoss, "key 'mine' outside"));
}

TEST(S3XmlTest, ListingKeyThatIsNotAValidObjectKeyIsDataLossNamingIt) {
  for (const char* bad : {"p/../../etc/passwd", "p/a//b", "p/", "p/x/", "p/a b", "p/a&amp;b",
                          "p/\xc3\xa9", "p/./x"}) {
    SCOPED_TRACE(bad);
    EXPECT_THAT(ParseListObjectsV2(ListBody({{bad, "1"}}), "", "p/", "", 1000),
                StatusIs(StatusCode::kDataLoss, "not a valid object key"));
  }
}

TEST(S3XmlTest, ListingOutOfOrderDuplicatedOrOverlongIsDataLoss) {
  EXPECT_THAT(ParseListObjectsV2(ListBody({{"p/b", "1"}, {"p/a", "1"}}), "", "p/", "", 1000),
              StatusIs(StatusCode::kDataLoss, "increasing key order at key 'p/a'"));
  EXPECT_THAT(ParseListObjectsV2(ListBody({{"p/a", "1"}, {"p/a", "2"}}), "", "p/", "", 1000),
              StatusIs(StatusCode::kDataLoss, "increasing key order"));
  EXPECT_THAT(ParseListObjectsV2(ListBody({{"p/a", "1"}, {"p/b", "2"}}), "", "p/", "", 1),
              StatusIs(StatusCode::kDataLoss, "more than the 1 keys"));
  EXPECT_THAT(ParseListObjectsV2("<ListBucketResult><IsTruncated>false</IsTruncated><Contents>"
                                 "<Size>1</Size></Contents></ListBucketResult>",
                                 "", "", "", 1000),
              StatusIs(StatusCode::kDataLoss, "without <Key> or <Size>"));
}

// A truncated page without a token ended the listing early (ListAll returned a partial list); one
// that repeats the token it was given made ListAll loop forever.
TEST(S3XmlTest, ListingTruncatedWithoutProgressIsDataLoss) {
  EXPECT_THAT(ParseListObjectsV2(ListBody({}, "<IsTruncated>true</IsTruncated>"), "", "", "", 10),
              StatusIs(StatusCode::kDataLoss, "without a usable <NextContinuationToken>"));
  EXPECT_THAT(ParseListObjectsV2(ListBody({},
                                          "<IsTruncated>true</IsTruncated>"
                                          "<NextContinuationToken>t1</NextContinuationToken>"),
                                 "", "", "t1", 10),
              StatusIs(StatusCode::kDataLoss, "repeats the continuation token"));
  EXPECT_THAT(ParseListObjectsV2(ListBody({}, "<IsTruncated>TRUE</IsTruncated>"), "", "", "", 10),
              StatusIs(StatusCode::kDataLoss, "<IsTruncated>"));
  EXPECT_THAT(ParseListObjectsV2(ListBody({}, ""), "", "", "", 10),
              StatusIs(StatusCode::kDataLoss, "<IsTruncated>"));
  EXPECT_THAT(ParseListObjectsV2(kNoSuchKey, "", "", "", 10),
              StatusIs(StatusCode::kDataLoss, "expected <ListBucketResult>"));
}

// ---- multipart and DeleteObjects -------------------------------------------------------------

TEST(S3XmlTest, InitiateMultipartUploadNeedsAUsableUploadId) {
  auto id = ParseInitiateMultipartUpload(kInitiate);
  ASSERT_OK(id);
  EXPECT_EQ(*id, "2~OtV14c653MgFnQaX9-omuWTVz_4OdHJ");
  for (std::string bad : {std::string("<InitiateMultipartUploadResult/>"),
                          std::string("<InitiateMultipartUploadResult><UploadId></UploadId>"
                                      "</InitiateMultipartUploadResult>"),
                          std::string("<InitiateMultipartUploadResult><UploadId>a b</UploadId>"
                                      "</InitiateMultipartUploadResult>"),
                          "<InitiateMultipartUploadResult><UploadId>" + std::string(1025, 'x') +
                              "</UploadId></InitiateMultipartUploadResult>"}) {
    EXPECT_THAT(ParseInitiateMultipartUpload(bad),
                StatusIs(StatusCode::kDataLoss, "no usable <UploadId>"));
  }
  EXPECT_THAT(ParseInitiateMultipartUpload(kNoSuchKey),
              StatusIs(StatusCode::kDataLoss, "expected <InitiateMultipartUploadResult>"));
}

TEST(S3XmlTest, CompleteMultipartUploadErrorInA200IsReturnedAsAnError) {
  auto ok = ParseCompleteMultipartUpload(kComplete);
  ASSERT_OK(ok);
  EXPECT_FALSE(ok->has_value());
  auto err = ParseCompleteMultipartUpload(kCompleteError);
  ASSERT_OK(err);
  ASSERT_TRUE(err->has_value());
  EXPECT_EQ((*err)->code, "InvalidPart");
  EXPECT_THAT(ParseCompleteMultipartUpload(""), StatusIs(StatusCode::kDataLoss, "Complete"));
  EXPECT_THAT(ParseCompleteMultipartUpload("<Other/>"),
              StatusIs(StatusCode::kDataLoss, "got <Other>"));
}

TEST(S3XmlTest, DeleteObjectsResultListsItsErrors) {
  auto none = ParseDeleteObjectsResult(kDeleteQuiet);
  ASSERT_OK(none);
  EXPECT_THAT(*none, IsEmpty());
  auto some = ParseDeleteObjectsResult(
      "<DeleteResult><Deleted><Key>a</Key></Deleted><Error><Key>b</Key><Code>AccessDenied</Code>"
      "<Message>no</Message></Error></DeleteResult>");
  ASSERT_OK(some);
  ASSERT_EQ(some->size(), 1u);
  EXPECT_EQ((*some)[0].key, "b");
  EXPECT_EQ((*some)[0].code, "AccessDenied");
  EXPECT_THAT(ParseDeleteObjectsResult(kNoSuchKey),
              StatusIs(StatusCode::kDataLoss, "expected <DeleteResult>"));
}

}  // namespace
}  // namespace vmbackup::internal
