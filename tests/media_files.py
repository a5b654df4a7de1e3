"""Test files that no Debian tool writes the way the media tests need: a small DNG (camera RAW) with
an optional embedded JPEG preview, and hand-made GIFs (frame offsets, missing palettes). Used by
tests/media_parity_test.py and, as a command, by tests/media_test.cpp:

    media_files.py dng OUT.dng [--orientation N] [--preview JPEG]
    media_files.py gif OUT.gif
"""
import struct
import sys

import numpy as np


def bayer_from_rgb(rgb):
    """An RGGB mosaic (16-bit, values up to 4095) of an RGB image: what a sensor behind a Bayer filter
    would record of it (linear light, so a square of the sRGB value)."""
    lin = (rgb.astype(np.float64) / 255.0) ** 2.2
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    cfa = np.zeros((h, w), dtype=np.float64)
    cfa[0::2, 0::2] = lin[0:h:2, 0:w:2, 0]
    cfa[0::2, 1::2] = lin[0:h:2, 1:w:2, 1]
    cfa[1::2, 0::2] = lin[1:h:2, 0:w:2, 1]
    cfa[1::2, 1::2] = lin[1:h:2, 1:w:2, 2]
    return np.round(cfa * 4095).astype("<u2")


_TYPES = {1: "B", 3: "H", 4: "I", 5: "II", 7: "B", 10: "ii"}  # TIFF field types (2, ASCII, apart)


class _Ref:
    """The offset of a blob or an IFD, known once the file is laid out."""

    def __init__(self, kind, index):
        self.kind, self.index = kind, index


def _ifd_bytes(entries, offset, resolve):
    """entries: list of (tag, type, values); values may hold _Ref offsets (LONG). Returns the IFD
    bytes and its out-of-line data, placed at offset."""
    entries = sorted(entries, key=lambda e: e[0])
    head = struct.pack("<H", len(entries))
    extra = b""
    extra_at = offset + 2 + 12 * len(entries) + 4
    body = b""
    for tag, typ, values in entries:
        if typ == 2:
            raw = values.encode() + b"\0"
            count = len(raw)
        else:
            vals = [resolve(v) if isinstance(v, _Ref) else v for v in values]
            fmt = _TYPES[typ]
            if typ in (5, 10):
                raw = b"".join(struct.pack("<" + fmt, *v) for v in vals)
                count = len(vals)
            else:
                raw = struct.pack("<" + fmt * len(vals), *vals)
                count = len(vals)
        if len(raw) <= 4:
            body += struct.pack("<HHI", tag, typ, count) + raw.ljust(4, b"\0")
        else:
            if len(extra) % 2:
                extra += b"\0"
            body += struct.pack("<HHII", tag, typ, count, extra_at + len(extra))
            extra += raw
    return head + body + struct.pack("<I", 0) + extra


def write_dng(path, rgb, orientation=1, preview=None):
    """A DNG 1.4 of `rgb` (HxWx3 uint8) as an uncompressed RGGB mosaic with an identity-like colour
    matrix, the given EXIF orientation, and optionally `preview` (JPEG bytes) as IFD0's image with the
    raw data in a SubIFD (the layout of cameras' DNGs)."""
    cfa = bayer_from_rgb(rgb)
    h, w = cfa.shape
    raw_data = cfa.tobytes()
    blobs = [raw_data] + ([preview] if preview is not None else [])
    common = [
        (271, 2, "cnclip"), (272, 2, "test camera"), (274, 3, [orientation]),
        (50706, 1, [1, 4, 0, 0]), (50707, 1, [1, 1, 0, 0]), (50708, 2, "cnclip test camera"),
        (50721, 10, [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]),
        (50728, 5, [(1, 1), (1, 1), (1, 1)]), (50778, 3, [21]),
    ]
    raw_ifd = [
        (254, 4, [0]), (256, 4, [w]), (257, 4, [h]), (258, 3, [16]), (259, 3, [1]), (262, 3, [32803]),
        (273, 4, [_Ref("blob", 0)]), (277, 3, [1]), (278, 4, [h]), (279, 4, [len(raw_data)]), (284, 3, [1]),
        (33421, 3, [2, 2]), (33422, 1, [0, 1, 1, 2]), (50714, 4, [0]), (50717, 4, [4095]),
    ]
    if preview is None:
        ifds = [common + raw_ifd]
    else:
        pw, ph = _jpeg_size(preview)
        ifd0 = common + [
            (254, 4, [1]), (256, 4, [pw]), (257, 4, [ph]), (258, 3, [8, 8, 8]), (259, 3, [7]), (262, 3, [6]),
            (273, 4, [_Ref("blob", 1)]), (277, 3, [3]), (278, 4, [ph]), (279, 4, [len(preview)]), (284, 3, [1]),
            (330, 4, [_Ref("ifd", 1)]),
        ]
        ifds = [ifd0, raw_ifd]
    # Two passes: sizes first (offsets as 0), then the offsets.

    def layout(resolve):
        out = b""
        at = 8
        ifd_at = []
        for entries in ifds:
            ifd_at.append(at)
            data = _ifd_bytes(entries, at, resolve)
            out += data
            at += len(data)
            if at % 2:
                out += b"\0"
                at += 1
        blob_at = []
        for b in blobs:
            blob_at.append(at)
            out += b
            at += len(b)
        return out, ifd_at, blob_at

    _, ifd_at, blob_at = layout(lambda v: 0)
    body, ifd_at2, blob_at2 = layout(lambda v: blob_at[v.index] if v.kind == "blob" else ifd_at[v.index])
    assert ifd_at == ifd_at2 and blob_at == blob_at2
    with open(path, "wb") as f:
        f.write(b"II*\0" + struct.pack("<I", 8) + body)


