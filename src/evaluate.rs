//! Running evaluations: a dataset's images and captions through the model
//! (with the embedding cache), then retrieval R@K, the effective-length
//! probe, or zero-shot classification.
//!
//! Images go through the official transform without EXIF rotation, because
//! the official scripts feed `Image.open(path)` straight to `preprocess`.
//! Captions are tokenized as the official `tokenize(..., truncate=True)` and
//! fed unpadded (exact: the text mask is causal and pooling is at EOT).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, ensure, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

use crate::cache::{self, FeatureCache, Key};
use crate::datasets::classes::ClassificationSet;
use crate::datasets::{Dataset, ImageRef, OnMissing};
use crate::metrics::{self, Accuracy, RetrievalScores};
use crate::model::{l2_normalize, LongClip};
use crate::preprocess::Transform;
use crate::tokenizer::{truncate_words, Tokenizer};

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
        let device_kind = if device.is_cpu() { "cpu" } else { "gpu" };
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
                Err(why) => failed.push((i, why)),
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

/// What `eval` reports for a retrieval set.
#[derive(Clone, Debug, Serialize)]
pub struct RetrievalReport {
    pub n_images: usize,
    pub n_texts: usize,
    pub scores: RetrievalScores,
    /// The lowest and highest numbers another order of exact ties would give.
    pub tie_range: Option<(RetrievalScores, RetrievalScores)>,
    /// Captions longer than the context, cut to it.
    pub truncated: usize,
    pub skipped: Vec<(PathBuf, String)>,
}

pub fn evaluate_retrieval(enc: &mut Encoder, data: &Dataset, on_missing: OnMissing, context_length: usize) -> Result<RetrievalReport> {
    let images = embed_dataset_images(enc, data, on_missing)?;
    let (ids, truncated) = enc.tokenize(&images.data.texts(), context_length)?;
    let texts = enc.embed_ids(&ids)?;
    let t = Instant::now();
    let ranks = metrics::retrieval_ranks(&images.features, &texts, &images.data.text_image())?;
    enc.timings.search += t.elapsed().as_secs_f64();
    Ok(RetrievalReport {
        n_images: images.data.images.len(),
        n_texts: ids.len(),
        scores: ranks.scores(),
        tie_range: ranks.tie_range(),
        truncated,
        skipped: images.skipped,
    })
}

/// How the probe cuts captions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// `tokenize(caption, context_length=N, truncate=True)`: N tokens with SOT and EOT.
    Tokens,
    /// `" ".join(caption.split(" ")[:N])`, then the model's full context.
    Words,
}

/// Turns texts into token ids at a context length (a family's tokenizer).
pub type TokenizeFn<'f> = &'f dyn Fn(&[String], usize) -> Result<Vec<Vec<u32>>>;

/// Long-CLIP's token ids of every text cut to `length` units.
pub fn truncated_ids(texts: &[String], length: usize, unit: Unit, context_length: usize) -> Result<Vec<Vec<u32>>> {
    truncated_ids_with(texts, length, unit, context_length, &|t, c| Ok(tokenize(t, c)?.0))
}

/// Token ids of every text cut to `length` units by `tokenize` (which must
/// truncate as `tokenize(..., truncate=True)`: the first ids, EOT last).
pub fn truncated_ids_with(texts: &[String], length: usize, unit: Unit, context_length: usize, tokenize: TokenizeFn) -> Result<Vec<Vec<u32>>> {
    match unit {
        Unit::Tokens => {
            ensure!(length >= 2, "a token length must be at least 2 (SOT and EOT), got {length}");
            tokenize(texts, length.min(context_length))
        }
        Unit::Words => {
            let cut: Vec<String> = texts.iter().map(|t| truncate_words(t, length)).collect();
            tokenize(&cut, context_length)
        }
    }
}

/// One probe length.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeRow {
    pub length: usize,
    #[serde(flatten)]
    pub scores: RetrievalScores,
    /// The lowest and highest numbers another order of exact ties would give.
    #[serde(skip)]
    pub tie_range: Option<(RetrievalScores, RetrievalScores)>,
    /// What a perfect reader of the cut captions could reach.
    #[serde(flatten)]
    pub ceiling: ReaderCeiling,
}

/// The T2I R@1/5/10 (percent) that a perfect reader of the cut captions
/// could reach: a cut caption whose ids equal the cut ids of captions of m
/// different images cannot tell those m images apart, so the best any model
/// can expect is min(K, m) / m for it (the true image placed uniformly
/// among the m). With whole, distinct captions it is 100. T2I only: for
/// I2T with several captions an image, "perfect" is not one number.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ReaderCeiling {
    #[serde(rename = "ceiling_t2i_r1")]
    pub t2i_r1: f64,
    #[serde(rename = "ceiling_t2i_r5")]
    pub t2i_r5: f64,
    #[serde(rename = "ceiling_t2i_r10")]
    pub t2i_r10: f64,
}

/// [`ReaderCeiling`] of the cut captions `ids` (one row a text, SOT..EOT)
/// whose images are `text_image`.
pub fn reader_ceiling(ids: &[Vec<u32>], text_image: &[usize]) -> ReaderCeiling {
    let mut images_of: HashMap<&[u32], std::collections::BTreeSet<usize>> = HashMap::new();
    for (t, &image) in ids.iter().zip(text_image) {
        images_of.entry(t.as_slice()).or_default().insert(image);
    }
    let mut sums = [0.0f64; 3];
    for t in ids {
        let m = images_of[t.as_slice()].len() as f64;
        for (sum, k) in sums.iter_mut().zip([1.0f64, 5.0, 10.0]) {
            *sum += k.min(m) / m;
        }
    }
    // Rounded to 1e-9: a sum of many 1/m carries float noise (85.99999999999999).
    let percent = |sum: f64| (1e11 * sum / ids.len().max(1) as f64).round() / 1e9;
    ReaderCeiling { t2i_r1: percent(sums[0]), t2i_r5: percent(sums[1]), t2i_r10: percent(sums[2]) }
}

