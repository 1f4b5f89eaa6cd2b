//! Searching an index: exact (a parallel scan of the memory-mapped matrix,
//! f16 converted to f32 block by block, with a bounded top-k) or HNSW, and
//! the query side (texts and images through the index's model).

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;

use crate::checkpoint;
use crate::family::TextPath;
use crate::index::{Index, ModelInfo, Segment};
use crate::model::{l2_normalize, LongClip, Towers};

/// Above this many live vectors in a segment, searches use the segment's
/// HNSW graph when it has one (`--exact` forces the scan). Measured on 2
/// cores (docs/index-and-search.md): an exact f16 scan of 100k 512-d rows
/// takes ~10 ms a query, so below this a scan is both exact and fast enough
/// for interactive use.
pub const HNSW_THRESHOLD: usize = 100_000;

/// Rows scanned per task; small enough that the f32 copy of a block stays in cache.
const BLOCK_ROWS: usize = 512;

/// Largest k a search accepts.
pub const MAX_K: usize = 10_000;

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Hit {
    pub rank: usize,
    pub id: u64,
    pub path: String,
    /// Cosine similarity (dot product of normalized vectors).
    pub score: f32,
}

/// How a search ran: every segment scanned, every segment through its
/// graph, or some of each (small segments are scanned).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    Exact,
    Hnsw { ef: usize },
    Mixed { ef: usize },
}

/// How to search: `exact` forces the scan; `ef` overrides the manifest's beam.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub k: usize,
    pub exact: bool,
    pub ef: Option<usize>,
}

impl std::fmt::Display for Method {
    /// `exact`, `hnsw (ef 128)`, or `hnsw (ef 128) and exact` (the words
    /// of the CLI's summary line and the API's `method`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Exact => write!(f, "exact"),
            Method::Hnsw { ef } => write!(f, "hnsw (ef {ef})"),
            Method::Mixed { ef } => write!(f, "hnsw (ef {ef}) and exact"),
        }
    }
}

/// Whether a segment is searched through its graph.
fn uses_graph(seg: &Segment, opts: &Options) -> bool {
    seg.meta.hnsw.is_some() && !opts.exact && (opts.ef.is_some() || seg.meta.live() > HNSW_THRESHOLD)
}

fn beam(seg: &Segment, opts: &Options) -> usize {
    let default = seg.meta.hnsw.as_ref().map_or(128, |h| h.params.ef_search);
    opts.ef.unwrap_or(default).max(opts.k)
}

/// The method `search` will use on this index.
pub fn method(index: &Index, opts: &Options) -> Method {
    let segs = index.segments();
    let graphs: Vec<&Segment> = segs.iter().filter(|s| uses_graph(s, opts)).collect();
    let ef = graphs.first().map_or(0, |s| beam(s, opts));
    match graphs.len() {
        0 => Method::Exact,
        n if n == segs.len() => Method::Hnsw { ef },
        _ => Method::Mixed { ef },
    }
}

/// What the CLI's summary lines put in brackets: the method and the
/// index's embedding types as `index info` names them, e.g.
/// `exact; f16, computed in f32+int8`.
pub fn summary(index: &Index, opts: &Options) -> String {
    format!("{}; {}", method(index, opts), index.manifest.dtype_summary())
}

/// Checks every query: the index's dimension, finite, not all zeros.
/// Errors name the query row.
pub fn check_queries(index: &Index, queries: &[Vec<f32>]) -> Result<()> {
    for (i, q) in queries.iter().enumerate() {
        if q.len() != index.dim() {
            bail!("query row {i}: {} dimensions, the index has {}", q.len(), index.dim());
        }
        if let Some(j) = q.iter().position(|v| !v.is_finite()) {
            bail!("query row {i}: value {j} is not finite ({})", q[j]);
        }
        if q.iter().all(|v| *v == 0.0) {
            bail!("query row {i}: all zeros (no direction to search by)");
        }
    }
    Ok(())
}

