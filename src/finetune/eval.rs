//! Retrieval R@1 during fine-tuning (`--eval`): with long captions, which
//! training should raise, and with short ones (first sentence), which PCM is
//! there to keep. A small stand-in for the evaluator of issue 4.
//!
//! Sets: `urban1k:ROOT` (`image/N.jpg` with the first line of
//! `caption/N.txt`), `sharegpt4v:FILE` (its first 1,000 records,
//! ShareGPT4V-1k), or any `--data` file (json, csv, jsonl).

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::data::{self, Record, ShortCaption};
use crate::embed::Embedder;
use crate::model::LongClip;

/// Percent of queries whose pair ranks first.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    pub i2t: f64,
    pub t2i: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub set: String,
    pub images: usize,
    pub skipped: usize,
    pub long: Recall,
    pub short: Recall,
}

/// R@1 of normalized features paired row by row (image i with text i).
pub fn recall_at_1(images: &Tensor, texts: &Tensor) -> Result<Recall> {
    let n = images.dim(0)?;
    if n == 0 || texts.dim(0)? != n {
        bail!("recall needs as many texts as images (and at least one)");
    }
    let sims = images.matmul(&texts.t()?)?.to_dtype(candle_core::DType::F32)?;
    let i2t = sims.argmax(1)?.to_vec1::<u32>()?;
    let t2i = sims.argmax(0)?.to_vec1::<u32>()?;
    let hits = |best: &[u32]| best.iter().enumerate().filter(|(i, &b)| *i == b as usize).count() as f64 * 100.0 / n as f64;
    Ok(Recall { i2t: hits(&i2t), t2i: hits(&t2i) })
}

/// Reads `--eval SPEC` (any `--data` layout; `sharegpt4v:` keeps the
/// first 1,000 records).
pub fn read_eval_set(spec: &str) -> Result<Vec<Record>> {
    data::read_eval_records(spec, None, &ShortCaption::FirstSentence)
}

/// Long- and short-caption R@1 of `model` on `records` (unreadable images
/// are left out with their captions).
pub fn evaluate(model: &LongClip, name: &str, records: &[Record], device: &Device, batch_size: usize) -> Result<EvalResult> {
    let embedder = Embedder { model, device: device.clone(), batch_size, normalize: true, progress: false };
    let paths: Vec<PathBuf> = records.iter().map(|r| r.image.clone()).collect();
    let images = embedder.embed_images(&paths)?;
    if images.paths.is_empty() {
        bail!("{name}: none of the {} evaluation images could be read", records.len());
    }
    // Rows of the images that were read, in order.
    let mut kept = Vec::new();
    let mut next = 0;
    for (i, r) in records.iter().enumerate() {
        if next < images.paths.len() && images.paths[next] == r.image {
            kept.push(i);
            next += 1;
        }
    }
    let long: Vec<String> = kept.iter().map(|&i| records[i].long.clone()).collect();
    let short: Vec<String> = kept.iter().map(|&i| records[i].short.clone()).collect();
    let ctx = model.text.context_length();
    let long = embedder.embed_texts(&long, ctx)?.features;
    let short = embedder.embed_texts(&short, ctx)?.features;
    Ok(EvalResult {
        set: name.to_string(),
        images: kept.len(),
        skipped: images.skipped.len(),
        long: recall_at_1(&images.features, &long)?,
        short: recall_at_1(&images.features, &short)?,
    })
}
