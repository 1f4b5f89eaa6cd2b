#!/usr/bin/env python3
"""The same work as benches/*.rs, timed in PyTorch the way the official code does it.

Builds LongCLIP-B shapes (ViT-B/16 image tower, 12-layer 512-wide text tower,
248 positions) with the official architecture (nn.MultiheadAttention,
fp32 LayerNorm, QuickGELU) and random weights, and times:
  - the text encoder on batches of 32 captions of 120, 248 and 77 tokens, both
    padded to 248 as the official `tokenize` always does, and trimmed;
  - the image encoder on batches of 8 images at 224 px;
  - official preprocessing (PIL bicubic resize, center crop, normalize) on the
    fixture images;
  - the official tokenizer (ftfy + BPE) on the fixture captions, if the
    tokenizer script is importable.
Prints one JSON object per measurement: {"what", "per_second", "unit"}.

With --only gpu (issue 6; the counterpart of `longclip bench`): the vision
tower alone on a batch of --image-batch preprocessed images, the text tower
at --text-tokens tokens (padded to 248 as the official code does, and
trimmed), and end to end from image files (--images DIR, cycled to --repeat
files) with a DataLoader of --workers processes doing the official PIL
preprocessing, for --model b (LongCLIP-B) or l (LongCLIP-L).

usage: python3 benches/torch_bench.py [--threads 2] [--device cpu|cuda] [--dtype fp32|fp16]
       python3 benches/torch_bench.py --only gpu --device cuda --dtype fp16 --model b \
           --image-batch 256 --text-batch 256 --images DIR --repeat 10000 --workers 16
needs: torch, numpy, pillow (ftfy, regex for the tokenizer)
"""
import argparse
import json
import os
import sys
import time
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LayerNorm(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.type(torch.float32)).type(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    def __init__(self, width, heads, mask=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = LayerNorm(width)
        self.mask = mask

    def forward(self, x):
        mask = None if self.mask is None else self.mask[: x.shape[0], : x.shape[0]].to(x.dtype)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Text(nn.Module):
    def __init__(self, width=512, layers=12, heads=8, ctx=248, vocab=49408, embed=512):
        super().__init__()
        mask = torch.full((ctx, ctx), float("-inf")).triu_(1)
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(ctx, width) * 0.01)
        self.blocks = nn.Sequential(*[Block(width, heads, mask) for _ in range(layers)])
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed) * width ** -0.5)

    def forward(self, ids):
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]].to(self.text_projection.dtype)
        x = self.blocks(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ self.text_projection


class Vision(nn.Module):
    def __init__(self, res=224, patch=16, width=768, layers=12, heads=12, embed=512):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn((res // patch) ** 2 + 1, width) * width ** -0.5)
        self.ln_pre = LayerNorm(width)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, embed) * width ** -0.5)

    def forward(self, x):
        x = self.conv1(x.type(self.proj.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
        x = torch.cat([cls, x], 1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.blocks(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


SHAPES = {  # text width, heads; vision patch, width, layers, heads; embed
    "b": dict(text=(512, 8), vision=(16, 768, 12, 12), embed=512),
    "l": dict(text=(768, 12), vision=(14, 1024, 24, 16), embed=768),
}


def build(model, dev, dtype):
    s = SHAPES[model]
    (tw, th), (patch, vw, vl, vh) = s["text"], s["vision"]
    text = Text(width=tw, heads=th, embed=s["embed"])
    vision = Vision(patch=patch, width=vw, layers=vl, heads=vh, embed=s["embed"])
    text, vision = text.to(dev, dtype).eval(), vision.to(dev, dtype).eval()
    for m in (text, vision):
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.float()
    return text, vision


class Files(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return preprocess(self.paths[i])


def bench_gpu(args):
    dev, dtype = args.device, torch.float16 if args.dtype == "fp16" else torch.float32
    text, vision = build(args.model, dev, dtype)
    with torch.no_grad():
        n = args.image_batch
        pixels = torch.randn(n, 3, 224, 224, device=dev)
        runs, secs = timed(lambda: (vision(pixels), sync(dev)), args.seconds)
        report(f"vision tower, batch {n}", n, runs, secs, "images/s")
        b, length = args.text_batch, args.text_tokens
        ids = torch.randint(1, 49000, (b, length), device=dev)
        ids[:, 0], ids[:, -1] = 49406, 49407
        padded = torch.zeros(b, 248, dtype=ids.dtype, device=dev)
        padded[:, :length] = ids
        for name, batch in (("padded to 248 (official)", padded), ("trimmed", ids)):
            runs, secs = timed(lambda: (text(batch), sync(dev)), args.seconds)
            report(f"text {length} tokens, batch {b}, {name}", b, runs, secs, "texts/s")
        if args.images:
            exts = (".jpg", ".jpeg", ".png", ".webp")
            found = sorted(os.path.join(args.images, f) for f in os.listdir(args.images) if f.lower().endswith(exts))
            paths = [found[i % len(found)] for i in range(max(args.repeat, len(found)))]
            loader = torch.utils.data.DataLoader(Files(paths), batch_size=n, num_workers=args.workers, pin_memory=dev == "cuda")
            start, count = time.perf_counter(), 0
            for x in loader:
                vision(x.to(dev, non_blocking=True))
                count += x.shape[0]
            sync(dev)
            report(f"end to end from files, batch {n}, {args.workers} workers", count, 1, time.perf_counter() - start, "images/s")


def timed(fn, seconds=10.0, min_runs=3):
    fn()  # warm up
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < seconds:
        fn()
        runs += 1
    return runs, time.perf_counter() - start


def report(what, items, runs, secs, unit):
    print(json.dumps({"what": what, "per_second": round(items * runs / secs, 2), "unit": unit}), flush=True)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def bench_encoders(args):
    dev, dtype = args.device, torch.float16 if args.dtype == "fp16" else torch.float32
    text, vision = Text().to(dev, dtype).eval(), Vision().to(dev, dtype).eval()
    for m in (text, vision):
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.float()
    with torch.no_grad():
        for length in (120, 248, 77):
            ids = torch.randint(1, 49000, (32, length), device=dev)
            ids[:, 0], ids[:, -1] = 49406, 49407
            padded = torch.zeros(32, 248, dtype=ids.dtype, device=dev)
            padded[:, :length] = ids
            for name, batch in (("padded to 248 (official)", padded), ("trimmed", ids)):
                if length == 248 and name == "trimmed":
                    continue
                runs, secs = timed(lambda: (text(batch), sync(dev)), args.seconds)
                report(f"text {length} tokens, batch 32, {name}", 32, runs, secs, "texts/s")
        n = args.image_batch
        pixels = torch.randn(n, 3, 224, 224, device=dev)
        runs, secs = timed(lambda: (vision(pixels), sync(dev)), args.seconds)
        report(f"image 224 px, batch {n}", n, runs, secs, "images/s")


def preprocess(path, n_px=224):
    """The official transform: Resize (shortest side, bicubic), CenterCrop, RGB, ToTensor, Normalize."""
    from PIL import Image

    im = Image.open(path)
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = n_px, int(n_px * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    im = im.resize(size, Image.BICUBIC)
    w, h = im.size
    top, left = int(round((h - n_px) / 2.0)), int(round((w - n_px) / 2.0))
    im = im.crop((left, top, left + n_px, top + n_px)).convert("RGB")
    x = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)[:, None, None]
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)[:, None, None]
    return torch.from_numpy((x - mean) / std)


def bench_preprocess(args):
    d = os.path.join(ROOT, "tests", "fixtures", "images")
    paths = sorted(os.path.join(d, f) for f in os.listdir(d))
    runs, secs = timed(lambda: [preprocess(p) for p in paths], args.seconds)
    report("preprocess fixture images 224 px, one process", len(paths), runs, secs, "images/s")


def bench_tokenizer(args):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        from gen_tokenizer_cases import SimpleTokenizer
    except Exception as e:  # ftfy/regex missing, or the script moved
        print(json.dumps({"what": "tokenizer", "skipped": str(e)}))
        return
    tok = SimpleTokenizer()
    captions = json.load(open(os.path.join(ROOT, "tests", "fixtures", "captions.json")))
    runs, secs = timed(lambda: [tok.encode(c) for c in captions], args.seconds)
    report("tokenizer fixture captions, official simple_tokenizer", len(captions), runs, secs, "captions/s")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--image-batch", type=int, default=8)
    p.add_argument("--only", default="all", help="all, encoders, preprocess, tokenizer or gpu")
    p.add_argument("--model", default="b", choices=sorted(SHAPES))
    p.add_argument("--text-batch", type=int, default=256)
    p.add_argument("--text-tokens", type=int, default=120)
    p.add_argument("--images", default=None)
    p.add_argument("--repeat", type=int, default=0)
    p.add_argument("--workers", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device}))
    if args.only == "gpu":
        bench_gpu(args)
        return
    if args.only in ("all", "tokenizer"):
        bench_tokenizer(args)
    if args.only in ("all", "preprocess"):
        bench_preprocess(args)
    if args.only in ("all", "encoders"):
        bench_encoders(args)


if __name__ == "__main__":
    main()
