//! `manifest.json`: the commit point. It names the live segments, each
//! segment's deletion bitmap, and the skipped-file list; renaming a new one
//! over the old one is the only way an index changes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::hnsw::{HnswInfo, HnswParams};
use super::{Dtype, ModelInfo, FORMAT, FORMAT_VERSION, MANIFEST, STAGING_DIR};

/// One immutable segment as the manifest records it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SegmentMeta {
    /// The folder under `segments/`.
    pub name: String,
    /// Rows stored, deleted ones included.
    pub rows: usize,
    /// Rows marked in the deletion bitmap.
    pub deleted: usize,
    /// The bitmap file in force (in the segment folder), when any row is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletes: Option<String>,
    pub dtype: Dtype,
    /// Smallest and largest entry id (rows are in id order).
    pub min_id: u64,
    pub max_id: u64,
    /// Byte length of every file of the segment (checked on open).
    pub sizes: BTreeMap<String, u64>,
    /// The segment's own graph, built when it was written; None with `--no-hnsw`.
    pub hnsw: Option<HnswInfo>,
}

impl SegmentMeta {
    /// Rows a search can return.
    pub fn live(&self) -> usize {
        self.rows - self.deleted
    }

    pub fn vectors_file(&self) -> String {
        format!("vectors.{}", self.dtype.name())
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// Increases with every commit.
    pub generation: u64,
    pub model: ModelInfo,
    pub dim: usize,
    pub dtype: Dtype,
    /// What the image tower computed in (`--compute-dtype`: f32, bf16,
    /// int8; `f32+int8` when runs used several). Manifests written before
    /// it was recorded read as None: those indexes were embedded in f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_dtype: Option<String>,
    /// Live entries over all segments.
    pub count: usize,
    pub skipped_count: usize,
    /// Ids are never reused: the next entry gets this one.
    pub next_id: u64,
    /// The next segment gets the name `s{next_segment:06}`.
    pub next_segment: u64,
    /// The folder relative entry paths are under (absolute); none for imports.
    pub root: Option<String>,
    /// RFC 3339, UTC.
    pub created: String,
    pub updated: String,
    /// Graph parameters for new segments; None: exact search only.
    pub hnsw: Option<HnswParams>,
    /// Rows per segment an `index build` writes at most (plus one chunk).
    pub segment_rows: usize,
    /// `--shard I/N` of a shard build (`add` keeps to it; a merge clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<super::build::Shard>,
    pub segments: Vec<SegmentMeta>,
    /// `skipped-G.jsonl`: files that are not in the index, and why.
    pub skipped: String,
    pub skipped_size: u64,
}

impl Manifest {
    /// The manifest of an index with no segments yet.
    pub fn empty(model: ModelInfo, dim: usize, dtype: Dtype, hnsw: Option<HnswParams>, root: Option<String>, segment_rows: usize) -> Manifest {
        let now = super::now_rfc3339();
        Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            generation: 0,
            model,
            dim,
            dtype,
            compute_dtype: None,
            count: 0,
            skipped_count: 0,
            next_id: 0,
            next_segment: 1,
            root,
            created: now.clone(),
            updated: now,
            hnsw,
            segment_rows,
            shard: None,
            segments: Vec::new(),
            skipped: String::new(),
            skipped_size: 0,
        }
    }

    /// Takes the name for a new segment.
    pub fn take_segment_name(&mut self) -> String {
        let name = format!("s{:06}", self.next_segment);
        self.next_segment += 1;
        name
    }

    /// The compute dtypes of the embeddings (`f32` for an old manifest).
    pub fn compute_dtype(&self) -> &str {
        self.compute_dtype.as_deref().unwrap_or("f32")
    }

    /// Records that a run embedded with `name` (`f32`, `bf16`, `int8`): an
    /// empty index takes it, another one adds it to its list (`f32+int8`).
    /// True when `name` is new to an index that held other embeddings: the
    /// run made the index mixed (or added to its mix), which is worth saying
    /// once; later runs in any of the listed dtypes return false.
    pub fn note_compute_dtype(&mut self, name: &str) -> bool {
        if self.segments.is_empty() && self.compute_dtype.is_none() {
            self.compute_dtype = Some(name.to_string());
            false
        } else if !self.compute_dtypes().any(|d| d == name) {
            self.compute_dtype = Some(format!("{}+{name}", self.compute_dtype()));
            true
        } else {
            false
        }
    }

    /// The compute dtypes one by one, in the order they were first used.
    pub fn compute_dtypes(&self) -> impl Iterator<Item = &str> {
        self.compute_dtype().split('+')
    }

    /// The embeddings' types as `index info` and `search` name them: the
    /// stored type and what computed it, e.g. `f16, computed in f32+int8`.
    pub fn dtype_summary(&self) -> String {
        format!("{}, computed in {}", self.dtype.name(), self.compute_dtype())
    }

    /// Recounts `count` from the segments.
    pub fn recount(&mut self) {
        self.count = self.segments.iter().map(SegmentMeta::live).sum();
    }
}

/// Reads and checks `manifest.json`; a format-1 index gets a message saying
/// how to upgrade it.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    if !dir.exists() {
        bail!("{}: no such index (directory not found)", dir.display());
    }
    let path = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let hint = if dir.join(STAGING_DIR).exists() { "; a build is running there or was interrupted: when none runs, rerun the same `longclip index build` to finish it" } else { "" };
            bail!("{}: not a longclip index (no {MANIFEST}){hint}", dir.display())
        }
        Err(e) => bail!("{}: cannot read: {e}", path.display()),
    };
    let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: corrupt index manifest", path.display()))?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        bail!("{}: not a longclip index (format {})", path.display(), value.get("format").unwrap_or(&serde_json::Value::Null));
    }
    let version = value.get("format_version").and_then(|v| v.as_u64()).unwrap_or(0);
    if version == 1 {
        bail!(
            "{}: index format version 1 (one generation, before segments); convert it with \
             `longclip index upgrade --index {}` (no re-embedding; the old files are replaced)",
            dir.display(),
            dir.display()
        );
    }
    if version != FORMAT_VERSION as u64 {
        bail!("{}: index format version {version} is not one this longclip reads ({FORMAT_VERSION})", path.display());
    }
    if !cfg!(target_endian = "little") {
        bail!("index files are little-endian; this machine is not");
    }
    serde_json::from_value(value).with_context(|| format!("{}: corrupt index manifest", path.display()))
}

/// The commit: a new manifest written to a temporary name, synced, renamed
/// over the old one, and the directory synced.
pub(crate) fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST);
    let tmp = crate::export::temp_path(&path);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(serde_json::to_string_pretty(manifest)?.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("{}: cannot write", path.display()));
    }
    Ok(())
}
