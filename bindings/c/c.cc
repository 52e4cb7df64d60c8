// Implementation of the C ABI (<vmbackup/c.h>) over the C++ API.
//
// Every exported function is a trampoline: it converts C arguments to C++ values, calls the C++ API
// and converts the result back. No exception leaves this file: each entry point catches everything
// and reports std::bad_alloc as VMB_ERESOURCE and any other exception as VMB_EINTERNAL. Progress
// callbacks are called from the library's threads through a lambda that never throws.
//
// Async handles (vmb_backup, vmb_restore) own the C++ job; vmb_*_wait[_timeout]() call its Wait /
// WaitFor, which keep the final status, so any number of waits from any thread see the same result.
// No thread of their own.
#include "vmbackup/c.h"

#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "vmbackup/vmbackup.h"

namespace vmbackup {
namespace {

using ordered_json = nlohmann::ordered_json;

// The C codes are the negated C++ codes; keep them in lock-step.
#define VMB_CHECK_CODE(c, k) \
  static_assert(static_cast<int>(c) == -static_cast<int>(StatusCode::k), #c " != -" #k)
VMB_CHECK_CODE(VMB_OK, kOk);
VMB_CHECK_CODE(VMB_ECANCELLED, kCancelled);
VMB_CHECK_CODE(VMB_EUNKNOWN, kUnknown);
VMB_CHECK_CODE(VMB_EINVAL, kInvalidArgument);
VMB_CHECK_CODE(VMB_EDEADLINE, kDeadlineExceeded);
VMB_CHECK_CODE(VMB_ENOTFOUND, kNotFound);
VMB_CHECK_CODE(VMB_EEXISTS, kAlreadyExists);
VMB_CHECK_CODE(VMB_EPERM, kPermissionDenied);
VMB_CHECK_CODE(VMB_ERESOURCE, kResourceExhausted);
VMB_CHECK_CODE(VMB_EPRECONDITION, kFailedPrecondition);
VMB_CHECK_CODE(VMB_EABORTED, kAborted);
VMB_CHECK_CODE(VMB_ERANGE, kOutOfRange);
VMB_CHECK_CODE(VMB_EUNIMPLEMENTED, kUnimplemented);
VMB_CHECK_CODE(VMB_EINTERNAL, kInternal);
VMB_CHECK_CODE(VMB_EUNAVAILABLE, kUnavailable);
VMB_CHECK_CODE(VMB_EDATALOSS, kDataLoss);
VMB_CHECK_CODE(VMB_EUNAUTHENTICATED, kUnauthenticated);
#undef VMB_CHECK_CODE

static_assert(VMB_PHASE_PREPARING == static_cast<int>(Progress::Phase::kPreparing));
static_assert(VMB_PHASE_TRANSFERRING == static_cast<int>(Progress::Phase::kTransferring));
static_assert(VMB_PHASE_FINALIZING == static_cast<int>(Progress::Phase::kFinalizing));
static_assert(VMB_PHASE_DONE == static_cast<int>(Progress::Phase::kDone));
static_assert(VMB_JOB_PENDING == static_cast<int>(JobState::kPending));
static_assert(VMB_JOB_IN_PROGRESS == static_cast<int>(JobState::kInProgress));
static_assert(VMB_JOB_READY == static_cast<int>(JobState::kReady));
static_assert(VMB_JOB_ERROR == static_cast<int>(JobState::kError));
static_assert(VMB_SNAPSHOT_AUTO == static_cast<int>(SnapshotOptions::Mode::kAuto));
static_assert(VMB_VM_UNKNOWN == static_cast<int>(SnapshotOptions::VmState::kUnknown));
static_assert(VMB_VM_RUNNING == static_cast<int>(SnapshotOptions::VmState::kRunning));
static_assert(VMB_VM_STOPPED == static_cast<int>(SnapshotOptions::VmState::kStopped));
static_assert(VMB_SNAPSHOT_REFLINK == static_cast<int>(SnapshotOptions::Mode::kReflink));
static_assert(VMB_SNAPSHOT_DIRECT == static_cast<int>(SnapshotOptions::Mode::kDirect));
static_assert(VMB_VERSION_MAJOR == VMBACKUP_VERSION_MAJOR &&
                  VMB_VERSION_MINOR == VMBACKUP_VERSION_MINOR &&
                  VMB_VERSION_PATCH == VMBACKUP_VERSION_PATCH,
              "update the VMB_VERSION_* macros in bindings/c/include/vmbackup/c.h");

}  // namespace
}  // namespace vmbackup

struct vmb_error {
  int code;
  std::string message;
  bool retryable;
};

struct vmb_target {
  std::shared_ptr<vmbackup::BackupTarget> target;
};

struct vmb_runtime {
  std::shared_ptr<vmbackup::Runtime> runtime;
};

namespace vmbackup {
namespace {

// ---- errors -------------------------------------------------------------------------------------

// Stores a new vmb_error in *error (if error is not NULL) and returns `code`. Never throws: if the
// error cannot be allocated, *error stays NULL and only the code reports the failure.
int Report(vmb_error** error, int code, std::string_view message, bool retryable) noexcept {
  if (error == nullptr || code == VMB_OK) return code;
  try {
    *error = new vmb_error{code, std::string(message), retryable};
  } catch (...) {
    *error = nullptr;
  }
  return code;
}

int Report(vmb_error** error, const Status& status) noexcept {
  return Report(error, -static_cast<int>(status.code()), status.message(), status.retryable());
}

// Runs `body` (returning a Status) as the body of a C entry point: clears *error, converts the
// Status, and turns every exception into an error code.
template <typename Body>
int Guard(vmb_error** error, Body&& body) noexcept {
  if (error != nullptr) *error = nullptr;
  try {
    return Report(error, body());
  } catch (const std::bad_alloc&) {
    return Report(error, VMB_ERESOURCE, "out of memory", true);
  } catch (const std::exception& e) {
    return Report(error, VMB_EINTERNAL, e.what(), false);
  } catch (...) {
    return Report(error, VMB_EINTERNAL, "unexpected exception in vmbackup", false);
  }
}

Status NullArgument(const char* function, const char* argument) {
  return InvalidArgumentError(std::string(function) + ": " + argument + " must not be NULL");
}

Status BadVersion(const char* type, unsigned int version, unsigned int known) {
  return InvalidArgumentError(std::string(type) + ".version: unsupported version " +
                              std::to_string(version) + " (this library knows 1.." +
                              std::to_string(known) + ")");
}

// Returns a malloc'ed copy of `s` (released with vmb_free). Throws std::bad_alloc.
char* Dup(std::string_view s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p == nullptr) throw std::bad_alloc();
  std::memcpy(p, s.data(), s.size());
  p[s.size()] = '\0';
  return p;
}

std::string Dump(const ordered_json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// ---- JSON records -------------------------------------------------------------------------------

// The shared JSON form of a backup (BackupInfoToJson), as a value to embed in larger documents.
ordered_json ToJson(const BackupInfo& b) { return ordered_json::parse(BackupInfoToJson(b)); }

// ---- progress -----------------------------------------------------------------------------------

void ToC(const Progress& p, vmb_progress* out) {
  *out = vmb_progress{};
  out->phase = static_cast<int>(p.phase);
  out->bytes_total = p.bytes_total;
  out->bytes_scanned = p.bytes_scanned;
  out->bytes_read = p.bytes_read;
  out->bytes_new = p.bytes_new;
  out->bytes_reused = p.bytes_reused;
  out->bytes_written = p.bytes_written;
  out->blocks_total = p.blocks_total;
  out->blocks_done = p.blocks_done;
  out->elapsed_seconds = p.elapsed_seconds;
  out->bytes_per_second = p.bytes_per_second;
  out->eta_seconds = p.eta_seconds;
}

// Wraps a C progress callback. The callback is C code and cannot throw; the conversion cannot
// either.
ProgressCallback WrapProgress(vmb_progress_cb cb, void* payload) {
  if (cb == nullptr) return nullptr;
  return [cb, payload](const Progress& p) noexcept -> bool {
    vmb_progress c;
    ToC(p, &c);
    return cb(&c, payload) == 0;
  };
}

// ---- option conversion --------------------------------------------------------------------------

Status ToVolumes(const char* field, const vmb_volume* volumes, size_t count,
                 std::vector<std::pair<std::string, std::string>>* out) {
  if (count > 0 && volumes == nullptr) {
    return InvalidArgumentError(std::string(field) + ": NULL with a count of " +
                                std::to_string(count));
  }
  for (size_t i = 0; i < count; ++i) {
    const std::string where = std::string(field) + "[" + std::to_string(i) + "]";
    if (volumes[i].name == nullptr) return InvalidArgumentError(where + ".name: must not be NULL");
    if (volumes[i].path == nullptr) return InvalidArgumentError(where + ".path: must not be NULL");
    out->emplace_back(volumes[i].name, volumes[i].path);
  }
  return Status::Ok();
}

StatusOr<BackupSpec> ToBackupSpec(const vmb_backup_options* opts) {
  static const vmb_backup_options kDefaults = VMB_BACKUP_OPTIONS_INIT;
  if (opts == nullptr) opts = &kDefaults;
  if (opts->version < 1 || opts->version > VMB_BACKUP_OPTIONS_VERSION) {
    return BadVersion("vmb_backup_options", opts->version, VMB_BACKUP_OPTIONS_VERSION);
  }
  std::vector<std::pair<std::string, std::string>> volumes;
  Status s = ToVolumes("vmb_backup_options.volumes", opts->volumes, opts->volume_count, &volumes);
  if (!s.ok()) return s;

  BackupSpec spec;
  if (opts->vm_dir != nullptr) {
    if (!volumes.empty()) {
      return InvalidArgumentError("vmb_backup_options.volumes: must be empty when vm_dir is set");
    }
    if (opts->vm_metadata_json != nullptr) {
      return InvalidArgumentError(
          "vmb_backup_options.vm_metadata_json: must be NULL when vm_dir is set");
    }
    StatusOr<BackupSpec> from_dir = BackupSpecFromVmDirectory(opts->vm_dir);
    if (!from_dir.ok()) return std::move(from_dir).status();
    spec = std::move(from_dir).value();
  } else {
    for (auto& [name, location] : volumes) {
      auto v = ParseVolumeLocation(name, location);
      if (!v.ok()) return v.status();
      spec.volumes.push_back(std::move(*v));
    }
    if (opts->vm_metadata_json != nullptr) spec.vm_metadata_json = opts->vm_metadata_json;
  }
  if (opts->name != nullptr) spec.name = opts->name;
  if (opts->parent != nullptr) spec.parent = opts->parent;
  if (opts->progress_interval_ms < 0) {
    return InvalidArgumentError("vmb_backup_options.progress_interval_ms: must not be negative");
  }
  spec.progress_interval_ms = opts->progress_interval_ms;
  if (opts->snapshot_mode < VMB_SNAPSHOT_AUTO || opts->snapshot_mode > VMB_SNAPSHOT_DIRECT) {
    return InvalidArgumentError("vmb_backup_options.snapshot_mode: unknown mode " +
                                std::to_string(opts->snapshot_mode));
  }
  spec.snapshot.mode = static_cast<SnapshotOptions::Mode>(opts->snapshot_mode);
  spec.max_in_flight_bytes = opts->max_in_flight_bytes;
  // A version 1 caller's struct ends before hash_every_block: never read it there.
  if (opts->version >= 2) spec.use_fingerprints = opts->hash_every_block == 0;
  // A version 1 or 2 caller's struct ends before the hooks: never read them there.
  if (opts->version >= 3) {
    void* payload = opts->hook_payload;
    if (vmb_hook_cb freeze = opts->freeze) {
      spec.snapshot.freeze = [freeze, payload]() -> Status {
        const int rc = freeze(payload);
        if (rc != 0)
          return FailedPreconditionError("the freeze hook returned " + std::to_string(rc));
        return Status::Ok();
      };
    }
    if (vmb_hook_cb thaw = opts->thaw) {
      spec.snapshot.thaw = [thaw, payload]() -> Status {
        const int rc = thaw(payload);
        if (rc != 0) return InternalError("the thaw hook returned " + std::to_string(rc));
        return Status::Ok();
      };
    }
    spec.snapshot.thaw_after_backup = opts->thaw_early == 0;
    if (opts->vm_state < VMB_VM_UNKNOWN || opts->vm_state > VMB_VM_STOPPED)
      return InvalidArgumentError("vmb_backup_options.vm_state: unknown state " +
                                  std::to_string(opts->vm_state));
    spec.snapshot.vm_state = static_cast<SnapshotOptions::VmState>(opts->vm_state);
    spec.snapshot.allow_inconsistent = opts->allow_inconsistent != 0;
  }
  // A version 3 caller's struct ends before freeze_timeout_ms.
  if (opts->version >= 4) {
    if (opts->freeze_timeout_ms < 0)
      return InvalidArgumentError("vmb_backup_options.freeze_timeout_ms: must not be negative");
    spec.snapshot.freeze_timeout_ms = opts->freeze_timeout_ms;
  }
  spec.progress = WrapProgress(opts->progress, opts->progress_payload);
  return spec;
}

StatusOr<RestoreSpec> ToRestoreSpec(const vmb_restore_options* opts) {
  if (opts == nullptr) return InvalidArgumentError("vmb_restore_options: must not be NULL");
  if (opts->version != 1 && opts->version != VMB_RESTORE_OPTIONS_VERSION) {
    return BadVersion("vmb_restore_options", opts->version, VMB_RESTORE_OPTIONS_VERSION);
  }
  if (opts->backup == nullptr) {
    return InvalidArgumentError("vmb_restore_options.backup: must not be NULL");
  }
  std::vector<std::pair<std::string, std::string>> volumes;
  Status s = ToVolumes("vmb_restore_options.volumes", opts->volumes, opts->volume_count, &volumes);
  if (!s.ok()) return s;
  if (opts->progress_interval_ms < 0) {
    return InvalidArgumentError("vmb_restore_options.progress_interval_ms: must not be negative");
  }
  RestoreSpec spec;
  spec.backup = opts->backup;
  if (opts->dest_dir != nullptr) spec.dest_dir = opts->dest_dir;
  if (opts->new_vm_name != nullptr) spec.new_vm_name = opts->new_vm_name;
  spec.overwrite = opts->overwrite != 0;
  for (auto& [volume, path] : volumes) {
    VolumeDestination d;
    d.volume = std::move(volume);
    d.path = std::move(path);
    spec.volumes.push_back(std::move(d));
  }
  spec.progress = WrapProgress(opts->progress, opts->progress_payload);
  spec.progress_interval_ms = opts->progress_interval_ms;
  // A version 1 caller's struct ends before file_mode: never read it there.
  if (opts->version >= 2) spec.file_mode = opts->file_mode;
  return spec;
}

StatusOr<TargetOptions> ToTargetOptions(const vmb_target_options* opts) {
  TargetOptions o;
  if (opts == nullptr) return o;
  if (opts->version < 1 || opts->version > VMB_TARGET_OPTIONS_VERSION) {
    return BadVersion("vmb_target_options", opts->version, VMB_TARGET_OPTIONS_VERSION);
  }
  o.create_if_missing = opts->create_if_missing != 0;
  o.block_size = opts->block_size;
  o.pack_size = opts->pack_size;
  // An older caller's struct ends before the fields its version lacks: never read them there.
  if (opts->version >= 2 && opts->state_dir != nullptr) o.state_dir = opts->state_dir;
  if (opts->version >= 3 && opts->runtime != nullptr) o.runtime = opts->runtime->runtime;
  if (opts->version >= 4) {
    if (opts->encryption != nullptr) o.encryption = opts->encryption;
    // An empty secret given explicitly is an error, never "no secret" (which would open an
    // unencrypted repository and write plaintext to it).
    if (opts->passphrase != nullptr && *opts->passphrase == '\0')
      return InvalidArgumentError("vmb_target_options.passphrase: empty");
    if (opts->passphrase != nullptr) o.passphrase = opts->passphrase;
    if (opts->raw_key != nullptr && opts->raw_key_len == 0)
      return InvalidArgumentError("vmb_target_options.raw_key: raw_key_len is 0");
    if (opts->raw_key != nullptr)
      o.raw_key.assign(reinterpret_cast<const char*>(opts->raw_key), opts->raw_key_len);
    else if (opts->raw_key_len != 0)
      return InvalidArgumentError("vmb_target_options: raw_key_len is set but raw_key is NULL");
    if (opts->key_label != nullptr) o.key_label = opts->key_label;
  }
  return o;
}

}  // namespace

// ---- async handles ------------------------------------------------------------------------------
// (A named namespace: the public handle structs vmb_backup / vmb_restore derive from AsyncJob.)
namespace c_api {

// A started C++ job (BackupJob or RestorePlan). Waiting needs no thread of its own: the job's
// WaitFor/Wait block on its state.
template <typename Job>
class AsyncJob {
 public:
  explicit AsyncJob(std::unique_ptr<Job> job) : job_(std::move(job)) {}
  AsyncJob(const AsyncJob&) = delete;
  AsyncJob& operator=(const AsyncJob&) = delete;

