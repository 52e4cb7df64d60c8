// vmbackup._vmbackup: the pybind11 extension behind the `vmbackup` Python package.
//
// It wraps the C++ API (not the C ABI). Rules that keep it safe across threads:
//   - Every call that may block (target I/O, job creation, waiting) releases the GIL.
//   - Waiting for a job happens in slices of kWaitSlice with the GIL released; between slices the
//     main thread runs PyErr_CheckSignals(), so Ctrl-C cancels the job and raises
//     KeyboardInterrupt.
//   - Progress callbacks run on library threads and take the GIL before touching Python. An
//   exception
//     raised by a callback cancels the job and is re-raised by wait() instead of CancelledError.
//   - C++ jobs are destroyed with the GIL released (their destructors wait for library threads that
//   may
//     need the GIL for a callback); Python objects held by C++ (callbacks) are released with the
//     GIL.
//   - At interpreter exit an atexit hook cancels every live job and waits for it, and callbacks
//   stop
//     touching Python once shutdown has begun.
// Statuses become the vmbackup.Error hierarchy defined in vmbackup/_errors.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <Python.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "vmbackup/vmbackup.h"

namespace py = pybind11;
using namespace pybind11::literals;  // NOLINT(build/namespaces)

namespace vmbackup {
namespace python {
namespace {

constexpr std::chrono::milliseconds kWaitSlice(100);

// ---- interpreter state --------------------------------------------------------------------------

// Set by the atexit hook: from then on callbacks no longer touch Python.
std::atomic<bool> g_shutting_down{false};

bool Finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

bool PythonUnusable() { return g_shutting_down.load() || Finalizing() || !Py_IsInitialized(); }

// The thread that imported the module (the main thread, in practice): it runs the atexit hooks and
// the finalization itself, so it must never park below.
std::thread::id g_import_thread;

// Takes the GIL back after WithoutGil. Once the interpreter is finalizing, CPython ends any thread
// that asks for the GIL with pthread_exit (a forced unwind), and once finalization is over the
// thread's state is freed (taking the GIL with it crashed: SIGSEGV, seen twice in loaded CI runs).
// Only daemon threads can get here after the atexit hook (the other threads were joined before
// it), and the process is about to exit, so such a thread parks from the moment the hook began
// instead of taking part in the shutdown.
void Reacquire(PyThreadState* state) {
  for (;;) {
    const bool exiting = Finalizing() || !Py_IsInitialized() ||
                         (g_shutting_down.load() && std::this_thread::get_id() != g_import_thread);
    if (!exiting) break;
    std::this_thread::sleep_for(std::chrono::hours(1));
  }
  PyEval_RestoreThread(state);
}

// Runs `fn` with the GIL released and returns its result. Unlike py::gil_scoped_release, the GIL is
// taken back by a plain call rather than a destructor, so a forced unwind (see Reacquire) never
// leaves a noexcept destructor (which would std::terminate). REQUIRES: GIL held.
template <typename F>
auto WithoutGil(F&& fn) -> decltype(fn()) {
  PyThreadState* state = PyEval_SaveThread();
  if constexpr (std::is_void_v<decltype(fn())>) {
    try {
      fn();
    } catch (...) {
      Reacquire(state);
      throw;
    }
    Reacquire(state);
  } else {
    std::optional<decltype(fn())> result;
    try {
      result.emplace(fn());
    } catch (...) {
      Reacquire(state);
      throw;
    }
    Reacquire(state);
    return std::move(*result);
  }
}

// ---- errors -------------------------------------------------------------------------------------

// code -> exception class, from vmbackup._errors._BY_CODE. Leaked on purpose: never destroyed after
// the interpreter.
py::dict* g_error_classes = nullptr;
py::object* g_error_base = nullptr;

// The Python exception instance for a non-OK `status`. REQUIRES: GIL held.
py::object ErrorObject(const Status& status) {
  py::object cls = *g_error_base;
  py::int_ code(static_cast<int>(status.code()));
  if (g_error_classes->contains(code)) cls = (*g_error_classes)[code];
  return cls(status.message(), code);
}

// Raises the Python exception for a non-OK `status`. REQUIRES: GIL held.
[[noreturn]] void Raise(const Status& status) {
  py::object exc = ErrorObject(status);
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
  throw py::error_already_set();
}

void Check(const Status& status) {
  if (!status.ok()) Raise(status);
}

template <typename T>
T Check(StatusOr<T> value) {
  if (!value.ok()) Raise(value.status());
  return std::move(value).value();
}

// ---- conversions --------------------------------------------------------------------------------

// str or os.PathLike -> std::string.
// A secret given as str (UTF-8) or bytes; empty for None.
// An explicitly empty secret is an error, never "no secret" (which would open an unencrypted
// repository and write plaintext to it).
std::string SecretBytes(const py::object& v, const char* what) {
  if (v.is_none()) return "";
  std::string s;
  if (py::isinstance<py::bytes>(v) || py::isinstance<py::str>(v))
    s = v.cast<std::string>();
  else
    throw py::type_error(std::string(what) + " must be str or bytes");
  if (s.empty()) throw py::value_error(std::string(what) + " must not be empty");
  return s;
}

std::string FsPath(py::handle path) {
  return py::str(py::module_::import("os").attr("fsdecode")(path)).cast<std::string>();
}

// A JSON document given as str, or any JSON-serializable object (dict, list) -> JSON text.
std::string ToJsonText(py::handle value) {
  if (py::isinstance<py::str>(value)) return value.cast<std::string>();
  return py::module_::import("json").attr("dumps")(value).cast<std::string>();
}

// Volumes as a mapping {name: path} or an iterable of (name, path) pairs.
std::vector<std::pair<std::string, std::string>> ToPairs(py::handle volumes, const char* field) {
  std::vector<std::pair<std::string, std::string>> out;
  if (volumes.is_none()) return out;
  py::object items = py::reinterpret_borrow<py::object>(volumes);
  if (py::isinstance<py::dict>(volumes) || py::hasattr(volumes, "items")) {
    items = volumes.attr("items")();
  }
  size_t i = 0;
  for (py::handle item : py::iter(items)) {
    py::tuple pair;
    if (py::isinstance<py::tuple>(item) || py::isinstance<py::list>(item)) {
      pair = py::tuple(py::reinterpret_borrow<py::object>(item));
    }
    if (pair.size() != 2) {
      Raise(InvalidArgumentError(std::string(field) + "[" + std::to_string(i) +
                                 "]: expected a (name, path) pair"));
    }
    out.emplace_back(py::str(pair[0]).cast<std::string>(), FsPath(pair[1]));
    ++i;
  }
  return out;
}

// ---- progress callbacks -------------------------------------------------------------------------

// Drops Python references held by C++ objects that may be destroyed on any thread: takes the GIL
// to release them, or leaks them once the interpreter is shutting down.
template <typename... Objects>
void DropReferences(Objects&... objects) {
  if (PythonUnusable()) {
    (objects.release(), ...);
    return;
  }
  py::gil_scoped_acquire gil;
  ((objects = py::object()), ...);
}

// A Python freeze or thaw hook (a callable without arguments), called on a library thread.
class PyHook {
 public:
  PyHook(py::object fn, std::string what) : fn_(std::move(fn)), what_(std::move(what)) {}
  PyHook(const PyHook&) = delete;
  PyHook& operator=(const PyHook&) = delete;
  ~PyHook() { DropReferences(fn_); }
  // OK when the callable returned anything but False; kFailedPrecondition naming what it raised.
  Status Call() noexcept {
    if (PythonUnusable())
      return FailedPreconditionError("the " + what_ + " hook: the interpreter is exiting");
    try {
      py::gil_scoped_acquire gil;
      try {
        py::object result = fn_();
        if (result.ptr() == Py_False)
          return FailedPreconditionError("the " + what_ + " hook returned False");
        return Status::Ok();
      } catch (py::error_already_set& e) {
        return FailedPreconditionError("the " + what_ + " hook raised " + e.what());
      }
    } catch (const std::exception& e) {
      return FailedPreconditionError("the " + what_ + " hook: " + e.what());
    } catch (...) {
      return FailedPreconditionError("the " + what_ + " hook failed");
    }
  }

