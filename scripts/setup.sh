#!/usr/bin/env bash
# One-command setup for cnclip: installs Debian packages, builds a Release binary and prepares
# model bundles; with --model NAME it also downloads the released Chinese-CLIP checkpoint (checked
# and cached), exports it and makes it the default model. Idempotent and non-interactive. Usage:
#   scripts/setup.sh [--model NAME] [--source huggingface|modelscope] [--precision fp32|int8]
#                    [--checkpoint FILE] [--no-build] [--no-packages] [--build-dir DIR]
#   NAME: ViT-B-16, ViT-L-14, ViT-L-14-336, ViT-H-14, RN50 (scripts/download_model.py has the table).
#   --checkpoint FILE exports a checkpoint you have instead of downloading one (CNCLIP_CHECKPOINT=FILE
#   does the same). --precision int8 exports an int8 bundle beside the fp32 one and makes it the
#   default. --arch ARCH exports the checkpoint as ARCH instead of NAME (tests use a reduced model).
#   --no-build skips the build and the tiny bundle; --no-packages skips apt and update-alternatives.
#   Mirrors: HF_ENDPOINT (e.g. https://hf-mirror.com), MODELSCOPE_DOMAIN. Cache: $XDG_CACHE_HOME/cnclip
#   (~/.cache/cnclip). Bundles and the default-model link: $XDG_DATA_HOME/cnclip/models (~/.local/share).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir="$repo/build"
checkpoint="${CNCLIP_CHECKPOINT:-}"
model="" source="huggingface" precision="fp32" arch=""
do_build=1 do_packages=1
usage() { echo "setup.sh: $1 (see scripts/setup.sh --help)" >&2; exit 2; }
need() { if [ $# -lt 2 ] || [ -z "$2" ]; then usage "$1 needs a value"; fi; }
while [ $# -gt 0 ]; do
  case "$1" in
    --checkpoint|--model|--source|--precision|--arch|--build-dir)
      need "$@"
      case "$1" in
        --checkpoint) checkpoint="$2" ;; --model) model="$2" ;; --source) source="$2" ;;
        --precision) precision="$2" ;; --arch) arch="$2" ;; --build-dir) build_dir="$2" ;;
      esac
      shift 2 ;;
    --checkpoint=*) checkpoint="${1#*=}"; shift ;;
    --model=*) model="${1#*=}"; shift ;;
    --source=*) source="${1#*=}"; shift ;;
    --precision=*) precision="${1#*=}"; shift ;;
    --arch=*) arch="${1#*=}"; shift ;;
    --build-dir=*) build_dir="${1#*=}"; shift ;;
    --no-build) do_build=0; shift ;;
    --no-packages) do_packages=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) usage "unknown argument '$1'" ;;
  esac
done

# Check the request before installing anything.
py=/usr/bin/python3
models=(ViT-B-16 ViT-L-14 ViT-L-14-336 ViT-H-14 RN50)
if [ -n "$model" ]; then
  [[ " ${models[*]} " == *" $model "* ]] || usage "unknown model '$model' (known: ${models[*]})"
fi
case "$source" in huggingface|modelscope) ;; *) usage "unknown source '$source' (huggingface or modelscope)" ;; esac
case "$precision" in fp32|int8) ;; *) usage "unknown precision '$precision' (fp32 or int8)" ;; esac
if [ -z "$model" ] && [ -z "$checkpoint" ]; then
  [ "$precision" = fp32 ] || usage "--precision needs --model NAME or --checkpoint FILE"
  [ -z "$arch" ] || usage "--arch needs --model NAME or --checkpoint FILE"
fi
if [ -n "$checkpoint" ] && [ ! -f "$checkpoint" ]; then
  echo "setup.sh: $checkpoint: no such file (--checkpoint)" >&2; exit 1
fi

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev            # LibTorch: runs the TorchScript encoders
  libopenblas0-openmp     # fast BLAS for LibTorch and FAISS (reference BLAS is ~30x slower)
  libblis-openmp-dev      # BLIS: the float32 Linears of few rows (a text query ~1.7x faster than OpenBLAS)
  libdnnl-dev             # oneDNN headers: the int8 Linears on the oneDNN LibTorch already runs (a text query ~3x faster)
  libfaiss-dev            # vector index and kNN search
  libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev  # image decoding
  libcli11-dev nlohmann-json3-dev libutf8proc-dev libsqlite3-dev libxxhash-dev
  libssl-dev              # sha256 of model bundle files (model-info --verify)
  libjpeg62-turbo-dev     # CMYK JPEGs decoded without conversion (Pillow parity)
  libheif-dev libraw-dev libgif-dev libwebp-dev libheif-examples libavif-bin libraw-bin  # HEIF/AVIF, RAW, GIF, animated WebP; their test tools
  libavformat-dev libavcodec-dev libavutil-dev libswscale-dev ffmpeg  # videos (FFmpeg, loaded on first use); ffmpeg makes the test videos
  libgtest-dev googletest
  libcpp-httplib-dev            # cnclip serve: the HTTP server
  chromium chromium-driver python3-selenium fonts-wqy-microhei  # the browser test of cnclip serve's page
  python3-torch python3-numpy   # scripts/export_model.py (export only, never at run time)
  python3-pil                   # reference pipeline in tests and scripts/bench.sh
  nodejs npm python3-onnx       # scripts/bench.sh's peer: ONNX Runtime (npm onnxruntime-node), its int8 graph
  curl ca-certificates          # --model: downloads the checkpoint (progress, resume, HTTPS)
  slurm-wlm                     # tests/slurm_test.sh: the Slurm recipe (scripts/slurm_embed.sh) on a one-node
                                # cluster the test starts; the daemons stay off without /etc/slurm/slurm.conf
  clang libclang-rt-14-dev      # scripts/fuzz.sh: libFuzzer with ASan+UBSan
  clang-format clang-tidy       # .clang-format, .clang-tidy
)

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

