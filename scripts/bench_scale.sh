#!/usr/bin/env bash
# Snapshot types at scale (issue 15): scripts/bench.sh --scale N runs this.
#
#   scripts/bench_scale.sh N [TYPE...]    (default types: flat flat-fp16 ivf)
#
# Fills an index with N generated clustered 512-d vectors (tests/scale_test.cpp, ScaleBench.*), then
# for each type: builds the snapshot (time, size on disk, tuning, peak RSS), runs 3 search processes
# (cold: open + first query) with 199 warm queries each (p50/p90), recall@10 against flat; then an
# index run in progress (5,000 vectors committed in batches, no new snapshot) and the flat search
# again (snapshot + delta). Prints a Markdown table. One phase at a time: the machine is shared.
# CNCLIP_SCALE_REUSE=1 keeps a folder an earlier run filled with N vectors (the fill takes 18 minutes
# at 10M) instead of filling it again; the flat answers recall is measured against are then
# recomputed (the first type must be flat), since earlier index-run phases added vectors to it.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
n=${1:?usage: bench_scale.sh N [TYPE...]}
shift
types=("$@")
[ ${#types[@]} -gt 0 ] || types=(flat flat-fp16 ivf)
# CNCLIP_SCALE_TESTS: a copy of the test binary, so that a rebuild during a long run changes nothing.
tests="${CNCLIP_SCALE_TESTS:-$repo/build/tests/cnclip_tests}"
[ -x "$tests" ] || { echo "bench_scale.sh: build first" >&2; exit 1; }
work="$repo/build/bench/scale-$n"
reuse=0
if [ "${CNCLIP_SCALE_REUSE:-}" = 1 ] && [ -f "$work/queries.npy" ] && [ -f "$work/index/catalog.sqlite3" ]; then
  [ "${types[0]}" = flat ] || { echo "bench_scale.sh: CNCLIP_SCALE_REUSE needs flat as the first type" >&2; exit 2; }
  reuse=1
else
  rm -rf "$work"
  mkdir -p "$work"
fi
export CNCLIP_SCALE_DIR="$work" CNCLIP_SCALE_N="$n"
phase() {  # phase NAME [ENV=VALUE...]: prints the SCALE json line with "rss_mb" added
  local name=$1
  shift
  # Each phase restarts itself with the OpenMP wait policy and malloc settings cnclip's commands run
  # with (runtime.h; tests/scale_test.cpp, run_as_cnclip_does): with libgomp's default spin, a busy
  # machine's flat 1M queries had p90 1.4x their p50.
  env "$@" /usr/bin/time -f "RSS %M" "$tests" --gtest_also_run_disabled_tests \
    --gtest_filter="ScaleBench.DISABLED_$name" >"$work/out" 2>"$work/err" || { cat "$work/out" "$work/err" >&2; exit 1; }
  local rss
  rss=$(awk '/^RSS/ {print int($2 / 1024)}' "$work/err")
  sed -n 's/^SCALE //p' "$work/out" | /usr/bin/python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['rss_mb']=$rss; print(json.dumps(d))"
}
if [ $reuse = 1 ]; then
  echo "bench: reusing the $n vectors filled in $work (fill: $(cat "$work/fill.json" 2>/dev/null))" >&2
  rm -f "$work/truth.bin"
else
  echo "bench: filling $n vectors" >&2
  phase Fill | tee "$work/fill.json" >&2
fi
rows=()
for t in "${types[@]}"; do
  echo "bench: $t" >&2
  b=$(phase Build CNCLIP_SCALE_TYPE="$t")
  echo "$b" >&2
  qs=()
  for r in 1 2 3; do
    truth=""
    [ "$t" = flat ] && [ $r = 1 ] && truth=write
    q=$(phase Query CNCLIP_SCALE_TYPE="$t" CNCLIP_SCALE_TRUTH="$truth")
    echo "$q" >&2
    qs+=("$q")
  done
  rows+=("$(/usr/bin/python3 - "$b" "${qs[@]}" <<'PY'
import json, sys, statistics
b = json.loads(sys.argv[1]); qs = [json.loads(a) for a in sys.argv[2:]]
cold = sorted(q["cold_s"] for q in qs)
print(f"| {b['resolved']} | {b['seconds']:.1f} | {b['bytes'] / 2**20:.0f} | {b['rss_mb']} | {max(q['rss_mb'] for q in qs)} | "
      f"{statistics.median(cold):.2f} / {cold[-1]:.2f} | {statistics.median(q['warm_p50_ms'] for q in qs):.1f} / "
      f"{statistics.median(q['warm_p90_ms'] for q in qs):.1f} | {qs[0]['recall_at_10']:.3f} | {b['tuning']} |")
PY
)")
done
# Search during an index run: the last type's snapshot is replaced by flat again, then 5,000 added.
phase Build CNCLIP_SCALE_TYPE=flat >/dev/null
idle=$(phase Query CNCLIP_SCALE_TYPE=flat)
phase Run CNCLIP_SCALE_ADD=5000 >&2
during=$(phase Query CNCLIP_SCALE_TYPE=flat)
echo "$idle" >&2
echo "$during" >&2
echo
echo "Measured $(date -u +%Y-%m-%d) by \`scripts/bench.sh --scale $n\`$([ $reuse = 1 ] && echo " (CNCLIP_SCALE_REUSE=1: on the folder filled earlier)") on $(nproc) cores (shared; load average $(cut -d' ' -f1 /proc/loadavg))."
echo
echo "| type | build s | disk MB | build peak RSS MB | search peak RSS MB | cold open+query p50 / worst s | warm query p50 / p90 ms | recall@10 vs flat | tuning |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
/usr/bin/python3 - "$idle" "$during" <<'PY'
import json, sys
i, d = (json.loads(a) for a in sys.argv[1:])
print()
print(f"Search during an index run (flat snapshot + a delta of 5,000 vectors committed after it): open+first query "
      f"{d['cold_s']:.2f} s against {i['cold_s']:.2f} s idle ({d['cold_s'] / i['cold_s']:.2f}x); warm p50 "
      f"{d['warm_p50_ms']:.1f} ms against {i['warm_p50_ms']:.1f} ms ({d['warm_p50_ms'] / i['warm_p50_ms']:.2f}x).")
PY
