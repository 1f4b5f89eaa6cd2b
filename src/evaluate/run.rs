//! Runs of `eval`, `probe` and zero-shot classification for one or several
//! checkpoints. Each model is loaded, run and dropped in turn (two large
//! models never sit in memory together) and its results are kept with what
//! identifies it: path, label, fingerprint, family, text path and context.
//! [`super::report`] turns a run into JSON, CSV and records,
//! [`super::tables`] into text tables and charts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Device;
use serde::Serialize;

use super::{ClassificationReport, Encoder, ProbeRow, RetrievalReport, Timings, Unit};
use crate::checkpoint::{self, Config};
use crate::datasets::classes::ClassificationSet;
use crate::datasets::{Dataset, OnMissing};
use crate::family::{Family, TextPath};
use crate::model::{self, LongClip};
use crate::reference::{self, PaperModel, Published};

/// How models are run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// `cpu`, `cuda` or `cuda:N` ([`model::device`]).
    pub device: String,
    pub batch_size: usize,
    /// The embedding cache folder; None embeds everything afresh and stores nothing.
    pub cache_dir: Option<PathBuf>,
    /// FG-CLIP's text path (None: each family's default). With several
    /// models, a family without this path runs its default (and says so).
    pub text_path: Option<TextPath>,
    /// Progress bars on standard error.
    pub progress: bool,
    /// Compute dtype ([`model::precision`]): f32 (the default, exact), bf16,
    /// f16, or int8 (CPU only; moves R@K, docs/cpu.md).
    pub dtype: String,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { device: "cpu".into(), batch_size: 32, cache_dir: None, text_path: None, progress: false, dtype: "f32".into() }
    }
}

/// What identifies a model in a report.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    /// Short name for tables and plots ([`model_labels`]).
    pub label: String,
    /// `sha256:…` of the weights ([`checkpoint::Checkpoint::fingerprint`]).
    pub fingerprint: String,
    pub family: Family,
    pub text_path: TextPath,
    /// Positions of the text path that runs: the default context.
    pub positions: usize,
    /// `cpu`, or the GPU as candle names it.
    pub device: String,
    /// What the encoders computed in (`f32`, `bf16`, `int8`, ...).
    pub dtype: String,
    #[serde(skip)]
    pub config: Config,
}

impl ModelInfo {
    /// `sha256:` and the first 12 hex digits.
    pub fn short_fingerprint(&self) -> String {
        self.fingerprint.chars().take(19).collect()
    }

    /// ", FG-CLIP long text path" for a model that is not Long-CLIP, else "".
    pub fn family_note(&self) -> String {
        match self.family {
            Family::LongClip => String::new(),
            f => format!(", {f} {} text path", self.text_path),
        }
    }

    /// `--context-length` (None: the model's positions), checked against them.
    pub fn context_length(&self, flag: Option<usize>) -> Result<usize> {
        let positions = self.positions;
        match flag {
            None => Ok(positions),
            Some(n) if (2..=positions).contains(&n) => Ok(n),
            Some(n) => bail!("--context-length {n}: {} has {positions} positions (use 2 to {positions})", self.path.display()),
        }
    }
}

/// A loaded model.
pub struct LoadedModel {
    pub info: ModelInfo,
    pub model: LongClip,
    pub device: Device,
}

impl LoadedModel {
    /// Loads `path` on `opts.device` with `opts.text_path`. `lenient`: a
    /// family without that text path runs its default instead of failing
    /// (for runs of several models); the returned note says so.
    pub fn load(path: &Path, label: &str, opts: &RunOptions, lenient: bool) -> Result<(Self, Option<String>)> {
        let (device, precision) = model::device_and_precision(&opts.device, &opts.dtype)?;
        let ckpt = checkpoint::load(path)?;
        let family = ckpt.config.family;
        let (text_path, note) = match opts.text_path {
            Some(p) if lenient && family.text_path(Some(p)).is_err() => {
                let default = family.default_text_path();
                (Some(default), Some(format!("{label}: {} has no {p} text path; it runs its {default} one", family.name())))
            }
            p => (p, None),
        };
        let fingerprint = ckpt.fingerprint()?;
        let model = LongClip::with_text_path(&ckpt, &device, precision, text_path)?;
        let info = ModelInfo {
            path: path.to_path_buf(),
            label: label.to_string(),
            fingerprint,
            family,
            text_path: model.text_path,
            positions: model.text.context_length(),
            device: device_name(&device),
            dtype: precision.to_string(),
            config: ckpt.config.clone(),
        };
        Ok((LoadedModel { info, model, device }, note))
    }

