//! `longclip bench`: encoder and pipeline throughput at the released shapes
//! (random weights), on any device, to compare with `benches/torch_bench.py`
//! run on the same machine.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde_json::json;

use crate::checkpoint::{self, Config};
use crate::embed::{self, Embedder};
use crate::kernels::peak::{dot_peak_gops, Dot};
use crate::model::{self, LongClip, Precision};
use crate::parity::ParitySetup;

#[derive(Args)]
pub struct BenchArgs {
    /// A preset (longclip-b, longclip-l: random weights) or a checkpoint file.
    #[arg(long, default_value = "longclip-b")]
    model: String,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// auto (f16 on CUDA, f32 on CPU), f32, f16, bf16 or int8 (CPU only).
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Images per batch for the vision tower and the end-to-end run.
    #[arg(long, default_value_t = 256)]
    image_batch: usize,
    /// Texts per batch.
    #[arg(long, default_value_t = 256)]
    text_batch: usize,
    /// Tokens per text, SOT and EOT included.
    #[arg(long, default_value_t = 120)]
    text_tokens: usize,
    /// Timed batches per measurement (after one warm-up batch).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Also time the whole pipeline (decode, preprocess, encode) on these images.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Cycle through --images until this many files have been embedded.
    #[arg(long, default_value_t = 0)]
    repeat: usize,
    /// Peak dense throughput of the device in TFLOP/s, to report the vision tower's share of it.
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Seed of a preset's random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Instead of timing: parity of --device in each of --parity-dtypes against CPU f32 on
    /// generated images and texts (--text-tokens long), one JSON line per (tower, dtype);
    /// fails when a row is below its bound (f32: cos >= 0.9999, f16/bf16 vs f32: 0.999,
    /// int8 vs f32: 0.99).
    #[arg(long)]
    parity: bool,
    /// Compute dtypes of the parity runs on --device (int8: CPU only).
    #[arg(long, value_delimiter = ',', default_value = "f32,f16,bf16")]
    parity_dtypes: Vec<String>,
    /// Generated images and texts per parity run.
    #[arg(long, default_value_t = 16)]
    parity_batch: usize,
    /// Instead of timing: write the model's weights (a preset's random ones) as a
    /// .safetensors checkpoint that every command loads, e.g. for `eval` at a preset's shapes.
    #[arg(long, conflicts_with = "parity")]
    write_checkpoint: Option<PathBuf>,
}

pub fn bench(args: BenchArgs) -> Result<()> {
    if args.iters == 0 || args.image_batch == 0 || args.text_batch == 0 {
        bail!("--iters, --image-batch and --text-batch must be at least 1");
    }
    if let Some(out) = &args.write_checkpoint {
        let ckpt = bench_checkpoint(&args)?;
        crate::export::save_checkpoint(&ckpt, out)?;
        eprintln!("wrote {} ({} parameters)", crate::term::path(out), ckpt.parameter_count());
        return Ok(());
    }
    // Device and dtype are checked before the weights are generated (seconds at longclip-l).
    if args.parity {
        let device = model::device(&args.device)?;
        return parity(&args, &bench_checkpoint(&args)?, &device);
    }
    let (device, precision) = model::device_and_precision(&args.device, &args.dtype)?;
    let ckpt = bench_checkpoint(&args)?;
    let model = LongClip::new(&ckpt, &device, precision)?;
    let head = json!({"model": args.model, "device": args.device, "dtype": precision.name()});
    println!("{head}");

    // (TFLOP/s, which peak): the towers' `share_of_peak` is against it.
    let peak = match (args.peak_tflops, device.is_cpu()) {
        (Some(p), _) => Some((p, "--peak-tflops")),
        (None, true) => {
            // The machine's own f32 FMA loop on every thread: how close each tower comes to it.
            let (gflops, isa) = crate::kernels::peak::fma_peak_gflops(1.0);
            println!("{}", json!({"what": "f32 FMA peak (all threads)", "tflops": gflops / 1e3, "isa": isa, "threads": rayon::current_num_threads()}));
            // A low-precision path is measured against its own instruction's peak.
            let dot = match precision {
                Precision::Int8 => Some((Dot::Int8, "int8 VPDPBUSD peak (all threads)")),
                Precision::Float(DType::BF16) => Some((Dot::Bf16, "bf16 VDPBF16PS peak (all threads)")),
                _ => None,
            };
            match dot.and_then(|(dot, what)| Some((dot_peak_gops(dot, 1.0)?, what))) {
                Some((gops, what)) => {
                    println!("{}", json!({"what": what, "tops": gops / 1e3, "share_of_f32_peak": gops / gflops}));
                    Some((gops / 1e3, what))
                }
                None => Some((gflops / 1e3, "f32 FMA peak (all threads)")),
            }
        }
        (None, false) => None,
    };

    let vision = time_vision(&model, &device, &args)?;
    let what = format!("vision tower, batch {}", args.image_batch);
    println!("{}", rate_line(&what, vision, "images/s", model.config.vision_flops(), peak));

    let texts = time_text(&model, &device, &args)?;
    let what = format!("text {} tokens, batch {}", args.text_tokens, args.text_batch);
    println!("{}", rate_line(&what, texts, "texts/s", model.config.text_flops(args.text_tokens), peak));

    if let Some(dir) = &args.images {
        let rate = time_end_to_end(&model, &device, dir, &args)?;
        println!("{}", json!({"what": format!("end to end from files, batch {}", args.image_batch), "per_second": rate, "unit": "images/s"}));
    }
    Ok(())
}

