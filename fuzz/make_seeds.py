#!/usr/bin/python3
"""Seed corpora of the fuzz targets, in OUT/<target>/.

  make_seeds.py generated OUT          small generated files per format and variant, hand-made
                                       tokenizer, .npy, bundle.json and JSONL cases; their output
                                       is committed as fuzz/corpus/<target>/seed-* (regenerate with
                                       `make_seeds.py generated fuzz/corpus`)
  make_seeds.py fixtures OUT FIXTURES BUNDLE_JSON
                                       what comes from the fixtures (every tokenizer reference case,
                                       the small fixture images) and a real bundle.json; run by
                                       scripts/fuzz.sh into its build directory
Needs /usr/bin/python3 with Pillow and NumPy (scripts/setup.sh installs them).
"""
import io
import json
import os
import shutil
import sys

import numpy as np
from PIL import Image


def write(out, target, name, data):
    name = "seed-" + name
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def encoded(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def image_seeds(out):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (13, 17, 3), dtype=np.uint8), "RGB")
    rgba = Image.fromarray(rng.integers(0, 256, (9, 11, 4), dtype=np.uint8), "RGBA")
    grey = rgb.convert("L")
    pal = rgb.convert("P", palette=Image.ADAPTIVE, colors=8)
    seeds = {
        "baseline.jpg": encoded(rgb, "JPEG", quality=80),
        "progressive.jpg": encoded(rgb, "JPEG", progressive=True),
        "grey.jpg": encoded(grey, "JPEG"),
        "cmyk.jpg": encoded(rgb.convert("CMYK"), "JPEG"),
        "rgb.png": encoded(rgb, "PNG"),
        "rgba.png": encoded(rgba, "PNG"),
        "grey.png": encoded(grey, "PNG"),
        "palette.png": encoded(pal, "PNG"),
        "bilevel.png": encoded(rgb.convert("1"), "PNG"),
        "rgb16.png": encoded(Image.fromarray(rng.integers(0, 65536, (5, 7), dtype=np.uint16).astype(np.int32),
                                             "I"), "PNG"),
        "lossy.webp": encoded(rgb, "WEBP", quality=50),
        "lossless.webp": encoded(rgba, "WEBP", lossless=True),
        "rgb.bmp": encoded(rgb, "BMP"),
        "palette.bmp": encoded(pal, "BMP"),
        "rgb.tif": encoded(rgb, "TIFF"),
        "rgba.tif": encoded(rgba, "TIFF"),
        "grey_lzw.tif": encoded(grey, "TIFF", compression="tiff_lzw"),
        "gif.gif": encoded(pal, "GIF"),
    }
    # A JPEG with an EXIF orientation tag (rotated 90 degrees).
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds["exif6.jpg"] = encoded(rgb, "JPEG", exif=exif.tobytes())
    for name, data in seeds.items():
        write(out, "image", name, data)


def fixture_image_seeds(out, fixtures):
    os.makedirs(os.path.join(out, "image"), exist_ok=True)
    img_dir = os.path.join(fixtures, "images")
    for name in sorted(os.listdir(img_dir)) if os.path.isdir(img_dir) else []:
        path = os.path.join(img_dir, name)
        if name.endswith((".png", ".jpg", ".jpeg")) and os.path.getsize(path) <= 64 * 1024:
            shutil.copy(path, os.path.join(out, "image", "fixture_" + name))


def fixture_tokenizer_seeds(out, fixtures):
    path = os.path.join(fixtures, "tokenizer_cases.jsonl")
    with open(path, encoding="utf-8") as f:
        cases = [json.loads(line)["text"] for line in f if line.strip()]
    for i, text in enumerate(cases):
        write(out, "tokenizer", "fixture%03d.txt" % i, text.encode("utf-8", "surrogatepass"))


