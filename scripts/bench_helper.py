#!/usr/bin/python3
"""Helpers for scripts/bench.sh (inputs, the Python reference pipeline, timing, comparisons).

    bench_helper.py photos DIR [--count 64] [--megapixels 12]
    bench_helper.py vectors OUT.npy PATHS.txt --count N --dim D
    bench_helper.py reference-index PHOTOS BUNDLE OUT.npy [--batch 8]   -> prints images/s
    bench_helper.py compare-index CATALOG.sqlite3 REF.npy PHOTOS         -> min/mean cosine
    bench_helper.py compare-catalogs A.sqlite3 B.sqlite3                  -> min/mean cosine
    bench_helper.py time-runs N -- COMMAND...                            -> p50/p90 seconds, peak RSS
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
    s = sub.add_parser("eval-set"); s.add_argument("photos"); s.add_argument("out")
    s = sub.add_parser("time-runs"); s.add_argument("n", type=int); s.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    if a.cmd == "time-runs" and a.command and a.command[0] == "--":
        a.command = a.command[1:]
    globals()["cmd_" + a.cmd.replace("-", "_")](a)


if __name__ == "__main__":
    main()
