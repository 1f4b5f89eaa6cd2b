#!/usr/bin/env python3
"""Reference cases for src/preprocess.rs, made with real Pillow.

Writes small source images to tests/fixtures/preprocess/ and the official
CLIP transform of each (torchvision Resize/CenterCrop/ToTensor/Normalize,
re-implemented here with the same formulas since torch is not needed) to
tests/fixtures/preprocess_cases.safetensors.

Tensor keys are "<file>@<n>" (the official transform) and "<file>@<n>@exif"
(the same after PIL's ImageOps.exif_transpose, for files with an EXIF
orientation). The safetensors metadata maps each file to "exact" (lossless
formats: the Rust port must match to float rounding) or "lossy" (JPEG and
lossy WebP, decoded by other libraries in Rust).

Usage: python3 scripts/gen_preprocess_cases.py   (needs pillow<13, numpy, safetensors)
       python3 scripts/gen_preprocess_cases.py --check   (recompute and compare only)

Pillow 11 and 12 give identical output. Pillow 13 changed the resize: when the
height shrinks by more than twice as many pixels as the width, it runs the
vertical pass first, which changes tall (over ~2:1) images by a few levels.
src/preprocess.rs follows Pillow 11/12, so this script refuses Pillow 13+.
"""

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps
from safetensors import safe_open
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "fixtures" / "preprocess"
OUT_FILE = ROOT / "tests" / "fixtures" / "preprocess_cases.safetensors"
SIZES = (15, 32)

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def clip_transform(im, n):
    """Long-CLIP's _transform with torchvision's exact size/crop arithmetic."""
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = n, int(n * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_h, new_w) != (h, w):  # torchvision returns the image untouched otherwise
        im = im.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - n) / 2.0))
    left = int(round((new_w - n) / 2.0))
    im = im.crop((left, top, left + n, top + n)).convert("RGB")
    pixels = np.asarray(im).astype(np.float32) / np.float32(255)
    return np.ascontiguousarray(((pixels - MEAN) / STD).transpose(2, 0, 1))


# ---------------------------------------------------------------- sources

RNG = np.random.RandomState(1234)


def texture(w, h, channels=3):
    """Smooth gradients plus noise and a few hard edges, as uint8."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for c in range(channels):
        base = 128 + 100 * np.sin(x / (2.0 + c) + y / (3.5 + c)) * np.cos(y / (5.0 + 2 * c))
        base += RNG.normal(0, 25, size=(h, w))
        base[(x.astype(int) + 2 * y.astype(int) + c) % 7 == 0] = 255 * (c % 2)
        planes.append(base)
    return np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8)


def png_chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def write_png(path, w, h, depth, color, raw_rows, chunks=(), interlace=False):
    """A hand-made PNG, for bit depths and layouts Pillow cannot save.
    raw_rows(x0, y0, dx, dy) returns the packed rows of a (sub)image."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 1 if interlace else 0)
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    data = b""
    for p in passes if interlace else [(0, 0, 1, 1)]:
        for row in raw_rows(*p):
            data += b"\x00" + row
    body = png_chunk(b"IHDR", ihdr) + b"".join(png_chunk(k, v) for k, v in chunks)
    body += png_chunk(b"IDAT", zlib.compress(data)) + png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def pack_bits(values, depth):
    out, acc, nbits = bytearray(), 0, 0
    for v in values:
        acc = (acc << depth) | int(v)
        nbits += depth
        if nbits == 8:
            out.append(acc)
            acc, nbits = 0, 0
    if nbits:
        out.append(acc << (8 - nbits))
    return bytes(out)


def array_png(path, arr, depth, color, chunks=(), interlace=False):
    """PNG from an (h, w[, c]) integer array, any depth (big-endian 16-bit)."""
    h, w = arr.shape[:2]
    flat = arr.reshape(h, w, -1)

    def rows(x0, y0, dx, dy):
        sub = flat[y0::dy, x0::dx]
        if sub.shape[0] == 0 or sub.shape[1] == 0:
            return []
        if depth == 16:
            return [r.astype(">u2").tobytes() for r in sub]
        if depth == 8:
            return [r.astype(np.uint8).tobytes() for r in sub]
        return [pack_bits(r.reshape(-1), depth) for r in sub]

    write_png(path, w, h, depth, color, rows, chunks, interlace)


def lzw_literal_stream(indices, min_code_size=8):
    """GIF LZW data that only uses literal codes, with a clear code often
    enough that the code width never grows; any decoder reads it."""
    clear, end, width = 1 << min_code_size, (1 << min_code_size) + 1, min_code_size + 1
    codes = []
    for i in range(0, len(indices), 200):
        codes.append(clear)
        codes.extend(int(v) for v in indices[i : i + 200])
    codes.append(end)
    acc, nbits, out = 0, 0, bytearray()
    for code in codes:
        acc |= code << nbits
        nbits += width
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8
    if nbits:
        out.append(acc & 0xFF)
    blocks = b"".join(bytes([len(out[i : i + 255])]) + bytes(out[i : i + 255]) for i in range(0, len(out), 255))
    return bytes([min_code_size]) + blocks + b"\x00"


