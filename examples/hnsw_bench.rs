//! HNSW speed and recall of longclip's graph (hnsw_rs + UnitDot), for the
//! comparison with hnswlib in `benches/hnsw_vs_hnswlib.py` (issue 11).
//!
//! ```sh
//! cargo run --release --example hnsw_bench -- --base base.npy --queries queries.npy \
//!     --gt gt.npy [--m 16] [--ef-construction 200] [--threads 2] [--dir DIR] [--efs 16,32,64]
//! ```
//!
//! `base.npy` and `queries.npy` are 2-D little-endian float32 arrays of
//! L2-normalized rows; `gt.npy` holds the exact top-10 row ids of each query
//! (int32 or int64, at least 10 columns). Builds on `--threads` rayon
//! threads, dumps to `--dir` (a temporary directory by default), reloads the
//! graph memory-mapped as `longclip search` does, then for each ef runs the
//! queries one after another on one thread. Prints one JSON object a line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use longclip::index::{Graph, HnswParams};
use serde_json::json;

// As in the longclip binary: its allocator is part of what search costs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A 2-D array read from a .npy file, row-major.
struct Array<T> {
    rows: usize,
    cols: usize,
    data: Vec<T>,
}

/// The header fields we need: dtype string and shape; errors on Fortran order or non-2-D.
fn npy_header(bytes: &[u8], path: &Path) -> Result<(String, usize, usize, usize)> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("{}: not a .npy file", path.display());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes(bytes[8..12].try_into()?) as usize, 12),
    };
    let header = std::str::from_utf8(bytes.get(start..start + len).context("short header")?)?;
    let field = |key: &str| -> Result<&str> {
        let at = header.find(key).with_context(|| format!("{}: no {key} in the header", path.display()))?;
        Ok(header[at + key.len()..].trim_start_matches([':', ' ', '\'']))
    };
    let descr = field("'descr'")?.split('\'').next().unwrap_or("").to_string();
    if field("'fortran_order'")?.starts_with("True") {
        bail!("{}: Fortran-order arrays are not supported", path.display());
    }
    let shape = field("'shape'")?;
    let shape = &shape[shape.find('(').context("shape")? + 1..shape.find(')').context("shape")?];
    let dims: Vec<usize> = shape.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse).collect::<Result<_, _>>()?;
    let [rows, cols] = dims[..] else { bail!("{}: expected a 2-D array, shape ({shape})", path.display()) };
    Ok((descr, rows, cols, start + len))
}

fn read_npy_f32(path: &Path) -> Result<Array<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (descr, rows, cols, offset) = npy_header(&bytes, path)?;
    if descr != "<f4" {
        bail!("{}: dtype {descr}, expected <f4", path.display());
    }
    let body = bytes.get(offset..offset + rows * cols * 4).context("truncated .npy")?;
    let data = body.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    Ok(Array { rows, cols, data })
}

fn read_npy_ids(path: &Path) -> Result<Array<usize>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (descr, rows, cols, offset) = npy_header(&bytes, path)?;
    let width = match descr.as_str() {
        "<i4" => 4,
        "<i8" => 8,
        _ => bail!("{}: dtype {descr}, expected <i4 or <i8", path.display()),
    };
    let body = bytes.get(offset..offset + rows * cols * width).context("truncated .npy")?;
    let data = body
        .chunks_exact(width)
        .map(|b| if width == 4 { i32::from_le_bytes(b.try_into().unwrap()) as usize } else { i64::from_le_bytes(b.try_into().unwrap()) as usize })
        .collect();
    Ok(Array { rows, cols, data })
}

