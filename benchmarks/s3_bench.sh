#!/usr/bin/env bash
# S3 throughput and request benchmark against the running radosgw (scripts/s3-server.sh), plain HTTP
# endpoint. Reported, not asserted. In one run:
#   - vmbackupctl backup of a synthetic volume (default 1 GiB: random, compressible text and zero
#     regions) and vmbackupctl restore of it (checked byte for byte);
#   - aws s3 cp of the same file up and down (the baseline);
#   - requests per GiB backed up, counted in radosgw's log (by method) and by the repository's
#     objects (packs, pack indexes, volume indexes, records).
# Everything uploaded is deleted at the end (radosgw's memstore keeps objects in RAM).
#
#   eval "$(bash scripts/s3-server.sh start --tls)"     # or a server that is already running
#   bash benchmarks/s3_bench.sh
#
# Settings (environment):
#   VMBACKUPCTL       the vmbackupctl binary      (default build/tools/vmbackupctl)
#   BENCH_SIZE_MIB    volume size in MiB          (default 1024; a multiple of 64)
#   BENCH_DIR         scratch directory           (default a fresh dir under ${TMPDIR:-/tmp})
#   BENCH_THREADS     vmbackupctl --threads       (default: one per core)
# Without S3_HTTP_ENDPOINT in the environment the env of scripts/s3-server.sh's default state dir is
# used; without a running server the script stops and says how to start one.
set -euo pipefail
# New repositories need an explicit encryption choice (vmbackupctl --encryption).
export VMBACKUP_ENCRYPTION="${VMBACKUP_ENCRYPTION:-none}"
cd "$(dirname "$0")/.."
ROOT=$(pwd)

die() {
  echo "s3_bench: $*" >&2
  exit 1
}

if [ -z "${S3_HTTP_ENDPOINT:-}" ]; then
  env_lines=$(bash scripts/s3-server.sh env 2>/dev/null) ||
    die "no S3 server: start one with: eval \"\$(bash scripts/s3-server.sh start --tls)\""
  eval "$env_lines"
fi
: "${S3_BUCKET:?}" "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}"
export AWS_REQUEST_CHECKSUM_CALCULATION=${AWS_REQUEST_CHECKSUM_CALCULATION:-when_required}
export AWS_RESPONSE_CHECKSUM_VALIDATION=${AWS_RESPONSE_CHECKSUM_VALIDATION:-when_required}
CTL=${VMBACKUPCTL:-$ROOT/build/tools/vmbackupctl}
[ -x "$CTL" ] || die "no vmbackupctl at $CTL (build it, or set VMBACKUPCTL)"
command -v aws >/dev/null || die "the aws CLI is not on PATH"
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
[ $((SIZE_MIB % 64)) -eq 0 ] || die "BENCH_SIZE_MIB must be a multiple of 64"
RGW_LOG=${S3_STATE_DIR:-}/rgw/log/client.rgw.a.log
THREADS=()
[ -n "${BENCH_THREADS:-}" ] && THREADS=(--threads "$BENCH_THREADS")

W=${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/s3bench.XXXXXX")}
mkdir -p "$W"
RUN=bench-$(date +%s)-$RANDOM
PFX_VMB=$RUN-vmb
PFX_AWS=$RUN-aws
awscli() { aws --endpoint-url "$S3_HTTP_ENDPOINT" "$@"; }
cleanup() {
  awscli s3 rm --quiet --recursive "s3://$S3_BUCKET/$PFX_VMB/" >/dev/null 2>&1 || true
  awscli s3 rm --quiet --recursive "s3://$S3_BUCKET/$PFX_AWS/" >/dev/null 2>&1 || true
  [ -z "${BENCH_DIR:-}" ] && rm -rf "$W"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }
mibps() { awk -v m="$SIZE_MIB" -v s="$1" 'BEGIN{printf "%.0f", m/s}'; }

# ---- the volume: per 1 GiB, 8 x 64 MiB random, 4 x 64 MiB compressible text, 4 x 64 MiB zeros,
# interleaved (zeros are written, not holes, so that aws s3 cp moves the same bytes)
VOL=$W/disk0.img
echo "== generating a $SIZE_MIB MiB volume in $VOL" >&2
: >"$VOL"
text_chunk=$W/text64
python3 - "$text_chunk" <<'EOF'
import random, sys
random.seed(7)
words = ["vm", "backup", "block", "harvester", "volume", "kernel", "page", "cache", "0x%08x"]
out, n = [], 0
while n < 64 << 20:
    w = random.choice(words)
    if "%" in w: w = w % random.getrandbits(32)
    out.append(w); n += len(w) + 1
open(sys.argv[1], "wb").write((" ".join(out)).encode()[: 64 << 20])
EOF
i=0
while [ $i -lt $((SIZE_MIB / 64)) ]; do
  case $((i % 4)) in
  0 | 2) head -c $((64 << 20)) /dev/urandom >>"$VOL" ;;
  1) cat "$text_chunk" >>"$VOL" ;;
  3) head -c $((64 << 20)) /dev/zero >>"$VOL" ;;
  esac
  i=$((i + 1))
done
rm -f "$text_chunk"
SHA=$(sha256sum "$VOL" | cut -d' ' -f1)
sync

TARGET=$(printf '{"type":"s3","endpoint":"%s","bucketName":"%s","bucketRegion":"us-east-1","prefix":"%s","allowInsecureHttp":true}' \
  "$S3_HTTP_ENDPOINT" "$S3_BUCKET" "$PFX_VMB")  # keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY

