//! The HNSW graph of an index (hnsw_rs): built from the normalized rows with
//! `UnitDot` (max(0, 1 - dot), our SIMD kernel), dumped beside the
//! embeddings, and reloaded with its vectors memory-mapped.
//!
//! hnsw_rs asserts and panics in many places (damaged files, NaN distances);
//! every call into it goes through `catch`, so users get an error naming the
//! index directory instead of a panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use hnsw_rs::prelude::{AnnT, Distance, FilterT, Hnsw, HnswIo, Neighbour, ReloadOptions};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::distance::UnitDot;

/// Graph parameters, recorded in the manifest.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct HnswParams {
    /// Neighbours kept per node and layer (hnsw_rs `max_nb_connection`; 2M on layer 0).
    pub m: usize,
    /// Beam width while inserting: higher builds slower and finds better neighbours.
    pub ef_construction: usize,
    /// The default search beam; `search --ef` overrides it.
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams { m: 16, ef_construction: 200, ef_search: 128 }
    }
}

/// What the manifest records about a dumped graph.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HnswInfo {
    #[serde(flatten)]
    pub params: HnswParams,
    /// hnsw_rs dump name: `BASENAME.hnsw.graph` and `BASENAME.hnsw.data`.
    pub basename: String,
    /// A description of the distance (graphs dumped before UnitDot say "DistDot: ...").
    pub distance: String,
    /// Wall-clock seconds of the build and the dump.
    pub build_seconds: f64,
}

impl HnswInfo {
    /// The two files of the dump, graph first.
    pub fn files(&self) -> [String; 2] {
        [format!("{}.hnsw.graph", self.basename), format!("{}.hnsw.data", self.basename)]
    }
}

/// The `distance` recorded for graphs built by this version.
pub const DISTANCE: &str = "UnitDot: max(0, 1 - inner product) of L2-normalized f32 vectors";

/// Largest layer index hnsw_rs may draw (its own cap, NB_LAYER_MAX, is 16).
/// Levels are drawn with P(level >= l) = M^-l, so even 16 layers are never
/// reached; the value only sizes hnsw_rs's per-layer tables.
const MAX_LAYER: usize = 16;

/// A loaded graph; rows of the index are the graph's data ids.
pub struct Graph {
    hnsw: Loaded,
    /// The index directory, for error messages.
    dir: PathBuf,
    /// "DIR: HNSW search failed", made once (not one allocation per query).
    search_error: String,
    dim: usize,
}

/// hnsw_rs refuses to reload a dump under another distance type name, so
/// graphs dumped before UnitDot (type name `DistDot`) load through
/// `legacy::DistDot`, which computes the same clamped UnitDot.
enum Loaded {
    Unit(Hnsw<'static, f32, UnitDot>),
    Legacy(Hnsw<'static, f32, legacy::DistDot>),
}

mod legacy {
    use super::{Distance, UnitDot};

    /// Named like anndists' `DistDot` so that hnsw_rs reloads old dumps;
    /// evaluates `UnitDot` (never panics).
    #[derive(Default, Clone, Copy)]
    pub struct DistDot;

    impl Distance<f32> for DistDot {
        #[inline]
        fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
            UnitDot.eval(va, vb)
        }
    }
}

impl Graph {
    /// Builds over rows of `dim` floats (data ids = row numbers 0..n) and
    /// dumps as `basename` in `dir` (`BASENAME.hnsw.graph`, `BASENAME.hnsw.data`,
    /// replacing files of that name).
    ///
    /// Inserts on all rayon threads. Errors on bad parameters, a `vectors`
    /// length that is not a multiple of `dim`, an unwritable `dir`, or a
    /// panic inside hnsw_rs.
    pub fn build_and_dump(vectors: &[f32], dim: usize, params: HnswParams, dir: &Path, basename: &str, progress: bool) -> Result<HnswInfo> {
        let rows: Vec<usize> = (0..vectors.len() / dim.max(1)).collect();
        Graph::build_and_dump_rows(vectors, &rows, dim, params, dir, basename, progress)
    }

    /// Like `build_and_dump`, inserting only `rows` (data id = row number);
    /// a segment leaves out exact duplicates, which it maps to one row.
    pub fn build_and_dump_rows(vectors: &[f32], rows: &[usize], dim: usize, params: HnswParams, dir: &Path, basename: &str, progress: bool) -> Result<HnswInfo> {
        check_params(&params)?;
        if dim == 0 || vectors.len() % dim != 0 {
            bail!("{}: {} floats are not rows of {dim}", dir.display(), vectors.len());
        }
        if rows.iter().any(|&r| r >= vectors.len() / dim) {
            bail!("{}: a graph row is past the {} vectors", dir.display(), vectors.len() / dim);
        }
        let start = Instant::now();
        let what = format!("{}: building the HNSW graph", dir.display());
        let hnsw: Hnsw<f32, UnitDot> = catch(&what, || Hnsw::new(params.m, rows.len().max(1), MAX_LAYER, params.ef_construction, UnitDot))?;
        insert_all(&hnsw, vectors, rows, dim, progress, &what)?;
        dump(&hnsw, dir, basename)?;
        Ok(HnswInfo { params, basename: basename.to_string(), distance: DISTANCE.to_string(), build_seconds: start.elapsed().as_secs_f64() })
    }

