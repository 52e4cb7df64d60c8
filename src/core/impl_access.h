// ImplAccess: the library's own door to the private `Impl` of its public classes (Runtime,
// BackupTarget, BackupJob, RestorePlan, VolumeSnapshot, VolumeSnapshotter). Each of them names
// `internal::ImplAccess` as a friend and keeps `Impl` and `impl()` private, so a host program sees
// neither; code inside the library (and its own tests) reaches them through ImplOf().
#ifndef VMBACKUP_CORE_IMPL_ACCESS_H_
#define VMBACKUP_CORE_IMPL_ACCESS_H_

#include <memory>

#include "vmbackup/runtime.h"

namespace vmbackup::internal {

struct ImplAccess {
  template <typename T>
  static auto* Get(const T& object) {
    return object.impl();
  }
  // The public object around `impl` (for library code that builds one the way its Open does,
  // e.g. a target over a test's in-memory store).
  template <typename T, typename I>
  static std::shared_ptr<T> Wrap(std::unique_ptr<I> impl) {
    return std::shared_ptr<T>(new T(std::move(impl)));
  }
  // Runtime's private Impl type, for code that has to name it (a member alias: its access is
  // checked here, where it is allowed).
  using RuntimeImpl = Runtime::Impl;
};

// The Impl behind `object` (never null for an object the library created).
template <typename T>
auto* ImplOf(const T& object) {
  return ImplAccess::Get(object);
}
template <typename T>
auto* ImplOf(const std::shared_ptr<T>& object) {
  return ImplAccess::Get(*object);
}

// Runtime::Impl, named (see core/runtime.h).
using RuntimeImpl = ImplAccess::RuntimeImpl;

}  // namespace vmbackup::internal

#endif  // VMBACKUP_CORE_IMPL_ACCESS_H_
