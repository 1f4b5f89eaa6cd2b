//! The training loop behind `longclip finetune`: data in a background
//! thread, one [`Trainer::step`] per batch, a progress bar, evaluation, and
//! checkpoints that a later run resumes bit for bit.
//!
//! Layout of `--out DIR`:
//! - `checkpoints/step-NNNNNNNN/`: `model.safetensors` (the weights, f32
//!   trained tensors), `optimizer.safetensors` (AdamW moments) and
//!   `state.json` (step, schedule, loss scale, the recipe a resume must
//!   match); each directory is written under a temporary name and renamed.
//! - `model.safetensors`: the final weights (official names; `embed`,
//!   `eval`, `convert` load it).
//! - `train.json`: summary and evaluations; `log.jsonl`: one line a step;
//!   `skipped.txt`: images that could not be read.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::data::{self, CaptionCuts, ShortCaption};
use super::eval::{self, EvalResult};
use super::optim::{AdamWConfig, CosineSchedule, LossScale};
use super::{Batch, NonFinite, Params, StepOptions, Trainer};
use crate::checkpoint;
use crate::export;
use crate::model;
use crate::pcm::{self, PcmOptions};
use crate::preprocess::Transform;

/// Everything `longclip finetune` takes.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub model: PathBuf,
    pub data: String,
    pub image_root: Option<PathBuf>,
    pub out: PathBuf,
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    /// Encoder chunks per batch (gradient cache when > 1).
    pub accumulate: usize,
    pub warmup: usize,
    pub adamw: AdamWConfig,
    pub log_scale: f64,
    pub pcm: PcmOptions,
    pub short: ShortCaption,
    /// Long captions cut at random token lengths (none by default).
    pub cuts: CaptionCuts,
    pub device: String,
    pub dtype: String,
    pub resume: bool,
    pub eval: Option<String>,
    /// Checkpoint every this many steps (and always at the end of the run).
    pub save_every: usize,
    /// Checkpoint directories kept (the newest).
    pub keep: usize,
    pub seed: u64,
    /// Stop after this many steps of the schedule (resume continues).
    pub max_steps: Option<usize>,
    pub progress: bool,
}

/// What must not change between a run and its resumption.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    pub data_fingerprint: String,
    pub records: usize,
    pub batch_size: usize,
    pub epochs: usize,
    pub seed: u64,
    pub lr: f64,
    pub warmup: usize,
    pub adamw: AdamWConfig,
    pub log_scale: f64,
    pub pca_dim: usize,
    pub pca_group: usize,
    pub dtype: String,
    /// Absent in states written before `--cut-share` existed: no cuts.
    #[serde(default)]
    pub cuts: CaptionCuts,
}

/// `state.json` of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    pub version: u32,
    /// Batches consumed (the next step's index).
    pub step: usize,
    pub total_steps: usize,
    pub steps_per_epoch: usize,
    pub adam_step: u64,
    pub schedule: CosineSchedule,
    pub loss_scale: LossScale,
    pub recipe: Recipe,
    pub samples: usize,
    pub skipped_images: usize,
    pub skipped_updates: usize,
    pub last_loss_long: f64,
    pub last_loss_short: f64,
}

/// The closing numbers of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSummary {
    pub steps: usize,
    pub total_steps: usize,
    pub samples: usize,
    pub seconds: f64,
    pub samples_per_second: f64,
    pub skipped_images: usize,
    pub skipped_updates: usize,
    /// Long captions cut by `--cut-share` in this run.
    #[serde(default)]
    pub cut_captions: usize,
    pub last_loss_long: f64,
    pub last_loss_short: f64,
    pub peak_rss_bytes: Option<u64>,
    pub model: PathBuf,
    pub checkpoint: PathBuf,
    pub eval_before: Option<EvalResult>,
    pub eval_after: Option<EvalResult>,
}

