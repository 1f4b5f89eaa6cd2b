//! One partition, start to finish: read its samples (files or tar shards),
//! decode and preprocess them on all cores while the model encodes the
//! previous batch, write the outputs under temporary names, rename them,
//! and write `stats/{i}.json` last, as the mark that the partition is done.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use super::input::FileSample;
use super::layout::PartitionFiles;
use super::output::{NpyWriter, Pending};
use super::stats::{now, reasons, Skip, Stats};
use super::webdataset::{read_shard, Sample};
use super::InferenceOptions;
use crate::model::{l2_normalize, LongClip};
use crate::preprocess::Transform;
use crate::table::{columns_from_rows, flatten_json, write_parquet, Column, Value};

/// What a job, or one partition of it, reads.
pub enum Work {
    Files(Vec<FileSample>),
    Shards(Vec<PathBuf>),
}

impl Work {
    /// Partition `index` of `count`: inputs whose number % count == index.
    pub fn part(&self, index: usize, count: usize) -> Work {
        fn every<T: Clone>(items: &[T], index: usize, count: usize) -> Vec<T> {
            items.iter().enumerate().filter(|(n, _)| super::takes(*n, index, count)).map(|(_, x)| x.clone()).collect()
        }
        match self {
            Work::Files(f) => Work::Files(every(f, index, count)),
            Work::Shards(s) => Work::Shards(every(s, index, count)),
        }
    }

    fn len(&self) -> usize {
        match self {
            Work::Files(f) => f.len(),
            Work::Shards(s) => s.len(),
        }
    }
}

