//! Image preprocessing throughput (images/s) on the fixture images at 224 px.
//! Run: cargo bench --bench preprocess

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use longclip::preprocess::Transform;

fn images() -> Vec<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/images"));
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths
}

fn preprocess(c: &mut Criterion) {
    let paths = images();
    let t = Transform::clip(224);
    let mut g = c.benchmark_group("preprocess");
    g.sample_size(20);
    g.throughput(Throughput::Elements(paths.len() as u64));
    g.bench_function("fixture images 224 px, one thread", |b| {
        b.iter(|| paths.iter().map(|p| t.from_path(p).unwrap().len()).sum::<usize>())
    });
    g.bench_function("fixture images 224 px, rayon", |b| b.iter(|| t.batch_from_paths(&paths)));
    g.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
