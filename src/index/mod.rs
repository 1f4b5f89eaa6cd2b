//! Image search indexes on disk.
//!
//! An index is a directory. `manifest.json` is the commit point: it names the
//! files of the current generation (`embeddings-G.f16`, `entries-G.jsonl`,
//! `rows-G.bin`, `skipped-G.jsonl`, `hnsw-G.hnsw.*`). A writer builds a new
//! generation under new names and then renames a new manifest over the old
//! one, so a reader sees the old index or the new one, never a mix; a crash
//! leaves the old generation in force. See `indexes/README.md`.
//!
//! Opening an index reads the manifest and memory-maps the rest: nothing
//! proportional to the number of images is read until it is used.

mod build;
mod hnsw;
mod write;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use half::f16;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

pub use build::{build, BuildOptions, BuildReport, CRASH_AFTER_CHUNKS_ENV};
pub use hnsw::{Graph, HnswParams};
pub use write::{export, import, lock, remove, ImportOptions, Lock, RemoveReport, Selection};

pub const FORMAT: &str = "longclip-index";
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const LOCK_FILE: &str = "lock";
pub const STAGING_DIR: &str = "staging";

/// How the embedding matrix is stored: little-endian IEEE half or single floats.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F16,
    F32,
}

impl Dtype {
    pub fn parse(s: &str) -> Result<Dtype> {
        match s {
            "f16" => Ok(Dtype::F16),
            "f32" => Ok(Dtype::F32),
            other => bail!("unknown index dtype '{other}' (expected f16 or f32)"),
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F16 => "f16",
            Dtype::F32 => "f32",
        }
    }
}

/// The model whose image tower made the embeddings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// The checkpoint file as given when the index was built (absolute).
    pub path: Option<String>,
    /// `Checkpoint::fingerprint()`: sha256 over the weights, format-independent.
    pub fingerprint: Option<String>,
    pub embed_dim: usize,
    pub image_size: Option<usize>,
    pub context_length: Option<usize>,
}

/// The files of one generation and their sizes (checked on open).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Files {
    pub embeddings: String,
    pub entries: String,
    pub rows: String,
    pub skipped: String,
    pub sizes: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub generation: u64,
    pub model: ModelInfo,
    pub dim: usize,
    pub dtype: Dtype,
    pub count: usize,
    pub skipped_count: usize,
    /// Ids are never reused: the next entry gets this one.
    pub next_id: u64,
    /// The folder relative entry paths are under (absolute); none for imports.
    pub root: Option<String>,
    /// RFC 3339, UTC.
    pub created: String,
    pub updated: String,
    pub files: Files,
    pub hnsw: Option<hnsw::HnswInfo>,
}

/// One indexed image (or imported vector). Rows are in id order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Entry {
    pub id: u64,
    /// Relative to the manifest's root when under it, else as given.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Modification time in nanoseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
}

/// A file that is not in the index, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
}

/// A read-only view of the committed generation.
pub struct Index {
    pub dir: PathBuf,
    pub manifest: Manifest,
    embeddings: Option<Mmap>,
    /// Per row: id (u64 LE) and the byte offset of its line in `entries` (u64 LE).
    rows: Option<Mmap>,
    entries: Option<Mmap>,
    graph: OnceLock<std::result::Result<Graph, String>>,
}

impl Index {
    /// Opens the committed generation; errors say what is missing or wrong.
    pub fn open(dir: &Path) -> Result<Index> {
        let manifest = read_manifest(dir)?;
        let files = &manifest.files;
        for name in [&files.embeddings, &files.entries, &files.rows, &files.skipped] {
            check_size(dir, name, &manifest)?;
        }
        let expected = (manifest.count * manifest.dim * manifest.dtype.bytes()) as u64;
        if manifest.files.sizes.get(&files.embeddings) != Some(&expected) {
            bail!("{}: corrupt index: the manifest's embedding size does not match {} x {} {}", dir.display(), manifest.count, manifest.dim, manifest.dtype.name());
        }
        if manifest.files.sizes.get(&files.rows) != Some(&(manifest.count as u64 * 16)) {
            bail!("{}: corrupt index: the manifest's row table size does not match {} rows", dir.display(), manifest.count);
        }
        let embeddings = map(&dir.join(&files.embeddings))?;
        let rows = map(&dir.join(&files.rows))?;
        let entries = map(&dir.join(&files.entries))?;
        Ok(Index { dir: dir.to_path_buf(), manifest, embeddings, rows, entries, graph: OnceLock::new() })
    }

    pub fn len(&self) -> usize {
        self.manifest.count
    }

    pub fn is_empty(&self) -> bool {
        self.manifest.count == 0
    }

    pub fn dim(&self) -> usize {
        self.manifest.dim
    }

    /// The stored matrix, row-major, as half floats (f16 indexes).
    pub fn f16_rows(&self) -> Option<&[f16]> {
        if self.manifest.dtype != Dtype::F16 {
            return None;
        }
        Some(cast_slice(self.embeddings.as_deref().unwrap_or(&[])))
    }

    /// The stored matrix, row-major, as single floats (f32 indexes).
    pub fn f32_rows(&self) -> Option<&[f32]> {
        if self.manifest.dtype != Dtype::F32 {
            return None;
        }
        Some(cast_slice(self.embeddings.as_deref().unwrap_or(&[])))
    }

    /// Row `row` as f32, converted on the fly from f16 when needed.
    pub fn row(&self, row: usize, out: &mut [f32]) {
        let d = self.dim();
        let range = row * d..(row + 1) * d;
        match (self.f16_rows(), self.f32_rows()) {
            (Some(h), _) => {
                use half::slice::HalfFloatSliceExt;
                h[range].convert_to_f32_slice(out);
            }
            (_, Some(f)) => out.copy_from_slice(&f[range]),
            _ => unreachable!("an index is f16 or f32"),
        }
    }

