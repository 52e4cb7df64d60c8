#!/usr/bin/env bash
# Repository maintenance side by side with restic and borg (issue #11): garbage collection after
# deleting half of a VM's backups, then a full read-back check of what is left.
#
#   benchmarks/lifecycle.sh [--vmbackupctl PATH] [--size-mib N] [--backups N] [--runs N]
#                           [--work-dir DIR] [--tools LIST] [--json-out FILE] [--keep]
#
# 1. History: one synthetic VM disk of N MiB (default 4096; 4 MiB regions cycling random data,
#    compressible log text, written zeros and holes) is backed up --backups times (default 20) by
#    every tool. Before each backup but the first the disk changes by 3-5 % (a fraction drawn per
#    backup): half as scattered writes of 64 KiB to 1 MiB at 4 KiB-aligned offsets, half as runs
#    of 1-8 MiB, each 64 KiB random or log text. (All 64 KiB writes would make restic and borg,
#    with their 1 MiB and 4 MiB chunks, store about a quarter of the disk per backup: 20 backups
#    would not fit on the benchmark machine.) Everything is a pure function of the backup's number (a
#    seeded xoshiro256**, the generator is compiled from this file), so every tool sees the same
#    20 disks.
# 2. Reclaim (timed): the oldest half of the backups is deleted and the space reclaimed:
#      vmbackupctl  `delete` of each backup, then `gc --grace 0` run until a run changes nothing
#                   (our gc deletes pack indexes one run and packs the next; every run counts)
#      restic       `forget --prune <the same snapshots>` (default --max-unused 5%)
#      borg         `delete <the same archives>` + `compact` (default --threshold 10)
#    Each timed command runs until `sync -f` of its repository returned; page cache dropped before.
# 3. Verify (timed, cache dropped): `vmbackupctl verify --read-data`, `restic check --read-data`,
#    `borg check --verify-data`, against the read limit of the disk: `dd iflag=direct bs=4M` (and
#    buffered) of a file of random data written for the purpose (a quarter of N, 64-1024 MiB).
# With --runs N > 1 the history is built once and kept: the repositories as hard-linked copies (no
# tool rewrites a repository file in place; checked before every run by size, mtime and inode), the
# tools' caches and state as copies; each run works on a fresh copy of both. Figures are medians over the runs; peak RSS is
# `/usr/bin/time -v` "Maximum resident set size" (the largest of a step's commands).
#
# No tool encrypts except restic, which always does (RESTIC_PASSWORD is set; repository format
# "stable"); vmbackupctl VMBACKUP_ENCRYPTION=none, borg `init -e none`. Tools run single-instance
# with their default threads. Defaults: build-perf/tools/vmbackupctl (a Release build), 3 runs, a new
# directory under /var/tmp (needs about (2 + BACKUPS * TOOLS / 10) x N MiB free), results to
# benchmarks/results/lifecycle-<date>.json. The work directory's large files are deleted at the
# end unless --keep (the logs stay); a failed run keeps everything.
set -euo pipefail
export VMBACKUP_ENCRYPTION=none
cd "$(dirname "$0")/.."
src=$(pwd)
ctl=build-perf/tools/vmbackupctl
size_mib=4096
backups=20
runs=3
work=""
keep=0
json_out=""
tools="vmbackupctl,restic,borg"
cmdline="benchmarks/lifecycle.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --vmbackupctl) ctl=$2; shift 2 ;;
    --size-mib) size_mib=$2; shift 2 ;;
    --backups) backups=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --work-dir) work=$2; shift 2 ;;
    --tools) tools=$2; shift 2 ;;
    --json-out) json_out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "lifecycle.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$size_mib" -lt 16 ] || [ $((size_mib % 16)) -ne 0 ]; then
  echo "lifecycle.sh: --size-mib must be a multiple of 16" >&2; exit 2
fi
[ "$backups" -ge 2 ] || { echo "lifecycle.sh: --backups must be at least 2" >&2; exit 2; }
[ "$runs" -ge 1 ] || { echo "lifecycle.sh: --runs must be at least 1" >&2; exit 2; }
IFS=, read -r -a tool_list <<< "$tools"
for t in "${tool_list[@]}"; do
  case "$t" in
    vmbackupctl) ctl=$(realpath "$ctl")
                 [ -x "$ctl" ] || { echo "no vmbackupctl at $ctl (cmake --preset perf && cmake --build build-perf)" >&2; exit 2; } ;;
    restic|borg) ;;
    *) echo "lifecycle.sh: unknown tool $t" >&2; exit 2 ;;
  esac
