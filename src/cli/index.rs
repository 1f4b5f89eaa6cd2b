//! `longclip index ...`, `longclip search` and `longclip serve`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use crate::checkpoint;
use crate::embed;
use crate::family::TextPath;
use crate::index::{self, BuildOptions, Dtype, HnswParams, ImportOptions, Index, MergePolicy, Selection, Shard};
use crate::model::{self, LongClip, Towers};
use crate::search::{self, QueryEncoder};
use crate::serve;

#[derive(Args)]
pub struct IndexArgs {
    #[command(subcommand)]
    command: IndexCommand,
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Embed a folder of images into a new index (resumes an interrupted build).
    Build(BuildArgs),
    /// Embed the files that are new or changed (size or mtime) since the index was built.
    Add(AddArgs),
    /// Delete entries by id or path, or those whose files are gone (deletion bitmaps; optimize drops the rows).
    Remove(RemoveArgs),
    /// Make an index from embeddings computed elsewhere (.npy [N, D] + N ids, or clip-retrieval's output folder), without a model.
    Import(ImportArgs),
    /// The manifest, the number of entries and the skipped files with reasons.
    Info {
        #[arg(long)]
        index: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write clip-retrieval's layout (img_emb/img_emb_0.npy, metadata/metadata_0.parquet: image_path, id, caption) for FAISS/autofaiss.
    Export {
        #[arg(long)]
        index: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Merge segments (reusing the stored vectors) down to --max-segments and drop deleted rows.
    Optimize {
        #[arg(long)]
        index: PathBuf,
        #[arg(long, default_value_t = 1)]
        max_segments: usize,
    },
    /// Adopt the segments of other indexes (e.g. `build --shard` parts) built with the same model.
    Merge {
        /// Source indexes (left as they are).
        #[arg(required = true)]
        sources: Vec<PathBuf>,
        /// The destination index (created if missing).
        #[arg(long)]
        into: PathBuf,
        #[command(flatten)]
        merge: MergeArgs,
    },
    /// Convert a format-1 index (before segments) to the current format, without re-embedding.
    Upgrade {
        #[arg(long)]
        index: PathBuf,
    },
}

#[derive(Args)]
struct MergeArgs {
    /// Leave the segments as written (no automatic tiered merges).
    #[arg(long)]
    no_merge: bool,
}

impl MergeArgs {
    fn policy(&self) -> Option<MergePolicy> {
        (!self.no_merge).then(MergePolicy::default)
    }
}

#[derive(Args)]
struct GraphArgs {
    /// Do not build an HNSW graph (searches are always exact scans).
    #[arg(long)]
    no_hnsw: bool,
    /// HNSW neighbours per node.
    #[arg(long, default_value_t = HnswParams::default().m, value_parser = positive)]
    hnsw_m: usize,
    #[arg(long, default_value_t = HnswParams::default().ef_construction, value_parser = positive)]
    ef_construction: usize,
    /// The default search beam recorded in the manifest.
    #[arg(long, default_value_t = HnswParams::default().ef_search, value_parser = positive)]
    ef_search: usize,
}

impl GraphArgs {
    fn params(&self) -> Option<HnswParams> {
        (!self.no_hnsw).then_some(HnswParams { m: self.hnsw_m, ef_construction: self.ef_construction, ef_search: self.ef_search })
    }
}

#[derive(Args)]
struct BuildArgs {
    #[arg(long)]
    model: PathBuf,
    /// A folder, searched recursively (jpg, jpeg, png, webp, gif, bmp, tif, tiff, any case).
    #[arg(long)]
    images: PathBuf,
    /// The index directory to create (or resume).
    #[arg(long)]
    index: PathBuf,
    /// Storage of the embedding matrix: f16 (half the size; the default) or f32.
    #[arg(long)]
    dtype: Option<String>,
    #[command(flatten)]
    graph: GraphArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Images per segment: each is committed (and kept by a resumed build) when full.
    #[arg(long, default_value_t = index::DEFAULT_SEGMENT_ROWS, value_parser = positive)]
    segment_rows: usize,
    /// Embed only the I-th of N parts of the sorted file list (file number % N == I), e.g. 0/4.
    #[arg(long)]
    shard: Option<String>,
    #[command(flatten)]
    merge: MergeArgs,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, default_value_t = 32, value_parser = positive)]
    batch_size: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// What the image tower computes in: f32 (exact; the default for a
    /// build), bf16, or int8 (CPU only; faster, for large photo libraries:
    /// rankings can move, see docs/cpu.md). Recorded in the manifest; `add`
    /// defaults to what the index recorded (f32 once it mixes dtypes).
    #[arg(long)]
    compute_dtype: Option<String>,
    /// Images per saved chunk: the most an interrupted build has to redo.
    #[arg(long, default_value_t = 256, value_parser = positive)]
    chunk_size: usize,
}

