"""Still-image formats beyond the fixtures (issue 14): GIF, animated WebP and APNG first frames
bit-exact with Pillow 9.4 (which reads them); HEIF/AVIF and camera RAW, which Pillow does not read,
against the same picture as PNG: bit-exact where the file is lossless (AVIF, RAW rendered by LibRaw's
own tool), and by the tiny model's embeddings (cosine >= 0.9999) where a conversion rounds.
Files are made here: heif-enc (libheif-examples), avifenc (libavif-bin), dcraw_emu (libraw-bin),
Pillow, and tests/media_files.py (DNG and hand-made GIFs)."""
import io
import json
import os
import subprocess
import tempfile
import unittest
import warnings

import numpy as np
from PIL import Image

import media_files
from pillow_parity_test import BINARY, ours, photo, reference

MODEL = os.environ.get("CNCLIP_MODEL", "")


# Pillow's lazily loaded images keep their files open until collected: not a leak of ours.
warnings.filterwarnings("ignore", category=ResourceWarning)


def run(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {r.stderr}")
    return r


def embeddings(*paths, options=()):
    r = run(BINARY, "embed-image", "--model", MODEL, *options, *paths)
    return [np.array(json.loads(line)["embedding"], dtype=np.float64) for line in r.stdout.splitlines()]


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


class MediaParity(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def exact(self, path, options=("--ignore-exif", "--full-decode"), expected=None):
        a = reference(path) if expected is None else expected
        b = ours(path, self.dir, options)
        diff = np.abs(a - b).max()
        self.assertEqual(diff, 0.0, f"{os.path.basename(path)} {options}: max difference {diff}")

    # ---- formats Pillow reads: bit-exact ----

    def test_gif_first_frame(self):
        rgb = Image.fromarray(photo(201, 143, 20))
        p = rgb.quantize(200)
        p.save(self.path("p.gif"))
        self.exact(self.path("p.gif"))
        p.save(self.path("t.gif"), transparency=5)
        self.exact(self.path("t.gif"))
        rgb.convert("L").save(self.path("l.gif"))  # a grey ramp palette: Pillow's mode "L" (bicubic)
        self.assertEqual(Image.open(self.path("l.gif")).mode, "L")
        self.exact(self.path("l.gif"))
        frames = [rgb.quantize(64), rgb.rotate(90).quantize(64), rgb.rotate(180).quantize(64)]
        frames[0].save(self.path("anim.gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
        self.exact(self.path("anim.gif"))
        frames[0].save(self.path("interlaced.gif"), interlace=True)
        self.exact(self.path("interlaced.gif"))

    def test_gif_hand_made(self):
        """Frames placed off the origin, transparency filling the rest of the canvas, a frame reaching
        past the logical screen (the canvas grows), a local palette over the global one, no palette,
        interlacing, and indices past the palette's end."""
        rng = np.random.default_rng(21)
        pal = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(256)]
        small = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(16)]
        ind = rng.integers(0, 256, (90, 70)).astype(np.uint8)
        cases = {
            "offset": media_files.gif_bytes((120, 100), [{"indices": ind, "left": 30, "top": 5}], pal),
            "transparent": media_files.gif_bytes((120, 100), [{"indices": ind, "left": 7, "top": 9,
                                                               "transparency": 77}], pal),
            "grows": media_files.gif_bytes((50, 40), [{"indices": ind, "left": 20, "top": 30}], pal),
            "local": media_files.gif_bytes((70, 90), [{"indices": ind % 16, "palette": small}], pal),
            "short_palette": media_files.gif_bytes((70, 90), [{"indices": ind}], small),
            "no_palette": media_files.gif_bytes((70, 90), [{"indices": ind}]),
            "interlaced": media_files.gif_bytes((70, 90), [{"indices": ind, "interlace": True}], pal),
            "two_frames": media_files.gif_bytes((70, 90), [{"indices": ind}, {"indices": 255 - ind}], pal),
        }
        for name, data in cases.items():
            with self.subTest(name):
                with open(self.path(name + ".gif"), "wb") as f:
                    f.write(data)
                self.exact(self.path(name + ".gif"))

    def test_animated_webp_first_frame(self):
        rgb = Image.fromarray(photo(180, 130, 22))
        frames = [rgb, rgb.rotate(90), rgb.rotate(45)]
        frames[0].save(self.path("anim.webp"), save_all=True, append_images=frames[1:], lossless=True, duration=80)
        self.assertTrue(Image.open(self.path("anim.webp")).is_animated)
        self.exact(self.path("anim.webp"))
        rgba = [f.convert("RGBA") for f in frames]
        for f, seed in zip(rgba, (1, 2, 3)):
            f.putalpha(Image.fromarray(photo(180, 130, seed)[:, :, 0]))
        rgba[0].save(self.path("anim_alpha.webp"), save_all=True, append_images=rgba[1:], lossless=True)
        self.exact(self.path("anim_alpha.webp"))
        frames[0].save(self.path("anim_lossy.webp"), save_all=True, append_images=frames[1:], quality=80)
        self.exact(self.path("anim_lossy.webp"))

    def test_apng_first_frame(self):
        rgb = Image.fromarray(photo(150, 110, 23))
        frames = [rgb, rgb.rotate(90), rgb.rotate(180)]
        frames[0].save(self.path("anim.png"), save_all=True, append_images=frames[1:])
        self.assertTrue(Image.open(self.path("anim.png")).is_animated)
        self.exact(self.path("anim.png"))
        # The default image outside the animation (no fcTL before IDAT): Pillow's frame 0 still.
        frames[0].save(self.path("default.png"), save_all=True, append_images=frames[1:], default_image=True)
        self.exact(self.path("default.png"))

    # ---- HEIF / AVIF: against the PNG they were made from ----

    def test_avif_lossless_and_orientation(self):
        """avifenc -l is lossless (RGB as identity-matrix 4:4:4): the tensors equal the PNG's. irot
        and imir are applied by default, as EXIF is for JPEGs, and --ignore-exif leaves them out."""
        src = Image.fromarray(photo(300, 200, 24))
        png = self.path("src.png")
        src.save(png)
        run("avifenc", "-l", png, self.path("plain.avif"))
        self.exact(self.path("plain.avif"), expected=reference(png))
        self.exact(self.path("plain.avif"), options=(), expected=reference(png))
        for args, turned in ((("--irot", "1"), src.transpose(Image.Transpose.ROTATE_90)),
                             (("--irot", "3"), src.transpose(Image.Transpose.ROTATE_270)),
                             (("--imir", "0"), src.transpose(Image.Transpose.FLIP_TOP_BOTTOM)),
                             (("--imir", "1"), src.transpose(Image.Transpose.FLIP_LEFT_RIGHT))):
            with self.subTest(args):
                path = self.path("turned.avif")
                run("avifenc", "-l", *args, png, path)
                turned.save(self.path("turned.png"))
                self.exact(path, options=(), expected=reference(self.path("turned.png")))
                self.exact(path, options=("--ignore-exif",), expected=reference(png))

    def test_high_bit_depth_keeps_the_high_byte(self):
        """10- and 12-bit AVIF from an 8-bit PNG: libheif's 8-bit output keeps the high bits, within
        a level of the source, and the embeddings agree."""
        png = self.path("src.png")
        Image.fromarray(photo(240, 180, 25)).save(png)
        for depth in ("10", "12"):
            path = self.path(f"d{depth}.avif")
            run("avifenc", "-l", "-d", depth, png, path)
            a, b = reference(png), ours(path, self.dir)
            self.assertLessEqual(np.abs(a - b).max(), 2.0 / 255 / 0.26130258 + 1e-5, depth)
            e = embeddings(png, path)
            self.assertGreaterEqual(cosine(e[0], e[1]), 0.9999, depth)

    def test_heic_against_png(self):
        """HEVC lossless with RGB coded as GBR (matrix 0) 4:4:4; alpha as its own plane."""
        png = self.path("src.png")
        Image.fromarray(photo(320, 240, 26)).save(png)
        heic = self.path("src.heic")
        run("heif-enc", "-L", "-p", "chroma=444", "--matrix_coefficients=0", "-o", heic, png)
        e = embeddings(png, heic)
        self.assertGreaterEqual(cosine(e[0], e[1]), 0.9999)
        # Nearly lossless (x265's lossless mode, heif-enc's RGB path): within 3 levels.
        diff = np.abs(reference(png) - ours(heic, self.dir)).max()
        self.assertLessEqual(diff, 3.0 / 255 / 0.26130258, diff)
        rgba = Image.fromarray(photo(320, 240, 27)).convert("RGBA")
        rgba.putalpha(Image.fromarray(photo(320, 240, 28)[:, :, 1]))
        rgba.save(self.path("alpha.png"))
        run("heif-enc", "-L", "-p", "chroma=444", "--matrix_coefficients=0", "-o", self.path("alpha.heic"),
            self.path("alpha.png"))
        e = embeddings(self.path("alpha.png"), self.path("alpha.heic"))
        self.assertGreaterEqual(cosine(e[0], e[1]), 0.9999)

    # ---- camera RAW ----

    def test_raw_demosaic_matches_libraw_tool(self):
        """A DNG without a preview is demosaiced at half size with the camera's white balance: the
        same pixels as `dcraw_emu -w -h` (LibRaw's own tool), orientation included."""
        img = photo(320, 240, 29)
        for orientation in (1, 6, 8):
            with self.subTest(orientation=orientation):
                dng = self.path(f"o{orientation}.dng")
                media_files.write_dng(dng, img, orientation)
                run("dcraw_emu", "-w", "-h", "-T", dng)
                tiff = dng + ".tiff"
                Image.open(tiff).save(self.path("rendered.png"))  # lossless
                self.exact(dng, options=(), expected=reference(self.path("rendered.png")))
                if orientation == 6:
                    e = embeddings(self.path("rendered.png"), dng)
                    self.assertGreaterEqual(cosine(e[0], e[1]), 0.9999)
                # --ignore-exif: the sensor's orientation.
                run("dcraw_emu", "-w", "-h", "-t", "0", "-T", dng)
                Image.open(tiff).save(self.path("unturned.png"))
                self.exact(dng, options=("--ignore-exif",), expected=reference(self.path("unturned.png")))

    def test_raw_uses_a_large_preview(self):
        """A preview whose shorter side is at least 448 (2 x 224) is decoded instead of the raw data,
        turned by the RAW's orientation; a smaller one is not."""
        img = photo(320, 240, 30)
        big = Image.fromarray(photo(1000, 940, 31))
        buf = io.BytesIO()
        big.save(buf, "JPEG", quality=95)
        big_jpg = self.path("preview.jpg")
        with open(big_jpg, "wb") as f:
            f.write(buf.getvalue())
        dng = self.path("preview.dng")
        media_files.write_dng(dng, img, 6, buf.getvalue())
        turned = big.transpose(Image.Transpose.ROTATE_270)  # orientation 6: 90 degrees clockwise
        # The preview decoded as cnclip decodes that JPEG (1/2 scale), turned: compare with Pillow.
        ref_img = Image.open(big_jpg)
        ref_img.draft("RGB", (500, 470))
        ref_img = ref_img.transpose(Image.Transpose.ROTATE_270)
        ref_img.save(self.path("ref.png"))
        self.exact(dng, options=(), expected=reference(self.path("ref.png")))
        turned.save(self.path("turned.png"))
        e = embeddings(self.path("turned.png"), dng)
        self.assertGreaterEqual(cosine(e[0], e[1]), 0.9999)
        # A small preview (400 px < 448): the raw data is demosaiced instead.
        buf = io.BytesIO()
        big.resize((400, 376)).save(buf, "JPEG", quality=95)
        small = self.path("small.dng")
        media_files.write_dng(small, img, 1, buf.getvalue())
        run("dcraw_emu", "-w", "-h", "-T", small)
        Image.open(small + ".tiff").save(self.path("small.png"))
        self.exact(small, options=(), expected=reference(self.path("small.png")))


if __name__ == "__main__":
    unittest.main()
