//! Building and updating an index from a folder of images, resumably, one
//! segment at a time.
//!
//! Work is saved in `DIR/staging/` as it goes: every chunk of images
//! (embedded or skipped) becomes `chunk-N.f32` + `chunk-N.json`, the JSON
//! renamed into place last. Every `segment_rows` images the staged chunks
//! become a segment and a manifest commit, so a long build keeps its
//! finished segments. A build that dies (kill -9, power loss, disk full) is
//! rerun with the same command: it lists the folder again, leaves out every
//! file already in the index or in a finished chunk, embeds the rest, and
//! ends with every image exactly once.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Instant, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::commit::{start_writing, Change};
use super::deletes::Deletes;
use super::hnsw::HnswParams;
use super::lock::{lock_existing, lock_new};
use super::manifest::Manifest;
use super::merge::{merge_locked, MergePolicy};
use super::{Dtype, Entry, Index, ModelInfo, Skipped, MANIFEST, STAGING_DIR};
use crate::embed::Embedder;
use crate::model::LongClip;
use crate::preprocess::is_image_path;

/// Set to N, a build aborts (like kill -9) right after saving chunk N: the
/// crash the resume tests replay.
pub const CRASH_AFTER_CHUNKS_ENV: &str = "LONGCLIP_TEST_CRASH_AFTER_CHUNKS";

/// Chunks saved by this process (for the crash test), across segments.
static CHUNKS_SAVED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Images per segment an `index build` writes: big enough that a million
/// photos make ten segments, small enough that a crash loses little and a
/// segment's HNSW graph builds in minutes, not hours.
pub const DEFAULT_SEGMENT_ROWS: usize = 100_000;

/// `--shard I/N`: the I-th of N parts of the sorted file list, by
/// clip-retrieval's strided rule (file number % N == I).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Parses `I/N` with 0 <= I < N.
    pub fn parse(s: &str) -> Result<Shard> {
        let parsed = s.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if count > 0 && index < count => Ok(Shard { index, count }),
            _ => bail!("--shard '{s}': expected I/N with 0 <= I < N, e.g. 0/4"),
        }
    }

    /// Whether file number `n` (0-based, in sorted order) belongs to this shard.
    pub fn takes(&self, n: usize) -> bool {
        n % self.count == self.index
    }
}

pub struct BuildOptions {
    /// The folder to index; `add` defaults to the index's root.
    pub images: Option<PathBuf>,
    /// For a new index; an existing one keeps its dtype.
    pub dtype: Dtype,
    /// For a new index (None: no graph); an existing one keeps its setting.
    pub hnsw: Option<HnswParams>,
    pub batch_size: usize,
    /// Images per saved chunk (the most a crash can lose).
    pub chunk_size: usize,
    /// Images per segment (for a new index; an existing one keeps its setting).
    pub segment_rows: usize,
    pub progress: bool,
    /// `index add`: the index must exist already.
    pub require_existing: bool,
    /// Only this part of the file list (a new index records it; `add` keeps it).
    pub shard: Option<Shard>,
    /// Merge segments afterwards by this policy; None leaves them.
    pub merge: Option<MergePolicy>,
}

#[derive(Debug, Default)]
pub struct BuildReport {
    /// Embedded by this run.
    pub embedded: usize,
    /// Embedded by an interrupted run and taken from staging.
    pub resumed: usize,
    /// Files found unusable by this run (or its interrupted predecessor).
    pub skipped: usize,
    /// Already in the index, same size and mtime.
    pub unchanged: usize,
    /// Live entries after the run.
    pub count: usize,
    /// Image files this run's part of the folder holds (a shard may hold none).
    pub files: usize,
    pub skipped_total: usize,
    /// Segments written by this run, and the segments after merging.
    pub segments_written: usize,
    pub segments: usize,
    pub seconds: f64,
    pub committed: bool,
    /// The index's compute dtypes (`f32+int8`) when this run made them
    /// mixed: it embedded in a dtype the index's other entries were not
    /// computed in. None otherwise, including for later runs on a mixed index.
    pub mixed_compute_dtype: Option<String>,
}

