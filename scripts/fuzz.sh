#!/usr/bin/env bash
# Fuzz stage of CI (called by scripts/test.sh): builds the libFuzzer targets (preset `fuzz`: clang,
# -fsanitize=fuzzer,address,undefined), writes the seed corpora with the real encoders
# (fuzz_seeds), re-runs every reproducer in tests/fuzz/regressions/<name>/, then fuzzes every
# target for a bounded time, two at a time. Any crash, leak, timeout, OOM or failed FUZZ_CHECK
# fails the script and prints the reproducer's path and the command that replays it.
#   scripts/fuzz.sh [seconds-per-target] [name...]   (default 45 s, every tests/fuzz/fuzz_<name>.cc)
# Seeds: build-fuzz/fuzz/seeds/<name>/ (fuzz_seeds) and tests/fuzz/corpus/<name>/ (committed);
# dictionary: tests/fuzz/<name>.dict when present. Output under build-fuzz/fuzz/: corpus/<name>/
# (grows across local runs), logs/<name>.log, artifacts/<name>/ (reproducers). See docs/testing.md, "Fuzzing".
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
seconds=${1:-45}
shift || true
case "$seconds" in '' | *[!0-9]*)
  echo "usage: scripts/fuzz.sh [seconds-per-target] [name...]" >&2
  exit 2
  ;;
esac
parallel=2

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for src in tests/fuzz/fuzz_*.cc; do
    name=$(basename "$src" .cc)
    name=${name#fuzz_}
    [ "$name" = seeds ] || targets+=("$name")
  done
fi

echo "== fuzz: build (preset fuzz: clang, libFuzzer + ASan + UBSan)"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz

bin=build-fuzz/tests/fuzz
out=build-fuzz/fuzz
rm -rf "$out/seeds" "$out/logs" "$out/artifacts" "$out/status"
mkdir -p "$out/seeds" "$out/logs" "$out/status"

# Every sanitizer error aborts; libFuzzer turns the abort into a crash report with the input saved.
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:allocator_may_return_null=0:handle_abort=1"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"
if [ -x /usr/lib/llvm-14/bin/llvm-symbolizer ]; then
  export ASAN_SYMBOLIZER_PATH=/usr/lib/llvm-14/bin/llvm-symbolizer
fi
limits=(-rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10)

echo "== fuzz: seeds"
"$bin/fuzz_seeds" "$out/seeds"

failed=()
# Prints what went wrong in a failed run: the first error line, the reproducer and how to replay it.
report() {
  local name=$1 log=$2 kind repro
  kind=$(grep -m1 -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|FUZZ_CHECK failed|ALARM: working' "$log" || true)
  repro=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
  echo "!! fuzz_$name FAILED: ${kind:-see the log}"
  echo "!!   log:        $log"
  if [ -n "$repro" ]; then
    echo "!!   reproducer: $repro"
    echo "!!   replay:     $bin/fuzz_$name $repro"
  fi
  echo "---- last lines of $log"
  tail -n 30 "$log" | cut -c1-300
  echo "----"
}

echo "== fuzz: regression inputs (tests/fuzz/regressions/<name>/)"
for name in "${targets[@]}"; do
  [ -x "$bin/fuzz_$name" ] || { echo "fuzz: no binary $bin/fuzz_$name" >&2; exit 1; }
  dir=tests/fuzz/regressions/$name
  [ -d "$dir" ] || continue
  passed=0
  # One process per input, so that every input is checked (libFuzzer stops at the first crash).
  while IFS= read -r input; do
    log=$out/logs/$name.regression.$(basename "$input").log
    if "$bin/fuzz_$name" "${limits[@]}" "$input" >"$log" 2>&1; then
      passed=$((passed + 1))
    else
      echo "!! fuzz_$name FAILED on regression input $input"
      echo "!!   replay:     $bin/fuzz_$name $input"
      report "$name" "$log"
      failed+=("$name:$(basename "$input")")
    fi
  done < <(find "$dir" -type f ! -name '*.md' | sort)
  echo "fuzz_$name: $passed regression input(s) pass"
done
echo "== fuzz: build, seeds and regressions took $(($(date +%s) - start)) s"

echo "== fuzz: ${seconds} s per target, $parallel at a time: ${targets[*]}"
run_one() {
  local name=$1 corpus=$out/corpus/$1 seeds=() dict=() rc=0
  mkdir -p "$corpus" "$out/artifacts/$name"
  [ -f "tests/fuzz/$name.dict" ] && dict+=("-dict=tests/fuzz/$name.dict")
  [ -d "$out/seeds/$name" ] && seeds+=("$out/seeds/$name")
  [ -d "tests/fuzz/corpus/$name" ] && seeds+=("tests/fuzz/corpus/$name")
  "$bin/fuzz_$name" "${limits[@]}" "${dict[@]}" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/$name/" "$corpus" "${seeds[@]}" >"$out/logs/$name.log" 2>&1 ||
    rc=$?
  echo "$rc" >"$out/status/$name"
}
for name in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n || true; done
  run_one "$name" &
done
wait

for name in "${targets[@]}"; do
  log=$out/logs/$name.log
  rc=$(cat "$out/status/$name" 2>/dev/null || echo missing)
  if [ "$rc" = 0 ]; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
    corp=$(find "$out/corpus/$name" -type f | wc -l)
    echo "fuzz_$name: ok, ${runs:-?} runs, ${cov:-cov: ?}, corpus $corp inputs"
  else
    report "$name" "$log"
    failed+=("$name")
  fi
done

echo "== fuzz stage took $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "== fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "== fuzz: all targets passed"
