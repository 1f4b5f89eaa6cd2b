//! Shared helpers for the integration tests: fixture paths, the reference
//! tensors from the official PyTorch code, and comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

/// Runs the `longclip` binary built for this test run.
pub fn longclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_longclip")).args(args).output().expect("runs")
}

/// Runs `longclip` and insists it succeeds.
pub fn ok(args: &[&str]) -> Output {
    let out = longclip(args);
    assert!(out.status.success(), "{args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs `longclip`, insists it fails without a panic, and returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = longclip(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    stderr
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

/// `expected.safetensors`: the official outputs (see MANIFEST.json).
pub fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("expected.safetensors"), &Device::Cpu).expect("expected.safetensors")
}

pub fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("MANIFEST.json")).unwrap()).unwrap()
}

/// Official token ids of the fixture captions, zero padding removed.
pub fn reference_ids(key: &str) -> Vec<Vec<u32>> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer.json")).unwrap()).unwrap();
    json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let ids: Vec<u32> = row[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let end = ids.iter().rposition(|&t| t != 0).map_or(0, |p| p + 1);
            ids[..end].to_vec()
        })
        .collect()
}

pub fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(candle_core::DType::F32).unwrap().to_vec2::<f32>().unwrap()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Asserts every row pair has cosine >= `min`; returns the smallest cosine.
pub fn assert_rows_cosine(what: &str, ours: &Tensor, reference: &Tensor, min: f64) -> f64 {
    let (a, b) = (rows(ours), rows(reference));
    assert_eq!(a.len(), b.len(), "{what}: row counts differ");
    let mut worst = 1.0f64;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let c = cosine(x, y);
        assert!(c >= min, "{what}: row {i} cosine {c:.7} < {min}");
        worst = worst.min(c);
    }
    eprintln!("{what}: min cosine {worst:.8} over {} rows", a.len());
    worst
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a.to_dtype(candle_core::DType::F32).unwrap() - b.to_dtype(candle_core::DType::F32).unwrap()).unwrap();
    d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

// ---------------------------------------------------------------------------
// Index tests (tests/index.rs, tests/segments.rs)

/// A picture that differs by `seed`: two colour gradients and a square.
pub fn picture(seed: u32, size: u32) -> image::RgbImage {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x % 256) as u8
    };
    let (a, b, c, d) = (next(), next(), next(), next());
    let (sx, sy, sw) = (next() as u32 % size, next() as u32 % size, size / 4 + next() as u32 % (size / 2));
    image::RgbImage::from_fn(size, size, |i, j| {
        if i >= sx && i < sx + sw && j >= sy && j < sy + sw {
            image::Rgb([d, 255 - a, b])
        } else {
            let t = (i * 255 / size) as u8;
            let u = (j * 255 / size) as u8;
            image::Rgb([a.wrapping_add(t / 2), b.wrapping_add(u / 2), c ^ (t / 4)])
        }
    })
}

pub fn info_json(index: &Path) -> serde_json::Value {
    serde_json::from_slice(&ok(&["index", "info", "--index", s(index), "--json"]).stdout).unwrap()
}

pub fn search_json(args: &[&str]) -> Vec<serde_json::Value> {
    let out = ok(args);
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Deterministic values in [-0.5, 0.5) (xorshift).
pub fn noise(seed: u64) -> impl FnMut() -> f32 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    }
}

/// Clustered vectors, as real embeddings are (a few topics, spread).
pub fn clustered(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut next = noise(seed);
    let centers: Vec<Vec<f32>> = (0..5).map(|_| (0..d).map(|_| next()).collect()).collect();
    let mut out = Vec::with_capacity(n * d);
    for i in 0..n {
        for c in &centers[i % 5] {
            out.push(c + 0.3 * next());
        }
    }
    out
}

pub fn write_npy_f32(path: &Path, data: &[f32], rows: usize, cols: usize) {
    let t = Tensor::from_vec(data.to_vec(), (rows, cols), &candle_core::Device::Cpu).unwrap();
    t.write_npy(path).unwrap();
}


/// The Python named by env `var` if it imports `modules`; otherwise why not,
/// for a test to skip loudly (or fail where CI requires it).
pub fn python_from_env(var: &str, modules: &[&str]) -> Result<PathBuf, String> {
    let Some(p) = std::env::var_os(var) else { return Err(format!("{var} is not set")) };
    let import = format!("import {}", modules.join(", "));
    match Command::new(&p).args(["-c", &import]).output() {
        Ok(o) if o.status.success() => Ok(PathBuf::from(p)),
        Ok(o) => Err(format!("{var}={}: `{import}` failed: {}", p.to_string_lossy(), String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or(""))),
        Err(e) => Err(format!("{var}={}: cannot run it: {e}", p.to_string_lossy())),
    }
}

/// Prints a "skipped" banner straight to stderr, past the test harness'
/// capture: a skip must be seen.
pub fn say_skipped(test: &str, problem: &str, how: &str) {
    let loud = format!("\n**********\n*** skipped: {test}: {problem}.\n*** {how}\n**********\n");
    std::io::Write::write_all(&mut std::io::stderr(), loud.as_bytes()).ok();
}