/// Training dtype: `auto` is f32 on CPU and bf16 on CUDA (no loss scale
/// needed); f16 runs with a dynamic loss scale.
pub fn training_dtype(name: &str, device: &Device) -> Result<DType> {
    match name {
        "auto" if device.is_cuda() => Ok(DType::BF16),
        other => model::compute_dtype(other, device),
    }
}

pub fn run(cfg: &RunConfig) -> Result<RunSummary> {
    if cfg.batch_size == 0 || cfg.epochs == 0 || cfg.accumulate == 0 {
        bail!("--batch-size, --epochs and --accumulate must be at least 1");
    }
    cfg.cuts.validate()?;
    let device = model::device(&cfg.device)?;
    let dtype = training_dtype(&cfg.dtype, &device)?;
    let dataset = data::read_dataset(&cfg.data, cfg.image_root.as_deref(), &cfg.short)?;
    let records = Arc::new(dataset.records);
    let steps_per_epoch = data::steps_per_epoch(records.len(), cfg.batch_size);
    let total_steps = cfg.epochs * steps_per_epoch;
    let recipe = Recipe {
        data_fingerprint: dataset.fingerprint,
        records: records.len(),
        batch_size: cfg.batch_size,
        epochs: cfg.epochs,
        seed: cfg.seed,
        lr: cfg.lr,
        warmup: cfg.warmup,
        adamw: cfg.adamw,
        log_scale: cfg.log_scale,
        pca_dim: cfg.pcm.pca_dim,
        pca_group: cfg.pcm.pca_group,
        dtype: format!("{dtype:?}"),
        cuts: cfg.cuts,
    };
    std::fs::create_dir_all(cfg.out.join("checkpoints")).with_context(|| format!("{}: cannot create", cfg.out.display()))?;
    let options = StepOptions { dtype, chunks: cfg.accumulate, pcm: cfg.pcm };
    let schedule = CosineSchedule { base: cfg.lr, warmup: cfg.warmup, total: total_steps };
    let (mut trainer, mut counters) = match (cfg.resume, latest_checkpoint(&cfg.out)?) {
        (true, Some(dir)) => resume(&dir, &recipe, &device, options)?,
        (true, None) => bail!("--resume: no checkpoint under {}", cfg.out.join("checkpoints").display()),
        (false, Some(dir)) => bail!(
            "{} holds checkpoints ({}); pass --resume to continue that run or choose another --out",
            cfg.out.display(),
            dir.display()
        ),
        (false, None) => {
            let ckpt = checkpoint::load(&cfg.model)?;
            let params = Params::from_checkpoint(ckpt, &device, Some(cfg.log_scale))?;
            (Trainer::new(params, cfg.adamw, schedule, options)?, Counters::default())
        }
    };
    let embed_dim = trainer.params.config.embed_dim;
    if let Some(w) = pca_group_warning(records.len(), cfg.batch_size, &cfg.pcm, embed_dim) {
        eprintln!("{w}");
    }
    let eval_set = match &cfg.eval {
        Some(spec) => Some((spec.clone(), eval::read_eval_set(spec)?)),
        None => None,
    };
    let evaluate = |trainer: &Trainer| -> Result<Option<EvalResult>> {
        let Some((name, set)) = &eval_set else { return Ok(None) };
        let model = trainer.params.inference_model(dtype)?;
        Ok(Some(eval::evaluate(&model, name, set, &device, cfg.batch_size.min(256))?))
    };
    let eval_before = if trainer.step == 0 { evaluate(&trainer)? } else { None };
    if let Some(e) = &eval_before {
        eprintln!("{}", describe_eval("before", e));
    }
    let end = cfg.max_steps.map_or(total_steps, |m| m.min(total_steps)).max(trainer.step);
    let image_size = trainer.params.config.vision.image_size;
    let context = trainer.params.config.text.context_length;
    let (batches, loader) = data::spawn_loader(
        records.clone(),
        cfg.batch_size,
        cfg.seed,
        trainer.step..end,
        Transform::clip(image_size),
        context,
        cfg.cuts,
        2,
    );
    let bar = progress_bar(cfg.progress, total_steps, trainer.step);
    let mut log = open_append(&cfg.out.join("log.jsonl"))?;
    let mut skipped_log = open_append(&cfg.out.join("skipped.txt"))?;
    let start = Instant::now();
    let (mut run_samples, mut run_cut, mut last_checkpoint) = (0usize, 0usize, None);
    let mut warned_small_group = false;
    for loaded in batches.iter() {
        let loaded = loaded?;
        for (path, why) in &loaded.skipped {
            // PATH<TAB>REASON a line: control characters escaped as in the terminal.
            writeln!(skipped_log, "{}\t{}", crate::term::path(path), crate::term::escape_for_terminal(why))?;
        }
        counters.skipped_images += loaded.skipped.len();
        if loaded.is_empty() {
            // Nothing readable: the step passes without an update.
            trainer.step += 1;
            counters.skipped_updates += 1;
        } else {
            let n = loaded.len();
            let batch = Batch {
                pixels: Tensor::from_vec(loaded.pixels, (n, 3, image_size, image_size), &device)?,
                long: loaded.long,
                short: loaded.short,
            };
            if !loaded.skipped.is_empty() && !warned_small_group {
                // Unreadable images shrink the batch: its groups may fall to
                // pca_dim + 1 where the recipe's did not (warned once).
                let exact: Vec<usize> = pcm::group_sizes(n, cfg.pcm.pca_group)
                    .into_iter()
                    .filter(|&g| pcm::pca_is_exact(g, embed_dim, cfg.pcm.pca_dim))
                    .collect();
                if !exact.is_empty() {
                    warned_small_group = true;
                    warn_during(&bar, format!(
                        "warning: step {}: {} unreadable images leave {n} samples, and PCA groups of {exact:?} samples, which \
                         --pca-dim {} reconstructs exactly (at most pca_dim + 1 = {}): primary component matching does nothing \
                         for them (not repeated for later steps)",
                        trainer.step + 1,
                        loaded.skipped.len(),
                        cfg.pcm.pca_dim,
                        cfg.pcm.pca_dim + 1
                    ));
                }
            }
            let (index, epoch) = (trainer.step % steps_per_epoch, trainer.step / steps_per_epoch);
            let report = trainer.step(&batch).map_err(|e| match e.downcast_ref::<NonFinite>() {
                Some(nf) => stopped(
                    &cfg.out,
                    format!("step {}, batch {} of {steps_per_epoch} in epoch {}: {nf}", trainer.step + 1, index + 1, epoch + 1),
                ),
                None => e,
            })?;
            counters.samples += n;
            run_samples += n;
            run_cut += loaded.cut;
            counters.last = (report.loss_long, report.loss_short);
            if !report.applied {
                counters.skipped_updates += 1;
            }
            let line = serde_json::json!({
                "step": trainer.step, "epoch": (trainer.step - 1) / steps_per_epoch, "lr": report.lr,
                "loss_long": report.loss_long, "loss_short": report.loss_short, "samples": n,
                "applied": report.applied, "loss_scale": trainer.loss_scale.scale, "cut": loaded.cut,
            });
            writeln!(log, "{line}")?;
            let rate = run_samples as f64 / start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4} (long {:.4}, short {:.4}) lr {:.2e} {rate:.1} samples/s skipped {}",
                report.loss_long + report.loss_short,
                report.loss_long,
                report.loss_short,
                report.lr,
                counters.skipped_images
            ));
        }
        bar.set_position(trainer.step as u64);
        let at_end = trainer.step == end;
        if at_end || (cfg.save_every > 0 && trainer.step % cfg.save_every == 0) {
            let bad = trainer.params.non_finite_tensors()?;
            if !bad.is_empty() {
                let (index, epoch) = ((trainer.step - 1) % steps_per_epoch, (trainer.step - 1) / steps_per_epoch);
                return Err(stopped(
                    &cfg.out,
                    format!(
                        "step {}, batch {} of {steps_per_epoch} in epoch {}: non-finite weights after the update ({}); not saved",
                        trainer.step,
                        index + 1,
                        epoch + 1,
                        bad.join(", ")
                    ),
                ));
            }
            let state = counters.state(&trainer, &recipe, steps_per_epoch, total_steps);
            last_checkpoint = Some(save_training_checkpoint(&cfg.out, &trainer, &state, cfg.keep)?);
            if !at_end {
                if let Some(e) = evaluate(&trainer)? {
                    bar.println(describe_eval(&format!("step {}", trainer.step), &e));
                }
            }
        }
    }
    loader.join().map_err(|_| anyhow::anyhow!("the data loader thread panicked"))?;
    bar.finish_and_clear();
    if cfg.cuts.share > 0.0 && run_cut == 0 && run_samples > 0 {
        eprintln!(
            "warning: --cut-share {} cut no caption in {run_samples} samples: every long caption has at most --cut-min {} tokens",
            cfg.cuts.share, cfg.cuts.min_tokens
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    let model_path = cfg.out.join("model.safetensors");
    export::save_checkpoint(&trainer.params.to_checkpoint(model_path.clone())?, &model_path)?;
    let eval_after = evaluate(&trainer)?;
    let checkpoint = match last_checkpoint {
        Some(c) => c,
        None => latest_checkpoint(&cfg.out)?.context("no checkpoint written")?,
    };
    let summary = RunSummary {
        steps: trainer.step,
        total_steps,
        samples: run_samples,
        seconds,
        samples_per_second: run_samples as f64 / seconds.max(1e-9),
        skipped_images: counters.skipped_images,
        skipped_updates: counters.skipped_updates,
        cut_captions: run_cut,
        last_loss_long: counters.last.0,
        last_loss_short: counters.last.1,
        peak_rss_bytes: peak_rss_bytes(),
        model: model_path,
        checkpoint,
        eval_before,
        eval_after,
    };
    export::write_atomic(&cfg.out.join("train.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    Ok(summary)
}

/// A warning during training: above the progress bar, or on stderr with
/// `--quiet` (a hidden bar prints nothing).
fn warn_during(bar: &ProgressBar, text: String) {
    if bar.is_hidden() {
        eprintln!("{text}");
    } else {
        bar.println(text);
    }
}

/// The error a run stops with on a non-finite value: `what` (step, batch,
/// which value) and the checkpoint a `--resume` would continue from. The
/// run writes nothing on its way out, so that checkpoint is intact.
fn stopped(out: &Path, what: String) -> anyhow::Error {
    let kept = match latest_checkpoint(out) {
        Ok(Some(dir)) => format!("the last checkpoint, {}, is kept", dir.display()),
        _ => "no checkpoint had been written".to_string(),
    };
    anyhow::anyhow!("{what}; training stopped, {kept} (a lower --lr, or --dtype f32, may avoid it)")
}

/// The warning `longclip finetune` prints before training when some PCA
/// group of the run reconstructs exactly ([`pcm::pca_is_exact`]): every
/// batch of `batch_size`, the last, smaller batch of an epoch
/// (`records % batch_size`), and within a batch the last, smaller group of
/// `--pca-group`. `None` when every group is large enough. (Groups made
/// smaller by unreadable images are warned about when they happen.)
pub fn pca_group_warning(records: usize, batch_size: usize, pcm_opts: &PcmOptions, embed_dim: usize) -> Option<String> {
    let k = pcm_opts.pca_dim;
    if records == 0 || batch_size == 0 {
        return None;
    }
    if k >= embed_dim {
        return Some(format!(
            "warning: --pca-dim {k} keeps every one of the {embed_dim} embedding dimensions: the PCA reconstructs every \
             group exactly, the short-caption image features equal the full ones and primary component matching does \
             nothing. Use a --pca-dim below {embed_dim} (the official value is 32)."
        ));
    }
    let mut batches = vec![];
    if records <= batch_size {
        batches.push((records, format!("the only batch of an epoch ({records} records)")));
    } else {
        batches.push((batch_size, format!("every full batch of {batch_size}")));
        let last = records % batch_size;
        if last > 0 {
            batches.push((last, format!("the last batch of each epoch ({records} records in batches of {batch_size} leave {last})")));
        }
    }
    let group = match pcm_opts.pca_group {
        0 => "--pca-group 0: one PCA per batch".to_string(),
        g => format!("--pca-group {g}"),
    };
    let mut found = vec![];
    for (n, what) in batches {
        let sizes = pcm::group_sizes(n, pcm_opts.pca_group);
        let exact: Vec<usize> = sizes.iter().copied().filter(|&g| pcm::pca_is_exact(g, embed_dim, k)).collect();
        match (exact.len(), sizes.len()) {
            (0, _) => {}
            (1, 1) => found.push(format!("{what}: its one PCA group of {n} samples")),
            (e, s) if e == s => found.push(format!("{what}: all its {s} PCA groups ({exact:?} samples)")),
            // Only the last group of a batch can be smaller than the others.
            _ => found.push(format!("{what}: its last PCA group of {} samples", exact[0])),
        }
    }
    if found.is_empty() {
        return None;
    }
    let need = pcm::min_lossy_group(k);
    Some(format!(
        "warning: --pca-dim {k} reconstructs some PCA groups exactly ({group}, --batch-size {batch_size}):\n  - {}\n\
         A centred PCA of n samples has rank at most n - 1, so {k} components keep all of a group of up to {} samples. \
         For those groups the short-caption image features (their primary components) equal the full features and \
         primary component matching does nothing: the short loss only compares full image features with short captions. \
         The PCA loses something from {need} samples a group: use a --batch-size and --pca-group (0: the whole batch) of \
         at least {need}, with a last batch of an epoch of 0 or at least {need} samples, or a smaller --pca-dim.",
        found.join("\n  - "),
        k + 1
    ))
}

/// Running totals carried through checkpoints.
#[derive(Default)]
struct Counters {
    samples: usize,
    skipped_images: usize,
    skipped_updates: usize,
    last: (f64, f64),
}

impl Counters {
    fn state(&self, t: &Trainer, recipe: &Recipe, steps_per_epoch: usize, total_steps: usize) -> TrainState {
        TrainState {
            version: 1,
            step: t.step,
            total_steps,
            steps_per_epoch,
            adam_step: t.optimizer.step,
            schedule: t.schedule,
            loss_scale: t.loss_scale,
            recipe: recipe.clone(),
            samples: self.samples,
            skipped_images: self.skipped_images,
            skipped_updates: self.skipped_updates,
            last_loss_long: self.last.0,
            last_loss_short: self.last.1,
        }
    }
}

pub fn describe_eval(when: &str, e: &EvalResult) -> String {
    format!(
        "eval {when} on {} ({} images): long R@1 I2T {:.1} T2I {:.1}, short R@1 I2T {:.1} T2I {:.1}",
        crate::term::escape_for_terminal(&e.set), e.images, e.long.i2t, e.long.t2i, e.short.i2t, e.short.t2i
    )
}

fn progress_bar(visible: bool, total: usize, position: usize) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    let style = ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} (ETA {eta})").expect("valid template");
    bar.set_style(style);
    bar.set_position(position as u64);
    bar
}

fn open_append(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("{}: cannot open", path.display()))
}

