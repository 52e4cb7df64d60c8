// Differential test of our SigV4 signer against botocore (the AWS SDK for Python), for S3 requests
// with awkward keys (spaces, '+', '=', '~', '/', '%', unicode, "." and ".." segments, "//") and
// query strings (with and without values, list-type=2&prefix=..., uploads, partNumber&uploadId).
//
// Two kinds of case:
//   auth   : botocore's S3SigV4Auth signs an AWSRequest whose URL path is encoded the way
//   botocore's
//            S3 serializer encodes keys (percent_encode(key, safe='/~')); the query is given both
//            as params and inside the URL ("?uploads" without '='). Both must equal ours.
//   client : a real botocore S3 client call (put_object, list_objects_v2, upload_part, ...) is
//            captured just before sending; we sign the same operation from our raw inputs and must
//            produce the same Authorization and canonical request, and the same URL path and query.
// Needs python3 with botocore: $VMBACKUP_PYTHON, else `python3` on PATH, else /usr/bin/python3
// (Debian: apt-get install python3-botocore). Without one the test FAILS with a message.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/util.h"
#include "store/s3/sigv4.h"
#include "support/test_util.h"

namespace vmbackup::internal::s3 {
namespace {

using json = nlohmann::json;
using Pairs = std::vector<std::pair<std::string, std::string>>;

constexpr char kDate[] = "20130524T000000Z";
constexpr char kRegion[] = "us-east-1";
constexpr char kKeyId[] = "AKIAIOSFODNN7EXAMPLE";
constexpr char kSecret[] = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
constexpr char kToken[] =
    "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+/=token/with+odd=chars";
constexpr char kBucket[] = "vmbackup-test";
constexpr char kPort[] = "7480";

// The botocore side. argv[1] = cases (JSON), argv[2] = the frozen X-Amz-Date.
constexpr char kScript[] = R"PY(
import datetime, json, os, sys
for k in list(os.environ):
    if k.startswith('AWS_'):
        del os.environ[k]
os.environ['AWS_CONFIG_FILE'] = os.devnull
os.environ['AWS_SHARED_CREDENTIALS_FILE'] = os.devnull
os.environ['AWS_EC2_METADATA_DISABLED'] = 'true'
import botocore, botocore.auth, botocore.session
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.utils import percent_encode

FROZEN = datetime.datetime.strptime(sys.argv[2], '%Y%m%dT%H%M%SZ')
if hasattr(botocore.auth, 'get_current_datetime'):
    botocore.auth.get_current_datetime = lambda *a, **k: FROZEN
else:  # older botocore calls datetime.datetime.utcnow()
    class _FrozenDateTime(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return FROZEN
    class _DateTimeModule:
        datetime = _FrozenDateTime
        timedelta = datetime.timedelta
    botocore.auth.datetime = _DateTimeModule

canonical = []
_orig_canonical_request = botocore.auth.SigV4Auth.canonical_request
def _recording_canonical_request(self, request):
    cr = _orig_canonical_request(self, request)
    canonical.append(cr)
    return cr
botocore.auth.SigV4Auth.canonical_request = _recording_canonical_request

cases = json.load(open(sys.argv[1], encoding='utf-8'))
out = {'botocore_version': botocore.__version__, 'results': []}

def signed_header_names(authz):
    return authz.split('SignedHeaders=')[1].split(',')[0].split(';')

def sign_auth(case, flavor):
    creds = Credentials(case['key_id'], case['secret'], case.get('token') or None)
    url = 'http://' + case['host'] + percent_encode(case['path'], safe='/~')
    params = {}
    if case['query']:
        if flavor == 'params':
            params = [(k, v) for k, v in case['query']]
        else:
            url += '?' + '&'.join(percent_encode(k) + ('=' + percent_encode(v) if v != '' else '')
                                  for k, v in case['query'])
    req = AWSRequest(method=case['method'], url=url, data=case['body'].encode('utf-8'),
                     params=params)
    for k, v in case['headers']:
        req.headers[k] = v  # HTTPHeaders: assignment appends, so duplicates are kept
    if case.get('unsigned'):
        req.context['client_config'] = Config(s3={'payload_signing_enabled': False})
    botocore.auth.S3SigV4Auth(creds, 's3', case['region']).add_auth(req)
    return req.headers['Authorization'], canonical[-1]

class Captured(Exception):
    pass

session = botocore.session.get_session()

def sign_client(case):
    captured = {}
    def before_send(request, **kwargs):
        captured['url'] = request.url
        captured['headers'] = request.headers
        raise Captured()
    config = Config(s3={'addressing_style': 'virtual' if case.get('vhost') else 'path'},
                    request_checksum_calculation='when_required',
                    response_checksum_validation='when_required', retries={'max_attempts': 1})
    client = session.create_client(
        's3', region_name=case['region'], endpoint_url=case['endpoint'],
        aws_access_key_id=case['key_id'], aws_secret_access_key=case['secret'],
        aws_session_token=case.get('token') or None, config=config)
    client.meta.events.register('before-send.s3', before_send)
    params = dict(case['params'])
    if 'Body' in params:
        params['Body'] = params['Body'].encode('utf-8')
    try:
        getattr(client, case['op'])(**params)
        raise RuntimeError('request was not captured')
    except Captured:
        pass
    h = captured['headers']
    def text(v):
        return v.decode('utf-8') if isinstance(v, bytes) else v
    authz = text(h['Authorization'])
    signed = [[n, text(h[n])] for n in signed_header_names(authz) if n in h]
    return {'authorization': authz, 'canonical_request': canonical[-1], 'url': captured['url'],
            'signed_headers': signed}

for case in cases:
    r = {'name': case['name']}
    if case['kind'] == 'auth':
        r['authorization'], r['canonical_request'] = sign_auth(case, 'params')
        r['authorization_url_query'], r['canonical_request_url_query'] = sign_auth(case, 'url')
    else:
        r.update(sign_client(case))
    out['results'].append(r)
json.dump(out, sys.stdout, ensure_ascii=False)
)PY";

struct Case {
  std::string name;
  std::string kind;  // "auth" or "client"
  // Our side (raw inputs, as the S3 object store would build them).
  std::string method;
  std::string host;
  std::string path;
  Pairs query;
  Pairs headers;
  std::string body;
  bool token = false;
  bool unsigned_payload = false;
  // Client kind: botocore operation and its parameters; vhost = virtual-hosted addressing.
  std::string op;
  json params;
  bool vhost = false;
};

std::string PathHost() { return std::string("127.0.0.1:") + kPort; }
std::string VhostHost() { return std::string(kBucket) + ".localhost:" + kPort; }
std::string Obj(const std::string& key) { return std::string("/") + kBucket + "/" + key; }

std::vector<Case> Cases() {
  const std::string h = PathHost();
  std::vector<Case> c;
  auto auth = [&](std::string name, std::string method, std::string path, Pairs query = {},
                  Pairs headers = {}, std::string body = "") {
    Case x;
    x.name = std::move(name);
    x.kind = "auth";
    x.method = std::move(method);
    x.host = h;
    x.path = std::move(path);
    x.query = std::move(query);
    x.headers = std::move(headers);
    x.body = std::move(body);
    return x;
  };
  // Keys.
  c.push_back(auth("key-spaces", "PUT", Obj("a b  c.txt"), {}, {}, "hello"));
  c.push_back(auth("key-plus", "GET", Obj("a+b+c")));
  c.push_back(auth("key-equals", "GET", Obj("a=b==")));
  c.push_back(auth("key-tilde", "GET", Obj("~user/x~y~")));
  c.push_back(auth("key-slashes", "GET", Obj("dir//sub/")));
  c.push_back(auth("key-unicode", "GET", Obj("\xE1\x88\xB4/caf\xC3\xA9/\xF0\x9F\x98\x80.img")));
  c.push_back(auth("key-dot-segments", "GET", Obj("a/../b/./c/..")));
  c.push_back(auth("key-leading-dotdot", "GET", Obj("../x")));
  c.push_back(auth("key-percent", "GET", Obj("100%/a%20b%2F")));
  c.push_back(auth("key-reserved", "GET", Obj("!$&'()*,;:@[]#?^`{}|\\\"<>")));
  c.push_back(auth("root", "GET", "/"));
  c.push_back(auth("bucket-only", "HEAD", std::string("/") + kBucket));
  // Queries.
  c.push_back(auth("list-v2", "GET", std::string("/") + kBucket,
                   {{"list-type", "2"},
                    {"prefix", "dir/a b+c=~\xC3\xA9"},
                    {"delimiter", "/"},
                    {"max-keys", "1000"},
                    {"continuation-token", "1/a+b=c=="},
                    {"start-after", "x y"}}));
  c.push_back(auth("uploads", "POST", Obj("big file+1"), {{"uploads", ""}}));
  c.push_back(auth("upload-part", "PUT", Obj("big file+1"),
                   {{"partNumber", "7"}, {"uploadId", "2~abc+def/ghi="}}, {}, "part data"));
  c.push_back(auth("complete-upload", "POST", Obj("big file+1"), {{"uploadId", "2~abc+def/ghi="}},
                   {{"Content-Type", "application/xml"}},
                   "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"e\"</ETag>"
                   "</Part></CompleteMultipartUpload>"));
  c.push_back(auth("delete-objects", "POST", std::string("/") + kBucket, {{"delete", ""}},
                   {{"Content-MD5", "1B2M2Y8AsgTpgAmY7PhCfg=="}}, "<Delete></Delete>"));
  c.push_back(auth("query-odd-names", "GET", Obj("k"),
                   {{"a b", ""},
                    {"\xE1\x88\xB4", "\xC3\xA9"},
                    {"k", "b"},
                    {"k", "a"},
                    {"K", "c"},
                    {"x=y", "&"},
                    {"empty", ""}}));
  // Headers.
  c.push_back(auth("header-trim-collapse-duplicates", "PUT", Obj("m"), {},
                   {{"x-amz-meta-note", "  a   b  c  "},
                    {"X-Amz-Meta-Dup", "one"},
                    {"x-amz-meta-dup", "two"},
                    {"Content-Type", "application/octet-stream"},
                    {"If-None-Match", "*"},
                    {"Range", "bytes=0-9"}},
                   "body"));
  Case token = auth("session-token", "GET", Obj("secret/k"), {{"versionId", "null"}});
  token.token = true;
  c.push_back(token);
  Case unsig = auth("unsigned-payload", "PUT", Obj("u"), {}, {}, "unsigned body");
  unsig.unsigned_payload = true;
  c.push_back(unsig);
  Case vhost = auth("vhost-style", "PUT", "/key with space+plus", {}, {}, "v");
  vhost.host = VhostHost();
  c.push_back(vhost);

  // Real botocore client operations.
  auto client = [&](std::string name, std::string op, json params, std::string method,
                    std::string path, Pairs query, std::string body = "") {
    Case x;
    x.name = std::move(name);
    x.kind = "client";
    x.op = std::move(op);
    x.params = std::move(params);
    x.method = std::move(method);
    x.host = h;
    x.path = std::move(path);
    x.query = std::move(query);
    x.body = std::move(body);
    return x;
  };
  const std::string odd_key = "dir/a b+c=d~e/\xE1\x88\xB4/../x";
  c.push_back(client("client-put-object", "put_object",
                     {{"Bucket", kBucket},
                      {"Key", odd_key},
                      {"Body", "hello"},
                      {"ContentType", "application/octet-stream"},
                      {"Metadata", {{"note", "a  b"}}}},
                     "PUT", Obj(odd_key), {}, "hello"));
  c.push_back(client("client-get-object-range", "get_object",
                     {{"Bucket", kBucket}, {"Key", odd_key}, {"Range", "bytes=0-9"}}, "GET",
                     Obj(odd_key), {}));
  c.push_back(client("client-head-object", "head_object", {{"Bucket", kBucket}, {"Key", "a=b"}},
                     "HEAD", Obj("a=b"), {}));
  c.push_back(client("client-list-objects-v2", "list_objects_v2",
                     {{"Bucket", kBucket},
                      {"Prefix", "dir/a b+"},
                      {"Delimiter", "/"},
                      {"ContinuationToken", "1/a+b=c=="},
                      {"StartAfter", "x y"}},
                     "GET", std::string("/") + kBucket,
                     {{"list-type", "2"},
                      {"prefix", "dir/a b+"},
                      {"delimiter", "/"},
                      {"continuation-token", "1/a+b=c=="},
                      {"start-after", "x y"},
                      {"encoding-type", "url"}}));
  c.push_back(client("client-create-multipart-upload", "create_multipart_upload",
                     {{"Bucket", kBucket}, {"Key", "big file+1"}}, "POST", Obj("big file+1"),
                     {{"uploads", ""}}));
  c.push_back(client("client-upload-part", "upload_part",
                     {{"Bucket", kBucket},
                      {"Key", "big file+1"},
                      {"PartNumber", 3},
                      {"UploadId", "2~x+y/z="},
                      {"Body", "x"}},
                     "PUT", Obj("big file+1"), {{"partNumber", "3"}, {"uploadId", "2~x+y/z="}},
                     "x"));
  c.push_back(client("client-abort-multipart-upload", "abort_multipart_upload",
                     {{"Bucket", kBucket}, {"Key", "big file+1"}, {"UploadId", "2~x+y/z="}},
                     "DELETE", Obj("big file+1"), {{"uploadId", "2~x+y/z="}}));
  c.push_back(client("client-delete-object", "delete_object",
                     {{"Bucket", kBucket}, {"Key", "../..//x"}}, "DELETE", Obj("../..//x"), {}));
  Case ctoken = client("client-session-token", "get_object", {{"Bucket", kBucket}, {"Key", "k"}},
                       "GET", Obj("k"), {});
  ctoken.token = true;
  c.push_back(ctoken);
  Case cvhost = client("client-vhost-put", "put_object",
                       {{"Bucket", kBucket}, {"Key", "v key+1"}, {"Body", "vv"}}, "PUT", "/v key+1",
                       {}, "vv");
  cvhost.vhost = true;
  cvhost.host = VhostHost();
  c.push_back(cvhost);
  return c;
}

json ToJson(const Case& c) {
  json j;
  j["name"] = c.name;
  j["kind"] = c.kind;
  j["region"] = kRegion;
  j["key_id"] = kKeyId;
  j["secret"] = kSecret;
  j["token"] = c.token ? kToken : "";
  if (c.kind == "auth") {
    j["method"] = c.method;
    j["host"] = c.host;
    j["path"] = c.path;
    j["query"] = json::array();
    for (const auto& [k, v] : c.query) j["query"].push_back({k, v});
    j["headers"] = json::array();
    for (const auto& [k, v] : c.headers) j["headers"].push_back({k, v});
    j["body"] = c.body;
    j["unsigned"] = c.unsigned_payload;
  } else {
    j["op"] = c.op;
    j["params"] = c.params;
    j["vhost"] = c.vhost;
    j["endpoint"] = std::string("http://") + (c.vhost ? "localhost" : "127.0.0.1") + ":" + kPort;
  }
  return j;
}

std::string Lower(std::string s) {
  for (char& ch : s) {
    if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
  }
  return s;
}

// Our signature for a case; `extra_headers` are headers botocore signed besides the ones Sign()
// adds itself (client kind).
std::pair<std::string, std::string> OursFor(const Case& c, const Pairs& extra_headers,
                                            Request* out_req = nullptr) {
  Request r;
  r.method = c.method;
  r.host = c.host;
  r.path = c.path;
  r.query = c.query;
  r.headers = c.headers;
  for (const auto& h : extra_headers) r.headers.push_back(h);
  r.payload_sha256_hex = c.unsigned_payload ? std::string(kUnsignedPayload) : ToHex(Sha256(c.body));
  const Credentials creds{kKeyId, kSecret, c.token ? kToken : ""};
  const HeaderList headers = Sign(r, creds, kRegion, "s3", kDate);
  std::string authz;
  for (const auto& [n, v] : headers) {
    if (n == "Authorization") authz = v;
  }
  // The canonical request of what was signed (Sign() added its headers to r).
  std::erase_if(r.headers, [](const auto& h) { return h.first == "Authorization"; });
  std::string creq = CanonicalRequest(r);
  if (out_req != nullptr) *out_req = r;
  return {authz, creq};
}

// Finds a python3 that can import botocore; "" if none.
std::string FindPython(std::string* tried) {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("VMBACKUP_PYTHON"); env != nullptr && *env != '\0') {
    candidates.push_back(env);
  }
  candidates.push_back("python3");
  candidates.push_back("/usr/bin/python3");
  for (const auto& py : candidates) {
    *tried += " " + py;
    const std::string cmd = "'" + py + "' -c 'import botocore' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) return py;
  }
  return "";
}

// Splits "a=1&b&c=" into pairs, without decoding; a missing '=' means an empty value.
Pairs SplitQuery(const std::string& q) {
  Pairs out;
  size_t pos = 0;
  while (pos < q.size()) {
    size_t amp = q.find('&', pos);
    if (amp == std::string::npos) amp = q.size();
    std::string kv = q.substr(pos, amp - pos);
    size_t eq = kv.find('=');
    if (eq == std::string::npos) {
      out.emplace_back(kv, "");
    } else {
      out.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
    }
    pos = amp + 1;
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(SigV4BotocoreTest, MatchesBotocoreForAwkwardS3Requests) {
  std::string tried;
  const std::string python = FindPython(&tried);
  ASSERT_FALSE(python.empty())
      << "NO python3 WITH botocore FOUND (tried:" << tried
      << "): the differential SigV4 test cannot run. Install it (Debian: apt-get install "
         "python3-botocore) or point VMBACKUP_PYTHON at a python3 that has it.";

  vmbackup::testing::TempDir dir;
  const std::vector<Case> cases = Cases();
  json input = json::array();
  for (const auto& c : cases) input.push_back(ToJson(c));
  vmbackup::testing::WriteAll(dir.Sub("sign.py"), kScript);
  vmbackup::testing::WriteAll(dir.Sub("cases.json"), input.dump());
  const std::string cmd = "'" + python + "' '" + dir.Sub("sign.py") + "' '" +
                          dir.Sub("cases.json") + "' " + kDate + " 2>'" + dir.Sub("stderr") + "'";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr) << "popen failed: " << cmd;
  std::string output;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), p)) > 0;) output.append(buf, n);
  const int rc = pclose(p);
  ASSERT_EQ(rc, 0) << "botocore script failed (" << cmd << "):\n"
                   << vmbackup::testing::ReadAll(dir.Sub("stderr"));
  json result;
  ASSERT_NO_THROW(result = json::parse(output)) << output;
  const json& results = result["results"];
  ASSERT_EQ(results.size(), cases.size());

  int matched = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const json& r = results[i];
    SCOPED_TRACE("case " + c.name);
    ASSERT_EQ(r["name"].get<std::string>(), c.name);
    Pairs extra;
    if (c.kind == "client") {
      for (const auto& h : r["signed_headers"]) {
        const std::string n = Lower(h[0].get<std::string>());
        if (n == "host" || n == "x-amz-date" || n == "x-amz-content-sha256" ||
            n == "x-amz-security-token") {
          continue;
        }
        extra.emplace_back(n, h[1].get<std::string>());
      }
    }
    Request signed_req;
    const auto [authz, creq] = OursFor(c, extra, &signed_req);
    bool ok = true;
    ok &= authz == r["authorization"].get<std::string>();
    EXPECT_EQ(creq, r["canonical_request"].get<std::string>());
    EXPECT_EQ(authz, r["authorization"].get<std::string>());
    if (c.kind == "auth") {
      // The same request with the query inside the URL ("?uploads" without '=').
      ok &= authz == r["authorization_url_query"].get<std::string>();
      EXPECT_EQ(creq, r["canonical_request_url_query"].get<std::string>());
      EXPECT_EQ(authz, r["authorization_url_query"].get<std::string>());
    } else {
      // What botocore sends is what we would send: same host, path and query parameters.
      const std::string url = r["url"].get<std::string>();
      const std::string prefix = "http://" + c.host;
      ASSERT_EQ(url.compare(0, prefix.size(), prefix), 0) << url;
      std::string rest = url.substr(prefix.size()), query;
      if (size_t q = rest.find('?'); q != std::string::npos) {
        query = rest.substr(q + 1);
        rest.resize(q);
      }
      ok &= rest == CanonicalUri(signed_req);
      EXPECT_EQ(rest, CanonicalUri(signed_req));
      EXPECT_EQ(SplitQuery(query), SplitQuery(CanonicalQueryString(signed_req)));
    }
    if (ok) ++matched;
  }
  std::printf("[ sigv4    ] botocore %s (%s): %d of %d S3 requests signed identically\n",
              result["botocore_version"].get<std::string>().c_str(), python.c_str(), matched,
              static_cast<int>(cases.size()));
  EXPECT_EQ(matched, static_cast<int>(cases.size()));
}

}  // namespace
}  // namespace vmbackup::internal::s3