struct Args {
    base: PathBuf,
    queries: PathBuf,
    gt: PathBuf,
    params: HnswParams,
    threads: usize,
    dir: Option<PathBuf>,
    efs: Vec<usize>,
    /// Also time `search_filtered` (keeping every row) at each ef.
    filtered: bool,
    /// Measure the code before UnitDot instead: hnsw_rs's `DistDot`,
    /// `parallel_insert_slice` in chunks of 4096, `Hnsw::search`.
    distdot: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        base: PathBuf::new(),
        queries: PathBuf::new(),
        gt: PathBuf::new(),
        params: HnswParams::default(),
        threads: 2,
        dir: None,
        efs: vec![16, 24, 32, 48, 64, 96, 128, 192, 256],
        filtered: false,
        distdot: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--filtered" || flag == "--distdot" {
            args.filtered |= flag == "--filtered";
            args.distdot |= flag == "--distdot";
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--base" => args.base = value.into(),
            "--queries" => args.queries = value.into(),
            "--gt" => args.gt = value.into(),
            "--m" => args.params.m = value.parse()?,
            "--ef-construction" => args.params.ef_construction = value.parse()?,
            "--threads" => args.threads = value.parse()?,
            "--dir" => args.dir = Some(value.into()),
            "--efs" => args.efs = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(args)
}

/// Mean fraction of the true top-10 found in each result's first 10.
fn recall_at_10(found: &[Vec<usize>], gt: &Array<usize>) -> f64 {
    let hits: usize = found.iter().enumerate().map(|(q, rows)| rows.iter().take(10).filter(|r| gt.data[q * gt.cols..q * gt.cols + 10].contains(r)).count()).sum();
    hits as f64 / (10 * found.len()) as f64
}

/// Nanoseconds this thread has run on a CPU (Linux schedstat), so that QPS
/// holds on a shared machine; None elsewhere.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
}

/// Queries per second of one thread: by wall clock, and by the thread's CPU
/// time (the same on an idle machine; the CPU figure ignores time slices
/// lost to other processes).
#[derive(Clone, Copy)]
struct Rate {
    wall: f64,
    cpu: Option<f64>,
}

/// Runs every query once per pass (one thread, in order), at least three
/// passes and at least a second; returns the last pass's results and the
/// best pass's rates (the pass least disturbed by other processes).
fn timed(queries: &Array<f32>, mut one: impl FnMut(&[f32]) -> Result<Vec<usize>>) -> Result<(Vec<Vec<usize>>, Rate)> {
    let start = Instant::now();
    let mut best = Rate { wall: 0.0, cpu: None };
    for pass in 0.. {
        let (t0, c0) = (Instant::now(), thread_cpu_ns());
        let found: Vec<Vec<usize>> = queries.data.chunks_exact(queries.cols).map(&mut one).collect::<Result<_>>()?;
        let n = found.len() as f64;
        best.wall = best.wall.max(n / t0.elapsed().as_secs_f64());
        if let Some(cpu) = c0.zip(thread_cpu_ns()).map(|(a, b)| n / ((b - a).max(1) as f64 * 1e-9)) {
            best.cpu = Some(best.cpu.map_or(cpu, |c: f64| c.max(cpu)));
        }
        if pass >= 2 && start.elapsed().as_secs_f64() >= 1.0 {
            return Ok((found, best));
        }
    }
    unreachable!()
}

/// CPU seconds of the whole process so far (all threads; Linux /proc/self/stat, 100 Hz ticks).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The dot kernel longclip::index::dot picks on this CPU (the same tests).
fn kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
    }
    "portable"
}

fn sizes(dir: &Path, files: &[String]) -> Result<BTreeMap<String, u64>> {
    files.iter().map(|f| Ok((f.clone(), std::fs::metadata(dir.join(f))?.len()))).collect()
}

