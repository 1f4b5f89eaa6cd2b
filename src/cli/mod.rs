//! The `longclip` command line: a thin layer over the library.

mod bench;
mod demo;
mod eval;
mod finetune;
mod index;
mod inference;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand};

use crate::checkpoint::{self, Checkpoint};
use crate::embed::{self, Embedder};
use crate::family::{Family, TextPath};
use crate::model::{self, LongClip, Towers};
use crate::tokenizer::DEFAULT_CONTEXT_LENGTH;
use crate::{export, stretch};

#[derive(Parser)]
#[command(name = "longclip", version, about = "Long-CLIP in Rust: embed, stretch, convert and inspect checkpoints")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenize texts with CLIP's BPE: a JSON array of id arrays (SOT..EOT, truncated, unpadded).
    Tokenize {
        /// .json (array of strings), .jsonl ("text"/"caption") or .txt (one per line).
        #[arg(long)]
        texts: PathBuf,
        /// Tokens per text, SOT and EOT included (default: --model's positions, else 248).
        #[arg(long)]
        context_length: Option<usize>,
        /// Take the default context length from this checkpoint's positions and refuse a longer one.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Embed texts or images into a float32 .npy [N, D], or .json/.jsonl arrays (L2-normalized unless --raw).
    Embed(EmbedArgs),
    /// Cosine similarity of every image with every text, as a table.
    Similarity {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        images: PathBuf,
        #[arg(long)]
        texts: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Knowledge-preserved stretching to K + (L - K)·R positions: a 77-position CLIP to 248 by default
    /// (bit-identical to the official load_from_clip), or a Long-CLIP further.
    Stretch {
        /// A 77-position CLIP, or a Long-CLIP (its merged table is stretched).
        #[arg(long)]
        model: PathBuf,
        /// Output .safetensors (official names; loads in every longclip command).
        #[arg(long)]
        out: PathBuf,
        /// Positions kept as they are (K, the official keep_len); recorded in the output's config.
        #[arg(long, default_value_t = crate::checkpoint::KEEP_POSITIONS)]
        keep: usize,
        /// Rows written per interval after K (R, the official 4).
        #[arg(long, default_value_t = stretch::RATIO)]
        ratio: usize,
    },
    /// Write a Hugging Face model directory (a CLIPModel with one merged position table, the Long-CLIP split in
    /// config.json's longclip_keep_positions; FG-CLIP keeps both text paths under its own keys), or our safetensors
    /// when --out ends in .safetensors. Both record the model family (an HF directory in config.json's
    /// longclip_family, our safetensors in its longclip.config metadata).
    Convert {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Storage type of the written tensors: f32, f16 or bf16 (default: f32 for a directory, as stored for .safetensors).
        #[arg(long)]
        dtype: Option<String>,
    },
    /// What was detected in a checkpoint: format, towers, widths, layers, positions, dtypes.
    Info {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Retrieval R@1/5/10 (or zero-shot top-1/5) on a benchmark, beside the published numbers.
    Eval(eval::EvalArgs),
    /// R@K as captions are cut to each length: how much of a caption the model uses.
    Probe(eval::ProbeArgs),
    /// Zero-shot labels for images from a list of class names.
    Classify(eval::ClassifyArgs),
    /// Fine-tune with knowledge-preserved stretching and primary component matching.
    Finetune(finetune::FinetuneArgs),
    /// The two PCM losses of one batch (to check a setup against the official code).
    Loss(finetune::LossArgs),
    /// Image search indexes: build, add, remove, import, info, export, optimize, merge, upgrade.
    Index(index::IndexArgs),
    /// Search an index with a (long) text, an image or many queries.
    Search(index::SearchArgs),
    /// clip-retrieval's `inference` with Long-CLIP: files or webdataset shards -> img_emb/, text_emb/, metadata/ (parquet), in partitions.
    Inference(inference::InferenceArgs),
    /// Serve an index: a JSON API and a search page.
    Serve(index::ServeArgs),
    /// Encoder and pipeline throughput at the released shapes (random weights), as JSON lines.
    Bench(bench::BenchArgs),
    /// Generate a synthetic long-caption benchmark (Urban1k layout, or COCO for `eval --dataset coco`).
    Synth(demo::SynthArgs),
    /// The whole idea in a minute: synthetic scenes, the bundled model, search, probe, R@1 at 248 vs 77 tokens.
    Demo(demo::DemoArgs),
}

#[derive(Args)]
struct EmbedArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, conflicts_with = "images", required_unless_present = "images")]
    texts: Option<PathBuf>,
    /// A directory (recursive, sorted by path) or a text file with one path per line.
    #[arg(long)]
    images: Option<PathBuf>,
    /// .npy: float32 [N, D]. .json: an array of N arrays of D floats; .jsonl: one array per line
    /// (one is clip-retrieval back's /knn-service `embedding_input`).
    #[arg(long)]
    out: PathBuf,
    /// Defaults to the model's positions (248 for Long-CLIP, 77 for CLIP).
    #[arg(long)]
    context_length: Option<usize>,
    /// Keep the features unnormalized.
    #[arg(long)]
    raw: bool,
    /// FG-CLIP's text encoder: long (248 positions, text_filip_projection; the default) or short
    /// (77 positions, text_projection). Other families have only the long one.
    #[arg(long, value_enum)]
    text_path: Option<TextPath>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype of the matmuls: auto (f32 on CPU, f16 on CUDA), f32, f16, bf16, or int8 (CPU only; docs/cpu.md).
    #[arg(long, default_value = "auto")]
    dtype: String,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Tokenize { texts, context_length, model, out } => {
            let (context_length, family) = match model {
                None => (context_length.unwrap_or(DEFAULT_CONTEXT_LENGTH), Family::LongClip),
                Some(path) => {
                    let config = checkpoint::load(&path)?.config;
                    let positions = config.text.context_length;
                    let n = context_length.unwrap_or(positions);
                    if n > positions {
                        bail!("context length {n} exceeds the model's {positions} positions ({})", path.display());
                    }
                    (n, config.family)
                }
            };
            tokenize(&texts, context_length, family, out.as_deref())
        }
        Command::Embed(args) => embed(args),
        Command::Similarity { model, images, texts, device } => similarity(&model, &images, &texts, &device),
        Command::Stretch { model, out, keep, ratio } => {
            let ckpt = stretch::stretch_checkpoint_with(checkpoint::load(&model)?, keep, ratio)?;
            export::save_checkpoint(&ckpt, &out)?;
            eprintln!(
                "wrote {} ({} positions, rows 0..{keep} kept)",
                crate::term::path(&out),
                ckpt.config.text.context_length
            );
            Ok(())
        }
        Command::Convert { model, out, dtype } => {
            let dtype = dtype.as_deref().map(parse_dtype).transpose()?;
            let ckpt = checkpoint::load(&model)?;
            let what = match export::convert(&ckpt, &out, dtype)? {
                export::Converted::Safetensors => "safetensors",
                export::Converted::HfDir => "Hugging Face model directory",
            };
            let c = &ckpt.config;
            eprintln!("wrote {} ({what}, {}, {} positions)", crate::term::path(&out), c.family, c.text.context_length);
            Ok(())
        }
        Command::Info { model, json } => info(&checkpoint::load(&model)?, json),
        Command::Eval(args) => eval::eval(args),
        Command::Probe(args) => eval::probe(args),
        Command::Classify(args) => eval::classify(args),
        Command::Finetune(args) => finetune::finetune(args),
        Command::Loss(args) => finetune::loss(args),
        Command::Index(args) => index::run_index(args),
        Command::Search(args) => index::run_search(args),
        Command::Inference(args) => inference::run(args),
        Command::Serve(args) => index::run_serve(args),
        Command::Bench(args) => bench::bench(args),
        Command::Synth(args) => demo::synth(args),
        Command::Demo(args) => demo::demo(args),
    }
}

