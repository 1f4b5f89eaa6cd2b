//! Parity of a device and dtype against a reference: the same checkpoint
//! embeds the same generated images and texts on the reference (CPU f32)
//! and on the target device in f32, f16 and bf16 (and int8 on the CPU,
//! issue 16), and each run's rows are compared by cosine similarity (issue 15). Needs no files: the images are
//! `synth` scenes encoded in memory and the texts their long captions, so a
//! preset's random weights (`checkpoint::random`) make a full check.

use std::io::Cursor;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::checkpoint::Checkpoint;
use crate::model::{LongClip, Precision};
use crate::synth::{self, SynthOptions};

/// The bound on the worst row's cosine for the target's f32 against CPU f32.
pub const F32_BOUND: f64 = 0.9999;
/// The bound for f16 and bf16 against f32 on the same device.
pub const HALF_BOUND: f64 = 0.999;
/// The bound for int8 (dynamic quantization of the linear layers) against
/// f32: looser, as int8 is offered for indexing, not for reproducing tables
/// (docs/cpu.md has the measured values).
pub const INT8_BOUND: f64 = 0.99;

/// What to embed, and where.
pub struct ParitySetup<'a> {
    /// The checkpoint the target runs.
    pub target: &'a Checkpoint,
    /// The checkpoint the reference (CPU f32) runs: `target` for a real
    /// check; another one only to show that a mismatch is caught.
    pub reference: &'a Checkpoint,
    pub device: &'a Device,
    /// The device's name in the rows (`cpu`, `cuda`, `cuda:1`).
    pub device_name: &'a str,
    /// Compute dtypes tried on the target; F32 first if present (the half
    /// types are compared with the target's F32 when it is in the list, else
    /// with the CPU reference).
    pub dtypes: &'a [DType],
    /// Generated images (synth scenes at the model's resolution).
    pub images: usize,
    /// Generated texts (synth long captions).
    pub texts: usize,
    /// Tokens per text, SOT and EOT included, at most the model's positions.
    pub text_tokens: usize,
    /// Seed of the scenes and captions.
    pub seed: u64,
}

/// One comparison: the worst row's cosine of `run` against `vs`.
#[derive(Clone, Debug, Serialize)]
pub struct ParityRow {
    /// `images` or `texts`.
    pub parity: String,
    /// `device-dtype`, e.g. `cuda-bf16`.
    pub run: String,
    /// What it was compared with, e.g. `cpu-f32`.
    pub vs: String,
    /// Feature rows compared (images or texts).
    pub rows: usize,
    /// The worst row's cosine (NaN when a row is zero or not finite).
    pub min_cos: f64,
    pub mean_cos: f64,
    /// The least `min_cos` allowed: F32_BOUND or HALF_BOUND.
    pub bound: f64,
    /// `min_cos >= bound` (false for NaN).
    pub ok: bool,
}

/// Unnormalized features of both towers, on the CPU in f32: images [N, E], texts [M, E].
struct Features {
    images: Tensor,
    texts: Tensor,
}

/// The generated inputs: normalized pixels [N, 3, R, R] (CPU f32) and token ids.
struct Inputs {
    pixels: Tensor,
    ids: Vec<Vec<u32>>,
}

/// Runs every comparison. Errors: a text length the model cannot hold, an
/// empty batch, a dtype or op the device does not support (candle's error).
pub fn check(setup: &ParitySetup) -> Result<Vec<ParityRow>> {
    let precisions: Vec<Precision> = setup.dtypes.iter().map(|&d| d.into()).collect();
    check_precisions(setup, &precisions)
}

/// [`check`] with `precisions` (int8 included) in place of `setup.dtypes`.
pub fn check_precisions(setup: &ParitySetup, precisions: &[Precision]) -> Result<Vec<ParityRow>> {
    if setup.images == 0 || setup.texts == 0 {
        bail!("parity: needs at least one image and one text");
    }
    let cpu = Device::Cpu;
    let reference_model = LongClip::new(setup.reference, &cpu, DType::F32).context("parity: reference model (cpu f32)")?;
    let inputs = inputs(&reference_model, setup)?;
    let reference = embed(&reference_model, &inputs)?;
    drop(reference_model);
    let mut runs: Vec<(Precision, Features)> = Vec::new();
    for &dtype in precisions {
        let name = run_name(setup.device_name, dtype);
        let model = LongClip::new(setup.target, setup.device, dtype).with_context(|| format!("parity: model on {name}"))?;
        let features = embed(&model, &inputs).with_context(|| format!("parity: embedding on {name}"))?;
        runs.push((dtype, features));
    }
    let f32 = Precision::Float(DType::F32);
    let target_f32 = runs.iter().position(|(d, _)| *d == f32);
    let mut rows = Vec::new();
    for (dtype, features) in &runs {
        let (base, vs) = match target_f32 {
            Some(i) if *dtype != f32 => (&runs[i].1, run_name(setup.device_name, f32)),
            _ => (&reference, "cpu-f32".to_string()),
        };
        let bound = bound_for(*dtype);
        let run = run_name(setup.device_name, *dtype);
        rows.push(compare("images", &run, &vs, &base.images, &features.images, bound)?);
        rows.push(compare("texts", &run, &vs, &base.texts, &features.texts, bound)?);
    }
    Ok(rows)
}

