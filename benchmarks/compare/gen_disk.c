/* Deterministic synthetic VM disks for benchmarks/compare.sh.
 *
 * Every byte of a base disk is a pure function of (seed, offset), so any range can be regenerated
 * ("revert") after a benchmark rewrote it, instead of keeping a pristine 4 GiB copy.
 *
 *   gen_disk base    PATH [--size-mib N]             4 MiB regions cycling random, compressible
 *                                                     (log text, ~2.5x with lz4 -1), written zeros,
 *                                                     holes; N a multiple of 16 (default 4096)
 *   gen_disk mutate  PATH --mode scattered|clustered [--fraction F] [--dirty-map OUT --volume NAME]
 *                                                     rewrite F (default 0.01) of the disk with 64
 * KiB writes of random data at 4 KiB-aligned offsets; clustered = the same writes (same bytes) laid
 *                                                     end to end in 5 runs
 *   gen_disk revert  PATH --mode scattered|clustered [--fraction F]
 *                                                     put the base content back where mutate wrote
 *   gen_disk sparse  PATH --size-mib N --data-mib D [--data-kind mixed|rc]
 *                                                     N MiB sparse file holding D MiB of data in 4
 * MiB regions spread evenly over the file (mixed: the 4-kind cycle's data kinds random,
 * compressible, zeros; rc: random and compressible alternating)
 *
 * All writes are fsync'ed before exit. Build: cc -O2 -o gen_disk gen_disk.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define REGION (4u << 20)
#define PAGE 4096u
#define WRITE_SIZE (64u << 10)
#define ALIGN 4096u
#define CLUSTER_RUNS 5

static const uint64_t kSeed = 0x766d626b70657266ull; /* "vmbkperf" */

static void die(const char* what) {
  fprintf(stderr, "gen_disk: %s: %s\n", what, strerror(errno));
  exit(1);
}

static uint64_t splitmix(uint64_t* s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

typedef struct {
  uint64_t s[4];
} rng_t;
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static void rng_seed(rng_t* r, uint64_t seed) {
  uint64_t s = seed;
  for (int i = 0; i < 4; ++i) r->s[i] = splitmix(&s);
}
static inline uint64_t rng_next(rng_t* r) { /* xoshiro256** */
  uint64_t* s = r->s;
  uint64_t res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return res;
}
static inline uint64_t rng_below(rng_t* r, uint64_t n) { return rng_next(r) % n; }

static void fill_random(char* p, size_t n, rng_t* r) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = rng_next(r);
    memcpy(p + i, &v, 8);
  }
  if (i < n) {
    uint64_t v = rng_next(r);
    memcpy(p + i, &v, n - i);
  }
}

/* ---- compressible content: syslog-like text, each 4 KiB page generated from its own seed ---- */
static const char* kHosts[] = {"web-01", "web-02", "db-01", "cache-01", "worker-07", "lb-02"};
static const char* kProcs[] = {"nginx",  "postgres", "sshd", "systemd",
                               "kernel", "cron",     "app",  "redis-server"};
static const char* kLevels[] = {"INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"};
static void message(char* msg, size_t cap, rng_t* r) {
  char id[24];
  snprintf(id, sizeof(id), "%016llx", (unsigned long long)rng_next(r));
  unsigned a = (unsigned)rng_below(r, 65536), b = (unsigned)rng_below(r, 1000),
           c = (unsigned)rng_below(r, 100);
  switch (rng_below(r, 10)) {
    case 0:
      snprintf(msg, cap, "GET /api/v1/items?id=%s HTTP/1.1 200 %u bytes in %u ms", id, a, b);
      break;
    case 1:
      snprintf(msg, cap, "POST /api/v1/orders/%s HTTP/1.1 201 %u bytes in %u ms", id, a, b);
      break;
    case 2:
      snprintf(msg, cap, "connection from 10.0.%u.%u port %u accepted", b % 256, c, a);
      break;
    case 3:
      snprintf(msg, cap, "checkpoint complete: wrote %u buffers (%u.%u%%); sync files=%u", a, c,
               b % 10, b);
      break;
    case 4:
      snprintf(msg, cap, "session %s opened for user deploy by (uid=%u)", id, b);
      break;
    case 5:
      snprintf(msg, cap, "Started Session %u of user root; job id %s", a, id);
      break;
    case 6:
      snprintf(msg, cap, "cache miss for key user:%s:profile, fetched in %u ms", id, b);
      break;
    case 7:
      snprintf(msg, cap, "worker %u finished task %s after %u ms (retries=%u)", c, id, a, b % 4);
      break;
    case 8:
      snprintf(msg, cap,
               "TCP: request_sock_TCP: Possible SYN flooding on port %u. Sending cookies.", a);
      break;
    default:
      snprintf(msg, cap,
               "automatic vacuum of table \"app.public.events\": index scans: %u, pages removed %u",
               c, a);
      break;
  }
}