#[derive(Args)]
struct AddArgs {
    #[arg(long)]
    index: PathBuf,
    /// Defaults to the checkpoint recorded in the manifest.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Defaults to the folder the index was built from.
    #[arg(long)]
    images: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    merge: MergeArgs,
}

#[derive(Args)]
struct RemoveArgs {
    #[arg(long)]
    index: PathBuf,
    /// Entry ids (as search prints them); repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    id: Vec<u64>,
    /// Paths as stored, or any path to the same file; repeatable.
    #[arg(long)]
    path: Vec<String>,
    /// Entries whose files no longer exist.
    #[arg(long)]
    missing: bool,
}

#[derive(Args)]
struct ImportArgs {
    /// A 2-D .npy of float16/32/64 rows (normalized on import).
    #[arg(long, required_unless_present = "clip_retrieval", requires = "ids")]
    embeddings: Option<PathBuf>,
    /// One id (path, URL, ...) per line, row order; `id<TAB>caption` keeps a caption.
    #[arg(long, requires = "embeddings")]
    ids: Option<PathBuf>,
    /// clip-retrieval's output folder instead: img_emb/img_emb_{i}.npy (float16/32) and
    /// metadata/metadata_{i}.parquet (image_path: the id; caption if present), paired by i;
    /// each partition becomes a segment. text_emb/ (text embeddings) is ignored.
    #[arg(long, conflicts_with_all = ["embeddings", "ids"], value_name = "DIR")]
    clip_retrieval: Option<PathBuf>,
    #[arg(long)]
    index: PathBuf,
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// The model that made the embeddings: recorded so searches can check it.
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    graph: GraphArgs,
    /// Add the rows to an existing index as new segments.
    #[arg(long)]
    append: bool,
    /// Rows per segment written.
    #[arg(long, default_value_t = index::DEFAULT_SEGMENT_ROWS, value_parser = positive)]
    segment_rows: usize,
    #[command(flatten)]
    merge: MergeArgs,
}

#[derive(Args)]
pub struct SearchArgs {
    #[arg(long)]
    index: PathBuf,
    #[arg(long, group = "query")]
    text: Option<String>,
    /// A file holding one (long) query.
    #[arg(long, group = "query")]
    text_file: Option<PathBuf>,
    #[arg(long, group = "query")]
    image: Option<PathBuf>,
    /// Images like the entry with this id (its stored embedding; no model needed).
    #[arg(long, group = "query")]
    like: Option<u64>,
    /// Many queries (.txt one per line, .json, .jsonl): writes JSONL, one line per query.
    #[arg(long, group = "query")]
    queries: Option<PathBuf>,
    /// Query vectors made elsewhere: a 2-D .npy [N, D] (float16/32/64); writes JSONL, one line per row. No model needed.
    #[arg(long, group = "query")]
    vectors: Option<PathBuf>,
    /// Where --queries or --vectors write their JSONL (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// Scan every vector even when the index has an HNSW graph.
    #[arg(long, conflicts_with = "ef")]
    exact: bool,
    /// HNSW search beam (uses the graph whatever the index size).
    #[arg(long, value_parser = positive)]
    ef: Option<usize>,
    #[arg(long)]
    json: bool,
    /// Defaults to the checkpoint recorded in the manifest.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// FG-CLIP's text encoder for text queries: long (the default) or short (77 positions).
    #[arg(long, value_enum)]
    text_path: Option<TextPath>,
}

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long)]
    index: PathBuf,
    /// Defaults to the checkpoint recorded in the manifest.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// "1 segment", "2 segments"; `words` is "segment" or "entry/entries".
