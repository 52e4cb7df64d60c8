/* The C ABI of vmbackup: back up VM volumes to a target (local directory, S3 bucket, NFS export),
 * list the backups stored there and restore them.
 *
 * This header is plain C (C99 or later) and also compiles as C++. It wraps the C++ API in
 * <vmbackup/vmbackup.h>; see docs/c_api.md for a tutorial and the JSON schemas.
 *
 * Conventions
 *   - Every function that can fail returns an int: 0 (VMB_OK) on success or one of the stable
 * negative codes of vmb_code. The codes mirror vmbackup::StatusCode: VMB_EX ==
 * -(int)StatusCode::kX. Numbers never change within a major version.
 *   - Every such function takes an optional trailing `vmb_error** error`. When `error` is not NULL,
 *     *error is set to NULL on success and to a new vmb_error (code, message, retryable flag) on
 *     failure; release it with vmb_error_free(). Passing NULL is always allowed. There is no
 *     thread-local "last error".
 *   - Out-parameters come first. Objects returned through an out-parameter belong to the caller:
 *     handles are released with their vmb_*_free() function (which accepts NULL), strings with
 *     vmb_free(). On failure out-parameters are set to NULL. Pointers returned directly (const
 * char* results) are borrowed and stay valid as long as the object they came from.
 *   - Option structs start with `unsigned int version`. Initialize them with the VMB_*_OPTIONS_INIT
 *     macro or vmb_*_options_init(); structs only ever grow at the end, and a version this library
 *     does not know is rejected with VMB_EINVAL. Passing NULL options means "all defaults".
 *   - Strings are NUL-terminated UTF-8. Large, evolving records (backup records, listings) cross
 * the ABI as JSON documents whose schema docs/c_api.md describes.
 *
 * Threads
 *   All functions may be called from any thread. A vmb_target may be used by several threads and
 *   several jobs at once. A vmb_backup / vmb_restore handle may be waited on and cancelled from any
 *   thread, but must be freed exactly once, after every other call on it has returned. Progress
 *   callbacks run on a library thread, never concurrently with themselves for one job, and never
 *   while the library holds an internal lock.
 */
#ifndef VMBACKUP_C_H_
#define VMBACKUP_C_H_

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && !defined(VMB_STATIC)
#if defined(VMB_BUILDING_C)
#define VMB_EXTERN __declspec(dllexport)
#else
#define VMB_EXTERN __declspec(dllimport)
#endif
#elif defined(__GNUC__)
#define VMB_EXTERN __attribute__((visibility("default")))
#else
#define VMB_EXTERN
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Versions -------------------------------------------------------------------------------- */

/* Compile-time version of this header. Compare with vmb_version() for the library actually loaded.
 */
#define VMB_VERSION_MAJOR 0
#define VMB_VERSION_MINOR 1
#define VMB_VERSION_PATCH 0
#define VMB_VERSION_NUMBER (VMB_VERSION_MAJOR * 10000 + VMB_VERSION_MINOR * 100 + VMB_VERSION_PATCH)

/* Returns the version of the loaded library as major * 10000 + minor * 100 + patch. Never fails. */
VMB_EXTERN int vmb_version(void);

/* Returns the version of the loaded library as "major.minor.patch". The string is static (borrowed,
 * never freed). Never fails. */
VMB_EXTERN const char* vmb_version_string(void);

/* ---- Errors ---------------------------------------------------------------------------------- */

/* Return codes. 0 is success; the negative values are -(vmbackup::StatusCode). Retry advice:
 * VMB_EUNAVAILABLE, VMB_EDEADLINE, VMB_EABORTED and VMB_ERESOURCE may succeed when retried
 * unchanged after a delay (vmb_error_retryable() says so); VMB_EPRECONDITION needs the system fixed
 * first; VMB_EDATALOSS means stored data is corrupt and must not be retried. */
typedef enum vmb_code {
  VMB_OK = 0,
  VMB_ECANCELLED = -1,        /* the caller cancelled (progress callback, vmb_*_cancel()) */
  VMB_EUNKNOWN = -2,          /* an error without a better code */
  VMB_EINVAL = -3,            /* invalid argument; the message names the field */
  VMB_EDEADLINE = -4,         /* a deadline expired */
  VMB_ENOTFOUND = -5,         /* backup, volume, file, bucket or export not found */
  VMB_EEXISTS = -6,           /* backup name or destination file already exists */
  VMB_EPERM = -7,             /* permission denied */
  VMB_ERESOURCE = -8,         /* resource exhausted: target or disk full, out of memory */
  VMB_EPRECONDITION = -9,     /* failed precondition: the system is not in a state for the call */
  VMB_EABORTED = -10,         /* a concurrency conflict; retry the whole sequence */
  VMB_ERANGE = -11,           /* out of range */
  VMB_EUNIMPLEMENTED = -12,   /* not supported by this build */
  VMB_EINTERNAL = -13,        /* a bug in the library */
  VMB_EUNAVAILABLE = -14,     /* transient: target unreachable or busy; retry */
  VMB_EDATALOSS = -15,        /* stored data is corrupt (digest or checksum mismatch) */
  VMB_EUNAUTHENTICATED = -16, /* the credentials were rejected */
  VMB_PENDING = 1             /* not an error: vmb_*_wait_timeout() timed out, the job still runs */
} vmb_code;

/* A detailed error: code, message and retryable flag. Owned by the caller. */
typedef struct vmb_error vmb_error;

/* Returns the error's code (a negative vmb_code). REQUIRES: error != NULL. */
VMB_EXTERN int vmb_error_code(const vmb_error* error);

/* Returns the human-readable message (never NULL, never contains secrets). Borrowed: valid until
 * vmb_error_free(error). REQUIRES: error != NULL. */
