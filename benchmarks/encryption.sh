#!/usr/bin/env bash
# Encrypted against unencrypted: full backup and restore of the same volume to a local target with
# vmbackupctl, each mode RUNS times, medians reported (issue #11 goal: an encrypted full backup
# within 15 % of an unencrypted one). Encrypted twice: with a passphrase (each command runs one
# scrypt, ~0.2 s whatever the volume's size: the backup wraps the new master key, the restore
# unwraps it) and with a raw key (no scrypt: the cost per byte alone).
#   benchmarks/encryption.sh [--vmbackupctl PATH] [--size-mib N] [--runs N] [--work-dir DIR]
# Defaults: build-perf/tools/vmbackupctl (a Release build), 1024 MiB (half random, a quarter
# compressible text, a quarter zeros), 3 runs, a new directory under /var/tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
ctl=build-perf/tools/vmbackupctl
size_mib=1024
runs=3
work=""
while [ $# -gt 0 ]; do
  case "$1" in
    --vmbackupctl) ctl=$2; shift 2 ;;
    --size-mib) size_mib=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --work-dir) work=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$ctl" ] || { echo "no vmbackupctl at $ctl (cmake --preset perf && cmake --build build-perf)" >&2; exit 2; }
[ -n "$work" ] || work=$(mktemp -d /var/tmp/vmb-enc-bench.XXXXXX)
mkdir -p "$work"
vol=$work/disk0.img
q=$((size_mib / 4))
{
  head -c $((2 * q))M /dev/urandom
  (set +o pipefail; yes "vmbackup encryption benchmark line $RANDOM with some repeated text" | head -c ${q}M)
  head -c ${q}M /dev/zero
} > "$vol"
printf 'passphrase for the benchmark\n' > "$work/pw"
head -c 32 /dev/urandom > "$work/raw.key"
sync

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

for mode in none aes-256-gcm raw-key; do
  : > "$work/$mode.backup"
  : > "$work/$mode.restore"
  for i in $(seq "$runs"); do
    rm -rf "$work/target" "$work/out" "$work/state"
    mkdir -p "$work/target"
    args=(--progress none --quiet --state-dir "$work/state")
    case $mode in
      none) args+=(--encryption none) ;;
      aes-256-gcm) args+=(--encryption aes-256-gcm --passphrase-file "$work/pw") ;;
      raw-key) args+=(--encryption aes-256-gcm --key-file "$work/raw.key") ;;
    esac
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    t0=$(now)
    "$ctl" "${args[@]}" backup --target "$work/target" --name b --volume "disk0=$vol" --no-fingerprints
    t1=$(now)
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    t2=$(now)
    "$ctl" "${args[@]}" restore b --target "$work/target" --dest-dir "$work/out"
    t3=$(now)
    cmp -s "$vol" "$work/out/disk0.img" || { echo "restore of $mode differs" >&2; exit 1; }
    echo "$t1 - $t0" | bc >> "$work/$mode.backup"
    echo "$t3 - $t2" | bc >> "$work/$mode.restore"
  done
done
b0=$(median < "$work/none.backup"); b1=$(median < "$work/aes-256-gcm.backup")
r0=$(median < "$work/none.restore"); r1=$(median < "$work/aes-256-gcm.restore")
b2=$(median < "$work/raw-key.backup"); r2=$(median < "$work/raw-key.restore")
pct() { echo "($1 / $2 - 1) * 100" | bc -l; }
printf '%-22s %12s %12s\n' "" "backup (s)" "restore (s)"
printf '%-22s %12.2f %12.2f\n' none "$b0" "$r0" "aes-256-gcm passphrase" "$b1" "$r1" \
  "aes-256-gcm raw key" "$b2" "$r2"
printf '%-22s %11.1f%% %11.1f%%\n' "overhead passphrase" "$(pct "$b1" "$b0")" "$(pct "$r1" "$r0")" \
  "overhead raw key" "$(pct "$b2" "$b0")" "$(pct "$r2" "$r0")"
printf '(%s MiB volume, median of %s runs, %s)\n' "$size_mib" "$runs" "$work"
