//! The bf16 and int8 GEMMs of `--dtype bf16|int8` on the CPU (issue 16),
//! each path (VDPBF16PS / VPDPBUSD when the CPU has them, and the portable
//! fallback) held to a reference on odd shapes, and the whole model held to
//! the official f32 features of the reference fixture.

mod common;

use candle_core::{DType, Device};
use common::*;
use longclip::checkpoint;
use longclip::kernels::{gemm_bf16, gemm_int8};
use longclip::model::{self, LongClip, Precision};
use longclip::rng::SplitMix;

/// (m, n, k): 1-row inputs, m/n/k off the block sizes (MR 8 for bf16 and
/// 12 for int8, NR 32; tiles 64 x 128 and 96 x 128), odd k, and
/// LongCLIP-B's widest K.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 4),
    (1, 33, 7),
    (3, 5, 5),
    (9, 31, 65),
    (8, 32, 2),
    (17, 70, 129),
    (70, 130, 33),
    (2, 45, 768),
    (5, 40, 3072),
    (130, 260, 18),
];

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    (0..n).map(|_| rng.normal()).collect()
}

/// Both paths: `true` runs the SIMD kernel if this CPU has it (else the
/// fallback again, which the test says).
fn paths(has_simd: bool, what: &str) -> [bool; 2] {
    if !has_simd {
        eprintln!("note: this CPU lacks the {what} instructions; the SIMD path falls back");
    }
    [false, true]
}

#[test]
fn bf16_gemm_matches_f64_on_bf16_rounded_inputs() {
    for &(m, n, k) in SHAPES {
        let (x, w, b) = (random(m * k, 1), random(n * k, 2), random(n, 3));
        let packed = gemm_bf16::PackedBf16::from_weight(&w, n, k);
        let (xr, wr): (Vec<f32>, Vec<f32>) = (x.iter().map(|&v| gemm_bf16::round_bf16(v)).collect(), w.iter().map(|&v| gemm_bf16::round_bf16(v)).collect());
        for simd in paths(gemm_bf16::has_simd(), "AVX512_BF16") {
            let mut y = vec![f32::NAN; m * n];
            gemm_bf16::gemm(&x, m, &packed, Some(&b), &mut y, simd);
            for i in 0..m {
                for j in 0..n {
                    let (mut exact, mut magnitude, mut unrounded) = (b[j] as f64, b[j].abs() as f64, b[j] as f64);
                    for t in 0..k {
                        exact += xr[i * k + t] as f64 * wr[j * k + t] as f64;
                        magnitude += (xr[i * k + t] * wr[j * k + t]).abs() as f64;
                        unrounded += x[i * k + t] as f64 * w[j * k + t] as f64;
                    }
                    // f32 summation of k + 1 terms: |error| <= (k + 1) eps Σ|terms| (Higham's γ).
                    let bound = (k + 1) as f64 * f32::EPSILON as f64 * magnitude;
                    let got = y[i * n + j] as f64;
                    assert!((got - exact).abs() <= bound, "({m},{n},{k}) simd={simd} y[{i},{j}] = {got}, f64 of bf16 inputs {exact}, bound {bound}");
                    // And against the unrounded inputs: two bf16 roundings (2^-8 each) per product.
                    let bf16_bound = 2.0 * 2f64.powi(-8) * magnitude + bound;
                    assert!((got - unrounded).abs() <= bf16_bound, "({m},{n},{k}) simd={simd} y[{i},{j}] = {got} vs f32 inputs {unrounded}");
                }
            }
        }
    }
}

