#!/usr/bin/env bash
# Longer run of the fault-injection test (tests/fault_injection_test.cpp): index runs killed at random
# moments, the vector snapshot damaged at random offsets, the disk filled under a run (a tmpfs, as
# root). Prints the summary line quoted in README's "Reliability" section.
#   scripts/fault_soak.sh [--rounds N] [--seed S] [--build DIR]
set -euo pipefail
rounds=60 seed=1 build="$(cd "$(dirname "$0")/.." && pwd)/build"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --build) build="$2"; shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--seed S] [--build DIR]" >&2; exit 2 ;;
  esac
done
[[ -x "$build/tests/cnclip_tests" ]] || { echo "$0: build first ($build/tests/cnclip_tests missing)" >&2; exit 1; }
[[ -d "$build/test-data/tiny" ]] || { echo "$0: run ctest once first (it exports the tiny bundle)" >&2; exit 1; }
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
CNCLIP_FAULT_ROUNDS="$rounds" CNCLIP_FAULT_SEED="$seed" \
  "$build/tests/cnclip_tests" --gtest_filter='FaultInjection.*' >"$log" 2>&1 || status=$?
grep -E '^fault injection:|Failure|lost or changed' "$log" || true
[[ $status -eq 0 ]] || { echo "$0: FAILED (full log: rerun with the same --seed)" >&2; tail -30 "$log" >&2; }
exit $status
