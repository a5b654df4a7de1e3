#!/usr/bin/env bash
# cnclip serve's rows of scripts/bench.sh (which calls it with its cached inputs); also runnable alone
# on inputs bench.sh made:
#
#   scripts/bench_serve.sh WORK MODEL PHOTO_INDEX INDEX...
#
# WORK: a scratch folder; MODEL: the bundle the indexes were built with; PHOTO_INDEX: an index of real
# photos (thumbnails); INDEX...: indexes of N vectors named idxN (bench.sh's idx100000, idx1000000).
# Prints Markdown table rows:
#   - warm text query latency through the JSON API, per index: 20 different queries (the text
#     tower's call differs per query), p50/p90 of curl's total time on loopback
#   - thumbnail latency of every photo: cold (made on request) and cached (INDEX/thumbs)
#   - `search-text` routed through the running server vs alone (--no-server), 10 different queries
#     interleaved, on the first index, p50 (p90) of the whole process
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 4 ] || { echo "usage: bench_serve.sh WORK MODEL PHOTO_INDEX INDEX..." >&2; exit 2; }
work=$1; model=$2; photo_index=$3; shift 3
py=/usr/bin/python3
bin="$repo/build/cnclip"
helper="$repo/scripts/bench_helper.py"
mkdir -p "$work"
log() { echo "bench: $*" >&2; }
json_field() { "$py" -c "import json,sys; print(json.loads([l for l in sys.stdin.read().splitlines() if l.startswith('{')][-1])['$1'])"; }
pct() { sort -g | awk -v q="$1" '{a[NR]=$1} END {i=int(q*NR)+1; if (i>NR) i=NR; print a[i]}'; }
f() { "$py" -c "print(format($1, '$2'))"; }

serve_pid=
serve_start() {  # serve_start INDEX: sets serve_pid, serve_port
  "$bin" serve --port 0 --model "$model" --index "$1" 2> "$work/serve.err" > /dev/null &
  serve_pid=$!; serve_port=
  for _ in $(seq 600); do
    serve_port=$(sed -n 's|^listening on http://[^ ]*:\([0-9]*\)/$|\1|p' "$work/serve.err")
    [ -n "$serve_port" ] && return 0; sleep 0.1
  done
  echo "bench_serve.sh: cnclip serve did not start: $(cat "$work/serve.err")" >&2; exit 1
}
serve_stop() { [ -z "$serve_pid" ] || { kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; serve_pid=; }; }
trap serve_stop EXIT

queries=(小狗在草地上奔跑 夕阳下的海滩 一只橘猫趴在窗台上晒太阳 城市夜景 雪山和湖泊 红色的跑车 生日蛋糕 穿汉服的女孩
         下雨的街道 熊猫吃竹子 沙漠里的骆驼 秋天的枫叶 孩子们在公园玩耍 海底的珊瑚 古老的寺庙 早餐的咖啡 机场的飞机
         婚礼现场 星空 厨房里的面条)
first=1
for index in "$@"; do
  n=${index##*idx}
  log "serve: warm API queries on $n vectors"
  serve_start "$index"
  curl -s -o /dev/null "http://127.0.0.1:$serve_port/api/v1/search?q=warm&k=10"
  times=$(for q in "${queries[@]}"; do
    curl -s -o /dev/null -w '%{time_total}\n' -G "http://127.0.0.1:$serve_port/api/v1/search" --data-urlencode "q=$q" -d k=10
  done)
  echo "| \`serve\` API text query, warm, $n vectors, p50 / p90 ms | $(f "$(echo "$times" | pct 0.5)*1000" .0f) / $(f "$(echo "$times" | pct 0.9)*1000" .0f) | | 20 different queries, HTTP on loopback |"
  if [ "$first" = 1 ]; then
    first=0
    log "serve: search-text routed vs alone on $n vectors"
    routed=(); alone=()
    for q in "${queries[@]:0:10}"; do
      routed+=("$("$py" "$helper" time-runs 1 -- "$bin" search-text "$q" --model "$model" --index "$index" --format jsonl | json_field p50_s)")
      alone+=("$("$py" "$helper" time-runs 1 -- "$bin" search-text "$q" --no-server --model "$model" --index "$index" --format jsonl | json_field p50_s)")
    done
    r50=$(printf '%s\n' "${routed[@]}" | pct 0.5); r90=$(printf '%s\n' "${routed[@]}" | pct 0.9)
    a50=$(printf '%s\n' "${alone[@]}" | pct 0.5)
    echo "| search-text, $n vectors, routed through a running \`serve\` vs alone (\`--no-server\`), p50 s | $(f "$r50" .3f) (p90 $(f "$r90" .3f)) | alone $(f "$a50" .2f) | **$(f "$a50/$r50" .1f)×** faster |"
  fi
  serve_stop
done

log "serve: thumbnails"
rm -rf "$photo_index/thumbs"
# The ids before the server starts (a read beside the starting server once met a locked catalog).
ids=$("$py" -c "import sqlite3,sys; print(' '.join(str(r[0]) for r in sqlite3.connect(sys.argv[1]).execute('SELECT id FROM files ORDER BY id')))" "$photo_index/catalog.sqlite3")
serve_start "$photo_index"
thumb() { for id in $ids; do curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$serve_port/api/v1/thumb/$id"; done; }
cold=$(thumb); cached=$(thumb)
count=$(echo "$ids" | wc -w)
echo "| \`serve\` thumbnail (longest side 320) of $count photos, mostly 12 MP JPEGs, p50 / p90 ms | cold $(f "$(echo "$cold" | pct 0.5)*1000" .0f) / $(f "$(echo "$cold" | pct 0.9)*1000" .0f), cached $(f "$(echo "$cached" | pct 0.5)*1000" .1f) / $(f "$(echo "$cached" | pct 0.9)*1000" .1f) | | cold: decoded at reduced size, made and cached |"
serve_stop