fn parse_dtype(s: &str) -> Result<DType> {
    match model::dtype_name(s).as_str() {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => bail!("unknown dtype '{s}' (expected f32, f16 or bf16)"),
    }
}

/// Token ids by `family`'s tokenizer rules (`--model`'s family, else Long-CLIP's).
fn tokenize(texts: &Path, context_length: usize, family: Family, out: Option<&Path>) -> Result<()> {
    let texts = embed::read_texts(texts)?;
    let encodings = family.rules().tokenize(&texts, context_length)?;
    let ids: Vec<&Vec<u32>> = encodings.iter().map(|e| &e.ids).collect();
    let json = serde_json::to_string(&ids)?;
    match out {
        Some(path) => export::write_atomic(path, json.as_bytes())?,
        None => println!("{json}"),
    }
    warn_truncated(&encodings.iter().enumerate().filter(|(_, e)| e.truncated).map(|(i, _)| i).collect::<Vec<_>>(), context_length);
    Ok(())
}

fn load_model(path: &Path, device: &str, dtype: &str, text_path: Option<TextPath>, towers: Towers) -> Result<(LongClip, Device)> {
    let (device, precision) = model::device_and_precision(device, dtype)?;
    let ckpt = checkpoint::load(path)?;
    let model = LongClip::with_towers(&ckpt, &device, precision, text_path, towers)?;
    Ok((model, device))
}

