//! Tokenizer throughput (captions/s) on the fixture captions.
//! Run: cargo bench --bench tokenizer

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use longclip::tokenizer::Tokenizer;

fn captions() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/captions.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tokenizer(c: &mut Criterion) {
    let tok = Tokenizer::global();
    let texts = captions();
    let mut g = c.benchmark_group("tokenizer");
    g.throughput(Throughput::Elements(texts.len() as u64));
    g.bench_function("fixture captions, one thread", |b| {
        b.iter(|| texts.iter().map(|t| tok.encode(t, 248).unwrap().ids.len()).sum::<usize>())
    });
    g.bench_function("fixture captions, encode_batch", |b| b.iter(|| tok.encode_batch(&texts, 248).unwrap()));
    g.finish();
}

criterion_group!(benches, tokenizer);
criterion_main!(benches);
