#!/usr/bin/env bash
# A real S3 server on 127.0.0.1 for the integration tests: Ceph radosgw (Debian 12, Pacific 16.2) on a
# one-mon, one-memstore-OSD cluster with cephx off. radosgw verifies SigV4 for real (wrong secret ->
# 403 SignatureDoesNotMatch, wrong body hash -> 400 XAmzContentSHA256Mismatch). See docs/s3.md.
#
#   scripts/s3-server.sh start [--tls]  install what is missing (apt, no recommends), start the cluster,
#                                       create a user and the bucket, print `export` lines. If a server
#                                       from this state dir is already up, just print its env.
#   scripts/s3-server.sh stop           stop everything this script started and delete the state dir
#   scripts/s3-server.sh env            print the `export` lines again
#   scripts/s3-server.sh check          PUT/GET/HEAD/DELETE with curl --aws-sigv4, and a wrong secret
#                                       must give 403 SignatureDoesNotMatch (exit 1 otherwise)
#   scripts/s3-server.sh stop-rgw       kill radosgw only (data stays: it lives in the OSD's RAM)
#   scripts/s3-server.sh start-rgw      start radosgw again on the same port and wait until it answers
#   scripts/s3-server.sh restart-rgw [SECONDS]
#                                       stop-rgw, wait SECONDS (default 0), start-rgw: for tests that
#                                       kill the server in the middle of a backup
#
# Use:  eval "$(scripts/s3-server.sh start)"   (the same lines are in $STATE/env.sh)
# Settings (environment):
#   VMBACKUP_S3_STATE_DIR   state, logs, config, pid files  (default ${TMPDIR:-/tmp}/vmbackup-s3)
#   VMBACKUP_S3_PORT        HTTP(S) port of radosgw          (default: a free port)
#   VMBACKUP_S3_BUCKET      bucket to create                 (default vmbackup-test)
#   VMBACKUP_S3_MEMSTORE_BYTES  RAM the OSD may use for objects (default 4 GiB)
# Only 127.0.0.1 is used. Needs root for apt-get (only when a package is missing).
set -euo pipefail

STATE=${VMBACKUP_S3_STATE_DIR:-${TMPDIR:-/tmp}/vmbackup-s3}
D=$STATE/rgw
CONF=$D/ceph.conf
REGION=us-east-1
BUCKET=${VMBACKUP_S3_BUCKET:-vmbackup-test}
AK=VMBACKUPTESTKEY00001
SK=vmbackup-test-secret-0000000000000000001
PKGS=(radosgw ceph-mon ceph-osd ceph-common)
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