pub(super) fn count(n: usize, words: &str) -> String {
    let (one, many) = match words.split_once('/') {
        Some((one, many)) => (one.to_string(), many.to_string()),
        None => (words.to_string(), format!("{words}s")),
    };
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A count that must be at least 1.
fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(e) => Err(format!("not a whole number: {e}")),
    }
}

pub fn run_index(args: IndexArgs) -> Result<()> {
    match args.command {
        IndexCommand::Build(a) => build(a),
        IndexCommand::Add(a) => add(a),
        IndexCommand::Remove(a) => remove(a),
        IndexCommand::Import(a) => import(a),
        IndexCommand::Info { index, json } => info(&index, json),
        IndexCommand::Optimize { index, max_segments } => {
            let r = index::optimize(&index, max_segments, true)?;
            eprintln!("merged {} ({} rows, {} deleted rows dropped) in {:.2} s -> {}: {}", count(r.segments_merged, "segment"), r.rows, r.dropped, r.seconds, crate::term::path(&index), count(r.segments, "segment"));
            Ok(())
        }
        IndexCommand::Merge { sources, into, merge } => {
            let r = index::merge_indexes(&sources, &into, merge.policy().as_ref(), true)?;
            eprintln!("adopted {} ({} rows) from {} in {:.2} s ({:.0} rows/s) -> {}: {}", count(r.segments_merged, "segment"), r.rows, count(sources.len(), "index/indexes"), r.seconds, r.rows as f64 / r.seconds.max(1e-9), crate::term::path(&into), count(r.segments, "segment"));
            Ok(())
        }
        IndexCommand::Upgrade { index } => {
            let start = Instant::now();
            let was = index::read_manifest(&index).is_ok();
            let m = index::upgrade(&index, true)?;
            if was {
                eprintln!("{}: already format v{}; nothing to do", crate::term::path(&index), m.format_version);
            } else {
                eprintln!("{}: upgraded to format v{}: {}, {} ({:.2} s)", crate::term::path(&index), m.format_version, count(m.segments.len(), "segment"), count(m.count, "entry/entries"), start.elapsed().as_secs_f64());
            }
            Ok(())
        }
        IndexCommand::Export { index, out } => {
            let index = Index::open(&index)?;
            index::export(&index, &out)?;
            eprintln!("wrote {} ({} rows, {}) -> {}", "img_emb/img_emb_0.npy + metadata/metadata_0.parquet", index.len(), index.manifest.dtype.name(), crate::term::path(&out));
            Ok(())
        }
    }
}

/// The model in `run.compute_dtype`, else in `default` (f32, or an index's own).
fn load_model(path: &Path, run: &RunArgs, default: &str) -> Result<(LongClip, candle_core::Device, index::ModelInfo)> {
    let dtype = run.compute_dtype.as_deref().unwrap_or(default);
    let (device, precision) = model::device_and_precision(&run.device, dtype)?;
    let ckpt = checkpoint::load(path)?;
    let info = search::model_info(&ckpt, path)?;
    // Indexing embeds images only.
    let model = LongClip::with_towers(&ckpt, &device, precision, None, Towers::Vision)?;
    Ok((model, device, info))
}

fn build(a: BuildArgs) -> Result<()> {
    let dtype = Dtype::parse(a.dtype.as_deref().unwrap_or("f16"))?;
    if !a.images.is_dir() {
        bail!("{}: not a folder of images", a.images.display());
    }
    if let Ok(m) = index::read_manifest(&a.index) {
        let given = a.images.canonicalize().ok().map(|p| p.display().to_string());
        if m.root.is_some() && given != m.root {
            eprintln!(
                "warning: {}: the index was built from {}; files of {} are added with absolute paths, and `index add` keeps looking at the first folder",
                crate::term::path(&a.index),
                crate::term::escape_for_terminal(m.root.as_deref().unwrap_or("?")),
                crate::term::path(&a.images)
            );
        }
        if let (Some(s), None) = (m.shard, &a.shard) {
            eprintln!("{}: continuing shard {}/{} of the folder", crate::term::path(&a.index), s.index, s.count);
        }
        if a.dtype.is_some() && dtype != m.dtype {
            eprintln!("warning: {}: the index stores {}; --dtype {} applies to new indexes only", crate::term::path(&a.index), m.dtype.name(), dtype.name());
        }
        if a.graph.params() != m.hnsw {
            eprintln!("warning: {}: the index keeps its HNSW setting ({}); the graph options apply to new indexes only", crate::term::path(&a.index), m.hnsw.map_or("none".into(), |h| format!("M {}, ef_construction {}", h.m, h.ef_construction)));
        }
    }
    let (model, device, info) = load_model(&a.model, &a.run, "f32")?;
    let opts = BuildOptions {
        images: Some(a.images.clone()),
        dtype,
        hnsw: a.graph.params(),
        batch_size: a.run.batch_size,
        chunk_size: a.run.chunk_size,
        progress: true,
        require_existing: false,
        segment_rows: a.segment_rows,
        shard: a.shard.as_deref().map(Shard::parse).transpose()?,
        merge: a.merge.policy(),
    };
    let report = index::build(&a.index, &model, &device, &info, &opts)?;
    summarize(&a.index, &report, &model)
}