    /// An encoder with the options' cache and batch size.
    pub fn encoder(&self, opts: &RunOptions) -> Result<Encoder<'_>> {
        let cache = opts.cache_dir.as_deref().map(|dir| (dir, self.info.fingerprint.as_str()));
        let mut enc = Encoder::new(&self.model, self.device.clone(), opts.batch_size, cache)?;
        enc.progress = opts.progress;
        Ok(enc)
    }
}

fn device_name(device: &Device) -> String {
    if device.is_cpu() {
        "cpu".to_string()
    } else {
        format!("{device:?}")
    }
}

/// File stems (the folder's name for generic stems such as "model"), or
/// whole paths where two are equal.
pub fn model_labels(paths: &[PathBuf]) -> Vec<String> {
    let name = |p: &PathBuf| {
        let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        // "x.safetensors.gz" -> "x".
        let stem = stem.strip_suffix(".safetensors").map(str::to_string).unwrap_or(stem);
        let generic = ["model", "pytorch_model", "open_clip_pytorch_model", "checkpoint", "weights"].contains(&stem.as_str());
        match p.parent().and_then(|d| d.file_name()) {
            Some(dir) if generic => dir.to_string_lossy().into_owned(),
            _ => stem,
        }
    };
    let stems: Vec<String> = paths.iter().map(name).collect();
    stems
        .iter()
        .zip(paths)
        .map(|(s, p)| if stems.iter().filter(|t| *t == s).count() > 1 { p.display().to_string() } else { s.clone() })
        .collect()
}

/// `--paper-model` given once (every model) or once per model (in order).
pub fn paper_models(flags: &[String], n_models: usize) -> Result<Vec<PaperModel>> {
    let parsed: Vec<PaperModel> = flags.iter().map(|f| PaperModel::parse(f)).collect::<Result<_>>()?;
    match parsed.len() {
        0 => Ok(vec![PaperModel::FromCheckpoint; n_models]),
        1 => Ok(vec![parsed[0]; n_models]),
        n if n == n_models => Ok(parsed),
        n => bail!("--paper-model given {n} times for {n_models} models (give it once, or once per --model)"),
    }
}

/// Loads each model in turn and calls `each` with it and its index; the
/// model is dropped before the next one loads.
fn for_each_model<T>(
    paths: &[PathBuf],
    opts: &RunOptions,
    mut each: impl FnMut(usize, LoadedModel, Vec<String>) -> Result<T>,
) -> Result<Vec<T>> {
    if paths.is_empty() {
        bail!("no model given");
    }
    // A run of several models fails on a missing file before the first
    // model's work, not after it.
    if let Some(missing) = paths.iter().find(|p| !p.exists()) {
        bail!("{}: no such file or directory (no model was run)", missing.display());
    }
    model::device_and_precision(&opts.device, &opts.dtype)?;
    let labels = model_labels(paths);
    let lenient = paths.len() > 1;
    let mut out = Vec::with_capacity(paths.len());
    for (i, (path, label)) in paths.iter().zip(&labels).enumerate() {
        let (m, note) = LoadedModel::load(path, label, opts, lenient)?;
        out.push(each(i, m, note.into_iter().collect())?);
    }
    Ok(out)
}

/// One model's retrieval numbers.
#[derive(Clone, Debug)]
pub struct ModelRetrieval {
    pub model: ModelInfo,
    pub context_length: usize,
    pub report: RetrievalReport,
    pub timings: Timings,
    /// Loading the model and evaluating, in seconds.
    pub seconds: f64,
    /// The published model whose numbers stand beside these, if any.
    pub paper_model: Option<&'static str>,
    /// Its numbers on this dataset, split and text path (none with a
    /// shorter `--context-length`: that is another protocol).
    pub paper: Vec<Published>,
    /// Things to tell the user (a text path not taken).
    pub notes: Vec<String>,
}

/// `eval` of one dataset by one or several models.
#[derive(Clone, Debug)]
pub struct RetrievalRun {
    pub dataset: String,
    pub split: String,
    pub models: Vec<ModelRetrieval>,
    /// The whole run, in seconds (callers may add their own loading time).
    pub seconds: f64,
}

/// How `eval` runs on a retrieval set.
#[derive(Clone, Debug)]
pub struct RetrievalSpec {
    pub on_missing: OnMissing,
    /// Tokens per caption (None: each model's positions).
    pub context_length: Option<usize>,
    /// Whose published numbers to show, one per model ([`paper_models`]).
    pub paper: Vec<PaperModel>,
}