/// The bound for a dtype: F32_BOUND for f32, INT8_BOUND for int8,
/// HALF_BOUND otherwise.
pub fn bound_for(precision: impl Into<Precision>) -> f64 {
    match precision.into() {
        Precision::Float(DType::F32) => F32_BOUND,
        Precision::Int8 => INT8_BOUND,
        Precision::Float(_) => HALF_BOUND,
    }
}

/// `device-dtype` with the device's `:` kept out (`cuda-bf16`).
fn run_name(device: &str, precision: Precision) -> String {
    format!("{}-{}", device.replace(':', ""), precision.name())
}

/// `f32`, `f16`, `bf16` (candle's names, lower case).
pub fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}").to_lowercase()
}

/// Compares two feature matrices [N, E] row by row.
/// Errors: different shapes.
pub fn compare(parity: &str, run: &str, vs: &str, base: &Tensor, x: &Tensor, bound: f64) -> Result<ParityRow> {
    let cos = row_cosines(base, x)?;
    // f64::min skips NaN: a NaN row (a zero or non-finite feature) must make the minimum NaN.
    let min_cos = if cos.iter().any(|c| c.is_nan()) { f64::NAN } else { cos.iter().copied().fold(f64::INFINITY, f64::min) };
    let mean_cos = cos.iter().sum::<f64>() / cos.len().max(1) as f64;
    // NaN fails: `>=` is false for it.
    let ok = !cos.is_empty() && min_cos >= bound;
    Ok(ParityRow { parity: parity.into(), run: run.into(), vs: vs.into(), rows: cos.len(), min_cos, mean_cos, bound, ok })
}

/// Cosine of each row of `a` with the same row of `b`, in f64.
/// Errors: shapes that differ. A zero row gives NaN.
pub fn row_cosines(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
    if a.dims() != b.dims() || a.rank() != 2 {
        bail!("parity: cannot compare features of shapes {:?} and {:?}", a.dims(), b.dims());
    }
    let a = a.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let b = b.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    Ok(a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let nx = x.iter().map(|p| p * p).sum::<f64>().sqrt();
            let ny = y.iter().map(|q| q * q).sum::<f64>().sqrt();
            dot / (nx * ny)
        })
        .collect())
}

/// Synth scenes (PNG-encoded in memory, then the model's own transform) and
/// their long captions cut to `text_tokens` by the model's tokenizer.
fn inputs(model: &LongClip, setup: &ParitySetup) -> Result<Inputs> {
    let context = model.config.text.context_length;
    if setup.text_tokens < 2 || setup.text_tokens > context {
        bail!("parity: text tokens must be between 2 and the model's {context} positions, got {}", setup.text_tokens);
    }
    let size = model.vision.image_size();
    let transform = model.transform();
    let opts = SynthOptions { n: setup.images.max(setup.texts), seed: setup.seed, size: size.max(synth::GRID * 4), ..Default::default() };
    let mut pixels = Vec::with_capacity(setup.images * 3 * size * size);
    for i in 0..setup.images {
        let mut png = Vec::new();
        synth::scene(&opts, i).render(opts.size).write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)?;
        pixels.extend(transform.from_bytes(&png, &format!("parity scene {i}"))?);
    }
    let pixels = Tensor::from_vec(pixels, (setup.images, 3, size, size), &Device::Cpu)?;
    // Several scenes' captions joined, so a text reaches `text_tokens`.
    let texts: Vec<String> = (0..setup.texts)
        .map(|i| (0..3).map(|k| synth::scene(&opts, (i + k) % opts.n).long_caption()).collect::<Vec<_>>().join(" "))
        .collect();
    let ids = model.tokenize(&texts, setup.text_tokens)?.into_iter().map(|e| e.ids).collect();
    Ok(Inputs { pixels, ids })
}

/// Both towers on the model's device; the features come back to the CPU in f32.
fn embed(model: &LongClip, inputs: &Inputs) -> Result<Features> {
    let device = model.text.device().clone();
    let images = model.vision.encode(&inputs.pixels.to_device(&device)?)?;
    let texts = model.text.encode(&inputs.ids)?;
    Ok(Features { images: images.to_device(&Device::Cpu)?.to_dtype(DType::F32)?, texts: texts.to_device(&Device::Cpu)?.to_dtype(DType::F32)? })
}

