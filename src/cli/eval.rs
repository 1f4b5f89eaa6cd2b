//! `longclip eval`, `longclip probe` and `longclip classify`: tables on
//! standard output, progress and warnings on standard error, and optional
//! JSON / CSV / plot files and a record in `eval/results/`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use serde_json::{json, Value};

use crate::checkpoint::{self, Config};
use crate::datasets::classes::{self, CLASSIFICATION_DATASETS};
use crate::datasets::{self, Dataset, ImageRef, LoadOptions, OnMissing};
use crate::evaluate::{self, Encoder, ProbeRow, Timings, Unit};
use crate::family::TextPath;
use crate::metrics::RetrievalScores;
use crate::model::{self, LongClip};
use crate::plot::{Chart, Series};
use crate::{cache, export, reference};

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
    /// iiw: lotlip (default, 612 pairs), docci_test, iiw400 or dci_test.
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
    /// sharegpt4v: records from the start of the file that form the test set (1000: split 1k; 10000: split 10k,
    /// whose records 1k-10k are in Long-CLIP's training data).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
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
    /// Append this run to DIR/runs.jsonl [DIR default: eval/results].
    #[arg(long, num_args = 0..=1, default_missing_value = "eval/results", value_name = "DIR")]
    record: Option<PathBuf>,
    /// FG-CLIP's text encoder: long (248 positions, text_filip_projection; the default, as its
    /// long-caption evals) or short (77 positions, text_projection, as its COCO/zero-shot evals).
    #[arg(long, value_enum)]
    text_path: Option<TextPath>,
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: DatasetArgs,
    /// Tokens per caption (default: the model's positions, 248 for Long-CLIP).
    #[arg(long)]
    context_length: Option<usize>,
    /// Write the numbers as one JSON object.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the numbers as a CSV header and row.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Whose published numbers to print: LongCLIP-B, LongCLIP-L, "CLIP ViT-B/16", "CLIP ViT-L/14" or none [default: read off the checkpoint's shapes].
    #[arg(long)]
    paper_model: Option<String>,
    /// Classification: prompt templates, one per line with {} for the class [default: CLIP's 80].
    #[arg(long)]
    templates_file: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
pub struct ProbeArgs {
    /// Repeat for several models on one plot (CLIP vs Long-CLIP).
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

/// A loaded model and what identifies it.
struct Loaded {
    path: PathBuf,
    fingerprint: String,
    config: Config,
    model: LongClip,
    device: Device,
}

fn load_model(path: &Path, device: &str, text_path: Option<TextPath>) -> Result<Loaded> {
    let device = model::device(device)?;
    let ckpt = checkpoint::load(path)?;
    let fingerprint = ckpt.fingerprint()?;
    let model = LongClip::with_text_path(&ckpt, &device, DType::F32, text_path)?;
    Ok(Loaded { path: path.to_path_buf(), fingerprint, config: ckpt.config.clone(), model, device })
}

fn encoder<'a>(m: &'a Loaded, run: &RunArgs) -> Result<Encoder<'a>> {
    let dir = run.embeddings_cache.clone().unwrap_or_else(cache::default_dir);
    let cache = (!run.no_cache).then_some((dir.as_path(), m.fingerprint.as_str()));
    let mut enc = Encoder::new(&m.model, m.device.clone(), run.batch_size, cache)?;
    enc.progress = true;
    Ok(enc)
}

