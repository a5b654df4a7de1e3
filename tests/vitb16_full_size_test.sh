#!/usr/bin/env bash
# Full-size ViT-B-16: a random checkpoint in the official layout -> export -> C++ loads and encodes.
# Usage: vitb16_full_size_test.sh CNCLIP_BINARY PYTHON WORKDIR REPO
set -euo pipefail
bin=$1 py=$2 work=$3 repo=$4
mkdir -p "$work"
[ -f "$work/ckpt.pt" ] || "$py" "$repo/scripts/make_random_checkpoint.py" --arch ViT-B-16 --seed 1 --out "$work/ckpt.pt"
"$py" "$repo/scripts/export_model.py" --checkpoint "$work/ckpt.pt" --out "$work/bundle"
grep -q '"architecture": "ViT-B-16"' "$work/bundle/bundle.json"
grep -q '"embedding_dim": 512' "$work/bundle/bundle.json"
fixtures="$repo/../shared/fixtures/images"
out=$("$bin" embed-image --model "$work/bundle" "$fixtures/pokemon.jpeg" "$fixtures/chelsea_rgba.png")
text=$("$bin" embed-text --model "$work/bundle" 小狗 "夕阳、大海、沙滩")
# Two 512-d unit vectors each.
"$py" - "$out" "$text" <<'PY'
import json, sys, math
for block in sys.argv[1:]:
    rows = [json.loads(l) for l in block.splitlines()]
    assert len(rows) == 2, rows
    for r in rows:
        e = r["embedding"]
        assert len(e) == 512, len(e)
        n = math.sqrt(sum(x * x for x in e))
        assert abs(n - 1) < 1e-4, n
print("two towers: 512-d unit vectors")
PY

# The text tower through each float32 Linear route (src/model.cpp): the default (oneDNN on weights
# packed at load where oneDNN runs AVX-512, else BLIS on CPUs with AVX2), oneDNN on the weights in place,
# BLIS and OpenBLAS when asked, against the TorchScript file run by Python's torch (OpenBLAS, padded to
# 52). At this size the routes sum in other orders (the floats differ), and agree to float rounding.
# Packed over the bundle's weights, the text tower keeps one copy: the peak memory of a one-shot
# embed-text stays that of the weights in place.
query="夕阳、大海、沙滩 和一只小狗在奔跑"
ids=$("$bin" tokenize --model "$work/bundle" "$query")
default=$("$bin" embed-text --model "$work/bundle" "$query")
inplace=$(CNCLIP_TEXT_LINEAR=inplace "$bin" embed-text --model "$work/bundle" "$query")
blis=$(CNCLIP_FP32_LINEAR=blis "$bin" embed-text --model "$work/bundle" "$query")
blas=$(CNCLIP_FP32_LINEAR=blas "$bin" embed-text --model "$work/bundle" "$query")
text_rss() { "$py" -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)' "$bin" embed-text --model "$work/bundle" "$query"; }
rss_text_default=$(text_rss)
rss_text_inplace=$(CNCLIP_TEXT_LINEAR=inplace text_rss)
"$py" - "$work/bundle/text_encoder.pt" "$ids" "$default" "$inplace" "$blis" "$blas" "$rss_text_default" "$rss_text_inplace" <<'PY'
import json, sys, torch
tower = torch.jit.load(sys.argv[1])
ids = torch.tensor([json.loads(sys.argv[2])["ids"]])
with torch.no_grad():
    ref = tower(ids)[0].double()
routes = {name: torch.tensor(json.loads(arg)["embedding"], dtype=torch.float64)
          for name, arg in zip(("default", "inplace", "blis", "blas"), sys.argv[3:7])}
assert not torch.equal(routes["blis"], routes["blas"]), "the BLIS route gave OpenBLAS's very floats: it did not run"
for name, e in routes.items():
    diff = (e - ref).abs().max().item()
    cos = (e @ ref / (e.norm() * ref.norm())).item()
    print(f"{name}: max abs difference to Python's torch {diff:.2e}, cosine {cos:.8f}")
    assert diff <= 1e-5 and cos >= 0.99999, (name, diff, cos)
