//! Merging segments: the tiered policy that keeps the number of segments
//! logarithmic in the number of adds, `index optimize` (merge on request,
//! dropping deleted rows), and `index merge` (adopt the segments of other
//! indexes built with the same model, e.g. shard builds).
//!
//! A merge reads the stored vectors of its segments (f16 -> f32 -> f16 is
//! exact), writes one new segment with the live rows in id order and its own
//! HNSW graph, and commits a manifest that names it instead of its sources.
//! Nothing is re-embedded.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::commit::{start_writing, Change};
use super::lock::{lock_existing, lock_new, Lock};
use super::manifest::{Manifest, SegmentMeta};
use super::reader::Index;
use super::segment::{segment_dir, sync_dir, write_deletes};
use super::{Entry, Skipped};

/// Lucene's TieredMergePolicy, simplified. Segments fall into tiers by live
/// rows: tier t holds sizes in [floor · f^t, floor · f^(t+1)) with f =
/// `segments_per_tier` (everything under `floor_rows` is tier 0). When a tier
/// holds `segments_per_tier` segments, its smallest `segments_per_tier` are
/// merged into one segment of the next tier. So after n adds of similar size
/// there are at most (f - 1) segments per tier and log_f(n) tiers, up to
/// segments of `max_merged_rows / 2`, which are left as they are (a build's
/// 100k-row segments are).
#[derive(Clone, Debug, PartialEq)]
pub struct MergePolicy {
    pub segments_per_tier: usize,
    pub floor_rows: usize,
    /// The policy plans no merge whose result would exceed this, and leaves
    /// segments over half of it alone (Lucene's max merged segment size;
    /// `optimize` ignores it). Keeps a merge's graph build to minutes.
    pub max_merged_rows: usize,
    /// A segment with more than this fraction of deleted rows is rewritten.
    pub max_deleted_fraction: f64,
}

impl Default for MergePolicy {
    fn default() -> Self {
        MergePolicy { segments_per_tier: 10, floor_rows: 1000, max_merged_rows: 2 * super::DEFAULT_SEGMENT_ROWS, max_deleted_fraction: 0.5 }
    }
}

#[derive(Debug, Default)]
pub struct MergeReport {
    /// Merges committed, segments they read, live rows they wrote.
    pub merges: usize,
    pub segments_merged: usize,
    pub rows: usize,
    /// Deleted rows dropped.
    pub dropped: usize,
    /// Segments after.
    pub segments: usize,
    pub seconds: f64,
}

/// The next merge the policy wants (segment names), if any.
pub fn plan_merge(segments: &[SegmentMeta], policy: &MergePolicy) -> Option<Vec<String>> {
    let per_tier = policy.segments_per_tier.max(2);
    if let Some(s) = segments.iter().find(|s| s.rows > 0 && s.deleted as f64 > policy.max_deleted_fraction * s.rows as f64) {
        return Some(vec![s.name.clone()]);
    }
    let tier = |s: &SegmentMeta| {
        let mut t = 0;
        let mut bound = policy.floor_rows.max(1) * per_tier;
        while s.live() >= bound {
            t += 1;
            bound = bound.saturating_mul(per_tier);
        }
        t
    };
    let mut tiers: BTreeMap<usize, Vec<&SegmentMeta>> = BTreeMap::new();
    for s in segments.iter().filter(|s| s.live() <= policy.max_merged_rows / 2) {
        tiers.entry(tier(s)).or_default().push(s);
    }
    for (_, mut members) in tiers {
        if members.len() < per_tier {
            continue;
        }
        members.sort_by_key(|s| (s.live(), s.name.clone()));
        let chosen = &members[..per_tier];
        if chosen.iter().map(|s| s.live()).sum::<usize>() <= policy.max_merged_rows {
            return Some(chosen.iter().map(|s| s.name.clone()).collect());
        }
    }
    None
}