    pub fn row_vec(&self, row: usize) -> Vec<f32> {
        let mut v = vec![0f32; self.dim()];
        self.row(row, &mut v);
        v
    }

    pub fn id(&self, row: usize) -> u64 {
        let rows = self.rows.as_deref().unwrap_or(&[]);
        u64::from_le_bytes(rows[row * 16..row * 16 + 8].try_into().expect("8 bytes"))
    }

    fn offset(&self, row: usize) -> usize {
        let rows = self.rows.as_deref().unwrap_or(&[]);
        u64::from_le_bytes(rows[row * 16 + 8..row * 16 + 16].try_into().expect("8 bytes")) as usize
    }

    /// The row holding `id` (rows are in id order), if it is in the index.
    pub fn row_of_id(&self, id: u64) -> Option<usize> {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.id(mid).cmp(&id) {
                std::cmp::Ordering::Equal => return Some(mid),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    /// Parses the one line of `entries` for `row`.
    pub fn entry(&self, row: usize) -> Result<Entry> {
        let data = self.entries.as_deref().unwrap_or(&[]);
        let start = self.offset(row);
        let end = if row + 1 < self.len() { self.offset(row + 1) } else { data.len() };
        let line = data.get(start..end).with_context(|| format!("{}: corrupt index: bad entry offset for row {row}", self.dir.display()))?;
        serde_json::from_slice(line).with_context(|| format!("{}: corrupt index: entry {row} is not valid JSON", self.dir.display()))
    }

    pub fn entries(&self) -> Result<Vec<Entry>> {
        (0..self.len()).map(|r| self.entry(r)).collect()
    }

    pub fn skipped(&self) -> Result<Vec<Skipped>> {
        let path = self.dir.join(&self.manifest.files.skipped);
        read_jsonl(&path)
    }

    /// Where the file of an entry is on disk.
    pub fn resolve(&self, entry: &Entry) -> PathBuf {
        resolve(self.manifest.root.as_deref(), &entry.path)
    }

    /// The HNSW graph, loaded (memory-mapped) on first use; None when the
    /// index has none.
    pub fn graph(&self) -> Result<Option<&Graph>> {
        let Some(info) = &self.manifest.hnsw else { return Ok(None) };
        let loaded = self.graph.get_or_init(|| Graph::load(&self.dir, info, &self.manifest).map_err(|e| format!("{e:#}")));
        match loaded {
            Ok(g) => Ok(Some(g)),
            Err(e) => bail!("{e}"),
        }
    }
}

/// A path made absolute against the current directory, canonical when it exists.
pub fn absolute_path(p: &Path) -> PathBuf {
    write::absolute(p)
}

pub fn resolve(root: Option<&str>, path: &str) -> PathBuf {
    let p = Path::new(path);
    match root {
        Some(root) if p.is_relative() => Path::new(root).join(p),
        _ => p.to_path_buf(),
    }
}

/// Reads and checks `manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    if !dir.exists() {
        bail!("{}: no such index (directory not found)", dir.display());
    }
    let path = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let hint = if dir.join(STAGING_DIR).exists() { "; an interrupted build is staged there: rerun `longclip index build` to finish it" } else { "" };
            bail!("{}: not a longclip index (no {MANIFEST}){hint}", dir.display())
        }
        Err(e) => bail!("{}: cannot read: {e}", path.display()),
    };
    let manifest: Manifest = serde_json::from_str(&text).with_context(|| format!("{}: corrupt index manifest", path.display()))?;
    if manifest.format != FORMAT {
        bail!("{}: not a longclip index (format '{}')", path.display(), manifest.format);
    }
    if manifest.format_version > FORMAT_VERSION {
        bail!("{}: index format version {} is newer than this longclip reads ({FORMAT_VERSION})", path.display(), manifest.format_version);
    }
    if !cfg!(target_endian = "little") {
        bail!("index files are little-endian; this machine is not");
    }
    Ok(manifest)
}

fn check_size(dir: &Path, name: &str, manifest: &Manifest) -> Result<()> {
    let path = dir.join(name);
    let meta = std::fs::metadata(&path).with_context(|| format!("{}: corrupt index: {name} is missing", dir.display()))?;
    match manifest.files.sizes.get(name) {
        Some(&want) if want == meta.len() => Ok(()),
        Some(&want) => bail!("{}: corrupt index: {name} has {} bytes, the manifest says {want}", dir.display(), meta.len()),
        None => bail!("{}: corrupt index: the manifest has no size for {name}", dir.display()),
    }
}

/// Memory-maps a file read-only; None for an empty file (mmap refuses length 0).
fn map(path: &Path) -> Result<Option<Mmap>> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    if file.metadata()?.len() == 0 {
        return Ok(None);
    }
    // Safety: index files are never modified in place (new generations get
    // new names), so the mapping does not change under us.
    let map = unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot memory-map", path.display()))?;
    Ok(Some(map))
}

/// Reinterprets little-endian bytes as floats. The mapping is page aligned.
fn cast_slice<T: Copy>(bytes: &[u8]) -> &[T] {
    let size = std::mem::size_of::<T>();
    if bytes.is_empty() {
        return &[];
    }
    assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<T>(), 0, "unaligned embedding matrix");
    // Safety: alignment checked; f16/f32 accept any bit pattern.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / size) }
}

pub(crate) fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1)))
        .collect()
}

/// Now as RFC 3339 UTC (`2026-01-02T03:04:05Z`), without a date crate.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