#[test]
fn bf16_gemm_without_bias_and_from_kn_layout() {
    let (m, n, k) = (11, 37, 19);
    let (x, w) = (random(m * k, 4), random(n * k, 5));
    // The same matrix given as W [n, k] and as B = Wᵀ [k, n] packs the same.
    let b_kn: Vec<f32> = (0..k).flat_map(|t| (0..n).map(move |j| (t, j))).map(|(t, j)| w[j * k + t]).collect();
    let (mut y1, mut y2) = (vec![0f32; m * n], vec![0f32; m * n]);
    gemm_bf16::gemm(&x, m, &gemm_bf16::PackedBf16::from_weight(&w, n, k), None, &mut y1, true);
    gemm_bf16::gemm(&x, m, &gemm_bf16::PackedBf16::from_kn(&b_kn, k, n), None, &mut y2, true);
    assert_eq!(y1, y2);
    assert!(y1.iter().any(|v| *v != 0.0));
}

#[test]
fn int8_gemm_is_the_exact_integer_math() {
    for &(m, n, k) in SHAPES {
        let (x, w, b) = (random(m * k, 6), random(n * k, 7), random(n, 8));
        let qw = gemm_int8::QuantizedWeight::from_weight(&w, n, k);
        let qx = gemm_int8::QuantizedRows::new(&x, m, k);
        for j in 0..n {
            assert_eq!(qw.col_sums[j], qw.row(j).iter().map(|&v| v as i32).sum::<i32>());
        }
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot: i64 = qx.row(i).iter().zip(qw.row(j)).map(|(&a, q)| a as i64 * q as i64).sum();
                let sum = dot - qx.zeros[i] as i64 * qw.col_sums[j] as i64;
                want[i * n + j] = qx.scales[i] * qw.scales[j] * sum as f32 + b[j];
            }
        }
        for simd in paths(gemm_int8::has_simd(), "AVX512_VNNI") {
            let mut y = vec![f32::NAN; m * n];
            gemm_int8::gemm(&x, m, &qw, Some(&b), &mut y, simd);
            assert_eq!(y, want, "({m},{n},{k}) simd={simd}");
        }
    }
}

#[test]
fn int8_gemm_quick_gelu_epilogue_is_the_gemm_then_quick_gelu() {
    use longclip::kernels::{elementwise, gemm_int8::Output, Isa};
    for &(m, n, k) in SHAPES {
        let (x, w, b) = (random(m * k, 11), random(n * k, 12), random(n, 13));
        let qw = gemm_int8::QuantizedWeight::from_weight(&w, n, k);
        for simd in paths(gemm_int8::has_simd(), "AVX512_VNNI") {
            let mut linear = vec![0f32; m * n];
            gemm_int8::gemm(&x, m, &qw, Some(&b), &mut linear, simd);
            let mut want = vec![0f32; m * n];
            let isa = if simd { Isa::detect() } else { Isa::Scalar };
            elementwise::bias_quick_gelu(isa, &linear, None, &mut want);
            let mut fused = vec![std::mem::MaybeUninit::new(f32::NAN); m * n];
            gemm_int8::gemm_uninit(&x, m, &qw, Some(&b), Output::QuickGelu, &mut fused, simd);
            for (i, (got, want)) in fused.iter().zip(&want).enumerate() {
                // SAFETY: initialized above, and the GEMM writes every element.
                let got = unsafe { got.assume_init() };
                // Same operations; the separate pass takes a row's last
                // width % 16 values one at a time (scalar exp, 2 ulp apart).
                let tolerance = if simd { 4.0 * f32::EPSILON * want.abs().max(1e-30) } else { 0.0 };
                assert!((got - want).abs() <= tolerance, "({m},{n},{k}) simd={simd} [{i}]: {got} vs {want}");
            }
        }
    }
}

