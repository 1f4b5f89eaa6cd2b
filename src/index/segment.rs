//! One immutable segment: `segments/NAME/` holds `vectors.f16|f32` (rows ×
//! dim, raw little-endian, L2-normalized), `entries.jsonl` (one JSON object
//! per row), `rows.bin` (per row: id and byte offset of its entry line, two
//! u64 LE), the HNSW dump `hnsw.hnsw.graph` + `hnsw.hnsw.data`, and the
//! deletion bitmaps `deletes-G.bin`. Exact duplicates (rows whose stored
//! vectors are bit-identical) enter the graph once: `duplicates.bin` maps
//! each other copy to that row (u64 LE pairs: row, representative), and a
//! graph hit stands for all its copies, so a search returns every copy with
//! the same score. (hnsw_rs links identical points poorly: with 100 copies
//! of a vector, a graph search found about 75 of them.) Everything but the
//! bitmaps is written once, before the manifest that names the segment is
//! committed.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use half::f16;
use memmap2::Mmap;

use super::deletes::Deletes;
use super::hnsw::{Graph, HnswParams};
use super::manifest::SegmentMeta;
use super::{cast_slice, map, Dtype, Entry, SEGMENTS_DIR};

/// A read-only, memory-mapped segment.
pub struct Segment {
    pub meta: SegmentMeta,
    pub dir: PathBuf,
    dim: usize,
    vectors: Option<Mmap>,
    rows: Option<Mmap>,
    entries: Option<Mmap>,
    deletes: Deletes,
    graph: OnceLock<std::result::Result<(Graph, Copies), String>>,
}

/// Representative row -> the other rows with the same stored vector.
type Copies = HashMap<usize, Vec<usize>>;

/// The file mapping duplicate rows to the row that stands for them in the graph.
pub const DUPLICATES: &str = "duplicates.bin";

/// `INDEX/segments/NAME`.
pub fn segment_dir(index: &Path, name: &str) -> PathBuf {
    index.join(SEGMENTS_DIR).join(name)
}

impl Segment {
    /// Maps the segment's files after checking their sizes against the manifest.
    pub fn open(index: &Path, meta: &SegmentMeta, dim: usize) -> Result<Segment> {
        let dir = segment_dir(index, &meta.name);
        let vectors = meta.vectors_file();
        for name in [vectors.as_str(), "entries.jsonl", "rows.bin"] {
            check_size(&dir, name, meta)?;
        }
        if meta.sizes.get(&vectors) != Some(&((meta.rows * dim * meta.dtype.bytes()) as u64)) {
            bail!("{}: corrupt index: the manifest's vector size does not match {} x {dim} {}", dir.display(), meta.rows, meta.dtype.name());
        }
        if meta.sizes.get("rows.bin") != Some(&(meta.rows as u64 * 16)) {
            bail!("{}: corrupt index: the row table does not match {} rows", dir.display(), meta.rows);
        }
        let deletes = match &meta.deletes {
            Some(name) => Deletes::read(&dir.join(name), meta.rows)?,
            None => Deletes::none(meta.rows),
        };
        if deletes.count() != meta.deleted {
            bail!("{}: corrupt index: the deletion bitmap marks {} rows, the manifest {}", dir.display(), deletes.count(), meta.deleted);
        }
        Ok(Segment {
            meta: meta.clone(),
            dim,
            vectors: map(&dir.join(&vectors))?,
            rows: map(&dir.join("rows.bin"))?,
            entries: map(&dir.join("entries.jsonl"))?,
            deletes,
            dir,
            graph: OnceLock::new(),
        })
    }

    /// Rows stored, deleted ones included.
    pub fn rows(&self) -> usize {
        self.meta.rows
    }

    pub fn deletes(&self) -> &Deletes {
        &self.deletes
    }

    pub fn is_deleted(&self, row: usize) -> bool {
        self.deletes.is_deleted(row)
    }

    /// The stored matrix, row-major, as half floats (f16 segments).
    pub fn f16_rows(&self) -> Option<&[f16]> {
        (self.meta.dtype == Dtype::F16).then(|| cast_slice(self.vectors.as_deref().unwrap_or(&[])))
    }