/// R@K at each length: `encode` turns token ids into normalized features.
pub fn probe_rows(
    texts: &[String],
    text_image: &[usize],
    image_features: &Tensor,
    lengths: &[usize],
    unit: Unit,
    context_length: usize,
    encode: &mut dyn FnMut(&[Vec<u32>]) -> Result<Tensor>,
) -> Result<Vec<ProbeRow>> {
    let long_clip = |t: &[String], c: usize| Ok(tokenize(t, c)?.0);
    Ok(probe_rows_timed(texts, text_image, image_features, lengths, unit, context_length, &long_clip, encode)?.0)
}

/// `probe_rows`, and the seconds spent ranking.
fn probe_rows_timed(
    texts: &[String],
    text_image: &[usize],
    image_features: &Tensor,
    lengths: &[usize],
    unit: Unit,
    context_length: usize,
    tokenize: TokenizeFn,
    encode: &mut dyn FnMut(&[Vec<u32>]) -> Result<Tensor>,
) -> Result<(Vec<ProbeRow>, f64)> {
    let mut rows = Vec::with_capacity(lengths.len());
    let mut search = 0.0;
    for &length in lengths {
        let ids = truncated_ids_with(texts, length, unit, context_length, tokenize)?;
        let features = encode(&ids)?;
        let t = Instant::now();
        let ranks = metrics::retrieval_ranks(image_features, &features, text_image)?;
        search += t.elapsed().as_secs_f64();
        let ceiling = reader_ceiling(&ids, text_image);
        rows.push(ProbeRow { length, scores: ranks.scores(), tie_range: ranks.tie_range(), ceiling });
    }
    Ok((rows, search))
}

/// The probe for one model on a dataset; also returns the images used.
pub fn probe(
    enc: &mut Encoder,
    data: &Dataset,
    lengths: &[usize],
    unit: Unit,
    on_missing: OnMissing,
) -> Result<(Vec<ProbeRow>, EmbeddedImages)> {
    let images = embed_dataset_images(enc, data, on_missing)?;
    let texts = images.data.texts();
    let text_image = images.data.text_image();
    let context = enc.context_length();
    // The model's family cuts its captions (FG-CLIP and GOAL: HF's tokenizer).
    let model = enc.model;
    let family_tokenize = |t: &[String], c: usize| -> Result<Vec<Vec<u32>>> {
        Ok(model.tokenize(t, c)?.into_iter().map(|e| e.ids).collect())
    };
    let (rows, search) = probe_rows_timed(
        &texts,
        &text_image,
        &images.features,
        lengths,
        unit,
        context,
        &family_tokenize,
        &mut |ids| enc.embed_ids(ids),
    )?;
    enc.timings.search += search;
    Ok((rows, images))
}

/// Zero-shot class embeddings: each class's prompts embedded, normalized,
/// averaged and normalized again (the official `zeroshot_classifier`).
pub fn class_embeddings(enc: &mut Encoder, classes: &[String], templates: &[String], context_length: usize) -> Result<Tensor> {
    ensure!(!classes.is_empty(), "no class names");
    ensure!(!templates.is_empty(), "no prompt templates");
    for t in templates {
        ensure!(t.contains("{}"), "template '{t}' has no {{}} for the class name");
    }
    let prompts: Vec<String> = classes.iter().flat_map(|c| templates.iter().map(move |t| t.replacen("{}", c, 1))).collect();
    let (ids, _) = enc.tokenize(&prompts, context_length)?;
    let features = enc.embed_ids(&ids)?;
    let dim = features.dim(1)?;
    let mean = features.reshape((classes.len(), templates.len(), dim))?.mean(1)?;
    l2_normalize(&mean)
}

/// What `eval` reports for a classification set.
#[derive(Clone, Debug, Serialize)]
pub struct ClassificationReport {
    pub n_images: usize,
    pub n_classes: usize,
    pub accuracy: Accuracy,
    pub skipped: Vec<(String, String)>,
}

pub fn evaluate_classification(
    enc: &mut Encoder,
    set: &ClassificationSet,
    templates: &[String],
    on_missing: OnMissing,
    context_length: usize,
) -> Result<ClassificationReport> {
    let classes = class_embeddings(enc, &set.classes, templates, context_length)?;
    let out = enc.embed_images(&set.images)?;
    let skipped: Vec<(String, String)> = out.failed.iter().map(|(i, why)| (set.images[*i].name(), why.clone())).collect();
    if on_missing == OnMissing::Fail && !skipped.is_empty() {
        let list: Vec<String> = skipped.iter().take(10).map(|(n, w)| format!("  {}: {}", crate::term::escape_for_terminal(n), crate::term::escape_for_terminal(w))).collect();
        bail!("{} images are unreadable:\n{}\n(use --on-missing skip to evaluate without them)", skipped.len(), list.join("\n"));
    }
    let labels: Vec<usize> = out.kept.iter().map(|&i| set.labels[i]).collect();
    let t = Instant::now();
    let ranks = metrics::classification_ranks(&out.features, &classes, &labels)?;
    enc.timings.search += t.elapsed().as_secs_f64();
    Ok(ClassificationReport { n_images: labels.len(), n_classes: set.classes.len(), accuracy: metrics::accuracy(&ranks), skipped })
}
