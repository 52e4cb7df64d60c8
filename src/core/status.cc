// Status implementation and the errno → Status mapping used by every store.
#include "vmbackup/status.h"

#include <cerrno>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "core/errors.h"

namespace vmbackup {

const char* StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "OK";
    case StatusCode::kCancelled:
      return "CANCELLED";
    case StatusCode::kUnknown:
      return "UNKNOWN";
    case StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case StatusCode::kNotFound:
      return "NOT_FOUND";
    case StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case StatusCode::kAborted:
      return "ABORTED";
    case StatusCode::kOutOfRange:
      return "OUT_OF_RANGE";
    case StatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case StatusCode::kInternal:
      return "INTERNAL";
    case StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case StatusCode::kDataLoss:
      return "DATA_LOSS";
    case StatusCode::kUnauthenticated:
      return "UNAUTHENTICATED";
  }
  return "UNKNOWN_CODE";
}

Status::Status(StatusCode code, std::string_view message)
    : code_(code), message_(code == StatusCode::kOk ? std::string() : std::string(message)) {}

bool Status::retryable() const {
  switch (code_) {
    case StatusCode::kUnavailable:
    case StatusCode::kDeadlineExceeded:
    case StatusCode::kAborted:
    case StatusCode::kResourceExhausted:
      return true;
    default:
      return false;
  }
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string s = StatusCodeName(code_);
  s += ": ";
  s += message_;
  return s;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  std::string m(context);
  m += ": ";
  m += message_;
  return Status(code_, m);
}

#define VMB_DEFINE_ERROR(Name, Code) \
  Status Name(std::string_view message) { return Status(StatusCode::Code, message); }
VMB_DEFINE_ERROR(CancelledError, kCancelled)
VMB_DEFINE_ERROR(UnknownError, kUnknown)
VMB_DEFINE_ERROR(InvalidArgumentError, kInvalidArgument)
VMB_DEFINE_ERROR(DeadlineExceededError, kDeadlineExceeded)
VMB_DEFINE_ERROR(NotFoundError, kNotFound)
VMB_DEFINE_ERROR(AlreadyExistsError, kAlreadyExists)
VMB_DEFINE_ERROR(PermissionDeniedError, kPermissionDenied)
VMB_DEFINE_ERROR(ResourceExhaustedError, kResourceExhausted)
VMB_DEFINE_ERROR(FailedPreconditionError, kFailedPrecondition)
VMB_DEFINE_ERROR(AbortedError, kAborted)
VMB_DEFINE_ERROR(OutOfRangeError, kOutOfRange)
VMB_DEFINE_ERROR(UnimplementedError, kUnimplemented)
VMB_DEFINE_ERROR(InternalError, kInternal)
VMB_DEFINE_ERROR(UnavailableError, kUnavailable)
VMB_DEFINE_ERROR(DataLossError, kDataLoss)
VMB_DEFINE_ERROR(UnauthenticatedError, kUnauthenticated)
#undef VMB_DEFINE_ERROR

namespace internal {

Status ErrnoToStatus(int err, std::string_view what) {
  std::string msg(what);
  msg += ": ";
  msg += std::strerror(err);
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return Status(StatusCode::kNotFound, msg);
    case EEXIST:
      return Status(StatusCode::kAlreadyExists, msg);
    case EACCES:
    case EPERM:
    case EROFS:
      return Status(StatusCode::kPermissionDenied, msg);
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
    case EMFILE:
    case ENFILE:
    case ENOMEM:
      return Status(StatusCode::kResourceExhausted, msg);
    case EINVAL:
    case EISDIR:
    case ENAMETOOLONG:
      return Status(StatusCode::kInvalidArgument, msg);
    case EINTR:
    case EAGAIN:
    case ETIMEDOUT:
    case ECONNREFUSED:
    case ECONNRESET:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ESTALE:
      return Status(StatusCode::kUnavailable, msg);
    case EIO:
      return Status(StatusCode::kUnavailable, msg + " (I/O error)");
    default:
      return Status(StatusCode::kInternal, msg);
  }
}

Status CurrentExceptionToStatus(std::string_view what) {
  try {
    throw;
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(std::string(what) + ": out of memory");
  } catch (const std::exception& e) {
    return InternalError(std::string(what) + ": unexpected exception: " + e.what());
  } catch (...) {
    return InternalError(std::string(what) + ": unexpected exception");
  }
}

}  // namespace internal
}  // namespace vmbackup
