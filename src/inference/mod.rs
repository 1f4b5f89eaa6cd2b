//! `longclip inference`: clip-retrieval's `inference`, with Long-CLIP as the
//! embedder. It reads image files or webdataset tar shards, splits them into
//! partitions by clip-retrieval's rule, and writes clip-retrieval's layout
//! (`img_emb/`, `text_emb/`, `metadata/`, `stats/`), so autofaiss and
//! `clip-retrieval back` take the output as it is.
//!
//! Partitions are independent and restartable: each writes its files under
//! temporary names, renames them, and writes `stats/{i}.json` last. A rerun
//! skips partitions that have their stats and redoes the others whole. Many
//! machines run partitions side by side (`spark/longclip_spark.py`), each
//! with `--partition I`.
//!
//! [`input`] lists what is read, [`webdataset`] reads tar shards,
//! [`partition`] runs one partition, [`output`] and [`layout`] are the files
//! and their names, [`stats`] the per-partition report.

pub mod input;
pub mod layout;
pub mod output;
pub mod partition;
pub mod stats;
pub mod webdataset;

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::Device;

pub use input::{expand_braces, takes, InputFormat};
pub use layout::{pad_width, PartitionFiles, Record, RECORD};
pub use stats::{Skip, Stats};

use crate::index::ModelInfo;
use crate::model::LongClip;
use partition::Work;

/// What `longclip inference` is asked to do.
#[derive(Clone, Debug)]
pub struct InferenceOptions {
    /// A folder, a file list or an image (files), or a shard pattern with
    /// brace ranges (webdataset), as given on the command line.
    pub input: String,
    pub input_format: InputFormat,
    pub output_folder: PathBuf,
    /// Embed each sample's `.txt` caption into `text_emb/`.
    pub enable_text: bool,
    /// Flatten each sample's `.json` object into metadata columns.
    pub enable_metadata: bool,
    /// Run only this partition; None runs every partition in turn.
    pub partition: Option<usize>,
    pub partition_count: usize,
    /// Images (and captions) per encoder call.
    pub batch_size: usize,
    pub progress: bool,
    /// The device's name for the stats (`cpu`, `cuda:0`).
    pub device_name: String,
}

/// What happened to one partition.
#[derive(Debug)]
pub struct PartitionReport {
    pub partition: usize,
    /// Finished by an earlier run: not redone.
    pub already_done: bool,
    pub stats: Stats,
}

/// Runs the asked partitions in turn and returns their reports (finished
/// ones included, marked). Errors: a bad input pattern or missing shards,
/// an output folder made with another model, input or partition count, an
/// unwritable folder. Bad samples are not errors: they are skipped and
/// counted in each partition's stats.
///
/// `each` sees every partition's report as soon as it is done (or found
/// done), e.g. to print it.
pub fn run(model: &LongClip, device: &Device, info: &ModelInfo, opts: &InferenceOptions, mut each: impl FnMut(&PartitionReport)) -> Result<Vec<PartitionReport>> {
    check(opts)?;
    let work = list_work(opts)?;
    let record = Record {
        model: info.path.clone(),
        model_fingerprint: info.fingerprint.clone(),
        embed_dim: info.embed_dim,
        image_size: info.image_size,
        context_length: info.context_length,
        input: absolute(&opts.input),
        input_format: format!("{:?}", opts.input_format).to_lowercase(),
        partition_count: opts.partition_count,
        enable_text: opts.enable_text,
        enable_metadata: opts.enable_metadata,
        compute_dtype: Some(model.precision.to_string()),
    };
    layout::claim(&opts.output_folder, &record)?;
    let partitions: Vec<usize> = match opts.partition {
        Some(p) => vec![p],
        None => (0..opts.partition_count).collect(),
    };
    let mut reports = Vec::new();
    for index in partitions {
        let files = PartitionFiles::new(&opts.output_folder, index, opts.partition_count);
        if let Some(stats) = finished(&files) {
            let report = PartitionReport { partition: index, already_done: true, stats };
            each(&report);
            reports.push(report);
            continue;
        }
        let base = Stats {
            partition: index,
            partition_count: opts.partition_count,
            model: info.path.clone(),
            model_fingerprint: info.fingerprint.clone(),
            device: opts.device_name.clone(),
            compute_dtype: model.precision.to_string(),
            ..Stats::default()
        };
        let stats = crate::index::catch_panic(
            || format!("partition {index}: stopped; rerun to redo it"),
            || partition::run(model, device, opts, base, &files, work.part(index, opts.partition_count)),
        )??;
        let report = PartitionReport { partition: index, already_done: false, stats };
        each(&report);
        reports.push(report);
    }
    Ok(reports)
}

/// The input as an absolute path (lexically: a brace pattern is not a
/// file), so a Spark driver's absolute paths and a shell's relative ones
/// name the same input.
/// `.` parts, doubled and trailing slashes are dropped the same way.
fn absolute(input: &str) -> String {
    let path = std::path::Path::new(input);
    let full = match std::env::current_dir() {
        Ok(cwd) if path.is_relative() => cwd.join(path),
        _ => path.to_path_buf(),
    };
    full.components().collect::<PathBuf>().display().to_string()
}

fn check(opts: &InferenceOptions) -> Result<()> {
    if opts.partition_count == 0 {
        bail!("--partition-count must be at least 1");
    }
    if let Some(p) = opts.partition {
        if p >= opts.partition_count {
            bail!("--partition {p} is out of range: partitions are 0..{} (--partition-count {})", opts.partition_count - 1, opts.partition_count);
        }
    }
    Ok(())
}

/// A partition's stats if it finished and its files are all there.
fn finished(files: &PartitionFiles) -> Option<Stats> {
    let stats = Stats::read_finished(&files.stats)?;
    let present = stats.sample_count == 0 || (files.img_emb.is_file() && files.metadata.is_file() && (stats.text_count == 0 || files.text_emb.is_file()));
    present.then_some(stats)
}

/// Everything the job reads, before partitioning.
fn list_work(opts: &InferenceOptions) -> Result<Work> {
    match opts.input_format {
        InputFormat::Webdataset => Ok(Work::Shards(input::list_shards(&opts.input)?)),
        InputFormat::Files => {
            let path = std::path::Path::new(&opts.input);
            if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("tar")) || opts.input.contains('{') {
                bail!("{}: looks like webdataset shards; add --input-format webdataset", path.display());
            }
            if !path.exists() {
                bail!("{}: no such folder or file list", path.display());
            }
            let samples = input::list_files(path)?;
            if samples.is_empty() {
                bail!("{}: no images found (jpg, jpeg, png, webp, gif, bmp, tif, tiff; searched recursively)", path.display());
            }
            Ok(Work::Files(samples))
        }
    }
}
