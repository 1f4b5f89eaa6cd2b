//! Running evaluations: a dataset's images and captions through the model
//! (with the embedding cache), then retrieval R@K ([`retrieval`]), the
//! effective-length probe ([`probe`](mod@probe)) or zero-shot classification
//! ([`classification`]); [`run`] runs them for one or several models from
//! checkpoint paths and [`report`] / [`tables`] turn the results into JSON,
//! CSV, records, text tables and charts.
//!
//! Images go through the official transform without EXIF rotation, because
//! the official scripts feed `Image.open(path)` straight to `preprocess`.
//! Captions are tokenized as the official `tokenize(..., truncate=True)` and
//! fed unpadded (exact: the text mask is causal and pooling is at EOT).

pub mod classification;
pub mod probe;
pub mod report;
pub mod retrieval;
pub mod run;
pub mod tables;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

use crate::cache::{self, FeatureCache, Key};
use crate::datasets::{Dataset, ImageRef, OnMissing};
use crate::model::{l2_normalize, LongClip};
use crate::preprocess::Transform;
use crate::tokenizer::Tokenizer;

pub use classification::{class_embeddings, evaluate_classification, ClassificationReport};
pub use probe::{probe, probe_rows, reader_ceiling, truncated_ids, truncated_ids_with, ProbeRow, ReaderCeiling, TokenizeFn, Unit};
pub use retrieval::{evaluate_retrieval, RetrievalReport};

/// Names the image preprocessing in cache entries: change it whenever the
/// pixels it produces change (v2: JPEGs through libjpeg-turbo; no EXIF).
const IMAGE_PIPELINE: &str = "v2-noexif";

/// Where the time went, in seconds, and how much the cache served.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    /// Reading, decoding and preprocessing images (on a GPU this overlaps
    /// image encoding).
    pub decode: f64,
    pub image_encode: f64,
    pub text_encode: f64,
    /// Similarity matrices and ranking.
    pub search: f64,
    /// Hashing inputs and reading the cache.
    pub cache: f64,
    pub images_cached: usize,
    pub images_encoded: usize,
    pub texts_cached: usize,
    pub texts_encoded: usize,
}

/// The model with its caches: turns images and token ids into normalized features.
pub struct Encoder<'a> {
    pub model: &'a LongClip,
    pub device: Device,
    pub batch_size: usize,
    pub progress: bool,
    pub timings: Timings,
    image_cache: Option<FeatureCache>,
    text_cache: Option<FeatureCache>,
}

/// Image features for the images that could be used.
pub struct ImageFeatures {
    /// [kept, D], L2-normalized.
    pub features: Tensor,
    /// Indices (into the input) of the rows of `features`.
    pub kept: Vec<usize>,
    /// Indices that failed, with the reason.
    pub failed: Vec<(usize, String)>,
}

impl<'a> Encoder<'a> {
    /// `cache`: the cache folder and the model's fingerprint, or None.
    pub fn new(model: &'a LongClip, device: Device, batch_size: usize, cache: Option<(&Path, &str)>) -> Result<Self> {
        let dim = model.config.embed_dim;
        // Features of another compute dtype differ (int8 by up to a few
        // thousandths of cosine): they get their own cache entries.
        let base = if device.is_cpu() { "cpu" } else { "gpu" };
        let device_kind = match model.precision {
            crate::model::Precision::Float(DType::F32) => base.to_string(),
            p => format!("{base}-{p}"),
        };
        let device_kind = device_kind.as_str();
        let (image_cache, text_cache) = match cache {
            Some((dir, fingerprint)) => (
                Some(FeatureCache::open(dir, fingerprint, &format!("images-{IMAGE_PIPELINE}-{device_kind}"), dim)?),
                Some(FeatureCache::open(dir, fingerprint, &text_cache_kind(model, device_kind), dim)?),
            ),
            None => (None, None),
        };
        Ok(Encoder { model, device, batch_size: batch_size.max(1), progress: false, timings: Timings::default(), image_cache, text_cache })
    }

    pub fn context_length(&self) -> usize {
        self.model.text.context_length()
    }

    /// Token ids by the model family's tokenizer at `context_length`, and
    /// how many were cut.
    pub fn tokenize(&self, texts: &[String], context_length: usize) -> Result<(Vec<Vec<u32>>, usize)> {
        let encodings = self.model.tokenize(texts, context_length)?;
        let truncated = encodings.iter().filter(|e| e.truncated).count();
        Ok((encodings.into_iter().map(|e| e.ids).collect(), truncated))
    }

