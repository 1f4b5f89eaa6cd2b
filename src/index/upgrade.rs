//! `index upgrade`: a format-1 index (one generation of flat files) becomes
//! a format-2 index with one segment. The embedding matrix, entries and row
//! table keep their byte layout, so they are hard-linked, not rewritten;
//! the HNSW graph is rebuilt (format 1 used hnsw_rs's `DistDot`, which
//! panics on duplicate photos). The new manifest's rename is the commit: a
//! crash before it leaves the format-1 index in force, and rerunning the
//! command finishes the work.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::commit::{collect_garbage, Change};
use super::hnsw::HnswParams;
use super::lock::lock_existing;
use super::manifest::{Manifest, SegmentMeta};
use super::segment::{build_graph, segment_dir, sync_dir};
use super::{read_jsonl, Dtype, ModelInfo, Skipped, DEFAULT_SEGMENT_ROWS, MANIFEST, SEGMENTS_DIR};

#[derive(Deserialize)]
struct V1Files {
    embeddings: String,
    entries: String,
    rows: String,
    skipped: String,
    sizes: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct V1Manifest {
    format_version: u32,
    generation: u64,
    model: ModelInfo,
    dim: usize,
    dtype: Dtype,
    count: usize,
    next_id: u64,
    root: Option<String>,
    created: String,
    files: V1Files,
    hnsw: Option<HnswParams>,
}

/// Converts a format-1 index in place; a format-2 index is left alone
/// (returns its manifest). Rebuilding the graph is the slow part.
pub fn upgrade(dir: &Path, progress: bool) -> Result<Manifest> {
    let what = || format!("{}: the upgrade stopped; the format-1 index is still in force", dir.display());
    super::catch_panic(what, || upgrade_inner(dir, progress))?
}

fn upgrade_inner(dir: &Path, progress: bool) -> Result<Manifest> {
    let _lock = lock_existing(dir)?;
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: not a longclip index (cannot read {MANIFEST})", dir.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: corrupt index manifest", path.display()))?;
    if value.get("format_version").and_then(|v| v.as_u64()) == Some(super::FORMAT_VERSION as u64) {
        return super::read_manifest(dir);
    }
    let old: V1Manifest = serde_json::from_value(value).with_context(|| format!("{}: not a format-1 longclip index", path.display()))?;
    if old.format_version != 1 {
        bail!("{}: index format version {} cannot be upgraded by this longclip", path.display(), old.format_version);
    }
    for name in [&old.files.embeddings, &old.files.entries, &old.files.rows, &old.files.skipped] {
        let len = std::fs::metadata(dir.join(name)).with_context(|| format!("{}: corrupt index: {name} is missing", dir.display()))?.len();
        if old.files.sizes.get(name) != Some(&len) {
            bail!("{}: corrupt index: {name} has {len} bytes, not what the manifest says", dir.display());
        }
    }
    // What an earlier, interrupted upgrade left.
    let _ = std::fs::remove_dir_all(dir.join(SEGMENTS_DIR));
    let skipped: Vec<Skipped> = read_jsonl(&dir.join(&old.files.skipped))?;
    let mut base = Manifest::empty(old.model.clone(), old.dim, old.dtype, old.hnsw, old.root.clone(), DEFAULT_SEGMENT_ROWS);
    base.generation = old.generation;
    base.next_id = old.next_id;
    base.created = old.created.clone();
    let manifest = Change::run(dir, &base, |change| {
        if old.count > 0 {
            let name = change.manifest.take_segment_name();
            change.adopt(&name);
            let meta = convert(dir, &name, &old, progress)?;
            change.manifest.segments.push(meta);
        }
        change.set_skipped(dir, &skipped)
    })?;
    for name in [&old.files.embeddings, &old.files.entries, &old.files.rows] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    if let Ok(listing) = std::fs::read_dir(dir) {
        for entry in listing.flatten() {
            if entry.file_name().to_string_lossy().starts_with("hnsw-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    collect_garbage(dir, &manifest);
    Ok(manifest)
}

/// Links the format-1 files into segment `name` and rebuilds its graph.
fn convert(dir: &Path, name: &str, old: &V1Manifest, progress: bool) -> Result<SegmentMeta> {
    let seg = segment_dir(dir, name);
    std::fs::create_dir_all(&seg).with_context(|| format!("{}: cannot create", seg.display()))?;
    let vectors = format!("vectors.{}", old.dtype.name());
    let mut sizes = BTreeMap::new();
    for (from, to) in [(&old.files.embeddings, &vectors), (&old.files.entries, &"entries.jsonl".to_string()), (&old.files.rows, &"rows.bin".to_string())] {
        if std::fs::hard_link(dir.join(from), seg.join(to)).is_err() {
            std::fs::copy(dir.join(from), seg.join(to)).with_context(|| format!("{}: cannot copy {from}", dir.display()))?;
        }
        sizes.insert(to.clone(), old.files.sizes[from]);
    }
    let rows = std::fs::read(seg.join("rows.bin"))?;
    let id_at = |r: usize| u64::from_le_bytes(rows[r * 16..r * 16 + 8].try_into().expect("8 bytes"));
    let hnsw = match old.hnsw {
        Some(params) => {
            let data = std::fs::read(seg.join(&vectors))?;
            let floats: Vec<f32> = match old.dtype {
                Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect(),
            };
            let (info, graph_sizes) = build_graph(&seg, &floats, old.dim, params, progress)?;
            sizes.extend(graph_sizes);
            Some(info)
        }
        None => None,
    };
    sync_dir(&seg)?;
    Ok(SegmentMeta { name: name.to_string(), rows: old.count, deleted: 0, deletes: None, dtype: old.dtype, min_id: id_at(0), max_id: id_at(old.count - 1), sizes, hnsw })
}
