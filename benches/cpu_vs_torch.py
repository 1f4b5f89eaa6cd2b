#!/usr/bin/env python3
r"""longclip's CPU towers against PyTorch's, in alternating rounds of one run.

A shared or virtual machine drifts by 20-30% over minutes, more than the
differences being measured, so each round times `longclip bench` (every
--dtypes) and then benches/torch_bench.py, back to back, and the ratio is
taken within the round. Prints one JSON object per round and a summary of
each ratio's median and range over the rounds, and the ratio of each side's
best round (the least disturbed one).

usage: python3 benches/cpu_vs_torch.py --longclip target/release/longclip \
           [--rounds 3] [--threads 2] [--dtypes f32,bf16,int8]
needs: what benches/torch_bench.py needs (torch, numpy)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


DTYPES = ("f32", "bf16", "int8", "f16", "auto")


def run(cmd, env=None):
    """stdout of `cmd`; on failure, exits with its command line and stderr."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"cpu_vs_torch: {' '.join(cmd)} failed (exit {done.returncode}):\n{done.stderr.strip()}")
    return done.stdout


def longclip(binary, dtype, threads):
    """{"image": images/s, "text": texts/s} from one `longclip bench` run."""
    cmd = [binary, "bench", "--model", "longclip-b", "--device", "cpu", "--dtype", dtype,
           "--image-batch", "8", "--text-batch", "32", "--text-tokens", "120", "--iters", "3"]
    out = run(cmd, dict(os.environ, RAYON_NUM_THREADS=str(threads)))
    got = {}
    for line in out.splitlines():
        row = json.loads(line) if line.startswith("{") else {}
        what = row.get("what", "")
        if what.startswith("vision tower"):
            got["image"] = row["per_second"]
        elif what.startswith("text 120 tokens"):
            got["text"] = row["per_second"]
    return got


def torch(threads, seconds):
    """PyTorch's image and trimmed 120-token text throughput."""
    cmd = [sys.executable, os.path.join(HERE, "torch_bench.py"), "--only", "encoders",
           "--threads", str(threads), "--seconds", str(seconds)]
    out = run(cmd)
    got = {}
    for line in out.splitlines():
        row = json.loads(line) if line.startswith("{") else {}
        if row.get("what") == "image 224 px, batch 8":
            got["image"] = row["per_second"]
        elif row.get("what") == "text 120 tokens, batch 32, trimmed":
            got["text"] = row["per_second"]
    return got


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--longclip", required=True, help="the release binary")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8.0, help="PyTorch's time per measurement")
    p.add_argument("--dtypes", default="f32,bf16,int8")
    a = p.parse_args()
    if not (os.path.isfile(a.longclip) and os.access(a.longclip, os.X_OK)):
        sys.exit(f"cpu_vs_torch: {a.longclip} is not an executable file (build with cargo build --release)")
    dtypes = [d.strip().lower() for d in a.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        sys.exit(f"cpu_vs_torch: unknown --dtypes {','.join(bad) or a.dtypes!r} (choose from {', '.join(DTYPES)})")
    if a.rounds < 1 or a.threads < 1 or a.seconds <= 0:
        sys.exit("cpu_vs_torch: --rounds and --threads must be at least 1, --seconds positive")
    try:
        import torch  # noqa: F401  (benches/torch_bench.py needs it; fail before minutes of longclip runs)
    except ImportError:
        sys.exit(f"cpu_vs_torch: {sys.executable} has no torch; run it with a Python that has torch and numpy")
    ratios, best_ours, best_peer = {}, {}, {}
    for r in range(a.rounds):
        ours = {d: longclip(a.longclip, d, a.threads) for d in dtypes}
        peer = torch(a.threads, a.seconds)
        row = {"round": r + 1, "torch": peer, "longclip": ours, "ratio": {}}
        for d in dtypes:
            for tower in ("image", "text"):
                if tower in ours[d] and tower in peer:
                    key = f"{tower} {d}"
                    row["ratio"][key] = round(ours[d][tower] / peer[tower], 3)
                    ratios.setdefault(key, []).append(ours[d][tower] / peer[tower])
                    best_ours[key] = max(best_ours.get(key, 0.0), ours[d][tower])
                    best_peer[key] = max(best_peer.get(key, 0.0), peer[tower])
        print(json.dumps(row), flush=True)
    print(f"\nratio to PyTorch f32, {a.threads} threads: median of {a.rounds} rounds' ratios (range); best of ours / best of PyTorch's")
    for key, values in ratios.items():
        best = f"{best_ours[key]:.2f} / {best_peer[key]:.2f} = {best_ours[key] / best_peer[key]:.2f}x"
        print(f"  {key:11} {statistics.median(values):.2f}x  ({min(values):.2f}-{max(values):.2f});  {best}")


if __name__ == "__main__":
    main()
