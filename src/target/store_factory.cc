// Store options from target options (see store_factory.h).
#include "target/store_factory.h"

#include "core/errors.h"

namespace vmbackup::internal {

StatusOr<RetryPolicy> RetryPolicyOf(const TargetOptions& options) {
  if (options.retry_timeout_seconds < 0)
    return InvalidArgumentError("TargetOptions.retry_timeout_seconds must not be negative");
  return RetryPolicyWithDeadlineSeconds(options.retry_timeout_seconds);
}

namespace {

Status CheckRequestsInFlight(const TargetOptions& options) {
  if (options.max_requests_in_flight < 0)
    return InvalidArgumentError("TargetOptions.max_requests_in_flight must not be negative");
  return Status::Ok();
}

}  // namespace

StatusOr<S3StoreOptions> S3StoreOptionsOf(const TargetConfig& config,
                                          const TargetOptions& options) {
  VMB_RETURN_IF_ERROR(CheckRequestsInFlight(options));
  S3StoreOptions o;
  VMB_ASSIGN_OR_RETURN(o.retry, RetryPolicyOf(options));
  o.endpoint = config.endpoint;
  o.bucket = config.bucket_name;
  o.region = config.bucket_region.empty() ? "us-east-1" : config.bucket_region;
  o.access_key_id = config.access_key_id;
  o.secret_access_key = config.secret_access_key;
  o.ca_pem = config.cert;
  o.prefix = config.prefix;
  o.virtual_hosted_style = config.virtual_hosted_style;
  o.allow_insecure_http = config.allow_insecure_http;
  o.verify_tls = !options.insecure_skip_tls_verify_for_tests_only;
  o.max_connections = options.max_requests_in_flight > 0 ? options.max_requests_in_flight : 16;
  return o;
}

StatusOr<NfsStoreOptions> NfsStoreOptionsOf(const TargetConfig& config,
                                            const TargetOptions& options) {
  VMB_RETURN_IF_ERROR(CheckRequestsInFlight(options));
  NfsStoreOptions o;
  VMB_ASSIGN_OR_RETURN(o.retry, RetryPolicyOf(options));
  o.endpoint = config.endpoint;
  o.prefix = config.prefix;
  o.connections = options.max_requests_in_flight > 0 ? options.max_requests_in_flight : 4;
  return o;
}

StatusOr<std::unique_ptr<ObjectStore>> OpenS3Store(const TargetConfig& config,
                                                   const TargetOptions& options,
                                                   std::shared_ptr<Runtime> runtime,
                                                   S3TestHooks hooks) {
  VMB_ASSIGN_OR_RETURN(S3StoreOptions o, S3StoreOptionsOf(config, options));
  return OpenS3Store(o, std::move(runtime), std::move(hooks));
}

StatusOr<std::unique_ptr<ObjectStore>> OpenNfsStore(const TargetConfig& config,
                                                    const TargetOptions& options,
                                                    std::shared_ptr<Runtime> runtime) {
  VMB_ASSIGN_OR_RETURN(NfsStoreOptions o, NfsStoreOptionsOf(config, options));
  return OpenNfsStore(o, std::move(runtime));
}

}  // namespace vmbackup::internal
