#!/usr/bin/env bash
# Build the CUDA binary here (where cargo reaches the registries) and pack it
# for the GPU machine (which has a driver and PyTorch's CUDA libraries, but
# no Rust toolchain and no network).
#
#   scripts/build-cuda.sh            # -> .gpu/longclip.zst (+ .gpu/run.sh)
#   scripts/build-cuda.sh --check    # type-check the cuda feature only, no toolkit needed
#   scripts/build-cuda.sh --size     # only check that .gpu/ fits the 64 MiB carry limit
#
# The toolkit comes from NVIDIA's CUDA 13.0 wheels via ../shared/scripts/cuda-env.sh
# (about 650 MB once, under $CUDA_WHEELS_ROOT). Kernels are PTX for sm_90a
# (H100/H200); the first build takes ~12 min on 2 cores. The CUDA build uses
# its own target dir (target/cuda) so it never invalidates the CPU build.
# .gpu/ is git-ignored; pass it to the device tool's `carry` (64 MiB at most:
# the build fails if .gpu/ is larger), then on the GPU machine run
# `.gpu/run.sh <longclip args>` or `bash benches/gpu.sh` (the whole issue-15 run, docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
shared=$(cd "${LONGCLIP_SHARED:-../shared}" 2>/dev/null && pwd || echo "${LONGCLIP_SHARED:-../shared}")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}

# The device tool carries at most 64 MiB (all carried paths together): fail
# here rather than there. LONGCLIP_GPU_LIMIT_MIB overrides the limit (tests).
check_size() {
    local limit_mib=${LONGCLIP_GPU_LIMIT_MIB:-64} size_kib mib
    if [ ! -d .gpu ]; then
        echo "build-cuda: no .gpu/ to check (run scripts/build-cuda.sh first)" >&2
        return 1
    fi
    size_kib=$(du -sk .gpu | cut -f1)
    mib=$(awk -v k="$size_kib" 'BEGIN { printf "%.1f", k / 1024 }')
    if [ "$size_kib" -gt $((limit_mib * 1024)) ]; then
        echo "build-cuda: .gpu/ is $mib MiB, over the ${limit_mib} MiB the device tool carries;" \
            "drop files from .gpu/urban1k or .gpu/out" >&2
        return 1
    fi
    echo "build-cuda: .gpu/ is $mib MiB, within the ${limit_mib} MiB the device tool carries"
}

if [ "${1:-}" = "--size" ]; then
    check_size
    exit
fi

if [ "${1:-}" = "--check" ]; then
    # A fake nvcc (a copy of ../shared's, so CI needs nothing outside the
    # repo) lets the build scripts run; its output is never linked.
    PATH="$PWD/scripts/fake-nvcc:$PATH" CUDA_COMPUTE_CAP=90 \
        cargo check --release --features cuda --all-targets
    exit
fi

if [ ! -f "$shared/scripts/cuda-env.sh" ]; then
    echo "build-cuda: $shared/scripts/cuda-env.sh not found (set LONGCLIP_SHARED)" >&2
    exit 1
fi
# shellcheck disable=SC1091
source "$shared/scripts/cuda-env.sh"
cargo build --release --features cuda --bin longclip

mkdir -p .gpu
strip -o .gpu/longclip "$CARGO_TARGET_DIR/release/longclip"
# The embedded PTX compresses well: 20.7 MB stripped, 5.6 MB packed (measured).
zstd -q -19 -T0 -f .gpu/longclip -o .gpu/longclip.zst
rm .gpu/longclip
cat > .gpu/run.sh <<'EOF'
#!/usr/bin/env bash
# On the GPU machine: unpack once, point the loader at PyTorch's CUDA 13 libraries, run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$here/longclip" ] || zstd -q -d -f "$here/longclip.zst" -o "$here/longclip"
chmod +x "$here/longclip"
nv=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)
export LD_LIBRARY_PATH="${nv:+$nv/nvidia/cu13/lib:}${LD_LIBRARY_PATH:-}"
exec "$here/longclip" "$@"
EOF
chmod +x .gpu/run.sh
# A slice of Urban1k for the end-to-end benchmark (benches/gpu.sh cycles it to
# 10k files there); ../shared does not travel to the GPU machine.
if [ -d "$shared/datasets/urban1k/image" ] && [ ! -d .gpu/urban1k ]; then
    mkdir -p .gpu/urban1k
    ls "$shared/datasets/urban1k/image" | sort -n | head -100 | while read -r f; do
        cp "$shared/datasets/urban1k/image/$f" .gpu/urban1k/
    done
fi
du -sh .gpu
check_size
