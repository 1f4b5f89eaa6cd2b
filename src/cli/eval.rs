//! `longclip eval`, `longclip probe` and `longclip classify`: arguments in,
//! a run of the library ([`crate::evaluate::run`]) and its text
//! ([`crate::evaluate::tables`]) and files ([`crate::evaluate::report`]) out.
//! Tables go to standard output, progress and warnings to standard error.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::datasets::classes::{self, CLASSIFICATION_DATASETS};
use crate::datasets::{self, Dataset, LoadOptions, OnMissing};
use crate::evaluate::run::{self, LoadedModel, ProbeSpec, RetrievalSpec, RunOptions};
use crate::evaluate::{self, report, tables, Unit};
use crate::family::TextPath;
use crate::{cache, export};

#[derive(Args)]
pub struct DatasetArgs {
    /// coco, flickr30k, sharegpt4v, urban1k, urban200, dci, docci, iiw, csv, jsonl (eval also takes cifar10, cifar100, imagenet).
    /// The long-caption protocols (dci, docci, iiw, ShareGPT4V-10k) are described in docs/benchmarks.md.
    #[arg(long)]
    dataset: String,
    /// The dataset's folder, as downloaded (csv / jsonl: the file itself).
    #[arg(long)]
    root: PathBuf,
    /// coco: val2017 (default, the official protocol) or karpathy; flickr30k: full (default) or karpathy;
    /// dci: long (default, Long-DCI), fgclip, lotlip or goal; docci: test (default), qual_test, test,qual_test or goal;
    /// iiw: lotlip (default, 612 pairs), docci_test, iiw400 or dci_test; sharegpt4v: 1k (default) or 10k.
    #[arg(long)]
    split: Option<String>,
    /// Where image paths are relative to, if not the layout's usual folder.
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// csv / jsonl: the image path column.
    #[arg(long, default_value = "image")]
    image_column: String,
    /// csv / jsonl: the caption column.
    #[arg(long, default_value = "caption")]
    caption_column: String,
    /// sharegpt4v: records from the start of the file that form the test set, when not given by --split
    /// (1k: 1000, the default; 10k: 10000, whose records 1k-10k are in Long-CLIP's training data).
    #[arg(long)]
    limit: Option<usize>,
    /// coco / flickr30k: captions per image (0 = all).
    #[arg(long, default_value_t = 5)]
    max_captions: usize,
    /// Images listed but missing or unreadable: stop (fail), or leave them and their captions out (skip).
    #[arg(long, value_enum, default_value_t = OnMissing::Fail)]
    on_missing: OnMissing,
}

impl DatasetArgs {
    fn options(&self) -> LoadOptions {
        LoadOptions {
            split: self.split.clone(),
            image_root: self.image_root.clone(),
            image_column: self.image_column.clone(),
            caption_column: self.caption_column.clone(),
            limit: self.limit,
            max_captions: self.max_captions,
        }
    }

    fn load(&self) -> Result<Dataset> {
        // The ShareGPT4V split (1k, 10k) is named by the loader.
        let data = datasets::load(&self.dataset, &self.root, &self.options())?;
        for note in &data.notes {
            eprintln!("note: {}", crate::term::escape_for_terminal(note));
        }
        for warning in &data.warnings {
            eprintln!("warning: {}", crate::term::escape_for_terminal(warning));
        }
        Ok(data)
    }
}

#[derive(Args)]
pub struct RunArgs {
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Embedding cache folder [default: $LONGCLIP_CACHE or ~/.cache/longclip/embeddings].
    #[arg(long)]
    embeddings_cache: Option<PathBuf>,
    /// Embed everything afresh and store nothing.
    #[arg(long, conflicts_with = "embeddings_cache")]
    no_cache: bool,
    /// Append this run to DIR/runs.jsonl (a line per model) [DIR default: eval/results].
    #[arg(long, num_args = 0..=1, default_missing_value = "eval/results", value_name = "DIR")]
    record: Option<PathBuf>,
    /// FG-CLIP's text encoder: long (248 positions, text_filip_projection; the default, as its
    /// long-caption evals) or short (77 positions, text_projection, as its COCO/zero-shot evals).
    /// With several models, the others run their own (only) path.
    #[arg(long, value_enum)]
    text_path: Option<TextPath>,
    /// Compute dtype: f32 (exact, the default), bf16, f16, auto (f16 on CUDA, f32 on CPU), or int8 (CPU only: quantized linear
    /// layers that move R@K by up to about a point; for indexing, not for tables; docs/cpu.md).
    #[arg(long, default_value = "f32")]
    dtype: String,
}