rgw_lines() { if [ -f "$RGW_LOG" ]; then wc -l <"$RGW_LOG"; else echo 0; fi; }
# requests by method in radosgw's log since line $1, for keys under prefix $2 (and the bucket)
count_requests() {
  [ -f "$RGW_LOG" ] || {
    echo "n/a"
    return
  }
  tail -n +"$(($1 + 1))" "$RGW_LOG" | grep ' beast: ' | grep -F -- "$2" |
    sed -n 's/^[^"]*"\([A-Z]*\) .*/\1/p' | sort | uniq -c | awk '{printf "%s%s=%s", sep, $2, $1; sep=" "}'
}
count_method() { # $1 line, $2 prefix, $3 method
  [ -f "$RGW_LOG" ] || {
    echo 0
    return
  }
  tail -n +"$(($1 + 1))" "$RGW_LOG" | grep ' beast: ' | grep -F -- "$2" | grep -c "\"$3 " || true
}

# ---- vmbackupctl
echo "== vmbackupctl backup" >&2
l0=$(rgw_lines)
t0=$(now)
"$CTL" backup --quiet "${THREADS[@]}" --target "$TARGET" --volume "disk0=$VOL" --name bench1 >/dev/null
t1=$(now)
B_SECS=$(secs "$t0" "$t1")
B_REQ=$(count_requests "$l0" "$PFX_VMB")
B_PUT=$(count_method "$l0" "$PFX_VMB" PUT)

objects=$(awscli s3 ls --recursive "s3://$S3_BUCKET/$PFX_VMB/")
n_pack=$(grep -c '\.pack$' <<<"$objects" || true)
n_idx=$(grep -c '\.idx$' <<<"$objects" || true)
n_vidx=$(grep -c '\.vidx$' <<<"$objects" || true)
n_rec=$(grep -c 'records/.*\.json$' <<<"$objects" || true)
stored=$(awk '{s+=$3} END{print s+0}' <<<"$objects")

echo "== vmbackupctl restore" >&2
rm -rf "$W/restore"
l2=$(rgw_lines)
t0=$(now)
"$CTL" restore bench1 --quiet "${THREADS[@]}" --target "$TARGET" --dest-dir "$W/restore" >/dev/null
t1=$(now)
R_SECS=$(secs "$t0" "$t1")
R_REQ=$(count_requests "$l2" "$PFX_VMB")
R_SHA=$(sha256sum "$W/restore/disk0.img" | cut -d' ' -f1)
[ "$R_SHA" = "$SHA" ] || die "restored volume differs: $R_SHA != $SHA"
rm -rf "$W/restore"

# ---- aws s3 cp (default settings: 8 MiB multipart chunks, 10 concurrent requests)
echo "== aws s3 cp up" >&2
l3=$(rgw_lines)
t0=$(now)
awscli s3 cp --quiet "$VOL" "s3://$S3_BUCKET/$PFX_AWS/disk0.img"
t1=$(now)
A_UP=$(secs "$t0" "$t1")
A_PUT=$(count_method "$l3" "$PFX_AWS" PUT)
echo "== aws s3 cp down" >&2
t0=$(now)
awscli s3 cp --quiet "s3://$S3_BUCKET/$PFX_AWS/disk0.img" "$W/aws-down.img"
t1=$(now)
A_DOWN=$(secs "$t0" "$t1")
[ "$(sha256sum "$W/aws-down.img" | cut -d' ' -f1)" = "$SHA" ] || die "aws download differs"
rm -f "$W/aws-down.img"

GIB=$(awk -v m="$SIZE_MIB" 'BEGIN{print m/1024}')
per_gib() { awk -v n="$1" -v g="$GIB" 'BEGIN{printf "%.1f", n/g}'; }
cat <<EOF

S3 benchmark: $SIZE_MIB MiB volume (1/2 random, 1/4 text, 1/4 zeros), radosgw at $S3_HTTP_ENDPOINT
$(nproc) cores, $(date -u +%Y-%m-%dT%H:%M:%SZ)

| operation                | seconds | MiB/s | requests (radosgw log)        |
|--------------------------|---------|-------|-------------------------------|
| vmbackupctl backup       | $(printf '%7s' "$B_SECS") | $(printf '%5s' "$(mibps "$B_SECS")") | $B_REQ |
| aws s3 cp (upload)       | $(printf '%7s' "$A_UP") | $(printf '%5s' "$(mibps "$A_UP")") | PUT=$A_PUT |
| vmbackupctl restore      | $(printf '%7s' "$R_SECS") | $(printf '%5s' "$(mibps "$R_SECS")") | $R_REQ |
| aws s3 cp (download)     | $(printf '%7s' "$A_DOWN") | $(printf '%5s' "$(mibps "$A_DOWN")") |  |

Backup objects: $n_pack packs, $n_idx pack indexes, $n_vidx volume indexes, $n_rec records;
$((stored / 1048576)) MiB stored for $SIZE_MIB MiB ($(awk -v s="$stored" -v m="$SIZE_MIB" 'BEGIN{printf "%.0f", 100*s/(m*1048576)}') %).
PUT requests per GiB backed up: $(per_gib "$B_PUT") (log), $(per_gib $((n_pack + n_idx + n_vidx + n_rec))) (objects);
goal <= $(awk 'BEGIN{printf "%.0f", 512/8}') (1/8 of one object per 2 MiB block).
EOF
