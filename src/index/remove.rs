//! `index remove`: deletion bitmaps only. The rows stay in their segments
//! until a merge drops them; no search returns them from the commit on.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::commit::{start_writing, Change};
use super::deletes::Deletes;
use super::lock::lock_existing;
use super::reader::Index;

/// Which entries to drop.
#[derive(Default)]
pub struct Selection {
    pub ids: Vec<u64>,
    /// As stored, or any path that resolves to the same file.
    pub paths: Vec<String>,
    /// Entries whose files no longer exist.
    pub missing: bool,
}

pub struct RemoveReport {
    pub removed: usize,
    /// Live entries after.
    pub count: usize,
    /// Requested ids or paths that matched nothing.
    pub not_found: Vec<String>,
    pub seconds: f64,
}

/// Marks the selected entries deleted (and drops selected paths from the
/// skipped list) in one commit. Ids are found by binary search in each
/// segment; paths and `missing` read the entries.
pub fn remove(dir: &Path, selection: &Selection, progress: bool) -> Result<RemoveReport> {
    let what = || format!("{}: the removal stopped; the index is as it was before it", dir.display());
    super::catch_panic(what, || remove_inner(dir, selection, progress))?
}

fn remove_inner(dir: &Path, selection: &Selection, _progress: bool) -> Result<RemoveReport> {
    let start = std::time::Instant::now();
    let _lock = lock_existing(dir)?;
    start_writing(dir)?;
    let index = Index::open(dir)?;
    let mut dropped: Vec<usize> = Vec::new();
    let mut not_found = Vec::new();
    for &id in &selection.ids {
        match index.row_of_id(id) {
            Some(row) => dropped.push(row),
            None => not_found.push(format!("id {id}")),
        }
    }
    let mut matched_paths = HashSet::new();
    if !selection.paths.is_empty() || selection.missing {
        let wanted: HashSet<PathBuf> = selection.paths.iter().map(|p| super::absolute_path(Path::new(p))).collect();
        for (row, e) in index.live_entries()? {
            let resolved = super::absolute_path(&index.resolve(&e));
            if let Some(p) = selection.paths.iter().find(|p| **p == e.path || wanted.contains(&resolved) && super::absolute_path(Path::new(p.as_str())) == resolved) {
                matched_paths.insert(p.clone());
                dropped.push(row);
            }
            // A URL names no local file: --missing cannot judge it.
            if selection.missing && !super::is_url(&e.path) && !resolved.exists() {
                dropped.push(row);
            }
        }
    }
    let mut skipped = index.skipped()?;
    let before = skipped.len();
    // Only --path names skipped files; ids and --missing leave the list alone.
    skipped.retain(|s| {
        if selection.paths.is_empty() {
            return true;
        }
        let full = super::absolute_path(&super::resolve(index.manifest.root.as_deref(), &s.path));
        let hit = selection.paths.iter().find(|p| **p == s.path || full == super::absolute_path(Path::new(p.as_str())));
        if let Some(p) = hit {
            matched_paths.insert(p.clone());
        }
        hit.is_none()
    });
    not_found.extend(selection.paths.iter().filter(|p| !matched_paths.contains(*p)).cloned());

    let mut deletes: HashMap<usize, Deletes> = HashMap::new();
    let mut removed = 0;
    for row in dropped {
        let (s, r) = index.locate(row);
        let d = deletes.entry(s).or_insert_with(|| index.segments()[s].deletes().clone());
        removed += d.delete(r) as usize;
    }
    if removed == 0 && skipped.len() == before {
        return Ok(RemoveReport { removed: 0, count: index.len(), not_found, seconds: start.elapsed().as_secs_f64() });
    }
    let manifest = Change::run(dir, &index.manifest, |change| {
        for (s, d) in &deletes {
            change.set_deletes(dir, &index.segments()[*s].meta.name, d)?;
        }
        if skipped.len() != before {
            change.set_skipped(dir, &skipped)?;
        }
        Ok(())
    })?;
    Ok(RemoveReport { removed, count: manifest.count, not_found, seconds: start.elapsed().as_secs_f64() })
}
