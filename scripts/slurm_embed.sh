#!/usr/bin/env bash
# Embeds a photo collection on a Slurm cluster and merges it into one index: a job array of N
# `cnclip embed-image --shard K/N` tasks, then one `cnclip import` job that starts when all of them
# succeeded. Usage:
#   scripts/slurm_embed.sh --shards N --out DIR [--index IDX] [--model BUNDLE] [--cnclip PATH]
#                          [--tasks LIST] [--sbatch ARG]... [--wait] [--dry-run] -- EMBED-ARGS...
#   EMBED-ARGS: what every task gives `cnclip embed-image`: the photo folders or files (the same path
#   on every node, or a --root that makes the keys agree), and options such as --exclude, --ext,
#   --batch-size, --ignore-exif. Every task must see DIR, the photos, the model and cnclip.
#   --out DIR      shared folder for the outputs: DIR/shard-K-of-N.{npy,paths,json} and the logs
#                  DIR/logs/shard-K-of-N.log and DIR/logs/import.log.
#   --index IDX    the index the import job merges into (without it no import job is submitted and
#                  the import command is printed instead).
#   --model BUNDLE given to every task and to the import (default: cnclip's, CNCLIP_MODEL).
#   --cnclip PATH  the cnclip binary (default: the one on PATH, else build/cnclip of this checkout).
#   --tasks LIST   array indices to run (default 1-N): e.g. 3,7 resubmits two shards that failed.
#                  The import job still imports all N shards (what is already there is skipped).
#   --sbatch ARG   passed to both sbatch calls (repeatable): --sbatch=--partition=gpu --sbatch=--time=8:00:00
#   --wait         wait until the import job ends; exit 0 if it completed, else 1 (with the logs' ends).
#   --dry-run      print the sbatch commands instead of running them.
# Prints the array job id and the import job id on stdout (one per line).
# A task stopped by its time limit or by preemption (SIGTERM) saves its finished work and a rerun of
# the same task continues from it (`scontrol requeue`, or --tasks K); a task that finds its outputs
# complete does nothing; `cnclip import` skips rows the index already holds. So submitting the same
# command again after any failure is always safe, and only redoes what is missing.
set -euo pipefail

usage() { echo "slurm_embed.sh: $1 (see scripts/slurm_embed.sh --help)" >&2; exit 2; }
help() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0; }

# The two modes the jobs run in: one shard (a task of the array), and the import.
if [ "${1:-}" = "--run-task" ]; then
  shift
  cnclip="$1" n="$2" out="$3"; shift 3
  k="${SLURM_ARRAY_TASK_ID:?--run-task runs as a task of a Slurm job array}"
  echo "slurm_embed: task $k of $n on $(hostname) (job ${SLURM_JOB_ID:-?})" >&2
  # exec: the signals Slurm sends (SIGTERM at the time limit or on preemption) reach cnclip itself,
  # which saves what it finished and exits 143 (128 + SIGTERM).
  exec "$cnclip" embed-image --shard "$k/$n" --out "$out/shard-$k-of-$n" "$@"
fi
if [ "${1:-}" = "--run-import" ]; then
  shift
  cnclip="$1"; shift
  echo "slurm_embed: import on $(hostname) (job ${SLURM_JOB_ID:-?})" >&2
  exec "$cnclip" import --wait "$@"
fi

shards="" out="" index="" model="" cnclip="" tasks="" wait=0 dry=0
sbatch_args=()
need() { if [ $# -lt 2 ] || [ -z "$2" ]; then usage "$1 needs a value"; fi; }
while [ $# -gt 0 ]; do
  case "$1" in
    --shards|--out|--index|--model|--cnclip|--tasks|--sbatch)
      need "$@"
      case "$1" in
        --shards) shards="$2" ;; --out) out="$2" ;; --index) index="$2" ;; --model) model="$2" ;;
        --cnclip) cnclip="$2" ;; --tasks) tasks="$2" ;; --sbatch) sbatch_args+=("$2") ;;
      esac
      shift 2 ;;
    --shards=*) shards="${1#*=}"; shift ;;
    --out=*) out="${1#*=}"; shift ;;
    --index=*) index="${1#*=}"; shift ;;
    --model=*) model="${1#*=}"; shift ;;
    --cnclip=*) cnclip="${1#*=}"; shift ;;
    --tasks=*) tasks="${1#*=}"; shift ;;
    --sbatch=*) sbatch_args+=("${1#*=}"); shift ;;
    --wait) wait=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) help ;;
    --) shift; break ;;
    *) usage "unknown argument '$1' (the photos and embed-image options go after --)" ;;
  esac
