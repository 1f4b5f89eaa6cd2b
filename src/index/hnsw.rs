//! The HNSW graph of an index (hnsw_rs): built from the normalized rows with
//! the inner-product distance (1 - dot), dumped beside the embeddings, and
//! reloaded with its vectors memory-mapped.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hnsw_rs::prelude::{AnnT, DistDot, Hnsw, HnswIo, ReloadOptions};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

/// Graph parameters, recorded in the manifest.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct HnswParams {
    /// Neighbours kept per node and layer (hnsw_rs `max_nb_connection`).
    pub m: usize,
    pub ef_construction: usize,
    /// The default search beam; `search --ef` overrides it.
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams { m: 16, ef_construction: 200, ef_search: 128 }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HnswInfo {
    #[serde(flatten)]
    pub params: HnswParams,
    /// hnsw_rs dump name: `BASENAME.hnsw.graph` and `BASENAME.hnsw.data`.
    pub basename: String,
    pub distance: String,
    pub build_seconds: f64,
}

impl HnswInfo {
    pub fn files(&self) -> [String; 2] {
        [format!("{}.hnsw.graph", self.basename), format!("{}.hnsw.data", self.basename)]
    }
}

/// A loaded graph; rows of the index are the graph's data ids.
pub struct Graph {
    hnsw: Hnsw<'static, f32, DistDot>,
}

impl Graph {
    /// Builds over `count` rows of `dim` floats and dumps it as `basename` in `dir`.
    pub fn build_and_dump(vectors: &[f32], dim: usize, params: HnswParams, dir: &Path, basename: &str, progress: bool) -> Result<HnswInfo> {
        let count = vectors.len() / dim;
        if params.m == 0 || params.m > 256 {
            bail!("HNSW M must be 1..=256, got {}", params.m);
        }
        let start = Instant::now();
        let hnsw: Hnsw<f32, DistDot> = Hnsw::new(params.m, count.max(1), 16, params.ef_construction, DistDot);
        let bar = bar(count as u64, progress);
        let data: Vec<(&[f32], usize)> = vectors.chunks_exact(dim).enumerate().map(|(i, v)| (v, i)).collect();
        // Chunks so the bar moves; each chunk is still inserted on all cores.
        for chunk in data.chunks(4096) {
            hnsw.parallel_insert_slice(&chunk.to_vec());
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        for name in [format!("{basename}.hnsw.graph"), format!("{basename}.hnsw.data")] {
            let _ = std::fs::remove_file(dir.join(name));
        }
        let written = hnsw.file_dump(dir, basename).with_context(|| format!("{}: cannot write the HNSW graph", dir.display()))?;
        if written != basename {
            bail!("{}: hnsw_rs wrote '{written}' instead of '{basename}'", dir.display());
        }
        Ok(HnswInfo {
            params,
            basename: basename.to_string(),
            distance: "DistDot: 1 - inner product of L2-normalized f32 vectors".to_string(),
            build_seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Reloads a dumped graph with its vectors memory-mapped.
    pub fn load(dir: &Path, info: &HnswInfo, sizes: &BTreeMap<String, u64>, points: usize) -> Result<Graph> {
        // hnsw_rs exits the process on a missing file and asserts on bad
        // magic numbers: check what we can first, then catch its panics.
        for name in info.files() {
            let meta = std::fs::metadata(dir.join(&name)).with_context(|| format!("{}: corrupt index: {name} is missing", dir.display()))?;
            match sizes.get(&name) {
                Some(&want) if want == meta.len() => {}
                _ => bail!("{}: corrupt index: {name} has {} bytes, not what the manifest says", dir.display(), meta.len()),
            }
        }
        let options = ReloadOptions::default().set_mmap(true);
        // The loaded graph borrows its HnswIo (it owns the mapping); one per
        // opened index, kept for the life of the process.
        let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new_with_options(dir, &info.basename, options)));
        // `{ io }` moves the reference in (FnOnce), so the graph may keep it.
        // hnsw_rs panics on damaged files; quiet the default hook meanwhile so
        // the user gets one clear error instead of a panic message.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || { io }.load_hnsw::<f32, DistDot>()));
        std::panic::set_hook(hook);
        let hnsw = match loaded {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => bail!("{}: corrupt index: cannot load the HNSW graph: {e}", dir.display()),
            Err(_) => bail!("{}: corrupt index: the HNSW graph files are damaged", dir.display()),
        };
        if hnsw.get_nb_point() != points {
            bail!("{}: corrupt index: the HNSW graph has {} points, the segment {points}", dir.display(), hnsw.get_nb_point());
        }
        Ok(Graph { hnsw })
    }

    /// Rows of the `k` nearest neighbours (graph order; scores are recomputed by the caller).
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<usize>> {
        Ok(self.hnsw.search(query, k, ef.max(k)).into_iter().map(|n| n.get_origin_id()).collect())
    }

    /// Only rows for which `keep(row)` holds are returned.
    pub fn search_filtered(&self, query: &[f32], k: usize, ef: usize, keep: &(dyn Fn(usize) -> bool + Sync)) -> Result<Vec<usize>> {
        let filter = |id: &usize| keep(*id);
        Ok(self.hnsw.search_filter(query, k, ef.max(k), Some(&filter)).into_iter().map(|n| n.get_origin_id()).collect())
    }
}

fn bar(len: u64, progress: bool) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template("HNSW {bar:40} {pos}/{len} vectors ({per_sec}, ETA {eta})").expect("valid template"));
    bar
}
