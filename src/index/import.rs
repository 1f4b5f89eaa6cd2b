//! `index import`: an index (or new segments of one) from embeddings made
//! elsewhere, as a 2-D `.npy` matrix plus one id per line; and the `.npy`
//! reading and header writing that `search --vectors` and `export` share.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use half::f16;

use super::commit::{start_writing, Change};
use super::hnsw::HnswParams;
use super::lock::{lock_existing, lock_new};
use super::manifest::Manifest;
use super::merge::{merge_locked, MergePolicy};
use super::{Dtype, Entry, ModelInfo, MANIFEST};

#[derive(Clone)]
pub struct ImportOptions {
    pub embeddings: PathBuf,
    pub ids: PathBuf,
    /// For a new index; an appended one keeps its dtype.
    pub dtype: Dtype,
    pub hnsw: Option<HnswParams>,
    /// The model that made the embeddings, when known (identity checks at search time).
    pub model: Option<ModelInfo>,
    pub progress: bool,
    /// Add to an existing index (new segments) instead of refusing it.
    pub append: bool,
    /// Rows per segment written.
    pub segment_rows: usize,
    /// Merge segments afterwards by this policy (appends).
    pub merge: Option<MergePolicy>,
}

/// Builds an index from an `.npy` matrix [N, D] and N ids (one per line,
/// `id<TAB>caption` keeps a caption), or appends them to one. Rows are
/// L2-normalized; a zero or non-finite row is an error naming it. Writes
/// segments of `segment_rows` rows in one commit.
pub fn import(dir: &Path, opts: &ImportOptions) -> Result<Manifest> {
    let what = || format!("{}: the import stopped; the index is as it was before it", dir.display());
    super::lock::cleaning_up(dir, || super::catch_panic(what, || import_inner(dir, opts))?)
}

fn import_inner(dir: &Path, opts: &ImportOptions) -> Result<Manifest> {
    import_parts(dir, opts, || {
        let (rows, _) = npy_shape(&opts.embeddings)?;
        let ids_text = std::fs::read_to_string(&opts.ids).with_context(|| format!("{}: cannot read", opts.ids.display()))?;
        let ids: Vec<&str> = ids_text.lines().collect();
        let ids = if ids.last() == Some(&"") { &ids[..ids.len() - 1] } else { &ids[..] };
        if ids.len() != rows {
            bail!("{} has {} ids but {} has {} rows", opts.ids.display(), ids.len(), opts.embeddings.display(), rows);
        }
        check_ids(ids, &opts.ids)?;
        let rows = ids
            .iter()
            .map(|line| match line.split_once('\t') {
                Some((p, c)) => (p.to_string(), Some(c.to_string())),
                None => (line.to_string(), None),
            })
            .collect();
        Ok(vec![Part { npy: opts.embeddings.clone(), rows }])
    })
}

/// One `.npy` matrix and the id (path) and caption of each of its rows, in
/// row order; the caller has checked that the counts agree and that the
/// ids are unique and not empty.
pub(crate) struct Part {
    pub npy: PathBuf,
    pub rows: Vec<(String, Option<String>)>,
}

/// The import itself: locks the index, then loads the parts (so that a
/// locked or existing index is reported before the inputs are read) and
/// writes each part as segments of `opts.segment_rows` rows, all in one
/// commit. `opts.embeddings` and `opts.ids` are only named in messages.
pub(crate) fn import_parts(dir: &Path, opts: &ImportOptions, load: impl FnOnce() -> Result<Vec<Part>>) -> Result<Manifest> {
    if opts.append && !dir.join(MANIFEST).exists() {
        bail!("{}: no index there to append to (drop --append to create one)", dir.display());
    }
    let lock = if opts.append { lock_existing(dir)? } else { lock_new(dir)? };
    let current = start_writing(dir)?;
    if current.is_some() && !opts.append {
        bail!("{}: already an index; import writes a new one (remove it first, or add to it with --append)", dir.display());
    }
    let parts = load()?;
    let dim = parts_dim(&parts)?;
    if let Some(m) = &opts.model {
        if m.embed_dim != dim {
            bail!("{} has {dim}-d rows but the model embeds in {} dimensions", opts.embeddings.display(), m.embed_dim);
        }
    }
    let base = match current {
        Some(m) => {
            check_append(&m, dim, opts, dir)?;
            check_new_ids(dir, parts.iter().flat_map(|p| p.rows.iter().map(|(id, _)| id.as_str())))?;
            m
        }
        None => {
            let model = opts.model.clone().unwrap_or(ModelInfo { path: None, fingerprint: None, embed_dim: dim, image_size: None, context_length: None, family: Default::default() });
            Manifest::empty(model, dim, opts.dtype, opts.hnsw, None, opts.segment_rows.max(1))
        }
    };
    let per_segment = opts.segment_rows.max(1);
    let manifest = Change::run(dir, &base, |change| {
        let mut row = vec![0f32; dim];
        for part in &parts {
            let mut npy = NpyReader::open(&part.npy)?;
            let source = part.npy.display().to_string();
            let mut i = 0usize;
            for chunk in part.rows.chunks(per_segment) {
                let first = change.manifest.next_id;
                let mut n = 0u64;
                change.write_segment(dir, opts.progress, |w| {
                    for (path, caption) in chunk {
                        npy.read_row(&mut row).with_context(|| format!("{source}: row {i}"))?;
                        normalize(&mut row).with_context(|| format!("{source}: row {i}"))?;
                        w.push(&Entry { id: first + n, path: path.clone(), size: None, mtime: None, caption: caption.clone() }, &row)?;
                        n += 1;
                        i += 1;
                    }
                    Ok(())
                })?;
                change.manifest.next_id = first + n;
            }
        }
        if change.manifest.skipped.is_empty() {
            change.set_skipped(dir, &[])?;
        }
        Ok(())
    })?;
    match &opts.merge {
        Some(policy) => {
            merge_locked(dir, &lock, policy, opts.progress)?;
            super::read_manifest(dir)
        }
        None => Ok(manifest),
    }
}