done
[ -n "$shards" ] || usage "--shards N is required"
[[ "$shards" =~ ^[1-9][0-9]{0,5}$ ]] || usage "--shards '$shards': expects a whole number from 1 to 999999"
[ -n "$out" ] || usage "--out DIR is required (a folder every node can write)"
[ $# -gt 0 ] || usage "nothing to embed: give the photo folders or files after --"
tasks="${tasks:-1-$shards}"
[[ "$tasks" =~ ^[0-9,-]+$ ]] || usage "--tasks '$tasks': expects array indices such as 1-8 or 3,7"

if [ -z "$cnclip" ]; then
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  cnclip=$(command -v cnclip || true)
  [ -n "$cnclip" ] || cnclip="$repo/build/cnclip"
fi
[ -x "$cnclip" ] || usage "no cnclip at '$cnclip' (give --cnclip PATH)"
cnclip=$(cd "$(dirname "$cnclip")" && echo "$PWD/$(basename "$cnclip")")
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
model_args=()
if [ -n "$model" ]; then model_args=(--model "$(cd "$model" && pwd)"); fi

# The tasks run this script's copy that sbatch keeps, so everything they need is in their arguments.
array=(sbatch --parsable --array="$tasks" --job-name=cnclip-embed --output="$out/logs/shard-%a-of-$shards.log"
       "${sbatch_args[@]}" "$0" --run-task "$cnclip" "$shards" "$out" "$@" "${model_args[@]}")
npys=()
for ((k = 1; k <= shards; k++)); do npys+=("$out/shard-$k-of-$shards.npy"); done
if [ "$dry" = 1 ]; then
  printf '%q ' "${array[@]}"; echo
  if [ -n "$index" ]; then
    printf '%q ' sbatch --parsable --dependency=afterok:ARRAY_JOB_ID --kill-on-invalid-dep=yes --job-name=cnclip-import \
      --output="$out/logs/import.log" "${sbatch_args[@]}" "$0" --run-import "$cnclip" --index "$index" \
      "${model_args[@]}" "${npys[@]}"
    echo
  fi
  exit 0
fi
array_job=$("${array[@]}")
array_job="${array_job%%;*}"
echo "$array_job"
echo "slurm_embed: submitted $shards shard(s) (tasks $tasks) as job array $array_job; logs in $out/logs" >&2
if [ -z "$index" ]; then
  echo "slurm_embed: when every task has completed, merge with:" >&2
  printf '  %q' "$cnclip" import "${model_args[@]}" "${npys[@]}" >&2; echo >&2
  exit 0
fi
mkdir -p "$(dirname "$index")"
index=$(cd "$(dirname "$index")" && echo "$PWD/$(basename "$index")")
# afterok: only once every task of the array completed; a task that failed makes the dependency
# impossible, and --kill-on-invalid-dep cancels the import instead of leaving it pending forever.
import_job=$(sbatch --parsable --dependency="afterok:$array_job" --kill-on-invalid-dep=yes --job-name=cnclip-import \
  --output="$out/logs/import.log" "${sbatch_args[@]}" "$0" --run-import "$cnclip" --index "$index" \
  "${model_args[@]}" "${npys[@]}")
import_job="${import_job%%;*}"
echo "$import_job"
echo "slurm_embed: the import into $index is job $import_job (after all shards succeed)" >&2
[ "$wait" = 1 ] || exit 0

# Waits for the import job to end (scontrol knows a finished job for MinJobAge, 300 s by default).
state=""
while :; do
  state=$(scontrol show job "$import_job" -o 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
  case "$state" in
    COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|PREEMPTED|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE) break ;;
    "") echo "slurm_embed: job $import_job is not known to Slurm any more" >&2; exit 1 ;;
  esac
  sleep 1
done
if [ "$state" != COMPLETED ]; then
  echo "slurm_embed: the import job $import_job ended $state; the logs end with:" >&2
  for log in "$out"/logs/*.log; do
    [ -f "$log" ] || continue
    echo "== $log" >&2
    tail -n 5 "$log" >&2
  done
  exit 1
fi
echo "slurm_embed: done: $index holds the merged shards" >&2