rss_default, rss_inplace = int(sys.argv[7]), int(sys.argv[8])
print(f"embed-text peak RSS {rss_default // 1024} MB (default) against {rss_inplace // 1024} MB (weights in place)")
assert rss_default <= rss_inplace + 64 * 1024, (rss_default, rss_inplace)
print("1 passed, 0 failed")
PY

# The image tower's attention products (q·kᵀ, weights·v) through oneDNN by default (src/batched_matmul.cpp)
# and through LibTorch when asked, against the TorchScript file run by Python's torch on the same model
# input; oneDNN's log shows the route ran (the 12 heads' 197 x 197 products).
"$bin" preprocess --model "$work/bundle" "$fixtures/pokemon.jpeg" --npy "$work/pokemon.npy"
onednn=$(ONEDNN_VERBOSE=1 "$bin" embed-image --model "$work/bundle" "$fixtures/pokemon.jpeg")
grep -q '^onednn_verbose,exec,cpu,matmul,.*x12x197x64:.*x12x64x197' <<<"$onednn" ||
  { echo "the attention products did not run on oneDNN"; exit 1; }
libtorch=$(CNCLIP_BATCHED_MATMUL=libtorch "$bin" embed-image --model "$work/bundle" "$fixtures/pokemon.jpeg")
"$py" - "$work/bundle/image_encoder.pt" "$work/pokemon.npy" "$(grep -v '^onednn_verbose' <<<"$onednn")" "$libtorch" <<'PY'
import json, sys, numpy, torch
tower = torch.jit.load(sys.argv[1])
with torch.no_grad():
    ref = tower(torch.from_numpy(numpy.load(sys.argv[2])).unsqueeze(0))[0].double()
ref = ref / ref.norm()
for name, line in (("onednn", sys.argv[3]), ("libtorch", sys.argv[4])):
    e = torch.tensor(json.loads(line)["embedding"], dtype=torch.float64)
    diff = (e - ref).abs().max().item()
    cos = (e @ ref / (e.norm() * ref.norm())).item()
    print(f"image tower, attention on {name}: max abs difference to Python's torch {diff:.2e}, cosine {cos:.8f}")
    assert diff <= 1e-5 and cos >= 0.99999, (name, diff, cos)
PY

# The image tower's Linears on oneDNN's brgemm, on weights packed at load (src/linear_packed.h; where
# oneDNN runs AVX-512), else on BLAS: an image gets the same floats in any batch and on any thread count
# (an index run's batches against embed-image --shard's), near Python's torch; and packing over the
# bundle's weights does not raise the peak memory of a one-shot command.
shots=("$fixtures"/pokemon.jpeg "$fixtures"/chelsea_rgba.png "$fixtures"/astronaut_palette.png
       "$fixtures"/coffee_2048x1366_exif6.jpg "$fixtures"/camera_gray_1000x100.png)
