#!/usr/bin/env bash
# The README's test command (and what CI runs): installs what is missing, builds everything with
# warnings as errors, starts the real servers the integration tests need (Ceph radosgw for S3, nfs-ganesha for NFS), runs
# every suite (unit, integration, C API, Python, header and packaging tests), then the unit tests
# again under AddressSanitizer+UBSan and ThreadSanitizer.
# Last, every decoder of target data is fuzzed for a bounded time (scripts/fuzz.sh).
#   VMBACKUP_SKIP_SANITIZERS=1  skip the sanitizer builds (local iteration only; CI never sets it)
#   VMBACKUP_SKIP_FUZZ=1        skip the fuzz stage (local iteration only; CI never sets it)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# The tests' host state (the fingerprint key, TargetOptions::state_dir) stays in the build tree.
export VMBACKUP_STATE_DIR="${VMBACKUP_STATE_DIR:-$PWD/build/test-state}"
bash scripts/install-deps.sh

echo "== test servers: Ceph radosgw (S3, plain HTTP and TLS) on 127.0.0.1"
eval "$(bash scripts/s3-server.sh start --tls)"
trap 'bash scripts/s3-server.sh stop >/dev/null 2>&1 || true' EXIT
echo "== test servers: nfs-ganesha + rpcbind (NFSv3/v4) on 127.0.0.1"
eval "$(bash scripts/nfs-server.sh start)"
trap 'bash scripts/s3-server.sh stop >/dev/null 2>&1 || true; bash scripts/nfs-server.sh stop >/dev/null 2>&1 || true' EXIT

echo "== build (default preset: RelWithDebInfo, -Werror)"
cmake --preset default >/dev/null
cmake --build --preset default
echo "== tests"
ctest --preset default -j2 --timeout 600

if [ "${VMBACKUP_SKIP_SANITIZERS:-0}" != 1 ]; then
  for san in asan tsan; do
    echo "== $san: build and run the unit tests"
    cmake --preset "$san" >/dev/null
    cmake --build --preset "$san" --target vmbackup_unit_tests
    TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
      ctest --preset "$san" -j2 -L unit --timeout 600
  done
fi
if [ "${VMBACKUP_SKIP_FUZZ:-0}" != 1 ]; then
  echo "== fuzz: every decoder of target data under libFuzzer + ASan/UBSan"
  bash scripts/fuzz.sh
fi
echo "== all suites passed in $(( $(date +%s) - start )) s"
