#!/usr/bin/env bash
# Issue 15: the whole GPU run in one script that needs no editing. Run it on
# the GPU machine from the repository root with .gpu/ carried (made by
# scripts/build-cuda.sh); through the device tool:
#
#   run  carry [".gpu"]  command "bash benches/gpu.sh"  timeout_s 480
#
# It writes every figure as one JSON line to $OUT/results.jsonl (each tagged
# with its "stage"), one status line per stage ({"stage", "status": ok |
# failed | timeout | skipped, "rc", "seconds", "budget_s"}), each stage's
# stdout/stderr to $OUT/<stage>.out/.err, and $OUT/summary.md (written on
# exit, whatever failed). It stops within $DEADLINE_S (default 450 s, under
# the 8 minutes the issue allows): each stage runs under `timeout` with its
# own budget, cut to what is left; a stage that times out is recorded as such
# and the next one runs; stages left after the deadline are recorded as
# skipped. Stages, most important first:
#   gpu-info          nvidia-smi: name, driver, memory
#   parity-fixture    `longclip bench --parity` on tests/fixtures/tiny-longclip.pt
#   parity-<preset>   the same on LongCLIP-B's shapes with random weights (seed 0)
#   coco-gen          `longclip synth --layout coco`: 5,000 640x480 JPEGs, 25,000 captions
#   coco-ckpt         `longclip bench --write-checkpoint`: LongCLIP-B shapes, random weights
#   coco-eval         `longclip eval --dataset coco` on them, timed (goal < 30 s)
#   speed-<m>-<dtype> `longclip bench`, m in b l, dtype in bf16 f16
#   torch-<m>         `benches/torch_bench.py --only gpu` fp16 (skipped without torch)
#
# Smoke run on a machine without a GPU (small sizes, the CPU build):
#   DEVICE=cpu QUICK=1 OUT=/tmp/gpu-smoke benches/gpu.sh
# Settings (environment): OUT (default .gpu/out), DEVICE (cuda), QUICK (0),
# DEADLINE_S (450), PEAK_TFLOPS (dense bf16 peak; default 989 on H100/H200),
# LONGCLIP (the binary; default .gpu/run.sh, else a release or debug build
# under $CARGO_TARGET_DIR or target/), WORK (scratch; default a temp dir,
# removed at exit), REPEAT (files per end-to-end run, 5000).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

start=$(date +%s)
OUT=${OUT:-.gpu/out}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
DEADLINE_S=${DEADLINE_S:-450}
deadline=$((start + DEADLINE_S))
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
results=$OUT/results.jsonl
: > "$results"
if [ -z "${WORK:-}" ]; then
    WORK=$(mktemp -d)
    own_work=1
else
    mkdir -p "$WORK"
    own_work=0
fi

# Sizes: the issue's on the GPU, small ones for a smoke run.
if [ "$QUICK" = 1 ]; then
    presets="demo"; parity_preset=demo; coco_preset=demo
    coco_n=40; batch=8; iters=1; repeat=${REPEAT:-16}; parity_batch=4; torch_seconds=1
else
    presets="longclip-b longclip-l"; parity_preset=longclip-b; coco_preset=longclip-b
    coco_n=5000; batch=256; iters=10; repeat=${REPEAT:-5000}; parity_batch=32; torch_seconds=5
fi
text_tokens=120

find_longclip() {
    if [ -n "${LONGCLIP:-}" ]; then echo "$LONGCLIP"; return; fi
    if [ "$DEVICE" != cpu ] && [ -x .gpu/run.sh ]; then echo "$PWD/.gpu/run.sh"; return; fi
    local t
    for t in "${CARGO_TARGET_DIR:-target}/release/longclip" target/release/longclip \
             "${CARGO_TARGET_DIR:-target}/debug/longclip" target/debug/longclip; do
        if [ -x "$t" ]; then echo "$t"; return; fi
    done
    [ -x .gpu/run.sh ] && echo "$PWD/.gpu/run.sh"
}
longclip=$(find_longclip)