def tokenizer_seeds(out):
    cases = ["夕阳、大海、沙滩", "Hello, World! café naïve", "\u00e9\u0301 \U0001F600 ##x [UNK]", "a" * 250,
              "中" * 80, "\t\n\r\x00\x7f", "\ufeffＡＢＣ１２３"]
    for i, text in enumerate(cases):
        write(out, "tokenizer", "case%03d.txt" % i, text.encode("utf-8", "surrogatepass"))
    write(out, "tokenizer", "invalid.txt", b"\xe5\xa4\xff\xc0\x80\xed\xa0\x80abc")


def npy_bytes(arr):
    b = io.BytesIO()
    np.save(b, arr)
    return b.getvalue()


def npy_seeds(out):
    rng = np.random.default_rng(1)
    write(out, "npy", "f4_2x8.npy", npy_bytes(rng.standard_normal((2, 8)).astype("<f4")))
    write(out, "npy", "f8_3.npy", npy_bytes(rng.standard_normal(3).astype("<f8")))
    write(out, "npy", "i8_2x2x2.npy", npy_bytes(np.arange(8, dtype="<i8").reshape(2, 2, 2)))
    write(out, "npy", "i4_scalar.npy", npy_bytes(np.array(7, dtype="<i4")))
    write(out, "npy", "f4_empty.npy", npy_bytes(np.zeros((0, 4), dtype="<f4")))
    write(out, "npy", "fortran.npy", npy_bytes(np.asfortranarray(np.ones((2, 3), dtype="<f4"))))
    b = io.BytesIO()
    np.lib.format.write_array(b, np.ones((2, 2), dtype="<f4"), version=(2, 0))
    write(out, "npy", "v2.npy", b.getvalue())


def fixture_bundle_seeds(out, bundle_json):
    if os.path.exists(bundle_json):
        with open(bundle_json, "rb") as f:
            write(out, "bundle", "exported.json", f.read())


def bundle_seeds(out):
    m = {
        "format": "cnclip-bundle", "format_version": 1, "architecture": "tiny", "precision": "fp32",
        "fingerprint": "ab12", "embedding_dim": 8, "normalized": True,
        "image": {"size": 32, "mean": [0.48, 0.45, 0.40], "std": [0.26, 0.26, 0.27],
                  "interpolation": "bicubic-pillow", "resize": "squash"},
        "text": {"context_length": 52, "lower_case": True, "tokenizer": "bert-wordpiece"},
        "logit_scale": 4.6, "source": {"seed": 0},
        "files": {"vocab.txt": {"bytes": 10, "sha256": "00"}, "text_encoder.pt": {"bytes": 1, "sha256": "11"}},
    }
    write(out, "bundle", "minimal.json", json.dumps(m).encode())
    m["source"] = {"sha256": "cafe"}
    m["precision"] = "int8"
    write(out, "bundle", "checkpoint.json", json.dumps(m, indent=1).encode())


def jsonl_seeds(out):
    lines = [
        {"path": "/photos/a.jpg", "embedding": [0.5, -0.5, 0.5, -0.5]},
        {"path": "relative/b.png", "embedding": [1, 0, 0, 0]},
        {"path": "/photos/\u5c0f\u72d7.jpg", "embedding": [0.1, 0.2, 0.3, 0.4]},
    ]
    write(out, "jsonl", "three.jsonl", "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode())
    write(out, "jsonl", "crlf.jsonl", (json.dumps(lines[0]) + "\r\n\r\n" + json.dumps(lines[1])).encode())
    write(out, "jsonl", "extra_fields.jsonl",
          json.dumps({"path": "/x.jpg", "embedding": [0, 0, 1, 0], "path_bytes": "2f782e6a7067"}).encode())
    write(out, "jsonl", "bad.jsonl", b'{"path": "", "embedding": [1e999, "x"]}\n{"embedding": [1,2]}\n')


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "generated":
        out = sys.argv[2]
        image_seeds(out)
        tokenizer_seeds(out)
        npy_seeds(out)
        bundle_seeds(out)
        jsonl_seeds(out)
    elif len(sys.argv) == 5 and sys.argv[1] == "fixtures":
        out, fixtures, bundle_json = sys.argv[2:]
        fixture_image_seeds(out, fixtures)
        fixture_tokenizer_seeds(out, fixtures)
        fixture_bundle_seeds(out, bundle_json)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
