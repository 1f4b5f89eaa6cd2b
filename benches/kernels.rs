//! Our fused CPU kernels against the plain candle path, op by op at
//! LongCLIP-B shapes (text: batch 32 x 120 tokens, width 512, 8 heads;
//! image: ViT-B/16, batch 8 x 197 tokens, width 768, 12 heads), the
//! block's linear layers for scale (the per-layer profile of docs/cpu.md),
//! and both towers end to end with each path.
//! Run: cargo bench --bench kernels [-- FILTER]

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Linear;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use longclip::checkpoint::{self, Config};
use longclip::kernels::attention::{attention, AttentionShape};
use longclip::kernels::{elementwise, with_f32, Isa, Kernels};
use longclip::model::LongClip;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Tower {
    name: &'static str,
    shape: AttentionShape,
    causal: bool,
}

const TOWERS: [Tower; 2] = [
    Tower { name: "text", shape: AttentionShape { batch: 32, len: 120, heads: 8, head_dim: 64 }, causal: true },
    Tower { name: "image", shape: AttentionShape { batch: 8, len: 197, heads: 12, head_dim: 64 }, causal: false },
];

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

/// src/model.rs `Attention::forward` between the projections, candle ops.
fn attention_candle(qkv: &Tensor, s: AttentionShape, mask: Option<&Tensor>) -> Tensor {
    let (b, l, h, hd) = (s.batch, s.len, s.heads, s.head_dim);
    let qkv = qkv.reshape((b, l, 3, h, hd)).unwrap().permute((2, 0, 3, 1, 4)).unwrap();
    let q = (qkv.get(0).unwrap().contiguous().unwrap() * (1.0 / (hd as f64).sqrt())).unwrap();
    let k = qkv.get(1).unwrap().contiguous().unwrap();
    let v = qkv.get(2).unwrap().contiguous().unwrap();
    let mut scores = q.matmul(&k.t().unwrap()).unwrap();
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask).unwrap();
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
    probs.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((b, l, h * hd)).unwrap()
}

fn causal_mask(l: usize) -> Tensor {
    let m: Vec<f32> = (0..l).flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(m, (l, l), &Device::Cpu).unwrap()
}

/// A fused kernel's output as a tensor, as the model builds it.
fn fused_tensor(shape: &[usize], f: impl FnOnce(&mut [f32])) -> Tensor {
    let mut out = vec![0f32; shape.iter().product()];
    f(&mut out);
    Tensor::from_vec(out, shape, &Device::Cpu).unwrap()
}