VMB_EXTERN const char* vmb_error_message(const vmb_error* error);

/* Returns 1 if the failed call may succeed when retried unchanged after a delay, else 0.
 * REQUIRES: error != NULL. */
VMB_EXTERN int vmb_error_retryable(const vmb_error* error);

/* Releases an error. Accepts NULL. */
VMB_EXTERN void vmb_error_free(vmb_error* error);

/* Returns the upper-case name of a return code ("NOT_FOUND", "OK", "PENDING"), or "UNKNOWN_CODE".
 * Static string (borrowed). */
VMB_EXTERN const char* vmb_error_code_name(int code);

/* Releases memory the library returned through an out-parameter (strings, JSON documents).
 * Accepts NULL. Do not use free() for it. */
VMB_EXTERN void vmb_free(void* ptr);

/* ---- Progress -------------------------------------------------------------------------------- */

typedef enum vmb_phase {
  VMB_PHASE_PREPARING = 0,    /* opening the target, loading indexes, snapshotting volumes */
  VMB_PHASE_TRANSFERRING = 1, /* reading / hashing / uploading, or fetching / writing */
  VMB_PHASE_FINALIZING = 2,   /* flushing packs, publishing the record, fsync + rename */
  VMB_PHASE_DONE = 3          /* finished (successfully or not) */
} vmb_phase;

/* A snapshot of a job's progress. Byte counts are cumulative since the job started. The library
 * allocates it; fields are only ever added at the end. */
typedef struct vmb_progress {
  int phase;              /* a vmb_phase */
  uint64_t bytes_total;   /* logical bytes of all volumes involved */
  uint64_t bytes_scanned; /* logical bytes dealt with so far (read, skipped as hole, unchanged) */
  uint64_t bytes_read;    /* bytes read from the source volume (backup) or target (restore) */
  uint64_t bytes_new;     /* backup: raw bytes of blocks not yet on the target */
  uint64_t bytes_reused;  /* backup: raw bytes of blocks already on the target */
  uint64_t bytes_written; /* bytes written to the target (backup, compressed) or volume (restore) */
  uint64_t blocks_total;  /* blocks of all volumes */
  uint64_t blocks_done;   /* blocks dealt with so far */
  double elapsed_seconds; /* since the job started */
  double bytes_per_second; /* bytes_scanned / elapsed_seconds */
  double eta_seconds;      /* estimated time to completion; -1 while unknown */
} vmb_progress;

/* Progress callback. `progress` is borrowed for the duration of the call. Return 0 to continue, any
 * other value to cancel the job (it then ends with VMB_ECANCELLED and, for a backup, writes no
 * record). Runs on a library thread; must not free, wait on or cancel-and-free the job it reports
 * on. */
typedef int (*vmb_progress_cb)(const vmb_progress* progress, void* payload);

/* ---- Job states ------------------------------------------------------------------------------ */

typedef enum vmb_job_state {
  VMB_JOB_PENDING = 0,
  VMB_JOB_IN_PROGRESS = 1,
  VMB_JOB_READY = 2, /* finished successfully */
  VMB_JOB_ERROR = 3  /* finished with an error (including cancellation) */
} vmb_job_state;

/* ---- Targets --------------------------------------------------------------------------------- */

/* An open backup target. Thread-safe; see the file comment. */
typedef struct vmb_target vmb_target;

/* ---- Runtime ----------------------------------------------------------------------------------- */

/* The threads and shared bounds every target and job runs on (vmbackup::Runtime; see
 * docs/threading.md). Optional: targets opened without one use the process-wide default runtime.
 * A host that runs many jobs at once may create one to size its pools and bounds. */
typedef struct vmb_runtime vmb_runtime;

typedef struct vmb_runtime_options {
  unsigned int version; /* VMB_RUNTIME_OPTIONS_VERSION */
  /* Threads for CPU work (hashing, compression). Default 0 = one per core. */
  int worker_threads;
  /* Threads for blocking file I/O and restore tasks. Default 0 = 4. */
  int blocking_threads;
  /* Threads that drive network I/O and timers. Default 0 = 1. */
  int io_threads;
  /* Backups and restores that run at once; jobs started beyond it wait their turn. Default 0 = 4. */
  int job_threads;
  /* Pack bytes being uploaded at once by all the backups of this runtime together. Default 0 =
   * 256 MiB. */
  uint64_t max_in_flight_bytes;
} vmb_runtime_options;

#define VMB_RUNTIME_OPTIONS_VERSION 1
#define VMB_RUNTIME_OPTIONS_INIT \
  { VMB_RUNTIME_OPTIONS_VERSION, 0, 0, 0, 0, 0 }

/* Creates a runtime with its own threads. `opts` may be NULL (defaults). On success *out is a new
 * handle, released with vmb_runtime_free(). Returns 0; VMB_EINVAL if out is NULL, the options'
 * version is unknown, or a count is negative or above 1024. */
VMB_EXTERN int vmb_runtime_create(vmb_runtime** out, const vmb_runtime_options* opts,
                                  vmb_error** error);

/* Releases a runtime handle. Accepts NULL. Targets and jobs that use the runtime keep it alive; its
 * threads end when the last of them is freed. Never call it from a progress or completion callback
 * of a job on this runtime when that is the last reference (the threads cannot join themselves). */
VMB_EXTERN void vmb_runtime_free(vmb_runtime* runtime);

/* Every thread the runtime started (io + workers + blocking + jobs), or 0 if runtime is NULL. */
VMB_EXTERN int vmb_runtime_thread_count(const vmb_runtime* runtime);

