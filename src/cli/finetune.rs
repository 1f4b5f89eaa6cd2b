//! `longclip finetune` and `longclip loss`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;

use crate::checkpoint;
use crate::embed::{self, Embedder};
use crate::finetune::data::{CaptionCuts, ShortCaption};
use crate::finetune::optim::AdamWConfig;
use crate::finetune::run::{self, RunConfig};
use crate::model::{self, LongClip};
use crate::pcm::{self, PcmOptions, LABEL_SMOOTHING, PCA_DIM};
use crate::preprocess::Transform;

/// ln(100), the official `--log_scale` default (4.6052).
const LOG_SCALE: f64 = 4.605170185988092;

#[derive(Args)]
pub struct FinetuneArgs {
    /// Long-CLIP checkpoint (any number of positions, e.g. `longclip stretch --keep K --ratio R` output), or a 77-position CLIP (stretched to 248 with KPS).
    #[arg(long)]
    model: PathBuf,
    /// Training data: sharegpt4v:FILE.json (skips the 1k evaluation records), or a .json/.csv/.jsonl with image and caption fields.
    #[arg(long)]
    data: String,
    /// Directory the data's image paths are relative to (default: the data file's directory).
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Output directory: checkpoints/, model.safetensors, train.json, log.jsonl.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    #[arg(long, default_value_t = 1e-6)]
    lr: f64,
    /// The contrastive batch: every image is contrasted with every caption of it.
    #[arg(long, default_value_t = 2048)]
    batch_size: usize,
    /// Run the encoders in this many chunks per batch with a gradient cache: same loss, a chunk's memory.
    #[arg(long, default_value_t = 1)]
    accumulate: usize,
    /// Linear warm-up steps of the cosine schedule.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    #[arg(long, default_value_t = 1e-2)]
    weight_decay: f64,
    /// logit_scale is reset to this (official default ln(100)).
    #[arg(long, default_value_t = LOG_SCALE)]
    log_scale: f64,
    #[arg(long, default_value_t = PCA_DIM)]
    pca_dim: usize,
    /// One PCA per this many consecutive samples (0: the whole batch). 128 is the official run: 16 GPUs x 128, one PCA per GPU.
    #[arg(long, default_value_t = 128)]
    pca_group: usize,
    /// Share of long captions cut, at each step, to a random token length (0: none, the official recipe). Teaches a model to match a caption's beginning, as the probe and a 77-token reader see it.
    #[arg(long, default_value_t = 0.0)]
    cut_share: f64,
    /// Shortest cut in tokens, SOT and EOT included (default 2); lengths are uniform from here to the caption's length minus one, and captions of at most this many tokens stay whole.
    #[arg(long)]
    cut_min: Option<usize>,
    /// first-sentence (the caption up to the first ". ") or column:NAME.
    #[arg(long, default_value = "first-sentence")]
    short_caption: String,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype of the matmuls: auto (f32 on CPU, bf16 on CUDA), f32, bf16, f16 (with a dynamic loss scale).
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Retrieval R@1 before, at checkpoints and after: urban1k:ROOT, sharegpt4v:FILE (first 1k), or a data file.
    #[arg(long)]
    eval: Option<String>,
    /// Write a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 500)]
    save_every: usize,
    /// Checkpoints kept (the newest).
    #[arg(long, default_value_t = 2)]
    keep: usize,
    /// Seed of the data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many steps (the schedule still spans every epoch; --resume continues).
    #[arg(long)]
    max_steps: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn finetune(args: FinetuneArgs) -> Result<()> {
    let short: ShortCaption = args.short_caption.parse()?;
    if args.pca_dim == 0 {
        bail!("--pca-dim must be at least 1 (the short captions are matched to a PCA of that many components)");
    }
    if args.cut_min.is_some() && args.cut_share == 0.0 {
        bail!("--cut-min does nothing without --cut-share (the share of captions to cut)");
    }
    long_clip_only(&checkpoint::load(&args.model)?, "finetune")?;
    let cfg = RunConfig {
        model: args.model,
        data: args.data,
        image_root: args.image_root,
        out: args.out,
        epochs: args.epochs,
        lr: args.lr,
        batch_size: args.batch_size,
        accumulate: args.accumulate,
        warmup: args.warmup,
        adamw: AdamWConfig { weight_decay: args.weight_decay, ..AdamWConfig::default() },
        log_scale: args.log_scale,
        pcm: PcmOptions { pca_dim: args.pca_dim, pca_group: args.pca_group, label_smoothing: LABEL_SMOOTHING },
        short,
        cuts: CaptionCuts { share: args.cut_share, min_tokens: args.cut_min.unwrap_or(CaptionCuts::default().min_tokens) },
        device: args.device,
        dtype: args.dtype,
        resume: args.resume,
        eval: args.eval,
        save_every: args.save_every,
        keep: args.keep,
        seed: args.seed,
        max_steps: args.max_steps,
        progress: !args.quiet,
    };
    let s = run::run(&cfg)?;
    if let Some(e) = &s.eval_after {
        eprintln!("{}", run::describe_eval("after", e));
    }
    let memory = s.peak_rss_bytes.map(|b| format!(", peak RSS {:.2} GB", b as f64 / 1e9)).unwrap_or_default();
    let cut = if s.cut_captions > 0 { format!(", {} long captions cut", s.cut_captions) } else { String::new() };
    eprintln!(
        "trained to step {}/{}: {} samples in {:.1} s ({:.2} samples/s{memory}), last loss long {:.4} short {:.4}, \
         skipped {} images{cut} -> {}",
        s.steps,
        s.total_steps,
        s.samples,
        s.seconds,
        s.samples_per_second,
        s.last_loss_long,
        s.last_loss_short,
        s.skipped_images,
        crate::term::path(&s.model)
    );
    Ok(())
}

#[derive(Args)]
pub struct LossArgs {
    #[arg(long)]
    model: PathBuf,
    /// A directory (sorted by path), an image, or a text file with one path per line.
    #[arg(long)]
    images: PathBuf,
    /// One long caption per image (.txt lines, .json array or .jsonl).
    #[arg(long)]
    long_texts: PathBuf,
    #[arg(long)]
    short_texts: PathBuf,
    #[arg(long, default_value_t = PCA_DIM)]
    pca_dim: usize,
    /// One PCA per this many consecutive images (0: the whole batch, as the official forward on one process).
    #[arg(long, default_value_t = 0)]
    pca_group: usize,
    /// Use this logit_scale instead of the checkpoint's.
    #[arg(long)]
    log_scale: Option<f64>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[arg(long)]
    json: bool,
}

/// Fine-tuning is Long-CLIP's recipe, with its tokenizer and preprocessing:
/// other families are refused rather than trained with the wrong inputs.
fn long_clip_only(ckpt: &checkpoint::Checkpoint, command: &str) -> Result<()> {
    let family = ckpt.config.family;
    if family != crate::family::Family::LongClip {
        bail!("{}: `{command}` is Long-CLIP's recipe; this is a {family} checkpoint (see docs/families.md)", ckpt.path.display());
    }
    Ok(())
}

/// The two PCM losses of one batch, as the official `forward(image,
/// text_long, text_short, rank=0)` returns them.
pub fn loss(args: LossArgs) -> Result<()> {
    let device = model::device(&args.device)?;
    let dtype = model::compute_dtype(&args.dtype, &device)?;
    let ckpt = checkpoint::load(&args.model)?;
    long_clip_only(&ckpt, "loss")?;
    let model = LongClip::new(&ckpt, &device, dtype)?;
    let paths = embed::list_images(&args.images)?;
    let long = embed::read_texts(&args.long_texts)?;
    let short = embed::read_texts(&args.short_texts)?;
    if paths.len() != long.len() || paths.len() != short.len() {
        bail!("{} images, {} long and {} short texts: give one of each per image", paths.len(), long.len(), short.len());
    }
    if paths.len() < 2 {
        bail!("a contrastive loss needs at least 2 images");
    }
    let transform = Transform::clip(model.vision.image_size());
    let mut pixels = Vec::new();
    for (path, image) in paths.iter().zip(transform.batch_from_paths(&paths)) {
        pixels.extend(image.with_context(|| format!("{}: every image of the batch is needed", path.display()))?);
    }
    let size = transform.size;
    let pixels = Tensor::from_vec(pixels, (paths.len(), 3, size, size), &device)?;
    let embedder = Embedder { model: &model, device: device.clone(), batch_size: 64, normalize: false, progress: false };
    let ctx = model.text.context_length();
    let image = model.vision.encode(&pixels)?;
    let long = embedder.embed_texts(&long, ctx)?.features;
    let short = embedder.embed_texts(&short, ctx)?.features;
    let scale = args.log_scale.unwrap_or(model.logit_scale as f64);
    let opts = PcmOptions { pca_dim: args.pca_dim, pca_group: args.pca_group, label_smoothing: LABEL_SMOOTHING };
    if let Some(w) = run::pca_group_warning(paths.len(), paths.len(), &opts, model.config.embed_dim) {
        eprintln!("{w}");
    }
    let (loss_long, loss_short) = pcm::loss_values(&image, &long, &short, scale, &opts)?;
    if args.json {
        println!("{}", serde_json::json!({ "loss_long": loss_long, "loss_short": loss_short }));
    } else {
        println!("loss_long  {loss_long:.6}\nloss_short {loss_short:.6}\ntotal      {:.6}", loss_long + loss_short);
        eprintln!("{} images, logit_scale {scale:.4}, PCA {} components", paths.len(), args.pca_dim);
    }
    Ok(())
}
