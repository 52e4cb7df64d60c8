#!/bin/sh
# Side-by-side benchmark of vmbackupctl against restic and borg on a synthetic 4 GiB VM disk
# (issue #3). See docs/performance.md for what it measures and the last results.
#
# Usage: benchmarks/compare.sh [options]
#   --runs N            repetitions; every figure is a median over them (default 3)
#   --work DIR          scratch directory on the filesystem under test (default /var/tmp/vmb-perf);
#                       needs about 15 GB free; the big files are deleted at the end
#   --build-dir DIR     build vmbackupctl in DIR (Release) instead of the default preset's build/
#   --vmbackupctl PATH  use this binary, build nothing
#   --tools LIST        comma-separated subset of vmbackupctl,restic,borg (default: all three)
#   --threads N         vmbackupctl --threads N (default: one worker per core)
#   --size-mib N        disk size (default 4096; multiple of 16)
#   --no-sparse         skip the 64 GiB and 1 TiB sparse volumes
#   --no-verify         do not check the restored images of the first run
#   --borg-create-opts "OPTS"   replace "-C lz4 --chunker-params fixed,4194304"
#   --json-out FILE     default benchmarks/results/compare-<date>.json
#   --keep              keep the disk images
#   --report FILE       only print the table and goals of an earlier run's JSON file
# Installs restic, borgbackup, lz4 and openssl from Debian when missing (needs root or sudo).
# Drops the page cache before each restore (root only; reported when not possible).
set -eu
# New repositories need an explicit encryption choice (vmbackupctl --encryption).
export VMBACKUP_ENCRYPTION="${VMBACKUP_ENCRYPTION:-none}"
src=$(cd "$(dirname "$0")/.." && pwd)
work=/var/tmp/vmb-perf
build_dir=
exe=
pass=
while [ $# -gt 0 ]; do
  case "$1" in
    --work) work=$2; pass="$pass --work $2"; shift 2 ;;
    --build-dir) build_dir=$2; shift 2 ;;
    --vmbackupctl) exe=$2; shift 2 ;;
    --borg-create-opts) borg_opts=$2; shift 2 ;;
    --runs|--tools|--threads|--size-mib|--json-out) pass="$pass $1 $2"; shift 2 ;;
    --no-sparse|--no-verify|--keep) pass="$pass $1"; shift ;;
    --report) exec python3 "$src/benchmarks/compare/compare.py" --report "$2" ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

# ---- packages
missing=
command -v restic >/dev/null 2>&1 || missing="$missing restic"
command -v borg >/dev/null 2>&1 || missing="$missing borgbackup"
command -v lz4 >/dev/null 2>&1 || missing="$missing lz4"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v cc >/dev/null 2>&1 || missing="$missing gcc"
if [ -n "$missing" ]; then
  sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "compare.sh: installing$missing"
  # shellcheck disable=SC2086
  $sudo apt-get install -y --no-install-recommends $missing ||
    { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends $missing; }
fi

# ---- vmbackupctl
if [ -z "$exe" ]; then
  if [ -n "$build_dir" ]; then
    [ -f "$build_dir/build.ninja" ] ||
      cmake -S "$src" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DVMBACKUP_BUILD_PYTHON=OFF -DVMBACKUP_BUILD_TESTS=OFF -DVMBACKUP_BUILD_BENCHMARKS=OFF
    cmake --build "$build_dir" -j"$(nproc)" --target vmbackupctl
    exe=$build_dir/tools/vmbackupctl
  else
    (cd "$src" && cmake --preset default >/dev/null && cmake --build --preset default --target vmbackupctl)
    exe=$src/build/tools/vmbackupctl
  fi
fi
[ -x "$exe" ] || { echo "compare.sh: $exe is not executable" >&2; exit 1; }

# ---- the disk generator
mkdir -p "$work"
cc -O2 -Wall -o "$work/gen_disk" "$src/benchmarks/compare/gen_disk.c"

if [ -n "${borg_opts+x}" ]; then
  # shellcheck disable=SC2086
  exec python3 "$src/benchmarks/compare/compare.py" --vmbackupctl "$exe" --gen "$work/gen_disk" \
    --borg-create-opts "$borg_opts" $pass
fi
# shellcheck disable=SC2086
exec python3 "$src/benchmarks/compare/compare.py" --vmbackupctl "$exe" --gen "$work/gen_disk" $pass