typedef struct vmb_target_options {
  unsigned int version; /* VMB_TARGET_OPTIONS_VERSION */
  /* Initialize a repository when the target holds none. Default 1. When 0, opening an empty target
   * fails with VMB_ENOTFOUND. */
  int create_if_missing;
  /* Block size of a newly initialized repository: a power of two from 64 KiB to 16 MiB.
   * Default 0 = 256 KiB. Ignored for existing repositories. */
  uint32_t block_size;
  /* Target size of a pack object. Default 0 = 32 MiB. */
  uint32_t pack_size;
  /* Version 2. Directory where this host keeps its own secrets for backups (the block fingerprint
   * key; never written to the target), created 0700 when missing. Default NULL =
   * $VMBACKUP_STATE_DIR, else /var/lib/vmbackup as root, else ~/.local/state/vmbackup. When it
   * cannot be used, backups hash every block (slower, never wrong). */
  const char* state_dir;
  /* Version 3. The runtime the target and its jobs run on (borrowed: the target keeps its own
   * reference). Default NULL = the process-wide default runtime. */
  const vmb_runtime* runtime;
  /* Version 4 (docs/encryption.md). Encryption of a repository this call initializes:
   * "aes-256-gcm" or "none"; ignored for an existing repository. Default NULL = "aes-256-gcm" when
   * a passphrase or raw key is given, else "none". */
  const char* encryption;
  /* The secret that opens an encrypted repository (and protects the first key slot of a new one):
   * a NUL-terminated passphrase, or a raw 256-bit key (raw_key_len must be 32). Not both. Giving
   * one for a repository that is not encrypted fails with VMB_EPRECONDITION. Default NULL. */
  const char* passphrase;
  const uint8_t* raw_key;
  size_t raw_key_len;
  /* A note stored with the first key slot of a new encrypted repository (at most 200 bytes). */
  const char* key_label;
} vmb_target_options;

/* Versions 1 to 3 are still accepted: the same struct without state_dir (1), runtime (1, 2) or the
 * encryption fields (1 to 3). */
#define VMB_TARGET_OPTIONS_VERSION 4
#define VMB_TARGET_OPTIONS_INIT \
  { VMB_TARGET_OPTIONS_VERSION, 1, 0, 0, NULL, NULL, NULL, NULL, NULL, 0, NULL }

/* Sets *opts to the defaults of `version` (VMB_TARGET_OPTIONS_INIT).
 * Returns 0; VMB_EINVAL if opts is NULL or `version` is unknown to this library. */
VMB_EXTERN int vmb_target_options_init(vmb_target_options* opts, unsigned int version,
                                       vmb_error** error);

/* Opens (and, with create_if_missing, initializes) the repository at the target described by
 * `config_json`, Harvester's backup-target setting, e.g.
 *   {"type": "file", "endpoint": "/var/lib/vmbackup"}
 *   {"type": "s3", "endpoint": "https://s3.example", "bucketName": "b", "bucketRegion":
 * "us-east-1", "accessKeyId": "...", "secretAccessKey": "..."}
 *   {"type": "nfs", "endpoint": "nfs://server:/export/path"}
 * `opts` may be NULL (defaults). On success *out is a new handle, released with vmb_target_free().
 * Returns 0, or:
 *   VMB_EINVAL         malformed JSON, missing/unknown/mistyped field (the message names it),
 * unknown "type", bad options, or out / config_json NULL; VMB_ENOTFOUND      the directory / bucket
 * / export does not exist, or no repository and !create_if_missing; VMB_EPERM          the target
 * may not be read or written, or the repository is encrypted and no passphrase / key was given or
 * none opens a key slot; VMB_EUNAVAILABLE   the server could not be reached; VMB_EPRECONDITION
 * the repository has a newer format than this library reads, or a passphrase / key was given for
 * a repository that is not encrypted; VMB_EDATALOSS      the repository
 * descriptor is corrupt; VMB_EUNIMPLEMENTED a target type this build does not support. */
VMB_EXTERN int vmb_target_open(vmb_target** out, const char* config_json,
                               const vmb_target_options* opts, vmb_error** error);

/* Releases a target handle. Accepts NULL. Jobs started on the target keep it alive until they are
 * freed, so this may be called while they run. */
VMB_EXTERN void vmb_target_free(vmb_target* target);

/* Health check: writes, reads back and deletes a probe object.
 * Returns 0 when the target is usable; VMB_EINVAL if target is NULL; otherwise the store's error
 * (VMB_EPERM, VMB_ERESOURCE, VMB_EUNAVAILABLE, ...). */
VMB_EXTERN int vmb_target_test(const vmb_target* target, vmb_error** error);

/* Lists every backup on the target. On success *out is a caller-owned JSON document (vmb_free)
 *   {"backups": [<backup record>, ...], "damaged": ["name: reason", ...]}
 * with backups sorted by created_at, oldest first, and one "damaged" line per record that could not
 * be read (one damaged record never hides the others). See docs/c_api.md for the record schema.
 * Returns 0; VMB_EINVAL for NULL arguments; otherwise the store's error (VMB_EUNAVAILABLE, ...). */
VMB_EXTERN int vmb_target_list_backups(char** out, const vmb_target* target, vmb_error** error);

/* Reads the record of backup `name`. On success *out is a caller-owned JSON backup record
 * (vmb_free; schema in docs/c_api.md).
 * Returns 0; VMB_ENOTFOUND if there is no such backup; VMB_EDATALOSS if the record is damaged;
 * VMB_EINVAL for NULL arguments; otherwise the store's error. */
VMB_EXTERN int vmb_target_get_backup(char** out, const vmb_target* target, const char* name,
                                     vmb_error** error);

/* Deletes the record of backup `name` and its volume indexes. Blocks no other backup uses stay on
 * the target until garbage collection. Returns 0; VMB_ENOTFOUND if there is no such backup;
 * VMB_EINVAL for NULL arguments; otherwise the store's error. */
