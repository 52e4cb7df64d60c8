// Status and StatusOr<T>: the error model of the vmbackup C++ API.
//
// Every fallible public call returns a Status (or a StatusOr<T> carrying a value on success). The
// codes are Abseil's canonical set, with the same meaning for retries:
//   kUnavailable        transient: the target could not be reached or answered "try later"; retry.
//   kAborted            a concurrency conflict (e.g. a create-if-absent lost a race); retry the
//   sequence. kFailedPrecondition the system is not in a state for the call (VM running, file
//   exists); fix it first. kDataLoss           stored data is corrupt (digest or checksum
//   mismatch); do not retry. kCancelled          the caller cancelled (progress callback returned
//   false, Cancel()).
// Codes are stable: their numbers never change, and the C ABI mirrors them as negative integers.
//
// Thread-safety: Status and StatusOr are values; distinct objects may be used from any thread, one
// object from one thread at a time (like std::string).
#ifndef VMBACKUP_STATUS_H_
#define VMBACKUP_STATUS_H_

#include <cassert>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "vmbackup/export.h"

namespace vmbackup {

// Stable numeric codes (same numbers as absl::StatusCode and google.rpc.Code).
enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

// Returns the upper-case name of `code` ("NOT_FOUND"), or "UNKNOWN_CODE" for a value outside the
// enum.
VMBACKUP_EXPORT const char* StatusCodeName(StatusCode code);

class [[nodiscard]] VMBACKUP_EXPORT Status {
 public:
  // An OK status.
  Status() = default;
  Status(StatusCode code, std::string_view message);

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  // The human-readable message; empty for OK. Never contains secrets (keys, passwords).
  const std::string& message() const { return message_; }
  // True for codes a caller may retry unchanged after a delay (kUnavailable, kDeadlineExceeded,
  // kAborted, kResourceExhausted).
  bool retryable() const;

  // "NOT_FOUND: message", or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "`context`: message"; OK stays OK.
  Status WithContext(std::string_view context) const;

  // Ignores the status on purpose (documents the intent where a failure does not matter).
  void IgnoreError() const {}

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// Convenience constructors, one per code.
VMBACKUP_EXPORT Status CancelledError(std::string_view message);
VMBACKUP_EXPORT Status UnknownError(std::string_view message);
VMBACKUP_EXPORT Status InvalidArgumentError(std::string_view message);
VMBACKUP_EXPORT Status DeadlineExceededError(std::string_view message);
VMBACKUP_EXPORT Status NotFoundError(std::string_view message);
VMBACKUP_EXPORT Status AlreadyExistsError(std::string_view message);
VMBACKUP_EXPORT Status PermissionDeniedError(std::string_view message);
VMBACKUP_EXPORT Status ResourceExhaustedError(std::string_view message);
VMBACKUP_EXPORT Status FailedPreconditionError(std::string_view message);
VMBACKUP_EXPORT Status AbortedError(std::string_view message);
VMBACKUP_EXPORT Status OutOfRangeError(std::string_view message);
VMBACKUP_EXPORT Status UnimplementedError(std::string_view message);
VMBACKUP_EXPORT Status InternalError(std::string_view message);
VMBACKUP_EXPORT Status UnavailableError(std::string_view message);
VMBACKUP_EXPORT Status DataLossError(std::string_view message);
VMBACKUP_EXPORT Status UnauthenticatedError(std::string_view message);

// A value of type T or a non-OK Status.
// REQUIRES: a StatusOr is never constructed from an OK Status (that becomes kInternal).
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const T& value) : value_(value) {}             // NOLINT(runtime/explicit)
  StatusOr(T&& value) : value_(std::move(value)) {}       // NOLINT(runtime/explicit)
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT(runtime/explicit)
    if (status_.ok()) status_ = Status(StatusCode::kInternal, "StatusOr built from an OK status");
  }

  bool ok() const { return status_.ok(); }
  const Status& status() const& { return status_; }
  Status status() && { return std::move(status_); }

  // REQUIRES: ok(). Aborts otherwise (a programming error, never a runtime condition).
  const T& value() const& { return Checked(), *value_; }
  T& value() & { return Checked(), *value_; }
  T&& value() && { return Checked(), std::move(*value_); }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

 private:
  void Checked() const {
    if (!value_.has_value()) std::abort();
  }
  Status status_;
  std::optional<T> value_;
};

}  // namespace vmbackup

#endif  // VMBACKUP_STATUS_H_