    /// Embeds images; unreadable ones are reported in `failed`, never fatal.
    pub fn embed_images(&mut self, images: &[ImageRef]) -> Result<ImageFeatures> {
        let start = Instant::now();
        let keys: Vec<Option<Key>> = match &self.image_cache {
            Some(_) => images.par_iter().map(|im| im.bytes().ok().map(|b| cache::image_key(&b))).collect(),
            None => vec![None; images.len()],
        };
        let mut rows: Vec<Option<Vec<f32>>> = match &self.image_cache {
            Some(c) => keys.iter().map(|k| k.as_ref().and_then(|k| c.get(k))).collect(),
            None => vec![None; images.len()],
        };
        self.timings.cache += start.elapsed().as_secs_f64();
        let todo: Vec<usize> = (0..images.len()).filter(|&i| rows[i].is_none()).collect();
        self.timings.images_cached += images.len() - todo.len();
        let mut failed = Vec::new();
        for (i, result) in self.encode_images(images, &todo)? {
            match result {
                Ok(features) => {
                    if let (Some(c), Some(k)) = (self.image_cache.as_mut(), keys[i]) {
                        c.insert(k, features.clone());
                    }
                    rows[i] = Some(features);
                }
                Err(why) => failed.push((i, crate::embed::skip_reason(&images[i].name(), why))),
            }
        }
        if let Some(c) = self.image_cache.as_mut() {
            c.flush()?;
        }
        failed.sort_by_key(|f| f.0);
        let kept: Vec<usize> = (0..images.len()).filter(|&i| rows[i].is_some()).collect();
        let features = self.stack(kept.iter().map(|&i| rows[i].take().expect("kept rows exist")).collect())?;
        Ok(ImageFeatures { features, kept, failed })
    }

    /// Decodes and encodes images batch by batch. On a GPU the next batch is
    /// decoded (on all cores) while the current one is encoded; on the CPU
    /// both need the same cores, so they take turns and each is timed alone.
    fn encode_images(&mut self, images: &[ImageRef], todo: &[usize]) -> Result<Vec<(usize, Result<Vec<f32>, String>)>> {
        if todo.is_empty() {
            return Ok(vec![]);
        }
        let transform = Transform { exif: false, ..self.model.transform() };
        let decode = |chunk: &[usize]| -> Vec<Result<Vec<f32>>> {
            chunk.par_iter().map(|&i| images[i].bytes().and_then(|b| transform.from_bytes(&b, &images[i].name()))).collect()
        };
        let bar = self.bar(todo.len(), "images");
        let mut out = Vec::with_capacity(todo.len());
        let (mut decode_secs, mut encode_secs) = (0.0, 0.0);
        let batch = self.batch_size;
        if self.device.is_cpu() {
            for chunk in todo.chunks(batch) {
                let t = Instant::now();
                let pixels = decode(chunk);
                decode_secs += t.elapsed().as_secs_f64();
                let t = Instant::now();
                self.encode_batch(chunk, pixels, transform.size, &mut out)?;
                encode_secs += t.elapsed().as_secs_f64();
                bar.inc(chunk.len() as u64);
            }
        } else {
            let (tx, rx) = mpsc::sync_channel::<(&[usize], Vec<Result<Vec<f32>>>)>(1);
            decode_secs = std::thread::scope(|scope| -> Result<f64> {
                let producer = scope.spawn(|| {
                    let mut busy = 0.0;
                    for chunk in todo.chunks(batch) {
                        let t = Instant::now();
                        let pixels = decode(chunk);
                        busy += t.elapsed().as_secs_f64();
                        if tx.send((chunk, pixels)).is_err() {
                            break;
                        }
                    }
                    drop(tx);
                    busy
                });
                for (chunk, pixels) in rx.iter() {
                    let t = Instant::now();
                    self.encode_batch(chunk, pixels, transform.size, &mut out)?;
                    encode_secs += t.elapsed().as_secs_f64();
                    bar.inc(chunk.len() as u64);
                }
                Ok(producer.join().unwrap_or(0.0))
            })?;
        }
        bar.finish_and_clear();
        self.timings.decode += decode_secs;
        self.timings.image_encode += encode_secs;
        self.timings.images_encoded += out.iter().filter(|(_, r)| r.is_ok()).count();
        Ok(out)
    }