VMB_EXTERN int vmb_target_delete_backup(vmb_target* target, const char* name, vmb_error** error);

/* Returns the repository's block size in bytes, or 0 if target is NULL. */
VMB_EXTERN uint32_t vmb_target_block_size(const vmb_target* target);

/* ---- Keys of an encrypted repository (docs/encryption.md) ------------------------------------- */

/* "aes-256-gcm" or "none" (static strings, never freed), or NULL if target is NULL. */
VMB_EXTERN const char* vmb_target_encryption(const vmb_target* target);

/* Adds a key slot that opens the repository with a NUL-terminated `passphrase`, or with the raw
 * 256-bit key raw_key[0, raw_key_len) (raw_key_len 32); exactly one of them. `label` (may be NULL)
 * is stored with it. Slots wrap one master key: adding, removing or rotating (add, then remove the
 * old) rewrites no data. On success *id_out (may be NULL) is the new slot's id (vmb_free).
 * Returns 0; VMB_EINVAL for a NULL target, neither or both secrets, a raw key not of 32 bytes or a
 * label over 200 bytes; VMB_EPRECONDITION if the repository is not encrypted; the store's error. */
VMB_EXTERN int vmb_target_add_key(char** id_out, vmb_target* target, const char* passphrase,
                                  const uint8_t* raw_key, size_t raw_key_len, const char* label,
                                  vmb_error** error);

/* Lists the key slots. On success *out is a caller-owned JSON document (vmb_free)
 *   {"keys": [{"id", "kind": "passphrase"|"raw", "created_at", "host", "label", "current"}, ...],
 *    "damaged": ["reason", ...]}
 * oldest first; "current" is true for the slot this handle was opened with.
 * Returns 0; VMB_EINVAL for NULL arguments; VMB_EPRECONDITION if the repository is not encrypted;
 * the store's error. */
VMB_EXTERN int vmb_target_list_keys(char** out, const vmb_target* target, vmb_error** error);

/* Removes key slot `id`. Returns 0; VMB_EINVAL for NULL arguments or a malformed id;
 * VMB_ENOTFOUND if there is no such slot; VMB_EPRECONDITION for the slot this handle was opened
 * with (open the target with another key first) or an unencrypted repository; the store's error. */
VMB_EXTERN int vmb_target_remove_key(vmb_target* target, const char* id, vmb_error** error);

/* ---- Verify and repair ------------------------------------------------------------------------ */

/* How vmb_target_verify() and vmb_target_repair() check the target. All pointers are borrowed for
 * the duration of the call. */
typedef struct vmb_verify_options {
  unsigned int version; /* VMB_VERIFY_OPTIONS_VERSION */
  /* Non-zero: fetch every referenced block and check its SHA-256. Default 0: the fast checks only
   * (records, volume indexes, pack indexes, pack sizes). */
  int read_data;
  /* With read_data: which packs to read, as a fraction ("0.1"), a percentage ("10%") or a part
   * "n/m" (parts 1..m of m read every pack once). Default NULL = every pack. */
  const char* read_data_subset;
  /* Packs read at once with read_data (about 32 MiB of memory each). Default 0 = 8. */
  int parallel_reads;
  /* At most this many bad blocks are listed in the report ("bad_block_count" counts them all).
   * Default 10000; 0 = no limit. */
  uint64_t max_bad_blocks_listed;
  /* Progress callback and its payload (phase PREPARING while indexes are read, TRANSFERRING while
   * blocks are read: bytes_total / bytes_read, blocks_total / blocks_done). Runs on the calling
   * thread. Non-zero cancels (VMB_ECANCELLED). Default NULL = none. */
  vmb_progress_cb progress;
  void* progress_payload;
  /* Minimum time between two progress reports, in ms. Default 200. */
  int progress_interval_ms;
  /* vmb_target_repair() only: non-zero reports the repairs without writing or deleting anything.
   * Default 0. */
  int dry_run;
} vmb_verify_options;

#define VMB_VERIFY_OPTIONS_VERSION 1
#define VMB_VERIFY_OPTIONS_INIT \
  { VMB_VERIFY_OPTIONS_VERSION, 0, NULL, 0, 10000, NULL, NULL, 200, 0 }

/* Sets *opts to the defaults of `version` (VMB_VERIFY_OPTIONS_INIT).
 * Returns 0; VMB_EINVAL if opts is NULL or `version` is unknown to this library. */
VMB_EXTERN int vmb_verify_options_init(vmb_verify_options* opts, unsigned int version,
                                       vmb_error** error);

/* Checks the backups on the target and changes nothing. On success *out is a caller-owned JSON
 * report (vmb_free; schema in docs/c_api.md, "Verify report") whose "ok" is false when damage was
 * found: damage is in the report, not in the return code. `opts` may be NULL (fast checks).
 * Returns 0, or: VMB_EINVAL bad options (the message names the field) or NULL out / target;
 * VMB_ECANCELLED the progress callback returned non-zero; otherwise the store's error when the
 * target could not be listed or read (VMB_EUNAVAILABLE, VMB_EPERM, ...). Blocks the calling
 * thread; may run while jobs use the target. */
VMB_EXTERN int vmb_target_verify(char** out, const vmb_target* target,
                                 const vmb_verify_options* opts, vmb_error** error);

/* Verifies (as vmb_target_verify with `opts`), then repairs damaged packs: rebuilds damaged or
 * missing pack indexes from their pack's trailer after checking every block, copies the good
 * blocks of packs with bad blocks to new packs, and removes the indexes of missing packs, so lost
 * blocks are stored again by the next backup. With opts->dry_run nothing is changed. On success
 * *out is a caller-owned JSON report (vmb_free; docs/c_api.md, "Repair report") listing the
 * actions and the backups that still cannot be restored ("unrestorable_backups"). A repair of one
 * pack that fails is reported in its action. Returns the codes of vmb_target_verify(). Two repairs
 * of one target must not run at once. */