fn short_fingerprint(fp: &str) -> String {
    fp.chars().take(19).collect()
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let start = Instant::now();
    if CLASSIFICATION_DATASETS.contains(&args.data.dataset.as_str()) {
        return eval_classification(args, start);
    }
    let data = args.data.load()?;
    let m = load_model(&args.model, &args.run.device, args.run.text_path)?;
    let context = context_length(args.context_length, &m)?;
    let mut enc = encoder(&m, &args.run)?;
    let report = evaluate::evaluate_retrieval(&mut enc, &data, args.data.on_missing, context)?;
    let seconds = start.elapsed().as_secs_f64();
    let paper_model = paper_model(args.paper_model.as_deref(), &m.config)?;
    let paper = paper_model.map(|pm| reference::retrieval(pm, &data.name, &data.split)).unwrap_or_default();

    report_skipped(&report.skipped, data.images.len());
    if report.truncated > 0 {
        eprintln!("warning: {} captions were longer than {context} tokens and were cut (EOT kept)", report.truncated);
    }
    println!(
        "{} ({}): {} images, {} texts; model {} ({}{}), context {context}",
        data.name,
        data.split,
        report.n_images,
        report.n_texts,
        crate::term::path(&m.path),
        short_fingerprint(&m.fingerprint),
        family_note(&m)
    );
    print!("{}", recall_table(&report.scores, &paper));
    if let Some(range) = &report.tie_range {
        println!("{}", tie_note(range));
    }
    println!("{}", timing_line(seconds, &enc.timings, report.n_images, report.n_texts));

    let mut out = json!({
        "dataset": data.name,
        "split": data.split,
        "n_images": report.n_images,
        "n_texts": report.n_texts,
        "seconds": seconds,
        "model": m.path.display().to_string(),
        "fingerprint": m.fingerprint,
        "context_length": context,
        "truncated_texts": report.truncated,
        "skipped_images": report.skipped.len(),
        "skipped": report.skipped.iter().map(|(p, why)| json!({"image": p.display().to_string(), "reason": why})).collect::<Vec<_>>(),
        "timings": enc.timings,
        "paper": paper.iter().map(|p| json!({"model": p.model, "source": p.source, "values": p.values.iter().filter_map(|(k, v)| v.map(|v| (k.clone(), json!(v)))).collect::<serde_json::Map<_, _>>()})).collect::<Vec<_>>(),
    });
    add_family(&mut out, &m);
    add_scores(&mut out, &report.scores);
    if let Some(range) = &report.tie_range {
        out["ties"] = ties_json(range);
    }
    write_outputs(&out, args.json.as_deref(), args.csv.as_deref(), args.run.record.as_deref(), "eval", &m.device)
}

/// ", FG-CLIP long text path" for a model that is not Long-CLIP, else "".
fn family_note(m: &Loaded) -> String {
    match m.config.family {
        crate::family::Family::LongClip => String::new(),
        f => format!(", {f} {} text path", m.model.text_path),
    }
}

/// The family and text path of a model that is not Long-CLIP (Long-CLIP
/// outputs keep the fields they always had).
fn add_family(out: &mut Value, m: &Loaded) {
    if m.config.family != crate::family::Family::LongClip {
        out["family"] = json!(m.config.family.name());
        out["text_path"] = json!(m.model.text_path.to_string());
    }
}

/// Exact ties (identical captions or images) make some numbers depend on the
/// order ties are broken in: say by how much.
fn tie_note(range: &(RetrievalScores, RetrievalScores)) -> String {
    let (lo, hi) = (range.0.named(), range.1.named());
    let spans: Vec<String> = lo
        .iter()
        .zip(&hi)
        .filter(|(l, h)| l.1 != h.1)
        .map(|(l, h)| format!("{} {:.2}..{:.2}", l.0, l.1, h.1))
        .collect();
    format!("ties: some correct items tie exactly with others (identical captions or images); ours ranks ties by index, other orders would give {}", spans.join(", "))
}

fn ties_json(range: &(RetrievalScores, RetrievalScores)) -> Value {
    let mut low = json!({});
    let mut high = json!({});
    add_scores(&mut low, &range.0);
    add_scores(&mut high, &range.1);
    json!({"low": low, "high": high})
}

/// `--context-length`, checked against the model's positions.
fn context_length(flag: Option<usize>, m: &Loaded) -> Result<usize> {
    let positions = m.model.text.context_length();
    match flag {
        None => Ok(positions),
        Some(n) if (2..=positions).contains(&n) => Ok(n),
        Some(n) => bail!("--context-length {n}: the model has {positions} positions (use 2 to {positions})"),
    }
}

fn paper_model(flag: Option<&str>, config: &Config) -> Result<Option<&'static str>> {
    match flag {
        Some(name) => reference::parse_model(name),
        None => Ok(reference::model_family(config)),
    }
}