/// Peak resident memory of this process (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

// ---------------------------------------------------------------------------
// Checkpoints

fn step_dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// The newest complete checkpoint directory under `out/checkpoints`.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    Ok(checkpoint_dirs(out)?.pop().map(|(_, p)| p))
}

fn checkpoint_dirs(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = out.join("checkpoints");
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<usize>().ok()) {
            if path.join("state.json").exists() {
                found.push((step, path));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Writes `out/checkpoints/step-N/` atomically (a temporary directory
/// renamed into place) and removes all but the newest `keep`.
pub fn save_training_checkpoint(out: &Path, t: &Trainer, state: &TrainState, keep: usize) -> Result<PathBuf> {
    let root = out.join("checkpoints");
    let dir = root.join(step_dir_name(t.step));
    let tmp = export::temp_path(&dir);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    let model_path = tmp.join("model.safetensors");
    export::save_checkpoint(&t.params.to_checkpoint(model_path.clone())?, &model_path)?;
    let mut moments = HashMap::new();
    for (i, name) in t.params.names.iter().enumerate() {
        moments.insert(format!("m.{name}"), t.optimizer.m[i].to_device(&Device::Cpu)?);
        moments.insert(format!("v.{name}"), t.optimizer.v[i].to_device(&Device::Cpu)?);
    }
    candle_core::safetensors::save(&moments, tmp.join("optimizer.safetensors"))?;
    std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(state)?)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("{}: cannot rename into place", dir.display()))?;
    let dirs = checkpoint_dirs(out)?;
    for (_, old) in dirs.iter().take(dirs.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old).with_context(|| format!("{}: cannot remove", old.display()))?;
    }
    Ok(dir)
}

