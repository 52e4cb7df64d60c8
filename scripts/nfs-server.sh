#!/usr/bin/env bash
# A real NFS server on 127.0.0.1 for the integration tests and benchmarks: nfs-ganesha 4.3 (Debian 12,
# FSAL VFS) plus rpcbind, NFSv3 and NFSv4.0 over TCP. The kernel NFS server cannot run on these machines;
# ganesha runs entirely in userspace. See docs/nfs.md.
#
#   scripts/nfs-server.sh start            install what is missing (apt, no recommends), start rpcbind
#                                          (unless one runs) and ganesha, wait until both NFS versions
#                                          answer, print `export` lines. If our ganesha is already up,
#                                          just print its env.
#   scripts/nfs-server.sh stop             stop ganesha (and rpcbind if this script started it), delete
#                                          the state dir (the exported directories with it)
#   scripts/nfs-server.sh env              print the `export` lines again
#   scripts/nfs-server.sh stop-ganesha     kill ganesha only (exported files stay)
#   scripts/nfs-server.sh start-ganesha    start ganesha again with the same config, ports and exports
#   scripts/nfs-server.sh restart [SECONDS]
#                                          stop-ganesha, wait SECONDS (default 0), start-ganesha: for tests
#                                          that stop the server in the middle of a backup
#
# Use:  eval "$(bash scripts/nfs-server.sh start)"   (the same lines are in $STATE/env.sh)
# Exported variables:
#   NFS_URL_V3 / NFS_URL_V4   libnfs URLs of the read-write export (nfs://127.0.0.1/<dir>?...)
#   NFS_HARVESTER_URL         the same export in Harvester's form nfs://127.0.0.1:/<dir> (needs rpcbind)
#   NFS_EXPORT                the exported directory on this machine (tests inspect it directly)
#   NFS_URL_RO                a read-only export (NFS_EXPORT_RO is its directory)
#   NFS_URL_DENIED            an export that squashes every user to nobody on a root-owned 0755
#                             directory: mounts, but every write is refused (EACCES)
#   NFS_URL_OTHER_CLIENT      an export only 192.0.2.1 (TEST-NET) may mount: this client is refused
#   NFS_SERVER, NFS_PORT, NFS_MOUNT_PORT, NFS_SERVER_PIDFILE, NFS_STATE_DIR
# Settings (environment):
#   VMBACKUP_NFS_STATE_DIR    state, config, logs, exported dirs (default ${TMPDIR:-/tmp}/vmbackup-nfs)
#   VMBACKUP_NFS_PORT         NFS port (default 2049 when free, else a free port)
#   VMBACKUP_NFS_MOUNT_PORT   MOUNT port (default 20048 when free, else a free port)
# Facts learned the hard way: `rpcbind -h 127.0.0.1` crashes (rpcbind 1.2.6), so rpcbind listens on the
# wildcard address of port 111 and only loopback is used; ganesha refuses to start if it cannot register
# with rpcbind; only one ganesha at a time (rpcbind registration). Needs root (apt, port 111, ganesha).
set -euo pipefail

STATE=${VMBACKUP_NFS_STATE_DIR:-${TMPDIR:-/tmp}/vmbackup-nfs}
EXPORT_DIR=$STATE/export
RO_DIR=$STATE/export-ro
DENIED_DIR=$STATE/export-denied
OTHER_DIR=$STATE/export-other-client
CONF=$STATE/ganesha.conf
GPID=$STATE/ganesha.pid.copy # ganesha deletes its own pid file on exit; we keep a copy
PKGS=(nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils libnfs-dev)