fn add(a: AddArgs) -> Result<()> {
    let manifest = index::read_manifest(&a.index)?;
    let model_path = match (&a.model, &manifest.model.path) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => bail!("{}: the index does not record its model: give --model", a.index.display()),
    };
    // An index embedded in one dtype keeps it; a mixed one gets f32.
    let recorded = if manifest.compute_dtype().contains('+') { "f32" } else { manifest.compute_dtype() };
    let (model, device, info) = load_model(&model_path, &a.run, recorded)?;
    let opts = BuildOptions {
        images: a.images.clone(),
        dtype: manifest.dtype,
        hnsw: None,
        batch_size: a.run.batch_size,
        chunk_size: a.run.chunk_size,
        progress: true,
        require_existing: true,
        segment_rows: manifest.segment_rows,
        shard: manifest.shard,
        merge: a.merge.policy(),
    };
    let report = index::build(&a.index, &model, &device, &info, &opts)?;
    summarize(&a.index, &report, &model)
}

fn summarize(dir: &Path, r: &index::BuildReport, model: &LongClip) -> Result<()> {
    let done = r.embedded + r.resumed;
    let rate = r.embedded as f64 / r.seconds.max(1e-9);
    eprintln!(
        "embedded {} images ({} this run, {} resumed, {}), skipped {}, unchanged {} in {:.2} s ({rate:.1} images/s) -> {}: {} entries in {}, {} skipped in all",
        done,
        r.embedded,
        r.resumed,
        model.precision,
        r.skipped,
        r.unchanged,
        r.seconds,
        crate::term::path(&dir),
        r.count,
        count(r.segments, "segment"),
        r.skipped_total
    );
    if !r.committed {
        eprintln!("the index is up to date");
    }
    if let Some(mix) = &r.mixed_compute_dtype {
        eprintln!(
            "warning: {}: the index now holds embeddings computed in {mix}, more than one dtype (this run: {}); `index info` and `search` show the mix",
            crate::term::path(dir),
            model.precision
        );
    }
    if r.count == 0 && r.files == 0 && r.skipped_total == 0 {
        eprintln!("{}: this shard holds none of the folder's images (an empty index; it merges like any other)", crate::term::path(&dir));
        return Ok(());
    }
    if r.count == 0 {
        bail!("{}: no image could be embedded; see `longclip index info --index {}` for the reasons", dir.display(), dir.display());
    }
    Ok(())
}

fn remove(a: RemoveArgs) -> Result<()> {
    if a.id.is_empty() && a.path.is_empty() && !a.missing {
        bail!("give --id, --path or --missing");
    }
    let selection = Selection { ids: a.id, paths: a.path, missing: a.missing };
    let report = index::remove(&a.index, &selection, true)?;
    for what in &report.not_found {
        eprintln!("warning: {}: not in the index", crate::term::escape_for_terminal(what));
    }
    eprintln!("removed {} in {:.3} s -> {}: {}", count(report.removed, "entry/entries"), report.seconds, crate::term::path(&a.index), count(report.count, "entry/entries"));
    Ok(())
}