VMB_EXTERN int vmb_target_repair(char** out, vmb_target* target, const vmb_verify_options* opts,
                                 vmb_error** error);

/* ---- Maintenance: retention and garbage collection ------------------------------------------- */

/* A retention policy and its scope (vmbackup::RetentionPolicy + ForgetOptions). Per VM identity
 * (namespace + name), newest first, a backup is kept when any rule keeps it: keep_last keeps the N
 * newest; keep_hourly / daily / weekly (ISO 8601) / monthly / yearly keep the newest backup of each
 * of the N newest such periods (UTC) that hold backups (restic's semantics; docs/c_api.md). */
typedef struct vmb_forget_options {
  unsigned int version; /* VMB_FORGET_OPTIONS_VERSION */
  int keep_last;        /* default 0 (rule off) */
  int keep_hourly;      /* default 0 */
  int keep_daily;       /* default 0 */
  int keep_weekly;      /* default 0 */
  int keep_monthly;     /* default 0 */
  int keep_yearly;      /* default 0 */
  /* Only this VM's backups (with vm_namespace, default ""). Default NULL = every VM. */
  const char* vm_name;
  const char* vm_namespace;
  /* Non-zero: decide and report, delete nothing. Default 0. */
  int dry_run;
} vmb_forget_options;

#define VMB_FORGET_OPTIONS_VERSION 1
#define VMB_FORGET_OPTIONS_INIT \
  { VMB_FORGET_OPTIONS_VERSION, 0, 0, 0, 0, 0, 0, NULL, NULL, 0 }

/* Sets *opts to the defaults of `version` (VMB_FORGET_OPTIONS_INIT).
 * Returns 0; VMB_EINVAL if opts is NULL or `version` is unknown to this library. */
VMB_EXTERN int vmb_forget_options_init(vmb_forget_options* opts, unsigned int version,
                                       vmb_error** error);

/* Applies the policy in `opts` and deletes every backup it does not keep (unless dry_run). Blocks
 * are reclaimed by vmb_target_gc() later. On success *out is a caller-owned JSON document
 * (vmb_free):
 *   {"dry_run": false, "keep": [{"name": "...", "reasons": ["last", "daily", ...]}, ...],
 *    "forget": ["name", ...], "deleted": ["name", ...]}
 * Returns 0; VMB_EINVAL for NULL out / target / opts, an unknown options version, or a policy
 * whose counts are all 0 or one negative (it would forget everything); otherwise the store's error
 * (the backups deleted before a failing deletion stay deleted; the message names them). */
VMB_EXTERN int vmb_target_forget(char** out, vmb_target* target, const vmb_forget_options* opts,
                                 vmb_error** error);

/* Garbage-collection progress: `phase` is "mark", "records", "indexes", "repack", "sweep" or "done"
 * (borrowed for the call); `done` of `total` items (total 0 = unknown). Runs on the thread that
 * called vmb_target_gc(), never under an internal lock. Return 0 to continue, non-zero to stop the
 * run after its current step (vmb_target_gc() then returns VMB_ECANCELLED). */
typedef int (*vmb_gc_progress_cb)(const char* phase, uint64_t done, uint64_t total, void* payload);

typedef struct vmb_gc_options {
  unsigned int version; /* VMB_GC_OPTIONS_VERSION */
  /* Non-zero: report what would be deleted; write and delete nothing. Default 0. */
  int dry_run;
  /* How long garbage must stay garbage, measured between GC runs on the GC hosts' clocks.
   * Default -1 = 24 h; 0 allowed (each step still takes one run more). */
  int64_t grace_seconds;
  /* Leases of backups older than this are left by killed jobs and ignored. Default -1 = 7 days. */
  int64_t lease_expiry_seconds;
  vmb_gc_progress_cb progress; /* default NULL */
  void* progress_payload;      /* passed to progress; default NULL */
  /* Directories of this host where restores write: files named "*.vmbackup-partial-*" in them,
   * left by killed restores and older than the grace (this host's clock), are deleted. Borrowed
   * for the call. Default NULL / 0. */
  const char* const* restore_dirs;
  size_t restore_dir_count;
  /* Non-zero: rewrite partly-live packs chosen by max_unused_percent once they were chosen for
   * the grace (their live blocks move to a new pack). Default 1. */
  int repack;
  /* Version 2. How much dead data partly-live packs may keep, in percent of the stored bytes of
   * all indexed packs after the run: the packs with the largest dead share are repacked until the
   * rest is within it. 0 repacks every pack with a dead block, 100 none. Default -1 = 10; outside
   * -1..100: VMB_EINVAL. */
  int max_unused_percent;
} vmb_gc_options;

#define VMB_GC_OPTIONS_VERSION 2
#define VMB_GC_OPTIONS_INIT \
  { VMB_GC_OPTIONS_VERSION, 0, -1, -1, NULL, NULL, NULL, 0, 1, -1 }

/* Sets *opts to the defaults of `version` (VMB_GC_OPTIONS_INIT).
 * Returns 0; VMB_EINVAL if opts is NULL or `version` is unknown to this library. */
VMB_EXTERN int vmb_gc_options_init(vmb_gc_options* opts, unsigned int version, vmb_error** error);

