//! Index benchmarks: import time, HNSW build time, open time, exact search
//! QPS (one query at a time and batched), HNSW QPS and recall@10 against
//! exact, and resident memory, on generated clustered 512-d vectors.
//!
//!   cargo bench --bench index                                  # 100k
//!   LONGCLIP_BENCH_SIZES=100000,1000000 cargo bench --bench index
//!   LONGCLIP_BENCH_HNSW=0 ...      exact only (no graph build)
//!   LONGCLIP_BENCH_DIR=/path ...   where the vectors and indexes go (default: target/bench-index)
//!
//! Vectors are drawn around 1,000 random centres (clustered, as real image
//! embeddings are; uniform noise is the worst case for any graph index).
//! Queries are 500 fresh draws from the same distribution, not in the index.

use std::path::{Path, PathBuf};
use std::time::Instant;

use longclip::index::{self, Dtype, HnswParams, ImportOptions, Index};
use longclip::search;

#[path = "common/vectors.rs"]
mod vectors;
use vectors::*;

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let sizes: Vec<usize> = std::env::var("LONGCLIP_BENCH_SIZES").unwrap_or_else(|_| "100000".into()).split(',').map(|s| s.trim().parse().expect("sizes")).collect();
    let with_hnsw = std::env::var("LONGCLIP_BENCH_HNSW").map(|v| v != "0").unwrap_or(true);
    let root = std::env::var("LONGCLIP_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-index")));
    std::fs::create_dir_all(&root).unwrap();
    println!("threads: {} (rayon)", rayon::current_num_threads());
    for &n in &sizes {
        bench_size(&root, n, with_hnsw);
    }
}

fn bench_size(root: &Path, n: usize, with_hnsw: bool) {
    println!("\n== {n} vectors x {DIM}, f16 index ==");
    let mut gen = Generator::new(42);
    let t = Instant::now();
    let (npy, ids) = write_vectors(root, n, &mut gen);
    println!("generate vectors: {:.1} s", t.elapsed().as_secs_f64());
    let queries: Vec<Vec<f32>> = (0..QUERIES).map(|_| gen.draw()).collect();

    let dir = root.join(format!("index-{n}{}", if with_hnsw { "" } else { "-exact" }));
    if !dir.join("manifest.json").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let hnsw = with_hnsw.then(HnswParams::default);
        let opts = ImportOptions { embeddings: npy, ids, dtype: Dtype::F16, hnsw, model: None, progress: false, append: false, segment_rows: index::DEFAULT_SEGMENT_ROWS, merge: None };
        let t = Instant::now();
        let m = index::import(&dir, &opts).unwrap();
        let total = t.elapsed().as_secs_f64();
        let graph: f64 = m.segments.iter().filter_map(|s| s.hnsw.as_ref()).map(|h| h.build_seconds).sum();
        println!("import: {total:.1} s (of which HNSW build {graph:.1} s, M {}, ef_construction {})", HnswParams::default().m, HnswParams::default().ef_construction);
    } else {
        let m = index::read_manifest(&dir).unwrap();
        println!("import: reused {} (HNSW build took {:.1} s)", dir.display(), m.segments.iter().filter_map(|s| s.hnsw.as_ref()).map(|h| h.build_seconds).sum::<f64>());
    }

    let (rss0, _) = rss_mb();
    let t = Instant::now();
    let reps = 20;
    for _ in 0..reps {
        drop(Index::open(&dir).unwrap());
    }
    println!("open: {:.3} ms (mean of {reps})", t.elapsed().as_secs_f64() * 1000.0 / reps as f64);
    let index = Index::open(&dir).unwrap();
    let (rss_open, _) = rss_mb();
    println!("resident after open: {:.0} MB (+{:.1} MB)", rss_open, rss_open - rss0);

    // Exact, one query at a time (the interactive case).
    let single = 100.min(QUERIES);
    let t = Instant::now();
    let mut truth = Vec::new();
    for q in &queries[..single] {
        truth.push(search::exact(&index, std::slice::from_ref(q), 10).remove(0));
    }
    let secs = t.elapsed().as_secs_f64();
    println!("exact, 1 query at a time: {:.1} QPS ({:.2} ms/query)", single as f64 / secs, secs * 1000.0 / single as f64);
    // Exact, batched (--queries): one pass over the matrix per 64 queries.
    let t = Instant::now();
    let mut batched = Vec::new();
    for b in queries.chunks(64) {
        batched.extend(search::exact(&index, b, 10));
    }
    let secs = t.elapsed().as_secs_f64();
    println!("exact, batches of 64: {:.1} QPS", QUERIES as f64 / secs);
    // The matrix product sums in another order: scores agree to rounding.
    for (b, t) in batched[..single].iter().zip(&truth) {
        for (x, y) in b.iter().zip(t) {
            assert!((x.1 - y.1).abs() < 1e-5, "batched and single exact agree: {x:?} vs {y:?}");
        }
    }
    let (rss_exact, file) = rss_mb();
    println!("resident while searching exactly: {rss_exact:.0} MB ({file:.0} MB of it the mapped matrix)");

    if !with_hnsw {
        return;
    }
    let t = Instant::now();
    for seg in index.segments() {
        seg.graph().unwrap().unwrap();
    }
    println!("HNSW graph load (vectors mmapped): {:.2} s", t.elapsed().as_secs_f64());
    let truth: Vec<Vec<(usize, f32)>> = batched;
    for ef in [16, 32, 64, 128, 256] {
        let opts = search::Options { k: 10, exact: false, ef: Some(ef) };
        let t = Instant::now();
        let mut hits = Vec::new();
        for q in &queries {
            hits.push(search::search_rows(&index, std::slice::from_ref(q), &opts).unwrap().remove(0));
        }
        let secs = t.elapsed().as_secs_f64();
        let mut found = 0;
        for (h, want) in hits.iter().zip(&truth) {
            let want: std::collections::HashSet<usize> = want.iter().map(|(r, _)| *r).collect();
            found += h.iter().filter(|(r, _)| want.contains(r)).count();
        }
        println!("HNSW ef {ef:>3}: {:>7.1} QPS, recall@10 {:.3}", QUERIES as f64 / secs, found as f64 / (10 * QUERIES) as f64);
    }
    let (rss_h, file) = rss_mb();
    println!("resident while searching with HNSW: {rss_h:.0} MB ({file:.0} MB file-backed)");
}