fn import(a: ImportArgs) -> Result<()> {
    let model = match &a.model {
        Some(p) => Some(search::model_info(&checkpoint::load(p)?, p)?),
        None => None,
    };
    let start = Instant::now();
    let before_next = index::read_manifest(&a.index).map_or(0, |m| m.next_id);
    if let (true, Ok(m)) = (a.append, index::read_manifest(&a.index)) {
        if a.graph.params() != m.hnsw {
            eprintln!("warning: {}: the index keeps its HNSW setting for new segments; the graph options apply to new indexes only", crate::term::path(&a.index));
        }
    }
    // Clap makes sure there is a folder or both files.
    let (embeddings, ids) = match (&a.clip_retrieval, &a.embeddings, &a.ids) {
        (Some(dir), _, _) => (dir.clone(), dir.clone()),
        (None, Some(e), Some(i)) => (e.clone(), i.clone()),
        _ => anyhow::bail!("give --embeddings and --ids, or --clip-retrieval DIR"),
    };
    let opts = ImportOptions {
        embeddings,
        ids,
        dtype: Dtype::parse(&a.dtype)?,
        hnsw: a.graph.params(),
        model,
        progress: true,
        append: a.append,
        segment_rows: a.segment_rows,
        merge: a.merge.policy(),
    };
    let m = match &a.clip_retrieval {
        Some(dir) => index::import_clip_retrieval(&a.index, dir, &opts)?,
        None => index::import(&a.index, &opts)?,
    };
    let secs = start.elapsed().as_secs_f64();
    eprintln!("imported {} of {} dimensions in {secs:.2} s -> {}: {} in {}", count((m.next_id - before_next) as usize, "row"), m.dim, crate::term::path(&a.index), count(m.count, "entry/entries"), count(m.segments.len(), "segment"));
    Ok(())
}