/// A file found in the folder.
struct Found {
    path: PathBuf,
    key: String,
    size: u64,
    mtime: i64,
}

#[derive(Serialize, Deserialize)]
struct Chunk {
    fingerprint: Option<String>,
    /// What computed the chunk (`f32`, `int8`, ...): a resumed run may use
    /// another `--compute-dtype` than the interrupted one. None in chunks
    /// staged before this was recorded.
    #[serde(default)]
    compute_dtype: Option<String>,
    dim: usize,
    entries: Vec<Staged>,
    skipped: Vec<Skipped>,
}

impl Chunk {
    fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.path.as_str()).chain(self.skipped.iter().map(|s| s.path.as_str()))
    }
}

#[derive(Serialize, Deserialize, Clone)]
struct Staged {
    path: String,
    size: u64,
    mtime: i64,
}

/// Where an existing entry is: segment name and row in it.
type Place = (String, usize);

/// `index build` and `index add`: embeds what is new or changed, commits a
/// segment every `segment_rows` images, marks replaced entries deleted, and
/// merges segments by the policy.
pub fn build(dir: &Path, model: &LongClip, device: &Device, info: &ModelInfo, opts: &BuildOptions) -> Result<BuildReport> {
    let what = || format!("{}: the build stopped; committed segments and staged chunks are kept, rerun it to resume", dir.display());
    super::lock::cleaning_up(dir, || super::catch_panic(what, || build_inner(dir, model, device, info, opts))?)
}