/* One garbage-collection run (docs/FORMAT.md "Garbage collection"; vmbackup::BackupTarget::
 * CollectGarbage). Safe while backups run anywhere. The first real run upgrades the repository so
 * that libraries before GC refuse it. `opts` may be NULL (defaults). On success *out is a
 * caller-owned JSON report (vmb_free; fields in docs/c_api.md), e.g.
 *   {"run": "...", "dry_run": false, "packs": 12, "dead_packs": 3, "packs_deleted": 0,
 *    "bytes_deleted": 0, "reclaimable_bytes": 100663296, "damaged": [], ...}
 * Returns 0; VMB_EINVAL for NULL out / target, an unknown options version or a grace or expiry
 * below -1; VMB_EPRECONDITION when another GC run holds the target's lock or the repository needs a
 * newer library; VMB_ECANCELLED when the progress callback stopped it; otherwise the store's error.
 */
VMB_EXTERN int vmb_target_gc(char** out, vmb_target* target, const vmb_gc_options* opts,
                             vmb_error** error);

/* ---- Backups --------------------------------------------------------------------------------- */

/* A volume: backup source (name, path of a file or block device) or restore destination (name of
 * the volume in the backup, destination path). The strings are borrowed for the duration of the
 * call. */
typedef struct vmb_volume {
  const char* name;
  const char* path;
} vmb_volume;

/* A host hook (freeze or thaw of a guest): returns 0 on success. */
typedef int (*vmb_hook_cb)(void* payload);

typedef enum vmb_vm_state {
  VMB_VM_UNKNOWN = 0, /* nobody said (a bare volume file) */
  VMB_VM_RUNNING = 1,
  VMB_VM_STOPPED = 2
} vmb_vm_state;

typedef enum vmb_snapshot_mode {
  VMB_SNAPSHOT_AUTO = 0,    /* reflink clone if the filesystem supports it, else direct read */
  VMB_SNAPSHOT_REFLINK = 1, /* reflink clone or fail with VMB_EPRECONDITION */
  VMB_SNAPSHOT_DIRECT = 2   /* always read the volume itself (the host keeps it quiet) */
} vmb_snapshot_mode;

/* What to back up. All pointers are borrowed for the duration of the call that takes the options
 * (vmb_backup_run / vmb_backup_start); the library copies what it keeps. */
typedef struct vmb_backup_options {
  unsigned int version; /* VMB_BACKUP_OPTIONS_VERSION */
  /* Backup name, unique on the target; [A-Za-z0-9._-], 1..200 chars. Default NULL = generated
   * ("<vm name or 'backup'>-<UTC yyyymmdd-hhmmss>-<4 hex>"; see vmb_backup_name()). */
  const char* name;
  /* Parent backup (base of host dirty maps). Default NULL = none. Deduplication against every block
   * on the target happens regardless. */
  const char* parent;
  /* The VM's metadata, a JSON object stored verbatim with the backup. Default NULL = "{}".
   * Must be NULL when vm_dir is set. */
  const char* vm_metadata_json;
  /* The volumes to back up. Default NULL / 0. Must be empty when vm_dir is set, else non-empty. */
  const vmb_volume* volumes;
  size_t volume_count;
  /* A VM directory holding "vm.json" ({"name": ..., "volumes": [{"name", "path"}, ...]}) that gives
   * both the metadata and the volumes (relative paths are relative to the directory).
   * Default NULL = use vm_metadata_json and volumes. */
  const char* vm_dir;
  /* Progress callback and its payload. Default NULL = none. */
  vmb_progress_cb progress;
  void* progress_payload;
  /* Minimum time between two progress reports, in ms. Default 200; 0 = report as often as possible.
   */
  int progress_interval_ms;
  /* How volumes are snapshotted (a vmb_snapshot_mode). Default VMB_SNAPSHOT_AUTO. */
  int snapshot_mode;
  /* Cap on bytes held in memory by the pipeline. Default 0 = 96 MiB. */
  uint64_t max_in_flight_bytes;
  /* Since version 2. 0 (default): a block whose keyed fingerprint equals the one the previous
   * backup of the same VM (or the parent) recorded at the same offset takes that backup's digest
   * without being hashed again; non-zero: hash every block read. */
  int hash_every_block;
  /* Since version 3. The guest's freeze window, one for all volumes: freeze(hook_payload) runs once
   * before the first volume's snapshot, thaw(hook_payload) once after the last (also when a
   * snapshot fails; for volumes read directly, not cloned, only when the backup ends, unless
   * thaw_early). Both run on a library thread, never under an internal lock; they must not wait for
   * or free this job. freeze returning non-zero fails the backup with VMB_EPRECONDITION before
   * anything is read (thaw is not called). thaw's result is ignored. The record says how long the
   * guest was frozen ("freeze_seconds") and each volume's "consistency". Default NULL = no hooks. */
  vmb_hook_cb freeze;
  vmb_hook_cb thaw;
  void* hook_payload;
  /* Since version 3. Non-zero: thaw right after the snapshots even when a volume is read directly
   * (its data is then of "unknown" consistency). Default 0. */
  int thaw_early;
  /* Since version 3. What the host knows of the VM (a vmb_vm_state). VMB_VM_RUNNING: a volume that
   * cannot be cloned (no reflink) and that no freeze keeps still for the whole backup fails the
   * backup with VMB_EPRECONDITION before anything is read, unless allow_inconsistent is non-zero;
   * VMB_VM_STOPPED: every volume is recorded "stopped". Default VMB_VM_UNKNOWN: volumes read
   * directly are recorded "unknown". */
  int vm_state;
  int allow_inconsistent; /* Since version 3. Default 0. */
  /* Since version 4. The freeze deadline: the most milliseconds from freeze's return to the last
   * volume's point-in-time snapshot; longer fails the backup with VMB_EDEADLINE after thawing (nothing
   * read or published). Default 60000; 0 = none. */
  int freeze_timeout_ms;
} vmb_backup_options;