fn info(dir: &Path, json: bool) -> Result<()> {
    let index = Index::open(dir)?;
    let m = &index.manifest;
    let skipped = index.skipped()?;
    if json {
        let skipped: Vec<serde_json::Value> = skipped.iter().map(|s| serde_json::json!({ "path": s.path, "reason": s.reason })).collect();
        let value = serde_json::json!({
            "index": dir.display().to_string(),
            "count": m.count,
            "dim": m.dim,
            "dtype": m.dtype,
            "compute_dtype": m.compute_dtype(),
            "model": m.model,
            "root": m.root,
            "created": m.created,
            "updated": m.updated,
            "format_version": m.format_version,
            "generation": m.generation,
            "shard": m.shard,
            "unfinished_build": dir.join(index::STAGING_DIR).exists(),
            "hnsw": m.hnsw,
            "segments": segments_json(&index),
            "skipped": skipped,
            "manifest": m,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("index       {}", crate::term::path(&dir));
    println!("format      {} v{} (generation {})", m.format, m.format_version, m.generation);
    println!("entries     {}", m.count);
    println!("embeddings  {} x {} {}", m.count, m.dim, m.dtype_summary());
    println!("model       {}", crate::term::escape_for_terminal(m.model.path.as_deref().unwrap_or("(not recorded: imported)")));
    println!("fingerprint {}", m.model.fingerprint.as_deref().unwrap_or("-"));
    println!("root        {}", crate::term::escape_for_terminal(m.root.as_deref().unwrap_or("-")));
    println!("created     {}", m.created);
    println!("updated     {}", m.updated);
    match &m.hnsw {
        Some(h) => println!("hnsw        M {}, ef_construction {}, ef_search {} (one graph per segment)", h.m, h.ef_construction, h.ef_search),
        None => println!("hnsw        none (exact search only)"),
    }
    if let Some(s) = &m.shard {
        println!("shard       {}/{} (files numbered % {} == {})", s.index, s.count, s.count, s.index);
    }
    println!("segments    {}", m.segments.len());
    for seg in &m.segments {
        let graph = seg.hnsw.as_ref().map_or("no graph".to_string(), |h| format!("graph built in {:.1} s", h.build_seconds));
        println!("  {}  {} rows, {} deleted, {}, {graph}", seg.name, seg.rows, seg.deleted, seg.dtype.name());
    }
    if dir.join(index::STAGING_DIR).exists() {
        println!("staging     an unfinished build or add (rerun it to finish; `index merge` refuses this index until then)");
    }
    println!("skipped     {}", skipped.len());
    for s in &skipped {
        println!("  {}: {}", crate::term::escape_for_terminal(&s.path), crate::term::escape_for_terminal(&s.reason));
    }
    Ok(())
}

/// `index info --json`'s `segments`: [{name, rows, deleted, dtype, hnsw}].
fn segments_json(index: &Index) -> serde_json::Value {
    index.manifest.segments.iter().map(|s| serde_json::json!({ "name": s.name, "rows": s.rows, "deleted": s.deleted, "dtype": s.dtype, "hnsw": s.hnsw.is_some() })).collect()
}

pub fn run_search(a: SearchArgs) -> Result<()> {
    if a.k == 0 || a.k > search::MAX_K {
        bail!("-k must be between 1 and {}", search::MAX_K);
    }
    let index = Index::open(&a.index)?;
    let opts = search::Options { k: a.k, exact: a.exact, ef: a.ef };
    if a.ef.is_some() && index.segments().iter().all(|s| s.meta.hnsw.is_none()) {
        eprintln!("warning: {}: the index has no HNSW graph (built with --no-hnsw): --ef is ignored, the search is exact", crate::term::path(&a.index));
    }
    if let Some(id) = a.like {
        let row = index.row_of_id(id).with_context(|| format!("{}: no entry with id {id}", a.index.display()))?;
        let start = Instant::now();
        let hits = search::search(&index, &[index.row_vec(row)], &opts)?;
        if !a.json {
            eprintln!("searched {} vectors ({}) in {:.1} ms", index.len(), search::summary(&index, &opts), start.elapsed().as_secs_f64() * 1000.0);
        }
        return print_hits(&hits[0], a.json);
    }
    if let Some(path) = &a.vectors {
        return vector_batch(&index, path, a.out.as_deref(), &opts);
    }
    if a.out.is_some() && a.queries.is_none() {
        bail!("--out goes with --queries or --vectors");
    }
    // One kind of query: load only the tower it needs.
    let towers = match (&a.text, &a.text_file, &a.image) {
        (None, None, Some(p)) if a.queries.is_none() => {
            if !p.exists() {
                bail!("{}: no such file (--image)", p.display());
            }
            Towers::Vision
        }
        _ => Towers::Text,
    };
    let encoder = QueryEncoder::for_index_with_towers(&index, a.model.as_deref(), &a.device, a.text_path, towers)?;
    let ctx = encoder.model.text.context_length();
    if let Some(path) = &a.queries {
        return batch(&index, &encoder, path, a.out.as_deref(), &opts, ctx);
    }
    let query = match (&a.text, &a.text_file, &a.image) {
        (Some(t), _, _) => text_query(&encoder, t, ctx)?,
        (_, Some(f), _) => {
            let t = std::fs::read_to_string(f).with_context(|| format!("{}: cannot read", f.display()))?;
            text_query(&encoder, t.trim(), ctx)?
        }
        (_, _, Some(p)) => encoder.image_path(p)?,
        _ => bail!("give --text, --text-file, --image, --like, --queries or --vectors"),
    };
    let start = Instant::now();
    let hits = search::search(&index, &[query.vector], &opts)?;
    if !a.json {
        eprintln!("searched {} vectors ({}) in {:.1} ms", index.len(), search::summary(&index, &opts), start.elapsed().as_secs_f64() * 1000.0);
    }
    print_hits(&hits[0], a.json)
}

fn text_query(encoder: &QueryEncoder, text: &str, ctx: usize) -> Result<search::Query> {
    if text.trim().is_empty() {
        bail!("the query is empty");
    }
    let q = encoder.text(text)?;
    if q.truncated {
        eprintln!("warning: the query is longer than {ctx} tokens and was truncated to its first {ctx} (Long-CLIP's context)");
    }
    Ok(q)
}

fn print_hits(hits: &[search::Hit], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(hits)?);
        return Ok(());
    }
    println!("{:>4}  {:>7}  {:>8}  path", "rank", "score", "id");
    for h in hits {
        println!("{:>4}  {:>7.4}  {:>8}  {}", h.rank, h.score, h.id, crate::term::escape_for_terminal(&h.path));
    }
    Ok(())
}

/// `--queries`: encodes in batches, searches them all at once, writes JSONL.
fn batch(index: &Index, encoder: &QueryEncoder, path: &Path, out: Option<&Path>, opts: &search::Options, ctx: usize) -> Result<()> {
    let texts = embed::read_texts(path)?;
    if texts.is_empty() {
        bail!("{}: no queries", path.display());
    }
    let mut texts = texts;
    while texts.last().is_some_and(|t| t.trim().is_empty()) {
        texts.pop(); // a file may end in blank lines
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        bail!("{}: query {} of {} is empty", path.display(), i + 1, texts.len());
    }
    let start = Instant::now();
    let queries = encoder.texts(&texts)?;
    let encoded = start.elapsed().as_secs_f64();
    let truncated: Vec<usize> = queries.iter().enumerate().filter(|(_, q)| q.truncated).map(|(i, _)| i).collect();
    let vectors: Vec<Vec<f32>> = queries.into_iter().map(|q| q.vector).collect();
    let hits = search::search(index, &vectors, opts)?;
    let mut lines = Vec::new();
    for (i, (text, h)) in texts.iter().zip(&hits).enumerate() {
        let line = serde_json::json!({ "query": text, "index": i, "truncated": truncated.contains(&i), "results": h });
        serde_json::to_writer(&mut lines, &line)?;
        lines.push(b'\n');
    }
    match out {
        Some(p) => crate::export::write_atomic(p, &lines)?,
        None => std::io::stdout().write_all(&lines)?,
    }
    let total = start.elapsed().as_secs_f64();
    eprintln!(
        "{} queries in {total:.2} s (encoding {encoded:.2} s, search {:.3} s, {:.0} queries/s searched, {})",
        texts.len(),
        total - encoded,
        texts.len() as f64 / (total - encoded).max(1e-9),
        search::summary(index, opts)
    );
    if !truncated.is_empty() {
        eprintln!("warning: {} queries were longer than {ctx} tokens and were truncated", truncated.len());
    }
    Ok(())
}

/// `--vectors`: every row of a .npy searched in one call, JSONL out,
/// elapsed time and QPS on standard error.
fn vector_batch(index: &Index, path: &Path, out: Option<&Path>, opts: &search::Options) -> Result<()> {
    let (rows, cols, data) = index::read_npy(path)?;
    if rows == 0 {
        bail!("{}: no query vectors", path.display());
    }
    if cols != index.dim() {
        bail!("{}: query vectors have {cols} dimensions, the index {} (row 0)", path.display(), index.dim());
    }
    let mut queries: Vec<Vec<f32>> = data.chunks_exact(cols).map(<[f32]>::to_vec).collect();
    search::check_queries(index, &queries).with_context(|| path.display().to_string())?;
    for q in &mut queries {
        let norm = q.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt();
        q.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
    }
    let start = Instant::now();
    let hits = search::search(index, &queries, opts)?;
    let secs = start.elapsed().as_secs_f64();
    let mut lines = Vec::new();
    for (i, h) in hits.iter().enumerate() {
        serde_json::to_writer(&mut lines, &serde_json::json!({ "index": i, "results": h }))?;
        lines.push(b'\n');
    }
    match out {
        Some(p) => crate::export::write_atomic(p, &lines)?,
        None => std::io::stdout().write_all(&lines)?,
    }
    eprintln!("{rows} query vectors searched over {} vectors ({}) in {secs:.3} s ({:.0} QPS)", index.len(), search::summary(index, opts), rows as f64 / secs.max(1e-9));
    Ok(())
}

pub fn run_serve(a: ServeArgs) -> Result<()> {
    let index = Index::open(&a.index)?;
    let recorded_gone = a.model.is_none() && index.manifest.model.path.as_deref().is_some_and(|p| !Path::new(p).exists());
    let encoder = if a.model.is_none() && index.manifest.model.path.is_none() {
        eprintln!("warning: the index records no model and no --model was given: only like=ID searches will work");
        None
    } else if recorded_gone {
        eprintln!(
            "warning: the index's model {} is not there any more (give --model): only like=ID searches will work",
            crate::term::escape_for_terminal(index.manifest.model.path.as_deref().unwrap_or("?"))
        );
        None
    } else {
        Some(QueryEncoder::for_index(&index, a.model.as_deref(), &a.device)?)
    };
    eprintln!("serving {} ({} images); Ctrl-C stops", crate::term::path(&a.index), index.len());
    drop(index);
    serve::run(serve::AppState { index: index::LiveIndex::open(&a.index)?, encoder }, &a.addr)
}
