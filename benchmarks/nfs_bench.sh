#!/usr/bin/env bash
# Backup and restore throughput of vmbackupctl to an NFS target (nfs-ganesha on 127.0.0.1, NFSv3)
# against nfs-cp (libnfs-utils) copying the same bytes to the same export, in the same run.
#
#   benchmarks/nfs_bench.sh [SIZE_MIB]        default 1024 (a 1 GiB volume)
#
# Env: VMBACKUPCTL (default build/tools/vmbackupctl), BENCH_DIR (scratch, default a fresh dir under
# ${TMPDIR:-/tmp}), and NFS_URL_V3 / NFS_EXPORT from `eval "$(bash scripts/nfs-server.sh start)"`
# (the script starts the server itself when NFS_URL_V3 is unset, and stops it again at the end).
#
# The volume is synthetic and incompressible (random bytes from openssl / urandom) so that neither
# compression nor deduplication helps vmbackup: it moves every byte, like nfs-cp. A second backup of
# the same volume (everything deduplicated) is shown too. Caches: the source volume is read once
# before timing so both tools read it from the page cache; ganesha writes to local disk.
set -euo pipefail
# New repositories need an explicit encryption choice (vmbackupctl --encryption).
export VMBACKUP_ENCRYPTION="${VMBACKUP_ENCRYPTION:-none}"
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
CTL=${VMBACKUPCTL:-build/tools/vmbackupctl}
[ -x "$CTL" ] || {
  echo "vmbackupctl not found at $CTL (build it, or set VMBACKUPCTL)" >&2
  exit 1
}
started_server=0
if [ -z "${NFS_URL_V3:-}" ]; then
  eval "$(bash scripts/nfs-server.sh start)"
  started_server=1
fi
WORK=${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/vmb-nfs-bench.XXXXXX")}
mkdir -p "$WORK"
PREFIX=bench-$(date +%s)-$$
cleanup() {
  rm -rf "$WORK" "${NFS_EXPORT:?}/$PREFIX" "${NFS_EXPORT:?}/$PREFIX-nfscp"
  [ $started_server = 1 ] && bash scripts/nfs-server.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

url_path() { # url_path URL SUBPATH: inserts SUBPATH before the query
  local u=$1 q=""
  case $u in *\?*) q="?${u#*\?}"; u=${u%%\?*} ;; esac
  echo "$u$2$q"
}
now() { date +%s.%N; }
rate() { echo "scale=1; $SIZE_MIB / ($2 - $1)" | bc; }
secs() { printf '%.2f' "$(echo "$2 - $1" | bc)"; }

VOL=$WORK/disk0.img
echo "== generating a ${SIZE_MIB} MiB incompressible volume" >&2
if command -v openssl >/dev/null; then
  # (openssl dies of SIGPIPE when head has enough: not an error)
  { openssl enc -aes-128-ctr -pass pass:vmbackup-bench -nosalt -pbkdf2 </dev/zero 2>/dev/null |
    head -c $((SIZE_MIB * 1024 * 1024)) >"$VOL"; } || true
  [ "$(stat -c %s "$VOL")" = $((SIZE_MIB * 1024 * 1024)) ] || {
    echo "could not generate the volume" >&2
    exit 1
  }
else
  head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$VOL"
fi
cat "$VOL" >/dev/null
TARGET='{"type":"nfs","endpoint":"'"$NFS_URL_V3"'","prefix":"'"$PREFIX"'"}'

echo "== nfs-cp upload" >&2
t0=$(now)
nfs-cp "$VOL" "$(url_path "$NFS_URL_V3" "/$PREFIX-nfscp.img")" >/dev/null
t1=$(now)
echo "== nfs-cp download" >&2
t2=$(now)
nfs-cp "$(url_path "$NFS_URL_V3" "/$PREFIX-nfscp.img")" "$WORK/nfscp-back.img" >/dev/null
t3=$(now)
cmp -s "$VOL" "$WORK/nfscp-back.img" || {
  echo "nfs-cp round trip differs" >&2
  exit 1
}
rm -f "$WORK/nfscp-back.img" "${NFS_EXPORT:?}/$PREFIX-nfscp.img"

echo "== vmbackupctl backup (full)" >&2
t4=$(now)
"$CTL" --quiet --progress none backup --target "$TARGET" --volume "disk0=$VOL" --name full >/dev/null
t5=$(now)
echo "== vmbackupctl backup (same volume again: all deduplicated)" >&2
t6=$(now)
"$CTL" --quiet --progress none backup --target "$TARGET" --volume "disk0=$VOL" --name again \
  --parent full >/dev/null
t7=$(now)
echo "== vmbackupctl restore" >&2
t8=$(now)
"$CTL" --quiet --progress none restore full --target "$TARGET" --dest-dir "$WORK/restored" >/dev/null
t9=$(now)
cmp -s "$VOL" "$WORK/restored/disk0.img" || {
  echo "vmbackup round trip differs" >&2
  exit 1
}

printf '\nNFSv3 to nfs-ganesha 4.3 (VFS) on 127.0.0.1, %s MiB incompressible volume, %s cores\n' \
  "$SIZE_MIB" "$(nproc)"
printf '%-40s %10s %12s\n' "operation" "seconds" "MiB/s"
printf '%-40s %10s %12s\n' "nfs-cp upload" "$(secs "$t0" "$t1")" "$(rate "$t0" "$t1")"
printf '%-40s %10s %12s\n' "vmbackupctl backup (full)" "$(secs "$t4" "$t5")" "$(rate "$t4" "$t5")"
printf '%-40s %10s %12s\n' "vmbackupctl backup (unchanged, dedup)" "$(secs "$t6" "$t7")" \
  "$(rate "$t6" "$t7")"
printf '%-40s %10s %12s\n' "nfs-cp download" "$(secs "$t2" "$t3")" "$(rate "$t2" "$t3")"
printf '%-40s %10s %12s\n' "vmbackupctl restore" "$(secs "$t8" "$t9")" "$(rate "$t8" "$t9")"
