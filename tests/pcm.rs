//! Primary component matching: parity of the PCA and the two losses with the
//! official PyTorch code (fixture), and its gradients against finite
//! differences.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use longclip::checkpoint;
use longclip::model::LongClip;
use longclip::pcm::{self, PcmOptions};
use longclip::tokenizer::Tokenizer;

fn texts(key: &str) -> Vec<String> {
    manifest()["pcm"][key].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

fn tokens(texts: &[String]) -> Vec<Vec<u32>> {
    texts.iter().map(|t| Tokenizer::global().encode(t, 248).unwrap().ids).collect()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().get(0).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn pca_matches_official() {
    let exp = expected();
    let x = exp["pca.input"].to_dtype(DType::F64).unwrap();
    let ours = pcm::pca(&x, 32, 0).unwrap();
    let diff = max_abs_diff(&ours, &exp["pca.output_32"]);
    eprintln!("pca.output_32 max abs diff {diff:e}");
    assert!(diff < 1e-4, "PCA differs by {diff}");
    // 48 rows of 64: keeping 32 components really drops some.
    let dropped = max_abs_diff(&x, &exp["pca.output_32"]);
    assert!(dropped > 1e-2, "the fixture must exercise truncation ({dropped})");
}

#[test]
fn pca_in_groups_is_one_pca_per_group() {
    let x = Tensor::randn(0f64, 1.0, (20, 6), &Device::Cpu).unwrap();
    let grouped = pcm::pca(&x, 2, 8).unwrap();
    let parts = [(0, 8), (8, 8), (16, 4)].map(|(s, n)| pcm::pca(&x.narrow(0, s, n).unwrap(), 2, 0).unwrap());
    let joined = Tensor::cat(&parts, 0).unwrap();
    assert!(max_abs_diff(&grouped, &joined) < 1e-12);
    // Keeping every component reconstructs the input.
    assert!(max_abs_diff(&pcm::pca(&x, 6, 0).unwrap(), &x) < 1e-12);
}

#[test]
fn pcm_losses_match_official() {
    let ckpt = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    let model = LongClip::new(&ckpt, &Device::Cpu, DType::F32).unwrap();
    let exp = expected();
    let image = model.vision.encode(&exp["pixels"]).unwrap();
    let long = model.text.encode(&tokens(&texts("long_captions"))).unwrap();
    let short = model.text.encode(&tokens(&texts("short_captions"))).unwrap();
    let scale = model.logit_scale as f64;
    let (loss_long, loss_short) = pcm::loss_values(&image, &long, &short, scale, &PcmOptions::default()).unwrap();
    let (want_long, want_short) = (scalar(&exp["pcm.loss_long"]), scalar(&exp["pcm.loss_short"]));
    eprintln!("loss_long {loss_long:.7} (official {want_long:.7}, diff {:e})", (loss_long - want_long).abs());
    eprintln!("loss_short {loss_short:.7} (official {want_short:.7}, diff {:e})", (loss_short - want_short).abs());
    assert!((loss_long - want_long).abs() < 1e-4);
    assert!((loss_short - want_short).abs() < 1e-4);
}

/// Central differences of `loss_long + loss_short` in f64.
fn numeric_gradient(inputs: &[Tensor; 3], scale: f64, opts: &PcmOptions, which: usize, h: f64) -> Vec<f64> {
    let base = inputs[which].flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let shape = inputs[which].dims().to_vec();
    let total = |values: Vec<f64>| {
        let mut xs = inputs.clone();
        xs[which] = Tensor::from_vec(values, shape.clone(), &Device::Cpu).unwrap();
        let (l, s) = pcm::loss_values(&xs[0], &xs[1], &xs[2], scale, opts).unwrap();
        l + s
    };
    (0..base.len())
        .map(|i| {
            let mut plus = base.clone();
            plus[i] += h;
            let mut minus = base.clone();
            minus[i] -= h;
            (total(plus) - total(minus)) / (2.0 * h)
        })
        .collect()
}

fn relative_error(analytic: &[f64], numeric: &[f64]) -> f64 {
    let diff: f64 = analytic.iter().zip(numeric).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = numeric.iter().map(|b| b * b).sum::<f64>().sqrt();
    diff / norm.max(1e-12)
}

/// Shapes that take every branch of the PCA: more rows than columns (right
/// singular vectors), fewer (left), groups, and all components kept.
#[test]
fn pcm_gradients_match_finite_differences() {
    let cases = [
        ("rows > dims", 12, 8, 3, 0),
        ("rows < dims", 6, 16, 3, 0),
        ("groups of 5", 12, 8, 2, 5),
        ("all components", 6, 8, 32, 0),
    ];
    for (name, n, d, k, group) in cases {
        let opts = PcmOptions { pca_dim: k, pca_group: group, label_smoothing: 0.1 };
        let inputs = [0, 1, 2].map(|_| Tensor::randn(0f64, 1.0, (n, d), &Device::Cpu).unwrap());
        let scale = 1.3;
        let g = pcm::loss_and_gradients(&inputs[0], &inputs[1], &inputs[2], scale, &opts).unwrap();
        let analytic = [&g.image, &g.long, &g.short].map(|t| t.flatten_all().unwrap().to_vec1::<f64>().unwrap());
        for (which, label) in ["image", "long", "short"].iter().enumerate() {
            let numeric = numeric_gradient(&inputs, scale, &opts, which, 1e-6);
            let err = relative_error(&analytic[which], &numeric);
            eprintln!("{name}: d/d{label} relative error {err:e}");
            assert!(err < 1e-6, "{name}: gradient w.r.t. {label} off by {err:e}");
        }
        let h = 1e-6;
        let at = |s: f64| {
            let (l, sh) = pcm::loss_values(&inputs[0], &inputs[1], &inputs[2], s, &opts).unwrap();
            l + sh
        };
        let numeric = (at(scale + h) - at(scale - h)) / (2.0 * h);
        let err = (g.logit_scale - numeric).abs() / numeric.abs().max(1e-12);
        eprintln!("{name}: d/dlogit_scale relative error {err:e}");
        assert!(err < 1e-6, "{name}: logit_scale gradient off by {err:e}");
    }
}

/// The short loss sees the image features only through the PCA: its
/// gradient must include the basis term, or it would differ from the
/// finite difference (checked above) by this much.
#[test]
fn the_gradient_goes_through_the_pca_basis() {
    let opts = PcmOptions { pca_dim: 2, pca_group: 0, label_smoothing: 0.1 };
    let inputs = [0, 1, 2].map(|_| Tensor::randn(0f64, 1.0, (10, 6), &Device::Cpu).unwrap());
    let g = pcm::loss_and_gradients(&inputs[0], &inputs[1], &inputs[2], 1.0, &opts).unwrap();
    // Basis frozen: a plain projection with the same (constant) basis.
    let x = longclip::model::l2_normalize(&inputs[0]).unwrap();
    let mean = x.mean_keepdim(0).unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let gram = xc.t().unwrap().matmul(&xc).unwrap();
    let e = longclip::linalg::SymmetricEigen::new(&gram.flatten_all().unwrap().to_vec1::<f64>().unwrap(), 6);
    let v = Tensor::from_vec(e.vectors[..2 * 6].to_vec(), (2, 6), &Device::Cpu).unwrap().t().unwrap();
    let var = candle_core::Var::from_tensor(&inputs[0]).unwrap();
    let xn = longclip::model::l2_normalize(var.as_tensor()).unwrap();
    let m = xn.mean_keepdim(0).unwrap();
    let frozen = xn.broadcast_sub(&m).unwrap().matmul(&v).unwrap().matmul(&v.t().unwrap()).unwrap().broadcast_add(&m).unwrap();
    let (l, s) = {
        let scale = Tensor::new(1.0f64, &Device::Cpu).unwrap();
        let ts = longclip::model::l2_normalize(&inputs[2]).unwrap();
        let logits = (frozen.matmul(&ts.t().unwrap()).unwrap() * 1f64.exp()).unwrap();
        let short = ((pcm::smoothed_cross_entropy(&logits, 0.1).unwrap()
            + pcm::smoothed_cross_entropy(&logits.t().unwrap().contiguous().unwrap(), 0.1).unwrap())
        .unwrap()
            / 2.0)
            .unwrap();
        let tl = longclip::model::l2_normalize(&inputs[1]).unwrap();
        let ll = (xn.matmul(&tl.t().unwrap()).unwrap().broadcast_mul(&scale.exp().unwrap())).unwrap();
        let long = ((pcm::smoothed_cross_entropy(&ll, 0.1).unwrap()
            + pcm::smoothed_cross_entropy(&ll.t().unwrap().contiguous().unwrap(), 0.1).unwrap())
        .unwrap()
            / 2.0)
            .unwrap();
        (long, short)
    };
    let grads = (&l + &s).unwrap().backward().unwrap();
    let frozen_grad = grads.get(var.as_tensor()).unwrap();
    let diff = max_abs_diff(&g.image, frozen_grad);
    eprintln!("gradient with and without the basis term differs by {diff:e}");
    assert!(diff > 1e-4, "the basis term is missing or negligible ({diff:e})");
}
