#!/usr/bin/env bash
# One-command setup for cnclip: installs Debian packages, builds a Release binary and prepares
# model bundles. Idempotent and non-interactive. Usage:
#   scripts/setup.sh [--checkpoint PATH] [--no-build] [--build-dir DIR]
# A real checkpoint can also be named with CNCLIP_CHECKPOINT.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir="$repo/build"
checkpoint="${CNCLIP_CHECKPOINT:-}"
do_build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --checkpoint) checkpoint="$2"; shift 2 ;;
    --checkpoint=*) checkpoint="${1#*=}"; shift ;;
    --build-dir) build_dir="$2"; shift 2 ;;
    --no-build) do_build=0; shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev            # LibTorch: runs the TorchScript encoders
  libopenblas0-openmp     # fast BLAS for LibTorch and FAISS (reference BLAS is ~30x slower)
  libfaiss-dev            # vector index and kNN search
  libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev  # image decoding
  libcli11-dev nlohmann-json3-dev libutf8proc-dev libsqlite3-dev libxxhash-dev
  libssl-dev              # sha256 of model bundle files (model-info --verify)
  libjpeg62-turbo-dev     # CMYK JPEGs decoded without conversion (Pillow parity)
  libgtest-dev googletest
  libcpp-httplib-dev            # cnclip serve: the HTTP server
  chromium chromium-driver python3-selenium fonts-wqy-microhei  # the browser test of cnclip serve's page
  python3-torch python3-numpy   # scripts/export_model.py (export only, never at run time)
  python3-pil                   # reference pipeline in tests and scripts/bench.sh
  clang libclang-rt-14-dev      # scripts/fuzz.sh: libFuzzer with ASan+UBSan
  clang-format clang-tidy       # .clang-format, .clang-tidy
)

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

missing=()
for p in "${packages[@]}"; do
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
openlapack=$(update-alternatives --list liblapack.so.3-x86_64-linux-gnu 2>/dev/null | grep openblas-openmp || true)
if [ -n "$openlapack" ]; then
  "${sudo_cmd[@]}" update-alternatives --set liblapack.so.3-x86_64-linux-gnu "$openlapack" >&2
fi

[ "$do_build" = 1 ] || exit 0

echo "setup: building (Release) in $build_dir" >&2
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  cmake -S "$repo" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release >&2
fi
cmake --build "$build_dir" -j"$(nproc)" >&2

# Model bundles. The tiny random one is for tests and a demo; it finds nothing meaningful.
py=/usr/bin/python3
export_needed() {  # bundle dir -> true when missing or older than the exporter
  [ ! -f "$1/bundle.json" ] || [ "$repo/scripts/export_model.py" -nt "$1/bundle.json" ]
}
if export_needed "$repo/models/tiny"; then
  "$py" "$repo/scripts/export_model.py" --random-init tiny --seed 0 --out "$repo/models/tiny" >&2
fi
real_bundle=""
if [ -n "$checkpoint" ]; then
  # Any released model (RN50, ViT-B-16, ViT-L-14, ViT-L-14-336, ViT-H-14): models/ARCH.
  arch=$("$py" "$repo/scripts/export_model.py" --checkpoint "$checkpoint" --print-architecture)
  real_bundle="$repo/models/$arch"
  if export_needed "$real_bundle" || [ "$checkpoint" -nt "$real_bundle/bundle.json" ]; then
    "$py" "$repo/scripts/export_model.py" --checkpoint "$checkpoint" --out "$real_bundle" >&2
  fi
  # The same data home as cnclip (XDG Base Directory rule): an absolute XDG_DATA_HOME, else an
  # absolute $HOME/.local/share; relative values are ignored, and without either there is no link.
  data_home=""
  case "${XDG_DATA_HOME:-}" in /*) data_home="$XDG_DATA_HOME" ;; esac
  if [ -z "$data_home" ]; then
    case "${HOME:-}" in /*) data_home="$HOME/.local/share" ;; esac
  fi
  if [ -z "$data_home" ]; then
    echo "setup: cannot find a place for the default model: HOME is not set (or not absolute);" \
         "set CNCLIP_MODEL=$real_bundle instead" >&2
  else
    default_link="$data_home/cnclip/models/default"
    if [ ! -e "$default_link" ]; then
      mkdir -p "$(dirname "$default_link")"
      ln -s "$real_bundle" "$default_link"
      echo "setup: $default_link -> $real_bundle (the default model)" >&2
    fi
  fi
fi

echo "cnclip binary: $build_dir/cnclip"
echo "tiny random bundle (tests, demo): $repo/models/tiny"
if [ -n "$real_bundle" ]; then
  echo "$arch bundle: $real_bundle"
else
  echo "no real model: scripts/setup.sh --checkpoint clip_cn_vit-b-16.pt (or clip_cn_rn50.pt, ...) exports one (see README)"
fi
