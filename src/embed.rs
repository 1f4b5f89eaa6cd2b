//! The embedding pipeline: text and image inputs -> batches -> features.
//!
//! Texts are tokenized in parallel, sorted by length and encoded in batches
//! padded only to their longest member. Images are decoded and preprocessed
//! on all cores for the next batch while the model encodes the current one;
//! an image that fails is skipped and reported, never fatal.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};

use crate::model::{l2_normalize, LongClip};
use crate::preprocess::is_image_path;

/// Reads texts: `.json` (array of strings), `.jsonl` (a string or an object
/// with "text" or "caption" per line) or anything else as one text per line.
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let data = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "json" => read_json_texts(&data, path),
        "jsonl" => data
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| jsonl_text(l).with_context(|| format!("{}:{}", path.display(), i + 1)))
            .collect(),
        _ => Ok(data.lines().map(str::to_string).collect()),
    }
}

fn read_json_texts(data: &str, path: &Path) -> Result<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(data)
        .with_context(|| format!("{}: invalid JSON", path.display()))?;
    let items = value.as_array().with_context(|| format!("{}: expected a JSON array of strings", path.display()))?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v.as_str() {
            Some(s) => Ok(s.to_string()),
            None => bail!("{}: item {i} is not a string", path.display()),
        })
        .collect()
}

fn jsonl_text(line: &str) -> Result<String> {
    let value: serde_json::Value = serde_json::from_str(line).context("invalid JSON")?;
    if let Some(s) = value.as_str() {
        return Ok(s.to_string());
    }
    ["text", "caption"]
        .iter()
        .find_map(|k| value.get(*k).and_then(|v| v.as_str()))
        .map(str::to_string)
        .context("expected a string or an object with a \"text\" or \"caption\" string")
}

/// Checks that `out` can be an output file before any work is done.
/// Errors: `out` is a folder, or its folder does not exist.
pub fn check_output(out: &Path) -> Result<()> {
    let trailing_slash = out.as_os_str().as_encoded_bytes().ends_with(std::path::MAIN_SEPARATOR_STR.as_bytes());
    if out.is_dir() || trailing_slash {
        bail!("{}: is a folder; --out takes a file (.npy, .json or .jsonl)", out.display());
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if parent.exists() && !parent.is_dir() {
        bail!("{}: {} is a file, not a folder", out.display(), parent.display());
    }
    if !parent.is_dir() {
        bail!("{}: its folder does not exist", out.display());
    }
    Ok(())
}

/// Lists images: a directory (recursively, sorted by path), a single image,
/// or a text file with one path per line (relative to the current directory).
pub fn list_images(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut out = Vec::new();
        walk_images(path, &mut out)?;
        out.sort();
        return Ok(out);
    }
    if !path.exists() {
        bail!("{}: no such file or directory (expected a folder, an image, or a text file listing images)", path.display());
    }
    if is_image_path(path) {
        return Ok(vec![path.to_path_buf()]);
    }
    let list = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read as a list of images (one path a line): {e}", path.display()))?;
    Ok(list.lines().map(str::trim).filter(|l| !l.is_empty()).map(PathBuf::from).collect())
}

/// Why an image was skipped, without its name: the lists that hold the
/// reason put the file beside it (`PATH: REASON`, `{path, reason}`), and the
/// image pipeline's errors (`Transform::from_path`, `from_bytes`) begin with
/// `NAME: `. `message` is the error as `{e:#}` prints it.
pub fn skip_reason(name: &str, message: String) -> String {
    match message.strip_prefix(name).and_then(|rest| rest.strip_prefix(": ")) {
        Some(reason) => reason.to_string(),
        None => message,
    }
}