fn main() -> Result<()> {
    let args = parse_args()?;
    rayon::ThreadPoolBuilder::new().num_threads(args.threads).build_global()?;
    let base = read_npy_f32(&args.base)?;
    let queries = read_npy_f32(&args.queries)?;
    let gt = read_npy_ids(&args.gt)?;
    if queries.cols != base.cols || gt.rows != queries.rows || gt.cols < 10 {
        bail!("shapes disagree: base {}x{}, queries {}x{}, gt {}x{}", base.rows, base.cols, queries.rows, queries.cols, gt.rows, gt.cols);
    }
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;

    if args.distdot {
        return distdot::run(&args, &base, &queries, &gt, &dir);
    }
    let start = Instant::now();
    let cpu_start = process_cpu_seconds();
    let info = Graph::build_and_dump(&base.data, base.cols, args.params, &dir, "bench", false)?;
    let cpu = cpu_start.zip(process_cpu_seconds()).map(|(a, b)| b - a);
    let wall = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"kind": "build", "n": base.rows, "dim": base.cols, "m": args.params.m, "ef_construction": args.params.ef_construction,
               "threads": args.threads, "build_and_dump_seconds": info.build_seconds, "wall_seconds_with_drop": wall, "cpu_seconds": cpu,
               "kernel": kernel()})
    );

    let files = info.files().to_vec();
    let graph = Graph::load(&dir, &info, &sizes(&dir, &files)?, base.rows)?;
    // One untimed pass: page in the mapped vectors.
    timed(&queries, |q| graph.search(q, 10, 64))?;
    for &ef in &args.efs {
        let (found, qps) = timed(&queries, |q| graph.search(q, 10, ef))?;
        println!("{}", json!({"kind": "search", "ef": ef, "recall_at_10": recall_at_10(&found, &gt), "qps": qps.wall, "qps_cpu": qps.cpu}));
        if args.filtered {
            let keep = |_row: usize| true;
            let (found, qps) = timed(&queries, |q| graph.search_filtered(q, 10, ef, &keep))?;
            println!("{}", json!({"kind": "search_filtered", "ef": ef, "recall_at_10": recall_at_10(&found, &gt), "qps": qps.wall, "qps_cpu": qps.cpu}));
        }
    }
    Ok(())
}

/// The graph code before UnitDot (longclip 5cabef8), for before/after numbers.
mod distdot {
    use super::*;
    use hnsw_rs::prelude::{AnnT, DistDot, Hnsw, HnswIo, ReloadOptions};

    pub fn run(args: &Args, base: &Array<f32>, queries: &Array<f32>, gt: &Array<usize>, dir: &Path) -> Result<()> {
        let (dim, count, p) = (base.cols, base.rows, args.params);
        let start = Instant::now();
        let cpu_start = process_cpu_seconds();
        let hnsw: Hnsw<f32, DistDot> = Hnsw::new(p.m, count.max(1), 16, p.ef_construction, DistDot);
        let data: Vec<(&[f32], usize)> = base.data.chunks_exact(dim).enumerate().map(|(i, v)| (v, i)).collect();
        for chunk in data.chunks(4096) {
            hnsw.parallel_insert_slice(&chunk.to_vec());
        }
        hnsw.file_dump(dir, "distdot")?;
        let build = start.elapsed().as_secs_f64();
        let cpu = cpu_start.zip(process_cpu_seconds()).map(|(a, b)| b - a);
        drop(hnsw);
        let wall = start.elapsed().as_secs_f64();
        println!(
            "{}",
            json!({"kind": "build", "n": count, "dim": dim, "m": p.m, "ef_construction": p.ef_construction, "threads": args.threads,
                   "build_and_dump_seconds": build, "wall_seconds_with_drop": wall, "cpu_seconds": cpu, "kernel": "anndists DistDot (simdeez)"})
        );
        let mut io = HnswIo::new_with_options(dir, "distdot", ReloadOptions::default().set_mmap(true));
        let hnsw = io.load_hnsw::<f32, DistDot>()?;
        let search = |q: &[f32], ef: usize| -> Result<Vec<usize>> { Ok(hnsw.search(q, 10, ef).into_iter().map(|n| n.get_origin_id()).collect()) };
        timed(queries, |q| search(q, 64))?;
        for &ef in &args.efs {
            let (found, qps) = timed(queries, |q| search(q, ef))?;
            println!("{}", json!({"kind": "search", "ef": ef, "recall_at_10": recall_at_10(&found, gt), "qps": qps.wall, "qps_cpu": qps.cpu}));
        }
        Ok(())
    }
}