log() { echo "[nfs-server] $*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

apt_install() { # idempotent: apt is touched only when a package is missing
  bash "$(dirname "${BASH_SOURCE[0]}")/install-deps.sh" --only "$@"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' \
    2>/dev/null && return 0
  local p
  for _ in $(seq 1 50); do
    p=$(shuf -i 20000-60000 -n 1)
    port_free "$p" && {
      echo "$p"
      return 0
    }
  done
  die "no free port found"
}
pick_port() { if port_free "$1"; then echo "$1"; else free_port; fi; }

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() { # SIGTERM the recorded pid, wait up to 15 s, then SIGKILL
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid still alive, SIGKILL"
      kill -9 "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$f"
}

rpcbind_up() { rpcinfo -p 127.0.0.1 >/dev/null 2>&1; }

ensure_rpcbind() {
  rpcbind_up && return 0
  log "starting rpcbind"
  mkdir -p /run/rpcbind 2>/dev/null || true
  nohup rpcbind -f >"$STATE/rpcbind.log" 2>&1 &
  echo $! >"$STATE/rpcbind.pid"
  for _ in $(seq 1 50); do
    rpcbind_up && return 0
    sleep 0.1
  done
  die "rpcbind did not start: $(cat "$STATE/rpcbind.log")"
}

# Starts ganesha from $CONF and waits until the read-write export answers over v3 and v4.
start_ganesha() {
  # shellcheck disable=SC1091
  . "$STATE/ports.sh"
  ensure_rpcbind
  rm -f "$STATE/ganesha.pid"
  ganesha.nfsd -f "$CONF" -L "$STATE/ganesha.log" -p "$STATE/ganesha.pid" -N NIV_EVENT
  for _ in $(seq 1 100); do
    [ -s "$STATE/ganesha.pid" ] && break
    sleep 0.1
  done
  [ -s "$STATE/ganesha.pid" ] || {
    tail -5 "$STATE/ganesha.log" >&2
    die "ganesha did not start (log: $STATE/ganesha.log)"
  }
  cp "$STATE/ganesha.pid" "$GPID"
  local url3="nfs://127.0.0.1$EXPORT_DIR?nfsport=$NFS_PORT&mountport=$MNT_PORT"
  local url4="nfs://127.0.0.1$EXPORT_DIR?version=4&nfsport=$NFS_PORT"
  for _ in $(seq 1 200); do
    if nfs-ls "$url3" >/dev/null 2>&1 && nfs-ls "$url4" >/dev/null 2>&1; then return 0; fi
    alive "$GPID" || break
    sleep 0.1
  done
  grep -E "CRIT|MAJ|FATAL" "$STATE/ganesha.log" | tail -5 >&2 || true
  die "ganesha does not answer on port $NFS_PORT (log: $STATE/ganesha.log)"
}

stop_ganesha() { stop_pid "$GPID"; }

do_stop() {
  [ -d "$STATE" ] || {
    log "nothing to stop"
    return 0
  }
  stop_ganesha
  stop_pid "$STATE/rpcbind.pid" # only exists if we started rpcbind
  rm -rf "$STATE"
  log "stopped"
}

export_block() { # export_block ID DIR ACCESS SQUASH [EXTRA]
  cat <<EOF
EXPORT {
    Export_Id = $1;
    Path = "$2";
    Pseudo = "$2";
    Access_Type = $3;
    Squash = $4;
    Protocols = 3, 4;
    Transports = TCP;
    SecType = sys;
    FSAL { Name = VFS; }
    ${5:-}
}
EOF
}

do_start() {
  if [ -s "$STATE/env.sh" ] && alive "$GPID"; then
    log "already running; printing env ('$0 stop' first for a fresh server)"
    cat "$STATE/env.sh"
    return 0
  fi
  if [ -d "$STATE" ]; then do_stop; fi
  apt_install "${PKGS[@]}"
  command -v ganesha.nfsd >/dev/null || die "ganesha.nfsd not found after install"
  local t0
  t0=$(date +%s%N)
  mkdir -p "$STATE/recovery" "$EXPORT_DIR" "$RO_DIR" "$DENIED_DIR" "$OTHER_DIR"
  chmod 0755 "$DENIED_DIR"
  echo "written before the export was made read-only" >"$RO_DIR/existing-file"
  local plugins
  plugins=$(dirname "$(dpkg -L nfs-ganesha-vfs | grep -m1 'libfsalvfs.so')")
  NFS_PORT=${VMBACKUP_NFS_PORT:-$(pick_port 2049)}
  MNT_PORT=${VMBACKUP_NFS_MOUNT_PORT:-$(pick_port 20048)}
  [ "$NFS_PORT" != "$MNT_PORT" ] || MNT_PORT=$(free_port)
  printf 'NFS_PORT=%s\nMNT_PORT=%s\n' "$NFS_PORT" "$MNT_PORT" >"$STATE/ports.sh"
  {
    cat <<EOF
NFS_CORE_PARAM {
    Bind_addr = 127.0.0.1;
    NFS_Port = $NFS_PORT;
    MNT_Port = $MNT_PORT;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    Protocols = 3, 4;
    Plugins_Dir = $plugins;
}
NFSv4 {
    Graceless = true;              # no 90 s grace period at start-up (and after a restart)
    Lease_Lifetime = 10;
    RecoveryRoot = "$STATE/recovery";
    Allow_Numeric_Owners = true;
    Only_Numeric_Owners = true;    # uid/gid on the wire as numbers (no idmapd domain)
}
NFS_KRB5 { Active_krb5 = false; }
LOG { Default_Log_Level = EVENT; }
EOF
    export_block 1 "$EXPORT_DIR" RW No_Root_Squash
    export_block 2 "$RO_DIR" RO No_Root_Squash
    # Everyone is squashed to nobody, and the directory belongs to root (0755): writes are refused.
    export_block 3 "$DENIED_DIR" RW All_Squash "Anonymous_Uid = 65534; Anonymous_Gid = 65534;"
    # Only 192.0.2.1 (TEST-NET, nobody) may mount it: this client is refused.
    export_block 4 "$OTHER_DIR" None No_Root_Squash "CLIENT { Clients = 192.0.2.1; Access_Type = RW; }"
  } >"$CONF"
  start_ganesha
  local t1
  t1=$(date +%s%N)
  cat >"$STATE/env.sh" <<EOF
export NFS_SERVER=127.0.0.1
export NFS_PORT=$NFS_PORT
export NFS_MOUNT_PORT=$MNT_PORT
export NFS_EXPORT=$EXPORT_DIR
export NFS_EXPORT_RO=$RO_DIR
export NFS_URL_V3='nfs://127.0.0.1$EXPORT_DIR?nfsport=$NFS_PORT&mountport=$MNT_PORT'
export NFS_URL_V4='nfs://127.0.0.1$EXPORT_DIR?version=4&nfsport=$NFS_PORT'
export NFS_HARVESTER_URL='nfs://127.0.0.1:$EXPORT_DIR'
export NFS_URL_RO='nfs://127.0.0.1$RO_DIR?nfsport=$NFS_PORT&mountport=$MNT_PORT'
export NFS_URL_DENIED='nfs://127.0.0.1$DENIED_DIR?nfsport=$NFS_PORT&mountport=$MNT_PORT'
export NFS_URL_OTHER_CLIENT='nfs://127.0.0.1$OTHER_DIR?nfsport=$NFS_PORT&mountport=$MNT_PORT'
export NFS_SERVER_PIDFILE=$GPID
export NFS_STATE_DIR=$STATE
EOF
  log "ganesha up (nfs port $NFS_PORT, mount port $MNT_PORT, export $EXPORT_DIR) in $(((t1 - t0) / 1000000)) ms"
  cat "$STATE/env.sh"
}

case ${1:-start} in
  start) do_start ;;
  stop) do_stop ;;
  env)
    [ -s "$STATE/env.sh" ] || die "not running (no $STATE/env.sh)"
    cat "$STATE/env.sh"
    ;;
  stop-ganesha)
    [ -s "$CONF" ] || die "not started (no $CONF)"
    stop_ganesha
    log "ganesha stopped"
    ;;
  start-ganesha)
    [ -s "$CONF" ] || die "not started (no $CONF)"
    alive "$GPID" || start_ganesha
    log "ganesha up"
    ;;
  restart)
    [ -s "$CONF" ] || die "not started (no $CONF); run '$0 start' first"
    stop_ganesha
    log "ganesha stopped; starting again in ${2:-0} s"
    sleep "${2:-0}"
    start_ganesha
    log "ganesha up again"
    ;;
  *) die "usage: $0 start|stop|env|stop-ganesha|start-ganesha|restart [SECONDS]" ;;
esac