fn embed(args: EmbedArgs) -> Result<()> {
    embed::check_output(&args.out)?;
    let ext = args.out.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    if !["npy", "json", "jsonl"].contains(&ext.as_str()) {
        eprintln!("warning: {}: not .npy, .json or .jsonl; writing a float32 .npy", crate::term::path(&args.out));
    }
    // The inputs are read before the model loads, so a bad path fails at once.
    let texts = args.texts.as_deref().map(some_texts).transpose()?;
    let paths = match (&texts, &args.images) {
        (Some(_), _) => Vec::new(),
        (None, Some(path)) => some_images(path)?,
        (None, None) => bail!("give --texts or --images"),
    };
    // `--texts` and `--images` exclude each other: load only that tower.
    let towers = if texts.is_some() { Towers::Text } else { Towers::Vision };
    let (model, device) = load_model(&args.model, &args.device, &args.dtype, args.text_path, towers)?;
    let embedder = Embedder { model: &model, device, batch_size: args.batch_size, normalize: !args.raw, progress: true };
    let start = Instant::now();
    if let (Some(texts), Some(texts_path)) = (texts, &args.texts) {
        let ctx = args.context_length.unwrap_or(model.text.context_length());
        let out = embedder.embed_texts(&texts, ctx)?;
        embed::write_features(&out.features, &args.out)?;
        let ids: String = (0..texts.len()).map(|i| format!("{i}\n")).collect();
        export::write_atomic(&embed::sidecar(&args.out, "ids.txt"), ids.as_bytes())?;
        eprintln!("{}, {} -> {}", embed::summary("texts", texts.len(), start), model.precision, crate::term::path(&args.out));
        for &i in &out.empty {
            eprintln!("warning: {}: row {i} is empty", crate::term::path(texts_path));
        }
        warn_truncated(&out.truncated, ctx);
        return Ok(());
    }
    let out = embedder.embed_images(&paths)?;
    report_skipped(&out.skipped, &args.out)?;
    if out.paths.is_empty() {
        bail!("none of the {} images could be embedded", paths.len());
    }
    embed::write_features(&out.features, &args.out)?;
    // One path a line: control characters (a newline in a name) escaped as
    // in the terminal, so line i is row i of the .npy.
    let ids: String = out.paths.iter().map(|p| format!("{}\n", crate::term::path(p))).collect();
    export::write_atomic(&embed::sidecar(&args.out, "ids.txt"), ids.as_bytes())?;
    eprintln!(
        "{}, {}, skipped {} -> {}",
        embed::summary("images", out.paths.len(), start),
        model.precision,
        out.skipped.len(),
        crate::term::path(&args.out)
    );
    Ok(())
}

fn report_skipped(skipped: &[(PathBuf, String)], out: &Path) -> Result<()> {
    if skipped.is_empty() {
        return Ok(());
    }
    let list: String = skipped.iter().map(|(p, why)| format!("{}\t{}\n", crate::term::path(p), crate::term::escape_for_terminal(why))).collect();
    let path = embed::sidecar(out, "skipped.txt");
    export::write_atomic(&path, list.as_bytes())?;
    for (p, why) in skipped {
        eprintln!("skipped {}: {}", crate::term::path(&p), crate::term::escape_for_terminal(why));
    }
    eprintln!("{} images skipped, listed in {}", skipped.len(), crate::term::path(&path));
    Ok(())
}

/// The texts of `path`; an error when there are none.
fn some_texts(path: &Path) -> Result<Vec<String>> {
    let texts = embed::read_texts(path)?;
    if texts.is_empty() {
        bail!("{}: no texts", path.display());
    }
    Ok(texts)
}

/// The images `path` names; an error when there are none.
fn some_images(path: &Path) -> Result<Vec<std::path::PathBuf>> {
    let paths = embed::list_images(path)?;
    if paths.is_empty() {
        bail!("{}: no images found (jpg, jpeg, png, webp, gif, bmp, tif, tiff)", path.display());
    }
    Ok(paths)
}

fn warn_truncated(rows: &[usize], context_length: usize) {
    if rows.is_empty() {
        return;
    }
    let shown: Vec<String> = rows.iter().take(10).map(|r| r.to_string()).collect();
    let more = if rows.len() > 10 { ", ..." } else { "" };
    let (n, were) = if rows.len() == 1 { ("1 text".to_string(), "was") } else { (format!("{} texts", rows.len()), "were") };
    eprintln!(
        "warning: {n} {were} longer than {context_length} tokens and {were} truncated (rows {}{more})",
        shown.join(", ")
    );
}

