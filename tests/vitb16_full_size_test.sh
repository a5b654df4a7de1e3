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
print("1 passed, 0 failed")
PY