fn add_scores(out: &mut Value, s: &RetrievalScores) {
    for (k, v) in s.named() {
        out[k] = json!(v);
    }
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

fn cell(v: Option<f64>, width: usize) -> String {
    match v {
        Some(v) => format!("{v:>width$.2}"),
        None => format!("{:>width$}", "-"),
    }
}

/// Ours and the published rows, T2I then I2T.
fn recall_table(ours: &RetrievalScores, paper: &[reference::Published]) -> String {
    let names: Vec<String> = paper.iter().map(|p| format!("{} ({})", p.model, p.source)).collect();
    let w = names.iter().map(String::len).max().unwrap_or(4).max(4);
    let mut s = format!("{:w$}  {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7}\n", "", "T2I R@1", "R@5", "R@10", "I2T R@1", "R@5", "R@10");
    let row = |name: &str, get: &dyn Fn(&str) -> Option<f64>| {
        let v: Vec<String> = RetrievalScores::default().named().iter().map(|(k, _)| cell(get(k), 7)).collect();
        format!("{name:w$}  {} {} {}   {} {} {}\n", v[0], v[1], v[2], v[3], v[4], v[5])
    };
    let named = ours.named();
    s += &row("ours", &|k| named.iter().find(|(n, _)| *n == k).map(|(_, v)| *v));
    for (p, name) in paper.iter().zip(&names) {
        s += &row(name, &|k| p.get(k));
    }
    s
}

fn timing_line(seconds: f64, t: &Timings, n_images: usize, n_texts: usize) -> String {
    format!(
        "{seconds:.1} s in all: decode {:.1} s, image encode {:.1} s, text encode {:.1} s, search {:.2} s, hashing and cache {:.2} s; \
         reused {}/{n_images} images and {}/{n_texts} texts (from the cache, or equal ids met earlier in the run)",
        t.decode, t.image_encode, t.text_encode, t.search, t.cache, t.images_cached, t.texts_cached,
    )
}

fn eval_classification(args: EvalArgs, start: Instant) -> Result<()> {
    let name = args.data.dataset.as_str();
    let set = classes::load(name, &args.data.root)?;
    let templates = match &args.templates_file {
        Some(p) => read_lines(p)?,
        None => classes::imagenet_templates(),
    };
    let m = load_model(&args.model, &args.run.device, args.run.text_path)?;
    let context = context_length(args.context_length, &m)?;
    let mut enc = encoder(&m, &args.run)?;
    let report = evaluate::evaluate_classification(&mut enc, &set, &templates, args.data.on_missing, context)?;
    let seconds = start.elapsed().as_secs_f64();
    for (n, why) in report.skipped.iter().take(10) {
        eprintln!("skipped {}: {}", crate::term::escape_for_terminal(n), crate::term::escape_for_terminal(why));
    }
    let paper_model = paper_model(args.paper_model.as_deref(), &m.config)?;
    let paper = paper_model.map(|pm| reference::classification(pm, name)).unwrap_or_default();
    println!(
        "{name}: {} images, {} classes, {} prompts each; model {} ({})",
        report.n_images,
        report.n_classes,
        templates.len(),
        crate::term::path(&m.path),
        short_fingerprint(&m.fingerprint)
    );
    let names: Vec<String> = paper.iter().map(|p| format!("{} ({})", p.model, p.source)).collect();
    let w = names.iter().map(String::len).max().unwrap_or(4).max(4);
    println!("{:w$}  {:>7} {:>7}", "", "top-1", "top-5");
    println!("{:w$}  {} {}", "ours", cell(Some(report.accuracy.top1), 7), cell(Some(report.accuracy.top5), 7));
    for (p, n) in paper.iter().zip(&names) {
        println!("{n:w$}  {} {}", cell(p.get("top1"), 7), cell(p.get("top5"), 7));
    }
    println!("{}", timing_line(seconds, &enc.timings, report.n_images, report.n_classes * templates.len()));
    let out = json!({
        "dataset": name,
        "split": "test",
        "n_images": report.n_images,
        "n_classes": report.n_classes,
        "n_prompts": templates.len(),
        "top1": report.accuracy.top1,
        "top5": report.accuracy.top5,
        "seconds": seconds,
        "model": m.path.display().to_string(),
        "fingerprint": m.fingerprint,
        "skipped_images": report.skipped.len(),
        "timings": enc.timings,
    });
    write_outputs(&out, args.json.as_deref(), args.csv.as_deref(), args.run.record.as_deref(), "eval", &m.device)
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let lines: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
    if lines.is_empty() {
        bail!("{}: no lines", path.display());
    }
    Ok(lines)
}

/// JSON file, CSV file (flat scalar keys), and the results record.
fn write_outputs(out: &Value, json_path: Option<&Path>, csv_path: Option<&Path>, record: Option<&Path>, command: &str, device: &Device) -> Result<()> {
    if let Some(p) = json_path {
        export::write_atomic(p, format!("{}\n", serde_json::to_string_pretty(out)?).as_bytes())?;
        eprintln!("wrote {}", crate::term::path(&p));
    }
    if let Some(p) = csv_path {
        export::write_atomic(p, flat_csv(out).as_bytes())?;
        eprintln!("wrote {}", crate::term::path(&p));
    }
    if let Some(dir) = record {
        let path = append_record(dir, command, out, device)?;
        eprintln!("recorded in {}", crate::term::path(&path));
    }
    Ok(())
}

/// The object's scalar fields as a CSV header and one row.
fn flat_csv(out: &Value) -> String {
    let Some(map) = out.as_object() else { return String::new() };
    let scalars: Vec<(&String, String)> = map
        .iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k, s.clone())),
            Value::Number(n) => Some((k, n.to_string())),
            Value::Bool(b) => Some((k, b.to_string())),
            _ => None,
        })
        .collect();
    let quote = |s: &str| if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() };
    let header: Vec<String> = scalars.iter().map(|(k, _)| quote(k)).collect();
    let row: Vec<String> = scalars.iter().map(|(_, v)| quote(v)).collect();
    format!("{}\n{}\n", header.join(","), row.join(","))
}