#[test]
fn int8_quantization_error_is_half_a_step() {
    for &(m, n, k) in SHAPES {
        let (x, w) = (random(m * k, 9), random(n * k, 10));
        let qw = gemm_int8::QuantizedWeight::from_weight(&w, n, k);
        let qx = gemm_int8::QuantizedRows::new(&x, m, k);
        for i in 0..m {
            let (s, z) = (qx.scales[i], qx.zeros[i]);
            for (t, &q) in qx.row(i).iter().enumerate() {
                let back = s * (q as i32 - z) as f32;
                assert!((back - x[i * k + t]).abs() <= 0.5 * s * (1.0 + 1e-5), "row {i} col {t}: {} -> {back}", x[i * k + t]);
            }
        }
        for j in 0..n {
            let s = qw.scales[j];
            for (t, q) in qw.row(j).into_iter().enumerate() {
                assert!((s * q as f32 - w[j * k + t]).abs() <= 0.5 * s * (1.0 + 1e-5));
            }
        }
        // End to end: each product is off by at most |x| s_w/2 + |w| s_x/2 + s_x s_w/4.
        let mut y = vec![0f32; m * n];
        gemm_int8::gemm(&x, m, &qw, None, &mut y, true);
        for i in 0..m {
            for j in 0..n {
                let (sx, sw) = (qx.scales[i] as f64, qw.scales[j] as f64);
                let (mut exact, mut bound) = (0f64, 0f64);
                for t in 0..k {
                    let (a, c) = (x[i * k + t] as f64, w[j * k + t] as f64);
                    exact += a * c;
                    bound += a.abs() * sw / 2.0 + c.abs() * sx / 2.0 + sx * sw / 4.0;
                }
                let bound = bound * (1.0 + 1e-4) + 1e-5;
                assert!((y[i * n + j] as f64 - exact).abs() <= bound, "({m},{n},{k}) y[{i},{j}] = {} vs {exact}, bound {bound}", y[i * n + j]);
            }
        }
    }
}

#[test]
fn int8_all_zero_rows_and_weights_give_the_bias() {
    let (m, n, k) = (3, 4, 6);
    let qw = gemm_int8::QuantizedWeight::from_weight(&vec![0.0; n * k], n, k);
    let b = [1.0, -2.0, 3.0, 0.5];
    let mut y = vec![f32::NAN; m * n];
    gemm_int8::gemm(&vec![0.0; m * k], m, &qw, Some(&b), &mut y, true);
    assert_eq!(y, b.repeat(m));
}

#[test]
fn dtype_names_and_int8_refused_off_the_cpu_and_in_training() {
    assert_eq!(model::precision("int8", &Device::Cpu).unwrap(), Precision::Int8);
    assert_eq!(model::precision("auto", &Device::Cpu).unwrap(), Precision::Float(DType::F32));
    assert_eq!(Precision::Int8.name(), "int8");
    // Any case, and PyTorch's names.
    assert_eq!(model::precision("F32", &Device::Cpu).unwrap(), Precision::Float(DType::F32));
    assert_eq!(model::precision("fp16", &Device::Cpu).unwrap(), Precision::Float(DType::F16));
    assert_eq!(model::precision(" BFloat16 ", &Device::Cpu).unwrap(), Precision::Float(DType::BF16));
    assert_eq!(model::precision("INT8", &Device::Cpu).unwrap(), Precision::Int8);
    assert_eq!(Precision::Float(DType::BF16).name(), "bf16");
    let err = model::compute_dtype("int8", &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("int8 is for inference"), "{err}");
    let err = model::precision("int4", &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("unknown dtype 'int4'"), "{err}");
}

/// The whole model against the official f32 features: bf16 at cos >= 0.999
/// (issue 16), int8 at the bound its quantization keeps on this fixture.
#[test]
fn bf16_and_int8_models_stay_close_to_official_f32() {
    let ckpt = checkpoint::load(&fixture("tiny-longclip.pt")).unwrap();
    let exp = expected();
    let ids = reference_ids("ids_248");
    for (precision, bound) in [(Precision::Float(DType::BF16), 0.999), (Precision::Int8, 0.99)] {
        let model = LongClip::new(&ckpt, &Device::Cpu, precision).unwrap();
        assert_eq!(model.precision, precision);
        let text = model.text.encode(&ids).unwrap();
        let t = assert_rows_cosine(&format!("{precision} text"), &text, &exp["longclip.text_features"], bound);
        let image = model.vision.encode(&exp["pixels"]).unwrap();
        let i = assert_rows_cosine(&format!("{precision} image"), &image, &exp["longclip.image_features"], bound);
        eprintln!("{precision}: worst cos text {t:.6}, image {i:.6}");
    }
}