/// The common row width of the parts' matrices; an error naming two files
/// that disagree.
fn parts_dim(parts: &[Part]) -> Result<usize> {
    let mut dim: Option<(usize, &Path)> = None;
    for part in parts {
        let (_, cols) = npy_shape(&part.npy)?;
        match dim {
            Some((d, first)) if d != cols => bail!("{} has {cols}-d rows but {} has {d}-d rows (all parts must agree)", part.npy.display(), first.display()),
            Some(_) => {}
            None => dim = Some((cols, &part.npy)),
        }
    }
    dim.map(|(d, _)| d).context("nothing to import (no embeddings)")
}

/// (rows, cols) from a 2-D `.npy` header; errors name the file.
pub(crate) fn npy_shape(path: &Path) -> Result<(usize, usize)> {
    let npy = NpyReader::open(path)?;
    Ok((npy.rows, npy.cols))
}

/// The id (path) of each line: blank lines and repeated ids are errors
/// naming the lines (an id names one entry).
fn check_ids(ids: &[&str], path: &Path) -> Result<()> {
    let mut seen = std::collections::HashMap::new();
    for (i, line) in ids.iter().enumerate() {
        let id = line.split('\t').next().unwrap_or("");
        if id.trim().is_empty() {
            bail!("{}:{}: empty id", path.display(), i + 1);
        }
        if let Some(first) = seen.insert(id, i) {
            bail!("{}:{}: id '{id}' repeats line {} (each id names one entry)", path.display(), i + 1, first + 1);
        }
    }
    Ok(())
}

/// Appended ids must not be in the index already.
fn check_new_ids<'a>(dir: &Path, ids: impl Iterator<Item = &'a str>) -> Result<()> {
    let index = super::Index::open(dir)?;
    let wanted: std::collections::HashSet<&str> = ids.collect();
    for (_, e) in index.live_entries()? {
        if wanted.contains(e.path.as_str()) {
            bail!("{}: id '{}' is in the index already (id {}); remove it first to replace it", dir.display(), e.path, e.id);
        }
    }
    Ok(())
}

fn check_append(m: &Manifest, dim: usize, opts: &ImportOptions, dir: &Path) -> Result<()> {
    if m.dim != dim {
        bail!("{}: the index holds {}-d embeddings, {} has {dim}-d rows", dir.display(), m.dim, opts.embeddings.display());
    }
    if opts.dtype != m.dtype {
        eprintln!("warning: {}: the index stores {}; the appended rows are stored as {} too", crate::term::path(&dir), m.dtype.name(), m.dtype.name());
    }
    if opts.model.is_none() && m.model.fingerprint.is_some() {
        eprintln!("warning: {}: the index records its model ({}); without --model nothing checks that these embeddings come from it", crate::term::path(&dir), crate::term::escape_for_terminal(m.model.path.as_deref().unwrap_or("?")));
    }
    if let (Some(a), Some(b)) = (opts.model.as_ref().and_then(|x| x.fingerprint.as_ref()), &m.model.fingerprint) {
        if a != b {
            bail!("{}: the index was built with another model ({}) than --model", dir.display(), m.model.path.as_deref().unwrap_or("?"));
        }
    }
    Ok(())
}

