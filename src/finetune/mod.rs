//! Fine-tuning with knowledge-preserved stretching and primary component
//! matching, as the official `train/train.py`:
//!
//! - the model starts from a Long-CLIP checkpoint, or from a 77-position
//!   CLIP stretched to 248 (KPS); `positional_embedding` (whose rows 0..K
//!   the text encoder reads, K = 20 unless stretched with another `--keep`)
//!   is frozen, `positional_embedding_res` (rows K..) and every other
//!   tensor train, `logit_scale` included, all in one AdamW group with
//!   weight decay;
//! - the loss is [`crate::pcm`]'s long + short loss of each batch;
//! - the encoders can run the batch in chunks with a gradient cache, so the
//!   contrastive batch (the authors use 2048) does not have to fit in memory.
//!
//! [`Params`] holds the trained tensors as candle `Var`s (f32 master
//! weights) and builds the ordinary [`LongClip`] from them; [`gradients`] is
//! one batch's loss and gradient; [`Trainer`] adds the optimizer and
//! schedule; [`run`] is the whole training loop behind `longclip finetune`.

pub mod data;
pub mod eval;
pub mod optim;
pub mod run;

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};

use crate::checkpoint::{expected_shapes, Checkpoint, Config, Format};
use crate::model::LongClip;
use crate::pcm::{self, PcmOptions};
use crate::stretch;

/// The frozen table: its rows 0..K (`keep_positions`) are the ones the text encoder reads.
pub const FROZEN: &str = "positional_embedding";
pub const LOGIT_SCALE: &str = "logit_scale";

/// The trained tensors as `Var`s (f32, on the training device) and the
/// frozen ones as they were loaded.
pub struct Params {
    pub config: Config,
    pub names: Vec<String>,
    pub vars: Vec<Var>,
    pub frozen: HashMap<String, Tensor>,
    pub device: Device,
}

impl Params {
    /// Takes a Long-CLIP checkpoint as it is (any number of positions,
    /// split at its `keep_positions`), stretches a CLIP of at most 77
    /// positions (KPS), or splits a merged table of more rows (Hugging Face
    /// export, split where its config says) into the frozen and trained copies. `log_scale` resets `logit_scale` (the
    /// official `--log_scale`); `None` keeps the checkpoint's.
    pub fn from_checkpoint(ckpt: Checkpoint, device: &Device, log_scale: Option<f64>) -> Result<Params> {
        let mut ckpt = ckpt;
        if !ckpt.is_long_clip() {
            if ckpt.config.text.context_length > 77 {
                let table = ckpt.get(FROZEN)?.clone();
                ckpt.tensors.insert("positional_embedding_res".into(), table);
            } else {
                ckpt = stretch::stretch_checkpoint(ckpt)?;
            }
        }
        let logit_scale = match (log_scale, ckpt.tensors.get(LOGIT_SCALE)) {
            (Some(v), _) => v,
            (None, Some(t)) => t.to_dtype(DType::F64)?.flatten_all()?.get(0)?.to_scalar::<f64>()?,
            (None, None) => (1.0f64 / 0.07).ln(),
        };
        let mut names = Vec::new();
        let mut vars = Vec::new();
        for (key, _) in expected_shapes(&ckpt.config, true) {
            if key == FROZEN {
                continue;
            }
            let t = ckpt.get(&key)?.to_dtype(DType::F32)?.to_device(device)?;
            vars.push(Var::from_tensor(&t)?);
            names.push(key);
        }
        vars.push(Var::from_tensor(&Tensor::new(logit_scale as f32, device)?)?);
        names.push(LOGIT_SCALE.to_string());
        let mut frozen = HashMap::new();
        frozen.insert(FROZEN.to_string(), ckpt.get(FROZEN)?.to_device(device)?);
        Ok(Params { config: ckpt.config.clone(), names, vars, frozen, device: device.clone() })
    }

    pub fn var(&self, name: &str) -> Result<&Var> {
        let i = self.names.iter().position(|n| n == name).with_context(|| format!("no trained tensor '{name}'"))?;
        Ok(&self.vars[i])
    }

    pub fn logit_scale(&self) -> Result<f64> {
        Ok(self.var(LOGIT_SCALE)?.as_tensor().to_dtype(DType::F64)?.to_scalar::<f64>()?)
    }