 private:
  py::object fn_;
  std::string what_;
};

std::function<Status()> MakeHook(const py::object& fn, const char* what) {
  if (fn.is_none()) return nullptr;
  if (!PyCallable_Check(fn.ptr()))
    Raise(InvalidArgumentError(std::string(what) + ": must be callable or None"));
  auto hook = std::make_shared<PyHook>(fn, what);
  return [hook]() { return hook->Call(); };
}

// A Python progress callable and the exception it raised, shared by the job's C++ callback.
class PyProgress {
 public:
  explicit PyProgress(py::object fn) : fn_(std::move(fn)) {}
  PyProgress(const PyProgress&) = delete;
  PyProgress& operator=(const PyProgress&) = delete;

  // May run on any thread (DropReferences).
  ~PyProgress() { DropReferences(fn_, error_); }

  // Runs on a library thread. Returns false (cancel) when the callable returns False or raises.
  bool Call(const Progress& progress) noexcept {
    if (PythonUnusable()) return false;
    try {
      py::gil_scoped_acquire gil;
      if (PythonUnusable()) return false;
      if (error_) return false;
      try {
        py::object result = fn_(progress);
        return !(result.ptr() == Py_False);
      } catch (py::error_already_set& e) {
        error_ = e.value();
        // Keep the callback's frames: wait() re-raises this instance in another thread.
        if (e.trace()) PyException_SetTraceback(error_.ptr(), e.trace().ptr());
        return false;
      } catch (const std::exception& e) {
        error_ = py::module_::import("builtins").attr("RuntimeError")(e.what());
        return false;
      }
    } catch (...) {
      return false;
    }
  }

  // The exception the callback raised, or None. REQUIRES: GIL held.
  py::object error() const { return error_ ? error_ : py::none(); }

 private:
  py::object fn_;
  py::object error_;  // the exception instance raised by fn_, once
};

// A Python completion callback: fn(None) when the job succeeded, fn(error) with the VmbackupError
// instance when it failed. What fn raises is reported as unraisable (sys.unraisablehook), as
// Python does for callbacks it cannot return an error from.
class PyDone {
 public:
  explicit PyDone(py::object fn) : fn_(std::move(fn)) {}
  PyDone(const PyDone&) = delete;
  PyDone& operator=(const PyDone&) = delete;

  // May run on any thread (DropReferences).
  ~PyDone() { DropReferences(fn_); }

  // Runs on a library thread or the registering one; takes the GIL.
  void Call(const Status& status) noexcept {
    if (PythonUnusable()) return;
    try {
      py::gil_scoped_acquire gil;
      if (PythonUnusable()) return;
      try {
        fn_(status.ok() ? py::none() : ErrorObject(status));
      } catch (py::error_already_set& e) {
        e.discard_as_unraisable("vmbackup done callback");
      }
    } catch (...) {
    }
  }

 private:
  py::object fn_;
};

ProgressCallback MakeCallback(const std::shared_ptr<PyProgress>& state) {
  if (!state) return nullptr;
  return [state](const Progress& p) { return state->Call(p); };
}

// ---- jobs ---------------------------------------------------------------------------------------

class JobBase;

// Live jobs, so that the atexit hook can cancel them and wait.
std::mutex g_jobs_mu;
std::set<JobBase*> g_jobs;  // guarded by g_jobs_mu

// Registration locks g_jobs_mu only with the GIL released: the atexit hook holds g_jobs_mu while it
// waits for jobs whose callbacks may need the GIL.
class JobBase {
 public:
  JobBase() {
    if (PyGILState_Check()) {
      WithoutGil([this] { Register(); });
    } else {
      Register();
    }
  }
  virtual ~JobBase() = default;
  virtual void CancelJob() = 0;
  // Blocks (GIL released by the caller) until the job has ended, if it was started.
  virtual void WaitEnded() = 0;

 protected:
  // REQUIRES: GIL not held.
  void Unregister() {
    std::lock_guard<std::mutex> lock(g_jobs_mu);
    g_jobs.erase(this);
  }

 private:
  void Register() {
    std::lock_guard<std::mutex> lock(g_jobs_mu);
    g_jobs.insert(this);
  }
};

// A BackupJob or RestorePlan. Python waits in slices (Job::WaitFor, the GIL released) so that
// Ctrl-C is seen; several threads can wait at once; no thread of its own.
template <typename Job>
class PyJob : public JobBase {
 public:
  PyJob(std::unique_ptr<Job> job, std::shared_ptr<PyProgress> progress)
      : job_(std::move(job)), progress_(std::move(progress)) {}
  PyJob(const PyJob&) = delete;
  PyJob& operator=(const PyJob&) = delete;

  // Runs with the GIL held (Python object deallocation). Cancels a running job and waits for it
  // with the GIL released, because the job's threads may need the GIL to finish a callback.
  ~PyJob() override {
    if (PythonUnusable() || !PyGILState_Check()) {
      Unregister();
      Destroy();
    } else {
      WithoutGil([this] {
        Unregister();
        Destroy();
      });
    }
    // progress_ (Python references) is released here, with the GIL held.
  }

  // Starts the job; FailedPreconditionError if it was started before. REQUIRES: GIL held.
  void Start() { EnsureStarted(/*fail_if_started=*/true); }

  // Waits for the job (starting it if needed). Returns false if `timeout` (seconds) elapsed first.
  // Raises the job's error, the callback's exception, or KeyboardInterrupt (after cancelling the
  // job). REQUIRES: GIL held.
  bool Wait(std::optional<double> timeout) {
    EnsureStarted(/*fail_if_started=*/false);
    using Clock = std::chrono::steady_clock;
    const bool has_deadline = timeout.has_value();
    Clock::time_point deadline = Clock::now();
    if (has_deadline) {
      deadline += std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(std::max(0.0, *timeout)));
    }
    for (;;) {
      Clock::duration slice = std::chrono::duration_cast<Clock::duration>(kWaitSlice);
      if (has_deadline) {
        slice = std::max(Clock::duration::zero(), std::min(slice, deadline - Clock::now()));
      }
      std::optional<Status> status;
      status = WithoutGil([&] { return WaitFor(slice); });
      if (status) {
        py::object callback_error = progress_ ? progress_->error() : py::none();
        if (!callback_error.is_none()) {
          // PyErr_Restore steals the three references.
          PyObject* value = callback_error.inc_ref().ptr();
          PyObject* type = reinterpret_cast<PyObject*>(Py_TYPE(value));
          Py_INCREF(type);
          PyErr_Restore(type, value, PyException_GetTraceback(value));
          throw py::error_already_set();
        }
        Check(*status);
        return true;
      }
      if (PyErr_CheckSignals() != 0) {
        py::error_already_set interrupt;  // fetches (and clears) KeyboardInterrupt
        WithoutGil([this] {
          job_->Cancel();
          WaitFor(std::nullopt);
        });
        throw interrupt;
      }
      if (has_deadline && Clock::now() >= deadline) return false;
    }
  }