/// A sample as read, before decoding.
struct Raw {
    key: String,
    shard: Option<String>,
    /// The image's name (for messages) and bytes, or why there is none.
    image: std::result::Result<(String, Vec<u8>), (&'static str, String)>,
    caption: Option<Vec<u8>>,
    metadata: Option<Vec<u8>>,
}

/// A sample ready for the model.
struct Ready {
    key: String,
    pixels: Vec<f32>,
    caption: Option<String>,
    metadata: Vec<(String, Value)>,
}

enum Outcome {
    Ready(Ready),
    Skipped(Skip),
}

enum Message {
    Batch(Vec<Outcome>),
    ShardDone { error: Option<String>, cut: Option<(String, String)> },
    /// Reading itself failed (an unreadable shard): the partition stops.
    Failed(anyhow::Error),
}

/// Everything the consumer accumulates.
struct Sink {
    images: NpyWriter,
    texts: Option<NpyWriter>,
    image_paths: Vec<String>,
    captions: Vec<String>,
    metadata: Vec<Vec<(String, Value)>>,
}

/// Set to N, a partition aborts (like kill -9) after encoding N batches:
/// the crash the restart tests replay.
pub const CRASH_AFTER_BATCHES_ENV: &str = "LONGCLIP_TEST_CRASH_AFTER_BATCHES";

impl Sink {
    /// Gives up: the temporary embedding files go.
    fn discard(self) {
        self.images.discard();
        if let Some(t) = self.texts {
            t.discard();
        }
    }
}

/// Runs partition `index` of the job into `files`, returning its stats.
pub fn run(model: &LongClip, device: &Device, opts: &InferenceOptions, base: Stats, files: &PartitionFiles, work: Work) -> Result<Stats> {
    let started = Instant::now();
    let mut stats = Stats { start_time: now(), shards: matches!(work, Work::Shards(_)) as usize * work.len(), ..base };
    for dir in [&files.stats, &files.metadata].into_iter().filter_map(|p| p.parent()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    files.remove_stale_temps();
    let dim = model.config.embed_dim;
    let mut sink = Sink {
        images: NpyWriter::create(&files.img_emb, dim)?,
        texts: if opts.enable_text { Some(NpyWriter::create(&files.text_emb, dim)?) } else { None },
        image_paths: Vec::new(),
        captions: Vec::new(),
        metadata: Vec::new(),
    };
    let bar = progress(opts.progress, &work, stats.partition, stats.partition_count);
    let outcome = pump(model, device, opts, &work, &mut sink, &mut stats, files, &bar);
    bar.finish_and_clear();
    if let Err(e) = outcome {
        sink.discard();
        return Err(e);
    }
    if stats.shards > 0 && stats.shard_errors.len() == stats.shards && stats.sample_count == 0 {
        sink.discard();
        anyhow::bail!(
            "partition {}: none of its {} could be read, so it is not marked done (rerun once they are fixed):\n  {}",
            stats.partition,
            if stats.shards == 1 { "1 shard".to_string() } else { format!("{} shards", stats.shards) },
            stats.shard_errors.iter().map(|e| crate::term::escape_for_terminal(e)).collect::<Vec<_>>().join("\n  ")
        );
    }
    let write_start = Instant::now();
    publish(sink, opts, files)?;
    stats.write_duration += write_start.elapsed().as_secs_f64();
    stats.end_time = now();
    stats.total_duration = started.elapsed().as_secs_f64();
    stats.images_per_second = stats.sample_count as f64 / stats.total_duration.max(1e-9);
    stats.finished = true;
    stats.write(&files.stats)?;
    let _ = std::fs::remove_file(&files.wip);
    Ok(stats)
}

/// Renames the outputs into place, or writes none for an empty partition.
fn publish(sink: Sink, opts: &InferenceOptions, files: &PartitionFiles) -> Result<()> {
    if sink.images.rows() == 0 {
        sink.discard();
        return Ok(());
    }
    let mut pending: Vec<Pending> = vec![sink.images.finish()?];
    if let Some(t) = sink.texts {
        pending.push(t.finish()?);
    }
    let mut columns = vec![Column { name: "image_path".into(), values: sink.image_paths.into_iter().map(Value::Text).collect() }];
    if opts.enable_text {
        columns.push(Column { name: "caption".into(), values: sink.captions.into_iter().map(Value::Text).collect() });
    }
    if opts.enable_metadata {
        // clip-retrieval drops metadata fields that clash with its own columns.
        let rows = sink.metadata.into_iter().map(|r| r.into_iter().filter(|(k, _)| !["caption", "metadata", "image_path"].contains(&k.as_str())).collect()).collect();
        columns.extend(columns_from_rows(rows));
    }
    let tmp = crate::export::temp_path(&files.metadata);
    if let Err(e) = write_parquet(&tmp, &columns) {
        pending.into_iter().for_each(Pending::discard);
        return Err(e);
    }
    pending.push(Pending { tmp, path: files.metadata.clone() });
    for p in pending {
        p.publish()?;
    }
    Ok(())
}

/// The read -> decode -> encode loop: a producer thread reads and decodes
/// batch after batch (decode on all cores), this thread encodes.
#[allow(clippy::too_many_arguments)]
fn pump(model: &LongClip, device: &Device, opts: &InferenceOptions, work: &Work, sink: &mut Sink, stats: &mut Stats, files: &PartitionFiles, bar: &ProgressBar) -> Result<()> {
    let transform = model.transform();
    let (tx, rx) = mpsc::sync_channel::<Message>(2);
    let mut last_wip = Instant::now();
    let crash_after: Option<usize> = std::env::var(CRASH_AFTER_BATCHES_ENV).ok().and_then(|v| v.parse().ok());
    let mut batches = 0;
    std::thread::scope(|scope| -> Result<()> {
        let transform = &transform;
        scope.spawn(move || produce(work, opts, transform, &tx));
        let rx = rx;
        loop {
            let wait = Instant::now();
            let Ok(message) = rx.recv() else { break };
            stats.read_duration += wait.elapsed().as_secs_f64();
            match message {
                Message::Failed(e) => return Err(e),
                Message::ShardDone { error, cut } => {
                    bar.inc(1);
                    if let Some(e) = error {
                        bar.suspend(|| eprintln!("warning: {}", crate::term::escape_for_terminal(&e)));
                        stats.shard_errors.push(e.clone());
                        if let Some((key, shard)) = cut {
                            stats.skip(Skip { key, shard: Some(shard), reason: reasons::TRUNCATED_TAR.into(), detail: e });
                        }
                    }
                }
                Message::Batch(outcomes) => {
                    let n = outcomes.len();
                    encode_batch(model, device, outcomes, sink, stats)?;
                    batches += 1;
                    if crash_after == Some(batches) {
                        let _ = stats.write(&files.wip);
                        eprintln!("{CRASH_AFTER_BATCHES_ENV}: aborting after batch {batches}");
                        std::process::abort();
                    }
                    if matches!(work, Work::Files(_)) {
                        bar.inc(n as u64);
                    }
                    bar.set_message(format!("{} images", stats.sample_count));
                }
            }
            if last_wip.elapsed() >= Duration::from_secs(5) {
                let _ = stats.write(&files.wip);
                last_wip = Instant::now();
            }
        }
        Ok(())
    })
}

/// Encodes the ready samples of one batch and counts the skipped ones.
fn encode_batch(model: &LongClip, device: &Device, outcomes: Vec<Outcome>, sink: &mut Sink, stats: &mut Stats) -> Result<()> {
    let start = Instant::now();
    let mut ready = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Ready(r) => ready.push(r),
            Outcome::Skipped(s) => stats.skip(s),
        }
    }
    if ready.is_empty() {
        return Ok(());
    }
    let size = model.vision.image_size();
    let pixels: Vec<f32> = ready.iter_mut().flat_map(|r| std::mem::take(&mut r.pixels)).collect();
    let images = Tensor::from_vec(pixels, (ready.len(), 3, size, size), device)?;
    sink.images.push_rows(&rows_of(&model.vision.encode(&images)?)?)?;
    if let Some(texts) = &mut sink.texts {
        let ctx = model.text.context_length();
        let captions: Vec<String> = ready.iter().map(|r| r.caption.clone().unwrap_or_default()).collect();
        let encodings = model.tokenize(&captions, ctx)?;
        stats.truncated_captions += encodings.iter().filter(|e| e.truncated).count();
        let ids: Vec<Vec<u32>> = encodings.into_iter().map(|e| e.ids).collect();
        texts.push_rows(&rows_of(&model.text.encode(&ids)?)?)?;
        stats.text_count += ready.len();
    }
    stats.sample_count += ready.len();
    for r in ready {
        sink.image_paths.push(r.key);
        if let Some(c) = r.caption {
            sink.captions.push(c);
        }
        sink.metadata.push(r.metadata);
    }
    stats.inference_duration += start.elapsed().as_secs_f64();
    Ok(())
}