    /// A checkpoint view of the current weights: the Vars themselves
    /// (`graph`, so ops on them are recorded for backprop) or detached
    /// tensors sharing their storage.
    fn view(&self, graph: bool) -> Checkpoint {
        let mut tensors: HashMap<String, Tensor> = self
            .names
            .iter()
            .zip(&self.vars)
            .map(|(n, v)| (n.clone(), if graph { v.as_tensor().clone() } else { v.as_tensor().detach() }))
            .collect();
        tensors.extend(self.frozen.iter().map(|(k, t)| (k.clone(), t.clone())));
        Checkpoint { path: PathBuf::from("<fine-tuning>"), format: Format::Safetensors, config: self.config.clone(), tensors, ignored: vec![] }
    }

    /// The model with differentiable ops; with `graph`, backprop reaches
    /// the Vars. Cheap to rebuild: on f32 it shares the Vars' storage.
    pub fn model(&self, dtype: DType, graph: bool) -> Result<LongClip> {
        LongClip::trainable(&self.view(graph), &self.device, dtype)
    }

    /// The current weights for inference (fused kernels, no graph).
    pub fn inference_model(&self, dtype: DType) -> Result<LongClip> {
        LongClip::new(&self.view(false), &self.device, dtype)
    }

    /// The current weights as a checkpoint on the CPU with official names:
    /// trained tensors in f32, the frozen table as it was loaded.
    pub fn to_checkpoint(&self, path: PathBuf) -> Result<Checkpoint> {
        let mut ckpt = self.view(false);
        for t in ckpt.tensors.values_mut() {
            *t = t.to_device(&Device::Cpu)?;
        }
        ckpt.path = path;
        Ok(ckpt)
    }

    /// The trained tensors holding a NaN or an infinity (x - x is NaN
    /// exactly there, and 0 elsewhere, so the sum cannot overflow).
    pub fn non_finite_tensors(&self) -> Result<Vec<String>> {
        let mut bad = Vec::new();
        for (name, var) in self.names.iter().zip(&self.vars) {
            let t = var.as_tensor();
            if !t.sub(t)?.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?.is_finite() {
                bad.push(name.clone());
            }
        }
        Ok(bad)
    }

    pub fn parameter_count(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }
}

/// One contrastive batch: pixels [n, 3, R, R] on the training device and
/// the token ids (SOT..EOT, unpadded) of the long and short captions.
pub struct Batch {
    pub pixels: Tensor,
    pub long: Vec<Vec<u32>>,
    pub short: Vec<Vec<u32>>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.long.len()
    }

    pub fn is_empty(&self) -> bool {
        self.long.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOptions {
    /// Compute dtype of the matmuls (weights stay f32).
    pub dtype: DType,
    /// The encoders run the batch in this many chunks. 1: one forward and
    /// backward over the whole batch. More: a gradient cache (embed every
    /// chunk without a graph, take the loss gradient w.r.t. the
    /// embeddings, then re-run each chunk with a graph and backpropagate
    /// those gradients), the same gradient with a chunk's memory.
    pub chunks: usize,
    pub pcm: PcmOptions,
}

/// The two losses of a batch and the gradient of their sum for every Var
/// (in `Params::vars` order, unscaled).
pub struct Gradients {
    pub loss_long: f64,
    pub loss_short: f64,
    pub grads: Vec<Tensor>,
    /// Every gradient is finite (an f16 overflow makes it false).
    pub finite: bool,
}

/// A NaN or an infinity in a training step: in the features, the loss or
/// (without a loss scale) the gradient. `longclip finetune` stops on it
/// instead of training on, or skipping, garbage; the caller adds the step
/// and batch. The text says what, e.g. `non-finite loss (long NaN, short 2.1)`.
#[derive(Clone, Debug)]
pub struct NonFinite(pub String);

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "non-finite {}", self.0)
    }
}

impl std::error::Error for NonFinite {}

/// Test hook: `LONGCLIP_TEST_NON_FINITE_AT_STEP=S` makes the pixels of step
/// S (1-based, as in `log.jsonl`) NaN, so its image features are.
pub const NON_FINITE_AT_STEP_ENV: &str = "LONGCLIP_TEST_NON_FINITE_AT_STEP";