/// A preset's random weights, or the checkpoint file `--model` names.
fn bench_checkpoint(args: &BenchArgs) -> Result<checkpoint::Checkpoint> {
    match Config::preset(&args.model) {
        Ok(config) => checkpoint::random(&config, args.seed),
        Err(_) => checkpoint::load(args.model.as_ref()),
    }
}

fn parity(args: &BenchArgs, ckpt: &checkpoint::Checkpoint, device: &Device) -> Result<()> {
    let precisions = args.parity_dtypes.iter().map(|d| model::precision(d, device)).collect::<Result<Vec<_>>>()?;
    let setup = ParitySetup {
        target: ckpt,
        reference: ckpt,
        device,
        device_name: &args.device,
        dtypes: &[],
        images: args.parity_batch,
        texts: args.parity_batch,
        text_tokens: args.text_tokens,
        seed: args.seed,
    };
    let rows = crate::parity::check_precisions(&setup, &precisions)?;
    for row in &rows {
        let mut line = serde_json::to_value(row)?;
        line["model"] = json!(args.model);
        println!("{line}");
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        bail!("parity: {failed} of {} comparisons below their bound", rows.len());
    }
    Ok(())
}

/// One JSON line: items per second, TFLOP/s at `flops` per item, and the
/// share of `peak` TFLOP/s when known.
/// With int8 or bf16 the peak is that dot product's, while the tower's
/// f32 parts (attention, the patch embedding, the projections) count
/// against it too, so 100% is out of reach there (docs/cpu.md).
fn rate_line(what: &str, per_second: f64, unit: &str, flops: f64, peak: Option<(f64, &str)>) -> serde_json::Value {
    let tflops = per_second * flops / 1e12;
    let mut line = json!({"what": what, "per_second": per_second, "unit": unit, "tflops": tflops});
    if let Some((peak, name)) = peak {
        line["share_of_peak"] = json!(tflops / peak);
        line["peak"] = json!(name);
    }
    line
}



fn time_vision(model: &LongClip, device: &Device, args: &BenchArgs) -> Result<f64> {
    let size = model.vision.image_size();
    let pixels = Tensor::randn(0f32, 1.0, (args.image_batch, 3, size, size), device)?;
    let secs = timed(device, args.iters, || Ok(model.vision.encode(&pixels)?))?;
    Ok((args.image_batch * args.iters) as f64 / secs)
}

fn time_text(model: &LongClip, device: &Device, args: &BenchArgs) -> Result<f64> {
    let context = model.config.text.context_length;
    if args.text_tokens < 2 || args.text_tokens > context {
        bail!("--text-tokens must be between 2 and {context}");
    }
    let ids = model::synthetic_token_ids(args.text_batch, args.text_tokens);
    let secs = timed(device, args.iters, || Ok(model.text.encode(&ids)?))?;
    Ok((args.text_batch * args.iters) as f64 / secs)
}

fn time_end_to_end(model: &LongClip, device: &Device, dir: &std::path::Path, args: &BenchArgs) -> Result<f64> {
    let found = embed::list_images(dir)?;
    if found.is_empty() {
        bail!("{}: no images", dir.display());
    }
    let n = args.repeat.max(found.len());
    let paths: Vec<PathBuf> = found.iter().cycle().take(n).cloned().collect();
    let embedder = Embedder { model, device: device.clone(), batch_size: args.image_batch, normalize: true, progress: true };
    let start = Instant::now();
    let out = embedder.embed_images(&paths)?;
    out.features.to_device(&Device::Cpu)?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{}, {}", embed::summary("images", out.paths.len(), start), model.precision);
    Ok(out.paths.len() as f64 / secs)
}

/// One warm-up run, then `iters` timed runs; the result is copied to the host
/// at the end so queued GPU work is inside the timing.
fn timed(device: &Device, iters: usize, mut run: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    run()?.to_device(&Device::Cpu)?;
    device.synchronize()?;
    let start = Instant::now();
    let mut last = None;
    for _ in 0..iters.max(1) {
        last = Some(run()?);
    }
    if let Some(t) = last {
        t.to_device(&Device::Cpu)?;
    }
    device.synchronize()?;
    Ok(start.elapsed().as_secs_f64())
}