for f in "${shots[@]}"; do [ -f "$f" ] || { echo "missing fixture $f"; exit 1; }; done
packed_log=$(ONEDNN_VERBOSE=1 "$bin" embed-image --model "$work/bundle" "$fixtures/pokemon.jpeg")
if grep -q 'matmul,brg:.*wei_f32::blocked:[A-Z][^ ]*:f0 .*,197x768:768x2304:' <<<"$packed_log"; then packed=1; else packed=0; fi
"$bin" embed-image --model "$work/bundle" --batch-size 4 --threads 2 "${shots[@]}" > "$work/batch4.jsonl"
"$bin" embed-image --model "$work/bundle" --batch-size 3 --threads 1 "${shots[@]}" > "$work/batch3.jsonl"
for f in "${shots[@]}"; do "$bin" embed-image --model "$work/bundle" --batch-size 1 "$f"; done > "$work/batch1.jsonl"
CNCLIP_IMAGE_LINEAR=libtorch "$bin" embed-image --model "$work/bundle" "${shots[@]}" > "$work/blas.jsonl"
rss() { "$py" -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)' "$@"; }
rss_packed=$(rss "$bin" embed-image --model "$work/bundle" "$fixtures/pokemon.jpeg")
rss_blas=$(CNCLIP_IMAGE_LINEAR=libtorch rss "$bin" embed-image --model "$work/bundle" "$fixtures/pokemon.jpeg")
"$py" - "$work/bundle/image_encoder.pt" "$work/pokemon.npy" "$work" "$packed" "$rss_packed" "$rss_blas" <<'PY'
import json, sys, numpy, torch
tower_file, npy, work, packed, rss_packed, rss_blas = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5]), int(sys.argv[6])
rows = {name: [json.loads(l)["embedding"] for l in open(f"{work}/{name}.jsonl")] for name in ("batch4", "batch3", "batch1", "blas")}
assert all(len(r) == 5 for r in rows.values()), {k: len(v) for k, v in rows.items()}
if packed:
    assert rows["batch4"] == rows["batch3"] == rows["batch1"], "an image's embedding depends on its batch or the thread count"
else:  # BLIS and OpenBLAS may round a row by its batch (OpenBLAS's AVX2 kernels forced: ~1e-7)
    worst = max(abs(a - b) for r in ("batch3", "batch1") for x, y in zip(rows["batch4"], rows[r]) for a, b in zip(x, y))
    assert worst <= 1e-6, worst
e = torch.tensor(rows["batch1"], dtype=torch.float64)
b = torch.tensor(rows["blas"], dtype=torch.float64)
cos = (e * b).sum(1) / (e.norm(dim=1) * b.norm(dim=1))
assert cos.min().item() >= 0.99999, cos
assert packed == (not torch.equal(e, b)), ("the packed route ran" if packed else "no packed route") + " but the floats say otherwise"
with torch.no_grad():
    ref = torch.jit.load(tower_file)(torch.from_numpy(numpy.load(npy)).unsqueeze(0))[0].double()
ref = ref / ref.norm()
diff = (e[0] - ref).abs().max().item()
assert diff <= 1e-5, diff
# Packed over the bundle's weights: no second copy (344 MB) and no heap left half used (150 MB here, before).
assert rss_packed <= rss_blas + 64 * 1024, (rss_packed, rss_blas)
print(f"image Linears {'on packed weights: the same floats' if packed else 'on BLAS: within 1e-6'} in batches of 4, 3 and 1; "
      f"cosine to BLAS's >= {cos.min().item():.8f}; max abs difference to Python's torch {diff:.2e}; "
      f"peak RSS {rss_packed // 1024} MB against {rss_blas // 1024}")
PY

# cnclip-bench names the kernels that computed, also when the user chose BLIS's (BLIS_ARCH_TYPE: 3 is
# BLIS 0.9's id of its haswell kernels; naming them once aborted BLIS, uninitialized).
bench="$(dirname "$bin")/cnclip-bench"
own=$("$bench" text "$work/bundle" --iters 1 --threads 1)
chosen=$(BLIS_ARCH_TYPE=3 "$bench" text "$work/bundle" --iters 1 --threads 1)
"$py" - "$own" "$chosen" <<'PY'
import json, sys
own, chosen = (json.loads(a) for a in sys.argv[1:3])
assert own["ms_per_query"] > 0 and chosen["ms_per_query"] > 0, (own, chosen)
assert any("float32 Linear layers: " + k in own["backend"] for k in ("oneDNN ", "BLIS ", "BLAS")), own
assert "(skx kernels)" not in own["backend"], own
if "BLIS" in own["backend"]:
    assert "(haswell kernels)" in chosen["backend"], chosen
print("kernels named:", own["backend"])
PY
