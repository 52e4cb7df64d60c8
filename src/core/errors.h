// Internal helpers for building Status values: errno mapping and early-return macros.
// Thread-safe (pure functions).
#ifndef VMBACKUP_CORE_ERRORS_H_
#define VMBACKUP_CORE_ERRORS_H_

#include <string_view>

#include "vmbackup/status.h"

namespace vmbackup::internal {

// Maps an errno value to the Status code a caller can act on (ENOENT → kNotFound, ENOSPC →
// kResourceExhausted, EACCES/EROFS → kPermissionDenied, EIO/ETIMEDOUT → kUnavailable, ...), with
// the message "`what`: strerror(err)".
Status ErrnoToStatus(int err, std::string_view what);

// Inside a catch block: the exception being handled as a Status naming `what` (std::bad_alloc →
// kResourceExhausted "out of memory", any other → kInternal with its what()). Every thread the
// library runs code on converts exceptions with it, so none reaches std::terminate.
Status CurrentExceptionToStatus(std::string_view what);

// Runs `f` (returning Status or StatusOr<T>) and turns an exception escaping it into a Status, for
// the public entry points that run on the caller's thread: no exception crosses the API.
template <typename F>
auto GuardExceptions(std::string_view what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (...) {
    return CurrentExceptionToStatus(what);
  }
}

}  // namespace vmbackup::internal

#define VMB_CONCAT_INNER(a, b) a##b
#define VMB_CONCAT(a, b) VMB_CONCAT_INNER(a, b)

// Returns from the current function if `expr` (a Status) is not OK.
#define VMB_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::vmbackup::Status vmb_status_ = (expr);   \
    if (!vmb_status_.ok()) return vmb_status_; \
  } while (0)

// `lhs = value of expr` (a StatusOr<T>), or returns its status.
#define VMB_ASSIGN_OR_RETURN(lhs, expr) \
  VMB_ASSIGN_OR_RETURN_IMPL(VMB_CONCAT(vmb_statusor_, __LINE__), lhs, expr)
#define VMB_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return std::move(tmp).status();  \
  lhs = std::move(tmp).value()

#endif  // VMBACKUP_CORE_ERRORS_H_
