// SIGINT/SIGTERM handling for vmbackupctl.
//
// InstallSignalHandling() blocks both signals in the calling thread (call it first in main, before
// any thread exists, so every library thread inherits the mask) and starts a thread that waits for
// them with sigwait(). On the first signal the currently registered cancel hook runs (it calls
// Cancel() on the running job, which then ends with kCancelled); with no hook registered the
// process exits at once with the "cancelled" exit code. A second signal always exits at once.
//
// Thread-safety: CancelScope may be created on any thread; hooks run on the signal thread, never
// concurrently with the scope's destructor.
#ifndef VMBACKUP_TOOLS_CANCEL_H_
#define VMBACKUP_TOOLS_CANCEL_H_

#include <functional>

namespace vmbackupctl {

void InstallSignalHandling();

// True once SIGINT or SIGTERM arrived.
bool CancelRequested();

// Registers `hook` for its lifetime. If a signal already arrived, the hook runs at once.
class CancelScope {
 public:
  explicit CancelScope(std::function<void()> hook);
  ~CancelScope();
  CancelScope(const CancelScope&) = delete;
  CancelScope& operator=(const CancelScope&) = delete;
};

}  // namespace vmbackupctl

#endif  // VMBACKUP_TOOLS_CANCEL_H_
