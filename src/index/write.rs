//! Writing indexes: the writer lock, new generations committed by renaming
//! the manifest, imports of outside embeddings, removals and exports.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use half::f16;

use super::hnsw::{Graph, HnswParams};
use super::{now_rfc3339, Dtype, Entry, Files, Index, Manifest, ModelInfo, Skipped, FORMAT, FORMAT_VERSION, LOCK_FILE, MANIFEST};

/// An exclusive OS lock on `DIR/lock`, held while a process writes the
/// index. The kernel drops it when the process dies, however it dies, so a
/// killed build never blocks the next one.
pub struct Lock {
    _file: File,
}

pub fn lock(dir: &Path) -> Result<Lock> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the index directory", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("{}: cannot open the lock file", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let who = holder.trim();
            let who = if who.is_empty() { String::new() } else { format!(" ({who})") };
            bail!(
                "{}: another longclip process is writing this index{who}; wait for it to finish \
                 (the lock on {} is released when it exits)",
                dir.display(),
                path.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => bail!("{}: cannot lock: {e}", path.display()),
    }
    // Who holds it, for the message above; the lock itself is the flock.
    let _ = file.set_len(0);
    let _ = write!(file, "pid {}", std::process::id());
    Ok(Lock { _file: file })
}

/// What a new generation inherits from the one before.
pub(crate) struct Base {
    pub model: ModelInfo,
    pub root: Option<String>,
    pub created: Option<String>,
    pub generation: u64,
    pub next_id: u64,
}

impl Base {
    pub fn from_manifest(m: &Manifest) -> Base {
        Base { model: m.model.clone(), root: m.root.clone(), created: Some(m.created.clone()), generation: m.generation, next_id: m.next_id }
    }
}

/// Rows of a generation being written.
pub(crate) struct Writer {
    dim: usize,
    dtype: Dtype,
    embeddings: BufWriter<File>,
    entries: BufWriter<File>,
    rows: BufWriter<File>,
    offset: u64,
    count: usize,
    last_id: Option<u64>,
    /// The stored values as f32, kept for the HNSW build.
    vectors: Option<Vec<f32>>,
    pub next_id: u64,
}

impl Writer {
    /// Appends one row. Ids must increase (rows are kept in id order).
    pub fn push(&mut self, entry: &Entry, vector: &[f32]) -> Result<()> {
        if vector.len() != self.dim {
            bail!("{}: vector has {} values, the index {}", entry.path, vector.len(), self.dim);
        }
        if self.last_id.is_some_and(|last| entry.id <= last) {
            bail!("internal: ids out of order at {}", entry.id);
        }
        self.last_id = Some(entry.id);
        self.next_id = self.next_id.max(entry.id + 1);
        match self.dtype {
            Dtype::F32 => {
                for v in vector {
                    self.embeddings.write_all(&v.to_le_bytes())?;
                }
                if let Some(keep) = &mut self.vectors {
                    keep.extend_from_slice(vector);
                }
            }
            Dtype::F16 => {
                for v in vector {
                    let h = f16::from_f32(*v);
                    self.embeddings.write_all(&h.to_le_bytes())?;
                    if let Some(keep) = &mut self.vectors {
                        keep.push(h.to_f32());
                    }
                }
            }
        }
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        self.entries.write_all(&line)?;
        self.rows.write_all(&entry.id.to_le_bytes())?;
        self.rows.write_all(&self.offset.to_le_bytes())?;
        self.offset += line.len() as u64;
        self.count += 1;
        Ok(())
    }

    /// Takes a fresh id for a new entry.
    pub fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

/// What to write besides the rows.
pub(crate) struct Commit<'a> {
    pub dir: &'a Path,
    pub dtype: Dtype,
    pub dim: usize,
    pub hnsw: Option<HnswParams>,
    pub base: Base,
    pub progress: bool,
}

