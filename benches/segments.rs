//! Incremental work on a large segmented index (issue 11): open time,
//! adding and removing 1,000 vectors, and exact search against this
//! machine's memory bandwidth, measured in the same run.
//!
//!   cargo bench --bench segments                      # 1M x 512, f16
//!   LONGCLIP_BENCH_N=200000 cargo bench --bench segments
//!   LONGCLIP_BENCH_DIR=/path ...   where vectors and indexes go (default: target/bench-index)
//!
//! The 1M base index is imported without HNSW graphs (building graphs over
//! 1M vectors takes hours on 2 cores and no step measured here reads them);
//! segments added afterwards get graphs (M 16, ef_construction 200), as
//! `index add` writes them, so the add figures include their graph builds.

use std::path::{Path, PathBuf};
use std::time::Instant;

use longclip::index::{self, Dtype, HnswParams, ImportOptions, Index, MergePolicy, Selection};
use longclip::search;
use rayon::prelude::*;

#[path = "common/vectors.rs"]
mod vectors;
use vectors::*;

fn main() {
    let n: usize = std::env::var("LONGCLIP_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let root = std::env::var("LONGCLIP_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-index")));
    std::fs::create_dir_all(&root).unwrap();
    println!("threads: {} (rayon); {n} vectors x {DIM}, f16", rayon::current_num_threads());
    let mut gen = Generator::new(42);
    let t = Instant::now();
    let (npy, ids) = write_vectors(&root, n, &mut gen);
    println!("generate vectors: {:.1} s", t.elapsed().as_secs_f64());

    for segments in [10, 100] {
        let dir = root.join(format!("segments-{n}-{segments}"));
        let _ = std::fs::remove_dir_all(&dir);
        let t = Instant::now();
        import(&dir, &npy, &ids, n / segments, false);
        println!("\n== {segments} segments: imported in {:.1} s", t.elapsed().as_secs_f64());
        open_time(&dir);
        if segments == 10 {
            incremental(&root, &dir, &mut gen, n);
            open_time(&dir);
            exact_bandwidth(&dir, &mut gen);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn import(dir: &Path, npy: &Path, ids: &Path, segment_rows: usize, append: bool) -> index::Manifest {
    let opts = ImportOptions {
        embeddings: npy.to_path_buf(),
        ids: ids.to_path_buf(),
        dtype: Dtype::F16,
        hnsw: None,
        model: None,
        progress: false,
        append,
        segment_rows,
        merge: append.then(MergePolicy::default),
    };
    index::import(dir, &opts).unwrap()
}

fn open_time(dir: &Path) {
    let reps = 20;
    let t = Instant::now();
    let mut segs = 0;
    for _ in 0..reps {
        segs = Index::open(dir).unwrap().segments().len();
    }
    println!("open: {:.2} ms (mean of {reps}, {segs} segments)", t.elapsed().as_secs_f64() * 1000.0 / reps as f64);
}

/// Adds of 1,000 vectors (each a new segment with its graph; the tenth
/// triggers a tiered merge of ten of them) and removals of 1,000 ids.
fn incremental(root: &Path, dir: &Path, gen: &mut Generator, n: usize) {
    // New segments get graphs from here on (the manifest's setting).
    let path = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["hnsw"] = serde_json::to_value(HnswParams::default()).unwrap();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let mut times = Vec::new();
    for round in 0..10 {
        let (npy, ids) = small_batch(root, gen, round);
        let t = Instant::now();
        let m = import(dir, &npy, &ids, 100_000, true);
        let secs = t.elapsed().as_secs_f64();
        println!("add 1,000 (round {round}): {secs:.2} s -> {} segments, {} entries", m.segments.len(), m.count);
        times.push(secs);
    }
    times.sort_by(f64::total_cmp);
    println!("add 1,000: median {:.2} s, max {:.2} s (the max includes a merge of 10 x 1,000)", times[5], times[9]);
    for round in 0..3 {
        let ids: Vec<u64> = (0..1000u64).map(|i| (i * 997 + round * 7919) % n as u64).collect();
        let t = Instant::now();
        let r = index::remove(dir, &Selection { ids, ..Default::default() }, false).unwrap();
        println!("remove 1,000 ids (round {round}): {:.3} s ({} removed)", t.elapsed().as_secs_f64(), r.removed);
    }
}

fn small_batch(root: &Path, gen: &mut Generator, round: usize) -> (PathBuf, PathBuf) {
    let npy = root.join(format!("add-{round}.npy"));
    let ids = root.join(format!("add-{round}.txt"));
    let rows: Vec<f32> = (0..1000).flat_map(|_| gen.draw()).collect();
    let mut bytes = index::npy_header("<f4", 1000, DIM);
    bytes.extend(rows.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(&npy, bytes).unwrap();
    std::fs::write(&ids, (0..1000).map(|i| format!("new/{round}/{i}.jpg\n")).collect::<String>()).unwrap();
    (npy, ids)
}

/// One exact query at a time against a parallel streaming read of the same
/// bytes (the mapped f16 matrices, summed as u64 words on every core), both
/// warm in the page cache: the read is this machine's memory bandwidth for
/// the job.
fn exact_bandwidth(dir: &Path, gen: &mut Generator) {
    let index = Index::open(dir).unwrap();
    let bytes: usize = index.segments().iter().map(|s| s.rows() * DIM * 2).sum();
    let stream = || -> f64 {
        let t = Instant::now();
        let mut total = 0u64;
        for seg in index.segments() {
            let h = seg.f16_rows().unwrap();
            // The same bytes as u64 words: 8 bytes an add, vectorized, so the
            // loop is bound by memory, not by the adds.
            // Safety: the mapping is page aligned and its length a multiple of 8 here (dim 512).
            let words: &[u64] = unsafe { std::slice::from_raw_parts(h.as_ptr() as *const u64, h.len() / 4) };
            total = total.wrapping_add(words.par_chunks(1 << 15).map(|c| c.iter().fold(0u64, |a, x| a.wrapping_add(*x))).reduce(|| 0, u64::wrapping_add));
        }
        std::hint::black_box(total);
        t.elapsed().as_secs_f64()
    };
    stream();
    let read = (0..3).map(|_| stream()).fold(f64::MAX, f64::min);
    let queries: Vec<Vec<f32>> = (0..20).map(|_| gen.draw()).collect();
    search::exact(&index, &queries[..1], 10);
    let t = Instant::now();
    for q in &queries {
        search::exact(&index, std::slice::from_ref(q), 10);
    }
    let per_query = t.elapsed().as_secs_f64() / queries.len() as f64;
    let gb = bytes as f64 / 1e9;
    println!(
        "exact search, 1 query: {:.1} ms ({:.2} GB/s); streaming read of the same {gb:.2} GB: {:.1} ms ({:.2} GB/s); ratio {:.0}%",
        per_query * 1e3,
        gb / per_query,
        read * 1e3,
        gb / read,
        100.0 * read / per_query
    );
}
