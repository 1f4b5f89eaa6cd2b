//! Image search indexes on disk, made of immutable segments.
//!
//! An index is a directory. `manifest.json` is the one commit point: it
//! names the live segments (`segments/NAME/`: embeddings, entries, rows and
//! an HNSW graph, all written once) and, per segment, the deletion bitmap in
//! force. Writers add segments, write new bitmaps and merge segments, then
//! rename a new manifest over the old one; files no manifest names are
//! deleted after the commit. A reader sees one manifest's segments, never a
//! mix, and keeps working on files it has mapped. See `indexes/README.md`.
//!
//! Opening an index reads the manifest and memory-maps each segment: nothing
//! proportional to the number of images is read until it is used.

mod build;
mod clip_retrieval;
mod commit;
mod deletes;
mod distance;
mod export;
mod hnsw;
mod import;
mod lock;
mod manifest;
mod merge;
mod reader;
mod remove;
mod segment;
mod upgrade;

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};

pub use build::{build, BuildOptions, BuildReport, Shard, CRASH_AFTER_CHUNKS_ENV, DEFAULT_SEGMENT_ROWS};
pub use clip_retrieval::{import_clip_retrieval, partitions, Partition};
pub use commit::CRASH_AT_ENV;
pub use deletes::Deletes;
pub use distance::{dot, score, score_f16, UnitDot};
pub use export::export;
pub use hnsw::{Graph, HnswInfo, HnswParams};
pub use import::{import, npy_header, read_npy, ImportOptions};
pub use lock::{lock_existing, lock_new, Lock};
pub use manifest::{read_manifest, Manifest, SegmentMeta};
pub use merge::{maybe_merge, merge_indexes, optimize, plan_merge, MergePolicy, MergeReport};
pub use reader::{Index, LiveIndex};
pub use remove::{remove, RemoveReport, Selection};
pub use segment::Segment;
pub use upgrade::upgrade;

pub const FORMAT: &str = "longclip-index";
/// 2: segments (issue 11). 1: one generation of flat files (`index upgrade` converts).
pub const FORMAT_VERSION: u32 = 2;
pub const MANIFEST: &str = "manifest.json";
pub const LOCK_FILE: &str = "lock";
pub const STAGING_DIR: &str = "staging";
pub const SEGMENTS_DIR: &str = "segments";

/// How embeddings are stored: little-endian IEEE half or single floats.
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

    /// Bytes per value.
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
    /// How queries must be tokenized and preprocessed ([`crate::family`]);
    /// manifests written before families existed read as Long-CLIP.
    #[serde(default)]
    pub family: crate::family::Family,
}

/// One indexed image (or imported vector). Rows of a segment are in id order.
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

/// A path made absolute against the current directory, canonical when it exists.
pub fn absolute_path(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    if p.is_absolute() {
        return p.to_path_buf();
    }
    std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
}

/// An entry path joined to the index root when relative; URLs (`scheme://`,
/// as imports may hold) are left as they are.
pub fn resolve(root: Option<&str>, path: &str) -> PathBuf {
    let p = Path::new(path);
    match root {
        Some(root) if p.is_relative() && !is_url(path) => Path::new(root).join(p),
        _ => p.to_path_buf(),
    }
}

/// `https://...`, `s3://...`: an id that names no local file.
pub fn is_url(path: &str) -> bool {
    path.split_once("://").is_some_and(|(scheme, _)| !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c)))
}

/// Memory-maps a file read-only; None for an empty file (mmap refuses length 0).
pub(crate) fn map(path: &Path) -> Result<Option<Mmap>> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    if file.metadata()?.len() == 0 {
        return Ok(None);
    }
    // Safety: segment files are never modified in place (they are written
    // once and deleted only after no manifest names them), so the mapping
    // does not change under us.
    let map = unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot memory-map", path.display()))?;
    Ok(Some(map))
}

/// Reinterprets little-endian bytes as floats. The mapping is page aligned.
pub(crate) fn cast_slice<T: Copy>(bytes: &[u8]) -> &[T] {
    let size = std::mem::size_of::<T>();
    if bytes.is_empty() {
        return &[];
    }
    assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<T>(), 0, "unaligned embedding matrix");
    // Safety: alignment checked; f16/f32 accept any bit pattern.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / size) }
}

pub(crate) fn bytes_of<T>(s: &[T]) -> &[u8] {
    // Safety: plain numbers; any alignment is fine for u8.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
}

pub(crate) fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1)))
        .collect()
}

/// Runs `f`, turning a panic (in a dependency) into an error that says `what`.
pub(crate) fn catch_panic<T>(what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> Result<T> {
    quiet_unwind(f).map_err(|message| anyhow::anyhow!("{}: internal error in a dependency: {message}", what()))
}

thread_local! {
    /// Depth of `quiet_unwind` calls on this thread; panics here are not printed while > 0.
    static QUIET: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

static QUIET_HOOK: std::sync::Once = std::sync::Once::new();

/// Runs `f`, catching a panic as its message. The panic hook is
/// process-global and searches run on many threads, so swapping it around
/// each call would race (a thread could restore another thread's silent
/// hook for good). Instead one wrapper hook, installed once, stays silent
/// only for threads inside `quiet_unwind` and passes every other panic to
/// the previous hook.
pub(crate) fn quiet_unwind<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(|q| q.get()) == 0 {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(q.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(q.get() - 1));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string())
    })
}

/// Now as RFC 3339 UTC (`2026-01-02T03:04:05Z`).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}