  // Cancels the job if it still runs, then waits for it (the job's destructor does both).
  ~AsyncJob() { job_->Cancel(); }

  Status Start() { return job_->Start(); }

  // Waits for the end of the job; nullopt if `timeout` elapsed first (no timeout when nullopt).
  std::optional<Status> Wait(std::optional<std::chrono::milliseconds> timeout) {
    if (timeout.has_value()) return job_->WaitFor(*timeout);
    return job_->Wait();
  }

  Job& job() const { return *job_; }

 private:
  std::unique_ptr<Job> job_;
};

}  // namespace c_api

namespace {

// Waits for `job`; `timeout` nullopt = no timeout. Returns VMB_PENDING if it elapsed first.
template <typename Job>
int WaitJob(c_api::AsyncJob<Job>* job, std::optional<std::chrono::milliseconds> timeout,
            vmb_error** error) noexcept {
  bool pending = false;
  int rc = Guard(error, [&]() -> Status {
    if (job == nullptr) return NullArgument("vmb_*_wait", "job");
    std::optional<Status> s = job->Wait(timeout);
    pending = !s.has_value();
    return pending ? Status::Ok() : *std::move(s);
  });
  return pending ? VMB_PENDING : rc;
}

// Registers a C completion callback on `job`.
template <typename Job>
int OnDoneJob(c_api::AsyncJob<Job>* job, vmb_done_cb cb, void* payload,
              vmb_error** error) noexcept {
  return Guard(error, [&]() -> Status {
    if (job == nullptr) return NullArgument("vmb_*_on_done", "job");
    if (cb == nullptr) return NullArgument("vmb_*_on_done", "cb");
    job->job().OnDone([cb, payload](const Status& st) {
      cb(st.ok() ? 0 : -static_cast<int>(st.code()), st.ok() ? "" : st.message().c_str(), payload);
    });
    return Status::Ok();
  });
}

}  // namespace
}  // namespace vmbackup

struct vmb_backup : vmbackup::c_api::AsyncJob<vmbackup::BackupJob> {
  using AsyncJob::AsyncJob;
};

struct vmb_restore : vmbackup::c_api::AsyncJob<vmbackup::RestorePlan> {
  using AsyncJob::AsyncJob;
};

using vmbackup::Guard;
using vmbackup::NullArgument;
using vmbackup::Status;
using vmbackup::StatusOr;

// ---- versions and errors ------------------------------------------------------------------------

extern "C" {

int vmb_version(void) { return vmbackup::VersionNumber(); }

const char* vmb_version_string(void) { return vmbackup::VersionString(); }

int vmb_error_code(const vmb_error* error) { return error->code; }

const char* vmb_error_message(const vmb_error* error) { return error->message.c_str(); }

int vmb_error_retryable(const vmb_error* error) { return error->retryable ? 1 : 0; }

void vmb_error_free(vmb_error* error) { delete error; }

const char* vmb_error_code_name(int code) {
  if (code == VMB_PENDING) return "PENDING";
  if (code > 0 || code < VMB_EUNAUTHENTICATED) return "UNKNOWN_CODE";
  return vmbackup::StatusCodeName(static_cast<vmbackup::StatusCode>(-code));
}

void vmb_free(void* ptr) { std::free(ptr); }

// ---- runtime ------------------------------------------------------------------------------------

int vmb_runtime_create(vmb_runtime** out, const vmb_runtime_options* opts, vmb_error** error) {
  if (out != nullptr) *out = nullptr;
  return Guard(error, [&]() -> Status {
    if (out == nullptr) return NullArgument("vmb_runtime_create", "out");
    vmbackup::RuntimeOptions o;
    if (opts != nullptr) {
      if (opts->version != VMB_RUNTIME_OPTIONS_VERSION) {
        return vmbackup::BadVersion("vmb_runtime_options", opts->version,
                                    VMB_RUNTIME_OPTIONS_VERSION);
      }
      const std::pair<const char*, int> counts[] = {{"worker_threads", opts->worker_threads},
                                                    {"blocking_threads", opts->blocking_threads},
                                                    {"io_threads", opts->io_threads},
                                                    {"job_threads", opts->job_threads}};
      for (const auto& [field, n] : counts) {
        if (n < 0 || n > 1024) {
          return vmbackup::InvalidArgumentError(std::string("vmb_runtime_options.") + field +
                                                " must be 0 (default) to 1024, got " +
                                                std::to_string(n));
        }
      }
      o.worker_threads = opts->worker_threads;
      o.blocking_threads = opts->blocking_threads;
      o.io_threads = opts->io_threads;
      o.job_threads = opts->job_threads;
      o.max_in_flight_bytes = opts->max_in_flight_bytes;
    }
    *out = new vmb_runtime{vmbackup::Runtime::Create(o)};
    return Status::Ok();
  });
}

void vmb_runtime_free(vmb_runtime* runtime) { delete runtime; }

int vmb_runtime_thread_count(const vmb_runtime* runtime) {
  return runtime == nullptr ? 0 : runtime->runtime->thread_count();
}

// ---- targets ------------------------------------------------------------------------------------

int vmb_target_options_init(vmb_target_options* opts, unsigned int version, vmb_error** error) {
  return Guard(error, [&]() -> Status {
    if (opts == nullptr) return NullArgument("vmb_target_options_init", "opts");
    if (version < 1 || version > VMB_TARGET_OPTIONS_VERSION) {
      return vmbackup::BadVersion("vmb_target_options", version, VMB_TARGET_OPTIONS_VERSION);
    }
    const vmb_target_options defaults VMB_TARGET_OPTIONS_INIT;
    // An older caller's struct is that version's layout: write only its fields.
    size_t size = sizeof(vmb_target_options);
    if (version == 1) size = offsetof(vmb_target_options, state_dir);
    if (version == 2) size = offsetof(vmb_target_options, runtime);
    if (version == 3) size = offsetof(vmb_target_options, encryption);
    std::memcpy(static_cast<void*>(opts), &defaults, size);
    opts->version = version;
    return Status::Ok();
  });
}

int vmb_target_open(vmb_target** out, const char* config_json, const vmb_target_options* opts,
                    vmb_error** error) {
  if (out != nullptr) *out = nullptr;
  return Guard(error, [&]() -> Status {
    if (out == nullptr) return NullArgument("vmb_target_open", "out");
    if (config_json == nullptr) return NullArgument("vmb_target_open", "config_json");
    StatusOr<vmbackup::TargetOptions> options = vmbackup::ToTargetOptions(opts);
    if (!options.ok()) return options.status();
    auto target = vmbackup::BackupTarget::Open(config_json, *options);
    if (!target.ok()) return target.status();
    *out = new vmb_target{std::move(target).value()};
    return Status::Ok();
  });
}

void vmb_target_free(vmb_target* target) { delete target; }

int vmb_target_test(const vmb_target* target, vmb_error** error) {
  return Guard(error, [&]() -> Status {
    if (target == nullptr) return NullArgument("vmb_target_test", "target");
    return target->target->Test();
  });
}

int vmb_target_list_backups(char** out, const vmb_target* target, vmb_error** error) {
  if (out != nullptr) *out = nullptr;
  return Guard(error, [&]() -> Status {
    if (out == nullptr) return NullArgument("vmb_target_list_backups", "out");
    if (target == nullptr) return NullArgument("vmb_target_list_backups", "target");
    StatusOr<vmbackup::BackupList> list = target->target->ListBackups();
    if (!list.ok()) return list.status();
    vmbackup::ordered_json backups = vmbackup::ordered_json::array();
    for (const vmbackup::BackupInfo& b : list->backups) backups.push_back(vmbackup::ToJson(b));
    vmbackup::ordered_json j;
    j["backups"] = std::move(backups);
    j["damaged"] = list->damaged;
    *out = vmbackup::Dup(vmbackup::Dump(j));
    return Status::Ok();
  });
}

int vmb_target_get_backup(char** out, const vmb_target* target, const char* name,
                          vmb_error** error) {
  if (out != nullptr) *out = nullptr;
  return Guard(error, [&]() -> Status {
    if (out == nullptr) return NullArgument("vmb_target_get_backup", "out");
    if (target == nullptr) return NullArgument("vmb_target_get_backup", "target");
    if (name == nullptr) return NullArgument("vmb_target_get_backup", "name");
    StatusOr<vmbackup::BackupInfo> info = target->target->GetBackup(name);
    if (!info.ok()) return info.status();
    *out = vmbackup::Dup(vmbackup::Dump(vmbackup::ToJson(*info)));
    return Status::Ok();
  });
}

int vmb_target_delete_backup(vmb_target* target, const char* name, vmb_error** error) {
  return Guard(error, [&]() -> Status {
    if (target == nullptr) return NullArgument("vmb_target_delete_backup", "target");
    if (name == nullptr) return NullArgument("vmb_target_delete_backup", "name");
    return target->target->DeleteBackup(name);
  });
}

uint32_t vmb_target_block_size(const vmb_target* target) {
  if (target == nullptr) return 0;
  return target->target->block_size();
}

// ---- keys ---------------------------------------------------------------------------------------

const char* vmb_target_encryption(const vmb_target* target) {
  if (target == nullptr) return nullptr;
  return target->target->encryption() == "none" ? "none" : "aes-256-gcm";
}

int vmb_target_add_key(char** id_out, vmb_target* target, const char* passphrase,
                       const uint8_t* raw_key, size_t raw_key_len, const char* label,
                       vmb_error** error) {
  if (id_out != nullptr) *id_out = nullptr;
  return Guard(error, [&]() -> Status {
    if (target == nullptr) return NullArgument("vmb_target_add_key", "target");
    vmbackup::NewKey k;
    if (passphrase != nullptr) k.passphrase = passphrase;
    if (raw_key != nullptr) k.raw_key.assign(reinterpret_cast<const char*>(raw_key), raw_key_len);
    if (label != nullptr) k.label = label;
    StatusOr<std::string> id = target->target->AddKey(k);
    if (!id.ok()) return id.status();
    if (id_out != nullptr) *id_out = vmbackup::Dup(*id);
    return Status::Ok();
  });
}

int vmb_target_list_keys(char** out, const vmb_target* target, vmb_error** error) {
  if (out != nullptr) *out = nullptr;
  return Guard(error, [&]() -> Status {
    if (out == nullptr) return NullArgument("vmb_target_list_keys", "out");
    if (target == nullptr) return NullArgument("vmb_target_list_keys", "target");
    std::vector<std::string> damaged;
    auto keys = target->target->ListKeys(&damaged);
    if (!keys.ok()) return keys.status();
    *out = vmbackup::Dup(vmbackup::KeyListToJson(*keys, damaged));
    return Status::Ok();
  });
}

int vmb_target_remove_key(vmb_target* target, const char* id, vmb_error** error) {
  return Guard(error, [&]() -> Status {
    if (target == nullptr) return NullArgument("vmb_target_remove_key", "target");
    if (id == nullptr) return NullArgument("vmb_target_remove_key", "id");
    return target->target->RemoveKey(id);
  });
}

// ---- verify and repair --------------------------------------------------------------------------

int vmb_verify_options_init(vmb_verify_options* opts, unsigned int version, vmb_error** error) {
  return Guard(error, [&]() -> Status {
    if (opts == nullptr) return NullArgument("vmb_verify_options_init", "opts");
    if (version != VMB_VERIFY_OPTIONS_VERSION)
      return vmbackup::BadVersion("vmb_verify_options", version, VMB_VERIFY_OPTIONS_VERSION);
    *opts = vmb_verify_options VMB_VERIFY_OPTIONS_INIT;
    return Status::Ok();
  });
}

namespace vmbackup {
namespace {
// The C++ options of `opts` (NULL = defaults).
StatusOr<RepairOptions> ToRepairOptions(const vmb_verify_options* opts) {
  RepairOptions r;
  if (opts == nullptr) return r;
  if (opts->version < 1 || opts->version > VMB_VERIFY_OPTIONS_VERSION)
    return BadVersion("vmb_verify_options", opts->version, VMB_VERIFY_OPTIONS_VERSION);
  VerifyOptions& v = r.verify;
  v.read_data = opts->read_data != 0;
  if (opts->read_data_subset != nullptr) {
    Status st = ParseReadDataSubset(opts->read_data_subset, &v);
    if (!st.ok()) return st.WithContext("vmb_verify_options.read_data_subset");
  }
  if (opts->parallel_reads < 0)
    return InvalidArgumentError("vmb_verify_options.parallel_reads: must not be negative");
  v.parallel_reads = opts->parallel_reads;
  v.max_bad_blocks_listed = opts->max_bad_blocks_listed;
  if (opts->progress_interval_ms < 0)
    return InvalidArgumentError("vmb_verify_options.progress_interval_ms: must not be negative");
  v.progress_interval_ms = opts->progress_interval_ms;
  v.progress = WrapProgress(opts->progress, opts->progress_payload);
  r.dry_run = opts->dry_run != 0;
  return r;
}
}  // namespace
}  // namespace vmbackup

int vmb_target_verify(char** out, const vmb_target* target, const vmb_verify_options* opts,
                      vmb_error** error) {
  if (out != nullptr) *out = nullptr;
  return Guard(error, [&]() -> Status {
    if (out == nullptr) return NullArgument("vmb_target_verify", "out");
    if (target == nullptr) return NullArgument("vmb_target_verify", "target");
    StatusOr<vmbackup::RepairOptions> o = vmbackup::ToRepairOptions(opts);
    if (!o.ok()) return o.status();
    StatusOr<vmbackup::VerifyReport> report = target->target->Verify(o->verify);
    if (!report.ok()) return report.status();
    *out = vmbackup::Dup(vmbackup::VerifyReportToJson(*report));
    return Status::Ok();
  });
}

int vmb_target_repair(char** out, vmb_target* target, const vmb_verify_options* opts,
                      vmb_error** error) {
  if (out != nullptr) *out = nullptr;
  return Guard(error, [&]() -> Status {
    if (out == nullptr) return NullArgument("vmb_target_repair", "out");
    if (target == nullptr) return NullArgument("vmb_target_repair", "target");
    StatusOr<vmbackup::RepairOptions> o = vmbackup::ToRepairOptions(opts);
    if (!o.ok()) return o.status();
    StatusOr<vmbackup::RepairReport> report = target->target->Repair(*o);
    if (!report.ok()) return report.status();
    *out = vmbackup::Dup(vmbackup::RepairReportToJson(*report));
    return Status::Ok();
  });
}

// ---- maintenance --------------------------------------------------------------------------------

int vmb_forget_options_init(vmb_forget_options* opts, unsigned int version, vmb_error** error) {
  return Guard(error, [&]() -> Status {
    if (opts == nullptr) return NullArgument("vmb_forget_options_init", "opts");
    if (version != VMB_FORGET_OPTIONS_VERSION)
      return vmbackup::BadVersion("vmb_forget_options", version, VMB_FORGET_OPTIONS_VERSION);
    *opts = vmb_forget_options VMB_FORGET_OPTIONS_INIT;
    return Status::Ok();
  });
}

int vmb_target_forget(char** out, vmb_target* target, const vmb_forget_options* opts,
                      vmb_error** error) {
  if (out != nullptr) *out = nullptr;
  return Guard(error, [&]() -> Status {
    if (out == nullptr) return NullArgument("vmb_target_forget", "out");
    if (target == nullptr) return NullArgument("vmb_target_forget", "target");
    if (opts == nullptr) return NullArgument("vmb_target_forget", "opts");
    if (opts->version < 1 || opts->version > VMB_FORGET_OPTIONS_VERSION)
      return vmbackup::BadVersion("vmb_forget_options", opts->version, VMB_FORGET_OPTIONS_VERSION);
    vmbackup::RetentionPolicy policy;
    policy.keep_last = opts->keep_last;
    policy.keep_hourly = opts->keep_hourly;
    policy.keep_daily = opts->keep_daily;
    policy.keep_weekly = opts->keep_weekly;
    policy.keep_monthly = opts->keep_monthly;
    policy.keep_yearly = opts->keep_yearly;
    vmbackup::ForgetOptions fo;
    if (opts->vm_name != nullptr) fo.vm_name = opts->vm_name;
    if (opts->vm_namespace != nullptr) fo.vm_namespace = opts->vm_namespace;
    fo.dry_run = opts->dry_run != 0;
    StatusOr<vmbackup::ForgetResult> r = target->target->Forget(policy, fo);
    if (!r.ok()) return r.status();
    vmbackup::ordered_json j;
    j["dry_run"] = fo.dry_run;
    j["keep"] = vmbackup::ordered_json::array();
    for (const auto& k : r->decision.keep)
      j["keep"].push_back({{"name", k.name}, {"reasons", k.reasons}});
    j["forget"] = r->decision.forget;
    j["deleted"] = r->deleted;
    *out = vmbackup::Dup(vmbackup::Dump(j));
    return Status::Ok();
  });
}

int vmb_gc_options_init(vmb_gc_options* opts, unsigned int version, vmb_error** error) {
  return Guard(error, [&]() -> Status {
    if (opts == nullptr) return NullArgument("vmb_gc_options_init", "opts");
    if (version < 1 || version > VMB_GC_OPTIONS_VERSION)
      return vmbackup::BadVersion("vmb_gc_options", version, VMB_GC_OPTIONS_VERSION);
    const vmb_gc_options defaults VMB_GC_OPTIONS_INIT;
    if (version == 1) {
      // A version 1 caller's struct ends before max_unused_percent: never write it there.
      std::memcpy(static_cast<void*>(opts), &defaults,
                  offsetof(vmb_gc_options, max_unused_percent));
      opts->version = 1;
    } else {
      *opts = defaults;
    }
    return Status::Ok();
  });
}

int vmb_target_gc(char** out, vmb_target* target, const vmb_gc_options* opts, vmb_error** error) {
  if (out != nullptr) *out = nullptr;
  return Guard(error, [&]() -> Status {
    if (out == nullptr) return NullArgument("vmb_target_gc", "out");
    if (target == nullptr) return NullArgument("vmb_target_gc", "target");
    vmbackup::GcOptions go;
    if (opts != nullptr) {
      if (opts->version < 1 || opts->version > VMB_GC_OPTIONS_VERSION)
        return vmbackup::BadVersion("vmb_gc_options", opts->version, VMB_GC_OPTIONS_VERSION);
      go.dry_run = opts->dry_run != 0;
      go.grace_seconds = opts->grace_seconds;
      go.lease_expiry_seconds = opts->lease_expiry_seconds;
      go.repack = opts->repack != 0;
      // A version 1 caller's struct ends before max_unused_percent: never read it there.
      if (opts->version >= 2) go.max_unused_percent = opts->max_unused_percent;
      if (opts->restore_dir_count > 0 && opts->restore_dirs == nullptr)
        return NullArgument("vmb_target_gc", "opts->restore_dirs");
      for (size_t i = 0; i < opts->restore_dir_count; ++i) {
        if (opts->restore_dirs[i] == nullptr)
          return NullArgument("vmb_target_gc", "opts->restore_dirs[i]");
        go.restore_dirs.push_back(opts->restore_dirs[i]);
      }
      if (opts->progress != nullptr) {
        vmb_gc_progress_cb cb = opts->progress;
        void* payload = opts->progress_payload;
        go.progress = [cb, payload](const vmbackup::GcProgress& p) noexcept {
          return cb(p.phase.c_str(), p.done, p.total, payload) == 0;
        };
      }
    }
    StatusOr<vmbackup::GcReport> r = target->target->CollectGarbage(go);
    if (!r.ok()) return r.status();
    *out = vmbackup::Dup(vmbackup::GcReportToJson(*r));
    return Status::Ok();
  });
}

// ---- backups ------------------------------------------------------------------------------------

int vmb_backup_options_init(vmb_backup_options* opts, unsigned int version, vmb_error** error) {
  return Guard(error, [&]() -> Status {
    if (opts == nullptr) return NullArgument("vmb_backup_options_init", "opts");
    if (version < 1 || version > VMB_BACKUP_OPTIONS_VERSION) {
      return vmbackup::BadVersion("vmb_backup_options", version, VMB_BACKUP_OPTIONS_VERSION);
    }
    const vmb_backup_options defaults VMB_BACKUP_OPTIONS_INIT;
    if (version < VMB_BACKUP_OPTIONS_VERSION) {
      // The caller's struct is an older layout: write only its fields.
      std::memcpy(static_cast<void*>(opts), &defaults,
                  version == 1   ? offsetof(vmb_backup_options, hash_every_block)
                  : version == 2 ? offsetof(vmb_backup_options, freeze)
                                 : offsetof(vmb_backup_options, freeze_timeout_ms));
      opts->version = version;
    } else {
      *opts = defaults;
    }
    return Status::Ok();
  });
}

int vmb_backup_run(char** out, vmb_target* target, const vmb_backup_options* opts,
                   vmb_error** error) {
  if (out != nullptr) *out = nullptr;
  return Guard(error, [&]() -> Status {
    if (target == nullptr) return NullArgument("vmb_backup_run", "target");
    StatusOr<vmbackup::BackupSpec> spec = vmbackup::ToBackupSpec(opts);
    if (!spec.ok()) return spec.status();
    auto job = vmbackup::BackupJob::Create(target->target, std::move(spec).value());
    if (!job.ok()) return job.status();
    Status s = (*job)->Run();
    if (!s.ok()) return s;
    if (out != nullptr) {
      StatusOr<vmbackup::BackupInfo> info = (*job)->result();
      if (!info.ok()) return info.status();
      *out = vmbackup::Dup(vmbackup::Dump(vmbackup::ToJson(*info)));
    }
    return Status::Ok();
  });
}

int vmb_backup_start(vmb_backup** out, vmb_target* target, const vmb_backup_options* opts,
                     vmb_error** error) {
  if (out != nullptr) *out = nullptr;
  return Guard(error, [&]() -> Status {
    if (out == nullptr) return NullArgument("vmb_backup_start", "out");
    if (target == nullptr) return NullArgument("vmb_backup_start", "target");
    StatusOr<vmbackup::BackupSpec> spec = vmbackup::ToBackupSpec(opts);
    if (!spec.ok()) return spec.status();
    auto job = vmbackup::BackupJob::Create(target->target, std::move(spec).value());
    if (!job.ok()) return job.status();
    auto handle = std::make_unique<vmb_backup>(std::move(job).value());
    Status s = handle->Start();
    if (!s.ok()) return s;
    *out = handle.release();
    return Status::Ok();
  });
}

int vmb_backup_wait(vmb_backup* job, vmb_error** error) {
  return vmbackup::WaitJob<vmbackup::BackupJob>(job, std::nullopt, error);
}

int vmb_backup_wait_timeout(vmb_backup* job, uint32_t timeout_ms, vmb_error** error) {
  return vmbackup::WaitJob<vmbackup::BackupJob>(job, std::chrono::milliseconds(timeout_ms), error);
}

int vmb_backup_on_done(vmb_backup* job, vmb_done_cb cb, void* payload, vmb_error** error) {
  return vmbackup::OnDoneJob<vmbackup::BackupJob>(job, cb, payload, error);
}

void vmb_backup_cancel(vmb_backup* job) {
  if (job != nullptr) job->job().Cancel();
}

int vmb_backup_state(const vmb_backup* job) {
  if (job == nullptr) return -1;
  return static_cast<int>(job->job().state());
}

int vmb_backup_progress(vmb_progress* out, const vmb_backup* job, vmb_error** error) {
  return Guard(error, [&]() -> Status {
    if (out == nullptr) return NullArgument("vmb_backup_progress", "out");
    if (job == nullptr) return NullArgument("vmb_backup_progress", "job");
    vmbackup::ToC(job->job().progress(), out);
    return Status::Ok();
  });
}

const char* vmb_backup_name(const vmb_backup* job) {
  if (job == nullptr) return nullptr;
  return job->job().name().c_str();
}

int vmb_backup_result(char** out, const vmb_backup* job, vmb_error** error) {
  if (out != nullptr) *out = nullptr;
  return Guard(error, [&]() -> Status {
    if (out == nullptr) return NullArgument("vmb_backup_result", "out");
    if (job == nullptr) return NullArgument("vmb_backup_result", "job");
    StatusOr<vmbackup::BackupInfo> info = job->job().result();
    if (!info.ok()) return info.status();
    *out = vmbackup::Dup(vmbackup::Dump(vmbackup::ToJson(*info)));
    return Status::Ok();
  });
}

void vmb_backup_free(vmb_backup* job) { delete job; }

// ---- restores -----------------------------------------------------------------------------------

int vmb_restore_options_init(vmb_restore_options* opts, unsigned int version, vmb_error** error) {
  return Guard(error, [&]() -> Status {
    if (opts == nullptr) return NullArgument("vmb_restore_options_init", "opts");
    if (version != 1 && version != VMB_RESTORE_OPTIONS_VERSION) {
      return vmbackup::BadVersion("vmb_restore_options", version, VMB_RESTORE_OPTIONS_VERSION);
    }
    const vmb_restore_options defaults VMB_RESTORE_OPTIONS_INIT;
    if (version == 1) {
      // The caller's struct is the version 1 layout: write only its fields.
      std::memcpy(opts, &defaults, offsetof(vmb_restore_options, file_mode));
      opts->version = 1;
    } else {
      *opts = defaults;
    }
    return Status::Ok();
  });
}

int vmb_restore_run(vmb_target* target, const vmb_restore_options* opts, vmb_error** error) {
  return Guard(error, [&]() -> Status {
    if (target == nullptr) return NullArgument("vmb_restore_run", "target");
    StatusOr<vmbackup::RestoreSpec> spec = vmbackup::ToRestoreSpec(opts);
    if (!spec.ok()) return spec.status();
    auto plan = vmbackup::RestorePlan::Create(target->target, std::move(spec).value());
    if (!plan.ok()) return plan.status();
    return (*plan)->Run();
  });
}

int vmb_restore_start(vmb_restore** out, vmb_target* target, const vmb_restore_options* opts,
                      vmb_error** error) {
  if (out != nullptr) *out = nullptr;
  return Guard(error, [&]() -> Status {
    if (out == nullptr) return NullArgument("vmb_restore_start", "out");
    if (target == nullptr) return NullArgument("vmb_restore_start", "target");
    StatusOr<vmbackup::RestoreSpec> spec = vmbackup::ToRestoreSpec(opts);
    if (!spec.ok()) return spec.status();
    auto plan = vmbackup::RestorePlan::Create(target->target, std::move(spec).value());
    if (!plan.ok()) return plan.status();
    auto handle = std::make_unique<vmb_restore>(std::move(plan).value());
    Status s = handle->Start();
    if (!s.ok()) return s;
    *out = handle.release();
    return Status::Ok();
  });
}

int vmb_restore_wait(vmb_restore* job, vmb_error** error) {
  return vmbackup::WaitJob<vmbackup::RestorePlan>(job, std::nullopt, error);
}

int vmb_restore_wait_timeout(vmb_restore* job, uint32_t timeout_ms, vmb_error** error) {
  return vmbackup::WaitJob<vmbackup::RestorePlan>(job, std::chrono::milliseconds(timeout_ms),
                                                  error);
}

int vmb_restore_on_done(vmb_restore* job, vmb_done_cb cb, void* payload, vmb_error** error) {
  return vmbackup::OnDoneJob<vmbackup::RestorePlan>(job, cb, payload, error);
}

void vmb_restore_cancel(vmb_restore* job) {
  if (job != nullptr) job->job().Cancel();
}

int vmb_restore_state(const vmb_restore* job) {
  if (job == nullptr) return -1;
  return static_cast<int>(job->job().state());
}

int vmb_restore_progress(vmb_progress* out, const vmb_restore* job, vmb_error** error) {
  return Guard(error, [&]() -> Status {
    if (out == nullptr) return NullArgument("vmb_restore_progress", "out");
    if (job == nullptr) return NullArgument("vmb_restore_progress", "job");
    vmbackup::ToC(job->job().progress(), out);
    return Status::Ok();
  });
}

int vmb_restore_destinations(char** out, const vmb_restore* job, vmb_error** error) {
  if (out != nullptr) *out = nullptr;
  return Guard(error, [&]() -> Status {
    if (out == nullptr) return NullArgument("vmb_restore_destinations", "out");
    if (job == nullptr) return NullArgument("vmb_restore_destinations", "job");
    vmbackup::ordered_json j = vmbackup::ordered_json::array();
    for (const vmbackup::VolumeDestination& d : job->job().destinations()) {
      vmbackup::ordered_json e;
      e["volume"] = d.volume;
      e["path"] = d.path;
      j.push_back(std::move(e));
    }
    *out = vmbackup::Dup(vmbackup::Dump(j));
    return Status::Ok();
  });
}

void vmb_restore_free(vmb_restore* job) { delete job; }

}  // extern "C"
