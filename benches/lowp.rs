//! f32 (candle) against our bf16 and int8 GEMMs (src/kernels) at LongCLIP-B's
//! linear-layer shapes, and the image tower per dtype (issue 16).
//! Throughput is FLOP/s (a multiply-add counts two): criterion's
//! "elem/s" column reads as GFLOP/s when it says Gelem/s.
//! Run: cargo bench --bench lowp

use candle_core::{DType, Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use longclip::checkpoint::{self, Config};
use longclip::kernels::{gemm_bf16, gemm_int8};
use longclip::model::{LongClip, Precision};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// (what, rows m, in k, out n): text batch 32 x 120 tokens and image batch
/// 8 x 197 tokens through each linear layer of a LongCLIP-B block.
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("text in_proj", 32 * 120, 512, 1536),
    ("text c_fc", 32 * 120, 512, 2048),
    ("text c_proj", 32 * 120, 2048, 512),
    ("image in_proj", 197 * 8, 768, 2304),
    ("image c_fc", 197 * 8, 768, 3072),
    ("image c_proj", 197 * 8, 3072, 768),
];

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = longclip::rng::SplitMix(seed);
    (0..n).map(|_| rng.normal() * 0.05).collect()
}

fn gemms(c: &mut Criterion) {
    let mut g = c.benchmark_group("lowp gemm");
    g.sample_size(10);
    for &(what, m, k, n) in SHAPES {
        let (x, w, b) = (random(m * k, 1), random(n * k, 2), random(n, 3));
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
        let linear = candle_nn::Linear::new(Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap(), Some(Tensor::from_vec(b.clone(), n, &Device::Cpu).unwrap()));
        g.bench_function(format!("{what} [{m}x{k}]x[{k}x{n}] f32 candle"), |bench| bench.iter(|| linear.forward(&xt).unwrap()));
        let packed = gemm_bf16::PackedBf16::from_weight(&w, n, k);
        let mut out = vec![0f32; m * n];
        g.bench_function(format!("{what} [{m}x{k}]x[{k}x{n}] bf16"), |bench| bench.iter(|| gemm_bf16::gemm(&x, m, &packed, Some(&b), &mut out, true)));
        let quantized = gemm_int8::QuantizedWeight::from_weight(&w, n, k);
        g.bench_function(format!("{what} [{m}x{k}]x[{k}x{n}] int8"), |bench| bench.iter(|| gemm_int8::gemm(&x, m, &quantized, Some(&b), &mut out, true)));
    }
    g.finish();
}

fn image_tower(c: &mut Criterion) {
    let config = Config::preset("longclip-b").unwrap();
    let ckpt = checkpoint::random(&config, 0).unwrap();
    let batch = 8;
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, 224, 224), &Device::Cpu).unwrap();
    let mut g = c.benchmark_group("lowp image tower");
    g.sample_size(10);
    g.throughput(Throughput::Elements((batch as f64 * config.vision_flops()) as u64));
    for precision in [Precision::Float(DType::F32), Precision::Float(DType::BF16), Precision::Int8] {
        let model = LongClip::new(&ckpt, &Device::Cpu, precision).unwrap();
        g.bench_function(format!("image 224 px, batch {batch}, {precision}"), |b| b.iter(|| model.vision.encode(&pixels).unwrap()));
    }
    g.finish();
}


criterion_group!(benches, gemms, image_tower);
criterion_main!(benches);
