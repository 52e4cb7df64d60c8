// Harvester backup-target setting parsing: every bad field is named.
#include <gtest/gtest.h>

#include "support/test_util.h"
#include "vmbackup/backup_target.h"

namespace vmbackup {
namespace {

TEST(TargetConfigTest, ParsesHarvesterS3Setting) {
  auto c = ParseTargetConfig(R"({"type":"s3","endpoint":"https://s3.example:9000",
      "bucketName":"b","bucketRegion":"eu-west-1","accessKeyId":"AK","secretAccessKey":"SECRET",
      "cert":"","virtualHostedStyle":true,"refreshIntervalInSeconds":120})");
  ASSERT_OK(c);
  EXPECT_EQ(c->type, TargetConfig::Type::kS3);
  EXPECT_EQ(c->bucket_name, "b");
  EXPECT_EQ(c->bucket_region, "eu-west-1");
  EXPECT_TRUE(c->virtual_hosted_style);
  EXPECT_EQ(c->refresh_interval_seconds, 120);
  EXPECT_EQ(c->ToRedactedJson().find("SECRET"), std::string::npos);
}

TEST(TargetConfigTest, ParsesNfsAndFileSettings) {
  auto n = ParseTargetConfig(
      R"({"type":"nfs","endpoint":"nfs://longhorn-test-nfs-svc.default:/opt/backupstore","refreshIntervalInSeconds":60})");
  ASSERT_OK(n);
  EXPECT_EQ(n->type, TargetConfig::Type::kNfs);
  auto f = ParseTargetConfig(R"({"type":"file","endpoint":"file:///var/backups"})");
  ASSERT_OK(f);
  EXPECT_EQ(f->endpoint, "/var/backups");
  EXPECT_EQ(f->refresh_interval_seconds, 60);  // default
}

TEST(TargetConfigTest, ZeroRefreshIntervalMeansDefaultNotBusyLoop) {
  auto c = ParseTargetConfig(R"({"type":"file","endpoint":"/x","refreshIntervalInSeconds":0})");
  ASSERT_OK(c);
  EXPECT_EQ(c->refresh_interval_seconds, 60);
}

struct BadCase {
  const char* json;
  const char* needle;
};

class BadTargetConfigTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadTargetConfigTest, NamesTheField) {
  EXPECT_THAT(ParseTargetConfig(GetParam().json),
              StatusIs(StatusCode::kInvalidArgument, GetParam().needle));
}

INSTANTIATE_TEST_SUITE_P(
    All, BadTargetConfigTest,
    ::testing::Values(
        BadCase{R"({"type":"s3")", "not valid JSON"}, BadCase{R"([1,2])", "not a JSON object"},
        BadCase{R"({"endpoint":"/x"})", "'type' is missing"},
        BadCase{R"({"type":"ftp","endpoint":"/x"})", "'type' has unknown value"},
        BadCase{R"({"type":3})", "'type' must be a string"},
        BadCase{R"({"type":"file"})", "'endpoint' is required"},
        BadCase{R"({"type":"file","endpoint":"relative/dir"})", "'endpoint' must be an absolute"},
        BadCase{R"({"type":"s3","endpoint":"https://x"})", "'bucketName' is required"},
        BadCase{R"({"type":"s3","bucketName":"b","endpoint":"ftp://x"})",
                "'endpoint' must start with http"},
        BadCase{R"({"type":"s3","bucketName":7})", "'bucketName' must be a string"},
        BadCase{R"({"type":"s3","bucketName":"b","virtualHostedStyle":"yes"})",
                "'virtualHostedStyle' must be a boolean"},
        BadCase{R"({"type":"file","endpoint":"/x","refreshIntervalInSeconds":-1})",
                "'refreshIntervalInSeconds' must be between"},
        BadCase{R"({"type":"file","endpoint":"/x","refreshIntervalInSeconds":"60"})",
                "'refreshIntervalInSeconds' must be an integer"},
        BadCase{R"({"type":"nfs","endpoint":"server:/export"})",
                "'endpoint' must be an nfs:// URL"},
        BadCase{R"({"type":"file","endpoint":"/x","bucketname":"b"})",
                "'bucketname' is not a known field"},
        BadCase{R"({"type":"file","endpoint":"/x","prefix":"../up"})", "'prefix' must be"},
        BadCase{R"({"type":"s3","bucketName":"b","endpoint":"http://x","allowInsecureHttp":1})",
                "'allowInsecureHttp' must be a boolean"},
        BadCase{R"({"type":"s3","bucketName":"b","endpoint":"http://x","allowInsecureHttp":"yes"})",
                "'allowInsecureHttp' must be a boolean"}));

// An http:// endpoint was accepted silently: backup data, metadata and signed requests went over
// the network in the clear, open to reading and rewriting. It now needs an explicit opt-in.
TEST(TargetConfigTest, HttpS3EndpointWithoutAllowInsecureHttpIsRefusedNamingTheField) {
  for (
      const char* cfg :
      {R"({"type":"s3","endpoint":"http://s3.example:9000","bucketName":"b"})",
       R"({"type":"s3","endpoint":"http://s3.example","bucketName":"b","allowInsecureHttp":false})",
       R"({"type":"s3","endpoint":"http://s3.example","bucketName":"b","allowInsecureHttp":"false"})",
       R"({"type":"s3","endpoint":"http://s3.example","bucketName":"b","allowInsecureHttp":null})"}) {
    SCOPED_TRACE(cfg);
    auto c = ParseTargetConfig(cfg);
    EXPECT_THAT(c, StatusIs(StatusCode::kInvalidArgument, "'allowInsecureHttp'"));
    EXPECT_THAT(c.status().message(), ::testing::HasSubstr("http://"));
  }
}

TEST(TargetConfigTest, HttpS3EndpointWithAllowInsecureHttpParsesAndIsShownRedacted) {
  auto c = ParseTargetConfig(
      R"({"type":"s3","endpoint":"http://s3.example","bucketName":"b","allowInsecureHttp":true,
          "accessKeyId":"AK","secretAccessKey":"SECRET"})");
  ASSERT_OK(c);
  EXPECT_TRUE(c->allow_insecure_http);
  EXPECT_NE(c->ToRedactedJson().find(R"("allowInsecureHttp":true)"), std::string::npos)
      << c->ToRedactedJson();
  EXPECT_EQ(c->ToRedactedJson().find("SECRET"), std::string::npos);
  auto s = ParseTargetConfig(
      R"({"type":"s3","endpoint":"http://s3.example","bucketName":"b","allowInsecureHttp":"true"})");
  ASSERT_OK(s);
  EXPECT_TRUE(s->allow_insecure_http);
  // https:// and the default AWS endpoint need nothing.
  auto tls = ParseTargetConfig(R"({"type":"s3","endpoint":"https://s3.example","bucketName":"b"})");
  ASSERT_OK(tls);
  EXPECT_FALSE(tls->allow_insecure_http);
  EXPECT_NE(tls->ToRedactedJson().find(R"("allowInsecureHttp":false)"), std::string::npos);
  EXPECT_OK(ParseTargetConfig(R"({"type":"s3","bucketName":"b"})"));
}

// A TargetConfig built in code (not parsed) is checked when the target is opened, before any
// request is sent (nothing listens on port 1).
TEST(TargetConfigTest, HttpS3EndpointInAConfigStructIsRefusedWhenOpened) {
  TargetConfig c;
  c.type = TargetConfig::Type::kS3;
  c.endpoint = "http://127.0.0.1:1";
  c.bucket_name = "b";
  c.access_key_id = "AK";
  c.secret_access_key = "SECRET";
  TargetOptions o;
  o.retry_timeout_seconds = 1;
  EXPECT_THAT(BackupTarget::Open(c, o),
              StatusIs(StatusCode::kInvalidArgument, "'allowInsecureHttp'"));
  c.allow_insecure_http = true;
  EXPECT_THAT(BackupTarget::Open(c, o), StatusIs(StatusCode::kUnavailable, "127.0.0.1:1"))
      << "with the opt-in the endpoint is used";
}

TargetOptions Opts(uint32_t block_size, bool create) {
  TargetOptions o;
  o.block_size = block_size;
  o.create_if_missing = create;
  return o;
}

TEST(TargetOpenTest, BadOptionsAndMissingDirectory) {
  testing::TempDir d;
  const std::string cfg = R"({"type":"file","endpoint":")" + d.path() + R"("})";
  EXPECT_THAT(BackupTarget::Open(cfg, Opts(1000, true)),
              StatusIs(StatusCode::kInvalidArgument, "block_size"));
  EXPECT_THAT(BackupTarget::Open(R"({"type":"file","endpoint":")" + d.Sub("missing") + R"("})"),
              StatusIs(StatusCode::kNotFound, "missing"));
  EXPECT_THAT(BackupTarget::Open(cfg, Opts(0, false)),
              StatusIs(StatusCode::kNotFound, "no vmbackup repository"));
}

TEST(TargetOpenTest, InitializesOnceAndReopensWithSameIdentity) {
  testing::TempDir d;
  const std::string cfg = R"({"type":"file","endpoint":")" + d.path() + R"("})";
  auto t1 = BackupTarget::Open(cfg, Opts(1 << 20, true));
  ASSERT_OK(t1);
  ASSERT_OK((*t1)->Test());
  auto t2 = BackupTarget::Open(cfg);  // block size of the existing repository wins
  ASSERT_OK(t2);
  EXPECT_EQ((*t2)->repository_id(), (*t1)->repository_id());
  EXPECT_EQ((*t2)->block_size(), 1u << 20);
  EXPECT_EQ(testing::ListFiles(d.path()), std::vector<std::string>{"repository.json"});
}

TEST(TargetOpenTest, CorruptDescriptorIsDataLoss) {
  testing::TempDir d;
  testing::WriteAll(d.Sub("repository.json"), "{\"format\": \"vmbackup-repos");
  EXPECT_THAT(BackupTarget::Open(R"({"type":"file","endpoint":")" + d.path() + R"("})"),
              StatusIs(StatusCode::kDataLoss, "repository descriptor"));
}

}  // namespace
}  // namespace vmbackup
