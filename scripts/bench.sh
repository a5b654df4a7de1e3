#!/usr/bin/env bash
# cnclip benchmark: everything in one run, side by side, so that machine noise cancels in the ratios.
#
#   scripts/bench.sh [--rounds N] [--work DIR] [--skip-1m] [--startup-only | --models | --large | --video | --peer]
#   scripts/bench.sh --scale N [TYPE...]   snapshot types at N vectors (scripts/bench_scale.sh)
#
# Makes its inputs once (cached in build/bench): 64 JPEGs of 12 MP and 4 PNGs made from the fixtures
# with noise; a full-size ViT-B-16 with random weights in the official checkpoint layout, exported
# fp32 and int8; 100k and 1M random embeddings imported into two indexes; 10,000 small images indexed
# with the tiny bundle. Then measures, and prints a Markdown table (also written to DIR/results.md):
#   - the image tower's ms/image, fp32 and int8; text query encoding;
#     tokenizing 10,000 captions
#   - `cnclip index` images/s vs the Python reference pipeline (Pillow decode + Chinese-CLIP's
#     transform + the same TorchScript model from /usr/bin/python3, batches of 8), interleaved
#   - embedding agreement (cosine) between the two, and int8 vs fp32
#   - `cnclip eval` images/s on the same photos (a labelled set made over them), beside `index`
#   - cold `search-text` / `search-image` latency (process start to output) on 100k and 1M indexes
#   - re-running `index` over 10,000 unchanged files
#   - `cnclip serve` (scripts/bench_serve.sh): warm API queries, thumbnails, search-text routed
#   - peak RSS of each
#   - start-up of commands that load no model (--version, tokenize, info) against one that loads
#     LibTorch (--startup-only: just that, in a minute)
#   - RN50 rows: a full-size random RN50 (fp32, int8) next to ViT-B-16 in the same run: `index` of the
#     same photos, interleaved, the towers alone, and a cold search-text on the photos' index.
#     `scripts/bench.sh --models` runs only this block (and the inputs it needs): a few minutes.
#   - larger ViTs (--large: only this; ~10 GB of checkpoints and bundles in DIR, export ~10 minutes,
#     then ~5 minutes a round): ViT-L-14, ViT-L-14-336 and ViT-H-14 (fp32, int8) with random weights,
#     `index` of 16 of the photos interleaved with ViT-B-16 fp32, and a cold search-text on each index.
#   - video (--video: only this, a few minutes): hours of video indexed per CPU hour (user + system
#     time of `cnclip index`), on a 720p H.264 video of 60 s with scene cuts (made by ffmpeg), at the
#     default --frame-interval 2, with ViT-B-16 fp32 (random weights) and with the tiny model (which
#     leaves mostly the decoding: its share of the cost).
#   - the peer: ONNX Runtime (npm onnxruntime-node, installed into DIR/ort-node) running the same
#     ViT-B-16 towers exported to ONNX, fp32 and its dynamic int8, interleaved with cnclip-bench: same
#     threads, batch 4, 15-token queries; the ratios, the CPU's ISA, the BLAS kernels, and the CPU's
#     float32 limit (cnclip-bench peak). `scripts/bench.sh --peer [--threads N]` runs only this block.
#
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for the bench's commands: users run OpenBLAS with
# the kernels it picks for their CPU (the test suite may force others; that is the suite's business).
set -euo pipefail
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work="$repo/build/bench"
rounds=2
skip_1m=0
startup_only=0
models_only=0
large_only=0
video_only=0
if [ "${1:-}" = --scale ]; then shift; exec "$(dirname "${BASH_SOURCE[0]}")/bench_scale.sh" "$@"; fi
peer_only=0
peer_threads=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --skip-1m) skip_1m=1; shift ;;
    --startup-only) startup_only=1; shift ;;
    --models) models_only=1; shift ;;
    --large) large_only=1; shift ;;
    --video) video_only=1; shift ;;
    --peer) peer_only=1; shift ;;
    --threads) peer_threads=$2; shift 2 ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
py=/usr/bin/python3
bin="$repo/build/cnclip"
bench="$repo/build/cnclip-bench"
helper="$repo/scripts/bench_helper.py"
[ -x "$bin" ] && [ -x "$bench" ] || { echo "bench.sh: build first (scripts/setup.sh)" >&2; exit 1; }
mkdir -p "$work"
log() { echo "bench: $*" >&2; }
json_field() { "$py" -c "import json,sys; print(json.loads([l for l in sys.stdin.read().splitlines() if l.startswith('{')][-1])['$1'])"; }
peak_rss_mb() { sed -n 's/^peak_kb=//p' "$1" | awk '{printf "%.0f", $1/1024}'; }