static void fill_text_page(char* p, uint64_t page_no, uint64_t seed) {
  rng_t r;
  rng_seed(&r, seed ^ (page_no * 0x9e3779b97f4a7c15ull) ^ 0x7465787400000000ull);
  char line[400], msg[240];
  size_t pos = 0;
  uint64_t ts = 1764000000ull + page_no / 8;
  while (pos < PAGE) {
    message(msg, sizeof(msg), &r);
    int n =
        snprintf(line, sizeof(line), "2025-11-%02u %02u:%02u:%02u.%06u %s %s[%u]: %s %s\n",
                 (unsigned)(1 + (ts / 86400) % 28), (unsigned)((ts / 3600) % 24),
                 (unsigned)((ts / 60) % 60), (unsigned)(ts % 60), (unsigned)rng_below(&r, 1000000),
                 kHosts[rng_below(&r, 6)], kProcs[rng_below(&r, 8)],
                 (unsigned)(1000 + rng_below(&r, 30000)), kLevels[rng_below(&r, 6)], msg);
    size_t take = (size_t)n < PAGE - pos ? (size_t)n : PAGE - pos;
    memcpy(p + pos, line, take);
    pos += take;
  }
}

/* kind of the 4 MiB region holding `off` in a base disk: 0 random, 1 text, 2 zeros, 3 hole */
static int region_kind(uint64_t off) { return (int)((off / REGION) % 4); }

/* base content of the page-aligned range [off, off+len) into p (holes read as zeros) */
static void base_content(char* p, uint64_t off, size_t len) {
  for (size_t done = 0; done < len; done += PAGE) {
    uint64_t o = off + done;
    int k = region_kind(o);
    if (k == 0) {
      rng_t r;
      rng_seed(&r, kSeed ^ ((o / PAGE) * 0xd1b54a32d192ed03ull));
      fill_random(p + done, PAGE, &r);
    } else if (k == 1) {
      fill_text_page(p + done, o / PAGE, kSeed);
    } else {
      memset(p + done, 0, PAGE);
    }
  }
}

static void pwrite_all(int fd, const char* p, size_t n, uint64_t off) {
  while (n > 0) {
    ssize_t w = pwrite(fd, p, n, (off_t)off);
    if (w < 0) {
      if (errno == EINTR) continue;
      die("pwrite");
    }
    p += w;
    n -= (size_t)w;
    off += (uint64_t)w;
  }
}

static void punch(int fd, uint64_t off, uint64_t len) {
  if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) != 0)
    die("fallocate(PUNCH_HOLE)");
}

static int cmd_base(const char* path, uint64_t size) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) die(path);
  if (ftruncate(fd, (off_t)size) != 0) die("ftruncate");
  char* buf = aligned_alloc(PAGE, REGION);
  for (uint64_t off = 0; off < size; off += REGION) {
    if (region_kind(off) == 3) continue;
    base_content(buf, off, REGION);
    pwrite_all(fd, buf, REGION, off);
  }
  if (fsync(fd) != 0) die("fsync");
  close(fd);
  free(buf);
  return 0;
}

/* the writes of a mutation: n offsets; content of write i = random from seed (kSeed, i) */
typedef struct {
  uint64_t* offs;
  size_t n;
} writes_t;

static writes_t plan_writes(uint64_t size, double fraction, int clustered) {
  writes_t w;
  w.n = (size_t)(fraction * (double)size / WRITE_SIZE);
  w.offs = calloc(w.n ? w.n : 1, sizeof(uint64_t));
  rng_t r;
  rng_seed(&r, kSeed ^ 0x5ca77e7ed0000000ull);
  const uint64_t slots = (size - WRITE_SIZE) / ALIGN + 1;
  if (!clustered) {
    for (size_t i = 0; i < w.n; ++i) w.offs[i] = rng_below(&r, slots) * ALIGN;
    return w;
  }
  /* CLUSTER_RUNS runs, run j inside the j-th fifth of the disk, writes back to back */
  rng_seed(&r, kSeed ^ 0xc1a57e7ed0000000ull);
  size_t per = (w.n + CLUSTER_RUNS - 1) / CLUSTER_RUNS, i = 0;
  for (int j = 0; j < CLUSTER_RUNS && i < w.n; ++j) {
    size_t cnt = per < w.n - i ? per : w.n - i;
    uint64_t part = size / CLUSTER_RUNS / ALIGN * ALIGN, span = cnt * (uint64_t)WRITE_SIZE;
    uint64_t start = part * j + rng_below(&r, (part - span) / ALIGN) * ALIGN;
    for (size_t k = 0; k < cnt; ++k, ++i) w.offs[i] = start + k * WRITE_SIZE;
  }
  return w;
}

static uint64_t file_size(int fd) {
  struct stat sb;
  if (fstat(fd, &sb) != 0) die("fstat");
  return (uint64_t)sb.st_size;
}

