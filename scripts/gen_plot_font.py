#!/usr/bin/env python3
"""Render the bitmap font the probe plot's PNG writer uses (src/plot.rs).

Writes assets/plot_font.png, an 8-bit alpha atlas of printable ASCII in
DejaVu Sans at 13 px (antialiased), and assets/plot_font.txt, one line per
glyph: code x y width height x_offset y_offset advance (pixels; y_offset
from the baseline up to the bitmap's top, positive upwards). DejaVu fonts:
Bitstream Vera license (free to use, modify and redistribute).

usage: gen_plot_font.py [TTF]  (needs Pillow)
"""
import sys

from PIL import Image, ImageDraw, ImageFont

TTF = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
SIZE = 13
COLUMNS = 16

font = ImageFont.truetype(TTF, SIZE)
ascent, descent = font.getmetrics()
cell_w, cell_h = SIZE + 6, ascent + descent + 2
codes = list(range(32, 127))
rows = (len(codes) + COLUMNS - 1) // COLUMNS
atlas = Image.new("L", (COLUMNS * cell_w, rows * cell_h), 0)
lines = [f"# size {SIZE} ascent {ascent} descent {descent}"]
for n, code in enumerate(codes):
    ch = chr(code)
    cx, cy = (n % COLUMNS) * cell_w, (n // COLUMNS) * cell_h
    glyph = Image.new("L", (cell_w * 2, cell_h * 2), 0)
    # Baseline at y = ascent + 2 inside the scratch image, pen at x = 2.
    ImageDraw.Draw(glyph).text((2, 2), ch, fill=255, font=font)
    box = glyph.getbbox()
    advance = round(font.getlength(ch))
    if box is None:
        lines.append(f"{code} {cx} {cy} 0 0 0 0 {advance}")
        continue
    x0, y0, x1, y1 = box
    w, h = min(x1 - x0, cell_w), min(y1 - y0, cell_h)
    atlas.paste(glyph.crop((x0, y0, x0 + w, y0 + h)), (cx, cy))
    lines.append(f"{code} {cx} {cy} {w} {h} {x0 - 2} {ascent + 2 - y0} {advance}")
atlas.save("assets/plot_font.png", optimize=True)
open("assets/plot_font.txt", "w").write("\n".join(lines) + "\n")
print(f"assets/plot_font.png: {atlas.size}, {len(codes)} glyphs")
