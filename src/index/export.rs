//! `index export`: clip-retrieval's layout for FAISS/autofaiss.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::import::npy_header;
use super::reader::Index;
use super::segment::finish_file;
use super::Dtype;
use crate::table::{write_parquet, Column, Value};

/// Writes `img_emb/img_emb_0.npy` (live rows in row order, f16 or f32 as
/// stored) and `metadata/metadata_0.parquet` (columns `image_path`: the
/// full path or URL; `id`: int64; `caption`: string or null; the same
/// order, as clip-retrieval's pandas writes it) under a temporary name,
/// then renames the folder into place.
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
    write_metadata(index, &dir.join("metadata/metadata_0.parquet"))
}

/// The metadata table, one row per live entry in row order.
fn write_metadata(index: &Index, path: &Path) -> Result<()> {
    let entries = index.live_entries()?;
    let mut image_path = Vec::with_capacity(entries.len());
    let mut id = Vec::with_capacity(entries.len());
    let mut caption = Vec::with_capacity(entries.len());
    for (_, e) in entries {
        image_path.push(Value::Text(index.resolve(&e).display().to_string()));
        // Ids stay below 2^63: they count rows ever added.
        id.push(Value::Int(e.id as i64));
        caption.push(e.caption.map_or(Value::Null, Value::Text));
    }
    let column = |name: &str, values| Column { name: name.to_string(), values };
    write_parquet(path, &[column("image_path", image_path), column("id", id), column("caption", caption)])
}
