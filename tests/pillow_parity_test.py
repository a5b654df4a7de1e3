"""`cnclip preprocess` against Pillow 9.4 (the reference's Pillow) on formats and modes the fixtures do
not cover. The reference is cn_clip's transform: resize((224,224), BICUBIC) in the image's mode,
convert('RGB'), /255, normalize, all in float32."""
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from PIL import Image, ImageOps

BINARY = os.environ["CNCLIP_BINARY"]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from cnclip_towers import MEAN, STD  # noqa: E402  (the one Python copy; bundles carry it in bundle.json)
MEAN = np.array(MEAN, dtype=np.float32)
STD = np.array(STD, dtype=np.float32)


def reference(path, exif=False, draft=1):
    """cn_clip's transform; `exif` turns the image upright first (cnclip's default), `draft` decodes a
    JPEG at 1/draft scale (libjpeg DCT scaling, what cnclip does without --full-decode)."""
    img = Image.open(path)
    if draft > 1:
        img.draft(img.mode, (img.width // draft, img.height // draft))
    if exif:
        img = ImageOps.exif_transpose(img)
    rgb = np.asarray(img.resize((224, 224), Image.BICUBIC).convert("RGB"))
    x = rgb.astype(np.float32) / np.float32(255)
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def ours(path, tmp, options=("--ignore-exif", "--full-decode")):
    out = os.path.join(tmp, "out.npy")
    r = subprocess.run([BINARY, "preprocess", *options, path, "--npy", out], capture_output=True, text=True)
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

    def check(self, name, image, **save):
        """Every format and mode is bit-exact under --ignore-exif --full-decode."""
        path = os.path.join(self.tmp.name, name)
        image.save(path, **save)
        a, b = reference(path), ours(path, self.tmp.name)
        diff = np.abs(a - b).max()
        self.assertEqual(diff, 0.0, f"{name} ({image.mode}): max difference {diff}")

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

    def cmyk_photo(self, w, h, seed):
        """CMYK with real black ink (RGB.convert('CMYK') leaves K at 0), smooth plus noise."""
        rng = np.random.default_rng(seed)
        base = np.linspace(0, 255, w * h * 4).reshape(h, w, 4)
        return Image.fromarray(np.clip(base + rng.normal(0, 50, (h, w, 4)), 0, 255).astype(np.uint8), "CMYK")

    def test_cmyk_jpeg_exact(self):
        """Pillow keeps CMYK JPEGs in CMYK through the resize and converts after; so do we, exactly."""
        self.check("cmyk.jpg", Image.fromarray(photo(640, 480, 6)).convert("CMYK"), quality=95)
        self.check("cmyk_ink.jpg", self.cmyk_photo(517, 389, 7), quality=90)
        self.check("cmyk_upscale.jpg", self.cmyk_photo(61, 97, 8), quality=85)
        self.check("cmyk_224.jpg", self.cmyk_photo(224, 224, 9), quality=92)
        self.check("cmyk_progressive.jpg", self.cmyk_photo(300, 200, 10), quality=80, progressive=True)

    def test_cmyk_jpeg_without_adobe_marker(self):
        """Pillow assumes Adobe's inverted CMYK for every 4-component JPEG, marker or not: so do we."""
        path = os.path.join(self.tmp.name, "adobe.jpg")
        self.cmyk_photo(300, 220, 11).save(path, quality=90)
        with open(path, "rb") as f:
            data = f.read()
        at = data.find(b"\xff\xee")  # APP14 "Adobe"
        self.assertGreater(at, 0)
        length = int.from_bytes(data[at + 2:at + 4], "big")
        self.assertEqual(data[at + 4:at + 9], b"Adobe")
        stripped = os.path.join(self.tmp.name, "no_adobe.jpg")
        with open(stripped, "wb") as f:
            f.write(data[:at] + data[at + 2 + length:])
        a, b = reference(stripped), ours(stripped, self.tmp.name)
        self.assertEqual(np.abs(a - b).max(), 0.0)

    def test_cmyk_jpeg_exif_and_reduced_decoding(self):
        """With EXIF orientation and DCT-scaled decoding (cnclip's defaults) a CMYK JPEG equals Pillow
        doing the same: draft() at the scale cnclip picks, exif_transpose, resize, convert."""
        exif = Image.Exif()
        for orientation in (3, 6, 8):
            exif[0x0112] = orientation
            path = os.path.join(self.tmp.name, f"cmyk_exif{orientation}.jpg")
            # 1000x940: the shorter side halves to 470 >= 448 (2 x 224), so cnclip decodes at 1/2.
            self.cmyk_photo(1000, 940, orientation).save(path, quality=90, exif=exif.tobytes())
            for exif_on, draft, options in ((True, 2, ()), (True, 1, ("--full-decode",)),
                                            (False, 2, ("--ignore-exif",))):
                a = reference(path, exif=exif_on, draft=draft)
                b = ours(path, self.tmp.name, options)
                self.assertEqual(np.abs(a - b).max(), 0.0, f"orientation {orientation}, options {options}")
        # The same holds for RGB JPEGs (OpenCV's decoder), so every format agrees under both settings.
        path = os.path.join(self.tmp.name, "rgb_exif6.jpg")
        exif[0x0112] = 6
        Image.fromarray(photo(1000, 940, 12)).save(path, quality=90, exif=exif.tobytes())
        self.assertEqual(np.abs(reference(path, exif=True, draft=2) - ours(path, self.tmp.name, ())).max(), 0.0)


if __name__ == "__main__":
    unittest.main()
