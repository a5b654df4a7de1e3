#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, -fsanitize=fuzzer,address,undefined, in build-fuzz/) and runs
# each for SECONDS with a seed corpus. Usage:
#   scripts/fuzz.sh SECONDS [TARGET...]      targets: tokenizer image npy bundle jsonl (default: all)
# (jsonl: once include/cnclip/import.h declares read_embeddings_jsonl)
# Environment: CNCLIP_FUZZ_BUILD (build dir, default build-fuzz), CNCLIP_FIXTURES_DIR (default
# ../shared/fixtures), CNCLIP_FUZZ_JOBS (parallel build jobs, default 2), CNCLIP_FUZZ_PARALLEL (targets
# fuzzed at once, default: the number of cores).
# The corpus each run grows is kept in $build/corpus/TARGET; the committed seeds and regression
# inputs in fuzz/corpus/TARGET and seeds from the fixtures (fuzz/make_seeds.py) are always included.
# A crash stops that target: its input is saved as $build/crash-TARGET-* and the script exits 1.
# Each target's last status line (executions/s, cov, ft) is printed in a summary at the end.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: SECONDS must be a number, got '$seconds'" >&2; exit 2; }
build=${CNCLIP_FUZZ_BUILD:-$repo/build-fuzz}
fixtures=${CNCLIP_FIXTURES_DIR:-$repo/../shared/fixtures}
jobs=${CNCLIP_FUZZ_JOBS:-2}

if [ ! -f "$build/CMakeCache.txt" ]; then
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  cmake -S "$repo" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCNCLIP_FUZZ=ON -DCNCLIP_BUILD_TESTS=OFF >&2
fi
# The targets this source tree has (fuzz/CMakeLists.txt lists them when configuring).
cmake "$build" >/dev/null
read -r -a all_targets <"$build/fuzz/targets.txt"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target '$t' (${all_targets[*]})" >&2; exit 2; }
done
# CNCLIP_FUZZ_SKIP_KNOWN=1 (scripts/test.sh): leave out a target with inputs in fuzz/known-crashes/
# (a crash found whose fix is pending), which would fail within seconds.
if [ "${CNCLIP_FUZZ_SKIP_KNOWN:-0}" = 1 ]; then
  kept=()
  for t in "${targets[@]}"; do
    if compgen -G "$repo/fuzz/known-crashes/$t/*" >/dev/null; then
      echo "fuzz: $t left out: known crashes waiting for a fix in fuzz/known-crashes/$t (see its README)"
    else
      kept+=("$t")
    fi
  done
  targets=("${kept[@]}")
fi
build_targets=()
for t in "${targets[@]}"; do build_targets+=("fuzz_$t"); done
cmake --build "$build" -j"$jobs" --target "${build_targets[@]}" >&2

# Seeds: the committed corpus fuzz/corpus/TARGET (small generated files of every format and
# variant, and the regression inputs of crashes found before), plus what comes from the fixtures.
seeds="$build/seeds"
rm -rf "$seeds"
bundle_json=/nonexistent
for b in "$repo/models/tiny/bundle.json" "$repo/build/test-data/tiny/bundle.json"; do
  if [ -f "$b" ]; then bundle_json=$b; break; fi
done
/usr/bin/python3 "$repo/fuzz/make_seeds.py" fixtures "$seeds" "$fixtures" "$bundle_json"

# The image target must not be able to make OpenCV allocate more than this (its own check, after
# ours: the target refuses headers over 4 MP, and a lying header must not get past either).
export OPENCV_IO_MAX_IMAGE_PIXELS=16777216
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:allocator_may_return_null=1}
# Leaks inside Debian's libraries (not ours), as in the asan-ubsan build: tests/sanitizers/lsan.supp.
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$repo/tests/sanitizers/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# One target's run: its log in $build/fuzz-TARGET.log, its summary line in $build/fuzz-TARGET.result.
fuzz_target() {
  local t=$1 corpus="$build/corpus/$1" log="$build/fuzz-$1.log" rc last execs
  mkdir -p "$corpus"
  local dirs=("$corpus" "$repo/fuzz/corpus/$t")
  if [ -d "$seeds/$t" ]; then dirs+=("$seeds/$t"); fi
  echo "fuzz: $t for ${seconds}s (log $log)" >&2
  set +e
  "$build/fuzz/fuzz_$t" -max_total_time="$seconds" -rss_limit_mb=2560 -max_len=262144 -timeout=25 \
    -print_final_stats=1 -artifact_prefix="$build/crash-$t-" "${dirs[@]}" >"$log" 2>&1
  rc=$?
  set -e
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
  if [ $rc -ne 0 ]; then
    { echo "fuzz: $t FAILED (exit $rc); the end of $log:"; tail -40 "$log"; } >&2
    echo "$t: FAILED, see $log" >"$build/fuzz-$t.result"
  else
    echo "$t: ${execs:-?} runs in ${seconds}s; last: $last" >"$build/fuzz-$t.result"
  fi
}

# The targets run side by side, CNCLIP_FUZZ_PARALLEL at a time (default: one per core): each fuzzer is
# one process on one core, so on CI's 2 cores five targets of 20 s take 60 s instead of 100.
parallel=${CNCLIP_FUZZ_PARALLEL:-$(nproc)}
[[ "$parallel" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: CNCLIP_FUZZ_PARALLEL must be a positive number, got '$parallel'" >&2; exit 2; }
running=0
for t in "${targets[@]}"; do
  rm -f "$build/fuzz-$t.result"
  if [ $running -ge "$parallel" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  fuzz_target "$t" &
  running=$((running + 1))
done
wait

status=0
summary=()
for t in "${targets[@]}"; do
  line=$(cat "$build/fuzz-$t.result" 2>/dev/null || echo "$t: FAILED, no result (see $build/fuzz-$t.log)")
  [[ "$line" != *": FAILED"* ]] || status=1
  summary+=("$line")
done
echo "fuzz summary:"
printf '  %s\n' "${summary[@]}"
exit $status