done
# Debian packages of the tools compared (and GNU time), installed when missing.
missing=
for t in "${tool_list[@]}"; do
  case "$t" in
    restic) command -v restic >/dev/null 2>&1 || missing="$missing restic" ;;
    borg) command -v borg >/dev/null 2>&1 || missing="$missing borgbackup" ;;
  esac
done
[ -x /usr/bin/time ] || missing="$missing time"
if [ -n "$missing" ]; then
  sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "lifecycle.sh: installing$missing"
  # shellcheck disable=SC2086
  $sudo apt-get install -y --no-install-recommends $missing >/dev/null ||
    { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends $missing >/dev/null; } ||
    { echo "lifecycle.sh: could not install$missing" >&2; exit 2; }
fi
[ -n "$work" ] || work=$(mktemp -d /var/tmp/vmb-lifecycle.XXXXXX)
mkdir -p "$work"
work=$(realpath "$work")
stamp=$(date +%Y%m%d-%H%M%S)
[ -n "$json_out" ] || json_out=$src/benchmarks/results/lifecycle-$stamp.json
logs=$work/logs
mkdir -p "$logs"
: > "$logs/measure.tsv"
: > "$logs/facts.tsv"
delete_n=$((backups / 2))

# Space: the image and the read-limit file; per tool and backup about a tenth of the disk (4096 MiB,
# 20 backups: vmbackupctl 4, restic 6, borg 10 GB).
need_mib=$((size_mib * (20 + backups * ${#tool_list[@]}) / 10))
free_mib=$(df -Pm "$work" | awk 'NR == 2 {print $4}')
echo "work dir $work: ${free_mib} MiB free, this run needs about ${need_mib} MiB"
[ "$free_mib" -ge "$need_mib" ] ||
  { echo "lifecycle.sh: not enough space under $work (use a smaller --size-mib or --runs 1)" >&2; exit 7; }

# ---- the deterministic disk generator
cat > "$work/lc_gen.c" <<'EOF'
/* lc_gen base PATH SIZE_MIB | lc_gen step PATH STEP: see benchmarks/lifecycle.sh */
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
#define PIECE (64u << 10)
#define ALIGN 4096u
static const uint64_t kSeed = 0x6c6966656379636cull; /* "lifecycl" */
typedef struct { uint64_t s[4]; } rng_t;
static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t next(rng_t* r) { /* xoshiro256** */
  uint64_t* s = r->s; uint64_t res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
  return res;
}
static void seed(rng_t* r, uint64_t v) {
  for (int i = 0; i < 4; ++i) { /* splitmix64 */
    uint64_t z = (v += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull; z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    r->s[i] = z ^ (z >> 31);
  }
}
static uint64_t below(rng_t* r, uint64_t n) { return next(r) % n; }
static void die(const char* what) { fprintf(stderr, "lc_gen: %s: %s\n", what, strerror(errno)); exit(1); }
static void fill_random(char* p, size_t n, rng_t* r) {
  for (size_t i = 0; i < n; i += 8) { uint64_t v = next(r); memcpy(p + i, &v, 8); }
}
/* syslog-like text, about 2.5x with LZ4 */
static void fill_text(char* p, size_t n, rng_t* r) {
  static const char* host[] = {"web-01", "web-02", "db-01", "cache-01", "worker-07", "lb-02"};
  static const char* proc[] = {"nginx", "postgres", "sshd", "systemd", "kernel", "cron", "app"};
  static const char* msg[] = {"GET /api/v1/items?id=%016llx HTTP/1.1 200 %u bytes",
                              "session %016llx opened for user deploy by (uid=%u)",
                              "checkpoint complete: wrote %016llx buffers; sync files=%u",
                              "cache miss for key user:%016llx:profile, fetched in %u ms",
                              "worker finished task %016llx after %u ms"};
  char line[320], m[200];
  size_t pos = 0;
  while (pos < n) {
    snprintf(m, sizeof m, msg[below(r, 5)], (unsigned long long)(next(r) & 0xffffffffffull),
             (unsigned)below(r, 100000));
    int k = snprintf(line, sizeof line, "2026-12-%02u %02u:%02u:%02u.%06u %s %s[%u]: %s\n",
                     (unsigned)(1 + below(r, 28)), (unsigned)below(r, 24), (unsigned)below(r, 60),
                     (unsigned)below(r, 60), (unsigned)below(r, 1000000), host[below(r, 6)],
                     proc[below(r, 7)], (unsigned)(1000 + below(r, 30000)), m);
    size_t take = (size_t)k < n - pos ? (size_t)k : n - pos;
    memcpy(p + pos, line, take);
    pos += take;
  }
}
static void put(int fd, const char* p, size_t n, uint64_t off) {
  while (n > 0) {
    ssize_t w = pwrite(fd, p, n, (off_t)off);
    if (w < 0) { if (errno == EINTR) continue; die("pwrite"); }
    p += w; n -= (size_t)w; off += (uint64_t)w;
  }
}
/* one 64 KiB piece of new content: random or text, half each */
static void piece(char* p, rng_t* r) {
  if (next(r) & 1) fill_random(p, PIECE, r); else fill_text(p, PIECE, r);
}
int main(int argc, char** argv) {
  if (argc != 4) { fprintf(stderr, "usage: lc_gen base PATH SIZE_MIB | step PATH STEP\n"); return 2; }
  const char* path = argv[2];
  uint64_t arg = strtoull(argv[3], NULL, 10);
  char* buf = aligned_alloc(ALIGN, 8u << 20);
  if (!buf) die("aligned_alloc");
  rng_t r;
  if (!strcmp(argv[1], "base")) {
    uint64_t size = arg << 20;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) die(path);
    if (ftruncate(fd, (off_t)size) != 0) die("ftruncate");
    for (uint64_t off = 0; off < size; off += REGION) {
      int kind = (int)((off / REGION) % 4); /* random, text, zeros, hole */
      if (kind == 3) continue;
      seed(&r, kSeed ^ off);
      if (kind == 0) fill_random(buf, REGION, &r);
      else if (kind == 1) fill_text(buf, REGION, &r);
      else memset(buf, 0, REGION);
      put(fd, buf, REGION, off);
    }
    if (fsync(fd) != 0) die("fsync");
    close(fd);
    return 0;
  }
  if (strcmp(argv[1], "step")) { fprintf(stderr, "lc_gen: unknown command %s\n", argv[1]); return 2; }
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die(path);
  struct stat sb;
  if (fstat(fd, &sb) != 0) die("fstat");
  uint64_t size = (uint64_t)sb.st_size;
  seed(&r, kSeed ^ (arg * 0xd1b54a32d192ed03ull));
  double fraction = 0.03 + 0.02 * (double)(next(&r) >> 11) / 9007199254740992.0;
  uint64_t want = (uint64_t)(fraction * (double)size), half = want / 2, done = 0, writes = 0, runs = 0;
  while (done < half) { /* scattered: 64 KiB to 1 MiB */
    uint64_t len = PIECE * (1 + below(&r, 16));
    uint64_t off = below(&r, (size - len) / ALIGN + 1) * ALIGN;
    for (uint64_t i = 0; i < len; i += PIECE) piece(buf + i, &r);
    put(fd, buf, len, off);
    done += len; ++writes;
  }
  while (done < want) { /* clustered: runs of 1-8 MiB */
    uint64_t len = (1 + below(&r, 8)) << 20;
    if (len > want - done) len = (want - done + PIECE - 1) / PIECE * PIECE;
    if (len > size) len = size / PIECE * PIECE;
    uint64_t off = below(&r, (size - len) / ALIGN + 1) * ALIGN;
    for (uint64_t i = 0; i < len; i += PIECE) piece(buf + i, &r);
    put(fd, buf, len, off);
    done += len; ++runs;
  }
  if (fsync(fd) != 0) die("fsync");
  close(fd);
  printf("step %llu: %.2f %% of the disk, %llu scattered writes, %llu runs, %llu bytes\n",
         (unsigned long long)arg, 100.0 * (double)done / (double)size, (unsigned long long)writes,
         (unsigned long long)runs, (unsigned long long)done);
  return 0;
}
EOF
cc -O2 -Wall -o "$work/lc_gen" "$work/lc_gen.c"

# ---- helpers
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.6f", b - a}'; }
fact() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$logs/facts.tsv"; }
caches_dropped=1
drop_caches() {
  sync
  echo 3 2>/dev/null > /proc/sys/vm/drop_caches || caches_dropped=0
}
repo_bytes() { du -sb "$1" | awk '{print $1}'; }
repo_files() { find "$1" -type f | wc -l; }
# measure RUN TOOL STEP SYNC_DIR CMD...: runs CMD under /usr/bin/time -v (then `sync -f SYNC_DIR`
# unless empty, inside the timed region) and appends run, tool, step, seconds, peak RSS (KiB) and
# the 1-minute load to measure.tsv. Its stdout is left in $out. Fails the benchmark when CMD does.
seq_no=0
out=
measure() {
  local run=$1 tool=$2 step=$3 sync_dir=$4 t0 t1 rc=0 rss
  shift 4
  seq_no=$((seq_no + 1))
  local base
  base=$logs/$(printf '%04d' "$seq_no").$tool.$step
  printf '%s\n' "$*" > "$base.cmd"
  t0=$(now)
  /usr/bin/time -v -o "$base.time" "$@" > "$base.out" 2> "$base.err" || rc=$?
  [ "$rc" -ne 0 ] || [ -z "$sync_dir" ] || sync -f "$sync_dir"
  t1=$(now)
  if [ "$rc" -ne 0 ]; then
    echo "lifecycle.sh: failed ($rc): $*" >&2
    tail -n 20 "$base.err" >&2
    echo "lifecycle.sh: the work directory $work is kept" >&2
    exit 1
  fi
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$base.time")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$tool" "$step" "$(elapsed "$t0" "$t1")" "$rss" \
    "$(cut -d' ' -f1 /proc/loadavg)" >> "$logs/measure.tsv"
  out=$base.out
}
json_get() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# ---- the tools: each one's repository and private state under $work/<tool>
vrepo=$work/vmbackupctl/repo
vmb=("$ctl" --progress none --state-dir "$work/vmbackupctl/state")
export RESTIC_PASSWORD=vmb-lifecycle-bench RESTIC_REPOSITORY=$work/restic/repo
export RESTIC_CACHE_DIR=$work/restic/cache
export BORG_REPO=$work/borg/repo BORG_BASE_DIR=$work/borg/base
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
borg_create=(-C lz4 --chunker-params "fixed,4194304")  # as benchmarks/compare.sh
repo_of() { case "$1" in vmbackupctl) echo "$vrepo" ;; restic) echo "$RESTIC_REPOSITORY" ;; borg) echo "$BORG_REPO" ;; esac; }

init_tool() {
  rm -rf "${work:?}/$1"
  mkdir -p "$work/$1"
  case "$1" in
    vmbackupctl) mkdir -p "$vrepo" "$work/vmbackupctl/state"; chmod 700 "$work/vmbackupctl/state" ;;
    restic) restic init -q > "$logs/restic.init" ;;
    borg) borg init -e none > "$logs/borg.init" 2>&1 ;;
  esac
}
backup() {  # TOOL NAME
  local r
  r=$(repo_of "$1")
  case "$1" in
    vmbackupctl) measure 0 vmbackupctl backup "$r" "${vmb[@]}" --json backup --target "$vrepo" \
                   --name "$2" --volume "disk=$disk" --vm-name bench-vm ;;
    restic) measure 0 restic backup "$r" restic backup --json --host bench "$disk"
            printf '%s\t%s\n' "$2" "$(sed -n 's/.*"message_type":"summary".*"snapshot_id":"\([0-9a-f]*\)".*/\1/p' "$out")" \
              >> "$logs/restic.ids" ;;
    borg) measure 0 borg backup "$r" borg create "${borg_create[@]}" "::$2" "$disk" ;;
  esac
}
# the oldest half of the backups
doomed=()
for i in $(seq 1 "$delete_n"); do doomed+=("$(printf 'b%02d' "$i")"); done