def _jpeg_size(data):
    i = 2
    while i < len(data):
        while data[i] == 0xFF:
            i += 1
        marker = data[i]
        i += 1
        length = struct.unpack(">H", data[i:i + 2])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 3:i + 7])
            return w, h
        i += length
    raise ValueError("no SOF in JPEG")


def gif_bytes(screen, frames, global_palette=None, background=0):
    """A GIF89a by hand. screen: (w, h); frames: dicts with indices (HxW uint8 array), left, top,
    optional palette (list of RGB triples: a local palette), transparency (index), interlace.
    Palettes have 2**k entries. Pixels are coded uncompressed (9-bit LZW literals with a clear code
    every 254), which any decoder reads."""
    def table(pal):
        bits = max(1, int(np.ceil(np.log2(len(pal)))))
        assert len(pal) == 2 ** bits
        return bits, b"".join(bytes(c) for c in pal)

    out = b"GIF89a" + struct.pack("<HH", *screen)
    if global_palette:
        bits, data = table(global_palette)
        out += bytes([0x80 | (bits - 1), background, 0]) + data
    else:
        out += bytes([0, background, 0])
    for f in frames:
        ind = np.asarray(f["indices"], dtype=np.uint8)
        h, w = ind.shape
        t = f.get("transparency")
        out += b"\x21\xf9\x04" + bytes([1 if t is not None else 0, 0, 0, t or 0]) + b"\0"
        flags = 0x40 if f.get("interlace") else 0
        local = b""
        if f.get("palette"):
            bits, local = table(f["palette"])
            flags |= 0x80 | (bits - 1)
        out += b"\x2c" + struct.pack("<HHHH", f.get("left", 0), f.get("top", 0), w, h) + bytes([flags]) + local
        rows = ind
        if f.get("interlace"):
            order = [y for start, step in ((0, 8), (4, 8), (2, 4), (1, 2)) for y in range(start, h, step)]
            rows = ind[order]
        out += bytes([8]) + _lzw_literal(rows.tobytes())
    return out + b"\x3b"


def _lzw_literal(pixels):
    clear, end = 256, 257
    codes = [clear]
    for i, p in enumerate(pixels):
        if i and i % 254 == 0:
            codes.append(clear)
        codes.append(p)
    codes.append(end)
    acc = bits = 0
    data = bytearray()
    for c in codes:
        acc |= c << bits
        bits += 9
        while bits >= 8:
            data.append(acc & 0xFF)
            acc >>= 8
            bits -= 8
    if bits:
        data.append(acc & 0xFF)
    out = b""
    for i in range(0, len(data), 255):
        chunk = bytes(data[i:i + 255])
        out += bytes([len(chunk)]) + chunk
    return out + b"\0"


def _photo(w, h, seed):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w * h * 3).reshape(h, w, 3)
    return np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


if __name__ == "__main__":
    kind, out = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    if kind == "dng":
        orientation = int(args[args.index("--orientation") + 1]) if "--orientation" in args else 1
        preview = open(args[args.index("--preview") + 1], "rb").read() if "--preview" in args else None
        write_dng(out, _photo(320, 240, 3), orientation, preview)
    elif kind == "gif":
        pal = [(i * 7 % 256, i * 13 % 256, i * 29 % 256) for i in range(256)]
        ind = (np.arange(60 * 80).reshape(60, 80) % 256).astype(np.uint8)
        with open(out, "wb") as f:
            f.write(gif_bytes((80, 60), [{"indices": ind}], global_palette=pal))
    else:
        sys.exit(f"unknown kind {kind}")
