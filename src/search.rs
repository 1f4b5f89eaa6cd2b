//! Searching an index: exact (a parallel scan of the memory-mapped matrix,
//! f16 converted to f32 block by block, with a bounded top-k) or HNSW, and
//! the query side (texts and images through the index's model).

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;

use crate::checkpoint;
use crate::index::{Index, ModelInfo};
use crate::model::{l2_normalize, LongClip};
use crate::preprocess::Transform;
use crate::tokenizer::Tokenizer;

/// Above this many vectors, searches use the HNSW graph when the index has
/// one (`--exact` forces the scan). Measured on 2 cores (docs/index-and-search.md):
/// an exact f16 scan of 100k 512-d rows takes ~10 ms a query, so below this
/// a scan is both exact and fast enough for interactive use.
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

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    Exact,
    Hnsw { ef: usize },
}

/// How to search: `exact` forces the scan; `ef` overrides the manifest's beam.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub k: usize,
    pub exact: bool,
    pub ef: Option<usize>,
}

/// The method `search` will use on this index.
pub fn method(index: &Index, opts: &Options) -> Method {
    match &index.manifest.hnsw {
        Some(info) if !opts.exact && (opts.ef.is_some() || index.len() > HNSW_THRESHOLD) => Method::Hnsw { ef: opts.ef.unwrap_or(info.params.ef_search).max(opts.k) },
        _ => Method::Exact,
    }
}

/// Top-k rows and cosine scores for each query, best first (ties by row).
pub fn search_rows(index: &Index, queries: &[Vec<f32>], opts: &Options) -> Result<Vec<Vec<(usize, f32)>>> {
    for q in queries {
        if q.len() != index.dim() {
            bail!("query has {} dimensions, the index {}", q.len(), index.dim());
        }
    }
    let k = opts.k.min(index.len());
    if k == 0 {
        return Ok(vec![Vec::new(); queries.len()]);
    }
    match method(index, opts) {
        Method::Exact => Ok(exact(index, queries, k)),
        Method::Hnsw { ef } => {
            let graph = index.graph()?.expect("method() checked the graph");
            Ok(queries
                .par_iter()
                .map(|q| {
                    // Scores from the stored rows, so both methods report the same numbers.
                    let mut row = vec![0f32; index.dim()];
                    let mut hits: Vec<(usize, f32)> = graph
                        .search(q, k, ef)
                        .into_iter()
                        .map(|r| {
                            index.row(r, &mut row);
                            (r, dot(q, &row))
                        })
                        .collect();
                    hits.sort_by(better);
                    hits.truncate(k);
                    hits
                })
                .collect())
        }
    }
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

/// Exact top-k by scanning every row. Few queries: rayon over blocks, each
/// block converted to f32 once and dotted with every query. Many queries:
/// blocks in turn, each scored against all queries by one multi-threaded
/// matrix product.
pub fn exact(index: &Index, queries: &[Vec<f32>], k: usize) -> Vec<Vec<(usize, f32)>> {
    if queries.len() >= GEMM_MIN_QUERIES {
        return exact_gemm(index, queries, k).expect("shapes checked by the index");
    }
    exact_dots(index, queries, k)
}

fn exact_dots(index: &Index, queries: &[Vec<f32>], k: usize) -> Vec<Vec<(usize, f32)>> {
    let d = index.dim();
    let n = index.len();
    let blocks = n.div_ceil(BLOCK_ROWS);
    let empty = || vec![TopK::new(k); queries.len()];
    let tops = (0..blocks)
        .into_par_iter()
        .fold(
            || (empty(), Vec::<f32>::new()),
            |(mut tops, mut buf), b| {
                let rows = b * BLOCK_ROWS..((b + 1) * BLOCK_ROWS).min(n);
                let block = block_f32(index, rows.clone(), &mut buf);
                for (top, q) in tops.iter_mut().zip(queries) {
                    for (i, row) in block.chunks_exact(d).enumerate() {
                        top.push(rows.start + i, dot(q, row));
                    }
                }
                (tops, buf)
            },
        )
        .map(|(tops, _)| tops)
        .reduce(empty, |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                x.merge(y);
            }
            a
        });
    tops.into_iter().map(TopK::into_sorted).collect()
}