# Appends one JSON object (given as a string) to results.jsonl.
record() { printf '%s\n' "$1" >> "$results"; }

# stage NAME BUDGET_S CMD...: runs CMD under timeout (BUDGET_S, cut to what is
# left before the deadline), tags its JSON stdout lines with the stage and
# appends them to results.jsonl, then records the stage's status.
stage() {
    local name=$1 budget=$2
    shift 2
    local left=$((deadline - $(date +%s) - 5))
    if [ "$left" -lt 5 ]; then
        record "{\"stage\":\"$name\",\"status\":\"skipped\",\"reason\":\"overall deadline of ${DEADLINE_S} s reached\"}"
        return 1
    fi
    [ "$budget" -gt "$left" ] && budget=$left
    echo "== $name (budget ${budget} s)" >&2
    local t0 rc status
    t0=$(date +%s.%N)
    timeout --kill-after=5 "$budget" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
    rc=$?
    local secs
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    grep '^{' "$OUT/$name.out" | sed "s/^{/{\"stage\":\"$name\",/" >> "$results"
    local error=""
    if [ "$status" != ok ]; then
        error=$(grep -v '^==' "$OUT/$name.err" | tail -n 1 | cut -c1-300 | sed 's/\\/\\\\/g; s/"/\\"/g' | tr -d '\000-\037')
        [ "$status" = timeout ] && error="timed out after ${budget} s${error:+; last: $error}"
    fi
    record "{\"stage\":\"$name\",\"status\":\"$status\",\"rc\":$rc,\"seconds\":$secs,\"budget_s\":$budget,\"reason\":\"$error\"}"
    [ "$status" != ok ] && echo "   $status: $error" >&2
    summarize
    return $rc
}

skip() { record "{\"stage\":\"$1\",\"status\":\"skipped\",\"reason\":\"$2\"}"; }

# summary.md from results.jsonl (raw lines if gpu_summary.py fails); run
# after every stage too, so a run killed from outside still leaves one.
summarize() {
    python3 benches/gpu_summary.py "$results" "$OUT/summary.md" 2> "$OUT/summary.err" ||
        { echo "# GPU run: gpu_summary.py failed (summary.err), raw results follow"; echo; sed 's/^/    /' "$results"; } > "$OUT/summary.md"
}

finish() {
    trap - EXIT INT TERM
    summarize
    [ "$own_work" = 1 ] && rm -rf "$WORK"
    echo "results: $results ($(wc -l < "$results") lines), summary: $OUT/summary.md, $(($(date +%s) - start)) s" >&2
}
trap finish EXIT
trap 'exit 130' INT TERM

record "{\"stage\":\"setup\",\"device\":\"$DEVICE\",\"quick\":$QUICK,\"deadline_s\":$DEADLINE_S,\"longclip\":\"${longclip:-none}\",\"host\":\"$(hostname)\",\"nproc\":$(nproc),\"commit\":\"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\"}"
if [ -z "$longclip" ]; then
    skip all "no longclip binary: run scripts/build-cuda.sh and carry .gpu/, or build one (cargo build --release)"
    exit 1
fi

# GPU name, driver and memory; the bf16 dense peak of known parts.
peak=${PEAK_TFLOPS:-}
if [ "$DEVICE" = cpu ]; then
    skip gpu-info "device cpu"
else
    stage gpu-info 15 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader |
        head -n 1 | awk -F", " "{ printf \"{\\\"gpu\\\":\\\"%s\\\",\\\"driver\\\":\\\"%s\\\",\\\"memory\\\":\\\"%s\\\",\\\"max_sm_clock\\\":\\\"%s\\\"}\n\", \$1, \$2, \$3, \$4 }"'
    if [ -z "$peak" ] && grep -q '"gpu":"[^"]*H[12]00' "$OUT/gpu-info.out" 2>/dev/null; then
        peak=989  # H100/H200 SXM: 989 TFLOP/s dense bf16/f16 (NVIDIA's data sheets)
    fi
fi
[ -n "$peak" ] && record "{\"stage\":\"gpu-info\",\"peak_tflops\":$peak}"