/// Top-k global rows and cosine scores for each query, best first (equal
/// scores by lower id, so any segment layout gives the same order). Fans
/// out over segments in parallel and merges their top-k.
pub fn search_rows(index: &Index, queries: &[Vec<f32>], opts: &Options) -> Result<Vec<Vec<(usize, f32)>>> {
    check_queries(index, queries)?;
    let k = opts.k.min(index.len());
    if k == 0 {
        return Ok(vec![Vec::new(); queries.len()]);
    }
    let opts = Options { k, ..*opts };
    let per_segment: Vec<Vec<Vec<(usize, f32)>>> = index
        .segments()
        .par_iter()
        .enumerate()
        .filter(|(_, seg)| seg.meta.live() > 0)
        .map(|(s, seg)| {
            let start = index.segment_start(s);
            let local = search_segment(seg, queries, &opts)?;
            Ok(local.into_iter().map(|hits| hits.into_iter().map(|(r, score)| (start + r, score)).collect()).collect())
        })
        .collect::<Result<_>>()?;
    let mut out = vec![Vec::new(); queries.len()];
    for lists in per_segment {
        for (all, hits) in out.iter_mut().zip(lists) {
            all.extend(hits);
        }
    }
    for hits in &mut out {
        let mut keyed: Vec<(u64, usize, f32)> = hits.iter().map(|&(r, s)| (index.id(r), r, s)).collect();
        keyed.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
        keyed.truncate(k);
        *hits = keyed.into_iter().map(|(_, r, s)| (r, s)).collect();
    }
    Ok(out)
}

/// Top-k rows of one segment (its own row numbers) for each query.
fn search_segment(seg: &Segment, queries: &[Vec<f32>], opts: &Options) -> Result<Vec<Vec<(usize, f32)>>> {
    let k = opts.k.min(seg.meta.live());
    if !uses_graph(seg, opts) {
        return Ok(exact_segment(seg, queries, k));
    }
    let graph = match seg.graph() {
        Ok(g) => g.expect("uses_graph checked the graph"),
        // A merge committed since this view was opened and deleted the
        // segment's files; its vectors are still mapped, so scan them.
        Err(_) if !seg.dir.exists() => return Ok(exact_segment(seg, queries, k)),
        Err(e) => return Err(e),
    };
    let ef = beam(seg, opts);
    // A graph node stands for its exact copies: keep it while any is live.
    let keep = |r: usize| seg.copies(r).any(|c| !seg.is_deleted(c));
    queries
        .par_iter()
        .map(|q| {
            let rows = if seg.meta.deleted > 0 { graph.search_filtered(q, k, ef, &keep)? } else { graph.search(q, k, ef)? };
            // Scores from the stored rows, so both methods report the same numbers.
            let mut row = vec![0f32; q.len()];
            let mut hits: Vec<(usize, f32)> = rows
                .into_iter()
                .flat_map(|r| seg.copies(r))
                .filter(|&r| r < seg.rows() && !seg.is_deleted(r))
                .map(|r| {
                    seg.row(r, &mut row);
                    (r, dot(q, &row))
                })
                .collect();
            hits.sort_by(better);
            hits.truncate(k);
            Ok(hits)
        })
        .collect()
}

/// Hits with ids and paths for each query.
pub fn search(index: &Index, queries: &[Vec<f32>], opts: &Options) -> Result<Vec<Vec<Hit>>> {
    search_rows(index, queries, opts)?.into_iter().map(|rows| hits(index, &rows)).collect()
}

pub fn hits(index: &Index, rows: &[(usize, f32)]) -> Result<Vec<Hit>> {
    rows.iter()
        .enumerate()
        .map(|(i, &(row, score))| {
            let e = index.entry(row)?;
            Ok(Hit { rank: i + 1, id: e.id, path: index.resolve(&e).display().to_string(), score })
        })
        .collect()
}

