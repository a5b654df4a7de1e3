"""`cnclip preprocess` against Pillow 9.4 (the reference's Pillow) on formats and modes the fixtures do
not cover. The reference is cn_clip's transform: resize((224,224), BICUBIC) in the image's mode,
convert('RGB'), /255, normalize, all in float32."""
import os
import subprocess
import tempfile
import unittest

import numpy as np
from PIL import Image

BINARY = os.environ["CNCLIP_BINARY"]
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def reference(path):
    img = Image.open(path)
    rgb = np.asarray(img.resize((224, 224), Image.BICUBIC).convert("RGB"))
    x = rgb.astype(np.float32) / np.float32(255)
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def ours(path, tmp):
    out = os.path.join(tmp, "out.npy")
    r = subprocess.run([BINARY, "preprocess", "--ignore-exif", "--full-decode", path, "--npy", out], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(r.stderr)
    return np.load(out)


def photo(w, h, seed):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w * h * 3).reshape(h, w, 3)
    return np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


class PillowParity(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def check(self, name, image, exact=True, levels=1, **save):
        path = os.path.join(self.tmp.name, name)
        image.save(path, **save)
        a, b = reference(path), ours(path, self.tmp.name)
        diff = np.abs(a - b).max()
        if exact:
            self.assertEqual(diff, 0.0, f"{name} ({image.mode}): max difference {diff}")
        else:
            # one 8-bit level is 1/255/std ~ 0.015 in normalized units
            self.assertLessEqual(diff, 0.0151 * levels, f"{name} ({image.mode}): max difference {diff}")

    def test_png_modes(self):
        rgb = Image.fromarray(photo(300, 200, 1))
        self.check("rgb.png", rgb)
        self.check("l.png", rgb.convert("L"))
        la = rgb.convert("LA")
        la.putalpha(Image.fromarray(photo(300, 200, 2)[:, :, 0]))
        self.check("la.png", la)
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(photo(300, 200, 3)[:, :, 1]))
        self.check("rgba.png", rgba)
        self.check("p.png", rgb.quantize(64))
        p_trns = rgb.quantize(16)
        p_trns.info["transparency"] = 3
        self.check("p_trns.png", p_trns, transparency=3)
        self.check("bilevel.png", rgb.convert("1"))
        self.check("upscale.png", rgb.resize((40, 30)))
        self.check("exact224.png", rgb.resize((224, 224)))
        self.check("tall.png", rgb.resize((50, 700)))

    def test_other_formats(self):
        rgb = Image.fromarray(photo(257, 181, 4))
        self.check("rgb.bmp", rgb)
        self.check("p.bmp", rgb.quantize(200))
        self.check("rgb.tiff", rgb)
        self.check("rgb.webp", rgb, lossless=True)
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(photo(257, 181, 5)[:, :, 2]))
        self.check("rgba.webp", rgba, lossless=True)
        self.check("rgba.tiff", rgba)

    def test_jpeg_variants(self):
        rgb = Image.fromarray(photo(640, 480, 6))
        self.check("baseline.jpg", rgb, quality=90)
        self.check("progressive.jpg", rgb, quality=80, progressive=True)
        self.check("gray.jpg", rgb.convert("L"), quality=85)
        self.check("subsampled.jpg", rgb, quality=70, subsampling=2)
        # CMYK: Pillow resizes the 4 ink channels, then converts; OpenCV converts to RGB while
        # decoding, so we resize RGB. Within 2 levels, not exact (documented in the README).
        self.check("cmyk.jpg", rgb.convert("CMYK"), exact=False, levels=2, quality=95)


if __name__ == "__main__":
    unittest.main()