fn walk_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}: cannot list directory", dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("{}: cannot list directory", dir.display()))?.path();
        if path.is_dir() {
            walk_images(&path, out)?;
        } else if is_image_path(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Features in input order, and what happened on the way.
pub struct TextEmbeddings {
    pub features: Tensor,
    /// Rows longer than the context, cut to it (EOT kept).
    pub truncated: Vec<usize>,
    pub empty: Vec<usize>,
}

pub struct ImageEmbeddings {
    pub features: Tensor,
    /// The images behind each row, in input order.
    pub paths: Vec<PathBuf>,
    /// Images that could not be used, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// One batch of [`Embedder::embed_images_each`].
pub struct ImageBatch {
    pub features: Tensor,
    pub paths: Vec<PathBuf>,
    pub skipped: Vec<(PathBuf, String)>,
}

pub struct Embedder<'a> {
    pub model: &'a LongClip,
    pub device: Device,
    pub batch_size: usize,
    pub normalize: bool,
    pub progress: bool,
}

impl Embedder<'_> {
    pub fn embed_texts(&self, texts: &[String], context_length: usize) -> Result<TextEmbeddings> {
        if context_length > self.model.text.context_length() {
            bail!(
                "context length {context_length} exceeds the model's {} positions",
                self.model.text.context_length()
            );
        }
        let encodings = self.model.tokenize(texts, context_length)?;
        let truncated = (0..texts.len()).filter(|&i| encodings[i].truncated).collect();
        let empty = (0..texts.len()).filter(|&i| texts[i].trim().is_empty()).collect();
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| encodings[i].ids.len());
        let bar = self.bar(texts.len() as u64, "texts");
        let mut parts = Vec::new();
        for chunk in order.chunks(self.batch_size.max(1)) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| encodings[i].ids.clone()).collect();
            parts.push(self.model.text.encode(&batch)?);
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let features = unsort(parts, &order, &self.device)?;
        Ok(TextEmbeddings { features: self.finish(features)?, truncated, empty })
    }

    /// Preprocesses the next batch on all cores while this thread encodes.
    pub fn embed_images(&self, paths: &[PathBuf]) -> Result<ImageEmbeddings> {
        let mut parts = Vec::new();
        let mut kept = Vec::new();
        let mut skipped = Vec::new();
        self.embed_images_each(paths, |batch| {
            if !batch.paths.is_empty() {
                parts.push(batch.features);
            }
            kept.extend(batch.paths);
            skipped.extend(batch.skipped);
            Ok(())
        })?;
        let features = if parts.is_empty() {
            Tensor::zeros((0, self.model.config.embed_dim), candle_core::DType::F32, &self.device)?
        } else {
            Tensor::cat(&parts, 0)?
        };
        Ok(ImageEmbeddings { features, paths: kept, skipped })
    }

    /// The image pipeline one batch at a time, in input order: `each` gets
    /// the features of the batch's usable images (normalized unless raw)
    /// and the files skipped, e.g. to save finished work as it goes.
    pub fn embed_images_each(&self, paths: &[PathBuf], mut each: impl FnMut(ImageBatch) -> Result<()>) -> Result<()> {
        let transform = self.model.transform();
        let batch = self.batch_size.max(1);
        let bar = self.bar(paths.len() as u64, "images");
        let (tx, rx) = mpsc::sync_channel::<Vec<(usize, Result<Vec<f32>>)>>(1);
        let transform_ref = &transform;
        std::thread::scope(|scope| -> Result<()> {
            scope.spawn(move || {
                for (c, chunk) in paths.chunks(batch).enumerate() {
                    let results = transform_ref.batch_from_paths(chunk);
                    let numbered = results.into_iter().enumerate().map(|(i, r)| (c * batch + i, r)).collect();
                    if tx.send(numbered).is_err() {
                        break;
                    }
                }
                drop(tx);
            });
            // Owned here so an early return drops it and the producer stops.
            let rx = rx;
            for results in rx.iter() {
                let mut pixels = Vec::new();
                let n = results.len();
                let mut kept = Vec::new();
                let mut skipped = Vec::new();
                for (i, r) in results {
                    match r {
                        Ok(p) => {
                            pixels.extend_from_slice(&p);
                            kept.push(paths[i].clone());
                        }
                        Err(e) => skipped.push((paths[i].clone(), skip_reason(&paths[i].display().to_string(), format!("{e:#}")))),
                    }
                }
                let size = transform.size;
                let features = if pixels.is_empty() {
                    Tensor::zeros((0, self.model.config.embed_dim), candle_core::DType::F32, &self.device)?
                } else {
                    let count = pixels.len() / (3 * size * size);
                    let t = Tensor::from_vec(pixels, (count, 3, size, size), &self.device)?;
                    self.finish(self.model.vision.encode(&t)?)?
                };
                each(ImageBatch { features, paths: kept, skipped })?;
                bar.inc(n as u64);
            }
            Ok(())
        })?;
        bar.finish_and_clear();
        Ok(())
    }

    fn finish(&self, features: Tensor) -> Result<Tensor> {
        let features = features.to_dtype(candle_core::DType::F32)?;
        if self.normalize && features.dim(0)? > 0 {
            return l2_normalize(&features);
        }
        Ok(features)
    }

    fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        let style = format!("{{bar:40}} {{pos}}/{{len}} {what} ({{per_sec}}, ETA {{eta}})");
        bar.set_style(ProgressStyle::with_template(&style).expect("valid template"));
        bar
    }
}