  void CancelJob() override { job_->Cancel(); }

  // Registers `fn` to be called once with None or the job's error when it ends. REQUIRES: GIL.
  void AddDoneCallback(py::object fn) {
    if (!PyCallable_Check(fn.ptr())) Raise(InvalidArgumentError("the callback is not callable"));
    auto done = std::make_shared<PyDone>(std::move(fn));
    WithoutGil([&] { job_->OnDone([done](const Status& st) { done->Call(st); }); });
  }

  void WaitEnded() override {
    bool started;
    {
      std::lock_guard<std::mutex> lock(start_mu_);
      started = started_;
    }
    if (started) WaitFor(std::nullopt);
  }

  bool done() {
    const JobState st = job_->state();
    return st == JobState::kReady || st == JobState::kError;
  }

  Job& job() { return *job_; }

 private:
  // Starts the job unless already started. start_mu_ is only taken with the GIL released (another
  // thread may hold it while it starts the job). REQUIRES: GIL held.
  void EnsureStarted(bool fail_if_started) {
    Status s;
    bool already = false;
    WithoutGil([&] {
      std::lock_guard<std::mutex> lock(start_mu_);
      already = started_;
      if (!already) {
        s = job_->Start();
        if (s.ok()) started_ = true;
      }
    });
    if (already && fail_if_started) Raise(FailedPreconditionError("the job was already started"));
    Check(s);
  }

  // Waits for the job's final status. REQUIRES: started; GIL not held.
  std::optional<Status> WaitFor(std::optional<std::chrono::steady_clock::duration> timeout) {
    if (timeout) return job_->WaitFor(std::chrono::ceil<std::chrono::milliseconds>(*timeout));
    return job_->Wait();
  }

  void Destroy() {
    job_->Cancel();
    job_.reset();  // the job's destructor waits for it to end
  }

  std::unique_ptr<Job> job_;
  std::shared_ptr<PyProgress> progress_;
  std::mutex start_mu_;
  bool started_ = false;  // guarded by start_mu_
};

using PyBackupJob = PyJob<BackupJob>;
using PyRestorePlan = PyJob<RestorePlan>;

void CancelAllJobsAtExit() {
  g_shutting_down = true;
  py::gil_scoped_release release;
  std::lock_guard<std::mutex> lock(g_jobs_mu);
  for (JobBase* job : g_jobs) job->CancelJob();
  for (JobBase* job : g_jobs) job->WaitEnded();
}

std::shared_ptr<PyProgress> MakeProgress(const py::object& progress) {
  if (progress.is_none()) return nullptr;
  if (!PyCallable_Check(progress.ptr())) {
    Raise(InvalidArgumentError("progress: must be callable or None"));
  }
  return std::make_shared<PyProgress>(progress);
}

// REQUIRES: GIL held.
std::unique_ptr<PyBackupJob> MakeBackupJob(
    std::shared_ptr<BackupTarget> target, const std::optional<std::string>& name,
    const py::object& vm_dir, const py::object& volumes, const py::object& vm_metadata,
    const std::optional<std::string>& parent, const py::object& progress, int progress_interval_ms,
    bool use_fingerprints, const py::object& freeze, const py::object& thaw, bool thaw_early,
    const std::optional<std::string>& vm_state, bool allow_inconsistent, double freeze_timeout) {
  if (!target) Raise(InvalidArgumentError("target: must not be None"));
  if (progress_interval_ms < 0) {
    Raise(InvalidArgumentError("progress_interval_ms: must not be negative"));
  }
  BackupSpec spec;
  if (!vm_dir.is_none()) {
    if (!volumes.is_none()) Raise(InvalidArgumentError("volumes: cannot be combined with vm_dir"));
    if (!vm_metadata.is_none()) {
      Raise(InvalidArgumentError("vm_metadata: cannot be combined with vm_dir"));
    }
    std::string dir = FsPath(vm_dir);
    StatusOr<BackupSpec> from_dir = WithoutGil([&] { return BackupSpecFromVmDirectory(dir); });
    spec = Check(std::move(from_dir));
  } else {
    for (auto& [volume_name, location] : ToPairs(volumes, "volumes"))
      spec.volumes.push_back(Check(ParseVolumeLocation(volume_name, location)));
    if (!vm_metadata.is_none()) spec.vm_metadata_json = ToJsonText(vm_metadata);
  }
  if (name) spec.name = *name;
  if (parent) spec.parent = *parent;
  spec.use_fingerprints = use_fingerprints;
  spec.snapshot.freeze = MakeHook(freeze, "freeze");
  spec.snapshot.thaw = MakeHook(thaw, "thaw");
  spec.snapshot.thaw_after_backup = !thaw_early;
  if (vm_state) {
    if (*vm_state == "running")
      spec.snapshot.vm_state = SnapshotOptions::VmState::kRunning;
    else if (*vm_state == "stopped")
      spec.snapshot.vm_state = SnapshotOptions::VmState::kStopped;
    else if (*vm_state != "unknown")
      Raise(InvalidArgumentError(
          std::string("vm_state: must be 'running', 'stopped', 'unknown' or None, not '") +
          *vm_state + "'"));
  }
  spec.snapshot.allow_inconsistent = allow_inconsistent;
  if (!(freeze_timeout >= 0 && freeze_timeout <= 86400))
    Raise(InvalidArgumentError("freeze_timeout: must be 0 (none) to 86400 seconds"));
  spec.snapshot.freeze_timeout_ms = static_cast<int>(std::ceil(freeze_timeout * 1000));
  spec.progress_interval_ms = progress_interval_ms;
  std::shared_ptr<PyProgress> state = MakeProgress(progress);
  spec.progress = MakeCallback(state);

  StatusOr<std::unique_ptr<BackupJob>> job =
      WithoutGil([&] { return BackupJob::Create(std::move(target), std::move(spec)); });
  return std::make_unique<PyBackupJob>(Check(std::move(job)), std::move(state));
}

// REQUIRES: GIL held.
std::unique_ptr<PyRestorePlan> MakeRestorePlan(
    std::shared_ptr<BackupTarget> target, const std::string& backup, const py::object& dest_dir,
    const py::object& volumes, const std::optional<std::string>& new_vm_name, bool overwrite,
    const py::object& progress, int progress_interval_ms, uint32_t file_mode) {
  if (!target) Raise(InvalidArgumentError("target: must not be None"));
  if (progress_interval_ms < 0) {
    Raise(InvalidArgumentError("progress_interval_ms: must not be negative"));
  }
  RestoreSpec spec;
  spec.backup = backup;
  if (!dest_dir.is_none()) spec.dest_dir = FsPath(dest_dir);
  for (auto& [volume, path] : ToPairs(volumes, "volumes")) {
    VolumeDestination d;
    d.volume = std::move(volume);
    d.path = std::move(path);
    spec.volumes.push_back(std::move(d));
  }
  if (new_vm_name) spec.new_vm_name = *new_vm_name;
  spec.overwrite = overwrite;
  spec.progress_interval_ms = progress_interval_ms;
  spec.file_mode = file_mode;
  std::shared_ptr<PyProgress> state = MakeProgress(progress);
  spec.progress = MakeCallback(state);

  StatusOr<std::unique_ptr<RestorePlan>> plan =
      WithoutGil([&] { return RestorePlan::Create(std::move(target), std::move(spec)); });
  return std::make_unique<PyRestorePlan>(Check(std::move(plan)), std::move(state));
}

py::dict Destinations(RestorePlan& plan) {
  py::dict out;
  for (const VolumeDestination& d : plan.destinations()) out[py::str(d.volume)] = d.path;
  return out;
}

// ---- repr helpers -------------------------------------------------------------------------------

std::string Quote(const std::string& s) { return py::repr(py::str(s)).cast<std::string>(); }

const char* PhaseName(Progress::Phase phase) {
  switch (phase) {
    case Progress::Phase::kPreparing:
      return "PREPARING";
    case Progress::Phase::kTransferring:
      return "TRANSFERRING";
    case Progress::Phase::kFinalizing:
      return "FINALIZING";
    case Progress::Phase::kDone:
      return "DONE";
  }
  return "UNKNOWN";
}

// ---- verify and repair --------------------------------------------------------------------------

// BackupTarget.verify / .repair: the options from keyword arguments, the call with the GIL
// released, the report as a dict (json.loads of VerifyReportToJson / RepairReportToJson). Ctrl-C
// cancels: the progress hook (called on this thread at least every progress_interval_ms) takes
// the GIL, checks for signals and then calls the user's callable, if any. KeyboardInterrupt or the
// callable's exception is re-raised here.
py::object VerifyOrRepair(BackupTarget& t, bool repair, bool read_data, const py::object& subset,
                          int parallel_reads, uint64_t max_bad_blocks_listed,
                          const py::object& progress, int progress_interval_ms, bool dry_run) {
  RepairOptions o;
  VerifyOptions& v = o.verify;
  v.read_data = read_data;
  if (py::isinstance<py::float_>(subset) || py::isinstance<py::int_>(subset)) {
    v.read_data_fraction = subset.cast<double>();
  } else if (!subset.is_none()) {
    Status st = ParseReadDataSubset(py::str(subset).cast<std::string>(), &v);
    if (!st.ok()) Raise(st.WithContext("read_data_subset"));
  }
  if (parallel_reads < 0) Raise(InvalidArgumentError("parallel_reads: must not be negative"));
  if (progress_interval_ms < 0)
    Raise(InvalidArgumentError("progress_interval_ms: must not be negative"));
  v.parallel_reads = parallel_reads;
  v.max_bad_blocks_listed = max_bad_blocks_listed;
  v.progress_interval_ms = std::min(progress_interval_ms, 200);
  o.dry_run = dry_run;
  std::shared_ptr<PyProgress> state = MakeProgress(progress);
  py::object interrupt;  // KeyboardInterrupt (or another signal handler's exception)
  auto last = std::chrono::steady_clock::now() - std::chrono::hours(1);
  v.progress = [&](const Progress& p) noexcept -> bool {
    if (PythonUnusable()) return false;
    try {
      py::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() != 0) {
        py::error_already_set e;
        interrupt = e.value();
        return false;
      }
      if (!state) return true;
      // The user's interval (the hook itself runs at least every 200 ms for Ctrl-C).
      const auto now = std::chrono::steady_clock::now();
      if (p.phase != Progress::Phase::kDone &&
          now - last < std::chrono::milliseconds(progress_interval_ms))
        return true;
      last = now;
      return state->Call(p);
    } catch (...) {
      return false;
    }
  };
  std::string json;
  Status st;
  if (repair) {
    StatusOr<RepairReport> r = WithoutGil([&] { return t.Repair(o); });
    st = r.status();
    if (r.ok()) json = RepairReportToJson(*r);
  } else {
    StatusOr<VerifyReport> r = WithoutGil([&] { return t.Verify(v); });
    st = r.status();
    if (r.ok()) json = VerifyReportToJson(*r);
  }
  py::object raised = interrupt ? interrupt : (state ? state->error() : py::none());
  if (!st.ok() && !raised.is_none()) {
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(raised.ptr())), raised.ptr());
    throw py::error_already_set();
  }
  Check(st);
  return py::module_::import("json").attr("loads")(json);
}