def write_gif(path, screen, frame_box, indices, global_palette=None, local_palette=None, transparent=None):
    """One-frame GIF with its frame placed anywhere on (or past) the screen."""
    sw, sh = screen
    x0, y0, fw, fh = frame_box

    def table_bits(p):
        return max(1, int(np.ceil(np.log2(len(p) // 3)))) - 1

    flags = 0x80 | 0x70 | table_bits(global_palette) if global_palette else 0x70
    data = b"GIF89a" + struct.pack("<HHBBB", sw, sh, flags, 0, 0)
    if global_palette:
        data += global_palette
    if transparent is not None:
        data += b"\x21\xf9\x04\x01\x00\x00" + bytes([transparent]) + b"\x00"
    local_flags = 0x80 | table_bits(local_palette) if local_palette else 0
    data += b"," + struct.pack("<HHHHB", x0, y0, fw, fh, local_flags)
    if local_palette:
        data += local_palette
    data += lzw_literal_stream(np.asarray(indices).reshape(-1)) + b";"
    path.write_bytes(data)


def exif_bytes(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def make_sources():
    """Writes every source image; returns {file name: "exact" | "lossy"}."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    kinds = {}

    def save(name, im, kind="exact", **params):
        im.save(OUT_DIR / name, **params)
        kinds[name] = kind

    rgb = lambda w, h: Image.fromarray(texture(w, h, 3))
    grey = lambda w, h: Image.fromarray(texture(w, h, 1)[:, :, 0])

    # Shapes: odd landscape, portrait, square, smaller than n (upscaling), 1-pixel-wide.
    save("rgb_landscape_37x23.png", rgb(37, 23))
    save("rgb_portrait_19x45.png", rgb(19, 45))
    save("rgb_square_40x40.png", rgb(40, 40))
    save("rgb_tiny_7x5.png", rgb(7, 5))
    save("rgb_column_1x30.png", rgb(1, 30))
    save("rgb_row_50x1.png", rgb(50, 1))
    save("rgb_exact_32x48.png", rgb(32, 48))  # short side already 32: no resize at n=32
    save("rgb_large_161x113.png", rgb(161, 113))

    # PIL modes that change the resize.
    save("grey_29x31.png", grey(29, 31))
    la = np.dstack([texture(26, 35, 1), texture(26, 35, 1)])
    la[::5, :, 1] = 0
    save("grey_alpha_26x35.png", Image.fromarray(la))
    rgba = texture(41, 27, 4)
    rgba[:, :6, 3] = 0  # fully transparent columns
    rgba[:, 6:12, 3] = 255
    rgba[::4, :, 3] = 1
    save("rgba_41x27.png", Image.fromarray(rgba))
    pal = Image.fromarray(texture(33, 21, 3)).quantize(16)
    save("palette_33x21.png", pal, transparency=3)
    save("palette_4bit_23x17.png", Image.fromarray(texture(23, 17, 3)).quantize(9), bits=4)
    save("bilevel_1bit_27x22.png", grey(27, 22).convert("1"))
    g16 = (texture(31, 22, 1)[:, :, 0].astype(np.uint32) * 3).astype(np.uint16)  # 0..765: crosses 255
    array_png(OUT_DIR / "grey16_low_31x22.png", g16, 16, 0)
    kinds["grey16_low_31x22.png"] = "exact"
    g16 = (texture(24, 35, 1)[:, :, 0].astype(np.uint32) * 257).astype(np.uint16)  # full range
    g16[::3, ::2] = 0
    array_png(OUT_DIR / "grey16_full_24x35.png", g16, 16, 0)
    kinds["grey16_full_24x35.png"] = "exact"

    # Layouts PIL cannot write: low-bit grey, 16-bit colour, tRNS, interlace.
    for depth in (2, 4):
        levels = texture(21, 18, 1)[:, :, 0] >> (8 - depth)
        array_png(OUT_DIR / f"grey_{depth}bit_21x18.png", levels, depth, 0)
        kinds[f"grey_{depth}bit_21x18.png"] = "exact"
    rgb16 = texture(22, 27, 3).astype(np.uint16) * 257 + RNG.randint(0, 256, (27, 22, 3)).astype(np.uint16)
    array_png(OUT_DIR / "rgb16_22x27.png", rgb16, 16, 2)
    la16 = texture(27, 20, 2).astype(np.uint16) * 257
    la16[::3, :, 1] = 0
    array_png(OUT_DIR / "grey_alpha16_27x20.png", la16, 16, 4)
    rgba16 = texture(20, 26, 4).astype(np.uint16) * 257
    array_png(OUT_DIR / "rgba16_20x26.png", rgba16, 16, 6)
    trns = texture(25, 19, 3)
    trns[3:9, 4:11] = (10, 20, 30)
    array_png(OUT_DIR / "rgb_trns_25x19.png", trns, 8, 2, chunks=[(b"tRNS", struct.pack(">HHH", 10, 20, 30))])
    array_png(OUT_DIR / "rgb_interlaced_35x29.png", texture(35, 29, 3), 8, 2, interlace=True)
    for name in ("rgb16_22x27.png", "grey_alpha16_27x20.png", "rgba16_20x26.png",
                 "rgb_trns_25x19.png", "rgb_interlaced_35x29.png"):
        kinds[name] = "exact"

    # EXIF orientations (PNG eXIf chunk, lossless): every rotation and flip.
    for orientation in range(2, 9):
        save(f"exif{orientation}_26x17.png", rgb(26, 17), exif=exif_bytes(orientation))

    # GIF: PIL-written palette and grey ("L") files, and hand-made frame layouts.
    save("gif_palette_34x22.gif", Image.fromarray(texture(34, 22, 3)).quantize(32))
    save("gif_grey_ramp_25x30.gif", grey(25, 30))
    palette = bytes(RNG.randint(0, 256, 16 * 3).astype(np.uint8))
    write_gif(OUT_DIR / "gif_offset_frame_30x20.gif", (30, 20), (5, 3, 17, 11),
              RNG.randint(0, 16, (11, 17)), global_palette=palette, transparent=2)
    write_gif(OUT_DIR / "gif_local_palette_18x24.gif", (18, 24), (0, 0, 18, 24),
              RNG.randint(0, 8, (24, 18)), local_palette=bytes(RNG.randint(0, 256, 24).astype(np.uint8)))
    write_gif(OUT_DIR / "gif_frame_past_screen_20x16.gif", (20, 16), (6, 4, 20, 15),
              RNG.randint(0, 16, (15, 20)), global_palette=palette)
    ramp = bytes(v for i in range(256) for v in (i, i, i))  # PIL drops it: mode "L"
    write_gif(OUT_DIR / "gif_identity_ramp_27x19.gif", (27, 19), (0, 0, 27, 19),
              texture(27, 19, 1)[:, :, 0], global_palette=ramp)
    for name in ("gif_offset_frame_30x20.gif", "gif_local_palette_18x24.gif",
                 "gif_frame_past_screen_20x16.gif", "gif_identity_ramp_27x19.gif"):
        kinds[name] = "exact"

    # BMP, TIFF, lossless WebP.
    save("bmp_rgb_33x25.bmp", rgb(33, 25))
    save("bmp_palette_28x19.bmp", Image.fromarray(texture(28, 19, 3)).quantize(20))
    save("bmp_grey_19x26.bmp", grey(19, 26))
    save("bmp_1bit_30x21.bmp", grey(30, 21).convert("1"))
    save("bmp_rgba_21x18.bmp", Image.fromarray(texture(21, 18, 4)))
    save("tiff_rgb_29x23.tif", rgb(29, 23))
    save("tiff_grey_23x29.tiff", grey(23, 29))
    save("tiff_rgba_27x21.tif", Image.fromarray(rgba[:21, :27]))
    save("webp_lossless_rgb_31x24.webp", rgb(31, 24), lossless=True)
    save("webp_lossless_rgba_24x31.webp", Image.fromarray(texture(24, 31, 4)), lossless=True)

    # Lossy formats: decoded by other libraries in Rust, so only close.
    save("jpeg_rgb_45x34.jpg", rgb(45, 34), "lossy", quality=92)
    save("jpeg_grey_34x45.jpg", grey(34, 45), "lossy", quality=92)
    save("jpeg_cmyk_30x30.jpg", rgb(30, 30).convert("CMYK"), "lossy", quality=95)
    save("jpeg_exif6_40x26.jpg", rgb(40, 26), "lossy", quality=92, exif=exif_bytes(6))
    save("webp_lossy_36x28.webp", rgb(36, 28), "lossy", quality=90)
    return kinds


def references(names):
    """The official transform of each source file, plus its EXIF-rotated twin."""
    tensors = {}
    for name in sorted(names):
        for n in SIZES:
            with Image.open(OUT_DIR / name) as im:
                tensors[f"{name}@{n}"] = clip_transform(im, n)
                if im.getexif().get(0x0112, 1) != 1:
                    tensors[f"{name}@{n}@exif"] = clip_transform(ImageOps.exif_transpose(im), n)
    return tensors


def check():
    """Recomputes the committed references from the committed sources."""
    with safe_open(OUT_FILE, "np") as f:
        names = f.metadata()
        want = {key: f.get_tensor(key) for key in f.keys()}
    got = references(names)
    bad = [key for key in want if key not in got or not np.array_equal(want[key], got[key])]
    print(f"Pillow {PIL.__version__}: {len(want) - len(bad)}/{len(want)} references reproduced exactly")
    for key in bad:
        print("  differs:", key)
    return not bad


def main():
    if "--check" in sys.argv:
        raise SystemExit(0 if check() else 1)
    if int(PIL.__version__.split(".")[0]) >= 13:
        raise SystemExit(f"Pillow {PIL.__version__}: use Pillow 11 or 12 (see the docstring)")
    kinds = make_sources()
    tensors = references(kinds)
    save_file(tensors, OUT_FILE, metadata=kinds)
    print(f"{len(kinds)} images, {len(tensors)} tensors -> {OUT_FILE} ({OUT_FILE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
