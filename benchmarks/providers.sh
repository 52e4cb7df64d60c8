#!/usr/bin/env bash
# Snapshot providers (issue #12): full and 1 %-changed incremental backups of one disk read through
# each provider, against the same disk as a local file.
#
#   benchmarks/providers.sh [--vmbackupctl PATH] [--size-mib N] [--runs N] [--work-dir DIR]
#                           [--providers LIST] [--json-out FILE] [--keep]
#
# The disk: N MiB (default 4096) of incompressible data. Each run backs it up to a fresh local
# target, changes 1 % of it (64 KiB writes at distinct random 64 KiB-aligned offsets, the same
# offsets in every copy), and backs it up again:
#   file  the disk as a raw file on this machine's filesystem, read directly (--volume); the
#         incremental has no dirty map: it reads every block (keyed fingerprints skip hashing
#         unchanged ones) — today's no-map incremental
#   qemu  the same data as a qcow2 disk of a running qemu-system-x86_64 -machine none (no KVM),
#         read through the qemu provider: fleecing, NBD (libnbd), and for the incremental the
#         persistent dirty bitmap (--qmp/--drive, --vm-name)
#   rbd   the same data in a Ceph RBD image on the test cluster of scripts/s3-server.sh (memstore
#         OSD, loopback), read through librbd; the incremental from rbd_diff_iterate2 (--rbd)
# Timed: each backup's wall time, page cache dropped before it. Reported per provider: full-backup
# throughput (and as a share of the file's: goal >= 70 %), incremental time (and as a share of the
# same provider's full backup: goal <= 10 %). Medians over --runs (default 3). Results in
# benchmarks/results/providers-<date>.json. Needs root (drop_caches), qemu-system-x86, qemu-utils;
# rbd needs the cluster (started here with a memstore of 3 x the disk + 2 GiB if CEPH_CONF is
# unset, stopped at the end; a running cluster's memstore must hold as much).
set -euo pipefail
export VMBACKUP_ENCRYPTION=none
cd "$(dirname "$0")/.."
src=$(pwd)
ctl=build-perf/tools/vmbackupctl
size_mib=4096
runs=3
work=""
keep=0
json_out=""
providers="file,qemu,rbd"
cmdline="benchmarks/providers.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --vmbackupctl) ctl=$2; shift 2 ;;
    --size-mib) size_mib=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --work-dir) work=$2; shift 2 ;;
    --providers) providers=$2; shift 2 ;;
    --json-out) json_out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x "$ctl" ] || { echo "no vmbackupctl at $ctl (cmake --preset perf && cmake --build build-perf)" >&2; exit 2; }
ctl=$(realpath "$ctl")
bash scripts/install-deps.sh qemu-system-x86 qemu-utils >/dev/null
[ -n "$work" ] || work=$(mktemp -d /var/tmp/vmbackup-providers.XXXXXX)
mkdir -p "$work"
work=$(realpath "$work")
[ -n "$json_out" ] || json_out=benchmarks/results/providers-$(date -u +%Y%m%d-%H%M%S).json
mkdir -p "$(dirname "$json_out")"
has() { [[ ",$providers," == *",$1,"* ]]; }

qemu_pid=""
started_ceph=0
cleanup() {
  [ -z "$qemu_pid" ] || kill -9 "$qemu_pid" 2>/dev/null || true
  [ "$started_ceph" = 0 ] || bash "$src/scripts/s3-server.sh" stop >/dev/null 2>&1 || true
  if [ "$keep" = 0 ]; then rm -rf "$work"/disk.* "$work"/t-*; fi
}
trap cleanup EXIT

size=$((size_mib * 1024 * 1024))
echo "== disk: $size_mib MiB of random data"
# (openssl ends on SIGPIPE when head has enough: its status is not the pipeline's.)
{ openssl enc -aes-128-ctr -pass pass:vmbackup-bench -nosalt -pbkdf2 </dev/zero 2>/dev/null || true; } |
  head -c "$size" >"$work/disk.raw"
[ "$(stat -c %s "$work/disk.raw")" = "$size" ] || { echo "could not write the disk" >&2; exit 1; }
# 1 % of the disk in 64 KiB writes at distinct offsets (deterministic).
nchunks=$((size / 65536))
nchanged=$((nchunks / 100))
python3 - "$nchunks" "$nchanged" >"$work/changes.txt" <<'EOF'
import random, sys
n, k = int(sys.argv[1]), int(sys.argv[2])
for c in sorted(random.Random(12).sample(range(n), k)):
    print(c * 65536)
EOF

timed() {  # timed LOG CMD... : drops the page cache, runs CMD, prints its wall seconds
  local log=$1
  shift
  sync
  echo 3 >/proc/sys/vm/drop_caches
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$log" 2>&1 || { echo "failed: $* (log $log)" >&2; cat "$log" >&2; exit 1; }
  t1=$(date +%s.%N)
  python3 -c "print(round($t1 - $t0, 3))"
}

declare -A full incr
apply_file_changes() {  # the 1 % change, as the same bytes, to the raw file
  local run=$1
  python3 - "$work/disk.raw" "$work/changes.txt" "$run" <<'EOF'
import os, sys
path, changes, run = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(path, os.O_WRONLY)
for line in open(changes):
    os.pwrite(fd, bytes([0x40 + run]) * 65536, int(line))
os.fsync(fd)
os.close(fd)
EOF
}

if has qemu; then
  echo "== qemu: converting to qcow2 and starting QEMU"
  qemu-img convert -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
  qemu-system-x86_64 -machine none -nodefaults -display none -daemonize \
    -pidfile "$work/qemu.pid" -qmp "unix:$work/qmp.sock,server=on,wait=off" \
    -qmp "unix:$work/hmp.sock,server=on,wait=off" \
    -blockdev "driver=file,filename=$work/disk.qcow2,node-name=f0,cache.direct=on" \
    -blockdev driver=qcow2,file=f0,node-name=disk0
  qemu_pid=$(cat "$work/qemu.pid")