reclaim() {  # RUN TOOL
  local run=$1 r k ids=() gc_done state idle=0
  r=$(repo_of "$2")
  case "$2" in
    vmbackupctl)
      for n in "${doomed[@]}"; do
        measure "$run" vmbackupctl delete "$r" "${vmb[@]}" --quiet delete "$n" --target "$vrepo"
      done
      for k in $(seq 1 12); do
        measure "$run" vmbackupctl gc "$r" "${vmb[@]}" --json gc --target "$vrepo" --grace 0
        cp "$out" "$logs/run$run.gc$k.json"
        fact "$run" vmbackupctl "gc${k}_bytes_after" "$(repo_bytes "$r")"
        # Done when nothing is left for a later run; stuck when two runs in a row changed nothing
        # (the first run only lists repack candidates, which no counter shows as a change).
        state=$(python3 - "$out" <<'PY'
import json, sys
g = json.load(open(sys.argv[1]))
changed = sum(g[k] for k in ("new_candidates", "indexes_deleted", "packs_deleted", "packs_repacked",
                             "orphan_packs_deleted", "temporaries_deleted", "indexes_restored"))
pending = (g["new_candidates"] or g["indexes_deleted"] or g["packs_repacked"]
           or g["repack_candidates"] or g["reclaimable_bytes"] > g["bytes_deleted"])
print("idle" if changed == 0 and pending else "pending" if pending else "done")
PY
)
        gc_done=no
        case "$state" in
          done) gc_done=yes; break ;;
          idle) idle=$((idle + 1)); [ "$idle" -lt 2 ] || { gc_done=stuck; break; } ;;
          *) idle=0 ;;
        esac
      done
      fact "$run" vmbackupctl gc_runs "$k"
      fact "$run" vmbackupctl gc_finished "$gc_done" ;;
    restic)
      for n in "${doomed[@]}"; do ids+=("$(awk -v n="$n" '$1 == n {print $2}' "$logs/restic.ids")"); done
      measure "$run" restic forget "$r" restic forget --prune "${ids[@]}" ;;
    borg)
      measure "$run" borg delete "$r" borg delete "$BORG_REPO" "${doomed[@]}"
      measure "$run" borg compact "$r" borg compact "$BORG_REPO" ;;
  esac
}
verify() {  # RUN TOOL
  case "$2" in
    vmbackupctl) measure "$1" vmbackupctl verify "" "${vmb[@]}" --json verify --target "$vrepo" --read-data
                 cp "$out" "$logs/run$1.verify.json" ;;
    restic) measure "$1" restic verify "" restic check --read-data ;;
    borg) measure "$1" borg verify "" borg check --verify-data "$BORG_REPO" ;;
  esac
}