    /// Reloads (vectors memory-mapped). `sizes` maps file name -> expected
    /// byte length (as in a manifest); `points` = expected number of points.
    ///
    /// Errors ("corrupt index") on a missing file, a size other than `sizes`
    /// says, damaged contents or another number of points. The mapping stays
    /// for the life of the process (the graph borrows hnsw_rs's `HnswIo`).
    pub fn load(dir: &Path, info: &HnswInfo, sizes: &BTreeMap<String, u64>, points: usize) -> Result<Graph> {
        // hnsw_rs exits the process on a missing file: check them first.
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
        let what = format!("{}: corrupt index: the HNSW graph files are damaged", dir.display());
        let loaded = if info.distance.starts_with("DistDot") {
            catch(&what, move || io.load_hnsw::<f32, legacy::DistDot>().map(Loaded::Legacy))?
        } else {
            catch(&what, move || io.load_hnsw::<f32, UnitDot>().map(Loaded::Unit))?
        };
        let hnsw = loaded.map_err(|e| anyhow!("{}: corrupt index: cannot load the HNSW graph: {e}", dir.display()))?;
        let (count, dim) = match &hnsw {
            Loaded::Unit(h) => (h.get_nb_point(), h.get_point_indexation().get_data_dimension()),
            Loaded::Legacy(h) => (h.get_nb_point(), h.get_point_indexation().get_data_dimension()),
        };
        if count != points {
            bail!("{}: corrupt index: the HNSW graph has {count} points, the index {points}", dir.display());
        }
        Ok(Graph { hnsw, dir: dir.to_path_buf(), search_error: format!("{}: HNSW search failed", dir.display()), dim })
    }

    /// Rows of the (up to) `k` nearest neighbours of `query`, nearest first;
    /// `ef` is the search beam (raised to `k`). Scores are left to the caller.
    ///
    /// Errors on a query of another dimension or a panic inside hnsw_rs.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<usize>> {
        self.run_search(query, k, ef, None)
    }

    /// Only rows for which `keep(row)` is true are returned (deleted rows
    /// filtered inside the graph search, hnsw_rs `search_filter`).
    ///
    /// hnsw_rs does not stop early when filtering (it expands every queued
    /// candidate): at the same `ef` this finds more (recall@10 0.974 vs 0.912
    /// at ef 16, 20k rows) but costs 2-3x the time, about 1.5-2x at equal
    /// recall. Call `search` when nothing is deleted.
    pub fn search_filtered(&self, query: &[f32], k: usize, ef: usize, keep: &(dyn Fn(usize) -> bool + Sync)) -> Result<Vec<usize>> {
        let filter = |id: &usize| keep(*id);
        self.run_search(query, k, ef, Some(&filter))
    }

    fn run_search(&self, query: &[f32], k: usize, ef: usize, filter: Option<&dyn FilterT>) -> Result<Vec<usize>> {
        if query.len() != self.dim {
            bail!("{}: the query has {} dimensions, the HNSW graph {}", self.dir.display(), query.len(), self.dim);
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        let ef = ef.max(k);
        let what = &self.search_error;
        let found: Vec<Neighbour> = match &self.hnsw {
            Loaded::Unit(h) => catch(what, || h.search_filter(query, k, ef, filter))?,
            Loaded::Legacy(h) => catch(what, || h.search_filter(query, k, ef, filter))?,
        };
        Ok(found.into_iter().map(|n| n.get_origin_id()).collect())
    }
}

fn check_params(params: &HnswParams) -> Result<()> {
    // hnsw_rs exits the process above 256 neighbours.
    if params.m == 0 || params.m > 256 {
        bail!("HNSW M must be 1..=256, got {}", params.m);
    }
    if params.ef_construction == 0 {
        bail!("HNSW ef_construction must be at least 1");
    }
    Ok(())
}

/// Inserts `rows` (data id = row number) on the rayon pool.
fn insert_all(hnsw: &Hnsw<f32, UnitDot>, vectors: &[f32], rows: &[usize], dim: usize, progress: bool, what: &str) -> Result<()> {
    let bar = bar(rows.len() as u64, progress);
    let slice = |row: usize| &vectors[row * dim..(row + 1) * dim];
    // The first point alone: two threads inserting into an empty graph can
    // both find no entry point, and the loser is left without neighbours.
    if let Some(&first) = rows.first() {
        catch(what, || hnsw.insert_slice((slice(first), first)))?;
        bar.inc(1);
    }
    // One insert per task (what hnsw_rs's parallel_insert_slice does, without
    // the (slice, id) table and with a catch on the worker threads).
    rows.par_iter().skip(1).try_for_each(|&row| {
        catch(what, || hnsw.insert_slice((slice(row), row)))?;
        bar.inc(1);
        Ok::<_, anyhow::Error>(())
    })?;
    bar.finish_and_clear();
    Ok(())
}

/// Writes `basename.hnsw.{graph,data}` in `dir`, replacing old files
/// (hnsw_rs picks another name rather than overwrite).
fn dump(hnsw: &Hnsw<f32, UnitDot>, dir: &Path, basename: &str) -> Result<()> {
    for name in [format!("{basename}.hnsw.graph"), format!("{basename}.hnsw.data")] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let what = format!("{}: cannot write the HNSW graph", dir.display());
    let written = catch(&what, || hnsw.file_dump(dir, basename))?.with_context(|| what.clone())?;
    if written != basename {
        bail!("{}: hnsw_rs wrote '{written}' instead of '{basename}'", dir.display());
    }
    Ok(())
}

/// Runs `f`, turning a panic into the error "`what` (hnsw_rs: MESSAGE)"
/// (no "panicked": users see an error, not a crash). See `quiet_unwind`.
fn catch<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    super::quiet_unwind(f).map_err(|message| anyhow!("{what} (hnsw_rs: {message})"))
}