fn build_inner(dir: &Path, model: &LongClip, device: &Device, info: &ModelInfo, opts: &BuildOptions) -> Result<BuildReport> {
    let start = Instant::now();
    if opts.require_existing && !dir.join(MANIFEST).exists() {
        bail!("{}: no index there (no {MANIFEST}); create one with `longclip index build`", dir.display());
    }
    let lock = if opts.require_existing { lock_existing(dir)? } else { lock_new(dir)? };
    let existing = match start_writing(dir)? {
        Some(_) => Some(Index::open(dir)?),
        None => None,
    };
    if let Some(index) = &existing {
        crate::search::check_model(index, info)?;
    }
    let root = match (&opts.images, &existing) {
        (Some(images), _) => images.canonicalize().with_context(|| format!("{}: cannot open the image folder", images.display()))?,
        (None, Some(index)) => PathBuf::from(index.manifest.root.clone().context("this index was imported: give --images")?),
        (None, None) => bail!("give --images"),
    };
    if !root.is_dir() {
        bail!("{}: not a directory", root.display());
    }
    let index_root = existing.as_ref().and_then(|i| i.manifest.root.clone()).unwrap_or_else(|| root.display().to_string());
    if let Some(index) = &existing {
        if opts.shard.is_some() && opts.shard != index.manifest.shard {
            let was = index.manifest.shard.map_or("from the whole folder (no --shard)".to_string(), |s| format!("as shard {}/{}", s.index, s.count));
            bail!("{}: this index was built {was}; build each shard into an index of its own", dir.display());
        }
    }
    let shard = existing.as_ref().map_or(opts.shard, |i| i.manifest.shard.or(opts.shard));
    if let (Some(s), true) = (shard, opts.require_existing) {
        // File numbers shift when files are added, so a shard cannot take new
        // files without overlapping its siblings.
        bail!(
            "{}: this index is shard {}/{} of a sharded build (files numbered % {} == {}); \
             merge the shards with `longclip index merge ... --into ALL` and add to ALL",
            dir.display(), s.index, s.count, s.count, s.index
        );
    }
    // An index kept inside its image folder is not part of the collection.
    let own = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let (found, mut extra) = walk(&root, Path::new(&index_root), &own)?;
    let in_folder = found.len();
    let found: Vec<Found> = match shard {
        Some(s) => {
            if s.index != 0 {
                extra.clear(); // non-images are listed once, by shard 0
            }
            found.into_iter().enumerate().filter(|(n, _)| s.takes(*n)).map(|(_, f)| f).collect()
        }
        None => found,
    };

    let staging = dir.join(STAGING_DIR);
    let old_entries = match &existing {
        Some(index) => index.live_entries()?,
        None => Vec::new(),
    };
    let old_skipped = match &existing {
        Some(index) => index.skipped()?,
        None => Vec::new(),
    };
    let mut current: HashMap<&str, (Option<u64>, Option<i64>)> = HashMap::new();
    for s in &old_skipped {
        current.insert(s.path.as_str(), (s.size, s.mtime));
    }
    for (_, e) in &old_entries {
        current.insert(e.path.as_str(), (e.size, e.mtime));
    }
    let chunks = drop_committed(read_staging(&staging, info)?, &staging, &current);
    let staged: HashSet<&str> = chunks.iter().flat_map(|(_, c)| c.paths()).collect();
    let mut report = BuildReport { resumed: chunks.iter().map(|(_, c)| c.entries.len()).sum(), ..Default::default() };
    report.skipped = chunks.iter().map(|(_, c)| c.skipped.len()).sum();

    let mut todo = Vec::new();
    for f in &found {
        if staged.contains(f.key.as_str()) {
            continue;
        }
        if current.get(f.key.as_str()) == Some(&(Some(f.size), Some(f.mtime))) {
            report.unchanged += 1;
            continue;
        }
        todo.push(f);
    }
    if existing.is_none() && in_folder == 0 && chunks.is_empty() {
        bail!("{}: no images found (jpg, jpeg, png, webp, gif, bmp, tif, tiff; searched recursively)", root.display());
    }
    if report.resumed + report.skipped > 0 {
        eprintln!("resuming: {} images already embedded and {} skipped by an interrupted run", report.resumed, report.skipped);
    }

    // Where each old entry is, to mark it deleted when its file is redone.
    let places: HashMap<String, Place> = match &existing {
        Some(index) => old_entries
            .iter()
            .map(|(row, e)| {
                let (s, r) = index.locate(*row);
                (e.path.clone(), (index.segments()[s].meta.name.clone(), r))
            })
            .collect(),
        None => HashMap::new(),
    };
    let mut deletes: HashMap<String, Deletes> = match &existing {
        Some(index) => index.segments().iter().map(|s| (s.meta.name.clone(), s.deletes().clone())).collect(),
        None => HashMap::new(),
    };
    // The skipped list as it will stand: the old one minus files gone, plus
    // files that are not images or cannot be read.
    let known: HashSet<String> = old_skipped.iter().map(|s| s.path.clone()).collect();
    let mut skipped: Vec<Skipped> = old_skipped.iter().filter(|s| super::resolve(Some(&index_root), &s.path).exists()).cloned().collect();
    skipped.extend(extra.into_iter().filter(|s| !known.contains(&s.path)));

    let mut manifest = match &existing {
        Some(index) => index.manifest.clone(),
        None => {
            let mut m = Manifest::empty(info.clone(), info.embed_dim, opts.dtype, opts.hnsw, Some(index_root.clone()), opts.segment_rows.max(1));
            m.shard = shard;
            m
        }
    };
    let segment_rows = manifest.segment_rows.max(1);
    let mut skipped_changed = existing.is_none() || skipped != old_skipped;
    let embedder = Embedder { model, device: device.clone(), batch_size: opts.batch_size, normalize: true, progress: opts.progress };
    let mut pending = chunks;
    let mut next = 0;
    loop {
        let staged_rows: usize = pending.iter().map(|(_, c)| c.entries.len() + c.skipped.len()).sum();
        if staged_rows < segment_rows && next < todo.len() {
            let take = (segment_rows - staged_rows).min(todo.len() - next);
            let last = pending.last().map_or(0, |(n, _)| *n);
            let done = embed_in_chunks(&embedder, &todo[next..next + take], &staging, info, info.embed_dim, opts.chunk_size, last)?;
            report.embedded += done.iter().map(|(_, c)| c.entries.len()).sum::<usize>();
            report.skipped += done.iter().map(|(_, c)| c.skipped.len()).sum::<usize>();
            pending.extend(done);
            next += take;
            continue;
        }
        if pending.is_empty() && !skipped_changed {
            break;
        }
        skipped_changed = false;
        let redone: HashSet<&str> = pending.iter().flat_map(|(_, c)| c.paths()).collect();
        skipped.retain(|s| !redone.contains(s.path.as_str()));
        for (_, c) in &pending {
            skipped.extend(c.skipped.iter().cloned());
        }
        if note_compute_dtypes(&mut manifest, &pending, &model.precision.name()) {
            report.mixed_compute_dtype = Some(manifest.compute_dtype().to_string());
        }
        manifest = Change::run(dir, &manifest, |change| {
            commit_chunks(dir, change, &pending, &staging, &places, &mut deletes, opts.progress)?;
            change.set_skipped(dir, &skipped)
        })?;
        report.committed = true;
        report.segments_written += pending.iter().any(|(_, c)| !c.entries.is_empty()) as usize;
        for (n, _) in &pending {
            let _ = std::fs::remove_file(staging.join(format!("chunk-{n:06}.json")));
            let _ = std::fs::remove_file(staging.join(format!("chunk-{n:06}.f32")));
        }
        pending.clear();
        if next >= todo.len() {
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&staging);
    if let Some(policy) = &opts.merge {
        if report.committed {
            merge_locked(dir, &lock, policy, opts.progress)?;
        }
    }
    let manifest = super::read_manifest(dir)?;
    report.files = found.len();
    report.count = manifest.count;
    report.skipped_total = manifest.skipped_count;
    report.segments = manifest.segments.len();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Staged chunks whose files are all in the index already, as they are now:
/// a writer committed them and died before deleting them. Their files go.
fn drop_committed(chunks: Vec<(usize, Chunk)>, staging: &Path, current: &HashMap<&str, (Option<u64>, Option<i64>)>) -> Vec<(usize, Chunk)> {
    let committed = |c: &Chunk| {
        c.entries.iter().all(|e| current.get(e.path.as_str()) == Some(&(Some(e.size), Some(e.mtime))))
            && c.skipped.iter().all(|s| current.get(s.path.as_str()) == Some(&(s.size, s.mtime)))
    };
    let (done, pending): (Vec<_>, Vec<_>) = chunks.into_iter().partition(|(_, c)| committed(c));
    for (n, _) in done {
        let _ = std::fs::remove_file(staging.join(format!("chunk-{n:06}.json")));
        let _ = std::fs::remove_file(staging.join(format!("chunk-{n:06}.f32")));
    }
    pending
}

/// Writes the staged chunks as one segment (new ids, in staging order) and
/// marks the old entries of redone files deleted.
fn commit_chunks(dir: &Path, change: &mut Change, chunks: &[(usize, Chunk)], staging: &Path, places: &HashMap<String, Place>, deletes: &mut HashMap<String, Deletes>, progress: bool) -> Result<()> {
    let dim = change.manifest.dim;
    let first_id = change.manifest.next_id;
    let mut id = first_id;
    change.write_segment(dir, progress, |w| {
        for (n, chunk) in chunks {
            let data = read_f32(&staging.join(format!("chunk-{n:06}.f32")), chunk.entries.len() * dim)?;
            for (e, v) in chunk.entries.iter().zip(data.chunks_exact(dim)) {
                w.push(&Entry { id, path: e.path.clone(), size: Some(e.size), mtime: Some(e.mtime), caption: None }, v)?;
                id += 1;
            }
        }
        Ok(())
    })?;
    change.manifest.next_id = id;
    let mut touched = HashSet::new();
    for path in chunks.iter().flat_map(|(_, c)| c.paths()) {
        if let Some((segment, row)) = places.get(path) {
            if deletes.get_mut(segment).is_some_and(|d| d.delete(*row)) {
                touched.insert(segment.clone());
            }
        }
    }
    for segment in touched {
        change.set_deletes(dir, &segment, &deletes[&segment])?;
    }
    Ok(())
}

/// Embeds `todo` batch by batch, saving a chunk every `chunk_size` files
/// (or minute) so a crash loses at most one chunk.
fn embed_in_chunks(embedder: &Embedder, todo: &[&Found], staging: &Path, info: &ModelInfo, dim: usize, chunk_size: usize, last: usize) -> Result<Vec<(usize, Chunk)>> {
    std::fs::create_dir_all(staging).with_context(|| format!("{}: cannot create", staging.display()))?;
    let by_path: HashMap<&Path, &Found> = todo.iter().map(|f| (f.path.as_path(), *f)).collect();
    let paths: Vec<PathBuf> = todo.iter().map(|f| f.path.clone()).collect();
    let crash_after: Option<usize> = std::env::var(CRASH_AFTER_CHUNKS_ENV).ok().and_then(|v| v.parse().ok());
    let compute_dtype = Some(embedder.model.precision.name());
    let new_chunk = || Chunk { fingerprint: info.fingerprint.clone(), compute_dtype: compute_dtype.clone(), dim, entries: Vec::new(), skipped: Vec::new() };
    let mut done = Vec::new();
    let mut pending = new_chunk();
    let mut rows: Vec<f32> = Vec::new();
    let mut since = Instant::now();
    let mut next = last + 1;
    let mut flush = |pending: &mut Chunk, rows: &mut Vec<f32>, done: &mut Vec<(usize, Chunk)>| -> Result<()> {
        if pending.entries.is_empty() && pending.skipped.is_empty() {
            return Ok(());
        }
        save_chunk(staging, next, pending, rows)?;
        done.push((next, std::mem::replace(pending, new_chunk())));
        rows.clear();
        if crash_after == Some(CHUNKS_SAVED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1) {
            eprintln!("{CRASH_AFTER_CHUNKS_ENV}: aborting after chunk {next}");
            std::process::abort();
        }
        next += 1;
        Ok(())
    };
    embedder.embed_images_each(&paths, |batch| {
        let features = batch.features.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
        rows.extend_from_slice(&features);
        for p in &batch.paths {
            let f = by_path[p.as_path()];
            pending.entries.push(Staged { path: f.key.clone(), size: f.size, mtime: f.mtime });
        }
        for (p, why) in &batch.skipped {
            let f = by_path[p.as_path()];
            pending.skipped.push(Skipped { path: f.key.clone(), reason: why.replace('\n', " "), size: Some(f.size), mtime: Some(f.mtime) });
        }
        if pending.entries.len() + pending.skipped.len() >= chunk_size.max(1) || since.elapsed().as_secs() >= 60 {
            flush(&mut pending, &mut rows, &mut done)?;
            since = Instant::now();
        }
        Ok(())
    })?;
    flush(&mut pending, &mut rows, &mut done)?;
    Ok(done)
}

/// Records in `manifest` the compute dtype of every chunk with embeddings,
/// in order (`run_dtype` for chunks that do not say); true if that made the
/// index mixed or added to its mix.
fn note_compute_dtypes(manifest: &mut Manifest, pending: &[(usize, Chunk)], run_dtype: &str) -> bool {
    let mut mixed = false;
    for (_, chunk) in pending.iter().filter(|(_, c)| !c.entries.is_empty()) {
        mixed |= manifest.note_compute_dtype(chunk.compute_dtype.as_deref().unwrap_or(run_dtype));
    }
    mixed
}

fn save_chunk(staging: &Path, n: usize, chunk: &Chunk, rows: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
    crate::export::write_atomic(&staging.join(format!("chunk-{n:06}.f32")), &bytes)?;
    // The JSON is the chunk's commit: written last.
    crate::export::write_atomic(&staging.join(format!("chunk-{n:06}.json")), &serde_json::to_vec(chunk)?)
}

/// Finished chunks of an interrupted run, in order. Chunks made with another
/// model, or damaged, are dropped (their files are embedded again).
fn read_staging(staging: &Path, info: &ModelInfo) -> Result<Vec<(usize, Chunk)>> {
    let Ok(listing) = std::fs::read_dir(staging) else { return Ok(Vec::new()) };
    let mut chunks = Vec::new();
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("chunk-").and_then(|r| r.strip_suffix(".json")).and_then(|n| n.parse::<usize>().ok()) else { continue };
        let chunk: Option<Chunk> = std::fs::read(entry.path()).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let data_len = std::fs::metadata(staging.join(format!("chunk-{n:06}.f32"))).map(|m| m.len()).ok();
        match chunk {
            Some(c) if c.fingerprint == info.fingerprint && c.dim == info.embed_dim && data_len == Some((c.entries.len() * c.dim * 4) as u64) => chunks.push((n, c)),
            _ => {
                eprintln!("warning: {}: dropping a staged chunk from another model or a damaged one", crate::term::path(&entry.path()));
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    chunks.sort_by_key(|(n, _)| *n);
    Ok(chunks)
}

fn read_f32(path: &Path, count: usize) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read staged embeddings", path.display()))?;
    if bytes.len() != count * 4 {
        bail!("{}: staged embeddings have the wrong size", path.display());
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect())
}

/// Lists the folder recursively, sorted by path: image files with their size
/// and mtime, and the files that are skipped (not an image, unreadable).
/// Hidden files and folders (dot names) are left out; symlinked folders are
/// not followed (no loops); the folder `own` (the index itself) is skipped.
fn walk(root: &Path, index_root: &Path, own: &Path) -> Result<(Vec<Found>, Vec<Skipped>)> {
    let mut files = Vec::new();
    let mut unreadable = Vec::new();
    walk_dir(root, own, &mut files, &mut unreadable)?;
    files.sort();
    let key = |p: &Path| match p.strip_prefix(index_root) {
        Ok(rel) => rel.display().to_string(),
        Err(_) => p.display().to_string(),
    };
    let mut found = Vec::new();
    let mut others = Vec::new();
    for path in files {
        let k = key(&path);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                unreadable.push(Skipped { path: k, reason: format!("cannot read file: {e}"), size: None, mtime: None });
                continue;
            }
        };
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as i64);
        if is_image_path(&path) {
            found.push(Found { path, key: k, size: meta.len(), mtime });
        } else {
            others.push(Skipped { path: k, reason: "not an image (unsupported file extension)".into(), size: Some(meta.len()), mtime: Some(mtime) });
        }
    }
    for s in &mut unreadable {
        if let Ok(rel) = Path::new(&s.path).strip_prefix(index_root) {
            s.path = rel.display().to_string();
        }
    }
    others.extend(unreadable);
    Ok((found, others))
}

fn walk_dir(dir: &Path, own: &Path, out: &mut Vec<PathBuf>, unreadable: &mut Vec<Skipped>) -> Result<()> {
    let listing = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) => {
            unreadable.push(Skipped { path: dir.display().to_string(), reason: format!("cannot list directory: {e}"), size: None, mtime: None });
            return Ok(());
        }
    };
    for entry in listing.flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() && path != own => walk_dir(&path, own, out, unreadable)?,
            Ok(t) if t.is_file() => out.push(path),
            Ok(t) if t.is_symlink() && path.is_file() => out.push(path),
            _ => {}
        }
    }
    Ok(())
}
