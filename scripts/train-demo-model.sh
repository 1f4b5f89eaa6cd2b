#!/usr/bin/env bash
# Makes assets/demo/longclip-demo.safetensors: a small Long-CLIP (ViT 96 px,
# patch 16, width 128, 4 layers; text width 64, 4 layers, 248 positions;
# embed 64) trained from random weights by `longclip finetune` on 30,000
# `longclip synth` scenes (seed 1000; the demo's held-out scenes use another
# seed), half of the long captions of each step cut at a random token length
# (--cut-share 0.5) so the model learns to read a caption's beginning too. CPU, one thread (candle's thread pool spins on a busy 2-core
# machine; one thread was twice as fast there). tests/demo.rs reruns the
# first two steps and checks their losses against the committed log.
#
#   scripts/train-demo-model.sh [WORK_DIR]    (default /tmp/longclip-demo-train)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/longclip-demo-train}
mkdir -p "$work"
cd "$repo"
cargo build --release --bin longclip --example random_checkpoint --example pack_demo_model
bin=${CARGO_TARGET_DIR:-$repo/target}/release
"$bin/examples/random_checkpoint" demo "$work/init.safetensors"
"$bin/longclip" synth --out "$work/train" --n 30000 --seed 1000 --hard 0.5 --pool 8
RAYON_NUM_THREADS=1 nice -n 10 "$bin/longclip" finetune --model "$work/init.safetensors" --data "urban1k:$work/train" \
    --out "$work/run" --epochs 4 --batch-size 64 --lr 1e-3 --warmup 100 --log-scale 2.6593 --pca-group 0 \
    --cut-share 0.5 --save-every 200 --keep 3 --seed 0 --quiet
"$bin/examples/pack_demo_model" "$work/run/model.safetensors" assets/demo/longclip-demo.safetensors.gz
cp "$work/run/log.jsonl" assets/demo/train-log.jsonl
cp "$work/run/train.json" assets/demo/train.json