log() { echo "[s3-server] $*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

apt_install() { # idempotent: apt is touched only when a package is missing
  bash "$(dirname "${BASH_SOURCE[0]}")/install-deps.sh" --only "$@"
}

free_port() {
  python3 - <<'EOF' 2>/dev/null && return 0
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
EOF
  local p
  for _ in $(seq 1 50); do # no python: pick a random port nobody answers on
    p=$(shuf -i 20000-60000 -n 1)
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || {
      echo "$p"
      return 0
    }
  done
  die "no free port found"
}

# The pid in `file`, if that process is alive and was started with our config (guards against pid reuse).
live_pid() {
  local f=$1 pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$CONF" || return 1
  echo "$pid"
}

kill_pidfile() { # SIGTERM, wait up to 15 s, then SIGKILL
  local f=$1 pid
  pid=$(live_pid "$f") || {
    rm -f "$f"
    return 0
  }
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid still alive after 15 s, SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$f"
}

# until any HTTP status comes back from URL (timeout in tenths of a second, default 30 s)
wait_http() {
  local url=$1 tenths=${2:-300} code
  for _ in $(seq 1 "$tenths"); do
    code=$(curl -s -m 1 -o /dev/null -w '%{http_code}' "${CURL_TLS[@]}" "$url" || true)
    [ "$code" != "000" ] && return 0
    sleep 0.1
  done
  return 1
}

load_state() { # sets EP, TLS, CURL_TLS from a running server's env file
  [ -s "$STATE/env.sh" ] || die "no server state in $STATE (run '$0 start' first)"
  # shellcheck disable=SC1091
  EP=$(. "$STATE/env.sh" && echo "$S3_ENDPOINT")
  CURL_TLS=()
  if [ -s "$STATE/tls/cert.pem" ]; then CURL_TLS=(--cacert "$STATE/tls/cert.pem"); fi
}

# CN localhost. curl (and OpenSSL's default host check in most clients) does not let "*.localhost"
# match "<bucket>.localhost" (a wildcard needs at least two labels after it), so the bucket's
# virtual-hosted name is listed explicitly too.
make_cert() {
  local d=$STATE/tls
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -keyout "$d/key.pem" -out "$d/cert.pem" \
    -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,DNS:*.localhost,DNS:$BUCKET.localhost,IP:127.0.0.1" 2>/dev/null ||
    die "openssl could not make a certificate"
}

s3_curl() { # s3_curl SECRET curl-args... : a SigV4-signed request (curl >= 7.75)
  local secret=$1
  shift
  curl -s "${CURL_TLS[@]}" --aws-sigv4 "aws:amz:$REGION:s3" --user "$AK:$secret" "$@"
}

start_rgw_daemon() {
  radosgw -c "$CONF" -n client.rgw.a
  # radosgw daemonizes; its pid file appears once it runs
  for _ in $(seq 1 200); do
    [ -s "$D/run/client.rgw.a.pid" ] && break
    sleep 0.1
  done
  wait_http "$EP/" 300 || {
    tail -n 20 "$D/log/client.rgw.a.log" >&2 || true
    die "radosgw did not answer on $EP"
  }
}

do_start() {
  local tls=$1
  if [ -s "$STATE/env.sh" ]; then
    if live_pid "$D/run/client.rgw.a.pid" >/dev/null && live_pid "$D/run/osd.0.pid" >/dev/null &&
      live_pid "$D/run/mon.a.pid" >/dev/null; then
      local have_tls=0
      [ -s "$STATE/tls/cert.pem" ] && have_tls=1
      [ "$have_tls" = "$tls" ] ||
        die "a server with tls=$have_tls is already running in $STATE; run '$0 stop' first"
      log "already running (state in $STATE)"
      cat "$STATE/env.sh"
      return 0
    fi
    log "stale state in $STATE (a daemon is gone); starting from scratch"
    do_stop
  fi
  local t0 t1
  t0=$(date +%s.%N)
  apt_install "${PKGS[@]}"
  command -v curl >/dev/null || apt_install curl
  t1=$(date +%s.%N)

  rm -rf "$STATE"
  mkdir -p "$D/mon" "$D/osd" "$D/log" "$D/run" "$D/data"
  local port=${VMBACKUP_S3_PORT:-$(free_port)} mon_port scheme=http fe hport
  mon_port=$(free_port)
  [ "$mon_port" = "$port" ] && mon_port=$(free_port)
  fe="beast endpoint=127.0.0.1:$port"
  CURL_TLS=()
  if [ "$tls" = 1 ]; then
    make_cert
    scheme=https
    # TLS on $port, and plain HTTP on $hport too, so one server serves both kinds of test.
    hport=$(free_port)
    fe="beast endpoint=127.0.0.1:$hport ssl_endpoint=127.0.0.1:$port ssl_certificate=$STATE/tls/cert.pem ssl_private_key=$STATE/tls/key.pem"
    CURL_TLS=(--cacert "$STATE/tls/cert.pem")
  fi
  EP=$scheme://127.0.0.1:$port
  HTTP_EP=http://127.0.0.1:${hport:-$port}

  cat >"$CONF" <<CONF
[global]
fsid = $(cat /proc/sys/kernel/random/uuid)
mon host = v2:127.0.0.1:$mon_port
public network = 127.0.0.0/8
run dir = $D/run
pid file = $D/run/\$name.pid
admin socket = $D/run/\$name.asok
log file = $D/log/\$name.log
auth cluster required = none
auth service required = none
auth client required = none
# radosgw defaults ms_mon_client_mode to "secure", which cannot work with auth = none
ms mon client mode = crc secure
ms bind msgr1 = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool delete = true
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail crit = 0
mon data avail warn = 0
# Each RBD snapshot create and remove is one monitor proposal, batched every paxos propose
# interval (1 s by default): the rbd provider's tests and benchmarks would spend a second per
# snapshot (docs/providers/rbd.md says what this means on a production cluster).
paxos propose interval = 0.05
[mon.a]
mon data = $D/mon
# without an explicit public addr the mon does not bind where "mon host" says
public addr = v2:127.0.0.1:$mon_port
[osd.0]
osd data = $D/osd
osd objectstore = memstore
memstore device bytes = ${VMBACKUP_S3_MEMSTORE_BYTES:-4294967296}
osd class load list = *
osd class default list = *
[client.rgw.a]
rgw frontends = $fe
rgw data = $D/data
# virtual-hosted style: Host "<bucket>.localhost:<port>"
rgw dns name = localhost
# Deleted objects' data is reclaimed by radosgw's garbage collector, by default two hours after the
# delete: tests and benchmarks that write and delete GiBs would fill the memstore OSD, which then
# blocks every write (uploads stall until curl's low-speed limit). Reclaim within about a minute.
rgw gc obj min wait = 30
rgw gc processor period = 30
rgw gc processor max time = 30
CONF
  export CEPH_CONF=$CONF
  ceph-mon -c "$CONF" --id a --mkfs --keyring /dev/null >&2 || die "ceph-mon --mkfs failed"
  touch "$D/mon/keyring"
  ceph-mon -c "$CONF" --id a || die "ceph-mon did not start"
  timeout 30 ceph -c "$CONF" osd create >/dev/null || {
    tail -n 20 "$D/log/mon.a.log" >&2 || true
    die "the mon did not answer"
  }
  timeout 60 ceph -c "$CONF" osd crush add osd.0 1 root=default >/dev/null 2>&1 ||
    die "ceph osd crush add failed"
  ceph-osd -c "$CONF" --id 0 --mkfs >/dev/null 2>&1 || die "ceph-osd --mkfs failed"
  ceph-osd -c "$CONF" --id 0 2>/dev/null || die "ceph-osd did not start"
  timeout 120 radosgw-admin -c "$CONF" user create --uid=vmbackup --display-name=vmbackup \
    --access-key="$AK" --secret-key="$SK" >"$D/user.json" 2>"$D/log/user-create.err" ||
    die "radosgw-admin user create failed: $(tail -3 "$D/log/user-create.err")"
  start_rgw_daemon

  local code
  code=$(s3_curl "$SK" -o "$STATE/mkbucket.out" -w '%{http_code}' -X PUT \
    -H "x-amz-content-sha256: $EMPTY_SHA256" "$EP/$BUCKET")
  case $code in
  200 | 409) ;;
  *) die "create bucket $BUCKET -> HTTP $code: $(cat "$STATE/mkbucket.out")" ;;
  esac
  local t2
  t2=$(date +%s.%N)

  {
    echo "export S3_ENDPOINT=$EP"
    echo "export S3_HTTP_ENDPOINT=$HTTP_EP"
    echo "export AWS_ENDPOINT_URL=$EP"
    echo "export AWS_ACCESS_KEY_ID=$AK"
    echo "export AWS_SECRET_ACCESS_KEY=$SK"
    echo "export AWS_DEFAULT_REGION=$REGION"
    echo "export AWS_REGION=$REGION"
    echo "export S3_BUCKET=$BUCKET"
    echo "export S3_VHOST_HOST=$BUCKET.localhost:$port"
    echo "export S3_VHOST_ENDPOINT=$scheme://$BUCKET.localhost:$port"
    # radosgw 16.2 rejects the aws-chunked trailing checksums newer SDKs send by default
    echo "export AWS_REQUEST_CHECKSUM_CALCULATION=when_required"
    echo "export AWS_RESPONSE_CHECKSUM_VALIDATION=when_required"
    echo "export AWS_EC2_METADATA_DISABLED=true"
    echo "export S3_SERVER_PIDFILE=$D/run/client.rgw.a.pid"
    echo "export S3_STATE_DIR=$STATE"
    # The same cluster serves Ceph RBD (librbd; the rbd provider's tests create their pool).
    echo "export CEPH_CONF=$CONF"
    if [ "$tls" = 1 ]; then
      echo "export S3_CA_CERT=$STATE/tls/cert.pem"
      echo "export AWS_CA_BUNDLE=$STATE/tls/cert.pem"
    fi
  } >"$STATE/env.sh"
  log "radosgw up at $EP in $(awk -v a="$t1" -v b="$t2" 'BEGIN{printf "%.1f", b-a}') s" \
    "(+ $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s package check/install; state: $STATE)"
  cat "$STATE/env.sh"
}