/// Batches were encoded in length order; put rows back in input order.
fn unsort(parts: Vec<Tensor>, order: &[usize], device: &Device) -> Result<Tensor> {
    let sorted = Tensor::cat(&parts, 0)?;
    let mut inverse = vec![0u32; order.len()];
    for (pos, &i) in order.iter().enumerate() {
        inverse[i] = pos as u32;
    }
    let index = Tensor::from_vec(inverse, order.len(), device)?;
    Ok(sorted.index_select(&index, 0)?)
}

/// Writes features [N, D] atomically in the format `path`'s extension
/// names: `.json` a JSON array of N arrays of D numbers, `.jsonl` one array
/// per line (each is what clip-retrieval back's `/knn-service` takes as
/// `embedding_input`), anything else a float32 `.npy`. JSON numbers are the
/// shortest text that reads back as the same f32.
pub fn write_features(features: &Tensor, path: &Path) -> Result<()> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    if ext != "json" && ext != "jsonl" {
        return write_npy(features, path);
    }
    let rows = features.to_dtype(candle_core::DType::F32)?.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
    let rows = rows.iter().map(|r| serde_json::to_string(r)).collect::<serde_json::Result<Vec<String>>>()?;
    let text = if ext == "json" { format!("[{}]\n", rows.join(",\n")) } else { rows.iter().map(|r| format!("{r}\n")).collect() };
    crate::export::write_atomic(path, text.as_bytes())
}

/// Writes a float32 `.npy` [N, D] atomically.
pub fn write_npy(features: &Tensor, path: &Path) -> Result<()> {
    let tmp = crate::export::temp_path(path);
    features
        .to_dtype(candle_core::DType::F32)?
        .to_device(&Device::Cpu)?
        .write_npy(&tmp)
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename into place", path.display()))
}

/// `OUT.npy` -> `OUT.ids.txt`, `OUT.skipped.txt`.
pub fn sidecar(out: &Path, suffix: &str) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    out.with_file_name(format!("{stem}.{suffix}"))
}

/// A closing line with throughput, e.g. "embedded 1000 images in 12.3 s (81.3/s)".
pub fn summary(what: &str, count: usize, start: Instant) -> String {
    let secs = start.elapsed().as_secs_f64();
    format!("embedded {count} {what} in {secs:.2} s ({:.1}/s)", count as f64 / secs.max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::skip_reason;

    #[test]
    fn skip_reasons_drop_the_leading_name_only() {
        let reason = |name: &str, msg: &str| skip_reason(name, msg.to_string());
        assert_eq!(reason("imgs/bad.png", "imgs/bad.png: not an image: unknown format"), "not an image: unknown format");
        assert_eq!(reason("a.png", "a.png: file not found"), "file not found");
        // A message that does not start with the name is kept whole.
        assert_eq!(reason("a.png", "decoder failed"), "decoder failed");
        assert_eq!(reason("a.png", "a.pngx: other"), "a.pngx: other");
        assert_eq!(reason("a.png", "b/a.png: x"), "b/a.png: x");
    }
}