/// From this many queries on, a block is scored with one matrix product.
const GEMM_MIN_QUERIES: usize = 8;
/// Rows per block on the matrix-product path: big enough to keep the
/// product efficient, small enough that the scores stay in cache.
const GEMM_BLOCK_ROWS: usize = 4096;

/// Exact top-k over every live row of the index (global rows), by scanning.
pub fn exact(index: &Index, queries: &[Vec<f32>], k: usize) -> Vec<Vec<(usize, f32)>> {
    let opts = Options { k, exact: true, ef: None };
    search_rows(index, queries, &opts).expect("queries checked by the caller")
}

/// Exact top-k of one segment. Few queries: rayon over blocks, each block
/// converted to f32 once and dotted with every query. Many queries: blocks
/// in turn, each scored against all queries by one multi-threaded matrix
/// product. Deleted rows are skipped.
fn exact_segment(seg: &Segment, queries: &[Vec<f32>], k: usize) -> Vec<Vec<(usize, f32)>> {
    if queries.len() >= GEMM_MIN_QUERIES {
        return exact_gemm(seg, queries, k).expect("shapes checked by the index");
    }
    exact_dots(seg, queries, k)
}

fn exact_dots(seg: &Segment, queries: &[Vec<f32>], k: usize) -> Vec<Vec<(usize, f32)>> {
    let d = queries[0].len();
    let n = seg.rows();
    let blocks = n.div_ceil(BLOCK_ROWS);
    let empty = || vec![TopK::new(k); queries.len()];
    let halves: Option<&[u16]> = seg.f16_rows().map(|h| {
        // Safety: f16 is a transparent u16.
        unsafe { std::slice::from_raw_parts(h.as_ptr() as *const u16, h.len()) }
    });
    let singles = seg.f32_rows().unwrap_or(&[]);
    let tops = (0..blocks)
        .into_par_iter()
        .fold(empty, |mut tops, b| {
            let rows = b * BLOCK_ROWS..((b + 1) * BLOCK_ROWS).min(n);
            for (top, q) in tops.iter_mut().zip(queries) {
                for r in rows.clone().filter(|&r| !seg.is_deleted(r)) {
                    // f16 rows are converted in registers (bit-identical to
                    // converting first), f32 rows read in place.
                    let s = match halves {
                        Some(h) => score_f16(q, &h[r * d..(r + 1) * d]),
                        None => dot(q, &singles[r * d..(r + 1) * d]),
                    };
                    top.push(r, s);
                }
            }
            tops
        })
        .reduce(empty, |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                x.merge(y);
            }
            a
        });
    tops.into_iter().map(TopK::into_sorted).collect()
}

fn exact_gemm(seg: &Segment, queries: &[Vec<f32>], k: usize) -> candle_core::Result<Vec<Vec<(usize, f32)>>> {
    let (d, n) = (queries[0].len(), seg.rows());
    let q = Tensor::from_vec(queries.concat(), (queries.len(), d), &Device::Cpu)?;
    let mut tops = vec![TopK::new(k); queries.len()];
    let mut buf = Vec::new();
    for start in (0..n).step_by(GEMM_BLOCK_ROWS) {
        let rows = start..(start + GEMM_BLOCK_ROWS).min(n);
        let block = block_f32(seg, d, rows.clone(), &mut buf);
        let block = Tensor::from_slice(block, (rows.len(), d), &Device::Cpu)?;
        let scores = q.matmul(&block.t()?)?.to_vec2::<f32>()?;
        tops.par_iter_mut().zip(scores).for_each(|(top, row_scores)| {
            for (i, score) in row_scores.into_iter().enumerate() {
                if !seg.is_deleted(rows.start + i) {
                    top.push(rows.start + i, score);
                }
            }
        });
    }
    Ok(tops.into_iter().map(TopK::into_sorted).collect())
}