impl Commit<'_> {
    /// Writes generation `base.generation + 1`: `fill` pushes the rows, then
    /// the skipped list, the graph and finally the manifest (the commit).
    /// On any error the new files are removed and the old generation stays.
    pub fn run(self, skipped: &[Skipped], fill: impl FnOnce(&mut Writer) -> Result<()>) -> Result<Manifest> {
        let generation = self.base.generation + 1;
        let result = self.write(generation, skipped, fill);
        if result.is_err() {
            remove_generation_files(self.dir, |g| g == generation);
        }
        let manifest = result?;
        remove_generation_files(self.dir, |g| g != generation);
        Ok(manifest)
    }

    fn write(&self, generation: u64, skipped: &[Skipped], fill: impl FnOnce(&mut Writer) -> Result<()>) -> Result<Manifest> {
        let dir = self.dir;
        let files = Files {
            embeddings: format!("embeddings-{generation}.{}", self.dtype.name()),
            entries: format!("entries-{generation}.jsonl"),
            rows: format!("rows-{generation}.bin"),
            skipped: format!("skipped-{generation}.jsonl"),
            sizes: BTreeMap::new(),
        };
        let create = |name: &str| -> Result<BufWriter<File>> {
            let path = dir.join(name);
            Ok(BufWriter::with_capacity(1 << 20, File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?))
        };
        let mut writer = Writer {
            dim: self.dim,
            dtype: self.dtype,
            embeddings: create(&files.embeddings)?,
            entries: create(&files.entries)?,
            rows: create(&files.rows)?,
            offset: 0,
            count: 0,
            last_id: None,
            vectors: self.hnsw.map(|_| Vec::new()),
            next_id: self.base.next_id,
        };
        fill(&mut writer)?;
        let Writer { embeddings, entries, rows, count, vectors, next_id, .. } = writer;
        for (w, name) in [(embeddings, &files.embeddings), (entries, &files.entries), (rows, &files.rows)] {
            finish_file(w, &dir.join(name))?;
        }
        let mut list = Vec::new();
        for s in skipped {
            serde_json::to_writer(&mut list, s)?;
            list.push(b'\n');
        }
        let mut w = create(&files.skipped)?;
        w.write_all(&list)?;
        finish_file(w, &dir.join(&files.skipped))?;

        let hnsw = match (self.hnsw, vectors) {
            (Some(params), Some(vectors)) if count > 0 => {
                let basename = format!("hnsw-{generation}");
                Some(Graph::build_and_dump(&vectors, self.dim, params, dir, &basename, self.progress)?)
            }
            _ => None,
        };
        let mut names = vec![files.embeddings.clone(), files.entries.clone(), files.rows.clone(), files.skipped.clone()];
        if let Some(info) = &hnsw {
            names.extend(info.files());
            for name in info.files() {
                File::open(dir.join(&name))?.sync_all()?;
            }
        }
        let mut files = files;
        for name in names {
            let len = std::fs::metadata(dir.join(&name)).with_context(|| format!("{}: missing after write", name))?.len();
            files.sizes.insert(name, len);
        }
        let now = now_rfc3339();
        let manifest = Manifest {
            format: FORMAT.to_string(),
            format_version: FORMAT_VERSION,
            generation,
            model: self.base.model.clone(),
            dim: self.dim,
            dtype: self.dtype,
            count,
            skipped_count: skipped.len(),
            next_id,
            root: self.base.root.clone(),
            created: self.base.created.clone().unwrap_or_else(|| now.clone()),
            updated: now,
            files,
            hnsw,
        };
        write_manifest(dir, &manifest)?;
        Ok(manifest)
    }
}

fn finish_file(w: BufWriter<File>, path: &Path) -> Result<()> {
    let file = w.into_inner().map_err(|e| e.into_error()).with_context(|| format!("{}: cannot write", path.display()))?;
    file.sync_all().with_context(|| format!("{}: cannot write", path.display()))
}

/// The commit: a new manifest renamed over the old one, synced.
fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
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