/// L2-normalized rows as f32, in the order given.
fn rows_of(features: &Tensor) -> Result<Vec<f32>> {
    let f = l2_normalize(&features.to_dtype(candle_core::DType::F32)?)?;
    Ok(f.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
}

/// The producer: reads samples in order, drops repeated keys, and sends
/// batches decoded on all cores.
fn produce(work: &Work, opts: &InferenceOptions, transform: &Transform, tx: &mpsc::SyncSender<Message>) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut batch: Vec<Raw> = Vec::new();
    let batch_size = opts.batch_size.max(1);
    let send_batch = |batch: &mut Vec<Raw>| -> bool {
        let raws = std::mem::take(batch);
        let outcomes: Vec<Outcome> = raws.into_par_iter().map(|r| prepare(r, transform, opts)).collect();
        tx.send(Message::Batch(outcomes)).is_ok()
    };
    match work {
        Work::Files(samples) => {
            for chunk in samples.chunks(batch_size) {
                let raws: Vec<Raw> = chunk.par_iter().map(read_file_sample).collect();
                batch.extend(raws);
                if !send_batch(&mut batch) {
                    return;
                }
            }
        }
        Work::Shards(shards) => {
            for shard in shards {
                let name = shard.display().to_string();
                let result = read_shard(shard, |sample| {
                    batch.push(raw_of(sample, &name, &mut seen));
                    if batch.len() >= batch_size && !send_batch(&mut batch) {
                        anyhow::bail!("stopped");
                    }
                    Ok(())
                });
                let message = match result {
                    Ok(end) => Message::ShardDone { cut: end.cut_sample.map(|k| (k, name.clone())), error: end.error },
                    Err(e) => Message::Failed(e),
                };
                let failed = matches!(message, Message::Failed(_));
                if tx.send(message).is_err() || failed {
                    return;
                }
            }
        }
    }
    if !batch.is_empty() {
        send_batch(&mut batch);
    }
}

