#!/usr/bin/env bash
# Many backups and restores in one process (issue #10): builds benchmarks/concurrent_jobs.cc in a
# Release build and runs it. See docs/performance.md, "Many jobs in one process".
#
#   bash benchmarks/concurrency.sh --target /tmp/cj-repo                 # local directory
#   bash benchmarks/concurrency.sh --target s3                           # radosgw, plain HTTP
#   bash benchmarks/concurrency.sh --target s3-tls                       # radosgw, HTTPS
#   bash benchmarks/concurrency.sh --target '{"type":"s3",...}'          # any target setting JSON
#
# Options:
#   --target T        local directory, s3, s3-tls, or a backup-target setting JSON (required)
#   --jobs N          concurrent backups, one volume each        (default 32)
#   --size-mib M      size of each volume, a multiple of 4       (default 256)
#   --restores R      concurrent restores                        (default 8)
#   --work-dir DIR    volumes, restored files, host state        (default ${TMPDIR:-/tmp}/vmbackup-concurrent)
#                     The volumes are kept there and reused by the next run with the same size.
#   --json FILE       write the results as JSON                  (default: none)
#   --build-dir DIR   Release build directory                    (default build-bench, as run_all.sh)
#   --bin FILE        use this vmbackup_concurrent_jobs binary, build nothing
#   --worker-threads W, --job-threads J, --in-flight-mib B   passed through (default 0 = the library's defaults)
#   --keep            keep the local repositories
#   --prepare-only    only generate the volumes
#   --single-first    run the one-job baseline before the concurrent phases (default: after them,
#                     so that the concurrent phases start in a fresh process)
#
# s3 / s3-tls use the server of scripts/s3-server.sh: the environment it exports (S3_HTTP_ENDPOINT,
# S3_BUCKET, AWS_ACCESS_KEY_ID, ...) or, without it, `scripts/s3-server.sh env`. Each run writes under
# its own key prefix (concurrency-<time>-<pid>/), deletes the first phases' repository before the
# second ones (radosgw's memstore holds everything in RAM, 4 GiB by default) and deletes the
# whole prefix at the end. Needs the aws CLI for the deletes.
#
# Exit status: 0 when every job succeeded and every restored volume equals its source; 1 otherwise;
# 2 for bad usage. The throughput and memory goals are reported, not enforced.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

die() {
  echo "concurrency.sh: $*" >&2
  exit 2
}

TARGET='' JOBS=32 SIZE=256 RESTORES=8 WORK=${TMPDIR:-/tmp}/vmbackup-concurrent JSON=''
BUILD=$ROOT/build-bench BIN='' EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
  --target) TARGET=${2:?--target needs a value} && shift ;;
  --jobs) JOBS=${2:?} && shift ;;
  --size-mib) SIZE=${2:?} && shift ;;
  --restores) RESTORES=${2:?} && shift ;;
  --work-dir) WORK=${2:?} && shift ;;
  --json) JSON=${2:?} && shift ;;
  --build-dir) BUILD=${2:?} && shift ;;
  --bin) BIN=${2:?} && shift ;;
  --worker-threads | --job-threads | --in-flight-mib) EXTRA+=("$1" "${2:?}") && shift ;;
  --keep | --prepare-only | --single-first) EXTRA+=("$1") ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
[ -n "$TARGET" ] || die "--target is required (a directory, s3, s3-tls or a target JSON)"
for v in "$JOBS" "$SIZE" "$RESTORES"; do [[ $v =~ ^[0-9]+$ ]] || die "not a number: $v"; done
if [ "$SIZE" -eq 0 ] || [ $((SIZE % 4)) -ne 0 ]; then die "--size-mib must be a positive multiple of 4"; fi

# ---- the binary
if [ -z "$BIN" ]; then
  if [ ! -f "$BUILD/build.ninja" ]; then
    cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DVMBACKUP_BUILD_PYTHON=OFF \
      -DVMBACKUP_BUILD_TESTS=OFF -DVMBACKUP_BUILD_TOOLS=OFF >&2
  fi
  cmake --build "$BUILD" -j2 --target vmbackup_concurrent_jobs >&2
  BIN=$BUILD/benchmarks/vmbackup_concurrent_jobs
fi
[ -x "$BIN" ] || die "no benchmark binary at $BIN"

