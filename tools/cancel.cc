#include "cancel.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>

#include "cli.h"

namespace vmbackupctl {
namespace {

// Leaked on purpose: the signal thread may still touch them while static destructors run.
std::mutex* g_mu = new std::mutex;
std::function<void()>* g_hook = new std::function<void()>;
std::atomic<bool> g_requested{false};

void WriteStderr(const char* msg) {
  ssize_t r = ::write(STDERR_FILENO, msg, std::strlen(msg));
  (void)r;
}

void SignalLoop(sigset_t set) {
  int count = 0;
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    ++count;
    g_requested.store(true);
    if (count > 1) {
      WriteStderr("\nvmbackupctl: interrupted again, exiting now\n");
      ::_exit(kExitCancelled);
    }
    std::lock_guard<std::mutex> lock(*g_mu);
    if (*g_hook) {
      WriteStderr("\nvmbackupctl: cancelling (press Ctrl-C again to exit at once)\n");
      (*g_hook)();
    } else {
      WriteStderr("\nvmbackupctl: interrupted\n");
      ::_exit(kExitCancelled);
    }
  }
}

}  // namespace

void InstallSignalHandling() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread(SignalLoop, set).detach();
}

bool CancelRequested() { return g_requested.load(); }

CancelScope::CancelScope(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(*g_mu);
  *g_hook = std::move(hook);
  if (g_requested.load() && *g_hook) (*g_hook)();
}

CancelScope::~CancelScope() {
  std::lock_guard<std::mutex> lock(*g_mu);
  *g_hook = nullptr;
}

}  // namespace vmbackupctl