fn read_file_sample(s: &FileSample) -> Raw {
    let key = s.image.display().to_string();
    let image = std::fs::read(&s.image).map(|b| (key.clone(), b)).map_err(|e| (reasons::UNREADABLE, format!("{key}: cannot read: {e}")));
    let caption = s.caption.as_ref().and_then(|p| std::fs::read(p).ok());
    let metadata = s.metadata.as_ref().and_then(|p| std::fs::read(p).ok());
    Raw { key, shard: None, image, caption, metadata }
}

/// A tar sample as a [`Raw`]; a key seen before in this partition has its
/// image withheld so the sample is skipped as a duplicate.
fn raw_of(mut sample: Sample, shard: &str, seen: &mut HashSet<String>) -> Raw {
    let image = if !seen.insert(sample.key.clone()) {
        Err((reasons::DUPLICATE_KEY, format!("{shard}: sample '{}': the key was already read in this partition; image_path must name one image", sample.key)))
    } else {
        match sample.image().map(|(ext, _)| ext) {
            Some(ext) => Ok((format!("{}.{ext}", sample.key), sample.take(ext).unwrap_or_default())),
            None => {
                let exts: Vec<&str> = sample.members.iter().map(|(e, _)| e.as_str()).collect();
                Err((reasons::NO_IMAGE, format!("{shard}: sample '{}': members .{} but no .jpg, .jpeg, .png or .webp (the key ends at the first dot of the file name)", sample.key, exts.join(", ."))))
            }
        }
    };
    let caption = sample.take("txt");
    let metadata = sample.take("json");
    Raw { key: sample.key, shard: Some(shard.to_string()), image, caption, metadata }
}

/// Checks and decodes one sample.
fn prepare(mut raw: Raw, transform: &Transform, opts: &InferenceOptions) -> Outcome {
    let at = match &raw.shard {
        Some(shard) => format!("{shard}: sample '{}'", raw.key),
        None => raw.key.clone(),
    };
    let skip = |reason: &str, detail: String| Outcome::Skipped(Skip { key: raw.key.clone(), shard: raw.shard.clone(), reason: reason.into(), detail: detail.trim_end().to_string() });
    let (name, bytes) = match &raw.image {
        Ok(i) => i,
        Err((reason, detail)) => return skip(reason, detail.clone()),
    };
    let caption = if opts.enable_text {
        match raw.caption.take() {
            None => return skip(reasons::NO_CAPTION, format!("{at}: no .txt caption")),
            Some(b) => match String::from_utf8(b) {
                Ok(s) => Some(s),
                Err(e) => return skip(reasons::CAPTION_NOT_UTF8, format!("{at}: caption is not UTF-8 ({e})")),
            },
        }
    } else {
        None
    };
    let metadata = if opts.enable_metadata {
        match &raw.metadata {
            None => return skip(reasons::NO_METADATA, format!("{at}: no .json metadata")),
            Some(b) => match serde_json::from_slice::<serde_json::Value>(b) {
                Ok(serde_json::Value::Object(map)) => flatten_json(&map),
                Ok(other) => return skip(reasons::BAD_METADATA, format!("{at}: .json holds {}, not an object", json_kind(&other))),
                Err(e) => return skip(reasons::INVALID_JSON, format!("{at}: .json is not valid JSON ({e})")),
            },
        }
    } else {
        Vec::new()
    };
    match transform.from_bytes(bytes, name) {
        Ok(pixels) => Outcome::Ready(Ready { key: raw.key, pixels, caption, metadata }),
        Err(e) if raw.shard.is_some() => skip(reasons::BAD_IMAGE, format!("{at}: {e:#}")),
        Err(e) => skip(reasons::BAD_IMAGE, format!("{e:#}")),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn progress(show: bool, work: &Work, index: usize, count: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let unit = match work {
        Work::Files(_) => "samples",
        Work::Shards(_) => "shards",
    };
    let bar = ProgressBar::new(work.len() as u64);
    let style = format!("partition {index}/{count} {{bar:30}} {{pos}}/{{len}} {unit}, {{msg}} ({{elapsed}}, ETA {{eta}})");
    bar.set_style(ProgressStyle::with_template(&style).expect("valid template"));
    bar
}