# ---- space: volumes (3/4 of each is allocated), restored files, local repositories (~40 %)
mkdir -p "$WORK"
mib_free() { df -Pm "$1" | awk 'NR==2{print $4}'; }
need_work=$((JOBS * SIZE * 3 / 4 + RESTORES * SIZE * 3 / 4 + 256))
[ "$(mib_free "$WORK")" -ge "$need_work" ] ||
  die "$WORK has $(mib_free "$WORK") MiB free, needs about $need_work MiB (try a smaller --size-mib)"

# ---- the target
RUN=concurrency-$(date -u +%Y%m%d-%H%M%S)-$$
CLEANUP=()
BETWEEN=
case $TARGET in
s3 | s3-tls)
  if [ -z "${S3_HTTP_ENDPOINT:-}" ]; then
    env_lines=$(bash scripts/s3-server.sh env 2>/dev/null) ||
      die "no S3 server: start one with: eval \"\$(bash scripts/s3-server.sh start)\""
    eval "$env_lines"
  fi
  : "${S3_BUCKET:?}" "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}"
  command -v aws >/dev/null || die "the aws CLI is not on PATH (needed to delete the run's objects)"
  export AWS_REQUEST_CHECKSUM_CALCULATION=${AWS_REQUEST_CHECKSUM_CALCULATION:-when_required}
  export AWS_RESPONSE_CHECKSUM_VALIDATION=${AWS_RESPONSE_CHECKSUM_VALIDATION:-when_required}
  # keys come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment
  if [ "$TARGET" = s3 ]; then
    EP=$S3_HTTP_ENDPOINT
    SPEC=$(printf '{"type":"s3","endpoint":"%s","bucketName":"%s","bucketRegion":"us-east-1","prefix":"%s","allowInsecureHttp":true}' \
      "$EP" "$S3_BUCKET" "$RUN")
  else
    EP=$S3_ENDPOINT
    [ -s "${S3_CA_CERT:-}" ] || die "s3-tls: the server runs without TLS (no S3_CA_CERT)"
    SPEC=$(python3 -c 'import json,sys; print(json.dumps({"type":"s3","endpoint":sys.argv[1],
"bucketName":sys.argv[2],"bucketRegion":"us-east-1","prefix":sys.argv[3],
"cert":open(sys.argv[4]).read()}))' "$EP" "$S3_BUCKET" "$RUN" "$S3_CA_CERT")
  fi
  AWS=(aws --endpoint-url "$S3_HTTP_ENDPOINT")
  # radosgw frees deleted objects' space in the background (scripts/s3-server.sh: 30 s after the
  # delete); a phase that starts while it does shares the OSD with it, which made the ratios swing
  # by 0.3 from run to run. With the server's config at hand, collect the garbage before each phase.
  GC=true
  RGW_CONF=${S3_STATE_DIR:-${TMPDIR:-/tmp}/vmbackup-s3}/rgw/ceph.conf
  if [ -f "$RGW_CONF" ] && command -v radosgw-admin >/dev/null; then
    GC="radosgw-admin -c $RGW_CONF gc process --include-all >/dev/null 2>&1"
    eval "$GC" || true
  else
    echo "concurrency.sh: no radosgw config at $RGW_CONF: radosgw's garbage collection may overlap the phases" >&2
  fi
  # shellcheck disable=SC2016  # expanded by the shell the benchmark starts
  BETWEEN="${AWS[*]} s3 rm --quiet --recursive \"s3://$S3_BUCKET/\$VMB_PHASE_PREFIX/\" && { $GC; true; }"
  CLEANUP=("${AWS[@]}" s3 rm --quiet --recursive "s3://$S3_BUCKET/$RUN/")
  echo "S3 target: $EP bucket $S3_BUCKET prefix $RUN/" >&2
  ;;
'{'*)
  SPEC=$TARGET
  ;;
*)
  mkdir -p "$TARGET"
  SPEC=$(cd "$TARGET" && pwd)
  need_repo=$((JOBS * SIZE * 2 / 5 + 256))
  [ "$(mib_free "$SPEC")" -ge "$need_repo" ] ||
    die "$SPEC has $(mib_free "$SPEC") MiB free, needs about $need_repo MiB"
  ;;
esac
cleanup() {
  if [ ${#CLEANUP[@]} -gt 0 ]; then "${CLEANUP[@]}" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

ARGS=(--target "$SPEC" --jobs "$JOBS" --size-mib "$SIZE" --restores "$RESTORES" --work-dir "$WORK")
[ -n "$JSON" ] && ARGS+=(--json "$JSON")
[ -n "$BETWEEN" ] && ARGS+=(--between-cmd "$BETWEEN")
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)," \
  "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')" >&2
"$BIN" "${ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
