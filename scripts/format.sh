#!/usr/bin/env bash
# The C++ sources in .clang-format's style (Debian's clang-format 14).
#   scripts/format.sh           reformat every tracked .cpp/.h in place
#   scripts/format.sh --check   change nothing; list the files that differ and exit 1 if any does
#                               (the first part of scripts/test.sh, so CI checks it)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fmt=$(command -v clang-format-14 || command -v clang-format || true)
if [ -z "$fmt" ]; then
  echo "format.sh: clang-format not found (scripts/setup.sh installs Debian's clang-format)" >&2
  exit 1
fi
mapfile -t files < <(git ls-files '*.cpp' '*.h')
if [ "${1:-}" = --check ]; then
  bad=()
  for f in "${files[@]}"; do "$fmt" --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f"); done
  if [ ${#bad[@]} -gt 0 ]; then
    printf 'format.sh: not in .clang-format style: %s\n' "${bad[@]}" >&2
    echo "format.sh: ${#bad[@]} of ${#files[@]} files differ; scripts/format.sh reformats them" >&2
    exit 1
  fi
  echo "format.sh: all ${#files[@]} C++ files are in .clang-format style"
elif [ $# -eq 0 ]; then
  "$fmt" -i "${files[@]}"
else
  echo "usage: scripts/format.sh [--check]" >&2
  exit 2
fi