impl RunArgs {
    /// Says, once, what int8 does to the numbers (issue 16: eval warns).
    fn warn_dtype(&self) {
        if crate::model::dtype_name(&self.dtype) == "int8" {
            eprintln!(
                "warning: --dtype int8 quantizes the linear layers (docs/cpu.md, \"bf16 and int8\"): R@K can move by up to \
                 about a point from f32; use f32 to reproduce published tables"
            );
        }
    }

    fn options(&self) -> RunOptions {
        RunOptions {
            device: self.device.clone(),
            batch_size: self.batch_size,
            cache_dir: (!self.no_cache).then(|| self.embeddings_cache.clone().unwrap_or_else(cache::default_dir)),
            text_path: self.text_path,
            progress: true,
            dtype: self.dtype.clone(),
        }
    }
}

#[derive(Args)]
pub struct EvalArgs {
    /// Repeat for several models in one table (a row per model).
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    #[command(flatten)]
    data: DatasetArgs,
    /// Tokens per caption (default: each model's positions, 248 for Long-CLIP).
    #[arg(long)]
    context_length: Option<usize>,
    /// Write the numbers as one JSON object (several models: {"dataset", "split", "seconds", "models": [...]}).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the numbers as a CSV header and a row per model.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Whose published numbers to print: LongCLIP-B, LongCLIP-L, "CLIP ViT-B/16", "CLIP ViT-L/14", FG-CLIP-B, FG-CLIP-L,
    /// "LoTLIP ViT-B/16", "TULIP ViT-L/14" or none; once for all models or once per --model [default: read off each checkpoint].
    #[arg(long)]
    paper_model: Vec<String>,
    /// Classification: prompt templates, one per line with {} for the class [default: CLIP's 80].
    #[arg(long)]
    templates_file: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
pub struct ProbeArgs {
    /// Repeat for several models on one plot and one table (CLIP vs Long-CLIP).
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    #[command(flatten)]
    data: DatasetArgs,
    #[arg(long, value_delimiter = ',', default_value = "5,10,20,30,40,60,77,100,150,248")]
    lengths: Vec<usize>,
    /// tokens: official tokenize(context_length=N, truncate=True); words: " ".join(caption.split(" ")[:N]).
    #[arg(long, value_enum, default_value_t = Unit::Tokens)]
    unit: Unit,
    /// R@1 against length, .png or .svg.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Whose published whole-caption numbers to print beside the long lengths (as for eval).
    #[arg(long)]
    paper_model: Vec<String>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
pub struct ClassifyArgs {
    #[arg(long)]
    model: PathBuf,
    /// A folder (recursive), an image, or a text file with one path per line.
    #[arg(long)]
    images: PathBuf,
    /// Class names, comma separated.
    #[arg(long, conflicts_with = "labels_file", required_unless_present = "labels_file")]
    labels: Option<String>,
    /// Class names, one per line.
    #[arg(long)]
    labels_file: Option<PathBuf>,
    /// Prompt with {} for the class; repeat for an ensemble (embeddings averaged).
    #[arg(long = "template", default_value = "a photo of a {}.")]
    templates: Vec<String>,
    /// Labels shown per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

/// Output files whose folder does not exist fail before the run, not after
/// it (the run may take minutes; nothing is written either way).
fn check_output_folders(paths: &[&Option<PathBuf>]) -> Result<()> {
    for p in paths.iter().filter_map(|p| p.as_ref()) {
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.is_dir() {
            bail!("{}: cannot write there: {} is not a folder (nothing was run)", p.display(), parent.display());
        }
    }
    Ok(())
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let start = Instant::now();
    check_output_folders(&[&args.json, &args.csv])?;
    if CLASSIFICATION_DATASETS.contains(&args.data.dataset.as_str()) {
        return eval_classification(args, start);
    }
    let data = args.data.load()?;
    args.run.warn_dtype();
    let opts = args.run.options();
    let spec = RetrievalSpec {
        on_missing: args.data.on_missing,
        context_length: args.context_length,
        paper: run::paper_models(&args.paper_model, args.model.len())?,
    };
    let several = args.model.len() > 1;
    let mut result = run::run_retrieval(&args.model, &data, &opts, &spec, &mut |m| {
        let who = if several { format!("{}: ", crate::term::escape_for_terminal(&m.model.label)) } else { String::new() };
        for note in &m.notes {
            eprintln!("note: {}", crate::term::escape_for_terminal(note));
        }
        report_skipped(&m.report.skipped, data.images.len());
        if m.report.truncated > 0 {
            eprintln!("warning: {who}{} captions were longer than {} tokens and were cut (EOT kept)", m.report.truncated, m.context_length);
        }
    })?;
    result.seconds = start.elapsed().as_secs_f64();
    print!("{}", tables::retrieval_text(&result));
    let devices: Vec<&str> = result.models.iter().map(|m| m.model.device.as_str()).collect();
    write_outputs(&report::retrieval_json(&result), &report::retrieval_entries(&result), &devices, &args.json, &args.csv, &args.run.record, "eval")
}

fn report_skipped(skipped: &[(PathBuf, String)], total: usize) {
    if skipped.is_empty() {
        return;
    }
    for (p, why) in skipped.iter().take(10) {
        eprintln!("skipped {}: {}", crate::term::path(p), crate::term::escape_for_terminal(why));
    }
    if skipped.len() > 10 {
        eprintln!("... and {} more", skipped.len() - 10);
    }
    eprintln!("{} of {total} images skipped with their captions; the table counts the pairs evaluated", skipped.len());
}

fn eval_classification(args: EvalArgs, start: Instant) -> Result<()> {
    let name = args.data.dataset.as_str();
    let set = classes::load(name, &args.data.root)?;
    let templates = match &args.templates_file {
        Some(p) => read_lines(p)?,
        None => classes::imagenet_templates(),
    };
    let spec = RetrievalSpec {
        on_missing: args.data.on_missing,
        context_length: args.context_length,
        paper: run::paper_models(&args.paper_model, args.model.len())?,
    };
    args.run.warn_dtype();
    let mut result = run::run_classification(&args.model, name, &set, &templates, &args.run.options(), &spec, &mut |m| {
        for note in &m.notes {
            eprintln!("note: {}", crate::term::escape_for_terminal(note));
        }
        for (n, why) in m.report.skipped.iter().take(10) {
            eprintln!("skipped {}: {}", crate::term::escape_for_terminal(n), crate::term::escape_for_terminal(why));
        }
    })?;
    result.seconds = start.elapsed().as_secs_f64();
    print!("{}", tables::classification_text(&result));
    let devices: Vec<&str> = result.models.iter().map(|m| m.model.device.as_str()).collect();
    write_outputs(&report::classification_json(&result), &report::classification_entries(&result), &devices, &args.json, &args.csv, &args.run.record, "eval")
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let lines: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    if lines.is_empty() {
        bail!("{}: no lines", path.display());
    }
    Ok(lines)
}

/// The JSON file, the CSV file (a row per entry) and the records (a line
/// per entry, on its model's device).
fn write_outputs(
    out: &Value,
    entries: &[Value],
    devices: &[&str],
    json_path: &Option<PathBuf>,
    csv_path: &Option<PathBuf>,
    record: &Option<PathBuf>,
    command: &str,
) -> Result<()> {
    if let Some(p) = json_path {
        export::write_atomic(p, format!("{}\n", serde_json::to_string_pretty(out)?).as_bytes())?;
        eprintln!("wrote {}", crate::term::path(p));
    }
    if let Some(p) = csv_path {
        export::write_atomic(p, report::flat_csv(entries).as_bytes())?;
        eprintln!("wrote {}", crate::term::path(p));
    }
    if let Some(dir) = record {
        let results: Vec<(Value, &str)> = entries.iter().cloned().zip(devices.iter().copied()).collect();
        let path = report::append_records(dir, command, &results)?;
        eprintln!("recorded in {}", crate::term::path(&path));
    }
    Ok(())
}

pub fn probe(args: ProbeArgs) -> Result<()> {
    let start = Instant::now();
    let spec = ProbeSpec {
        lengths: args.lengths.clone(),
        unit: args.unit,
        on_missing: args.data.on_missing,
        paper: run::paper_models(&args.paper_model, args.model.len())?,
    };
    spec.check()?;
    check_output_folders(&[&args.json, &args.csv, &args.plot])?;
    if let Some(p) = &args.plot {
        let ext = p.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
        if ext != "svg" && ext != "png" {
            bail!("{}: the plot is written as .svg or .png", p.display());
        }
    }
    let data = args.data.load()?;
    let (name, split) = (data.name.clone(), data.split.clone());
    args.run.warn_dtype();
    let mut result = run::run_probe(&args.model, &data, &args.run.options(), &spec, &mut |m| {
        for note in &m.notes {
            eprintln!("note: {}", crate::term::escape_for_terminal(note));
        }
        report_skipped(&m.skipped, data.images.len());
        print!("{}", tables::probe_model_text(spec.unit, &name, &split, spec.lengths.len(), m));
    })?;
    result.seconds = start.elapsed().as_secs_f64();
    if result.models.len() > 1 || result.models.iter().any(|m| !m.paper.is_empty()) {
        println!("\nby {}, {} ({}):", tables::unit_name(result.unit), result.dataset, result.split);
        print!("{}", tables::probe_summary(&result));
    }
    if let Some(p) = &args.plot {
        tables::probe_chart(&result).save(p)?;
        eprintln!("wrote {}", crate::term::path(p));
    }
    if let Some(p) = &args.csv {
        export::write_atomic(p, report::probe_csv(&result).as_bytes())?;
        eprintln!("wrote {}", crate::term::path(p));
    }
    let out = report::probe_json(&result);
    let device = result.models.last().map(|m| m.model.device.as_str()).unwrap_or("cpu");
    write_outputs(&out, std::slice::from_ref(&out), &[device], &args.json, &None, &args.run.record, "probe")
}

pub fn classify(args: ClassifyArgs) -> Result<()> {
    let labels: Vec<String> = match (&args.labels, &args.labels_file) {
        (Some(l), _) => l.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect(),
        (None, Some(f)) => read_lines(f)?,
        (None, None) => bail!("give --labels or --labels-file"),
    };
    if labels.is_empty() {
        bail!("no class names given");
    }
    let paths = crate::embed::list_images(&args.images)?;
    if paths.is_empty() {
        bail!("{}: no images found", args.images.display());
    }
    let opts = RunOptions { device: args.device.clone(), batch_size: args.batch_size, cache_dir: None, text_path: None, progress: true, dtype: "f32".into() };
    let label = run::model_labels(std::slice::from_ref(&args.model)).remove(0);
    let (m, _) = LoadedModel::load(&args.model, &label, &opts, false)?;
    let mut enc = m.encoder(&opts)?;
    let (results, failed) = evaluate::classification::classify_images(&mut enc, &paths, &labels, &args.templates, args.top)?;
    for (i, why) in &failed {
        eprintln!("skipped {}: {}", crate::term::path(&paths[*i]), crate::term::escape_for_terminal(why));
    }
    for r in &results {
        let shown: Vec<String> = r.labels.iter().map(|l| format!("{} {:.1}%", l.label, 100.0 * l.probability)).collect();
        println!("{}\t{}", crate::term::escape_for_terminal(&r.image), crate::term::escape_for_terminal(&shown.join(", ")));
    }
    if let Some(p) = &args.json {
        export::write_atomic(p, serde_json::to_string_pretty(&json!({"model": m.info.path.display().to_string(), "templates": args.templates, "results": results}))?.as_bytes())?;
        eprintln!("wrote {}", crate::term::path(p));
    }
    Ok(())
}