/// "  key: checkpoint A, this run B" for every leaf that differs (nested
/// keys joined with dots, e.g. `cuts.share`).
fn recipe_changes(old: &serde_json::Value, new: &serde_json::Value, prefix: &str) -> Vec<String> {
    match (old, new) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            let null = serde_json::Value::Null;
            keys.into_iter()
                .flat_map(|k| {
                    let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    recipe_changes(a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null), &path)
                })
                .collect()
        }
        (a, b) if a != b => vec![format!("  {prefix}: checkpoint {a}, this run {b}")],
        _ => Vec::new(),
    }
}

fn resume(dir: &Path, recipe: &Recipe, device: &Device, options: StepOptions) -> Result<(Trainer, Counters)> {
    let state_path = dir.join("state.json");
    let state: TrainState = serde_json::from_str(&std::fs::read_to_string(&state_path)?)
        .with_context(|| format!("{}: not a training state", state_path.display()))?;
    if &state.recipe != recipe {
        let changed = recipe_changes(&serde_json::to_value(&state.recipe)?, &serde_json::to_value(recipe)?, "");
        bail!(
            "--resume: {} was trained with a different recipe or data:\n{}\n(resume with the values it was trained with, or start a new --out)",
            crate::term::path(dir),
            changed.join("\n")
        );
    }
    let ckpt = checkpoint::load(&dir.join("model.safetensors"))?;
    let params = Params::from_checkpoint(ckpt, device, None)?;
    let mut trainer = Trainer::new(params, state.recipe.adamw, state.schedule, options)?;
    let moments = candle_core::safetensors::load(dir.join("optimizer.safetensors"), device)?;
    for (i, name) in trainer.params.names.iter().enumerate() {
        let get = |k: String| moments.get(&k).cloned().with_context(|| format!("{}: no '{k}'", dir.display()));
        trainer.optimizer.m[i] = get(format!("m.{name}"))?;
        trainer.optimizer.v[i] = get(format!("v.{name}"))?;
    }
    trainer.optimizer.step = state.adam_step;
    trainer.loss_scale = state.loss_scale;
    trainer.step = state.step;
    let counters = Counters {
        samples: state.samples,
        skipped_images: state.skipped_images,
        skipped_updates: state.skipped_updates,
        last: (state.last_loss_long, state.last_loss_short),
    };
    Ok((trainer, counters))
}
