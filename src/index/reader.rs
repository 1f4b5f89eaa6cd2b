//! `Index`: a read-only view of the segments one manifest names.
//!
//! Rows are numbered globally: segment 0's rows first, then segment 1's, in
//! manifest order, deleted rows included (they keep their numbers and are
//! skipped by every search and listing). A row number is valid for the
//! opened view only; ids are the stable handle.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::manifest::{read_manifest, Manifest};
use super::segment::Segment;
use super::{read_jsonl, Entry, Skipped};

pub struct Index {
    pub dir: PathBuf,
    pub manifest: Manifest,
    segments: Vec<Segment>,
    /// First global row of each segment.
    starts: Vec<usize>,
    rows: usize,
}

impl Index {
    /// Opens the committed manifest and maps its segments; errors say what
    /// is missing or wrong. Reads no row data.
    pub fn open(dir: &Path) -> Result<Index> {
        let manifest = read_manifest(dir)?;
        let segments = manifest.segments.iter().map(|m| Segment::open(dir, m, manifest.dim)).collect::<Result<Vec<_>>>()?;
        let mut starts = Vec::with_capacity(segments.len());
        let mut rows = 0;
        for s in &segments {
            starts.push(rows);
            rows += s.rows();
        }
        Ok(Index { dir: dir.to_path_buf(), manifest, segments, starts, rows })
    }

    /// Live entries (what a search can return).
    pub fn len(&self) -> usize {
        self.manifest.count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dim(&self) -> usize {
        self.manifest.dim
    }

    /// Global rows, deleted ones included.
    pub fn total_rows(&self) -> usize {
        self.rows
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The first global row of segment `s`.
    pub fn segment_start(&self, s: usize) -> usize {
        self.starts[s]
    }

    /// (segment, row within it) of a global row.
    pub fn locate(&self, row: usize) -> (usize, usize) {
        let s = self.starts.partition_point(|&start| start <= row) - 1;
        (s, row - self.starts[s])
    }

    pub fn is_deleted(&self, row: usize) -> bool {
        let (s, r) = self.locate(row);
        self.segments[s].is_deleted(r)
    }

    /// Live global rows in order.
    pub fn live_rows(&self) -> impl Iterator<Item = usize> + '_ {
        self.segments.iter().enumerate().flat_map(move |(s, seg)| (0..seg.rows()).filter(move |&r| !seg.is_deleted(r)).map(move |r| self.starts[s] + r))
    }

    /// Row `row` as f32. `out.len()` = dim.
    pub fn row(&self, row: usize, out: &mut [f32]) {
        let (s, r) = self.locate(row);
        self.segments[s].row(r, out)
    }

    pub fn row_vec(&self, row: usize) -> Vec<f32> {
        let mut v = vec![0f32; self.dim()];
        self.row(row, &mut v);
        v
    }

    pub fn id(&self, row: usize) -> u64 {
        let (s, r) = self.locate(row);
        self.segments[s].id(r)
    }

    /// The live row holding `id`, if any.
    pub fn row_of_id(&self, id: u64) -> Option<usize> {
        self.segments.iter().enumerate().find_map(|(s, seg)| seg.row_of_id(id).filter(|&r| !seg.is_deleted(r)).map(|r| self.starts[s] + r))
    }

    /// Parses the entry of `row`.
    pub fn entry(&self, row: usize) -> Result<Entry> {
        let (s, r) = self.locate(row);
        self.segments[s].entry(r)
    }

    /// Every live entry with its global row, in row order.
    pub fn live_entries(&self) -> Result<Vec<(usize, Entry)>> {
        self.live_rows().map(|r| Ok((r, self.entry(r)?))).collect()
    }

    pub fn skipped(&self) -> Result<Vec<Skipped>> {
        if self.manifest.skipped.is_empty() {
            return Ok(Vec::new());
        }
        read_jsonl(&self.dir.join(&self.manifest.skipped))
    }

    /// Where the file of an entry is on disk.
    pub fn resolve(&self, entry: &Entry) -> PathBuf {
        super::resolve(self.manifest.root.as_deref(), &entry.path)
    }

    /// True when another manifest has been committed since this view was opened.
    pub fn is_stale(&self) -> bool {
        read_manifest(&self.dir).map(|m| m.generation != self.manifest.generation).unwrap_or(false)
    }
}

/// An index that follows its commits: `get` returns the newest committed
/// view, reopening when `manifest.json` was replaced (checked by a stat per
/// call). Views already handed out keep working on their mapped files.
/// What `serve` holds, so writers never need a restart of the server.
pub struct LiveIndex {
    dir: PathBuf,
    current: std::sync::RwLock<(Option<Stamp>, std::sync::Arc<Index>)>,
}

/// Identifies one manifest file: a commit renames a new file (new inode) over it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    inode: u64,
    modified: Option<std::time::SystemTime>,
    len: u64,
}

fn stamp(dir: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir.join(super::MANIFEST)).ok()?;
    Some(Stamp { inode: m.ino(), modified: m.modified().ok(), len: m.len() })
}

impl LiveIndex {
    pub fn open(dir: &Path) -> Result<LiveIndex> {
        let before = stamp(dir);
        let index = Index::open(dir)?;
        Ok(LiveIndex { dir: dir.to_path_buf(), current: std::sync::RwLock::new((before, std::sync::Arc::new(index))) })
    }

    /// The newest committed view. If reopening fails (say, mid-upgrade), the
    /// previous view is kept and the error printed once per change.
    pub fn get(&self) -> std::sync::Arc<Index> {
        let now = stamp(&self.dir);
        {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            if current.0 == now {
                return current.1.clone();
            }
        }
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.0 != now {
            match Index::open(&self.dir) {
                Ok(index) => {
                    eprintln!("{}: reopened at generation {} ({} entries, {} segments)", crate::term::path(&self.dir), index.manifest.generation, index.len(), index.segments().len());
                    current.1 = std::sync::Arc::new(index);
                }
                Err(e) => eprintln!("warning: {}: keeping the open view: {}", crate::term::path(&self.dir), crate::term::escape_lines(&format!("{e:#}"))),
            }
            current.0 = now;
        }
        current.1.clone()
    }
}
