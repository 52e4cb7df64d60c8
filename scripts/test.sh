#!/usr/bin/env bash
# The README's test command (and what CI runs): installs what is missing, builds everything with
# warnings as errors, starts the real servers the integration tests need (Ceph radosgw for S3, nfs-ganesha for NFS), runs
# every suite (unit, integration, C API, Python, header and packaging tests), then the unit tests
# again under AddressSanitizer+UBSan and ThreadSanitizer.
# Last, every decoder of target data is fuzzed for a bounded time (scripts/fuzz.sh).
# The servers start (and install their packages) in the background while the default build runs; the
# tests start only once both answer. Each stage prints its wall time (docs/testing.md, "CI time").
#   VMBACKUP_SKIP_SANITIZERS=1  skip the sanitizer builds (local iteration only; CI never sets it)
#   VMBACKUP_SKIP_FUZZ=1        skip the fuzz stage (local iteration only; CI never sets it)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
stage_start=$start
stage() { # prints how long the stage that just ended took, then the next stage's title
  local now
  now=$(date +%s)
  [ -z "${1:-}" ] || echo "== $1 took $((now - stage_start)) s"
  stage_start=$now
}
# The tests' host state (the fingerprint key, TargetOptions::state_dir) stays in the build tree.
export VMBACKUP_STATE_DIR="${VMBACKUP_STATE_DIR:-$PWD/build/test-state}"
# QEMU for the qemu provider's integration tests (tests/integration/qemu_test.cc).
bash scripts/install-deps.sh qemu-system-x86 qemu-utils
stage "packages"

echo "== test servers: Ceph radosgw (S3, plain HTTP and TLS) and nfs-ganesha + rpcbind (NFSv3/v4) on 127.0.0.1, started beside the build"
servers=build/test-servers
mkdir -p "$servers"
rm -f "$servers"/*.env "$servers"/start.log
servers_pid=
stop_servers() {
  # A start still running is let finish first, so that stop finds every daemon it started.
  [ -z "$servers_pid" ] || wait "$servers_pid" 2>/dev/null || true
  bash scripts/s3-server.sh stop >/dev/null 2>&1 || true
  bash scripts/nfs-server.sh stop >/dev/null 2>&1 || true
}
trap stop_servers EXIT
# One after the other (each may run apt-get); their log is printed once the build is done.
(bash scripts/s3-server.sh start --tls >"$servers/s3.env" &&
  bash scripts/nfs-server.sh start >"$servers/nfs.env") 2>"$servers/start.log" &
servers_pid=$!

echo "== build (default preset: RelWithDebInfo, -Werror)"
# Below the servers' priority, so that their start-up deadlines hold while both cores compile.
cmake --preset default >/dev/null
nice -n 5 cmake --build --preset default
stage "default build"

echo "== test servers: waiting for them"
servers_rc=0
wait "$servers_pid" || servers_rc=$?
servers_pid=
cat "$servers/start.log"
if [ "$servers_rc" != 0 ]; then
  echo "!! starting the test servers failed (exit $servers_rc; log above, $servers/start.log)" >&2
  exit 1
fi
eval "$(cat "$servers/s3.env" "$servers/nfs.env")"
stage "waiting for the test servers"

echo "== tests"
ctest --preset default -j2 --timeout 600
stage "tests"

if [ "${VMBACKUP_SKIP_SANITIZERS:-0}" != 1 ]; then
  for san in asan tsan; do
    echo "== $san: build and run the unit tests"
    cmake --preset "$san" >/dev/null
    cmake --build --preset "$san" --target vmbackup_unit_tests
    stage "$san build"
    # TSan skips the four data-heaviest single-backup tests (~170 s of its CPU): they check bytes
    # and fingerprints, not threads, and run in the default and ASan stages; every concurrency
    # test (shared budgets, job lifecycle, GC with writers, the pipeline) still runs under TSan.
    skip=()
    if [ "$san" = tsan ]; then
      skip=(-E '^(FingerprintBackupTest[.](ReferenceIsOnlyTheSameNamedVmWithThisHostsKey|MatchesNeedTheHostsKeysAndAreSkippedWhenTurnedOff)|Targets/BackupRestoreTest[.](IncrementalStoresOnlyChangedBlocks|DirtyMapBackupReadsOnlyDirtyRanges)/file)')
    fi
    TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
      ctest --preset "$san" -j2 -L unit --timeout 600 "${skip[@]}"
    stage "$san unit tests"
  done
fi
if [ "${VMBACKUP_SKIP_FUZZ:-0}" != 1 ]; then
  echo "== fuzz: every decoder of target data under libFuzzer + ASan/UBSan"
  # 20 s per target, two at a time: the fuzz stage's bounded share of CI's 30 minutes (the seeded
  # corpora reach their coverage within seconds; longer runs are for scripts/fuzz.sh by hand).
  bash scripts/fuzz.sh 20
  stage "fuzz"
fi
echo "== all suites passed in $(( $(date +%s) - start )) s"