/// Runs the policy's merges on an index whose lock the caller holds.
pub(crate) fn merge_locked(dir: &Path, _lock: &Lock, policy: &MergePolicy, progress: bool) -> Result<MergeReport> {
    let start = Instant::now();
    let mut report = MergeReport::default();
    loop {
        let index = Index::open(dir)?;
        let Some(names) = plan_merge(&index.manifest.segments, policy) else { break };
        merge_segments(dir, &index, &names, progress, &mut report)?;
    }
    report.segments = super::read_manifest(dir)?.segments.len();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Takes the lock and runs the policy's merges.
pub fn maybe_merge(dir: &Path, policy: &MergePolicy, progress: bool) -> Result<MergeReport> {
    let lock = lock_existing(dir)?;
    if start_writing(dir)?.is_none() {
        bail!("{}: not a longclip index (no manifest)", dir.display());
    }
    merge_locked(dir, &lock, policy, progress)
}

/// `index optimize`: merges until at most `max_segments` remain and no
/// segment holds deleted rows (Lucene's forceMerge + expungeDeletes).
pub fn optimize(dir: &Path, max_segments: usize, progress: bool) -> Result<MergeReport> {
    let what = || format!("{}: the merge stopped; the index is as it was before it", dir.display());
    super::catch_panic(what, || optimize_inner(dir, max_segments, progress))?
}

fn optimize_inner(dir: &Path, max_segments: usize, progress: bool) -> Result<MergeReport> {
    if max_segments == 0 {
        bail!("--max-segments must be at least 1");
    }
    let _lock = lock_existing(dir)?;
    if start_writing(dir)?.is_none() {
        bail!("{}: not a longclip index (no manifest)", dir.display());
    }
    let start = Instant::now();
    let mut report = MergeReport::default();
    let index = Index::open(dir)?;
    let mut segments: Vec<&SegmentMeta> = index.manifest.segments.iter().collect();
    segments.sort_by_key(|s| (s.live(), s.name.clone()));
    let excess = segments.len().saturating_sub(max_segments);
    let mut chosen: Vec<String> = if excess > 0 { segments[..=excess].iter().map(|s| s.name.clone()).collect() } else { Vec::new() };
    for s in &segments {
        if s.deleted > 0 && !chosen.contains(&s.name) {
            chosen.push(s.name.clone());
        }
    }
    if !chosen.is_empty() {
        merge_segments(dir, &index, &chosen, progress, &mut report)?;
    }
    report.segments = super::read_manifest(dir)?.segments.len();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// One merge: the live rows of `names`, in id order, become one new segment.
fn merge_segments(dir: &Path, index: &Index, names: &[String], progress: bool, report: &mut MergeReport) -> Result<()> {
    let wanted: HashSet<String> = names.iter().cloned().collect();
    let mut rows: Vec<(u64, usize)> = Vec::new();
    let mut dropped = 0;
    for (s, seg) in index.segments().iter().enumerate() {
        if wanted.contains(&seg.meta.name) {
            let start = index.segment_start(s);
            rows.extend((0..seg.rows()).filter(|&r| !seg.is_deleted(r)).map(|r| (seg.id(r), start + r)));
            dropped += seg.meta.deleted;
        }
    }
    rows.sort_unstable();
    if progress {
        eprintln!("merging {} segments ({} rows, {dropped} deleted dropped)", names.len(), rows.len());
    }
    Change::run(dir, &index.manifest, |change| {
        change.step = Some("merge-written");
        let mut vector = vec![0f32; index.dim()];
        change.write_segment(dir, progress, |w| {
            for &(_, row) in &rows {
                index.row(row, &mut vector);
                w.push(&index.entry(row)?, &vector)?;
            }
            Ok(())
        })?;
        change.drop_segments(&wanted);
        Ok(())
    })?;
    report.merges += 1;
    report.segments_merged += names.len();
    report.rows += rows.len();
    report.dropped += dropped;
    Ok(())
}

// ---------------------------------------------------------------------------
// index merge

/// `index merge SRC... --into DST`: DST (created if missing) adopts every
/// segment of the sources, without re-embedding: vectors and graphs are
/// hard-linked (copied across file systems), entries get new ids, paths are
/// re-based on DST's root, deletion bitmaps carry over. Sources must have
/// the same model (fingerprint), dim and dtype as DST and each other, and no
/// path may be in two of them. Sources are left as they are.
pub fn merge_indexes(sources: &[PathBuf], dst: &Path, policy: Option<&MergePolicy>, progress: bool) -> Result<MergeReport> {
    let what = || format!("{}: the merge stopped; the index is as it was before it", dst.display());
    super::lock::cleaning_up(dst, || super::catch_panic(what, || merge_indexes_inner(sources, dst, policy, progress))?)
}

fn merge_indexes_inner(sources: &[PathBuf], dst: &Path, policy: Option<&MergePolicy>, progress: bool) -> Result<MergeReport> {
    let start = Instant::now();
    if sources.is_empty() {
        bail!("give at least one source index");
    }
    let dst_abs = super::absolute_path(dst);
    let mut locks = Vec::new();
    let mut opened = Vec::new();
    let mut seen = HashSet::new();
    for src in sources {
        let abs = super::absolute_path(src);
        if abs == dst_abs {
            bail!("{}: an index cannot be merged into itself", src.display());
        }
        if !seen.insert(abs) {
            bail!("{}: given twice", src.display());
        }
        locks.push(lock_existing(src)?);
        if src.join(super::STAGING_DIR).exists() {
            bail!("{}: has an unfinished build (staging/); finish it by rerunning the same `longclip index build` command, then merge", src.display());
        }
        opened.push(Index::open(src)?);
    }
    let dst_lock = lock_new(dst)?;
    let fresh = !dst.join(super::MANIFEST).exists();
    let base = match start_writing(dst)? {
        Some(m) => m,
        None => {
            let m = &opened[0].manifest;
            let mut empty = Manifest::empty(m.model.clone(), m.dim, m.dtype, m.hnsw, m.root.clone(), m.segment_rows);
            empty.created = m.created.clone();
            empty
        }
    };
    // Against DST, or against the first source when DST is new.
    let against = if fresh { sources[0].as_path() } else { dst };
    for src in &opened {
        check_compatible(&base, against, &src.manifest, &src.dir)?;
    }
    let existing = if base.segments.is_empty() { None } else { Some(Index::open(dst)?) };
    check_disjoint(existing.as_ref(), &opened)?;
    let mut skipped: Vec<Skipped> = existing.as_ref().map(|i| i.skipped()).transpose()?.unwrap_or_default();
    let mut report = MergeReport::default();
    Change::run(dst, &base, |change| {
        change.manifest.shard = None;
        for src in &opened {
            if !src.segments().is_empty() {
                // What computed the adopted rows: `f32+int8` after an int8 shard joins f32 ones.
                for d in src.manifest.compute_dtypes() {
                    change.manifest.note_compute_dtype(d);
                }
            }
            for (s, seg) in src.segments().iter().enumerate() {
                adopt_segment(dst, change, src, s)?;
                report.segments_merged += 1;
                report.rows += seg.meta.live();
            }
            for mut s in src.skipped()? {
                s.path = rebase(&s.path, src, change.manifest.root.as_deref());
                skipped.push(s);
            }
        }
        change.set_skipped(dst, &skipped)
    })?;
    report.merges = 1;
    if let Some(policy) = policy {
        merge_locked(dst, &dst_lock, policy, progress)?;
    }
    drop(locks);
    report.segments = super::read_manifest(dst)?.segments.len();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn check_compatible(base: &Manifest, dst: &Path, m: &Manifest, src: &Path) -> Result<()> {
    let (a, b) = (dst.display(), src.display());
    if m.dim != base.dim {
        bail!("{b} holds {}-d embeddings but {a} holds {}-d: indexes of different models cannot be merged", m.dim, base.dim);
    }
    if m.dtype != base.dtype {
        bail!("{b} stores {} but {a} stores {}: rebuild one with the other's --dtype", m.dtype.name(), base.dtype.name());
    }
    if let (Some(x), Some(y)) = (&m.model.fingerprint, &base.model.fingerprint) {
        if x != y {
            bail!(
                "{b} was built with another model ({}, {x}) than {a} ({}, {y}): indexes of different models cannot be merged",
                m.model.path.as_deref().unwrap_or("?"),
                base.model.path.as_deref().unwrap_or("?")
            );
        }
    }
    if m.model.fingerprint.is_some() != base.model.fingerprint.is_some() {
        bail!("{b} and {a}: one records its model and the other does not (imported); cannot check they match");
    }
    Ok(())
}

/// Refuses sources whose entries (as absolute paths or ids) overlap.
fn check_disjoint(existing: Option<&Index>, sources: &[Index]) -> Result<()> {
    let mut seen: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for index in existing.into_iter().chain(sources) {
        for (_, e) in index.live_entries()? {
            if let Some(other) = seen.insert(index.resolve(&e), index.dir.clone()) {
                bail!("{}: {} is also in {}: merged indexes must hold different files (remove it from one first)", index.dir.display(), index.resolve(&e).display(), other.display());
            }
        }
    }
    Ok(())
}

/// An entry path relative to `root` when the file is under it, else absolute.
fn rebase(path: &str, src: &Index, root: Option<&str>) -> String {
    if src.manifest.root.as_deref() == root {
        return path.to_string();
    }
    let full = super::resolve(src.manifest.root.as_deref(), path);
    match root.and_then(|r| full.strip_prefix(r).ok()) {
        Some(rel) => rel.display().to_string(),
        None => full.display().to_string(),
    }
}

/// Copies segment `s` of `src` into `dst` under a new name: vectors and
/// graph linked, entries and rows rewritten with new ids.
fn adopt_segment(dst: &Path, change: &mut Change, src: &Index, s: usize) -> Result<()> {
    let seg = &src.segments()[s];
    let name = change.manifest.take_segment_name();
    change.adopt(&name);
    let dir = segment_dir(dst, &name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut sizes = BTreeMap::new();
    let mut linked = vec![seg.meta.vectors_file()];
    if let Some(info) = &seg.meta.hnsw {
        linked.extend(info.files());
    }
    if seg.meta.sizes.contains_key(super::segment::DUPLICATES) {
        linked.push(super::segment::DUPLICATES.to_string());
    }
    for file in &linked {
        link_or_copy(&seg.dir.join(file), &dir.join(file))?;
        sizes.insert(file.clone(), seg.meta.sizes[file]);
    }
    let root = change.manifest.root.clone();
    let first_id = change.manifest.next_id;
    let mut entries = std::io::BufWriter::new(std::fs::File::create(dir.join("entries.jsonl"))?);
    let mut rows = std::io::BufWriter::new(std::fs::File::create(dir.join("rows.bin"))?);
    let mut offset = 0u64;
    for r in 0..seg.rows() {
        let e = seg.entry(r)?;
        let e = Entry { id: first_id + r as u64, path: rebase(&e.path, src, root.as_deref()), ..e };
        let mut line = serde_json::to_vec(&e)?;
        line.push(b'\n');
        entries.write_all(&line)?;
        rows.write_all(&e.id.to_le_bytes())?;
        rows.write_all(&offset.to_le_bytes())?;
        offset += line.len() as u64;
    }
    super::segment::finish_file(entries, &dir.join("entries.jsonl"))?;
    super::segment::finish_file(rows, &dir.join("rows.bin"))?;
    sizes.insert("entries.jsonl".into(), offset);
    sizes.insert("rows.bin".into(), seg.rows() as u64 * 16);
    change.manifest.next_id = first_id + seg.rows() as u64;
    let deletes = match seg.meta.deleted {
        0 => None,
        _ => Some(write_deletes(dst, &name, change.generation(), seg.deletes())?),
    };
    sync_dir(&dir)?;
    let max_id = first_id + seg.rows().saturating_sub(1) as u64;
    change.manifest.segments.push(SegmentMeta { name, deletes, sizes, min_id: first_id, max_id, ..seg.meta.clone() });
    Ok(())
}

fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    std::fs::File::open(to).and_then(|f| f.sync_all()).with_context(|| format!("{}: cannot sync", to.display()))
}
