//! A partition's output files, written under temporary names and renamed
//! into place only when the partition is complete.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use half::f16;

use crate::export::temp_path;
use crate::index::npy_header;

/// A float16 `.npy` [N, D] streamed to a temporary file row by row. numpy's
/// header keeps room for a 21-digit row count, so the final count is
/// written over the first header in place, at the same length.
pub struct NpyWriter {
    file: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    cols: usize,
    rows: usize,
}

impl NpyWriter {
    pub fn create(path: &Path, cols: usize) -> Result<NpyWriter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        }
        let tmp = temp_path(path);
        let file = File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        file.write_all(&npy_header("<f2", 0, cols)).with_context(|| format!("{}: cannot write", tmp.display()))?;
        Ok(NpyWriter { file, tmp, path: path.to_path_buf(), cols, rows: 0 })
    }

    /// Appends rows given as f32 (rounded to nearest f16, as torch's `.to(torch.float16)`).
    pub fn push_rows(&mut self, rows: &[f32]) -> Result<()> {
        if rows.len() % self.cols != 0 {
            bail!("{}: {} values are not whole rows of {}", self.path.display(), rows.len(), self.cols);
        }
        let bytes: Vec<u8> = rows.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
        self.file.write_all(&bytes).with_context(|| format!("{}: cannot write", self.tmp.display()))?;
        self.rows += rows.len() / self.cols;
        Ok(())
    }

    /// Writes the final header, syncs, and leaves the file at its temporary
    /// name; [`NpyWriter::publish`] renames it.
    pub fn finish(mut self) -> Result<Pending> {
        let header = npy_header("<f2", self.rows, self.cols);
        let ctx = || format!("{}: cannot write", self.tmp.display());
        if header.len() != npy_header("<f2", 0, self.cols).len() {
            bail!("{}: {} rows do not fit numpy's header", self.path.display(), self.rows);
        }
        self.file.flush().with_context(ctx)?;
        let mut file = self.file.into_inner().map_err(|e| e.into_error()).with_context(ctx)?;
        file.seek(SeekFrom::Start(0)).with_context(ctx)?;
        file.write_all(&header).with_context(ctx)?;
        file.sync_all().with_context(ctx)?;
        Ok(Pending { tmp: self.tmp, path: self.path })
    }

    /// Gives up: the temporary file goes.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// A complete file at its temporary name.
pub struct Pending {
    pub tmp: PathBuf,
    pub path: PathBuf,
}

impl Pending {
    pub fn publish(self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path).with_context(|| format!("{}: cannot rename into place", self.path.display()))
    }

    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}
