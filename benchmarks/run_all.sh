#!/bin/sh
# Builds the benchmarks and reproduces every figure of docs/benchmarks.md.
# Usage: benchmarks/run_all.sh [build-dir] [results-dir]
# Scratch volumes and repositories go to $TMPDIR (default /tmp) and are removed by the programs.
# Needs about 8 GiB free in $TMPDIR (the 4 GiB run) and 2.5 GiB of RAM (the index memory study).
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$src/build-bench}
out=${2:-$(mktemp -d "${TMPDIR:-/tmp}/vmbackup-bench-results-XXXXXX")}
mkdir -p "$out"

cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DVMBACKUP_BUILD_PYTHON=OFF \
  -DVMBACKUP_BUILD_TESTS=OFF -DVMBACKUP_BUILD_TOOLS=OFF
cmake --build "$build" -j"$(nproc)" --target vmbackup_stage_bench vmbackup_blocksize_study

"$build/benchmarks/vmbackup_stage_bench" --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/stage.json" --benchmark_out_format=json | tee "$out/stage.txt"
"$build/benchmarks/vmbackup_blocksize_study" --size-mib=1024 --reps=3 --no-memory \
  | tee "$out/study-1g.txt"
"$build/benchmarks/vmbackup_blocksize_study" --no-backup | tee "$out/memory.txt"
"$build/benchmarks/vmbackup_blocksize_study" --size-mib=4096 --reps=1 --block-kib=64,256,4096 \
  --no-memory | tee "$out/study-4g.txt"
echo "results in $out"