/// R@1/5/10 of f32, bf16 and int8 on an Urban1k-layout set, at 248 tokens
/// and at `lengths` (probe rows where R@1 is not near 100); asserts each
/// number within `bf16_bound` / `int8_bound` points of f32.
fn rankings_per_dtype(name: &str, model_path: &std::path::Path, root: &std::path::Path, lengths: &[usize], bf16_bound: f64, int8_bound: f64) {
    use longclip::datasets::{self, LoadOptions, OnMissing};
    use longclip::evaluate::{self, Encoder, Unit};
    let ckpt = checkpoint::load(model_path).unwrap();
    let data = datasets::load("urban1k", root, &LoadOptions::default()).unwrap();
    let mut table: Vec<(Precision, Vec<(String, f64)>)> = Vec::new();
    for precision in [Precision::Float(DType::F32), Precision::Float(DType::BF16), Precision::Int8] {
        let model = LongClip::new(&ckpt, &Device::Cpu, precision).unwrap();
        // No cache: it would hand one dtype's features to another.
        let mut enc = Encoder::new(&model, Device::Cpu, 64, None).unwrap();
        let full = evaluate::evaluate_retrieval(&mut enc, &data, OnMissing::Fail, 248).unwrap();
        let mut scores: Vec<(String, f64)> = full.scores.named().into_iter().map(|(k, v)| (format!("248 {k}"), v)).collect();
        let (rows, _) = evaluate::probe(&mut enc, &data, lengths, Unit::Tokens, OnMissing::Fail).unwrap();
        for r in rows {
            scores.extend(r.scores.named().into_iter().map(|(k, v)| (format!("{} {k}", r.length), v)));
        }
        eprintln!("{name} {precision}: {}", scores.iter().map(|(k, v)| format!("{k} {v:.1}")).collect::<Vec<_>>().join(", "));
        table.push((precision, scores));
    }
    let f32_scores = &table[0].1;
    for (precision, scores) in &table[1..] {
        let bound = if *precision == Precision::Int8 { int8_bound } else { bf16_bound };
        let none = String::new();
        let worst = scores.iter().zip(f32_scores).map(|((k, v), (_, w))| ((v - w).abs(), k)).fold((0.0, &none), |a, b| if b.0 > a.0 { b } else { a });
        eprintln!("{name} {precision}: largest change vs f32 {:.2} points ({})", worst.0, worst.1);
        assert!(worst.0 <= bound, "{name} {precision}: {} moved {:.2} points from f32 (bound {bound})", worst.1, worst.0);
    }
}

/// urban-tiny on Urban1k (needs ../shared): bf16 within 0.5 points of f32
/// (issue 16), int8 within 2, the bound docs/cpu.md states for it.
#[test]
#[ignore = "about 7 minutes on 2 cores: cargo test --test lowp -- --ignored"]
fn urban_tiny_rankings_per_dtype() {
    let shared = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"));
    let (model_path, root) = (shared.join("fixtures/urban-tiny/model.pt"), shared.join("datasets/urban1k"));
    if !model_path.exists() || !root.join("caption").exists() {
        eprintln!("skipped: ../shared (urban-tiny and Urban1k) is not there");
        return;
    }
    rankings_per_dtype("urban-tiny", &model_path, &root, &[20, 40, 77], 0.5, 2.0);
}

