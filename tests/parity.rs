//! `longclip bench --parity` and the library's `parity::check`: CPU f32
//! against CPU f32/f16/bf16 here (the same code compares CUDA on the GPU
//! machine), and a wrong reference is caught.

mod common;

use candle_core::{DType, Device};
use common::*;
use longclip::checkpoint::{self, Config};
use longclip::parity::{self, ParitySetup, F32_BOUND, HALF_BOUND};

fn setup<'a>(target: &'a checkpoint::Checkpoint, reference: &'a checkpoint::Checkpoint, dtypes: &'a [DType]) -> ParitySetup<'a> {
    ParitySetup { target, reference, device: &Device::Cpu, device_name: "cpu", dtypes, images: 4, texts: 4, text_tokens: 120, seed: 3 }
}

#[test]
fn cpu_half_types_hold_the_bounds_on_random_weights() {
    let ckpt = checkpoint::random(&Config::demo(), 7).unwrap();
    let dtypes = [DType::F32, DType::F16, DType::BF16];
    let rows = parity::check(&setup(&ckpt, &ckpt, &dtypes)).unwrap();
    let names: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r.parity.as_str(), r.run.as_str(), r.vs.as_str())).collect();
    assert_eq!(
        names,
        [
            ("images", "cpu-f32", "cpu-f32"),
            ("texts", "cpu-f32", "cpu-f32"),
            ("images", "cpu-f16", "cpu-f32"),
            ("texts", "cpu-f16", "cpu-f32"),
            ("images", "cpu-bf16", "cpu-f32"),
            ("texts", "cpu-bf16", "cpu-f32"),
        ]
    );
    for r in &rows {
        assert!(r.ok, "{r:?}");
        assert_eq!(r.rows, 4);
        assert_eq!(r.bound, if r.run == "cpu-f32" { F32_BOUND } else { HALF_BOUND });
        assert!(r.min_cos <= r.mean_cos + 1e-12 && r.mean_cos <= 1.0 + 1e-9, "{r:?}");
    }
    // The same device and dtype is the same arithmetic; the half types are not.
    assert!(rows[0].min_cos > 1.0 - 1e-9, "{:?}", rows[0]);
    assert!(rows[4].min_cos < 1.0 - 1e-7, "bf16 should differ from f32: {:?}", rows[4]);
}

#[test]
fn a_wrong_reference_fails_the_check() {
    let ckpt = checkpoint::random(&Config::demo(), 7).unwrap();
    let other = checkpoint::random(&Config::demo(), 8).unwrap();
    let rows = parity::check(&setup(&ckpt, &other, &[DType::F32])).unwrap();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert!(!r.ok && r.min_cos < 0.9, "{r:?}");
    }
    // Without an f32 run on the target, a half type is held to the CPU reference.
    let rows = parity::check(&setup(&ckpt, &other, &[DType::BF16])).unwrap();
    assert_eq!(rows[0].vs, "cpu-f32");
    assert!(!rows[0].ok);
}

#[test]
fn bad_parity_input_is_an_error_not_a_panic() {
    let ckpt = checkpoint::random(&Config::demo(), 7).unwrap();
    let mut s = setup(&ckpt, &ckpt, &[DType::F32]);
    s.text_tokens = 1000;
    let err = parity::check(&s).err().unwrap().to_string();
    assert!(err.contains("between 2 and the model's 248 positions"), "{err}");
    s.text_tokens = 100;
    s.images = 0;
    assert!(parity::check(&s).is_err());
    let a = candle_core::Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let b = candle_core::Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(parity::row_cosines(&a, &b).is_err());
    // Zero rows give NaN, and NaN is never ok.
    let row = parity::compare("images", "x", "y", &a, &a, 0.5).unwrap();
    assert!(!row.ok);
}

#[test]
fn bench_parity_on_the_reference_fixture_prints_one_line_per_tower_and_dtype() {
    let out = ok(&["bench", "--parity", "--model", s(&fixture("tiny-longclip.pt")), "--parity-batch", "3", "--text-tokens", "100"]);
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    for l in &lines {
        assert_eq!(l["ok"], true, "{l}");
        assert!(l["min_cos"].as_f64().unwrap() >= l["bound"].as_f64().unwrap(), "{l}");
        assert!(l["model"].as_str().unwrap().ends_with("tiny-longclip.pt"));
    }
    let runs: Vec<&str> = lines.iter().map(|l| l["run"].as_str().unwrap()).collect();
    assert_eq!(runs, ["cpu-f32", "cpu-f32", "cpu-f16", "cpu-f16", "cpu-bf16", "cpu-bf16"]);
}

#[test]
fn bench_writes_a_preset_checkpoint_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.safetensors");
    ok(&["bench", "--model", "demo", "--seed", "5", "--write-checkpoint", s(&path)]);
    let loaded = checkpoint::load(&path).unwrap();
    let want = checkpoint::random(&Config::demo(), 5).unwrap();
    assert_eq!(loaded.parameter_count(), want.parameter_count());
    assert_eq!(loaded.fingerprint().unwrap(), want.fingerprint().unwrap());
}