if [ "$do_packages" = 1 ]; then
  missing=()
  for p in "${packages[@]}"; do
    # Node.js from elsewhere (e.g. NodeSource's nodejs, which bundles npm and conflicts with Debian's
    # npm package) serves the bench as well: only a missing command is installed.
    case "$p" in
      nodejs) command -v node >/dev/null && continue ;;
      npm) command -v npm >/dev/null && continue ;;
    esac
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
  fi

  # LibTorch uses whatever libblas.so.3 points at: make it OpenBLAS (OpenMP flavour).
  openblas=$(update-alternatives --list libblas.so.3-x86_64-linux-gnu 2>/dev/null | grep openblas-openmp || true)
  if [ -n "$openblas" ]; then
    "${sudo_cmd[@]}" update-alternatives --set libblas.so.3-x86_64-linux-gnu "$openblas" >&2
  fi
  # BLIS runs as libblis.so.4 (the model module links it by that name): its OpenMP flavour, whose
  # threads are LibTorch's (libgomp).
  blis=$(update-alternatives --list libblis.so.4-x86_64-linux-gnu 2>/dev/null | grep blis-openmp || true)
  if [ -n "$blis" ]; then
    "${sudo_cmd[@]}" update-alternatives --set libblis.so.4-x86_64-linux-gnu "$blis" >&2
  fi
  openlapack=$(update-alternatives --list liblapack.so.3-x86_64-linux-gnu 2>/dev/null | grep openblas-openmp || true)
  if [ -n "$openlapack" ]; then
    "${sudo_cmd[@]}" update-alternatives --set liblapack.so.3-x86_64-linux-gnu "$openlapack" >&2
  fi
fi

# A bundle older than the exporter (or the tower definitions it exports) is exported again.
exporter_newer_than() { [ "$repo/scripts/export_model.py" -nt "$1" ] || [ "$repo/scripts/cnclip_towers.py" -nt "$1" ]; }

if [ "$do_build" = 1 ]; then
  echo "setup: building (Release) in $build_dir" >&2
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  if [ ! -f "$build_dir/CMakeCache.txt" ]; then
    cmake -S "$repo" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release >&2
  fi
  cmake --build "$build_dir" -j"$(nproc)" >&2

  # The tiny random bundle is for tests and a demo; it finds nothing meaningful.
  if [ ! -f "$repo/models/tiny/bundle.json" ] || exporter_newer_than "$repo/models/tiny/bundle.json"; then
    "$py" "$repo/scripts/export_model.py" --random-init tiny --seed 0 --out "$repo/models/tiny" >&2
  fi
fi