# ---- start-up (issue #12): LibTorch is loaded only by commands that run a model ----------------------
# p50 wall time of 15 runs of each (process start to exit), and the shared objects each maps.
startup_rows() {
  local tiny="$work/tiny" idx="$work/idx-startup"
  [ -f "$tiny/bundle.json" ] || "$py" "$repo/scripts/export_model.py" --random-init tiny --out "$tiny" >&2
  if [ ! -f "$idx/catalog.sqlite3" ]; then
    local dim; dim=$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['embedding_dim'])" "$tiny/bundle.json")
    "$py" "$helper" vectors "$work/vs.npy" "$work/ps.txt" --count 10000 --dim "$dim"
    "$bin" import --npy "$work/vs.npy" --paths "$work/ps.txt" --model "$tiny" --index "$idx" >&2
    rm -f "$work/vs.npy" "$work/ps.txt"
  fi
  ms() { "$py" "$helper" time-runs 15 -- "$@" | json_field p50_s | awk '{printf "%.1f", $1 * 1000}'; }
  objects() { LD_DEBUG=files "$@" 2>&1 >/dev/null | grep -c 'file=.*needed by\|file=.*dynamically loaded by' || true; }
  local v t i m
  v=$(ms "$bin" --version)
  t=$(ms "$bin" tokenize 夕阳、大海、沙滩 --model "$tiny")
  i=$(ms "$bin" info --index "$idx")
  m=$(ms "$bin" embed-text 夕阳 --model "$tiny")
  echo "| start-up, p50 ms: \`cnclip --version\` / \`tokenize\` / \`info\` (10,000 files) | $v / $t / $i | \`embed-text\` (loads LibTorch, tiny model) $m | **$("$py" -c "print(format($m / $v, '.0f'))")×** faster; shared objects loaded: $(objects "$bin" --version) vs $(objects "$bin" embed-text 夕阳 --model "$tiny") |"
}
if [ "$startup_only" = 1 ]; then
  log "start-up only"
  startup_rows | tee "$work/startup.md"
  exit 0
fi

# ---- inputs (cached) -------------------------------------------------------------------------------
photos="$work/photos"
[ -d "$photos" ] || [ "$video_only" = 1 ] || { log "making photos"; "$py" "$helper" photos "$photos" --count 64 --png 4; }
fp32="$work/vitb16-fp32"; int8="$work/vitb16-int8"
stale() { [ ! -f "$1/bundle.json" ] || [ "$repo/scripts/export_model.py" -nt "$1/bundle.json" ] || [ "$repo/scripts/cnclip_towers.py" -nt "$1/bundle.json" ]; }
if stale "$fp32" || { [ "$video_only" = 0 ] && stale "$int8"; }; then
  log "exporting a random ViT-B-16 checkpoint (official layout), fp32 and int8"
  [ -f "$work/vitb16-random.pt" ] ||
    "$py" "$repo/scripts/make_random_checkpoint.py" --arch ViT-B-16 --seed 0 --out "$work/vitb16-random.pt"
  "$py" "$repo/scripts/export_model.py" --checkpoint "$work/vitb16-random.pt" --out "$fp32"
  "$py" "$repo/scripts/export_model.py" --checkpoint "$work/vitb16-random.pt" --out "$int8" --precision int8
fi

