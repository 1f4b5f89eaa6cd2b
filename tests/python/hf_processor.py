#!/usr/bin/env python3
"""Loads a `longclip convert` directory in real transformers, with
`from_pretrained` alone, and compares its features with longclip's
(used by tests/convert.rs).

    hf_processor.py --hf DIR --images DIR --captions captions.json \
        --image-features img.npy --text-features txt.npy --ids ids.json

The images are the files of --images in path order (what `longclip embed
--images DIR` reads); the captions are a JSON array of strings. The .npy
files are `longclip embed` output: float32 [N, D], L2-normalized.

Images go through `CLIPProcessor` (its `CLIPImageProcessor`, from
preprocessor_config.json) and `CLIPModel.get_image_features`; captions go
through `CLIPProcessor` (its tokenizer, from tokenizer_config.json, vocab.json
and merges.txt), one at a time with no padding, truncated at the model's
positions, and `CLIPModel.get_text_features`. The fast tokenizer is loaded
too and must give the same ids.

Two known differences from the official pipeline, both in transformers
itself, not in the directory, are measured apart:
- transformers' CLIP tokenizer does not run the official cleaning (ftfy's
  fix_text, HTML unescaped twice, whitespace collapsed), so captions with
  entities, mojibake, curly quotes or full-width punctuation get other ids.
  The text features are computed on the officially cleaned captions (what a
  user must do first); "raw_id_mismatches" lists the captions whose raw ids
  differ from ours (--ids, `longclip tokenize` output).
- transformers' center crop starts at floor((h - R) / 2), torchvision's at
  round((h - R) / 2), one pixel apart when the margin is odd.
  "image_cos_torchvision_crop" is CLIPModel on transformers' own resize and
  normalization, cropped at torchvision's offset.

Output (standard output, one JSON object):
    {"transformers": "...", "torch": "...",
     "image_cos": [...], "text_cos": [...], "image_min_cos": x, "text_min_cos": y,
     "image_cos_torchvision_crop": [...], "crop_margins": [[dh, dw], ...],
     "text_tokens": [...], "raw_id_mismatches": [i, ...], "clean_id_mismatches": [...],
     "model_max_length": n, "crop_size": {...}, "size": {...}}
"""

import argparse
import html
import json
import os
import re

import ftfy

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import CLIPModel, CLIPProcessor, CLIPTokenizerFast

EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def image_paths(folder):
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            if os.path.splitext(name)[1].lower() in EXTENSIONS:
                found.append(os.path.join(root, name))
    return sorted(found)


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def row_cos(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return [float(v) for v in (unit(a) * unit(b)).sum(-1)]


def official_clean(text):
    """open_clip / Long-CLIP's basic_clean + whitespace_clean (before lowercase)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def features(out):
    # transformers 5 may return an output object rather than a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--captions", required=True)
    ap.add_argument("--image-features", required=True)
    ap.add_argument("--text-features", required=True)
    ap.add_argument("--ids", required=True)
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    model = CLIPModel.from_pretrained(args.hf).eval()
    processor = CLIPProcessor.from_pretrained(args.hf)
    fast = CLIPTokenizerFast.from_pretrained(args.hf)
    max_len = processor.tokenizer.model_max_length

    paths = image_paths(args.images)
    images = [Image.open(p).convert("RGB") for p in paths]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    image = features(model.get_image_features(pixel_values=pixels))
    ours_image = np.load(args.image_features)
    size = processor.image_processor.crop_size["height"]
    tv_rows, margins = [], []
    for im in images:
        full = processor.image_processor(images=[im], do_center_crop=False, return_tensors="np")["pixel_values"][0]
        h, w = full.shape[-2:]
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        margins.append([h - size, w - size])
        crop = torch.from_numpy(np.ascontiguousarray(full[:, top:top + size, left:left + size]))[None]
        tv_rows.append(features(model.get_image_features(pixel_values=crop))[0].numpy())

    with open(args.captions, encoding="utf-8") as f:
        captions = json.load(f)
    with open(args.ids, encoding="utf-8") as f:
        our_ids = json.load(f)
    text_rows, lengths, raw_mismatch, clean_mismatch = [], [], [], []
    for i, caption in enumerate(captions):
        raw = processor.tokenizer([caption], truncation=True, max_length=max_len)["input_ids"][0]
        if raw != our_ids[i]:
            raw_mismatch.append(i)
        clean = official_clean(caption)
        enc = processor(text=[clean], return_tensors="pt", truncation=True, max_length=max_len)
        ids = enc["input_ids"]
        fast_ids = fast([clean], truncation=True, max_length=max_len)["input_ids"]
        if fast_ids[0] != ids[0].tolist():
            raise SystemExit(f"CLIPTokenizerFast and CLIPTokenizer disagree on {clean!r}")
        if ids[0].tolist() != our_ids[i]:
            clean_mismatch.append(i)
        lengths.append(int(ids.shape[1]))
        t = features(model.get_text_features(input_ids=ids, attention_mask=enc["attention_mask"]))
        text_rows.append(t[0].numpy())
    ours_text = np.load(args.text_features)

    image_cos = row_cos(image.numpy(), ours_image)
    tv_cos = row_cos(np.stack(tv_rows), ours_image)
    text_cos = row_cos(np.stack(text_rows), ours_text)
    print(json.dumps({
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "images": [os.path.basename(p) for p in paths],
        "image_cos": image_cos,
        "text_cos": text_cos,
        "image_min_cos": min(image_cos),
        "image_cos_torchvision_crop": tv_cos,
        "crop_margins": margins,
        "text_min_cos": min(text_cos),
        "text_tokens": lengths,
        "raw_id_mismatches": raw_mismatch,
        "clean_id_mismatches": clean_mismatch,
        "model_max_length": max_len,
        "crop_size": dict(processor.image_processor.crop_size),
        "size": dict(processor.image_processor.size),
    }))


if __name__ == "__main__":
    main()
