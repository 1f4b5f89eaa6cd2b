//! `index export`: clip-retrieval's layout for FAISS/autofaiss.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::import::npy_header;
use super::reader::Index;
use super::segment::finish_file;
use super::Dtype;

/// Writes `img_emb/img_emb_0.npy` (live rows in row order, f16 or f32 as
/// stored) and `metadata/metadata_0.csv` (image_path, id, caption; the same
/// order) under a temporary name, then renames the folder into place.
pub fn export(index: &Index, out: &Path) -> Result<()> {
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{}: already exists and is not empty", out.display());
    }
    let tmp = crate::export::temp_path(out);
    let result = write_export(index, &tmp);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        return result;
    }
    if out.exists() {
        std::fs::remove_dir(out)?;
    }
    std::fs::rename(&tmp, out).with_context(|| format!("{}: cannot rename into place", out.display()))
}

fn write_export(index: &Index, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("img_emb"))?;
    std::fs::create_dir_all(dir.join("metadata"))?;
    let m = &index.manifest;
    let descr = match m.dtype {
        Dtype::F16 => "<f2",
        Dtype::F32 => "<f4",
    };
    let path = dir.join("img_emb/img_emb_0.npy");
    let mut w = BufWriter::new(File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?);
    w.write_all(&npy_header(descr, m.count, m.dim))?;
    let row_bytes = m.dim * m.dtype.bytes();
    for seg in index.segments() {
        let raw: &[u8] = match (seg.f16_rows(), seg.f32_rows()) {
            (Some(h), _) => super::bytes_of(h),
            (_, Some(f)) => super::bytes_of(f),
            _ => &[],
        };
        for (r, bytes) in raw.chunks_exact(row_bytes).enumerate() {
            if !seg.is_deleted(r) {
                w.write_all(bytes)?;
            }
        }
    }
    finish_file(w, &path)?;
    let path = dir.join("metadata/metadata_0.csv");
    let mut w = BufWriter::new(File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?);
    writeln!(w, "image_path,id,caption")?;
    for (_, e) in index.live_entries()? {
        let full = index.resolve(&e).display().to_string();
        writeln!(w, "{},{},{}", csv_field(&full), e.id, csv_field(e.caption.as_deref().unwrap_or("")))?;
    }
    finish_file(w, &path)
}

/// RFC 4180 quoting when needed.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