fi
qemu_changes() {  # the 1 % change through HMP qemu-io (no backup is running)
  local run=$1
  python3 - "$work/hmp.sock" "$work/changes.txt" "$run" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
json.loads(f.readline())
def cmd(name, args=None):
    f.write(json.dumps({"execute": name, "arguments": args or {}}) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            if "error" in r: sys.exit(str(r))
            return r["return"]
cmd("qmp_capabilities")
byte = 0x40 + int(sys.argv[3])
for line in open(sys.argv[2]):
    cmd("human-monitor-command", {"command-line": f'qemu-io disk0 "write -P {byte} {int(line)} 65536"'})
EOF
}

if has rbd; then
  bash scripts/install-deps.sh python3-rbd python3-rados >/dev/null
  if [ -z "${CEPH_CONF:-}" ]; then
    echo "== rbd: starting the Ceph cluster (scripts/s3-server.sh)"
    # The memstore OSD holds the image and what its snapshots keep: a 64 KiB write to an object a
    # snapshot shares clones the whole 4 MiB object, so 1 % of scattered writes clone most of the
    # disk's objects. Three times the disk and 2 GiB (a full OSD blocks every write).
    VMBACKUP_S3_MEMSTORE_BYTES=$((3 * size + (2 << 30))) bash scripts/s3-server.sh start >"$work/s3.env" 2>"$work/s3-start.log"
    started_ceph=1
    # shellcheck disable=SC1091
    . "$work/s3.env"
  fi
  export CEPH_CONF
  ceph osd pool create vmbackup-bench 8 >/dev/null 2>&1 || true
  rbd pool init vmbackup-bench >/dev/null 2>&1 || true
  rbd rm vmbackup-bench/disk0 >/dev/null 2>&1 || true
  echo "== rbd: importing the disk"
  rbd import --no-progress "$work/disk.raw" vmbackup-bench/disk0 >/dev/null
fi
rbd_changes() {
  local run=$1
  /usr/bin/python3 - "$work/changes.txt" "$run" <<'EOF'
import os, sys, rados, rbd
c = rados.Rados(conffile=os.environ["CEPH_CONF"]); c.connect(); io = c.open_ioctx("vmbackup-bench")
img = rbd.Image(io, "disk0")
byte = bytes([0x40 + int(sys.argv[2])]) * 65536
for line in open(sys.argv[1]):
    img.write(byte, int(line))
img.close(); io.close(); c.shutdown()
EOF
}

results=()
for run in $(seq 1 "$runs"); do
  for p in file qemu rbd; do
    has "$p" || continue
    t="$work/t-$p-$run"
    rm -rf "$t"
    mkdir -p "$t"
    case $p in
      file) vol=(--volume "disk0=$work/disk.raw") ;;
      qemu) vol=(--qmp "$work/qmp.sock" --drive disk0) ;;
      rbd) vol=(--rbd "disk0=vmbackup-bench/disk0" --ceph-conf "$CEPH_CONF") ;;
    esac
    f=$(timed "$work/$p-full-$run.log" "$ctl" --progress none backup --target "$t" --name full \
      --vm-name "bench-$p-$run" "${vol[@]}")
    case $p in
      file) apply_file_changes "$run" ;;
      qemu) qemu_changes "$run" ;;
      rbd) rbd_changes "$run" ;;
    esac
    i=$(timed "$work/$p-incr-$run.log" "$ctl" --progress none backup --target "$t" --name incr \
      --vm-name "bench-$p-$run" "${vol[@]}")
    changed=$("$ctl" --json show incr --target "$t" |
      python3 -c 'import json,sys; v=json.load(sys.stdin)["backup"]["volumes"][0]; print(v.get("changed_bytes", -1))')
    echo "run $run $p: full ${f}s, incremental ${i}s (provider changed bytes $changed)"
    results+=("{\"run\":$run,\"provider\":\"$p\",\"full_s\":$f,\"incremental_s\":$i,\"changed_bytes\":$changed}")
    rm -rf "$t"
  done
done

python3 - "$json_out" "$size_mib" "$cmdline" "${results[@]}" <<'EOF'
import json, statistics, sys
out, size_mib, cmdline, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3], [json.loads(r) for r in sys.argv[4:]]
summary = {}
for p in ("file", "qemu", "rbd"):
    mine = [r for r in rows if r["provider"] == p]
    if not mine:
        continue
    full = statistics.median(r["full_s"] for r in mine)
    incr = statistics.median(r["incremental_s"] for r in mine)
    summary[p] = {"full_s": full, "incremental_s": incr, "full_mib_s": round(size_mib / full, 1),
                  "incremental_share_of_full": round(incr / full, 3)}
for p, s in summary.items():
    if "file" in summary:
        s["full_throughput_share_of_file"] = round(s["full_mib_s"] / summary["file"]["full_mib_s"], 3)
print(f"{'provider':8} {'full s':>8} {'MiB/s':>8} {'vs file':>8} {'incr s':>8} {'incr/full':>9}")
for p, s in summary.items():
    print(f"{p:8} {s['full_s']:8.2f} {s['full_mib_s']:8.1f} {s.get('full_throughput_share_of_file', 0):8.2f} "
          f"{s['incremental_s']:8.2f} {s['incremental_share_of_full']:9.3f}")
json.dump({"benchmark": "providers", "command": cmdline, "size_mib": size_mib, "runs": rows,
           "summary": summary}, open(out, "w"), indent=1)
print("results:", out)
EOF