do_stop() {
  [ -d "$STATE" ] || {
    log "nothing to stop ($STATE does not exist)"
    return 0
  }
  # order matters: rgw, then the osd (it tells the mon it is going down), then the mon
  local f
  for f in client.rgw.a.pid osd.0.pid mon.a.pid; do
    kill_pidfile "$D/run/$f"
  done
  rm -rf "$STATE"
  log "stopped"
}

do_stop_rgw() {
  load_state
  kill_pidfile "$D/run/client.rgw.a.pid"
  log "radosgw stopped"
}

do_start_rgw() {
  load_state
  if live_pid "$D/run/client.rgw.a.pid" >/dev/null; then
    log "radosgw already running"
    return 0
  fi
  export CEPH_CONF=$CONF
  start_rgw_daemon
  log "radosgw up again at $EP"
}

do_check() { # the acceptance test of the server itself
  load_state
  # shellcheck disable=SC1091
  . "$STATE/env.sh"
  local tmp key body got code
  tmp=$(mktemp -d)
  key="check/a b+c=d~e.txt"
  body="hello from s3-server.sh check $(date +%s%N)"
  printf '%s' "$body" >"$tmp/body"
  local sha
  sha=$(sha256sum "$tmp/body" | cut -d' ' -f1)
  local url="$EP/$S3_BUCKET/check/a%20b%2Bc%3Dd~e.txt"
  code=$(s3_curl "$SK" -o "$tmp/out" -w '%{http_code}' -X PUT -H "x-amz-content-sha256: $sha" \
    --data-binary "@$tmp/body" "$url")
  [ "$code" = 200 ] || die "PUT $key -> HTTP $code: $(cat "$tmp/out")"
  got=$(s3_curl "$SK" -H "x-amz-content-sha256: $EMPTY_SHA256" "$url")
  [ "$got" = "$body" ] || die "GET $key returned '$got', expected '$body'"
  code=$(s3_curl "$SK" -o "$tmp/out" -w '%{http_code}' -X PUT -H "x-amz-content-sha256: $EMPTY_SHA256" \
    --data-binary "@$tmp/body" "$url")
  [ "$code" = 400 ] || die "PUT with a wrong body hash -> HTTP $code (expected 400): $(cat "$tmp/out")"
  code=$(s3_curl "wrong-secret" -o "$tmp/out" -w '%{http_code}' -H "x-amz-content-sha256: $EMPTY_SHA256" "$url")
  if [ "$code" != 403 ] || ! grep -q SignatureDoesNotMatch "$tmp/out"; then
    die "GET with a wrong secret -> HTTP $code (expected 403 SignatureDoesNotMatch): $(cat "$tmp/out")"
  fi
  code=$(s3_curl "$SK" -o "$tmp/out" -w '%{http_code}' -X DELETE -H "x-amz-content-sha256: $EMPTY_SHA256" "$url")
  [ "$code" = 204 ] || die "DELETE $key -> HTTP $code: $(cat "$tmp/out")"
  rm -rf "$tmp"
  log "check passed: PUT/GET/DELETE ok, wrong body hash -> 400, wrong secret -> 403 SignatureDoesNotMatch"
}

CURL_TLS=()
cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
start)
  tls=0
  for a in "$@"; do
    case $a in
    --tls) tls=1 ;;
    *) die "unknown argument to start: $a" ;;
    esac
  done
  do_start "$tls"
  ;;
stop) do_stop ;;
env)
  [ -s "$STATE/env.sh" ] || die "no server state in $STATE"
  cat "$STATE/env.sh"
  ;;
check) do_check ;;
stop-rgw) do_stop_rgw ;;
start-rgw) do_start_rgw ;;
restart-rgw)
  do_stop_rgw
  sleep "${1:-0}"
  do_start_rgw
  ;;
*)
  sed -n '2,25p' "$0" >&2
  exit 2
  ;;
esac