/// R@K of every model on `data`; `done` sees each model's result as it
/// comes (for printing as the run goes).
pub fn run_retrieval(
    paths: &[PathBuf],
    data: &Dataset,
    opts: &RunOptions,
    spec: &RetrievalSpec,
    done: &mut dyn FnMut(&ModelRetrieval),
) -> Result<RetrievalRun> {
    let start = Instant::now();
    let models = for_each_model(paths, opts, |i, m, notes| {
        let t0 = Instant::now();
        let context = m.info.context_length(spec.context_length)?;
        let mut enc = m.encoder(opts)?;
        let report = super::evaluate_retrieval(&mut enc, data, spec.on_missing, context)?;
        let paper_model = spec.paper.get(i).copied().unwrap_or_default().resolve(&m.info.config);
        let paper = match paper_model {
            Some(pm) if context == m.info.positions => reference::retrieval_for_run(pm, &data.name, &data.split, m.info.text_path),
            _ => Vec::new(),
        };
        let timings = enc.timings.clone();
        let r = ModelRetrieval { model: m.info, context_length: context, report, timings, seconds: t0.elapsed().as_secs_f64(), paper_model, paper, notes };
        done(&r);
        Ok(r)
    })?;
    Ok(RetrievalRun { dataset: data.name.clone(), split: data.split.clone(), models, seconds: start.elapsed().as_secs_f64() })
}

/// How `probe` cuts captions.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    pub lengths: Vec<usize>,
    pub unit: Unit,
    pub on_missing: OnMissing,
    /// Whose published (whole-caption) numbers to show, one per model.
    pub paper: Vec<PaperModel>,
}

impl ProbeSpec {
    /// Lengths must be given, positive and distinct.
    pub fn check(&self) -> Result<()> {
        if self.lengths.is_empty() {
            bail!("--lengths is empty");
        }
        if self.lengths.contains(&0) {
            bail!("--lengths: a length of 0 cuts every caption to nothing");
        }
        if let Some(l) = self.lengths.iter().enumerate().find_map(|(i, l)| self.lengths[..i].contains(l).then_some(l)) {
            bail!("--lengths gives {l} twice");
        }
        Ok(())
    }
}

/// One model's probe.
#[derive(Clone, Debug)]
pub struct ModelProbe {
    pub model: ModelInfo,
    pub rows: Vec<ProbeRow>,
    pub n_images: usize,
    pub n_texts: usize,
    pub skipped: Vec<(PathBuf, String)>,
    pub timings: Timings,
    pub seconds: f64,
    /// The published model, and its whole-caption numbers on this dataset,
    /// split and text path: they compare with the rows whose lengths reach
    /// the model's positions (tokens only; never beside a words probe).
    pub paper_model: Option<&'static str>,
    pub paper: Vec<Published>,
    pub notes: Vec<String>,
}

/// `probe` of one dataset by one or several models.
#[derive(Clone, Debug)]
pub struct ProbeRun {
    pub dataset: String,
    pub split: String,
    /// Texts listed in the dataset (before any image was skipped).
    pub n_texts_listed: usize,
    pub unit: Unit,
    pub lengths: Vec<usize>,
    pub models: Vec<ModelProbe>,
    pub seconds: f64,
}