fn append_record(dir: &Path, command: &str, out: &Value, device: &Device) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let path = dir.join("runs.jsonl");
    let record = json!({
        "date": crate::index::now_rfc3339(),
        "command": command,
        "machine": machine(device),
        "result": out,
    });
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("{}: cannot open", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(&record)?).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(path)
}

fn machine(device: &Device) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into());
    json!({
        "host": host,
        "cpu": cpu,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "device": if device.is_cpu() { "cpu".to_string() } else { format!("{device:?}") },
        "os": std::env::consts::OS,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "longclip": env!("CARGO_PKG_VERSION"),
    })
}


pub fn probe(args: ProbeArgs) -> Result<()> {
    let start = Instant::now();
    if args.lengths.is_empty() {
        bail!("--lengths is empty");
    }
    if args.lengths.contains(&0) {
        bail!("--lengths: a length of 0 cuts every caption to nothing");
    }
    if let Some(l) = args.lengths.iter().enumerate().find_map(|(i, l)| args.lengths[..i].contains(l).then_some(l)) {
        bail!("--lengths gives {l} twice");
    }
    if let Some(p) = &args.plot {
        let ext = p.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
        if ext != "svg" && ext != "png" {
            bail!("{}: the plot is written as .svg or .png", p.display());
        }
    }
    let data = args.data.load()?;
    let labels = model_labels(&args.model);
    let mut all_rows: Vec<(String, Vec<ProbeRow>)> = Vec::new();
    let mut records = Vec::new();
    let mut last_device = Device::Cpu;
    for (path, label) in args.model.iter().zip(&labels) {
        let m = load_model(path, &args.run.device, args.run.text_path)?;
        let context = m.model.text.context_length();
        if args.unit == Unit::Tokens {
            if let Some(&l) = args.lengths.iter().find(|&&l| l > context) {
                eprintln!("note: {} has {context} positions: lengths above it (e.g. {l}) are cut at {context}", crate::term::escape_for_terminal(label));
            }
        }
        let t0 = Instant::now();
        let mut enc = encoder(&m, &args.run)?;
        let (rows, images) = evaluate::probe(&mut enc, &data, &args.lengths, args.unit, args.data.on_missing)?;
        report_skipped(&images.skipped, data.images.len());
        println!(
            "probe by {} on {} ({}): {} images, {} texts; model {} ({})",
            unit_name(args.unit),
            data.name,
            data.split,
            images.data.images.len(),
            images.data.n_texts(),
            crate::term::path(&m.path),
            short_fingerprint(&m.fingerprint)
        );
        print!("{}", probe_table(&rows));
        for r in rows.iter().filter(|r| r.tie_range.is_some()) {
            println!("length {}: {}", r.length, tie_note(r.tie_range.as_ref().expect("filtered")));
        }
        println!("{}", timing_line(t0.elapsed().as_secs_f64(), &enc.timings, images.data.images.len(), images.data.n_texts() * args.lengths.len()));
        records.push(json!({
            "model": m.path.display().to_string(),
            "fingerprint": m.fingerprint,
            "n_images": images.data.images.len(),
            "n_texts": images.data.n_texts(),
            "timings": enc.timings,
        }));
        last_device = m.device.clone();
        all_rows.push((label.clone(), rows));
    }
    let rows: Vec<Value> = all_rows
        .iter()
        .zip(&args.model)
        .flat_map(|((_, rows), path)| {
            rows.iter().map(move |r| {
                let mut v = json!({"length": r.length, "model": path.display().to_string()});
                add_scores(&mut v, &r.scores);
                v["ceiling_t2i_r1"] = json!(r.ceiling.t2i_r1);
                v["ceiling_t2i_r5"] = json!(r.ceiling.t2i_r5);
                v["ceiling_t2i_r10"] = json!(r.ceiling.t2i_r10);
                if let Some(range) = &r.tie_range {
                    v["ties"] = ties_json(range);
                }
                v
            })
        })
        .collect();
    let out = json!({
        "unit": args.unit,
        "dataset": data.name,
        "split": data.split,
        "seconds": start.elapsed().as_secs_f64(),
        "models": records,
        "rows": rows,
    });
    if let Some(p) = &args.plot {
        probe_chart(&all_rows, args.unit, &data).save(p)?;
        eprintln!("wrote {}", crate::term::path(&p));
    }
    if let Some(p) = &args.csv {
        export::write_atomic(p, probe_csv(&rows).as_bytes())?;
        eprintln!("wrote {}", crate::term::path(&p));
    }
    write_outputs(&out, args.json.as_deref(), None, args.run.record.as_deref(), "probe", &last_device)
}

fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::Tokens => "tokens",
        Unit::Words => "words",
    }
}

/// File stems (the folder's name for generic stems such as "model"), or
/// whole paths where two are equal.
fn model_labels(paths: &[PathBuf]) -> Vec<String> {
    let name = |p: &PathBuf| {
        let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
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

fn probe_table(rows: &[ProbeRow]) -> String {
    let mut s = format!(
        "{:>6}  {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7}   {:>8}\n",
        "length", "T2I R@1", "R@5", "R@10", "I2T R@1", "R@5", "R@10", "ceiling"
    );
    for r in rows {
        let v: Vec<String> = r.scores.named().iter().map(|(_, v)| cell(Some(*v), 7)).collect();
        let mark = if r.tie_range.is_some() { "  (ties)" } else { "" };
        let ceiling = cell(Some(r.ceiling.t2i_r1), 8);
        s += &format!("{:>6}  {} {} {}   {} {} {}   {ceiling}{mark}\n", r.length, v[0], v[1], v[2], v[3], v[4], v[5]);
    }
    s += "ceiling: the T2I R@1 a perfect reader of the cut captions could reach (captions cut to equal ids cannot tell their images apart)\n";
    s
}

fn probe_csv(rows: &[Value]) -> String {
    let keys = ["model", "length", "t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "ceiling_t2i_r1", "ceiling_t2i_r5", "ceiling_t2i_r10"];
    let mut s = keys.join(",") + "\n";
    for r in rows {
        let v: Vec<String> = keys.iter().map(|k| match &r[*k] {
            Value::String(s) if s.contains([',', '"']) => format!("\"{}\"", s.replace('"', "\"\"")),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }).collect();
        s += &(v.join(",") + "\n");
    }
    s
}

fn probe_chart(all: &[(String, Vec<ProbeRow>)], unit: Unit, data: &Dataset) -> Chart {
    let mut series = Vec::new();
    for (i, (label, rows)) in all.iter().enumerate() {
        let points = |f: fn(&RetrievalScores) -> f64| rows.iter().map(|r| (r.length as f64, f(&r.scores))).collect();
        series.push(Series { label: format!("{label} T2I"), color: i, dashed: false, points: points(|s| s.t2i_r1) });
        series.push(Series { label: format!("{label} I2T"), color: i, dashed: true, points: points(|s| s.i2t_r1) });
    }
    // The ceiling depends on the captions only: one line for every model.
    if let Some((_, rows)) = all.first() {
        let points = rows.iter().map(|r| (r.length as f64, r.ceiling.t2i_r1)).collect();
        series.push(Series { label: "perfect reader T2I".into(), color: all.len(), dashed: true, points });
    }
    // 77 words is no limit of anything: the mark is for tokens only.
    let marker = match unit {
        Unit::Tokens => Some((77.0, "77 tokens (CLIP's limit)".to_string())),
        Unit::Words => None,
    };
    Chart {
        title: format!("R@1 by caption length, {} ({}, {} pairs)", data.name, data.split, data.n_texts()),
        x_label: format!("caption cut to N {}", unit_name(unit)),
        y_label: "R@1 (%)".into(),
        series,
        marker,
    }
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
    let m = load_model(&args.model, &args.device, None)?;
    let mut enc = Encoder::new(&m.model, m.device.clone(), args.batch_size, None)?;
    enc.progress = true;
    let classes = evaluate::class_embeddings(&mut enc, &labels, &args.templates, m.model.text.context_length())?;
    let refs: Vec<ImageRef> = paths.iter().cloned().map(ImageRef::File).collect();
    let images = enc.embed_images(&refs)?;
    for (i, why) in &images.failed {
        eprintln!("skipped {}: {}", crate::term::path(&paths[*i]), crate::term::escape_for_terminal(why));
    }
    let logits = (images.features.matmul(&classes.t()?)? * (m.model.logit_scale as f64).exp())?;
    let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
    let top = args.top.clamp(1, labels.len());
    let mut results = Vec::new();
    for (&i, p) in images.kept.iter().zip(&probs) {
        let mut order: Vec<usize> = (0..labels.len()).collect();
        // Ties: the earlier label first, as in the metrics.
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let best: Vec<(String, f32)> = order[..top].iter().map(|&c| (labels[c].clone(), p[c])).collect();
        let shown: Vec<String> = best.iter().map(|(l, p)| format!("{l} {:.1}%", 100.0 * p)).collect();
        println!("{}\t{}", crate::term::path(&paths[i]), crate::term::escape_for_terminal(&shown.join(", ")));
        results.push(json!({"image": paths[i].display().to_string(), "labels": best.iter().map(|(l, p)| json!({"label": l, "probability": p})).collect::<Vec<_>>()}));
    }
    if let Some(p) = &args.json {
        export::write_atomic(p, serde_json::to_string_pretty(&json!({"model": m.path.display().to_string(), "templates": args.templates, "results": results}))?.as_bytes())?;
        eprintln!("wrote {}", crate::term::path(&p));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_of_flat_fields() {
        let v = json!({"dataset": "a,b", "n": 3, "nested": {"x": 1}});
        assert_eq!(flat_csv(&v), "dataset,n\n\"a,b\",3\n");
    }

    #[test]
    fn labels_are_stems_unless_ambiguous() {
        let l = model_labels(&["a/clip.pt".into(), "b/long.pt".into()]);
        assert_eq!(l, ["clip", "long"]);
        let l = model_labels(&["a/model.pt".into(), "b/model.pt".into()]);
        assert_eq!(l, ["a", "b"]);
        let l = model_labels(&["a/model.pt".into(), "a/model.safetensors".into()]);
        assert_eq!(l, ["a/model.pt", "a/model.safetensors"]);
    }
}