    /// Encodes the decoded images of one batch; failures pass through.
    fn encode_batch(
        &self,
        chunk: &[usize],
        pixels: Vec<Result<Vec<f32>>>,
        size: usize,
        out: &mut Vec<(usize, Result<Vec<f32>, String>)>,
    ) -> Result<()> {
        let mut batch_pixels = Vec::new();
        let mut ids = Vec::new();
        for (&i, p) in chunk.iter().zip(pixels) {
            match p {
                Ok(p) => {
                    batch_pixels.extend_from_slice(&p);
                    ids.push(i);
                }
                Err(e) => out.push((i, Err(format!("{e:#}")))),
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        let x = Tensor::from_vec(batch_pixels, (ids.len(), 3, size, size), &self.device)?;
        let f = self.model.vision.encode(&x)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
        out.extend(ids.into_iter().zip(f).map(|(i, row)| (i, Ok(row))));
        Ok(())
    }

    /// Embeds token sequences (SOT..EOT, unpadded): [N, D], L2-normalized.
    /// Identical sequences are encoded once.
    pub fn embed_ids(&mut self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let start = Instant::now();
        let keys: Vec<Key> = ids.par_iter().map(|s| cache::text_key(s)).collect();
        let mut found: HashMap<Key, Vec<f32>> = HashMap::new();
        let mut todo: Vec<usize> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if found.contains_key(k) {
                continue;
            }
            match self.text_cache.as_ref().and_then(|c| c.get(k)) {
                Some(f) => {
                    found.insert(*k, f);
                }
                None => todo.push(i),
            }
        }
        // Drop repeats among the sequences still to encode.
        let mut seen = std::collections::HashSet::new();
        todo.retain(|&i| seen.insert(keys[i]));
        self.timings.cache += start.elapsed().as_secs_f64();
        self.timings.texts_cached += ids.len() - todo.len();
        let t = Instant::now();
        todo.sort_by_key(|&i| ids[i].len());
        let bar = self.bar(todo.len(), "texts");
        for chunk in todo.chunks(self.batch_size) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let f = self.model.text.encode(&batch)?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
            for (&i, row) in chunk.iter().zip(f) {
                if let Some(c) = self.text_cache.as_mut() {
                    c.insert(keys[i], row.clone());
                }
                found.insert(keys[i], row);
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        self.timings.text_encode += t.elapsed().as_secs_f64();
        self.timings.texts_encoded += todo.len();
        if let Some(c) = self.text_cache.as_mut() {
            c.flush()?;
        }
        self.stack(keys.iter().map(|k| found[k].clone()).collect())
    }

    /// Rows -> [N, D] on the model's device, L2-normalized.
    fn stack(&self, rows: Vec<Vec<f32>>) -> Result<Tensor> {
        let dim = self.model.config.embed_dim;
        let n = rows.len();
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        let t = Tensor::from_vec(flat, (n, dim), &self.device)?;
        if n == 0 {
            return Ok(t);
        }
        l2_normalize(&t)
    }

    fn bar(&self, len: usize, what: &str) -> ProgressBar {
        if !self.progress || len == 0 {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len as u64);
        let style = format!("{{bar:40}} {{pos}}/{{len}} {what} ({{per_sec}}, ETA {{eta}})");
        bar.set_style(ProgressStyle::with_template(&style).expect("valid template"));
        bar
    }
}

/// A dataset with its unusable images removed, and their normalized features.
pub struct EmbeddedImages {
    pub data: Dataset,
    pub features: Tensor,
    /// Images left out, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Embeds a dataset's images; missing or unreadable images are left out with
/// their captions, or stop the run, as `on_missing` says.
pub fn embed_dataset_images(enc: &mut Encoder, data: &Dataset, on_missing: OnMissing) -> Result<EmbeddedImages> {
    let missing = data.missing_images();
    let mut skipped: Vec<(PathBuf, String)> = missing.iter().map(|&i| (data.images[i].clone(), "file not found".into())).collect();
    if on_missing == OnMissing::Fail && !skipped.is_empty() {
        bail!("{}", missing_message(&skipped, data.images.len()));
    }
    let present = data.without(&missing);
    let refs: Vec<ImageRef> = present.images.iter().cloned().map(ImageRef::File).collect();
    let out = enc.embed_images(&refs)?;
    let failed: Vec<usize> = out.failed.iter().map(|f| f.0).collect();
    skipped.extend(out.failed.into_iter().map(|(i, why)| (present.images[i].clone(), why)));
    if on_missing == OnMissing::Fail && !failed.is_empty() {
        bail!("{}", missing_message(&skipped, data.images.len()));
    }
    let data = present.without(&failed);
    if data.images.is_empty() {
        bail!("none of the {} images could be used", present.images.len() + missing.len());
    }
    Ok(EmbeddedImages { data, features: out.features, skipped })
}

fn missing_message(skipped: &[(PathBuf, String)], total: usize) -> String {
    let shown: Vec<String> = skipped.iter().take(10).map(|(p, why)| format!("  {}: {}", crate::term::path(p), crate::term::escape_for_terminal(why))).collect();
    let more = if skipped.len() > 10 { format!("\n  ... and {} more", skipped.len() - 10) } else { String::new() };
    format!(
        "{} of {total} images are missing or unreadable:\n{}{more}\n(use --on-missing skip to evaluate without them and their captions)",
        skipped.len(),
        shown.join("\n")
    )
}

/// The text cache's kind: FG-CLIP's short path gets its own (same weights,
/// other features); the default path keeps the name older caches have.
fn text_cache_kind(model: &LongClip, device_kind: &str) -> String {
    match model.text_path == model.family().default_text_path() {
        true => format!("texts-{device_kind}"),
        false => format!("texts-{}-{device_kind}", model.text_path),
    }
}

/// Official (Long-CLIP) token ids of each text at `context_length`
/// (truncated, EOT last); [`Encoder::tokenize`] follows the model's family.
pub fn tokenize(texts: &[String], context_length: usize) -> Result<(Vec<Vec<u32>>, usize)> {
    let encodings = Tokenizer::global().encode_batch(texts, context_length)?;
    let truncated = encodings.iter().filter(|e| e.truncated).count();
    Ok((encodings.into_iter().map(|e| e.ids).collect(), truncated))
}