/// The length probe of every model on `data`.
pub fn run_probe(paths: &[PathBuf], data: &Dataset, opts: &RunOptions, spec: &ProbeSpec, done: &mut dyn FnMut(&ModelProbe)) -> Result<ProbeRun> {
    spec.check()?;
    let start = Instant::now();
    let models = for_each_model(paths, opts, |i, m, mut notes| {
        let t0 = Instant::now();
        let positions = m.info.positions;
        if spec.unit == Unit::Tokens {
            if let Some(&l) = spec.lengths.iter().find(|&&l| l > positions) {
                notes.push(format!("{} has {positions} positions: lengths above it (e.g. {l}) are cut at {positions}", m.info.label));
            }
        }
        let mut enc = m.encoder(opts)?;
        let (rows, images) = super::probe(&mut enc, data, &spec.lengths, spec.unit, spec.on_missing)?;
        let paper_model = spec.paper.get(i).copied().unwrap_or_default().resolve(&m.info.config);
        let paper = match paper_model {
            Some(pm) if spec.unit == Unit::Tokens => reference::retrieval_for_run(pm, &data.name, &data.split, m.info.text_path),
            _ => Vec::new(),
        };
        let timings = enc.timings.clone();
        let r = ModelProbe {
            n_images: images.data.images.len(),
            n_texts: images.data.n_texts(),
            skipped: images.skipped,
            model: m.info,
            rows,
            timings,
            seconds: t0.elapsed().as_secs_f64(),
            paper_model,
            paper,
            notes,
        };
        done(&r);
        Ok(r)
    })?;
    Ok(ProbeRun {
        dataset: data.name.clone(),
        split: data.split.clone(),
        n_texts_listed: data.n_texts(),
        unit: spec.unit,
        lengths: spec.lengths.clone(),
        models,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// One model's zero-shot classification.
#[derive(Clone, Debug)]
pub struct ModelClassification {
    pub model: ModelInfo,
    pub context_length: usize,
    pub report: ClassificationReport,
    pub timings: Timings,
    pub seconds: f64,
    pub paper_model: Option<&'static str>,
    pub paper: Vec<Published>,
    pub notes: Vec<String>,
}

/// Zero-shot `eval` of one classification set by one or several models.
#[derive(Clone, Debug)]
pub struct ClassificationRun {
    pub dataset: String,
    pub n_prompts: usize,
    pub models: Vec<ModelClassification>,
    pub seconds: f64,
}

/// Top-1/top-5 of every model on `set` with `templates` (`{}` = the class).
pub fn run_classification(
    paths: &[PathBuf],
    name: &str,
    set: &ClassificationSet,
    templates: &[String],
    opts: &RunOptions,
    spec: &RetrievalSpec,
    done: &mut dyn FnMut(&ModelClassification),
) -> Result<ClassificationRun> {
    let start = Instant::now();
    let models = for_each_model(paths, opts, |i, m, notes| {
        let t0 = Instant::now();
        let context = m.info.context_length(spec.context_length)?;
        let mut enc = m.encoder(opts)?;
        let report = super::evaluate_classification(&mut enc, set, templates, spec.on_missing, context)?;
        let paper_model = spec.paper.get(i).copied().unwrap_or_default().resolve(&m.info.config);
        let paper = paper_model.map(|pm| reference::classification(pm, name)).unwrap_or_default();
        let timings = enc.timings.clone();
        let r = ModelClassification { model: m.info, context_length: context, report, timings, seconds: t0.elapsed().as_secs_f64(), paper_model, paper, notes };
        done(&r);
        Ok(r)
    })?;
    Ok(ClassificationRun { dataset: name.to_string(), n_prompts: templates.len(), models, seconds: start.elapsed().as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_stems_unless_ambiguous() {
        let l = model_labels(&["a/clip.pt".into(), "b/long.pt".into()]);
        assert_eq!(l, ["clip", "long"]);
        let l = model_labels(&["a/model.pt".into(), "b/model.pt".into()]);
        assert_eq!(l, ["a", "b"]);
        let l = model_labels(&["a/model.pt".into(), "a/model.safetensors".into()]);
        assert_eq!(l, ["a/model.pt", "a/model.safetensors"]);
        assert_eq!(model_labels(&["assets/demo/longclip-demo.safetensors.gz".into()]), ["longclip-demo"]);
        assert_eq!(model_labels(&["x/fg-clip-tiny".into()]), ["fg-clip-tiny"]);
    }

    #[test]
    fn paper_models_go_once_or_once_per_model() {
        assert_eq!(paper_models(&[], 2).unwrap(), [PaperModel::FromCheckpoint; 2]);
        assert_eq!(paper_models(&["none".into()], 3).unwrap(), [PaperModel::Nothing; 3]);
        let two = paper_models(&["LongCLIP-B".into(), "none".into()], 2).unwrap();
        assert_eq!(two, [PaperModel::Named("LongCLIP-B"), PaperModel::Nothing]);
        assert!(paper_models(&["none".into(), "none".into()], 3).unwrap_err().to_string().contains("once per --model"));
    }

    #[test]
    fn lengths_are_checked() {
        let spec = |lengths: Vec<usize>| ProbeSpec { lengths, unit: Unit::Tokens, on_missing: OnMissing::Fail, paper: vec![] };
        assert!(spec(vec![]).check().is_err());
        assert!(spec(vec![0, 5]).check().unwrap_err().to_string().contains("length of 0"));
        assert!(spec(vec![10, 10, 5]).check().unwrap_err().to_string().contains("gives 10 twice"));
        assert!(spec(vec![5, 77]).check().is_ok());
    }
}
