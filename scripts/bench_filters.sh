#!/bin/sh
# Filtered, date-ordered and paged searches at 100,000 photos, and `dups` at 20,000: the figures in
# README.md ("Dates, order, pages and duplicates"). Needs a built tree (build/). CNCLIP_BENCH_N sets
# the number of photos.
set -e
cd "$(dirname "$0")/.."
exec build/tests/cnclip_tests --gtest_also_run_disabled_tests --gtest_filter='FiltersScale.*'
