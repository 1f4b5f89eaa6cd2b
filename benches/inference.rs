//! `longclip inference` from webdataset shards, against the same images as
//! loose files, on this machine's cores:
//! 1. the reader: read + decode + preprocess throughput from tar shards and
//!    from loose files (no model), beside the LongCLIP-B vision encoder's
//!    throughput, to show whether reading can keep up;
//! 2. end to end: `inference` on the shards (LongCLIP-B shapes, random
//!    weights, CPU) next to `index build` on the loose files.
//!
//! Run: cargo bench --bench inference [-- URBAN1K_DIR [IMAGES]]
//! (default ../shared/datasets/urban1k, all 1,000 photos; Urban1k packed
//! 100 samples per shard, each with its caption as `.txt`). Not criterion:
//! one run takes minutes, and the comparison is within the same run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use longclip::checkpoint::{self, Config};
use longclip::index::{self, BuildOptions, ModelInfo};
use longclip::inference::{self, webdataset, InferenceOptions, InputFormat};
use longclip::model::LongClip;
use longclip::preprocess::Transform;
use rayon::prelude::*;

#[path = "common/urban.rs"]
mod urban;
use urban::urban_from_args;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PER_SHARD: usize = 100;
const BATCH: usize = 32;

fn main() -> Result<()> {
    let Some((_, data)) = urban_from_args()? else { return Ok(()) };
    let work = tempfile::tempdir()?;
    let (shards, loose) = pack(&data.images, &data.captions, work.path())?;
    let threads = rayon::current_num_threads();
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default();
    println!("{} Urban1k photos in {} shards of {PER_SHARD}; {threads} threads ({cpu})", data.images.len(), shards.len());

    let transform = Transform::clip(224);
    for round in 0..2 {
        let t_tar = time(|| decode_shards(&shards, &transform))?;
        let t_files = time(|| decode_files(&loose, &transform))?;
        let n = data.images.len() as f64;
        println!(
            "reader (round {round}): tar shards {:.1} images/s, loose files {:.1} images/s (tar / files = {:.2}x)",
            n / t_tar, n / t_files, t_files / t_tar
        );
    }

    let ckpt = checkpoint::random(&Config::preset("longclip-b")?, 0)?;
    let model = LongClip::new(&ckpt, &Device::Cpu, DType::F32)?;
    let pixels = Tensor::zeros((BATCH, 3, 224, 224), DType::F32, &Device::Cpu)?;
    model.vision.encode(&pixels)?;
    let t_enc = time(|| model.vision.encode(&pixels).map(|_| ()))?;
    println!("LongCLIP-B vision encoder alone: {:.1} images/s (batch {BATCH})", BATCH as f64 / t_enc);

    let model_path = work.path().join("longclip-b-random.safetensors");
    longclip::export::save_checkpoint(&ckpt, &model_path)?;
    let info = longclip::search::model_info(&ckpt, &model_path)?;
    drop(ckpt);
    let opts = InferenceOptions {
        input: format!("{}/{{0000..{:04}}}.tar", work.path().join("shards").display(), shards.len() - 1),
        input_format: InputFormat::Webdataset,
        output_folder: work.path().join("out"),
        enable_text: false,
        enable_metadata: false,
        partition: None,
        partition_count: 1,
        batch_size: BATCH,
        progress: false,
        device_name: "cpu".into(),
    };
    let start = Instant::now();
    let reports = inference::run(&model, &Device::Cpu, &info, &opts, |_| {})?;
    let t_inf = start.elapsed().as_secs_f64();
    let embedded: usize = reports.iter().map(|r| r.stats.sample_count).sum();
    let read: f64 = reports.iter().map(|r| r.stats.read_duration).sum();
    println!("inference (webdataset, images only): {embedded} images in {t_inf:.1} s ({:.2} images/s; {read:.1} s of it waiting on the reader)", embedded as f64 / t_inf);

    let t_build = build_index(&model, &info, &loose_root(work.path()), &work.path().join("index"))?;
    println!("index build (loose files, no graph): {} images in {t_build:.1} s ({:.2} images/s)", data.images.len(), data.images.len() as f64 / t_build);
    println!("inference / index build throughput: {:.2}x", t_build / t_inf);
    Ok(())
}

fn time(f: impl Fn() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed().as_secs_f64())
}

/// Webdataset shards (`KEY.jpg` + `KEY.txt`) and loose copies of the same files.
fn pack(images: &[PathBuf], captions: &[Vec<String>], dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let shard_dir = dir.join("shards");
    let loose_dir = loose_root(dir);
    std::fs::create_dir_all(&shard_dir)?;
    std::fs::create_dir_all(&loose_dir)?;
    let mut shards = Vec::new();
    let mut loose = Vec::new();
    for (s, chunk) in images.chunks(PER_SHARD).enumerate() {
        let path = shard_dir.join(format!("{s:04}.tar"));
        let mut tar = tar::Builder::new(std::fs::File::create(&path)?);
        for (i, image) in chunk.iter().enumerate() {
            let n = s * PER_SHARD + i;
            let bytes = std::fs::read(image)?;
            let ext = image.extension().and_then(|e| e.to_str()).unwrap_or("jpg").to_lowercase();
            append(&mut tar, &format!("{n:08}.{ext}"), &bytes)?;
            append(&mut tar, &format!("{n:08}.txt"), captions[n].first().map_or("", String::as_str).as_bytes())?;
            let copy = loose_dir.join(format!("{n:08}.{ext}"));
            std::fs::write(&copy, &bytes)?;
            loose.push(copy);
        }
        tar.finish()?;
        shards.push(path);
    }
    Ok((shards, loose))
}

fn loose_root(dir: &Path) -> PathBuf {
    dir.join("loose")
}

fn append(tar: &mut tar::Builder<std::fs::File>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, name, bytes)?;
    Ok(())
}

/// Reads the shards in order and decodes each batch of images on all cores,
/// as `inference` does.
fn decode_shards(shards: &[PathBuf], transform: &Transform) -> Result<()> {
    let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
    let decode = |batch: &mut Vec<(String, Vec<u8>)>| -> Result<()> {
        let done: Vec<Result<Vec<f32>>> = batch.par_iter().map(|(name, b)| transform.from_bytes(b, name)).collect();
        for d in done {
            d?;
        }
        batch.clear();
        Ok(())
    };
    for shard in shards {
        webdataset::read_shard(shard, |sample| {
            if let Some((ext, bytes)) = sample.image() {
                batch.push((format!("{}.{ext}", sample.key), bytes.to_vec()));
            }
            if batch.len() >= BATCH {
                decode(&mut batch)?;
            }
            Ok(())
        })?;
    }
    decode(&mut batch)
}

fn decode_files(paths: &[PathBuf], transform: &Transform) -> Result<()> {
    for chunk in paths.chunks(BATCH) {
        for r in transform.batch_from_paths(chunk) {
            r?;
        }
    }
    Ok(())
}

fn build_index(model: &LongClip, info: &ModelInfo, images: &Path, dir: &Path) -> Result<f64> {
    let opts = BuildOptions {
        images: Some(images.to_path_buf()),
        dtype: index::Dtype::F16,
        hnsw: None,
        batch_size: BATCH,
        chunk_size: 1024,
        segment_rows: index::DEFAULT_SEGMENT_ROWS,
        progress: false,
        require_existing: false,
        shard: None,
        merge: None,
    };
    let start = Instant::now();
    index::build(dir, model, &Device::Cpu, info, &opts)?;
    Ok(start.elapsed().as_secs_f64())
}