# ---- the peer: ONNX Runtime on the same towers (issue #20) ---------------------------------------------
# Prints Markdown rows. The towers are exported from the bundle's TorchScript files (bench_helper.py
# onnx-export; agreement checked and printed), ORT's dynamic int8 made from them (onnx-int8), and each
# measurement alternates cnclip-bench and scripts/bench_ort.mjs, `rounds` times; medians and ratios.
cpu_isa() {
  local flags; flags=$(grep -m1 '^flags' /proc/cpuinfo)
  local has=() f
  for f in avx512f avx512_vnni avx512_bf16 amx_tile; do [[ " $flags " == *" $f "* ]] && has+=("$f"); done
  if [[ " ${has[*]} " == *" avx512f "* ]]; then
    echo "AVX-512$( [ ${#has[@]} -gt 1 ] && printf ' (%s)' "$(printf '%s ' "${has[@]:1}" | sed 's/ $//; s/avx512_//g; s/ /, /g; s/vnni/VNNI/; s/bf16/BF16/; s/amx_tile/AMX/')")"
  elif [[ " $flags " == *" avx2 "* ]]; then echo "AVX2$([[ " $flags " == *" fma "* ]] && echo '+FMA')"
  else echo "no AVX2"; fi
}
peer_rows() {
  local threads=${1:-$(nproc)}
  local ortdir="$work/ort-node" onnx="$work/onnx"
  command -v node > /dev/null && command -v npm > /dev/null || { echo "bench.sh: --peer needs node and npm (scripts/setup.sh installs them)" >&2; return 1; }
  if [ ! -d "$ortdir/node_modules/onnxruntime-node" ]; then
    log "installing onnxruntime-node into $ortdir (its bundled CPU library: ONNXRUNTIME_NODE_INSTALL=skip)"
    mkdir -p "$ortdir"; [ -f "$ortdir/package.json" ] || echo '{"private": true}' > "$ortdir/package.json"
    (cd "$ortdir" && ONNXRUNTIME_NODE_INSTALL=skip npm install --no-audit --no-fund --loglevel=error onnxruntime-node >&2)
  fi
  if [ ! -f "$onnx/text-int8.onnx" ] || [ "$fp32/bundle.json" -nt "$onnx/image.onnx" ]; then
    log "exporting the ViT-B-16 towers to ONNX (torch.onnx.export of the TorchScript files) and ORT's dynamic int8"
    "$py" "$helper" onnx-export "$fp32" "$onnx" 2> "$onnx.log" >&2 || { cat "$onnx.log" >&2; return 1; }
    "$py" "$helper" onnx-int8 "$onnx/image.onnx" "$onnx/image-int8.onnx" >&2
    "$py" "$helper" onnx-int8 "$onnx/text.onnx" "$onnx/text-int8.onnx" >&2
  fi
  local ort=(node "$repo/scripts/bench_ort.mjs" --ort "$ortdir")
  local agree_img agree_txt int8_img int8_txt
  agree_img=$("${ort[@]}" check "$onnx/image.onnx" "$onnx/check-image" --threads "$threads" | json_field max_abs_diff)
  agree_txt=$("${ort[@]}" check "$onnx/text.onnx" "$onnx/check-text" --threads "$threads" | json_field max_abs_diff)
  int8_img=$("${ort[@]}" check "$onnx/image-int8.onnx" "$onnx/check-image" --threads "$threads" | json_field min_cosine)
  int8_txt=$("${ort[@]}" check "$onnx/text-int8.onnx" "$onnx/check-text" --threads "$threads" | json_field min_cosine)
  log "ONNX fp32 outputs vs TorchScript: max abs difference image $agree_img, text $agree_txt"
  "$py" -c "import sys; sys.exit(0 if max($agree_img, $agree_txt) <= 1e-6 else 1)" ||
    { echo "bench.sh: the ONNX export disagrees with the TorchScript towers ($agree_img, $agree_txt)" >&2; return 1; }
  # cnclip's own int8 against its fp32: 8 of the photos and 10 queries, min cosine (issue 20: >= 0.999).
  local queries=(小狗 "夕阳、大海、沙滩" 一只在草地上奔跑的金毛犬 城市夜景 红色的汽车停在路边 雪山 猫 一群人在海边 生日蛋糕 老人在公园里下棋)
  local shots=("$photos"/*) cos_img cos_txt
  for p in fp32 int8; do
    local b="$fp32"; [ "$p" = int8 ] && b="$int8"
    "$bin" embed-image --model "$b" "${shots[@]:0:8}" > "$work/cos-image-$p.jsonl"
    "$bin" embed-text --model "$b" "${queries[@]}" > "$work/cos-text-$p.jsonl"
  done
  cos_img=$("$py" "$helper" min-cosine "$work/cos-image-fp32.jsonl" "$work/cos-image-int8.jsonl")
  cos_txt=$("$py" "$helper" min-cosine "$work/cos-text-fp32.jsonl" "$work/cos-text-int8.jsonl")
  local -A c o
  local r k
  for r in $(seq "$rounds"); do
    for p in fp32 int8; do
      local b="$fp32" m="$onnx/image.onnx" t="$onnx/text.onnx"
      [ "$p" = int8 ] && { b="$int8"; m="$onnx/image-int8.onnx"; t="$onnx/text-int8.onnx"; }
      c[img-$p]+=" $("$bench" image "$b" --batch 4 --threads "$threads" --iters 3 | json_field ms_per_image)"
      o[img-$p]+=" $("${ort[@]}" image "$m" --batch 4 --threads "$threads" --iters 3 | json_field ms_per_image)"
      c[txt-$p]+=" $("$bench" text "$b" --threads "$threads" --iters 20 | json_field ms_per_query)"
      o[txt-$p]+=" $("${ort[@]}" text "$t" --length 15 --threads "$threads" --iters 20 | json_field ms_per_query)"
    done
    log "peer round $r: $(for k in img-fp32 txt-fp32 img-int8 txt-int8; do printf '%s cnclip %.1f ORT %.1f  ' "$k" "${c[$k]##* }" "${o[$k]##* }"; done)"
  done
  local -A cm om
  # shellcheck disable=SC2086
  for k in img-fp32 txt-fp32 img-int8 txt-int8; do cm[$k]=$(median ${c[$k]}); om[$k]=$(median ${o[$k]}); done
  # The CPU's float32 limit: FLOP per cycle of one core (FMA chains in registers, rounded to the power
  # of two it is: load only lowers it) x clock x cores; or the measured figure if higher (turbo).
  local one all mhz limit
  one=$(for r in 1 2 3; do "$bench" peak --workers 1 --iters 2 | json_field peak_gflops; done | sort -g | tail -1)
  all=$("$bench" peak --iters 2 | json_field peak_gflops)
  mhz=$(sed -n 's/^cpu MHz\s*: //p' /proc/cpuinfo | head -1)
  # On a machine too busy to show it, the ISA's least per core: 32 FLOP/cycle with AVX-512 (one
  # 512-bit FMA unit, or two 256-bit as on Zen 4), 16 with FMA (Zen 1's two 128-bit units), else 8.
  local isa_min=8
  if grep -qw avx512f /proc/cpuinfo; then isa_min=32; elif grep -qw fma /proc/cpuinfo; then isa_min=16; fi
  limit=$("$py" -c "import math; fpc = max(2 ** round(math.log2($one * 1000 / $mhz)), $isa_min); print(max(fpc * $mhz / 1000 * $(nproc), $all), fpc)")
  local vit_gflop=35.1 blas lim  # ViT-B-16 at 224: multiply-adds x 2; lim: the limit of `threads` cores
  lim=$("$py" -c "print(${limit% *} * min($threads, $(nproc)) / $(nproc))")
  blas=$("$bench" sgemm --iters 1 --n 256 | json_field backend)
  echo "| peer: CPU $(cpu_isa), $(nproc) cores at $(f "$mhz/1000" .2f) GHz; $blas | float32 limit $(f "${limit% *}" .0f) GFLOP/s ($(f "${limit#* }" .0f) FLOP/cycle/core measured by FMA chains; all cores measured at once now: $(f "$all" .0f)) | | ONNX export agrees with TorchScript to $(f "$agree_img" .1e) (image) / $(f "$agree_txt" .1e) (text); ORT int8 cosine to fp32 ≥ $(f "$int8_img" .5f) / $(f "$int8_txt" .5f), cnclip's ≥ $(f "$cos_img" .5f) / $(f "$cos_txt" .5f) |"
  echo "| peer: image tower fp32, ms/image (one call of 4, threads: $threads) | $(f "${cm[img-fp32]}" .0f) ($(f "100*$vit_gflop*1000/${cm[img-fp32]}/$lim" .0f)% of the limit of $threads cores) | ONNX Runtime $(f "${om[img-fp32]}" .0f) ($(f "100*$vit_gflop*1000/${om[img-fp32]}/$lim" .0f)%) | **$(f "${cm[img-fp32]}/${om[img-fp32]}" .2f)×** ORT's time |"
  echo "| peer: text query fp32, 15 tokens, ms (threads: $threads) | $(f "${cm[txt-fp32]}" .1f) | ONNX Runtime $(f "${om[txt-fp32]}" .1f) | **$(f "${cm[txt-fp32]}/${om[txt-fp32]}" .2f)×** |"
  echo "| peer: image tower int8, ms/image | $(f "${cm[img-int8]}" .0f) | ORT dynamic int8 $(f "${om[img-int8]}" .0f) | **$(f "${cm[img-int8]}/${om[img-int8]}" .2f)×** |"
  echo "| peer: text query int8, ms | $(f "${cm[txt-int8]}" .1f) | ORT dynamic int8 $(f "${om[txt-int8]}" .1f) | **$(f "${cm[txt-int8]}/${om[txt-int8]}" .2f)×** |"
}
# ---- RN50 rows: the model sizes side by side ---------------------------------------------------------
rn50_fp32="$work/rn50-fp32"; rn50_int8="$work/rn50-int8"
if [ "$video_only" = 0 ] && [ "$peer_only" = 0 ] && [ "$large_only" = 0 ] && { stale "$rn50_fp32" || stale "$rn50_int8"; }; then
  log "exporting a random RN50 checkpoint (official layout), fp32 and int8"
  [ -f "$work/rn50-random.pt" ] ||
    "$py" "$repo/scripts/make_random_checkpoint.py" --arch RN50 --seed 0 --out "$work/rn50-random.pt"
  "$py" "$repo/scripts/export_model.py" --checkpoint "$work/rn50-random.pt" --out "$rn50_fp32"
  "$py" "$repo/scripts/export_model.py" --checkpoint "$work/rn50-random.pt" --out "$rn50_int8" --precision int8
fi
model_rows() {  # prints the RN50 rows (Markdown), ViT-B-16 fp32 measured alongside
  local names=(vitb16-fp32 vitb16-int8 rn50-fp32 rn50-int8) n r
  local -A rates idx_s ms_img ms_txt cold
  local w=$(( $(nproc) < 4 ? $(nproc) : 4 ))
  for r in $(seq "$rounds"); do
    for n in "${names[@]}"; do
      rm -rf "$work/idx-models-$n"
      timed "$work/m-$n.json" "$bin" index -q --format json "$photos" --model "$work/$n" --index "$work/idx-models-$n"
      rates[$n]+=" $("$py" -c "import json;d=json.loads(open('$work/m-$n.json').readline());print(d['added']/d['seconds'])")"
    done
    log "models round $r: $(for n in "${names[@]}"; do printf '%s %s  ' "$n" "${rates[$n]##* }"; done)"
  done
  for n in "${names[@]}"; do
    # shellcheck disable=SC2086
    idx_s[$n]=$(median ${rates[$n]})
    ms_img[$n]=$("$bench" image "$work/$n" --batch 4 --workers "$w" --iters 3 | json_field ms_per_image)
    ms_txt[$n]=$("$bench" text "$work/$n" --iters 20 | json_field ms_per_query)
    cold[$n]=$("$py" "$helper" time-runs 7 -- "$bin" search-text "一只橘猫趴在窗台上晒太阳" --model "$work/$n" \
                 --index "$work/idx-models-$n" --format jsonl | json_field p50_s)
  done
  local cos_rn50
  cos_rn50=$("$py" "$helper" compare-catalogs "$work/idx-models-rn50-fp32/catalog.sqlite3" \
               "$work/idx-models-rn50-int8/catalog.sqlite3" | json_field min_cosine)
  echo "| RN50 rows: index 68 photos, images/s (median of $rounds interleaved rounds) | RN50 fp32 $(f "${idx_s[rn50-fp32]}" .2f), int8 $(f "${idx_s[rn50-int8]}" .2f) | ViT-B-16 fp32 $(f "${idx_s[vitb16-fp32]}" .2f), int8 $(f "${idx_s[vitb16-int8]}" .2f) | RN50 fp32 **$(f "${idx_s[rn50-fp32]}/${idx_s[vitb16-fp32]}" .2f)×** ViT-B-16 fp32; RN50 int8 min cosine to fp32 $(f "$cos_rn50" .5f) |"
  echo "| RN50 rows: image tower, ms/image ($w calls of 4) | RN50 fp32 $(f "${ms_img[rn50-fp32]}" .0f), int8 $(f "${ms_img[rn50-int8]}" .0f) | ViT-B-16 fp32 $(f "${ms_img[vitb16-fp32]}" .0f), int8 $(f "${ms_img[vitb16-int8]}" .0f) | |"
  echo "| RN50 rows: text query encoding, ms | RN50 fp32 $(f "${ms_txt[rn50-fp32]}" .1f), int8 $(f "${ms_txt[rn50-int8]}" .1f) | ViT-B-16 fp32 $(f "${ms_txt[vitb16-fp32]}" .1f), int8 $(f "${ms_txt[vitb16-int8]}" .1f) | RBT3 text tower: 3 layers, not 12 |"
  echo "| RN50 rows: search-text cold, the 68 photos' index, p50 s | RN50 fp32 $(f "${cold[rn50-fp32]}" .2f), int8 $(f "${cold[rn50-int8]}" .2f) | ViT-B-16 fp32 $(f "${cold[vitb16-fp32]}" .2f), int8 $(f "${cold[vitb16-int8]}" .2f) | |"
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
f() { "$py" -c "print(format($1, '$2'))"; }
timed() {  # timed OUTFILE CMD... : runs CMD, stdout to OUTFILE, peak RSS appended as peak_kb=
  local out=$1; shift
  /usr/bin/time -f "peak_kb=%M" -o "$out.time" "$@" > "$out"
  cat "$out.time" >> "$out"
}
# ---- video (issue 14): hours of video per CPU hour -----------------------------------------------------
video_rows() {
  local clip="$work/video/clip.mp4" n m
  if [ ! -f "$clip" ]; then
    log "making a 60 s 720p video with scene cuts"
    mkdir -p "$work/video"
    # testsrc2 (moving) cut with plain colour shots every 10 s: 6 scenes.
    ffmpeg -nostdin -hide_banner -loglevel error -y \
      -f lavfi -i testsrc2=s=1280x720:r=30:d=10 -f lavfi -i color=c=orange:s=1280x720:r=30:d=10 \
      -f lavfi -i mandelbrot=s=1280x720:r=30 -f lavfi -i color=c=navy:s=1280x720:r=30:d=10 \
      -f lavfi -i testsrc=s=1280x720:r=30:d=10 -f lavfi -i smptebars=s=1280x720:r=30:d=10 \
      -filter_complex "[2]trim=duration=10,setpts=PTS-STARTPTS[m];[0][1][m][3][4][5]concat=n=6:v=1:a=0" \
      -c:v libx264 -preset veryfast -pix_fmt yuv420p "$clip"
  fi
  local tiny="$work/tiny"
  [ -f "$tiny/bundle.json" ] || "$py" "$repo/scripts/export_model.py" --random-init tiny --out "$tiny" >&2
  for m in "$fp32" "$tiny"; do
    local name; name=$(basename "$m")
    local -a rates=() frames=()
    for n in $(seq "$rounds"); do
      rm -rf "$work/idx-video-$name"
      /usr/bin/time -f "cpu_s=%U %S" -o "$work/video-$name.time" \
        "$bin" index -q --format json "$work/video" --model "$m" --index "$work/idx-video-$name" > "$work/video-$name.json"
      local cpu; cpu=$(sed -n 's/^cpu_s=//p' "$work/video-$name.time" | awk '{print $1 + $2}')
      frames+=("$(json_field video_frames < "$work/video-$name.json")")
      rates+=("$("$py" -c "print(60.0 / $cpu)")")
      log "video $name round $n: ${frames[-1]} frames, $cpu CPU s"
    done
    # shellcheck disable=SC2086
    echo "| video: 60 s of 720p H.264 (6 scenes), --frame-interval 2, $(basename "$m"): video hours per CPU hour (median of $rounds) | **$(f "$(median ${rates[*]})" .1f)** | ${frames[0]} frames stored | $(nproc) cores, user + system time |"
  done
}
if [ "$video_only" = 1 ]; then
  video_rows | tee "$work/video.md"
  exit 0
fi
if [ "$peer_only" = 1 ]; then
  {
    echo "Measured $(date -u +%Y-%m-%d) by \`scripts/bench.sh --peer --rounds $rounds\` on $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)); full-size random ViT-B-16 weights."
    echo
    echo "| what | cnclip | ONNX Runtime | ratio / note |"
    echo "| --- | --- | --- | --- |"
    peer_rows "$peer_threads"
  } | tee "$work/results-peer.md"
  exit 0
fi
# ---- larger ViTs: the rest of the model table ----------------------------------------------------------
# Each index is of the same 16 photos (a larger model at ~1 image/s or less makes the 68 too slow);
# ViT-B-16 fp32 is measured in the same rounds, so each model's rate also reads as a ratio to it.
large_rows() {
  local names=(vitb16-fp32) arch p n r
  for arch in ViT-L-14 ViT-L-14-336 ViT-H-14; do
    local lower; lower=$(tr 'A-Z' 'a-z' <<<"$arch" | tr -d '-')
    for p in fp32 int8; do
      if stale "$work/$lower-$p"; then
        [ -f "$work/$lower-random.pt" ] || { log "writing a random $arch checkpoint (official layout)";
          "$py" "$repo/scripts/make_random_checkpoint.py" --arch "$arch" --seed 0 --out "$work/$lower-random.pt"; }
        log "exporting $arch $p"
        "$py" "$repo/scripts/export_model.py" --checkpoint "$work/$lower-random.pt" --out "$work/$lower-$p" \
          $([ "$p" = int8 ] && echo --precision int8)
      fi
      names+=("$lower-$p")
    done
  done
  local few="$work/photos-16"
  if [ ! -d "$few" ]; then
    mkdir -p "$few"
    find "$photos" -maxdepth 1 -type f -name '*.jpg' | sort | head -16 | xargs -I{} cp {} "$few/"
  fi
  # Wall-clock rates, and CPU seconds per image (user + system of the whole process): on a machine
  # shared with other work the second is the fairer comparison between models.
  local -A rates cpu cold
  for r in $(seq "$rounds"); do
    for n in "${names[@]}"; do
      rm -rf "$work/idx-large-$n"
      /usr/bin/time -f "cpu_s=%U %S" -o "$work/l-$n.cpu" \
        "$bin" index -q --format json "$few" --model "$work/$n" --index "$work/idx-large-$n" > "$work/l-$n.json"
      rates[$n]+=" $("$py" -c "import json;d=json.loads(open('$work/l-$n.json').readline());print(d['added']/d['seconds'])")"
      cpu[$n]+=" $(sed -n 's/^cpu_s=//p' "$work/l-$n.cpu" | awk '{print ($1 + $2) / 16}')"
    done
    log "large round $r (images/s, CPU s/image): $(for n in "${names[@]}"; do printf '%s %.3f %.2f  ' "$n" "${rates[$n]##* }" "${cpu[$n]##* }"; done)"
  done
  local base base_cpu
  # shellcheck disable=SC2086
  base=$(median ${rates[vitb16-fp32]}); base_cpu=$(median ${cpu[vitb16-fp32]})
  for n in "${names[@]}"; do
    cold[$n]=$("$py" "$helper" time-runs 5 -- "$bin" search-text "一只橘猫趴在窗台上晒太阳" --model "$work/$n" \
                 --index "$work/idx-large-$n" --format jsonl | json_field p50_s)
  done
  for n in "${names[@]}"; do
    local rate c
    # shellcheck disable=SC2086
    rate=$(median ${rates[$n]}); c=$(median ${cpu[$n]})
    echo "| $n: index 16 photos (12 MP JPEG), CPU s per image / images per s, medians of $rounds interleaved rounds | $(f "$c" .2f) / $(f "$rate" .2f) | CPU time $(f "$c/$base_cpu" .2f)× ViT-B-16 fp32's (wall $(f "$base/$rate" .2f)×) | cold search-text p50 $(f "${cold[$n]}" .2f) s |"
  done
}
if [ "$large_only" = 1 ]; then
  {
    echo "Measured $(date -u +%Y-%m-%d) by \`scripts/bench.sh --large --rounds $rounds\` on $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)); full-size random weights."
    echo
    echo "| what | cnclip | ratio | note |"
    echo "| --- | --- | --- | --- |"
    large_rows
  } | tee "$work/results-large.md"
  exit 0
fi
if [ "$models_only" = 1 ]; then
  {
    echo "Measured $(date -u +%Y-%m-%d) by \`scripts/bench.sh --models --rounds $rounds\` on $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)); full-size random weights."
    echo
    echo "| what | RN50 | ViT-B-16 | note |"
    echo "| --- | --- | --- | --- |"
    model_rows
  } | tee "$work/results-models.md"
  exit 0
fi

sizes=(100000)
[ "$skip_1m" = 1 ] || sizes+=(1000000)
fingerprint_of_index() {
  "$py" -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"SELECT value FROM meta WHERE key='model_fingerprint'\").fetchone()[0])" "$1" 2>/dev/null || true
}
fp32_fingerprint=$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['fingerprint'])" "$fp32/bundle.json")
for n in "${sizes[@]}"; do
  if [ "$(fingerprint_of_index "$work/idx$n/catalog.sqlite3")" != "$fp32_fingerprint" ]; then
    rm -rf "$work/idx$n"  # missing, or built with an earlier export
    log "building a $n-vector index"
    "$py" "$helper" vectors "$work/v$n.npy" "$work/p$n.txt" --count "$n"
    "$bin" import --npy "$work/v$n.npy" --paths "$work/p$n.txt" --model "$fp32" --index "$work/idx$n"
    rm -f "$work/v$n.npy" "$work/p$n.txt"
  fi
done
tiny="$work/tiny"
[ -f "$tiny/bundle.json" ] || "$py" "$repo/scripts/export_model.py" --random-init tiny --out "$tiny"
if [ ! -f "$work/idx10k/catalog.sqlite3" ]; then
  log "making and indexing 10,000 small images"
  "$py" - "$work/small" <<'PY'
import os, sys
import numpy as np
from PIL import Image
root = sys.argv[1]
rng = np.random.default_rng(2)
for i in range(10000):
    d = os.path.join(root, f"{i // 500:02d}")
    os.makedirs(d, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(os.path.join(d, f"{i:05d}.png"))
PY
  "$bin" index -q "$work/small" --model "$tiny" --index "$work/idx10k"
fi

# ---- measurements ----------------------------------------------------------------------------------
backend=$("$bench" sgemm --iters 1 --n 256)
log "model-only speed"
# As `cnclip index` runs the model: one single-threaded call of 4 images per core (at most 4 calls);
# and one call of 4, and of 1 (a search-image query), over all cores.
workers=$(( $(nproc) < 4 ? $(nproc) : 4 ))
img_fp32=$("$bench" image "$fp32" --batch 4 --workers "$workers" --iters 3 | json_field ms_per_image)
img_fp32_one=$("$bench" image "$fp32" --batch 4 --iters 3 | json_field ms_per_image)
img_fp32_b1=$("$bench" image "$fp32" --batch 1 --iters 3 | json_field ms_per_image)
img_int8=$("$bench" image "$int8" --batch 4 --workers "$workers" --iters 3 | json_field ms_per_image)
txt_fp32=$("$bench" text "$fp32" --iters 20 | json_field ms_per_query)
txt_int8=$("$bench" text "$int8" --iters 20 | json_field ms_per_query)
tokenize_s=$("$bench" tokenize "$fp32" --iters 3 | json_field seconds)

log "indexing: $rounds interleaved rounds of Python reference, cnclip fp32, cnclip int8"
py_rates=(); fp32_rates=(); int8_rates=()
for r in $(seq "$rounds"); do
  timed "$work/ref.json" "$py" "$helper" reference-index "$photos" "$fp32" "$work/ref.npy"
  py_rates+=("$(json_field images_per_s < "$work/ref.json")"); py_rss=$(peak_rss_mb "$work/ref.json")
  rm -rf "$work/idx-photos-fp32"
  timed "$work/fp32.json" "$bin" index -q --format json "$photos" --model "$fp32" --index "$work/idx-photos-fp32"
  fp32_rates+=("$("$py" -c "import json;d=json.loads(open('$work/fp32.json').readline());print((d['added'])/d['seconds'])")")
  fp32_rss=$(peak_rss_mb "$work/fp32.json")
  rm -rf "$work/idx-photos-int8"
  timed "$work/int8.json" "$bin" index -q --format json "$photos" --model "$int8" --index "$work/idx-photos-int8"
  int8_rates+=("$("$py" -c "import json;d=json.loads(open('$work/int8.json').readline());print((d['added'])/d['seconds'])")")
  int8_rss=$(peak_rss_mb "$work/int8.json")
  log "round $r: python ${py_rates[-1]} img/s, fp32 ${fp32_rates[-1]}, int8 ${int8_rates[-1]}"
done
py_rate=$(median "${py_rates[@]}"); fp32_rate=$(median "${fp32_rates[@]}"); int8_rate=$(median "${int8_rates[@]}")
cos_ref=$("$py" "$helper" compare-index "$work/idx-photos-fp32/catalog.sqlite3" "$work/ref.npy" "$photos" | json_field min_cosine)
cos_int8=$("$py" "$helper" compare-catalogs "$work/idx-photos-fp32/catalog.sqlite3" "$work/idx-photos-int8/catalog.sqlite3" | json_field min_cosine)

log "eval: the same photos as a labelled set"
"$py" "$helper" eval-set "$photos" "$work/evalset"
eval_rates=()
for r in $(seq "$rounds"); do
  "$bin" eval --images "$work/evalset/imgs" --texts "$work/evalset/texts.jsonl" --model "$fp32" --format json \
    > "$work/eval.json" 2> "$work/eval.err"
  eval_rates+=("$(sed -n 's/^cnclip: eval: .*(\([0-9.]*\) img\/s)$/\1/p' "$work/eval.err")")
  log "round $r: eval fp32 ${eval_rates[-1]} img/s"
done
eval_rate=$(median "${eval_rates[@]}")

log "cold queries"
declare -A st_p50 st_p90 st_rss si_p50 si_p90 si_rss
for n in "${sizes[@]}"; do
  out=$("$py" "$helper" time-runs 10 -- "$bin" search-text "一只橘猫趴在窗台上晒太阳" --model "$fp32" --index "$work/idx$n" --format jsonl)
  st_p50[$n]=$(echo "$out" | json_field p50_s); st_p90[$n]=$(echo "$out" | json_field p90_s); st_rss[$n]=$(echo "$out" | json_field peak_rss_mb)
  out=$("$py" "$helper" time-runs 10 -- "$bin" search-image "$photos/photo_000.jpg" --model "$fp32" --index "$work/idx$n" --format jsonl)
  si_p50[$n]=$(echo "$out" | json_field p50_s); si_p90[$n]=$(echo "$out" | json_field p90_s); si_rss[$n]=$(echo "$out" | json_field peak_rss_mb)
done
reindex=$("$py" "$helper" time-runs 3 -- "$bin" index -q "$work/small" --model "$tiny" --index "$work/idx10k")

# cnclip serve: warm API queries, thumbnails, search-text routed through a running server.
idx_args=(); for n in "${sizes[@]}"; do idx_args+=("$work/idx$n"); done
serve_rows=$("$repo/scripts/bench_serve.sh" "$work/serve" "$fp32" "$work/idx-photos-fp32" "${idx_args[@]}")

# ---- report ----------------------------------------------------------------------------------------
cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
{
  echo "Measured $(date -u +%Y-%m-%d) by \`scripts/bench.sh --rounds $rounds\` on $(nproc) cores ($cpu), $(echo "$backend" | json_field backend)."
  echo
  echo "| what | cnclip | reference | ratio / note |"
  echo "| --- | --- | --- | --- |"
  echo "| index 68 photos (64 × 12 MP JPEG + 4 PNG), fp32, images/s | $(f "$fp32_rate" .2f) | Python $(f "$py_rate" .2f) | **$(f "$fp32_rate/$py_rate" .2f)×**, min cosine to Python $(f "$cos_ref" .6f) |"
  echo "| index, int8, images/s | $(f "$int8_rate" .2f) | Python $(f "$py_rate" .2f) | **$(f "$int8_rate/$py_rate" .2f)×**, min cosine to fp32 $(f "$cos_int8" .5f) |"
  echo "| eval 68 photos + 68 texts, fp32, images/s (image phase) | $(f "$eval_rate" .2f) | index fp32 $(f "$fp32_rate" .2f) | same pipeline: $(f "$eval_rate/$fp32_rate" .2f)× |"
  echo "| peak RSS while indexing | fp32 $fp32_rss MB, int8 $int8_rss MB | Python $py_rss MB | |"
  echo "| image tower, ms/image: as \`index\` runs it ($workers calls of 4 images, cores shared out) / one call of 4 / one call of 1 | fp32 $(f "$img_fp32" .0f) / $(f "$img_fp32_one" .0f) / $(f "$img_fp32_b1" .0f), int8 $(f "$img_int8" .0f) | ONNX Runtime: the peer rows below | |"
  echo "| text query encoding, ms | fp32 $(f "$txt_fp32" .1f), int8 $(f "$txt_int8" .1f) | ONNX Runtime: the peer rows below | padding trimmed |"
  echo "| tokenize 10,000 mixed Chinese/English captions, s | $(f "$tokenize_s" .3f) | | one thread |"
  for n in "${sizes[@]}"; do
    echo "| search-text cold, $n vectors, p50 / p90 s | $(f "${st_p50[$n]}" .2f) / $(f "${st_p90[$n]}" .2f) | | peak RSS ${st_rss[$n]%.*} MB |"
    echo "| search-image cold (image not indexed), $n vectors, p50 / p90 s | $(f "${si_p50[$n]}" .2f) / $(f "${si_p90[$n]}" .2f) | | peak RSS ${si_rss[$n]%.*} MB |"
  done
  echo "$serve_rows"
  echo "| re-index 10,000 unchanged files, p50 s | $(f "$(echo "$reindex" | json_field p50_s)" .2f) | | |"
  startup_rows
  model_rows
  peer_rows "$peer_threads"
} | tee "$work/results.md"