# 1. Parity: DEVICE f32 vs CPU f32 (0.9999), f16/bf16 vs DEVICE f32 (0.999), images and texts.
stage parity-fixture 60 "$longclip" bench --parity --model tests/fixtures/tiny-longclip.pt --device "$DEVICE" \
    --parity-batch "$parity_batch" --text-tokens "$text_tokens"
stage "parity-$parity_preset" 90 "$longclip" bench --parity --model "$parity_preset" --device "$DEVICE" \
    --parity-batch "$parity_batch" --text-tokens "$text_tokens"

# 4. COCO-5k: generated JPEGs and captions in the official layout, then eval, timed.
coco=$WORK/coco
stage coco-gen 60 "$longclip" synth --layout coco --out "$coco" --n "$coco_n" --width 640 --height 480 --captions 5
stage coco-ckpt 30 "$longclip" bench --model "$coco_preset" --write-checkpoint "$WORK/$coco_preset.safetensors"
if [ -f "$coco/annotations/captions_val2017.json" ] && [ -f "$WORK/$coco_preset.safetensors" ]; then
    stage coco-eval 90 "$longclip" eval --model "$WORK/$coco_preset.safetensors" --dataset coco --root "$coco" \
        --device "$DEVICE" --batch-size "$batch" --no-cache --paper-model none --json "$OUT/coco-eval.json"
    secs=$(grep '"stage":"coco-eval","status"' "$results" | sed 's/.*"seconds":\([0-9.]*\).*/\1/')
    status=$(grep '"stage":"coco-eval","status"' "$results" | sed 's/.*"status":"\([a-z]*\)".*/\1/')
    record "{\"stage\":\"coco-eval\",\"what\":\"coco eval wall time, $coco_n images, $((coco_n * 5)) captions, decode included\",\"seconds\":${secs:-null},\"status\":\"${status:-unknown}\",\"goal_s\":30,\"ok\":$([ "$status" = ok ] && awk -v s="${secs:-1e9}" 'BEGIN { print (s < 30) ? "true" : "false" }' || echo false)}"
    [ -f "$OUT/coco-eval.json" ] && record "{\"stage\":\"coco-eval\",\"eval\":$(tr -d '\n' < "$OUT/coco-eval.json")}"
else
    skip coco-eval "no generated dataset or checkpoint"
fi

# 2. Speed: longclip bf16/f16 and PyTorch fp16 at LongCLIP-B and -L shapes, same images.
images=.gpu/urban1k
[ -d "$images" ] || images=$coco/val2017
have_torch=0
python3 -c 'import torch, PIL, numpy' 2> /dev/null && have_torch=1
for m in $presets; do
    for dt in bf16 f16; do
        args=(bench --model "$m" --device "$DEVICE" --dtype "$dt" --image-batch "$batch" --text-batch "$batch"
              --text-tokens "$text_tokens" --iters "$iters")
        [ -d "$images" ] && args+=(--images "$images" --repeat "$repeat")
        [ -n "$peak" ] && args+=(--peak-tflops "$peak")
        stage "speed-$m-$dt" 50 "$longclip" "${args[@]}"
    done
    short=${m#longclip-}
    if [ "$have_torch" = 0 ]; then
        skip "torch-$m" "skipped: no torch"
    elif [ "$short" != b ] && [ "$short" != l ]; then
        skip "torch-$m" "skipped: torch_bench.py has no $m shape"
    else
        targs=(--only gpu --model "$short" --image-batch "$batch" --text-batch "$batch" --text-tokens "$text_tokens"
               --seconds "$torch_seconds" --workers "$(nproc)" --threads "$(nproc)")
        if [ "$DEVICE" = cpu ]; then targs+=(--device cpu --dtype fp32); else targs+=(--device cuda --dtype fp16); fi
        [ -d "$images" ] && targs+=(--images "$images" --repeat "$repeat")
        stage "torch-$m" 70 python3 benches/torch_bench.py "${targs[@]}"
    fi
done
exit 0
