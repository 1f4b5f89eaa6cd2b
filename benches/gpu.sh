#!/usr/bin/env bash
# Issue 6, on the GPU machine: parity of CUDA against CPU, then longclip vs
# PyTorch fp16 throughput in the same run. Needs .gpu/ from
# scripts/build-cuda.sh (carried by the device tool). Writes JSON lines to
# ${OUT:-.gpu/out}/gpu-bench.jsonl and prints them.
#
#   benches/gpu.sh [REPEAT=10000] [PEAK_TFLOPS=800]
set -euo pipefail
cd "$(dirname "$0")/.."
repeat=${1:-10000}
peak=${2:-800}
out=${OUT:-.gpu/out}
mkdir -p "$out"
log=$out/gpu-bench.jsonl
: > "$log"
run() { .gpu/run.sh "$@"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

# Parity on the reference fixture: CUDA f32 vs CPU f32 (cos >= 0.9999),
# f16/bf16 vs f32 (cos >= 0.999), texts and images.
tmp=$(mktemp -d)
for what in images texts; do
    src=tests/fixtures/images
    [ "$what" = texts ] && src=tests/fixtures/sample-captions.txt
    for d in cpu:f32 cuda:f32 cuda:f16 cuda:bf16; do
        run embed --model tests/fixtures/tiny-longclip.pt --"$what" "$src" \
            --device "${d%%:*}" --dtype "${d##*:}" --out "$tmp/$what-${d/:/-}.npy" 2>/dev/null
    done
done
python3 - "$tmp" <<'PY' | tee -a "$log"
import json, sys, numpy as np
d = sys.argv[1]
for what in ("images", "texts"):
    ref = np.load(f"{d}/{what}-cpu-f32.npy").astype(np.float64)
    for run, bound in (("cuda-f32", 0.9999), ("cuda-f16", 0.999), ("cuda-bf16", 0.999)):
        x = np.load(f"{d}/{what}-{run}.npy").astype(np.float64)
        base = ref if run == "cuda-f32" else np.load(f"{d}/{what}-cuda-f32.npy").astype(np.float64)
        cos = (x * base).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(base, axis=1)
        print(json.dumps({"parity": what, "run": run, "vs": "cpu-f32" if run == "cuda-f32" else "cuda-f32",
                          "min_cos": float(cos.min()), "bound": bound, "ok": bool(cos.min() >= bound)}))
PY

# Throughput: longclip (bf16 and f16) and PyTorch fp16, LongCLIP-B and -L shapes.
for m in b l; do
    for dt in bf16 f16; do
        run bench --model "longclip-$m" --device cuda --dtype "$dt" --image-batch 256 --text-batch 256 \
            --text-tokens 120 --images .gpu/urban1k --repeat "$repeat" --peak-tflops "$peak" | tee -a "$log"
    done
    python3 benches/torch_bench.py --only gpu --device cuda --dtype fp16 --model "$m" --image-batch 256 \
        --text-batch 256 --text-tokens 120 --images .gpu/urban1k --repeat "$repeat" --workers "$(nproc)" | tee -a "$log"
done
rm -rf "$tmp"
