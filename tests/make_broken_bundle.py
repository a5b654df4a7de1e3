#!/usr/bin/python3
"""Test helper: a copy of a model bundle whose towers return bad embeddings, as a bundle whose weights
were altered would, with bundle.json's fingerprint kept (so an index built with the original accepts it)
and its file sizes and sha256 updated (so only the embedding check can catch it).

    make_broken_bundle.py GOOD_DIR OUT_DIR [--image MODE] [--text MODE] [--keep-manifest]
    make_broken_bundle.py --all GOOD_DIR OUT_ROOT   # every bundle model_checks_test.cpp uses, in OUT_ROOT/NAME

Modes: keep; nan, inf, zero (every row); double (length 2 although the bundle says normalized);
image nan-bright: NaN for images whose mean normalized pixel is > 0 (white fails, black passes);
text zero-long: zeros for texts of more than 4 tokens with [CLS] and [SEP] ("猫" passes, longer fails);
nan-weight (either tower): NaN written over 4 bytes of one weight inside the TorchScript file, which keeps
its size (LibTorch does not check the zip's CRC), as a damaged disk or a bad copy would.
"""
import argparse
import hashlib
import json
import os
import shutil

import struct
import zipfile

import torch


class Broken(torch.nn.Module):
    def __init__(self, inner, mode: str):
        super().__init__()
        self.inner = inner
        self.mode = mode

    def forward(self, x):
        out = self.inner(x)
        if self.mode == "nan":
            return out * float("nan")
        if self.mode == "inf":
            return out / 0.0
        if self.mode == "zero":
            return out * 0.0
        if self.mode == "double":
            return out * 2.0
        if self.mode == "nan-bright":
            bad = x.flatten(1).mean(1) > 0
            return torch.where(bad[:, None], torch.full_like(out, float("nan")), out)
        if self.mode == "zero-long":
            bad = (x != 0).sum(1) > 4
            return torch.where(bad[:, None], torch.zeros_like(out), out)
        return out


def write_nan_into_weight(path):
    """NaN over 4 bytes in the middle of the tower's last constant tensor (its output projection)."""
    with zipfile.ZipFile(path) as z:
        consts = [i for i in z.infolist() if "/constants/" in i.filename]
        entry = max(consts, key=lambda i: int(i.filename.rsplit("/", 1)[1]))
    with open(path, "r+b") as f:
        f.seek(entry.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        f.seek(entry.header_offset + 30 + name_len + extra_len + (entry.file_size // 2 // 4) * 4)
        f.write(struct.pack("<f", float("nan")))


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# The bundles of model_checks_test.cpp: name -> (image mode, text mode, keep manifest).
ALL = {"bright": ("nan-bright", "zero-long", False), "stale": ("nan-weight", "keep", True),
       **{m: (m, m, False) for m in ("nan", "inf", "zero", "double", "nan-weight")}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("good")
    ap.add_argument("out")
    ap.add_argument("--image", default="keep")
    ap.add_argument("--text", default="keep")
    ap.add_argument("--keep-manifest", action="store_true", help="leave bundle.json as it was (stale sha256)")
    ap.add_argument("--all", action="store_true", help="make every test bundle under OUT (atomically)")
    a = ap.parse_args()
    if a.all:
        tmp = f"{a.out.rstrip('/')}.tmp-{os.getpid()}"
        os.makedirs(tmp)
        for name, (image, text, keep) in ALL.items():
            make(a.good, os.path.join(tmp, name), image, text, keep)
        shutil.rmtree(a.out, ignore_errors=True)
        os.rename(tmp, a.out)
    else:
        make(a.good, a.out, a.image, a.text, a.keep_manifest)


def make(good, out, image, text, keep_manifest):
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(good, out)
    manifest_path = os.path.join(out, "bundle.json")
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    for name, mode in (("image_encoder.pt", image), ("text_encoder.pt", text)):
        if mode == "keep":
            continue
        path = os.path.join(out, name)
        if mode == "nan-weight":
            write_nan_into_weight(path)
        else:
            torch.jit.script(Broken(torch.jit.load(path), mode)).save(path)
        if not keep_manifest:
            manifest["files"][name] = {"bytes": os.path.getsize(path), "sha256": sha256(path)}
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