/* Versions 1 (without hash_every_block and the hooks), 2 (without the hooks) and 3 (without
 * freeze_timeout_ms) are still accepted. */
#define VMB_BACKUP_OPTIONS_VERSION 4
#define VMB_BACKUP_OPTIONS_INIT                                                                  \
  {                                                                                              \
    VMB_BACKUP_OPTIONS_VERSION, NULL, NULL, NULL, NULL, 0, NULL, NULL, NULL, 200, 0, 0, 0, NULL, \
        NULL, NULL, 0, 0, 0, 60000                                                               \
  }

/* Sets *opts to the defaults of `version` (VMB_BACKUP_OPTIONS_INIT).
 * Returns 0; VMB_EINVAL if opts is NULL or `version` is unknown to this library. */
VMB_EXTERN int vmb_backup_options_init(vmb_backup_options* opts, unsigned int version,
                                       vmb_error** error);

/* A running or finished backup job. */
typedef struct vmb_backup vmb_backup;

/* Backs up and blocks until done. On success, if out is not NULL, *out is the caller-owned JSON
 * record of the new backup (vmb_free; schema in docs/c_api.md).
 * Returns 0, or:
 *   VMB_EINVAL        bad options (the message names the field: empty or duplicate volume names,
 *                     metadata not a JSON object, vm_dir together with volumes, unknown
 * version...); VMB_EEXISTS       a backup of that name exists on the target; VMB_ENOTFOUND     a
 * volume, the vm_dir's vm.json or the parent backup does not exist; VMB_EPERM         a volume is
 * unreadable; VMB_ERESOURCE     the target is full; VMB_EUNAVAILABLE  the target could not be
 * reached; VMB_ECANCELLED    the progress callback returned non-zero. A backup that fails leaves no
 * record on the target. */
VMB_EXTERN int vmb_backup_run(char** out, vmb_target* target, const vmb_backup_options* opts,
                              vmb_error** error);

/* Validates the options and starts the backup on the library's threads; returns at once.
 * On success *out is a new handle (vmb_backup_free) whose job runs until it ends or is cancelled.
 * Returns 0, or the validation errors of vmb_backup_run (VMB_EINVAL, VMB_EEXISTS, VMB_ENOTFOUND for
 * a missing vm.json). Errors found while running are reported by vmb_backup_wait(). */
VMB_EXTERN int vmb_backup_start(vmb_backup** out, vmb_target* target,
                                const vmb_backup_options* opts, vmb_error** error);

/* Blocks until the job ends and returns its final status: 0, or the codes of vmb_backup_run
 * (VMB_ECANCELLED after vmb_backup_cancel()). The status is kept on the handle: every later call
 * returns it again (with a new *error each time). VMB_EINVAL if job is NULL.
 * REQUIRES: not called from the job's own progress callback. */
VMB_EXTERN int vmb_backup_wait(vmb_backup* job, vmb_error** error);

/* Like vmb_backup_wait(), but gives up after timeout_ms milliseconds: returns VMB_PENDING (1, not
 * an error; *error set to NULL) if the job is still running then. */
VMB_EXTERN int vmb_backup_wait_timeout(vmb_backup* job, uint32_t timeout_ms, vmb_error** error);

/* Called once when a job ends, with its final status: `code` is 0 or a negative vmb_code (the
 * value vmb_*_wait() returns), `message` is "" on success, valid only during the call. Runs on a
 * library thread, or at once on the registering thread if the job had already ended. It must
 * return quickly, must not free the job and must not wait for it from there. */
typedef void (*vmb_done_cb)(int code, const char* message, void* payload);

/* Registers `cb` (with `payload`) to be called once when the job ends (see vmb_done_cb): a host
 * with an event loop of its own needs no thread to wait. Several callbacks run in the order they
 * were registered. Returns 0, or VMB_EINVAL if job or cb is NULL. */
VMB_EXTERN int vmb_backup_on_done(vmb_backup* job, vmb_done_cb cb, void* payload,
                                  vmb_error** error);

/* Asks the job to stop and returns at once; vmb_backup_wait() then returns VMB_ECANCELLED unless
 * the job had already finished. Safe at any time, any number of times, from any thread (including
 * the progress callback). Accepts NULL. */
VMB_EXTERN void vmb_backup_cancel(vmb_backup* job);

/* Returns the job's state (a vmb_job_state), or -1 if job is NULL. */
VMB_EXTERN int vmb_backup_state(const vmb_backup* job);

/* Copies the latest progress snapshot into *out. Returns 0; VMB_EINVAL for NULL arguments. */
VMB_EXTERN int vmb_backup_progress(vmb_progress* out, const vmb_backup* job, vmb_error** error);

/* Returns the backup's name (generated at start when the options left it NULL). Borrowed: valid
 * until vmb_backup_free(job). NULL if job is NULL. */
VMB_EXTERN const char* vmb_backup_name(const vmb_backup* job);

/* The JSON record of the finished backup (caller-owned, vmb_free).
 * Returns 0; VMB_EPRECONDITION until the job has ended successfully; VMB_EINVAL for NULL arguments.
 */
VMB_EXTERN int vmb_backup_result(char** out, const vmb_backup* job, vmb_error** error);

/* Releases a job handle. A job still running is cancelled and waited for first. Accepts NULL.
 * REQUIRES: not called from the job's own progress callback. */
VMB_EXTERN void vmb_backup_free(vmb_backup* job);

/* ---- Restores -------------------------------------------------------------------------------- */

/* What to restore. All pointers are borrowed for the duration of the call that takes the options.
 */
