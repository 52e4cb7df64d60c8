/* End-to-end test of the C ABI (<vmbackup/c.h>), written in C and compiled as C11.
 *
 * Uses a local directory target in a fresh temporary directory: backs up a generated volume (random
 * data, explicit zeros, a hole and an odd-sized tail), lists, restores and compares bytes, and
 * checks the error paths (codes, messages, NULL error pointers, free(NULL), cancellation). Prints
 * one line per test and a closing "N passed, M failed"; the exit status is 0 only when nothing
 * failed. The temporary directory is removed when every test passed and kept (path printed)
 * otherwise. */
#define _XOPEN_SOURCE 700

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <vmbackup/c.h>

/* ---- tiny test harness ----------------------------------------------------------------------- */

static int g_passed = 0;
static int g_failed = 0;
static int g_current_ok = 1;

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      g_current_ok = 0;                                                          \
    }                                                                            \
  } while (0)

/* Checks that `rc` == `want`; on mismatch prints both codes and the error message (if any). */
#define CHECK_RC(rc, want, err) check_rc((rc), (want), (err), __FILE__, __LINE__, #rc)

static void check_rc(int rc, int want, const vmb_error* err, const char* file, int line,
                     const char* expr) {
  if (rc == want) return;
  fprintf(stderr, "  %s:%d: %s returned %d (%s), want %d (%s)%s%s\n", file, line, expr, rc,
          vmb_error_code_name(rc), want, vmb_error_code_name(want), err ? ": " : "",
          err ? vmb_error_message(err) : "");
  g_current_ok = 0;
}