fn exact_gemm(index: &Index, queries: &[Vec<f32>], k: usize) -> candle_core::Result<Vec<Vec<(usize, f32)>>> {
    let (d, n) = (index.dim(), index.len());
    let q = Tensor::from_vec(queries.concat(), (queries.len(), d), &Device::Cpu)?;
    let mut tops = vec![TopK::new(k); queries.len()];
    let mut buf = Vec::new();
    for start in (0..n).step_by(GEMM_BLOCK_ROWS) {
        let rows = start..(start + GEMM_BLOCK_ROWS).min(n);
        let block = block_f32(index, rows.clone(), &mut buf);
        let block = Tensor::from_slice(block, (rows.len(), d), &Device::Cpu)?;
        let scores = q.matmul(&block.t()?)?.to_vec2::<f32>()?;
        tops.par_iter_mut().zip(scores).for_each(|(top, row_scores)| {
            for (i, score) in row_scores.into_iter().enumerate() {
                top.push(rows.start + i, score);
            }
        });
    }
    Ok(tops.into_iter().map(TopK::into_sorted).collect())
}

/// The rows of a block as f32: borrowed for f32 indexes, converted for f16
/// (in pieces of BLOCK_ROWS rows on all cores).
fn block_f32<'a>(index: &'a Index, rows: std::ops::Range<usize>, buf: &'a mut Vec<f32>) -> &'a [f32] {
    let d = index.dim();
    if let Some(f) = index.f32_rows() {
        return &f[rows.start * d..rows.end * d];
    }
    let h = &index.f16_rows().expect("f16 or f32")[rows.start * d..rows.end * d];
    buf.resize(h.len(), 0.0);
    use half::slice::HalfFloatSliceExt;
    buf.par_chunks_mut(BLOCK_ROWS * d).zip(h.par_chunks(BLOCK_ROWS * d)).for_each(|(o, i)| i.convert_to_f32_slice(o));
    buf
}

/// Dot product with 8 independent sums (vectorizes; order differs from a
/// naive loop by rounding only).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

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
        let path = match (model, &index.manifest.model.path) {
            (Some(p), _) => p.to_path_buf(),
            (None, Some(p)) => p.into(),
            (None, None) => bail!("{}: the index does not record its model (imported): give --model", index.dir.display()),
        };
        let ckpt = checkpoint::load(&path)?;
        let info = model_info(&ckpt, &path)?;
        check_model(index, &info)?;
        let device = crate::model::device(device)?;
        let model = LongClip::new(&ckpt, &device, DType::F32)?;
        Ok(QueryEncoder { model, device, info })
    }

    pub fn text(&self, text: &str) -> Result<Query> {
        Ok(self.texts(&[text.to_string()])?.remove(0))
    }

    /// Many texts, batched; each cut to the model's context (EOT kept) if longer.
    pub fn texts(&self, texts: &[String]) -> Result<Vec<Query>> {
        let ctx = self.model.text.context_length();
        let tok = Tokenizer::global();
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(32) {
            let encodings = tok.encode_batch(chunk, ctx)?;
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
        let pixels = Transform::clip(size).from_bytes(bytes, name)?;
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
    match (&m.fingerprint, &info.fingerprint) {
        (Some(want), Some(got)) if want != got => bail!(
            "{}: the index was built with another model ({}, {want}) than {} ({got}); search it with the model it was built with",
            index.dir.display(),
            m.path.as_deref().unwrap_or("?"),
            info.path.as_deref().unwrap_or("?")
        ),
        (None, _) => eprintln!("warning: {}: the index does not record a model fingerprint (imported); cannot check that {} made it", index.dir.display(), info.path.as_deref().unwrap_or("the model")),
        _ => {}
    }
    Ok(())
}