/// How many entries of `t` are NaN or infinite.
pub fn non_finite_count(t: &Tensor) -> Result<usize> {
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(v.iter().filter(|x| !x.is_finite()).count())
}

/// Fails with [`NonFinite`] on the first of the batch's features that
/// holds a NaN or an infinity.
fn check_features(features: &[Tensor; 3]) -> Result<()> {
    for (name, f) in ["image features", "long-caption features", "short-caption features"].iter().zip(features) {
        let bad = non_finite_count(f)?;
        if bad > 0 {
            return Err(NonFinite(format!("{name} ({bad} of {} values)", f.elem_count())).into());
        }
    }
    Ok(())
}

/// Consecutive ranges of at most ceil(n / chunks) rows.
pub fn chunk_ranges(n: usize, chunks: usize) -> Vec<Range<usize>> {
    let size = n.div_ceil(chunks.max(1)).max(1);
    (0..n).step_by(size).map(|s| s..(s + size).min(n)).collect()
}

/// Image, long-text and short-text features of rows `r` of the batch.
fn encode(model: &LongClip, batch: &Batch, r: &Range<usize>) -> Result<[Tensor; 3]> {
    let pixels = batch.pixels.narrow(0, r.start, r.len())?;
    Ok([
        model.vision.encode(&pixels)?,
        model.text.encode(&batch.long[r.clone()])?,
        model.text.encode(&batch.short[r.clone()])?,
    ])
}

/// The loss and its gradient for one batch. `loss_scale` multiplies the
/// backpropagated gradient (f16 runs) and is divided out again.
pub fn gradients(params: &Params, batch: &Batch, opts: &StepOptions, loss_scale: f64) -> Result<Gradients> {
    if batch.is_empty() {
        bail!("empty batch");
    }
    let ranges = chunk_ranges(batch.len(), opts.chunks);
    let graph_model = params.model(opts.dtype, true)?;
    // One chunk: keep the graph of the only forward pass. Several: embed
    // without a graph first, recompute each chunk with one afterwards.
    let (features, mut kept_graph) = if ranges.len() == 1 {
        let f = encode(&graph_model, batch, &ranges[0])?;
        ([f[0].detach(), f[1].detach(), f[2].detach()], Some(f))
    } else {
        (embed_without_graph(params, batch, &ranges, opts.dtype)?, None)
    };
    check_features(&features)?;
    let g = pcm::loss_and_gradients(&features[0], &features[1], &features[2], params.logit_scale()?, &opts.pcm)?;
    if !g.loss_long.is_finite() || !g.loss_short.is_finite() {
        return Err(NonFinite(format!("loss (long {}, short {}; logit_scale {})", g.loss_long, g.loss_short, params.logit_scale()?)).into());
    }
    let on_device = |t: &Tensor| -> Result<Tensor> { Ok((t.to_dtype(DType::F32)?.to_device(&params.device)? * loss_scale)?) };
    let feature_grads = [on_device(&g.image)?, on_device(&g.long)?, on_device(&g.short)?];
    let mut acc: Vec<Option<Tensor>> = vec![None; params.vars.len()];
    for r in &ranges {
        let f = match kept_graph.take() {
            Some(f) => f,
            None => encode(&graph_model, batch, r)?,
        };
        backprop_chunk(params, &f, &feature_grads, r, &mut acc)?;
    }
    let logit_index = params.names.iter().position(|n| n == LOGIT_SCALE).context("no logit_scale")?;
    acc[logit_index] = Some((Tensor::new(g.logit_scale as f32, &params.device)? * loss_scale)?);
    let (grads, finite) = unscale(params, acc, loss_scale)?;
    Ok(Gradients { loss_long: g.loss_long, loss_short: g.loss_short, grads, finite })
}

/// Features of the whole batch, chunk by chunk, without a graph.
fn embed_without_graph(params: &Params, batch: &Batch, ranges: &[Range<usize>], dtype: DType) -> Result<[Tensor; 3]> {
    let model = params.model(dtype, false)?;
    let parts = ranges.iter().map(|r| encode(&model, batch, r)).collect::<Result<Vec<_>>>()?;
    let cat = |k: usize| Tensor::cat(&parts.iter().map(|p| &p[k]).collect::<Vec<_>>(), 0);
    Ok([cat(0)?, cat(1)?, cat(2)?])
}

