//! Changing an index: a `Change` assembles the next manifest (new segments,
//! new deletion bitmaps, a new skipped list), writes its files, and commits
//! by renaming the manifest. On any error the files it wrote are removed and
//! the committed state stays in force. After a commit, files that no
//! manifest names are deleted (`collect_garbage`); readers that mapped them
//! keep their mappings.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::deletes::Deletes;
use super::manifest::{write_manifest, Manifest, SegmentMeta};
use super::segment::{segment_dir, write_deletes, SegmentWriter};
use super::{now_rfc3339, Skipped, MANIFEST, SEGMENTS_DIR};

/// Tests set this to a step name to abort the process there (like kill -9):
/// `segment-written`, `deletes-written`, `merge-written` (files written,
/// before the commit) or `committed` (after the commit, before the old
/// files are deleted). Any other value is ignored.
pub const CRASH_AT_ENV: &str = "LONGCLIP_TEST_CRASH_AT";

pub(crate) fn crash_point(step: &str) {
    if std::env::var(CRASH_AT_ENV).is_ok_and(|v| v == step) {
        eprintln!("{CRASH_AT_ENV}: aborting at {step}");
        std::process::abort();
    }
}

/// The next manifest being assembled.
pub(crate) struct Change {
    pub manifest: Manifest,
    /// The crash-test step before the commit (default: by what was written).
    pub step: Option<&'static str>,
    written_segments: Vec<String>,
    written_files: Vec<PathBuf>,
}

impl Change {
    /// Runs `f` on a change of `current` and commits it; on error removes
    /// what `f` wrote and leaves `current` in force.
    pub fn run(dir: &Path, current: &Manifest, f: impl FnOnce(&mut Change) -> Result<()>) -> Result<Manifest> {
        let mut manifest = current.clone();
        manifest.generation += 1;
        let mut change = Change { manifest, step: None, written_segments: Vec::new(), written_files: Vec::new() };
        let result = f(&mut change).and_then(|()| change.commit(dir));
        match result {
            Ok(m) => {
                collect_garbage(dir, &m);
                Ok(m)
            }
            Err(e) => {
                change.discard(dir);
                Err(e)
            }
        }
    }

    pub fn generation(&self) -> u64 {
        self.manifest.generation
    }

    /// Writes a new segment with the rows `fill` pushes and adds it; an
    /// empty segment is dropped. Returns its metadata.
    pub fn write_segment(&mut self, dir: &Path, progress: bool, fill: impl FnOnce(&mut SegmentWriter) -> Result<()>) -> Result<Option<SegmentMeta>> {
        let name = self.manifest.take_segment_name();
        self.written_segments.push(name.clone());
        let mut w = SegmentWriter::create(dir, &name, self.manifest.dim, self.manifest.dtype, self.manifest.hnsw)?;
        fill(&mut w)?;
        if w.len() == 0 {
            drop(w);
            let _ = std::fs::remove_dir_all(segment_dir(dir, &name));
            return Ok(None);
        }
        let meta = w.finish(progress)?;
        self.manifest.segments.push(meta.clone());
        Ok(Some(meta))
    }

    /// Registers a segment folder the caller writes itself (adopted from
    /// another index): removed on failure, added with `meta` on success.
    pub fn adopt(&mut self, name: &str) {
        self.written_segments.push(name.to_string());
    }

    /// Writes a new bitmap for segment `name` and makes it the one in force.
    pub fn set_deletes(&mut self, dir: &Path, name: &str, deletes: &Deletes) -> Result<()> {
        let file = write_deletes(dir, name, self.generation(), deletes)?;
        self.written_files.push(segment_dir(dir, name).join(&file));
        let meta = self.manifest.segments.iter_mut().find(|s| s.name == name).expect("segment in the manifest");
        meta.deleted = deletes.count();
        meta.deletes = (deletes.count() > 0).then_some(file);
        Ok(())
    }

    /// Writes a new skipped list and makes it the one in force.
    pub fn set_skipped(&mut self, dir: &Path, skipped: &[Skipped]) -> Result<()> {
        let name = format!("skipped-{}.jsonl", self.generation());
        let mut bytes = Vec::new();
        for s in skipped {
            serde_json::to_writer(&mut bytes, s)?;
            bytes.push(b'\n');
        }
        let path = dir.join(&name);
        self.written_files.push(path.clone());
        crate::export::write_atomic(&path, &bytes)?;
        self.manifest.skipped = name;
        self.manifest.skipped_size = bytes.len() as u64;
        self.manifest.skipped_count = skipped.len();
        Ok(())
    }

    /// Drops segments from the manifest (their files go after the commit).
    pub fn drop_segments(&mut self, names: &HashSet<String>) {
        self.manifest.segments.retain(|s| !names.contains(&s.name));
    }

    fn commit(&mut self, dir: &Path) -> Result<Manifest> {
        self.manifest.recount();
        self.manifest.updated = now_rfc3339();
        crash_point(self.step.unwrap_or(if self.written_segments.is_empty() { "deletes-written" } else { "segment-written" }));
        write_manifest(dir, &self.manifest)?;
        crash_point("committed");
        Ok(self.manifest.clone())
    }

    fn discard(&self, dir: &Path) {
        for name in &self.written_segments {
            let _ = std::fs::remove_dir_all(segment_dir(dir, name));
        }
        for path in &self.written_files {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Deletes what `manifest` does not name: segment folders, old bitmaps, old
/// skipped lists, stray temporaries. Run after each commit and when a writer
/// starts (a writer that died leaves its uncommitted files). Errors are
/// ignored: garbage left now is collected next time.
pub(crate) fn collect_garbage(dir: &Path, manifest: &Manifest) {
    let live: HashSet<&str> = manifest.segments.iter().map(|s| s.name.as_str()).collect();
    if let Ok(listing) = std::fs::read_dir(dir.join(SEGMENTS_DIR)) {
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(name.as_str()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    for meta in &manifest.segments {
        let Ok(listing) = std::fs::read_dir(segment_dir(dir, &meta.name)) else { continue };
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("deletes-") && meta.deletes.as_deref() != Some(name.as_str()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    if let Ok(listing) = std::fs::read_dir(dir) {
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let old_skipped = name.starts_with("skipped-") && name != manifest.skipped;
            if old_skipped || name.starts_with(&format!(".{MANIFEST}.tmp-")) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// At a writer's start: the committed manifest (if any) after collecting
/// what dead writers left.
pub(crate) fn start_writing(dir: &Path) -> Result<Option<Manifest>> {
    if !dir.join(MANIFEST).exists() {
        let _ = std::fs::remove_dir_all(dir.join(SEGMENTS_DIR));
        return Ok(None);
    }
    let manifest = super::read_manifest(dir)?;
    collect_garbage(dir, &manifest);
    Ok(Some(manifest))
}
