#!/usr/bin/env python3
"""End to end against the official Long-CLIP code, in the same run (issue 16).

The work: embed the first --n-texts Urban1k captions and --n-images Urban1k
photos with a LongCLIP-B-shaped checkpoint, load included, the way the
official eval does it (`eval/retrieval/Urban1k.py`: `longclip.load`, one
`tokenize(..., truncate=True)` + `encode_text` for all captions, then
`preprocess` + `encode_image` one photo at a time), and the same with
`longclip embed --texts` / `--images` (a fresh process each, so load, tokenize
and decode are counted).

The checkpoint is the official architecture (`model_longclip.CLIP` at
LongCLIP-B shapes, fp16 weights as released) with random weights, saved with
`torch.save(state_dict)`: both sides load the same file. Speed does not depend
on the values.

usage: python3 benches/official_e2e.py --official DIR --urban DIR --longclip BIN
           [--n-texts 150] [--n-images 40] [--threads 2] [--dtype f32] [--work DIR]
  DIR of --official: a clone of github.com/beichenzbc/Long-CLIP (its model/).
needs: torch, torchvision, pillow, ftfy, regex, tqdm, setuptools (pkg_resources).
Prints one JSON object per measurement and a ratio table.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--official", required=True)
    p.add_argument("--urban", required=True, help="Urban1k folder with image/ and caption/")
    p.add_argument("--longclip", required=True, help="the longclip binary (release build)")
    p.add_argument("--n-texts", type=int, default=150)
    p.add_argument("--n-images", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="f32", help="longclip's --dtype (f32, bf16, int8)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "longclip-official-e2e"))
    p.add_argument("--repeat", type=int, default=3, help="runs per side; the best is kept")
    return p.parse_args()


def urban_items(root, n_texts, n_images):
    names = sorted(os.listdir(os.path.join(root, "caption")), key=lambda s: int(s.split(".")[0]))
    captions = []
    for name in names[:n_texts]:
        with open(os.path.join(root, "caption", name), encoding="utf-8") as f:
            captions.append(f.readlines()[0].rstrip("\n"))
    images = [os.path.join(root, "image", n[:-4] + ".jpg") for n in names[:n_images]]
    return captions, images


def make_checkpoint(official, path):
    if os.path.exists(path):
        return
    import torch
    sys.path.insert(0, official)
    from model.model_longclip import CLIP, convert_weights
    torch.manual_seed(0)
    model = CLIP(512, 224, 12, 768, 16, 248, 49408, 512, 8, 12, load_from_clip=False)
    convert_weights(model)
    tmp = path + ".tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


def official_text(official, ckpt, captions):
    import torch
    sys.path.insert(0, official)
    from model import longclip
    start = time.perf_counter()
    model, _ = longclip.load(ckpt, device="cpu")
    model.eval()
    with torch.no_grad():
        feats = model.encode_text(longclip.tokenize(captions, truncate=True))
    assert feats.shape[0] == len(captions)
    return time.perf_counter() - start


def official_image(official, ckpt, images):
    import torch
    from PIL import Image
    sys.path.insert(0, official)
    from model import longclip
    start = time.perf_counter()
    model, preprocess = longclip.load(ckpt, device="cpu")
    model.eval()
    with torch.no_grad():
        feats = [model.encode_image(preprocess(Image.open(p)).unsqueeze(0)) for p in images]
    assert len(feats) == len(images)
    return time.perf_counter() - start


def longclip_run(binary, ckpt, flag, listing, out, dtype, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [binary, "embed", "--model", ckpt, flag, listing, "--out", out, "--dtype", dtype]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    args = parse()
    import torch
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    ckpt = os.path.join(args.work, "longclip-b-random.pt")
    make_checkpoint(args.official, ckpt)
    captions, images = urban_items(args.urban, args.n_texts, args.n_images)
    texts_file = os.path.join(args.work, "captions.txt")
    with open(texts_file, "w", encoding="utf-8") as f:
        f.write("\n".join(captions) + "\n")
    images_file = os.path.join(args.work, "images.txt")
    with open(images_file, "w", encoding="utf-8") as f:
        f.write("\n".join(images) + "\n")

    rows = {}
    for _ in range(args.repeat):
        for key, seconds in [
            ("official text", official_text(args.official, ckpt, captions)),
            ("official image", official_image(args.official, ckpt, images)),
            ("longclip text", longclip_run(args.longclip, ckpt, "--texts", texts_file, os.path.join(args.work, "t.npy"), args.dtype, args.threads)),
            ("longclip image", longclip_run(args.longclip, ckpt, "--images", images_file, os.path.join(args.work, "i.npy"), args.dtype, args.threads)),
        ]:
            rows[key] = min(rows.get(key, float("inf")), seconds)
    for key, seconds in rows.items():
        print(json.dumps({"what": f"{key}, end to end", "seconds": round(seconds, 3), "threads": args.threads,
                          "dtype": args.dtype if key.startswith("longclip") else "f32"}))
    print(f"\n| work | longclip ({args.dtype}) | official | ratio |\n|---|---|---|---|")
    for what, n in [("text", len(captions)), ("image", len(images))]:
        ours, theirs = rows[f"longclip {what}"], rows[f"official {what}"]
        print(f"| {n} Urban1k {what}s, load included | {ours:.2f} s | {theirs:.2f} s | {theirs / ours:.2f}x |")


if __name__ == "__main__":
    main()
