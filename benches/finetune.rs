//! Fine-tuning throughput (samples/s) and peak memory of a LongCLIP-B-shaped
//! model (random weights), with and without the gradient cache.
//!
//! Run: cargo bench --bench finetune
//! Options (environment): FINETUNE_BENCH_BATCH (default 8), FINETUNE_BENCH_CHUNKS
//! (default "1,4"), FINETUNE_BENCH_STEPS (timed steps, default 2),
//! FINETUNE_BENCH_DEVICE (default cpu).
//!
//! Each configuration runs in its own process so its peak resident memory
//! (VmHWM) is its own. One warm-up step, then the timed steps; every step is
//! a full optimizer step (forward, PCM loss, backward, AdamW) on one batch of
//! 224 px images, 120-token long captions and 20-token short captions.

use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Tensor};
use longclip::checkpoint::{self, Config};
use longclip::finetune::optim::{AdamWConfig, CosineSchedule};
use longclip::finetune::run::peak_rss_bytes;
use longclip::finetune::{Batch, Params, StepOptions, Trainer};
use longclip::model;
use longclip::pcm::PcmOptions;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn child(batch: usize, chunks: usize, steps: usize, device: &str) {
    let device = model::device(device).unwrap();
    let dtype = if device.is_cuda() { DType::BF16 } else { DType::F32 };
    let ckpt = checkpoint::random(&Config::preset("longclip-b").unwrap(), 0).unwrap();
    let params = Params::from_checkpoint(ckpt, &device, Some(4.6052)).unwrap();
    let options = StepOptions { dtype, chunks, pcm: PcmOptions { pca_dim: 32, pca_group: 128, label_smoothing: 0.1 } };
    let schedule = CosineSchedule { base: 1e-6, warmup: 200, total: 1000 };
    let mut trainer = Trainer::new(params, AdamWConfig::default(), schedule, options).unwrap();
    let batch = Batch {
        pixels: Tensor::randn(0f32, 1.0, (batch, 3, 224, 224), &device).unwrap(),
        long: model::synthetic_token_ids(batch, 120),
        short: model::synthetic_token_ids(batch, 20),
    };
    trainer.step(&batch).unwrap();
    let start = Instant::now();
    for _ in 0..steps {
        trainer.step(&batch).unwrap();
    }
    let seconds = start.elapsed().as_secs_f64();
    let json = serde_json::json!({
        "batch": batch.len(), "chunks": chunks, "steps": steps,
        "seconds_per_step": seconds / steps as f64,
        "samples_per_second": (steps * batch.len()) as f64 / seconds,
        "peak_rss_gb": peak_rss_bytes().map(|b| b as f64 / 1e9),
    });
    println!("RESULT {json}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let device = env("FINETUNE_BENCH_DEVICE", "cpu");
    let steps: usize = env("FINETUNE_BENCH_STEPS", "2").parse().unwrap();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(args[i + 1].parse().unwrap(), args[i + 2].parse().unwrap(), steps, &device);
        return;
    }
    let batch: usize = env("FINETUNE_BENCH_BATCH", "8").parse().unwrap();
    let chunks: Vec<usize> = env("FINETUNE_BENCH_CHUNKS", "1,4").split(',').map(|c| c.trim().parse().unwrap()).collect();
    println!("LongCLIP-B fine-tuning on {device}, {} threads, batch {batch}, {steps} timed steps", num_threads());
    println!("{:>6} {:>7} {:>12} {:>10} {:>14}", "batch", "chunks", "s/step", "samples/s", "peak RSS (GB)");
    for c in chunks {
        let exe = std::env::current_exe().unwrap();
        let out = Command::new(exe).args(["--child", &batch.to_string(), &c.to_string()]).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(line) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
            eprintln!("chunks {c} failed:\n{}", String::from_utf8_lossy(&out.stderr));
            continue;
        };
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        println!(
            "{:>6} {:>7} {:>12.2} {:>10.3} {:>14.2}",
            r["batch"],
            r["chunks"],
            r["seconds_per_step"].as_f64().unwrap(),
            r["samples_per_second"].as_f64().unwrap(),
            r["peak_rss_gb"].as_f64().unwrap_or(f64::NAN)
        );
    }
}

fn num_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