/// Reads a whole 2-D `.npy` (float16/32/64, little-endian, C order) as f32
/// rows: (rows, cols, data). Errors name the file.
pub fn read_npy(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let mut npy = NpyReader::open(path)?;
    let (rows, cols) = (npy.rows, npy.cols);
    let mut data = vec![0f32; rows * cols];
    for (i, row) in data.chunks_exact_mut(cols).enumerate() {
        npy.read_row(row).with_context(|| format!("{}: row {i}", path.display()))?;
    }
    Ok((rows, cols, data))
}

/// Scales to unit length; zero or non-finite rows cannot be searched by cosine.
pub(crate) fn normalize(row: &mut [f32]) -> Result<()> {
    let norm = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt();
    if !norm.is_finite() {
        bail!("non-finite values");
    }
    if norm == 0.0 {
        bail!("all zeros (no direction to search by)");
    }
    for v in row.iter_mut() {
        *v = (*v as f64 / norm) as f32;
    }
    Ok(())
}

/// A streaming reader of 2-D little-endian `.npy` files (f2, f4, f8).
struct NpyReader {
    reader: BufReader<File>,
    rows: usize,
    cols: usize,
    descr: String,
    buf: Vec<u8>,
}

impl NpyReader {
    fn open(path: &Path) -> Result<NpyReader> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        reader.read_exact(&mut magic).with_context(|| format!("{}: not an .npy file", path.display()))?;
        if &magic[..6] != b"\x93NUMPY" {
            bail!("{}: not an .npy file", path.display());
        }
        let header_len = if magic[6] == 1 {
            let mut b = [0u8; 2];
            reader.read_exact(&mut b)?;
            u16::from_le_bytes(b) as usize
        } else {
            let mut b = [0u8; 4];
            reader.read_exact(&mut b)?;
            u32::from_le_bytes(b) as usize
        };
        let mut header = vec![0u8; header_len];
        reader.read_exact(&mut header).with_context(|| format!("{}: truncated .npy header", path.display()))?;
        let header = String::from_utf8_lossy(&header).into_owned();
        let field = |key: &str| -> Option<String> {
            let at = header.find(&format!("'{key}'"))?;
            let rest = header[at + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
            Some(rest.to_string())
        };
        let descr = field("descr").and_then(|r| r.split('\'').nth(1).map(str::to_string)).with_context(|| format!("{}: .npy header has no descr", path.display()))?;
        if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
            bail!("{}: Fortran-ordered .npy is not supported (save it C-ordered)", path.display());
        }
        let shape = field("shape").and_then(|r| r.strip_prefix('(').and_then(|r| r.split(')').next()).map(str::to_string)).with_context(|| format!("{}: .npy header has no shape", path.display()))?;
        let dims: Vec<usize> = shape.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().context("bad shape")).collect::<Result<_>>()?;
        let [rows, cols] = dims[..] else { bail!("{}: expected a 2-D matrix [N, D], got shape ({shape})", path.display()) };
        if !["<f2", "<f4", "<f8"].contains(&descr.as_str()) {
            bail!("{}: unsupported dtype '{descr}' (expected little-endian float16, float32 or float64)", path.display());
        }
        if cols == 0 {
            bail!("{}: rows have no columns", path.display());
        }
        Ok(NpyReader { reader, rows, cols, descr, buf: Vec::new() })
    }

    fn read_row(&mut self, out: &mut [f32]) -> Result<()> {
        let width = match self.descr.as_str() {
            "<f2" => 2,
            "<f4" => 4,
            _ => 8,
        };
        self.buf.resize(self.cols * width, 0);
        self.reader.read_exact(&mut self.buf).context(".npy data is shorter than its shape says")?;
        for (o, b) in out.iter_mut().zip(self.buf.chunks_exact(width)) {
            *o = match width {
                2 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
                4 => f32::from_le_bytes(b.try_into().expect("4 bytes")),
                _ => f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
            };
        }
        Ok(())
    }
}

/// The `.npy` v1 header for a C-ordered 2-D matrix, byte for byte what
/// `np.save` writes (numpy/lib/_format_impl.py, `_write_array_header` and
/// `_wrap_header`): the dict, spare spaces so the row count can grow to 21
/// digits in place, then spaces and a final newline up to a multiple of 64
/// bytes. When the header already ends on a boundary numpy still adds a
/// whole 64 bytes of padding, and so do we.
pub fn npy_header(descr: &str, rows: usize, cols: usize) -> Vec<u8> {
    const GROWTH_AXIS_MAX_DIGITS: usize = 21;
    const ARRAY_ALIGN: usize = 64;
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    header.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(rows.to_string().len())));
    let hlen = header.len() + 1;
    // Magic (6) + version (2) + length (2).
    let padlen = ARRAY_ALIGN - (10 + hlen) % ARRAY_ALIGN;
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&((hlen + padlen) as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(std::iter::repeat_n(b' ', padlen));
    out.push(b'\n');
    out
}