/// The rows of a block as f32: borrowed for f32 segments, converted for f16
/// (in pieces of BLOCK_ROWS rows on all cores).
fn block_f32<'a>(seg: &'a Segment, d: usize, rows: std::ops::Range<usize>, buf: &'a mut Vec<f32>) -> &'a [f32] {
    if let Some(f) = seg.f32_rows() {
        return &f[rows.start * d..rows.end * d];
    }
    let h = &seg.f16_rows().expect("f16 or f32")[rows.start * d..rows.end * d];
    buf.resize(h.len(), 0.0);
    use half::slice::HalfFloatSliceExt;
    buf.par_chunks_mut(BLOCK_ROWS * d).zip(h.par_chunks(BLOCK_ROWS * d)).for_each(|(o, i)| i.convert_to_f32_slice(o));
    buf
}

/// The dot product of exact search and rescoring: `index::score` (SIMD,
/// chosen at run time, in an order that does not depend on the address, so
/// a vector scores the same in any segment and through either method).
pub use crate::index::score as dot;
use crate::index::score_f16;

/// Higher score first; equal scores by lower row, so results are deterministic.
fn better(a: &(usize, f32), b: &(usize, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// A bounded top-k: collects candidates and trims to k when it holds 2k.
#[derive(Clone)]
struct TopK {
    k: usize,
    items: Vec<(usize, f32)>,
}

impl TopK {
    fn new(k: usize) -> TopK {
        TopK { k, items: Vec::with_capacity(2 * k) }
    }

    fn push(&mut self, row: usize, score: f32) {
        self.items.push((row, score));
        if self.items.len() >= 2 * self.k.max(8) {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.items.len() > self.k {
            self.items.select_nth_unstable_by(self.k - 1, better);
            self.items.truncate(self.k);
        }
    }

    fn merge(&mut self, other: TopK) {
        for (r, s) in other.items {
            self.push(r, s);
        }
    }

    fn into_sorted(mut self) -> Vec<(usize, f32)> {
        self.trim();
        self.items.sort_by(better);
        self.items
    }
}

// ---------------------------------------------------------------------------
// Queries

/// Encodes queries with the index's model.
pub struct QueryEncoder {
    pub model: LongClip,
    pub device: Device,
    pub info: ModelInfo,
}

/// A query embedding and whether its text was cut to the model's context.
pub struct Query {
    pub vector: Vec<f32>,
    pub truncated: bool,
}

impl QueryEncoder {
    /// Loads `model` (default: the checkpoint the manifest records) and
    /// refuses one whose dim or identity differs from the index's.
    pub fn for_index(index: &Index, model: Option<&Path>, device: &str) -> Result<QueryEncoder> {
        Self::for_index_with_text_path(index, model, device, None)
    }

    /// [`QueryEncoder::for_index`] with the text encoder of `text_path`
    /// (FG-CLIP's short or long; None: the family's default, long).
    /// Errors: as `for_index`, and a path the model's family does not have.
    pub fn for_index_with_text_path(index: &Index, model: Option<&Path>, device: &str, text_path: Option<TextPath>) -> Result<QueryEncoder> {
        Self::for_index_with_towers(index, model, device, text_path, Towers::Both)
    }

    /// [`QueryEncoder::for_index_with_text_path`] with only `towers` loaded
    /// in full: a text-only search needs no vision blocks, and the other way
    /// round (see [`Towers`]).
    pub fn for_index_with_towers(index: &Index, model: Option<&Path>, device: &str, text_path: Option<TextPath>, towers: Towers) -> Result<QueryEncoder> {
        let path = match (model, &index.manifest.model.path) {
            (Some(p), _) => p.to_path_buf(),
            (None, Some(p)) => p.into(),
            (None, None) => bail!("{}: the index does not record its model (imported): give --model", index.dir.display()),
        };
        if model.is_none() && !path.exists() {
            bail!(
                "{}: the model the index was built with, {}, is not there any more; give its new place with --model",
                index.dir.display(),
                path.display()
            );
        }
        let ckpt = checkpoint::load(&path)?;
        let info = model_info(&ckpt, &path)?;
        check_model(index, &info)?;
        let device = crate::model::device(device)?;
        let model = LongClip::with_towers(&ckpt, &device, DType::F32, text_path, towers)?;
        Ok(QueryEncoder { model, device, info })
    }

    pub fn text(&self, text: &str) -> Result<Query> {
        Ok(self.texts(&[text.to_string()])?.remove(0))
    }

    /// Many texts, batched; each cut to the model's context (EOT kept) if longer.
    pub fn texts(&self, texts: &[String]) -> Result<Vec<Query>> {
        let ctx = self.model.text.context_length();
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(32) {
            let encodings = self.model.tokenize(chunk, ctx)?;
            let ids: Vec<Vec<u32>> = encodings.iter().map(|e| e.ids.clone()).collect();
            let features = l2_normalize(&self.model.text.encode(&ids)?.to_dtype(DType::F32)?)?;
            for (row, e) in features.to_device(&Device::Cpu)?.to_vec2::<f32>()?.into_iter().zip(&encodings) {
                out.push(Query { vector: row, truncated: e.truncated });
            }
        }
        Ok(out)
    }

    /// An encoded image (any supported format); `name` is used in errors.
    pub fn image_bytes(&self, bytes: &[u8], name: &str) -> Result<Query> {
        let size = self.model.vision.image_size();
        let pixels = self.model.transform().from_bytes(bytes, name)?;
        let t = Tensor::from_vec(pixels, (1, 3, size, size), &self.device)?;
        let features = l2_normalize(&self.model.vision.encode(&t)?.to_dtype(DType::F32)?)?;
        Ok(Query { vector: features.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?, truncated: false })
    }

    pub fn image_path(&self, path: &Path) -> Result<Query> {
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        self.image_bytes(&bytes, &path.display().to_string())
    }
}

/// What an index records about a checkpoint.
pub fn model_info(ckpt: &checkpoint::Checkpoint, path: &Path) -> Result<ModelInfo> {
    let abs = crate::index::absolute_path(path);
    Ok(ModelInfo {
        path: Some(abs.display().to_string()),
        fingerprint: Some(ckpt.fingerprint()?),
        embed_dim: ckpt.config.embed_dim,
        image_size: Some(ckpt.config.vision.image_size),
        context_length: Some(ckpt.config.text.context_length),
        family: ckpt.config.family,
    })
}

/// Refuses a model whose dim or identity differs from the index's.
pub fn check_model(index: &Index, info: &ModelInfo) -> Result<()> {
    let m = &index.manifest.model;
    if index.dim() != info.embed_dim {
        bail!(
            "{}: the index holds {}-d embeddings but {} embeds in {} dimensions; search it with the model it was built with",
            index.dir.display(),
            index.dim(),
            info.path.as_deref().unwrap_or("the model"),
            info.embed_dim
        );
    }
    if m.fingerprint.is_some() && m.family != info.family {
        bail!(
            "{}: the index was built with a {} model, {} is {}: queries must be tokenized and preprocessed as its images were",
            index.dir.display(),
            m.family,
            info.path.as_deref().unwrap_or("the model"),
            info.family
        );
    }
    match (&m.fingerprint, &info.fingerprint) {
        (Some(want), Some(got)) if want != got => bail!(
            "{}: the index was built with another model ({}, {want}) than {} ({got}); search it with the model it was built with",
            index.dir.display(),
            m.path.as_deref().unwrap_or("?"),
            info.path.as_deref().unwrap_or("?")
        ),
        (None, _) => eprintln!("warning: {}: the index does not record a model fingerprint (imported); cannot check that {} made it", crate::term::path(&index.dir), crate::term::escape_for_terminal(info.path.as_deref().unwrap_or("the model"))),
        _ => {}
    }
    Ok(())
}