# The real model: a checkpoint (downloaded with --model, or given with --checkpoint) exported to
# DATA/cnclip/models/NAME[-int8], with origin.json beside bundle.json (what `cnclip model-info`
# shows as "origin"), and DATA/cnclip/models/default pointed at it.
default_bundle=""
if [ -n "$model" ] || [ -n "$checkpoint" ]; then
  # The same data home as cnclip (XDG Base Directory rule): an absolute XDG_DATA_HOME, else an
  # absolute $HOME/.local/share; relative values are ignored.
  data_home=""
  case "${XDG_DATA_HOME:-}" in /*) data_home="$XDG_DATA_HOME" ;; esac
  if [ -z "$data_home" ]; then
    case "${HOME:-}" in /*) data_home="$HOME/.local/share" ;; esac
  fi
  if [ -z "$data_home" ]; then
    echo "setup: cannot find a place for the model: HOME is not set (or not absolute); set HOME or XDG_DATA_HOME" >&2
    exit 2
  fi
  models_home="$data_home/cnclip/models"

  record=""
  if [ -n "$checkpoint" ]; then
    checkpoint=$(cd "$(dirname "$checkpoint")" && echo "$PWD/$(basename "$checkpoint")")
    if [ -z "$model" ]; then  # named after cn_clip's file name, else after the file
      case "$(basename "$checkpoint")" in
        clip_cn_vit-b-16.pt) model=ViT-B-16 ;; clip_cn_vit-l-14.pt) model=ViT-L-14 ;;
        clip_cn_vit-l-14-336.pt) model=ViT-L-14-336 ;; clip_cn_vit-h-14.pt) model=ViT-H-14 ;;
        clip_cn_rn50.pt) model=RN50 ;;
        *) model=$("$py" "$repo/scripts/export_model.py" --checkpoint "$checkpoint" --print-architecture 2>/dev/null || true) ;;
      esac
    fi
    name="${model:-$(basename "$checkpoint" .pt)}"
    checkpoint_sha=$(sha256sum "$checkpoint" | cut -d' ' -f1)
  else
    name="$model"
    checkpoint=$("$py" "$repo/scripts/download_model.py" --model "$model" --source "$source")
    record="$checkpoint.json"
    checkpoint_sha=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["sha256"])' "$record")
  fi
  # Export as the model named (the checkpoint must be that architecture), else as the shapes say.
  [ -n "$arch" ] || arch="$model"

  bundle_is() {  # DIR PRECISION: true when DIR holds this checkpoint's export, by this exporter
    [ -f "$1/bundle.json" ] && ! exporter_newer_than "$1/bundle.json" &&
      "$py" - "$1/bundle.json" "$2" "$checkpoint_sha" "$arch" <<'PY'
import json, sys
path, precision, sha, arch = sys.argv[1:5]
try:
    m = json.load(open(path, encoding="utf-8"))
except (OSError, ValueError):
    sys.exit(1)
ok = (m.get("precision") == precision and (m.get("source") or {}).get("sha256") == sha
      and (not arch or m.get("architecture") == arch))
sys.exit(0 if ok else 1)
PY
  }
  write_origin() {  # DIR: where the checkpoint came from, for cnclip model-info
    "$py" - "$1" "$checkpoint" "$checkpoint_sha" "$record" <<'PY'
import datetime, json, os, sys
bundle, ckpt, sha, record = sys.argv[1:5]
if record:
    with open(record, encoding="utf-8") as f:
        origin = json.load(f)
else:
    origin = {"source": "file", "file": os.path.basename(ckpt), "bytes": os.path.getsize(ckpt), "sha256": sha}
origin["checkpoint"] = ckpt
origin["installed"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
tmp = os.path.join(bundle, ".origin.json.tmp")
with open(tmp, "w", encoding="utf-8") as f:
    json.dump(origin, f, indent=1)
    f.write("\n")
os.replace(tmp, os.path.join(bundle, "origin.json"))
PY
  }
  install_bundle() {  # PRECISION DIR
    if bundle_is "$2" "$1"; then
      echo "setup: $2 is already the $1 export of $checkpoint" >&2
    else
      echo "setup: exporting $checkpoint ($1) to $2" >&2
      "$py" "$repo/scripts/export_model.py" --checkpoint "$checkpoint" ${arch:+--arch "$arch"} \
        --precision "$1" --out "$2" >&2
    fi
    write_origin "$2"
  }
  mkdir -p "$models_home"
  install_bundle fp32 "$models_home/$name"
  default_bundle="$models_home/$name"
  if [ "$precision" = int8 ]; then
    install_bundle int8 "$models_home/$name-int8"
    default_bundle="$models_home/$name-int8"
  fi

  # With the binary just built, the bundle must encode a query before it becomes the default.
  if [ "$do_build" = 1 ]; then
    if "$build_dir/cnclip" embed-text --model "$default_bundle" 小狗 >/dev/null; then
      echo "setup: checked: $build_dir/cnclip encodes a query with $default_bundle" >&2
    else
      echo "setup: $default_bundle does not work with $build_dir/cnclip (above); the default model is unchanged" >&2
      exit 1
    fi
  fi

  # Point the default-model link at it (atomically: a new link renamed over the old one). Something
  # other than a link there is the user's own: left alone.
  default_link="$models_home/default"
  if [ -L "$default_link" ] || [ ! -e "$default_link" ]; then
    ln -sfn "$default_bundle" "$default_link.new.$$"
    mv -Tf "$default_link.new.$$" "$default_link"
    echo "setup: $default_link -> $default_bundle (the default model)" >&2
  else
    echo "setup: $default_link is not a link (left alone): give --model $default_bundle or set CNCLIP_MODEL" >&2
  fi
fi

if [ "$do_build" = 1 ]; then
  echo "cnclip binary: $build_dir/cnclip (its model module, $build_dir/libcnclip_model.so, stays next to it)"
  echo "tiny random bundle (tests, demo): $repo/models/tiny"
fi
if [ -n "$default_bundle" ]; then
  echo "default model: $default_bundle"
elif [ "$do_build" = 1 ]; then
  echo "no real model: scripts/setup.sh --model ViT-B-16 downloads and installs one (see README)"
fi
