#!/usr/bin/env python3
"""Generate tests/fixtures/stretch_cases.json: knowledge-preserved stretching
(KPS) for several keep lengths K and interpolation ratios R.

The official `load_from_clip` (Long-CLIP, model/longclip.py) hard-codes
keep_len = 20 and the ratio 4 and runs on the model's dtype (fp16 after
`convert_weights`). Below is the same loop generalized in K and R, in numpy
fp16 (each op rounded to half, as torch does on a half tensor) and, for a
Long-CLIP table stored in f32, in float32:

    new[i]             = pre[i]                               for i < K
    new[R*i + K]       = pre[i + K]                           for i < L-1-K
    new[R*i + j + K]   = (R-j)*pre[i+K]/R + j*pre[i+1+K]/R    for 0 < j < R
    new[new_len-R + j] = pre[L-1] + j*(pre[L-1] - pre[L-2])/R for j < R

with new_len = R*L - (R-1)*K = K + (L-K)*R. K = 20, R = 4 is the official
code line for line (3*a/4 + 1*b/4, ..., + 0*(...)/4).

Each case stores its input and output as IEEE bit patterns (u16 for fp16,
u32 for f32), so the Rust test compares bit for bit.

    python3 scripts/gen_stretch_cases.py   (numpy >= 1.20)
"""
import json
import os

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "stretch_cases.json")


def stretch(pre, keep, ratio):
    """The official load_from_clip loop, generalized in keep and ratio."""
    dt = pre.dtype.type
    length, dim = pre.shape
    r = dt(ratio)
    new = np.zeros([ratio * length - (ratio - 1) * keep, dim], dtype=pre.dtype)
    for i in range(keep):
        new[i] = pre[i]
    for i in range(length - 1 - keep):
        new[ratio * i + keep] = pre[i + keep]
        for j in range(1, ratio):
            new[ratio * i + j + keep] = dt(ratio - j) * pre[i + keep] / r + dt(j) * pre[i + 1 + keep] / r
    n = new.shape[0]
    for j in range(ratio):
        new[n - ratio + j] = pre[length - 1] + dt(j) * (pre[length - 1] - pre[length - 2]) / r
    return new


def bits(a):
    return a.view(np.uint16 if a.dtype == np.float16 else np.uint32).reshape(-1).tolist()


def main():
    rng = np.random.default_rng(13)
    cases = []
    # (rows, width, keep, ratio, dtype): CLIP's 77 rows in fp16 as load_from_clip,
    # and a "Long-CLIP" table stretched again (fp16, and f32 as a fine-tuned one).
    specs = [
        (77, 2, 20, 4, np.float16),
        (77, 1, 10, 2, np.float16),
        (77, 1, 20, 6, np.float16),
        (77, 1, 30, 3, np.float16),
        (77, 1, 0, 2, np.float16),
        (77, 1, 20, 1, np.float16),
        (77, 1, 75, 5, np.float16),
        (60, 1, 20, 3, np.float16),
        (60, 2, 20, 4, np.float32),
        (60, 1, 33, 7, np.float32),
    ]
    for rows, width, keep, ratio, dtype in specs:
        # CLIP's positional rows are ~N(0, 0.01); a wider spread exercises more exponents.
        pre = (rng.standard_normal((rows, width)) * rng.choice([0.01, 0.3, 4.0], size=(rows, 1))).astype(dtype)
        out = stretch(pre, keep, ratio)
        assert out.shape[0] == keep + (rows - keep) * ratio
        cases.append({
            "keep": keep,
            "ratio": ratio,
            "dtype": "f16" if dtype == np.float16 else "f32",
            "rows": rows,
            "width": width,
            "input": bits(pre),
            "output": bits(out),
        })
    with open(OUT, "w") as f:
        json.dump({"generator": "scripts/gen_stretch_cases.py", "numpy": np.__version__, "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} cases, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