fn bar(len: u64, progress: bool) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template("HNSW {bar:40} {pos}/{len} vectors ({per_sec}, ETA {eta})").expect("valid template"));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unit rows: `distinct` random directions, each repeated `copies` times.
    fn duplicated(distinct: usize, copies: usize, dim: usize) -> Vec<f32> {
        let mut s = 12345u64;
        let mut base = Vec::new();
        for _ in 0..distinct {
            let mut v: Vec<f32> = (0..dim)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            base.push(v);
        }
        (0..copies).flat_map(|_| base.iter().flatten().copied()).collect()
    }

    fn sizes(dir: &Path, info: &HnswInfo) -> BTreeMap<String, u64> {
        info.files().into_iter().map(|f| (f.clone(), std::fs::metadata(dir.join(&f)).unwrap().len())).collect()
    }

    #[test]
    fn duplicates_build_load_and_search_without_panics() {
        // 5 vectors repeated 100 times (the `index import` report) in 64-d.
        let dim = 64;
        let data = duplicated(5, 100, dim);
        let dir = tempfile::tempdir().unwrap();
        let params = HnswParams { m: 8, ef_construction: 32, ef_search: 16 };
        let info = Graph::build_and_dump(&data, dim, params, dir.path(), "g", false).unwrap();
        assert_eq!(info.distance, DISTANCE);
        let graph = Graph::load(dir.path(), &info, &sizes(dir.path(), &info), 500).unwrap();
        let hits = graph.search(&data[..dim], 10, 32).unwrap();
        assert!(!hits.is_empty());
        assert!(hits.iter().all(|&r| r % 5 == 0), "copies of row 0 first: {hits:?}");
        let odd = graph.search_filtered(&data[..dim], 10, 32, &|r| r % 2 == 1).unwrap();
        assert!(odd.iter().all(|&r| r % 2 == 1), "{odd:?}");
        let nan = vec![f32::NAN; dim];
        assert!(graph.search(&nan, 5, 16).is_ok());
        assert!(graph.search(&data[..dim - 1], 5, 16).is_err());
        assert!(graph.search(&data[..dim], 0, 16).unwrap().is_empty());
    }

    #[test]
    fn load_checks_sizes_and_points() {
        let dim = 16;
        let data = duplicated(50, 1, dim);
        let dir = tempfile::tempdir().unwrap();
        let info = Graph::build_and_dump(&data, dim, HnswParams::default(), dir.path(), "g", false).unwrap();
        let good = sizes(dir.path(), &info);
        assert!(Graph::load(dir.path(), &info, &good, 49).is_err());
        let mut bad = good.clone();
        *bad.values_mut().next().unwrap() += 1;
        assert!(Graph::load(dir.path(), &info, &bad, 50).is_err());
        // Damaged contents, right size: an error, not a panic or an exit.
        let graph_file = dir.path().join(&info.files()[0]);
        let mut bytes = std::fs::read(&graph_file).unwrap();
        bytes[..8].fill(0xff);
        std::fs::write(&graph_file, &bytes).unwrap();
        let err = Graph::load(dir.path(), &info, &good, 50).err().expect("damaged graph");
        assert!(format!("{err:#}").contains("corrupt index"), "{err:#}");
    }

    #[test]
    fn catch_reports_the_panic() {
        let err = catch("here", || panic!("boom")).unwrap_err();
        assert_eq!(err.to_string(), "here (hnsw_rs: boom)");
        assert_eq!(catch("here", || 3).unwrap(), 3);
    }

    #[test]
    fn bad_parameters_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = HnswParams { m: 0, ..HnswParams::default() };
        assert!(Graph::build_and_dump(&[0.0; 4], 2, p, dir.path(), "g", false).is_err());
        assert!(Graph::build_and_dump(&[0.0; 5], 2, HnswParams::default(), dir.path(), "g", false).is_err());
    }
}
