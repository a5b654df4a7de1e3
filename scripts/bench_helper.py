#!/usr/bin/python3
"""Helpers for scripts/bench.sh (inputs, the Python reference pipeline, timing, comparisons).

    bench_helper.py photos DIR [--count 64] [--megapixels 12]
    bench_helper.py vectors OUT.npy PATHS.txt --count N --dim D
    bench_helper.py reference-index PHOTOS BUNDLE OUT.npy [--batch 8]   -> prints images/s
    bench_helper.py compare-index CATALOG.sqlite3 REF.npy PHOTOS         -> min/mean cosine
    bench_helper.py compare-catalogs A.sqlite3 B.sqlite3                  -> min/mean cosine
    bench_helper.py time-runs N -- COMMAND...                            -> p50/p90 seconds, peak RSS
    bench_helper.py onnx-export BUNDLE OUTDIR   -> image.onnx, text.onnx (+ check inputs/outputs)
    bench_helper.py onnx-int8 IN.onnx OUT.onnx  -> ONNX Runtime's dynamic int8 form of IN
    bench_helper.py peak-flops                  -> the CPU's fp32 peak from its ISA, clock and cores
"""
import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import time

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "fixtures", "images")


def list_photos(folder):
    exts = (".jpg", ".jpeg", ".png")
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if f.lower().endswith(exts))


