//! Our CPU kernels (src/kernels) against the plain candle path the model
//! runs without them: max abs diff <= 1e-5 in f32, on odd shapes, for every
//! instruction set this CPU has (the scalar one always).

use candle_core::{DType, Device, Tensor};
use longclip::checkpoint::{self, Activation, Config, TextConfig, VisionConfig};
use longclip::kernels::attention::{attention, attention_biased, AttentionShape};
use longclip::kernels::simd::EXP_MIN;
use longclip::kernels::{elementwise, with_f32, Isa, Kernels};
use longclip::model::LongClip;

const TOL: f32 = 1e-5;

fn randn(shape: &[usize], std: f64, seed: u64) -> Tensor {
    // candle's CPU randn is not seedable: derive values from a small LCG.
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut uniform = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f64 + 0.5) / (1u64 << 24) as f64
    };
    let values: Vec<f32> = (0..n)
        .map(|_| ((-2.0 * uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * uniform()).cos() * std) as f32)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The model's plain path (src/model.rs `Attention::forward` without the
/// projections): permute, scale q, q kᵀ, + mask, softmax, · v, transpose.
fn attention_candle(qkv: &Tensor, shape: AttentionShape, scale: f64, causal: bool) -> Tensor {
    let AttentionShape { batch: b, len: l, heads, head_dim: hd } = shape;
    let qkv = qkv.reshape((b, l, 3, heads, hd)).unwrap().permute((2, 0, 3, 1, 4)).unwrap();
    let q = (qkv.get(0).unwrap().contiguous().unwrap() * scale).unwrap();
    let k = qkv.get(1).unwrap().contiguous().unwrap();
    let v = qkv.get(2).unwrap().contiguous().unwrap();
    let mut scores = q.matmul(&k.t().unwrap()).unwrap();
    if causal {
        let mask: Vec<f32> =
            (0..l).flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
        scores = scores.broadcast_add(&Tensor::from_vec(mask, (l, l), &Device::Cpu).unwrap()).unwrap();
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
    probs.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((b, l, heads * hd)).unwrap()
}

#[test]
fn attention_matches_candle_on_odd_shapes() {
    let shapes = [
        (1, 1, 1, 64),
        (2, 1, 3, 4),
        (1, 77, 8, 64),
        (3, 5, 12, 12),
        (2, 33, 2, 4),
        (1, 248, 8, 64),
        (2, 197, 12, 64),
        (1, 17, 5, 12),
        (3, 120, 1, 20),
    ];
    for (seed, &(batch, len, heads, head_dim)) in shapes.iter().enumerate() {
        let shape = AttentionShape { batch, len, heads, head_dim };
        // Wide q/k make peaked softmaxes, where rounding would show most.
        let qkv = randn(&[batch, len, 3 * shape.width()], 2.0, seed as u64);
        let scale = 1.0 / (head_dim as f64).sqrt();
        for causal in [false, true] {
            let want = to_vec(&attention_candle(&qkv, shape, scale, causal));
            for isa in Isa::available() {
                let mut got = vec![f32::NAN; want.len()];
                with_f32(&qkv, |x| attention(isa, x, shape, scale as f32, causal, &mut got)).unwrap();
                let diff = max_abs_diff(&got, &want);
                eprintln!("attention {isa:?} {shape:?} causal {causal}: max abs diff {diff:e}");
                assert!(diff <= TOL, "{isa:?} {shape:?} causal {causal}: max abs diff {diff:e}");
            }
        }
    }
}

#[test]
fn attention_causal_ignores_later_tokens() {
    // Changing the last token must not move any earlier output row.
    let shape = AttentionShape { batch: 1, len: 9, heads: 2, head_dim: 12 };
    let qkv = randn(&[1, 9, 3 * 24], 1.0, 11);
    let mut changed = to_vec(&qkv);
    for x in &mut changed[8 * 72..] {
        *x += 3.0;
    }
    for isa in Isa::available() {
        let run = |values: &[f32]| {
            let mut out = vec![0f32; 9 * 24];
            attention(isa, values, shape, 0.3, true, &mut out);
            out
        };
        let (a, b) = (run(&to_vec(&qkv)), run(&changed));
        assert_eq!(a[..8 * 24], b[..8 * 24], "{isa:?}");
        assert_ne!(a[8 * 24..], b[8 * 24..], "{isa:?}");
    }
}

#[test]
fn attention_adds_the_in_proj_bias_as_linear_would() {
    // The bias added while reading q, k and v gives what adding it to the
    // projection first gives (the same f32 additions), with and without the mask.
    for &(batch, len, heads, hd) in &[(2, 197, 3, 64), (1, 13, 2, 12)] {
        let shape = AttentionShape { batch, len, heads, head_dim: hd };
        let w = heads * hd;
        let qkv = to_vec(&randn(&[batch, len, 3 * w], 1.0, 21));
        let bias = to_vec(&randn(&[3 * w], 1.0, 22));
        let biased: Vec<f32> = qkv.iter().enumerate().map(|(i, x)| x + bias[i % (3 * w)]).collect();
        for isa in Isa::available() {
            for causal in [false, true] {
                let (mut want, mut got) = (vec![0f32; batch * len * w], vec![0f32; batch * len * w]);
                attention(isa, &biased, shape, 0.125, causal, &mut want);
                attention_biased(isa, &qkv, Some(&bias), shape, 0.125, causal, &mut got);
                assert_eq!(got, want, "{isa:?} causal={causal} {shape:?}");
            }
        }
    }
}

#[test]
fn bias_left_to_the_residual_pass_is_linear_then_add() {
    // out_proj's and c_proj's bias added in the residual pass: the same two
    // f32 additions as Linear's bias add and then the residual add.
    for &(rows, w) in &[(3, 768), (5, 13)] {
        let (x, d, bias) = (to_vec(&randn(&[rows, w], 1.0, 31)), to_vec(&randn(&[rows, w], 1.0, 32)), to_vec(&randn(&[w], 1.0, 33)));
        let (gamma, beta) = (to_vec(&randn(&[w], 1.0, 34)), to_vec(&randn(&[w], 1.0, 35)));
        let biased: Vec<f32> = d.iter().enumerate().map(|(i, v)| v + bias[i % w]).collect();
        let want_sum: Vec<f32> = x.iter().zip(&biased).map(|(a, b)| a + b).collect();
        for isa in Isa::available() {
            let mut got = vec![0f32; rows * w];
            elementwise::add_bias_residual(isa, &x, &d, &bias, &mut got);
            assert_eq!(got, want_sum, "{isa:?}");
            let (mut sum, mut out, mut want_out) = (vec![0f32; rows * w], vec![0f32; rows * w], vec![0f32; rows * w]);
            elementwise::add_bias_layer_norm(isa, &x, &d, Some(&bias), &gamma, &beta, 1e-5, &mut sum, &mut out);
            let mut unused = vec![0f32; rows * w];
            elementwise::add_layer_norm(isa, &x, &biased, &gamma, &beta, 1e-5, &mut unused, &mut want_out);
            assert_eq!(sum, want_sum, "{isa:?}");
            assert_eq!(out, want_out, "{isa:?}");
        }
    }
}

#[test]
fn quick_gelu_matches_candle() {
    for (seed, &(rows, width)) in [(1, 1), (3, 13), (2, 512), (5, 2048), (1, 37)].iter().enumerate() {
        let x = randn(&[rows, width], 4.0, 100 + seed as u64);
        let bias = randn(&[width], 1.0, 200 + seed as u64);
        let quick = |h: &Tensor| to_vec(&(h * candle_nn::ops::sigmoid(&(h * 1.702).unwrap()).unwrap()).unwrap());
        let plain = quick(&x);
        let biased = quick(&x.broadcast_add(&bias).unwrap());
        for isa in Isa::available() {
            let mut got = vec![f32::NAN; rows * width];
            elementwise::bias_quick_gelu(isa, &to_vec(&x), None, &mut got);
            let diff = max_abs_diff(&got, &plain);
            assert!(diff <= TOL, "{isa:?} [{rows}, {width}]: max abs diff {diff:e}");
            elementwise::bias_quick_gelu(isa, &to_vec(&x), Some(&to_vec(&bias)), &mut got);
            let diff = max_abs_diff(&got, &biased);
            assert!(diff <= TOL, "{isa:?} [{rows}, {width}] with bias: max abs diff {diff:e}");
        }
    }
}

#[test]
fn layer_norms_match_candle() {
    for (seed, &(rows, width)) in [(1, 1), (3, 13), (2, 512), (17, 768), (4, 37)].iter().enumerate() {
        let seed = seed as u64;
        // A residual stream: an offset mean and a few large features.
        let x = (randn(&[rows, width], 3.0, 300 + seed) + 0.7).unwrap();
        let delta = randn(&[rows, width], 1.0, 400 + seed);
        let gamma = (randn(&[width], 0.2, 500 + seed) + 1.0).unwrap();
        let beta = randn(&[width], 0.1, 600 + seed);
        let sum = (&x + &delta).unwrap();
        let want = to_vec(&candle_nn::ops::layer_norm(&x, &gamma, &beta, 1e-5).unwrap());
        let want_sum = to_vec(&candle_nn::ops::layer_norm(&sum, &gamma, &beta, 1e-5).unwrap());
        let (xs, ds, gs, bs) = (to_vec(&x), to_vec(&delta), to_vec(&gamma), to_vec(&beta));
        for isa in Isa::available() {
            let mut got = vec![f32::NAN; rows * width];
            elementwise::layer_norm(isa, &xs, &gs, &bs, 1e-5, &mut got);
            let diff = max_abs_diff(&got, &want);
            assert!(diff <= TOL, "{isa:?} layer_norm [{rows}, {width}]: max abs diff {diff:e}");
            let mut got_sum = vec![f32::NAN; rows * width];
            elementwise::add_layer_norm(isa, &xs, &ds, &gs, &bs, 1e-5, &mut got_sum, &mut got);
            assert_eq!(got_sum, to_vec(&sum), "{isa:?} residual sum [{rows}, {width}]");
            let diff = max_abs_diff(&got, &want_sum);
            assert!(diff <= TOL, "{isa:?} add_layer_norm [{rows}, {width}]: max abs diff {diff:e}");
        }
    }
}

/// Whole towers, fused kernels against candle's ops, on a random model
/// (odd head size 12 in the text tower, 3 heads of 16 in the image tower).
#[test]
fn model_with_fused_kernels_matches_candle_ops() {
    let config = Config {
        embed_dim: 32,
        text: TextConfig { width: 48, layers: 2, heads: 4, mlp_width: 192, context_length: 248, vocab_size: 49408, keep_positions: 20 },
        vision: VisionConfig { width: 48, layers: 2, heads: 3, mlp_width: 192, patch_size: 8, image_size: 40 },
        activation: Activation::QuickGelu,
        family: Default::default(),
    };
    let ckpt = checkpoint::random(&config, 3).unwrap();
    let mut model = LongClip::new(&ckpt, &Device::Cpu, DType::F32).unwrap();
    let ids = longclip::model::synthetic_token_ids(3, 61);
    let pixels = randn(&[2, 3, 40, 40], 1.0, 9);
    let mut run = |kernels| {
        model.set_kernels(kernels);
        (to_vec(&model.text.encode(&ids).unwrap()), to_vec(&model.vision.encode(&pixels).unwrap()))
    };
    let (text_fused, image_fused) = run(Kernels::Fused);
    let (text_candle, image_candle) = run(Kernels::Candle);
    let scale = |v: &[f32]| v.iter().map(|x| x.abs()).fold(0.0, f32::max);
    for (what, a, b) in [("text", &text_fused, &text_candle), ("image", &image_fused, &image_candle)] {
        let diff = max_abs_diff(a, b);
        eprintln!("{what} tower, fused vs candle: max abs diff {diff:e}");
        // Two layers of 1e-5-level differences, relative to the features' size.
        assert!(diff <= 1e-4 * scale(b).max(1.0), "{what}: max abs diff {diff:e} (features up to {})", scale(b));
    }
}

/// The kernels' polynomial `exp` against std's: relative error under 4 ulp,
/// exactly 0 below `EXP_MIN` and for -inf (masked scores).
#[test]
fn exp_matches_std() {
    let xs: Vec<f32> = (0..4000).map(|i| -90.0 + i as f32 * 0.0445).chain([f32::NEG_INFINITY, -0.0, 0.0, 88.0]).collect();
    for isa in Isa::available() {
        let mut ys = vec![f32::NAN; xs.len()];
        elementwise::exp_slice(isa, &xs, &mut ys);
        for (x, y) in xs.iter().zip(ys) {
            if *x < EXP_MIN {
                assert_eq!(y, 0.0, "{isa:?} exp({x})");
            } else {
                let want = x.exp();
                assert!((y - want).abs() <= 4.0 * f32::EPSILON * want, "{isa:?} exp({x}) = {y}, want {want}");
            }
        }
    }
}