/// `longclip demo`'s set (1000 held-out synth scenes, the bundled model).
#[test]
#[ignore = "minutes on 2 cores: cargo test --test lowp -- --ignored"]
fn demo_set_rankings_per_dtype() {
    use longclip::synth::{self, SynthOptions};
    let dir = tempfile::tempdir().unwrap();
    let opts = SynthOptions { n: 1000, seed: 20261122, ..SynthOptions::default() };
    synth::write_set(dir.path(), &opts, false).unwrap();
    let model = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo/longclip-demo.safetensors.gz"));
    rankings_per_dtype("demo", model, dir.path(), &[20, 40, 77], 0.5, 2.0);
}

/// LongCLIP-B-shaped random weights (the hidden sizes of the released
/// model), through `parity`: bf16 and int8 against f32 on generated scenes
/// and 120-token captions, at the parity bounds (bf16 0.999, int8 0.99).
#[test]
#[ignore = "a minute or more on 2 cores: cargo test --test lowp -- --ignored"]
fn longclip_b_random_weights_parity() {
    use longclip::checkpoint::Config;
    use longclip::parity::{self, ParitySetup};
    let ckpt = checkpoint::random(&Config::preset("longclip-b").unwrap(), 0).unwrap();
    let setup = ParitySetup { target: &ckpt, reference: &ckpt, device: &Device::Cpu, device_name: "cpu", dtypes: &[], images: 4, texts: 4, text_tokens: 120, seed: 3 };
    let precisions = [Precision::Float(DType::F32), Precision::Float(DType::BF16), Precision::Int8];
    let rows = parity::check_precisions(&setup, &precisions).unwrap();
    for r in &rows {
        eprintln!("{} {} vs {}: min cos {:.6}, mean {:.6} (bound {})", r.parity, r.run, r.vs, r.min_cos, r.mean_cos, r.bound);
    }
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r.ok), "a row below its bound");
}

/// Manifests record the compute dtype; one written before (no field) reads
/// as f32, and a run in another dtype is added to the record.
#[test]
fn manifests_record_the_compute_dtype_and_old_ones_load() {
    use longclip::index::{read_manifest, Dtype, Manifest, ModelInfo};
    let info = ModelInfo { path: None, fingerprint: None, embed_dim: 4, image_size: None, context_length: None, family: Default::default() };
    let mut m = Manifest::empty(info, 4, Dtype::F16, None, None, 100);
    let old = serde_json::to_value(&m).unwrap();
    assert!(old.get("compute_dtype").is_none(), "an unset dtype is not written: {old}");
    // An index from before the field: its manifest.json loads, as f32.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifest.json"), serde_json::to_string(&old).unwrap()).unwrap();
    let read = read_manifest(dir.path()).unwrap();
    assert_eq!((read.compute_dtype.as_deref(), read.compute_dtype()), (None, "f32"));
    // The first dtype of an empty index is no mix; the same one again neither.
    assert!(!m.note_compute_dtype("int8"));
    assert_eq!(m.compute_dtype(), "int8");
    assert!(!m.note_compute_dtype("int8"));
    assert_eq!(m.compute_dtype(), "int8");
    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(json["compute_dtype"], "int8");
    // A non-empty index from before gets f32 named beside the new dtype.
    let mut old_index = read;
    old_index.segments.push(serde_json::from_value(serde_json::json!({"name": "s000001", "rows": 1, "deleted": 0, "dtype": "f16", "min_id": 0, "max_id": 0, "sizes": {}, "hnsw": null})).unwrap());
    assert!(old_index.note_compute_dtype("bf16"), "the run that makes the mix says so");
    assert_eq!(old_index.compute_dtype(), "f32+bf16");
    assert_eq!(old_index.dtype_summary(), "f16, computed in f32+bf16");
    // Later runs in either dtype keep the record and are no new mix.
    assert!(!old_index.note_compute_dtype("f32") && !old_index.note_compute_dtype("bf16"));
    assert_eq!(old_index.compute_dtypes().collect::<Vec<_>>(), ["f32", "bf16"]);
}