    /// The stored matrix, row-major, as single floats (f32 segments).
    pub fn f32_rows(&self) -> Option<&[f32]> {
        (self.meta.dtype == Dtype::F32).then(|| cast_slice(self.vectors.as_deref().unwrap_or(&[])))
    }

    /// Row `row` as f32, converted from f16 when needed. `out.len()` = dim.
    pub fn row(&self, row: usize, out: &mut [f32]) {
        let range = row * self.dim..(row + 1) * self.dim;
        match (self.f16_rows(), self.f32_rows()) {
            (Some(h), _) => {
                use half::slice::HalfFloatSliceExt;
                h[range].convert_to_f32_slice(out);
            }
            (_, Some(f)) => out.copy_from_slice(&f[range]),
            _ => unreachable!("a segment is f16 or f32"),
        }
    }

    pub fn id(&self, row: usize) -> u64 {
        let rows = self.rows.as_deref().unwrap_or(&[]);
        u64::from_le_bytes(rows[row * 16..row * 16 + 8].try_into().expect("8 bytes"))
    }

    fn offset(&self, row: usize) -> usize {
        let rows = self.rows.as_deref().unwrap_or(&[]);
        u64::from_le_bytes(rows[row * 16 + 8..row * 16 + 16].try_into().expect("8 bytes")) as usize
    }