fn ops(c: &mut Criterion) {
    let isa = Isa::detect();
    for t in &TOWERS {
        let s = t.shape;
        let (tokens, w) = (s.batch * s.len, s.width());
        let mut g = c.benchmark_group(format!("{} layer ({isa:?})", t.name));
        g.sample_size(10).warm_up_time(std::time::Duration::from_millis(500));
        g.measurement_time(std::time::Duration::from_secs(2));
        g.throughput(Throughput::Elements(s.batch as u64));

        let x = randn(&[s.batch, s.len, w]);
        let delta = randn(&[s.batch, s.len, w]);
        let gamma = randn(&[w]);
        let beta = randn(&[w]);
        let (gv, bv) = (gamma.to_vec1::<f32>().unwrap(), beta.to_vec1::<f32>().unwrap());
        g.bench_function("layer norm, candle", |b| b.iter(|| candle_nn::ops::layer_norm(&x, &gamma, &beta, 1e-5).unwrap()));
        g.bench_function("layer norm, fused", |b| {
            b.iter(|| fused_tensor(x.dims(), |o| with_f32(&x, |x| elementwise::layer_norm(isa, x, &gv, &bv, 1e-5, o)).unwrap()))
        });
        g.bench_function("residual + layer norm, candle", |b| {
            b.iter(|| {
                let sum = (&x + &delta).unwrap();
                (candle_nn::ops::layer_norm(&sum, &gamma, &beta, 1e-5).unwrap(), sum)
            })
        });
        g.bench_function("residual + layer norm, fused", |b| {
            b.iter(|| {
                let mut sum = vec![0f32; tokens * w];
                let n = fused_tensor(x.dims(), |o| {
                    with_f32(&x, |x| with_f32(&delta, |d| elementwise::add_layer_norm(isa, x, d, &gv, &bv, 1e-5, &mut sum, o)))
                        .unwrap()
                        .unwrap()
                });
                (n, sum)
            })
        });
        g.bench_function("residual add, candle", |b| b.iter(|| (&x + &delta).unwrap()));

        let linear = |i: usize, o: usize| Linear::new(randn(&[o, i]), Some(randn(&[o])));
        let (in_proj, out_proj, c_fc, c_proj) = (linear(w, 3 * w), linear(w, w), linear(w, 4 * w), linear(4 * w, w));
        let h = randn(&[s.batch, s.len, 4 * w]);
        g.bench_function("in_proj (candle matmul)", |b| b.iter(|| in_proj.forward(&x).unwrap()));
        g.bench_function("out_proj (candle matmul)", |b| b.iter(|| out_proj.forward(&x).unwrap()));
        g.bench_function("c_fc (candle matmul)", |b| b.iter(|| c_fc.forward(&x).unwrap()));
        g.bench_function("c_proj (candle matmul)", |b| b.iter(|| c_proj.forward(&h).unwrap()));

        g.bench_function("QuickGELU, candle", |b| b.iter(|| (&h * candle_nn::ops::sigmoid(&(&h * 1.702).unwrap()).unwrap()).unwrap()));
        g.bench_function("QuickGELU, fused", |b| {
            b.iter(|| fused_tensor(h.dims(), |o| with_f32(&h, |x| elementwise::bias_quick_gelu(isa, x, None, o)).unwrap()))
        });
        // What fusing c_fc's bias would save (Linear adds it in its own pass).
        let bias = randn(&[4 * w]);
        let bv4 = bias.to_vec1::<f32>().unwrap();
        g.bench_function("c_fc bias add, candle", |b| b.iter(|| h.broadcast_add(&bias).unwrap()));
        g.bench_function("bias + QuickGELU, fused", |b| {
            b.iter(|| fused_tensor(h.dims(), |o| with_f32(&h, |x| elementwise::bias_quick_gelu(isa, x, Some(&bv4), o)).unwrap()))
        });

        let qkv = randn(&[s.batch, s.len, 3 * w]);
        let mask = t.causal.then(|| causal_mask(s.len));
        let scale = 1.0 / (s.head_dim as f32).sqrt();
        g.bench_function("attention core, candle", |b| b.iter(|| attention_candle(&qkv, s, mask.as_ref())));
        g.bench_function("attention core, fused", |b| {
            b.iter(|| fused_tensor(&[s.batch, s.len, w], |o| with_f32(&qkv, |q| attention(isa, q, s, scale, t.causal, o)).unwrap()))
        });
        g.bench_function("attention core, fused scalar", |b| {
            b.iter(|| fused_tensor(&[s.batch, s.len, w], |o| with_f32(&qkv, |q| attention(Isa::Scalar, q, s, scale, t.causal, o)).unwrap()))
        });
        g.finish();
    }
}

fn towers(c: &mut Criterion) {
    let ckpt = checkpoint::random(&Config::preset("longclip-b").unwrap(), 0).unwrap();
    let mut model = LongClip::new(&ckpt, &Device::Cpu, DType::F32).unwrap();
    let ids = longclip::model::synthetic_token_ids(32, 120);
    let pixels = randn(&[8, 3, 224, 224]);
    let mut g = c.benchmark_group("longclip-b towers");
    g.sample_size(10);
    for kernels in [Kernels::Candle, Kernels::Fused] {
        model.set_kernels(kernels);
        g.throughput(Throughput::Elements(32));
        g.bench_function(format!("text 120 tokens, batch 32, {kernels:?}"), |b| b.iter(|| model.text.encode(&ids).unwrap()));
        g.throughput(Throughput::Elements(8));
        g.bench_function(format!("image 224 px, batch 8, {kernels:?}"), |b| b.iter(|| model.vision.encode(&pixels).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, ops, towers);
criterion_main!(benches);