/// Backpropagates the loss gradient of rows `r` (`feature_grads`) through
/// this chunk's graph (`features`) and adds the result to `acc`.
fn backprop_chunk(params: &Params, features: &[Tensor; 3], feature_grads: &[Tensor; 3], r: &Range<usize>, acc: &mut [Option<Tensor>]) -> Result<()> {
    let mut surrogate = Tensor::zeros((), DType::F32, &params.device)?;
    for (f, g) in features.iter().zip(feature_grads) {
        let term = f.to_dtype(DType::F32)?.mul(&g.narrow(0, r.start, r.len())?)?.sum_all()?;
        surrogate = surrogate.add(&term)?;
    }
    let store = surrogate.backward()?;
    for (slot, var) in acc.iter_mut().zip(&params.vars) {
        // Detached: candle's gradients keep their op history, which reaches
        // back into this chunk's graph and would keep it alive.
        if let Some(grad) = store.get(var.as_tensor()).map(Tensor::detach) {
            *slot = Some(match slot.take() {
                Some(a) => (a + grad)?,
                None => grad,
            });
        }
    }
    Ok(())
}

/// f32 gradients divided by the loss scale (zeros for an unused Var), and
/// whether they are all finite.
fn unscale(params: &Params, acc: Vec<Option<Tensor>>, loss_scale: f64) -> Result<(Vec<Tensor>, bool)> {
    let mut grads = Vec::with_capacity(acc.len());
    let mut square_sum = Tensor::zeros((), DType::F32, &params.device)?;
    for (grad, var) in acc.into_iter().zip(&params.vars) {
        let grad = match grad {
            Some(g) if loss_scale != 1.0 => (g.to_dtype(DType::F32)? / loss_scale)?,
            Some(g) => g.to_dtype(DType::F32)?,
            None => var.as_tensor().zeros_like()?,
        };
        square_sum = (square_sum + grad.sqr()?.sum_all()?)?;
        grads.push(grad);
    }
    Ok((grads, square_sum.to_scalar::<f32>()?.is_finite()))
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    pub loss_long: f64,
    pub loss_short: f64,
    pub lr: f64,
    /// False when the gradient was not finite and the update was skipped.
    pub applied: bool,
}

/// Params + AdamW + schedule (+ f16 loss scale): one call per batch.
pub struct Trainer {
    pub params: Params,
    pub optimizer: optim::AdamW,
    pub schedule: optim::CosineSchedule,
    pub loss_scale: optim::LossScale,
    pub options: StepOptions,
    /// Batches consumed so far (the schedule's step).
    pub step: usize,
}

impl Trainer {
    pub fn new(params: Params, adamw: optim::AdamWConfig, schedule: optim::CosineSchedule, options: StepOptions) -> Result<Trainer> {
        let optimizer = optim::AdamW::new(adamw, &params.vars)?;
        let loss_scale = optim::LossScale::new(options.dtype == DType::F16);
        Ok(Trainer { params, optimizer, schedule, loss_scale, options, step: 0 })
    }

    /// Loss, gradient and AdamW update for one batch at the schedule's
    /// learning rate.
    pub fn step(&mut self, batch: &Batch) -> Result<StepReport> {
        let lr = self.schedule.lr(self.step);
        let poisoned;
        let batch = match std::env::var(NON_FINITE_AT_STEP_ENV).ok().and_then(|s| s.parse::<usize>().ok()) {
            Some(s) if s == self.step + 1 => {
                poisoned = Batch { pixels: (&batch.pixels * f64::NAN)?, long: batch.long.clone(), short: batch.short.clone() };
                &poisoned
            }
            _ => batch,
        };
        let g = gradients(&self.params, batch, &self.options, self.loss_scale.scale)?;
        if !g.finite && !self.loss_scale.enabled {
            // Only an f16 loss scale makes an overflowing gradient expected
            // (halve the scale, skip the update); otherwise it is a fault.
            return Err(NonFinite(format!("gradient (with a finite loss: long {}, short {})", g.loss_long, g.loss_short)).into());
        }
        let applied = self.loss_scale.record(g.finite);
        if applied {
            self.optimizer.update(&self.params.vars, &g.grads, lr)?;
        }
        self.step += 1;
        Ok(StepReport { loss_long: g.loss_long, loss_short: g.loss_short, lr, applied })
    }
}