def cmd_photos(a):
    """Realistic camera-sized photos: fixture images upscaled, with noise and a per-photo shift."""
    from PIL import Image
    os.makedirs(a.dir, exist_ok=True)
    sources = [Image.open(os.path.join(FIXTURES, n)).convert("RGB") for n in
               ("coffee_2048x1366_exif6.jpg", "chelsea_rgba.png", "astronaut_palette.png", "pokemon.jpeg")]
    w = int((a.megapixels * 1e6 * 4 / 3) ** 0.5)
    h = w * 3 // 4
    rng = np.random.default_rng(0)
    for i in range(a.count + a.png):
        img = sources[i % len(sources)].resize((w, h), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.int16)
        noise = rng.integers(-12, 13, size=(h // 8, w // 8, 3), dtype=np.int16).repeat(8, 0).repeat(8, 1)
        arr = np.clip(arr + noise[:h, :w] + int(rng.integers(-30, 30)), 0, 255).astype(np.uint8)
        out = Image.fromarray(arr)
        if i < a.count:
            out.save(os.path.join(a.dir, f"photo_{i:03d}.jpg"), quality=90)
        else:
            out.resize((w // 2, h // 2)).save(os.path.join(a.dir, f"scan_{i:03d}.png"))
    print(f"{a.count} JPEGs of {w}x{h} and {a.png} PNGs in {a.dir}", file=sys.stderr)


def cmd_vectors(a):
    rng = np.random.default_rng(1)
    m = np.empty((a.count, a.dim), dtype=np.float32)
    step = 100000
    for s in range(0, a.count, step):
        block = rng.standard_normal((min(step, a.count - s), a.dim), dtype=np.float32)
        m[s:s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    np.save(a.out, m)
    with open(a.paths, "w") as f:
        for i in range(a.count):
            f.write(f"/bench/library/{i // 1000:04d}/img_{i:07d}.jpg\n")


def cn_clip_transform(path, image):
    """Chinese-CLIP's image_transform: Resize((R,R), BICUBIC) on the PIL image, RGB, ToTensor, Normalize,
    with R, mean and std from the bundle's manifest (`image` of bundle.json)."""
    from PIL import Image
    size = image["size"]
    img = Image.open(path).resize((size, size), Image.BICUBIC).convert("RGB")
    x = np.asarray(img, dtype=np.float32) / np.float32(255)
    mean, std = np.array(image["mean"], dtype=np.float32), np.array(image["std"], dtype=np.float32)
    return ((x - mean) / std).transpose(2, 0, 1)


def cmd_reference_index(a):
    import torch
    torch.set_num_threads(os.cpu_count())
    paths = list_photos(a.photos)
    t0 = time.time()
    model = torch.jit.load(os.path.join(a.bundle, "image_encoder.pt"))
    with open(os.path.join(a.bundle, "bundle.json"), encoding="utf-8") as f:
        image = json.load(f)["image"]
    out = []
    with torch.no_grad():
        for s in range(0, len(paths), a.batch):
            batch = torch.from_numpy(np.stack([cn_clip_transform(p, image) for p in paths[s:s + a.batch]]))
            out.append(model(batch).numpy())
    secs = time.time() - t0
    np.save(a.out, np.concatenate(out))
    print(json.dumps({"images": len(paths), "seconds": secs, "images_per_s": len(paths) / secs,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def cmd_eval_set(a):
    """A labelled set in Chinese-CLIP's layout over the bench photos, for `cnclip eval`: a folder of
    <image_id>.<ext> (symbolic links to the photos) and one text per photo naming it."""
    imgs = os.path.join(a.out, "imgs")
    os.makedirs(imgs, exist_ok=True)
    with open(os.path.join(a.out, "texts.jsonl"), "w", encoding="utf-8") as f:
        for i, path in enumerate(list_photos(a.photos)):
            link = os.path.join(imgs, str(i) + os.path.splitext(path)[1])
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(path), link)
            f.write(json.dumps({"text_id": i, "text": "照片%d" % i, "image_ids": [i]}, ensure_ascii=False) + "\n")


def catalog_embeddings(path):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = con.execute("SELECT path, embedding FROM files").fetchall()
    return {p: np.frombuffer(e, dtype=np.float32) for p, e in rows}


def cosine_stats(pairs):
    cos = [float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y)) for x, y in pairs]
    return {"n": len(cos), "min_cosine": min(cos), "mean_cosine": sum(cos) / len(cos)}


def cmd_compare_index(a):
    ours = catalog_embeddings(a.catalog)
    ref = np.load(a.reference)
    paths = [os.path.realpath(p) for p in list_photos(a.photos)]
    print(json.dumps(cosine_stats([(ours[p], ref[i]) for i, p in enumerate(paths)])))


def cmd_compare_catalogs(a):
    x, y = catalog_embeddings(a.a), catalog_embeddings(a.b)
    print(json.dumps(cosine_stats([(x[p], y[p]) for p in x if p in y])))


def cmd_min_cosine(a):
    """Min cosine between the embeddings of two JSON-lines outputs (embed-text / embed-image), line by line."""
    def rows(path):
        return [np.asarray(json.loads(line)["embedding"], dtype=np.float64) for line in open(path)]
    x, y = rows(a.a), rows(a.b)
    if len(x) != len(y) or not x:
        sys.exit(f"min-cosine: {a.a} has {len(x)} embeddings, {a.b} {len(y)}")
    print(cosine_stats(list(zip(x, y)))["min_cosine"])


def cmd_time_runs(a):
    times, rss = [], []
    for _ in range(a.n):
        t0 = time.time()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        r = subprocess.run(a.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        times.append(time.time() - t0)
        if r.returncode != 0:
            sys.exit(f"time-runs: {' '.join(a.command)} failed: {r.stderr.decode()[-500:]}")
        rss.append(max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    print(json.dumps({"runs": a.n, "p50_s": p(0.5), "p90_s": p(0.9), "peak_rss_mb": max(rss) / 1024}))


def cmd_onnx_export(a):
    """The bundle's TorchScript towers as ONNX (torch.onnx.export of the very files cnclip runs), with
    dynamic batch (and text length), plus a check set for scripts/bench_ort.mjs: fixed inputs and the
    TorchScript outputs for them (raw little-endian files), so that ONNX Runtime's agreement is shown."""
    import torch
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.bundle, "bundle.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    r = manifest["image"]["size"]
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(4, 3, r, r, generator=g)
    ids = torch.randint(1000, 20000, (2, 15), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    ids[1, 9:] = 0  # a shorter second query: padding and its mask exported too
    ids[1, 8] = 102
    torch.set_num_threads(os.cpu_count())
    report = {}
    for name, x, axes in (("image", pixels, {0: "batch"}), ("text", ids, {0: "batch", 1: "length"})):
        ts = torch.jit.load(os.path.join(a.bundle, f"{name}_encoder.pt")).eval()
        out_path = os.path.join(a.out, f"{name}.onnx")
        with torch.no_grad():
            expected = ts(x)
            torch.onnx.export(ts, (x,), out_path, input_names=["input"], output_names=["embedding"],
                              dynamic_axes={"input": axes, "embedding": {0: "batch"}}, opset_version=14,
                              do_constant_folding=True)
        x.numpy().tofile(os.path.join(a.out, f"check-{name}.in"))
        expected.numpy().astype(np.float32).tofile(os.path.join(a.out, f"check-{name}.out"))
        with open(os.path.join(a.out, f"check-{name}.json"), "w") as f:
            json.dump({"shape": list(x.shape), "dtype": "int64" if x.dtype == torch.int64 else "float32",
                       "out_shape": list(expected.shape)}, f)
        report[name] = out_path
    print(json.dumps(report))


def cmd_onnx_int8(a):
    """ONNX Runtime's dynamic int8 for the exported towers, as onnxruntime.quantization.quantize_dynamic
    leaves them after ORT's own graph fusion: every MatMul/Gemm with a constant weight becomes
    com.microsoft.DynamicQuantizeMatMul (activations quantized to uint8 per call, weights int8). The
    Python onnxruntime package (which has quantize_dynamic) is not in Debian, so this rewrite is done
    with Debian's python3-onnx. Weights are symmetric int8 per output channel, like cnclip's int8
    bundles (quantize_dynamic's per_channel=True); the rest of the graph is untouched."""
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(a.input)
    graph = model.graph
    # Constant weights are initializers, or (in towers frozen by the exporter) Constant nodes.
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    nodes, replaced, used_weights = [], 0, set()
    for node in graph.node:
        attrs = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        weight = node.input[1] if len(node.input) > 1 else None
        ok = node.op_type in ("MatMul", "Gemm") and weight in consts
        if node.op_type == "Gemm":
            ok = ok and attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        if not ok:
            nodes.append(node)
            continue
        w = consts[weight].astype(np.float32)
        if node.op_type == "Gemm" and attrs.get("transB", 0):
            w = w.T
        if w.ndim != 2:
            nodes.append(node)
            continue
        scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0  # per output column of [K, N]
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        base = f"{node.name or weight}_int8_{replaced}"
        graph.initializer.extend([numpy_helper.from_array(q, base + "_w"),
                                  numpy_helper.from_array(scale.astype(np.float32), base + "_scale"),
                                  numpy_helper.from_array(np.zeros(q.shape[1], np.int8), base + "_zp")])
        ins = [node.input[0], base + "_w", base + "_scale", base + "_zp"]
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            ins.append(node.input[2])
        nodes.append(helper.make_node("DynamicQuantizeMatMul", ins, list(node.output), name=base, domain="com.microsoft"))
        used_weights.add(weight)
        replaced += 1
    still_used = {i for n in nodes for i in n.input}
    nodes = [n for n in nodes if not (n.op_type == "Constant" and n.output[0] in used_weights
                                      and n.output[0] not in still_used)]
    keep = [i for i in graph.initializer if i.name not in used_weights or i.name in still_used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, a.output)
    print(json.dumps({"quantized_matmuls": replaced, "out": a.output}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("photos"); s.add_argument("dir"); s.add_argument("--count", type=int, default=64)
    s.add_argument("--png", type=int, default=4); s.add_argument("--megapixels", type=float, default=12)
    s = sub.add_parser("vectors"); s.add_argument("out"); s.add_argument("paths")
    s.add_argument("--count", type=int, required=True); s.add_argument("--dim", type=int, default=512)
    s = sub.add_parser("reference-index"); s.add_argument("photos"); s.add_argument("bundle"); s.add_argument("out")
    s.add_argument("--batch", type=int, default=8)
    s = sub.add_parser("compare-index"); s.add_argument("catalog"); s.add_argument("reference"); s.add_argument("photos")
    s = sub.add_parser("compare-catalogs"); s.add_argument("a"); s.add_argument("b")
    s = sub.add_parser("min-cosine"); s.add_argument("a"); s.add_argument("b")
    s = sub.add_parser("eval-set"); s.add_argument("photos"); s.add_argument("out")
    s = sub.add_parser("time-runs"); s.add_argument("n", type=int); s.add_argument("command", nargs=argparse.REMAINDER)
    s = sub.add_parser("onnx-export"); s.add_argument("bundle"); s.add_argument("out")
    s = sub.add_parser("onnx-int8"); s.add_argument("input"); s.add_argument("output")
    a = ap.parse_args()
    if a.cmd == "time-runs" and a.command and a.command[0] == "--":
        a.command = a.command[1:]
    globals()["cmd_" + a.cmd.replace("-", "_")](a)


if __name__ == "__main__":
    main()