py::object ParseMetadata(const std::string& json) {
  if (json.empty()) return py::dict();
  return py::module_::import("json").attr("loads")(json);
}

}  // namespace

void Bind(py::module_& m) {
  py::module_ errors = py::module_::import("vmbackup._errors");
  g_error_classes = new py::dict(errors.attr("_BY_CODE"));
  g_error_base = new py::object(errors.attr("Error"));

  m.attr("__version__") = VersionString();
  m.attr("version_info") =
      py::make_tuple(VMBACKUP_VERSION_MAJOR, VMBACKUP_VERSION_MINOR, VMBACKUP_VERSION_PATCH);

  // -- enums and records --
  py::enum_<Progress::Phase>(m, "Phase", "Phase of a running job.")
      .value("PREPARING", Progress::Phase::kPreparing)
      .value("TRANSFERRING", Progress::Phase::kTransferring)
      .value("FINALIZING", Progress::Phase::kFinalizing)
      .value("DONE", Progress::Phase::kDone);

  py::enum_<JobState>(m, "JobState", "State of a BackupJob or RestorePlan.")
      .value("PENDING", JobState::kPending)
      .value("IN_PROGRESS", JobState::kInProgress)
      .value("READY", JobState::kReady)
      .value("ERROR", JobState::kError);

  py::class_<Progress>(
      m, "Progress", "A snapshot of a job's progress; byte counts are cumulative since the start.")
      .def_readonly("phase", &Progress::phase)
      .def_readonly("bytes_total", &Progress::bytes_total)
      .def_readonly("bytes_scanned", &Progress::bytes_scanned)
      .def_readonly("bytes_read", &Progress::bytes_read)
      .def_readonly("bytes_new", &Progress::bytes_new)
      .def_readonly("bytes_reused", &Progress::bytes_reused)
      .def_readonly("bytes_written", &Progress::bytes_written)
      .def_readonly("blocks_total", &Progress::blocks_total)
      .def_readonly("blocks_done", &Progress::blocks_done)
      .def_readonly("elapsed_seconds", &Progress::elapsed_seconds)
      .def_readonly("bytes_per_second", &Progress::bytes_per_second)
      .def_readonly("eta_seconds", &Progress::eta_seconds)
      .def("__repr__", [](const Progress& p) {
        return std::string("<vmbackup.Progress ") + PhaseName(p.phase) + " " +
               std::to_string(p.bytes_scanned) + "/" + std::to_string(p.bytes_total) + " bytes>";
      });

  py::class_<VolumeBackupInfo>(m, "VolumeBackupInfo", "One volume inside a backup.")
      .def_readonly("name", &VolumeBackupInfo::name)
      .def_readonly("size", &VolumeBackupInfo::size)
      .def_readonly("block_size", &VolumeBackupInfo::block_size)
      .def_readonly("data_blocks", &VolumeBackupInfo::data_blocks)
      .def_readonly("zero_blocks", &VolumeBackupInfo::zero_blocks)
      .def_readonly("hole_blocks", &VolumeBackupInfo::hole_blocks)
      .def_readonly("bytes_new", &VolumeBackupInfo::bytes_new)
      .def_readonly("bytes_reused", &VolumeBackupInfo::bytes_reused)
      .def_readonly("bytes_stored", &VolumeBackupInfo::bytes_stored)
      .def_readonly("index_key", &VolumeBackupInfo::index_key)
      .def_readonly("index_sha256", &VolumeBackupInfo::index_sha256)
      .def_readonly("fingerprints_key", &VolumeBackupInfo::fingerprints_key)
      .def_readonly("fingerprints_sha256", &VolumeBackupInfo::fingerprints_sha256)
      .def_readonly("provider", &VolumeBackupInfo::provider,
                    "'file', 'qemu' or 'rbd' (where the volume lived); '' in older records")
      .def_readonly("snapshot", &VolumeBackupInfo::snapshot,
                    "'reflink', 'direct', 'fleece' (QEMU) or 'rbd' (how the volume was read); '' "
                    "in older records")
      .def_readonly("consistency", &VolumeBackupInfo::consistency,
                    "'fs-frozen', 'crash-consistent', 'stopped' or 'unknown'; '' in older records")
      .def_readonly("checkpoint", &VolumeBackupInfo::checkpoint,
                    "The provider's checkpoint of this backup's instant (QEMU dirty bitmap or RBD "
                    "snapshot name), the base of the next incremental; '' when none")
      .def_property_readonly(
          "changed_bytes",
          [](const VolumeBackupInfo& v) -> py::object {
            if (v.changed_bytes < 0) return py::none();
            return py::int_(v.changed_bytes);
          },
          "Bytes the provider reported changed since the parent's checkpoint, or None when no "
          "provider changes were used")
      .def("__repr__", [](const VolumeBackupInfo& v) {
        return "<vmbackup.VolumeBackupInfo " + Quote(v.name) + " " + std::to_string(v.size) +
               " bytes>";
      });

  py::class_<BackupInfo>(m, "BackupInfo",
                         "A backup as recorded on the target. Every listed backup is restorable.")
      .def_readonly("name", &BackupInfo::name)
      .def_readonly("vm_name", &BackupInfo::vm_name)
      .def_readonly("vm_namespace", &BackupInfo::vm_namespace)
      .def_readonly("created_at", &BackupInfo::created_at)
      .def_readonly("completed_at", &BackupInfo::completed_at)
      .def_readonly("parent", &BackupInfo::parent)
      .def_readonly("state", &BackupInfo::state)
      .def_readonly("vm_metadata_json", &BackupInfo::vm_metadata_json)
      .def_property_readonly(
          "vm_metadata", [](const BackupInfo& b) { return ParseMetadata(b.vm_metadata_json); },
          "The VM metadata document, parsed (a dict).")
      .def_readonly("volumes", &BackupInfo::volumes)
      .def_readonly("bytes_total", &BackupInfo::bytes_total)
      .def_readonly("bytes_new", &BackupInfo::bytes_new)
      .def_readonly("bytes_reused", &BackupInfo::bytes_reused)
      .def_readonly("bytes_stored", &BackupInfo::bytes_stored)
      .def_readonly("seconds", &BackupInfo::seconds)
      .def_property_readonly(
          "freeze_seconds",
          [](const BackupInfo& b) -> std::optional<double> {
            if (b.freeze_seconds < 0) return std::nullopt;
            return b.freeze_seconds;
          },
          "Seconds the guest was frozen (one window for all volumes), or None when no freeze "
          "hook ran.")
      .def("__repr__", [](const BackupInfo& b) {
        return "<vmbackup.BackupInfo " + Quote(b.name) + " vm=" + Quote(b.vm_name) + " " +
               std::to_string(b.volumes.size()) + " volume(s) " + b.created_at + ">";
      });

  // -- runtime and targets --
  py::class_<Runtime, std::shared_ptr<Runtime>>(m, "Runtime",
                                                "Threads shared by targets and jobs. Optional: "
                                                "targets use Runtime.default() unless given one.")
      .def(py::init([](int worker_threads, int blocking_threads, int io_threads, int job_threads,
                       uint64_t max_in_flight_bytes) {
             const std::pair<const char*, int> counts[] = {{"worker_threads", worker_threads},
                                                           {"blocking_threads", blocking_threads},
                                                           {"io_threads", io_threads},
                                                           {"job_threads", job_threads}};
             for (const auto& [field, n] : counts) {
               if (n < 0 || n > 1024)
                 throw py::value_error(std::string(field) + " must be 0 (default) to 1024, got " +
                                       std::to_string(n));
             }
             RuntimeOptions o;
             o.worker_threads = worker_threads;
             o.blocking_threads = blocking_threads;
             o.io_threads = io_threads;
             o.job_threads = job_threads;
             o.max_in_flight_bytes = max_in_flight_bytes;
             return Runtime::Create(o);
           }),
           py::kw_only(), "worker_threads"_a = 0, "blocking_threads"_a = 0, "io_threads"_a = 0,
           "job_threads"_a = 0, "max_in_flight_bytes"_a = 0,
           "Threads and shared bounds (0 = default): worker_threads (one per core), "
           "blocking_threads (4), io_threads (1), job_threads (4: backups and restores that run "
           "at once), max_in_flight_bytes (256 MiB of packs uploading, all backups together).")
      .def_static("default", &Runtime::Default, "The process-wide runtime.")
      .def_property_readonly("worker_threads", &Runtime::worker_threads)
      .def_property_readonly("thread_count", &Runtime::thread_count,
                             "Every thread this runtime started.")
      .def_property_readonly("max_in_flight_bytes", &Runtime::max_in_flight_bytes);

  py::class_<BackupTarget, std::shared_ptr<BackupTarget>>(
      m, "BackupTarget",
      "Where backups live (local directory, S3 bucket, NFS export). Thread-safe.")
      .def_static(
          "open",
          [](const py::object& config, std::shared_ptr<Runtime> runtime, bool create_if_missing,
             uint32_t block_size, uint32_t pack_size, const py::object& state_dir,
             const py::object& encryption, const py::object& passphrase, const py::object& raw_key,
             const std::string& key_label) {
            std::string json = ToJsonText(config);
            TargetOptions options;
            options.runtime = std::move(runtime);
            options.create_if_missing = create_if_missing;
            options.block_size = block_size;
            options.pack_size = pack_size;
            if (!state_dir.is_none()) options.state_dir = FsPath(state_dir);
            if (!encryption.is_none()) options.encryption = py::str(encryption).cast<std::string>();
            options.passphrase = SecretBytes(passphrase, "passphrase");
            if (!raw_key.is_none() && !py::isinstance<py::bytes>(raw_key))
              throw py::type_error("raw_key must be bytes (32 of them)");
            options.raw_key = SecretBytes(raw_key, "raw_key");
            options.key_label = key_label;
            StatusOr<std::shared_ptr<BackupTarget>> target =
                WithoutGil([&] { return BackupTarget::Open(json, options); });
            return Check(std::move(target));
          },
          "config"_a, py::kw_only(), "runtime"_a = nullptr, "create_if_missing"_a = true,
          "block_size"_a = 0, "pack_size"_a = 0, "state_dir"_a = py::none(),
          "encryption"_a = py::none(), "passphrase"_a = py::none(), "raw_key"_a = py::none(),
          "key_label"_a = "",
          "Opens the target described by `config` (Harvester's backup-target JSON, as str or "
          "dict). state_dir: where this host keeps its fingerprint key (never on the target; "
          "default $VMBACKUP_STATE_DIR, else /var/lib/vmbackup as root, else "
          "~/.local/state/vmbackup). encryption: for a repository this call initializes, "
          "'aes-256-gcm' or 'none' (default: aes-256-gcm when a passphrase or raw_key is given). "
          "passphrase (str or bytes) or raw_key (32 bytes): opens an encrypted repository. "
          "Raises InvalidArgumentError naming the bad field, NotFoundError, PermissionDeniedError "
          "(encrypted and no or a wrong key), FailedPreconditionError (a key for an unencrypted "
          "repository), ...")
      .def(
          "test",
          [](const BackupTarget& t) {
            Status s = WithoutGil([&] { return t.Test(); });
            Check(s);
          },
          "Health check: writes, reads back and deletes a probe object.")
      .def(
          "list_backups",
          [](const BackupTarget& t, bool return_damaged) -> py::object {
            StatusOr<BackupList> list = WithoutGil([&] { return t.ListBackups(); });
            BackupList l = Check(std::move(list));
            py::list backups = py::cast(l.backups);
            if (return_damaged) return py::make_tuple(backups, py::cast(l.damaged));
            return backups;
          },
          py::kw_only(), "return_damaged"_a = false,
          "Every backup, oldest first, as a list of BackupInfo. With return_damaged=True, returns "
          "(backups, damaged) where damaged lists 'name: reason' for unreadable records.")
      .def(
          "get_backup",
          [](const BackupTarget& t, const std::string& name) {
            StatusOr<BackupInfo> info = WithoutGil([&] { return t.GetBackup(name); });
            return Check(std::move(info));
          },
          "name"_a, "The record of backup `name`; NotFoundError if there is none.")
      .def(
          "delete_backup",
          [](BackupTarget& t, const std::string& name) {
            Status s = WithoutGil([&] { return t.DeleteBackup(name); });
            Check(s);
          },
          "name"_a, "Deletes backup `name`; NotFoundError if there is none.")
      .def(
          "verify",
          [](BackupTarget& t, bool read_data, const py::object& read_data_subset,
             int parallel_reads, uint64_t max_bad_blocks_listed, const py::object& progress,
             int progress_interval_ms) {
            return VerifyOrRepair(t, false, read_data, read_data_subset, parallel_reads,
                                  max_bad_blocks_listed, progress, progress_interval_ms, false);
          },
          py::kw_only(), "read_data"_a = false, "read_data_subset"_a = py::none(),
          "parallel_reads"_a = 0, "max_bad_blocks_listed"_a = 10000, "progress"_a = py::none(),
          "progress_interval_ms"_a = 200,
          "Checks the backups on the target and changes nothing; returns the report as a dict "
          "(schema: docs/c_api.md 'Verify report'; report['ok'] is False when damage was found). "
          "read_data fetches and hashes every referenced block; read_data_subset limits that to "
          "a share of the packs (0.1, '10%') or a part ('2/5'). progress(Progress) may return "
          "False to cancel. Ctrl-C cancels (KeyboardInterrupt). Raises CancelledError, "
          "InvalidArgumentError, or the store's error when the target cannot be read.")
      .def(
          "repair",
          [](BackupTarget& t, bool dry_run, bool read_data, const py::object& read_data_subset,
             int parallel_reads, const py::object& progress, int progress_interval_ms) {
            return VerifyOrRepair(t, true, read_data, read_data_subset, parallel_reads, 10000,
                                  progress, progress_interval_ms, dry_run);
          },
          py::kw_only(), "dry_run"_a = false, "read_data"_a = false,
          "read_data_subset"_a = py::none(), "parallel_reads"_a = 0, "progress"_a = py::none(),
          "progress_interval_ms"_a = 200,
          "Verifies (as verify), then rebuilds damaged or missing pack indexes from their pack's "
          "trailer, copies the good blocks of damaged packs to new packs and removes the indexes "
          "of missing packs, so lost blocks are stored again by the next backup. Returns the "
          "report as a dict ('actions', 'unrestorable_backups', 'before': the verify report). "
          "dry_run changes nothing.")
      .def(
          "forget",
          [](BackupTarget& t, int keep_last, int keep_hourly, int keep_daily, int keep_weekly,
             int keep_monthly, int keep_yearly, const std::optional<std::string>& vm_name,
             const std::optional<std::string>& vm_namespace, bool dry_run) {
            RetentionPolicy policy;
            policy.keep_last = keep_last;
            policy.keep_hourly = keep_hourly;
            policy.keep_daily = keep_daily;
            policy.keep_weekly = keep_weekly;
            policy.keep_monthly = keep_monthly;
            policy.keep_yearly = keep_yearly;
            ForgetOptions o;
            o.vm_name = vm_name.value_or("");
            o.vm_namespace = vm_namespace.value_or("");
            o.dry_run = dry_run;
            StatusOr<ForgetResult> r = WithoutGil([&] { return t.Forget(policy, o); });
            ForgetResult res = Check(std::move(r));
            py::list keep;
            for (const auto& k : res.decision.keep) {
              py::dict d;
              d["name"] = k.name;
              d["reasons"] = py::cast(k.reasons);
              keep.append(d);
            }
            py::dict out;
            out["dry_run"] = dry_run;
            out["keep"] = keep;
            out["forget"] = py::cast(res.decision.forget);
            out["deleted"] = py::cast(res.deleted);
            return out;
          },
          py::kw_only(), "keep_last"_a = 0, "keep_hourly"_a = 0, "keep_daily"_a = 0,
          "keep_weekly"_a = 0, "keep_monthly"_a = 0, "keep_yearly"_a = 0, "vm_name"_a = py::none(),
          "vm_namespace"_a = py::none(), "dry_run"_a = false,
          "Applies a retention policy per VM (restic's semantics: keep_last N newest; keep_hourly/"
          "daily/weekly/monthly/yearly the newest backup of each of the N newest such UTC periods "
          "with backups) and deletes every backup it does not keep, unless dry_run. Returns "
          "{'dry_run', 'keep': [{'name', 'reasons'}], 'forget': [names], 'deleted': [names]}. "
          "InvalidArgumentError for a policy that keeps nothing. Space is reclaimed by gc().")
      .def(
          "gc",
          [](BackupTarget& t, bool dry_run, std::optional<int64_t> grace_seconds,
             std::optional<int64_t> lease_expiry_seconds, const py::object& progress,
             const py::object& restore_dirs, bool repack, std::optional<int> max_unused_percent) {
            if (!progress.is_none() && !PyCallable_Check(progress.ptr()))
              Raise(InvalidArgumentError("progress: must be callable or None"));
            GcOptions o;
            o.dry_run = dry_run;
            o.grace_seconds = grace_seconds.value_or(-1);
            o.lease_expiry_seconds = lease_expiry_seconds.value_or(-1);
            o.repack = repack;
            o.max_unused_percent = max_unused_percent.value_or(-1);
            if (!restore_dirs.is_none())
              for (py::handle d : restore_dirs) o.restore_dirs.push_back(FsPath(d));
            // The callback runs on this thread while the GIL is released: it takes it back. An
            // exception it raises stops the run and is raised again here.
            std::optional<py::error_already_set> raised;
            if (!progress.is_none()) {
              o.progress = [&progress, &raised](const GcProgress& p) -> bool {
                if (PythonUnusable()) return false;
                py::gil_scoped_acquire gil;
                try {
                  py::object r = progress(p.phase, p.done, p.total);
                  return r.is_none() || py::bool_(r);
                } catch (py::error_already_set& e) {
                  raised.emplace(std::move(e));
                  return false;
                }
              };
            }
            StatusOr<GcReport> r = WithoutGil([&] { return t.CollectGarbage(o); });
            if (raised) throw std::move(*raised);
            GcReport rep = Check(std::move(r));
            return py::module_::import("json").attr("loads")(GcReportToJson(rep));
          },
          py::kw_only(), "dry_run"_a = false, "grace_seconds"_a = py::none(),
          "lease_expiry_seconds"_a = py::none(), "progress"_a = py::none(),
          "restore_dirs"_a = py::none(), "repack"_a = true, "max_unused_percent"_a = py::none(),
          "One garbage-collection run (docs/FORMAT.md): deletes what stayed garbage for the grace "
          "period across runs (default 24 h; 0 allowed, each step still takes one run more). "
          "progress(phase, done, total) may return False to stop. Returns the report as a dict "
          "(packs, dead_packs, packs_deleted, bytes_deleted, reclaimable_bytes, damaged, ...). "
          "repack: rewrite the partly-live packs with the largest dead share until the dead bytes "
          "left "
          "in them are at most max_unused_percent (default 10; 0 to 100) of all packs' bytes, "
          "once they were chosen for the grace. "
          "restore_dirs: directories of this host whose *.vmbackup-partial-* leftovers of killed "
          "restores older than the grace are deleted. FailedPreconditionError while another run "
          "holds the lock.")
      .def_property_readonly("block_size", &BackupTarget::block_size)
      .def_property_readonly("repository_id", &BackupTarget::repository_id)
      .def_property_readonly("encryption", &BackupTarget::encryption, "'aes-256-gcm' or 'none'.")
      .def(
          "add_key",
          [](BackupTarget& t, const py::object& passphrase, const py::object& raw_key,
             const std::string& label) {
            NewKey k;
            k.passphrase = SecretBytes(passphrase, "passphrase");
            if (!raw_key.is_none() && !py::isinstance<py::bytes>(raw_key))
              throw py::type_error("raw_key must be bytes (32 of them)");
            k.raw_key = SecretBytes(raw_key, "raw_key");
            k.label = label;
            StatusOr<std::string> id = WithoutGil([&] { return t.AddKey(k); });
            return Check(std::move(id));
          },
          py::kw_only(), "passphrase"_a = py::none(), "raw_key"_a = py::none(), "label"_a = "",
          "Adds a key slot (exactly one of passphrase and raw_key) and returns its id. Slots wrap "
          "one master key: adding, removing or rotating one rewrites no data. "
          "FailedPreconditionError if the repository is not encrypted.")
      .def(
          "list_keys",
          [](const BackupTarget& t) {
            std::vector<std::string> damaged;
            StatusOr<std::vector<KeyInfo>> keys = WithoutGil([&] { return t.ListKeys(&damaged); });
            Check(keys.status());
            py::list out;
            for (const KeyInfo& k : *keys) {
              py::dict d;
              d["id"] = k.id;
              d["kind"] = k.kind;
              d["created_at"] = k.created_at;
              d["host"] = k.host;
              d["label"] = k.label;
              d["current"] = k.current;
              out.append(d);
            }
            return out;
          },
          "The key slots, oldest first, as dicts (id, kind, created_at, host, label, current).")
      .def(
          "remove_key",
          [](BackupTarget& t, const std::string& id) {
            Status s = WithoutGil([&] { return t.RemoveKey(id); });
            Check(s);
          },
          "id"_a,
          "Removes key slot `id`. NotFoundError if there is none; FailedPreconditionError for the "
          "slot this target was opened with.")
      .def("__repr__", [](const BackupTarget& t) {
        static const char* kTypes[] = {"file", "s3", "nfs"};
        int type = static_cast<int>(t.config().type);
        return std::string("<vmbackup.BackupTarget ") +
               (type >= 0 && type < 3 ? kTypes[type] : "?") + " " + Quote(t.config().endpoint) +
               ">";
      });

  // -- jobs --
  const char* kWaitDoc =
      "Waits for the job (starting it if needed). Returns True when it succeeded, False if "
      "`timeout` seconds passed first; raises its error otherwise (CancelledError after cancel(), "
      "the callback's own exception if the progress callback raised). Ctrl-C cancels the job and "
      "raises KeyboardInterrupt.";
  const char* kDoneDoc =
      "Calls fn(None) when the job succeeds, fn(error) with its VmbackupError when it fails: once, "
      "on a library thread before wait() returns, or at once if the job already ended. fn must "
      "not wait for the job; what it raises goes to sys.unraisablehook.";

  py::class_<PyBackupJob>(m, "BackupJob",
                          "A backup of volumes to a target. Thread-safe; start() at most once.")
      .def(py::init([](std::shared_ptr<BackupTarget> target, std::optional<std::string> name,
                       const py::object& vm_dir, const py::object& volumes,
                       const py::object& vm_metadata, std::optional<std::string> parent,
                       const py::object& progress, int progress_interval_ms, bool use_fingerprints,
                       const py::object& freeze, const py::object& thaw, bool thaw_early,
                       std::optional<std::string> vm_state, bool allow_inconsistent,
                       double freeze_timeout) {
             return MakeBackupJob(std::move(target), name, vm_dir, volumes, vm_metadata, parent,
                                  progress, progress_interval_ms, use_fingerprints, freeze, thaw,
                                  thaw_early, vm_state, allow_inconsistent, freeze_timeout);
           }),
           "target"_a, "name"_a = py::none(), py::kw_only(), "vm_dir"_a = py::none(),
           "volumes"_a = py::none(), "vm_metadata"_a = py::none(), "parent"_a = py::none(),
           "progress"_a = py::none(), "progress_interval_ms"_a = 200, "use_fingerprints"_a = true,
           "freeze"_a = py::none(), "thaw"_a = py::none(), "thaw_early"_a = false,
           "vm_state"_a = py::none(), "allow_inconsistent"_a = false, "freeze_timeout"_a = 60.0)
      .def("start", &PyBackupJob::Start, "Starts the job and returns at once.")
      .def("wait", &PyBackupJob::Wait, "timeout"_a = py::none(), kWaitDoc)
      .def("add_done_callback", &PyBackupJob::AddDoneCallback, "fn"_a, kDoneDoc)
      .def(
          "run",
          [](PyBackupJob& j) {
            j.Wait(std::nullopt);
            return Check(j.job().result());
          },
          "start() + wait(); returns the new backup's BackupInfo.")
      .def(
          "cancel", [](PyBackupJob& j) { j.job().Cancel(); },
          "Asks the job to stop; wait() then raises CancelledError unless it already finished.")
      .def("done", &PyBackupJob::done, "True once the job has ended.")
      .def_property_readonly("state", [](PyBackupJob& j) { return j.job().state(); })
      .def_property_readonly("progress", [](PyBackupJob& j) { return j.job().progress(); })
      .def_property_readonly("name", [](PyBackupJob& j) { return j.job().name(); })
      .def_property_readonly(
          "result", [](PyBackupJob& j) { return Check(j.job().result()); },
          "The new backup's BackupInfo; FailedPreconditionError until the job succeeded.")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyBackupJob& j, py::args) {
        j.job().Cancel();
        WithoutGil([&] { j.WaitEnded(); });
      });

  py::class_<PyRestorePlan>(m, "RestorePlan",
                            "A restore of a backup's volumes. Thread-safe; start() at most once.")
      .def(py::init([](std::shared_ptr<BackupTarget> target, const std::string& backup,
                       const py::object& dest_dir, const py::object& volumes,
                       std::optional<std::string> new_vm_name, bool overwrite,
                       const py::object& progress, int progress_interval_ms, uint32_t file_mode) {
             return MakeRestorePlan(std::move(target), backup, dest_dir, volumes, new_vm_name,
                                    overwrite, progress, progress_interval_ms, file_mode);
           }),
           "target"_a, "backup"_a, py::kw_only(), "dest_dir"_a = py::none(),
           "volumes"_a = py::none(), "new_vm_name"_a = py::none(), "overwrite"_a = false,
           "progress"_a = py::none(), "progress_interval_ms"_a = 200, "file_mode"_a = 0600)
      .def("start", &PyRestorePlan::Start, "Starts restoring and returns at once.")
      .def("wait", &PyRestorePlan::Wait, "timeout"_a = py::none(), kWaitDoc)
      .def("add_done_callback", &PyRestorePlan::AddDoneCallback, "fn"_a, kDoneDoc)
      .def(
          "run",
          [](PyRestorePlan& j) {
            j.Wait(std::nullopt);
            return Destinations(j.job());
          },
          "start() + wait(); returns {volume name: destination path}.")
      .def(
          "cancel", [](PyRestorePlan& j) { j.job().Cancel(); },
          "Asks the restore to stop; no destination is changed.")
      .def("done", &PyRestorePlan::done, "True once the restore has ended.")
      .def_property_readonly("state", [](PyRestorePlan& j) { return j.job().state(); })
      .def_property_readonly("progress", [](PyRestorePlan& j) { return j.job().progress(); })
      .def_property_readonly(
          "backup", [](PyRestorePlan& j) { return j.job().backup(); },
          "The BackupInfo being restored.")
      .def_property_readonly(
          "destinations", [](PyRestorePlan& j) { return Destinations(j.job()); },
          "{volume name: destination path}, in backup order.")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyRestorePlan& j, py::args) {
        j.job().Cancel();
        WithoutGil([&] { j.WaitEnded(); });
      });

  // -- one-call helpers --
  m.def(
      "backup",
      [](std::shared_ptr<BackupTarget> target, std::optional<std::string> name,
         const py::object& vm_dir, const py::object& volumes, const py::object& vm_metadata,
         std::optional<std::string> parent, const py::object& progress, int progress_interval_ms,
         bool use_fingerprints, const py::object& freeze, const py::object& thaw, bool thaw_early,
         std::optional<std::string> vm_state, bool allow_inconsistent, double freeze_timeout) {
        std::unique_ptr<PyBackupJob> job =
            MakeBackupJob(std::move(target), name, vm_dir, volumes, vm_metadata, parent, progress,
                          progress_interval_ms, use_fingerprints, freeze, thaw, thaw_early,
                          vm_state, allow_inconsistent, freeze_timeout);
        job->Wait(std::nullopt);
        BackupInfo info = Check(job->job().result());
        return info;
      },
      "target"_a, "name"_a = py::none(), py::kw_only(), "vm_dir"_a = py::none(),
      "volumes"_a = py::none(), "vm_metadata"_a = py::none(), "parent"_a = py::none(),
      "progress"_a = py::none(), "progress_interval_ms"_a = 200, "use_fingerprints"_a = true,
      "freeze"_a = py::none(), "thaw"_a = py::none(), "thaw_early"_a = false,
      "vm_state"_a = py::none(), "allow_inconsistent"_a = false, "freeze_timeout"_a = 60.0,
      "Backs up and waits; returns the new backup's BackupInfo. Give either vm_dir (a directory "
      "with vm.json) or volumes ({name: path} or [(name, path), ...]) plus optional vm_metadata "
      "(dict or JSON str); a volume's location is a path, 'qemu:QMP_SOCKET?node=NODE' or "
      "'rbd:POOL/IMAGE' (docs/providers/). progress(Progress) runs on a library thread; returning "
      "False or raising "
      "cancels the backup. use_fingerprints=False hashes every block instead of taking unchanged "
      "blocks' digests from the previous backup by fingerprint. freeze() and thaw() (callables, "
      "on a library thread) open and close one freeze window for all volumes: thaw runs once "
      "after the snapshots (volumes read directly stay frozen until the backup ends unless "
      "thaw_early); freeze raising or returning False fails the backup with "
      "FailedPreconditionError before anything is read. vm_state='running' refuses "
      "(FailedPreconditionError) a volume that cannot be cloned and that no freeze keeps still, "
      "unless allow_inconsistent; 'stopped' records every volume as stopped. freeze_timeout "
      "(seconds, default 60, 0 = none): snapshots that take longer after the freeze thaw the guest "
      "and fail with DeadlineExceededError.");

  m.def(
      "restore",
      [](std::shared_ptr<BackupTarget> target, const std::string& backup,
         const py::object& dest_dir, const py::object& volumes,
         std::optional<std::string> new_vm_name, bool overwrite, const py::object& progress,
         int progress_interval_ms, uint32_t file_mode) {
        std::unique_ptr<PyRestorePlan> plan =
            MakeRestorePlan(std::move(target), backup, dest_dir, volumes, new_vm_name, overwrite,
                            progress, progress_interval_ms, file_mode);
        plan->Wait(std::nullopt);
        return Destinations(plan->job());
      },
      "target"_a, "backup"_a, py::kw_only(), "dest_dir"_a = py::none(), "volumes"_a = py::none(),
      "new_vm_name"_a = py::none(), "overwrite"_a = false, "progress"_a = py::none(),
      "progress_interval_ms"_a = 200, "file_mode"_a = 0600,
      "Restores backup `backup` and waits; returns {volume name: destination path}. Volumes go to "
      "explicit destinations ({volume: path} or [(volume, path), ...]) or to "
      "<dest_dir>/<volume>.img; dest_dir also receives vm.json. Restored files get exactly "
      "file_mode (default 0o600). A block device destination (or a link to one) needs "
      "overwrite=True and is written in place.");

  py::module_::import("atexit").attr("register")(py::cpp_function(&CancelAllJobsAtExit));
}

}  // namespace python
}  // namespace vmbackup

PYBIND11_MODULE(_vmbackup, m) {
  vmbackup::python::g_import_thread = std::this_thread::get_id();
  m.doc() = "Native part of the vmbackup package; import `vmbackup` instead.";
  vmbackup::python::Bind(m);
}
