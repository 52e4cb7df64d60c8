// S3Store: an ObjectStore on an S3 bucket (AWS, Ceph RGW, MinIO, ...) over libcurl with our own
// SigV4 signing. Path-style or virtual-hosted-style addressing, optional key prefix, custom CA,
// bounded retries with exponential backoff and jitter, multipart upload for large objects,
// DeleteObjects in batches of 1000.
//
// Every answer is untrusted (issue #9): bodies are bounded by what was asked (see http.h), a
// whole-object Get above kMaxWholeObjectRead is kDataLoss naming the object, a ranged Get must
// get exactly its range (Content-Range checked; a 200 at a non-zero offset is kDataLoss), and all
// XML and numbers go through s3_xml.h (malformed: kDataLoss naming the field or key).
//
// Create-if-absent (PutOptions::if_absent) is a PUT with If-None-Match: *. Before the first one a
// store probes once that the server honours the header; if it does not, every if_absent Put is
// kFailedPrecondition (and never written). A 412 is kAlreadyExists, except after a retried
// attempt of the same call: then the object is read back and the Put succeeds when it holds
// exactly the bytes put (the earlier attempt created it and its answer was lost). Above the
// multipart threshold (64 MiB) if_absent is a HEAD check before the upload, which is racy.
//
// See docs/s3.md. Thread-safe.
#ifndef VMBACKUP_STORE_S3_S3_STORE_H_
#define VMBACKUP_STORE_S3_S3_STORE_H_

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/retry.h"
#include "store/object_store.h"
#include "store/s3/http.h"

namespace vmbackup::internal {

// What an S3 store needs, resolved from a target's setting and options by target/ (the store
// knows nothing of TargetConfig). Fields are named after the setting's fields they come from.
struct S3StoreOptions {
  std::string endpoint;              // "https://host[:port]"; "" = AWS S3 in `region`
  std::string bucket;                // bucketName
  std::string region = "us-east-1";  // bucketRegion
  // accessKeyId / secretAccessKey; both empty: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
  // AWS_SESSION_TOKEN from the environment.
  std::string access_key_id, secret_access_key;
  std::string ca_pem;  // cert: extra trusted CA certificates
  std::string prefix;  // key prefix inside the bucket, "" or without a trailing '/'
  bool virtual_hosted_style = false;
  bool allow_insecure_http = false;  // allowInsecureHttp
  bool verify_tls = true;            // false only for tests against throwaway servers
  int max_connections = 16;          // requests in flight at once
  RetryPolicy retry;                 // transient failures, deadline per operation
};

// OK unless `endpoint` is a plain http:// URL and !allow_insecure_http: then kInvalidArgument
// naming the setting's field 'allowInsecureHttp' (ParseTargetConfig and OpenS3Store both refuse
// such a setting).
Status CheckS3EndpointIsSecure(std::string_view endpoint, bool allow_insecure_http);

// Fault injection FOR TESTS ONLY: hooks that see every attempt of every request of one store.
// They run on the thread that sends the attempt (any thread) and on the runtime's io thread, so
// they must be thread-safe; they must not block.
struct S3TestHooks {
  using Headers = std::vector<std::pair<std::string, std::string>>;
  // Before an attempt is signed: may change the headers that are then signed and sent.
  // `key` is the object key with the store's prefix ("" for the bucket).
  std::function<void(const std::string& method, const std::string& key, Headers* headers)>
      before_sign;
  // After an attempt completed, before the store looks at the answer: may change it (for example
  // turn a 200 into a connection reset, as if the answer had been lost after the server acted).
  std::function<void(const std::string& method, const std::string& key, const Headers& headers,
                     http::Response* response)>
      after_response;
};

// Opens the bucket and checks that it answers (a one-key listing, retried for at most
// kConnectDeadline). Returns kInvalidArgument for a bad endpoint (an http:// one without
// allow_insecure_http, see CheckS3EndpointIsSecure) or missing credentials, kPermissionDenied for
// rejected credentials (naming the S3 error code and request id), kNotFound for a missing bucket,
// kUnavailable when the server cannot be reached. `hooks`: for tests only.
StatusOr<std::unique_ptr<ObjectStore>> OpenS3Store(const S3StoreOptions& options,
                                                   std::shared_ptr<Runtime> runtime,
                                                   S3TestHooks hooks = {});

}  // namespace vmbackup::internal

#endif  // VMBACKUP_STORE_S3_S3_STORE_H_