    /// The row holding `id`, deleted or not (rows are in id order).
    pub fn row_of_id(&self, id: u64) -> Option<usize> {
        if id < self.meta.min_id || id > self.meta.max_id {
            return None;
        }
        let (mut lo, mut hi) = (0usize, self.rows());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.id(mid).cmp(&id) {
                std::cmp::Ordering::Equal => return Some(mid),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    /// Parses the one entry line of `row`.
    pub fn entry(&self, row: usize) -> Result<Entry> {
        let data = self.entries.as_deref().unwrap_or(&[]);
        let start = self.offset(row);
        let end = if row + 1 < self.rows() { self.offset(row + 1) } else { data.len() };
        let line = data.get(start..end).with_context(|| format!("{}: corrupt index: bad entry offset for row {row}", self.dir.display()))?;
        serde_json::from_slice(line).with_context(|| format!("{}: corrupt index: entry {row} is not valid JSON", self.dir.display()))
    }

    /// The graph, loaded (memory-mapped) on first use; None without one.
    pub fn graph(&self) -> Result<Option<&Graph>> {
        Ok(self.loaded_graph()?.map(|(g, _)| g))
    }

    /// The rows a graph hit on `row` stands for: `row` and its exact copies.
    /// Allocates nothing (the filtered graph search asks for every node it
    /// visits).
    pub fn copies(&self, row: usize) -> impl Iterator<Item = usize> + '_ {
        let others = match self.loaded_graph() {
            Ok(Some((_, copies))) => copies.get(&row).map(Vec::as_slice),
            _ => None,
        };
        std::iter::once(row).chain(others.unwrap_or(&[]).iter().copied())
    }

    fn loaded_graph(&self) -> Result<Option<&(Graph, Copies)>> {
        let Some(info) = &self.meta.hnsw else { return Ok(None) };
        let loaded = self.graph.get_or_init(|| {
            let load = || -> Result<(Graph, Copies)> {
                let (copies, duplicates) = read_duplicates(&self.dir, &self.meta)?;
                let graph = Graph::load(&self.dir, info, &self.meta.sizes, self.meta.rows - duplicates)?;
                Ok((graph, copies))
            };
            load().map_err(|e| format!("{e:#}"))
        });
        match loaded {
            Ok(g) => Ok(Some(g)),
            Err(e) => bail!("{e}"),
        }
    }
}

/// Reads `duplicates.bin` (when the manifest lists it): the copy groups and
/// the number of rows left out of the graph.
fn read_duplicates(dir: &Path, meta: &SegmentMeta) -> Result<(Copies, usize)> {
    let mut copies = Copies::new();
    if !meta.sizes.contains_key(DUPLICATES) {
        return Ok((copies, 0));
    }
    check_size(dir, DUPLICATES, meta)?;
    let bytes = std::fs::read(dir.join(DUPLICATES)).with_context(|| format!("{}: cannot read {DUPLICATES}", dir.display()))?;
    let pairs: Vec<(usize, usize)> = bytes.chunks_exact(16).map(|b| (u64::from_le_bytes(b[..8].try_into().expect("8")) as usize, u64::from_le_bytes(b[8..].try_into().expect("8")) as usize)).collect();
    if pairs.iter().any(|&(r, rep)| r >= meta.rows || rep >= meta.rows) {
        bail!("{}: corrupt index: {DUPLICATES} names a row past the segment's {}", dir.display(), meta.rows);
    }
    for &(row, rep) in &pairs {
        copies.entry(rep).or_default().push(row);
    }
    Ok((copies, pairs.len()))
}

/// Builds a segment's graph over its rows, each group of bit-identical
/// vectors entering once, and writes `duplicates.bin` for the others.
/// Returns the graph and the sizes of the files written.
pub(crate) fn build_graph(dir: &Path, vectors: &[f32], dim: usize, params: HnswParams, progress: bool) -> Result<(super::hnsw::HnswInfo, BTreeMap<String, u64>)> {
    let rows = vectors.len() / dim;
    let mut first: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut graph_rows = Vec::with_capacity(rows);
    let mut pairs: Vec<u8> = Vec::new();
    for r in 0..rows {
        let v = &vectors[r * dim..(r + 1) * dim];
        let key = hash_bits(v);
        let same = first.entry(key).or_default();
        match same.iter().find(|&&rep| vectors[rep * dim..(rep + 1) * dim].iter().zip(v).all(|(a, b)| a.to_bits() == b.to_bits())) {
            Some(&rep) => {
                pairs.extend_from_slice(&(r as u64).to_le_bytes());
                pairs.extend_from_slice(&(rep as u64).to_le_bytes());
            }
            None => {
                same.push(r);
                graph_rows.push(r);
            }
        }
    }
    let info = Graph::build_and_dump_rows(vectors, &graph_rows, dim, params, dir, "hnsw", progress)?;
    let mut files: Vec<String> = info.files().to_vec();
    if !pairs.is_empty() {
        let path = dir.join(DUPLICATES);
        std::fs::write(&path, &pairs).with_context(|| format!("{}: cannot write", path.display()))?;
        files.push(DUPLICATES.to_string());
    }
    let mut sizes = BTreeMap::new();
    for file in files {
        let path = dir.join(&file);
        File::open(&path).and_then(|f| f.sync_all()).with_context(|| format!("{}: cannot sync", path.display()))?;
        sizes.insert(file, std::fs::metadata(&path)?.len());
    }
    Ok((info, sizes))
}

/// FNV-1a over the bit patterns of a row.
fn hash_bits(v: &[f32]) -> u64 {
    v.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| (h ^ x.to_bits() as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

fn check_size(dir: &Path, name: &str, meta: &SegmentMeta) -> Result<()> {
    let path = dir.join(name);
    let got = std::fs::metadata(&path).with_context(|| format!("{}: corrupt index: {name} is missing", dir.display()))?.len();
    match meta.sizes.get(name) {
        Some(&want) if want == got => Ok(()),
        Some(&want) => bail!("{}: corrupt index: {name} has {got} bytes, the manifest says {want}", dir.display()),
        None => bail!("{}: corrupt index: the manifest has no size for {name}", dir.display()),
    }
}

/// Writes a new segment folder row by row. Nothing is visible until a
/// manifest naming the segment is committed; on failure the caller removes
/// the folder (`discard`).
pub(crate) struct SegmentWriter {
    pub name: String,
    pub dir: PathBuf,
    dim: usize,
    dtype: Dtype,
    vectors: BufWriter<File>,
    entries: BufWriter<File>,
    rows: BufWriter<File>,
    offset: u64,
    count: usize,
    ids: Option<(u64, u64)>,
    /// The stored values as f32, kept for the HNSW build.
    kept: Vec<f32>,
    hnsw: Option<HnswParams>,
}

impl SegmentWriter {
    pub fn create(index: &Path, name: &str, dim: usize, dtype: Dtype, hnsw: Option<HnswParams>) -> Result<SegmentWriter> {
        let dir = segment_dir(index, name);
        // A folder of this name can only be left by a writer that died before committing it.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let create = |file: &str| -> Result<BufWriter<File>> {
            let path = dir.join(file);
            Ok(BufWriter::with_capacity(1 << 20, File::create(&path).with_context(|| format!("{}: cannot create", path.display()))?))
        };
        Ok(SegmentWriter {
            name: name.to_string(),
            vectors: create(&format!("vectors.{}", dtype.name()))?,
            entries: create("entries.jsonl")?,
            rows: create("rows.bin")?,
            dir,
            dim,
            dtype,
            offset: 0,
            count: 0,
            ids: None,
            kept: Vec::new(),
            hnsw,
        })
    }

    /// Appends one row. Ids must increase; the vector must be L2-normalized.
    pub fn push(&mut self, entry: &Entry, vector: &[f32]) -> Result<()> {
        if vector.len() != self.dim {
            bail!("{}: vector has {} values, the index {}", entry.path, vector.len(), self.dim);
        }
        match self.ids {
            Some((_, last)) if entry.id <= last => bail!("internal: ids out of order at {}", entry.id),
            Some((first, _)) => self.ids = Some((first, entry.id)),
            None => self.ids = Some((entry.id, entry.id)),
        }
        match self.dtype {
            Dtype::F32 => {
                self.vectors.write_all(super::bytes_of(vector))?;
                if self.hnsw.is_some() {
                    self.kept.extend_from_slice(vector);
                }
            }
            Dtype::F16 => {
                for v in vector {
                    let h = f16::from_f32(*v);
                    self.vectors.write_all(&h.to_le_bytes())?;
                    if self.hnsw.is_some() {
                        self.kept.push(h.to_f32());
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

    pub fn len(&self) -> usize {
        self.count
    }

    /// Flushes and syncs the files, builds the graph, and describes the segment.
    pub fn finish(self, progress: bool) -> Result<SegmentMeta> {
        let SegmentWriter { name, dir, dim, dtype, vectors, entries, rows, count, ids, kept, hnsw, .. } = self;
        let vectors_name = format!("vectors.{}", dtype.name());
        for (w, file) in [(vectors, vectors_name.as_str()), (entries, "entries.jsonl"), (rows, "rows.bin")] {
            finish_file(w, &dir.join(file))?;
        }
        let mut sizes = BTreeMap::new();
        for file in [vectors_name, "entries.jsonl".to_string(), "rows.bin".to_string()] {
            let len = std::fs::metadata(dir.join(&file)).with_context(|| format!("{}: {file} missing after write", dir.display()))?.len();
            sizes.insert(file, len);
        }
        let graph = match hnsw {
            Some(params) if count > 0 => {
                let (info, graph_sizes) = build_graph(&dir, &kept, dim, params, progress)?;
                sizes.extend(graph_sizes);
                Some(info)
            }
            _ => None,
        };
        drop(kept);
        sync_dir(&dir)?;
        let (min_id, max_id) = ids.unwrap_or((0, 0));
        Ok(SegmentMeta { name, rows: count, deleted: 0, deletes: None, dtype, min_id, max_id, sizes, hnsw: graph })
    }
}

pub(crate) fn finish_file(w: BufWriter<File>, path: &Path) -> Result<()> {
    let file = w.into_inner().map_err(|e| e.into_error()).with_context(|| format!("{}: cannot write", path.display()))?;
    file.sync_all().with_context(|| format!("{}: cannot write", path.display()))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).with_context(|| format!("{}: cannot sync", dir.display()))
}

/// Writes a deletion bitmap as `deletes-G.bin` in the segment folder (synced).
pub(crate) fn write_deletes(index: &Path, name: &str, generation: u64, deletes: &Deletes) -> Result<String> {
    let dir = segment_dir(index, name);
    let file = format!("deletes-{generation}.bin");
    let path = dir.join(&file);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&path)?;
        f.write_all(deletes.bytes())?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&path);
        return Err(e).with_context(|| format!("{}: cannot write", path.display()));
    }
    Ok(file)
}