typedef struct vmb_restore_options {
  unsigned int version; /* VMB_RESTORE_OPTIONS_VERSION */
  const char* backup;   /* name of the backup to restore (required) */
  /* Directory for volumes without an explicit destination ("<dest_dir>/<volume>.img") and for the
   * VM metadata file "vm.json" (rewritten with new_vm_name and the restored paths). Default NULL =
   * no vm.json; then every volume needs an explicit destination. */
  const char* dest_dir;
  /* New name for the restored VM's metadata. Default NULL = keep the original. */
  const char* new_vm_name;
  /* Non-zero: replace existing destinations (files; block devices are written in place). Default
   * 0: any existing destination, block devices included, fails with VMB_EEXISTS before anything is
   * written. */
  int overwrite;
  /* Explicit destinations: {volume name in the backup, destination path}. Default NULL / 0 = every
   * volume of the backup goes to dest_dir. */
  const vmb_volume* volumes;
  size_t volume_count;
  /* Progress callback and its payload. Default NULL = none. */
  vmb_progress_cb progress;
  void* progress_payload;
  /* Minimum time between two progress reports, in ms. Default 200; 0 = as often as possible. */
  int progress_interval_ms;
  /* Version 2. Permission bits of restored volume files and vm.json, exactly (whatever the
   * umask). Default 0600. */
  uint32_t file_mode;
} vmb_restore_options;

/* Version 1 is still accepted: the same struct without file_mode (restored files get 0600). */
#define VMB_RESTORE_OPTIONS_VERSION 2
#define VMB_RESTORE_OPTIONS_INIT \
  { VMB_RESTORE_OPTIONS_VERSION, NULL, NULL, NULL, 0, NULL, 0, NULL, NULL, 200, 0600 }

/* Sets *opts to the defaults of `version` (VMB_RESTORE_OPTIONS_INIT).
 * Returns 0; VMB_EINVAL if opts is NULL or `version` is unknown to this library. */
VMB_EXTERN int vmb_restore_options_init(vmb_restore_options* opts, unsigned int version,
                                        vmb_error** error);

/* A running or finished restore. */
typedef struct vmb_restore vmb_restore;

/* Restores and blocks until done. Each volume file is written under a temporary name and renamed
 * into place when every volume is complete, so on any failure no destination file is created or
 * changed. A block device (or a symbolic link to one, such as /dev/vg0/lv) is written in place:
 * it needs overwrite, must not be mounted or held (opened O_EXCL), must be at least as large as
 * the volume, and a failed restore leaves it partly written (see docs/c_api.md).
 * Returns 0, or:
 *   VMB_EINVAL        bad options (the message names the field; backup NULL, no dest_dir and no
 *                     explicit destinations, unknown version, file_mode beyond 0777...);
 *   VMB_ENOTFOUND     unknown backup or volume name, or a missing pack object;
 *   VMB_EEXISTS       a destination exists and overwrite is 0;
 *   VMB_EPRECONDITION a destination device is in use or smaller than its volume;
 *   VMB_EDATALOSS     a block or index is corrupt (the message names backup, volume, offset,
 * object); VMB_ERESOURCE     the destination is full; VMB_EUNAVAILABLE  the target could not be
 * reached; VMB_ECANCELLED    the progress callback returned non-zero. */
VMB_EXTERN int vmb_restore_run(vmb_target* target, const vmb_restore_options* opts,
                               vmb_error** error);

/* Checks the options, reads the backup record and starts restoring; returns at once.
 * On success *out is a new handle (vmb_restore_free).
 * Returns 0, or the checks' errors of vmb_restore_run (VMB_EINVAL, VMB_ENOTFOUND, VMB_EEXISTS,
 * VMB_EDATALOSS for a damaged record). Errors found while running are reported by
 * vmb_restore_wait(). */
VMB_EXTERN int vmb_restore_start(vmb_restore** out, vmb_target* target,
                                 const vmb_restore_options* opts, vmb_error** error);

/* Blocks until the restore ends and returns its final status (kept on the handle; see
 * vmb_backup_wait()). REQUIRES: not called from the job's own progress callback. */
VMB_EXTERN int vmb_restore_wait(vmb_restore* job, vmb_error** error);

/* Like vmb_restore_wait() but returns VMB_PENDING (1) if still running after timeout_ms. */
VMB_EXTERN int vmb_restore_wait_timeout(vmb_restore* job, uint32_t timeout_ms, vmb_error** error);

/* As vmb_backup_on_done(), for a restore. */
VMB_EXTERN int vmb_restore_on_done(vmb_restore* job, vmb_done_cb cb, void* payload,
                                   vmb_error** error);

/* Asks the restore to stop; see vmb_backup_cancel(). Accepts NULL. */
VMB_EXTERN void vmb_restore_cancel(vmb_restore* job);

/* Returns the restore's state (a vmb_job_state), or -1 if job is NULL. */
VMB_EXTERN int vmb_restore_state(const vmb_restore* job);

/* Copies the latest progress snapshot into *out. Returns 0; VMB_EINVAL for NULL arguments. */
VMB_EXTERN int vmb_restore_progress(vmb_progress* out, const vmb_restore* job, vmb_error** error);

/* The destination chosen for each volume, in backup order, as a caller-owned JSON array (vmb_free):
 *   [{"volume": "rootdisk", "path": "/restore/rootdisk.img"}, ...]
 * Returns 0; VMB_EINVAL for NULL arguments. */
VMB_EXTERN int vmb_restore_destinations(char** out, const vmb_restore* job, vmb_error** error);

/* Releases a restore handle; a restore still running is cancelled and waited for first (leaving no
 * destination changed). Accepts NULL. REQUIRES: not called from the job's own progress callback. */
VMB_EXTERN void vmb_restore_free(vmb_restore* job);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* VMBACKUP_C_H_ */
