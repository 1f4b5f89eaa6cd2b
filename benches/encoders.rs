//! Text and image encoder throughput at LongCLIP-B shapes with random weights, on CPU.
//! Run: cargo bench --bench encoders

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use longclip::checkpoint::{self, Config};
use longclip::model::LongClip;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn model() -> LongClip {
    let ckpt = checkpoint::random(&Config::preset("longclip-b").unwrap(), 0).unwrap();
    LongClip::new(&ckpt, &Device::Cpu, DType::F32).unwrap()
}

fn encoders(c: &mut Criterion) {
    let model = model();
    let mut g = c.benchmark_group("longclip-b");
    g.sample_size(10);
    for (batch, len) in [(32, 120), (32, 248), (32, 77)] {
        let ids = longclip::model::synthetic_token_ids(batch, len);
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("text {len} tokens, batch {batch}"), |b| b.iter(|| model.text.encode(&ids).unwrap()));
    }
    let batch = 8;
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, 224, 224), &Device::Cpu).unwrap();
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function(format!("image 224 px, batch {batch}"), |b| b.iter(|| model.vision.encode(&pixels).unwrap()));
    g.finish();
}

criterion_group!(benches, encoders);
criterion_main!(benches);
