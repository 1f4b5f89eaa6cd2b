//! Seconds for `eval` on Urban1k with a LongCLIP-B-shaped random checkpoint
//! on CPU, split into decode, image encode, text encode and search, then the
//! same run again from the embedding cache.
//!
//! Run: cargo bench --bench eval_urban [-- URBAN1K_DIR [IMAGES]]
//! (default ../shared/datasets/urban1k, all 1,000 pairs). Not criterion: one
//! cold run takes minutes, and what matters is where the time goes.

use std::time::Instant;

use candle_core::{DType, Device};
use longclip::checkpoint::{self, Config};
use longclip::datasets::OnMissing;
use longclip::evaluate::{self, Encoder};
use longclip::model::LongClip;

#[path = "common/urban.rs"]
mod urban;
use urban::urban_from_args;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let Some((root, data)) = urban_from_args()? else { return Ok(()) };
    let ckpt = checkpoint::random(&Config::preset("longclip-b")?, 0)?;
    let fingerprint = ckpt.fingerprint()?;
    let model = LongClip::new(&ckpt, &Device::Cpu, DType::F32)?;
    let cache = tempfile::tempdir()?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("eval on {} ({} pairs), LongCLIP-B shapes, random weights, CPU, {threads} threads, batch 32", root.display(), data.images.len());
    for run in ["cold", "cached"] {
        let mut enc = Encoder::new(&model, Device::Cpu, 32, Some((cache.path(), fingerprint.as_str())))?;
        let start = Instant::now();
        let report = evaluate::evaluate_retrieval(&mut enc, &data, OnMissing::Fail, 248)?;
        let total = start.elapsed().as_secs_f64();
        let t = &enc.timings;
        println!(
            "{run:>6}: {total:7.1} s in all | decode {:.1} s | image encode {:.1} s ({:.1} images/s) | \
             text encode {:.1} s ({:.1} texts/s) | search {:.3} s | hashing + cache reads {:.2} s | from cache {} images, {} texts | T2I R@1 {:.1}",
            t.decode,
            t.image_encode,
            t.images_encoded as f64 / t.image_encode.max(1e-9),
            t.text_encode,
            t.texts_encoded as f64 / t.text_encode.max(1e-9),
            t.search,
            t.cache,
            t.images_cached,
            t.texts_cached,
            report.scores.t2i_r1,
        );
    }
    Ok(())
}
