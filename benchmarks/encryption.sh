#!/usr/bin/env bash
# Encrypted against unencrypted: full backup and restore of the same volume to a local target with
# vmbackupctl, each mode RUNS times, medians reported (issue #11 goal: an encrypted full backup
# within 15 % of an unencrypted one).
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
sync

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

for mode in none aes-256-gcm; do
  : > "$work/$mode.backup"
  : > "$work/$mode.restore"
  for i in $(seq "$runs"); do
    rm -rf "$work/target" "$work/out" "$work/state"
    mkdir -p "$work/target"
    args=(--progress none --quiet --state-dir "$work/state" --encryption "$mode")
    [ "$mode" = none ] || args+=(--passphrase-file "$work/pw")
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
printf '%-12s %12s %12s\n' "" "backup (s)" "restore (s)"
printf '%-12s %12.2f %12.2f\n' none "$b0" "$r0" aes-256-gcm "$b1" "$r1"
printf '%-12s %11.1f%% %11.1f%%\n' overhead "$(echo "($b1 / $b0 - 1) * 100" | bc -l)" \
  "$(echo "($r1 / $r0 - 1) * 100" | bc -l)"
printf '(%s MiB volume, median of %s runs, %s)\n' "$size_mib" "$runs" "$work"