static int cmd_mutate(const char* path, double fraction, int clustered, const char* map,
                      const char* volume) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die(path);
  uint64_t size = file_size(fd);
  writes_t w = plan_writes(size, fraction, clustered);
  char* buf = aligned_alloc(PAGE, WRITE_SIZE);
  for (size_t i = 0; i < w.n; ++i) {
    rng_t r;
    rng_seed(&r, kSeed ^ 0x77726974650000ull ^ (i * 0x9e3779b97f4a7c15ull));
    fill_random(buf, WRITE_SIZE, &r);
    pwrite_all(fd, buf, WRITE_SIZE, w.offs[i]);
  }
  if (fsync(fd) != 0) die("fsync");
  close(fd);
  if (map) {
    FILE* f = fopen(map, "w");
    if (!f) die(map);
    fprintf(f, "{\"%s\": [", volume);
    for (size_t i = 0; i < w.n; ++i)
      fprintf(f, "%s[%llu, %u]", i ? ", " : "", (unsigned long long)w.offs[i], WRITE_SIZE);
    fprintf(f, "]}\n");
    if (fclose(f) != 0) die(map);
  }
  printf("%zu writes of %u bytes (%llu bytes)\n", w.n, WRITE_SIZE,
         (unsigned long long)w.n * WRITE_SIZE);
  free(buf);
  return 0;
}

static int cmd_revert(const char* path, double fraction, int clustered) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die(path);
  uint64_t size = file_size(fd);
  writes_t w = plan_writes(size, fraction, clustered);
  char* buf = aligned_alloc(PAGE, PAGE);
  for (size_t i = 0; i < w.n; ++i) {
    for (uint64_t o = w.offs[i]; o < w.offs[i] + WRITE_SIZE; o += PAGE) {
      if (region_kind(o) == 3) {
        punch(fd, o, PAGE);
        continue;
      }
      base_content(buf, o, PAGE);
      pwrite_all(fd, buf, PAGE, o);
    }
  }
  if (fsync(fd) != 0) die("fsync");
  close(fd);
  free(buf);
  return 0;
}

static int cmd_sparse(const char* path, uint64_t size, uint64_t data, int rc_only) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) die(path);
  if (ftruncate(fd, (off_t)size) != 0) die("ftruncate");
  uint64_t regions = data / REGION, stride = regions ? size / regions : size;
  stride -= stride % REGION;
  char* buf = aligned_alloc(PAGE, REGION);
  for (uint64_t i = 0; i < regions; ++i) {
    /* content of region i of a base disk (random / text / zeros), skipping the hole kind */
    uint64_t src =
        rc_only ? (i * 4 + (i % 2)) * (uint64_t)REGION : ((i / 3) * 4 + (i % 3)) * (uint64_t)REGION;
    base_content(buf, src, REGION);
    pwrite_all(fd, buf, REGION, i * stride);
  }
  if (fsync(fd) != 0) die("fsync");
  close(fd);
  free(buf);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: gen_disk base|mutate|revert|sparse PATH [options]\n");
    return 2;
  }
  const char *cmd = argv[1], *path = argv[2], *map = NULL, *volume = "disk", *mode = "scattered",
             *kind = "mixed";
  uint64_t size_mib = 4096, data_mib = 1024;
  double fraction = 0.01;
  for (int i = 3; i < argc; ++i) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) {
      fprintf(stderr, "gen_disk: %s needs a value\n", a);
      return 2;
    }
    if (!strcmp(a, "--size-mib"))
      size_mib = strtoull(v, NULL, 10);
    else if (!strcmp(a, "--data-mib"))
      data_mib = strtoull(v, NULL, 10);
    else if (!strcmp(a, "--fraction"))
      fraction = strtod(v, NULL);
    else if (!strcmp(a, "--mode"))
      mode = v;
    else if (!strcmp(a, "--dirty-map"))
      map = v;
    else if (!strcmp(a, "--volume"))
      volume = v;
    else if (!strcmp(a, "--data-kind"))
      kind = v;
    else {
      fprintf(stderr, "gen_disk: unknown option %s\n", a);
      return 2;
    }
    ++i;
  }
  int clustered = !strcmp(mode, "clustered");
  if (!clustered && strcmp(mode, "scattered")) {
    fprintf(stderr, "gen_disk: --mode scattered|clustered\n");
    return 2;
  }
  if (!strcmp(cmd, "base")) {
    if (size_mib % 16) {
      fprintf(stderr, "gen_disk: --size-mib must be a multiple of 16\n");
      return 2;
    }
    return cmd_base(path, size_mib << 20);
  }
  if (!strcmp(cmd, "mutate")) return cmd_mutate(path, fraction, clustered, map, volume);
  if (!strcmp(cmd, "revert")) return cmd_revert(path, fraction, clustered);
  if (!strcmp(cmd, "sparse"))
    return cmd_sparse(path, size_mib << 20, data_mib << 20, !strcmp(kind, "rc"));
  fprintf(stderr, "gen_disk: unknown command %s\n", cmd);
  return 2;
}
