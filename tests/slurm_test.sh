#!/usr/bin/env bash
# The Slurm recipe (scripts/slurm_embed.sh) on a one-node cluster this test starts: slurmctld and
# slurmd on localhost with their own configuration, ports, state and spool in a temporary folder
# (auth/none: no munge daemon needed), stopped at the end. It embeds a generated photo folder as a job
# array of 3 shards, imports them with the dependent job, and checks the index equals one made by
# `cnclip index` (to 1e-6, rows bit-identical counted); then submits the same thing again (a retry after a failure) and checks
# that nothing is done twice and nothing changes; then a shard stopped by scancel (SIGTERM, what a
# time limit or preemption sends) is resubmitted alone and continues from its saved work.
# Usage: slurm_test.sh CNCLIP BUNDLE SOURCE_DIR. Skips (exit 77, loudly) only when Slurm is not
# installed; with CNCLIP_REQUIRE_SLURM=1 (CI) that is a failure.
set -euo pipefail
cnclip="$1" bundle="$2" src="$3"
py=/usr/bin/python3

missing=()
for tool in slurmctld slurmd sbatch scontrol sinfo scancel; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  msg="Slurm is not installed (missing: ${missing[*]}); scripts/setup.sh installs slurm-wlm"
  if [ "${CNCLIP_REQUIRE_SLURM:-0}" = 1 ]; then
    echo "slurm_test: FAILED: $msg, and CNCLIP_REQUIRE_SLURM=1" >&2
    exit 1
  fi
  echo "******************************************************************" >&2
  echo "slurm_test: SKIPPED: $msg" >&2
  echo "******************************************************************" >&2
  exit 77
fi
export PATH="$PATH:/usr/sbin"