# ---- 1. history
disk=$work/disk.img
echo "== history: $backups backups of a ${size_mib} MiB disk (tools: $tools)"
"$work/lc_gen" base "$disk" "$size_mib"
: > "$logs/gen.log"
: > "$logs/restic.ids"
for t in "${tool_list[@]}"; do init_tool "$t"; done
for i in $(seq 1 "$backups"); do
  name=$(printf 'b%02d' "$i")
  [ "$i" -eq 1 ] || "$work/lc_gen" step "$disk" "$i" >> "$logs/gen.log"
  for t in "${tool_list[@]}"; do backup "$t" "$name"; done
  printf '  %s: %s\n' "$name" "$(awk -F'\t' -v n="$i" '$1 == 0 && $3 == "backup" {c[$2]++; if (c[$2] == n) printf "%s %.1fs  ", $2, $4}' "$logs/measure.tsv")"
done
manifest() { (cd "$1" && find . -printf '%p %s %T@ %i\n' | sort); }
copy_tool() {  # FROM TO: the repository hard-linked, the tool's state and caches copied
  local e
  mkdir -p "$2"
  for e in "$1"/*; do
    if [ "$(basename "$e")" = repo ]; then cp -al "$e" "$2/"; else cp -a "$e" "$2/"; fi
  done
}
if [ "$runs" -gt 1 ]; then
  mkdir -p "$work/pristine"
  for t in "${tool_list[@]}"; do
    copy_tool "$work/$t" "$work/pristine/$t"
    manifest "$work/pristine/$t/repo" > "$logs/pristine.$t"
  done
fi
# The read limit: a file of random data, read with O_DIRECT and buffered after dropping the cache.
lim_mib=$((size_mib / 4))
[ "$lim_mib" -ge 64 ] || lim_mib=64
[ "$lim_mib" -le 1024 ] || lim_mib=1024
head -c "${lim_mib}M" /dev/urandom > "$work/readlimit.bin"
sync -f "$work"
read_rate() {  # RUN KEY DD-FLAGS...: MB/s of reading readlimit.bin
  local t0 t1 run=$1 key=$2
  shift 2
  drop_caches
  t0=$(now)
  dd if="$work/readlimit.bin" of=/dev/null bs=4M "$@" 2>/dev/null
  t1=$(now)
  fact "$run" disk "$key" "$(awk -v b=$((lim_mib << 20)) -v s="$(elapsed "$t0" "$t1")" 'BEGIN {printf "%.1f", b / s / 1e6}')"
}

# ---- 2. and 3., per run
for run in $(seq 1 "$runs"); do
  echo "== run $run of $runs"
  if [ "$run" -gt 1 ]; then
    for t in "${tool_list[@]}"; do
      manifest "$work/pristine/$t/repo" | cmp -s - "$logs/pristine.$t" ||
        { echo "lifecycle.sh: $t changed a file of its saved repository in place (hard links); use --runs 1" >&2; exit 1; }
      rm -rf "${work:?}/$t"
      copy_tool "$work/pristine/$t" "$work/$t"
    done
  fi
  for t in "${tool_list[@]}"; do
    r=$(repo_of "$t")
    fact "$run" "$t" bytes_before "$(repo_bytes "$r")"
    fact "$run" "$t" files_before "$(repo_files "$r")"
    drop_caches
    reclaim "$run" "$t"
    fact "$run" "$t" bytes_after "$(repo_bytes "$r")"
    fact "$run" "$t" files_after "$(repo_files "$r")"
    echo "  $t: reclaimed"
  done
  read_rate "$run" read_direct_mbps iflag=direct
  read_rate "$run" read_buffered_mbps
  for t in "${tool_list[@]}"; do
    drop_caches
    verify "$run" "$t"
    echo "  $t: verified"
  done
  if [ -d "$vrepo" ]; then
    # every file of our repository read once, one after the other (cat): context for verify
    drop_caches
    t0=$(now)
    find "$vrepo" -type f -print0 | xargs -0 cat > /dev/null
    fact "$run" vmbackupctl repo_cat_seconds "$(elapsed "$t0" "$(now)")"
  fi
done
fact 0 all caches_dropped "$caches_dropped"

# ---- results
versions=$(
  for t in "${tool_list[@]}"; do
    case "$t" in
      vmbackupctl) printf 'vmbackupctl\t%s\n' "$("$ctl" version | head -n 1)" ;;
      restic) printf 'restic\t%s\n' "$(restic version)" ;;
      borg) printf 'borg\t%s\n' "$(borg --version)" ;;
    esac
  done
  printf 'git\t%s\n' "$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$src" diff --quiet HEAD 2>/dev/null || echo ' (modified)')"
  printf 'restic_repo\t%s\n' "$( [ -f "$RESTIC_REPOSITORY/config" ] && restic cat config 2>/dev/null | tr -d '\n ' || echo -)"
)
mkdir -p "$(dirname "$json_out")"
python3 - "$logs" "$json_out" "$cmdline" "$size_mib" "$backups" "$runs" "$delete_n" "$tools" \
  "$lim_mib" "$versions" <<'PY'
import csv, datetime, json, os, platform, statistics, sys

logs, json_out, cmdline = sys.argv[1:4]
size_mib, backups, runs, delete_n = map(int, sys.argv[4:8])
tools = sys.argv[8].split(",")
lim_mib = int(sys.argv[9])
versions = dict(l.split("\t", 1) for l in sys.argv[10].splitlines() if "\t" in l)

meas = [dict(run=int(r[0]), tool=r[1], step=r[2], seconds=float(r[3]), rss_kib=int(r[4]),
             load1=float(r[5])) for r in csv.reader(open(f"{logs}/measure.tsv"), delimiter="\t")]
facts = {}
for r in csv.reader(open(f"{logs}/facts.tsv"), delimiter="\t"):
    facts[(int(r[0]), r[1], r[2])] = r[3]
med = lambda xs: statistics.median(xs) if xs else None
RECLAIM = {"vmbackupctl": ("delete", "gc"), "restic": ("forget",), "borg": ("delete", "compact")}

def fnum(run, tool, key):
    v = facts.get((run, tool, key))
    return None if v is None else float(v)

samples = {}
for t in tools:
    per = []
    for run in range(1, runs + 1):
        rec = [m for m in meas if m["run"] == run and m["tool"] == t and m["step"] in RECLAIM[t]]
        ver = [m for m in meas if m["run"] == run and m["tool"] == t and m["step"] == "verify"]
        s = {"run": run,
             "reclaim_seconds": sum(m["seconds"] for m in rec),
             "reclaim_rss_kib": max(m["rss_kib"] for m in rec),
             "reclaim_steps": [{k: m[k] for k in ("step", "seconds", "rss_kib", "load1")} for m in rec],
             "bytes_before": int(fnum(run, t, "bytes_before")),
             "bytes_after": int(fnum(run, t, "bytes_after")),
             "files_before": int(fnum(run, t, "files_before")),
             "files_after": int(fnum(run, t, "files_after")),
             "verify_seconds": ver[0]["seconds"], "verify_rss_kib": ver[0]["rss_kib"],
             "verify_load1": ver[0]["load1"]}
        s["verify_mbps"] = s["bytes_after"] / s["verify_seconds"] / 1e6
        if t == "vmbackupctl":
            gcs = [m for m in rec if m["step"] == "gc"]
            s["delete_seconds"] = sum(m["seconds"] for m in rec if m["step"] == "delete")
            s["gc_seconds"] = sum(m["seconds"] for m in gcs)
            s["gc_runs"] = len(gcs)
            s["gc_finished"] = facts.get((run, t, "gc_finished"))
            s["gc_reports"] = [json.load(open(f"{logs}/run{run}.gc{k}.json"))
                               for k in range(1, len(gcs) + 1)]
            s["gc_bytes_after_each_run"] = [int(fnum(run, t, f"gc{k}_bytes_after"))
                                            for k in range(1, len(gcs) + 1)]
            s["verify_report"] = json.load(open(f"{logs}/run{run}.verify.json"))
            s["repo_cat_seconds"] = fnum(run, t, "repo_cat_seconds")
        per.append(s)
    samples[t] = per
    backup_steps = [m for m in meas if m["run"] == 0 and m["tool"] == t and m["step"] == "backup"]
    samples[t + "_history"] = [{k: m[k] for k in ("seconds", "rss_kib")} for m in backup_steps]

limit = []
for run in range(1, runs + 1):
    d, b = fnum(run, "disk", "read_direct_mbps"), fnum(run, "disk", "read_buffered_mbps")
    limit.append({"run": run, "direct_mbps": d, "buffered_mbps": b, "limit_mbps": max(d, b)})
limit_mbps = med([l["limit_mbps"] for l in limit])

summary = {}
for t in tools:
    per = samples[t]
    s = {k: med([p[k] for p in per]) for k in
         ("reclaim_seconds", "reclaim_rss_kib", "bytes_before", "bytes_after", "files_before",
          "files_after", "verify_seconds", "verify_rss_kib", "verify_mbps")}
    s["bytes_freed"] = s["bytes_before"] - s["bytes_after"]
    s["read_limit_seconds"] = s["bytes_after"] / (limit_mbps * 1e6)
    s["verify_x_limit"] = s["verify_seconds"] / s["read_limit_seconds"]
    if t == "vmbackupctl":
        for k in ("delete_seconds", "gc_seconds", "gc_runs", "repo_cat_seconds"):
            s[k] = med([p[k] for p in per])
        s["verify_bytes_read"] = med([p["verify_report"]["bytes_read"] for p in per])
        s["verify_report_seconds"] = med([p["verify_report"]["seconds"] for p in per])
        # what the last gc run left: dead blocks in packs more than half live are not repacked
        s["gc_dead_bytes_left"] = med([p["gc_reports"][-1]["dead_bytes_in_partly_live_packs"]
                                       for p in per])
    summary[t] = s

goals = []
v, r = summary.get("vmbackupctl"), summary.get("restic")
if v and r:
    x = r["reclaim_seconds"] / v["reclaim_seconds"]
    goals.append({"goal": "reclaim (delete + gc) >= 3x faster than restic forget --prune",
                  "value": round(x, 2), "target": 3, "met": x >= 3})
    x = r["verify_seconds"] / v["verify_seconds"]
    goals.append({"goal": "verify --read-data >= 3x faster than restic check --read-data",
                  "value": round(x, 2), "target": 3, "met": x >= 3})
if v:
    x = v["verify_x_limit"]
    goals.append({"goal": "verify --read-data <= 1.3x the read limit's time",
                  "value": round(x, 2), "target": 1.3, "met": x <= 1.3})

doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": cmdline,
       "machine": {"nproc": os.cpu_count(), "kernel": platform.release(),
                   "load_end": [round(x, 2) for x in os.getloadavg()]},
       "versions": versions,
       "config": {"size_mib": size_mib, "backups": backups, "deleted": delete_n,
                  "deleted_which": "oldest", "runs": runs, "tools": tools,
                  "read_limit_file_mib": lim_mib,
                  "caches_dropped": facts.get((0, "all", "caches_dropped")) == "1",
                  "encryption": {"vmbackupctl": "none", "borg": "none (init -e none)",
                                 "restic": "always encrypted (RESTIC_PASSWORD)"},
                  "borg_create": "-C lz4 --chunker-params fixed,4194304",
                  "restic_prune": "forget --prune (default --max-unused 5%)",
                  "borg_compact": "default --threshold 10",
                  "vmbackupctl_gc": "gc --grace 0, repeated until nothing is left for a later run"},
       "read_limit": limit, "read_limit_mbps": limit_mbps,
       "samples": samples, "summary": summary, "goals": goals}
with open(json_out, "w") as f:
    json.dump(doc, f, indent=1)
    f.write("\n")

MB = 1e6
mib = lambda b: f"{b / 2**20:,.0f} MiB"
print(f"\nRepository maintenance, {size_mib} MiB disk, {backups} backups, oldest {delete_n} deleted,"
      f" median of {runs} run(s)")
print(f"{'reclaim':<12} {'time s':>8} {'peak RSS':>10} {'before':>12} {'after':>12} {'freed':>12}  steps")
for t in tools:
    s = summary[t]
    steps = (f"{s['delete_seconds']:.2f} s delete + {s['gc_runs']:g} gc runs {s['gc_seconds']:.2f} s"
             if t == "vmbackupctl" else " + ".join(RECLAIM[t]))
    print(f"{t:<12} {s['reclaim_seconds']:>8.2f} {s['reclaim_rss_kib'] / 1024:>7.0f} MiB "
          f"{mib(s['bytes_before']):>12} {mib(s['bytes_after']):>12} {mib(s['bytes_freed']):>12}  {steps}")
print(f"\n{'verify':<12} {'time s':>8} {'peak RSS':>10} {'MB/s':>8} {'x limit':>8}")
for t in tools:
    s = summary[t]
    print(f"{t:<12} {s['verify_seconds']:>8.2f} {s['verify_rss_kib'] / 1024:>7.0f} MiB "
          f"{s['verify_mbps']:>8.0f} {s['verify_x_limit']:>8.2f}")
print(f"read limit: {limit_mbps:.0f} MB/s (dd bs=4M of {lim_mib} MiB: "
      + ", ".join(f"direct {l['direct_mbps']:.0f} / buffered {l['buffered_mbps']:.0f}" for l in limit)
      + " MB/s)")
if "vmbackupctl" in summary and summary["vmbackupctl"].get("repo_cat_seconds"):
    s = summary["vmbackupctl"]
    print(f"vmbackupctl repository read with cat after dropping the cache: "
          f"{s['repo_cat_seconds']:.2f} s ({s['bytes_after'] / s['repo_cat_seconds'] / MB:.0f} MB/s)")
if "vmbackupctl" in summary:
    first = samples["vmbackupctl"][0]
    keys = ("new_candidates", "repack_candidates", "packs_repacked", "indexes_deleted",
            "packs_deleted", "bytes_deleted", "dead_bytes_in_partly_live_packs")
    for k, (g, m) in enumerate(zip(first["gc_reports"],
                                   [m for m in first["reclaim_steps"] if m["step"] == "gc"]), 1):
        print(f"vmbackupctl gc run {k} (run 1): {m['seconds']:.2f} s, "
              + ", ".join(f"{key} {g[key]}" for key in keys))
for g in goals:
    print(f"goal: {g['goal']}: {g['value']} ({'met' if g['met'] else 'NOT met'})")
print(f"results: {json_out}")
PY

# ---- clean up
if [ "$keep" -eq 0 ]; then
  rm -rf "${work:?}/disk.img" "$work/readlimit.bin" "$work/pristine" "$work/vmbackupctl" "$work/restic" "$work/borg"
  echo "large files deleted; logs in $logs"
else
  echo "kept: $work"
fi