/// Removes the files of generations for which `which` holds (and stray temporaries).
fn remove_generation_files(dir: &Path, which: impl Fn(u64) -> bool) {
    let Ok(listing) = std::fs::read_dir(dir) else { return };
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stray_tmp = name.starts_with(&format!(".{MANIFEST}.tmp-"));
        if stray_tmp || generation_of(&name).is_some_and(&which) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `embeddings-3.f16` -> 3, `hnsw-3.hnsw.graph` -> 3.
fn generation_of(name: &str) -> Option<u64> {
    let (prefix, rest) = name.split_once('-')?;
    if !["embeddings", "entries", "rows", "skipped", "hnsw"].contains(&prefix) {
        return None;
    }
    rest.split('.').next()?.parse().ok()
}

// ---------------------------------------------------------------------------
// Import

pub struct ImportOptions {
    pub embeddings: PathBuf,
    pub ids: PathBuf,
    pub dtype: Dtype,
    pub hnsw: Option<HnswParams>,
    /// The model that made the embeddings, when known (identity checks at search time).
    pub model: Option<ModelInfo>,
    pub progress: bool,
}

/// Builds an index from an `.npy` matrix [N, D] and N ids (one per line).
/// Rows are L2-normalized; a zero or non-finite row is an error naming it.
pub fn import(dir: &Path, opts: &ImportOptions) -> Result<Manifest> {
    let _lock = lock(dir)?;
    if dir.join(MANIFEST).exists() {
        bail!("{}: already an index; import writes a new one (remove it first)", dir.display());
    }
    let mut npy = NpyReader::open(&opts.embeddings)?;
    let ids_text = std::fs::read_to_string(&opts.ids).with_context(|| format!("{}: cannot read", opts.ids.display()))?;
    let ids: Vec<&str> = ids_text.lines().collect();
    let ids = if ids.last() == Some(&"") { &ids[..ids.len() - 1] } else { &ids[..] };
    if ids.len() != npy.rows {
        bail!("{} has {} ids but {} has {} rows", opts.ids.display(), ids.len(), opts.embeddings.display(), npy.rows);
    }
    let dim = npy.cols;
    if let Some(m) = &opts.model {
        if m.embed_dim != dim {
            bail!("{} has {dim}-d rows but the model embeds in {} dimensions", opts.embeddings.display(), m.embed_dim);
        }
    }
    let model = opts.model.clone().unwrap_or(ModelInfo { path: None, fingerprint: None, embed_dim: dim, image_size: None, context_length: None });
    let base = Base { model, root: None, created: None, generation: 0, next_id: 0 };
    let commit = Commit { dir, dtype: opts.dtype, dim, hnsw: opts.hnsw, base, progress: opts.progress };
    let source = opts.embeddings.display().to_string();
    commit.run(&[], |w| {
        let mut row = vec![0f32; dim];
        for (i, id) in ids.iter().enumerate() {
            npy.read_row(&mut row)?;
            normalize(&mut row).with_context(|| format!("{source}: row {i}"))?;
            let (path, caption) = match id.split_once('\t') {
                Some((p, c)) => (p, Some(c.to_string())),
                None => (*id, None),
            };
            w.push(&Entry { id: i as u64, path: path.to_string(), size: None, mtime: None, caption }, &row)?;
        }
        Ok(())
    })
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

/// The `.npy` v1 header for a C-ordered 2-D matrix.
pub(crate) fn npy_header(descr: &str, rows: usize, cols: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let mut header = dict.into_bytes();
    // Magic (6) + version (2) + length (2) + header, padded to 64 with '\n' last.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(&header);
    out
}

// ---------------------------------------------------------------------------
// Removal

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
    pub count: usize,
    /// Requested ids or paths that matched nothing.
    pub not_found: Vec<String>,
}

pub fn remove(dir: &Path, selection: &Selection, progress: bool) -> Result<RemoveReport> {
    let _lock = lock(dir)?;
    let index = Index::open(dir)?;
    let entries = index.entries()?;
    let wanted_paths: HashSet<PathBuf> = selection.paths.iter().map(|p| absolute(Path::new(p))).collect();
    let mut matched_ids = HashSet::new();
    let mut matched_paths = HashSet::new();
    let mut drop = vec![false; entries.len()];
    for (row, e) in entries.iter().enumerate() {
        let resolved = absolute(&index.resolve(e));
        if selection.ids.contains(&e.id) {
            matched_ids.insert(e.id);
            drop[row] = true;
        }
        if let Some(p) = selection.paths.iter().find(|p| **p == e.path || wanted_paths.contains(&resolved) && absolute(Path::new(p.as_str())) == resolved) {
            matched_paths.insert(p.clone());
            drop[row] = true;
        }
        if selection.missing && !resolved.exists() {
            drop[row] = true;
        }
    }
    let mut skipped = index.skipped()?;
    skipped.retain(|s| {
        let hit = selection.paths.iter().find(|p| **p == s.path || absolute(&super::resolve(index.manifest.root.as_deref(), &s.path)) == absolute(Path::new(p.as_str())));
        if let Some(p) = hit {
            matched_paths.insert(p.clone());
        }
        hit.is_none()
    });
    let mut not_found: Vec<String> = selection.ids.iter().filter(|i| !matched_ids.contains(i)).map(|i| format!("id {i}")).collect();
    not_found.extend(selection.paths.iter().filter(|p| !matched_paths.contains(*p)).cloned());
    let removed = drop.iter().filter(|d| **d).count();
    if removed == 0 && skipped.len() == index.manifest.skipped_count {
        return Ok(RemoveReport { removed: 0, count: index.len(), not_found });
    }
    let m = &index.manifest;
    let commit = Commit { dir, dtype: m.dtype, dim: m.dim, hnsw: m.hnsw.as_ref().map(|h| h.params), base: Base::from_manifest(m), progress };
    let manifest = commit.run(&skipped, |w| {
        let mut row = vec![0f32; m.dim];
        for (r, e) in entries.iter().enumerate() {
            if !drop[r] {
                index.row(r, &mut row);
                w.push(e, &row)?;
            }
        }
        Ok(())
    })?;
    Ok(RemoveReport { removed, count: manifest.count, not_found })
}

/// A path made absolute against the current directory, and canonical when it exists.
pub(crate) fn absolute(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    if p.is_absolute() {
        return p.to_path_buf();
    }
    std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
}

// ---------------------------------------------------------------------------
// Export

/// clip-retrieval's layout: `img_emb/img_emb_0.npy` (rows as stored, f16 or
/// f32) and `metadata/metadata_0.csv` (row order; image_path, id, caption).
/// Written under a temporary name and renamed into place.
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
    let raw: &[u8] = match (index.f16_rows(), index.f32_rows()) {
        (Some(h), _) => bytes_of(h),
        (_, Some(f)) => bytes_of(f),
        _ => &[],
    };
    w.write_all(raw)?;
    finish_file(w, &path)?;
    let path = dir.join("metadata/metadata_0.csv");
    let mut w = BufWriter::new(File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?);
    writeln!(w, "image_path,id,caption")?;
    for row in 0..index.len() {
        let e = index.entry(row)?;
        let full = index.resolve(&e).display().to_string();
        writeln!(w, "{},{},{}", csv_field(&full), e.id, csv_field(e.caption.as_deref().unwrap_or("")))?;
    }
    finish_file(w, &path)
}

fn bytes_of<T>(s: &[T]) -> &[u8] {
    // Safety: plain floats, any alignment is fine for u8.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
}

/// RFC 4180 quoting when needed.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