work=$(mktemp -d /tmp/cnclip-slurm-XXXXXX)
cleanup() {
  # Only the daemons this test started, by the pids they wrote; up to 10 s to end, then SIGKILL.
  local pids=()
  for f in "$work/slurmd.pid" "$work/slurmctld.pid"; do
    if [ -f "$f" ]; then pids+=("$(cat "$f")"); fi
  done
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null || true
    for i in $(seq 1 50); do
      kill -0 "${pids[@]}" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "${pids[@]}" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "slurm_test: FAILED: $*" >&2
  for log in "$work"/log/*.log "$work"/emb*/logs/*.log; do
    [ -f "$log" ] || continue
    echo "== $log" >&2
    tail -n 15 "$log" >&2
  done
  exit 1
}

free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ctld_port=$(free_port)
slurmd_port=$(free_port)
while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done
user=$(id -un)
mkdir -p "$work/state" "$work/spool" "$work/log"
cat > "$work/slurm.conf" <<EOF
ClusterName=cnclip-test
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/none
CredType=cred/none
SlurmUser=$user
SlurmdUser=$user
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
KillWait=10
MinJobAge=600
NodeName=localhost CPUs=$(nproc) State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$work/slurm.conf"
slurmctld -c || fail "slurmctld did not start"
slurmd -N localhost || fail "slurmd did not start"
for i in $(seq 1 60); do
  state=$(sinfo -h -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
[ "$state" = idle ] || fail "the node did not come up (sinfo says '$state')"
echo "slurm_test: one-node cluster up (slurmctld :$ctld_port, slurmd :$slurmd_port)" >&2

# Photos: N small JPEGs and PNGs in nested folders, and a broken one.
make_photos() {  # DIR N
  "$py" - "$1" "$2" <<'EOF'
import os, random, sys
from PIL import Image
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
for i in range(n):
    d = os.path.join(root, "y%d" % (2020 + i % 3), "m%d" % (i % 4))
    os.makedirs(d, exist_ok=True)
    img = Image.new("RGB", (64 + i, 48 + i), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    for _ in range(40):
        x, y = rng.randrange(img.width), rng.randrange(img.height)
        img.putpixel((x, y), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    img.save(os.path.join(d, "p%d.%s" % (i, "png" if i % 4 == 3 else "jpg")))
open(os.path.join(root, "y2021", "broken.jpg"), "w").write("not an image")
EOF
}
photos="$work/photos"
make_photos "$photos" 30
"$cnclip" index -q "$photos" --model "$bundle" --index "$work/ref" || fail "cnclip index failed"

run_recipe() {  # OUT INDEX EXTRA-ARGS...
  local out="$1" index="$2"; shift 2
  "$src/scripts/slurm_embed.sh" --shards 3 --out "$out" --index "$index" --model "$bundle" --cnclip "$cnclip" \
    --wait "$@" -- "$photos" --batch-size 2 > "$work/jobs.txt" 2> "$work/recipe.err" || {
    cat "$work/recipe.err" >&2
    fail "slurm_embed.sh failed"
  }
  [ "$(wc -l < "$work/jobs.txt")" = 2 ] || fail "expected two job ids on stdout, got: $(cat "$work/jobs.txt")"
}

# Same paths with the same embeddings in both indexes, to float rounding (1e-6): which BLAS kernel
# computes a row of a batch, and so its last bits, may depend on the batch (OpenBLAS's AVX2 kernels
# forced on an AVX-512 CPU; tests/shard_test.cpp, same_rows). Bit for bit counted and said.
compare() {  # INDEX [REF COUNT]
  "$py" - "${2:-$work/ref}/catalog.sqlite3" "$1/catalog.sqlite3" "${3:-30}" <<'EOF' || fail "the merged index differs from cnclip index's"
import sqlite3, struct, sys
def rows(p):
    return {path: emb for path, emb in sqlite3.connect(p).execute("SELECT path, embedding FROM files")}
ref, got = rows(sys.argv[1]), rows(sys.argv[2])
assert len(ref) == int(sys.argv[3]), len(ref)
assert set(ref) == set(got), sorted(set(ref) ^ set(got))
def floats(b):
    return struct.unpack("<%df" % (len(b) // 4), b)
bad = [p for p in ref if len(ref[p]) != len(got[p]) or
       max(abs(a - b) for a, b in zip(floats(ref[p]), floats(got[p]))) > 1e-6]
assert not bad, bad
exact = sum(ref[p] == got[p] for p in ref)
print("slurm_test: %d paths, embeddings within 1e-6 of cnclip index's (%d bit-identical)" % (len(ref), exact),
      file=sys.stderr)
EOF
}

# 1. The array and the import.
run_recipe "$work/emb" "$work/idx"
compare "$work/idx"
failed=$(cat "$work"/emb/shard-*-of-3.json | "$py" -c 'import json, sys; print(sum(len(json.loads(l)["failed"]) for l in sys.stdin))')
[ "$failed" = 1 ] || fail "the broken photo should be listed as failed by exactly one shard, not $failed"
for k in 1 2 3; do
  grep -q "slurm_embed: task $k of 3" "$work/emb/logs/shard-$k-of-3.log" || fail "no log of task $k"
done
grep -q "imported 30 new and 0 updated embeddings" "$work/emb/logs/import.log" || fail "import log: $(cat "$work/emb/logs/import.log")"

# 2. The same submission again: every task finds its outputs complete, the import changes nothing.
before=$(stat -c '%n %s %Y' "$work"/idx/* "$work"/emb/shard-* | sort)
sleep 1
run_recipe "$work/emb" "$work/idx"
for k in 1 2 3; do
  grep -q "already complete" "$work/emb/logs/shard-$k-of-3.log" || fail "task $k embedded again: $(cat "$work/emb/logs/shard-$k-of-3.log")"
done
grep -q "imported 0 new and 0 updated embeddings, 30 unchanged" "$work/emb/logs/import.log" || fail "second import: $(cat "$work/emb/logs/import.log")"
after=$(stat -c '%n %s %Y' "$work"/idx/* "$work"/emb/shard-* | grep -v '/lock ' | sort)
[ "$(echo "$before" | grep -v '/lock ')" = "$after" ] || fail "the second submission rewrote files"

# 3. A shard stopped by its time limit or preemption (scancel --signal=TERM, what Slurm sends):
# it saves its work and exits; resubmitting that task alone continues it, and the import completes.
# 300 photos, one per model call, saved after each: the signal lands long before the end.
photos3="$work/photos3"
make_photos "$photos3" 300
"$cnclip" index -q "$photos3" --model "$bundle" --index "$work/ref3" || fail "cnclip index failed"
job=$("$src/scripts/slurm_embed.sh" --shards 1 --out "$work/emb1" --cnclip "$cnclip" --model "$bundle" \
  -- "$photos3" --batch-size 1 --save-every 0 -j 1 2>/dev/null | head -1)
for i in $(seq 1 600); do
  ls "$work"/emb1/shard-1-of-1.partial/*.npy >/dev/null 2>&1 && break
  sleep 0.05
done
scancel --full --signal=TERM "$job" 2>/dev/null || true
for i in $(seq 1 200); do
  st=$(scontrol show job "$job" -o 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
  case "$st" in COMPLETED|FAILED|CANCELLED) break ;; esac
  sleep 0.2
done
[ ! -f "$work/emb1/shard-1-of-1.npy" ] || fail "the shard finished before SIGTERM reached it"
{
  grep -q "interrupted: the finished embeddings are saved" "$work/emb1/logs/shard-1-of-1.log" ||
    fail "the stopped task did not save its work: $(cat "$work/emb1/logs/shard-1-of-1.log")"
  run_recipe_1() {
    "$src/scripts/slurm_embed.sh" --shards 1 --tasks 1 --out "$work/emb1" --index "$work/idx1" --model "$bundle" \
      --cnclip "$cnclip" --wait -- "$photos3" --batch-size 1 > /dev/null 2> "$work/recipe.err" || {
      cat "$work/recipe.err" >&2
      fail "the resubmitted shard failed"
    }
  }
  run_recipe_1
  grep -q "saved by an interrupted run are used again" "$work/emb1/logs/shard-1-of-1.log" ||
    fail "the resubmitted task started over: $(cat "$work/emb1/logs/shard-1-of-1.log")"
  compare "$work/idx1" "$work/ref3" 300
}
echo "slurm_test: passed" >&2