fn similarity(model_path: &Path, images: &Path, texts: &Path, device: &str) -> Result<()> {
    let (model, device) = load_model(model_path, device, "auto", None, Towers::Both)?;
    let embedder = Embedder { model: &model, device, batch_size: 32, normalize: true, progress: false };
    let texts = embed::read_texts(texts)?;
    let paths = embed::list_images(images)?;
    let t = embedder.embed_texts(&texts, model.text.context_length())?;
    let i = embedder.embed_images(&paths)?;
    for (p, why) in &i.skipped {
        eprintln!("skipped {}: {}", crate::term::path(&p), crate::term::escape_for_terminal(why));
    }
    let sims = i.features.matmul(&t.features.t()?)?.to_vec2::<f32>()?;
    print_similarity_table(&i.paths, &texts, &sims);
    Ok(())
}

fn print_similarity_table(paths: &[PathBuf], texts: &[String], sims: &[Vec<f32>]) {
    let names: Vec<String> = paths
        .iter()
        .map(|p| p.file_name().map(|n| crate::term::escape_for_terminal(&n.to_string_lossy()).into_owned()).unwrap_or_default())
        .collect();
    let w = names.iter().map(|n| n.chars().count()).max().unwrap_or(5).max(5);
    print!("{:w$}", "image");
    for j in 0..texts.len() {
        print!("  text{j:<3}");
    }
    println!();
    for (name, row) in names.iter().zip(sims) {
        print!("{name:w$}");
        let best = row.iter().cloned().fold(f32::MIN, f32::max);
        for &s in row {
            let mark = if s == best { '*' } else { ' ' };
            print!("  {s:+.3}{mark}");
        }
        println!();
    }
    println!();
    for (j, t) in texts.iter().enumerate() {
        let short: String = t.chars().take(90).collect();
        let dots = if t.chars().count() > 90 { "..." } else { "" };
        println!("text{j}: {}{dots}", crate::term::escape_for_terminal(&short));
    }
}

fn info(ckpt: &Checkpoint, json: bool) -> Result<()> {
    let c = &ckpt.config;
    if json {
        let value = serde_json::json!({
            "path": ckpt.path.display().to_string(),
            "format": ckpt.format.to_string(),
            "long_clip": ckpt.is_long_clip(),
            "family": c.family,
            "text_paths": c.family.rules().text_paths(),
            "config": c,
            "dtypes": ckpt.dtype_counts(),
            "parameters": ckpt.parameter_count(),
            "ignored_keys": ckpt.ignored,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let kind = c.family.rules().describe_tables(&ckpt);
    println!("file        {}", crate::term::path(&ckpt.path));
    println!("format      {}", ckpt.format);
    println!("model       {kind}");
    let paths: Vec<String> = c.family.rules().text_paths().iter().map(|p| p.to_string()).collect();
    println!("family      {} (text paths: {}; rules: {})", c.family, paths.join(", "), c.family.rules().source());
    println!("embed dim   {}", c.embed_dim);
    println!(
        "text        width {}, layers {}, heads {}, mlp {}, positions {}, vocab {}",
        c.text.width, c.text.layers, c.text.heads, c.text.mlp_width, c.text.context_length, c.text.vocab_size
    );
    println!(
        "vision      ViT width {}, layers {}, heads {}, mlp {}, patch {}, resolution {}",
        c.vision.width, c.vision.layers, c.vision.heads, c.vision.mlp_width, c.vision.patch_size, c.vision.image_size
    );
    println!("activation  {:?}", c.activation);
    let dtypes: Vec<String> = ckpt.dtype_counts().iter().map(|(d, n)| format!("{d} x{n}")).collect();
    println!("dtypes      {}", dtypes.join(", "));
    println!("parameters  {}", ckpt.parameter_count());
    if !ckpt.ignored.is_empty() {
        println!("ignored     {}", crate::term::escape_for_terminal(&ckpt.ignored.join(", ")));
    }
    Ok(())
}

/// For `main`: runs and turns errors into `longclip: ...` on stderr.
pub fn main_entry() -> std::process::ExitCode {
    crate::term::exit_quietly_on_broken_pipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if crate::term::is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Escaped here once for every error; line breaks are kept because some
            // messages are lists on purpose (their items are escaped where made).
            eprintln!("longclip: {}", crate::term::escape_lines(&format!("{e:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}