#define RUN(test)                                             \
  do {                                                        \
    g_current_ok = 1;                                         \
    test();                                                   \
    printf("%s %s\n", g_current_ok ? "ok  " : "FAIL", #test); \
    fflush(stdout);                                           \
    if (g_current_ok) {                                       \
      ++g_passed;                                             \
    } else {                                                  \
      ++g_failed;                                             \
    }                                                         \
  } while (0)

/* ---- fixtures -------------------------------------------------------------------------------- */

#define MIB (1024u * 1024u)
/* 5 MiB plus an odd tail that is not a multiple of any block size. */
#define VOLUME_SIZE (5u * MIB + 12345u)

static char g_tmp[4096];    /* temporary directory of this run */
static char g_volume[4200]; /* the generated source volume */
static char g_config[4400]; /* {"type":"file","endpoint":"<g_tmp>/target"} */
static vmb_target* g_target = NULL;

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_random(void) { /* xorshift64* */
  g_rng ^= g_rng >> 12;
  g_rng ^= g_rng << 25;
  g_rng ^= g_rng >> 27;
  return g_rng * 2685821657736338717ull;
}

static int write_random(int fd, uint64_t offset, size_t length) {
  unsigned char buf[65536];
  while (length > 0) {
    size_t n = length < sizeof(buf) ? length : sizeof(buf);
    for (size_t i = 0; i < n; i += 8) {
      uint64_t r = next_random();
      memcpy(buf + i, &r, n - i < 8 ? n - i : 8);
    }
    if (pwrite(fd, buf, n, (off_t)offset) != (ssize_t)n) return -1;
    offset += n;
    length -= n;
  }
  return 0;
}

static int write_zeros(int fd, uint64_t offset, size_t length) {
  static const unsigned char zeros[65536];
  while (length > 0) {
    size_t n = length < sizeof(zeros) ? length : sizeof(zeros);
    if (pwrite(fd, zeros, n, (off_t)offset) != (ssize_t)n) return -1;
    offset += n;
    length -= n;
  }
  return 0;
}

/* Creates the source volume:
 *   [0, 1 MiB)            random data
 *   [1 MiB, 2 MiB)        explicitly written zeros
 *   [2 MiB, 3.5 MiB)      a hole, except 4 KiB of random data at 2.75 MiB
 *   [3.5 MiB, end)        random data, ending in an odd-sized tail */
static int make_volume(const char* path) {
  int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (fd < 0) return -1;
  int rc = 0;
  if (ftruncate(fd, VOLUME_SIZE) != 0) rc = -1;
  if (rc == 0) rc = write_random(fd, 0, MIB);
  if (rc == 0) rc = write_zeros(fd, MIB, MIB);
  if (rc == 0) rc = write_random(fd, 2 * MIB + 3 * MIB / 4, 4096);
  if (rc == 0) rc = write_random(fd, 3 * MIB + MIB / 2, VOLUME_SIZE - (3 * MIB + MIB / 2));
  if (close(fd) != 0) rc = -1;
  return rc;
}

/* Returns 1 when both files exist and hold the same bytes. */
static int same_bytes(const char* a, const char* b) {
  FILE* fa = fopen(a, "rb");
  FILE* fb = fopen(b, "rb");
  int same = fa != NULL && fb != NULL;
  static unsigned char ba[65536], bb[65536];
  while (same) {
    size_t na = fread(ba, 1, sizeof(ba), fa);
    size_t nb = fread(bb, 1, sizeof(bb), fb);
    if (na != nb || memcmp(ba, bb, na) != 0) same = 0;
    if (na == 0) break;
  }
  if (fa) fclose(fa);
  if (fb) fclose(fb);
  return same;
}

static int file_exists(const char* path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static void path_in_tmp(char* out, size_t size, const char* name) {
  snprintf(out, size, "%s/%s", g_tmp, name);
}

static int remove_entry(const char* path, const struct stat* st, int flag, struct FTW* ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

/* Backs up g_volume as volume "disk0" under `name`; returns the C ABI's code. */
static int backup_volume(const char* name, vmb_progress_cb cb, void* payload, vmb_error** err) {
  vmb_volume volume = {"disk0", g_volume};
  vmb_backup_options opts = VMB_BACKUP_OPTIONS_INIT;
  opts.name = name;
  opts.volumes = &volume;
  opts.volume_count = 1;
  opts.vm_metadata_json = "{\"name\": \"c-test-vm\", \"namespace\": \"default\"}";
  opts.progress = cb;
  opts.progress_payload = payload;
  opts.progress_interval_ms = 0;
  return vmb_backup_run(NULL, g_target, &opts, err);
}

/* 1 if the target's listing contains a backup called `name`, 0 if not, -1 if listing failed. */
static int listed(const char* name) {
  char* json = NULL;
  vmb_error* err = NULL;
  int rc = vmb_target_list_backups(&json, g_target, &err);
  CHECK_RC(rc, VMB_OK, err);
  vmb_error_free(err);
  if (rc != VMB_OK) return -1;
  char needle[512];
  snprintf(needle, sizeof(needle), "\"name\":\"%s\"", name);
  int found = strstr(json, needle) != NULL;
  vmb_free(json);
  return found;
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_version(void) {
  CHECK(vmb_version() == VMB_VERSION_NUMBER);
  char want[64];
  snprintf(want, sizeof(want), "%d.%d.%d", VMB_VERSION_MAJOR, VMB_VERSION_MINOR, VMB_VERSION_PATCH);
  CHECK(strcmp(vmb_version_string(), want) == 0);
}

static void test_free_null_is_accepted(void) {
  vmb_target_free(NULL);
  vmb_backup_free(NULL);
  vmb_restore_free(NULL);
  vmb_error_free(NULL);
  vmb_free(NULL);
  vmb_backup_cancel(NULL);
  vmb_restore_cancel(NULL);
  CHECK(vmb_backup_state(NULL) == -1);
  CHECK(vmb_backup_name(NULL) == NULL);
  CHECK(vmb_target_block_size(NULL) == 0);
}

static void test_error_code_names(void) {
  CHECK(strcmp(vmb_error_code_name(VMB_ENOTFOUND), "NOT_FOUND") == 0);
  CHECK(strcmp(vmb_error_code_name(VMB_EINVAL), "INVALID_ARGUMENT") == 0);
  CHECK(strcmp(vmb_error_code_name(VMB_OK), "OK") == 0);
  CHECK(strcmp(vmb_error_code_name(VMB_PENDING), "PENDING") == 0);
  CHECK(strcmp(vmb_error_code_name(-99), "UNKNOWN_CODE") == 0);
}

/* Version 1 options (no hash_every_block) still back up; version 2 can hash every block. */
static void test_backup_options_version_1_and_hash_every_block(void) {
  vmb_error* err = NULL;
  vmb_volume volume = {"disk0", g_volume};
  vmb_backup_options b;
  memset(&b, 0x5a, sizeof(b));
  CHECK_RC(vmb_backup_options_init(&b, 1, &err), VMB_OK, err);
  b.name = "c-v1-options";
  b.volumes = &volume;
  b.volume_count = 1;
  CHECK_RC(vmb_backup_run(NULL, g_target, &b, &err), VMB_OK, err);
  CHECK(listed("c-v1-options") == 1);
  CHECK_RC(vmb_backup_options_init(&b, VMB_BACKUP_OPTIONS_VERSION, &err), VMB_OK, err);
  b.name = "c-hash-every-block";
  b.volumes = &volume;
  b.volume_count = 1;
  b.hash_every_block = 1;
  CHECK_RC(vmb_backup_run(NULL, g_target, &b, &err), VMB_OK, err);
  CHECK(listed("c-hash-every-block") == 1);
  vmb_error_free(err);
}

/* Version 3: one freeze window for the backup; the record says how long and how consistent. */
typedef struct hook_log {
  int freezes, thaws, fail_freeze;
} hook_log;
static int count_freeze(void* payload) {
  hook_log* h = (hook_log*)payload;
  ++h->freezes;
  return h->fail_freeze ? 7 : 0;
}
static int count_thaw(void* payload) {
  ++((hook_log*)payload)->thaws;
  return 0;
}
static void test_freeze_window_hooks(void) {
  vmb_error* err = NULL;
  vmb_volume volumes[2] = {{"disk0", g_volume}, {"disk1", g_volume}};
  hook_log log = {0, 0, 0};
  vmb_backup_options b;
  memset(&b, 0x5a, sizeof(b));
  CHECK_RC(vmb_backup_options_init(&b, 2, &err), VMB_OK, err);
  CHECK(b.version == 2 && b.hash_every_block == 0 && b.thaw_early == 0x5a5a5a5a);
  memset(&b, 0x5a, sizeof(b));
  CHECK_RC(vmb_backup_options_init(&b, 3, &err), VMB_OK, err);
  CHECK(b.version == 3 && b.thaw_early == 0 && b.freeze_timeout_ms == 0x5a5a5a5a);
  CHECK_RC(vmb_backup_options_init(&b, VMB_BACKUP_OPTIONS_VERSION, &err), VMB_OK, err);
  CHECK(b.freeze == NULL && b.thaw == NULL && b.hook_payload == NULL && b.thaw_early == 0);
  CHECK(b.version == 4 && b.freeze_timeout_ms == 60000);
  b.name = "c-bad-deadline";
  b.volumes = volumes;
  b.volume_count = 2;
  b.freeze_timeout_ms = -1;
  CHECK_RC(vmb_backup_run(NULL, g_target, &b, &err), VMB_EINVAL, err);
  CHECK(err != NULL && strstr(vmb_error_message(err), "freeze_timeout_ms") != NULL);
  vmb_error_free(err);
  err = NULL;
  b.freeze_timeout_ms = 0; /* no deadline */
  b.name = "c-frozen";
  b.volumes = volumes;
  b.volume_count = 2;
  b.snapshot_mode = VMB_SNAPSHOT_DIRECT;
  b.freeze = count_freeze;
  b.thaw = count_thaw;
  b.hook_payload = &log;
  char* record = NULL;
  CHECK_RC(vmb_backup_run(&record, g_target, &b, &err), VMB_OK, err);
  CHECK(log.freezes == 1 && log.thaws == 1); /* once for both volumes */
  CHECK(record != NULL && strstr(record, "\"freeze_seconds\":") != NULL);
  CHECK(record != NULL &&
        strstr(record, "\"snapshot\":\"direct\",\"consistency\":\"fs-frozen\"") != NULL);
  vmb_free(record);
  log.fail_freeze = 1;
  b.name = "c-freeze-refused";
  CHECK_RC(vmb_backup_run(NULL, g_target, &b, &err), VMB_EPRECONDITION, err);
  CHECK(err != NULL && strstr(vmb_error_message(err), "freeze hook returned 7") != NULL);
  vmb_error_free(err);
  err = NULL;
  CHECK(log.freezes == 2 && log.thaws == 1); /* a failed freeze is not thawed */
  CHECK(listed("c-freeze-refused") == 0);

  /* A running VM whose volumes are read directly with nothing keeping them still: refused. */
  CHECK_RC(vmb_backup_options_init(&b, VMB_BACKUP_OPTIONS_VERSION, &err), VMB_OK, err);
  b.volumes = volumes;
  b.volume_count = 2;
  b.snapshot_mode = VMB_SNAPSHOT_DIRECT;
  b.vm_state = VMB_VM_RUNNING;
  b.name = "c-running";
  CHECK_RC(vmb_backup_run(NULL, g_target, &b, &err), VMB_EPRECONDITION, err);
  CHECK(err != NULL && strstr(vmb_error_message(err), "running VM") != NULL);
  vmb_error_free(err);
  err = NULL;
  b.allow_inconsistent = 1;
  CHECK_RC(vmb_backup_run(&record, g_target, &b, &err), VMB_OK, err);
  CHECK(record != NULL && strstr(record, "\"consistency\":\"unknown\"") != NULL);
  vmb_free(record);
  b.name = "c-stopped";
  b.vm_state = VMB_VM_STOPPED;
  b.allow_inconsistent = 0;
  CHECK_RC(vmb_backup_run(&record, g_target, &b, &err), VMB_OK, err);
  CHECK(record != NULL && strstr(record, "\"consistency\":\"stopped\"") != NULL);
  vmb_free(record);
  b.vm_state = 9;
  b.name = "c-bad-state";
  CHECK_RC(vmb_backup_run(NULL, g_target, &b, &err), VMB_EINVAL, err);
  CHECK(err != NULL && strstr(vmb_error_message(err), "vm_state") != NULL);
  vmb_error_free(err);
  err = NULL;
}

static void test_options_init_rejects_unknown_version(void) {
  vmb_backup_options b;
  memset(&b, 0xff, sizeof(b));
  vmb_error* err = NULL;
  CHECK_RC(vmb_backup_options_init(&b, VMB_BACKUP_OPTIONS_VERSION, &err), VMB_OK, err);
  CHECK(err == NULL);
  CHECK(b.version == VMB_BACKUP_OPTIONS_VERSION && b.name == NULL && b.volume_count == 0 &&
        b.progress == NULL && b.progress_interval_ms == 200);

  CHECK(b.hash_every_block == 0);

  /* Version 1 callers have the struct without hash_every_block: init writes only their fields,
   * and a backup with version 1 options runs. */
  memset(&b, 0x5a, sizeof(b));
  CHECK_RC(vmb_backup_options_init(&b, 1, &err), VMB_OK, err);
  CHECK(b.version == 1 && b.name == NULL && b.progress_interval_ms == 200);
  CHECK(b.hash_every_block == 0x5a5a5a5a);

  CHECK_RC(vmb_backup_options_init(&b, 99, &err), VMB_EINVAL, err);
  CHECK(err != NULL && vmb_error_code(err) == VMB_EINVAL);
  CHECK(err != NULL && strstr(vmb_error_message(err), "version") != NULL);
  vmb_error_free(err);

  vmb_restore_options r;
  CHECK_RC(vmb_restore_options_init(&r, 3, NULL), VMB_EINVAL, NULL);
  CHECK_RC(vmb_restore_options_init(&r, VMB_RESTORE_OPTIONS_VERSION, NULL), VMB_OK, NULL);
  CHECK(r.file_mode == 0600);
  vmb_target_options t;
  CHECK_RC(vmb_target_options_init(&t, VMB_TARGET_OPTIONS_VERSION, NULL), VMB_OK, NULL);
  CHECK(t.create_if_missing == 1 && t.block_size == 0);

  /* A struct with an unknown version is rejected by the call that takes it. */
  vmb_target_options bad = VMB_TARGET_OPTIONS_INIT;
  bad.version = 7;
  vmb_target* target = NULL;
  err = NULL;
  CHECK_RC(vmb_target_open(&target, g_config, &bad, &err), VMB_EINVAL, err);
  CHECK(target == NULL);
  CHECK(err != NULL && strstr(vmb_error_message(err), "vmb_target_options.version") != NULL);
  vmb_error_free(err);
}

static int err_sentinel;

/* Opens `config` expecting VMB_EINVAL with `field` in the message. */
static void expect_bad_config(const char* config, const char* field) {
  vmb_target* const sentinel = (vmb_target*)&err_sentinel;
  vmb_target* target = sentinel; /* must be reset to NULL */
  vmb_error* err = NULL;
  int rc = vmb_target_open(&target, config, NULL, &err);
  CHECK_RC(rc, VMB_EINVAL, err);
  CHECK(target == NULL);
  CHECK(err != NULL);
  if (err != NULL) {
    CHECK(vmb_error_code(err) == VMB_EINVAL);
    CHECK(vmb_error_retryable(err) == 0);
    if (field != NULL && strstr(vmb_error_message(err), field) == NULL) {
      fprintf(stderr, "  config %s: message \"%s\" does not name \"%s\"\n", config,
              vmb_error_message(err), field);
      g_current_ok = 0;
    }
  }
  vmb_error_free(err);
  if (target != sentinel) vmb_target_free(target);
}

static void test_bad_config_is_invalid_argument_naming_the_field(void) {
  char config[4600];
  snprintf(config, sizeof(config), "{\"type\":\"file\",\"endpoint\":\"%s\",\"endpiont\":\"x\"}",
           g_tmp);
  expect_bad_config(config, "endpiont");                                /* unknown field (typo) */
  expect_bad_config("{\"type\":\"file\"}", "endpoint");                 /* missing field */
  expect_bad_config("{\"type\":\"file\",\"endpoint\":42}", "endpoint"); /* wrong type */
  expect_bad_config("{\"type\":\"tape\",\"endpoint\":\"/x\"}", "type"); /* unknown type */
  expect_bad_config("{\"type\":\"file\",", NULL);                       /* malformed JSON */
  expect_bad_config("", NULL);

  /* A NULL error pointer is accepted: the code still reports the failure. */
  vmb_target* target = NULL;
  CHECK_RC(vmb_target_open(&target, "{\"type\":\"file\"}", NULL, NULL), VMB_EINVAL, NULL);
  CHECK(target == NULL);
  CHECK_RC(vmb_target_open(&target, NULL, NULL, NULL), VMB_EINVAL, NULL);
  CHECK_RC(vmb_target_open(NULL, g_config, NULL, NULL), VMB_EINVAL, NULL);
}

static void test_open_without_create_if_missing_is_not_found(void) {
  char dir[4200], config[4400];
  path_in_tmp(dir, sizeof(dir), "empty-target");
  CHECK(mkdir(dir, 0755) == 0);
  snprintf(config, sizeof(config), "{\"type\":\"file\",\"endpoint\":\"%s\"}", dir);
  vmb_target_options opts = VMB_TARGET_OPTIONS_INIT;
  opts.create_if_missing = 0;
  vmb_target* target = NULL;
  vmb_error* err = NULL;
  CHECK_RC(vmb_target_open(&target, config, &opts, &err), VMB_ENOTFOUND, err);
  CHECK(target == NULL);
  vmb_error_free(err);
}

static void test_encrypted_target_and_key_slots(void) {
  char dir[4200], config[4400];
  path_in_tmp(dir, sizeof(dir), "encrypted-target");
  CHECK(mkdir(dir, 0755) == 0);
  snprintf(config, sizeof(config), "{\"type\":\"file\",\"endpoint\":\"%s\"}", dir);
  uint8_t raw[32];
  for (int i = 0; i < 32; ++i) raw[i] = (uint8_t)(i * 7);
  vmb_target_options opts = VMB_TARGET_OPTIONS_INIT;
  opts.encryption = "aes-256-gcm";
  opts.raw_key = raw;
  opts.raw_key_len = sizeof(raw);
  opts.key_label = "kms";
  vmb_target* t = NULL;
  vmb_error* err = NULL;
  CHECK_RC(vmb_target_open(&t, config, &opts, &err), VMB_OK, err);
  if (t == NULL) return;
  CHECK(strcmp(vmb_target_encryption(t), "aes-256-gcm") == 0);
  CHECK(vmb_target_encryption(NULL) == NULL);

  char* new_id = NULL;
  CHECK_RC(vmb_target_add_key(&new_id, t, "c passphrase", NULL, 0, "ops", &err), VMB_OK, err);
  CHECK(new_id != NULL && strlen(new_id) == 16);
  CHECK_RC(vmb_target_add_key(NULL, t, "p", raw, 32, NULL, &err), VMB_EINVAL, err);
  vmb_error_free(err);
  err = NULL;
  char* json = NULL;
  CHECK_RC(vmb_target_list_keys(&json, t, &err), VMB_OK, err);
  char raw_id[17] = {0};
  const char* first = json == NULL ? NULL : strstr(json, "\"id\":\"");
  CHECK(first != NULL);
  if (first != NULL) memcpy(raw_id, first + 6, 16);
  CHECK(json != NULL && strstr(json, "\"kind\":\"raw\"") != NULL &&
        strstr(json, "\"current\":true") != NULL && strstr(json, new_id) != NULL);
  vmb_free(json);
  CHECK_RC(vmb_target_remove_key(t, raw_id, &err), VMB_EPRECONDITION, err);
  vmb_error_free(err);
  err = NULL;

  /* No key: permission denied; the new passphrase opens it and may remove the raw slot. */
  vmb_target* t2 = NULL;
  CHECK_RC(vmb_target_open(&t2, config, NULL, &err), VMB_EPERM, err);
  CHECK(err != NULL && strstr(vmb_error_message(err), "is encrypted") != NULL);
  vmb_error_free(err);
  err = NULL;
  vmb_target_options by_pass = VMB_TARGET_OPTIONS_INIT;
  by_pass.passphrase = ""; /* an empty secret is an error, never "no secret" */
  CHECK_RC(vmb_target_open(&t2, config, &by_pass, &err), VMB_EINVAL, err);
  vmb_error_free(err);
  err = NULL;
  by_pass.passphrase = "c passphrase";
  CHECK_RC(vmb_target_open(&t2, config, &by_pass, &err), VMB_OK, err);
  CHECK_RC(vmb_target_remove_key(t2, raw_id, &err), VMB_OK, err);
  CHECK_RC(vmb_target_remove_key(t2, raw_id, &err), VMB_ENOTFOUND, err);
  vmb_error_free(err);
  err = NULL;
  vmb_target* t3 = NULL;
  CHECK_RC(vmb_target_open(&t3, config, &opts, &err), VMB_EPERM, err);
  vmb_error_free(err);
  vmb_free(new_id);
  vmb_target_free(t2);
  vmb_target_free(t);

  /* A version-3 caller's struct ends before the encryption fields: init leaves them alone. */
  vmb_target_options v3;
  memset(&v3, 0x5a, sizeof(v3));
  CHECK_RC(vmb_target_options_init(&v3, 3, NULL), VMB_OK, NULL);
  CHECK(v3.version == 3 && v3.runtime == NULL && v3.raw_key_len == (size_t)0x5a5a5a5a5a5a5a5aull);
}

static void test_open_and_test_target(void) {
  vmb_error* err = (vmb_error*)&err; /* must be reset to NULL on success */
  CHECK_RC(vmb_target_open(&g_target, g_config, NULL, &err), VMB_OK, err);
  CHECK(err == NULL);
  if (g_target == NULL) return;
  CHECK_RC(vmb_target_test(g_target, &err), VMB_OK, err);
  uint32_t bs = vmb_target_block_size(g_target);
  CHECK(bs >= 64 * 1024 && bs <= 16 * MIB && (bs & (bs - 1)) == 0);
}

typedef struct {
  int calls;
  int bad_order; /* set when a cumulative counter went backwards */
  uint64_t last_scanned;
  uint64_t bytes_total;
} progress_log;

static int log_progress(const vmb_progress* p, void* payload) {
  progress_log* log = (progress_log*)payload;
  if (p->bytes_scanned < log->last_scanned) log->bad_order = 1;
  log->last_scanned = p->bytes_scanned;
  log->bytes_total = p->bytes_total;
  ++log->calls;
  return 0;
}

static void test_backup_restore_bytes_identical(void) {
  progress_log log = {0, 0, 0, 0};
  vmb_error* err = NULL;
  vmb_volume volume = {"disk0", g_volume};
  vmb_backup_options opts = VMB_BACKUP_OPTIONS_INIT;
  opts.name = "c-api-1";
  opts.volumes = &volume;
  opts.volume_count = 1;
  opts.vm_metadata_json = "{\"name\": \"c-test-vm\", \"namespace\": \"default\"}";
  opts.progress = log_progress;
  opts.progress_payload = &log;
  opts.progress_interval_ms = 0;
  char* record = NULL;
  CHECK_RC(vmb_backup_run(&record, g_target, &opts, &err), VMB_OK, err);
  vmb_error_free(err);
  err = NULL;
  CHECK(record != NULL && strstr(record, "\"name\":\"c-api-1\"") != NULL);
  CHECK(record != NULL && strstr(record, "\"vm_name\":\"c-test-vm\"") != NULL);
  vmb_free(record);
  CHECK(log.calls > 0);
  CHECK(!log.bad_order);
  CHECK(log.bytes_total == VOLUME_SIZE);

  CHECK(listed("c-api-1") == 1);

  char* info = NULL;
  CHECK_RC(vmb_target_get_backup(&info, g_target, "c-api-1", &err), VMB_OK, err);
  char size_field[64];
  snprintf(size_field, sizeof(size_field), "\"size\":%u", VOLUME_SIZE);
  CHECK(info != NULL && strstr(info, "\"name\":\"disk0\"") != NULL);
  CHECK(info != NULL && strstr(info, size_field) != NULL);
  CHECK(info != NULL && strstr(info, "\"vm_metadata\":{\"name\":\"c-test-vm\"") != NULL);
  vmb_free(info);

  char dest[4200];
  path_in_tmp(dest, sizeof(dest), "restored-1.img");
  vmb_volume destination = {"disk0", dest};
  vmb_restore_options ropts = VMB_RESTORE_OPTIONS_INIT;
  ropts.backup = "c-api-1";
  ropts.volumes = &destination;
  ropts.volume_count = 1;
  CHECK_RC(vmb_restore_run(g_target, &ropts, &err), VMB_OK, err);
  vmb_error_free(err);
  CHECK(same_bytes(g_volume, dest));

  /* Restoring onto an existing file without overwrite fails before writing anything. */
  err = NULL;
  CHECK_RC(vmb_restore_run(g_target, &ropts, &err), VMB_EEXISTS, err);
  vmb_error_free(err);
  ropts.overwrite = 1;
  CHECK_RC(vmb_restore_run(g_target, &ropts, NULL), VMB_OK, NULL);
  CHECK(same_bytes(g_volume, dest));
}

/* Records completion callbacks: how many, the last code and message. */
typedef struct done_log {
  atomic_int calls;
  atomic_int code;
  char message[256];
} done_log;

static void record_done(int code, const char* message, void* payload) {
  done_log* d = (done_log*)payload;
  snprintf(d->message, sizeof(d->message), "%s", message != NULL ? message : "(null)");
  atomic_store(&d->code, code);
  atomic_fetch_add(&d->calls, 1);
}

static void test_restore_to_dest_dir_async(void) {
  char dir[4200], expected[4400];
  path_in_tmp(dir, sizeof(dir), "restore-dir");
  CHECK(mkdir(dir, 0755) == 0);
  vmb_restore_options opts = VMB_RESTORE_OPTIONS_INIT;
  opts.backup = "c-api-1";
  opts.dest_dir = dir;
  opts.new_vm_name = "c-test-vm-restored";
  vmb_restore* job = NULL;
  vmb_error* err = NULL;
  CHECK_RC(vmb_restore_start(&job, g_target, &opts, &err), VMB_OK, err);
  vmb_error_free(err);
  if (job == NULL) return;
  done_log done;
  atomic_init(&done.calls, 0);
  atomic_init(&done.code, 99);
  done.message[0] = '\0';
  CHECK_RC(vmb_restore_on_done(job, record_done, &done, NULL), VMB_OK, NULL);
  CHECK_RC(vmb_restore_on_done(job, NULL, &done, NULL), VMB_EINVAL, NULL);
  CHECK_RC(vmb_restore_wait(job, NULL), VMB_OK, NULL);
  /* The callback ran before the wait returned, once, with the final status. */
  CHECK(atomic_load(&done.calls) == 1);
  CHECK(atomic_load(&done.code) == 0 && done.message[0] == '\0');
  CHECK(vmb_restore_state(job) == VMB_JOB_READY);
  /* Registered after the end: called at once. */
  CHECK_RC(vmb_restore_on_done(job, record_done, &done, NULL), VMB_OK, NULL);
  CHECK(atomic_load(&done.calls) == 2);
  /* The final status stays on the handle. */
  CHECK_RC(vmb_restore_wait_timeout(job, 0, NULL), VMB_OK, NULL);

  snprintf(expected, sizeof(expected), "%s/disk0.img", dir);
  char* dests = NULL;
  CHECK_RC(vmb_restore_destinations(&dests, job, NULL), VMB_OK, NULL);
  CHECK(dests != NULL && strstr(dests, "\"volume\":\"disk0\"") != NULL);
  CHECK(dests != NULL && strstr(dests, expected) != NULL);
  vmb_free(dests);
  vmb_restore_free(job);

  CHECK(same_bytes(g_volume, expected));
  snprintf(expected, sizeof(expected), "%s/vm.json", dir);
  CHECK(file_exists(expected));
}

static void test_backup_async_keeps_final_status(void) {
  vmb_volume volume = {"disk0", g_volume};
  vmb_backup_options opts = VMB_BACKUP_OPTIONS_INIT;
  opts.volumes = &volume;
  opts.volume_count = 1; /* no name: generated */
  vmb_backup* job = NULL;
  vmb_error* err = NULL;
  CHECK_RC(vmb_backup_start(&job, g_target, &opts, &err), VMB_OK, err);
  vmb_error_free(err);
  if (job == NULL) return;
  const char* name = vmb_backup_name(job);
  CHECK(name != NULL && name[0] != '\0');
  int rc;
  int rounds = 0;
  while ((rc = vmb_backup_wait_timeout(job, 10, NULL)) == VMB_PENDING && rounds < 60000) ++rounds;
  CHECK_RC(rc, VMB_OK, NULL);
  CHECK_RC(vmb_backup_wait(job, NULL), VMB_OK, NULL);
  CHECK_RC(vmb_backup_wait(job, NULL), VMB_OK, NULL);
  CHECK(vmb_backup_state(job) == VMB_JOB_READY);
  vmb_progress p;
  CHECK_RC(vmb_backup_progress(&p, job, NULL), VMB_OK, NULL);
  CHECK(p.bytes_total == VOLUME_SIZE && p.bytes_scanned == VOLUME_SIZE);
  /* Everything was backed up before under another name: the data is deduplicated. */
  CHECK(p.bytes_new == 0);
  char* record = NULL;
  CHECK_RC(vmb_backup_result(&record, job, NULL), VMB_OK, NULL);
  if (record != NULL && name != NULL) {
    char needle[512];
    snprintf(needle, sizeof(needle), "\"name\":\"%s\"", name);
    CHECK(strstr(record, needle) != NULL);
    CHECK(listed(name) == 1);
  }
  vmb_free(record);
  vmb_backup_free(job);
}

static int cancel_at_once(const vmb_progress* p, void* payload) {
  (void)p;
  ++*(int*)payload;
  return 1;
}

static void test_progress_callback_nonzero_cancels(void) {
  int calls = 0;
  vmb_error* err = NULL;
  CHECK_RC(backup_volume("c-api-cancelled", cancel_at_once, &calls, &err), VMB_ECANCELLED, err);
  CHECK(err != NULL && vmb_error_code(err) == VMB_ECANCELLED);
  vmb_error_free(err);
  CHECK(calls >= 1);
  CHECK(listed("c-api-cancelled") == 0);
  char* info = NULL;
  CHECK_RC(vmb_target_get_backup(&info, g_target, "c-api-cancelled", NULL), VMB_ENOTFOUND, NULL);
  CHECK(info == NULL);
}

typedef struct {
  atomic_int entered;
  atomic_int release;
} gate;

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Blocks the first report of a running job until the test releases it. */
static int hold_first_report(const vmb_progress* p, void* payload) {
  gate* g = (gate*)payload;
  if (p->phase != VMB_PHASE_DONE && atomic_exchange(&g->entered, 1) == 0) {
    for (int i = 0; i < 30000 && !atomic_load(&g->release); ++i) sleep_ms(1);
  }
  return 0;
}

static void test_cancel_handle_while_running(void) {
  gate g;
  atomic_init(&g.entered, 0);
  atomic_init(&g.release, 0);
  vmb_volume volume = {"disk0", g_volume};
  vmb_backup_options opts = VMB_BACKUP_OPTIONS_INIT;
  opts.name = "c-api-cancel-handle";
  opts.volumes = &volume;
  opts.volume_count = 1;
  opts.progress = hold_first_report;
  opts.progress_payload = &g;
  opts.progress_interval_ms = 0;
  vmb_backup* job = NULL;
  CHECK_RC(vmb_backup_start(&job, g_target, &opts, NULL), VMB_OK, NULL);
  if (job == NULL) return;
  int rc = VMB_PENDING;
  for (int i = 0; i < 30000 && !atomic_load(&g.entered) && rc == VMB_PENDING; ++i) {
    rc = vmb_backup_wait_timeout(job, 1, NULL);
  }
  CHECK(atomic_load(&g.entered)); /* the job reported progress before it finished */
  vmb_backup_cancel(job);
  vmb_backup_cancel(job); /* idempotent */
  atomic_store(&g.release, 1);
  vmb_error* err = NULL;
  done_log done;
  atomic_init(&done.calls, 0);
  atomic_init(&done.code, 99);
  done.message[0] = '\0';
  CHECK_RC(vmb_backup_on_done(job, record_done, &done, NULL), VMB_OK, NULL);
  CHECK_RC(vmb_backup_on_done(NULL, record_done, &done, NULL), VMB_EINVAL, NULL);
  CHECK_RC(vmb_backup_wait(job, &err), VMB_ECANCELLED, err);
  vmb_error_free(err);
  CHECK(atomic_load(&done.calls) == 1);
  CHECK(atomic_load(&done.code) == VMB_ECANCELLED);
  CHECK(strstr(done.message, "cancel") != NULL);
  CHECK(vmb_backup_state(job) == VMB_JOB_ERROR);
  char* record = NULL;
  CHECK_RC(vmb_backup_result(&record, job, NULL), VMB_EPRECONDITION, NULL);
  CHECK(record == NULL);
  vmb_backup_free(job);
  CHECK(listed("c-api-cancel-handle") == 0);
}

static void test_free_running_job_cancels_it(void) {
  vmb_volume volume = {"disk0", g_volume};
  vmb_backup_options opts = VMB_BACKUP_OPTIONS_INIT;
  opts.name = "c-api-freed";
  opts.volumes = &volume;
  opts.volume_count = 1;
  vmb_backup* job = NULL;
  CHECK_RC(vmb_backup_start(&job, g_target, &opts, NULL), VMB_OK, NULL);
  vmb_backup_free(job); /* must not crash, hang or leak the waiter */
}

static void test_not_found_errors(void) {
  vmb_error* err = NULL;
  char* out = (char*)&err; /* must be reset to NULL */
  CHECK_RC(vmb_target_get_backup(&out, g_target, "no-such-backup", &err), VMB_ENOTFOUND, err);
  CHECK(out == NULL);
  CHECK(err != NULL && vmb_error_code(err) == VMB_ENOTFOUND);
  CHECK(err != NULL && vmb_error_retryable(err) == 0);
  CHECK(err != NULL && strstr(vmb_error_message(err), "no-such-backup") != NULL);
  vmb_error_free(err);

  /* NULL error pointer accepted. */
  CHECK_RC(vmb_target_get_backup(&out, g_target, "no-such-backup", NULL), VMB_ENOTFOUND, NULL);
  CHECK_RC(vmb_target_delete_backup(g_target, "no-such-backup", NULL), VMB_ENOTFOUND, NULL);

  vmb_restore_options ropts = VMB_RESTORE_OPTIONS_INIT;
  ropts.backup = "no-such-backup";
  ropts.dest_dir = g_tmp;
  CHECK_RC(vmb_restore_run(g_target, &ropts, NULL), VMB_ENOTFOUND, NULL);

  /* Unknown volume name in an explicit destination. */
  char dest[4200];
  path_in_tmp(dest, sizeof(dest), "never-written.img");
  vmb_volume destination = {"no-such-volume", dest};
  ropts.backup = "c-api-1";
  ropts.dest_dir = NULL;
  ropts.volumes = &destination;
  ropts.volume_count = 1;
  CHECK_RC(vmb_restore_run(g_target, &ropts, NULL), VMB_ENOTFOUND, NULL);
  CHECK(!file_exists(dest));

  /* A missing source volume fails the backup (at start or while running) and leaves no record. */
  char missing[4200];
  path_in_tmp(missing, sizeof(missing), "no-such-volume.img");
  vmb_volume volume = {"disk0", missing};
  vmb_backup_options opts = VMB_BACKUP_OPTIONS_INIT;
  opts.name = "c-api-missing-volume";
  opts.volumes = &volume;
  opts.volume_count = 1;
  err = NULL;
  CHECK_RC(vmb_backup_run(NULL, g_target, &opts, &err), VMB_ENOTFOUND, err);
  /* The message names the volume (by name or path). */
  CHECK(err != NULL && (strstr(vmb_error_message(err), "no-such-volume.img") != NULL ||
                        strstr(vmb_error_message(err), "disk0") != NULL));
  vmb_error_free(err);
  CHECK(listed("c-api-missing-volume") == 0);
}

static void test_invalid_backup_options(void) {
  vmb_error* err = NULL;
  /* Duplicate name. */
  CHECK_RC(backup_volume("c-api-1", NULL, NULL, &err), VMB_EEXISTS, err);
  vmb_error_free(err);
  err = NULL;

  /* No volumes at all. */
  vmb_backup_options opts = VMB_BACKUP_OPTIONS_INIT;
  opts.name = "c-api-empty";
  CHECK_RC(vmb_backup_run(NULL, g_target, &opts, &err), VMB_EINVAL, err);
  vmb_error_free(err);
  err = NULL;

  /* Volume count without an array. */
  opts.volume_count = 1;
  CHECK_RC(vmb_backup_run(NULL, g_target, &opts, &err), VMB_EINVAL, err);
  CHECK(err != NULL && strstr(vmb_error_message(err), "volumes") != NULL);
  vmb_error_free(err);
  err = NULL;

  /* Metadata that is not a JSON object. */
  vmb_volume volume = {"disk0", g_volume};
  opts.volumes = &volume;
  opts.vm_metadata_json = "[1, 2, 3]";
  CHECK_RC(vmb_backup_run(NULL, g_target, &opts, &err), VMB_EINVAL, err);
  vmb_error_free(err);
  err = NULL;

  /* vm_dir together with explicit volumes. */
  opts.vm_metadata_json = NULL;
  opts.vm_dir = g_tmp;
  CHECK_RC(vmb_backup_run(NULL, g_target, &opts, &err), VMB_EINVAL, err);
  CHECK(err != NULL && strstr(vmb_error_message(err), "vm_dir") != NULL);
  vmb_error_free(err);

  /* Unknown options version. */
  opts.vm_dir = NULL;
  opts.version = 42;
  CHECK_RC(vmb_backup_run(NULL, g_target, &opts, NULL), VMB_EINVAL, NULL);
  CHECK(listed("c-api-empty") == 0);

  /* NULL target / NULL out. */
  vmb_backup* job = NULL;
  opts.version = VMB_BACKUP_OPTIONS_VERSION;
  CHECK_RC(vmb_backup_start(&job, NULL, &opts, NULL), VMB_EINVAL, NULL);
  CHECK_RC(vmb_backup_start(NULL, g_target, &opts, NULL), VMB_EINVAL, NULL);
  CHECK_RC(vmb_target_list_backups(NULL, g_target, NULL), VMB_EINVAL, NULL);
  CHECK_RC(vmb_backup_wait(NULL, NULL), VMB_EINVAL, NULL);
}

static void test_backup_from_vm_dir(void) {
  char dir[4200], vm_json[4400], volume[4400];
  path_in_tmp(dir, sizeof(dir), "vm-demo");
  CHECK(mkdir(dir, 0755) == 0);
  snprintf(volume, sizeof(volume), "%s/root.img", dir);
  CHECK(make_volume(volume) == 0);
  snprintf(vm_json, sizeof(vm_json), "%s/vm.json", dir);
  FILE* f = fopen(vm_json, "w");
  CHECK(f != NULL);
  if (f == NULL) return;
  fputs("{\"name\": \"demo\", \"volumes\": [{\"name\": \"rootdisk\", \"path\": \"root.img\"}]}", f);
  fclose(f);

  vmb_backup_options opts = VMB_BACKUP_OPTIONS_INIT;
  opts.name = "c-api-vmdir";
  opts.vm_dir = dir;
  char* record = NULL;
  vmb_error* err = NULL;
  CHECK_RC(vmb_backup_run(&record, g_target, &opts, &err), VMB_OK, err);
  vmb_error_free(err);
  CHECK(record != NULL && strstr(record, "\"vm_name\":\"demo\"") != NULL);
  CHECK(record != NULL && strstr(record, "\"name\":\"rootdisk\"") != NULL);
  vmb_free(record);

  /* A directory without vm.json. */
  opts.name = "c-api-vmdir-missing";
  opts.vm_dir = g_tmp;
  CHECK_RC(vmb_backup_run(NULL, g_target, &opts, NULL), VMB_ENOTFOUND, NULL);
}

static mode_t mode_of(const char* path) {
  struct stat sb;
  if (stat(path, &sb) != 0) return 07777;
  return sb.st_mode & 0777;
}

/* Target options version 2 name the host's state directory (where the fingerprint key lives);
 * restore options version 2 choose the restored files' mode. Version 1 structs still work: the
 * defaults (the default state directory, 0600) apply. */
static void test_state_dir_and_file_mode_options(void) {
  char state[4200], key[4300], dest[4200];
  vmb_error* err = NULL;
  path_in_tmp(state, sizeof(state), "c-state");
  vmb_target_options topts;
  CHECK_RC(vmb_target_options_init(&topts, VMB_TARGET_OPTIONS_VERSION, &err), VMB_OK, err);
  CHECK(topts.state_dir == NULL);
  topts.state_dir = state;
  vmb_target* target = NULL;
  CHECK_RC(vmb_target_open(&target, g_config, &topts, &err), VMB_OK, err);
  vmb_volume volume = {"disk0", g_volume};
  vmb_backup_options b = VMB_BACKUP_OPTIONS_INIT;
  b.name = "c-state-dir";
  b.vm_metadata_json = "{\"name\": \"c-test-vm\"}";
  b.volumes = &volume;
  b.volume_count = 1;
  char* rec = NULL;
  CHECK_RC(vmb_backup_run(&rec, target, &b, &err), VMB_OK, err);
  CHECK(rec != NULL && strstr(rec, "\"fingerprints_key\"") != NULL);
  vmb_free(rec);
  snprintf(key, sizeof(key), "%s/fingerprint.key", state);
  CHECK(mode_of(state) == 0700);
  CHECK(mode_of(key) == 0600);

  /* Version 1 target options: the struct without state_dir. */
  vmb_target_options v1;
  memset(&v1, 0x5a, sizeof(v1));
  CHECK_RC(vmb_target_options_init(&v1, 1, &err), VMB_OK, err);
  CHECK(v1.version == 1 && v1.create_if_missing == 1 && v1.block_size == 0);
  vmb_target* t1 = NULL;
  CHECK_RC(vmb_target_open(&t1, g_config, &v1, &err), VMB_OK, err);
  vmb_target_free(t1);

  vmb_volume destination = {"disk0", dest};
  vmb_restore_options r;
  CHECK_RC(vmb_restore_options_init(&r, VMB_RESTORE_OPTIONS_VERSION, &err), VMB_OK, err);
  r.backup = "c-state-dir";
  r.volumes = &destination;
  r.volume_count = 1;
  r.file_mode = 0640;
  path_in_tmp(dest, sizeof(dest), "c-mode-0640.img");
  CHECK_RC(vmb_restore_run(target, &r, &err), VMB_OK, err);
  CHECK(mode_of(dest) == 0640);
  CHECK(same_bytes(g_volume, dest));
  r.file_mode = 01777;
  path_in_tmp(dest, sizeof(dest), "c-mode-bad.img");
  CHECK_RC(vmb_restore_run(target, &r, &err), VMB_EINVAL, err);
  CHECK(err != NULL && strstr(vmb_error_message(err), "file_mode") != NULL);
  vmb_error_free(err);
  err = NULL;

  memset(&r, 0x5a, sizeof(r));
  CHECK_RC(vmb_restore_options_init(&r, 1, &err), VMB_OK, err);
  CHECK(r.version == 1 && r.backup == NULL && r.progress_interval_ms == 200);
  r.backup = "c-state-dir";
  r.volumes = &destination;
  r.volume_count = 1;
  path_in_tmp(dest, sizeof(dest), "c-mode-v1.img");
  CHECK_RC(vmb_restore_run(target, &r, &err), VMB_OK, err);
  CHECK(mode_of(dest) == 0600);
  vmb_target_free(target);
  vmb_error_free(err);
}

/* A runtime of the host's own: its threads are what the options say, targets opened with it run
 * their jobs on it, bad counts are rejected naming the field, and version 2 target options (before
 * `runtime`) still work. */
static void test_runtime_of_its_own(void) {
  char dest[4200];
  vmb_error* err = NULL;
  vmb_runtime_options ro = VMB_RUNTIME_OPTIONS_INIT;
  ro.job_threads = -1;
  vmb_runtime* rt = NULL;
  CHECK_RC(vmb_runtime_create(&rt, &ro, &err), VMB_EINVAL, err);
  CHECK(rt == NULL && err != NULL && strstr(vmb_error_message(err), "job_threads") != NULL);
  vmb_error_free(err);
  err = NULL;
  ro.version = 99;
  ro.job_threads = 1;
  CHECK_RC(vmb_runtime_create(&rt, &ro, NULL), VMB_EINVAL, NULL);
  CHECK_RC(vmb_runtime_create(NULL, NULL, NULL), VMB_EINVAL, NULL);
  CHECK(vmb_runtime_thread_count(NULL) == 0);
  vmb_runtime_free(NULL);

  ro.version = VMB_RUNTIME_OPTIONS_VERSION;
  ro.worker_threads = 2;
  ro.blocking_threads = 2;
  ro.io_threads = 1;
  ro.job_threads = 1;
  ro.max_in_flight_bytes = 1u * MIB;
  CHECK_RC(vmb_runtime_create(&rt, &ro, &err), VMB_OK, err);
  CHECK(vmb_runtime_thread_count(rt) == 6);

  vmb_target_options topts;
  CHECK_RC(vmb_target_options_init(&topts, VMB_TARGET_OPTIONS_VERSION, &err), VMB_OK, err);
  CHECK(topts.runtime == NULL);
  topts.runtime = rt;
  vmb_target* target = NULL;
  CHECK_RC(vmb_target_open(&target, g_config, &topts, &err), VMB_OK, err);
  vmb_runtime_free(rt); /* the target keeps the runtime alive */
  vmb_volume volume = {"disk0", g_volume};
  vmb_backup_options b = VMB_BACKUP_OPTIONS_INIT;
  b.name = "c-own-runtime";
  b.volumes = &volume;
  b.volume_count = 1;
  CHECK_RC(vmb_backup_run(NULL, target, &b, &err), VMB_OK, err);
  vmb_volume destination = {"disk0", dest};
  vmb_restore_options r = VMB_RESTORE_OPTIONS_INIT;
  r.backup = "c-own-runtime";
  r.volumes = &destination;
  r.volume_count = 1;
  path_in_tmp(dest, sizeof(dest), "c-own-runtime.img");
  CHECK_RC(vmb_restore_run(target, &r, &err), VMB_OK, err);
  CHECK(same_bytes(g_volume, dest));
  vmb_target_free(target);

  /* Version 2 target options: the struct without runtime (its bytes are never read). */
  vmb_target_options v2;
  memset(&v2, 0x5a, sizeof(v2));
  CHECK_RC(vmb_target_options_init(&v2, 2, &err), VMB_OK, err);
  CHECK(v2.version == 2 && v2.create_if_missing == 1 && v2.state_dir == NULL);
  vmb_target* t2 = NULL;
  CHECK_RC(vmb_target_open(&t2, g_config, &v2, &err), VMB_OK, err);
  vmb_target_free(t2);
  vmb_error_free(err);
}

static void test_delete_backup(void) {
  vmb_error* err = NULL;
  CHECK_RC(vmb_target_delete_backup(g_target, "c-api-vmdir", &err), VMB_OK, err);
  vmb_error_free(err);
  CHECK(listed("c-api-vmdir") == 0);
  char* out = NULL;
  CHECK_RC(vmb_target_get_backup(&out, g_target, "c-api-vmdir", NULL), VMB_ENOTFOUND, NULL);
  CHECK_RC(vmb_target_delete_backup(g_target, "c-api-vmdir", NULL), VMB_ENOTFOUND, NULL);
  /* Other backups are unaffected and still restore. */
  CHECK(listed("c-api-1") == 1);
}

/* Verify (fast and full, with progress), a deleted pack index found, repaired (dry run first),
 * and the target verified whole again; bad options are VMB_EINVAL naming the field. */
static int count_progress(const vmb_progress* p, void* payload) {
  (void)p;
  ++*(int*)payload;
  return 0;
}

static void test_verify_and_repair(void) {
  vmb_error* err = NULL;
  char* json = NULL;
  /* A target of its own: every pack on it is referenced by the one backup. */
  char dir[4200], config[4400];
  path_in_tmp(dir, sizeof(dir), "verify-target");
  CHECK(mkdir(dir, 0700) == 0);
  snprintf(config, sizeof(config), "{\"type\":\"file\",\"endpoint\":\"%s\"}", dir);
  vmb_target* target = NULL;
  CHECK_RC(vmb_target_open(&target, config, NULL, &err), VMB_OK, err);
  if (target == NULL) return;
  vmb_volume volume = {"disk0", g_volume};
  vmb_backup_options b = VMB_BACKUP_OPTIONS_INIT;
  b.name = "c-verify";
  b.volumes = &volume;
  b.volume_count = 1;
  CHECK_RC(vmb_backup_run(NULL, target, &b, &err), VMB_OK, err);
  CHECK_RC(vmb_target_verify(&json, target, NULL, &err), VMB_OK, err);
  CHECK(json != NULL && strstr(json, "\"ok\":true") != NULL);
  CHECK(json != NULL && strstr(json, "\"blocks_checked\":0") != NULL);
  vmb_free(json);
  json = NULL;

  vmb_verify_options opts;
  CHECK_RC(vmb_verify_options_init(&opts, VMB_VERIFY_OPTIONS_VERSION, &err), VMB_OK, err);
  int calls = 0;
  opts.read_data = 1;
  opts.progress = count_progress;
  opts.progress_payload = &calls;
  opts.progress_interval_ms = 0;
  CHECK_RC(vmb_target_verify(&json, target, &opts, &err), VMB_OK, err);
  CHECK(json != NULL && strstr(json, "\"ok\":true") != NULL);
  CHECK(json != NULL && strstr(json, "\"blocks_checked\":0") == NULL);
  CHECK(calls >= 2);
  vmb_free(json);
  json = NULL;

  opts.read_data_subset = "half";
  CHECK_RC(vmb_target_verify(&json, target, &opts, &err), VMB_EINVAL, err);
  CHECK(json == NULL);
  CHECK(err != NULL && strstr(vmb_error_message(err), "read_data_subset") != NULL);
  vmb_error_free(err);
  err = NULL;
  opts.read_data_subset = "1/2";
  CHECK_RC(vmb_target_verify(&json, target, &opts, &err), VMB_OK, err);
  vmb_free(json);
  json = NULL;
  opts.version = 99;
  CHECK_RC(vmb_target_verify(&json, target, &opts, &err), VMB_EINVAL, err);
  vmb_error_free(err);
  err = NULL;

  /* Delete one pack index file. */
  char index_dir[4300], victim[4600];
  snprintf(index_dir, sizeof(index_dir), "%s/index", dir);
  victim[0] = '\0';
  {
    char cmd[4400];
    snprintf(cmd, sizeof(cmd), "ls %s | head -n 1", index_dir);
    FILE* ls = popen(cmd, "r");
    char name[256] = "";
    if (ls != NULL) {
      if (fgets(name, sizeof(name), ls) == NULL) name[0] = '\0';
      pclose(ls);
    }
    name[strcspn(name, "\n")] = '\0';
    CHECK(name[0] != '\0');
    snprintf(victim, sizeof(victim), "%s/%s", index_dir, name);
  }
  CHECK(unlink(victim) == 0);
  CHECK_RC(vmb_target_verify(&json, target, NULL, &err), VMB_OK, err);
  CHECK(json != NULL && strstr(json, "\"ok\":false") != NULL);
  CHECK(json != NULL && strstr(json, "in no readable pack index") != NULL);
  vmb_free(json);
  json = NULL;

  vmb_verify_options_init(&opts, VMB_VERIFY_OPTIONS_VERSION, NULL);
  opts.dry_run = 1;
  CHECK_RC(vmb_target_repair(&json, target, &opts, &err), VMB_OK, err);
  CHECK(json != NULL && strstr(json, "\"action\":\"rebuilt index\"") != NULL);
  CHECK(json != NULL && strstr(json, "\"done\":false") != NULL);
  CHECK(!file_exists(victim));
  vmb_free(json);
  json = NULL;
  CHECK_RC(vmb_target_repair(&json, target, NULL, &err), VMB_OK, err);
  CHECK(json != NULL && strstr(json, "\"done\":true") != NULL);
  CHECK(json != NULL && strstr(json, "\"unrestorable_backups\":[]") != NULL);
  CHECK(file_exists(victim));
  vmb_free(json);
  json = NULL;
  opts.dry_run = 0;
  opts.read_data = 1;
  CHECK_RC(vmb_target_verify(&json, target, &opts, &err), VMB_OK, err);
  CHECK(json != NULL && strstr(json, "\"ok\":true") != NULL);
  vmb_free(json);
  vmb_error_free(err);
  vmb_target_free(target);
}

/* Counts GC progress calls; cancels at phase `cancel_at` when set. */
typedef struct gc_log {
  int calls;
  int saw_done;
  const char* cancel_at;
} gc_log;

static int log_gc(const char* phase, uint64_t done, uint64_t total, void* payload) {
  gc_log* l = (gc_log*)payload;
  (void)done;
  (void)total;
  ++l->calls;
  if (strcmp(phase, "done") == 0) l->saw_done = 1;
  return l->cancel_at != NULL && strcmp(phase, l->cancel_at) == 0;
}

/* A number field of a flat JSON report ("key":N), or -1. */
static long long json_number(const char* json, const char* key) {
  char pat[128];
  snprintf(pat, sizeof(pat), "\"%s\":", key);
  const char* p = json != NULL ? strstr(json, pat) : NULL;
  return p != NULL ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

static void backup_named(vmb_target* t, const char* name, const char* path) {
  vmb_volume volume = {"disk0", path};
  vmb_backup_options opts = VMB_BACKUP_OPTIONS_INIT;
  opts.name = name;
  opts.volumes = &volume;
  opts.volume_count = 1;
  opts.vm_metadata_json = "{\"name\": \"gc-vm\", \"namespace\": \"default\"}";
  vmb_error* err = NULL;
  CHECK_RC(vmb_backup_run(NULL, t, &opts, &err), VMB_OK, err);
  vmb_error_free(err);
}

static void test_forget_and_gc(void) {
  char dir[4200], config[4400], other[4200], dest[4200];
  path_in_tmp(dir, sizeof(dir), "gc-target");
  CHECK(mkdir(dir, 0755) == 0);
  snprintf(config, sizeof(config), "{\"type\":\"file\",\"endpoint\":\"%s\"}", dir);
  path_in_tmp(other, sizeof(other), "source-old.img");
  CHECK(make_volume(other) == 0); /* other random data than g_volume */
  vmb_target* t = NULL;
  vmb_error* err = NULL;
  CHECK_RC(vmb_target_open(&t, config, NULL, &err), VMB_OK, err);
  vmb_error_free(err);
  if (t == NULL) return;
  backup_named(t, "gc-old", other);
  backup_named(t, "gc-new", g_volume);

  /* Options: versions and policies that would forget everything are refused. */
  vmb_forget_options fo;
  CHECK_RC(vmb_forget_options_init(&fo, 99, NULL), VMB_EINVAL, NULL);
  CHECK_RC(vmb_forget_options_init(&fo, VMB_FORGET_OPTIONS_VERSION, NULL), VMB_OK, NULL);
  char* out = NULL;
  CHECK_RC(vmb_target_forget(&out, t, &fo, &err), VMB_EINVAL, err);
  CHECK(err != NULL && strstr(vmb_error_message(err), "keep") != NULL);
  vmb_error_free(err);
  CHECK(out == NULL);
  CHECK_RC(vmb_target_forget(&out, t, NULL, NULL), VMB_EINVAL, NULL);

  /* Dry run: decides, deletes nothing. */
  fo.keep_last = 1;
  fo.dry_run = 1;
  CHECK_RC(vmb_target_forget(&out, t, &fo, &err), VMB_OK, err);
  CHECK(out != NULL && strstr(out, "\"forget\":[\"gc-old\"]") != NULL);
  CHECK(out != NULL && strstr(out, "\"deleted\":[]") != NULL);
  CHECK(out != NULL && strstr(out, "{\"name\":\"gc-new\",\"reasons\":[\"last\"]}") != NULL);
  vmb_free(out);
  out = NULL;
  char* got = NULL;
  CHECK_RC(vmb_target_get_backup(&got, t, "gc-old", NULL), VMB_OK, NULL);
  vmb_free(got);

  fo.dry_run = 0;
  CHECK_RC(vmb_target_forget(&out, t, &fo, &err), VMB_OK, err);
  CHECK(out != NULL && strstr(out, "\"deleted\":[\"gc-old\"]") != NULL);
  vmb_free(out);
  out = NULL;
  CHECK_RC(vmb_target_get_backup(&got, t, "gc-old", NULL), VMB_ENOTFOUND, NULL);

  /* GC: a dry run, a cancelled run, then three runs with no grace reclaim gc-old's packs. */
  vmb_gc_options go = VMB_GC_OPTIONS_INIT;
  CHECK(go.grace_seconds == -1 && go.lease_expiry_seconds == -1 && go.repack == 1);
  CHECK(go.restore_dirs == NULL && go.restore_dir_count == 0 && go.max_unused_percent == -1);
  /* A version 1 caller's struct ends before max_unused_percent: init leaves it alone. */
  go.max_unused_percent = 1234;
  CHECK_RC(vmb_gc_options_init(&go, 1, NULL), VMB_OK, NULL);
  CHECK(go.version == 1 && go.repack == 1 && go.max_unused_percent == 1234);
  go.dry_run = 1;
  CHECK_RC(vmb_target_gc(&out, t, &go, &err), VMB_OK, err); /* v1: 1234 never read */
  vmb_free(out);
  out = NULL;
  CHECK_RC(vmb_gc_options_init(&go, VMB_GC_OPTIONS_VERSION, NULL), VMB_OK, NULL);
  go.max_unused_percent = 101;
  CHECK_RC(vmb_target_gc(&out, t, &go, &err), VMB_EINVAL, err);
  CHECK(strstr(vmb_error_message(err), "max_unused_percent") != NULL);
  vmb_error_free(err);
  err = NULL;
  go.dry_run = 1;
  go.max_unused_percent = 0; /* every pack with a dead block */
  CHECK_RC(vmb_target_gc(&out, t, &go, &err), VMB_OK, err);
  CHECK(json_number(out, "repack_candidates") == json_number(out, "partly_live_packs"));
  vmb_free(out);
  out = NULL;
  go.max_unused_percent = 100; /* none */
  CHECK_RC(vmb_target_gc(&out, t, &go, &err), VMB_OK, err);
  CHECK(json_number(out, "repack_candidates") == 0);
  vmb_free(out);
  out = NULL;
  go.version = 7;
  CHECK_RC(vmb_target_gc(&out, t, &go, NULL), VMB_EINVAL, NULL);
  CHECK_RC(vmb_gc_options_init(&go, VMB_GC_OPTIONS_VERSION, NULL), VMB_OK, NULL);
  go.dry_run = 1;
  CHECK_RC(vmb_target_gc(&out, t, &go, &err), VMB_OK, err);
  CHECK(out != NULL && strstr(out, "\"dry_run\":true") != NULL);
  CHECK(json_number(out, "dead_packs") > 0);
  CHECK(json_number(out, "reclaimable_bytes") > 0);
  vmb_free(out);
  out = NULL;

  gc_log log = {0, 0, "indexes"};
  go.dry_run = 0;
  go.grace_seconds = 0;
  go.progress = log_gc;
  go.progress_payload = &log;
  CHECK_RC(vmb_target_gc(&out, t, &go, &err), VMB_ECANCELLED, err);
  vmb_error_free(err);
  err = NULL;
  CHECK(out == NULL && log.calls > 0);
  log.cancel_at = NULL;
  long long deleted = 0, dead = -1;
  for (int i = 0; i < 3; ++i) {
    CHECK_RC(vmb_target_gc(&out, t, &go, &err), VMB_OK, err);
    if (i == 0) dead = json_number(out, "dead_packs");
    deleted += json_number(out, "packs_deleted");
    vmb_free(out);
    out = NULL;
  }
  CHECK(log.saw_done);
  CHECK(dead > 0 && deleted == dead);
  CHECK_RC(vmb_target_gc(&out, NULL, NULL, NULL), VMB_EINVAL, NULL);

  /* The kept backup restores bit-identical. */
  path_in_tmp(dest, sizeof(dest), "gc-restored.img");
  vmb_volume destination = {"disk0", dest};
  vmb_restore_options ropts = VMB_RESTORE_OPTIONS_INIT;
  ropts.backup = "gc-new";
  ropts.volumes = &destination;
  ropts.volume_count = 1;
  CHECK_RC(vmb_restore_run(t, &ropts, &err), VMB_OK, err);
  vmb_error_free(err);
  CHECK(same_bytes(g_volume, dest));
  vmb_target_free(t);
}

/* A disk of a running QEMU through a volume location (docs/providers/qemu.md): needs
 * qemu-system-x86 and qemu-utils (scripts/test.sh installs them); fails, never skips, without. */
static void test_qemu_volume_location(void) {
  vmb_error* err = NULL;
  char cmd[32768], qmp[4300], location[4400], pidfile[4300], dest[4300];
  path_in_tmp(qmp, sizeof(qmp), "qmp.sock");
  path_in_tmp(pidfile, sizeof(pidfile), "qemu.pid");
  snprintf(cmd, sizeof(cmd),
           "qemu-img create -q -f qcow2 %s/qdisk.qcow2 8M && qemu-system-x86_64 -machine none "
           "-nodefaults -display none -daemonize -pidfile %s -qmp unix:%s,server=on,wait=off "
           "-blockdev driver=file,filename=%s/qdisk.qcow2,node-name=f0 "
           "-blockdev driver=qcow2,file=f0,node-name=disk0",
           g_tmp, pidfile, qmp, g_tmp);
  if (system(cmd) != 0) {
    fprintf(stderr, "cannot start QEMU (scripts/test.sh installs qemu-system-x86, qemu-utils)\n");
    g_current_ok = 0;
    return;
  }
  snprintf(location, sizeof(location), "qemu:%s?node=disk0", qmp);
  vmb_volume volumes[1] = {{"disk0", location}};
  vmb_backup_options b;
  CHECK_RC(vmb_backup_options_init(&b, VMB_BACKUP_OPTIONS_VERSION, &err), VMB_OK, err);
  b.volumes = volumes;
  b.volume_count = 1;
  b.vm_metadata_json = "{\"name\":\"cvm\"}";
  b.name = "c-q1";
  char* record = NULL;
  CHECK_RC(vmb_backup_run(&record, g_target, &b, &err), VMB_OK, err);
  CHECK(record != NULL && strstr(record, "\"provider\":\"qemu\"") != NULL &&
        strstr(record, "\"snapshot\":\"fleece\"") != NULL &&
        strstr(record, "\"checkpoint\":\"vmbackup-") != NULL);
  vmb_free(record);
  record = NULL;
  b.name = "c-q2"; /* the same VM again: an incremental from c-q1's dirty bitmap */
  CHECK_RC(vmb_backup_run(&record, g_target, &b, &err), VMB_OK, err);
  CHECK(record != NULL && strstr(record, "\"parent\":\"c-q1\"") != NULL &&
        strstr(record, "\"changed_bytes\":0") != NULL);
  vmb_free(record);
  path_in_tmp(dest, sizeof(dest), "qdisk-restored.img");
  vmb_volume dests[1] = {{"disk0", dest}};
  vmb_restore_options r;
  CHECK_RC(vmb_restore_options_init(&r, VMB_RESTORE_OPTIONS_VERSION, &err), VMB_OK, err);
  r.backup = "c-q2";
  r.volumes = dests;
  r.volume_count = 1;
  CHECK_RC(vmb_restore_run(g_target, &r, &err), VMB_OK, err);
  struct stat st;
  CHECK(stat(dest, &st) == 0 && st.st_size == 8 << 20);

  snprintf(location, sizeof(location), "qemu:%s", qmp); /* no node */
  b.name = "c-q3";
  CHECK_RC(vmb_backup_run(NULL, g_target, &b, &err), VMB_EINVAL, err);
  CHECK(err != NULL && strstr(vmb_error_message(err), "no node") != NULL);
  vmb_error_free(err);
  err = NULL;
  FILE* f = fopen(pidfile, "r");
  int pid = 0;
  if (f != NULL) {
    if (fscanf(f, "%d", &pid) != 1) pid = 0;
    fclose(f);
  }
  if (pid > 0) {
    snprintf(cmd, sizeof(cmd), "kill -9 %d", pid);
    CHECK(system(cmd) == 0);
  }
}

/* A Ceph RBD image through a volume location (docs/providers/rbd.md), on the cluster of
 * scripts/s3-server.sh (CEPH_CONF, exported by scripts/test.sh); fails, never skips, without. */
static void test_rbd_volume_location(void) {
  vmb_error* err = NULL;
  const char* conf = getenv("CEPH_CONF");
  if (conf == NULL || conf[0] == '\0') {
    fprintf(stderr,
            "CEPH_CONF is not set: start the cluster (eval \"$(bash "
            "scripts/s3-server.sh start)\"; scripts/test.sh does)\n");
    g_current_ok = 0;
    return;
  }
  char cmd[16384], location[8192], image[64];
  snprintf(image, sizeof(image), "c-img-%ld", (long)getpid());
  snprintf(cmd, sizeof(cmd),
           "(ceph -c %s osd pool ls | grep -qx vmbackup-rbd-test || "
           "(ceph -c %s osd pool create vmbackup-rbd-test 8 && rbd -c %s pool init "
           "vmbackup-rbd-test)) >/dev/null 2>&1 && rbd -c %s import --no-progress %s "
           "vmbackup-rbd-test/%s >/dev/null",
           conf, conf, conf, conf, g_volume, image);
  if (system(cmd) != 0) {
    fprintf(stderr, "cannot create the RBD image (%s)\n", cmd);
    g_current_ok = 0;
    return;
  }
  snprintf(location, sizeof(location), "rbd:vmbackup-rbd-test/%s?conf=%s", image, conf);
  vmb_volume volumes[1] = {{"disk0", location}};
  vmb_backup_options b;
  CHECK_RC(vmb_backup_options_init(&b, VMB_BACKUP_OPTIONS_VERSION, &err), VMB_OK, err);
  b.volumes = volumes;
  b.volume_count = 1;
  b.vm_metadata_json = "{\"name\":\"crvm\"}";
  b.name = "c-r1";
  char* record = NULL;
  CHECK_RC(vmb_backup_run(&record, g_target, &b, &err), VMB_OK, err);
  CHECK(record != NULL && strstr(record, "\"provider\":\"rbd\"") != NULL &&
        strstr(record, "\"snapshot\":\"rbd\"") != NULL);
  vmb_free(record);
  record = NULL;
  b.name = "c-r2"; /* unchanged since c-r1: an incremental that reads nothing */
  CHECK_RC(vmb_backup_run(&record, g_target, &b, &err), VMB_OK, err);
  CHECK(record != NULL && strstr(record, "\"parent\":\"c-r1\"") != NULL &&
        strstr(record, "\"changed_bytes\":0") != NULL);
  vmb_free(record);
  char dest[4300];
  path_in_tmp(dest, sizeof(dest), "rbd-restored.img");
  vmb_volume dests[1] = {{"disk0", dest}};
  vmb_restore_options r;
  CHECK_RC(vmb_restore_options_init(&r, VMB_RESTORE_OPTIONS_VERSION, &err), VMB_OK, err);
  r.backup = "c-r2";
  r.volumes = dests;
  r.volume_count = 1;
  CHECK_RC(vmb_restore_run(g_target, &r, &err), VMB_OK, err);
  CHECK(same_bytes(g_volume, dest));
  snprintf(cmd, sizeof(cmd),
           "rbd -c %s snap purge vmbackup-rbd-test/%s >/dev/null 2>&1; rbd -c %s rm "
           "--no-progress vmbackup-rbd-test/%s >/dev/null 2>&1",
           conf, image, conf, image);
  CHECK(system(cmd) == 0);
}

int main(void) {
  const char* base = getenv("TMPDIR");
  if (base == NULL || base[0] == '\0') base = "/tmp";
  snprintf(g_tmp, sizeof(g_tmp), "%s/vmb_c_test.XXXXXX", base);
  if (mkdtemp(g_tmp) == NULL) {
    fprintf(stderr, "mkdtemp(%s): %s\n", g_tmp, strerror(errno));
    return 2;
  }
  path_in_tmp(g_volume, sizeof(g_volume), "source.img");
  if (make_volume(g_volume) != 0) {
    fprintf(stderr, "cannot create %s: %s\n", g_volume, strerror(errno));
    return 2;
  }
  snprintf(g_config, sizeof(g_config), "{\"type\":\"file\",\"endpoint\":\"%s/target\"}", g_tmp);
  {
    char target_dir[4200];
    path_in_tmp(target_dir, sizeof(target_dir), "target");
    if (mkdir(target_dir, 0755) != 0) return 2;
  }

  RUN(test_version);
  RUN(test_free_null_is_accepted);
  RUN(test_error_code_names);
  RUN(test_options_init_rejects_unknown_version);
  RUN(test_bad_config_is_invalid_argument_naming_the_field);
  RUN(test_open_without_create_if_missing_is_not_found);
  RUN(test_open_and_test_target);
  if (g_target != NULL) {
    RUN(test_backup_restore_bytes_identical);
    RUN(test_backup_options_version_1_and_hash_every_block);
    RUN(test_freeze_window_hooks);
    RUN(test_qemu_volume_location);
    RUN(test_rbd_volume_location);
    RUN(test_restore_to_dest_dir_async);
    RUN(test_backup_async_keeps_final_status);
    RUN(test_progress_callback_nonzero_cancels);
    RUN(test_cancel_handle_while_running);
    RUN(test_free_running_job_cancels_it);
    RUN(test_not_found_errors);
    RUN(test_invalid_backup_options);
    RUN(test_backup_from_vm_dir);
    RUN(test_state_dir_and_file_mode_options);
    RUN(test_runtime_of_its_own);
    RUN(test_delete_backup);
    RUN(test_encrypted_target_and_key_slots);
    RUN(test_verify_and_repair);
    RUN(test_forget_and_gc);
  } else {
    fprintf(stderr, "target did not open; skipping the tests that need it\n");
    ++g_failed;
  }
  vmb_target_free(g_target);

  if (g_failed == 0) {
    nftw(g_tmp, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  } else {
    fprintf(stderr, "kept %s for inspection\n", g_tmp);
  }
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
